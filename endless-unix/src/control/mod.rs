//! A restart that reports its own result: the command side ([`restart`]) and the control
//! socket that answers it.
//!
//! `kill -HUP` asks a server to restart and says nothing of how it went. A deploy script
//! wants to wait until the new binary serves, or to learn why it does not. [`restart`]
//! asks the server over its *control socket* and receives the outcome of exactly its own
//! request:
//!
//! - the new process is ready and the old one has stopped accepting: [`Restarted`], with
//!   the new pid;
//! - the new binary exited before it was ready ([`RestartError::Crashed`], with its exit
//!   status), was not ready within the server's upgrade timeout and was killed
//!   ([`RestartError::NotReadyInTime`]), or failed otherwise (it could not be started:
//!   too many open files, say); the old process keeps serving;
//! - the server refused the restart because one is already in progress
//!   ([`RestartError::Refused`]);
//! - no answer within the command's own timeout, or the process exited without one
//!   ([`RestartError::TimedOut`], [`RestartError::Gone`]);
//! - the pid file names no live process ([`RestartError::NoSuchProcess`]), or the server
//!   keeps no control socket ([`RestartError::Control`]).
//!
//! [`RestartError::exit_code`] sorts these into exit codes for a command line.
//!
//! # Until proven
//!
//! [`restart`] answers at the handover. The old generation stays the *fallback* of the new
//! one for a while after it (its drain, then its probation, `Config::probation`): a new
//! binary that dies soon after it took over (a panic on its first requests, say) gives the
//! service back to the old one, which serves again. [`restart_until_proven`] waits for
//! that too: `Ok` only once the old generation is no longer the fallback without having
//! fallen back (it exited after its probation, or the new one exited cleanly or handed
//! over onward), and [`RestartError::FellBack`] when the old one took the service back.
//! It takes longer: the drain and the probation.
//!
//! # The control socket
//!
//! A server that keeps a pid file (`Builder::pid_file`) also keeps a control socket beside
//! it, at [`socket_path`] (`<pid file>.control`): a Unix stream socket, mode `0600`,
//! created under a temporary name and renamed into place (a file that is not a socket is
//! never replaced, and a socket another live server answers on is never taken). Its
//! directory must not be writable by other users unless it is sticky (`/tmp`): otherwise
//! the server logs an error and keeps no control socket. Each connection's peer must be
//! the server's own user or root (`SO_PEERCRED`, on Linux).
//!
//! Each generation inherits the socket like any listener (the inventory entry
//! `endless.control`): the old one stops accepting on it when it hands over, and the new
//! one answers what is queued. So a command that asks just after a handover is answered by
//! the new generation; one that reached the old generation after it handed over is told
//! to ask the new one (`moved`), and [`restart`] does. The request goes to the lifecycle
//! like a `SIGHUP`, and its answer is projected from the lifecycle's events
//! ([`endless_core::control`], which also defines the lines). `kill -HUP` works as before.
//!
//! With systemd, `ExecReload=` running the command (`myserver restart --pid-file …`)
//! makes `systemctl reload` fail when the restart fails.
//!
//! # Examples
//!
//! A `restart` subcommand (it asks a real process, hence `no_run`):
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
//!
//! The same, until the new generation is proven:
//!
//! ```no_run
//! use std::path::Path;
//! use endless_unix::control::{self, RestartError};
//!
//! let pid_file = Path::new("/run/hello/hello.pid");
//! match control::restart_until_proven(pid_file, control::DEFAULT_PROVEN_TIMEOUT) {
//!     Ok(restarted) => println!("{}", restarted.new),
//!     Err(e @ RestartError::FellBack { .. }) => {
//!         eprintln!("the new binary died after it took over; the old one serves: {e}");
//!         std::process::exit(e.exit_code()); // 6
//!     }
//!     Err(e) => {
//!         eprintln!("restart failed: {e}");
//!         std::process::exit(e.exit_code());
//!     }
//! }
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use endless_core::ChildStatus;
use endless_core::control::{self as wire, Answer, FailureKind, RefusalKind, RequestKind};

