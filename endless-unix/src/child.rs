//! A spawned child, watched without a `SIGCHLD` handler: by its pidfd on the runtime's
//! reactor where the kernel has pidfds, else by a thread that waits without reaping.

use std::io;
use std::process::ExitStatus;

use crate::runtime::{BoxFuture, ChildProcess, Readable, Runtime};
use crate::spawn::Child;
use crate::sys;

/// Watches `child` on `runtime` (see [`Runtime::spawn_child`]).
pub(crate) fn watch<R: Runtime>(runtime: &R, child: Child) -> io::Result<Box<dyn ChildProcess>> {
    let exit = match child.pidfd() {
        Some(pidfd) => match runtime.watch_readable(pidfd.clone()) {
            Ok(readable) => Exit::Reactor(readable),
            Err(e) => {
                tracing::debug!(pid = child.id(), error = %e, "the reactor refused the pidfd");
                Exit::Thread(waiter(child.id())?)
            }
        },
        None => Exit::Thread(waiter(child.id())?),
    };
    Ok(Box::new(Watched { child, exit }))
}

/// How the exit of a child is noticed.
enum Exit {
    /// Its pidfd turns readable (Linux 5.3 and later).
    Reactor(Box<dyn Readable>),
    /// A thread blocked in `waitid(WNOWAIT)` says so, and leaves the reap to [`Watched`].
    Thread(async_channel::Receiver<io::Result<()>>),
}

/// A thread that waits until the child `pid` has exited, without reaping it: the portable
/// watcher. One thread per child, for as long as it lives (a handful at a time: the
/// generation starting, and one that failed and is being reaped).
fn waiter(pid: u32) -> io::Result<async_channel::Receiver<io::Result<()>>> {
    let (exited, notice) = async_channel::bounded(1);
    std::thread::Builder::new()
        .name(format!("endless-wait-{pid}"))
        .spawn(move || {
            let _ = exited.send_blocking(sys::wait_exited(pid));
        })?;
    Ok(notice)
}

struct Watched {
    child: Child,
    exit: Exit,
}

impl ChildProcess for Watched {
    fn id(&self) -> u32 {
        self.child.id()
    }

    fn start_kill(&mut self) -> io::Result<()> {
        self.child.kill()
    }

    fn terminate(&mut self) -> io::Result<()> {
        self.child.terminate()
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(async move {
            loop {
                if let Some(status) = self.child.try_wait()? {
                    return Ok(status);
                }
                match &mut self.exit {
                    Exit::Reactor(readable) => {
                        readable.readable().await?;
                        if let Some(status) = self.child.try_wait()? {
                            return Ok(status);
                        }
                        // Readable, yet not exited: a process whose first thread ended
                        // before the others. A thread waits for the rest, so that this
                        // task does not spin on a readiness that stays.
                        self.exit = Exit::Thread(waiter(self.child.id())?);
                    }
                    Exit::Thread(notice) => {
                        match notice.recv().await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Err(e),
                            Err(_) => return Err(io::Error::other("the child's watcher ended")),
                        }
                        return self.child.try_wait()?.ok_or_else(|| {
                            io::Error::other("the child exited, yet cannot be reaped")
                        });
                    }
                }
            }
        })
    }

    fn kill_left_behind(&mut self) -> io::Result<bool> {
        self.child.kill_left_behind()
    }
}
