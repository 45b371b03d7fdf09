//! Handing idle HTTP/1.1 keep-alive connections to the new generation
//! ([`Server::hand_over_idle`](crate::Server::hand_over_idle)).
//!
//! The drain closes an idle keep-alive connection only after a grace period, and a client
//! that sends on it at that moment races the close: no library we compare with avoids it
//! for good. Here the connection does not close at all: at a request boundary the old
//! generation stops serving it and hands the socket, with the bytes hyper had read and not
//! parsed (a request on its way), to the new generation, which serves it on. The client
//! sees one connection whose answers come from the new pid.
//!
//! How a request boundary is found without reaching into hyper: the connection's stream
//! reports whether hyper's last read is waiting for bytes and whether everything it wrote
//! was flushed, and the service counts requests in progress, up to the end of each
//! response body. When the drain starts, the connection goes on being served until all
//! three say "idle" — hyper is waiting for the next request head, nothing is in progress,
//! nothing is unwritten — and then it is taken apart
//! ([`UpgradeableConnection::into_parts`](hyper::server::conn::http1::UpgradeableConnection::into_parts)):
//! its socket and hyper's read buffer go to the new generation. A request with a body
//! that the service might not have read to the end keeps its connection out of the
//! handover (it is drained as usual). So do TLS connections (the session cannot move) and
//! HTTP/2 ones (GOAWAY already moves their clients without a failure).
//!
//! If the new generation does not take a connection (an older version, one without this
//! receiver, one that died), the old generation serves it on and drains it as usual:
//! `Connection: close` on its next response, closed after the idle grace.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use endless_unix::Tracker;
use endless_unix::adapter::{Connections, Endless, Net, Stream};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the old and the new generation agree on: the receiver's name, and where the
/// connections received go.
pub(crate) struct Takeover<N: Net> {
    pub(crate) name: String,
    pub(crate) endless: Endless<N>,
    /// Taken by the first `serve`, which serves the connections received.
    pub(crate) connections: Mutex<Option<Connections<N>>>,
}

impl<N: Net> std::fmt::Debug for Takeover<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A tracked stream of an endless listener on the runtime `N`, as
/// [`Server`](crate::Server) serves it and hands it over.
pub trait IntoStream<N: Net> {
    /// The tracker it counts in.
    fn tracker(&self) -> Tracker;
    /// The kind-erased stream of endless (`endless_tokio::Stream` on tokio).
    fn into_stream(self) -> Stream<N>;
}

impl<N: Net, I: IntoStream<N>> IntoStream<N> for Prefixed<I> {
    fn tracker(&self) -> Tracker {
        self.inner.tracker()
    }

    /// Only for a prefix read in full: a handover carries the rest itself.
    fn into_stream(self) -> Stream<N> {
        self.inner.into_stream()
    }
}

// ---- a stream with bytes in front ----------------------------------------------------------

pin_project_lite::pin_project! {
    /// `inner`, read after `prefix` (bytes already read from it, or received with it).
    pub(crate) struct Prefixed<I> {
        prefix: Bytes,
        #[pin]
        inner: I,
    }
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: Bytes, inner: I) -> Self {
        Self { prefix, inner }
    }

    /// The stream, and the prefix bytes not read yet.
    pub(crate) fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.inner)
    }
}

