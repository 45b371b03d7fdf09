//! The end-to-end scenarios, each a function of the server binary it runs, so that every
//! example server (tokio, smol, async-std) runs the same tests: a test file per binary only
//! calls them.
//!
//! Each scenario fails if the behaviour it names breaks; the comments say what it checks.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use rustix::process::Signal;

use crate::{
    DEADLINE, Endpoint, Exit, Group, Options, Server, ask, dup, fds, has_field, is_alive, own_pid,
    parse_listening, place_fds, read_to_end, sh_quote, sh_script, wait_for,
};

/// The end-to-end tests, one `#[test]` per scenario, against the server binary `$bin` (an
/// expression of type `&Path`): each runtime's test file invokes it once per echo server.
#[macro_export]
macro_rules! restart_scenarios {
    ($bin:expr) => {
        #[test]
        fn stale_pid_file_is_overwritten() {
            $crate::scenarios::stale_pid_file_is_overwritten($bin);
        }

        #[test]
        fn staged_upgrade_committed() {
            $crate::scenarios::staged_upgrade_committed($bin);
        }

        #[test]
        fn staged_upgrade_rolled_back() {
            $crate::scenarios::staged_upgrade_rolled_back($bin);
        }

        #[test]
        fn socket_activation_listener_is_served_and_passed_on() {
            $crate::scenarios::socket_activation($bin);
        }

        #[test]
        fn in_flight_request_completes_across_a_restart() {
            $crate::scenarios::in_flight_request($bin);
        }

        #[test]
        fn twenty_restarts_leak_nothing() {
            $crate::scenarios::twenty_restarts($bin);
        }

        #[test]
        fn malformed_variables_are_refused() {
            $crate::scenarios::malformed_variables($bin);
        }

        #[test]
        fn variables_for_another_process_are_ignored() {
            $crate::scenarios::variables_for_another_process($bin);
        }

        #[test]
        fn bad_inherited_fds_are_refused() {
            $crate::scenarios::bad_inherited_fds($bin);
        }

        #[test]
        fn orphaned_successor_serves() {
            $crate::scenarios::orphaned_successor_serves($bin);
        }

        #[test]
        fn closed_fd_declared_other_is_not_adopted() {
            $crate::scenarios::closed_fd_declared_other_is_not_adopted($bin);
        }

        #[test]
        fn executable_missing_or_not_executable() {
            $crate::scenarios::executable_missing_or_not_executable($bin);
        }

        #[test]
        fn new_binary_exits_before_ready() {
            $crate::scenarios::new_binary_exits_before_ready($bin);
        }

        #[test]
        fn new_binary_never_ready_is_killed() {
            $crate::scenarios::new_binary_never_ready($bin);
        }

        #[test]
        fn wrapper_never_ready_is_killed_with_what_it_started() {
            $crate::scenarios::wrapper_never_ready($bin);
        }

        #[test]
        fn a_child_killed_before_ready_takes_its_group_with_it() {
            $crate::scenarios::wrapper_killed_before_ready($bin);
        }

        #[test]
        fn hup_burst() {
            $crate::scenarios::hup_burst($bin);
        }

        #[test]
        fn term_while_child_starting() {
            $crate::scenarios::term_while_child_starting($bin);
        }

        #[test]
        fn replaced_binary_runs_new_code() {
            $crate::scenarios::replaced_binary_runs($bin);
        }

        #[test]
        fn symlink_switch_runs_new_release() {
            $crate::scenarios::symlink_switch_runs_new_release($bin);
        }

        #[test]
        fn subprocess_sees_no_listener() {
            $crate::scenarios::subprocess_sees_no_listener($bin);
        }

        #[test]
        fn unix_socket_restart() {
            $crate::scenarios::unix_socket_restart($bin);
        }

        #[test]
        fn unclaimed_listener_is_closed() {
            $crate::scenarios::unclaimed_listener_is_closed($bin);
        }

        #[test]
        fn restarts_under_load() {
            $crate::scenarios::restarts_under_load($bin, 16, 60);
        }

        #[test]
        fn drain_deadline_closes_what_is_left() {
            $crate::scenarios::drain_deadline_closes_what_is_left($bin);
        }

        #[test]
        fn hammer_closes_what_is_left() {
            $crate::scenarios::hammer_closes_what_is_left($bin);
        }

        #[test]
        fn term_stops_gracefully() {
            $crate::scenarios::term_stops_gracefully($bin);
        }

        #[test]
        fn successor_killed_after_ready_gives_the_service_back() {
            $crate::scenarios::successor_killed_after_ready($bin);
        }

        #[test]
        fn successor_exiting_1_after_ready_gives_the_service_back() {
            $crate::scenarios::successor_exits_1_after_ready($bin);
        }

        #[test]
        fn successor_handing_over_onward_is_no_crash() {
            $crate::scenarios::successor_hands_over_onward($bin);
        }

        #[test]
        fn a_stop_during_the_probation_stays_a_stop() {
            $crate::scenarios::stop_during_probation($bin);
        }

        #[test]
        fn udp_socket_restart() {
            $crate::scenarios::udp_socket_restart($bin);
        }

        #[test]
        fn ipv6_listener_restart() {
            $crate::scenarios::ipv6_listener_restart($bin);
        }

        #[test]
        fn several_listeners_restart() {
            $crate::scenarios::several_listeners_restart($bin);
        }

        #[test]
        fn tcp_listen_address_change_binds_anew() {
            $crate::scenarios::tcp_listen_address_changes($bin);
        }

        #[test]
        fn udp_listen_address_change_binds_anew() {
            $crate::scenarios::udp_listen_address_changes($bin);
        }

        #[test]
        fn unix_listen_path_change_binds_anew() {
            $crate::scenarios::unix_listen_path_changes($bin);
        }

        #[test]
        fn unix_path_written_differently_keeps_listener() {
            $crate::scenarios::unix_path_written_differently_keeps_listener($bin);
        }

        #[test]
        fn unix_listen_path_that_is_not_a_socket_is_kept() {
            $crate::scenarios::unix_listen_path_not_a_socket($bin);
        }
    };
}
pub use crate::restart_scenarios;

