//! Scenarios of the supervisor mode (issue 16): an HTTP example server as PID 1 of a fresh
//! PID namespace (`unshare --pid --fork --mount-proc`, a container's situation without a
//! container runtime), or outside a namespace with `ENDLESS_SUPERVISE=1`.
//!
//! The process tree: the session leader (`unshare`, or the supervisor itself) → the
//! supervisor (PID 1 in the namespace) → the generations. Inside a namespace the pids the
//! server prints (its answers, the pid file) are the namespace's; signals from this process
//! go to host pids: only the supervisor's is needed (`kill -HUP 1` from inside is the same
//! process).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::http_client::{Load, LoadConfig, Proto, Target};
use crate::{
    DEADLINE, Endpoint, Exit, Group, TempDir, fd_count, install_copy, install_file, is_alive,
    session_members, sh_script, signal, wait_for,
};

/// How the supervisor is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// PID 1 of a fresh PID namespace: on by default.
    Namespace,
    /// A plain process with `ENDLESS_SUPERVISE=1`.
    Requested,
}

/// A supervised server under test.
#[derive(Debug)]
pub struct Supervised {
    // Dropped first: every process is gone before the directory.
    pub group: Group,
    dir: TempDir,
    exe: PathBuf,
    real: PathBuf,
    pid_file: PathBuf,
    /// The supervisor's host pid.
    init: u32,
    addr: SocketAddr,
    launch: Launch,
}

impl Supervised {
    /// Starts `bin` supervised as `launch` says, with `args` after the shared ones; waits
    /// until the first generation serves.
    pub fn start(bin: &Path, launch: Launch, args: &[&str]) -> Self {
        Self::start_with_env(bin, launch, args, &[])
    }

    /// [`Supervised::start`] with more environment variables.
    pub fn start_with_env(
        bin: &Path,
        launch: Launch,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let name = bin.file_name().expect("a file name").to_owned();
        let dir = TempDir::new(&format!("supervised-{}", name.to_string_lossy()));
        let exe = dir.path().join(&name);
        install_copy(bin, &exe);
        let real = dir.path().join("real").join(&name);
        fs::create_dir_all(real.parent().expect("a parent")).expect("mkdir real");
        install_copy(bin, &real);
        let pid_file = dir.path().join("server.pid");
        let mut command = match launch {
            Launch::Namespace => {
                let mut command = Group::command(Path::new("unshare"));
                if !rustix::process::geteuid().is_root() {
                    command.args(["--user", "--map-root-user"]);
                }
                command.args(["--pid", "--fork", "--mount-proc"]).arg(&exe);
                command
            }
            Launch::Requested => {
                let mut command = Group::command(&exe);
                command.env("ENDLESS_SUPERVISE", "1");
                command
            }
        };
        command
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .args(["--probation", "0"])
            .args(args)
            .env("RUST_LOG", "info,endless_unix::supervisor=debug")
            .envs(env.iter().copied());
        let label = format!("{} ({launch:?})", name.to_string_lossy());
        let group = Group::spawn(&label, command);
        let leader = group.leader();
        let init = match launch {
            Launch::Requested => leader,
            Launch::Namespace => wait_for(
                format_args!("{label}: unshare to start the namespace's init"),
                DEADLINE,
                || {
                    session_members(leader)
                        .into_iter()
                        .find(|p| p.ppid == leader && !p.is_zombie())
                        .map(|p| p.pid)
                },
            ),
        };
        let mut server = Self {
            group,
            dir,
            exe,
            real,
            pid_file,
            init,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            launch,
        };
        let first = server.wait_serving(None);
        let listening = wait_for(
            format_args!("{label}: the first generation to announce its listener"),
            DEADLINE,
            || server.group.listening(first, 1),
        );
        let Endpoint::Tcp(addr) = Endpoint::parse(&listening[0].addr) else {
            panic!("a TCP listener expected: {listening:?}");
        };
        server.addr = addr;
        server
    }

