//! A restart that reports its result: the command side ([`restart`]) and the status file
//! that answers it.
//!
//! `kill -HUP` asks a server to restart and says nothing of how it went. A deploy script
//! wants to wait until the new binary serves, or to learn why it does not. [`restart`]
//! sends the same signal and then waits for the server's answer:
//!
//! - the new process is ready and the old one has stopped accepting: [`Restarted`], with
//!   the new pid;
//! - the new binary exited before it was ready ([`RestartError::Crashed`], with its exit
//!   status), was not ready within the server's upgrade timeout and was killed
//!   ([`RestartError::NotReadyInTime`]), or failed otherwise; the old process keeps serving;
//! - the server refused the restart because one is already in progress
//!   ([`RestartError::Refused`]);
//! - no answer within the command's own timeout, or the process exited without one
//!   ([`RestartError::TimedOut`], [`RestartError::Gone`]);
//! - the pid file names no live process ([`RestartError::NoSuchProcess`]).
//!
//! [`RestartError::exit_code`] sorts these into exit codes for a command line.
//!
//! # The restart status file
//!
//! A server that keeps a pid file (`Options::pid_file`) also keeps a *restart status file*
//! beside it, at [`status_path`] (`<pid file>.restart`). The process that serves writes it,
//! atomically (a temporary file renamed over it, as the pid file), whenever a restart
//! request it took moves on: the attempt started, the new process was spawned, it was ready
//! (written once this process has stopped accepting), it failed (once the failed process is
//! reaped), or the request was refused. A process
//! that handed over writes its last answer and then never again, so that it never
//! overwrites its successor's records. Nothing else reads or writes the file: `kill -HUP`
//! works as before, and the file only reports.
//!
//! ```text
//! endless-restart-status 1
//! writer 4242 1718000000123456789
//! 1 failed exited child=4250 status=exited:1 -- the new process exited with code 1 before it was ready
//! 2 ready child=4260
//! 3-7 refused draining -- the process is draining
//! ```
//!
//! The second line names the writer: its pid and a number drawn at its start, so that a
//! reused pid is not taken for the same process. Each further line is one restart request
//! this process took, numbered from 1 in the order taken (a range for requests refused in a
//! row for the same reason): `started` (with `child=` once spawned), `ready`, `failed`
//! with a kind (`exited`, `closed-channel`, `bad-message`, `timed-out`, `spawn-failed`,
//! `cancelled`, `other`), the child's exit status once reaped and a message, or `refused`
//! with a reason (`in-progress`, `not-ready`, `draining`, `stopped`, `other`). The last 32
//! records are kept.
//!
//! # How the command finds its answer
//!
//! Signals carry no request id, so the command reads the status file *before* it sends the
//! signal: its answer is the first request the process numbers after the last one it saw.
//! If that request started an attempt, the answer is how the attempt ends; if it was
//! refused (a restart is already in progress), the answer is the refusal. When a restart
//! that was already in progress hands over before the signal is taken, the old process can
//! no longer restart anything: that is reported as a refusal too. Signals of the same kind
//! that arrive together are merged by the kernel; a request processed after the status was
//! read started after the command did, so its outcome is a fair answer to "does the binary
//! on disk now serve".
//!
//! The file stays when the server stops (the next server overwrites it at its first
//! restart request). It is as trustworthy as the pid file: whoever may write the pid
//! file's directory may forge either.
//!
//! # Examples
//!
//! A `restart` subcommand (it signals a real process, hence `no_run`):
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//!
//! match endless_unix::control::restart(Path::new("/run/hello/hello.pid"), Duration::from_secs(90)) {
//!     Ok(restarted) => println!("{}", restarted.new),
//!     Err(e) => {
//!         eprintln!("restart failed: {e}");
//!         std::process::exit(e.exit_code());
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use endless_core::{ChildStatus, Event, InputKind, Phase, Refusal, Request, UpgradeFailure};

use crate::pidfile::write_atomically;
use crate::signals::Signal;
use crate::sys;

/// A command timeout comfortably above the lifecycle's default upgrade timeout (60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// How often the command reads the status file while it waits.
const POLL: Duration = Duration::from_millis(10);

/// How many records a status file keeps.
const MAX_RECORDS: usize = 32;

/// The first line of a status file, with the format's version.
const HEADER: &str = "endless-restart-status 1";

/// Where the restart status file of the pid file `pid_file` is: `<pid file>.restart`.
///
/// ```
/// use std::path::Path;
/// use endless_unix::control::status_path;
///
/// assert_eq!(status_path(Path::new("/run/app.pid")), Path::new("/run/app.pid.restart"));
/// ```
pub fn status_path(pid_file: &Path) -> PathBuf {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".restart");
    PathBuf::from(path)
}

// ---- the command ---------------------------------------------------------------------------

/// A restart that succeeded: the new process is ready and serves; the old one has stopped
/// accepting and drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restarted {
    /// The process that was asked to restart (now draining).
    pub old: u32,
    /// The new process, ready (the pid file names it).
    pub new: u32,
}

