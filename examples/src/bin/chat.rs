//! A websocket chat whose websockets survive every deploy: endless-hyper's `Server` on
//! tokio, hyper's upgrade, tokio-tungstenite over `endless_hyper::ws::MessageBoundary`.
//!
//! Clients connect to `/ws?name=NAME&room=ROOM`; every text frame is answered to its
//! sender with `pid=<pid> seen=<n>` (see [`endless_examples::chat`]) and broadcast to the
//! rest of the room. On a restart, each websocket, at its next message boundary (never in
//! the middle of a fragmented message), flushes what it has to write and is handed to the
//! new generation with its session (name, room, counter) and the bytes read past the
//! boundary; the new generation resumes it without a handshake and the room goes on
//! there. The client sees no close frame and no reconnect; only the pid changes.
//!
//! ```text
//! cargo run -p endless-examples --bin chat -- --listen 127.0.0.1:8080 --pid-file /tmp/chat.pid
//! websocat 'ws://127.0.0.1:8080/ws?name=alice&room=lobby'   # type lines
//! kill -HUP $(cat /tmp/chat.pid)                            # the same websocket goes on
//! ```
//!
//! A websocket the new generation does not take (an older version, `CHAT_NO_RECEIVER=1`,
//! one that dies while the websockets move) stays here and is served on; shortly before
//! the drain deadline (`--drain-timeout`) it gets a close frame with code 1001 (going
//! away). `CHAT_TAKE_DELAY_MS` slows the new generation's takes down, for tests.
//! `GET /` answers `pid=<pid>`, as every HTTP example does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use endless_examples::chat::{self, RECEIVER, Session};
use endless_examples::{Args, init_logging, pid_body, serve_http};
use endless_hyper::HyperService;
use endless_hyper::ws::{MessageBoundary, Socket, deadline_near, upgraded_stream};
use endless_tokio::{Endless, Stream, Tokio};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = WebSocketStream<MessageBoundary<Socket<Tokio>>>;

/// What one process's websockets share.
struct Chat {
    endless: Endless,
    /// The rooms of this process: a moved websocket joins its room in the new generation.
    rooms: Mutex<HashMap<String, broadcast::Sender<Said>>>,
    next_id: AtomicU64,
    drain_timeout: Option<Duration>,
}

/// A line said in a room, by the connection `from`.
#[derive(Debug, Clone)]
struct Said {
    from: u64,
    line: Arc<str>,
}

impl Chat {
    fn join(&self, room: &str) -> (broadcast::Sender<Said>, broadcast::Receiver<Said>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        // Rooms nobody is in any more go.
        rooms.retain(|_, tx| tx.receiver_count() > 0);
        let tx = rooms
            .entry(room.to_owned())
            .or_insert_with(|| broadcast::channel(256).0)
            .clone();
        let rx = tx.subscribe();
        (tx, rx)
    }
}

