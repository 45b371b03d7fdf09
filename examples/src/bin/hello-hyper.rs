//! A hyper 1.x HTTP server (HTTP/1.1 and HTTP/2) with zero-downtime restarts: `GET /`
//! answers `pid=<pid>`, `GET /?sleep=MS` the same after MS milliseconds; with `--probes`,
//! `GET /readyz` and `GET /livez` are its readiness and liveness probes
//! (`endless_hyper::Probes`).
//!
//! ```text
//! cargo run -p endless-examples --bin hello-hyper -- --listen 127.0.0.1:8080 --pid-file /tmp/hello.pid
//! kill -HUP $(cat /tmp/hello.pid)
//! ```
//!
//! The server itself is in `examples/src/servers.rs`, which the `demo` binary runs too.

use endless_examples::{Args, init_logging, servers};

fn main() {
    init_logging();
    std::process::exit(servers::hello_hyper(Args::from_env()));
}
