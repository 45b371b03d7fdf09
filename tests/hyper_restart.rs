//! End-to-end tests of endless-hyper: the HTTP example servers (`hello-hyper`, `hello-axum`,
//! `hello-tls` on tokio; `hello-smol` and `hello-async-std`, the same server through the same
//! endless-hyper on async-io, cleartext or TLS)
//! restarted again and again under continuous load from an in-repo client that never retries
//! (`endless_test_support::http_client`, which says exactly what counts as a failure), over
//! HTTP/1.1 and HTTP/2, cleartext and TLS. The bar is zero failed requests. And the probes
//! the examples answer (`endless_hyper::Probes`: `/readyz`, `/livez`) through a stop, a
//! handover and a fallback.
//!
//! Each scenario is a function of the server binary, so that another server is one more
//! `#[test]` line. The servers run under the process harness of `endless_test_support` (own
//! process group, killed and reaped however the test ends, their output printed when a test
//! fails) with `RUST_LOG=info,endless_hyper=debug`, so that the server side of a failure is
//! in that output too.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use endless_test_support::http_client::{
    Answer, Conn, Load, LoadConfig, Outcome, Pki, Proto, Target, cert_id,
};
use endless_test_support::{
    DEADLINE, Endpoint, Exit, Options, Server, TempDir, fd_count, has_field, is_alive, wait_for,
};
use rustix::process::Signal;

fn hello_hyper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hello-hyper"))
}

fn hello_axum() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hello-axum"))
}

fn hello_tls() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hello-tls"))
}

fn hello_smol() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hello-smol"))
}

fn hello_async_std() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hello-async-std"))
}

// ---- restarts under load -------------------------------------------------------------------

#[test]
fn hello_hyper_http1_ten_restarts_under_load() {
    restarts_under_load(hello_hyper(), Transport::Cleartext, Proto::Http1, 10);
}

#[test]
fn hello_hyper_http2_ten_restarts_under_load() {
    restarts_under_load(hello_hyper(), Transport::Cleartext, Proto::Http2, 10);
}

#[test]
fn hello_tls_http1_ten_restarts_under_load_with_new_certificates() {
    restarts_under_load(hello_tls(), Transport::Tls, Proto::Http1, 10);
}

#[test]
fn hello_tls_http2_ten_restarts_under_load_with_new_certificates() {
    restarts_under_load(hello_tls(), Transport::Tls, Proto::Http2, 10);
}

#[test]
fn hello_axum_http1_restarts_under_load() {
    restarts_under_load(hello_axum(), Transport::Cleartext, Proto::Http1, 3);
}

#[test]
fn hello_axum_http2_restarts_under_load() {
    restarts_under_load(hello_axum(), Transport::Cleartext, Proto::Http2, 3);
}

#[test]
fn hello_smol_http1_ten_restarts_under_load() {
    restarts_under_load(hello_smol(), Transport::Cleartext, Proto::Http1, 10);
}

#[test]
fn hello_smol_http2_ten_restarts_under_load() {
    restarts_under_load(hello_smol(), Transport::Cleartext, Proto::Http2, 10);
}

#[test]
fn hello_smol_tls_http1_ten_restarts_under_load_with_new_certificates() {
    restarts_under_load(hello_smol(), Transport::Tls, Proto::Http1, 10);
}

#[test]
fn hello_smol_tls_http2_ten_restarts_under_load_with_new_certificates() {
    restarts_under_load(hello_smol(), Transport::Tls, Proto::Http2, 10);
}

#[test]
fn hello_async_std_http1_ten_restarts_under_load() {
    restarts_under_load(hello_async_std(), Transport::Cleartext, Proto::Http1, 10);
}

#[test]
fn hello_async_std_http2_ten_restarts_under_load() {
    restarts_under_load(hello_async_std(), Transport::Cleartext, Proto::Http2, 10);
}

#[test]
fn hello_async_std_tls_http2_ten_restarts_under_load_with_new_certificates() {
    restarts_under_load(hello_async_std(), Transport::Tls, Proto::Http2, 10);
}

// ---- slow requests in flight ---------------------------------------------------------------

#[test]
fn hello_hyper_slow_requests_complete_across_a_restart() {
    slow_requests_complete(hello_hyper(), Transport::Cleartext, BOTH);
}

#[test]
fn hello_tls_slow_requests_complete_across_a_restart() {
    slow_requests_complete(hello_tls(), Transport::Tls, BOTH);
}

#[test]
fn hello_axum_slow_requests_complete_across_a_restart() {
    slow_requests_complete(hello_axum(), Transport::Cleartext, BOTH);
}

#[test]
fn hello_smol_slow_requests_complete_across_a_restart() {
    slow_requests_complete(hello_smol(), Transport::Cleartext, BOTH);
}

#[test]
fn hello_smol_tls_slow_requests_complete_across_a_restart() {
    slow_requests_complete(hello_smol(), Transport::Tls, BOTH);
}

#[test]
fn hello_async_std_slow_requests_complete_across_a_restart() {
    slow_requests_complete(hello_async_std(), Transport::Cleartext, BOTH);
}

// ---- the servers ---------------------------------------------------------------------------

/// How clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Cleartext,
    /// TLS with a certificate of the test's CA (`--tls-cert`, `--tls-key`).
    Tls,
}

/// Connections at a time, for each load: enough that every restart finds requests in flight
/// and connections between two requests, few enough for a loaded two-core machine.
const CONNECTIONS: usize = 32;
/// HTTP/2: concurrent streams on each connection.
const STREAMS: usize = 4;
/// The least time between a generation becoming ready and the next restart.
const RESTART_INTERVAL: Duration = Duration::from_millis(300);
/// The least number of answers from a generation before the next restart.
const ANSWERS_PER_GENERATION: usize = 50;

