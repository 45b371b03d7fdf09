//! An in-repo HTTP load client for the end-to-end tests: hyper 1.x client connections over
//! TCP, or over TLS (tokio-rustls) for HTTP/1.1 and HTTP/2 (prior knowledge in cleartext,
//! ALPN over TLS), and the test PKI (an rcgen CA and the leaf certificates it signs).
//!
//! The load behaves like wrk and oha, which never retry: `connections` connections, each
//! sending requests back to back on keep-alive (HTTP/2: `streams` requests at a time on each
//! connection). A request is never sent twice. What counts as a failure:
//!
//! - the connection fails while a request is in flight, or the request times out. HTTP/1.1:
//!   in flight from the moment it is handed to hyper. HTTP/2: from the moment its `HEADERS`
//!   are on the wire (the client reads every frame off the wire both ways, [`FrameLog`]);
//!   a stream the server refuses with its final `GOAWAY` (never processed) after the client
//!   wrote it is a failure;
//! - the response is not `200`, or its body is not `pid=<n>\n`;
//! - HTTP/1.1: the server closes a keep-alive connection whose last response did not say
//!   `Connection: close` (even between two requests: wrk has its next request on the wire by
//!   then, so it fails; this client would only see the close first by luck of timing);
//! - HTTP/2: the connection ends without a `GOAWAY` from the server, or with one whose error
//!   code is not `NO_ERROR`;
//! - a connection cannot be opened (connect, TLS or HTTP/2 handshake).
//!
//! What is normal: opening a new connection after a response with `Connection: close`, or
//! after a `GOAWAY`; and, HTTP/2, a request the client's HTTP/2 layer refuses without writing
//! it because the connection had received a `GOAWAY` by then (the client checks
//! `SendRequest::is_ready` before each request; a `GOAWAY` read between that check and the
//! write is the only way to get there). hyper returns some of those requests
//! ([`Report::not_sent`]) and reports the others as failed although it never wrote them
//! ([`Report::unwritten`], told apart from real failures with the wire, see
//! [`http2_worker`]). Both are counted and shown, not failed. So are the requests hyper's
//! client cancels itself (it resets a stream it has just written when it reads a `GOAWAY` at
//! that moment, [`Report::client_aborted`]): a bug of the client, which a server cannot
//! prevent. So are the requests hyper's client loses without writing them, neither sent nor
//! failed, when its dispatcher stops at the `GOAWAY` while they are being queued
//! ([`Report::lost_unwritten`], see [`Conn::get`]; told apart from real failures with the wire
//! in the same way).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long one request (or opening one connection) may take before it counts as failed.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2: how long after hyper dropped a connection's transport a request handed to it may
/// stay unresolved before it counts as lost ([`Outcome::Lost`]). Dropping the connection fails
/// its streams at once (h2 closes them all); this only covers a loaded machine's delays.
pub(crate) const LOST_GRACE: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- the test PKI --------------------------------------------------------------------------

/// A CA made with rcgen, and the leaf certificate files a TLS server is started with
/// (`cert.pem`, `key.pem` in a directory of the test).
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA; the leaf files will be in `dir` (nothing is written yet).
    pub fn new(dir: &Path) -> Self {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "endless test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("generate the CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        Self {
            ca,
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        }
    }

    /// The CA certificate, for a client's root store.
    pub fn ca_cert(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// The server's command line arguments for the leaf files.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert_file.display().to_string(),
            "--tls-key".to_owned(),
            self.key_file.display().to_string(),
        ]
    }

    /// Issues a new leaf certificate for `127.0.0.1` and `localhost` (serial `serial`,
    /// common name `endless test leaf <serial>`, a new key) and puts it in place of the leaf
    /// files, each replaced atomically (written next to it, renamed over it). Returns the
    /// certificate, as a client will see it.
    pub fn issue_leaf(&self, serial: u64) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf parameters");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("endless test leaf {serial}"),
        );
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign the leaf");
        write_atomically(&self.key_file, key.serialize_pem().as_bytes());
        write_atomically(&self.cert_file, cert.pem().as_bytes());
        cert.der().clone()
    }
}

fn write_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// A short name for a certificate (a hash of its DER), to compare what connections saw.
pub fn cert_id(der: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    der.hash(&mut h);
    h.finish()
}

// ---- targets and connections ---------------------------------------------------------------

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Http1,
    Http2,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        })
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) proto: Proto,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("proto", &self.proto)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// Cleartext: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    pub fn cleartext(addr: SocketAddr, proto: Proto) -> Self {
        Self {
            addr,
            proto,
            tls: None,
        }
    }

    /// TLS trusting `ca` only, offering only `proto` by ALPN (and requiring the server to
    /// pick it). No session resumption: every connection shows the certificate of the
    /// process that accepted it.
    pub fn tls(addr: SocketAddr, proto: Proto, ca: CertificateDer<'static>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("add the CA to the root store");
        // rustls 0.23.48 deprecates ring's provider, with no other way to it within 0.23 (see
        // endless_hyper::tls); the tests and the demo use ring all the same.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn(proto).to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            addr,
            proto,
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn uri(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }
}

