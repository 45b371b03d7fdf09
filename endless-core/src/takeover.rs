//! Connection takeover: the messages that hand an established connection to the new
//! generation.
//!
//! Waiting for long-lived connections (chat, games, MQTT, websockets) to end can take
//! hours, and closing them makes every client reconnect. Instead, once the new generation
//! reported ready, the old one can hand each connection over: its socket (passed beside the
//! message, `SCM_RIGHTS`), a state blob the application defines (a session), and the bytes
//! it read from the connection but did not consume. The new generation answers each offer
//! with a [`Reply`]: it took the connection, or it refused it — and then the old one still
//! holds it and goes on serving it. The application decides, per connection, whether to
//! hand it over or to drain it.
//!
//! This module is the wire format only: [`Offer::encode`] / [`Offer::decode`] and
//! [`Reply::encode`] / [`Reply::decode`]. The transport is the readiness channel of the
//! new generation, which the old one keeps after the "ready" line. Every message says its
//! own length ([`message_len`]), so the channel can be a byte stream (endless-unix: a Unix
//! `SOCK_STREAM` socketpair, which every Unix has) as well as a transport that keeps
//! message boundaries (`SOCK_SEQPACKET`, which endless used before and macOS lacks):
//! [`Deframer`] splits a stream into messages, and a receiver that must not read past one
//! message (because descriptors travel with it) reads exactly what [`message_len`] asks
//! for.
//!
//! # The exchange
//!
//! 1. The new generation reports ready ([`crate::ready`]) and keeps its end of the channel
//!    ([`Action::ReceiveConnections`](crate::Action::ReceiveConnections)).
//! 2. The old one stops accepting and starts handing over
//!    ([`Action::HandOver`](crate::Action::HandOver)): the connections the application
//!    gives up (it stopped reading each first) go in batches, many sockets to a message
//!    ([`encode_offers`], at most [`MAX_BATCH`]), several batches in flight at once; to a
//!    new generation that did not say it reads batches ([`encode_accepts`]), one [`Offer`]
//!    per message.
//! 3. The new generation answers [`Outcome::Taken`] for each connection once its
//!    application owns the socket, before it reads from it; the answers of one batch go
//!    together where they can ([`encode_replies`]). The old one then closes its copy. On
//!    any other answer, or if the channel ends before one (the new generation died, or the
//!    old one stopped listening after its timeout, which makes every later answer fail to
//!    send), the old one keeps the connection: a connection is never served by both, and
//!    never by none.
//! 4. When the new generation goes in its turn (it hands over onward, or the service
//!    stops), it says so with a last message, a departure
//!    ([`encode_departure`], [`Action::Depart`](crate::Action::Depart)): its end is then no
//!    crash, and the old one, still its fallback, does not take the service back
//!    ([`Input::SuccessorDeparted`](crate::Input::SuccessorDeparted)). The old one reads
//!    every message of the new generation with [`Upstream::decode`].
//!
//! # Format, version 1
//!
//! All integers big-endian.
//!
//! | field | bytes | offer | reply |
//! |---|---|---|---|
//! | magic `EDLS` | 4 | ✓ | ✓ |
//! | version `1` | 1 | ✓ | ✓ |
//! | type | 1 | `1` | `2` |
//! | id | 8 | the offer's number | the id of the offer answered |
//! | kind | 1 | `1` TCP stream, `2` Unix stream | — |
//! | name length, state length, unconsumed length | 2 + 4 + 4 | ✓ | — |
//! | name, state, unconsumed | as declared | ✓ | — |
//! | outcome | 1 | — | `0` taken, `1` refused |
//! | reason | 1 | — | a [`RefuseReason`] code (`0` when taken) |
//!
//! A departure is the common part with type `3` and id `0`, then one byte: `1` it handed
//! over to its own successor, `2` the service stops, `3` it started a successor of its own.
//!
//! Batches (same version: a receiver says it reads them before it is sent any):
//!
//! | message | type | id | then |
//! |---|---|---|---|
//! | offers | `4` | the first offer's number; the `i`-th entry is number `id + i` | count (2, 1 to [`MAX_BATCH`]), the message's total length (4, at most [`MAX_BATCH_LEN`]), then per entry an offer's fields from kind on; the `i`-th socket beside the message is the `i`-th entry's |
//! | replies | `5` | `0` | count (2, 1 to [`MAX_REPLIES`]), then per reply: id (8), outcome (1), reason (1) |
//! | accepts | `6` | `0` | the most offers it takes in one message (2): the new generation reads batches |
//!
//! Names are UTF-8 of at most [`MAX_NAME_LEN`] bytes; the state and
//! the unconsumed bytes at most [`MAX_STATE_LEN`] and [`MAX_UNCONSUMED_LEN`]. A message
//! longer or shorter than its fields declare is an error: every malformed message is a
//! typed [`FrameError`], never a panic, and costs only the connection it carried.
//!
//! # Examples
//!
//! ```
//! use endless_core::takeover::{Offer, Outcome, Reply, StreamKind};
//!
//! let offer = Offer {
//!     id: 7,
//!     kind: StreamKind::Tcp,
//!     name: "pingpong".into(),
//!     state: b"count=41".to_vec(),
//!     unconsumed: b"PI".to_vec(),
//! };
//! let bytes = offer.encode()?;
//! assert_eq!(Offer::decode(&bytes)?, offer);
//!
//! let reply = Reply { id: 7, outcome: Outcome::Taken };
//! assert_eq!(Reply::decode(&reply.encode())?, reply);
//! # Ok::<(), endless_core::takeover::FrameError>(())
//! ```

