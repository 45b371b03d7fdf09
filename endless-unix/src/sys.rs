//! Raw file descriptor primitives: the only module of this crate with `unsafe` code.
//!
//! Every function here is safe to call and wraps one small system call (or one ownership
//! step). Most are built on [`rustix`] and [`socket2`], whose typed, I/O-safe interfaces
//! need no `unsafe`; `libc` is called by hand only where they cannot say what is meant:
//! on fd *numbers* that no Rust object owns (which may not even be open), in the child
//! between `fork` and `exec`, and for signal numbers that rustix does not name. Each of
//! those `unsafe` blocks has its safety argument next to it. Everything else in the crate
//! is safe code built on these functions, rustix, socket2 and std.
//!
//! Two functions work on fd *numbers* that no Rust object owns yet: [`with_declared`] and
//! [`adopt`]. They exist for the fds a parent process hands over (at 3, 4, … by the
//! environment's contract, which says that these numbers belong to this process and to
//! nothing else in it). The registry in [`adopt`] makes sure each such number is owned at
//! most once per process.
//!
//! [`install_plan`] is the code that runs in the child between `fork` and `exec`; it is
//! async-signal-safe (see its docs).
//!
//! # Platforms
//!
//! Linux is where this runs and is tested; the rest is type-checked only. Where a Linux
//! facility is missing, the functions here choose the platform's way by `cfg`, and say so
//! in their docs: Apple systems have no `MSG_NOSIGNAL` (`SO_NOSIGPIPE` instead), no
//! `MSG_CMSG_CLOEXEC` ([`recv_with_fds`]), no `SO_ACCEPTCONN` ([`is_listening`]), no
//! `SOCK_SEQPACKET` for Unix sockets ([`seqpacket_pair`] fails, and with it every spawn:
//! no restart), and no `SOCK_CLOEXEC`: there socket2, std and the runtimes set
//! close-on-exec right after `socket`, `socketpair` and `accept` return, which leaves the
//! window described at [`recv_with_fds`] (a process that another thread spawns in between
//! inherits the new socket). Peer credentials come from [`peer_uid`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use endless_core::plan::{Plan, Source, Step};
use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
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

/// Calls `f` again as long as it fails with `EINTR`.
fn retry(mut f: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
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

/// Sets `FD_CLOEXEC` on `fd`, so that no program this process executes inherits it.
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
    if !is_open(fd)? {
        return Err(Errno::BADF.into());
    }
    // SAFETY: `fd` is open (checked just above) and, by the contract above, stays open until
    // `f` returns: it belongs to no other object of this process, and the borrow cannot
    // outlive this call because `f` only gets it for its own duration.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(f(borrowed))
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
// Running a renumbering plan between fork and exec
// ---------------------------------------------------------------------------------------

/// One step of a plan, converted before `fork` into a form that needs no decisions after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Stash { fd: RawFd, slot: usize, min: RawFd },
    Dup2 { from: RawFd, to: RawFd },
    Dup2FromStash { slot: usize, to: RawFd },
    ClearCloexec { fd: RawFd },
    CloseStash { slot: usize },
}

fn ops(plan: &Plan) -> io::Result<Vec<Op>> {
    plan.steps()
        .iter()
        .map(|step| match *step {
            Step::Stash { fd, slot, min } => Ok(Op::Stash { fd, slot, min }),
            Step::Dup2 {
                from: Source::Fd(from),
                to,
            } => Ok(Op::Dup2 { from, to }),
            Step::Dup2 {
                from: Source::Stash(slot),
                to,
            } => Ok(Op::Dup2FromStash { slot, to }),
            Step::ClearCloexec { fd } => Ok(Op::ClearCloexec { fd }),
            Step::CloseStash { slot } => Ok(Op::CloseStash { slot }),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the renumbering plan has a step this version of endless-unix cannot run",
            )),
        })
        .collect()
}

