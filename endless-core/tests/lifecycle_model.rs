//! Model-based property test of the lifecycle (proptest-state-machine, as in firezone's
//! connlib tests): arbitrary interleavings of every input and of passing time are applied
//! both to a small reference model and to the real machine. After every step the two must
//! agree, and the real machine's outputs, replayed against a simulated world of child
//! processes, must keep the lifecycle's promises:
//!
//! - at most one child process at a time (besides a rolled-back staged one that is still
//!   stopping), none spawned while the successor runs, and only known, live children are
//!   ever killed or stopped (never the successor); a killed child is reaped later (its exit
//!   arrives at any time, during another upgrade too);
//! - listeners stop accepting only while they accept, only after the current child
//!   reported ready (not a staged one: on the commit), or on a stop;
//! - the fallback: they accept again ([`Action::ResumeAccepting`]) only, and always, when
//!   the successor ends abnormally (a signal, a non-zero exit) while this process drains
//!   after handing over to it or waits in probation, and it had not departed; the process
//!   is then running and a restart spawns a child again;
//! - they are released ([`Action::ReleaseListeners`]) only on a stop drain (right after
//!   [`Action::StopAccepting`]), or while the fallback drains when the successor departs or
//!   exits cleanly (then always); once released they never accept again, and the process
//!   only ends;
//! - an inherited process that reported ready tells its predecessor that it goes
//!   ([`Action::Depart`]) once in its life: when it starts a restart of its own (before
//!   the spawn), or when it drains (before it stops accepting), saying why; a fresh one,
//!   or one that never was ready, never does;
//! - a handover ([`Action::HandOver`]) stays open exactly while the process drains after
//!   it: it ends ([`Action::EndHandOver`]) when that drain ends, or when the process takes
//!   the service back, before it accepts again or exits;
//! - the process exits only when drained, on a hammer, once the drain deadline passed, or
//!   from probation (its end, a stop or a hammer, the successor's departure or clean exit),
//!   and only once every child it killed was reaped or the reap deadline passed; it gives
//!   up the fallback of a successor that may still need it only once the probation passed
//!   (at once without one) or on a stop or a hammer in probation;
//! - a first ready claims the main pid only in a new generation, serving again (after a
//!   failed upgrade, or the fallback) always does; unclaimed inherited fds are closed once,
//!   at the first ready;
//! - the service manager's stop timeout is extended only under one, only while a stop
//!   drains, and renewed lease by lease when the drain has no deadline;
//! - after any failed upgrade the process is running and a restart spawns a child again;
//! - a process owes its parent exactly one "ready";
//! - every phase change is announced by a `StateChanged` event, and every input leaves an
//!   event or an action (a refused one an `Event::Refused`);
//! - nothing panics, and no deadline is left in the past after `handle_timeout`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use endless_core::{
    Action, ChildFailure, ChildStatus, Config, Departure, DrainCause, EXTEND_PERIOD, Event, Input,
    Lifecycle, Origin, Output, Phase, RepeatedStop, Request, Status, UpgradeFailure,
};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// The pid of the first child spawned; each later one gets the next pid.
const FIRST_PID: u32 = 100;

/// [`EXTEND_PERIOD`] in the model's milliseconds.
const PERIOD_MS: u64 = EXTEND_PERIOD.as_millis() as u64;

/// How a child ends, in the model: cleanly, with an error, or killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Exit code 0: the successor stopped as asked; no crash.
    Clean,
    /// Exit code 1.
    Failed,
    /// `SIGKILL` (the OOM killer, an operator).
    Killed,
}

impl End {
    fn status(self) -> ChildStatus {
        match self {
            Self::Clean => ChildStatus::Exited(0),
            Self::Failed => ChildStatus::Exited(1),
            Self::Killed => ChildStatus::Signaled(9),
        }
    }

