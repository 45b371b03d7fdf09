//! The `pingpong` protocol, shared by the tokio, smol and async-std servers: each line `L`
//! is answered with `<pid> <count> <L>`, `count` being the connection's session counter
//! (the lines it sent so far, this one included). The session — the counter and a line
//! read only in part — is what a connection carries to the next generation.

use std::time::Duration;

/// The receiver name every generation registers, and hands connections over under.
pub const RECEIVER: &str = "pingpong";

/// One connection's session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Lines answered so far.
    pub count: u64,
    /// Bytes received and not answered yet (a line read in part).
    pub pending: Vec<u8>,
}

impl Session {
    /// A session handed over with this state and these unconsumed bytes (an unreadable
    /// state starts the counter again).
    pub fn resume(state: &[u8], unconsumed: Vec<u8>) -> Self {
        let count = std::str::from_utf8(state)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self {
            count,
            pending: unconsumed,
        }
    }

    /// The state to hand over with the connection.
    pub fn state(&self) -> Vec<u8> {
        self.count.to_string().into_bytes()
    }

    /// Takes `bytes` received; returns the answers to every line now complete.
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let pid = std::process::id();
        let mut out = String::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            self.count += 1;
            out.push_str(&format!(
                "{pid} {} {}\n",
                self.count,
                line.trim_end_matches('\r')
            ));
        }
        out
    }
}

/// `PINGPONG_TAKE_DELAY_MS`: how long a new generation waits before it takes each
/// connection (to slow a takeover down for tests and demonstrations).
pub fn take_delay() -> Option<Duration> {
    std::env::var("PINGPONG_TAKE_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_complete_lines_and_keeps_the_rest() {
        let mut s = Session::default();
        assert_eq!(s.feed(b"a\r\nb"), format!("{} 1 a\n", std::process::id()));
        assert_eq!(s.pending, b"b");
        let moved = Session::resume(&s.state(), s.pending.clone());
        assert_eq!(moved, s);
        let mut s = moved;
        assert_eq!(s.feed(b"c\n"), format!("{} 2 bc\n", std::process::id()));
        assert_eq!(Session::resume(b"garbage", vec![]).count, 0);
    }
}
