//! Serve [hyper](https://hyper.rs) 1.x — and so axum and any tower service — with
//! zero-downtime restarts, over HTTP/1.1 and HTTP/2, cleartext or TLS, on TCP or Unix
//! sockets.
//!
//! Built on [endless-tokio](endless_tokio): on `SIGHUP` a new generation of the server
//! starts with the listening sockets; once it is ready, this one stops accepting and
//! drains. The drain is where every other library we know of fails requests: it closes
//! idle keep-alive connections while the client's next request is already on its way.
//! Here a draining connection is never closed under a client without warning:
//!
//! - **HTTP/1.1**: requests in flight complete; the next response on each connection
//!   carries `Connection: close`, so the client reconnects (to the new generation, which
//!   accepts on the same socket); a connection that stays idle is closed only after a grace
//!   period ([`Server::idle_grace`]).
//! - **HTTP/2**: a graceful `GOAWAY` (hyper's two-step one); streams in flight complete. The
//!   client's acknowledgement of the shutdown PING is held back for a moment, so that
//!   streams it opened just before it saw the first `GOAWAY` are served, not refused (an h2
//!   race that otherwise fails requests at every restart under load).
//! - **Upgraded connections** (websockets through hyper's upgrade) stay tracked: they
//!   finish, or are closed at the drain deadline.
//!
//! hyper-util's `GracefulShutdown` is not used for HTTP/1: it closes idle connections at
//! once, which is the race above. The same hyper call it makes
//! ([`graceful_shutdown`](hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown))
//! is made after the grace period instead, and at once for HTTP/2.
//!
//! # Example
//!
//! (This one stops itself after one request; a real server runs until a signal stops it.)
//!
//! ```
//! use std::convert::Infallible;
//! use endless_hyper::{HyperService, Server};
//! use endless_tokio::Endless;
//! use hyper::{Request, Response, body::Incoming};
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let endless = Endless::start()?;
//!     let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
//! #   let addr = listener.local_addr()?;
//!     let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(format!("pid={}\n", std::process::id())))
//!     });
//!     Server::new().serve(listener, HyperService(service));
//!     endless.ready();
//! #   let mut client = tokio::net::TcpStream::connect(addr).await?;
//! #   client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
//! #   let mut response = String::new();
//! #   client.read_to_string(&mut response).await?;
//! #   assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
//! #   endless.request(endless_tokio::Request::Stop);
//!     let exit = endless.run().await;
//! #   assert_eq!(exit.code, 0);
//! #   return Ok(());
//!     std::process::exit(exit.code);
//! }
//! ```
//!
//! With axum, pass the `Router` itself: `Server::new().serve(listener, router)`.
#![warn(missing_docs)]

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use endless_tokio::{Tracked, Tracker};
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

mod h2_shutdown;
mod takeover;
#[cfg(feature = "tls")]
pub mod tls;

pub use takeover::IntoStream;

/// A hyper service (such as `hyper::service::service_fn(…)`), for [`Server::serve`]: each
/// connection calls a clone of it directly, without going through tower.
#[derive(Debug, Clone, Copy)]
pub struct HyperService<S>(pub S);

/// An error that hyper can report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Server::serve`] serves: a cloneable tower service of HTTP requests (an axum
/// `Router`), or a hyper service wrapped in [`HyperService`]. Implemented for every such
/// service.
///
/// A tower service is called as tower requires, through `poll_ready` on a clone of it per
/// request (hyper-util's `TowerToHyperService`); a [`HyperService`] is called as it is.
pub trait HttpService<B>: Clone + Send + 'static {
    /// The hyper service that serves one connection.
    type Connection: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static;

    /// The service of one connection.
    fn into_connection(self) -> Self::Connection;
}

impl<S, B> HttpService<B> for S
where
    S: tower_service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static,
{
    type Connection = TowerToHyperService<S>;

    fn into_connection(self) -> Self::Connection {
        TowerToHyperService::new(self)
    }
}

impl<S, B> HttpService<B> for HyperService<S>
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static,
{
    type Connection = S;

    fn into_connection(self) -> S {
        self.0
    }
}

/// A response body [`Server::serve`] can send; implemented for every such body.
pub trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

/// How long a draining HTTP/1.1 connection may stay idle before it is closed, unless
/// configured: long enough for a request already on its way to arrive and be answered
/// (with `Connection: close`).
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(2);

