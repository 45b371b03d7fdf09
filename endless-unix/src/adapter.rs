//! The typed API every runtime adapter exposes, written once.
//!
//! An adapter (endless-tokio, endless-smol) implements [`Net`] for a marker type of its
//! own — its [`Runtime`] plus its socket types — and names the types of this module for
//! it: `endless_tokio::Endless` is [`Endless`]`<endless_tokio::Tokio>`, and so on. So the
//! accept loop's rules (stop at the handover without closing the socket, track every
//! connection before the drain can see zero), the builder and every forwarding method
//! exist once, whatever the runtime.

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use endless_core::takeover::StreamKind;
use endless_core::{Config, Event, Origin, Request};

/// Everything an adapter's users name besides its own types, for `pub use
/// endless_unix::adapter::api::*` in each adapter.
pub mod api {
    pub use crate::control::{self, RestartError, Restarted};
    pub use crate::handle::{EventHook, Exit, ListenError, StartError};
    pub use crate::inherit::{AdoptError, TakeError};
    pub use crate::notify::NotifySocket;
    pub use crate::signals::{Signal, SignalMap};
    pub use crate::spawn::Executable;
    pub use crate::state::StateError;
    pub use crate::takeover::{HandOverError, HandOverFailure, ReceiveError};
    pub use crate::tracked::Tracked;
    pub use crate::tracker::{ConnectionGuard, Tracker};
    pub use endless_core::takeover::{RefuseReason, StreamKind};
    pub use endless_core::{
        ChildFailure, ChildStatus, Config, DrainCause, Event, ExitReason, FdKind, InputKind,
        Origin, Phase, Pid, Refusal, RepeatedStop, Request, UpgradeFailure,
    };
}

use crate::handle::{Exit, Handle, ListenError, Options, StartError};
use crate::runtime::Runtime;
use crate::signals::SignalMap;
use crate::spawn::Executable;
use crate::state::StateError;
use crate::takeover::{HandOverError, HandOverFailure, Inbox, ReceiveError};
use crate::tracked::Tracked;
use crate::tracker::{ConnectionGuard, Tracker};

/// A runtime's sockets, for the typed listeners of [`Endless`].
///
/// Implemented by each adapter's marker type (`endless_tokio::Tokio`,
/// `endless_smol::Smol`); an application never implements it.
pub trait Net: Runtime + Clone {
    /// The runtime's TCP listener.
    type TcpListener: AsFd + Send + Sync + 'static;
    /// The runtime's TCP stream.
    type TcpStream: AsRawFd + Send + 'static;
    /// The runtime's Unix stream listener.
    type UnixListener: Send + Sync + 'static;
    /// The runtime's Unix stream.
    type UnixStream: AsRawFd + Send + 'static;
    /// The address of a Unix socket, as the runtime reports it.
    type UnixAddr: fmt::Debug + Send + 'static;
    /// The runtime's UDP socket.
    type UdpSocket;

    /// The runtime the caller runs in. May panic where the runtime needs a context and
    /// there is none (tokio outside a runtime).
    fn current() -> Self;

    /// Registers a (non-blocking) listener with the runtime.
    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Self::TcpListener>;
    /// Registers a (non-blocking) listener with the runtime.
    fn unix_listener(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<Self::UnixListener>;
    /// Registers a (non-blocking) socket with the runtime.
    fn udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Self::UdpSocket>;

    /// Accepts a TCP connection.
    fn accept_tcp(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send + '_;
    /// Accepts a Unix stream connection.
    fn accept_unix(
        listener: &Self::UnixListener,
    ) -> impl Future<Output = io::Result<(Self::UnixStream, Self::UnixAddr)>> + Send + '_;
    /// The address a Unix listener is bound to.
    fn unix_local_addr(listener: &Self::UnixListener) -> io::Result<Self::UnixAddr>;

    /// Registers a (non-blocking) connected TCP socket with the runtime.
    fn tcp_stream(&self, stream: std::net::TcpStream) -> io::Result<Self::TcpStream>;
    /// Deregisters a TCP stream from the runtime, giving the socket back.
    fn tcp_stream_into_std(stream: Self::TcpStream) -> io::Result<std::net::TcpStream>;
    /// Registers a (non-blocking) connected Unix stream socket with the runtime.
    fn unix_stream(&self, stream: std::os::unix::net::UnixStream) -> io::Result<Self::UnixStream>;
    /// Deregisters a Unix stream from the runtime, giving the socket back.
    fn unix_stream_into_std(stream: Self::UnixStream)
    -> io::Result<std::os::unix::net::UnixStream>;
}

/// Configures and starts [`Endless`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use endless_tokio::{Config, Endless, Request, Signal, SignalMap};
///
/// let endless = Endless::builder()
///     .config(Config::new().drain_timeout(Some(Duration::from_secs(30))))
///     .signals(SignalMap::default().with(Signal::QUIT, Request::Hammer))
///     .on_event(|event| eprintln!("endless: {event:?}"))
///     .start()?;
/// # endless.request(endless_tokio::Request::Stop);
/// # assert_eq!(endless.run().await.code, 0);
/// # Ok(()) }
/// ```
pub struct Builder<N> {
    options: Options,
    net: PhantomData<fn() -> N>,
}

impl<N> fmt::Debug for Builder<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("options", &self.options)
            .finish()
    }
}