/// The pid in the server's `spawned the new generation pid=<pid>` log line after `mark`.
pub fn spawned_child(server: &Server, mark: usize) -> u32 {
    let line = server
        .group
        .stderr
        .wait_from("the server to spawn a new generation", mark, |l| {
            l.contains("spawned the new generation")
        });
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid=")?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// After a bad input: the server still answers and a later restart works.
fn still_serves_and_restarts(server: &Server) {
    let pid = server.pid();
    server.assert_serves(pid);
    let new = server.restart();
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

// ---- 1. a request in flight --------------------------------------------------------------------

/// A request in flight in the old process (`sleep 2000`) completes after the HUP, answered
/// by the old pid; connections made once the new generation took over are answered by the
/// new pid; the old process exits 0 once its connection is done, not before.
pub fn in_flight_request(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();

    let mut inflight = server.connect();
    // The connection is the old process's: it answered on it.
    assert_eq!(inflight.ask("hello").unwrap(), (old, "hello".to_owned()));
    inflight.send("sleep 2000").unwrap();
    let sent = Instant::now();

    let new = server.hup();
    assert_ne!(new, old);
    // Every new connection goes to the new generation from now on.
    for _ in 0..10 {
        server.assert_serves(new);
    }
    assert!(
        is_alive(old),
        "the old generation left with a request in flight"
    );

    let answer = inflight.recv().expect("the in-flight request is answered");
    assert_eq!(answer, (old, "sleep 2000".to_owned()));
    assert!(sent.elapsed() >= Duration::from_millis(2000));
    // The connection stays with the old process until the client hangs up.
    assert_eq!(inflight.ask("again").unwrap(), (old, "again".to_owned()));
    assert!(
        is_alive(old),
        "the old generation must wait for its connection"
    );
    assert_eq!(server.group.exit_of(old), None);

    drop(inflight);
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

// ---- 2. many restarts ------------------------------------------------------------------------

/// 20 restarts in a row: each new generation serves and names itself in the pid file, the
/// old one exits 0, and once settled exactly one process is left, with as many fds as the
/// first generation had, and no zombie.
pub fn twenty_restarts(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let first = server.pid();
    server.assert_serves(first);
    let baseline = server.settled_fd_count();
    server.group.wait_settled(&[first]);

    let mut generations = vec![first];
    for i in 0..20 {
        let new = server.restart();
        assert!(
            !generations.contains(&new),
            "restart {i}: {new} is not a new process"
        );
        generations.push(new);
        server.assert_serves(new);
        assert_eq!(
            server.pid_file_pid(),
            Some(new),
            "restart {i}: the pid file"
        );
        server.group.wait_settled(&[new]);
        server.wait_fd_count(new, baseline);
    }
    assert_eq!(server.group.announced_pids(), generations);
}

// ---- 3. bad input ----------------------------------------------------------------------------

/// The identity of the open file `fd` as the handoff encoding writes it, `<dev>:<ino>`.
fn file_id(fd: impl AsFd) -> String {
    let st = rustix::fs::fstat(fd).expect("fstat");
    format!("{}:{}", st.st_dev, st.st_ino)
}

/// The handoff variables of a valid handoff of one listener (`listen-0` at fd 3, the
/// readiness channel at fd 4) from `parent`, declaring the open files `listener` and
/// `ready` at those fds.
fn handoff_vars(parent: u32, listener: impl AsFd, ready: impl AsFd) -> Vec<(&'static str, String)> {
    vec![
        ("ENDLESS_VERSION", "2".to_owned()),
        ("ENDLESS_PARENT_PID", parent.to_string()),
        ("ENDLESS_FDS", "1".to_owned()),
        (
            "ENDLESS_FD_3",
            format!("tcp-listener:listen-0:{}", file_id(listener)),
        ),
        ("ENDLESS_READY_FD", format!("4:{}", file_id(ready))),
    ]
}

/// [`handoff_vars`] declaring the files placed at fds 3 and 4 by `placements`; a fd placed
/// closed (`None`) is declared as a file that exists elsewhere (as for a grandchild, which
/// inherits the variables but not the fds).
fn handoff_vars_for(placements: &[(i32, Option<OwnedFd>)]) -> Vec<(&'static str, String)> {
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = |fd: i32| {
        placements
            .iter()
            .find(|(n, _)| *n == fd)
            .and_then(|(_, f)| f.as_ref())
            .map_or_else(|| dup(&elsewhere), dup)
    };
    handoff_vars(own_pid(), at(3), at(4))
}

/// Starts a process of `server`'s binary (not the server itself), as if the test process
/// were its endless parent, with `vars` and the fds placed, in a group of its own.
fn start_adopter(
    server: &Server,
    label: &str,
    vars: &[(&str, String)],
    placements: Vec<(i32, Option<OwnedFd>)>,
) -> Group {
    let mut command = Group::command(server.exe());
    command
        .current_dir(server.dir())
        .args(["--listen", "127.0.0.1:0"]);
    for (k, v) in vars {
        command.env(k, v);
    }
    place_fds(&mut command, placements);
    Group::spawn(label, command)
}

/// [`assert_refused`] with [`handoff_vars_for`] the placements: the variables declare the
/// files placed, which are wrong in some other way.
fn assert_refused_placed(
    server: &Server,
    label: &str,
    placements: Vec<(i32, Option<OwnedFd>)>,
    ready: Option<OwnedFd>,
    expected: &str,
) {
    let vars = handoff_vars_for(&placements);
    assert_refused(server, label, &vars, placements, ready, expected);
}

/// A process started with [`handoff_vars_for`] these fds, one of which is not the declared
/// file, takes the variables as meant for another process: it warns, starts fresh (listens
/// on its own `--listen` address), and writes nothing on the readiness pipe whose read end
/// is `reader` (none of the fds is adopted, the declared ones that are right included).
fn assert_ignored(
    server: &Server,
    label: &str,
    placements: Vec<(i32, Option<OwnedFd>)>,
    reader: OwnedFd,
) {
    let vars = handoff_vars_for(&placements);
    let group = start_adopter(server, label, &vars, placements);
    let pid = group.leader();
    let warning = group
        .stderr
        .wait_from("a warning about the inherited variables", 0, |l| {
            l.contains("WARN") && l.contains("ignoring the inherited")
        });
    assert!(
        warning.contains("not meant for this process"),
        "{label}: {warning:?}\n{}",
        group.dump()
    );
    let line = group.stdout.wait_from("the fresh start to listen", 0, |l| {
        parse_listening(l).is_some()
    });
    let listening = parse_listening(&line).unwrap();
    assert_eq!(listening.pid, pid, "{label}");
    let addr = listening.addr.parse().unwrap();
    assert_eq!(
        ask(&Endpoint::Tcp(addr), "ping").unwrap(),
        (pid, "ping".to_owned()),
        "{label}"
    );
    let reader = std::io::PipeReader::from(reader);
    set_nonblocking(&reader);
    let read = std::io::Read::read(&mut &reader, &mut [0u8; 64]);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{label}: it wrote on a readiness pipe not meant for it: {read:?}"
    );
    // Dropping the group kills and reaps it.
}

/// A process started with these variables and fds exits non-zero, says `expected` on
/// stderr (after `cannot start`), never listens, and writes nothing on the readiness pipe.
fn assert_refused(
    server: &Server,
    label: &str,
    vars: &[(&str, String)],
    placements: Vec<(i32, Option<OwnedFd>)>,
    ready: Option<OwnedFd>,
    expected: &str,
) {
    let group = start_adopter(server, label, vars, placements);
    let exit = group.wait_exit(group.leader());
    assert!(
        matches!(exit, Exit::Code(c) if c != 0),
        "{label}: exit status {exit:?}\n{}",
        group.dump()
    );
    // Every line it wrote has been read once its stdout and stderr are closed.
    group.wait_output_closed();
    let error = group.stderr.find_from(0, |l| l.contains("cannot start"));
    assert!(
        error.as_deref().is_some_and(|l| l.contains(expected)),
        "{label}: expected an error containing {expected:?}, got {error:?}\n{}",
        group.dump()
    );
    assert_eq!(group.announced_pids(), [0u32; 0], "{label}: it listened");
    if let Some(ready) = ready {
        assert_eq!(
            read_to_end("the readiness pipe", ready),
            b"",
            "{label}: readiness pipe"
        );
    }
    group.wait_settled(&[]);
}

/// Bad input a: malformed `ENDLESS_*` variables at start-up, meant for the process (the
/// parent pid is right). Each one makes it exit non-zero with an error naming the problem;
/// the running server is unaffected and restarts.
pub fn malformed_variables(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    // A change to the valid variables: set `key` to the value (`{listener}` and `{ready}`
    // stand for the identities of the files at fds 3 and 4), or remove it (`None`).
    type Change = (&'static str, Option<&'static str>);
    let set = |key, value| (key, Some(value));
    let without = |key| (key, None);
    // (what is wrong, the change, what the error must say)
    type Case = (&'static str, Change, &'static str);
    let cases: Vec<Case> = vec![
        (
            "unsupported version",
            set("ENDLESS_VERSION", "1"),
            r#"ENDLESS_VERSION is "1", this program reads version 2"#,
        ),
        (
            "count not a number",
            set("ENDLESS_FDS", "abc"),
            r#"the value of "ENDLESS_FDS" is not a valid number: "abc""#,
        ),
        (
            "count with a sign",
            set("ENDLESS_FDS", "+1"),
            r#"the value of "ENDLESS_FDS" is not a valid number: "+1""#,
        ),
        (
            "count mismatch",
            set("ENDLESS_FDS", "2"),
            "2 fds declared but 1 found",
        ),
        (
            "unknown kind",
            set("ENDLESS_FD_3", "carrier-pigeon:listen-0:{listener}"),
            r#""ENDLESS_FD_3" has an unknown fd kind "carrier-pigeon""#,
        ),
        (
            "entry without a kind",
            set("ENDLESS_FD_3", "listen-0:{listener}"),
            r#"the value of "ENDLESS_FD_3" is not <kind>:<name>"#,
        ),
        (
            "bad escape in a name",
            set("ENDLESS_FD_3", "tcp-listener:listen%zz:{listener}"),
            r#"the name in "ENDLESS_FD_3" has an invalid escape"#,
        ),
        (
            "ready fd is an entry's fd",
            set("ENDLESS_READY_FD", "3:{ready}"),
            r#""ENDLESS_READY_FD" names fd 3, which is already the fd of another entry"#,
        ),
        (
            "ready fd out of range",
            set("ENDLESS_READY_FD", "9:{ready}"),
            r#""ENDLESS_READY_FD" names fd 9"#,
        ),
        (
            "ready fd missing",
            without("ENDLESS_READY_FD"),
            r#""ENDLESS_READY_FD" is not set, but related variables are"#,
        ),
        (
            "count missing",
            without("ENDLESS_FDS"),
            r#""ENDLESS_FDS" is not set, but related variables are"#,
        ),
        (
            "fd variable with a bad number",
            set("ENDLESS_FD_3x", "tcp-listener:x:{listener}"),
            r#""ENDLESS_FD_3x" has the reserved prefix ENDLESS_FD_"#,
        ),
        (
            "parent pid not a number",
            set("ENDLESS_PARENT_PID", "12ab"),
            r#"the value of "ENDLESS_PARENT_PID" is not a valid number: "12ab""#,
        ),
    ];
    for (label, (key, value), expected) in cases {
        // A real listener and readiness pipe at 3 and 4: only the variables are wrong.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let mut vars = handoff_vars(own_pid(), &listener, &writer);
        let value = value.map(|v| {
            v.replace("{listener}", &file_id(&listener))
                .replace("{ready}", &file_id(&writer))
        });
        match (vars.iter_mut().find(|(k, _)| *k == key), value) {
            (Some(slot), Some(value)) => slot.1 = value,
            (None, Some(value)) => vars.push((key, value)),
            (_, None) => vars.retain(|(k, _)| *k != key),
        }
        assert_refused(
            &server,
            label,
            &vars,
            vec![(3, Some(dup(&listener))), (4, Some(OwnedFd::from(writer)))],
            Some(OwnedFd::from(reader)),
            expected,
        );
    }
    still_serves_and_restarts(&server);
}

/// Bad input b: variables present but not meant for this process (they declare other
/// files than the listener and the pipe at fds 3 and 4, as a grandchild of a server sees
/// them: it inherits the variables, not the fds): the server warns, ignores them (neither
/// adopts the listener nor writes "ready" on the pipe), starts fresh on its own `--listen`
/// address, serves, and restarts.
pub fn variables_for_another_process(bin: &Path) {
    let decoy = TcpListener::bind("127.0.0.1:0").unwrap();
    let decoy_addr = decoy.local_addr().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    // The files the variables were meant for: another listener and another pipe.
    let (_other_reader, other_writer) = std::io::pipe().unwrap();
    let other_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut options = Options::default();
    for (k, v) in handoff_vars(own_pid(), &other_listener, &other_writer) {
        options = options.env(k, v);
    }
    let placements = vec![(3, Some(dup(&decoy))), (4, Some(OwnedFd::from(writer)))];
    let server = Server::start_with(bin, &options, |command| place_fds(command, placements));
    let pid = server.pid();

    let warning =
        server
            .group
            .stderr
            .wait_from("a warning about the inherited variables", 0, |l| {
                l.contains("WARN") && l.contains("ignoring the inherited")
            });
    assert!(
        warning.contains("not meant for this process"),
        "expected a warning about variables not meant for this process, got {warning:?}"
    );
    assert_ne!(
        server.endpoint(),
        &Endpoint::Tcp(decoy_addr),
        "the server adopted a listener that was not meant for it"
    );
    server.assert_serves(pid);
    // Nothing was written on the pipe it was not meant to use.
    set_nonblocking(&reader);
    let mut buf = [0u8; 64];
    let read = std::io::Read::read(&mut &reader, &mut buf);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the server wrote on a readiness pipe not meant for it: {read:?}"
    );
    // The decoy listener saw no connection: nobody accepts on it.
    decoy.set_nonblocking(true).unwrap();
    assert!(decoy.accept().is_err());

    still_serves_and_restarts(&server);
}

fn set_nonblocking(pipe: &std::io::PipeReader) {
    let flags = rustix::fs::fcntl_getfl(pipe).expect("F_GETFL");
    rustix::fs::fcntl_setfl(pipe, flags | OFlags::NONBLOCK).expect("F_SETFL");
}

/// Bad input c: an inherited fd that is closed, not a socket, or of the wrong kind, and a
/// readiness channel that is closed or not writable: the process exits non-zero with an
/// error naming the fd and the problem. A control with the right fds adopts the listener
/// and reports ready on the pipe, so the negative cases fail for the reason they name.
pub fn bad_inherited_fds(bin: &Path) {
    let server = Server::start(bin, &Options::default());

    // The control: everything right.
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let vars = handoff_vars(own_pid(), &listener, &writer);
        let group = start_adopter(
            &server,
            "a good handoff",
            &vars,
            vec![(3, Some(dup(&listener))), (4, Some(OwnedFd::from(writer)))],
        );
        drop(listener);
        let pid = group.leader();
        let message = read_to_end("the readiness line", OwnedFd::from(reader));
        assert_eq!(
            String::from_utf8_lossy(&message),
            format!("endless/1 ready {pid}\n"),
            "{}",
            group.dump()
        );
        let line = group
            .stdout
            .wait_from("the adopter to listen", 0, |l| parse_listening(l).is_some());
        let listening = parse_listening(&line).unwrap();
        assert_eq!((listening.addr, listening.pid), (addr.to_string(), pid));
        assert_eq!(
            ask(&Endpoint::Tcp(addr), "ping").unwrap(),
            (pid, "ping".to_owned())
        );
    }

    let pipe = || {
        let (reader, writer) = std::io::pipe().unwrap();
        (OwnedFd::from(reader), OwnedFd::from(writer))
    };
    let listener = || OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap());

    let (r, w) = pipe();
    // A declared fd that is closed is what a grandchild of a server sees (it inherits the
    // variables, not the fds): not an error, the variables are not meant for it. (The
    // runtime, built before `Endless::start`, takes the lowest free fds: a closed fd 3 may
    // be tokio's by the time the inherited fds are looked at; another file either way.)
    assert_ignored(&server, "fd 3 closed", vec![(3, None), (4, Some(w))], r);

    let file = fs::File::create(server.dir().join("not-a-socket")).unwrap();
    let (r, w) = pipe();
    assert_refused_placed(
        &server,
        "a file at fd 3",
        vec![(3, Some(OwnedFd::from(file))), (4, Some(w))],
        Some(r),
        r#"inherited fd 3 ("listen-0") is not a socket, but is declared as one"#,
    );

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (r, w) = pipe();
    assert_refused_placed(
        &server,
        "a UDP socket declared tcp-listener",
        vec![(3, Some(OwnedFd::from(udp))), (4, Some(w))],
        Some(r),
        r#"inherited fd 3 ("listen-0") is declared as tcp-listener but is udp"#,
    );

    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(peer.local_addr().unwrap()).unwrap();
    let (r, w) = pipe();
    assert_refused_placed(
        &server,
        "a TCP stream declared tcp-listener",
        vec![(3, Some(OwnedFd::from(stream))), (4, Some(w))],
        Some(r),
        r#"inherited fd 3 ("listen-0") is declared as tcp-listener but is tcp-stream"#,
    );

    let unix = UnixListener::bind(server.dir().join("other.sock")).unwrap();
    let (r, w) = pipe();
    assert_refused_placed(
        &server,
        "a Unix listener declared tcp-listener",
        vec![(3, Some(OwnedFd::from(unix))), (4, Some(w))],
        Some(r),
        r#"inherited fd 3 ("listen-0") is declared as tcp-listener but is unix-listener"#,
    );

    let (r, _w) = pipe();
    assert_ignored(
        &server,
        "readiness channel closed",
        vec![(3, Some(listener())), (4, None)],
        r,
    );

    let (r, _w) = pipe();
    assert_refused_placed(
        &server,
        "readiness channel not writable",
        vec![(3, Some(listener())), (4, Some(r))],
        None,
        "the readiness channel, fd 4 (ENDLESS_READY_FD), is not a pipe or socket open for writing",
    );

    still_serves_and_restarts(&server);
}

