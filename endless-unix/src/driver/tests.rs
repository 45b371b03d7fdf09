//! The real driver, driven without a process: a fake [`Runtime`] with a fake clock, fake
//! children whose readiness and exit the test decides, and signals the test sends (the
//! shape of quinn-proto's `Pair`, one level up). Each test follows one restart path end to
//! end through [`Handle`] and checks what an application, an operator and a service
//! manager would see.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::pin::pin;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::Sender;
use endless_core::ready;
use endless_core::{Config, DrainCause, Event, ExitReason, Phase, UpgradeFailure};
use event_listener::Event as Wake;

use crate::handle::{Exit, Handle, Options};
use crate::inherit::Inherited;
use crate::notify::NotifySocket;
use crate::runtime::{BoxFuture, ChildProcess, Readable, ReadinessReader, Runtime};
use crate::signals::{Signal, SignalMap};
use crate::spawn::{self, Executable};

const UPGRADE: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_secs(30);
const REAP: Duration = Duration::from_secs(3);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a fake child's readiness channel delivers next.
#[derive(Debug)]
enum Chunk {
    Bytes(Vec<u8>),
    Eof,
}

/// One fake child process.
#[derive(Debug, Default)]
struct Child {
    /// What its readiness channel delivers, in order.
    channel: VecDeque<Chunk>,
    /// How it ended, once it did (the reaper takes it).
    exit: Option<ExitStatus>,
    /// Signals it received, in order.
    signals: Vec<&'static str>,
    /// Whether `SIGKILL` ends it (a child stuck in the kernel does not).
    unkillable: bool,
}

#[derive(Debug)]
struct World {
    now: Mutex<Instant>,
    /// Woken whenever the test changes the world (time, a child, a signal).
    changed: Wake,
    tasks: async_executor::Executor<'static>,
    children: Mutex<Vec<(u32, Child)>>,
    next_pid: Mutex<u32>,
    signals: Mutex<Option<Sender<Signal>>>,
    /// The command lines spawned.
    spawned: Mutex<Vec<String>>,
    /// The `ENDLESS_FD_*` values of each spawned command, in fd order.
    handoffs: Mutex<Vec<Vec<String>>>,
    /// `Some`: blocking work (the spawn) waits here until the test runs it, as a slow
    /// spawning thread would; `None`: it runs in place.
    deferred: Mutex<Option<Vec<Deferred>>>,
}

/// Blocking work the test runs later.
struct Deferred(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

/// A runtime whose clock, children and signals the test controls.
#[derive(Debug, Clone)]
struct Fake(Arc<World>);

impl Fake {
    fn new() -> Self {
        Self(Arc::new(World {
            now: Mutex::new(Instant::now()),
            changed: Wake::new(),
            tasks: async_executor::Executor::new(),
            children: Mutex::new(Vec::new()),
            next_pid: Mutex::new(4_000_000),
            signals: Mutex::new(None),
            spawned: Mutex::new(Vec::new()),
            handoffs: Mutex::new(Vec::new()),
            deferred: Mutex::new(None),
        }))
    }

    /// From now on, blocking work waits until [`Fake::run_deferred`].
    fn defer_blocking(&self) {
        *lock(&self.0.deferred) = Some(Vec::new());
    }

    /// Runs the blocking work deferred so far, then settles.
    fn run_deferred(&self) {
        let work = lock(&self.0.deferred)
            .replace(Vec::new())
            .unwrap_or_default();
        for Deferred(work) in work {
            work();
        }
        self.settle();
    }

    /// Runs every task that can make progress, until none can.
    fn settle(&self) {
        for _ in 0..10_000 {
            if !self.0.tasks.try_tick() {
                return;
            }
        }
        panic!("the driver does not settle");
    }

    /// Settles until `done` holds, for a test whose other side is a real thread.
    fn settle_until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.settle();
            if done() {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn advance(&self, by: Duration) {
        *lock(&self.0.now) += by;
        self.0.changed.notify(usize::MAX);
        self.settle();
    }

    fn signal(&self, signal: Signal) {
        let sender = lock(&self.0.signals).clone().expect("signals forwarded");
        sender.try_send(signal).expect("the driver listens");
        self.settle();
    }

    fn with_child<T>(&self, pid: u32, f: impl FnOnce(&mut Child) -> T) -> T {
        let mut children = lock(&self.0.children);
        let child = children
            .iter_mut()
            .find(|(p, _)| *p == pid)
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("no child {pid}"));
        let result = f(child);
        drop(children);
        self.0.changed.notify(usize::MAX);
        self.settle();
        result
    }

    /// The pids spawned so far.
    fn pids(&self) -> Vec<u32> {
        lock(&self.0.children).iter().map(|(p, _)| *p).collect()
    }

    fn last_child(&self) -> u32 {
        *self.pids().last().expect("a child was spawned")
    }

    fn say_ready(&self, pid: u32) {
        self.with_child(pid, |c| {
            c.channel.push_back(Chunk::Bytes(ready::message(pid)));
        });
    }

    fn exit(&self, pid: u32, status: ExitStatus) {
        self.with_child(pid, |c| {
            c.channel.push_back(Chunk::Eof);
            c.exit = Some(status);
        });
    }

    fn signals_of(&self, pid: u32) -> Vec<&'static str> {
        self.with_child(pid, |c| c.signals.clone())
    }

    /// Resolves once `f` returns `Some` for the child `pid`, re-checked at every change.
    fn until<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Child) -> Option<T> + Send + 'static,
        pid: u32,
    ) -> BoxFuture<'static, T> {
        let world = Arc::clone(&self.0);
        Box::pin(async move {
            loop {
                let listener = world.changed.listen();
                {
                    let mut children = lock(&world.children);
                    if let Some((_, child)) = children.iter_mut().find(|(p, _)| *p == pid)
                        && let Some(value) = f(child)
                    {
                        return value;
                    }
                }
                listener.await;
            }
        })
    }
}

