//! The inventory of file descriptors a process hands to its successor.
//!
//! An [`Inventory`] is an ordered list of named [`Entry`]s. Each entry says what kind of
//! file descriptor it is ([`FdKind`]) and at which fd number the receiving process finds it.
//! Names are arbitrary UTF-8 strings and unique within one inventory; nothing is keyed by
//! address, so a listener bound to port 0 is handed over like any other.

use std::collections::HashMap;
use std::fmt;

use crate::Fd;

/// The lowest fd number an inherited descriptor may have: 0, 1 and 2 are stdio.
pub const FIRST_INHERITED_FD: Fd = 3;

/// The most entries one inventory may hold.
///
/// Far above any real server (a process rarely listens on more than a handful of sockets),
/// low enough that a hostile environment cannot make the decoder allocate without bound.
pub const MAX_ENTRIES: usize = 16_384;

/// The longest name an entry may have, in bytes.
pub const MAX_NAME_LEN: usize = 1_024;

/// What a file descriptor is.
///
/// The kind is a claim made by whoever built the inventory; a receiving adapter checks the
/// real descriptor against it (socket or not, stream or datagram, listening or not, family)
/// before it hands the descriptor to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FdKind {
    /// A listening TCP socket (IPv4 or IPv6).
    TcpListener,
    /// A listening Unix stream socket.
    UnixListener,
    /// A UDP socket (IPv4 or IPv6).
    UdpSocket,
    /// An established TCP connection.
    TcpStream,
    /// An established Unix stream connection.
    UnixStream,
    /// Any other descriptor (a pipe, a file, a socket of another type); adapters do not
    /// check it.
    Other,
    /// The source did not say (systemd socket activation passes no kinds); the adapter
    /// finds out by looking at the descriptor.
    Unknown,
}

impl FdKind {
    /// Every kind, in a fixed order (for tests and exhaustive tables).
    pub const ALL: [Self; 7] = [
        Self::TcpListener,
        Self::UnixListener,
        Self::UdpSocket,
        Self::TcpStream,
        Self::UnixStream,
        Self::Other,
        Self::Unknown,
    ];

    /// The stable token used for this kind in the environment encoding.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TcpListener => "tcp-listener",
            Self::UnixListener => "unix-listener",
            Self::UdpSocket => "udp",
            Self::TcpStream => "tcp-stream",
            Self::UnixStream => "unix-stream",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }

    /// Parses a token produced by [`FdKind::as_str`]; `None` for anything else.
    pub fn from_token(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == token)
    }

    /// Whether this kind is a listening socket.
    pub const fn is_listener(self) -> bool {
        matches!(self, Self::TcpListener | Self::UnixListener)
    }
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named file descriptor of an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    name: String,
    kind: FdKind,
    fd: Fd,
}

impl Entry {
    /// The entry's name, unique within its inventory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the descriptor is claimed to be.
    pub fn kind(&self) -> FdKind {
        self.kind
    }

    /// The fd number at which the receiving process finds the descriptor.
    pub fn fd(&self) -> Fd {
        self.fd
    }
}

/// Why an entry could not be added to an [`Inventory`] (a mistake of the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InventoryError {
    /// An entry with this name is already in the inventory.
    DuplicateName {
        /// The name given twice.
        name: String,
    },
    /// Another entry already sits at this fd number.
    DuplicateFd {
        /// The fd number given twice.
        fd: Fd,
    },
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong {
        /// The length of the name, in bytes.
        len: usize,
    },
    /// The fd number is below [`FIRST_INHERITED_FD`] (stdio is never part of an inventory).
    FdBelowFirst {
        /// The fd number given.
        fd: Fd,
    },
    /// The inventory already holds [`MAX_ENTRIES`] entries.
    TooManyEntries,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateName { name } => {
                write!(f, "the inventory already has an entry named {name:?}")
            }
            Self::DuplicateFd { fd } => write!(f, "the inventory already has an entry at fd {fd}"),
            Self::NameTooLong { len } => write!(
                f,
                "entry name is {len} bytes long, the limit is {MAX_NAME_LEN}"
            ),
            Self::FdBelowFirst { fd } => write!(
                f,
                "fd {fd} cannot be inherited: inherited fds start at {FIRST_INHERITED_FD}"
            ),
            Self::TooManyEntries => {
                write!(f, "the inventory is full ({MAX_ENTRIES} entries)")
            }
        }
    }
}

impl std::error::Error for InventoryError {}

