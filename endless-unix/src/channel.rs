//! The channel between a generation and the one it spawns, as a carrier of whole messages.
//!
//! The socket is a Unix `SOCK_STREAM` socketpair ([`sys::channel_pair`]): a byte stream,
//! which every Unix has, where the `SOCK_SEQPACKET` endless used before keeps record
//! boundaries but does not exist on macOS. The messages say their own length
//! ([`endless_core::takeover::message_len`]), so a stream carries them as well:
//!
//! - A message is sent whole, its descriptors attached to its first byte, under a lock:
//!   no other message starts in the middle of it, whichever threads send (the new side
//!   answers offers from the application's tasks and from its receiving thread).
//! - A message with descriptors is read with reads that never ask past its end: the kernel
//!   hands descriptors over with the first byte of the send that carried them, so every
//!   descriptor read while reading a message is that message's.
//! - Messages without descriptors (the new side's replies and departure) can be read in
//!   any chunks and split with [`endless_core::takeover::Deframer`].
//!
//! A `SOCK_SEQPACKET` socket from a parent built with an earlier endless is read as
//! records, so that an upgrade across that change still hands connections over.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use endless_core::takeover::{MAX_OFFER_LEN, MessageLen, message_len};

use crate::sys;

/// How long [`Channel::try_send`] waits for room for the rest of a message it began.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// One end of the channel between two generations.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
    /// The socket keeps record boundaries (`SOCK_SEQPACKET`): one message per record.
    records: bool,
    /// Held for the whole of each send, so that messages never interleave.
    sending: Mutex<()>,
}

