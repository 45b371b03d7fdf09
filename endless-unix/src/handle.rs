//! The application's handle on the lifecycle: [`Handle`], how to start it ([`Options`]),
//! its listeners, connections and commands, and its errors.
//!
//! [`Handle::start`] adopts what the parent handed over, captures the executable, installs
//! the signal handlers and starts the driver task (`driver.rs`) on the given
//! [`Runtime`]. The handle and the task share the listeners registered for the next
//! generation, the connection tracker and whether this process still accepts; the
//! application talks to the task through the handle's commands.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_channel::Sender;
use endless_core::{
    Config, DrainCause, Event, ExitReason, FdKind, Input, Lifecycle, Origin, Request,
};
use event_listener::Event as Wake;

use crate::control::{self, ControlServer};
use crate::driver::Message;
use crate::inherit::{AdoptError, Inherited};
use crate::notify::{Notifier, NotifySocket};
use crate::pidfile::PidFile;
use crate::runtime::Runtime;
use crate::signals::{Signal, SignalMap};
use crate::spawn::Executable;
use crate::state::{self, StateError};
use crate::takeover::{
    HandOverError, HandOverFailure, Held, Inbox, Outbox, Outgoing, ReceiveError, Receivers,
};
use crate::tracked::Tracked;
use crate::tracker::{ConnectionGuard, Tracker};

/// A callback that sees every lifecycle event (endless' PRE/POST hooks):
/// [`Event::Requested`] comes before a request is acted on, [`Event::StateChanged`] after.
pub type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// How to run the lifecycle.
#[derive(Clone)]
pub(crate) struct Options {
    config: Config,
    signals: SignalMap,
    pid_file: Option<PathBuf>,
    on_event: Option<EventHook>,
    executable: Option<Executable>,
    notify_socket: Option<NotifySocket>,
    max_state_len: usize,
    supervise: Option<bool>,
    takeover_timeout: Duration,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("signals", &self.signals)
            .field("pid_file", &self.pid_file)
            .field("on_event", &self.on_event.as_ref().map(|_| "…"))
            .field("executable", &self.executable)
            .field("notify_socket", &self.notify_socket)
            .field("max_state_len", &self.max_state_len)
            .field("supervise", &self.supervise)
            .field("takeover_timeout", &self.takeover_timeout)
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
            notify_socket: None,
            max_state_len: state::DEFAULT_MAX_LEN,
            supervise: None,
            takeover_timeout: crate::takeover::DEFAULT_TIMEOUT,
        }
    }
}

impl Options {
    /// Defaults: [`Config::new`], [`SignalMap::default`], no pid file, the running
    /// executable.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The lifecycle's timeouts and policies.
    #[must_use]
    pub(crate) fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Which signal means what.
    #[must_use]
    pub(crate) fn signals(mut self, signals: SignalMap) -> Self {
        self.signals = signals;
        self
    }

    /// Keep a pid file at `path`: written when this process is ready, removed on a clean
    /// stop. The control socket that answers [`crate::control::restart`] is kept beside
    /// it.
    #[must_use]
    pub(crate) fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Call `hook` with every lifecycle event, on the driver task (keep it quick).
    #[must_use]
    pub(crate) fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// Restart into this executable instead of the running one (resolved at start-up by
    /// [`Executable::current`]).
    #[must_use]
    pub(crate) fn executable(mut self, executable: Executable) -> Self {
        self.executable = Some(executable);
        self
    }

    /// Send the `sd_notify` messages ([`crate::notify`]) to `target` instead of the socket
    /// `NOTIFY_SOCKET` names (a supervisor's private socket, or a test's).
    #[must_use]
    pub(crate) fn notify_socket(mut self, target: NotifySocket) -> Self {
        self.notify_socket = Some(target);
        self
    }

    /// Whether the first process becomes the supervisor ([`crate::supervisor`]); `None`:
    /// as `ENDLESS_SUPERVISE` says, else only when it is PID 1.
    #[must_use]
    pub(crate) fn supervise(mut self, supervise: Option<bool>) -> Self {
        self.supervise = supervise;
        self
    }

    /// The most bytes of application state this process sends or reads ([`crate::state`]).
    #[must_use]
    pub(crate) fn max_state_len(mut self, bytes: usize) -> Self {
        self.max_state_len = bytes;
        self
    }

