//! The [`Server`]: its options, the listeners it accepts on ([`Accept`]), the accept loop,
//! and what each accepted connection goes through (TLS handshake, HTTP/2 detection) before
//! it is served through the drain ([`drain`](crate::drain)).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use endless_tokio::{Tracked, Tracker};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::drain::{Closers, Closing};
use crate::service::{HttpService, ResponseBody};
use crate::takeover::{self, IntoStream};

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
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) idle_grace: Duration,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) takeover: Option<Arc<takeover::Takeover>>,
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

    /// Serve TLS with this acceptor (see
    /// [`tls::acceptor_from_pem_files`](crate::tls::acceptor_from_pem_files); offer ALPN
    /// `h2` and `http/1.1` for HTTP/2).
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
    /// [`HyperService`](crate::HyperService): see [`HttpService`].
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
}
