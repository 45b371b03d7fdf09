//! The readiness protocol between a new generation and its parent.
//!
//! The parent creates a channel for each child (endless-unix: a Unix `SOCK_STREAM`
//! socketpair; a pipe works too) and passes the child's end as `ENDLESS_READY_FD`. When
//! the application is ready, the child writes one line, [`message`]`(own pid)`; then it
//! closes its end, or keeps it to receive the connections the parent hands over
//! ([`crate::takeover`]). The parent feeds whatever it reads to a
//! [`ReadyParser`]:
//!
//! - the complete line with the child's pid → [`Input::ChildReady`](crate::Input::ChildReady);
//! - end of file before that → [`ChildFailure::ChannelClosed`] (the child died or gave up);
//! - anything else (another pid, garbage, too many bytes) →
//!   [`ChildFailure::BadMessage`].
//!
//! # Examples
//!
//! ```
//! use endless_core::ready::{self, ReadyParser, Readiness};
//!
//! let mut parser = ReadyParser::new(4242);
//! let line = ready::message(4242);
//! assert_eq!(parser.feed(&line[..5]), Readiness::Pending);
//! assert_eq!(parser.feed(&line[5..]), Readiness::Ready);
//!
//! let mut parser = ReadyParser::new(4242);
//! assert!(matches!(parser.feed(b"endless/1 ready 17\n"), Readiness::Failed(_)));
//! ```

use crate::{ChildFailure, Pid};

/// What every readiness line starts with; the number is the protocol version.
pub const PREFIX: &str = "endless/1 ready ";

/// The longest readiness line, newline included.
pub const MAX_MESSAGE_LEN: usize = PREFIX.len() + 10 + 1;

/// The line a child with this pid writes when it is ready.
pub fn message(pid: Pid) -> Vec<u8> {
    format!("{PREFIX}{pid}\n").into_bytes()
}

/// Where a child's readiness stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Not all of the line has arrived yet.
    Pending,
    /// The child reported ready.
    Ready,
    /// The child broke the protocol; give up on it.
    Failed(ChildFailure),
}

/// Reads the readiness line of one child, whatever the chunks it arrives in.
#[derive(Debug, Clone)]
pub struct ReadyParser {
    expected: Vec<u8>,
    received: Vec<u8>,
    done: Option<Readiness>,
}

impl ReadyParser {
    /// A parser for the child with this pid.
    pub fn new(pid: Pid) -> Self {
        Self {
            expected: message(pid),
            received: Vec::with_capacity(MAX_MESSAGE_LEN),
            done: None,
        }
    }

    /// Takes the next bytes read from the channel. Once the result is not
    /// [`Readiness::Pending`] it stays the same whatever is fed after (bytes after the
    /// line are not part of it: see [`feed_line`](Self::feed_line)).
    pub fn feed(&mut self, bytes: &[u8]) -> Readiness {
        self.feed_line(bytes).0
    }

    /// Takes the next bytes read from the channel, as [`feed`](Self::feed), and says how
    /// many of them belong to the readiness line: once it is [`Readiness::Ready`], the
    /// bytes after those are the child's next messages ([`crate::takeover::Deframer`]),
    /// which a stream transport may deliver in the same read as the end of the line.
    ///
    /// ```
    /// use endless_core::ready::{self, ReadyParser, Readiness};
    ///
    /// let mut stream = ready::message(4242);
    /// stream.extend_from_slice(b"EDLS");
    /// let mut parser = ReadyParser::new(4242);
    /// assert_eq!(parser.feed_line(&stream), (Readiness::Ready, stream.len() - 4));
    /// ```
    pub fn feed_line(&mut self, bytes: &[u8]) -> (Readiness, usize) {
        if let Some(done) = &self.done {
            return (done.clone(), 0);
        }
        for (taken, &byte) in bytes.iter().enumerate() {
            let at = self.received.len();
            if self.expected.get(at) != Some(&byte) {
                self.received.push(byte);
                let failed = self.finish(Readiness::Failed(ChildFailure::BadMessage(format!(
                    "expected {:?}, received {:?}",
                    String::from_utf8_lossy(&self.expected),
                    String::from_utf8_lossy(&self.received),
                ))));
                return (failed, taken + 1);
            }
            self.received.push(byte);
            if self.received.len() == self.expected.len() {
                return (self.finish(Readiness::Ready), taken + 1);
            }
        }
        (Readiness::Pending, bytes.len())
    }

    /// The channel reached end of file.
    pub fn eof(&mut self) -> Readiness {
        match &self.done {
            Some(done) => done.clone(),
            None => self.finish(Readiness::Failed(ChildFailure::ChannelClosed)),
        }
    }

    fn finish(&mut self, result: Readiness) -> Readiness {
        self.done = Some(result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_fits_the_limit() {
        assert_eq!(message(Pid::MAX).len(), MAX_MESSAGE_LEN);
        assert_eq!(message(7), b"endless/1 ready 7\n");
    }

    #[test]
    fn ready_byte_by_byte() {
        let mut p = ReadyParser::new(123);
        let line = message(123);
        for (i, b) in line.iter().enumerate() {
            let r = p.feed(std::slice::from_ref(b));
            if i + 1 < line.len() {
                assert_eq!(r, Readiness::Pending);
            } else {
                assert_eq!(r, Readiness::Ready);
            }
        }
        assert_eq!(p.eof(), Readiness::Ready);
        assert_eq!(p.feed(b"junk"), Readiness::Ready);
    }

    #[test]
    fn another_pid_or_garbage_fails() {
        for bad in [
            &b"endless/1 ready 1234\n"[..],
            b"endless/1 ready 12\n",
            b"endless/2 ready 123\n",
            b"\0",
            b"endless/1 ready 123 \n",
        ] {
            let mut p = ReadyParser::new(123);
            assert!(
                matches!(p.feed(bad), Readiness::Failed(ChildFailure::BadMessage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn feed_line_counts_the_bytes_of_the_line() {
        let line = message(123);
        let mut stream = line.clone();
        stream.extend_from_slice(b"next");
        let mut p = ReadyParser::new(123);
        assert_eq!(p.feed_line(&stream[..4]), (Readiness::Pending, 4));
        assert_eq!(
            p.feed_line(&stream[4..]),
            (Readiness::Ready, line.len() - 4)
        );
        assert_eq!(p.feed_line(b"more"), (Readiness::Ready, 0));
        let mut p = ReadyParser::new(123);
        let (failed, taken) = p.feed_line(b"endless/1 ready 9\nrest");
        assert!(matches!(failed, Readiness::Failed(_)));
        assert_eq!(taken, "endless/1 ready ".len() + 1);
    }

    #[test]
    fn eof_before_the_line_fails() {
        let mut p = ReadyParser::new(123);
        assert_eq!(p.feed(b"endless/1 re"), Readiness::Pending);
        assert_eq!(p.eof(), Readiness::Failed(ChildFailure::ChannelClosed));
        assert_eq!(
            p.feed(b"ady 123\n"),
            Readiness::Failed(ChildFailure::ChannelClosed)
        );
    }
}
