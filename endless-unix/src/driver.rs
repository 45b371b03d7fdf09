//! The lifecycle driver shared by every runtime adapter.
//!
//! [`Handle::start`] adopts what the parent handed over, captures the executable, installs
//! the signal handlers and spawns one driver task on the given [`Runtime`]. The task owns
//! the [`Lifecycle`]: it hands it every input (signals, the application's `ready`, child
//! spawned / ready / exited, drained, deadlines) and carries out every action, in order.
//! An adapter only says how to sleep, spawn a task, spawn and wait for a child process,
//! read the readiness channel and listen for signals: about a hundred lines per runtime,
//! and no decision.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use endless_core::ready::{Readiness, ReadyParser};
use endless_core::{
    Action, ChildStatus, Config, DrainCause, Event, ExitReason, FdKind, Input, Lifecycle, Origin,
    Output, Request, Status, UpgradeFailure,
};
use event_listener::Event as Notify;

use crate::control::StatusWriter;
use crate::inherit::{AdoptError, Inherited};
use crate::notify::{self, Notifier};
use crate::pidfile::PidFile;
use crate::signals::{Signal, SignalMap};
use crate::spawn::{self, Executable, Handover};
use crate::takeover::{
    HandOverError, HandOverFailure, Held, Inbox, Outbox, Outgoing, ReceiveError, Receivers,
};
use crate::tracked::Tracked;
use crate::tracker::{ConnectionGuard, Tracker};

/// A boxed future, as runtimes hand them around.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a runtime adapter provides to the driver.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// Runs `task` in the background.
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// Resolves at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;

    /// Spawns `command` (prepared by [`spawn::prepare`]: keep its `pre_exec` hook).
    fn spawn_child(&self, command: std::process::Command) -> io::Result<Box<dyn ChildProcess>>;

    /// Wraps this process's end of a readiness channel (a socket or a pipe, non-blocking,
    /// close-on-exec) for asynchronous reads.
    fn pipe_reader(&self, fd: OwnedFd) -> io::Result<Box<dyn PipeReader>>;

    /// Sends every arrival of one of `signals` to `to`, from now on. Installing the
    /// handlers must happen before this returns, so that a signal sent right after start-up
    /// is not lost (or, for `SIGHUP`, does not kill the process).
    fn forward_signals(&self, signals: &[Signal], to: Sender<Signal>) -> io::Result<()>;
}

/// A child process, as a runtime spawned it.
pub trait ChildProcess: Send + 'static {
    /// Its pid.
    fn id(&self) -> u32;
    /// Sends it `SIGKILL` (a no-op if it was already reaped).
    fn start_kill(&mut self) -> io::Result<()>;
    /// Waits for it to exit and reaps it. Cancel-safe.
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>>;
}

/// This process's end of a readiness channel (a socket or a pipe).
pub trait PipeReader: Send + 'static {
    /// Reads into `buf`; `Ok(0)` at end of file.
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>>;
}

/// A callback that sees every lifecycle event (endless' PRE/POST hooks):
/// [`Event::Requested`] comes before a request is acted on, [`Event::StateChanged`] after.
pub type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// How to run the lifecycle.
#[derive(Clone)]
pub struct Options {
    config: Config,
    signals: SignalMap,
    pid_file: Option<PathBuf>,
    on_event: Option<EventHook>,
    executable: Option<Executable>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("signals", &self.signals)
            .field("pid_file", &self.pid_file)
            .field("on_event", &self.on_event.as_ref().map(|_| "…"))
            .field("executable", &self.executable)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: Config::new(),
            signals: SignalMap::default(),
            pid_file: None,
            on_event: None,
            executable: None,
        }
    }
}

impl Options {
    /// Defaults: [`Config::new`], [`SignalMap::default`], no pid file, the running
    /// executable.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lifecycle's timeouts and policies.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Which signal means what.
    #[must_use]
    pub fn signals(mut self, signals: SignalMap) -> Self {
        self.signals = signals;
        self
    }

    /// Keep a pid file at `path`: written when this process is ready, removed on a clean
    /// stop. The restart status file that answers [`crate::control::restart`] is kept
    /// beside it.
    #[must_use]
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Call `hook` with every lifecycle event, on the driver task (keep it quick).
    #[must_use]
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// Restart into this executable instead of the running one (resolved at start-up by
    /// [`Executable::current`]).
    #[must_use]
    pub fn executable(mut self, executable: Executable) -> Self {
        self.executable = Some(executable);
        self
    }
}

