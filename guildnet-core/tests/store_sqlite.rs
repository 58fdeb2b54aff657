//! The SQLite state store against a real database file: orgs, tasks and their conditional
//! updates, logs, events, the append-only audit log, durability across reopen, and atomic
//! read-modify-write under concurrent writers (group commit).

use chrono::{DateTime, Duration, Utc};
use guildnet_core::model::{Agent, LogStream, NewAudit, NewEvent, NewLogLine, Task, TaskStatus};
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::store::{
    Durability, LogBatch, Rejection, RejectionKind, SqliteStore, StateStore, StoreError,
    TaskChange, TaskQuery,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, Durability::Full).expect("open store")
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("guildnet.db")
}

/// Now, truncated to the store's millisecond resolution so stored tasks compare equal.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("valid time")
}

fn org(name: &str) -> OrgName {
    OrgName::new(name).expect("org name")
}

fn agent(name: &str) -> AgentName {
    AgentName::new(name).expect("agent name")
}

fn task(org_name: &str, status: TaskStatus, created_at: DateTime<Utc>) -> Task {
    Task {
        id: TaskId::generate(),
        org: org(org_name),
        task: "fix the bug".into(),
        agent_hint: Some("claude".into()),
        status,
        agent: None,
        attempt: 1,
        fencing: 0,
        claims: 0,
        lease_expires_at: None,
        created_at,
        updated_at: created_at,
        started_at: None,
        finished_at: None,
        exit_code: None,
        reason: None,
        artifacts: Vec::new(),
        pr_url: None,
        context: Default::default(),
        log_sealed: false,
    }
}

fn scheduled_event(t: &Task) -> NewEvent {
    NewEvent::for_task("task.scheduled", t, None)
}

fn audit(action: &str, subject: &str) -> NewAudit {
    NewAudit::new("admin", action, subject, None)
}

async fn insert(store: &SqliteStore, t: &Task, token_hash: &str) -> u64 {
    store
        .insert_task(
            t.clone(),
            token_hash.into(),
            scheduled_event(t),
            audit("task.schedule", t.id.as_str()),
        )
        .await
        .expect("insert task")
}

fn line(seq: u64, text: &str) -> NewLogLine {
    NewLogLine {
        seq,
        stream: LogStream::Stdout,
        line: text.into(),
        ts: now_ms(),
    }
}

fn lines(seqs: impl IntoIterator<Item = u64>) -> Vec<NewLogLine> {
    seqs.into_iter()
        .map(|s| line(s, &format!("line {s}")))
        .collect()
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

fn ids_of(tasks: &[&Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

/// A log batch from `agent` holding fencing token 1.
fn batch(agent: &AgentName, lines: Vec<NewLogLine>) -> LogBatch {
    LogBatch {
        agent: agent.clone(),
        fencing: 1,
        lines,
        seal: false,
        quota_bytes: 1 << 30,
    }
}

/// A task that has an agent holding its claim (so it may send log lines).
async fn running_task(store: &SqliteStore, agent_name: &str) -> Task {
    let mut t = task("acme", TaskStatus::Running, now_ms());
    t.agent = Some(agent(agent_name));
    t.fencing = 1;
    t.claims = 1;
    t.started_at = Some(now_ms());
    insert(store, &t, "hash").await;
    t
}

#[tokio::test]
async fn orgs_create_duplicate_list_get() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));

    let before = now_ms();
    let zeta = store
        .create_org(&org("zeta"), audit("org.create", "zeta"))
        .await
        .expect("create zeta");
    assert_eq!(zeta.name, org("zeta"));
    assert!(zeta.created_at >= before);
    let acme = store
        .create_org(&org("acme"), audit("org.create", "acme"))
        .await
        .expect("create acme");

    let dup = store
        .create_org(&org("acme"), audit("org.create", "acme"))
        .await
        .expect_err("duplicate org must fail");
    assert!(
        matches!(&dup, StoreError::AlreadyExists(what) if what.contains("acme")),
        "{dup:?}"
    );

    // Sorted by name; the duplicate did not add a row.
    let all = store.list_orgs().await.unwrap();
    assert_eq!(all, vec![acme.clone(), zeta.clone()]);

    assert_eq!(store.get_org(&org("acme")).await.unwrap(), Some(acme));
    assert_eq!(store.get_org(&org("nope")).await.unwrap(), None);

    // Only the two successful creations were audited.
    let rows = store.audit_after(0, 0).await.unwrap();
    let subjects: Vec<&str> = rows.iter().map(|a| a.subject.as_str()).collect();
    assert_eq!(subjects, vec!["zeta", "acme"]);
}

