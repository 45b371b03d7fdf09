//! The end-to-end harness: real server processes on 127.0.0.1, driven and watched from the
//! outside, each one killed and reaped however the test ends.
//!
//! Nothing here knows which server it runs: every entry point takes the path of a server
//! binary that speaks the shared example command line (`endless_examples::Args`) and the line protocol of
//! the echo examples (`<pid> <line>` answers, `sleep MS`, `fds`, `version`). The scenarios
//! themselves are in [`scenarios`], so that a test file per server binary only has to call
//! them.
//!
//! What a server must print for the harness (`RUST_LOG=info`, `NO_COLOR=1` are set):
//! - stdout: `listening <name> <addr> pid=<pid>` per listener (the examples' `announce`),
//!   named `listen-0`, `listen-1`, … in the order of the `--listen` arguments; `<addr>` is a
//!   socket address (`127.0.0.1:80`, `[::1]:80`), `unix:<path>` or `udp:<socket address>`,
//!   and UDP sockets answer each datagram with `<pid> <datagram>`;
//! - stderr, from the example: `stopped accepting` with a `pid=<pid>` field once an accept
//!   loop ended (one line per stream listener; nothing for a UDP socket), and `cannot
//!   start` followed by the error when `Endless::start` fails;
//! - stderr, from endless' shared driver (the same for every runtime): `spawned the new
//!   generation pid=<pid>`, `restart failed`, `closed inherited fds nobody claimed`,
//!   `ignoring the inherited` (variables not meant for this process), and the texts of the
//!   typed errors (`AdoptError`, `DecodeError`, `UpgradeFailure`).
//!
//! # Processes
//!
//! - Each server is started in a session of its own (`setsid`), from a copy
//!   of its binary in a per-test temporary directory (so a test may replace the file on
//!   disk), with `--pid-file` in that directory and its stdout and stderr read by two
//!   background threads that keep every line (printed when the test fails).
//! - The test process is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a generation whose
//!   parent exited is reparented to the test process rather than to init, so that it can be
//!   reaped, its exit status read and its zombie counted.
//! - Reaping: tests of one binary run on parallel threads of one process, so `waitpid(-1)`
//!   is never used (it could steal another test's child). A [`Group`] reaps only the pids
//!   that `/proc` shows in *its* session with the test process as their parent, one
//!   `waitpid(pid)` each. A session rather than a process group: endless starts each new
//!   generation in a process group of its own (inside the session). The session leader (the
//!   first generation, whose pid is the session id) is left a zombie until the group is
//!   dropped (its status is read with `WNOWAIT`): as long as it is not reaped, its pid, hence
//!   the session id, cannot be reused, so no stranger is taken for a member.
//! - Dropping a [`Group`] (also while a failed test unwinds) sends `SIGKILL` to every
//!   process of the session (through a pidfd, opened before checking that the pid is still
//!   a member) and reaps until `/proc` shows nothing of it left.
//! - Forks of the test process and writes of executables take [`SPAWN_LOCK`] (shared and
//!   exclusive), so that no child forked by a parallel test holds a file open for writing
//!   while a server tries to `exec` it (`ETXTBSY`).
//!
//! Synchronisation is by polling conditions with generous deadlines ([`wait_for`]), never by
//! sleeping a fixed time.
//!
//! An unpublished crate, a dev-dependency of `endless-examples`, whose `[[test]]` targets are
//! the test files in `tests/`. The [`http_client`] is hyper_restart's load client.
// Read in the source: its docs may point at the private helpers they explain.
#![allow(rustdoc::private_intra_doc_links)]

pub mod http_client;
pub mod scenarios;
pub mod supervised;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions, WaitStatus};

/// How long any awaited condition may take before the test fails. Generous: CI is a loaded
/// two-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often conditions are polled.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Polls `f` every [`POLL`] until it returns `Some`, and returns that; panics with `what`
/// after `timeout`.
pub fn wait_for<T>(
    what: impl fmt::Display,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        thread::sleep(POLL);
    }
}

/// Forks of this process take it shared, writers of executables take it exclusive: see the
/// module docs (`ETXTBSY`).
pub static SPAWN_LOCK: RwLock<()> = RwLock::new(());

fn read_lock() -> std::sync::RwLockReadGuard<'static, ()> {
    SPAWN_LOCK
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock() -> std::sync::RwLockWriteGuard<'static, ()> {
    SPAWN_LOCK
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes this process a child subreaper, once.
pub(crate) fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // rustix takes the flag as an `Option<Pid>`: any pid sets it.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .unwrap_or_else(|e| panic!("prctl(PR_SET_CHILD_SUBREAPER): {e}"));
    });
}

/// This process's pid.
pub(crate) fn own_pid() -> u32 {
    std::process::id()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: Signal) {
    rustix::process::kill_process(to_pid(pid), signal)
        .unwrap_or_else(|e| panic!("kill({pid}, {signal:?}): {e}"));
}