impl<N> Default for Builder<N> {
    fn default() -> Self {
        Self {
            options: Options::new(),
            net: PhantomData,
        }
    }
}

impl<N> Clone for Builder<N> {
    fn clone(&self) -> Self {
        Self {
            options: self.options.clone(),
            net: PhantomData,
        }
    }
}

impl<N: Net> Builder<N> {
    /// The lifecycle's timeouts and policies ([`Config`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use endless_tokio::{Config, Endless};
    ///
    /// let config = Config::new()
    ///     // How long a new generation has to report ready before it is killed.
    ///     .upgrade_timeout(Duration::from_secs(30))
    ///     // How long the old generation drains before it closes what is left (`None`: no limit).
    ///     .drain_timeout(Some(Duration::from_secs(60)));
    /// let endless = Endless::builder().config(config).start()?;
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.options = self.options.config(config);
        self
    }

    /// Which signal means what (default: [`SignalMap::default`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Config, Endless, Signal, SignalMap};
    ///
    /// // nginx-style staged upgrades (SIGUSR1 stage, SIGQUIT commit, SIGWINCH roll back), and
    /// // SIGINT left to its default action.
    /// let endless = Endless::builder()
    ///     .config(Config::new().staged_upgrades(true))
    ///     .signals(SignalMap::default().with_staged_upgrades().without(Signal::INT))
    ///     .start()?;
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn signals(mut self, signals: SignalMap) -> Self {
        self.options = self.options.signals(signals);
        self
    }

    /// Keep a pid file: written atomically once the process is ready, rewritten by each new
    /// generation, removed on a clean stop. The control socket that answers
    /// [`control::restart`](crate::control::restart) is kept beside it
    /// ([`control::socket_path`](crate::control::socket_path)).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Request};
    ///
    /// let dir = std::env::temp_dir().join(format!("endless-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let pid_file = dir.join("app.pid");
    /// let endless = Endless::builder().pid_file(&pid_file).start()?;
    /// endless.ready();
    /// // Written once ready (by the driver, so give it a moment here).
    /// # for _ in 0..500 {
    /// #     if std::fs::read_to_string(&pid_file).is_ok_and(|s| !s.is_empty()) { break }
    /// #     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    /// # }
    /// let pid: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    /// assert_eq!(pid, std::process::id());
    ///
    /// endless.request(Request::Stop);
    /// assert_eq!(endless.run().await.code, 0);
    /// assert!(!pid_file.exists(), "removed on a clean stop");
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.options = self.options.pid_file(path);
        self
    }

    /// Observe every lifecycle event ([`Event::Requested`] before a request is acted on,
    /// [`Event::StateChanged`] after a transition): endless' PRE/POST hooks.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::{Arc, Mutex};
    /// use endless_tokio::{Endless, Event, Request};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let endless = Endless::builder()
    ///     .on_event(move |event| log.lock().unwrap().push(event.clone()))
    ///     .start()?;
    /// endless.request(Request::Stop);
    /// endless.run().await;
    /// assert!(seen.lock().unwrap().contains(&Event::Requested(Request::Stop)));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.options = self.options.on_event(hook);
        self
    }

    /// Restart into this executable instead of the running one.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Executable};
    ///
    /// // Restart into the binary a deploy puts in place, with the arguments of the next version;
    /// // the environment is this process's (the handoff variables are added per child).
    /// let next = Executable::new(
    ///     "/opt/app/current/bin/app",
    ///     ["--config", "/etc/app.toml"],
    ///     "/opt/app",
    ///     std::env::vars_os(),
    /// );
    /// let endless = Endless::builder().executable(next).start()?;
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn executable(mut self, executable: Executable) -> Self {
        self.options = self.options.executable(executable);
        self
    }

    /// Send the `sd_notify` messages ([`crate::notify`]) to `target` instead of the socket
    /// `NOTIFY_SOCKET` names (a supervisor's private socket, say).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    /// use endless_unix::notify::NotifySocket;
    ///
    /// // A supervisor's socket, where systemd's would be.
    /// # let dir = std::env::temp_dir().join(format!("endless-doc-notify-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("notify.sock");
    /// let supervisor = tokio::net::UnixDatagram::bind(&path)?;
    /// let endless = Endless::builder()
    ///     .notify_socket(NotifySocket::parse(path.as_os_str())?)
    ///     .start()?;
    /// endless.ready();
    ///
    /// let mut message = [0; 256];
    /// let len = supervisor.recv(&mut message).await?;
    /// assert!(String::from_utf8_lossy(&message[..len]).contains("READY=1"));
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn notify_socket(mut self, target: crate::notify::NotifySocket) -> Self {
        self.options = self.options.notify_socket(target);
        self
    }

    /// How long the new generation may answer nothing while connections handed over
    /// ([`Endless::hand_over`]) wait for its answers (default 5 s). A new generation that is
    /// alive but does not answer in that time (its application does not take what it is
    /// offered) is cut off: the connections it did not take stay with this process, which
    /// serves them on, and it takes no more (see [`crate::takeover`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::builder()
    ///     .takeover_timeout(Duration::from_secs(2))
    ///     .start()?;
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn takeover_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.options = self.options.takeover_timeout(timeout);
        self
    }

    /// The most bytes of application state this process hands to its successor, and
    /// accepts from its predecessor (default
    /// [`DEFAULT_MAX_LEN`](crate::state::DEFAULT_MAX_LEN), 64 MiB); see
    /// [`Endless::hand_over_state`].
    #[must_use]
    pub fn max_state_len(mut self, bytes: usize) -> Self {
        self.options = self.options.max_state_len(bytes);
        self
    }

    /// Whether the first process becomes the supervisor of the generations
    /// ([`crate::supervisor`]): `true` forces it on (a sidecar setup, a test), `false` off.
    /// Unset, `ENDLESS_SUPERVISE=1`/`0` decides, and without it the supervisor mode is on
    /// exactly when the process is PID 1 (a container's entrypoint), whose exit would end
    /// the container at the first restart. Linux only.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// // In the supervisor, `start` does not return: it exits with the service's status.
    /// let endless = Endless::builder().supervise(true).start()?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn supervise(mut self, supervise: bool) -> Self {
        self.options = self.options.supervise(Some(supervise));
        self
    }

    /// Adopts what the parent handed over, installs the signal handlers and starts the
    /// lifecycle on the runtime (see [`Net::current`]).
    ///
    /// In the supervisor mode ([`supervise`](Self::supervise); on by default when the
    /// process is PID 1), it does not return in the first process: that process supervises
    /// the generations and exits with the service's status. Call it early in `main`, before
    /// the application does anything the supervisor should not do twice.
    ///
    /// Fails with a typed error when the inherited variables or fds are unusable; the
    /// parent then keeps serving.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, StartError};
    ///
    /// let endless = match Endless::builder().start() {
    ///     Ok(endless) => endless,
    ///     // Say why and exit: the previous generation sees this child die and keeps serving.
    ///     Err(StartError::Adopt(e)) => return Err(format!("inherited sockets unusable: {e}").into()),
    ///     Err(e) => return Err(e.into()),
    /// };
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn start(self) -> Result<Endless<N>, StartError> {
        let net = N::current();
        let handle = Handle::start(net.clone(), self.options)?;
        Ok(Endless { handle, net })
    }
}

