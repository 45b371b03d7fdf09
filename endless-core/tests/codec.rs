//! Property tests of the environment codec and of the restart command's lines: round trips,
//! the recipient check, and that no input, however malformed, makes the decoders panic or
//! accept something inconsistent.

use std::collections::HashSet;
use std::ffi::OsString;

use endless_core::env::{
    self, DecodeError, FDS_VAR, FileId, Handoff, LISTEN_FDNAMES_VAR, LISTEN_FDS_VAR,
    LISTEN_PID_VAR, PARENT_PID_VAR, READY_FD_VAR, VERSION_VAR,
};
use endless_core::{FIRST_INHERITED_FD, Fd, FdKind, Inventory, MAX_ENTRIES, MAX_NAME_LEN};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// Raw bytes as an `OsString` (invalid UTF-8 included, on Unix).
#[cfg(unix)]
fn os(bytes: Vec<u8>) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(bytes)
}

/// Raw bytes as an `OsString` (lossy where the platform cannot hold them).
#[cfg(not(unix))]
fn os(bytes: Vec<u8>) -> OsString {
    String::from_utf8_lossy(&bytes).into_owned().into()
}

fn os_pairs(vars: Vec<(String, String)>) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// Cuts `s` to at most [`MAX_NAME_LEN`] bytes, at a char boundary.
fn fit(mut s: String) -> String {
    let mut end = s.len().min(MAX_NAME_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[%:=;\\x00 \\t\\n\\r_.~/a-zA-Z0-9é☃🦀\\u{10FFFF}-]{0,16}",
        vec(
            select(vec![
                "%", ":", "=", "\0", ";", "%25", "%zz", "é", "#", "a", "~", ""
            ]),
            0..8
        )
        .prop_map(|parts| parts.concat()),
        Just(String::new()),
        Just("%".repeat(MAX_NAME_LEN)),
        Just("é".repeat(MAX_NAME_LEN / 2)),
    ]
    .prop_map(fit)
}

fn kind() -> impl Strategy<Value = FdKind> {
    select(FdKind::ALL.to_vec())
}

/// A valid handoff: up to 63 uniquely named entries and a ready fd, on the fds `3..=3+n` in
/// any order (entries are not necessarily inserted in fd order).
fn handoff() -> impl Strategy<Value = Handoff> {
    (
        vec((name(), kind()), 0..64),
        any::<u32>(),
        any::<(u64, u64)>(),
    )
        .prop_flat_map(|(entries, pid, (dev, ino))| {
            let mut seen = HashSet::new();
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|(name, _)| seen.insert(name.clone()))
                .collect();
            let fds: Vec<Fd> = (0..=entries.len())
                .map(|i| FIRST_INHERITED_FD + Fd::try_from(i).unwrap())
                .collect();
            let ids: Vec<FileId> = (0..fds.len() as u64)
                .map(|i| FileId::new(dev, ino.wrapping_add(i)))
                .collect();
            (
                Just(entries),
                Just(pid),
                Just(fds).prop_shuffle(),
                Just(ids),
            )
        })
        .prop_map(|(entries, pid, fds, ids)| {
            let mut inventory = Inventory::new();
            for ((name, kind), fd) in entries.into_iter().zip(&fds) {
                inventory.insert(name, kind, *fd).unwrap();
            }
            let ready_fd = *fds.last().unwrap();
            Handoff::new(pid, inventory, ready_fd, ids).unwrap()
        })
}

/// What the process spawned with `h` sees at its fds: the declared files.
fn spawned(h: &Handoff) -> impl Fn(Fd) -> Option<FileId> + '_ {
    |fd| h.identity(fd)
}