    /// Whether a successor that ends so, without having departed, needs its fallback.
    fn crash(self) -> bool {
        self != Self::Clean
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelPhase {
    Running {
        ready: bool,
    },
    Forking {
        child: Option<u32>,
        deadline: Option<u64>,
        staged: bool,
    },
    Staged {
        child: u32,
    },
    Draining {
        successor: Option<u32>,
        deadline: Option<u64>,
        /// When the stop timeout's extension is renewed next.
        renew: Option<u64>,
        /// This process takes the service back if the successor crashes: it handed over,
        /// and the successor has neither departed nor exited cleanly.
        fallback: bool,
    },
    Probation {
        successor: u32,
        until: u64,
    },
    Exiting {
        deadline: u64,
    },
    Stopped,
}

#[derive(Debug, Clone)]
struct Model {
    inherited: bool,
    upgrade_ms: u64,
    drain_ms: Option<u64>,
    repeated_stop_hammers: bool,
    service_manager: bool,
    reap_ms: u64,
    /// 0: no probation, the fallback ends with the drain.
    probation_ms: u64,
    now: u64,
    phase: ModelPhase,
    /// The pid the next spawned child gets. The kernel never hands out the pid of a child
    /// that was not reaped yet (a killed one, a stopping one, the successor), so a spawn
    /// always reports a pid not seen before; other inputs name any pid, stale or unknown.
    next_pid: u32,
    /// Children the machine killed that were not reaped yet.
    killed: BTreeSet<u32>,
}

#[derive(Debug, Clone, Copy)]
enum Transition {
    Restart,
    Stage,
    Commit,
    Rollback,
    Stop,
    Hammer,
    Ready,
    Spawned(u32),
    SpawnFailed,
    ChildReady(u32),
    ChildFailed(u32),
    ChildExited(u32, End),
    SuccessorDeparted(u32, Departure),
    Drained,
    Tick(u64),
    Timeout,
}

impl Model {
    fn config(&self) -> Config {
        Config::new()
            .upgrade_timeout(Duration::from_millis(self.upgrade_ms))
            .drain_timeout(self.drain_ms.map(Duration::from_millis))
            .repeated_stop(if self.repeated_stop_hammers {
                RepeatedStop::Hammer
            } else {
                RepeatedStop::Ignore
            })
            .service_manager(self.service_manager)
            .reap_timeout(Duration::from_millis(self.reap_ms))
            .probation(Duration::from_millis(self.probation_ms))
    }

    fn drain(&self, successor: Option<u32>) -> ModelPhase {
        let leases = successor.is_none() && self.service_manager && self.drain_ms.is_none();
        ModelPhase::Draining {
            successor,
            deadline: self.drain_ms.map(|d| self.now + d),
            renew: leases.then_some(self.now + PERIOD_MS),
            fallback: successor.is_some(),
        }
    }

    /// The drain is over: a fallback still needed waits out its probation, if there is
    /// one; otherwise the process ends.
    fn drain_over(&self) -> ModelPhase {
        match self.phase {
            ModelPhase::Draining {
                successor: Some(successor),
                fallback: true,
                ..
            } if self.probation_ms > 0 => ModelPhase::Probation {
                successor,
                until: self.now + self.probation_ms,
            },
            _ => self.end(),
        }
    }

    /// The process exits once its killed children are reaped.
    fn end(&self) -> ModelPhase {
        if self.killed.is_empty() {
            ModelPhase::Stopped
        } else {
            ModelPhase::Exiting {
                deadline: self.now + self.reap_ms,
            }
        }
    }

    fn child(&self) -> Option<u32> {
        match self.phase {
            ModelPhase::Forking { child, .. } => child,
            ModelPhase::Staged { child } => Some(child),
            _ => None,
        }
    }

    /// The generation this process handed over to, while it drains or waits for it.
    fn successor(&self) -> Option<u32> {
        match self.phase {
            ModelPhase::Draining { successor, .. } => successor,
            ModelPhase::Probation { successor, .. } => Some(successor),
            _ => None,
        }
    }

    fn deadline(&self) -> Option<u64> {
        match self.phase {
            ModelPhase::Forking { deadline, .. } => deadline,
            ModelPhase::Draining {
                deadline, renew, ..
            } => match (deadline, renew) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            ModelPhase::Probation { until, .. } => Some(until),
            ModelPhase::Exiting { deadline } => Some(deadline),
            _ => None,
        }
    }
}

struct LifecycleModel;

impl ReferenceStateMachine for LifecycleModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        (
            any::<bool>(),
            0u64..50,
            prop::option::weighted(0.8, 0u64..50),
            any::<bool>(),
            any::<bool>(),
            0u64..50,
            prop_oneof![1 => Just(0u64), 3 => 1u64..50],
        )
            .prop_map(
                |(
                    inherited,
                    upgrade_ms,
                    drain_ms,
                    repeated_stop_hammers,
                    service_manager,
                    reap_ms,
                    probation_ms,
                )| {
                    Model {
                        inherited,
                        upgrade_ms,
                        drain_ms,
                        repeated_stop_hammers,
                        service_manager,
                        reap_ms,
                        probation_ms,
                        now: 0,
                        phase: ModelPhase::Running { ready: false },
                        next_pid: FIRST_PID,
                        killed: BTreeSet::new(),
                    }
                },
            )
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        // Mostly the pid the machine waits for, sometimes any other: one seen before (stale)
        // or the next one (unknown).
        let any_pid = FIRST_PID..=state.next_pid;
        let pid = match state.child() {
            Some(child) => prop_oneof![3 => Just(child), 1 => any_pid].boxed(),
            None => any_pid.boxed(),
        };
        // An exit or a departure is often the successor's.
        let gone = match state.successor() {
            Some(successor) => prop_oneof![2 => Just(successor), 1 => pid.clone()].boxed(),
            None => pid.clone(),
        };
        // An exit is often that of a killed child, which the machine waits for at the end.
        let exited = if state.killed.is_empty() {
            gone.clone()
        } else {
            let killed: Vec<u32> = state.killed.iter().copied().collect();
            prop_oneof![1 => gone.clone(), 2 => prop::sample::select(killed)].boxed()
        };
        let end = prop_oneof![Just(End::Clean), Just(End::Failed), Just(End::Killed)].boxed();
        let how = prop_oneof![Just(Departure::HandedOver), Just(Departure::Stopping)].boxed();
        // A new child, or a duplicate report of the one the machine waits for.
        let spawned = match state.child() {
            Some(child) => prop_oneof![3 => Just(state.next_pid), 1 => Just(child)].boxed(),
            None => Just(state.next_pid).boxed(),
        };
        let any = prop_oneof![
            3 => Just(Transition::Restart),
            1 => Just(Transition::Stage),
            1 => Just(Transition::Commit),
            1 => Just(Transition::Rollback),
            1 => Just(Transition::Stop),
            1 => Just(Transition::Hammer),
            2 => Just(Transition::Ready),
            3 => spawned.prop_map(Transition::Spawned),
            1 => Just(Transition::SpawnFailed),
            3 => pid.clone().prop_map(Transition::ChildReady),
            1 => pid.prop_map(Transition::ChildFailed),
            3 => (exited, end.clone()).prop_map(|(pid, end)| Transition::ChildExited(pid, end)),
            1 => (gone, how.clone()).prop_map(|(pid, how)| Transition::SuccessorDeparted(pid, how)),
            2 => Just(Transition::Drained),
            3 => (0u64..80).prop_map(Transition::Tick),
            1 => Just(Transition::Tick(PERIOD_MS)),
            2 => Just(Transition::Timeout),
        ];
        // Arbitrary inputs seldom line up into a handover and what follows it: one step in
        // three is the next one on that road (the fallback's inputs, once handed over).
        let next = match state.phase {
            ModelPhase::Running { ready: false } => Just(Transition::Ready).boxed(),
            ModelPhase::Running { ready: true } => Just(Transition::Restart).boxed(),
            ModelPhase::Forking { child: None, .. } => {
                Just(Transition::Spawned(state.next_pid)).boxed()
            }
            ModelPhase::Forking {
                child: Some(child), ..
            } => Just(Transition::ChildReady(child)).boxed(),
            ModelPhase::Staged { .. } => Just(Transition::Commit).boxed(),
            ModelPhase::Draining {
                successor: Some(successor),
                ..
            }
            | ModelPhase::Probation { successor, .. } => prop_oneof![
                2 => end.prop_map(move |end| Transition::ChildExited(successor, end)),
                1 => how.prop_map(move |how| Transition::SuccessorDeparted(successor, how)),
                1 => Just(Transition::Drained),
                1 => Just(Transition::Timeout),
                1 => (0u64..80).prop_map(Transition::Tick),
            ]
            .boxed(),
            _ => any.clone().boxed(),
        };
        prop_oneof![2 => any, 1 => next].boxed()
    }

