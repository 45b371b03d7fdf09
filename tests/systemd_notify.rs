//! End-to-end tests of the systemd notifications (`NOTIFY_SOCKET`, `Type=notify` and
//! `Type=notify-reload`): the test plays the service manager. It binds a Unix datagram
//! socket with `SO_PASSCRED`, so that the kernel tells it which process sent each message,
//! starts an echo server with `NOTIFY_SOCKET` naming it, and checks the exact sequence of
//! messages for a start, a restart, a failed restart and a stop, and the renewed stop
//! timeout extension of a drain without deadline. Each scenario is a function of the
//! server binary and runs against `echo-tokio` and `echo-smol` (one shared driver).

use std::ffi::OsString;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use endless_test_support::scenarios::spawned_child;
use endless_test_support::supervised::{Launch, Supervised};
use endless_test_support::{DEADLINE, Exit, Options, Server, TempDir, sh_script};
use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use rustix::process::Signal;

/// What `endless-unix` adds to the drain deadline (`notify::STOP_MARGIN`).
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// The extension of a drain without deadline (`notify::EXTEND_LEASE`).
const EXTEND_LEASE: Duration = Duration::from_secs(30);

const SERVING: &str = "READY=1\nSTATUS=Serving";
const SERVING_AFTER_FAILURE: &str = "READY=1\nSTATUS=Serving; the last upgrade failed, was rolled back or died after it was ready (see the log)";
const STOPPING: &str = "STOPPING=1\nSTATUS=Stopping: draining connections";

/// The service manager's end: a datagram socket that receives each message with the pid of
/// its sender.
struct Manager {
    socket: UnixDatagram,
    /// The value of `NOTIFY_SOCKET`.
    address: OsString,
    _dir: Option<TempDir>,
}

impl Manager {
    /// A socket file in a fresh temporary directory.
    fn at_path() -> Self {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self::new(socket, path.into_os_string(), Some(dir))
    }

    /// A socket in the abstract namespace (`@name`), as systemd uses for user managers.
    fn abstract_name() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "endless-e2e-notify-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract name");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        Self::new(socket, format!("@{name}").into(), None)
    }

    fn new(socket: UnixDatagram, address: OsString, dir: Option<TempDir>) -> Self {
        rustix::net::sockopt::set_socket_passcred(&socket, true).expect("SO_PASSCRED");
        socket
            .set_read_timeout(Some(DEADLINE))
            .expect("set the read timeout");
        Self {
            socket,
            address,
            _dir: dir,
        }
    }

    /// Server options with `NOTIFY_SOCKET` naming this socket.
    fn options(&self) -> Options {
        Options::default().env("NOTIFY_SOCKET", &self.address)
    }

    /// The next message and the pid of its sender, waiting at most [`DEADLINE`].
    fn recv(&self) -> (u32, String) {
        match self.try_recv(RecvFlags::empty()) {
            Ok(Some(message)) => message,
            Ok(None) => unreachable!("a blocking receive returns a message or fails"),
            Err(e) => panic!("no notification within {DEADLINE:?}: {e}"),
        }
    }

    /// Asserts that no message is waiting.
    fn assert_quiet(&self) {
        match self.try_recv(RecvFlags::DONTWAIT) {
            Ok(None) => {}
            Ok(Some(message)) => panic!("unexpected notification {message:?}"),
            Err(e) => panic!("receive: {e}"),
        }
    }

    /// One `recvmsg` with `SCM_CREDENTIALS`; `Ok(None)` when nothing is waiting and `flags`
    /// say not to wait.
    fn try_recv(&self, flags: RecvFlags) -> io::Result<Option<(u32, String)>> {
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match rustix::net::recvmsg(&self.socket, &mut iov, &mut control, flags) {
                Ok(msg) => break msg,
                Err(Errno::INTR) => {}
                Err(Errno::WOULDBLOCK) if flags.contains(RecvFlags::DONTWAIT) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        assert!(
            !msg.flags.contains(ReturnFlags::TRUNC),
            "a truncated message"
        );
        let pid = control
            .drain()
            .find_map(|message| match message {
                RecvAncillaryMessage::ScmCredentials(cred) => Some(cred.pid),
                _ => None,
            })
            .expect("SO_PASSCRED attaches the sender's credentials");
        let pid = u32::try_from(pid.as_raw_pid()).expect("a positive pid");
        let text = String::from_utf8(buf[..msg.bytes].to_vec()).expect("a UTF-8 message");
        Ok(Some((pid, text)))
    }
}