/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener that [`Server::serve`] can accept on: the endless-tokio listeners.
pub trait Accept: Send + Sync + 'static {
    /// The stream of a connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The tracked stream, as [`Server::hand_over_idle`] hands it over.
    type Tracked: IntoStream + AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection, tracked for the drain, or `None` once the process stops
    /// accepting.
    fn accept(&self) -> impl Future<Output = io::Result<Option<Self::Tracked>>> + Send;

    /// The tracker of the accepted connections.
    fn tracker(&self) -> &Tracker;
}

impl Accept for endless_tokio::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Tracked = Tracked<tokio::net::TcpStream>;

    async fn accept(&self) -> io::Result<Option<Self::Tracked>> {
        let accepted = Self::accept(self).await?;
        Ok(accepted.map(|(stream, _)| {
            // Small responses go out at once, as every HTTP server does it.
            let _ = stream.set_nodelay(true);
            stream
        }))
    }

    fn tracker(&self) -> &Tracker {
        Self::tracker(self)
    }
}

impl Accept for endless_tokio::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Tracked = Tracked<tokio::net::UnixStream>;

    async fn accept(&self) -> io::Result<Option<Self::Tracked>> {
        let accepted = Self::accept(self).await?;
        Ok(accepted.map(|(stream, _)| stream))
    }

    fn tracker(&self) -> &Tracker {
        Self::tracker(self)
    }
}

