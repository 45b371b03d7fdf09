//! Websockets that survive every deploy: what an application needs to move a websocket
//! (upgraded through hyper on a connection [`Server`](crate::Server) serves) to the next
//! generation at a message boundary, and to say goodbye properly to one that stays.
//!
//! Without this, an upgraded connection stays with the old generation until it ends or the
//! drain deadline shuts its socket down. With it:
//!
//! 1. **Take the connection back from hyper**: [`Handshake`] checks and answers the
//!    opening handshake (in a hyper service, or as an axum extractor in place of axum's
//!    `WebSocketUpgrade`, whose websocket cannot be taken apart) and gives the upgraded
//!    connection with [`Handshake::upgraded`]. Under it, [`upgraded_stream`] turns the
//!    `Upgraded` of a connection endless-hyper serves into endless' tracked
//!    [`Stream`] (the same registration with the drain: a websocket counts once, and one
//!    that is not moved is still closed at the deadline), plus the bytes hyper read past the
//!    upgrade request. [`Socket`] sees that stream through tokio's I/O traits, on every
//!    runtime.
//! 2. **Find message boundaries under the websocket library**: [`MessageBoundary`] sits
//!    under tungstenite (tokio-tungstenite, or async-tungstenite through tokio-util's
//!    `Compat`), parses the client's frame headers and never hands the library bytes past
//!    the end of the current frame; control frames are handed on whole. So it knows when
//!    the library holds no partial frame and no fragmented message is in progress
//!    ([`MessageBoundary::at_boundary`]), and which bytes it read and did not hand on
//!    ([`MessageBoundary::into_parts`]).
//! 3. **Hand it over** when the drain starts (the socket's tracker's
//!    [`closing`](endless_unix::Tracker::closing)): serve on until the stream is at a
//!    boundary — check after each message the library returns — then flush what the
//!    library buffered for writing (`SinkExt::flush`), take the stream out
//!    (`WebSocketStream::into_inner`), split it with [`MessageBoundary::into_parts`], and
//!    [`hand_over`](endless_unix::adapter::Endless::hand_over) the socket with the
//!    application's session as state and the unconsumed bytes.
//! 4. **Resume it** in the new generation, without a handshake:
//!    `WebSocketStream::from_raw_socket(MessageBoundary::with_read(socket, unconsumed),
//!    Role::Server, None)`. The unconsumed bytes go *through* the new [`MessageBoundary`]
//!    (not into tungstenite's `from_partially_read`), so that its frame parser starts at
//!    the first byte the library will see, and the connection can move again at the next
//!    restart.
//!
//! # When the new generation does not take it
//!
//! An older version without the receiver, a successor that refuses it or dies while the
//! connections move: [`hand_over`](endless_unix::adapter::Endless::hand_over) gives the
//! stream back; build the websocket again on it (step 4, in this process) and serve on.
//! The drain deadline would then shut the socket down under the client, which sees a TCP
//! end without a close frame. [`deadline_near`] resolves a margin before that deadline:
//! send a close frame with code [`GOING_AWAY`] (1001) then, and wait (up to the margin)
//! for the client's close frame. The deadline is the lifecycle's (the drain's start plus
//! `Config::drain_timeout`), which the connection's tracker carries
//! ([`Tracker::drain_deadline`]). A hammer request (`SIGUSR2`, a second stop) closes at
//! once and cannot be foreseen.
//!
//! # Example
//!
//! The mechanics, on an in-memory pipe: a message is read, the stream is at a boundary,
//! the websocket is taken apart and resumed from its parts without a handshake, and the
//! bytes that were already read go on to the resumed websocket.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use endless_hyper::ws::MessageBoundary;
//! use futures_util::{SinkExt, StreamExt};
//! use tokio_tungstenite::WebSocketStream;
//! use tokio_tungstenite::tungstenite::{Message, protocol::Role};
//!
//! let (client, server) = tokio::io::duplex(1 << 16);
//! let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
//! let mut ws =
//!     WebSocketStream::from_raw_socket(MessageBoundary::new(server), Role::Server, None).await;
//! client.send(Message::text("one")).await?;
//! client.send(Message::text("two")).await?;
//!
//! assert_eq!(ws.next().await.unwrap()?, Message::text("one"));
//! assert!(ws.get_ref().at_boundary());
//! // The handover: flush, take the stream out, split it.
//! ws.flush().await?;
//! let (socket, unconsumed) = ws.into_inner().into_parts();
//! // … `unconsumed` (the start of "two", or all of it) travels with the socket …
//! let mut ws = WebSocketStream::from_raw_socket(
//!     MessageBoundary::with_read(socket, unconsumed),
//!     Role::Server,
//!     None,
//! )
//! .await;
//! assert_eq!(ws.next().await.unwrap()?, Message::text("two"));
//! # Ok(()) }
//! ```
//!
//! A whole server (hyper's upgrade on endless-hyper's [`Server`](crate::Server), rooms,
//! handover and resume, close 1001 at the deadline, on tokio, smol and async-std) is the
//! `chat` example of the endless repository (`examples/src/chat.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use endless_unix::Tracker;
use endless_unix::adapter::Stream;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use handshake::{Handshake, HandshakeError, UpgradeError};