    /// How long a connection handed over waits for the new generation's answer
    /// ([`crate::takeover`]).
    #[must_use]
    pub(crate) fn takeover_timeout(mut self, timeout: Duration) -> Self {
        self.takeover_timeout = timeout;
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

/// Why [`Endless::start`](crate::Endless::start) failed.
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

/// Why a listener could not be set up: which listener, what was asked for, what failed.
///
/// It converts into an [`io::Error`] (of a matching [`io::ErrorKind`], with this error as
/// its message), so `?` works in a function that returns `io::Result`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenError {
    /// A listener of this name is already registered in this process.
    DuplicateName {
        /// The listener's name.
        name: String,
    },
    /// The name starts with `endless.`, which names endless' own fds
    /// ([`state::RESERVED_PREFIX`]).
    ReservedName {
        /// The listener's name.
        name: String,
    },
    /// The inherited fd of this name is of another kind.
    Take {
        /// The listener's name.
        name: String,
        /// What is wrong with it.
        source: crate::inherit::TakeError,
    },
    /// The address did not parse, or resolved to no address.
    Resolve {
        /// The listener's name.
        name: String,
        /// The address, as given.
        addr: String,
        /// Why it did not resolve (`None`: it resolved to nothing).
        source: Option<io::Error>,
    },
    /// Binding a new socket failed (the address is in use, a privileged port, …).
    Bind {
        /// The listener's name.
        name: String,
        /// The address or path.
        addr: String,
        /// What the OS said.
        source: io::Error,
    },
    /// Setting up the socket, inherited or bound, failed (out of file descriptors, …).
    Io {
        /// The listener's name.
        name: String,
        /// What the OS said.
        source: io::Error,
    },
}

impl ListenError {
    /// The name of the listener that could not be set up.
    pub fn name(&self) -> &str {
        match self {
            Self::DuplicateName { name }
            | Self::ReservedName { name }
            | Self::Take { name, .. }
            | Self::Resolve { name, .. }
            | Self::Bind { name, .. }
            | Self::Io { name, .. } => name,
        }
    }

    pub(crate) fn io(name: &str) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io {
            name: name.to_owned(),
            source,
        }
    }

    fn bind<'a>(name: &'a str, addr: &'a dyn fmt::Display) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Bind {
            name: name.to_owned(),
            addr: addr.to_string(),
            source,
        }
    }
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "listener {:?}: ", self.name())?;
        match self {
            Self::DuplicateName { .. } => f.write_str("a listener of this name already exists"),
            Self::ReservedName { .. } => write!(
                f,
                "names that start with {:?} are reserved for endless' own fds",
                state::RESERVED_PREFIX
            ),
            Self::Take { source, .. } => source.fmt(f),
            Self::Resolve {
                addr,
                source: Some(e),
                ..
            } => write!(f, "cannot resolve {addr:?}: {e}"),
            Self::Resolve {
                addr, source: None, ..
            } => write!(f, "{addr:?} resolves to no address"),
            Self::Bind { addr, source, .. } => write!(f, "cannot bind {addr}: {source}"),
            Self::Io { source, .. } => source.fmt(f),
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Take { source, .. } => Some(source),
            Self::Resolve { source, .. } => source.as_ref().map(|e| e as _),
            Self::Bind { source, .. } | Self::Io { source, .. } => Some(source),
            Self::DuplicateName { .. } | Self::ReservedName { .. } => None,
        }
    }
}

impl From<ListenError> for io::Error {
    fn from(e: ListenError) -> Self {
        let kind = match &e {
            ListenError::DuplicateName { .. } => io::ErrorKind::AlreadyExists,
            ListenError::ReservedName { .. } => io::ErrorKind::InvalidInput,
            ListenError::Take { .. } => io::ErrorKind::InvalidData,
            ListenError::Resolve { source, .. } => source
                .as_ref()
                .map_or(io::ErrorKind::InvalidInput, Self::kind),
            ListenError::Bind { source, .. } | ListenError::Io { source, .. } => source.kind(),
        };
        Self::new(kind, e)
    }
}

/// A socket that the next generation inherits.
pub(crate) struct Registered {
    pub(crate) name: String,
    pub(crate) kind: FdKind,
    /// A duplicate of the application's socket: it stays valid for the handover whatever
    /// the application does with its own.
    pub(crate) fd: OwnedFd,
}

