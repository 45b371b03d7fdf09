//! Starting the next generation: the executable resolved at start-up, and the child's
//! command with its inherited descriptors put in place.
//!
//! [`Executable::current`] records, when the process starts, what to run at restart time:
//! the program's path (as the operator named it, symlinks kept), its arguments, its working
//! directory and its environment. [`prepare`] turns it and the descriptors to hand over into
//! a [`Command`] whose child finds them at fds 3, 4, … (the readiness channel right after
//! them), described by the `ENDLESS_*` variables. [`Command::spawn`] starts it with
//! `posix_spawn` (no code of ours runs in the child, and the cost does not grow with this
//! process's memory) and returns a [`Child`] that is signalled and reaped by its pidfd where
//! the kernel has them; a runtime watches it
//! ([`Runtime::spawn_child`](crate::runtime::Runtime::spawn_child)) and reads the readiness
//! channel. The child reports ready with [`send_readiness`].
//!
//! # Watching the child
//!
//! | | Linux 5.3 and later | Elsewhere (macOS, FreeBSD, older Linux) |
//! |---|---|---|
//! | exit noticed by | its pidfd, registered with the runtime's reactor | a thread per child, blocked in `waitid(WEXITED \| WNOWAIT)` |
//! | reaped by | `waitid(P_PIDFD)` (by pid on 5.3) | `waitpid(pid)`, after the thread's notice |
//! | signalled by | `pidfd_send_signal`, and its process group by id | its process group by id (`kill(-pid)`) |
//!
//! Either way no `SIGCHLD` handler is installed, no zombie is left (the runtime's task waits
//! for every child), and no reused pid is signalled: only the [`Child`] reaps, and it
//! signals only before the reap, while the number still names the child and its group (a
//! pidfd is stronger still: it names the process, not the number). The portable way costs a
//! thread per child while it lives (the generation starting; a handful at most).
//!
//! # Process groups
//!
//! The next generation is started in a process group of its own, whose id is its pid
//! (`POSIX_SPAWN_SETPGROUP` in [`Command::spawn`]). When it fails (not ready within the upgrade
//! timeout, a staged upgrade rolled back, a stop while it starts), [`kill`] and
//! [`terminate`] signal that whole group, not only the child: a new "binary" that is a
//! wrapper script without `exec` takes the server it started with it, and no stray process
//! keeps an inherited listener open after the service stopped. The group is signalled
//! while the child is not reaped, by the one task that owns it: until the reap, the child's
//! pid is in use, so no other process or group can be given that number. A child that dies
//! on its own before it is ready (it crashed, or somebody killed it) takes its group with
//! it too: once the task has reaped it, [`kill_left_behind`] kills what is left in the
//! group, whose id the kernel does not hand out again while any member lives.
//!
//! What the group does not catch: a descendant that moved to a group or session of its own
//! (`setsid`, a double fork into a daemon). A service manager that tracks every descendant
//! (systemd's cgroups, `KillMode=control-group`) catches those too.
//!
//! A generation that succeeds keeps its group. What that means for job control when the
//! server runs in a terminal: the shell's job is the first generation's group, and Ctrl-C
//! (`SIGINT`), Ctrl-\\ and Ctrl-Z reach only the terminal's foreground group, so after a
//! restart they no longer reach the generation that serves (the shell gives the prompt back
//! once the first generation exits, while its successor serves on). Stop a server started
//! from a terminal by signalling the pid in its pid file (`kill -TERM "$(cat server.pid)"`),
//! or run it under a supervisor (systemd, s6, runit) that owns it. A later generation is in
//! a background group of the terminal: reading from the terminal stops it (`SIGTTIN`), and
//! so does writing to it under `stty tostop` (`SIGTTOU`); point stdin at `/dev/null` and
//! logs at a file or the journal.
//!
//! # Examples
//!
//! ```no_run
//! use std::net::TcpListener;
//! use std::os::fd::AsFd;
//! use endless_core::FdKind;
//! use endless_unix::spawn::{self, Executable, HandoffFd};
//!
//! let exe = Executable::current()?; // at start-up
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! // … at restart time:
//! let handoff = [HandoffFd { name: "http", kind: FdKind::TcpListener, fd: listener.as_fd() }];
//! let prepared = spawn::prepare(&exe, &handoff)?;
//! let (mut child, ready) = prepared.spawn_with(spawn::Command::spawn)?;
//! // `ready` is the non-blocking read end of the readiness channel: feed what it yields to
//! // `endless_core::ready::ReadyParser::new(child.id())`; end of file means the child failed.
//! # drop(ready);
//! # child.wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;

use endless_core::env::{self, Handoff};
use endless_core::plan::{self, PlanError};
use endless_core::{FdKind, Inventory, InventoryError};
use rustix::io::Errno;

use crate::sys;

