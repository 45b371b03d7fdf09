//! Connection takeover: handing established connections to the new generation.
//!
//! The wire format and the order of the exchange are [`endless_core::takeover`]'s; this
//! module moves the sockets. The channel is the new generation's readiness channel, a
//! Unix stream socketpair created for that child alone (no path on disk, so no
//! permissions to get wrong): the child writes its "ready" line on it and keeps it; the old
//! generation then sends one [`Offer`] per connection with the socket attached
//! (`SCM_RIGHTS`) and waits for the [`Reply`] before it sends the next. Each message says
//! its own length; the channel module (private) sends each whole and reads each with only
//! its own socket. Received sockets are close-on-exec (`MSG_CMSG_CLOEXEC`).
//!
//! Each side runs one plain thread for the channel, so the same code serves every runtime:
//! a takeover is rare, sequential and short.
//!
//! - Old side: [`Endless::hand_over`](crate::Endless::hand_over) queues a
//!   connection; the thread sends it and waits for the answer. Taken: the old generation
//!   closes its copy. Refused, or the channel broke before an answer (the new generation
//!   died): the connection comes back to the application, which goes on serving it.
//! - New side ([`Inbox`]): the thread reads offers and passes each to the application's
//!   receiver of that name; the application answers with [`Incoming::take`] (the reply is
//!   written before the application can read from the socket) or refuses by dropping it.
//!   A malformed offer costs that one connection, never the process.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use endless_core::Departure;
use endless_core::takeover::{FrameError, MAX_OFFER_LEN, Offer, Outcome, RefuseReason, Reply};
use rustix::io::Errno;

use crate::channel::Channel;
use crate::tracker::ConnectionGuard;

/// Why a connection was not handed over.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandOverFailure {
    /// There is no new generation to hand it to: this process is not draining after a
    /// restart, or the new generation does not take connections (it registered no
    /// receiver, or its channel is gone).
    NoSuccessor,
    /// The new generation refused it.
    Refused(RefuseReason),
    /// The state or the unconsumed bytes are over the limit.
    Frame(FrameError),
    /// The channel broke before the new generation answered (it exited): the connection
    /// was not taken.
    ChannelClosed,
    /// The socket could not be taken from the runtime, sent, or given back.
    Io(io::Error),
    /// The new generation's answer broke the protocol. The connection was closed rather
    /// than risk both generations serving it.
    InDoubt,
}

impl fmt::Display for HandOverFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuccessor => f.write_str("no new generation takes connections"),
            Self::Refused(reason) => write!(f, "the new generation refused it: {reason}"),
            Self::Frame(e) => e.fmt(f),
            Self::ChannelClosed => f.write_str("the new generation is gone"),
            Self::Io(e) => e.fmt(f),
            Self::InDoubt => {
                f.write_str("the new generation's answer broke the protocol; connection closed")
            }
        }
    }
}

/// A connection that was not handed over: why, and the connection itself while this
/// process still holds it (serve it on, or close it).
pub struct HandOverError<T> {
    /// Why.
    pub failure: HandOverFailure,
    /// The connection, unless it was lost on the way ([`HandOverFailure::InDoubt`], or an
    /// I/O error after it left the runtime).
    pub connection: Option<T>,
}

impl<T> HandOverError<T> {
    pub(crate) fn new(failure: HandOverFailure, connection: Option<T>) -> Self {
        Self {
            failure,
            connection,
        }
    }

    /// The same error with the connection turned into another type.
    pub fn map<U>(self, f: impl FnOnce(T) -> Option<U>) -> HandOverError<U> {
        HandOverError {
            failure: self.failure,
            connection: self.connection.and_then(f),
        }
    }
}

impl<T> fmt::Debug for HandOverError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandOverError")
            .field("failure", &self.failure)
            .field("connection", &self.connection.as_ref().map(|_| "…"))
            .finish()
    }
}

impl<T> fmt::Display for HandOverError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection not handed over: {}", self.failure)
    }
}