/// The sockets the next generation inherits, in the order they were registered (the
/// order of the handoff), with their names indexed: a process with thousands of listeners
/// checks each new name in constant time, not against every name registered before it
/// (which made setting up n listeners cost n² string comparisons).
#[derive(Default)]
pub(crate) struct Registry {
    entries: Vec<Registered>,
    names: HashSet<String>,
}

impl Registry {
    /// Whether a socket is registered under `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Adds `registered` after the others.
    pub(crate) fn push(&mut self, registered: Registered) {
        self.names.insert(registered.name.clone());
        self.entries.push(registered);
    }

    /// The registered sockets, in the order they were registered.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Registered> {
        self.entries.iter()
    }

    /// Forgets (and closes) every registered socket.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.names.clear();
    }
}

/// An accept call that may take a connection, counted in [`Shared::accepts`].
struct AcceptCall<'a>(&'a Shared);

impl<'a> AcceptCall<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.accepts.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for AcceptCall<'_> {
    fn drop(&mut self) {
        if self.0.accepts.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.accepts_ended.notify(usize::MAX);
        }
    }
}

/// What the handles and the driver task share.
pub(crate) struct Shared {
    pub(crate) inputs: Sender<Message>,
    pub(crate) origin: Origin,
    pub(crate) inherited: Inherited,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) tracker: Tracker,
    /// Whether listeners accept now.
    pub(crate) accepting: AtomicBool,
    /// Set once this process will never accept again ([`Shared::release`]).
    pub(crate) released: AtomicBool,
    /// Notified when `accepting` or `released` changes.
    pub(crate) accepting_changed: Wake,
    /// The accept calls that may take a connection now.
    pub(crate) accepts: AtomicUsize,
    /// Notified when `accepts` drops to zero.
    pub(crate) accepts_ended: Wake,
    pub(crate) exit: Mutex<Option<Exit>>,
    pub(crate) exited: Wake,
    pub(crate) executable: Executable,
    pub(crate) pid_file: Option<PidFile>,
    pub(crate) on_event: Option<EventHook>,
    /// The receivers of connections handed over by the previous generation.
    pub(crate) receivers: Mutex<Receivers>,
    /// While handing connections over to the new generation.
    pub(crate) outbox: Mutex<Option<Outbox>>,
    /// The span of every line endless logs in this process ([`process_span`]).
    pub(crate) span: tracing::Span,
    /// The application state handed over by the previous generation.
    pub(crate) state: Mutex<state::Slot>,
    /// What produces the application state for the next generation.
    pub(crate) state_provider: Mutex<Option<state::Provider>>,
    /// The most bytes of application state sent or read.
    pub(crate) max_state_len: usize,
    /// How long a connection handed over waits for the new generation's answer.
    pub(crate) takeover_timeout: Duration,
}

impl Shared {
    /// Listeners accept, or park ([`Action::StopAccepting`](endless_core::Action)), from
    /// now on.
    pub(crate) fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::SeqCst);
        self.accepting_changed.notify(usize::MAX);
    }

    /// Resolves once no accept call may take a connection any more, after
    /// [`set_accepting`](Self::set_accepting)`(false)`: every accept loop has parked.
    pub(crate) async fn accepts_parked(&self) {
        loop {
            if self.accepts.load(Ordering::SeqCst) == 0 {
                return;
            }
            let listener = self.accepts_ended.listen();
            if self.accepts.load(Ordering::SeqCst) == 0 {
                return;
            }
            listener.await;
        }
    }

    /// Listeners never accept again: their accept loops end.
    pub(crate) fn release(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.released.store(true, Ordering::SeqCst);
        self.accepting_changed.notify(usize::MAX);
    }

    /// The control socket beside the pid file (see [`crate::control`]): the inherited one,
    /// or one bound now, registered for the next generation and answered from now on.
    /// Without a pid file there is none; a control socket that cannot be set up is logged
    /// and the process serves without one.
    fn control_server(&self) -> Option<ControlServer> {
        let path = control::socket_path(self.pid_file.as_ref()?.path());
        let inherited = match self
            .inherited
            .take(control::INVENTORY_NAME, FdKind::UnixListener)
        {
            Ok(fd) => fd.map(UnixListener::from).filter(|listener| {
                let bound = listener.local_addr().ok();
                control::bound_for(bound.as_ref().and_then(|a| a.as_pathname()), &path)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the inherited control socket is unusable");
                None
            }
        };
        let listener = match inherited {
            Some(listener) => listener,
            None => match control::bind(&path) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        "no control socket: the restart command cannot ask this process"
                    );
                    return None;
                }
            },
        };
        let started = listener.try_clone().and_then(|copy| {
            lock(&self.registry).push(Registered {
                name: control::INVENTORY_NAME.to_owned(),
                kind: FdKind::UnixListener,
                fd: OwnedFd::from(copy),
            });
            ControlServer::start(listener, path.clone(), self.inputs.clone())
        });
        match started {
            Ok(server) => {
                tracing::debug!(path = %path.display(), "answering on the control socket");
                Some(server)
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "no control socket");
                None
            }
        }
    }
}

