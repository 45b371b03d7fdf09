//! An axum 0.8 application with zero-downtime restarts: `GET /` answers `pid=<pid>`,
//! `GET /?sleep=MS` the same after MS milliseconds; with `--probes`, `GET /readyz` and
//! `GET /livez` are its readiness and liveness probes (`endless_hyper::Probes`).
//!
//! The server itself is in `examples/src/servers.rs`, which the `demo` binary runs too.

use endless_examples::{Args, init_logging, servers};

fn main() {
    init_logging();
    std::process::exit(servers::hello_axum(Args::from_env()));
}