#[tokio::test]
async fn tasks_insert_get_list_and_token_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let t0 = now_ms();

    let t1 = task("aaa", TaskStatus::Scheduled, t0);
    let mut t2 = task("aaa", TaskStatus::Running, t0 + Duration::milliseconds(1));
    t2.agent = Some(agent("agent-two"));
    t2.lease_expires_at = Some(t0 + Duration::seconds(10));
    let mut t3 = task("bbb", TaskStatus::Running, t0 + Duration::milliseconds(2));
    t3.lease_expires_at = Some(t0 - Duration::seconds(10));
    let mut t4 = task("bbb", TaskStatus::Succeeded, t0 + Duration::milliseconds(3));
    t4.finished_at = Some(t0 + Duration::seconds(1));
    t4.exit_code = Some(0);
    t4.pr_url = Some("https://example.invalid/pr/1".into());
    t4.artifacts = vec![guildnet_core::model::Artifact {
        name: "pr".into(),
        kind: "pr".into(),
        uri: "https://example.invalid/pr/1".into(),
    }];

    let mut last_event = 0;
    for (t, h) in [(&t1, "h1"), (&t2, "h2"), (&t3, "h3"), (&t4, "h4")] {
        let ev = insert(&store, t, h).await;
        assert!(
            ev > last_event,
            "event ids increase: {ev} after {last_event}"
        );
        last_event = ev;
    }

    // Duplicate id.
    let dup = store
        .insert_task(
            t1.clone(),
            "other".into(),
            scheduled_event(&t1),
            audit("x", "y"),
        )
        .await
        .expect_err("duplicate task id");
    assert!(matches!(dup, StoreError::AlreadyExists(_)), "{dup:?}");
    // The failed insert wrote neither its event nor its audit row nor a new hash.
    assert_eq!(store.last_event_id().await.unwrap(), last_event);
    assert_eq!(store.audit_after(0, 0).await.unwrap().len(), 4);
    assert_eq!(
        store.task_token_hash(&t1.id).await.unwrap().as_deref(),
        Some("h1")
    );

    // Round trip of every field.
    for t in [&t1, &t2, &t3, &t4] {
        assert_eq!(store.get_task(&t.id).await.unwrap().as_ref(), Some(t));
    }
    let missing = TaskId::generate();
    assert_eq!(store.get_task(&missing).await.unwrap(), None);
    assert_eq!(store.task_token_hash(&missing).await.unwrap(), None);
    assert_eq!(
        store.task_token_hash(&t3.id).await.unwrap().as_deref(),
        Some("h3")
    );

    // Default: everything, newest created first.
    let all = store.list_tasks(TaskQuery::default()).await.unwrap();
    assert_eq!(ids(&all), ids_of(&[&t4, &t3, &t2, &t1]));

    let q = |f: fn(&mut TaskQuery)| {
        let mut q = TaskQuery::default();
        f(&mut q);
        q
    };
    let running = store
        .list_tasks(q(|q| q.statuses = vec![TaskStatus::Running]))
        .await
        .unwrap();
    assert_eq!(ids(&running), ids_of(&[&t3, &t2]));

    let two_statuses = store
        .list_tasks(q(|q| {
            q.statuses = vec![TaskStatus::Scheduled, TaskStatus::Succeeded]
        }))
        .await
        .unwrap();
    assert_eq!(ids(&two_statuses), ids_of(&[&t4, &t1]));

    let org_a = store
        .list_tasks(q(|q| q.org = Some(OrgName::new("aaa").unwrap())))
        .await
        .unwrap();
    assert_eq!(ids(&org_a), ids_of(&[&t2, &t1]));

    let org_b_running = store
        .list_tasks(q(|q| {
            q.org = Some(OrgName::new("bbb").unwrap());
            q.statuses = vec![TaskStatus::Running];
        }))
        .await
        .unwrap();
    assert_eq!(ids(&org_b_running), ids_of(&[&t3]));

    let limited = store.list_tasks(q(|q| q.limit = 2)).await.unwrap();
    assert_eq!(ids(&limited), ids_of(&[&t4, &t3]));

    // Only t3's lease expired before t0; both leases expired before t0 + 1 min; tasks without a
    // lease never match.
    let expired_now = store
        .list_tasks(TaskQuery {
            lease_expired_before: Some(t0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&expired_now), ids_of(&[&t3]));
    let expired_later = store
        .list_tasks(TaskQuery {
            lease_expired_before: Some(t0 + Duration::minutes(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&expired_later), ids_of(&[&t3, &t2]));

    // Oldest update first, with a limit.
    let oldest = store
        .list_tasks(TaskQuery {
            oldest_first: true,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&oldest), ids_of(&[&t1]));
    let updated_before = store
        .list_tasks(TaskQuery {
            updated_before: Some(t0 + Duration::milliseconds(2)),
            oldest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&updated_before), ids_of(&[&t1, &t2]));
}

#[tokio::test]
async fn update_task_applies_rejects_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let t = task("acme", TaskStatus::Submitted, now_ms());
    insert(&store, &t, "old-hash").await;
    let audits_before = store.audit_after(0, 0).await.unwrap().len();

    // A mutation with an event persists, and reports the event id.
    let upd = store
        .update_task(
            &t.id,
            Box::new(|t: &mut Task| {
                t.status = TaskStatus::Running;
                t.agent = Some(AgentName::new("agent-a").unwrap());
                t.fencing += 1;
                t.claims += 1;
                t.reason = Some("claimed".into());
                Ok(TaskChange {
                    events: vec![NewEvent::for_task("task.claimed", t, None)],
                    audit: vec![NewAudit::new(
                        "agent:agent-a",
                        "task.claim",
                        t.id.as_str(),
                        None,
                    )],
                })
            }),
        )
        .await
        .expect("update");
    assert!(upd.changed);
    assert_eq!(upd.task.status, TaskStatus::Running);
    let ev = upd.last_event_id.expect("event id");
    assert_eq!(store.last_event_id().await.unwrap(), ev);
    let stored = store.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!(stored, upd.task);
    assert_eq!(stored.fencing, 1);
    assert_eq!(stored.agent, Some(agent("agent-a")));
    let events = store.events_after(ev - 1, 0).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "task.claimed");
    assert_eq!(events[0].status, Some(TaskStatus::Running));
    assert_eq!(events[0].task_id.as_ref(), Some(&t.id));
    assert_eq!(
        store.audit_after(0, 0).await.unwrap().len(),
        audits_before + 1
    );

    // A rejection after mutating leaves everything as it was.
    let err = store
        .update_task(
            &t.id,
            Box::new(|t: &mut Task| {
                t.status = TaskStatus::Failed;
                t.claims = 99;
                t.reason = Some("should not stick".into());
                Err(Rejection::stale("fencing 7 is stale"))
            }),
        )
        .await
        .expect_err("rejected");
    match err {
        StoreError::Rejected(r) => {
            assert_eq!(r.kind, RejectionKind::StaleFencing);
            assert_eq!(r.message, "fencing 7 is stale");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(store.get_task(&t.id).await.unwrap().unwrap(), stored);
    assert_eq!(store.last_event_id().await.unwrap(), ev);

    // A rejection also keeps the old token hash.
    let err = store
        .update_task_with_token(
            &t.id,
            Some("never".into()),
            Box::new(|_t: &mut Task| Err(Rejection::conflict("no"))),
        )
        .await
        .expect_err("rejected");
    assert!(
        matches!(&err, StoreError::Rejected(r) if r.kind == RejectionKind::Conflict),
        "{err:?}"
    );
    assert_eq!(
        store.task_token_hash(&t.id).await.unwrap().as_deref(),
        Some("old-hash")
    );

    // Unchanged and no events: nothing written (not even the audit row it returned).
    let audits_now = store.audit_after(0, 0).await.unwrap().len();
    let same = store
        .update_task(
            &t.id,
            Box::new(|t: &mut Task| {
                Ok(TaskChange {
                    events: vec![],
                    audit: vec![NewAudit::new("system", "noop", t.id.as_str(), None)],
                })
            }),
        )
        .await
        .expect("noop update");
    assert!(!same.changed);
    assert_eq!(same.last_event_id, None);
    assert_eq!(same.task, stored);
    assert_eq!(store.audit_after(0, 0).await.unwrap().len(), audits_now);
    assert_eq!(store.last_event_id().await.unwrap(), ev);

    // Unchanged task but a new token: the hash is replaced, and that counts as a change.
    let with_token = store
        .update_task_with_token(
            &t.id,
            Some("new-hash".into()),
            Box::new(|_t: &mut Task| Ok(TaskChange::default())),
        )
        .await
        .expect("token update");
    assert!(with_token.changed);
    assert_eq!(
        store.task_token_hash(&t.id).await.unwrap().as_deref(),
        Some("new-hash")
    );
    assert_eq!(store.get_task(&t.id).await.unwrap().unwrap(), stored);

    // Unknown task.
    let err = store
        .update_task(
            &TaskId::generate(),
            Box::new(|_t: &mut Task| Ok(TaskChange::default())),
        )
        .await
        .expect_err("unknown task");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn append_logs_is_idempotent_and_pages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let t = running_task(&store, "agent-a").await;
    let a = agent("agent-a");

    assert_eq!(store.max_log_seq(&t.id).await.unwrap(), 0);
    assert_eq!(store.last_log_id().await.unwrap(), 0);

    // Out of order within a call: task logs come back by seq, agent logs by id.
    let r = store
        .append_logs(&t.id, batch(&a, lines([2, 1])))
        .await
        .unwrap();
    assert_eq!((r.inserted, r.max_seq), (2, 2));
    let r = store
        .append_logs(&t.id, batch(&a, lines(3..=5)))
        .await
        .unwrap();
    assert_eq!((r.inserted, r.max_seq), (3, 5));

    // Re-sending known seqs inserts nothing; a partial overlap inserts only the new ones.
    let r = store
        .append_logs(&t.id, batch(&a, lines(1..=5)))
        .await
        .unwrap();
    assert_eq!((r.inserted, r.max_seq), (0, 5));
    let r = store
        .append_logs(&t.id, batch(&a, lines(4..=7)))
        .await
        .unwrap();
    assert_eq!((r.inserted, r.max_seq), (2, 7));
    // A re-sent seq with different text does not replace the stored line.
    let r = store
        .append_logs(&t.id, batch(&a, vec![line(1, "rewritten")]))
        .await
        .unwrap();
    assert_eq!(r.inserted, 0);

    let all = store.task_logs(&t.id, 0, 0).await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(all[0].line, "line 1");
    assert!(all.iter().all(|l| l.agent == a && l.task_id == t.id));
    assert_eq!(store.max_log_seq(&t.id).await.unwrap(), 7);

    // Paging by seq.
    let page = store.task_logs(&t.id, 3, 2).await.unwrap();
    assert_eq!(page.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![4, 5]);
    let tail = store.task_logs(&t.id, 7, 0).await.unwrap();
    assert!(tail.is_empty());

    // Agent logs: by id, and ids are increasing in insertion order (seq 2 went in before 1).
    let by_id = store.agent_logs(&a, 0, 0).await.unwrap();
    assert_eq!(
        by_id.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![2, 1, 3, 4, 5, 6, 7]
    );
    assert!(by_id.windows(2).all(|w| w[0].id < w[1].id));
    let after = by_id[2].id;
    let page = store.agent_logs(&a, after, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|l| l.id).collect::<Vec<_>>(),
        by_id[3..6].iter().map(|l| l.id).collect::<Vec<_>>()
    );
    assert_eq!(store.last_log_id().await.unwrap(), by_id[6].id);

    // Handing the task to another agent: the old one is fenced off, the new one continues.
    let b = agent("agent-b");
    let b2 = b.clone();
    store
        .update_task(
            &t.id,
            Box::new(move |t: &mut Task| {
                t.agent = Some(b2);
                t.attempt = 2;
                Ok(TaskChange::default())
            }),
        )
        .await
        .unwrap();
    let err = store
        .append_logs(&t.id, batch(&a, lines([8])))
        .await
        .expect_err("old agent is fenced off");
    assert!(
        matches!(&err, StoreError::Rejected(r) if r.kind == RejectionKind::StaleFencing),
        "{err:?}"
    );
    let r = store
        .append_logs(&t.id, batch(&b, lines(8..=9)))
        .await
        .unwrap();
    assert_eq!((r.inserted, r.max_seq), (2, 9));
    assert_eq!(store.agent_logs(&a, 0, 0).await.unwrap().len(), 7);
    let b_logs = store.agent_logs(&b, 0, 0).await.unwrap();
    assert_eq!(b_logs.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![8, 9]);
    assert_eq!(store.task_logs(&t.id, 0, 0).await.unwrap().len(), 9);

    // Unknown task.
    let err = store
        .append_logs(&TaskId::generate(), batch(&b, lines([1])))
        .await
        .expect_err("unknown task");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

fn event(kind: &str) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        task_id: None,
        agent: None,
        org: Some(org("acme")),
        status: None,
        message: Some(format!("{kind} happened")),
    }
}

