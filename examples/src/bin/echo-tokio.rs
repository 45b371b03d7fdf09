//! A TCP (or Unix socket) line server on endless-tokio: each line is answered with the
//! server's pid and the line. On a `udp:` address, each datagram is answered the same way.
//! The protocol, and its special lines (`sleep MS`, `fds`, `version`, `runtime`), is
//! [`endless_examples::echo`]'s, shared with `echo-smol` and `echo-async-std`.
//!
//! Once a listener stops accepting (a new generation took over, or the server stops), the
//! server logs `stopped accepting` with its pid: from then on, new connections go to the
//! new generation only.
//!
//! ```text
//! cargo run -p endless-examples --bin echo-tokio -- --listen 127.0.0.1:7000
//! nc 127.0.0.1 7000          # type lines
//! kill -HUP <pid>            # restart: connections in hand finish, new ones go to the new pid
//! ```
//!
//! With `--state-version N`, the count of answered lines (`count`) survives restarts:
//! each generation hands it to the next as application state (see
//! [`endless_examples::echo::carry_count`]).
//!
//! A line protocol has no way to tell a client "this connection is closing" without racing
//! the client's next line, so a draining process keeps each connection until the client
//! hangs up, or until the drain deadline closes it.

use endless_examples::{Args, ListenAddr, accept_loop, announce, echo, init_logging};
use endless_tokio::Endless;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let endless: Endless = args.start_endless();
    echo::carry_count(&endless, args.state_version);
    for (i, addr) in args.listen.iter().enumerate() {
        let name = Args::listener_name(i);
        if let Err(e) = listen(&endless, &name, addr) {
            tracing::error!(%name, %addr, error = %e, "cannot listen");
            std::process::exit(1);
        }
    }
    endless.ready();
    args.take_ballast();
    echo::exit_after_ready();
    let exit = endless.run().await;
    std::process::exit(exit.code);
}

fn listen(endless: &Endless, name: &str, addr: &ListenAddr) -> std::io::Result<()> {
    match addr {
        ListenAddr::Tcp(addr) => {
            let listener = endless.tcp_listener(name, addr.as_str())?;
            announce(name, listener.local_addr()?);
            tokio::spawn(accept_loop(name.to_owned(), listener, spawn_serve));
        }
        ListenAddr::Unix(path) => {
            let listener = endless.unix_listener(name, path)?;
            announce(name, format!("unix:{}", path.display()));
            tokio::spawn(accept_loop(name.to_owned(), listener, spawn_serve));
        }
        ListenAddr::Udp(addr) => {
            let socket = endless.udp_socket(name, addr.as_str())?;
            announce(name, format!("udp:{}", socket.local_addr()?));
            let endless = endless.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // Both generations receive on the socket during a handover; the old one
                // pauses once the new one is ready, and receives again if it takes the
                // service back.
                while endless.accepting_again().await {
                    let (n, peer) = tokio::select! {
                        () = endless.stopped_accepting() => continue,
                        received = socket.recv_from(&mut buf) => match received {
                            Ok(received) => received,
                            Err(e) => {
                                tracing::warn!(error = %e, "udp receive failed");
                                continue;
                            }
                        },
                    };
                    let answer = echo::datagram_answer(&buf[..n]);
                    let _ = socket.send_to(answer.as_bytes(), peer).await;
                }
            });
        }
    }
    Ok(())
}

fn spawn_serve<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) {
    tokio::spawn(serve(stream));
}

async fn serve<S: AsyncRead + AsyncWrite>(stream: S) {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (delay, answer) = echo::answer(&line, "tokio");
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if write.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
    }
}