/// An inherited fd declared with the kind `other` (not checked: any fd will do) that the
/// parent did not pass: the process must not adopt it, nor report ready.
///
/// The trap: the runtime (built before `Endless::start`) reuses the free number for its own
/// epoll fd. Were that fd adopted as the entry, the process would report ready, then close
/// it as unclaimed, and tokio would abort ("unexpected error when polling the I/O driver:
/// Bad file descriptor") after the parent had handed over. The fd is not the declared file
/// (whatever it is, closed or the runtime's), so the variables are not meant for this
/// process: it starts fresh, and writes nothing on the readiness pipe.
pub fn closed_fd_declared_other_is_not_adopted(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let junk = TcpListener::bind("127.0.0.1:0").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let vars = vec![
        ("ENDLESS_VERSION", "2".to_owned()),
        ("ENDLESS_PARENT_PID", own_pid().to_string()),
        ("ENDLESS_FDS", "2".to_owned()),
        (
            "ENDLESS_FD_3",
            format!("tcp-listener:listen-0:{}", file_id(&listener)),
        ),
        ("ENDLESS_FD_4", format!("other:junk:{}", file_id(&junk))),
        ("ENDLESS_READY_FD", format!("5:{}", file_id(&writer))),
    ];
    let group = start_adopter(
        &server,
        "fd 4 (other) closed",
        &vars,
        vec![
            (3, Some(dup(&listener))),
            (4, None),
            (5, Some(OwnedFd::from(writer))),
        ],
    );
    let warning = group
        .stderr
        .wait_from("a warning about the inherited variables", 0, |l| {
            l.contains("WARN") && l.contains("ignoring the inherited")
        });
    assert!(warning.contains("fd 4"), "{warning:?}\n{}", group.dump());
    let line = group.stdout.wait_from("the fresh start to listen", 0, |l| {
        parse_listening(l).is_some()
    });
    let listening = parse_listening(&line).unwrap();
    assert_ne!(
        listening.addr,
        listener.local_addr().unwrap().to_string(),
        "it adopted the listener"
    );
    set_nonblocking(&reader);
    let read = std::io::Read::read(&mut &reader, &mut [0u8; 64]);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "it wrote on a readiness pipe not meant for it: {read:?}"
    );
    drop(group);
    still_serves_and_restarts(&server);
}

/// Bad input d: the executable is missing, then not executable, at restart time: each HUP
/// fails (logged), the server keeps serving with no fd leaked; restored, a HUP works.
pub fn executable_missing_or_not_executable(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let pid = server.pid();
    let baseline = server.settled_fd_count();

    let moved = server.dir().join("moved-away");
    fs::rename(server.exe(), &moved).unwrap();
    let line = server.hup_expecting_failure();
    assert!(line.contains("does not exist"), "{line}");
    server.wait_fd_count(pid, baseline);

    let contents = fs::read(&moved).unwrap();
    server.replace_exe(&contents, 0o644);
    let line = server.hup_expecting_failure();
    assert!(line.contains("is not executable"), "{line}");
    server.wait_fd_count(pid, baseline);

    server.restore_exe();
    still_serves_and_restarts(&server);
}

/// Bad input e: the new binary exits 1 before it is ready: the HUP fails (logged), the
/// failed child is reaped by the server (no zombie), no fd leaks; restored, a HUP works.
pub fn new_binary_exits_before_ready(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let pid = server.pid();
    let baseline = server.settled_fd_count();

    server.replace_exe(&sh_script("exit 1"), 0o755);
    for _ in 0..3 {
        let mark = server.group.stderr.len();
        let line = server.hup_expecting_failure();
        assert!(
            line.contains("exited with code 1") || line.contains("closed its readiness channel"),
            "{line}"
        );
        let child = spawned_child(&server, mark);
        server.group.wait_gone(child);
        assert_eq!(
            crate::proc_info(child),
            None,
            "the failed child {child} is not reaped"
        );
        server.wait_fd_count(pid, baseline);
    }

    server.restore_exe();
    still_serves_and_restarts(&server);
}

/// Bad input f: the new binary never becomes ready (`exec sleep 600`) with
/// `--upgrade-timeout 1`: it is killed and reaped after the timeout, the server keeps
/// serving with no fd leaked; restored, a HUP works.
pub fn new_binary_never_ready(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--upgrade-timeout").arg("1"));
    let pid = server.pid();
    let baseline = server.settled_fd_count();

    server.replace_exe(&sh_script("exec sleep 600"), 0o755);
    let mark = server.group.stderr.len();
    let hup = Instant::now();
    let line = server.hup_expecting_failure();
    assert!(line.contains("did not become ready in time"), "{line}");
    assert!(hup.elapsed() >= Duration::from_secs(1));
    let child = spawned_child(&server, mark);
    wait_for(
        format_args!("the sleeping child {child} to be killed and reaped"),
        DEADLINE,
        || crate::proc_info(child).is_none().then_some(()),
    );
    server.group.wait_settled(&[pid]);
    server.wait_fd_count(pid, baseline);

    server.restore_exe();
    still_serves_and_restarts(&server);
}

/// Bad input f, wrapped: the new binary is a script without `exec` that starts a `sleep`
/// (which inherits the listener and the readiness channel) and waits for it, with
/// `--upgrade-timeout 2`. At the timeout the script is killed with its process group, so the
/// `sleep` dies too (`SIGKILL`) and nothing is left in that group; the old generation keeps
/// serving. Once the service is stopped nothing holds the port: connecting is refused and a
/// fresh bind succeeds.
pub fn wrapper_never_ready(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--upgrade-timeout").arg("2"));
    let pid = server.pid();
    let Endpoint::Tcp(addr) = server.endpoint().clone() else {
        panic!("the default listener is TCP: {:?}", server.endpoint());
    };
    let stray_file = server.install_stray_wrapper();

    let mark = server.group.stderr.len();
    let line = server.hup_expecting_failure();
    assert!(line.contains("did not become ready in time"), "{line}");
    let child = spawned_child(&server, mark);
    let stray: u32 = wait_for("the script to write the pid of its sleep", DEADLINE, || {
        fs::read_to_string(&stray_file).ok()?.trim().parse().ok()
    });
    server.group.wait_gone(child);
    // Orphaned by the script, the `sleep` was reparented to the test process and reaped here.
    server.group.wait_gone(stray);
    assert_eq!(
        server.group.exit_of(stray),
        Some(Exit::Signal(Signal::KILL.as_raw())),
        "the script's sleep was killed with it"
    );
    wait_for(
        format_args!("nothing left in the process group of {child}"),
        DEADLINE,
        || {
            server.group.reap();
            crate::group_members(child).is_empty().then_some(())
        },
    );
    server.group.wait_settled(&[pid]);
    server.assert_serves(pid);

    // The service stops: no stray process keeps its listener.
    server.group.signal(pid, Signal::TERM);
    assert_eq!(server.group.wait_exit(pid), Exit::Code(0));
    server.group.wait_settled(&[]);
    wait_for(
        format_args!("connections to {addr} to be refused"),
        DEADLINE,
        || match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("a fresh start cannot bind {addr}: {e}"));
}

