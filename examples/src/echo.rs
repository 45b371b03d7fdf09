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
//!   `async-std`), to show a handover from one build to another.
//!
//! A UDP datagram is answered with the pid and the datagram, without its trailing newline.

use std::time::Duration;

/// The answer to `line` (without its newline) and how long to wait before sending it.
pub fn answer(line: &str, runtime: &str) -> (Option<Duration>, String) {
    let pid = std::process::id();
    if let Some(ms) = line.strip_prefix("sleep ") {
        let ms: u64 = ms.trim().parse().unwrap_or(0);
        return (Some(Duration::from_millis(ms)), format!("{pid} {line}\n"));
    }
    let answer = match line {
        "fds" => subprocess_fds(),
        "version" => std::env::var("ECHO_VERSION").unwrap_or_else(|_| "1".to_owned()),
        "runtime" => runtime.to_owned(),
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
