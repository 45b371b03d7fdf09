//! `ws::upgraded_stream` on connections a real `Server` serves: as served (`serve`) and
//! beside idle takeover (`hand_over_idle`, another stream type under hyper). The stream
//! comes back with the bytes the client sent right behind its upgrade request (hyper read
//! them with it), it is the connection's tracked stream (the tracker counts it once, and
//! no more once it is dropped), and it reads and writes the client's socket. Over TLS
//! (with the `tls` feature) it is refused: the session cannot move.
//!
//! One test only: it starts `Endless` in this process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use endless_hyper::ws::{Socket, upgraded_stream};
use endless_hyper::{HyperService, Server};
use endless_tokio::{Endless, Request, Stream, Tokio};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Response, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the client sends right behind its request, in the same write.
const EARLY: &[u8] = b"early bytes of the new protocol";

/// The listeners of the test.
const LISTENERS: usize = if cfg!(feature = "tls") { 3 } else { 2 };

type Taken = Result<(Stream, Bytes), String>;

/// Upgrades every request to the protocol `test` and sends what `upgraded_stream` made of
/// the connection.
fn service(
    taken: mpsc::UnboundedSender<Taken>,
) -> HyperService<
    impl hyper::service::Service<
        hyper::Request<Incoming>,
        Response = Response<Empty<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static,
> {
    HyperService(hyper::service::service_fn(move |req| {
        let taken = taken.clone();
        tokio::spawn(async move {
            let upgraded = hyper::upgrade::on(req).await.expect("upgraded");
            let _ = taken.send(upgraded_stream::<Tokio>(upgraded).map_err(|e| e.to_string()));
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "test")
            .body(Empty::new())
            .expect("a response");
        std::future::ready(Ok::<_, Infallible>(response))
    }))
}

/// Upgrades a connection to `addr`, sending [`EARLY`] in the same write as the request;
/// returns the client's socket, past the `101` response.
async fn upgrade(addr: SocketAddr) -> TcpStream {
    let client = TcpStream::connect(addr).await.expect("connect");
    upgrade_on(client).await
}

/// [`upgrade`] on a connected client.
async fn upgrade_on<C: AsyncReadExt + AsyncWriteExt + Unpin>(mut client: C) -> C {
    let mut request =
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n".to_vec();
    request.extend_from_slice(EARLY);
    client.write_all(&request).await.expect("send the request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        client.read_exact(&mut byte).await.expect("the response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client
}

/// Waits until the tracker counts `n`.
async fn tracked(endless: &Endless, n: usize) {
    let counted = async {
        while endless.tracker().len() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(DEADLINE, counted)
        .await
        .unwrap_or_else(|_| panic!("tracked {}, not {n}", endless.tracker().len()));
}

async fn check(endless: &Endless, addr: SocketAddr, taken: &mut mpsc::UnboundedReceiver<Taken>) {
    // Each listener's accept in progress counts as one (see `Tracker::track`).
    tracked(endless, LISTENERS).await;
    let mut client = upgrade(addr).await;
    let (stream, read) = tokio::time::timeout(DEADLINE, taken.recv())
        .await
        .expect("upgraded within the deadline")
        .expect("the service sends")
        .expect("an endless stream");
    assert_eq!(&read[..], EARLY, "the bytes behind the request come back");
    assert!(matches!(stream, Stream::Tcp(_)));
    // The connection counts once: as served, and now as the stream taken back.
    tracked(endless, LISTENERS + 1).await;

    let mut socket = Socket::from(stream);
    socket.write_all(b"from the server").await.unwrap();
    let mut got = [0u8; 15];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"from the server");
    client.write_all(b"from the client").await.unwrap();
    socket.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"from the client");

    drop(socket);
    tracked(endless, LISTENERS).await;
    let mut end = [0u8; 1];
    assert_eq!(client.read(&mut end).await.unwrap(), 0, "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracked_stream_comes_back_out_of_an_upgrade() {
    let endless = Endless::start().unwrap();
    let (tx, mut taken) = mpsc::unbounded_channel();

    let plain = endless.tcp_listener("plain", "127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap();
    Server::new().serve(plain, service(tx.clone()));

    let idle = endless.tcp_listener("idle", "127.0.0.1:0").unwrap();
    let idle_addr = idle.local_addr().unwrap();
    Server::new()
        .hand_over_idle(&endless, "http")
        .unwrap()
        .serve(idle, service(tx.clone()));
    #[cfg(feature = "tls")]
    let tls = tls::serve(&endless, tx.clone());
    drop(tx);
    endless.ready();

    check(&endless, plain_addr, &mut taken).await;
    check(&endless, idle_addr, &mut taken).await;
    #[cfg(feature = "tls")]
    tls.check(&mut taken).await;

    endless.request(Request::Stop);
    assert_eq!(endless.run().await.code, 0);
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use rustls_pki_types::{PrivateKeyDer, ServerName};

    use super::*;

    pub(super) struct Tls {
        addr: SocketAddr,
        connector: tokio_rustls::TlsConnector,
    }

    /// Serves the upgrading service over TLS, with a self-signed certificate.
    pub(super) fn serve(endless: &Endless, taken: mpsc::UnboundedSender<Taken>) -> Tls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let acceptor = endless_hyper::tls::acceptor(vec![cert.cert.der().clone()], key).unwrap();
        let listener = endless.tcp_listener("tls", "127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        Server::new().tls(acceptor).serve(listener, service(taken));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        // ring's provider, deprecated in rustls 0.23.48 (see endless_hyper::tls).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Tls { addr, connector }
    }

    impl Tls {
        /// An upgrade over TLS is refused, with the connection back.
        pub(super) async fn check(&self, taken: &mut mpsc::UnboundedReceiver<Taken>) {
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let client = self.connector.connect(name, tcp).await.expect("TLS");
            let _client = upgrade_on(client).await;
            let refused = tokio::time::timeout(DEADLINE, taken.recv())
                .await
                .expect("upgraded within the deadline")
                .expect("the service sends");
            let e = refused.expect_err("a TLS connection is not movable");
            assert!(e.contains("not an endless stream"), "{e}");
        }
    }
}