/// Serves HTTP on endless listeners.
#[derive(Clone)]
pub struct Server {
    builder: auto::Builder<TokioExecutor>,
    idle_grace: Duration,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    takeover: Option<Arc<takeover::Takeover>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Server");
        d.field("idle_grace", &self.idle_grace);
        d.field("takeover", &self.takeover.as_ref().map(|t| &t.name));
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.is_some());
        d.finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// HTTP/1.1 and HTTP/2 (detected per connection), with upgrades, hyper's defaults
    /// otherwise.
    pub fn new() -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        Self {
            builder,
            idle_grace: DEFAULT_IDLE_GRACE,
            #[cfg(feature = "tls")]
            tls: None,
            takeover: None,
        }
    }

    /// How long a draining HTTP/1.1 connection may stay idle before it is closed
    /// (default [`DEFAULT_IDLE_GRACE`]).
    #[must_use]
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// hyper-util's builder, for protocol options (`http1()`, `http2()`, `http1_only()`…).
    pub fn builder_mut(&mut self) -> &mut auto::Builder<TokioExecutor> {
        &mut self.builder
    }

    /// Serve TLS with this acceptor (see [`tls::acceptor_from_pem_files`]; offer ALPN `h2`
    /// and `http/1.1` for HTTP/2).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Hands idle HTTP/1.1 keep-alive connections to the new generation at a restart
    /// instead of closing them: a client that sends on one right after the restart is
    /// answered by the new generation, on the same connection. `name` is the receiver both
    /// generations register (call this before [`ready`](endless_tokio::Endless::ready), in
    /// every generation); the connections received are served by the service of the first
    /// [`serve`](Self::serve) call.
    ///
    /// A connection moves at a request boundary, with the bytes hyper read and did not parse
    /// yet. TLS and HTTP/2 connections are drained as usual, and so is a connection whose
    /// last request had a body (its rest must not pass for the next request), and every
    /// connection when the new generation takes none. These HTTP/1 connections are served
    /// by hyper's HTTP/1 connection with upgrades and its default options (plus the timer):
    /// the options of [`builder_mut`](Self::builder_mut) do not apply to them.
    ///
    /// # Errors
    ///
    /// When the receiver cannot be registered (a second one of this name, or after ready).
    pub fn hand_over_idle(
        mut self,
        endless: &endless_tokio::Endless,
        name: &str,
    ) -> io::Result<Self> {
        let connections = endless.receive_connections(name)?;
        self.takeover = Some(Arc::new(takeover::Takeover {
            name: name.to_owned(),
            endless: endless.clone(),
            connections: std::sync::Mutex::new(Some(connections)),
        }));
        Ok(self)
    }

    /// Accepts on `listener` until the process stops accepting, serving each connection
    /// with a clone of `service` on its own task; returns the accept loop's task. Call it
    /// within the tokio runtime.
    ///
    /// `service` is a tower service (an axum `Router`), or a hyper service wrapped in
    /// [`HyperService`]: see [`HttpService`].
    pub fn serve<L, S, B>(&self, listener: L, service: S) -> tokio::task::JoinHandle<()>
    where
        L: Accept,
        S: HttpService<B>,
        B: ResponseBody,
    {
        let server = self.clone();
        let closers = Closers::watch(listener.tracker().clone());
        if let Some(takeover) = &self.takeover {
            let connections = takeover
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(connections) = connections {
                let (server, service, closers) = (self.clone(), service.clone(), closers.clone());
                tokio::spawn(async move {
                    let mut taken = 0u64;
                    while let Some(received) = connections.next().await {
                        taken += 1;
                        let prefix = bytes::Bytes::from(received.unconsumed);
                        let (server, service) = (server.clone(), service.clone());
                        let closing = closers.register();
                        tokio::spawn(async move {
                            match received.stream {
                                endless_tokio::Stream::Tcp(io) => {
                                    server
                                        .h1_takeover(
                                            takeover::Prefixed::new(prefix, io),
                                            service,
                                            closing,
                                        )
                                        .await;
                                }
                                endless_tokio::Stream::Unix(io) => {
                                    server
                                        .h1_takeover(
                                            takeover::Prefixed::new(prefix, io),
                                            service,
                                            closing,
                                        )
                                        .await;
                                }
                            }
                        });
                    }
                    if taken > 0 {
                        tracing::info!(taken, "idle connections taken over");
                    }
                });
            }
        }
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(Some(io)) => {
                        let server = server.clone();
                        let service = service.clone();
                        let closing = closers.register();
                        tokio::spawn(async move { server.connection(io, service, closing).await });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Too many open files, a connection reset while queued: the listener
                        // is still good; back off a little and go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tracing::info!(pid = std::process::id(), "stopped accepting");
        })
    }

    async fn connection<T, S, B>(self, io: T, service: S, closing: Closing)
    where
        T: IntoStream + AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<B>,
        B: ResponseBody,
    {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.tls {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io));
            match handshake.await {
                Ok(Ok(tls)) => self.http(tls, service, closing).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
            return;
        }
        if self.takeover.is_some() {
            let mut io = io;
            let tracker = io.tracker();
            let detected = takeover::detect_h2(&mut io, tracker.closing()).await;
            let (h2, prefix) = match detected {
                Ok(detected) => detected,
                Err(e) => return tracing::debug!(error = %e, "connection failed"),
            };
            let io = takeover::Prefixed::new(prefix, io);
            if h2 {
                return self.http(io, service, closing).await;
            }
            return self.h1_takeover(io, service, closing).await;
        }
        self.http(io, service, closing).await;
    }

    /// Serves HTTP/1 on `io` and, once the process drains, hands it to the new generation
    /// at a request boundary (see [`Server::hand_over_idle`]).
    async fn h1_takeover<T, S, B>(
        &self,
        io: takeover::Prefixed<T>,
        service: S,
        mut closing: Closing,
    ) where
        T: IntoStream + AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<B>,
        B: ResponseBody,
    {
        let Some(takeover) = self.takeover.clone() else {
            return;
        };
        let idle = Arc::new(takeover::Idle::default());
        let counted = takeover::Counted {
            inner: service.clone().into_connection(),
            idle: Arc::clone(&idle),
        };
        let io = TokioIo::new(takeover::Watched::new(io, Arc::clone(&idle)));
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.timer(TokioTimer::new());
        let mut conn = http1.serve_connection(io, counted).with_upgrades();
        if let Some(result) = (UntilClosing {
            conn: Pin::new(&mut conn),
            closing: &mut closing,
        })
        .await
        {
            return log_end(result.map_err(Into::into));
        }
        if takeover.endless.can_hand_over() {
            // Serve on until the connection is at a request boundary.
            let boundary = std::future::poll_fn(|cx| match Pin::new(&mut conn).poll(cx) {
                Poll::Ready(result) => Poll::Ready(Err(result)),
                Poll::Pending => idle
                    .boundary()
                    .map_or(Poll::Pending, |movable| Poll::Ready(Ok(movable))),
            })
            .await;
            match boundary {
                Err(result) => return log_end(result.map_err(Into::into)),
                Ok(true) => {
                    // Upgraded meanwhile: hyper serves it no more.
                    let Some(parts) = conn.into_parts() else {
                        return;
                    };
                    let (left, stream) = parts.io.into_inner().into_inner().into_parts();
                    let mut unconsumed = parts.read_buf.to_vec();
                    unconsumed.extend_from_slice(&left);
                    return self
                        .hand_over_h1(&takeover, stream, unconsumed, service)
                        .await;
                }
                // Its last request had a body: drained here.
                Ok(false) => {}
            }
        }
        // Nobody takes it (or it cannot move): drained as usual.
        idle.close_responses.store(true, Ordering::SeqCst);
        tokio::select! {
            biased;
            result = &mut conn => return log_end(result.map_err(Into::into)),
            () = tokio::time::sleep(self.idle_grace) => {}
        }
        Pin::new(&mut conn).graceful_shutdown();
        log_end(conn.await.map_err(Into::into));
    }

    /// Hands a connection taken apart at a request boundary, with the bytes read and not
    /// parsed, to the new generation; serves it on here, drained, if the new generation
    /// does not take it.
    async fn hand_over_h1<T, S, B>(
        &self,
        takeover: &takeover::Takeover,
        stream: T,
        unconsumed: Vec<u8>,
        service: S,
    ) where
        T: IntoStream,
        S: HttpService<B>,
        B: ResponseBody,
    {
        let handed = takeover
            .endless
            .hand_over(stream.into_stream(), &takeover.name, &[], &unconsumed)
            .await;
        let back = match handed {
            Ok(()) => return,
            Err(e) => {
                tracing::info!(error = %e, "idle connection drained here");
                match e.connection {
                    Some(back) => back,
                    None => return,
                }
            }
        };
        // Drained as usual, from where it was.
        let prefix = bytes::Bytes::from(unconsumed);
        match back {
            endless_tokio::Stream::Tcp(io) => {
                let io = takeover::Prefixed::new(prefix, io);
                self.http(io, service, Closing::fired()).await;
            }
            endless_tokio::Stream::Unix(io) => {
                let io = takeover::Prefixed::new(prefix, io);
                self.http(io, service, Closing::fired()).await;
            }
        }
    }

    async fn http<I, S, B>(&self, io: I, service: S, mut closing: Closing)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<B>,
        B: ResponseBody,
    {
        let state = Arc::new(ConnState::default());
        let service = DrainAware {
            inner: service.into_connection(),
            state: Arc::clone(&state),
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(h2_shutdown::PongDelay::new(io)), service);
        tokio::pin!(conn);

        // Polled at every wake of the connection: a `select!` there (and the channel it
        // would wait on) costs more than the check for the drain, which is one atomic load.
        if let Some(result) = (UntilClosing {
            conn: conn.as_mut(),
            closing: &mut closing,
        })
        .await
        {
            return log_end(result);
        }
        if !state.h2.load(Ordering::Relaxed) {
            // HTTP/1: every response from now on says `Connection: close` (`Draining`). A
            // client whose next request is already on its way gets it answered; one that
            // stays idle is closed after the grace period.
            tokio::select! {
                biased;
                result = Draining(conn.as_mut()) => return log_end(result),
                () = tokio::time::sleep(self.idle_grace) => {}
            }
        }
        // HTTP/2: GOAWAY, streams in flight complete. HTTP/1: closes now if idle, else after
        // the response in flight (which hyper then marks `Connection: close` itself).
        conn.as_mut().graceful_shutdown();
        log_end(Draining(conn.as_mut()).await);
    }
}

