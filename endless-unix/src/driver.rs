//! The task that owns the lifecycle, shared by every runtime adapter.
//!
//! It hands the [`Lifecycle`] every input (signals, the application's `ready`, child
//! spawned / ready / exited, drained, deadlines), with the time read from the
//! [`Runtime`], and carries out every action, in order. It decides nothing: what to do,
//! and when, comes from the lifecycle; what happened goes back to it as an input. A fake
//! [`Runtime`] (a fake clock, fake children) drives it in unit tests.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_channel::{Receiver, Sender};
use endless_core::control::{Answer, Answers, RefusalKind, RequestKind};
use endless_core::ready::{Readiness, ReadyParser};
use endless_core::state::Header;
use endless_core::takeover::{Deframer, Upstream};
use endless_core::{
    Action, ChildStatus, DrainCause, Event, FdKind, Input, Lifecycle, Output, Phase, Request,
    Status, UpgradeFailure,
};
use tracing::Instrument;

use crate::channel::Channel;
use crate::control::ControlServer;
use crate::handle::{Exit, Shared, lock};
use crate::notify::Notifier;
use crate::runtime::{ChildProcess, ReadinessReader, Runtime};
use crate::spawn::{self, HandoffFd};
use crate::state::ProvideError;
use crate::sys;
use crate::takeover::{Feed, Outbox, OutboxEvent};
use crate::tracker::Sealing;

/// What reaches the driver task.
#[derive(Debug)]
pub(crate) enum Message {
    /// Something for the lifecycle.
    Input(Input),
    /// A restart request from the control socket, answered on its connection with the
    /// outcome of this request ([`Answers`]). The driver writes the answer itself, so that
    /// it is sent before the process acts on what follows (an exit, say).
    Restart {
        /// Where to answer.
        connection: UnixStream,
        /// Which request it is: answered at the handover, or once the new generation is
        /// proven.
        kind: RequestKind,
    },
    /// The application state for the child of restart number `attempt` is written (or
    /// could not be): spawn it now.
    State {
        /// Which [`Action::SpawnChild`] it is for.
        attempt: u64,
        /// The file and its header, or why there is none.
        produced: Result<(File, Header), ProvideError>,
    },
    /// A child was spawned (or could not be) off the runtime's threads: its outcome is in
    /// the driver's [`SpawnSlot`].
    Spawned,
}

/// What the spawning thread reports: the child and the read end of its channel, or what
/// failed and why.
pub(crate) type Spawned = Result<(Box<dyn ChildProcess>, OwnedFd), (&'static str, String)>;

/// Where the spawning thread leaves its outcome for the driver. The thread holds the lock
/// while it spawns, so that a driver that ends takes the lock, sees every child spawned so
/// far, and keeps any later one from being spawned: no successor starts after the
/// lifecycle ended (a stop during the restart, say).
#[derive(Default)]
struct SpawnSlot {
    /// The lifecycle ended: spawn nothing more.
    cancelled: bool,
    /// The outcome of restart number `.0`, not yet taken by the driver.
    done: Option<(u64, Spawned)>,
}

/// Starts the task that owns `lifecycle` on `runtime`, taking its inputs from `inputs`.
pub(crate) fn start<R: Runtime>(
    runtime: R,
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    inputs: Receiver<Message>,
    notifier: Option<Notifier>,
    supervisor: Option<Notifier>,
    control: Option<ControlServer>,
) {
    let runtime = Arc::new(runtime);
    let driver = Driver {
        runtime: Arc::clone(&runtime),
        shared,
        lifecycle,
        inputs,
        children: HashMap::new(),
        notifier,
        supervisor,
        control,
        answers: Answers::new(),
        owed: Vec::new(),
        channels: HashMap::new(),
        parent_channel: None,
        to_parent: None,
        spawn_attempt: 0,
        spawn_slot: Arc::default(),
    };
    let span = driver.shared.span.clone();
    spawn(&*runtime, &span, driver.run());
}

/// Runs `task` on `runtime` inside `span` (the process's span: every line endless logs
/// carries the pid).
pub(crate) fn spawn<R: Runtime + ?Sized>(
    runtime: &R,
    span: &tracing::Span,
    task: impl Future<Output = ()> + Send + 'static,
) {
    runtime.spawn(Box::pin(task.instrument(span.clone())));
}

/// What the driver asks of the task that owns a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildCommand {
    /// `SIGKILL` to it and its process group: it may still run and must not live on, nor
    /// anything it started (a wrapper script's server that holds the listeners).
    Kill,
    /// `SIGTERM` to it and its process group: it serves (a staged generation) and stops on
    /// its own terms.
    Terminate,
}

