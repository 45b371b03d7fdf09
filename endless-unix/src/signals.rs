//! Which signal asks for what.
//!
//! The core speaks of [`Request`]s; the operator speaks in signals. A [`SignalMap`] says
//! which signal means which request. Its default is endless' mapping: `SIGHUP` restarts,
//! `SIGTERM` and `SIGINT` stop gracefully, `SIGUSR2` hammers (closes what is left of a
//! drain).

use std::fmt;

use endless_core::Request;
use rustix::process::Signal as Raw;

/// A Unix signal number.
///
/// # Examples
///
/// ```
/// use endless_unix::signals::Signal;
///
/// assert_eq!(Signal::HUP.name(), Some("SIGHUP"));
/// assert_eq!(Signal::from_raw(Signal::TERM.as_raw()), Signal::TERM);
/// assert_eq!(Signal::USR2.to_string(), "SIGUSR2");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

impl Signal {
    /// `SIGHUP`: restart, by default.
    pub const HUP: Self = Self(Raw::HUP.as_raw());
    /// `SIGTERM`: graceful stop, by default.
    pub const TERM: Self = Self(Raw::TERM.as_raw());
    /// `SIGINT`: graceful stop, by default.
    pub const INT: Self = Self(Raw::INT.as_raw());
    /// `SIGQUIT`.
    pub const QUIT: Self = Self(Raw::QUIT.as_raw());
    /// `SIGUSR1`.
    pub const USR1: Self = Self(Raw::USR1.as_raw());
    /// `SIGUSR2`: hammer, by default.
    pub const USR2: Self = Self(Raw::USR2.as_raw());
    /// `SIGWINCH`.
    pub const WINCH: Self = Self(Raw::WINCH.as_raw());

    /// A signal by number.
    pub const fn from_raw(signal: i32) -> Self {
        Self(signal)
    }

    /// The signal's number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The same signal as the async-signal crate names it, if it is one of the constants
    /// above: for runtime adapters that listen with async-signal (endless-smol), and the
    /// supervisor.
    ///
    /// ```
    /// use endless_unix::signals::Signal;
    ///
    /// assert_eq!(Signal::HUP.to_async_signal(), Some(async_signal::Signal::Hup));
    /// assert_eq!(Signal::from_raw(64).to_async_signal(), None);
    /// ```
    pub fn to_async_signal(self) -> Option<async_signal::Signal> {
        use async_signal::Signal as S;
        Some(match self {
            Self::HUP => S::Hup,
            Self::TERM => S::Term,
            Self::INT => S::Int,
            Self::QUIT => S::Quit,
            Self::USR1 => S::Usr1,
            Self::USR2 => S::Usr2,
            Self::WINCH => S::Winch,
            _ => return None,
        })
    }

    /// The conventional name (`"SIGHUP"`), if it is one of the constants above.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::HUP => "SIGHUP",
            Self::TERM => "SIGTERM",
            Self::INT => "SIGINT",
            Self::QUIT => "SIGQUIT",
            Self::USR1 => "SIGUSR1",
            Self::USR2 => "SIGUSR2",
            Self::WINCH => "SIGWINCH",
            _ => return None,
        })
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// Which signal means which request.
///
/// # Examples
///
/// ```
/// use endless_core::Request;
/// use endless_unix::signals::{Signal, SignalMap};
///
/// // endless' defaults, plus SIGQUIT as a hammer, minus SIGINT.
/// let map = SignalMap::default()
///     .with(Signal::QUIT, Request::Hammer)
///     .without(Signal::INT);
/// assert_eq!(map.get(Signal::HUP), Some(Request::Restart));
/// assert_eq!(map.get(Signal::INT), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMap {
    entries: Vec<(Signal, Request)>,
}

impl Default for SignalMap {
    /// `SIGHUP` restart, `SIGTERM` and `SIGINT` stop, `SIGUSR2` hammer.
    fn default() -> Self {
        Self::empty()
            .with(Signal::HUP, Request::Restart)
            .with(Signal::TERM, Request::Stop)
            .with(Signal::INT, Request::Stop)
            .with(Signal::USR2, Request::Hammer)
    }
}

impl SignalMap {
    /// A map that listens to no signal.
    pub const fn empty() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// `signal` means `request` (replacing what it meant before).
    #[must_use]
    pub fn with(mut self, signal: Signal, request: Request) -> Self {
        self.entries.retain(|(s, _)| *s != signal);
        self.entries.push((signal, request));
        self
    }

    /// `signal` means nothing to endless (its default action applies).
    #[must_use]
    pub fn without(mut self, signal: Signal) -> Self {
        self.entries.retain(|(s, _)| *s != signal);
        self
    }

    /// Adds staged upgrades, in the manner of nginx' binary upgrade: `SIGUSR1` starts the
    /// new generation beside this one ([`Request::Stage`]), `SIGQUIT` commits (this one
    /// drains, [`Request::Commit`]), `SIGWINCH` rolls back (the new one stops,
    /// [`Request::Rollback`]). Send them to the old process. Opt-in: `SIGWINCH` also comes
    /// from a terminal that is resized, for a server in its foreground.
    #[must_use]
    pub fn with_staged_upgrades(self) -> Self {
        self.with(Signal::USR1, Request::Stage)
            .with(Signal::QUIT, Request::Commit)
            .with(Signal::WINCH, Request::Rollback)
    }

    /// What `signal` asks for.
    pub fn get(&self, signal: Signal) -> Option<Request> {
        self.entries
            .iter()
            .find(|(s, _)| *s == signal)
            .map(|(_, r)| *r)
    }

    /// The signals to listen to.
    pub fn signals(&self) -> impl Iterator<Item = Signal> + '_ {
        self.entries.iter().map(|(s, _)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_endless_defaults() {
        let map = SignalMap::default();
        assert_eq!(map.get(Signal::HUP), Some(Request::Restart));
        assert_eq!(map.get(Signal::TERM), Some(Request::Stop));
        assert_eq!(map.get(Signal::INT), Some(Request::Stop));
        assert_eq!(map.get(Signal::USR2), Some(Request::Hammer));
        assert_eq!(map.get(Signal::USR1), None);
        assert_eq!(map.signals().count(), 4);
    }

    #[test]
    fn staged_upgrades_add_three_signals_and_keep_the_defaults() {
        let map = SignalMap::default().with_staged_upgrades();
        assert_eq!(map.get(Signal::USR1), Some(Request::Stage));
        assert_eq!(map.get(Signal::QUIT), Some(Request::Commit));
        assert_eq!(map.get(Signal::WINCH), Some(Request::Rollback));
        assert_eq!(map.get(Signal::HUP), Some(Request::Restart));
        assert_eq!(map.signals().count(), 7);
    }

    #[test]
    fn with_replaces() {
        let map = SignalMap::default().with(Signal::HUP, Request::Stop);
        assert_eq!(map.get(Signal::HUP), Some(Request::Stop));
        assert_eq!(map.signals().count(), 4);
        assert_eq!(Signal::HUP.to_string(), "SIGHUP");
        assert_eq!(Signal::from_raw(64).to_string(), "signal 64");
    }
}