/// Makes `command` run `plan` in the child, after `fork` and before `exec`.
///
/// The steps are converted and the stash array (`plan.stash_slots()` fds) is allocated
/// here, before `fork`. The hook itself allocates nothing, takes no lock and logs nothing:
/// it only calls `fcntl`, `dup2` and `close` (all async-signal-safe), retrying on `EINTR`,
/// and indexes the preallocated arrays without panicking. On the first failure it returns
/// the OS error (an `io::Error` made from `errno`, which does not allocate); std then
/// reports it from `spawn` (or, if its error pipe was overwritten, the child exits).
pub(crate) fn install_plan(command: &mut Command, plan: &Plan) -> io::Result<()> {
    let ops = ops(plan)?;
    let mut stash: Vec<RawFd> = vec![-1; plan.stash_slots()];
    let hook = move || run_ops(&ops, &mut stash);
    // SAFETY: `pre_exec` requires the closure to be safe to run in the forked child of a
    // possibly multi-threaded process, where only async-signal-safe functions may be called.
    // `run_ops` calls only fcntl, dup2 and close on fd numbers, reads the `ops` and writes
    // the `stash` slices that were allocated before fork, returns errors built from errno
    // (no allocation) and cannot panic (slice access goes through `get`/`get_mut`). It does
    // not touch any memory shared with other threads of the parent.
    unsafe {
        command.pre_exec(hook);
    }
    Ok(())
}

/// Runs the steps in the child. Async-signal-safe: see [`install_plan`].
fn run_ops(ops: &[Op], stash: &mut [RawFd]) -> io::Result<()> {
    let bad_slot = || io::Error::from_raw_os_error(libc::EINVAL);
    for op in ops {
        match *op {
            Op::Stash { fd, slot, min } => {
                // SAFETY: fcntl on an fd number with an integer argument touches no memory.
                let new = retry(|| unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })?;
                *stash.get_mut(slot).ok_or_else(bad_slot)? = new;
            }
            Op::Dup2 { from, to } => {
                // SAFETY: dup2 on fd numbers touches no memory. In the child, every fd is
                // a copy that only this (single-threaded) child can use.
                retry(|| unsafe { libc::dup2(from, to) })?;
            }
            Op::Dup2FromStash { slot, to } => {
                let from = *stash.get(slot).ok_or_else(bad_slot)?;
                // SAFETY: as above.
                retry(|| unsafe { libc::dup2(from, to) })?;
            }
            Op::ClearCloexec { fd } => {
                // SAFETY: fcntl on an fd number with integer arguments touches no memory.
                let flags = retry(|| unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
                // SAFETY: as above.
                retry(|| unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
            }
            Op::CloseStash { slot } => {
                let fd = *stash.get(slot).ok_or_else(bad_slot)?;
                // SAFETY: `fd` is the temporary this plan made with F_DUPFD_CLOEXEC in this
                // child; nothing else uses it. close is not retried: on EINTR the fd is
                // closed anyway (Linux), and retrying could close a reused number.
                cvt(unsafe { libc::close(fd) })?;
            }
        }
    }
    Ok(())
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
    let message = endless_core::ready::message(getpid());
    let mut channel = File::from(fd);
    // One write: on a SOCK_SEQPACKET channel the line is one record.
    channel.write_all(&message)?;
    // Dropping `channel` closes the fd; a close error after a complete write changes
    // nothing the parent sees.
    drop(channel);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The takeover channel: a SOCK_SEQPACKET socketpair that carries sockets (SCM_RIGHTS)
// ---------------------------------------------------------------------------------------

/// A pair of connected Unix `SOCK_SEQPACKET` sockets, both close-on-exec: the readiness
/// and takeover channel between a generation and the one it spawns. Each `send` is one
/// record; each `recv` reads one record.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    // socket2 creates every socket close-on-exec (atomically, where the system can).
    let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).map_err(|e| {
        // macOS has no SOCK_SEQPACKET for Unix sockets: no successor can be spawned there.
        if cfg!(target_vendor = "apple") && e.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "restarts need Unix SOCK_SEQPACKET sockets, which this system lacks",
            )
        } else {
            e
        }
    })?;
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
/// channels of [`seqpacket_pair`] are made `SO_NOSIGPIPE` when created, to the same
/// effect, and the flag is empty.
#[cfg(not(target_vendor = "apple"))]
const NOSIGNAL: SendFlags = SendFlags::NOSIGNAL;
#[cfg(target_vendor = "apple")]
const NOSIGNAL: SendFlags = SendFlags::empty();

