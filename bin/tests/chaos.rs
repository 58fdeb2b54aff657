//! Chaos tests with the real `guildnet-orchestrator` and `guildnet-agent` binaries (local backend,
//! real SQLite file, loopback):
//!
//! - kill -9 of the orchestrator while 1,000 tasks flow (scheduled concurrently, each a trivial
//!   `true`), restart on the same state dir: every accepted task exists and ends Succeeded, none
//!   was claimed twice, and nothing is left unfinished.
//! - kill -9 of an agent mid-task: the task is requeued within two lease periods, completes
//!   exactly once, and the killed agent's credentials can no longer complete it.

mod common;

use common::*;
use guildnet_core::client::OrchestratorClient;
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::api::TaskListQuery;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tasks in the kill -9 test.
const FLOW_TASKS: usize = 1000;
/// Concurrent schedulers.
const SCHEDULERS: usize = 8;
/// The accepted count at which the orchestrator is killed.
const KILL_AT: usize = 400;
/// Unfinished tasks allowed at once (agents are real processes on 2 cores).
const WINDOW: usize = 96;

/// Tasks not yet in a terminal state, by status filter (each list is capped at 1,000).
async fn unfinished(c: &OrchestratorClient) -> Result<Vec<Task>, String> {
    let mut out = Vec::new();
    for s in [
        TaskStatus::Scheduled,
        TaskStatus::Submitted,
        TaskStatus::Running,
    ] {
        let q = TaskListQuery {
            status: Some(s),
            limit: Some(1000),
            ..Default::default()
        };
        out.extend(c.tasks(&q).await.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_1000_tasks_flow_loses_none_and_claims_none_twice() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut orch = Orchestrator::start_with(&state, port, &[], &[("RUST_LOG", "warn")]);
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();

    let accepted: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    let failed_attempts = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    // How many tasks are unfinished, refreshed by the main loop; schedulers wait while the
    // window is full.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..SCHEDULERS {
        let (c, acme) = (c.clone(), acme.clone());
        let (accepted, failed, next, in_flight) = (
            accepted.clone(),
            failed_attempts.clone(),
            next.clone(),
            in_flight.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= FLOW_TASKS {
                    return;
                }
                // Each task is scheduled until one request is accepted; a request the kill
                // interrupted may or may not have been recorded (the final check covers both).
                loop {
                    while in_flight.load(Ordering::SeqCst) >= WINDOW {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    match c.schedule(&acme, "true", None).await {
                        Ok(t) => {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                            accepted.lock().unwrap().push(t.id);
                            break;
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }

    // Keep the window accurate; kill -9 once KILL_AT tasks were accepted, restart after 1 s.
    let mut killed_at = None;
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(100);
    loop {
        let n = accepted.lock().unwrap().len();
        if killed_at.is_none() && n >= KILL_AT {
            orch.kill9();
            killed_at = Some(Instant::now());
        }
        if let Some(k) = killed_at {
            if !restarted && k.elapsed() >= Duration::from_secs(1) {
                orch = Orchestrator::start_with(&state, port, &[], &[("RUST_LOG", "warn")]);
                orch.wait_ready().await;
                restarted = true;
            }
        }
        if killed_at.is_none() || restarted {
            if let Ok(u) = unfinished(&c).await {
                in_flight.store(u.len(), Ordering::SeqCst);
                if n >= FLOW_TASKS && u.is_empty() {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "tasks did not drain: {n} accepted, {} unfinished",
            in_flight.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    assert!(restarted, "the orchestrator was never killed");

    let ids = accepted.lock().unwrap().clone();
    assert_eq!(ids.len(), FLOW_TASKS);
    let mut requeued = 0;
    for id in &ids {
        let t = c
            .task(id)
            .await
            .unwrap_or_else(|e| panic!("accepted task {id} lost: {e}"));
        assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
        if t.attempt == 1 {
            assert_eq!(t.claims, 1, "task claimed twice: {t:?}");
            assert_eq!(t.fencing, 1, "{t:?}");
        } else {
            // Requeued because the kill landed between spawning its agent and recording it:
            // the first agent's token was rotated, so it could not have claimed as well.
            requeued += 1;
            assert!(t.claims <= t.attempt, "{t:?}");
            assert_eq!(u64::from(t.claims), t.fencing, "{t:?}");
        }
    }
    // Nothing anywhere (including requests the kill interrupted) is left unfinished.
    assert!(unfinished(&c).await.unwrap().is_empty());
    eprintln!(
        "kill -9 chaos: {} tasks, {} requeued, {} schedule attempts refused while down, {:.1} s",
        ids.len(),
        requeued,
        failed_attempts.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    assert!(
        requeued <= WINDOW,
        "only tasks in flight at the kill may be requeued"
    );
}

/// The value of `key` in a process's environment.
fn env_of(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_requeued_within_two_leases_and_its_late_completion_is_refused() {
    const LEASE: Duration = Duration::from_secs(4); // common::Orchestrator runs --lease-ttl-secs 4
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start(&dir.path().join("state"), free_port());
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();
    let t = c
        .schedule(&acme, "echo attempt; sleep 4; echo finished", None)
        .await
        .unwrap();
    let first = wait_running(&c, &t.id).await;
    let first_agent = first.agent.clone().unwrap();
    let pid = orch.agent_pid(&t.id);
    let stale_token = env_of(pid, "GUILDNET_AGENT_TOKEN").expect("agent token in the environment");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();

    // Requeued (a new attempt) within two lease periods.
    let requeued_after = loop {
        let cur = c.task(&t.id).await.unwrap();
        if cur.attempt >= 2 {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < LEASE * 2, "not requeued: {cur:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 60)
        .await
        .remove(0);
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(
        (done.attempt, done.claims, done.fencing),
        (2, 2, 2),
        "{done:?}"
    );

    // Exactly one completion: one `task.complete` audit entry and one "finished" line.
    let http = reqwest::Client::new();
    let audit: serde_json::Value = http
        .get(format!("{}/audit?limit=10000", orch.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let completions = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "task.complete" && a["subject"] == t.id.as_str())
        .count();
    assert_eq!(completions, 1, "{audit}");
    let logs = c.logs(&t.id, 0).await.unwrap();
    assert_eq!(logs.iter().filter(|l| l.line == "finished").count(), 1);

    // The killed agent's late calls are refused and change nothing.
    let late = http
        .post(format!("{}/agent/complete", orch.url()))
        .bearer_auth(&stale_token)
        .json(&json!({"agent": first_agent, "fencing": 1, "status": "Failed", "exitCode": 9}))
        .send()
        .await
        .unwrap();
    let status = late.status().as_u16();
    let body: serde_json::Value = late.json().await.unwrap();
    eprintln!("stale completion: HTTP {status} {body}; requeued after {requeued_after:?}");
    assert!(
        status == 409 || status == 401,
        "stale completion must be refused: {status} {body}"
    );
    assert!(body["error"]["code"].is_string(), "{body}");
    // With the current agent's credentials but the old agent name and fencing token: 409.
    let current_pid = orch.agent_pid(&t.id);
    if let Some(cur_token) = env_of(current_pid, "GUILDNET_AGENT_TOKEN") {
        let r = http
            .post(format!("{}/agent/complete", orch.url()))
            .bearer_auth(&cur_token)
            .json(&json!({"agent": first_agent, "fencing": 1, "status": "Failed", "exitCode": 9}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 409);
    }
    let after = c.task(&t.id).await.unwrap();
    assert_eq!(after.status, TaskStatus::Succeeded);
    assert_eq!(after.exit_code, Some(0));
    assert_eq!(after.finished_at, done.finished_at);
}
