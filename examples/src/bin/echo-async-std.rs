//! The echo line server ([`endless_examples::echo`]) on async-std with endless-smol (async-std
//! runs on async-io): the same protocol and command line as `echo-tokio`, and the same
//! end-to-end tests.
//!
//! ```text
//! cargo run -p endless-examples --bin echo-async-std -- --listen 127.0.0.1:7000
//! ```

use endless_examples::{Args, futures_rt, init_logging};

#[async_std::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let code = futures_rt::echo(args, "async-std", |task| {
        async_std::task::spawn(task);
    })
    .await;
    std::process::exit(code);
}
