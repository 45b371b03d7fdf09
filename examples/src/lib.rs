//! What the example servers share: the command line every one of them accepts, and
//! logging.
//!
//! ```text
//! --listen ADDR          listen on ADDR (repeatable); `unix:/path` for a Unix socket,
//!                        `udp:ADDR` for UDP where a server speaks it (default 127.0.0.1:8080)
//! --pid-file PATH        keep a pid file
//! --drain-timeout SECS   close what is left this long after the drain starts (default 60;
//!                        `never` to wait for ever)
//! --upgrade-timeout SECS kill a new generation that is not ready this long after the
//!                        restart (default 60)
//! --probes               (hello-hyper, hello-tls, hello-axum) answer `GET /readyz` and
//!                        `GET /livez` (`endless_hyper::Probes`; off by default, as it
//!                        costs a few hundred instructions per request)
//! --probation SECS       after a handover and its drain, stay this long the fallback of
//!                        the new generation, which takes the service back if it crashes
//!                        (default 5; 0 for none)
//! --tls-cert PATH        (TLS servers) the certificate chain, PEM
//! --tls-key PATH         (TLS servers) the private key, PEM
//! --hand-over-idle       (hello-hyper, hello-axum) hand idle HTTP/1.1 keep-alive
//!                        connections to the new generation instead of draining them
//! --state-version N      (echo servers) carry the count of answered lines across
//!                        restarts as application state of version N; `none` (the
//!                        default) to neither hand it over nor read it
//! --ballast-mib N        (benchmarks) hold N MiB of resident memory, allocated and
//!                        written once the server is ready (default 0)
//! ```
//!
//! `--ballast-mib` makes a server as large in memory as a real one with caches, for
//! `bench/handover-vs-memory.sh`: what a restart costs as the serving process grows. Each
//! generation takes its ballast once it has reported ready ([`Args::take_ballast`]), on a
//! thread of its own, so that a handover measures what the predecessor's memory costs the
//! spawn, not the successor writing its own N MiB.
//!
//! and one subcommand, for deploy scripts ([`RestartArgs`]):
//!
//! ```text
//! SERVER restart --pid-file PATH [--timeout SECS] [--until-proven]
//! ```
//!
//! which asks the server that the pid file names to restart, over its control socket, and
//! waits for the outcome ([`endless_unix::control::restart`]): exit 0 once the new process is ready, with
//! its pid on standard output; otherwise the reason on standard error and exit 1 (the new
//! binary crashed, was not ready within the server's `--upgrade-timeout`, or could not
//! start: the old process keeps serving), 3 (refused: a restart is already in progress),
//! 4 (no answer within `--timeout`, default 90) or 5 (the pid file names no live process,
//! or it keeps no control socket).
//!
//! With `--until-proven` ([`endless_unix::control::restart_until_proven`]) it waits longer:
//! exit 0 only once the old process is no longer the new one's fallback without having
//! taken the service back (its drain and `--probation` are over and it exited, or the new
//! one exited cleanly or handed over onward), and 6 if the new process died after it took
//! over and the old one took the service back (it serves again; the pid file names it).
//! `--timeout` then defaults to 180, and a server too old for this request gives 5.
//!
//! Signals: `SIGHUP` restart, `SIGTERM`/`SIGINT` graceful stop, `SIGUSR2` hammer, and
//! staged upgrades (`SignalMap::with_staged_upgrades`): `SIGUSR1` starts the new
//! generation beside the serving one, `SIGQUIT` commits, `SIGWINCH` rolls back.
//!
//! The HTTP examples answer `GET /` with `pid=<pid>` and a newline, and `GET /?sleep=MS`
//! the same after MS milliseconds; `hello-axum` answers `GET /peer` with
//! `pid=<pid> peer=<address>` (axum's `ConnectInfo`, the address a connection taken over at
//! a restart keeps). `hello-hyper`, `hello-tls` and `hello-axum` also answer
//! the probes `GET /readyz` (`200 ready` while serving, `503 draining` once draining) and
//! `GET /livez` (`200 live`), with [`endless_hyper::Probes`].
//!
//! Listeners are named `listen-0`, `listen-1`, … in the order given, which is how a new
//! generation finds them again.
#![warn(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use endless_unix::adapter::Endless;
use endless_unix::{Net, Tracked};