use std::fmt;

use crate::MAX_NAME_LEN;

/// The first bytes of every message.
pub const MAGIC: [u8; 4] = *b"EDLS";

/// The version of the format that this module writes and reads.
pub const VERSION: u8 = 1;

/// The largest application state an offer carries.
pub const MAX_STATE_LEN: usize = 64 * 1024;

/// The largest number of unconsumed bytes an offer carries.
pub const MAX_UNCONSUMED_LEN: usize = 64 * 1024;

/// The most offers in one message: the most descriptors Linux passes in one
/// `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub const MAX_BATCH: usize = 253;

/// The longest message of offers: room for several offers at their limits, and a bound on
/// what a receiver buffers.
pub const MAX_BATCH_LEN: usize = 1024 * 1024;

/// The most answers in one message of replies.
pub const MAX_REPLIES: usize = 1024;

/// The environment variable through which a generation tells the one it spawns that it
/// reads batched replies and the accepts message: its value is the spawning process's pid,
/// the same as `ENDLESS_PARENT_PID` (a variable left over from an earlier generation, which
/// a parent of an earlier version passes on unchanged, names another pid and is ignored).
pub const BATCH_VAR: &str = "ENDLESS_TAKEOVER_BATCH";

const TYPE_OFFER: u8 = 1;
const TYPE_REPLY: u8 = 2;
const TYPE_DEPARTURE: u8 = 3;
const TYPE_OFFERS: u8 = 4;
const TYPE_REPLIES: u8 = 5;
const TYPE_ACCEPTS: u8 = 6;

/// magic, version, type, id.
const COMMON_LEN: usize = 4 + 1 + 1 + 8;

/// The length of an offer's fixed part: common part, kind, three lengths.
pub const OFFER_HEADER_LEN: usize = COMMON_LEN + 1 + 2 + 4 + 4;

/// The length of a reply.
pub const REPLY_LEN: usize = COMMON_LEN + 2;

/// The length of a departure.
pub const DEPARTURE_LEN: usize = COMMON_LEN + 1;

/// The length of an accepts message.
pub const ACCEPTS_LEN: usize = COMMON_LEN + 2;

/// The fixed part of a message of offers: common part, count, total length.
pub const OFFERS_HEADER_LEN: usize = COMMON_LEN + 2 + 4;

/// The fixed part of one entry of a message of offers: kind and three lengths.
const ENTRY_HEADER_LEN: usize = 1 + 2 + 4 + 4;

/// The fixed part of a message of replies: common part, count.
pub const REPLIES_HEADER_LEN: usize = COMMON_LEN + 2;

/// The length of one answer in a message of replies.
const REPLY_ENTRY_LEN: usize = 8 + 1 + 1;

/// The longest message the new generation sends: a reader's buffer needs one more byte to
/// tell a longer message from one of exactly this length.
pub const MAX_UPSTREAM_LEN: usize = REPLIES_HEADER_LEN + MAX_REPLIES * REPLY_ENTRY_LEN;

/// The longest offer: the receiver's buffer needs one more byte to tell a longer message
/// (which the transport would truncate) from one of exactly this length.
pub const MAX_OFFER_LEN: usize =
    OFFER_HEADER_LEN + MAX_NAME_LEN + MAX_STATE_LEN + MAX_UNCONSUMED_LEN;

/// How long the message that starts with some bytes is, as far as those bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageLen {
    /// Too few bytes to tell: read until there are this many, then ask again.
    AtLeast(usize),
    /// The message is this long, at most [`MAX_BATCH_LEN`] (the bytes after it are the
    /// next message).
    Exactly(usize),
}

