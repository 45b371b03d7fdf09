//! The `chat` server, on every runtime: websockets at `/ws?name=NAME&room=ROOM`. Every
//! text frame a client sends is answered, to that client, with a text frame
//! `pid=<pid> seen=<n>` (the pid of the generation that answers, `n` the text frames this
//! connection has sent, this one included), and broadcast to the other members of the
//! room as `<name>: <text>`. The session — name, room, counter — is what a websocket
//! carries to the next generation.
//!
//! One implementation ([`run`]) over endless-hyper's runtimes, and over the websocket
//! libraries of each ([`Websocket`]): tokio-tungstenite on tokio, async-tungstenite
//! (through tokio-util's `Compat`) on smol and async-std. All of them speak tungstenite
//! 0.30, so a websocket moves between the runtimes as well.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use endless_hyper::rt::Task;
use endless_hyper::ws::{Handshake, MessageBoundary, Socket, UpgradeError, deadline_near};
use endless_hyper::{HttpRuntime, HyperService};
use endless_unix::adapter::{Endless, Stream};
use futures_util::{Sink, SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use crate::{Args, pid_body, serve_http};

/// The receiver name every generation registers, and hands websockets over under.
pub const RECEIVER: &str = "chat";

/// The version of [`Session::state`].
const STATE_VERSION: &str = "chat-1";

/// One websocket's session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Who speaks (`name=`, `anonymous` if none).
    pub name: String,
    /// The room (`room=`, `lobby` if none).
    pub room: String,
    /// Text frames received so far.
    pub seen: u64,
}

impl Session {
    /// A new session for the query string of `/ws` (values as sent, not decoded).
    pub fn from_query(query: Option<&str>) -> Self {
        let param = |key: &str| {
            query?
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .filter(|v| !v.is_empty() && !v.contains('\n'))
                .map(str::to_owned)
        };
        Self {
            name: param("name").unwrap_or_else(|| "anonymous".into()),
            room: param("room").unwrap_or_else(|| "lobby".into()),
            seen: 0,
        }
    }

    /// The state to hand over with the websocket.
    pub fn state(&self) -> Vec<u8> {
        format!(
            "{STATE_VERSION}\n{}\n{}\n{}",
            self.seen, self.room, self.name
        )
        .into_bytes()
    }

    /// The session a websocket was handed over with; `None` if the state is not one.
    pub fn resume(state: &[u8]) -> Option<Self> {
        let state = std::str::from_utf8(state).ok()?;
        let mut lines = state.splitn(4, '\n');
        if lines.next()? != STATE_VERSION {
            return None;
        }
        let seen = lines.next()?.parse().ok()?;
        let room = lines.next()?.to_owned();
        let name = lines.next()?.to_owned();
        Some(Self { name, room, seen })
    }

    /// Counts a text frame; the answer to it.
    pub fn answer(&mut self) -> String {
        self.seen += 1;
        format!("pid={} seen={}", std::process::id(), self.seen)
    }
}

