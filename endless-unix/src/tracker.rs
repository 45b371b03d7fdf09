//! Connection tracking for the drain.
//!
//! Every connection a server accepts is registered with the [`Tracker`] and holds a
//! [`ConnectionGuard`] for as long as it lives. When the lifecycle says
//! [`CloseIdle`](endless_core::Action::CloseIdle), each guard's [`closing`](ConnectionGuard::closing)
//! future resolves, so that a connection handler can finish what it is doing and close at
//! the next request boundary. When the lifecycle says
//! [`ForceClose`](endless_core::Action::ForceClose), the tracker shuts down every registered
//! socket (`shutdown(SHUT_RDWR)`), whether or not its handler cooperates: reads return end
//! of file, writes fail, and the handler ends. [`Tracker::drained`] resolves once no guard
//! is left.
//!
//! It is runtime-neutral (atomics, a mutex and `event-listener`), so endless-tokio and
//! endless-smol share it.

use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use event_listener::Event;
use rustc_hash::FxHashMap;

// The phases, in order; a tracker starts serving, and serves again after a fallback.
const SERVING: u8 = 0;
const CLOSING: u8 = 1;
const KILLED: u8 = 2;

/// The connections of one process.
///
/// # Examples
///
/// ```
/// use endless_unix::tracker::Tracker;
///
/// let tracker = Tracker::new();
/// let guard = tracker.track(None);
/// assert_eq!(tracker.len(), 1);
/// tracker.close_idle();
/// assert!(guard.is_closing());
/// drop(guard);
/// futures_lite::future::block_on(tracker.drained()); // resolves: nothing is left
/// ```
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The sockets to shut down on a forced close, by guard key (a counter of this
    /// process's: a fast hash, which nobody outside can steer).
    sockets: Mutex<FxHashMap<u64, RawFd>>,
    next_key: AtomicU64,
    count: AtomicUsize,
    phase: AtomicU8,
    /// When the drain closes the connections still open, if it ever does: set before the
    /// phase becomes closing, so that whoever wakes up then sees it.
    deadline: Mutex<Option<Instant>>,
    /// Notified when the phase changes.
    phase_changed: Event,
    /// Notified when the count drops to zero.
    emptied: Event,
    /// Set when the drain completes (nothing left while closing, [`Tracker::seal_if_drained`]):
    /// from then on a connection offered by the previous generation is refused, until the
    /// process serves again. The phase is read or changed under this lock, so that a seal
    /// and a return to serving are ordered.
    sealed: Mutex<bool>,
}

