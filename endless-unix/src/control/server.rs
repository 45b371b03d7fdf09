//! The server side of the control socket: binding it safely, and answering each request
//! with the outcome the lifecycle projects for it.
//!
//! A small thread accepts (it waits in `poll` on the socket and on a stop pipe, so the
//! driver never blocks and needs no runtime support); each connection gets a short-lived
//! thread that checks the peer and reads the request (a slow peer holds up nobody), then
//! hands the connection to the driver. The driver writes the answer line itself, when the
//! lifecycle's outputs complete it, before it acts on what follows: a process that hands
//! over and exits at once has written its answer first. Before it exits, the driver also
//! waits (at most [`TAKE_TIMEOUT`], and only while one is under way) for the requests the
//! accept loop took to reach it, and answers them (`moved` after a handover): a command
//! whose connection was accepted just before the handover is never left without an answer
//! by a process that drained at once and exited.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_channel::Sender;
use endless_core::control::{self as wire, Answer, RefusalKind};
use rustix::event::{PollFd, PollFlags};

use crate::driver::Message;
use crate::sys;

/// The inventory name under which each generation passes the control socket on.
pub(crate) const INVENTORY_NAME: &str = "endless.control";

/// How long a peer may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long writing an answer may take (a line into an empty socket buffer: no time).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest a request accepted on the control socket takes to reach the driver (or to
/// be answered without it): reading it, and writing a refusal.
pub(crate) const TAKE_TIMEOUT: Duration = READ_TIMEOUT.saturating_add(WRITE_TIMEOUT);

/// How long the accept loop waits before it tries again after an accept error (no free
/// fd): the connection waits in the kernel's queue meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A control socket at `path`, mode `0600`: bound under a temporary name in the same
/// directory and renamed into place. Refuses a directory that other users may write
/// (unless it is sticky), a path that holds anything but a socket, and a socket another
/// live server answers on.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir)?;
    let mode = meta.mode();
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refused(format!(
            "{} belongs to uid {}, not to this user or root",
            dir.display(),
            meta.uid()
        )));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(refused(format!(
            "{} is writable by other users (mode {:o}) and not sticky",
            dir.display(),
            mode & 0o7777
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(existing) if !existing.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket: left alone", path.display()),
            ));
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another server answers on {}", path.display()),
            ));
        }
        _ => {}
    }
    let name = path
        .file_name()
        .ok_or_else(|| refused(format!("{} names no file", path.display())))?;
    let mut temporary = name.to_owned();
    temporary.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let temporary = dir.join(temporary);
    // `bind` creates the file or fails (it never follows a planted symlink).
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(listener)
}

/// Whether a control socket bound at `bound` (its name at `bind`, as `getsockname` tells)
/// was bound for `path` by [`bind`]: under one of its temporary names, before the rename.
pub(crate) fn bound_for(bound: Option<&Path>, path: &Path) -> bool {
    let (Some(bound), Some(name)) = (bound, path.file_name()) else {
        return false;
    };
    if bound == path {
        return true;
    }
    let temporary = bound.file_name().and_then(|n| n.to_str()).and_then(|n| {
        n.strip_prefix(name.to_str()?)?
            .strip_prefix('.')?
            .strip_suffix(".tmp")
    });
    bound.parent() == path.parent() && temporary.is_some()
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

/// The accept loop of the control socket, while this process answers on it.
#[derive(Debug)]
pub(crate) struct ControlServer {
    path: PathBuf,
    /// The socket file's identity, to remove only our own on a stop.
    file: Option<(u64, u64)>,
    /// Dropping it ends the accept loop.
    stop: Option<OwnedFd>,
    /// What the accept loop needs, to start it again after a fallback.
    listener: Arc<UnixListener>,
    requests: Sender<Message>,
    /// The accept loops started (one, and one more after each fallback), to know when
    /// none accepts any more.
    loops: Vec<JoinHandle<()>>,
    /// The connections accepted whose request has not reached the driver yet.
    in_flight: Arc<InFlight>,
}

/// A count of the requests under way between the accept loop and the driver.
#[derive(Debug, Default)]
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    /// One more, until the guard is dropped.
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        InFlightGuard(Arc::clone(self))
    }
}

