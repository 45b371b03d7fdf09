//! The [`Server`]: its options, the listeners it accepts on ([`Accept`]), the accept loop,
//! and what each accepted connection goes through (TLS handshake, HTTP/2 detection) before
//! it is served through the drain ([`drain`](crate::drain)).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use endless_unix::Tracker;
use endless_unix::adapter::{Endless, Stream, TcpListener, UnixListener};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::drain::{Closers, Closing};
use crate::peer::{ConnectionInfo, PeerAddr};
use crate::rt::{Exec, HttpRuntime, Spawner};
use crate::service::{BoxError, Cloned, HttpService, MakeHttpService, MakeWith, ResponseBody};
use crate::takeover::{self, IntoStream};

/// How long a draining HTTP/1.1 connection may stay idle before it is closed, unless
/// configured: long enough for a request already on its way to arrive and be answered
/// (with `Connection: close`).
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(2);

/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener that [`Server::serve`] can accept on: endless' listeners on every runtime
/// (`endless_tokio::TcpListener`, `endless_smol::UnixListener`, …), or a wrapper of one.
pub trait Accept: Send + Sync + 'static {
    /// The runtime it accepts on, which serves its connections.
    type Runtime: HttpRuntime;
    /// The tracked stream of a connection, seen through tokio's I/O traits, as
    /// [`Server::hand_over_idle`] hands it over.
    type Tracked: IntoStream<Self::Runtime> + AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection, tracked for the drain, and its peer; or `None` once the
    /// process will never accept again (the contract of
    /// [`TcpListener::accept`](endless_unix::adapter::TcpListener::accept): it waits while
    /// the new generation serves, and accepts again after a fallback).
    fn accept(&self) -> impl Future<Output = io::Result<Option<(Self::Tracked, PeerAddr)>>> + Send;

    /// The tracker of the accepted connections.
    fn tracker(&self) -> &Tracker;

    /// The span the server logs in: endless' listeners give endless' own
    /// ([`Endless::span`](endless_unix::adapter::Endless::span), `endless{pid=…}`).
    fn span(&self) -> tracing::Span {
        tracing::Span::none()
    }
}

impl<N: HttpRuntime> Accept for TcpListener<N> {
    type Runtime = N;
    type Tracked = N::TcpIo;

    async fn accept(&self) -> io::Result<Option<(Self::Tracked, PeerAddr)>> {
        let accepted = Self::accept(self).await?;
        Ok(accepted.map(|(stream, peer)| {
            N::set_nodelay(stream.get_ref());
            (N::tcp_io(stream), PeerAddr::Tcp(peer))
        }))
    }

    fn tracker(&self) -> &Tracker {
        Self::tracker(self)
    }

    fn span(&self) -> tracing::Span {
        Self::span(self).clone()
    }
}

impl<N: HttpRuntime> Accept for UnixListener<N> {
    type Runtime = N;
    type Tracked = N::UnixIo;

    async fn accept(&self) -> io::Result<Option<(Self::Tracked, PeerAddr)>> {
        let accepted = Self::accept(self).await?;
        Ok(accepted.map(|(stream, peer)| (N::unix_io(stream), N::unix_peer(peer))))
    }

    fn tracker(&self) -> &Tracker {
        Self::tracker(self)
    }

    fn span(&self) -> tracing::Span {
        Self::span(self).clone()
    }
}

/// The fields of [`Server`], whichever its default runtime.
macro_rules! server_struct {
    ($($default:tt)*) => {
        /// Serves HTTP on endless listeners, on the runtime `N` of the listeners it is given
        /// (see [`rt`](crate::rt)): `Server::new().serve(listener, service)` on every
        /// runtime.
        pub struct Server<N: HttpRuntime $($default)*> {
            pub(crate) builder: auto::Builder<Exec<N>>,
            pub(crate) idle_grace: Duration,
            #[cfg(feature = "tls")]
            tls: Option<tokio_rustls::TlsAcceptor>,
            pub(crate) takeover: Option<Arc<takeover::Takeover<N>>>,
            pub(crate) spawner: Option<Spawner>,
            /// The span of the process's lines (endless' `endless{pid=…}`), set by `serve`
            /// from the listener. Entered only to log: entering it at every poll would cost
            /// every request.
            pub(crate) span: tracing::Span,
        }
    };
}