impl<T> std::error::Error for HandOverError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            HandOverFailure::Frame(e) => Some(e),
            HandOverFailure::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A connection on its way out, at the runtime-neutral level: its socket and the guard
/// that counts it for the drain (which no longer shuts the socket down: the new
/// generation may own it).
pub type Held = (OwnedFd, ConnectionGuard);

/// What the application hands over: the offer's message (its id from [`Outbox::next_id`])
/// and the connection.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) message: Vec<u8>,
    pub(crate) fd: OwnedFd,
    pub(crate) guard: ConnectionGuard,
}

type Done = async_channel::Sender<Result<(), HandOverError<Held>>>;

/// What the task that reads the new generation's messages passes on to the [`Outbox`]: each
/// reply, or why one was unreadable. The end of the channel closes it.
pub(crate) type Replies = async_channel::Receiver<io::Result<Reply>>;

/// The old side of a takeover: one thread that sends the connections queued by
/// [`Outbox::send`] to the new generation, one at a time. The replies come from the task
/// that reads every message of the new generation (its readiness line, its replies, its
/// departure), so that one reader sees them in order.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    jobs: async_channel::Sender<(Outgoing, Done)>,
    open: Arc<AtomicBool>,
    ids: Arc<std::sync::atomic::AtomicU64>,
}

impl Outbox {
    /// Starts the thread on `channel` (this process's end of the child's readiness
    /// channel), with the replies read from it. It ends once every `Outbox` clone is
    /// dropped, shutting down the sending side of the channel: the new generation's
    /// receivers end, and it can still say that it departs.
    pub(crate) fn start(channel: OwnedFd, replies: Replies, successor: u32) -> io::Result<Self> {
        let channel = Channel::new(channel)?;
        let (jobs, queue) = async_channel::unbounded::<(Outgoing, Done)>();
        let open = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&open);
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("endless-handover".into())
            .spawn(move || {
                span.in_scope(|| send_loop(&channel, &replies, successor, &queue, &flag));
                if let Err(e) = rustix::net::shutdown(&channel, rustix::net::Shutdown::Write) {
                    tracing::debug!(error = %e, "cannot end the takeover channel");
                }
            })?;
        Ok(Self {
            jobs,
            open,
            ids: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        })
    }

    /// A new offer id, unique on this channel.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the new generation may still take connections.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Hands `outgoing` over; resolves once the new generation answered.
    pub(crate) async fn send(&self, outgoing: Outgoing) -> Result<(), HandOverError<Held>> {
        let (done, result) = async_channel::bounded(1);
        if let Err(e) = self.jobs.try_send((outgoing, done)) {
            let (outgoing, _) = e.into_inner();
            return Err(HandOverError::new(
                HandOverFailure::ChannelClosed,
                Some((outgoing.fd, outgoing.guard)),
            ));
        }
        // The thread answers every job it takes; a dropped sender means it panicked, with
        // the connection: it is gone.
        result
            .recv()
            .await
            .unwrap_or_else(|_| Err(HandOverError::new(HandOverFailure::InDoubt, None)))
    }
}

