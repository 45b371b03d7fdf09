//! Connection takeover: handing established connections to the new generation.
//!
//! The wire format and the order of the exchange are [`endless_core::takeover`]'s; this
//! module moves the sockets. The channel is the new generation's readiness channel, a
//! Unix stream socketpair created for that child alone (no path on disk, so no
//! permissions to get wrong): the child writes its "ready" line on it and keeps it; the old
//! generation then sends the connections, with their sockets attached (`SCM_RIGHTS`). Each
//! message says its own length; the channel module (private) sends each whole and reads
//! each with only its own sockets. Received sockets are close-on-exec
//! (`MSG_CMSG_CLOEXEC`).
//!
//! Each side runs one plain thread for the channel, so the same code serves every runtime.
//!
//! - Old side: [`Endless::hand_over`](crate::Endless::hand_over) queues a connection; the
//!   thread sends what is queued in batches of up to
//!   [`MAX_BATCH`] sockets a message (to a new
//!   generation that says it reads them; one a message to an earlier version), with at
//!   most [`WINDOW`] connections waiting for their answers, and settles each connection as
//!   soon as its answer comes. Taken: the old generation closes its copy. Refused, or the
//!   channel ended before an answer (the new generation died): the connection comes back
//!   to the application, which goes on serving it.
//! - A new generation that is alive but does not answer (its application never takes what
//!   it is offered) does not hold the old one until its drain deadline: once it answered
//!   nothing for the takeover timeout
//!   ([`Builder::takeover_timeout`](crate::Builder::takeover_timeout)) while connections
//!   wait, the old side stops listening to it (`shutdown(2)` of the channel). From then on
//!   every answer the new side tries to send fails, so its application never gets one
//!   more connection ([`Incoming::take`] checks that its answer went out before it returns
//!   the socket); every answer that did go out is still read (a message cut short is no
//!   answer on either side), and every connection without one stays with the old
//!   generation. This relies on a write to a Unix socket whose peer shut its reading down
//!   failing (`EPIPE`), as Linux does; tested there.
//! - New side ([`Inbox`]): the thread reads offers and passes each to the application's
//!   receiver of that name; the application answers with [`Incoming::take`] (the answer is
//!   written before the application can read from the socket) or refuses by dropping it.
//!   Answers go together in one message where they can: the thread's own refusals of a
//!   batch in one, and the connections a receiver takes in one go (what
//!   [`Connections::next`](crate::adapter::Connections::next) does) in one. A malformed
//!   offer costs that one connection, never the process.
//! - A new generation takes connections until its own drain is complete. Then (it waits
//!   as its successor's fallback, or exits) `Connections::next` refuses what is still
//!   offered (`RefuseReason::Drained`), and the previous generation keeps it: a connection
//!   taken then would be served by nobody once this process exits, and its lifecycle,
//!   drained, would not wait for it. The drain is declared complete and sealed under one
//!   lock with the tracker's count, so a connection is either counted before (the drain
//!   waits for it) or refused.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endless_core::Departure;
use endless_core::takeover::{
    Entry, FrameError, MAX_BATCH, MAX_BATCH_LEN, MAX_OFFER_LEN, MAX_REPLIES, OFFERS_HEADER_LEN,
    Offer, Outcome, RefuseReason, Reply, StreamKind,
};
use rustix::io::Errno;

use crate::channel::Channel;
use crate::handle::lock;
use crate::outbox_queue::{self, RecvError};
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

/// The most connections the old side has offered and not seen answered: the sender waits
/// for answers past it, so that a slow new generation is not sent every connection at
/// once (each holds a descriptor in both processes while it is in flight).
pub const WINDOW: usize = 4 * MAX_BATCH;

/// How long the new generation may answer nothing while connections wait for its answers,
/// by default (see [`Builder::takeover_timeout`](crate::Builder::takeover_timeout)).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the application hands over: the offer's fields and the connection.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) kind: StreamKind,
    pub(crate) name: String,
    pub(crate) state: Vec<u8>,
    pub(crate) unconsumed: Vec<u8>,
    pub(crate) fd: OwnedFd,
    pub(crate) guard: ConnectionGuard,
}

impl Outgoing {
    fn entry(&self) -> Entry<'_> {
        Entry {
            kind: self.kind,
            name: &self.name,
            state: &self.state,
            unconsumed: &self.unconsumed,
        }
    }
}

/// Where a connection's result goes: sent once, by the thread, which owns the connection
/// until then.
type Done = oneshot::Sender<Result<(), HandOverError<Held>>>;

/// What the old side's sending thread hears: connections to send (from the application),
/// and what the new generation said (from the task that reads its channel, which sees its
/// readiness line, its answers and its departure in order).
#[derive(Debug)]
pub(crate) enum OutboxEvent {
    /// A connection to hand over, and where its result goes.
    Job(Outgoing, Done),
    /// Answers.
    Replies(Vec<Reply>),
    /// The new generation reads batches of up to this many offers.
    Accepts(u16),
    /// A message of the new generation that broke the protocol.
    Bad(io::Error),
    /// The new generation's channel ended: nothing more will be answered.
    End,
    /// The last [`Outbox`] went: no more connections will come.
    Close,
}

