//! Application state handed to the next generation: a cache, a rate limiter's counters, a
//! session table — what belongs to the whole process rather than to one connection
//! ([`crate::takeover`] moves the latter).
//!
//! # The exchange
//!
//! 1. The serving generation registers a *provider* with
//!    [`Endless::hand_over_state`](crate::Endless::hand_over_state): an application
//!    version (the application's own number for the layout of its bytes) and a closure that
//!    returns the bytes.
//! 2. At each restart, the provider runs when the successor is about to be spawned (so the
//!    state is as fresh as it can be), on a thread of its own: the driver goes on serving
//!    signals and the control socket meanwhile, and never runs application code. Its bytes
//!    are written, behind the header of [`endless_core::state`] (magic, format, the
//!    application version, length, CRC-32), to an anonymous file (a sealed `memfd` on
//!    Linux, Android and FreeBSD; elsewhere a file in the temp directory, unlinked at once)
//!    that the successor inherits as one more fd of the handoff, named
//!    `endless.state` ([`INVENTORY_NAME`]; names that start with `endless.` are endless'
//!    own).
//! 3. The successor reads it, once, before it reports ready, with
//!    [`Endless::inherited_state`](crate::Endless::inherited_state)`(expected_version)`:
//!    `Ok(Some(bytes))`, `Ok(None)` on a fresh start or when the predecessor sent none, or
//!    a [`StateError`].
//!
//! # Rules
//!
//! - **Bounded.** At most [`DEFAULT_MAX_LEN`] (64 MiB) unless
//!   [`Builder::max_state_len`](crate::Builder::max_state_len) says otherwise, enforced on
//!   both sides: a predecessor does not send more than its bound, a successor does not
//!   read (or allocate for) more than its own.
//! - **A failed provider does not stop the restart.** A provider that panics, or returns
//!   more than the bound, is logged as an error, and the successor is spawned without
//!   state (it reads `Ok(None)`). Refusing the restart instead would leave a service with a
//!   buggy or grown provider unable to deploy the fix; losing a cache costs less. The
//!   running process keeps serving either way.
//! - **A provider that never returns** holds back only the restart: the successor is not
//!   spawned, the upgrade timeout fails the restart, and a result that comes later is
//!   dropped. The provider's thread cannot be stopped; keep providers quick (they run
//!   while the process serves, so take a snapshot, do not stop the world).
//! - **Read before ready, once.** A second call is [`StateError::AlreadyRead`]; a first call
//!   after [`ready`](crate::Endless::ready) is [`StateError::AfterReady`] (the state was
//!   dropped at ready). Both hold on a fresh start too, so that the mistake shows before
//!   the first restart. State that was sent and never read is dropped at `ready` with a
//!   warning naming its version and size: a successor that expects none.
//! - **Versions are the application's.** A successor that expects another version gets
//!   [`StateError::VersionMismatch`], naming both, and starts without the state. Bump the
//!   version when the layout changes in a way the successor cannot read.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use endless_unix::{Endless, Net};
//! use endless_unix::state::StateError;
//!
//! /// The layout of our state: one big-endian `u64`.
//! const HITS_V1: u32 = 1;
//!
//! # fn server<N: Net>() -> Result<(), Box<dyn std::error::Error>> {
//! let endless = Endless::<N>::builder().start()?;
//! let hits = Arc::new(AtomicU64::new(0));
//! match endless.inherited_state(HITS_V1) {
//!     Ok(Some(bytes)) => {
//!         let bytes: [u8; 8] = bytes.as_slice().try_into()?;
//!         hits.store(u64::from_be_bytes(bytes), Ordering::SeqCst);
//!     }
//!     Ok(None) => {} // a fresh start, or the old generation sent nothing
//!     Err(StateError::VersionMismatch { found, .. }) => {
//!         eprintln!("state of version {found} is not ours: starting cold");
//!     }
//!     Err(e) => eprintln!("starting cold: {e}"),
//! }
//! let snapshot = Arc::clone(&hits);
//! endless.hand_over_state(HITS_V1, move || {
//!     snapshot.load(Ordering::SeqCst).to_be_bytes().to_vec()
//! });
//! // … listeners …
//! endless.ready();
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use endless_core::state::{HEADER_LEN, Header};

