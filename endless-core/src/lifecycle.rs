//! The restart lifecycle: a sans-IO state machine.
//!
//! One [`Lifecycle`] lives in every server process. It is told what happened
//! ([`Lifecycle::handle`], [`Lifecycle::handle_timeout`]) and answers with what to do
//! ([`Lifecycle::poll_output`], [`Lifecycle::poll_timeout`]). It never reads the clock,
//! never does I/O and never spawns: time arrives as an argument and every effect leaves as
//! an [`Action`] for the adapter to carry out.
//!
//! ```text
//!            Restart                 child ready
//!  Running ───────────▶ Forking ─────────────────▶ Draining ── drained / deadline / hammer ──▶ Stopped
//!     ▲                    │                          ▲                  │                     ▲
//!     └── child failed, ───┘                          │                  │ a child it killed   │
//!         exited, timed out, rolled back              │                  ▼ is not reaped yet   │
//!  Running / Forking / Staged ─────── Stop ───────────┘               Exiting ── reaped / ─────┘
//!                                                                                reap deadline
//!
//!            Stage                   child ready                Commit
//!  Running ───────────▶ Forking ─────────────────▶ Staged ─────────────▶ Draining
//!     ▲                                               │
//!     └────── Rollback (the child is stopped), ───────┘
//!             or the child exited
//! ```
//!
//! # The fallback
//!
//! A generation that handed over is the fallback of its successor until it exits: it keeps
//! its listening sockets (not accepting, [`Action::StopAccepting`]), and after its drain it
//! waits [`Config::probation`] more ([`Phase::Probation`]). If the successor ends
//! abnormally meanwhile (a signal, a non-zero exit) without having said that it goes
//! ([`Input::SuccessorDeparted`]: it handed over onward, or the service stops), this
//! process takes the service back ([`Event::TookServiceBack`]): it is `Running` again,
//! accepts again ([`Action::ResumeAccepting`]) and claims the main pid.
//!
//! ```text
//!  Draining (handed over) ── drained / deadline / hammer ──▶ Probation ── over, stop, ──▶ Stopped
//!     │                                                        │          successor departed
//!     └──────── the successor crashed, ─────▶ Running ◀────────┘
//!               it had not departed
//! ```
//!
//! A staged upgrade (nginx' binary upgrade) runs the new generation beside this one: both
//! serve until the operator commits (this one drains, as after a restart) or rolls back
//! (the new one is asked to stop, [`Action::StopChild`], and this one serves alone).
//!
//! A child this process killed ([`Action::KillChild`]: a stop while it started, say) may
//! still hold the listeners, and could report ready to nobody and serve: the lifecycle
//! ends ([`Action::Exit`]) only once it is reaped, or [`Config::reap_timeout`] after the
//! drain ended ([`Phase::Exiting`]).
//!
//! Every decision is taken here, including those about the service manager
//! ([`Config::service_manager`]): which ready claims the main pid ([`Status::Ready`]),
//! when a stop extends its timeout ([`Action::ExtendStopTimeout`]), and that staged
//! upgrades are refused under one.
//!
//! # The drive loop
//!
//! After every call to `handle` or `handle_timeout`, poll [`Lifecycle::poll_output`] until it
//! returns `None` and carry out each [`Action`] in order; then ask
//! [`Lifecycle::poll_timeout`] when to call `handle_timeout` next. Inputs that result from
//! an action (a [`Input::ChildSpawned`] after [`Action::SpawnChild`]) are handed in as soon
//! as they are known, in the order they happened.
//!
//! Deadlines are only acted on in `handle_timeout`: an input that arrives after a deadline
//! but before `handle_timeout` was called is taken as it is (a child that reports ready a
//! moment late is still a good child). Calling `handle_timeout` early, or twice, is harmless.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// A process id, as the operating system numbers them.
pub type Pid = u32;

/// How long a new process may take to report ready before it is killed, unless configured.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a draining process waits for its connections before it closes them, unless
/// configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a generation that handed over stays the fallback of its successor after its
/// drain, unless configured ([`Config::probation`]).
///
/// Five seconds: the bad deploy that this catches dies on its first real requests (a panic
/// in a handler, a missing file, an OOM kill under load), which a busy server sees in its
/// first second; the drain before the probation has already given it as long as the
/// slowest request took. Longer costs the old generation's memory for longer on every
/// deploy, and a successor that hands over onward, or a stop, ends the probation at once.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(5);

/// How long an ending lifecycle waits for the children it killed to be reaped, unless
/// configured. `SIGKILL` cannot be caught: a moment, unless the machine is stuck.
pub const DEFAULT_REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Under a service manager, what a stop extension adds to the drain deadline: time for the
/// forced close and the exit that follow it.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Under a service manager, how long each extension of a stop without drain deadline lasts.
pub const EXTEND_LEASE: Duration = Duration::from_secs(30);

/// Under a service manager, how often the extension of a stop without drain deadline is
/// renewed ([`Action::ExtendStopTimeout`]). Well below [`EXTEND_LEASE`], so that one lost
/// renewal is tolerated.
pub const EXTEND_PERIOD: Duration = Duration::from_secs(10);

/// What a stop request means while the process is already draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RepeatedStop {
    /// Refuse it: the drain goes on until it ends or its deadline passes. The right choice
    /// under a service manager that signals every process of a service at once.
    #[default]
    Ignore,
    /// Treat it as a hammer: close what is left and exit now (a second Ctrl-C).
    Hammer,
}

