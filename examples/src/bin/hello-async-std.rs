//! An HTTP/1.1 server (hyper) on async-std with endless-smol: `GET /` answers `pid=<pid>`,
//! `GET /?sleep=MS` the same after MS milliseconds, like `hello-smol`.
//!
//! ```text
//! cargo run -p endless-examples --bin hello-async-std -- --listen 127.0.0.1:8080
//! ```

use endless_examples::{Args, futures_rt, init_logging};

#[async_std::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let code = futures_rt::hello(args, |task| {
        async_std::task::spawn(task);
    })
    .await;
    std::process::exit(code);
}
