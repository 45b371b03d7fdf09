//! End-to-end tests of the `restart` subcommand that every example server shares
//! (`SERVER restart --pid-file PATH [--timeout SECS] [--until-proven]`,
//! `endless_unix::control::restart` and `restart_until_proven`): the test runs the example
//! binary itself as the command, against a server of the same binary started by the
//! harness, and checks its exit code and output for a restart that succeeds, a new binary
//! that crashes, one that is never ready, a restart already in progress, no answer in time,
//! a stale pid file, a burst of `SIGHUP`s around it, a server out of file descriptors, a
//! command run 0–20 ms after the previous handover, and, until proven, a new binary that
//! dies after it took over (the old generation takes the service back) and one that is
//! proven once the old generation's probation is over. Each scenario is a function of the
//! binary and runs against `echo-tokio` and `echo-smol` (one shared control socket server
//! for both); `hello-hyper` gets a smoke test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use endless_test_support::{
    DEADLINE, Endpoint, Exit, Group, Options, SPAWN_LOCK, Server, TempDir, has_field, is_alive,
    sh_quote, sh_script, wait_for, with_deadline,
};
use rustix::process::Signal;

/// How a run of the restart command ended.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    /// The new pid a successful run printed.
    fn new_pid(&self) -> u32 {
        assert_eq!(self.code, Some(0), "the restart command failed: {self:?}");
        self.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid on stdout: {self:?}"))
    }
}

/// Starts `bin restart --pid-file <pid_file> --timeout <timeout>`.
fn spawn_restart(bin: &Path, pid_file: &Path, timeout: &str) -> std::process::Child {
    spawn_restart_with(bin, pid_file, timeout, &[])
}

/// Starts `bin restart --pid-file <pid_file> --timeout <timeout> <more…>`.
fn spawn_restart_with(
    bin: &Path,
    pid_file: &Path,
    timeout: &str,
    more: &[&str],
) -> std::process::Child {
    let mut command = Group::command(bin);
    command
        .arg("restart")
        .arg("--pid-file")
        .arg(pid_file)
        .arg("--timeout")
        .arg(timeout)
        .args(more)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Forks take the harness' spawn lock shared (see `endless_test_support`: ETXTBSY).
    let _guard = SPAWN_LOCK.read().unwrap_or_else(PoisonError::into_inner);
    command.spawn().expect("spawn the restart command")
}

