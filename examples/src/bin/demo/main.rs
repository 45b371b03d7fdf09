//! Zero-downtime restarts, shown: starts an example server, drives keep-alive HTTP load at
//! it from an in-process client that never retries, restarts it by `SIGHUP` N times while
//! the load runs, and prints what the client saw.
//!
//! ```text
//! cargo run --release -p endless-examples --bin demo
//! cargo run --release -p endless-examples --bin demo -- --server hello-smol --restarts 20 --duration 20
//! ```
//!
//! Options:
//!
//! ```text
//! --restarts N       restarts, evenly spread over the run (default 10)
//! --connections N    keep-alive connections (default 32)
//! --duration SECS    how long the load runs (default 10)
//! --server NAME      hello-hyper (default), hello-axum, hello-tls, hello-smol, hello-async-std
//! --http2            the load over HTTP/2 (prior knowledge; ALPN with TLS), not HTTP/1.1
//! --exe PATH         run this server binary (on the examples' command line) instead of
//!                    the demo's own copy of --server, e.g. target/release/hello-axum
//! ```
//!
//! The demo carries every HTTP example server: `demo serve NAME [ARGS]` runs one (the
//! code of `hello-hyper` and the others, `endless_examples::servers`), so the one
//! `cargo run` above is all it needs. The server runs as a process of its own, started
//! as `demo serve NAME --listen 127.0.0.1:0 --pid-file …`; a restart re-executes it with
//! the same command line, as it would any server.
//!
//! Exit status: 0 if every request succeeded and every restart handed over, 1 otherwise,
//! 2 on a usage or set-up error, 130 when interrupted.

mod client;
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use endless_examples::servers::HttpServer;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};

use client::{Live, Report, Target};
use server::{Group, Handover, describe_exit};

/// How long a restart may take before it counts as missed. The server is started with a
/// shorter `--upgrade-timeout`, so a new generation that hangs is killed by then.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);
const UPGRADE_TIMEOUT_SECS: &str = "10";
/// The servers' drain timeout: a generation that handed over closes what is left then.
const DRAIN_TIMEOUT_SECS: &str = "30";

const USAGE: &str = "\
usage: demo [--restarts N] [--connections N] [--duration SECS] [--server NAME] [--http2] [--exe PATH]
       demo serve NAME [SERVER ARGS]   (runs one example server; the demo starts it so)

  --restarts N       restarts by SIGHUP, evenly spread over the run (default 10)
  --connections N    keep-alive connections of the load (default 32)
  --duration SECS    how long the load runs (default 10)
  --server NAME      hello-hyper (default), hello-axum, hello-tls, hello-smol, hello-async-std
  --http2            the load over HTTP/2 (prior knowledge; ALPN with TLS), not HTTP/1.1
  --exe PATH         run this server binary instead of the demo's own copy of --server";

#[derive(Debug)]
struct Options {
    restarts: u32,
    connections: usize,
    duration: Duration,
    server: HttpServer,
    http2: bool,
    exe: Option<PathBuf>,
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut options = Self {
            restarts: 10,
            connections: 32,
            duration: Duration::from_secs(10),
            server: HttpServer::Hyper,
            http2: false,
            exe: None,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--restarts" => options.restarts = number(&flag, &value()?)?,
                "--connections" => options.connections = number(&flag, &value()?)?,
                "--duration" => {
                    let v = value()?;
                    options.duration = v
                        .parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok())
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| format!("--duration takes seconds, not {v:?}"))?;
                }
                "--server" => {
                    let v = value()?;
                    options.server = HttpServer::from_name(&v).ok_or_else(|| {
                        format!("unknown server {v:?}; one of: {}", server_names())
                    })?;
                }
                "--http2" => options.http2 = true,
                "--exe" => options.exe = Some(value()?.into()),
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if options.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        Ok(options)
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} takes a whole number, not {value:?}"))
}

