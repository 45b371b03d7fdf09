use std::collections::VecDeque;

use super::*;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// Which length encoding a frame uses.
#[derive(Clone, Copy)]
enum Len {
    /// The shortest one.
    Minimal,
    /// 64 bits, whatever the length (not minimal: the parser must not care).
    Long,
}

/// A client frame (masked, as clients send them).
fn frame(fin: bool, opcode: u8, payload: &[u8], len: Len) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | opcode];
    let n = payload.len();
    match len {
        Len::Minimal if n < 126 => f.push(0x80 | n as u8),
        Len::Minimal if n <= usize::from(u16::MAX) => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Frames, and whether the stream is at a message boundary after each.
fn conversation() -> (Vec<Vec<u8>>, Vec<bool>) {
    let frames = vec![
        (frame(true, TEXT, b"hello", Len::Minimal), true),
        // A fragmented message with control frames in the middle.
        (frame(false, TEXT, b"ab", Len::Minimal), false),
        (frame(true, PING, b"p", Len::Minimal), false),
        (frame(false, CONTINUATION, &[7u8; 300], Len::Minimal), false),
        (frame(true, PONG, b"", Len::Minimal), false),
        (frame(true, CONTINUATION, b"end", Len::Long), true),
        (frame(true, PING, &[1u8; 125], Len::Minimal), true),
        (frame(true, BINARY, b"", Len::Minimal), true),
        (frame(true, BINARY, &[9u8; 126], Len::Minimal), true),
        (
            frame(true, CLOSE, &1000u16.to_be_bytes(), Len::Minimal),
            true,
        ),
    ];
    frames.into_iter().unzip()
}

/// A stream that yields `chunks`, each after a `Pending` if `pending`, then the end.
struct Chunks {
    chunks: VecDeque<Vec<u8>>,
    pending: bool,
    polled: bool,
}

impl Chunks {
    fn new(data: &[u8], cuts: &[usize], pending: bool) -> Self {
        let mut chunks = VecDeque::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
            if cut > at {
                chunks.push_back(data[at..cut].to_vec());
                at = cut;
            }
        }
        Self {
            chunks,
            pending,
            polled: false,
        }
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending && !this.polled {
            this.polled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.polled = false;
        if let Some(chunk) = this.chunks.front_mut() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                this.chunks.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// One read of at most `max` bytes; `None` at the end.
fn read_once<S: AsyncRead + Unpin>(s: &mut MessageBoundary<S>, max: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; max];
    let mut buf = ReadBuf::new(&mut out);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        match Pin::new(&mut *s).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(e)) => panic!("read: {e}"),
            // `Chunks` woke itself: poll again.
            Poll::Pending => {}
        }
    }
    let n = buf.filled().len();
    (n > 0).then(|| out[..n].to_vec())
}

/// Reads `data` (cut at `cuts`) through a [`MessageBoundary`] `max` bytes at a time and
/// checks every read against the frames: none crosses a frame's end, control frames come
/// whole, and the boundary is reported exactly after the frames that end a message.
fn check(frames: &[Vec<u8>], boundaries: &[bool], cuts: &[usize], max: usize, pending: bool) {
    let data = frames.concat();
    // The end of each frame, and whether it is a boundary / a control frame.
    let mut ends = Vec::new();
    let mut at = 0;
    for (f, &boundary) in frames.iter().zip(boundaries) {
        at += f.len();
        ends.push((at, boundary, f[0] & 0x8 != 0, f.len()));
    }
    let mut s = MessageBoundary::new(Chunks::new(&data, cuts, pending));
    assert!(s.at_boundary());
    let mut pos = 0;
    let mut frame = 0;
    while let Some(read) = read_once(&mut s, max) {
        let start = pos;
        pos += read.len();
        assert_eq!(read, data[start..pos], "bytes at {start} (cuts {cuts:?})");
        let (end, boundary, control, len) = ends[frame];
        assert!(
            pos <= end,
            "read {start}..{pos} crosses the frame end {end}"
        );
        if control && max >= len {
            assert_eq!(
                (start, pos),
                (end - len, end),
                "a control frame comes whole"
            );
        }
        if pos == end {
            frame += 1;
            assert_eq!(s.at_boundary(), boundary, "after the frame ending at {end}");
        } else {
            assert!(!s.at_boundary(), "inside the frame ending at {end}");
        }
        // What was read and not handed on is what follows.
        let unconsumed = s.unconsumed();
        assert_eq!(unconsumed, &data[pos..pos + unconsumed.len()]);
    }
    assert_eq!(pos, data.len());
    assert_eq!(frame, frames.len());
}

