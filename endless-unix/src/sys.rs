//! Raw file descriptor primitives: the only module of this crate with `unsafe` code.
//!
//! Every function here is safe to call and wraps one small system call (or one ownership
//! step). Most are built on [`rustix`] and [`socket2`], whose typed, I/O-safe interfaces
//! need no `unsafe`; `libc` is called by hand only where they cannot say what is meant:
//! on fd *numbers* that no Rust object owns (which may not even be open), for
//! `posix_spawn` (C structures, pointers, and a function looked up at run time), and for
//! signal numbers that rustix does not name. Each of
//! those `unsafe` blocks has its safety argument next to it. Everything else in the crate
//! is safe code built on these functions, rustix, socket2 and std.
//!
//! Two functions work on fd *numbers* that no Rust object owns yet: [`with_declared`] and
//! [`adopt`]. They exist for the fds a parent process hands over (at 3, 4, … by the
//! environment's contract, which says that these numbers belong to this process and to
//! nothing else in it). The registry in [`adopt`] makes sure each such number is owned at
//! most once per process.
//!
//! [`posix_spawn`] starts the next generation: none of our code runs in the child (the
//! fd plan is a list of spawn file actions).
//!
//! # Platforms
//!
//! Linux is where this runs and is tested; the rest is type-checked only. Where a Linux
//! facility is missing, the functions here choose the platform's way by `cfg`, and say so
//! in their docs: Apple systems have no `MSG_NOSIGNAL` (`SO_NOSIGPIPE` instead), no
//! `MSG_CMSG_CLOEXEC` ([`recv_with_fds`]), no `SO_ACCEPTCONN` ([`is_listening`]), no
//! `SOCK_SEQPACKET` for Unix sockets (the channel between generations is a stream,
//! [`channel_pair`], everywhere), and no `SOCK_CLOEXEC`: there socket2, std and the runtimes set
//! close-on-exec right after `socket`, `socketpair` and `accept` return, which leaves the
//! window described at [`recv_with_fds`] (a process that another thread spawns in between
//! inherits the new socket). Peer credentials come from [`peer_uid`].

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use endless_core::plan::Step;
use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::process::{Pid, Signal};
use socket2::{Domain, Socket, Type};

/// Turns the `-1` convention of libc into an `io::Result` (the error read from `errno`).
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Calls the rustix function `f` again as long as it fails with `EINTR`.
fn retry_rustix<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Whether `error` is the OS error `errno`.
pub(crate) fn is_errno(error: &io::Error, errno: Errno) -> bool {
    error.raw_os_error() == Some(errno.raw_os_error())
}

// ---------------------------------------------------------------------------------------
// Queries and flags on descriptors we can name safely
// ---------------------------------------------------------------------------------------

/// The descriptor flags of the fd number `fd` (`fcntl(F_GETFD)`), or `None` if it is not
/// open (`EBADF`).
///
/// Only a query: it reads nothing and changes nothing, so it is harmless on any number.
/// By hand rather than rustix's `fcntl_getfd`: that takes a `BorrowedFd`, which promises
/// an open fd, and the point here is to ask whether a bare number is open at all.
pub(crate) fn fd_flags(fd: RawFd) -> io::Result<Option<FdFlags>> {
    // SAFETY: F_GETFD takes no argument and only reads the fd's flags; on a number that is
    // not open it fails with EBADF. No memory is involved.
    match cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }) {
        Ok(flags) => Ok(Some(FdFlags::from_bits_retain(flags.cast_unsigned()))),
        Err(e) if is_errno(&e, Errno::BADF) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the fd number `fd` is open in this process (a query, see [`fd_flags`]).
pub(crate) fn is_open(fd: RawFd) -> io::Result<bool> {
    Ok(fd_flags(fd)?.is_some())
}

/// The identity of the open file `fd` refers to (`fstat`'s `st_dev` and `st_ino`): what
/// the handoff declares for each fd, and what the recipient compares.
pub(crate) fn file_id(fd: BorrowedFd<'_>) -> io::Result<endless_core::env::FileId> {
    let stat = rustix::fs::fstat(fd)?;
    // `st_dev` and `st_ino` are unsigned on Linux; on the BSDs `st_dev` may be a signed
    // type: reinterpreting its bits keeps two different devices different.
    #[allow(
        clippy::cast_sign_loss,
        clippy::useless_conversion,
        trivial_numeric_casts
    )]
    let (dev, ino) = (stat.st_dev as u64, stat.st_ino as u64);
    Ok(endless_core::env::FileId::new(dev, ino))
}

/// The identity of the open file at the declared fd number `fd`, or `None` if it is not
/// open (or `fstat` fails): what [`endless_core::env::decode`] compares with the declared
/// one. Same contract as [`with_declared`].
pub(crate) fn observe_declared(fd: RawFd) -> Option<endless_core::env::FileId> {
    with_declared(fd, file_id).ok()?.ok()
}

/// Whether `FD_CLOEXEC` is set on `fd`.
#[allow(dead_code, reason = "for tests and adapters that check a descriptor")]
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::io::fcntl_getfd(fd)?.contains(FdFlags::CLOEXEC))
}

/// Sets `FD_CLOEXEC` on `fd`, whose flags are `flags` (as read just before).
pub(crate) fn add_cloexec(fd: BorrowedFd<'_>, flags: FdFlags) -> io::Result<()> {
    Ok(rustix::io::fcntl_setfd(fd, flags | FdFlags::CLOEXEC)?)
}