/// One request under way (see [`InFlight`]).
#[derive(Debug)]
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl ControlServer {
    /// Answers on `listener` (the socket at `path`) from now on, handing each request to
    /// the driver through `requests`.
    pub(crate) fn start(
        listener: UnixListener,
        path: PathBuf,
        requests: Sender<Message>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let file = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        let mut server = Self {
            path,
            file,
            stop: None,
            listener: Arc::new(listener),
            requests,
            loops: Vec::new(),
            in_flight: Arc::default(),
        };
        server.resume_accepting()?;
        Ok(server)
    }

    /// Answers on the socket (again, after [`stop_accepting`](Self::stop_accepting): this
    /// process took the service back).
    pub(crate) fn resume_accepting(&mut self) -> io::Result<()> {
        if self.stop.is_some() {
            return Ok(());
        }
        let (stop_read, stop_write) = io::pipe()?;
        let (listener, requests) = (Arc::clone(&self.listener), self.requests.clone());
        let in_flight = Arc::clone(&self.in_flight);
        let span = tracing::Span::current();
        let accepting = std::thread::Builder::new()
            .name("endless-control".into())
            .spawn(move || {
                span.in_scope(|| {
                    accept_loop(&listener, &OwnedFd::from(stop_read), &requests, &in_flight);
                });
            })?;
        self.loops.retain(|l| !l.is_finished());
        self.loops.push(accepting);
        self.stop = Some(OwnedFd::from(stop_write));
        Ok(())
    }

    /// Stops accepting: what is queued is left to the next generation, which holds the same
    /// socket. Requests already accepted are still answered.
    pub(crate) fn stop_accepting(&mut self) {
        self.stop.take();
    }

    /// Stops accepting, and waits (at most `timeout`) until every request accepted so far
    /// has reached the driver (or was answered without it): before the process exits, so
    /// that the driver answers them instead of dropping their connections. A connection
    /// accepted just before the handover whose request was still being read would
    /// otherwise end without an answer when this process exits right after its drain.
    pub(crate) fn settle(&mut self, timeout: Duration) {
        self.stop_accepting();
        // Each loop ends at once once stopped; after it, no connection is accepted here.
        for accepting in self.loops.drain(..) {
            let _ = accepting.join();
        }
        let count = self
            .in_flight
            .count
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (count, _) = self
            .in_flight
            .idle
            .wait_timeout_while(count, timeout, |count| *count > 0)
            .unwrap_or_else(PoisonError::into_inner);
        if *count > 0 {
            tracing::warn!(
                requests = *count,
                "restart requests still being read at the exit are left unanswered"
            );
        }
    }

    /// The service stops: the socket file goes, if it is still ours.
    pub(crate) fn remove_file(&self) {
        let ours = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some()
            && ours == self.file
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    stop: &OwnedFd,
    requests: &Sender<Message>,
    in_flight: &Arc<InFlight>,
) {
    let mut failing = false;
    loop {
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "the control socket's accept loop failed");
                return;
            }
        }
        // The write end was dropped (or written): stop accepting.
        if !fds[1].revents().is_empty() {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                failing = false;
                let requests = requests.clone();
                let span = tracing::Span::current();
                // Counted until the request reached the driver (or was answered here).
                let under_way = in_flight.enter();
                let spawned = std::thread::Builder::new()
                    .name("endless-control-request".into())
                    .spawn(move || {
                        span.in_scope(|| take_request(stream, &requests));
                        drop(under_way);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot answer a restart request");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // No free fd, say: the connection waits in the queue; try again shortly.
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot accept on the control socket; retrying");
                }
                failing = true;
                let mut stopped = [PollFd::new(stop, PollFlags::IN)];
                let timeout = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: ACCEPT_BACKOFF.as_nanos() as _,
                };
                let _ = rustix::event::poll(&mut stopped, Some(&timeout));
                if !stopped[0].revents().is_empty() {
                    return;
                }
            }
        }
    }
}

/// One connection: check the peer, read the request, hand it to the driver.
fn take_request(mut stream: UnixStream, requests: &Sender<Message>) {
    let reply = |stream: &mut UnixStream, answer: &Answer| answer_on(stream, answer);
    let prepared = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
    if let Err(e) = prepared {
        tracing::debug!(error = %e, "cannot set up a control connection");
        return;
    }
    if let Err(why) = check_peer(&stream) {
        tracing::warn!(%why, "refused a restart request");
        return reply(
            &mut stream,
            &Answer::Refused {
                reason: RefusalKind::Permission,
                message: why,
            },
        );
    }
    let kind = match read_line(&mut stream).map(|line| wire::decode_request(&line)) {
        Ok(Ok(kind)) => kind,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "refused a malformed restart request");
            return reply(
                &mut stream,
                &Answer::Refused {
                    reason: RefusalKind::Other,
                    message: e.to_string(),
                },
            );
        }
        Err(e) => {
            tracing::debug!(error = %e, "a control connection sent no request");
            return;
        }
    };
    // A command that gave up before its request was taken (it timed out while this
    // process had no fd to accept it) no longer wants it carried out.
    if peer_gone(&stream) {
        tracing::info!("a restart request whose command gave up is not carried out");
        return;
    }
    // Dropped unanswered if the lifecycle has ended: the peer sees the end.
    let _ = requests.send_blocking(Message::Restart {
        connection: stream,
        kind,
    });
}

/// Writes `answer` on the connection of the request it answers, and closes it.
pub(crate) fn answer(mut connection: UnixStream, answer: &Answer) {
    tracing::info!(?answer, "answering the restart request");
    answer_on(&mut connection, answer);
}

fn answer_on(stream: &mut UnixStream, answer: &Answer) {
    // One line into an empty socket buffer; the write timeout bounds a peer gone odd.
    if let Err(e) = stream.write_all(&wire::encode_answer(std::process::id(), answer)) {
        tracing::debug!(error = %e, "cannot write the answer to a restart request");
    }
}