fn server_names() -> String {
    HttpServer::ALL.map(HttpServer::name).join(", ")
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "serve") {
        args.next();
        std::process::exit(serve(args));
    }
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    std::process::exit(match run(&options) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    });
}

/// `demo serve NAME [ARGS]`: one of the example servers, in this process.
fn serve(mut args: impl Iterator<Item = String>) -> i32 {
    let Some(server) = args.next().as_deref().and_then(HttpServer::from_name) else {
        eprintln!("error: demo serve takes a server name: {}", server_names());
        return 2;
    };
    endless_examples::init_logging();
    match endless_examples::Args::parse(args) {
        Ok(args) => server.run(args),
        Err(e) => {
            eprintln!("error: {e}\n\n{}", endless_examples::USAGE);
            2
        }
    }
}

/// What the restart thread tells the progress display.
struct RestartEvent {
    index: u32,
    handover: Handover,
}

fn run(options: &Options) -> Result<i32, String> {
    server::become_subreaper();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    // Signal handlers first: from here on Ctrl-C ends the demo through its clean-up, which
    // ends every generation of the server (they are in a process group of their own, so
    // the terminal's Ctrl-C does not reach them).
    let (mut interrupt, mut terminate) = {
        let _runtime = runtime.enter();
        let listen = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        (
            listen(SignalKind::interrupt())?,
            listen(SignalKind::terminate())?,
        )
    };

    let dir = std::env::temp_dir().join(format!("endless-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut command = match &options.exe {
        Some(exe) => Command::new(exe),
        None => {
            let me = std::env::current_exe().map_err(|e| format!("where am I? {e}"))?;
            let mut command = Command::new(me);
            command.args(["serve", options.server.name()]);
            command
        }
    };
    command.args([
        "--upgrade-timeout",
        UPGRADE_TIMEOUT_SECS,
        "--drain-timeout",
        DRAIN_TIMEOUT_SECS,
    ]);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    let mut tls = None;
    if options.server == HttpServer::Tls {
        let (cert, cert_file, key_file) = self_signed_certificate(&dir)?;
        command
            .arg("--tls-cert")
            .arg(cert_file)
            .arg("--tls-key")
            .arg(key_file);
        tls = Some(client::tls_connector(cert, options.http2)?);
    }

    let mut group = Group::start(command, &dir)?;
    let addr = group
        .addr
        .parse()
        .map_err(|e| format!("the server's address {:?}: {e}", group.addr))?;
    let first_pid = group.pgid as u32;
    let interval = options.duration / options.restarts.max(1);
    println!(
        "endless demo: {} ({}), pid {first_pid}, listening on {}{}",
        options
            .exe
            .as_deref()
            .map_or(options.server.name().to_owned(), |p| p
                .display()
                .to_string()),
        options.server.runtime(),
        group.addr,
        if tls.is_some() { " (TLS)" } else { "" },
    );
    println!(
        "  {} keep-alive {} connections for {:.1} s from a client that never retries; {} restarts by SIGHUP{}",
        options.connections,
        if options.http2 { "HTTP/2" } else { "HTTP/1.1" },
        options.duration.as_secs_f64(),
        options.restarts,
        if options.restarts > 0 {
            format!(", one every {:.2} s", interval.as_secs_f64())
        } else {
            String::new()
        },
    );
    println!("  server log: {}", dir.join("server.log").display());
    println!();

    let live = Arc::new(Live::default());
    let start = Instant::now();
    let deadline = start + options.duration;

    // The restarts, on a thread of their own so that the load does not delay them: restart
    // i at (i + 1/2) × duration / N, the series centred in the run.
    let (events_tx, events) = mpsc::channel();
    let restarter = {
        let (pid_file, live) = (group.pid_file.clone(), live.clone());
        let (restarts, duration) = (options.restarts, options.duration);
        std::thread::spawn(move || {
            let mut handovers = Vec::new();
            for index in 0..restarts {
                let at = start + duration.mul_f64((f64::from(index) + 0.5) / f64::from(restarts));
                while Instant::now() < at && !live.stop.load(Ordering::Relaxed) {
                    std::thread::sleep((at - Instant::now()).min(Duration::from_millis(50)));
                }
                if live.stop.load(Ordering::Relaxed) {
                    break;
                }
                let handover = server::restart(&pid_file, HANDOVER_TIMEOUT, &live.stop);
                handovers.push(handover.clone());
                let _ = events_tx.send(RestartEvent { index, handover });
            }
            handovers
        })
    };

    let target = Target {
        addr,
        tls,
        http2: options.http2,
    };
    let load = runtime.spawn(client::run(
        target,
        options.connections,
        start,
        deadline,
        live.clone(),
    ));

    let progress = ProgressBar::new(options.duration.as_millis() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner:.green} {elapsed:>3} [{bar:30.cyan/blue}] {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut interrupted = false;
    let mut handed_over = 0;
    let report: Report = runtime.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = interrupt.recv() => interrupted = true,
                _ = terminate.recv() => interrupted = true,
            }
            if interrupted && !live.stop.swap(true, Ordering::Relaxed) {
                progress.suspend(|| println!("interrupted: stopping the load and the server"));
            }
            while let Ok(event) = events.try_recv() {
                if matches!(event.handover, Handover::Done { .. }) {
                    handed_over += 1;
                }
                let line = describe_restart(&event, options.restarts, start);
                progress.suspend(|| println!("{line}"));
            }
            progress.set_position(start.elapsed().min(options.duration).as_millis() as u64);
            progress.set_message(format!(
                "{} requests · {} failed · {handed_over}/{} restarts · serving pid {}",
                thousands(live.requests.load(Ordering::Relaxed)),
                thousands(live.failures.load(Ordering::Relaxed)),
                options.restarts,
                live.last_pid.load(Ordering::Relaxed),
            ));
            if load.is_finished() && restarter.is_finished() {
                break;
            }
        }
        load.await.expect("the load panicked")
    });
    let load_time = start.elapsed().min(options.duration);
    // The events that arrived with the last tick.
    for event in events.try_iter() {
        let line = describe_restart(&event, options.restarts, start);
        progress.suspend(|| println!("{line}"));
    }
    progress.finish_and_clear();
    let handovers = restarter.join().expect("the restart thread panicked");

    // Let the old generations finish their drain (their clients were sent away with
    // `Connection: close`), then stop the newest: every generation is reaped.
    let generations = group.listening();
    group.stop(Duration::from_secs(10));
    let exits = group.exits();
    drop(group);

    let run = Run {
        options,
        report: &report,
        handovers: &handovers,
        generations: &generations,
        exits: &exits,
        start,
        load_time,
        interrupted,
    };
    let ok = run.print();
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("server log and output kept in {}", dir.display());
    }
    Ok(match (interrupted, ok) {
        (true, _) => 130,
        (false, true) => 0,
        (false, false) => 1,
    })
}

