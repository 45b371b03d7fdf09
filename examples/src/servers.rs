//! The HTTP example servers, one function each: the `hello-*` binaries are these functions,
//! and so is `demo serve NAME`, which lets the demo run any of them from its own executable
//! (one `cargo run` builds one binary).
//!
//! Each takes the parsed shared command line ([`Args`]), serves until a stop or a handover
//! is complete, and returns the process's exit code.

use std::time::Duration;

use endless_hyper::{HttpService, HyperService, Probes, ResponseBody};
use endless_unix::adapter::Endless;

use crate::{Args, hello, hello_with, pid_body, serve_http, serve_http_with_peer};

/// An HTTP example server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpServer {
    /// `hello-hyper`: hyper 1.x on tokio through endless-hyper, HTTP/1.1 and HTTP/2.
    Hyper,
    /// `hello-axum`: an axum 0.8 application through endless-hyper.
    Axum,
    /// `hello-tls`: `hello-hyper` over TLS (needs `--tls-cert` and `--tls-key`).
    Tls,
    /// `hello-smol`: hyper 1.x on smol through endless-hyper, HTTP/1.1 and HTTP/2.
    Smol,
    /// `hello-async-std`: the same on async-std.
    AsyncStd,
}

impl HttpServer {
    /// Every HTTP example, in the order the docs list them.
    pub const ALL: [Self; 5] = [
        Self::Hyper,
        Self::Axum,
        Self::Tls,
        Self::Smol,
        Self::AsyncStd,
    ];

    /// The binary's name (`hello-hyper`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Hyper => "hello-hyper",
            Self::Axum => "hello-axum",
            Self::Tls => "hello-tls",
            Self::Smol => "hello-smol",
            Self::AsyncStd => "hello-async-std",
        }
    }

    /// The server a binary name names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The runtime it runs on, for people.
    pub fn runtime(self) -> &'static str {
        match self {
            Self::Hyper | Self::Tls => "tokio + hyper",
            Self::Axum => "tokio + axum",
            Self::Smol => "smol + hyper",
            Self::AsyncStd => "async-std + hyper",
        }
    }

    /// Runs the server with `args` until it stops or has handed over; returns the exit
    /// code.
    pub fn run(self, args: Args) -> i32 {
        match self {
            Self::Hyper => hello_hyper(args),
            Self::Axum => hello_axum(args),
            Self::Tls => hello_tls(args),
            Self::Smol => hello_smol(args),
            Self::AsyncStd => hello_async_std(args),
        }
    }
}

/// What `#[tokio::main]` does: a multi-threaded runtime that runs `main` to completion.
fn tokio_main(main: impl Future<Output = i32>) -> i32 {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
        .block_on(main)
}

/// `hello-hyper`: a hyper service, served by endless-hyper; with `--probes`, the probes
/// `GET /readyz` and `GET /livez` ([`Probes`]).
pub fn hello_hyper(args: Args) -> i32 {
    tokio_main(async {
        let endless: endless_tokio::Endless = args.start_endless();
        let hello = hyper::service::service_fn(hello);
        serve_hello(endless, &args, &endless_hyper::Server::new(), hello).await
    })
}

