//! `pingpong` on endless-smol: the same protocol and connection takeover as the tokio
//! `pingpong` (see [`endless_examples::pingpong`] and [`endless_examples::futures_rt::pingpong`]);
//! generations of the two hand connections to each other.
//!
//! ```text
//! cargo run -p endless-examples --bin pingpong-smol -- --listen 127.0.0.1:7000
//! ```

use endless_examples::{Args, futures_rt, init_logging};

fn main() {
    init_logging();
    let args = Args::from_env();
    let code = smol::block_on(futures_rt::pingpong(args, |task| {
        smol::spawn(task).detach();
    }));
    std::process::exit(code);
}