/// The task that owns the lifecycle.
struct Driver<R> {
    runtime: Arc<R>,
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    inputs: Receiver<Message>,
    /// How to reach the task that owns each child not reaped yet, by pid.
    children: HashMap<u32, Sender<ChildCommand>>,
    /// The service manager to tell (`NOTIFY_SOCKET`, read once at start-up).
    notifier: Option<Notifier>,
    /// The supervisor that started the first generation ([`crate::supervisor`]), if any.
    supervisor: Option<Notifier>,
    /// The control socket's accept loop, while this process answers on it (see
    /// [`crate::control`]).
    control: Option<ControlServer>,
    /// The answers owed to restart requests from the control socket.
    answers: Answers<UnixStream>,
    /// The answers the output being carried out completed, written once it is.
    owed: Vec<(UnixStream, Answer)>,
    /// This process's end of each live child's readiness channel, which carries the
    /// connections handed over once the child is ready, and the replies read from it.
    channels: HashMap<u32, (OwnedFd, (Feed, crate::takeover::Events))>,
    /// The readiness channel to the parent, kept after the "ready" line to receive
    /// connections.
    parent_channel: Option<Channel>,
    /// The same, to tell the parent that this process departs ([`Action::Depart`]), while
    /// the parent is there.
    to_parent: Option<std::sync::Weak<Channel>>,
    /// The number of the latest [`Action::SpawnChild`]: application state produced for an
    /// earlier one (given up meanwhile) is dropped, and a child spawned for it killed.
    spawn_attempt: u64,
    /// Where the spawning thread leaves the child ([`Driver::start_spawn`]).
    spawn_slot: Arc<Mutex<SpawnSlot>>,
}

impl<R: Runtime> Driver<R> {
    /// The drive loop: carry out every output, then wait for the next input or deadline.
    async fn run(mut self) {
        loop {
            while let Some(output) = self.lifecycle.poll_output() {
                self.owed = self.answers.observe(&output);
                match output {
                    Output::Event(event) => self.event(&event),
                    Output::Action(action) => self.act(action),
                }
                // After the action: `ready` once this process stopped accepting, `fell-back`
                // once it serves again and the pid file names it. (An exit writes what it
                // completes itself, before the process may end.)
                self.answer_owed();
            }
            self.refuse_unasked();
            if self.lifecycle.is_stopped() {
                return;
            }
            let next = match self.lifecycle.poll_timeout() {
                Some(deadline) => {
                    let sleep = self.runtime.sleep_until(deadline);
                    futures_lite::future::or(async { Some(self.inputs.recv().await) }, async {
                        sleep.await;
                        None
                    })
                    .await
                }
                None => Some(self.inputs.recv().await),
            };
            let now = self.runtime.now();
            match next {
                Some(Ok(Message::Input(input))) => {
                    if let Input::ChildExited { pid, .. } = input {
                        self.children.remove(&pid);
                        self.channels.remove(&pid);
                    }
                    self.lifecycle.handle(input, now);
                }
                Some(Ok(Message::Restart { connection, kind })) => {
                    self.take_restart(connection, kind, now);
                }
                Some(Ok(Message::State { attempt, produced })) => {
                    self.state_produced(attempt, produced);
                }
                Some(Ok(Message::Spawned)) => {
                    let done = lock(&self.spawn_slot).done.take();
                    if let Some((attempt, spawned)) = done {
                        self.spawned(attempt, spawned);
                    }
                }
                // Unreachable while `shared` holds a sender; stop rather than spin.
                Some(Err(_)) => return,
                None => self.lifecycle.handle_timeout(now),
            }
        }
    }

    /// Hands a restart request from the control socket to the lifecycle; [`Answers`] tells
    /// its answer later.
    fn take_restart(&mut self, connection: UnixStream, kind: RequestKind, now: Instant) {
        match kind {
            RequestKind::UntilProven => {
                tracing::info!("restart requested over the control socket, until proven");
                self.answers.ask_until_proven(connection);
            }
            _ => {
                tracing::info!("restart requested over the control socket");
                self.answers.ask(connection);
            }
        }
        self.lifecycle.handle(Input::Request(Request::Restart), now);
    }

    /// The lifecycle takes or refuses every request: this is only a safety net.
    fn refuse_unasked(&mut self) {
        if let Some(connection) = self.answers.unasked() {
            crate::control::answer(
                connection,
                &Answer::Refused {
                    reason: RefusalKind::Other,
                    message: "the request was not taken".to_owned(),
                },
            );
        }
    }