/// A server under test, and its certificates when it speaks TLS.
#[derive(Debug)]
struct HttpServer {
    // Dropped first: the processes are gone before their certificate files.
    server: Server,
    pki: Option<Pki>,
    _certs: TempDir,
    addr: SocketAddr,
}

impl HttpServer {
    /// Starts `bin`; with TLS, on a first certificate (serial 1), returned.
    fn start(bin: &Path, transport: Transport) -> (Self, Option<u64>) {
        Self::start_with(bin, transport, &[])
    }

    /// [`HttpServer::start`] with more arguments.
    fn start_with(bin: &Path, transport: Transport, args: &[&str]) -> (Self, Option<u64>) {
        let certs = TempDir::new("certs");
        let mut options = Options::default().env("RUST_LOG", "info,endless_hyper=debug");
        for arg in args {
            options = options.arg(*arg);
        }
        let mut first_cert = None;
        let pki = (transport == Transport::Tls).then(|| {
            let pki = Pki::new(certs.path());
            first_cert = Some(cert_id(&pki.issue_leaf(1)));
            for arg in pki.server_args() {
                options = options.clone().arg(arg);
            }
            pki
        });
        let server = Server::start(bin, &options);
        let Endpoint::Tcp(addr) = *server.endpoint() else {
            panic!("expected a TCP listener, got {}", server.endpoint());
        };
        let http = Self {
            server,
            pki,
            _certs: certs,
            addr,
        };
        (http, first_cert)
    }

    fn target(&self, proto: Proto) -> Target {
        match &self.pki {
            None => Target::cleartext(self.addr, proto),
            Some(pki) => Target::tls(self.addr, proto, pki.ca_cert()),
        }
    }

    /// Sends `SIGHUP` to the serving generation and waits until a new one is ready: the pid
    /// file names it and it announced its listener. Returns its pid, and where the server's
    /// stderr was when the signal was sent (for [`HttpServer::wait_stopped_accepting`]).
    fn hup(&self) -> (u32, usize) {
        let server = &self.server;
        let old = server.pid();
        let err_mark = server.group.stderr.len();
        server.group.signal(old, Signal::HUP);
        let new = wait_for(
            format_args!("a new generation after {old} to write the pid file"),
            DEADLINE,
            || {
                let failed = server
                    .group
                    .stderr
                    .find_from(err_mark, |l| l.contains("restart failed"));
                assert!(failed.is_none(), "the restart failed: {failed:?}");
                server.pid_file_pid().filter(|&p| p != old)
            },
        );
        server.listening(new);
        server.set_pid(new);
        (new, err_mark)
    }

    /// Waits until the old generation `old` stopped accepting after the restart whose
    /// [`HttpServer::hup`] returned `mark` (or exited): from then on, every new connection
    /// goes to the new generation. endless-hyper logs `stopped accepting` (at debug level,
    /// which [`HttpServer::start`] asks for) without a pid, but only the old generation stops
    /// accepting after a restart, and each of these servers has one listener.
    fn wait_stopped_accepting(&self, old: u32, mark: usize) {
        let stderr = &self.server.group.stderr;
        wait_for(
            format_args!("the old generation {old} to stop accepting"),
            DEADLINE,
            || {
                let stopped = stderr.find_from(mark, |l| l.contains("stopped accepting"));
                (stopped.is_some() || !is_alive(old)).then_some(())
            },
        );
    }

    /// One request on a new connection: the pid that answered, and the certificate the
    /// connection showed ([`cert_id`], TLS).
    fn ask_new_connection(&self, proto: Proto) -> (u32, Option<u64>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut conn = Conn::open(&self.target(proto), 0)
                .await
                .unwrap_or_else(|e| panic!("open an {proto} connection: {e}"));
            let pid = match conn.get("/").await {
                Outcome::Answered(a) => a.pid().unwrap_or_else(|e| panic!("a bad answer: {e}")),
                other => panic!("{proto} GET / on a new connection: {other:?}"),
            };
            (pid, conn.peer_cert().map(|c| cert_id(c)))
        })
    }
}

/// A generation of the server under load.
#[derive(Debug, Clone, Copy)]
struct Generation {
    pid: u32,
    /// [`cert_id`] of its certificate (TLS).
    cert: Option<u64>,
    /// When its restart was asked for and when it was ready, since the load started.
    hup_at: Duration,
    ready_at: Duration,
}

/// `restarts` restarts of `bin` under continuous load of [`CONNECTIONS`] connections
/// speaking `proto` (HTTP/2: [`STREAMS`] streams each), each restart once the previous one
/// is complete: the new generation is ready, answered at least [`ANSWERS_PER_GENERATION`]
/// requests, and [`RESTART_INTERVAL`] has passed. With TLS every generation starts with a
/// new certificate (the files are replaced before each `SIGHUP`).
///
/// Checks: no request failed; every answer is `200 pid=<pid>`; every generation answered;
/// no other process did; each generation exited 0 (and before its successor was restarted);
/// after each restart, once the old generation stopped accepting, a new connection is
/// answered by the new one and (TLS) shows the new certificate; TLS: every answer of the
/// load came over a connection showing the certificate of the generation that answered;
/// in the end one process is left.
fn restarts_under_load(bin: &Path, transport: Transport, proto: Proto, restarts: usize) {
    restarts_under_load_with(bin, transport, proto, restarts, &[]);
}

