//! The README's demo, briefly: a few restarts under load, and it must pass (exit 0: no
//! failed request, every restart handed over, every generation reaped).

use std::process::Command;

fn run_demo(server: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--server", server, "--restarts", "2", "--duration", "3"])
        .args(["--connections", "4"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("\nPASS: "), "{stdout}");
    assert!(stdout.contains("2 of 2 handed over"), "{stdout}");
    if cfg!(target_os = "linux") {
        // The demo reaps every generation as their subreaper.
        assert!(
            stdout.contains("3 started, 3 reaped (3 with code 0)"),
            "{stdout}"
        );
    }
}

#[test]
fn the_demo_passes_on_hello_hyper() {
    run_demo("hello-hyper");
}

#[test]
fn the_demo_passes_on_hello_tls() {
    run_demo("hello-tls");
}