use crate::h2_shutdown::PongDelay;
use crate::rt::HttpRuntime;
use crate::takeover::{IntoStream, Prefixed, Watched};

/// The close code a server sends when it goes away (RFC 6455 §7.4.1): what a websocket
/// that was not moved gets at the drain deadline ([`deadline_near`]).
pub const GOING_AWAY: u16 = 1001;

// ---- out of hyper --------------------------------------------------------------------------

/// An upgraded connection that [`upgraded_stream`] cannot take back: not served by
/// endless-hyper's [`Server`](crate::Server) over an endless listener, served over TLS (the
/// session cannot move), or upgraded over HTTP/2. It gives the connection back.
pub struct NotMovable {
    upgraded: Upgraded,
}

impl NotMovable {
    /// The upgraded connection, to be served here.
    pub fn into_upgraded(self) -> Upgraded {
        self.upgraded
    }
}

impl std::fmt::Debug for NotMovable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotMovable").finish_non_exhaustive()
    }
}

impl std::fmt::Display for NotMovable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the upgraded connection is not an endless stream served by endless-hyper \
             (TLS, HTTP/2, or another listener)",
        )
    }
}

impl std::error::Error for NotMovable {}

/// The endless stream under a hyper upgrade of a connection [`Server`](crate::Server)
/// serves on the runtime `N`, and the bytes read from it past the upgrade request (the
/// first bytes of the new protocol, if the client sent them early): feed them to the
/// protocol first ([`MessageBoundary::with_read`]).
///
/// The stream is the connection's tracked stream: it counts with the drain as before
/// (once), its guard's [`closing`](endless_unix::ConnectionGuard::closing) says when the
/// drain starts, and the drain deadline shuts it down unless it was handed over.
///
/// # Errors
///
/// [`NotMovable`], with the connection back, for an upgrade over TLS or HTTP/2, or on a
/// listener that is not endless' (an [`Accept`](crate::Accept) wrapper with a stream type
/// of its own).
///
/// # Examples
///
/// ```no_run
/// # async fn doc(req: hyper::Request<hyper::body::Incoming>) {
/// use endless_hyper::ws::{MessageBoundary, Socket, upgraded_stream};
/// use endless_tokio::Tokio;
/// use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};
///
/// // In the service, after answering `101 Switching Protocols`:
/// let upgraded = hyper::upgrade::on(req).await.expect("upgraded");
/// let (stream, read) = upgraded_stream::<Tokio>(upgraded).expect("served by endless-hyper");
/// let socket = MessageBoundary::with_read(Socket::from(stream), read);
/// let ws = WebSocketStream::from_raw_socket(socket, Role::Server, None).await;
/// # drop(ws);
/// # }
/// ```
pub fn upgraded_stream<N: HttpRuntime>(
    upgraded: Upgraded,
) -> Result<(Stream<N>, Bytes), NotMovable> {
    // What `Server::http` gives hyper-util's auto builder (which wraps it in a private
    // type that `auto::upgrade::downcast` sees through): the stream under the h2 PING
    // delay, with a prefix when it was taken over or handed back.
    let upgraded = match from_auto::<N, PongDelay<N::TcpIo, N::Sleep>>(upgraded, delayed) {
        Ok(parts) => return Ok(parts),
        Err(upgraded) => upgraded,
    };
    let upgraded = match from_auto::<N, PongDelay<N::UnixIo, N::Sleep>>(upgraded, delayed) {
        Ok(parts) => return Ok(parts),
        Err(upgraded) => upgraded,
    };
    let upgraded =
        match from_auto::<N, PongDelay<Prefixed<N::TcpIo>, N::Sleep>>(upgraded, delayed_prefixed) {
            Ok(parts) => return Ok(parts),
            Err(upgraded) => upgraded,
        };
    let upgraded = match from_auto::<N, PongDelay<Prefixed<N::UnixIo>, N::Sleep>>(
        upgraded,
        delayed_prefixed,
    ) {
        Ok(parts) => return Ok(parts),
        Err(upgraded) => upgraded,
    };
    // What `Server::hand_over_idle` serves with hyper's own HTTP/1 connection.
    let upgraded = match from_http1::<N, Watched<Prefixed<N::TcpIo>>>(upgraded, watched) {
        Ok(parts) => return Ok(parts),
        Err(upgraded) => upgraded,
    };
    let upgraded = match from_http1::<N, Watched<Prefixed<N::UnixIo>>>(upgraded, watched) {
        Ok(parts) => return Ok(parts),
        Err(upgraded) => upgraded,
    };
    Err(NotMovable { upgraded })
}