impl<I: AsyncRead> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// hyper's default header read timeout, which the HTTP/1 connections of
/// [`Server::hand_over_idle`](crate::Server::hand_over_idle) have: how long a connection
/// may stay idle before its next request.
pub(crate) const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The first bytes of an HTTP/2 connection (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of `io`, as many as it takes to tell HTTP/2's preface from
/// anything else: whether it is HTTP/2, and the bytes read. Stops early (not HTTP/2, no
/// bytes) when `closing` resolves first: an idle connection at the drain.
pub(crate) async fn detect_h2<I: AsyncRead + Unpin>(
    io: &mut I,
    closing: impl Future<Output = ()>,
) -> io::Result<(bool, Bytes)> {
    use tokio::io::AsyncReadExt;
    let mut closing = std::pin::pin!(closing);
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    while buf.len() < H2_PREFACE.len() {
        let mut chunk = [0u8; 24];
        let want = H2_PREFACE.len() - buf.len();
        let n = tokio::select! {
            biased;
            read = io.read(&mut chunk[..want]) => read?,
            () = closing.as_mut(), if buf.is_empty() => return Ok((false, Bytes::new())),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if !H2_PREFACE.starts_with(&buf) {
            return Ok((false, buf.into()));
        }
    }
    Ok((buf == H2_PREFACE, buf.into()))
}

// ---- what hyper is doing -------------------------------------------------------------------

/// What a connection's stream and service report, for [`Idle::is_idle`].
#[derive(Debug, Default)]
pub(crate) struct Idle {
    /// hyper's last read found nothing to read (it waits for the client).
    read_waiting: AtomicBool,
    /// Bytes were written since the last completed flush.
    unflushed: AtomicBool,
    /// Requests whose response body has not ended (or been dropped).
    in_progress: AtomicUsize,
    /// The last request came with a body: the service may not have read it all, and
    /// what is left of it must not pass for the next request.
    body_in_request: AtomicBool,
    /// Responses say `Connection: close` from now on (the connection is drained, not
    /// handed over).
    pub(crate) close_responses: AtomicBool,
}

impl Idle {
    /// At a request boundary (hyper waits for the client and has nothing to write):
    /// `Some(true)` if the connection can move, `Some(false)` if it must be drained here
    /// (its last request had a body, which hyper may still be reading); `None` while busy.
    pub(crate) fn boundary(&self) -> Option<bool> {
        let quiet = self.in_progress.load(Ordering::SeqCst) == 0
            && self.read_waiting.load(Ordering::SeqCst)
            && !self.unflushed.load(Ordering::SeqCst);
        quiet.then(|| !self.body_in_request.load(Ordering::SeqCst))
    }
}

pin_project_lite::pin_project! {
    /// A stream that tells [`Idle`] what hyper does with it.
    pub(crate) struct Watched<I> {
        #[pin]
        inner: I,
        idle: Arc<Idle>,
    }
}

impl<I> Watched<I> {
    pub(crate) fn new(inner: I, idle: Arc<Idle>) -> Self {
        Self { inner, idle }
    }

    pub(crate) fn into_inner(self) -> I {
        self.inner
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_read(cx, buf);
        this.idle
            .read_waiting
            .store(polled.is_pending(), Ordering::SeqCst);
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.idle.unflushed.store(true, Ordering::SeqCst);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.idle.unflushed.store(true, Ordering::SeqCst);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.idle.unflushed.store(false, Ordering::SeqCst);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// A hyper service that counts its requests in [`Idle`] until their response bodies end.
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
    pub(crate) idle: Arc<Idle>,
}

// Never pinned through: `call` takes `&self`. So the connection that owns it can be moved,
// and taken apart by value at the handover, whatever `S` is.
impl<S> Unpin for Counted<S> {}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.idle
            .body_in_request
            .store(!req.body().is_end_stream(), Ordering::SeqCst);
        self.idle.in_progress.fetch_add(1, Ordering::SeqCst);
        CountedFuture {
            inner: self.inner.call(req),
            done: Some(Done(Arc::clone(&self.idle))),
            idle: Arc::clone(&self.idle),
        }
    }
}

/// Ends one request in progress when dropped.
struct Done(Arc<Idle>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct CountedFuture<F> {
        #[pin]
        inner: F,
        done: Option<Done>,
        idle: Arc<Idle>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        // The count passes to the body (or ends here, with an error).
        let done = this.done.take();
        let close = this.idle.close_responses.load(Ordering::SeqCst);
        Poll::Ready(response.map(|mut response| {
            // Not on a `101 Switching Protocols`: the upgraded connection is tracked on its own.
            if close && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            response.map(|body| CountedBody { inner: body, done })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's count when it ends or is dropped.
    pub(crate) struct CountedBody<B> {
        #[pin]
        inner: B,
        done: Option<Done>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.done.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn detects_the_h2_preface_and_keeps_what_it_read() {
        block_on(async {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(H2_PREFACE).await.unwrap();
            let (h2, read) = detect_h2(&mut server, std::future::pending())
                .await
                .unwrap();
            assert!(h2);
            assert_eq!(&read[..], H2_PREFACE);

            // HTTP/1: decided at the first bytes that differ; what was read comes first.
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let (h2, read) = detect_h2(&mut server, std::future::pending())
                .await
                .unwrap();
            assert!(!h2);
            assert!(b"GET / HTTP/1.1\r\n".starts_with(&read) && !read.is_empty());
            let mut prefixed = Prefixed::new(read, server);
            let mut line = [0u8; 16];
            prefixed.read_exact(&mut line).await.unwrap();
            assert_eq!(&line, b"GET / HTTP/1.1\r\n");
        });
    }

    #[test]
    fn an_idle_connection_at_the_drain_is_not_waited_for() {
        block_on(async {
            let (_client, mut server) = tokio::io::duplex(64);
            let (h2, read) = detect_h2(&mut server, std::future::ready(()))
                .await
                .unwrap();
            assert!(!h2 && read.is_empty());
        });
    }

    #[test]
    fn a_boundary_needs_every_signal() {
        let idle = Idle::default();
        assert_eq!(idle.boundary(), None, "hyper has not waited for a read yet");
        idle.read_waiting.store(true, Ordering::SeqCst);
        assert_eq!(idle.boundary(), Some(true));
        idle.unflushed.store(true, Ordering::SeqCst);
        assert_eq!(idle.boundary(), None);
        idle.unflushed.store(false, Ordering::SeqCst);
        idle.in_progress.store(1, Ordering::SeqCst);
        assert_eq!(idle.boundary(), None);
        idle.in_progress.store(0, Ordering::SeqCst);
        // Quiet, but the last request had a body: drained, not moved.
        idle.body_in_request.store(true, Ordering::SeqCst);
        assert_eq!(idle.boundary(), Some(false));
    }
}