/// Why [`restart`] did not report a new process ready.
///
/// `pid` is always the process the command signalled (the one the pid file named), and
/// `child` the new process when one was spawned.
#[derive(Debug)]
#[non_exhaustive]
pub enum RestartError {
    /// The pid file is missing, unreadable or holds no pid.
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// The pid file names no running process (a stale pid file: the server is not running).
    NoSuchProcess {
        /// The pid it names.
        pid: u32,
        /// The pid file.
        pid_file: PathBuf,
    },
    /// The signal could not be sent (another user's process).
    Signal {
        /// The process.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// What went wrong.
        error: io::Error,
    },
    /// The restart status file is unreadable or not in a known format.
    StatusFile {
        /// The status file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// The server refused the restart (one is already in progress, or it is draining).
    Refused {
        /// The process that refused.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// The new process exited before it was ready (the new binary crashed). The old process
    /// keeps serving.
    Crashed {
        /// The process that keeps serving.
        pid: u32,
        /// The new process.
        child: Option<u32>,
        /// How it ended.
        status: ChildStatus,
    },
    /// The new process was not ready within the server's upgrade timeout and was killed.
    /// The old process keeps serving.
    NotReadyInTime {
        /// The process that keeps serving.
        pid: u32,
        /// The new process.
        child: Option<u32>,
    },
    /// The restart failed otherwise (the new process could not be started, broke the
    /// readiness protocol, …). The old process keeps serving.
    Failed {
        /// The process that keeps serving.
        pid: u32,
        /// The new process, if one was started.
        child: Option<u32>,
        /// What the server said.
        reason: String,
    },
    /// The server was asked to stop while the new process was starting: the new process
    /// was killed and the server stops.
    Cancelled {
        /// The process that stops.
        pid: u32,
        /// The new process, if it was spawned.
        child: Option<u32>,
    },
    /// The process exited before it answered.
    Gone {
        /// The process.
        pid: u32,
    },
    /// No answer within the command's timeout (the restart may still be in progress).
    TimedOut {
        /// The process that was signalled.
        pid: u32,
        /// The command's timeout.
        timeout: Duration,
    },
}

impl RestartError {
    /// An exit code for a command line, by what a deploy script should do next:
    ///
    /// | code | meaning | errors |
    /// |---|---|---|
    /// | 1 | the restart failed; the old process keeps serving (or stops, if cancelled) | [`Crashed`](Self::Crashed), [`NotReadyInTime`](Self::NotReadyInTime), [`Failed`](Self::Failed), [`Cancelled`](Self::Cancelled) |
    /// | 3 | refused: a restart is already in progress; try again later | [`Refused`](Self::Refused) |
    /// | 4 | no answer: the outcome is unknown | [`TimedOut`](Self::TimedOut), [`Gone`](Self::Gone) |
    /// | 5 | no server to ask: no live process, or no way to signal or read it | [`PidFile`](Self::PidFile), [`NoSuchProcess`](Self::NoSuchProcess), [`Signal`](Self::Signal), [`StatusFile`](Self::StatusFile) |
    ///
    /// (2 is left to usage errors, by convention.)
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Crashed { .. }
            | Self::NotReadyInTime { .. }
            | Self::Failed { .. }
            | Self::Cancelled { .. } => 1,
            Self::Refused { .. } => 3,
            Self::TimedOut { .. } | Self::Gone { .. } => 4,
            Self::PidFile { .. }
            | Self::NoSuchProcess { .. }
            | Self::Signal { .. }
            | Self::StatusFile { .. } => 5,
        }
    }
}

/// ` (pid N)`, or nothing.
struct ChildPid(Option<u32>);

impl fmt::Display for ChildPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for RestartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PidFile { path, error } => {
                write!(f, "cannot read the pid file {}: {error}", path.display())
            }
            Self::NoSuchProcess { pid, pid_file } => write!(
                f,
                "no process has pid {pid}, which the pid file {} names: the server is not running",
                pid_file.display()
            ),
            Self::Signal { pid, signal, error } => {
                write!(f, "cannot send {signal} to pid {pid}: {error}")
            }
            Self::StatusFile { path, error } => write!(
                f,
                "cannot read the restart status file {}: {error}",
                path.display()
            ),
            Self::Refused { pid, reason } => write!(f, "pid {pid} refused the restart: {reason}"),
            Self::Crashed { pid, child, status } => write!(
                f,
                "the new process{} {status} before it was ready; pid {pid} keeps serving",
                ChildPid(*child)
            ),
            Self::NotReadyInTime { pid, child } => write!(
                f,
                "the new process{} was not ready within the server's upgrade timeout and was \
                 killed; pid {pid} keeps serving",
                ChildPid(*child)
            ),
            Self::Failed { pid, reason, .. } => {
                write!(f, "{reason}; pid {pid} keeps serving")
            }
            Self::Cancelled { pid, child } => write!(
                f,
                "pid {pid} was asked to stop while the new process{} was starting: the restart \
                 was cancelled",
                ChildPid(*child)
            ),
            Self::Gone { pid } => write!(f, "pid {pid} exited before it answered"),
            Self::TimedOut { pid, timeout } => write!(
                f,
                "no answer from pid {pid} within {timeout:?}; the restart may still be in progress"
            ),
        }
    }
}