impl outbox_queue::Event for OutboxEvent {
    fn is_job(&self) -> bool {
        matches!(self, Self::Job(..))
    }
}

/// Where the reader of the new generation's channel sends what it reads (an
/// [`OutboxEvent::Replies`], [`OutboxEvent::Accepts`], [`OutboxEvent::Bad`] or [`OutboxEvent::End`]).
pub(crate) type Feed = outbox_queue::Sender<OutboxEvent>;

/// The sending thread's end of its events.
pub(crate) type Events = outbox_queue::Receiver<OutboxEvent>;

/// A sending thread's events and the sender for more (the driver makes one per child, when
/// it spawns it, and starts the [`Outbox`] on it once the child is ready). A job wakes the
/// thread only when it can act on it (`outbox_queue`).
pub(crate) fn events() -> (Feed, Events) {
    outbox_queue::queue()
}

/// The old side of a takeover: one thread that sends the connections queued by
/// [`Outbox::send`] to the new generation and settles each with its answer.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    inner: Arc<OutboxInner>,
}

#[derive(Debug)]
struct OutboxInner {
    jobs: Feed,
    open: Arc<AtomicBool>,
    /// Messages of offers sent so far (the thread logs it at its end; tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    messages: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for OutboxInner {
    fn drop(&mut self) {
        let _ = self.jobs.send(OutboxEvent::Close);
    }
}

impl Outbox {
    /// Starts the thread on `channel` (this process's end of the child's readiness
    /// channel), with the `events` that the reader of the channel feeds through `feed`.
    /// It ends once every `Outbox` clone is dropped and nothing waits for an answer,
    /// shutting down the sending side of the channel: the new generation's receivers end,
    /// and it can still say that it departs.
    pub(crate) fn start(
        channel: OwnedFd,
        (feed, events): (Feed, Events),
        successor: u32,
        timeout: Duration,
    ) -> io::Result<Self> {
        let channel = Channel::new(channel)?;
        let open = Arc::new(AtomicBool::new(true));
        let messages = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut sender = Sender {
            channel,
            successor,
            timeout,
            open: Arc::clone(&open),
            batch: 1,
            next_id: 1,
            queue: VecDeque::new(),
            pending: BTreeMap::new(),
            progress: Instant::now(),
            cut_off: None,
            sent: 0,
            refused: 0,
            messages: Arc::clone(&messages),
        };
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("endless-handover".into())
            .spawn(move || span.in_scope(|| sender.run(&events)))?;
        Ok(Self {
            inner: Arc::new(OutboxInner {
                jobs: feed,
                open,
                messages,
            }),
        })
    }

    /// Whether the new generation may still take connections.
    pub(crate) fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// How many messages of offers went so far.
    #[cfg(test)]
    fn messages(&self) -> u64 {
        self.inner.messages.load(Ordering::SeqCst)
    }

    /// Hands `outgoing` over; resolves once the new generation answered (or will not).
    pub(crate) async fn send(&self, outgoing: Outgoing) -> Result<(), HandOverError<Held>> {
        let (done, result) = oneshot::channel();
        let sent = self.inner.jobs.send(OutboxEvent::Job(outgoing, done));
        if let Err(event) = sent {
            let OutboxEvent::Job(outgoing, _) = event else {
                unreachable!("the event sent is a job")
            };
            return Err(HandOverError::new(
                HandOverFailure::ChannelClosed,
                Some((outgoing.fd, outgoing.guard)),
            ));
        }
        // The thread answers every job it takes; a dropped sender means it panicked, with
        // the connection: it is gone.
        result
            .await
            .unwrap_or_else(|_| Err(HandOverError::new(HandOverFailure::InDoubt, None)))
    }
}

/// A connection offered and not answered yet.
struct Pending {
    fd: OwnedFd,
    guard: ConnectionGuard,
    done: Done,
}

/// The state of the old side's sending thread.
struct Sender {
    channel: Channel,
    successor: u32,
    timeout: Duration,
    /// Cleared once nothing more can be sent: the channel broke, or the new generation did
    /// not answer in time.
    open: Arc<AtomicBool>,
    /// The most offers per message: 1 until the new generation says it reads more.
    batch: usize,
    next_id: u64,
    queue: VecDeque<(Outgoing, Done)>,
    /// By id.
    pending: BTreeMap<u64, Pending>,
    /// The last answer, or the send that found nothing waiting: the new generation is cut
    /// off when it answers nothing for the timeout while connections wait.
    progress: Instant,
    /// When the old side stopped listening to the new one (its timeout), if it did.
    cut_off: Option<Instant>,
    sent: u64,
    refused: u64,
    messages: Arc<std::sync::atomic::AtomicU64>,
}