/// What to run to start the next generation: program, arguments, working directory and
/// environment, resolved once at start-up.
///
/// # Examples
///
/// ```
/// use endless_unix::spawn::Executable;
///
/// // What endless restarts into by default, resolved now (not when the restart comes, when
/// // the binary may have been replaced).
/// let this = Executable::current()?;
/// assert!(this.path().is_absolute());
/// assert!(this.cwd().is_absolute());
///
/// // Or a chosen one (for `Builder::executable`), checked before it is needed.
/// let sh = Executable::new("/bin/sh", ["-c", "exec my-server"], "/", [("LANG", "C")]);
/// assert_eq!(sh.args().len(), 2);
/// sh.check()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    path: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl Executable {
    /// This process's executable, arguments, working directory and environment, to be
    /// called at start-up (before anything changes the working directory).
    ///
    /// - The path comes from `argv[0]`: one that contains a `/` is made absolute against the
    ///   working directory, without resolving symlinks (a deploy that switches a
    ///   `current -> releases/vN` symlink makes the next generation run the new target); a
    ///   bare name is looked up in `PATH` now. If that finds no executable file (an empty or
    ///   made-up `argv[0]`), [`std::env::current_exe`] is used instead. Never
    ///   `/proc/self/exe`, which names the old inode once the binary is replaced.
    /// - The arguments are `argv[1..]`.
    /// - The working directory is `$PWD` when that is an absolute path to the current
    ///   directory (so a directory reached through a symlink is kept as the operator named
    ///   it, as `pwd` shows it), the physical current directory otherwise.
    /// - The environment is this process's, without the variables
    ///   [`env::is_reserved`] names (the `ENDLESS_*` and `LISTEN_*` variables this process
    ///   was started with describe *its* descriptors, not the child's); every other variable,
    ///   other `ENDLESS_*` ones included, is passed on unchanged.
    ///
    /// # Errors
    ///
    /// When the current directory cannot be read, or `argv[0]` is unusable and
    /// `current_exe` fails.
    pub fn current() -> io::Result<Self> {
        let cwd = logical_cwd(std::env::var_os("PWD").as_deref(), std::env::current_dir()?);
        let argv0 = std::env::args_os().next();
        let path_var = std::env::var_os("PATH");
        let path = match resolve_program(
            argv0.as_deref(),
            &cwd,
            path_var.as_deref(),
            is_executable_file,
        ) {
            Some(path) => path,
            None => {
                let exe = std::env::current_exe()?;
                tracing::debug!(
                    argv0 = ?argv0,
                    current_exe = %exe.display(),
                    "argv[0] names no executable file: restarting through current_exe"
                );
                exe
            }
        };
        Ok(Self {
            path,
            args: std::env::args_os().skip(1).collect(),
            cwd,
            env: without_reserved(std::env::vars_os()),
        })
    }

    /// An executable from its parts. `path` should be absolute (a relative one is resolved
    /// against `cwd` at spawn time, by std's rules). Reserved variables in `env` are left
    /// out of the child's environment by [`prepare`].
    pub fn new<A, E, K, V>(
        path: impl Into<PathBuf>,
        args: A,
        cwd: impl Into<PathBuf>,
        env: E,
    ) -> Self
    where
        A: IntoIterator,
        A::Item: Into<OsString>,
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        Self {
            path: path.into(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: cwd.into(),
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// The program to run.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its arguments (without `argv[0]`, which will be the path).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The working directory it runs in.
    pub fn cwd(&self) -> &Path {
        &self.cwd
    }

    /// The environment it gets (before [`prepare`] adds the `ENDLESS_*` variables).
    pub fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// Whether the program exists, is a regular file (symlinks followed) and is executable
    /// by this process (`access(X_OK)`). [`prepare`] checks this first, so that the usual
    /// mistakes come back as these typed errors (a failed `exec` is still reported by
    /// [`Command::spawn`], as an `io::Error`).
    ///
    /// # Errors
    ///
    /// [`SpawnError::NotFound`], [`SpawnError::NotAFile`], [`SpawnError::NotExecutable`],
    /// or [`SpawnError::Inaccessible`] when the file system refuses to tell.
    pub fn check(&self) -> Result<(), SpawnError> {
        let path = || self.path.clone();
        let missing =
            |e: &io::Error| e.kind() == io::ErrorKind::NotFound || sys::is_errno(e, Errno::NOTDIR);
        match fs::metadata(&self.path) {
            Err(e) if missing(&e) => Err(SpawnError::NotFound { path: path() }),
            Err(error) => Err(SpawnError::Inaccessible {
                path: path(),
                error,
            }),
            Ok(meta) if !meta.is_file() => Err(SpawnError::NotAFile { path: path() }),
            Ok(_) => match sys::access_executable(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    Err(SpawnError::NotExecutable { path: path() })
                }
                Err(e) if missing(&e) => Err(SpawnError::NotFound { path: path() }),
                Err(error) => Err(SpawnError::Inaccessible {
                    path: path(),
                    error,
                }),
            },
        }
    }
}

fn without_reserved(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| !env::is_reserved(k))
        .collect()
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file()) && sys::access_executable(path).is_ok()
}

/// `path` made absolute against `cwd`, with `.` components dropped; symlinks and `..` are
/// left alone (resolving them would change which file a later lookup finds).
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    cwd.join(path)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// The program `argv0` names, as a shell would find it: with a `/`, relative to `cwd`;
/// without, the first directory of `path_var` (`PATH`; an empty entry is `cwd`) where
/// `is_executable` accepts it. `None` when `argv0` is missing or empty, or names nothing
/// `is_executable` accepts.
fn resolve_program(
    argv0: Option<&OsStr>,
    cwd: &Path,
    path_var: Option<&OsStr>,
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let argv0 = argv0.filter(|a| !a.is_empty())?;
    if argv0.as_bytes().contains(&b'/') {
        let path = absolute(cwd, Path::new(argv0));
        return is_executable(&path).then_some(path);
    }
    std::env::split_paths(path_var?)
        .map(|dir| absolute(cwd, &dir).join(argv0))
        .find(|candidate| is_executable(candidate))
}

