//! Transcript tests: each scenario drives a lifecycle with a fake clock and compares
//! everything it emitted, in order, with a constant list. A change in behaviour shows as a
//! readable diff of two lists.

use std::time::{Duration, Instant};

use endless_core::{
    Action::{self, *},
    ChildFailure, ChildStatus, Config, Departure, DrainCause, Event, ExitReason, Input, InputKind,
    Lifecycle, Origin, Output, Phase, Refusal, RepeatedStop, Request, Status, UpgradeFailure,
};

const UPGRADE: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_secs(30);
const REAP: Duration = Duration::from_secs(3);
const PROBATION: Duration = Duration::from_secs(7);
const CHILD: u32 = 4242;

/// A fresh process's first ready: it is the main process already.
const FIRST_READY: Status = Status::Ready {
    main_pid: false,
    again: false,
};

/// Serving again after a failed or rolled-back upgrade: the main process again.
const READY_AGAIN: Status = Status::Ready {
    main_pid: true,
    again: true,
};

/// A lifecycle with a fake clock that starts at `t0`.
struct Harness {
    lc: Lifecycle,
    now: Instant,
    t0: Instant,
}

impl Harness {
    fn new(config: Config, origin: Origin) -> Self {
        let t0 = Instant::now();
        Self {
            lc: Lifecycle::new(config, origin),
            now: t0,
            t0,
        }
    }

    fn fresh() -> Self {
        Self::new(
            Config::new()
                .upgrade_timeout(UPGRADE)
                .drain_timeout(Some(DRAIN))
                .reap_timeout(REAP)
                .probation(PROBATION),
            Origin::Fresh,
        )
    }

    /// A fresh process that reported ready (its outputs are dropped).
    fn ready() -> Self {
        let mut h = Self::fresh();
        h.input(Input::Ready);
        h
    }

    /// A fresh process with `config` that reported ready (its outputs are dropped).
    fn ready_with(config: Config) -> Self {
        let mut h = Self::new(config, Origin::Fresh);
        h.input(Input::Ready);
        h
    }

    fn drain_outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.lc.poll_output()).collect()
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.lc.handle(input, self.now);
        self.drain_outputs()
    }

    fn request(&mut self, request: Request) -> Vec<Output> {
        self.input(Input::Request(request))
    }

    /// Jumps to the next deadline and handles it (`step()` of quinn's test harness).
    fn step(&mut self) -> Vec<Output> {
        let deadline = self.lc.poll_timeout().expect("a deadline is armed");
        assert!(deadline >= self.now, "deadline in the past");
        self.now = deadline;
        self.lc.handle_timeout(self.now);
        self.drain_outputs()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }
}

fn a(action: Action) -> Output {
    Output::Action(action)
}

fn e(event: Event) -> Output {
    Output::Event(event)
}

fn changed(from: Phase, to: Phase) -> Output {
    e(Event::StateChanged { from, to })
}

fn refused(input: InputKind, reason: Refusal) -> Output {
    e(Event::Refused { input, reason })
}

fn requested(request: Request) -> Output {
    e(Event::Requested(request))
}

/// The outputs of a restart request in a ready, running process.
fn restart_begins() -> Vec<Output> {
    vec![
        requested(Request::Restart),
        changed(Phase::Running, Phase::Forking),
        a(Announce(Status::Reloading)),
        a(SpawnChild),
    ]
}

fn handed_over() -> DrainCause {
    DrainCause::HandedOver { successor: CHILD }
}

/// A ready process that restarted and handed over to `CHILD`: it drains, as the fallback of
/// `CHILD` (the outputs are dropped).
fn handed_over_to_child() -> Harness {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    h.input(Input::ChildReady { pid: CHILD });
    assert_eq!(h.lc.drain_cause(), Some(handed_over()));
    h
}

/// A process that handed over to `CHILD` and drained: it waits as the fallback of `CHILD`.
fn in_probation() -> Harness {
    let mut h = handed_over_to_child();
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.input(Input::Drained),
        [a(EndHandOver), changed(Phase::Draining, Phase::Probation)]
    );
    assert_eq!(h.lc.poll_timeout(), Some(h.now + PROBATION));
    h
}

/// The exit of a process that handed over to `CHILD` and drained.
fn exit_after_handover() -> Output {
    a(Exit {
        code: 0,
        reason: ExitReason::Drained,
        cause: handed_over(),
    })
}

#[test]
fn first_start_announces_ready_once() {
    let mut h = Harness::fresh();
    assert_eq!(
        h.input(Input::Ready),
        [
            a(Announce(FIRST_READY)),
            a(CloseUnclaimed),
            a(ReceiveConnections)
        ]
    );
    assert_eq!(
        h.input(Input::Ready),
        [refused(InputKind::Ready, Refusal::AlreadyReady)]
    );
    assert_eq!(h.lc.poll_timeout(), None);
}