    /// At the end: the restart requests still queued (accepted on the control socket before
    /// this process stopped accepting, read since) go to the lifecycle, which refuses them
    /// (it has stopped): each is answered, `moved` after a handover, instead of dropped
    /// with the process. Anything else queued was for a lifecycle that has ended.
    fn answer_late_requests(&mut self) {
        let now = self.runtime.now();
        while let Ok(message) = self.inputs.try_recv() {
            let Message::Restart { connection, kind } = message else {
                continue;
            };
            self.take_restart(connection, kind, now);
            while let Some(output) = self.lifecycle.poll_output() {
                self.owed.extend(self.answers.observe(&output));
                if let Output::Event(event) = &output {
                    self.event(event);
                }
            }
            self.refuse_unasked();
        }
    }

    fn event(&mut self, event: &Event) {
        match event {
            Event::UpgradeFailed {
                pid,
                reason: reason @ (UpgradeFailure::Cancelled | UpgradeFailure::RolledBack),
            } => tracing::info!(?pid, %reason, "the new generation is stopped"),
            Event::UpgradeFailed { pid, reason } => {
                tracing::error!(?pid, %reason, "restart failed; this process keeps serving");
            }
            Event::Refused { input, reason } => tracing::info!(?input, %reason, "refused"),
            Event::StateChanged { from, to } => tracing::info!(%from, %to, "lifecycle"),
            Event::SuccessorExited { pid, status } => {
                tracing::info!(pid, %status, "the new generation exited; no fallback");
            }
            Event::SuccessorDeparted { pid, how } => {
                tracing::info!(pid, %how, "the new generation departs: this process is no longer its fallback");
            }
            Event::TookServiceBack { pid, status } => {
                tracing::error!(pid, %status, "the new generation died: this process takes the service back");
            }
            Event::UnexpectedChild { pid } => tracing::warn!(pid, "killing an unexpected child"),
            Event::StoppedChildExited { pid, status } => {
                tracing::info!(pid, %status, "the rolled-back generation exited");
            }
            Event::KilledChildExited { pid, status } => {
                tracing::debug!(pid, %status, "a killed child was reaped");
            }
            Event::NotReaped { pids } => {
                tracing::warn!(?pids, "killed children not reaped in time; exiting anyway");
            }
            other => tracing::debug!(event = ?other, "lifecycle event"),
        }
        if let Some(hook) = &self.shared.on_event {
            hook(event);
        }
    }

