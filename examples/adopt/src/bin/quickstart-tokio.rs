use endless_tokio::{Endless, Tracked};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let endless = Endless::builder().pid_file("/run/myserver.pid").start()?;
    let listener = endless.tcp_listener("echo", "0.0.0.0:8080")?; // inherited, or bound now
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                // The drain waits for `stream` to be dropped.
                Ok(Some((stream, _peer))) => drop(tokio::spawn(echo(stream))),
                // Stopping, or handed over for good: the socket stays open for the next.
                Ok(None) => break,
                // Too many open files, say: the listener is fine; wait a little.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    });
    endless.ready(); // the previous generation, if any, now drains and exits
    let exit = endless.run().await; // until a stop, or a handover, is complete
    std::process::exit(exit.code);
}

// Read and write `stream` as a TcpStream: here, echo each line with this process's pid.
async fn echo(stream: Tracked<TcpStream>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            // Between requests, close once this process drains: an idle client must not
            // keep the old generation alive until the drain deadline.
            () = write.guard().closing() => None,
        };
        let Some(line) = line else { return Ok(()) };
        let reply = format!("{} {line}\n", std::process::id());
        write.write_all(reply.as_bytes()).await?;
    }
}