/// A process's handle on zero-downtime restarts; cheap to clone.
///
/// The protocol an application follows: [`start`](Self::start) early (the signal handlers
/// are installed then); take or bind its listeners by name; accept until `accept` returns
/// `Ok(None)` ([`TcpListener::accept`] says when); call [`ready`](Self::ready) once it serves; await [`run`](Self::run) and
/// exit with the code it returns.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use endless_tokio::{Endless, Request};
///
/// let endless = Endless::start()?;
/// let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
/// tokio::spawn(async move {
///     // Until this process will never accept again (it stops, or handed over for good):
///     // `Ok(None)`.
///     while let Ok(Some((connection, _peer))) = listener.accept().await {
///         tokio::spawn(async move {
///             // … serve `connection`, a `Tracked<tokio::net::TcpStream>` …
/// #           drop(connection);
///         });
///     }
/// });
/// endless.ready();
/// # endless.request(Request::Stop);
/// let exit = endless.run().await;
/// # assert_eq!(exit.code, 0);
/// // std::process::exit(exit.code);
/// # Ok(()) }
/// ```
pub struct Endless<N> {
    handle: Handle,
    net: N,
}

impl<N: Clone> Clone for Endless<N> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            net: self.net.clone(),
        }
    }
}

impl<N> fmt::Debug for Endless<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl<N: Net> Endless<N> {
    /// A [`Builder`] with every default.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Config, Endless};
    ///
    /// let endless = Endless::builder().config(Config::new().staged_upgrades(true)).start()?;
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> Builder<N> {
        Builder::default()
    }

    /// Starts with every default (see [`Builder::start`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// // Early in main, inside the runtime, before the listeners.
    /// let endless = Endless::start()?;
    /// assert_eq!(endless.origin(), endless_tokio::Origin::Fresh);
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn start() -> Result<Self, StartError> {
        Builder::default().start()
    }