/// `CLOCK_MONOTONIC` in µs, the clock of `MONOTONIC_USEC=`.
fn monotonic_usec() -> u128 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u128::try_from(ts.tv_sec).expect("positive seconds");
    let nanos = u128::try_from(ts.tv_nsec).expect("positive nanoseconds");
    secs * 1_000_000 + nanos / 1000
}

/// Checks that `message` is `RELOADING=1` with a `MONOTONIC_USEC=` within `range` (µs).
fn assert_reloading(message: &str, range: std::ops::RangeInclusive<u128>) {
    let lines: Vec<&str> = message.lines().collect();
    let [reloading, monotonic, status] = lines[..] else {
        panic!("not a RELOADING message: {message:?}");
    };
    assert_eq!(reloading, "RELOADING=1", "{message:?}");
    assert_eq!(
        status, "STATUS=Restarting: starting the new generation",
        "{message:?}"
    );
    let usec: u128 = monotonic
        .strip_prefix("MONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"));
    assert!(
        range.contains(&usec),
        "MONOTONIC_USEC={usec} is not within {range:?}, when the restart was asked for"
    );
}

/// The duration of an `EXTEND_TIMEOUT_USEC=` message.
fn extension(message: &str) -> Duration {
    let usec: u64 = message
        .strip_prefix("EXTEND_TIMEOUT_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not an EXTEND_TIMEOUT_USEC message: {message:?}"));
    Duration::from_micros(usec)
}

/// A start, a restart, a failed restart and a stop, with the exact messages and senders:
/// - start: `READY=1` from the first process; a staged upgrade is then refused, silently
///   for the manager;
/// - restart: `RELOADING=1` with `MONOTONIC_USEC` from the old process, then
///   `MAINPID=<new>` and `READY=1` from the new one; nothing from the old one as it drains
///   and exits (no `STOPPING=1`);
/// - failed restart (the new binary exits 1): `RELOADING=1`, then `READY=1` again, both
///   from the serving process, with `MAINPID=<itself>` (the main process again);
/// - stop (`SIGTERM`, `--drain-timeout 20`): `STOPPING=1`, then `EXTEND_TIMEOUT_USEC`
///   covering the drain deadline plus the margin; nothing after.
fn start_restart_failed_restart_stop(bin: &Path) {
    let manager = Manager::at_path();
    let drain_timeout = Duration::from_secs(20);
    let server = Server::start(
        bin,
        &manager
            .options()
            .arg("--drain-timeout")
            .arg(drain_timeout.as_secs().to_string()),
    );
    let first = server.pid();
    assert_eq!(manager.recv(), (first, SERVING.to_owned()), "start");
    manager.assert_quiet();

    // A staged upgrade (SIGUSR1 in the examples) is refused under a service manager:
    // nothing is spawned and nothing is said.
    let mark = server.group.stderr.len();
    server.group.signal(first, Signal::USR1);
    server
        .group
        .stderr
        .wait_from("the stage request to be refused", mark, |l| {
            l.contains("refused")
                && l.contains("staged upgrades are refused under a service manager")
        });
    assert!(
        server
            .group
            .stderr
            .find_from(mark, |l| l.contains("spawned the new generation"))
            .is_none(),
        "a staged generation was spawned under a service manager"
    );
    manager.assert_quiet();

    // A restart.
    let before = monotonic_usec();
    let second = server.restart();
    let after = monotonic_usec();
    let (sender, reloading) = manager.recv();
    assert_eq!(sender, first, "RELOADING=1 comes from the old process");
    assert_reloading(&reloading, before..=after);
    assert_eq!(
        manager.recv(),
        (second, format!("MAINPID={second}\n{SERVING}")),
        "the new generation makes itself the main process"
    );
    // The old process exited (`restart` waited for it) without a word.
    manager.assert_quiet();

    // A failed restart: the serving process says it serves again.
    server.replace_exe(&sh_script("exit 1"), 0o755);
    let before = monotonic_usec();
    server.hup_expecting_failure();
    let after = monotonic_usec();
    let (sender, reloading) = manager.recv();
    assert_eq!(sender, second);
    assert_reloading(&reloading, before..=after);
    assert_eq!(
        manager.recv(),
        (second, format!("MAINPID={second}\n{SERVING_AFTER_FAILURE}")),
        "READY=1 again after the failed restart"
    );
    manager.assert_quiet();
    server.restore_exe();

    // A stop.
    let term = Instant::now();
    server.group.signal(second, Signal::TERM);
    assert_eq!(manager.recv(), (second, STOPPING.to_owned()), "stop");
    let (sender, extend) = manager.recv();
    let waited = term.elapsed();
    assert_eq!(sender, second);
    let extended = extension(&extend);
    let full = drain_timeout + STOP_MARGIN;
    assert!(
        extended <= full && extended + waited >= full,
        "EXTEND_TIMEOUT_USEC of {extended:?}, {waited:?} after SIGTERM: expected the {full:?} \
         from the drain's start to its deadline plus the margin"
    );
    assert_eq!(server.group.wait_exit(second), Exit::Code(0));
    manager.assert_quiet();
}