#[tokio::test]
async fn events_have_increasing_ids_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    assert_eq!(store.last_event_id().await.unwrap(), 0);
    assert!(store.events_after(0, 0).await.unwrap().is_empty());

    let mut lasts = Vec::new();
    for i in 0..5 {
        let last = store
            .append_events(
                vec![event(&format!("e{i}.a")), event(&format!("e{i}.b"))],
                vec![audit("events.append", &format!("batch-{i}"))],
            )
            .await
            .unwrap();
        lasts.push(last);
    }
    assert!(lasts.windows(2).all(|w| w[0] < w[1]), "{lasts:?}");
    // No events: returns 0 but still appends the audit row.
    assert_eq!(
        store
            .append_events(vec![], vec![audit("only.audit", "x")])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.audit_after(0, 0).await.unwrap().len(), 6);
    assert_eq!(store.last_event_id().await.unwrap(), lasts[4]);

    let all = store.events_after(0, 0).await.unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[0].kind, "e0.a");
    assert_eq!(all[9].kind, "e4.b");
    assert_eq!(all[9].id, lasts[4]);
    assert_eq!(all[1].id, lasts[0]);
    assert_eq!(all[3].message.as_deref(), Some("e1.b happened"));
    assert_eq!(all[3].org, Some(org("acme")));

    // Page through with a cursor: every event exactly once, in order.
    let mut cursor = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.events_after(cursor, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        cursor = page.last().unwrap().id;
        seen.extend(page.into_iter().map(|e| e.kind));
    }
    assert_eq!(seen, all.iter().map(|e| e.kind.clone()).collect::<Vec<_>>());
    assert!(store.events_after(lasts[4], 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn audit_log_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store
        .create_org(&org("acme"), audit("org.create", "acme"))
        .await
        .unwrap();
    store
        .append_events(vec![], vec![audit("task.cancel", "t1")])
        .await
        .unwrap();
    let rows = store.audit_after(0, 0).await.unwrap();
    assert_eq!(rows.len(), 2);

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let upd = conn
        .execute("UPDATE audit SET actor = 'mallory'", [])
        .expect_err("UPDATE on audit must fail");
    assert!(upd.to_string().contains("append-only"), "{upd}");
    let del = conn
        .execute("DELETE FROM audit", [])
        .expect_err("DELETE on audit must fail");
    assert!(del.to_string().contains("append-only"), "{del}");
    let del_one = conn
        .execute("DELETE FROM audit WHERE id = ?1", [rows[0].id as i64])
        .expect_err("DELETE of one row must fail");
    assert!(del_one.to_string().contains("append-only"), "{del_one}");
    // Appending through another connection still works (the log is append-only, not read-only).
    conn.execute(
        "INSERT INTO audit (ts, actor, action, subject) VALUES (0, 'system', 'x', 'y')",
        [],
    )
    .unwrap();

    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 3);
    let after = store.audit_after(0, 0).await.unwrap();
    assert_eq!(&after[..2], &rows[..]);
    assert_eq!(after[0].actor, "admin");
}