fn alpn(proto: Proto) -> &'static [u8] {
    match proto {
        Proto::Http1 => b"http/1.1",
        Proto::Http2 => b"h2",
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The HTTP/2 frames of a connection, read off the wire in both directions: every
/// `GOAWAY` the server sent, and the last [`FrameLog::KEPT`] frames (for failure reports).
#[derive(Debug, Default)]
pub(crate) struct FrameLog {
    goaways: Mutex<Vec<GoAway>>,
    recent: Mutex<std::collections::VecDeque<Frame>>,
    streams: Mutex<StreamBook>,
    /// When hyper dropped the transport (the HTTP/2 connection is gone).
    closed_at: Mutex<Option<Instant>>,
}

/// The streams of a connection, as the wire shows them.
#[derive(Debug, Default)]
struct StreamBook {
    /// Streams whose `HEADERS` the client wrote.
    written: std::collections::BTreeSet<u32>,
    /// Streams the server ended (`END_STREAM` on its `HEADERS` or `DATA`).
    answered: std::collections::BTreeSet<u32>,
    /// Streams the client reset (`RST_STREAM` written).
    reset: std::collections::BTreeSet<u32>,
}

/// A `GOAWAY` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway {
    pub(crate) last_stream_id: u32,
    pub error_code: u32,
}

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Sent,
    Received,
}

/// A frame header (and, for `GOAWAY`, the last stream id).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) dir: Dir,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) goaway: Option<GoAway>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.dir {
            Dir::Sent => ">",
            Dir::Received => "<",
        };
        let kind = match self.kind {
            0x0 => "DATA",
            0x1 => "HEADERS",
            0x3 => "RST_STREAM",
            0x4 => "SETTINGS",
            0x6 => "PING",
            0x7 => "GOAWAY",
            0x8 => "WINDOW_UPDATE",
            _ => "frame",
        };
        write!(f, "{dir}{kind}")?;
        if self.stream != 0 {
            write!(f, "#{}", self.stream)?;
        }
        // ACK for SETTINGS and PING, END_STREAM for DATA and HEADERS.
        if self.flags & 0x1 != 0 {
            f.write_str(if matches!(self.kind, 0x4 | 0x6) {
                "+ACK"
            } else {
                "+ES"
            })?;
        }
        if let Some(g) = self.goaway {
            write!(f, "(last={},code={})", g.last_stream_id, g.error_code)?;
        }
        Ok(())
    }
}

impl FrameLog {
    /// How many recent frames are kept.
    pub(crate) const KEPT: usize = 64;

    /// The `GOAWAY` frames the server sent.
    pub(crate) fn goaways(&self) -> Vec<GoAway> {
        lock(&self.goaways).clone()
    }

    pub(crate) fn recent(&self) -> Vec<Frame> {
        lock(&self.recent).iter().copied().collect()
    }

    /// How many streams the client wrote on the wire.
    pub(crate) fn written(&self) -> usize {
        lock(&self.streams).written.len()
    }

    /// Streams the client wrote on the wire that the server has not ended: those the client
    /// did not reset, and those it reset.
    pub(crate) fn unanswered(&self) -> (Vec<u32>, Vec<u32>) {
        let book = lock(&self.streams);
        book.written
            .difference(&book.answered)
            .partition(|id| !book.reset.contains(id))
    }

    fn push(&self, frame: Frame) {
        match (frame.dir, frame.kind) {
            (Dir::Received, 0x7) => {
                if let Some(g) = frame.goaway {
                    lock(&self.goaways).push(g);
                }
            }
            (Dir::Sent, 0x1) => {
                lock(&self.streams).written.insert(frame.stream);
            }
            (Dir::Sent, 0x3) => {
                lock(&self.streams).reset.insert(frame.stream);
            }
            (Dir::Received, 0x0 | 0x1) if frame.flags & 0x1 != 0 => {
                lock(&self.streams).answered.insert(frame.stream);
            }
            _ => {}
        }
        let mut recent = lock(&self.recent);
        if recent.len() == Self::KEPT {
            recent.pop_front();
        }
        recent.push_back(frame);
    }
}

/// A parser of one direction of an HTTP/2 byte stream.
#[derive(Debug)]
struct FrameParser {
    dir: Dir,
    /// Bytes still to skip (the client's connection preface).
    skip: usize,
    state: FrameState,
}

#[derive(Debug)]
enum FrameState {
    Header {
        buf: [u8; 9],
        have: usize,
    },
    Payload {
        frame: Frame,
        left: usize,
        goaway: Option<Vec<u8>>,
    },
}

impl FrameParser {
    fn new(dir: Dir, skip: usize) -> Self {
        Self {
            dir,
            skip,
            state: FrameState::Header {
                buf: [0; 9],
                have: 0,
            },
        }
    }