/// `CHAT_TAKE_DELAY_MS`: how long a new generation waits before it takes each websocket
/// (to slow a takeover down for tests and demonstrations).
pub fn take_delay() -> Option<Duration> {
    std::env::var("CHAT_TAKE_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}

/// `CHAT_NO_RECEIVER=1`: the generation takes no websocket (as an older version would not),
/// so that its predecessor keeps them and says goodbye at its drain deadline.
pub fn no_receiver() -> bool {
    std::env::var_os("CHAT_NO_RECEIVER").is_some_and(|v| v == "1")
}

/// How long before the drain deadline a websocket that stays says goodbye (close 1001):
/// a second, or a quarter of a short drain.
pub fn goodbye_margin(drain_timeout: Option<Duration>) -> Duration {
    drain_timeout.map_or(Duration::from_secs(1), |t| {
        (t / 4).min(Duration::from_secs(1))
    })
}

// ---- the websocket libraries ---------------------------------------------------------------

/// A server websocket over a [`MessageBoundary`] on the runtime `N`, as a websocket
/// library makes it: what [`run`] needs besides its stream of messages and its sink.
pub trait Websocket<N: HttpRuntime>:
    futures_util::Stream<Item = Result<Message, WsError>>
    + Sink<Message, Error = WsError>
    + Unpin
    + Send
    + Sized
    + 'static
{
    /// A websocket on `stream`, whose first bytes are `read`, without a handshake (it
    /// happened already, here or in a previous generation).
    fn resume(stream: Stream<N>, read: Bytes) -> impl Future<Output = Self> + Send;

    /// The stream under the library.
    fn boundary(&self) -> &MessageBoundary<Socket<N>>;

    /// The socket and the bytes read from it and not handed to the library (call it at a
    /// boundary, after a flush).
    fn into_parts(self) -> (Socket<N>, Bytes);
}

/// tokio-tungstenite's websocket (tokio).
pub type TokioWs<N> = tokio_tungstenite::WebSocketStream<MessageBoundary<Socket<N>>>;

impl<N: HttpRuntime> Websocket<N> for TokioWs<N> {
    async fn resume(stream: Stream<N>, read: Bytes) -> Self {
        let io = MessageBoundary::with_read(Socket::from(stream), read);
        Self::from_raw_socket(io, Role::Server, None).await
    }

    fn boundary(&self) -> &MessageBoundary<Socket<N>> {
        self.get_ref()
    }

    fn into_parts(self) -> (Socket<N>, Bytes) {
        self.into_inner().into_parts()
    }
}

/// async-tungstenite's websocket (smol, async-std), over the [`MessageBoundary`] seen
/// through futures-io.
pub type AsyncWs<N> = async_tungstenite::WebSocketStream<Compat<MessageBoundary<Socket<N>>>>;

impl<N: HttpRuntime> Websocket<N> for AsyncWs<N> {
    async fn resume(stream: Stream<N>, read: Bytes) -> Self {
        let io = MessageBoundary::with_read(Socket::from(stream), read).compat();
        Self::from_raw_socket(io, Role::Server, None).await
    }

    fn boundary(&self) -> &MessageBoundary<Socket<N>> {
        self.get_ref().get_ref()
    }

    fn into_parts(self) -> (Socket<N>, Bytes) {
        self.into_inner().into_inner().into_parts()
    }
}

// ---- the server ----------------------------------------------------------------------------

/// What one process's websockets share.
struct Chat<N: HttpRuntime> {
    endless: Endless<N>,
    /// The rooms of this process: a moved websocket joins its room in the new generation.
    rooms: Mutex<HashMap<String, broadcast::Sender<Said>>>,
    next_id: AtomicU64,
    drain_timeout: Option<Duration>,
    spawn: fn(Task),
}

/// A line said in a room, by the connection `from`.
#[derive(Debug, Clone)]
struct Said {
    from: u64,
    line: Arc<str>,
}

impl<N: HttpRuntime> Chat<N> {
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

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        (self.spawn)(Box::pin(task));
    }
}

/// `chat` and `chat-axum`: the chat on tokio (a multi-threaded runtime, as
/// `#[tokio::main]`), tokio-tungstenite's websockets, requests routed by `front`.
pub fn run_tokio(args: Args, front: Front) -> i32 {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
        .block_on(run::<endless_tokio::Tokio, TokioWs<endless_tokio::Tokio>>(
            args,
            endless_hyper::Server::new(),
            front,
            |task| drop(tokio::spawn(task)),
        ))
}

/// How the chat's HTTP requests are routed: a hyper `service_fn`, or an axum `Router` whose
/// `/ws` handler extracts a [`Handshake`] (in place of axum's `WebSocketUpgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// hyper's `service_fn`.
    Hyper,
    /// An axum `Router`.
    Axum,
}