/// Configuration of a [`Lifecycle`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use endless_core::{Config, RepeatedStop};
///
/// let config = Config::new()
///     .upgrade_timeout(Duration::from_secs(10))
///     .drain_timeout(None) // never hammer: wait for every connection
///     .repeated_stop(RepeatedStop::Hammer);
/// assert_eq!(config.get_drain_timeout(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    upgrade_timeout: Duration,
    drain_timeout: Option<Duration>,
    repeated_stop: RepeatedStop,
    forced_exit_code: i32,
    staged_upgrades: bool,
    service_manager: bool,
    reap_timeout: Duration,
    probation: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// The defaults: a 60 s upgrade timeout, a 60 s drain timeout, a repeated stop is
    /// refused, exit code 0 even when the drain was cut short, a 5 s probation.
    pub const fn new() -> Self {
        Self {
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            drain_timeout: Some(DEFAULT_DRAIN_TIMEOUT),
            repeated_stop: RepeatedStop::Ignore,
            forced_exit_code: 0,
            staged_upgrades: true,
            service_manager: false,
            reap_timeout: DEFAULT_REAP_TIMEOUT,
            probation: DEFAULT_PROBATION,
        }
    }

    /// How long a new process may take, from the restart request, to report ready. When
    /// it passes, the new process is killed and this one goes on serving.
    #[must_use]
    pub const fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// How long a draining process waits for its connections to finish before it closes
    /// them (the "hammer"). `None` waits for ever: only an explicit hammer request cuts the
    /// drain short.
    #[must_use]
    pub const fn drain_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// What a stop request means while the process is already draining.
    #[must_use]
    pub const fn repeated_stop(mut self, meaning: RepeatedStop) -> Self {
        self.repeated_stop = meaning;
        self
    }

    /// The exit code of a process whose drain was cut short (by the deadline or a hammer
    /// request). A clean drain always exits with 0.
    #[must_use]
    pub const fn forced_exit_code(mut self, code: i32) -> Self {
        self.forced_exit_code = code;
        self
    }

    /// Whether [`Request::Stage`] is taken (default) or refused with
    /// [`Refusal::StagedUpgradesOff`]. Under a service manager they are refused whatever
    /// this says ([`service_manager`](Self::service_manager)).
    #[must_use]
    pub const fn staged_upgrades(mut self, allowed: bool) -> Self {
        self.staged_upgrades = allowed;
        self
    }

    /// Whether a service manager (systemd's `NOTIFY_SOCKET`) hears of this service: a fact
    /// the adapter reports at start-up, not a preference. Under one,
    ///
    /// - a staged upgrade is refused ([`Refusal::UnderServiceManager`]): the staged
    ///   generation would claim the main pid once ready, and one rolled back would say
    ///   `STOPPING=1` as it stops, stopping the whole unit;
    /// - a graceful stop extends the manager's stop timeout to cover the drain
    ///   ([`Action::ExtendStopTimeout`]): once, to the drain deadline plus [`STOP_MARGIN`];
    ///   without a deadline, by [`EXTEND_LEASE`] every [`EXTEND_PERIOD`] until the end.
    #[must_use]
    pub const fn service_manager(mut self, present: bool) -> Self {
        self.service_manager = present;
        self
    }

    /// How long the end of the lifecycle waits for the children it killed (a stop while a
    /// new generation started) to be reaped, in [`Phase::Exiting`]: a child that outlived
    /// this process would hold the listeners, and could report ready to nobody and serve.
    #[must_use]
    pub const fn reap_timeout(mut self, timeout: Duration) -> Self {
        self.reap_timeout = timeout;
        self
    }

    /// How long a generation that handed over stays, after its drain, the fallback of its
    /// successor ([`Phase::Probation`], [`DEFAULT_PROBATION`]). `Duration::ZERO`: none; it
    /// is still the fallback while it drains.
    #[must_use]
    pub const fn probation(mut self, probation: Duration) -> Self {
        self.probation = probation;
        self
    }

    /// The configured probation.
    pub const fn get_probation(&self) -> Duration {
        self.probation
    }

    /// Whether a service manager hears of this service.
    pub const fn get_service_manager(&self) -> bool {
        self.service_manager
    }

    /// The configured reap timeout.
    pub const fn get_reap_timeout(&self) -> Duration {
        self.reap_timeout
    }

    /// Whether staged upgrades are taken.
    pub const fn get_staged_upgrades(&self) -> bool {
        self.staged_upgrades
    }

    /// The configured upgrade timeout.
    pub const fn get_upgrade_timeout(&self) -> Duration {
        self.upgrade_timeout
    }

    /// The configured drain timeout (`None`: never hammer).
    pub const fn get_drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    /// The configured meaning of a stop request while draining.
    pub const fn get_repeated_stop(&self) -> RepeatedStop {
        self.repeated_stop
    }

    /// The configured exit code after a forced close.
    pub const fn get_forced_exit_code(&self) -> i32 {
        self.forced_exit_code
    }
}

/// How this process came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// Started by an operator or a service manager (possibly with systemd sockets).
    Fresh,
    /// Spawned by a previous generation, which waits for this process to report ready.
    Inherited,
}

/// A request from the operator or the application. Adapters map signals onto these
/// (endless' defaults: `SIGHUP` restart, `SIGTERM`/`SIGINT` stop, `SIGUSR2` hammer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Request {
    /// Start a new generation of the server and hand over to it once it is ready.
    Restart,
    /// Stop gracefully: stop accepting, finish the connections, exit.
    Stop,
    /// While draining: close whatever is left now and exit.
    Hammer,
    /// A staged upgrade: start a new generation *beside* this one. Once it is ready both
    /// serve (the kernel spreads new connections between them) until [`Request::Commit`]
    /// or [`Request::Rollback`].
    Stage,
    /// Of a staged upgrade: the new generation stays; this one stops accepting and drains,
    /// as after a restart.
    Commit,
    /// Of a staged (or a starting) upgrade: the new generation is stopped (gracefully once
    /// it serves, killed before) and this one goes on serving alone.
    Rollback,
}

/// How a child process ended, as the adapter observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChildStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
    /// The adapter could not tell.
    Unknown,
}

impl fmt::Display for ChildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exited with code {code}"),
            Self::Signaled(signal) => write!(f, "was killed by signal {signal}"),
            Self::Unknown => f.write_str("ended"),
        }
    }
}

/// Why a child process that is still running is deemed to have failed before it reported
/// ready.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChildFailure {
    /// Its readiness channel was closed before it said "ready".
    ChannelClosed,
    /// It wrote something that is not a valid readiness message.
    BadMessage(String),
}

impl fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChannelClosed => f.write_str("closed its readiness channel before it was ready"),
            Self::BadMessage(what) => write!(f, "sent a bad readiness message: {what}"),
        }
    }
}

/// Something that happened, handed to [`Lifecycle::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input {
    /// The operator or the application asks for something.
    Request(Request),
    /// The application is initialised and serving: announce it (to the parent, if this
    /// process was spawned by one, and to the service manager).
    Ready,
    /// The child asked for by [`Action::SpawnChild`] is running with this pid.
    ChildSpawned {
        /// Its pid.
        pid: Pid,
    },
    /// The child asked for by [`Action::SpawnChild`] could not be started.
    SpawnFailed {
        /// What went wrong, for the event and the logs.
        reason: String,
    },
    /// The child said "ready" on its readiness channel.
    ChildReady {
        /// Its pid.
        pid: Pid,
    },
    /// The child is running but broke the readiness protocol.
    ChildFailed {
        /// Its pid.
        pid: Pid,
        /// What it did.
        reason: ChildFailure,
    },
    /// A child was reaped.
    ChildExited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ChildStatus,
    },
    /// Every tracked connection has closed (report it once connections hit zero after
    /// [`Action::CloseIdle`], or at once if there were none).
    Drained,
    /// The generation this process handed over to said that it goes, and why, before it
    /// ended ([`Action::Depart`] on its side): its end is then no crash, and this process
    /// will not take the service back.
    SuccessorDeparted {
        /// Its pid.
        pid: Pid,
        /// Why it goes.
        how: Departure,
    },
}

/// Why a generation goes, as it tells the generation it took over from
/// ([`Action::Depart`], [`Input::SuccessorDeparted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Departure {
    /// It handed over to a successor of its own, which reported ready.
    HandedOver,
    /// The service stops.
    Stopping,
    /// It started a restart (or a staged upgrade) of its own: whatever comes of it, it no
    /// longer needs a fallback.
    Restarting,
}

impl fmt::Display for Departure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HandedOver => "it handed over to its own successor",
            Self::Stopping => "the service stops",
            Self::Restarting => "it started a successor of its own",
        })
    }
}

impl Input {
    /// The kind of this input, without its data.
    pub fn kind(&self) -> InputKind {
        match self {
            Self::Request(Request::Restart) => InputKind::Restart,
            Self::Request(Request::Stop) => InputKind::Stop,
            Self::Request(Request::Hammer) => InputKind::Hammer,
            Self::Request(Request::Stage) => InputKind::Stage,
            Self::Request(Request::Commit) => InputKind::Commit,
            Self::Request(Request::Rollback) => InputKind::Rollback,
            Self::Ready => InputKind::Ready,
            Self::ChildSpawned { .. } => InputKind::ChildSpawned,
            Self::SpawnFailed { .. } => InputKind::SpawnFailed,
            Self::ChildReady { .. } => InputKind::ChildReady,
            Self::ChildFailed { .. } => InputKind::ChildFailed,
            Self::ChildExited { .. } => InputKind::ChildExited,
            Self::Drained => InputKind::Drained,
            Self::SuccessorDeparted { .. } => InputKind::SuccessorDeparted,
        }
    }
}