/// Waits for a restart command started at `started` (within the harness' deadline).
fn finish(child: std::process::Child, started: Instant) -> Outcome {
    let output = with_deadline("the restart command to exit", move || {
        child
            .wait_with_output()
            .expect("wait for the restart command")
    });
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Runs the restart command to its end.
fn run_restart(bin: &Path, pid_file: &Path, timeout: &str) -> Outcome {
    let started = Instant::now();
    finish(spawn_restart(bin, pid_file, timeout), started)
}

/// Runs `bin restart … --until-proven` to its end.
fn run_restart_until_proven(bin: &Path, pid_file: &Path, timeout: &str) -> Outcome {
    let started = Instant::now();
    finish(
        spawn_restart_with(bin, pid_file, timeout, &["--until-proven"]),
        started,
    )
}

/// The pid of `(pid N)` in a message.
fn pid_in(message: &str) -> u32 {
    let (_, rest) = message
        .split_once("(pid ")
        .unwrap_or_else(|| panic!("no `(pid N)` in {message:?}"));
    rest.split(')')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {message:?}"))
}

/// Waits until `old` has left its accept loop (it logs `stopped accepting`) or exited. The
/// command answers once `old` stopped accepting; an accept call already under way may still
/// complete, so a test that checks who answers a new connection waits for the loop's end.
fn wait_stopped_accepting(server: &Server, old: u32) {
    wait_for(format_args!("{old} to stop accepting"), DEADLINE, || {
        let stopped = server.group.stderr.count_from(0, |l| {
            l.contains("stopped accepting") && has_field(l, "pid", old)
        });
        (stopped > 0 || !is_alive(old)).then_some(())
    });
}

/// The command restarts the server into the binary on disk: exit 0 with the new pid, which
/// the pid file names and which runs the new code; the old process exits 0. The control
/// socket beside the pid file is private (`0600`). A second run asks the new generation
/// (which inherited the socket), and `kill -HUP` still works afterwards.
fn restart_succeeds(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    let script = format!(
        "ECHO_VERSION=2 exec {} \"$@\"",
        sh_quote(server.real_binary())
    );
    server.replace_exe(&sh_script(&script), 0o755);

    let run = run_restart(bin, server.pid_file(), "20");
    let new = run.new_pid();
    assert_ne!(new, old);
    assert_eq!(server.pid_file_pid(), Some(new), "the pid file: {run:?}");
    assert!(
        run.stderr.contains(&format!(
            "pid {old} handed over to pid {new}, which is ready"
        )),
        "{run:?}"
    );
    server.set_pid(new);
    assert_eq!(
        server.group.wait_exit(old),
        Exit::Code(0),
        "the old process"
    );
    assert_eq!(server.ask("version"), (new, "2".to_owned()));
    let control = std::fs::symlink_metadata(server.dir().join("server.pid.control")).unwrap();
    assert!(control.file_type().is_socket(), "{control:?}");
    assert_eq!(control.mode() & 0o777, 0o600, "{control:?}");

    let run = run_restart(bin, server.pid_file(), "20");
    let newer = run.new_pid();
    assert_ne!(newer, new);
    server.set_pid(newer);
    assert_eq!(server.group.wait_exit(new), Exit::Code(0));
    server.assert_serves(newer);

    let newest = server.restart();
    server.assert_serves(newest);
    server.group.wait_settled(&[newest]);
}

/// A new binary that exits 3 before it is ready: exit 1, the reason names the exit status,
/// the old process keeps serving, alone. Three times (the child's exit and the end of its
/// readiness channel reach the server in either order), then, restored, the command works.
fn crashing_new_binary(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let pid = server.pid();
    server.replace_exe(&sh_script("exit 3"), 0o755);
    for _ in 0..3 {
        let run = run_restart(bin, server.pid_file(), "20");
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(
            run.stderr.contains(&format!(
                "the new process (pid {}) exited with code 3 before it was ready; pid {pid} \
                 keeps serving",
                pid_in(&run.stderr)
            )),
            "{run:?}"
        );
        assert!(run.stdout.is_empty(), "{run:?}");
        server.assert_serves(pid);
        assert_eq!(server.pid_file_pid(), Some(pid));
        server.group.wait_settled(&[pid]);
    }

    server.restore_exe();
    let new = run_restart(bin, server.pid_file(), "20").new_pid();
    server.set_pid(new);
    wait_stopped_accepting(&server, pid);
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

/// A new binary that never becomes ready, with `--upgrade-timeout 1`: exit 1 after at least
/// a second, the reason says it was not ready in time and was killed (it is gone when the
/// command answers); the old process keeps serving, alone.
fn hanging_new_binary(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--upgrade-timeout").arg("1"));
    let pid = server.pid();
    server.replace_exe(&sh_script("exec sleep 600"), 0o755);

    let run = run_restart(bin, server.pid_file(), "20");
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("was not ready within the server's upgrade timeout and was killed; pid"),
        "{run:?}"
    );
    assert!(run.elapsed >= Duration::from_secs(1), "{run:?}");
    let child = pid_in(&run.stderr);
    assert!(!is_alive(child), "the hanging child {child} is reaped");
    server.assert_serves(pid);
    assert_eq!(server.pid_file_pid(), Some(pid));
    server.group.wait_settled(&[pid]);
}

/// A new binary that hangs while the server's upgrade timeout is long: the command gives up
/// after its own `--timeout 1` with exit 4; a second run, while the attempt goes on, is
/// refused at once with exit 3. Once the hanging child is killed the attempt fails, and,
/// restored, the command restarts the server.
fn no_answer_in_time_then_refused(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--upgrade-timeout").arg("600"));
    let pid = server.pid();
    server.replace_exe(&sh_script("exec sleep 600"), 0o755);

    let mark = server.group.stderr.len();
    let run = run_restart(bin, server.pid_file(), "1");
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("no answer from pid {pid} within 1s")),
        "{run:?}"
    );
    assert!(run.elapsed >= Duration::from_secs(1), "{run:?}");
    let child = endless_test_support::scenarios::spawned_child(&server, mark);
    assert!(is_alive(child), "the attempt goes on");

    let run = run_restart(bin, server.pid_file(), "20");
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "pid {pid} refused the restart: a restart is already in progress"
        )),
        "{run:?}"
    );

    let mark = server.group.stderr.len();
    server.group.signal(child, Signal::KILL);
    server
        .group
        .stderr
        .wait_from("the attempt to fail", mark, |l| {
            l.contains("restart failed")
        });
    server.assert_serves(pid);
    server.group.wait_settled(&[pid]);

    server.restore_exe();
    let new = run_restart(bin, server.pid_file(), "20").new_pid();
    server.set_pid(new);
    wait_stopped_accepting(&server, pid);
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