    /// The TCP listener `name`: inherited from the previous generation, or bound to `addr`
    /// (IPv4 or IPv6; port 0 for any). Names are how generations match listeners, so keep
    /// them stable across versions.
    ///
    /// The error names the listener and what failed; it converts into an [`io::Error`], so
    /// `?` works in a function that returns `io::Result`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// assert_ne!(addr.port(), 0);
    ///
    /// let client = tokio::net::TcpStream::connect(addr).await?;
    /// let (connection, peer) = listener.accept().await?.expect("still accepting");
    /// assert_eq!(peer, client.local_addr()?);
    /// assert_eq!(endless.tracker().len(), 1);
    ///
    /// // The error names the listener and what failed.
    /// let err = endless.tcp_listener("admin", "127.0.0.1:80x").unwrap_err();
    /// assert!(matches!(err, endless_tokio::ListenError::Resolve { .. }));
    /// assert!(err.to_string().starts_with(r#"listener "admin": cannot resolve "127.0.0.1:80x""#));
    /// # drop(connection);
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<TcpListener<N>, ListenError> {
        let std = self.handle.tcp_listener(name, addr)?;
        Ok(TcpListener {
            inner: self.net.tcp_listener(std).map_err(ListenError::io(name))?,
            handle: self.handle.clone(),
        })
    }

    /// The Unix stream listener `name`: inherited, or bound at `path` (a stale socket file
    /// is replaced). The old generation never removes the file: the new one serves it.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// # let dir = std::env::temp_dir().join(format!("endless-doc-unix-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let endless = Endless::start()?;
    /// let path = dir.join("admin.sock");
    /// let listener = endless.unix_listener("admin", &path)?;
    ///
    /// let _client = tokio::net::UnixStream::connect(&path).await?;
    /// let (connection, _addr) = listener.accept().await?.expect("still accepting");
    /// # drop(connection);
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn unix_listener(
        &self,
        name: &str,
        path: impl AsRef<Path>,
    ) -> Result<UnixListener<N>, ListenError> {
        let std = self.handle.unix_listener(name, path.as_ref())?;
        Ok(UnixListener {
            inner: self.net.unix_listener(std).map_err(ListenError::io(name))?,
            handle: self.handle.clone(),
        })
    }

    /// The UDP socket `name`: inherited, or bound to `addr`. Both generations receive on it
    /// until the old one exits; stop receiving in the old one on
    /// [`stopped_accepting`](Self::stopped_accepting).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// let socket = endless.udp_socket("dns", "127.0.0.1:0")?; // a tokio::net::UdpSocket
    /// let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    /// client.send_to(b"ping", socket.local_addr()?).await?;
    ///
    /// let mut buf = [0; 16];
    /// let (len, from) = socket.recv_from(&mut buf).await?;
    /// assert_eq!((&buf[..len], from), (&b"ping"[..], client.local_addr()?));
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn udp_socket(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<N::UdpSocket, ListenError> {
        let std = self.handle.udp_socket(name, addr)?;
        self.net.udp_socket(std).map_err(ListenError::io(name))
    }

    /// Tracks a connection accepted elsewhere, for the drain.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// // A connection endless did not accept: an outgoing one, or one from a plain listener.
    /// let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let _client = tokio::net::TcpStream::connect(plain.local_addr()?).await?;
    /// let (stream, _) = plain.accept().await?;
    ///
    /// let connection = endless.track(stream);
    /// assert_eq!(endless.tracker().len(), 1); // the drain waits for it
    /// drop(connection);
    /// assert!(endless.tracker().is_empty());
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn track<S: AsRawFd>(&self, stream: S) -> Tracked<S> {
        let guard = self.handle.track(&stream);
        Tracked::new(stream, guard)
    }

    /// The application serves: the parent (if any) stops accepting and drains. Only the
    /// first call counts.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// let _listener = endless.tcp_listener("http", "127.0.0.1:0")?;
    /// // … load the configuration, warm the caches, spawn the accept loops …
    /// endless.ready(); // the previous generation (if any) now stops accepting and drains
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn ready(&self) {
        self.handle.ready();
    }

    /// Asks for a restart, a graceful stop or a hammer, as a signal would.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Request};
    ///
    /// let endless = Endless::start()?;
    /// endless.ready();
    /// // An admin endpoint, say, asks for what `SIGHUP` or `SIGTERM` would.
    /// endless.request(Request::Stop);
    /// assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn request(&self, request: Request) {
        self.handle.request(request);
    }

