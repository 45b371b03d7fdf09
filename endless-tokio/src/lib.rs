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
//!     loop {
//!         let stream = match listener.accept().await {
//!             Ok(Some((stream, _peer))) => stream,
//!             // Stopping, or handed over for good: the socket stays open for the next.
//!             Ok(None) => break,
//!             // Too many open files, say: the listener is fine; wait a little.
//!             Err(_) => {
//!                 tokio::time::sleep(std::time::Duration::from_millis(50)).await;
//!                 continue;
//!             }
//!         };
//!         tokio::spawn(async move {
//!             let (read, mut write) = stream.into_split(); // both halves stay tracked
//!             let mut lines = BufReader::new(read).lines();
//!             loop {
//!                 let line = tokio::select! {
//!                     line = lines.next_line() => line,
//!                     // Idle between lines: close once this process drains.
//!                     () = write.guard().closing() => break,
//!                 };
//!                 let Ok(Some(line)) = line else { break };
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
// The crate docs describe the Unix API, which other targets do not have.
#![cfg_attr(not(unix), allow(rustdoc::broken_intra_doc_links))]

#[cfg(unix)]
mod runtime;

#[cfg(unix)]
pub use endless_unix::adapter::api::*;
#[cfg(unix)]
pub use runtime::Tokio;

/// A process's handle on zero-downtime restarts on tokio; cheap to clone.
///
/// [`Endless::start`] (or [`Endless::builder`]) must be called within a tokio runtime with
/// I/O and time enabled.
#[cfg(unix)]
pub type Endless = endless_unix::adapter::Endless<Tokio>;

/// Configures and starts [`Endless`].
#[cfg(unix)]
pub type Builder = endless_unix::adapter::Builder<Tokio>;

/// A TCP listener whose connections are tracked ([`Tracked`]`<tokio::net::TcpStream>`),
/// and whose `accept` waits while the new generation serves and returns `Ok(None)` once
/// this process will never accept again (the contract: [`TcpListener::accept`]).
#[cfg(unix)]
pub type TcpListener = endless_unix::adapter::TcpListener<Tokio>;

/// A Unix stream listener whose connections are tracked, and whose `accept` returns
/// `Ok(None)` once this process will never accept again.
#[cfg(unix)]
pub type UnixListener = endless_unix::adapter::UnixListener<Tokio>;

/// A tracked connection of either kind, to hand over to the next generation
/// ([`Endless::hand_over`]) or received from the previous one.
#[cfg(unix)]
pub type Stream = endless_unix::adapter::Stream<Tokio>;

/// The connections the previous generation hands over under one name
/// ([`Endless::receive_connections`]).
#[cfg(unix)]
pub type Connections = endless_unix::adapter::Connections<Tokio>;

/// A connection received from the previous generation, with its state.
#[cfg(unix)]
pub type Received = endless_unix::adapter::Received<Tokio>;

/// The runtime marker. This platform is not Unix: endless does not run here, and
/// [`Endless::start`] fails with [`StartError::UnsupportedPlatform`].
#[cfg(not(unix))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// A process's handle on zero-downtime restarts on tokio. This platform is not
/// Unix: [`Endless::start`] fails with [`StartError::UnsupportedPlatform`].
#[cfg(not(unix))]
pub type Endless = endless_unix::Endless<Tokio>;

/// Configures and starts [`Endless`]; on this platform, `start` fails.
#[cfg(not(unix))]
pub type Builder = endless_unix::Builder<Tokio>;

#[cfg(not(unix))]
pub use endless_unix::StartError;
