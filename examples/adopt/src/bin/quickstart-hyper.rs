use std::convert::Infallible;

use endless_hyper::{HyperService, Server};
use endless_tokio::Endless;
use hyper::{Request, Response, body::Incoming};

async fn hello(_req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let pid = std::process::id();
    Ok(Response::new(format!("hello from pid {pid}\n")))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let endless = Endless::start()?;
    let listener = endless.tcp_listener("http", "0.0.0.0:8080")?;
    Server::new().serve(listener, HyperService(hyper::service::service_fn(hello)));
    endless.ready();
    std::process::exit(endless.run().await.code);
}