/// How the process ended its lifecycle: exit with [`code`](Self::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code the lifecycle chose.
    pub code: i32,
    /// How the drain ended.
    pub reason: ExitReason,
    /// Why the process drained.
    pub cause: DrainCause,
}

/// Why [`Handle::start`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// What the parent handed over is unusable (malformed variables, an fd that is closed,
    /// not a socket, or of another kind than declared). The parent keeps serving.
    Adopt(AdoptError),
    /// The running executable or working directory could not be determined.
    Executable(io::Error),
    /// The signal handlers could not be installed.
    Signals(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Adopt(e) => write!(f, "cannot adopt the inherited file descriptors: {e}"),
            Self::Executable(e) => write!(f, "cannot determine the executable to restart: {e}"),
            Self::Signals(e) => write!(f, "cannot install the signal handlers: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Adopt(e) => Some(e),
            Self::Executable(e) | Self::Signals(e) => Some(e),
        }
    }
}

impl From<StartError> for io::Error {
    fn from(e: StartError) -> Self {
        let kind = match &e {
            StartError::Adopt(_) => io::ErrorKind::InvalidData,
            StartError::Executable(e) | StartError::Signals(e) => e.kind(),
        };
        Self::new(kind, e)
    }
}

/// Why a listener could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenError {
    /// A listener of this name is already registered in this process.
    DuplicateName(String),
    /// The inherited fd of this name is of another kind.
    Take(crate::inherit::TakeError),
    /// The address did not resolve.
    NoAddress(String),
    /// Binding or configuring the socket failed.
    Io(io::Error),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateName(name) => write!(f, "a listener named {name:?} already exists"),
            Self::Take(e) => e.fmt(f),
            Self::NoAddress(what) => write!(f, "{what} resolves to no address"),
            Self::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Take(e) => Some(e),
            Self::Io(e) => Some(e),
            Self::DuplicateName(_) | Self::NoAddress(_) => None,
        }
    }
}

impl From<io::Error> for ListenError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ListenError> for io::Error {
    fn from(e: ListenError) -> Self {
        match e {
            ListenError::Io(e) => e,
            ListenError::DuplicateName(_) => Self::new(io::ErrorKind::AlreadyExists, e),
            ListenError::Take(_) => Self::new(io::ErrorKind::InvalidData, e),
            ListenError::NoAddress(_) => Self::new(io::ErrorKind::InvalidInput, e),
        }
    }
}

/// A socket that the next generation inherits.
struct Registered {
    name: String,
    kind: FdKind,
    /// A duplicate of the application's socket: it stays valid for the handover whatever
    /// the application does with its own.
    fd: OwnedFd,
}

struct Shared {
    inputs: Sender<Input>,
    origin: Origin,
    inherited: Inherited,
    registry: Mutex<Vec<Registered>>,
    tracker: Tracker,
    accepting: AtomicBool,
    accepting_changed: Notify,
    exit: Mutex<Option<Exit>>,
    exited: Notify,
    executable: Executable,
    pid_file: Option<PidFile>,
    on_event: Option<EventHook>,
    /// The receivers of connections handed over by the previous generation.
    receivers: Mutex<Receivers>,
    /// While handing connections over to the new generation.
    outbox: Mutex<Option<Outbox>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One process's handle on the restart lifecycle; cheap to clone.
///
/// Runtime adapters wrap it; see `endless-tokio` and `endless-smol` for the typed
/// listeners. The protocol an application follows:
///
/// 1. [`start`](Self::start) as early as possible (signal handlers are installed then);
/// 2. take or bind its listeners by name ([`tcp_listener`](Self::tcp_listener), …);
/// 3. accept until [`stopped_accepting`](Self::stopped_accepting), tracking each connection
///    ([`track`](Self::track)) and closing it once idle after [`ConnectionGuard::closing`];
/// 4. call [`ready`](Self::ready) once it serves;
/// 5. await [`wait`](Self::wait) and exit with the code it returns.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("origin", &self.shared.origin)
            .field("accepting", &self.is_accepting())
            .field("connections", &self.shared.tracker.len())
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// Adopts the inherited fds (or none, on a fresh start), resolves the executable,
    /// installs the signal handlers and starts the driver on `runtime`.
    pub fn start<R: Runtime>(runtime: R, options: Options) -> Result<Self, StartError> {
        let inherited = Inherited::from_env().map_err(StartError::Adopt)?;
        Self::start_with(runtime, options, inherited)
    }

