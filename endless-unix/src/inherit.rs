//! Adopting the file descriptors this process inherited.
//!
//! A process finds inherited descriptors in one of two ways:
//!
//! - from a previous generation of itself (an *endless parent*), described by the
//!   `ENDLESS_*` variables of [`endless_core::env`], with a readiness channel the parent
//!   waits on;
//! - from systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), on a
//!   fresh start.
//!
//! [`Inherited::from_env`] reads the environment, checks every declared descriptor against
//! what it really is, and only then takes ownership of them all. A process whose parent
//! passed bad descriptors fails here, at start-up, with a clear [`AdoptError`], and its
//! parent, which is still serving, sees it exit before it reported ready. After adoption,
//! every descriptor has `FD_CLOEXEC` set, so no program this process runs inherits it.
//!
//! The application then [takes](Inherited::take) its descriptors by name, the adapter takes
//! the [readiness channel](Inherited::take_ready_channel), and once the application is
//! ready, whatever nobody claimed is [closed](Inherited::close_unclaimed).
//!
//! # Examples
//!
//! ```no_run
//! use std::net::TcpListener;
//! use endless_core::FdKind;
//! use endless_unix::inherit::Inherited;
//!
//! let inherited = Inherited::from_env()?;
//! let listener = match inherited.take("http", FdKind::TcpListener)? {
//!     Some(fd) => TcpListener::from(fd),
//!     None => TcpListener::bind("127.0.0.1:8080")?,
//! };
//! // … build the application, then report ready and drop what nobody took:
//! if let Some(channel) = inherited.take_ready_channel() {
//!     endless_unix::spawn::send_readiness(channel)?;
//! }
//! for name in inherited.close_unclaimed() {
//!     eprintln!("closed inherited fd {name:?}: nobody claimed it");
//! }
//! # drop(listener);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use endless_core::env::{self, DecodeError, Handoff};
use endless_core::{FdKind, Inventory, Origin};
use rustix::fs::OFlags;
use rustix::io::{Errno, FdFlags};
use socket2::{Domain, SockRef, Type};

use crate::sys;

/// The descriptors this process inherited, adopted and checked, waiting to be taken by name.
///
/// Shared freely between threads (`Send + Sync`; a mutex inside). Every descriptor is owned:
/// those still here when the value is dropped are closed.
///
/// # Examples
///
/// ```
/// use endless_unix::core::{FdKind, Origin};
/// use endless_unix::inherit::Inherited;
///
/// // Once, early: what the previous generation (or systemd) handed over.
/// let inherited = Inherited::from_env()?;
/// if inherited.origin() == Origin::Fresh {
///     assert_eq!(inherited.kind("http"), None); // nothing inherited: bind
/// }
/// match inherited.take("http", FdKind::TcpListener)? {
///     Some(fd) => drop(std::net::TcpListener::from(fd)), // serve the inherited socket
///     None => { /* bind a fresh one */ }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Inherited {
    origin: Origin,
    parent_pid: Option<u32>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// In inventory order (by fd).
    entries: Vec<Slot>,
    /// The index in `entries` of each name (names are unique in an inventory): a process
    /// that takes thousands of descriptors by name finds each in constant time, not by
    /// comparing it with every name before it.
    by_name: HashMap<String, usize>,
    ready: Option<OwnedFd>,
}

impl State {
    /// The entry `name` if it is still here (not taken, not closed).
    fn present(&mut self, name: &str) -> Option<&mut Slot> {
        let &index = self.by_name.get(name)?;
        self.entries.get_mut(index).filter(|s| s.fd.is_some())
    }
}

#[derive(Debug)]
struct Slot {
    name: String,
    /// The declared kind, or for [`FdKind::Unknown`] the probed one.
    kind: FdKind,
    /// `None` once taken or closed.
    fd: Option<OwnedFd>,
}

impl Inherited {
    /// Reads this process's environment and adopts the descriptors it describes.
    ///
    /// The `ENDLESS_*` variables come first ([`env::decode`], which compares the identity
    /// each declares for its fd with what `fstat` says of that fd in this process); if there
    /// are none, systemd's `LISTEN_*` ([`env::decode_systemd`] with this process's pid).
    /// Variables meant for another process ([`DecodeError::NotTheDeclaredFile`], e.g.
    /// inherited by a subprocess of a server, which gets the environment but not the fds, or
    /// by a command-line tool the server ran; [`DecodeError::NotForThisProcess`] for
    /// systemd's) are not an error: a warning is logged and they are ignored (for
    /// `ENDLESS_*`, systemd's variables are then looked at as if they were absent). Any
    /// other malformed variable is an error.
    ///
    /// The parent pid decides nothing: a process whose endless parent died while it started
    /// (its parent is now init or a subreaper) still holds the fds and adopts them; it is
    /// then the only generation left, and serves as the service's main process (its
    /// readiness report reaches no one, which is logged and not fatal). A warning says so.
    ///
    /// Every declared descriptor must be open and, unless its kind is [`FdKind::Other`],
    /// really be of its declared kind (a [`FdKind::Unknown`] one, as systemd passes them, is
    /// given the kind it really has); the readiness channel must be a pipe or socket open for
    /// writing. Each gets `FD_CLOEXEC` as soon as it is found open. Nothing is adopted
    /// unless every check passes.
    ///
    /// # Errors
    ///
    /// [`AdoptError`]: malformed variables, or descriptors that are missing or not what
    /// they are declared to be. The process should fail to start: its parent keeps serving.
    pub fn from_env() -> Result<Self, AdoptError> {
        // The process environment describes descriptors this process inherited and nothing
        // else owns: the contract of `from_vars` holds.
        Self::decode_and_adopt(std::env::vars_os(), sys::getppid(), sys::getpid())
    }