/// The span every line endless logs runs in: `endless{pid=…}`, so that the lines of two
/// generations writing to one stderr (or journal) tell apart.
pub(crate) fn process_span() -> tracing::Span {
    tracing::info_span!("endless", pid = std::process::id())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
pub(crate) struct Handle {
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
    ///
    /// In the supervisor mode ([`crate::supervisor`]) it never returns in the first process:
    /// that process supervises the generations and exits with the service.
    pub(crate) fn start<R: Runtime>(runtime: R, options: Options) -> Result<Self, StartError> {
        if crate::supervisor::wanted(options.supervise) {
            let executable = match &options.executable {
                Some(exe) => exe.clone(),
                None => Executable::current().map_err(StartError::Executable)?,
            };
            crate::supervisor::run(&executable, &options.signals);
        }
        let inherited = process_span()
            .in_scope(Inherited::from_env)
            .map_err(StartError::Adopt)?;
        Self::start_with(runtime, options, inherited)
    }

    /// [`start`](Self::start) with an inventory adopted by the caller.
    pub(crate) fn start_with<R: Runtime>(
        runtime: R,
        options: Options,
        inherited: Inherited,
    ) -> Result<Self, StartError> {
        let span = process_span();
        let _entered = span.enter();
        let executable = match options.executable {
            Some(exe) => exe,
            None => Executable::current().map_err(StartError::Executable)?,
        };
        let origin = inherited.origin();
        // Taken now, so that it is never closed as unclaimed: it is dropped at `ready`, with
        // a warning if nobody read it.
        let state_file = match inherited.take(state::INVENTORY_NAME, FdKind::Other) {
            Ok(fd) => fd.map(std::fs::File::from),
            Err(e) => {
                tracing::warn!(error = %e, "the inherited application state is unusable");
                None
            }
        };
        let (inputs, receiver) = async_channel::unbounded();
        let shared = Arc::new(Shared {
            inputs,
            origin,
            inherited,
            registry: Mutex::new(Registry::default()),
            tracker: Tracker::new(),
            accepting: AtomicBool::new(true),
            released: AtomicBool::new(false),
            accepting_changed: Wake::new(),
            accepts: AtomicUsize::new(0),
            accepts_ended: Wake::new(),
            exit: Mutex::new(None),
            exited: Wake::new(),
            executable,
            pid_file: options.pid_file.map(PidFile::new),
            on_event: options.on_event,
            receivers: Mutex::new(Receivers::new()),
            outbox: Mutex::new(None),
            span: span.clone(),
            state: Mutex::new(state::Slot::Unread(state_file)),
            state_provider: Mutex::new(None),
            max_state_len: options.max_state_len,
            takeover_timeout: options.takeover_timeout,
        });

        let (signal_tx, signal_rx) = async_channel::unbounded();
        let signals: Vec<Signal> = options.signals.signals().collect();
        runtime
            .forward_signals(&signals, signal_tx)
            .map_err(StartError::Signals)?;
        let map = options.signals;
        let inputs = shared.inputs.clone();
        crate::driver::spawn(&runtime, &span, async move {
            while let Ok(signal) = signal_rx.recv().await {
                if let Some(request) = map.get(signal) {
                    tracing::info!(%signal, ?request, "signal received");
                    let _ = inputs.send(Message::Input(Input::Request(request))).await;
                }
            }
        });

        tracing::info!(
            ?origin,
            executable = %shared.executable.path().display(),
            "endless started"
        );
        let notifier = match options.notify_socket {
            Some(target) => Notifier::new(target.clone())
                .inspect_err(|e| {
                    tracing::warn!(socket = %target, error = %e, "not notifying the service manager");
                })
                .ok(),
            None => Notifier::from_env(),
        };
        // Whether a service manager listens is a fact the lifecycle decides with. A
        // supervisor ([`crate::supervisor`]) hears the same messages, but is none: it
        // follows the generations, staged ones included.
        let config = options.config.service_manager(notifier.is_some());
        let supervisor = crate::supervisor::notifier();
        let lifecycle = Lifecycle::new(config, origin);
        let control = shared.control_server();
        crate::driver::start(
            runtime,
            Arc::clone(&shared),
            lifecycle,
            receiver,
            notifier,
            supervisor,
            control,
        );
        Ok(Self { shared })
    }

    // ---- getters ----

    /// Whether this process was spawned by a previous generation.
    pub(crate) fn origin(&self) -> Origin {
        self.shared.origin
    }

    /// The span of every line endless logs in this process.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    /// The connection tracker.
    pub(crate) fn tracker(&self) -> &Tracker {
        &self.shared.tracker
    }

    /// What the driver receives, for tests that queue messages behind one another.
    #[cfg(test)]
    pub(crate) fn inputs(&self) -> Sender<Message> {
        self.shared.inputs.clone()
    }

    /// Whether listeners should still accept.
    pub(crate) fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::SeqCst)
    }

    // ---- listeners ----

    /// The TCP listener `name`: the inherited one, or a fresh one bound to `addr`. An
    /// inherited listener is kept unless `addr` names a specific port it is not bound to
    /// (the configuration moved it; the old one is then closed as unclaimed).
    pub(crate) fn tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<std::net::TcpListener, ListenError> {
        let _span = self.shared.span.enter();
        let wanted = resolve(name, &addr)?;
        let bind = |addr| crate::listen::bind_tcp(addr).map_err(ListenError::bind(name, &wanted));
        let listener = match self.take(name, FdKind::TcpListener)? {
            Some(fd) => {
                let listener = std::net::TcpListener::from(fd);
                let bound = listener.local_addr().map_err(ListenError::io(name))?;
                if wanted.port() != 0 && bound != wanted {
                    tracing::info!(name, %bound, %wanted, "listen address changed; binding anew");
                    bind(wanted)?
                } else {
                    tracing::debug!(name, %bound, "using the inherited TCP listener");
                    listener
                }
            }
            None => bind(wanted)?,
        };
        listener
            .set_nonblocking(true)
            .map_err(ListenError::io(name))?;
        self.register(name, FdKind::TcpListener, listener.as_fd())?;
        Ok(listener)
    }

    /// The UDP socket `name`: the inherited one, or a fresh one bound to `addr` (same rule
    /// as [`tcp_listener`](Self::tcp_listener)).
    pub(crate) fn udp_socket(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<std::net::UdpSocket, ListenError> {
        let _span = self.shared.span.enter();
        let wanted = resolve(name, &addr)?;
        let bind = |addr| crate::listen::bind_udp(addr).map_err(ListenError::bind(name, &wanted));
        let socket = match self.take(name, FdKind::UdpSocket)? {
            Some(fd) => {
                let socket = std::net::UdpSocket::from(fd);
                let bound = socket.local_addr().map_err(ListenError::io(name))?;
                if wanted.port() != 0 && bound != wanted {
                    tracing::info!(name, %bound, %wanted, "listen address changed; binding anew");
                    bind(wanted)?
                } else {
                    socket
                }
            }
            None => bind(wanted)?,
        };
        socket
            .set_nonblocking(true)
            .map_err(ListenError::io(name))?;
        self.register(name, FdKind::UdpSocket, socket.as_fd())?;
        Ok(socket)
    }

    /// The Unix stream listener `name`: the inherited one, or a fresh one at `path`. The
    /// socket file is never removed on exit: the next generation serves it.
    pub(crate) fn unix_listener(
        &self,
        name: &str,
        path: &Path,
    ) -> Result<UnixListener, ListenError> {
        let _span = self.shared.span.enter();
        let shown = path.display();
        let bind = || crate::listen::bind_unix(path).map_err(ListenError::bind(name, &shown));
        let listener = match self.take(name, FdKind::UnixListener)? {
            Some(fd) => {
                let listener = UnixListener::from(fd);
                let bound = listener.local_addr().map_err(ListenError::io(name))?;
                if same_socket_file(bound.as_pathname(), path) {
                    listener
                } else {
                    tracing::info!(
                        name,
                        bound = ?bound.as_pathname(),
                        wanted = %path.display(),
                        "listen path changed; binding anew"
                    );
                    bind()?
                }
            }
            None => bind()?,
        };
        listener
            .set_nonblocking(true)
            .map_err(ListenError::io(name))?;
        self.register(name, FdKind::UnixListener, listener.as_fd())?;
        Ok(listener)
    }

    /// Takes the inherited fd `name`, checked to be of `kind`; `Ok(None)` if there is none.
    /// Register what you keep with [`register`](Self::register) to pass it on.
    pub(crate) fn take(&self, name: &str, kind: FdKind) -> Result<Option<OwnedFd>, ListenError> {
        if name.starts_with(state::RESERVED_PREFIX) {
            return Err(ListenError::ReservedName {
                name: name.to_owned(),
            });
        }
        if lock(&self.shared.registry).contains(name) {
            return Err(ListenError::DuplicateName {
                name: name.to_owned(),
            });
        }
        self.shared
            .inherited
            .take(name, kind)
            .map_err(|source| ListenError::Take {
                name: name.to_owned(),
                source,
            })
    }

    /// Passes `fd` (duplicated now) to every next generation under `name`.
    pub(crate) fn register(
        &self,
        name: &str,
        kind: FdKind,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ListenError> {
        if name.starts_with(state::RESERVED_PREFIX) {
            return Err(ListenError::ReservedName {
                name: name.to_owned(),
            });
        }
        let mut registry = lock(&self.shared.registry);
        if registry.contains(name) {
            return Err(ListenError::DuplicateName {
                name: name.to_owned(),
            });
        }
        let fd = fd.try_clone_to_owned().map_err(ListenError::io(name))?;
        registry.push(Registered {
            name: name.to_owned(),
            kind,
            fd,
        });
        Ok(())
    }

    // ---- connections ----

    /// Registers a connection for the drain (see [`Tracker::track`]).
    pub(crate) fn track(&self, socket: &impl AsRawFd) -> ConnectionGuard {
        self.shared.tracker.track(Some(socket.as_raw_fd()))
    }

    /// Whether this process will never accept again.
    pub(crate) fn is_released(&self) -> bool {
        self.shared.released.load(Ordering::SeqCst)
    }

    /// Resolves once `done` holds, checked whenever accepting changes.
    async fn accepting_until(&self, done: impl Fn(&Self) -> bool) {
        loop {
            if done(self) {
                return;
            }
            let listener = self.shared.accepting_changed.listen();
            if done(self) {
                return;
            }
            listener.await;
        }
    }

    /// Resolves once listeners must stop accepting (a new generation took over, or the
    /// process is stopping). The listening sockets stay open: connections queued in the
    /// kernel are accepted by the new generation.
    pub(crate) async fn stopped_accepting(&self) {
        self.accepting_until(|h| !h.is_accepting()).await;
    }

    /// Resolves with `true` once listeners accept (again, after a fallback), or with
    /// `false` once this process will never accept again.
    pub(crate) async fn accepting_again(&self) -> bool {
        self.accepting_until(|h| h.is_accepting() || h.is_released())
            .await;
        !self.is_released()
    }

    /// Accepts one connection with `accept` (makes a runtime's accept future) and tracks
    /// it. While this process does not accept (it handed over, and is the fallback of the
    /// new generation) it waits, leaving what is queued in the kernel to the new
    /// generation, which holds the same socket; it accepts again after a fallback. It
    /// returns `Ok(None)` once this process will never accept again (a stop, or the end of
    /// the fallback).
    ///
    /// A guard is held while accepting, so the drain cannot complete between the kernel
    /// handing over a connection and that connection being tracked; none is held while
    /// waiting.
    pub(crate) async fn accept<S: AsRawFd, A, F>(
        &self,
        accept: impl Fn() -> F,
    ) -> io::Result<Option<(Tracked<S>, A)>>
    where
        F: Future<Output = io::Result<(S, A)>>,
    {
        loop {
            if !self.accepting_again().await {
                return Ok(None);
            }
            let _accepting = self.shared.tracker.track(None);
            // Counted before the flag is read again (the driver stores the flag, then reads
            // the count): once it has seen no accept call, none takes a connection.
            let _counted = AcceptCall::new(&self.shared);
            if !self.is_accepting() {
                continue;
            }
            // `or` polls its first future first: once stopped, never take one more.
            let accepted = futures_lite::future::or(
                async {
                    self.stopped_accepting().await;
                    None
                },
                async {
                    Some(accept().await.map(|(stream, peer)| {
                        let guard = self.track(&stream);
                        (Tracked::new(stream, guard), peer)
                    }))
                },
            )
            .await;
            if let Some(accepted) = accepted {
                return accepted.map(Some);
            }
        }
    }

    // ---- connection takeover ----

    /// Receives the connections the previous generation hands over under `name` (see
    /// [`crate::takeover`]). Register every receiver before [`ready`](Self::ready): the
    /// previous generation hands over right after it. The [`Inbox`] ends once the previous
    /// generation is done, at once on a fresh start.
    pub(crate) fn receiver(&self, name: &str) -> Result<Inbox, ReceiveError> {
        lock(&self.shared.receivers).register(name)
    }

    /// Whether a connection can be handed over now: this process is draining after a
    /// restart, and the new generation takes connections.
    pub(crate) fn can_hand_over(&self) -> bool {
        lock(&self.shared.outbox)
            .as_ref()
            .is_some_and(Outbox::is_open)
    }

    /// Hands the connection `fd` (counted by `guard`) to the new generation, with the
    /// application's `state` and the bytes read from it but not consumed, for its receiver
    /// `name`. Stop reading the connection first. On success this process's copy is closed;
    /// on failure the connection comes back in the error while this process still holds it.
    pub(crate) async fn hand_over(
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
        let entry = endless_core::takeover::Entry {
            kind,
            name,
            state,
            unconsumed,
        };
        if let Err(e) = entry.encoded_len() {
            return Err(HandOverError::new(
                HandOverFailure::Frame(e),
                Some((fd, guard)),
            ));
        }
        // From now on the new generation may own the socket: a forced close here must not
        // shut it down.
        guard.forget_socket();
        outbox
            .send(Outgoing {
                kind,
                name: name.to_owned(),
                state: state.to_vec(),
                unconsumed: unconsumed.to_vec(),
                fd,
                guard,
            })
            .await
    }

    // ---- application state ----

    /// The application state the previous generation handed over, if it is of
    /// `expected_version` (see [`crate::state`]).
    pub(crate) fn inherited_state(
        &self,
        expected_version: u32,
    ) -> Result<Option<Vec<u8>>, StateError> {
        lock(&self.shared.state).take(expected_version, self.shared.max_state_len)
    }

    /// Produce the application state for every next generation with `produce`, as
    /// `version` (replacing what was registered before).
    pub(crate) fn hand_over_state(
        &self,
        version: u32,
        produce: impl Fn() -> Vec<u8> + Send + Sync + 'static,
    ) {
        *lock(&self.shared.state_provider) = Some(state::Provider {
            version,
            produce: Arc::new(produce),
        });
    }

    // ---- commands ----

    /// The application serves: tell the parent (if any) and the service manager. The
    /// parent then stops accepting and drains. Only the first call counts. Application
    /// state not read by now is dropped.
    pub(crate) fn ready(&self) {
        lock(&self.shared.state).drop_unread(self.shared.max_state_len);
        let _ = self.shared.inputs.try_send(Message::Input(Input::Ready));
    }

    /// Asks for a restart, a graceful stop or a hammer, as a signal would.
    pub(crate) fn request(&self, request: Request) {
        let _ = self
            .shared
            .inputs
            .try_send(Message::Input(Input::Request(request)));
    }

    /// Resolves when the lifecycle ends; exit the process with [`Exit::code`].
    pub(crate) async fn wait(&self) -> Exit {
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

fn resolve(
    name: &str,
    addr: &(impl ToSocketAddrs + fmt::Debug),
) -> Result<SocketAddr, ListenError> {
    let error = |source| ListenError::Resolve {
        name: name.to_owned(),
        // A `&str` shows as itself, quoted; a `SocketAddr` or a tuple as Rust writes it.
        addr: format!("{addr:?}").trim_matches('"').to_owned(),
        source,
    };
    addr.to_socket_addrs()
        .map_err(|e| error(Some(e)))?
        .next()
        .ok_or_else(|| error(None))
}