/// Sets `FD_CLOEXEC` on `fd`, so that no program this process executes inherits it.
#[allow(
    dead_code,
    reason = "for adapters that take a descriptor of unknown flags"
)]
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    if !flags.contains(FdFlags::CLOEXEC) {
        rustix::io::fcntl_setfd(fd, flags | FdFlags::CLOEXEC)?;
    }
    Ok(())
}

/// The file status flags of `fd` (`fcntl(F_GETFL)`: access mode, `O_NONBLOCK`, …).
pub(crate) fn status_flags(fd: BorrowedFd<'_>) -> io::Result<OFlags> {
    Ok(rustix::fs::fcntl_getfl(fd)?)
}

/// Sets `O_NONBLOCK` on `fd`'s open file description (shared with every duplicate of it).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = status_flags(fd)?;
    if !flags.contains(OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
    }
    Ok(())
}

/// Whether the socket `fd` is listening (`getsockopt(SOL_SOCKET, SO_ACCEPTCONN)`).
///
/// Fails with `ENOTSOCK` if `fd` is not a socket.
///
/// Apple systems declare `SO_ACCEPTCONN` but do not implement it (rustix and socket2 leave
/// it out there): on them, a socket without a peer (`getpeername` fails with `ENOTCONN`)
/// counts as listening. That also takes a bound stream socket on which `listen` was never
/// called for a listener: the check of an inherited listener is weaker there.
#[cfg(not(target_vendor = "apple"))]
pub(crate) fn is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::net::sockopt::socket_acceptconn(fd)?)
}

/// See the other platforms' `is_listening`: Apple's way, by the absence of a peer.
#[cfg(target_vendor = "apple")]
pub(crate) fn is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match rustix::net::getpeername(fd) {
        Ok(_) => Ok(false),
        Err(Errno::NOTCONN) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// The effective uid of the process at the other end of the Unix stream socket `fd`, as
/// it was when the connection was made: `SO_PEERCRED` on Linux and Android, `getpeereid`
/// on Apple systems and the BSDs; `None` where the system offers neither.
pub(crate) fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        Ok(Some(
            rustix::net::sockopt::socket_peercred(fd)?.uid.as_raw(),
        ))
    }
    #[cfg(any(
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    ))]
    {
        use std::os::fd::AsRawFd;
        let mut uid: libc::uid_t = 0;
        let mut gid: libc::gid_t = 0;
        // SAFETY: `fd` is an open descriptor borrowed for the call, and `uid` and `gid`
        // are valid, writable locations of the types `getpeereid` writes.
        cvt(unsafe { libc::getpeereid(fd.as_raw_fd(), &mut uid, &mut gid) })?;
        Ok(Some(uid))
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    )))]
    {
        let _ = fd;
        Ok(None)
    }
}

/// A new fd for `fd`'s open file description, close-on-exec, at the lowest free number
/// `>= min` (`fcntl(F_DUPFD_CLOEXEC)`).
#[allow(
    dead_code,
    reason = "for tests and for adapters that duplicate descriptors"
)]
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, min)?)
}

// ---------------------------------------------------------------------------------------
// Inherited fd numbers
// ---------------------------------------------------------------------------------------

/// The fd numbers [`adopt`] has turned into `OwnedFd`s in this process, ever.
static ADOPTED: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Runs `f` with `fd` borrowed, if the number `fd` is open (`EBADF` otherwise).
///
/// For the inspection of inherited fds before they are adopted. Contract (the reason this
/// is not an `unsafe fn`): the callers in this crate pass only numbers that the
/// environment declares as handed to this process, which nothing else in the process owns,
/// so nothing closes them while `f` runs. `f` may query the fd and change its descriptor
/// flags; it cannot close it (a `BorrowedFd` does not allow that).
pub(crate) fn with_declared<R>(fd: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> R) -> io::Result<R> {
    with_declared_flags(fd, |fd, _| f(fd))
}

