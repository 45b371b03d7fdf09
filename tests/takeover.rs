//! End-to-end tests of connection takeover, against the example server `pingpong`: each
//! line is answered with `<pid> <count> <line>`, `count` the connection's session counter,
//! and on a restart every connection, with its counter, moves to the new generation instead
//! of being drained. Real processes on 127.0.0.1, every one killed and reaped however a
//! test ends.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endless_test_support::{Conn, DEADLINE, Exit, Options, Server, wait_for};
use rustix::process::{Resource, Rlimit, Signal};

fn pingpong() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pingpong"))
}

fn pingpong_smol() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pingpong-smol"))
}

fn pingpong_async_std() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pingpong-async-std"))
}

/// One test per scenario for a server binary.
macro_rules! takeover_scenarios {
    ($module:ident, $bin:expr, $many:expr) => {
        mod $module {
            #[test]
            fn a_session_survives_ten_restarts() {
                super::a_session_survives_ten_restarts($bin);
            }
            #[test]
            fn many_connections_move_in_one_restart() {
                super::many_connections_move_in_one_restart($bin, $many);
            }
            #[test]
            fn a_transfer_cut_short_leaves_the_old_generation_serving() {
                super::a_transfer_cut_short_leaves_the_old_generation_serving($bin);
            }
            #[test]
            fn a_successor_that_takes_nothing_leaves_the_connections_here() {
                super::a_successor_that_takes_nothing_leaves_the_connections_here($bin);
            }
            #[test]
            fn a_staged_upgrade_takes_the_sessions_at_commit() {
                super::a_staged_upgrade_takes_the_sessions_at_commit($bin);
            }
        }
    };
}

// 10,000 sessions on tokio (batched takeover: many sockets per message); 1,000 on the
// others, which share the same code below the runtime.
takeover_scenarios!(tokio, super::pingpong(), 10_000);
takeover_scenarios!(smol, super::pingpong_smol(), 1000);
takeover_scenarios!(async_std, super::pingpong_async_std(), 1000);

/// One session moves across runtimes: tokio → smol → async-std → tokio.
#[test]
fn a_session_moves_between_runtimes() {
    let server = Server::start(pingpong(), &Options::default());
    let mut conn = server.connect();
    assert_eq!(ping(&mut conn, "tokio", 1), server.pid());
    let mut count = 1;
    for (bin, name) in [
        (pingpong_smol(), "smol"),
        (pingpong_async_std(), "async-std"),
        (pingpong(), "tokio"),
    ] {
        server.replace_exe(&std::fs::read(bin).expect("read the server binary"), 0o755);
        let new = server.restart();
        count += 1;
        assert_eq!(ping(&mut conn, name, count), new, "on {name}");
    }
}

fn echo_tokio() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_echo-tokio"))
}

/// Sends `line` and checks the answer: it echoes the line, and the counter is `count`.
/// Returns the pid that answered.
fn ping(conn: &mut Conn, line: &str, count: u64) -> u32 {
    let (pid, rest) = conn
        .ask(line)
        .unwrap_or_else(|e| panic!("ping {line:?} (count {count}): {e}"));
    assert_eq!(rest, format!("{count} {line}"), "answer from {pid}");
    pid
}

/// A client that pings every 10 ms over one connection sees no disconnect, no lost or
/// repeated answer, and a counter that keeps counting across 10 restarts.
fn a_session_survives_ten_restarts(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let first = server.pid();
    let mut conn = server.connect();
    assert_eq!(ping(&mut conn, "hello", 1), first);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(vec![first]));
    let pinger = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || {
            let mut count = 1;
            while !stop.load(Ordering::SeqCst) {
                count += 1;
                let pid = ping(&mut conn, &format!("ping {count}"), count);
                let mut seen = seen.lock().unwrap();
                if seen.last() != Some(&pid) {
                    seen.push(pid);
                }
                drop(seen);
                // A ping every 10 ms: the pace of the client, not a wait for the server.
                std::thread::sleep(Duration::from_millis(10));
            }
            count
        })
    };
    let mut generations = vec![first];
    for _ in 0..10 {
        // `restart` waits for the old generation to exit with 0: it handed its connection
        // over instead of waiting for the client to hang up. Then the session must be
        // answered by the new generation before the next restart.
        let new = server.restart();
        generations.push(new);
        wait_for(
            format_args!("the pinger to be answered by {new}"),
            DEADLINE,
            || (seen.lock().unwrap().last() == Some(&new)).then_some(()),
        );
    }
    stop.store(true, Ordering::SeqCst);
    let count = pinger.join().expect("the pinger saw every answer");
    // Every generation answered the session, in order, and the counter never skipped or
    // repeated (each answer was checked).
    assert_eq!(*seen.lock().unwrap(), generations, "after {count} pings");
}