#[tokio::test]
async fn everything_survives_reopen_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);

    let (t, mut events, audits, logs, agent_row) = {
        let store = open(&path);
        store
            .create_org(&org("acme"), audit("org.create", "acme"))
            .await
            .unwrap();
        let t = running_task(&store, "agent-a").await;
        let a = agent("agent-a");
        store
            .append_logs(&t.id, batch(&a, lines(1..=3)))
            .await
            .unwrap();
        store
            .append_events(vec![event("custom")], vec![audit("custom", "x")])
            .await
            .unwrap();
        let now = now_ms();
        let registered = store
            .upsert_agent(
                Agent {
                    name: a.clone(),
                    org: org("acme"),
                    task_id: Some(t.id.clone()),
                    version: Some("1.2.3".into()),
                    editor_address: Some("10.0.0.1:8443".into()),
                    registered_at: now,
                    last_seen_at: now,
                    state: serde_json::json!({}),
                },
                NewEvent {
                    kind: "agent.registered".into(),
                    task_id: Some(t.id.clone()),
                    agent: Some(a.clone()),
                    org: Some(org("acme")),
                    status: Some(TaskStatus::Running),
                    message: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(registered.registered_at, now);
        assert!(store
            .touch_agent(
                &a,
                &t.id,
                now + Duration::seconds(5),
                serde_json::json!({"runner": "running"})
            )
            .await
            .unwrap());
        assert!(!store
            .touch_agent(&agent("ghost"), &t.id, now, serde_json::json!({}))
            .await
            .unwrap());
        let upd = store
            .update_task_with_token(
                &t.id,
                Some("rotated".into()),
                Box::new(|t: &mut Task| {
                    t.claims = 2;
                    Ok(TaskChange {
                        events: vec![NewEvent::for_task("task.touched", t, None)],
                        audit: vec![],
                    })
                }),
            )
            .await
            .unwrap();
        let events = store.events_after(0, 0).await.unwrap();
        let audits = store.audit_after(0, 0).await.unwrap();
        let logs = store.task_logs(&t.id, 0, 0).await.unwrap();
        let agent_row = store.get_agent(&a).await.unwrap().unwrap();
        assert_eq!(agent_row.state, serde_json::json!({"runner": "running"}));
        assert_eq!(agent_row.last_seen_at, now + Duration::seconds(5));
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(audits.len(), 3, "{audits:?}");
        (upd.task, events, audits, logs, agent_row)
        // `store` is dropped here: its writer thread is joined.
    };

    let schema = |path: &Path| -> (i64, Vec<(String, String)>) {
        let c = rusqlite::Connection::open(path).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        let mut stmt = c
            .prepare("SELECT type, name FROM sqlite_master ORDER BY type, name")
            .unwrap();
        let objs = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (v, objs)
    };
    let (version, objects) = schema(&path);
    assert_eq!(version, 5, "all migrations applied");
    assert!(objects.contains(&("trigger".into(), "audit_no_update".into())));
    assert!(objects.contains(&("index".into(), "tasks_lease".into())));
    assert!(objects.contains(&("index".into(), "tasks_created_id".into())));

    for round in 0..2 {
        let store = open(&path);
        assert_eq!(store.get_task(&t.id).await.unwrap().as_ref(), Some(&t));
        assert_eq!(
            store.task_token_hash(&t.id).await.unwrap().as_deref(),
            Some("rotated")
        );
        assert_eq!(store.list_orgs().await.unwrap().len(), 1);
        assert_eq!(store.events_after(0, 0).await.unwrap(), events);
        assert_eq!(store.audit_after(0, 0).await.unwrap(), audits);
        assert_eq!(store.task_logs(&t.id, 0, 0).await.unwrap(), logs);
        assert_eq!(
            store.get_agent(&agent("agent-a")).await.unwrap().as_ref(),
            Some(&agent_row)
        );
        assert_eq!(store.list_agents().await.unwrap(), vec![agent_row.clone()]);
        // Re-sent lines are still known after the restart.
        let r = store
            .append_logs(&t.id, batch(&agent("agent-a"), lines(1..=3)))
            .await
            .unwrap();
        assert_eq!((r.inserted, r.max_seq), (0, 3), "round {round}");
        // Ids continue after the stored ones.
        let next = store
            .append_events(vec![event("after")], vec![])
            .await
            .unwrap();
        assert!(next > events.last().unwrap().id);
        events = store.events_after(0, 0).await.unwrap();
        assert_eq!(events.last().map(|e| e.id), Some(next));
        drop(store);
        assert_eq!(schema(&path), (version, objects.clone()), "round {round}");
    }
}

#[tokio::test]
async fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(open(&path));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    match SqliteStore::open(&path, Durability::Full) {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("99"), "{msg}"),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let t = task("acme", TaskStatus::Running, now_ms());
    insert(&store, &t, "h").await;

    const N: u32 = 200;
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let store = store.clone();
            let id = t.id.clone();
            tokio::spawn(async move {
                store
                    .update_task(
                        &id,
                        Box::new(|t: &mut Task| {
                            t.claims += 1;
                            Ok(TaskChange::default())
                        }),
                    )
                    .await
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for h in handles {
        let u = h.await.expect("join").expect("update");
        assert!(u.changed);
        // Every update saw a distinct predecessor: the read-modify-writes were serialized.
        assert!(
            seen.insert(u.task.claims),
            "claims {} seen twice",
            u.task.claims
        );
    }
    assert_eq!(seen, (1..=N).collect::<BTreeSet<_>>());
    assert_eq!(store.get_task(&t.id).await.unwrap().unwrap().claims, N);
}

#[tokio::test]
async fn log_lines_only_go_forward_stop_at_the_seal_and_respect_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let t = running_task(&store, "agent-a").await;
    let a = agent("agent-a");

    // Gaps are fine; going back to a number never stored is refused (followers past it would
    // never see the line), and nothing of that batch is stored.
    store
        .append_logs(&t.id, batch(&a, lines([1, 2, 5])))
        .await
        .unwrap();
    let err = store
        .append_logs(&t.id, batch(&a, lines([6, 3])))
        .await
        .expect_err("3 comes after 5");
    assert!(
        matches!(&err, StoreError::Rejected(r) if r.kind == RejectionKind::LogOutOfOrder
            && r.field.as_deref() == Some("lines[1].seq")),
        "{err:?}"
    );
    assert_eq!(store.max_log_seq(&t.id).await.unwrap(), 5);

    // A wrong fencing token, or an agent that never claimed, writes nothing.
    let mut stale = batch(&a, lines([6]));
    stale.fencing = 2;
    assert!(matches!(
        store.append_logs(&t.id, stale).await,
        Err(StoreError::Rejected(r)) if r.kind == RejectionKind::StaleFencing
    ));

    // Quota: 30 bytes. "line 6" (6 bytes) fits; the next line that would pass the quota is
    // replaced by the quota note, and every later line is dropped.
    let mut b = batch(&a, lines([6]));
    b.quota_bytes = 30;
    let r = store.append_logs(&t.id, b).await.unwrap();
    assert!(!r.quota_exceeded);
    let mut b = batch(&a, vec![line(7, &"x".repeat(40)), line(8, "late")]);
    b.quota_bytes = 30;
    let r = store.append_logs(&t.id, b).await.unwrap();
    assert!(r.quota_exceeded);
    assert_eq!((r.inserted, r.max_seq), (1, 7));
    let stored = store.task_logs(&t.id, 6, 0).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].stream, LogStream::System);
    assert!(
        stored[0].line.contains("quota of 30 bytes"),
        "{}",
        stored[0].line
    );
    let mut b = batch(&a, lines([9]));
    b.quota_bytes = 30;
    let r = store.append_logs(&t.id, b).await.unwrap();
    assert!(r.quota_exceeded);
    assert_eq!(r.inserted, 0);

    // The final batch seals the log: nothing more is taken, re-sends included.
    let mut fin = batch(&a, lines([10]));
    fin.seal = true;
    fin.quota_bytes = 1 << 20;
    store.append_logs(&t.id, fin).await.unwrap();
    assert!(store.get_task(&t.id).await.unwrap().unwrap().log_sealed);
    assert!(matches!(
        store.append_logs(&t.id, batch(&a, lines([11]))).await,
        Err(StoreError::Rejected(r)) if r.kind == RejectionKind::LogSealed
    ));
}