pub use endless_core::state::{BlobError, DEFAULT_MAX_LEN};

use crate::sys;

/// The name of the application state's fd in the handoff.
pub const INVENTORY_NAME: &str = "endless.state";

/// The prefix of the names endless gives its own fds in the handoff; an application may not
/// name a listener so.
pub const RESERVED_PREFIX: &str = "endless.";

/// Why the state handed over by the previous generation could not be read
/// ([`Endless::inherited_state`](crate::Endless::inherited_state)).
///
/// Sorted by whose fault it is: the two generations disagree
/// ([`VersionMismatch`](Self::VersionMismatch), [`TooLarge`](Self::TooLarge)), the bytes
/// are bad ([`Corrupt`](Self::Corrupt)), the system failed ([`Io`](Self::Io)), or the
/// application asked wrongly ([`AlreadyRead`](Self::AlreadyRead),
/// [`AfterReady`](Self::AfterReady)).
#[derive(Debug)]
#[non_exhaustive]
pub enum StateError {
    /// The previous generation sent state of another application version.
    VersionMismatch {
        /// The version this process asked for.
        expected: u32,
        /// The version the previous generation sent.
        found: u32,
    },
    /// The state is larger than this process accepts
    /// ([`Builder::max_state_len`](crate::Builder::max_state_len)); nothing was allocated
    /// for it.
    TooLarge {
        /// The length the previous generation declared, in bytes.
        len: u64,
        /// This process's maximum, in bytes.
        max: usize,
    },
    /// The bytes are not a well-formed state blob: truncated, corrupt (checksum), or not
    /// written by endless at all.
    Corrupt(BlobError),
    /// Reading the inherited file failed.
    Io(io::Error),
    /// The state was asked for before, in this process: it is read once.
    AlreadyRead,
    /// The state was asked for after [`ready`](crate::Endless::ready), which drops it.
    AfterReady,
}

impl From<BlobError> for StateError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::VersionMismatch { expected, found } => {
                Self::VersionMismatch { expected, found }
            }
            BlobError::TooLarge { len, max } => Self::TooLarge { len, max },
            other => Self::Corrupt(other),
        }
    }
}

impl From<io::Error> for StateError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VersionMismatch { expected, found } => write!(
                f,
                "the previous generation handed over application state of version {found}, \
                 this process expects version {expected}"
            ),
            Self::TooLarge { len, max } => write!(
                f,
                "the previous generation handed over {len} bytes of application state, \
                 this process accepts at most {max}"
            ),
            Self::Corrupt(e) => write!(f, "unusable application state: {e}"),
            Self::Io(e) => write!(f, "cannot read the application state: {e}"),
            Self::AlreadyRead => f.write_str("the application state was already read"),
            Self::AfterReady => f.write_str(
                "the application state is read before ready: it was dropped when this \
                 process reported ready",
            ),
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Corrupt(e) => Some(e),
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StateError> for io::Error {
    fn from(e: StateError) -> Self {
        let kind = match &e {
            StateError::Io(e) => e.kind(),
            StateError::AlreadyRead | StateError::AfterReady => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        Self::new(kind, e)
    }
}

/// What the application registered to produce its state at each restart.
#[derive(Clone)]
pub(crate) struct Provider {
    pub(crate) version: u32,
    pub(crate) produce: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why no state goes to the successor (logged; the restart goes on without it).
#[derive(Debug)]
pub(crate) enum ProvideError {
    /// The provider panicked, with this message.
    Panicked(String),
    /// It returned more than the bound.
    Blob(BlobError),
    /// The file could not be made or written.
    Io(io::Error),
}

impl fmt::Display for ProvideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Panicked(message) => write!(f, "the state provider panicked: {message}"),
            Self::Blob(e) => write!(f, "the state provider returned {e}"),
            Self::Io(e) => write!(f, "cannot write the application state: {e}"),
        }
    }
}

impl std::error::Error for ProvideError {}