    /// Resolves once listeners must stop accepting (a new generation took over, or the
    /// process is stopping). The sockets stay open for the next generation.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Request};
    ///
    /// let endless = Endless::start()?;
    /// let socket = endless.udp_socket("metrics", "127.0.0.1:0")?;
    /// let stop = endless.clone();
    /// let receiver = tokio::spawn(async move {
    ///     let mut buf = [0; 1500];
    ///     loop {
    ///         tokio::select! {
    ///             _ = socket.recv_from(&mut buf) => { /* … handle the datagram … */ }
    ///             // The new generation receives from here on.
    ///             () = stop.stopped_accepting() => break,
    ///         }
    ///     }
    /// });
    /// endless.request(Request::Stop);
    /// receiver.await?;
    /// assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub async fn stopped_accepting(&self) {
        self.handle.stopped_accepting().await;
    }

    /// After [`stopped_accepting`](Self::stopped_accepting): resolves with `true` once
    /// listeners accept again (the new generation died and this process took the service
    /// back, [`Event::TookServiceBack`]), or with
    /// `false` once this process will never accept again (a stop, or its successor no
    /// longer needs a fallback). At once while accepting. A loop that receives on a
    /// socket of its own (UDP) parks on it between the two:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Request};
    ///
    /// let endless = Endless::start()?;
    /// let socket = endless.udp_socket("metrics", "127.0.0.1:0")?;
    /// let handle = endless.clone();
    /// let receiver = tokio::spawn(async move {
    ///     let mut buf = [0; 1500];
    ///     while handle.accepting_again().await {
    ///         tokio::select! {
    ///             _ = socket.recv_from(&mut buf) => { /* … handle the datagram … */ }
    ///             () = handle.stopped_accepting() => {}
    ///         }
    ///     }
    /// });
    /// endless.request(Request::Stop);
    /// receiver.await?;
    /// assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub async fn accepting_again(&self) -> bool {
        self.handle.accepting_again().await
    }

    /// Runs until the lifecycle ends (after a handover or a stop, once drained or at the
    /// deadline); exit the process with the returned [`Exit::code`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Request};
    ///
    /// let endless = Endless::start()?;
    /// endless.ready();
    /// # endless.request(Request::Stop);
    /// let exit = endless.run().await;
    /// println!("exiting: {:?}, {:?}", exit.reason, exit.cause);
    /// # assert_eq!(exit.code, 0);
    /// // std::process::exit(exit.code);
    /// # Ok(()) }
    /// ```
    pub async fn run(&self) -> Exit {
        self.handle.wait().await
    }

    /// Whether this process was started by a previous generation.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, Origin};
    ///
    /// let endless = Endless::start()?;
    /// if endless.origin() == Origin::Inherited {
    ///     println!("started by the previous generation, which waits for `ready`");
    /// }
    /// # assert_eq!(endless.origin(), Origin::Fresh);
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn origin(&self) -> Origin {
        self.handle.origin()
    }

    /// The connections alive.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
    /// let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let connection = listener.accept().await?;
    /// assert_eq!(endless.tracker().len(), 1);
    /// drop(connection);
    /// endless.tracker().drained().await; // what the drain waits for
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn tracker(&self) -> &Tracker {
        self.handle.tracker()
    }

    /// The `tracing` span every line endless logs runs in, `endless{pid=…}`: two
    /// generations write to the same stderr or journal, and the pid tells them apart. Run
    /// your own tasks in it and their lines carry the pid too:
    /// `tokio::spawn(task.instrument(endless.span().clone()))` (with
    /// `tracing::Instrument`).
    pub fn span(&self) -> &tracing::Span {
        self.handle.span()
    }

    // ---- application state ----

    /// The application state the previous generation handed over
    /// ([`hand_over_state`](Self::hand_over_state)), read and checked: `Ok(Some(bytes))`
    /// when it sent state of `expected_version`, `Ok(None)` on a fresh start or when it
    /// sent none (it had no provider, or its provider failed).
    ///
    /// Call it before [`ready`](Self::ready), once: a second call is
    /// [`StateError::AlreadyRead`], a call after `ready` is [`StateError::AfterReady`]
    /// (state not read by then is dropped, with a warning). See [`crate::state`].
    ///
    /// # Errors
    ///
    /// [`StateError::VersionMismatch`] for state of another version,
    /// [`StateError::TooLarge`] for more than
    /// [`Builder::max_state_len`] bytes, [`StateError::Corrupt`] or [`StateError::Io`]
    /// when it cannot be read; the process then starts without it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use endless_unix::{Endless, Net};
    /// # fn server<N: Net>(endless: Endless<N>) {
    /// let sessions: Vec<u8> = match endless.inherited_state(1) {
    ///     Ok(state) => state.unwrap_or_default(),
    ///     Err(e) => {
    ///         eprintln!("starting without the previous generation's sessions: {e}");
    ///         Vec::new()
    ///     }
    /// };
    /// # }
    /// ```
    pub fn inherited_state(&self, expected_version: u32) -> Result<Option<Vec<u8>>, StateError> {
        self.handle.inherited_state(expected_version)
    }

    /// Hands application state to every next generation: at each restart, just before the
    /// successor is spawned, `produce` runs on a thread of its own and its bytes go to the
    /// successor as state of `version` (the application's number for their layout), which
    /// it reads with [`inherited_state`](Self::inherited_state). Replaces what was
    /// registered before.
    ///
    /// A `produce` that panics, or returns more than [`Builder::max_state_len`] bytes, is
    /// logged as an error and the successor starts without state: the restart goes on. One
    /// that never returns fails the restart at the upgrade timeout. See [`crate::state`].
    pub fn hand_over_state(
        &self,
        version: u32,
        produce: impl Fn() -> Vec<u8> + Send + Sync + 'static,
    ) {
        self.handle.hand_over_state(version, produce);
    }

    // ---- connection takeover ----

    /// Receives the connections the previous generation hands over under `name`, as typed,
    /// tracked streams with their state (see [`crate::takeover`]). Register every receiver
    /// before [`ready`](Self::ready). On a fresh start the receiver ends at once.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// let incoming = endless.receive_connections("chat")?;
    /// let receiver = tokio::spawn(async move {
    ///     let mut received = 0;
    ///     while let Some(connection) = incoming.next().await {
    ///         // `connection.stream` is tracked; `state` and `unconsumed` are what the previous
    ///         // generation sent with it.
    ///         # let _ = (&connection.state, &connection.unconsumed);
    ///         received += 1;
    ///     }
    ///     received
    /// });
    /// endless.ready();
    /// assert_eq!(receiver.await?, 0); // a fresh start: nothing to receive
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn receive_connections(&self, name: &str) -> Result<Connections<N>, ReceiveError> {
        Ok(Connections {
            inbox: self.handle.receiver(name)?,
            endless: self.clone(),
            taken: std::sync::Mutex::default(),
            most: endless_core::takeover::MAX_BATCH,
        })
    }

    /// Whether a connection can be handed over now: this process drains after a restart
    /// and the new generation takes connections. Ask on
    /// [`ConnectionGuard::closing`](crate::ConnectionGuard::closing).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// assert!(!endless.can_hand_over()); // serving, not draining after a restart
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub fn can_hand_over(&self) -> bool {
        self.handle.can_hand_over()
    }

    /// Hands `stream` to the new generation's receiver `name`, with the application's
    /// `state` of it (at most [`MAX_STATE_LEN`](endless_core::takeover::MAX_STATE_LEN)
    /// bytes) and the bytes read from it but not consumed (at most
    /// [`MAX_UNCONSUMED_LEN`](endless_core::takeover::MAX_UNCONSUMED_LEN)). Stop reading
    /// it first. Resolves once the new generation took it (this process's copy is then
    /// closed) or did not: the error then gives the connection back, still tracked, to be
    /// served on or closed.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::{Endless, HandOverFailure, Stream};
    ///
    /// let endless = Endless::start()?;
    /// let listener = endless.tcp_listener("game", "127.0.0.1:0")?;
    /// let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let (connection, _) = listener.accept().await?.expect("still accepting");
    ///
    /// // Once the drain asks the connection to close (`connection.guard().closing()`):
    /// match endless.hand_over(Stream::Tcp(connection), "game", b"level=3", b"").await {
    ///     Ok(()) => { /* the new generation serves it now */ }
    ///     Err(e) => {
    ///         // No new generation takes it (here: nothing restarted): serve on, or close.
    ///         assert!(matches!(e.failure, HandOverFailure::NoSuccessor));
    ///         let _connection = e.connection.expect("given back");
    ///     }
    /// }
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub async fn hand_over(
        &self,
        stream: Stream<N>,
        name: &str,
        state: &[u8],
        unconsumed: &[u8],
    ) -> Result<(), HandOverError<Stream<N>>> {
        if !self.can_hand_over() {
            return Err(HandOverError::new(
                HandOverFailure::NoSuccessor,
                Some(stream),
            ));
        }
        let kind = stream.kind();
        let (fd, guard) = match stream.into_fd() {
            Ok(held) => held,
            Err(e) => return Err(HandOverError::new(HandOverFailure::Io(e), None)),
        };
        let result = self
            .handle
            .hand_over(kind, name, state, unconsumed, (fd, guard))
            .await;
        result.map_err(|e| e.map(|(fd, guard)| self.stream_back(kind, fd, guard)))
    }

    /// A connection that was not handed over, back in the runtime and tracked again.
    fn stream_back(
        &self,
        kind: StreamKind,
        fd: OwnedFd,
        old: ConnectionGuard,
    ) -> Option<Stream<N>> {
        let stream = self.adopt(kind, fd);
        // Tracked anew before the old guard goes, so that the drain never sees zero.
        drop(old);
        match stream {
            Ok(stream) => Some(stream),
            Err(e) => {
                self.handle.span().in_scope(|| {
                    tracing::warn!(error = %e, "a connection not handed over could not be served on");
                });
                None
            }
        }
    }

    /// Registers the socket `fd` of `kind` with the runtime and tracks it.
    fn adopt(&self, kind: StreamKind, fd: OwnedFd) -> io::Result<Stream<N>> {
        self.adopt_with(kind, fd, |fd| Ok(self.tracker().track(Some(fd))))
    }

    /// As [`adopt`](Self::adopt), for a connection the previous generation hands over:
    /// refused ([`crate::takeover::Drained`]) once this process has drained.
    fn adopt_taken(&self, kind: StreamKind, fd: OwnedFd) -> io::Result<Stream<N>> {
        self.adopt_with(kind, fd, |fd| {
            self.tracker()
                .track_unless_drained(Some(fd))
                .ok_or_else(|| io::Error::other(crate::takeover::Drained))
        })
    }

    fn adopt_with(
        &self,
        kind: StreamKind,
        fd: OwnedFd,
        track: impl Fn(RawFd) -> io::Result<ConnectionGuard>,
    ) -> io::Result<Stream<N>> {
        Ok(match kind {
            StreamKind::Unix => {
                let std = std::os::unix::net::UnixStream::from(fd);
                std.set_nonblocking(true)?;
                let stream = self.net.unix_stream(std)?;
                let guard = track(stream.as_raw_fd())?;
                Stream::Unix(Tracked::new(stream, guard))
            }
            StreamKind::Tcp => {
                let std = std::net::TcpStream::from(fd);
                std.set_nonblocking(true)?;
                let stream = self.net.tcp_stream(std)?;
                let guard = track(stream.as_raw_fd())?;
                Stream::Tcp(Tracked::new(stream, guard))
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("cannot serve a {other}"),
                ));
            }
        })
    }
}