use crate::sys;

mod server;

pub(crate) use server::{ControlServer, INVENTORY_NAME, TAKE_TIMEOUT, answer, bind, bound_for};

/// A command timeout comfortably above the lifecycle's default upgrade timeout (60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// A timeout for [`restart_until_proven`] comfortably above the lifecycle's default upgrade
/// timeout, drain timeout and probation together (60 s + 60 s + 5 s).
pub const DEFAULT_PROVEN_TIMEOUT: Duration = Duration::from_secs(180);

/// How many times the command follows `moved` answers (handovers during one request).
const MAX_MOVES: usize = 8;

/// Where the control socket of the pid file `pid_file` is: `<pid file>.control`.
///
/// ```
/// use std::path::Path;
/// use endless_unix::control::socket_path;
///
/// assert_eq!(socket_path(Path::new("/run/app.pid")), Path::new("/run/app.pid.control"));
/// ```
pub fn socket_path(pid_file: &Path) -> PathBuf {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".control");
    PathBuf::from(path)
}

// ---- the command ---------------------------------------------------------------------------

/// A restart that succeeded: the new process is ready and serves; the old one has stopped
/// accepting and drains ([`restart`]), or has exited without having to take the service
/// back ([`restart_until_proven`]).
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
/// `pid` is the process that answered (the one the pid file named, or the generation it
/// had handed over to), and `child` the new process when one was spawned.
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
    /// The control socket cannot be reached (the server keeps none: it has no pid file, an
    /// older version, or its directory is writable by others), or it answered something
    /// that is not an answer.
    Control {
        /// The control socket.
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
    /// Only from [`restart_until_proven`]: the new process took over, then ended abnormally
    /// (a signal, a non-zero exit) while the old one was still its fallback, and the old
    /// one took the service back. The old process serves again, and the pid file names it.
    FellBack {
        /// The process that took the service back and serves again.
        old: u32,
        /// The new process, which ended.
        new: u32,
        /// How it ended.
        status: ChildStatus,
        /// What the server said.
        message: String,
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
    /// | 5 | no server to ask: no live process, or no control socket to ask it on (or the server is too old for a request until proven) | [`PidFile`](Self::PidFile), [`NoSuchProcess`](Self::NoSuchProcess), [`Control`](Self::Control) |
    /// | 6 | the new process took over, then died: the old process took the service back and serves again ([`restart_until_proven`] only) | [`FellBack`](Self::FellBack) |
    ///
    /// (2 is left to usage errors, by convention.) 6 is apart from 1: the new binary *was*
    /// ready, so the old one may have drained its connections, and it was the deploy that
    /// failed after the handover, not the start.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Crashed { .. }
            | Self::NotReadyInTime { .. }
            | Self::Failed { .. }
            | Self::Cancelled { .. } => 1,
            Self::Refused { .. } => 3,
            Self::TimedOut { .. } | Self::Gone { .. } => 4,
            Self::PidFile { .. } | Self::NoSuchProcess { .. } | Self::Control { .. } => 5,
            Self::FellBack { .. } => 6,
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
            Self::Control { path, error } => write!(
                f,
                "cannot ask the server on its control socket {}: {error}",
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
            Self::FellBack {
                old, new, status, ..
            } => write!(
                f,
                "the new process (pid {new}) {status} after it took over; pid {old} took the \
                 service back and serves again"
            ),
        }
    }
}