fn send_loop(
    channel: &Channel,
    replies: &Replies,
    successor: u32,
    queue: &async_channel::Receiver<(Outgoing, Done)>,
    open: &AtomicBool,
) {
    let (mut sent, mut refused) = (0u64, 0u64);
    while let Ok((job, done)) = queue.recv_blocking() {
        let Outgoing {
            id,
            message,
            fd,
            guard,
        } = job;
        let fail = |failure, held: Option<Held>| {
            let _ = done.try_send(Err(HandOverError::new(failure, held)));
        };
        if !open.load(Ordering::SeqCst) {
            fail(HandOverFailure::ChannelClosed, Some((fd, guard)));
            continue;
        }
        // On a stream no message is too big for the socket's buffer: the send waits for the
        // new generation to read the first part. An error leaves the message cut short, and
        // the channel of no use: the new generation never answers a message it did not
        // read whole, so it never took this connection.
        if let Err(e) = channel.send(&message, Some(fd.as_fd())) {
            open.store(false, Ordering::SeqCst);
            tracing::warn!(successor, error = %e, "the takeover channel broke");
            fail(HandOverFailure::ChannelClosed, Some((fd, guard)));
            continue;
        }
        // The end of the channel closes `replies`.
        let answer = match replies.recv_blocking() {
            Ok(Ok(reply)) => Ok(Some(reply)),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        };
        match answer {
            Ok(Some(Reply {
                id: answered,
                outcome,
            })) if answered == id => match outcome {
                Outcome::Taken => {
                    sent += 1;
                    // The new generation owns it: close this process's copy, then stop
                    // counting it for the drain.
                    drop(fd);
                    drop(guard);
                    let _ = done.try_send(Ok(()));
                }
                Outcome::Refused(reason) => {
                    refused += 1;
                    tracing::debug!(successor, id, %reason, "connection refused by the new generation");
                    fail(HandOverFailure::Refused(reason), Some((fd, guard)));
                }
            },
            // End of stream before the answer: the new generation answers before it uses a
            // socket, so it never used this one.
            Ok(None) => {
                open.store(false, Ordering::SeqCst);
                tracing::warn!(successor, "the new generation closed the takeover channel");
                fail(HandOverFailure::ChannelClosed, Some((fd, guard)));
            }
            Ok(Some(other)) => {
                open.store(false, Ordering::SeqCst);
                tracing::error!(
                    successor,
                    id,
                    answered = other.id,
                    "takeover reply for another offer"
                );
                fail(HandOverFailure::InDoubt, None);
            }
            Err(e) => {
                open.store(false, Ordering::SeqCst);
                tracing::error!(successor, id, error = %e, "bad takeover reply");
                fail(HandOverFailure::InDoubt, None);
            }
        }
    }
    tracing::info!(successor, sent, refused, "connection handover ended");
}

/// The new side's last message to the old one: this process goes, and why
/// ([`endless_core::Action::Depart`]). `EPIPE` if the old one is gone.
pub(crate) fn depart(channel: &Channel, how: Departure) -> io::Result<()> {
    let message = endless_core::takeover::encode_departure(how);
    // A few bytes on a channel that carries only replies this way: room in practice; a
    // full one costs the departure, and the old generation then falls back only on a
    // crash status.
    channel.try_send(&message)
}