#[test]
fn headers_parse_at_every_length_encoding_and_wait_for_their_last_byte() {
    for (payload, len, header) in [
        (0usize, Len::Minimal, 6),
        (125, Len::Minimal, 6),
        (126, Len::Minimal, 8),
        (65_535, Len::Minimal, 8),
        (65_536, Len::Minimal, 14),
        (3, Len::Long, 14),
    ] {
        let f = frame(true, BINARY, &vec![0u8; payload], len);
        for cut in 0..header {
            assert_eq!(
                Header::parse(&f[..cut]),
                None,
                "{payload} bytes, cut at {cut}"
            );
        }
        let parsed = Header::parse(&f[..header]).expect("complete");
        assert_eq!(
            parsed,
            Header {
                fin: true,
                opcode: BINARY,
                len: header,
                payload: payload as u64
            }
        );
        assert_eq!(parsed.frame_len(), f.len() as u64);
    }
    // Unmasked (a server's frame), and a length that does not fit in memory: parsed, not
    // trusted.
    assert_eq!(
        Header::parse(&[0x02, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        Some(Header {
            fin: false,
            opcode: BINARY,
            len: 10,
            payload: u64::MAX
        })
    );
}

#[test]
fn bytes_split_at_every_position() {
    let (frames, boundaries) = conversation();
    let len = frames.concat().len();
    for cut in 0..=len {
        for max in [1, 3, 200, 64 * 1024] {
            check(&frames, &boundaries, &[cut], max, cut % 2 == 0);
        }
    }
}

#[test]
fn bytes_one_at_a_time_and_all_at_once() {
    let (frames, boundaries) = conversation();
    let len = frames.concat().len();
    let every: Vec<usize> = (1..len).collect();
    check(&frames, &boundaries, &every, 64 * 1024, true);
    check(&frames, &boundaries, &[], 64 * 1024, false);
    check(&frames, &boundaries, &[], 5, false);
}

#[test]
fn a_frame_with_a_64_bit_length_is_handed_on_and_ends_where_it_says() {
    let big = vec![0x5a; 70_000];
    let frames = vec![
        frame(false, BINARY, &big, Len::Minimal),
        frame(true, PING, b"in between", Len::Minimal),
        frame(true, CONTINUATION, &big, Len::Minimal),
        frame(true, TEXT, b"after", Len::Minimal),
    ];
    let boundaries = [false, false, true, true];
    let len = frames.concat().len();
    for cut in (0..20).chain([100, 69_999, 70_013, 70_014, 70_015, len - 3]) {
        check(&frames, &boundaries, &[cut, cut + 1], 4096, false);
    }
}

#[test]
fn what_was_read_before_goes_through_the_parser() {
    let (frames, _) = conversation();
    let data = frames.concat();
    // The first three frames arrive as bytes read before (a handover's unconsumed bytes),
    // cut inside the third: the rest comes from the stream.
    let split = frames[0].len() + frames[1].len() + 3;
    let mut s = MessageBoundary::with_read(
        Chunks::new(&data[split..], &[], false),
        data[..split].to_vec(),
    );
    let mut all = Vec::new();
    let mut boundaries = Vec::new();
    while let Some(read) = read_once(&mut s, 64 * 1024) {
        all.extend_from_slice(&read);
        boundaries.push(s.at_boundary());
    }
    assert_eq!(all, data);
    assert_eq!(boundaries[..3], [true, false, false]);
}

#[test]
fn a_truncated_frame_reaches_the_reader_then_the_end() {
    let f = frame(true, TEXT, b"cut short", Len::Minimal);
    let mut s = MessageBoundary::new(Chunks::new(&f[..4], &[], false));
    assert_eq!(read_once(&mut s, 100), Some(f[..4].to_vec()));
    assert_eq!(read_once(&mut s, 100), None);
}

// ---- under tungstenite ---------------------------------------------------------------------

mod tungstenite {
    use super::super::MessageBoundary;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    type Server = WebSocketStream<MessageBoundary<tokio::io::DuplexStream>>;

    async fn moved(ws: Server) -> Server {
        let (socket, unconsumed) = ws.into_inner().into_parts();
        WebSocketStream::from_raw_socket(
            MessageBoundary::with_read(socket, unconsumed),
            Role::Server,
            None,
        )
        .await
    }

    fn fragment(first: bool, fin: bool, text: &str) -> Message {
        let opcode = if first {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        Message::Frame(Frame::message(text.as_bytes().to_vec(), opcode, fin))
    }

    /// Every message arrives once and in order although the websocket is taken apart and
    /// rebuilt after each one, with frames of the next ones already read.
    #[tokio::test]
    async fn a_websocket_moved_after_every_message_loses_nothing() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut expected = Vec::new();
        for i in 0..50 {
            if i % 5 == 3 {
                client
                    .send(fragment(true, false, &format!("{i}a")))
                    .await
                    .unwrap();
                client
                    .send(Message::Ping(vec![i as u8].into()))
                    .await
                    .unwrap();
                client.send(fragment(false, false, "b")).await.unwrap();
                client.send(fragment(false, true, "c")).await.unwrap();
                expected.push(format!("{i}abc"));
            } else {
                let text = format!("{i}:{}", "x".repeat(i * 997 % 70_000));
                client.send(Message::text(text.clone())).await.unwrap();
                expected.push(text);
            }
        }
        let mut ws =
            WebSocketStream::from_raw_socket(MessageBoundary::new(server), Role::Server, None)
                .await;
        for want in expected {
            // tungstenite answers pings itself, and shows them too: inside a fragmented
            // message, not at a boundary.
            let got = loop {
                match ws.next().await.unwrap().unwrap() {
                    Message::Ping(_) => assert!(!ws.get_ref().at_boundary()),
                    message => break message,
                }
            };
            assert_eq!(got.into_text().unwrap().as_str(), want);
            assert!(ws.get_ref().at_boundary());
            ws.flush().await.unwrap();
            ws = moved(ws).await;
        }
        // The pongs the server's websockets owed went out before each move.
        let mut pongs = 0;
        drop(ws);
        while let Some(Ok(message)) = client.next().await {
            if let Message::Pong(_) = message {
                pongs += 1;
            }
        }
        assert_eq!(pongs, 10);
    }

    /// In the middle of a fragmented message the stream is not at a boundary; it is once
    /// the last fragment came.
    #[tokio::test]
    async fn no_boundary_inside_a_fragmented_message() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut ws =
            WebSocketStream::from_raw_socket(MessageBoundary::new(server), Role::Server, None)
                .await;
        client.send(fragment(true, false, "first ")).await.unwrap();
        client
            .send(Message::Ping(b"x".to_vec().into()))
            .await
            .unwrap();
        let ping = ws.next().await.unwrap().unwrap();
        assert_eq!(ping, Message::Ping(b"x".to_vec().into()));
        assert!(!ws.get_ref().at_boundary());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), ws.next()).await;
        assert!(waited.is_err(), "no message yet");
        assert!(!ws.get_ref().at_boundary());
        client.send(fragment(false, true, "last")).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), "first last");
        assert!(ws.get_ref().at_boundary());
    }
}