/// Takes `I` out of an upgrade by hyper-util's auto builder; `parts` gives its stream and
/// the bytes it read and did not deliver to hyper.
fn from_auto<N, I>(
    upgraded: Upgraded,
    parts: fn(I) -> (Stream<N>, Vec<u8>),
) -> Result<(Stream<N>, Bytes), Upgraded>
where
    N: HttpRuntime,
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let p = hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<I>>(upgraded)?;
    let (stream, rest) = parts(p.io.into_inner());
    Ok((stream, concat(p.read_buf, rest)))
}

/// Takes `I` out of an upgrade by hyper's HTTP/1 connection.
fn from_http1<N, I>(
    upgraded: Upgraded,
    parts: fn(I) -> (Stream<N>, Vec<u8>),
) -> Result<(Stream<N>, Bytes), Upgraded>
where
    N: HttpRuntime,
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let p = upgraded.downcast::<TokioIo<I>>()?;
    let (stream, rest) = parts(p.io.into_inner());
    Ok((stream, concat(p.read_buf, rest)))
}

/// hyper's read buffer, then what the layers under it read and did not deliver.
fn concat(read_buf: Bytes, rest: Vec<u8>) -> Bytes {
    if rest.is_empty() {
        return read_buf;
    }
    let mut all = BytesMut::from(read_buf);
    all.extend_from_slice(&rest);
    all.freeze()
}

fn delayed<N: HttpRuntime, I: IntoStream<N>>(io: PongDelay<I, N::Sleep>) -> (Stream<N>, Vec<u8>) {
    let (io, rest) = io.into_parts();
    (io.into_stream(), rest)
}

fn delayed_prefixed<N: HttpRuntime, I: IntoStream<N>>(
    io: PongDelay<Prefixed<I>, N::Sleep>,
) -> (Stream<N>, Vec<u8>) {
    let (io, mut rest) = io.into_parts();
    let (stream, prefix) = prefixed(io);
    rest.extend_from_slice(&prefix);
    (stream, rest)
}

fn watched<N: HttpRuntime, I: IntoStream<N>>(io: Watched<Prefixed<I>>) -> (Stream<N>, Vec<u8>) {
    let (stream, prefix) = prefixed(io.into_inner());
    (stream, prefix.to_vec())
}

fn prefixed<N: HttpRuntime, I: IntoStream<N>>(io: Prefixed<I>) -> (Stream<N>, Bytes) {
    let (prefix, io) = io.into_parts();
    (io.into_stream(), prefix)
}

// ---- a socket of either kind ---------------------------------------------------------------

/// A tracked connection of either kind, seen through tokio's I/O traits on the runtime `N`
/// (on async-io through tokio-util's `Compat`): what a websocket library reads and writes,
/// under a [`MessageBoundary`]. Made from endless' kind-erased [`Stream`] (of
/// [`upgraded_stream`], or received from the previous generation), and turned back into
/// one to hand it over.
pub enum Socket<N: HttpRuntime> {
    /// A TCP connection.
    Tcp(N::TcpIo),
    /// A Unix stream connection.
    Unix(N::UnixIo),
}