#[test]
fn clean_restart() {
    let mut h = Harness::ready();
    assert_eq!(h.request(Request::Restart), restart_begins());
    assert_eq!(h.lc.poll_timeout(), Some(h.t0 + UPGRADE));
    assert_eq!(
        h.input(Input::ChildSpawned { pid: CHILD }),
        [e(Event::ChildSpawned { pid: CHILD })]
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.input(Input::ChildReady { pid: CHILD }),
        [
            e(Event::ChildReady { pid: CHILD }),
            changed(Phase::Forking, Phase::Draining),
            a(StopAccepting),
            a(HandOver { successor: CHILD }),
            a(CloseIdle),
        ]
    );
    assert_eq!(h.lc.drain_cause(), Some(handed_over()));
    assert_eq!(
        h.lc.poll_timeout(),
        Some(h.t0 + Duration::from_secs(1) + DRAIN)
    );
    h.advance(Duration::from_secs(2));
    // Drained, it stays the fallback of its successor for the probation…
    assert_eq!(
        h.input(Input::Drained),
        [a(EndHandOver), changed(Phase::Draining, Phase::Probation)]
    );
    assert_eq!(h.lc.poll_timeout(), Some(h.now + PROBATION));
    // …and exits once it is over.
    assert_eq!(
        h.step(),
        [
            changed(Phase::Probation, Phase::Stopped),
            a(Exit {
                code: 0,
                reason: ExitReason::Drained,
                cause: handed_over(),
            }),
        ]
    );
    assert_eq!(h.elapsed(), Duration::from_secs(3) + PROBATION);
    assert!(h.lc.is_stopped());
    assert_eq!(h.lc.poll_timeout(), None);
}

#[test]
fn child_crash_before_ready_keeps_serving_and_a_later_restart_works() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(1),
        }),
        [
            e(Event::UpgradeFailed {
                pid: Some(CHILD),
                reason: UpgradeFailure::ChildExited(ChildStatus::Exited(1)),
            }),
            changed(Phase::Forking, Phase::Running),
            a(Announce(READY_AGAIN)),
        ]
    );
    assert_eq!(h.lc.poll_timeout(), None);
    assert_eq!(h.request(Request::Restart), restart_begins());
}

#[test]
fn child_that_breaks_the_readiness_protocol_is_killed() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    assert_eq!(
        h.input(Input::ChildFailed {
            pid: CHILD,
            reason: ChildFailure::ChannelClosed,
        }),
        [
            e(Event::UpgradeFailed {
                pid: Some(CHILD),
                reason: UpgradeFailure::ChildFailed(ChildFailure::ChannelClosed),
            }),
            changed(Phase::Forking, Phase::Running),
            a(KillChild { pid: CHILD }),
            a(Announce(READY_AGAIN)),
        ]
    );
    // Its exit, reaped later, is known for what it is and changes nothing else.
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Signaled(9),
        }),
        [e(Event::KilledChildExited {
            pid: CHILD,
            status: ChildStatus::Signaled(9),
        })]
    );
    assert_eq!(h.lc.phase(), Phase::Running);
}

#[test]
fn spawn_failure_keeps_serving() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    assert_eq!(
        h.input(Input::SpawnFailed {
            reason: "No such file or directory".into(),
        }),
        [
            e(Event::UpgradeFailed {
                pid: None,
                reason: UpgradeFailure::SpawnFailed("No such file or directory".into()),
            }),
            changed(Phase::Forking, Phase::Running),
            a(Announce(READY_AGAIN)),
        ]
    );
    assert_eq!(h.request(Request::Restart), restart_begins());
}

#[test]
fn upgrade_timeout_kills_the_child() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    // A spurious early timeout does nothing.
    h.advance(UPGRADE / 2);
    h.lc.handle_timeout(h.now);
    assert_eq!(h.drain_outputs(), []);
    assert_eq!(
        h.step(),
        [
            e(Event::UpgradeFailed {
                pid: Some(CHILD),
                reason: UpgradeFailure::TimedOut,
            }),
            changed(Phase::Forking, Phase::Running),
            a(KillChild { pid: CHILD }),
            a(Announce(READY_AGAIN)),
        ]
    );
    assert_eq!(h.elapsed(), UPGRADE);
    // Its ready message, arriving after it was given up, is refused.
    assert_eq!(
        h.input(Input::ChildReady { pid: CHILD }),
        [refused(InputKind::ChildReady, Refusal::UnknownChild(CHILD))]
    );
    assert_eq!(h.request(Request::Restart), restart_begins());
}

#[test]
fn a_child_spawned_after_its_upgrade_was_given_up_is_killed() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    assert_eq!(
        h.step(),
        [
            e(Event::UpgradeFailed {
                pid: None,
                reason: UpgradeFailure::TimedOut,
            }),
            changed(Phase::Forking, Phase::Running),
            a(Announce(READY_AGAIN)),
        ]
    );
    assert_eq!(
        h.input(Input::ChildSpawned { pid: CHILD }),
        [
            e(Event::UnexpectedChild { pid: CHILD }),
            a(KillChild { pid: CHILD }),
        ]
    );
}

#[test]
fn restart_while_forking_is_refused() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    for _ in 0..100 {
        assert_eq!(
            h.request(Request::Restart),
            [
                requested(Request::Restart),
                refused(InputKind::Restart, Refusal::UpgradeInProgress),
            ]
        );
    }
    assert_eq!(h.lc.child(), Some(CHILD));
    // A duplicate report of the same child is harmless.
    assert_eq!(
        h.input(Input::ChildSpawned { pid: CHILD }),
        [refused(InputKind::ChildSpawned, Refusal::Duplicate)]
    );
    // A second child reported while one is pending is not adopted.
    assert_eq!(
        h.input(Input::ChildSpawned { pid: CHILD + 1 }),
        [
            e(Event::UnexpectedChild { pid: CHILD + 1 }),
            a(KillChild { pid: CHILD + 1 }),
        ]
    );
    assert_eq!(h.lc.child(), Some(CHILD));
}

