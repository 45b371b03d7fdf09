//! An HTTP/1.1 server (hyper) on smol with endless-smol: `GET /` answers `pid=<pid>`,
//! `GET /?sleep=MS` the same after MS milliseconds. While draining, responses say
//! `Connection: close` and idle connections close after a grace period
//! ([`endless_examples::futures_rt`]).
//!
//! ```text
//! cargo run -p endless-examples --bin hello-smol -- --listen 127.0.0.1:8080 --pid-file /tmp/hello.pid
//! kill -HUP $(cat /tmp/hello.pid)
//! ```
//!
//! The server itself is in `examples/src/servers.rs`, which the `demo` binary runs too.

use endless_examples::{Args, init_logging, servers};

fn main() {
    init_logging();
    std::process::exit(servers::hello_smol(Args::from_env()));
}