/// As [`with_declared`], and `f` gets the fd's descriptor flags too (read by the same
/// `fcntl(F_GETFD)` that checks the number is open: one system call, not two, for each of
/// the thousand listeners a process may inherit).
pub(crate) fn with_declared_flags<R>(
    fd: RawFd,
    f: impl FnOnce(BorrowedFd<'_>, FdFlags) -> R,
) -> io::Result<R> {
    let Some(flags) = fd_flags(fd)? else {
        return Err(Errno::BADF.into());
    };
    // SAFETY: `fd` is open (checked just above) and, by the contract above, stays open until
    // `f` returns: it belongs to no other object of this process, and the borrow cannot
    // outlive this call because `f` only gets it for its own duration.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(f(borrowed, flags))
}

/// The first of `fds` that an earlier [`adopt`] took, if any (checked before anything is
/// changed on the fds, so that reading the environment twice says so).
pub(crate) fn first_adopted(fds: &[RawFd]) -> Option<RawFd> {
    let adopted = ADOPTED.lock().unwrap_or_else(PoisonError::into_inner);
    fds.iter().copied().find(|fd| adopted.contains(fd))
}

/// Takes ownership of the inherited fd numbers `fds`, all or none.
///
/// Fails, naming the first offending number, with `EBADF` if it is not open, and with
/// `EALREADY` if it is listed twice or was already adopted in this process (by an earlier
/// `Inherited`), which keeps any number from having two owners. Contract (the reason this
/// is not an `unsafe fn`): callers pass only numbers that the environment declares as
/// handed to this process and that they have checked; nothing else in the process owns
/// them.
pub(crate) fn adopt(fds: &[RawFd]) -> Result<Vec<OwnedFd>, (RawFd, io::Error)> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(PoisonError::into_inner);
    let mut seen = BTreeSet::new();
    for &fd in fds {
        if adopted.contains(&fd) || !seen.insert(fd) {
            return Err((fd, Errno::ALREADY.into()));
        }
    }
    for &fd in fds {
        match is_open(fd) {
            Ok(true) => {}
            Ok(false) => return Err((fd, Errno::BADF.into())),
            Err(e) => return Err((fd, e)),
        }
    }
    adopted.extend(fds.iter().copied());
    Ok(fds
        .iter()
        .map(|&fd| {
            // SAFETY: `fd` is open (checked above, under the lock), and it has no other
            // owner: the environment handed it to this process (the caller's contract), it
            // appears once in `fds`, and the registry shows that no earlier call made an
            // `OwnedFd` of it. It is recorded before the lock is released, so no later
            // call will either.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Spawning with posix_spawn, watching a child by pidfd
// ---------------------------------------------------------------------------------------

/// What [`posix_spawn`] starts: every string already a C string, so that nothing is
/// converted or checked between the file actions and the call.
pub(crate) struct SpawnArgs<'a> {
    /// The absolute path of the program.
    pub(crate) program: &'a CStr,
    /// `argv`, `argv[0]` first.
    pub(crate) argv: &'a [CString],
    /// The whole environment, `KEY=value` each.
    pub(crate) envp: &'a [CString],
    /// The working directory to change to in the child.
    pub(crate) cwd: &'a CStr,
    /// The fd plan, one file action per step.
    pub(crate) steps: &'a [Step],
}

/// Owns an initialised `posix_spawn_file_actions_t`; destroys it when dropped.
struct FileActions(MaybeUninit<libc::posix_spawn_file_actions_t>);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut actions = Self(MaybeUninit::uninit());
        // SAFETY: init writes an initialised object to the pointer it is given, which points
        // at storage of the right type; on failure the object is not initialised, and is
        // forgotten so that Drop does not destroy it.
        let rc = unsafe { libc::posix_spawn_file_actions_init(actions.0.as_mut_ptr()) };
        if rc != 0 {
            std::mem::forget(actions);
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(actions)
    }

    fn as_mut_ptr(&mut self) -> *mut libc::posix_spawn_file_actions_t {
        self.0.as_mut_ptr()
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: the object was initialised by `new` (a failed init is forgotten there) and
        // is destroyed once, here.
        unsafe {
            libc::posix_spawn_file_actions_destroy(self.0.as_mut_ptr());
        }
    }
}

/// Owns an initialised `posix_spawnattr_t`; destroys it when dropped.
struct SpawnAttr(MaybeUninit<libc::posix_spawnattr_t>);

impl SpawnAttr {
    fn new() -> io::Result<Self> {
        let mut attr = Self(MaybeUninit::uninit());
        // SAFETY: as for `FileActions::new`.
        let rc = unsafe { libc::posix_spawnattr_init(attr.0.as_mut_ptr()) };
        if rc != 0 {
            std::mem::forget(attr);
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(attr)
    }

    fn as_mut_ptr(&mut self) -> *mut libc::posix_spawnattr_t {
        self.0.as_mut_ptr()
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: as for `FileActions`.
        unsafe {
            libc::posix_spawnattr_destroy(self.0.as_mut_ptr());
        }
    }
}

/// `0` or the error number a `posix_spawn*` function returned, as an `io::Result`.
fn spawn_rc(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// `posix_spawn_file_actions_addchdir_np(actions, dir)`, looked up when it is first
/// needed: glibc has it since 2.29, musl since 1.1.24, macOS since 10.15, FreeBSD since
/// 13.1 (POSIX 2024 names it `addchdir`). Linking it directly would keep a binary from
/// starting on an older system; there, a child that starts in this process's directory
/// needs no action, and one that does not fails the spawn with `Unsupported` (the running
/// generation keeps serving).
fn add_chdir(actions: &mut FileActions, dir: &CStr) -> io::Result<()> {
    type AddChdir = unsafe extern "C" fn(
        *mut libc::posix_spawn_file_actions_t,
        *const libc::c_char,
    ) -> libc::c_int;
    #[cfg(target_env = "musl")]
    let add: Option<AddChdir> = Some(libc::posix_spawn_file_actions_addchdir_np);
    #[cfg(not(target_env = "musl"))]
    let add: Option<AddChdir> = {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
        let symbol = unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addchdir_np".as_ptr(),
            )
        };
        // SAFETY: a non-null result is the address of the C library's function of that
        // name, whose signature is `AddChdir` on every system that has it.
        (!symbol.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut libc::c_void, AddChdir>(symbol) })
    };
    let Some(add) = add else {
        // Nothing to add when the child starts where this process is (the usual case: an
        // application that never changed its directory).
        let here = |path: &Path| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
        let dir = Path::new(std::ffi::OsStr::from_bytes(dir.to_bytes()));
        if here(dir).is_some() && here(dir) == here(Path::new(".")) {
            return Ok(());
        }
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this C library cannot change the working directory of a spawned process \
             (posix_spawn_file_actions_addchdir_np: glibc 2.29, musl 1.1.24, macOS 10.15, \
             FreeBSD 13.1)",
        ));
    };
    // SAFETY: `actions` is initialised, `dir` is NUL-terminated; the function copies it.
    spawn_rc(unsafe { add(actions.as_mut_ptr(), dir.as_ptr()) })
}

