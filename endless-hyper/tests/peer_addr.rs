//! A plain hyper service learns its peer's address (`PeerAddr`) through a make service
//! (`Server::serve_with_connect_info` with `make_service_fn`), on a TCP and on a Unix
//! listener; a make service sees it once per connection, and may refuse the connection. The server's lines carry endless' span with the pid.
//!
//! One test only: it starts `Endless` in this process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use endless_hyper::{ConnectionInfo, HyperService, PeerAddr, Server, make_service_fn};
use endless_tokio::Endless;
use hyper::{Request, Response, body::Incoming};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);

/// A plain hyper service: answers with the peer of its connection.
#[derive(Debug, Clone)]
struct Peer(PeerAddr);

impl hyper::service::Service<Request<Incoming>> for Peer {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // Nothing in the extensions: the peer comes from the make service, per connection.
        assert!(req.extensions().get::<PeerAddr>().is_none());
        let body = match &self.0 {
            PeerAddr::Tcp(addr) => format!("tcp {addr}"),
            PeerAddr::Unix(addr) if addr.is_unnamed() => "unix unnamed".to_owned(),
            PeerAddr::Unix(addr) => format!("unix {:?}", addr.as_pathname()),
            other => format!("other {other:?}"),
        };
        std::future::ready(Ok(Response::new(body)))
    }
}

/// `GET /` on `stream`: the response, or what the stream gave before it closed.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> String {
    tokio::time::timeout(DEADLINE, async {
        let request = "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        // A refused connection may be closed before the request is written.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8(response).unwrap()
    })
    .await
    .expect("no response before the deadline")
}

fn body(response: &str) -> &str {
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1
}

/// A make service that serves the peer `allowed` only.
#[derive(Clone, Default)]
struct OnlyFrom(Arc<Mutex<Option<SocketAddr>>>);

impl tower_service::Service<ConnectionInfo> for OnlyFrom {
    type Response = HyperService<Peer>;
    type Error = &'static str;
    type Future = std::future::Ready<Result<HyperService<Peer>, &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, info: ConnectionInfo) -> Self::Future {
        let allowed = *self.0.lock().unwrap();
        std::future::ready(match info.peer_addr().tcp() {
            Some(peer) if Some(peer) == allowed => Ok(HyperService(Peer(info.peer_addr().clone()))),
            _ => Err("not this peer"),
        })
    }
}

/// A TCP client socket bound to a loopback port, not connected yet.
fn tcp_client() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let local = socket.local_addr().unwrap();
    (socket, local)
}

/// Every line this process's subscriber received.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_hyper_service_learns_its_peer_address() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();
    let endless = Endless::start().unwrap();
    let server = Server::new();
    let service =
        make_service_fn(|info: ConnectionInfo| HyperService(Peer(info.peer_addr().clone())));

    let tcp = endless.tcp_listener("tcp", "127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let mut serving = vec![server.serve_with_connect_info(tcp, service)];

    let path: PathBuf = std::env::temp_dir().join(format!(
        "endless-hyper-peer-addr-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let unix = endless.unix_listener("unix", &path).unwrap();
    serving.push(server.serve_with_connect_info(unix, service));

    let allowed = OnlyFrom::default();
    let made = endless.tcp_listener("made", "127.0.0.1:0").unwrap();
    let made_addr = made.local_addr().unwrap();
    serving.push(server.serve_with_connect_info(made, allowed.clone()));
    endless.ready();

    // TCP: the client's own address.
    let client = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    let local = client.local_addr().unwrap();
    assert_eq!(body(&get(client).await), format!("tcp {local}"));

    // Unix: an unnamed client socket, as almost every client's is.
    let client = tokio::net::UnixStream::connect(&path).await.unwrap();
    assert_eq!(body(&get(client).await), "unix unnamed");
    // A client bound to a path: its path.
    let client_path = path.with_extension("client.sock");
    let _ = std::fs::remove_file(&client_path);
    let bound = {
        use socket2::{Domain, SockAddr, Socket, Type};
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        socket.bind(&SockAddr::unix(&client_path).unwrap()).unwrap();
        socket.connect(&SockAddr::unix(&path).unwrap()).unwrap();
        socket.set_nonblocking(true).unwrap();
        tokio::net::UnixStream::from_std(socket.into()).unwrap()
    };
    assert_eq!(
        body(&get(bound).await),
        format!("unix {:?}", Some(client_path.as_path()))
    );

    // The make service sees the peer before anything is served: refused, then allowed.
    let (socket, _) = tcp_client();
    let refused = get(socket.connect(made_addr).await.unwrap()).await;
    assert!(refused.is_empty(), "{refused}");
    let (socket, local) = tcp_client();
    *allowed.0.lock().unwrap() = Some(local);
    let client = socket.connect(made_addr).await.unwrap();
    assert_eq!(body(&get(client).await), format!("tcp {local}"));

    endless.request(endless_tokio::Request::Stop);
    let exit = tokio::time::timeout(DEADLINE, endless.run())
        .await
        .expect("stopped before the deadline");
    assert_eq!(exit.code, 0);
    // Each accept loop logs its "stopped accepting" as it ends, which may come after the
    // lifecycle's end.
    for serving in serving {
        tokio::time::timeout(DEADLINE, serving.stopped())
            .await
            .expect("every accept loop ends");
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&client_path);

    // The server's lines (the refused connection's, each listener's "stopped accepting")
    // carry the process's span, as endless' own do.
    let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = logged
        .lines()
        .filter(|line| line.contains(" endless_hyper::"))
        .collect();
    assert!(
        ours.iter()
            .any(|l| l.contains("refused by the make service"))
            && ours
                .iter()
                .filter(|l| l.contains("stopped accepting"))
                .count()
                == 3,
        "{logged}"
    );
    let span = format!("endless{{pid={}}}", std::process::id());
    for line in ours {
        assert!(line.contains(&span), "a line without {span}: {line}");
    }
}
