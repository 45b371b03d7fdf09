//! The demo's load: `connections` HTTP/1.1 keep-alive connections, or HTTP/2 ones
//! (hyper's client connection API over tokio, optionally TLS), each sending `GET /` back to
//! back until the deadline. Like wrk and oha, it never retries a request; unlike them it checks every
//! answer (status 200, body `pid=<n>`) and tells why each failure happened.
//!
//! A failure is anything a client would see go wrong: a connection that cannot be opened,
//! a request that errors or times out, a status other than 200, a body that is not the
//! example's, and a keep-alive connection the server closed between two requests without
//! announcing it (`Connection: close` on the last response) — a client whose next request
//! was already on its way would have lost it. Opening a new connection after a response
//! with `Connection: close` is normal: that is how a draining server sends its clients to
//! the new generation. Over HTTP/2 the announcement is the server's `GOAWAY`, after which
//! the connection takes no new request: the client then opens another one, as it cannot
//! lose a request it did not send; a request the server refuses or resets is a failure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long one request, or opening one connection, may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many failures are kept with their message, to show below the report.
const KEEP_EXAMPLES: usize = 5;

/// Where the load goes.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// TLS, trusting the demo's self-signed certificate only.
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    /// HTTP/2 (prior knowledge, or ALPN `h2` with TLS) instead of HTTP/1.1.
    pub(crate) http2: bool,
}

/// Counters the progress bar reads while the load runs.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// The pid that answered last.
    pub(crate) last_pid: AtomicU32,
    /// Set to end the load early (Ctrl-C).
    pub(crate) stop: AtomicBool,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FailureKind {
    Connect,
    ClosedWithoutWarning,
    Request,
    Timeout,
    Status,
    Body,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "could not open a connection",
            Self::ClosedWithoutWarning => {
                "keep-alive connection closed by the server without `Connection: close`"
            }
            Self::Request => "connection failed under a request",
            Self::Timeout => "request timed out",
            Self::Status => "status other than 200",
            Self::Body => "unexpected body",
        })
    }
}

/// One failure, kept as an example.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) at: Duration,
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

/// What the load saw.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Requests answered with 200 and a pid, latency in microseconds (sorted by
    /// [`Report::merge`]'s caller).
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) failures: BTreeMap<FailureKind, u64>,
    pub(crate) examples: Vec<Failure>,
    /// Answers per pid.
    pub(crate) pids: BTreeMap<u32, u64>,
    /// Connections opened, and how many of them the server ended with `Connection: close`.
    pub(crate) connections: u64,
    pub(crate) announced_closes: u64,
    /// HTTP/2 requests hyper gave back unsent: the connection had received a `GOAWAY`
    /// between the check that it was ready and the request (sent again on a new one).
    pub(crate) not_sent: u64,
}

impl Report {
    pub(crate) fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub(crate) fn requests(&self) -> u64 {
        self.latencies_us.len() as u64 + self.failed()
    }

    fn merge(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        for (kind, n) in other.failures {
            *self.failures.entry(kind).or_default() += n;
        }
        self.examples.extend(other.examples);
        for (pid, n) in other.pids {
            *self.pids.entry(pid).or_default() += n;
        }
        self.connections += other.connections;
        self.announced_closes += other.announced_closes;
        self.not_sent += other.not_sent;
    }
}

/// Runs `connections` connections until `deadline` (or [`Live::stop`]); returns what they
/// saw, latencies sorted.
pub(crate) async fn run(
    target: Target,
    connections: usize,
    start: Instant,
    deadline: Instant,
    live: Arc<Live>,
) -> Report {
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(target.clone(), start, deadline, live.clone())))
        .collect();
    let mut report = Report::default();
    for worker in workers {
        match worker.await {
            Ok(r) => report.merge(r),
            Err(e) => panic!("a load worker failed: {e}"),
        }
    }
    report.latencies_us.sort_unstable();
    report.examples.sort_by_key(|f| f.at);
    report.examples.truncate(KEEP_EXAMPLES);
    report
}

/// A connection's request side, HTTP/1.1 or HTTP/2.
enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// Whether the connection takes another request (waits until it can).
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Self::Http1(s) => s.ready().await,
            Self::Http2(s) => s.ready().await,
        }
    }

    /// Sends `request`; an error with the request given back if it was never sent.
    async fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Empty<Bytes>>>> {
        match self {
            Self::Http1(s) => s.try_send_request(request).await,
            Self::Http2(s) => s.try_send_request(request).await,
        }
    }
}