/// `$PWD` when it is an absolute path without `.` or `..` that names the same directory as
/// `physical` (the kernel's idea of the current directory, symlinks resolved), else
/// `physical`. This is the logical working directory `pwd` shows.
fn logical_cwd(pwd: Option<&OsStr>, physical: PathBuf) -> PathBuf {
    let Some(pwd) = pwd.map(Path::new) else {
        return physical;
    };
    let plain = pwd.is_absolute()
        && pwd
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let same = |a: &Path, b: &Path| match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if plain && same(pwd, &physical) {
        pwd.to_path_buf()
    } else {
        physical
    }
}

/// One descriptor to hand to the child: it finds `fd` at `3 + its index`, described as
/// `name` of kind `kind`.
#[derive(Debug, Clone, Copy)]
pub struct HandoffFd<'a> {
    /// The entry's name, unique among the handoff.
    pub name: &'a str,
    /// What the descriptor is (the child checks it).
    pub kind: FdKind,
    /// The descriptor, in this process.
    pub fd: BorrowedFd<'a>,
}

/// The command that starts the next generation, run with `posix_spawn`: the child is
/// created with vfork semantics (its cost does not grow with this process's memory, and no
/// page is copied), and none of this process's code runs in it. The descriptors are put in
/// place by spawn file actions, the steps of endless-core's [`plan`](plan::plan). Made by
/// [`prepare`]; read what it runs with the `get_*` methods (as on std's `Command`).
#[derive(Debug)]
pub struct Command {
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
    /// The handoff's fds in this process, in the child's order (3, 4, …): numbers borrowed
    /// by the [`Prepared`] this command came from.
    sources: Vec<RawFd>,
    stdio: [Option<OwnedFd>; 3],
}

impl Command {
    /// The program's path.
    pub fn get_program(&self) -> &Path {
        &self.program
    }

    /// The arguments after `argv[0]` (which is the program's path).
    pub fn get_args(&self) -> impl ExactSizeIterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// The child's whole environment: the executable's, minus the reserved variables, plus
    /// the `ENDLESS_*` variables that describe its descriptors.
    pub fn get_envs(&self) -> impl ExactSizeIterator<Item = (&OsStr, &OsStr)> {
        self.env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str()))
    }

    /// The child's working directory.
    pub fn get_current_dir(&self) -> &Path {
        &self.cwd
    }

    /// Sets the environment variable `key` of the child to `value` (replacing it if set).
    /// Overriding an `ENDLESS_*` variable breaks the handoff: for tests and tools.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        let key = key.as_ref();
        self.env_remove(key);
        self.env.push((key.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Removes the environment variable `key` from the child's environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        let key = key.as_ref();
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// The child's stdin (fd 0) instead of this process's.
    pub fn stdin(&mut self, fd: impl Into<OwnedFd>) -> &mut Self {
        self.stdio[0] = Some(fd.into());
        self
    }

    /// The child's stdout (fd 1) instead of this process's.
    pub fn stdout(&mut self, fd: impl Into<OwnedFd>) -> &mut Self {
        self.stdio[1] = Some(fd.into());
        self
    }

    /// The child's stderr (fd 2) instead of this process's.
    pub fn stderr(&mut self, fd: impl Into<OwnedFd>) -> &mut Self {
        self.stdio[2] = Some(fd.into());
        self
    }

    /// The spawn file actions: stdio where it is redirected, and the handoff at 3, 4, ….
    ///
    /// # Errors
    ///
    /// As [`plan::plan_partial`] (too many fds).
    pub fn plan(&self) -> Result<plan::Plan, PlanError> {
        let sources: Vec<Option<RawFd>> = self
            .stdio
            .iter()
            .map(|fd| fd.as_ref().map(AsRawFd::as_raw_fd))
            .chain(self.sources.iter().copied().map(Some))
            .collect();
        plan::plan_partial(&sources, 0)
    }

    /// Starts the child with `posix_spawn`: the plan's `dup2`s and `close`, a `chdir` to
    /// the working directory, a process group of its own (see
    /// [the module docs](self#process-groups)), an empty signal mask and `SIGPIPE` at its
    /// default action, then `exec`. Then takes a pidfd for it where the kernel has them.
    ///
    /// # Errors
    ///
    /// A string with a NUL byte (`InvalidInput`), a plan that cannot be made, or what
    /// `posix_spawn` reports: a failed file action (`EBADF`: a descriptor to hand over was
    /// closed), a failed `chdir` or `exec` (`ENOENT`, `EACCES`, `ENOEXEC`, …), no memory or
    /// processes left (`EAGAIN`, `ENOMEM`). No child is left behind.
    pub fn spawn(self) -> io::Result<Child> {
        let plan = self.plan()?;
        let nul = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} contains a NUL byte"),
            )
        };
        let c_string = |bytes: &[u8], what: &str| CString::new(bytes).map_err(|_| nul(what));
        let program = c_string(self.program.as_os_str().as_bytes(), "the program's path")?;
        let argv = std::iter::once(Ok(program.clone()))
            .chain(
                self.args
                    .iter()
                    .map(|a| c_string(a.as_bytes(), "an argument")),
            )
            .collect::<io::Result<Vec<_>>>()?;
        let envp = self
            .env
            .iter()
            .map(|(k, v)| {
                if k.is_empty() || k.as_bytes().contains(&b'=') {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("environment variable name {k:?} is empty or contains '='"),
                    ));
                }
                let mut entry = Vec::with_capacity(k.len() + v.len() + 1);
                entry.extend_from_slice(k.as_bytes());
                entry.push(b'=');
                entry.extend_from_slice(v.as_bytes());
                c_string(&entry, "an environment variable")
            })
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = c_string(self.cwd.as_os_str().as_bytes(), "the working directory")?;
        let pid = sys::posix_spawn(&sys::SpawnArgs {
            program: &program,
            argv: &argv,
            envp: &envp,
            cwd: &cwd,
            steps: plan.steps(),
        })?;
        // Unreaped, so the pid names this child: the pidfd refers to it for good.
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(pid, error = %e, "no pidfd for the child: watched by pid");
                None
            }
        };
        Ok(Child {
            pid,
            pidfd: pidfd.map(Arc::new),
            status: None,
        })
    }

    /// A command that runs nothing, left in a [`Prepared`] whose command was taken.
    fn empty() -> Self {
        Self {
            program: PathBuf::new(),
            args: Vec::new(),
            cwd: PathBuf::new(),
            env: Vec::new(),
            sources: Vec::new(),
            stdio: [None, None, None],
        }
    }
}

