//! endless-unix's `Runtime` on tokio.

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::Instant;

use endless_unix::{BoxFuture, ChildProcess, PipeReader, Runtime, Signal};
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone)]
pub(crate) struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// The runtime this is called from. Panics outside a tokio runtime, as tokio does.
    pub(crate) fn current() -> Self {
        Self {
            handle: tokio::runtime::Handle::current(),
        }
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.handle.spawn(task);
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let _entered = self.handle.enter();
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn spawn_child(&self, command: std::process::Command) -> io::Result<Box<dyn ChildProcess>> {
        let _entered = self.handle.enter();
        let mut command = tokio::process::Command::from(command);
        // A child outlives a dropped handle: only the lifecycle decides to kill it.
        command.kill_on_drop(false);
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the child has no pid"))?;
        Ok(Box::new(TokioChild { child, pid }))
    }

    fn pipe_reader(&self, fd: OwnedFd) -> io::Result<Box<dyn PipeReader>> {
        let _entered = self.handle.enter();
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
        Ok(Box::new(TokioPipe(receiver)))
    }

    fn forward_signals(
        &self,
        signals: &[Signal],
        to: async_channel::Sender<Signal>,
    ) -> io::Result<()> {
        let _entered = self.handle.enter();
        for &signal in signals {
            let kind = tokio::signal::unix::SignalKind::from_raw(signal.as_raw());
            // Installs the handler now, before this returns.
            let mut stream = tokio::signal::unix::signal(kind)?;
            let to = to.clone();
            self.handle.spawn(async move {
                while stream.recv().await.is_some() {
                    if to.send(signal).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(())
    }
}

struct TokioChild {
    child: tokio::process::Child,
    pid: u32,
}

impl ChildProcess for TokioChild {
    fn id(&self) -> u32 {
        self.pid
    }

    fn start_kill(&mut self) -> io::Result<()> {
        match self.child.start_kill() {
            // Already reaped: nothing to kill.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
            other => other,
        }
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(self.child.wait())
    }
}

struct TokioPipe(tokio::net::unix::pipe::Receiver);

impl PipeReader for TokioPipe {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(self.0.read(buf))
    }
}