#[test]
fn the_exit_of_a_killed_stray_child_changes_nothing() {
    const STRAY: u32 = CHILD + 1;
    let reaped = [e(Event::KilledChildExited {
        pid: STRAY,
        status: ChildStatus::Signaled(9),
    })];
    let stray_exits = |h: &mut Harness| {
        h.input(Input::ChildExited {
            pid: STRAY,
            status: ChildStatus::Signaled(9),
        })
    };
    // While forking: a second child turns up, is killed, and is reaped later. The upgrade
    // goes on with the child it waits for.
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    assert_eq!(
        h.input(Input::ChildSpawned { pid: STRAY }),
        [
            e(Event::UnexpectedChild { pid: STRAY }),
            a(KillChild { pid: STRAY }),
        ]
    );
    assert_eq!(stray_exits(&mut h), reaped);
    assert_eq!((h.lc.phase(), h.lc.child()), (Phase::Forking, Some(CHILD)));

    // The same while a staged generation serves beside this one.
    let mut h = staged();
    assert_eq!(
        h.input(Input::ChildSpawned { pid: STRAY }),
        [
            e(Event::UnexpectedChild { pid: STRAY }),
            a(KillChild { pid: STRAY }),
        ]
    );
    assert_eq!(stray_exits(&mut h), reaped);
    assert_eq!((h.lc.phase(), h.lc.child()), (Phase::Staged, Some(CHILD)));

    // And once this process drains after handing over: it is not the successor's exit.
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    h.input(Input::ChildSpawned { pid: STRAY });
    h.input(Input::ChildReady { pid: CHILD });
    assert_eq!(stray_exits(&mut h), reaped);
    assert_eq!(h.lc.drain_cause(), Some(handed_over()));
}

#[test]
fn stop_while_forking_kills_the_child_and_drains() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            e(Event::UpgradeFailed {
                pid: Some(CHILD),
                reason: UpgradeFailure::Cancelled,
            }),
            a(KillChild { pid: CHILD }),
            changed(Phase::Forking, Phase::Draining),
            a(Announce(Status::Stopping)),
            a(StopAccepting),
            a(ReleaseListeners),
            a(CloseIdle),
        ]
    );
    assert_eq!(h.lc.drain_cause(), Some(DrainCause::Shutdown));
    assert_eq!(
        h.input(Input::ChildReady { pid: CHILD }),
        [refused(InputKind::ChildReady, Refusal::UnknownChild(CHILD))]
    );
    // The drain is over, but the killed child may still hold the listeners: the exit waits
    // for it to be reaped.
    assert_eq!(
        h.input(Input::Drained),
        [changed(Phase::Draining, Phase::Exiting)]
    );
    assert_eq!(h.lc.poll_timeout(), Some(h.now + REAP));
    assert_eq!(
        h.request(Request::Restart),
        [
            requested(Request::Restart),
            refused(InputKind::Restart, Refusal::Stopped)
        ]
    );
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Signaled(9),
        }),
        [
            e(Event::KilledChildExited {
                pid: CHILD,
                status: ChildStatus::Signaled(9),
            }),
            changed(Phase::Exiting, Phase::Stopped),
            a(Exit {
                code: 0,
                reason: ExitReason::Drained,
                cause: DrainCause::Shutdown,
            }),
        ]
    );
    assert_eq!(h.lc.poll_timeout(), None);
}

#[test]
fn a_killed_child_never_reaped_delays_the_exit_only_until_the_reap_deadline() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    h.request(Request::Stop);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.request(Request::Hammer),
        [
            requested(Request::Hammer),
            e(Event::ForceClosing {
                reason: ExitReason::Hammered
            }),
            a(ForceClose),
            changed(Phase::Draining, Phase::Exiting),
        ]
    );
    assert_eq!(
        h.step(),
        [
            e(Event::NotReaped { pids: vec![CHILD] }),
            changed(Phase::Exiting, Phase::Stopped),
            a(Exit {
                code: 0,
                reason: ExitReason::Hammered,
                cause: DrainCause::Shutdown,
            }),
        ]
    );
    assert_eq!(h.elapsed(), Duration::from_secs(1) + REAP);
    // Its exit after all is a late input.
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Signaled(9),
        }),
        [refused(
            InputKind::ChildExited,
            Refusal::UnknownChild(CHILD)
        )]
    );
}

#[test]
fn stop_while_the_spawn_is_pending_kills_the_child_when_it_turns_up() {
    let mut h = Harness::ready();
    h.request(Request::Restart);
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            e(Event::UpgradeFailed {
                pid: None,
                reason: UpgradeFailure::Cancelled,
            }),
            changed(Phase::Forking, Phase::Draining),
            a(Announce(Status::Stopping)),
            a(StopAccepting),
            a(ReleaseListeners),
            a(CloseIdle),
        ]
    );
    assert_eq!(
        h.input(Input::ChildSpawned { pid: CHILD }),
        [
            e(Event::UnexpectedChild { pid: CHILD }),
            a(KillChild { pid: CHILD }),
        ]
    );
}

