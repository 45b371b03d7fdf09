//! The supervisor: the process that stays PID 1 in a container while generations come and
//! go.
//!
//! When PID 1 exits, the container ends, with every process in it. A restart by
//! re-execution makes the old generation exit. So when the server is PID 1 (or when asked),
//! the first process does not serve: it becomes a small supervisor that starts the first
//! generation and then only
//!
//! - follows which generation serves ("current"), from the notifications each generation
//!   sends it (`READY=1`, `MAINPID=`, `RELOADING=1`, `STOPPING=1`: the messages endless
//!   sends a service manager, parsed by [`Notification::parse`]);
//! - forwards the signals of the signal map ([`Supervisor::signal`]): a restart or a staged
//!   upgrade to the current generation, a commit or a rollback to the generation that
//!   started the staged upgrade, a stop or a hammer to every generation (the service
//!   stops, whichever generation drains or waits as a fallback);
//! - reaps whatever ends up as its child (as a namespace's init, or a subreaper), and once
//!   none is left, exits with the exit status of the generation that served last
//!   ([`Supervisor::exit_code`]).
//!
//! It holds no listener and runs no application code: a restart is the usual handover
//! between two generations, now both its descendants. This module decides; endless-unix
//! does the I/O (signals, the notification socket, `waitpid`).
//!
//! # Examples
//!
//! ```
//! use endless_core::supervisor::{Notification, Supervisor, Targets};
//! use endless_core::{ChildStatus, Request};
//!
//! let mut supervisor = Supervisor::new();
//! supervisor.spawned(10); // the first generation
//! supervisor.notified(10, &Notification::parse("READY=1\nSTATUS=Serving"));
//! // SIGHUP to PID 1: to the generation that serves.
//! assert_eq!(supervisor.signal(Request::Restart), Targets::Some(vec![10]));
//! supervisor.notified(10, &Notification::parse("RELOADING=1"));
//! supervisor.notified(11, &Notification::parse("MAINPID=11\nREADY=1"));
//! assert_eq!(supervisor.current(), Some(11));
//! // The old generation exits after its drain; the new one serves on.
//! supervisor.reaped(10, ChildStatus::Exited(0));
//! // SIGTERM: every generation stops; the last one's status is the supervisor's.
//! assert_eq!(supervisor.signal(Request::Stop), Targets::Some(vec![11]));
//! supervisor.reaped(11, ChildStatus::Exited(0));
//! assert_eq!(supervisor.exit_code(), 0);
//! ```

use std::collections::BTreeSet;

use crate::{ChildStatus, Pid, Request};

/// What a notification says, as far as the supervisor cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notification {
    /// `MAINPID=<pid>`: this pid serves the service now.
    pub main_pid: Option<Pid>,
    /// `READY=1`.
    pub ready: bool,
    /// `RELOADING=1`: its sender starts a restart or a staged upgrade.
    pub reloading: bool,
    /// `STOPPING=1`: the service stops.
    pub stopping: bool,
}

impl Notification {
    /// Parses the `KEY=VALUE` lines of one datagram. Unknown keys, malformed lines and a
    /// `MAINPID=` that is not a positive pid are ignored (the protocol is systemd's, which
    /// ignores what it does not know); it never fails.
    pub fn parse(message: &str) -> Self {
        let mut out = Self::default();
        for line in message.split('\n') {
            match line.split_once('=') {
                Some(("MAINPID", pid)) => {
                    out.main_pid = pid
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| pid.parse().ok())
                        .flatten()
                        .filter(|&p: &Pid| p > 0);
                }
                Some(("READY", "1")) => out.ready = true,
                Some(("RELOADING", "1")) => out.reloading = true,
                Some(("STOPPING", "1")) => out.stopping = true,
                _ => {}
            }
        }
        out
    }
}

/// Where a signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Targets {
    /// To these processes (none: no generation is known to run).
    Some(Vec<Pid>),
    /// Nowhere: the signal means nothing to the service (not in the map).
    Ignore,
}

/// The supervisor's view of the service: which generations run, which one serves.
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    /// The generation that serves: the first one, then each that claims `MAINPID=`.
    current: Option<Pid>,
    /// Every generation known to run (spawned or heard from, not reaped or gone).
    generations: BTreeSet<Pid>,
    /// The generation that sent the last `RELOADING=1`: it owns a staged upgrade, if any.
    stager: Option<Pid>,
    /// A generation said the service stops.
    stopping: bool,
    /// How the generation that served last ended, if this process reaped it.
    last_status: Option<ChildStatus>,
}

impl Supervisor {
    /// Nothing runs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The generation that serves, as far as the notifications tell.
    pub fn current(&self) -> Option<Pid> {
        self.current
    }

