//! End-to-end: the real `guildnet-orchestrator` and `guildnet-agent` binaries on loopback, with
//! a real SQLite file. Schedule -> the agent claims -> logs arrive over SSE -> Succeeded; a failing
//! task -> Failed with its exit code; kill -9 of the orchestrator mid-flight, restart: nothing
//! lost and no task claimed twice.

use futures_util::StreamExt;
use guildnet_core::client::LogFollow;
use guildnet_core::model::{LogStream, TaskStatus};
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::TaskListQuery;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_claim_logs_over_sse_and_failures_report_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start(&dir.path().join("state"), free_port());
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();

    // A succeeding task with 300 lines on stdout and one on stderr.
    let ok = c
        .schedule(
            &acme,
            "for i in $(seq 1 300); do echo line-$i; done; echo warn-1 >&2",
            None,
        )
        .await
        .unwrap();
    assert_eq!(ok.status, TaskStatus::Scheduled);

    // Follow its log over SSE until the end event.
    let mut stream = Box::pin(c.follow_logs(&ok.id, 0, Duration::from_secs(30)));
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut seqs = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(item) = stream.next().await {
            match item.expect("stream item") {
                LogFollow::Line(l) => {
                    seqs.push(l.seq);
                    match l.stream {
                        LogStream::Stdout => stdout.push(l.line),
                        LogStream::Stderr => stderr.push(l.line),
                        LogStream::System => {}
                    }
                }
                LogFollow::End(t) => return *t,
            }
        }
        panic!("stream ended without an end event");
    })
    .await
    .expect("task finished in time");
    assert_eq!(end.status, TaskStatus::Succeeded, "{end:?}");
    assert_eq!(end.exit_code, Some(0));
    assert_eq!(end.claims, 1);
    let expected: Vec<String> = (1..=300).map(|i| format!("line-{i}")).collect();
    assert_eq!(stdout, expected, "every stdout line exactly once, in order");
    assert_eq!(stderr, vec!["warn-1".to_string()]);
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(sorted, seqs, "no duplicated sequence numbers");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase"
    );

    // The agent registered and is listed.
    let agents = c.agents().await.unwrap();
    assert!(agents.iter().any(|a| Some(&a.name) == end.agent.as_ref()));

    // Resume: after the 100th line, the stream gives exactly the rest.
    let mut resumed = Box::pin(c.follow_logs(&ok.id, seqs[99], Duration::from_secs(10)));
    let mut rest = Vec::new();
    while let Some(item) = resumed.next().await {
        match item.unwrap() {
            LogFollow::Line(l) => rest.push(l.seq),
            LogFollow::End(_) => break,
        }
    }
    assert_eq!(rest, seqs[100..].to_vec());

    // A failing task reports Failed with the exit code.
    let bad = c
        .schedule(&acme, "echo about to fail; exit 7", None)
        .await
        .unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&bad.id), 60).await;
    assert_eq!(done[0].status, TaskStatus::Failed);
    assert_eq!(done[0].exit_code, Some(7));
    assert_eq!(done[0].reason.as_deref(), Some("runner exited with code 7"));
    let logs = c.logs(&bad.id, 0).await.unwrap();
    assert!(logs.iter().any(|l| l.line == "about to fail"));

    // Cancel a long task: it ends Cancelled and its runner is stopped.
    let long = c
        .schedule(&acme, "echo started; sleep 300", None)
        .await
        .unwrap();
    wait_running(&c, &long.id).await;
    let cancelled = c.cancel(&long.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    // The agent process exits (its pid file points to a dead process soon).
    let pid = orch.agent_pid(&long.id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(
            Instant::now() < deadline,
            "agent {pid} still running after cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No process of the cancelled task is left (the runner's `sleep 300` included).
    let marker = format!("TASK_ID={}", long.id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with_env(&marker);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the cancelled task still running: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = c
        .tasks(&TaskListQuery {
            status: Some(TaskStatus::Cancelled),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

/// Live (non-zombie) processes whose environment contains `needle` (`KEY=value`).
fn processes_with_env(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && !is_zombie(pid) {
            out.push(pid);
        }
    }
    out
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_flight_loses_nothing_and_claims_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let port = free_port();
    let mut orch = Orchestrator::start(&state, port);
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();

    let n = 12;
    let mut ids = Vec::new();
    for i in 0..n {
        let t = c
            .schedule(
                &acme,
                &format!("echo begin-{i}; sleep 3; for j in 1 2 3; do echo tick-{i}-$j; sleep 0.2; done; echo end-{i}"),
                None,
            )
            .await
            .unwrap();
        ids.push(t.id);
    }
    // Let the agents start and claim, then kill -9 while they are mid-task.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = c
            .tasks(&TaskListQuery {
                status: Some(TaskStatus::Running),
                ..Default::default()
            })
            .await
            .unwrap();
        if running.len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "agents never started running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    orch.kill9();
    // Stay down for a moment while agents keep running and buffering their output.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let orch = Orchestrator::start(&state, port);
    orch.wait_ready().await;
    let c = orch.client();

    let done = wait_terminal(&c, &ids, 120).await;
    for (i, t) in done.iter().enumerate() {
        assert_eq!(t.status, TaskStatus::Succeeded, "task {i}: {t:?}");
        assert_eq!(t.claims, 1, "task {i} claimed more than once: {t:?}");
        // A task may have been requeued once if the kill landed between spawning its agent and
        // recording the agent's pid; its token was then rotated, so the stale agent was refused
        // and the task was still claimed exactly once.
        assert!(t.attempt <= 2, "task {i} requeued more than once: {t:?}");
        let lines: Vec<String> = c
            .logs(&t.id, 0)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.stream == LogStream::Stdout)
            .map(|l| l.line)
            .collect();
        let want: Vec<String> = std::iter::once(format!("begin-{i}"))
            .chain((1..=3).map(|j| format!("tick-{i}-{j}")))
            .chain(std::iter::once(format!("end-{i}")))
            .collect();
        assert_eq!(lines, want, "task {i} log lines lost or duplicated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_loses_its_lease_and_a_new_agent_finishes_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start(&dir.path().join("state"), free_port());
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();
    let t = c
        .schedule(&acme, "echo attempt-start; sleep 3; echo finished", None)
        .await
        .unwrap();
    let running = wait_running(&c, &t.id).await;
    let first_agent = running.agent.clone().unwrap();
    let pid = orch.agent_pid(&t.id);
    // kill -9 the agent: no goodbye, its lease must expire.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed_at = Instant::now();

    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 60)
        .await
        .remove(0);
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2, "requeued exactly once: {done:?}");
    assert_eq!(done.claims, 2);
    assert_eq!(done.fencing, 2);
    assert_ne!(done.agent.as_ref(), Some(&first_agent));
    // Requeued and finished within two lease periods (4 s each) plus the task's own 3 s.
    assert!(
        killed_at.elapsed() < Duration::from_secs(4 * 2 + 3 + 5),
        "took {:?}",
        killed_at.elapsed()
    );
    let logs = c.logs(&t.id, 0).await.unwrap();
    let lines: Vec<&str> = logs.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(
        lines.iter().filter(|l| **l == "finished").count(),
        1,
        "{lines:?}"
    );
    // The second agent's lines are all there, after the first agent's: one sequence per task.
    assert!(logs.windows(2).all(|w| w[0].seq < w[1].seq), "{lines:?}");
    let second: Vec<&str> = logs
        .iter()
        .filter(|l| l.agent == *done.agent.as_ref().unwrap())
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(
        second,
        [
            "runner started: sh",
            "attempt-start",
            "finished",
            "runner exited with code 0"
        ],
        "all lines of the second attempt: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_orchestrator_even_with_sse_clients_connected() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orchestrator::start(&dir.path().join("state"), free_port());
    orch.wait_ready().await;
    let c = orch.client();
    let _events = c.open_sse("/events", None).await.unwrap();
    let _events2 = c.open_sse("/events", Some("0")).await.unwrap();
    let child = orch.child.as_mut().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "graceful exit expected: {status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orchestrator did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