    fn act(&mut self, action: Action) {
        tracing::debug!(?action, "action");
        match action {
            Action::SpawnChild => self.spawn_child(),
            Action::KillChild { pid } => self.command_child(pid, ChildCommand::Kill),
            // It serves (a staged generation): it drains and exits on its own terms; the
            // task that owns it reports the exit.
            Action::StopChild { pid } => self.command_child(pid, ChildCommand::Terminate),
            Action::StopAccepting => {
                self.shared.set_accepting(false);
                let shared = Arc::clone(&self.shared);
                spawn(&*self.runtime, &self.shared.span, async move {
                    shared.accepts_parked().await;
                    // Only if it still holds: a fallback may have come first.
                    if !shared.accepting.load(std::sync::atomic::Ordering::SeqCst) {
                        tracing::info!(pid = sys::getpid(), "stopped accepting on every listener");
                    }
                });
                // The control socket too: the next generation answers what is queued. (A
                // restart command learns of a handover only now, from `answers`: once it
                // has its answer, new connections go to the new generation.)
                if let Some(control) = &mut self.control {
                    control.stop_accepting();
                }
            }
            Action::ResumeAccepting => {
                // Connections accepted from now on are served as usual; those told to close
                // before have closed or will.
                self.shared.tracker.serve_again();
                self.shared.set_accepting(true);
                tracing::info!(pid = sys::getpid(), "accepting again");
                if let Some(control) = &mut self.control
                    && let Err(e) = control.resume_accepting()
                {
                    tracing::error!(error = %e, "cannot answer on the control socket again");
                }
            }
            Action::ReleaseListeners => self.release_listeners(),
            Action::Depart { how } => match self.to_parent.take().and_then(|c| c.upgrade()) {
                Some(channel) => match crate::takeover::depart(&channel, how) {
                    Ok(()) => {
                        tracing::debug!(%how, "told the previous generation this one departs");
                    }
                    Err(e) => tracing::debug!(error = %e, "the previous generation is gone"),
                },
                None => tracing::debug!("no previous generation to tell"),
            },
            Action::EndHandOver => {
                // Its thread shuts the channel's sending side down once the last job is done.
                lock(&self.shared.outbox).take();
            }
            Action::CloseIdle => {
                self.shared
                    .tracker
                    .close_idle_until(self.lifecycle.drain_deadline());
                let tracker = self.shared.tracker.clone();
                let inputs = self.shared.inputs.clone();
                tracing::info!(connections = tracker.len(), "draining");
                spawn(&*self.runtime, &self.shared.span, async move {
                    loop {
                        tracker.drained().await;
                        match tracker.seal_if_drained() {
                            // From now on a connection the previous generation offers is
                            // refused: this process would take it into its exit.
                            Sealing::Sealed => {
                                let _ = inputs.send(Message::Input(Input::Drained)).await;
                                return;
                            }
                            // One taken over meanwhile: the drain waits for it too.
                            Sealing::Busy => {}
                            // Served again (the successor died): a later drain has its own
                            // waiter.
                            Sealing::Serving => return,
                        }
                    }
                });
            }
            Action::ForceClose => {
                tracing::warn!(
                    connections = self.shared.tracker.len(),
                    "closing the connections that are left"
                );
                self.shared.tracker.force_close();
            }
            Action::SendReadiness => match self.shared.inherited.take_ready_channel() {
                Some(fd) => {
                    // Kept to receive connections and to depart, if the channel can carry
                    // them.
                    self.parent_channel = takeover_channel(&fd);
                    // A parent that reads batches learns with the line that this process
                    // does, before it hands over anything.
                    let accepts = match &self.parent_channel {
                        Some(_)
                            if crate::takeover::parent_reads_batches(
                                self.shared.inherited.parent_pid(),
                            ) =>
                        {
                            crate::takeover::accepts()
                        }
                        _ => Vec::new(),
                    };
                    match sys::send_readiness_and(fd, &accepts) {
                        Ok(()) => tracing::info!("told the parent this process is ready"),
                        Err(e) => {
                            self.parent_channel = None;
                            // A parent that died while this process started (it was
                            // re-parented): nobody to tell, and this process serves alone.
                            if self.shared.inherited.parent_pid() == Some(sys::getppid()) {
                                tracing::error!(error = %e, "cannot tell the parent we are ready");
                            } else {
                                tracing::warn!(
                                    error = %e,
                                    "the parent is gone: nobody to tell this process is ready"
                                );
                            }
                        }
                    }
                }
                None => tracing::error!("no readiness channel to tell the parent"),
            },
            Action::ReceiveConnections => {
                let senders = lock(&self.shared.receivers).close();
                // Without receivers every offer is refused: the parent keeps every
                // connection and drains it. Without a parent (a fresh start) the receivers
                // end here.
                if let Some(channel) = self.parent_channel.take() {
                    let batched =
                        crate::takeover::parent_reads_batches(self.shared.inherited.parent_pid());
                    match crate::takeover::receive(channel, senders, batched) {
                        Ok(kept) => self.to_parent = Some(kept),
                        Err(e) => tracing::error!(error = %e, "cannot receive connections"),
                    }
                }
            }
            Action::HandOver { successor } => match self.channels.remove(&successor) {
                Some((channel, events)) => {
                    match Outbox::start(channel, events, successor, self.shared.takeover_timeout) {
                        Ok(outbox) => *lock(&self.shared.outbox) = Some(outbox),
                        Err(e) => tracing::error!(error = %e, "cannot hand connections over"),
                    }
                }
                None => tracing::debug!(successor, "no channel to hand connections over"),
            },
            Action::Announce(status) => self.announce(status),
            Action::Exit {
                code,
                reason,
                cause,
            } => {
                // Only the process that stops the service removes the pid file; one that
                // handed over leaves it to its successor.
                if cause == DrainCause::Shutdown
                    && let Some(pid_file) = &self.shared.pid_file
                    && let Err(e) = pid_file.remove_if(std::process::id())
                {
                    tracing::warn!(error = %e, "cannot remove the pid file");
                }
                if let Some(control) = &mut self.control {
                    // Every request accepted so far reaches this driver first, to be
                    // answered below.
                    control.settle(crate::control::TAKE_TIMEOUT);
                    if cause == DrainCause::Shutdown {
                        control.remove_file();
                    }
                }
                self.cancel_spawns();
                // Ends the handover: the new generation's receivers see the end.
                lock(&self.shared.outbox).take();
                self.release_listeners();
                tracing::info!(code, ?reason, ?cause, "lifecycle ended");
                // Before the application learns of the end (it may exit at once): a request
                // until proven that this end proves is answered now, and so is any request
                // that arrived too late for the lifecycle.
                self.answer_late_requests();
                self.answer_owed();
                *lock(&self.shared.exit) = Some(Exit {
                    code,
                    reason,
                    cause,
                });
                self.shared.exited.notify(usize::MAX);
            }
            Action::CloseUnclaimed => {
                let closed = self.shared.inherited.close_unclaimed();
                if !closed.is_empty() {
                    tracing::info!(names = ?closed, "closed inherited fds nobody claimed");
                }
            }
            Action::ExtendStopTimeout { by } => {
                if let Some(notifier) = &self.notifier {
                    notifier.extend_stop(by);
                }
            }
            other => tracing::warn!(action = ?other, "unknown action ignored"),
        }
    }