impl Runtime for Fake {
    fn now(&self) -> Instant {
        *lock(&self.0.now)
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.0.tasks.spawn(task).detach();
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let world = Arc::clone(&self.0);
        Box::pin(async move {
            loop {
                let listener = world.changed.listen();
                if *lock(&world.now) >= deadline {
                    return;
                }
                listener.await;
            }
        })
    }

    fn spawn_child(&self, command: spawn::Command) -> io::Result<Box<dyn ChildProcess>> {
        let line = std::iter::once(command.get_program().as_os_str())
            .chain(command.get_args())
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        lock(&self.0.spawned).push(line);
        let mut fds: Vec<(String, String)> = command
            .get_envs()
            .filter_map(|(k, v)| {
                let k = k.to_str()?.strip_prefix("ENDLESS_FD_")?.to_owned();
                Some((k, v.to_string_lossy().into_owned()))
            })
            .collect();
        fds.sort_by_key(|(fd, _)| fd.parse::<u32>().unwrap_or(u32::MAX));
        lock(&self.0.handoffs).push(fds.into_iter().map(|(_, v)| v).collect());
        let pid = {
            let mut next = lock(&self.0.next_pid);
            *next += 1;
            *next
        };
        lock(&self.0.children).push((pid, Child::default()));
        Ok(Box::new(FakeChild {
            pid,
            runtime: self.clone(),
        }))
    }

    /// In place (the fake spawn does not block, and most tests expect the child at once),
    /// or later, when the test says so.
    fn run_blocking(&self, work: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        let mut deferred = lock(&self.0.deferred);
        match deferred.as_mut() {
            Some(queue) => queue.push(Deferred(work)),
            None => {
                drop(deferred);
                work();
            }
        }
        Ok(())
    }

    fn watch_readable(&self, _fd: Arc<OwnedFd>) -> io::Result<Box<dyn Readable>> {
        Err(io::Error::other(
            "the fake children are watched by themselves",
        ))
    }

    fn readiness_reader(&self, _fd: OwnedFd) -> io::Result<Box<dyn ReadinessReader>> {
        // The channel of the child spawned last (the driver asks right after the spawn).
        Ok(Box::new(FakeChannel {
            pid: self.last_child(),
            runtime: self.clone(),
        }))
    }

    fn forward_signals(&self, _signals: &[Signal], to: Sender<Signal>) -> io::Result<()> {
        *lock(&self.0.signals) = Some(to);
        Ok(())
    }
}

struct FakeChild {
    pid: u32,
    runtime: Fake,
}

impl FakeChild {
    fn record(&self, signal: &'static str, ends: impl FnOnce(&Child) -> Option<ExitStatus>) {
        let mut children = lock(&self.runtime.0.children);
        if let Some((_, child)) = children.iter_mut().find(|(p, _)| *p == self.pid) {
            child.signals.push(signal);
            if child.exit.is_none()
                && let Some(status) = ends(child)
            {
                child.exit = Some(status);
                child.channel.push_back(Chunk::Eof);
            }
        }
        drop(children);
        self.runtime.0.changed.notify(usize::MAX);
    }
}

impl ChildProcess for FakeChild {
    fn id(&self) -> u32 {
        self.pid
    }

    fn start_kill(&mut self) -> io::Result<()> {
        self.record("KILL", |c| {
            (!c.unkillable).then(|| ExitStatus::from_raw(9)) // killed by signal 9
        });
        Ok(())
    }

    fn terminate(&mut self) -> io::Result<()> {
        self.record("TERM", |_| None);
        Ok(())
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        let exited = self.runtime.until(|c| c.exit, self.pid);
        Box::pin(async move { Ok(exited.await) })
    }

    fn kill_left_behind(&mut self) -> io::Result<bool> {
        // A fake pid: never a real process group.
        Ok(false)
    }
}

struct FakeChannel {
    pid: u32,
    runtime: Fake,
}

impl ReadinessReader for FakeChannel {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        let chunk = self.runtime.until(|c| c.channel.pop_front(), self.pid);
        Box::pin(async move {
            match chunk.await {
                Chunk::Bytes(bytes) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    Ok(bytes.len())
                }
                Chunk::Eof => Ok(0),
            }
        })
    }
}

