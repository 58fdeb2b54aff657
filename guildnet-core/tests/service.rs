//! Orchestrator service logic over a real SQLite store and a mocked cluster backend: scheduling
//! and validation, dispatch and agent tokens, claim/heartbeat/log/complete with fencing, cancel,
//! lease expiry and requeue, and submit failures with retry.

use axum::http::StatusCode;
use chrono::Utc;
use guildnet_core::model::{LogStream, NewLogLine, Task, TaskStatus};
use guildnet_core::names::{AgentName, OrgName, ProcessId, TaskId};
use guildnet_core::orchestrator::api::{
    ClaimRequest, CompleteRequest, HeartbeatRequest, LogRequest, RegisterRequest, ScheduleRequest,
};
use guildnet_core::orchestrator::{ApiError, Orchestrator, OrchestratorConfig, MAX_TASK_BYTES};
use guildnet_core::seams::{AgentLaunch, BackendError, MockClusterBackend, WorkloadState};
use guildnet_core::store::{Durability, SqliteStore, StateStore, TaskChange};
use guildnet_core::token::Secret;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

type Cancels = Arc<Mutex<Vec<(OrgName, TaskId, AgentName)>>>;

struct Harness {
    o: Orchestrator,
    store: SqliteStore,
    launches: mpsc::UnboundedReceiver<AgentLaunch>,
    submits: Arc<AtomicUsize>,
    cancels: Cancels,
    /// What the backend answers for every workload's status (Running unless a test changes it).
    status: Arc<Mutex<WorkloadState>>,
    /// Tasks the backend was told had finished.
    finished: Arc<Mutex<Vec<Task>>>,
    _dir: tempfile::TempDir,
}

/// A harness whose backend fails the first `failing_submits` submits, then accepts.
async fn harness_with(
    failing_submits: usize,
    tweak: impl FnOnce(&mut OrchestratorConfig),
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("guildnet.db"), Durability::Full).unwrap();
    let (tx, launches) = mpsc::unbounded_channel();
    let submits = Arc::new(AtomicUsize::new(0));
    let cancels: Cancels = Arc::default();

    let mut mock = MockClusterBackend::new();
    mock.expect_name().return_const("mock");
    let finished: Arc<Mutex<Vec<Task>>> = Arc::default();
    let f = finished.clone();
    mock.expect_task_finished().returning(move |t| {
        f.lock().unwrap().push(t.clone());
        Ok(())
    });
    mock.expect_describe().returning(|_, _, _| Ok(None));
    let n = submits.clone();
    mock.expect_submit().returning(move |launch: AgentLaunch| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        if i < failing_submits {
            return Err(BackendError::Workload {
                action: "submit",
                task: launch.task_id,
                agent: launch.agent,
                reason: "cluster said no".into(),
            });
        }
        // The receiver is gone only once the test is over.
        let _ = tx.send(launch);
        Ok(())
    });
    let c = cancels.clone();
    mock.expect_cancel().returning(move |org, task, agent| {
        c.lock()
            .unwrap()
            .push((org.clone(), task.clone(), agent.clone()));
        Ok(())
    });
    let status = Arc::new(Mutex::new(WorkloadState::Running));
    let st = status.clone();
    mock.expect_status()
        .returning(move |_, _, _| Ok(st.lock().unwrap().clone()));
    mock.expect_editor_endpoint().returning(|_, _| Ok(None));

    let mut cfg = OrchestratorConfig::new(Secret::new("admin"), "http://127.0.0.1:1");
    tweak(&mut cfg);
    let o = Orchestrator::new(Arc::new(store.clone()), Arc::new(mock), cfg);
    o.create_org(OrgName::new("acme").unwrap()).await.unwrap();
    Harness {
        o,
        store,
        launches,
        submits,
        cancels,
        status,
        finished,
        _dir: dir,
    }
}

async fn harness() -> Harness {
    harness_with(0, |_| {}).await
}

fn req(org: &str, task: &str) -> ScheduleRequest {
    ScheduleRequest::new(OrgName::new(org).unwrap(), task)
}

impl Harness {
    async fn next_launch(&mut self) -> AgentLaunch {
        tokio::time::timeout(WAIT, self.launches.recv())
            .await
            .expect("backend submit was not called in time")
            .expect("channel open")
    }

    /// Schedules a task and waits until the backend was asked to start its agent.
    async fn scheduled(&mut self, text: &str) -> (Task, AgentLaunch) {
        let t = self.o.schedule(req("acme", text)).await.expect("schedule");
        let launch = self.next_launch().await;
        assert_eq!(launch.task_id, t.id);
        (t, launch)
    }

    async fn get(&self, id: &TaskId) -> Task {
        self.o.task(id).await.expect("task")
    }

    async fn claim(&self, id: &TaskId, agent: &AgentName) -> Result<u64, ApiError> {
        self.o
            .claim(
                id,
                ClaimRequest {
                    agent: agent.clone(),
                    process: None,
                },
            )
            .await
            .map(|c| c.fencing)
    }

    async fn register(&self, id: &TaskId, agent: &AgentName) {
        self.o
            .register(
                id,
                RegisterRequest {
                    agent: agent.clone(),
                    version: Some("test".into()),
                    editor_address: None,
                },
            )
            .await
            .expect("register");
    }