/// Serves the chat on every `--listen` address with `server` (a `Server` of the runtime
/// `N`, with the application's spawner if it has one), routed by `front`, websockets of the
/// library `W`, tasks on `spawn`; reports ready, runs the lifecycle and returns the exit
/// code.
pub async fn run<N, W>(
    args: Args,
    server: endless_hyper::Server<N>,
    front: Front,
    spawn: fn(Task),
) -> i32
where
    N: HttpRuntime,
    W: Websocket<N>,
{
    let endless: Endless<N> = args.start_endless();
    let chat = Arc::new(Chat {
        endless: endless.clone(),
        rooms: Mutex::default(),
        next_id: AtomicU64::new(0),
        drain_timeout: args.drain_timeout,
        spawn,
    });
    // Before ready: the previous generation hands over right after it.
    if no_receiver() {
        tracing::info!("CHAT_NO_RECEIVER: taking no websocket over");
    } else {
        match endless.receive_connections(RECEIVER) {
            Ok(connections) => {
                // Slowed down (see `take_delay`): one at a time, each as it is taken.
                let connections = if take_delay().is_some() {
                    connections.take_at_most(1)
                } else {
                    connections
                };
                let chat = Arc::clone(&chat);
                chat.clone().spawn(async move {
                    let delay = take_delay();
                    let mut taken = 0u64;
                    loop {
                        if let Some(delay) = delay {
                            N::sleep(delay).await;
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
                            unconsumed = received.unconsumed.len(),
                            "websocket taken over"
                        );
                        let ws = W::resume(received.stream, received.unconsumed.into()).await;
                        chat.spawn(serve(Arc::clone(&chat), ws, session));
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
    match front {
        Front::Hyper => {
            let chat = Arc::clone(&chat);
            let service =
                hyper::service::service_fn(move |req| http::<N, W>(Arc::clone(&chat), req));
            serve_http(&endless, &args, &server, HyperService(service));
        }
        Front::Axum => {
            let app = axum::Router::new()
                .route("/ws", axum::routing::get(ws_axum::<N, W>))
                .fallback(|| async { pid_body() })
                .with_state(Arc::clone(&chat));
            serve_http(&endless, &args, &server, app);
        }
    }
    endless.ready();
    endless.run().await.code
}

/// `GET /ws` upgrades to a websocket; anything else gets the pid.
async fn http<N, W>(
    chat: Arc<Chat<N>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    N: HttpRuntime,
    W: Websocket<N>,
{
    if req.uri().path() != "/ws" {
        return Ok(Response::new(Full::from(pid_body())));
    }
    let handshake = match Handshake::new(&mut req) {
        Ok(handshake) => handshake,
        Err(e) => return Ok(e.response()),
    };
    Ok(accept::<N, W, _>(
        chat,
        handshake,
        Session::from_query(req.uri().query()),
    ))
}

/// axum's `/ws`: the same websocket, the handshake extracted by axum (a bad one answered
/// with its [`HandshakeError`](endless_hyper::ws::HandshakeError)'s status).
async fn ws_axum<N, W>(
    axum::extract::State(chat): axum::extract::State<Arc<Chat<N>>>,
    uri: axum::http::Uri,
    handshake: Handshake,
) -> axum::response::Response
where
    N: HttpRuntime,
    W: Websocket<N>,
{
    accept::<N, W, _>(chat, handshake, Session::from_query(uri.query()))
}

/// Answers a websocket handshake and serves the websocket once upgraded.
fn accept<N, W, B>(chat: Arc<Chat<N>>, handshake: Handshake, session: Session) -> Response<B>
where
    N: HttpRuntime,
    W: Websocket<N>,
    B: Default,
{
    let response = handshake.response();
    chat.clone().spawn(async move {
        let (stream, read) = match handshake.upgraded::<N>().await {
            Ok(parts) => parts,
            Err(UpgradeError::Failed(e)) => return tracing::debug!(error = %e, "upgrade failed"),
            // Over TLS, or not from endless' listener: nothing this example serves.
            Err(e) => return tracing::warn!(error = %e, "websocket not served"),
        };
        let ws = W::resume(stream, read).await;
        serve(chat, ws, session).await;
    });
    response
}

/// Serves one websocket: answers and broadcasts each text frame; once the drain starts,
/// hands it over at the next message boundary, or, if it stays, says goodbye before the
/// drain deadline.
async fn serve<N, W>(chat: Arc<Chat<N>>, mut ws: W, mut session: Session)
where
    N: HttpRuntime,
    W: Websocket<N>,
{
    let id = chat.next_id.fetch_add(1, Ordering::Relaxed);
    let tracker = ws.boundary().get_ref().tracker();
    let (room, mut said) = chat.join(&session.room);
    let margin = goodbye_margin(chat.drain_timeout);
    let deadline = deadline_near::<N>(&tracker, margin);
    let mut deadline = std::pin::pin!(deadline);
    // Hand it over at the next boundary; offered once per drain (again after a fallback,
    // when this process serves again and a later restart drains it anew).
    let mut moving = false;
    let mut offered = false;
    loop {
        // Outside the library's read: it has parsed every byte it was handed.
        if moving && ws.boundary().at_boundary() {
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
                // The library answers pings and the client's close itself; after a close,
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
                    if !ws.boundary().at_boundary() {
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
            () = tracker.serving(), if offered => offered = false,
            () = &mut deadline => return going_away::<N, W>(ws, margin).await,
        }
    }
}

/// Hands `ws` (at a message boundary) to the new generation with its session. Gives it
/// back, resumed here, if the new generation does not take it.
async fn hand_over<N, W>(chat: &Chat<N>, mut ws: W, session: &Session) -> Result<(), Option<W>>
where
    N: HttpRuntime,
    W: Websocket<N>,
{
    // What the library has to write (an answer, a pong) goes out first.
    if let Err(e) = ws.flush().await {
        tracing::debug!(error = %e, "websocket failed");
        return Err(None);
    }
    let (socket, unconsumed) = ws.into_parts();
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
                Some(stream) => Err(Some(W::resume(stream, unconsumed).await)),
                None => Err(None),
            }
        }
    }
}

/// Closes a websocket that stays here with 1001 (going away), and waits up to `margin`
/// for the client's close frame.
async fn going_away<N, W>(mut ws: W, margin: Duration)
where
    N: HttpRuntime,
    W: Websocket<N>,
{
    tracing::info!("websocket closed before the drain deadline (1001)");
    let close = CloseFrame {
        code: CloseCode::Away,
        reason: "server restarting".into(),
    };
    let closing = async {
        if ws.send(Message::Close(Some(close))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    tokio::select! {
        () = closing => {}
        () = N::sleep(margin) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_round_trips_and_counts_on() {
        let mut s = Session::from_query(Some("room=r1&name=alice"));
        assert_eq!((s.name.as_str(), s.room.as_str()), ("alice", "r1"));
        assert_eq!(s.answer(), format!("pid={} seen=1", std::process::id()));
        let moved = Session::resume(&s.state()).unwrap();
        assert_eq!(moved, s);
        assert_eq!(Session::resume(b"1\nx"), None);
        let d = Session::from_query(None);
        assert_eq!((d.name.as_str(), d.room.as_str()), ("anonymous", "lobby"));
        assert_eq!(
            goodbye_margin(Some(Duration::from_secs(2))),
            Duration::from_millis(500)
        );
    }
}