/// One line per restart, while the demo runs.
fn describe_restart(event: &RestartEvent, restarts: u32, start: Instant) -> String {
    let n = event.index + 1;
    match &event.handover {
        Handover::Done {
            old,
            new,
            hup,
            took,
        } => format!(
            "restart {n:>2}/{restarts} at {:>5.2} s: pid {old} → pid {new}, ready in {}",
            (*hup - start).as_secs_f64(),
            ms(*took),
        ),
        Handover::Missed { old, why } => format!(
            "restart {n:>2}/{restarts}: FAILED (pid {}): {why}",
            old.map_or("?".into(), |p| p.to_string())
        ),
    }
}

/// What one run saw, for the report.
struct Run<'a> {
    options: &'a Options,
    report: &'a Report,
    handovers: &'a [Handover],
    /// (pid, address) of every generation that announced itself.
    generations: &'a [(u32, String)],
    exits: &'a BTreeMap<u32, server::Exit>,
    start: Instant,
    /// How long the load ran.
    load_time: Duration,
    interrupted: bool,
}

impl Run<'_> {
    /// Prints the report; returns whether nothing failed (every request answered, every
    /// restart handed over).
    fn print(&self) -> bool {
        let Self {
            options,
            report,
            handovers,
            generations,
            exits,
            start,
            load_time,
            interrupted,
        } = *self;
        let requests = report.requests();
        let failed = report.failed();
        let done: Vec<_> = handovers
            .iter()
            .filter_map(|h| match h {
                Handover::Done { took, .. } => Some(*took),
                Handover::Missed { .. } => None,
            })
            .collect();
        let missed = handovers.len() - done.len();
        let pids: BTreeSet<u32> = report.pids.keys().copied().collect();
        let mut sorted = done.clone();
        sorted.sort();

        let rate = requests as f64 / load_time.as_secs_f64().max(0.001);
        let latency = |q: f64| {
            let l = &report.latencies_us;
            if l.is_empty() {
                "-".to_owned()
            } else {
                let i = ((l.len() - 1) as f64 * q).round() as usize;
                ms(Duration::from_micros(u64::from(l[i])))
            }
        };
        let rows: Vec<(&str, String)> = vec![
            (
                "requests",
                format!(
                    "{} ({}/s) on {} connections",
                    thousands(requests),
                    thousands(rate as u64),
                    thousands(report.connections)
                ),
            ),
            (
                "failures",
                if report.not_sent > 0 {
                    format!(
                        "{} ({} HTTP/2 requests given back unsent after a GOAWAY and sent again: not failures)",
                        thousands(failed),
                        thousands(report.not_sent)
                    )
                } else {
                    thousands(failed)
                },
            ),
            (
                "latency",
                format!(
                    "p50 {} · p99 {} · max {}",
                    latency(0.5),
                    latency(0.99),
                    latency(1.0)
                ),
            ),
            (
                "restarts",
                format!(
                    "{} of {} handed over{}",
                    done.len(),
                    options.restarts,
                    if missed > 0 {
                        format!(", {missed} MISSED")
                    } else {
                        String::new()
                    }
                ),
            ),
            (
                "pids seen",
                format!(
                    "{} answered, of {} generations started",
                    pids.len(),
                    generations.len()
                ),
            ),
            (
                "handover",
                if sorted.is_empty() {
                    "-".to_owned()
                } else {
                    format!(
                        "min {} · median {} · max {} (SIGHUP → new pid ready)",
                        ms(sorted[0]),
                        ms(sorted[sorted.len() / 2]),
                        ms(sorted[sorted.len() - 1])
                    )
                },
            ),
            ("generations", describe_exits(exits, generations.len())),
        ];
        println!();
        for (name, value) in rows {
            println!("  {name:<12} {value}");
        }

        if !handovers.is_empty() {
            println!();
            println!(
                "  {:>3}  {:>7}  {:>19}  {:>9}  {:>22}  {:>9}",
                "#", "at", "old pid → new pid", "handover", "old pid drained+exited", "answers"
            );
            for (i, h) in handovers.iter().enumerate() {
                match h {
                    Handover::Done {
                        old,
                        new,
                        hup,
                        took,
                    } => {
                        let exited = exits.get(old).map_or("-".to_owned(), |e| {
                            let after = e.at.saturating_duration_since(*hup + *took);
                            format!("{} later, {}", ms(after), describe_exit(e.code))
                        });
                        println!(
                            "  {:>3}  {:>5.2} s  {:>19}  {:>9}  {:>22}  {:>9}",
                            i + 1,
                            (*hup - start).as_secs_f64(),
                            format!("{old} → {new}"),
                            ms(*took),
                            exited,
                            thousands(report.pids.get(new).copied().unwrap_or(0)),
                        );
                    }
                    Handover::Missed { why, .. } => println!("  {:>3}  MISSED: {why}", i + 1),
                }
            }
            println!(
                "  (answers: requests the new pid answered; the first pid answered {})",
                thousands(
                    report
                        .pids
                        .get(&(generations.first().map_or(0, |g| g.0)))
                        .copied()
                        .unwrap_or(0)
                )
            );
        }

        if failed > 0 {
            println!();
            println!("  failures by cause:");
            for (kind, n) in &report.failures {
                println!("    {:>8}  {kind}", thousands(*n));
            }
            println!("  first ones:");
            for f in &report.examples {
                println!(
                    "    at {:>6.3} s  {}: {}",
                    f.at.as_secs_f64(),
                    f.kind,
                    f.message
                );
            }
        }
        println!();
        let ok = failed == 0 && missed == 0;
        if interrupted {
            println!(
                "INTERRUPTED after {:.1} s: {} of {} requests failed, {} restarts handed over.",
                load_time.as_secs_f64(),
                thousands(failed),
                thousands(requests),
                done.len()
            );
        } else if ok && handovers.len() == options.restarts as usize {
            println!(
                "PASS: {} requests through {} restarts, not one failed.",
                thousands(requests),
                done.len()
            );
        } else {
            println!(
                "FAIL: {} of {} requests failed, {} of {} restarts handed over.",
                thousands(failed),
                thousands(requests),
                done.len(),
                options.restarts
            );
        }
        ok && (interrupted || handovers.len() == options.restarts as usize)
    }
}