/// Only this process's user, or root, may ask. Where the system cannot tell who is at the
/// other end (see `sys::peer_uid`), the socket's mode (0600) alone keeps other users out.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let peer = sys::peer_uid(stream.as_fd()).map_err(|e| format!("cannot tell who asks: {e}"))?;
    let me = rustix::process::geteuid().as_raw();
    match peer {
        Some(uid) if uid != me && uid != 0 => {
            Err(format!("uid {uid} may not restart a server of uid {me}"))
        }
        _ => Ok(()),
    }
}

/// Whether the peer has closed its end (nothing more to read, at once).
fn peer_gone(stream: &UnixStream) -> bool {
    let mut fds = [PollFd::new(stream, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            let revents = fds[0].revents();
            revents.contains(PollFlags::HUP)
                || (revents.contains(PollFlags::IN)
                    && rustix::net::recv(stream, &mut [0u8; 1], rustix::net::RecvFlags::PEEK)
                        .is_ok_and(|(n, _)| n == 0))
        }
    }
}

/// One line, at most [`wire::MAX_LINE`] bytes.
fn read_line(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() <= wire::MAX_LINE {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use endless_core::control::RequestKind;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "endless-control-server-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn the_socket_is_private_and_replaces_only_a_stale_socket() {
        let dir = temp_dir("bind");
        let path = dir.join("s.pid.control");
        let listener = bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Somebody answers on it: not taken.
        let e = bind(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        // Nobody does any more: replaced.
        drop(listener);
        let _listener = bind(&path).unwrap();
        // Only our temporary names were used, and none is left.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        // A regular file, or a symlink planted at the path, is left alone.
        let file = dir.join("file.control");
        std::fs::write(&file, "data").unwrap();
        assert_eq!(
            bind(&file).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
        let link = dir.join("link.control");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(
            bind(&link).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_inherited_socket_is_kept_for_the_path_it_was_bound_for() {
        let path = Path::new("/run/app/s.pid.control");
        let bound = |p: &str| bound_for(Some(Path::new(p)), path);
        assert!(bound("/run/app/s.pid.control"));
        assert!(bound("/run/app/s.pid.control.4242.123.tmp"));
        assert!(!bound("/run/other/s.pid.control.4242.123.tmp"));
        assert!(!bound("/run/app/t.pid.control.4242.123.tmp"));
        assert!(!bound("/run/app/s.pid.control.4242"));
        assert!(!bound_for(None, path));
    }

    #[test]
    fn a_directory_others_may_write_is_refused_unless_sticky() {
        let dir = temp_dir("modes");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&dir.join("s.control")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("writable by other users"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind(&dir.join("s.control")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settling_waits_for_the_requests_accepted_before_it() {
        let dir = temp_dir("settle");
        let path = dir.join("s.control");
        let (requests, driver) = async_channel::unbounded();
        let mut server =
            ControlServer::start(bind(&path).unwrap(), path.clone(), requests).unwrap();
        // Nothing under way: at once.
        server.settle(Duration::from_secs(30));
        assert!(driver.try_recv().is_err());

        // Accepted while the server accepts; the request comes 200 ms later.
        server.resume_accepting().unwrap();
        let mut slow = UnixStream::connect(&path).unwrap();
        let accepted_by = std::time::Instant::now() + Duration::from_secs(30);
        while *server.in_flight.count.lock().unwrap() == 0 {
            assert!(std::time::Instant::now() < accepted_by, "never accepted");
            std::thread::sleep(Duration::from_millis(1));
        }
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            slow.write_all(wire::REQUEST_PROVEN).unwrap();
            slow
        });
        server.settle(Duration::from_secs(30));
        assert!(
            matches!(
                driver.try_recv(),
                Ok(Message::Restart {
                    kind: RequestKind::UntilProven,
                    ..
                })
            ),
            "the request reached the driver before `settle` returned"
        );
        drop(writer.join().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_request_is_handed_to_the_driver_and_answered_and_junk_is_refused() {
        let dir = temp_dir("serve");
        let path = dir.join("s.control");
        let (requests, driver) = async_channel::unbounded();
        let mut server =
            ControlServer::start(bind(&path).unwrap(), path.clone(), requests).unwrap();
        // The driver's side: answer the first request.
        let fake_driver = std::thread::spawn(move || {
            for expected in [RequestKind::Restart, RequestKind::UntilProven] {
                match driver.recv_blocking() {
                    Ok(Message::Restart { connection, kind }) if kind == expected => {
                        answer(connection, &Answer::Ready { new: 77 });
                    }
                    other => panic!("{other:?}"),
                }
            }
        });
        let ask = |request: &[u8]| {
            let mut stream = UnixStream::connect(&path).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            stream.write_all(request).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let ready = format!(
            "endless-control/1 ready pid={} new=77\n",
            std::process::id()
        );
        assert_eq!(ask(wire::REQUEST), ready);
        assert_eq!(ask(wire::REQUEST_PROVEN), ready);
        fake_driver.join().unwrap();
        assert!(ask(b"endless-control/1 stop\n").contains(" refused "));
        assert!(ask(b"endless-control/1 restart soon\n").contains(" refused "));
        // Stopped: nobody accepts any more (the connection waits in the queue).
        server.stop_accepting();
        server.remove_file();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