impl Sender {
    fn run(&mut self, events: &Events) {
        let mut closing = false;
        let mut next = None;
        loop {
            // What is known now, before what is sent (an accepts message that came before
            // the connections, answers that free the window).
            while let Some(event) = next.take().or_else(|| events.try_recv()) {
                if self.handle(event, &mut closing) {
                    return self.finish();
                }
            }
            // A batch goes as soon as it is full; one that is not waits while others are
            // in flight (their answers come within a round trip, and more connections
            // meanwhile fill it): many connections go in few messages, and a lone one
            // goes at once.
            while self.is_open()
                && !self.queue.is_empty()
                && self.pending.len() < WINDOW
                && (self.pending.is_empty() || self.queue.len() >= self.batch)
            {
                self.send_batch();
            }
            if closing && self.pending.is_empty() && self.queue.is_empty() {
                return self.finish();
            }
            match events.recv_until(self.jobs_wanted(), self.wait_until()) {
                Ok(event) => next = Some(event),
                Err(RecvError::Timeout) => self.timed_out(),
                // Every sender is gone: nothing more will come.
                Err(RecvError::Disconnected) => return self.finish(),
            }
        }
    }

    /// Takes one event; whether the thread is done.
    fn handle(&mut self, event: OutboxEvent, closing: &mut bool) -> bool {
        match event {
            OutboxEvent::Job(outgoing, done) => {
                if self.is_open() {
                    self.queue.push_back((outgoing, done));
                } else {
                    give_back(done, HandOverFailure::ChannelClosed, outgoing);
                }
            }
            OutboxEvent::Replies(replies) => self.settle(replies),
            OutboxEvent::Accepts(max) => {
                self.batch = usize::from(max).clamp(1, MAX_BATCH.min(crate::sys::MAX_FDS));
                tracing::debug!(
                    successor = self.successor,
                    batch = self.batch,
                    "the new generation reads batches"
                );
            }
            OutboxEvent::Bad(e) => {
                tracing::error!(successor = self.successor, error = %e, "bad takeover reply");
                self.broken();
            }
            OutboxEvent::End => {
                if !self.pending.is_empty() {
                    tracing::warn!(
                        successor = self.successor,
                        waiting = self.pending.len(),
                        "the takeover channel ended before every answer"
                    );
                }
                self.ended();
                return *closing;
            }
            OutboxEvent::Close => *closing = true,
        }
        *closing && self.pending.is_empty() && self.queue.is_empty()
    }

    fn finish(&mut self) {
        self.ended();
        if let Err(e) = rustix::net::shutdown(&self.channel, rustix::net::Shutdown::Write) {
            tracing::debug!(error = %e, "cannot end the takeover channel");
        }
        tracing::info!(
            successor = self.successor,
            sent = self.sent,
            refused = self.refused,
            messages = self.messages.load(Ordering::SeqCst),
            "connection handover ended"
        );
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// How many more jobs must be queued before the thread can do something with them: it
    /// sleeps until then (or until any other event, or its deadline), so that the jobs
    /// that only join a batch still waiting do not wake it one by one. A batch goes once it
    /// is full, or at once while nothing waits for an answer (see [`run`](Self::run)); none
    /// goes while the window is full (an answer wakes it then); a job that can no longer go
    /// is given back at once.
    fn jobs_wanted(&self) -> usize {
        if !self.is_open() || self.pending.is_empty() {
            1
        } else if self.pending.len() >= WINDOW {
            usize::MAX
        } else {
            self.batch.saturating_sub(self.queue.len()).max(1)
        }
    }

    /// When to stop waiting for the next event, while connections wait for answers: the
    /// timeout after the last answer (a new generation that takes slowly but steadily is
    /// not cut off), or (once cut off) the time by which every answer sent in time has
    /// been read.
    fn wait_until(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.cut_off.unwrap_or(self.progress) + self.timeout)
    }