    /// Every generation known to run.
    pub fn generations(&self) -> impl Iterator<Item = Pid> + '_ {
        self.generations.iter().copied()
    }

    /// Whether a generation said that the service stops.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The supervisor started the first generation, `pid`: it serves from now on.
    pub fn spawned(&mut self, pid: Pid) {
        self.generations.insert(pid);
        self.current = Some(pid);
    }

    /// Generation `pid` (the kernel's word for who sent it) notified `what`. The caller
    /// drops messages from processes that are not descendants of the supervisor.
    pub fn notified(&mut self, pid: Pid, what: &Notification) {
        self.generations.insert(pid);
        if what.reloading {
            self.stager = Some(pid);
        }
        if what.ready {
            // A claim names the sender (a generation may only claim for itself here).
            if what.main_pid == Some(pid) || self.current.is_none() {
                self.current = Some(pid);
            }
        }
        if what.stopping {
            self.stopping = true;
        }
    }

    /// Where the signal that the map turns into `request` goes (`None`: not in the map).
    pub fn signal(&mut self, request: impl Into<Option<Request>>) -> Targets {
        let Some(request) = request.into() else {
            return Targets::Ignore;
        };
        match request {
            // The service stops, or closes what is left: every generation, the draining
            // ones and a fallback in probation too (a stopped service stays stopped).
            Request::Stop | Request::Hammer => {
                Targets::Some(self.generations.iter().copied().collect())
            }
            // The staged upgrade belongs to the generation that started it.
            Request::Commit | Request::Rollback => Targets::Some(
                self.stager
                    .filter(|p| self.generations.contains(p))
                    .or(self.current)
                    .into_iter()
                    .collect(),
            ),
            _ => Targets::Some(self.current.into_iter().collect()),
        }
    }

    /// The supervisor reaped `pid` (a generation, or any orphan it inherited).
    pub fn reaped(&mut self, pid: Pid, status: ChildStatus) {
        self.gone(pid);
        if self.current == Some(pid) {
            self.last_status = Some(status);
        }
    }

    /// `pid` no longer runs (reaped by someone else: its parent generation).
    pub fn gone(&mut self, pid: Pid) {
        self.generations.remove(&pid);
        if self.stager == Some(pid) {
            self.stager = None;
        }
    }

    /// The supervisor's exit code once it has no child left: that of the generation that
    /// served last, if it reaped it (a signal `n` gives `128 + n`, as a shell says), else 0.
    pub fn exit_code(&self) -> i32 {
        match self.last_status {
            Some(ChildStatus::Exited(code)) => code,
            Some(ChildStatus::Signaled(signal)) => 128 + signal,
            Some(ChildStatus::Unknown) => 1,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_leniently() {
        let n = Notification::parse("MAINPID=42\nREADY=1\nSTATUS=Serving");
        assert_eq!(
            n,
            Notification {
                main_pid: Some(42),
                ready: true,
                ..Notification::default()
            }
        );
        assert_eq!(
            Notification::parse("MAINPID=-1\nMAINPID=x"),
            Notification::default()
        );
        assert_eq!(Notification::parse("MAINPID=0").main_pid, None);
        assert_eq!(Notification::parse("MAINPID=+5").main_pid, None);
        assert_eq!(Notification::parse("MAINPID=99999999999").main_pid, None);
        assert!(Notification::parse("RELOADING=1\nMONOTONIC_USEC=5").reloading);
        assert!(Notification::parse("STOPPING=1").stopping);
        assert_eq!(
            Notification::parse("READY=0\n\n=\nREADY"),
            Notification::default()
        );
    }

    #[test]
    fn signals_go_where_they_mean_something() {
        let mut s = Supervisor::new();
        assert_eq!(s.signal(Request::Restart), Targets::Some(vec![]));
        assert_eq!(s.signal(None), Targets::Ignore);
        s.spawned(10);
        // A staged upgrade: the staged generation claims the main pid once ready, but the
        // commit goes to the one that staged it.
        s.notified(10, &Notification::parse("RELOADING=1"));
        s.notified(11, &Notification::parse("MAINPID=11\nREADY=1"));
        assert_eq!(s.current(), Some(11));
        assert_eq!(s.signal(Request::Commit), Targets::Some(vec![10]));
        assert_eq!(s.signal(Request::Rollback), Targets::Some(vec![10]));
        assert_eq!(s.signal(Request::Restart), Targets::Some(vec![11]));
        assert_eq!(s.signal(Request::Stop), Targets::Some(vec![10, 11]));
        // The stager gone, a commit goes to the current generation.
        s.reaped(10, ChildStatus::Exited(0));
        assert_eq!(s.signal(Request::Commit), Targets::Some(vec![11]));
        assert_eq!(s.signal(Request::Hammer), Targets::Some(vec![11]));
    }

    #[test]
    fn a_claim_is_only_for_the_sender_and_the_fallback_claims_back() {
        let mut s = Supervisor::new();
        s.spawned(10);
        s.notified(10, &Notification::parse("READY=1"));
        // Another process cannot make a third one current.
        s.notified(12, &Notification::parse("MAINPID=99\nREADY=1"));
        assert_eq!(s.current(), Some(10));
        s.notified(11, &Notification::parse("MAINPID=11\nREADY=1"));
        assert_eq!(s.current(), Some(11));
        // 11 dies; 10, its fallback, takes the service back.
        s.gone(11);
        s.notified(
            10,
            &Notification::parse("MAINPID=10\nREADY=1\nSTATUS=Serving again"),
        );
        assert_eq!(s.current(), Some(10));
    }

    #[test]
    fn the_exit_code_is_the_last_serving_generation_s() {
        let mut s = Supervisor::new();
        assert_eq!(s.exit_code(), 0);
        s.spawned(10);
        s.notified(10, &Notification::parse("STOPPING=1"));
        assert!(s.is_stopping());
        // An orphan's status is not the service's.
        s.reaped(50, ChildStatus::Exited(7));
        assert_eq!(s.exit_code(), 0);
        s.reaped(10, ChildStatus::Signaled(9));
        assert_eq!(s.exit_code(), 137);
        let mut s = Supervisor::new();
        s.spawned(10);
        s.reaped(10, ChildStatus::Exited(3));
        assert_eq!(s.exit_code(), 3);
        assert_eq!(s.generations().count(), 0);
    }
}