/// Runs `provider` (a panic is caught) and writes what it returns, with its header, to a
/// new anonymous file, sealed where the system can. Returns the file and the header.
pub(crate) fn produce(provider: &Provider, max: usize) -> Result<(File, Header), ProvideError> {
    let payload = panic::catch_unwind(AssertUnwindSafe(|| (provider.produce)()))
        .map_err(|panic| ProvideError::Panicked(panic_message(panic.as_ref())))?;
    let header = Header::new(provider.version, &payload, max).map_err(ProvideError::Blob)?;
    let write = || -> io::Result<File> {
        let mut file = sys::anonymous_file("endless-state")?;
        file.write_all(&header.encode())?;
        file.write_all(&payload)?;
        sys::seal(&file);
        Ok(file)
    };
    Ok((write().map_err(ProvideError::Io)?, header))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".to_owned())
}

/// The header of the state in `file`, checked against `max` (see [`Header::decode`]).
fn read_header(file: &File, max: usize) -> Result<Header, StateError> {
    let mut buf = [0; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Header::decode(&buf[..filled], max)?)
}

/// Reads and checks the state in `file` (from offset 0, whatever the file's position):
/// its payload, if it is of `expected` version and at most `max` bytes.
pub(crate) fn read(file: &File, expected: u32, max: usize) -> Result<Vec<u8>, StateError> {
    let header = read_header(file, max)?;
    let size = file.metadata()?.len();
    let total = header.total_len();
    if size < total {
        return Err(BlobError::Truncated {
            expected: total,
            actual: size,
        }
        .into());
    }
    if size > total {
        return Err(BlobError::TrailingBytes {
            expected: total,
            actual: size,
        }
        .into());
    }
    // At most `max`, which is a `usize`: the conversion is exact.
    let mut payload = vec![0; usize::try_from(header.len).unwrap_or(max)];
    file.read_exact_at(&mut payload, HEADER_LEN as u64)
        .map_err(|e| match e.kind() {
            // It shrank under us (only a file that is not sealed can).
            io::ErrorKind::UnexpectedEof => StateError::Corrupt(BlobError::Truncated {
                expected: total,
                actual: size,
            }),
            _ => StateError::Io(e),
        })?;
    header.check(&payload, expected)?;
    Ok(payload)
}

/// The inherited state as this process sees it.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Not asked for yet: the file, if the previous generation sent one.
    Unread(Option<File>),
    /// Asked for (whatever the answer).
    Read,
    /// Dropped at ready before anyone asked.
    Dropped,
}