    /// Keeps shrunk sequences realistic: a spawn reports a new pid or the awaited child.
    fn preconditions(state: &Model, t: &Transition) -> bool {
        match *t {
            Transition::Spawned(pid) => pid == state.next_pid || state.child() == Some(pid),
            _ => true,
        }
    }

    fn apply(mut m: Model, t: &Transition) -> Model {
        use ModelPhase::*;
        if let Transition::Spawned(pid) = *t {
            m.next_pid = m.next_pid.max(pid + 1);
        }
        // The children the machine kills on this transition, and those reaped.
        match (*t, m.phase) {
            (
                Transition::Timeout,
                Forking {
                    child: Some(c),
                    deadline: Some(d),
                    ..
                },
            ) if m.now >= d => {
                m.killed.insert(c);
            }
            (
                Transition::ChildFailed(_) | Transition::Rollback | Transition::Stop,
                Forking { child: Some(c), .. },
            ) if pid_or(t, c) == c => {
                m.killed.insert(c);
            }
            (Transition::Spawned(_), Forking { child: None, .. }) => {}
            (Transition::Spawned(pid), _) if m.child() != Some(pid) => {
                m.killed.insert(pid);
            }
            _ => {}
        }
        let reaped = matches!(*t, Transition::ChildExited(pid, _) if m.killed.remove(&pid));
        let running = Running { ready: true };
        m.phase = match (*t, m.phase) {
            (Transition::ChildExited(..), Exiting { .. }) if reaped && m.killed.is_empty() => {
                Stopped
            }
            (_, Exiting { .. } | Stopped)
                if !matches!(t, Transition::Timeout | Transition::Tick(_)) =>
            {
                m.phase
            }
            (Transition::Tick(ms), phase) => {
                m.now += ms;
                phase
            }
            (Transition::Stage, Running { ready: true }) if m.service_manager => running,
            (Transition::Restart | Transition::Stage, Running { ready: true }) => Forking {
                child: None,
                deadline: Some(m.now + m.upgrade_ms),
                staged: matches!(t, Transition::Stage),
            },
            (Transition::Commit, Staged { child }) => m.drain(Some(child)),
            (Transition::Rollback, Forking { .. } | Staged { .. }) => running,
            (Transition::Stop, Running { .. } | Forking { .. } | Staged { .. }) => m.drain(None),
            (Transition::Stop, Draining { .. }) if m.repeated_stop_hammers => m.drain_over(),
            (Transition::Hammer, Draining { .. }) => m.drain_over(),
            // Nothing is left to drain: a stop or a hammer ends the wait, whatever a
            // repeated stop means.
            (Transition::Stop | Transition::Hammer, Probation { .. }) => m.end(),
            (Transition::Ready, Running { ready: false }) => running,
            (
                Transition::Spawned(pid),
                Forking {
                    child: None,
                    deadline,
                    staged,
                },
            ) => Forking {
                child: Some(pid),
                deadline,
                staged,
            },
            (Transition::SpawnFailed, Forking { child: None, .. }) => running,
            (
                Transition::ChildReady(pid),
                Forking {
                    child: Some(c),
                    staged,
                    ..
                },
            ) if c == pid => {
                if staged {
                    Staged { child: pid }
                } else {
                    m.drain(Some(pid))
                }
            }
            (
                Transition::ChildFailed(pid) | Transition::ChildExited(pid, _),
                Forking { child: Some(c), .. },
            ) if c == pid => running,
            (Transition::ChildExited(pid, _), Staged { child }) if child == pid => running,
            // The successor ends while this process is its fallback: a crash gives the
            // service back to this process; a clean exit needs no fallback.
            (
                Transition::ChildExited(pid, end),
                Draining {
                    successor: Some(successor),
                    deadline,
                    renew,
                    fallback: true,
                },
            ) if successor == pid => {
                if end.crash() {
                    running
                } else {
                    Draining {
                        successor: Some(successor),
                        deadline,
                        renew,
                        fallback: false,
                    }
                }
            }
            (Transition::ChildExited(pid, end), Probation { successor, .. })
                if successor == pid =>
            {
                if end.crash() {
                    running
                } else {
                    m.end()
                }
            }
            // It said it goes (onward, or the service stops): no fallback any more.
            (
                Transition::SuccessorDeparted(pid, _),
                Draining {
                    successor: Some(successor),
                    deadline,
                    renew,
                    fallback: true,
                },
            ) if successor == pid => Draining {
                successor: Some(successor),
                deadline,
                renew,
                fallback: false,
            },
            (Transition::SuccessorDeparted(pid, _), Probation { successor, .. })
                if successor == pid =>
            {
                m.end()
            }
            (Transition::Drained, Draining { .. }) => m.drain_over(),
            (
                Transition::Timeout,
                Forking {
                    deadline: Some(d), ..
                },
            ) if m.now >= d => running,
            (
                Transition::Timeout,
                Draining {
                    deadline: Some(d), ..
                },
            ) if m.now >= d => m.drain_over(),
            (
                Transition::Timeout,
                Draining {
                    successor,
                    deadline,
                    renew: Some(r),
                    fallback,
                },
            ) if m.now >= r => Draining {
                successor,
                deadline,
                renew: Some(m.now + PERIOD_MS),
                fallback,
            },
            (Transition::Timeout, Probation { until, .. }) if m.now >= until => m.end(),
            (Transition::Timeout, Exiting { deadline }) if m.now >= deadline => {
                m.killed.clear();
                Stopped
            }
            (_, phase) => phase,
        };
        // A timeout acts on every deadline due, the one its transition armed too.
        if let (Transition::Timeout, Exiting { deadline }) = (*t, m.phase)
            && m.now >= deadline
        {
            m.killed.clear();
            m.phase = Stopped;
        }
        m
    }
}

