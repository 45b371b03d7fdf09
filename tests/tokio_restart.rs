//! End-to-end tests of zero-downtime restarts with endless-tokio, against the example
//! server `echo-tokio`: real processes on 127.0.0.1, every one of them killed and reaped
//! however a test ends. The scenarios live in `endless_test_support::scenarios`, shared with
//! the other runtimes' example servers (`smol_restart.rs`); `restart_scenarios!` makes one
//! test of each for this binary.

use std::path::Path;

fn echo_tokio() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-tokio"))
}

endless_test_support::scenarios::restart_scenarios!(echo_tokio());