/// The README's code, compiled as doctests (`no_run`: they are servers).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The published crates' own READMEs (crates.io shows them), compiled and run as doctests
/// here, where every crate they use is a dependency.
#[cfg(doctest)]
pub mod crate_readmes {
    #[doc = include_str!("../../endless-core/README.md")]
    pub struct Core;
    #[doc = include_str!("../../endless-unix/README.md")]
    pub struct Unix;
    #[doc = include_str!("../../endless-tokio/README.md")]
    pub struct Tokio;
    #[doc = include_str!("../../endless-smol/README.md")]
    pub struct Smol;
    #[doc = include_str!("../../endless-hyper/README.md")]
    pub struct Hyper;
}

pub mod chat;
pub mod echo;
pub mod futures_rt;
pub mod pingpong;
pub mod servers;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (`127.0.0.1:8080`, `[::1]:0`).
    Tcp(String),
    /// A Unix socket path (`unix:/run/app.sock`).
    Unix(PathBuf),
    /// A UDP address (`udp:127.0.0.1:5353`), for the servers that speak datagrams.
    Udp(String),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Udp(addr) => write!(f, "udp:{addr}"),
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
    /// `--probation`.
    pub probation: Duration,
    /// `--probes`.
    pub probes: bool,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--hand-over-idle`.
    pub hand_over_idle: bool,
    /// `--state-version` (`None`: `none`, the default).
    pub state_version: Option<u32>,
    /// `--ballast-mib`: MiB of resident memory to hold once ready (0: none, the default).
    pub ballast_mib: usize,
}

impl Args {
    /// Parses the process's arguments; prints usage and exits with 2 on a mistake. The
    /// `restart` subcommand is run here, and the process exits with its code.
    pub fn from_env() -> Self {
        let mut args = std::env::args().skip(1).peekable();
        if args.peek().is_some_and(|a| a == "restart") {
            args.next();
            match RestartArgs::parse(args) {
                Ok(restart) => std::process::exit(restart.run()),
                Err(e) => {
                    eprintln!("error: {e}\n\n{USAGE}");
                    std::process::exit(2);
                }
            }
        }
        match Self::parse(args) {
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
            probation: endless_core::DEFAULT_PROBATION,
            probes: false,
            tls_cert: None,
            tls_key: None,
            hand_over_idle: false,
            state_version: None,
            ballast_mib: 0,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--listen" => {
                    let v = value()?;
                    parsed
                        .listen
                        .push(if let Some(path) = v.strip_prefix("unix:") {
                            ListenAddr::Unix(path.into())
                        } else if let Some(addr) = v.strip_prefix("udp:") {
                            ListenAddr::Udp(addr.into())
                        } else {
                            ListenAddr::Tcp(v)
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
                "--probation" => parsed.probation = seconds(&flag, &value()?)?,
                "--probes" => parsed.probes = true,
                "--tls-cert" => parsed.tls_cert = Some(value()?.into()),
                "--tls-key" => parsed.tls_key = Some(value()?.into()),
                "--hand-over-idle" => parsed.hand_over_idle = true,
                "--state-version" => {
                    let v = value()?;
                    parsed.state_version =
                        match v.as_str() {
                            "none" => None,
                            n => Some(n.parse().map_err(|_| {
                                format!("{flag} takes a number or `none`, not {v:?}")
                            })?),
                        };
                }
                "--ballast-mib" => {
                    let v = value()?;
                    parsed.ballast_mib = v
                        .parse()
                        .ok()
                        .filter(|&mib: &usize| mib.checked_mul(MIB).is_some())
                        .ok_or_else(|| format!("{flag} takes a number of MiB, not {v:?}"))?;
                }
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
    pub fn config(&self) -> endless_core::Config {
        endless_core::Config::new()
            .upgrade_timeout(self.upgrade_timeout)
            .drain_timeout(self.drain_timeout)
            .probation(self.probation)
    }

    /// Starts endless as these arguments ask (configuration, pid file); logs and exits
    /// with 1 if it cannot (unusable inherited fds: the parent keeps serving).
    /// Any runtime: `endless_tokio::Endless` or `endless_smol::Endless`.
    pub fn start_endless<N: Net>(&self) -> Endless<N> {
        let mut builder = Endless::<N>::builder()
            .config(self.config())
            .signals(endless_unix::SignalMap::default().with_staged_upgrades());
        if let Some(path) = &self.pid_file {
            builder = builder.pid_file(path);
        }
        match builder.start() {
            Ok(endless) => endless,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                std::process::exit(1);
            }
        }
    }

    /// Takes the `--ballast-mib` ballast ([`ballast`]) on a thread of its own, which logs
    /// `ballast resident` with the pid once every page is written; nothing with 0. The
    /// servers call it right after reporting ready, so that neither their start-up nor
    /// the handover to them waits for it. Once per process.
    pub fn take_ballast(&self) {
        let mib = self.ballast_mib;
        if mib == 0 {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("ballast".into())
            .spawn(move || {
                let start = std::time::Instant::now();
                ballast(mib);
                tracing::info!(
                    pid = std::process::id(),
                    mib,
                    ms = start.elapsed().as_millis(),
                    "ballast resident"
                );
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the ballast thread");
        }
    }

    /// The name of the `i`-th listener.
    pub fn listener_name(i: usize) -> String {
        format!("listen-{i}")
    }
}

const MIB: usize = 1 << 20;

/// Allocates `mib` MiB that stay allocated for the rest of the process's life, and writes
/// a non-zero byte into every 4 KiB page of it, so that all of it is resident (the
/// allocator's zeroed pages are not, until written). Returns the memory, leaked.
pub fn ballast(mib: usize) -> &'static [u8] {
    const PAGE: usize = 4096;
    let len = mib.checked_mul(MIB).expect("ballast size overflows usize");
    let ballast = vec![0u8; len].leak();
    for page in ballast.chunks_mut(PAGE) {
        page[0] = 1;
    }
    // The writes are read by whatever `black_box` might do: they cannot be left out.
    std::hint::black_box(&*ballast)
}

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{flag} takes seconds, not {value:?}"))
}

/// The `restart` subcommand: `SERVER restart --pid-file PATH [--timeout SECS]
/// [--until-proven]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartArgs {
    /// `--pid-file`: the server's pid file.
    pub pid_file: PathBuf,
    /// `--timeout`: how long to wait for the outcome (default
    /// [`endless_unix::control::DEFAULT_TIMEOUT`], or
    /// [`endless_unix::control::DEFAULT_PROVEN_TIMEOUT`] until proven).
    pub timeout: Duration,
    /// `--until-proven`: answered once the new generation is proven
    /// ([`endless_unix::control::restart_until_proven`]).
    pub until_proven: bool,
}