    fn feed(&mut self, mut data: &[u8], log: &FrameLog) {
        let skip = self.skip.min(data.len());
        self.skip -= skip;
        data = &data[skip..];
        let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
        while !data.is_empty() {
            match &mut self.state {
                FrameState::Header { buf, have } => {
                    let take = (9 - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have == 9 {
                        let len = usize::from(buf[0]) << 16
                            | usize::from(buf[1]) << 8
                            | usize::from(buf[2]);
                        let frame = Frame {
                            dir: self.dir,
                            kind: buf[3],
                            flags: buf[4],
                            stream: word(&buf[5..9]),
                            goaway: None,
                        };
                        let goaway = (frame.kind == 0x7).then(Vec::new);
                        self.state = FrameState::Payload {
                            frame,
                            left: len,
                            goaway,
                        };
                    }
                }
                FrameState::Payload { left, goaway, .. } => {
                    let take = (*left).min(data.len());
                    if let Some(g) = goaway {
                        let want = 8usize.saturating_sub(g.len()).min(take);
                        g.extend_from_slice(&data[..want]);
                    }
                    *left -= take;
                    data = &data[take..];
                }
            }
            if let FrameState::Payload {
                frame,
                left: 0,
                goaway,
            } = &self.state
            {
                let mut frame = *frame;
                if let Some(g) = goaway.as_ref().filter(|g| g.len() == 8) {
                    frame.goaway = Some(GoAway {
                        last_stream_id: word(&g[..4]),
                        error_code: u32::from_be_bytes([g[4], g[5], g[6], g[7]]),
                    });
                }
                log.push(frame);
                self.state = FrameState::Header {
                    buf: [0; 9],
                    have: 0,
                };
            }
        }
    }
}

/// The client's HTTP/2 connection preface, before its first frame.
const PREFACE_LEN: usize = 24;

/// A stream that parses the HTTP/2 frames going through it, both ways, into a [`FrameLog`].
/// Dropped with hyper's HTTP/2 connection: then it records when, and tells
/// [`Conn::transport_gone`].
struct Sniffer<T> {
    inner: T,
    read: FrameParser,
    written: FrameParser,
    log: Arc<FrameLog>,
    /// Dropped with the transport, which wakes the receivers.
    _gone: tokio::sync::watch::Sender<()>,
}

impl<T> Sniffer<T> {
    fn new(inner: T, log: Arc<FrameLog>, gone: tokio::sync::watch::Sender<()>) -> Self {
        Self {
            inner,
            read: FrameParser::new(Dir::Received, 0),
            written: FrameParser::new(Dir::Sent, PREFACE_LEN),
            log,
            _gone: gone,
        }
    }
}

impl<T> Drop for Sniffer<T> {
    fn drop(&mut self) {
        *lock(&self.log.closed_at) = Some(Instant::now());
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        this.read.feed(&buf.filled()[before..], &this.log);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffer<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        let this = &mut *self;
        this.written.feed(&buf[..n], &this.log);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        let this = &mut *self;
        let mut left = n;
        for b in bufs {
            let take = left.min(b.len());
            this.written.feed(&b[..take], &this.log);
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

type Body = Empty<Bytes>;

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// What every handle of one connection shares.
#[derive(Debug)]
struct ConnInfo {
    id: u64,
    target: Target,
    peer_cert: Option<CertificateDer<'static>>,
    frames: Arc<FrameLog>,
    /// The connection task's end (hyper's dispatcher of the requests; HTTP/2: it stops at the
    /// first `GOAWAY`), once it ended, and when.
    ended: Arc<Mutex<Option<TaskEnd>>>,
    /// When the connection was opened.
    opened: Instant,
    /// HTTP/2: fails (`changed()`) once hyper dropped the transport.
    gone: Option<tokio::sync::watch::Receiver<()>>,
}

/// When a connection task ended, and how.
type TaskEnd = (Instant, Result<(), String>);

/// One client connection (for HTTP/2, one handle of it: [`Conn::stream`] makes more).
pub struct Conn {
    info: Arc<ConnInfo>,
    sender: Sender,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

/// A response, read to the end.
#[derive(Debug, Clone)]
pub struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    /// The response said `Connection: close` (HTTP/1.1).
    pub connection_close: bool,
    pub latency: Duration,
}

impl Answer {
    /// The pid of a `200` response whose body is `pid=<n>\n`, or what is wrong with it.
    pub fn pid(&self) -> Result<u32, String> {
        if self.status != StatusCode::OK {
            return Err(format!("status {} (body {:?})", self.status, self.body));
        }
        std::str::from_utf8(&self.body)
            .ok()
            .and_then(|b| b.strip_prefix("pid=")?.strip_suffix('\n')?.parse().ok())
            .ok_or_else(|| format!("not a `pid=<n>\\n` body: {:?}", self.body))
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The body, as text (lossily).
    pub fn body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How one request went.
#[derive(Debug)]
pub enum Outcome {
    Answered(Answer),
    /// hyper gave the request back without writing any of it (the connection was closed or
    /// going away).
    NotSent(String),
    /// The request was sent (at least handed to the connection) and did not get a whole
    /// response.
    Failed(String),
    /// No whole response within [`REQUEST_TIMEOUT`].
    TimedOut(String),
    /// HTTP/2: hyper neither answered nor failed the request [`LOST_GRACE`] after the
    /// connection was gone (see [`Conn::get`]).
    Lost(String),
}

/// An error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

impl Conn {
    /// Opens a connection (TCP, TLS with the ALPN of the target's protocol, HTTP
    /// handshake), within [`REQUEST_TIMEOUT`].
    pub async fn open(target: &Target, id: u64) -> Result<Self, String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, Self::open_inner(target, id)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "opening a connection took over {REQUEST_TIMEOUT:?}"
            )),
        }
    }

    async fn open_inner(target: &Target, id: u64) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let (io, peer_cert): (Box<dyn Io>, _) = match &target.tls {
            None => (Box::new(tcp), None),
            Some(connector) => {
                let name = ServerName::from(target.addr.ip());
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {}", chain(&e)))?;
                let (_, session) = tls.get_ref();
                let negotiated = session.alpn_protocol();
                if negotiated != Some(alpn(target.proto)) {
                    return Err(format!(
                        "ALPN: asked for {:?}, the server chose {:?}",
                        String::from_utf8_lossy(alpn(target.proto)),
                        negotiated.map(String::from_utf8_lossy)
                    ));
                }
                let cert = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .cloned()
                    .ok_or("TLS: the server showed no certificate")?;
                (Box::new(tls), Some(cert))
            }
        };
        let frames = Arc::new(FrameLog::default());
        let ended = Arc::new(Mutex::new(None));
        let mut gone = None;
        let sender = match target.proto {
            Proto::Http1 => {
                let (sender, conn) = http1::handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {}", chain(&e)))?;
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let result = conn.await.map_err(|e| chain(&e));
                    *lock(&ended) = Some((Instant::now(), result));
                });
                Sender::H1(sender)
            }
            Proto::Http2 => {
                let (gone_tx, gone_rx) = tokio::sync::watch::channel(());
                gone = Some(gone_rx);
                let io = Sniffer::new(io, Arc::clone(&frames), gone_tx);
                let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {}", chain(&e)))?;
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let result = conn.await.map_err(|e| chain(&e));
                    *lock(&ended) = Some((Instant::now(), result));
                });
                Sender::H2(sender)
            }
        };
        Ok(Self {
            info: Arc::new(ConnInfo {
                id,
                target: target.clone(),
                peer_cert,
                frames,
                ended,
                opened: Instant::now(),
                gone,
            }),
            sender,
        })
    }

    pub fn id(&self) -> u64 {
        self.info.id
    }

    pub fn proto(&self) -> Proto {
        self.info.target.proto
    }

    /// The certificate the server showed (TLS).
    pub fn peer_cert(&self) -> Option<&CertificateDer<'static>> {
        self.info.peer_cert.as_ref()
    }

    /// The `GOAWAY` frames received so far (HTTP/2).
    pub fn goaways(&self) -> Vec<GoAway> {
        self.info.frames.goaways()
    }

    /// The streams written on the wire that the server has not ended (HTTP/2): those the
    /// client did not reset, and those it reset.
    pub(crate) fn unanswered_streams(&self) -> (Vec<u32>, Vec<u32>) {
        self.info.frames.unanswered()
    }

    /// How many streams the client wrote on the wire (HTTP/2).
    pub(crate) fn written_streams(&self) -> usize {
        self.info.frames.written()
    }

    /// The last frames of the connection, both ways (HTTP/2).
    pub(crate) fn recent_frames(&self) -> Vec<Frame> {
        self.info.frames.recent()
    }

    /// How the connection task ended, if it did.
    pub(crate) fn ended(&self) -> Option<Result<(), String>> {
        lock(&self.info.ended)
            .as_ref()
            .map(|(_, result)| result.clone())
    }

    /// Another handle of this HTTP/2 connection, for concurrent streams.
    pub(crate) fn stream(&self) -> Self {
        let Sender::H2(sender) = &self.sender else {
            panic!("only an HTTP/2 connection has streams");
        };
        Self {
            info: Arc::clone(&self.info),
            sender: Sender::H2(sender.clone()),
        }
    }

    /// Waits until the connection takes a request; false if it is closed (or, HTTP/2, no
    /// longer takes new streams).
    pub(crate) async fn ready(&mut self) -> bool {
        match &mut self.sender {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    /// Whether the connection is closed (HTTP/2: the dispatcher is gone, after a `GOAWAY`
    /// or the end of the connection).
    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Resolves [`LOST_GRACE`] after hyper dropped the transport of this HTTP/2 connection.
    fn transport_gone(&self) -> impl Future<Output = ()> + use<> {
        let gone = self.info.gone.clone();
        async move {
            let mut gone = gone.expect("an HTTP/2 connection");
            // The sender is the transport's: `changed` fails once it is dropped.
            while gone.changed().await.is_ok() {}
            tokio::time::sleep(LOST_GRACE).await;
        }
    }

    /// `GET path`, the response read to the end, within [`REQUEST_TIMEOUT`]. Never retried.
    /// HTTP/1.1 waits until the connection takes a request (see [`Conn::ready`]).
    ///
    /// HTTP/2: [`Outcome::Lost`] if hyper has neither answered nor failed the request
    /// [`LOST_GRACE`] after it dropped the connection's transport. hyper 1.x loses such
    /// requests: `SendRequest::try_send_request` queues the request on the unbounded tokio
    /// channel of the connection's dispatcher (`client/dispatch.rs`), which stops at the
    /// first `GOAWAY` (`proto/h2/client.rs`, `ClientTask::poll`) and drops its receiver,
    /// counting on that to fail every queued request. But a send that had claimed its slot
    /// in the channel before the receiver closed, and writes it after the receiver drained
    /// the channel (the sending thread preempted in between), stays in the channel — and so
    /// does every request queued behind that slot, which the receiver cannot see past —
    /// until the last `SendRequest` of the connection is dropped: never sent, never failed.
    /// (tokio documents a value sent that way as dropped only with the channel, tokio issue
    /// #7714.) Seen here on a loaded machine: a `try_send_request` call took 14 to 64 ms
    /// (preempted), and the dispatcher stopped within it.
    pub async fn get(&mut self, path: &str) -> Outcome {
        let target = &self.info.target;
        let request = match target.proto {
            Proto::Http1 => Request::get(path).header(header::HOST, target.addr.to_string()),
            Proto::Http2 => Request::get(target.uri(path)),
        }
        .body(Body::new())
        .expect("a valid request");
        let start = Instant::now();
        let sent = match &mut self.sender {
            Sender::H1(s) => {
                // The dispatcher takes the next request once it is done with the previous
                // response (without waiting, hyper refuses it as "not ready").
                if let Err(e) = s.ready().await {
                    return Outcome::NotSent(format!("the connection is closed: {}", chain(&e)));
                }
                let f = s.try_send_request(request);
                tokio::time::timeout(REQUEST_TIMEOUT, f).await
            }
            Sender::H2(s) => {
                let f = s.try_send_request(request);
                let handed = start.elapsed();
                tokio::select! {
                    biased;
                    sent = tokio::time::timeout(REQUEST_TIMEOUT, f) => sent,
                    () = self.transport_gone() => {
                        let opened = self.info.opened;
                        let at = |t: Instant| t.saturating_duration_since(opened);
                        let stopped = lock(&self.info.ended).as_ref().map(|(t, _)| at(*t));
                        let closed = lock(&self.info.frames.closed_at).map(at);
                        return Outcome::Lost(format!(
                            "hyper neither sent nor failed the request {LOST_GRACE:?} after it \
                             dropped the connection (times from the connection's opening: \
                             handed to hyper at {:?}, `try_send_request` took {handed:?}; \
                             hyper's dispatcher stopped at {stopped:?}, the transport was \
                             dropped at {closed:?})",
                            at(start),
                        ));
                    }
                }
            }
        };
        let response = match sent {
            Err(_) => return Outcome::TimedOut(format!("no response within {REQUEST_TIMEOUT:?}")),
            Ok(Ok(response)) => response,
            Ok(Err(mut e)) => {
                let unsent = e.take_message().is_some();
                let e = chain(&e.into_error());
                return if unsent {
                    Outcome::NotSent(e)
                } else {
                    Outcome::Failed(e)
                };
            }
        };
        let status = response.status();
        let connection_close = response
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
            });
        let left = REQUEST_TIMEOUT.saturating_sub(start.elapsed());
        let body = match tokio::time::timeout(left, response.into_body().collect()).await {
            Err(_) => {
                return Outcome::TimedOut(format!("no whole body within {REQUEST_TIMEOUT:?}"));
            }
            Ok(Err(e)) => return Outcome::Failed(format!("reading the body: {}", chain(&e))),
            Ok(Ok(body)) => body.to_bytes(),
        };
        Outcome::Answered(Answer {
            status,
            body,
            connection_close,
            latency: start.elapsed(),
        })
    }
}