/// [`restarts_under_load`], with more server arguments.
fn restarts_under_load_with(
    bin: &Path,
    transport: Transport,
    proto: Proto,
    restarts: usize,
    args: &[&str],
) {
    let (http, first_cert) = HttpServer::start_with(bin, transport, args);
    let server = &http.server;
    let load = Load::start(
        http.target(proto),
        LoadConfig {
            connections: CONNECTIONS,
            streams: STREAMS,
            connections_move: args.contains(&"--hand-over-idle"),
            ..LoadConfig::default()
        },
    );
    let mut generations = vec![Generation {
        pid: server.pid(),
        cert: first_cert,
        hup_at: Duration::ZERO,
        ready_at: Duration::ZERO,
    }];
    let wait_answers = |g: &Generation| {
        wait_for(
            format_args!(
                "{ANSWERS_PER_GENERATION} answers from generation {} ({} failures so far)",
                g.pid,
                load.failures()
            ),
            DEADLINE,
            || (load.responses_from(g.pid) >= ANSWERS_PER_GENERATION).then_some(()),
        );
    };
    wait_answers(&generations[0]);
    let mut exits = Vec::new();
    for i in 0..restarts {
        // The generation before the serving one has drained and exited: so every
        // generation exits while this process is its parent (the subreaper), and its
        // status is known.
        if i > 0 {
            let previous = generations[i - 1].pid;
            exits.push((previous, server.group.wait_exit(previous)));
        }
        let cert = http.pki.as_ref().map(|pki| {
            let serial = u64::try_from(i).expect("a small number") + 2;
            cert_id(&pki.issue_leaf(serial))
        });
        let hup_at = load.elapsed();
        let old = server.pid();
        let (pid, mark) = http.hup();
        let generation = Generation {
            pid,
            cert,
            hup_at,
            ready_at: load.elapsed(),
        };
        let ready = Instant::now();
        // Once the old generation stopped accepting, a new connection is the new one's,
        // and (TLS) shows the new certificate.
        http.wait_stopped_accepting(old, mark);
        assert_eq!(
            http.ask_new_connection(proto),
            (pid, cert),
            "restart {i}: a new connection's (pid, certificate)"
        );
        wait_answers(&generation);
        generations.push(generation);
        let left = RESTART_INTERVAL.saturating_sub(ready.elapsed());
        std::thread::sleep(left);
    }
    let last = generations.last().expect("a generation").pid;
    if generations.len() > 1 {
        let previous = generations[generations.len() - 2].pid;
        exits.push((previous, server.group.wait_exit(previous)));
    }
    let report = load.stop();

    let mut timeline = String::new();
    for (i, g) in generations.iter().enumerate() {
        let _ = writeln!(
            timeline,
            "  generation {i}: pid {} HUP at {:.3}s, ready at {:.3}s ({} answers)",
            g.pid,
            g.hup_at.as_secs_f64(),
            g.ready_at.as_secs_f64(),
            report.samples.iter().filter(|s| s.pid == g.pid).count()
        );
    }
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    let what = format!("{name}, {transport:?} {proto}, {restarts} restarts");
    eprintln!("{what}: {}\n{timeline}", report.summary());
    for example in &report.aborted_examples {
        eprintln!("{what}: cancelled by hyper's client: {example}");
    }
    for example in &report.lost_examples {
        eprintln!("{what}: lost unsent by hyper's client: {example}");
    }

    assert!(
        report.failures.is_empty(),
        "{what}: {} request(s) failed — {}\nfailures:\n{}restarts:\n{timeline}",
        report.failures.len(),
        report.summary(),
        report.failure_list(50),
    );
    // Every generation answered, and nobody else.
    let expected: Vec<u32> = generations.iter().map(|g| g.pid).collect();
    let mut seen = report.pids();
    seen.sort_unstable();
    let mut sorted = expected.clone();
    sorted.sort_unstable();
    assert_eq!(
        seen, sorted,
        "{what}: the pids that answered, against the generations\n{timeline}"
    );
    assert_eq!(expected.len(), restarts + 1);
    // TLS: each answer came over a connection showing its generation's certificate.
    if transport == Transport::Tls {
        let cert_of: HashMap<u32, Option<u64>> =
            generations.iter().map(|g| (g.pid, g.cert)).collect();
        let wrong: Vec<_> = report
            .samples
            .iter()
            .filter(|s| cert_of.get(&s.pid) != Some(&s.cert))
            .take(10)
            .collect();
        assert!(
            wrong.is_empty(),
            "{what}: answers over a connection showing another generation's certificate: \
             {wrong:?}\n{timeline}"
        );
    }
    for (pid, exit) in exits {
        assert_eq!(exit, Exit::Code(0), "{what}: the exit status of {pid}");
    }
    server.group.wait_settled(&[last]);
}

// ---- idle connections handed over ------------------------------------------------------------

#[test]
fn hello_hyper_http1_ten_restarts_under_load_handing_idle_connections_over() {
    restarts_under_load_with(
        hello_hyper(),
        Transport::Cleartext,
        Proto::Http1,
        10,
        &["--hand-over-idle"],
    );
}

#[test]
fn hello_axum_http1_restarts_under_load_handing_idle_connections_over() {
    restarts_under_load_with(
        hello_axum(),
        Transport::Cleartext,
        Proto::Http1,
        3,
        &["--hand-over-idle"],
    );
}

#[test]
fn hello_smol_http1_ten_restarts_under_load_handing_idle_connections_over() {
    restarts_under_load_with(
        hello_smol(),
        Transport::Cleartext,
        Proto::Http1,
        10,
        &["--hand-over-idle"],
    );
}

#[test]
fn hello_async_std_http1_restarts_under_load_handing_idle_connections_over() {
    restarts_under_load_with(
        hello_async_std(),
        Transport::Cleartext,
        Proto::Http1,
        3,
        &["--hand-over-idle"],
    );
}