#[cfg(feature = "runtime-tokio")]
server_struct!(= endless_tokio::Tokio);
#[cfg(not(feature = "runtime-tokio"))]
server_struct!();

impl<N: HttpRuntime> Clone for Server<N> {
    fn clone(&self) -> Self {
        Self {
            builder: self.builder.clone(),
            idle_grace: self.idle_grace,
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
            takeover: self.takeover.clone(),
            spawner: self.spawner.clone(),
            span: self.span.clone(),
        }
    }
}

impl<N: HttpRuntime> std::fmt::Debug for Server<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Server");
        d.field("idle_grace", &self.idle_grace);
        d.field("takeover", &self.takeover.as_ref().map(|t| &t.name));
        d.field("spawner", &self.spawner.is_some());
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.is_some());
        d.finish_non_exhaustive()
    }
}

impl<N: HttpRuntime> Default for Server<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: HttpRuntime> Server<N> {
    /// HTTP/1.1 and HTTP/2 (detected per connection), with upgrades, hyper's defaults
    /// otherwise. The runtime is the listeners' (it is inferred from the first
    /// [`serve`](Self::serve)).
    pub fn new() -> Self {
        Self::with_spawner(None)
    }

    fn with_spawner(spawner: Option<Spawner>) -> Self {
        let mut builder = auto::Builder::new(Exec::new(spawner.clone()));
        builder.http1().timer(N::timer());
        builder.http2().timer(N::timer());
        Self {
            builder,
            idle_grace: DEFAULT_IDLE_GRACE,
            #[cfg(feature = "tls")]
            tls: None,
            takeover: None,
            spawner,
            span: tracing::Span::none(),
        }
    }

    /// Runs the server's tasks (the accept loop, each connection, HTTP/2 streams) with
    /// `spawner` instead of the runtime's own spawn (`tokio::spawn`, `smol::spawn`): for an
    /// application whose tasks run on an executor of its own, such as async-std's
    /// (`|task| { async_std::task::spawn(task); }`). Call it first: it starts from a new
    /// protocol builder (the options of [`builder_mut`](Self::builder_mut) set before are
    /// lost).
    #[must_use]
    pub fn spawner(self, spawner: impl Fn(crate::rt::Task) + Send + Sync + 'static) -> Self {
        Self {
            idle_grace: self.idle_grace,
            #[cfg(feature = "tls")]
            tls: self.tls,
            takeover: self.takeover,
            ..Self::with_spawner(Some(Arc::new(spawner)))
        }
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        crate::rt::spawn::<N>(self.spawner.as_ref(), task);
    }

    /// How long a draining HTTP/1.1 connection may stay idle before it is closed
    /// (default [`DEFAULT_IDLE_GRACE`]).
    #[must_use]
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// hyper-util's builder, for protocol options (`http1()`, `http2()`, `http1_only()`…).
    pub fn builder_mut(&mut self) -> &mut auto::Builder<Exec<N>> {
        &mut self.builder
    }