/// A started handle on the fake runtime, with every event it reported.
struct Server {
    rt: Fake,
    handle: Handle,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Server {
    fn start(config: Config) -> Self {
        Self::start_with(config, |options| options)
    }

    fn start_with(config: Config, more: impl FnOnce(Options) -> Options) -> Self {
        let rt = Fake::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let exe = Executable::new("/bin/true", ["--serve"], "/", [("A", "1")]);
        let options = Options::new()
            .config(config)
            .signals(SignalMap::default().with_staged_upgrades())
            .executable(exe)
            .on_event(move |e| lock(&seen).push(e.clone()));
        let handle = Handle::start_with(rt.clone(), more(options), Inherited::empty())
            .expect("the driver starts");
        rt.settle();
        handle.ready();
        rt.settle();
        Self { rt, handle, events }
    }

    /// Without probation: a handover ends with the drain.
    fn config() -> Config {
        Config::new()
            .upgrade_timeout(UPGRADE)
            .drain_timeout(Some(DRAIN))
            .reap_timeout(REAP)
            .probation(Duration::ZERO)
    }

    /// How the lifecycle ended, if it has.
    fn exit(&self) -> Option<Exit> {
        let wait = self.handle.wait();
        let mut wait = pin!(wait);
        match wait
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(exit) => Some(exit),
            Poll::Pending => None,
        }
    }

    /// A task that waits for the end, as an application's `main` does: the slot is filled
    /// once it is woken with the exit.
    fn watch_exit(&self) -> Arc<Mutex<Option<Exit>>> {
        let slot = Arc::new(Mutex::new(None));
        let (handle, filled) = (self.handle.clone(), Arc::clone(&slot));
        self.rt.spawn(Box::pin(async move {
            *lock(&filled) = Some(handle.wait().await);
        }));
        self.rt.settle();
        slot
    }

    fn saw(&self, f: impl Fn(&Event) -> bool) -> bool {
        lock(&self.events).iter().any(f)
    }

