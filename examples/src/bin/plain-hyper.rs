//! The service of `hello-hyper` on plain hyper-util, without endless: the baseline of the
//! steady-state throughput benchmark (`bench/throughput.sh`). Same runtime, same hyper-util
//! auto builder with the same timers, TCP_NODELAY on accepted streams, the same handler;
//! no restarts, no drain, no connection tracking. Only `--listen` (TCP) and
//! `--ballast-mib` are used from the shared command line.
//!
//! ```text
//! cargo run --release -p endless-examples --bin plain-hyper -- --listen 127.0.0.1:8080
//! ```

use std::time::Duration;

use endless_examples::{Args, ListenAddr, announce, hello, init_logging};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());

    let mut accept_loops = Vec::new();
    for (i, addr) in args.listen.iter().enumerate() {
        let name = Args::listener_name(i);
        let ListenAddr::Tcp(a) = addr else {
            tracing::error!(%name, %addr, "plain-hyper listens on TCP only");
            std::process::exit(1);
        };
        let listener = match tokio::net::TcpListener::bind(a.as_str()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%name, %addr, error = %e, "cannot listen");
                std::process::exit(1);
            }
        };
        if let Ok(local) = listener.local_addr() {
            announce(&name, local);
        }
        let builder = builder.clone();
        accept_loops.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let builder = builder.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(hello);
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    // Serving from here on, as the endless servers once they are ready.
    args.take_ballast();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
}
