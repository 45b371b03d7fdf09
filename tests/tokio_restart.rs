//! End-to-end tests of zero-downtime restarts with endless-tokio, against the example
//! server `echo-tokio`: real processes on 127.0.0.1, every one of them killed and reaped
//! however a test ends. The scenarios live in `support/scenarios.rs`, shared with the
//! other runtimes' example servers (`smol_restart.rs`); `restart_scenarios!` makes one test
//! of each for this binary.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;

fn echo_tokio() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-tokio"))
}

support::scenarios::restart_scenarios!(echo_tokio());