/// The kind of an [`Input`], without its data (for events about refused inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // each variant names the `Input` / `Request` it stands for
pub enum InputKind {
    Restart,
    Stop,
    Hammer,
    Stage,
    Commit,
    Rollback,
    Ready,
    ChildSpawned,
    SpawnFailed,
    ChildReady,
    ChildFailed,
    ChildExited,
    Drained,
    SuccessorDeparted,
}

/// The phases of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Serving; a restart may be requested.
    Running,
    /// Serving while a new generation starts; waiting for it to report ready.
    Forking,
    /// A staged upgrade: serving beside a new generation that is ready, until the operator
    /// commits or rolls back.
    Staged,
    /// No longer accepting; finishing the connections in hand. After a handover, the
    /// fallback of the successor.
    Draining,
    /// Handed over and drained: still the fallback of the successor, not accepting, for
    /// [`Config::probation`].
    Probation,
    /// The drain is over; waiting (at most [`Config::reap_timeout`]) for the children this
    /// process killed to be reaped before it exits.
    Exiting,
    /// Done: the process exits.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Forking => "forking",
            Self::Staged => "staged",
            Self::Draining => "draining",
            Self::Probation => "probation",
            Self::Exiting => "exiting",
            Self::Stopped => "stopped",
        })
    }
}

/// Why this process drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DrainCause {
    /// A new generation took over the listeners.
    HandedOver {
        /// The pid of the new generation.
        successor: Pid,
    },
    /// The service is stopping.
    Shutdown,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitReason {
    /// Every connection finished.
    Drained,
    /// A hammer request closed what was left.
    Hammered,
    /// The drain deadline passed and what was left was closed.
    DeadlinePassed,
}

/// Why an upgrade (a restart attempt) failed. The old process goes on serving.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeFailure {
    /// The child could not be started.
    SpawnFailed(String),
    /// The child exited before it reported ready.
    ChildExited(ChildStatus),
    /// The child broke the readiness protocol.
    ChildFailed(ChildFailure),
    /// The child did not report ready within the upgrade timeout.
    TimedOut,
    /// A stop request arrived while the child was starting.
    Cancelled,
    /// The operator rolled the (staged) upgrade back.
    RolledBack,
}

impl fmt::Display for UpgradeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpawnFailed(reason) => {
                write!(f, "the new process could not be started: {reason}")
            }
            Self::ChildExited(status) => write!(f, "the new process {status} before it was ready"),
            Self::ChildFailed(failure) => write!(f, "the new process {failure}"),
            Self::TimedOut => f.write_str("the new process did not become ready in time"),
            Self::Cancelled => f.write_str("the upgrade was cancelled by a stop request"),
            Self::RolledBack => f.write_str("the upgrade was rolled back"),
        }
    }
}

/// Why an input was refused or ignored. Refusing is always safe: the machine's state is
/// unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A restart needs the application to have reported ready first.
    NotReady,
    /// A restart is already under way.
    UpgradeInProgress,
    /// The process is draining.
    Draining,
    /// The process has stopped.
    Stopped,
    /// The application already reported ready.
    AlreadyReady,
    /// Only meaningful while draining.
    NotDraining,
    /// The input names a child that is not the one being waited for (a late message
    /// from a child that was already given up on).
    UnknownChild(Pid),
    /// No child is being started.
    NoSpawnPending,
    /// The same input was already taken.
    Duplicate,
    /// Commit and rollback need a staged upgrade (rollback: or one starting).
    NothingStaged,
    /// Staged upgrades are turned off ([`Config::staged_upgrades`]).
    StagedUpgradesOff,
    /// Staged upgrades are refused under a service manager ([`Config::service_manager`]).
    UnderServiceManager,
    /// The process handed over and drained; it only waits as the fallback of its
    /// successor ([`Phase::Probation`]).
    HandedOver,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady => f.write_str("the application has not reported ready yet"),
            Self::UpgradeInProgress => f.write_str("a restart is already in progress"),
            Self::Draining => f.write_str("the process is draining"),
            Self::Stopped => f.write_str("the process has stopped"),
            Self::AlreadyReady => f.write_str("ready was already reported"),
            Self::NotDraining => f.write_str("the process is not draining"),
            Self::UnknownChild(pid) => write!(f, "pid {pid} is not the child being waited for"),
            Self::NoSpawnPending => f.write_str("no child is being started"),
            Self::Duplicate => f.write_str("the same input was already taken"),
            Self::NothingStaged => f.write_str("no staged upgrade to commit or roll back"),
            Self::StagedUpgradesOff => f.write_str("staged upgrades are turned off"),
            Self::UnderServiceManager => {
                f.write_str("staged upgrades are refused under a service manager")
            }
            Self::HandedOver => {
                f.write_str("the process handed over and only waits as the fallback")
            }
        }
    }
}

/// What the service manager (systemd, a pid file) should be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// This process serves the service: at its first ready (a fresh start, or a new
    /// generation taking over) or again (an old generation that kept serving after a
    /// failed or rolled-back upgrade).
    Ready {
        /// This process claims to be the service's main process (`MAINPID=`): a new
        /// generation taking over, or one serving again (a staged generation that was
        /// ready may have claimed it).
        main_pid: bool,
        /// Serving again after an upgrade failed or was rolled back, or after a fallback.
        again: bool,
    },
    /// A restart began.
    Reloading,
    /// The service is stopping (never sent by a process that handed over).
    Stopping,
}

