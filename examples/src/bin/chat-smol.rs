//! `chat` on smol: the same server (see [`endless_examples::chat`]), with endless-hyper's
//! `Server` on endless-smol and async-tungstenite over `endless_hyper::ws::MessageBoundary`
//! (through tokio-util's `Compat`). Its websockets move to and from the tokio `chat` too.
//!
//! ```text
//! cargo run -p endless-examples --bin chat-smol -- --listen 127.0.0.1:8080
//! ```

use endless_examples::chat::{self, AsyncWs, Front};
use endless_examples::{Args, init_logging};
use endless_smol::Smol;

fn main() {
    init_logging();
    let args = Args::from_env();
    let code = smol::block_on(chat::run::<Smol, AsyncWs<Smol>>(
        args,
        endless_hyper::Server::new(),
        Front::Hyper,
        |task| smol::spawn(task).detach(),
    ));
    std::process::exit(code);
}