    /// Sends the next batch of queued connections, as one message.
    fn send_batch(&mut self) {
        let room = self.batch.min(WINDOW - self.pending.len());
        let mut len = OFFERS_HEADER_LEN;
        let mut batch: Vec<(Outgoing, Done)> = Vec::with_capacity(room);
        while batch.len() < room {
            let Some((outgoing, _)) = self.queue.front() else {
                break;
            };
            // Checked when it was queued: never an error here.
            let entry_len = outgoing.entry().encoded_len().unwrap_or(MAX_BATCH_LEN);
            if !batch.is_empty() && len + entry_len > MAX_BATCH_LEN {
                break;
            }
            len += entry_len;
            batch.extend(self.queue.pop_front());
        }
        let first_id = self.next_id;
        self.next_id += batch.len() as u64;
        // One offer a message to a receiver that did not say it reads batches: every
        // version of endless reads those.
        let message = if self.batch == 1 {
            let (o, _) = &batch[0];
            endless_core::takeover::encode_offer(first_id, o.kind, &o.name, &o.state, &o.unconsumed)
        } else {
            let entries: Vec<Entry<'_>> = batch.iter().map(|(o, _)| o.entry()).collect();
            endless_core::takeover::encode_offers(first_id, &entries)
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                // Not reached: `Endless::hand_over` checks each entry, and the batch is
                // filled within the limits.
                tracing::error!(error = %e, "cannot encode a takeover message");
                for (outgoing, done) in batch {
                    give_back(done, HandOverFailure::Frame(e.clone()), outgoing);
                }
                return;
            }
        };
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|(o, _)| o.fd.as_fd()).collect();
        let now = Instant::now();
        // On a stream no message is too big for the socket's buffer: the send waits for the
        // new generation to read the first part, until the timeout. An error leaves the
        // message cut short, and the channel of no use: the new generation never answers a
        // message it did not read whole, so it took none of these connections.
        let sent = self.channel.send_until(&message, &fds, now + self.timeout);
        drop(fds);
        if let Err(e) = sent {
            tracing::warn!(successor = self.successor, error = %e, "the takeover channel broke");
            self.cut_off();
            for (outgoing, done) in batch {
                give_back(done, HandOverFailure::ChannelClosed, outgoing);
            }
            return;
        }
        self.messages.fetch_add(1, Ordering::SeqCst);
        if self.pending.is_empty() {
            self.progress = now;
        }
        for (id, (outgoing, done)) in (first_id..).zip(batch) {
            self.pending.insert(
                id,
                Pending {
                    fd: outgoing.fd,
                    guard: outgoing.guard,
                    done,
                },
            );
        }
    }

    /// Settles each connection answered.
    fn settle(&mut self, replies: Vec<Reply>) {
        self.progress = Instant::now();
        let mut settled = Vec::with_capacity(replies.len());
        let mut unknown = None;
        for Reply { id, outcome } in replies {
            match self.pending.remove(&id) {
                Some(p) => settled.push((id, p, outcome)),
                None => {
                    unknown = Some(id);
                    break;
                }
            }
        }
        for (_, _, outcome) in &settled {
            match outcome {
                Outcome::Taken => self.sent += 1,
                Outcome::Refused(_) => self.refused += 1,
            }
        }
        if unknown.is_none() && self.pending.is_empty() && self.queue.is_empty() {
            // Before the guards go below: once the last one does, the process may end.
            tracing::debug!(
                successor = self.successor,
                sent = self.sent,
                refused = self.refused,
                messages = self.messages.load(Ordering::SeqCst),
                "every connection offered so far is answered"
            );
        }
        for (id, p, outcome) in settled {
            match outcome {
                Outcome::Taken => {
                    // The new generation owns it: close this process's copy, then stop
                    // counting it for the drain.
                    drop(p.fd);
                    drop(p.guard);
                    let _ = p.done.send(Ok(()));
                }
                Outcome::Refused(reason) => {
                    tracing::debug!(successor = self.successor, id, %reason, "connection refused by the new generation");
                    let _ = p.done.send(Err(HandOverError::new(
                        HandOverFailure::Refused(reason),
                        Some((p.fd, p.guard)),
                    )));
                }
            }
        }
        if let Some(id) = unknown {
            tracing::error!(
                successor = self.successor,
                id,
                "takeover reply for no offer waiting"
            );
            self.broken();
        }
    }

    /// The new generation did not answer in time: stop listening to it. Every answer it
    /// sent so far is still read (what the reader finds in the channel); every later one
    /// fails to send, and the new side then does not use that connection.
    fn timed_out(&mut self) {
        if self.cut_off.is_some() {
            // The reader did not report the end of what was sent in time: nothing more
            // will be answered (the new side can no longer send).
            tracing::warn!(
                successor = self.successor,
                "no end of the takeover channel after the cut-off"
            );
            self.ended();
            return;
        }
        tracing::warn!(
            successor = self.successor,
            waiting = self.pending.len(),
            timeout = ?self.timeout,
            "the new generation did not answer in time: its connections stay here"
        );
        self.cut_off();
    }

    fn cut_off(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if self.cut_off.is_none() {
            self.cut_off = Some(Instant::now());
            if let Err(e) = rustix::net::shutdown(&self.channel, rustix::net::Shutdown::Both) {
                tracing::debug!(error = %e, "cannot shut the takeover channel down");
            }
        }
        for (outgoing, done) in self.queue.drain(..) {
            give_back(done, HandOverFailure::ChannelClosed, outgoing);
        }
    }

    /// The new generation broke the protocol: its answers cannot be trusted, so every
    /// connection waiting for one is closed rather than risk both generations serving it.
    fn broken(&mut self) {
        self.cut_off();
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p
                .done
                .send(Err(HandOverError::new(HandOverFailure::InDoubt, None)));
        }
    }

    /// Nothing more will be answered: every connection without an answer stays here.
    fn ended(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        for (outgoing, done) in self.queue.drain(..) {
            give_back(done, HandOverFailure::ChannelClosed, outgoing);
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.done.send(Err(HandOverError::new(
                HandOverFailure::ChannelClosed,
                Some((p.fd, p.guard)),
            )));
        }
    }
}