/// What [`Tracker::seal_if_drained`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sealing {
    /// Nothing was left while closing: the drain is complete, and sealed.
    Sealed,
    /// A connection is alive (registered after the count reached zero).
    Busy,
    /// Connections are served as usual (the process took the service back): no drain.
    Serving,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("connections", &self.len())
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a connection. `socket` is the fd to shut down on a forced close; the
    /// caller guarantees that it stays open until the guard is dropped (drop the guard
    /// before the socket: [`Tracked`](crate::Tracked) declares its fields in that order).
    ///
    /// A guard without a socket holds the drain open like a connection: an accept in
    /// progress takes one, so that a connection accepted at the moment the process stops
    /// accepting is tracked before the drain can be declared complete.
    pub fn track(&self, socket: Option<RawFd>) -> ConnectionGuard {
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        if let Some(fd) = socket {
            self.inner.lock().insert(key, fd);
        }
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        // Registered after a forced close: the socket goes at once.
        if self.inner.phase.load(Ordering::SeqCst) == KILLED
            && let Some(fd) = socket
        {
            let _ = crate::sys::shutdown_both(fd);
        }
        ConnectionGuard {
            inner: Arc::clone(&self.inner),
            key,
            shared: None,
        }
    }

    /// The number of connections alive.
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Whether no connection is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether [`close_idle`](Self::close_idle) (or a forced close) happened.
    #[inline]
    pub fn is_closing(&self) -> bool {
        self.inner.phase.load(Ordering::SeqCst) >= CLOSING
    }

    /// Asks every connection to close once it is idle.
    pub fn close_idle(&self) {
        self.inner.advance(CLOSING);
    }

    /// Asks every connection to close once it is idle, as [`close_idle`](Self::close_idle),
    /// and says when the drain will close the ones still open ([`drain_deadline`](Self::drain_deadline));
    /// `None`: it never does. endless' driver calls it with the lifecycle's deadline
    /// ([`Lifecycle::drain_deadline`](endless_core::Lifecycle::drain_deadline)).
    pub fn close_idle_until(&self, deadline: Option<Instant>) {
        *self.inner.deadline() = deadline;
        self.inner.advance(CLOSING);
    }

    /// When the drain closes every connection still open (a forced close), once
    /// connections are asked to close and if the drain has a deadline (the drain timeout
    /// of endless' configuration); `None` otherwise.
    ///
    /// A connection that can say goodbye in its protocol (a websocket's close frame) does
    /// so a little before: endless-hyper's `ws::deadline_near` waits for that moment.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use endless_unix::tracker::Tracker;
    ///
    /// let tracker = Tracker::new();
    /// assert_eq!(tracker.drain_deadline(), None);
    /// let deadline = Instant::now() + Duration::from_secs(30);
    /// tracker.close_idle_until(Some(deadline));
    /// assert_eq!(tracker.drain_deadline(), Some(deadline));
    /// ```
    pub fn drain_deadline(&self) -> Option<Instant> {
        if self.is_closing() {
            *self.inner.deadline()
        } else {
            None
        }
    }

    /// Serves as before [`close_idle`](Self::close_idle) or a forced close: the process took
    /// the service back after its successor died. Connections registered from now on are
    /// neither asked to close nor shut down; those asked before have acted on it. Lifts the
    /// seal of a completed drain.
    pub(crate) fn serve_again(&self) {
        let mut sealed = self.inner.sealed();
        *sealed = false;
        *self.inner.deadline() = None;
        if self.inner.phase.swap(SERVING, Ordering::SeqCst) != SERVING {
            self.inner.phase_changed.notify(usize::MAX);
        }
    }

    /// Completes the drain if nothing is left while closing: from then on
    /// [`track_unless_drained`](Self::track_unless_drained) refuses, until
    /// [`serve_again`](Self::serve_again). Checked and set under one lock with those, so a
    /// connection is either registered before the drain is declared complete (and the drain
    /// waits for it) or refused.
    pub(crate) fn seal_if_drained(&self) -> Sealing {
        let mut sealed = self.inner.sealed();
        if self.inner.phase.load(Ordering::SeqCst) < CLOSING {
            return Sealing::Serving;
        }
        if !self.is_empty() {
            return Sealing::Busy;
        }
        *sealed = true;
        Sealing::Sealed
    }

    /// Registers a connection as [`track`](Self::track) does, unless the drain is complete
    /// ([`seal_if_drained`](Self::seal_if_drained)): then `None`. For the connections the
    /// previous generation hands over, which may come at any time: one taken after this
    /// process drained would be served by nobody once it exits.
    pub(crate) fn track_unless_drained(&self, socket: Option<RawFd>) -> Option<ConnectionGuard> {
        let sealed = self.inner.sealed();
        if *sealed {
            return None;
        }
        Some(self.track(socket))
    }

    /// Resolves once connections are served as usual again after a
    /// [`close_idle`](Self::close_idle) (this process took the service back): at once if
    /// they are.
    pub async fn serving(&self) {
        loop {
            if self.inner.phase.load(Ordering::SeqCst) == SERVING {
                return;
            }
            let listener = self.inner.phase_changed.listen();
            if self.inner.phase.load(Ordering::SeqCst) == SERVING {
                return;
            }
            listener.await;
        }
    }

    /// Shuts down every registered socket now, and any registered later.
    pub fn force_close(&self) {
        self.inner.advance(KILLED);
        let sockets = self.inner.lock();
        let mut shut = 0usize;
        for fd in sockets.values() {
            // The guard that registered `fd` is alive (its removal takes this lock), so
            // `fd` is still the connection's socket.
            if crate::sys::shutdown_both(*fd).is_ok() {
                shut += 1;
            }
        }
        tracing::debug!(connections = sockets.len(), shut, "forced close");
    }

    /// Resolves once no connection is alive.
    pub async fn drained(&self) {
        loop {
            if self.is_empty() {
                return;
            }
            let listener = self.inner.emptied.listen();
            if self.is_empty() {
                return;
            }
            listener.await;
        }
    }

    /// Resolves once connections are asked to close.
    pub async fn closing(&self) {
        self.inner.wait_phase(CLOSING).await;
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, FxHashMap<u64, RawFd>> {
        // A panic while holding the lock leaves the map consistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sealed(&self) -> MutexGuard<'_, bool> {
        // Only ever assigned whole: a poisoned lock holds a consistent value.
        self.sealed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deadline(&self) -> MutexGuard<'_, Option<Instant>> {
        // Only ever assigned whole: a poisoned lock holds a consistent value.
        self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn advance(&self, phase: u8) {
        if self.phase.fetch_max(phase, Ordering::SeqCst) < phase {
            self.phase_changed.notify(usize::MAX);
        }
    }

    async fn wait_phase(&self, phase: u8) {
        loop {
            if self.phase.load(Ordering::SeqCst) >= phase {
                return;
            }
            let listener = self.phase_changed.listen();
            if self.phase.load(Ordering::SeqCst) >= phase {
                return;
            }
            listener.await;
        }
    }
}

/// Keeps one connection registered with its [`Tracker`]; dropping it unregisters.
pub struct ConnectionGuard {
    inner: Arc<Inner>,
    key: u64,
    /// Set once the guard is shared by the halves of a split stream: the registration
    /// ends with the last of them.
    shared: Option<Arc<()>>,
}

impl fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("key", &self.key)
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl ConnectionGuard {
    /// Whether the connection is asked to close once idle.
    #[inline]
    pub fn is_closing(&self) -> bool {
        self.inner.phase.load(Ordering::SeqCst) >= CLOSING
    }

    /// Resolves once the connection is asked to close: finish the request in hand, then
    /// close (an HTTP server answers with `Connection: close`).
    ///
    /// In a loop that reads the connection between requests, select on
    /// [`tracker`](Self::tracker)`().closing()` instead (the same moment, without borrowing the
    /// connection).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Request};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let endless = Endless::start()?;
    /// let listener = endless.tcp_listener("push", "127.0.0.1:0")?;
    /// let mut client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let (mut connection, _) = listener.accept().await?.expect("still accepting");
    ///
    /// tokio::spawn(async move {
    ///     // An idle subscriber: say goodbye when the drain asks, then close.
    ///     connection.guard().closing().await;
    ///     connection.write_all(b"bye\n").await
    /// });
    /// endless.request(Request::Stop); // starts the drain
    /// let mut goodbye = String::new();
    /// client.read_to_string(&mut goodbye).await?;
    /// assert_eq!(goodbye, "bye\n");
    /// assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub async fn closing(&self) {
        self.inner.wait_phase(CLOSING).await;
    }

    /// The tracker this connection belongs to (for code that hands the connection itself
    /// away, to a protocol library, and still wants to know when to close it).
    pub fn tracker(&self) -> Tracker {
        Tracker {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Resolves once the connection is being force-closed.
    pub async fn killed(&self) {
        self.inner.wait_phase(KILLED).await;
    }

    /// Stops shutting down the socket on a forced close (the connection still counts), for
    /// a caller that is about to give the socket away or close it early.
    pub fn forget_socket(&self) {
        self.inner.lock().remove(&self.key);
    }

    /// A second guard of the same registration, for the other half of a split stream: the
    /// connection counts, and its socket is shut down on a forced close, until both are
    /// dropped. Crate-private: only halves that own the socket between them share a
    /// guard, so that the registration always ends before the socket closes.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn share(&mut self) -> Self {
        let shared = self.shared.get_or_insert_with(Arc::default);
        Self {
            inner: Arc::clone(&self.inner),
            key: self.key,
            shared: Some(Arc::clone(shared)),
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        // Of a shared registration, only the last guard ends it (`into_inner` is `Some`
        // for exactly one of guards dropped at the same time on different threads).
        if let Some(shared) = self.shared.take()
            && Arc::into_inner(shared).is_none()
        {
            return;
        }
        let mut sockets = self.inner.lock();
        sockets.remove(&self.key);
        let left = self.inner.count.fetch_sub(1, Ordering::SeqCst) - 1;
        drop(sockets);
        if left == 0 {
            self.inner.emptied.notify(usize::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_completed_drain_is_sealed_until_the_process_serves_again() {
        let tracker = Tracker::new();
        // Serving: nothing to seal, and a connection taken over is taken.
        assert_eq!(tracker.seal_if_drained(), Sealing::Serving);
        let taken = tracker
            .track_unless_drained(None)
            .expect("taken while serving");
        tracker.close_idle();
        // Closing with a connection left: not drained yet; one taken now counts too.
        assert_eq!(tracker.seal_if_drained(), Sealing::Busy);
        let late = tracker
            .track_unless_drained(None)
            .expect("taken while draining");
        drop(taken);
        assert_eq!(tracker.seal_if_drained(), Sealing::Busy);
        drop(late);
        // Nothing left: sealed; from now on a connection offered is refused.
        assert_eq!(tracker.seal_if_drained(), Sealing::Sealed);
        assert!(tracker.track_unless_drained(None).is_none());
        assert!(tracker.is_empty());
        // The service taken back: taken again, and no drain to seal.
        tracker.serve_again();
        assert_eq!(tracker.seal_if_drained(), Sealing::Serving);
        let again = tracker
            .track_unless_drained(None)
            .expect("taken after serving again");
        assert_eq!(tracker.len(), 1);
        drop(again);
    }

    #[test]
    fn drained_waits_for_the_last_guard() {
        let tracker = Tracker::new();
        let a = tracker.track(None);
        let b = tracker.track(None);
        let t = tracker.clone();
        let waiter = std::thread::spawn(move || future::block_on(t.drained()));
        drop(a);
        assert_eq!(tracker.len(), 1);
        assert!(!waiter.is_finished());
        drop(b);
        waiter.join().unwrap();
        assert!(tracker.is_empty());
    }

    #[test]
    fn closing_wakes_every_guard() {
        let tracker = Tracker::new();
        let guards: Vec<_> = (0..8).map(|_| tracker.track(None)).collect();
        let waiters: Vec<_> = guards
            .into_iter()
            .map(|g| std::thread::spawn(move || future::block_on(g.closing())))
            .collect();
        tracker.close_idle();
        for w in waiters {
            w.join().unwrap();
        }
        // Later guards see it at once.
        future::block_on(tracker.track(None).closing());
    }

    #[test]
    fn serving_again_after_a_drain_is_not_closing() {
        // What a readiness probe reads (endless-hyper's `Probes`): closing from the drain
        // (or a forced close) until the process takes the service back.
        let tracker = Tracker::new();
        assert!(!tracker.is_closing());
        future::block_on(tracker.serving());
        for close in [Tracker::close_idle, Tracker::force_close] {
            let before = tracker.track(None);
            close(&tracker);
            assert!(tracker.is_closing() && before.is_closing());
            let t = tracker.clone();
            let waiter = std::thread::spawn(move || future::block_on(t.serving()));
            tracker.serve_again();
            waiter.join().unwrap();
            assert!(!tracker.is_closing());
            // Connections of the new serving period are not asked to close.
            assert!(!tracker.track(None).is_closing());
        }
    }

    #[test]
    fn the_drain_deadline_lasts_one_drain() {
        use std::time::{Duration, Instant};
        let tracker = Tracker::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        tracker.close_idle_until(Some(deadline));
        assert_eq!(tracker.drain_deadline(), Some(deadline));
        // A connection registered later reads it too.
        assert_eq!(
            tracker.track(None).tracker().drain_deadline(),
            Some(deadline)
        );
        // Taking the service back ends it: no deadline while serving, and none in a
        // drain that has none.
        tracker.serve_again();
        assert_eq!(tracker.drain_deadline(), None);
        tracker.close_idle();
        assert_eq!(tracker.drain_deadline(), None);
    }

    #[test]
    fn force_close_shuts_registered_sockets_down() {
        let tracker = Tracker::new();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let guard = tracker.track(Some(ours.as_raw_fd()));
        let (untracked, mut untracked_peer) = UnixStream::pair().unwrap();
        tracker.force_close();
        // The peer sees end of file: the connection is really closed, not just forgotten.
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
        // An untracked socket is untouched.
        (&untracked).write_all(b"x").unwrap();
        assert_eq!(untracked_peer.read(&mut buf).unwrap(), 1);
        future::block_on(guard.killed());
        // A connection registered after the forced close is shut down at once.
        let (late, mut late_peer) = UnixStream::pair().unwrap();
        let _late_guard = tracker.track(Some(late.as_raw_fd()));
        assert_eq!(late_peer.read(&mut buf).unwrap(), 0);
        drop(guard);
        drop(ours);
    }

    #[test]
    fn a_shared_guard_counts_once_until_the_last_is_dropped() {
        let tracker = Tracker::new();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut first = tracker.track(Some(ours.as_raw_fd()));
        let second = first.share();
        let third = first.share();
        assert_eq!(tracker.len(), 1);
        drop(first);
        drop(third);
        assert_eq!(tracker.len(), 1);
        // The socket is still registered: a forced close reaches it.
        tracker.force_close();
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
        drop(second);
        assert!(tracker.is_empty());
        assert!(tracker.inner.lock().is_empty());
        // Dropped on several threads at once, exactly one ends the registration.
        for _ in 0..200 {
            let mut a = tracker.track(None);
            let b = a.share();
            let t = std::thread::spawn(move || drop(b));
            drop(a);
            t.join().unwrap();
            assert!(tracker.is_empty());
        }
    }

    #[test]
    fn forgotten_socket_is_not_shut_down() {
        let tracker = Tracker::new();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let guard = tracker.track(Some(ours.as_raw_fd()));
        guard.forget_socket();
        tracker.force_close();
        (&ours).write_all(b"y").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).unwrap(), 1);
        assert_eq!(tracker.len(), 1);
    }
}