    /// Waits until the task satisfies `pred` (background dispatch runs on its own task).
    async fn wait_for(&self, id: &TaskId, pred: impl Fn(&Task) -> bool) -> Task {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let t = self.get(id).await;
            if pred(&t) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task never reached the expected state: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn heartbeat(agent: &AgentName, fencing: Option<u64>) -> HeartbeatRequest {
    HeartbeatRequest {
        agent: agent.clone(),
        fencing,
        state: None,
    }
}

fn log_req(agent: &AgentName, fencing: u64, seqs: &[u64]) -> LogRequest {
    LogRequest {
        agent: agent.clone(),
        fencing,
        lines: seqs
            .iter()
            .map(|&seq| NewLogLine {
                seq,
                stream: LogStream::Stdout,
                line: format!("line {seq}"),
                ts: Utc::now(),
            })
            .collect(),
        is_final: false,
    }
}

fn complete_req(agent: &AgentName, fencing: u64, status: TaskStatus) -> CompleteRequest {
    CompleteRequest {
        agent: agent.clone(),
        fencing,
        status,
        exit_code: Some(0),
        reason: None,
        artifacts: vec![],
        pr_url: Some("https://example.invalid/pr/7".into()),
    }
}

fn assert_api_err(
    r: Result<impl std::fmt::Debug, ApiError>,
    status: StatusCode,
    code: &str,
) -> ApiError {
    let e = r.expect_err("expected an error");
    assert_eq!((e.status, e.code), (status, code), "{e:?}");
    e
}

#[tokio::test]
async fn schedule_validates_its_input() {
    let h = harness().await;

    let e = assert_api_err(
        h.o.schedule(req("ghost", "do it")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_org",
    );
    assert_eq!(e.field.as_deref(), Some("org"));

    for empty in ["", "   \n\t"] {
        let e = assert_api_err(
            h.o.schedule(req("acme", empty)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        );
        assert_eq!(e.field.as_deref(), Some("task"));
    }

    let e = assert_api_err(
        h.o.schedule(req("acme", &"x".repeat(MAX_TASK_BYTES + 1)))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "task_too_large",
    );
    assert_eq!(e.field.as_deref(), Some("task"));

    let mut bad_hint = req("acme", "do it");
    bad_hint.agent_hint = Some("a\nb".into());
    let e = assert_api_err(
        h.o.schedule(bad_hint).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(e.field.as_deref(), Some("agentHint"));

    // Nothing was recorded or submitted.
    assert!(h
        .store
        .list_tasks(Default::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(h.submits.load(Ordering::SeqCst), 0);

    // The largest allowed task is accepted.
    let ok = h.o.schedule(req("acme", &"x".repeat(MAX_TASK_BYTES))).await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn schedule_dispatches_with_a_working_agent_token() {
    let mut h = harness().await;
    let mut r = req("acme", "write tests");
    r.agent_hint = Some("claude".into());
    let t = h.o.schedule(r).await.unwrap();
    assert_eq!(t.status, TaskStatus::Scheduled);
    assert_eq!(t.attempt, 1);

    let launch = h.next_launch().await;
    assert_eq!(launch.task_id, t.id);
    assert_eq!(launch.org, OrgName::new("acme").unwrap());
    assert_eq!(launch.agent, t.id.agent_name(1));
    assert_eq!(launch.attempt, 1);
    assert_eq!(launch.agent_hint.as_deref(), Some("claude"));
    assert_eq!(launch.orchestrator_url, "http://127.0.0.1:1");

    let stored = h.get(&t.id).await;
    assert_eq!(stored.status, TaskStatus::Submitted);
    assert_eq!(stored.agent, Some(t.id.agent_name(1)));
    assert_eq!(h.submits.load(Ordering::SeqCst), 1);

    // The token authenticates as this task.
    let tok = launch.agent_token.expose().to_owned();
    assert_eq!(h.o.authenticate_agent(&tok).await.unwrap(), t.id);
    // The environment carries it, with the rest of the contract.
    let env = launch.env();
    assert!(env.contains(&("GUILDNET_AGENT_TOKEN", tok.clone())));
    assert!(env.contains(&("TASK_ID", t.id.to_string())));

    // Another task's token authenticates as that task only; grafting its secret onto this
    // task's id, and garbage, are refused.
    let (t2, launch2) = h.scheduled("another").await;
    let tok2 = launch2.agent_token.expose().to_owned();
    assert_eq!(h.o.authenticate_agent(&tok2).await.unwrap(), t2.id);
    let grafted = tok2.replacen(t2.id.as_str(), t.id.as_str(), 1);
    assert_ne!(grafted, tok2);
    let bad_tokens = vec![
        grafted,
        "garbage".to_owned(),
        String::new(),
        "admin".to_owned(),
        format!("gnt.{}.", t.id),
        format!("gnt.{}.deadbeef", t.id),
        format!("gnt.{}.x", TaskId::generate()),
    ];
    for bad in &bad_tokens {
        let e = assert_api_err(
            h.o.authenticate_agent(bad).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert!(!e.message.contains(&tok), "no secret in errors");
    }
    assert_eq!(h.submits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn claim_is_exclusive_and_idempotent() {
    let mut h = harness().await;
    let (t, launch) = h.scheduled("work").await;
    let a = launch.agent.clone();

    let c =
        h.o.claim(
            &t.id,
            ClaimRequest {
                agent: a.clone(),
                process: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(c.fencing, 1);
    assert_eq!(c.task.status, TaskStatus::Running);
    assert_eq!(c.task.claims, 1);
    assert_eq!(c.next_log_seq, 1);
    assert!(c.lease_expires_at > Utc::now());
    let stored = h.get(&t.id).await;
    assert_eq!(
        (stored.status, stored.fencing, stored.claims),
        (TaskStatus::Running, 1, 1)
    );
    assert!(stored.started_at.is_some());

    // Same agent again (lost reply): same fencing, no new claim.
    assert_eq!(h.claim(&t.id, &a).await.unwrap(), 1);
    let stored = h.get(&t.id).await;
    assert_eq!((stored.fencing, stored.claims), (1, 1));

    // Anyone else is refused, and nothing changes.
    let other = t.id.agent_name(2);
    let e = h.claim(&t.id, &other).await.expect_err("other agent");
    assert_eq!(e.status, StatusCode::CONFLICT);
    assert!(
        e.code == "stale_fencing" || e.code == "stale_agent",
        "{e:?}"
    );
    let after = h.get(&t.id).await;
    assert_eq!(after, stored);

    // Unknown task.
    assert_api_err(
        h.claim(&TaskId::generate(), &a).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn a_replacement_process_takes_the_claim_over_and_no_log_line_is_lost_to_the_old_one() {
    let mut h = harness().await;
    let (t, launch) = h.scheduled("work").await;
    let a = launch.agent.clone();
    h.register(&t.id, &a).await;
    let claim = |process: &ProcessId| {
        h.o.claim(
            &t.id,
            ClaimRequest {
                agent: a.clone(),
                process: Some(process.clone()),
            },
        )
    };
    let (old, new) = (ProcessId::generate(), ProcessId::generate());
    let first = claim(&old).await.expect("first process claims");
    assert_eq!((first.fencing, first.next_log_seq), (1, 1));
    h.o.append_logs(&t.id, log_req(&a, 1, &[1, 2, 3]))
        .await
        .expect("the first process logs");
    // Its retry after a lost reply changes nothing.
    let again = claim(&old).await.expect("retry");
    assert_eq!((again.fencing, again.next_log_seq), (1, 4));

    // The pod is replaced: the new process claims while the old one still ships its last lines.
    let taken = claim(&new).await.expect("the new process takes over");
    assert_eq!((taken.fencing, taken.next_log_seq), (2, 4));
    assert_eq!(
        (taken.task.claims, taken.task.status),
        (2, TaskStatus::Running)
    );
    // The old process's late lines would have taken 4 and 5: they are refused, with the reason.
    let e = assert_api_err(
        h.o.append_logs(&t.id, log_req(&a, 1, &[4, 5])).await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    assert_eq!(e.field.as_deref(), Some("fencing"));
    let hb = h.o.heartbeat(&t.id, heartbeat(&a, Some(1))).await;
    assert!(
        hb.is_err() || hb.is_ok_and(|r| r.cancel),
        "the old process is told to stop"
    );
    assert_api_err(
        h.o.complete(&t.id, complete_req(&a, 1, TaskStatus::Succeeded))
            .await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    // The new process's lines all land, after the old one's.
    let r =
        h.o.append_logs(&t.id, log_req(&a, 2, &[4, 5, 6]))
            .await
            .expect("the new process logs");
    assert_eq!(r.max_seq, 6);
    let lines = h.o.task_logs(&t.id, 0, 100).await.expect("logs");
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    h.o.complete(&t.id, complete_req(&a, 2, TaskStatus::Succeeded))
        .await
        .expect("the new process completes");
    let done = h.get(&t.id).await;
    assert_eq!(
        (done.status, done.fencing, done.claims),
        (TaskStatus::Succeeded, 2, 2)
    );
    let kinds: Vec<String> =
        h.o.events_after(0, 100)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.task_id.as_ref() == Some(&t.id) && e.kind == "task.claimed")
            .map(|e| e.message.unwrap_or_default())
            .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds[1].contains("took the task over"), "{kinds:?}");
}

#[tokio::test]
async fn heartbeat_renews_the_lease_only_with_the_current_fencing() {
    let mut h = harness_with(0, |c| c.lease_ttl = Duration::from_secs(30)).await;
    let (t, launch) = h.scheduled("work").await;
    let a = launch.agent.clone();

    // Unregistered agents cannot heartbeat.
    assert_api_err(
        h.o.heartbeat(&t.id, heartbeat(&a, None)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    h.register(&t.id, &a).await;
    let hb = h.o.heartbeat(&t.id, heartbeat(&a, None)).await.unwrap();
    assert_eq!(hb.task_status, TaskStatus::Submitted);
    assert!(!hb.cancel);
    assert_eq!(hb.lease_expires_at, None);

    let f = h.claim(&t.id, &a).await.unwrap();
    // Pretend the lease is about to run out.
    let soon = Utc::now() + chrono::Duration::seconds(1);
    h.store
        .update_task(
            &t.id,
            Box::new(move |t: &mut Task| {
                t.lease_expires_at = Some(soon);
                Ok(TaskChange::default())
            }),
        )
        .await
        .unwrap();

    let before = Utc::now();
    let hb = h.o.heartbeat(&t.id, heartbeat(&a, Some(f))).await.unwrap();
    assert_eq!(hb.task_status, TaskStatus::Running);
    assert!(!hb.cancel);
    let lease = hb.lease_expires_at.expect("lease");
    assert!(lease >= before + chrono::Duration::seconds(30), "{lease}");
    let stored = h.get(&t.id).await.lease_expires_at.unwrap();
    assert!(stored > soon + chrono::Duration::seconds(20), "{stored}");

    // A wrong fencing token neither renews nor is accepted.
    for wrong in [0, f + 1] {
        let e = assert_api_err(
            h.o.heartbeat(&t.id, heartbeat(&a, Some(wrong))).await,
            StatusCode::CONFLICT,
            "stale_fencing",
        );
        assert!(e.message.contains("fencing"), "{e:?}");
    }
    assert_eq!(h.get(&t.id).await.lease_expires_at.unwrap(), stored);

    // Agent state is recorded.
    let mut with_state = heartbeat(&a, Some(f));
    with_state.state = Some(serde_json::json!({"runner": "busy"}));
    h.o.heartbeat(&t.id, with_state).await.unwrap();
    assert_eq!(
        h.o.agent(&a).await.unwrap().state,
        serde_json::json!({"runner": "busy"})
    );
}

#[tokio::test]
async fn append_logs_checks_fencing_and_sequence_numbers() {
    let mut h = harness().await;
    let (t, launch) = h.scheduled("work").await;
    let a = launch.agent.clone();

    // Before the claim there is no valid fencing token.
    assert_api_err(
        h.o.append_logs(&t.id, log_req(&a, 0, &[1])).await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    let f = h.claim(&t.id, &a).await.unwrap();

    let e = assert_api_err(
        h.o.append_logs(&t.id, log_req(&a, f + 1, &[1])).await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    assert_eq!(e.field.as_deref(), Some("fencing"));
    let e = assert_api_err(
        h.o.append_logs(&t.id, log_req(&a, f, &[1, 0])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(e.field.as_deref(), Some("lines[1].seq"));
    // Another agent.
    let e = assert_api_err(
        h.o.append_logs(&t.id, log_req(&t.id.agent_name(9), f, &[1]))
            .await,
        StatusCode::CONFLICT,
        "stale_agent",
    );
    assert_eq!(e.field.as_deref(), Some("agent"));
    // None of the refused calls stored anything.
    assert!(h.store.task_logs(&t.id, 0, 0).await.unwrap().is_empty());

    let r =
        h.o.append_logs(&t.id, log_req(&a, f, &[1, 2, 3]))
            .await
            .unwrap();
    assert_eq!((r.inserted, r.max_seq), (3, 3));
    let r =
        h.o.append_logs(&t.id, log_req(&a, f, &[2, 3, 4]))
            .await
            .unwrap();
    assert_eq!((r.inserted, r.max_seq), (1, 4));
    let r =
        h.o.append_logs(&t.id, log_req(&a, f, &[1, 2, 3, 4]))
            .await
            .unwrap();
    assert_eq!((r.inserted, r.max_seq), (0, 4));
    let stored = h.store.task_logs(&t.id, 0, 0).await.unwrap();
    assert_eq!(
        stored.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // Overlong lines are cut with a marker.
    let mut long = log_req(&a, f, &[5]);
    long.lines[0].line = "é".repeat(guildnet_core::orchestrator::MAX_LOG_LINE_BYTES);
    h.o.append_logs(&t.id, long).await.unwrap();
    let l = &h.store.task_logs(&t.id, 4, 0).await.unwrap()[0];
    assert!(
        l.line.contains("…[truncated: "),
        "{}",
        &l.line[l.line.len() - 60..]
    );
    assert!(l.line.len() < guildnet_core::orchestrator::MAX_LOG_LINE_BYTES + 64);

    // Too many lines in one call.
    let seqs: Vec<u64> = (10..10 + guildnet_core::orchestrator::MAX_LOG_LINES as u64 + 1).collect();
    let e = assert_api_err(
        h.o.append_logs(&t.id, log_req(&a, f, &seqs)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(e.field.as_deref(), Some("lines"));

    // A repeated claim reports where the log continues.
    assert_eq!(
        h.o.claim(
            &t.id,
            ClaimRequest {
                agent: a.clone(),
                process: None
            }
        )
        .await
        .unwrap()
        .next_log_seq,
        6
    );
}

#[tokio::test]
async fn complete_is_terminal_and_repeatable() {
    let mut h = harness().await;
    let (t, launch) = h.scheduled("work").await;
    let a = launch.agent.clone();
    let f = h.claim(&t.id, &a).await.unwrap();

    // Only Succeeded or Failed, and only with the current fencing.
    let e = assert_api_err(
        h.o.complete(&t.id, complete_req(&a, f, TaskStatus::Cancelled))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(e.field.as_deref(), Some("status"));
    assert_api_err(
        h.o.complete(&t.id, complete_req(&a, f + 1, TaskStatus::Succeeded))
            .await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    assert_eq!(h.get(&t.id).await.status, TaskStatus::Running);

    let done =
        h.o.complete(&t.id, complete_req(&a, f, TaskStatus::Succeeded))
            .await
            .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert!(done.finished_at.is_some());
    assert_eq!(done.lease_expires_at, None);
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.pr_url.as_deref(), Some("https://example.invalid/pr/7"));
    let stored = h.get(&t.id).await;
    assert_eq!(stored.status, TaskStatus::Succeeded);
    let events_after_first = h.store.last_event_id().await.unwrap();

    // The same completion again (lost reply) is accepted and changes nothing.
    let again =
        h.o.complete(&t.id, complete_req(&a, f, TaskStatus::Succeeded))
            .await
            .unwrap();
    assert_eq!(again.status, TaskStatus::Succeeded);
    assert_eq!(h.get(&t.id).await, stored);
    assert_eq!(h.store.last_event_id().await.unwrap(), events_after_first);

    // A different outcome afterwards is a conflict; so is claiming or cancelling it.
    assert_api_err(
        h.o.complete(&t.id, complete_req(&a, f, TaskStatus::Failed))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_api_err(h.o.cancel(&t.id).await, StatusCode::CONFLICT, "conflict");
    assert_api_err(h.claim(&t.id, &a).await, StatusCode::CONFLICT, "conflict");
    assert_eq!(h.get(&t.id).await, stored);
    assert!(h.cancels.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cancel_stops_the_agent_and_tells_it_to_stop() {
    let mut h = harness().await;
    let (t, launch) = h.scheduled("work").await;
    let a = launch.agent.clone();
    h.register(&t.id, &a).await;
    let f = h.claim(&t.id, &a).await.unwrap();

    let c = h.o.cancel(&t.id).await.unwrap();
    assert_eq!(c.status, TaskStatus::Cancelled);
    assert_eq!(c.lease_expires_at, None);
    assert!(c.finished_at.is_some());
    assert_eq!(h.get(&t.id).await.status, TaskStatus::Cancelled);
    assert_eq!(
        *h.cancels.lock().unwrap(),
        vec![(OrgName::new("acme").unwrap(), t.id.clone(), a.clone())]
    );

    // Cancelling again is a no-op: the backend is not asked twice.
    assert_eq!(
        h.o.cancel(&t.id).await.unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(h.cancels.lock().unwrap().len(), 1);

    // The agent learns it must stop, with or without its fencing token.
    let hb = h.o.heartbeat(&t.id, heartbeat(&a, Some(f))).await.unwrap();
    assert!(hb.cancel);
    assert_eq!(hb.task_status, TaskStatus::Cancelled);
    assert_eq!(hb.lease_expires_at, None);
    let hb = h.o.heartbeat(&t.id, heartbeat(&a, None)).await.unwrap();
    assert!(hb.cancel);

    // It can no longer complete.
    assert_api_err(
        h.o.complete(&t.id, complete_req(&a, f, TaskStatus::Succeeded))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_eq!(h.get(&t.id).await.status, TaskStatus::Cancelled);

    // Cancelling a task that was never claimed also works.
    let (t2, launch2) = h.scheduled("other").await;
    assert_eq!(
        h.o.cancel(&t2.id).await.unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(h.cancels.lock().unwrap()[1].2, launch2.agent);
    assert_api_err(
        h.claim(&t2.id, &launch2.agent).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    assert_api_err(
        h.o.cancel(&TaskId::generate()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn expired_lease_requeues_then_fails_after_max_attempts() {
    let mut h = harness_with(0, |c| {
        c.lease_ttl = Duration::from_secs(1);
        c.max_attempts = 2;
    })
    .await;
    let (t, launch1) = h.scheduled("work").await;
    let a1 = launch1.agent.clone();
    assert_eq!(a1, t.id.agent_name(1));
    h.register(&t.id, &a1).await;
    let f1 = h.claim(&t.id, &a1).await.unwrap();
    h.o.append_logs(&t.id, log_req(&a1, f1, &[1, 2]))
        .await
        .unwrap();

    // Much later: the lease expired, the task is requeued and re-submitted to a new agent.
    h.o.reap_once(Utc::now() + chrono::Duration::seconds(60))
        .await
        .unwrap();
    let launch2 = h.next_launch().await;
    let a2 = t.id.agent_name(2);
    assert_eq!(launch2.agent, a2);
    assert_eq!(launch2.attempt, 2);
    assert_eq!(h.submits.load(Ordering::SeqCst), 2);
    let t2 = h.get(&t.id).await;
    assert_eq!(t2.status, TaskStatus::Submitted);
    assert_eq!(t2.attempt, 2);
    assert_eq!(t2.agent.as_ref(), Some(&a2));
    assert_eq!(t2.lease_expires_at, None);
    // The old agent's workload was stopped.
    assert_eq!(
        h.cancels.lock().unwrap().as_slice(),
        &[(t.org.clone(), t.id.clone(), a1.clone())]
    );

    // The old agent is fenced off everywhere, and its token no longer works.
    assert_api_err(
        h.o.heartbeat(&t.id, heartbeat(&a1, Some(f1))).await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    assert_eq!(
        h.o.append_logs(&t.id, log_req(&a1, f1, &[3]))
            .await
            .unwrap_err()
            .status,
        StatusCode::CONFLICT
    );
    assert_api_err(
        h.o.complete(&t.id, complete_req(&a1, f1, TaskStatus::Succeeded))
            .await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    assert_eq!(
        h.claim(&t.id, &a1).await.unwrap_err().status,
        StatusCode::CONFLICT
    );
    assert_api_err(
        h.o.authenticate_agent(launch1.agent_token.expose()).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(
        h.o.authenticate_agent(launch2.agent_token.expose())
            .await
            .unwrap(),
        t.id
    );

    // The new agent claims with a new fencing token and continues the log sequence.
    let c2 =
        h.o.claim(
            &t.id,
            ClaimRequest {
                agent: a2.clone(),
                process: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(c2.fencing, 2);
    assert_eq!(c2.task.claims, 2);
    assert_eq!(c2.next_log_seq, 3);

    // It loses its lease too: attempt 2 is the last, so the task fails for good.
    h.o.reap_once(Utc::now() + chrono::Duration::seconds(120))
        .await
        .unwrap();
    let failed = h.get(&t.id).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.attempt, 2);
    assert!(failed.finished_at.is_some());
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("gave up after 2 attempts"),
        "{failed:?}"
    );
    assert_eq!(h.submits.load(Ordering::SeqCst), 2, "no third submit");
    assert_eq!(h.cancels.lock().unwrap().len(), 2);
    assert_eq!(h.cancels.lock().unwrap()[1].2, a2);
    assert_api_err(
        h.o.complete(&t.id, complete_req(&a2, c2.fencing, TaskStatus::Succeeded))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );

    // The audit log shows the requeue and the failure.
    let actions: Vec<String> = h
        .store
        .audit_after(0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert!(actions.contains(&"task.requeue".to_owned()), "{actions:?}");
    assert!(actions.contains(&"task.fail".to_owned()), "{actions:?}");
}

#[tokio::test]
async fn a_renewed_lease_is_not_reaped() {
    let mut h = harness_with(0, |c| c.lease_ttl = Duration::from_secs(1)).await;
    let (t, launch) = h.scheduled("work").await;
    h.claim(&t.id, &launch.agent).await.unwrap();
    // The lease runs far beyond the reaper's "now".
    let far = Utc::now() + chrono::Duration::hours(1);
    h.store
        .update_task(
            &t.id,
            Box::new(move |t: &mut Task| {
                t.lease_expires_at = Some(far);
                Ok(TaskChange::default())
            }),
        )
        .await
        .unwrap();
    h.o.reap_once(Utc::now() + chrono::Duration::seconds(60))
        .await
        .unwrap();
    let after = h.get(&t.id).await;
    assert_eq!((after.status, after.attempt), (TaskStatus::Running, 1));
    assert_eq!(h.submits.load(Ordering::SeqCst), 1);
    assert!(h.cancels.lock().unwrap().is_empty());
}

#[tokio::test]
async fn failed_submit_goes_back_to_scheduled_and_is_retried() {
    let mut h = harness_with(1, |_| {}).await;
    let t = h.o.schedule(req("acme", "work")).await.unwrap();

    let back = h
        .wait_for(&t.id, |t| {
            t.status == TaskStatus::Scheduled && t.reason.is_some()
        })
        .await;
    let reason = back.reason.clone().unwrap();
    assert!(reason.contains("submit failed"), "{reason}");
    assert!(reason.contains("cluster said no"), "{reason}");
    assert_eq!(back.attempt, 1);
    assert_eq!(h.submits.load(Ordering::SeqCst), 1);

    // Too early for a retry: nothing happens.
    h.o.reap_once(Utc::now()).await.unwrap();
    assert_eq!(h.submits.load(Ordering::SeqCst), 1);
    assert_eq!(h.get(&t.id).await.status, TaskStatus::Scheduled);

    // After the retry delay the reaper submits again, and this time it works.
    h.o.reap_once(Utc::now() + chrono::Duration::seconds(10))
        .await
        .unwrap();
    let launch = h.next_launch().await;
    assert_eq!(launch.task_id, t.id);
    assert_eq!(launch.agent, t.id.agent_name(1));
    assert_eq!(h.submits.load(Ordering::SeqCst), 2);
    let t2 = h.get(&t.id).await;
    assert_eq!(t2.status, TaskStatus::Submitted);
    assert_eq!(t2.reason, None);
    // The retried launch's token is the valid one.
    assert_eq!(
        h.o.authenticate_agent(launch.agent_token.expose())
            .await
            .unwrap(),
        t.id
    );
    // And its agent can claim.
    assert_eq!(h.claim(&t.id, &launch.agent).await.unwrap(), 1);
}

#[tokio::test]
async fn orchestrator_notes_go_in_only_before_the_claim_and_never_take_an_agent_seq() {
    let mut h = harness().await;
    let (t, launch) = h.scheduled("wait for a node").await;
    let store = h.o.store().clone();
    let seq = store
        .append_unclaimed_note(&t.id, &launch.agent, "pod Pending: Unschedulable".into())
        .await
        .expect("note")
        .expect("accepted while Submitted");
    assert_eq!(seq, 1);
    // Another agent name is not the task's agent: refused.
    let other = t.id.agent_name(9);
    assert_eq!(
        store
            .append_unclaimed_note(&t.id, &other, "x".into())
            .await
            .expect("note"),
        None
    );
    h.register(&t.id, &launch.agent).await;
    let claim =
        h.o.claim(
            &t.id,
            ClaimRequest {
                agent: launch.agent.clone(),
                process: None,
            },
        )
        .await
        .expect("claim");
    assert_eq!(
        claim.next_log_seq,
        seq + 1,
        "the agent's lines start after the note"
    );
    assert_eq!(
        store
            .append_unclaimed_note(&t.id, &launch.agent, "late".into())
            .await
            .expect("note"),
        None,
        "no notes once the task is claimed"
    );
    let logs = store.task_logs(&t.id, 0, 10).await.expect("logs");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].stream, guildnet_core::model::LogStream::System);
}

#[tokio::test]
async fn refused_agent_calls_write_nothing_and_finished_tasks_take_no_writes() {
    let mut h = harness().await;
    let (a_task, la) = h.scheduled("task a").await;
    let (b_task, lb) = h.scheduled("task b").await;
    let (a, b) = (la.agent.clone(), lb.agent.clone());
    h.register(&a_task.id, &a).await;
    h.register(&b_task.id, &b).await;
    let b_seen = h.o.agent(&b).await.unwrap().last_seen_at;
    tokio::time::sleep(Duration::from_millis(20)).await;

    // A's token (task a) heartbeating as B: refused, and B's record is untouched.
    let mut hb = heartbeat(&b, None);
    hb.state = Some(serde_json::json!({"forged": true}));
    assert_api_err(
        h.o.heartbeat(&a_task.id, hb).await,
        StatusCode::CONFLICT,
        "stale_agent",
    );
    let b_now = h.o.agent(&b).await.unwrap();
    assert_eq!(b_now.last_seen_at, b_seen);
    assert_eq!(b_now.state, serde_json::json!({}));

    // A finishes: its token may still ask for the status, but writes nothing more.
    let f = h.claim(&a_task.id, &a).await.unwrap();
    h.o.append_logs(&a_task.id, log_req(&a, f, &[1]))
        .await
        .unwrap();
    h.o.complete(&a_task.id, complete_req(&a, f, TaskStatus::Succeeded))
        .await
        .unwrap();
    let seen = h.o.agent(&a).await.unwrap().last_seen_at;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r =
        h.o.heartbeat(&a_task.id, heartbeat(&a, Some(f)))
            .await
            .unwrap();
    assert_eq!(r.task_status, TaskStatus::Succeeded);
    assert_eq!(h.o.agent(&a).await.unwrap().last_seen_at, seen);
    assert_api_err(
        h.o.append_logs(&a_task.id, log_req(&a, f, &[2])).await,
        StatusCode::CONFLICT,
        "log_sealed",
    );
    assert_api_err(
        h.o.register(
            &a_task.id,
            RegisterRequest {
                agent: a.clone(),
                version: None,
                editor_address: None,
            },
        )
        .await,
        StatusCode::CONFLICT,
        "task_finished",
    );
    assert_eq!(h.store.task_logs(&a_task.id, 0, 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_requeued_tasks_new_agent_cannot_log_before_it_claims() {
    let mut h = harness_with(0, |c| c.lease_ttl = Duration::from_secs(1)).await;
    let (t, l1) = h.scheduled("work").await;
    let f1 = h.claim(&t.id, &l1.agent).await.unwrap();
    h.o.reap_once(Utc::now() + chrono::Duration::seconds(60))
        .await
        .unwrap();
    let l2 = h.next_launch().await;
    // The new agent holds no claim yet: the old fencing token is not its own.
    assert_api_err(
        h.o.append_logs(&t.id, log_req(&l2.agent, f1, &[1])).await,
        StatusCode::CONFLICT,
        "stale_fencing",
    );
    let f2 = h.claim(&t.id, &l2.agent).await.unwrap();
    assert_eq!(f2, f1 + 1);
    h.o.append_logs(&t.id, log_req(&l2.agent, f2, &[1]))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cancelled_tasks_log_completes_with_the_agents_final_batch() {
    let mut h = harness().await;
    let (t, l) = h.scheduled("work").await;
    let f = h.claim(&t.id, &l.agent).await.unwrap();
    let c = h.o.cancel(&t.id).await.unwrap();
    assert!(
        !c.log_sealed,
        "the running agent still sends its last lines"
    );
    assert!(!c.log_complete(Utc::now()));
    h.o.append_logs(&t.id, log_req(&l.agent, f, &[1, 2]))
        .await
        .unwrap();
    let mut fin = log_req(&l.agent, f, &[3]);
    fin.is_final = true;
    h.o.append_logs(&t.id, fin).await.unwrap();
    let t2 = h.get(&t.id).await;
    assert!(t2.log_sealed && t2.log_complete(Utc::now()));
    // Without a final batch the log completes by time.
    let (u, _) = h.scheduled("other").await;
    let c = h.o.cancel(&u.id).await.unwrap();
    assert!(c.log_sealed, "nobody held a claim: nothing more can come");
    let mut late = c.clone();
    late.log_sealed = false;
    assert!(!late.log_complete(Utc::now()));
    assert!(late.log_complete(Utc::now() + guildnet_core::model::LOG_SEAL_GRACE));
}

#[tokio::test]
async fn bad_text_and_sequence_numbers_are_refused_with_the_field() {
    let mut h = harness().await;
    let e = assert_api_err(
        h.o.schedule(req("acme", "ls\0 -la")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(e.field.as_deref(), Some("task"));
    let (t, l) = h.scheduled("work").await;
    let f = h.claim(&t.id, &l.agent).await.unwrap();
    for seqs in [vec![1 << 53], vec![u64::MAX], vec![3, 2]] {
        let e = assert_api_err(
            h.o.append_logs(&t.id, log_req(&l.agent, f, &seqs)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        );
        assert!(e.field.as_deref().unwrap().starts_with("lines["), "{e:?}");
    }
    let mut c = complete_req(&l.agent, f, TaskStatus::Failed);
    c.reason = Some("bad\0reason".into());
    let e = assert_api_err(
        h.o.complete(&t.id, c).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert_eq!(e.field.as_deref(), Some("reason"));
}

#[tokio::test]
async fn a_refusing_backend_puts_the_org_on_hold_instead_of_retrying_every_task() {
    let h = harness_with(usize::MAX, |c| {
        c.submit_retry = Duration::from_secs(5);
        c.submit_backoff_max = Duration::from_secs(40);
    })
    .await;
    let first = h.o.schedule(req("acme", "t0")).await.unwrap();
    h.wait_for(&first.id, |t| t.reason.is_some()).await;
    let mut ids = vec![first.id.clone()];
    for i in 1..20 {
        ids.push(
            h.o.schedule(req("acme", &format!("t{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One submit: the org went on hold after the first refusal.
    assert_eq!(h.submits.load(Ordering::SeqCst), 1);
    // The task that was tried says why in its own log.
    let lines = h.store.task_logs(&first.id, 0, 100).await.unwrap();
    assert!(
        lines.iter().any(|l| l
            .line
            .contains("waiting: the backend could not start an agent")
            && l.line.contains("cluster said no")
            && l.line.contains("retried in 5 s")),
        "{lines:?}"
    );
    let d = h.o.task_detail(&ids[7]).await.unwrap();
    let why = d.waiting.expect("a waiting task says why");
    assert!(
        why.contains("cluster said no") && why.contains("next try"),
        "{why}"
    );

    // Each reaper pass after a hold ends probes once; holds double: 5, 10, 20, 40, 40 s.
    let t0 = Utc::now();
    let mut at = 0;
    for (wait, probes) in [(4, 1), (6, 2), (16, 3), (36, 4), (76, 5), (116, 6)] {
        for s in (at..=wait).step_by(1) {
            h.o.reap_once(t0 + chrono::Duration::seconds(s))
                .await
                .unwrap();
        }
        at = wait + 1;
        assert_eq!(h.submits.load(Ordering::SeqCst), probes, "after {wait} s");
    }
    for id in &ids {
        assert_eq!(h.get(id).await.status, TaskStatus::Scheduled);
    }
}

#[tokio::test]
async fn an_agent_the_backend_says_cannot_start_fails_its_task_with_the_cause() {
    let mut h = harness().await;
    let (t, launch) = h.scheduled("never starts").await;
    let cause = "start deadline of 20 s passed: pod atask-x Pending: container agent waiting: \
                 ImagePullBackOff";
    *h.status.lock().unwrap() = WorkloadState::FailedToStart(cause.into());
    // The liveness probe runs every few seconds and looks at tasks not updated for 2 s.
    h.o.reap_once(Utc::now() + chrono::Duration::seconds(10))
        .await
        .unwrap();
    let done = h.get(&t.id).await;
    assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
    assert_eq!(
        done.reason.as_deref(),
        Some(format!("agent did not start: {cause}").as_str())
    );
    assert_eq!(
        done.attempt, 1,
        "no retry: the next attempt would meet the same cause"
    );
    // The backend is told (the Kubernetes backend writes the AgentTask's status) and the stuck
    // workload is stopped.
    let finished = h.finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].status, TaskStatus::Failed);
    assert!(h
        .cancels
        .lock()
        .unwrap()
        .iter()
        .any(|(_, id, agent)| *id == t.id && *agent == launch.agent));
    // Nothing more can be written by the agent that never started.
    assert_api_err(
        h.claim(&t.id, &launch.agent).await,
        StatusCode::CONFLICT,
        "conflict",
    );
}
