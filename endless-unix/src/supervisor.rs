//! The supervisor mode: the first process stays, as PID 1 in a container, while
//! generations come and go.
//!
//! When PID 1 exits, the container ends with every process in it, and a restart by
//! re-execution makes the old generation exit. So when the server is PID 1 (or when asked:
//! [`Builder::supervise`](crate::adapter::Builder::supervise), or `ENDLESS_SUPERVISE=1`;
//! `ENDLESS_SUPERVISE=0` turns it off), [`Endless::start`](crate::adapter::Endless::start)
//! does not return in the first process. That process becomes a small supervisor:
//!
//! 1. it binds a datagram socket of its own in the abstract namespace (no path on disk),
//!    that only its descendants are heard on (the kernel tells the sender's pid,
//!    `SO_PASSCRED`), and starts the first generation, the same program with the same
//!    arguments and environment plus `ENDLESS_SUPERVISOR=@<socket name>`: its
//!    `Endless::start` returns as usual, and it serves;
//! 2. each generation sends it the notifications it would send systemd (`READY=1`,
//!    `MAINPID=`, `RELOADING=1`, `STOPPING=1`), and the supervisor follows which one serves
//!    ([`endless_core::supervisor`] decides everything);
//! 3. it forwards the signals of the signal map: a restart to the generation that serves, a
//!    stop to every generation; it reaps every process that ends up as its child (the
//!    generations, once their parent exited, and any orphan: it is the namespace's init, or
//!    a subreaper elsewhere);
//! 4. once it has no child left, it exits with the exit status of the generation that served
//!    last.
//!
//! It holds no listener and runs none of the application's code after `Endless::start`. A
//! restart is the usual handover between two of its descendants: the container never
//! notices. Under systemd (`NOTIFY_SOCKET` set), the supervisor is the service's main
//! process: it relays the generations' notifications without their `MAINPID=`, and the
//! generations do not talk to systemd themselves.
//!
//! Linux only (abstract sockets, `PR_SET_CHILD_SUBREAPER`); elsewhere, asking for it is
//! logged as an error and the process serves unsupervised.

#[cfg(target_os = "linux")]
#[cfg(target_os = "linux")]
use endless_core::ChildStatus;
#[cfg(target_os = "linux")]
use endless_core::supervisor::{Notification, Supervisor, Targets};
use std::io;
#[cfg(target_os = "linux")]
use std::io::IoSliceMut;
#[cfg(target_os = "linux")]
use std::mem::MaybeUninit;
#[cfg(target_os = "linux")]
use std::process::Command;

use crate::notify::{Notifier, NotifySocket};
#[cfg(target_os = "linux")]
use crate::signals::Signal;
use crate::signals::SignalMap;
use crate::spawn::Executable;
use crate::sys;

/// Forces the supervisor mode on (`1`) or off (`0`); unset, it is on for PID 1 only.
pub const SUPERVISE_VAR: &str = "ENDLESS_SUPERVISE";

/// Set by the supervisor for the generations: where they send their notifications
/// (`@<abstract socket name>`).
pub const SUPERVISOR_VAR: &str = "ENDLESS_SUPERVISOR";

/// Whether this process should become the supervisor: never in a generation (one that a
/// supervisor or a previous generation started); else as `setting` (the builder's) says,
/// else as [`SUPERVISE_VAR`] says, else when this process is PID 1.
pub(crate) fn wanted(setting: Option<bool>) -> bool {
    if std::env::var_os(SUPERVISOR_VAR).is_some()
        || std::env::var_os(endless_core::env::VERSION_VAR).is_some()
    {
        return false;
    }
    let wanted = setting.unwrap_or_else(|| match std::env::var_os(SUPERVISE_VAR) {
        Some(v) if v == "1" => true,
        Some(v) if v == "0" => false,
        Some(v) => {
            tracing::warn!(value = ?v, "{SUPERVISE_VAR} takes 1 or 0; ignored");
            sys::getpid() == 1
        }
        None => sys::getpid() == 1,
    });
    if wanted && !cfg!(target_os = "linux") {
        tracing::error!("the supervisor mode needs Linux; serving unsupervised");
        return false;
    }
    wanted
}

