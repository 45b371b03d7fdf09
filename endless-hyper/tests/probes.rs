//! `Probes` in a real server: an axum `Router` wrapped as a whole, and one with
//! `Router::layer(ProbesLayer)`, each on a listener of its own. `/readyz` answers `200 ready`
//! while the process serves; once a stop starts the drain, keep-alive connections opened
//! before get `503 draining` (with `Connection: close`), `/livez` still `200`, and the
//! router answers the rest.
//!
//! One test only: it starts `Endless` in this process.

use std::net::SocketAddr;
use std::time::Duration;

use endless_hyper::{Probes, ProbesLayer, Server};
use endless_tokio::{Endless, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);

/// An HTTP/1.1 keep-alive connection, for requests one at a time.
struct KeepAlive(BufReader<TcpStream>);

/// A response: status, whether it said `Connection: close`, body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    close: bool,
    body: String,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> Self {
        Self(BufReader::new(TcpStream::connect(addr).await.unwrap()))
    }

    async fn get(&mut self, path: &str) -> Answer {
        tokio::time::timeout(DEADLINE, self.get_inner(path))
            .await
            .expect("no response before the deadline")
    }

    async fn get_inner(&mut self, path: &str) -> Answer {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        self.0
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut status_line = String::new();
        self.0.read_line(&mut status_line).await.unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line, not {status_line:?}"));
        let (mut length, mut close) = (0, false);
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await.unwrap();
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            close |= line == "connection: close";
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await.unwrap();
        Answer {
            status,
            close,
            body: String::from_utf8(body).unwrap(),
        }
    }
}

fn answer(status: u16, close: bool, body: &str) -> Answer {
    Answer {
        status,
        close,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn probes_of_an_axum_router_follow_the_drain() {
    let endless = Endless::start().unwrap();
    let router = || axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
    let wrapped = endless.tcp_listener("wrapped", "127.0.0.1:0").unwrap();
    let layered = endless.tcp_listener("layered", "127.0.0.1:0").unwrap();
    let addrs = [wrapped.local_addr().unwrap(), layered.local_addr().unwrap()];
    let server = Server::new();
    server.serve(wrapped, Probes::new(router(), endless.tracker().clone()));
    server.serve(
        layered,
        router().layer(ProbesLayer::new(endless.tracker().clone()).liveness_path("/alive")),
    );
    endless.ready();

    let mut conns = Vec::new();
    for (addr, live) in addrs.into_iter().zip(["/livez", "/alive"]) {
        let mut ready = KeepAlive::open(addr).await;
        let mut alive = KeepAlive::open(addr).await;
        let mut other = KeepAlive::open(addr).await;
        assert_eq!(ready.get("/readyz").await, answer(200, false, "ready\n"));
        assert_eq!(alive.get(live).await, answer(200, false, "live\n"));
        assert_eq!(other.get("/").await, answer(200, false, "hello\n"));
        assert_eq!(other.get("/nowhere").await.status, 404);
        conns.push((ready, alive, other, live));
    }

    endless.request(Request::Stop);
    tokio::time::timeout(DEADLINE, endless.tracker().closing())
        .await
        .expect("the drain starts");
    for (mut ready, mut alive, mut other, live) in conns {
        assert_eq!(ready.get("/readyz").await, answer(503, true, "draining\n"));
        // (`Connection: close` too once the server has told the connection of the drain, a
        // moment after the tracker.)
        let a = alive.get(live).await;
        assert_eq!((a.status, a.body.as_str()), (200, "live\n"));
        let a = other.get("/").await;
        assert_eq!((a.status, a.body.as_str()), (200, "hello\n"));
    }
    let exit = tokio::time::timeout(DEADLINE, endless.run())
        .await
        .expect("the drain ends");
    assert_eq!(exit.code, 0);
}
