//! Model-based property test of the lifecycle (proptest-state-machine, as in firezone's
//! connlib tests): arbitrary interleavings of every input and of passing time are applied
//! both to a small reference model and to the real machine. After every step the two must
//! agree, and the real machine's outputs, replayed against a simulated world of child
//! processes, must keep the lifecycle's promises:
//!
//! - at most one child process at a time (besides a rolled-back staged one that is still
//!   stopping), and only known, live children are ever killed or stopped; a killed child
//!   is reaped later (its exit arrives at any time, during another upgrade too);
//! - listeners stop accepting only after the current child reported ready (not a staged
//!   one: on the commit), or on a stop;
//! - the process exits only when drained, on a hammer, or once the drain deadline passed,
//!   and only once every child it killed was reaped or the reap deadline passed;
//! - a first ready claims the main pid only in a new generation, serving again always
//!   does; unclaimed inherited fds are closed once, at the first ready;
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
    Action, ChildFailure, ChildStatus, Config, EXTEND_PERIOD, Event, Input, Lifecycle, Origin,
    Output, Phase, RepeatedStop, Request, Status, UpgradeFailure,
};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// The pid of the first child spawned; each later one gets the next pid.
const FIRST_PID: u32 = 100;

/// [`EXTEND_PERIOD`] in the model's milliseconds.
const PERIOD_MS: u64 = EXTEND_PERIOD.as_millis() as u64;

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
    ChildExited(u32),
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
    }

    fn drain(&self, successor: Option<u32>) -> ModelPhase {
        let leases = successor.is_none() && self.service_manager && self.drain_ms.is_none();
        ModelPhase::Draining {
            successor,
            deadline: self.drain_ms.map(|d| self.now + d),
            renew: leases.then_some(self.now + PERIOD_MS),
        }
    }

    /// The drain is over: the process exits once its killed children are reaped.
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

    fn deadline(&self) -> Option<u64> {
        match self.phase {
            ModelPhase::Forking { deadline, .. } => deadline,
            ModelPhase::Draining {
                deadline, renew, ..
            } => match (deadline, renew) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
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
        )
            .prop_map(
                |(
                    inherited,
                    upgrade_ms,
                    drain_ms,
                    repeated_stop_hammers,
                    service_manager,
                    reap_ms,
                )| {
                    Model {
                        inherited,
                        upgrade_ms,
                        drain_ms,
                        repeated_stop_hammers,
                        service_manager,
                        reap_ms,
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
        // An exit is often that of a killed child, which the machine waits for at the end.
        let exited = if state.killed.is_empty() {
            pid.clone()
        } else {
            let killed: Vec<u32> = state.killed.iter().copied().collect();
            prop_oneof![1 => pid.clone(), 2 => prop::sample::select(killed)].boxed()
        };
        // A new child, or a duplicate report of the one the machine waits for.
        let spawned = match state.child() {
            Some(child) => prop_oneof![3 => Just(state.next_pid), 1 => Just(child)].boxed(),
            None => Just(state.next_pid).boxed(),
        };
        prop_oneof![
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
            2 => exited.prop_map(Transition::ChildExited),
            2 => Just(Transition::Drained),
            3 => (0u64..80).prop_map(Transition::Tick),
            1 => Just(Transition::Tick(PERIOD_MS)),
            2 => Just(Transition::Timeout),
        ]
        .boxed()
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
        let reaped = matches!(*t, Transition::ChildExited(pid) if m.killed.remove(&pid));
        let running = Running { ready: true };
        m.phase = match (*t, m.phase) {
            (Transition::ChildExited(_), Exiting { .. }) if reaped && m.killed.is_empty() => {
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
            (Transition::Stop, Draining { .. }) if m.repeated_stop_hammers => m.end(),
            (Transition::Hammer, Draining { .. }) => m.end(),
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
                Transition::ChildFailed(pid) | Transition::ChildExited(pid),
                Forking { child: Some(c), .. },
            ) if c == pid => running,
            (Transition::ChildExited(pid), Staged { child }) if child == pid => running,
            (Transition::Drained, Draining { .. }) => m.end(),
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
            ) if m.now >= d => m.end(),
            (
                Transition::Timeout,
                Draining {
                    successor,
                    deadline,
                    renew: Some(r),
                },
            ) if m.now >= r => Draining {
                successor,
                deadline,
                renew: Some(m.now + PERIOD_MS),
            },
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
    /// The child this process handed over to: it outlives us by design.
    successor: Option<u32>,
    /// Children asked to stop (rolled-back staged generations), until they exit.
    stopping: BTreeSet<u32>,
    /// Children killed ([`Action::KillChild`]) and not reaped yet: their exit is reported
    /// later, possibly while another upgrade waits for its own child.
    killed: BTreeSet<u32>,
    /// When the current drain began (ms), to check exits against the deadline.
    drain_started: Option<u64>,
    exited: bool,
    notified_parent: u32,
    /// `ReceiveConnections` actions seen.
    received: u32,
    /// `Announce(Ready)` actions seen.
    announced_ready: u32,
    /// `CloseUnclaimed` actions seen.
    closed_unclaimed: u32,
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
            stopping: BTreeSet::new(),
            killed: BTreeSet::new(),
            drain_started: None,
            exited: false,
            notified_parent: 0,
            received: 0,
            announced_ready: 0,
            closed_unclaimed: 0,
        }
    }

    fn apply(mut w: World, m: &Model, t: Transition) -> World {
        // `m` is the model *after* the transition; `now` is unchanged by all but Tick.
        let now = w.t0 + Duration::from_millis(m.now);
        let child_before = w.lc.child();
        let phase_before = w.lc.phase();
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
            Transition::ChildExited(pid) => {
                // Only a child that runs can exit; a reaped pid is gone.
                if w.live.remove(&pid)
                    || w.stopping.remove(&pid)
                    || w.killed.remove(&pid)
                    || w.successor == Some(pid)
                {
                    Some(Input::ChildExited {
                        pid,
                        status: ChildStatus::Exited(1),
                    })
                } else {
                    None
                }
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

        let mut outputs = 0;
        let mut phase_seen = phase_before;
        // The reap deadline passed with these children killed and not reaped.
        let mut not_reaped = false;
        while let Some(output) = w.lc.poll_output() {
            outputs += 1;
            if let Output::Event(Event::StateChanged { from, to }) = output {
                assert_eq!(
                    from, phase_seen,
                    "a phase change from the wrong phase on {t:?}"
                );
                assert_ne!(from, to, "a phase change to the same phase on {t:?}");
                phase_seen = to;
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
                            assert!(w.live.is_empty(), "spawning beside {:?}", w.live);
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
                            let handed_to = match t {
                                Transition::ChildReady(pid) => Some(pid),
                                Transition::Commit => child_before,
                                _ => None,
                            };
                            if let Some(pid) = handed_to {
                                assert!(w.live.remove(&pid), "handed over to a dead child");
                                w.successor = Some(pid);
                            }
                            w.drain_started = Some(m.now);
                        }
                        Action::Exit { .. } => {
                            let deadline_passed = match (w.drain_started, m.drain_ms) {
                                (Some(start), Some(ms)) => m.now >= start + ms,
                                _ => false,
                            };
                            let exiting = phase_before == Phase::Exiting;
                            let allowed = match t {
                                Transition::Drained | Transition::Hammer => true,
                                Transition::Stop => m.repeated_stop_hammers,
                                Transition::Timeout => deadline_passed || exiting,
                                Transition::ChildExited(_) => exiting,
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
                                Some(endless_core::DrainCause::Shutdown),
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
                        }
                        _ => {}
                    }
                }
                Output::Event(Event::UpgradeFailed { reason, .. }) => {
                    if reason != UpgradeFailure::Cancelled {
                        assert_eq!(w.lc.phase(), Phase::Running);
                        let mut probe = w.lc.clone();
                        probe.handle(Input::Request(Request::Restart), now);
                        let spawned = std::iter::from_fn(|| probe.poll_output())
                            .any(|o| o == Output::Action(Action::SpawnChild));
                        assert!(spawned, "no restart possible after {reason:?}");
                    }
                }
                Output::Event(Event::NotReaped { pids }) => {
                    assert!(matches!(t, Transition::Timeout), "gave up reaping on {t:?}");
                    assert_eq!(pids.iter().copied().collect::<BTreeSet<_>>(), w.killed);
                    not_reaped = true;
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
        w
    }

    fn check_invariants(w: &World, m: &Model) {
        let phase = match m.phase {
            ModelPhase::Running { .. } => Phase::Running,
            ModelPhase::Forking { .. } => Phase::Forking,
            ModelPhase::Staged { .. } => Phase::Staged,
            ModelPhase::Draining { .. } => Phase::Draining,
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
        if let ModelPhase::Draining { successor, .. } = m.phase {
            let cause = w.lc.drain_cause().expect("draining has a cause");
            let expected = match successor {
                Some(successor) => endless_core::DrainCause::HandedOver { successor },
                None => endless_core::DrainCause::Shutdown,
            };
            assert_eq!(cause, expected);
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