    /// The supervisor's host pid.
    pub fn init(&self) -> u32 {
        self.init
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The generation the pid file names (a namespace pid inside a namespace).
    pub fn current(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Waits until the pid file names a generation other than `old`; asserts meanwhile
    /// that the supervisor lives.
    fn wait_serving(&self, old: Option<u32>) -> u32 {
        wait_for(
            format_args!("a generation after {old:?} to write the pid file"),
            DEADLINE,
            || {
                assert!(is_alive(self.init), "the supervisor exited");
                self.current().filter(|&p| Some(p) != old)
            },
        )
    }

    /// `SIGHUP` to the supervisor (`kill -HUP 1`); waits for the new generation.
    pub fn hup(&self) -> u32 {
        let old = self.current();
        let mark = self.group.stderr.len();
        signal(self.init, Signal::HUP);
        let new = wait_for(
            format_args!("a new generation after {old:?}"),
            DEADLINE,
            || {
                let failed = self
                    .group
                    .stderr
                    .find_from(mark, |l| l.contains("restart failed"));
                assert!(failed.is_none(), "the restart failed: {failed:?}");
                assert!(is_alive(self.init), "the supervisor exited");
                self.current().filter(|&p| Some(p) != old)
            },
        );
        // The old generation stopped accepting: new connections are the new one's.
        self.group
            .stderr
            .wait_from(format_args!("{old:?} to stop accepting"), mark, |l| {
                l.contains(crate::STOPPED_ACCEPTING) || l.contains("lifecycle ended")
            });
        new
    }

    /// `SIGHUP` to the supervisor with a broken binary installed: the restart fails, the
    /// serving generation stays.
    pub fn hup_expecting_failure(&self) {
        let old = self.current();
        let mark = self.group.stderr.len();
        signal(self.init, Signal::HUP);
        self.group
            .stderr
            .wait_from("the restart to fail", mark, |l| {
                l.contains("restart failed")
            });
        assert_eq!(self.current(), old, "the pid file");
        assert!(is_alive(self.init), "the supervisor exited");
    }

    /// Replaces the executable on disk (atomically).
    pub fn replace_exe(&self, contents: &[u8]) {
        install_file(&self.exe, contents, 0o755);
    }

    pub fn restore_exe(&self) {
        install_copy(&self.real, &self.exe);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Zombies of the session nobody reaps (this test process reaps its own children).
    pub fn wait_no_zombie(&self) {
        wait_for("no zombie in the session", DEADLINE, || {
            self.group.unreaped_zombies().is_empty().then_some(())
        });
    }

    /// The supervisor's resident memory in KiB (`VmRSS`).
    pub fn init_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.init)).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn init_fds(&self) -> usize {
        fd_count(self.init).expect("the supervisor's fds")
    }

    /// `SIGTERM` to the supervisor: the service stops, and the session leader (the
    /// supervisor, or `unshare`, which exits with its namespace's init) exits 0.
    pub fn stop(&self) {
        signal(self.init, Signal::TERM);
        assert_eq!(
            self.group.wait_exit(self.group.leader()),
            Exit::Code(0),
            "{:?}: the exit status",
            self.launch
        );
        self.group.wait_settled(&[]);
    }
}

/// Ten restarts by `SIGHUP` to the supervisor under HTTP/1.1 keep-alive load: no failed
/// request, the supervisor never exits, no zombie; a `SIGTERM` then stops the service
/// with status 0. Prints the figures.
pub fn ten_restarts_under_load(bin: &Path, launch: Launch) {
    let server = Supervised::start(bin, launch, &[]);
    let load = Load::start(
        Target::cleartext(server.addr(), Proto::Http1),
        LoadConfig {
            connections: 32,
            ..LoadConfig::default()
        },
    );
    let answers = |pid: u32| {
        wait_for(
            format_args!("50 answers from {pid} ({} failures)", load.failures()),
            DEADLINE,
            || (load.responses_from(pid) >= 50).then_some(()),
        );
    };
    let first = server.current().expect("a generation");
    answers(first);
    let started = Instant::now();
    let mut pids = vec![first];
    for _ in 0..10 {
        let new = server.hup();
        answers(new);
        pids.push(new);
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = load.stop();
    eprintln!(
        "{:?}, {}: 10 restarts by SIGHUP to the supervisor in {:.1}s: {}",
        launch,
        bin.display(),
        started.elapsed().as_secs_f64(),
        report.summary()
    );
    assert!(
        report.failures.is_empty(),
        "{} failed request(s): {}",
        report.failures.len(),
        report.failure_list(10)
    );
    assert!(is_alive(server.init()), "the supervisor exited");
    server.wait_no_zombie();
    server.stop();
}

/// A crashing new binary and a hanging one leave the service up; the good binary back, a
/// restart works.
pub fn bad_binaries_leave_the_service_up(bin: &Path, launch: Launch) {
    let server = Supervised::start(bin, launch, &["--upgrade-timeout", "1"]);
    let serving = server.current();
    server.replace_exe(&sh_script("exit 1"));
    server.hup_expecting_failure();
    server.replace_exe(&sh_script("exec sleep 600"));
    server.hup_expecting_failure();
    assert_eq!(server.current(), serving);
    server.restore_exe();
    server.hup();
    server.wait_no_zombie();
    server.stop();
}

/// A new binary that leaves an orphan behind (a double fork, then it crashes): the orphan
/// ends up the supervisor's child, which reaps it.
pub fn orphans_are_reaped(bin: &Path, launch: Launch) {
    let server = Supervised::start(bin, launch, &[]);
    let marker = server.dir().join("orphan.pid");
    let script = format!(
        "(sleep 0.3 & echo $! > {}) &\nwait\nexit 1",
        crate::sh_quote(&marker)
    );
    server.replace_exe(&sh_script(&script));
    let mark = server.group.stderr.len();
    server.hup_expecting_failure();
    server
        .group
        .stderr
        .wait_from("the orphan to be reaped", mark, |l| {
            l.contains("reaped an orphan")
        });
    assert!(marker.exists(), "the script did not fork its orphan");
    server.wait_no_zombie();
    server.restore_exe();
    server.stop();
}

/// The supervisor's own memory and fd count stay flat over 50 restarts. Returns (fds, RSS
/// KiB) after 5 and after 55 restarts.
pub fn supervisor_stays_flat(bin: &Path, launch: Launch) -> ((usize, u64), (usize, u64)) {
    let server = Supervised::start(bin, launch, &[]);
    for _ in 0..5 {
        server.hup();
    }
    let settle = |server: &Supervised| {
        server.wait_no_zombie();
        (server.init_fds(), server.init_rss_kib())
    };
    let before = settle(&server);
    for _ in 0..50 {
        server.hup();
    }
    let after = settle(&server);
    eprintln!(
        "{launch:?}: the supervisor after 5 restarts {before:?}, after 55 {after:?} (fds, RSS KiB)"
    );
    assert_eq!(after.0, before.0, "the supervisor's fd count grew");
    assert!(
        after.1 <= before.1 + 1024,
        "the supervisor's memory grew from {} to {} KiB",
        before.1,
        after.1
    );
    server.stop();
    (before, after)
}

/// For a test that needs the command `unshare`: panics with a clear message without it.
pub fn require_unshare() {
    let found = Command::new("unshare")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "these tests need unshare (util-linux)");
}

/// A staged upgrade through the supervisor: `SIGUSR1` to it starts the new generation
/// beside the serving one (which claims the main pid once ready); `SIGWINCH` (rollback) and
/// `SIGQUIT` (commit) go to the generation that staged it, not to the newest one.
pub fn staged_upgrade(bin: &Path, launch: Launch) {
    let server = Supervised::start(bin, launch, &[]);
    let old = server.current().expect("a generation");
    let staged = |server: &Supervised| {
        let mark = server.group.stderr.len();
        signal(server.init, Signal::USR1);
        let new = server.wait_serving(Some(old));
        server
            .group
            .stderr
            .wait_from("the old generation to be staged", mark, |l| {
                l.contains("lifecycle") && crate::has_field(l, "to", "staged")
            });
        (new, mark)
    };
    // Rolled back: the old generation serves alone again and names itself.
    let (first, mark) = staged(&server);
    signal(server.init, Signal::WINCH);
    wait_for("the old generation to serve again", DEADLINE, || {
        (server.current() == Some(old)).then_some(())
    });
    server
        .group
        .stderr
        .wait_from(format_args!("{first} to stop"), mark, |l| {
            l.contains("the rolled-back generation exited")
        });
    // Committed: the old generation drains and the staged one serves on.
    let (second, mark) = staged(&server);
    signal(server.init, Signal::QUIT);
    server
        .group
        .stderr
        .wait_from("the old generation to drain", mark, |l| {
            l.contains("lifecycle")
                && crate::has_field(l, "from", "staged")
                && crate::has_field(l, "to", "draining")
        });
    assert_eq!(server.current(), Some(second));
    server.wait_no_zombie();
    server.stop();
}
