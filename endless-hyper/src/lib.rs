//! Serve [hyper](https://hyper.rs) 1.x — and so axum and any tower service — with
//! zero-downtime restarts, over HTTP/1.1 and HTTP/2, cleartext or TLS, on TCP or Unix
//! sockets.
//!
//! On tokio (endless-tokio's listeners, the default feature `runtime-tokio`) or on smol and
//! async-std (endless-smol's, feature `runtime-smol`): see [`rt`]. On `SIGHUP` a new
//! generation of the server
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
//!   finish, or are closed at the drain deadline; or, with [`ws`], a websocket moves to
//!   the new generation at a message boundary, and one that stays is told goodbye (close
//!   code 1001) before the deadline.
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
//! A service that needs its peer's address ([`PeerAddr`], TCP or Unix) is made per
//! connection: [`Server::serve_with_connect_info`] with [`make_service_fn`], or axum's
//! `ConnectInfo` (below).
//!
//! # axum
//!
//! Pass the `Router` itself: `Server::new().serve(listener, router)`. For axum's
//! `ConnectInfo<SocketAddr>` extractor, turn on this crate's `axum` feature and serve the
//! make service axum makes for it, as with `axum::serve`
//! ([`Server::serve_with_connect_info`]):
//!
//! ```
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! # #[cfg(feature = "axum")]
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! use std::net::SocketAddr;
//! use axum::{Router, extract::ConnectInfo, routing::get};
//! use endless_hyper::Server;
//! use endless_tokio::Endless;
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! async fn hello(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
//!     format!("hello, {peer}\n")
//! }
//!
//! let endless = Endless::start()?;
//! let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
//! # let addr = listener.local_addr()?;
//! let app = Router::new().route("/", get(hello));
//! Server::new().serve_with_connect_info(listener, app.into_make_service_with_connect_info::<SocketAddr>());
//! endless.ready();
//! # let mut client = tokio::net::TcpStream::connect(addr).await?;
//! # let local = client.local_addr()?;
//! # client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
//! # let mut response = String::new();
//! # client.read_to_string(&mut response).await?;
//! # assert!(response.ends_with(&format!("hello, {local}\n")), "{response}");
//! # endless.request(endless_tokio::Request::Stop);
//! let exit = endless.run().await;
//! # assert_eq!(exit.code, 0);
//! # return Ok(());
//! std::process::exit(exit.code);
//! # }
//! ```
//!
//! `ConnectInfo<PeerAddr>` (`into_make_service_with_connect_info::<PeerAddr>()`) tells
//! the peers of Unix listeners apart too; with `SocketAddr` they are `0.0.0.0:0`.
//!
//! # Probes
//!
//! [`Probes`] wraps a service (a hyper service, a `Router`) and answers `GET /readyz` with
//! `200` while the process serves and `503` once it drains, and `GET /livez` with `200`:
//! Kubernetes' readiness and liveness probes, or a load balancer's health check. See
//! [`probe`].
//!
//! # smol and async-std
//!
//! With the `runtime-smol` feature, the same server runs on async-io: the runtime is the
//! listener's, so the line that serves is the same. Connections run on smol's executor,
//! or on the application's with [`Server::spawner`] (async-std's):
//!
//! ```
//! # #[cfg(not(feature = "runtime-smol"))]
//! # fn main() {}
//! # #[cfg(feature = "runtime-smol")]
//! # fn main() -> std::io::Result<()> {
//! use endless_hyper::Server;
//! use endless_smol::Endless;
//! # use smol::io::{AsyncReadExt, AsyncWriteExt};
//!
//! smol::block_on(async {
//!     let endless = Endless::start()?;
//!     let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
//! #   let addr = listener.local_addr()?;
//!     let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
//!     Server::new().serve(listener, app);
//!     endless.ready();
//! #   let mut client = smol::net::TcpStream::connect(addr).await?;
//! #   client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
//! #   let mut response = String::new();
//! #   client.read_to_string(&mut response).await?;
//! #   assert!(response.ends_with("hello\n"), "{response}");
//! #   endless.request(endless_smol::Request::Stop);
//!     let exit = endless.run().await;
//! #   assert_eq!(exit.code, 0);
//! #   return Ok(());
//!     std::process::exit(exit.code);
//! })
//! # }
//! ```
//!
//! # Features
//!
//! - `runtime-tokio` (default): serving endless-tokio's listeners.
//! - `runtime-smol`: serving endless-smol's listeners (smol, async-std).
//! - `tls`: TLS through tokio-rustls (`Server::tls`, the `tls` module), on either runtime
//!   (tokio-rustls needs only tokio's I/O traits, through which async-io's streams are
//!   seen). Off by default.
//! - `axum`: axum's `ConnectInfo` (above). Off by default.
//!
//! # Platforms
//!
//! Unix only, like endless-tokio and endless-smol. On other targets (Windows, …) this crate
//! builds empty, so that an application can depend on it unconditionally; there
//! `endless_tokio::Endless` fails to start with a typed "unsupported platform" error.
#![warn(missing_docs)]
// The crate docs describe the Unix API, which other targets do not have.
#![cfg_attr(not(unix), allow(rustdoc::broken_intra_doc_links))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(unix)]
mod drain;
#[cfg(unix)]
mod h2_shutdown;
#[cfg(unix)]
mod peer;
#[cfg(unix)]
pub mod probe;
#[cfg(unix)]
pub mod rt;
#[cfg(unix)]
mod server;
#[cfg(unix)]
mod service;
#[cfg(unix)]
mod takeover;
#[cfg(unix)]
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
#[cfg(unix)]
pub mod ws;

#[cfg(unix)]
pub use peer::{ConnectionInfo, MakeServiceFn, PeerAddr, make_service_fn};
#[cfg(unix)]
pub use probe::{Probes, ProbesLayer};
#[cfg(unix)]
pub use rt::HttpRuntime;
#[cfg(unix)]
pub use server::{Accept, DEFAULT_IDLE_GRACE, Server, Serving, TLS_HANDSHAKE_TIMEOUT};
#[cfg(unix)]
pub use service::{BoxError, HttpService, HyperService, ResponseBody};
#[cfg(unix)]
pub use takeover::IntoStream;