    /// [`start`](Self::start) with an inventory adopted by the caller.
    pub fn start_with<R: Runtime>(
        runtime: R,
        options: Options,
        inherited: Inherited,
    ) -> Result<Self, StartError> {
        let executable = match options.executable {
            Some(exe) => exe,
            None => Executable::current().map_err(StartError::Executable)?,
        };
        let origin = inherited.origin();
        let (inputs, receiver) = async_channel::unbounded();
        let shared = Arc::new(Shared {
            inputs,
            origin,
            inherited,
            registry: Mutex::new(Vec::new()),
            tracker: Tracker::new(),
            accepting: AtomicBool::new(true),
            accepting_changed: Notify::new(),
            exit: Mutex::new(None),
            exited: Notify::new(),
            executable,
            pid_file: options.pid_file.map(PidFile::new),
            on_event: options.on_event,
            receivers: Mutex::new(Receivers::new()),
            outbox: Mutex::new(None),
        });

        let (signal_tx, signal_rx) = async_channel::unbounded();
        let signals: Vec<Signal> = options.signals.signals().collect();
        runtime
            .forward_signals(&signals, signal_tx)
            .map_err(StartError::Signals)?;
        let map = options.signals;
        let inputs = shared.inputs.clone();
        runtime.spawn(Box::pin(async move {
            while let Ok(signal) = signal_rx.recv().await {
                if let Some(request) = map.get(signal) {
                    tracing::info!(%signal, ?request, "signal received");
                    let _ = inputs.send(Input::Request(request)).await;
                }
            }
        }));

        tracing::info!(
            pid = std::process::id(),
            ?origin,
            executable = %shared.executable.path().display(),
            "endless started"
        );
        let runtime = Arc::new(runtime);
        let notifier = Notifier::from_env().map(Arc::new);
        let mut config = options.config;
        if notifier.is_some() {
            // Under a service manager a staged generation claims the main pid once ready,
            // and one rolled back would say STOPPING=1 as it stops, stopping the whole unit.
            config = config.staged_upgrades(false);
        }
        let driver = Driver {
            runtime: Arc::clone(&runtime),
            shared: Arc::clone(&shared),
            lifecycle: Lifecycle::new(config, origin),
            inputs: receiver,
            kills: HashMap::new(),
            killed: HashSet::new(),
            exit: None,
            announced_ready: false,
            notifier,
            restart_status: shared
                .pid_file
                .as_ref()
                .map(|pid_file| StatusWriter::new(pid_file.path())),
            channels: HashMap::new(),
            parent_channel: None,
        };
        runtime.spawn(Box::pin(driver.run()));
        Ok(Self { shared })
    }

    // ---- getters ----

    /// Whether this process was spawned by a previous generation.
    pub fn origin(&self) -> Origin {
        self.shared.origin
    }

    /// What the parent (or systemd) handed over and is not taken yet.
    pub fn inherited(&self) -> &Inherited {
        &self.shared.inherited
    }