/// A drain without deadline (`--drain-timeout never`) held open by a client: after
/// `STOPPING=1`, `EXTEND_TIMEOUT_USEC` of the lease, renewed (here once, ten seconds later)
/// until the drain ends when the client hangs up. With an abstract `NOTIFY_SOCKET`.
fn unbounded_drain_renews_the_extension(bin: &Path) {
    let manager = Manager::abstract_name();
    let server = Server::start(bin, &manager.options().arg("--drain-timeout").arg("never"));
    let pid = server.pid();
    assert_eq!(manager.recv(), (pid, SERVING.to_owned()), "start");

    let mut client = server.connect();
    assert_eq!(client.ask("hello").unwrap(), (pid, "hello".to_owned()));
    server.group.signal(pid, Signal::TERM);
    assert_eq!(manager.recv(), (pid, STOPPING.to_owned()), "stop");
    let lease = format!("EXTEND_TIMEOUT_USEC={}", EXTEND_LEASE.as_micros());
    assert_eq!(manager.recv(), (pid, lease.clone()), "the first extension");
    let first = Instant::now();
    assert_eq!(manager.recv(), (pid, lease), "the renewal");
    assert!(
        first.elapsed() < EXTEND_LEASE,
        "renewed after {:?}, too late for the lease",
        first.elapsed()
    );
    // Still draining: the client's connection is served.
    assert_eq!(client.ask("still").unwrap(), (pid, "still".to_owned()));

    drop(client);
    assert_eq!(server.group.wait_exit(pid), Exit::Code(0));
    manager.assert_quiet();
}

/// Issue 15.2 under a service manager: the old generation is killed while its successor
/// starts (a script that waits for a gate file before it `exec`s the real binary). The
/// successor, whose parent is gone, adopts the listener and makes itself the main process:
/// `MAINPID=<successor>` with `READY=1`, and the pid file names it.
fn orphaned_successor_becomes_the_main_pid(bin: &Path) {
    let manager = Manager::at_path();
    let server = Server::start(bin, &manager.options());
    let first = server.pid();
    assert_eq!(manager.recv(), (first, SERVING.to_owned()), "start");

    let gate = server.install_gated_exe();
    let mark = server.group.stderr.len();
    server.group.signal(first, Signal::HUP);
    let (sender, _reloading) = manager.recv();
    assert_eq!(sender, first, "RELOADING=1 comes from the old process");
    let successor = spawned_child(&server, mark);
    server.group.signal(first, Signal::KILL);
    assert_eq!(
        server.group.wait_exit(first),
        Exit::Signal(Signal::KILL.as_raw())
    );
    server.restore_exe();
    std::fs::write(&gate, b"").expect("open the gate");

    assert_eq!(
        manager.recv(),
        (successor, format!("MAINPID={successor}\n{SERVING}")),
        "the orphaned successor makes itself the main process"
    );
    server.wait_pid_file(successor);
    server.set_pid(successor);
    server.assert_serves(successor);
    manager.assert_quiet();
}

