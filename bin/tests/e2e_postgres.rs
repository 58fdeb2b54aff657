//! End-to-end on PostgreSQL: the real `guildnet-orchestrator` with `--store postgres://...`
//! on the testbed's PostgreSQL (a real server, run as an unprivileged user), and real
//! `guildnet-agent` processes. Schedule -> claim -> logs -> Succeeded; the state lives in the
//! database (no SQLite file; a second orchestrator with another state dir sees it); an
//! unreachable database fails the start of `guildnet-orchestrator` and of `guildnet up` with
//! the URL named without its password.

use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_testbed::postgres::Postgres;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_on_postgres_runs_tasks_to_succeeded() {
    let pg = Postgres::start().await.expect(
        "the testbed's PostgreSQL must start (install it: scripts/testbed/install.sh postgres)",
    );
    let url = pg.create_database("guildnet").await.expect("database");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let orch = Orchestrator::start_with(&state, free_port(), &["--store", &url], &[]);
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();

    let ok = c
        .schedule(&acme, "echo hello-from-postgres; echo line-2", None)
        .await
        .unwrap();
    let failing = c.schedule(&acme, "echo bye; exit 3", None).await.unwrap();
    let done = wait_terminal(&c, &[ok.id.clone(), failing.id.clone()], 90).await;
    assert_eq!(done[0].status, TaskStatus::Succeeded, "{:?}", done[0]);
    assert_eq!(done[0].exit_code, Some(0));
    assert_eq!(done[0].claims, 1);
    assert_eq!(done[1].status, TaskStatus::Failed, "{:?}", done[1]);
    assert_eq!(done[1].exit_code, Some(3));
    let logs = c.logs(&ok.id, 0).await.unwrap();
    let lines: Vec<&str> = logs.iter().map(|l| l.line.as_str()).collect();
    assert!(lines.contains(&"hello-from-postgres"), "{lines:?}");
    assert!(lines.contains(&"line-2"), "{lines:?}");

    // The state is in PostgreSQL, not in a SQLite file of the state dir.
    assert!(
        !state.join("orchestrator.db").exists(),
        "no SQLite database was created"
    );
    let rows = pg
        .psql(
            "guildnet",
            &format!(
                "SELECT status || ' ' || claims FROM tasks WHERE id = '{}'",
                ok.id
            ),
        )
        .await
        .unwrap();
    assert_eq!(rows.trim(), "Succeeded 1");
    let log_rows = pg
        .psql(
            "guildnet",
            &format!("SELECT COUNT(*) FROM logs WHERE task_id = '{}'", ok.id),
        )
        .await
        .unwrap();
    assert!(log_rows.trim().parse::<u64>().unwrap() >= 2, "{log_rows}");

    // Another orchestrator (another state dir) on the same database sees the same tasks.
    let state2 = dir.path().join("state2");
    let orch2 = Orchestrator::start_with(&state2, free_port(), &["--store", &url], &[]);
    orch2.wait_ready().await;
    let seen = orch2.client().task(&ok.id).await.unwrap();
    assert_eq!(seen.status, TaskStatus::Succeeded);
    assert_eq!(seen.exit_code, Some(0));
}

/// Runs `program args` (expected to fail at start); returns its exit success and output.
fn run_to_exit(program: &str, args: &[&str], state: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .env("GUILDNET_STATE_DIR", state)
        .env("ORCHESTRATOR_TOKEN", TOKEN)
        .env_remove("GUILDNET_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} did not exit within 30 s with an unreachable database");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn an_unreachable_postgres_fails_the_start_naming_the_url_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let db_port = free_port();
    let url = format!("postgres://guildnet:Pa55wordNotShown@127.0.0.1:{db_port}/guildnet");
    let shown = format!("postgres://guildnet@127.0.0.1:{db_port}/guildnet");
    let listen = format!("127.0.0.1:{}", free_port());
    for (program, args) in [
        (
            env!("CARGO_BIN_EXE_guildnet-orchestrator"),
            vec!["--listen", &listen, "--store", &url],
        ),
        (
            env!("CARGO_BIN_EXE_guildnet"),
            vec!["up", "--no-dashboard", "--listen", &listen, "--store", &url],
        ),
    ] {
        let (ok, out) = run_to_exit(program, &args, &dir.path().join("state"));
        assert!(!ok, "{program} started without its database:\n{out}");
        assert!(out.contains(&shown), "{program} names the database:\n{out}");
        assert!(out.contains("cannot connect"), "{program} says why:\n{out}");
        assert!(
            !out.contains("Pa55wordNotShown"),
            "{program} printed the password:\n{out}"
        );
    }
}
