//! The smol and async-std examples' servers, written once over futures-io and endless-smol:
//! a runtime's binary only says how to spawn a task and what it is called.
//!
//! - [`echo`]: the echo line protocol ([`crate::echo`]) on TCP, Unix and UDP listeners.
//! - [`pingpong`]: the pingpong protocol ([`crate::pingpong`]), whose connections move to
//!   the next generation with their sessions (connection takeover).
//!
//! HTTP on smol and async-std is endless-hyper's, as on tokio (`crate::servers`).

use std::future::Future;
use std::io;
use std::pin::Pin;

use async_io::{Async, Timer};
use endless_smol::{Endless, Stream, Tracked};
use futures_lite::io::BufReader;
use futures_lite::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};

use crate::pingpong::{RECEIVER, Session, take_delay};
use crate::{Args, ListenAddr, accept_loop, announce};

/// Spawns a task on the application's runtime.
pub type Spawn = fn(Pin<Box<dyn Future<Output = ()> + Send>>);

/// Starts endless, serves the echo protocol on every `--listen` address, reports ready and
/// runs the lifecycle; returns the exit code.
pub async fn echo(args: Args, runtime: &'static str, spawn: Spawn) -> i32 {
    let endless: Endless = args.start_endless();
    crate::echo::carry_count(&endless, args.state_version);
    for (i, addr) in args.listen.iter().enumerate() {
        let name = Args::listener_name(i);
        if let Err(e) = echo_listen(&endless, &name, addr, runtime, spawn) {
            tracing::error!(%name, %addr, error = %e, "cannot listen");
            return 1;
        }
    }
    endless.ready();
    args.take_ballast();
    crate::echo::exit_after_ready();
    endless.run().await.code
}

fn echo_listen(
    endless: &Endless,
    name: &str,
    addr: &ListenAddr,
    runtime: &'static str,
    spawn: Spawn,
) -> io::Result<()> {
    match addr {
        ListenAddr::Tcp(a) => {
            let listener = endless.tcp_listener(name, a.as_str())?;
            announce(name, listener.local_addr()?);
            let serve = move |stream| spawn(Box::pin(echo_connection(stream, runtime)));
            spawn(Box::pin(accept_loop(name.to_owned(), listener, serve)));
        }
        ListenAddr::Unix(path) => {
            let listener = endless.unix_listener(name, path)?;
            announce(name, addr);
            let serve = move |stream| spawn(Box::pin(echo_connection(stream, runtime)));
            spawn(Box::pin(accept_loop(name.to_owned(), listener, serve)));
        }
        ListenAddr::Udp(a) => {
            let socket = endless.udp_socket(name, a.as_str())?;
            announce(name, format!("udp:{}", socket.get_ref().local_addr()?));
            spawn(Box::pin(echo_datagrams(endless.clone(), socket)));
        }
    }
    Ok(())
}

