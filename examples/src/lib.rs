//! What the example servers share: the command line every one of them accepts, and
//! logging.
//!
//! ```text
//! --listen ADDR          listen on ADDR (repeatable); `unix:/path` for a Unix socket
//!                        (default 127.0.0.1:8080)
//! --pid-file PATH        keep a pid file
//! --drain-timeout SECS   close what is left this long after the drain starts (default 60;
//!                        `never` to wait for ever)
//! --upgrade-timeout SECS kill a new generation that is not ready this long after the
//!                        restart (default 60)
//! ```
//!
//! Listeners are named `listen-0`, `listen-1`, … in the order given, which is how a new
//! generation finds them again.
#![warn(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (`127.0.0.1:8080`, `[::1]:0`).
    Tcp(String),
    /// A Unix socket path (`unix:/run/app.sock`).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The shared command line of the example servers.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// `--listen`, in order.
    pub listen: Vec<ListenAddr>,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--drain-timeout` (`None`: never hammer).
    pub drain_timeout: Option<Duration>,
    /// `--upgrade-timeout`.
    pub upgrade_timeout: Duration,
}

impl Args {
    /// Parses the process's arguments; prints usage and exits with 2 on a mistake.
    pub fn from_env() -> Self {
        match Self::parse(std::env::args().skip(1)) {
            Ok(args) => args,
            Err(e) => {
                eprintln!("error: {e}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }

    /// Parses arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Self {
            listen: Vec::new(),
            pid_file: None,
            drain_timeout: Some(Duration::from_secs(60)),
            upgrade_timeout: Duration::from_secs(60),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--listen" => {
                    let v = value()?;
                    parsed.listen.push(match v.strip_prefix("unix:") {
                        Some(path) => ListenAddr::Unix(path.into()),
                        None => ListenAddr::Tcp(v),
                    });
                }
                "--pid-file" => parsed.pid_file = Some(value()?.into()),
                "--drain-timeout" => {
                    let v = value()?;
                    parsed.drain_timeout = if v == "never" {
                        None
                    } else {
                        Some(seconds(&flag, &v)?)
                    };
                }
                "--upgrade-timeout" => parsed.upgrade_timeout = seconds(&flag, &value()?)?,
                "-h" | "--help" => return Err("help requested".into()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if parsed.listen.is_empty() {
            parsed.listen.push(ListenAddr::Tcp("127.0.0.1:8080".into()));
        }
        Ok(parsed)
    }

    /// The lifecycle configuration these arguments ask for.
    pub fn config(&self) -> endless_tokio::Config {
        endless_tokio::Config::new()
            .upgrade_timeout(self.upgrade_timeout)
            .drain_timeout(self.drain_timeout)
    }

    /// The name of the `i`-th listener.
    pub fn listener_name(i: usize) -> String {
        format!("listen-{i}")
    }
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{flag} takes seconds, not {value:?}"))
}

/// Usage text.
pub const USAGE: &str = "usage: SERVER [--listen ADDR|unix:PATH]... [--pid-file PATH] \
[--drain-timeout SECS|never] [--upgrade-timeout SECS]";

/// Logs to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Announces a listener on standard output, one line that test harnesses parse:
/// `listening <name> <addr> pid=<pid>`.
pub fn announce(name: &str, addr: impl fmt::Display) {
    println!("listening {name} {addr} pid={}", std::process::id());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_the_shared_command_line() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "unix:/tmp/x.sock",
            "--pid-file",
            "/tmp/p",
            "--drain-timeout",
            "never",
            "--upgrade-timeout",
            "2.5",
        ])
        .unwrap();
        assert_eq!(
            a.listen,
            [
                ListenAddr::Tcp("127.0.0.1:0".into()),
                ListenAddr::Unix("/tmp/x.sock".into())
            ]
        );
        assert_eq!(a.drain_timeout, None);
        assert_eq!(a.upgrade_timeout, Duration::from_millis(2500));
        assert_eq!(parse(&[]).unwrap().listen.len(), 1);
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--drain-timeout", "-1"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