#[test]
fn hello_smol_http2_restarts_under_load_handing_idle_connections_over() {
    restarts_under_load_with(
        hello_smol(),
        Transport::Cleartext,
        Proto::Http2,
        3,
        &["--hand-over-idle"],
    );
}

/// HTTP/2 connections of a server that hands HTTP/1 ones over are told apart by their
/// preface, and drained with GOAWAY as usual.
#[test]
fn hello_hyper_http2_restarts_under_load_handing_idle_connections_over() {
    restarts_under_load_with(
        hello_hyper(),
        Transport::Cleartext,
        Proto::Http2,
        3,
        &["--hand-over-idle"],
    );
}

/// Idle HTTP/1.1 keep-alive connections opened before a restart move to the new generation:
/// once the old one has exited, each connection is still open and answers the next request
/// from the new pid, without `Connection: close` (one drained instead would have been
/// closed after the idle grace, before the old generation exited); again after a second
/// restart; and after two more with no request between them.
#[test]
fn idle_keep_alive_connections_move_to_the_new_generation() {
    idle_keep_alive_connections_move(hello_hyper());
}

#[test]
fn idle_keep_alive_connections_move_to_the_new_generation_on_smol() {
    idle_keep_alive_connections_move(hello_smol());
}

#[test]
fn idle_keep_alive_connections_move_to_the_new_generation_on_async_std() {
    idle_keep_alive_connections_move(hello_async_std());
}

fn idle_keep_alive_connections_move(bin: &Path) {
    const N: usize = 16;
    let (http, _) = HttpServer::start_with(bin, Transport::Cleartext, &["--hand-over-idle"]);
    let server = &http.server;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let ask = |conn: &mut Conn| match runtime.block_on(conn.get("/")) {
        Outcome::Answered(a) => {
            assert!(!a.connection_close, "told to close: {a:?}");
            a.pid().unwrap_or_else(|e| panic!("a bad answer: {e}"))
        }
        other => panic!("GET / on connection {}: {other:?}", conn.id()),
    };
    let mut conns: Vec<Conn> = (0..N)
        .map(|i| {
            runtime
                .block_on(Conn::open(&http.target(Proto::Http1), i as u64))
                .unwrap_or_else(|e| panic!("open a connection: {e}"))
        })
        .collect();
    let first = server.pid();
    for conn in &mut conns {
        assert_eq!(ask(conn), first);
    }
    for _ in 0..2 {
        let old = server.pid();
        let new = server.hup();
        // The old generation exits once it has handed every connection over. (A request
        // sent before it does may be answered by it, legitimately: it hands a connection
        // over at the next request boundary. So the requests go after its exit.)
        assert_eq!(server.group.wait_exit(old), Exit::Code(0));
        for conn in &mut conns {
            assert_eq!(ask(conn), new, "connection {}", conn.id());
        }
    }
    // Two restarts with no request between them: a generation that took the connections
    // and never served them (it waits for their next request to make hyper's connection)
    // hands them over again.
    let newest = restart_twice_unused(server);
    for conn in &mut conns {
        assert_eq!(ask(conn), newest, "connection {}", conn.id());
    }
    for conn in &conns {
        assert!(!conn.is_closed(), "connection {} closed", conn.id());
    }
}

/// Two restarts, each waited for until the old generation has exited, with no request
/// between them: the newest generation's pid.
fn restart_twice_unused(server: &Server) -> u32 {
    for _ in 0..2 {
        let old = server.pid();
        server.hup();
        assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    }
    server.pid()
}

/// `GET path` on `conn` (HTTP/1.1, one request at a time), answered by hello: the pid in
/// the answer, and whether it says `Connection: close`.
fn get(conn: &mut std::net::TcpStream, path: &str) -> (u32, bool) {
    use std::io::Write;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .expect("send a GET");
    read_response(conn)
}

/// A response of hello's, read whole (its body is `pid=<pid>` and a newline): the pid, and
/// whether it says `Connection: close`.
fn read_response(conn: &mut std::net::TcpStream) -> (u32, bool) {
    let (body, close) = read_line_response(conn);
    let pid = body.strip_prefix("pid=").expect("a pid=");
    (pid.parse::<u32>().expect("a pid"), close)
}

/// `n` blocking connections to `addr`, each giving up a read after [`DEADLINE`].
fn connect(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            let conn = std::net::TcpStream::connect(addr).expect("connect");
            conn.set_read_timeout(Some(DEADLINE))
                .expect("a read timeout");
            conn
        })
        .collect()
}

/// A response whose body is one line, read whole: the line (without its newline), and
/// whether the response says `Connection: close`.
fn read_line_response(conn: &mut std::net::TcpStream) -> (String, bool) {
    use std::io::Read;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&response).to_string();
        if let Some(body) = text.split("\r\n\r\n").nth(1)
            && let Some(line) = body.strip_suffix('\n')
        {
            let close = text.to_ascii_lowercase().contains("connection: close");
            return (line.to_owned(), close);
        }
        let n = conn.read(&mut buf).expect("read an answer");
        assert!(n > 0, "closed before the answer: {text:?}");
        response.extend_from_slice(&buf[..n]);
    }
}