/// The new binary is the same wrapper script as in [`wrapper_never_ready`], but the
/// script is SIGKILLed by someone else (an operator, the OOM killer) before it is ready:
/// the old generation reaps it, kills what it left in its process group (its `sleep`,
/// which holds the listeners), and serves on alone. (Found by `bench/chaos.sh`: only a
/// child this process killed took its group with it.)
pub fn wrapper_killed_before_ready(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--upgrade-timeout").arg("60"));
    let pid = server.pid();
    let stray_file = server.install_stray_wrapper();

    let mark = server.group.stderr.len();
    server.group.signal(pid, Signal::HUP);
    let child = spawned_child(&server, mark);
    let stray: u32 = wait_for("the script to write the pid of its sleep", DEADLINE, || {
        fs::read_to_string(&stray_file).ok()?.trim().parse().ok()
    });
    crate::signal(child, Signal::KILL);
    let line = server.group.stderr.wait_from(
        format_args!("{pid} to report a failed restart"),
        mark,
        |l| l.contains("restart failed"),
    );
    assert!(line.contains("before it was ready"), "{line}");
    server.group.wait_gone(stray);
    assert_eq!(
        server.group.exit_of(stray),
        Some(Exit::Signal(Signal::KILL.as_raw())),
        "the script's sleep was killed with it"
    );
    server
        .group
        .stderr
        .wait_from("the group kill to be logged", mark, |l| {
            l.contains("killed what the child left in its process group")
        });
    server.group.wait_settled(&[pid]);
    server.assert_serves(pid);
    assert_eq!(server.pid_file_pid(), Some(pid), "the pid file");
    // A later restart (into the real binary) works.
    server.replace_exe(&fs::read(server.real_binary()).unwrap(), 0o755);
    let new = server.restart();
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

/// Bad input g: 100 HUPs in a burst, twice: a client keeps getting answers throughout, and
/// each burst ends with exactly one new generation serving, alone, with no zombie.
pub fn hup_burst(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let endpoint = server.endpoint().clone();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
        thread::spawn(move || {
            let mut answers = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match ask(&endpoint, "ping") {
                    Ok((pid, echo)) if echo == "ping" => {
                        answers.push(pid);
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => errors.push(format!("bad answer {other:?}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (answers, errors)
        })
    };
    // Answers go on: `at_least` more than `n` of them, while the client runs.
    let answers_after = |n: usize| {
        wait_for("the client to get answers", DEADLINE, || {
            assert!(!client.is_finished(), "the client thread ended");
            (ok.load(Ordering::SeqCst) > n).then_some(())
        });
    };
    answers_after(0);

    let mut generations = vec![server.pid()];
    for round in 0..2 {
        let old = server.pid();
        for _ in 0..100 {
            server.group.signal(old, Signal::HUP);
        }
        let new = wait_for(
            format_args!("round {round}: a new generation after {old}"),
            DEADLINE,
            || server.pid_file_pid().filter(|&p| p != old),
        );
        server.set_pid(new);
        server.group.stdout.wait_from(
            format_args!("round {round}: {new} to announce its listener"),
            0,
            |l| parse_listening(l).is_some_and(|l| l.pid == new),
        );
        assert_eq!(server.group.wait_exit(old), Exit::Code(0), "round {round}");
        server.group.wait_settled(&[new]);
        server.assert_serves(new);
        generations.push(new);
        answers_after(ok.load(Ordering::SeqCst));
        assert_eq!(
            server.group.announced_pids(),
            generations,
            "round {round}: one burst, one new generation"
        );
    }

    stop.store(true, Ordering::SeqCst);
    let (answers, errors) = client.join().unwrap();
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|p| generations.contains(p)),
        "answered by a process that is no generation: {answers:?}"
    );
    still_serves_and_restarts(&server);
}

/// Bad input h: TERM while a child is starting (a script that sleeps, in a process of its
/// own, before it `exec`s the real binary): the child is killed with its process group (the
/// `sleep` too), the old process drains and exits 0, the pid file is removed, the real
/// binary never runs, and nothing of the group is left.
pub fn term_while_child_starting(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    let script = format!("sleep 600\nexec {} \"$@\"", sh_quote(server.real_binary()));
    server.replace_exe(&sh_script(&script), 0o755);

    let mark = server.group.stderr.len();
    server.group.signal(old, Signal::HUP);
    let child = spawned_child(&server, mark);
    server.group.signal(old, Signal::TERM);

    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    server.group.wait_gone(child);
    if let Some(exit) = server.group.exit_of(child) {
        // Reparented to the test process, and reaped here: it must have been killed.
        assert_eq!(
            exit,
            Exit::Signal(Signal::KILL.as_raw()),
            "the starting child"
        );
    }
    // The script's `sleep 600` was killed with it (its process group): nothing is left (a
    // child that was not killed would `exec` the real server, which never exits).
    server.group.wait_settled(&[]);
    assert_eq!(server.group.announced_pids(), [old]);
    server
        .group
        .stderr
        .wait_from("the cancelled upgrade to be logged", mark, |l| {
            l.contains("cancelled by a stop request")
        });
    assert_eq!(server.pid_file_pid(), None, "the pid file is removed");
}

/// Issue 15.2, an orphaned successor serves: the old generation dies (`SIGKILL`) while its
/// successor starts (a script that waits for a gate file before it `exec`s the real
/// binary). Re-parented to the test process (a subreaper), the successor sees another
/// parent pid than the one that spawned it, but the fds it holds are the declared files: it
/// adopts the listener, serves on the same address (a connection made while nobody
/// accepted is answered by it: the port never refused), writes its own pid in the pid
/// file, and says that it serves alone; that its readiness report reaches no one is not
/// fatal. A later restart from it works.
pub fn orphaned_successor_serves(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    server.assert_serves(old);
    let gate = server.install_gated_exe();

    let mark = server.group.stderr.len();
    server.group.signal(old, Signal::HUP);
    let successor = spawned_child(&server, mark);
    server.group.signal(old, Signal::KILL);
    assert_eq!(
        server.group.wait_exit(old),
        Exit::Signal(Signal::KILL.as_raw()),
        "the old generation"
    );
    assert!(is_alive(successor), "the successor outlived its parent");
    // Nobody accepts now, but the successor holds the listener: the connection waits in its
    // backlog.
    let mut queued = server.connect();
    server.restore_exe();
    fs::write(&gate, b"").expect("open the gate");

    server.wait_pid_file(successor);
    let listening = server.listening(successor);
    assert_eq!(
        Endpoint::parse(&listening[0].addr),
        *server.endpoint(),
        "the successor serves on the inherited address"
    );
    server.set_pid(successor);
    assert_eq!(
        queued
            .ask("queued")
            .expect("the queued connection is answered"),
        (successor, "queued".to_owned())
    );
    // Closed, or the next restart would wait for it to drain.
    drop(queued);
    server.assert_serves(successor);
    let gone = server.group.stderr.wait_from(
        "the successor to say its parent is not its spawner",
        mark,
        |l| l.contains("WARN") && l.contains("is not the generation that spawned it"),
    );
    assert!(has_field(&gone, "spawned_by", old), "{gone:?}");
    assert!(
        server
            .group
            .stderr
            .find_from(mark, |l| l.contains("ignoring the inherited"))
            .is_none(),
        "the successor ignored its inherited fds"
    );
    assert!(
        server
            .group
            .stderr
            .find_from(mark, |l| l.contains("ERROR"))
            .is_none(),
        "an error was logged"
    );
    assert_eq!(server.pid_file_pid(), Some(successor));
    server.group.wait_settled(&[successor]);
    still_serves_and_restarts(&server);
}

// ---- 4. the new code runs --------------------------------------------------------------------

/// The binary on disk is replaced by a script that `exec`s the real binary with
/// `ECHO_VERSION=2`: the old process still runs the old code, and after a HUP the new pid
/// answers `version` with 2.
pub fn replaced_binary_runs(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    assert_eq!(server.ask("version"), (old, "1".to_owned()));

    let script = format!(
        "ECHO_VERSION=2 exec {} \"$@\"",
        sh_quote(server.real_binary())
    );
    server.replace_exe(&sh_script(&script), 0o755);
    assert_eq!(server.ask("version"), (old, "1".to_owned()));

    let new = server.restart();
    assert_eq!(server.ask("version"), (new, "2".to_owned()));
    server.group.wait_settled(&[new]);
}

/// A deploy that switches a `current -> releases/vN` symlink: the server was started as
/// `current/<binary>`; after the switch to a release whose binary runs the real server with
/// `ECHO_VERSION=2`, a HUP runs the new release (the path is kept as the operator named it,
/// symlinks not resolved at start-up).
pub fn symlink_switch_runs_new_release(bin: &Path) {
    let server = Server::start(bin, &Options::default().symlinked_release());
    let old = server.pid();
    assert_eq!(server.ask("version"), (old, "1".to_owned()));

    let script = format!(
        "ECHO_VERSION=2 exec {} \"$@\"",
        sh_quote(server.real_binary())
    );
    server.switch_release("v2", &sh_script(&script));
    let new = server.restart();
    assert_eq!(server.ask("version"), (new, "2".to_owned()));
    server.group.wait_settled(&[new]);
}

// ---- 5. no listener leaks into subprocesses -----------------------------------------------

/// The sockets a subprocess of `pid` sees, from the server's `fds` answer
/// (`<target> -> <fd>` entries separated by ` | `), other than stdio.
fn subprocess_sockets(server: &Server, pid: u32) -> Vec<String> {
    let (answered, listing) = server.ask("fds");
    assert_eq!(answered, pid);
    let entries: Vec<(&str, i32)> = listing
        .split(" | ")
        .filter_map(|e| {
            let (target, fd) = e.split_once(" -> ")?;
            Some((target, fd.trim().parse().ok()?))
        })
        .collect();
    assert!(
        [0, 1, 2]
            .iter()
            .all(|n| entries.iter().any(|(_, fd)| fd == n)),
        "the subprocess listing is not usable: {listing:?}"
    );
    entries
        .into_iter()
        .filter(|(target, fd)| *fd > 2 && target.starts_with("socket:"))
        .map(|(target, fd)| format!("{fd} -> {target}"))
        .collect()
}

/// A subprocess of the server (`ls -l /proc/self/fd`) sees no socket but stdio, before and
/// after restarts, although the server itself holds its listener.
pub fn subprocess_sees_no_listener(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    for _ in 0..3 {
        let pid = server.pid();
        let own_sockets = fds(pid)
            .into_iter()
            .filter(|(_, t)| t.starts_with("socket:"))
            .count();
        assert!(own_sockets > 0, "the server holds no socket?");
        assert_eq!(subprocess_sockets(&server, pid), Vec::<String>::new());
        server.restart();
    }
    assert_eq!(
        subprocess_sockets(&server, server.pid()),
        Vec::<String>::new()
    );
}

// ---- Unix sockets ----------------------------------------------------------------------------

/// A restart on a Unix socket: the new pid answers on the same path, the socket file (the
/// same inode: nobody bound it anew) is still there after the old process exits.
pub fn unix_socket_restart(bin: &Path) {
    let server = Server::start(bin, &Options::default().unix());
    let Endpoint::Unix(path) = server.endpoint().clone() else {
        panic!("not a Unix socket: {}", server.endpoint());
    };
    let inode = fs::metadata(&path).unwrap().ino();
    server.assert_serves(server.pid());
    for _ in 0..3 {
        let old = server.pid();
        let new = server.restart();
        assert!(!is_alive(old));
        let meta = fs::metadata(&path).expect("the socket file is still there");
        assert_eq!(meta.ino(), inode, "the socket file was replaced");
        server.assert_serves(new);
        server.group.wait_settled(&[new]);
    }
}

// ---- more: unclaimed fds, restarts under load -------------------------------------------------

/// Inherited fds nobody claims are closed once the new generation is ready: a new version
/// that drops the second of two listeners (a wrapper script that runs the real binary with
/// only one `--listen`) does not keep the dropped listener open, so once the old generation
/// is gone, connecting to it is refused rather than left hanging in a backlog nobody
/// accepts from.
pub fn unclaimed_listener_is_closed(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--listen").arg("127.0.0.1:0"));
    let old = server.pid();
    let line = server
        .group
        .stdout
        .wait_from("the second listener", 0, |l| {
            parse_listening(l).is_some_and(|l| l.name == "listen-1" && l.pid == old)
        });
    let second: std::net::SocketAddr = parse_listening(&line).unwrap().addr.parse().unwrap();
    assert_eq!(
        ask(&Endpoint::Tcp(second), "ping").unwrap(),
        (old, "ping".to_owned())
    );

    let script = format!(
        "exec {} --listen 127.0.0.1:0 --pid-file {}",
        sh_quote(server.real_binary()),
        sh_quote(server.pid_file())
    );
    server.replace_exe(&sh_script(&script), 0o755);
    let new = server.restart();
    server.assert_serves(new);
    let claimed = server
        .group
        .stderr
        .wait_from("a log of the unclaimed fds", 0, |l| {
            l.contains("closed inherited fds nobody claimed")
        });
    assert!(
        claimed.contains("listen-1"),
        "no log of closing listen-1: {claimed:?}"
    );
    wait_for(
        format_args!("{second} (listen-1, unclaimed by {new}) to refuse connections"),
        DEADLINE,
        || match TcpStream::connect(second) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            Err(e) => panic!("connect to {second}: {e}"),
            Ok(_) => {
                assert!(
                    !is_alive(new) || server.group.live() != [new],
                    "{second} still accepts connections into a backlog although only {new} \
                     is left, which did not claim it; its fds: {:#?}",
                    fds(new)
                );
                None
            }
        },
    );
    still_serves_and_restarts(&server);
}

/// Restarts while clients keep connecting: `clients` threads each open connections in a
/// loop (one request each); across `restarts` restarts not one connection fails.
pub fn restarts_under_load(bin: &Path, clients: usize, restarts: usize) {
    let server = Server::start(bin, &Options::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            let endpoint = server.endpoint().clone();
            thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match ask(&endpoint, "ping") {
                        Ok((_, echo)) if echo == "ping" => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(other) => errors.push(format!("bad answer {other:?}")),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                errors
            })
        })
        .collect();
    for _ in 0..restarts {
        let before = ok.load(Ordering::SeqCst);
        wait_for("answers before the restart", DEADLINE, || {
            (ok.load(Ordering::SeqCst) > before).then_some(())
        });
        server.restart();
    }
    stop.store(true, Ordering::SeqCst);
    let errors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "{} failed requests of {}: {:?}",
        errors.len(),
        errors.len() + ok.load(Ordering::SeqCst),
        &errors[..errors.len().min(10)]
    );
    server.group.wait_settled(&[server.pid()]);
}

// ---- more: the end of a drain ------------------------------------------------------------------

/// Waits until the server closes `conn` (end of file or reset, not a timeout).
fn wait_closed(mut conn: crate::Conn, what: &str) {
    match conn.recv() {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) => {}
        other => panic!("{what}: expected the server to close the connection, got {other:?}"),
    }
}

/// `--drain-timeout 1`: a connection that stays open in the old generation is really
/// closed at the deadline (the client sees it closed), and the old process then exits 0.
pub fn drain_deadline_closes_what_is_left(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--drain-timeout").arg("1"));
    let old = server.pid();
    let mut idle = server.connect();
    assert_eq!(idle.ask("hello").unwrap(), (old, "hello".to_owned()));
    let hup = Instant::now();
    let new = server.hup();
    server.assert_serves(new);
    wait_closed(idle, "the idle connection at the drain deadline");
    assert!(
        hup.elapsed() >= Duration::from_secs(1),
        "closed before the deadline"
    );
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    server.group.wait_settled(&[new]);
}