fn give_back(done: Done, failure: HandOverFailure, outgoing: Outgoing) {
    let _ = done.send(Err(HandOverError::new(
        failure,
        Some((outgoing.fd, outgoing.guard)),
    )));
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

/// The new side's answers to the old one, sent together where they can be.
#[derive(Debug)]
struct Answers {
    channel: Arc<Channel>,
    /// The old side reads messages of replies (it said so when it spawned this process).
    batched: bool,
    /// Held while answers are written, so that an answer queued is known to be sent (or
    /// not) once the lock is next taken.
    state: Mutex<AnswersState>,
}

#[derive(Debug, Default)]
struct AnswersState {
    /// Answers not written yet, each with its number.
    queued: Vec<(u64, Reply)>,
    next: u64,
    /// Every answer numbered below this one was written.
    written_below: u64,
    /// A write failed: the old side no longer listens, and nothing more is sent.
    failed: bool,
}

impl Answers {
    /// Queues an answer; its number, for [`written`](Self::written).
    fn queue(&self, reply: Reply) -> u64 {
        let mut state = lock(&self.state);
        let number = state.next;
        state.next += 1;
        state.queued.push((number, reply));
        number
    }

    /// Writes every answer queued (by any thread); whether the answer `number` went out.
    fn written(&self, number: u64) -> bool {
        let mut state = lock(&self.state);
        self.flush(&mut state);
        number < state.written_below
    }

    fn flush(&self, state: &mut AnswersState) {
        if state.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut state.queued);
        if state.failed {
            return;
        }
        // Each message is written whole or not at all as far as the old side is
        // concerned: one cut short at the end of the channel is read as no answer.
        let chunk = if self.batched { MAX_REPLIES } else { 1 };
        for answers in queued.chunks(chunk) {
            let replies: Vec<Reply> = answers.iter().map(|(_, r)| *r).collect();
            let message = if self.batched {
                endless_core::takeover::encode_replies(&replies)
                    .unwrap_or_else(|_| unreachable!("1 to MAX_REPLIES replies"))
            } else {
                replies[0].encode()
            };
            if let Err(e) = self.channel.send(&message, &[]) {
                tracing::debug!(error = %e, "cannot answer the previous generation");
                state.failed = true;
                return;
            }
            if let Some((last, _)) = answers.last() {
                state.written_below = last + 1;
            }
        }
    }

    /// Writes every answer queued.
    fn send_queued(&self) {
        self.flush(&mut lock(&self.state));
    }

    /// Queues and writes one answer; whether it went out.
    fn answer(&self, id: u64, outcome: Outcome) -> bool {
        let number = self.queue(Reply { id, outcome });
        self.written(number)
    }
}

/// One connection offered to this process by the previous generation. Answer it with
/// [`take`](Self::take); dropping it refuses it (the previous generation then keeps
/// serving it).
pub struct Incoming {
    offer: Offer,
    fd: Option<OwnedFd>,
    answers: Arc<Answers>,
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
    /// is refused and stays with the previous generation; so it does if the answer cannot
    /// be sent (the previous generation stopped waiting for it, or is gone): the value
    /// `adopt` made is dropped, which closes this process's copy, and the error is
    /// `BrokenPipe`. (Unlike [`Connections::next`](crate::adapter::Connections::next), it
    /// takes a connection after this process has drained: a caller that tracks what it
    /// takes itself refuses then by dropping the offer.)
    pub fn take<T>(
        self,
        adopt: impl FnOnce(OwnedFd) -> io::Result<T>,
    ) -> Result<(T, Offer), io::Error> {
        let mut adopt = Some(adopt);
        take_all(vec![self], |_, fd| {
            (adopt.take().expect("one connection"))(fd)
        })
        .pop()
        .expect("one result per connection")
    }
}