/// A child started by [`Command::spawn`]: signalled and reaped by its pidfd where the kernel
/// has them (Linux 5.3 and later), else by its pid.
///
/// Either way, a signal is sent only while the child is not reaped (this value is the only
/// one that reaps it), so it never reaches a process that was given the number since: a
/// pidfd refers to its process for good, and an unreaped child's pid and process group id
/// cannot be given to anyone else. A runtime waits for the exit without blocking through
/// [`Child::pidfd`] (readable once the child has exited, registered with the runtime's
/// reactor) or, without one, a thread that waits without reaping
/// ([`Runtime::spawn_child`](crate::runtime::Runtime::spawn_child) does both).
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: Option<Arc<OwnedFd>>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Its pidfd, where the kernel has them: readable once the child has exited.
    pub fn pidfd(&self) -> Option<&Arc<OwnedFd>> {
        self.pidfd.as_ref()
    }

    /// Sends `SIGKILL` to it and its process group; a no-op once it is reaped.
    ///
    /// # Errors
    ///
    /// When the system refuses the signal.
    pub fn kill(&mut self) -> io::Result<()> {
        self.signal(rustix::process::Signal::KILL)
    }

    /// Sends `SIGTERM` to it and its process group; a no-op once it is reaped.
    ///
    /// # Errors
    ///
    /// As [`kill`](Self::kill).
    pub fn terminate(&mut self) -> io::Result<()> {
        self.signal(rustix::process::Signal::TERM)
    }

    fn signal(&mut self, signal: rustix::process::Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        if let Some(pidfd) = &self.pidfd {
            // The child itself by its pidfd, then the rest of its group (whose id is the
            // unreaped child's pid, which nobody else can be given).
            sys::pidfd_signal(pidfd.as_fd(), signal)?;
            sys::signal_group(self.pid, signal)?;
            return Ok(());
        }
        sys::signal_child_group(self.pid, signal)
    }

    /// Reaps it if it has exited; its exit status then (and on every later call).
    ///
    /// # Errors
    ///
    /// When the system cannot wait for it (`ECHILD`: something else reaped it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        #[cfg(target_os = "linux")]
        let reaped = match &self.pidfd {
            Some(pidfd) => sys::try_reap_pidfd(pidfd.as_fd(), self.pid)?,
            None => sys::try_reap(self.pid)?,
        };
        #[cfg(not(target_os = "linux"))]
        let reaped = sys::try_reap(self.pid)?;
        self.status = reaped;
        Ok(reaped)
    }

    /// Blocks until it has exited, then reaps it.
    ///
    /// # Errors
    ///
    /// As [`try_wait`](Self::try_wait).
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            sys::wait_exited(self.pid)?;
        }
    }

    /// Once reaped: sends `SIGKILL` to what it left in its process group (see
    /// [`kill_left_behind`]).
    ///
    /// # Errors
    ///
    /// As [`kill_left_behind`].
    pub fn kill_left_behind(&mut self) -> io::Result<bool> {
        kill_left_behind(self.pid)
    }
}

/// A command ready to be spawned, with the parent's end of its readiness channel. Made by
/// [`prepare`].
///
/// Spawn it once, with [`Prepared::spawn_with`]. Until then this value holds the write end
/// of the readiness channel that the child inherits, and borrows the descriptors to hand
/// over (`'a`): they must stay open until the command is spawned, because the child copies
/// them by number.
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The child's command: program, arguments, working directory, environment (the
    /// executable's plus the `ENDLESS_*` variables), and the descriptors to put in place.
    /// Redirect its stdio if you like.
    pub command: Command,
    /// The parent's end of the readiness channel: non-blocking and close-on-exec.
    pub ready: OwnedFd,
    write_end: OwnedFd,
    handoff: PhantomData<BorrowedFd<'a>>,
}

