//! A stop that arrives while the new generation starts: the child is killed, and
//! [`Endless::run`] returns only once it is reaped. The application exits right after
//! `run`; a child that outlived it would hold the listeners, and could serve as an orphan.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use endless_tokio::{Endless, Executable, Request};

/// Waits for `path` to hold a pid (a number followed by a newline).
fn wait_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(pid) = text.strip_suffix('\n').and_then(|t| t.parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the child if the test fails before it is reaped: a test leaves no process behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Only on a failure: once reaped, the pid may be another process's.
        if std::thread::panicking() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_on_the_way_out_is_reaped_before_run_returns() {
    let dir = std::env::temp_dir().join(format!(
        "endless-stop-while-starting-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // Several rounds: the order of the reaper's kill and the end of `run` is a race when it
    // is not enforced.
    for round in 0..10 {
        let pid_file: PathBuf = dir.join(format!("child-{round}"));
        // A new generation that starts and never says ready.
        let script = format!(
            "echo $$ > {}.tmp && mv {0}.tmp {0} && exec sleep 600",
            pid_file.display()
        );
        let endless = Endless::builder()
            .executable(Executable::new(
                "/bin/sh",
                ["-c", &script],
                &dir,
                std::env::vars_os(),
            ))
            .start()
            .unwrap();
        endless.ready();
        endless.request(Request::Restart);
        let child = tokio::task::spawn_blocking(move || wait_pid(&pid_file))
            .await
            .unwrap();
        let _kill = KillOnDrop(child);
        endless.request(Request::Stop);
        let exit = tokio::time::timeout(Duration::from_secs(30), endless.run())
            .await
            .expect("the lifecycle ends");
        assert_eq!(exit.code, 0, "round {round}");
        // Reaped: not even a zombie is left.
        assert!(
            !Path::new(&format!("/proc/{child}")).exists(),
            "round {round}: the child {child} outlived run()"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
