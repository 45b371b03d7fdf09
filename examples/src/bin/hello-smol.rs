//! An HTTP/1.1 server (hyper) on smol with endless-smol: `GET /` answers `pid=<pid>`,
//! `GET /?sleep=MS` the same after MS milliseconds. While draining, responses say
//! `Connection: close` and idle connections close after a grace period
//! ([`endless_examples::futures_rt`]).
//!
//! ```text
//! cargo run -p endless-examples --bin hello-smol -- --listen 127.0.0.1:8080 --pid-file /tmp/hello.pid
//! kill -HUP $(cat /tmp/hello.pid)
//! ```

use endless_examples::{Args, futures_rt, init_logging};

fn main() {
    init_logging();
    let args = Args::from_env();
    let code = smol::block_on(futures_rt::hello(args, |task| {
        smol::spawn(task).detach();
    }));
    std::process::exit(code);
}