/// A connection taken over idle keeps its peer: axum's `ConnectInfo` in the new generation
/// (looked up from the socket only once the connection is served again) is the client's
/// own address, as in the old generation; after a restart, and again after two restarts
/// with no request between them (a generation that took the connection and never served
/// it hands it on).
#[test]
fn a_connection_taken_over_keeps_its_peer_address() {
    use std::io::Write;
    let (http, _) =
        HttpServer::start_with(hello_axum(), Transport::Cleartext, &["--hand-over-idle"]);
    let server = &http.server;
    let mut conns = connect(http.addr, 4);
    let peer_of = |conn: &mut std::net::TcpStream, pid: u32| {
        conn.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("send a GET");
        let (line, close) = read_line_response(conn);
        assert!(!close, "told to close: {line}");
        let me = conn.local_addr().expect("the client's address");
        assert_eq!(
            line,
            format!("pid={pid} peer={me}"),
            "the answering generation, the peer"
        );
    };
    for conn in &mut conns {
        peer_of(conn, server.pid());
    }
    let old = server.pid();
    let new = server.hup();
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    for conn in &mut conns {
        peer_of(conn, new);
    }
    let newest = restart_twice_unused(server);
    for conn in &mut conns {
        peer_of(conn, newest);
    }
}

/// A connection taken over idle is held by the new generation without hyper's connection
/// until its client sends again; one whose client closes instead is let go at once: the
/// new generation sees the end of file and closes its socket (its open descriptors drop by
/// as many), and the others are still served.
#[test]
fn an_idle_connection_taken_over_and_closed_by_its_client_is_let_go() {
    idle_connection_taken_over_and_closed_is_let_go(hello_hyper());
}

#[test]
fn an_idle_connection_taken_over_and_closed_by_its_client_is_let_go_on_smol() {
    idle_connection_taken_over_and_closed_is_let_go(hello_smol());
}

fn idle_connection_taken_over_and_closed_is_let_go(bin: &Path) {
    const N: usize = 16;
    const CLOSED: usize = 8;
    let ask = |conn: &mut std::net::TcpStream, pid: u32| {
        assert_eq!(get(conn, "/").0, pid, "the answering generation");
    };
    let fds = |pid: u32| fd_count(pid).unwrap_or(0);
    let (http, _) = HttpServer::start_with(bin, Transport::Cleartext, &["--hand-over-idle"]);
    let server = &http.server;
    let old = server.pid();
    let mut conns = connect(http.addr, N);
    for conn in &mut conns {
        ask(conn, old);
    }
    let new = server.hup();
    // Every connection answered (taken) once the old generation has exited.
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    let holding = fds(new);
    assert!(
        holding > N,
        "the new generation holds {holding} descriptors"
    );
    let closed: Vec<_> = conns.drain(..CLOSED).collect();
    drop(closed);
    wait_for(
        format_args!("the new generation closes the {CLOSED} connections its clients closed"),
        DEADLINE,
        || (fds(new) <= holding - CLOSED).then_some(()),
    );
    for conn in &mut conns {
        ask(conn, new);
    }
}

/// A generation that has drained (it waits as its successor's fallback) takes no connection
/// from its own predecessor: it would hold it into its exit, and its lifecycle, over, would
/// not wait for it. Here the predecessor A still serves a slow request when two restarts
/// come (A → B → C) and B drains at once; at the request boundary A offers the connection to
/// B, which refuses it, so A keeps it and answers its next request itself, with
/// `Connection: close`. (B took it before, answered from its probation, and closed it when
/// the probation ended.)
#[test]
fn a_drained_generation_takes_no_connection_from_its_predecessor() {
    use std::io::Write;
    let (http, _) = HttpServer::start_with(
        hello_hyper(),
        Transport::Cleartext,
        &["--hand-over-idle", "--probation", "60"],
    );
    let server = &http.server;
    // The slow request must be in A's hands when the restarts come; if A had not read it
    // yet, the connection moved to B with it, and the case did not happen: again.
    for attempt in 1..=3 {
        let a = server.pid();
        let mut conn = std::net::TcpStream::connect(http.addr).expect("connect");
        conn.set_read_timeout(Some(DEADLINE))
            .expect("a read timeout");
        assert_eq!(get(&mut conn, "/"), (a, false));
        conn.write_all(b"GET /?sleep=3000 HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("send a slow GET");
        // Time for A to read it. Pacing, not a wait for a condition (nothing outside A
        // tells when it has read it): the retry below covers a run where it had not.
        std::thread::sleep(Duration::from_millis(200));
        let mark = server.group.stderr.len();
        let b = server.hup();
        server.hup();
        wait_for(
            format_args!("{b} to drain (its probation)"),
            DEADLINE,
            || {
                server
                    .group
                    .stderr
                    .find_from(mark, |l| {
                        l.contains(&format!("{{pid={b}}}")) && l.contains("to=probation")
                    })
                    .map(|_| ())
            },
        );
        let (slow, _) = read_response(&mut conn);
        if slow != a {
            assert!(
                attempt < 3,
                "the slow request never stayed with its generation"
            );
            continue;
        }
        assert_eq!(
            get(&mut conn, "/"),
            (a, true),
            "the next request, after the drained {b} was offered the connection"
        );
        // Both sides say why: A that B refused it, B that it has drained. (B may log it
        // after A answered, and the logs are read as they come.)
        for why in [
            "the receiving process has drained",
            "this process has drained",
        ] {
            wait_for(format_args!("a line that says {why:?}"), DEADLINE, || {
                server
                    .group
                    .stderr
                    .find_from(mark, |l| l.contains(why))
                    .map(|_| ())
            });
        }
        return;
    }
}

/// A connection whose last request had a body is not moved (hyper may not have read all of
/// it): it is drained as usual, closed after the idle grace, and the old generation exits
/// then — not at the drain deadline.
#[test]
fn a_connection_after_a_request_with_a_body_is_drained_not_moved() {
    a_connection_after_a_request_with_a_body_is_drained(hello_hyper());
}

#[test]
fn a_connection_after_a_request_with_a_body_is_drained_not_moved_on_smol() {
    a_connection_after_a_request_with_a_body_is_drained(hello_smol());
}

fn a_connection_after_a_request_with_a_body_is_drained(bin: &Path) {
    use std::io::{Read, Write};
    let (http, _) = HttpServer::start_with(bin, Transport::Cleartext, &["--hand-over-idle"]);
    let server = &http.server;
    let old = server.pid();
    let mut conn = std::net::TcpStream::connect(http.addr).expect("connect");
    conn.set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    conn.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .expect("send a POST");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&response).contains(&format!("pid={old}")) {
        let n = conn.read(&mut buf).expect("read the response");
        assert!(n > 0, "closed before the response");
        response.extend_from_slice(&buf[..n]);
    }
    server.hup();
    // Closed by the old generation after the idle grace (end of file), which then exits 0.
    assert_eq!(conn.read(&mut buf).expect("read until closed"), 0);
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
}