impl<N: HttpRuntime> Socket<N> {
    /// The tracker the connection counts in: its
    /// [`closing`](endless_unix::Tracker::closing) resolves when the drain starts.
    pub fn tracker(&self) -> Tracker {
        match self {
            Self::Tcp(io) => io.tracker(),
            Self::Unix(io) => io.tracker(),
        }
    }

    /// endless' kind-erased stream, to [`hand_over`](endless_unix::adapter::Endless::hand_over).
    pub fn into_stream(self) -> Stream<N> {
        match self {
            Self::Tcp(io) => io.into_stream(),
            Self::Unix(io) => io.into_stream(),
        }
    }
}

impl<N: HttpRuntime> From<Stream<N>> for Socket<N> {
    fn from(stream: Stream<N>) -> Self {
        match stream {
            Stream::Tcp(s) => Self::Tcp(N::tcp_io(s)),
            Stream::Unix(s) => Self::Unix(N::unix_io(s)),
        }
    }
}

impl<N: HttpRuntime> std::fmt::Debug for Socket<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp(_) => "Socket::Tcp",
            Self::Unix(_) => "Socket::Unix",
        })
    }
}

impl<N: HttpRuntime> AsyncRead for Socket<N> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl<N: HttpRuntime> AsyncWrite for Socket<N> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Self::Unix(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_flush(cx),
            Self::Unix(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Self::Unix(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Unix(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(io) => io.is_write_vectored(),
            Self::Unix(io) => io.is_write_vectored(),
        }
    }
}

// ---- message boundaries --------------------------------------------------------------------

/// The header of a websocket frame (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    /// The header's length: 2, the extended length (0, 2 or 8), the mask key (0 or 4).
    len: usize,
    payload: u64,
}