/// `SIGUSR2` while draining (no drain deadline) closes what is left at once: the client
/// sees its connection closed, the old process exits 0.
pub fn hammer_closes_what_is_left(bin: &Path) {
    let server = Server::start(bin, &Options::default().arg("--drain-timeout").arg("never"));
    let old = server.pid();
    let mut idle = server.connect();
    assert_eq!(idle.ask("hello").unwrap(), (old, "hello".to_owned()));
    let new = server.hup();
    assert!(is_alive(old), "the old generation left a connection behind");
    server.group.signal(old, Signal::USR2);
    wait_closed(idle, "the idle connection after the hammer");
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    server.assert_serves(new);
    server.group.wait_settled(&[new]);
}

/// `SIGTERM` stops gracefully: a request in flight is answered, then the process exits 0
/// once its client hangs up, removes its pid file, and nothing of the group is left.
pub fn term_stops_gracefully(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let pid = server.pid();
    let mut inflight = server.connect();
    assert_eq!(inflight.ask("hello").unwrap(), (pid, "hello".to_owned()));
    inflight.send("sleep 500").unwrap();
    server.group.signal(pid, Signal::TERM);
    assert_eq!(inflight.recv().unwrap(), (pid, "sleep 500".to_owned()));
    assert!(is_alive(pid), "it left with a connection open");
    drop(inflight);
    assert_eq!(server.group.wait_exit(pid), Exit::Code(0));
    assert_eq!(server.pid_file_pid(), None, "the pid file is removed");
    server.group.wait_settled(&[]);
}

// ---- more: UDP, IPv6, several listeners ---------------------------------------------------

/// Sets a flag when dropped: stops a client thread however the test ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How many answers in a row by the new generation show that the old one no longer
/// receives on a UDP socket (while both do, each datagram goes to either, though not evenly:
/// the new one may answer dozens in a row while the old one still receives).
const UDP_STREAK: usize = 20;

/// How many datagrams, after [`UDP_STREAK`], must all be answered by the new generation
/// while the old one is still alive: an old generation that keeps receiving (answering a
/// few percent of them) fails this.
const UDP_CHECKED: usize = 500;

/// Polls `endpoint` (`ping`, a datagram on UDP, resent if dropped) until `new` answers
/// [`UDP_STREAK`] times in a row: during a handover both generations receive on a UDP
/// socket, until the old one stops. An answer by any other pid than `old` or `new` fails.
fn wait_served_only_by(endpoint: &Endpoint, old: u32, new: u32) {
    let mut streak = 0;
    let mut by_old = 0;
    let by_old = wait_for(
        format_args!("{endpoint} to be answered by {new} only, {UDP_STREAK} times in a row"),
        DEADLINE,
        || {
            let (pid, echo) = ask(endpoint, "ping")
                .unwrap_or_else(|e| panic!("ask at {endpoint} during the handover: {e}"));
            assert_eq!(echo, "ping", "the answer at {endpoint}");
            if pid == new {
                streak += 1;
            } else if pid == old {
                streak = 0;
                by_old += 1;
            } else {
                panic!("{endpoint} answered by {pid}, neither the old {old} nor the new {new}");
            }
            (streak >= UDP_STREAK).then_some(by_old)
        },
    );
    // Shown only if the test fails.
    eprintln!("{endpoint}: {by_old} answer(s) by the old {old} after the handover began");
}

/// Asserts that the next [`UDP_CHECKED`] requests at `endpoint` are all answered by `new`.
fn assert_served_only_by(endpoint: &Endpoint, new: u32, what: &str) {
    let answers: Vec<u32> = (0..UDP_CHECKED)
        .map(|_| {
            let (pid, echo) =
                ask(endpoint, "ping").unwrap_or_else(|e| panic!("{what}: ask at {endpoint}: {e}"));
            assert_eq!(echo, "ping", "{what}: the answer at {endpoint}");
            pid
        })
        .collect();
    let others: Vec<&u32> = answers.iter().filter(|&&p| p != new).collect();
    assert!(
        others.is_empty(),
        "{what}: {} of {UDP_CHECKED} requests at {endpoint} answered by another process than \
         {new}: {others:?}",
        others.len()
    );
}

/// `ping` at `endpoint` must be answered by `pid`; `what` says when, for a failure.
fn assert_answered_by(endpoint: &Endpoint, pid: u32, what: impl std::fmt::Display) {
    let answer = ask(endpoint, "ping").unwrap_or_else(|e| panic!("{what}: ask at {endpoint}: {e}"));
    assert_eq!(
        answer,
        (pid, "ping".to_owned()),
        "{what}: the answer at {endpoint}"
    );
}

/// The `(name, addr)` of each listener `pid` announced.
fn addresses(server: &Server, pid: u32) -> Vec<(String, String)> {
    server
        .listening(pid)
        .into_iter()
        .map(|l| (l.name, l.addr))
        .collect()
}

/// The first generation's `(name, addr)` of each listener.
fn first_addresses(server: &Server) -> Vec<(String, String)> {
    server
        .first_listeners()
        .iter()
        .map(|l| (l.name.clone(), l.addr.clone()))
        .collect()
}

/// A restart on a UDP socket (`--listen udp:127.0.0.1:0`), three times: datagrams are
/// answered by the serving generation; after a HUP, once the new generation is ready (pid
/// file), datagrams are answered by the new pid (polled: both generations receive on the
/// socket until the old one stops); the old process exits 0; the new one announces the same
/// port and answers from it. A client sending datagrams throughout gets every one answered
/// (resent if dropped), by one of the generations.
pub fn udp_socket_restart(bin: &Path) {
    let server = Server::start(bin, &Options::default().listen("udp:127.0.0.1:0"));
    let endpoint = server.endpoint().clone();
    let Endpoint::Udp(addr) = endpoint else {
        panic!("not a UDP socket: {endpoint}");
    };
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let first = server.pid();
    for _ in 0..3 {
        server.assert_serves(first);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_client = StopOnDrop(Arc::clone(&stop));
    let ok = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
        thread::spawn(move || {
            let (mut answers, mut errors) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let line = format!("datagram {n}");
                match crate::udp_ask(addr, &line, DEADLINE) {
                    Ok((pid, echo)) if echo == line => {
                        answers.push(pid);
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => errors.push(format!("bad answer to {line:?}: {other:?}")),
                    Err(e) => {
                        errors.push(format!("{line:?}: {e}"));
                        thread::sleep(crate::POLL);
                    }
                }
            }
            (answers, errors)
        })
    };
    let answers_after = |n: usize| {
        wait_for("the UDP client to get answers", DEADLINE, || {
            assert!(!client.is_finished(), "the client thread ended");
            (ok.load(Ordering::SeqCst) > n).then_some(())
        });
    };

    let mut generations = vec![first];
    for round in 0..3 {
        let old = server.pid();
        answers_after(ok.load(Ordering::SeqCst));
        // Returns once the pid file names the new generation and it announced its socket.
        let new = server.hup();
        wait_served_only_by(&endpoint, old, new);
        assert_eq!(
            server.group.wait_exit(old),
            Exit::Code(0),
            "round {round}: the old generation {old}"
        );
        // The old one is gone: every datagram is the new one's.
        assert_served_only_by(
            &endpoint,
            new,
            &format!("round {round}, after {old} exited"),
        );
        assert_eq!(
            addresses(&server, new),
            [("listen-0".to_owned(), format!("udp:{addr}"))],
            "round {round}: the new generation's socket"
        );
        server.group.wait_settled(&[new]);
        generations.push(new);
        answers_after(ok.load(Ordering::SeqCst));
    }

    stop.store(true, Ordering::SeqCst);
    let (answers, errors) = client.join().unwrap();
    assert!(errors.is_empty(), "failed datagrams: {errors:?}");
    assert!(
        answers.iter().all(|p| generations.contains(p)),
        "answered by a process that is no generation ({generations:?}): {answers:?}"
    );
    assert_eq!(server.group.announced_pids(), generations);
}

/// A restart on IPv6 loopback (`--listen [::1]:0`, and `udp:[::1]:0` as a second
/// listener), three times: the new pid answers on the same addresses, the old one exits 0.
/// Skipped, with a note, where this process cannot bind `[::1]:0`.
pub fn ipv6_listener_restart(bin: &Path) {
    if let Err(e) = TcpListener::bind("[::1]:0").and_then(|_| UdpSocket::bind("[::1]:0").map(drop))
    {
        eprintln!("note: ipv6_listener_restart skipped: cannot bind [::1]:0 here: {e}");
        return;
    }
    let server = Server::start(
        bin,
        &Options::default().listen("[::1]:0").listen("udp:[::1]:0"),
    );
    let endpoints = server.endpoints();
    let [tcp, udp] = endpoints.as_slice() else {
        panic!("two listeners expected: {endpoints:?}");
    };
    assert!(
        matches!(tcp, Endpoint::Tcp(a) if a.is_ipv6() && a.ip().is_loopback() && a.port() != 0),
        "{tcp}"
    );
    assert!(
        matches!(udp, Endpoint::Udp(a) if a.is_ipv6() && a.ip().is_loopback() && a.port() != 0),
        "{udp}"
    );
    let announced = first_addresses(&server);
    let first = server.pid();
    for endpoint in [tcp, udp] {
        assert_answered_by(endpoint, first, "the first generation");
    }

    for round in 0..3 {
        let old = server.pid();
        let new = server.hup();
        // The old generation stopped accepting: every new connection is the new one's.
        assert_answered_by(tcp, new, format_args!("round {round}, after the handover"));
        wait_served_only_by(udp, old, new);
        assert_eq!(
            server.group.wait_exit(old),
            Exit::Code(0),
            "round {round}: the old generation {old}"
        );
        assert_eq!(addresses(&server, new), announced, "round {round}");
        for endpoint in [tcp, udp] {
            assert_answered_by(endpoint, new, format_args!("round {round}, {old} gone"));
        }
        server.group.wait_settled(&[new]);
    }
}

/// `bin` started with a TCP, a Unix and a UDP listener, and their endpoints in that order.
fn with_tcp_unix_udp(bin: &Path) -> (Server, [Endpoint; 3]) {
    let server = Server::start(
        bin,
        &Options::default()
            .listen("127.0.0.1:0")
            .listen("unix:s.sock")
            .listen("udp:127.0.0.1:0"),
    );
    let endpoints: [Endpoint; 3] = server
        .endpoints()
        .try_into()
        .unwrap_or_else(|e| panic!("three listeners expected: {e:?}"));
    (server, endpoints)
}