#[tokio::test]
async fn cursors_past_every_id_return_nothing_instead_of_wrapping() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    let t = running_task(&store, "agent-a").await;
    store
        .append_logs(&t.id, batch(&agent("agent-a"), lines(1..=3)))
        .await
        .unwrap();
    for after in [u64::MAX, 1 << 63, (1 << 63) + 5] {
        assert!(
            store.task_logs(&t.id, after, 0).await.unwrap().is_empty(),
            "{after}"
        );
        assert!(store
            .agent_logs(&agent("agent-a"), after, 0)
            .await
            .unwrap()
            .is_empty());
        assert!(store.events_after(after, 0).await.unwrap().is_empty());
        assert!(store.audit_after(after, 0).await.unwrap().is_empty());
    }
    assert_eq!(store.task_logs(&t.id, 0, 0).await.unwrap().len(), 3);
}

#[tokio::test]
async fn one_corrupt_row_does_not_hide_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let good = task("acme", TaskStatus::Scheduled, now_ms());
    let bad = task("acme", TaskStatus::Scheduled, now_ms());
    insert(&store, &good, "h").await;
    insert(&store, &bad, "h").await;
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "UPDATE tasks SET status = 'Bogus', artifacts = 'not json' WHERE id = ?1",
        [bad.id.as_str()],
    )
    .unwrap();
    let listed = store.list_tasks(TaskQuery::default()).await.unwrap();
    assert_eq!(ids(&listed), vec![good.id.clone()]);
    // The corrupt row itself is an error, with its id.
    let err = store.get_task(&bad.id).await.expect_err("corrupt");
    assert!(err.to_string().contains("status Bogus"), "{err}");
}