    /// Writes the answers owed to restart requests.
    fn answer_owed(&mut self) {
        for (connection, answer) in self.owed.drain(..) {
            crate::control::answer(connection, &answer);
        }
    }

    /// This process never accepts again: accept loops end, and its copies of the listeners
    /// go. A listener the new generation did not take (renamed, moved to another address)
    /// is then closed once the application drops its own, so its clients are refused
    /// instead of queueing for a process that will never accept; one the new generation
    /// took stays open through its copy.
    fn release_listeners(&mut self) {
        self.shared.release();
        lock(&self.shared.registry).clear();
        if let Some(control) = &mut self.control {
            control.stop_accepting();
        }
    }

    /// Passes `command` to the task that owns the child `pid`, if it is not reaped yet.
    fn command_child(&self, pid: u32, command: ChildCommand) {
        match self.children.get(&pid) {
            Some(child) => {
                let _ = child.try_send(command);
            }
            None => tracing::debug!(pid, ?command, "the child is already reaped"),
        }
    }

    fn announce(&mut self, status: Status) {
        // Before the pid file: whoever sees the new pid there and signals the supervisor
        // (`kill -HUP 1` right after a restart) reaches the new generation, not the one
        // that drains.
        if let Some(supervisor) = &self.supervisor {
            supervisor.announce(status);
        }
        match status {
            Status::Ready { again, .. } => {
                if let Some(pid_file) = &self.shared.pid_file
                    && let Err(e) = pid_file.write(std::process::id())
                {
                    tracing::error!(path = %pid_file.path().display(), error = %e, "cannot write the pid file");
                }
                if again {
                    tracing::info!(pid = std::process::id(), "serving again");
                } else {
                    tracing::info!(pid = std::process::id(), "ready");
                }
            }
            Status::Reloading => tracing::info!("restarting"),
            Status::Stopping => tracing::info!("stopping"),
            _ => {}
        }
        // After the pid file: whoever waits for systemd finds the new pid in it.
        if let Some(notifier) = &self.notifier {
            notifier.announce(status);
        }
    }

    /// Spawns the successor; with a state provider registered, first produces the
    /// application state on a thread of its own ([`crate::state`]), and spawns once it is
    /// there ([`Message::State`]). The driver goes on meanwhile: it never runs the
    /// application's provider, and the lifecycle's upgrade timeout covers one that never
    /// returns.
    fn spawn_child(&mut self) {
        self.spawn_attempt += 1;
        let attempt = self.spawn_attempt;
        let provider = lock(&self.shared.state_provider).clone();
        let Some(provider) = provider else {
            return self.start_spawn(None);
        };
        let inputs = self.shared.inputs.clone();
        let max = self.shared.max_state_len;
        let span = self.shared.span.clone();
        let started = std::thread::Builder::new()
            .name("endless-state".to_owned())
            .spawn(move || {
                let produced = span.in_scope(|| crate::state::produce(&provider, max));
                let _ = inputs.send_blocking(Message::State { attempt, produced });
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "no thread to produce the application state; the new generation starts without it");
            self.start_spawn(None);
        }
    }

    /// The application state for restart `attempt` is there: spawn, if the lifecycle still
    /// waits for that child.
    fn state_produced(&mut self, attempt: u64, produced: Result<(File, Header), ProvideError>) {
        let waiting = attempt == self.spawn_attempt
            && self.lifecycle.phase() == Phase::Forking
            && self.lifecycle.child().is_none();
        if !waiting {
            tracing::info!(
                attempt,
                "application state produced for a restart given up: dropped"
            );
            return;
        }
        let file = match produced {
            Ok((file, header)) => {
                tracing::info!(
                    version = header.version,
                    bytes = header.len,
                    "handing application state to the new generation"
                );
                Some(file)
            }
            Err(e) => {
                tracing::error!(error = %e, "no application state for the new generation; it starts without it");
                None
            }
        };
        self.start_spawn(file);
    }

