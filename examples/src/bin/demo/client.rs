//! The demo's load: `connections` HTTP/1.1 keep-alive connections (hyper's client
//! connection API over tokio, optionally TLS), each sending `GET /` back to back until the
//! deadline. Like wrk and oha, it never retries a request; unlike them it checks every
//! answer (status 200, body `pid=<n>`) and tells why each failure happened.
//!
//! A failure is anything a client would see go wrong: a connection that cannot be opened,
//! a request that errors or times out, a status other than 200, a body that is not the
//! example's, and a keep-alive connection the server closed between two requests without
//! announcing it (`Connection: close` on the last response) — a client whose next request
//! was already on its way would have lost it. Opening a new connection after a response
//! with `Connection: close` is normal: that is how a draining server sends its clients to
//! the new generation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
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

type Sender = http1::SendRequest<Empty<Bytes>>;

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
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let close = response
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, close, body))
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
            Ok(Err(e)) => {
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

/// A new connection: TCP, TLS if asked, and the HTTP/1.1 handshake.
async fn open(target: &Target) -> Result<Sender, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    match &target.tls {
        None => handshake(tcp).await,
        Some(connector) => {
            let name = rustls_pki_types::ServerName::from(target.addr.ip());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            handshake(tls).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<Sender, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {}", error_chain(&e)))?;
    // Its errors reach the request that was in flight.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
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

/// A TLS client that trusts `cert` only and speaks HTTP/1.1.
pub(crate) fn tls_connector(
    cert: rustls_pki_types::CertificateDer<'static>,
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
