//! The shape of the API a new user meets: split streams stay tracked, a listener's error
//! names the listener and the address, and every type a public signature uses is nameable
//! through `endless_tokio` alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use endless_tokio::{Endless, ListenError, Request, Tracked};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every type the API's signatures use, named through this crate (a compile test: a
/// missing re-export fails the build).
#[allow(dead_code, clippy::too_many_arguments)]
fn nameable(
    _: endless_tokio::Exit,
    _: endless_tokio::ExitReason,
    _: endless_tokio::DrainCause,
    _: endless_tokio::AdoptError,
    _: endless_tokio::TakeError,
    _: endless_tokio::StartError,
    _: endless_tokio::Event,
    _: endless_tokio::Refusal,
) -> Result<endless_tokio::Restarted, endless_tokio::RestartError> {
    // The restart command, as the examples' `SERVER restart` runs it.
    endless_tokio::control::restart(
        std::path::Path::new("/run/server.pid"),
        endless_tokio::control::DEFAULT_TIMEOUT,
    )
}

/// Every line this process's subscriber received.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_stay_tracked_listener_errors_say_which_and_logs_carry_the_pid() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let endless = Endless::builder()
        .config(endless_tokio::Config::new().drain_timeout(Some(Duration::from_millis(200))))
        .start()
        .unwrap();

    // A listener's error names it and what was asked for.
    let err = endless.tcp_listener("http", "0.0.0.0:80x").unwrap_err();
    assert!(matches!(err, ListenError::Resolve { .. }), "{err:?}");
    assert_eq!(err.name(), "http");
    assert!(
        err.to_string()
            .starts_with(r#"listener "http": cannot resolve "0.0.0.0:80x": "#),
        "{err}"
    );
    let listener = endless.tcp_listener("echo", "127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let err = endless.tcp_listener("again", addr).unwrap_err();
    assert!(matches!(err, ListenError::Bind { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("listener \"again\": cannot bind {addr}: ")),
        "{err}"
    );
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::AddrInUse
    );
    let err = endless.tcp_listener("echo", "127.0.0.1:0").unwrap_err();
    assert!(matches!(err, ListenError::DuplicateName { .. }), "{err:?}");
    // `?` into io::Result keeps the message and a matching kind.
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(io.to_string().contains("\"echo\""), "{io}");

    // The tokio idiom: split, read in one task, write in another.
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, _peer) = listener.accept().await.unwrap().unwrap();
    let stream: Tracked<TcpStream> = stream;
    let (mut read, mut write) = stream.into_split();
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 5];
        read.read_exact(&mut buf).await.unwrap();
        write.write_all(&buf).await.unwrap();
        (read, write)
    });
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    let (read, write) = echo.await.unwrap();
    assert_eq!(endless.tracker().len(), 1);
    drop(read);
    // One half still counts, and the drain deadline still shuts the socket down.
    assert_eq!(endless.tracker().len(), 1);
    endless.ready();
    endless.request(Request::Stop);
    let exit = tokio::time::timeout(Duration::from_secs(30), endless.run())
        .await
        .expect("the drain ends at its deadline");
    assert_eq!(exit.reason, endless_tokio::ExitReason::DeadlinePassed);
    let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the write half's connection is still open: {read:?}"
    );
    drop(write);
    assert!(endless.tracker().is_empty());

    // Every line endless logged carries its span with this process's pid (two generations
    // write to one stderr).
    let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let ours: Vec<&str> = logged
        .lines()
        .filter(|line| line.contains(" endless_unix::") || line.contains(" endless_tokio::"))
        .collect();
    assert!(ours.len() >= 5, "too few lines logged:\n{logged}");
    let span = format!("endless{{pid={}}}", std::process::id());
    for line in ours {
        assert!(line.contains(&span), "a line without {span}: {line}");
    }
}
