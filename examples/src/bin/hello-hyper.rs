//! A hyper 1.x HTTP server (HTTP/1.1 and HTTP/2) with zero-downtime restarts: `GET /`
//! answers `pid=<pid>`, `GET /?sleep=MS` the same after MS milliseconds.
//!
//! ```text
//! cargo run -p endless-examples --bin hello-hyper -- --listen 127.0.0.1:8080 --pid-file /tmp/hello.pid
//! kill -HUP $(cat /tmp/hello.pid)
//! ```

use endless_examples::{Args, hello, init_logging, serve_http};
use endless_hyper::HyperService;

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let endless = args.start_endless();
    let service = HyperService(hyper::service::service_fn(hello));
    serve_http(&endless, &args, &endless_hyper::Server::new(), service);
    endless.ready();
    std::process::exit(endless.run().await.code);
}