/// Starts `args.program` with `posix_spawn`: the C library (or the kernel) creates the
/// child with vfork semantics, so the cost does not grow with this process's memory and no
/// page of it is copied, runs the file actions (the plan's `dup2`s and `close`, then the
/// `chdir`), puts the child in a process group of its own (`POSIX_SPAWN_SETPGROUP`, group
/// 0: its pid), empties its signal mask and sets `SIGPIPE` back to its default action (Rust
/// programs ignore it, and an ignored signal stays ignored across `exec`; std's `Command`
/// resets it the same way), and execs. None of our code runs in the child. Returns the
/// child's pid.
///
/// A failed file action or `exec` is reported here, as an error (glibc since 2.24, musl,
/// macOS and FreeBSD all report them), and leaves no child behind.
pub(crate) fn posix_spawn(args: &SpawnArgs<'_>) -> io::Result<u32> {
    let mut actions = FileActions::new()?;
    for step in args.steps {
        match *step {
            // SAFETY: `actions` is initialised; the call records two integers.
            Step::Dup2 { from, to } => spawn_rc(unsafe {
                libc::posix_spawn_file_actions_adddup2(actions.as_mut_ptr(), from, to)
            })?,
            // SAFETY: as above.
            Step::Close { fd } => spawn_rc(unsafe {
                libc::posix_spawn_file_actions_addclose(actions.as_mut_ptr(), fd)
            })?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the fd plan has a step this version of endless-unix cannot run",
                ));
            }
        }
    }
    add_chdir(&mut actions, args.cwd)?;

    let mut attr = SpawnAttr::new()?;
    let flags =
        libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
    let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
    let mut pipe = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: each call gets the initialised attribute object or a sigset_t that
    // sigemptyset has initialised before it is read; the attribute calls copy what they
    // are given.
    unsafe {
        cvt(libc::sigemptyset(empty.as_mut_ptr()))?;
        cvt(libc::sigemptyset(pipe.as_mut_ptr()))?;
        cvt(libc::sigaddset(pipe.as_mut_ptr(), libc::SIGPIPE))?;
        spawn_rc(libc::posix_spawnattr_setflags(
            attr.as_mut_ptr(),
            flags as libc::c_short,
        ))?;
        spawn_rc(libc::posix_spawnattr_setpgroup(attr.as_mut_ptr(), 0))?;
        spawn_rc(libc::posix_spawnattr_setsigmask(
            attr.as_mut_ptr(),
            empty.as_ptr(),
        ))?;
        spawn_rc(libc::posix_spawnattr_setsigdefault(
            attr.as_mut_ptr(),
            pipe.as_ptr(),
        ))?;
    }

    let argv: Vec<*mut libc::c_char> = args
        .argv
        .iter()
        .map(|a| a.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect();
    let envp: Vec<*mut libc::c_char> = args
        .envp
        .iter()
        .map(|e| e.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect();
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: `pid` is a local, `program` and every
    // string of `argv` and `envp` are NUL-terminated and outlive the call (borrowed from
    // `args`), both arrays end with a null pointer, and `actions` and `attr` are
    // initialised. posix_spawn does not write through the `argv`/`envp` pointers (their
    // `*mut` is the C prototype's historical spelling).
    spawn_rc(unsafe {
        libc::posix_spawn(
            &mut pid,
            args.program.as_ptr(),
            actions.as_mut_ptr(),
            attr.as_mut_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    u32::try_from(pid).map_err(|_| io::Error::other("posix_spawn returned a negative pid"))
}

/// A pidfd for the child `pid` (`pidfd_open`, Linux 5.3 and later), close-on-exec.
/// `Ok(None)` where the kernel or the platform has none.
///
/// Call it only while `pid` is an unreaped child of this process: then the number cannot
/// name another process, and the pidfd refers to the child for good (a signal sent through
/// it after the child is reaped fails with `ESRCH` instead of reaching a new owner of the
/// number).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<Option<OwnedFd>> {
    #[cfg(target_os = "linux")]
    {
        let pid = process_id(pid)?;
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Ok(Some(fd)),
            // Before 5.3, or refused by a seccomp filter.
            Err(Errno::NOSYS | Errno::PERM | Errno::ACCESS) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        Ok(None)
    }
}

/// `signal` to the process `pidfd` refers to (`pidfd_send_signal`); `Ok(false)` if it has
/// exited.
#[cfg(target_os = "linux")]
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<bool> {
    match rustix::process::pidfd_send_signal(pidfd, signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the child `pidfd` refers to if it has exited (`waitid(P_PIDFD, WEXITED |
/// WNOHANG)`, Linux 5.4; on 5.3, which has pidfds but not `P_PIDFD`, by its `pid`).
#[cfg(target_os = "linux")]
pub(crate) fn try_reap_pidfd(
    pidfd: BorrowedFd<'_>,
    pid: u32,
) -> io::Result<Option<std::process::ExitStatus>> {
    use rustix::process::{WaitId, WaitIdOptions};
    match retry_rustix(|| {
        rustix::process::waitid(
            WaitId::PidFd(pidfd),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        )
    }) {
        Ok(status) => Ok(status.and_then(|s| exit_status_of(&s))),
        Err(e) if is_errno(&e, Errno::INVAL) => try_reap(pid),
        Err(e) => Err(e),
    }
}

/// Reaps the child `pid` if it has exited (`waitpid(pid, WNOHANG)`).
pub(crate) fn try_reap(pid: u32) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let pid = process_id(pid)?;
    let reaped =
        retry_rustix(|| rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG))?;
    Ok(reaped.map(|(_, status)| std::process::ExitStatus::from_raw(status.as_raw())))
}

/// Blocks until the child `pid` has exited, without reaping it (`waitid(P_PID, WEXITED |
/// WNOWAIT)`): the fallback watcher where there is no pidfd. The child stays a zombie, so
/// its pid (and group id) cannot be reused until [`try_reap`] reaps it.
pub(crate) fn wait_exited(pid: u32) -> io::Result<()> {
    use rustix::process::{WaitId, WaitIdOptions};
    let pid = process_id(pid)?;
    retry_rustix(|| {
        rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        )
    })
    .map(drop)
}

/// The wait status `waitid` described, as std's `ExitStatus` (`None`: not an exit).
#[cfg(target_os = "linux")]
fn exit_status_of(status: &rustix::process::WaitIdStatus) -> Option<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    // The encoding of `wait` statuses: the code in the second byte, or the signal in the
    // low seven bits, with 0x80 for a core dump.
    let raw = if let Some(code) = status.exit_status() {
        (code & 0xff) << 8
    } else {
        let signal = status.terminating_signal()?;
        signal
            | if status.raw_code() == libc::CLD_DUMPED {
                0x80
            } else {
                0
            }
    };
    Some(std::process::ExitStatus::from_raw(raw))
}

/// `pid` as a process id: 1 to `i32::MAX`.
fn process_id(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))
}