    /// [`Inherited::from_env`] with the environment and pids given (for tests, or for an
    /// application that read its environment early).
    ///
    /// # Safety
    ///
    /// `parent_pid` is only compared with the parent pid the variables name, to log when this
    /// process's parent is not the generation that spawned it.
    ///
    /// Like `from_env`, this takes ownership of the descriptors the variables describe, as
    /// [`OwnedFd::from_raw_fd`](std::os::fd::FromRawFd::from_raw_fd) does: the variables
    /// must describe descriptors that nothing else in this process owns (inherited ones, or
    /// ones released with `IntoRawFd::into_raw_fd`), or the `Inherited` would close
    /// descriptors that belong to someone else. A descriptor number that an earlier
    /// `Inherited` of this process adopted is refused ([`AdoptError::AlreadyAdopted`]).
    #[allow(unsafe_code)] // an `unsafe fn` for its contract; its body is safe code
    pub unsafe fn from_vars<I, K, V>(
        vars: I,
        parent_pid: u32,
        own_pid: u32,
    ) -> Result<Self, AdoptError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::decode_and_adopt(vars, parent_pid, own_pid)
    }

    fn decode_and_adopt<I, K, V>(vars: I, parent_pid: u32, own_pid: u32) -> Result<Self, AdoptError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let vars: Vec<(K, V)> = vars.into_iter().collect();
        let pairs = || vars.iter().map(|(k, v)| (k.as_ref(), v.as_ref()));
        // Only the numbers the variables declare are observed: the contract of
        // `sys::with_declared`.
        match env::decode(pairs(), sys::observe_declared) {
            Ok(Some(handoff)) => {
                if handoff.parent_pid != parent_pid {
                    tracing::warn!(
                        spawned_by = handoff.parent_pid,
                        parent = parent_pid,
                        "the parent of this process is not the generation that spawned it \
                         (that generation died, or a wrapper started this process without \
                         exec); adopting the fds it handed over, which are the declared \
                         files"
                    );
                }
                return Self::adopt_handoff(handoff);
            }
            Ok(None) => {}
            Err(e) if e.is_not_for_this_process() => tracing::warn!(
                "ignoring the inherited {}* variables ({}, {}, {}, {}…): {e}",
                env::PREFIX,
                env::PARENT_PID_VAR,
                env::FDS_VAR,
                env::READY_FD_VAR,
                env::FD_VAR_PREFIX,
            ),
            Err(e) => return Err(AdoptError::Decode(e)),
        }
        match env::decode_systemd(pairs(), own_pid) {
            Ok(Some(inventory)) => Self::adopt(Origin::Fresh, None, &inventory, None),
            Ok(None) => Ok(Self::empty()),
            Err(e) if e.is_not_for_this_process() => {
                tracing::warn!(
                    "ignoring the inherited systemd socket activation variables ({}, {}, {}): {e}",
                    env::LISTEN_PID_VAR,
                    env::LISTEN_FDS_VAR,
                    env::LISTEN_FDNAMES_VAR,
                );
                Ok(Self::empty())
            }
            Err(e) => Err(AdoptError::Decode(e)),
        }
    }

    /// Nothing inherited: a fresh start.
    pub fn empty() -> Self {
        Self::from_parts(Origin::Fresh, None, Vec::new(), None)
    }

    fn adopt_handoff(handoff: Handoff) -> Result<Self, AdoptError> {
        Self::adopt(
            Origin::Inherited,
            Some(handoff.parent_pid),
            &handoff.inventory,
            Some(handoff.ready_fd),
        )
    }

    /// Checks every declared fd (none adopted before; all of them open, inherited through
    /// `exec` and made close-on-exec first; then their kinds), then takes ownership of all
    /// of them at once.
    fn adopt(
        origin: Origin,
        parent_pid: Option<u32>,
        inventory: &Inventory,
        ready_fd: Option<RawFd>,
    ) -> Result<Self, AdoptError> {
        let numbers: Vec<RawFd> = inventory.iter().map(|e| e.fd()).chain(ready_fd).collect();
        if let Some(fd) = sys::first_adopted(&numbers) {
            return Err(AdoptError::AlreadyAdopted { fd });
        }
        for entry in inventory {
            close_on_exec(entry.name(), entry.fd())?;
        }
        if let Some(fd) = ready_fd {
            close_on_exec_ready(fd)?;
        }
        let kinds = inventory
            .iter()
            .map(|e| check_declared(e.name(), e.kind(), e.fd()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(fd) = ready_fd {
            check_ready(fd)?;
        }

        let mut owned = sys::adopt(&numbers)
            .map_err(|(fd, error)| match Errno::from_io_error(&error) {
                Some(Errno::ALREADY) => AdoptError::AlreadyAdopted { fd },
                Some(Errno::BADF) => AdoptError::FdClosed {
                    name: name_of(inventory, fd),
                    fd,
                },
                _ => AdoptError::Io { fd, error },
            })?
            .into_iter();
        let entries = inventory
            .iter()
            .zip(kinds)
            .zip(owned.by_ref())
            .map(|((entry, kind), fd)| (entry.name().to_owned(), kind, fd))
            .collect();
        let ready = owned.next();
        Ok(Self::from_parts(origin, parent_pid, entries, ready))
    }

    fn from_parts(
        origin: Origin,
        parent_pid: Option<u32>,
        entries: Vec<(String, FdKind, OwnedFd)>,
        ready: Option<OwnedFd>,
    ) -> Self {
        let entries: Vec<Slot> = entries
            .into_iter()
            .map(|(name, kind, fd)| Slot {
                name,
                kind,
                fd: Some(fd),
            })
            .collect();
        let mut by_name = HashMap::with_capacity(entries.len());
        for (index, slot) in entries.iter().enumerate() {
            by_name.entry(slot.name.clone()).or_insert(index);
        }
        Self {
            origin,
            parent_pid,
            state: Mutex::new(State {
                entries,
                by_name,
                ready,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; if something did, the state is still
        // consistent (every change is a single `Option::take`).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Origin::Inherited`] when the descriptors came from an endless parent, which waits
    /// for this process to report ready; [`Origin::Fresh`] for systemd's or none.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The pid of the endless parent the descriptors came from, if they did.
    pub fn parent_pid(&self) -> Option<u32> {
        self.parent_pid
    }

    /// The kind of the entry `name` if it is still here (not taken, not closed): the
    /// declared kind, or for a descriptor declared [`FdKind::Unknown`] (systemd) the kind
    /// it really has.
    pub fn kind(&self, name: &str) -> Option<FdKind> {
        self.state().present(name).map(|s| s.kind)
    }

    /// The names of the entries not yet taken (nor closed), in fd order.
    pub fn unclaimed(&self) -> Vec<String> {
        self.state()
            .entries
            .iter()
            .filter(|s| s.fd.is_some())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Takes the descriptor named `name`, which must be of kind `kind`.
    ///
    /// `Ok(None)` when there is no such entry or it was already taken (the caller then
    /// binds a new socket). A kind mismatch is an error, and the descriptor stays where it
    /// is (so [`Inherited::close_unclaimed`] closes it). The kind compared is the declared
    /// one, or for a descriptor declared [`FdKind::Unknown`] the kind it really has, which
    /// is never `Unknown`.
    ///
    /// # Errors
    ///
    /// [`TakeError::KindMismatch`].
    pub fn take(&self, name: &str, kind: FdKind) -> Result<Option<OwnedFd>, TakeError> {
        let mut state = self.state();
        let Some(slot) = state.present(name) else {
            return Ok(None);
        };
        if slot.kind != kind {
            return Err(TakeError::KindMismatch {
                name: name.to_owned(),
                expected: kind,
                actual: slot.kind,
            });
        }
        Ok(slot.fd.take())
    }

    /// Takes the write end of the readiness channel (only when spawned by an endless
    /// parent), once; write the ready line to it with
    /// [`send_readiness`](crate::spawn::send_readiness).
    pub fn take_ready_channel(&self) -> Option<OwnedFd> {
        self.state().ready.take()
    }

    /// Closes every entry nobody took and returns their names, for the caller to log. The
    /// readiness channel is not an entry: it stays until taken or until `self` is dropped.
    pub fn close_unclaimed(&self) -> Vec<String> {
        let closed: Vec<(String, OwnedFd)> = self
            .state()
            .entries
            .iter_mut()
            .filter_map(|s| Some((s.name.clone(), s.fd.take()?)))
            .collect();
        // Closed outside the lock.
        closed.into_iter().map(|(name, _fd)| name).collect()
    }
}

fn name_of(inventory: &Inventory, fd: RawFd) -> String {
    inventory
        .get_fd(fd)
        .map_or_else(|| env::READY_FD_VAR.to_owned(), |e| e.name().to_owned())
}

/// Sets `FD_CLOEXEC` on a declared fd, after checking that it came through `exec`: an fd
/// that already has the flag cannot have (exec closes those), so this process opened it
/// itself — typically the runtime, started before endless, took a number the parent
/// declared but did not pass. Adopting it would steal the runtime's fd.
fn claim(fd: BorrowedFd<'_>, flags: FdFlags) -> io::Result<Result<(), ()>> {
    if flags.contains(FdFlags::CLOEXEC) {
        return Ok(Err(()));
    }
    sys::add_cloexec(fd, flags)?;
    Ok(Ok(()))
}

/// Checks that the declared fd `fd` is open and inherited, and sets `FD_CLOEXEC` on it.
fn close_on_exec(name: &str, fd: RawFd) -> Result<(), AdoptError> {
    let claimed = match sys::with_declared_flags(fd, claim) {
        Ok(Ok(claimed)) => claimed,
        Err(e) if sys::is_errno(&e, Errno::BADF) => {
            return Err(AdoptError::FdClosed {
                name: name.to_owned(),
                fd,
            });
        }
        Ok(Err(error)) | Err(error) => return Err(AdoptError::Io { fd, error }),
    };
    claimed.map_err(|()| AdoptError::NotInherited {
        name: name.to_owned(),
        fd,
    })
}

fn close_on_exec_ready(fd: RawFd) -> Result<(), AdoptError> {
    match sys::with_declared_flags(fd, claim) {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(()))) => Err(AdoptError::NotInherited {
            name: env::READY_FD_VAR.to_owned(),
            fd,
        }),
        Err(e) if sys::is_errno(&e, Errno::BADF) => Err(AdoptError::ReadyFdClosed { fd }),
        Ok(Err(error)) | Err(error) => Err(AdoptError::Io { fd, error }),
    }
}

/// Runs `f` on the declared fd `fd`, mapping "not open" to [`AdoptError::FdClosed`].
fn inspect<R>(
    name: &str,
    fd: RawFd,
    f: impl FnOnce(BorrowedFd<'_>) -> io::Result<R>,
) -> Result<R, AdoptError> {
    match sys::with_declared(fd, f) {
        Ok(Ok(r)) => Ok(r),
        Err(e) if sys::is_errno(&e, Errno::BADF) => Err(AdoptError::FdClosed {
            name: name.to_owned(),
            fd,
        }),
        Ok(Err(error)) | Err(error) => Err(AdoptError::Io { fd, error }),
    }
}

/// The adoption check of one declared entry: `fd` is open and is of
/// the `declared` kind (not checked for [`FdKind::Other`]; for [`FdKind::Unknown`] the kind
/// it really has is returned). Returns the entry's kind.
fn check_declared(name: &str, declared: FdKind, fd: RawFd) -> Result<FdKind, AdoptError> {
    if declared == FdKind::Other {
        // Only checked to be open (`close_on_exec` did that first).
        inspect(name, fd, |_| Ok(()))?;
        return Ok(FdKind::Other);
    }
    let actual = inspect(name, fd, classify)?;
    match (declared, actual) {
        (FdKind::Unknown, actual) => Ok(actual.unwrap_or(FdKind::Other)),
        (_, None) => Err(AdoptError::NotASocket {
            name: name.to_owned(),
            fd,
        }),
        (declared, Some(actual)) if actual == declared => Ok(actual),
        (declared, Some(actual)) => Err(AdoptError::WrongKind {
            name: name.to_owned(),
            fd,
            declared,
            actual,
        }),
    }
}

/// The adoption check of the readiness channel: open, a pipe or socket, open for writing.
fn check_ready(fd: RawFd) -> Result<(), AdoptError> {
    let usable = |b: BorrowedFd<'_>| -> io::Result<bool> {
        let mode = sys::status_flags(b)? & OFlags::ACCMODE;
        let writable = mode == OFlags::WRONLY || mode == OFlags::RDWR;
        // fstat through a duplicate: std offers it only on owned files.
        let file_type = std::fs::File::from(b.try_clone_to_owned()?)
            .metadata()?
            .file_type();
        Ok(writable && (file_type.is_fifo() || file_type.is_socket()))
    };
    match sys::with_declared(fd, usable) {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(AdoptError::ReadyFdNotWritable { fd }),
        Err(e) if sys::is_errno(&e, Errno::BADF) => Err(AdoptError::ReadyFdClosed { fd }),
        Ok(Err(error)) | Err(error) => Err(AdoptError::Io { fd, error }),
    }
}

/// What `fd` really is: one of the socket kinds, [`FdKind::Other`] for any other socket
/// (a Unix datagram socket, a raw or netlink socket, …) and for anything that is not a
/// socket (a pipe, a file, a terminal).
///
/// A stream socket that is neither listening nor connected (bound or fresh) reads as a
/// stream (`TcpStream`, `UnixStream`): only listening is told apart.
///
/// # Errors
///
/// When the fd cannot be inspected (it is not open, for instance: `EBADF`).
///
/// # Examples
///
/// ```
/// use std::net::{TcpListener, UdpSocket};
/// use std::os::fd::AsFd;
/// use endless_core::FdKind;
/// use endless_unix::inherit::probe;
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// assert_eq!(probe(listener.as_fd())?, FdKind::TcpListener);
/// let udp = UdpSocket::bind("127.0.0.1:0")?;
/// assert_eq!(probe(udp.as_fd())?, FdKind::UdpSocket);
/// let file = std::fs::File::open("/dev/null")?;
/// assert_eq!(probe(file.as_fd())?, FdKind::Other);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn probe(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    Ok(classify(fd)?.unwrap_or(FdKind::Other))
}

/// [`probe`], with `None` for a descriptor that is not a socket.
fn classify(fd: BorrowedFd<'_>) -> io::Result<Option<FdKind>> {
    // SO_ACCEPTCONN first: it also tells whether `fd` is a socket at all (ENOTSOCK).
    let listening = match sys::is_listening(fd) {
        Ok(listening) => listening,
        Err(e) if sys::is_errno(&e, Errno::NOTSOCK) => return Ok(None),
        Err(e) => return Err(e),
    };
    let socket = SockRef::from(&fd);
    let ty = socket.r#type()?;
    let domain = domain(&socket)?;
    let inet = domain == Domain::IPV4 || domain == Domain::IPV6;
    let unix = domain == Domain::UNIX;
    let kind = if ty == Type::STREAM {
        match (inet, unix, listening) {
            (true, _, true) => FdKind::TcpListener,
            (true, _, false) => FdKind::TcpStream,
            (_, true, true) => FdKind::UnixListener,
            (_, true, false) => FdKind::UnixStream,
            _ => FdKind::Other,
        }
    } else if ty == Type::DGRAM && inet {
        FdKind::UdpSocket
    } else {
        FdKind::Other
    };
    Ok(Some(kind))
}

/// The address family of a socket: `SO_DOMAIN` where the system has it.
#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
fn domain(socket: &SockRef<'_>) -> io::Result<Domain> {
    socket.domain()
}

/// The address family of a socket: from `getsockname`, which reports it even for an unbound
/// socket.
#[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
fn domain(socket: &SockRef<'_>) -> io::Result<Domain> {
    Ok(Domain::from(i32::from(socket.local_addr()?.family())))
}

/// Why the inherited descriptors could not be adopted: bad input from the parent process
/// (or from whoever set the variables), found at start-up.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdoptError {
    /// The `ENDLESS_*` or `LISTEN_*` variables are malformed.
    Decode(DecodeError),
    /// A declared descriptor is not open: the parent did not pass it.
    FdClosed {
        /// The entry's name.
        name: String,
        /// The fd number.
        fd: RawFd,
    },
    /// A declared descriptor is open but close-on-exec, so it did not come through `exec`:
    /// this process opened it itself (the parent did not pass that number, and something
    /// that started before endless, such as the runtime, took it).
    NotInherited {
        /// The entry's name.
        name: String,
        /// The fd number.
        fd: RawFd,
    },
    /// A descriptor declared as a socket kind is not a socket.
    NotASocket {
        /// The entry's name.
        name: String,
        /// The fd number.
        fd: RawFd,
    },
    /// A socket is not of its declared kind (type, listening or not, address family).
    WrongKind {
        /// The entry's name.
        name: String,
        /// The fd number.
        fd: RawFd,
        /// The kind declared.
        declared: FdKind,
        /// The kind it really is.
        actual: FdKind,
    },
    /// The readiness channel is not open.
    ReadyFdClosed {
        /// The fd number.
        fd: RawFd,
    },
    /// The readiness channel is not a pipe or socket open for writing.
    ReadyFdNotWritable {
        /// The fd number.
        fd: RawFd,
    },
    /// A declared fd number was already adopted in this process, by an earlier
    /// [`Inherited`] (the environment describes the same descriptors every time it is read;
    /// read it once).
    AlreadyAdopted {
        /// The fd number.
        fd: RawFd,
    },
    /// The system failed while inspecting a descriptor.
    Io {
        /// The fd number.
        fd: RawFd,
        /// The error.
        error: io::Error,
    },
}

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode(e) => write!(f, "invalid inherited fd variables: {e}"),
            Self::FdClosed { name, fd } => write!(
                f,
                "inherited fd {fd} ({name:?}) was not passed by the parent: it is not open"
            ),
            Self::NotInherited { name, fd } if name == env::READY_FD_VAR => write!(
                f,
                "the readiness channel, fd {fd} ({name}), was not passed by the parent: it is a \
                 close-on-exec fd this process opened itself"
            ),
            Self::NotInherited { name, fd } => write!(
                f,
                "inherited fd {fd} ({name:?}) was not passed by the parent: it is a close-on-exec \
                 fd this process opened itself"
            ),
            Self::NotASocket { name, fd } => write!(
                f,
                "inherited fd {fd} ({name:?}) is not a socket, but is declared as one"
            ),
            Self::WrongKind {
                name,
                fd,
                declared,
                actual,
            } => write!(
                f,
                "inherited fd {fd} ({name:?}) is declared as {declared} but is {actual}"
            ),
            Self::ReadyFdClosed { fd } => write!(
                f,
                "the readiness channel, fd {fd} ({}), is not open",
                env::READY_FD_VAR
            ),
            Self::ReadyFdNotWritable { fd } => write!(
                f,
                "the readiness channel, fd {fd} ({}), is not a pipe or socket open for writing",
                env::READY_FD_VAR
            ),
            Self::AlreadyAdopted { fd } => write!(
                f,
                "inherited fd {fd} was already adopted by this process (read the environment once)"
            ),
            Self::Io { fd, error } => write!(f, "inspecting inherited fd {fd} failed: {error}"),
        }
    }
}