    /// Spawns the successor with the registered fds, and `state` as `endless.state`, on a
    /// thread of its own: `posix_spawn` suspends the calling thread until the child has
    /// called `exec` (a millisecond or more), and a runtime worker suspended that long
    /// leaves the connections it would serve waiting (on tokio, nobody polls the reactor
    /// while the worker that owns it is blocked). The outcome comes back as
    /// [`Message::Spawned`].
    fn start_spawn(&mut self, state: Option<File>) {
        let attempt = self.spawn_attempt;
        let shared = Arc::clone(&self.shared);
        let runtime = Arc::clone(&self.runtime);
        let inputs = self.shared.inputs.clone();
        let slot = Arc::clone(&self.spawn_slot);
        let handed = Arc::new(Mutex::new(Some(state)));
        let kept = Arc::clone(&handed);
        let work = Box::new(move || {
            let state = lock(&handed).take().flatten();
            let mut slot = lock(&slot);
            if slot.cancelled {
                return;
            }
            let spawned = shared
                .span
                .in_scope(|| spawn_successor(&*runtime, &shared, state));
            slot.done = Some((attempt, spawned));
            drop(slot);
            let _ = inputs.send_blocking(Message::Spawned);
        });
        if let Err(e) = self.runtime.run_blocking(work) {
            tracing::warn!(error = %e, "no thread to spawn on: spawning on the runtime's");
            let state = lock(&kept).take().flatten();
            let spawned = spawn_successor(&*self.runtime, &self.shared, state);
            self.spawned(attempt, spawned);
        }
    }

    /// The lifecycle ended: no successor is spawned from now on, and one spawned but not
    /// yet followed is killed (its parent is about to exit, and it would serve on).
    fn cancel_spawns(&mut self) {
        let mut slot = lock(&self.spawn_slot);
        slot.cancelled = true;
        if let Some((_, Ok((mut child, _ready)))) = slot.done.take() {
            let pid = child.id();
            tracing::warn!(pid, "spawned as the lifecycle ended: killed");
            if let Err(e) = child.start_kill() {
                tracing::warn!(pid, error = %e, "cannot kill the child");
            }
            // Reaped while the runtime runs; if the process exits first, by its new parent.
            spawn(&*self.runtime, &self.shared.span, async move {
                let _ = child.wait().await;
            });
        }
    }

    /// The child of restart `attempt` is spawned, or could not be: follow it, if the
    /// lifecycle still waits for it; kill and reap it if not.
    fn spawned(&mut self, attempt: u64, spawned: Spawned) {
        let now = self.runtime.now();
        let waiting = attempt == self.spawn_attempt
            && self.lifecycle.phase() == Phase::Forking
            && self.lifecycle.child().is_none();
        let (mut child, ready) = match spawned {
            Ok(spawned) if !waiting => {
                let (mut child, _ready) = spawned;
                let pid = child.id();
                tracing::warn!(pid, attempt, "spawned for a restart given up: killed");
                if let Err(e) = child.start_kill() {
                    tracing::warn!(pid, error = %e, "cannot kill the child");
                }
                spawn(&*self.runtime, &self.shared.span, async move {
                    let _ = child.wait().await;
                    let _ = child.kill_left_behind();
                });
                return;
            }
            Ok(spawned) => spawned,
            Err(_) if !waiting => return,
            Err((what, error)) => {
                self.lifecycle.handle(
                    Input::SpawnFailed {
                        reason: format!("{what}: {error}"),
                    },
                    now,
                );
                return;
            }
        };
        let channel = ready.try_clone();
        let pid = child.id();
        tracing::info!(pid, executable = %self.shared.executable.path().display(), "spawned the new generation");
        // The task that reads the child's messages passes the takeover replies on.
        let (to_outbox, events) = crate::takeover::events();
        // Its last messages are read after its exit (a departure, a readiness line just
        // before a crash): a copy of the channel to read them without the runtime.
        let last_words = match channel.and_then(|c| Ok((c.try_clone()?, c))) {
            Ok((channel, last_words)) => {
                // Read without waiting once the child is gone, even if something it
                // started still holds the other end.
                if let Err(e) = sys::set_nonblocking(last_words.as_fd()) {
                    tracing::warn!(pid, error = %e, "the channel stays blocking");
                }
                self.channels
                    .insert(pid, (channel, (to_outbox.clone(), events)));
                Some(last_words)
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "no takeover channel for the new generation");
                None
            }
        };
        self.lifecycle.handle(Input::ChildSpawned { pid }, now);