/// Issue 15.1 under a service manager: the new generation is ready (it makes itself the
/// main process), then is killed 300 ms later; the old generation, its fallback, takes the
/// service back and makes itself the main process again: `MAINPID=<old>` with `READY=1`,
/// and nothing else is said. The pid file names it.
fn fallback_reclaims_the_main_pid(bin: &Path) {
    let manager = Manager::at_path();
    let server = Server::start(bin, &manager.options().arg("--probation").arg("60"));
    let first = server.pid();
    assert_eq!(manager.recv(), (first, SERVING.to_owned()), "start");

    let second = server.hup();
    let (sender, _reloading) = manager.recv();
    assert_eq!(sender, first, "RELOADING=1 comes from the old process");
    assert_eq!(
        manager.recv(),
        (second, format!("MAINPID={second}\n{SERVING}")),
        "the new generation makes itself the main process"
    );
    std::thread::sleep(Duration::from_millis(300)); // the bad deploy's moment
    server.group.signal(second, Signal::KILL);
    assert_eq!(
        manager.recv(),
        (first, format!("MAINPID={first}\n{SERVING_AFTER_FAILURE}")),
        "the fallback makes itself the main process again"
    );
    server.wait_pid_file(first);
    server.set_pid(first);
    server.assert_serves(first);
    manager.assert_quiet();
}

/// Issue 16 under systemd: with the supervisor mode on, the supervisor is the service's
/// main process. It relays what the generations say without their `MAINPID=` (every
/// message comes from its pid), and the generations never talk to systemd themselves.
fn the_supervisor_relays_and_stays_the_main_process(bin: &Path) {
    let manager = Manager::at_path();
    let server = Supervised::start_with_env(
        bin,
        Launch::Requested,
        &[],
        &[("NOTIFY_SOCKET", manager.address.as_os_str())],
    );
    let supervisor = server.init();
    assert_eq!(manager.recv(), (supervisor, SERVING.to_owned()), "start");
    server.hup();
    let (sender, reloading) = manager.recv();
    assert_eq!(sender, supervisor);
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading:?}");
    assert_eq!(
        manager.recv(),
        (supervisor, SERVING.to_owned()),
        "the new generation's ready, relayed without MAINPID="
    );
    server.stop();
    assert_eq!(manager.recv(), (supervisor, STOPPING.to_owned()), "stop");
    manager.assert_quiet();
}

macro_rules! notify_tests {
    ($bin:expr) => {
        #[test]
        fn start_restart_failed_restart_stop() {
            super::start_restart_failed_restart_stop($bin);
        }

        #[test]
        fn unbounded_drain_renews_the_extension() {
            super::unbounded_drain_renews_the_extension($bin);
        }

        #[test]
        fn orphaned_successor_becomes_the_main_pid() {
            super::orphaned_successor_becomes_the_main_pid($bin);
        }

        #[test]
        fn fallback_reclaims_the_main_pid() {
            super::fallback_reclaims_the_main_pid($bin);
        }

        #[test]
        fn the_supervisor_relays_and_stays_the_main_process() {
            super::the_supervisor_relays_and_stays_the_main_process($bin);
        }
    };
}

mod tokio {
    notify_tests!(std::path::Path::new(env!("CARGO_BIN_EXE_echo-tokio")));
}

mod smol {
    notify_tests!(std::path::Path::new(env!("CARGO_BIN_EXE_echo-smol")));
}