    fn phase_changes(&self) -> Vec<Phase> {
        lock(&self.events)
            .iter()
            .filter_map(|e| match e {
                Event::StateChanged { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_restart_hands_over_to_the_ready_child_and_exits_once_drained() {
    let s = Server::start(Server::config());
    let waiter = s.watch_exit();
    assert!(s.handle.is_accepting());
    s.rt.signal(Signal::HUP);
    assert_eq!(
        *lock(&s.rt.0.spawned),
        ["/bin/true --serve"],
        "the same executable and arguments"
    );
    let child = s.rt.last_child();
    assert!(
        s.handle.is_accepting(),
        "still serving while the child starts"
    );
    // Half the readiness line, then the rest: nothing happens before the whole line.
    let line = ready::message(child);
    s.rt.with_child(child, |c| {
        c.channel.push_back(Chunk::Bytes(line[..7].to_vec()));
    });
    assert!(s.handle.is_accepting());
    s.rt.with_child(child, |c| {
        c.channel.push_back(Chunk::Bytes(line[7..].to_vec()));
    });
    assert!(
        !s.handle.is_accepting(),
        "stops accepting once the child is ready"
    );
    // No connection: drained at once.
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 0,
            reason: ExitReason::Drained,
            cause: DrainCause::HandedOver { successor: child },
        })
    );
    assert_eq!(*lock(&waiter), s.exit(), "the waiting application is woken");
    assert_eq!(
        s.phase_changes(),
        [Phase::Forking, Phase::Draining, Phase::Stopped]
    );
    assert!(
        s.rt.signals_of(child).is_empty(),
        "the successor is left alone"
    );
}

#[test]
fn a_child_that_exits_before_ready_leaves_this_process_serving_and_restartable() {
    let s = Server::start(Server::config());
    s.rt.signal(Signal::HUP);
    let child = s.rt.last_child();
    s.rt.exit(child, ExitStatus::from_raw(3 << 8)); // exit code 3
    assert!(s.handle.is_accepting());
    assert!(s.saw(|e| matches!(
        e,
        Event::UpgradeFailed { pid: Some(p), reason: UpgradeFailure::ChildExited(_) } if *p == child
    ) || matches!(
        e,
        Event::UpgradeFailed { pid: Some(p), reason: UpgradeFailure::ChildFailed(_) } if *p == child
    )));
    assert_eq!(s.exit(), None);
    // A later restart spawns again, and works.
    s.rt.signal(Signal::HUP);
    let second = s.rt.last_child();
    assert_ne!(second, child);
    s.rt.say_ready(second);
    assert!(!s.handle.is_accepting());
    assert!(s.exit().is_some());
}

const PROBATION: Duration = Duration::from_secs(5);

/// A server that handed over to its child (ready, no connection: drained at once) and is
/// in probation; with a connection kept from before the handover.
fn in_probation() -> (Server, u32) {
    let s = Server::start(Server::config().probation(PROBATION));
    s.rt.signal(Signal::HUP);
    let child = s.rt.last_child();
    s.rt.say_ready(child);
    assert!(!s.handle.is_accepting());
    assert_eq!(
        s.phase_changes(),
        [Phase::Forking, Phase::Draining, Phase::Probation]
    );
    assert_eq!(s.exit(), None, "the fallback waits");
    (s, child)
}

/// Whether `accepting_again` resolves now, and with what.
fn accepting_again(s: &Server) -> Option<bool> {
    let handle = s.handle.clone();
    let slot = Arc::new(Mutex::new(None));
    let filled = Arc::clone(&slot);
    s.rt.spawn(Box::pin(async move {
        *lock(&filled) = Some(handle.accepting_again().await);
    }));
    s.rt.settle();
    *lock(&slot)
}

#[test]
fn a_successor_killed_in_probation_gives_the_service_back() {
    let (s, child) = in_probation();
    assert_eq!(
        accepting_again(&s),
        None,
        "parked while the successor serves"
    );
    s.rt.exit(child, ExitStatus::from_raw(9)); // SIGKILL
    assert!(s.saw(|e| matches!(
        e,
        Event::TookServiceBack { pid, status: endless_core::ChildStatus::Signaled(9) } if *pid == child
    )));
    assert!(s.handle.is_accepting());
    assert_eq!(accepting_again(&s), Some(true));
    // Connections accepted from now on are served, not asked to close.
    let (ours, _theirs) = UnixStream::pair().unwrap();
    assert!(!s.handle.track(&ours).is_closing());
    assert_eq!(s.exit(), None);
    // And a later restart works.
    s.rt.signal(Signal::HUP);
    let second = s.rt.last_child();
    assert_ne!(second, child);
    s.rt.say_ready(second);
    assert!(!s.handle.is_accepting());
}

#[test]
fn a_successor_that_departs_ends_the_probation_and_nothing_comes_back() {
    let (s, child) = in_probation();
    s.rt.with_child(child, |c| {
        c.channel
            .push_back(Chunk::Bytes(endless_core::takeover::encode_departure(
                endless_core::Departure::Stopping,
            )));
    });
    assert!(s.saw(|e| matches!(e, Event::SuccessorDeparted { pid, .. } if *pid == child)));
    assert!(s.exit().is_some(), "exits at once");
    assert_eq!(accepting_again(&s), Some(false));
    // Its later exit, even a forced one, changes nothing.
    s.rt.exit(child, ExitStatus::from_raw(1 << 8));
    assert!(!s.saw(|e| matches!(e, Event::TookServiceBack { .. })));
}

#[test]
fn the_departure_is_read_before_the_exit_even_when_both_arrive_at_once() {
    let (s, child) = in_probation();
    // Said and exited with code 1 (a forced stop) before the driver ran again.
    s.rt.with_child(child, |c| {
        c.channel
            .push_back(Chunk::Bytes(endless_core::takeover::encode_departure(
                endless_core::Departure::HandedOver,
            )));
        c.channel.push_back(Chunk::Eof);
        c.exit = Some(ExitStatus::from_raw(1 << 8));
    });
    assert!(!s.saw(|e| matches!(e, Event::TookServiceBack { .. })));
    assert!(s.exit().is_some());
}

/// The channel is a stream: the readiness line and the messages after it arrive in any
/// chunks, a message split between two reads, or sharing one with the line.
#[test]
fn messages_are_split_from_the_stream_whatever_its_chunks() {
    let s = Server::start(Server::config().probation(PROBATION));
    s.rt.signal(Signal::HUP);
    let child = s.rt.last_child();
    let mut stream = ready::message(child);
    stream.extend(endless_core::takeover::encode_departure(
        endless_core::Departure::Stopping,
    ));
    let line = ready::message(child).len();
    s.rt.with_child(child, |c| {
        c.channel
            .push_back(Chunk::Bytes(stream[..line + 5].to_vec()));
    });
    assert!(!s.handle.is_accepting(), "ready");
    assert!(!s.saw(|e| matches!(e, Event::SuccessorDeparted { .. })));
    assert_eq!(s.exit(), None, "in probation");
    s.rt.with_child(child, |c| {
        c.channel
            .push_back(Chunk::Bytes(stream[line + 5..].to_vec()));
    });
    assert!(s.saw(|e| matches!(e, Event::SuccessorDeparted { pid, .. } if *pid == child)));
    assert!(s.exit().is_some(), "the departure ends the probation");
}

/// Bytes that cannot start a message end the reading of the channel; the child's exit is
/// still known, and a crash still takes the service back.
#[test]
fn garbage_after_the_readiness_line_ends_the_reading_not_the_fallback() {
    let (s, child) = in_probation();
    s.rt.with_child(child, |c| {
        c.channel.push_back(Chunk::Bytes(b"garbage".to_vec()));
    });
    assert_eq!(s.exit(), None);
    s.rt.exit(child, ExitStatus::from_raw(9));
    assert!(s.saw(|e| matches!(e, Event::TookServiceBack { pid, .. } if *pid == child)));
    assert!(s.handle.is_accepting());
}

#[test]
fn the_probation_ends_on_the_runtime_clock() {
    let (s, _child) = in_probation();
    s.rt.advance(PROBATION - Duration::from_millis(1));
    assert_eq!(s.exit(), None);
    s.rt.advance(Duration::from_millis(1));
    assert_eq!(
        s.exit().map(|e| e.reason),
        Some(ExitReason::Drained),
        "the drain's exit, after the probation"
    );
    assert_eq!(accepting_again(&s), Some(false));
}

#[test]
fn a_child_not_ready_in_time_is_killed_on_the_runtime_clock() {
    let s = Server::start(Server::config());
    s.rt.signal(Signal::HUP);
    let child = s.rt.last_child();
    s.rt.advance(UPGRADE - Duration::from_millis(1));
    assert!(
        s.rt.signals_of(child).is_empty(),
        "killed before its deadline"
    );
    s.rt.advance(Duration::from_millis(1));
    assert_eq!(s.rt.signals_of(child), ["KILL"]);
    assert!(s.saw(|e| matches!(
        e,
        Event::UpgradeFailed {
            reason: UpgradeFailure::TimedOut,
            ..
        }
    )));
    // Its exit is reaped and known.
    assert!(s.saw(|e| matches!(e, Event::KilledChildExited { pid, .. } if *pid == child)));
    assert!(s.handle.is_accepting());
    assert_eq!(s.exit(), None);
}

#[test]
fn the_drain_deadline_closes_what_is_left_on_the_runtime_clock() {
    let s = Server::start(Server::config());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let guard = s.handle.track(&ours);
    s.rt.signal(Signal::TERM);
    assert!(!s.handle.is_accepting());
    assert!(
        guard.is_closing(),
        "the connection is asked to close once idle"
    );
    s.rt.advance(DRAIN - Duration::from_millis(1));
    assert_eq!(s.exit(), None, "the drain waits for the connection");
    s.rt.advance(Duration::from_millis(1));
    // Forced: the socket is shut down under the application.
    let mut buf = [0u8; 1];
    assert_eq!(io::Read::read(&mut &theirs, &mut buf).unwrap(), 0);
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 0,
            reason: ExitReason::DeadlinePassed,
            cause: DrainCause::Shutdown,
        })
    );
    drop(guard);
}