/// The length of the message that starts with `head` (any prefix of a stream of
/// messages, empty included), as far as `head` tells it; an error as soon as `head`
/// cannot start a message of this version (bad magic, another version, an unknown type,
/// an offer whose fields are over their limits). After an error the stream cannot be split
/// any further: it has no way to find the start of the next message.
///
/// Only what decides the length is checked here; [`Offer::decode`] and
/// [`Upstream::decode`] check the rest once the whole message is in.
///
/// # Examples
///
/// ```
/// use endless_core::takeover::{message_len, MessageLen, Reply, Outcome};
///
/// let reply = Reply { id: 3, outcome: Outcome::Taken }.encode();
/// assert_eq!(message_len(&[]), Ok(MessageLen::AtLeast(14)));
/// assert_eq!(message_len(&reply[..14]), Ok(MessageLen::Exactly(reply.len())));
/// assert!(message_len(b"HTTP/1.1").is_err());
/// ```
pub fn message_len(head: &[u8]) -> Result<MessageLen, FrameError> {
    let fail = |id, kind| Err(FrameError::Malformed { id, kind });
    let magic = head.len().min(MAGIC.len());
    if head[..magic] != MAGIC[..magic] {
        return fail(None, FrameErrorKind::BadMagic);
    }
    if let Some(&version) = head.get(4)
        && version != VERSION
    {
        return fail(None, FrameErrorKind::UnsupportedVersion(version));
    }
    let kind = head.get(5).copied();
    if let Some(kind) = kind
        && !matches!(
            kind,
            TYPE_OFFER | TYPE_REPLY | TYPE_DEPARTURE | TYPE_OFFERS | TYPE_REPLIES | TYPE_ACCEPTS
        )
    {
        return fail(None, FrameErrorKind::UnexpectedType(kind));
    }
    if head.len() < COMMON_LEN {
        return Ok(MessageLen::AtLeast(COMMON_LEN));
    }
    match kind {
        Some(TYPE_REPLY) => return Ok(MessageLen::Exactly(REPLY_LEN)),
        Some(TYPE_DEPARTURE) => return Ok(MessageLen::Exactly(DEPARTURE_LEN)),
        Some(TYPE_ACCEPTS) => return Ok(MessageLen::Exactly(ACCEPTS_LEN)),
        Some(TYPE_REPLIES) => {
            let Some(count) = head.get(COMMON_LEN..REPLIES_HEADER_LEN) else {
                return Ok(MessageLen::AtLeast(REPLIES_HEADER_LEN));
            };
            let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
            if count == 0 || count > MAX_REPLIES {
                return fail(None, FrameErrorKind::BadCount(count));
            }
            return Ok(MessageLen::Exactly(
                REPLIES_HEADER_LEN + count * REPLY_ENTRY_LEN,
            ));
        }
        Some(TYPE_OFFERS) => {
            let Some(fixed) = head.get(COMMON_LEN..OFFERS_HEADER_LEN) else {
                return Ok(MessageLen::AtLeast(OFFERS_HEADER_LEN));
            };
            let count = usize::from(u16::from_be_bytes([fixed[0], fixed[1]]));
            let total = u32::from_be_bytes([fixed[2], fixed[3], fixed[4], fixed[5]]) as usize;
            if count == 0 || count > MAX_BATCH {
                return fail(None, FrameErrorKind::BadCount(count));
            }
            if total < OFFERS_HEADER_LEN + count * ENTRY_HEADER_LEN || total > MAX_BATCH_LEN {
                return fail(None, FrameErrorKind::BadTotalLength(total));
            }
            return Ok(MessageLen::Exactly(total));
        }
        _ => {}
    }
    if head.len() < OFFER_HEADER_LEN {
        return Ok(MessageLen::AtLeast(OFFER_HEADER_LEN));
    }
    let mut r = Reader::new(&head[6..OFFER_HEADER_LEN]);
    // The fixed part is all there: none of these reads can fail.
    let (Some(id), Some(_kind), Some(name_len), Some(state_len), Some(unconsumed_len)) =
        (r.u64(), r.u8(), r.u16(), r.u32(), r.u32())
    else {
        return fail(None, FrameErrorKind::Truncated);
    };
    let (name_len, state_len, unconsumed_len) = (
        usize::from(name_len),
        state_len as usize,
        unconsumed_len as usize,
    );
    if name_len > MAX_NAME_LEN {
        return fail(Some(id), FrameErrorKind::NameTooLong(name_len));
    }
    if state_len > MAX_STATE_LEN {
        return fail(Some(id), FrameErrorKind::StateTooLarge(state_len));
    }
    if unconsumed_len > MAX_UNCONSUMED_LEN {
        return fail(Some(id), FrameErrorKind::UnconsumedTooLarge(unconsumed_len));
    }
    Ok(MessageLen::Exactly(
        OFFER_HEADER_LEN + name_len + state_len + unconsumed_len,
    ))
}

/// Splits a byte stream into messages, whatever the chunks it arrives in: the reader of a
/// stream transport feeds it what it reads ([`push`](Self::push)) and takes whole messages
/// ([`next_message`](Self::next_message)), which it then decodes.
///
/// # Examples
///
/// ```
/// use endless_core::Departure;
/// use endless_core::takeover::{encode_departure, Deframer, Outcome, Reply, Upstream};
///
/// let mut stream = Reply { id: 1, outcome: Outcome::Taken }.encode();
/// stream.extend(encode_departure(Departure::Stopping));
/// let mut deframer = Deframer::new();
/// deframer.push(&stream[..20]);
/// let first = deframer.next_message().unwrap()?;
/// assert!(matches!(Upstream::decode(&first)?, Upstream::Reply(_)));
/// assert!(deframer.next_message().is_none()); // half of the departure
/// deframer.push(&stream[20..]);
/// let second = deframer.next_message().unwrap()?;
/// assert_eq!(Upstream::decode(&second)?, Upstream::Departure(Departure::Stopping));
/// assert!(deframer.is_empty());
/// # Ok::<(), endless_core::takeover::FrameError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Deframer {
    buffered: Vec<u8>,
    failed: Option<FrameError>,
}

impl Deframer {
    /// A deframer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the stream. Nothing is kept after an error.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buffered.extend_from_slice(bytes);
        }
    }

    /// The next whole message; `None` until all of it arrived. An error
    /// ([`message_len`]'s) is returned again at every later call: the stream cannot be
    /// split past it.
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        match message_len(&self.buffered) {
            Ok(MessageLen::Exactly(len)) if len <= self.buffered.len() => {
                let rest = self.buffered.split_off(len);
                Some(Ok(std::mem::replace(&mut self.buffered, rest)))
            }
            Ok(_) => None,
            Err(e) => {
                self.buffered = Vec::new();
                self.failed = Some(e.clone());
                Some(Err(e))
            }
        }
    }

    /// Whether no part of a message is waiting for the rest: at the end of the stream,
    /// anything else is a message cut short.
    pub fn is_empty(&self) -> bool {
        self.buffered.is_empty() && self.failed.is_none()
    }
}

/// The kind of socket an offer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamKind {
    /// A connected TCP socket.
    Tcp,
    /// A connected Unix stream socket.
    Unix,
}