/// One process with a TCP, a Unix and a UDP listener at once, three restarts. Each time a
/// TCP connection to the old generation stays open across the HUP, so that the old process
/// drains while the new one serves: new connections on TCP and Unix are the new one's as
/// soon as the old one stopped accepting; datagrams are the new one's once the old one
/// stops receiving, which it does although it is still alive; the held connection is
/// still answered by the old pid; once it is closed the old process exits 0. The new
/// generation announces the same addresses (the Unix socket file is the same inode) and,
/// settled, has as many fds as the first one.
pub fn several_listeners_restart(bin: &Path) {
    let (server, [tcp, unix, udp]) = with_tcp_unix_udp(bin);
    let (tcp, unix, udp) = (&tcp, &unix, &udp);
    assert!(matches!(tcp, Endpoint::Tcp(_)), "{tcp}");
    assert!(matches!(udp, Endpoint::Udp(_)), "{udp}");
    let Endpoint::Unix(path) = unix else {
        panic!("not a Unix socket: {unix}");
    };
    let inode = fs::metadata(path).unwrap().ino();
    let announced = first_addresses(&server);
    let all = [tcp, unix, udp];

    let first = server.pid();
    for endpoint in all {
        assert_answered_by(endpoint, first, "the first generation");
    }
    let baseline = server.settled_fd_count();
    server.group.wait_settled(&[first]);

    for round in 0..3 {
        let old = server.pid();
        let mut held = crate::Conn::open(tcp)
            .unwrap_or_else(|e| panic!("round {round}: connect to {tcp}: {e}"));
        assert_eq!(
            held.ask("hello")
                .unwrap_or_else(|e| panic!("round {round}: ask at {tcp}: {e}")),
            (old, "hello".to_owned())
        );

        let new = server.hup();
        for endpoint in [tcp, unix] {
            assert_answered_by(
                endpoint,
                new,
                format_args!("round {round}, after the handover"),
            );
        }
        wait_served_only_by(udp, old, new);
        // The old generation, still alive, no longer receives.
        assert_served_only_by(udp, new, &format!("round {round}, while {old} drains"));
        assert!(
            is_alive(old),
            "round {round}: the old generation {old} left with a connection open"
        );
        assert_eq!(
            held.ask("still")
                .unwrap_or_else(|e| panic!("round {round}: ask on the held connection: {e}")),
            (old, "still".to_owned()),
            "round {round}: the held connection"
        );

        drop(held);
        assert_eq!(
            server.group.wait_exit(old),
            Exit::Code(0),
            "round {round}: the old generation {old}"
        );
        assert_eq!(addresses(&server, new), announced, "round {round}");
        let meta = fs::metadata(path).expect("the socket file is still there");
        assert_eq!(
            meta.ino(),
            inode,
            "round {round}: the socket file was replaced"
        );
        for endpoint in all {
            assert_answered_by(endpoint, new, format_args!("round {round}, {old} gone"));
        }
        server.group.wait_settled(&[new]);
        server.wait_fd_count(new, baseline);
    }
}

// ---- staged upgrades ------------------------------------------------------------------------

/// Stages a new generation of `server` (running the binary now installed, which answers
/// `version` with `2`) beside the serving one with `SIGUSR1`, waits until it is ready and
/// until both answer new connections; returns its pid.
fn stage_beside(server: &Server) -> u32 {
    let old = server.pid();
    let script = format!(
        "ECHO_VERSION=2 exec {} \"$@\"",
        sh_quote(server.real_binary())
    );
    server.replace_exe(&sh_script(&script), 0o755);
    let mark = server.group.stderr.len();
    server.group.signal(old, Signal::USR1);
    let staged = spawned_child(server, mark);
    wait_staged(server, mark);
    // Both accept on the same socket: new connections go to one or the other.
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        format_args!("both {old} and {staged} to answer new connections"),
        DEADLINE,
        || {
            seen.insert(server.ask("version"));
            let both =
                seen.contains(&(old, "1".to_owned())) && seen.contains(&(staged, "2".to_owned()));
            both.then_some(())
        },
    );
    assert!(is_alive(old), "the old generation left while staged");
    assert_eq!(
        server.pid_file_pid(),
        Some(staged),
        "the staged generation, ready, wrote the pid file"
    );
    staged
}

/// A staged upgrade committed: `SIGUSR1` starts the new generation beside the old one and
/// both serve; `SIGQUIT` (commit) makes the old one stop accepting, drain and exit 0, and
/// from then on only the new one answers.
pub fn staged_upgrade_committed(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    let staged = stage_beside(&server);
    let mut held = server.connect();
    let held_by = held.ask("held").unwrap().0;

    server.group.signal(old, Signal::QUIT);
    wait_served_only_by(server.endpoint(), old, staged);
    assert_eq!(server.ask("version"), (staged, "2".to_owned()));
    // A connection the old generation had stays with it until the client is done.
    assert_eq!(held.ask("still").unwrap().0, held_by);
    drop(held);
    assert_eq!(server.group.wait_exit(old), Exit::Code(0));
    server.set_pid(staged);
    server.group.wait_settled(&[staged]);
    assert_eq!(server.pid_file_pid(), Some(staged));
}

/// A staged upgrade rolled back: after `SIGUSR1`, `SIGWINCH` (rollback) to the old process
/// stops the new one gracefully (it exits 0) and the old one serves alone again, names
/// itself in the pid file again, and can be restarted later.
pub fn staged_upgrade_rolled_back(bin: &Path) {
    let server = Server::start(bin, &Options::default());
    let old = server.pid();
    let staged = stage_beside(&server);
    server.restore_exe();

    let mark = server.group.stderr.len();
    server.group.signal(old, Signal::WINCH);
    // Its parent reaps it, and says how it ended: drained, not killed.
    let exited = server
        .group
        .stderr
        .wait_from("the rolled-back generation to exit", mark, |l| {
            l.contains("the rolled-back generation exited") && has_field(l, "pid", staged)
        });
    assert!(
        exited.contains("exited with code 0"),
        "the rolled-back generation did not stop cleanly: {exited}"
    );
    server.wait_pid_file(old);
    for _ in 0..10 {
        assert_eq!(server.ask("version"), (old, "1".to_owned()));
    }
    still_serves_and_restarts(&server);
}

/// A pid file left by a crash (naming a process that is gone) does not block start-up: the
/// server overwrites it once ready, and restarts as usual.
pub fn stale_pid_file_is_overwritten(bin: &Path) {
    let server = Server::start_with(bin, &Options::default(), |command| {
        let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
        let path = args
            .iter()
            .position(|a| a == "--pid-file")
            .and_then(|i| args.get(i + 1))
            .expect("the harness passes --pid-file");
        // Above any pid Linux hands out (pid_max is at most 2^22).
        fs::write(path, "99999999\n").expect("write a stale pid file");
    });
    let pid = server.pid();
    server.wait_pid_file(pid);
    server.assert_serves(pid);
    still_serves_and_restarts(&server);
}

// ---- socket activation ------------------------------------------------------------------------

/// Socket activation as systemd does it, with the test in systemd's place: a TCP listener
/// the test bound at fd 3, `LISTEN_FDS=1`, `LISTEN_FDNAMES=listen-0` and `LISTEN_PID` set
/// to the server's own pid (by a shell that then `exec`s it). The server serves on that
/// socket instead of binding its `--listen 127.0.0.1:0`; a restart passes it on (the new
/// generation answers on it, the `LISTEN_*` variables are not passed to it), and the old
/// one exits 0.
pub fn socket_activation(bin: &Path) {
    let activated = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = activated.local_addr().unwrap();
    let dir = crate::TempDir::new("socket-activation");
    let exe = dir.path().join("server");
    crate::install_copy(bin, &exe);
    let mut command = Group::command(Path::new("/bin/sh"));
    command
        .current_dir(dir.path())
        .arg("-c")
        .arg(
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=listen-0; \
             export LISTEN_PID LISTEN_FDS LISTEN_FDNAMES; exec \"$0\" \"$@\"",
        )
        .arg(&exe)
        .args(["--listen", "127.0.0.1:0"]);
    place_fds(&mut command, vec![(3, Some(dup(&activated)))]);
    drop(activated);
    let group = Group::spawn("socket-activated", command);
    let first = group.leader();
    let listening = wait_for("the activated server to listen", DEADLINE, || {
        group.listening(first, 1)
    });
    assert_eq!(
        listening[0].addr,
        addr.to_string(),
        "the server did not take the activated socket"
    );
    let endpoint = Endpoint::Tcp(addr);
    assert_answered_by(&endpoint, first, "the activated server");

    group.signal(first, Signal::HUP);
    let new = wait_for("a new generation to listen", DEADLINE, || {
        group.announced_pids().into_iter().find(|&p| p != first)
    });
    let listening = wait_for("the new generation to listen", DEADLINE, || {
        group.listening(new, 1)
    });
    assert_eq!(listening[0].addr, addr.to_string(), "the new generation");
    wait_served_only_by(&endpoint, first, new);
    assert_eq!(group.wait_exit(first), Exit::Code(0));
    let environ = fs::read(format!("/proc/{new}/environ")).unwrap_or_default();
    assert!(
        !environ
            .split(|&b| b == 0)
            .any(|var| var.starts_with(b"LISTEN_")),
        "the new generation got systemd's variables"
    );
    group.signal(new, Signal::TERM);
    assert_eq!(group.wait_exit(new), Exit::Code(0));
}

// ---- interop: one runtime's build hands over to another's ------------------------------------

/// The application built on one runtime (`first`, answering `runtime` with `first_rt`) hands
/// its TCP, Unix and UDP listeners over to a build on another runtime installed at the same
/// path (`second`), and back: the inheritance protocol is endless-unix's, whatever the
/// adapter. Each generation keeps the same sockets (addresses, socket file), a connection
/// held across each handover stays with its generation, and the old one exits 0.
pub fn interop(first: (&Path, &str), second: (&Path, &str)) {
    let (server, [tcp, unix, udp]) = with_tcp_unix_udp(first.0);
    let (tcp, unix, udp) = (&tcp, &unix, &udp);
    let announced = first_addresses(&server);
    assert_eq!(server.ask("runtime"), (server.pid(), first.1.to_owned()));

    for (round, (bin, runtime)) in [second, first, second].into_iter().enumerate() {
        let old = server.pid();
        let mut held = crate::Conn::open(tcp).expect("connect");
        assert_eq!(held.ask("hello").unwrap(), (old, "hello".to_owned()));

        server.replace_exe(&fs::read(bin).expect("read the other build"), 0o755);
        let new = server.hup();
        assert_eq!(
            server.ask("runtime"),
            (new, runtime.to_owned()),
            "round {round}: the new generation runs the build now installed"
        );
        for endpoint in [tcp, unix] {
            assert_answered_by(endpoint, new, format_args!("round {round}"));
        }
        wait_served_only_by(udp, old, new);
        assert_eq!(
            held.ask("still").unwrap(),
            (old, "still".to_owned()),
            "round {round}: the held connection"
        );
        drop(held);
        assert_eq!(server.group.wait_exit(old), Exit::Code(0), "round {round}");
        assert_eq!(addresses(&server, new), announced, "round {round}");
        server.group.wait_settled(&[new]);
    }
}

// ---- more: a listen address that changes across a restart ------------------------------------

/// `127.0.0.2`, another loopback address than the harness' `127.0.0.1` (on Linux the whole
/// of `127.0.0.0/8` is loopback).
const OTHER_LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Whether this process can bind TCP and UDP on [`OTHER_LOOPBACK`]; prints a note saying
/// that `scenario` is skipped if not.
fn other_loopback_usable(scenario: &str) -> bool {
    let bound = TcpListener::bind((OTHER_LOOPBACK, 0))
        .and_then(|_| UdpSocket::bind((OTHER_LOOPBACK, 0)).map(drop));
    if let Err(e) = &bound {
        eprintln!("note: {scenario} skipped: cannot bind {OTHER_LOOPBACK}:0 here: {e}");
    }
    bound.is_ok()
}

/// Replaces the server's executable by a script that `exec`s the pristine copy of the real
/// binary with exactly `args`. The new generation's `argv[0]` is then that copy: a later
/// restart runs the copy again, with the same arguments.
fn exec_real_with(server: &Server, args: &[String]) {
    let words: Vec<String> = args.iter().map(|a| sh_quote(Path::new(a))).collect();
    let script = format!(
        "exec {} {}",
        sh_quote(server.real_binary()),
        words.join(" ")
    );
    server.replace_exe(&sh_script(&script), 0o755);
}

/// The arguments the harness starts a server with (`--listen` …, then `--pid-file`), with
/// `listen` as the `--listen` addresses.
fn args_listening_on(server: &Server, listen: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for addr in listen {
        args.push("--listen".to_owned());
        args.push((*addr).to_owned());
    }
    args.push("--pid-file".to_owned());
    args.push(server.pid_file().display().to_string());
    args
}