/// A server asked to stop while its new child starts, and a child that `SIGKILL` does not
/// end (yet).
fn stopped_while_an_unkillable_child_starts() -> (Server, u32) {
    let s = Server::start(Server::config());
    s.rt.signal(Signal::HUP);
    let child = s.rt.last_child();
    s.rt.with_child(child, |c| c.unkillable = true);
    s.rt.signal(Signal::TERM);
    (s, child)
}

#[test]
fn a_stop_while_the_spawn_is_under_way_spawns_nothing_after_the_end() {
    let s = Server::start(Server::config());
    s.rt.defer_blocking();
    s.rt.signal(Signal::HUP);
    assert!(s.rt.pids().is_empty(), "the spawn waits on its thread");
    s.rt.signal(Signal::TERM);
    assert!(s.exit().is_some(), "nothing to wait for: no child yet");
    // The spawning thread gets to run only now: the lifecycle has ended, so no successor
    // may start (it would serve on after a stop).
    s.rt.run_deferred();
    assert!(
        s.rt.pids().is_empty(),
        "spawned after the end: {:?}",
        s.rt.pids()
    );
}

#[test]
fn a_spawn_that_completes_late_still_hands_over() {
    let s = Server::start(Server::config());
    s.rt.defer_blocking();
    s.rt.signal(Signal::HUP);
    assert!(s.rt.pids().is_empty());
    s.rt.run_deferred();
    let child = s.rt.last_child();
    s.rt.say_ready(child);
    assert!(!s.handle.is_accepting(), "handed over to {child}");
}

#[test]
fn a_stop_while_the_child_starts_exits_only_once_the_killed_child_is_reaped() {
    let (s, child) = stopped_while_an_unkillable_child_starts();
    assert_eq!(s.rt.signals_of(child), ["KILL"]);
    assert_eq!(s.exit(), None, "the killed child still runs");
    assert_eq!(s.phase_changes().last(), Some(&Phase::Exiting));
    // A late ready from it changes nothing.
    s.rt.say_ready(child);
    assert_eq!(s.exit(), None);
    s.rt.exit(child, ExitStatus::from_raw(9));
    assert_eq!(
        s.exit().map(|e| (e.reason, e.cause)),
        Some((ExitReason::Drained, DrainCause::Shutdown))
    );
}

#[test]
fn a_killed_child_never_reaped_delays_the_exit_only_until_the_reap_deadline() {
    let (s, child) = stopped_while_an_unkillable_child_starts();
    s.rt.advance(REAP - Duration::from_millis(1));
    assert_eq!(s.exit(), None);
    s.rt.advance(Duration::from_millis(1));
    assert!(s.saw(|e| matches!(e, Event::NotReaped { pids } if pids == &[child])));
    assert!(s.exit().is_some());
}

