use std::net::TcpStream;
use std::time::Duration;

use async_io::Async;
use async_std::io::BufReader;
use async_std::prelude::*;
use endless_smol::{Endless, Tracked};

#[async_std::main]
async fn main() -> std::io::Result<()> {
    let endless = Endless::start()?;
    let listener = endless.tcp_listener("echo", "0.0.0.0:8080")?;
    async_std::task::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(Some((stream, _peer))) => drop(async_std::task::spawn(echo(stream))),
                Ok(None) => break, // handed over for good, or stopping
                Err(_) => async_std::task::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    endless.ready();
    std::process::exit(endless.run().await.code);
}

// Read and write `stream` (futures-io): here, echo each line with this process's pid.
async fn echo(stream: Tracked<Async<TcpStream>>) -> std::io::Result<()> {
    let mut lines = BufReader::new(&*stream).lines();
    loop {
        // Between requests, close once this process drains (an idle client must not keep
        // the old generation alive until the drain deadline).
        let closing = async {
            stream.guard().closing().await;
            None
        };
        let Some(line) = futures_lite::future::or(lines.next(), closing).await else {
            return Ok(());
        };
        let reply = format!("{} {}\n", std::process::id(), line?);
        (&*stream).write_all(reply.as_bytes()).await?;
    }
}