/// One keep-alive connection at a time, requests back to back.
async fn worker(target: Target, start: Instant, deadline: Instant, live: Arc<Live>) -> Report {
    let mut report = Report::default();
    let host = target.addr.to_string();
    let mut conn: Option<Sender> = None;
    let fail = |report: &mut Report, kind: FailureKind, message: String| {
        live.failures.fetch_add(1, Ordering::Relaxed);
        live.requests.fetch_add(1, Ordering::Relaxed);
        *report.failures.entry(kind).or_default() += 1;
        if report.examples.len() < KEEP_EXAMPLES {
            report.examples.push(Failure {
                at: start.elapsed(),
                kind,
                message,
            });
        }
    };
    while Instant::now() < deadline && !live.stop.load(Ordering::Relaxed) {
        let sender = match &mut conn {
            Some(sender) => sender,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, open(&target)).await {
                Ok(Ok(sender)) => {
                    report.connections += 1;
                    conn.insert(sender)
                }
                Ok(Err(e)) => {
                    fail(&mut report, FailureKind::Connect, e);
                    // Do not spin on a server that is gone.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    fail(&mut report, FailureKind::Connect, "timed out".into());
                    continue;
                }
            },
        };
        // HTTP/2: a connection that takes no more requests after the server's GOAWAY was
        // told to go, as an HTTP/1.1 one by `Connection: close`.
        if matches!(sender, Sender::Http2(_)) && sender.ready().await.is_err() {
            report.announced_closes += 1;
            conn = None;
            continue;
        }
        // The last response did not say `Connection: close`: the connection must still be
        // open. (It cannot have been idle long: requests go back to back.)
        if sender.ready().await.is_err() {
            fail(
                &mut report,
                FailureKind::ClosedWithoutWarning,
                "the connection was closed between two requests".into(),
            );
            conn = None;
            continue;
        }
        let request = Request::get("/")
            .header(header::HOST, &host)
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let t0 = Instant::now();
        let http2 = matches!(sender, Sender::Http2(_));
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            // Whether it was sent, with the error.
            let response = match sender.send(request).await {
                Ok(response) => response,
                Err(mut e) => return Err((e.take_message().is_none(), e.into_error())),
            };
            let status = response.status();
            let close = response
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = response.into_body().collect().await;
            let body = body.map_err(|e| (true, e))?.to_bytes();
            Ok((status, close, body))
        })
        .await;
        let latency = t0.elapsed();
        match answer {
            Err(_) => {
                fail(
                    &mut report,
                    FailureKind::Timeout,
                    format!("no answer in {REQUEST_TIMEOUT:?}"),
                );
                conn = None;
            }
            // HTTP/2: given back unsent, the connection having read a GOAWAY since it said
            // it was ready. Not a failure: sent again on a new connection.
            Ok(Err((false, _))) if http2 => {
                report.not_sent += 1;
                conn = None;
            }
            // HTTP/1.1: given back unsent because the server closed the connection without
            // `Connection: close`.
            Ok(Err((false, e))) => {
                fail(
                    &mut report,
                    FailureKind::ClosedWithoutWarning,
                    error_chain(&e),
                );
                conn = None;
            }
            Ok(Err((true, e))) => {
                fail(&mut report, FailureKind::Request, error_chain(&e));
                conn = None;
            }
            Ok(Ok((status, close, body))) => {
                if close {
                    report.announced_closes += 1;
                    conn = None;
                }
                if status != StatusCode::OK {
                    fail(&mut report, FailureKind::Status, format!("status {status}"));
                    continue;
                }
                let Some(pid) = parse_pid(&body) else {
                    fail(
                        &mut report,
                        FailureKind::Body,
                        format!("body {:?}", String::from_utf8_lossy(&body)),
                    );
                    continue;
                };
                live.requests.fetch_add(1, Ordering::Relaxed);
                live.last_pid.store(pid, Ordering::Relaxed);
                *report.pids.entry(pid).or_default() += 1;
                report
                    .latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
            }
        }
    }
    report
}

/// `pid=<n>\n`, the body of every HTTP example.
fn parse_pid(body: &[u8]) -> Option<u32> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("pid=")?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// A new connection: TCP, TLS if asked, and the HTTP handshake.
async fn open(target: &Target) -> Result<Sender, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    match &target.tls {
        None => handshake(tcp, target.http2).await,
        Some(connector) => {
            let name = rustls_pki_types::ServerName::from(target.addr.ip());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            handshake(tls, target.http2).await
        }
    }
}

async fn handshake<T>(io: T, http2: bool) -> Result<Sender, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| format!("HTTP handshake: {}", error_chain(&e));
    // The connection's errors reach the request that was in flight.
    if http2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(Sender::Http2(sender));
    }
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await.map_err(failed)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Sender::Http1(sender))
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A TLS client that trusts `cert` only and speaks HTTP/1.1, or HTTP/2 (ALPN).
pub(crate) fn tls_connector(
    cert: rustls_pki_types::CertificateDer<'static>,
    http2: bool,
) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert)
        .map_err(|e| format!("the demo's certificate: {e}"))?;
    // rustls 0.23.48 deprecates ring's provider, with no other way to it within 0.23 (see
    // endless_hyper::tls); the tests and the demo use ring all the same.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::parse_pid;

    #[test]
    fn reads_the_pid_body() {
        assert_eq!(parse_pid(b"pid=4242\n"), Some(4242));
        assert_eq!(parse_pid(b"pid=4242"), None);
        assert_eq!(parse_pid(b"hello\n"), None);
    }
}