/// Something the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Start the new generation: the same executable, arguments and working directory,
    /// with the listeners and a readiness channel. Report [`Input::ChildSpawned`] or
    /// [`Input::SpawnFailed`].
    SpawnChild,
    /// Kill this child (it may still run) and reap it.
    KillChild {
        /// Its pid.
        pid: Pid,
    },
    /// Ask this child, which serves (a staged generation), to stop gracefully (`SIGTERM`),
    /// and reap it once it exits.
    StopChild {
        /// Its pid.
        pid: Pid,
    },
    /// Stop accepting new connections (park the accept loops). Do not close the listening
    /// sockets: the new generation accepts on the same ones, including what is queued in
    /// the kernel; and after a handover this process may accept on them again
    /// ([`Action::ResumeAccepting`]) until [`Action::ReleaseListeners`] or the exit.
    StopAccepting,
    /// Accept again, as before [`Action::StopAccepting`]: the successor died and this
    /// process took the service back ([`Event::TookServiceBack`]). Connections told to
    /// close before ([`Action::CloseIdle`]) still close; new ones are served as usual.
    ResumeAccepting,
    /// This process will never accept again (a stop, or its successor no longer needs a
    /// fallback): accept loops end, and its copies of the listening sockets may be closed
    /// (the next generation holds its own). [`Action::Exit`] implies it.
    ReleaseListeners,
    /// Tell the generation this one took over from (on the inherited readiness channel,
    /// if it still listens) that this process goes, and why: its end is then no crash to
    /// fall back from ([`Input::SuccessorDeparted`] on the other side). Once in a life, in a
    /// process of [`Origin::Inherited`] that reported ready (one that never did has taken
    /// nothing over: its parent still waits for its readiness line): when it starts a
    /// restart of its own ([`Departure::Restarting`], before [`Action::SpawnChild`]), or
    /// when it drains, before [`Action::StopAccepting`].
    Depart {
        /// Why.
        how: Departure,
    },
    /// The drain after a handover is over (it ended, or the successor died and this process
    /// took the service back, [`Event::TookServiceBack`]): close this process's sending side
    /// of the takeover channel, so that the new generation's receivers end.
    EndHandOver,
    /// Connections may now be handed to the new generation, which reported ready
    /// ([`crate::takeover`]). Comes after [`Action::StopAccepting`] and before
    /// [`Action::CloseIdle`], so that an application told to close a connection can choose
    /// to hand it over instead.
    HandOver {
        /// The pid of the new generation.
        successor: Pid,
    },
    /// Close idle connections gracefully (an HTTP server answers the next request on a
    /// keep-alive connection with `Connection: close`, HTTP/2 sends GOAWAY).
    CloseIdle,
    /// Close every remaining connection now.
    ForceClose,
    /// Tell the parent process that this one is ready (on the inherited channel).
    SendReadiness,
    /// Once, at the first ready (after [`Action::SendReadiness`], when there is a parent):
    /// the application's receivers are all registered; receive the connections the parent
    /// hands over on the readiness channel ([`crate::takeover`]). A process without a parent
    /// receives none: its receivers end here. Never before this process is ready.
    ReceiveConnections,
    /// Tell the service manager (and update the pid file).
    Announce(Status),
    /// Once, at the first ready: close the inherited fds the application did not claim
    /// (a listener the new configuration dropped is then refused, not left queueing).
    CloseUnclaimed,
    /// Under a service manager, while a graceful stop drains: extend its stop timeout
    /// (`EXTEND_TIMEOUT_USEC=`) by this much from now.
    ExtendStopTimeout {
        /// How long the stop may still take.
        by: Duration,
    },
    /// Exit the process.
    Exit {
        /// The exit code.
        code: i32,
        /// Why the drain ended.
        reason: ExitReason,
        /// Why the process drained.
        cause: DrainCause,
    },
}

/// Something that happened inside the lifecycle, for hooks and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A request arrived; what it leads to follows (a state change or a refusal).
    Requested(Request),
    /// An input was refused or ignored; nothing changed.
    Refused {
        /// What was refused.
        input: InputKind,
        /// Why.
        reason: Refusal,
    },
    /// The phase changed.
    StateChanged {
        /// The phase left.
        from: Phase,
        /// The phase entered.
        to: Phase,
    },
    /// The new generation is running.
    ChildSpawned {
        /// Its pid.
        pid: Pid,
    },
    /// The new generation reported ready.
    ChildReady {
        /// Its pid.
        pid: Pid,
    },
    /// A restart attempt failed; this process goes on serving and may be restarted again.
    UpgradeFailed {
        /// The child's pid, if it was known.
        pid: Option<Pid>,
        /// Why it failed.
        reason: UpgradeFailure,
    },
    /// A child turned up that nobody waits for (spawned after its upgrade was given up);
    /// it is killed.
    UnexpectedChild {
        /// Its pid.
        pid: Pid,
    },
    /// The generation this process handed over to exited, and this process does not take
    /// the service back: it had departed, or it exited with code 0.
    SuccessorExited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ChildStatus,
    },
    /// The generation this process handed over to said it goes ([`Input::SuccessorDeparted`]):
    /// it no longer needs a fallback.
    SuccessorDeparted {
        /// Its pid.
        pid: Pid,
        /// Why it goes.
        how: Departure,
    },
    /// The fallback: the generation this process handed over to ended abnormally without
    /// departing, and this process serves again.
    TookServiceBack {
        /// The successor's pid.
        pid: Pid,
        /// How it ended.
        status: ChildStatus,
    },
    /// A generation this process asked to stop ([`Action::StopChild`]: a rolled-back
    /// staged upgrade) exited.
    StoppedChildExited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ChildStatus,
    },
    /// A child this process killed ([`Action::KillChild`]) was reaped.
    KilledChildExited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ChildStatus,
    },
    /// The reap timeout passed in [`Phase::Exiting`] with these killed children not reaped;
    /// the process exits all the same.
    NotReaped {
        /// Their pids.
        pids: Vec<Pid>,
    },
    /// The remaining connections are being closed.
    ForceClosing {
        /// Why: [`ExitReason::Hammered`] or [`ExitReason::DeadlinePassed`].
        reason: ExitReason,
    },
}

/// One output of the lifecycle: something to do, or something to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Carry this out.
    Action(Action),
    /// Observe this (hooks, logging).
    Event(Event),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadyState {
    /// The application has not said it is ready.
    Pending,
    /// Ready was announced.
    Announced,
}

#[derive(Debug, Clone)]
enum State {
    Running {
        readiness: ReadyState,
    },
    Forking {
        /// `None` until the adapter reports the spawn.
        child: Option<Pid>,
        deadline: Option<Instant>,
        /// A staged upgrade: once ready, the child serves beside this process.
        staged: bool,
    },
    Staged {
        child: Pid,
    },
    Draining {
        cause: DrainCause,
        deadline: Option<Instant>,
        /// When the service manager's stop timeout is extended next (a stop without a
        /// drain deadline, under a service manager).
        renew: Option<Instant>,
        /// This process takes the service back if its successor crashes: it handed over,
        /// and the successor has neither departed nor exited cleanly.
        fallback: bool,
    },
    Probation {
        successor: Pid,
        until: Option<Instant>,
        exit: Exit,
    },
    Exiting {
        exit: Exit,
        deadline: Option<Instant>,
    },
    Stopped,
}

/// What [`Action::Exit`] will say, kept while [`Phase::Exiting`].
#[derive(Debug, Clone, Copy)]
struct Exit {
    code: i32,
    reason: ExitReason,
    cause: DrainCause,
}

impl State {
    fn phase(&self) -> Phase {
        match self {
            Self::Running { .. } => Phase::Running,
            Self::Forking { .. } => Phase::Forking,
            Self::Staged { .. } => Phase::Staged,
            Self::Draining { .. } => Phase::Draining,
            Self::Probation { .. } => Phase::Probation,
            Self::Exiting { .. } => Phase::Exiting,
            Self::Stopped => Phase::Stopped,
        }
    }
}