// ---- the load ------------------------------------------------------------------------------

/// How much load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Connections open at any time.
    pub connections: usize,
    /// HTTP/2: requests in flight on each connection at any time.
    pub streams: usize,
    /// The path every request asks for.
    pub path: String,
    /// HTTP/1: a connection may move to the next generation (connection takeover), so a
    /// new pid on the same connection is no failure.
    pub connections_move: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            connections: 32,
            streams: 4,
            path: "/".to_owned(),
            connections_move: false,
        }
    }
}

/// One good response.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub pid: u32,
    pub(crate) latency: Duration,
    /// When it completed, since the load started.
    pub(crate) at: Duration,
    /// [`cert_id`] of the certificate the connection saw (TLS).
    pub cert: Option<u64>,
}

/// One failed request (or connection).
#[derive(Debug, Clone)]
pub struct Failure {
    /// When it was seen, since the load started.
    pub(crate) at: Duration,
    pub(crate) conn: u64,
    pub(crate) proto: Proto,
    /// The pid that had answered on this connection before, if any.
    pub(crate) last_pid: Option<u32>,
    /// How many responses the connection had had.
    pub(crate) answered: usize,
    pub(crate) what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={:.3}s {} conn #{} (after {} response(s) from {}): {}",
            self.at.as_secs_f64(),
            self.proto,
            self.conn,
            self.answered,
            self.last_pid
                .map_or_else(|| "nobody".to_owned(), |p| format!("pid {p}")),
            self.what
        )
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    started: Mutex<Option<Instant>>,
    next_conn: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    by_pid: Mutex<HashMap<u32, usize>>,
    failures: Mutex<Vec<Failure>>,
    opened: AtomicUsize,
    closes: AtomicUsize,
    goaways: AtomicUsize,
    not_sent: AtomicUsize,
    unwritten: AtomicUsize,
    client_aborted: AtomicUsize,
    aborted_examples: Mutex<Vec<String>>,
    lost_unwritten: AtomicUsize,
    lost_examples: Mutex<Vec<String>>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn since_start(&self) -> Duration {
        lock(&self.started).map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn record(&self, conn: &Conn, pid: u32, latency: Duration) {
        let sample = Sample {
            pid,
            latency,
            at: self.since_start(),
            cert: conn.peer_cert().map(|c| cert_id(c)),
        };
        lock(&self.samples).push(sample);
        *lock(&self.by_pid).entry(pid).or_default() += 1;
    }
}

