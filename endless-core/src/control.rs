//! The restart command: its wire format, and the answer a restart request gets.
//!
//! A deploy script asks a running server to restart and wants the outcome of *its*
//! request: the new generation serves, or why not. The server keeps a control socket (a
//! Unix stream socket each generation inherits like any listener); the command connects,
//! sends a request ([`REQUEST`] or [`REQUEST_PROVEN`]) and reads one answer line. What the
//! answer says is decided here, as a projection of the lifecycle's outputs ([`Answers`]):
//! the request is handed to the [`Lifecycle`](crate::Lifecycle) like any other, and the
//! events and actions that follow it say how it ended. Nothing else keeps lifecycle state
//! for the command.
//!
//! # The lines
//!
//! ```text
//! endless-control/1 restart                                        (a request)
//! endless-control/1 restart proven                                 (a request, until proven)
//! endless-control/1 ready pid=4242 new=4250
//! endless-control/1 failed pid=4242 kind=exited child=4250 status=exited:3 -- the new process exited with code 3 before it was ready
//! endless-control/1 refused pid=4242 reason=in-progress -- a restart is already in progress
//! endless-control/1 moved pid=4242 to=4250
//! endless-control/1 fell-back pid=4242 new=4250 status=exited:1 -- the new process exited with code 1 after it took over; this process serves again
//! ```
//!
//! `pid` is the process that answers. `moved` says that it handed over to `to` before it
//! took the request (it drains, or is only the fallback of `to`): the command asks `to`,
//! which accepts on the same socket. `child` and
//! `status` are `-` when unknown (`fell-back` always has a status). Each line ends with
//! `\n` and is at most [`MAX_LINE`] bytes; decoding is strict and never panics.
//!
//! # Until proven
//!
//! `restart` is answered `ready` at the handover. A generation that handed over is still
//! the *fallback* of the new one for a while (its drain, then [`Config::probation`]): a
//! new binary that dies soon after it took over gives the service back to the old one
//! ([`Event::TookServiceBack`]). `restart proven` ([`RequestKind::UntilProven`]) waits
//! for that too: it is answered `ready` only once the old generation is no longer the
//! fallback without having fallen back (the new generation departed, or exited cleanly,
//! or the probation ended), and `fell-back` if the old generation took the service back
//! (then the old one serves again, and the pid file names it). Failures before the
//! handover, refusals and `moved` are answered as for `restart`. A server older than this
//! request refuses it as malformed (`refused reason=other`).
//!
//! [`Config::probation`]: crate::Config::probation
//!
//! # Examples
//!
//! ```
//! use endless_core::control::{self, Answer, RequestKind};
//!
//! let line = control::encode_answer(4242, &Answer::Ready { new: 4250 });
//! assert_eq!(line, b"endless-control/1 ready pid=4242 new=4250\n");
//! assert_eq!(control::decode_answer(&line), Ok((4242, Answer::Ready { new: 4250 })));
//! assert_eq!(control::decode_request(control::REQUEST), Ok(RequestKind::Restart));
//! assert_eq!(
//!     control::decode_request(control::REQUEST_PROVEN),
//!     Ok(RequestKind::UntilProven)
//! );
//! ```

use std::fmt;

use crate::{
    Action, ChildFailure, ChildStatus, Event, InputKind, Output, Phase, Pid, Refusal,
    UpgradeFailure,
};

/// What every line starts with; the number is the protocol version.
pub const PREFIX: &str = "endless-control/1 ";

/// The restart request, answered at the handover ([`RequestKind::Restart`]).
pub const REQUEST: &[u8] = b"endless-control/1 restart\n";

/// The restart request answered once the new generation is proven: once the old one is no
/// longer its fallback ([`RequestKind::UntilProven`]).
pub const REQUEST_PROVEN: &[u8] = b"endless-control/1 restart proven\n";

/// Which restart request a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// [`REQUEST`]: answered [`Answer::Ready`] at the handover.
    Restart,
    /// [`REQUEST_PROVEN`]: answered [`Answer::Ready`] once the old generation is no longer
    /// the fallback of the new one without having fallen back, or [`Answer::FellBack`].
    UntilProven,
}

impl RequestKind {
    /// Its line on the wire: [`REQUEST`] or [`REQUEST_PROVEN`].
    pub fn line(self) -> &'static [u8] {
        match self {
            Self::Restart => REQUEST,
            Self::UntilProven => REQUEST_PROVEN,
        }
    }
}

/// The longest line either side sends, newline included.
pub const MAX_LINE: usize = 4096;

/// How a restart request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// The new generation is ready, and the one that answers has stopped accepting.
    Ready {
        /// The new generation.
        new: Pid,
    },
    /// The attempt failed; the process that answers keeps serving (or stops, when a stop
    /// cancelled it).
    Failed {
        /// How.
        kind: FailureKind,
        /// The new process, if one was spawned.
        child: Option<Pid>,
        /// How it ended, once reaped.
        status: Option<ChildStatus>,
        /// The lifecycle's words for it.
        message: String,
    },
    /// The request was refused; nothing changed.
    Refused {
        /// Why.
        reason: RefusalKind,
        /// The lifecycle's words for it.
        message: String,
    },
    /// The process handed over to `to` before it took the request: ask `to`.
    Moved {
        /// The generation that serves now.
        to: Pid,
    },
    /// Only to [`RequestKind::UntilProven`]: the new generation took over, then ended
    /// abnormally while the one that answers was still its fallback, and the one that
    /// answers took the service back: it serves again (and the pid file names it).
    FellBack {
        /// The new generation, which ended.
        new: Pid,
        /// How it ended.
        status: ChildStatus,
        /// The lifecycle's words for it.
        message: String,
    },
}