impl From<InventoryError> for std::io::Error {
    fn from(e: InventoryError) -> Self {
        Self::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// An ordered set of named file descriptors, as a receiving process sees them.
///
/// # Examples
///
/// ```
/// use endless_core::{FdKind, Inventory};
///
/// let mut inv = Inventory::new();
/// inv.push("http", FdKind::TcpListener)?;
/// inv.push("admin", FdKind::UnixListener)?;
/// assert_eq!(inv.get("admin").map(|e| e.fd()), Some(4));
/// assert!(inv.push("http", FdKind::UdpSocket).is_err());
/// # Ok::<(), endless_core::InventoryError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    entries: Vec<Entry>,
    // Indexes into `entries`, so that building and decoding large inventories stays linear.
    by_name: HashMap<String, usize>,
    by_fd: HashMap<Fd, usize>,
    max_fd: Option<Fd>,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry at the next fd number: 3 for the first entry, then one above the
    /// highest fd number in use. This is where the renumbering plan puts it in the child.
    pub fn push(&mut self, name: impl Into<String>, kind: FdKind) -> Result<Fd, InventoryError> {
        let fd = self
            .max_fd
            .map_or(FIRST_INHERITED_FD, |max| max.saturating_add(1));
        self.insert(name, kind, fd)?;
        Ok(fd)
    }

    /// Adds an entry at a given fd number.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        kind: FdKind,
        fd: Fd,
    ) -> Result<(), InventoryError> {
        let name = name.into();
        if self.entries.len() >= MAX_ENTRIES {
            return Err(InventoryError::TooManyEntries);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(InventoryError::NameTooLong { len: name.len() });
        }
        if fd < FIRST_INHERITED_FD {
            return Err(InventoryError::FdBelowFirst { fd });
        }
        if self.by_name.contains_key(&name) {
            return Err(InventoryError::DuplicateName { name });
        }
        if self.by_fd.contains_key(&fd) {
            return Err(InventoryError::DuplicateFd { fd });
        }
        let index = self.entries.len();
        self.by_name.insert(name.clone(), index);
        self.by_fd.insert(fd, index);
        self.max_fd = Some(self.max_fd.map_or(fd, |max| max.max(fd)));
        self.entries.push(Entry { name, kind, fd });
        Ok(())
    }

    /// The entry with this name, if any.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The entry at this fd number, if any.
    pub fn get_fd(&self, fd: Fd) -> Option<&Entry> {
        self.by_fd.get(&fd).map(|&i| &self.entries[i])
    }

    /// The entries, in the order they were added.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// An iterator over the entries, in the order they were added.
    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the inventory has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest fd number in use, if any.
    pub fn max_fd(&self) -> Option<Fd> {
        self.max_fd
    }
}

impl<'a> IntoIterator for &'a Inventory {
    type Item = &'a Entry;
    type IntoIter = std::slice::Iter<'a, Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_assigns_consecutive_fds_from_three() {
        let mut inv = Inventory::new();
        assert_eq!(inv.push("a", FdKind::TcpListener), Ok(3));
        assert_eq!(inv.push("b", FdKind::UdpSocket), Ok(4));
        assert_eq!(inv.push("", FdKind::Other), Ok(5));
        assert_eq!(inv.len(), 3);
        assert_eq!(inv.get("b").unwrap().kind(), FdKind::UdpSocket);
        assert_eq!(inv.get_fd(5).unwrap().name(), "");
    }

    #[test]
    fn rejects_duplicates_and_bad_fds() {
        let mut inv = Inventory::new();
        inv.push("a", FdKind::TcpListener).unwrap();
        assert_eq!(
            inv.push("a", FdKind::TcpListener),
            Err(InventoryError::DuplicateName { name: "a".into() })
        );
        assert_eq!(
            inv.insert("b", FdKind::Other, 3),
            Err(InventoryError::DuplicateFd { fd: 3 })
        );
        assert_eq!(
            inv.insert("c", FdKind::Other, 2),
            Err(InventoryError::FdBelowFirst { fd: 2 })
        );
        assert_eq!(
            inv.push("x".repeat(MAX_NAME_LEN + 1), FdKind::Other),
            Err(InventoryError::NameTooLong {
                len: MAX_NAME_LEN + 1
            })
        );
        assert_eq!(inv.len(), 1);
    }

    #[test]
    fn getters_follow_the_entries() {
        let mut inv = Inventory::new();
        assert!(inv.is_empty());
        assert_eq!(inv.max_fd(), None);
        inv.insert("high", FdKind::Other, 9).unwrap();
        inv.insert("low", FdKind::Other, 5).unwrap();
        assert!(!inv.is_empty());
        assert_eq!(inv.max_fd(), Some(9));
        // A failed insert changes nothing.
        assert!(inv.insert("low", FdKind::Other, 20).is_err());
        assert_eq!(inv.max_fd(), Some(9));
        assert_eq!(inv.push("next", FdKind::Other), Ok(10));
        assert_eq!(inv.max_fd(), Some(10));
    }

    #[test]
    fn only_listening_sockets_are_listeners() {
        let listeners: Vec<FdKind> = FdKind::ALL
            .into_iter()
            .filter(|k| k.is_listener())
            .collect();
        assert_eq!(listeners, [FdKind::TcpListener, FdKind::UnixListener]);
    }

    #[test]
    fn display_messages() {
        for kind in FdKind::ALL {
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(FdKind::UdpSocket.to_string(), "udp");
        let cases = [
            (
                InventoryError::DuplicateName {
                    name: "http".into(),
                },
                "the inventory already has an entry named \"http\"",
            ),
            (
                InventoryError::DuplicateFd { fd: 4 },
                "the inventory already has an entry at fd 4",
            ),
            (
                InventoryError::NameTooLong { len: 2000 },
                "entry name is 2000 bytes long, the limit is 1024",
            ),
            (
                InventoryError::FdBelowFirst { fd: 1 },
                "fd 1 cannot be inherited: inherited fds start at 3",
            ),
            (
                InventoryError::TooManyEntries,
                "the inventory is full (16384 entries)",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
        let io: std::io::Error = InventoryError::TooManyEntries.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn kind_tokens_round_trip() {
        for kind in FdKind::ALL {
            assert_eq!(FdKind::from_token(kind.as_str()), Some(kind));
        }
        assert_eq!(FdKind::from_token("TCP-LISTENER"), None);
    }
}