impl std::error::Error for AdoptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Decode(e) => Some(e),
            Self::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<AdoptError> for io::Error {
    fn from(e: AdoptError) -> Self {
        let kind = match &e {
            AdoptError::AlreadyAdopted { .. } => io::ErrorKind::InvalidInput,
            AdoptError::Io { error, .. } => error.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        Self::new(kind, e)
    }
}

/// Why [`Inherited::take`] refused to hand out a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TakeError {
    /// The descriptor is of another kind than the one asked for.
    KindMismatch {
        /// The entry's name.
        name: String,
        /// The kind asked for.
        expected: FdKind,
        /// The kind the descriptor has.
        actual: FdKind,
    },
}

impl fmt::Display for TakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KindMismatch {
                name,
                expected,
                actual,
            } => write!(
                f,
                "inherited fd {name:?} is {actual}, but {expected} was asked for"
            ),
        }
    }
}

impl std::error::Error for TakeError {}

impl From<TakeError> for io::Error {
    fn from(e: TakeError) -> Self {
        Self::new(io::ErrorKind::InvalidInput, e)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system's temporary directory, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "endless-unix-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// One socket (or other descriptor) of every kind, all owned by the test.
    struct Zoo {
        _dir: TempDir,
        tcp_listener: TcpListener,
        tcp_listener6: Option<TcpListener>,
        tcp_stream: TcpStream,
        _tcp_peer: TcpStream,
        unix_listener: UnixListener,
        unix_stream: UnixStream,
        _unix_peer: UnixStream,
        udp: UdpSocket,
        unix_datagram: UnixDatagram,
        pipe_reader: io::PipeReader,
        pipe_writer: io::PipeWriter,
        file: File,
    }

    fn zoo() -> Zoo {
        let dir = TempDir::new();
        let tcp_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tcp_stream = TcpStream::connect(tcp_listener.local_addr().unwrap()).unwrap();
        let (tcp_peer, _) = tcp_listener.accept().unwrap();
        let (unix_stream, unix_peer) = UnixStream::pair().unwrap();
        let (pipe_reader, pipe_writer) = io::pipe().unwrap();
        Zoo {
            tcp_listener,
            tcp_listener6: TcpListener::bind("[::1]:0").ok(),
            tcp_stream,
            _tcp_peer: tcp_peer,
            unix_listener: UnixListener::bind(dir.0.join("listener.sock")).unwrap(),
            unix_stream,
            _unix_peer: unix_peer,
            udp: UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(),
            unix_datagram: UnixDatagram::unbound().unwrap(),
            pipe_reader,
            pipe_writer,
            file: File::open("/dev/null").unwrap(),
            _dir: dir,
        }
    }

    /// A number that is surely not an open fd (far above any RLIMIT_NOFILE).
    const CLOSED: RawFd = RawFd::MAX;

    #[test]
    fn probe_tells_every_kind() {
        let z = zoo();
        let cases: Vec<(BorrowedFd<'_>, FdKind)> = vec![
            (z.tcp_listener.as_fd(), FdKind::TcpListener),
            (z.tcp_stream.as_fd(), FdKind::TcpStream),
            (z.unix_listener.as_fd(), FdKind::UnixListener),
            (z.unix_stream.as_fd(), FdKind::UnixStream),
            (z.udp.as_fd(), FdKind::UdpSocket),
            (z.unix_datagram.as_fd(), FdKind::Other),
            (z.pipe_reader.as_fd(), FdKind::Other),
            (z.pipe_writer.as_fd(), FdKind::Other),
            (z.file.as_fd(), FdKind::Other),
        ];
        for (fd, kind) in cases {
            assert_eq!(probe(fd).unwrap(), kind, "fd {fd:?}");
        }
        if let Some(l6) = &z.tcp_listener6 {
            assert_eq!(probe(l6.as_fd()).unwrap(), FdKind::TcpListener);
        }
        // A TCP socket that neither listens nor is connected reads as a stream.
        let fresh = socket2::Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        assert_eq!(probe(fresh.as_fd()).unwrap(), FdKind::TcpStream);
        let udp6 = socket2::Socket::new(Domain::IPV6, Type::DGRAM, None).unwrap();
        assert_eq!(probe(udp6.as_fd()).unwrap(), FdKind::UdpSocket);
        // Not sockets at all.
        assert_eq!(classify(z.file.as_fd()).unwrap(), None);
        assert_eq!(classify(z.pipe_reader.as_fd()).unwrap(), None);
        assert_eq!(
            classify(z.unix_datagram.as_fd()).unwrap(),
            Some(FdKind::Other)
        );
    }

    #[test]
    fn check_declared_accepts_the_right_kinds() {
        let z = zoo();
        let ok = [
            (z.tcp_listener.as_fd(), FdKind::TcpListener),
            (z.tcp_stream.as_fd(), FdKind::TcpStream),
            (z.unix_listener.as_fd(), FdKind::UnixListener),
            (z.unix_stream.as_fd(), FdKind::UnixStream),
            (z.udp.as_fd(), FdKind::UdpSocket),
            // Other is not checked, whatever it is.
            (z.file.as_fd(), FdKind::Other),
            (z.tcp_listener.as_fd(), FdKind::Other),
        ];
        for (fd, kind) in ok {
            assert_eq!(
                check_declared("x", kind, fd.as_raw_fd()).unwrap(),
                kind,
                "{kind}"
            );
            // (std makes every fd close-on-exec already; that adoption sets the flag on
            // inherited fds, which arrive without it, is checked in a child process by
            // spawn's tests.)
            assert!(sys::is_cloexec(fd).unwrap());
        }
    }

    #[test]
    fn check_declared_replaces_unknown_by_the_probed_kind() {
        let z = zoo();
        for (fd, kind) in [
            (z.tcp_listener.as_raw_fd(), FdKind::TcpListener),
            (z.unix_listener.as_raw_fd(), FdKind::UnixListener),
            (z.udp.as_raw_fd(), FdKind::UdpSocket),
            (z.unix_stream.as_raw_fd(), FdKind::UnixStream),
            (z.file.as_raw_fd(), FdKind::Other),
            (z.pipe_reader.as_raw_fd(), FdKind::Other),
        ] {
            assert_eq!(check_declared("x", FdKind::Unknown, fd).unwrap(), kind);
        }
    }

    #[test]
    fn check_declared_refuses_closed_fds_non_sockets_and_wrong_kinds() {
        let z = zoo();
        assert!(matches!(
            check_declared("gone", FdKind::TcpListener, CLOSED),
            Err(AdoptError::FdClosed { ref name, fd: CLOSED }) if name == "gone"
        ));
        // Closed is found even for kinds that are not checked.
        for kind in [FdKind::Other, FdKind::Unknown] {
            assert!(matches!(
                check_declared("gone", kind, CLOSED),
                Err(AdoptError::FdClosed { .. })
            ));
        }
        let file = z.file.as_raw_fd();
        assert!(matches!(
            check_declared("file", FdKind::TcpListener, file),
            Err(AdoptError::NotASocket { ref name, fd }) if name == "file" && fd == file
        ));
        let pipe = z.pipe_writer.as_raw_fd();
        assert!(matches!(
            check_declared("pipe", FdKind::UnixStream, pipe),
            Err(AdoptError::NotASocket { .. })
        ));

        let wrong = [
            // UDP declared as a TCP listener.
            (z.udp.as_raw_fd(), FdKind::TcpListener, FdKind::UdpSocket),
            // A connected TCP stream declared as a listener.
            (
                z.tcp_stream.as_raw_fd(),
                FdKind::TcpListener,
                FdKind::TcpStream,
            ),
            (
                z.tcp_listener.as_raw_fd(),
                FdKind::TcpStream,
                FdKind::TcpListener,
            ),
            // The right type, the wrong family.
            (
                z.tcp_listener.as_raw_fd(),
                FdKind::UnixListener,
                FdKind::TcpListener,
            ),
            (
                z.unix_listener.as_raw_fd(),
                FdKind::TcpListener,
                FdKind::UnixListener,
            ),
            (
                z.unix_stream.as_raw_fd(),
                FdKind::TcpStream,
                FdKind::UnixStream,
            ),
            // A Unix datagram socket is no UDP socket.
            (
                z.unix_datagram.as_raw_fd(),
                FdKind::UdpSocket,
                FdKind::Other,
            ),
        ];
        for (fd, declared, actual) in wrong {
            match check_declared("w", declared, fd) {
                Err(AdoptError::WrongKind {
                    name,
                    fd: got_fd,
                    declared: d,
                    actual: a,
                }) => assert_eq!((name.as_str(), got_fd, d, a), ("w", fd, declared, actual)),
                other => panic!("{declared} on a {actual}: {other:?}"),
            }
        }
    }

    #[test]
    fn check_ready_wants_a_writable_pipe_or_socket() {
        let z = zoo();
        check_ready(z.pipe_writer.as_raw_fd()).unwrap();
        check_ready(z.unix_stream.as_raw_fd()).unwrap();
        for fd in [z.pipe_reader.as_raw_fd(), z.file.as_raw_fd()] {
            assert!(
                matches!(check_ready(fd), Err(AdoptError::ReadyFdNotWritable { fd: f }) if f == fd),
                "{fd}"
            );
        }
        // A file open for writing is still not a channel.
        let dir = TempDir::new();
        let writable = File::create(dir.0.join("f")).unwrap();
        assert!(matches!(
            check_ready(writable.as_raw_fd()),
            Err(AdoptError::ReadyFdNotWritable { .. })
        ));
        assert!(matches!(
            check_ready(CLOSED),
            Err(AdoptError::ReadyFdClosed { fd: CLOSED })
        ));
        assert!(matches!(
            close_on_exec_ready(CLOSED),
            Err(AdoptError::ReadyFdClosed { fd: CLOSED })
        ));
    }

    fn owned(fd: impl Into<OwnedFd>) -> OwnedFd {
        fd.into()
    }

    #[test]
    fn take_by_name_once_and_refuse_other_kinds() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (ready, _ready_peer) = UnixStream::pair().unwrap();
        let inherited = Inherited::from_parts(
            Origin::Inherited,
            Some(42),
            vec![
                ("http".into(), FdKind::TcpListener, owned(listener)),
                ("dns".into(), FdKind::UdpSocket, owned(udp)),
            ],
            Some(owned(ready)),
        );
        assert_eq!(inherited.origin(), Origin::Inherited);
        assert_eq!(inherited.parent_pid(), Some(42));
        assert_eq!(inherited.unclaimed(), ["http", "dns"]);
        assert_eq!(inherited.kind("dns"), Some(FdKind::UdpSocket));
        assert_eq!(inherited.kind("nope"), None);

        let err = inherited.take("dns", FdKind::TcpListener).unwrap_err();
        assert_eq!(
            err,
            TakeError::KindMismatch {
                name: "dns".into(),
                expected: FdKind::TcpListener,
                actual: FdKind::UdpSocket
            }
        );
        assert!(err.to_string().contains("udp"), "{err}");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
        // Still there after the mismatch.
        assert_eq!(inherited.unclaimed(), ["http", "dns"]);

        let http = inherited
            .take("http", FdKind::TcpListener)
            .unwrap()
            .unwrap();
        assert_eq!(probe(http.as_fd()).unwrap(), FdKind::TcpListener);
        assert!(
            inherited
                .take("http", FdKind::TcpListener)
                .unwrap()
                .is_none()
        );
        // Once taken, even a wrong kind is just absent.
        assert!(inherited.take("http", FdKind::UdpSocket).unwrap().is_none());
        assert!(
            inherited
                .take("absent", FdKind::TcpListener)
                .unwrap()
                .is_none()
        );
        assert_eq!(inherited.kind("http"), None);
        assert_eq!(inherited.unclaimed(), ["dns"]);

        assert!(inherited.take_ready_channel().is_some());
        assert!(inherited.take_ready_channel().is_none());
    }