/// A tracked connection of either kind that can be handed over
/// ([`Endless::hand_over`]) or was received ([`Connections::next`]).
pub enum Stream<N: Net> {
    /// A TCP connection.
    Tcp(Tracked<N::TcpStream>),
    /// A Unix stream connection.
    Unix(Tracked<N::UnixStream>),
}

impl<N: Net> fmt::Debug for Stream<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(s) => f
                .debug_tuple("Tcp")
                .field(&s.get_ref().as_raw_fd())
                .finish(),
            Self::Unix(s) => f
                .debug_tuple("Unix")
                .field(&s.get_ref().as_raw_fd())
                .finish(),
        }
    }
}

impl<N: Net> Stream<N> {
    /// Which kind it is.
    pub fn kind(&self) -> StreamKind {
        match self {
            Self::Tcp(_) => StreamKind::Tcp,
            Self::Unix(_) => StreamKind::Unix,
        }
    }

    /// Its guard: [`ConnectionGuard::closing`] says when to close or hand it over.
    pub fn guard(&self) -> &ConnectionGuard {
        match self {
            Self::Tcp(s) => s.guard(),
            Self::Unix(s) => s.guard(),
        }
    }

    /// The TCP stream, if it is one.
    pub fn into_tcp(self) -> Result<Tracked<N::TcpStream>, Self> {
        match self {
            Self::Tcp(s) => Ok(s),
            other => Err(other),
        }
    }