impl RestartArgs {
    /// Parses the subcommand's arguments (after `restart`).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut pid_file = None;
        let mut timeout = None;
        let mut until_proven = false;
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--pid-file" => pid_file = Some(PathBuf::from(value()?)),
                "--timeout" => timeout = Some(seconds(&flag, &value()?)?),
                "--until-proven" => until_proven = true,
                "-h" | "--help" => return Err("help requested".into()),
                other => return Err(format!("unknown argument to restart: {other:?}")),
            }
        }
        let pid_file = pid_file.ok_or("restart needs --pid-file PATH")?;
        let timeout = timeout.unwrap_or(if until_proven {
            endless_unix::control::DEFAULT_PROVEN_TIMEOUT
        } else {
            endless_unix::control::DEFAULT_TIMEOUT
        });
        Ok(Self {
            pid_file,
            timeout,
            until_proven,
        })
    }

    /// Asks the server to restart and waits for the outcome: prints the new pid on standard
    /// output, or the reason on standard error; returns the exit code
    /// ([`endless_unix::control::RestartError::exit_code`]).
    pub fn run(&self) -> i32 {
        let outcome = if self.until_proven {
            endless_unix::control::restart_until_proven(&self.pid_file, self.timeout)
        } else {
            endless_unix::control::restart(&self.pid_file, self.timeout)
        };
        match outcome {
            Ok(restarted) if self.until_proven => {
                eprintln!(
                    "restarted: pid {} handed over to pid {}, which is ready; pid {} is no \
                     longer its fallback",
                    restarted.old, restarted.new, restarted.old
                );
                println!("{}", restarted.new);
                0
            }
            Ok(restarted) => {
                eprintln!(
                    "restarted: pid {} handed over to pid {}, which is ready",
                    restarted.old, restarted.new
                );
                println!("{}", restarted.new);
                0
            }
            Err(e) => {
                eprintln!("restart failed: {e}");
                e.exit_code()
            }
        }
    }
}

