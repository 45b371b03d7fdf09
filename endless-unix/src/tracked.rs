//! A stream that counts as a connection for the drain.

use std::fmt;

use crate::tracker::ConnectionGuard;

pin_project_lite::pin_project! {
    /// A connection that is tracked for the drain: a stream and its [`ConnectionGuard`].
    ///
    /// It reads and writes like the stream it wraps (with the `tokio` feature, as a tokio
    /// `AsyncRead`/`AsyncWrite`; with `futures-io`, as a futures one) and dereferences to
    /// it. Dropping it unregisters the connection, then closes the stream, in that order,
    /// so that a forced close never shuts down an fd number that was reused.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use endless_tokio::Endless;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let endless = Endless::start()?;
    /// let listener = endless.tcp_listener("echo", "127.0.0.1:0")?;
    /// let mut client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// let (mut connection, _) = listener.accept().await?.expect("still accepting");
    ///
    /// // Read and write it as the tokio stream it wraps…
    /// client.write_all(b"ping").await?;
    /// let mut buf = [0; 4];
    /// connection.read_exact(&mut buf).await?;
    /// // …reach the stream itself through `Deref`…
    /// assert_eq!(connection.peer_addr()?, client.local_addr()?);
    /// // …and ask its guard whether the drain wants it closed.
    /// assert!(!connection.guard().is_closing());
    /// # drop(connection);
    /// # endless.request(endless_tokio::Request::Stop);
    /// # assert_eq!(endless.run().await.code, 0);
    /// # Ok(()) }
    /// ```
    pub struct Tracked<S> {
        // Declared first: dropped before the stream closes its fd.
        guard: ConnectionGuard,
        #[pin]
        stream: S,
    }
}

impl<S> Tracked<S> {
    /// Wraps `stream` with its guard.
    pub fn new(stream: S, guard: ConnectionGuard) -> Self {
        Self { guard, stream }
    }

    /// The guard: [`ConnectionGuard::closing`] says when to close once idle.
    pub fn guard(&self) -> &ConnectionGuard {
        &self.guard
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream and its guard, apart. The guard no longer shuts the stream down on a
    /// forced close (it cannot know when the stream closes), but still counts it: keep it
    /// as long as the connection lives. To read and write from different tasks, use
    /// `into_split` (tokio's streams) instead, which keeps the forced close.
    pub fn into_parts(self) -> (S, ConnectionGuard) {
        self.guard.forget_socket();
        (self.stream, self.guard)
    }
}

impl<S> std::ops::Deref for Tracked<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.stream
    }
}

impl<S> std::ops::DerefMut for Tracked<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: fmt::Debug> fmt::Debug for Tracked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("stream", &self.stream)
            .field("guard", &self.guard)
            .finish()
    }
}

#[cfg(feature = "tokio")]
mod tokio_io {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::net::{TcpStream, UnixStream, tcp, unix};

    use super::Tracked;

    impl Tracked<TcpStream> {
        /// Splits the connection into a read half and a write half that can move to
        /// different tasks, as tokio's `TcpStream::into_split` does. Both halves stay tracked:
        /// the connection counts for the drain until both are dropped, and a forced close
        /// shuts the socket down while either lives.
        pub fn into_split(self) -> (Tracked<tcp::OwnedReadHalf>, Tracked<tcp::OwnedWriteHalf>) {
            let Self { mut guard, stream } = self;
            let other = guard.share();
            let (read, write) = stream.into_split();
            (Tracked::new(read, guard), Tracked::new(write, other))
        }
    }

    impl Tracked<UnixStream> {
        /// Splits the connection into halves that can move to different tasks, as
        /// tokio's `UnixStream::into_split` does; both stay tracked (see
        /// [`Tracked<TcpStream>::into_split`](Tracked::into_split)).
        pub fn into_split(self) -> (Tracked<unix::OwnedReadHalf>, Tracked<unix::OwnedWriteHalf>) {
            let Self { mut guard, stream } = self;
            let other = guard.share();
            let (read, write) = stream.into_split();
            (Tracked::new(read, guard), Tracked::new(write, other))
        }
    }

    impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for Tracked<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.project().stream.poll_read(cx, buf)
        }
    }

    impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Tracked<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.project().stream.poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.project().stream.poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.project().stream.poll_shutdown(cx)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.project().stream.poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.stream.is_write_vectored()
        }
    }
}

#[cfg(feature = "futures-io")]
mod futures_io_impls {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::Tracked;

    impl<S: futures_io::AsyncRead> futures_io::AsyncRead for Tracked<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            self.project().stream.poll_read(cx, buf)
        }
    }

    impl<S: futures_io::AsyncWrite> futures_io::AsyncWrite for Tracked<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.project().stream.poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.project().stream.poll_flush(cx)
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.project().stream.poll_close(cx)
        }
    }
}