        // Reap it, whatever happens, and signal it (with its process group) when asked: only
        // this task touches the child, and it signals only before the reap, while the pid is
        // still in use and so can name neither another process nor another group.
        let (commands, received) = async_channel::bounded::<ChildCommand>(2);
        self.children.insert(pid, commands);
        let inputs = self.shared.inputs.clone();
        // The exit goes through the task that reads the child's channel, which reports what
        // the child said before its exit first (see `follow`).
        let (exit_to, exited) = async_channel::bounded::<ChildStatus>(1);
        spawn(&*self.runtime, &self.shared.span, async move {
            let status = loop {
                let waited = futures_lite::future::or(async { Ok(child.wait().await) }, async {
                    match received.recv().await {
                        Ok(command) => Err(command),
                        // The driver is gone (the lifecycle ended after handing over to this
                        // child): it lives on; only wait.
                        Err(_) => std::future::pending().await,
                    }
                })
                .await;
                let (signalled, what) = match waited {
                    Ok(status) => break status,
                    Err(ChildCommand::Kill) => (child.start_kill(), "kill"),
                    Err(ChildCommand::Terminate) => (child.terminate(), "stop"),
                };
                if let Err(e) = signalled {
                    tracing::warn!(pid, error = %e, "cannot {what} the child");
                }
            };
            let status = match status {
                Ok(status) => child_status(status),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "cannot wait for the child");
                    ChildStatus::Unknown
                }
            };
            // Nothing of a child outlives it: what it left in its process group (a wrapper
            // script's server, a `sleep` holding the listeners) dies now, whether this
            // process killed the child or it died on its own before it was ready.
            match child.kill_left_behind() {
                Ok(true) => {
                    tracing::warn!(pid, "killed what the child left in its process group");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(pid, error = %e, "cannot kill what the child left in its group");
                }
            }
            if exit_to.send(status).await.is_err() {
                let _ = inputs
                    .send(Message::Input(Input::ChildExited { pid, status }))
                    .await;
            }
        });

        // Read its readiness line, then its messages, until it exits.
        match self.runtime.readiness_reader(ready) {
            Ok(reader) => {
                let follower = Follower {
                    pid,
                    inputs: self.shared.inputs.clone(),
                    replies: to_outbox,
                    parser: ReadyParser::new(pid),
                    readiness_known: false,
                    deframer: Deframer::new(),
                };
                spawn(
                    &*self.runtime,
                    &self.shared.span,
                    follower.follow(reader, last_words, exited),
                );
            }
            Err(e) => {
                drop(exited);
                tracing::error!(pid, error = %e, "cannot read the readiness channel");
                self.lifecycle.handle(
                    Input::ChildFailed {
                        pid,
                        reason: endless_core::ChildFailure::BadMessage(e.to_string()),
                    },
                    now,
                );
            }
        }
    }
}

/// How much the reader of a child's channel reads at a time: its readiness line and
/// several messages after it (replies are 16 bytes).
const READ_BUF: usize = 1024;

/// The one reader of a child's channel: its readiness line, then its takeover replies and
/// its departure; then, once the child is reaped, what it said last, and its exit. So the
/// lifecycle learns that a successor departed before it learns of its exit, and never
/// takes a clean departure for a crash.
struct Follower {
    pid: u32,
    inputs: Sender<Message>,
    replies: Feed,
    parser: ReadyParser,
    /// Its readiness line was read (or it broke the protocol): what follows are messages.
    readiness_known: bool,
    /// Splits what follows the readiness line into messages.
    deframer: Deframer,
}