impl StreamKind {
    fn code(self) -> u8 {
        match self {
            Self::Tcp => 1,
            Self::Unix => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Tcp),
            2 => Some(Self::Unix),
            _ => None,
        }
    }

    /// The inventory kind of such a socket.
    pub fn fd_kind(self) -> crate::FdKind {
        match self {
            Self::Tcp => crate::FdKind::TcpStream,
            Self::Unix => crate::FdKind::UnixStream,
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP stream",
            Self::Unix => "Unix stream",
        })
    }
}

/// One connection offered to the new generation (its socket travels beside the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The offer's number, unique within one channel; the reply names it.
    pub id: u64,
    /// What the socket is.
    pub kind: StreamKind,
    /// Which of the new generation's receivers takes it (the application names them, as
    /// it names listeners).
    pub name: String,
    /// The application's state of the connection (a session), at most [`MAX_STATE_LEN`].
    pub state: Vec<u8>,
    /// Bytes read from the connection and not consumed, at most [`MAX_UNCONSUMED_LEN`]:
    /// the new generation reads them before what the socket holds.
    pub unconsumed: Vec<u8>,
}

impl Offer {
    /// The message, or an error when a field is over its limit.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode_offer(
            self.id,
            self.kind,
            &self.name,
            &self.state,
            &self.unconsumed,
        )
    }

    /// Reads one message. The id is readable ([`FrameError::id`]) from any message with a
    /// valid common part, so that even a malformed offer can be refused by number.
    pub fn decode(message: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(message);
        let id = r.common(TYPE_OFFER)?;
        let fail = |kind: FrameErrorKind| FrameError::Malformed { id: Some(id), kind };
        let kind_code = r.u8().ok_or_else(|| fail(FrameErrorKind::Truncated))?;
        let kind = StreamKind::from_code(kind_code)
            .ok_or_else(|| fail(FrameErrorKind::UnknownKind(kind_code)))?;
        let (Some(name_len), Some(state_len), Some(unconsumed_len)) = (r.u16(), r.u32(), r.u32())
        else {
            return Err(fail(FrameErrorKind::Truncated));
        };
        let (name_len, state_len, unconsumed_len) = (
            usize::from(name_len),
            state_len as usize,
            unconsumed_len as usize,
        );
        if name_len > MAX_NAME_LEN {
            return Err(fail(FrameErrorKind::NameTooLong(name_len)));
        }
        if state_len > MAX_STATE_LEN {
            return Err(fail(FrameErrorKind::StateTooLarge(state_len)));
        }
        if unconsumed_len > MAX_UNCONSUMED_LEN {
            return Err(fail(FrameErrorKind::UnconsumedTooLarge(unconsumed_len)));
        }
        let declared = OFFER_HEADER_LEN + name_len + state_len + unconsumed_len;
        if message.len() != declared {
            return Err(fail(FrameErrorKind::LengthMismatch {
                declared,
                actual: message.len(),
            }));
        }
        let name = r.take(name_len).unwrap_or_default();
        let name = std::str::from_utf8(name)
            .map_err(|_| fail(FrameErrorKind::NameNotUtf8))?
            .to_owned();
        let state = r.take(state_len).unwrap_or_default().to_vec();
        let unconsumed = r.take(unconsumed_len).unwrap_or_default().to_vec();
        Ok(Self {
            id,
            kind,
            name,
            state,
            unconsumed,
        })
    }
}

/// The message of an [`Offer`] with these fields, without building one (the sender keeps
/// its buffers), or an error when a field is over its limit.
pub fn encode_offer(
    id: u64,
    kind: StreamKind,
    name: &str,
    state: &[u8],
    unconsumed: &[u8],
) -> Result<Vec<u8>, FrameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(FrameError::NameTooLong { len: name.len() });
    }
    if state.len() > MAX_STATE_LEN {
        return Err(FrameError::StateTooLarge { len: state.len() });
    }
    if unconsumed.len() > MAX_UNCONSUMED_LEN {
        return Err(FrameError::UnconsumedTooLarge {
            len: unconsumed.len(),
        });
    }
    let mut out =
        Vec::with_capacity(OFFER_HEADER_LEN + name.len() + state.len() + unconsumed.len());
    common(&mut out, TYPE_OFFER, id);
    out.push(kind.code());
    // The limits above make these conversions exact.
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(&(state.len() as u32).to_be_bytes());
    out.extend_from_slice(&(unconsumed.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(state);
    out.extend_from_slice(unconsumed);
    Ok(out)
}

/// One connection of a message of offers ([`encode_offers`]): an [`Offer`]'s fields but its
/// id, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// What the socket is.
    pub kind: StreamKind,
    /// The receiver's name.
    pub name: &'a str,
    /// The application's state of the connection.
    pub state: &'a [u8],
    /// Bytes read from the connection and not consumed.
    pub unconsumed: &'a [u8],
}

impl Entry<'_> {
    /// Its length in a message of offers; an error when a field is over its limit.
    pub fn encoded_len(&self) -> Result<usize, FrameError> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(FrameError::NameTooLong {
                len: self.name.len(),
            });
        }
        if self.state.len() > MAX_STATE_LEN {
            return Err(FrameError::StateTooLarge {
                len: self.state.len(),
            });
        }
        if self.unconsumed.len() > MAX_UNCONSUMED_LEN {
            return Err(FrameError::UnconsumedTooLarge {
                len: self.unconsumed.len(),
            });
        }
        Ok(ENTRY_HEADER_LEN + self.name.len() + self.state.len() + self.unconsumed.len())
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind.code());
        // `encoded_len` checked the limits: these conversions are exact.
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.state.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.unconsumed.len() as u32).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.state);
        out.extend_from_slice(self.unconsumed);
    }
}

