//! A websocket chat whose websockets survive every deploy: endless-hyper's `Server` on
//! tokio, hyper's upgrade, tokio-tungstenite over `endless_hyper::ws::MessageBoundary`.
//!
//! Clients connect to `/ws?name=NAME&room=ROOM`; every text frame is answered to its
//! sender with `pid=<pid> seen=<n>` and broadcast to the rest of the room (the server is
//! [`endless_examples::chat`], which `chat-smol` and `chat-async-std` run too). On a
//! restart, each websocket, at its next message boundary (never in the middle of a
//! fragmented message), flushes what it has to write and is handed to the new generation
//! with its session (name, room, counter) and the bytes read past the boundary; the new
//! generation resumes it without a handshake and the room goes on there. The client sees
//! no close frame and no reconnect; only the pid changes.
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

use endless_examples::chat::{self, Front};
use endless_examples::{Args, init_logging};

fn main() {
    init_logging();
    std::process::exit(chat::run_tokio(Args::from_env(), Front::Hyper));
}
