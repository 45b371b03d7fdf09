//! Zero-downtime restarts for [smol](https://docs.rs/smol) and
//! [async-std](https://docs.rs/async-std) servers.
//!
//! Replace the binary, send `SIGHUP`: the server starts its new version with the same
//! path, arguments, working directory and environment, passing it the listening sockets.
//! The new process calls [`Endless::ready`]; the old one stops accepting (its sockets stay
//! open, so nothing queued in the kernel is lost), finishes the connections it has and
//! exits. A new version that crashes, or is not ready within the upgrade timeout, is
//! killed and the old one keeps serving.
//!
//! Signals, by default: `SIGHUP` restart, `SIGTERM`/`SIGINT` graceful stop, `SIGUSR2`
//! hammer. Every decision is taken by the sans-IO [`endless_core::Lifecycle`]; this crate
//! only says how async-io and async-signal do I/O. Everything else —
//! validating inherited fds, spawning with the fds renumbered, the readiness protocol,
//! connection tracking, and the API below — is endless-unix's, shared with
//! `endless-tokio`: the same guarantees, the same errors, and the same environment
//! encoding, so a smol build of an application can hand over to a tokio build and back.
//!
//! Listeners are async-io's `Async<TcpListener>`, `Async<UnixListener>` and
//! `Async<UdpSocket>`; accepted connections are [`Tracked`]`<Async<TcpStream>>`, which
//! implement futures-io's `AsyncRead` and `AsyncWrite`. endless' own tasks (the lifecycle
//! driver, signal forwarding) run on a thread of their own, so the crate does not care
//! which executor the application uses.
//!
//! # Example
//!
//! A line echo server on smol, in full. (This example stops itself after one connection;
//! a real server runs until a signal asks it to stop.)
//!
//! ```
//! use endless_smol::Endless;
//! use futures_lite::{AsyncBufReadExt, AsyncWriteExt, io::BufReader};
//!
//! # fn main() -> std::io::Result<()> {
//! smol::block_on(async {
//!     let endless = Endless::start()?;
//!     let listener = endless.tcp_listener("echo", "127.0.0.1:0")?;
//! #   let addr = listener.local_addr()?;
//! #   let stopper = endless.clone();
//! #   smol::spawn(async move {
//! #       let mut c = smol::net::TcpStream::connect(addr).await.unwrap();
//! #       c.write_all(b"hi\n").await.unwrap();
//! #       let mut line = String::new();
//! #       BufReader::new(c).read_line(&mut line).await.unwrap();
//! #       assert!(line.ends_with(" hi\n"));
//! #       stopper.request(endless_smol::Request::Stop);
//! #   }).detach();
//!     smol::spawn(async move {
//!         loop {
//!             let stream = match listener.accept().await {
//!                 Ok(Some((stream, _peer))) => stream,
//!                 // Stopping, or handed over for good: the socket stays open for the next.
//!                 Ok(None) => break,
//!                 // Too many open files, say: the listener is fine; wait a little.
//!                 Err(_) => {
//!                     smol::Timer::after(std::time::Duration::from_millis(50)).await;
//!                     continue;
//!                 }
//!             };
//!             smol::spawn(async move {
//!                 let (read, mut write) = futures_lite::io::split(stream);
//!                 let mut lines = BufReader::new(read).lines();
//!                 while let Some(Ok(line)) = futures_lite::StreamExt::next(&mut lines).await {
//!                     let reply = format!("{} {line}\n", std::process::id());
//!                     if write.write_all(reply.as_bytes()).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             })
//!             .detach();
//!         }
//!     })
//!     .detach();
//!     endless.ready();
//!     let exit = endless.run().await;
//! #   assert_eq!(exit.code, 0);
//!     // std::process::exit(exit.code);
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # async-std
//!
//! async-std runs on async-io, so this crate serves it as it is: call
//! [`Endless::start`] from `#[async_std::main]`, and use the `Tracked<Async<TcpStream>>`
//! connections with async-std's I/O traits (futures-io's). See the `hello-async-std`
//! example.
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
pub use runtime::Smol;

/// A process's handle on zero-downtime restarts on async-io (smol, async-std); cheap to
/// clone.
#[cfg(unix)]
pub type Endless = endless_unix::adapter::Endless<Smol>;

/// Configures and starts [`Endless`].
#[cfg(unix)]
pub type Builder = endless_unix::adapter::Builder<Smol>;

/// A TCP listener whose connections are tracked ([`Tracked`]`<Async<TcpStream>>`), and
/// whose `accept` waits while the new generation serves and returns `Ok(None)` once this
/// process will never accept again (the contract: [`TcpListener::accept`]).
#[cfg(unix)]
pub type TcpListener = endless_unix::adapter::TcpListener<Smol>;

/// A Unix stream listener whose connections are tracked, and whose `accept` returns
/// `Ok(None)` once this process will never accept again.
#[cfg(unix)]
pub type UnixListener = endless_unix::adapter::UnixListener<Smol>;

/// A tracked connection of either kind, to hand over to the next generation
/// ([`Endless::hand_over`]) or received from the previous one.
#[cfg(unix)]
pub type Stream = endless_unix::adapter::Stream<Smol>;

/// The connections the previous generation hands over under one name
/// ([`Endless::receive_connections`]).
#[cfg(unix)]
pub type Connections = endless_unix::adapter::Connections<Smol>;

/// A connection received from the previous generation, with its state.
#[cfg(unix)]
pub type Received = endless_unix::adapter::Received<Smol>;

/// The runtime marker. This platform is not Unix: endless does not run here, and
/// [`Endless::start`] fails with [`StartError::UnsupportedPlatform`].
#[cfg(not(unix))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// A process's handle on zero-downtime restarts on async-io (smol, async-std). This platform is not
/// Unix: [`Endless::start`] fails with [`StartError::UnsupportedPlatform`].
#[cfg(not(unix))]
pub type Endless = endless_unix::Endless<Smol>;

/// Configures and starts [`Endless`]; on this platform, `start` fails.
#[cfg(not(unix))]
pub type Builder = endless_unix::Builder<Smol>;

#[cfg(not(unix))]
pub use endless_unix::StartError;
