use endless_hyper::Server;
use endless_smol::Endless;

fn main() -> std::io::Result<()> {
    smol::block_on(async {
        let endless = Endless::start()?;
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
        Server::new().serve(endless.tcp_listener("http", "0.0.0.0:8080")?, app);
        endless.ready();
        std::process::exit(endless.run().await.code);
    })
}
