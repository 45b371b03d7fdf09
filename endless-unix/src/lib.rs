//! The runtime-neutral Unix half of [endless](https://github.com/endless-rs/endless):
//! everything `endless-tokio` and `endless-smol` share, so that each of them is a thin
//! adapter.
//!
//! - [`inherit`]: adopting the fds a parent (or systemd) handed over: decoded, checked to
//!   be what they claim, made close-on-exec, taken by name.
//! - [`spawn`]: the executable resolved at start-up, and the child's command with its fds
//!   renumbered to 3, 4, … after `fork` by endless-core's plan.
//! - [`tracker`] and [`Tracked`]: connections counted for the drain, asked to close once
//!   idle, force-closed at the deadline.
//! - [`signals`]: which signal means which request.
//! - [`listen`]: binding fresh listeners; [`pidfile`]: the pid file; [`notify`]: telling
//!   systemd (`NOTIFY_SOCKET`) that the service is ready, restarting or stopping.
//! - [`control`]: a restart that reports its result, for deploy scripts
//!   ([`control::restart`]), and the restart status file beside the pid file that answers it.
//! - [`takeover`]: handing established connections (socket, state, unconsumed bytes) to
//!   the new generation over its readiness channel (`SCM_RIGHTS`), instead of draining them.
//! - [`driver`]: the task that owns the lifecycle, generic over a small [`Runtime`] trait.
//! - [`adapter`]: the typed API of the adapters ([`adapter::Endless`], its builder and
//!   listeners), written once and generic over a runtime's sockets ([`Net`]).
//!
//! All `unsafe` code of endless lives in one private module of this crate (`sys`), each
//! block with its safety argument.
//!
//! Most users want `endless-tokio` or `endless-smol`. An adapter for another runtime
//! implements [`Net`] (which names its sockets) and [`Runtime`], and uses
//! [`adapter::Endless`]; or, at a lower level, hands a [`Runtime`] to [`Handle::start`]:
//!
//! ```no_run
//! use endless_unix::{Handle, Options, Runtime};
//! # fn adapter<R: Runtime>(my_runtime: R) -> Result<(), Box<dyn std::error::Error>> {
//! let endless = Handle::start(my_runtime, Options::new())?;
//! let listener = endless.tcp_listener("http", "127.0.0.1:8080")?;
//! // … accept on `listener` until `endless.stopped_accepting()`, tracking each
//! // connection with `endless.track(&stream)` …
//! endless.ready();
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod adapter;
pub mod control;
mod driver;
pub mod handle;
pub mod inherit;
pub mod listen;
pub mod notify;
pub mod pidfile;
pub mod runtime;
pub mod signals;
pub mod spawn;
#[allow(unsafe_code)]
mod sys;
pub mod takeover;
mod tracked;
pub mod tracker;

pub use adapter::Net;
pub use handle::{EventHook, Exit, Handle, ListenError, Options, StartError};
pub use runtime::{BoxFuture, ChildProcess, PipeReader, Runtime};
pub use signals::{Signal, SignalMap};
pub use tracked::Tracked;
pub use tracker::{ConnectionGuard, Tracker};

/// The lifecycle types, re-exported from endless-core.
pub use endless_core as core;
