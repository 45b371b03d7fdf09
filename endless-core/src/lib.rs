//! The sans-IO core of [endless](https://github.com/endless-rs/endless): zero-downtime
//! restarts for network servers.
//!
//! A server that receives a restart request starts a new generation of itself, which
//! inherits the listening sockets and reports ready; the old generation then stops
//! accepting, finishes the connections it has and exits. Nothing is refused, nothing is
//! lost. This crate holds every decision of that dance and none of its I/O:
//!
//! - [`Lifecycle`]: the state machine `Running → Forking → Draining → (Probation →) (Exiting →)
//!   Stopped`, back to `Running` when a successor dies (the fallback), driven by
//!   [`Input`]s that carry the time, answering with [`Action`]s and [`Event`]s.
//! - [`Inventory`]: the named file descriptors a process hands over, and [`env`](mod@env), their
//!   encoding into the child's environment (and systemd's `LISTEN_FDS`).
//! - [`ready`]: the line a new generation writes to tell its parent it is ready.
//! - [`control`]: the restart command's request and answer lines, and the answer to a
//!   request as a projection of the lifecycle's outputs.
//! - [`supervisor`]: the decisions of the process that stays PID 1 in a container while
//!   generations come and go (where a signal goes, when and how it exits).
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
//!             // adapter spawns the successor (the executable it resolved at start-up,
//!             // see below), kills, aborts connections, writes the readiness channel and
//!             // talks to systemd here.
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
//!
//! # What an adapter must do that the core cannot
//!
//! The core decides; these two duties fall on the code around it, because they touch the
//! process and its descriptors. `endless-unix` does both (`spawn::Executable::current`,
//! `inherit::Inherited`); a server written against the core alone must do them itself.
//!
//! **Resolve the executable at start-up, not at restart.** [`Action::SpawnChild`] comes
//! when the operator asks for a restart, typically right after replacing the binary. By
//! then `std::env::current_exe()` (on Linux, `/proc/self/exe`) names the *old* inode: after
//! `mv new-binary /usr/local/bin/app` it reads `/usr/local/bin/app (deleted)` or still
//! points at the replaced file, and the "new" generation is the old code, so the upgrade is
//! silently lost. Capture the program path (from `argv[0]`, made absolute against the
//! working directory, or looked up in `PATH`), the arguments and the working directory
//! once, before anything can change them, and spawn that on every restart; build the
//! child's environment per spawn from the captured one with [`env::encode`]'s variables
//! added and [`env::is_reserved`] ones removed, never by changing this process's
//! environment.
//!
//! **Let the descriptors say whom they were handed to.** [`env::Handoff`] declares the
//! identity of each open file handed over (`fstat`'s `st_dev` and `st_ino`, as
//! [`env::FileId`]), and [`env::decode`] asks the adapter for the identity of the file at
//! each declared fd of the recipient. That, not the parent pid, decides whether the
//! variables are meant for this process: a successor whose parent died while it started
//! (re-parented to init or a subreaper) still adopts what it holds and serves, and a
//! grandchild, which inherits the variables but not the fds, does not adopt.
//!
//! **Make adopted descriptors close-on-exec, and check that each is what it claims.** An
//! [`Inventory`] from [`env::decode`] or [`env::decode_systemd`] is only a claim made by
//! the environment. The descriptors arrive without `FD_CLOEXEC` (they had to survive the
//! `exec`), so set it on each as soon as it is adopted: otherwise every process the server
//! runs (a helper, a shell-out, the next generation spawned with other fds) inherits the
//! listening sockets and keeps them, and their ports, open after this process is gone.
//! Then check each descriptor against its [`FdKind`] before using it (open, a socket, the
//! right type and family, listening or not: `getsockopt(SO_TYPE)`, `SO_ACCEPTCONN`,
//! `getsockname`): an environment inherited by a process it was not meant for, a
//! hand-written `LISTEN_FDS` or a stale variable may name fd numbers that are closed or
//! are something else entirely (a file, a pipe, another socket), and treating a file as a
//! listener fails far from the cause, or worse, writes to it. Refuse to start on a
//! mismatch, so that the previous generation keeps serving, and close inherited
//! descriptors nobody claimed once the process is ready.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod control;
pub mod env;
mod inventory;
mod lifecycle;
pub mod plan;
pub mod ready;
pub mod state;
pub mod supervisor;
pub mod takeover;

pub use inventory::{
    Entry, FIRST_INHERITED_FD, FdKind, Inventory, InventoryError, MAX_ENTRIES, MAX_NAME_LEN,
};
pub use lifecycle::{
    Action, ChildFailure, ChildStatus, Config, DEFAULT_DRAIN_TIMEOUT, DEFAULT_PROBATION,
    DEFAULT_REAP_TIMEOUT, DEFAULT_UPGRADE_TIMEOUT, Departure, DrainCause, EXTEND_LEASE,
    EXTEND_PERIOD, Event, ExitReason, Input, InputKind, Lifecycle, Origin, Output, Phase, Pid,
    Refusal, RepeatedStop, Request, STOP_MARGIN, Status, UpgradeFailure,
};

pub use env::{DecodeError, Handoff, HandoffError};
pub use plan::{Plan, PlanError};

/// A file descriptor number, as the operating system numbers them (`RawFd` on Unix).
pub type Fd = i32;