// ---- upgraded connections -------------------------------------------------------------------

#[test]
fn hello_hyper_upgraded_connection_is_tracked_and_closed_at_the_deadline() {
    upgraded_connection_closed_at_the_deadline(hello_hyper());
}

#[test]
fn hello_smol_upgraded_connection_is_tracked_and_closed_at_the_deadline() {
    upgraded_connection_closed_at_the_deadline(hello_smol());
}

#[test]
fn hello_async_std_upgraded_connection_is_tracked_and_closed_at_the_deadline() {
    upgraded_connection_closed_at_the_deadline(hello_async_std());
}

/// How long the drain of [`upgraded_connection_closed_at_the_deadline`] may take.
const UPGRADE_DRAIN: Duration = Duration::from_secs(2);

/// A connection upgraded with hyper's upgrade (as a websocket is) leaves hyper, not the
/// drain: it stays with the old generation, which goes on serving it after the handover,
/// and is closed at the drain deadline — not at once, and not never.
fn upgraded_connection_closed_at_the_deadline(bin: &Path) {
    use std::io::{BufRead, BufReader, Write};
    let drain = UPGRADE_DRAIN.as_secs().to_string();
    let (http, _) = HttpServer::start_with(
        bin,
        Transport::Cleartext,
        &["--drain-timeout", &drain, "--probation", "0"],
    );
    let server = &http.server;
    let old = server.pid();
    let conn = std::net::TcpStream::connect(http.addr).expect("connect");
    conn.set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    let mut writer = conn.try_clone().expect("a second handle");
    let mut reader = BufReader::new(conn);
    writer
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .expect("ask for the upgrade");
    let mut line = String::new();
    let mut read_line = |line: &mut String| {
        line.clear();
        reader.read_line(line).expect("read a line");
    };
    read_line(&mut line);
    assert!(line.starts_with("HTTP/1.1 101"), "{line:?}");
    while line != "\r\n" {
        read_line(&mut line);
        assert!(!line.is_empty(), "closed in the response head");
    }
    read_line(&mut line);
    assert_eq!(
        line,
        format!("pid={old}\n"),
        "the upgraded protocol's greeting"
    );
    let mut echo = |text: &str, line: &mut String| {
        writer.write_all(text.as_bytes()).expect("send");
        read_line(line);
        assert_eq!(line, text, "echoed");
    };
    echo("before\n", &mut line);
    let restarted = Instant::now();
    let new = server.hup();
    assert_ne!(new, old);
    // The new generation serves, the old one still holds the upgraded connection.
    echo("after the handover\n", &mut line);
    assert!(
        is_alive(old),
        "the old generation waits for the upgraded connection"
    );
    // Closed at the deadline: end of file (or a reset), then the old generation exits.
    line.clear();
    let end = reader.read_line(&mut line);
    let closed_after = restarted.elapsed();
    assert!(
        matches!(&end, Ok(0))
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected the end of the connection, got {end:?} {line:?}"
    );
    assert!(
        closed_after >= UPGRADE_DRAIN - Duration::from_millis(500),
        "closed {closed_after:?} after the restart, before the drain deadline ({UPGRADE_DRAIN:?})"
    );
    assert!(
        matches!(server.group.wait_exit(old), Exit::Code(_)),
        "the old generation exits, not killed"
    );
}

// ---- slow requests -------------------------------------------------------------------------

/// How long the slow requests take.
const SLOW: Duration = Duration::from_millis(3000);
/// HTTP/1.1 and HTTP/2.
const BOTH: &[Proto] = &[Proto::Http1, Proto::Http2];

/// Slow requests per protocol, each on a connection of its own.
const SLOW_PER_PROTO: usize = 3;