    /// The Unix stream, if it is one.
    pub fn into_unix(self) -> Result<Tracked<N::UnixStream>, Self> {
        match self {
            Self::Unix(s) => Ok(s),
            other => Err(other),
        }
    }

    /// The socket out of the runtime, and its guard.
    fn into_fd(self) -> io::Result<(OwnedFd, ConnectionGuard)> {
        Ok(match self {
            Self::Tcp(s) => {
                let (stream, guard) = s.into_parts();
                (N::tcp_stream_into_std(stream)?.into(), guard)
            }
            Self::Unix(s) => {
                let (stream, guard) = s.into_parts();
                (N::unix_stream_into_std(stream)?.into(), guard)
            }
        })
    }
}

/// The connections the previous generation hands over under one name
/// ([`Endless::receive_connections`]).
///
/// The connections waiting when [`next`](Self::next) is called are taken together (one
/// answer to the previous generation for all of them) and handed out one by one: drop a
/// `Connections` only once `next` returned `None`, or those taken and not handed out yet
/// are closed.
pub struct Connections<N: Net> {
    inbox: Inbox,
    endless: Endless<N>,
    /// Taken, not handed out yet.
    taken: std::sync::Mutex<std::collections::VecDeque<Received<N>>>,
    /// The most taken in one go.
    most: usize,
}

impl<N: Net> fmt::Debug for Connections<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

/// A connection received from the previous generation.
#[derive(Debug)]
#[non_exhaustive]
pub struct Received<N: Net> {
    /// The connection, registered with the runtime and tracked.
    pub stream: Stream<N>,
    /// The name it was handed over under.
    pub name: String,
    /// The previous generation's state of it.
    pub state: Vec<u8>,
    /// Bytes the previous generation read from it and did not consume: they come before
    /// whatever the stream yields.
    pub unconsumed: Vec<u8>,
}

impl<N: Net> Connections<N> {
    /// Takes at most `most` connections in one go (at least 1; the default is
    /// [`MAX_BATCH`](endless_core::takeover::MAX_BATCH)): fewer answers to the previous
    /// generation with more, fewer connections held and not handed out yet with less.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    ///
    /// let endless = Endless::start()?;
    /// // One at a time: each is answered as the application gets it.
    /// let incoming = endless.receive_connections("game")?.take_at_most(1);
    /// endless.ready();
    /// assert!(incoming.next().await.is_none()); // a fresh start
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn take_at_most(mut self, most: usize) -> Self {
        self.most = most.max(1);
        self
    }