/// No server to ask: a missing pid file, and a stale one that names a process that has
/// exited, each give exit 5 and say so.
fn no_live_process(bin: &Path) {
    let dir = TempDir::new("restart-stale");
    let pid_file = dir.path().join("server.pid");
    let run = run_restart(bin, &pid_file, "5");
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(run.stderr.contains("cannot read the pid file"), "{run:?}");

    // A process of ours that has exited and is reaped: its pid names nobody.
    let mut exited = {
        let _guard = SPAWN_LOCK.read().unwrap_or_else(PoisonError::into_inner);
        Command::new("true").spawn().expect("spawn true")
    };
    let dead = exited.id();
    exited.wait().expect("reap true");
    std::fs::write(&pid_file, format!("{dead}\n")).unwrap();
    assert!(!is_alive(dead));
    let run = run_restart(bin, &pid_file, "5");
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "no process has pid {dead}, which the pid file {} names: the server is not running",
            pid_file.display()
        )),
        "{run:?}"
    );
    assert!(run.stdout.is_empty(), "{run:?}");
}

/// 100 `SIGHUP`s in a burst right after the command's own: the command's request is the
/// one that restarts (exit 0), the burst is refused, and exactly one new generation serves,
/// alone. Then a burst right before a run: the command still answers (0, or 3 if the burst
/// started a restart first), never hangs, and the server settles on one process.
fn hup_burst_around_the_command(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();

    let mark = server.group.stderr.len();
    let started = Instant::now();
    let command = spawn_restart(bin, server.pid_file(), "20");
    server
        .group
        .stderr
        .wait_from("the command's request to arrive", mark, |l| {
            l.contains("restart requested over the control socket")
        });
    for _ in 0..100 {
        server.group.signal(old, Signal::HUP);
    }
    let run = finish(command, started);
    let new = run.new_pid();
    assert_eq!(server.pid_file_pid(), Some(new));
    server.set_pid(new);
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    server.group.wait_settled(&[new]);
    server.assert_serves(new);
    server.listening(new);
    assert_eq!(
        server.group.announced_pids(),
        [old, new],
        "one new generation"
    );

    for _ in 0..100 {
        server.group.signal(new, Signal::HUP);
    }
    let run = run_restart(bin, server.pid_file(), "20");
    let serving = match run.code {
        Some(0) => run.new_pid(),
        Some(3) => wait_for("the burst's restart to hand over", DEADLINE, || {
            server.pid_file_pid().filter(|&p| p != new)
        }),
        _ => panic!("neither restarted nor refused: {run:?}"),
    };
    wait_for(
        format_args!("the pid file to name {serving}"),
        DEADLINE,
        || (server.pid_file_pid() == Some(serving)).then_some(()),
    );
    server.set_pid(serving);
    server.group.wait_settled(&[serving]);
    server.assert_serves(serving);
}

/// The file descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// The hard `RLIMIT_NOFILE` of `pid` (`None`: unlimited), kept as it is when the soft one
/// is lowered: raising it back would need `CAP_SYS_RESOURCE`.
fn hard_fd_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let hard = line
        .split_whitespace()
        .nth(4)
        .expect("the hard limit column");
    hard.parse().ok()
}

