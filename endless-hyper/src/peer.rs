//! Who is at the other end of a connection: [`PeerAddr`], which every request served
//! carries in its extensions, and [`ConnectionInfo`], what the make service of
//! [`Server::serve_with_connect_info`](crate::Server::serve_with_connect_info) is called
//! with once per connection (axum's `ConnectInfo`, with the `axum` feature).

use std::net::SocketAddr;
use std::os::unix::net::SocketAddr as UnixSocketAddr;

use http::Request;

/// The address of a connection's peer, in the extensions of every request
/// [`Server`](crate::Server) serves (`req.extensions().get::<PeerAddr>()`, or axum's
/// `Extension<PeerAddr>`).
///
/// A connection taken over from the previous generation
/// ([`Server::hand_over_idle`](crate::Server::hand_over_idle)) carries the same peer as
/// before: the address is read from its socket.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use endless_hyper::{HyperService, PeerAddr};
/// use hyper::{Request, Response, body::Incoming};
///
/// let service = HyperService(hyper::service::service_fn(|req: Request<Incoming>| async move {
///     let peer = match req.extensions().get::<PeerAddr>() {
///         Some(PeerAddr::Tcp(addr)) => addr.to_string(),
///         Some(peer) => format!("{peer:?}"),
///         None => "?".to_owned(),
///     };
///     Ok::<_, Infallible>(Response::new(format!("hello, {peer}\n")))
/// }));
/// # drop(service);
/// ```
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

/// The service of a connection, which puts the connection's [`PeerAddr`] in the extensions
/// of each request.
#[derive(Debug, Clone)]
pub(crate) struct WithPeer<S> {
    pub(crate) inner: S,
    pub(crate) peer: PeerAddr,
}

impl<S, B> hyper::service::Service<Request<B>> for WithPeer<S>
where
    S: hyper::service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline(always)]
    fn call(&self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}