/// A message of offers: `entries` are the offers numbered `first_id`, `first_id + 1`, …;
/// their sockets travel beside the message in the same order. An error when there are none
/// or more than [`MAX_BATCH`], when a field is over its limit, or when the message would
/// be longer than [`MAX_BATCH_LEN`] (a sender fills a batch while
/// [`Entry::encoded_len`] says the next one fits: [`OFFERS_HEADER_LEN`] plus the
/// entries' lengths).
///
/// # Examples
///
/// ```
/// use endless_core::takeover::{decode_offers, encode_offers, Entry, StreamKind};
///
/// let entry = |state: &'static [u8]| Entry {
///     kind: StreamKind::Tcp,
///     name: "chat",
///     state,
///     unconsumed: b"",
/// };
/// let message = encode_offers(10, &[entry(b"alice"), entry(b"bob")])?;
/// let offers = decode_offers(&message)?;
/// assert_eq!(offers.len(), 2);
/// let bob = offers[1].as_ref().unwrap();
/// assert_eq!((bob.id, &bob.state[..]), (11, &b"bob"[..]));
/// # Ok::<(), endless_core::takeover::FrameError>(())
/// ```
pub fn encode_offers(first_id: u64, entries: &[Entry<'_>]) -> Result<Vec<u8>, FrameError> {
    if entries.is_empty() || entries.len() > MAX_BATCH {
        return Err(FrameError::BatchTooLarge {
            count: entries.len(),
            len: 0,
        });
    }
    let mut total = OFFERS_HEADER_LEN;
    for entry in entries {
        total += entry.encoded_len()?;
    }
    if total > MAX_BATCH_LEN {
        return Err(FrameError::BatchTooLarge {
            count: entries.len(),
            len: total,
        });
    }
    let mut out = Vec::with_capacity(total);
    common(&mut out, TYPE_OFFERS, first_id);
    // Both bounded above.
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    out.extend_from_slice(&(total as u32).to_be_bytes());
    for entry in entries {
        entry.encode_into(&mut out);
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// Reads a message of offers ([`encode_offers`]), or a single [`Offer`] as a batch of
/// one: one result per offer it numbers, in order. An entry that is malformed costs itself
/// (its error names its id, to refuse it by); one whose lengths overrun the message costs
/// itself and every entry after it. The error is for a message whose count and ids cannot
/// be read at all.
pub fn decode_offers(message: &[u8]) -> Result<Vec<Result<Offer, FrameError>>, FrameError> {
    if message.get(5) == Some(&TYPE_OFFER) {
        return match Offer::decode(message) {
            Ok(offer) => Ok(vec![Ok(offer)]),
            Err(e) if e.id().is_some() => Ok(vec![Err(e)]),
            Err(e) => Err(e),
        };
    }
    let mut r = Reader::new(message);
    let first_id = r.common(TYPE_OFFERS)?;
    let fail = |kind: FrameErrorKind| FrameError::Malformed {
        id: Some(first_id),
        kind,
    };
    let (Some(count), Some(total)) = (r.u16(), r.u32()) else {
        return Err(fail(FrameErrorKind::Truncated));
    };
    let (count, total) = (usize::from(count), total as usize);
    if count == 0 || count > MAX_BATCH {
        return Err(fail(FrameErrorKind::BadCount(count)));
    }
    let mut offers = Vec::with_capacity(count);
    let mut broken = None;
    if total != message.len() {
        broken = Some(FrameErrorKind::LengthMismatch {
            declared: total,
            actual: message.len(),
        });
    }
    for i in 0..count {
        let id = first_id.wrapping_add(i as u64);
        let entry_fail = |kind: FrameErrorKind| FrameError::Malformed { id: Some(id), kind };
        if let Some(kind) = &broken {
            offers.push(Err(entry_fail(kind.clone())));
            continue;
        }
        match read_entry(&mut r, id) {
            Ok(entry) => offers.push(entry),
            Err(kind) => {
                broken = Some(kind.clone());
                offers.push(Err(entry_fail(kind)));
            }
        }
    }
    if broken.is_none() && !r.rest.is_empty() {
        // Bytes after the last entry: the message is not what it says; none of it counts.
        let kind = FrameErrorKind::LengthMismatch {
            declared: message.len() - r.rest.len(),
            actual: message.len(),
        };
        for (i, offer) in offers.iter_mut().enumerate() {
            *offer = Err(FrameError::Malformed {
                id: Some(first_id.wrapping_add(i as u64)),
                kind: kind.clone(),
            });
        }
    }
    Ok(offers)
}

/// One entry of a message of offers: the offer, or what is wrong with it (outer error: the
/// entry's lengths cannot be trusted, so neither can anything after it).
fn read_entry(r: &mut Reader<'_>, id: u64) -> Result<Result<Offer, FrameError>, FrameErrorKind> {
    let (Some(kind_code), Some(name_len), Some(state_len), Some(unconsumed_len)) =
        (r.u8(), r.u16(), r.u32(), r.u32())
    else {
        return Err(FrameErrorKind::Truncated);
    };
    let (name_len, state_len, unconsumed_len) = (
        usize::from(name_len),
        state_len as usize,
        unconsumed_len as usize,
    );
    if name_len > MAX_NAME_LEN {
        return Err(FrameErrorKind::NameTooLong(name_len));
    }
    if state_len > MAX_STATE_LEN {
        return Err(FrameErrorKind::StateTooLarge(state_len));
    }
    if unconsumed_len > MAX_UNCONSUMED_LEN {
        return Err(FrameErrorKind::UnconsumedTooLarge(unconsumed_len));
    }
    let (Some(name), Some(state), Some(unconsumed)) =
        (r.take(name_len), r.take(state_len), r.take(unconsumed_len))
    else {
        return Err(FrameErrorKind::Truncated);
    };
    let fail = |kind: FrameErrorKind| Ok(Err(FrameError::Malformed { id: Some(id), kind }));
    let Some(kind) = StreamKind::from_code(kind_code) else {
        return fail(FrameErrorKind::UnknownKind(kind_code));
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return fail(FrameErrorKind::NameNotUtf8);
    };
    Ok(Ok(Offer {
        id,
        kind,
        name: name.to_owned(),
        state: state.to_vec(),
        unconsumed: unconsumed.to_vec(),
    }))
}

/// A message of replies: the answers to offers of any messages, at most [`MAX_REPLIES`]
/// (an error when there are none or more).
///
/// # Examples
///
/// ```
/// use endless_core::takeover::{encode_replies, Outcome, RefuseReason, Reply, Upstream};
///
/// let replies = [
///     Reply { id: 10, outcome: Outcome::Taken },
///     Reply { id: 11, outcome: Outcome::Refused(RefuseReason::NoReceiver) },
/// ];
/// let message = encode_replies(&replies)?;
/// assert_eq!(Upstream::decode(&message)?, Upstream::Replies(replies.to_vec()));
/// # Ok::<(), endless_core::takeover::FrameError>(())
/// ```
pub fn encode_replies(replies: &[Reply]) -> Result<Vec<u8>, FrameError> {
    if replies.is_empty() || replies.len() > MAX_REPLIES {
        return Err(FrameError::BatchTooLarge {
            count: replies.len(),
            len: 0,
        });
    }
    let mut out = Vec::with_capacity(REPLIES_HEADER_LEN + replies.len() * REPLY_ENTRY_LEN);
    common(&mut out, TYPE_REPLIES, 0);
    out.extend_from_slice(&(replies.len() as u16).to_be_bytes());
    for reply in replies {
        out.extend_from_slice(&reply.id.to_be_bytes());
        out.extend_from_slice(&reply.outcome.codes());
    }
    Ok(out)
}

/// The accepts message: the new generation reads messages of offers of up to `max_batch`
/// offers (the sender sends at most `min(max_batch, MAX_BATCH)`; `0` or `1` means one
/// at a time).
pub fn encode_accepts(max_batch: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(ACCEPTS_LEN);
    common(&mut out, TYPE_ACCEPTS, 0);
    out.extend_from_slice(&max_batch.to_be_bytes());
    out
}

/// The new generation's answer to an [`Offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The id of the offer answered.
    pub id: u64,
    /// What became of it.
    pub outcome: Outcome,
}

/// What the new generation did with an offered connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Its application owns the socket now: the old generation closes its copy.
    Taken,
    /// It did not take it: the old generation keeps serving the connection.
    Refused(RefuseReason),
}

/// Why the new generation refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// No receiver of that name (the new version serves it no longer, or not this way).
    NoReceiver,
    /// The receiver of that name was dropped.
    ReceiverClosed,
    /// The message was malformed.
    Malformed,
    /// The message came without a socket, with more than one, or with one of another kind
    /// than declared.
    BadSocket,
    /// The receiving process has drained: it has handed over or closed what it held and
    /// waits only as a fallback, or to exit, so a connection it took now would outlive no
    /// one to serve it. (An earlier version, which does not know this code, reads it as
    /// [`Other`](Self::Other): a refusal all the same.)
    Drained,
    /// A reason this version does not know (a later version sent it).
    Other(u8),
}