/// Per-connection bookkeeping of a worker.
#[derive(Debug, Default)]
struct ConnTally {
    last_pid: Option<u32>,
    answered: usize,
    /// See [`LoadConfig::connections_move`].
    may_move: bool,
}

impl ConnTally {
    fn fail(&self, shared: &Shared, conn: &Conn, what: impl Into<String>) {
        lock(&shared.failures).push(Failure {
            at: shared.since_start(),
            conn: conn.id(),
            proto: conn.proto(),
            last_pid: self.last_pid,
            answered: self.answered,
            what: what.into(),
        });
    }

    /// Checks and records an answer; false if it failed.
    fn answered(&mut self, shared: &Shared, conn: &Conn, answer: &Answer) -> bool {
        match answer.pid() {
            Ok(pid) => {
                if let Some(last) = self.last_pid.filter(|&last| last != pid && !self.may_move) {
                    self.fail(
                        shared,
                        conn,
                        format!("answered by pid {pid} after pid {last} on the same connection"),
                    );
                }
                self.last_pid = Some(pid);
                self.answered += 1;
                shared.record(conn, pid, answer.latency);
                true
            }
            Err(e) => {
                self.fail(shared, conn, e);
                false
            }
        }
    }
}

/// A running load: worker tasks on a runtime of their own, until [`Load::stop`].
pub struct Load {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    target: Target,
    config: LoadConfig,
}