    /// Serve TLS with this acceptor (see
    /// [`tls::acceptor_from_pem_files`](crate::tls::acceptor_from_pem_files); offer ALPN
    /// `h2` and `http/1.1` for HTTP/2).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[must_use]
    pub fn tls(mut self, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Hands idle HTTP/1.1 keep-alive connections to the new generation at a restart
    /// instead of closing them: a client that sends on one right after the restart is
    /// answered by the new generation, on the same connection. `name` is the receiver both
    /// generations register (call this before
    /// [`ready`](endless_unix::adapter::Endless::ready), in every generation); the
    /// connections received are served by the service of the first [`serve`](Self::serve)
    /// call.
    ///
    /// A connection moves at a request boundary, with the bytes hyper read and did not parse
    /// yet. TLS and HTTP/2 connections are drained as usual, and so is a connection whose
    /// last request had a body (its rest must not pass for the next request), and every
    /// connection when the new generation takes none. These HTTP/1 connections are served
    /// by hyper's HTTP/1 connection with upgrades and its default options (plus the timer):
    /// the options of [`builder_mut`](Self::builder_mut) do not apply to them.
    ///
    /// A connection received idle (nothing read past its last request, as most are) costs
    /// the new generation its socket and a small task until its client sends again: the
    /// service and hyper's connection are made then. It is closed, as hyper would close it,
    /// once idle past hyper's header read timeout (30 s), and handed on at the next restart
    /// as it came.
    ///
    /// # Errors
    ///
    /// When the receiver cannot be registered (a second one of this name, or after ready).
    pub fn hand_over_idle(mut self, endless: &Endless<N>, name: &str) -> io::Result<Self> {
        let connections = endless.receive_connections(name)?;
        self.takeover = Some(Arc::new(takeover::Takeover {
            name: name.to_owned(),
            endless: endless.clone(),
            connections: std::sync::Mutex::new(Some(connections)),
        }));
        Ok(self)
    }

    /// Accepts on `listener` until the process will never accept again (it waits while the
    /// new generation serves, and accepts again if this process takes the service back),
    /// serving each connection with a clone of `service` on its own task; returns a handle
    /// on the accept loop. On tokio, call it within the runtime.
    ///
    /// `service` is a tower service (an axum `Router`), or a hyper service wrapped in
    /// [`HyperService`](crate::HyperService): see [`HttpService`]. For the peer's address,
    /// see [`serve_with_connect_info`](Self::serve_with_connect_info).
    pub fn serve<L, S, B>(&self, listener: L, service: S) -> Serving
    where
        L: Accept<Runtime = N>,
        S: HttpService<B>,
        B: ResponseBody,
    {
        self.serve_made(listener, Cloned(service))
    }

    /// Like [`serve`](Self::serve), but each connection is served by the service that
    /// `make_service` returns for it, called once per connection with its
    /// [`ConnectionInfo`] (as `axum::serve` and tower's `MakeService` do). An error
    /// from `make_service` closes the connection.
    ///
    /// This is how a service learns its peer's address ([`ConnectionInfo::peer_addr`]): a
    /// hyper service through [`make_service_fn`](crate::make_service_fn); axum's
    /// `ConnectInfo` extractor, with the `axum` feature, by serving
    /// `router.into_make_service_with_connect_info::<SocketAddr>()` (or `::<PeerAddr>()`,
    /// which also tells Unix peers apart).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "axum")]
    /// # async fn doc(endless: endless_tokio::Endless) -> std::io::Result<()> {
    /// use std::net::SocketAddr;
    /// use axum::extract::ConnectInfo;
    ///
    /// async fn hello(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    ///     format!("hello, {peer}\n")
    /// }
    ///
    /// let app = axum::Router::new().route("/", axum::routing::get(hello));
    /// let listener = endless.tcp_listener("http", "0.0.0.0:8080")?;
    /// endless_hyper::Server::new()
    ///     .serve_with_connect_info(listener, app.into_make_service_with_connect_info::<SocketAddr>());
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve_with_connect_info<L, M, S, B>(&self, listener: L, make_service: M) -> Serving
    where
        L: Accept<Runtime = N>,
        M: tower_service::Service<
                ConnectionInfo,
                Response = S,
                Error: Into<BoxError>,
                Future: Send,
            > + Clone
            + Send
            + 'static,
        S: HttpService<B>,
        B: ResponseBody,
    {
        self.serve_made(listener, MakeWith(make_service))
    }

    fn serve_made<L, M, B>(&self, listener: L, make: M) -> Serving
    where
        L: Accept<Runtime = N>,
        M: MakeHttpService<B>,
        B: ResponseBody,
    {
        let span = listener.span();
        // Shared by every connection's task: one pointer each, not a copy of the builder's
        // settings (a connection's future holds it, and so does the task of each one
        // taken over while it waits idle).
        let server = Arc::new(Self {
            span: span.clone(),
            ..self.clone()
        });
        let closers = Closers::watch(listener.tracker().clone(), |task| self.spawn(task));
        if let Some(takeover) = &self.takeover {
            let connections = takeover
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(connections) = connections {
                let (server, make, closers) = (Arc::clone(&server), make.clone(), closers.clone());
                let receiving = async move {
                    let mut taken = 0u64;
                    while let Some(received) = connections.next().await {
                        taken += 1;
                        let prefix = bytes::Bytes::from(received.unconsumed);
                        let (conn, make) = (Arc::clone(&server), make.clone());
                        let closing = closers.register();
                        // Boxed, as every connection's task (see the accept loop).
                        server.spawn(Box::pin(async move {
                            conn.taken_over(received.stream, prefix, make, closing)
                                .await;
                        }));
                    }
                    if taken > 0 {
                        tracing::info!(taken, "idle connections taken over");
                    }
                };
                self.spawn(receiving.instrument(span.clone()));
            }
        }
        let (done, stopped) = async_channel::bounded::<()>(1);
        let accepting = async move {
            let _done = done;
            loop {
                match listener.accept().await {
                    Ok(Some((io, peer))) => {
                        let make = make.clone();
                        let closing = closers.register();
                        let conn = Arc::clone(&server);
                        // Boxed: a connection's future is large (hyper's connection is
                        // in it: 7 KiB), and the runtime copies a task's future by value
                        // when it spawns it, and again at each change of the task's
                        // stage (its end, its drop). A task that holds only the box
                        // copies a pointer (bench/takeover-cost.sh counts the difference).
                        server.spawn(Box::pin(async move {
                            conn.connection(io, peer, make, closing).await;
                        }));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Too many open files, a connection reset while queued: the listener
                        // is still good; back off a little and go on.
                        tracing::warn!(error = %e, "accept failed");
                        N::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tracing::info!("stopped accepting");
        };
        // The accept loop runs in the span (a poll per connection accepted); a connection's
        // task does not, and enters it only to log (`Server::span`).
        self.spawn(accepting.instrument(span));
        Serving { stopped }
    }

    /// Serves a connection received from the previous generation (HTTP/1, at a request
    /// boundary).
    async fn taken_over<M, B>(
        &self,
        stream: Stream<N>,
        prefix: bytes::Bytes,
        make: M,
        closing: Closing,
    ) where
        M: MakeHttpService<B>,
        B: ResponseBody,
    {
        match stream {
            Stream::Tcp(io) => {
                let peer = |io: &N::TcpIo| N::tcp_peer(io).map(PeerAddr::Tcp);
                self.taken_over_io(N::tcp_io(io), peer, prefix, make, closing)
                    .await;
            }
            Stream::Unix(io) => {
                self.taken_over_io(N::unix_io(io), N::unix_peer_of, prefix, make, closing)
                    .await;
            }
        }
    }

    /// Serves `io`, taken over with `prefix`. An idle one (nothing read yet, as most are)
    /// costs its socket and a small task until its client sends again: its peer's address
    /// (`peer_of` reads it from the socket), its service and hyper's connection (buffers,
    /// state) are made for the next request, which is what lets a new generation take
    /// thousands of idle connections quickly, and hold them in little memory. It waits as
    /// hyper's connection would: until the drain starts (then the connection is moved
    /// again, or drained), the client closes, or hyper's header read timeout passes.
    async fn taken_over_io<T, M, B>(
        &self,
        mut io: T,
        peer_of: impl FnOnce(&T) -> io::Result<PeerAddr>,
        prefix: bytes::Bytes,
        make: M,
        mut closing: Closing,
    ) where
        T: IntoStream<N> + AsyncRead + AsyncWrite + Unpin + Send + 'static,
        M: MakeHttpService<B>,
        B: ResponseBody,
    {
        let prefix = if prefix.is_empty() {
            let mut first = [0u8; 1];
            // Biased: a drain that has started wins over a byte that came meanwhile, which
            // stays unread in the socket (the read is cancel-safe).
            tokio::select! {
                biased;
                () = closing.started() => prefix,
                read = tokio::io::AsyncReadExt::read(&mut io, &mut first) => match read {
                    Ok(0) => return,
                    Ok(n) => bytes::Bytes::copy_from_slice(&first[..n]),
                    Err(e) => {
                        let _in = self.span.enter();
                        return tracing::debug!(error = %e, "connection taken over ended");
                    }
                },
                () = N::sleep(takeover::HEADER_READ_TIMEOUT) => {
                    let _in = self.span.enter();
                    return tracing::debug!("connection taken over stayed idle past the header read timeout");
                }
            }
        } else {
            prefix
        };
        // Only a connection whose peer is gone has no peer address: nobody to answer.
        let peer = match peer_of(&io) {
            Ok(peer) => peer,
            Err(e) => {
                let _in = self.span.enter();
                return tracing::debug!(error = %e, "connection taken over ended");
            }
        };
        let Some(service) = make_service(make, &peer, &self.span).await else {
            return;
        };
        // Boxed: the task of an idle connection stays small.
        Box::pin(self.h1_takeover(takeover::Prefixed::new(prefix, io), service, closing)).await;
    }

    async fn connection<T, M, B>(&self, io: T, peer: PeerAddr, make: M, closing: Closing)
    where
        T: IntoStream<N> + AsyncRead + AsyncWrite + Unpin + Send + 'static,
        M: MakeHttpService<B>,
        B: ResponseBody,
    {
        let Some(service) = make_service(make, &peer, &self.span).await else {
            return;
        };
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.tls {
            let handshake = tokio::select! {
                biased;
                handshake = acceptor.accept(io) => Some(handshake),
                () = N::sleep(TLS_HANDSHAKE_TIMEOUT) => None,
            };
            match handshake {
                Some(Ok(tls)) => self.http(tls, service, closing).await,
                Some(Err(e)) => self
                    .span
                    .in_scope(|| tracing::debug!(error = %e, "TLS handshake failed")),
                None => self
                    .span
                    .in_scope(|| tracing::debug!("TLS handshake timed out")),
            }
            return;
        }
        if self.takeover.is_some() {
            let mut io = io;
            let tracker = io.tracker();
            let detected = takeover::detect_h2(&mut io, tracker.closing()).await;
            let (h2, prefix) = match detected {
                Ok(detected) => detected,
                Err(e) => {
                    let _in = self.span.enter();
                    return tracing::debug!(error = %e, "connection failed");
                }
            };
            let io = takeover::Prefixed::new(prefix, io);
            if h2 {
                return self.http(io, service, closing).await;
            }
            return self.h1_takeover(io, service, closing).await;
        }
        self.http(io, service, closing).await;
    }
}

/// The service of the connection of `peer`, or `None` (logged) if `make` refuses it.
async fn make_service<M, B>(make: M, peer: &PeerAddr, span: &tracing::Span) -> Option<M::Service>
where
    M: MakeHttpService<B>,
    B: ResponseBody,
{
    match make.make(ConnectionInfo::new(peer.clone())).await {
        Ok(service) => Some(service),
        Err(e) => {
            let _in = span.enter();
            tracing::debug!(error = %e, ?peer, "connection refused by the make service");
            None
        }
    }
}

/// The accept loop of a [`Server::serve`] call, serving in the background. Dropping it
/// changes nothing (the server serves on); [`stopped`](Self::stopped) waits for the end.
#[derive(Debug)]
pub struct Serving {
    stopped: async_channel::Receiver<()>,
}

impl Serving {
    /// Resolves once the accept loop has ended: the process will never accept again (it
    /// drains, or stops). Connections may still be served, to the end of the drain.
    pub async fn stopped(self) {
        let _ = self.stopped.recv().await;
    }
}
