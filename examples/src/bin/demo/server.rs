//! The server under test: started in a process group of its own (endless starts every later
//! generation in a group of its own too, so each is signalled by its own group), restarted
//! by `SIGHUP` to the pid its pid file names, and ended — every generation, also on Ctrl-C
//! or a panic — by [`Group`]'s drop.
//!
//! On Linux the demo is a child subreaper: each generation whose parent (the previous
//! generation) exits is re-parented to the demo, which reaps it and notes when it exited.
//! The server is the demo's only child process, so the reaper waits for any child.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

/// How long a server may take to print its `listening` line and write its pid file.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How the pid file is polled during a restart: the handover takes milliseconds.
const POLL: Duration = Duration::from_millis(1);

/// Makes this process the reaper of its orphaned descendants (Linux), so that every
/// generation of the server is reaped here and its exit noted.
pub(crate) fn become_subreaper() {
    // rustix takes the flag as an `Option<Pid>`: any pid sets it.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

/// How a generation ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit {
    pub(crate) at: Instant,
    /// The exit code, or the signal that killed it (negative).
    pub(crate) code: i32,
}

/// The server's generations: the first one (its pid is `pgid`, the group the demo made) and
/// all later ones, each in a process group of its own.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) pgid: i32,
    pub(crate) addr: String,
    pub(crate) pid_file: PathBuf,
    pub(crate) out_file: PathBuf,
    exits: Arc<Mutex<BTreeMap<u32, Exit>>>,
    reaping: Arc<AtomicBool>,
    reaper: Option<std::thread::JoinHandle<()>>,
}