impl Follower {
    async fn follow(
        mut self,
        mut reader: Box<dyn ReadinessReader>,
        last_words: Option<OwnedFd>,
        exited: Receiver<ChildStatus>,
    ) {
        let mut buf = [0u8; READ_BUF];
        let mut open = true;
        let status = loop {
            if !open {
                break exited.recv().await;
            }
            let read = futures_lite::future::or(async { Ok(reader.read(&mut buf).await) }, async {
                Err(exited.recv().await)
            })
            .await;
            match read {
                Err(status) => break status,
                Ok(Ok(0)) => open = self.end().await,
                Ok(Ok(n)) => open = self.read(&buf[..n]).await,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    tracing::warn!(pid = self.pid, error = %e, "reading the child's channel failed");
                    open = self.end().await;
                }
            }
        };
        drop(reader);
        // It is reaped: everything it sent is in the channel already.
        if let (true, Some(channel)) = (open, last_words) {
            loop {
                match sys::recv_with_fds(channel.as_fd(), &mut buf) {
                    // The end (the child's exit, not the end of its channel, says why it
                    // ended if it was not ready).
                    Ok(record) if record.len == 0 && record.fds.is_empty() => break,
                    Ok(record) => {
                        let len = record.len.min(buf.len());
                        drop(record);
                        if !self.read(&buf[..len]).await {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Nothing more (`WouldBlock`: something the child started holds its
                    // end), or a broken channel.
                    Err(_) => break,
                }
            }
        }
        // Not ready before it exited: its exit says why (a crash, an exit code), better than
        // the end of its channel would.
        let Ok(status) = status else {
            return; // the task that reaps it is gone: the runtime shuts down
        };
        let _ = self
            .inputs
            .send(Message::Input(Input::ChildExited {
                pid: self.pid,
                status,
            }))
            .await;
    }

    /// Takes the next bytes read from the channel: the rest of its readiness line, then its
    /// messages, in whatever chunks the stream delivers them; whether to read on.
    async fn read(&mut self, mut bytes: &[u8]) -> bool {
        let pid = self.pid;
        if !self.readiness_known {
            let (readiness, taken) = self.parser.feed_line(bytes);
            bytes = &bytes[taken..];
            let input = match readiness {
                Readiness::Pending => return true,
                Readiness::Ready => Input::ChildReady { pid },
                Readiness::Failed(reason) => Input::ChildFailed { pid, reason },
            };
            self.readiness_known = true;
            let ready = matches!(input, Input::ChildReady { .. });
            let _ = self.inputs.send(Message::Input(input)).await;
            if !ready {
                return false;
            }
        }
        self.deframer.push(bytes);
        while let Some(message) = self.deframer.next_message() {
            // A stream that cannot be split past this point ends here; a message that does
            // not decode costs only itself.
            let unframed = message.is_err();
            match message.and_then(|message| Upstream::decode(&message)) {
                Ok(Upstream::Reply(reply)) => {
                    let _ = self.replies.send(OutboxEvent::Replies(vec![reply]));
                }
                Ok(Upstream::Replies(replies)) => {
                    let _ = self.replies.send(OutboxEvent::Replies(replies));
                }
                Ok(Upstream::Accepts(most)) => {
                    let _ = self.replies.send(OutboxEvent::Accepts(most));
                }
                Ok(Upstream::Departure(how)) => {
                    let _ = self
                        .inputs
                        .send(Message::Input(Input::SuccessorDeparted { pid, how }))
                        .await;
                }
                Ok(other) => {
                    tracing::warn!(pid, message = ?other, "unexpected message from the child");
                }
                Err(e) => {
                    tracing::warn!(pid, error = %e, "bad message from the child");
                    let _ = self.replies.send(OutboxEvent::Bad(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e,
                    )));
                    if unframed {
                        let _ = self.replies.send(OutboxEvent::End);
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The end of the channel; always `false` (nothing more to read).
    async fn end(&mut self) -> bool {
        if !self.readiness_known {
            self.readiness_known = true;
            let pid = self.pid;
            let input = match self.parser.eof() {
                Readiness::Failed(reason) => Input::ChildFailed { pid, reason },
                // Not reached: the line ends reading once it is complete.
                Readiness::Ready => Input::ChildReady { pid },
                Readiness::Pending => return false,
            };
            let _ = self.inputs.send(Message::Input(input)).await;
            return false;
        }
        if !self.deframer.is_empty() {
            tracing::warn!(
                pid = self.pid,
                "the child's channel ended in the middle of a message"
            );
        }
        // The end: nothing more will be answered.
        let _ = self.replies.send(OutboxEvent::End);
        false
    }
}

/// Prepares and spawns the successor with the registered fds and `state`: what
/// [`Driver::start_spawn`]'s thread runs.
fn spawn_successor<R: Runtime>(runtime: &R, shared: &Shared, state: Option<File>) -> Spawned {
    let registry = lock(&shared.registry);
    let handoff: Vec<HandoffFd<'_>> = registry
        .iter()
        .map(|r| HandoffFd {
            name: &r.name,
            kind: r.kind,
            fd: r.fd.as_fd(),
        })
        .chain(state.as_ref().map(|file| HandoffFd {
            name: crate::state::INVENTORY_NAME,
            kind: FdKind::Other,
            fd: file.as_fd(),
        }))
        .collect();
    let prepared = spawn::prepare(&shared.executable, &handoff)
        .map_err(|e| ("cannot prepare the new process", e.to_string()))?;
    // Spawned, then our copy of the write end closed at once, so that the child's exit
    // means end of file. The child has its own copies of the fds (or there is no child).
    prepared
        .spawn_with(|command| runtime.spawn_child(command))
        .map_err(|e| ("cannot start the new process", e.to_string()))
}

/// A copy of the readiness channel `fd` if it can carry connections (a Unix stream socket,
/// as endless creates it, or the `SOCK_SEQPACKET` one of an earlier endless; a parent that
/// made a pipe hands nothing over).
fn takeover_channel(fd: &OwnedFd) -> Option<Channel> {
    Channel::new(fd.try_clone().ok()?).ok()
}

fn child_status(status: ExitStatus) -> ChildStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => ChildStatus::Exited(code),
        (None, Some(signal)) => ChildStatus::Signaled(signal),
        (None, None) => ChildStatus::Unknown,
    }
}

#[cfg(test)]
mod tests;
