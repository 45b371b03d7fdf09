//! The environment encoding of a handoff, and systemd socket activation.
//!
//! An old process re-executes itself and hands its inventory to the new process as inherited
//! fds 3, 4, …, described by environment variables. [`encode`] turns a [`Handoff`] into those
//! variables; [`decode`] turns the variables a process started with back into a `Handoff`.
//! [`decode_systemd`] reads the variables of systemd socket activation (`LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`) into an [`Inventory`]. Neither reads the environment: the
//! adapter reads it and hands the pairs in, with what it observes of the fds (for
//! `ENDLESS_*`) or its own pid (for systemd).
//!
//! # Format, version 2
//!
//! | variable | value |
//! |---|---|
//! | `ENDLESS_VERSION` | `2` |
//! | `ENDLESS_PARENT_PID` | the pid of the process that spawned the recipient |
//! | `ENDLESS_FDS` | `n`, the number of inventory entries |
//! | `ENDLESS_FD_<fd>` | `<kind>:<escaped name>:<dev>:<ino>`, one per entry, `<fd>` its fd number |
//! | `ENDLESS_READY_FD` | `<fd>:<dev>:<ino>`, the readiness channel the recipient writes "ready" to |
//!
//! - The `n` entries and the ready fd are exactly the fds `3, 4, …, 3+n`, each used once.
//! - `<dev>:<ino>` is the [`FileId`] of the open file the fd refers to, as `fstat` shows it
//!   to the spawning process (which is what the recipient sees too: the fd is a copy).
//! - Numbers are strict decimal: ASCII digits only, no sign, no whitespace, no leading zero
//!   (except `0` itself), and they must fit their type (`u32` for pids, [`Fd`] for fds,
//!   `u64` for devices and inodes).
//! - `<kind>` is an [`FdKind::as_str`] token. An entry's value is split at its first `:`
//!   (the kind) and its last two (the identity); what is left between is the name.
//! - Names are UTF-8. Each byte in `[A-Za-z0-9._~-]` is written as is, every other byte as
//!   `%XX` with uppercase hex. The decoder takes either case of hex digit; any other raw byte,
//!   or a `%` not followed by two hex digits, is an error, and so is a decoded name that is
//!   not UTF-8 or longer than [`MAX_NAME_LEN`] bytes.
//! - A key `ENDLESS_FD_<digit>…` is ours: the rest must be a strict fd number, or it is an
//!   error. Other keys that start with `ENDLESS_` (`ENDLESS_FD_LIMIT`, `ENDLESS_LOG`) are left
//!   to their owners: ignored, and passed on to children unchanged. Keys that are not UTF-8 are never ours and are ignored; a value of one of our
//!   variables that is not UTF-8 is an error, and so is one of our keys given twice.
//!
//! [`decode`] checks the version first (a later version may change everything else), then
//! the rest of the format, then that every declared fd of this process is the declared
//! open file: variables inherited by a process they were not meant for, such as a
//! grandchild (which gets the environment but not the fds, or other files at those
//! numbers) or a re-run command line, give [`DecodeError::NotTheDeclaredFile`].
//!
//! # Why version 2
//!
//! Version 1 had no identities: a recipient checked that `ENDLESS_PARENT_PID` was its
//! parent. A successor whose parent died while it started saw another parent pid
//! (re-parented to init or a subreaper), refused the fds it held, bound anew against its own
//! inherited listener and failed (issue 15). The fds themselves say whether they were
//! handed to this process; the parent pid is now information only. The number changed
//! because a version 1 decoder would misread the new entries (the identity as part of the
//! name); it now says [`DecodeError::UnsupportedVersion`] instead.
//!
//! Decoding is only half of adopting: the descriptors it names arrive without
//! `FD_CLOEXEC` and are whatever the environment claims. Set close-on-exec on each and
//! check it against its [`FdKind`] before use, and spawn the executable resolved at
//! start-up, not the one `current_exe()` names at restart time: see
//! [the crate docs](crate#what-an-adapter-must-do-that-the-core-cannot) for why.

use std::collections::btree_map;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fmt;

use crate::{FIRST_INHERITED_FD, Fd, FdKind, Inventory, InventoryError, MAX_ENTRIES, MAX_NAME_LEN};

/// The version of the encoding that [`encode`] writes and [`decode`] reads.
pub const VERSION: u32 = 2;

/// The prefix of every variable of the encoding. Other variables with this prefix are ignored.
pub const PREFIX: &str = "ENDLESS_";

/// Variable holding the version of the encoding ([`VERSION`]).
pub const VERSION_VAR: &str = "ENDLESS_VERSION";

/// Variable holding the pid of the process that spawned the recipient (information: who to
/// report ready to, and for logs; not what decides whether the fds are meant for a process).
pub const PARENT_PID_VAR: &str = "ENDLESS_PARENT_PID";

/// Variable holding the number of inventory entries.
pub const FDS_VAR: &str = "ENDLESS_FDS";

/// Prefix of the per-entry variables `ENDLESS_FD_<fd>=<kind>:<escaped name>:<dev>:<ino>`. A key with this
/// prefix followed by a digit is ours, and the rest must be a strict fd number.
pub const FD_VAR_PREFIX: &str = "ENDLESS_FD_";

/// Variable holding the fd of the readiness channel and its identity, `<fd>:<dev>:<ino>`.
pub const READY_FD_VAR: &str = "ENDLESS_READY_FD";

/// systemd socket activation: the pid the passed fds are meant for.
pub const LISTEN_PID_VAR: &str = "LISTEN_PID";

/// systemd socket activation: the number of passed fds, starting at fd 3.
pub const LISTEN_FDS_VAR: &str = "LISTEN_FDS";

/// systemd socket activation: the colon-separated names of the passed fds.
pub const LISTEN_FDNAMES_VAR: &str = "LISTEN_FDNAMES";

/// The name systemd gives every fd when `LISTEN_FDNAMES` is not set.
pub const SYSTEMD_UNKNOWN_NAME: &str = "unknown";

/// Longest excerpt of an offending value or key that [`DecodeError`]'s `Display` shows.
const DISPLAY_LIMIT: usize = 64;

/// The identity of an open file: its device and inode numbers, as `fstat` gives them
/// (`st_dev`, `st_ino`). Two fds with the same identity refer to the same file (for a
/// socket or pipe: the same socket or pipe), whichever process holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// The device (`st_dev`).
    pub dev: u64,
    /// The inode (`st_ino`).
    pub ino: u64,
}

impl FileId {
    /// The identity with device `dev` and inode `ino`.
    pub const fn new(dev: u64, ino: u64) -> Self {
        Self { dev, ino }
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// What a process hands to the process it spawns: who spawned it, the inventory of inherited
/// fds, the fd of the readiness channel, and the identity of each of these fds.
///
/// Built with [`Handoff::new`] or [`Handoff::for_spawn`], which check that the entries and
/// the ready fd are exactly the fds `3, 4, …, 3+n`, each used once, and which order the
/// entries by fd (the order they have on the wire), so that whatever [`encode`] writes,
/// [`decode`] reads back as an equal `Handoff`. The fields are public for reading; a
/// `Handoff` whose fields were changed afterwards is encoded as it is, and [`Handoff::check`]
/// tells whether it still holds the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Handoff {
    /// The pid of the spawning process (the recipient's parent).
    pub parent_pid: u32,
    /// The inherited fds, ordered by fd.
    pub inventory: Inventory,
    /// The fd of the readiness channel (a pipe or socket) the recipient writes "ready" to.
    pub ready_fd: Fd,
    /// The identity of the open file at each of the fds `3, 4, …, 3+n` (the entries and the
    /// ready fd), in fd order: `identities[i]` is that of fd `3+i`.
    pub identities: Vec<FileId>,
}

impl Handoff {
    /// A handoff from `parent_pid`, with the entries of `inventory`, the readiness channel
    /// at `ready_fd`, and the `identities` of the fds `3, 4, …, 3+n` in fd order.
    ///
    /// Fails unless the entries and `ready_fd` are exactly `3, 4, …, 3+n` (with `n` entries),
    /// each used once, and there are `n+1` identities. The entries are reordered by fd.
    pub fn new(
        parent_pid: u32,
        inventory: Inventory,
        ready_fd: Fd,
        identities: Vec<FileId>,
    ) -> Result<Self, HandoffError> {
        check_fds(&inventory, ready_fd, identities.len())?;
        Ok(Self {
            parent_pid,
            inventory: sorted_by_fd(inventory),
            ready_fd,
            identities,
        })
    }