/// The restart lifecycle of one server process.
///
/// The methods come in four groups, as in quinn-proto's `Connection`: getters (`&self`),
/// [`handle`](Self::handle) and [`handle_timeout`](Self::handle_timeout) for what
/// happened, and [`poll_output`](Self::poll_output) / [`poll_timeout`](Self::poll_timeout)
/// for what to do. The [crate docs](crate#the-drive-loop) show the drive loop.
///
/// # Examples
///
/// A restart, step by step:
///
/// ```
/// use std::time::Instant;
/// use endless_core::{
///     Action, Config, DEFAULT_PROBATION, Input, Lifecycle, Origin, Output, Phase, Request,
/// };
///
/// let now = Instant::now();
/// let mut lc = Lifecycle::new(Config::new(), Origin::Fresh);
/// let actions = |lc: &mut Lifecycle| {
///     std::iter::from_fn(|| lc.poll_output())
///         .filter_map(|o| match o { Output::Action(a) => Some(a), Output::Event(_) => None })
///         .collect::<Vec<_>>()
/// };
///
/// lc.handle(Input::Ready, now);
/// lc.handle(Input::Request(Request::Restart), now);
/// assert!(actions(&mut lc).contains(&Action::SpawnChild));
/// lc.handle(Input::ChildSpawned { pid: 4242 }, now);
/// lc.handle(Input::ChildReady { pid: 4242 }, now);
/// assert_eq!(
///     actions(&mut lc),
///     [Action::StopAccepting, Action::HandOver { successor: 4242 }, Action::CloseIdle]
/// );
/// assert_eq!(lc.phase(), Phase::Draining);
/// lc.handle(Input::Drained, now);
/// // Still the fallback of the new generation for its probation (5 s), then it exits.
/// assert_eq!(actions(&mut lc), [Action::EndHandOver]);
/// assert_eq!(lc.phase(), Phase::Probation);
/// let over = lc.poll_timeout().expect("the probation's end");
/// lc.handle_timeout(over);
/// assert!(matches!(actions(&mut lc)[..], [Action::Exit { code: 0, .. }]));
/// ```
#[derive(Debug, Clone)]
pub struct Lifecycle {
    config: Config,
    origin: Origin,
    state: State,
    /// Children asked to stop ([`Action::StopChild`]) that have not exited yet.
    stopping: Vec<Pid>,
    /// Children killed ([`Action::KillChild`]) that have not been reaped yet.
    killed: Vec<Pid>,
    /// This process told the generation it took over from that it goes
    /// ([`Action::Depart`]): once in a life.
    departed: bool,
    outputs: VecDeque<Output>,
}

impl Lifecycle {
    /// A lifecycle in [`Phase::Running`]. The application owes one [`Input::Ready`]; a
    /// process of [`Origin::Inherited`] then also tells its parent.
    pub fn new(config: Config, origin: Origin) -> Self {
        Self {
            config,
            origin,
            state: State::Running {
                readiness: ReadyState::Pending,
            },
            stopping: Vec::new(),
            killed: Vec::new(),
            departed: false,
            outputs: VecDeque::new(),
        }
    }

    // ---- getters ----

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How this process came to be.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The child being waited for while [`Phase::Forking`], once spawned; the staged
    /// generation while [`Phase::Staged`].
    pub fn child(&self) -> Option<Pid> {
        match self.state {
            State::Forking { child, .. } => child,
            State::Staged { child } => Some(child),
            _ => None,
        }
    }

