//! End-to-end tests of zero-downtime restarts with endless-tokio, against the example
//! server `echo-tokio`: real processes on 127.0.0.1, every one of them killed and reaped
//! however a test ends. The scenarios live in `support/scenarios.rs`, shared with the
//! other runtimes' example servers; each test here runs one of them on this binary.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;

use support::scenarios;

fn echo_tokio() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-tokio"))
}

#[test]
fn in_flight_request_completes_across_a_restart() {
    scenarios::in_flight_request(echo_tokio());
}

#[test]
fn twenty_restarts_leak_nothing() {
    scenarios::twenty_restarts(echo_tokio());
}

#[test]
fn malformed_variables_are_refused() {
    scenarios::malformed_variables(echo_tokio());
}

#[test]
fn variables_for_another_process_are_ignored() {
    scenarios::variables_for_another_process(echo_tokio());
}

#[test]
fn bad_inherited_fds_are_refused() {
    scenarios::bad_inherited_fds(echo_tokio());
}

#[test]
fn closed_fd_declared_other_is_refused() {
    scenarios::closed_fd_declared_other_is_refused(echo_tokio());
}

#[test]
fn executable_missing_or_not_executable() {
    scenarios::executable_missing_or_not_executable(echo_tokio());
}

#[test]
fn new_binary_exits_before_ready() {
    scenarios::new_binary_exits_before_ready(echo_tokio());
}

#[test]
fn new_binary_never_ready_is_killed() {
    scenarios::new_binary_never_ready(echo_tokio());
}

#[test]
fn hup_burst() {
    scenarios::hup_burst(echo_tokio());
}

#[test]
fn term_while_child_starting() {
    scenarios::term_while_child_starting(echo_tokio());
}

#[test]
fn replaced_binary_runs_new_code() {
    scenarios::replaced_binary_runs(echo_tokio());
}

#[test]
fn symlink_switch_runs_new_release() {
    scenarios::symlink_switch_runs_new_release(echo_tokio());
}

#[test]
fn subprocess_sees_no_listener() {
    scenarios::subprocess_sees_no_listener(echo_tokio());
}

#[test]
fn unix_socket_restart() {
    scenarios::unix_socket_restart(echo_tokio());
}

#[test]
fn unclaimed_listener_is_closed() {
    scenarios::unclaimed_listener_is_closed(echo_tokio());
}

#[test]
fn restarts_under_load() {
    scenarios::restarts_under_load(echo_tokio(), 16, 60);
}

#[test]
fn drain_deadline_closes_what_is_left() {
    scenarios::drain_deadline_closes_what_is_left(echo_tokio());
}

#[test]
fn hammer_closes_what_is_left() {
    scenarios::hammer_closes_what_is_left(echo_tokio());
}

#[test]
fn term_stops_gracefully() {
    scenarios::term_stops_gracefully(echo_tokio());
}

#[test]
fn udp_socket_restart() {
    scenarios::udp_socket_restart(echo_tokio());
}

#[test]
fn ipv6_listener_restart() {
    scenarios::ipv6_listener_restart(echo_tokio());
}

#[test]
fn several_listeners_restart() {
    scenarios::several_listeners_restart(echo_tokio());
}

#[test]
fn tcp_listen_address_change_binds_anew() {
    scenarios::tcp_listen_address_changes(echo_tokio());
}

#[test]
fn udp_listen_address_change_binds_anew() {
    scenarios::udp_listen_address_changes(echo_tokio());
}

#[test]
fn unix_listen_path_change_binds_anew() {
    scenarios::unix_listen_path_changes(echo_tokio());
}

#[test]
fn unix_path_written_differently_keeps_listener() {
    scenarios::unix_path_written_differently_keeps_listener(echo_tokio());
}