/// `pid` as rustix's `Pid`: a process, never 0 or a group.
fn to_pid(pid: u32) -> Pid {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .unwrap_or_else(|| panic!("{pid} is not a process id"))
}

// ---- /proc ------------------------------------------------------------------------------

/// One process, as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    pub(crate) pid: u32,
    /// `R`, `S`, `Z`, …
    pub(crate) state: char,
    pub(crate) ppid: u32,
    pub(crate) pgrp: u32,
    pub(crate) session: u32,
}

impl ProcInfo {
    /// Exited, not reaped yet.
    pub(crate) fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// `/proc/<pid>/stat`, or `None` if there is no such process.
pub(crate) fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        state,
        ppid,
        pgrp,
        session,
    })
}

/// Whether `pid` is a process that has not exited (a zombie is not alive).
pub fn is_alive(pid: u32) -> bool {
    proc_info(pid).is_some_and(|p| !p.is_zombie())
}

/// Every process `/proc` shows, zombies included.
fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_info)
        .collect()
}

/// Every process of process group `pgid`, zombies included.
pub(crate) fn group_members(pgid: u32) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid)
        .collect()
}

/// Every process of session `sid`, zombies included.
pub(crate) fn session_members(sid: u32) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.session == sid)
        .collect()
}

/// The open fds of `pid` and what they point at (`socket:[123]`, `/dev/null`, …).
pub(crate) fn fds(pid: u32) -> Vec<(RawFd, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(RawFd, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect();
    fds.sort();
    fds
}

/// The number of open fds of `pid`, if it exists.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

// ---- temporary directories ----------------------------------------------------------------

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("endless-e2e-{label}-{}-{n}-{nanos}", own_pid()));
        fs::create_dir_all(&path).expect("create the test directory");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Writes an executable file at `path` atomically: written next to it, then renamed over
/// it (a running process keeps its old inode).
pub(crate) fn install_file(path: &Path, contents: &[u8], mode: u32) {
    let tmp = path.with_extension("new");
    {
        let _guard = write_lock();
        let mut file = fs::File::create(&tmp).expect("create the new file");
        file.write_all(contents).expect("write the new file");
        file.set_permissions(fs::Permissions::from_mode(mode))
            .expect("chmod the new file");
        file.sync_all().expect("sync the new file");
    }
    fs::rename(&tmp, path).expect("rename the new file into place");
}

/// Copies `from` to `to` (atomically, as [`install_file`]), keeping it executable.
pub(crate) fn install_copy(from: &Path, to: &Path) {
    let contents = fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    install_file(to, &contents, 0o755);
}

/// A shell script that runs `body`.
pub fn sh_script(body: &str) -> Vec<u8> {
    format!("#!/bin/sh\n{body}\n").into_bytes()
}

/// `path` quoted for a shell script.
pub fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

// ---- logs -----------------------------------------------------------------------------------

/// Every line a stream produced, as they arrive.
#[derive(Debug, Default)]
pub struct Lines {
    lines: Mutex<Vec<String>>,
    eof: AtomicBool,
}

impl Lines {
    fn read_from(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        let this = Arc::clone(self);
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&buf));
                        let line = line.trim_end_matches(['\n', '\r']).to_owned();
                        this.lines
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(line);
                    }
                }
            }
            this.eof.store(true, Ordering::SeqCst);
        });
    }

    /// A copy of the lines so far.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The number of lines so far (a mark for [`Lines::find_from`]).
    #[allow(
        clippy::len_without_is_empty,
        reason = "a mark in the stream, not the size of a collection"
    )]
    pub fn len(&self) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// The first line at index `from` or later that `pred` accepts.
    pub fn find_from(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .skip(from)
            .find(|l| pred(l))
            .cloned()
    }

    /// The last line at index `from` or later that `pred` accepts.
    pub fn last_from(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .skip(from)
            .rfind(|l| pred(l))
            .cloned()
    }

    /// How many lines at index `from` or later `pred` accepts.
    pub fn count_from(&self, from: usize, pred: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .skip(from)
            .filter(|l| pred(l))
            .count()
    }

    /// Waits for a line at index `from` or later that `pred` accepts.
    pub fn wait_from(
        &self,
        what: impl fmt::Display,
        from: usize,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        wait_for(what, DEADLINE, || self.find_from(from, &pred))
    }
}

/// `s` without ANSI escape sequences (in case a logger colours its output anyway).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What endless logs (with a `pid=` field) once a process stopped accepting on every
/// listener: from then on every new connection goes to the new generation.
pub const STOPPED_ACCEPTING: &str = "stopped accepting on every listener";

/// Whether a log line carries the field `key=value` (as a whole word).
pub fn has_field(line: &str, key: &str, value: impl fmt::Display) -> bool {
    let field = format!("{key}={value}");
    line.split_whitespace().any(|w| w == field)
}

/// A `listening <name> <addr> pid=<pid>` line, parsed. `addr` is kept as printed (see
/// [`Endpoint::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) pid: u32,
}

