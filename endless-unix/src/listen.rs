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
/// and binding then fails with `AddrInUse`. Anything else at `path` — a regular file, a
/// directory, a symlink (even to a socket) — is never removed: binding fails with
/// `AlreadyExists`, naming it. Non-blocking, close-on-exec.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    let listener = match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            remove_stale_socket(path, e)?;
            UnixListener::bind(path)?
        }
        bound => bound?,
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Removes the socket file at `path` if nobody serves it; `in_use` (the failed bind's
/// error) if somebody does.
fn remove_stale_socket(path: &Path, in_use: io::Error) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // Not followed: a symlink is not ours to judge, whatever it points to.
    let before = std::fs::symlink_metadata(path)?;
    if !before.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket (a {}); it is left as it is",
                path.display(),
                kind_of(&before.file_type())
            ),
        ));
    }
    match UnixStream::connect(path) {
        Err(c) if c.kind() == io::ErrorKind::ConnectionRefused => {}
        _ => return Err(in_use),
    }
    // The same file as the one checked (not replaced meanwhile), then removed.
    let now = std::fs::symlink_metadata(path)?;
    if (now.dev(), now.ino()) != (before.dev(), before.ino()) {
        return Err(in_use);
    }
    tracing::info!(path = %path.display(), "removing a stale unix socket");
    std::fs::remove_file(path)
}

fn kind_of(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_file() {
        "regular file"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_char_device() || kind.is_block_device() {
        "device"
    } else {
        "file of another kind"
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

    #[test]
    fn unix_never_removes_what_is_not_a_socket() {
        let dir = std::env::temp_dir().join(format!("endless-listen-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A regular file: kept, with its contents, and the error names it.
        let file = dir.join("data.db");
        std::fs::write(&file, b"precious").unwrap();
        let err = bind_unix(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(
            err.to_string().contains("not a socket (a regular file)"),
            "{err}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        // A symlink to a stale socket: neither the link nor the socket is touched.
        let stale = dir.join("stale.sock");
        drop(bind_unix(&stale).unwrap());
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&stale, &link).unwrap();
        let err = bind_unix(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(stale.exists());
        // A directory.
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(
            bind_unix(&sub)
                .unwrap_err()
                .to_string()
                .contains("directory")
        );
        assert!(sub.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