impl fmt::Debug for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Load")
            .field("target", &self.target)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Load {
    /// Starts `config.connections` workers against `target`.
    pub fn start(target: Target, config: LoadConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the load");
        let shared = Arc::new(Shared::default());
        *lock(&shared.started) = Some(Instant::now());
        let workers = (0..config.connections)
            .map(|_| {
                let (target, shared, config) =
                    (target.clone(), Arc::clone(&shared), config.clone());
                runtime.spawn(async move {
                    match target.proto {
                        Proto::Http1 => http1_worker(target, shared, config).await,
                        Proto::Http2 => http2_worker(target, shared, config).await,
                    }
                })
            })
            .collect();
        Self {
            runtime,
            shared,
            workers,
            target,
            config,
        }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.shared.since_start()
    }

    /// How many good responses came from `pid` so far.
    pub fn responses_from(&self, pid: u32) -> usize {
        lock(&self.shared.by_pid).get(&pid).copied().unwrap_or(0)
    }

    /// How many requests failed so far.
    pub fn failures(&self) -> usize {
        lock(&self.shared.failures).len()
    }

    /// Stops the workers (each finishes the request it has in flight and drops its
    /// connection) and returns what happened.
    pub fn stop(self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        let elapsed = self.shared.since_start();
        let workers = self.workers;
        let joined = self.runtime.block_on(async move {
            tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(5), async move {
                for w in workers {
                    w.await.expect("a load worker panicked");
                }
            })
            .await
        });
        assert!(joined.is_ok(), "the load workers did not stop");
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        let shared = &self.shared;
        Report {
            elapsed,
            samples: std::mem::take(&mut *lock(&shared.samples)),
            failures: std::mem::take(&mut *lock(&shared.failures)),
            opened: shared.opened.load(Ordering::SeqCst),
            closes: shared.closes.load(Ordering::SeqCst),
            goaways: shared.goaways.load(Ordering::SeqCst),
            not_sent: shared.not_sent.load(Ordering::SeqCst),
            unwritten: shared.unwritten.load(Ordering::SeqCst),
            client_aborted: shared.client_aborted.load(Ordering::SeqCst),
            aborted_examples: std::mem::take(&mut *lock(&shared.aborted_examples)),
            lost_unwritten: shared.lost_unwritten.load(Ordering::SeqCst),
            lost_examples: std::mem::take(&mut *lock(&shared.lost_examples)),
        }
    }
}