pub(crate) fn parse_listening(line: &str) -> Option<Listening> {
    let mut words = line.split_whitespace();
    if words.next()? != "listening" {
        return None;
    }
    let name = words.next()?.to_owned();
    let addr = words.next()?.to_owned();
    let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
    Some(Listening { name, addr, pid })
}

// ---- exit statuses -------------------------------------------------------------------------

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The exit of a process that `waitpid` (without `WUNTRACED`) reported.
    fn from_wait_status(status: WaitStatus) -> Self {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => panic!("waitpid reported neither an exit nor a signal"),
        }
    }
}

/// Reaps `pid` if it is a child of this process that has exited.
fn try_reap(pid: u32) -> Option<Exit> {
    let pid = Pid::from_raw(i32::try_from(pid).ok()?)?;
    // WNOHANG never blocks. Only pids of our own groups are passed, never -1 or 0.
    match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
        Ok(Some((reaped, status))) if reaped == pid => Some(Exit::from_wait_status(status)),
        _ => None,
    }
}

/// The exit status of `pid`, a child of this process, if it has exited, without reaping it.
fn peek_exit(pid: u32) -> Option<Exit> {
    let pid = Pid::from_raw(i32::try_from(pid).ok()?)?;
    // WNOHANG never blocks and WNOWAIT leaves the child waitable. `None` while the child
    // has not exited.
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    let status = rustix::process::waitid(WaitId::Pid(pid), options).ok()??;
    status
        .exit_status()
        .map(Exit::Code)
        .or_else(|| status.terminating_signal().map(Exit::Signal))
}

// ---- sessions ------------------------------------------------------------------------------

/// A process started by the test in its own session, and everything in that session ("the
/// group": every generation, each in a process group of its own, and what they start): its
/// stdout and stderr lines (shared by every process of the group that inherited them),
/// and the exit statuses of the processes this test process reaped.
#[derive(Debug)]
pub struct Group {
    label: String,
    leader: u32,
    pub stdout: Arc<Lines>,
    pub stderr: Arc<Lines>,
    reaped: Mutex<HashMap<u32, Exit>>,
}

impl Group {
    /// Spawns `command` as the leader of a new session, stdin `/dev/null`, stdout and
    /// stderr captured. Sets `RUST_LOG=info` and `NO_COLOR=1`, and removes the handoff
    /// variables (`ENDLESS_*` of the encoding, `LISTEN_*`) this test process may have, unless
    /// the caller sets them again afterwards (later `env` calls win).
    pub(crate) fn spawn(label: &str, mut command: Command) -> Self {
        init();
        // SAFETY: the hook runs between fork and exec and only calls setsid (a system call,
        // async-signal-safe); the error conversion does not allocate.
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = {
            let _guard = read_lock();
            command
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {label}: {e}"))
        };
        let mut child = child;
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        stdout.read_from(child.stdout.take().expect("piped stdout"));
        stderr.read_from(child.stderr.take().expect("piped stderr"));
        let leader = child.id();
        // Dropping a `Child` neither kills nor waits: the group reaps its leader itself.
        drop(child);
        Self {
            label: label.to_owned(),
            leader,
            stdout,
            stderr,
            reaped: Mutex::new(HashMap::new()),
        }
    }