/// Usage text.
pub const USAGE: &str = "usage: SERVER [--listen ADDR|unix:PATH|udp:ADDR]... [--pid-file PATH] \
[--drain-timeout SECS|never] [--upgrade-timeout SECS] [--probation SECS] [--probes] [--tls-cert PATH --tls-key PATH] [--hand-over-idle] \
[--state-version N|none] [--ballast-mib N]
       SERVER restart --pid-file PATH [--timeout SECS] [--until-proven]";

/// A task for [`hello_with`] to spawn: the echo of an upgraded connection.
pub type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The HTTP examples' handler: `pid=<pid>` and a newline, after `?sleep=MS` milliseconds
/// if asked. `GET /upgrade` with `Upgrade: echo` switches protocols (`101`, hyper's
/// upgrade, as a websocket does): the connection then says `pid=<pid>` and a newline, and
/// echoes what it receives until the client closes it, or the drain deadline does.
pub async fn hello<B>(
    req: hyper::Request<B>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    hello_with(req, tokio::time::sleep, |task| drop(tokio::spawn(task))).await
}

/// [`hello`], sleeping with `sleep` (the runtime's timer) and spawning with `spawn`.
pub async fn hello_with<B, F: Future<Output = ()>>(
    mut req: hyper::Request<B>,
    sleep: impl FnOnce(Duration) -> F,
    spawn: fn(Task),
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    if req.uri().path() == "/upgrade" {
        return Ok(upgrade_to_echo(&mut req, spawn));
    }
    if let Some(ms) = sleep_ms(req.uri().query()) {
        sleep(Duration::from_millis(ms)).await;
    }
    Ok(hyper::Response::new(http_body_util::Full::new(
        bytes::Bytes::from(pid_body()),
    )))
}

/// `101 Switching Protocols` to `echo`, and the echo on the upgraded connection, on its own
/// task; `400` without `Upgrade: echo`.
#[cold]
fn upgrade_to_echo<B>(
    req: &mut hyper::Request<B>,
    spawn: fn(Task),
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut response = hyper::Response::new(http_body_util::Full::default());
    if req.headers().get(hyper::header::UPGRADE)
        != Some(&hyper::header::HeaderValue::from_static("echo"))
    {
        *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return response;
    }
    let upgrade = hyper::upgrade::on(req);
    spawn(Box::pin(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        if io.write_all(pid_body().as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            if io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }));
    *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("echo"),
    );
    response
}

/// The body every HTTP example answers with.
pub fn pid_body() -> String {
    format!("pid={}\n", std::process::id())
}

/// The `sleep` parameter of a query string, in milliseconds.
pub fn sleep_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep="))
        .and_then(|ms| ms.parse().ok())
}

/// Serves `service` on every `--listen` address with `server` (TCP and Unix; UDP is
/// refused); exits with 1 if a listener cannot be set up.
pub fn serve_http<N, S, B>(
    endless: &Endless<N>,
    args: &Args,
    server: &endless_hyper::Server<N>,
    service: S,
) where
    N: endless_hyper::HttpRuntime,
    S: endless_hyper::HttpService<B>,
    B: endless_hyper::ResponseBody,
{
    listen_http(
        endless,
        args,
        server,
        |server, l| drop(server.serve(l, service.clone())),
        |server, l| drop(server.serve(l, service.clone())),
    );
}