/// Sends `message` as one record on `socket`, a channel of [`seqpacket_pair`], without
/// raising `SIGPIPE` (`EPIPE` if the peer is gone); with `dont_wait`, `WouldBlock` instead
/// of waiting for room.
pub(crate) fn send_record(
    socket: BorrowedFd<'_>,
    message: &[u8],
    dont_wait: bool,
) -> io::Result<()> {
    let flags = if dont_wait {
        NOSIGNAL | SendFlags::DONTWAIT
    } else {
        NOSIGNAL
    };
    rustix::net::send(socket, message, flags)
        .map(drop)
        .map_err(io::Error::from)
}

/// Sends `message` as one record on `socket` with `fd` attached (`SCM_RIGHTS`): the
/// receiver gets its own descriptor of the same open socket. Never raises `SIGPIPE`
/// (see `NOSIGNAL`): a peer that is gone gives `EPIPE`. A non-blocking `socket` may fail
/// with `WouldBlock`; nothing was sent then.
pub(crate) fn send_with_fd(
    socket: BorrowedFd<'_>,
    message: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        // Not reached: `space` is sized for one descriptor.
        return Err(io::Error::other(
            "no room for the descriptor's control message",
        ));
    }
    let iov = [IoSlice::new(message)];
    // A SOCK_SEQPACKET record is sent whole or not at all.
    retry_rustix(|| rustix::net::sendmsg(socket, &iov, &mut control, NOSIGNAL)).map(drop)
}

/// One record read by [`recv_with_fds`].
#[derive(Debug)]
pub(crate) struct Record {
    /// The bytes of the record that fit the buffer.
    pub(crate) len: usize,
    /// The descriptors that came with it, close-on-exec and owned by this process now.
    pub(crate) fds: Vec<OwnedFd>,
    /// The record, or its descriptors, did not fit: what did not fit is lost (descriptors
    /// that did not fit were closed by the kernel).
    pub(crate) truncated: bool,
}

/// Reads one record from `socket` into `buf`, with up to four descriptors attached to it,
/// received close-on-exec (`MSG_CMSG_CLOEXEC`). A record of length 0 without descriptors
/// is the end of the stream (the peer closed its end). A non-blocking `socket` may fail
/// with `WouldBlock`.
///
/// Apple systems have no `MSG_CMSG_CLOEXEC`: there each descriptor is made close-on-exec
/// right after `recvmsg` returns. That leaves a window: a process that another thread
/// spawns (fork and exec) between the two calls inherits the received descriptors, and
/// keeps a connection open that this process closes. (Every spawn of endless itself
/// passes its fds explicitly; the window concerns other code of the application.)
pub(crate) fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Record> {
    const MAX_FDS: usize = 4;
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
        truncated: msg
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC),
    })
}

/// Blocks until `fd` is readable (or, with `write`, writable), or in error or hung up
/// (the next operation then reports it).
pub(crate) fn wait_fd(fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
    let events = if write { PollFlags::OUT } else { PollFlags::IN };
    let mut pollfd = [PollFd::from_borrowed_fd(fd, events)];
    retry_rustix(|| rustix::event::poll(&mut pollfd, None)).map(drop)
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
        let mut child = Command::new("/bin/sh")
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

    #[test]
    fn ops_convert_every_step() {
        let plan = endless_core::plan::plan(&[4, 3, 3, 9], 3).unwrap();
        let ops = ops(&plan).unwrap();
        assert_eq!(ops.len(), plan.steps().len());
        assert!(ops.iter().any(|op| matches!(op, Op::Stash { .. })));
        assert!(ops.iter().any(|op| matches!(op, Op::Dup2FromStash { .. })));
        assert!(ops.iter().any(|op| matches!(op, Op::CloseStash { .. })));
    }

    #[test]
    fn run_ops_reports_a_bad_slot_instead_of_panicking() {
        let e = run_ops(&[Op::CloseStash { slot: 3 }], &mut []).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::INVAL.raw_os_error()));
    }
}
