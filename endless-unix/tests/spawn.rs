//! The spawn path with real children: the test binary re-executes itself as the child
//! (`child_helper`, which does nothing when run as a test) and reports what it inherited,
//! so these tests see exactly what a new generation finds at 3, 4, … after `posix_spawn`,
//! and how the parent reads its readiness channel.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use endless_core::ready::{Readiness, ReadyParser};
use endless_core::{ChildFailure, FIRST_INHERITED_FD, FdKind, Origin, plan};
use endless_unix::inherit::Inherited;
use endless_unix::spawn::{self, Child, Executable, HandoffFd, prepare, send_readiness};
use rustix::fs::OFlags;
use rustix::io::FdFlags;

fn sh(script: &str) -> Executable {
    Executable::new("/bin/sh", ["-c", script], "/", [("PATH", "/usr/bin:/bin")])
}

fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
    rustix::io::fcntl_getfd(fd)
        .unwrap()
        .contains(FdFlags::CLOEXEC)
}

/// Whether the open fd `fd` of this process is close-on-exec (`None`: it is not open), as
/// `/proc/self/fdinfo` tells: no `OwnedFd` is made of a number this test does not own.
fn cloexec_of(fd: RawFd) -> Option<bool> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    let flags = u32::from_str_radix(flags, 8).ok()?;
    Some(flags & OFlags::CLOEXEC.bits() != 0)
}

/// A directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "endless-unix-spawn-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---- spawning real children ---------------------------------------------------------

/// A spawned child, killed and reaped if the test fails before waiting for it.
/// What a child wrote and how it ended.
struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A spawned child with the read ends of its stdout and stderr pipes (if redirected),
/// killed and reaped when dropped.
struct Reaped {
    child: Option<Child>,
    stdout: Option<io::PipeReader>,
    stderr: Option<io::PipeReader>,
}

impl Reaped {
    fn new(child: Child) -> Self {
        Self::with_pipes(child, None, None)
    }

    fn with_pipes(
        child: Child,
        stdout: Option<io::PipeReader>,
        stderr: Option<io::PipeReader>,
    ) -> Self {
        Self {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Reads stdout and stderr to their ends (both at once, so that a child blocked on a
    /// full pipe cannot hang it), then reaps the child.
    fn output(mut self) -> Output {
        let read = |pipe: Option<io::PipeReader>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    pipe.read_to_end(&mut bytes).unwrap();
                }
                bytes
            })
        };
        let stdout = read(self.stdout.take());
        let stderr = read(self.stderr.take());
        let status = self.child.take().unwrap().wait().unwrap();
        Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `/dev/null`, for a child's stdin.
fn null() -> File {
    File::open("/dev/null").unwrap()
}

fn read_readiness(ready: OwnedFd, pid: u32) -> (Readiness, bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut parser = ReadyParser::new(pid);
    let mut readiness = Readiness::Pending;
    let mut file = File::from(ready);
    let mut buf = [0; 64];
    loop {
        assert!(Instant::now() < deadline, "no EOF on the readiness channel");
        match file.read(&mut buf) {
            Ok(0) => {
                let eof_after_ready = readiness == Readiness::Ready;
                return (parser.eof(), eof_after_ready);
            }
            Ok(n) => readiness = parser.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the readiness channel: {e}"),
        }
    }
}

/// What a spawned child did.
struct Run {
    readiness: Readiness,
    eof_after_ready: bool,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// `/proc/self/fd` link of the child's end of the readiness channel
    /// (`socket:[inode]`).
    pipe: String,
}

impl Run {
    fn report(&self) -> Report {
        Report::parse(&self.stdout)
    }

