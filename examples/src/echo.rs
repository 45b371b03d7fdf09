//! The echo examples' line protocol, the same on every runtime (`echo-tokio`, `echo-smol`,
//! `echo-async-std`), so that one set of end-to-end tests drives them all.
//!
//! Each line is answered with the server's pid and the line. A few lines are special, for
//! demonstrations and tests:
//! - `sleep MS` is answered after MS milliseconds (a request in flight during a restart);
//! - `fds` is answered with what a subprocess of the server (`ls -l /proc/self/fd`) sees,
//!   to show that no listener leaks into it;
//! - `version` is answered with the environment variable `ECHO_VERSION` (default `1`), to
//!   show that a restart runs the binary (or wrapper) now on disk;
//! - `runtime` is answered with the runtime the server runs on (`tokio`, `smol`,
//!   `async-std`), to show a handover from one build to another;
//! - `count` is answered with the number of lines answered before it. With
//!   `--state-version N` ([`carry_count`]) the count survives restarts: each generation
//!   hands it to the next as application state of version N, so it counts the lines the
//!   whole service answered.
//!
//! A UDP datagram is answered with the pid and the datagram, without its trailing newline.
//!
//! For tests of the fallback, `ECHO_EXIT_AFTER_READY=CODE:MS` in the environment makes the
//! server exit with CODE (as a crash would: no drain, no goodbye) MS milliseconds after it
//! reported ready ([`exit_after_ready`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use endless_unix::adapter::Endless;
use endless_unix::{Net, state::StateError};

/// The lines answered so far (by this generation, plus what its predecessor handed over).
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// With `ECHO_EXIT_AFTER_READY=CODE:MS` in the environment, call right after `ready`: the
/// process exits with CODE after MS milliseconds, the bad deploy that dies after its
/// start-up (the previous generation then takes the service back). Exits with 2 at once if
/// the variable is malformed.
pub fn exit_after_ready() {
    let Ok(value) = std::env::var("ECHO_EXIT_AFTER_READY") else {
        return;
    };
    let parsed = value
        .split_once(':')
        .and_then(|(code, ms)| Some((code.parse::<i32>().ok()?, ms.parse::<u64>().ok()?)));
    let Some((code, ms)) = parsed else {
        tracing::error!(%value, "ECHO_EXIT_AFTER_READY takes CODE:MS");
        std::process::exit(2);
    };
    tracing::warn!(
        code,
        ms,
        "exiting after ready, as asked (ECHO_EXIT_AFTER_READY)"
    );
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::exit(code);
    });
}

/// With `--state-version VERSION`: starts the count at the one the previous generation
/// handed over (as application state of `VERSION`: the count, eight bytes big-endian), and
/// hands it to the next generation the same way. Call it before `ready`. Without (`None`),
/// nothing is read or handed over.
pub fn carry_count<N: Net>(endless: &Endless<N>, version: Option<u32>) {
    let Some(version) = version else {
        return;
    };
    match endless.inherited_state(version) {
        Ok(Some(bytes)) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(count) => {
                let count = u64::from_be_bytes(count);
                ANSWERED.store(count, Ordering::SeqCst);
                tracing::info!(count, version, "inherited the count");
            }
            Err(_) => tracing::warn!(
                bytes = bytes.len(),
                "inherited state is not a count; starting from 0"
            ),
        },
        Ok(None) => tracing::info!(version, "no count inherited; starting from 0"),
        Err(e @ StateError::VersionMismatch { .. }) => {
            tracing::warn!(error = %e, "the count is of another version; starting from 0");
        }
        Err(e) => tracing::warn!(error = %e, "cannot inherit the count; starting from 0"),
    }
    endless.hand_over_state(version, || {
        ANSWERED.load(Ordering::SeqCst).to_be_bytes().to_vec()
    });
}

/// The answer to `line` (without its newline) and how long to wait before sending it.
pub fn answer(line: &str, runtime: &str) -> (Option<Duration>, String) {
    let pid = std::process::id();
    let answered = ANSWERED.fetch_add(1, Ordering::SeqCst);
    if let Some(ms) = line.strip_prefix("sleep ") {
        let ms: u64 = ms.trim().parse().unwrap_or(0);
        return (Some(Duration::from_millis(ms)), format!("{pid} {line}\n"));
    }
    let answer = match line {
        "fds" => subprocess_fds(),
        "version" => std::env::var("ECHO_VERSION").unwrap_or_else(|_| "1".to_owned()),
        "runtime" => runtime.to_owned(),
        "count" => answered.to_string(),
        _ => line.to_owned(),
    };
    (None, format!("{pid} {answer}\n"))
}

/// The answer to a UDP datagram.
pub fn datagram_answer(datagram: &[u8]) -> String {
    let line = String::from_utf8_lossy(datagram);
    format!("{} {}", std::process::id(), line.trim_end())
}

/// What `ls -l /proc/self/fd` prints in a subprocess, on one line. (It blocks the task for
/// the few milliseconds `ls` takes: a test command, not a request path.)
fn subprocess_fds() -> String {
    match std::process::Command::new("ls")
        .args(["-l", "/proc/self/fd"])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("->"))
            .map(|l| {
                l.split_whitespace()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(" | "),
        Err(e) => format!("error: {e}"),
    }
}