// ---- the deadline --------------------------------------------------------------------------

#[cfg(feature = "runtime-tokio")]
mod deadline {
    use std::time::{Duration, Instant};

    use endless_tokio::Tokio;
    use endless_unix::Tracker;

    use super::super::deadline_near;

    const MS: Duration = Duration::from_millis(1);

    /// It waits for the drain, then resolves a margin before the drain's deadline.
    #[tokio::test]
    async fn resolves_a_margin_before_the_drain_deadline() {
        let tracker = Tracker::new();
        let near = deadline_near::<Tokio>(&tracker, 100 * MS);
        let mut near = std::pin::pin!(near);
        let serving = tokio::time::timeout(500 * MS, near.as_mut()).await;
        assert!(serving.is_err(), "no deadline while the process serves");
        let drain = Instant::now();
        tracker.close_idle_until(Some(drain + 400 * MS));
        near.await;
        let took = drain.elapsed();
        assert!(took >= 300 * MS && took < 3000 * MS, "{took:?}");
    }

    /// A deadline closer than the margin: at once.
    #[tokio::test]
    async fn at_once_when_the_deadline_is_nearer_than_the_margin() {
        let tracker = Tracker::new();
        tracker.close_idle_until(Some(Instant::now() + 50 * MS));
        let near = deadline_near::<Tokio>(&tracker, 100 * MS);
        tokio::time::timeout(2000 * MS, near)
            .await
            .expect("resolves at once");
    }

    /// Without a drain deadline there is nothing to warn of.
    #[tokio::test]
    async fn never_without_a_drain_deadline() {
        let tracker = Tracker::new();
        tracker.close_idle_until(None);
        let near = deadline_near::<Tokio>(&tracker, 100 * MS);
        assert!(tokio::time::timeout(300 * MS, near).await.is_err());
    }

    /// The deadline is the driver's, counted on tokio's clock: a paused clock moves it.
    #[tokio::test(start_paused = true)]
    async fn on_the_runtimes_clock() {
        let tracker = Tracker::new();
        let drain = tokio::time::Instant::now();
        tracker.close_idle_until(Some((drain + Duration::from_secs(3600)).into_std()));
        deadline_near::<Tokio>(&tracker, Duration::from_secs(1)).await;
        assert_eq!(drain.elapsed(), Duration::from_secs(3599));
    }
}