/// Slow requests (`?sleep=3000`) in flight on separate connections, over each of `protos`,
/// during a restart: the new generation becomes ready and answers new connections while
/// they run; they complete with `200` from the old pid (HTTP/1.1: with `Connection: close`;
/// HTTP/2: the connection then ends after a `GOAWAY`), and the old process exits 0
/// afterwards.
fn slow_requests_complete(bin: &Path, transport: Transport, protos: &[Proto]) {
    let (http, first_cert) = HttpServer::start(bin, transport);
    let server = &http.server;
    let old = server.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut next_id = 0;
    let mut open = |proto: Proto| {
        next_id += 1;
        runtime
            .block_on(Conn::open(&http.target(proto), next_id))
            .unwrap_or_else(|e| panic!("open an {proto} connection: {e}"))
    };
    let answered_by = |runtime: &tokio::runtime::Runtime, conn: &mut Conn| -> u32 {
        match runtime.block_on(conn.get("/")) {
            Outcome::Answered(a) => a.pid().unwrap_or_else(|e| panic!("a bad answer: {e}")),
            other => panic!("{} GET /: {other:?}", conn.proto()),
        }
    };

    // Each connection is the old generation's (it answered on it), then carries a slow
    // request.
    let mut slow = Vec::new();
    for &proto in protos {
        for _ in 0..SLOW_PER_PROTO {
            let mut conn = open(proto);
            assert_eq!(answered_by(&runtime, &mut conn), old);
            if first_cert.is_some() {
                assert_eq!(conn.peer_cert().map(|c| cert_id(c)), first_cert);
            }
            slow.push(runtime.spawn(async move {
                let outcome = conn.get(&format!("/?sleep={}", SLOW.as_millis())).await;
                (conn, outcome)
            }));
        }
    }
    let sent = Instant::now();

    let (new, mark) = http.hup();
    assert_ne!(new, old);
    let finished_early = |slow: &mut Vec<tokio::task::JoinHandle<(Conn, Outcome)>>| {
        let (done, pending): (Vec<_>, Vec<_>) = slow.drain(..).partition(|s| s.is_finished());
        *slow = pending;
        done.into_iter()
            .map(|s| {
                let (conn, outcome) = runtime.block_on(s).expect("a slow request task");
                format!("{} {outcome:?}", conn.proto())
            })
            .collect::<Vec<_>>()
    };
    let early = finished_early(&mut slow);
    assert!(
        early.is_empty(),
        "{:?} after the slow requests were sent, some had ended: {early:?}",
        sent.elapsed()
    );
    assert!(
        is_alive(old),
        "the old generation left with requests in flight"
    );
    // New connections go to the new generation once the old one stopped accepting (a
    // moment after the new one is ready), over both protocols.
    http.wait_stopped_accepting(old, mark);
    for &proto in protos {
        for _ in 0..5 {
            let mut conn = open(proto);
            assert_eq!(
                answered_by(&runtime, &mut conn),
                new,
                "a new {proto} connection"
            );
            // And on the same connection again.
            assert_eq!(
                answered_by(&runtime, &mut conn),
                new,
                "a new {proto} connection"
            );
        }
    }
    let early = finished_early(&mut slow);
    assert!(
        early.is_empty(),
        "{:?} after the slow requests were sent, some had ended: {early:?}",
        sent.elapsed()
    );
    assert!(
        is_alive(old),
        "the old generation left with requests in flight"
    );

    for s in slow {
        let (conn, outcome) = runtime.block_on(s).expect("a slow request task");
        let proto = conn.proto();
        let Outcome::Answered(answer) = outcome else {
            panic!("the slow {proto} request failed: {outcome:?}");
        };
        assert_eq!(answer.pid(), Ok(old), "the slow {proto} request's answer");
        assert!(
            answer.latency >= SLOW,
            "the slow {proto} request took {:?}",
            answer.latency
        );
        match proto {
            // The old generation drains: its HTTP/1.1 answers close the connection.
            Proto::Http1 => assert!(
                answer.connection_close,
                "the slow HTTP/1.1 answer from the draining generation lacks `Connection: close`"
            ),
            // HTTP/2: GOAWAY (without error), and the connection ends.
            Proto::Http2 => {
                wait_for(
                    "the old generation's HTTP/2 connection to close",
                    DEADLINE,
                    || conn.is_closed().then_some(()),
                );
                let goaways = conn.goaways();
                assert!(
                    !goaways.is_empty() && goaways.iter().all(|g| g.error_code == 0),
                    "the old generation's HTTP/2 GOAWAYs: {goaways:?}"
                );
            }
        }
    }
    assert_eq!(
        server.group.wait_exit(old),
        Exit::Code(0),
        "the old generation's exit status"
    );
    let mut conn = open(Proto::Http1);
    assert_eq!(answered_by(&runtime, &mut conn), new);
    drop(conn);
    runtime.shutdown_timeout(Duration::from_secs(1));
    server.group.wait_settled(&[new]);
}

// ---- readiness and liveness probes ---------------------------------------------------------

#[test]
fn hello_hyper_readiness_turns_false_while_it_drains_for_a_stop() {
    readiness_during_a_stop(hello_hyper());
}

#[test]
fn hello_axum_readiness_turns_false_while_it_drains_for_a_stop() {
    readiness_during_a_stop(hello_axum());
}

#[test]
fn hello_smol_readiness_turns_false_while_it_drains_for_a_stop() {
    readiness_during_a_stop(hello_smol());
}

#[test]
fn hello_async_std_readiness_follows_a_handover_and_a_fallback() {
    readiness_across_a_fallback(hello_async_std());
}

#[test]
fn hello_hyper_readiness_follows_a_handover_and_a_fallback() {
    readiness_across_a_fallback(hello_hyper());
}

/// `GET path` on `conn`, which must be answered.
fn answered(runtime: &tokio::runtime::Runtime, conn: &mut Conn, path: &str) -> Answer {
    match runtime.block_on(conn.get(path)) {
        Outcome::Answered(a) => a,
        other => panic!("GET {path} on connection {}: {other:?}", conn.id()),
    }
}

