//! The queue of the old side's sending thread ([`crate::takeover`]'s `Sender`): what the
//! application hands over (jobs) and what the new generation says, in the order they came,
//! from any number of producers to the one thread.
//!
//! A channel (`std::sync::mpsc`) wakes its receiver for every message. The sending thread
//! has nothing to do with most jobs when they come: while offers wait for their answers,
//! it sends the next batch only once a batch's worth is queued (or an answer frees the
//! window), so each job's wake-up (a `futex` call by the application's thread, a context
//! switch of the sending one) was spent for nothing: with 19,000 sessions handed over,
//! a fifth of the old generation's CPU time. Here the thread says, each time it waits,
//! how many jobs it needs before it can act; a job wakes it only once that many are
//! queued, and every other event (an answer, the end) wakes it at once.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// An event is a job (counted against what the receiver waits for) or not (it wakes the
/// receiver at once).
pub(crate) trait Event {
    /// Whether this is a job.
    fn is_job(&self) -> bool;
}

/// Why [`Receiver::recv_until`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// The deadline passed.
    Timeout,
    /// Every sender is gone and nothing is queued.
    Disconnected,
}

struct State<E> {
    events: VecDeque<E>,
    /// How many of `events` are jobs.
    jobs: usize,
    /// While the receiver waits: how many queued jobs wake it (`usize::MAX`: none do).
    wake_at: Option<usize>,
    senders: usize,
    receiver: bool,
    /// How many times a sender woke the receiver (tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    woken: u64,
}

struct Shared<E> {
    state: Mutex<State<E>>,
    wake: Condvar,
}

impl<E> Shared<E> {
    fn lock(&self) -> MutexGuard<'_, State<E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A new queue: its first sender and its receiver.
pub(crate) fn queue<E: Event>() -> (Sender<E>, Receiver<E>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            jobs: 0,
            wake_at: None,
            senders: 1,
            receiver: true,
            woken: 0,
        }),
        wake: Condvar::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// Puts events in the queue; cloned for each producer.
pub(crate) struct Sender<E> {
    shared: Arc<Shared<E>>,
}

impl<E: Event> Sender<E> {
    /// Queues `event`; gives it back if the receiver is gone.
    pub(crate) fn send(&self, event: E) -> Result<(), E> {
        let mut state = self.shared.lock();
        if !state.receiver {
            return Err(event);
        }
        let job = event.is_job();
        state.events.push_back(event);
        if job {
            state.jobs += 1;
        }
        let wake = match state.wake_at {
            Some(at) => !job || state.jobs >= at,
            None => false,
        };
        if wake {
            // Woken once: later events find it awake.
            state.wake_at = None;
            state.woken += 1;
            drop(state);
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl<E> Clone for Sender<E> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<E> Drop for Sender<E> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            state.wake_at = None;
            drop(state);
            self.shared.wake.notify_one();
        }
    }
}

impl<E> std::fmt::Debug for Sender<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The one consumer of the queue.
pub(crate) struct Receiver<E> {
    shared: Arc<Shared<E>>,
}

impl<E: Event> Receiver<E> {
    /// The next event, if one is queued.
    pub(crate) fn try_recv(&self) -> Option<E> {
        let mut state = self.shared.lock();
        pop(&mut state)
    }