    /// A command for `program` with the harness' environment: `RUST_LOG=info`, `NO_COLOR=1`,
    /// no inherited handoff variables, no `NOTIFY_SOCKET`.
    pub fn command(program: &Path) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            // Nor the test runner's service manager: a test that wants one sets its own.
            if k.starts_with("ENDLESS_") || k.starts_with("LISTEN_") || k == "NOTIFY_SOCKET" {
                command.env_remove(&key);
            }
        }
        command.env("RUST_LOG", "info").env("NO_COLOR", "1");
        command
    }

    /// The pid of the process the test started (also the session id).
    pub(crate) fn leader(&self) -> u32 {
        self.leader
    }

    fn reaped(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Exit>> {
        self.reaped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reaps every exited process of the group whose parent is this test process (the
    /// leader excepted, see the module docs), recording its status.
    pub(crate) fn reap(&self) {
        let me = own_pid();
        for p in session_members(self.leader) {
            if p.pid != self.leader
                && p.ppid == me
                && p.is_zombie()
                && let Some(exit) = try_reap(p.pid)
            {
                self.reaped().insert(p.pid, exit);
            }
        }
    }

    /// The processes of the group, after reaping what this process can reap.
    pub(crate) fn members(&self) -> Vec<ProcInfo> {
        self.reap();
        session_members(self.leader)
    }

    /// The pids of the group's processes that have not exited.
    pub(crate) fn live(&self) -> Vec<u32> {
        let mut live: Vec<u32> = self
            .members()
            .into_iter()
            .filter(|p| !p.is_zombie())
            .map(|p| p.pid)
            .collect();
        live.sort_unstable();
        live
    }

    /// Zombies of the group that a live process of the group has not reaped (those whose
    /// parent is this test process are reaped by [`Group::reap`], or are the leader).
    pub(crate) fn unreaped_zombies(&self) -> Vec<ProcInfo> {
        let me = own_pid();
        self.members()
            .into_iter()
            .filter(|p| p.is_zombie() && p.ppid != me)
            .collect()
    }

    /// How `pid` ended, if it has and this process saw it (it was the leader, or a process
    /// reparented to this one and reaped here).
    pub(crate) fn exit_of(&self, pid: u32) -> Option<Exit> {
        if pid == self.leader {
            return peek_exit(pid);
        }
        self.reap();
        self.reaped().get(&pid).copied()
    }

    /// Waits until `pid` exits and returns how, when this process can know it (see
    /// [`Group::exit_of`]); panics if `pid` disappeared without this process seeing its
    /// status (its parent reaped it).
    pub fn wait_exit(&self, pid: u32) -> Exit {
        wait_for(
            format_args!("{}: pid {pid} to exit", self.label),
            DEADLINE,
            || {
                if let Some(exit) = self.exit_of(pid) {
                    return Some(exit);
                }
                assert!(
                    proc_info(pid).is_some(),
                    "{}: pid {pid} was reaped by its parent, its exit status is unknown",
                    self.label
                );
                None
            },
        )
    }

    /// Waits until `pid` is gone: exited and reaped (by its parent or by this process), or
    /// a zombie left for this process to reap.
    pub fn wait_gone(&self, pid: u32) {
        wait_for(
            format_args!("{}: pid {pid} to be gone", self.label),
            DEADLINE,
            || {
                self.reap();
                (!is_alive(pid)).then_some(())
            },
        );
    }

    /// Waits until the group's live processes are exactly `expected` and no zombie is left
    /// unreaped by a live parent.
    pub fn wait_settled(&self, expected: &[u32]) {
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        wait_for(
            format_args!(
                "{}: the live processes to be exactly {expected:?}, without zombies",
                self.label
            ),
            DEADLINE,
            || (self.live() == expected && self.unreaped_zombies().is_empty()).then_some(()),
        );
    }

    /// Sends `signal` to `pid`, which must be a member of this group.
    pub fn signal(&self, pid: u32, sig: Signal) {
        let member = proc_info(pid).is_some_and(|p| p.session == self.leader);
        assert!(member, "{}: pid {pid} is not in the group", self.label);
        signal(pid, sig);
    }

    /// The listeners `listen-0` … `listen-<count - 1>` that `pid` announced, in order, once
    /// it announced them all.
    pub(crate) fn listening(&self, pid: u32, count: usize) -> Option<Vec<Listening>> {
        let announced: Vec<Listening> = self
            .stdout
            .snapshot()
            .iter()
            .filter_map(|l| parse_listening(l))
            .filter(|l| l.pid == pid)
            .collect();
        (0..count)
            .map(|i| {
                let name = format!("listen-{i}");
                announced.iter().find(|l| l.name == name).cloned()
            })
            .collect()
    }

    /// The pids announced on stdout by `listening` lines, in order, without repeats.
    pub fn announced_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for line in self.stdout.snapshot() {
            if let Some(l) = parse_listening(&line)
                && !pids.contains(&l.pid)
            {
                pids.push(l.pid);
            }
        }
        pids
    }

    /// Waits until stdout and stderr are closed: every process of the group that held them
    /// is gone, and every line they wrote has been read.
    pub(crate) fn wait_output_closed(&self) {
        wait_for(
            format_args!("{}: stdout and stderr to close", self.label),
            DEADLINE,
            || {
                self.reap();
                (self.stdout.eof.load(Ordering::SeqCst) && self.stderr.eof.load(Ordering::SeqCst))
                    .then_some(())
            },
        );
    }

    /// Everything the group printed, for a failure message.
    pub(crate) fn dump(&self) -> String {
        let mut s = format!("==== {} (sid {}) stdout ====\n", self.label, self.leader);
        for l in self.stdout.snapshot() {
            s.push_str(&l);
            s.push('\n');
        }
        s.push_str(&format!("==== {} stderr ====\n", self.label));
        for l in self.stderr.snapshot() {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// Kills every process of the session and reaps them all; true if nothing is left.
    fn kill_and_reap(&self) -> bool {
        let leader = to_pid(self.leader);
        let deadline = Instant::now() + DEADLINE;
        loop {
            for p in session_members(self.leader) {
                kill_member(self.leader, p.pid);
            }
            self.reap();
            let left: Vec<ProcInfo> = session_members(self.leader)
                .into_iter()
                .filter(|p| p.pid != self.leader)
                .collect();
            if left.is_empty() && !is_alive(self.leader) {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("{}: processes left after SIGKILL: {left:?}", self.label);
                return false;
            }
            thread::sleep(POLL);
        }
        // Last, the leader (now dead: this does not block).
        let _ = rustix::process::waitpid(Some(leader), WaitOptions::empty());
        true
    }
}

/// Sends `SIGKILL` to `pid` if it is (still) a process of session `sid`: the pidfd names
/// that very process, and is opened before the check, so a pid reused meanwhile by a
/// stranger fails the check instead of being killed. The session id cannot be reused while
/// its leader is not reaped.
fn kill_member(sid: u32, pid: u32) {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let member = || proc_info(pid).is_some_and(|p| p.session == sid);
    match rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => {
            if member() {
                let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            }
        }
        // A kernel without pidfds (before 5.3): by pid, right after the check.
        Err(rustix::io::Errno::NOSYS) => {
            if member() {
                let _ = rustix::process::kill_process(target, Signal::KILL);
            }
        }
        Err(_) => {}
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let clean = self.kill_and_reap();
        // Every writer of the pipes is gone: the readers see end of file soon.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(self.stdout.eof.load(Ordering::SeqCst) && self.stderr.eof.load(Ordering::SeqCst))
            && Instant::now() < deadline
        {
            thread::sleep(POLL);
        }
        if thread::panicking() || !clean {
            eprintln!("{}", self.dump());
        }
    }
}

// ---- placing fds in a child ------------------------------------------------------------------

/// Makes `command`'s child find each `Some(fd)` at its target number and each `None`
/// target closed (on top of stdio), whatever numbers they have in this process.
pub(crate) fn place_fds(command: &mut Command, placements: Vec<(RawFd, Option<OwnedFd>)>) {
    // Move every source above the targets first (close-on-exec in this process), so that no
    // dup2 in the child overwrites a source that is still to be placed.
    let placements: Vec<(RawFd, Option<OwnedFd>)> = placements
        .into_iter()
        .map(|(target, fd)| {
            let fd = fd.map(|fd| {
                rustix::io::fcntl_dupfd_cloexec(&fd, 100)
                    .unwrap_or_else(|e| panic!("dup above 100: {e}"))
            });
            (target, fd)
        })
        .collect();
    // libc rather than rustix here, as in endless-unix's own hook: the targets are bare
    // numbers in the child, which rustix's dup2 (onto an `OwnedFd`) cannot name.
    // SAFETY: the hook runs between fork and exec; it only calls dup2 and close (both
    // async-signal-safe) on numbers prepared here, and builds an io::Error from errno,
    // which does not allocate.
    unsafe {
        command.pre_exec(move || {
            for (target, fd) in &placements {
                let ret = match fd {
                    Some(fd) => libc::dup2(fd.as_raw_fd(), *target),
                    None => {
                        libc::close(*target);
                        0
                    }
                };
                if ret == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

// ---- clients -------------------------------------------------------------------------------

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A UDP socket: no connections, one datagram per request ([`udp_ask`]).
    Udp(SocketAddr),
}

impl Endpoint {
    /// The address of a `listening` line: `unix:<path>`, `udp:<socket address>` or a TCP
    /// socket address (`127.0.0.1:80`, `[::1]:80`). Panics on anything else.
    pub(crate) fn parse(addr: &str) -> Self {
        let socket_addr = |a: &str| {
            a.parse()
                .unwrap_or_else(|e| panic!("not a socket address: {addr:?}: {e}"))
        };
        if let Some(path) = addr.strip_prefix("unix:") {
            Self::Unix(path.into())
        } else if let Some(a) = addr.strip_prefix("udp:") {
            Self::Udp(socket_addr(a))
        } else {
            Self::Tcp(socket_addr(addr))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Udp(addr) => write!(f, "udp:{addr}"),
        }
    }
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

/// A client connection speaking the line protocol.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<Stream>,
}

impl Conn {
    /// Connects, with [`DEADLINE`] as the read and write timeout. A UDP endpoint has no
    /// connections: an `Unsupported` error (use [`ask`]).
    pub(crate) fn open(endpoint: &Endpoint) -> io::Result<Self> {
        let stream = match endpoint {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, DEADLINE)?;
                s.set_read_timeout(Some(DEADLINE))?;
                s.set_write_timeout(Some(DEADLINE))?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(DEADLINE))?;
                s.set_write_timeout(Some(DEADLINE))?;
                Stream::Unix(s)
            }
            Endpoint::Udp(addr) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("udp:{addr} has no connections"),
                ));
            }
        };
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one line.
    pub(crate) fn send(&mut self, line: &str) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(format!("{line}\n").as_bytes())?;
        stream.flush()
    }

    /// Reads one answer: the pid of the process that answered and the rest of the line.
    pub(crate) fn recv(&mut self) -> io::Result<(u32, String)> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        parse_answer(line.trim_end_matches('\n'))
    }

    /// Sends `line` and reads the answer.
    pub fn ask(&mut self, line: &str) -> io::Result<(u32, String)> {
        self.send(line)?;
        self.recv()
    }
}

