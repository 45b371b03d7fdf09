//! The echo line server ([`endless_examples::echo`]) on smol with endless-smol: the same
//! protocol and command line as `echo-tokio`, and the same end-to-end tests. A restart may
//! hand over from this build to `echo-tokio` and back: the two speak the same inheritance
//! protocol.
//!
//! ```text
//! cargo run -p endless-examples --bin echo-smol -- --listen 127.0.0.1:7000
//! ```

use endless_examples::{Args, futures_rt, init_logging};

fn main() {
    init_logging();
    let args = Args::from_env();
    let code = smol::block_on(futures_rt::echo(args, "smol", |task| {
        smol::spawn(task).detach();
    }));
    std::process::exit(code);
}