impl Prepared<'_> {
    /// The child's end of the readiness channel, as the command places it (the child
    /// finds it as `ENDLESS_READY_FD`); closed in this process by
    /// [`spawned`](Self::spawned).
    pub fn child_end(&self) -> BorrowedFd<'_> {
        self.write_end.as_fd()
    }

    /// To be called right after the command was spawned, or failed to: closes this process's
    /// copy of the write end of the readiness channel, so that end of file on the read end
    /// means that the child (and any process it passed the write end to) is gone. Returns
    /// the read end.
    pub fn spawned(self) -> OwnedFd {
        drop(self.write_end);
        self.ready
    }

    /// Spawns the command with `spawn` (usually [`Command::spawn`], or a runtime's
    /// [`spawn_child`](crate::runtime::Runtime::spawn_child)), then closes the write end as
    /// [`Prepared::spawned`] does. Returns what `spawn` made and the read end of the
    /// readiness channel.
    ///
    /// # Errors
    ///
    /// Whatever `spawn` returns (the readiness channel is then closed).
    pub fn spawn_with<T, E>(
        mut self,
        spawn: impl FnOnce(Command) -> Result<T, E>,
    ) -> Result<(T, OwnedFd), E> {
        let command = std::mem::replace(&mut self.command, Command::empty());
        let spawned = spawn(command);
        let ready = self.spawned();
        spawned.map(|child| (child, ready))
    }
}

/// Prepares the command that starts `exe` as the next generation, handing it `fds`.
///
/// Checks the executable ([`Executable::check`]), creates the readiness channel (a
/// Unix stream socketpair, both ends close-on-exec, this process's end non-blocking,
/// which later carries the connections handed over), numbers the handoff 3, 4, … in
/// order with the child's end last, at `3 + fds.len()`, describes them with
/// [`env::encode`] (this process's pid as the parent, and the identity of each open file,
/// by which the child knows they were handed to it), and builds the [`Command`]: program
/// `exe.path()`, its arguments, working directory `exe.cwd()`, an environment of exactly
/// `exe.env()` (minus reserved variables) plus the `ENDLESS_*` variables, and the
/// descriptors, which [`Command::spawn`] puts in place with spawn file actions planned by
/// [`plan::plan_partial`]. Every other descriptor of this process keeps its close-on-exec
/// flag, so the child gets exactly stdio, the handoff and the readiness channel.
///
/// # Errors
///
/// [`SpawnError`]: the executable is unusable, the handoff is invalid (duplicate names,
/// too many), or the system refused a socket.
pub fn prepare<'a>(exe: &Executable, fds: &[HandoffFd<'a>]) -> Result<Prepared<'a>, SpawnError> {
    exe.check()?;

    let mut inventory = Inventory::new();
    for handover in fds {
        inventory
            .push(handover.name, handover.kind)
            .map_err(SpawnError::Inventory)?;
    }

    // A Unix stream socketpair, both ends close-on-exec: the child writes its readiness
    // line on it, and then receives the connections handed over (`crate::takeover`).
    let (ready, write_end) = sys::channel_pair().map_err(SpawnError::Io)?;
    sys::set_nonblocking(ready.as_fd()).map_err(SpawnError::Io)?;

    // The identity of each open file, in the child's fd order: the child compares them with
    // its fds to know they were handed to it (whether or not this process still lives).
    let identities = fds
        .iter()
        .map(|h| h.fd)
        .chain([write_end.as_fd()])
        .map(sys::file_id)
        .collect::<io::Result<Vec<_>>>()
        .map_err(SpawnError::Io)?;
    let handoff = Handoff::for_spawn(sys::getpid(), inventory, identities)
        .map_err(|e| SpawnError::Io(io::Error::from(e)))?;

    let sources: Vec<RawFd> = fds
        .iter()
        .map(|h| h.fd.as_raw_fd())
        .chain([write_end.as_raw_fd()])
        .collect();
    let command = Command {
        program: exe.path.clone(),
        args: exe.args.clone(),
        cwd: exe.cwd.clone(),
        env: exe
            .env
            .iter()
            .filter(|(k, _)| !env::is_reserved(k))
            .cloned()
            .chain(
                env::encode(&handoff)
                    .into_iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            )
            // This process reads batched takeover answers (see `crate::takeover`).
            .chain([(
                OsString::from(endless_core::takeover::BATCH_VAR),
                OsString::from(handoff.parent_pid.to_string()),
            )])
            .collect(),
        sources,
        stdio: [None, None, None],
    };
    // Refuse a handoff that cannot be planned now, not at spawn time.
    let plan = command.plan().map_err(SpawnError::Plan)?;
    debug_assert_eq!(plan.targets().end, handoff.ready_fd + 1);

    Ok(Prepared {
        command,
        ready,
        write_end,
        handoff: PhantomData,
    })
}

/// Tells the parent that this process is ready: writes the readiness line
/// ([`endless_core::ready::message`] with this process's pid) to the readiness channel
/// (from [`Inherited::take_ready_channel`](crate::inherit::Inherited::take_ready_channel)),
/// all of it, then closes the channel.
///
/// # Errors
///
/// When the write fails; `EPIPE` (`BrokenPipe`) means the parent is gone.
pub fn send_readiness(channel: OwnedFd) -> io::Result<()> {
    sys::send_readiness(channel)
}

/// Sends `SIGTERM` to the child `pid` and its process group (see
/// [the module docs](self#process-groups)), for [`ChildProcess::terminate`]: call it only
/// while the child is not reaped (until then neither its pid nor its group id, the same
/// number, can be reused). A child that has exited but is not reaped yet counts as success.
///
/// # Errors
///
/// When `kill` fails for another reason than a missing process (`pid` 0 or 1 is refused).
///
/// [`ChildProcess::terminate`]: crate::ChildProcess::terminate
pub fn terminate(pid: u32) -> io::Result<()> {
    sys::signal_child_group(pid, rustix::process::Signal::TERM)
}