// ---------------------------------------------------------------------------------------
// Paths, processes, sockets
// ---------------------------------------------------------------------------------------

/// Whether this process may execute `path` (`access(path, X_OK)`), following symlinks.
///
/// Uses the real uid and gid (as `access` does). As root, any regular file with at least
/// one execute bit passes.
pub(crate) fn access_executable(path: &Path) -> io::Result<()> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path contains a NUL byte",
        ));
    }
    Ok(rustix::fs::access(path, rustix::fs::Access::EXEC_OK)?)
}

/// Shuts down both directions of the socket `fd` (`shutdown(fd, SHUT_RDWR)`), so that the
/// peer sees the connection end and every pending or later read and write on it in this
/// process returns at once, while the fd stays open (its owner closes it).
///
/// Used to force-close tracked connections at the drain deadline. The caller must make sure
/// `fd` still is the connection it means (for example by holding its registration until
/// the connection is dropped); on a closed number this fails with `EBADF`. `ENOTCONN` (the
/// connection is already gone) counts as success.
///
/// By hand rather than with rustix's `shutdown`, which takes a `BorrowedFd`: the tracker
/// keeps bare numbers, so a borrow would take an `unsafe` `borrow_raw` all the same, with a
/// promise that the number is open which the `EBADF` case above does not keep.
#[allow(dead_code, reason = "used by the connection tracker")]
pub(crate) fn shutdown_both(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown on an fd number touches no memory; on a number that is not a socket
    // it fails (EBADF, ENOTSOCK).
    match cvt(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }) {
        Err(e) if is_errno(&e, Errno::NOTCONN) => Ok(()),
        other => other.map(drop),
    }
}

