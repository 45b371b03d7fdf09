//! `chat` on async-std, through endless-smol: the same server (see
//! [`endless_examples::chat`]) as `chat-smol`, its tasks on async-std's executor.
//!
//! ```text
//! cargo run -p endless-examples --bin chat-async-std -- --listen 127.0.0.1:8080
//! ```

use endless_examples::chat::{self, AsyncWs, Front};
use endless_examples::{Args, init_logging};
use endless_smol::Smol;

fn spawn(task: endless_hyper::rt::Task) {
    async_std::task::spawn(task);
}

#[async_std::main]
async fn main() {
    init_logging();
    let args = Args::from_env();
    let server = endless_hyper::Server::new().spawner(spawn);
    let code = chat::run::<Smol, AsyncWs<Smol>>(args, server, Front::Hyper, spawn).await;
    std::process::exit(code);
}