impl std::error::Error for RestartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::PidFile { error, .. }
            | Self::Signal { error, .. }
            | Self::StatusFile { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<RestartError> for io::Error {
    fn from(e: RestartError) -> Self {
        let kind = match &e {
            RestartError::PidFile { error, .. }
            | RestartError::Signal { error, .. }
            | RestartError::StatusFile { error, .. } => error.kind(),
            RestartError::NoSuchProcess { .. } | RestartError::Gone { .. } => {
                io::ErrorKind::NotFound
            }
            RestartError::Refused { .. } => io::ErrorKind::ResourceBusy,
            RestartError::TimedOut { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        Self::new(kind, e)
    }
}

/// Asks the server whose pid file is `pid_file` to restart (`SIGHUP`) and waits at most
/// `timeout` for the outcome: `Ok` once the new process is ready, or why not.
///
/// Blocking: call it from `main`, before any runtime starts (or from a blocking thread).
/// Give it a `timeout` above the server's upgrade timeout, or it may give up while the new
/// process is still starting ([`DEFAULT_TIMEOUT`] suits the default upgrade timeout).
///
/// # Examples
///
/// ```no_run
/// use std::path::Path;
/// use endless_unix::control::{self, RestartError};
///
/// match control::restart(Path::new("/run/app.pid"), control::DEFAULT_TIMEOUT) {
///     Ok(r) => println!("pid {} serves", r.new),
///     Err(e @ RestartError::Refused { .. }) => eprintln!("busy, try again: {e}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
pub fn restart(pid_file: &Path, timeout: Duration) -> Result<Restarted, RestartError> {
    restart_with_signal(pid_file, timeout, Signal::HUP)
}

/// [`restart`] for a server whose [`SignalMap`](crate::SignalMap) asks for a restart with
/// `signal` rather than `SIGHUP`.
pub fn restart_with_signal(
    pid_file: &Path,
    timeout: Duration,
    signal: Signal,
) -> Result<Restarted, RestartError> {
    let deadline = Instant::now().checked_add(timeout);
    let status_path = status_path(pid_file);
    let (pid, baseline) = target(pid_file, &status_path)?;
    match sys::signal_process(pid, signal.as_raw()) {
        Ok(true) => {}
        Ok(false) => {
            return Err(RestartError::NoSuchProcess {
                pid,
                pid_file: pid_file.to_owned(),
            });
        }
        Err(error) => return Err(RestartError::Signal { pid, signal, error }),
    }
    tracing::debug!(pid, %signal, path = %status_path.display(), "restart requested; waiting for the answer");
    loop {
        let file = read_status(&status_path)?;
        if let Some(answer) = decide(pid, &baseline, file.as_ref(), true) {
            return answer;
        }
        if !is_running(pid) {
            // It may have answered just before it exited.
            let file = read_status(&status_path)?;
            return decide(pid, &baseline, file.as_ref(), false)
                .unwrap_or(Err(RestartError::Gone { pid }));
        }
        let left = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => POLL,
        };
        if left.is_zero() {
            return Err(RestartError::TimedOut { pid, timeout });
        }
        std::thread::sleep(POLL.min(left));
    }
}

/// The process to signal, and what its status file said before the signal. Follows a
/// handover that the status file already shows (the pid file then names the successor).
fn target(pid_file: &Path, status_path: &Path) -> Result<(u32, Baseline), RestartError> {
    let mut pid = read_pid(pid_file)?;
    for _ in 0..4 {
        if !is_running(pid) {
            return Err(RestartError::NoSuchProcess {
                pid,
                pid_file: pid_file.to_owned(),
            });
        }
        let file = read_status(status_path)?;
        let baseline = Baseline::new(pid, file.as_ref());
        if file.as_ref().and_then(|f| f.handed_over(pid)).is_some() {
            let now = read_pid(pid_file)?;
            if now != pid {
                tracing::debug!(
                    old = pid,
                    new = now,
                    "the pid file moved on; asking the new process"
                );
                pid = now;
                continue;
            }
        }
        return Ok((pid, baseline));
    }
    let file = read_status(status_path)?;
    Ok((pid, Baseline::new(pid, file.as_ref())))
}

fn read_pid(path: &Path) -> Result<u32, RestartError> {
    let error = |error| RestartError::PidFile {
        path: path.to_owned(),
        error,
    };
    let text = std::fs::read_to_string(path).map_err(error)?;
    text.trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
        .ok_or_else(|| {
            error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it holds no pid: {:?}", text.trim()),
            ))
        })
}

/// The status file, or `None` if there is none yet.
fn read_status(path: &Path) -> Result<Option<StatusFile>, RestartError> {
    let error = |error| RestartError::StatusFile {
        path: path.to_owned(),
        error,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => StatusFile::parse(&text).map(Some).map_err(error),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(e)),
    }
}

/// Whether `pid` is a process that has not exited (a zombie has).
fn is_running(pid: u32) -> bool {
    match sys::signal_process(pid, 0) {
        Ok(false) => false,
        // Another user's process exists too.
        Ok(true) | Err(_) => !is_zombie(pid),
    }
}

#[cfg(target_os = "linux")]
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name is in parentheses and may hold anything: the state follows the last.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| matches!(state, "Z" | "X"))
}

#[cfg(not(target_os = "linux"))]
fn is_zombie(_pid: u32) -> bool {
    false
}

/// What the status file said about the target before the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Baseline {
    /// The target's identity, if it had written the file.
    writer: Option<WriterId>,
    /// The last request it had numbered (0 if none).
    last: u64,
}

impl Baseline {
    fn new(pid: u32, file: Option<&StatusFile>) -> Self {
        match file {
            Some(f) if f.writer.pid == pid => Self {
                writer: Some(f.writer),
                last: f.records.iter().map(|r| r.last).max().unwrap_or(0),
            },
            _ => Self {
                writer: None,
                last: 0,
            },
        }
    }
}

/// The answer for `pid` in `file`, or `None` to keep waiting. With `running` false (the
/// process is gone) there is always an answer.
fn decide(
    pid: u32,
    baseline: &Baseline,
    file: Option<&StatusFile>,
    running: bool,
) -> Option<Result<Restarted, RestartError>> {
    let waiting = || (!running).then_some(Err(RestartError::Gone { pid }));
    let Some(file) = file.filter(|f| f.writer.pid == pid) else {
        return waiting();
    };
    // A writer that is not the one seen before (it had not written yet, or the pid was
    // reused) numbers its requests from 1.
    let after = if baseline.writer == Some(file.writer) {
        baseline.last
    } else {
        0
    };
    // The record of the first request numbered after `after`.
    let first = file
        .records
        .iter()
        .filter(|r| r.last > after)
        .min_by_key(|r| r.first.max(after + 1));
    if let Some(record) = first {
        return match &record.outcome {
            Outcome::Started { .. } => waiting(),
            Outcome::Ready { child } => Some(Ok(Restarted {
                old: pid,
                new: *child,
            })),
            Outcome::Refused { message, .. } => Some(Err(RestartError::Refused {
                pid,
                reason: message.clone(),
            })),
            // Final once the failed process is reaped (its status known).
            Outcome::Failed {
                child: Some(_),
                status: None,
                ..
            } if running => None,
            Outcome::Failed {
                kind,
                child,
                status,
                message,
            } => Some(Err(failure(pid, *kind, *child, *status, message))),
        };
    }
    if let Some(successor) = file.handed_over(pid) {
        return Some(Err(RestartError::Refused {
            pid,
            reason: format!(
                "it had already handed over to pid {successor} (a restart that was in progress \
                 when this command began)"
            ),
        }));
    }
    waiting()
}

fn failure(
    pid: u32,
    kind: FailureKind,
    child: Option<u32>,
    status: Option<ChildStatus>,
    message: &str,
) -> RestartError {
    let failed = || RestartError::Failed {
        pid,
        child,
        reason: message.to_owned(),
    };
    match kind {
        FailureKind::Exited => RestartError::Crashed {
            pid,
            child,
            status: status.unwrap_or(ChildStatus::Unknown),
        },
        // Its readiness channel closed first: it ended by itself (a crash) unless it was
        // still running when the server killed it for closing the channel.
        FailureKind::ClosedChannel => match status {
            Some(status @ (ChildStatus::Exited(_) | ChildStatus::Signaled(_)))
                if status != ChildStatus::Signaled(rustix::process::Signal::KILL.as_raw()) =>
            {
                RestartError::Crashed { pid, child, status }
            }
            _ => failed(),
        },
        FailureKind::TimedOut => RestartError::NotReadyInTime { pid, child },
        FailureKind::Cancelled => RestartError::Cancelled { pid, child },
        FailureKind::BadMessage | FailureKind::SpawnFailed | FailureKind::Other => failed(),
    }
}