/// Takes every connection of `incoming` with `adopt` (given each one's kind and socket),
/// as [`Incoming::take`] does, and answers them all in one message: a result per
/// connection, in order.
pub(crate) fn take_all<T>(
    incoming: Vec<Incoming>,
    mut adopt: impl FnMut(StreamKind, OwnedFd) -> io::Result<T>,
) -> Vec<io::Result<(T, Offer)>> {
    let Some(answers) = incoming.first().map(|i| Arc::clone(&i.answers)) else {
        return Vec::new();
    };
    let mut adopted = Vec::with_capacity(incoming.len());
    for mut one in incoming {
        let fd = one
            .fd
            .take()
            .expect("an Incoming holds its socket until answered");
        let offer = std::mem::replace(
            &mut one.offer,
            Offer {
                id: 0,
                kind: StreamKind::Tcp,
                name: String::new(),
                state: Vec::new(),
                unconsumed: Vec::new(),
            },
        );
        let id = offer.id;
        match adopt(offer.kind, fd) {
            Ok(value) => {
                let number = one.answers.queue(Reply {
                    id,
                    outcome: Outcome::Taken,
                });
                adopted.push(Ok((value, offer, number)));
            }
            Err(e) => {
                let reason = if Drained::is(&e) {
                    RefuseReason::Drained
                } else {
                    RefuseReason::BadSocket
                };
                one.answers.queue(Reply {
                    id,
                    outcome: Outcome::Refused(reason),
                });
                adopted.push(Err(e));
            }
        }
    }
    let mut state = lock(&answers.state);
    answers.flush(&mut state);
    let written_below = state.written_below;
    drop(state);
    adopted
        .into_iter()
        .map(|result| {
            let (value, offer, number) = result?;
            if number < written_below {
                Ok((value, offer))
            } else {
                // The previous generation did not hear that this process took it: it keeps
                // it. Dropping `value` closes this copy.
                drop(value);
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the previous generation no longer takes answers: it keeps the connection",
                ))
            }
        })
        .collect()
}

/// Why a connection offered was not taken: this process has drained (its drain is
/// complete; it waits as a fallback, or exits). The previous generation keeps it.
#[derive(Debug)]
pub(crate) struct Drained;

impl Drained {
    /// Whether `e` is this refusal.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Self>())
    }
}

impl fmt::Display for Drained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this process has drained: the previous generation keeps the connection")
    }
}