    /// When the drain closes every remaining connection ([`Action::ForceClose`]), while
    /// [`Phase::Draining`] with a drain timeout ([`Config::drain_timeout`]); `None` in any
    /// other phase, or when the drain waits for every connection however long it takes.
    ///
    /// The adapter reads it when told [`Action::CloseIdle`] and hands it to the
    /// connections, so that long-lived ones (websockets) can say goodbye a little before.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use endless_core::{Config, Input, Lifecycle, Origin, Request};
    ///
    /// let config = Config::new().drain_timeout(Some(Duration::from_secs(30)));
    /// let mut lifecycle = Lifecycle::new(config, Origin::Fresh);
    /// let now = Instant::now();
    /// lifecycle.handle(Input::Ready, now);
    /// assert_eq!(lifecycle.drain_deadline(), None);
    /// lifecycle.handle(Input::Request(Request::Stop), now);
    /// assert_eq!(lifecycle.drain_deadline(), Some(now + Duration::from_secs(30)));
    /// ```
    pub fn drain_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Draining { deadline, .. } => deadline,
            _ => None,
        }
    }

    /// Why the process drains, while [`Phase::Draining`].
    pub fn drain_cause(&self) -> Option<DrainCause> {
        match self.state {
            State::Draining { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// Whether the application has reported ready (and the readiness was announced).
    pub fn is_ready(&self) -> bool {
        !matches!(
            self.state,
            State::Running {
                readiness: ReadyState::Pending
            }
        )
    }

    /// Whether the lifecycle has ended; the process should exit once the outputs are
    /// carried out.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    // ---- input ----

    /// Hands in something that happened at `now`; then poll the outputs.
    ///
    /// Deadlines are only acted on in [`handle_timeout`](Self::handle_timeout): an input
    /// that arrives after a deadline, but before `handle_timeout` was called, is taken as
    /// it is (a child that reports ready a moment late is still a good child). Inputs that
    /// do not fit the current state (late, duplicate, naming another child) change nothing
    /// and are reported as [`Event::Refused`]; no input panics.
    pub fn handle(&mut self, input: Input, now: Instant) {
        let kind = input.kind();
        match input {
            Input::Request(request) => {
                self.event(Event::Requested(request));
                match request {
                    Request::Restart => self.on_restart(now, false),
                    Request::Stage => self.on_restart(now, true),
                    Request::Stop => self.on_stop(now),
                    Request::Hammer => self.on_hammer(now),
                    Request::Commit => self.on_commit(now),
                    Request::Rollback => self.on_rollback(),
                }
            }
            Input::Ready => self.on_ready(),
            Input::ChildSpawned { pid } => self.on_child_spawned(pid),
            Input::SpawnFailed { reason } => {
                if matches!(self.state, State::Forking { child: None, .. }) {
                    self.upgrade_failed(None, UpgradeFailure::SpawnFailed(reason), false);
                } else {
                    self.refuse(kind, Refusal::NoSpawnPending);
                }
            }
            Input::ChildReady { pid } => self.on_child_ready(pid, now),
            Input::ChildFailed { pid, reason } => {
                if self.is_pending_child(pid) {
                    self.upgrade_failed(Some(pid), UpgradeFailure::ChildFailed(reason), true);
                } else {
                    self.refuse(kind, Refusal::UnknownChild(pid));
                }
            }
            Input::ChildExited { pid, status } => self.on_child_exited(pid, status, now),
            Input::Drained => {
                if matches!(self.state, State::Draining { .. }) {
                    self.stop(ExitReason::Drained, now);
                } else {
                    self.refuse(kind, Refusal::NotDraining);
                }
            }
            Input::SuccessorDeparted { pid, how } => self.on_successor_departed(pid, how, now),
        }
    }

    /// Acts on every deadline that has passed at `now`. Spurious calls do nothing. No
    /// deadline at or before `now` is left: one that a transition arms already passed (a
    /// zero reap timeout) is acted on too.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Each round leaves a state or moves its renewal forward: a few rounds suffice.
        for _ in 0..4 {
            if self.poll_timeout().is_none_or(|deadline| deadline > now) {
                return;
            }
            self.on_timeout(now);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        match self.state {
            State::Forking {
                child,
                deadline: Some(deadline),
                ..
            } if now >= deadline => {
                self.upgrade_failed(child, UpgradeFailure::TimedOut, true);
            }
            State::Draining {
                deadline: Some(deadline),
                ..
            } if now >= deadline => {
                self.event(Event::ForceClosing {
                    reason: ExitReason::DeadlinePassed,
                });
                self.action(Action::ForceClose);
                self.stop(ExitReason::DeadlinePassed, now);
            }
            State::Draining {
                renew: Some(renew), ..
            } if now >= renew => {
                if let State::Draining { renew, .. } = &mut self.state {
                    *renew = now.checked_add(EXTEND_PERIOD);
                }
                self.action(Action::ExtendStopTimeout { by: EXTEND_LEASE });
            }
            State::Probation {
                until: Some(until),
                exit,
                ..
            } if now >= until => self.end(exit, now),
            State::Exiting {
                exit,
                deadline: Some(deadline),
            } if now >= deadline => {
                let pids = std::mem::take(&mut self.killed);
                self.event(Event::NotReaped { pids });
                self.finish(exit);
            }
            _ => {}
        }
    }

    // ---- output ----

    /// The next thing to do or to know, in order; `None` when there is nothing left.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Forking { deadline, .. } | State::Exiting { deadline, .. } => deadline,
            State::Probation { until, .. } => until,
            State::Draining {
                deadline, renew, ..
            } => match (deadline, renew) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            State::Running { .. } | State::Staged { .. } | State::Stopped => None,
        }
    }

    // ---- transitions (private) ----

    /// A restart, or with `staged` a staged upgrade.
    fn on_restart(&mut self, now: Instant, staged: bool) {
        let kind = if staged {
            InputKind::Stage
        } else {
            InputKind::Restart
        };
        match self.state {
            State::Running {
                readiness: ReadyState::Pending,
            } => self.refuse(kind, Refusal::NotReady),
            State::Running {
                readiness: ReadyState::Announced,
            } if staged && !self.config.staged_upgrades => {
                self.refuse(kind, Refusal::StagedUpgradesOff);
            }
            State::Running {
                readiness: ReadyState::Announced,
            } if staged && self.config.service_manager => {
                self.refuse(kind, Refusal::UnderServiceManager);
            }
            State::Running {
                readiness: ReadyState::Announced,
            } => {
                self.enter(State::Forking {
                    child: None,
                    deadline: now.checked_add(self.config.upgrade_timeout),
                    staged,
                });
                self.action(Action::Announce(Status::Reloading));
                // It lived to start a successor of its own: its predecessor is no longer
                // its fallback, or a crash of this process now would bring back the
                // predecessor beside the successor that then serves (orphaned).
                self.depart(Departure::Restarting);
                self.action(Action::SpawnChild);
            }
            State::Forking { .. } | State::Staged { .. } => {
                self.refuse(kind, Refusal::UpgradeInProgress);
            }
            State::Draining { .. } => self.refuse(kind, Refusal::Draining),
            State::Probation { .. } => self.refuse(kind, Refusal::HandedOver),
            State::Exiting { .. } | State::Stopped => self.refuse(kind, Refusal::Stopped),
        }
    }

    fn on_commit(&mut self, now: Instant) {
        match self.state {
            State::Staged { child } => self.drain(DrainCause::HandedOver { successor: child }, now),
            State::Draining { .. } => self.refuse(InputKind::Commit, Refusal::Draining),
            State::Probation { .. } => self.refuse(InputKind::Commit, Refusal::HandedOver),
            State::Exiting { .. } | State::Stopped => {
                self.refuse(InputKind::Commit, Refusal::Stopped);
            }
            State::Running { .. } | State::Forking { .. } => {
                self.refuse(InputKind::Commit, Refusal::NothingStaged);
            }
        }
    }

    fn on_rollback(&mut self) {
        match self.state {
            State::Forking { child, .. } => {
                self.upgrade_failed(child, UpgradeFailure::RolledBack, true);
            }
            State::Staged { child } => {
                // It serves: it stops as a server does, finishing its connections.
                self.event(Event::UpgradeFailed {
                    pid: Some(child),
                    reason: UpgradeFailure::RolledBack,
                });
                self.enter(State::Running {
                    readiness: ReadyState::Announced,
                });
                // This process is the service's main one again, before the other stops.
                self.action(Action::Announce(Status::Ready {
                    main_pid: true,
                    again: true,
                }));
                self.stop_child(child);
            }
            State::Draining { .. } => self.refuse(InputKind::Rollback, Refusal::Draining),
            State::Probation { .. } => self.refuse(InputKind::Rollback, Refusal::HandedOver),
            State::Exiting { .. } | State::Stopped => {
                self.refuse(InputKind::Rollback, Refusal::Stopped);
            }
            State::Running { .. } => self.refuse(InputKind::Rollback, Refusal::NothingStaged),
        }
    }

    fn on_stop(&mut self, now: Instant) {
        match self.state {
            State::Running { .. } => self.drain(DrainCause::Shutdown, now),
            State::Staged { child } => {
                // The service stops: the staged generation too.
                self.stop_child(child);
                self.drain(DrainCause::Shutdown, now);
            }
            State::Forking { child, .. } => {
                self.event(Event::UpgradeFailed {
                    pid: child,
                    reason: UpgradeFailure::Cancelled,
                });
                // A child spawned later is killed as unexpected (`on_child_spawned`).
                if let Some(pid) = child {
                    self.kill_child(pid);
                }
                self.drain(DrainCause::Shutdown, now);
            }
            State::Draining { .. } => match self.config.repeated_stop {
                RepeatedStop::Ignore => self.refuse(InputKind::Stop, Refusal::Draining),
                RepeatedStop::Hammer => self.hammer(now),
            },
            // Nothing is left to drain: a stop ends the wait, and the fallback with it (a
            // stopped service stays stopped).
            State::Probation { exit, .. } => self.end(exit, now),
            State::Exiting { .. } | State::Stopped => {
                self.refuse(InputKind::Stop, Refusal::Stopped);
            }
        }
    }

    fn on_hammer(&mut self, now: Instant) {
        match self.state {
            State::Draining { .. } => self.hammer(now),
            State::Probation { exit, .. } => self.end(exit, now),
            State::Exiting { .. } | State::Stopped => {
                self.refuse(InputKind::Hammer, Refusal::Stopped);
            }
            State::Running { .. } | State::Forking { .. } | State::Staged { .. } => {
                self.refuse(InputKind::Hammer, Refusal::NotDraining);
            }
        }
    }

    fn on_ready(&mut self) {
        match self.state {
            State::Running {
                readiness: ReadyState::Pending,
            } => {
                self.state = State::Running {
                    readiness: ReadyState::Announced,
                };
                // The service manager learns first: a new generation must be the main
                // process before its parent, told next, exits.
                self.action(Action::Announce(Status::Ready {
                    main_pid: self.origin == Origin::Inherited,
                    again: false,
                }));
                self.action(Action::CloseUnclaimed);
                if self.origin == Origin::Inherited {
                    self.action(Action::SendReadiness);
                }
                self.action(Action::ReceiveConnections);
            }
            State::Running {
                readiness: ReadyState::Announced,
            }
            | State::Forking { .. }
            | State::Staged { .. } => self.refuse(InputKind::Ready, Refusal::AlreadyReady),
            State::Draining { .. } => self.refuse(InputKind::Ready, Refusal::Draining),
            State::Probation { .. } => self.refuse(InputKind::Ready, Refusal::HandedOver),
            State::Exiting { .. } | State::Stopped => {
                self.refuse(InputKind::Ready, Refusal::Stopped);
            }
        }
    }

    fn on_child_spawned(&mut self, pid: Pid) {
        match &mut self.state {
            State::Forking {
                child: child @ None,
                ..
            } => {
                *child = Some(pid);
                self.event(Event::ChildSpawned { pid });
            }
            // Already known: a duplicate report is harmless.
            State::Forking {
                child: Some(known), ..
            }
            | State::Staged { child: known }
            | State::Draining {
                cause: DrainCause::HandedOver { successor: known },
                ..
            }
            | State::Probation {
                successor: known, ..
            } if *known == pid => {
                self.refuse(InputKind::ChildSpawned, Refusal::Duplicate);
            }
            // Nobody waits for this one (its upgrade was given up, or it is a second
            // child): it must not live on with our listeners.
            _ => {
                self.event(Event::UnexpectedChild { pid });
                self.kill_child(pid);
            }
        }
    }

    fn on_child_ready(&mut self, pid: Pid, now: Instant) {
        if self.is_pending_child(pid) {
            self.event(Event::ChildReady { pid });
            if matches!(self.state, State::Forking { staged: true, .. }) {
                // Both serve until the operator commits or rolls back.
                self.enter(State::Staged { child: pid });
            } else {
                self.drain(DrainCause::HandedOver { successor: pid }, now);
            }
        } else {
            self.refuse(InputKind::ChildReady, Refusal::UnknownChild(pid));
        }
    }

    fn on_child_exited(&mut self, pid: Pid, status: ChildStatus, now: Instant) {
        if let Some(i) = self.stopping.iter().position(|&p| p == pid) {
            self.stopping.swap_remove(i);
            self.event(Event::StoppedChildExited { pid, status });
            return;
        }
        if let Some(i) = self.killed.iter().position(|&p| p == pid) {
            self.killed.swap_remove(i);
            self.event(Event::KilledChildExited { pid, status });
            if let State::Exiting { exit, .. } = self.state
                && self.killed.is_empty()
            {
                self.finish(exit);
            }
            return;
        }
        match self.state {
            State::Forking {
                child: Some(child), ..
            } if child == pid => {
                self.upgrade_failed(Some(pid), UpgradeFailure::ChildExited(status), false);
            }
            // The staged generation ended on its own (crashed, or stopped by the
            // operator): this process serves alone again.
            State::Staged { child } if child == pid => {
                self.upgrade_failed(Some(pid), UpgradeFailure::ChildExited(status), false);
            }
            State::Draining {
                cause: DrainCause::HandedOver { successor },
                fallback,
                ..
            } if successor == pid => {
                if fallback && abnormal(status) {
                    self.take_back(pid, status);
                } else {
                    self.event(Event::SuccessorExited { pid, status });
                    if fallback {
                        self.disarm();
                    }
                }
            }
            State::Probation {
                successor, exit, ..
            } if successor == pid => {
                if abnormal(status) {
                    self.take_back(pid, status);
                } else {
                    self.event(Event::SuccessorExited { pid, status });
                    self.end(exit, now);
                }
            }
            _ => self.refuse(InputKind::ChildExited, Refusal::UnknownChild(pid)),
        }
    }

    fn on_successor_departed(&mut self, pid: Pid, how: Departure, now: Instant) {
        let kind = InputKind::SuccessorDeparted;
        match self.state {
            State::Draining {
                cause: DrainCause::HandedOver { successor },
                fallback,
                ..
            } if successor == pid => {
                if fallback {
                    self.event(Event::SuccessorDeparted { pid, how });
                    self.disarm();
                } else {
                    self.refuse(kind, Refusal::Duplicate);
                }
            }
            State::Probation {
                successor, exit, ..
            } if successor == pid => {
                self.event(Event::SuccessorDeparted { pid, how });
                self.end(exit, now);
            }
            State::Draining { .. } | State::Probation { .. } => {
                self.refuse(kind, Refusal::UnknownChild(pid));
            }
            State::Exiting { .. } | State::Stopped => self.refuse(kind, Refusal::Stopped),
            _ => self.refuse(kind, Refusal::NotDraining),
        }
    }

    /// While draining after a handover: the successor no longer needs a fallback, and this
    /// process will not accept again.
    fn disarm(&mut self) {
        if let State::Draining { fallback, .. } = &mut self.state {
            *fallback = false;
        }
        self.action(Action::ReleaseListeners);
    }

    /// The fallback: Draining or Probation → Running, after the successor died.
    fn take_back(&mut self, pid: Pid, status: ChildStatus) {
        self.event(Event::TookServiceBack { pid, status });
        // A drain cut short ends its handover here (a probation has ended it already): the
        // process serves again, and must not go on handing connections to a dead process.
        if matches!(self.state, State::Draining { .. }) {
            self.action(Action::EndHandOver);
        }
        self.enter(State::Running {
            readiness: ReadyState::Announced,
        });
        self.action(Action::ResumeAccepting);
        self.action(Action::Announce(Status::Ready {
            main_pid: true,
            again: true,
        }));
    }

    fn is_pending_child(&self, pid: Pid) -> bool {
        matches!(self.state, State::Forking { child: Some(child), .. } if child == pid)
    }

    /// Forking → Running after a failed upgrade; `kill` when the child may still run.
    fn upgrade_failed(&mut self, pid: Option<Pid>, reason: UpgradeFailure, kill: bool) {
        self.event(Event::UpgradeFailed { pid, reason });
        self.enter(State::Running {
            readiness: ReadyState::Announced,
        });
        if let (true, Some(pid)) = (kill, pid) {
            self.kill_child(pid);
        }
        // The old process is still (or again) the one serving the service.
        self.action(Action::Announce(Status::Ready {
            main_pid: true,
            again: true,
        }));
    }

    fn drain(&mut self, cause: DrainCause, now: Instant) {
        let deadline = self
            .config
            .drain_timeout
            .and_then(|timeout| now.checked_add(timeout));
        // Under a service manager a stop extends its stop timeout to cover the drain: once
        // to the deadline, or lease by lease without one.
        let extension = (cause == DrainCause::Shutdown && self.config.service_manager).then(|| {
            match self.config.drain_timeout {
                Some(timeout) => (timeout.saturating_add(STOP_MARGIN), None),
                None => (EXTEND_LEASE, now.checked_add(EXTEND_PERIOD)),
            }
        });
        let handed_over = matches!(cause, DrainCause::HandedOver { .. });
        let was_ready = self.is_ready();
        self.enter(State::Draining {
            cause,
            deadline,
            renew: extension.and_then(|(_, renew)| renew),
            fallback: handed_over,
        });
        if cause == DrainCause::Shutdown {
            self.action(Action::Announce(Status::Stopping));
        }
        if let Some((by, _)) = extension {
            self.action(Action::ExtendStopTimeout { by });
        }
        // The generation this one took over from may still be our fallback: this is no
        // crash. A process that never reported ready took nothing over: its parent still
        // waits for its readiness line on that channel, not for a departure.
        if was_ready {
            self.depart(if handed_over {
                Departure::HandedOver
            } else {
                Departure::Stopping
            });
        }
        self.action(Action::StopAccepting);
        if !handed_over {
            self.action(Action::ReleaseListeners);
        }
        if let DrainCause::HandedOver { successor } = cause {
            self.action(Action::HandOver { successor });
        }
        self.action(Action::CloseIdle);
    }

    /// Tells the generation this one took over from that it goes, once in a life.
    fn depart(&mut self, how: Departure) {
        if self.origin == Origin::Inherited && !self.departed {
            self.departed = true;
            self.action(Action::Depart { how });
        }
    }

    /// Asks a serving child to stop; its exit is then expected.
    fn stop_child(&mut self, pid: Pid) {
        self.stopping.push(pid);
        self.action(Action::StopChild { pid });
    }

    /// Kills a child that may still run; the end of the lifecycle waits for its exit.
    fn kill_child(&mut self, pid: Pid) {
        if !self.killed.contains(&pid) {
            self.killed.push(pid);
        }
        self.action(Action::KillChild { pid });
    }

    fn hammer(&mut self, now: Instant) {
        self.event(Event::ForceClosing {
            reason: ExitReason::Hammered,
        });
        self.action(Action::ForceClose);
        self.stop(ExitReason::Hammered, now);
    }

    /// The drain is over: Draining → Stopped, through Probation while the successor may
    /// still need a fallback, and through Exiting while a child this process killed is not
    /// reaped yet.
    fn stop(&mut self, reason: ExitReason, now: Instant) {
        let State::Draining {
            cause, fallback, ..
        } = self.state
        else {
            return;
        };
        let code = match reason {
            ExitReason::Drained => 0,
            ExitReason::Hammered | ExitReason::DeadlinePassed => self.config.forced_exit_code,
        };
        let exit = Exit {
            code,
            reason,
            cause,
        };
        let DrainCause::HandedOver { successor } = cause else {
            return self.end(exit, now);
        };
        self.action(Action::EndHandOver);
        if fallback && !self.config.probation.is_zero() {
            self.enter(State::Probation {
                successor,
                until: now.checked_add(self.config.probation),
                exit,
            });
        } else {
            self.end(exit, now);
        }
    }

    /// → Stopped, through Exiting while a child this process killed is not reaped yet.
    fn end(&mut self, exit: Exit, now: Instant) {
        if self.killed.is_empty() {
            self.finish(exit);
        } else {
            self.enter(State::Exiting {
                exit,
                deadline: now.checked_add(self.config.reap_timeout),
            });
        }
    }

    /// → Stopped: the process exits.
    fn finish(&mut self, exit: Exit) {
        self.enter(State::Stopped);
        self.action(Action::Exit {
            code: exit.code,
            reason: exit.reason,
            cause: exit.cause,
        });
    }

    fn enter(&mut self, state: State) {
        let from = self.state.phase();
        let to = state.phase();
        self.state = state;
        if from != to {
            self.event(Event::StateChanged { from, to });
        }
    }

    fn refuse(&mut self, input: InputKind, reason: Refusal) {
        self.event(Event::Refused { input, reason });
    }

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn action(&mut self, action: Action) {
        self.outputs.push_back(Output::Action(action));
    }
}