#[tokio::test]
async fn database_files_are_private_from_the_first_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    insert(&store, &task("acme", TaskStatus::Scheduled, now_ms()), "h").await;
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[tokio::test]
async fn a_read_only_database_is_refused_at_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let state = path.parent().unwrap().to_owned();
    drop(open(&path));
    // Make the state dir read-only: by its mode for a normal user; root ignores modes, so as
    // root by a read-only bind mount of the dir onto itself (undone below).
    let root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).unwrap().uid() == 0
    };
    let run = |args: &[&str]| {
        let st = std::process::Command::new("mount")
            .args(args)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount {args:?} failed");
    };
    let s = state.to_str().unwrap();
    if root {
        run(&["--bind", s, s]);
        run(&["-o", "remount,ro,bind", s]);
    } else {
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    let res = SqliteStore::open(&path, Durability::Full);
    if root {
        let _ = std::process::Command::new("umount").arg(s).status();
    } else {
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let err = match res {
        Ok(_) => panic!("a read-only database opened"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("read-only"), "{err}");
}

/// Pages every task of `q` with the keyset cursor, `per_page` at a time.
async fn all_pages(store: &SqliteStore, q: TaskQuery, per_page: usize) -> Vec<Task> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .task_page(TaskQuery {
                limit: per_page,
                after: after.clone(),
                ..q.clone()
            })
            .await
            .expect("page");
        let tasks: Vec<Task> = serde_json::from_slice(&page.to_vec()).expect("page is JSON tasks");
        assert_eq!(tasks.len(), page.count);
        assert!(page.count <= per_page);
        out.extend(tasks);
        if page.count < per_page {
            return out;
        }
        after = page.last;
        assert!(after.is_some(), "a full page names its last task");
    }
}