#[test]
fn restart_while_draining_is_refused_and_says_why() {
    let mut h = Harness::ready();
    h.request(Request::Stop);
    for request in [Request::Restart, Request::Stage] {
        let kind = Input::Request(request).kind();
        assert_eq!(
            h.request(request),
            [requested(request), refused(kind, Refusal::Draining)]
        );
    }
    // A spawn report nobody asked for changes nothing either.
    assert_eq!(
        h.input(Input::SpawnFailed {
            reason: "late".into()
        }),
        [refused(InputKind::SpawnFailed, Refusal::NoSpawnPending)]
    );
    assert_eq!(h.lc.phase(), Phase::Draining);
}

#[test]
fn hammer_while_draining() {
    let mut h = Harness::ready_with(Config::new().drain_timeout(Some(DRAIN)).forced_exit_code(3));
    assert_eq!(
        h.request(Request::Hammer),
        [
            requested(Request::Hammer),
            refused(InputKind::Hammer, Refusal::NotDraining),
        ]
    );
    h.request(Request::Stop);
    assert_eq!(
        h.request(Request::Hammer),
        [
            requested(Request::Hammer),
            e(Event::ForceClosing {
                reason: ExitReason::Hammered,
            }),
            a(ForceClose),
            changed(Phase::Draining, Phase::Stopped),
            a(Exit {
                code: 3,
                reason: ExitReason::Hammered,
                cause: DrainCause::Shutdown,
            }),
        ]
    );
    // Everything after the end is refused, and nothing panics.
    assert_eq!(
        h.request(Request::Restart),
        [
            requested(Request::Restart),
            refused(InputKind::Restart, Refusal::Stopped),
        ]
    );
    assert_eq!(
        h.input(Input::Drained),
        [refused(InputKind::Drained, Refusal::NotDraining)]
    );
}

#[test]
fn drain_deadline_closes_what_is_left() {
    let mut h = handed_over_to_child();
    assert_eq!(
        h.step(),
        [
            e(Event::ForceClosing {
                reason: ExitReason::DeadlinePassed,
            }),
            a(ForceClose),
            a(EndHandOver),
            changed(Phase::Draining, Phase::Probation),
        ]
    );
    assert_eq!(h.elapsed(), DRAIN);
    assert_eq!(
        h.step(),
        [
            changed(Phase::Probation, Phase::Stopped),
            a(Exit {
                code: 0,
                reason: ExitReason::DeadlinePassed,
                cause: handed_over(),
            }),
        ]
    );
    assert_eq!(h.elapsed(), DRAIN + PROBATION);
}

#[test]
fn never_hammer_waits_for_ever() {
    let mut h = Harness::ready_with(Config::new().drain_timeout(None));
    h.request(Request::Stop);
    assert_eq!(h.lc.poll_timeout(), None);
    h.advance(Duration::from_secs(365 * 24 * 3600));
    h.lc.handle_timeout(h.now);
    assert_eq!(h.drain_outputs(), []);
    assert_eq!(h.lc.phase(), Phase::Draining);
    // A repeated stop is refused by default…
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            refused(InputKind::Stop, Refusal::Draining),
        ]
    );
    // …and only the connections ending, or a hammer, end it.
    assert_eq!(
        h.input(Input::Drained),
        [
            changed(Phase::Draining, Phase::Stopped),
            a(Exit {
                code: 0,
                reason: ExitReason::Drained,
                cause: DrainCause::Shutdown,
            }),
        ]
    );
}

#[test]
fn repeated_stop_can_mean_hammer() {
    let mut h = Harness::ready_with(Config::new().repeated_stop(RepeatedStop::Hammer));
    h.request(Request::Stop);
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            e(Event::ForceClosing {
                reason: ExitReason::Hammered,
            }),
            a(ForceClose),
            changed(Phase::Draining, Phase::Stopped),
            a(Exit {
                code: 0,
                reason: ExitReason::Hammered,
                cause: DrainCause::Shutdown,
            }),
        ]
    );
}

#[test]
fn child_side_owes_its_parent_exactly_one_ready() {
    let mut h = Harness::new(Config::new(), Origin::Inherited);
    assert_eq!(
        h.request(Request::Restart),
        [
            requested(Request::Restart),
            refused(InputKind::Restart, Refusal::NotReady),
        ]
    );
    assert_eq!(
        h.input(Input::Ready),
        [
            a(Announce(Status::Ready {
                main_pid: true,
                again: false
            })),
            a(CloseUnclaimed),
            a(SendReadiness),
            a(ReceiveConnections)
        ]
    );
    assert_eq!(
        h.input(Input::Ready),
        [refused(InputKind::Ready, Refusal::AlreadyReady)]
    );
    // Once ready, the child is an ordinary running server that can itself be restarted;
    // it tells its parent first that it no longer needs it as a fallback.
    assert_eq!(
        h.request(Request::Restart),
        [
            requested(Request::Restart),
            changed(Phase::Running, Phase::Forking),
            a(Announce(Status::Reloading)),
            a(Depart {
                how: Departure::Restarting
            }),
            a(SpawnChild),
        ]
    );
}

