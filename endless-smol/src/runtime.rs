//! endless-unix's `Runtime` and `Net` on async-io and async-signal.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Once};
use std::time::Instant;

use async_executor::Executor;
use async_io::{Async, Timer};
use endless_unix::{BoxFuture, Net, Readable, ReadinessReader, Runtime, Signal};
use futures_lite::{AsyncReadExt, StreamExt};

/// The executor of endless' own tasks (the lifecycle driver, signal forwarding): a few
/// light tasks on a thread of their own, so that they run the same under smol, async-std or
/// no runtime at all, whatever the application does with its threads.
static EXECUTOR: Executor<'static> = Executor::new();

fn executor() -> &'static Executor<'static> {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        std::thread::Builder::new()
            .name("endless".into())
            .spawn(|| async_io::block_on(EXECUTOR.run(futures_lite::future::pending::<()>())))
            .expect("spawning endless' thread");
    });
    &EXECUTOR
}

/// endless on async-io: the runtime the lifecycle runs on, and async-io's socket types
/// (`Async<TcpListener>`, …), which smol and async-std both run on.
///
/// It names the types of this crate ([`Endless`](crate::Endless) is
/// `endless_unix::adapter::Endless<Smol>`); an application does not use it directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol {
    _private: (),
}

impl Net for Smol {
    type TcpListener = Async<std::net::TcpListener>;
    type TcpStream = Async<std::net::TcpStream>;
    type UnixListener = Async<UnixListener>;
    type UnixStream = Async<UnixStream>;
    type UnixAddr = std::os::unix::net::SocketAddr;
    type UdpSocket = Async<std::net::UdpSocket>;

    fn current() -> Self {
        Self::default()
    }

    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Self::TcpListener> {
        Async::new(listener)
    }

    fn unix_listener(&self, listener: UnixListener) -> io::Result<Self::UnixListener> {
        Async::new(listener)
    }

    fn udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Self::UdpSocket> {
        Async::new(socket)
    }

    fn accept_tcp(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send + '_ {
        listener.accept()
    }

    fn accept_unix(
        listener: &Self::UnixListener,
    ) -> impl Future<Output = io::Result<(Self::UnixStream, Self::UnixAddr)>> + Send + '_ {
        listener.accept()
    }

    fn unix_local_addr(listener: &Self::UnixListener) -> io::Result<Self::UnixAddr> {
        listener.get_ref().local_addr()
    }

    fn tcp_stream(&self, stream: std::net::TcpStream) -> io::Result<Self::TcpStream> {
        Async::new(stream)
    }

    fn tcp_stream_into_std(stream: Self::TcpStream) -> io::Result<std::net::TcpStream> {
        stream.into_inner()
    }

    fn unix_stream(&self, stream: UnixStream) -> io::Result<Self::UnixStream> {
        Async::new(stream)
    }

    fn unix_stream_into_std(stream: Self::UnixStream) -> io::Result<UnixStream> {
        stream.into_inner()
    }
}

impl Runtime for Smol {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        executor().spawn(task).detach();
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let timer = Timer::at(deadline);
        Box::pin(async move {
            timer.await;
        })
    }

    fn watch_readable(&self, fd: Arc<OwnedFd>) -> io::Result<Box<dyn Readable>> {
        Ok(Box::new(SmolReadable(Async::new(fd)?)))
    }

    fn readiness_reader(&self, fd: OwnedFd) -> io::Result<Box<dyn ReadinessReader>> {
        Ok(Box::new(SmolReadiness(Async::new(std::fs::File::from(
            fd,
        ))?)))
    }

    fn forward_signals(
        &self,
        signals: &[Signal],
        to: async_channel::Sender<Signal>,
    ) -> io::Result<()> {
        let wanted = signals
            .iter()
            .map(|&s| to_async_signal(s))
            .collect::<io::Result<Vec<_>>>()?;
        // Installs the handlers now, before this returns.
        let mut stream = async_signal::Signals::new(wanted)?;
        self.spawn(Box::pin(async move {
            while let Some(Ok(signal)) = stream.next().await {
                if to.send(Signal::from_raw(signal as i32)).await.is_err() {
                    break;
                }
            }
        }));
        Ok(())
    }
}

/// The signals a [`SignalMap`](endless_unix::SignalMap) can name that async-signal knows.
fn to_async_signal(signal: Signal) -> io::Result<async_signal::Signal> {
    signal.to_async_signal().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("endless-smol cannot listen for {signal}"),
        )
    })
}

struct SmolReadable(Async<Arc<OwnedFd>>);

impl Readable for SmolReadable {
    fn readable(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.0.readable())
    }
}

struct SmolReadiness(Async<std::fs::File>);

impl ReadinessReader for SmolReadiness {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(self.0.read(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_signal_maps_to_the_same_number() {
        for signal in [
            Signal::HUP,
            Signal::TERM,
            Signal::INT,
            Signal::QUIT,
            Signal::USR1,
            Signal::USR2,
            Signal::WINCH,
        ] {
            assert_eq!(to_async_signal(signal).unwrap() as i32, signal.as_raw());
        }
        let err = to_async_signal(Signal::from_raw(64)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }
}