/// Sends `SIGKILL` to the child `pid` and its process group (see
/// [the module docs](self#process-groups)), for [`ChildProcess::start_kill`]: whatever the
/// child started (a wrapper script's server, a `sleep` that inherited the listeners) dies
/// with it. Call it only while the child is not reaped, as [`terminate`].
///
/// # Errors
///
/// As [`terminate`].
///
/// [`ChildProcess::start_kill`]: crate::ChildProcess::start_kill
pub fn kill(pid: u32) -> io::Result<()> {
    sys::signal_child_group(pid, rustix::process::Signal::KILL)
}

/// Sends `SIGKILL` to what the reaped child `pid` left in its process group, for
/// [`ChildProcess::kill_left_behind`]: a child that died on its own (crashed, or killed by
/// someone else) before it was ready takes its descendants with it, as one this process
/// kills does. `Ok(true)` if anything was there, `Ok(false)` if the group is gone.
///
/// The child is reaped, so its pid is free; the group id is not: the kernel does not hand
/// out a number that is still the id of a process group with a live member, so while
/// anything of the child's group lives the signal reaches that and nothing else. Only when
/// nothing lives could the number have been taken again, by a process that made a group of
/// it, in the moments since the reap: the pid space would have had to wrap around first.
///
/// # Errors
///
/// When `kill` fails for another reason than a missing group (`pid` 0 or 1 is refused).
///
/// [`ChildProcess::kill_left_behind`]: crate::ChildProcess::kill_left_behind
pub fn kill_left_behind(pid: u32) -> io::Result<bool> {
    sys::signal_group(pid, rustix::process::Signal::KILL)
}