#[test]
fn child_stopped_before_ready_never_tells_its_parent() {
    let mut h = Harness::new(Config::new(), Origin::Inherited);
    // Nor that it goes: it took nothing over, and its parent waits for a readiness line.
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            changed(Phase::Running, Phase::Draining),
            a(Announce(Status::Stopping)),
            a(StopAccepting),
            a(ReleaseListeners),
            a(CloseIdle),
        ]
    );
    assert_eq!(
        h.input(Input::Ready),
        [refused(InputKind::Ready, Refusal::Draining)]
    );
}

#[test]
fn huge_timeouts_do_not_overflow() {
    let mut h = Harness::ready_with(
        Config::new()
            .upgrade_timeout(Duration::MAX)
            .drain_timeout(Some(Duration::MAX)),
    );
    h.request(Request::Restart);
    assert_eq!(h.lc.poll_timeout(), None);
    h.request(Request::Stop);
    assert_eq!(h.lc.poll_timeout(), None);
}

// ---- staged upgrades --------------------------------------------------------------------------

/// A ready process with a staged generation (`CHILD`) serving beside it.
fn staged() -> Harness {
    let mut h = Harness::ready();
    assert_eq!(
        h.request(Request::Stage),
        [
            requested(Request::Stage),
            changed(Phase::Running, Phase::Forking),
            a(Announce(Status::Reloading)),
            a(SpawnChild),
        ]
    );
    h.input(Input::ChildSpawned { pid: CHILD });
    // Ready, the staged child serves beside this process: nothing stops accepting.
    assert_eq!(
        h.input(Input::ChildReady { pid: CHILD }),
        [
            e(Event::ChildReady { pid: CHILD }),
            changed(Phase::Forking, Phase::Staged),
        ]
    );
    assert_eq!(h.lc.child(), Some(CHILD));
    assert_eq!(
        h.lc.poll_timeout(),
        None,
        "a staged upgrade waits for the operator"
    );
    h
}

#[test]
fn staged_upgrade_committed_drains_the_old_generation() {
    let mut h = staged();
    assert_eq!(
        h.request(Request::Restart),
        [
            requested(Request::Restart),
            refused(InputKind::Restart, Refusal::UpgradeInProgress),
        ]
    );
    assert_eq!(
        h.request(Request::Commit),
        [
            requested(Request::Commit),
            changed(Phase::Staged, Phase::Draining),
            a(StopAccepting),
            a(HandOver { successor: CHILD }),
            a(CloseIdle),
        ]
    );
    assert_eq!(h.lc.drain_cause(), Some(handed_over()));
    // The committed generation has this one as its fallback, as after a restart.
    assert_eq!(
        h.input(Input::Drained),
        [a(EndHandOver), changed(Phase::Draining, Phase::Probation)]
    );
    assert_eq!(
        h.step(),
        [
            changed(Phase::Probation, Phase::Stopped),
            a(Exit {
                code: 0,
                reason: ExitReason::Drained,
                cause: handed_over(),
            }),
        ]
    );
}

#[test]
fn staged_upgrade_rolled_back_stops_the_new_generation() {
    let mut h = staged();
    assert_eq!(
        h.request(Request::Rollback),
        [
            requested(Request::Rollback),
            e(Event::UpgradeFailed {
                pid: Some(CHILD),
                reason: UpgradeFailure::RolledBack,
            }),
            changed(Phase::Staged, Phase::Running),
            a(Announce(READY_AGAIN)),
            a(StopChild { pid: CHILD }),
        ]
    );
    // It exits later, once drained; that changes nothing.
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(0),
        }),
        [e(Event::StoppedChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(0),
        })]
    );
    // And a later restart works.
    assert_eq!(h.request(Request::Restart), restart_begins());
}

#[test]
fn staged_generation_that_exits_leaves_the_old_one_serving() {
    let mut h = staged();
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(3),
        }),
        [
            e(Event::UpgradeFailed {
                pid: Some(CHILD),
                reason: UpgradeFailure::ChildExited(ChildStatus::Exited(3)),
            }),
            changed(Phase::Staged, Phase::Running),
            a(Announce(READY_AGAIN)),
        ]
    );
    assert_eq!(
        h.request(Request::Commit),
        [
            requested(Request::Commit),
            refused(InputKind::Commit, Refusal::NothingStaged),
        ]
    );
}

#[test]
fn stop_while_staged_stops_both_generations() {
    let mut h = staged();
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            a(StopChild { pid: CHILD }),
            changed(Phase::Staged, Phase::Draining),
            a(Announce(Status::Stopping)),
            a(StopAccepting),
            a(ReleaseListeners),
            a(CloseIdle),
        ]
    );
    assert_eq!(h.lc.drain_cause(), Some(DrainCause::Shutdown));
}

