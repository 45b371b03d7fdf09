//! Feeds arbitrary environments to both decoders: they must return, never panic, and a
//! handoff they accept must satisfy its invariants and survive a round trip.
//!
//! Input: pairs separated by `\n`, key and value separated by the first `=` (like
//! `/proc/<pid>/environ`, with `\n` in place of NUL so that seeds are easy to write). The
//! first byte picks the pid handed to the decoders. On Unix, keys and values are raw bytes
//! (non-UTF-8 included).
//!
//! The identity this process observes at every fd is `<pid>:<fd>` (device: the pid byte,
//! inode: the fd number), so that seeds which declare those identities, like
//! `ENDLESS_FD_3=other:x:1:3`, get past the identity check and into the round trip, and
//! others exercise the refusal.
#![no_main]

use std::ffi::OsString;

use endless_core::Fd;
use endless_core::env::{self, FileId, Handoff, LISTEN_FDNAMES_VAR, LISTEN_FDS_VAR};
use libfuzzer_sys::fuzz_target;

#[cfg(unix)]
fn os(bytes: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(bytes.to_vec())
}

#[cfg(not(unix))]
fn os(bytes: &[u8]) -> OsString {
    String::from_utf8_lossy(bytes).into_owned().into()
}

/// What this process sees at `fd`: `None` below 3, else the file `<pid>:<fd>`.
fn observed(pid: u32, fd: Fd) -> Option<FileId> {
    let fd = u64::try_from(fd).ok().filter(|&fd| fd >= 3)?;
    Some(FileId::new(u64::from(pid), fd))
}

fn check(h: &Handoff, pid: u32) {
    assert_eq!(h.check(), Ok(()));
    for (fd, id) in (3..).zip(&h.identities) {
        assert_eq!(Some(*id), observed(pid, fd));
    }
    let rebuilt = Handoff::new(
        h.parent_pid,
        h.inventory.clone(),
        h.ready_fd,
        h.identities.clone(),
    );
    assert_eq!(rebuilt.as_ref(), Ok(h));
    let observe = |fd| observed(pid, fd);
    assert_eq!(env::decode(env::encode(h), observe), Ok(Some(h.clone())));
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let pid = u32::from(first % 4);
    let vars: Vec<(OsString, OsString)> = rest
        .split(|&b| b == b'\n')
        .map(|line| match line.iter().position(|&b| b == b'=') {
            Some(i) => (os(&line[..i]), os(&line[i + 1..])),
            None => (os(line), OsString::new()),
        })
        .collect();

    match env::decode(vars.iter().map(|(k, v)| (k, v)), |fd| observed(pid, fd)) {
        Ok(Some(h)) => check(&h, pid),
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // `LISTEN_FDS=16384` without names asks for the largest inventory in a few bytes, and
    // building it takes a fraction of a second (`Inventory::insert` scans the entries), which
    // would slow the whole run down. That path is covered by the unit and property tests.
    let cheap = vars.iter().any(|(k, _)| k == LISTEN_FDNAMES_VAR)
        || !vars.iter().any(|(k, v)| {
            k == LISTEN_FDS_VAR && v.to_str().and_then(|v| v.parse::<u32>().ok()) > Some(256)
        });
    if !cheap {
        return;
    }
    match env::decode_systemd(vars, pid) {
        Ok(Some(inv)) => {
            for (i, e) in inv.iter().enumerate() {
                assert_eq!(usize::try_from(e.fd() - 3).ok(), Some(i));
            }
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