/// The pid a transition names, or `default`.
fn pid_or(t: &Transition, default: u32) -> u32 {
    match *t {
        Transition::ChildFailed(pid) => pid,
        _ => default,
    }
}

/// The real machine plus a simulated world built from what it asked for.
struct World {
    lc: Lifecycle,
    t0: Instant,
    /// Children that run: reported spawned, neither killed, reaped nor handed over to.
    live: BTreeSet<u32>,
    /// The child this process handed over to, while it runs (until it is reaped).
    successor: Option<u32>,
    /// The successor said that it goes ([`Input::SuccessorDeparted`]).
    departed: bool,
    /// Children asked to stop (rolled-back staged generations), until they exit.
    stopping: BTreeSet<u32>,
    /// Children killed ([`Action::KillChild`]) and not reaped yet: their exit is reported
    /// later, possibly while another upgrade waits for its own child.
    killed: BTreeSet<u32>,
    /// When the current drain began (ms), to check exits against the deadline.
    drain_started: Option<u64>,
    /// When the drain after the last handover ended ([`Action::EndHandOver`], ms), to
    /// check the end of the fallback against the probation.
    drain_ended: Option<u64>,
    /// The listeners accept (parked by [`Action::StopAccepting`]).
    accepting: bool,
    /// [`Action::ReleaseListeners`] was seen: they never accept again.
    released: bool,
    /// [`Action::HandOver`] was seen, and not [`Action::EndHandOver`] since.
    handover_open: bool,
    exited: bool,
    notified_parent: u32,
    /// `ReceiveConnections` actions seen.
    received: u32,
    /// `Announce(Ready)` actions seen.
    announced_ready: u32,
    /// `CloseUnclaimed` actions seen.
    closed_unclaimed: u32,
    /// This process told its predecessor that it goes ([`Action::Depart`]): once in a life.
    told_parent: bool,
}