impl Header {
    /// The header at the start of `buf`, or `None` while it is incomplete.
    fn parse(buf: &[u8]) -> Option<Self> {
        let (&b0, rest) = buf.split_first()?;
        let &b1 = rest.first()?;
        let masked = b1 & 0x80 != 0;
        let (extended, payload) = match b1 & 0x7f {
            126 => (
                2,
                u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            ),
            127 => (8, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
            n => (0, u64::from(n)),
        };
        let len = 2 + extended + if masked { 4 } else { 0 };
        if buf.len() < len {
            return None;
        }
        Some(Self {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            len,
            payload,
        })
    }

    /// Close, ping, pong (and the reserved control opcodes).
    fn is_control(self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The whole frame's length.
    fn frame_len(self) -> u64 {
        self.payload.saturating_add(self.len as u64)
    }
}

/// The largest payload of a control frame (RFC 6455 §5.5): such frames are handed on whole.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// How much is read from the stream at a time.
const READ_CHUNK: usize = 8 * 1024;

/// A stream under a websocket library (server side) that knows where the client's
/// messages end, so that the connection can move to the next generation between two
/// messages.
///
/// It reads the stream into a buffer of its own and parses the header of each frame the
/// client sends (RFC 6455 §5.2: two bytes, a 16- or 64-bit extended length, the mask key),
/// and it never hands the library bytes past the end of the current frame. Control frames
/// (close, ping, pong: at most 125 bytes of payload) are handed on whole (in one read, as
/// the library's reads take kilobytes), so the library never holds part of one; data
/// frames are handed on as they arrive. It follows
/// fragmented messages (a data frame without FIN, up to a continuation with FIN; control
/// frames may come in between).
///
/// The stream is [at a boundary](Self::at_boundary) when everything handed on ends a
/// message: the library holds no partial frame and no message in progress. What was read
/// and not handed on ([`into_parts`](Self::into_parts)) is what the next generation must
/// read first. Writes go straight through.
///
/// Read through tokio's I/O traits (tokio-tungstenite); for futures-io libraries
/// (async-tungstenite on smol or async-std), wrap it in tokio-util's `Compat`
/// (`TokioAsyncReadCompatExt::compat`), which is how the `chat` example runs there.
#[derive(Debug)]
pub struct MessageBoundary<S> {
    inner: S,
    /// Read from `inner`, not handed on yet.
    buf: BytesMut,
    /// Bytes of the current frame still to hand on; 0 between frames.
    frame_left: u64,
    /// A data frame without FIN was handed on, and its message's final continuation was
    /// not yet.
    fragmented: bool,
    eof: bool,
}

impl<S> MessageBoundary<S> {
    /// `inner` at the start of a frame.
    pub fn new(inner: S) -> Self {
        Self::with_read(inner, Bytes::new())
    }

    /// `inner`, with bytes already read from it that come first: hyper's read buffer of
    /// [`upgraded_stream`], or the unconsumed bytes of a connection handed over. They start
    /// at a frame boundary.
    pub fn with_read(inner: S, read: impl Into<Bytes>) -> Self {
        let read: Bytes = read.into();
        Self {
            inner,
            buf: BytesMut::from(read),
            frame_left: 0,
            fragmented: false,
            eof: false,
        }
    }

    /// Whether everything handed on ends a message: no partial frame, no fragmented
    /// message in progress. Ask it outside the library's read (after a message came out
    /// of it, or while it waits for one): then the library has parsed all it was handed,
    /// as it reads only when it has no complete frame.
    pub fn at_boundary(&self) -> bool {
        self.frame_left == 0 && !self.fragmented
    }

    /// The bytes read from the stream and not handed on.
    pub fn unconsumed(&self) -> &[u8] {
        &self.buf
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream (reading from it directly loses track of the frames).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The stream and the bytes read from it and not handed on: at a boundary, they start
    /// with the next frame. Take it apart at a boundary only, after the library flushed
    /// what it had to write.
    ///
    /// They are few: it reads at most 8 KiB at a time, and only when the current frame
    /// needs more bytes, so a handover's unconsumed bytes stay well within endless'
    /// limit (`MAX_UNCONSUMED_LEN`, 64 KiB) unless [`with_read`](Self::with_read) was given
    /// more.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.buf.freeze())
    }

    /// Starts the frame at the head of the buffer if its header is there (and, for a
    /// control frame, all of it): whether it did.
    fn start_frame(&mut self) -> bool {
        let Some(header) = Header::parse(&self.buf) else {
            return false;
        };
        let len = header.frame_len();
        if header.is_control() {
            if header.payload <= MAX_CONTROL_PAYLOAD && (self.buf.len() as u64) < len {
                return false;
            }
        } else {
            // A first data frame or a continuation: the message goes on unless FIN.
            self.fragmented = !header.fin;
        }
        self.frame_left = len;
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MessageBoundary<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.frame_left == 0 && !this.buf.is_empty() {
                this.start_frame();
            }
            if this.frame_left > 0 && !this.buf.is_empty() {
                let n = usize::try_from(this.frame_left)
                    .unwrap_or(usize::MAX)
                    .min(this.buf.len())
                    .min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.frame_left -= n as u64;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A truncated frame: the library sees what there is, then the end.
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.buf.extend_from_slice(read.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MessageBoundary<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---- the drain deadline --------------------------------------------------------------------

/// Resolves `margin` before the drain deadline of the process whose connections `tracker`
/// counts ([`Tracker::drain_deadline`]): time for a websocket that stays here to send a
/// close frame with code [`GOING_AWAY`] and to read the client's answer before the deadline
/// shuts its socket down. A drain without a deadline (`Config::drain_timeout(None)`: never
/// hammer) never comes near one.
///
/// If the process takes the service back (its successor died), it waits for the next
/// drain. A hammer request closes at once, without this warning.
///
/// # Examples
///
/// ```no_run
/// # async fn doc(tracker: endless_unix::Tracker) {
/// use std::time::Duration;
/// use endless_hyper::ws::deadline_near;
/// use endless_tokio::Tokio;
///
/// // Say goodbye a second before the drain closes the connection.
/// deadline_near::<Tokio>(&tracker, Duration::from_secs(1)).await;
/// // … `ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "restart".into() }))` …
/// # }
/// ```
pub async fn deadline_near<N: HttpRuntime>(tracker: &Tracker, margin: Duration) {
    loop {
        tracker.closing().await;
        let wait = match tracker.drain_deadline() {
            Some(deadline) => deadline
                .saturating_duration_since(N::clock())
                .saturating_sub(margin),
            None => {
                // No deadline to warn of in this drain; the next one may have one.
                tracker.serving().await;
                continue;
            }
        };
        tokio::select! {
            biased;
            () = N::sleep(wait) => return,
            () = tracker.serving() => {}
        }
    }
}

mod handshake;
#[cfg(test)]
mod tests;