/// Sends `signal` (a raw signal number, such as `Signal::TERM.as_raw()` or `libc::SIGTERM`)
/// to the process `pid` and says whether there was one: `Ok(false)` if no process has that
/// pid (`ESRCH`). Signal `0` sends nothing and only checks that the process exists (a
/// process that exists but belongs to another user fails with `PermissionDenied`).
///
/// A missing process is reported: the restart command must tell a stale pid file apart
/// from a signal that was delivered. `pid` must be a real process id (1 to `i32::MAX`): `0`
/// and values that would turn negative as a `pid_t` address process groups or every
/// process, and are refused with `InvalidInput`.
pub(crate) fn signal_process(pid: u32, signal: i32) -> io::Result<bool> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to signal pid 0 or a pid above i32::MAX (a process group)",
            )
        })?;
    let sent = match (signal, Signal::from_named_raw(signal)) {
        (0, _) => rustix::process::test_kill_process(pid).map_err(io::Error::from),
        (_, Some(named)) => rustix::process::kill_process(pid, named).map_err(io::Error::from),
        (_, None) => kill_unnamed(pid, signal),
    };
    match sent {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, Errno::SRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends `signal` to the child `pid` and to every process of its process group `pid` (the
/// group [`crate::spawn::prepare`] makes it lead), so that what it started goes with it. A
/// child that no longer exists (`ESRCH`) counts as success.
///
/// Call it only while the child is not reaped: until then its pid cannot be reused, and
/// neither can the group id, which is that same number (the kernel hands out no pid that is
/// still in use as a process id or a process group id). After the reap, a stranger could
/// own both, which is why only the task that owns and reaps the child calls this.
///
/// A child that left its group (`setpgid`, `setsid`: a daemonizing server) is signalled by
/// its pid as well; a child spawned without a group of its own (`ESRCH` for the group)
/// only by its pid. Pids 0 and 1 and values above `i32::MAX` are refused with
/// `InvalidInput`: `kill(-1)` would reach every process.
pub(crate) fn signal_child_group(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = group_id(pid)?;
    let gone = |e: &io::Error| is_errno(e, Errno::SRCH);
    match rustix::process::kill_process_group(pid, signal).map_err(io::Error::from) {
        Err(e) if !gone(&e) => return Err(e),
        _ => {}
    }
    // Still its group's leader (a zombie too: `getpgid` sees it until it is reaped)? Then
    // the group signal reached it.
    match rustix::process::getpgid(Some(pid)).map_err(io::Error::from) {
        Ok(pgid) if pgid == pid => Ok(()),
        Ok(_) => match rustix::process::kill_process(pid, signal).map_err(io::Error::from) {
            Err(e) if !gone(&e) => Err(e),
            _ => Ok(()),
        },
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `signal` to the process group `pgid` only; `Ok(false)` if there is no such group (see
/// [`crate::spawn::kill_left_behind`] for when that is safe to call after a reap).
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> io::Result<bool> {
    let pgid = group_id(pgid)?;
    match rustix::process::kill_process_group(pgid, signal) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `pid` as a process group id that may be signalled: not 0 or 1, not above `i32::MAX`.
fn group_id(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|&p| p > 1)
        .and_then(Pid::from_raw)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to signal process group 0, 1 or above i32::MAX",
            )
        })
}

/// `kill(pid, signal)` for a signal number that rustix does not name (a real-time signal,
/// say, or a number that is no signal at all, which the kernel refuses with `EINVAL`).
///
/// By hand: rustix makes a `Signal` of such a number only through `from_raw_unchecked`,
/// whose contract excludes the numbers libc reserves for itself, which this function
/// cannot tell apart; `kill` itself is safe with any number.
fn kill_unnamed(pid: Pid, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory; `pid` is positive (a `Pid`),
    // so it names one process.
    cvt(unsafe { libc::kill(pid.as_raw_pid(), signal) }).map(drop)
}

/// The time of `CLOCK_MONOTONIC` (`clock_gettime`), as the time since its origin (boot, on
/// Linux): the clock of systemd's `MONOTONIC_USEC=`, which `std::time::Instant` reads too
/// but does not expose as a number.
pub(crate) fn monotonic_now() -> io::Result<std::time::Duration> {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let out_of_range =
        || io::Error::new(io::ErrorKind::InvalidData, "CLOCK_MONOTONIC out of range");
    let secs = u64::try_from(ts.tv_sec).map_err(|_| out_of_range())?;
    let nanos = u32::try_from(ts.tv_nsec)
        .ok()
        .filter(|&n| n < 1_000_000_000)
        .ok_or_else(out_of_range)?;
    Ok(std::time::Duration::new(secs, nanos))
}

/// This process's pid.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// The pid of this process's parent (the current one: 1 or a subreaper once it died).
pub(crate) fn getppid() -> u32 {
    std::os::unix::process::parent_id()
}

/// Writes the readiness line, [`endless_core::ready::message`] with this process's pid,
/// to the readiness channel `fd` (all of it, retrying on `EINTR` and partial writes), then
/// closes `fd`.
///
/// The line is far shorter than `PIPE_BUF`, so on a pipe it arrives in one piece. If the
/// parent is gone the write fails with `EPIPE` (Rust programs ignore `SIGPIPE` by default;
/// a program that restored the default disposition is killed by it instead).
pub(crate) fn send_readiness(fd: OwnedFd) -> io::Result<()> {
    send_readiness_and(fd, &[])
}

/// [`send_readiness`], with `after` (the next messages) in the same write: the parent reads
/// them with the line.
pub(crate) fn send_readiness_and(fd: OwnedFd, after: &[u8]) -> io::Result<()> {
    let mut message = endless_core::ready::message(getpid());
    message.extend_from_slice(after);
    let mut channel = File::from(fd);
    // The whole line, in one write where the channel has room (it always has: it is new).
    channel.write_all(&message)?;
    // Dropping `channel` closes the fd; a close error after a complete write changes
    // nothing the parent sees.
    drop(channel);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The channel between generations: a Unix stream socketpair that carries sockets
// (SCM_RIGHTS); `crate::channel` frames the messages on it
// ---------------------------------------------------------------------------------------

/// A pair of connected Unix `SOCK_STREAM` sockets, both close-on-exec: the readiness and
/// takeover channel between a generation and the one it spawns. A byte stream, which
/// every Unix has (macOS has no `SOCK_SEQPACKET` for Unix sockets); the messages on it say
/// their own length ([`endless_core::takeover::message_len`]).
pub(crate) fn channel_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    // socket2 creates every socket close-on-exec (atomically, where the system can).
    let (a, b) = Socket::pair(Domain::UNIX, Type::STREAM, None)?;
    // Apple systems have no `MSG_NOSIGNAL` (see `NOSIGNAL`): the sockets themselves never
    // raise `SIGPIPE` there.
    #[cfg(target_vendor = "apple")]
    {
        a.set_nosigpipe(true)?;
        b.set_nosigpipe(true)?;
    }
    Ok((a.into(), b.into()))
}

/// The flag that keeps a `send` on a channel from raising `SIGPIPE` (`MSG_NOSIGNAL`); a
/// peer that is gone gives `EPIPE` instead. Apple systems have no such flag: there the
/// channels of [`channel_pair`] are made `SO_NOSIGPIPE` when created, to the same
/// effect, and the flag is empty.
#[cfg(not(target_vendor = "apple"))]
const NOSIGNAL: SendFlags = SendFlags::NOSIGNAL;
#[cfg(target_vendor = "apple")]
const NOSIGNAL: SendFlags = SendFlags::empty();

/// The most descriptors one `send` attaches, and one `recvmsg` of [`recv_with_fds`] takes:
/// Linux's limit for one `SCM_RIGHTS` message (`SCM_MAX_FD`); elsewhere a number every
/// BSD and macOS passes.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const MAX_FDS: usize = 253;
/// The most descriptors one `send` attaches, and one `recvmsg` of [`recv_with_fds`] takes:
/// Linux's limit for one `SCM_RIGHTS` message (`SCM_MAX_FD`); elsewhere a number every
/// BSD and macOS passes.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const MAX_FDS: usize = 64;

/// Sends what it can of `bytes` on `socket`, a channel of [`channel_pair`], with `fds`
/// attached to the first byte (`SCM_RIGHTS`: the receiver gets its own descriptors of the
/// same open files), and returns how many bytes went; `fds` went with them if that is not
/// 0. Never raises `SIGPIPE` (see `NOSIGNAL`): a peer that is gone gives `EPIPE`. With
/// `dont_wait`, or on a non-blocking `socket`, `WouldBlock` when there is no room: nothing
/// was sent then.
pub(crate) fn send_part(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    dont_wait: bool,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message (at most {MAX_FDS})",
                fds.len()
            ),
        ));
    }
    let flags = if dont_wait {
        NOSIGNAL | SendFlags::DONTWAIT
    } else {
        NOSIGNAL
    };
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        // Not reached: `space` is sized for `MAX_FDS` descriptors.
        return Err(io::Error::other(
            "no room for the descriptors' control message",
        ));
    }
    let iov = [IoSlice::new(bytes)];
    retry_rustix(|| rustix::net::sendmsg(socket, &iov, &mut control, flags))
}