    /// The next connection, owned by this process (the previous generation is told so
    /// before this returns, and closes its copy); `None` once the previous generation is
    /// done. A connection that cannot be registered with the runtime is refused and stays
    /// with the previous generation.
    pub async fn next(&self) -> Option<Received<N>> {
        loop {
            if let Some(received) = self.lock_taken().pop_front() {
                return Some(received);
            }
            let first = self.inbox.next().await?;
            let mut batch = vec![first];
            while batch.len() < self.most {
                match self.inbox.try_next() {
                    Some(incoming) => batch.push(incoming),
                    None => break,
                }
            }
            let results =
                crate::takeover::take_all(batch, |kind, fd| self.endless.adopt_taken(kind, fd));
            let mut taken = self.lock_taken();
            for result in results {
                match result {
                    Ok((stream, offer)) => taken.push_back(Received {
                        stream,
                        name: offer.name,
                        state: offer.state,
                        unconsumed: offer.unconsumed,
                    }),
                    Err(e) if crate::takeover::Drained::is(&e) => {
                        self.endless.handle.span().in_scope(|| {
                            tracing::info!(error = %e, "refused a connection handed over");
                        });
                    }
                    Err(e) => self.endless.handle.span().in_scope(|| {
                        tracing::warn!(error = %e, "refused a connection handed over");
                    }),
                }
            }
        }
    }

    fn lock_taken(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Received<N>>> {
        crate::handle::lock(&self.taken)
    }
}

/// A TCP listener whose connections are tracked, and that stops accepting when the
/// lifecycle says so.
pub struct TcpListener<N: Net> {
    inner: N::TcpListener,
    handle: Handle,
}

impl<N: Net> fmt::Debug for TcpListener<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local_addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl<N: Net> TcpListener<N> {
    /// The next connection, or `Ok(None)` once this process will never accept again.
    ///
    /// The contract, through a restart:
    ///
    /// - **Serving** (also while a new generation starts, and beside a staged one): each
    ///   call returns the next connection.
    /// - **Handed over** (the new generation reported ready): the call waits, accepting
    ///   nothing. The socket stays open; the new generation accepts on it, what is queued
    ///   in the kernel included. This lasts through the drain and the probation after it
    ///   ([`Config::probation`](endless_core::Config::probation)), while this process is
    ///   the new generation's fallback.
    /// - **Fallback** (the new generation died without departing,
    ///   [`Event::TookServiceBack`]): the waiting call
    ///   returns connections again, as when serving. Keep the accept loop running through
    ///   the handover for this.
    /// - **Done** (a stop; or the new generation departed, exited cleanly, or outlived the
    ///   probation; or the lifecycle ended): `Ok(None)`, now and on every later call.
    ///
    /// An `Err` is an accept error (no free fd, a connection reset while queued): the
    /// listener is still good, retry after a pause.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use endless_tokio::{Endless, Request};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let endless = Endless::start()?;
    /// let listener = endless.tcp_listener("hello", "127.0.0.1:0")?;
    /// # let addr = listener.local_addr()?;
    /// let accepting = tokio::spawn(async move {
    ///     loop {
    ///         match listener.accept().await {
    ///             Ok(Some((mut connection, _peer))) => {
    ///                 tokio::spawn(async move { connection.write_all(b"hello\n").await });
    ///             }
    ///             // Stopping, or handed over for good: the socket stays open for the next.
    ///             Ok(None) => break,
    ///             // EMFILE, say: the listener is fine, pause a little.
    ///             Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
    ///         }
    ///     }
    /// });
    /// # let mut client = tokio::net::TcpStream::connect(addr).await?;
    /// # let mut reply = String::new();
    /// # tokio::io::AsyncReadExt::read_to_string(&mut client, &mut reply).await?;
    /// # assert_eq!(reply, "hello\n");
    /// endless.request(Request::Stop);
    /// accepting.await?;
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub async fn accept(&self) -> io::Result<Option<(Tracked<N::TcpStream>, SocketAddr)>> {
        self.handle.accept(|| N::accept_tcp(&self.inner)).await
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(&self.inner)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// The runtime's listener.
    pub fn get_ref(&self) -> &N::TcpListener {
        &self.inner
    }

    /// The tracker of the connections this listener accepts.
    pub fn tracker(&self) -> &Tracker {
        self.handle.tracker()
    }

    /// The span endless logs in ([`Endless::span`]), for the tasks that serve this
    /// listener's connections.
    pub fn span(&self) -> &tracing::Span {
        self.handle.span()
    }
}

/// A Unix stream listener whose connections are tracked, and that stops accepting when the
/// lifecycle says so.
pub struct UnixListener<N: Net> {
    inner: N::UnixListener,
    handle: Handle,
}

impl<N: Net> fmt::Debug for UnixListener<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener")
            .field("local_addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl<N: Net> UnixListener<N> {
    /// The next connection, or `Ok(None)` once this process will never accept again; the
    /// same contract as [`TcpListener::accept`].
    pub async fn accept(&self) -> io::Result<Option<(Tracked<N::UnixStream>, N::UnixAddr)>> {
        self.handle.accept(|| N::accept_unix(&self.inner)).await
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<N::UnixAddr> {
        N::unix_local_addr(&self.inner)
    }

    /// The runtime's listener.
    pub fn get_ref(&self) -> &N::UnixListener {
        &self.inner
    }

    /// The tracker of the connections this listener accepts.
    pub fn tracker(&self) -> &Tracker {
        self.handle.tracker()
    }

    /// The span endless logs in ([`Endless::span`]), for the tasks that serve this
    /// listener's connections.
    pub fn span(&self) -> &tracing::Span {
        self.handle.span()
    }
}