    /// The next event, once one that is not a job is queued or at least `jobs` jobs are
    /// (so `jobs` of 1 takes any event, and `usize::MAX` waits for one that is not a job),
    /// or [`RecvError::Timeout`] at `deadline` (never without one), or
    /// [`RecvError::Disconnected`] once every sender is gone and nothing is queued.
    pub(crate) fn recv_until(
        &self,
        jobs: usize,
        deadline: Option<Instant>,
    ) -> Result<E, RecvError> {
        let jobs = jobs.max(1);
        let mut state = self.shared.lock();
        loop {
            let ready = state.jobs >= jobs || state.events.len() > state.jobs;
            if ready || (state.senders == 0 && !state.events.is_empty()) {
                state.wake_at = None;
                return Ok(pop(&mut state).expect("an event is queued"));
            }
            if state.senders == 0 {
                state.wake_at = None;
                return Err(RecvError::Disconnected);
            }
            state.wake_at = Some(jobs);
            state = match deadline {
                None => self
                    .shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        state.wake_at = None;
                        return Err(RecvError::Timeout);
                    };
                    self.shared
                        .wake
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

fn pop<E: Event>(state: &mut State<E>) -> Option<E> {
    let event = state.events.pop_front()?;
    if event.is_job() {
        state.jobs -= 1;
    }
    Some(event)
}

impl<E> Drop for Receiver<E> {
    fn drop(&mut self) {
        // Senders fail from now on; what is queued goes (as a channel's messages do).
        let events = {
            let mut state = self.shared.lock();
            state.receiver = false;
            state.jobs = 0;
            std::mem::take(&mut state.events)
        };
        drop(events);
    }
}

impl<E> std::fmt::Debug for Receiver<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Job(u32),
        Other(u32),
    }

    impl Event for Ev {
        fn is_job(&self) -> bool {
            matches!(self, Self::Job(_))
        }
    }

    const LONG: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(50);

    #[test]
    fn events_come_out_in_order() {
        let (tx, rx) = queue();
        tx.send(Ev::Job(1)).unwrap();
        tx.send(Ev::Other(2)).unwrap();
        tx.send(Ev::Job(3)).unwrap();
        assert_eq!(rx.recv_until(1, None), Ok(Ev::Job(1)));
        assert_eq!(rx.try_recv(), Some(Ev::Other(2)));
        assert_eq!(rx.try_recv(), Some(Ev::Job(3)));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn fewer_jobs_than_asked_for_do_not_end_the_wait() {
        let (tx, rx) = queue();
        tx.send(Ev::Job(1)).unwrap();
        tx.send(Ev::Job(2)).unwrap();
        let deadline = Instant::now() + SHORT;
        assert_eq!(rx.recv_until(3, Some(deadline)), Err(RecvError::Timeout));
        assert!(Instant::now() >= deadline);
        // Still queued, in order.
        assert_eq!(rx.recv_until(2, None), Ok(Ev::Job(1)));
        assert_eq!(rx.try_recv(), Some(Ev::Job(2)));
    }

    #[test]
    fn an_event_that_is_not_a_job_ends_the_wait_whatever_is_asked() {
        let (tx, rx) = queue();
        tx.send(Ev::Job(1)).unwrap();
        tx.send(Ev::Other(2)).unwrap();
        // Queued first, the job comes first.
        assert_eq!(
            rx.recv_until(usize::MAX, Some(Instant::now() + LONG)),
            Ok(Ev::Job(1))
        );
        assert_eq!(rx.try_recv(), Some(Ev::Other(2)));
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_the_job_that_makes_the_count() {
        let (tx, rx) = queue();
        let waiter = std::thread::spawn(move || {
            let got = rx.recv_until(3, Some(Instant::now() + LONG));
            (got, rx)
        });
        // Wait until the receiver sleeps, asking for 3.
        while tx.shared.lock().wake_at != Some(3) {
            std::thread::yield_now();
        }
        tx.send(Ev::Job(1)).unwrap();
        tx.send(Ev::Job(2)).unwrap();
        // Two jobs leave it asleep.
        assert_eq!(tx.shared.lock().woken, 0);
        tx.send(Ev::Job(3)).unwrap();
        assert_eq!(tx.shared.lock().woken, 1);
        let (got, rx) = waiter.join().unwrap();
        assert_eq!(got, Ok(Ev::Job(1)));
        assert_eq!(rx.try_recv(), Some(Ev::Job(2)));
        assert_eq!(rx.try_recv(), Some(Ev::Job(3)));
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_any_other_event() {
        let (tx, rx) = queue();
        let waiter = std::thread::spawn(move || rx.recv_until(usize::MAX, None));
        while tx.shared.lock().wake_at.is_none() {
            std::thread::yield_now();
        }
        tx.send(Ev::Job(1)).unwrap();
        assert_eq!(tx.shared.lock().woken, 0, "a job woke it");
        tx.send(Ev::Other(2)).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(Ev::Job(1)));
    }

    #[test]
    fn the_last_sender_gone_disconnects_once_the_queue_is_empty() {
        let (tx, rx) = queue();
        let tx2 = tx.clone();
        tx.send(Ev::Job(1)).unwrap();
        drop(tx);
        let deadline = Some(Instant::now() + SHORT);
        assert_eq!(rx.recv_until(5, deadline), Err(RecvError::Timeout));
        let waiter = std::thread::spawn(move || {
            // Fewer jobs than asked for, but no sender is left: they come out, then the end.
            let first = rx.recv_until(5, None);
            (first, rx.recv_until(5, None))
        });
        drop(tx2);
        assert_eq!(
            waiter.join().unwrap(),
            (Ok(Ev::Job(1)), Err(RecvError::Disconnected))
        );
    }

    #[test]
    fn sending_to_a_dropped_receiver_gives_the_event_back() {
        let (tx, rx) = queue();
        tx.send(Ev::Job(1)).unwrap();
        drop(rx);
        assert_eq!(tx.send(Ev::Job(2)), Err(Ev::Job(2)));
    }
}