thread_local! {
    /// Whether the HTTP/1 connection being polled on this thread drains, for the responses
    /// its service completes meanwhile ([`DrainAwareFuture`]): set around every poll of a
    /// connection served by [`Server::http`] ([`poll_draining`]).
    ///
    /// hyper's HTTP/1 dispatcher polls the service's future inside the connection's own
    /// poll, so the response learns of the drain from the poll that completes it, as tokio's
    /// cooperative budget reaches the resources a task polls; the alternative, a handle on
    /// the tracker in every request's future, costs a reference count up and down per
    /// request. (HTTP/2 streams run on tasks of their own, and are left alone.)
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// Polls `conn` with [`DRAINING`] set to `draining`.
#[inline(always)]
fn poll_draining<C: Future>(
    conn: Pin<&mut C>,
    cx: &mut Context<'_>,
    draining: bool,
) -> Poll<C::Output> {
    let outer = DRAINING.replace(draining);
    let poll = conn.poll(cx);
    DRAINING.set(outer);
    poll
}

/// Serves a connection until it ends (`Some` of its result) or the drain starts (`None`).
struct UntilClosing<'a, C> {
    conn: Pin<&'a mut C>,
    closing: &'a mut Closing,
}

impl<C: Future> Future for UntilClosing<'_, C> {
    type Output = Option<C::Output>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Looked at first: a response completed by this poll says `Connection: close` if
        // the drain has started by now.
        let closing = self.closing.poll_closing(cx).is_ready();
        if let Poll::Ready(result) = poll_draining(self.conn.as_mut(), cx, closing) {
            return Poll::Ready(Some(result));
        }
        if closing {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// Serves a connection of a draining process.
struct Draining<'a, C>(Pin<&'a mut C>);

