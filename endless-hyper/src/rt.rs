//! The runtimes endless-hyper serves on: [`HttpRuntime`], implemented for endless-tokio's
//! `Tokio` (feature `runtime-tokio`, on by default) and endless-smol's `Smol` (feature
//! `runtime-smol`: smol and async-std).
//!
//! The runtime is the type parameter of endless' listeners (`endless_tokio::TcpListener` is
//! `endless_unix::adapter::TcpListener<Tokio>`), so [`Server::serve`](crate::Server::serve)
//! knows it from the listener it is given: `Server::new().serve(listener, service)` is the
//! same line on every runtime, and one build can serve on both. Everything else — the
//! drain, HTTP/2's shutdown, TLS, idle takeover, upgrade tracking — is written once, over
//! tokio's I/O traits (`AsyncRead`, `AsyncWrite`: traits only, which run on any executor):
//! a runtime says how to see its streams through them, how to spawn a task and how to
//! sleep. On async-io the streams are seen through tokio-util's `Compat`.
//!
//! quinn chooses its runtime with cargo features and a default runtime; here the features
//! only say which runtimes are compiled in, and nothing global picks one: the listener
//! already names it. So a tokio server and a smol server can live in one build (the tests
//! run both), and an adapter for another runtime is this trait and endless-unix's `Net`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use endless_unix::{Net, Tracked};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::peer::PeerAddr;
use crate::takeover::IntoStream;

/// A task, as a [`Spawner`] takes it.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs a task in the background: what [`Server::spawner`](crate::Server::spawner) sets, for
/// an application whose tasks must run on an executor of its own (async-std's).
pub type Spawner = Arc<dyn Fn(Task) + Send + Sync + 'static>;

/// What endless-hyper needs of a runtime besides endless-unix's [`Net`]: its streams seen
/// through tokio's I/O traits, tasks, and timers.
pub trait HttpRuntime: Net {
    /// A tracked TCP connection, as served.
    type TcpIo: IntoStream<Self> + AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A tracked Unix stream connection, as served.
    type UnixIo: IntoStream<Self> + AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What [`sleep`](Self::sleep) returns.
    type Sleep: Future<Output = ()> + Send + Sync + 'static;
    /// The timer hyper's connections use (header read timeouts, HTTP/2 keep-alive).
    type Timer: hyper::rt::Timer + Clone + Send + Sync + 'static;

    /// A TCP connection as served.
    fn tcp_io(stream: Tracked<Self::TcpStream>) -> Self::TcpIo;
    /// A Unix stream connection as served.
    fn unix_io(stream: Tracked<Self::UnixStream>) -> Self::UnixIo;
    /// Turns Nagle's algorithm off: small responses go out at once, as every HTTP server
    /// does it.
    fn set_nodelay(stream: &Self::TcpStream);
    /// The address of a Unix peer, as the runtime's accept reports it.
    fn unix_peer(addr: Self::UnixAddr) -> PeerAddr;
    /// The address of a TCP connection's peer (of one taken over: looked up only once it
    /// is served, not while it waits idle).
    fn tcp_peer(io: &Self::TcpIo) -> std::io::Result<SocketAddr>;
    /// The address of a Unix connection's peer.
    fn unix_peer_of(io: &Self::UnixIo) -> std::io::Result<PeerAddr>;

    /// Runs `task` in the background on the runtime's executor (unless the server was
    /// given a [`Spawner`]).
    fn spawn_task(task: impl Future<Output = ()> + Send + 'static);
    /// Resolves after `duration`.
    fn sleep(duration: Duration) -> Self::Sleep;
    /// The time on the runtime's clock, the one endless' driver reads its deadlines from
    /// (endless-unix's `Runtime::now`, without an instance): tokio's clock, which tests
    /// may pause; the system's monotonic clock unless a runtime says otherwise.
    fn clock() -> Instant {
        Instant::now()
    }
    /// hyper's timer on this runtime.
    fn timer() -> Self::Timer;
}

/// Spawns on `spawner` if there is one, else on the runtime `N`.
pub(crate) fn spawn<N: HttpRuntime>(
    spawner: Option<&Spawner>,
    task: impl Future<Output = ()> + Send + 'static,
) {
    match spawner {
        Some(spawner) => spawner(Box::pin(task)),
        None => N::spawn_task(task),
    }
}

/// hyper's executor (HTTP/2 streams) on the runtime `N`, or on the server's [`Spawner`].
pub struct Exec<N> {
    spawner: Option<Spawner>,
    runtime: std::marker::PhantomData<fn() -> N>,
}

impl<N> Exec<N> {
    pub(crate) fn new(spawner: Option<Spawner>) -> Self {
        Self {
            spawner,
            runtime: std::marker::PhantomData,
        }
    }
}

impl<N> Clone for Exec<N> {
    fn clone(&self) -> Self {
        Self::new(self.spawner.clone())
    }
}

impl<N> std::fmt::Debug for Exec<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("spawner", &self.spawner.is_some())
            .finish()
    }
}

impl<N, F> hyper::rt::Executor<F> for Exec<N>
where
    N: HttpRuntime,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        spawn::<N>(self.spawner.as_ref(), async move {
            future.await;
        });
    }
}

