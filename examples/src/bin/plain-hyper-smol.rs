//! The service of `hello-smol` on plain hyper over smol, without endless: the baseline of
//! `bench/instructions.sh --runtime smol`. As a smol application serves hyper: smol-hyper's
//! I/O adapter and timer, hyper-util's auto builder (HTTP/1.1 and HTTP/2, the same timers),
//! each connection on smol's executor as `hello-smol` runs them, TCP_NODELAY on accepted
//! streams, the same handler; no restarts, no drain, no connection tracking. Only
//! `--listen` (TCP) and `--ballast-mib` are used from the shared command line.
//!
//! ```text
//! cargo run --release -p endless-examples --bin plain-hyper-smol -- --listen 127.0.0.1:8080
//! ```

use std::time::Duration;

use async_io::{Async, Timer};
use endless_examples::{Args, ListenAddr, Task, announce, hello_with, init_logging};
use hyper_util::server::conn::auto;
use smol_hyper::rt::{FuturesIo, SmolTimer};

/// hyper's executor: smol's, as `hello-smol` spawns.
#[derive(Clone, Copy, Debug)]
struct Spawn;

impl<F> hyper::rt::Executor<F> for Spawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        smol::spawn(future).detach();
    }
}

fn main() {
    init_logging();
    let args = Args::from_env();
    smol::block_on(async {
        let mut builder = auto::Builder::new(Spawn);
        builder.http1().timer(SmolTimer::new());
        builder.http2().timer(SmolTimer::new());

        for (i, addr) in args.listen.iter().enumerate() {
            let name = Args::listener_name(i);
            let ListenAddr::Tcp(a) = addr else {
                tracing::error!(%name, %addr, "plain-hyper-smol listens on TCP only");
                std::process::exit(1);
            };
            let listener = match Async::<std::net::TcpListener>::bind(
                a.parse::<std::net::SocketAddr>().unwrap_or_else(|e| {
                    tracing::error!(%name, %addr, error = %e, "not an address");
                    std::process::exit(1);
                }),
            ) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%name, %addr, error = %e, "cannot listen");
                    std::process::exit(1);
                }
            };
            if let Ok(local) = listener.get_ref().local_addr() {
                announce(&name, local);
            }
            let builder = builder.clone();
            smol::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let _ = stream.get_ref().set_nodelay(true);
                            let builder = builder.clone();
                            smol::spawn(async move {
                                let service = hyper::service::service_fn(|req| {
                                    let sleep = |duration| async move {
                                        Timer::after(duration).await;
                                    };
                                    let spawn: fn(Task) = |task| smol::spawn(task).detach();
                                    hello_with(req, sleep, spawn)
                                });
                                let conn = builder.serve_connection_with_upgrades(
                                    FuturesIo::new(stream),
                                    service,
                                );
                                if let Err(e) = conn.await {
                                    tracing::debug!(error = %e, "connection ended with an error");
                                }
                            })
                            .detach();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            Timer::after(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
            .detach();
        }
        // Serving from here on, as the endless servers once they are ready, until killed.
        args.take_ballast();
        std::future::pending::<()>().await;
    });
}
