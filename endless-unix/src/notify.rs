//! Telling systemd what the service does: the `sd_notify` protocol, for `Type=notify` and
//! `Type=notify-reload` units.
//!
//! A service manager that wants to hear from the service sets `NOTIFY_SOCKET` to the
//! address of a Unix datagram socket: a path (`/run/systemd/notify`) or, when it starts
//! with `@`, a name in Linux' abstract namespace. Each message is one datagram of
//! `KEY=VALUE` lines. The driver reads the variable once, when [`Endless::start`] runs, and
//! never changes the environment (no `unset`: that is unsound in a threaded process); the
//! next generation inherits the variable as it is. Without `NOTIFY_SOCKET` nothing is sent.
//! A message that cannot be sent is logged (`warn`) and the process goes on; a send waits
//! at most [`SEND_TIMEOUT`] for room in the manager's queue.
//!
//! # What is sent, and when
//!
//! The lifecycle announces each change ([`Status`]); the driver turns
//! it into a message:
//!
//! | moment | from | message |
//! |---|---|---|
//! | first start, ready | the process | `READY=1` |
//! | a restart begins (`SIGHUP`) | the serving process | `RELOADING=1`, `MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>` |
//! | the new generation is ready | the new process | `MAINPID=<its pid>`, `READY=1` |
//! | the restart failed (crash, timeout) or a staged upgrade was rolled back | the old process, serving on | `MAINPID=<its pid>`, `READY=1` (the main process again: a staged generation that was ready had claimed it) |
//! | the new generation died after it was ready, and the old one, still its fallback, took the service back | the old process | `MAINPID=<its pid>`, `READY=1` |
//! | a graceful stop begins | the process that stops the service | `STOPPING=1`, then `EXTEND_TIMEOUT_USEC=…` |
//!
//! Every message but the extension also carries a `STATUS=` line for `systemctl status`. An old
//! generation that handed over sends nothing while it drains and exits, unless it takes the
//! service back: it no longer is the service.
//!
//! systemd itself reacts to the death of the main process: with the default settings a
//! main process killed by a signal or exiting non-zero fails the unit, which then stops the
//! rest of its control group, the fallback included (and `Restart=` may start the service
//! afresh). The fallback's `MAINPID=` races that reaction. Under systemd, the fallback
//! keeps the port open only where the unit tolerates the successor's end (for example
//! `SuccessExitStatus=` naming the crash); a supervisor process that stays the main
//! process while generations come and go removes the race. The new generation makes itself the main process (`MAINPID=`) before it
//! tells its parent it is ready, so systemd never sees its main process exit: the unit
//! needs `NotifyAccess=all`, since the message comes from a process that is not (yet) the
//! main one.
//!
//! Which ready claims the main pid, and whether there was one before, is the lifecycle's
//! decision ([`Status::Ready`]); so is refusing staged upgrades under a service manager
//! ([`Config::service_manager`](endless_core::Config::service_manager)).
//!
//! # Stop timeout
//!
//! systemd kills a service that takes longer than `TimeoutStopSec=` to stop, while endless'
//! drain may be allowed longer (`Config::drain_timeout`, possibly unbounded). So the
//! lifecycle asks, right after `STOPPING=1` ([`Action::ExtendStopTimeout`]):
//!
//! - with a drain deadline: one `EXTEND_TIMEOUT_USEC=` covering the drain timeout plus
//!   [`STOP_MARGIN`] (for the forced close and the exit that follow it);
//! - without one: `EXTEND_TIMEOUT_USEC=` of [`EXTEND_LEASE`], renewed every
//!   [`EXTEND_PERIOD`] (a timer of the lifecycle) until the lifecycle ends. A process whose
//!   driver is stuck stops renewing, and systemd's timeout catches it one lease later.
//!
//! An extension never shortens `TimeoutStopSec=`: systemd only applies it once the stop has
//! run longer than that.
//!
//! The unit file that goes with it (`KillMode=mixed`, `ExecReload=` or
//! `Type=notify-reload`) is in the README, section "Operations: systemd".
//!
//! [`Endless::start`]: crate::Endless::start
//! [`Action::ExtendStopTimeout`]: endless_core::Action::ExtendStopTimeout

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

use endless_core::Status;
pub use endless_core::{EXTEND_LEASE, EXTEND_PERIOD, STOP_MARGIN};

/// The environment variable that names the service manager's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// How long a send may wait for room in the service manager's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the service manager listens, as `NOTIFY_SOCKET` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifySocket {
    /// A socket file, by its absolute path.
    Path(PathBuf),
    /// A socket in Linux' abstract namespace: the name after the `@`.
    Abstract(Vec<u8>),
}