// ---- the file format -------------------------------------------------------------------------

/// Who wrote a status file: a pid and a number drawn at the writer's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WriterId {
    pid: u32,
    nonce: u64,
}

/// A status file, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusFile {
    writer: WriterId,
    records: Vec<Record>,
}

/// What became of the restart requests `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    first: u64,
    last: u64,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// An attempt is under way.
    Started { child: Option<u32> },
    /// The new process is ready.
    Ready { child: u32 },
    /// The attempt failed; `status` once the child (if any) is reaped.
    Failed {
        kind: FailureKind,
        child: Option<u32>,
        status: Option<ChildStatus>,
        message: String,
    },
    /// The requests were refused.
    Refused {
        reason: RefusalKind,
        message: String,
    },
}

macro_rules! words {
    ($name:ident { $($variant:ident = $word:literal),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum $name { $($variant),* }

        impl $name {
            fn word(self) -> &'static str {
                match self { $(Self::$variant => $word),* }
            }

            fn from_word(word: &str) -> Option<Self> {
                match word { $($word => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

words!(FailureKind {
    Exited = "exited",
    ClosedChannel = "closed-channel",
    BadMessage = "bad-message",
    TimedOut = "timed-out",
    SpawnFailed = "spawn-failed",
    Cancelled = "cancelled",
    Other = "other",
});

words!(RefusalKind {
    InProgress = "in-progress",
    NotReady = "not-ready",
    Draining = "draining",
    Stopped = "stopped",
    Other = "other",
});

impl From<&UpgradeFailure> for FailureKind {
    fn from(failure: &UpgradeFailure) -> Self {
        match failure {
            UpgradeFailure::ChildExited(_) => Self::Exited,
            UpgradeFailure::ChildFailed(endless_core::ChildFailure::ChannelClosed) => {
                Self::ClosedChannel
            }
            UpgradeFailure::ChildFailed(_) => Self::BadMessage,
            UpgradeFailure::TimedOut => Self::TimedOut,
            UpgradeFailure::SpawnFailed(_) => Self::SpawnFailed,
            UpgradeFailure::Cancelled => Self::Cancelled,
            _ => Self::Other,
        }
    }
}

impl From<Refusal> for RefusalKind {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UpgradeInProgress => Self::InProgress,
            Refusal::NotReady => Self::NotReady,
            Refusal::Draining => Self::Draining,
            Refusal::Stopped => Self::Stopped,
            _ => Self::Other,
        }
    }
}

fn encode_status(status: ChildStatus) -> String {
    match status {
        ChildStatus::Exited(code) => format!("exited:{code}"),
        ChildStatus::Signaled(signal) => format!("signal:{signal}"),
        _ => "unknown".to_owned(),
    }
}

fn decode_status(text: &str) -> Option<ChildStatus> {
    if text == "unknown" {
        return Some(ChildStatus::Unknown);
    }
    let (kind, number) = text.split_once(':')?;
    let number = number.parse().ok()?;
    match kind {
        "exited" => Some(ChildStatus::Exited(number)),
        "signal" => Some(ChildStatus::Signaled(number)),
        _ => None,
    }
}

/// `text` on one line (messages end their record's line).
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

impl StatusFile {
    fn encode(&self) -> String {
        use fmt::Write;
        let mut out = format!(
            "{HEADER}\nwriter {} {}\n",
            self.writer.pid, self.writer.nonce
        );
        for r in &self.records {
            if r.first == r.last {
                let _ = write!(out, "{}", r.first);
            } else {
                let _ = write!(out, "{}-{}", r.first, r.last);
            }
            let child = |out: &mut String, child: Option<u32>| {
                if let Some(child) = child {
                    let _ = write!(out, " child={child}");
                }
            };
            match &r.outcome {
                Outcome::Started { child: c } => {
                    out.push_str(" started");
                    child(&mut out, *c);
                }
                Outcome::Ready { child: c } => {
                    out.push_str(" ready");
                    child(&mut out, Some(*c));
                }
                Outcome::Failed {
                    kind,
                    child: c,
                    status,
                    message,
                } => {
                    let _ = write!(out, " failed {}", kind.word());
                    child(&mut out, *c);
                    if let Some(status) = status {
                        let _ = write!(out, " status={}", encode_status(*status));
                    }
                    let _ = write!(out, " -- {}", one_line(message));
                }
                Outcome::Refused { reason, message } => {
                    let _ = write!(out, " refused {} -- {}", reason.word(), one_line(message));
                }
            }
            out.push('\n');
        }
        out
    }

    /// Parses a status file strictly: anything unexpected is an error.
    fn parse(text: &str) -> io::Result<Self> {
        let bad = |line: usize, what: String| {
            io::Error::new(io::ErrorKind::InvalidData, format!("line {line}: {what}"))
        };
        let mut lines = text.lines();
        match lines.next() {
            Some(HEADER) => {}
            Some(other) if other.starts_with("endless-restart-status ") => {
                return Err(bad(1, format!("unsupported version: {other:?}")));
            }
            other => {
                return Err(bad(
                    1,
                    format!("not an endless restart status file: {other:?}"),
                ));
            }
        }
        let writer = lines
            .next()
            .and_then(|l| {
                let mut words = l.split(' ');
                let (Some("writer"), Some(pid), Some(nonce), None) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    return None;
                };
                Some(WriterId {
                    pid: pid.parse().ok().filter(|&p| p > 0)?,
                    nonce: nonce.parse().ok()?,
                })
            })
            .ok_or_else(|| bad(2, "expected `writer <pid> <nonce>`".to_owned()))?;
        let records = lines
            .enumerate()
            .map(|(i, line)| parse_record(line).ok_or_else(|| bad(i + 3, format!("{line:?}"))))
            .collect::<io::Result<_>>()?;
        Ok(Self { writer, records })
    }

    /// The process `pid` handed over to, if this file is its and says so.
    fn handed_over(&self, pid: u32) -> Option<u32> {
        if self.writer.pid != pid {
            return None;
        }
        self.records.iter().rev().find_map(|r| match r.outcome {
            Outcome::Ready { child } => Some(child),
            _ => None,
        })
    }
}

fn parse_record(line: &str) -> Option<Record> {
    let (head, message) = match line.split_once(" -- ") {
        Some((head, message)) => (head, Some(message.to_owned())),
        None => (line, None),
    };
    let mut words = head.split(' ');
    let range = words.next()?;
    let (first, last) = match range.split_once('-') {
        Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
        None => {
            let n = range.parse().ok()?;
            (n, n)
        }
    };
    if first == 0 || last < first {
        return None;
    }
    let outcome = words.next()?;
    let kind = match outcome {
        "failed" | "refused" => Some(words.next()?),
        _ => None,
    };
    let (mut child, mut status) = (None, None);
    for field in words {
        match field.split_once('=')? {
            ("child", pid) if child.is_none() => child = Some(pid.parse().ok()?),
            ("status", s) if status.is_none() => status = Some(decode_status(s)?),
            _ => return None,
        }
    }
    let outcome = match (outcome, kind, message) {
        ("started", None, None) if status.is_none() => Outcome::Started { child },
        ("ready", None, None) if status.is_none() => Outcome::Ready { child: child? },
        ("failed", Some(kind), Some(message)) => Outcome::Failed {
            kind: FailureKind::from_word(kind)?,
            child,
            status,
            message,
        },
        ("refused", Some(reason), Some(message)) if child.is_none() && status.is_none() => {
            Outcome::Refused {
                reason: RefusalKind::from_word(reason)?,
                message,
            }
        }
        _ => return None,
    };
    Some(Record {
        first,
        last,
        outcome,
    })
}

// ---- the server side -------------------------------------------------------------------------

/// Keeps the restart status file of one server process (see the [module docs](self)): fed
/// every lifecycle event by the driver, and every reaped child.
#[derive(Debug)]
pub(crate) struct StatusWriter {
    path: PathBuf,
    id: WriterId,
    /// Restart requests taken so far.
    requests: u64,
    /// The request whose attempt is under way.
    attempt: Option<u64>,
    records: VecDeque<Record>,
    /// The successor that reported ready, until this process stops accepting.
    handing_over: Option<u32>,
    /// This process handed over: its successor owns the file.
    handed_over: bool,
    /// A staged upgrade is under way (not a restart request: not recorded), and its
    /// generation once ready.
    staging: bool,
    staged: Option<u32>,
}

impl StatusWriter {
    /// The writer of the status file beside `pid_file`, for this process. Writes nothing
    /// until the first restart request.
    pub(crate) fn new(pid_file: &Path) -> Self {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self::with_id(
            status_path(pid_file),
            WriterId {
                pid: std::process::id(),
                nonce,
            },
        )
    }

    fn with_id(path: PathBuf, id: WriterId) -> Self {
        Self {
            path,
            id,
            requests: 0,
            attempt: None,
            records: VecDeque::new(),
            handing_over: None,
            handed_over: false,
            staging: false,
            staged: None,
        }
    }

    /// Takes note of a lifecycle event; rewrites the file if a request moved on.
    pub(crate) fn on_event(&mut self, event: &Event) {
        match event {
            // A staged upgrade answers no restart command; once committed, this process
            // hands over as after a restart, and leaves the file to its successor.
            Event::Requested(Request::Stage) => self.staging = true,
            Event::Requested(Request::Commit) => {
                if let Some(successor) = self.staged.take() {
                    self.handing_over = Some(successor);
                }
            }
            Event::StateChanged {
                to: Phase::Forking, ..
            } if self.staging => {}
            Event::ChildReady { pid } if self.staging => {
                self.staging = false;
                self.staged = Some(*pid);
            }
            Event::UpgradeFailed { .. } if self.staging || self.staged.is_some() => {
                self.staging = false;
                self.staged = None;
            }
            Event::Refused {
                input: InputKind::Stage,
                ..
            } => self.staging = false,
            Event::Requested(Request::Restart) => {
                self.requests += 1;
                self.staging = false;
            }
            Event::StateChanged {
                to: Phase::Forking, ..
            } => {
                self.attempt = Some(self.requests);
                self.push(Record {
                    first: self.requests,
                    last: self.requests,
                    outcome: Outcome::Started { child: None },
                });
                self.write();
            }
            Event::ChildSpawned { pid } => {
                let spawned = self.set_attempt(Outcome::Started { child: Some(*pid) });
                self.write_if(spawned);
            }
            // Written once this process has stopped accepting (`stopped_accepting`).
            Event::ChildReady { pid } => {
                let ready = self.set_attempt(Outcome::Ready { child: *pid });
                if ready {
                    self.attempt = None;
                    self.handing_over = Some(*pid);
                }
            }
            Event::UpgradeFailed { pid, reason } => {
                let outcome = Outcome::Failed {
                    kind: reason.into(),
                    child: *pid,
                    // Known at once when it exited; otherwise once it is reaped (and
                    // never, when there is no child).
                    status: match reason {
                        UpgradeFailure::ChildExited(status) => Some(*status),
                        _ => None,
                    },
                    message: reason.to_string(),
                };
                if self.set_attempt(outcome) {
                    self.attempt = None;
                    self.write();
                }
            }
            Event::Refused {
                input: InputKind::Restart,
                reason,
            } => {
                self.refuse(self.requests, *reason);
                self.write();
            }
            _ => {}
        }
    }

    /// Takes note that this process has stopped accepting: after a handover, the moment to
    /// write that the new process is ready (a command that then connects reaches it). From
    /// then on the successor owns the file, and this process writes no more.
    pub(crate) fn stopped_accepting(&mut self) {
        let Some(successor) = self.handing_over.take() else {
            return;
        };
        // The successor may have taken the file over already (asked to restart the moment
        // it was ready): never overwrite its records.
        if self.file_writer() == Some(successor) {
            tracing::debug!(successor, "the successor owns the restart status file");
        } else {
            self.write();
        }
        self.handed_over = true;
    }

    /// Takes note of a reaped child: completes the record of an attempt that failed while
    /// it still ran.
    pub(crate) fn child_exited(&mut self, pid: u32, exit: ChildStatus) {
        let pending = self
            .records
            .iter_mut()
            .rev()
            .find_map(|r| match &mut r.outcome {
                Outcome::Failed {
                    child: Some(child),
                    status: status @ None,
                    ..
                } if *child == pid => Some(status),
                _ => None,
            });
        if let Some(status) = pending {
            *status = Some(exit);
            self.write();
        }
    }

    fn push(&mut self, record: Record) {
        if self.records.len() == MAX_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// Sets the outcome of the attempt under way; false if there is none.
    fn set_attempt(&mut self, outcome: Outcome) -> bool {
        let Some(n) = self.attempt else {
            return false;
        };
        match self.records.iter_mut().rev().find(|r| r.first == n) {
            Some(record) => record.outcome = outcome,
            None => self.push(Record {
                first: n,
                last: n,
                outcome,
            }),
        }
        true
    }

    fn refuse(&mut self, n: u64, reason: Refusal) {
        let kind = RefusalKind::from(reason);
        if let Some(last) = self.records.back_mut()
            && let Outcome::Refused { reason: k, .. } = last.outcome
            && k == kind
            && last.last + 1 == n
        {
            last.last = n;
            return;
        }
        self.push(Record {
            first: n,
            last: n,
            outcome: Outcome::Refused {
                reason: kind,
                message: reason.to_string(),
            },
        });
    }

    /// The pid of whoever wrote the file last, if it is a valid status file.
    fn file_writer(&self) -> Option<u32> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        Some(StatusFile::parse(&text).ok()?.writer.pid)
    }

    fn write_if(&self, changed: bool) {
        if changed {
            self.write();
        }
    }

    fn write(&self) {
        if self.handed_over {
            return;
        }
        let file = StatusFile {
            writer: self.id,
            records: self.records.iter().cloned().collect(),
        };
        // No fsync: readers need the rename's atomicity, not durability, and a burst of
        // requests must not stall the driver on the disk.
        if let Err(e) = write_atomically(&self.path, file.encode().as_bytes(), false) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the restart status file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use endless_core::ChildFailure;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("endless-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const ME: WriterId = WriterId { pid: 100, nonce: 7 };

    fn record(first: u64, last: u64, outcome: Outcome) -> Record {
        Record {
            first,
            last,
            outcome,
        }
    }

    fn every_outcome() -> StatusFile {
        StatusFile {
            writer: ME,
            records: vec![
                record(1, 1, Outcome::Started { child: None }),
                record(2, 2, Outcome::Started { child: Some(201) }),
                record(3, 3, Outcome::Ready { child: 202 }),
                record(
                    4,
                    4,
                    Outcome::Failed {
                        kind: FailureKind::Exited,
                        child: Some(203),
                        status: Some(ChildStatus::Exited(3)),
                        message: "the new process exited with code 3 before it was ready".into(),
                    },
                ),
                record(
                    5,
                    5,
                    Outcome::Failed {
                        kind: FailureKind::ClosedChannel,
                        child: Some(204),
                        status: None,
                        message: "line\nbreaks -- and dashes".into(),
                    },
                ),
                record(
                    6,
                    6,
                    Outcome::Failed {
                        kind: FailureKind::TimedOut,
                        child: Some(205),
                        status: Some(ChildStatus::Signaled(9)),
                        message: String::new(),
                    },
                ),
                record(
                    7,
                    7,
                    Outcome::Failed {
                        kind: FailureKind::SpawnFailed,
                        child: None,
                        status: Some(ChildStatus::Unknown),
                        message: "no such file".into(),
                    },
                ),
                record(
                    8,
                    40,
                    Outcome::Refused {
                        reason: RefusalKind::InProgress,
                        message: "a restart is already in progress".into(),
                    },
                ),
            ],
        }
    }

    #[test]
    fn the_format_round_trips() {
        let file = every_outcome();
        let text = file.encode();
        assert!(
            text.starts_with("endless-restart-status 1\nwriter 100 7\n"),
            "{text}"
        );
        assert!(text.contains("\n2 started child=201\n"), "{text}");
        assert!(
            text.contains("\n4 failed exited child=203 status=exited:3 -- the new process"),
            "{text}"
        );
        assert!(
            text.contains("\n8-40 refused in-progress -- a restart is already in progress\n"),
            "{text}"
        );
        let mut expected = file;
        // Messages are kept on their line.
        let Outcome::Failed { message, .. } = &mut expected.records[4].outcome else {
            unreachable!()
        };
        *message = "line breaks -- and dashes".into();
        assert_eq!(StatusFile::parse(&text).unwrap(), expected);
        assert_eq!(StatusFile::parse(&expected.encode()).unwrap(), expected);
    }

    #[test]
    fn the_parser_is_strict() {
        let good = "endless-restart-status 1\nwriter 100 7\n";
        assert!(StatusFile::parse(good).unwrap().records.is_empty());
        for bad in [
            "",
            "hello\n",
            "endless-restart-status 2\nwriter 100 7\n",
            "endless-restart-status 1\n",
            "endless-restart-status 1\nwriter 0 7\n",
            "endless-restart-status 1\nwriter 100\n",
            "endless-restart-status 1\nwriter 100 7 8\n",
            "endless-restart-status 1\nwriter x 7\n",
        ] {
            assert!(StatusFile::parse(bad).is_err(), "{bad:?}");
        }
        for line in [
            "",
            "0 started",
            "5-4 refused draining -- x",
            "1 begun",
            "1 started -- why",
            "1 started status=exited:1",
            "1 ready",
            "1 ready child=x",
            "1 ready child=2 child=3",
            "1 failed exited child=2",
            "1 failed melted child=2 -- x",
            "1 failed exited status=exited -- x",
            "1 failed exited status=stopped:1 -- x",
            "1 failed exited colour=red -- x",
            "1 refused draining",
            "1 refused bored -- x",
            "1 refused draining child=3 -- x",
            "x started",
        ] {
            let text = format!("{good}{line}\n");
            let e = StatusFile::parse(&text).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{line:?}");
            assert!(e.to_string().starts_with("line 3:"), "{e}");
        }
    }

    #[test]
    fn status_path_is_beside_the_pid_file() {
        assert_eq!(
            status_path(Path::new("run/x.pid")),
            Path::new("run/x.pid.restart")
        );
        assert_eq!(status_path(Path::new("x")), Path::new("x.restart"));
    }

    fn read(path: &Path) -> StatusFile {
        StatusFile::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn restart_request() -> Event {
        Event::Requested(Request::Restart)
    }

    fn forking() -> Event {
        Event::StateChanged {
            from: Phase::Running,
            to: Phase::Forking,
        }
    }

    fn refused(reason: Refusal) -> Event {
        Event::Refused {
            input: InputKind::Restart,
            reason,
        }
    }

    #[test]
    fn the_writer_records_each_request() {
        let dir = temp_dir("writer");
        let pid_file = dir.join("s.pid");
        let path = status_path(&pid_file);
        let mut w = StatusWriter::with_id(path.clone(), ME);
        w.on_event(&Event::StateChanged {
            from: Phase::Running,
            to: Phase::Draining,
        });
        assert!(!path.exists(), "nothing to say before a restart request");

        // 1: spawned, then the child closes its channel; final once it is reaped.
        w.on_event(&restart_request());
        w.on_event(&forking());
        assert_eq!(
            read(&path).records,
            [record(1, 1, Outcome::Started { child: None })]
        );
        w.on_event(&Event::ChildSpawned { pid: 300 });
        // A burst of requests while it starts: one record.
        for _ in 0..50 {
            w.on_event(&restart_request());
            w.on_event(&refused(Refusal::UpgradeInProgress));
        }
        w.on_event(&Event::UpgradeFailed {
            pid: Some(300),
            reason: UpgradeFailure::ChildFailed(ChildFailure::ChannelClosed),
        });
        let failed = |status| Outcome::Failed {
            kind: FailureKind::ClosedChannel,
            child: Some(300),
            status,
            message: "the new process closed its readiness channel before it was ready".into(),
        };
        let in_progress = record(
            2,
            51,
            Outcome::Refused {
                reason: RefusalKind::InProgress,
                message: "a restart is already in progress".into(),
            },
        );
        assert_eq!(
            read(&path).records,
            [record(1, 1, failed(None)), in_progress.clone()]
        );
        w.child_exited(999, ChildStatus::Exited(0));
        w.child_exited(300, ChildStatus::Exited(3));
        assert_eq!(
            read(&path).records,
            [
                record(1, 1, failed(Some(ChildStatus::Exited(3)))),
                in_progress
            ]
        );

        // 52: exits before ready: final at once.
        w.on_event(&restart_request());
        w.on_event(&forking());
        w.on_event(&Event::ChildSpawned { pid: 301 });
        w.on_event(&Event::UpgradeFailed {
            pid: Some(301),
            reason: UpgradeFailure::ChildExited(ChildStatus::Signaled(11)),
        });
        let file = read(&path);
        assert_eq!(file.writer, ME);
        assert_eq!(
            file.records.last(),
            Some(&record(
                52,
                52,
                Outcome::Failed {
                    kind: FailureKind::Exited,
                    child: Some(301),
                    status: Some(ChildStatus::Signaled(11)),
                    message: "the new process was killed by signal 11 before it was ready".into(),
                }
            ))
        );

        // 53: ready; then refusals while draining are no longer written.
        w.on_event(&restart_request());
        w.on_event(&forking());
        w.on_event(&Event::ChildSpawned { pid: 302 });
        w.on_event(&Event::ChildReady { pid: 302 });
        assert!(
            read(&path).records.last().unwrap().outcome == Outcome::Started { child: Some(302) },
            "not before this process stopped accepting"
        );
        w.stopped_accepting();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.ends_with("\n53 ready child=302\n"), "{written}");
        w.on_event(&restart_request());
        w.on_event(&refused(Refusal::Draining));
        w.stopped_accepting();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_writer_keeps_the_last_records() {
        let dir = temp_dir("ring");
        let path = dir.join("s.pid.restart");
        let mut w = StatusWriter::with_id(path.clone(), ME);
        for i in 0..100 {
            w.on_event(&restart_request());
            w.on_event(&forking());
            w.on_event(&Event::UpgradeFailed {
                pid: None,
                reason: UpgradeFailure::SpawnFailed(format!("try {i}")),
            });
            w.on_event(&restart_request());
            w.on_event(&refused(if i % 2 == 0 {
                Refusal::NotReady
            } else {
                Refusal::Stopped
            }));
        }
        let records = read(&path).records;
        assert_eq!(records.len(), MAX_RECORDS);
        assert_eq!(records.last().unwrap().first, 200);
        assert_eq!(records.first().unwrap().first, 200 - MAX_RECORDS as u64 + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_writer_leaves_the_file_to_a_successor_that_took_it() {
        let dir = temp_dir("successor");
        let path = dir.join("s.pid.restart");
        let mut w = StatusWriter::with_id(path.clone(), ME);
        w.on_event(&restart_request());
        w.on_event(&forking());
        w.on_event(&Event::ChildSpawned { pid: 500 });
        // The successor, asked to restart the moment it was ready, wrote first.
        let successor = StatusFile {
            writer: WriterId { pid: 500, nonce: 1 },
            records: vec![record(1, 1, Outcome::Started { child: None })],
        };
        std::fs::write(&path, successor.encode()).unwrap();
        w.on_event(&Event::ChildReady { pid: 500 });
        w.stopped_accepting();
        assert_eq!(read(&path), successor);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn file(writer: WriterId, records: Vec<Record>) -> StatusFile {
        StatusFile { writer, records }
    }

    fn started(n: u64) -> Record {
        record(n, n, Outcome::Started { child: Some(900) })
    }

    #[test]
    fn the_command_takes_the_first_request_after_its_baseline() {
        let not_ready = Outcome::Refused {
            reason: RefusalKind::NotReady,
            message: "the application has not reported ready yet".into(),
        };
        let before = file(ME, vec![record(1, 1, not_ready), started(2)]);
        let baseline = Baseline::new(ME.pid, Some(&before));
        assert_eq!(
            baseline,
            Baseline {
                writer: Some(ME),
                last: 2
            }
        );
        let decide = |f: &StatusFile| decide(ME.pid, &baseline, Some(f), true);
        assert!(decide(&before).is_none(), "nothing new: wait");

        // Attempt 2 ends: not ours.
        let mut now = before.clone();
        now.records[1].outcome = Outcome::Ready { child: 8 };
        // ... but this process handed over: it will never restart for us.
        let Some(Err(RestartError::Refused { reason, .. })) = decide(&now) else {
            panic!()
        };
        assert!(reason.contains("handed over to pid 8"), "{reason}");

        // Ours was refused while 2 was under way.
        let mut now = before.clone();
        now.records.push(record(
            3,
            9,
            Outcome::Refused {
                reason: RefusalKind::InProgress,
                message: "a restart is already in progress".into(),
            },
        ));
        let Some(Err(e @ RestartError::Refused { .. })) = decide(&now) else {
            panic!()
        };
        assert_eq!(e.exit_code(), 3);

        // Ours started (3), then was ready.
        let mut now = before;
        now.records.push(started(3));
        assert!(decide(&now).is_none());
        now.records[2].outcome = Outcome::Ready { child: 901 };
        assert_eq!(
            decide(&now).unwrap().unwrap(),
            Restarted {
                old: ME.pid,
                new: 901
            }
        );

        // A file from another writer says nothing about us; a gone process answers `Gone`.
        let other = file(WriterId { pid: 5, nonce: 1 }, vec![started(1)]);
        assert!(decide(&other).is_none());
        assert!(matches!(
            super::decide(ME.pid, &baseline, Some(&other), false),
            Some(Err(RestartError::Gone { pid: 100 }))
        ));
        assert!(matches!(
            super::decide(ME.pid, &baseline, None, false),
            Some(Err(RestartError::Gone { .. }))
        ));
    }

    #[test]
    fn the_command_counts_from_one_for_a_new_writer() {
        // Before: the predecessor's file (or a reused pid's).
        let old = file(ME, vec![started(1), started(2)]);
        let baseline = Baseline::new(ME.pid, Some(&old));
        let reborn = WriterId {
            pid: ME.pid,
            nonce: 8,
        };
        let now = file(reborn, vec![record(1, 1, Outcome::Ready { child: 3 })]);
        assert_eq!(
            decide(ME.pid, &baseline, Some(&now), true)
                .unwrap()
                .unwrap()
                .new,
            3
        );
        // No file before.
        let baseline = Baseline::new(ME.pid, None);
        assert_eq!(baseline.last, 0);
        assert!(decide(ME.pid, &baseline, Some(&now), true).is_some());
    }

    #[test]
    fn a_failure_is_final_once_the_child_is_reaped() {
        let baseline = Baseline::new(ME.pid, None);
        let failed = |kind, status| {
            file(
                ME,
                vec![record(
                    1,
                    1,
                    Outcome::Failed {
                        kind,
                        child: Some(4),
                        status,
                        message: "the server's words".into(),
                    },
                )],
            )
        };
        let decide = |f: StatusFile, running| decide(ME.pid, &baseline, Some(&f), running);
        assert!(decide(failed(FailureKind::ClosedChannel, None), true).is_none());
        // It exited by itself: a crash, with its status.
        let Some(Err(e)) = decide(
            failed(FailureKind::ClosedChannel, Some(ChildStatus::Exited(3))),
            true,
        ) else {
            panic!()
        };
        assert!(matches!(
            e,
            RestartError::Crashed {
                status: ChildStatus::Exited(3),
                child: Some(4),
                ..
            }
        ));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "the new process (pid 4) exited with code 3 before it was ready; pid 100 keeps serving"
        );
        // The server killed it for closing its channel.
        let killed = Some(ChildStatus::Signaled(
            rustix::process::Signal::KILL.as_raw(),
        ));
        assert!(matches!(
            decide(failed(FailureKind::ClosedChannel, killed), true),
            Some(Err(RestartError::Failed { .. }))
        ));
        let Some(Err(e)) = decide(failed(FailureKind::TimedOut, killed), true) else {
            panic!()
        };
        assert!(matches!(e, RestartError::NotReadyInTime { .. }));
        assert!(e.to_string().contains("not ready within"), "{e}");
        // The server is gone before it reaped the child: take what there is.
        assert!(matches!(
            decide(failed(FailureKind::Cancelled, None), false),
            Some(Err(RestartError::Cancelled { .. }))
        ));
    }

    #[test]
    fn exit_codes() {
        let io = || io::Error::other("x");
        assert_eq!(RestartError::Gone { pid: 1 }.exit_code(), 4);
        assert_eq!(
            RestartError::TimedOut {
                pid: 1,
                timeout: Duration::from_secs(1)
            }
            .exit_code(),
            4
        );
        assert_eq!(
            RestartError::NoSuchProcess {
                pid: 1,
                pid_file: "p".into()
            }
            .exit_code(),
            5
        );
        assert_eq!(
            RestartError::PidFile {
                path: "p".into(),
                error: io()
            }
            .exit_code(),
            5
        );
        let e: io::Error = RestartError::TimedOut {
            pid: 1,
            timeout: Duration::from_secs(1),
        }
        .into();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn restart_reports_a_missing_pid_file_and_a_stale_one() {
        let dir = temp_dir("command");
        let pid_file = dir.join("s.pid");
        let e = restart(&pid_file, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, RestartError::PidFile { .. }), "{e}");
        for garbage in ["garbage\n", "0\n", "-1\n", ""] {
            std::fs::write(&pid_file, garbage).unwrap();
            let e = restart(&pid_file, Duration::from_secs(1)).unwrap_err();
            assert!(e.to_string().contains("holds no pid"), "{e}");
        }
        // Far above any pid_max: nobody.
        std::fs::write(&pid_file, format!("{}\n", i32::MAX)).unwrap();
        let e = restart(&pid_file, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, RestartError::NoSuchProcess { .. }), "{e}");
        assert_eq!(e.exit_code(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
