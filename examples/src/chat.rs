//! The `chat` protocol: websockets at `/ws?name=NAME&room=ROOM`. Every text frame a client
//! sends is answered, to that client, with a text frame `pid=<pid> seen=<n>` (the pid of
//! the generation that answers, `n` the text frames this connection has sent, this one
//! included), and broadcast to the other members of the room as `<name>: <text>`. The
//! session — name, room, counter — is what a websocket carries to the next generation.

use std::time::Duration;

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