/// What one [`recv_with_fds`] read.
#[derive(Debug)]
pub(crate) struct Record {
    /// The bytes read (of a `SOCK_SEQPACKET` record: those that fit the buffer).
    pub(crate) len: usize,
    /// The descriptors that came with it, close-on-exec and owned by this process now
    /// (those past [`MAX_FDS`] were closed by the kernel).
    pub(crate) fds: Vec<OwnedFd>,
}

/// Reads from `socket` into `buf`, with up to [`MAX_FDS`] descriptors that came with the
/// bytes read, received close-on-exec (`MSG_CMSG_CLOEXEC`): on a stream, at most `buf.len()`
/// bytes (the kernel attaches descriptors to the first byte of the send that carried them,
/// so a reader that never asks past the end of a message gets only that message's); on a
/// `SOCK_SEQPACKET` socket, one record. 0 bytes without descriptors is the end of the
/// stream (the peer closed its end). A non-blocking `socket` may fail with `WouldBlock`.
///
/// Apple systems have no `MSG_CMSG_CLOEXEC`: there each descriptor is made close-on-exec
/// right after `recvmsg` returns. That leaves a window: a process that another thread
/// spawns (fork and exec) between the two calls inherits the received descriptors, and
/// keeps a connection open that this process closes. (Every spawn of endless itself
/// passes its fds explicitly; the window concerns other code of the application.)
pub(crate) fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Record> {
    #[cfg(not(target_vendor = "apple"))]
    const FLAGS: RecvFlags = RecvFlags::CMSG_CLOEXEC;
    #[cfg(target_vendor = "apple")]
    const FLAGS: RecvFlags = RecvFlags::empty();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = retry_rustix(|| rustix::net::recvmsg(socket, &mut iov, &mut control, FLAGS))?;
    let fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    #[cfg(target_vendor = "apple")]
    for fd in &fds {
        // Closed with the others (dropped) if this fails: none is left without the flag.
        set_cloexec(std::os::fd::AsFd::as_fd(fd))?;
    }
    Ok(Record {
        len: msg.bytes,
        fds,
    })
}

/// Blocks until `fd` is readable (or, with `write`, writable), or in error or hung up
/// (the next operation then reports it).
pub(crate) fn wait_fd(fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
    wait_fd_for(fd, write, None).map(drop)
}

/// [`wait_fd`] for at most `timeout` (`None`: without limit); whether `fd` became ready.
pub(crate) fn wait_fd_for(
    fd: BorrowedFd<'_>,
    write: bool,
    timeout: Option<std::time::Duration>,
) -> io::Result<bool> {
    let events = if write { PollFlags::OUT } else { PollFlags::IN };
    let mut pollfd = [PollFd::from_borrowed_fd(fd, events)];
    let timeout = timeout
        .map(rustix::time::Timespec::try_from)
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "timeout out of range"))?;
    retry_rustix(|| rustix::event::poll(&mut pollfd, timeout.as_ref())).map(|n| n > 0)
}

// ---------------------------------------------------------------------------------------
// Anonymous files: the application state handed to the successor
// ---------------------------------------------------------------------------------------

