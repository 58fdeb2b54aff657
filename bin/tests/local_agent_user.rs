//! Local agents under an orchestrator run as root (issue 16 §2): by default they and their
//! runners run as `nobody`, so a runner cannot read the admin token, the kubeconfigs or the
//! database even without Landlock; `--agent-user current` runs them as root on purpose; a setup
//! the agent user cannot use fails at start with the path and the fix. Real
//! `guildnet-orchestrator` and `guildnet-agent` binaries, runner `sh -s`.
//!
//! Needs root (as CI runs); as another user the switch is impossible and the test says so.

mod common;

use common::*;
use guildnet_core::model::TaskStatus;
use guildnet_core::names::{OrgName, TaskId};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

async fn run(orch: &Orchestrator, script: &str) -> (TaskStatus, String, TaskId) {
    let c = orch.client();
    let t = c
        .schedule(&OrgName::new("acme").unwrap(), script, None)
        .await
        .unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 90).await;
    let log: String = c
        .logs(&t.id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line + "\n")
        .collect();
    (done[0].status, log, t.id)
}

/// The value after `key=` on a line of `log`.
fn field<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_orchestrator_runs_agents_as_nobody_and_they_cannot_read_its_state() {
    if !is_root() {
        eprintln!("skipped: needs root to switch users (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let orch = Orchestrator::start_with(&state, free_port(), &[], &[]);
    orch.wait_ready().await;
    let token_file = state.join("orchestrator.db");
    // A root-only file outside every path Landlock denies: only the user switch keeps the
    // runner out of it (an agent run as root reads it).
    let root_only = dir.path().join("root-only.txt");
    std::fs::write(&root_only, "secret").unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!(
        "echo uid=$(id -u)\n\
         if cat '{root_only}' >/dev/null 2>&1; then echo root_only=read; else echo root_only=denied; fi\n\
         if cat '{db}' >/dev/null 2>&1; then echo db=read; else echo db=denied; fi\n\
         if ls '{state}' >/dev/null 2>&1; then echo state=listed; else echo state=denied; fi\n\
         if cat /proc/$PPID/environ >/dev/null 2>&1; then echo parent_env=read; else echo parent_env=denied; fi\n\
         echo hello > made-by-runner.txt\n",
        db = token_file.display(),
        state = state.display(),
        root_only = root_only.display(),
    );
    let (status, log, id) = run(&orch, &script).await;
    assert_eq!(status, TaskStatus::Succeeded, "log:\n{log}");
    assert_eq!(field(&log, "uid"), Some("65534"), "log:\n{log}");
    assert_eq!(field(&log, "root_only"), Some("denied"), "log:\n{log}");
    assert_eq!(field(&log, "db"), Some("denied"), "log:\n{log}");
    assert_eq!(field(&log, "state"), Some("denied"), "log:\n{log}");
    // The agent made itself non-dumpable, and runs as another user than the orchestrator.
    assert_eq!(field(&log, "parent_env"), Some("denied"), "log:\n{log}");

    // The agent dir: the orchestrator's (0711), its log and pid file unreadable to the agent;
    // the workspace, home and agent state are the agent user's.
    let agent_dir = dir.path().join("workspaces").join(id.as_str());
    let meta = std::fs::metadata(&agent_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o711));
    for own in ["workspace", "home", "state"] {
        let m = std::fs::metadata(agent_dir.join(own)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (65534, 0o700), "{own}");
    }
    let made = std::fs::metadata(agent_dir.join("workspace/made-by-runner.txt")).unwrap();
    assert_eq!(made.uid(), 65534);
    for private in ["agent.log", "agent.pid"] {
        let m = std::fs::metadata(agent_dir.join(private)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o077), (0, 0), "{private}");
    }
    // The state dir holds no agent files and stays closed.
    let sm = std::fs::metadata(&state).unwrap();
    assert_eq!(sm.mode() & 0o777, 0o700);

    // Cancel still reaches an agent of another user (the orchestrator is root).
    let c = orch.client();
    let t = c
        .schedule(&OrgName::new("acme").unwrap(), "sleep 300", None)
        .await
        .unwrap();
    wait_running(&c, &t.id).await;
    let pid = orch.agent_pid(&t.id);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
    c.cancel(&t.id).await.unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 30).await;
    assert_eq!(done[0].status, TaskStatus::Cancelled);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "agent {pid} outlived cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_user_current_keeps_the_orchestrators_user_on_purpose() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start_with(
        &dir.path().join("state"),
        free_port(),
        &["--agent-user", "current"],
        &[],
    );
    orch.wait_ready().await;
    let root_only = dir.path().join("root-only.txt");
    std::fs::write(&root_only, "secret").unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!(
        "echo uid=$(id -u); if cat '{}' >/dev/null 2>&1; then echo root_only=read; fi",
        root_only.display()
    );
    let (status, log, _) = run(&orch, &script).await;
    assert_eq!(status, TaskStatus::Succeeded, "log:\n{log}");
    assert_eq!(field(&log, "uid"), Some("0"), "log:\n{log}");
    // The control for the test above: as root the runner does read it.
    assert_eq!(field(&log, "root_only"), Some("read"), "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_state_dir_parent_moves_agent_dirs_to_var_lib() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // Like `guildnet up` as root: ~/.guildnet/state under /root (0700).
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("root-home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = home.join(".guildnet").join("state");
    std::fs::create_dir_all(&state).unwrap();
    let orch = Orchestrator::start_with(&state, free_port(), &[], &[]);
    orch.wait_ready().await;
    let (status, log, id) = run(&orch, "echo uid=$(id -u); pwd").await;
    assert_eq!(status, TaskStatus::Succeeded, "log:\n{log}");
    assert_eq!(field(&log, "uid"), Some("65534"), "log:\n{log}");
    let root = guildnet_core::agent_user::system_workspaces_root(&state);
    assert!(root.starts_with("/var/lib/guildnet"), "{}", root.display());
    let ws = root.join(id.as_str()).join("workspace");
    assert!(
        log.contains(ws.to_str().unwrap()),
        "runner ran in {ws:?}? log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn what_the_agent_user_cannot_reach_fails_at_start_with_the_path_and_the_fix() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cs = closed.join("code-server");
    std::fs::write(&cs, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&cs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    open_for_agents(&state);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guildnet-orchestrator"))
        .args(["--listen", "127.0.0.1:0", "--code-server"])
        .arg(&cs)
        .env("GUILDNET_STATE_DIR", &state)
        .env("ORCHESTRATOR_TOKEN", TOKEN)
        .env("GUILDNET_AGENT_BIN", env!("CARGO_BIN_EXE_guildnet-agent"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {err}");
    assert!(err.contains("code-server"), "{err}");
    assert!(err.contains("nobody"), "{err}");
    assert!(err.contains(closed.to_str().unwrap()), "{err}");
    assert!(err.contains("--agent-user"), "{err}");

    for bad in ["a b", "12x", ""] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_guildnet-orchestrator"))
            .args(["--listen", "127.0.0.1:0", "--agent-user", bad])
            .env("GUILDNET_STATE_DIR", &state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("--agent-user"), "{bad:?}: {err}");
    }
}
