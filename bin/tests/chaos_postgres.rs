//! Chaos with two orchestrator replicas on one PostgreSQL (the testbed's, a real server), the
//! real `guildnet-orchestrator` and `guildnet-agent` binaries, and a load balancer in front:
//! 1,000 tasks flow through real local agents; replica A is killed with SIGKILL in the middle,
//! then restarted. Every accepted task ends Succeeded, none is claimed twice, each completes
//! exactly once (one `task.complete` audit row), and a task log followed on A when A is killed
//! resumes on B (`Last-Event-ID`) with no gap and no duplicate.
//!
//! The load balancer is the testbed's nginx (Debian's binary, [`Nginx`]): round-robin over both
//! replicas for agents (`--public-url`) and the schedulers; a second nginx with A as primary and
//! B as backup for the two followers (the task log and `GET /events`), so they are on A when it
//! dies and must resume on B through the load balancer.

mod common;

use common::*;
use futures_util::StreamExt;
use guildnet_core::client::{LogFollow, OrchestratorClient};
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::api::TaskListQuery;
use guildnet_core::token::Secret;
use guildnet_testbed::nginx::Nginx;
use guildnet_testbed::postgres::Postgres;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FLOW_TASKS: usize = 1000;
const SCHEDULERS: usize = 8;
const KILL_AT: usize = 400;
const WINDOW: usize = 96;