    /// A handoff for an inventory numbered from 3 (as [`Inventory::push`] numbers it), with
    /// the readiness channel right after the entries, at `3+n`.
    ///
    /// # Examples
    ///
    /// ```
    /// use endless_core::{FdKind, Inventory};
    /// use endless_core::env::{FileId, Handoff};
    ///
    /// let mut inventory = Inventory::new();
    /// inventory.push("http", FdKind::TcpListener)?;
    /// let ids = vec![FileId::new(8, 1001), FileId::new(8, 1002)];
    /// let handoff = Handoff::for_spawn(1234, inventory, ids)?;
    /// assert_eq!(handoff.ready_fd, 4);
    /// assert_eq!(handoff.identity(4), Some(FileId::new(8, 1002)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_spawn(
        parent_pid: u32,
        inventory: Inventory,
        identities: Vec<FileId>,
    ) -> Result<Self, HandoffError> {
        let ready_fd = fd_after(inventory.len());
        Self::new(parent_pid, inventory, ready_fd, identities)
    }

    /// Whether the fds still hold the rule [`Handoff::new`] checks (useful after the public
    /// fields were changed).
    pub fn check(&self) -> Result<(), HandoffError> {
        check_fds(&self.inventory, self.ready_fd, self.identities.len())
    }

    /// The declared identity of the open file at `fd`, if `fd` is one of the handoff's.
    pub fn identity(&self, fd: Fd) -> Option<FileId> {
        let i = usize::try_from(fd.checked_sub(FIRST_INHERITED_FD)?).ok()?;
        self.identities.get(i).copied()
    }
}

/// The fd `3 + n`; `n` is at most [`MAX_ENTRIES`] for any inventory, so this does not
/// overflow (saturates if it ever would).
fn fd_after(n: usize) -> Fd {
    Fd::try_from(n).map_or(Fd::MAX, |n| FIRST_INHERITED_FD.saturating_add(n))
}

fn check_fds(inventory: &Inventory, ready_fd: Fd, identities: usize) -> Result<(), HandoffError> {
    // The inventory's fds are distinct and >= 3. With the ready fd that makes n+1 fds; they
    // are exactly 3..=3+n iff they are distinct and all within that range.
    let max = fd_after(inventory.len());
    if ready_fd < FIRST_INHERITED_FD {
        return Err(HandoffError::FdBelowFirst { fd: ready_fd });
    }
    if ready_fd > max {
        return Err(HandoffError::FdOutOfRange { fd: ready_fd, max });
    }
    if inventory.get_fd(ready_fd).is_some() {
        return Err(HandoffError::DuplicateFd { fd: ready_fd });
    }
    if let Some(e) = inventory.iter().find(|e| e.fd() > max) {
        return Err(HandoffError::FdOutOfRange { fd: e.fd(), max });
    }
    let expected = inventory.len() + 1;
    if identities != expected {
        return Err(HandoffError::IdentityCount {
            expected,
            found: identities,
        });
    }
    Ok(())
}

fn sorted_by_fd(inventory: Inventory) -> Inventory {
    if inventory.entries().is_sorted_by_key(crate::Entry::fd) {
        return inventory;
    }
    let mut entries: Vec<_> = inventory.iter().collect();
    entries.sort_by_key(|e| e.fd());
    let mut sorted = Inventory::new();
    for e in entries {
        // Cannot fail: the same entries were accepted by an inventory before.
        let _ = sorted.insert(e.name(), e.kind(), e.fd());
    }
    sorted
}

/// Why a [`Handoff`] cannot be built (a mistake of the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandoffError {
    /// The ready fd is below [`FIRST_INHERITED_FD`].
    FdBelowFirst {
        /// The ready fd given.
        fd: Fd,
    },
    /// The ready fd is also the fd of an entry.
    DuplicateFd {
        /// The fd used twice.
        fd: Fd,
    },
    /// An fd is above `3+n` (with `n` entries), so the fds leave a gap.
    FdOutOfRange {
        /// The fd out of range.
        fd: Fd,
        /// The highest fd allowed, `3+n`.
        max: Fd,
    },
    /// The number of identities is not `n+1` (one per entry, one for the ready fd).
    IdentityCount {
        /// `n+1`.
        expected: usize,
        /// The number given.
        found: usize,
    },
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FdBelowFirst { fd } => write!(
                f,
                "ready fd {fd} cannot be inherited: inherited fds start at {FIRST_INHERITED_FD}"
            ),
            Self::DuplicateFd { fd } => {
                write!(f, "ready fd {fd} is also the fd of an inventory entry")
            }
            Self::FdOutOfRange { fd, max } => write!(
                f,
                "fd {fd} is out of range: the entries and the ready fd must be exactly \
                 {FIRST_INHERITED_FD}..={max}"
            ),
            Self::IdentityCount { expected, found } => write!(
                f,
                "{found} file identities given, the handoff has {expected} fds"
            ),
        }
    }
}

impl std::error::Error for HandoffError {}

impl From<HandoffError> for std::io::Error {
    fn from(e: HandoffError) -> Self {
        Self::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// The variables that describe `handoff` to the spawned process, to add to its environment
/// (after removing those for which [`is_reserved`] is true).
///
/// In order: `ENDLESS_VERSION`, `ENDLESS_PARENT_PID`, `ENDLESS_FDS`, one `ENDLESS_FD_<fd>` per
/// entry, `ENDLESS_READY_FD`. A handoff whose fields were changed so that an fd has no
/// identity (see [`Handoff::check`]) is encoded with the identity `0:0`.
///
/// # Examples
///
/// ```
/// use endless_core::{FdKind, Inventory};
/// use endless_core::env::{self, FileId, Handoff};
///
/// let mut inventory = Inventory::new();
/// inventory.push("http", FdKind::TcpListener)?;
/// inventory.push("admin socket", FdKind::UnixListener)?;
/// // What fstat says of the fds 3, 4 and 5 (in the spawning process, before renumbering).
/// let ids = vec![FileId::new(8, 31), FileId::new(8, 32), FileId::new(8, 33)];
/// let handoff = Handoff::for_spawn(4242, inventory, ids.clone())?;
///
/// let vars = env::encode(&handoff);
/// let expected = [
///     ("ENDLESS_VERSION", "2"),
///     ("ENDLESS_PARENT_PID", "4242"),
///     ("ENDLESS_FDS", "2"),
///     ("ENDLESS_FD_3", "tcp-listener:http:8:31"),
///     ("ENDLESS_FD_4", "unix-listener:admin%20socket:8:32"),
///     ("ENDLESS_READY_FD", "5:8:33"),
/// ];
/// assert!(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).eq(expected));
///
/// // The spawned process decodes them, with what fstat says of its own fds.
/// let observed = |fd: i32| ids.get(usize::try_from(fd - 3).ok()?).copied();
/// assert_eq!(env::decode(vars, observed)?, Some(handoff));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode(handoff: &Handoff) -> Vec<(String, String)> {
    let mut vars = Vec::with_capacity(handoff.inventory.len() + 4);
    vars.push((VERSION_VAR.to_owned(), VERSION.to_string()));
    vars.push((PARENT_PID_VAR.to_owned(), handoff.parent_pid.to_string()));
    vars.push((FDS_VAR.to_owned(), handoff.inventory.len().to_string()));
    let id = |fd| handoff.identity(fd).unwrap_or(FileId::new(0, 0));
    for e in &handoff.inventory {
        let mut value = String::with_capacity(e.kind().as_str().len() + 1 + e.name().len() + 24);
        value.push_str(e.kind().as_str());
        value.push(':');
        escape_into(e.name(), &mut value);
        value.push(':');
        value.push_str(&id(e.fd()).to_string());
        vars.push((format!("{FD_VAR_PREFIX}{}", e.fd()), value));
    }
    vars.push((
        READY_FD_VAR.to_owned(),
        format!("{}:{}", handoff.ready_fd, id(handoff.ready_fd)),
    ));
    vars
}

/// Whether `key` is a variable of the encoding or of systemd socket activation: the adapter
/// removes these from the environment it passes to a child before adding fresh ones.
///
/// True for `ENDLESS_VERSION`, `ENDLESS_PARENT_PID`, `ENDLESS_FDS`, `ENDLESS_READY_FD`, any key
/// `ENDLESS_FD_<digit>…`, [`ENDLESS_TAKEOVER_BATCH`](crate::takeover::BATCH_VAR),
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`; false for anything else, including
/// other `ENDLESS_` variables.
///
/// # Examples
///
/// ```
/// use endless_core::env::is_reserved;
/// use std::ffi::OsStr;
///
/// assert!(is_reserved(OsStr::new("ENDLESS_FD_3")));
/// assert!(is_reserved(OsStr::new("LISTEN_FDS")));
/// assert!(!is_reserved(OsStr::new("ENDLESS_LOG_LEVEL")));
/// assert!(!is_reserved(OsStr::new("ENDLESS_FD_LIMIT")));
/// assert!(!is_reserved(OsStr::new("PATH")));
/// ```
pub fn is_reserved(key: &OsStr) -> bool {
    let key = key.as_encoded_bytes();
    fd_var_suffix(key).is_some()
        || [
            VERSION_VAR,
            PARENT_PID_VAR,
            FDS_VAR,
            READY_FD_VAR,
            crate::takeover::BATCH_VAR,
            LISTEN_PID_VAR,
            LISTEN_FDS_VAR,
            LISTEN_FDNAMES_VAR,
        ]
        .iter()
        .any(|v| v.as_bytes() == key)
}

/// The part after `ENDLESS_FD_` of a key that is one of our entry variables: the prefix
/// followed by an ASCII digit.
fn fd_var_suffix(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(FD_VAR_PREFIX.as_bytes())
        .filter(|rest| rest.first().is_some_and(u8::is_ascii_digit))
}

/// One of the single-valued variables, as seen in the input.
#[derive(Debug)]
enum Slot<V> {
    Absent,
    Present(V),
    Repeated,
}

impl<V: AsRef<OsStr>> Slot<V> {
    fn put(&mut self, value: V) {
        *self = match self {
            Self::Absent => Self::Present(value),
            Self::Present(_) | Self::Repeated => Self::Repeated,
        };
    }

    fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }

    /// The value as UTF-8: `None` if absent, an error if repeated or not UTF-8.
    fn get(&self, variable: &str) -> Result<Option<&str>, DecodeError> {
        match self {
            Self::Absent => Ok(None),
            Self::Repeated => Err(DecodeError::DuplicateVariable {
                variable: variable.to_owned(),
            }),
            Self::Present(v) => utf8(variable, v.as_ref()).map(Some),
        }
    }

    /// The value as UTF-8; an error if absent, repeated or not UTF-8.
    fn require(&self, variable: &str) -> Result<&str, DecodeError> {
        self.get(variable)?
            .ok_or_else(|| DecodeError::MissingVariable {
                variable: variable.to_owned(),
            })
    }
}

/// Reads the handoff that the spawning process described in the environment `vars`.
///
/// `vars` are all the environment variables of the process (other variables are ignored);
/// `observe(fd)` is the identity of the open file this process has at `fd` (`fstat`), or
/// `None` if `fd` is not open. Returns `Ok(None)` when none of the variables of the
/// encoding is present: a fresh start.
///
/// The version is checked first, then the rest of the format, then, fd by fd from 3, that
/// each declared fd is the declared file ([`DecodeError::NotTheDeclaredFile`] otherwise:
/// the variables were meant for another process). `observe` is called once for each of
/// the fds `3, 4, …, 3+n`, in order, until one differs, and only once the format is valid.
/// The parent pid is not compared with anything: a recipient whose parent died while it
/// started still holds the fds, and adopts them. See the [module docs](self) for the
/// format.
///
/// # Examples
///
/// ```
/// use endless_core::FdKind;
/// use endless_core::env::{self, DecodeError, FileId};
///
/// let vars = [
///     ("PATH", "/usr/bin"),
///     ("ENDLESS_VERSION", "2"),
///     ("ENDLESS_PARENT_PID", "4242"),
///     ("ENDLESS_FDS", "1"),
///     ("ENDLESS_FD_3", "tcp-listener:public%3A443:8:31"),
///     ("ENDLESS_READY_FD", "4:8:32"),
/// ];
/// // What fstat says of fds 3 and 4 in the process that was spawned with them.
/// let spawned = |fd| match fd {
///     3 => Some(FileId::new(8, 31)),
///     4 => Some(FileId::new(8, 32)),
///     _ => None,
/// };
/// let handoff = env::decode(vars, spawned)?.expect("started by a handoff");
/// let entry = handoff.inventory.get("public:443").expect("entry");
/// assert_eq!((entry.fd(), entry.kind()), (3, FdKind::TcpListener));
/// assert_eq!(handoff.ready_fd, 4);
/// assert_eq!(handoff.parent_pid, 4242);
///
/// // Inherited by a process they were not meant for (it has other files, or none, there):
/// let grandchild = |_| None;
/// let err = env::decode(vars, grandchild).unwrap_err();
/// assert!(err.is_not_for_this_process());
///
/// // A fresh start:
/// assert_eq!(env::decode([("PATH", "/usr/bin")], grandchild)?, None);
/// # Ok::<(), DecodeError>(())
/// ```
pub fn decode<I, K, V, F>(vars: I, mut observe: F) -> Result<Option<Handoff>, DecodeError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
    F: FnMut(Fd) -> Option<FileId>,
{
    let mut version = Slot::Absent;
    let mut parent = Slot::Absent;
    let mut fds = Slot::Absent;
    let mut ready = Slot::Absent;
    let mut entries: BTreeMap<Fd, (String, V)> = BTreeMap::new();
    let mut key_error: Option<DecodeError> = None;
    let mut any = false;

    for (key, value) in vars {
        // A key that is not UTF-8 cannot be one of ours.
        let Some(key) = key.as_ref().to_str() else {
            continue;
        };
        if !key.starts_with(PREFIX) {
            continue;
        }
        match key {
            VERSION_VAR => version.put(value),
            PARENT_PID_VAR => parent.put(value),
            FDS_VAR => fds.put(value),
            READY_FD_VAR => ready.put(value),
            _ => {
                let Some(suffix) = fd_var_suffix(key.as_bytes()) else {
                    continue; // someone else's ENDLESS_ variable
                };
                let suffix = &key[key.len() - suffix.len()..];
                let error = match parse_strict::<Fd>(suffix) {
                    None => Some(DecodeError::InvalidFdVariable {
                        variable: key.to_owned(),
                    }),
                    Some(fd) => match entries.entry(fd) {
                        btree_map::Entry::Vacant(slot) => {
                            slot.insert((key.to_owned(), value));
                            None
                        }
                        btree_map::Entry::Occupied(_) => Some(DecodeError::DuplicateVariable {
                            variable: key.to_owned(),
                        }),
                    },
                };
                if key_error.is_none() {
                    key_error = error;
                }
            }
        }
        any = true;
    }
    if !any {
        return Ok(None);
    }

    let found = version.require(VERSION_VAR)?;
    if parse_strict::<u32>(found) != Some(VERSION) {
        return Err(DecodeError::UnsupportedVersion {
            found: found.to_owned(),
        });
    }

    if let Some(e) = key_error {
        return Err(e);
    }

    let parent_pid: u32 = parse_number(PARENT_PID_VAR, parent.require(PARENT_PID_VAR)?)?;

    let n: usize = parse_number(FDS_VAR, fds.require(FDS_VAR)?)?;
    if n > MAX_ENTRIES {
        return Err(DecodeError::TooManyEntries {
            variable: FDS_VAR.to_owned(),
            declared: n,
        });
    }
    let max = fd_after(n);

    let ready_value = ready.require(READY_FD_VAR)?;
    let malformed_ready = || DecodeError::MalformedEntry {
        variable: READY_FD_VAR.to_owned(),
        value: ready_value.to_owned(),
    };
    let (ready_fd, ready_dev, ready_ino) = {
        let mut fields = ready_value.split(':');
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(fd), Some(dev), Some(ino), None) => (fd, dev, ino),
            _ => return Err(malformed_ready()),
        }
    };
    let ready_fd: Fd = parse_number(READY_FD_VAR, ready_fd)?;
    check_fd_range(READY_FD_VAR, ready_fd, max)?;
    let ready_id = parse_id(READY_FD_VAR, ready_dev, ready_ino)?;

    if entries.len() != n {
        return Err(DecodeError::CountMismatch {
            variable: FDS_VAR.to_owned(),
            declared: n,
            found: entries.len(),
        });
    }

    let mut inventory = Inventory::new();
    // Declared identities by fd, with the variable that declares each.
    let mut declared: BTreeMap<Fd, (String, FileId)> = BTreeMap::new();
    for (fd, (variable, value)) in entries {
        check_fd_range(&variable, fd, max)?;
        if fd == ready_fd {
            return Err(DecodeError::DuplicateFd {
                variable: READY_FD_VAR.to_owned(),
                fd,
            });
        }
        let value = utf8(&variable, value.as_ref())?;
        let malformed = || DecodeError::MalformedEntry {
            variable: variable.clone(),
            value: value.to_owned(),
        };
        // <kind>:<escaped name>:<dev>:<ino>; a raw ':' in the name is an invalid escape.
        let (token, rest) = value.split_once(':').ok_or_else(malformed)?;
        let mut tail = rest.rsplitn(3, ':');
        let (Some(ino), Some(dev), Some(escaped)) = (tail.next(), tail.next(), tail.next()) else {
            return Err(malformed());
        };
        let Some(kind) = FdKind::from_token(token) else {
            return Err(DecodeError::UnknownKind {
                variable,
                kind: token.to_owned(),
            });
        };
        let name = unescape(&variable, escaped)?;
        let id = parse_id(&variable, dev, ino)?;
        insert(&mut inventory, &variable, name, kind, fd)?;
        declared.insert(fd, (variable, id));
    }
    declared.insert(ready_fd, (READY_FD_VAR.to_owned(), ready_id));

    // The format is valid: are these fds the declared files? The map holds exactly the fds
    // 3..=3+n (checked above), in order.
    let mut identities = Vec::with_capacity(declared.len());
    for (fd, (variable, id)) in declared {
        let found = observe(fd);
        if found != Some(id) {
            return Err(DecodeError::NotTheDeclaredFile {
                variable,
                fd,
                declared: id,
                found,
            });
        }
        identities.push(id);
    }

    Ok(Some(Handoff {
        parent_pid,
        inventory,
        ready_fd,
        identities,
    }))
}

