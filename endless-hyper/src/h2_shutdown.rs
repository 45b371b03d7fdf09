//! Closing the race in HTTP/2's graceful shutdown.
//!
//! hyper's graceful shutdown (the h2 crate's) sends `GOAWAY(last = 2^31-1)` and a PING; when
//! the client acknowledges the PING, it sends the final `GOAWAY(last = highest stream seen)`
//! at once and refuses every stream above it. But a client that opened streams before it
//! read the first GOAWAY, and had not written them yet, writes them *after* its PING
//! acknowledgement (PING responses go first, RFC 9113 §6.7): they arrive a moment after the
//! acknowledgement and are refused unprocessed — failed requests, for a client that does
//! not retry. Measured here: 60–350 failures per 10 restarts under 32 connections.
//!
//! [`PongDelay`] sits under hyper on the read side and holds back the acknowledgement of
//! h2's shutdown PING (recognised by h2's fixed payload) for [`HOLD`], while passing on the
//! frames that follow it. The final GOAWAY then covers the streams the client opened before
//! it saw the first one. It follows frame boundaries only after the HTTP/2 preface; any
//! other protocol (HTTP/1) is passed through untouched, without copies, from the first
//! bytes on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// h2's `Ping::SHUTDOWN` payload.
const SHUTDOWN: [u8; 8] = [0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54];
/// How long the shutdown PING's acknowledgement is held back: enough for the frames a
/// client wrote right after it to arrive.
pub(crate) const HOLD: Duration = Duration::from_millis(20);

enum Mode {
    Preface,
    Frames,
    /// Not HTTP/2 (or something we do not follow): pass everything.
    Off,
}

/// A stream that holds back the client's acknowledgement of h2's shutdown PING, for the
/// time a sleep of the runtime (`S`, made by `sleep`) takes.
pub(crate) struct PongDelay<T, S> {
    inner: T,
    mode: Mode,
    /// Read from `inner`, not delivered yet.
    buf: Vec<u8>,
    /// `buf[..ready]` may be delivered.
    ready: usize,
    /// Bytes of the current frame's payload still to come (deliverable as they come).
    frame_left: usize,
    held: Option<(Vec<u8>, Pin<Box<S>>)>,
    sleep: fn(Duration) -> S,
    eof: bool,
}

impl<T, S: Future<Output = ()>> PongDelay<T, S> {
    pub(crate) fn new(inner: T, sleep: fn(Duration) -> S) -> Self {
        Self {
            inner,
            sleep,
            mode: Mode::Preface,
            buf: Vec::new(),
            ready: 0,
            frame_left: 0,
            held: None,
            eof: false,
        }
    }

    /// The stream, and the bytes read from it and not delivered yet (a held frame among
    /// them, in its place): what an upgraded HTTP/1 connection reads next.
    pub(crate) fn into_parts(self) -> (T, Vec<u8>) {
        let mut buf = self.buf;
        if let Some((frame, _)) = self.held {
            let at = self.ready.min(buf.len());
            buf.splice(at..at, frame);
        }
        (self.inner, buf)
    }

    /// Advances `ready` over what can be delivered.
    fn parse(&mut self) {
        loop {
            match self.mode {
                Mode::Off => {
                    self.ready = self.buf.len();
                    return;
                }
                Mode::Preface => {
                    let have = self.buf.len().min(PREFACE.len());
                    if self.buf[..have] != PREFACE[..have] {
                        self.mode = Mode::Off;
                        continue;
                    }
                    if have < PREFACE.len() {
                        return;
                    }
                    self.ready = PREFACE.len();
                    self.mode = Mode::Frames;
                }
                Mode::Frames => {
                    if self.frame_left > 0 {
                        let take = self.frame_left.min(self.buf.len() - self.ready);
                        self.ready += take;
                        self.frame_left -= take;
                        if self.frame_left > 0 {
                            return;
                        }
                        continue;
                    }
                    let rest = &self.buf[self.ready..];
                    if rest.len() < 9 {
                        return;
                    }
                    let len = usize::from(rest[0]) << 16
                        | usize::from(rest[1]) << 8
                        | usize::from(rest[2]);
                    let (kind, flags) = (rest[3], rest[4]);
                    if kind == 0x6 && flags & 0x1 != 0 && len == 8 {
                        if rest.len() < 17 {
                            return;
                        }
                        if rest[9..17] == SHUTDOWN && self.held.is_none() {
                            let frame: Vec<u8> =
                                self.buf.drain(self.ready..self.ready + 17).collect();
                            self.held = Some((frame, Box::pin((self.sleep)(HOLD))));
                            continue;
                        }
                    }
                    self.ready += 9;
                    self.frame_left = len;
                }
            }
        }
    }

    /// At a frame boundary, puts the held frame back once its time has come.
    fn release(&mut self, cx: &mut Context<'_>, force: bool) {
        let at_boundary = matches!(self.mode, Mode::Frames) && self.frame_left == 0;
        if !at_boundary {
            return;
        }
        let Some((_, sleep)) = &mut self.held else {
            return;
        };
        if force || sleep.as_mut().poll(cx).is_ready() {
            let (frame, _) = self.held.take().expect("held");
            let at = self.ready;
            self.buf.splice(at..at, frame);
            self.ready += 17;
        }
    }
}

impl<T: AsyncRead + Unpin, S: Future<Output = ()>> AsyncRead for PongDelay<T, S> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Not HTTP/2: straight through once the bytes looked at are delivered. Every read
        // of an HTTP/1 connection takes this branch, and only it: the rest (with its 16 KiB
        // buffer on the stack) is out of line.
        if matches!(this.mode, Mode::Off) && this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        Self::poll_read_frames(this, cx, out)
    }
}

impl<T: AsyncRead + Unpin, S: Future<Output = ()>> PongDelay<T, S> {
    /// Reads while the protocol is being recognised, and under HTTP/2.
    #[inline(never)]
    fn poll_read_frames(
        this: &mut Self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            this.release(cx, this.eof);
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left (a partial frame) goes up as is.
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.buf.extend_from_slice(rb.filled());
                        this.parse();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // The held frame's timer is registered by `release`.
                    if let Some((_, sleep)) = &mut this.held
                        && sleep.as_mut().poll(cx).is_ready()
                        && matches!(this.mode, Mode::Frames)
                        && this.frame_left == 0
                    {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin, S> AsyncWrite for PongDelay<T, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    async fn through(input: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        PongDelay::new(input.as_slice(), tokio::time::sleep)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_shutdown_ping_ack_goes_after_the_frames_behind_it() {
        let headers1 = frame(0x1, 0x5, 1, b"abc");
        let ack = frame(0x6, 0x1, 0, &SHUTDOWN);
        let headers3 = frame(0x1, 0x5, 3, b"defg");
        let input = [PREFACE, &headers1, &ack, &headers3].concat();
        let expected = [PREFACE, &headers1, &headers3, &ack].concat();
        assert_eq!(run(through(input)), expected);
    }

    #[test]
    fn other_pings_and_http1_pass_unchanged() {
        let other = frame(0x6, 0x1, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let data = frame(0x0, 0x0, 1, &[0u8; 40_000]);
        let input = [PREFACE, &other, &data].concat();
        assert_eq!(run(through(input.clone())), input);
        let http1 = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
        assert_eq!(run(through(http1.clone())), http1);
        // A payload that happens to contain the shutdown bytes is not a PING.
        let fake = frame(0x0, 0x0, 1, &SHUTDOWN);
        let input = [PREFACE, &fake, &other].concat();
        assert_eq!(run(through(input.clone())), input);
    }
}