impl RefuseReason {
    fn code(self) -> u8 {
        match self {
            Self::NoReceiver => 1,
            Self::ReceiverClosed => 2,
            Self::Malformed => 3,
            Self::BadSocket => 4,
            Self::Drained => 5,
            Self::Other(code) => code,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::NoReceiver,
            2 => Self::ReceiverClosed,
            3 => Self::Malformed,
            4 => Self::BadSocket,
            5 => Self::Drained,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoReceiver => f.write_str("no receiver of that name"),
            Self::ReceiverClosed => f.write_str("the receiver was dropped"),
            Self::Malformed => f.write_str("the offer was malformed"),
            Self::BadSocket => f.write_str("the socket was missing or of another kind"),
            Self::Drained => f.write_str("the receiving process has drained"),
            Self::Other(code) => write!(f, "reason {code}"),
        }
    }
}

impl Outcome {
    /// Its two bytes on the wire: outcome, reason.
    fn codes(self) -> [u8; 2] {
        match self {
            Self::Taken => [0, 0],
            Self::Refused(reason) => [1, reason.code()],
        }
    }

    /// From its two bytes; strict: one encoding per outcome.
    fn from_codes(outcome: u8, reason: u8) -> Result<Self, FrameErrorKind> {
        match outcome {
            0 if reason != 0 => Err(FrameErrorKind::ReasonWhenTaken(reason)),
            0 => Ok(Self::Taken),
            1 => Ok(Self::Refused(RefuseReason::from_code(reason))),
            other => Err(FrameErrorKind::UnknownOutcome(other)),
        }
    }
}