#[cfg(feature = "runtime-tokio")]
mod tokio_rt {
    use super::*;
    use endless_tokio::Tokio;

    impl IntoStream<Tokio> for Tracked<tokio::net::TcpStream> {
        fn tracker(&self) -> endless_unix::Tracker {
            self.guard().tracker()
        }

        fn into_stream(self) -> endless_unix::adapter::Stream<Tokio> {
            endless_unix::adapter::Stream::Tcp(self)
        }
    }

    impl IntoStream<Tokio> for Tracked<tokio::net::UnixStream> {
        fn tracker(&self) -> endless_unix::Tracker {
            self.guard().tracker()
        }

        fn into_stream(self) -> endless_unix::adapter::Stream<Tokio> {
            endless_unix::adapter::Stream::Unix(self)
        }
    }

    impl HttpRuntime for Tokio {
        type TcpIo = Tracked<tokio::net::TcpStream>;
        type UnixIo = Tracked<tokio::net::UnixStream>;
        type Sleep = tokio::time::Sleep;
        type Timer = hyper_util::rt::TokioTimer;

        fn tcp_io(stream: Tracked<Self::TcpStream>) -> Self::TcpIo {
            stream
        }

        fn unix_io(stream: Tracked<Self::UnixStream>) -> Self::UnixIo {
            stream
        }

        fn set_nodelay(stream: &Self::TcpStream) {
            let _ = stream.set_nodelay(true);
        }

        fn unix_peer(addr: Self::UnixAddr) -> PeerAddr {
            PeerAddr::Unix(addr.into())
        }

        fn tcp_peer(io: &Self::TcpIo) -> std::io::Result<SocketAddr> {
            io.get_ref().peer_addr()
        }

        fn unix_peer_of(io: &Self::UnixIo) -> std::io::Result<PeerAddr> {
            io.get_ref().peer_addr().map(PeerAddr::from)
        }

        fn spawn_task(task: impl Future<Output = ()> + Send + 'static) {
            tokio::spawn(task);
        }

        fn sleep(duration: Duration) -> Self::Sleep {
            tokio::time::sleep(duration)
        }

        fn clock() -> Instant {
            tokio::time::Instant::now().into_std()
        }

        fn timer() -> Self::Timer {
            hyper_util::rt::TokioTimer::new()
        }
    }
}

#[cfg(feature = "runtime-smol")]
mod smol_rt {
    use super::*;
    use async_io::Async;
    use endless_smol::Smol;
    use std::os::unix::net::UnixStream;
    use std::task::{Context, Poll};
    use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

    impl HttpRuntime for Smol {
        type TcpIo = Compat<Tracked<Async<std::net::TcpStream>>>;
        type UnixIo = Compat<Tracked<Async<UnixStream>>>;
        type Sleep = SmolSleep;
        type Timer = smol_hyper::rt::SmolTimer;

        fn tcp_io(stream: Tracked<Self::TcpStream>) -> Self::TcpIo {
            stream.compat()
        }

        fn unix_io(stream: Tracked<Self::UnixStream>) -> Self::UnixIo {
            stream.compat()
        }

        fn set_nodelay(stream: &Self::TcpStream) {
            let _ = stream.get_ref().set_nodelay(true);
        }

        fn unix_peer(addr: Self::UnixAddr) -> PeerAddr {
            PeerAddr::Unix(addr)
        }

        fn tcp_peer(io: &Self::TcpIo) -> std::io::Result<SocketAddr> {
            io.get_ref().get_ref().get_ref().peer_addr()
        }

        fn unix_peer_of(io: &Self::UnixIo) -> std::io::Result<PeerAddr> {
            io.get_ref()
                .get_ref()
                .get_ref()
                .peer_addr()
                .map(PeerAddr::Unix)
        }

        fn spawn_task(task: impl Future<Output = ()> + Send + 'static) {
            smol::spawn(task).detach();
        }

        fn sleep(duration: Duration) -> Self::Sleep {
            SmolSleep(async_io::Timer::after(duration))
        }

        fn timer() -> Self::Timer {
            smol_hyper::rt::SmolTimer::new()
        }
    }

    impl IntoStream<Smol> for Compat<Tracked<Async<std::net::TcpStream>>> {
        fn tracker(&self) -> endless_unix::Tracker {
            self.get_ref().guard().tracker()
        }

        fn into_stream(self) -> endless_unix::adapter::Stream<Smol> {
            endless_unix::adapter::Stream::Tcp(self.into_inner())
        }
    }

    impl IntoStream<Smol> for Compat<Tracked<Async<UnixStream>>> {
        fn tracker(&self) -> endless_unix::Tracker {
            self.get_ref().guard().tracker()
        }

        fn into_stream(self) -> endless_unix::adapter::Stream<Smol> {
            endless_unix::adapter::Stream::Unix(self.into_inner())
        }
    }

    /// async-io's timer as a future of `()`.
    #[derive(Debug)]
    pub struct SmolSleep(async_io::Timer);

    impl Future for SmolSleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            Pin::new(&mut self.0).poll(cx).map(drop)
        }
    }

    impl hyper::rt::Sleep for SmolSleep {}
}

#[cfg(feature = "runtime-smol")]
pub use smol_rt::SmolSleep;