impl std::error::Error for RestartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::PidFile { error, .. } | Self::Control { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<RestartError> for io::Error {
    fn from(e: RestartError) -> Self {
        let kind = match &e {
            RestartError::PidFile { error, .. } | RestartError::Control { error, .. } => {
                error.kind()
            }
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

/// Asks the server whose pid file is `pid_file` to restart, over its control socket, and
/// waits at most `timeout` for the outcome of this request: `Ok` once the new process is
/// ready, or why not.
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
    ask(pid_file, timeout, RequestKind::Restart)
}

/// [`restart`], answered only once the new generation is proven: `Ok` once the old process
/// is no longer its fallback without having had to take the service back (its probation
/// ended and it exited, or the new process exited cleanly or handed over onward), and
/// [`RestartError::FellBack`] if the new process died after it took over and the old one
/// serves again. Failures before the handover and refusals are those of [`restart`].
///
/// It waits for the old process's drain and probation too: give it a `timeout` above the
/// server's upgrade timeout, drain timeout and probation together
/// ([`DEFAULT_PROVEN_TIMEOUT`] suits the defaults). A server of a version that does not
/// know this request refuses it as malformed: [`RestartError::Control`] (with
/// [`io::ErrorKind::Unsupported`]).
///
/// # Examples
///
/// ```no_run
/// use std::path::Path;
/// use endless_unix::control::{self, RestartError};
///
/// match control::restart_until_proven(Path::new("/run/app.pid"), control::DEFAULT_PROVEN_TIMEOUT) {
///     Ok(r) => println!("pid {} serves, and pid {} is gone", r.new, r.old),
///     Err(RestartError::FellBack { old, new, status, .. }) => {
///         eprintln!("pid {new} {status} after it took over: pid {old} serves again");
///     }
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
pub fn restart_until_proven(pid_file: &Path, timeout: Duration) -> Result<Restarted, RestartError> {
    ask(pid_file, timeout, RequestKind::UntilProven)
}

/// Asks for a restart with the request `kind`, following `moved` answers.
fn ask(pid_file: &Path, timeout: Duration, kind: RequestKind) -> Result<Restarted, RestartError> {
    let deadline = Instant::now().checked_add(timeout);
    let path = socket_path(pid_file);
    let mut pid = read_pid(pid_file)?;
    for _ in 0..MAX_MOVES {
        if !is_running(pid) {
            // Read just before a handover, the pid file named a process that has exited
            // since: the generation that took over names itself there now.
            if let Some(current) = renamed(pid_file, pid) {
                pid = current;
                continue;
            }
            return Err(RestartError::NoSuchProcess {
                pid,
                pid_file: pid_file.to_owned(),
            });
        }
        let control = |error| RestartError::Control {
            path: path.clone(),
            error,
        };
        let mut stream = match UnixStream::connect(&path) {
            Ok(stream) => stream,
            Err(_) if !is_running(pid) => {
                if let Some(current) = renamed(pid_file, pid) {
                    pid = current;
                    continue;
                }
                return Err(RestartError::NoSuchProcess {
                    pid,
                    pid_file: pid_file.to_owned(),
                });
            }
            Err(e) => return Err(control(e)),
        };
        tracing::debug!(pid, path = %path.display(), ?kind, "restart requested; waiting for the answer");
        let line = match exchange(&mut stream, kind.line(), deadline) {
            Ok(line) => line,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RestartError::TimedOut { pid, timeout });
            }
            // The connection ended without an answer: the process went away (or was
            // stopped) while the request was under way.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(RestartError::Gone { pid });
            }
            Err(e) => return Err(control(e)),
        };
        let (answered, answer) = wire::decode_answer(&line)
            .map_err(|e| control(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        return match answer {
            Answer::Ready { new } => Ok(Restarted { old: answered, new }),
            Answer::Moved { to } => {
                tracing::debug!(
                    old = answered,
                    new = to,
                    "handed over already; asking the new process"
                );
                pid = to;
                continue;
            }
            // A server that does not know this request (an older version) takes it for a
            // malformed line: nothing was restarted.
            Answer::Refused {
                reason: RefusalKind::Other,
                message,
            } if kind != RequestKind::Restart && message.starts_with(MALFORMED) => {
                Err(control(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "pid {answered} does not know restarts until proven (an older version): \
                         {message}"
                    ),
                )))
            }
            Answer::Refused { message, .. } => Err(RestartError::Refused {
                pid: answered,
                reason: message,
            }),
            Answer::Failed {
                kind,
                child,
                status,
                message,
            } => Err(failure(answered, kind, child, status, &message)),
            Answer::FellBack {
                new,
                status,
                message,
            } => Err(RestartError::FellBack {
                old: answered,
                new,
                status,
                message,
            }),
            _ => Err(control(io::Error::new(
                io::ErrorKind::InvalidData,
                "an answer this version does not know",
            ))),
        };
    }
    Err(RestartError::Gone { pid })
}