/// A `<pid> <line>` answer: the pid and the rest.
fn parse_answer(answer: &str) -> io::Result<(u32, String)> {
    let (pid, rest) = answer.split_once(' ').unwrap_or((answer, ""));
    let pid = pid.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a `<pid> <line>` answer: {answer:?}"),
        )
    })?;
    Ok((pid, rest.to_owned()))
}

/// One request on a new connection, or in a datagram on a UDP endpoint (within
/// [`DEADLINE`], see [`udp_ask`]).
pub(crate) fn ask(endpoint: &Endpoint, line: &str) -> io::Result<(u32, String)> {
    match endpoint {
        Endpoint::Udp(addr) => udp_ask(*addr, line, DEADLINE),
        _ => Conn::open(endpoint)?.ask(line),
    }
}

/// The first wait for an answer to a datagram; it doubles at each resend, up to
/// [`UDP_MAX_WAIT`].
pub(crate) const UDP_FIRST_WAIT: Duration = Duration::from_millis(50);
/// The longest wait for an answer before the datagram is sent again.
pub(crate) const UDP_MAX_WAIT: Duration = Duration::from_secs(1);

/// One request in a datagram to `addr`, from a fresh socket on the loopback address of the
/// same family, connected to `addr` (so that only `addr` can answer, and a port nobody
/// holds is reported as `ConnectionRefused`). UDP may drop: without an answer after
/// [`UDP_FIRST_WAIT`] (doubling up to [`UDP_MAX_WAIT`]) the same datagram is sent again;
/// any answer is an answer to this request, as the socket asked nothing else. Fails with
/// `TimedOut` after `timeout` without an answer.
pub(crate) fn udp_ask(
    addr: SocketAddr,
    line: &str,
    timeout: Duration,
) -> io::Result<(u32, String)> {
    let local: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::LOCALHOST, 0).into()
    } else {
        (Ipv4Addr::LOCALHOST, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    let deadline = Instant::now() + timeout;
    let mut wait = UDP_FIRST_WAIT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        socket.send(line.as_bytes())?;
        let resend = (Instant::now() + wait).min(deadline);
        loop {
            let left = resend.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut buf) {
                Ok(n) => return parse_answer(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from udp:{addr} to {line:?} within {timeout:?}"),
            ));
        }
        wait = (wait * 2).min(UDP_MAX_WAIT);
    }
}