/// `n` connections move in one restart; each keeps its counter.
fn many_connections_move_in_one_restart(bin: &Path, n: usize) {
    // This test's clients (the servers inherit the limit: the new generation holds every
    // connection, the old one too until each moves), beside the other tests' (two at a
    // time on CI, one per CPU; at most 1,000 clients each).
    raise_fd_limit(n + 2500);
    // The old generation's count of messages (debug).
    let options = Options::default().env("RUST_LOG", "info,endless_unix::takeover=debug");
    let server = Server::start(bin, &options);
    let old = server.pid();
    let mut conns: Vec<Conn> = (0..n).map(|_| server.connect()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(ping(conn, &format!("c{i}"), 1), old);
    }
    let started = Instant::now();
    let new = server.restart();
    let took = started.elapsed();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(ping(conn, &format!("c{i}"), 2), new, "connection {i}");
    }
    // Many sockets a message from the first one (the new generation says it reads batches
    // with its readiness line): at most 253 a message, so at least n / 253, and far fewer
    // than one a connection (44 for 10,000 in one run; the first ~250 one a message, as
    // when the new generation's word came late, would be over the bound).
    // The last count before the end (logged before the last connection's guard goes, so
    // before the old generation can exit).
    let ended = server
        .group
        .stderr
        .last_from(0, |l| {
            l.contains("every connection offered so far is answered")
                && endless_test_support::has_field(l, "successor", new)
        })
        .expect("the old generation logs its answered handover");
    let messages: usize = ended
        .split_whitespace()
        .find_map(|w| w.strip_prefix("messages="))
        .and_then(|m| {
            m.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no message count in {ended:?}"));
    assert!(
        messages >= n.div_ceil(253) && messages <= n / 60,
        "{n} connections in {messages} messages"
    );
    eprintln!(
        "{n} connections handed over in {messages} messages: SIGHUP to the old generation's exit in {took:?}"
    );
}

/// The new generation dies while connections move: those it had not taken stay with the
/// old generation, which goes on serving them with their counters.
fn a_transfer_cut_short_leaves_the_old_generation_serving(bin: &Path) {
    const N: usize = 30;
    // The new generation waits 100 ms before it takes each connection: the transfer takes
    // about 3 s, and the kill lands in the middle of it.
    let options = Options::default().env("PINGPONG_TAKE_DELAY_MS", "100");
    let server = Server::start(bin, &options);
    let old = server.pid();
    let mut conns: Vec<Conn> = (0..N).map(|_| server.connect()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(ping(conn, &format!("c{i}"), 1), old);
    }
    let new = server.hup();
    // Kill it once it took a few connections (it logs each one).
    wait_for("the new generation to take 3 connections", DEADLINE, || {
        let taken = server.group.stderr.count_from(0, |l| {
            l.contains("session taken over") && endless_test_support::has_field(l, "pid", new)
        });
        (taken >= 3).then_some(())
    });
    endless_test_support::signal(new, Signal::KILL);
    // Its parent, the old generation, reaps it.
    server.group.wait_gone(new);

    // Every connection the new generation had not taken is still served by the old one,
    // counting on; the ones it took died with it.
    let mut kept = 0;
    let mut lost = 0;
    for (i, conn) in conns.iter_mut().enumerate() {
        match conn.ask(&format!("c{i}")) {
            Ok((pid, rest)) => {
                assert_eq!(pid, old, "connection {i}");
                assert_eq!(rest, format!("2 c{i}"), "connection {i}");
                kept += 1;
            }
            Err(_) => lost += 1,
        }
    }
    assert!(
        lost >= 3,
        "the connections taken died with the new generation"
    );
    assert!(
        kept > 0,
        "no connection stayed with the old generation ({lost} lost)"
    );
    // And it goes on serving them.
    for (i, conn) in conns.iter_mut().enumerate() {
        if let Ok((pid, rest)) = conn.ask(&format!("again{i}")) {
            assert_eq!((pid, rest), (old, format!("3 again{i}")));
        }
    }
    assert!(endless_test_support::is_alive(old));
    eprintln!("transfer cut short: {kept} connections kept, {lost} lost with the new generation");
}

/// A new version that does not take connections (here: another server, without a
/// `pingpong` receiver) leaves them with the old generation, which drains them as usual;
/// new connections go to the new version.
fn a_successor_that_takes_nothing_leaves_the_connections_here(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    let mut conn = server.connect();
    assert_eq!(ping(&mut conn, "a", 1), old);
    let echo = std::fs::read(echo_tokio()).expect("read echo-tokio");
    server.replace_exe(&echo, 0o755);
    let new = server.hup();
    // The old generation still serves the session, counting on.
    assert_eq!(ping(&mut conn, "b", 2), old);
    assert_eq!(ping(&mut conn, "c", 3), old);
    // New connections are the new version's (echo answers `<pid> <line>`).
    assert_eq!(server.ask("hello"), (new, "hello".to_owned()));
    drop(conn);
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
}

/// A staged upgrade (`SIGUSR1`): both generations serve, the session stays with the old
/// one; at the commit (`SIGQUIT`) it moves to the staged one, counting on, and the old one
/// exits 0.
fn a_staged_upgrade_takes_the_sessions_at_commit(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    let mut conn = server.connect();
    assert_eq!(ping(&mut conn, "a", 1), old);
    let mark = server.group.stderr.len();
    server.group.signal(old, Signal::USR1);
    let staged = endless_test_support::scenarios::spawned_child(&server, mark);
    endless_test_support::scenarios::wait_staged(&server, mark);
    server.wait_pid_file(staged);
    assert_eq!(ping(&mut conn, "b", 2), old, "staged: the session stays");
    server.group.signal(old, Signal::QUIT);
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    assert_eq!(
        ping(&mut conn, "c", 3),
        staged,
        "committed: the session moved"
    );
    server.set_pid(staged);
}

/// Raises this process's soft limit of open files to its hard limit (the servers it starts
/// inherit it: the tests of this binary run in parallel, each with its clients), or fails
/// saying why when that is below `wanted`.
fn raise_fd_limit(wanted: usize) {
    // `None` is unlimited.
    let limit = rustix::process::getrlimit(Resource::Nofile);
    let wanted = u64::try_from(wanted).expect("a count of files fits u64");
    assert!(
        limit.maximum.is_none_or(|max| max >= wanted),
        "this test needs {wanted} open files; the hard limit is {:?}",
        limit.maximum
    );
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    rustix::process::setrlimit(Resource::Nofile, raised).expect("setrlimit(RLIMIT_NOFILE)");
}