    /// The connection tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.shared.tracker
    }

    /// Whether listeners should still accept.
    pub fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::SeqCst)
    }

    /// The executable a restart runs.
    pub fn executable(&self) -> &Executable {
        &self.shared.executable
    }

    // ---- listeners ----

    /// The TCP listener `name`: the inherited one, or a fresh one bound to `addr`. An
    /// inherited listener is kept unless `addr` names a specific port it is not bound to
    /// (the configuration moved it; the old one is then closed as unclaimed).
    pub fn tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<std::net::TcpListener, ListenError> {
        let wanted = resolve(&addr)?;
        let listener = match self.take(name, FdKind::TcpListener)? {
            Some(fd) => {
                let listener = std::net::TcpListener::from(fd);
                let bound = listener.local_addr()?;
                if wanted.port() != 0 && bound != wanted {
                    tracing::info!(name, %bound, %wanted, "listen address changed; binding anew");
                    crate::listen::bind_tcp(wanted)?
                } else {
                    tracing::debug!(name, %bound, "using the inherited TCP listener");
                    listener
                }
            }
            None => crate::listen::bind_tcp(wanted)?,
        };
        listener.set_nonblocking(true)?;
        self.register(name, FdKind::TcpListener, listener.as_fd())?;
        Ok(listener)
    }

    /// The UDP socket `name`: the inherited one, or a fresh one bound to `addr` (same rule
    /// as [`tcp_listener`](Self::tcp_listener)).
    pub fn udp_socket(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<std::net::UdpSocket, ListenError> {
        let wanted = resolve(&addr)?;
        let socket = match self.take(name, FdKind::UdpSocket)? {
            Some(fd) => {
                let socket = std::net::UdpSocket::from(fd);
                let bound = socket.local_addr()?;
                if wanted.port() != 0 && bound != wanted {
                    tracing::info!(name, %bound, %wanted, "listen address changed; binding anew");
                    crate::listen::bind_udp(wanted)?
                } else {
                    socket
                }
            }
            None => crate::listen::bind_udp(wanted)?,
        };
        socket.set_nonblocking(true)?;
        self.register(name, FdKind::UdpSocket, socket.as_fd())?;
        Ok(socket)
    }

    /// The Unix stream listener `name`: the inherited one, or a fresh one at `path`. The
    /// socket file is never removed on exit: the next generation serves it.
    pub fn unix_listener(&self, name: &str, path: &Path) -> Result<UnixListener, ListenError> {
        let listener = match self.take(name, FdKind::UnixListener)? {
            Some(fd) => {
                let listener = UnixListener::from(fd);
                let bound = listener.local_addr()?;
                if same_socket_file(bound.as_pathname(), path) {
                    listener
                } else {
                    tracing::info!(
                        name,
                        bound = ?bound.as_pathname(),
                        wanted = %path.display(),
                        "listen path changed; binding anew"
                    );
                    crate::listen::bind_unix(path)?
                }
            }
            None => crate::listen::bind_unix(path)?,
        };
        listener.set_nonblocking(true)?;
        self.register(name, FdKind::UnixListener, listener.as_fd())?;
        Ok(listener)
    }

    /// Takes the inherited fd `name`, checked to be of `kind`; `Ok(None)` if there is none.
    /// Register what you keep with [`register`](Self::register) to pass it on.
    pub fn take(&self, name: &str, kind: FdKind) -> Result<Option<OwnedFd>, ListenError> {
        if lock(&self.shared.registry).iter().any(|r| r.name == name) {
            return Err(ListenError::DuplicateName(name.to_owned()));
        }
        self.shared
            .inherited
            .take(name, kind)
            .map_err(ListenError::Take)
    }

    /// Passes `fd` (duplicated now) to every next generation under `name`.
    pub fn register(
        &self,
        name: &str,
        kind: FdKind,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ListenError> {
        let mut registry = lock(&self.shared.registry);
        if registry.iter().any(|r| r.name == name) {
            return Err(ListenError::DuplicateName(name.to_owned()));
        }
        let fd = fd.try_clone_to_owned()?;
        registry.push(Registered {
            name: name.to_owned(),
            kind,
            fd,
        });
        Ok(())
    }

    // ---- connections ----

    /// Registers a connection for the drain (see [`Tracker::track`]).
    pub fn track(&self, socket: &impl AsRawFd) -> ConnectionGuard {
        self.shared.tracker.track(Some(socket.as_raw_fd()))
    }

    /// Resolves once listeners must stop accepting (a new generation took over, or the
    /// process is stopping). The listening sockets stay open: connections queued in the
    /// kernel are accepted by the new generation.
    pub async fn stopped_accepting(&self) {
        loop {
            if !self.is_accepting() {
                return;
            }
            let listener = self.shared.accepting_changed.listen();
            if !self.is_accepting() {
                return;
            }
            listener.await;
        }
    }

    /// Accepts one connection with `accept` (a runtime's accept future) and tracks it, or
    /// `Ok(None)` once this process stops accepting: what is queued in the kernel is then
    /// left to the next generation, which holds the same socket.
    ///
    /// A guard is held while accepting, so the drain cannot complete between the kernel
    /// handing over a connection and that connection being tracked.
    pub async fn accept<S: AsRawFd, A>(
        &self,
        accept: impl Future<Output = io::Result<(S, A)>>,
    ) -> io::Result<Option<(Tracked<S>, A)>> {
        let _accepting = self.shared.tracker.track(None);
        if !self.is_accepting() {
            return Ok(None);
        }
        // `or` polls its first future first: once stopped, never take one more.
        futures_lite::future::or(
            async {
                self.stopped_accepting().await;
                Ok(None)
            },
            async {
                let (stream, peer) = accept.await?;
                let guard = self.track(&stream);
                Ok(Some((Tracked::new(stream, guard), peer)))
            },
        )
        .await
    }

    // ---- connection takeover ----

    /// Receives the connections the previous generation hands over under `name` (see
    /// [`crate::takeover`]). Register every receiver before [`ready`](Self::ready): the
    /// previous generation hands over right after it. The [`Inbox`] ends once the previous
    /// generation is done, at once on a fresh start.
    pub fn receiver(&self, name: &str) -> Result<Inbox, ReceiveError> {
        lock(&self.shared.receivers).register(name)
    }

    /// Whether a connection can be handed over now: this process is draining after a
    /// restart, and the new generation takes connections.
    pub fn can_hand_over(&self) -> bool {
        lock(&self.shared.outbox)
            .as_ref()
            .is_some_and(Outbox::is_open)
    }

    /// Hands the connection `fd` (counted by `guard`) to the new generation, with the
    /// application's `state` and the bytes read from it but not consumed, for its receiver
    /// `name`. Stop reading the connection first. On success this process's copy is closed;
    /// on failure the connection comes back in the error while this process still holds it.
    pub async fn hand_over(
        &self,
        kind: endless_core::takeover::StreamKind,
        name: &str,
        state: &[u8],
        unconsumed: &[u8],
        (fd, guard): Held,
    ) -> Result<(), HandOverError<Held>> {
        let outbox = lock(&self.shared.outbox).clone();
        let Some(outbox) = outbox.filter(Outbox::is_open) else {
            return Err(HandOverError::new(
                HandOverFailure::NoSuccessor,
                Some((fd, guard)),
            ));
        };
        let id = outbox.next_id();
        let message = match endless_core::takeover::encode_offer(id, kind, name, state, unconsumed)
        {
            Ok(message) => message,
            Err(e) => {
                return Err(HandOverError::new(
                    HandOverFailure::Frame(e),
                    Some((fd, guard)),
                ));
            }
        };
        // From now on the new generation may own the socket: a forced close here must not
        // shut it down.
        guard.forget_socket();
        outbox
            .send(Outgoing {
                id,
                message,
                fd,
                guard,
            })
            .await
    }

    // ---- commands ----

    /// The application serves: tell the parent (if any) and the service manager. The
    /// parent then stops accepting and drains. Only the first call counts.
    pub fn ready(&self) {
        let _ = self.shared.inputs.try_send(Input::Ready);
    }

    /// Asks for a restart, a graceful stop or a hammer, as a signal would.
    pub fn request(&self, request: Request) {
        let _ = self.shared.inputs.try_send(Input::Request(request));
    }

    /// Resolves when the lifecycle ends; exit the process with [`Exit::code`].
    pub async fn wait(&self) -> Exit {
        loop {
            if let Some(exit) = *lock(&self.shared.exit) {
                return exit;
            }
            let listener = self.shared.exited.listen();
            if let Some(exit) = *lock(&self.shared.exit) {
                return exit;
            }
            listener.await;
        }
    }
}

/// Whether the socket an inherited listener is bound to (as it was named when bound,
/// possibly relative to the old working directory) is the file at `wanted`.
fn same_socket_file(bound: Option<&Path>, wanted: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(bound) = bound else {
        return false; // abstract or unnamed: not what a path asks for
    };
    if bound == wanted {
        return true;
    }
    match (std::fs::metadata(bound), std::fs::metadata(wanted)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn resolve(addr: &(impl ToSocketAddrs + fmt::Debug)) -> Result<SocketAddr, ListenError> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| ListenError::NoAddress(format!("{addr:?}")))
}

/// How long an ending lifecycle waits for the children it killed to be reaped (`SIGKILL`
/// cannot be caught: a moment, unless the machine is stuck).
const REAP_KILLED: Duration = Duration::from_secs(10);

/// The task that owns the lifecycle.
struct Driver<R> {
    runtime: Arc<R>,
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    inputs: Receiver<Input>,
    /// How to kill each child that runs, by pid.
    kills: HashMap<u32, Sender<()>>,
    /// The children told to die and not reaped yet.
    killed: HashSet<u32>,
    /// How the lifecycle ended, told to the application once `killed` is empty.
    exit: Option<(Exit, Instant)>,
    announced_ready: bool,
    /// The service manager to tell (`NOTIFY_SOCKET`, read once at start-up).
    notifier: Option<Arc<Notifier>>,
    /// The restart status file beside the pid file, if there is one (see
    /// [`crate::control`]).
    restart_status: Option<StatusWriter>,
    /// This process's end of each live child's readiness channel, which carries the
    /// connections handed over once the child is ready.
    channels: HashMap<u32, OwnedFd>,
    /// The readiness channel to the parent, kept after the "ready" line to receive
    /// connections.
    parent_channel: Option<OwnedFd>,
}

impl<R: Runtime> Driver<R> {
    async fn run(mut self) {
        loop {
            while let Some(output) = self.lifecycle.poll_output() {
                match output {
                    Output::Event(event) => self.event(&event),
                    Output::Action(action) => self.act(action),
                }
            }
            if let Some((_, deadline)) = &self.exit {
                // A child killed on the way out (a stop while it started) is reaped before
                // the application hears of the end and exits: a child that outlived it would
                // hold the listeners, and could announce itself ready to nobody and serve.
                if self.killed.is_empty() || Instant::now() >= *deadline {
                    if !self.killed.is_empty() {
                        tracing::warn!(pids = ?self.killed, "killed children not reaped in time");
                    }
                    return self.publish_exit();
                }
            } else if self.lifecycle.is_stopped() {
                return;
            }
            let deadline = match &self.exit {
                Some((_, reap_by)) => Some(*reap_by),
                None => self.lifecycle.poll_timeout(),
            };
            let next = match deadline {
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
            let now = Instant::now();
            match next {
                Some(Ok(input)) => {
                    if let Input::ChildExited { pid, status } = input {
                        self.kills.remove(&pid);
                        self.killed.remove(&pid);
                        self.channels.remove(&pid);
                        if let Some(restart_status) = &mut self.restart_status {
                            restart_status.child_exited(pid, status);
                        }
                    }
                    if self.exit.is_none() {
                        self.lifecycle.handle(input, now);
                    }
                }
                // Unreachable while `shared` holds a sender; stop rather than spin.
                Some(Err(_)) => return self.publish_exit(),
                None if self.exit.is_none() => self.lifecycle.handle_timeout(now),
                None => {}
            }
        }
    }

    /// Tells the application how the lifecycle ended, if it has.
    fn publish_exit(&self) {
        if let Some((exit, _)) = self.exit {
            *lock(&self.shared.exit) = Some(exit);
            self.shared.exited.notify(usize::MAX);
        }
    }

    fn event(&mut self, event: &Event) {
        if let Some(restart_status) = &mut self.restart_status {
            restart_status.on_event(event);
        }
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
                tracing::warn!(pid, %status, "the new generation exited while this one drains");
            }
            Event::UnexpectedChild { pid } => tracing::warn!(pid, "killing an unexpected child"),
            Event::StoppedChildExited { pid, status } => {
                tracing::info!(pid, %status, "the rolled-back generation exited");
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
            Action::KillChild { pid } => match self.kills.get(&pid) {
                Some(kill) => {
                    let _ = kill.try_send(());
                    self.killed.insert(pid);
                }
                None => tracing::debug!(pid, "kill: the child is already reaped"),
            },
            Action::StopChild { pid } => {
                if self.kills.contains_key(&pid) {
                    // It serves (a staged generation): it drains and exits on its own terms;
                    // its reaper reports the exit.
                    if let Err(e) = crate::sys::kill(pid, libc::SIGTERM) {
                        tracing::warn!(pid, error = %e, "cannot stop the staged generation");
                    }
                } else {
                    tracing::debug!(pid, "stop: the child is already reaped");
                }
            }
            Action::StopAccepting => {
                self.shared.accepting.store(false, Ordering::SeqCst);
                self.shared.accepting_changed.notify(usize::MAX);
                // This process hands nothing over any more. Dropping its copies means that a
                // listener the new generation did not take (renamed, moved to another
                // address) is closed once the application drops its own, so its clients are
                // refused instead of queueing for a process that will never accept; one the
                // new generation took stays open through its copy.
                lock(&self.shared.registry).clear();
                // A restart command learns of a handover only now: once it answers, new
                // connections go to the new generation.
                if let Some(restart_status) = &mut self.restart_status {
                    restart_status.stopped_accepting();
                }
            }
            Action::CloseIdle => {
                self.shared.tracker.close_idle();
                let tracker = self.shared.tracker.clone();
                let inputs = self.shared.inputs.clone();
                tracing::info!(connections = tracker.len(), "draining");
                self.runtime.spawn(Box::pin(async move {
                    tracker.drained().await;
                    let _ = inputs.send(Input::Drained).await;
                }));
            }
            Action::ForceClose => {
                tracing::warn!(
                    connections = self.shared.tracker.len(),
                    "closing the connections that are left"
                );
                self.shared.tracker.force_close();
            }
            Action::NotifyParent => match self.shared.inherited.take_ready_channel() {
                Some(fd) => {
                    // Kept to receive connections, if the channel can carry them.
                    self.parent_channel = takeover_channel(&fd);
                    match spawn::notify_parent(fd) {
                        Ok(()) => tracing::info!("told the parent this process is ready"),
                        Err(e) => {
                            self.parent_channel = None;
                            tracing::error!(error = %e, "cannot tell the parent we are ready");
                        }
                    }
                }
                None => tracing::error!("no readiness channel to tell the parent"),
            },
            Action::ReceiveConnections => {
                let senders = lock(&self.shared.receivers).close();
                match self.parent_channel.take() {
                    // Without receivers the channel closes: the parent keeps every
                    // connection and drains it. Without a parent (a fresh start) the
                    // receivers end here.
                    Some(channel) if !senders.is_empty() => {
                        if let Err(e) = crate::takeover::receive(channel, senders) {
                            tracing::error!(error = %e, "cannot receive connections");
                        }
                    }
                    _ => {}
                }
            }
            Action::HandOver { successor } => match self.channels.remove(&successor) {
                Some(channel) => match Outbox::start(channel, successor) {
                    Ok(outbox) => *lock(&self.shared.outbox) = Some(outbox),
                    Err(e) => tracing::error!(error = %e, "cannot hand connections over"),
                },
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
                // Ends the handover: the new generation's receivers see the end.
                lock(&self.shared.outbox).take();
                tracing::info!(code, ?reason, ?cause, "lifecycle ended");
                // Told to the application by `run`, once the children killed are reaped.
                let exit = Exit {
                    code,
                    reason,
                    cause,
                };
                self.exit = Some((exit, Instant::now() + REAP_KILLED));
            }
            other => tracing::warn!(action = ?other, "unknown action ignored"),
        }
    }

    fn announce(&mut self, status: Status) {
        let ready_before = self.announced_ready;
        match status {
            Status::Ready => {
                if let Some(pid_file) = &self.shared.pid_file
                    && let Err(e) = pid_file.write(std::process::id())
                {
                    tracing::error!(path = %pid_file.path().display(), error = %e, "cannot write the pid file");
                }
                if !self.announced_ready {
                    self.announced_ready = true;
                    let closed = self.shared.inherited.close_unclaimed();
                    if !closed.is_empty() {
                        tracing::info!(names = ?closed, "closed inherited fds nobody claimed");
                    }
                    tracing::info!(pid = std::process::id(), "ready");
                }
            }
            Status::Reloading => tracing::info!("restarting"),
            Status::Stopping => tracing::info!("stopping"),
            _ => {}
        }
        // After the pid file: whoever waits for systemd finds the new pid in it.
        self.notify_service_manager(status, ready_before);
    }

    /// Tells the service manager, if `NOTIFY_SOCKET` names one (see [`crate::notify`]).
    fn notify_service_manager(&self, status: Status, ready_before: bool) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        match status {
            Status::Ready => {
                // A new generation becomes the main process with its first READY=1; a
                // process that serves again (a failed or rolled-back upgrade, whose staged
                // generation may have claimed it) makes itself the main process again.
                let main_pid = (ready_before || self.shared.origin == Origin::Inherited)
                    .then(std::process::id);
                notifier.ready(main_pid, ready_before);
            }
            Status::Reloading => notifier.reloading(),
            Status::Stopping => {
                notifier.stopping();
                // The drain has just begun: the lifecycle's deadline is the drain's.
                if self.lifecycle.phase() != endless_core::Phase::Draining {
                    return;
                }
                let deadline = self.lifecycle.poll_timeout();
                if notifier.extend_stop(deadline, Instant::now()) {
                    let handle = Handle {
                        shared: Arc::clone(&self.shared),
                    };
                    self.runtime.spawn(Box::pin(notify::renew_stop_extension(
                        Arc::clone(notifier),
                        Arc::clone(&self.runtime),
                        async move {
                            handle.wait().await;
                        },
                    )));
                }
            }
            _ => {}
        }
    }

    fn spawn_child(&mut self) {
        let now = Instant::now();
        let failed = |lc: &mut Lifecycle, what: &str, error: &dyn fmt::Display| {
            lc.handle(
                Input::SpawnFailed {
                    reason: format!("{what}: {error}"),
                },
                now,
            );
        };
        let registry = lock(&self.shared.registry);
        let handovers: Vec<Handover<'_>> = registry
            .iter()
            .map(|r| Handover {
                name: &r.name,
                kind: r.kind,
                fd: r.fd.as_fd(),
            })
            .collect();
        let mut prepared = match spawn::prepare(&self.shared.executable, &handovers) {
            Ok(prepared) => prepared,
            Err(e) => return failed(&mut self.lifecycle, "cannot prepare the new process", &e),
        };
        let command = std::mem::replace(&mut prepared.command, std::process::Command::new("/"));
        let spawned = self.runtime.spawn_child(command);
        // Close our copy of the write end now, so that the child's exit means end of file.
        let ready = prepared.spawned();
        let channel = ready.try_clone();
        drop(handovers);
        drop(registry);
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return failed(&mut self.lifecycle, "cannot start the new process", &e),
        };
        let pid = child.id();
        tracing::info!(pid, executable = %self.shared.executable.path().display(), "spawned the new generation");
        match channel {
            Ok(channel) => {
                self.channels.insert(pid, channel);
            }
            Err(e) => tracing::warn!(pid, error = %e, "no takeover channel for the new generation"),
        }
        self.lifecycle.handle(Input::ChildSpawned { pid }, now);

        // Reap it, whatever happens, and kill it when asked.
        let (kill_tx, kill_rx) = async_channel::bounded::<()>(1);
        self.kills.insert(pid, kill_tx);
        let inputs = self.shared.inputs.clone();
        self.runtime.spawn(Box::pin(async move {
            let status = loop {
                let waited = futures_lite::future::or(async { Some(child.wait().await) }, async {
                    match kill_rx.recv().await {
                        Ok(()) => None,
                        // The driver is gone (the lifecycle ended after handing over to this
                        // child): it lives on; only wait.
                        Err(_) => std::future::pending().await,
                    }
                })
                .await;
                match waited {
                    Some(status) => break status,
                    None => {
                        if let Err(e) = child.start_kill() {
                            tracing::warn!(pid, error = %e, "cannot kill the child");
                        }
                    }
                }
            };
            let status = match status {
                Ok(status) => child_status(status),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "cannot wait for the child");
                    ChildStatus::Unknown
                }
            };
            let _ = inputs.send(Input::ChildExited { pid, status }).await;
        }));

        // Read its readiness line.
        match self.runtime.pipe_reader(ready) {
            Ok(reader) => {
                let inputs = self.shared.inputs.clone();
                self.runtime
                    .spawn(Box::pin(read_readiness(reader, pid, inputs)));
            }
            Err(e) => {
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

async fn read_readiness(mut reader: Box<dyn PipeReader>, pid: u32, inputs: Sender<Input>) {
    let mut parser = ReadyParser::new(pid);
    let mut buf = [0u8; endless_core::ready::MAX_MESSAGE_LEN];
    let outcome = loop {
        let result = match reader.read(&mut buf).await {
            Ok(0) => parser.eof(),
            Ok(n) => parser.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(pid, error = %e, "reading the readiness channel failed");
                parser.eof()
            }
        };
        if result != Readiness::Pending {
            break result;
        }
    };
    let input = match outcome {
        Readiness::Ready => Input::ChildReady { pid },
        Readiness::Failed(reason) => Input::ChildFailed { pid, reason },
        Readiness::Pending => return,
    };
    let _ = inputs.send(input).await;
}

/// A copy of the readiness channel `fd` if it can carry connections (a `SOCK_SEQPACKET`
/// socket, as endless creates it; a parent that made a pipe hands nothing over).
fn takeover_channel(fd: &OwnedFd) -> Option<OwnedFd> {
    let socket = socket2::SockRef::from(fd);
    match socket.r#type() {
        Ok(ty) if ty == socket2::Type::SEQPACKET => fd.try_clone().ok(),
        _ => None,
    }
}

fn child_status(status: ExitStatus) -> ChildStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => ChildStatus::Exited(code),
        (None, Some(signal)) => ChildStatus::Signaled(signal),
        (None, None) => ChildStatus::Unknown,
    }
}