#[test]
fn rollback_while_the_new_generation_starts_kills_it() {
    let mut h = Harness::ready();
    h.request(Request::Stage);
    h.input(Input::ChildSpawned { pid: CHILD });
    assert_eq!(
        h.request(Request::Rollback),
        [
            requested(Request::Rollback),
            e(Event::UpgradeFailed {
                pid: Some(CHILD),
                reason: UpgradeFailure::RolledBack,
            }),
            changed(Phase::Forking, Phase::Running),
            a(KillChild { pid: CHILD }),
            a(Announce(READY_AGAIN)),
        ]
    );
    assert_eq!(
        h.request(Request::Rollback),
        [
            requested(Request::Rollback),
            refused(InputKind::Rollback, Refusal::NothingStaged),
        ]
    );
}

#[test]
fn staged_upgrades_can_be_turned_off() {
    let mut h = Harness::ready_with(Config::new().staged_upgrades(false));
    assert_eq!(
        h.request(Request::Stage),
        [
            requested(Request::Stage),
            refused(InputKind::Stage, Refusal::StagedUpgradesOff),
        ]
    );
    // A restart still works.
    assert_eq!(h.request(Request::Restart), restart_begins());
}

#[test]
fn under_a_service_manager_staged_upgrades_are_refused_whatever_the_configuration() {
    let mut h = Harness::ready_with(Config::new().staged_upgrades(true).service_manager(true));
    assert_eq!(
        h.request(Request::Stage),
        [
            requested(Request::Stage),
            refused(InputKind::Stage, Refusal::UnderServiceManager),
        ]
    );
    assert_eq!(h.request(Request::Restart), restart_begins());
}

#[test]
fn under_a_service_manager_a_stop_extends_its_timeout_to_the_drain_deadline() {
    let mut h = Harness::ready_with(
        Config::new()
            .drain_timeout(Some(DRAIN))
            .service_manager(true),
    );
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            changed(Phase::Running, Phase::Draining),
            a(Announce(Status::Stopping)),
            a(ExtendStopTimeout {
                by: DRAIN + endless_core::STOP_MARGIN
            }),
            a(StopAccepting),
            a(ReleaseListeners),
            a(CloseIdle),
        ]
    );
    // Once: the only deadline left is the drain's.
    assert_eq!(h.lc.poll_timeout(), Some(h.now + DRAIN));

    // A handover is no stop: the service manager hears nothing of the old generation.
    let mut h = Harness::ready_with(
        Config::new()
            .drain_timeout(Some(DRAIN))
            .service_manager(true),
    );
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    assert_eq!(
        h.input(Input::ChildReady { pid: CHILD }),
        [
            e(Event::ChildReady { pid: CHILD }),
            changed(Phase::Forking, Phase::Draining),
            a(StopAccepting),
            a(HandOver { successor: CHILD }),
            a(CloseIdle),
        ]
    );
}

#[test]
fn under_a_service_manager_a_stop_without_deadline_renews_its_lease() {
    use endless_core::{EXTEND_LEASE, EXTEND_PERIOD};
    let mut h = Harness::ready_with(Config::new().drain_timeout(None).service_manager(true));
    let stop = h.request(Request::Stop);
    assert!(stop.contains(&a(ExtendStopTimeout { by: EXTEND_LEASE })));
    for round in 1..=3u32 {
        assert_eq!(h.step(), [a(ExtendStopTimeout { by: EXTEND_LEASE })]);
        assert_eq!(h.elapsed(), EXTEND_PERIOD * round);
    }
    // A late timeout renews once, from then on.
    h.advance(EXTEND_PERIOD * 5);
    h.lc.handle_timeout(h.now);
    assert_eq!(
        h.drain_outputs(),
        [a(ExtendStopTimeout { by: EXTEND_LEASE })]
    );
    assert_eq!(h.lc.poll_timeout(), Some(h.now + EXTEND_PERIOD));
    // The end of the drain ends the renewals.
    h.input(Input::Drained);
    assert_eq!(h.lc.poll_timeout(), None);

    // Without a service manager nothing is extended.
    let mut h = Harness::ready_with(Config::new().drain_timeout(None));
    assert!(
        !h.request(Request::Stop)
            .iter()
            .any(|o| matches!(o, Output::Action(ExtendStopTimeout { .. })))
    );
    assert_eq!(h.lc.poll_timeout(), None);
}

// ---- the fallback ----------------------------------------------------------------------------

#[test]
fn successor_killed_during_the_drain_gives_the_service_back() {
    let mut h = handed_over_to_child();
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Signaled(9),
        }),
        [
            e(Event::TookServiceBack {
                pid: CHILD,
                status: ChildStatus::Signaled(9),
            }),
            a(EndHandOver),
            changed(Phase::Draining, Phase::Running),
            a(ResumeAccepting),
            a(Announce(READY_AGAIN)),
        ]
    );
    // No drain deadline is left, and the end of the interrupted drain changes nothing.
    assert_eq!(h.lc.poll_timeout(), None);
    assert_eq!(
        h.input(Input::Drained),
        [refused(InputKind::Drained, Refusal::NotDraining)]
    );
    assert_eq!(h.request(Request::Restart), restart_begins());
}