/// Why a `NOTIFY_SOCKET` value is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifySocketError {
    /// The variable is set but empty.
    Empty,
    /// Neither an absolute path nor `@name` (systemd's `vsock:` addresses, for virtual
    /// machines, are not supported).
    Unsupported(OsString),
}

impl fmt::Display for NotifySocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "{NOTIFY_SOCKET} is empty"),
            Self::Unsupported(value) => write!(
                f,
                "{NOTIFY_SOCKET}={value:?} is neither an absolute path nor an abstract socket (@name)"
            ),
        }
    }
}

impl std::error::Error for NotifySocketError {}

impl From<NotifySocketError> for io::Error {
    fn from(e: NotifySocketError) -> Self {
        Self::new(io::ErrorKind::InvalidInput, e)
    }
}

impl NotifySocket {
    /// Parses a `NOTIFY_SOCKET` value: `/absolute/path` or `@abstract-name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use endless_unix::notify::NotifySocket;
    /// use std::ffi::OsStr;
    ///
    /// assert_eq!(
    ///     NotifySocket::parse(OsStr::new("/run/systemd/notify")),
    ///     Ok(NotifySocket::Path("/run/systemd/notify".into()))
    /// );
    /// assert_eq!(
    ///     NotifySocket::parse(OsStr::new("@notify")),
    ///     Ok(NotifySocket::Abstract(b"notify".to_vec()))
    /// );
    /// assert!(NotifySocket::parse(OsStr::new("relative/path")).is_err());
    /// ```
    pub fn parse(value: &OsStr) -> Result<Self, NotifySocketError> {
        match value.as_bytes() {
            [] => Err(NotifySocketError::Empty),
            [b'/', ..] => Ok(Self::Path(PathBuf::from(value))),
            [b'@', name @ ..] if !name.is_empty() => Ok(Self::Abstract(name.to_vec())),
            _ => Err(NotifySocketError::Unsupported(value.to_owned())),
        }
    }

    /// The socket address to send to.
    fn address(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Path(path) => SocketAddr::from_pathname(path),
            #[cfg(target_os = "linux")]
            Self::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            #[cfg(not(target_os = "linux"))]
            Self::Abstract(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract Unix sockets exist only on Linux",
            )),
        }
    }
}

impl fmt::Display for NotifySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => path.display().fmt(f),
            Self::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// A sender of notifications to the service manager's socket.
///
/// One unbound datagram socket (close-on-exec, so no child inherits it), created once.
///
/// # Examples
///
/// ```
/// use std::os::unix::net::UnixDatagram;
/// use endless_unix::notify::{Notifier, NotifySocket};
///
/// # let dir = std::env::temp_dir().join(format!("endless-doc-notifier-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let path = dir.join("notify.sock");
/// let service_manager = UnixDatagram::bind(&path)?;
///
/// let notifier = Notifier::new(NotifySocket::Path(path))?;
/// notifier.send("STATUS=warming up")?;
/// let mut message = [0; 64];
/// let len = service_manager.recv(&mut message)?;
/// assert_eq!(&message[..len], b"STATUS=warming up");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    target: NotifySocket,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, or `None` when it is unset or empty, or
    /// unusable (then logged as a warning). Reads the environment; never changes it.
    pub fn from_env() -> Option<Self> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        let target = match NotifySocket::parse(&value) {
            Ok(target) => target,
            Err(NotifySocketError::Empty) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "not notifying the service manager");
                return None;
            }
        };
        match Self::new(target.clone()) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                tracing::warn!(socket = %target, error = %e, "not notifying the service manager");
                None
            }
        }
    }

    /// A notifier that sends to `target`.
    pub fn new(target: NotifySocket) -> io::Result<Self> {
        let address = target.address()?;
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Self {
            socket,
            address,
            target,
        })
    }

    /// Where it sends.
    pub fn target(&self) -> &NotifySocket {
        &self.target
    }

    /// Sends `message` (`KEY=VALUE` lines, separated by `\n`) in one datagram.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let sent = self
            .socket
            .send_to_addr(message.as_bytes(), &self.address)?;
        if sent == message.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was truncated",
            ))
        }
    }

    /// Sends `message`, logging the outcome; a failure is not fatal.
    pub(crate) fn notify(&self, message: &str) {
        match self.send(message) {
            Ok(()) => tracing::debug!(
                socket = %self.target,
                notification = ?message,
                "notified the service manager"
            ),
            Err(e) => tracing::warn!(
                socket = %self.target,
                notification = ?message,
                error = %e,
                "cannot notify the service manager"
            ),
        }
    }

    /// Tells the service manager what the lifecycle announced (see the table above); this
    /// process's pid is the main pid when [`Status::Ready`] claims it.
    pub(crate) fn announce(&self, status: Status) {
        match status {
            Status::Ready { main_pid, again } => {
                self.notify(&ready(main_pid.then(std::process::id), again));
            }
            Status::Reloading => {
                let now = crate::sys::monotonic_now()
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC"))
                    .ok();
                self.notify(&reloading(now));
            }
            Status::Stopping => self.notify(STOPPING),
            other => tracing::debug!(status = ?other, "nothing to tell the service manager"),
        }
    }

    /// Extends the service manager's stop timeout by `by` from now.
    pub(crate) fn extend_stop(&self, by: Duration) {
        self.notify(&extend_timeout(by));
    }
}