impl Channel {
    /// The channel on `fd`, a Unix stream socket (or a `SOCK_SEQPACKET` one); an
    /// `InvalidInput` error for anything else (a pipe carries no descriptors).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        let not_a_channel = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the channel is not a Unix stream socket",
            )
        };
        let socket = socket2::SockRef::from(&fd);
        let ty = socket.r#type().map_err(|e| {
            if sys::is_errno(&e, rustix::io::Errno::NOTSOCK) {
                not_a_channel()
            } else {
                e
            }
        })?;
        if !socket.local_addr()?.is_unix() {
            return Err(not_a_channel());
        }
        let records = match ty {
            socket2::Type::STREAM => false,
            socket2::Type::SEQPACKET => true,
            _ => return Err(not_a_channel()),
        };
        Ok(Self {
            fd,
            records,
            sending: Mutex::new(()),
        })
    }

    /// Sends `message` whole, with `fds` attached (at most [`sys::MAX_FDS`]), waiting for
    /// room as long as it takes (on a blocking or a non-blocking socket alike). `EPIPE`
    /// (`BrokenPipe`) if the peer is gone. After an error the channel is of no further use:
    /// part of the message may have gone (with the descriptors), and the peer sees a
    /// message cut short.
    pub(crate) fn send(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let _sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        self.send_rest(message, fds, None)
    }

    /// Sends `message` whole, with `fds`, as [`send`](Self::send), waiting for room until
    /// `deadline` at most: past it, `TimedOut` (and part of the message may have gone).
    pub(crate) fn send_until(
        &self,
        message: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
    ) -> io::Result<()> {
        let _sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        self.send_rest(message, fds, Some(deadline))
    }

    /// Sends `message` whole if the channel has room for any of it now; `WouldBlock` if it
    /// has none (nothing was sent). A message begun is finished, waiting at most a second
    /// for room; past that the channel is shut down for sending (the peer sees a message
    /// cut short, then the end) and the error is `TimedOut`.
    pub(crate) fn try_send(&self, message: &[u8]) -> io::Result<()> {
        let _sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = sys::send_part(self.fd.as_fd(), message, &[], true)?;
        let deadline = Instant::now() + FINISH_TIMEOUT;
        let finished = self.send_rest(&message[sent..], &[], Some(deadline));
        if finished
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Write);
        }
        finished
    }

    /// Sends all of `bytes`, `fds` with the first of them; waits for room until `deadline`.
    fn send_rest(
        &self,
        mut bytes: &[u8],
        mut fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            // Never blocks in the kernel, whatever the socket's mode: the wait is `poll`'s,
            // which has a deadline.
            match sys::send_part(self.fd.as_fd(), bytes, fds, true) {
                Ok(sent) => {
                    bytes = &bytes[sent..];
                    fds = &[];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if !sys::wait_fd_for(self.fd.as_fd(), true, timeout)? {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no room on the channel to finish a message",
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the next message into `buf` (replacing what it held), with the descriptors
    /// that came with it; `None` at the end of the channel. Waits for it as long as it
    /// takes. Only one thread reads a channel.
    ///
    /// # Errors
    ///
    /// `InvalidData` when the bytes cannot start a message (the stream cannot be split
    /// past them; [`endless_core::takeover::FrameError`] is the source); `UnexpectedEof`
    /// when the channel ends in the middle of a message; the socket's own errors. On a
    /// `SOCK_SEQPACKET` socket a record is one message, whatever its fields say: decoding
    /// it finds what is wrong, and the next record is the next message.
    pub(crate) fn recv(&self, buf: &mut Vec<u8>) -> io::Result<Option<Vec<OwnedFd>>> {
        buf.clear();
        let mut fds = Vec::new();
        if self.records {
            buf.resize(MAX_OFFER_LEN + 1, 0);
            let record = self.read_some(buf)?;
            buf.truncate(record.len);
            if record.len == 0 && record.fds.is_empty() {
                return Ok(None);
            }
            return Ok(Some(record.fds));
        }
        loop {
            let want = match message_len(buf) {
                Ok(MessageLen::Exactly(len)) if len == buf.len() => return Ok(Some(fds)),
                Ok(MessageLen::Exactly(len) | MessageLen::AtLeast(len)) => len,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            let have = buf.len();
            buf.resize(want, 0);
            let read = self.read_some(&mut buf[have..]);
            let record = match read {
                Ok(record) => record,
                Err(e) => {
                    buf.truncate(have);
                    return Err(e);
                }
            };
            buf.truncate(have + record.len);
            fds.extend(record.fds);
            if record.len == 0 {
                if have == 0 && fds.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the channel ended in the middle of a message",
                ));
            }
        }
    }

    /// One read, waiting while the socket has nothing.
    fn read_some(&self, buf: &mut [u8]) -> io::Result<sys::Record> {
        loop {
            match sys::recv_with_fds(self.fd.as_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sys::wait_fd(self.fd.as_fd(), false)?;
                }
                other => return other,
            }
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use endless_core::Departure;
    use endless_core::takeover::{
        Deframer, MAX_STATE_LEN, Offer, Outcome, Reply, StreamKind, encode_departure,
    };
    use std::net::UdpSocket;

    fn pair() -> (Channel, Channel) {
        let (a, b) = sys::channel_pair().unwrap();
        (Channel::new(a).unwrap(), Channel::new(b).unwrap())
    }

    fn offer(id: u64, state_len: usize) -> Vec<u8> {
        Offer {
            id,
            kind: StreamKind::Tcp,
            name: "chat".into(),
            state: vec![b's'; state_len],
            unconsumed: b"left".to_vec(),
        }
        .encode()
        .unwrap()
    }

    /// A socket whose identity the receiver can check: a bound UDP socket's port.
    fn udp() -> (UdpSocket, u16) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        (socket, port)
    }

    fn port_of(fd: OwnedFd) -> u16 {
        UdpSocket::from(fd).local_addr().unwrap().port()
    }

    #[test]
    fn a_pipe_or_a_tcp_socket_is_no_channel() {
        let (reader, _writer) = io::pipe().unwrap();
        let err = Channel::new(reader.into()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = Channel::new(listener.into()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// Messages larger than the socket's buffer, each with its socket, back to back: each
    /// arrives whole with its own descriptor and no other, though the stream interleaves
    /// them in the kernel's chunks.
    #[test]
    fn large_messages_keep_their_descriptors() {
        let (old, new) = pair();
        let sockets: Vec<(UdpSocket, u16)> = (0..3).map(|_| udp()).collect();
        let ports: Vec<u16> = sockets.iter().map(|(_, port)| *port).collect();
        let messages: Vec<Vec<u8>> = [MAX_STATE_LEN, 10, MAX_STATE_LEN]
            .iter()
            .enumerate()
            .map(|(i, &len)| offer(i as u64 + 1, len))
            .collect();
        let sender = {
            let messages = messages.clone();
            std::thread::spawn(move || {
                for (message, (socket, _)) in messages.iter().zip(&sockets) {
                    old.send(message, &[socket.as_fd()]).unwrap();
                }
                drop(old);
            })
        };
        let mut buf = Vec::new();
        for (message, port) in messages.iter().zip(ports) {
            let fds = new.recv(&mut buf).unwrap().unwrap();
            assert_eq!(&buf, message);
            assert_eq!(fds.len(), 1);
            assert_eq!(port_of(fds.into_iter().next().unwrap()), port);
        }
        assert!(new.recv(&mut buf).unwrap().is_none());
        sender.join().unwrap();
    }

    /// Senders on several threads never interleave their messages.
    #[test]
    fn concurrent_senders_do_not_interleave() {
        let (old, new) = pair();
        let new = std::sync::Arc::new(new);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let new = std::sync::Arc::clone(&new);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let outcome = Outcome::Taken;
                        new.send(
                            &Reply {
                                id: t * 1000 + i,
                                outcome,
                            }
                            .encode(),
                            &[],
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        let reader = std::thread::spawn(move || {
            let mut deframer = Deframer::new();
            let mut got = 0;
            let mut buf = [0u8; 1000];
            while got < 2000 {
                let n = sys::recv_with_fds(old.as_fd(), &mut buf).unwrap().len;
                assert_ne!(n, 0);
                deframer.push(&buf[..n]);
                while let Some(message) = deframer.next_message() {
                    Reply::decode(&message.unwrap()).unwrap();
                    got += 1;
                }
            }
        });
        for t in threads {
            t.join().unwrap();
        }
        reader.join().unwrap();
    }

    #[test]
    fn the_end_in_the_middle_of_a_message_is_an_error() {
        let (old, new) = pair();
        let message = offer(1, 100);
        sys::send_part(old.as_fd(), &message[..50], &[], false).unwrap();
        drop(old);
        let err = new.recv(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn garbage_ends_the_stream_with_a_typed_error() {
        let (old, new) = pair();
        old.send(b"GET / HTTP/1.1\r\n\r\n", &[]).unwrap();
        let err = new.recv(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.get_ref()
                .is_some_and(|e| e.is::<endless_core::takeover::FrameError>())
        );
    }

    /// No room: nothing is sent, and every message sent arrives whole.
    #[test]
    fn try_send_sends_whole_messages_or_nothing() {
        let (old, new) = pair();
        let departure = encode_departure(Departure::Stopping);
        let mut sent = 0usize;
        loop {
            match new.try_send(&departure) {
                Ok(()) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(sent > 1);
        let mut deframer = Deframer::new();
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        // Read everything there is; every message is whole.
        sys::set_nonblocking(old.as_fd()).unwrap();
        loop {
            match sys::recv_with_fds(old.as_fd(), &mut buf) {
                Ok(record) => deframer.push(&buf[..record.len]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            while let Some(message) = deframer.next_message() {
                assert_eq!(message.unwrap(), departure);
                got += 1;
            }
        }
        assert_eq!(got, sent);
        assert!(deframer.is_empty());
    }

    /// A `SOCK_SEQPACKET` channel (made by an earlier endless) is read as records.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    #[test]
    fn seqpacket_records_are_messages() {
        let (a, b) =
            socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        let (old, new) = (
            Channel::new(OwnedFd::from(a)).unwrap(),
            Channel::new(OwnedFd::from(b)).unwrap(),
        );
        let (socket, port) = udp();
        let first = offer(1, 10);
        let second = offer(2, 20);
        old.send(&first, &[socket.as_fd()]).unwrap();
        old.send(&second, &[]).unwrap();
        drop(old);
        let mut buf = Vec::new();
        let fds = new.recv(&mut buf).unwrap().unwrap();
        assert_eq!(buf, first);
        assert_eq!(port_of(fds.into_iter().next().unwrap()), port);
        assert!(new.recv(&mut buf).unwrap().unwrap().is_empty());
        assert_eq!(buf, second);
        assert!(new.recv(&mut buf).unwrap().is_none());
    }
}