// ---- servers -------------------------------------------------------------------------------

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Listen on a Unix socket in the test directory instead of `127.0.0.1:0`.
    pub(crate) unix: bool,
    /// The `--listen` addresses, in order (`listen-0`, `listen-1`, …), instead of the
    /// default (`127.0.0.1:0`, or the Unix socket of [`Options::unix`]). A relative
    /// `unix:` path is in the test directory.
    pub(crate) listen: Vec<String>,
    /// More arguments (`--upgrade-timeout 1`).
    pub(crate) args: Vec<String>,
    /// More environment variables.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// Run the server through a symlinked release directory, as deploy tools do:
    /// `current -> releases/v1`, program `current/<binary>` (see [`Server::switch_release`]).
    pub(crate) symlinked_release: bool,
}

impl Options {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub(crate) fn unix(mut self) -> Self {
        self.unix = true;
        self
    }

    /// Adds `addr` to the `--listen` addresses (replacing the default listener).
    pub(crate) fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen.push(addr.into());
        self
    }

    pub(crate) fn symlinked_release(mut self) -> Self {
        self.symlinked_release = true;
        self
    }
}

/// A server under test: its session ([`Group`]), its directory (with its executable and pid
/// file) and the generation the harness believes serves.
#[derive(Debug)]
pub struct Server {
    // Dropped first: every process is gone before the directory is removed.
    pub group: Group,
    dir: TempDir,
    exe: PathBuf,
    real: PathBuf,
    pid_file: PathBuf,
    /// The `--listen` addresses, as passed.
    listen: Vec<String>,
    /// What the first generation announced, in order (`listen-0` first).
    listeners: Vec<Listening>,
    endpoint: Endpoint,
    current: AtomicU32,
}

impl Server {
    /// Starts `bin` with `options`, waits until it listens and is ready.
    pub fn start(bin: &Path, options: &Options) -> Self {
        Self::start_with(bin, options, |_| {})
    }

