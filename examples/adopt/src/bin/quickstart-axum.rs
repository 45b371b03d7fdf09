use endless_hyper::Server;
use endless_tokio::Endless;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let endless = Endless::start()?;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
    Server::new().serve(endless.tcp_listener("http", "0.0.0.0:8080")?, app);
    endless.ready();
    std::process::exit(endless.run().await.code);
}