fn parse_id(variable: &str, dev: &str, ino: &str) -> Result<FileId, DecodeError> {
    Ok(FileId::new(
        parse_number(variable, dev)?,
        parse_number(variable, ino)?,
    ))
}

/// Reads the fds passed by systemd socket activation, as sd_listen_fds_with_names(3) does.
///
/// `vars` are all the environment variables of the process; `own_pid` is its pid
/// (`getpid()`). Returns `Ok(None)` when neither `LISTEN_PID` nor `LISTEN_FDS` is set.
/// Otherwise `LISTEN_PID` must be `own_pid` ([`DecodeError::NotForThisProcess`] if not) and
/// `LISTEN_FDS` a count `n` of at most [`MAX_ENTRIES`]; the fds are `3, 4, …, 2+n`.
///
/// Names come from `LISTEN_FDNAMES`, colon-separated, exactly `n` of them (an empty value is
/// no names at all); without it every fd is named [`SYSTEMD_UNKNOWN_NAME`], as systemd does.
/// systemd allows several fds with one name (a socket unit with several `Listen…=` lines),
/// but inventory names are unique: the first fd keeps the name and every later one is
/// renamed `<name>#<fd>` (`http`, `http#4`, …); a renamed name that is still taken is a
/// [`DecodeError::DuplicateName`]. Every entry's kind is [`FdKind::Unknown`]: systemd does
/// not say, the adapter looks at the fd.
///
/// # Examples
///
/// ```
/// use endless_core::env::{self, DecodeError};
///
/// let vars = [
///     ("LISTEN_PID", "77"),
///     ("LISTEN_FDS", "3"),
///     ("LISTEN_FDNAMES", "http:http:admin"),
/// ];
/// let inventory = env::decode_systemd(vars, 77)?.expect("socket-activated");
/// let names: Vec<_> = inventory.iter().map(|e| (e.name(), e.fd())).collect();
/// assert_eq!(names, [("http", 3), ("http#4", 4), ("admin", 5)]);
///
/// assert!(env::decode_systemd(vars, 78).unwrap_err().is_not_for_this_process());
/// assert_eq!(env::decode_systemd([("PATH", "/bin")], 77)?, None);
/// # Ok::<(), DecodeError>(())
/// ```
pub fn decode_systemd<I, K, V>(vars: I, own_pid: u32) -> Result<Option<Inventory>, DecodeError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut pid = Slot::Absent;
    let mut count = Slot::Absent;
    let mut names = Slot::Absent;
    for (key, value) in vars {
        let key = key.as_ref().as_encoded_bytes();
        if key == LISTEN_PID_VAR.as_bytes() {
            pid.put(value);
        } else if key == LISTEN_FDS_VAR.as_bytes() {
            count.put(value);
        } else if key == LISTEN_FDNAMES_VAR.as_bytes() {
            names.put(value);
        }
    }
    if pid.is_absent() && count.is_absent() {
        return Ok(None);
    }

    let intended: u32 = parse_number(LISTEN_PID_VAR, pid.require(LISTEN_PID_VAR)?)?;
    if intended != own_pid {
        return Err(DecodeError::NotForThisProcess {
            intended,
            actual: own_pid,
        });
    }

    let n: usize = parse_number(LISTEN_FDS_VAR, count.require(LISTEN_FDS_VAR)?)?;
    if n > MAX_ENTRIES {
        return Err(DecodeError::TooManyEntries {
            variable: LISTEN_FDS_VAR.to_owned(),
            declared: n,
        });
    }

    let names: Vec<&str> = match names.get(LISTEN_FDNAMES_VAR)? {
        None => vec![SYSTEMD_UNKNOWN_NAME; n],
        Some("") => Vec::new(),
        // At most one more field than there are bytes in the value: proportional to the
        // input, not to a declared count.
        Some(value) => value.split(':').collect(),
    };
    if names.len() != n {
        return Err(DecodeError::CountMismatch {
            variable: LISTEN_FDNAMES_VAR.to_owned(),
            declared: n,
            found: names.len(),
        });
    }

    let mut inventory = Inventory::new();
    let mut taken = HashSet::with_capacity(n);
    for (fd, name) in (FIRST_INHERITED_FD..).zip(names) {
        let name = if taken.contains(name) {
            format!("{name}#{fd}")
        } else {
            name.to_owned()
        };
        taken.insert(name.clone());
        insert(
            &mut inventory,
            LISTEN_FDNAMES_VAR,
            name,
            FdKind::Unknown,
            fd,
        )?;
    }
    Ok(Some(inventory))
}

fn insert(
    inventory: &mut Inventory,
    variable: &str,
    name: String,
    kind: FdKind,
    fd: Fd,
) -> Result<(), DecodeError> {
    let variable = variable.to_owned();
    inventory.insert(name, kind, fd).map_err(|e| match e {
        InventoryError::DuplicateName { name } => DecodeError::DuplicateName { variable, name },
        InventoryError::NameTooLong { len } => DecodeError::NameTooLong { variable, len },
        InventoryError::DuplicateFd { fd } => DecodeError::DuplicateFd { variable, fd },
        InventoryError::FdBelowFirst { fd } => DecodeError::FdBelowFirst { variable, fd },
        // Not reached: the count was checked against MAX_ENTRIES before.
        InventoryError::TooManyEntries => DecodeError::TooManyEntries {
            variable,
            declared: inventory.len().saturating_add(1),
        },
    })
}

fn check_fd_range(variable: &str, fd: Fd, max: Fd) -> Result<(), DecodeError> {
    if fd < FIRST_INHERITED_FD {
        return Err(DecodeError::FdBelowFirst {
            variable: variable.to_owned(),
            fd,
        });
    }
    if fd > max {
        return Err(DecodeError::FdOutOfRange {
            variable: variable.to_owned(),
            fd,
            max,
        });
    }
    Ok(())
}

fn utf8<'a>(variable: &str, value: &'a OsStr) -> Result<&'a str, DecodeError> {
    value.to_str().ok_or_else(|| DecodeError::ValueNotUtf8 {
        variable: variable.to_owned(),
        value: value.to_string_lossy().into_owned(),
    })
}

/// A strict decimal number: ASCII digits only, no leading zero (except "0"), fits `T`.
fn parse_strict<T: std::str::FromStr>(s: &str) -> Option<T> {
    let b = s.as_bytes();
    let shape_ok = !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b == b"0" || b[0] != b'0');
    if shape_ok { s.parse().ok() } else { None }
}

fn parse_number<T: std::str::FromStr>(variable: &str, value: &str) -> Result<T, DecodeError> {
    parse_strict(value).ok_or_else(|| DecodeError::InvalidNumber {
        variable: variable.to_owned(),
        value: value.to_owned(),
    })
}

const fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

