//! `pingpong` on async-std, through endless-smol: the same protocol and connection
//! takeover as the tokio `pingpong` (see [`endless_examples::pingpong`] and
//! [`endless_examples::futures_rt::pingpong`]).
//!
//! ```text
//! cargo run -p endless-examples --bin pingpong-async-std -- --listen 127.0.0.1:7000
//! ```

use endless_examples::{Args, futures_rt, init_logging};

#[async_std::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let code = futures_rt::pingpong(args, |task| {
        async_std::task::spawn(task);
    })
    .await;
    std::process::exit(code);
}