/// A server out of file descriptors (its limit lowered to what it has open, plus a few,
/// and clients holding the rest): a command cannot even be accepted, so it gets no answer
/// (exit 4) instead of an earlier failure's. Once the clients leave, the next command gets
/// its own answer: the restart succeeds.
fn out_of_file_descriptors(bin: &Path) {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};
    let server = Server::start(bin, &Options::default());
    let pid = server.pid();
    let open = open_fds(pid) as u64;
    let limit = open + 4;
    let target = Pid::from_raw(pid as i32);
    let original = prlimit(
        target,
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: hard_fd_limit(pid),
        },
    )
    .expect("lower the server's RLIMIT_NOFILE");
    let mut clients = Vec::new();
    wait_for("the server to run out of fds", DEADLINE, || {
        if let Ok(conn) = TcpStream::connect(match server.endpoint() {
            Endpoint::Tcp(addr) => *addr,
            other => panic!("not TCP: {other}"),
        }) {
            clients.push(conn);
        }
        (open_fds(pid) as u64 >= limit).then_some(())
    });

    // Its own answer: not accepted in time (4), or accepted and the spawn failed (1).
    let run = run_restart(bin, server.pid_file(), "2");
    match run.code {
        Some(4) => assert!(run.stderr.contains("no answer from pid"), "{run:?}"),
        Some(1) => assert!(run.stderr.contains("Too many open files"), "{run:?}"),
        _ => panic!("out of fds: {run:?}"),
    }

    drop(clients);
    prlimit(target, Resource::Nofile, original).expect("restore the server's RLIMIT_NOFILE");
    let new = run_restart(bin, server.pid_file(), "20").new_pid();
    assert_ne!(new, pid);
    server.set_pid(new);
    wait_stopped_accepting(&server, pid);
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

/// A command run right after the previous one's answer (0, 5, 10 and 20 ms later) reaches
/// the generation that just took over, and gets the answer to its own request.
fn right_after_a_handover(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    for delay in [0, 5, 10, 20] {
        let old = server.pid();
        let new = run_restart(bin, server.pid_file(), "20").new_pid();
        std::thread::sleep(Duration::from_millis(delay));
        let run = run_restart(bin, server.pid_file(), "20");
        let newer = run.new_pid();
        assert!(
            newer != new && newer != old,
            "{delay} ms after a handover: {run:?}"
        );
        assert!(
            run.stderr.contains(&format!(
                "pid {new} handed over to pid {newer}, which is ready"
            )),
            "{delay} ms after a handover: {run:?}"
        );
        server.set_pid(newer);
        wait_stopped_accepting(&server, new);
        server.group.wait_settled(&[newer]);
    }
    server.assert_serves(server.pid());
}

/// Until proven, a new binary that exits with code 1 300 ms after it reported ready (it
/// panicked on its first requests), while the old generation is its fallback
/// (`--probation 60`): exit 6, the reason names the new pid and how it ended, and by then
/// the old generation serves again and the pid file names it. A later plain restart, with
/// the good binary back, works.
fn until_proven_falls_back(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--probation").arg("60"));
    let old = server.pid();
    let script = format!(
        "ECHO_EXIT_AFTER_READY=1:300 exec {} \"$@\"",
        sh_quote(server.real_binary())
    );
    server.replace_exe(&sh_script(&script), 0o755);

    let run = run_restart_until_proven(bin, server.pid_file(), "30");
    assert_eq!(run.code, Some(6), "{run:?}");
    let new = pid_in(&run.stderr);
    assert_ne!(new, old);
    assert!(
        run.stderr.contains(&format!(
            "restart failed: the new process (pid {new}) exited with code 1 after it took \
             over; pid {old} took the service back and serves again"
        )),
        "{run:?}"
    );
    assert!(run.stdout.is_empty(), "{run:?}");
    // Answered once the old generation serves again: the pid file names it already.
    assert_eq!(server.pid_file_pid(), Some(old), "the pid file: {run:?}");
    assert!(!is_alive(new), "the new process {new} is reaped");
    server.assert_serves(old);
    server.group.wait_settled(&[old]);

    // The plain request, answered at the handover, as ever.
    server.restore_exe();
    let newer = run_restart(bin, server.pid_file(), "20").new_pid();
    assert_ne!(newer, old);
    server.set_pid(newer);
    wait_stopped_accepting(&server, old);
    server.assert_serves(newer);
    assert!(
        is_alive(old),
        "{old} is the fallback of {newer} for a minute"
    );
}