async fn open(target: &Target, shared: &Shared) -> Option<Conn> {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    match Conn::open(target, id).await {
        Ok(conn) => {
            shared.opened.fetch_add(1, Ordering::SeqCst);
            Some(conn)
        }
        Err(e) => {
            lock(&shared.failures).push(Failure {
                at: shared.since_start(),
                conn: id,
                proto: target.proto,
                last_pid: None,
                answered: 0,
                what: format!("cannot open a connection: {e}"),
            });
            // Like wrk: count it and try again, without spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// HTTP/1.1: one connection at a time, requests back to back; a new connection after a
/// response with `Connection: close`.
async fn http1_worker(target: Target, shared: Arc<Shared>, config: LoadConfig) {
    while !shared.stopped() {
        let Some(mut conn) = open(&target, &shared).await else {
            continue;
        };
        let mut tally = ConnTally {
            may_move: config.connections_move,
            ..ConnTally::default()
        };
        while !shared.stopped() {
            if !conn.ready().await {
                tally.fail(
                    &shared,
                    &conn,
                    format!(
                        "the server closed the keep-alive connection without `Connection: close` \
                         (connection task: {:?}); wrk's next request would have been on its way",
                        conn.ended()
                    ),
                );
                break;
            }
            match conn.get(&config.path).await {
                Outcome::Answered(answer) => {
                    if !tally.answered(&shared, &conn, &answer) {
                        break;
                    }
                    if answer.connection_close {
                        shared.closes.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                Outcome::NotSent(e) => {
                    tally.fail(
                        &shared,
                        &conn,
                        format!("the connection closed before the request was written: {e}"),
                    );
                    break;
                }
                Outcome::Failed(e) | Outcome::TimedOut(e) | Outcome::Lost(e) => {
                    tally.fail(&shared, &conn, format!("request in flight failed: {e}"));
                    break;
                }
            }
        }
    }
}

/// HTTP/2: one connection at a time with `config.streams` requests in flight, each stream
/// back to back; a new connection once the server said `GOAWAY` and the streams in flight
/// completed.
///
/// A request hyper reports failed is a failure if it was written and the server did not
/// answer it. hyper (1.x, `proto/h2/client.rs`, `ClientTask::poll`) also fails requests for
/// which it had just created a stream when it sees the connection's first `GOAWAY`: it
/// drops the stream — discarded if not written yet, reset (`RST_STREAM` from the client) if
/// it was — and reports the request failed, without returning it. So the failures of a
/// connection are reconciled with the wire once its streams are done: as many failures count
/// as there are streams written, not answered and not reset by the client (each failed
/// request is one stream); then as many as there are streams the client reset are
/// [`Report::client_aborted`] (hyper's doing, shown with their frames); the rest were never
/// written ([`Report::unwritten`]).
///
/// The requests hyper lost ([`Outcome::Lost`]) are reconciled the same way: as many count as
/// failures as there are streams on the wire for which no answer reached the client (written
/// streams, less the answers the connection's streams got: each answer is one written
/// stream); the rest were never written ([`Report::lost_unwritten`]). That is strict: it
/// does not credit a written stream to another failed request first.
async fn http2_worker(target: Target, shared: Arc<Shared>, config: LoadConfig) {
    while !shared.stopped() {
        let Some(conn) = open(&target, &shared).await else {
            continue;
        };
        let streams: Vec<_> = (0..config.streams.max(1))
            .map(|_| {
                let (conn, shared, path) =
                    (conn.stream(), Arc::clone(&shared), config.path.clone());
                tokio::spawn(async move { http2_stream(conn, &shared, &path).await })
            })
            .collect();
        let mut tally = ConnTally::default();
        let mut failed = Vec::new();
        let mut lost = Vec::new();
        for s in streams {
            let (t, f, l) = s.await.expect("a stream task panicked");
            tally.answered += t.answered;
            tally.last_pid = tally.last_pid.or(t.last_pid);
            failed.extend(f);
            lost.extend(l);
        }
        if !lost.is_empty() {
            let written = conn.written_streams();
            let real = lost_on_the_wire(lost.len(), written, tally.answered);
            let frames = conn.recent_frames();
            for e in &lost[..real] {
                tally.fail(
                    &shared,
                    &conn,
                    format!(
                        "{e}; {written} stream(s) written, {} answered: the request may have \
                         been written; the connection's last frames: {frames:?}",
                        tally.answered
                    ),
                );
            }
            let unwritten = lost.len() - real;
            if unwritten > 0 {
                shared.lost_unwritten.fetch_add(unwritten, Ordering::SeqCst);
                lock(&shared.lost_examples).push(format!(
                    "conn #{}: {unwritten} request(s) never written ({written} stream(s) written, \
                     {} answered): {}; last frames: {frames:?}",
                    conn.id(),
                    tally.answered,
                    lost[real]
                ));
            }
        }
        if !failed.is_empty() {
            let (unanswered, reset) = conn.unanswered_streams();
            let frames = conn.recent_frames();
            let real = failed.len().min(unanswered.len());
            for e in &failed[..real] {
                tally.fail(
                    &shared,
                    &conn,
                    format!(
                        "request in flight failed: {e}; written streams without an answer: \
                         {unanswered:?}; {}; the connection's last frames: {frames:?}",
                        diagnose_h2(&frames)
                    ),
                );
            }
            let aborted = (failed.len() - real).min(reset.len());
            if aborted > 0 {
                shared.client_aborted.fetch_add(aborted, Ordering::SeqCst);
                lock(&shared.aborted_examples).push(format!(
                    "conn #{}: streams {reset:?} reset by the client; last frames: {frames:?}",
                    conn.id()
                ));
            }
            shared
                .unwritten
                .fetch_add(failed.len() - real - aborted, Ordering::SeqCst);
        }
        if shared.stopped() {
            break;
        }
        // The connection stopped taking requests: the server must have said GOAWAY, without
        // an error.
        let goaways = conn.goaways();
        if goaways.is_empty() {
            tally.fail(
                &shared,
                &conn,
                format!(
                    "the connection ended without GOAWAY (connection task: {:?}; last frames: \
                     {:?})",
                    conn.ended(),
                    conn.recent_frames()
                ),
            );
        } else {
            shared.goaways.fetch_add(1, Ordering::SeqCst);
            if goaways.iter().any(|g| g.error_code != 0) {
                tally.fail(&shared, &conn, format!("GOAWAY with an error: {goaways:?}"));
            }
        }
    }
}

/// How many of `lost` requests of a connection may have been written: no more than the
/// streams written on the wire (`written`) for which no answer reached the client (each of
/// the `answered` answers is one of them).
fn lost_on_the_wire(lost: usize, written: usize, answered: usize) -> usize {
    lost.min(written.saturating_sub(answered))
}

/// One stream of an HTTP/2 connection, requests back to back until the connection stops
/// taking them. Returns the stream's tally, and the errors of the requests hyper reported
/// failed and of those it lost (to reconcile with the wire).
async fn http2_stream(
    mut conn: Conn,
    shared: &Shared,
    path: &str,
) -> (ConnTally, Vec<String>, Vec<String>) {
    let mut tally = ConnTally::default();
    let mut failed = Vec::new();
    let mut lost = Vec::new();
    while !shared.stopped() {
        if !conn.ready().await {
            break;
        }
        match conn.get(path).await {
            Outcome::Answered(answer) => {
                if !tally.answered(shared, &conn, &answer) {
                    break;
                }
            }
            Outcome::NotSent(e) => {
                if conn.goaways().is_empty() {
                    tally.fail(
                        shared,
                        &conn,
                        format!("request refused unsent without a GOAWAY: {e}"),
                    );
                } else {
                    shared.not_sent.fetch_add(1, Ordering::SeqCst);
                }
                break;
            }
            Outcome::Failed(e) => {
                failed.push(e);
                break;
            }
            Outcome::Lost(e) => {
                lost.push(e);
                break;
            }
            Outcome::TimedOut(e) => {
                let frames = conn.recent_frames();
                tally.fail(
                    shared,
                    &conn,
                    format!(
                        "{e}; written streams without an answer: {:?}; connection task: {:?}; \
                         {}; the connection's last frames: {frames:?}",
                        conn.unanswered_streams(),
                        conn.ended(),
                        diagnose_h2(&frames)
                    ),
                );
                break;
            }
        }
    }
    (tally, failed, lost)
}

/// What the frames of a failed HTTP/2 connection say: whether the server refused streams
/// the client had opened (ids above the `last_stream_id` of its final `GOAWAY`, so never
/// processed), and whether the client wrote them after its `PING` ACK to the server's
/// shutdown `PING` (the server takes that ACK as the end of the stream creations in flight).
fn diagnose_h2(frames: &[Frame]) -> String {
    let Some(last) = frames
        .iter()
        .rev()
        .filter(|f| f.dir == Dir::Received)
        .find_map(|f| f.goaway.filter(|g| g.last_stream_id < 0x7fff_ffff))
    else {
        return "no final GOAWAY (yet)".to_owned();
    };
    let is_pong = |f: &Frame| f.dir == Dir::Sent && f.kind == 0x6 && f.flags & 0x1 != 0;
    let pong = frames.iter().rposition(is_pong);
    let refused: Vec<(u32, bool)> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.dir == Dir::Sent && f.kind == 0x1 && f.stream > last.last_stream_id)
        .map(|(i, f)| (f.stream, pong.is_some_and(|p| i > p)))
        .collect();
    if refused.is_empty() {
        return format!(
            "final GOAWAY last_stream_id={}, no stream above it: a processed stream was lost",
            last.last_stream_id
        );
    }
    let after_pong = refused.iter().filter(|(_, after)| *after).count();
    format!(
        "the server refused (never processed) streams {:?} above its final GOAWAY's \
         last_stream_id={}; {after_pong} of them written after the client's PING ACK",
        refused.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        last.last_stream_id
    )
}

// ---- the report ----------------------------------------------------------------------------

/// What a load saw.
#[derive(Debug)]
pub struct Report {
    pub(crate) elapsed: Duration,
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
    /// Connections opened.
    pub(crate) opened: usize,
    /// HTTP/1.1 responses with `Connection: close`.
    pub(crate) closes: usize,
    /// HTTP/2 connections that ended with a `GOAWAY`.
    pub(crate) goaways: usize,
    /// HTTP/2 requests hyper gave back unsent after a `GOAWAY` (not failures).
    pub(crate) not_sent: usize,
    /// HTTP/2 requests hyper reported failed that never reached the wire (not failures; see
    /// [`http2_worker`]).
    pub(crate) unwritten: usize,
    /// HTTP/2 requests the client's own HTTP/2 layer cancelled after writing them (hyper
    /// resets the stream): a client bug, not a failure of the server; see [`http2_worker`].
    pub(crate) client_aborted: usize,
    /// The connections where that happened, with their last frames.
    pub aborted_examples: Vec<String>,
    /// HTTP/2 requests hyper's client lost without writing them, neither sent nor failed
    /// (see [`Conn::get`]): a client bug, not a failure of the server; see [`http2_worker`].
    pub(crate) lost_unwritten: usize,
    /// The connections where that happened, with their last frames.
    pub lost_examples: Vec<String>,
}

impl Report {
    /// The pids that answered, in the order of their first answer.
    pub fn pids(&self) -> Vec<u32> {
        let mut first: BTreeMap<u32, Duration> = BTreeMap::new();
        for s in &self.samples {
            first.entry(s.pid).or_insert(s.at);
        }
        let mut pids: Vec<(u32, Duration)> = first.into_iter().collect();
        pids.sort_by_key(|&(_, at)| at);
        pids.into_iter().map(|(p, _)| p).collect()
    }

    /// The latency below which `q` (0..=1) of the answers came.
    pub(crate) fn latency_quantile(&self, q: f64) -> Duration {
        let mut l: Vec<Duration> = self.samples.iter().map(|s| s.latency).collect();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l.sort_unstable();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short vector"
        )]
        let i = ((l.len() - 1) as f64 * q).round() as usize;
        l[i]
    }

    /// One line for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} failed in {:.1}s over {} connections ({} `Connection: close`, {} GOAWAY, \
             {} + {} refused unsent after GOAWAY, {} cancelled and {} lost unsent by hyper's \
             client); latency p50 {:?} p99 {:?} max {:?}",
            self.samples.len(),
            self.failures.len(),
            self.elapsed.as_secs_f64(),
            self.opened,
            self.closes,
            self.goaways,
            self.not_sent,
            self.unwritten,
            self.client_aborted,
            self.lost_unwritten,
            self.latency_quantile(0.5),
            self.latency_quantile(0.99),
            self.latency_quantile(1.0),
        )
    }

    /// The failures, listed (the first `max`).
    pub fn failure_list(&self, max: usize) -> String {
        let mut s = String::new();
        for f in self.failures.iter().take(max) {
            s.push_str("  ");
            s.push_str(&f.to_string());
            s.push('\n');
        }
        if self.failures.len() > max {
            s.push_str(&format!("  … and {} more\n", self.failures.len() - max));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::lost_on_the_wire;

    #[test]
    fn a_lost_request_is_excused_only_when_every_written_stream_was_answered() {
        // 18 streams written, 18 answers: the 3 lost requests never reached the wire.
        assert_eq!(lost_on_the_wire(3, 18, 18), 0);
        // One written stream without an answer: one of them may be it.
        assert_eq!(lost_on_the_wire(3, 18, 17), 1);
        assert_eq!(lost_on_the_wire(1, 18, 10), 1);
        assert_eq!(lost_on_the_wire(0, 18, 10), 0);
    }
}