impl<C: Future> Future for Draining<'_, C> {
    type Output = C::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_draining(self.0.as_mut(), cx, true)
    }
}

/// Tells each connection of one listener when the drain starts.
#[derive(Debug, Clone)]
struct Closers {
    shared: Arc<ClosersShared>,
}

#[derive(Debug, Default)]
struct ClosersShared {
    /// Set (under the lock of `wakers`) when the drain starts.
    closing: AtomicBool,
    next: AtomicU64,
    /// The connections waiting for the drain, by key.
    wakers: std::sync::Mutex<std::collections::HashMap<u64, Waker>>,
}

/// A connection's end of [`Closers`]: ready once the drain starts; unregisters on drop.
#[derive(Debug)]
struct Closing {
    shared: Arc<ClosersShared>,
    key: u64,
    /// The waker registered under `key`, if any.
    waker: Option<Waker>,
}

impl Closing {
    /// Ready once the drain has started. While it has not, costs an atomic load and a
    /// comparison of wakers (the lock is taken only when the task's waker changes: once).
    #[inline]
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        self.register(cx)
    }

    #[cold]
    #[inline(never)]
    fn register(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut wakers = lock(&self.shared.wakers);
        // Set under this lock before the wakers are taken: not missed.
        if self.shared.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        wakers.insert(self.key, waker.clone());
        self.waker = Some(waker);
        Poll::Pending
    }
}

