//! End-to-end tests of application state handed to the next generation
//! (`Endless::hand_over_state` / `Endless::inherited_state`), against the echo servers with
//! `--state-version N`: they count the lines they answer (`count` answers the count) and
//! hand the count to each successor as application state of version N. Real processes on
//! 127.0.0.1, every one killed and reaped however a test ends.

use std::path::Path;

use endless_test_support::{Options, Server, has_field, sh_quote, sh_script};

fn echo_tokio() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-tokio"))
}

fn echo_smol() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-smol"))
}

fn with_state(version: &str) -> Options {
    Options::default().arg("--state-version").arg(version)
}

/// Asks `count` of the serving generation: the lines the service answered before.
fn count(server: &Server) -> u64 {
    let (pid, count) = server.ask("count");
    assert_eq!(pid, server.pid(), "answered by the serving generation");
    count
        .parse()
        .unwrap_or_else(|_| panic!("a count, not {count:?}"))
}

/// Makes the next generation run the real binary with `extra` appended to its arguments
/// (the last `--state-version` wins).
fn next_generation_with(server: &Server, extra: &str) {
    let script = format!("exec {} \"$@\" {extra}", sh_quote(server.real_binary()));
    server.replace_exe(&sh_script(&script), 0o755);
}

/// The count goes from generation to generation: every line any of them answered counts.
fn the_count_travels_with_each_restart(bin: &Path) {
    let server = Server::start(bin, &with_state("1"));
    assert_eq!(count(&server), 0, "a fresh start inherits nothing");
    for line in ["a", "b", "c"] {
        server.ask(line);
    }
    assert_eq!(count(&server), 4);

    for expected in [5, 6] {
        let mark = server.group.stderr.len();
        let old = server.pid();
        let new = server.restart();
        assert_ne!(new, old);
        assert_eq!(
            count(&server),
            expected,
            "the new generation {new} goes on counting"
        );
        let handed = server.group.stderr.find_from(mark, |l| {
            l.contains("handing application state to the new generation")
                && has_field(l, "version", 1)
                && has_field(l, "bytes", 8)
        });
        assert!(
            handed.is_some(),
            "the old generation {old} logs what it hands over"
        );
        let dropped = server
            .group
            .stderr
            .find_from(mark, |l| l.contains("did not read before ready"));
        assert_eq!(dropped, None, "the state was read");
    }
}

/// A successor that expects another version of the state is told so, starts from 0, and
/// serves.
fn a_successor_expecting_another_version_starts_cold(bin: &Path) {
    let server = Server::start(bin, &with_state("1"));
    server.ask("a");
    assert_eq!(count(&server), 1);
    next_generation_with(&server, "--state-version 2");
    let mark = server.group.stderr.len();
    server.restart();
    server
        .group
        .stderr
        .wait_from("the successor to report the version mismatch", mark, |l| {
            l.contains("application state of version 1, this process expects version 2")
        });
    assert_eq!(count(&server), 0);

    // It hands over version 2 in turn (its count, 1): a successor that expects 2 gets it.
    server.restart();
    assert_eq!(count(&server), 1);
}

/// A successor that reads no state (it expects none) is warned at ready, with the version
/// and size of what it dropped, and serves.
fn a_successor_expecting_no_state_drops_it_with_a_warning(bin: &Path) {
    let server = Server::start(bin, &with_state("7"));
    server.ask("a");
    next_generation_with(&server, "--state-version none");
    let mark = server.group.stderr.len();
    server.restart();
    server.group.stderr.wait_from(
        "the successor to warn about the state it did not read",
        mark,
        |l| {
            l.contains("did not read before ready")
                && has_field(l, "version", 7)
                && has_field(l, "bytes", 8)
        },
    );
    assert_eq!(count(&server), 0);
}

macro_rules! state_scenarios {
    ($module:ident, $bin:expr) => {
        mod $module {
            #[test]
            fn the_count_travels_with_each_restart() {
                super::the_count_travels_with_each_restart($bin);
            }
            #[test]
            fn a_successor_expecting_another_version_starts_cold() {
                super::a_successor_expecting_another_version_starts_cold($bin);
            }
            #[test]
            fn a_successor_expecting_no_state_drops_it_with_a_warning() {
                super::a_successor_expecting_no_state_drops_it_with_a_warning($bin);
            }
        }
    };
}

state_scenarios!(tokio, super::echo_tokio());
state_scenarios!(smol, super::echo_smol());
