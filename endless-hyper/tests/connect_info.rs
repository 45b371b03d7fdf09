//! axum's `ConnectInfo<SocketAddr>` through endless-hyper (the `axum` feature): a real
//! `Router` served with `Server::serve_with_connect_info`, in process, on loopback.
//!
//! One test only: it starts `Endless` in this process.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use endless_hyper::{PeerAddr, Server};
use endless_tokio::Endless;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);

/// `GET /path` on a new connection from `addr`'s host: the client's own address, and the
/// response (head and body).
async fn get(addr: SocketAddr, path: &str) -> (SocketAddr, String) {
    tokio::time::timeout(DEADLINE, async {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let local = client.local_addr().unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        (local, response)
    })
    .await
    .expect("no response before the deadline")
}

fn body(response: &str) -> &str {
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_connect_info_is_the_clients_address() {
    async fn socket_addr(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
        peer.to_string()
    }
    async fn peer_addr(ConnectInfo(peer): ConnectInfo<PeerAddr>) -> String {
        peer.tcp().unwrap().to_string()
    }

    let endless = Endless::start().unwrap();
    let app = axum::Router::new()
        .route("/socket-addr", axum::routing::get(socket_addr))
        .route("/peer-addr", axum::routing::get(peer_addr));
    let server = Server::new();

    let listener = endless.tcp_listener("socket-addr", "127.0.0.1:0").unwrap();
    let by_socket_addr = listener.local_addr().unwrap();
    server.serve_with_connect_info(
        listener,
        app.clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    );
    let listener = endless.tcp_listener("peer-addr", "127.0.0.1:0").unwrap();
    let by_peer_addr = listener.local_addr().unwrap();
    server.serve_with_connect_info(
        listener,
        app.clone()
            .into_make_service_with_connect_info::<PeerAddr>(),
    );
    // Served as a plain `Router`.
    let listener = endless.tcp_listener("router", "127.0.0.1:0").unwrap();
    let by_router = listener.local_addr().unwrap();
    server.serve(listener, app);
    endless.ready();

    let (client, response) = get(by_socket_addr, "/socket-addr").await;
    assert_eq!(body(&response), client.to_string());
    let (client, response) = get(by_peer_addr, "/peer-addr").await;
    assert_eq!(body(&response), client.to_string());
    // Without a make service, axum's `ConnectInfo` has nothing to extract: as with
    // `axum::serve(listener, router)`.
    let (_, response) = get(by_router, "/socket-addr").await;
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");

    endless.request(endless_tokio::Request::Stop);
    let exit = tokio::time::timeout(DEADLINE, endless.run())
        .await
        .expect("stopped before the deadline");
    assert_eq!(exit.code, 0);
}