/// The notifier of a generation that a supervisor started, if this is one.
pub(crate) fn notifier() -> Option<Notifier> {
    let value = std::env::var_os(SUPERVISOR_VAR)?;
    let target = NotifySocket::parse(&value)
        .inspect_err(|e| tracing::warn!(error = %e, "{SUPERVISOR_VAR} is unusable"))
        .ok()?;
    Notifier::new(target.clone())
        .inspect_err(|e| {
            tracing::warn!(socket = %target, error = %e, "cannot notify the supervisor");
        })
        .ok()
}

/// Runs this process as the supervisor of the service `executable` serves, with the
/// signals of `map`, and exits the process with the service's exit status.
pub(crate) fn run(executable: &Executable, map: &SignalMap) -> ! {
    let span = tracing::info_span!("endless-supervisor", pid = sys::getpid());
    let code = span.in_scope(|| match supervise(executable, map) {
        Ok(code) => {
            tracing::info!(code, "the service stopped; the supervisor exits");
            code
        }
        Err(e) => {
            tracing::error!(error = %e, "the supervisor failed");
            1
        }
    });
    std::process::exit(code)
}

/// What wakes the supervisor.
#[cfg(target_os = "linux")]
enum Wake {
    Signal(i32),
    Notification { pid: u32, text: String },
}