/// How a server refuses a request line it cannot decode (`ControlError::Malformed`).
const MALFORMED: &str = "malformed control line";

/// Sends the request on `stream` and reads the answer line, both before `deadline`.
fn exchange(
    stream: &mut UnixStream,
    request: &[u8],
    deadline: Option<Instant>,
) -> io::Result<Vec<u8>> {
    let left = || match deadline {
        Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(io::Error::from(io::ErrorKind::TimedOut)),
            left => Ok(Some(left)),
        },
        None => Ok(None),
    };
    stream.set_write_timeout(left()?)?;
    stream.write_all(request)?;
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        stream.set_read_timeout(left()?)?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&buf[..n]);
        if line.contains(&b'\n') || line.len() > wire::MAX_LINE {
            return Ok(line);
        }
    }
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

/// The pid that the pid file names now, if it is another than `pid` (which has exited).
fn renamed(pid_file: &Path, pid: u32) -> Option<u32> {
    read_pid(pid_file).ok().filter(|&current| current != pid)
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
        _ => failed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("endless-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
        let fell_back = RestartError::FellBack {
            old: 10,
            new: 11,
            status: ChildStatus::Exited(1),
            message: "m".into(),
        };
        assert_eq!(fell_back.exit_code(), 6);
        assert_eq!(
            fell_back.to_string(),
            "the new process (pid 11) exited with code 1 after it took over; pid 10 took the \
             service back and serves again"
        );
    }

    /// A server of the version before requests until proven: it knows only [`wire::REQUEST`]
    /// and refuses any other line as malformed.
    fn older_server(path: &Path, connections: usize) -> std::thread::JoinHandle<()> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().unwrap();
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read(&mut byte).unwrap() == 1 {
                    line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                let answer = if line == wire::REQUEST {
                    Answer::Ready { new: 77 }
                } else {
                    let words = String::from_utf8_lossy(&line[wire::PREFIX.len()..line.len() - 1]);
                    Answer::Refused {
                        reason: RefusalKind::Other,
                        message: wire::ControlError::Malformed(words.into_owned()).to_string(),
                    }
                };
                let pid = std::process::id();
                stream
                    .write_all(&wire::encode_answer(pid, &answer))
                    .unwrap();
            }
        })
    }

    #[test]
    fn an_older_server_cannot_answer_until_proven_and_says_so() {
        let dir = temp_dir("older");
        let pid_file = dir.join("s.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let server = older_server(&socket_path(&pid_file), 2);
        let e = restart_until_proven(&pid_file, Duration::from_secs(30)).unwrap_err();
        assert!(
            matches!(&e, RestartError::Control { error, .. } if error.kind() == io::ErrorKind::Unsupported),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), 5);
        assert!(
            e.to_string()
                .contains("does not know restarts until proven (an older version)"),
            "{e}"
        );
        // The plain request is the same line as ever.
        let restarted = restart(&pid_file, Duration::from_secs(30)).unwrap();
        assert_eq!(restarted.new, 77);
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
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
        // A pid file read just before a handover is read again once its pid is gone.
        assert_eq!(renamed(&pid_file, i32::MAX as u32), None);
        std::fs::write(&pid_file, "4250\n").unwrap();
        assert_eq!(renamed(&pid_file, 4242), Some(4250));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