fn escape_into(name: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in name.as_bytes() {
        if is_safe(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn unescape(variable: &str, escaped: &str) -> Result<String, DecodeError> {
    let invalid = |offset| DecodeError::InvalidEscape {
        variable: variable.to_owned(),
        value: escaped.to_owned(),
        offset,
    };
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(invalid(i));
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else if is_safe(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(invalid(i));
        }
    }
    if out.len() > MAX_NAME_LEN {
        return Err(DecodeError::NameTooLong {
            variable: variable.to_owned(),
            len: out.len(),
        });
    }
    String::from_utf8(out).map_err(|_| DecodeError::NameNotUtf8 {
        variable: variable.to_owned(),
        value: escaped.to_owned(),
    })
}

/// Why the variables a process started with could not be decoded: bad input from the process
/// that set them (or from whoever else put them into the environment).
///
/// Every variant names the variable at fault; offending values are kept whole and shortened
/// by `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// `ENDLESS_VERSION` is not a version this decoder reads.
    UnsupportedVersion {
        /// The value found.
        found: String,
    },
    /// A variable the encoding needs is missing (while others of the encoding are present).
    MissingVariable {
        /// The missing variable.
        variable: String,
    },
    /// A variable of the encoding is given more than once.
    DuplicateVariable {
        /// The repeated variable.
        variable: String,
    },
    /// The value of a variable of the encoding is not UTF-8.
    ValueNotUtf8 {
        /// The variable.
        variable: String,
        /// Its value, with invalid sequences replaced by U+FFFD.
        value: String,
    },
    /// A value is not a strict decimal number of the expected type.
    InvalidNumber {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
    },
    /// A key `ENDLESS_FD_<digit>…` whose rest is not a strict fd number.
    InvalidFdVariable {
        /// The key.
        variable: String,
    },
    /// An entry's value is not `<kind>:<name>:<dev>:<ino>`, or that of `ENDLESS_READY_FD`
    /// not `<fd>:<dev>:<ino>`.
    MalformedEntry {
        /// The entry's variable.
        variable: String,
        /// Its value.
        value: String,
    },
    /// An entry's kind is not an [`FdKind`] token.
    UnknownKind {
        /// The entry's variable.
        variable: String,
        /// The kind found.
        kind: String,
    },
    /// An entry's name has a `%` not followed by two hex digits, or a byte that should have
    /// been escaped.
    InvalidEscape {
        /// The entry's variable.
        variable: String,
        /// The escaped name.
        value: String,
        /// The byte offset of the fault in the escaped name.
        offset: usize,
    },
    /// An entry's name, once unescaped, is not UTF-8.
    NameNotUtf8 {
        /// The entry's variable.
        variable: String,
        /// The escaped name.
        value: String,
    },
    /// An entry's name, once unescaped, is longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong {
        /// The entry's variable.
        variable: String,
        /// The length of the name, in bytes.
        len: usize,
    },
    /// Two entries have the same name.
    DuplicateName {
        /// The variable of the later entry.
        variable: String,
        /// The name.
        name: String,
    },
    /// The ready fd is also the fd of an entry.
    DuplicateFd {
        /// The variable of the later use.
        variable: String,
        /// The fd.
        fd: Fd,
    },
    /// An fd is below [`FIRST_INHERITED_FD`].
    FdBelowFirst {
        /// The variable.
        variable: String,
        /// The fd.
        fd: Fd,
    },
    /// An fd is above `3+n`, with `n` the declared number of entries.
    FdOutOfRange {
        /// The variable.
        variable: String,
        /// The fd.
        fd: Fd,
        /// The highest fd allowed.
        max: Fd,
    },
    /// The declared number of entries is not the number found.
    CountMismatch {
        /// The variable that lists or counts the entries found (`ENDLESS_FDS`,
        /// `LISTEN_FDNAMES`).
        variable: String,
        /// The declared number.
        declared: usize,
        /// The number found.
        found: usize,
    },
    /// The declared number of entries is above [`MAX_ENTRIES`].
    TooManyEntries {
        /// The variable declaring it.
        variable: String,
        /// The declared number.
        declared: usize,
    },
    /// Of [`decode_systemd`]: `LISTEN_PID` names another process as the recipient: the
    /// variables were inherited by a process they were not meant for. The adapter usually
    /// ignores them and starts fresh.
    NotForThisProcess {
        /// The pid the variables were meant for.
        intended: u32,
        /// The pid of this process.
        actual: u32,
    },
    /// Of [`decode`]: a declared fd of this process is not the declared open file (another
    /// file, or not open): the variables were inherited by a process they were not meant
    /// for (a grandchild, which gets the environment but not the fds; a re-run command
    /// line). The adapter usually ignores them and starts fresh.
    NotTheDeclaredFile {
        /// The variable that declares the fd.
        variable: String,
        /// The fd.
        fd: Fd,
        /// The identity declared.
        declared: FileId,
        /// The identity of the file this process has at `fd`; `None` if it is not open.
        found: Option<FileId>,
    },
}

impl DecodeError {
    /// Whether the variables were meant for another process
    /// ([`DecodeError::NotForThisProcess`], [`DecodeError::NotTheDeclaredFile`]), as opposed
    /// to being malformed.
    pub fn is_not_for_this_process(&self) -> bool {
        matches!(
            self,
            Self::NotForThisProcess { .. } | Self::NotTheDeclaredFile { .. }
        )
    }
}

