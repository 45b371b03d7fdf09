//! hello-hyper over TLS (HTTP/2 and HTTP/1.1 by ALPN): `--tls-cert` and `--tls-key` name
//! PEM files, read at start-up — so a restart (`kill -HUP`) picks up a renewed certificate.
//!
//! The server itself is in `examples/src/servers.rs`, which the `demo` binary runs too.

use endless_examples::{Args, init_logging, servers};

fn main() {
    init_logging();
    std::process::exit(servers::hello_tls(Args::from_env()));
}
