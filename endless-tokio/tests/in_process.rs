//! endless-tokio inside one process, without a restart: what the end-to-end tests cannot
//! see from outside. A signal configured in the `SignalMap` reaches the lifecycle through
//! `tokio::signal`; the event hook sees each request before it is acted on and each
//! transition after it (endless' PRE/POST hooks); the accept loop ends without the
//! listening socket being closed; the drain deadline shuts down a connection that the
//! application still holds, although the process lives on, and the connection's tracker
//! knows that deadline beforehand.
//!
//! One test only: it signals its own process, and `SIGUSR1` kills a process that has no
//! handler for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endless_core::{ExitReason, Phase};
use endless_tokio::{Config, Endless, Event, Request, Signal, SignalMap};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_signal_stops_hooks_see_it_and_the_deadline_closes_what_is_held() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let endless = Endless::builder()
        .config(Config::new().drain_timeout(Some(Duration::from_millis(300))))
        .signals(SignalMap::default().with(Signal::USR1, Request::Stop))
        .on_event(move |event| seen.lock().unwrap().push(event.clone()))
        .start()
        .unwrap();
    let listener = endless.tcp_listener("test", "127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The application keeps this connection, and never closes it.
    let (held, _peer) = listener.accept().await.unwrap().unwrap();
    let acceptor = tokio::spawn(async move {
        let next = listener.accept().await.unwrap();
        (next.is_none(), listener)
    });
    endless.ready();
    // What a websocket reads to say goodbye before the drain closes it.
    let tracker = held.guard().tracker();
    let deadline = tokio::spawn(async move {
        tracker.closing().await;
        tracker.drain_deadline()
    });

    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), endless.run())
        .await
        .expect("the lifecycle ends at the drain deadline");
    assert_eq!(exit.reason, ExitReason::DeadlinePassed);
    assert!(sent.elapsed() >= Duration::from_millis(300));
    // The lifecycle's deadline, as the connection's tracker carries it: the drain's start
    // (after the signal) plus the drain timeout, and passed by the time the lifecycle ended.
    let deadline = deadline
        .await
        .unwrap()
        .expect("a drain with a timeout has a deadline");
    assert!(
        deadline >= sent + Duration::from_millis(300),
        "{deadline:?}"
    );
    assert!(deadline <= Instant::now(), "{deadline:?}");

    // The connection is shut down, although `held` is still alive in this process.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the held connection is still open: {read:?}"
    );
    drop(held);

    // The accept loop ended with `Ok(None)`, and the listening socket is still open: a
    // connection queues in its backlog (for a next generation, after a restart).
    let (stopped, listener) = acceptor.await.unwrap();
    assert!(stopped, "accept did not return Ok(None) once stopped");
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("the listening socket was closed");
    drop(listener);

    // Each request before what it leads to, each transition after it happened.
    let events = events.lock().unwrap().clone();
    let at = |wanted: &Event| {
        events
            .iter()
            .position(|e| e == wanted)
            .unwrap_or_else(|| panic!("no {wanted:?} in {events:#?}"))
    };
    let requested = at(&Event::Requested(Request::Stop));
    let draining = at(&Event::StateChanged {
        from: Phase::Running,
        to: Phase::Draining,
    });
    let force_closing = at(&Event::ForceClosing {
        reason: ExitReason::DeadlinePassed,
    });
    let stopped = at(&Event::StateChanged {
        from: Phase::Draining,
        to: Phase::Stopped,
    });
    assert!(
        requested < draining && draining < force_closing && force_closing < stopped,
        "{events:#?}"
    );
}
