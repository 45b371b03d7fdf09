//! A line server whose connections survive restarts: connection takeover on endless-tokio.
//!
//! Each connection has a session counter. Every line `L` is answered with
//! `<pid> <count> <L>`, where `count` is the number of lines this connection has sent so
//! far, this one included. On a restart the old generation does not wait for its
//! connections to end: once the new generation is ready, it stops reading each one at a
//! line boundary and hands it over — socket, counter, and any part of a line it read but
//! did not answer yet — and the new generation answers the next line, counting on. The
//! client sees no disconnect and no lost or repeated answer; only the pid changes.
//!
//! ```text
//! cargo run -p endless-examples --bin pingpong -- --listen 127.0.0.1:7000
//! nc 127.0.0.1 7000          # type lines: `<pid> 1 a`, `<pid> 2 b`, …
//! kill -HUP <pid>            # the same connection goes on: `<new pid> 3 c`
//! ```
//!
//! A connection the new generation does not take (an older version without the
//! `pingpong` receiver, or one that dies while the connections move) stays with the old
//! generation, which serves it until the client hangs up or the drain deadline.
//!
//! `PINGPONG_TAKE_DELAY_MS` (default 0) makes the new generation wait that long before it
//! takes each connection, to slow a takeover down for tests and demonstrations.

use endless_examples::pingpong::{RECEIVER, Session, take_delay};
use endless_examples::{Args, ListenAddr, accept_loop, announce, init_logging};
use endless_tokio::{Endless, Stream, Tracked};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let endless: Endless = args.start_endless();
    // Before ready: the previous generation hands over right after it.
    let connections = match endless.receive_connections(RECEIVER) {
        // Slowed down (see `take_delay`): one at a time, each as it is taken.
        Ok(connections) if take_delay().is_some() => connections.take_at_most(1),
        Ok(connections) => connections,
        Err(e) => {
            tracing::error!(error = %e, "cannot receive connections");
            std::process::exit(1);
        }
    };
    for (i, addr) in args.listen.iter().enumerate() {
        let name = Args::listener_name(i);
        if let Err(e) = listen(&endless, &name, addr) {
            tracing::error!(%name, %addr, error = %e, "cannot listen");
            std::process::exit(1);
        }
    }
    let take_delay = take_delay();
    let receiving = endless.clone();
    tokio::spawn(async move {
        let mut taken = 0u64;
        loop {
            if let Some(delay) = take_delay {
                tokio::time::sleep(delay).await;
            }
            let Some(received) = connections.next().await else {
                break;
            };
            let session = Session::resume(&received.state, received.unconsumed);
            taken += 1;
            tracing::info!(
                pid = std::process::id(),
                count = session.count,
                "session taken over"
            );
            spawn_session(receiving.clone(), received.stream, session);
        }
        tracing::info!(taken, "connections taken over");
    });
    endless.ready();
    args.take_ballast();
    let exit = endless.run().await;
    std::process::exit(exit.code);
}

fn listen(endless: &Endless, name: &str, addr: &ListenAddr) -> std::io::Result<()> {
    match addr {
        ListenAddr::Tcp(addr) => {
            let listener = endless.tcp_listener(name, addr.as_str())?;
            announce(name, listener.local_addr()?);
            let endless = endless.clone();
            tokio::spawn(accept_loop(name.to_owned(), listener, move |stream| {
                spawn_session(endless.clone(), Stream::Tcp(stream), Session::default());
            }));
        }
        ListenAddr::Unix(path) => {
            let listener = endless.unix_listener(name, path)?;
            announce(name, format!("unix:{}", path.display()));
            let endless = endless.clone();
            tokio::spawn(accept_loop(name.to_owned(), listener, move |stream| {
                spawn_session(endless.clone(), Stream::Unix(stream), Session::default());
            }));
        }
        ListenAddr::Udp(_) => {
            return Err(std::io::Error::other(
                "pingpong speaks TCP and Unix sockets only",
            ));
        }
    }
    Ok(())
}

fn spawn_session(endless: Endless, stream: Stream, session: Session) {
    tokio::spawn(async move {
        match stream {
            Stream::Tcp(s) => {
                let kind: Kind<_> = (Stream::Tcp, |s: Stream| s.into_tcp().ok());
                serve(endless, s, kind, session).await;
            }
            Stream::Unix(s) => {
                let kind: Kind<_> = (Stream::Unix, |s: Stream| s.into_unix().ok());
                serve(endless, s, kind, session).await;
            }
        }
    });
}

/// How a session's stream goes into the kind-erased [`Stream`] and back.
type Kind<S> = (fn(Tracked<S>) -> Stream, fn(Stream) -> Option<Tracked<S>>);

/// Serves one connection: answers each complete line, and hands the connection over (at a
/// line boundary, with its session) once the process drains.
async fn serve<S>(
    endless: Endless,
    mut stream: Tracked<S>,
    (wrap, unwrap): Kind<S>,
    mut session: Session,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Tracked<S>: AsyncRead + AsyncWrite + Unpin,
{
    let closing = stream.guard().tracker();
    let mut handover_tried = false;
    let mut chunk = [0u8; 4096];
    let mut received = 0;
    loop {
        let answers = session.feed(&chunk[..received]);
        if stream.write_all(answers.as_bytes()).await.is_err() {
            return;
        }
        received = 0;
        tokio::select! {
            // `read` is cancel-safe: nothing is lost when the drain wins.
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => received = n,
            },
            () = closing.closing(), if !handover_tried => {
                handover_tried = true;
                if !endless.can_hand_over() {
                    // Stopping (or the new generation takes nothing): serve on until the
                    // client hangs up or the drain deadline.
                    continue;
                }
                let state = session.state();
                match endless.hand_over(wrap(stream), RECEIVER, &state, &session.pending).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "connection kept");
                        // Still ours, and nothing was read meanwhile: serve on, without
                        // offering it again.
                        match e.connection.and_then(unwrap) {
                            Some(back) => stream = back,
                            None => return,
                        }
                    }
                }
            }
        }
    }
}
