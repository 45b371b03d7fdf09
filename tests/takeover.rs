//! End-to-end tests of connection takeover, against the example server `pingpong`: each
//! line is answered with `<pid> <count> <line>`, `count` the connection's session counter,
//! and on a restart every connection, with its counter, moves to the new generation instead
//! of being drained. Real processes on 127.0.0.1, every one killed and reaped however a
//! test ends.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Conn, DEADLINE, Exit, Options, Server, wait_for};

fn pingpong() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pingpong"))
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
#[test]
fn a_session_survives_ten_restarts() {
    let server = Server::start(pingpong(), &Options::default());
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
        // over instead of waiting for the client to hang up.
        generations.push(server.restart());
    }
    let last = server.pid();
    wait_for(
        "the pinger to be answered by the last generation",
        DEADLINE,
        || (seen.lock().unwrap().last() == Some(&last)).then_some(()),
    );
    stop.store(true, Ordering::SeqCst);
    let count = pinger.join().expect("the pinger saw every answer");
    let pids = seen.lock().unwrap().clone();
    assert!(count > 20, "only {count} pings");
    // In order, each generation at most once: the connection only ever moved forward.
    let mut seen = generations.iter();
    for pid in &pids {
        assert!(
            seen.any(|g| g == pid),
            "answers came from {pids:?}, generations were {generations:?}"
        );
    }
}

/// 1,000 connections move in one restart; each keeps its counter.
#[test]
fn a_thousand_connections_move_in_one_restart() {
    const N: usize = 1000;
    raise_fd_limit(2 * N + 200);
    let server = Server::start(pingpong(), &Options::default());
    let old = server.pid();
    let mut conns: Vec<Conn> = (0..N).map(|_| server.connect()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(ping(conn, &format!("c{i}"), 1), old);
    }
    let started = Instant::now();
    let new = server.restart();
    let took = started.elapsed();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(ping(conn, &format!("c{i}"), 2), new, "connection {i}");
    }
    eprintln!("{N} connections handed over: SIGHUP to the old generation's exit in {took:?}");
}

/// The new generation dies while connections move: those it had not taken stay with the
/// old generation, which goes on serving them with their counters.
#[test]
fn a_transfer_cut_short_leaves_the_old_generation_serving() {
    const N: usize = 30;
    // The new generation waits 100 ms before it takes each connection: the transfer takes
    // about 3 s, and the kill lands in the middle of it.
    let options = Options::default().env("PINGPONG_TAKE_DELAY_MS", "100");
    let server = Server::start(pingpong(), &options);
    let old = server.pid();
    let mut conns: Vec<Conn> = (0..N).map(|_| server.connect()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(ping(conn, &format!("c{i}"), 1), old);
    }
    let new = server.hup();
    // Kill it once it took a few connections (it logs each one).
    wait_for("the new generation to take 3 connections", DEADLINE, || {
        let taken = server.group.stderr.count_from(0, |l| {
            l.contains("session taken over") && support::has_field(l, "pid", new)
        });
        (taken >= 3).then_some(())
    });
    support::signal(new, libc::SIGKILL);
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
    assert!(support::is_alive(old));
    eprintln!("transfer cut short: {kept} connections kept, {lost} lost with the new generation");
}

/// A new version that does not take connections (here: another server, without a
/// `pingpong` receiver) leaves them with the old generation, which drains them as usual;
/// new connections go to the new version.
#[test]
fn a_successor_that_takes_nothing_leaves_the_connections_here() {
    let server = Server::start(pingpong(), &Options::default());
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

/// Raises this process's soft limit of open files to at least `wanted` (the servers it
/// starts inherit it), or fails saying why.
fn raise_fd_limit(wanted: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one `rlimit` that outlives the calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let wanted = wanted as libc::rlim_t;
        if limit.rlim_cur >= wanted {
            return;
        }
        assert!(
            limit.rlim_max >= wanted,
            "this test needs {wanted} open files; the hard limit is {}",
            limit.rlim_max
        );
        limit.rlim_cur = wanted;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}
