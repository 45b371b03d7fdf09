//! The runtime-neutral Unix half of [endless](https://github.com/endless-rs/endless):
//! everything `endless-tokio` and `endless-smol` share, so that each of them is a thin
//! adapter.
//!
//! # Glossary
//!
//! These words mean one thing each, in the code and in the docs of every endless crate:
//!
//! - **generation**: one process of the service; the *predecessor* hands over to its
//!   *successor*.
//! - **handoff**: what a successor inherits at exec: the listening fds (and other sockets)
//!   at 3, 4, … and the variables that name them ([`endless_core::Handoff`],
//!   [`inherit`], [`spawn`]).
//! - **readiness**: the successor's message to its predecessor that it serves, over the
//!   *readiness channel* (a socket pair the predecessor creates for each child;
//!   [`endless_core::ready`]).
//! - **drain**: the predecessor finishing its connections after the successor is ready, or
//!   on a stop; **hammer**: closing what is left ([`tracker`]).
//! - **takeover**: moving an established connection (its socket, state and unread bytes)
//!   to the successor instead of draining it ([`takeover`]); the predecessor *hands it
//!   over*.
//! - **sd_notify**: the messages to systemd (`READY=1`, `MAINPID=`, `RELOADING=1`,
//!   `STOPPING=1`; [`notify`]). Never used for readiness between generations.
//!
//! # Modules
//!
//! - [`adapter`]: the one front door, [`Endless`] with its [`Builder`] and typed
//!   listeners, written once and generic over a runtime ([`Net`] for its sockets,
//!   [`Runtime`] for the rest). `endless_tokio::Endless` is `Endless<Tokio>`.
//! - [`runtime`]: what a runtime provides the driver: a clock, tasks, timers, children,
//!   the readiness channel, signals. The driver (private) carries out the lifecycle's
//!   actions on it and decides nothing.
//! - [`inherit`]: adopting the handoff (or systemd's sockets): decoded, checked to be what
//!   it claims, made close-on-exec, taken by name.
//! - [`spawn`]: the executable resolved at start-up, and the successor's command with its
//!   fds renumbered to 3, 4, … by endless-core's plan.
//! - [`tracker`] and [`Tracked`]: connections counted for the drain, asked to close once
//!   idle, force-closed at the deadline.
//! - [`signals`]: which signal means which request.
//! - [`listen`]: binding fresh listeners; [`pidfile`]: the pid file; [`notify`]: sd_notify.
//! - [`control`]: a restart that reports its result, for deploy scripts
//!   ([`control::restart`]), and the control socket beside the pid file that answers it.
//! - [`takeover`]: handing established connections over the readiness channel
//!   (`SCM_RIGHTS`).
//! - [`state`]: handing the application's own state (a cache, counters, a session
//!   table) to the next generation, as one bounded, versioned blob it reads before ready.
//!
//! # Platforms
//!
//! Unix only. Linux is where it is tested; macOS (Intel and Apple silicon) and FreeBSD
//! are type-checked in CI, not tested. On any other target (Windows, …) the crate builds
//! but offers only [`Endless::start`] and [`Builder`], which fail with a typed "unsupported
//! platform" error (the `unsupported` module), so that an application can depend on
//! endless unconditionally and use it under `#[cfg(unix)]`.
//!
//! All `unsafe` code of endless lives in one private module of this crate (`sys`), each
//! block with its safety argument.
//!
//! Most users want `endless-tokio` or `endless-smol`. An adapter for another runtime
//! implements [`Net`] (which names its sockets) and [`Runtime`] for a marker type of its
//! own, and names [`Endless`] for it:
//!
//! ```no_run
//! use endless_unix::{Endless, Net};
//! # fn adapter<MyRuntime: Net>() -> Result<(), Box<dyn std::error::Error>> {
//! let endless = Endless::<MyRuntime>::builder().pid_file("/run/app.pid").start()?;
//! let listener = endless.tcp_listener("http", "127.0.0.1:8080")?;
//! // … `listener.accept()` until it returns `Ok(None)`: each connection is tracked …
//! endless.ready();
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]
// The crate docs describe the Unix API, which other targets do not have.
#![cfg_attr(not(unix), allow(rustdoc::broken_intra_doc_links))]

#[cfg(unix)]
pub mod adapter;
#[cfg(unix)]
mod channel;
#[cfg(unix)]
mod child;
#[cfg(unix)]
pub mod control;
#[cfg(unix)]
mod driver;
#[cfg(unix)]
mod handle;
#[cfg(unix)]
pub mod inherit;
#[cfg(unix)]
pub mod listen;
#[cfg(unix)]
pub mod notify;
#[cfg(unix)]
mod outbox_queue;
#[cfg(unix)]
pub mod pidfile;
#[cfg(unix)]
pub mod runtime;
#[cfg(unix)]
pub mod signals;
#[cfg(unix)]
pub mod spawn;
#[cfg(unix)]
pub mod state;
#[cfg(unix)]
pub mod supervisor;
#[cfg(unix)]
#[allow(unsafe_code)]
mod sys;
#[cfg(unix)]
pub mod takeover;
#[cfg(unix)]
mod tracked;
#[cfg(unix)]
pub mod tracker;

#[cfg(unix)]
pub use adapter::{Builder, Endless, Net};
#[cfg(unix)]
pub use handle::{EventHook, Exit, ListenError, StartError};
#[cfg(unix)]
pub use runtime::{BoxFuture, ChildProcess, Readable, ReadinessReader, Runtime};
#[cfg(unix)]
pub use signals::{Signal, SignalMap};
#[cfg(unix)]
pub use tracked::Tracked;
#[cfg(unix)]
pub use tracker::{ConnectionGuard, Tracker};

/// The lifecycle types, re-exported from endless-core.
pub use endless_core as core;

#[cfg(not(unix))]
pub mod unsupported;
#[cfg(not(unix))]
pub use unsupported::{Builder, Endless, StartError};