/// One connection offered to this process by the previous generation. Answer it with
/// [`take`](Self::take); dropping it refuses it (the previous generation then keeps
/// serving it).
pub struct Incoming {
    offer: Offer,
    fd: Option<OwnedFd>,
    channel: Arc<Channel>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.offer.id)
            .field("kind", &self.offer.kind)
            .field("name", &self.offer.name)
            .field("state_len", &self.offer.state.len())
            .field("unconsumed_len", &self.offer.unconsumed.len())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// The offer: receiver name, socket kind, state and unconsumed bytes.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Takes the connection: `adopt` turns the socket into what the application serves
    /// (registers it with its runtime). If `adopt` succeeds, the previous generation is told
    /// that this process owns the connection — before `adopt`'s result is returned, so
    /// before anything is read from it — and closes its copy. If it fails, the connection
    /// is refused and stays with the previous generation.
    pub fn take<T>(
        mut self,
        adopt: impl FnOnce(OwnedFd) -> io::Result<T>,
    ) -> Result<(T, Offer), io::Error> {
        let fd = self
            .fd
            .take()
            .expect("an Incoming holds its socket until answered");
        let id = self.offer.id;
        match adopt(fd) {
            Ok(value) => {
                if let Err(e) = reply(&self.channel, id, Outcome::Taken) {
                    // The previous generation is gone (and with it its copy): this one is ours.
                    tracing::debug!(id, error = %e, "could not confirm a takeover");
                }
                let offer = Offer {
                    id,
                    kind: self.offer.kind,
                    name: std::mem::take(&mut self.offer.name),
                    state: std::mem::take(&mut self.offer.state),
                    unconsumed: std::mem::take(&mut self.offer.unconsumed),
                };
                Ok((value, offer))
            }
            Err(e) => {
                let _ = reply(&self.channel, id, Outcome::Refused(RefuseReason::BadSocket));
                Err(e)
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.fd.is_some() {
            let _ = reply(
                &self.channel,
                self.offer.id,
                Outcome::Refused(RefuseReason::ReceiverClosed),
            );
        }
    }
}

fn reply(channel: &Channel, id: u64, outcome: Outcome) -> io::Result<()> {
    let message = Reply { id, outcome }.encode();
    // A few bytes, which the old generation reads as they come: it does not wait in
    // practice.
    channel.send(&message, None)
}

/// The connections this process receives under one name, from the previous generation.
#[derive(Debug)]
pub struct Inbox {
    incoming: async_channel::Receiver<Incoming>,
}

impl Inbox {
    /// The next connection offered, or `None` once the previous generation is done (or
    /// there is none: a fresh start).
    pub async fn next(&self) -> Option<Incoming> {
        self.incoming.recv().await.ok()
    }
}

/// The receivers registered before ready; the thread that serves them.
#[derive(Debug)]
pub(crate) struct Receivers {
    /// `None` once the channel started (or there was none): too late to register.
    senders: Option<HashMap<String, async_channel::Sender<Incoming>>>,
}

/// Why a receiver could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveError {
    /// A receiver of this name already exists.
    DuplicateName(String),
    /// Receivers must be registered before [`ready`](crate::Endless::ready): the
    /// previous generation hands over right after it.
    AfterReady,
}

impl fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateName(name) => write!(f, "a receiver named {name:?} already exists"),
            Self::AfterReady => f.write_str("receivers must be registered before ready"),
        }
    }
}

impl std::error::Error for ReceiveError {}

impl From<ReceiveError> for io::Error {
    fn from(e: ReceiveError) -> Self {
        let kind = match e {
            ReceiveError::DuplicateName(_) => io::ErrorKind::AlreadyExists,
            ReceiveError::AfterReady => io::ErrorKind::InvalidInput,
        };
        Self::new(kind, e)
    }
}

impl Receivers {
    pub(crate) fn new() -> Self {
        Self {
            senders: Some(HashMap::new()),
        }
    }

    pub(crate) fn register(&mut self, name: &str) -> Result<Inbox, ReceiveError> {
        let senders = self.senders.as_mut().ok_or(ReceiveError::AfterReady)?;
        if senders.contains_key(name) {
            return Err(ReceiveError::DuplicateName(name.to_owned()));
        }
        let (sender, incoming) = async_channel::unbounded();
        senders.insert(name.to_owned(), sender);
        Ok(Inbox { incoming })
    }

    /// Closes registration; the senders, if any were registered.
    pub(crate) fn close(&mut self) -> HashMap<String, async_channel::Sender<Incoming>> {
        self.senders.take().unwrap_or_default()
    }
}

/// Starts the new side's thread on `channel` (this process's readiness channel, kept after
/// the "ready" line). At the end of the stream (the old side's handover ended) it closes
/// every [`Inbox`]; it keeps the channel, for this process to say that it departs
/// ([`depart`], through the returned reference), until the old side is gone.
pub(crate) fn receive(
    channel: Channel,
    senders: HashMap<String, async_channel::Sender<Incoming>>,
) -> io::Result<std::sync::Weak<Channel>> {
    let channel = Arc::new(channel);
    let kept = Arc::downgrade(&channel);
    std::thread::Builder::new()
        .name("endless-takeover".into())
        .spawn(move || {
            receive_loop(Arc::clone(&channel), &senders);
            drop(senders);
            // Hung up once the old side closed its end: it exited.
            let mut hangup = [rustix::event::PollFd::new(
                &*channel,
                rustix::event::PollFlags::empty(),
            )];
            while let Err(Errno::INTR) = rustix::event::poll(&mut hangup, None) {}
        })?;
    Ok(kept)
}