    #[test]
    fn close_unclaimed_closes_what_nobody_took() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (kept, mut kept_peer) = UnixStream::pair().unwrap();
        let (ready, mut ready_peer) = UnixStream::pair().unwrap();
        let inherited = Inherited::from_parts(
            Origin::Inherited,
            Some(1),
            vec![
                ("listener".into(), FdKind::TcpListener, owned(listener)),
                ("stream".into(), FdKind::UnixStream, owned(ours)),
                ("kept".into(), FdKind::UnixStream, owned(kept)),
            ],
            Some(owned(ready)),
        );
        let kept = inherited.take("kept", FdKind::UnixStream).unwrap().unwrap();
        assert_eq!(inherited.close_unclaimed(), ["listener", "stream"]);
        assert!(inherited.unclaimed().is_empty());
        assert!(inherited.close_unclaimed().is_empty());
        assert!(
            inherited
                .take("stream", FdKind::UnixStream)
                .unwrap()
                .is_none()
        );

        // The stream is closed: its peer reads end of file (a timeout instead of a hang if
        // it is not).
        peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0; 8];
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
        // The listener is closed: nobody accepts on its port any more.
        assert_eq!(
            TcpStream::connect(addr).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        // What was taken, and the readiness channel, are still open.
        UnixStream::from(kept).write_all(b"k").unwrap();
        assert_eq!(kept_peer.read(&mut buf).unwrap(), 1);
        let ready = inherited.take_ready_channel().unwrap();
        UnixStream::from(ready).write_all(b"r").unwrap();
        assert_eq!(ready_peer.read(&mut buf).unwrap(), 1);
    }

    #[test]
    fn inherited_is_send_sync_and_empty_is_fresh() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Inherited>();
        let empty = Inherited::empty();
        assert_eq!(empty.origin(), Origin::Fresh);
        assert_eq!(empty.parent_pid(), None);
        assert!(empty.unclaimed().is_empty());
        assert!(empty.take_ready_channel().is_none());
        assert!(empty.take("x", FdKind::Other).unwrap().is_none());
        assert!(format!("{empty:?}").contains("Fresh"));
    }

    // from_vars: the decode paths that adopt nothing (adopting for real needs fds at 3, 4, …,
    // which belong to the test harness here; spawn's tests adopt in a child process).

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// A handoff of one listener at fd 3 and the ready fd at 4, declaring files that no fd
    /// of this process is (the identity of a file that cannot exist).
    fn endless_vars(parent: u32) -> Vec<(String, String)> {
        let mut inventory = Inventory::new();
        inventory.push("http", FdKind::TcpListener).unwrap();
        let nowhere = env::FileId::new(u64::MAX, u64::MAX);
        env::encode(&Handoff::for_spawn(parent, inventory, vec![nowhere; 2]).unwrap())
    }

    #[test]
    fn observe_declared_is_the_identity_of_the_open_file() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let id = sys::observe_declared(listener.as_raw_fd()).unwrap();
        assert_eq!(id, sys::file_id(listener.as_fd()).unwrap());
        // A copy of the fd is the same open file (what the child gets); another socket is not.
        let copy = listener.try_clone().unwrap();
        assert_eq!(sys::observe_declared(copy.as_raw_fd()), Some(id));
        let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_ne!(sys::observe_declared(other.as_raw_fd()), Some(id));
        assert_eq!(sys::observe_declared(CLOSED), None);
    }

    #[test]
    fn from_vars_without_variables_is_a_fresh_start() {
        let i = Inherited::decode_and_adopt(vars(&[("PATH", "/bin"), ("ENDLESS_LOG", "x")]), 1, 2)
            .unwrap();
        assert_eq!(i.origin(), Origin::Fresh);
        assert!(i.unclaimed().is_empty());
        let i = Inherited::decode_and_adopt(Vec::<(String, String)>::new(), 1, 2).unwrap();
        assert_eq!(i.origin(), Origin::Fresh);
    }

    #[test]
    fn from_vars_ignores_variables_meant_for_another_process() {
        // ENDLESS_* declaring files this process does not have at fds 3 and 4 (a grandchild
        // of the server: it inherited the environment, not the fds), whichever parent they
        // name.
        for parent in [100, 200] {
            let i = Inherited::decode_and_adopt(endless_vars(100), parent, 300).unwrap();
            assert_eq!((i.origin(), i.parent_pid()), (Origin::Fresh, None));
        }
        let i = Inherited::decode_and_adopt(endless_vars(100), 200, 300).unwrap();
        assert_eq!((i.origin(), i.parent_pid()), (Origin::Fresh, None));
        assert!(i.unclaimed().is_empty());
        assert!(i.take_ready_channel().is_none());
        // systemd's naming another pid.
        let sd = vars(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "2")]);
        let i = Inherited::decode_and_adopt(sd.clone(), 1, 8).unwrap();
        assert_eq!(i.origin(), Origin::Fresh);
        assert!(i.unclaimed().is_empty());
        // Both, for other processes.
        let mut both = endless_vars(100);
        both.extend(sd);
        let i = Inherited::decode_and_adopt(both, 200, 8).unwrap();
        assert!(i.unclaimed().is_empty());
    }

    #[test]
    fn from_vars_returns_every_other_decode_error() {
        let mut bad = endless_vars(100);
        bad.retain(|(k, _)| k != "ENDLESS_FDS");
        let e = Inherited::decode_and_adopt(bad, 100, 1).unwrap_err();
        assert!(
            matches!(&e, AdoptError::Decode(DecodeError::MissingVariable { variable }) if variable == "ENDLESS_FDS"),
            "{e:?}"
        );
        assert!(e.to_string().contains("ENDLESS_FDS"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidData);

        let e =
            Inherited::decode_and_adopt(vars(&[("LISTEN_PID", "5"), ("LISTEN_FDS", "x")]), 1, 5)
                .unwrap_err();
        assert!(matches!(
            e,
            AdoptError::Decode(DecodeError::InvalidNumber { .. })
        ));

        // Malformed systemd variables are still an error after ignoring ENDLESS_* meant for
        // another process.
        let mut both = endless_vars(100);
        both.extend(vars(&[
            ("LISTEN_PID", "5"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "a:b"),
        ]));
        let e = Inherited::decode_and_adopt(both, 200, 5).unwrap_err();
        assert!(
            matches!(e, AdoptError::Decode(DecodeError::CountMismatch { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn from_vars_fails_on_a_declared_fd_that_is_not_open_and_adopts_nothing() {
        // systemd passing fds far above anything open: the first is reported closed. (Only
        // closed numbers, so nothing of the test harness is touched.)
        let mut inventory = Inventory::new();
        inventory.insert("a", FdKind::Unknown, CLOSED - 1).unwrap();
        let e = Inherited::adopt(Origin::Fresh, None, &inventory, None).unwrap_err();
        assert!(
            matches!(&e, AdoptError::FdClosed { name, fd } if name == "a" && *fd == CLOSED - 1),
            "{e:?}"
        );
        let e = Inherited::adopt(Origin::Inherited, Some(1), &Inventory::new(), Some(CLOSED))
            .unwrap_err();
        assert!(
            matches!(e, AdoptError::ReadyFdClosed { fd: CLOSED }),
            "{e:?}"
        );
    }

    #[test]
    fn errors_display_names_and_numbers() {
        let cases: Vec<(AdoptError, &[&str])> = vec![
            (
                AdoptError::FdClosed {
                    name: "http".into(),
                    fd: 3,
                },
                &["\"http\"", "3", "not open"],
            ),
            (
                AdoptError::NotASocket {
                    name: "http".into(),
                    fd: 4,
                },
                &["\"http\"", "4", "not"],
            ),
            (
                AdoptError::WrongKind {
                    name: "dns".into(),
                    fd: 5,
                    declared: FdKind::TcpListener,
                    actual: FdKind::UdpSocket,
                },
                &["\"dns\"", "5", "tcp-listener", "udp"],
            ),
            (
                AdoptError::ReadyFdClosed { fd: 6 },
                &["6", "ENDLESS_READY_FD"],
            ),
            (AdoptError::ReadyFdNotWritable { fd: 6 }, &["6", "writing"]),
            (AdoptError::AlreadyAdopted { fd: 7 }, &["7", "already"]),
            (
                AdoptError::Io {
                    fd: 8,
                    error: Errno::MFILE.into(),
                },
                &["8"],
            ),
        ];
        for (e, words) in cases {
            let text = e.to_string();
            for w in words {
                assert!(text.contains(w), "{text:?} lacks {w:?}");
            }
            let _: io::Error = e.into();
        }
    }
}