/// `hello-axum`: an axum router, served by endless-hyper; `GET /peer` answers
/// `pid=<pid> peer=<address>` and a newline, from axum's `ConnectInfo` (`unix` for a Unix
/// peer, `unknown` with `--probes`, which serves without it); with `--probes`, the probes
/// `GET /readyz` and `GET /livez` ([`Probes`]).
pub fn hello_axum(args: Args) -> i32 {
    #[derive(serde::Deserialize)]
    struct Params {
        sleep: Option<u64>,
    }

    async fn hello(axum::extract::Query(params): axum::extract::Query<Params>) -> String {
        if let Some(ms) = params.sleep {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        pid_body()
    }

    // The peer of the connection: the address a connection taken over at a restart keeps.
    async fn peer(
        info: Option<axum::Extension<axum::extract::ConnectInfo<endless_hyper::PeerAddr>>>,
    ) -> String {
        let peer = match info.map(|axum::Extension(axum::extract::ConnectInfo(peer))| peer) {
            Some(endless_hyper::PeerAddr::Tcp(addr)) => addr.to_string(),
            Some(_) => "unix".to_owned(),
            None => "unknown".to_owned(),
        };
        format!("pid={} peer={peer}\n", std::process::id())
    }

    tokio_main(async {
        let endless: endless_tokio::Endless = args.start_endless();
        let app = axum::Router::new()
            .route("/", axum::routing::get(hello))
            .route("/peer", axum::routing::get(peer));
        let server = endless_hyper::Server::new();
        if args.probes {
            let app = Probes::new(app, endless.tracker().clone());
            serve_http(&endless, &args, &server, app);
        } else {
            let app = app.into_make_service_with_connect_info::<endless_hyper::PeerAddr>();
            serve_http_with_peer(&endless, &args, &server, app);
        }
        endless.ready();
        args.take_ballast();
        endless.run().await.code
    })
}

/// `hello-tls`: `hello-hyper` over TLS (HTTP/2 and HTTP/1.1 by ALPN). The certificate is
/// read at start-up, so a restart picks up a renewed one; a bad one fails this generation
/// before it is ready, and the previous one keeps serving. Exits with 2 without
/// `--tls-cert` and `--tls-key`.
pub fn hello_tls(args: Args) -> i32 {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        eprintln!(
            "error: hello-tls needs --tls-cert PATH and --tls-key PATH\n\n{}",
            crate::USAGE
        );
        return 2;
    };
    tokio_main(async {
        let acceptor = match endless_hyper::tls::acceptor_from_pem_files(cert, key) {
            Ok(acceptor) => acceptor,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the certificate");
                return 1;
            }
        };
        let endless: endless_tokio::Endless = args.start_endless();
        let server = endless_hyper::Server::new().tls(acceptor);
        let hello = hyper::service::service_fn(hello);
        serve_hello(endless, &args, &server, hello).await
    })
}

/// `hello-smol`: `hello-hyper` on smol, served by endless-hyper (HTTP/1.1 and HTTP/2, the
/// same drain); with `--probes`, the probes; with `--tls-cert` and `--tls-key`, over TLS
/// (`hello-tls` on smol).
pub fn hello_smol(args: Args) -> i32 {
    smol::block_on(hello_async_io(args, None))
}

/// `hello-async-std`: the same on async-std, whose executor runs the connections.
pub fn hello_async_std(args: Args) -> i32 {
    async_std::task::block_on(hello_async_io(
        args,
        Some(|task| {
            async_std::task::spawn(task);
        }),
    ))
}

/// `hello-hyper` on async-io (smol, async-std): the connections' tasks on `spawner`, or on
/// smol's executor.
async fn hello_async_io(args: Args, spawner: Option<fn(endless_hyper::rt::Task)>) -> i32 {
    let endless: endless_smol::Endless = args.start_endless();
    let spawn: fn(endless_hyper::rt::Task) = spawner.unwrap_or(|task| smol::spawn(task).detach());
    let hello = hyper::service::service_fn(move |req| {
        let sleep = |duration| async move {
            async_io::Timer::after(duration).await;
        };
        hello_with(req, sleep, spawn)
    });
    let mut server = endless_hyper::Server::new();
    if let Some(spawner) = spawner {
        server = server.spawner(spawner);
    }
    // TLS when asked for, as `hello-tls` on tokio: the same acceptor (tokio-rustls over
    // the connection seen through tokio's I/O traits, which runs on any executor).
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        match endless_hyper::tls::acceptor_from_pem_files(cert, key) {
            Ok(acceptor) => server = server.tls(acceptor),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the certificate");
                return 1;
            }
        }
    }
    serve_hello(endless, &args, &server, hello).await
}

/// Serves the hyper service `hello` (behind the probes with `--probes`) with `server` on
/// every `--listen` address, reports ready and runs the lifecycle; returns the exit code.
async fn serve_hello<N, S, B, P>(
    endless: Endless<N>,
    args: &Args,
    server: &endless_hyper::Server<N>,
    hello: S,
) -> i32
where
    N: endless_hyper::HttpRuntime,
    HyperService<S>: HttpService<B>,
    HyperService<Probes<S>>: HttpService<P>,
    B: ResponseBody,
    P: ResponseBody,
{
    if args.probes {
        let service = HyperService(Probes::new(hello, endless.tracker().clone()));
        serve_http(&endless, args, server, service);
    } else {
        serve_http(&endless, args, server, HyperService(hello));
    }
    endless.ready();
    args.take_ballast();
    endless.run().await.code
}
