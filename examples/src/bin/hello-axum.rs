//! An axum 0.8 application with zero-downtime restarts: `GET /` answers `pid=<pid>`,
//! `GET /?sleep=MS` the same after MS milliseconds.

use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use endless_examples::{Args, init_logging, pid_body, serve_http};

#[derive(serde::Deserialize)]
struct Params {
    sleep: Option<u64>,
}

async fn hello(Query(params): Query<Params>) -> String {
    if let Some(ms) = params.sleep {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    pid_body()
}

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let endless = args.start_endless();
    let app = Router::new().route("/", get(hello));
    serve_http(&endless, &args, &endless_hyper::Server::new(), app);
    endless.ready();
    std::process::exit(endless.run().await.code);
}
