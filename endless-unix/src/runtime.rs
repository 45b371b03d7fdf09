//! What a runtime adapter provides: the traits the driver runs on.
//!
//! An adapter implements [`Runtime`] (a clock, tasks, timers, a reactor for the children's
//! pidfds and the readiness channel, and signals) once for its runtime: endless-tokio and
//! endless-smol each do it in about a hundred lines, with no decision in them. Tests implement it with
//! a fake clock and fake processes, and drive the real driver without a process.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Instant;

use async_channel::Sender;

use crate::signals::Signal;

/// A boxed future, as runtimes hand them around.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a runtime adapter provides to the driver.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// The runtime's clock: every time the driver hands the lifecycle comes from here
    /// (quinn's `Runtime::now`), so that a runtime with a paused or fake clock drives it.
    fn now(&self) -> Instant;

    /// Runs `task` in the background.
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// Resolves at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;

    /// Spawns `command` (prepared by [`crate::spawn::prepare`]) and watches the child: by
    /// its pidfd, registered with this runtime's reactor through
    /// [`watch_readable`](Self::watch_readable), where the kernel has pidfds (Linux 5.3 and
    /// later); elsewhere by a thread of its own that waits for the exit without reaping
    /// (`waitid(WNOWAIT)`), so that the child is reaped, and signalled until then, by the
    /// returned value alone. No `SIGCHLD` handler either way. Tests replace it with fake
    /// processes.
    fn spawn_child(&self, command: crate::spawn::Command) -> io::Result<Box<dyn ChildProcess>>
    where
        Self: Sized,
    {
        crate::child::watch(self, command.spawn()?)
    }

    /// Runs `work`, which blocks (it spawns a process: `posix_spawn` suspends the calling
    /// thread until the child has called `exec`), where that holds up none of the
    /// runtime's tasks: on a thread of its own. Tests that drive the lifecycle by hand run
    /// it in place.
    ///
    /// # Errors
    ///
    /// When no thread can be started (`work` is then dropped, not run).
    fn run_blocking(&self, work: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        std::thread::Builder::new()
            .name("endless-spawn".to_owned())
            .spawn(work)
            .map(drop)
    }

    /// Registers `fd` (a child's pidfd) with the runtime's reactor, to wait until it is
    /// readable.
    fn watch_readable(&self, fd: Arc<OwnedFd>) -> io::Result<Box<dyn Readable>>;

    /// Wraps this process's end of a readiness channel (a socket or a pipe, non-blocking,
    /// close-on-exec) for asynchronous reads.
    fn readiness_reader(&self, fd: OwnedFd) -> io::Result<Box<dyn ReadinessReader>>;

    /// Sends every arrival of one of `signals` to `to`, from now on. Installing the
    /// handlers must happen before this returns, so that a signal sent right after start-up
    /// is not lost (or, for `SIGHUP`, does not kill the process).
    fn forward_signals(&self, signals: &[Signal], to: Sender<Signal>) -> io::Result<()>;
}

/// A child process, as a runtime spawned it.
pub trait ChildProcess: Send + 'static {
    /// Its pid.
    fn id(&self) -> u32;
    /// Sends `SIGKILL` to it and its process group, so that nothing it started outlives it
    /// (a no-op if it was already reaped, so that a reused pid or group id is never
    /// signalled; [`crate::spawn::kill`] does it by pid).
    fn start_kill(&mut self) -> io::Result<()>;
    /// Sends `SIGTERM` to it and its process group: stop gracefully (a no-op if it was
    /// already reaped, as for [`start_kill`](Self::start_kill);
    /// [`crate::spawn::terminate`] does it by pid).
    fn terminate(&mut self) -> io::Result<()>;
    /// Waits for it to exit and reaps it. Cancel-safe.
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>>;
    /// Once [`wait`](Self::wait) has returned: sends `SIGKILL` to whatever the child left
    /// running in its process group (a wrapper script's server, a `sleep` that inherited
    /// the listeners), so that nothing of a child outlives it; `Ok(true)` if anything was
    /// there. [`crate::spawn::kill_left_behind`] does it by pid.
    fn kill_left_behind(&mut self) -> io::Result<bool>;
}

impl fmt::Debug for dyn ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess")
            .field("pid", &self.id())
            .finish_non_exhaustive()
    }
}

/// A descriptor registered with a runtime's reactor: see [`Runtime::watch_readable`].
pub trait Readable: Send + 'static {
    /// Resolves once the descriptor is readable (and at once on later calls while it
    /// stays so).
    fn readable(&mut self) -> BoxFuture<'_, io::Result<()>>;
}

/// This process's end of a readiness channel (a socket or a pipe).
pub trait ReadinessReader: Send + 'static {
    /// Reads into `buf`; `Ok(0)` at end of file.
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>>;
}