fn receive_loop(channel: Arc<Channel>, senders: &HashMap<String, async_channel::Sender<Incoming>>) {
    let mut buf = Vec::with_capacity(MAX_OFFER_LEN + 1);
    let mut received = 0u64;
    loop {
        let fds = match channel.recv(&mut buf) {
            Ok(Some(fds)) => fds,
            Ok(None) => break, // the previous generation is done
            // A stream that cannot be split into messages any more: the exchange cannot
            // go on. Ending it leaves every connection not yet taken with the previous
            // generation (the descriptors read so far are closed).
            Err(e) => {
                tracing::error!(error = %e, "the takeover channel failed");
                break;
            }
        };
        let refuse = |id: u64, reason: RefuseReason| {
            tracing::warn!(id, %reason, "refused a connection offered by the previous generation");
            let _ = reply(&channel, id, Outcome::Refused(reason));
        };
        // A record longer than any offer (`SOCK_SEQPACKET`) does not decode: it is longer
        // than its fields declare.
        let offer = match Offer::decode(&buf) {
            Ok(offer) => offer,
            Err(e) => {
                tracing::warn!(error = %e, "malformed takeover offer");
                match e.id() {
                    Some(id) => {
                        let _ = reply(&channel, id, Outcome::Refused(RefuseReason::Malformed));
                        continue;
                    }
                    // Not even a number to refuse it by: the exchange cannot go on. Ending it
                    // leaves every connection not yet taken with the previous generation.
                    None => break,
                }
            }
        };
        let mut fds = fds;
        let (Some(fd), true) = (fds.pop(), fds.is_empty()) else {
            refuse(offer.id, RefuseReason::BadSocket);
            continue;
        };
        match crate::inherit::probe(fd.as_fd()) {
            Ok(kind) if kind == offer.kind.fd_kind() => {}
            _ => {
                refuse(offer.id, RefuseReason::BadSocket);
                continue;
            }
        }
        let Some(sender) = senders.get(&offer.name) else {
            refuse(offer.id, RefuseReason::NoReceiver);
            continue;
        };
        let id = offer.id;
        let incoming = Incoming {
            offer,
            fd: Some(fd),
            channel: Arc::clone(&channel),
        };
        // A dropped receiver drops `incoming`, which refuses it.
        if sender.try_send(incoming).is_ok() {
            received += 1;
        } else {
            tracing::debug!(id, "receiver closed");
        }
    }
    tracing::info!(offers = received, "connection takeover ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use crate::tracker::Tracker;
    use endless_core::takeover::{StreamKind, Upstream, encode_offer};
    use futures_lite::future::block_on;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::BorrowedFd;

    /// A connected TCP pair: (client, server side).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn outgoing(outbox: &Outbox, name: &str, server: TcpStream, tracker: &Tracker) -> Outgoing {
        let guard = tracker.track(None);
        let id = outbox.next_id();
        Outgoing {
            id,
            message: encode_offer(id, StreamKind::Tcp, name, b"count=3", b"pi").unwrap(),
            fd: server.into(),
            guard,
        }
    }

    /// The old side's reader of the new side's messages (the driver's task for a child),
    /// on a thread: replies go to the outbox.
    fn replies(channel: &OwnedFd) -> Replies {
        let channel = channel.try_clone().unwrap();
        let (to, replies) = async_channel::unbounded();
        std::thread::spawn(move || {
            let channel = Channel::new(channel).unwrap();
            let mut buf = Vec::new();
            loop {
                if !matches!(channel.recv(&mut buf), Ok(Some(_))) {
                    return;
                }
                let reply = match Upstream::decode(&buf) {
                    Ok(Upstream::Reply(reply)) => Ok(reply),
                    other => Err(io::Error::other(format!("{other:?}"))),
                };
                if to.send_blocking(reply).is_err() {
                    return;
                }
            }
        });
        replies
    }

    fn outbox(channel: OwnedFd) -> Outbox {
        let replies = replies(&channel);
        Outbox::start(channel, replies, 1).unwrap()
    }

    /// An old side and a new side on one socketpair; the new side has a receiver "ping".
    fn sides() -> (Outbox, Inbox) {
        let (old, new) = sys::channel_pair().unwrap();
        sys::set_nonblocking(old.as_fd()).unwrap();
        let outbox = outbox(old);
        let mut receivers = Receivers::new();
        let inbox = receivers.register("ping").unwrap();
        receive(Channel::new(new).unwrap(), receivers.close()).unwrap();
        (outbox, inbox)
    }

    #[test]
    fn a_connection_taken_moves_with_its_state() {
        let (outbox, inbox) = sides();
        let tracker = Tracker::new();
        let (mut client, server) = tcp_pair();
        let app = std::thread::spawn(move || {
            let incoming = block_on(inbox.next()).unwrap();
            let (stream, offer) = incoming.take(|fd| Ok(TcpStream::from(fd))).unwrap();
            (stream, offer, block_on(inbox.next()).is_none())
        });
        block_on(outbox.send(outgoing(&outbox, "ping", server, &tracker))).unwrap();
        assert_eq!(tracker.len(), 0, "the guard goes once taken");
        drop(outbox); // the end of the handover
        let (mut stream, offer, ended) = app.join().unwrap();
        assert!(ended, "the inbox ends with the channel");
        assert_eq!(
            (offer.name.as_str(), &offer.state[..]),
            ("ping", &b"count=3"[..])
        );
        assert_eq!(offer.unconsumed, b"pi");
        assert!(sys::is_cloexec(stream.as_fd()).unwrap());
        // The same connection, and the old side's copy is closed: only one end remains.
        client.write_all(b"ng\n").unwrap();
        let mut got = [0; 3];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ng\n");
        drop(stream);
        assert_eq!(
            client.read(&mut got).unwrap(),
            0,
            "no other copy keeps it open"
        );
    }

    #[test]
    fn refused_or_unanswered_connections_come_back() {
        let (outbox, inbox) = sides();
        let tracker = Tracker::new();
        // No receiver of that name.
        let (_client, server) = tcp_pair();
        let e = block_on(outbox.send(outgoing(&outbox, "other", server, &tracker))).unwrap_err();
        assert!(
            matches!(
                e.failure,
                HandOverFailure::Refused(RefuseReason::NoReceiver)
            ),
            "{e}"
        );
        let (fd, guard) = e.connection.expect("given back");
        assert_eq!(tracker.len(), 1);
        drop((fd, guard));
        // The application drops the offer: refused as the receiver being closed.
        let app = std::thread::spawn(move || drop(block_on(inbox.next())));
        let (_client, server) = tcp_pair();
        let e = block_on(outbox.send(outgoing(&outbox, "ping", server, &tracker))).unwrap_err();
        assert!(
            matches!(
                e.failure,
                HandOverFailure::Refused(RefuseReason::ReceiverClosed)
            ),
            "{e}"
        );
        app.join().unwrap();
        // The inbox is gone now, with the thread's senders still alive: refused again.
        let (_client, server) = tcp_pair();
        let e = block_on(outbox.send(outgoing(&outbox, "ping", server, &tracker))).unwrap_err();
        assert!(
            matches!(
                e.failure,
                HandOverFailure::Refused(RefuseReason::ReceiverClosed)
            ),
            "{e}"
        );
        assert!(e.connection.is_some());
        assert!(outbox.is_open());
    }

    #[test]
    fn a_new_generation_that_is_gone_leaves_every_connection_here() {
        let (old, new) = sys::channel_pair().unwrap();
        let outbox = outbox(old);
        drop(new);
        let tracker = Tracker::new();
        for _ in 0..3 {
            let (_client, server) = tcp_pair();
            let e = block_on(outbox.send(outgoing(&outbox, "ping", server, &tracker))).unwrap_err();
            assert!(matches!(e.failure, HandOverFailure::ChannelClosed), "{e}");
            assert!(e.connection.is_some());
        }
        assert!(!outbox.is_open());
    }

    /// The new side refuses malformed offers one by one and goes on.
    #[test]
    fn malformed_offers_cost_one_connection_each() {
        malformed_offers(sys::channel_pair().unwrap());
    }

    /// The same on a `SOCK_SEQPACKET` channel, as a parent built with an earlier endless
    /// makes it.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    #[test]
    fn malformed_offers_cost_one_connection_each_on_records() {
        let (a, b) =
            socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        malformed_offers((a.into(), b.into()));
    }

    /// A stream the new side cannot split ends the exchange: every connection not yet
    /// taken stays with the old side, which sees the end before any answer.
    #[test]
    fn garbage_ends_the_exchange() {
        let (old, new) = sys::channel_pair().unwrap();
        let mut receivers = Receivers::new();
        let inbox = receivers.register("ping").unwrap();
        receive(Channel::new(new).unwrap(), receivers.close()).unwrap();
        let old = Channel::new(old).unwrap();
        let (_client, server) = tcp_pair();
        old.send(b"EDLS\x01\x07 garbage", Some(server.as_fd()))
            .unwrap();
        assert!(block_on(inbox.next()).is_none(), "the receivers end");
        drop(old);
    }

    fn malformed_offers((old, new): (OwnedFd, OwnedFd)) {
        let mut receivers = Receivers::new();
        let inbox = receivers.register("ping").unwrap();
        receive(Channel::new(new).unwrap(), receivers.close()).unwrap();
        let old = Channel::new(old).unwrap();
        let mut buf = Vec::new();
        let mut exchange = |message: &[u8], fd: Option<BorrowedFd<'_>>| {
            old.send(message, fd).unwrap();
            old.recv(&mut buf).unwrap().unwrap();
            Reply::decode(&buf).unwrap()
        };
        let offer = |id: u64| Offer {
            id,
            kind: StreamKind::Tcp,
            name: "ping".into(),
            state: vec![],
            unconsumed: vec![],
        };
        let (_client, server) = tcp_pair();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let refused = |id, reason| Reply {
            id,
            outcome: Outcome::Refused(reason),
        };
        // No socket.
        assert_eq!(
            exchange(&offer(1).encode().unwrap(), None),
            refused(1, RefuseReason::BadSocket)
        );
        // A socket of another kind than declared.
        assert_eq!(
            exchange(&offer(2).encode().unwrap(), Some(udp.as_fd())),
            refused(2, RefuseReason::BadSocket)
        );
        // A bad field, with a readable id.
        let mut bad = offer(3).encode().unwrap();
        bad[14] = 9;
        assert_eq!(
            exchange(&bad, Some(server.as_fd())),
            refused(3, RefuseReason::Malformed)
        );
        // And a good one is still taken.
        let app = std::thread::spawn(move || {
            let incoming = block_on(inbox.next()).unwrap();
            incoming.take(|fd| Ok(TcpStream::from(fd))).unwrap().1.id
        });
        assert_eq!(
            exchange(&offer(4).encode().unwrap(), Some(server.as_fd())),
            Reply {
                id: 4,
                outcome: Outcome::Taken
            }
        );
        assert_eq!(app.join().unwrap(), 4);
    }

    #[test]
    fn receivers_are_registered_once_and_before_ready() {
        let mut receivers = Receivers::new();
        let _inbox = receivers.register("a").unwrap();
        assert_eq!(
            receivers.register("a").unwrap_err(),
            ReceiveError::DuplicateName("a".into())
        );
        assert_eq!(receivers.close().len(), 1);
        assert_eq!(
            receivers.register("b").unwrap_err(),
            ReceiveError::AfterReady
        );
    }
}