fn main() {
    init_logging();
    let args = Args::from_env();
    let code = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
        .block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let endless: Endless = args.start_endless();
    let chat = Arc::new(Chat {
        endless: endless.clone(),
        rooms: Mutex::default(),
        next_id: AtomicU64::new(0),
        drain_timeout: args.drain_timeout,
    });
    // Before ready: the previous generation hands over right after it.
    if chat::no_receiver() {
        tracing::info!("CHAT_NO_RECEIVER: taking no websocket over");
    } else {
        match endless.receive_connections(RECEIVER) {
            Ok(connections) => {
                let chat = Arc::clone(&chat);
                tokio::spawn(async move {
                    let delay = chat::take_delay();
                    let mut taken = 0u64;
                    loop {
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        let Some(received) = connections.next().await else {
                            break;
                        };
                        let Some(session) = Session::resume(&received.state) else {
                            tracing::warn!("a websocket came with a state that is not a session");
                            continue;
                        };
                        taken += 1;
                        tracing::info!(
                            pid = std::process::id(),
                            seen = session.seen,
                            room = %session.room,
                            "websocket taken over"
                        );
                        let ws = resume(received.stream, received.unconsumed.into()).await;
                        tokio::spawn(serve(Arc::clone(&chat), ws, session));
                    }
                    tracing::info!(taken, "websockets taken over");
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot receive websockets");
                return 1;
            }
        }
    }
    let service = {
        let chat = Arc::clone(&chat);
        hyper::service::service_fn(move |req| http(Arc::clone(&chat), req))
    };
    serve_http(
        &endless,
        &args,
        &endless_hyper::Server::new(),
        HyperService(service),
    );
    endless.ready();
    endless.run().await.code
}

/// `GET /ws` upgrades to a websocket; anything else gets the pid.
async fn http(
    chat: Arc<Chat>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/ws" {
        return Ok(Response::new(Full::from(pid_body())));
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (upgrade, key) else {
        let mut response = Response::new(Full::from("a websocket handshake, please\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(response);
    };
    let session = Session::from_query(req.uri().query());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        let (stream, read) = match upgraded_stream::<Tokio>(upgraded) {
            Ok(parts) => parts,
            // Not over TCP or Unix from endless' listener: nothing this example serves.
            Err(e) => return tracing::warn!(error = %e, "websocket not served"),
        };
        let ws = resume(stream, read).await;
        serve(chat, ws, session).await;
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Full::default())
        .expect("a valid response");
    Ok(response)
}

/// A websocket on `stream`, whose first bytes are `read`: no handshake (it happened
/// already, here or in a previous generation).
async fn resume(stream: Stream, read: Bytes) -> Ws {
    let io = MessageBoundary::with_read(Socket::from(stream), read);
    WebSocketStream::from_raw_socket(io, Role::Server, None).await
}

/// Serves one websocket: answers and broadcasts each text frame; once the drain starts,
/// hands it over at the next message boundary, or, if it stays, says goodbye before the
/// drain deadline.
async fn serve(chat: Arc<Chat>, mut ws: Ws, mut session: Session) {
    let id = chat.next_id.fetch_add(1, Ordering::Relaxed);
    let tracker = ws.get_ref().get_ref().tracker();
    let (room, mut said) = chat.join(&session.room);
    let margin = chat::goodbye_margin(chat.drain_timeout);
    let deadline = deadline_near::<Tokio>(&tracker, chat.drain_timeout, margin);
    tokio::pin!(deadline);
    // Hand it over at the next boundary; offered once per drain.
    let mut moving = false;
    let mut offered = false;
    loop {
        // Outside tungstenite's read: it has parsed every byte it was handed.
        if moving && ws.get_ref().at_boundary() {
            moving = false;
            offered = true;
            match hand_over(&chat, ws, &session).await {
                Ok(()) => return,
                Err(Some(back)) => ws = back,
                Err(None) => return,
            }
        }
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let answer = session.answer();
                    if ws.send(Message::text(answer)).await.is_err() {
                        return;
                    }
                    let line = format!("{}: {}", session.name, text.as_str());
                    let _ = room.send(Said { from: id, line: line.into() });
                }
                // tungstenite answers pings and the client's close itself; after a close,
                // the stream ends.
                Some(Ok(_)) => {}
                Some(Err(e)) => return tracing::debug!(error = %e, "websocket failed"),
                None => return,
            },
            heard = said.recv() => match heard {
                Ok(Said { from, line }) if from != id => {
                    if ws.send(Message::text(line.as_ref())).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {}
            },
            () = tracker.closing(), if !moving && !offered => {
                if chat.endless.can_hand_over() {
                    moving = true;
                    if !ws.get_ref().at_boundary() {
                        tracing::info!(
                            pid = std::process::id(),
                            seen = session.seen,
                            "websocket inside a message: moved once it ends"
                        );
                    }
                } else {
                    // A stop, or a new generation that takes nothing: serve on.
                    offered = true;
                }
            }
            () = &mut deadline => return going_away(ws, margin).await,
        }
    }
}

/// Hands `ws` (at a message boundary) to the new generation with its session. Gives it
/// back, resumed here, if the new generation does not take it.
async fn hand_over(chat: &Chat, mut ws: Ws, session: &Session) -> Result<(), Option<Ws>> {
    // What tungstenite has to write (an answer, a pong) goes out first.
    if let Err(e) = ws.flush().await {
        tracing::debug!(error = %e, "websocket failed");
        return Err(None);
    }
    let (socket, unconsumed) = ws.into_inner().into_parts();
    let handed = chat
        .endless
        .hand_over(
            socket.into_stream(),
            RECEIVER,
            &session.state(),
            &unconsumed,
        )
        .await;
    match handed {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, seen = session.seen, "websocket kept");
            match e.connection {
                Some(stream) => Err(Some(resume(stream, unconsumed).await)),
                None => Err(None),
            }
        }
    }
}

/// Closes a websocket that stays here with 1001 (going away), and waits up to `margin`
/// for the client's close frame.
async fn going_away(mut ws: Ws, margin: Duration) {
    tracing::info!("websocket closed before the drain deadline (1001)");
    let close = CloseFrame {
        code: CloseCode::Away,
        reason: "server restarting".into(),
    };
    let _ = tokio::time::timeout(margin, async {
        if ws.close(Some(close)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