async fn echo_connection<S: AsyncRead + AsyncWrite + Unpin>(stream: S, runtime: &'static str) {
    let (read, mut write) = futures_lite::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    while let Some(Ok(line)) = lines.next().await {
        let (delay, answer) = crate::echo::answer(&line, runtime);
        if let Some(delay) = delay {
            Timer::after(delay).await;
        }
        if write.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Both generations receive on the socket during a handover; the old one pauses once the
/// new one is ready, and receives again if it takes the service back.
async fn echo_datagrams(endless: Endless, socket: Async<std::net::UdpSocket>) {
    let mut buf = vec![0u8; 64 * 1024];
    while endless.accepting_again().await {
        let received = futures_lite::future::or(
            async {
                endless.stopped_accepting().await;
                None
            },
            async { Some(socket.recv_from(&mut buf).await) },
        )
        .await;
        match received {
            None => {}
            Some(Ok((n, peer))) => {
                let answer = crate::echo::datagram_answer(&buf[..n]);
                let _ = socket.send_to(answer.as_bytes(), peer).await;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "udp receive failed"),
        }
    }
}

/// Starts endless, receives the sessions of the previous generation, serves the pingpong
/// protocol on every `--listen` address (TCP and Unix), reports ready and runs the
/// lifecycle; returns the exit code. Once the process drains, each connection is handed
/// over at a line boundary with its session.
pub async fn pingpong(args: Args, spawn: Spawn) -> i32 {
    let endless: Endless = args.start_endless();
    // Before ready: the previous generation hands over right after it.
    let connections = match endless.receive_connections(RECEIVER) {
        // Slowed down (see `take_delay`): one at a time, each as it is taken.
        Ok(connections) if take_delay().is_some() => connections.take_at_most(1),
        Ok(connections) => connections,
        Err(e) => {
            tracing::error!(error = %e, "cannot receive connections");
            return 1;
        }
    };
    for (i, addr) in args.listen.iter().enumerate() {
        let name = Args::listener_name(i);
        let listened = match addr {
            ListenAddr::Tcp(a) => endless
                .tcp_listener(&name, a.as_str())
                .map_err(io::Error::from)
                .and_then(|l| {
                    announce(&name, l.local_addr()?);
                    let endless = endless.clone();
                    let serve = move |s| {
                        spawn_session(endless.clone(), Stream::Tcp(s), Session::default(), spawn);
                    };
                    spawn(Box::pin(accept_loop(name.clone(), l, serve)));
                    Ok(())
                }),
            ListenAddr::Unix(path) => endless
                .unix_listener(&name, path)
                .map_err(io::Error::from)
                .map(|l| {
                    announce(&name, addr);
                    let endless = endless.clone();
                    let serve = move |s| {
                        spawn_session(endless.clone(), Stream::Unix(s), Session::default(), spawn);
                    };
                    spawn(Box::pin(accept_loop(name.clone(), l, serve)));
                }),
            ListenAddr::Udp(_) => Err(io::Error::other(
                "pingpong speaks TCP and Unix sockets only",
            )),
        };
        if let Err(e) = listened {
            tracing::error!(%name, %addr, error = %e, "cannot listen");
            return 1;
        }
    }
    let receiving = endless.clone();
    spawn(Box::pin(async move {
        let delay = take_delay();
        let mut taken = 0u64;
        loop {
            if let Some(delay) = delay {
                Timer::after(delay).await;
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
            spawn_session(receiving.clone(), received.stream, session, spawn);
        }
        tracing::info!(taken, "connections taken over");
    }));
    endless.ready();
    args.take_ballast();
    endless.run().await.code
}

fn spawn_session(endless: Endless, stream: Stream, session: Session, spawn: Spawn) {
    spawn(Box::pin(async move {
        match stream {
            Stream::Tcp(s) => {
                let kind: SessionKind<_> = (Stream::Tcp, |s: Stream| s.into_tcp().ok());
                pingpong_session(endless, s, kind, session).await;
            }
            Stream::Unix(s) => {
                let kind: SessionKind<_> = (Stream::Unix, |s: Stream| s.into_unix().ok());
                pingpong_session(endless, s, kind, session).await;
            }
        }
    }));
}

/// How a session's stream goes into the kind-erased [`Stream`] and back.
type SessionKind<S> = (fn(Tracked<S>) -> Stream, fn(Stream) -> Option<Tracked<S>>);

/// What woke a pingpong session.
enum Step {
    Read(io::Result<usize>),
    Closing,
}

async fn pingpong_session<S>(
    endless: Endless,
    mut stream: Tracked<S>,
    (wrap, unwrap): SessionKind<S>,
    mut session: Session,
) where
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
        let step = futures_lite::future::or(
            // `read` is cancel-safe: nothing is lost when the drain wins.
            async { Step::Read(futures_lite::AsyncReadExt::read(&mut stream, &mut chunk).await) },
            async {
                if handover_tried {
                    std::future::pending::<()>().await;
                }
                closing.closing().await;
                Step::Closing
            },
        )
        .await;
        match step {
            Step::Read(Ok(0) | Err(_)) => return,
            Step::Read(Ok(n)) => received = n,
            Step::Closing => {
                handover_tried = true;
                if !endless.can_hand_over() {
                    continue;
                }
                let state = session.state();
                match endless
                    .hand_over(wrap(stream), RECEIVER, &state, &session.pending)
                    .await
                {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "connection kept");
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
