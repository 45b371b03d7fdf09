//! endless-unix's `Runtime` and `Net` on tokio.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use endless_unix::{BoxFuture, Net, Readable, ReadinessReader, Runtime, Signal};

/// endless on tokio: the runtime the lifecycle runs on, and tokio's socket types.
///
/// It names the types of this crate ([`Endless`](crate::Endless) is
/// `endless_unix::adapter::Endless<Tokio>`); an application does not use it directly.
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: tokio::runtime::Handle,
}

impl Net for Tokio {
    type TcpListener = tokio::net::TcpListener;
    type TcpStream = tokio::net::TcpStream;
    type UnixListener = tokio::net::UnixListener;
    type UnixStream = tokio::net::UnixStream;
    type UnixAddr = tokio::net::unix::SocketAddr;
    type UdpSocket = tokio::net::UdpSocket;

    /// The runtime this is called from. Panics outside a tokio runtime, as tokio does.
    fn current() -> Self {
        Self {
            handle: tokio::runtime::Handle::current(),
        }
    }

    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Self::TcpListener> {
        let _entered = self.handle.enter();
        tokio::net::TcpListener::from_std(listener)
    }

    fn unix_listener(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<Self::UnixListener> {
        let _entered = self.handle.enter();
        tokio::net::UnixListener::from_std(listener)
    }

    fn udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Self::UdpSocket> {
        let _entered = self.handle.enter();
        tokio::net::UdpSocket::from_std(socket)
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
        listener.local_addr()
    }

    fn tcp_stream(&self, stream: std::net::TcpStream) -> io::Result<Self::TcpStream> {
        let _entered = self.handle.enter();
        tokio::net::TcpStream::from_std(stream)
    }

    fn tcp_stream_into_std(stream: Self::TcpStream) -> io::Result<std::net::TcpStream> {
        stream.into_std()
    }

    fn unix_stream(&self, stream: std::os::unix::net::UnixStream) -> io::Result<Self::UnixStream> {
        let _entered = self.handle.enter();
        tokio::net::UnixStream::from_std(stream)
    }

    fn unix_stream_into_std(
        stream: Self::UnixStream,
    ) -> io::Result<std::os::unix::net::UnixStream> {
        stream.into_std()
    }
}

impl Runtime for Tokio {
    /// tokio's clock: paused and advanced with it in tests (`tokio::time::pause`).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.handle.spawn(task);
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        let _entered = self.handle.enter();
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn watch_readable(&self, fd: Arc<OwnedFd>) -> io::Result<Box<dyn Readable>> {
        let _entered = self.handle.enter();
        // As in `readiness_reader`: the registration owns (a share of) the fd, which stays
        // open as long as it is registered.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::new(fd)?;
        Ok(Box::new(TokioReadable(fd)))
    }

    fn readiness_reader(&self, fd: OwnedFd) -> io::Result<Box<dyn ReadinessReader>> {
        let _entered = self.handle.enter();
        // A pipe or a socket (endless' readiness channel is a socketpair): read(2) on
        // either, driven by the reactor. `AsyncFd::new` is deprecated because a `T` that
        // does not own its fd could close it while registered; a `File` owns it and is
        // dropped with the registration, which is the sound case (the replacement,
        // `register`, is an `unsafe fn` for the same argument).
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::new(std::fs::File::from(fd))?;
        Ok(Box::new(TokioReadiness(fd)))
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

struct TokioReadable(tokio::io::unix::AsyncFd<Arc<OwnedFd>>);

impl Readable for TokioReadable {
    fn readable(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            // The readiness is kept: a pidfd stays readable once its process has exited.
            self.0.readable().await?.retain_ready();
            Ok(())
        })
    }
}

struct TokioReadiness(tokio::io::unix::AsyncFd<std::fs::File>);

impl ReadinessReader for TokioReadiness {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move {
            loop {
                let mut ready = self.0.readable().await?;
                match ready.try_io(|fd| io::Read::read(&mut fd.get_ref(), buf)) {
                    Ok(result) => return result,
                    Err(_would_block) => {}
                }
            }
        })
    }
}