    /// [`Server::start`], with a last change to the command (placing fds, say).
    pub(crate) fn start_with(
        bin: &Path,
        options: &Options,
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        let name = bin
            .file_name()
            .expect("the binary has a file name")
            .to_owned();
        let dir = TempDir::new(&name.to_string_lossy());
        let exe = if options.symlinked_release {
            let release = dir.path().join("releases").join("v1");
            fs::create_dir_all(&release).expect("mkdir releases/v1");
            install_copy(bin, &release.join(&name));
            std::os::unix::fs::symlink("releases/v1", dir.path().join("current"))
                .expect("symlink current");
            dir.path().join("current").join(&name)
        } else {
            let exe = dir.path().join(&name);
            install_copy(bin, &exe);
            exe
        };
        // A pristine copy, for scripts that replace `exe` and then run the real server.
        let real = dir.path().join("real").join(&name);
        fs::create_dir_all(real.parent().expect("a parent")).expect("mkdir real");
        install_copy(bin, &real);
        let pid_file = dir.path().join("server.pid");
        let in_dir = |path: &str| format!("unix:{}", dir.path().join(path).display());
        let listen: Vec<String> = if !options.listen.is_empty() {
            options
                .listen
                .iter()
                .map(|a| a.strip_prefix("unix:").map_or_else(|| a.clone(), in_dir))
                .collect()
        } else if options.unix {
            vec![in_dir("s.sock")]
        } else {
            vec!["127.0.0.1:0".to_owned()]
        };

        let mut command = Group::command(&exe);
        command.current_dir(dir.path());
        for addr in &listen {
            command.arg("--listen").arg(addr);
        }
        // No probation unless a test asks for one (the last `--probation` wins): a test
        // that waits for an old generation's exit does not wait for it.
        command
            .arg("--pid-file")
            .arg(&pid_file)
            .args(["--probation", "0"])
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        customize(&mut command);
        let group = Group::spawn(&name.to_string_lossy(), command);
        let pid = group.leader();
        let listeners = wait_for(
            format_args!(
                "{} to announce its {} listener(s)",
                name.to_string_lossy(),
                listen.len()
            ),
            DEADLINE,
            || {
                let listeners = group.listening(pid, listen.len());
                if listeners.is_none() {
                    assert!(
                        is_alive(pid),
                        "the server exited before it listened: {:?}",
                        peek_exit(pid)
                    );
                }
                listeners
            },
        );
        let server = Self {
            group,
            dir,
            exe,
            real,
            pid_file,
            endpoint: Endpoint::parse(&listeners[0].addr),
            listen,
            listeners,
            current: AtomicU32::new(pid),
        };
        server.wait_pid_file(pid);
        server
    }

    /// The pid of the generation that serves, as far as the harness knows.
    pub fn pid(&self) -> u32 {
        self.current.load(Ordering::SeqCst)
    }

    /// Tells the harness which generation serves (after a test drove a restart itself).
    pub fn set_pid(&self, pid: u32) {
        self.current.store(pid, Ordering::SeqCst);
    }

    /// Where the first listener (`listen-0`) of the first generation listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Where each listener of the first generation listens, in order.
    pub(crate) fn endpoints(&self) -> Vec<Endpoint> {
        self.listeners
            .iter()
            .map(|l| Endpoint::parse(&l.addr))
            .collect()
    }

    /// What the first generation announced, in order.
    pub(crate) fn first_listeners(&self) -> &[Listening] {
        &self.listeners
    }

