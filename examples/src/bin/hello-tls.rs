//! hello-hyper over TLS (HTTP/2 and HTTP/1.1 by ALPN): `--tls-cert` and `--tls-key` name
//! PEM files, read at start-up — so a restart (`kill -HUP`) picks up a renewed certificate.

use endless_examples::{Args, hello, init_logging, serve_http};
use endless_hyper::HyperService;

#[tokio::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        eprintln!(
            "error: hello-tls needs --tls-cert PATH and --tls-key PATH\n\n{}",
            endless_examples::USAGE
        );
        std::process::exit(2);
    };
    // Read before `start_endless`'s ready: a bad certificate fails this generation at
    // start-up, and the previous one keeps serving.
    let acceptor = match endless_hyper::tls::acceptor_from_pem_files(cert, key) {
        Ok(acceptor) => acceptor,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the certificate");
            std::process::exit(1);
        }
    };
    let endless = args.start_endless();
    let server = endless_hyper::Server::new().tls(acceptor);
    let service = HyperService(hyper::service::service_fn(hello));
    serve_http(&endless, &args, &server, service);
    endless.ready();
    std::process::exit(endless.run().await.code);
}