impl Reply {
    /// The message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPLY_LEN);
        common(&mut out, TYPE_REPLY, self.id);
        out.extend_from_slice(&self.outcome.codes());
        out
    }

    /// Reads one message.
    pub fn decode(message: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(message);
        let id = r.common(TYPE_REPLY)?;
        let fail = |kind: FrameErrorKind| FrameError::Malformed { id: Some(id), kind };
        if message.len() != REPLY_LEN {
            return Err(fail(FrameErrorKind::LengthMismatch {
                declared: REPLY_LEN,
                actual: message.len(),
            }));
        }
        let (Some(outcome), Some(reason)) = (r.u8(), r.u8()) else {
            return Err(fail(FrameErrorKind::Truncated));
        };
        let outcome = Outcome::from_codes(outcome, reason).map_err(fail)?;
        Ok(Self { id, outcome })
    }
}

/// The departure message: the new generation goes, and why ([`crate::Departure`]).
pub fn encode_departure(how: crate::Departure) -> Vec<u8> {
    let mut out = Vec::with_capacity(DEPARTURE_LEN);
    common(&mut out, TYPE_DEPARTURE, 0);
    out.push(match how {
        crate::Departure::HandedOver => 1,
        crate::Departure::Stopping => 2,
        crate::Departure::Restarting => 3,
    });
    out
}

/// A message from the new generation to the old one, after its readiness line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upstream {
    /// The answer to an offer.
    Reply(Reply),
    /// Answers to several offers ([`encode_replies`]).
    Replies(Vec<Reply>),
    /// It reads messages of offers of up to this many ([`encode_accepts`]).
    Accepts(u16),
    /// It goes, and why.
    Departure(crate::Departure),
}

impl Upstream {
    /// Reads one message: a [`Reply`], replies, accepts or a departure. Strict, as
    /// [`Reply::decode`].
    pub fn decode(message: &[u8]) -> Result<Self, FrameError> {
        match message.get(5) {
            Some(&TYPE_REPLIES) => return decode_replies(message).map(Self::Replies),
            Some(&TYPE_ACCEPTS) => {
                let mut r = Reader::new(message);
                let id = r.common(TYPE_ACCEPTS)?;
                return match (id, r.u16(), message.len()) {
                    (0, Some(max), ACCEPTS_LEN) => Ok(Self::Accepts(max)),
                    (0, _, actual) => Err(FrameError::Malformed {
                        id: Some(0),
                        kind: FrameErrorKind::LengthMismatch {
                            declared: ACCEPTS_LEN,
                            actual,
                        },
                    }),
                    (id, ..) => Err(FrameError::Malformed {
                        id: Some(id),
                        kind: FrameErrorKind::UnexpectedId(id),
                    }),
                };
            }
            Some(&TYPE_DEPARTURE) => {}
            _ => return Reply::decode(message).map(Self::Reply),
        }
        let mut r = Reader::new(message);
        let id = r.common(TYPE_DEPARTURE)?;
        let fail = |kind: FrameErrorKind| FrameError::Malformed { id: Some(id), kind };
        if message.len() != DEPARTURE_LEN {
            return Err(fail(FrameErrorKind::LengthMismatch {
                declared: DEPARTURE_LEN,
                actual: message.len(),
            }));
        }
        if id != 0 {
            return Err(fail(FrameErrorKind::UnexpectedId(id)));
        }
        match r.u8() {
            Some(1) => Ok(Self::Departure(crate::Departure::HandedOver)),
            Some(2) => Ok(Self::Departure(crate::Departure::Stopping)),
            Some(3) => Ok(Self::Departure(crate::Departure::Restarting)),
            Some(other) => Err(fail(FrameErrorKind::UnknownDeparture(other))),
            None => Err(fail(FrameErrorKind::Truncated)),
        }
    }
}

fn decode_replies(message: &[u8]) -> Result<Vec<Reply>, FrameError> {
    let mut r = Reader::new(message);
    let id = r.common(TYPE_REPLIES)?;
    let fail = |kind: FrameErrorKind| FrameError::Malformed { id: Some(id), kind };
    if id != 0 {
        return Err(fail(FrameErrorKind::UnexpectedId(id)));
    }
    let count = usize::from(r.u16().ok_or_else(|| fail(FrameErrorKind::Truncated))?);
    if count == 0 || count > MAX_REPLIES {
        return Err(fail(FrameErrorKind::BadCount(count)));
    }
    let declared = REPLIES_HEADER_LEN + count * REPLY_ENTRY_LEN;
    if message.len() != declared {
        return Err(fail(FrameErrorKind::LengthMismatch {
            declared,
            actual: message.len(),
        }));
    }
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        let (Some(id), Some(outcome), Some(reason)) = (r.u64(), r.u8(), r.u8()) else {
            return Err(fail(FrameErrorKind::Truncated));
        };
        let outcome = Outcome::from_codes(outcome, reason).map_err(fail)?;
        replies.push(Reply { id, outcome });
    }
    Ok(replies)
}

fn common(out: &mut Vec<u8>, kind: u8, id: u64) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(message: &'a [u8]) -> Self {
        Self { rest: message }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut bytes = [0; 8];
        bytes.copy_from_slice(b);
        Some(u64::from_be_bytes(bytes))
    }

    /// Magic, version and type; the id.
    fn common(&mut self, expected: u8) -> Result<u64, FrameError> {
        let fail = |kind: FrameErrorKind| FrameError::Malformed { id: None, kind };
        let magic = self
            .take(4)
            .ok_or_else(|| fail(FrameErrorKind::Truncated))?;
        if magic != MAGIC {
            return Err(fail(FrameErrorKind::BadMagic));
        }
        let version = self.u8().ok_or_else(|| fail(FrameErrorKind::Truncated))?;
        if version != VERSION {
            return Err(fail(FrameErrorKind::UnsupportedVersion(version)));
        }
        let kind = self.u8().ok_or_else(|| fail(FrameErrorKind::Truncated))?;
        if kind != expected {
            return Err(fail(FrameErrorKind::UnexpectedType(kind)));
        }
        self.u64().ok_or_else(|| fail(FrameErrorKind::Truncated))
    }
}