/// Everything a decoded handoff must satisfy.
fn check_invariants(h: &Handoff, parent_pid: u32) -> Result<(), TestCaseError> {
    prop_assert_eq!(h.parent_pid, parent_pid);
    prop_assert!(h.check().is_ok(), "{:?}", h.check());
    prop_assert!(h.inventory.len() <= MAX_ENTRIES);
    // The fds are exactly 3..=3+n, each once.
    let mut fds: Vec<Fd> = h.inventory.iter().map(|e| e.fd()).collect();
    fds.push(h.ready_fd);
    fds.sort_unstable();
    let expected: Vec<Fd> = (0..fds.len())
        .map(|i| FIRST_INHERITED_FD + Fd::try_from(i).unwrap())
        .collect();
    prop_assert_eq!(fds, expected);
    let mut names = HashSet::new();
    for e in &h.inventory {
        prop_assert!(e.name().len() <= MAX_NAME_LEN);
        prop_assert!(names.insert(e.name()), "duplicate name {:?}", e.name());
    }
    // Canonical (ordered by fd), and it encodes to something that decodes to itself.
    let rebuilt = Handoff::new(
        h.parent_pid,
        h.inventory.clone(),
        h.ready_fd,
        h.identities.clone(),
    );
    prop_assert_eq!(rebuilt.as_ref(), Ok(h));
    prop_assert_eq!(env::decode(env::encode(h), spawned(h)), Ok(Some(h.clone())));
    Ok(())
}

/// A key, mostly one of ours or close to one of ours.
fn key() -> impl Strategy<Value = OsString> {
    let plausible = vec![
        VERSION_VAR,
        PARENT_PID_VAR,
        FDS_VAR,
        READY_FD_VAR,
        "ENDLESS_FD_3",
        "ENDLESS_FD_4",
        "ENDLESS_FD_5",
        "ENDLESS_FD_6",
        "ENDLESS_OTHER",
        LISTEN_PID_VAR,
        LISTEN_FDS_VAR,
        LISTEN_FDNAMES_VAR,
        "PATH",
    ];
    let malformed = vec![
        "ENDLESS_FD_2",
        "ENDLESS_FD_03",
        "ENDLESS_FD_",
        "ENDLESS_FD_x",
    ];
    prop_oneof![
        12 => select(plausible).prop_map(OsString::from),
        1 => select(malformed).prop_map(OsString::from),
        1 => vec(any::<u8>(), 0..16).prop_map(os),
        1 => vec(any::<u8>(), 0..6).prop_map(|b| os([b"ENDLESS_FD_".to_vec(), b].concat())),
    ]
}

/// A value, mostly plausible for one of our variables.
fn value() -> impl Strategy<Value = OsString> {
    prop_oneof![
        4 => select(vec!["0", "1", "2", "3", "4", "5", "7", "100", "01", "", "4:0:0", "5:0:1"]).prop_map(OsString::from),
        2 => (kind(), name()).prop_map(|(k, n)| {
            let mut s = format!("{}:", k.as_str());
            s.extend(n.bytes().map(|b| format!("%{b:02X}")));
            s.push_str(":0:0");
            OsString::from(s)
        }),
        1 => "[a-z:%0-9A-F#]{0,12}".prop_map(OsString::from),
        1 => vec(any::<u8>(), 0..24).prop_map(os),
        1 => any::<String>().prop_map(OsString::from),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Drop(prop::sample::Index),
    Duplicate(prop::sample::Index),
    /// Cuts a value short (leaves `%` or `%4` at the end of an escaped name, an empty
    /// number, a kind without its colon…).
    Truncate {
        var: prop::sample::Index,
        at: prop::sample::Index,
    },
    /// Replaces one byte of a key (or a value) with `byte`.
    SetByte {
        var: prop::sample::Index,
        in_key: bool,
        at: prop::sample::Index,
        byte: u8,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<prop::sample::Index>().prop_map(Mutation::Drop),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Duplicate),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(var, at)| Mutation::Truncate { var, at }),
        4 => (
            any::<prop::sample::Index>(),
            any::<bool>(),
            any::<prop::sample::Index>(),
            prop_oneof![
                select(b"0123456789:%_=;~AaFfGgx\0\xff\x80".to_vec()),
                any::<u8>()
            ],
        )
            .prop_map(|(var, in_key, at, byte)| Mutation::SetByte {
                var,
                in_key,
                at,
                byte
            }),
    ]
}

