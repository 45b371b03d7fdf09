//! End-to-end tests of zero-downtime restarts with endless-smol, against the example
//! servers `echo-smol` and `echo-async-std`: the very scenarios `tokio_restart.rs` runs
//! against `echo-tokio` (`endless_test_support::scenarios`), one module per binary; and
//! handovers between a smol build and a tokio build of the same application, both ways.

use std::path::Path;

use endless_test_support::scenarios;

fn echo_smol() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-smol"))
}

fn echo_async_std() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-async-std"))
}

fn echo_tokio() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-tokio"))
}

mod smol {
    use super::*;

    scenarios::restart_scenarios!(echo_smol());
}

mod async_std {
    use super::*;

    scenarios::restart_scenarios!(echo_async_std());
}

#[test]
fn smol_hands_over_to_tokio_and_back() {
    scenarios::interop((echo_smol(), "smol"), (echo_tokio(), "tokio"));
}

#[test]
fn tokio_hands_over_to_async_std_and_back() {
    scenarios::interop((echo_tokio(), "tokio"), (echo_async_std(), "async-std"));
}