/// Shows a string quoted and escaped, cut after [`DISPLAY_LIMIT`] characters.
struct Excerpt<'a>(&'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        match s.char_indices().nth(DISPLAY_LIMIT) {
            None => write!(f, "{s:?}"),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &s[..cut], s.len()),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion { found } => write!(
                f,
                "{VERSION_VAR} is {}, this program reads version {VERSION}",
                Excerpt(found)
            ),
            Self::MissingVariable { variable } => write!(
                f,
                "{} is not set, but related variables are",
                Excerpt(variable)
            ),
            Self::DuplicateVariable { variable } => {
                write!(f, "{} is set more than once", Excerpt(variable))
            }
            Self::ValueNotUtf8 { variable, value } => write!(
                f,
                "the value of {} is not UTF-8: {}",
                Excerpt(variable),
                Excerpt(value)
            ),
            Self::InvalidNumber { variable, value } => write!(
                f,
                "the value of {} is not a valid number: {}",
                Excerpt(variable),
                Excerpt(value)
            ),
            Self::InvalidFdVariable { variable } => write!(
                f,
                "{} has the reserved prefix {FD_VAR_PREFIX} but does not end in a valid fd number",
                Excerpt(variable)
            ),
            Self::MalformedEntry { variable, value } if variable == READY_FD_VAR => write!(
                f,
                "the value of {} is not <fd>:<dev>:<ino>: {}",
                Excerpt(variable),
                Excerpt(value)
            ),
            Self::MalformedEntry { variable, value } => write!(
                f,
                "the value of {} is not <kind>:<name>:<dev>:<ino>: {}",
                Excerpt(variable),
                Excerpt(value)
            ),
            Self::UnknownKind { variable, kind } => write!(
                f,
                "{} has an unknown fd kind {}",
                Excerpt(variable),
                Excerpt(kind)
            ),
            Self::InvalidEscape {
                variable,
                value,
                offset,
            } => write!(
                f,
                "the name in {} has an invalid escape or unescaped byte at offset {offset}: {}",
                Excerpt(variable),
                Excerpt(value)
            ),
            Self::NameNotUtf8 { variable, value } => write!(
                f,
                "the name in {} is not UTF-8 once unescaped: {}",
                Excerpt(variable),
                Excerpt(value)
            ),
            Self::NameTooLong { variable, len } => write!(
                f,
                "the name in {} is {len} bytes long, the limit is {MAX_NAME_LEN}",
                Excerpt(variable)
            ),
            Self::DuplicateName { variable, name } => write!(
                f,
                "{} repeats the name {} of an earlier fd",
                Excerpt(variable),
                Excerpt(name)
            ),
            Self::DuplicateFd { variable, fd } => write!(
                f,
                "{} names fd {fd}, which is already the fd of another entry",
                Excerpt(variable)
            ),
            Self::FdBelowFirst { variable, fd } => write!(
                f,
                "{} names fd {fd}, but inherited fds start at {FIRST_INHERITED_FD}",
                Excerpt(variable)
            ),
            Self::FdOutOfRange { variable, fd, max } => write!(
                f,
                "{} names fd {fd}, but the declared entries and the ready fd span \
                 {FIRST_INHERITED_FD}..={max}",
                Excerpt(variable)
            ),
            Self::CountMismatch {
                variable,
                declared,
                found,
            } => write!(
                f,
                "{declared} fds declared but {found} found ({})",
                Excerpt(variable)
            ),
            Self::TooManyEntries { variable, declared } => write!(
                f,
                "{} declares {declared} fds, the limit is {MAX_ENTRIES}",
                Excerpt(variable)
            ),
            Self::NotForThisProcess { intended, actual } => write!(
                f,
                "the inherited fds are not meant for this process: the variables name \
                 pid {intended}, this process expected {actual}"
            ),
            Self::NotTheDeclaredFile {
                variable,
                fd,
                declared,
                found: Some(found),
            } => write!(
                f,
                "the inherited fds are not meant for this process: {} declares fd {fd} \
                 as file {declared}, but this process has file {found} there",
                Excerpt(variable)
            ),
            Self::NotTheDeclaredFile {
                variable,
                fd,
                declared,
                found: None,
            } => write!(
                f,
                "the inherited fds are not meant for this process: {} declares fd {fd} \
                 as file {declared}, but fd {fd} is not open in this process",
                Excerpt(variable)
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for std::io::Error {
    fn from(e: DecodeError) -> Self {
        Self::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 100;

    /// The identity the tests give the file at `fd`.
    fn id(fd: Fd) -> FileId {
        FileId::new(7, 1000 + u64::try_from(fd).unwrap())
    }

    /// What a process spawned with a handoff of the tests sees at its fds.
    fn observed(fd: Fd) -> Option<FileId> {
        (fd >= FIRST_INHERITED_FD).then(|| id(fd))
    }

    /// The identities of the fds `3..3+n`.
    fn ids(n: usize) -> Vec<FileId> {
        (FIRST_INHERITED_FD..).take(n).map(id).collect()
    }

    fn handoff() -> Handoff {
        let mut inventory = Inventory::new();
        inventory.push("http", FdKind::TcpListener).unwrap();
        inventory.push("admin", FdKind::UnixListener).unwrap();
        Handoff::for_spawn(PID, inventory, ids(3)).unwrap()
    }

    /// The valid encoding of [`handoff`], with `key` set to `value` (added if absent) or
    /// removed (`None`).
    fn with(key: &str, value: Option<&str>) -> Vec<(String, String)> {
        let mut vars = encode(&handoff());
        let old = vars.iter().position(|(k, _)| k == key);
        match (old, value) {
            (Some(i), Some(v)) => vars[i].1 = v.to_owned(),
            (Some(i), None) => {
                vars.remove(i);
            }
            (None, Some(v)) => vars.push((key.to_owned(), v.to_owned())),
            (None, None) => {}
        }
        vars
    }

    fn err(vars: Vec<(String, String)>) -> DecodeError {
        decode(vars, observed).unwrap_err()
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    /// The error for entry 4 with the value `value` followed by its identity.
    fn entry_err(value: &str) -> DecodeError {
        err(with("ENDLESS_FD_4", Some(&format!("{value}:7:1004"))))
    }

    #[test]
    fn encodes_the_documented_format() {
        let vars = encode(&handoff());
        let expected = [
            ("ENDLESS_VERSION", "2"),
            ("ENDLESS_PARENT_PID", "100"),
            ("ENDLESS_FDS", "2"),
            ("ENDLESS_FD_3", "tcp-listener:http:7:1003"),
            ("ENDLESS_FD_4", "unix-listener:admin:7:1004"),
            ("ENDLESS_READY_FD", "5:7:1005"),
        ];
        assert!(
            vars.iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .eq(expected)
        );
        assert_eq!(decode(vars, observed), Ok(Some(handoff())));
    }

    #[test]
    fn escapes_every_unsafe_byte_in_uppercase_hex() {
        let mut out = String::new();
        escape_into("aZ09._~- %:=/\0é", &mut out);
        assert_eq!(out, "aZ09._~-%20%25%3A%3D%2F%00%C3%A9");
        assert_eq!(unescape("v", &out).unwrap(), "aZ09._~- %:=/\0é");
        // Either case of hex digit, and needlessly escaped safe bytes, are accepted.
        assert_eq!(unescape("v", "%c3%A9%61").unwrap(), "éa");
        assert_eq!(unescape("v", "").unwrap(), "");
    }

    #[test]
    fn absent_variables_are_a_fresh_start() {
        let empty: [(&str, &str); 0] = [];
        assert_eq!(decode(empty, observed), Ok(None));
        let others = [
            ("PATH", "/bin"),
            ("ENDLESS_LOG", "x"),
            ("ENDLESS_FDSX", "1"),
        ];
        assert_eq!(decode(others, observed), Ok(None));
        assert_eq!(decode_systemd(others, PID), Ok(None));
        // LISTEN_FDNAMES alone does not make an activation (sd_listen_fds looks at the pid).
        assert_eq!(decode_systemd([("LISTEN_FDNAMES", "a")], PID), Ok(None));
    }

    #[test]
    fn foreign_endless_variables_are_ignored() {
        let mut vars = encode(&handoff());
        vars.push((s("ENDLESS_LOG"), s("\u{0}garbage")));
        vars.push((s("ENDLESS_FDS_EXTRA"), s("x")));
        assert_eq!(decode(vars, observed), Ok(Some(handoff())));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_keys_are_ignored_and_non_utf8_values_rejected() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        let mut vars: Vec<(OsString, OsString)> = encode(&handoff())
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        vars.push((
            OsString::from_vec(b"ENDLESS_FD_\xff".to_vec()),
            s("x").into(),
        ));
        vars.push((OsString::from_vec(b"ENDLESS_\xff".to_vec()), s("x").into()));
        assert_eq!(decode(vars.clone(), observed), Ok(Some(handoff())));

        let fds = vars.iter().position(|(k, _)| k == FDS_VAR).unwrap();
        vars[fds].1 = OsString::from_vec(b"2\xff".to_vec());
        assert_eq!(
            decode(vars, observed),
            Err(DecodeError::ValueNotUtf8 {
                variable: s(FDS_VAR),
                value: s("2\u{fffd}")
            })
        );
        let bad = OsString::from_vec(b"tcp-listener:\xff".to_vec());
        let mut vars = encode(&handoff());
        vars.retain(|(k, _)| k != "ENDLESS_FD_3");
        let mut vars: Vec<(OsString, OsString)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        vars.push((s("ENDLESS_FD_3").into(), bad));
        assert!(matches!(
            decode(vars, observed),
            Err(DecodeError::ValueNotUtf8 { variable, .. }) if variable == "ENDLESS_FD_3"
        ));
    }

    #[test]
    fn unsupported_version() {
        for v in ["1", "3", "0", "02", "2.0", "", "v2"] {
            assert_eq!(
                err(with(VERSION_VAR, Some(v))),
                DecodeError::UnsupportedVersion { found: s(v) }
            );
        }
    }

    #[test]
    fn missing_variable() {
        for var in [VERSION_VAR, PARENT_PID_VAR, FDS_VAR, READY_FD_VAR] {
            assert_eq!(
                err(with(var, None)),
                DecodeError::MissingVariable { variable: s(var) },
                "{var}"
            );
        }
    }

    #[test]
    fn duplicate_variable() {
        for (var, value) in [
            (VERSION_VAR, "1"),
            (PARENT_PID_VAR, "100"),
            (FDS_VAR, "2"),
            (READY_FD_VAR, "5"),
            ("ENDLESS_FD_3", "tcp-listener:http"),
        ] {
            let mut vars = encode(&handoff());
            vars.push((s(var), s(value)));
            assert_eq!(
                err(vars),
                DecodeError::DuplicateVariable { variable: s(var) },
                "{var}"
            );
        }
    }

    #[test]
    fn invalid_number() {
        for value in ["", "+2", "-2", " 2", "2 ", "02", "0x2", "2.0", "١"] {
            assert_eq!(
                err(with(FDS_VAR, Some(value))),
                DecodeError::InvalidNumber {
                    variable: s(FDS_VAR),
                    value: s(value)
                },
                "{value:?}"
            );
        }
        for (var, value) in [
            (READY_FD_VAR, "2147483648"),
            (PARENT_PID_VAR, "4294967296"),
            (PARENT_PID_VAR, "-1"),
        ] {
            let full = if var == READY_FD_VAR {
                format!("{value}:7:1005")
            } else {
                value.to_owned()
            };
            assert_eq!(
                err(with(var, Some(&full))),
                DecodeError::InvalidNumber {
                    variable: s(var),
                    value: s(value)
                }
            );
        }
        assert_eq!(parse_strict::<u32>("0"), Some(0));
        assert_eq!(parse_strict::<u32>("4294967295"), Some(u32::MAX));
        assert_eq!(parse_strict::<u32>("00"), None);
    }

    #[test]
    fn invalid_fd_variable() {
        for key in [
            "ENDLESS_FD_03",
            "ENDLESS_FD_3x",
            "ENDLESS_FD_3 ",
            "ENDLESS_FD_99999999999",
        ] {
            assert_eq!(
                err(with(key, Some("other:x"))),
                DecodeError::InvalidFdVariable { variable: s(key) },
                "{key}"
            );
        }
    }

    #[test]
    fn malformed_entry() {
        for value in [
            "unix-listener",
            "unix-listener:admin:7",
            "unix-listener:7:1004",
        ] {
            assert_eq!(
                err(with("ENDLESS_FD_4", Some(value))),
                DecodeError::MalformedEntry {
                    variable: s("ENDLESS_FD_4"),
                    value: s(value)
                },
                "{value}"
            );
        }
        for value in ["5", "5:7", "5:7:1005:1", "x"] {
            assert_eq!(
                err(with(READY_FD_VAR, Some(value))),
                DecodeError::MalformedEntry {
                    variable: s(READY_FD_VAR),
                    value: s(value)
                },
                "{value}"
            );
        }
    }

    #[test]
    fn unknown_kind() {
        for kind in ["", "TCP-LISTENER", "tcp", "unix-listener "] {
            assert_eq!(
                entry_err(&format!("{kind}:admin")),
                DecodeError::UnknownKind {
                    variable: s("ENDLESS_FD_4"),
                    kind: s(kind)
                }
            );
        }
    }

    #[test]
    fn invalid_escape() {
        for (name, offset) in [
            ("%", 0),
            ("a%4", 1),
            ("%G1", 0),
            ("%1g", 0),
            ("a b", 1),
            ("a:b", 1),
            ("a=b", 1),
            ("a%2", 1),
            ("é", 0),
            ("%+1", 0),
        ] {
            assert_eq!(
                entry_err(&format!("other:{name}")),
                DecodeError::InvalidEscape {
                    variable: s("ENDLESS_FD_4"),
                    value: s(name),
                    offset
                },
                "{name:?}"
            );
        }
    }

    #[test]
    fn name_not_utf8() {
        for name in ["%FF", "%C3", "a%C3%28"] {
            assert_eq!(
                entry_err(&format!("other:{name}")),
                DecodeError::NameNotUtf8 {
                    variable: s("ENDLESS_FD_4"),
                    value: s(name)
                }
            );
        }
    }

    #[test]
    fn name_too_long() {
        let at_limit = "a".repeat(MAX_NAME_LEN);
        assert!(
            decode(
                with("ENDLESS_FD_4", Some(&format!("other:{at_limit}:7:1004"))),
                observed
            )
            .is_ok()
        );
        for name in ["a".repeat(MAX_NAME_LEN + 1), "%41".repeat(MAX_NAME_LEN + 1)] {
            assert_eq!(
                entry_err(&format!("other:{name}")),
                DecodeError::NameTooLong {
                    variable: s("ENDLESS_FD_4"),
                    len: MAX_NAME_LEN + 1
                }
            );
        }
    }

    #[test]
    fn duplicate_name() {
        // Also when spelled differently: %68 is 'h'.
        for value in ["other:http", "tcp-listener:%68ttp"] {
            assert_eq!(
                entry_err(value),
                DecodeError::DuplicateName {
                    variable: s("ENDLESS_FD_4"),
                    name: s("http")
                }
            );
        }
    }

    #[test]
    fn duplicate_fd() {
        assert_eq!(
            err(with(READY_FD_VAR, Some("4:7:1004"))),
            DecodeError::DuplicateFd {
                variable: s(READY_FD_VAR),
                fd: 4
            }
        );
    }

    #[test]
    fn fd_below_first() {
        for fd in ["0", "2"] {
            assert_eq!(
                err(with(READY_FD_VAR, Some(&format!("{fd}:7:1005")))),
                DecodeError::FdBelowFirst {
                    variable: s(READY_FD_VAR),
                    fd: fd.parse().unwrap()
                }
            );
        }
        let mut vars = with("ENDLESS_FD_3", None);
        vars.push((s("ENDLESS_FD_2"), s("other:x")));
        assert_eq!(
            err(vars),
            DecodeError::FdBelowFirst {
                variable: s("ENDLESS_FD_2"),
                fd: 2
            }
        );
    }

    #[test]
    fn fd_out_of_range() {
        assert_eq!(
            err(with(READY_FD_VAR, Some("6:7:1006"))),
            DecodeError::FdOutOfRange {
                variable: s(READY_FD_VAR),
                fd: 6,
                max: 5
            }
        );
        // Entries 3 and 6, ready fd 5: fd 4 is a gap.
        let mut vars = with("ENDLESS_FD_4", None);
        vars.push((s("ENDLESS_FD_6"), s("other:x")));
        assert_eq!(
            err(vars),
            DecodeError::FdOutOfRange {
                variable: s("ENDLESS_FD_6"),
                fd: 6,
                max: 5
            }
        );
    }

    #[test]
    fn count_mismatch() {
        assert_eq!(
            err(with("ENDLESS_FD_4", None)),
            DecodeError::CountMismatch {
                variable: s(FDS_VAR),
                declared: 2,
                found: 1
            }
        );
        // Declared 3 with a ready fd at 6 that is in range, but only two entries.
        let mut vars = with(FDS_VAR, Some("3"));
        vars = vars
            .into_iter()
            .map(|(k, v)| {
                if k == READY_FD_VAR {
                    (k, s("6:7:1006"))
                } else {
                    (k, v)
                }
            })
            .collect();
        assert_eq!(
            err(vars),
            DecodeError::CountMismatch {
                variable: s(FDS_VAR),
                declared: 3,
                found: 2
            }
        );
    }

    #[test]
    fn too_many_entries() {
        let value = (MAX_ENTRIES + 1).to_string();
        assert_eq!(
            err(with(FDS_VAR, Some(&value))),
            DecodeError::TooManyEntries {
                variable: s(FDS_VAR),
                declared: MAX_ENTRIES + 1
            }
        );
    }

    #[test]
    fn a_grandchild_without_the_fds_refuses() {
        // It inherited the environment, but fds 3, 4, 5 are closed.
        let e = decode(encode(&handoff()), |_| None).unwrap_err();
        assert_eq!(
            e,
            DecodeError::NotTheDeclaredFile {
                variable: s("ENDLESS_FD_3"),
                fd: 3,
                declared: id(3),
                found: None
            }
        );
        assert!(e.is_not_for_this_process());
        assert!(!DecodeError::InvalidFdVariable { variable: s("x") }.is_not_for_this_process());
    }

    #[test]
    fn a_process_with_other_files_at_the_fds_refuses() {
        // Every fd is checked, the ready fd too: one other file is enough to refuse.
        for other in 3..=5 {
            let e = decode(encode(&handoff()), |fd| {
                if fd == other {
                    Some(FileId::new(7, 1))
                } else {
                    observed(fd)
                }
            })
            .unwrap_err();
            let variable = if other == 5 {
                s(READY_FD_VAR)
            } else {
                format!("ENDLESS_FD_{other}")
            };
            assert_eq!(
                e,
                DecodeError::NotTheDeclaredFile {
                    variable,
                    fd: other,
                    declared: id(other),
                    found: Some(FileId::new(7, 1))
                }
            );
        }
        // Same inode on another device is another file.
        let e = decode(encode(&handoff()), |fd| Some(FileId::new(8, id(fd).ino)));
        assert!(e.unwrap_err().is_not_for_this_process());
    }

    #[test]
    fn the_parent_pid_is_information_not_the_gate() {
        // The parent died while this process started: whatever getppid() says now, the fds
        // are the declared files, so they are adopted, and the dead parent is named.
        let h = decode(encode(&handoff()), observed).unwrap().unwrap();
        assert_eq!(h, handoff());
        assert_eq!(h.parent_pid, PID);
        assert_eq!(h.identity(3), Some(id(3)));
        assert_eq!(h.identity(5), Some(id(5)));
        assert_eq!(h.identity(6), None);
        assert_eq!(h.identity(2), None);
    }

    #[test]
    fn observes_each_fd_once_in_order_and_only_a_valid_format() {
        let mut seen = Vec::new();
        let _ = decode(encode(&handoff()), |fd| {
            seen.push(fd);
            observed(fd)
        });
        assert_eq!(seen, [3, 4, 5]);
        let mut seen = Vec::new();
        let _ = decode(with(FDS_VAR, Some("x")), |fd| {
            seen.push(fd);
            observed(fd)
        });
        assert_eq!(seen, []);
    }

    #[test]
    fn checks_version_then_format_then_identities() {
        // An unknown version wins over everything else.
        let mut vars = with(VERSION_VAR, Some("3"));
        vars.push((s("ENDLESS_FD_x"), s("?")));
        vars.push((s(FDS_VAR), s("7")));
        assert!(matches!(err(vars), DecodeError::UnsupportedVersion { .. }));
        // A malformed format wins over foreign fds.
        let mut vars = with(FDS_VAR, Some("x"));
        vars.push((s("ENDLESS_FD_x"), s("?")));
        assert_eq!(
            decode(vars, |_| None),
            Err(DecodeError::InvalidNumber {
                variable: s(FDS_VAR),
                value: s("x")
            })
        );
    }

    #[test]
    fn invalid_identity() {
        for (var, value, bad) in [
            ("ENDLESS_FD_4", "unix-listener:admin:07:1004", "07"),
            ("ENDLESS_FD_4", "unix-listener:admin:7:", ""),
            (
                "ENDLESS_FD_4",
                "unix-listener:admin:7:18446744073709551616",
                "18446744073709551616",
            ),
            (READY_FD_VAR, "5:-7:1005", "-7"),
            (READY_FD_VAR, "5:7:x", "x"),
        ] {
            assert_eq!(
                err(with(var, Some(value))),
                DecodeError::InvalidNumber {
                    variable: s(var),
                    value: s(bad)
                },
                "{value}"
            );
        }
        let max = format!("unix-listener:admin:{}:{}", u64::MAX, u64::MAX);
        let h = decode(with("ENDLESS_FD_4", Some(&max)), |fd| {
            if fd == 4 {
                Some(FileId::new(u64::MAX, u64::MAX))
            } else {
                observed(fd)
            }
        });
        assert_eq!(
            h.unwrap().unwrap().identity(4),
            Some(FileId::new(u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn handoff_new_checks_the_fd_rule_and_orders_entries() {
        let mut inv = Inventory::new();
        inv.insert("b", FdKind::Other, 4).unwrap();
        inv.insert("a", FdKind::Other, 3).unwrap();
        assert_eq!(
            Handoff::new(1, inv.clone(), 2, ids(3)),
            Err(HandoffError::FdBelowFirst { fd: 2 })
        );
        assert_eq!(
            Handoff::new(1, inv.clone(), 4, ids(3)),
            Err(HandoffError::DuplicateFd { fd: 4 })
        );
        assert_eq!(
            Handoff::new(1, inv.clone(), 6, ids(3)),
            Err(HandoffError::FdOutOfRange { fd: 6, max: 5 })
        );
        for n in [0, 2, 4] {
            assert_eq!(
                Handoff::new(1, inv.clone(), 5, ids(n)),
                Err(HandoffError::IdentityCount {
                    expected: 3,
                    found: n
                })
            );
        }
        let h = Handoff::new(1, inv.clone(), 5, ids(3)).unwrap();
        let fds: Vec<_> = h.inventory.iter().map(crate::Entry::fd).collect();
        assert_eq!(fds, [3, 4]);
        assert_eq!(decode(encode(&h), observed), Ok(Some(h.clone())));
        assert_eq!(h.check(), Ok(()));

        let mut gap = Inventory::new();
        gap.insert("a", FdKind::Other, 3).unwrap();
        gap.insert("b", FdKind::Other, 5).unwrap();
        // The ready fd may fill the hole the entries leave.
        assert!(Handoff::new(1, gap.clone(), 4, ids(3)).is_ok());
        assert_eq!(
            Handoff::for_spawn(1, gap.clone(), ids(3)),
            Err(HandoffError::DuplicateFd { fd: 5 })
        );
        gap.insert("c", FdKind::Other, 7).unwrap();
        assert_eq!(
            Handoff::new(1, gap, 4, ids(4)),
            Err(HandoffError::FdOutOfRange { fd: 7, max: 6 })
        );
        let empty = Handoff::for_spawn(1, Inventory::new(), ids(1)).unwrap();
        assert_eq!(empty.ready_fd, 3);
        assert_eq!(decode(encode(&empty), observed), Ok(Some(empty)));
    }

    #[test]
    fn check_finds_fields_changed_after_new() {
        let good = handoff();
        assert_eq!(good.check(), Ok(()));
        let mut h = good.clone();
        h.ready_fd = 2;
        assert_eq!(h.check(), Err(HandoffError::FdBelowFirst { fd: 2 }));
        h.ready_fd = 4;
        assert_eq!(h.check(), Err(HandoffError::DuplicateFd { fd: 4 }));
        h.ready_fd = 6;
        assert_eq!(h.check(), Err(HandoffError::FdOutOfRange { fd: 6, max: 5 }));
        let mut h = good;
        h.inventory = Inventory::new();
        assert_eq!(h.check(), Err(HandoffError::FdOutOfRange { fd: 5, max: 3 }));
    }

    #[test]
    fn handoff_error_messages() {
        assert_eq!(
            HandoffError::FdBelowFirst { fd: 2 }.to_string(),
            "ready fd 2 cannot be inherited: inherited fds start at 3"
        );
        assert_eq!(
            HandoffError::DuplicateFd { fd: 4 }.to_string(),
            "ready fd 4 is also the fd of an inventory entry"
        );
        assert_eq!(
            HandoffError::FdOutOfRange { fd: 9, max: 5 }.to_string(),
            "fd 9 is out of range: the entries and the ready fd must be exactly 3..=5"
        );
        let io: std::io::Error = HandoffError::DuplicateFd { fd: 4 }.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn is_reserved_covers_every_variable_written_or_read() {
        for (k, _) in encode(&handoff()) {
            assert!(is_reserved(OsStr::new(&k)), "{k}");
        }
        for k in [
            "ENDLESS_FD_0",
            "ENDLESS_FD_03",
            "ENDLESS_FD_3x",
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
        ] {
            assert!(is_reserved(OsStr::new(k)), "{k}");
        }
        for k in [
            "ENDLESS_",
            "ENDLESS_LOG",
            "ENDLESS_FDS2",
            "ENDLESS_FD_",
            "ENDLESS_FD_x",
            "ENDLESS_FD_LIMIT",
            "LISTEN_FDS_",
            "listen_fds",
            "PATH",
            "",
        ] {
            assert!(!is_reserved(OsStr::new(k)), "{k}");
        }
    }

    #[test]
    fn display_names_the_variable_and_shortens_the_value() {
        let long = "x".repeat(10_000);
        let e = DecodeError::InvalidNumber {
            variable: s(FDS_VAR),
            value: long,
        };
        let text = e.to_string();
        assert!(text.contains(FDS_VAR), "{text}");
        assert!(text.contains("10000 bytes"), "{text}");
        assert!(text.len() < 200, "{text}");
        let e = DecodeError::NotForThisProcess {
            intended: 7,
            actual: 8,
        };
        assert!(e.to_string().contains('7') && e.to_string().contains('8'));
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
        let io: std::io::Error = HandoffError::DuplicateFd { fd: 3 }.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn systemd_with_and_without_names() {
        let inv = decode_systemd(
            [
                ("LISTEN_PID", "9"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "web:%x"),
            ],
            9,
        )
        .unwrap()
        .unwrap();
        let got: Vec<_> = inv.iter().map(|e| (e.name(), e.kind(), e.fd())).collect();
        assert_eq!(
            got,
            [("web", FdKind::Unknown, 3), ("%x", FdKind::Unknown, 4)]
        );

        let inv = decode_systemd([("LISTEN_FDS", "2"), ("LISTEN_PID", "9")], 9)
            .unwrap()
            .unwrap();
        let got: Vec<_> = inv.iter().map(|e| (e.name(), e.fd())).collect();
        assert_eq!(got, [("unknown", 3), ("unknown#4", 4)]);

        let inv = decode_systemd(
            [
                ("LISTEN_FDS", "0"),
                ("LISTEN_PID", "9"),
                ("LISTEN_FDNAMES", ""),
            ],
            9,
        );
        assert_eq!(inv, Ok(Some(Inventory::new())));
    }

    #[test]
    fn systemd_errors() {
        let sd = |pid: &str, fds: &str, names: Option<&str>| {
            let mut vars = vec![(LISTEN_PID_VAR, pid), (LISTEN_FDS_VAR, fds)];
            if let Some(names) = names {
                vars.push((LISTEN_FDNAMES_VAR, names));
            }
            decode_systemd(vars, 9)
        };
        assert_eq!(
            sd("8", "1", None),
            Err(DecodeError::NotForThisProcess {
                intended: 8,
                actual: 9
            })
        );
        // The pid is checked before anything else.
        assert!(
            sd("8", "x", Some("a:b"))
                .unwrap_err()
                .is_not_for_this_process()
        );
        assert_eq!(
            sd("09", "1", None),
            Err(DecodeError::InvalidNumber {
                variable: s(LISTEN_PID_VAR),
                value: s("09")
            })
        );
        assert_eq!(
            sd("9", " 1", None),
            Err(DecodeError::InvalidNumber {
                variable: s(LISTEN_FDS_VAR),
                value: s(" 1")
            })
        );
        assert_eq!(
            sd("9", &(MAX_ENTRIES + 1).to_string(), None),
            Err(DecodeError::TooManyEntries {
                variable: s(LISTEN_FDS_VAR),
                declared: MAX_ENTRIES + 1
            })
        );
        for (n, names, found) in [("2", "a", 1), ("1", "a:b", 2), ("1", "", 0), ("0", ":", 2)] {
            assert_eq!(
                sd("9", n, Some(names)),
                Err(DecodeError::CountMismatch {
                    variable: s(LISTEN_FDNAMES_VAR),
                    declared: n.parse().unwrap(),
                    found
                }),
                "{names:?}"
            );
        }
        // "a", "a#5", "a" -> the third would become "a#5", which is taken.
        assert_eq!(
            sd("9", "3", Some("a:a#5:a")),
            Err(DecodeError::DuplicateName {
                variable: s(LISTEN_FDNAMES_VAR),
                name: s("a#5")
            })
        );
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            sd("9", "1", Some(&long)),
            Err(DecodeError::NameTooLong {
                variable: s(LISTEN_FDNAMES_VAR),
                len: MAX_NAME_LEN + 1
            })
        );
        assert_eq!(
            decode_systemd([(LISTEN_FDS_VAR, "1")], 9),
            Err(DecodeError::MissingVariable {
                variable: s(LISTEN_PID_VAR)
            })
        );
        assert_eq!(
            decode_systemd([(LISTEN_PID_VAR, "9")], 9),
            Err(DecodeError::MissingVariable {
                variable: s(LISTEN_FDS_VAR)
            })
        );
        assert_eq!(
            decode_systemd(
                [
                    (LISTEN_PID_VAR, "9"),
                    (LISTEN_FDS_VAR, "1"),
                    (LISTEN_FDS_VAR, "1")
                ],
                9
            ),
            Err(DecodeError::DuplicateVariable {
                variable: s(LISTEN_FDS_VAR)
            })
        );
    }
}