macro_rules! words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name { $($(#[$vdoc])* $variant),* }

        impl $name {
            /// Its word on the wire.
            pub fn word(self) -> &'static str {
                match self { $(Self::$variant => $word),* }
            }

            /// The kind a word names.
            pub fn from_word(word: &str) -> Option<Self> {
                match word { $($word => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

words!(
    /// How an attempt failed.
    FailureKind {
        /// The new process exited before it was ready.
        Exited = "exited",
        /// Its readiness channel closed before it was ready.
        ClosedChannel = "closed-channel",
        /// It broke the readiness protocol.
        BadMessage = "bad-message",
        /// It was not ready within the upgrade timeout and was killed.
        TimedOut = "timed-out",
        /// It could not be started.
        SpawnFailed = "spawn-failed",
        /// A stop request cancelled the attempt.
        Cancelled = "cancelled",
        /// Anything else.
        Other = "other",
    }
);

words!(
    /// Why a request was refused.
    RefusalKind {
        /// A restart is already in progress.
        InProgress = "in-progress",
        /// The application has not reported ready yet.
        NotReady = "not-ready",
        /// The process drains (it stops).
        Draining = "draining",
        /// The process has stopped.
        Stopped = "stopped",
        /// The peer may not ask (another user).
        Permission = "permission",
        /// Anything else.
        Other = "other",
    }
);

impl From<&UpgradeFailure> for FailureKind {
    fn from(failure: &UpgradeFailure) -> Self {
        match failure {
            UpgradeFailure::ChildExited(_) => Self::Exited,
            UpgradeFailure::ChildFailed(ChildFailure::ChannelClosed) => Self::ClosedChannel,
            UpgradeFailure::ChildFailed(_) => Self::BadMessage,
            UpgradeFailure::TimedOut => Self::TimedOut,
            UpgradeFailure::SpawnFailed(_) => Self::SpawnFailed,
            UpgradeFailure::Cancelled => Self::Cancelled,
            UpgradeFailure::RolledBack => Self::Other,
        }
    }
}

impl From<Refusal> for RefusalKind {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UpgradeInProgress => Self::InProgress,
            Refusal::NotReady => Self::NotReady,
            Refusal::Draining => Self::Draining,
            Refusal::Stopped => Self::Stopped,
            _ => Self::Other,
        }
    }
}

/// Why a control line could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// Longer than [`MAX_LINE`], or no newline at its end.
    NotALine,
    /// It does not start with [`PREFIX`] (another protocol or version).
    Version,
    /// The words after the prefix are not a request or an answer of this version.
    Malformed(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotALine => write!(f, "not one line of at most {MAX_LINE} bytes"),
            Self::Version => write!(f, "not a line of the endless control protocol, version 1"),
            Self::Malformed(what) => write!(f, "malformed control line: {what}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The answer line `pid` sends.
pub fn encode_answer(pid: Pid, answer: &Answer) -> Vec<u8> {
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let line = match answer {
        Answer::Ready { new } => format!("ready pid={pid} new={new}"),
        Answer::Moved { to } => format!("moved pid={pid} to={to}"),
        Answer::Failed {
            kind,
            child,
            status,
            message,
        } => format!(
            "failed pid={pid} kind={} child={} status={} -- {}",
            kind.word(),
            optional(child.map(|c| c.to_string())),
            optional(status.map(encode_status)),
            one_line(message)
        ),
        Answer::Refused { reason, message } => format!(
            "refused pid={pid} reason={} -- {}",
            reason.word(),
            one_line(message)
        ),
        Answer::FellBack {
            new,
            status,
            message,
        } => format!(
            "fell-back pid={pid} new={new} status={} -- {}",
            encode_status(*status),
            one_line(message)
        ),
    };
    let mut line = format!("{PREFIX}{line}");
    // A message never makes a line too long for the other side.
    if line.len() >= MAX_LINE {
        let mut end = MAX_LINE - 1;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line.push('\n');
    line.into_bytes()
}

/// Decodes an answer line (newline included): the pid that answers, and its answer.
pub fn decode_answer(line: &[u8]) -> Result<(Pid, Answer), ControlError> {
    let words = words_of(line)?;
    let malformed = || ControlError::Malformed(words.to_owned());
    let (head, message) = match words.split_once(" -- ") {
        Some((head, message)) => (head, Some(message.to_owned())),
        None => (words, None),
    };
    let mut fields = head.split(' ');
    let verb = fields.next().ok_or_else(malformed)?;
    let mut field = |key: &str| -> Result<&str, ControlError> {
        fields
            .next()
            .and_then(|f| f.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(malformed)
    };
    let pid = parse_pid(field("pid")?).ok_or_else(malformed)?;
    let answer = match (verb, message) {
        ("ready", None) => Answer::Ready {
            new: parse_pid(field("new")?).ok_or_else(malformed)?,
        },
        ("moved", None) => Answer::Moved {
            to: parse_pid(field("to")?).ok_or_else(malformed)?,
        },
        ("failed", Some(message)) => {
            let kind = FailureKind::from_word(field("kind")?).ok_or_else(malformed)?;
            let child = match field("child")? {
                "-" => None,
                pid => Some(parse_pid(pid).ok_or_else(malformed)?),
            };
            let status = match field("status")? {
                "-" => None,
                status => Some(decode_status(status).ok_or_else(malformed)?),
            };
            Answer::Failed {
                kind,
                child,
                status,
                message,
            }
        }
        ("refused", Some(message)) => Answer::Refused {
            reason: RefusalKind::from_word(field("reason")?).ok_or_else(malformed)?,
            message,
        },
        ("fell-back", Some(message)) => Answer::FellBack {
            new: parse_pid(field("new")?).ok_or_else(malformed)?,
            status: decode_status(field("status")?).ok_or_else(malformed)?,
            message,
        },
        _ => return Err(malformed()),
    };
    if fields.next().is_some() {
        return Err(malformed());
    }
    Ok((pid, answer))
}

/// Decodes a request line (newline included): [`REQUEST`] or [`REQUEST_PROVEN`].
pub fn decode_request(line: &[u8]) -> Result<RequestKind, ControlError> {
    match words_of(line)? {
        "restart" => Ok(RequestKind::Restart),
        "restart proven" => Ok(RequestKind::UntilProven),
        other => Err(ControlError::Malformed(other.to_owned())),
    }
}

/// The words of a line after the prefix.
fn words_of(line: &[u8]) -> Result<&str, ControlError> {
    if line.len() > MAX_LINE {
        return Err(ControlError::NotALine);
    }
    let line = line.strip_suffix(b"\n").ok_or(ControlError::NotALine)?;
    if line.contains(&b'\n') {
        return Err(ControlError::NotALine);
    }
    let line = std::str::from_utf8(line).map_err(|_| ControlError::Version)?;
    let words = line.strip_prefix(PREFIX).ok_or(ControlError::Version)?;
    if words.chars().any(char::is_control) {
        return Err(ControlError::Malformed(words.escape_debug().to_string()));
    }
    Ok(words)
}

fn parse_pid(text: &str) -> Option<Pid> {
    // Digits only: no sign, no spaces.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&pid| pid > 0)
}

fn encode_status(status: ChildStatus) -> String {
    match status {
        ChildStatus::Exited(code) => format!("exited:{code}"),
        ChildStatus::Signaled(signal) => format!("signal:{signal}"),
        ChildStatus::Unknown => "unknown".to_owned(),
    }
}

fn decode_status(text: &str) -> Option<ChildStatus> {
    if text == "unknown" {
        return Some(ChildStatus::Unknown);
    }
    let (kind, number) = text.split_once(':')?;
    let number = number.parse().ok()?;
    match kind {
        "exited" => Some(ChildStatus::Exited(number)),
        "signal" => Some(ChildStatus::Signaled(number)),
        _ => None,
    }
}

/// `text` on one line, without control characters.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The answers to restart requests, projected from the lifecycle's outputs.
///
/// `T` is whatever the adapter needs to deliver an answer (a reply channel). Call
/// [`ask`](Self::ask) (or [`ask_until_proven`](Self::ask_until_proven)) right before
/// handing the request to the lifecycle (`Input::Request(Request::Restart)`), then
/// [`observe`](Self::observe) every output the lifecycle emits, in order, from then on
/// (those of every later input too): each returns the answers it completes. A request is
/// answered
///
/// - at once if the lifecycle refuses it ([`Answer::Moved`] when this process already
///   handed over);
/// - [`Answer::Failed`] when the attempt fails, once a child that had to be killed is
///   reaped (its exit status tells a crash from a kill);
/// - [`Answer::Ready`] when this process stops accepting for the child it started;
///   until proven, only once this process is no longer the child's fallback without
///   having fallen back: the child departed ([`Event::SuccessorDeparted`]), exited cleanly
///   ([`Event::SuccessorExited`]), or the lifecycle ends ([`Action::Exit`]: the probation
///   is over, or a stop ended it);
/// - until proven, [`Answer::FellBack`] when this process took the service back
///   ([`Event::TookServiceBack`]), once it serves again: at the
///   [`Action::Announce`] of [`Status::Ready`] that follows, so that an adapter that
///   answers after carrying out that action has written the pid file first.
///
/// Requests that started no attempt of their own are never answered with another's
/// outcome: a request taken while an attempt runs is refused (in progress).
///
/// [`Status::Ready`]: crate::Status::Ready
#[derive(Debug)]
pub struct Answers<T> {
    /// The request being handed in, until the lifecycle takes or refuses it.
    asking: Option<(T, RequestKind)>,
    /// The attempt under way.
    attempt: Option<Attempt<T>>,
    /// Whom this process handed over to, until it takes the service back.
    successor: Option<Pid>,
    /// The until-proven requests of the attempt that handed over, while this process is
    /// the fallback of the new generation.
    proving: Option<Proving<T>>,
}

#[derive(Debug)]
struct Attempt<T> {
    waiters: Vec<(T, RequestKind)>,
    child: Option<Pid>,
    ready: Option<Pid>,
    /// Failed; the answer waits for the killed child's exit.
    failed: Option<(FailureKind, String)>,
}

#[derive(Debug)]
struct Proving<T> {
    waiters: Vec<T>,
    /// The new generation.
    new: Pid,
    /// It died and this process took the service back; the answer waits until this
    /// process serves again.
    fell_back: Option<ChildStatus>,
}

impl<T> Proving<T> {
    /// The answer its waiters get now.
    fn answer(self) -> Vec<(T, Answer)> {
        let answer = match self.fell_back {
            Some(status) => Answer::FellBack {
                new: self.new,
                status,
                message: format!(
                    "the new process {status} after it took over; this process serves again"
                ),
            },
            None => Answer::Ready { new: self.new },
        };
        answer_all(self.waiters, &answer)
    }
}

impl<T> Default for Answers<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Answers<T> {
    /// No request, no attempt.
    pub const fn new() -> Self {
        Self {
            asking: None,
            attempt: None,
            successor: None,
            proving: None,
        }
    }

    /// A restart request ([`RequestKind::Restart`]) is about to be handed in; `token` is
    /// answered later.
    pub fn ask(&mut self, token: T) {
        self.asking = Some((token, RequestKind::Restart));
    }

    /// A restart request until proven ([`RequestKind::UntilProven`]) is about to be handed
    /// in; `token` is answered later, [`Answer::Ready`] only once the new generation is
    /// proven (see [`Answers`]).
    pub fn ask_until_proven(&mut self, token: T) {
        self.asking = Some((token, RequestKind::UntilProven));
    }

    /// The request handed in last, if the lifecycle neither took nor refused it (it always
    /// does one or the other): give it back to answer it otherwise.
    pub fn unasked(&mut self) -> Option<T> {
        self.asking.take().map(|(token, _)| token)
    }

    /// How many requests wait for their answer: for the attempt under way, or, until
    /// proven, for the end of this process's time as the new generation's fallback.
    pub fn waiting(&self) -> usize {
        self.attempt.as_ref().map_or(0, |a| a.waiters.len())
            + self.proving.as_ref().map_or(0, |p| p.waiters.len())
    }

    /// Observes one output of the lifecycle; returns the answers it completes.
    pub fn observe(&mut self, output: &Output) -> Vec<(T, Answer)> {
        match output {
            Output::Event(Event::Refused {
                input: InputKind::Restart,
                reason,
            }) => self
                .asking
                .take()
                .map(|(token, _)| {
                    let answer = match (reason, self.successor) {
                        // Handed over (draining, only the fallback now, or ended): ask
                        // the successor, which answers on the same socket.
                        (Refusal::Draining | Refusal::HandedOver | Refusal::Stopped, Some(to)) => {
                            Answer::Moved { to }
                        }
                        _ => Answer::Refused {
                            reason: RefusalKind::from(*reason),
                            message: reason.to_string(),
                        },
                    };
                    vec![(token, answer)]
                })
                .unwrap_or_default(),
            Output::Event(Event::StateChanged {
                to: Phase::Forking, ..
            }) => {
                // A failure still waiting for its killed child's exit is told without it.
                let mut earlier = self.attempt.take().map(finish).unwrap_or_default();
                // (None can wait here: a restart is refused while this process is a
                // fallback, and taking the service back answers them.)
                earlier.extend(self.proving.take().map(Proving::answer).unwrap_or_default());
                self.attempt = Some(Attempt {
                    waiters: self.asking.take().into_iter().collect(),
                    child: None,
                    ready: None,
                    failed: None,
                });
                earlier
            }
            Output::Event(Event::ChildSpawned { pid }) => {
                if let Some(attempt) = &mut self.attempt {
                    attempt.child = Some(*pid);
                }
                Vec::new()
            }
            Output::Event(Event::ChildReady { pid }) => {
                if let Some(attempt) = &mut self.attempt {
                    attempt.ready = Some(*pid);
                }
                Vec::new()
            }
            Output::Action(Action::StopAccepting) => {
                let Some(attempt) = self.attempt.take_if(|a| a.ready.is_some()) else {
                    return Vec::new();
                };
                let new = attempt.ready.unwrap_or_default();
                self.successor = Some(new);
                let (proven, ready): (Vec<_>, Vec<_>) = attempt
                    .waiters
                    .into_iter()
                    .partition(|(_, kind)| *kind == RequestKind::UntilProven);
                if !proven.is_empty() {
                    self.proving = Some(Proving {
                        waiters: tokens(proven),
                        new,
                        fell_back: None,
                    });
                }
                answer_all(tokens(ready), &Answer::Ready { new })
            }
            // The new generation no longer needs this process as its fallback: proven.
            Output::Event(
                Event::SuccessorDeparted { pid, .. } | Event::SuccessorExited { pid, .. },
            ) => self
                .proving
                .take_if(|p| p.new == *pid && p.fell_back.is_none())
                .map(Proving::answer)
                .unwrap_or_default(),
            Output::Event(Event::TookServiceBack { pid, status }) => {
                if self.successor == Some(*pid) {
                    self.successor = None;
                }
                if let Some(proving) = &mut self.proving
                    && proving.new == *pid
                {
                    proving.fell_back = Some(*status);
                }
                Vec::new()
            }
            // Serving again after the fallback (the pid file names this process again).
            Output::Action(Action::Announce(crate::Status::Ready { .. })) => self
                .proving
                .take_if(|p| p.fell_back.is_some())
                .map(Proving::answer)
                .unwrap_or_default(),
            Output::Event(Event::UpgradeFailed { pid, reason }) => {
                let Some(mut attempt) = self.attempt.take() else {
                    return Vec::new();
                };
                let kind = FailureKind::from(reason);
                let message = reason.to_string();
                attempt.child = attempt.child.or(*pid);
                match (reason, attempt.child) {
                    // It exited by itself, or never ran: the answer is complete.
                    (UpgradeFailure::ChildExited(status), child) => answer_all(
                        tokens(attempt.waiters),
                        &Answer::Failed {
                            kind,
                            child,
                            status: Some(*status),
                            message,
                        },
                    ),
                    (_, None) => answer_all(
                        tokens(attempt.waiters),
                        &Answer::Failed {
                            kind,
                            child: None,
                            status: None,
                            message,
                        },
                    ),
                    // Killed or stopped: how it ended tells a crash from a kill.
                    (_, Some(_)) => {
                        attempt.failed = Some((kind, message));
                        self.attempt = Some(attempt);
                        Vec::new()
                    }
                }
            }
            Output::Event(
                Event::KilledChildExited { pid, status }
                | Event::StoppedChildExited { pid, status },
            ) => {
                let Some(attempt) = self
                    .attempt
                    .take_if(|a| a.failed.is_some() && a.child == Some(*pid))
                else {
                    return Vec::new();
                };
                let (kind, message) = attempt
                    .failed
                    .unwrap_or((FailureKind::Other, String::new()));
                answer_all(
                    tokens(attempt.waiters),
                    &Answer::Failed {
                        kind,
                        child: Some(*pid),
                        status: Some(*status),
                        message,
                    },
                )
            }
            // The end: a failure still waiting for its child's exit is told without it,
            // and a new generation this process was still the fallback of is proven (the
            // probation is over, or a stop ended it).
            Output::Action(Action::Exit { .. }) => {
                let mut answers = self.attempt.take().map(finish).unwrap_or_default();
                answers.extend(self.proving.take().map(Proving::answer).unwrap_or_default());
                answers
            }
            _ => Vec::new(),
        }
    }
}

/// The answers an attempt that is given up on still owes: its failure, without the exit
/// status it waited for. (An attempt that has not failed owes nothing yet: it cannot be
/// given up on while it runs.)
fn finish<T>(attempt: Attempt<T>) -> Vec<(T, Answer)> {
    match attempt.failed {
        Some((kind, message)) => answer_all(
            tokens(attempt.waiters),
            &Answer::Failed {
                kind,
                child: attempt.child,
                status: None,
                message,
            },
        ),
        None => Vec::new(),
    }
}

/// The tokens of `waiters`, whatever they asked.
fn tokens<T>(waiters: Vec<(T, RequestKind)>) -> Vec<T> {
    waiters.into_iter().map(|(token, _)| token).collect()
}

fn answer_all<T>(waiters: Vec<T>, answer: &Answer) -> Vec<(T, Answer)> {
    waiters.into_iter().map(|t| (t, answer.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Input, Lifecycle, Origin, Request};
    use std::time::{Duration, Instant};

    /// A ready lifecycle and its answers, driven with a fake clock.
    struct Rig {
        lc: Lifecycle,
        answers: Answers<u32>,
        now: Instant,
        told: Vec<(u32, Answer)>,
        /// The output that completed each answer in `told`, in order.
        told_at: Vec<Output>,
    }

    impl Rig {
        fn new() -> Self {
            Self::with(Config::new().upgrade_timeout(Duration::from_secs(5)))
        }

        fn with(config: Config) -> Self {
            let mut lc = Lifecycle::new(config, Origin::Fresh);
            let now = Instant::now();
            lc.handle(Input::Ready, now);
            let mut rig = Self {
                lc,
                answers: Answers::new(),
                now,
                told: Vec::new(),
                told_at: Vec::new(),
            };
            rig.drain();
            rig
        }

        fn drain(&mut self) {
            while let Some(output) = self.lc.poll_output() {
                let answers = self.answers.observe(&output);
                self.told_at
                    .extend(std::iter::repeat_n(output, answers.len()));
                self.told.extend(answers);
            }
        }

        fn ask(&mut self, token: u32) {
            self.answers.ask(token);
            self.input(Input::Request(Request::Restart));
            assert!(
                self.answers.unasked().is_none(),
                "the request left no trace"
            );
        }

        fn ask_until_proven(&mut self, token: u32) {
            self.answers.ask_until_proven(token);
            self.input(Input::Request(Request::Restart));
            assert!(
                self.answers.unasked().is_none(),
                "the request left no trace"
            );
        }

        fn input(&mut self, input: Input) {
            self.lc.handle(input, self.now);
            self.drain();
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.lc.handle_timeout(self.now);
            self.drain();
        }

        fn told(&mut self) -> Vec<(u32, Answer)> {
            self.told_at.clear();
            std::mem::take(&mut self.told)
        }

        /// A restart until proven whose child `pid` is ready: the handover is done.
        fn handed_over_until_proven(&mut self, token: u32, pid: Pid) {
            self.ask_until_proven(token);
            self.input(Input::ChildSpawned { pid });
            self.input(Input::ChildReady { pid });
            assert_eq!(self.lc.phase(), Phase::Draining);
            assert!(self.told().is_empty(), "answered at the handover");
            assert_eq!(self.answers.waiting(), 1);
        }
    }

    #[test]
    fn a_request_is_answered_ready_when_this_process_stops_accepting() {
        let mut r = Rig::new();
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 50 });
        // A second request while the attempt runs is refused at once, alone.
        r.ask(2);
        assert_eq!(
            r.told(),
            [(
                2,
                Answer::Refused {
                    reason: RefusalKind::InProgress,
                    message: "a restart is already in progress".into()
                }
            )]
        );
        assert_eq!(r.answers.waiting(), 1);
        r.input(Input::ChildReady { pid: 50 });
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);
        // Asked again after the handover: the successor is named.
        r.ask(3);
        assert_eq!(r.told(), [(3, Answer::Moved { to: 50 })]);
    }

    #[test]
    fn a_crash_is_answered_with_its_status_whichever_news_comes_first() {
        // The exit first.
        let mut r = Rig::new();
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 50 });
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Exited(3),
        });
        assert!(matches!(
            &r.told()[..],
            [(
                1,
                Answer::Failed {
                    kind: FailureKind::Exited,
                    child: Some(50),
                    status: Some(ChildStatus::Exited(3)),
                    ..
                }
            )]
        ));
        // The channel's end first: the child is killed, and its real status is told.
        r.ask(2);
        r.input(Input::ChildSpawned { pid: 51 });
        r.input(Input::ChildFailed {
            pid: 51,
            reason: ChildFailure::ChannelClosed,
        });
        assert!(r.told().is_empty(), "waits for the killed child's exit");
        r.input(Input::ChildExited {
            pid: 51,
            status: ChildStatus::Exited(3),
        });
        assert!(matches!(
            &r.told()[..],
            [(
                2,
                Answer::Failed {
                    kind: FailureKind::ClosedChannel,
                    child: Some(51),
                    status: Some(ChildStatus::Exited(3)),
                    ..
                }
            )]
        ));
    }

    #[test]
    fn a_timeout_and_a_spawn_failure_are_answered() {
        let mut r = Rig::new();
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 50 });
        r.now += Duration::from_secs(5);
        r.lc.handle_timeout(r.now);
        r.drain();
        assert!(r.told().is_empty());
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Signaled(9),
        });
        assert!(matches!(
            &r.told()[..],
            [(
                1,
                Answer::Failed {
                    kind: FailureKind::TimedOut,
                    status: Some(ChildStatus::Signaled(9)),
                    ..
                }
            )]
        ));
        r.ask(2);
        r.input(Input::SpawnFailed {
            reason: "Too many open files".into(),
        });
        assert!(matches!(
            &r.told()[..],
            [(2, Answer::Failed { kind: FailureKind::SpawnFailed, child: None, status: None, message })]
                if message.contains("Too many open files")
        ));
    }

    #[test]
    fn a_new_attempt_before_the_killed_child_is_reaped_answers_the_earlier_one() {
        let mut r = Rig::new();
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 50 });
        r.input(Input::ChildFailed {
            pid: 50,
            reason: ChildFailure::BadMessage("junk".into()),
        });
        assert!(r.told().is_empty());
        r.ask(2);
        assert!(matches!(
            &r.told()[..],
            [(
                1,
                Answer::Failed {
                    kind: FailureKind::BadMessage,
                    child: Some(50),
                    status: None,
                    ..
                }
            )]
        ));
        // The late exit of the first child is not the second attempt's answer.
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Signaled(9),
        });
        assert!(r.told().is_empty());
        assert_eq!(r.answers.waiting(), 1);
    }

    #[test]
    fn a_restart_by_signal_is_nobody_s_answer() {
        let mut r = Rig::new();
        r.input(Input::Request(Request::Restart));
        r.input(Input::ChildSpawned { pid: 50 });
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Exited(1),
        });
        assert!(r.told().is_empty());
        // A later request gets its own attempt's answer.
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 51 });
        r.input(Input::ChildReady { pid: 51 });
        assert_eq!(r.told(), [(1, Answer::Ready { new: 51 })]);
    }

    #[test]
    fn a_stop_while_the_child_starts_answers_cancelled_once_it_is_reaped_or_at_the_end() {
        let mut r = Rig::new();
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 50 });
        r.input(Input::Request(Request::Stop));
        assert!(r.told().is_empty());
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Signaled(9),
        });
        assert!(matches!(
            &r.told()[..],
            [(
                1,
                Answer::Failed {
                    kind: FailureKind::Cancelled,
                    ..
                }
            )]
        ));
        // Refused once stopping.
        r.ask(2);
        assert!(matches!(
            &r.told()[..],
            [(
                2,
                Answer::Refused {
                    reason: RefusalKind::Draining,
                    ..
                }
            )]
        ));
    }

    #[test]
    fn a_request_that_arrives_after_the_end_names_the_successor() {
        let mut r = Rig::with(Config::new().probation(Duration::ZERO));
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 50 });
        r.input(Input::ChildReady { pid: 50 });
        r.input(Input::Drained);
        assert!(r.lc.is_stopped());
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);
        // Read by this process's control socket before it stopped accepting, handed in
        // after its end.
        r.ask(2);
        assert_eq!(r.told(), [(2, Answer::Moved { to: 50 })]);

        // A process that stopped the service names nobody.
        let mut r = Rig::new();
        r.input(Input::Request(Request::Stop));
        r.input(Input::Drained);
        assert!(r.lc.is_stopped());
        r.ask(1);
        assert!(matches!(
            &r.told()[..],
            [(
                1,
                Answer::Refused {
                    reason: RefusalKind::Stopped,
                    ..
                }
            )]
        ));
    }

    #[test]
    fn until_proven_is_answered_ready_once_the_probation_is_over() {
        let mut r = Rig::new();
        r.handed_over_until_proven(1, 50);
        r.input(Input::Drained);
        assert_eq!(r.lc.phase(), Phase::Probation);
        assert!(r.told().is_empty(), "answered before the probation's end");
        r.advance(Duration::from_secs(4));
        assert!(r.told().is_empty());
        r.advance(Duration::from_secs(1));
        assert!(r.lc.is_stopped());
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);
        assert_eq!(r.answers.waiting(), 0);

        // Without a probation, at the end of the drain.
        let mut r = Rig::with(Config::new().probation(Duration::ZERO));
        r.handed_over_until_proven(1, 50);
        r.input(Input::Drained);
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);

        // A plain request beside it is answered at the handover, as always.
        let mut r = Rig::new();
        r.ask(1);
        r.input(Input::ChildSpawned { pid: 50 });
        r.input(Input::ChildReady { pid: 50 });
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);
    }

    #[test]
    fn until_proven_is_answered_ready_when_the_successor_departs_or_exits_cleanly() {
        use crate::Departure;
        // Departed while this process drains: no fallback any more, answered at once.
        let mut r = Rig::new();
        r.handed_over_until_proven(1, 50);
        r.input(Input::SuccessorDeparted {
            pid: 50,
            how: Departure::HandedOver,
        });
        assert_eq!(r.lc.phase(), Phase::Draining);
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);
        // Its later end changes nothing.
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Signaled(9),
        });
        r.input(Input::Drained);
        assert!(r.lc.is_stopped());
        assert!(r.told().is_empty());

        // Exited with code 0 while this process drains.
        let mut r = Rig::new();
        r.handed_over_until_proven(1, 50);
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Exited(0),
        });
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);

        // Departed, or exited cleanly, in probation: this process exits at once.
        for input in [
            Input::SuccessorDeparted {
                pid: 50,
                how: Departure::Stopping,
            },
            Input::ChildExited {
                pid: 50,
                status: ChildStatus::Exited(0),
            },
        ] {
            let mut r = Rig::new();
            r.handed_over_until_proven(1, 50);
            r.input(Input::Drained);
            r.input(input);
            assert!(r.lc.is_stopped());
            assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);
        }

        // A stop ends the probation: the service stays stopped, and nothing fell back.
        let mut r = Rig::new();
        r.handed_over_until_proven(1, 50);
        r.input(Input::Drained);
        r.input(Input::Request(Request::Stop));
        assert!(r.lc.is_stopped());
        assert_eq!(r.told(), [(1, Answer::Ready { new: 50 })]);
    }

    #[test]
    fn until_proven_is_answered_fell_back_once_this_process_serves_again() {
        // The successor dies while this process drains, or in probation.
        for drained in [false, true] {
            let mut r = Rig::new();
            r.handed_over_until_proven(1, 50);
            if drained {
                r.input(Input::Drained);
                assert_eq!(r.lc.phase(), Phase::Probation);
            }
            r.input(Input::ChildExited {
                pid: 50,
                status: ChildStatus::Exited(1),
            });
            assert_eq!(r.lc.phase(), Phase::Running);
            // At the announcement that this process serves again (the pid file), which
            // follows the fallback and the resumed accepting.
            assert_eq!(
                r.told_at,
                [Output::Action(Action::Announce(crate::Status::Ready {
                    main_pid: true,
                    again: true
                }))]
            );
            assert_eq!(
                r.told(),
                [(
                    1,
                    Answer::FellBack {
                        new: 50,
                        status: ChildStatus::Exited(1),
                        message: "the new process exited with code 1 after it took over; this \
                                  process serves again"
                            .into(),
                    }
                )]
            );
            assert_eq!(r.answers.waiting(), 0);

            // Serving again: a later request gets its own answer, and the dead successor is
            // nobody's `moved`.
            r.ask_until_proven(2);
            r.input(Input::ChildSpawned { pid: 51 });
            r.input(Input::ChildReady { pid: 51 });
            r.input(Input::ChildExited {
                pid: 51,
                status: ChildStatus::Signaled(9),
            });
            assert!(matches!(
                &r.told()[..],
                [(
                    2,
                    Answer::FellBack {
                        new: 51,
                        status: ChildStatus::Signaled(9),
                        ..
                    }
                )]
            ));
            r.input(Input::Request(Request::Stop));
            r.ask_until_proven(3);
            assert!(matches!(
                &r.told()[..],
                [(
                    3,
                    Answer::Refused {
                        reason: RefusalKind::Draining,
                        ..
                    }
                )]
            ));
        }
    }

    #[test]
    fn until_proven_failures_and_refusals_are_answered_as_for_a_plain_request() {
        let mut r = Rig::new();
        r.ask_until_proven(1);
        r.input(Input::ChildSpawned { pid: 50 });
        r.ask_until_proven(2);
        assert!(matches!(
            &r.told()[..],
            [(
                2,
                Answer::Refused {
                    reason: RefusalKind::InProgress,
                    ..
                }
            )]
        ));
        r.input(Input::ChildExited {
            pid: 50,
            status: ChildStatus::Exited(3),
        });
        assert!(matches!(
            &r.told()[..],
            [(
                1,
                Answer::Failed {
                    kind: FailureKind::Exited,
                    child: Some(50),
                    status: Some(ChildStatus::Exited(3)),
                    ..
                }
            )]
        ));
        // A killed child: answered once reaped.
        r.ask_until_proven(3);
        r.input(Input::ChildSpawned { pid: 51 });
        r.advance(Duration::from_secs(5));
        assert!(r.told().is_empty());
        r.input(Input::ChildExited {
            pid: 51,
            status: ChildStatus::Signaled(9),
        });
        assert!(matches!(
            &r.told()[..],
            [(
                3,
                Answer::Failed {
                    kind: FailureKind::TimedOut,
                    ..
                }
            )]
        ));

        // Handed over: asked while draining, and in probation, it is `moved`.
        r.handed_over_until_proven(4, 52);
        r.ask_until_proven(5);
        assert_eq!(r.told(), [(5, Answer::Moved { to: 52 })]);
        r.input(Input::Drained);
        r.ask(6);
        r.ask_until_proven(7);
        assert_eq!(
            r.told(),
            [(6, Answer::Moved { to: 52 }), (7, Answer::Moved { to: 52 })]
        );
        assert_eq!(r.answers.waiting(), 1, "the first is still proving");
    }

    #[test]
    fn every_answer_round_trips() {
        let answers = [
            Answer::Ready { new: 7 },
            Answer::Moved { to: 9 },
            Answer::Failed {
                kind: FailureKind::Exited,
                child: Some(8),
                status: Some(ChildStatus::Exited(3)),
                message: "it -- exited\nbadly".into(),
            },
            Answer::Failed {
                kind: FailureKind::SpawnFailed,
                child: None,
                status: None,
                message: String::new(),
            },
            Answer::Failed {
                kind: FailureKind::TimedOut,
                child: Some(8),
                status: Some(ChildStatus::Signaled(9)),
                message: "late".into(),
            },
            Answer::Failed {
                kind: FailureKind::Other,
                child: Some(8),
                status: Some(ChildStatus::Unknown),
                message: "x".into(),
            },
            Answer::Refused {
                reason: RefusalKind::Permission,
                message: "uid 1000 may not ask".into(),
            },
            Answer::FellBack {
                new: 8,
                status: ChildStatus::Exited(1),
                message: "it exited with code 1 after it took over".into(),
            },
            Answer::FellBack {
                new: 8,
                status: ChildStatus::Signaled(9),
                message: String::new(),
            },
        ];
        for answer in answers {
            let line = encode_answer(42, &answer);
            let (pid, decoded) = decode_answer(&line).unwrap();
            assert_eq!(pid, 42);
            let expected = match answer {
                Answer::Failed {
                    kind,
                    child,
                    status,
                    message,
                } => Answer::Failed {
                    kind,
                    child,
                    status,
                    message: one_line(&message),
                },
                other => other,
            };
            assert_eq!(decoded, expected);
        }
        // A huge message is cut, never sent as a line the other side refuses.
        let long = Answer::Refused {
            reason: RefusalKind::Other,
            message: "é".repeat(MAX_LINE),
        };
        let line = encode_answer(42, &long);
        assert!(line.len() <= MAX_LINE);
        assert!(decode_answer(&line).is_ok());
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode_request(REQUEST), Ok(RequestKind::Restart));
        assert_eq!(decode_request(REQUEST_PROVEN), Ok(RequestKind::UntilProven));
        for kind in [RequestKind::Restart, RequestKind::UntilProven] {
            assert_eq!(decode_request(kind.line()), Ok(kind));
        }
        for bad in [
            &b"endless-control/1 restart"[..],
            b"endless-control/2 restart\n",
            b"endless-control/1 restart now\n",
            b"endless-control/1 ready pid=1\n",
            b"endless-control/1 ready pid=0 new=2\n",
            b"endless-control/1 ready pid=+1 new=2\n",
            b"endless-control/1 ready new=2 pid=1\n",
            b"endless-control/1 ready pid=1 new=2 more=3\n",
            b"endless-control/1 ready pid=1 new=2 -- why\n",
            b"endless-control/1 failed pid=1 kind=exited child=- status=- \n",
            b"endless-control/1 failed pid=1 kind=nope child=- status=- -- m\n",
            b"endless-control/1 failed pid=1 kind=exited child=x status=- -- m\n",
            b"endless-control/1 failed pid=1 kind=exited child=- status=exited:x -- m\n",
            b"endless-control/1 refused pid=1 reason=nope -- m\n",
            b"endless-control/1 moved pid=1\n",
            b"endless-control/1 ready pid=1 new=2\nx\n",
            b"endless-control/1 refused pid=1 reason=other -- a\rb\n",
            b"endless-control/1 fell-back pid=1 new=2 status=exited:1\n",
            b"endless-control/1 fell-back pid=1 new=2 status=- -- m\n",
            b"endless-control/1 fell-back pid=1 new=0 status=exited:1 -- m\n",
            b"endless-control/1 fell-back pid=1 status=exited:1 -- m\n",
            b"endless-control/1 fell-back pid=1 new=2 status=exited:1 more=3 -- m\n",
            b"endless-control/1 fell-back pid=1 new=2 status=killed:9 -- m\n",
            b"endless-control/1 fellback pid=1 new=2 status=exited:1 -- m\n",
            b"\xff\n",
        ] {
            assert!(
                decode_answer(bad).is_err() || bad == REQUEST,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [
            &b"endless-control/1 stop\n"[..],
            b"endless-control/1 restart proven",
            b"endless-control/1 restart  proven\n",
            b"endless-control/1 restart proven \n",
            b"endless-control/1 restart Proven\n",
            b"endless-control/1 restart proven now\n",
            b"endless-control/1 proven\n",
        ] {
            assert!(
                decode_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_answer(&vec![b'x'; MAX_LINE + 1]),
            Err(ControlError::NotALine)
        );
        assert_eq!(
            ControlError::Version.to_string(),
            "not a line of the endless control protocol, version 1"
        );
    }
}