/// Asks `GET /readyz` on the keep-alive connection `conn` until the answer is `503`, which
/// it returns; each answer before it must be `200 ready` and keep the connection open.
fn readyz_until_draining(runtime: &tokio::runtime::Runtime, conn: &mut Conn) -> Answer {
    let start = Instant::now();
    loop {
        let a = answered(runtime, conn, "/readyz");
        if a.status() == 503 {
            return a;
        }
        assert_eq!(
            (a.status(), a.body().as_str(), a.connection_close),
            (200, "ready\n", false),
            "/readyz before the drain"
        );
        assert!(
            start.elapsed() < DEADLINE,
            "/readyz still ready {DEADLINE:?} later"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A runtime for the test's client connections.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The probes of a server that stops: `/readyz` answers `200 ready` while it serves; after
/// `SIGTERM`, while a slow request (`?sleep=3000`) keeps it draining, a keep-alive
/// connection opened before answers `/readyz` with `503 draining` and `Connection: close`,
/// and another one `/livez` with `200 live`; a new connection is refused (the listener is
/// closed: no generation will accept on it again); the slow request completes and the
/// server exits 0.
fn readiness_during_a_stop(bin: &Path) {
    let (http, _) = HttpServer::start_with(bin, Transport::Cleartext, &["--probes"]);
    let server = &http.server;
    let pid = server.pid();
    let runtime = client_runtime();
    let target = http.target(Proto::Http1);
    let open = |id| {
        runtime
            .block_on(Conn::open(&target, id))
            .unwrap_or_else(|e| panic!("open a connection: {e}"))
    };
    let (mut ready, mut live, mut slow) = (open(1), open(2), open(3));
    let a = answered(&runtime, &mut ready, "/readyz");
    assert_eq!((a.status(), a.body().as_str()), (200, "ready\n"));
    let a = answered(&runtime, &mut live, "/livez");
    assert_eq!((a.status(), a.body().as_str()), (200, "live\n"));
    // The slow connection is this process's before the stop.
    assert_eq!(answered(&runtime, &mut slow, "/").pid(), Ok(pid));
    let slow = runtime.spawn(async move {
        let outcome = slow.get(&format!("/?sleep={}", SLOW.as_millis())).await;
        (slow, outcome)
    });
    std::thread::sleep(Duration::from_millis(200));

    let stopped_at = Instant::now();
    server.group.signal(pid, Signal::TERM);
    let a = readyz_until_draining(&runtime, &mut ready);
    assert_eq!(a.body(), "draining\n");
    assert!(a.connection_close, "503 without `Connection: close`");
    // (With `Connection: close` too once the server has told the connection of the drain,
    // a moment after the tracker.)
    let a = answered(&runtime, &mut live, "/livez");
    assert_eq!(
        (a.status(), a.body().as_str()),
        (200, "live\n"),
        "/livez while draining"
    );
    // The listener closes as its accept loop ends, a moment after the drain starts.
    wait_for(
        "the listener to close",
        DEADLINE,
        || match std::net::TcpStream::connect(http.addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            Err(e) => panic!("a new connection while the server stops: {e}"),
            Ok(_) => None,
        },
    );
    assert!(
        stopped_at.elapsed() < SLOW,
        "the drain took over {SLOW:?} to show: the slow request may have ended it"
    );

    let (_, outcome) = runtime.block_on(slow).expect("the slow request's task");
    let Outcome::Answered(a) = outcome else {
        panic!("the slow request during the stop: {outcome:?}");
    };
    assert_eq!(a.pid(), Ok(pid));
    assert!(a.connection_close);
    assert_eq!(server.group.wait_exit(pid), Exit::Code(0));
}

/// The probes across a restart and a fallback: a keep-alive connection to the old
/// generation answers `/readyz` with `200`, then `503 draining` once the new generation is
/// ready, while a new connection (the new generation's) answers `200`; the new generation is
/// then killed, the old one takes the service back, and a new connection — the old
/// generation's again — answers `/readyz` with `200 ready`.
fn readiness_across_a_fallback(bin: &Path) {
    // A probation longer than the test: the old generation stays the fallback.
    let (http, _) = HttpServer::start_with(
        bin,
        Transport::Cleartext,
        &["--probes", "--probation", "60"],
    );
    let server = &http.server;
    let old = server.pid();
    let runtime = client_runtime();
    let target = http.target(Proto::Http1);
    let open = |id| {
        runtime
            .block_on(Conn::open(&target, id))
            .unwrap_or_else(|e| panic!("open a connection: {e}"))
    };
    let mut before = open(1);
    assert_eq!(answered(&runtime, &mut before, "/").pid(), Ok(old));
    let a = answered(&runtime, &mut before, "/readyz");
    assert_eq!((a.status(), a.body().as_str()), (200, "ready\n"));

    let mark = server.group.stderr.len();
    let (new, _) = http.hup();
    let a = readyz_until_draining(&runtime, &mut before);
    assert_eq!(
        (a.body().as_str(), a.connection_close),
        ("draining\n", true)
    );
    http.wait_stopped_accepting(old, mark);
    let mut after = open(2);
    assert_eq!(answered(&runtime, &mut after, "/").pid(), Ok(new));
    let a = answered(&runtime, &mut after, "/readyz");
    assert_eq!(
        (a.status(), a.body().as_str()),
        (200, "ready\n"),
        "the new generation"
    );
    drop(after);

    // The new generation dies after it was ready: the old one serves again, and says so.
    server.group.signal(new, Signal::KILL);
    server
        .group
        .stderr
        .wait_from(format_args!("{old} to accept again"), mark, |l| {
            l.contains("accepting again") && has_field(l, "pid", old)
        });
    server.wait_pid_file(old);
    server.set_pid(old);
    let mut back = open(3);
    assert_eq!(answered(&runtime, &mut back, "/").pid(), Ok(old));
    let a = answered(&runtime, &mut back, "/readyz");
    assert_eq!(
        (a.status(), a.body().as_str(), a.connection_close),
        (200, "ready\n", false),
        "the old generation after it took the service back"
    );
    drop(back);
    drop(before);
    runtime.shutdown_timeout(Duration::from_secs(1));
    server.group.wait_settled(&[old]);
}