/// Waits until generation `pid` logged (after `mark`) that it is ready, which it does once
/// every listener is set up: every line it logged about its listeners has been read then.
/// Waits until the serving generation has taken the new one, staged with `SIGUSR1` after
/// `mark`, as staged (and so accepts a commit or a rollback). Not the new generation's
/// pid file or its `ready` line: it writes both before its parent has read its ready
/// message, and a commit sent in between is refused.
pub fn wait_staged(server: &Server, mark: usize) {
    server.group.stderr.wait_from(
        "the old generation to take the new one as staged",
        mark,
        |l| l.contains("lifecycle") && l.contains("to=staged"),
    );
}

fn wait_ready_logged(server: &Server, mark: usize, pid: u32) {
    server
        .group
        .stderr
        .wait_from(format_args!("{pid} to log that it is ready"), mark, |l| {
            l.split_whitespace().any(|w| w == "ready") && has_field(l, "pid", pid)
        });
}

/// The driver's `… binding anew` lines after `mark` (call after [`wait_ready_logged`]).
fn rebinds_from(server: &Server, mark: usize) -> Vec<String> {
    server
        .group
        .stderr
        .snapshot()
        .into_iter()
        .skip(mark)
        .filter(|l| l.contains("binding anew"))
        .collect()
}

/// What `pid` announced for listener `name` (the harness only waits for the listeners of
/// its own `--listen` arguments).
fn announced(server: &Server, pid: u32, name: &str) -> String {
    let line = server
        .group
        .stdout
        .wait_from(format_args!("{pid} to announce {name}"), 0, |l| {
            parse_listening(l).is_some_and(|l| l.pid == pid && l.name == name)
        });
    parse_listening(&line).expect("a listening line").addr
}

/// Asserts that nothing answers at `endpoint` any more: a TCP or Unix connection is refused
/// (a Unix socket file that is gone will do as well), a datagram is never answered and,
/// polled, is eventually refused (an ICMP port unreachable: no socket is bound there).
/// `pid` is the generation that serves, whose fds a failure lists.
fn assert_nothing_answers(endpoint: &Endpoint, pid: u32, what: &str) {
    let fail = |how: &str| -> ! {
        panic!(
            "{what}: {endpoint} {how}, although only {pid} is left; its fds: {:#?}",
            fds(pid)
        )
    };
    match endpoint {
        Endpoint::Tcp(addr) => match TcpStream::connect_timeout(addr, DEADLINE) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("{what}: connect to {endpoint}: {e}"),
            Ok(_) => fail("still accepts connections"),
        },
        Endpoint::Unix(path) => match UnixStream::connect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("note: {what}: the socket file {} is gone", path.display());
            }
            Err(e) => panic!("{what}: connect to {endpoint}: {e}"),
            Ok(_) => fail("still accepts connections"),
        },
        Endpoint::Udp(addr) => wait_for(
            format_args!("{what}: a datagram to {endpoint} to be refused"),
            DEADLINE,
            || match crate::udp_ask(*addr, "ping", Duration::from_millis(200)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
                Err(e) => panic!("{what}: ask at {endpoint}: {e}"),
                Ok(answer) => fail(&format!("still answers: {answer:?}")),
            },
        ),
    }
}

/// The listener `listen-0` moves from `a` (a `--listen` address as [`Options::listen`]
/// takes it) to the address `to` makes of where the first generation listens: the
/// executable is replaced by a script that runs the real binary with the same flags but
/// `--listen <to>`, then a HUP. The new generation logs that it binds anew (`log`:
/// `listen address changed` or `listen path changed`), announces and serves the new
/// address; the old one exits 0; then nothing answers at the old address (the inherited
/// socket was not kept open by anyone). A second restart, with the same arguments, keeps the
/// new socket: nothing is bound anew, and the new address is served by the third pid.
/// Returns the server and the old and new endpoints, for more checks.
fn listen_address_changes(
    bin: &Path,
    a: &str,
    to: impl FnOnce(&Server, &Endpoint) -> String,
    log: &str,
) -> (Server, Endpoint, Endpoint) {
    let server = Server::start(bin, &Options::default().listen(a));
    let old_endpoint = server.endpoint().clone();
    let first = server.pid();
    assert_answered_by(&old_endpoint, first, "the first generation");

    let new_addr = to(&server, &old_endpoint);
    exec_real_with(&server, &args_listening_on(&server, &[&new_addr]));
    let mark = server.group.stderr.len();
    let second = server.hup();
    let listening = server.listening(second);
    assert_eq!(
        listening[0].addr, new_addr,
        "the address {second} announced"
    );
    let new_endpoint = Endpoint::parse(&new_addr);
    wait_ready_logged(&server, mark, second);
    let rebinds = rebinds_from(&server, mark);
    let wanted = new_addr
        .strip_prefix("unix:")
        .or_else(|| new_addr.strip_prefix("udp:"))
        .unwrap_or(&new_addr);
    assert!(
        rebinds.len() == 1
            && rebinds[0].contains(log)
            && has_field(&rebinds[0], "name", "\"listen-0\"")
            && has_field(&rebinds[0], "wanted", wanted),
        "expected one {log:?} line for listen-0 wanting {wanted}, got {rebinds:?}"
    );
    // The new address is the new generation's alone, even while the old one is alive.
    for _ in 0..10 {
        assert_answered_by(&new_endpoint, second, "after the handover");
    }

    assert_eq!(
        server.group.wait_exit(first),
        Exit::Code(0),
        "the old generation {first}"
    );
    server.group.wait_settled(&[second]);
    assert_nothing_answers(&old_endpoint, second, "after the old generation exited");
    assert_answered_by(&new_endpoint, second, "after the old generation exited");

    // Once more, with the same arguments (the new generation runs the copy the script ran):
    // the socket bound anew is the one handed over, and kept.
    let mark = server.group.stderr.len();
    let third = server.restart();
    assert_eq!(
        server.listening(third)[0].addr,
        new_addr,
        "the address {third} announced"
    );
    wait_ready_logged(&server, mark, third);
    assert_eq!(
        rebinds_from(&server, mark),
        Vec::<String>::new(),
        "{third} bound anew although its address did not change"
    );
    server.group.wait_settled(&[third]);
    assert_answered_by(&new_endpoint, third, "after a restart on the new address");
    assert_nothing_answers(&old_endpoint, third, "after a restart on the new address");
    (server, old_endpoint, new_endpoint)
}

/// TCP, `127.0.0.1:P` → `127.0.0.2:P`: the same port on another address (a check of the
/// port alone would keep the old listener), then a third generation on `127.0.0.2:P`. See
/// [`listen_address_changes`].
pub fn tcp_listen_address_changes(bin: &Path) {
    if !other_loopback_usable("tcp_listen_address_changes") {
        return;
    }
    let to = |_: &Server, old: &Endpoint| {
        let Endpoint::Tcp(a) = old else {
            panic!("not a TCP listener: {old}");
        };
        std::net::SocketAddr::from((OTHER_LOOPBACK, a.port())).to_string()
    };
    listen_address_changes(
        bin,
        "127.0.0.1:0",
        to,
        "listen address changed; binding anew",
    );
}

/// UDP, `udp:127.0.0.1:P` → `udp:127.0.0.2:P` (same port, another address), then a third
/// generation on `udp:127.0.0.2:P`; once the old generation exited, a datagram to
/// `127.0.0.1:P` gets no answer and is refused. See [`listen_address_changes`].
pub fn udp_listen_address_changes(bin: &Path) {
    if !other_loopback_usable("udp_listen_address_changes") {
        return;
    }
    let to = |_: &Server, old: &Endpoint| {
        let Endpoint::Udp(a) = old else {
            panic!("not a UDP socket: {old}");
        };
        format!(
            "udp:{}",
            std::net::SocketAddr::from((OTHER_LOOPBACK, a.port()))
        )
    };
    listen_address_changes(
        bin,
        "udp:127.0.0.1:0",
        to,
        "listen address changed; binding anew",
    );
}

/// `--listen unix:PATH` where `PATH` is a regular file, or a symlink to a stale socket: the
/// server refuses to start with an error naming the path, and the file (its contents),
/// the link and the socket it points to are all left as they were. (A refused connect was
/// once taken to mean "stale socket", and the file was deleted.)
pub fn unix_listen_path_not_a_socket(bin: &Path) {
    let dir = crate::TempDir::new("not-a-socket");
    let file = dir.path().join("data.db");
    fs::write(&file, b"precious").unwrap();
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&stale, &link).unwrap();
    for (path, kind) in [(&file, "a regular file"), (&link, "a symbolic link")] {
        let mut command = Group::command(bin);
        command
            .arg("--listen")
            .arg(format!("unix:{}", path.display()));
        let group = Group::spawn("a server on a path that is not a socket", command);
        let exit = group.wait_exit(group.leader());
        assert!(
            matches!(exit, Exit::Code(c) if c != 0),
            "{kind}: exit status {exit:?}\n{}",
            group.dump()
        );
        group.wait_output_closed();
        let expected = format!("{} exists and is not a socket ({kind})", path.display());
        assert!(
            group
                .stderr
                .find_from(0, |l| l.contains(&expected))
                .is_some(),
            "{kind}: expected {expected:?}\n{}",
            group.dump()
        );
        assert_eq!(group.announced_pids(), [0u32; 0], "{kind}: it listened");
        group.wait_settled(&[]);
    }
    assert_eq!(fs::read(&file).unwrap(), b"precious");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(&stale)
            .unwrap()
            .file_type()
            .is_socket()
    );
}

/// Unix, `unix:<dir>/a.sock` → `unix:<dir>/b.sock`: `b.sock` is created and served by the
/// new pid (and keeps its inode across the third generation); once the old generation
/// exited, `a.sock` refuses connections (the file itself may remain). See
/// [`listen_address_changes`].
pub fn unix_listen_path_changes(bin: &Path) {
    let to =
        |server: &Server, _: &Endpoint| format!("unix:{}", server.dir().join("b.sock").display());
    let (server, old, new) =
        listen_address_changes(bin, "unix:a.sock", to, "listen path changed; binding anew");
    let (Endpoint::Unix(a), Endpoint::Unix(b)) = (&old, &new) else {
        panic!("not Unix sockets: {old}, {new}");
    };
    assert_eq!(a, &server.dir().join("a.sock"));
    let meta = fs::metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        b.display()
    );
    // One more restart: the socket file is the same inode, nobody bound it anew.
    let inode = meta.ino();
    let pid = server.restart();
    assert_answered_by(&new, pid, "a fourth generation");
    assert_eq!(
        fs::metadata(b).expect("b.sock is still there").ino(),
        inode,
        "b.sock was replaced"
    );
}