impl Closing {
    /// One that has fired already.
    fn fired() -> Self {
        Self {
            shared: Arc::new(ClosersShared {
                closing: AtomicBool::new(true),
                ..ClosersShared::default()
            }),
            key: 0,
            waker: None,
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if self.waker.is_some() {
            lock(&self.shared.wakers).remove(&self.key);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Closers {
    /// Closers that fire when `tracker` starts closing.
    fn watch(tracker: Tracker) -> Self {
        let closers = Self {
            shared: Arc::default(),
        };
        let shared = Arc::clone(&closers.shared);
        tokio::spawn(async move {
            tracker.closing().await;
            let wakers = {
                let mut wakers = lock(&shared.wakers);
                shared.closing.store(true, Ordering::Release);
                std::mem::take(&mut *wakers)
            };
            for waker in wakers.into_values() {
                waker.wake();
            }
        });
        closers
    }

    fn register(&self) -> Closing {
        Closing {
            shared: Arc::clone(&self.shared),
            key: self.shared.next.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What the service learns about its connection.
#[derive(Debug, Default)]
struct ConnState {
    /// The connection speaks HTTP/2.
    h2: AtomicBool,
}

/// Adds `Connection: close` to HTTP/1 responses once the process drains (completed under
/// [`DRAINING`]).
#[derive(Debug, Clone)]
struct DrainAware<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B, ReqBody> hyper::service::Service<Request<ReqBody>> for DrainAware<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainAwareFuture<S::Future>;

    #[inline(always)]
    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        if !http1 && !self.state.h2.load(Ordering::Relaxed) {
            self.state.h2.store(true, Ordering::Relaxed);
        }
        // The inner future (large: it holds the request) is made last, so that nothing
        // is computed while it waits to be moved.
        DrainAwareFuture {
            http1,
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    struct DrainAwareFuture<F> {
        #[pin]
        inner: F,
        http1: bool,
    }
}

impl<F, B, E> Future for DrainAwareFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !(*this.http1 && DRAINING.get()) {
            // Returned as it comes, straight into hyper's place for it: a response is large
            // to move.
            return this.inner.poll(cx);
        }
        let mut poll = this.inner.poll(cx);
        if let Poll::Ready(Ok(response)) = &mut poll {
            close_after(response);
        }
        poll
    }
}

/// Adds `Connection: close` to an HTTP/1 response of a draining process; out of line, as
/// it is rare.
#[cold]
#[inline(never)]
fn close_after<B>(response: &mut Response<B>) {
    // Not on a `101 Switching Protocols`: the upgraded connection is tracked on its own.
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::Service;
    use std::convert::Infallible;

    #[derive(Clone)]
    struct Reply(http::StatusCode);

    impl Service<Request<()>> for Reply {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn call(&self, _: Request<()>) -> Self::Future {
            let mut response = Response::new(());
            *response.status_mut() = self.0;
            std::future::ready(Ok(response))
        }
    }

    /// Answers a request of `version` as a connection served by [`Server::http`] does,
    /// polled by [`UntilClosing`] with the drain started or not; with whether the service
    /// took the connection for HTTP/2.
    fn respond(draining: bool, version: Version, status: http::StatusCode) -> (Response<()>, bool) {
        let state = Arc::new(ConnState::default());
        let service = DrainAware {
            inner: Reply(status),
            state: Arc::clone(&state),
        };
        let request = Request::builder().version(version).body(()).unwrap();
        let mut closing = if draining {
            Closing::fired()
        } else {
            Closers {
                shared: Arc::default(),
            }
            .register()
        };
        let response = futures_block_on(async {
            let mut response = std::pin::pin!(service.call(request));
            UntilClosing {
                conn: response.as_mut(),
                closing: &mut closing,
            }
            .await
        });
        let response = response
            .expect("answered before the drain started")
            .unwrap();
        (response, state.h2.load(Ordering::SeqCst))
    }

    fn futures_block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn closes(response: &Response<()>) -> bool {
        response.headers().get(header::CONNECTION) == Some(&HeaderValue::from_static("close"))
    }

    #[test]
    fn closing_wakes_a_waiting_connection_and_is_ready_for_a_late_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let tracker = Tracker::new();
            let closers = Closers::watch(tracker.clone());
            let mut waiting = closers.register();
            let mut idle = closers.register();
            let task = tokio::spawn(async move {
                std::future::poll_fn(|cx| waiting.poll_closing(cx)).await;
            });
            tokio::task::yield_now().await;
            assert!(!task.is_finished());
            // Polled again with the same waker: no new registration.
            assert!(
                std::future::poll_fn(|cx| Poll::Ready(idle.poll_closing(cx)))
                    .await
                    .is_pending()
            );
            assert!(
                std::future::poll_fn(|cx| Poll::Ready(idle.poll_closing(cx)))
                    .await
                    .is_pending()
            );
            assert_eq!(lock(&closers.shared.wakers).len(), 2);
            drop(idle);
            assert_eq!(lock(&closers.shared.wakers).len(), 1);
            tracker.close_idle();
            task.await.unwrap();
            let mut late = closers.register();
            std::future::poll_fn(|cx| late.poll_closing(cx)).await;
        });
    }

    #[test]
    fn http1_responses_say_close_only_once_draining() {
        let (response, h2) = respond(false, Version::HTTP_11, http::StatusCode::OK);
        assert!(!closes(&response));
        assert!(!h2);
        let (response, _) = respond(true, Version::HTTP_11, http::StatusCode::OK);
        assert!(closes(&response));
        let (response, _) = respond(true, Version::HTTP_10, http::StatusCode::NOT_FOUND);
        assert!(closes(&response));
    }

    #[test]
    fn http2_and_upgrades_are_left_alone() {
        let (response, h2) = respond(true, Version::HTTP_2, http::StatusCode::OK);
        assert!(
            !closes(&response),
            "connection-specific headers are illegal in HTTP/2"
        );
        assert!(h2);
        let (response, _) = respond(
            true,
            Version::HTTP_11,
            http::StatusCode::SWITCHING_PROTOCOLS,
        );
        assert!(!closes(&response));
    }

    #[test]
    fn a_response_completed_outside_a_draining_poll_is_left_alone() {
        let service = DrainAware {
            inner: Reply(http::StatusCode::OK),
            state: Arc::default(),
        };
        let call = || service.call(Request::builder().body(()).unwrap());
        let mut inner = std::pin::pin!(call());
        let mut outer = std::pin::pin!(async {
            // A draining connection's poll ends; what is polled after it is not its.
            let inside = Draining(inner.as_mut()).await.unwrap();
            let after = call().await.unwrap();
            (inside, after)
        });
        let (inside, after) = futures_block_on(std::future::poll_fn(|cx| {
            poll_draining(outer.as_mut(), cx, false)
        }));
        assert!(closes(&inside));
        assert!(!closes(&after));
        assert!(!DRAINING.get());
    }
}