impl Group {
    /// Starts `command` (which gets `--listen 127.0.0.1:0 --pid-file …` appended) in a new
    /// process group, its output in `dir`; waits until it listens and has written its pid
    /// file.
    pub(crate) fn start(mut command: Command, dir: &Path) -> Result<Self, String> {
        let pid_file = dir.join("server.pid");
        let out_file = dir.join("server.out");
        let err_file = dir.join("server.log");
        let create = |p: &Path| fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        command
            .args(["--listen", "127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(create(&out_file)?)
            .stderr(create(&err_file)?)
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
        let pgid = i32::try_from(child.id()).expect("a pid fits in i32");
        // From here on the group is ended whatever happens.
        let exits = Arc::new(Mutex::new(BTreeMap::new()));
        let reaping = Arc::new(AtomicBool::new(true));
        let reaper = {
            let (exits, reaping) = (exits.clone(), reaping.clone());
            std::thread::spawn(move || reap(&exits, &reaping))
        };
        // The child is reaped by the reaper thread, by pid: `Child` is not waited on.
        drop(child);
        let mut group = Self {
            pgid,
            addr: String::new(),
            pid_file,
            out_file,
            exits,
            reaping,
            reaper: Some(reaper),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let listening = group.listening();
            if let Some((_, addr)) = listening.first()
                && group.serving_pid() == Some(pgid as u32)
            {
                group.addr = addr.clone();
                return Ok(group);
            }
            if let Some(exit) = group.exit_of(pgid as u32) {
                let log = fs::read_to_string(&err_file).unwrap_or_default();
                return Err(format!(
                    "the server exited ({}) before it was ready; its log:\n{log}",
                    describe_exit(exit.code)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server did not listen and write its pid file within {START_TIMEOUT:?} (log: {})",
                    err_file.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `listening <name> <addr> pid=<pid>` lines every generation printed: (pid, addr).
    pub(crate) fn listening(&self) -> Vec<(u32, String)> {
        fs::read_to_string(&self.out_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("listening ")?.split_whitespace();
                let (_name, addr, pid) = (words.next()?, words.next()?, words.next()?);
                Some((pid.strip_prefix("pid=")?.parse().ok()?, addr.to_owned()))
            })
            .collect()
    }

    /// The pid the pid file names.
    pub(crate) fn serving_pid(&self) -> Option<u32> {
        read_pid(&self.pid_file)
    }

    /// How generation `pid` ended, if it has and was reaped here.
    pub(crate) fn exit_of(&self, pid: u32) -> Option<Exit> {
        lock(&self.exits).get(&pid).copied()
    }

    /// Every exit reaped so far.
    pub(crate) fn exits(&self) -> BTreeMap<u32, Exit> {
        lock(&self.exits).clone()
    }

    /// The generations that exist (zombies too) and were not reaped here: the first one,
    /// and every pid a `listening` line named. Each leads a process group of its own.
    fn live(&self) -> Vec<i32> {
        let mut pids: Vec<u32> = std::iter::once(self.pgid.unsigned_abs())
            .chain(self.listening().into_iter().map(|(pid, _)| pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .filter(|&pid| self.exit_of(pid).is_none())
            .filter_map(|pid| i32::try_from(pid).ok())
            .filter(|&pid| {
                Pid::from_raw(pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
            })
            .collect()
    }

    /// Ends every generation: `SIGTERM` to each one's group (a graceful stop), `SIGKILL`
    /// to what is left after `grace`; reaps them. A generation is signalled only while the
    /// demo has not reaped it; one whose parent (an older generation) still lives could in
    /// principle be reaped by that parent and its pid reused in between, a window of
    /// microseconds that the demo accepts (a real deployment signals the pid file's pid).
    pub(crate) fn stop(&mut self, grace: Duration) {
        // The older generations first: one that waits as the newest one's fallback stops at
        // once, so that the newest, re-parented here, is reaped here (not by its parent).
        let newest = self.listening().last().map(|(pid, _)| *pid);
        let older: Vec<i32> = self
            .live()
            .into_iter()
            .filter(|&pid| Some(pid.unsigned_abs()) != newest)
            .collect();
        for &pid in &older {
            signal_group(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while self.live().iter().any(|pid| older.contains(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let signal_all = |signal| {
            for pid in self.live() {
                signal_group(pid, signal);
            }
        };
        signal_all(Signal::TERM);
        if !self.wait_gone(grace) {
            signal_all(Signal::KILL);
            self.wait_gone(Duration::from_secs(2));
        }
        self.reaping.store(false, Ordering::Relaxed);
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.join();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.reaper.is_some() {
            self.stop(Duration::from_secs(5));
        }
    }
}

/// `SIGHUP` to the serving generation, then waits (polling every millisecond) until
/// the pid file names a new one, which writes it once it is ready.
pub(crate) fn restart(pid_file: &Path, timeout: Duration, stop: &AtomicBool) -> Handover {
    let Some(old) = read_pid(pid_file) else {
        return Handover::Missed {
            old: None,
            why: "the pid file names no process".into(),
        };
    };
    let hup = Instant::now();
    let sent = i32::try_from(old)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| "not a process id".to_owned())
        .and_then(|pid| {
            rustix::process::kill_process(pid, Signal::HUP)
                .map_err(|e| io::Error::from(e).to_string())
        });
    if let Err(e) = sent {
        return Handover::Missed {
            old: Some(old),
            why: format!("cannot signal pid {old}: {e}"),
        };
    }
    loop {
        if let Some(new) = read_pid(pid_file).filter(|&p| p != old) {
            return Handover::Done {
                old,
                new,
                hup,
                took: hup.elapsed(),
            };
        }
        if hup.elapsed() > timeout || stop.load(Ordering::Relaxed) {
            return Handover::Missed {
                old: Some(old),
                why: format!("no new generation ready within {timeout:?}"),
            };
        }
        std::thread::sleep(POLL);
    }
}

/// What became of one restart.
#[derive(Debug, Clone)]
pub(crate) enum Handover {
    Done {
        old: u32,
        new: u32,
        hup: Instant,
        took: Duration,
    },
    Missed {
        old: Option<u32>,
        why: String,
    },
}

/// The pid a pid file names.
pub(crate) fn read_pid(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process group `pgid` as rustix names it (a group this process created: positive).
fn group(pgid: i32) -> Pid {
    Pid::from_raw(pgid).expect("a process group id is positive")
}

fn signal_group(pgid: i32, signal: Signal) {
    let _ = rustix::process::kill_process_group(group(pgid), signal);
}

impl Group {
    /// Waits until no generation is left unreaped; false after `timeout`.
    fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.live().is_empty() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// Reaps this process's children (the first generation, and the orphans a subreaper
/// inherits: the server is the demo's only child process), noting when and how they
/// exited.
fn reap(exits: &Mutex<BTreeMap<u32, Exit>>, reaping: &AtomicBool) {
    loop {
        if let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            let code = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => code,
                (None, signal) => -signal.unwrap_or(0),
            };
            lock(exits).insert(
                pid.as_raw_pid().unsigned_abs(),
                Exit {
                    at: Instant::now(),
                    code,
                },
            );
            continue;
        }
        // None exited yet (`Ok(None)`), or no child at the moment (ECHILD).
        if !reaping.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `code 0`, `code 1`, `killed by signal 9`.
pub(crate) fn describe_exit(code: i32) -> String {
    if code >= 0 {
        format!("code {code}")
    } else {
        format!("killed by signal {}", -code)
    }
}
