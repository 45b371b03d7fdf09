//! End-to-end tests of the supervisor mode (issue 16): the HTTP examples on tokio
//! (`hello-hyper`) and smol (`hello-smol`) as PID 1 of a fresh PID namespace, as a
//! container runs them, and outside one with `ENDLESS_SUPERVISE=1`. The scenarios live in
//! `endless_test_support::supervised`.

use std::path::Path;

use endless_test_support::supervised::{self, Launch};

fn hello_hyper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hello-hyper"))
}

fn hello_smol() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hello-smol"))
}

#[test]
fn pid1_tokio_ten_restarts_under_load() {
    supervised::require_unshare();
    supervised::ten_restarts_under_load(hello_hyper(), Launch::Namespace);
}

#[test]
fn pid1_smol_ten_restarts_under_load() {
    supervised::require_unshare();
    supervised::ten_restarts_under_load(hello_smol(), Launch::Namespace);
}

#[test]
fn requested_tokio_ten_restarts_under_load() {
    supervised::ten_restarts_under_load(hello_hyper(), Launch::Requested);
}

#[test]
fn requested_smol_ten_restarts_under_load() {
    supervised::ten_restarts_under_load(hello_smol(), Launch::Requested);
}

#[test]
fn pid1_bad_binaries_leave_the_service_up() {
    supervised::require_unshare();
    supervised::bad_binaries_leave_the_service_up(hello_hyper(), Launch::Namespace);
}

#[test]
fn requested_smol_bad_binaries_leave_the_service_up() {
    supervised::bad_binaries_leave_the_service_up(hello_smol(), Launch::Requested);
}

#[test]
fn pid1_reaps_orphans() {
    supervised::require_unshare();
    supervised::orphans_are_reaped(hello_hyper(), Launch::Namespace);
}

#[test]
fn requested_reaps_orphans() {
    supervised::orphans_are_reaped(hello_smol(), Launch::Requested);
}

#[test]
fn pid1_supervisor_stays_flat_over_fifty_restarts() {
    supervised::require_unshare();
    supervised::supervisor_stays_flat(hello_hyper(), Launch::Namespace);
}

#[test]
fn pid1_staged_upgrade_commit_and_rollback_reach_the_stager() {
    supervised::require_unshare();
    supervised::staged_upgrade(hello_hyper(), Launch::Namespace);
}