#[tokio::test]
async fn task_pages_are_the_listing_serialized_and_page_by_keyset() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&db_path(&dir));
    // Ties on created_at (same millisecond) are ordered by id; timestamps with nanoseconds
    // are stored (and listed) at millisecond resolution.
    let base = now_ms();
    for i in 0..25 {
        let created = base + Duration::milliseconds(i / 4);
        let mut t = task(
            if i % 3 == 0 { "acme" } else { "umbrella" },
            TaskStatus::Scheduled,
            created + Duration::nanoseconds(123_456),
        );
        if i == 7 {
            // Larger than one piece of a page: the pieces join into the same bytes.
            t.task = "x".repeat(40_000);
        }
        if i % 5 == 0 {
            t.context.files = vec![guildnet_core::context::ContextFile {
                path: "notes.md".into(),
                content: "hi".into(),
            }];
        }
        insert(&store, &t, "h").await;
    }
    // Some tasks change after insert (the stored JSON follows every write).
    let listed = store.list_tasks(TaskQuery::default()).await.unwrap();
    for t in listed.iter().step_by(4) {
        store
            .update_task(
                &t.id,
                Box::new(|t| {
                    t.status = TaskStatus::Running;
                    t.agent = Some(agent("agent-x"));
                    t.fencing = 1;
                    t.lease_expires_at = Some(Utc::now() + Duration::seconds(30));
                    t.started_at = Some(Utc::now());
                    Ok(TaskChange::default())
                }),
            )
            .await
            .unwrap();
    }
    let listed = store.list_tasks(TaskQuery::default()).await.unwrap();
    assert_eq!(listed.len(), 25);

    let whole = store.task_page(TaskQuery::default()).await.unwrap();
    assert_eq!(
        String::from_utf8(whole.to_vec()).unwrap(),
        serde_json::to_string(&listed).unwrap(),
        "the page is byte for byte what serializing the decoded listing gives"
    );
    assert_eq!(whole.count, 25);

    for per_page in [1, 4, 7, 25, 100] {
        let paged = all_pages(&store, TaskQuery::default(), per_page).await;
        assert_eq!(ids(&paged), ids(&listed), "{per_page} per page");
    }
    let running = TaskQuery {
        statuses: vec![TaskStatus::Running],
        ..Default::default()
    };
    let paged = all_pages(&store, running.clone(), 2).await;
    assert_eq!(
        ids(&paged),
        ids(&store.list_tasks(running).await.unwrap()),
        "filters and the cursor combine"
    );
    assert!(!paged.is_empty());
    let acme = TaskQuery {
        org: Some(org("acme")),
        ..Default::default()
    };
    assert_eq!(
        ids(&all_pages(&store, acme.clone(), 3).await),
        ids(&store.list_tasks(acme).await.unwrap())
    );
}