impl std::error::Error for Drained {}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.fd.is_some() {
            self.answers.answer(
                self.offer.id,
                Outcome::Refused(RefuseReason::ReceiverClosed),
            );
        }
    }
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

    /// The next connection offered if one is waiting.
    pub fn try_next(&self) -> Option<Incoming> {
        self.incoming.try_recv().ok()
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

/// Whether the process that spawned this one reads batched answers: it said so in the
/// environment ([`BATCH_VAR`](endless_core::takeover::BATCH_VAR)), naming itself as the
/// handoff did (`parent_pid`, the pid `ENDLESS_PARENT_PID` named).
pub(crate) fn parent_reads_batches(parent_pid: Option<u32>) -> bool {
    let named = std::env::var(endless_core::takeover::BATCH_VAR)
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    parent_pid.is_some() && named == parent_pid
}

/// The accepts message this process sends with its readiness line when the parent reads
/// batches ([`parent_reads_batches`]): it reads as many offers a message as one message
/// carries descriptors.
pub(crate) fn accepts() -> Vec<u8> {
    let most = u16::try_from(crate::sys::MAX_FDS.min(MAX_BATCH)).unwrap_or(1);
    endless_core::takeover::encode_accepts(most)
}

/// Starts the new side's thread on `channel` (this process's readiness channel, kept after
/// the "ready" line). If `batched` (the old side reads batched answers:
/// [`parent_reads_batches`], and was told with the readiness line that this process reads
/// batches: [`accepts`]), it answers in batches. At the end of the stream (the old side's handover ended) it closes every
/// [`Inbox`]; it keeps the channel, for this process to say that it departs ([`depart`],
/// through the returned reference), until the old side is gone.
pub(crate) fn receive(
    channel: Channel,
    senders: HashMap<String, async_channel::Sender<Incoming>>,
    batched: bool,
) -> io::Result<std::sync::Weak<Channel>> {
    let channel = Arc::new(channel);
    let kept = Arc::downgrade(&channel);
    let answers = Arc::new(Answers {
        channel: Arc::clone(&channel),
        batched,
        state: Mutex::new(AnswersState::default()),
    });
    std::thread::Builder::new()
        .name("endless-takeover".into())
        .spawn(move || {
            receive_loop(&channel, &answers, &senders);
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

fn receive_loop(
    channel: &Channel,
    answers: &Arc<Answers>,
    senders: &HashMap<String, async_channel::Sender<Incoming>>,
) {
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
            answers.queue(Reply {
                id,
                outcome: Outcome::Refused(reason),
            });
        };
        // A record longer than any offer (`SOCK_SEQPACKET`) does not decode: it is longer
        // than its fields declare.
        let offers = match endless_core::takeover::decode_offers(&buf) {
            Ok(offers) => offers,
            // Not even a number to refuse them by: the exchange cannot go on. Ending it
            // leaves every connection not yet taken with the previous generation.
            Err(e) => {
                tracing::warn!(error = %e, "malformed takeover offer");
                break;
            }
        };
        // The i-th socket is the i-th offer's; one too many means the message is not what
        // it says, and none is used.
        let trusted = fds.len() <= offers.len();
        let mut fds = fds.into_iter();
        for offer in offers {
            let fd = fds.next().filter(|_| trusted);
            let offer = match offer {
                Ok(offer) => offer,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed takeover offer");
                    if let Some(id) = e.id() {
                        refuse(id, RefuseReason::Malformed);
                    }
                    continue;
                }
            };
            let Some(fd) = fd else {
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
                answers: Arc::clone(answers),
            };
            // A dropped receiver drops `incoming`, which refuses it.
            if sender.try_send(incoming).is_ok() {
                received += 1;
            } else {
                tracing::debug!(id, "receiver closed");
            }
        }
        // This message's refusals, in one answer.
        answers.send_queued();
    }
    tracing::info!(offers = received, "connection takeover ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use crate::tracker::Tracker;
    use endless_core::takeover::{StreamKind, Upstream};
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

    fn outgoing(name: &str, server: TcpStream, tracker: &Tracker) -> Outgoing {
        Outgoing {
            kind: StreamKind::Tcp,
            name: name.into(),
            state: b"count=3".to_vec(),
            unconsumed: b"pi".to_vec(),
            fd: server.into(),
            guard: tracker.track(None),
        }
    }

    /// The old side's reader of the new side's messages (the driver's task for a child),
    /// on a thread: what it reads goes to the outbox's thread.
    fn follow(channel: &OwnedFd, feed: Feed) {
        let channel = channel.try_clone().unwrap();
        std::thread::spawn(move || {
            let channel = Channel::new(channel).unwrap();
            let mut buf = Vec::new();
            loop {
                if !matches!(channel.recv(&mut buf), Ok(Some(_))) {
                    let _ = feed.send(OutboxEvent::End);
                    return;
                }
                let event = match Upstream::decode(&buf) {
                    Ok(Upstream::Reply(reply)) => OutboxEvent::Replies(vec![reply]),
                    Ok(Upstream::Replies(replies)) => OutboxEvent::Replies(replies),
                    Ok(Upstream::Accepts(most)) => OutboxEvent::Accepts(most),
                    other => OutboxEvent::Bad(io::Error::other(format!("{other:?}"))),
                };
                if feed.send(event).is_err() {
                    return;
                }
            }
        });
    }

    fn outbox_with(channel: OwnedFd, timeout: Duration) -> Outbox {
        let (feed, events) = events();
        follow(&channel, feed.clone());
        Outbox::start(channel, (feed, events), 1, timeout).unwrap()
    }

    fn outbox(channel: OwnedFd) -> Outbox {
        outbox_with(channel, DEFAULT_TIMEOUT)
    }

    /// An old side and a new side on one socketpair; the new side has a receiver "ping"
    /// and reads batches.
    fn sides() -> (Outbox, Inbox) {
        sides_with(DEFAULT_TIMEOUT)
    }

    fn sides_with(timeout: Duration) -> (Outbox, Inbox) {
        let (old, new) = sys::channel_pair().unwrap();
        let mut receivers = Receivers::new();
        let inbox = receivers.register("ping").unwrap();
        receive(Channel::new(new).unwrap(), receivers.close(), true).unwrap();
        // The new side said with its readiness line that it reads batches; the driver's
        // reader passes that on before the handover starts.
        let Ok(Upstream::Accepts(most)) = Upstream::decode(&accepts()) else {
            panic!("not an accepts message");
        };
        assert_eq!(usize::from(most), sys::MAX_FDS.min(MAX_BATCH));
        sys::set_nonblocking(old.as_fd()).unwrap();
        let (feed, events) = events();
        feed.send(OutboxEvent::Accepts(most)).unwrap();
        follow(&old, feed.clone());
        let outbox = Outbox::start(old, (feed, events), 1, timeout).unwrap();
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
        block_on(outbox.send(outgoing("ping", server, &tracker))).unwrap();
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

    /// Hands `n` fresh connections over at once (a task each), each taken; their clients.
    fn hand_over_all(outbox: &Outbox, n: usize, tracker: &Tracker) -> Vec<TcpStream> {
        let executor = async_executor::LocalExecutor::new();
        let mut clients = Vec::new();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (client, server) = tcp_pair();
                clients.push(client);
                let outbox = outbox.clone();
                let job = outgoing("ping", server, tracker);
                executor.spawn(async move { outbox.send(job).await })
            })
            .collect();
        block_on(executor.run(async {
            for task in tasks {
                task.await.unwrap();
            }
        }));
        clients
    }

    /// Many connections handed over at once go many to a message, and each is settled.
    #[test]
    fn many_connections_go_in_batches() {
        const N: usize = 1000;
        let (outbox, inbox) = sides();
        let tracker = Tracker::new();
        let app = std::thread::spawn(move || {
            let mut taken = Vec::new();
            while let Some(first) = block_on(inbox.next()) {
                let mut batch = vec![first];
                batch.extend(std::iter::from_fn(|| inbox.try_next()));
                for result in take_all(batch, |_, fd| Ok(TcpStream::from(fd))) {
                    taken.push(result.unwrap());
                }
            }
            taken
        });
        let mut clients = hand_over_all(&outbox, N, &tracker);
        assert_eq!(tracker.len(), 0, "every guard goes once taken");
        let messages = outbox.messages();
        // Batches fill with what is queued when the thread sends (103 messages in one
        // run): far fewer messages than connections, whatever the timing.
        assert!(
            messages <= (N / 2) as u64,
            "{N} connections in {messages} messages"
        );
        drop(outbox);
        let mut taken = app.join().unwrap();
        assert_eq!(taken.len(), N);
        // The last connection, served by the new side only.
        let (mut stream, _) = taken.pop().unwrap();
        let mut client = clients.pop().unwrap();
        client.write_all(b"x").unwrap();
        let mut got = [0; 1];
        stream.read_exact(&mut got).unwrap();
        drop(stream);
        assert_eq!(client.read(&mut got).unwrap(), 0, "no other copy");
    }

    /// A new side that never answers is cut off after the timeout: the connection stays
    /// with the old side, and the new side's late take fails and closes only its copy.
    #[test]
    fn an_unanswering_new_generation_is_cut_off() {
        let (outbox, inbox) = sides_with(Duration::from_millis(300));
        let tracker = Tracker::new();
        let (mut client, server) = tcp_pair();
        let started = Instant::now();
        let e = block_on(outbox.send(outgoing("ping", server, &tracker))).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(e.failure, HandOverFailure::ChannelClosed), "{e}");
        let (fd, _guard) = e.connection.expect("given back");
        assert!(!outbox.is_open());
        // Late: the answer cannot go out, so the new side does not keep it.
        let incoming = block_on(inbox.next()).expect("offered before the cut-off");
        let e = incoming
            .take(|fd| Ok(TcpStream::from(fd)))
            .expect_err("too late");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        // The old side's copy still serves the client.
        let mut old = TcpStream::from(fd);
        client.write_all(b"y").unwrap();
        let mut got = [0; 1];
        old.read_exact(&mut got).unwrap();
        old.write_all(b"z").unwrap();
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"z");
        // And a connection handed over now is refused at once.
        let (_client, server) = tcp_pair();
        let e = block_on(outbox.send(outgoing("ping", server, &tracker))).unwrap_err();
        assert!(matches!(e.failure, HandOverFailure::ChannelClosed), "{e}");
    }

    /// A new side that takes slowly but steadily is not cut off, however long the whole
    /// takes: the timeout counts from its last answer.
    #[test]
    fn a_slow_but_steady_new_generation_is_not_cut_off() {
        const N: usize = 6;
        let (outbox, inbox) = sides_with(Duration::from_millis(300));
        let tracker = Tracker::new();
        let app = std::thread::spawn(move || {
            let mut taken = 0;
            while let Some(incoming) = block_on(inbox.next()) {
                // Each 100 ms: 600 ms in all, twice the timeout.
                std::thread::sleep(Duration::from_millis(100));
                incoming.take(|fd| Ok(TcpStream::from(fd))).unwrap();
                taken += 1;
            }
            taken
        });
        let _clients = hand_over_all(&outbox, N, &tracker);
        assert!(outbox.is_open());
        drop(outbox);
        assert_eq!(app.join().unwrap(), N);
    }

    #[test]
    fn refused_or_unanswered_connections_come_back() {
        let (outbox, inbox) = sides();
        let tracker = Tracker::new();
        // No receiver of that name.
        let (_client, server) = tcp_pair();
        let e = block_on(outbox.send(outgoing("other", server, &tracker))).unwrap_err();
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
        let e = block_on(outbox.send(outgoing("ping", server, &tracker))).unwrap_err();
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
        let e = block_on(outbox.send(outgoing("ping", server, &tracker))).unwrap_err();
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
            let e = block_on(outbox.send(outgoing("ping", server, &tracker))).unwrap_err();
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
        receive(Channel::new(new).unwrap(), receivers.close(), false).unwrap();
        let old = Channel::new(old).unwrap();
        let (_client, server) = tcp_pair();
        old.send(b"EDLS\x01\x07 garbage", &[server.as_fd()])
            .unwrap();
        assert!(block_on(inbox.next()).is_none(), "the receivers end");
        drop(old);
    }

    fn malformed_offers((old, new): (OwnedFd, OwnedFd)) {
        let mut receivers = Receivers::new();
        let inbox = receivers.register("ping").unwrap();
        receive(Channel::new(new).unwrap(), receivers.close(), false).unwrap();
        let old = Channel::new(old).unwrap();
        let mut buf = Vec::new();
        let mut exchange = |message: &[u8], fd: Option<BorrowedFd<'_>>| {
            old.send(message, fd.as_slice()).unwrap();
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