/// The same Unix socket written differently is not a change: the listener is kept (no
/// `binding anew` in the logs, the socket file keeps its inode, and the new pid serves on
/// it; binding anew would fail anyway while the old generation listens there).
///
/// 1. `unix:a.sock`, relative to the server's working directory (the test directory), in
///    the first generation (a second `--listen`, after the harness' TCP one), then
///    `unix:<dir>/a.sock` in the second: the inherited socket's own name is relative.
/// 2. `unix:<dir>/a.sock`, then `unix:./a.sock`.
pub fn unix_path_written_differently_keeps_listener(bin: &Path) {
    // 1. Relative, then absolute.
    let server = Server::start(bin, &Options::default().arg("--listen").arg("unix:a.sock"));
    let first = server.pid();
    assert_eq!(announced(&server, first, "listen-1"), "unix:a.sock");
    let path = server.dir().join("a.sock");
    let unix = Endpoint::Unix(path.clone());
    let tcp = server.endpoint().clone();
    let inode = fs::metadata(&path).expect("a.sock").ino();
    assert_answered_by(&unix, first, "the first generation");

    let absolute = format!("unix:{}", path.display());
    exec_real_with(&server, &{
        let mut args = args_listening_on(&server, &["127.0.0.1:0"]);
        args.extend(["--listen".to_owned(), absolute.clone()]);
        args
    });
    assert_listener_kept(
        &server,
        &[(&tcp, "listen-0"), (&unix, "listen-1")],
        &absolute,
        &path,
        inode,
    );

    // 2. Absolute, then relative (written `./a.sock`).
    let server = Server::start(bin, &Options::default().listen("unix:a.sock"));
    let Endpoint::Unix(path) = server.endpoint().clone() else {
        panic!("not a Unix socket: {}", server.endpoint());
    };
    assert_eq!(path, server.dir().join("a.sock"));
    let unix = Endpoint::Unix(path.clone());
    assert_eq!(
        server.first_listeners()[0].addr,
        format!("unix:{}", path.display())
    );
    let inode = fs::metadata(&path).expect("a.sock").ino();
    exec_real_with(&server, &args_listening_on(&server, &["unix:./a.sock"]));
    assert_listener_kept(
        &server,
        &[(&unix, "listen-0")],
        "unix:./a.sock",
        &path,
        inode,
    );
}

/// A HUP of `server` (whose executable now runs the real binary with the Unix socket
/// written as `written`) keeps every listener of `endpoints` (`(endpoint, name)`, the Unix
/// one last): nothing is bound anew, no stale socket removed, the socket file at `path`
/// keeps its `inode`, the new pid announces the Unix socket as written and serves every
/// endpoint, and the old generation exits 0.
fn assert_listener_kept(
    server: &Server,
    endpoints: &[(&Endpoint, &str)],
    written: &str,
    path: &Path,
    inode: u64,
) {
    let old = server.pid();
    let mark = server.group.stderr.len();
    let new = server.hup();
    let (_, unix_name) = endpoints.last().expect("a Unix listener");
    assert_eq!(announced(server, new, unix_name), written);
    wait_ready_logged(server, mark, new);
    let suspicious: Vec<String> = server
        .group
        .stderr
        .snapshot()
        .into_iter()
        .skip(mark)
        .filter(|l| l.contains("binding anew") || l.contains("stale unix socket"))
        .collect();
    assert_eq!(
        suspicious,
        Vec::<String>::new(),
        "{new} did not keep the inherited socket"
    );
    let same_file = |what: &str| {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{what}: {}: {e}", path.display()));
        assert_eq!(meta.ino(), inode, "{what}: the socket file was replaced");
    };
    same_file("after the handover");
    for (endpoint, _) in endpoints {
        assert_answered_by(endpoint, new, "after the handover");
    }
    assert_eq!(
        server.group.wait_exit(old),
        Exit::Code(0),
        "the old generation {old}"
    );
    server.group.wait_settled(&[new]);
    same_file("after the old generation exited");
    for (endpoint, _) in endpoints {
        assert_answered_by(endpoint, new, "after the old generation exited");
    }
}

// ---- 9. the fallback -----------------------------------------------------------------------

/// What [`Prober`] saw.
#[derive(Debug, Default)]
struct Probed {
    /// The pids that answered, in order, with when.
    answers: Vec<(Instant, u32)>,
    /// Connections refused (the port closed).
    refused: usize,
    /// Other failures (a connection reset by a killed process), described.
    failures: Vec<String>,
    /// The longest time between two answers (or from the start to the first).
    longest_unanswered: Duration,
}

/// A client that opens a new connection to `addr` every couple of milliseconds and asks
/// one line on it, until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Probed>>,
}

impl Prober {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut probed = Probed::default();
            let mut last = Instant::now();
            while !stopping.load(Ordering::SeqCst) {
                match probe(addr) {
                    Ok(pid) => {
                        let now = Instant::now();
                        probed.longest_unanswered = probed.longest_unanswered.max(now - last);
                        last = now;
                        probed.answers.push((now, pid));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        probed.refused += 1;
                    }
                    Err(e) => probed.failures.push(e.to_string()),
                }
                thread::sleep(Duration::from_millis(2));
            }
            probed.longest_unanswered = probed.longest_unanswered.max(last.elapsed());
            probed
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// The answers so far are not visible: wait with [`Prober::stop`].
    fn stop(mut self) -> Probed {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the prober does not panic")
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One line on a new connection: the pid that answered.
fn probe(addr: std::net::SocketAddr) -> std::io::Result<u32> {
    use std::io::{BufRead, Write};
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_nodelay(true)?;
    (&stream).write_all(b"probe\n")?;
    let mut line = String::new();
    std::io::BufReader::new(&stream).read_line(&mut line)?;
    line.split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .filter(|_| line.trim_end().ends_with(" probe"))
        .ok_or_else(|| std::io::Error::other(format!("unexpected answer {line:?}")))
}

fn tcp_addr(server: &Server) -> std::net::SocketAddr {
    match server.endpoint() {
        Endpoint::Tcp(addr) => *addr,
        other => panic!("a TCP endpoint expected, not {other}"),
    }
}

/// A server with a probation long enough that a test never sees it end.
fn with_probation(bin: &Path, secs: u32) -> Server {
    Server::start(
        bin,
        &Options::default().arg("--probation").arg(secs.to_string()),
    )
}

/// Under probes, a restart whose new generation then dies by `die` (after its ready): the
/// old generation takes the service back with the port answering throughout. Returns how
/// the new generation ended, as the old one logged it.
fn falls_back(server: &Server, die: impl FnOnce(&Server, u32)) -> String {
    let old = server.pid();
    let prober = Prober::start(tcp_addr(server));
    // Answered before the restart.
    wait_for("a first probe answered", DEADLINE, || {
        server.assert_serves(old);
        Some(())
    });
    let mark = server.group.stderr.len();
    let new = server.hup();
    die(server, new);
    let took =
        server
            .group
            .stderr
            .wait_from(format_args!("{old} to take the service back"), mark, |l| {
                l.contains("takes the service back") && has_field(l, "pid", new)
            });
    server.wait_pid_file(old);
    server.set_pid(old);
    server
        .group
        .stderr
        .wait_from(format_args!("{old} to accept again"), mark, |l| {
            l.contains("accepting again") && has_field(l, "pid", old)
        });
    // Probes keep coming, answered by the old generation again.
    let probes_at = Instant::now();
    wait_for("probes answered after the fallback", DEADLINE, || {
        (probes_at.elapsed() > Duration::from_millis(300)).then_some(())
    });
    let probed = prober.stop();
    let after: Vec<u32> = probed
        .answers
        .iter()
        .filter(|(at, _)| *at > probes_at)
        .map(|(_, pid)| *pid)
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|&p| p == old),
        "after the fallback, probes answered by {after:?}, expected only {old}"
    );
    assert!(
        probed.answers.iter().any(|&(_, p)| p == new),
        "the new generation {new} answered no probe before it died"
    );
    assert_eq!(
        probed.refused,
        0,
        "connections refused around the fallback ({} answered, failures {:?})",
        probed.answers.len(),
        probed.failures
    );
    assert!(
        probed.longest_unanswered < Duration::from_secs(1),
        "the port went unanswered for {:?}",
        probed.longest_unanswered
    );
    eprintln!(
        "fallback: {} probes answered, 0 refused, {} failed (connections of the killed \
         process), longest unanswered gap {:?}",
        probed.answers.len(),
        probed.failures.len(),
        probed.longest_unanswered
    );
    assert!(is_alive(old));
    server.group.wait_settled(&[old]);
    took
}

/// The new generation is `SIGKILL`ed 300 ms after it reported ready (an OOM kill under
/// load): the old generation, still its fallback, takes the service back; the port never
/// refused a connection and never went unanswered for a second; the pid file names the old
/// generation again; a later restart works.
pub fn successor_killed_after_ready(bin: &Path) {
    let server = with_probation(bin, 60);
    let took = falls_back(&server, |server, new| {
        // The bad deploy's moment: the time it takes to crash on real traffic.
        thread::sleep(Duration::from_millis(300));
        server.group.signal(new, Signal::KILL);
    });
    assert!(took.contains("was killed by signal 9"), "{took:?}");
    restarts_again(&server);
}

/// After a fallback: a later restart works (the old generation then waits out its
/// probation, which the test does not).
fn restarts_again(server: &Server) {
    let old = server.pid();
    let new = server.hup();
    assert_ne!(new, old);
    server.assert_serves(new);
}

/// The new generation exits with code 1 300 ms after it reported ready (it panicked on its
/// first requests): the old generation takes the service back; then the good binary is
/// put back and a restart works.
pub fn successor_exits_1_after_ready(bin: &Path) {
    let server = with_probation(bin, 60);
    let script = format!(
        "ECHO_EXIT_AFTER_READY=1:300 exec {} \"$@\"",
        sh_quote(server.real_binary())
    );
    server.replace_exe(&sh_script(&script), 0o755);
    let took = falls_back(&server, |_, _| {});
    assert!(took.contains("exited with code 1"), "{took:?}");
    server.restore_exe();
    restarts_again(&server);
}

/// A generation that hands over onward departs first: its predecessor, in probation,
/// exits (0) at once instead of waiting for the end of its probation, and never takes the
/// service back, although the generation it was the fallback of then exits.
pub fn successor_hands_over_onward(bin: &Path) {
    let server = with_probation(bin, 3600);
    let first = server.pid();
    let mark = server.group.stderr.len();
    let second = server.hup();
    server
        .group
        .stderr
        .wait_from(format_args!("{first} to be in probation"), mark, |l| {
            l.contains("lifecycle") && has_field(l, "to", "probation")
        });
    let third = server.hup();
    // Well before its probation of an hour ends.
    assert_eq!(server.group.wait_exit(first), Exit::Code(0), "{first}");
    let departed = server.group.stderr.find_from(mark, |l| {
        l.contains("departs") && has_field(l, "pid", second)
    });
    assert!(departed.is_some(), "{first} did not hear {second} depart");
    // The second generation is in probation for the third; stopping the service (the
    // third) ends it too, and nothing comes back.
    // (Their exit statuses are their parents'.)
    server.group.signal(third, Signal::TERM);
    server.group.wait_gone(third);
    server.group.wait_gone(second);
    assert!(
        server
            .group
            .stderr
            .find_from(0, |l| l.contains("takes the service back"))
            .is_none(),
        "a fallback where none was due"
    );
    server.group.wait_settled(&[]);
    assert!(
        TcpStream::connect(tcp_addr(&server)).is_err(),
        "the stopped service still accepts"
    );
}

/// The service is stopped (`SIGTERM` to the generation that serves, as `systemctl stop`
/// with `KillMode=mixed` or an operator does) while the previous generation is in
/// probation: the new one departs, the old one exits at once (not at the end of its
/// probation), nothing takes the service back, and the port is closed.
pub fn stop_during_probation(bin: &Path) {
    let server = with_probation(bin, 3600);
    let old = server.pid();
    let mark = server.group.stderr.len();
    let new = server.hup();
    server
        .group
        .stderr
        .wait_from(format_args!("{old} to be in probation"), mark, |l| {
            l.contains("lifecycle") && has_field(l, "to", "probation")
        });
    server.group.signal(new, Signal::TERM);
    // (The new generation's exit status is the old one's to know.)
    server.group.wait_gone(new);
    assert_eq!(server.group.wait_exit(old), Exit::Code(0), "{old}");
    assert!(
        server
            .group
            .stderr
            .find_from(mark, |l| l.contains("takes the service back"))
            .is_none(),
        "a stopped service came back"
    );
    server.group.wait_settled(&[]);
    assert!(
        server.pid_file_pid().is_none(),
        "the pid file outlived the stop"
    );
    assert!(
        TcpStream::connect(tcp_addr(&server)).is_err(),
        "the stopped service still accepts"
    );
}