/// A new file that has no name, open for reading and writing, close-on-exec: a `memfd`
/// where the system has them (Linux, Android, FreeBSD; sealable), else a file created in
/// `std::env::temp_dir()` with a fresh name, mode 0600, and unlinked at once.
pub(crate) fn anonymous_file(name: &str) -> io::Result<File> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        use rustix::fs::MemfdFlags;
        match rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING) {
            Ok(fd) => return Ok(File::from(fd)),
            // An old kernel, or a sandbox that forbids it: a file in the temp dir will do.
            Err(Errno::NOSYS | Errno::PERM | Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    unlinked_file(&std::env::temp_dir(), name)
}

/// A file created in `dir` under a fresh name, mode 0600, close-on-exec (std opens every
/// file so), and unlinked before it is returned.
pub(crate) fn unlinked_file(dir: &Path, name: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            // Left behind by a process that had our pid: try the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Makes `file` read-only for good where the system can say so (the seals of a `memfd`):
/// whoever holds it can rely on its contents not changing. Elsewhere, or for a file that
/// cannot be sealed, does nothing.
pub(crate) fn seal(file: &File) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        use rustix::fs::SealFlags;
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL;
        if let Err(e) = rustix::fs::fcntl_add_seals(file, seals) {
            tracing::debug!(error = %e, "the application state file is not sealed");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let _ = file;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;

    #[test]
    fn flags_and_dup() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(is_cloexec(a.as_fd()).unwrap(), "std sets FD_CLOEXEC");
        let dup = dup_at_least(a.as_fd(), 100).unwrap();
        assert!(dup.as_raw_fd() >= 100);
        assert!(is_cloexec(dup.as_fd()).unwrap());
        assert!(
            !status_flags(dup.as_fd())
                .unwrap()
                .contains(OFlags::NONBLOCK)
        );
        set_nonblocking(dup.as_fd()).unwrap();
        // Shared by the open file description.
        assert!(status_flags(a.as_fd()).unwrap().contains(OFlags::NONBLOCK));
        assert!(!is_listening(a.as_fd()).unwrap());
        assert!(is_open(dup.as_raw_fd()).unwrap());
        assert!(!is_open(RawFd::MAX).unwrap());
        assert!(!is_open(-1).unwrap());
    }

    #[test]
    fn with_declared_refuses_a_closed_number() {
        let e = with_declared(RawFd::MAX, |_| ()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::BADF.raw_os_error()));
        let (a, _b) = UnixStream::pair().unwrap();
        let raw = a.as_raw_fd();
        assert_eq!(with_declared(raw, |fd| fd.as_raw_fd()).unwrap(), raw);
    }

    #[test]
    fn adopt_refuses_duplicates_and_closed_numbers_without_adopting_any() {
        let (fd, e) = adopt(&[RawFd::MAX - 1, RawFd::MAX - 1]).unwrap_err();
        assert_eq!(
            (fd, e.raw_os_error()),
            (RawFd::MAX - 1, Some(Errno::ALREADY.raw_os_error()))
        );
        let (fd, e) = adopt(&[RawFd::MAX - 1]).unwrap_err();
        assert_eq!(
            (fd, e.raw_os_error()),
            (RawFd::MAX - 1, Some(Errno::BADF.raw_os_error()))
        );
        // Nothing was recorded by the failed calls.
        let adopted = ADOPTED.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!adopted.contains(&(RawFd::MAX - 1)));
    }

    #[test]
    fn signal_process_reports_missing_processes() {
        for pid in [0, u32::MAX, 1 << 31] {
            assert_eq!(
                signal_process(pid, 0).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{pid}"
            );
        }
        assert!(signal_process(getpid(), 0).unwrap());
        assert_ne!(getppid(), 0);
        // Far above any pid_max: no such process.
        assert!(!signal_process(i32::MAX.unsigned_abs(), 0).unwrap());
    }

    #[test]
    fn shutdown_both_ends_the_peer_and_tolerates_gone_connections() {
        let (a, mut b) = UnixStream::pair().unwrap();
        shutdown_both(a.as_raw_fd()).unwrap();
        let mut buf = [0; 1];
        assert_eq!(b.read(&mut buf).unwrap(), 0, "the peer sees EOF");
        shutdown_both(a.as_raw_fd()).unwrap();
        let e = shutdown_both(RawFd::MAX).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::BADF.raw_os_error()));
    }

    #[test]
    fn notify_parent_writes_the_line_and_closes() {
        let (reader, writer) = io::pipe().unwrap();
        send_readiness(OwnedFd::from(writer)).unwrap();
        let mut got = Vec::new();
        // read_to_end returns only at EOF: the write end was closed.
        File::from(OwnedFd::from(reader))
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, endless_core::ready::message(getpid()));
    }

    #[test]
    fn signal_child_group_refuses_broadcasts() {
        for pid in [0, 1, u32::MAX, 1 << 31] {
            let e = signal_child_group(pid, Signal::TERM).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{pid}");
        }
    }

    #[test]
    fn signal_child_group_kills_what_the_child_started() {
        use std::io::BufRead;
        // A wrapper that runs its child without `exec`, in a group of its own as `prepare`
        // makes it.
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 600 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleep: u32 = line.trim().parse().unwrap();
        signal_child_group(child.id(), Signal::KILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // The orphaned `sleep` was killed too (its new parent reaps it): gone, or a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{sleep}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()));
            match state {
                None => break,
                Some(r) if r.starts_with('Z') || r.starts_with('X') => break,
                Some(_) => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {sleep} lives on"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Reaped: a no-op now (no such process or group).
        signal_child_group(child.id(), Signal::KILL).unwrap();
    }

    #[test]
    fn monotonic_now_moves_forward() {
        let a = monotonic_now().unwrap();
        let b = monotonic_now().unwrap();
        assert!(a > std::time::Duration::ZERO);
        assert!(b >= a);
    }

    #[test]
    fn access_executable_checks_the_execute_permission() {
        access_executable(Path::new("/bin/sh")).unwrap();
        assert!(access_executable(Path::new("/nonexistent/endless")).is_err());
        assert_eq!(
            access_executable(Path::new("a\0b")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