/// [`serve_http`] with a make service, called with each connection's
/// [`endless_hyper::ConnectionInfo`] (its peer): `Server::serve_with_connect_info`.
pub fn serve_http_with_peer<N, M, S, B>(
    endless: &Endless<N>,
    args: &Args,
    server: &endless_hyper::Server<N>,
    make: M,
) where
    N: endless_hyper::HttpRuntime,
    M: tower_service::Service<
            endless_hyper::ConnectionInfo,
            Response = S,
            Error: Into<endless_hyper::BoxError>,
            Future: Send,
        > + Clone
        + Send
        + 'static,
    S: endless_hyper::HttpService<B>,
    B: endless_hyper::ResponseBody,
{
    listen_http(
        endless,
        args,
        server,
        |server, l| drop(server.serve_with_connect_info(l, make.clone())),
        |server, l| drop(server.serve_with_connect_info(l, make.clone())),
    );
}

/// Listens on every `--listen` address and serves each listener with `tcp` or `unix`
/// (through the server that hands idle connections over, with `--hand-over-idle`).
fn listen_http<N: endless_hyper::HttpRuntime>(
    endless: &Endless<N>,
    args: &Args,
    server: &endless_hyper::Server<N>,
    tcp: impl Fn(&endless_hyper::Server<N>, endless_unix::adapter::TcpListener<N>),
    unix: impl Fn(&endless_hyper::Server<N>, endless_unix::adapter::UnixListener<N>),
) {
    let taking_over;
    let server = if args.hand_over_idle {
        taking_over = match server.clone().hand_over_idle(endless, "http") {
            Ok(server) => server,
            Err(e) => {
                tracing::error!(error = %e, "cannot receive connections");
                std::process::exit(1);
            }
        };
        &taking_over
    } else {
        server
    };
    for (i, addr) in args.listen.iter().enumerate() {
        let name = Args::listener_name(i);
        let result = match addr {
            ListenAddr::Tcp(a) => endless
                .tcp_listener(&name, a.as_str())
                .map_err(std::io::Error::from)
                .map(|l| {
                    if let Ok(local) = l.local_addr() {
                        announce(&name, local);
                    }
                    tcp(server, l);
                }),
            ListenAddr::Unix(path) => endless
                .unix_listener(&name, path)
                .map_err(std::io::Error::from)
                .map(|l| {
                    announce(&name, addr);
                    unix(server, l);
                }),
            ListenAddr::Udp(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "HTTP needs a stream socket",
            )),
        };
        if let Err(e) = result {
            tracing::error!(%name, %addr, error = %e, "cannot listen");
            std::process::exit(1);
        }
    }
}

/// A listener of endless' typed API, whatever the runtime: what [`accept_loop`] accepts from.
pub trait Listener: Send + Sync + 'static {
    /// A tracked connection.
    type Stream: Send + 'static;
    /// The next connection, or `None` once the process stops accepting.
    fn next(&self) -> impl Future<Output = std::io::Result<Option<Self::Stream>>> + Send;
    /// A short pause after an accept error, on the listener's own runtime (a timer that
    /// needs no new fd: the error may be that there is none left).
    fn pause(&self) -> impl Future<Output = ()> + Send;
}

/// How long [`accept_loop`] waits after an accept error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// [`Listener::pause`] on the runtime `N`.
fn pause_on<N: Net>() -> impl Future<Output = ()> + Send {
    let runtime = N::current();
    runtime.sleep_until(runtime.now() + ACCEPT_PAUSE)
}

impl<N: Net> Listener for endless_unix::adapter::TcpListener<N> {
    type Stream = Tracked<N::TcpStream>;
    async fn next(&self) -> std::io::Result<Option<Self::Stream>> {
        Ok(self.accept().await?.map(|(stream, _)| stream))
    }
    fn pause(&self) -> impl Future<Output = ()> + Send {
        pause_on::<N>()
    }
}