#[test]
fn successor_that_exits_1_in_probation_gives_the_service_back_and_a_later_restart_works() {
    const NEXT: u32 = CHILD + 1;
    let mut h = in_probation();
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(1),
        }),
        [
            e(Event::TookServiceBack {
                pid: CHILD,
                status: ChildStatus::Exited(1),
            }),
            changed(Phase::Probation, Phase::Running),
            a(ResumeAccepting),
            a(Announce(READY_AGAIN)),
        ]
    );
    assert_eq!(h.lc.poll_timeout(), None);
    assert_eq!(h.request(Request::Restart), restart_begins());
    assert_eq!(
        h.input(Input::ChildSpawned { pid: NEXT }),
        [e(Event::ChildSpawned { pid: NEXT })]
    );
    assert_eq!(
        h.input(Input::ChildReady { pid: NEXT }),
        [
            e(Event::ChildReady { pid: NEXT }),
            changed(Phase::Forking, Phase::Draining),
            a(StopAccepting),
            a(HandOver { successor: NEXT }),
            a(CloseIdle),
        ]
    );
}

#[test]
fn successor_that_departs_during_the_drain_needs_no_fallback() {
    let mut h = handed_over_to_child();
    assert_eq!(
        h.input(Input::SuccessorDeparted {
            pid: CHILD,
            how: Departure::HandedOver,
        }),
        [
            e(Event::SuccessorDeparted {
                pid: CHILD,
                how: Departure::HandedOver,
            }),
            a(ReleaseListeners),
        ]
    );
    assert_eq!(
        h.input(Input::SuccessorDeparted {
            pid: CHILD,
            how: Departure::HandedOver,
        }),
        [refused(InputKind::SuccessorDeparted, Refusal::Duplicate)]
    );
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(0),
        }),
        [e(Event::SuccessorExited {
            pid: CHILD,
            status: ChildStatus::Exited(0),
        })]
    );
    // No probation: the process exits with its drain.
    assert_eq!(
        h.input(Input::Drained),
        [
            a(EndHandOver),
            changed(Phase::Draining, Phase::Stopped),
            exit_after_handover(),
        ]
    );

    // Once it departed, even its abnormal end (a forced close on its own stop) is no crash.
    let mut h = handed_over_to_child();
    h.input(Input::SuccessorDeparted {
        pid: CHILD,
        how: Departure::Stopping,
    });
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(3),
        }),
        [e(Event::SuccessorExited {
            pid: CHILD,
            status: ChildStatus::Exited(3),
        })]
    );
    assert_eq!(h.lc.phase(), Phase::Draining);
}

#[test]
fn successor_that_departs_in_probation_ends_it_at_once() {
    let mut h = in_probation();
    assert_eq!(
        h.input(Input::SuccessorDeparted {
            pid: CHILD,
            how: Departure::Stopping,
        }),
        [
            e(Event::SuccessorDeparted {
                pid: CHILD,
                how: Departure::Stopping,
            }),
            changed(Phase::Probation, Phase::Stopped),
            exit_after_handover(),
        ]
    );
    assert_eq!(h.lc.poll_timeout(), None);
}

#[test]
fn stop_or_hammer_in_probation_ends_it_at_once_and_nothing_comes_back() {
    for request in [Request::Stop, Request::Hammer] {
        let mut h = in_probation();
        assert_eq!(
            h.request(request),
            [
                requested(request),
                changed(Phase::Probation, Phase::Stopped),
                exit_after_handover(),
            ]
        );
        // A stopped service stays stopped: the successor's crash now is no one's concern.
        assert_eq!(
            h.input(Input::ChildExited {
                pid: CHILD,
                status: ChildStatus::Signaled(9),
            }),
            [refused(
                InputKind::ChildExited,
                Refusal::UnknownChild(CHILD)
            )]
        );
        assert_eq!(
            h.input(Input::SuccessorDeparted {
                pid: CHILD,
                how: Departure::Stopping,
            }),
            [refused(InputKind::SuccessorDeparted, Refusal::Stopped)]
        );
        assert!(h.lc.is_stopped());
    }
}

#[test]
fn probation_ends_with_its_timeout() {
    let mut h = in_probation();
    // A spurious early timeout does nothing.
    h.advance(PROBATION / 2);
    h.lc.handle_timeout(h.now);
    assert_eq!(h.drain_outputs(), []);
    assert_eq!(h.lc.phase(), Phase::Probation);
    assert_eq!(
        h.step(),
        [
            changed(Phase::Probation, Phase::Stopped),
            exit_after_handover(),
        ]
    );
    assert_eq!(h.elapsed(), Duration::from_secs(1) + PROBATION);
}

#[test]
fn without_probation_the_process_exits_at_the_end_of_its_drain() {
    let mut h = Harness::ready_with(Config::new().probation(Duration::ZERO));
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    h.input(Input::ChildReady { pid: CHILD });
    assert_eq!(
        h.input(Input::Drained),
        [
            a(EndHandOver),
            changed(Phase::Draining, Phase::Stopped),
            exit_after_handover(),
        ]
    );

    // While it drains it is still the fallback.
    let mut h = Harness::ready_with(Config::new().probation(Duration::ZERO));
    h.request(Request::Restart);
    h.input(Input::ChildSpawned { pid: CHILD });
    h.input(Input::ChildReady { pid: CHILD });
    let crash = h.input(Input::ChildExited {
        pid: CHILD,
        status: ChildStatus::Signaled(6),
    });
    assert!(crash.contains(&a(ResumeAccepting)));
    assert_eq!(h.lc.phase(), Phase::Running);
}

