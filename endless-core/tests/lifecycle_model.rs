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
//! - the process exits only when drained, on a hammer, or once the drain deadline passed;
//! - after any failed upgrade the process is running and a restart spawns a child again;
//! - a process owes its parent exactly one "ready";
//! - every phase change is announced by a `StateChanged` event, and every input leaves an
//!   event or an action (a refused one an `Event::Refused`);
//! - nothing panics, and no deadline is left in the past after `handle_timeout`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use endless_core::{
    Action, ChildFailure, ChildStatus, Config, Event, Input, Lifecycle, Origin, Output, Phase,
    RepeatedStop, Request, UpgradeFailure,
};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// The pid of the first child spawned; each later one gets the next pid.
const FIRST_PID: u32 = 100;

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
    },
    Stopped,
}

#[derive(Debug, Clone)]
struct Model {
    inherited: bool,
    upgrade_ms: u64,
    drain_ms: Option<u64>,
    repeated_stop_hammers: bool,
    now: u64,
    phase: ModelPhase,
    /// The pid the next spawned child gets. The kernel never hands out the pid of a child
    /// that was not reaped yet (a killed one, a stopping one, the successor), so a spawn
    /// always reports a pid not seen before; other inputs name any pid, stale or unknown.
    next_pid: u32,
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
    }

    fn drain(&self, successor: Option<u32>) -> ModelPhase {
        ModelPhase::Draining {
            successor,
            deadline: self.drain_ms.map(|d| self.now + d),
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
            ModelPhase::Forking { deadline, .. } | ModelPhase::Draining { deadline, .. } => {
                deadline
            }
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
        )
            .prop_map(
                |(inherited, upgrade_ms, drain_ms, repeated_stop_hammers)| Model {
                    inherited,
                    upgrade_ms,
                    drain_ms,
                    repeated_stop_hammers,
                    now: 0,
                    phase: ModelPhase::Running { ready: false },
                    next_pid: FIRST_PID,
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
            1 => pid.clone().prop_map(Transition::ChildFailed),
            1 => pid.prop_map(Transition::ChildExited),
            2 => Just(Transition::Drained),
            3 => (0u64..80).prop_map(Transition::Tick),
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
        let running = Running { ready: true };
        m.phase = match (*t, m.phase) {
            (Transition::Tick(ms), phase) => {
                m.now += ms;
                phase
            }
            (Transition::Restart | Transition::Stage, Running { ready: true }) => Forking {
                child: None,
                deadline: Some(m.now + m.upgrade_ms),
                staged: matches!(t, Transition::Stage),
            },
            (Transition::Commit, Staged { child }) => m.drain(Some(child)),
            (Transition::Rollback, Forking { .. } | Staged { .. }) => running,
            (Transition::Stop, Running { .. } | Forking { .. } | Staged { .. }) => m.drain(None),
            (Transition::Stop, Draining { .. }) if m.repeated_stop_hammers => Stopped,
            (Transition::Hammer, Draining { .. }) => Stopped,
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
            (Transition::Drained, Draining { .. }) => Stopped,
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
            ) if m.now >= d => Stopped,
            (_, phase) => phase,
        };
        m
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
                            let allowed = match t {
                                Transition::Drained | Transition::Hammer => true,
                                Transition::Stop => m.repeated_stop_hammers,
                                Transition::Timeout => deadline_passed,
                                _ => false,
                            };
                            assert!(allowed, "exited on {t:?}");
                            w.exited = true;
                        }
                        Action::NotifyParent => {
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