#[test]
fn a_rolled_back_staged_generation_is_asked_to_stop_through_its_owner() {
    let s = Server::start(Server::config());
    s.rt.signal(Signal::USR1); // stage
    let child = s.rt.last_child();
    s.rt.say_ready(child);
    assert!(
        s.handle.is_accepting(),
        "both generations serve while staged"
    );
    s.rt.signal(Signal::WINCH); // roll back
    assert_eq!(s.rt.signals_of(child), ["TERM"]);
    s.rt.exit(child, ExitStatus::from_raw(0));
    assert!(s.saw(|e| matches!(e, Event::StoppedChildExited { pid, .. } if *pid == child)));
    assert!(s.handle.is_accepting());
    assert_eq!(s.exit(), None);
}

/// The service manager's socket, read by the test.
fn notify_socket() -> (UnixDatagram, NotifySocket, tempdir::Dir) {
    let dir = tempdir::Dir::new("driver-notify");
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_nonblocking(true).unwrap();
    (socket, NotifySocket::Path(path), dir)
}

fn messages(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 512];
    std::iter::from_fn(|| {
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect()
}

#[test]
fn under_a_service_manager_a_stop_without_deadline_renews_its_lease_on_the_runtime_clock() {
    let (socket, target, _dir) = notify_socket();
    let s = Server::start_with(Server::config().drain_timeout(None), |o| {
        o.notify_socket(target)
    });
    assert_eq!(messages(&socket), ["READY=1\nSTATUS=Serving"]);
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let guard = s.handle.track(&ours);
    s.rt.signal(Signal::TERM);
    assert_eq!(
        messages(&socket),
        [
            "STOPPING=1\nSTATUS=Stopping: draining connections",
            "EXTEND_TIMEOUT_USEC=30000000"
        ]
    );
    s.rt.advance(Duration::from_secs(9));
    assert_eq!(messages(&socket), Vec::<String>::new());
    s.rt.advance(Duration::from_secs(1));
    assert_eq!(messages(&socket), ["EXTEND_TIMEOUT_USEC=30000000"]);
    s.rt.advance(Duration::from_secs(10));
    assert_eq!(messages(&socket), ["EXTEND_TIMEOUT_USEC=30000000"]);
    // The end of the drain ends the renewals.
    drop(guard);
    s.rt.settle();
    assert!(s.exit().is_some());
    s.rt.advance(Duration::from_secs(60));
    assert_eq!(messages(&socket), Vec::<String>::new());
}

#[test]
fn under_a_service_manager_staged_upgrades_are_refused_and_a_failed_restart_reclaims_the_main_pid()
{
    let (socket, target, _dir) = notify_socket();
    let s = Server::start_with(Server::config(), |o| o.notify_socket(target));
    messages(&socket);
    s.rt.signal(Signal::USR1); // stage
    assert!(s.saw(|e| matches!(
        e,
        Event::Refused {
            reason: endless_core::Refusal::UnderServiceManager,
            ..
        }
    )));
    assert!(lock(&s.rt.0.spawned).is_empty());
    s.rt.signal(Signal::HUP);
    let child = s.rt.last_child();
    s.rt.exit(child, ExitStatus::from_raw(1 << 8));
    let sent = messages(&socket);
    assert!(
        sent[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{sent:?}"
    );
    assert_eq!(
        sent[1..],
        [format!(
            "MAINPID={}\nREADY=1\nSTATUS=Serving; the last upgrade failed, was rolled back or died after it was ready (see the log)",
            std::process::id()
        )]
    );
}

/// A directory removed at the end of the test.
mod tempdir {
    use std::path::PathBuf;

    pub(super) struct Dir(pub(super) PathBuf);

    impl Dir {
        pub(super) fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "endless-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A restart command, run on a thread of its own against the server's control socket.
fn restart_command(
    pid_file: &std::path::Path,
) -> std::thread::JoinHandle<Result<crate::control::Restarted, crate::control::RestartError>> {
    let pid_file = pid_file.to_owned();
    std::thread::spawn(move || crate::control::restart(&pid_file, Duration::from_secs(30)))
}

/// [`restart_command`], until proven.
fn restart_command_until_proven(
    pid_file: &std::path::Path,
) -> std::thread::JoinHandle<Result<crate::control::Restarted, crate::control::RestartError>> {
    let pid_file = pid_file.to_owned();
    std::thread::spawn(move || {
        crate::control::restart_until_proven(&pid_file, Duration::from_secs(30))
    })
}

fn with_pid_file(dir: &tempdir::Dir) -> impl FnOnce(Options) -> Options {
    let pid_file = dir.0.join("server.pid");
    move |o| o.pid_file(pid_file)
}

#[test]
fn the_restart_command_gets_the_answer_to_its_own_request() {
    use crate::control::RestartError;
    let dir = tempdir::Dir::new("driver-control-ready");
    let s = Server::start_with(Server::config(), with_pid_file(&dir));
    let pid_file = dir.0.join("server.pid");

    let first = restart_command(&pid_file);
    s.rt.settle_until("the command's restart", || !s.rt.pids().is_empty());
    let child = s.rt.last_child();
    // A second command while the attempt runs is refused at once, with its own answer.
    let second = restart_command(&pid_file);
    s.rt.settle_until("the refusal", || second.is_finished());
    let second = second.join().unwrap();
    assert!(
        matches!(&second, Err(RestartError::Refused { pid, reason })
            if *pid == std::process::id() && reason == "a restart is already in progress"),
        "{second:?}"
    );
    assert_eq!(second.unwrap_err().exit_code(), 3);
    assert!(!first.is_finished(), "answered before the child was ready");
    s.rt.say_ready(child);
    s.rt.settle_until("the answer", || first.is_finished());
    let restarted = first.join().unwrap().unwrap();
    assert_eq!((restarted.old, restarted.new), (std::process::id(), child));
    assert!(!s.handle.is_accepting());
}

#[test]
fn the_restart_command_is_told_a_crash_with_its_status_and_a_timeout() {
    use crate::control::RestartError;
    let dir = tempdir::Dir::new("driver-control-fail");
    let s = Server::start_with(Server::config(), with_pid_file(&dir));
    let pid_file = dir.0.join("server.pid");

    // The new binary exits 3: its readiness channel ends, then it is reaped.
    let command = restart_command(&pid_file);
    s.rt.settle_until("the command's restart", || s.rt.pids().len() == 1);
    let child = s.rt.last_child();
    s.rt.exit(child, ExitStatus::from_raw(3 << 8));
    s.rt.settle_until("the answer", || command.is_finished());
    let crashed = command.join().unwrap().unwrap_err();
    assert!(
        matches!(crashed, RestartError::Crashed { child: Some(c), status: endless_core::ChildStatus::Exited(3), .. } if c == child),
        "{crashed:?}"
    );
    assert_eq!(crashed.exit_code(), 1);

    // The next one hangs: killed at the upgrade timeout, on the runtime's clock.
    let command = restart_command(&pid_file);
    s.rt.settle_until("the command's restart", || s.rt.pids().len() == 2);
    s.rt.advance(UPGRADE);
    s.rt.settle_until("the answer", || command.is_finished());
    let late = command.join().unwrap().unwrap_err();
    assert!(
        matches!(late, RestartError::NotReadyInTime { .. }),
        "{late:?}"
    );
    assert!(s.handle.is_accepting());
}

#[test]
fn the_restart_command_until_proven_is_answered_at_the_end_of_the_probation() {
    let dir = tempdir::Dir::new("driver-control-proven");
    let s = Server::start_with(Server::config().probation(PROBATION), with_pid_file(&dir));
    let pid_file = dir.0.join("server.pid");
    let waiter = s.watch_exit();

    let command = restart_command_until_proven(&pid_file);
    s.rt.settle_until("the command's restart", || !s.rt.pids().is_empty());
    let child = s.rt.last_child();
    s.rt.say_ready(child);
    assert!(!s.handle.is_accepting());
    assert_eq!(
        s.phase_changes(),
        [Phase::Forking, Phase::Draining, Phase::Probation]
    );
    s.rt.advance(PROBATION - Duration::from_millis(1));
    assert!(
        !command.is_finished(),
        "answered before the probation's end"
    );
    s.rt.advance(Duration::from_millis(1));
    s.rt.settle_until("the answer", || command.is_finished());
    let restarted = command.join().unwrap().unwrap();
    assert_eq!((restarted.old, restarted.new), (std::process::id(), child));
    assert!(lock(&waiter).is_some(), "the lifecycle ended");
}

#[test]
fn the_restart_command_until_proven_is_told_of_the_fallback() {
    use crate::control::RestartError;
    let dir = tempdir::Dir::new("driver-control-fell-back");
    let s = Server::start_with(Server::config().probation(PROBATION), with_pid_file(&dir));
    let pid_file = dir.0.join("server.pid");

    let command = restart_command_until_proven(&pid_file);
    s.rt.settle_until("the command's restart", || !s.rt.pids().is_empty());
    let child = s.rt.last_child();
    s.rt.say_ready(child);
    // The pid file names the new generation (a fake one: this test wrote nothing there).
    std::fs::write(&pid_file, format!("{child}\n")).unwrap();
    assert!(!command.is_finished());
    s.rt.exit(child, ExitStatus::from_raw(1 << 8));
    s.rt.settle_until("the answer", || command.is_finished());
    let fell_back = command.join().unwrap().unwrap_err();
    assert!(
        matches!(
            &fell_back,
            RestartError::FellBack { old, new, status: endless_core::ChildStatus::Exited(1), .. }
                if *old == std::process::id() && *new == child
        ),
        "{fell_back:?}"
    );
    assert_eq!(fell_back.exit_code(), 6);
    assert!(s.handle.is_accepting());
    // Answered once the pid file names this process again.
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        std::process::id().to_string()
    );
    assert_eq!(s.exit(), None);

    // A plain request still answers at the handover.
    let command = restart_command(&pid_file);
    s.rt.settle_until("the command's restart", || s.rt.pids().len() == 2);
    let second = s.rt.last_child();
    s.rt.say_ready(second);
    s.rt.settle_until("the answer", || command.is_finished());
    assert_eq!(command.join().unwrap().unwrap().new, second);
    assert_eq!(s.exit(), None, "in probation");
}

#[test]
fn a_restart_request_queued_behind_the_end_is_answered_not_dropped() {
    use std::io::Read;
    let dir = tempdir::Dir::new("driver-control-late");
    let s = Server::start_with(Server::config(), with_pid_file(&dir));
    // A connection kept: the drain waits for it.
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let guard = s.handle.track(&ours);
    s.rt.signal(Signal::HUP);
    let child = s.rt.last_child();
    s.rt.say_ready(child);
    assert!(!s.handle.is_accepting());
    // The end, and behind it a request that the control socket accepted before this
    // process stopped accepting and read since.
    let (asked, mut command) = UnixStream::pair().unwrap();
    let inputs = s.handle.inputs();
    inputs
        .try_send(super::Message::Input(endless_core::Input::Drained))
        .unwrap();
    inputs
        .try_send(super::Message::Restart {
            connection: asked,
            kind: endless_core::control::RequestKind::UntilProven,
        })
        .unwrap();
    s.rt.settle();
    assert!(s.exit().is_some());
    command
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut line = Vec::new();
    command.read_to_end(&mut line).unwrap();
    assert_eq!(
        endless_core::control::decode_answer(&line),
        Ok((
            std::process::id(),
            endless_core::control::Answer::Moved { to: child }
        ))
    );
    drop(guard);
}

#[test]
fn application_state_is_produced_off_the_driver_and_handed_to_the_child() {
    let s = Server::start(Server::config());
    s.handle.hand_over_state(7, || b"hits=41".to_vec());
    s.rt.signal(Signal::HUP);
    s.rt.settle_until("the child spawned once the state is written", || {
        !lock(&s.rt.0.spawned).is_empty()
    });
    // The entry's value ends in the identity of the state file (`:<dev>:<ino>`).
    let handoffs = lock(&s.rt.0.handoffs).clone();
    assert_eq!(handoffs.len(), 1);
    assert!(
        matches!(&handoffs[0][..], [v] if v.starts_with("other:endless.state:")),
        "{handoffs:?}"
    );
    let child = s.rt.last_child();
    s.rt.say_ready(child);
    assert!(!s.handle.is_accepting());
}

#[test]
fn a_provider_that_panics_leaves_the_restart_going_without_state() {
    let s = Server::start(Server::config());
    s.handle
        .hand_over_state(1, || panic!("the cache is poisoned"));
    s.rt.signal(Signal::HUP);
    s.rt.settle_until("the child spawned without state", || {
        !lock(&s.rt.0.spawned).is_empty()
    });
    assert_eq!(*lock(&s.rt.0.handoffs), [Vec::<String>::new()]);
    s.rt.say_ready(s.rt.last_child());
    assert!(!s.handle.is_accepting(), "the restart went on");
}

#[test]
fn a_provider_that_never_returns_fails_only_its_restart() {
    let s = Server::start(Server::config());
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    s.handle.hand_over_state(1, move || {
        let _ = lock(&wait).recv();
        b"late".to_vec()
    });
    s.rt.signal(Signal::HUP);
    // The driver is not blocked: a second request is answered (refused) meanwhile.
    s.rt.signal(Signal::HUP);
    assert!(s.saw(|e| matches!(e, Event::Refused { .. })));
    assert!(lock(&s.rt.0.spawned).is_empty());
    s.rt.advance(UPGRADE);
    assert!(s.saw(|e| matches!(
        e,
        Event::UpgradeFailed {
            pid: None,
            reason: UpgradeFailure::TimedOut
        }
    )));
    assert!(s.handle.is_accepting());
    // The late state is dropped; the next restart spawns exactly one child, with its own.
    release.send(()).unwrap();
    release.send(()).unwrap();
    s.rt.signal(Signal::HUP);
    s.rt.settle_until("the second restart's child", || {
        !lock(&s.rt.0.spawned).is_empty()
    });
    std::thread::sleep(Duration::from_millis(20));
    s.rt.settle();
    assert_eq!(lock(&s.rt.0.spawned).len(), 1);
    s.rt.say_ready(s.rt.last_child());
    assert!(!s.handle.is_accepting());
}

#[test]
fn state_asked_for_after_ready_is_an_error_and_endless_names_are_reserved() {
    let s = Server::start(Server::config()); // it reported ready
    assert!(matches!(
        s.handle.inherited_state(1),
        Err(crate::state::StateError::AfterReady)
    ));
    let (socket, _peer) = UnixStream::pair().unwrap();
    assert!(matches!(
        s.handle.register(
            "endless.mine",
            endless_core::FdKind::Other,
            std::os::fd::AsFd::as_fd(&socket)
        ),
        Err(crate::handle::ListenError::ReservedName { .. })
    ));
}