/// Follows `GET /events` through `base` from the start, reconnecting with `Last-Event-ID` when
/// the connection drops (as a browser's EventSource does), until `stop` is set. Returns every
/// event id received, in order of arrival, and how many times it had to reconnect.
async fn follow_events(
    c: OrchestratorClient,
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<AtomicUsize>,
) -> (Vec<u64>, usize) {
    let mut ids: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    while !stop.load(Ordering::SeqCst) {
        let last = ids.last().map(|l| l.to_string());
        let stream = match c.open_sse("/events", last.as_deref()).await {
            Ok(s) => s,
            Err(_) => {
                reconnects += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = Box::pin(stream);
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            match next {
                Ok(Some(Ok(m))) => {
                    if let Some(id) = m.id.as_deref().and_then(|i| i.parse::<u64>().ok()) {
                        ids.push(id);
                        seen.store(ids.len(), Ordering::SeqCst);
                    }
                }
                // The connection dropped (the replica died): reconnect from the last id.
                Ok(Some(Err(_))) | Ok(None) => {
                    reconnects += 1;
                    break;
                }
                Err(_) if stop.load(Ordering::SeqCst) => return (ids, reconnects),
                Err(_) => {}
            }
        }
    }
    (ids, reconnects)
}

async fn unfinished(c: &OrchestratorClient) -> Result<usize, String> {
    let mut n = 0;
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
        n += c.tasks(&q).await.map_err(|e| e.to_string())?.len();
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_kill9_one_while_1000_tasks_flow_loses_none_and_claims_none_twice() {
    let started = Instant::now();
    let pg = Postgres::start().await.expect(
        "the testbed's PostgreSQL must start (install it: scripts/testbed/install.sh postgres)",
    );
    let url = pg.create_database("guildnet").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let replicas = vec![
        SocketAddr::from(([127, 0, 0, 1], port_a)),
        SocketAddr::from(([127, 0, 0, 1], port_b)),
    ];
    let lb = Nginx::round_robin(&replicas)
        .await
        .expect("the testbed's nginx must start (install it: scripts/testbed/install.sh nginx)");
    // The followers' own entrance prefers A: they follow on A until the kill, then resume on B.
    let follow_lb = Nginx::primary_backup(replicas[0], replicas[1])
        .await
        .unwrap();
    let lb_url = lb.url();
    let args = ["--store", url.as_str(), "--public-url", lb_url.as_str()];
    let quiet = [("RUST_LOG", "warn")];
    let mut a = Orchestrator::start_with(&dir.path().join("a"), port_a, &args, &quiet);
    let b = Orchestrator::start_with(&dir.path().join("b"), port_b, &args, &quiet);
    a.wait_ready().await;
    b.wait_ready().await;
    let c = OrchestratorClient::new(&lb_url, Secret::new(TOKEN)).unwrap();
    let acme = OrgName::new("acme").unwrap();

    // `GET /events` followed from the start through the followers' nginx (on A until the kill).
    let events_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let events_seen = Arc::new(AtomicUsize::new(0));
    let events_follower = tokio::spawn(follow_events(
        OrchestratorClient::new(&follow_lb.url(), Secret::new(TOKEN)).unwrap(),
        events_stop.clone(),
        events_seen.clone(),
    ));

    let accepted: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    // When each schedule was accepted (for the failover figure).
    let accepted_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..SCHEDULERS {
        let (c, acme) = (c.clone(), acme.clone());
        let accepted_at = accepted_at.clone();
        let (accepted, refused, next, in_flight) = (
            accepted.clone(),
            refused.clone(),
            next.clone(),
            in_flight.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                if next.fetch_add(1, Ordering::SeqCst) >= FLOW_TASKS {
                    return;
                }
                loop {
                    while in_flight.load(Ordering::SeqCst) >= WINDOW {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    match c.schedule(&acme, "true", None).await {
                        Ok(t) => {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                            accepted.lock().unwrap().push(t.id);
                            accepted_at.lock().unwrap().push(Instant::now());
                            break;
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }

    let followed_lines = Arc::new(AtomicUsize::new(0));
    let mut follower = None;
    let mut killed_at = None;
    let mut lines_at_kill = 0;
    let mut events_at_kill = 0;
    let mut killed_utc = None;
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = accepted.lock().unwrap().len();
        if follower.is_none() && n >= KILL_AT - 100 {
            // A log followed across the kill: on A first, then on B.
            let followed = c
                .schedule(
                    &acme,
                    "for i in $(seq 1 300); do echo line-$i; sleep 0.05; done",
                    None,
                )
                .await
                .unwrap();
            follower = Some({
                let c = OrchestratorClient::new(&follow_lb.url(), Secret::new(TOKEN)).unwrap();
                let id = followed.id.clone();
                let count = followed_lines.clone();
                tokio::spawn(async move {
                    let mut stream = Box::pin(c.follow_logs(&id, 0, Duration::from_secs(60)));
                    let mut lines = Vec::new();
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(LogFollow::Line(l)) => {
                                lines.push((l.seq, l.line));
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(LogFollow::End(t)) => return (lines, Some(*t)),
                            Err(e) => panic!("log follow failed: {e}"),
                        }
                    }
                    (lines, None)
                })
            });
        }
        let mid_log = (30..250).contains(&followed_lines.load(Ordering::SeqCst));
        if killed_at.is_none() && n >= KILL_AT && mid_log {
            a.kill9();
            killed_at = Some(Instant::now());
            killed_utc = Some(chrono::Utc::now());
            lines_at_kill = followed_lines.load(Ordering::SeqCst);
            events_at_kill = events_seen.load(Ordering::SeqCst);
        }
        if let Some(k) = killed_at {
            if !restarted && k.elapsed() >= Duration::from_secs(2) {
                a = Orchestrator::start_with(&dir.path().join("a"), port_a, &args, &quiet);
                a.wait_ready().await;
                restarted = true;
            }
        }
        if let Ok(u) = unfinished(&c).await {
            in_flight.store(u, Ordering::SeqCst);
            if n >= FLOW_TASKS && u == 0 {
                break;
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
    assert!(restarted, "replica A was never killed");
    assert!(lines_at_kill >= 30, "the follower was mid-log at the kill");
    let flow_secs = started.elapsed().as_secs_f64();

    let ids = accepted.lock().unwrap().clone();
    assert_eq!(ids.len(), FLOW_TASKS);
    let mut requeued = 0;
    let killed_utc = killed_utc.unwrap();
    let mut first_claim_after_kill: Option<chrono::DateTime<chrono::Utc>> = None;
    for id in &ids {
        let t: Task = c
            .task(id)
            .await
            .unwrap_or_else(|e| panic!("accepted task {id} lost: {e}"));
        assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
        if let Some(s) = t.started_at.filter(|s| *s > killed_utc) {
            first_claim_after_kill = Some(first_claim_after_kill.map_or(s, |f| f.min(s)));
        }
        if t.attempt == 1 {
            assert_eq!((t.claims, t.fencing), (1, 1), "claimed twice: {t:?}");
        } else {
            requeued += 1;
            assert!(t.claims <= t.attempt, "{t:?}");
            assert_eq!(u64::from(t.claims), t.fencing, "{t:?}");
        }
    }
    // Exactly one completion per task.
    let http = reqwest::Client::new();
    let mut completions: HashMap<String, usize> = HashMap::new();
    let mut after = 0u64;
    loop {
        let page: serde_json::Value = http
            .get(format!("{lb_url}/audit?after={after}&limit=10000"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = page
            .as_array()
            .unwrap_or_else(|| panic!("audit page: {page}"));
        let Some(last) = rows.last() else { break };
        after = last["id"].as_u64().unwrap();
        for a in rows {
            if a["action"] == "task.complete" {
                *completions
                    .entry(a["subject"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    for id in &ids {
        assert_eq!(
            completions.get(id.as_str()).copied(),
            Some(1),
            "task {id} completions"
        );
    }

    // The followed `/events`: every event once and in id order, the same ids as the store's,
    // across the kill (the follower reconnected through nginx and resumed on B).
    let stored: Vec<u64> = pg
        .psql("guildnet", "SELECT id FROM events ORDER BY id")
        .await
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let last_stored = *stored.last().expect("events were written");
    guildnet_testbed::eventually(
        "the events follower to catch up",
        Duration::from_secs(60),
        || {
            let n = events_seen.load(Ordering::SeqCst);
            let want = stored.len();
            async move { (n >= want).then_some(()) }
        },
    )
    .await;
    events_stop.store(true, Ordering::SeqCst);
    let (event_ids, event_reconnects) =
        tokio::time::timeout(Duration::from_secs(10), events_follower)
            .await
            .expect("the events follower stopped")
            .unwrap();
    assert!(
        events_at_kill > 0,
        "the events follower was following at the kill"
    );
    assert!(
        event_reconnects >= 1,
        "the events follower lost its connection at the kill"
    );
    assert!(
        event_ids.windows(2).all(|w| w[0] < w[1]),
        "events: no duplicate, in order"
    );
    let upto: Vec<u64> = event_ids
        .iter()
        .copied()
        .filter(|i| *i <= last_stored)
        .collect();
    assert_eq!(
        upto, stored,
        "events: the follower saw exactly the stored events, no gap"
    );

    // The followed log: every line once, in order, whichever replica served it.
    let (lines, end) = tokio::time::timeout(Duration::from_secs(60), follower.unwrap())
        .await
        .expect("the log follower finished")
        .unwrap();
    let end = end.expect("the log stream ended with the task");
    assert_eq!(end.status, TaskStatus::Succeeded, "{end:?}");
    let seqs: Vec<u64> = lines.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order: {seqs:?}"
    );
    let out: Vec<&str> = lines
        .iter()
        .map(|(_, l)| l.as_str())
        .filter(|l| l.starts_with("line-"))
        .collect();
    // A requeued attempt starts the script again; its lines follow the first attempt's.
    let last_run = out.iter().rposition(|l| *l == "line-1").unwrap_or(0);
    let expected: Vec<String> = (1..=300).map(|i| format!("line-{i}")).collect();
    assert_eq!(
        out[last_run..].to_vec(),
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "no gap"
    );
    // Why tasks were requeued (for the report: a lost lease, an agent that never claimed).
    let reasons = pg
        .psql(
            "guildnet",
            "SELECT coalesce(message, '') || ' x' || count(*) FROM events \
             WHERE kind = 'task.requeued' GROUP BY message",
        )
        .await
        .unwrap_or_default();
    eprintln!("requeue reasons: {}", reasons.trim().replace('\n', "; "));
    let killed_at = killed_at.unwrap();
    let first_schedule = accepted_at
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > killed_at)
        .min()
        .map(|t| t.duration_since(killed_at))
        .expect("schedules accepted after the kill");
    let first_claim = (first_claim_after_kill.expect("claims after the kill") - killed_utc)
        .to_std()
        .unwrap_or_default();
    eprintln!(
        "failover: first schedule accepted {:.0} ms after the kill, first claim {:.0} ms after",
        first_schedule.as_secs_f64() * 1000.0,
        first_claim.as_secs_f64() * 1000.0
    );
    assert!(
        first_schedule < Duration::from_secs(5),
        "{first_schedule:?}"
    );
    assert!(first_claim < Duration::from_secs(5), "{first_claim:?}");
    eprintln!(
        "two replicas behind nginx, kill -9 of one: {} tasks in {flow_secs:.1} s, {requeued} \
         requeued, {} schedule attempts refused; followed log: {} lines, attempt {}, {} before \
         the kill; followed /events: {} events, {} before the kill, {event_reconnects} reconnects",
        ids.len(),
        refused.load(Ordering::SeqCst),
        lines.len(),
        end.attempt,
        lines_at_kill,
        event_ids.len(),
        events_at_kill
    );
}