    /// Waits until `pid` announced every listener of the command line (`listen-0` …) and
    /// returns them in order.
    pub fn listening(&self, pid: u32) -> Vec<Listening> {
        let count = self.listen.len();
        wait_for(
            format_args!("{pid} to announce its {count} listener(s)"),
            DEADLINE,
            || self.group.listening(pid, count),
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The executable the server was started from (and restarts into).
    pub(crate) fn exe(&self) -> &Path {
        &self.exe
    }

    /// A pristine copy of the server binary, elsewhere in the test directory.
    pub fn real_binary(&self) -> &Path {
        &self.real
    }

    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// What the pid file names now.
    pub fn pid_file_pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    /// Waits until the pid file names `pid`.
    pub fn wait_pid_file(&self, pid: u32) {
        wait_for(format_args!("the pid file to name {pid}"), DEADLINE, || {
            (self.pid_file_pid() == Some(pid)).then_some(())
        });
    }

    /// Opens a connection.
    pub fn connect(&self) -> Conn {
        Conn::open(&self.endpoint).unwrap_or_else(|e| panic!("connect to {}: {e}", self.endpoint))
    }

    /// One request on a new connection; panics on any error.
    pub fn ask(&self, line: &str) -> (u32, String) {
        ask(&self.endpoint, line)
            .unwrap_or_else(|e| panic!("ask {line:?} at {}: {e}", self.endpoint))
    }

    /// Asserts that a new connection is answered, by `pid`.
    pub fn assert_serves(&self, pid: u32) {
        let (answered, echo) = self.ask("ping");
        assert_eq!(echo, "ping");
        assert_eq!(answered, pid, "answered by {answered}, expected {pid}");
    }

    /// Sends `SIGHUP` to the serving generation and waits for the handover: a new
    /// generation wrote the pid file and announced its listeners (all of them), and the old
    /// one stopped accepting on each stream listener (from then on every new connection goes
    /// to the new one). Returns the new pid. The old process may still be draining, and
    /// still receiving on a UDP socket: nothing in its logs says when it stops.
    pub fn hup(&self) -> u32 {
        let old = self.pid();
        let err_mark = self.group.stderr.len();
        self.group.signal(old, Signal::HUP);
        let new = wait_for(
            format_args!("a new generation after {old} to write the pid file"),
            DEADLINE,
            || {
                let failed = self
                    .group
                    .stderr
                    .find_from(err_mark, |l| l.contains("restart failed"));
                assert!(failed.is_none(), "the restart failed: {failed:?}");
                self.pid_file_pid().filter(|&p| p != old)
            },
        );
        self.listening(new);
        // endless logs that it stopped accepting, unless it exits first.
        wait_for(
            format_args!("the old generation {old} to stop accepting"),
            DEADLINE,
            || {
                let stopped = self.group.stderr.find_from(err_mark, |l| {
                    l.contains(STOPPED_ACCEPTING) && has_field(l, "pid", old)
                });
                (stopped.is_some() || !is_alive(old)).then_some(())
            },
        );
        self.set_pid(new);
        new
    }

    /// [`Server::hup`], then waits for the old generation to exit with 0 (it must have no
    /// connection left).
    pub fn restart(&self) -> u32 {
        let old = self.pid();
        let new = self.hup();
        assert_eq!(
            self.group.wait_exit(old),
            Exit::Code(0),
            "the old generation {old} exit status"
        );
        new
    }

    /// Sends `SIGHUP` to the serving generation, expecting the restart to fail: waits until
    /// it logs the failure (a line with `restart failed`, returned) and asserts that it
    /// still serves, alone.
    pub fn hup_expecting_failure(&self) -> String {
        let pid = self.pid();
        let err_mark = self.group.stderr.len();
        self.group.signal(pid, Signal::HUP);
        let line = self.group.stderr.wait_from(
            format_args!("{pid} to report a failed restart"),
            err_mark,
            |l| l.contains("restart failed"),
        );
        self.assert_serves(pid);
        self.group.wait_settled(&[pid]);
        assert_eq!(self.pid_file_pid(), Some(pid), "the pid file");
        line
    }

    /// Installs as the executable a wrapper script without `exec` that never reports ready:
    /// it starts `sleep 600` (which inherits the listeners), writes that sleep's pid to the
    /// returned file, and waits for it.
    pub fn install_stray_wrapper(&self) -> PathBuf {
        let stray_file = self.dir().join("stray.pid");
        let script = format!(
            "sleep 600 &\necho \"$!\" > {}\nwait\n",
            sh_quote(&stray_file)
        );
        self.replace_exe(&sh_script(&script), 0o755);
        stray_file
    }

    /// Installs as the executable a script that waits until the returned path exists, then
    /// `exec`s the real binary: a new generation that is slow to start, for as long as the
    /// test wants.
    pub fn install_gated_exe(&self) -> PathBuf {
        let gate = self.dir().join("gate");
        let script = format!(
            "while [ ! -e {} ]; do sleep 0.01; done\nexec {} \"$@\"",
            sh_quote(&gate),
            sh_quote(self.real_binary())
        );
        self.replace_exe(&sh_script(&script), 0o755);
        gate
    }

    /// Replaces the executable on disk (atomically).
    pub fn replace_exe(&self, contents: &[u8], mode: u32) {
        install_file(&self.exe, contents, mode);
    }

    /// With [`Options::symlinked_release`]: installs `contents` as the binary of release
    /// `version` and switches `current` to it atomically (a new symlink renamed over it).
    pub(crate) fn switch_release(&self, version: &str, contents: &[u8]) {
        let name = self.exe.file_name().expect("a file name");
        let release = self.dir().join("releases").join(version);
        fs::create_dir_all(&release).expect("mkdir the release");
        install_file(&release.join(name), contents, 0o755);
        let tmp = self.dir().join("current.new");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp)
            .expect("symlink the new release");
        fs::rename(&tmp, self.dir().join("current")).expect("switch current");
    }

    /// Puts the real server binary back in place.
    pub fn restore_exe(&self) {
        install_copy(&self.real, &self.exe);
    }

    /// Waits until the fd count of `pid` is `expected`; panics listing its fds if not.
    pub(crate) fn wait_fd_count(&self, pid: u32, expected: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if fd_count(pid) == Some(expected) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "pid {pid} has {:?} fds, expected {expected}: {:#?}",
                    fd_count(pid),
                    fds(pid)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The fd count of the serving generation once it has settled with no client
    /// connected: waits until it stays unchanged across a few polls.
    pub(crate) fn settled_fd_count(&self) -> usize {
        let pid = self.pid();
        let mut last = None;
        let mut stable = 0;
        wait_for(
            format_args!("the fd count of {pid} to settle"),
            DEADLINE,
            || {
                let now = fd_count(pid);
                if now.is_some() && now == last {
                    stable += 1;
                } else {
                    stable = 0;
                }
                last = now;
                if stable >= 10 { now } else { None }
            },
        )
    }
}

/// Runs `f` on a thread and waits at most [`DEADLINE`] for its result.
pub fn with_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Reads everything from `fd` until end of file, within [`DEADLINE`].
pub(crate) fn read_to_end(what: &str, fd: OwnedFd) -> Vec<u8> {
    with_deadline(what, move || {
        let mut buf = Vec::new();
        let _ = fs::File::from(fd).read_to_end(&mut buf);
        buf
    })
}

/// Borrow helper for [`place_fds`] callers.
pub(crate) fn dup(fd: impl AsFd) -> OwnedFd {
    fd.as_fd().try_clone_to_owned().expect("dup")
}
