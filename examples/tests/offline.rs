//! Runs the `offline-mocks` example and checks what it reports.

use std::process::Command;

#[test]
fn offline_example_runs_the_sdk_on_the_mocks() {
    let out = Command::new(env!("CARGO_BIN_EXE_offline-mocks"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run offline-mocks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("backend: submit #1 refused, submit #2 accepted"),
        "{stdout}"
    );
    for line in [
        "log 1: [orchestrator] waiting: the backend could not start an agent: org acme has no usable cluster: cluster still starting",
        "log 2: reading the repository",
        "log 4: opened a pull request",
    ] {
        assert!(stdout.contains(line), "missing {line:?}:\n{stdout}");
    }
    assert!(stdout.contains("wrong token: 401"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("offline example OK: task t")
            && last.ends_with(
                "Succeeded after 2 submits, 4 log lines, pr_url=https://git.example.invalid/acme/docs/pull/7"
            ),
        "{last}"
    );
    // The retry is visible in the orchestrator's log, with the backend's reason.
    assert!(stderr.contains("cluster still starting"), "{stderr}");
}