/// Why the next generation could not be prepared.
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// The executable does not exist (or a directory on its path does not).
    NotFound {
        /// The executable's path.
        path: PathBuf,
    },
    /// The executable is not a regular file (a directory, say).
    NotAFile {
        /// The executable's path.
        path: PathBuf,
    },
    /// The executable is not executable by this process.
    NotExecutable {
        /// The executable's path.
        path: PathBuf,
    },
    /// The file system refused to tell about the executable.
    Inaccessible {
        /// The executable's path.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The handoff do not make an inventory (a name given twice, a name too long, too
    /// many): a mistake of the caller.
    Inventory(InventoryError),
    /// The fds cannot be renumbered (too many): a mistake of the caller.
    Plan(PlanError),
    /// The system refused a resource (a pipe, a flag).
    Io(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { path } => {
                write!(f, "the executable {} does not exist", path.display())
            }
            Self::NotAFile { path } => {
                write!(f, "the executable {} is not a regular file", path.display())
            }
            Self::NotExecutable { path } => write!(
                f,
                "the executable {} is not executable by this process",
                path.display()
            ),
            Self::Inaccessible { path, error } => {
                write!(
                    f,
                    "cannot inspect the executable {}: {error}",
                    path.display()
                )
            }
            Self::Inventory(e) => write!(f, "invalid handoff: {e}"),
            Self::Plan(e) => write!(f, "cannot renumber the handed-over fds: {e}"),
            Self::Io(e) => write!(f, "cannot prepare the new process: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inaccessible { error, .. } | Self::Io(error) => Some(error),
            Self::Inventory(e) => Some(e),
            Self::Plan(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SpawnError> for io::Error {
    fn from(e: SpawnError) -> Self {
        let kind = match &e {
            SpawnError::NotFound { .. } => io::ErrorKind::NotFound,
            SpawnError::NotExecutable { .. } => io::ErrorKind::PermissionDenied,
            SpawnError::Inaccessible { error, .. } | SpawnError::Io(error) => error.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        Self::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::io::Read;
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    use endless_core::ChildFailure;
    use endless_core::ready::{Readiness, ReadyParser};
    use rustix::fs::OFlags;

    use crate::inherit::tests::TempDir;

    // ---- resolving the executable -------------------------------------------------------

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn resolve_program_with_a_slash_is_relative_to_cwd_and_keeps_symlinks() {
        let cwd = Path::new("/srv/app/current");
        let yes = |_: &Path| true;
        let r = |argv0| resolve_program(Some(os(argv0)), cwd, Some(os("/usr/bin")), yes);
        assert_eq!(r("/opt/x/bin/server"), Some("/opt/x/bin/server".into()));
        assert_eq!(
            r("./bin/server"),
            Some("/srv/app/current/bin/server".into())
        );
        assert_eq!(r("bin/server"), Some("/srv/app/current/bin/server".into()));
        assert_eq!(
            r("bin/./server"),
            Some("/srv/app/current/bin/server".into())
        );
        // `..` is kept: resolving it would need the file system, and `current/..` is not
        // the parent of `current`'s target.
        assert_eq!(
            r("../bin/server"),
            Some("/srv/app/current/../bin/server".into())
        );
        // Not executable: unusable (the caller falls back to current_exe).
        let no = |_: &Path| false;
        assert_eq!(resolve_program(Some(os("./server")), cwd, None, no), None);
    }

    #[test]
    fn resolve_program_looks_a_bare_name_up_in_path() {
        let cwd = Path::new("/home/op");
        let only = |wanted: &'static str| move |p: &Path| p == Path::new(wanted);
        let path = Some(os("/usr/local/bin:/usr/bin::rel/bin"));
        assert_eq!(
            resolve_program(Some(os("server")), cwd, path, only("/usr/bin/server")),
            Some("/usr/bin/server".into())
        );
        // The first match wins.
        assert_eq!(
            resolve_program(Some(os("server")), cwd, path, |_: &Path| true),
            Some("/usr/local/bin/server".into())
        );
        // An empty entry is the current directory; a relative one is relative to it.
        assert_eq!(
            resolve_program(Some(os("server")), cwd, path, only("/home/op/server")),
            Some("/home/op/server".into())
        );
        assert_eq!(
            resolve_program(
                Some(os("server")),
                cwd,
                path,
                only("/home/op/rel/bin/server")
            ),
            Some("/home/op/rel/bin/server".into())
        );
        assert_eq!(
            resolve_program(Some(os("server")), cwd, path, |_: &Path| false),
            None
        );
        assert_eq!(
            resolve_program(Some(os("server")), cwd, None, |_: &Path| true),
            None
        );
    }

    #[test]
    fn resolve_program_refuses_a_missing_or_empty_argv0() {
        let yes = |_: &Path| true;
        assert_eq!(
            resolve_program(None, Path::new("/"), Some(os("/bin")), yes),
            None
        );
        assert_eq!(
            resolve_program(Some(os("")), Path::new("/"), Some(os("/bin")), yes),
            None
        );
    }

    #[test]
    fn resolve_program_finds_real_files() {
        let dir = TempDir::new();
        let bin = dir.0.join("bin");
        fs::create_dir(&bin).unwrap();
        let exe = bin.join("server");
        fs::write(&exe, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(bin.join("data"), "").unwrap();
        fs::create_dir(bin.join("dir")).unwrap();
        // A symlinked release directory: the link is kept.
        let current = dir.0.join("current");
        std::os::unix::fs::symlink(&dir.0, &current).unwrap();

        let path_var = bin.as_os_str();
        let r = |argv0: &str, cwd: &Path| {
            resolve_program(Some(os(argv0)), cwd, Some(path_var), is_executable_file)
        };
        assert_eq!(r("server", Path::new("/")), Some(exe));
        assert_eq!(r("data", Path::new("/")), None, "not executable");
        assert_eq!(r("dir", Path::new("/")), None, "a directory");
        assert_eq!(
            r("./bin/server", &current),
            Some(current.join("bin/server"))
        );
        assert_eq!(r("./bin/missing", &current), None);
    }

    #[test]
    fn logical_cwd_prefers_a_pwd_that_names_the_same_directory() {
        let dir = TempDir::new();
        let real = dir.0.join("releases-v1");
        fs::create_dir(&real).unwrap();
        let link = dir.0.join("current");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let other = dir.0.join("other");
        fs::create_dir(&other).unwrap();

        assert_eq!(logical_cwd(Some(link.as_os_str()), real.clone()), link);
        assert_eq!(logical_cwd(Some(real.as_os_str()), real.clone()), real);
        // Stale, relative, with `..`, or missing: the physical directory.
        assert_eq!(logical_cwd(Some(other.as_os_str()), real.clone()), real);
        assert_eq!(logical_cwd(Some(os("current")), real.clone()), real);
        let dotted = dir.0.join("other/../current");
        assert_eq!(logical_cwd(Some(dotted.as_os_str()), real.clone()), real);
        assert_eq!(logical_cwd(Some(os("/nonexistent/x")), real.clone()), real);
        assert_eq!(logical_cwd(None, real.clone()), real);
    }

    #[test]
    fn current_is_absolute_executable_and_without_reserved_variables() {
        let exe = Executable::current().unwrap();
        assert!(exe.path().is_absolute(), "{}", exe.path().display());
        assert_ne!(exe.path(), Path::new("/proc/self/exe"));
        exe.check().unwrap();
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        assert_eq!(exe.args(), args.as_slice());
        assert!(exe.cwd().is_absolute());
        assert_eq!(
            fs::metadata(exe.cwd()).unwrap().ino(),
            fs::metadata(".").unwrap().ino()
        );
        assert!(exe.env().iter().all(|(k, _)| !env::is_reserved(k)));
        assert!(exe.env().iter().any(|(k, _)| k == "PATH"));
    }

    #[test]
    fn without_reserved_keeps_other_endless_variables() {
        let vars = [
            ("ENDLESS_FD_9", "tcp-listener:stale"),
            ("ENDLESS_FDS", "7"),
            ("ENDLESS_READY_FD", "8"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_PID", "1"),
            ("LISTEN_FDNAMES", "a:b"),
            ("ENDLESS_LOG", "debug"),
            ("ENDLESS_FD_LIMIT", "10"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let kept: Vec<_> = without_reserved(vars)
            .into_iter()
            .map(|(k, _)| k.into_string().unwrap())
            .collect();
        assert_eq!(kept, ["ENDLESS_LOG", "ENDLESS_FD_LIMIT", "HOME"]);
    }

    #[test]
    fn check_reports_missing_non_executable_and_non_file_paths() {
        let dir = TempDir::new();
        let at = |p: &Path| {
            Executable::new(
                p,
                Vec::<OsString>::new(),
                "/",
                Vec::<(OsString, OsString)>::new(),
            )
        };
        Executable::new("/bin/sh", ["-c", "true"], "/", [("A", "b")])
            .check()
            .unwrap();

        let missing = dir.0.join("missing");
        assert!(
            matches!(at(&missing).check(), Err(SpawnError::NotFound { path }) if path == missing)
        );
        let under_file = Path::new("/dev/null/x");
        assert!(matches!(
            at(under_file).check(),
            Err(SpawnError::NotFound { .. })
        ));

        let plain = dir.0.join("plain");
        fs::write(&plain, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
        let e = at(&plain).check().unwrap_err();
        assert!(
            matches!(&e, SpawnError::NotExecutable { path } if *path == plain),
            "{e:?}"
        );
        assert!(e.to_string().contains("not executable"), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied);

        let e = at(&dir.0).check().unwrap_err();
        assert!(
            matches!(&e, SpawnError::NotAFile { path } if *path == dir.0),
            "{e:?}"
        );
        let e = at(Path::new("/dev/null")).check().unwrap_err();
        assert!(matches!(e, SpawnError::NotAFile { .. }), "{e:?}");

        // A symlink to an executable is fine (and is not resolved).
        let link = dir.0.join("sh");
        std::os::unix::fs::symlink("/bin/sh", &link).unwrap();
        at(&link).check().unwrap();
    }

    // ---- preparing ----------------------------------------------------------------------

    fn sh(script: &str) -> Executable {
        Executable::new("/bin/sh", ["-c", script], "/", [("PATH", "/usr/bin:/bin")])
    }

    #[test]
    fn prepare_builds_the_command_and_the_channel() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let exe = Executable::new(
            "/bin/sh",
            ["-c", "true"],
            "/tmp",
            [
                ("PATH", "/bin"),
                ("ENDLESS_FD_9", "tcp-listener:stale"),
                ("LISTEN_FDS", "2"),
                ("ENDLESS_LOG", "kept"),
            ],
        );
        let handoff = [HandoffFd {
            name: "web server",
            kind: FdKind::TcpListener,
            fd: listener.as_fd(),
        }];
        let prepared = prepare(&exe, &handoff).unwrap();
        let cmd = &prepared.command;
        assert_eq!(cmd.get_program(), "/bin/sh");
        assert_eq!(cmd.get_args().collect::<Vec<_>>(), ["-c", "true"]);
        assert_eq!(cmd.get_current_dir(), Path::new("/tmp"));
        let envs: BTreeMap<String, Option<String>> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_str().unwrap().to_owned(),
                    Some(v.to_str().unwrap().to_owned()),
                )
            })
            .collect();
        let pid = std::process::id().to_string();
        let listener_id = sys::file_id(listener.as_fd()).unwrap();
        let ready_id = sys::file_id(prepared.write_end.as_fd()).unwrap();
        let entry = format!("tcp-listener:web%20server:{listener_id}");
        let ready_value = format!("4:{ready_id}");
        let expected: BTreeMap<String, Option<String>> = [
            ("PATH", "/bin"),
            ("ENDLESS_LOG", "kept"),
            ("ENDLESS_VERSION", "2"),
            ("ENDLESS_PARENT_PID", pid.as_str()),
            ("ENDLESS_FDS", "1"),
            ("ENDLESS_FD_3", entry.as_str()),
            ("ENDLESS_READY_FD", ready_value.as_str()),
            // It reads batched takeover answers: the variable names it as the parent.
            ("ENDLESS_TAKEOVER_BATCH", pid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
        .collect();
        assert_eq!(envs, expected);
        assert!(sys::is_cloexec(prepared.ready.as_fd()).unwrap());
        assert_ne!(
            sys::status_flags(prepared.ready.as_fd()).unwrap() & OFlags::NONBLOCK,
            OFlags::empty()
        );
        assert!(sys::is_cloexec(prepared.write_end.as_fd()).unwrap());
        assert_eq!(
            sys::status_flags(prepared.write_end.as_fd()).unwrap() & OFlags::NONBLOCK,
            OFlags::empty(),
            "the child's end blocks"
        );
        // Not spawned: `spawned` closes the write end, so the read end sees EOF (this test
        // binary forks no child that could hold a copy; the spawning tests are in
        // `tests/spawn.rs`).
        let ready = File::from(prepared.spawned());
        rustix::fs::fcntl_setfl(&ready, OFlags::empty()).unwrap();
        assert_eq!((&ready).read(&mut [0u8; 64]).unwrap(), 0);
        assert_eq!(
            ReadyParser::new(1).eof(),
            Readiness::Failed(ChildFailure::ChannelClosed)
        );
    }

    #[test]
    fn prepare_refuses_bad_executables_and_handoffs() {
        let (a, _b) = UnixStream::pair().unwrap();
        let twice = [
            HandoffFd {
                name: "x",
                kind: FdKind::UnixStream,
                fd: a.as_fd(),
            },
            HandoffFd {
                name: "x",
                kind: FdKind::UnixStream,
                fd: a.as_fd(),
            },
        ];
        let e = prepare(&sh("true"), &twice).unwrap_err();
        assert!(
            matches!(&e, SpawnError::Inventory(InventoryError::DuplicateName { name }) if name == "x"),
            "{e:?}"
        );
        assert!(std::error::Error::source(&e).is_some());
        let missing = Executable::new("/nonexistent/endless", [""; 0], "/", [("A", "b"); 0]);
        let e = prepare(&missing, &[]).unwrap_err();
        assert!(matches!(e, SpawnError::NotFound { .. }), "{e:?}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    }
}
