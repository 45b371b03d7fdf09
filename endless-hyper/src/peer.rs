//! Who is at the other end of a connection: [`ConnectionInfo`] (its [`PeerAddr`]), what the
//! make service of [`Server::serve_with_connect_info`](crate::Server::serve_with_connect_info)
//! is called with once per connection: axum's `ConnectInfo` with the `axum` feature, or a
//! closure through [`make_service_fn`].
//!
//! Nothing is put in each request's extensions: that costs every request (an allocation,
//! a map insert; about 10% of a small request's instructions, `bench/instructions.sh`),
//! and only the services that ask for the peer should pay for it, once per connection.

use std::net::SocketAddr;
use std::os::unix::net::SocketAddr as UnixSocketAddr;

/// The address of a connection's peer ([`ConnectionInfo::peer_addr`]).
///
/// A connection taken over from the previous generation
/// ([`Server::hand_over_idle`](crate::Server::hand_over_idle)) has the same peer as
/// before: the address is read from its socket.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix socket peer: unnamed, unless the client bound its socket to a path.
    Unix(UnixSocketAddr),
}

impl PeerAddr {
    /// The address of a TCP peer; `None` for a Unix one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(addr) => Some(*addr),
            Self::Unix(_) => None,
        }
    }

    /// The address of a Unix peer; `None` for a TCP one.
    pub fn unix(&self) -> Option<&UnixSocketAddr> {
        match self {
            Self::Unix(addr) => Some(addr),
            Self::Tcp(_) => None,
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

impl From<UnixSocketAddr> for PeerAddr {
    fn from(addr: UnixSocketAddr) -> Self {
        Self::Unix(addr)
    }
}

#[cfg(feature = "runtime-tokio")]
impl From<tokio::net::unix::SocketAddr> for PeerAddr {
    fn from(addr: tokio::net::unix::SocketAddr) -> Self {
        Self::Unix(addr.into())
    }
}

/// A connection, as the make service of
/// [`Server::serve_with_connect_info`](crate::Server::serve_with_connect_info) sees it:
/// called with one of these per connection, it returns the service of that connection.
///
/// With the `axum` feature, `SocketAddr` and [`PeerAddr`] implement axum's
/// `Connected<ConnectionInfo>`, so that
/// `router.into_make_service_with_connect_info::<SocketAddr>()` is such a make service.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    peer_addr: PeerAddr,
}

impl ConnectionInfo {
    pub(crate) fn new(peer_addr: PeerAddr) -> Self {
        Self { peer_addr }
    }

    /// The address of the peer.
    pub fn peer_addr(&self) -> &PeerAddr {
        &self.peer_addr
    }
}

/// For a Unix peer, which has no IP address, the unspecified address `0.0.0.0:0`: ask for
/// `ConnectInfo<PeerAddr>` to tell the peers of Unix listeners apart.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::extract::connect_info::Connected<ConnectionInfo> for SocketAddr {
    fn connect_info(connection: ConnectionInfo) -> Self {
        match connection.peer_addr {
            PeerAddr::Tcp(addr) => addr,
            PeerAddr::Unix(_) => Self::from(([0, 0, 0, 0], 0)),
        }
    }
}

/// The peer of a TCP or a Unix listener.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::extract::connect_info::Connected<ConnectionInfo> for PeerAddr {
    fn connect_info(connection: ConnectionInfo) -> Self {
        connection.peer_addr
    }
}

/// A make service from a closure, for
/// [`Server::serve_with_connect_info`](crate::Server::serve_with_connect_info): `make` is
/// called once per connection with its [`ConnectionInfo`] and returns the connection's
/// service (tower's `service_fn`, for make services).
///
/// # Examples
///
/// A hyper service that greets each peer by its address:
///
/// ```
/// use std::convert::Infallible;
/// use endless_hyper::{ConnectionInfo, HyperService, Server, make_service_fn};
/// use hyper::{Request, Response, body::Incoming, service::service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// let endless = endless_tokio::Endless::start()?;
/// let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
/// # let addr = listener.local_addr()?;
/// let make = make_service_fn(|info: ConnectionInfo| {
///     let peer = info.peer_addr().clone();
///     HyperService(service_fn(move |_req: Request<Incoming>| {
///         let hello = format!("hello, {:?}\n", peer.tcp());
///         async move { Ok::<_, Infallible>(Response::new(hello)) }
///     }))
/// });
/// Server::new().serve_with_connect_info(listener, make);
/// endless.ready();
/// # let mut client = tokio::net::TcpStream::connect(addr).await?;
/// # let local = client.local_addr()?;
/// # client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
/// # let mut response = String::new();
/// # client.read_to_string(&mut response).await?;
/// # assert!(response.ends_with(&format!("hello, Some({local})\n")), "{response}");
/// # endless.request(endless_tokio::Request::Stop);
/// # assert_eq!(endless.run().await.code, 0);
/// # Ok(()) }
/// ```
pub fn make_service_fn<F, S>(make: F) -> MakeServiceFn<F>
where
    F: Fn(ConnectionInfo) -> S,
{
    MakeServiceFn { make }
}

/// The make service of [`make_service_fn`].
#[derive(Clone, Copy)]
pub struct MakeServiceFn<F> {
    make: F,
}

impl<F> std::fmt::Debug for MakeServiceFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MakeServiceFn").finish_non_exhaustive()
    }
}

impl<F, S> tower_service::Service<ConnectionInfo> for MakeServiceFn<F>
where
    F: Fn(ConnectionInfo) -> S,
{
    type Response = S;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<S, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, info: ConnectionInfo) -> Self::Future {
        std::future::ready(Ok((self.make)(info)))
    }
}