// ---- messages ----------------------------------------------------------------------------

const STOPPING: &str = "STOPPING=1\nSTATUS=Stopping: draining connections";

fn ready(main_pid: Option<u32>, again: bool) -> String {
    let mut message = String::new();
    if let Some(pid) = main_pid {
        message.push_str(&format!("MAINPID={pid}\n"));
    }
    message.push_str("READY=1\nSTATUS=");
    message.push_str(if again {
        "Serving; the last upgrade failed, was rolled back or died after it was ready (see the log)"
    } else {
        "Serving"
    });
    message
}

fn reloading(monotonic: Option<Duration>) -> String {
    let mut message = String::from("RELOADING=1\n");
    if let Some(now) = monotonic {
        message.push_str(&format!("MONOTONIC_USEC={}\n", now.as_micros()));
    }
    message.push_str("STATUS=Restarting: starting the new generation");
    message
}

fn extend_timeout(by: Duration) -> String {
    format!("EXTEND_TIMEOUT_USEC={}", by.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_paths_and_abstract_names() {
        let parse = |s: &str| NotifySocket::parse(OsStr::new(s));
        assert_eq!(
            parse("/run/systemd/notify"),
            Ok(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse("@/org/freedesktop/systemd1/notify/123"),
            Ok(NotifySocket::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            ))
        );
        assert_eq!(parse(""), Err(NotifySocketError::Empty));
        for bad in ["@", "run/notify", "./notify", "vsock:2:1234", " /x"] {
            assert_eq!(
                parse(bad),
                Err(NotifySocketError::Unsupported(bad.into())),
                "{bad}"
            );
        }
        // Not UTF-8: still a path.
        let raw = OsStr::from_bytes(b"/tmp/\xff");
        assert_eq!(
            NotifySocket::parse(raw),
            Ok(NotifySocket::Path(PathBuf::from(raw)))
        );
        assert!(
            NotifySocketError::Unsupported("x".into())
                .to_string()
                .contains("NOTIFY_SOCKET=\"x\"")
        );
    }

    #[test]
    fn a_path_too_long_for_sun_path_is_refused() {
        let long = format!("/{}", "x".repeat(200));
        assert!(Notifier::new(NotifySocket::Path(long.into())).is_err());
    }

    #[test]
    fn messages() {
        assert_eq!(ready(None, false), "READY=1\nSTATUS=Serving");
        assert_eq!(
            ready(Some(42), false),
            "MAINPID=42\nREADY=1\nSTATUS=Serving"
        );
        assert_eq!(
            ready(None, true),
            "READY=1\nSTATUS=Serving; the last upgrade failed, was rolled back or died after it was ready (see the log)"
        );
        assert_eq!(
            reloading(Some(Duration::new(12, 345_678_999))),
            "RELOADING=1\nMONOTONIC_USEC=12345678\nSTATUS=Restarting: starting the new generation"
        );
        assert_eq!(
            reloading(None),
            "RELOADING=1\nSTATUS=Restarting: starting the new generation"
        );
        assert_eq!(
            extend_timeout(Duration::from_millis(1500)),
            "EXTEND_TIMEOUT_USEC=1500000"
        );
        assert!(STOPPING.starts_with("STOPPING=1\n"));
    }

    #[test]
    fn a_lost_renewal_is_tolerated() {
        assert!(EXTEND_PERIOD * 2 < EXTEND_LEASE);
    }

    #[test]
    fn sends_one_datagram_per_message() {
        let dir = std::env::temp_dir().join(format!("endless-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(NotifySocket::Path(path.clone())).unwrap();
        assert_eq!(notifier.target(), &NotifySocket::Path(path));
        notifier.notify(&ready(Some(7), false));
        notifier.announce(Status::Reloading);
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=7\nREADY=1\nSTATUS=Serving");
        let n = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let usec: u128 = text
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec <= crate::sys::monotonic_now().unwrap().as_micros());
        drop(receiver);
        // Nobody listens any more: an error, not a panic.
        assert!(notifier.send("READY=1").is_err());
        notifier.announce(Status::Ready {
            main_pid: false,
            again: true,
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("endless-notify-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let target = NotifySocket::parse(OsStr::new(&format!("@{name}"))).unwrap();
        assert_eq!(target.to_string(), format!("@{name}"));
        let notifier = Notifier::new(target).unwrap();
        notifier.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
