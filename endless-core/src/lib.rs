//! The sans-IO core of [endless](https://github.com/endless-rs/endless): zero-downtime
//! restarts for network servers.
//!
//! A server that receives a restart request starts a new generation of itself, which
//! inherits the listening sockets and reports ready; the old generation then stops
//! accepting, finishes the connections it has and exits. Nothing is refused, nothing is
//! lost. This crate holds every decision of that dance and none of its I/O:
//!
//! - [`Lifecycle`]: the state machine `Running → Forking → Draining → (Exiting →) Stopped`, driven by
//!   [`Input`]s that carry the time, answering with [`Action`]s and [`Event`]s.
//! - [`Inventory`]: the named file descriptors a process hands over, and [`env`](mod@env), their
//!   encoding into the child's environment (and systemd's `LISTEN_FDS`).
//! - [`ready`]: the line a new generation writes to tell its parent it is ready.
//! - [`control`]: the restart command's request and answer lines, and the answer to a
//!   request as a projection of the lifecycle's outputs.
//! - [`takeover`]: the messages that hand an established connection (its socket, its
//!   state) to the new generation, instead of draining it.
//! - [`state`]: the application's state that a generation hands to its successor beside
//!   its sockets (a cache, counters, a session table): one bounded, versioned, checksummed
//!   blob.
//! - [`plan`]: the `dup2` steps that place the inherited descriptors at 3, 4, … in the
//!   child without clobbering one that is still needed.
//!
//! It reads no clock, no environment and no file descriptor, spawns nothing and has no
//! `unsafe`: adapters (`endless-tokio`, `endless-smol`) own the real world and feed this
//! crate. Most users want an adapter, not this crate.
//!
//! # The drive loop
//!
//! After every input, poll outputs until there are none; then sleep until the next input
//! or [`Lifecycle::poll_timeout`], whichever comes first. Here is a tiny blocking TCP
//! server written directly against the core (its `stop` arrives on a channel where a real
//! adapter would listen for `SIGTERM`, and it spawns no successor):
//!
//! ```
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::{mpsc, Arc};
//! use std::time::{Duration, Instant};
//! use endless_core::{Action, Config, Input, Lifecycle, Origin, Output, Request};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! listener.set_nonblocking(true)?;
//! let addr = listener.local_addr()?;
//! let (requests, operator) = mpsc::channel::<Request>();
//! let open = Arc::new(AtomicUsize::new(0));
//!
//! // A client: one request, then the operator asks the server to stop.
//! let client = std::thread::spawn(move || -> std::io::Result<String> {
//!     let mut stream = TcpStream::connect(addr)?;
//!     stream.write_all(b"hello\n")?;
//!     let mut line = String::new();
//!     BufReader::new(stream).read_line(&mut line)?;
//!     requests.send(Request::Stop).unwrap();
//!     Ok(line)
//! });
//!
//! let mut lc = Lifecycle::new(Config::new().drain_timeout(Some(Duration::from_secs(5))), Origin::Fresh);
//! lc.handle(Input::Ready, Instant::now());
//! let (mut accepting, mut draining) = (true, false);
//! let code = 'serve: loop {
//!     // 1. Carry out everything the core asks for.
//!     while let Some(output) = lc.poll_output() {
//!         match output {
//!             Output::Event(event) => eprintln!("endless: {event:?}"),
//!             Output::Action(Action::StopAccepting) => accepting = false,
//!             Output::Action(Action::CloseIdle) => draining = true,
//!             Output::Action(Action::Exit { code, .. }) => break 'serve code,
//!             // SpawnChild, KillChild, ForceClose, SendReadiness, Announce: a real
//!             // adapter spawns the successor, kills, aborts connections, writes the
//!             // readiness channel and talks to systemd here.
//!             Output::Action(_) => {}
//!         }
//!     }
//!     // 2. Feed it what happened.
//!     let now = Instant::now();
//!     if let Ok(request) = operator.try_recv() {
//!         lc.handle(Input::Request(request), now);
//!     } else if draining && open.load(Ordering::SeqCst) == 0 {
//!         lc.handle(Input::Drained, now);
//!     } else if lc.poll_timeout().is_some_and(|t| t <= now) {
//!         lc.handle_timeout(now);
//!     } else if accepting {
//!         match listener.accept() {
//!             Ok((stream, _)) => {
//!                 stream.set_nonblocking(false)?;
//!                 open.fetch_add(1, Ordering::SeqCst); // a connection guard
//!                 let open = Arc::clone(&open);
//!                 std::thread::spawn(move || {
//!                     let mut line = String::new();
//!                     let mut reader = BufReader::new(&stream);
//!                     if reader.read_line(&mut line).is_ok() {
//!                         let _ = writeln!(&stream, "{} {}", std::process::id(), line.trim());
//!                     }
//!                     open.fetch_sub(1, Ordering::SeqCst);
//!                 });
//!             }
//!             Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
//!                 std::thread::sleep(Duration::from_millis(1));
//!             }
//!             Err(e) => return Err(e),
//!         }
//!     } else {
//!         std::thread::sleep(Duration::from_millis(1));
//!     }
//! };
//! assert_eq!(code, 0);
//! assert!(client.join().unwrap()?.ends_with(" hello\n"));
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod control;
pub mod env;
mod inventory;
mod lifecycle;
pub mod plan;
pub mod ready;
pub mod state;
pub mod takeover;

pub use inventory::{
    Entry, FIRST_INHERITED_FD, FdKind, Inventory, InventoryError, MAX_ENTRIES, MAX_NAME_LEN,
};
pub use lifecycle::{
    Action, ChildFailure, ChildStatus, Config, DEFAULT_DRAIN_TIMEOUT, DEFAULT_REAP_TIMEOUT,
    DEFAULT_UPGRADE_TIMEOUT, DrainCause, EXTEND_LEASE, EXTEND_PERIOD, Event, ExitReason, Input,
    InputKind, Lifecycle, Origin, Output, Phase, Pid, Refusal, RepeatedStop, Request, STOP_MARGIN,
    Status, UpgradeFailure,
};

pub use env::{DecodeError, Handoff, HandoffError};
pub use plan::{Plan, PlanError};

/// A file descriptor number, as the operating system numbers them (`RawFd` on Unix).
pub type Fd = i32;