impl<N: Net> Listener for endless_unix::adapter::UnixListener<N> {
    type Stream = Tracked<N::UnixStream>;
    async fn next(&self) -> std::io::Result<Option<Self::Stream>> {
        Ok(self.accept().await?.map(|(stream, _)| stream))
    }
    fn pause(&self) -> impl Future<Output = ()> + Send {
        pause_on::<N>()
    }
}

/// Accepts until the process stops accepting, handing each connection to `serve`. Accept
/// errors (too many open files, a connection reset while queued) are logged and retried
/// after a short pause: the listener is still good.
pub async fn accept_loop<L: Listener>(name: String, listener: L, mut serve: impl FnMut(L::Stream)) {
    loop {
        match listener.next().await {
            Ok(Some(stream)) => serve(stream),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                listener.pause().await;
            }
        }
    }
    tracing::info!(pid = std::process::id(), %name, "stopped accepting");
}

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
            "--probation",
            "0",
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
        assert_eq!(a.probation, Duration::ZERO);
        assert!(!a.probes);
        assert!(parse(&["--probes"]).unwrap().probes);
        assert_eq!(
            parse(&[]).unwrap().probation,
            endless_core::DEFAULT_PROBATION
        );
        assert_eq!(parse(&[]).unwrap().listen.len(), 1);
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--drain-timeout", "-1"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert_eq!(parse(&[]).unwrap().state_version, None);
        let v = |args: &[&str]| parse(args).map(|a| a.state_version);
        assert_eq!(v(&["--state-version", "3"]), Ok(Some(3)));
        // The last one wins: a wrapper script can append its own.
        assert_eq!(
            v(&["--state-version", "3", "--state-version", "none"]),
            Ok(None)
        );
        assert!(v(&["--state-version", "-1"]).is_err());
        let mib = |args: &[&str]| parse(args).map(|a| a.ballast_mib);
        assert_eq!(mib(&[]), Ok(0));
        assert_eq!(mib(&["--ballast-mib", "4096"]), Ok(4096));
        assert!(mib(&["--ballast-mib"]).is_err());
        assert!(mib(&["--ballast-mib", "-1"]).is_err());
        assert!(mib(&["--ballast-mib", "1.5"]).is_err());
        assert!(mib(&["--ballast-mib", &usize::MAX.to_string()]).is_err());
    }

    #[test]
    fn the_ballast_is_written_in_every_page() {
        let two = ballast(2);
        assert_eq!(two.len(), 2 * MIB);
        assert!(two.chunks(4096).all(|page| page[0] == 1));
        assert!(ballast(0).is_empty());
    }

    #[test]
    fn parses_the_restart_subcommand() {
        let parse = |args: &[&str]| RestartArgs::parse(args.iter().map(|s| s.to_string()));
        assert_eq!(
            parse(&["--pid-file", "/tmp/p", "--timeout", "2.5"]).unwrap(),
            RestartArgs {
                pid_file: "/tmp/p".into(),
                timeout: Duration::from_millis(2500),
                until_proven: false,
            }
        );
        assert_eq!(
            parse(&["--pid-file", "p"]).unwrap().timeout,
            endless_unix::control::DEFAULT_TIMEOUT
        );
        assert_eq!(
            parse(&["--until-proven", "--pid-file", "p"]).unwrap(),
            RestartArgs {
                pid_file: "p".into(),
                timeout: endless_unix::control::DEFAULT_PROVEN_TIMEOUT,
                until_proven: true,
            }
        );
        assert_eq!(
            parse(&["--pid-file", "p", "--until-proven", "--timeout", "7"])
                .unwrap()
                .timeout,
            Duration::from_secs(7)
        );
        assert!(parse(&["--pid-file", "p", "--until-proven", "yes"]).is_err());
        assert!(parse(&[]).is_err(), "the pid file is required");
        assert!(parse(&["--pid-file"]).is_err());
        assert!(parse(&["--pid-file", "p", "--timeout", "soon"]).is_err());
        assert!(parse(&["--pid-file", "p", "--listen", "x"]).is_err());
    }
}
