//! Starts the `placement-orchestrator` example with two pools and three orgs, schedules
//! through guildnet-core's client, and checks that placement follows the org labels and that
//! a full pool queues tasks instead of running them.

use futures_util::StreamExt;
use guildnet_core::client::{LogFollow, OrchestratorClient};
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::token::Secret;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "placement-example-token-0123456789";

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(state: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_placement-orchestrator"))
        .args(["--listen", "127.0.0.1:0", "--runner", "sh -s"])
        .args(["--pool", "gpu:1:tier=gpu", "--pool", "shared:2:tier=shared"])
        .args([
            "--org",
            "acme:tier=gpu",
            "--org",
            "beta:tier=shared",
            "--org",
            "orphan",
        ])
        .args([
            "--submit-retry-ms",
            "200",
            "--heartbeat-secs",
            "1",
            "--lease-ttl-secs",
            "5",
        ])
        .args(["--agent-bin", env!("CARGO_BIN_EXE_example-agent")])
        .env("GUILDNET_STATE_DIR", state)
        .env("ORCHESTRATOR_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn placement-orchestrator");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let url = first
        .strip_prefix("placement orchestrator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let banner: Vec<String> = lines.by_ref().take(6).map_while(Result::ok).collect();
    assert!(
        banner.contains(&"pool gpu: capacity 1, selector tier=gpu".to_owned()),
        "{banner:?}"
    );
    assert!(
        banner.contains(&"org orphan: labels {}".to_owned()),
        "{banner:?}"
    );
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

async fn wait_for(
    c: &OrchestratorClient,
    id: &TaskId,
    what: &str,
    ok: impl Fn(&Task) -> bool,
) -> Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = c.task(id).await.expect("task");
        if ok(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "task never {what}: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The task's stdout lines, once it finished.
async fn log_of(c: &OrchestratorClient, id: &TaskId) -> (Task, Vec<String>) {
    let mut s = Box::pin(c.follow_logs(id, 0, Duration::from_secs(5)));
    let mut lines = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
            Ok(Some(Ok(LogFollow::Line(l)))) => lines.push(l.line),
            Ok(Some(Ok(LogFollow::End(t)))) => return (*t, lines),
            other => panic!("log of {id} broke: {other:?}"),
        }
    }
}

#[tokio::test]
async fn placement_follows_labels_and_capacity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let c = OrchestratorClient::new(&server.url, Secret::new(TOKEN)).expect("client");
    let org = |n: &str| OrgName::new(n).expect("org");
    let script = "echo pool=$GUILDNET_POOL; sleep 1";

    // acme (tier=gpu) may use only the gpu pool, which has one slot: the second task waits.
    let a1 = c
        .schedule(&org("acme"), script, None)
        .await
        .expect("schedule");
    wait_for(&c, &a1.id, "running", |t| t.status == TaskStatus::Running).await;
    let a2 = c
        .schedule(&org("acme"), script, None)
        .await
        .expect("schedule");
    let queued = wait_for(&c, &a2.id, "refused", |t| {
        t.reason
            .as_deref()
            .is_some_and(|r| r.contains("at capacity"))
    })
    .await;
    assert_eq!(queued.status, TaskStatus::Scheduled, "{queued:?}");
    assert!(
        queued
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("gpu 1/1"),
        "{queued:?}"
    );
    let detail = c.task_detail(&a2.id).await.expect("detail");
    let workload = detail.workload.expect("placement describes queued tasks");
    assert_eq!(workload.phase.as_deref(), Some("Queued"));
    let detail = c.task_detail(&a1.id).await.expect("detail");
    let workload = detail.workload.expect("placement describes placed tasks");
    assert!(
        workload.conditions[0].starts_with("Placed=True pool=gpu (1/1"),
        "{workload:?}"
    );

    // beta (tier=shared) runs in the shared pool meanwhile; orphan matches no pool.
    let b1 = c
        .schedule(&org("beta"), script, None)
        .await
        .expect("schedule");
    let o1 = c
        .schedule(&org("orphan"), "echo never", None)
        .await
        .expect("schedule");

    let (a1_done, a1_log) = log_of(&c, &a1.id).await;
    let (a2_done, a2_log) = log_of(&c, &a2.id).await;
    let (b1_done, b1_log) = log_of(&c, &b1.id).await;
    for t in [&a1_done, &a2_done, &b1_done] {
        assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
    }
    assert!(a1_log.contains(&"pool=gpu".to_owned()), "{a1_log:?}");
    assert!(a2_log.contains(&"pool=gpu".to_owned()), "{a2_log:?}");
    assert!(b1_log.contains(&"pool=shared".to_owned()), "{b1_log:?}");
    // Capacity 1: the queued task started only after the first one finished.
    let (a1_end, a2_start) = (
        a1_done.finished_at.expect("end"),
        a2_done.started_at.expect("start"),
    );
    assert!(
        a2_start >= a1_end,
        "a2 started {a2_start} before a1 ended {a1_end}"
    );
    assert_eq!(a2_done.attempt, 1, "refusals are not lost attempts");

    let o1_now = c.task(&o1.id).await.expect("task");
    assert_eq!(o1_now.status, TaskStatus::Scheduled);
    assert!(
        o1_now
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("no pool accepts org orphan"),
        "{o1_now:?}"
    );
    let cancelled = c.cancel(&o1.id).await.expect("cancel");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
}
