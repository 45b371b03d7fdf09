//! Binding fresh listeners the way a restartable server wants them.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use socket2::{Domain, Protocol, Socket, Type};

/// The accept backlog of listeners bound by endless: connections queue here while one
/// generation hands over to the next, so it is generous.
pub const BACKLOG: i32 = 1024;

/// A TCP listener on `addr` (IPv4 or IPv6, port 0 for any), with `SO_REUSEADDR` so that a
/// fresh start right after a stop does not fail on `TIME_WAIT` connections. Never
/// `SO_REUSEPORT`: endless hands the one socket over instead. Non-blocking, close-on-exec.
///
/// # Examples
///
/// ```
/// let listener = endless_unix::listen::bind_tcp("127.0.0.1:0".parse()?)?;
/// assert_ne!(listener.local_addr()?.port(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A UDP socket bound to `addr`. Non-blocking, close-on-exec.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A Unix stream listener at `path`. A socket file left behind by a process that is gone
/// (connecting to it is refused) is removed first; one that somebody still serves is not,
/// and binding then fails with `AddrInUse`. Non-blocking, close-on-exec.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            match UnixStream::connect(path) {
                Err(c) if c.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing a stale unix socket");
                    std::fs::remove_file(path)?;
                }
                _ => return Err(e),
            }
            let listener = UnixListener::bind(path)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        }
        Err(e) => Err(e),
        Ok(listener) => {
            listener.set_nonblocking(true)?;
            Ok(listener)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_port_zero_and_v6() {
        let l = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
        if let Ok(l6) = bind_tcp("[::1]:0".parse().unwrap()) {
            assert!(l6.local_addr().unwrap().is_ipv6());
        }
    }

    #[test]
    fn unix_stale_socket_is_replaced_but_a_live_one_is_not() {
        let dir = std::env::temp_dir().join(format!("endless-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let live = bind_unix(&path).unwrap();
        assert_eq!(
            bind_unix(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live); // the file stays, nobody listens: stale
        assert!(path.exists());
        let again = bind_unix(&path).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