/// A message that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The name is longer than [`MAX_NAME_LEN`] (encoding).
    NameTooLong {
        /// Its length.
        len: usize,
    },
    /// The state is longer than [`MAX_STATE_LEN`] (encoding).
    StateTooLarge {
        /// Its length.
        len: usize,
    },
    /// The unconsumed bytes are more than [`MAX_UNCONSUMED_LEN`] (encoding).
    UnconsumedTooLarge {
        /// Their length.
        len: usize,
    },
    /// A batch of none, or of more than [`MAX_BATCH`] offers or [`MAX_REPLIES`] replies,
    /// or longer than [`MAX_BATCH_LEN`] (encoding).
    BatchTooLarge {
        /// How many it held.
        count: usize,
        /// Its length in bytes (`0` when the count alone was wrong).
        len: usize,
    },
    /// A received message is malformed.
    Malformed {
        /// The id of the message, when its common part was readable.
        id: Option<u64>,
        /// What is wrong.
        kind: FrameErrorKind,
    },
}

impl FrameError {
    /// The id of the message, when it could be read.
    pub fn id(&self) -> Option<u64> {
        match self {
            Self::Malformed { id, .. } => *id,
            _ => None,
        }
    }
}

/// What is wrong with a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameErrorKind {
    /// It ends before its fixed fields do.
    Truncated,
    /// It does not start with [`MAGIC`].
    BadMagic,
    /// It is of another version.
    UnsupportedVersion(u8),
    /// It is not of the type expected (an offer where a reply was due, or unknown).
    UnexpectedType(u8),
    /// Its socket kind is unknown.
    UnknownKind(u8),
    /// Its reply outcome is unknown.
    UnknownOutcome(u8),
    /// It says "taken" with a refusal reason.
    ReasonWhenTaken(u8),
    /// Its departure reason is unknown.
    UnknownDeparture(u8),
    /// A departure, replies or accepts with an id (always `0`).
    UnexpectedId(u64),
    /// A batch of no entries, or of more than the limit.
    BadCount(usize),
    /// A message of offers whose total length is impossible or over [`MAX_BATCH_LEN`].
    BadTotalLength(usize),
    /// Its name is over the limit.
    NameTooLong(usize),
    /// Its name is not UTF-8.
    NameNotUtf8,
    /// Its state is over the limit.
    StateTooLarge(usize),
    /// Its unconsumed bytes are over the limit.
    UnconsumedTooLarge(usize),
    /// Its length is not what its fields declare.
    LengthMismatch {
        /// The length the fields declare.
        declared: usize,
        /// The length received.
        actual: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NameTooLong { len } => {
                write!(f, "receiver name of {len} bytes (at most {MAX_NAME_LEN})")
            }
            Self::StateTooLarge { len } => {
                write!(
                    f,
                    "connection state of {len} bytes (at most {MAX_STATE_LEN})"
                )
            }
            Self::UnconsumedTooLarge { len } => {
                write!(f, "{len} unconsumed bytes (at most {MAX_UNCONSUMED_LEN})")
            }
            Self::BatchTooLarge { count, len } => write!(
                f,
                "a batch of {count} ({len} bytes; 1 to {MAX_BATCH} offers, \
                 {MAX_REPLIES} replies, {MAX_BATCH_LEN} bytes)"
            ),
            Self::Malformed { id, kind } => {
                f.write_str("malformed takeover message")?;
                if let Some(id) = id {
                    write!(f, " {id}")?;
                }
                write!(f, ": {kind}")
            }
        }
    }
}

impl fmt::Display for FrameErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::BadMagic => f.write_str("bad magic"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Self::UnexpectedType(t) => write!(f, "unexpected message type {t}"),
            Self::UnknownKind(k) => write!(f, "unknown socket kind {k}"),
            Self::UnknownOutcome(o) => write!(f, "unknown outcome {o}"),
            Self::ReasonWhenTaken(r) => write!(f, "taken, with refusal reason {r}"),
            Self::UnknownDeparture(how) => write!(f, "unknown departure reason {how}"),
            Self::UnexpectedId(id) => write!(f, "id {id} where it is always 0"),
            Self::BadCount(n) => write!(f, "a batch of {n} entries"),
            Self::BadTotalLength(n) => write!(f, "a batch declared {n} bytes long"),
            Self::NameTooLong(n) => write!(f, "name of {n} bytes (at most {MAX_NAME_LEN})"),
            Self::NameNotUtf8 => f.write_str("name is not UTF-8"),
            Self::StateTooLarge(n) => write!(f, "state of {n} bytes (at most {MAX_STATE_LEN})"),
            Self::UnconsumedTooLarge(n) => {
                write!(f, "{n} unconsumed bytes (at most {MAX_UNCONSUMED_LEN})")
            }
            Self::LengthMismatch { declared, actual } => {
                write!(f, "{actual} bytes where the fields declare {declared}")
            }
        }
    }
}

impl std::error::Error for FrameError {}