#[test]
fn successor_that_exits_0_without_departing_needs_no_fallback() {
    let mut h = handed_over_to_child();
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(0),
        }),
        [
            e(Event::SuccessorExited {
                pid: CHILD,
                status: ChildStatus::Exited(0),
            }),
            a(ReleaseListeners),
        ]
    );
    assert_eq!(
        h.input(Input::Drained),
        [
            a(EndHandOver),
            changed(Phase::Draining, Phase::Stopped),
            exit_after_handover(),
        ]
    );

    // In probation, its clean exit ends the wait.
    let mut h = in_probation();
    assert_eq!(
        h.input(Input::ChildExited {
            pid: CHILD,
            status: ChildStatus::Exited(0),
        }),
        [
            e(Event::SuccessorExited {
                pid: CHILD,
                status: ChildStatus::Exited(0),
            }),
            changed(Phase::Probation, Phase::Stopped),
            exit_after_handover(),
        ]
    );
}

#[test]
fn an_inherited_process_tells_its_predecessor_that_it_goes() {
    let inherited = || {
        let mut h = Harness::new(
            Config::new()
                .drain_timeout(Some(DRAIN))
                .probation(PROBATION),
            Origin::Inherited,
        );
        h.input(Input::Ready);
        h
    };
    // It starts a successor of its own (it said so then), and hands over to it: once in a
    // life is enough.
    let mut h = inherited();
    assert!(h.request(Request::Restart).contains(&a(Depart {
        how: Departure::Restarting
    })));
    h.input(Input::ChildSpawned { pid: CHILD });
    assert_eq!(
        h.input(Input::ChildReady { pid: CHILD }),
        [
            e(Event::ChildReady { pid: CHILD }),
            changed(Phase::Forking, Phase::Draining),
            a(StopAccepting),
            a(HandOver { successor: CHILD }),
            a(CloseIdle),
        ]
    );
    // A committed staged upgrade: the same.
    let mut h = inherited();
    assert!(h.request(Request::Stage).contains(&a(Depart {
        how: Departure::Restarting
    })));
    // Commit is the handover: no second departure.
    h.input(Input::ChildSpawned { pid: CHILD });
    h.input(Input::ChildReady { pid: CHILD });
    assert!(
        !h.request(Request::Commit)
            .iter()
            .any(|o| matches!(o, Output::Action(Depart { .. })))
    );
    // The service stops.
    let mut h = inherited();
    assert_eq!(
        h.request(Request::Stop),
        [
            requested(Request::Stop),
            changed(Phase::Running, Phase::Draining),
            a(Announce(Status::Stopping)),
            a(Depart {
                how: Departure::Stopping
            }),
            a(StopAccepting),
            a(ReleaseListeners),
            a(CloseIdle),
        ]
    );
}

#[test]
fn in_probation_only_the_successor_matters() {
    let mut h = in_probation();
    for request in [
        Request::Restart,
        Request::Stage,
        Request::Commit,
        Request::Rollback,
    ] {
        let kind = Input::Request(request).kind();
        assert_eq!(
            h.request(request),
            [requested(request), refused(kind, Refusal::HandedOver)]
        );
    }
    assert_eq!(
        h.input(Input::Ready),
        [refused(InputKind::Ready, Refusal::HandedOver)]
    );
    assert_eq!(
        h.input(Input::Drained),
        [refused(InputKind::Drained, Refusal::NotDraining)]
    );
    assert_eq!(
        h.input(Input::SuccessorDeparted {
            pid: CHILD + 1,
            how: Departure::HandedOver,
        }),
        [refused(
            InputKind::SuccessorDeparted,
            Refusal::UnknownChild(CHILD + 1)
        )]
    );
    assert_eq!(h.lc.phase(), Phase::Probation);
    // A process that never handed over has nobody to wait for.
    let mut h = Harness::ready();
    assert_eq!(
        h.input(Input::SuccessorDeparted {
            pid: CHILD,
            how: Departure::Stopping,
        }),
        [refused(InputKind::SuccessorDeparted, Refusal::NotDraining)]
    );
}

#[test]
fn a_duplicate_spawn_report_of_the_successor_never_kills_it() {
    let mut h = handed_over_to_child();
    assert_eq!(
        h.input(Input::ChildSpawned { pid: CHILD }),
        [refused(InputKind::ChildSpawned, Refusal::Duplicate)]
    );
    let mut h = in_probation();
    assert_eq!(
        h.input(Input::ChildSpawned { pid: CHILD }),
        [refused(InputKind::ChildSpawned, Refusal::Duplicate)]
    );
    // A departure of another pid, or during a stop's drain, names no successor.
    assert_eq!(
        h.input(Input::SuccessorDeparted {
            pid: CHILD + 1,
            how: Departure::Stopping
        }),
        [refused(
            InputKind::SuccessorDeparted,
            Refusal::UnknownChild(CHILD + 1)
        )]
    );
    let mut h = Harness::ready();
    h.request(Request::Stop);
    assert_eq!(
        h.input(Input::SuccessorDeparted {
            pid: CHILD,
            how: Departure::Stopping
        }),
        [refused(
            InputKind::SuccessorDeparted,
            Refusal::UnknownChild(CHILD)
        )]
    );
}