fn describe_exits(exits: &BTreeMap<u32, server::Exit>, started: usize) -> String {
    let mut codes = BTreeMap::<String, usize>::new();
    for exit in exits.values() {
        *codes.entry(describe_exit(exit.code)).or_default() += 1;
    }
    let codes: Vec<_> = codes
        .into_iter()
        .map(|(code, n)| format!("{n} with {code}"))
        .collect();
    format!(
        "{started} started, {} reaped ({})",
        exits.len(),
        if codes.is_empty() {
            "none".to_owned()
        } else {
            codes.join(", ")
        }
    )
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to `dir`; the
/// certificate, the certificate file and the key file.
fn self_signed_certificate(
    dir: &Path,
) -> Result<(rustls_pki_types::CertificateDer<'static>, PathBuf, PathBuf), String> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(|e| format!("cannot make a certificate: {e}"))?;
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let write = |path: &Path, pem: String| {
        std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&cert_file, certified.cert.pem())?;
    write(&key_file, certified.signing_key.serialize_pem())?;
    Ok((certified.cert.der().clone(), cert_file, key_file))
}

/// Milliseconds, two decimals below 10 ms.
fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// 1234567 → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(ms(Duration::from_micros(7_700)), "7.70 ms");
        assert_eq!(ms(Duration::from_micros(13_900)), "13.9 ms");
    }

    #[test]
    fn parses_options() {
        let parse = |a: &[&str]| Options::parse(a.iter().map(|s| s.to_string()));
        let o = parse(&[]).unwrap();
        assert_eq!((o.restarts, o.connections), (10, 32));
        assert_eq!(o.duration, Duration::from_secs(10));
        assert_eq!(o.server, HttpServer::Hyper);
        let o = parse(&[
            "--restarts",
            "3",
            "--duration",
            "2.5",
            "--server",
            "hello-smol",
        ])
        .unwrap();
        assert_eq!(o.restarts, 3);
        assert_eq!(o.duration, Duration::from_millis(2500));
        assert_eq!(o.server, HttpServer::Smol);
        assert!(!o.http2);
        assert!(parse(&["--http2"]).unwrap().http2);
        assert!(parse(&["--server", "nginx"]).is_err());
        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--restarts"]).is_err());
    }
}