impl World {
    /// The successor may still need this process as its fallback: it runs, and it has not
    /// said that it goes.
    fn successor_needs_fallback(&self) -> bool {
        self.successor.is_some() && !self.departed
    }
}

struct LifecycleTest;

impl StateMachineTest for LifecycleTest {
    type SystemUnderTest = World;
    type Reference = LifecycleModel;

    fn init_test(m: &Model) -> World {
        let origin = if m.inherited {
            Origin::Inherited
        } else {
            Origin::Fresh
        };
        World {
            lc: Lifecycle::new(m.config(), origin),
            t0: Instant::now(),
            live: BTreeSet::new(),
            successor: None,
            departed: false,
            stopping: BTreeSet::new(),
            killed: BTreeSet::new(),
            drain_started: None,
            drain_ended: None,
            accepting: true,
            released: false,
            handover_open: false,
            exited: false,
            notified_parent: 0,
            received: 0,
            announced_ready: 0,
            told_parent: false,
            closed_unclaimed: 0,
        }
    }

    fn apply(mut w: World, m: &Model, t: Transition) -> World {
        // `m` is the model *after* the transition; `now` is unchanged by all but Tick.
        let now = w.t0 + Duration::from_millis(m.now);
        let child_before = w.lc.child();
        let phase_before = w.lc.phase();
        // What the world was before this step: whether the successor needed a fallback,
        // and which one it was.
        let needed_before = w.successor_needs_fallback();
        let successor_before = w.successor;
        let is_successor = |pid| successor_before == Some(pid);
        let told_before = w.told_parent;
        let input = match t {
            Transition::Restart => Some(Input::Request(Request::Restart)),
            Transition::Stage => Some(Input::Request(Request::Stage)),
            Transition::Commit => Some(Input::Request(Request::Commit)),
            Transition::Rollback => Some(Input::Request(Request::Rollback)),
            Transition::Stop => Some(Input::Request(Request::Stop)),
            Transition::Hammer => Some(Input::Request(Request::Hammer)),
            Transition::Ready => Some(Input::Ready),
            Transition::Spawned(pid) => {
                w.live.insert(pid);
                Some(Input::ChildSpawned { pid })
            }
            Transition::SpawnFailed => Some(Input::SpawnFailed {
                reason: "simulated".into(),
            }),
            Transition::ChildReady(pid) => Some(Input::ChildReady { pid }),
            Transition::ChildFailed(pid) => Some(Input::ChildFailed {
                pid,
                reason: ChildFailure::ChannelClosed,
            }),
            Transition::ChildExited(pid, end) => {
                // Only a child that runs can exit; a reaped pid is gone.
                let successor = is_successor(pid);
                if successor {
                    w.successor = None;
                }
                if w.live.remove(&pid)
                    || w.stopping.remove(&pid)
                    || w.killed.remove(&pid)
                    || successor
                {
                    Some(Input::ChildExited {
                        pid,
                        status: end.status(),
                    })
                } else {
                    None
                }
            }
            Transition::SuccessorDeparted(pid, how) => {
                // A message: it may be stale, or name a pid that is no successor.
                if is_successor(pid) {
                    w.departed = true;
                }
                Some(Input::SuccessorDeparted { pid, how })
            }
            Transition::Drained => Some(Input::Drained),
            Transition::Tick(_) => None,
            Transition::Timeout => {
                w.lc.handle_timeout(now);
                if let Some(next) = w.lc.poll_timeout() {
                    assert!(next > now, "a deadline was left in the past");
                }
                None
            }
        };
        let handled = input.is_some();
        if let Some(input) = input {
            w.lc.handle(input, now);
        }

        // The successor crashed while this process was its fallback: it must serve again.
        let crashed =
            matches!(t, Transition::ChildExited(pid, end) if is_successor(pid) && end.crash());
        let falls_back =
            needed_before && crashed && matches!(phase_before, Phase::Draining | Phase::Probation);
        // The successor no longer needs a fallback: it said it goes, or it exited cleanly.
        let let_go = needed_before
            && match t {
                Transition::SuccessorDeparted(pid, _) => is_successor(pid),
                Transition::ChildExited(pid, end) => is_successor(pid) && !end.crash(),
                _ => false,
            };

        let mut outputs = 0;
        let mut phase_seen = phase_before;
        // The reap deadline passed with these children killed and not reaped.
        let mut not_reaped = false;
        // This step's departure, stop of the accept loops, release, resumption, fallback.
        let mut departed_now = None;
        let mut stopped_accepting = false;
        let mut released_now = false;
        let mut resumed = false;
        let mut took_back = false;
        let mut last_action = None;
        while let Some(output) = w.lc.poll_output() {
            outputs += 1;
            if let Output::Event(Event::StateChanged { from, to }) = output {
                assert_eq!(
                    from, phase_seen,
                    "a phase change from the wrong phase on {t:?}"
                );
                assert_ne!(from, to, "a phase change to the same phase on {t:?}");
                phase_seen = to;
                // Giving up the fallback of a successor that may still need it.
                if matches!(from, Phase::Draining | Phase::Probation)
                    && matches!(to, Phase::Exiting | Phase::Stopped)
                    && w.successor_needs_fallback()
                {
                    let passed = w
                        .drain_ended
                        .is_some_and(|ended| m.now >= ended + m.probation_ms);
                    let cut = from == Phase::Probation
                        && matches!(t, Transition::Stop | Transition::Hammer);
                    assert!(
                        passed || cut,
                        "gave up the fallback of {:?} on {t:?} before the probation passed",
                        w.successor
                    );
                }
            }
            match output {
                Output::Action(action) => {
                    if w.exited {
                        assert!(
                            matches!(action, Action::KillChild { .. }),
                            "{action:?} after exit"
                        );
                    }
                    match action {
                        Action::SpawnChild => {
                            // An inherited process that starts a successor of its own first
                            // tells its predecessor, unless it did before.
                            let expected =
                                (m.inherited && !told_before).then_some(Departure::Restarting);
                            assert_eq!(departed_now, expected, "the departure before a spawn");
                            assert!(w.live.is_empty(), "spawning beside {:?}", w.live);
                            assert!(
                                w.successor.is_none(),
                                "spawning beside the successor {:?}",
                                w.successor
                            );
                            assert!(!w.released, "spawning with the listeners released");
                        }
                        Action::KillChild { pid } => {
                            assert!(w.live.remove(&pid), "killed {pid}, not a live child");
                            w.killed.insert(pid);
                        }
                        Action::StopChild { pid } => {
                            assert!(w.live.remove(&pid), "stopped {pid}, not a live child");
                            assert!(
                                matches!(t, Transition::Rollback | Transition::Stop),
                                "stopped a child on {t:?}"
                            );
                            w.stopping.insert(pid);
                        }
                        Action::StopAccepting => {
                            let allowed = matches!(t, Transition::Stop)
                                || matches!(t, Transition::ChildReady(pid) if child_before == Some(pid))
                                || (matches!(t, Transition::Commit) && child_before.is_some());
                            assert!(allowed, "stopped accepting on {t:?}");
                            assert!(w.accepting, "stopped accepting twice");
                            assert!(!w.released, "stopped accepting after the release");
                            w.accepting = false;
                            stopped_accepting = true;
                            let handed_to = match t {
                                Transition::ChildReady(pid) => Some(pid),
                                Transition::Commit => child_before,
                                _ => None,
                            };
                            // An inherited process that was ready tells its predecessor
                            // first, and why.
                            let how = match handed_to {
                                Some(_) => Departure::HandedOver,
                                None => Departure::Stopping,
                            };
                            let expected = (m.inherited && w.announced_ready > 0 && !told_before)
                                .then_some(how);
                            assert_eq!(departed_now, expected, "the departure on {t:?}");
                            if let Some(pid) = handed_to {
                                assert!(w.live.remove(&pid), "handed over to a dead child");
                                w.successor = Some(pid);
                                w.departed = false;
                                w.drain_ended = None;
                            }
                            w.drain_started = Some(m.now);
                        }
                        Action::ResumeAccepting => {
                            assert!(falls_back, "accepting again on {t:?}");
                            assert!(!w.accepting, "accepting again while accepting");
                            assert!(!w.released, "accepting again after the release");
                            assert!(!w.handover_open, "accepting again while handing over");
                            w.accepting = true;
                            resumed = true;
                        }
                        Action::ReleaseListeners => {
                            let stop_drain = matches!(t, Transition::Stop)
                                && last_action == Some(Action::StopAccepting);
                            let disarmed = let_go && phase_before == Phase::Draining;
                            assert!(stop_drain || disarmed, "released the listeners on {t:?}");
                            assert!(!w.released, "released the listeners twice");
                            w.released = true;
                            released_now = true;
                        }
                        Action::Depart { how } => {
                            assert!(m.inherited, "a fresh process has no predecessor");
                            assert!(w.announced_ready > 0, "departed before it was ready");
                            assert!(departed_now.is_none(), "departed twice");
                            assert!(!w.told_parent, "departed twice in a life");
                            assert!(!stopped_accepting, "departed after StopAccepting");
                            w.told_parent = true;
                            departed_now = Some(how);
                        }
                        Action::EndHandOver => {
                            assert!(w.handover_open, "ended a handover that was not open");
                            let drain_over = phase_before == Phase::Draining
                                && matches!(
                                    t,
                                    Transition::Drained
                                        | Transition::Hammer
                                        | Transition::Stop
                                        | Transition::Timeout
                                );
                            let fell_back = falls_back && phase_before == Phase::Draining;
                            assert!(drain_over || fell_back, "ended the handover on {t:?}");
                            w.handover_open = false;
                            w.drain_ended = Some(m.now);
                        }
                        Action::Exit { .. } => {
                            let deadline_passed = match (w.drain_started, m.drain_ms) {
                                (Some(start), Some(ms)) => m.now >= start + ms,
                                _ => false,
                            };
                            let exiting = phase_before == Phase::Exiting;
                            let probation = phase_before == Phase::Probation;
                            let probation_passed = w
                                .drain_ended
                                .is_some_and(|ended| m.now >= ended + m.probation_ms);
                            let allowed = match t {
                                Transition::Drained => phase_before == Phase::Draining,
                                Transition::Hammer => {
                                    matches!(phase_before, Phase::Draining | Phase::Probation)
                                }
                                Transition::Stop => {
                                    (phase_before == Phase::Draining && m.repeated_stop_hammers)
                                        || probation
                                }
                                Transition::Timeout => {
                                    deadline_passed || exiting || (probation && probation_passed)
                                }
                                Transition::ChildExited(..) => exiting || (probation && let_go),
                                Transition::SuccessorDeparted(..) => probation && let_go,
                                _ => false,
                            };
                            assert!(allowed, "exited on {t:?}");
                            // A killed child that outlived this process would hold its
                            // listeners: the exit waits for it, up to the reap deadline.
                            assert!(
                                w.killed.is_empty() || not_reaped,
                                "exited with {:?} killed and not reaped",
                                w.killed
                            );
                            assert!(!w.handover_open, "exited with the handover open");
                            w.exited = true;
                        }
                        Action::Announce(Status::Ready { main_pid, again }) => {
                            w.announced_ready += 1;
                            assert_eq!(again, w.announced_ready > 1, "ready again or not");
                            assert_eq!(
                                main_pid,
                                again || m.inherited,
                                "main pid claimed wrongly (again {again})"
                            );
                        }
                        Action::CloseUnclaimed => {
                            w.closed_unclaimed += 1;
                            assert_eq!(w.closed_unclaimed, 1, "unclaimed fds closed twice");
                            assert_eq!(w.announced_ready, 1, "closed before the first ready");
                        }
                        Action::ExtendStopTimeout { .. } => {
                            assert!(m.service_manager, "extended without a service manager");
                            assert_eq!(
                                w.lc.drain_cause(),
                                Some(DrainCause::Shutdown),
                                "extended outside a stop"
                            );
                        }
                        Action::SendReadiness => {
                            assert!(m.inherited, "a fresh process has no parent to notify");
                            w.notified_parent += 1;
                            assert_eq!(w.notified_parent, 1, "ready told twice");
                        }
                        Action::ReceiveConnections => {
                            assert_eq!(
                                w.notified_parent,
                                u32::from(m.inherited),
                                "connections received before the parent was told ready"
                            );
                            w.received += 1;
                            assert_eq!(w.received, 1, "receivers settled twice");
                        }
                        Action::HandOver { successor } => {
                            // Only to the generation this one just handed its listeners to.
                            assert_eq!(w.successor, Some(successor), "handed over to {successor}");
                            assert_eq!(
                                w.drain_started,
                                Some(m.now),
                                "handed over outside a handover"
                            );
                            assert!(!w.handover_open, "a handover while one is open");
                            w.handover_open = true;
                        }
                        _ => {}
                    }
                    last_action = Some(action);
                }
                Output::Event(Event::UpgradeFailed { reason, .. }) => {
                    if reason != UpgradeFailure::Cancelled {
                        assert_eq!(w.lc.phase(), Phase::Running);
                        assert_restart_spawns(&w.lc, now, &format!("{reason:?}"));
                    }
                }
                Output::Event(Event::NotReaped { pids }) => {
                    assert!(matches!(t, Transition::Timeout), "gave up reaping on {t:?}");
                    assert_eq!(pids.iter().copied().collect::<BTreeSet<_>>(), w.killed);
                    not_reaped = true;
                }
                Output::Event(Event::TookServiceBack { pid, status }) => {
                    assert!(falls_back, "took the service back on {t:?}");
                    assert!(is_successor(pid), "took the service back from {pid}");
                    assert!(matches!(t, Transition::ChildExited(_, end) if end.status() == status));
                    took_back = true;
                }
                Output::Event(Event::SuccessorDeparted { pid, .. }) => {
                    assert!(let_go, "a departure taken on {t:?}");
                    assert!(is_successor(pid), "{pid} departed, not the successor");
                }
                Output::Event(Event::SuccessorExited { pid, status }) => {
                    assert!(is_successor(pid), "{pid} exited, not the successor");
                    assert!(
                        !needed_before || status == ChildStatus::Exited(0),
                        "a crash of a successor that needed its fallback taken as an exit"
                    );
                }
                Output::Event(_) => {}
            }
        }
        // Every transition is observable: the phase changes announced lead to the phase
        // reached. And every input, taken or refused, leaves a trace (an event or an action).
        assert_eq!(phase_seen, w.lc.phase(), "a silent phase change on {t:?}");
        if handled {
            assert!(outputs > 0, "{t:?} was taken or refused without a trace");
        }
        // The fallback is taken whenever it is needed, and the process then serves.
        assert_eq!(
            resumed, falls_back,
            "the fallback on {t:?} (needed: {needed_before})"
        );
        assert_eq!(took_back, falls_back, "TookServiceBack on {t:?}");
        if falls_back {
            assert_eq!(
                w.lc.phase(),
                Phase::Running,
                "not serving after the fallback"
            );
            assert_restart_spawns(&w.lc, now, "the fallback");
        }
        // A successor that no longer needs the fallback frees the listeners at once, or
        // ends the probation.
        if let_go {
            match phase_before {
                Phase::Draining => assert!(released_now, "not released on {t:?}"),
                Phase::Probation => assert!(
                    matches!(w.lc.phase(), Phase::Exiting | Phase::Stopped),
                    "the probation went on after {t:?}"
                ),
                _ => {}
            }
        }
        // A stop drain releases the listeners; a departure comes with StopAccepting.
        if matches!(t, Transition::Stop) && stopped_accepting {
            assert!(released_now, "a stop drain kept the listeners");
        }
        if let Some(how) = departed_now {
            let restart = matches!(t, Transition::Restart | Transition::Stage)
                && phase_before == Phase::Running;
            assert!(
                stopped_accepting || (restart && how == Departure::Restarting),
                "departed ({how:?}) neither at a drain nor at a restart, on {t:?}"
            );
        }
        // The handover is open exactly while the process drains after it.
        assert_eq!(
            w.handover_open,
            matches!(w.lc.drain_cause(), Some(DrainCause::HandedOver { .. })),
            "the handover is open or not on {t:?}"
        );
        // Listeners accept exactly while the process serves; released ones are never needed
        // again.
        assert_eq!(
            w.accepting,
            matches!(
                w.lc.phase(),
                Phase::Running | Phase::Forking | Phase::Staged
            ),
            "accepting or not in {:?}",
            w.lc.phase()
        );
        if w.released {
            assert!(
                matches!(
                    w.lc.phase(),
                    Phase::Draining | Phase::Exiting | Phase::Stopped
                ),
                "released listeners in {:?}",
                w.lc.phase()
            );
        }
        w
    }