#[cfg(target_os = "linux")]
fn supervise(executable: &Executable, map: &SignalMap) -> io::Result<i32> {
    use futures_lite::StreamExt;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let me = sys::getpid();
    if me != 1 {
        // Orphans of the generations (and the generations, once their parent exited) come
        // here, as they would to init.
        rustix::process::set_child_subreaper(rustix::process::Pid::from_raw(me as i32))?;
    }
    let name = format!(
        "endless-supervisor-{me}-{}",
        sys::monotonic_now()
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    rustix::net::sockopt::set_socket_passcred(&socket, true)?;
    // systemd, if it is our parent, hears from the supervisor only.
    let upstream = Notifier::from_env();

    socket.set_nonblocking(true)?;
    let mut wanted: Vec<async_signal::Signal> = map.signals().filter_map(to_async_signal).collect();
    wanted.push(async_signal::Signal::Child);
    // The handlers are installed now, before the first generation exists.
    let mut signals = async_signal::Signals::new(wanted)?;

    let mut command = Command::new(executable.path());
    command
        .args(executable.args())
        .current_dir(executable.cwd())
        .env_clear()
        .envs(
            executable
                .env()
                .iter()
                .filter(|(k, _)| k != crate::notify::NOTIFY_SOCKET && k != SUPERVISOR_VAR)
                .map(|(k, v)| (k, v)),
        )
        .env(SUPERVISOR_VAR, format!("@{name}"));
    let first = command.spawn()?;
    let mut supervisor = Supervisor::new();
    supervisor.spawned(first.id());
    tracing::info!(
        generation = first.id(),
        executable = %executable.path().display(),
        "supervising: started the first generation"
    );
    drop(first); // reaped below, with every other child

    // One thread, one order: every notification queued before a signal was caught is acted
    // on before the signal. A generation notifies before it writes the pid file,
    // so a restart signal sent as soon as the pid file names it goes to it.
    loop {
        let mut fds = [
            rustix::event::PollFd::new(&socket, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&signals, rustix::event::PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        // Signals first, then notifications; acted on in the other order.
        let mut caught = Vec::new();
        while let Some(Some(signal)) =
            futures_lite::future::block_on(futures_lite::future::poll_once(signals.next()))
        {
            caught.push(Wake::Signal(signal? as i32));
        }
        let mut woken = Vec::new();
        while let Some(received) = receive(&socket)? {
            if let Some((pid, text)) = received {
                woken.push(Wake::Notification { pid, text });
            }
        }
        for woken in woken.into_iter().chain(caught) {
            match woken {
                Wake::Signal(raw) if raw == rustix::process::Signal::CHILD.as_raw() => {
                    if let Some(code) = reap(&mut supervisor) {
                        return Ok(code);
                    }
                }
                Wake::Signal(raw) => {
                    let signal = Signal::from_raw(raw);
                    let request = map.get(signal);
                    if let Targets::Some(pids) = supervisor.signal(request) {
                        tracing::info!(%signal, ?request, to = ?pids, "forwarding");
                        for pid in pids {
                            // A generation reaped by its parent leaves a stale pid here; never
                            // signal what a reused pid names now, unless it is ours.
                            if !is_descendant(pid, me) {
                                supervisor.gone(pid);
                                continue;
                            }
                            match sys::signal_process(pid, raw) {
                                Ok(true) => {}
                                Ok(false) => supervisor.gone(pid),
                                Err(e) => tracing::warn!(pid, error = %e, "cannot forward"),
                            }
                        }
                    }
                    // Nobody to stop: the service is down already.
                    if let Some(code) = reap(&mut supervisor) {
                        return Ok(code);
                    }
                }
                Wake::Notification { pid, text } => {
                    if !is_descendant(pid, me) {
                        tracing::warn!(
                            pid,
                            "a notification from a process that is not ours; ignored"
                        );
                        continue;
                    }
                    let before = supervisor.current();
                    supervisor.notified(pid, &Notification::parse(&text));
                    if supervisor.current() != before {
                        tracing::info!(generation = ?supervisor.current(), "serving generation");
                    }
                    if let Some(upstream) = &upstream {
                        let relayed: Vec<&str> = text
                            .split('\n')
                            .filter(|l| !l.is_empty() && !l.starts_with("MAINPID="))
                            .collect();
                        if !relayed.is_empty() {
                            upstream.notify(&relayed.join("\n"));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn supervise(_executable: &Executable, _map: &SignalMap) -> io::Result<i32> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the supervisor mode needs Linux",
    ))
}

/// Reaps every child that has exited; the exit code once no child is left.
#[cfg(target_os = "linux")]
fn reap(supervisor: &mut Supervisor) -> Option<i32> {
    use rustix::process::{WaitOptions, wait};
    loop {
        match wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                let pid = pid.as_raw_nonzero().get() as u32;
                let status = match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => ChildStatus::Exited(code),
                    (None, Some(signal)) => ChildStatus::Signaled(signal),
                    _ => ChildStatus::Unknown,
                };
                let generation = supervisor.generations().any(|g| g == pid);
                supervisor.reaped(pid, status);
                if generation {
                    tracing::info!(pid, %status, "a generation ended");
                } else {
                    tracing::debug!(pid, %status, "reaped an orphan");
                }
            }
            Ok(None) => return None,
            Err(rustix::io::Errno::CHILD) => return Some(supervisor.exit_code()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                return None;
            }
        }
    }
}

/// The next queued notification (`None`: none queued), and the pid that sent it (`None`:
/// none attached, or not UTF-8).
#[cfg(target_os = "linux")]
#[allow(clippy::type_complexity)]
fn receive(socket: &std::os::unix::net::UnixDatagram) -> io::Result<Option<Option<(u32, String)>>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = loop {
        match rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::DONTWAIT) {
            Ok(msg) => break msg,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    let pid = control.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmCredentials(cred) => Some(cred.pid.as_raw_pid()),
        _ => None,
    });
    let (Some(pid), Ok(text)) = (pid, std::str::from_utf8(&buf[..msg.bytes])) else {
        return Ok(Some(None));
    };
    Ok(Some(
        u32::try_from(pid).ok().map(|pid| (pid, text.to_owned())),
    ))
}

/// Whether `pid` descends from `ancestor` (its chain of parents, from `/proc`).
#[cfg(target_os = "linux")]
fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut pid = pid;
    for _ in 0..4096 {
        if pid == ancestor {
            return true;
        }
        match parent_of(pid) {
            Some(parent) if parent != 0 && parent != pid => pid = parent,
            _ => return false,
        }
    }
    false
}

/// The parent of `pid`, from `/proc/<pid>/stat` (the field after the command's closing
/// parenthesis and the state).
#[cfg(target_os = "linux")]
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The signals a [`SignalMap`] can name that async-signal knows.
#[cfg(target_os = "linux")]
fn to_async_signal(signal: Signal) -> Option<async_signal::Signal> {
    let known = signal.to_async_signal();
    if known.is_none() {
        tracing::warn!(%signal, "the supervisor cannot forward this signal");
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_descends_from_its_parent_and_not_from_a_child() {
        let me = sys::getpid();
        assert!(is_descendant(me, me));
        assert!(is_descendant(me, sys::getppid()));
        assert_eq!(parent_of(me), Some(sys::getppid()));
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(is_descendant(child.id(), me));
        assert!(!is_descendant(me, child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(parent_of(u32::MAX), None);
    }
}