    fn context(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn run(
    exe: &Executable,
    handoff: &[HandoffFd<'_>],
    tweak: impl FnOnce(&mut spawn::Command),
) -> Run {
    let mut prepared = prepare(exe, handoff).unwrap();
    let (stdout, stdout_w) = io::pipe().unwrap();
    let (stderr, stderr_w) = io::pipe().unwrap();
    prepared
        .command
        .stdin(null())
        .stdout(stdout_w)
        .stderr(stderr_w);
    tweak(&mut prepared.command);
    let pipe = link(prepared.child_end().as_raw_fd());
    let (child, ready) = prepared.spawn_with(spawn::Command::spawn).unwrap();
    let child = Reaped::with_pipes(child, Some(stdout), Some(stderr));
    let (readiness, eof_after_ready) = read_readiness(ready, child.id());
    let output = child.output();
    Run {
        readiness,
        eof_after_ready,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        pipe,
    }
}

/// Where `/proc/self/fd/<fd>` points (`socket:[inode]`, `pipe:[inode]`, a path).
fn link(fd: RawFd) -> String {
    fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every open fd above 2 of this process: its link and whether it is close-on-exec.
fn open_fds() -> BTreeMap<RawFd, (String, bool)> {
    let own_dir = format!("/proc/{}/fd", std::process::id());
    let mut fds = BTreeMap::new();
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let fd: RawFd = entry.file_name().to_str().unwrap().parse().unwrap();
        let Ok(target) = fs::read_link(entry.path()) else {
            continue; // the directory's own fd, closed by now
        };
        let target = target.to_string_lossy().into_owned();
        if fd <= 2 || target == own_dir {
            continue;
        }
        let Some(cloexec) = cloexec_of(fd) else {
            continue; // closed by another thread meanwhile
        };
        fds.insert(fd, (target, cloexec));
    }
    fds
}

/// The target fds of the handoff in these tests: 3, 4, 5, 6, and 7 for the
/// readiness channel of four handoff.
const TARGETS: [RawFd; 5] = [3, 4, 5, 6, 7];

/// The variable that tells a helper which fds are strays.
const STRAYS_VAR: &str = "ENDLESS_UNIX_TEST_STRAYS";

/// The fds above 2 that the test process holds without `FD_CLOEXEC`: inherited from
/// whoever started the tests (shells and job runners leak some). Every child inherits
/// them, as `exec` passes them on, and `prepare` does not close them; the checks of
/// "nothing else is open" leave them out. A helper reads them from [`STRAYS_VAR`], since
/// its own handoff lack `FD_CLOEXEC` too.
fn strays() -> BTreeSet<RawFd> {
    match std::env::var(STRAYS_VAR) {
        Ok(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect(),
        Err(_) => open_fds()
            .into_iter()
            .filter(|(_, (_, cloexec))| !cloexec)
            .map(|(fd, _)| fd)
            .collect(),
    }
}

fn strays_value() -> String {
    strays()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `fds` without the strays that lie outside `targets` (those inside were overwritten).
fn without_strays<T>(mut fds: BTreeMap<RawFd, T>, targets: &[RawFd]) -> BTreeMap<RawFd, T> {
    for fd in strays() {
        if !targets.contains(&fd) {
            fds.remove(&fd);
        }
    }
    fds
}

/// The name of the test that runs as a child process, and the variable that makes it do
/// something. (Run normally, it does nothing.)
const HELPER_TEST: &str = "child_helper";
const HELPER_VAR: &str = "ENDLESS_UNIX_TEST_HELPER";

/// The test binary itself, running [`child_helper`] in `mode`, with this process's
/// environment minus every `ENDLESS_*` and `LISTEN_*` variable, plus `extra`.
fn helper(mode: &str, extra: &[(&str, &str)]) -> Executable {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.as_bytes();
            !k.starts_with(b"ENDLESS_") && !k.starts_with(b"LISTEN_")
        })
        .collect();
    env.push((HELPER_VAR.into(), mode.into()));
    env.push((STRAYS_VAR.into(), strays_value().into()));
    env.extend(extra.iter().map(|&(k, v)| (k.into(), v.into())));
    Executable::new(
        std::env::current_exe().unwrap(),
        [
            HELPER_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ],
        std::env::current_dir().unwrap(),
        env,
    )
}

/// What a child in mode `list` printed.
#[derive(Debug, Default)]
struct Report {
    /// Its fds above 2 at start-up: link, close-on-exec.
    fds: BTreeMap<RawFd, (String, bool)>,
    /// Its `ENDLESS_*` and `LISTEN_*` variables.
    env: BTreeMap<String, String>,
    origin: String,
    error: Option<String>,
    /// Adopted entries: name → (kind, close-on-exec).
    entries: BTreeMap<String, (String, bool)>,
    notified: bool,
}

impl Report {
    fn parse(stdout: &str) -> Self {
        let mut r = Self::default();
        for line in stdout.lines() {
            let Some(line) = line.strip_prefix("@@ ") else {
                continue;
            };
            // The last field may contain spaces (entry names).
            let words: Vec<&str> = line.splitn(4, ' ').collect();
            match words.as_slice() {
                ["fd", fd, cloexec, target] => {
                    r.fds
                        .insert(fd.parse().unwrap(), ((*target).into(), *cloexec == "true"));
                }
                ["env", kv] => {
                    let (k, v) = kv.split_once('=').unwrap();
                    r.env.insert(k.into(), v.into());
                }
                ["origin", origin] => r.origin = (*origin).into(),
                ["entry", kind, cloexec, name] => {
                    r.entries
                        .insert((*name).into(), ((*kind).into(), *cloexec == "true"));
                }
                ["notified"] => r.notified = true,
                ["adopt-error", ..] => r.error = Some(line["adopt-error ".len()..].into()),
                _ => {}
            }
        }
        r
    }
}

/// Runs as a child process when [`HELPER_VAR`] is set; does nothing otherwise.
#[test]
fn child_helper() {
    let Some(mode) = std::env::var_os(HELPER_VAR) else {
        return;
    };
    match mode.to_str() {
        Some("list") => helper_list(),
        Some("scramble") => helper_scramble(),
        other => panic!("unknown helper mode {other:?}"),
    }
}

/// Prints this process's fds and variables, adopts what it inherited, takes every entry
/// and reports ready.
fn helper_list() {
    for (fd, (target, cloexec)) in open_fds() {
        println!("@@ fd {fd} {cloexec} {target}");
    }
    for (k, v) in std::env::vars() {
        if k.starts_with("ENDLESS_") || k.starts_with("LISTEN_") {
            println!("@@ env {k}={v}");
        }
    }
    let inherited = match Inherited::from_env() {
        Ok(inherited) => inherited,
        Err(e) => {
            println!("@@ adopt-error {e}");
            return;
        }
    };
    println!("@@ origin {:?}", inherited.origin());
    let mut taken = Vec::new();
    for name in inherited.unclaimed() {
        let kind = inherited.kind(&name).unwrap();
        let fd = inherited.take(&name, kind).unwrap().unwrap();
        let cloexec = is_cloexec(fd.as_fd());
        println!("@@ entry {kind} {cloexec} {name}");
        taken.push(fd);
    }
    if let Some(ready) = inherited.take_ready_channel() {
        assert!(is_cloexec(ready.as_fd()));
        send_readiness(ready).unwrap();
        println!("@@ notified");
    }
}

/// Started with a TCP listener "a", a Unix listener "b" and a UDP socket "c" at 3, 4, 5
/// and the readiness channel at 6: adopts them, checks a plain subprocess sees none of
/// them, hands them on in the order c, a, b (all three sources inside the target range,
/// a cycle) plus a duplicate of "a" far above, checks where the grandchild finds them,
/// and reports ready.
fn helper_scramble() {
    let at_start = without_strays(open_fds(), &TARGETS[..4]);
    assert_eq!(
        at_start.keys().copied().collect::<Vec<_>>(),
        [3, 4, 5, 6],
        "{at_start:?}"
    );
    assert!(
        at_start.values().all(|(_, cloexec)| !cloexec),
        "the plan clears FD_CLOEXEC on what it hands over: {at_start:?}"
    );

    let inherited = Inherited::from_env().unwrap();
    assert_eq!(inherited.origin(), Origin::Inherited);
    assert_eq!(
        inherited.parent_pid(),
        Some(std::os::unix::process::parent_id())
    );
    let a = inherited.take("a", FdKind::TcpListener).unwrap().unwrap();
    let b = inherited.take("b", FdKind::UnixListener).unwrap().unwrap();
    let c = inherited.take("c", FdKind::UdpSocket).unwrap().unwrap();
    let ready = inherited.take_ready_channel().unwrap();
    let raw: Vec<RawFd> = [&a, &b, &c, &ready]
        .iter()
        .map(|fd| fd.as_raw_fd())
        .collect();
    assert_eq!(raw, [3, 4, 5, 6]);
    for fd in [&a, &b, &c, &ready] {
        assert!(is_cloexec(fd.as_fd()), "adoption sets FD_CLOEXEC");
    }
    assert!(inherited.unclaimed().is_empty());
    assert!(matches!(
        Inherited::from_env(),
        Err(endless_unix::inherit::AdoptError::AlreadyAdopted { fd: 3 })
    ));

    // A subprocess of the application, with this process's environment (its ENDLESS_*
    // variables name our parent): it inherits no fd and starts fresh.
    let plain = Command::new(std::env::current_exe().unwrap())
        .args([
            HELPER_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(HELPER_VAR, "list")
        .env(STRAYS_VAR, strays_value())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&plain.stdout);
    let report = Report::parse(&stdout);
    assert!(plain.status.success(), "{stdout}");
    assert!(
        without_strays(report.fds, &[]).is_empty(),
        "a subprocess inherited fds: {stdout}"
    );
    assert_eq!(report.origin, "Fresh", "{stdout}");
    assert_eq!(report.error, None);
    assert!(report.env.contains_key("ENDLESS_FD_3"), "{stdout}");

    // The handover: c, a, b are a cycle inside the target range 3..=7.
    let far = rustix::io::fcntl_dupfd_cloexec(a.as_fd(), 64).unwrap();
    let sources = [c.as_raw_fd(), a.as_raw_fd(), b.as_raw_fd(), far.as_raw_fd()];
    assert!(
        plan::plan(&sources, FIRST_INHERITED_FD)
            .unwrap()
            .spare()
            .is_some()
    );
    let handoff = [
        HandoffFd {
            name: "c",
            kind: FdKind::UdpSocket,
            fd: c.as_fd(),
        },
        HandoffFd {
            name: "a",
            kind: FdKind::TcpListener,
            fd: a.as_fd(),
        },
        HandoffFd {
            name: "b",
            kind: FdKind::UnixListener,
            fd: b.as_fd(),
        },
        HandoffFd {
            name: "far",
            kind: FdKind::TcpListener,
            fd: far.as_fd(),
        },
    ];
    let run = run(&helper("list", &[]), &handoff, |_| {});
    let report = run.report();
    let ctx = run.context();
    assert!(run.status.success(), "{ctx}");
    let expected: BTreeMap<RawFd, String> = [
        (3, link(c.as_raw_fd())),
        (4, link(a.as_raw_fd())),
        (5, link(b.as_raw_fd())),
        (6, link(a.as_raw_fd())),
        (7, run.pipe.clone()),
    ]
    .into();
    let got: BTreeMap<RawFd, String> = without_strays(report.fds, &TARGETS)
        .into_iter()
        .map(|(fd, (t, _))| (fd, t))
        .collect();
    assert_eq!(got, expected, "{ctx}");
    assert_eq!(report.origin, "Inherited", "{ctx}");
    let kinds: Vec<(&str, &str)> = report
        .entries
        .iter()
        .map(|(n, (k, _))| (n.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("a", "tcp-listener"),
            ("b", "unix-listener"),
            ("c", "udp"),
            ("far", "tcp-listener")
        ],
        "{ctx}"
    );
    assert_eq!(run.readiness, Readiness::Ready, "{ctx}");

    println!("@@ scramble ok");
    send_readiness(ready).unwrap();
}

/// A TCP listener, a Unix listener in a fresh directory, a UDP socket, and a socket pair.
struct Sockets {
    _dir: TempDir,
    tcp: TcpListener,
    unix: UnixListener,
    udp: UdpSocket,
    pair: (UnixStream, UnixStream),
}

fn sockets() -> Sockets {
    let dir = TempDir::new();
    Sockets {
        tcp: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(),
        unix: UnixListener::bind(dir.0.join("s.sock")).unwrap(),
        udp: UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(),
        pair: UnixStream::pair().unwrap(),
        _dir: dir,
    }
}

#[test]
#[cfg(target_os = "linux")]
fn child_gets_exactly_the_handovers_at_3_and_on_and_its_variables() {
    let s = sockets();
    // A source far above everything else.
    let far = rustix::io::fcntl_dupfd_cloexec(s.pair.0.as_fd(), 200).unwrap();
    let handoff = [
        HandoffFd {
            name: "tcp",
            kind: FdKind::TcpListener,
            fd: s.tcp.as_fd(),
        },
        HandoffFd {
            name: "unix",
            kind: FdKind::UnixListener,
            fd: s.unix.as_fd(),
        },
        HandoffFd {
            name: "udp",
            kind: FdKind::UdpSocket,
            fd: s.udp.as_fd(),
        },
        HandoffFd {
            name: "pair end",
            kind: FdKind::UnixStream,
            fd: far.as_fd(),
        },
    ];
    let exe = helper(
        "list",
        &[
            ("ENDLESS_FD_9", "tcp-listener:stale"),
            ("ENDLESS_FDS", "7"),
            // An earlier generation's: replaced by this parent's own.
            ("ENDLESS_TAKEOVER_BATCH", "1"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_PID", "1"),
            ("ENDLESS_LOG", "kept"),
        ],
    );
    for _ in 0..3 {
        let run = run(&exe, &handoff, |_| {});
        let ctx = run.context();
        let report = run.report();
        assert!(run.status.success(), "{ctx}");

        let expected: BTreeMap<RawFd, (String, bool)> = [
            (3, (link(s.tcp.as_raw_fd()), false)),
            (4, (link(s.unix.as_raw_fd()), false)),
            (5, (link(s.udp.as_raw_fd()), false)),
            (6, (link(s.pair.0.as_raw_fd()), false)),
            (7, (run.pipe.clone(), false)),
        ]
        .into();
        assert_eq!(without_strays(report.fds, &TARGETS), expected, "{ctx}");
        assert!(run.pipe.starts_with("socket:["), "{}", run.pipe);

        let pid = std::process::id().to_string();
        let strays = strays_value();
        // Each entry ends in the identity (`<dev>:<ino>`) of the open file handed over.
        let id = |fd: BorrowedFd<'_>| {
            let st = rustix::fs::fstat(fd).unwrap();
            format!("{}:{}", st.st_dev, st.st_ino)
        };
        let sockfs = rustix::fs::fstat(s.tcp.as_fd()).unwrap().st_dev;
        let ready_ino = run
            .pipe
            .trim_start_matches("socket:[")
            .trim_end_matches(']');
        let values = [
            format!("tcp-listener:tcp:{}", id(s.tcp.as_fd())),
            format!("unix-listener:unix:{}", id(s.unix.as_fd())),
            format!("udp:udp:{}", id(s.udp.as_fd())),
            format!("unix-stream:pair%20end:{}", id(s.pair.0.as_fd())),
            format!("7:{sockfs}:{ready_ino}"),
        ];
        let env: BTreeMap<String, String> = [
            (HELPER_VAR, "list"),
            (STRAYS_VAR, strays.as_str()),
            ("ENDLESS_LOG", "kept"),
            ("ENDLESS_VERSION", "2"),
            ("ENDLESS_PARENT_PID", pid.as_str()),
            ("ENDLESS_FDS", "4"),
            ("ENDLESS_FD_3", &values[0]),
            ("ENDLESS_FD_4", &values[1]),
            ("ENDLESS_FD_5", &values[2]),
            ("ENDLESS_FD_6", &values[3]),
            ("ENDLESS_READY_FD", &values[4]),
            // It reads batched takeover answers.
            ("ENDLESS_TAKEOVER_BATCH", pid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(report.env, env, "{ctx}");

        assert_eq!(report.origin, "Inherited", "{ctx}");
        assert_eq!(report.error, None);
        let entries: BTreeMap<String, (String, bool)> = [
            ("tcp", "tcp-listener"),
            ("unix", "unix-listener"),
            ("udp", "udp"),
            ("pair end", "unix-stream"),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_owned(), (k.to_owned(), true)))
        .collect();
        assert_eq!(report.entries, entries, "{ctx}");
        assert!(report.notified, "{ctx}");
        assert_eq!(run.readiness, Readiness::Ready, "{ctx}");
        assert!(run.eof_after_ready, "{ctx}");
    }
}

#[test]
#[cfg(target_os = "linux")]
fn child_hands_over_sources_that_sit_in_the_target_range() {
    let s = sockets();
    let handoff = [
        HandoffFd {
            name: "a",
            kind: FdKind::TcpListener,
            fd: s.tcp.as_fd(),
        },
        HandoffFd {
            name: "b",
            kind: FdKind::UnixListener,
            fd: s.unix.as_fd(),
        },
        HandoffFd {
            name: "c",
            kind: FdKind::UdpSocket,
            fd: s.udp.as_fd(),
        },
    ];
    for _ in 0..2 {
        let run = run(&helper("scramble", &[]), &handoff, |_| {});
        let ctx = run.context();
        assert!(run.status.success(), "{ctx}");
        assert!(run.stdout.contains("@@ scramble ok"), "{ctx}");
        assert_eq!(run.readiness, Readiness::Ready, "{ctx}");
    }
}

#[test]
#[cfg(target_os = "linux")]
fn child_started_by_systemd_adopts_listen_fds() {
    let s = sockets();
    let handoff = [
        HandoffFd {
            name: "x",
            kind: FdKind::Other,
            fd: s.tcp.as_fd(),
        },
        HandoffFd {
            name: "y",
            kind: FdKind::Other,
            fd: s.unix.as_fd(),
        },
        HandoffFd {
            name: "z",
            kind: FdKind::Other,
            fd: s.udp.as_fd(),
        },
    ];
    // systemd sets LISTEN_PID to the pid of the process it starts: a shell that execs
    // the helper keeps its pid.
    let test_exe = std::env::current_exe().unwrap();
    let helper_exe = helper("list", &[]);
    let mut args: Vec<OsString> = vec![
        "-c".into(),
        "LISTEN_PID=$$ exec \"$0\" \"$@\"".into(),
        test_exe.into(),
    ];
    args.extend(helper_exe.args().iter().cloned());
    let exe = Executable::new("/bin/sh", args, "/", helper_exe.env().to_vec());
    let run = run(&exe, &handoff, |cmd| {
        for k in [
            "ENDLESS_VERSION",
            "ENDLESS_PARENT_PID",
            "ENDLESS_FDS",
            "ENDLESS_READY_FD",
        ] {
            cmd.env_remove(k);
        }
        for fd in 3..6 {
            cmd.env_remove(format!("ENDLESS_FD_{fd}"));
        }
        cmd.env("LISTEN_FDS", "3")
            .env("LISTEN_FDNAMES", "web:web:dns");
    });
    let ctx = run.context();
    let report = run.report();
    assert!(run.status.success(), "{ctx}");
    assert_eq!(report.error, None, "{ctx}");
    assert_eq!(report.origin, "Fresh", "{ctx}");
    let entries: BTreeMap<String, (String, bool)> = [
        ("web", "tcp-listener"),
        ("web#4", "unix-listener"),
        ("dns", "udp"),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_owned(), (k.to_owned(), true)))
    .collect();
    assert_eq!(report.entries, entries, "{ctx}");
    assert!(!report.notified, "no readiness channel from systemd");
    // The pipe at 6 was not described to the child: it held it until it exited.
    assert_eq!(
        run.readiness,
        Readiness::Failed(ChildFailure::ChannelClosed)
    );
}

#[test]
#[cfg(target_os = "linux")]
fn child_with_wrong_fds_fails_at_start_up() {
    let s = sockets();
    let file = File::open("/dev/null").unwrap();
    let cases: [(HandoffFd<'_>, &[&str]); 3] = [
        (
            HandoffFd {
                name: "web",
                kind: FdKind::TcpListener,
                fd: s.udp.as_fd(),
            },
            &["fd 3", "\"web\"", "declared as tcp-listener but is udp"],
        ),
        (
            HandoffFd {
                name: "admin",
                kind: FdKind::UnixListener,
                fd: file.as_fd(),
            },
            &["fd 3", "\"admin\"", "not a socket, but is declared as one"],
        ),
        (
            HandoffFd {
                name: "conn",
                kind: FdKind::TcpListener,
                fd: s.pair.0.as_fd(),
            },
            &["declared as tcp-listener but is unix-stream"],
        ),
    ];
    for (handover, words) in cases {
        let run = run(&helper("list", &[]), &[handover], |_| {});
        let ctx = run.context();
        let report = run.report();
        let error = report.error.unwrap_or_else(|| panic!("adopted: {ctx}"));
        for w in words {
            assert!(error.contains(w), "{error:?} lacks {w:?}");
        }
        assert_eq!(
            run.readiness,
            Readiness::Failed(ChildFailure::ChannelClosed),
            "{ctx}"
        );
    }
}

#[test]
fn child_that_exits_without_ready_closes_the_channel() {
    let s = sockets();
    let handoff = [HandoffFd {
        name: "a",
        kind: FdKind::TcpListener,
        fd: s.tcp.as_fd(),
    }];
    for _ in 0..3 {
        let run = run(&sh("exit 3"), &handoff, |_| {});
        assert_eq!(run.status.code(), Some(3), "{}", run.context());
        assert_eq!(
            run.readiness,
            Readiness::Failed(ChildFailure::ChannelClosed)
        );
        assert!(!run.eof_after_ready);
    }
}

#[test]
fn child_that_writes_garbage_fails_the_parser() {
    let run = run(&sh("printf 'hello\\n' >&3"), &[], |_| {});
    assert!(run.status.success(), "{}", run.context());
    assert!(
        matches!(
            run.readiness,
            Readiness::Failed(ChildFailure::BadMessage(_))
        ),
        "{:?}",
        run.readiness
    );
}

#[test]
fn spawn_with_reports_a_failed_spawn_and_closes_the_channel() {
    let prepared = prepare(&sh("true"), &[]).unwrap();
    let result = prepared.spawn_with(|_| Err::<(), _>(io::Error::other("refused")));
    assert_eq!(result.unwrap_err().to_string(), "refused");
    // A spawn that fails in the child (here: an unusable working directory) is reported
    // by posix_spawn, and leaves no child.
    let exe = Executable::new("/bin/sh", ["-c", "true"], "/nonexistent/dir", [("A", "b")]);
    let prepared = prepare(&exe, &[]).unwrap();
    let e = prepared
        .spawn_with(spawn::Command::spawn)
        .map(|(child, _)| Reaped::new(child))
        .err()
        .expect("spawned in a missing directory");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
}

#[test]
fn a_program_removed_after_the_check_is_an_error_not_a_child() {
    // The executable passes `prepare`'s check, then goes away before the spawn: the failed
    // exec comes back from posix_spawn (no child exits 127 later).
    let dir = TempDir::new();
    let program = dir.0.join("server");
    fs::copy("/bin/true", &program).unwrap();
    let exe = Executable::new(&program, [""; 0], "/", [("A", "b")]);
    let prepared = prepare(&exe, &[]).unwrap();
    fs::remove_file(&program).unwrap();
    let e = prepared
        .spawn_with(spawn::Command::spawn)
        .map(|(child, _)| Reaped::new(child))
        .err()
        .expect("spawned a removed program");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
}

#[test]
fn a_nul_byte_in_the_environment_is_refused() {
    let mut prepared = prepare(&sh("true"), &[]).unwrap();
    prepared.command.env("BAD", "a\0b");
    let e = prepared
        .spawn_with(spawn::Command::spawn)
        .map(|(child, _)| Reaped::new(child))
        .err()
        .expect("spawned with a NUL byte in the environment");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn the_child_starts_with_no_blocked_signal_and_sigpipe_at_its_default() {
    // Rust programs ignore SIGPIPE, and an ignored signal stays ignored across exec: the
    // spawn sets it back. The signal mask is emptied too.
    let mut prepared =
        prepare(&sh("exec grep -E '^Sig(Blk|Ign):' /proc/self/status"), &[]).unwrap();
    let (stdout, stdout_w) = io::pipe().unwrap();
    prepared.command.stdin(null()).stdout(stdout_w);
    let (child, _ready) = prepared.spawn_with(spawn::Command::spawn).unwrap();
    let output = Reaped::with_pipes(child, Some(stdout), None).output();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mask = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{text}");
    let sigpipe = 1u64 << (libc_sigpipe() - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "{text}");
}

/// `SIGPIPE`'s number (13 on Linux).
fn libc_sigpipe() -> i32 {
    rustix::process::Signal::PIPE.as_raw()
}

#[test]
fn a_child_is_signalled_by_its_pidfd_until_it_is_reaped() {
    let prepared = prepare(&sh("exec sleep 30"), &[]).unwrap();
    let (child, _ready) = prepared.spawn_with(spawn::Command::spawn).unwrap();
    // Killed and reaped even if an assertion fails before the test does it.
    let mut guard = Reaped::new(child);
    let child = guard.child.as_mut().unwrap();
    #[cfg(target_os = "linux")]
    assert!(
        child.pidfd().is_some(),
        "this kernel has pidfds (5.3 and later)"
    );
    assert_eq!(child.try_wait().unwrap(), None);
    child.terminate().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(rustix::process::Signal::TERM.as_raw())
    );
    // Reaped: the status stays, and a signal is a no-op (it could reach nobody else).
    assert_eq!(child.try_wait().unwrap(), Some(status));
    child.kill().unwrap();
    child.terminate().unwrap();
}

#[test]
fn handover_set_is_exactly_what_the_plan_targets() {
    // The plan's targets end at the ready fd: 3 + n.
    let (a, _b) = UnixStream::pair().unwrap();
    let handoff: Vec<HandoffFd<'_>> = ["p", "q", "r"]
        .iter()
        .map(|name| HandoffFd {
            name,
            kind: FdKind::UnixStream,
            fd: a.as_fd(),
        })
        .collect();
    let prepared = prepare(&sh("true"), &handoff).unwrap();
    let envs: BTreeSet<String> = prepared
        .command
        .get_envs()
        .filter_map(|(k, _)| k.to_str().map(str::to_owned))
        .filter(|k| k.starts_with("ENDLESS_FD_"))
        .collect();
    assert_eq!(
        envs,
        ["ENDLESS_FD_3", "ENDLESS_FD_4", "ENDLESS_FD_5"]
            .map(str::to_owned)
            .into()
    );
    drop(prepared.spawned());
}

#[test]
fn child_leads_a_process_group_of_its_own() {
    // Field 5 of /proc/<pid>/stat is the process group (`sh` has no space in its name).
    let mut prepared = prepare(&sh("cut -d' ' -f5 /proc/$$/stat"), &[]).unwrap();
    let (stdout, stdout_w) = io::pipe().unwrap();
    prepared.command.stdout(stdout_w);
    let (child, _ready) = prepared.spawn_with(spawn::Command::spawn).unwrap();
    let child = Reaped::with_pipes(child, Some(stdout), None);
    let pid = child.id();
    let output = child.output();
    assert!(output.status.success(), "{:?}", output.status);
    let pgid = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(pgid, pid.to_string(), "its own group, led by itself");
    assert_ne!(pid, rustix::process::getpgrp().as_raw_pid().unsigned_abs());
}