/// Until proven, a good new binary with `--probation 1`: exit 0 with the new pid only once
/// the old generation is no longer its fallback: not before its drain and its probation
/// (a second at least), and the old generation ends its lifecycle (and exits 0) right
/// after it answered.
fn until_proven_succeeds_after_the_probation(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--probation").arg("1"));
    let old = server.pid();
    let mark = server.group.stderr.len();

    let run = run_restart_until_proven(bin, server.pid_file(), "30");
    let new = run.new_pid();
    assert_ne!(new, old);
    assert!(
        run.stderr.contains(&format!(
            "restarted: pid {old} handed over to pid {new}, which is ready; pid {old} is no \
             longer its fallback"
        )),
        "{run:?}"
    );
    assert!(
        run.elapsed >= Duration::from_secs(1),
        "answered before the end of the probation: {run:?}"
    );
    assert_eq!(server.pid_file_pid(), Some(new), "the pid file: {run:?}");
    server.set_pid(new);
    // The old generation went through its probation and ended its lifecycle (it logs the
    // end before it answers, and exits right after).
    server
        .group
        .stderr
        .wait_from(format_args!("{old} to be in probation"), mark, |l| {
            l.contains("lifecycle") && has_field(l, "to", "probation")
        });
    server
        .group
        .stderr
        .wait_from(format_args!("{old}'s lifecycle to end"), mark, |l| {
            l.contains("lifecycle ended")
        });
    assert_eq!(
        server.group.wait_exit(old),
        Exit::Code(0),
        "the old process"
    );
    assert!(
        server
            .group
            .stderr
            .find_from(mark, |l| l.contains("takes the service back"))
            .is_none(),
        "a fallback where none was due"
    );
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

macro_rules! restart_command_scenarios {
    ($bin:expr) => {
        #[test]
        fn restart_succeeds() {
            super::restart_succeeds($bin);
        }

        #[test]
        fn crashing_new_binary() {
            super::crashing_new_binary($bin);
        }

        #[test]
        fn hanging_new_binary() {
            super::hanging_new_binary($bin);
        }

        #[test]
        fn no_answer_in_time_then_refused() {
            super::no_answer_in_time_then_refused($bin);
        }

        #[test]
        fn no_live_process() {
            super::no_live_process($bin);
        }

        #[test]
        fn hup_burst_around_the_command() {
            super::hup_burst_around_the_command($bin);
        }

        #[test]
        fn out_of_file_descriptors() {
            super::out_of_file_descriptors($bin);
        }

        #[test]
        fn right_after_a_handover() {
            super::right_after_a_handover($bin);
        }

        #[test]
        fn until_proven_falls_back() {
            super::until_proven_falls_back($bin);
        }

        #[test]
        fn until_proven_succeeds_after_the_probation() {
            super::until_proven_succeeds_after_the_probation($bin);
        }
    };
}

mod echo_tokio {
    use std::path::Path;

    restart_command_scenarios!(Path::new(env!("CARGO_BIN_EXE_echo-tokio")));
}

mod echo_smol {
    use std::path::Path;

    restart_command_scenarios!(Path::new(env!("CARGO_BIN_EXE_echo-smol")));
}

/// `GET /` on `endpoint`: the pid in the `pid=<pid>` body.
fn http_pid(endpoint: &Endpoint) -> u32 {
    let Endpoint::Tcp(addr) = endpoint else {
        panic!("not TCP: {endpoint}");
    };
    let mut stream = TcpStream::connect_timeout(addr, DEADLINE).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .rsplit_once("pid=")
        .and_then(|(_, pid)| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {response:?}"))
}

/// The command as the issue names it: `hello-hyper restart --pid-file PATH`.
#[test]
fn hello_hyper_restart_command() {
    let bin = Path::new(env!("CARGO_BIN_EXE_hello-hyper"));
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    assert_eq!(http_pid(server.endpoint()), old);
    let new = run_restart(bin, server.pid_file(), "20").new_pid();
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    assert_eq!(http_pid(server.endpoint()), new);
    let line = server.group.stdout.find_from(0, |l| {
        l.starts_with("listening") && has_field(l, "pid", new)
    });
    assert!(line.is_some(), "the new generation announced its listener");
    server.group.wait_settled(&[new]);
}
