//! Zero-downtime restarts for [tokio](https://tokio.rs) servers.
//!
//! Replace the binary, send `SIGHUP`: the server starts its new version with the same
//! path, arguments, working directory and environment, passing it the listening sockets.
//! The new process calls [`Endless::ready`]; the old one stops accepting (its sockets stay
//! open, so nothing queued in the kernel is lost), finishes the connections it has and
//! exits. A new version that crashes, or is not ready within the upgrade timeout, is
//! killed and the old one keeps serving.
//!
//! Signals, by default: `SIGHUP` restart, `SIGTERM`/`SIGINT` graceful stop, `SIGUSR2`
//! hammer (close what is left of a drain now). Every decision is taken by the sans-IO
//! [`endless_core::Lifecycle`]; this crate only owns the sockets, signals, processes and
//! timers.
//!
//! # Example
//!
//! A line echo server, in full. (This example stops itself after one connection; a real
//! server runs until a signal asks it to stop.)
//!
//! ```
//! use endless_tokio::Endless;
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let endless = Endless::start()?;
//! let listener = endless.tcp_listener("echo", "127.0.0.1:0")?;
//! # let addr = listener.local_addr()?;
//! # let stopper = endless.clone();
//! # tokio::spawn(async move {
//! #     let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
//! #     c.write_all(b"hi\n").await.unwrap();
//! #     let mut line = String::new();
//! #     BufReader::new(&mut c).read_line(&mut line).await.unwrap();
//! #     assert!(line.ends_with(" hi\n"));
//! #     stopper.request(endless_tokio::Request::Stop);
//! # });
//! tokio::spawn(async move {
//!     while let Ok(Some((stream, _peer))) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let (read, mut write) = tokio::io::split(stream);
//!             let mut lines = BufReader::new(read).lines();
//!             while let Ok(Some(line)) = lines.next_line().await {
//!                 let reply = format!("{} {line}\n", std::process::id());
//!                 if write.write_all(reply.as_bytes()).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! });
//! endless.ready();
//! let exit = endless.run().await;
//! # assert_eq!(exit.code, 0);
//! # Ok(()) }
//! // std::process::exit(exit.code);
//! ```
//!
//! Connections accepted through an endless listener are [`Tracked`]: the drain waits for
//! them, and at the drain deadline they are shut down. To close an idle connection as
//! soon as the drain starts, select on [`Tracked::guard`]`().`[`closing()`](ConnectionGuard::closing)
//! between requests.
#![warn(missing_docs)]

mod runtime;

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

pub use endless_core::{Config, Event, FdKind, Origin, RepeatedStop, Request};
pub use endless_unix::spawn::Executable;
pub use endless_unix::{
    ConnectionGuard, Exit, ListenError, Signal, SignalMap, StartError, Tracked, Tracker,
};

use runtime::TokioRuntime;

/// Configures and starts [`Endless`].
#[derive(Debug, Default, Clone)]
pub struct Builder {
    options: endless_unix::Options,
}

impl Builder {
    /// The lifecycle's timeouts and policies ([`Config`]).
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.options = self.options.config(config);
        self
    }

    /// Which signal means what (default: [`SignalMap::default`]).
    #[must_use]
    pub fn signals(mut self, signals: SignalMap) -> Self {
        self.options = self.options.signals(signals);
        self
    }

    /// Keep a pid file: written atomically once the process is ready, rewritten by each new
    /// generation, removed on a clean stop.
    #[must_use]
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.options = self.options.pid_file(path);
        self
    }

    /// Observe every lifecycle event ([`Event::Requested`] before a request is acted on,
    /// [`Event::StateChanged`] after a transition): endless' PRE/POST hooks.
    #[must_use]
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.options = self.options.on_event(hook);
        self
    }

    /// Restart into this executable instead of the running one.
    #[must_use]
    pub fn executable(mut self, executable: Executable) -> Self {
        self.options = self.options.executable(executable);
        self
    }

    /// Adopts what the parent handed over, installs the signal handlers and starts the
    /// lifecycle. Must be called within a tokio runtime with I/O and time enabled.
    ///
    /// Fails with a typed error when the inherited variables or fds are unusable; the
    /// parent then keeps serving.
    pub fn start(self) -> Result<Endless, StartError> {
        let runtime = TokioRuntime::current();
        let inner = endless_unix::Endless::start(runtime, self.options)?;
        Ok(Endless { inner })
    }
}

/// A process's handle on zero-downtime restarts; cheap to clone.
#[derive(Clone)]
pub struct Endless {
    inner: endless_unix::Endless,
}

impl fmt::Debug for Endless {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Endless {
    /// A [`Builder`] with every default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts with every default (see [`Builder::start`]).
    pub fn start() -> Result<Self, StartError> {
        Builder::default().start()
    }

