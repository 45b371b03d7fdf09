use std::net::TcpStream;
use std::time::Duration;

use async_io::Async;
use endless_smol::{Endless, Tracked};
use smol::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use smol::stream::StreamExt;

fn main() -> std::io::Result<()> {
    smol::block_on(async {
        let endless = Endless::start()?;
        let listener = endless.tcp_listener("echo", "0.0.0.0:8080")?;
        smol::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(Some((stream, _peer))) => smol::spawn(echo(stream)).detach(),
                    Ok(None) => break, // handed over for good, or stopping
                    Err(_) => {
                        smol::Timer::after(Duration::from_millis(50)).await;
                    }
                }
            }
        })
        .detach();
        endless.ready();
        std::process::exit(endless.run().await.code);
    })
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
        let Some(line) = smol::future::or(lines.next(), closing).await else {
            return Ok(());
        };
        let reply = format!("{} {}\n", std::process::id(), line?);
        (&*stream).write_all(reply.as_bytes()).await?;
    }
}
