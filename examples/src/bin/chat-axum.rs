//! The websocket chat of `chat`, routed by axum: `/ws` is an axum handler that extracts
//! `endless_hyper::ws::Handshake` where an axum application would take `WebSocketUpgrade`,
//! answers the handshake, and builds the websocket itself (tokio-tungstenite's
//! `from_raw_socket` over `endless_hyper::ws::MessageBoundary`), so that it can take it
//! apart again and hand it to the next generation. Everything else is `chat`'s
//! ([`endless_examples::chat`]): the same sessions, answers and rooms, the same moves at
//! each restart.
//!
//! ```text
//! cargo run -p endless-examples --bin chat-axum -- --listen 127.0.0.1:8080 --pid-file /tmp/chat.pid
//! websocat 'ws://127.0.0.1:8080/ws?name=alice&room=lobby'   # type lines
//! kill -HUP $(cat /tmp/chat.pid)                            # the same websocket goes on
//! ```

use endless_examples::chat::{self, Front};
use endless_examples::{Args, init_logging};

fn main() {
    init_logging();
    std::process::exit(chat::run_tokio(Args::from_env(), Front::Axum));
}