    /// The TCP listener `name`: inherited from the previous generation, or bound to `addr`
    /// (IPv4 or IPv6; port 0 for any). Names are how generations match listeners, so keep
    /// them stable across versions.
    pub fn tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> io::Result<TcpListener> {
        let std = self.inner.tcp_listener(name, addr)?;
        Ok(TcpListener {
            inner: tokio::net::TcpListener::from_std(std)?,
            endless: self.inner.clone(),
        })
    }

    /// The Unix stream listener `name`: inherited, or bound at `path` (a stale socket file
    /// is replaced). The old generation never removes the file: the new one serves it.
    pub fn unix_listener(&self, name: &str, path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let std = self.inner.unix_listener(name, path.as_ref())?;
        Ok(UnixListener {
            inner: tokio::net::UnixListener::from_std(std)?,
            endless: self.inner.clone(),
        })
    }

    /// The UDP socket `name`: inherited, or bound to `addr`. Both generations receive on it
    /// until the old one exits; stop receiving in the old one on
    /// [`stopped_accepting`](Self::stopped_accepting).
    pub fn udp_socket(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> io::Result<tokio::net::UdpSocket> {
        let std = self.inner.udp_socket(name, addr)?;
        tokio::net::UdpSocket::from_std(std)
    }

    /// Tracks a connection accepted elsewhere, for the drain.
    pub fn track<S: std::os::fd::AsRawFd>(&self, stream: S) -> Tracked<S> {
        let guard = self.inner.track(&stream);
        Tracked::new(stream, guard)
    }

    /// The application serves: the parent (if any) stops accepting and drains.
    pub fn ready(&self) {
        self.inner.ready();
    }

    /// Asks for a restart, a graceful stop or a hammer, as a signal would.
    pub fn request(&self, request: Request) {
        self.inner.request(request);
    }

    /// Resolves once listeners must stop accepting.
    pub async fn stopped_accepting(&self) {
        self.inner.stopped_accepting().await;
    }

    /// Runs until the lifecycle ends (after a handover or a stop, once drained or at the
    /// deadline); exit the process with the returned [`Exit::code`].
    pub async fn run(&self) -> Exit {
        self.inner.wait().await
    }

    /// Whether this process was started by a previous generation.
    pub fn origin(&self) -> Origin {
        self.inner.origin()
    }

    /// The connections alive.
    pub fn tracker(&self) -> &Tracker {
        self.inner.tracker()
    }

    /// The runtime-neutral handle underneath.
    pub fn inner(&self) -> &endless_unix::Endless {
        &self.inner
    }
}

/// A TCP listener whose connections are tracked, and that stops accepting when the
/// lifecycle says so.
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    endless: endless_unix::Endless,
}

impl TcpListener {
    /// The next connection, or `Ok(None)` once this process stops accepting (the socket
    /// stays open for the next generation).
    pub async fn accept(&self) -> io::Result<Option<(Tracked<tokio::net::TcpStream>, SocketAddr)>> {
        accept(&self.endless, self.inner.accept()).await
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The tokio listener.
    pub fn get_ref(&self) -> &tokio::net::TcpListener {
        &self.inner
    }

    /// The tracker of the connections this listener accepts.
    pub fn tracker(&self) -> &Tracker {
        self.endless.tracker()
    }
}

/// A Unix stream listener whose connections are tracked, and that stops accepting when the
/// lifecycle says so.
#[derive(Debug)]
pub struct UnixListener {
    inner: tokio::net::UnixListener,
    endless: endless_unix::Endless,
}

impl UnixListener {
    /// The next connection, or `Ok(None)` once this process stops accepting.
    pub async fn accept(
        &self,
    ) -> io::Result<
        Option<(
            Tracked<tokio::net::UnixStream>,
            tokio::net::unix::SocketAddr,
        )>,
    > {
        accept(&self.endless, self.inner.accept()).await
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<tokio::net::unix::SocketAddr> {
        self.inner.local_addr()
    }

    /// The tokio listener.
    pub fn get_ref(&self) -> &tokio::net::UnixListener {
        &self.inner
    }

    /// The tracker of the connections this listener accepts.
    pub fn tracker(&self) -> &Tracker {
        self.endless.tracker()
    }
}

async fn accept<S: std::os::fd::AsRawFd, A>(
    endless: &endless_unix::Endless,
    accept: impl Future<Output = io::Result<(S, A)>>,
) -> io::Result<Option<(Tracked<S>, A)>> {
    // Held while accepting: the drain cannot complete between the kernel handing over a
    // connection and that connection being tracked.
    let _accepting = endless.tracker().track(None);
    if !endless.is_accepting() {
        return Ok(None);
    }
    tokio::select! {
        // Once stopped, leave what is queued in the kernel to the new generation.
        biased;
        () = endless.stopped_accepting() => Ok(None),
        accepted = accept => {
            let (stream, peer) = accepted?;
            let guard = endless.track(&stream);
            Ok(Some((Tracked::new(stream, guard), peer)))
        }
    }
}