/// Whether a successor's end calls for the fallback (unless it departed first): anything
/// but a clean exit.
fn abnormal(status: ChildStatus) -> bool {
    status != ChildStatus::Exited(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_getters_return_what_was_set() {
        let defaults = Config::default();
        assert_eq!(defaults, Config::new());
        assert_eq!(defaults.get_upgrade_timeout(), DEFAULT_UPGRADE_TIMEOUT);
        assert_eq!(defaults.get_drain_timeout(), Some(DEFAULT_DRAIN_TIMEOUT));
        assert_eq!(defaults.get_repeated_stop(), RepeatedStop::Ignore);
        assert_eq!(defaults.get_forced_exit_code(), 0);
        assert!(defaults.get_staged_upgrades());
        assert!(!defaults.get_service_manager());
        assert_eq!(defaults.get_reap_timeout(), DEFAULT_REAP_TIMEOUT);
        assert_eq!(defaults.get_probation(), DEFAULT_PROBATION);

        let config = Config::new()
            .upgrade_timeout(Duration::from_secs(7))
            .drain_timeout(Some(Duration::from_secs(9)))
            .repeated_stop(RepeatedStop::Hammer)
            .forced_exit_code(42)
            .staged_upgrades(false)
            .service_manager(true)
            .reap_timeout(Duration::from_secs(3))
            .probation(Duration::from_secs(11));
        assert_eq!(config.get_upgrade_timeout(), Duration::from_secs(7));
        assert_eq!(config.get_drain_timeout(), Some(Duration::from_secs(9)));
        assert_eq!(config.get_repeated_stop(), RepeatedStop::Hammer);
        assert_eq!(config.get_forced_exit_code(), 42);
        assert!(!config.get_staged_upgrades());
        assert!(config.get_service_manager());
        assert_eq!(config.get_reap_timeout(), Duration::from_secs(3));
        assert_eq!(config.get_probation(), Duration::from_secs(11));
        assert_eq!(
            Config::new().probation(Duration::ZERO).get_probation(),
            Duration::ZERO
        );
        assert_eq!(Config::new().drain_timeout(None).get_drain_timeout(), None);

        let lc = Lifecycle::new(config.clone(), Origin::Inherited);
        assert_eq!(lc.config(), &config);
        assert_eq!(lc.origin(), Origin::Inherited);
        assert_eq!(
            Lifecycle::new(Config::new(), Origin::Fresh).origin(),
            Origin::Fresh
        );
    }

    #[test]
    fn display_messages() {
        let cases: [(&dyn fmt::Display, &str); 34] = [
            (&ChildStatus::Exited(3), "exited with code 3"),
            (&ChildStatus::Signaled(9), "was killed by signal 9"),
            (&ChildStatus::Unknown, "ended"),
            (
                &ChildFailure::ChannelClosed,
                "closed its readiness channel before it was ready",
            ),
            (
                &ChildFailure::BadMessage("junk".into()),
                "sent a bad readiness message: junk",
            ),
            (&Phase::Running, "running"),
            (&Phase::Forking, "forking"),
            (&Phase::Staged, "staged"),
            (&Phase::Draining, "draining"),
            (&Phase::Probation, "probation"),
            (&Phase::Exiting, "exiting"),
            (&Phase::Stopped, "stopped"),
            (
                &UpgradeFailure::SpawnFailed("ENOENT".into()),
                "the new process could not be started: ENOENT",
            ),
            (
                &UpgradeFailure::ChildExited(ChildStatus::Signaled(11)),
                "the new process was killed by signal 11 before it was ready",
            ),
            (
                &UpgradeFailure::ChildFailed(ChildFailure::ChannelClosed),
                "the new process closed its readiness channel before it was ready",
            ),
            (
                &UpgradeFailure::TimedOut,
                "the new process did not become ready in time",
            ),
            (
                &UpgradeFailure::Cancelled,
                "the upgrade was cancelled by a stop request",
            ),
            (&UpgradeFailure::RolledBack, "the upgrade was rolled back"),
            (
                &Refusal::NotReady,
                "the application has not reported ready yet",
            ),
            (
                &Refusal::UpgradeInProgress,
                "a restart is already in progress",
            ),
            (&Refusal::Draining, "the process is draining"),
            (&Refusal::Stopped, "the process has stopped"),
            (&Refusal::AlreadyReady, "ready was already reported"),
            (&Refusal::NotDraining, "the process is not draining"),
            (
                &Refusal::UnknownChild(17),
                "pid 17 is not the child being waited for",
            ),
            (&Refusal::NoSpawnPending, "no child is being started"),
            (&Refusal::Duplicate, "the same input was already taken"),
            (
                &Refusal::NothingStaged,
                "no staged upgrade to commit or roll back",
            ),
            (
                &Refusal::StagedUpgradesOff,
                "staged upgrades are turned off",
            ),
            (
                &Refusal::UnderServiceManager,
                "staged upgrades are refused under a service manager",
            ),
            (
                &Refusal::HandedOver,
                "the process handed over and only waits as the fallback",
            ),
            (
                &Departure::HandedOver,
                "it handed over to its own successor",
            ),
            (&Departure::Stopping, "the service stops"),
            (&Departure::Restarting, "it started a successor of its own"),
        ];
        for (value, expected) in cases {
            assert_eq!(value.to_string(), expected);
        }
    }
}
