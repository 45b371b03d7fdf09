//! An HTTP/1.1 server (hyper) on async-std with endless-smol: `GET /` answers `pid=<pid>`,
//! `GET /?sleep=MS` the same after MS milliseconds, like `hello-smol`.
//!
//! ```text
//! cargo run -p endless-examples --bin hello-async-std -- --listen 127.0.0.1:8080
//! ```
//!
//! The server itself is in `examples/src/servers.rs`, which the `demo` binary runs too.

use endless_examples::{Args, init_logging, servers};

fn main() {
    init_logging();
    std::process::exit(servers::hello_async_std(Args::from_env()));
}