    fn check_invariants(w: &World, m: &Model) {
        let phase = match m.phase {
            ModelPhase::Running { .. } => Phase::Running,
            ModelPhase::Forking { .. } => Phase::Forking,
            ModelPhase::Staged { .. } => Phase::Staged,
            ModelPhase::Draining { .. } => Phase::Draining,
            ModelPhase::Probation { .. } => Phase::Probation,
            ModelPhase::Exiting { .. } => Phase::Exiting,
            ModelPhase::Stopped => Phase::Stopped,
        };
        assert_eq!(w.lc.phase(), phase);
        assert_eq!(w.lc.child(), m.child());
        assert_eq!(
            w.lc.poll_timeout(),
            m.deadline().map(|ms| w.t0 + Duration::from_millis(ms))
        );
        if let ModelPhase::Running { ready } = m.phase {
            assert_eq!(w.lc.is_ready(), ready);
        }
        let drain_deadline = match m.phase {
            ModelPhase::Draining { deadline, .. } => deadline,
            _ => None,
        };
        assert_eq!(
            w.lc.drain_deadline(),
            drain_deadline.map(|ms| w.t0 + Duration::from_millis(ms)),
            "the drain deadline"
        );
        match m.phase {
            ModelPhase::Draining {
                successor,
                fallback,
                ..
            } => {
                let cause = w.lc.drain_cause().expect("draining has a cause");
                let expected = match successor {
                    Some(successor) => DrainCause::HandedOver { successor },
                    None => DrainCause::Shutdown,
                };
                assert_eq!(cause, expected);
                // The model's fallback is the world's: a successor that runs and has not
                // said it goes.
                assert_eq!(fallback, w.successor_needs_fallback(), "the fallback");
            }
            ModelPhase::Probation { successor, .. } => {
                assert_eq!(
                    w.successor,
                    Some(successor),
                    "probation without a successor"
                );
                assert!(!w.departed, "probation for a successor that departed");
            }
            _ => {}
        }
        // At most one child besides the successor, and it is the one the machine waits for.
        assert!(w.live.len() <= 1, "children {:?}", w.live);
        if let Some(&pid) = w.live.iter().next() {
            assert_eq!(
                w.lc.child(),
                Some(pid),
                "child {pid} runs but the machine does not wait for it"
            );
            assert!(w.successor.is_none(), "a child beside the successor");
        }
        assert_eq!(w.exited, w.lc.is_stopped());
    }
}

/// A restart, tried on a copy of the machine, spawns a child.
fn assert_restart_spawns(lc: &Lifecycle, now: Instant, after: &str) {
    let mut probe = lc.clone();
    probe.handle(Input::Request(Request::Restart), now);
    let spawned =
        std::iter::from_fn(|| probe.poll_output()).any(|o| o == Output::Action(Action::SpawnChild));
    assert!(spawned, "no restart possible after {after}");
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        max_shrink_iters: 20_000,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn lifecycle_matches_its_model(sequential 1..60 => LifecycleTest);
}
