//! End-to-end on PostgreSQL: the real `guildnet-orchestrator` with `--store postgres://...`
//! on the testbed's PostgreSQL (a real server, run as an unprivileged user), and real
//! `guildnet-agent` processes. Schedule -> claim -> logs -> Succeeded; the state lives in the
//! database (no SQLite file; a second orchestrator with another state dir sees it); an
//! unreachable database fails the start of `guildnet-orchestrator` and of `guildnet up` with
//! the URL named without its password. Two replicas: a task scheduled and run through one
//! is followed live (SSE) on the other, and one of them runs the reaper.

use futures_util::StreamExt;
use guildnet_core::client::LogFollow;
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_testbed::postgres::Postgres;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_on_postgres_runs_tasks_to_succeeded() {
    let mut pg = Postgres::start().await.expect(
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
    drop(orch2);

    // The database goes away: requests fail with 503 store_unavailable, and succeed again
    // once it is back, without restarting the orchestrator.
    pg.stop();
    match c.schedule(&acme, "echo during-outage", None).await {
        Err(guildnet_core::client::ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (503, "store_unavailable"));
        }
        other => panic!("expected 503 while the database is down, got {other:?}"),
    }
    pg.start_again().await.expect("restart postgres");
    let after = guildnet_testbed::eventually(
        "schedule works again after the database is back",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            let acme = acme.clone();
            async move { c.schedule(&acme, "echo after-outage", None).await.ok() }
        },
    )
    .await;
    let done = wait_terminal(&c, std::slice::from_ref(&after.id), 60).await;
    assert_eq!(done[0].status, TaskStatus::Succeeded, "{:?}", done[0]);
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

/// Two orchestrator replicas on one database: a task scheduled through A (its agent talks to
/// A) is followed over SSE on B, live, line by line, to its end: B learns of A's writes from
/// PostgreSQL's NOTIFY (it has no other wake-up while a task runs). Exactly one replica says
/// it runs the reaper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_run_through_one_replica_is_followed_live_on_the_other() {
    let pg = Postgres::start().await.expect("testbed postgres");
    let url = pg.create_database("guildnet").await.expect("database");
    let dir = tempfile::tempdir().unwrap();
    let a = Orchestrator::start_with(&dir.path().join("a"), free_port(), &["--store", &url], &[]);
    a.wait_ready().await;
    let b = Orchestrator::start_with(&dir.path().join("b"), free_port(), &["--store", &url], &[]);
    b.wait_ready().await;
    let acme = OrgName::new("acme").unwrap();

    let t = a
        .client()
        .schedule(
            &acme,
            "for i in $(seq 1 40); do echo line-$i; sleep 0.05; done",
            None,
        )
        .await
        .unwrap();
    let mut stream = Box::pin(b.client().follow_logs(&t.id, 0, Duration::from_secs(10)));
    let mut lines = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(item) = stream.next().await {
            match item.expect("stream item") {
                LogFollow::Line(l) => lines.push(l.line),
                LogFollow::End(t) => return *t,
            }
        }
        panic!("stream ended without an end event");
    })
    .await
    .expect("B followed the task to its end");
    assert_eq!(end.status, TaskStatus::Succeeded, "{end:?}");
    let out: Vec<&String> = lines.iter().filter(|l| l.starts_with("line-")).collect();
    let expected: Vec<String> = (1..=40).map(|i| format!("line-{i}")).collect();
    assert_eq!(
        out,
        expected.iter().collect::<Vec<_>>(),
        "every line once, in order"
    );

    // One reaper among the two.
    let log_a = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    let log_b = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    let leads = |log: &str| log.contains("this orchestrator runs the reaper");
    assert!(
        leads(&log_a) != leads(&log_b),
        "exactly one replica runs the reaper:\nA: {log_a}\nB: {log_b}"
    );
}