impl Slot {
    /// The state, the first time (see the module docs for the rules).
    pub(crate) fn take(
        &mut self,
        expected: u32,
        max: usize,
    ) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Read => Err(StateError::AlreadyRead),
            Self::Dropped => Err(StateError::AfterReady),
            Self::Unread(file) => {
                let file = file.take();
                *self = Self::Read;
                match file {
                    None => Ok(None),
                    Some(file) => read(&file, expected, max).map(Some),
                }
            }
        }
    }

    /// At ready: drops state nobody asked for, with a warning that names it.
    pub(crate) fn drop_unread(&mut self, max: usize) {
        let Self::Unread(file) = self else {
            return;
        };
        if let Some(file) = file.take() {
            match read_header(&file, max) {
                Ok(header) => tracing::warn!(
                    version = header.version,
                    bytes = header.len,
                    "the previous generation handed over application state that this process \
                     did not read before ready; it is dropped (read it with \
                     Endless::inherited_state)"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "the previous generation handed over application state that this process \
                     did not read before ready; it is dropped"
                ),
            }
        }
        *self = Self::Dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    fn provider(version: u32, f: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> Provider {
        Provider {
            version,
            produce: Arc::new(f),
        }
    }

    #[test]
    fn produced_state_reads_back_whatever_the_file_position() {
        let (mut file, header) = produce(&provider(3, || b"sessions".to_vec()), 100).unwrap();
        assert_eq!((header.version, header.len), (3, 8));
        // Written, so the position is at the end: reading must not depend on it.
        assert_eq!(file.stream_position().unwrap(), 29);
        assert_eq!(read(&file, 3, 100).unwrap(), b"sessions");
        file.seek(SeekFrom::Start(5)).unwrap();
        assert_eq!(read(&file, 3, 100).unwrap(), b"sessions");
    }

    #[test]
    fn the_reader_enforces_its_own_bound_and_version() {
        let (file, _) = produce(&provider(1, || vec![7; 50]), 100).unwrap();
        assert!(matches!(
            read(&file, 1, 49),
            Err(StateError::TooLarge { len: 50, max: 49 })
        ));
        assert!(matches!(
            read(&file, 2, 100),
            Err(StateError::VersionMismatch {
                expected: 2,
                found: 1
            })
        ));
    }

    #[test]
    fn a_failing_provider_is_an_error_not_a_panic() {
        let e = produce(&provider(1, || panic!("boom")), 100).unwrap_err();
        assert_eq!(e.to_string(), "the state provider panicked: boom");
        let e = produce(&provider(1, || vec![0; 101]), 100).unwrap_err();
        assert!(matches!(
            e,
            ProvideError::Blob(BlobError::TooLarge { len: 101, max: 100 })
        ));
    }

    #[test]
    fn truncated_trailing_and_foreign_files() {
        let blob = endless_core::state::encode(1, b"abcdef", 100).unwrap();
        let file_with = |bytes: &[u8]| {
            let mut file = sys::unlinked_file(&std::env::temp_dir(), "endless-test").unwrap();
            file.write_all(bytes).unwrap();
            file
        };
        assert!(matches!(
            read(&file_with(&blob[..blob.len() - 2]), 1, 100),
            Err(StateError::Corrupt(BlobError::Truncated {
                expected: 27,
                actual: 25
            }))
        ));
        let mut longer = blob.clone();
        longer.push(b'!');
        assert!(matches!(
            read(&file_with(&longer), 1, 100),
            Err(StateError::Corrupt(BlobError::TrailingBytes { .. }))
        ));
        assert!(matches!(
            read(&file_with(b"#!/bin/sh\n"), 1, 100),
            Err(StateError::Corrupt(BlobError::BadMagic))
        ));
        assert!(matches!(
            read(&file_with(b""), 1, 100),
            Err(StateError::Corrupt(BlobError::Truncated { .. }))
        ));
        let mut corrupt = blob;
        *corrupt.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read(&file_with(&corrupt), 1, 100),
            Err(StateError::Corrupt(BlobError::ChecksumMismatch { .. }))
        ));
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_memfd_is_sealed_against_writes() {
        let (mut file, _) = produce(&provider(1, || b"x".to_vec()), 100).unwrap();
        assert!(file.write_all(b"more").is_err());
        assert!(file.set_len(0).is_err());
    }

    #[test]
    fn the_slot_is_read_once_and_before_ready() {
        let (file, _) = produce(&provider(1, || b"x".to_vec()), 100).unwrap();
        let mut slot = Slot::Unread(Some(file));
        assert_eq!(slot.take(1, 100).unwrap(), Some(b"x".to_vec()));
        assert!(matches!(slot.take(1, 100), Err(StateError::AlreadyRead)));
        slot.drop_unread(100);
        assert!(matches!(slot.take(1, 100), Err(StateError::AlreadyRead)));

        // A failed read counts as the read.
        let (file, _) = produce(&provider(1, || b"x".to_vec()), 100).unwrap();
        let mut slot = Slot::Unread(Some(file));
        assert!(matches!(
            slot.take(2, 100),
            Err(StateError::VersionMismatch { .. })
        ));
        assert!(matches!(slot.take(1, 100), Err(StateError::AlreadyRead)));

        // A fresh start: none, once.
        let mut slot = Slot::Unread(None);
        assert_eq!(slot.take(1, 100).unwrap(), None);
        assert!(matches!(slot.take(1, 100), Err(StateError::AlreadyRead)));

        // Not read before ready: dropped.
        let (file, _) = produce(&provider(1, || b"x".to_vec()), 100).unwrap();
        let mut slot = Slot::Unread(Some(file));
        slot.drop_unread(100);
        assert!(matches!(slot, Slot::Dropped));
        assert!(matches!(slot.take(1, 100), Err(StateError::AfterReady)));
    }

    #[test]
    fn errors_convert_and_display() {
        let e = StateError::from(BlobError::VersionMismatch {
            expected: 2,
            found: 1,
        });
        assert_eq!(
            e.to_string(),
            "the previous generation handed over application state of version 1, this \
             process expects version 2"
        );
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidData);
        let e = StateError::from(BlobError::TooLarge { len: 9, max: 8 });
        assert!(matches!(e, StateError::TooLarge { len: 9, max: 8 }));
        let e = StateError::from(BlobError::BadMagic);
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            io::Error::from(StateError::Io(io::ErrorKind::BrokenPipe.into())).kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