/// Applies `m` to `vars` (which has at least the four fixed variables).
fn mutate(vars: &mut Vec<(Vec<u8>, Vec<u8>)>, m: &Mutation) {
    match m {
        Mutation::Drop(i) => {
            vars.remove(i.index(vars.len()));
        }
        Mutation::Duplicate(i) => {
            let var = vars[i.index(vars.len())].clone();
            vars.push(var);
        }
        Mutation::Truncate { var, at } => {
            let i = var.index(vars.len());
            let value = &mut vars[i].1;
            let at = at.index(value.len() + 1);
            value.truncate(at);
        }
        Mutation::SetByte {
            var,
            in_key,
            at,
            byte,
        } => {
            let i = var.index(vars.len());
            let (k, v) = &mut vars[i];
            let bytes = if *in_key { k } else { v };
            if bytes.is_empty() {
                bytes.push(*byte);
            } else {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
        }
    }
}

proptest! {
    #[test]
    fn encode_then_decode_gives_back_the_handoff(h in handoff()) {
        let vars = env::encode(&h);
        for (k, v) in &vars {
            prop_assert!(env::is_reserved(k.as_ref()), "{}", k);
            // Keys and values are plain ASCII without '=' or NUL: safe in any environment.
            prop_assert!(k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
            prop_assert!(v.bytes().all(|b| b.is_ascii_graphic() && b != b'='), "{}", v);
        }
        prop_assert_eq!(env::decode(vars.clone(), spawned(&h)), Ok(Some(h.clone())));
        // Any order of the variables, and unrelated variables around them, change nothing.
        let mut shuffled = vars;
        shuffled.reverse();
        shuffled.push(("ENDLESS_USER_THING".into(), "%%%".into()));
        shuffled.insert(0, ("PATH".into(), "/bin".into()));
        prop_assert_eq!(env::decode(shuffled, spawned(&h)), Ok(Some(h.clone())));
        check_invariants(&h, h.parent_pid)?;
    }

    #[test]
    fn decode_where_one_fd_is_another_file_is_not_for_this_process(
        h in handoff(),
        which in any::<prop::sample::Index>(),
        other in prop::option::of(any::<(u64, u64)>()),
    ) {
        let fd = FIRST_INHERITED_FD + Fd::try_from(which.index(h.identities.len())).unwrap();
        let other = other.map(|(dev, ino)| FileId::new(dev, ino));
        prop_assume!(other != h.identity(fd));
        let err = env::decode(env::encode(&h), |at| {
            if at == fd { other } else { h.identity(at) }
        })
        .unwrap_err();
        let DecodeError::NotTheDeclaredFile { fd: at, declared, found, .. } = &err else {
            return Err(TestCaseError::fail(format!("{err:?}")));
        };
        prop_assert_eq!((*at, Some(*declared), *found), (fd, h.identity(fd), other));
        prop_assert!(err.is_not_for_this_process());
    }

    #[test]
    fn systemd_round_trip(
        names in vec("[^:]{1,12}", 0..40),
        pid in any::<u32>(),
    ) {
        let unique: HashSet<&String> = names.iter().collect();
        prop_assume!(unique.len() == names.len());
        let n = names.len().to_string();
        let joined = names.join(":");
        let vars = [
            (LISTEN_PID_VAR, pid.to_string()),
            (LISTEN_FDS_VAR, n),
            (LISTEN_FDNAMES_VAR, joined),
        ];
        let inv = env::decode_systemd(vars.clone(), pid).unwrap().unwrap();
        let got: Vec<_> = inv.iter().map(|e| (e.name().to_owned(), e.kind(), e.fd())).collect();
        let expected: Vec<_> = names
            .iter()
            .zip(FIRST_INHERITED_FD..)
            .map(|(name, fd)| (name.clone(), FdKind::Unknown, fd))
            .collect();
        prop_assert_eq!(got, expected);

        let other = pid.wrapping_add(1);
        prop_assert_eq!(
            env::decode_systemd(vars, other),
            Err(DecodeError::NotForThisProcess { intended: pid, actual: other })
        );
    }

    #[test]
    fn systemd_without_names_calls_every_fd_unknown(n in 0_usize..50) {
        let vars = [(LISTEN_FDS_VAR, n.to_string()), (LISTEN_PID_VAR, "42".to_owned())];
        let inv = env::decode_systemd(vars, 42).unwrap().unwrap();
        prop_assert_eq!(inv.len(), n);
        for (i, e) in inv.iter().enumerate() {
            let fd = FIRST_INHERITED_FD + Fd::try_from(i).unwrap();
            let expected = if i == 0 { "unknown".to_owned() } else { format!("unknown#{fd}") };
            prop_assert_eq!((e.name(), e.fd(), e.kind()), (expected.as_str(), fd, FdKind::Unknown));
        }
    }

    #[test]
    fn systemd_count_mismatch(names in vec("[a-z]{1,4}", 0..10), n in 0_usize..12) {
        prop_assume!(n != names.len() && !(n == 0 && names.len() == 1 && names[0].is_empty()));
        let vars = [
            (LISTEN_PID_VAR, "5".to_owned()),
            (LISTEN_FDS_VAR, n.to_string()),
            (LISTEN_FDNAMES_VAR, names.join(":")),
        ];
        prop_assert_eq!(
            env::decode_systemd(vars, 5),
            Err(DecodeError::CountMismatch {
                variable: LISTEN_FDNAMES_VAR.to_owned(),
                declared: n,
                found: names.len(),
            })
        );
    }

    #[test]
    fn systemd_duplicate_names_get_the_fd_appended(names in vec("[ab]|a#[3-6]", 1..8)) {
        let vars = [
            (LISTEN_PID_VAR, "5".to_owned()),
            (LISTEN_FDS_VAR, names.len().to_string()),
            (LISTEN_FDNAMES_VAR, names.join(":")),
        ];
        // Reference model: the first fd of a name keeps it, a later one is renamed
        // `<name>#<fd>`, and a renamed name that is taken already is an error.
        let mut taken: Vec<String> = Vec::new();
        let mut expected = Ok(());
        for (given, fd) in names.iter().zip(FIRST_INHERITED_FD..) {
            let name = if taken.contains(given) { format!("{given}#{fd}") } else { given.clone() };
            if taken.contains(&name) {
                expected = Err(name);
                break;
            }
            taken.push(name);
        }
        match (env::decode_systemd(vars, 5), expected) {
            (Ok(Some(inv)), Ok(())) => {
                let got: Vec<_> = inv.iter().map(|e| (e.name().to_owned(), e.fd())).collect();
                let want: Vec<_> = taken.into_iter().zip(FIRST_INHERITED_FD..).collect();
                prop_assert_eq!(got, want);
            }
            (Err(DecodeError::DuplicateName { variable, name }), Err(want)) => {
                prop_assert_eq!(variable, LISTEN_FDNAMES_VAR);
                prop_assert_eq!(name, want);
            }
            (got, want) => prop_assert!(false, "got {:?}, model says {:?}", got, want),
        }
    }
}

proptest! {
    // Cheap cases: run more of them.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn garbage_never_panics(
        header in 0_usize..3,
        counts in (0_usize..4, 3_usize..8),
        vars in vec((key(), value()), 0..10),
        pid in select(vec![0_u32, 1, 7, 100]),
    ) {
        // Two thirds of the inputs start with a valid version and parent pid (one third also
        // with a plausible count and ready fd), so that decoding gets into the entries.
        let mut fixed: Vec<(&str, String)> = Vec::new();
        if header >= 1 {
            fixed.push((VERSION_VAR, "2".to_owned()));
            fixed.push((PARENT_PID_VAR, pid.to_string()));
        }
        if header >= 2 {
            fixed.push((FDS_VAR, counts.0.to_string()));
            fixed.push((READY_FD_VAR, format!("{}:0:0", counts.1)));
        }
        let vars: Vec<(OsString, OsString)> = fixed
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .chain(vars.into_iter().filter(|(k, _)| !fixed.iter().any(|(f, _)| k == f)))
            .collect();
        // Every fd of this process is the file 0:0, as the plausible values declare.
        let observe = |_| Some(FileId::new(0, 0));
        if let Ok(Some(h)) = env::decode(vars.clone(), observe) {
            check_invariants(&h, h.parent_pid)?;
        }
        if let Ok(Some(inv)) = env::decode_systemd(vars.clone(), pid) {
            prop_assert!(inv.iter().map(|e| e.fd()).eq((0..inv.len()).map(|i| 3 + Fd::try_from(i).unwrap())));
        }
        // Errors render (bounded) without panicking.
        if let Err(e) = env::decode(vars, observe) {
            prop_assert!(e.to_string().len() < 1_000);
        }
    }

    #[test]
    fn a_mutated_encoding_errors_or_is_consistent(
        h in handoff(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut vars: Vec<(Vec<u8>, Vec<u8>)> = env::encode(&h)
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
            .collect();
        let original = vars.clone();
        for m in &mutations {
            mutate(&mut vars, m);
        }
        let pairs: Vec<(OsString, OsString)> =
            vars.iter().map(|(k, v)| (os(k.clone()), os(v.clone()))).collect();
        let decoded = env::decode(pairs.clone(), spawned(&h));
        if vars == original {
            prop_assert_eq!(decoded, Ok(Some(h.clone())));
        } else {
            match decoded {
                Ok(Some(got)) => {
                    // Only the files declared in the original can be accepted.
                    for (i, id) in got.identities.iter().enumerate() {
                        let fd = FIRST_INHERITED_FD + Fd::try_from(i).unwrap();
                        prop_assert_eq!(Some(*id), h.identity(fd));
                    }
                    check_invariants(&got, got.parent_pid)?;
                }
                // Every variable of ours was mangled out of our namespace.
                Ok(None) => {
                    let ours = vars.iter().any(|(k, _)| {
                        std::str::from_utf8(k).is_ok_and(|k| env::is_reserved(k.as_ref()))
                    });
                    prop_assert!(!ours);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
        // The systemd decoder sees none of its variables here.
        prop_assert_eq!(env::decode_systemd(pairs, h.parent_pid), Ok(None));
    }
}

#[test]
fn a_declared_count_is_checked_before_anything_is_allocated_for_it() {
    let vars = [
        (VERSION_VAR, "2"),
        (PARENT_PID_VAR, "1"),
        (FDS_VAR, "18446744073709551615"),
        (READY_FD_VAR, "3:0:0"),
    ];
    assert!(matches!(
        env::decode(vars, |_| unreachable!(
            "observed before the format is valid"
        )),
        Err(DecodeError::TooManyEntries { .. })
    ));
    let vars = [
        (LISTEN_PID_VAR, "1"),
        (LISTEN_FDS_VAR, "18446744073709551615"),
    ];
    assert!(matches!(
        env::decode_systemd(vars, 1),
        Err(DecodeError::TooManyEntries { .. })
    ));
}

#[test]
fn the_largest_inventory_round_trips() {
    let mut inventory = Inventory::new();
    for i in 0..MAX_ENTRIES {
        inventory
            .push(format!("listener {i}"), FdKind::ALL[i % FdKind::ALL.len()])
            .unwrap();
    }
    let ids = (0..=MAX_ENTRIES as u64)
        .map(|i| FileId::new(u64::MAX, u64::MAX - i))
        .collect();
    let h = Handoff::for_spawn(u32::MAX, inventory, ids).unwrap();
    let vars = env::encode(&h);
    assert_eq!(vars.len(), MAX_ENTRIES + 4);
    assert_eq!(env::decode(vars, spawned(&h)), Ok(Some(h.clone())));
}

#[test]
fn systemd_takes_exactly_up_to_the_largest_count() {
    let vars = |n: usize| {
        let n = n.to_string();
        [(LISTEN_PID_VAR, "1".to_owned()), (LISTEN_FDS_VAR, n)]
    };
    let inventory = env::decode_systemd(vars(MAX_ENTRIES), 1)
        .unwrap()
        .expect("socket-activated");
    assert_eq!(inventory.len(), MAX_ENTRIES);
    assert_eq!(
        env::decode_systemd(vars(MAX_ENTRIES + 1), 1),
        Err(DecodeError::TooManyEntries {
            variable: LISTEN_FDS_VAR.to_owned(),
            declared: MAX_ENTRIES + 1,
        })
    );
}

#[test]
fn os_pairs_helper_round_trips() {
    // Keeps `os_pairs` honest (and used): a decoded encoding from OsString pairs.
    let h = Handoff::for_spawn(3, Inventory::new(), vec![FileId::new(1, 2)]).unwrap();
    assert_eq!(
        env::decode(os_pairs(env::encode(&h)), spawned(&h)),
        Ok(Some(h.clone()))
    );
}

// ---- the restart command's lines (`endless_core::control`) --------------------------------

mod control_lines {
    use endless_core::ChildStatus;
    use endless_core::control::{
        self, Answer, FailureKind, MAX_LINE, REQUEST, REQUEST_PROVEN, RefusalKind, RequestKind,
    };
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    fn pid() -> impl Strategy<Value = u32> {
        prop_oneof![
            1_u32..100,
            Just(u32::MAX),
            any::<u32>().prop_filter("0 is no pid", |&p| p > 0)
        ]
    }

    fn status() -> impl Strategy<Value = ChildStatus> {
        prop_oneof![
            any::<i32>().prop_map(ChildStatus::Exited),
            any::<i32>().prop_map(ChildStatus::Signaled),
            Just(ChildStatus::Unknown),
        ]
    }

    /// A message as it survives the wire: no control characters, short enough not to be
    /// cut.
    fn message() -> impl Strategy<Value = String> {
        prop_oneof!["\\PC{0,80}", Just(" -- ".to_owned()), Just(String::new())]
    }

    fn answer() -> impl Strategy<Value = Answer> {
        let failure = select(vec![
            FailureKind::Exited,
            FailureKind::ClosedChannel,
            FailureKind::BadMessage,
            FailureKind::TimedOut,
            FailureKind::SpawnFailed,
            FailureKind::Cancelled,
            FailureKind::Other,
        ]);
        let refusal = select(vec![
            RefusalKind::InProgress,
            RefusalKind::NotReady,
            RefusalKind::Draining,
            RefusalKind::Stopped,
            RefusalKind::Permission,
            RefusalKind::Other,
        ]);
        prop_oneof![
            pid().prop_map(|new| Answer::Ready { new }),
            pid().prop_map(|to| Answer::Moved { to }),
            (
                failure,
                proptest::option::of(pid()),
                proptest::option::of(status()),
                message()
            )
                .prop_map(|(kind, child, status, message)| Answer::Failed {
                    kind,
                    child,
                    status,
                    message
                }),
            (refusal, message()).prop_map(|(reason, message)| Answer::Refused { reason, message }),
            (pid(), status(), message()).prop_map(|(new, status, message)| Answer::FellBack {
                new,
                status,
                message
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn every_answer_round_trips(answering in pid(), answer in answer()) {
            let line = control::encode_answer(answering, &answer);
            prop_assert!(line.len() <= MAX_LINE);
            prop_assert_eq!(control::decode_answer(&line), Ok((answering, answer)));
        }

        #[test]
        fn garbage_never_panics_and_what_decodes_re_encodes(
            bytes in prop_oneof![
                vec(any::<u8>(), 0..120),
                // Mostly valid lines, one byte changed or cut.
                (answer(), any::<usize>(), any::<u8>(), any::<bool>()).prop_map(
                    |(answer, at, byte, cut)| {
                        let mut line = control::encode_answer(42, &answer);
                        let at = at % line.len();
                        if cut {
                            line.truncate(at);
                        } else {
                            line[at] = byte;
                        }
                        line
                    }
                ),
            ],
        ) {
            if let Ok((pid, answer)) = control::decode_answer(&bytes) {
                let line = control::encode_answer(pid, &answer);
                prop_assert_eq!(control::decode_answer(&line), Ok((pid, answer)));
            }
            match control::decode_request(&bytes) {
                Ok(kind) => prop_assert_eq!(kind.line(), &bytes[..]),
                Err(e) => prop_assert!(e.to_string().len() < 2 * MAX_LINE),
            }
        }
    }

    #[test]
    fn both_requests_round_trip_and_differ() {
        assert_eq!(control::decode_request(REQUEST), Ok(RequestKind::Restart));
        assert_eq!(
            control::decode_request(REQUEST_PROVEN),
            Ok(RequestKind::UntilProven)
        );
        for kind in [RequestKind::Restart, RequestKind::UntilProven] {
            assert_eq!(control::decode_request(kind.line()), Ok(kind));
        }
        // A request is no answer.
        assert!(control::decode_answer(REQUEST_PROVEN).is_err());
    }
}
