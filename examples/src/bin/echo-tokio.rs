//! A TCP (or Unix socket) line server on endless-tokio: each line is answered with the
//! server's pid and the line. On a `udp:` address, each datagram is answered the same way.
//!
//! Two lines are special, for demonstrations and tests:
//! - `sleep MS` is answered after MS milliseconds (a request in flight during a restart);
//! - `fds` is answered with what a subprocess of the server (`ls -l /proc/self/fd`) sees,
//!   to show that no listener leaks into it;
//! - `version` is answered with the environment variable `ECHO_VERSION` (default `1`), to
//!   show that a restart runs the binary (or wrapper) now on disk.
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
//! A line protocol has no way to tell a client "this connection is closing" without racing
//! the client's next line, so a draining process keeps each connection until the client
//! hangs up, or until the drain deadline closes it.

use std::time::Duration;

use endless_examples::{Args, ListenAddr, announce, init_logging};
use endless_tokio::{Endless, Tracked};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let mut builder = Endless::builder().config(args.config());
    if let Some(path) = &args.pid_file {
        builder = builder.pid_file(path);
    }
    let endless = match builder.start() {
        Ok(endless) => endless,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
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

    endless.ready();
    let exit = endless.run().await;
    std::process::exit(exit.code);
}

/// Accepts until the process stops accepting, serving each connection on its own task.
/// Accept errors (too many open files, a connection reset while queued) are logged and
/// retried after a short pause: the listener is still good.
macro_rules! accept_loop {
    ($name:expr, $listener:expr) => {{
        let name = $name.to_owned();
        let listener = $listener;
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(Some((stream, _))) => {
                        tokio::spawn(serve(stream));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tracing::info!(pid = std::process::id(), %name, "stopped accepting");
        });
    }};
}

fn listen(endless: &Endless, name: &str, addr: &ListenAddr) -> std::io::Result<()> {
    match addr {
        ListenAddr::Tcp(addr) => {
            let listener = endless.tcp_listener(name, addr.as_str())?;
            announce(name, listener.local_addr()?);
            accept_loop!(name, listener);
        }
        ListenAddr::Unix(path) => {
            let listener = endless.unix_listener(name, path)?;
            announce(name, format!("unix:{}", path.display()));
            accept_loop!(name, listener);
        }
        ListenAddr::Udp(addr) => {
            let socket = endless.udp_socket(name, addr.as_str())?;
            announce(name, format!("udp:{}", socket.local_addr()?));
            let endless = endless.clone();
            tokio::spawn(async move {
                let pid = std::process::id();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    // Both generations receive on the socket during a handover; the old one
                    // stops once the new one is ready.
                    let (n, peer) = tokio::select! {
                        () = endless.stopped_accepting() => break,
                        received = socket.recv_from(&mut buf) => match received {
                            Ok(received) => received,
                            Err(e) => {
                                tracing::warn!(error = %e, "udp receive failed");
                                continue;
                            }
                        },
                    };
                    let line = String::from_utf8_lossy(&buf[..n]);
                    let reply = format!("{pid} {}", line.trim_end());
                    let _ = socket.send_to(reply.as_bytes(), peer).await;
                }
            });
        }
    }
    Ok(())
}

async fn serve<S: AsyncRead + AsyncWrite>(stream: Tracked<S>) {
    let pid = std::process::id();
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = if let Some(ms) = line.strip_prefix("sleep ") {
            let ms: u64 = ms.trim().parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            format!("{pid} {line}\n")
        } else if line == "fds" {
            format!("{pid} {}\n", subprocess_fds().await)
        } else if line == "version" {
            let version = std::env::var("ECHO_VERSION").unwrap_or_else(|_| "1".to_owned());
            format!("{pid} {version}\n")
        } else {
            format!("{pid} {line}\n")
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// What `ls -l /proc/self/fd` prints in a subprocess, on one line.
async fn subprocess_fds() -> String {
    match tokio::process::Command::new("ls")
        .args(["-l", "/proc/self/fd"])
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("->"))
            .map(|l| {
                l.split_whitespace()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(" | "),
        Err(e) => format!("error: {e}"),
    }
}