#[tokio::test]
async fn stored_task_json_is_filled_at_open_for_rows_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let listed = {
        let store = open(&path);
        for _ in 0..5 {
            insert(&store, &task("acme", TaskStatus::Scheduled, now_ms()), "h").await;
        }
        store.list_tasks(TaskQuery::default()).await.unwrap()
    };
    // As a database from before the column, and one whose JSON is of another version.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("UPDATE tasks SET json = NULL", []).unwrap();
    c.execute("UPDATE meta SET value = '0' WHERE key = 'task_json'", [])
        .unwrap();
    drop(c);
    let store = open(&path);
    let page = store.task_page(TaskQuery::default()).await.unwrap();
    assert_eq!(page.to_vec(), serde_json::to_vec(&listed).unwrap());
    drop(store);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("UPDATE tasks SET json = '{\"stale\":true}'", [])
        .unwrap();
    c.execute("UPDATE meta SET value = '0' WHERE key = 'task_json'", [])
        .unwrap();
    drop(c);
    let store = open(&path);
    let page = store.task_page(TaskQuery::default()).await.unwrap();
    assert_eq!(
        page.to_vec(),
        serde_json::to_vec(&listed).unwrap(),
        "another version's JSON is written anew"
    );
}

#[test]
fn task_cursors_round_trip_and_refuse_garbage() {
    use guildnet_core::store::TaskKey;
    let k = TaskKey {
        created_at_ms: 1_764_669_600_123,
        id: TaskId::generate(),
    };
    assert_eq!(TaskKey::from_cursor(&k.to_cursor()), Some(k));
    for bad in ["", "123", "abc.t1", "12.", ".t1", "12.not a task id"] {
        assert_eq!(TaskKey::from_cursor(bad), None, "{bad:?}");
    }
}
