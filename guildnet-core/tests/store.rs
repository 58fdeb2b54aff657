//! The state stores against real databases: every test of the suite runs against SQLite (a
//! real database file) and against a real PostgreSQL from the testbed
//! (`scripts/testbed/install.sh postgres`; missing, the PostgreSQL tests fail, they do not
//! skip), so the two implementations cannot drift. Covered: orgs, tasks and their conditional
//! updates, logs, events, the append-only audit log, durability across reopen, a newer schema
//! refused, and atomic read-modify-write under concurrent writers. Tests of one store only
//! (file modes and read-only files of SQLite; unreachable servers, passwords in messages and
//! two replicas on one database for PostgreSQL) follow the suite.

#![cfg(feature = "postgres")]

use chrono::{DateTime, Duration, Utc};
use guildnet_core::model::{Agent, LogStream, NewAudit, NewEvent, NewLogLine, Task, TaskStatus};
use guildnet_core::names::{AgentName, OrgName, ProcessId, TaskId};
use guildnet_core::store::{
    Durability, LogBatch, PostgresOptions, PostgresStore, Rejection, RejectionKind, SqliteStore,
    StateStore, StoreError, TaskChange, TaskQuery,
};
use guildnet_testbed::postgres::Postgres;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One database of either kind, opened (and reopened) as a [`StateStore`].
enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        server: &'static Postgres,
        name: String,
        url: String,
    },
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        Db::Sqlite { _dir: dir, path }
    }

    /// A fresh database on the test process's PostgreSQL server.
    async fn postgres() -> Db {
        let server = Postgres::shared().await.expect(
            "the testbed's PostgreSQL must start (install it: scripts/testbed/install.sh postgres)",
        );
        let url = server.fresh_database().await.expect("create database");
        let name = url.rsplit('/').next().expect("db name").to_owned();
        Db::Postgres { server, name, url }
    }

    async fn try_open(&self) -> Result<Arc<dyn StateStore>, StoreError> {
        Ok(match self {
            Db::Sqlite { path, .. } => Arc::new(SqliteStore::open(path, Durability::Full)?),
            Db::Postgres { url, .. } => Arc::new(PostgresStore::connect(url).await?),
        })
    }

    async fn open(&self) -> Arc<dyn StateStore> {
        self.try_open().await.expect("open store")
    }

    /// Runs SQL behind the store's back (as another connection); returns the first column of
    /// the first row, if any, as text.
    async fn raw(&self, sql: &str) -> Result<String, String> {
        match self {
            Db::Sqlite { path, .. } => {
                let c = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
                c.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                let mut stmt = c.prepare(sql).map_err(|e| e.to_string())?;
                if stmt.column_count() == 0 {
                    stmt.execute([]).map_err(|e| e.to_string())?;
                    return Ok(String::new());
                }
                let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
                match rows.next().map_err(|e| e.to_string())? {
                    None => Ok(String::new()),
                    Some(r) => {
                        let v: rusqlite::types::Value = r.get(0).map_err(|e| e.to_string())?;
                        Ok(match v {
                            rusqlite::types::Value::Integer(i) => i.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            other => format!("{other:?}"),
                        })
                    }
                }
            }
            Db::Postgres { server, name, .. } => server
                .psql(name, sql)
                .await
                .map(|out| out.trim().to_owned())
                .map_err(|e| e.to_string()),
        }
    }

    /// The schema version recorded in the database, and the names of its tables, indexes and
    /// triggers.
    async fn schema(&self) -> (i64, BTreeSet<String>) {
        let (version, objects) = match self {
            Db::Sqlite { .. } => (
                "PRAGMA user_version",
                "SELECT group_concat(name, ',') FROM sqlite_master",
            ),
            Db::Postgres { .. } => (
                "SELECT MAX(version) FROM guildnet_schema",
                "SELECT string_agg(n, ',') FROM (SELECT relname::text AS n FROM pg_class c                  JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = 'public'                  UNION ALL SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal) o",
            ),
        };
        let v = self.raw(version).await.expect("schema version");
        let objs = self.raw(objects).await.expect("schema objects");
        (
            v.parse().expect("version number"),
            objs.split(',').map(str::to_owned).collect(),
        )
    }

    /// Makes the database claim schema version `v`.
    async fn set_schema_version(&self, v: i64) {
        let sql = match self {
            Db::Sqlite { .. } => format!("PRAGMA user_version = {v}"),
            Db::Postgres { .. } => {
                format!("INSERT INTO guildnet_schema (version, applied_at) VALUES ({v}, 0)")
            }
        };
        self.raw(&sql).await.expect("set schema version");
    }

    /// The schema version this build migrates to.
    fn current_version(&self) -> i64 {
        match self {
            Db::Sqlite { .. } => 8,
            Db::Postgres { .. } => PostgresStore::schema_version() as i64,
        }
    }
}

/// Runs each listed `async fn(Db)` once per store: `sqlite::<name>` and `postgres::<name>`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Db::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Db::postgres().await).await
                }
            )*
        }
    };
}

both_stores!(
    orgs_create_duplicate_list_get,
    tasks_insert_get_list_and_token_hash,
    update_task_applies_rejects_and_skips,
    append_logs_is_idempotent_and_pages_in_order,
    events_have_increasing_ids_and_page,
    audit_log_is_append_only,
    everything_survives_reopen_and_migrations_are_idempotent,
    refuses_a_newer_schema,
    concurrent_updates_are_atomic,
    log_lines_only_go_forward_stop_at_the_seal_and_respect_the_quota,
    cursors_past_every_id_return_nothing_instead_of_wrapping,
    one_corrupt_row_does_not_hide_the_others,
    unclaimed_notes_only_while_submitted_to_that_agent,
    task_pages_are_the_listing_serialized_and_page_by_keyset,
    task_counts_count_every_status,
    prune_removes_old_finished_tasks_with_their_logs_and_agents,
    lease_renewals_follow_the_fencing_rules_and_write_no_events,
    a_batch_with_one_bad_write_keeps_the_others,
    editor_closes_are_kept_per_agent_and_only_move_forward,
    written_updates_answer_the_highest_log_seq_as_of_their_write,
);

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
        claim_process: None,
    }
}

fn scheduled_event(t: &Task) -> NewEvent {
    NewEvent::for_task("task.scheduled", t, None)
}

fn audit(action: &str, subject: &str) -> NewAudit {
    NewAudit::new("admin", action, subject, None)
}

async fn insert(store: &dyn StateStore, t: &Task, token_hash: &str) -> u64 {
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
async fn running_task(store: &dyn StateStore, agent_name: &str) -> Task {
    let mut t = task("acme", TaskStatus::Running, now_ms());
    t.agent = Some(agent(agent_name));
    t.fencing = 1;
    t.claims = 1;
    t.started_at = Some(now_ms());
    insert(store, &t, "hash").await;
    t
}

/// A task update that writes answers the task's highest log sequence number as of its write
/// (what a claim answers as `next_log_seq - 1`): a line of the earlier agent racing with the
/// update counts if and only if it was stored before it (after it, the line is fenced off).
/// An update that writes nothing answers no figure.
async fn written_updates_answer_the_highest_log_seq_as_of_their_write(db: Db) {
    let store = db.open().await;
    let a = agent("agent-a");
    let mut racing = Vec::new();
    for i in 0..24u64 {
        let t = running_task(&*store, "agent-a").await;
        store
            .append_logs(&t.id, batch(&a, lines(1..=i + 1)))
            .await
            .unwrap();
        let (s1, id1, a1) = (store.clone(), t.id.clone(), a.clone());
        let late = tokio::spawn(async move {
            s1.append_logs(&id1, batch(&a1, lines([i + 5])))
                .await
                .is_ok()
        });
        let (s2, id2) = (store.clone(), t.id.clone());
        let claim = tokio::spawn(async move {
            s2.update_task(
                &id2,
                Box::new(|t| {
                    t.agent = Some(agent("agent-b"));
                    t.fencing += 1;
                    t.claims += 1;
                    Ok(TaskChange {
                        events: vec![NewEvent::for_task("task.claimed", t, None)],
                        audit: vec![],
                    })
                }),
            )
            .await
            .unwrap()
        });
        racing.push((t, i, late, claim));
    }
    let mut before = 0;
    for (t, i, late, claim) in racing {
        let stored_late = late.await.unwrap();
        let u = claim.await.unwrap();
        assert!(u.changed);
        let max = store.max_log_seq(&t.id).await.unwrap();
        assert_eq!(max, if stored_late { i + 5 } else { i + 1 });
        assert_eq!(u.max_log_seq, Some(max), "task {}", t.id);
        before += u64::from(stored_late);
    }
    eprintln!("{before} of 24 racing lines were stored before their task's update");
    // No write, no figure.
    let t = running_task(&*store, "agent-c").await;
    let same = store
        .update_task(&t.id, Box::new(|_| Ok(TaskChange::default())))
        .await
        .unwrap();
    assert!(!same.changed);
    assert_eq!(same.max_log_seq, None);
}

async fn orgs_create_duplicate_list_get(db: Db) {
    let store = db.open().await;

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

async fn tasks_insert_get_list_and_token_hash(db: Db) {
    let store = db.open().await;
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
        let ev = insert(&*store, t, h).await;
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

async fn update_task_applies_rejects_and_skips(db: Db) {
    let store = db.open().await;
    let t = task("acme", TaskStatus::Submitted, now_ms());
    insert(&*store, &t, "old-hash").await;
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
                t.claim_process = Some(ProcessId::new("p-first").unwrap());
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
    assert_eq!(
        stored.claim_process.as_ref().map(|p| p.as_str()),
        Some("p-first")
    );
    // ...and in a listing, which reads the same columns.
    let listed = store.list_tasks(TaskQuery::default()).await.unwrap();
    assert_eq!(listed.iter().find(|l| l.id == t.id), Some(&stored));
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

async fn append_logs_is_idempotent_and_pages_in_order(db: Db) {
    let store = db.open().await;
    let t = running_task(&*store, "agent-a").await;
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

async fn events_have_increasing_ids_and_page(db: Db) {
    let store = db.open().await;
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

async fn audit_log_is_append_only(db: Db) {
    let store = db.open().await;
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

    let upd = db
        .raw("UPDATE audit SET actor = 'mallory'")
        .await
        .expect_err("UPDATE on audit must fail");
    assert!(upd.contains("append-only"), "{upd}");
    let del = db
        .raw("DELETE FROM audit")
        .await
        .expect_err("DELETE on audit must fail");
    assert!(del.contains("append-only"), "{del}");
    let del_one = db
        .raw(&format!("DELETE FROM audit WHERE id = {}", rows[0].id))
        .await
        .expect_err("DELETE of one row must fail");
    assert!(del_one.contains("append-only"), "{del_one}");
    // Appending through another connection still works (the log is append-only, not read-only).
    db.raw("INSERT INTO audit (ts, actor, action, subject) VALUES (0, 'system', 'x', 'y')")
        .await
        .unwrap();

    let count = db.raw("SELECT COUNT(*) FROM audit").await.unwrap();
    assert_eq!(count, "3");
    let after = store.audit_after(0, 0).await.unwrap();
    assert_eq!(&after[..2], &rows[..]);
    assert_eq!(after[0].actor, "admin");
}

async fn everything_survives_reopen_and_migrations_are_idempotent(db: Db) {
    let (t, mut events, audits, logs, agent_row) = {
        let store = db.open().await;
        store
            .create_org(&org("acme"), audit("org.create", "acme"))
            .await
            .unwrap();
        let t = running_task(&*store, "agent-a").await;
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

    let (version, objects) = db.schema().await;
    assert_eq!(version, db.current_version(), "all migrations applied");
    assert!(
        objects.iter().any(|o| o.starts_with("audit_no_")),
        "{objects:?}"
    );
    // PostgreSQL keeps the lease out of every index (lease renewals update in place).
    assert_eq!(
        objects.contains("tasks_lease"),
        matches!(db, Db::Sqlite { .. }),
        "{objects:?}"
    );
    assert!(objects.contains("tasks_created_id"), "{objects:?}");

    for round in 0..2 {
        let store = db.open().await;
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
        assert_eq!(
            db.schema().await,
            (version, objects.clone()),
            "round {round}"
        );
    }
}

async fn refuses_a_newer_schema(db: Db) {
    drop(db.open().await);
    db.set_schema_version(99).await;
    match db.try_open().await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("99"), "{msg}"),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

async fn concurrent_updates_are_atomic(db: Db) {
    let store = db.open().await;
    let t = task("acme", TaskStatus::Running, now_ms());
    insert(&*store, &t, "h").await;

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

async fn log_lines_only_go_forward_stop_at_the_seal_and_respect_the_quota(db: Db) {
    let store = db.open().await;
    let t = running_task(&*store, "agent-a").await;
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

async fn cursors_past_every_id_return_nothing_instead_of_wrapping(db: Db) {
    let store = db.open().await;
    let t = running_task(&*store, "agent-a").await;
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

async fn one_corrupt_row_does_not_hide_the_others(db: Db) {
    let store = db.open().await;
    let good = task("acme", TaskStatus::Scheduled, now_ms());
    let bad = task("acme", TaskStatus::Scheduled, now_ms());
    insert(&*store, &good, "h").await;
    insert(&*store, &bad, "h").await;
    db.raw(&format!(
        "UPDATE tasks SET status = 'Bogus', artifacts = 'not json' WHERE id = '{}'",
        bad.id
    ))
    .await
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
async fn a_dropped_store_keeps_no_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store
        .create_org(&org("acme"), audit("org.create", "acme"))
        .await
        .expect("write");
    let state = path.parent().unwrap().to_owned();
    let open_here = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(&state))
            .count()
    };
    assert!(open_here() > 0, "the open store holds its files");
    drop(store);
    // At once: no writer, reader or checkpoint thread still has them open.
    assert_eq!(open_here(), 0, "files of a dropped store still open");
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
    // A remount read-only can meet "mount point is busy" for a moment (seen once under
    // parallel tests): a few tries, then the error.
    let run = |args: &[&str]| {
        for attempt in 1..=5 {
            let out = std::process::Command::new("mount")
                .args(args)
                .output()
                .expect("run mount");
            if out.status.success() {
                return;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                attempt < 5 && err.contains("busy"),
                "mount {args:?} failed: {err}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200 * attempt));
        }
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

async fn unclaimed_notes_only_while_submitted_to_that_agent(db: Db) {
    let store = db.open().await;
    let mut t = task("acme", TaskStatus::Submitted, now_ms());
    t.agent = Some(agent("agent-a"));
    insert(&*store, &t, "h").await;
    let first = store
        .append_unclaimed_note(&t.id, &agent("agent-a"), "pod Pending".into())
        .await
        .unwrap();
    let second = store
        .append_unclaimed_note(&t.id, &agent("agent-a"), "still Pending".into())
        .await
        .unwrap();
    assert_eq!((first, second), (Some(1), Some(2)));
    // Another agent, or the task no longer Submitted: nothing written.
    assert_eq!(
        store
            .append_unclaimed_note(&t.id, &agent("agent-b"), "x".into())
            .await
            .unwrap(),
        None
    );
    store
        .update_task(
            &t.id,
            Box::new(|t: &mut Task| {
                t.status = TaskStatus::Running;
                t.fencing = 1;
                Ok(TaskChange::default())
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .append_unclaimed_note(&t.id, &agent("agent-a"), "late".into())
            .await
            .unwrap(),
        None
    );
    let logs = store.task_logs(&t.id, 0, 0).await.unwrap();
    assert_eq!(
        logs.iter()
            .map(|l| (l.seq, l.stream, l.line.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (1, LogStream::System, "pod Pending"),
            (2, LogStream::System, "still Pending")
        ]
    );
    let err = store
        .append_unclaimed_note(&TaskId::generate(), &agent("agent-a"), "x".into())
        .await
        .expect_err("unknown task");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

// ---- PostgreSQL only ----------------------------------------------------------------------

/// A URL's password never appears in the error when the server is unreachable (nothing
/// listens on the port) or refuses the login; the error names the host, port and database.
#[tokio::test]
async fn postgres_connect_errors_name_the_database_without_its_password() {
    let port = guildnet_testbed::free_port().unwrap();
    let url = format!("postgres://guildnet:Sup3rSecretPw@127.0.0.1:{port}/guildnet");
    let err = PostgresStore::connect(&url)
        .await
        .expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        msg.contains(&format!("postgres://guildnet@127.0.0.1:{port}/guildnet")),
        "{msg}"
    );
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(!msg.contains("Sup3rSecretPw"), "{msg}");
    assert!(!format!("{err:?}").contains("Sup3rSecretPw"), "{err:?}");

    let server = Postgres::shared().await.expect("testbed postgres");
    let url = format!(
        "postgres://guildnet:Sup3rSecretPw@127.0.0.1:{}/postgres",
        server.port()
    );
    let err = PostgresStore::connect(&url)
        .await
        .expect_err("wrong password");
    let msg = err.to_string();
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains("Sup3rSecretPw"), "{msg}");
}

/// Two stores on one database stand for two orchestrator replicas: read-modify-writes of one
/// task from both are serialized (every update sees a distinct predecessor), and a claim
/// (fencing token bump) conditional on the token it read succeeds on exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_replicas_update_one_task_atomically() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    let t = task("acme", TaskStatus::Running, now_ms());
    insert(&*a, &t, "h").await;

    const N: u32 = 100;
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
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
        assert!(seen.insert(u.task.claims), "claims {} twice", u.task.claims);
    }
    assert_eq!(seen, (1..=N).collect::<BTreeSet<_>>());

    // Both replicas try to claim with the fencing token they read: exactly one wins.
    let fencing = a.get_task(&t.id).await.unwrap().unwrap().fencing;
    let claim = |store: Arc<dyn StateStore>, who: &'static str| {
        let id = t.id.clone();
        tokio::spawn(async move {
            store
                .update_task(
                    &id,
                    Box::new(move |t: &mut Task| {
                        if t.fencing != fencing {
                            return Err(Rejection::stale("already claimed"));
                        }
                        t.fencing += 1;
                        t.agent = Some(AgentName::new(who).unwrap());
                        Ok(TaskChange::default())
                    }),
                )
                .await
        })
    };
    let (r1, r2) = (claim(a.clone(), "agent-a"), claim(b.clone(), "agent-b"));
    let results = [r1.await.unwrap(), r2.await.unwrap()];
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let stored = b.get_task(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.fencing, fencing + 1);
    assert_eq!(stored.agent, won[0].as_ref().unwrap().task.agent);
}

/// A log append through one replica and an update of the same task through another, both
/// waiting for the lock that orders commits (held here by a raw transaction, as by a third
/// replica's batch), the append first in line. Neither may end in a deadlock, whatever the
/// order in which a batch takes its task rows and the ordering lock (one order that did:
/// rows first, then the lock, with the append reading its row only after taking the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_log_append_and_an_update_of_one_task_on_two_replicas_do_not_deadlock() {
    let db = Db::postgres().await;
    let Db::Postgres { url, .. } = &db else {
        unreachable!("a PostgreSQL database")
    };
    let a = db.open().await;
    let b = db.open().await;
    let t = running_task(&*a, "agent-1").await;
    let (raw, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    // The store's ordering lock (`LOCK_WRITES`: "guildnet" in ASCII, then 2).
    raw.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7454980672444039170)")
        .await
        .expect("hold the ordering lock");
    let pause = std::time::Duration::from_millis(300);
    let append = {
        let (b, id) = (b.clone(), t.id.clone());
        tokio::spawn(async move {
            b.append_logs(&id, batch(&agent("agent-1"), lines([1])))
                .await
        })
    };
    tokio::time::sleep(pause).await;
    let update = {
        let (a, id) = (a.clone(), t.id.clone());
        tokio::spawn(async move {
            a.update_task(
                &id,
                Box::new(|t: &mut Task| {
                    t.claims += 1;
                    Ok(TaskChange::default())
                }),
            )
            .await
        })
    };
    tokio::time::sleep(pause).await;
    assert!(!append.is_finished() && !update.is_finished());
    raw.batch_execute("COMMIT")
        .await
        .expect("release the ordering lock");
    let wait = std::time::Duration::from_secs(10);
    let appended = tokio::time::timeout(wait, append)
        .await
        .expect("append ends");
    let updated = tokio::time::timeout(wait, update)
        .await
        .expect("update ends");
    assert_eq!(appended.expect("join").expect("append").inserted, 1);
    assert_eq!(
        updated.expect("join").expect("update").task.claims,
        t.claims + 1
    );
}

/// Events written concurrently through two replicas: a follower paging with its cursor (as
/// SSE does with `Last-Event-ID`) while they are written sees every event exactly once, in
/// id order (ids become visible in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_event_cursors_skip_nothing_under_concurrent_writers() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for i in 0..EACH {
                    store
                        .append_events(vec![event(&format!("w{w}.{i}"))], vec![])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let follower = {
        let store = b.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            while seen.len() < WRITERS * EACH {
                let page = store.events_after(cursor, 7).await.expect("page");
                if page.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                }
                cursor = page.last().unwrap().id;
                seen.extend(page.into_iter().map(|e| (e.id, e.kind)));
            }
            seen
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), follower)
        .await
        .expect("the follower saw every event")
        .unwrap();
    let all: Vec<_> = a
        .events_after(0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.kind))
        .collect();
    assert_eq!(all.len(), WRITERS * EACH);
    assert_eq!(seen, all);
}

/// Log lines written concurrently through two replicas, for many tasks whose agent has one
/// name: a follower of that agent's lines paging with its id cursor (as the agent log stream
/// does) while they are written sees every line exactly once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_log_cursors_skip_nothing_under_concurrent_writers() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    const WRITERS: usize = 8;
    const EACH: u64 = 30;
    let who = agent("agent-f");
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        tasks.push(running_task(&*a, "agent-f").await);
    }
    let writers: Vec<_> = tasks
        .iter()
        .enumerate()
        .map(|(w, t)| {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            let (id, who) = (t.id.clone(), who.clone());
            tokio::spawn(async move {
                for seq in 1..=EACH {
                    // Some batches of two lines, so one commit carries several ids.
                    let mut ls = vec![line(seq * 2 - 1, &format!("w{w}.{seq}a"))];
                    if seq % 3 == 0 {
                        ls.push(line(seq * 2, &format!("w{w}.{seq}b")));
                    }
                    store
                        .append_logs(&id, batch(&who, ls))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let total = WRITERS * (EACH as usize + EACH as usize / 3);
    let follower = {
        let (store, who) = (b.clone(), who.clone());
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            while seen.len() < total {
                let page = store.agent_logs(&who, cursor, 5).await.expect("page");
                if page.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
                cursor = page.last().unwrap().id;
                seen.extend(page.into_iter().map(|l| (l.id, l.line)));
            }
            seen
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), follower)
        .await
        .expect("the follower saw every line")
        .unwrap();
    let all: Vec<_> = a
        .agent_logs(&who, 0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.id, l.line))
        .collect();
    assert_eq!(all.len(), total);
    assert_eq!(seen, all);
}

/// Writes are committed in groups: a write that fails (here PostgreSQL refuses a NUL byte in
/// text) rolls back alone, and the writes batched with it are stored and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_failing_write_does_not_fail_its_batch() {
    let db = Db::postgres().await;
    let store = db.open().await;
    let mut hs = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        hs.push(tokio::spawn(async move {
            let mut e = event(&format!("e{i}"));
            if i % 7 == 3 {
                e.message = Some("bad \0 byte".into());
            }
            (i, store.append_events(vec![e], vec![]).await)
        }));
    }
    let mut ok = Vec::new();
    for h in hs {
        let (i, r) = h.await.unwrap();
        match r {
            Ok(id) => {
                assert!(i % 7 != 3, "write {i} should have failed");
                ok.push((id, format!("e{i}")));
            }
            Err(e) => {
                assert!(i % 7 == 3, "write {i} failed: {e}");
                assert!(matches!(e, StoreError::Backend { .. }), "{e:?}");
            }
        }
    }
    ok.sort();
    let stored: Vec<_> = store
        .events_after(0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.kind))
        .collect();
    assert_eq!(stored, ok, "every acknowledged write, and only those");
    let pg = PostgresStore::connect(match &db {
        Db::Postgres { url, .. } => url,
        Db::Sqlite { .. } => unreachable!(),
    })
    .await
    .unwrap();
    // This process's own store: its writes were grouped.
    pg.append_events(vec![event("one more")], vec![])
        .await
        .unwrap();
    assert_eq!(pg.commit_stats().writes, 1);
    // A batch of statements alone sends its commit with them (one round trip).
    assert_eq!(pg.batch_times().folded, 1);
}

/// A batch mixing every kind of write (statements in the pipeline, some of which fail, and
/// task updates that read their rows at the batch's start, two of them on the same task):
/// every acknowledged write is stored with its events, the failing ones alone are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_mixed_batches_keep_every_acknowledged_write() {
    let db = Db::postgres().await;
    let store = db.open().await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(running_task(store.as_ref(), &format!("m-{i}")).await);
    }
    let before = store.last_event_id().await.unwrap();
    let mut hs = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let store = store.clone();
            hs.push(tokio::spawn(async move {
                let mut e = event(&format!("e{round}-{i}"));
                if i % 7 == 3 {
                    e.message = Some("bad \0 byte".into());
                }
                (
                    i % 7 != 3,
                    store.append_events(vec![e], vec![]).await.map(|_| ()),
                )
            }));
        }
        for (i, t) in tasks.iter().enumerate() {
            let (s1, t1) = (store.clone(), t.clone());
            hs.push(tokio::spawn(async move {
                let r = s1
                    .update_task(
                        &t1.id,
                        Box::new(move |t| {
                            t.claims += 1;
                            Ok(TaskChange {
                                events: vec![NewEvent::for_task("task.claimed", t, None)],
                                audit: vec![],
                            })
                        }),
                    )
                    .await
                    .map(|_| ());
                (true, r)
            }));
            let (s2, t2) = (store.clone(), t.clone());
            hs.push(tokio::spawn(async move {
                register(s2.as_ref(), &t2, &format!("m-{i}")).await;
                (true, Ok(()))
            }));
        }
    }
    for h in hs {
        let (good, r) = h.await.unwrap();
        assert_eq!(good, r.is_ok(), "{r:?}");
    }
    for t in &tasks {
        let stored = store.get_task(&t.id).await.unwrap().unwrap();
        assert_eq!(
            stored.claims,
            t.claims + 3,
            "three updates of {} kept",
            t.id
        );
    }
    let events = store.events_after(before, 0).await.unwrap();
    let count = |k: &str| events.iter().filter(|e| e.kind == k).count();
    assert_eq!(count("task.claimed"), 30);
    assert_eq!(count("agent.registered"), 30);
    assert_eq!(
        events.iter().filter(|e| e.kind.starts_with('e')).count(),
        3 * 17
    );
}

/// New tasks written together go into PostgreSQL in one statement per batch: every
/// acknowledged task is stored with its own audit rows and events (in the given order, its
/// last event id returned), a task whose id exists already is refused with `AlreadyExists`
/// and writes nothing, and a task PostgreSQL refuses (a NUL byte) fails alone, its batch's
/// other tasks running again one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_new_tasks_of_a_batch_are_one_statement_and_fail_alone() {
    let db = Db::postgres().await;
    let pg = PostgresStore::connect(match &db {
        Db::Postgres { url, .. } => url,
        Db::Sqlite { .. } => unreachable!(),
    })
    .await
    .unwrap();
    let store: Arc<dyn StateStore> = Arc::new(pg.clone());
    let taken = task("acme", TaskStatus::Scheduled, now_ms());
    insert(store.as_ref(), &taken, "hash").await;
    let (events_before, audit_before) = (
        store.last_event_id().await.unwrap(),
        store.audit_after(0, 0).await.unwrap().len(),
    );
    let mut hs = Vec::new();
    for round in 0..3 {
        for i in 0..40 {
            let store = store.clone();
            let mut t = task("acme", TaskStatus::Scheduled, now_ms());
            let want = if i % 11 == 5 {
                t.id = taken.id.clone();
                "exists"
            } else if round == 1 && i % 13 == 7 {
                t.task = "bad \0 byte".into();
                "refused"
            } else {
                "ok"
            };
            hs.push(tokio::spawn(async move {
                let events = vec![
                    NewEvent::for_task("task.scheduled", &t, None),
                    NewEvent::for_task("task.submitted", &t, Some(format!("{round}-{i}"))),
                ];
                let audit = vec![
                    audit("task.schedule", t.id.as_str()),
                    audit("task.dispatch", t.id.as_str()),
                ];
                let r = store
                    .insert_task_with_events(t.clone(), "hash".into(), events, audit)
                    .await;
                (want, t, r)
            }));
        }
    }
    let mut stored = Vec::new();
    for h in hs {
        let (want, t, r) = h.await.unwrap();
        match (want, r) {
            ("ok", Ok(last)) => stored.push((t, last)),
            ("exists", Err(StoreError::AlreadyExists(_))) => {}
            ("refused", Err(StoreError::Backend { .. })) => {}
            (want, r) => panic!("task {} ({want}): {r:?}", t.id),
        }
    }
    assert_eq!(stored.len(), 3 * 40 - 3 * 4 - 3);
    let events = store.events_after(events_before, 0).await.unwrap();
    assert_eq!(
        events.len(),
        2 * stored.len(),
        "two events per stored task, no more"
    );
    let audit_rows = store.audit_after(0, 0).await.unwrap();
    assert_eq!(audit_rows.len() - audit_before, 2 * stored.len());
    for (t, last) in &stored {
        let got = store.get_task(&t.id).await.unwrap().expect("stored");
        assert_eq!(got.task, t.task);
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.task_id.as_ref() == Some(&t.id))
            .collect();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[0].kind, "task.scheduled");
        assert_eq!(mine[1].kind, "task.submitted");
        assert!(mine[0].id < mine[1].id);
        assert_eq!(*last, mine[1].id, "the last event id of {}", t.id);
        let actions: Vec<_> = audit_rows
            .iter()
            .filter(|a| a.subject == t.id.as_str())
            .map(|a| a.action.as_str())
            .collect();
        assert_eq!(actions, ["task.schedule", "task.dispatch"]);
    }
    // The task that existed before is untouched.
    let first = store.get_task(&taken.id).await.unwrap().unwrap();
    assert_eq!(first.task, taken.task);
    // Several new tasks did share a batch (so one statement, or its rerun one by one).
    assert!(pg.commit_stats().largest > 1, "{:?}", pg.commit_stats());
}

/// Cluster-wide jobs: one replica leads a job at a time; when it goes (its connections close,
/// as when its process dies), another one takes over. Jobs are independent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_replica_leads_a_job_and_hands_it_over() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    assert!(a.lead("reaper").await.unwrap());
    assert!(!b.lead("reaper").await.unwrap());
    assert!(a.lead("reaper").await.unwrap(), "the leader stays leader");
    assert!(!b.lead("reaper").await.unwrap());
    assert!(
        b.lead("other-job").await.unwrap(),
        "another job, another lock"
    );
    assert!(!a.lead("other-job").await.unwrap());
    drop(a);
    let start = std::time::Instant::now();
    guildnet_testbed::eventually(
        "b leads the reaper",
        std::time::Duration::from_secs(10),
        || {
            let b = b.clone();
            async move { b.lead("reaper").await.unwrap().then_some(()) }
        },
    )
    .await;
    eprintln!("handover after {:?}", start.elapsed());
    // On SQLite (one process) the answer is always yes.
    let sqlite = Db::sqlite().open().await;
    assert!(sqlite.lead("reaper").await.unwrap());
    assert!(sqlite.external_changes().is_none());
}

/// TLS to PostgreSQL: a server whose certificate a fresh self-signed CA signed.
/// `sslmode=require&sslrootcert=<CA>` connects over TLS (the server lists the store's sessions
/// as TLS in `pg_stat_ssl`); `sslmode=verify-full` without the CA (the Mozilla roots) refuses the
/// certificate, with an error that names the database without its password; a plain URL still
/// connects without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_verifies_the_server_certificate() {
    let pg = Postgres::start_with_tls()
        .await
        .expect("the testbed's PostgreSQL with TLS must start");
    let url = pg.create_database("tls").await.unwrap();
    let ca = pg.tls_ca().expect("CA file").display().to_string();
    let store = PostgresStore::connect(&format!("{url}?sslmode=require&sslrootcert={ca}"))
        .await
        .expect("connect over TLS");
    let acme = OrgName::new("acme").unwrap();
    store
        .create_org(&acme, audit("org.create", "acme"))
        .await
        .unwrap();
    assert!(store.get_org(&acme).await.unwrap().is_some());
    let sessions = |ssl: bool| {
        format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl = {ssl} AND a.datname = 'tls' \
             AND a.application_name = 'guildnet-orchestrator'"
        )
    };
    let tls_sessions: u32 = pg
        .psql("tls", &sessions(true))
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(tls_sessions >= 1, "the store's sessions use TLS");
    let plain: u32 = pg
        .psql("tls", &sessions(false))
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(plain, 0);

    let err = PostgresStore::connect(&format!("{url}?sslmode=verify-full"))
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(pg.password()), "{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
    let err = PostgresStore::connect(&format!(
        "{url}?sslmode=require&sslrootcert=/nonexistent/ca.pem"
    ))
    .await
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");

    drop(store);
    PostgresStore::connect(&url)
        .await
        .expect("a plain URL connects without TLS");
}

/// Cluster-wide locks (an org's bootstrap): one replica holds a key at a time; dropping the
/// guard releases it, and so does the holder's database session ending (what the death of its
/// process does; here the server terminates the session). On SQLite the lock is always granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cluster_lock_is_held_once_and_released_on_drop_or_session_end() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    let held = a
        .try_lock("bootstrap:acme")
        .await
        .unwrap()
        .expect("a gets it");
    assert!(held.is_shared());
    assert!(b.try_lock("bootstrap:acme").await.unwrap().is_none());
    assert!(
        a.try_lock("bootstrap:acme").await.unwrap().is_none(),
        "not re-entrant"
    );
    let other = b.try_lock("bootstrap:globex").await.unwrap();
    assert!(other.is_some(), "another key, another lock");
    drop(held);
    let held_b = guildnet_testbed::eventually(
        "b takes the lock a dropped",
        std::time::Duration::from_secs(10),
        || {
            let b = b.clone();
            async move { b.try_lock("bootstrap:acme").await.unwrap() }
        },
    )
    .await;
    assert!(a.try_lock("bootstrap:acme").await.unwrap().is_none());
    // The holder's session ends (as when its process is killed): the lock is free again.
    let Db::Postgres { server, name, .. } = &db else {
        unreachable!()
    };
    let ended = server
        .psql(
            name,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await
        .unwrap();
    assert_eq!(ended.trim(), "2", "both held locks' sessions ended");
    guildnet_testbed::eventually(
        "a takes the lock whose holder's session ended",
        std::time::Duration::from_secs(10),
        || {
            let a = a.clone();
            async move { a.try_lock("bootstrap:acme").await.ok().flatten() }
        },
    )
    .await;
    drop((held_b, other));
    let sqlite = Db::sqlite().open().await;
    let l = sqlite.try_lock("bootstrap:acme").await.unwrap().unwrap();
    assert!(!l.is_shared());
    assert!(sqlite.try_lock("bootstrap:acme").await.unwrap().is_some());
}

/// Events and log lines stored through one replica wake readers of the other (LISTEN/NOTIFY);
/// a write that stores nothing new does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_of_one_replica_wake_the_other() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    let mut rx = b
        .external_changes()
        .expect("postgres follows other replicas");
    let wait = std::time::Duration::from_secs(5);
    // The first bump says the LISTEN connection is up.
    tokio::time::timeout(wait, rx.changed())
        .await
        .expect("listening")
        .unwrap();
    rx.borrow_and_update();

    a.append_events(vec![event("from-a")], vec![])
        .await
        .unwrap();
    tokio::time::timeout(wait, rx.changed())
        .await
        .expect("an event through a wakes b")
        .unwrap();
    rx.borrow_and_update();

    let t = running_task(&*a, "agent-a").await;
    tokio::time::timeout(wait, rx.changed())
        .await
        .expect("a scheduled task's event wakes b")
        .unwrap();
    rx.borrow_and_update();
    a.append_logs(&t.id, batch(&agent("agent-a"), lines(1..=2)))
        .await
        .unwrap();
    tokio::time::timeout(wait, rx.changed())
        .await
        .expect("log lines through a wake b")
        .unwrap();
    rx.borrow_and_update();
    // A re-send stores nothing: no wake-up.
    a.append_logs(&t.id, batch(&agent("agent-a"), lines(1..=2)))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), rx.changed())
            .await
            .is_err(),
        "nothing new, no wake-up"
    );
}

/// Agent token hashes are served from memory on each replica while it listens for rotations
/// (every agent request presents its token): a rotation through one replica is seen on the
/// other as soon as its notification arrives, and a pruned task's hash is gone on both. A
/// change written without the notification (raw SQL here, which GuildNet never does) is not
/// seen: that is what shows the other replica answered from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_rotated_agent_token_is_refused_on_every_replica() {
    let db = Db::postgres().await;
    let Db::Postgres { url, .. } = &db else {
        unreachable!("a PostgreSQL database")
    };
    let (raw, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    let a = db.open().await;
    let b = db.open().await;
    let wait = std::time::Duration::from_secs(5);
    // The first bump says b's LISTEN connection is up (and its cache on).
    let mut rx = b
        .external_changes()
        .expect("postgres follows other replicas");
    tokio::time::timeout(wait, rx.changed())
        .await
        .expect("listening")
        .unwrap();
    let hash_on = |store: &Arc<dyn StateStore>, id: &TaskId| {
        let (store, id) = (store.clone(), id.clone());
        async move { store.task_token_hash(&id).await.unwrap() }
    };
    // b sees `want` within `wait` (a notification's delivery).
    let eventually = |id: TaskId, want: Option<&'static str>| {
        let b = b.clone();
        async move {
            let start = std::time::Instant::now();
            loop {
                let got = b.task_token_hash(&id).await.unwrap();
                if got.as_deref() == want {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < wait,
                    "b still answers {got:?}, not {want:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };

    let t = task("acme", TaskStatus::Scheduled, now_ms());
    insert(&*a, &t, "h1").await;
    assert_eq!(hash_on(&b, &t.id).await.as_deref(), Some("h1"));
    raw.execute(
        "UPDATE tasks SET token_hash = 'unannounced' WHERE id = $1",
        &[&t.id.as_str()],
    )
    .await
    .unwrap();
    assert_eq!(
        hash_on(&b, &t.id).await.as_deref(),
        Some("h1"),
        "b answers from memory"
    );
    // A rotation through a: a answers the new hash at once, b once notified.
    a.update_task_with_token(
        &t.id,
        Some("h2".into()),
        Box::new(|_t: &mut Task| Ok(TaskChange::default())),
    )
    .await
    .expect("rotate");
    assert_eq!(hash_on(&a, &t.id).await.as_deref(), Some("h2"));
    let took = eventually(t.id.clone(), Some("h2")).await;
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    // An update that does not rotate the token tells nobody: b keeps serving from memory.
    raw.execute(
        "UPDATE tasks SET token_hash = 'unannounced' WHERE id = $1",
        &[&t.id.as_str()],
    )
    .await
    .unwrap();
    a.update_task(
        &t.id,
        Box::new(|t: &mut Task| {
            t.claims += 1;
            Ok(TaskChange::default())
        }),
    )
    .await
    .expect("update");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(hash_on(&b, &t.id).await.as_deref(), Some("h2"));

    // A task pruned through a is gone on b too.
    let old = now_ms() - Duration::days(30);
    let mut done = task("acme", TaskStatus::Succeeded, old);
    done.finished_at = Some(old);
    insert(&*a, &done, "h-done").await;
    assert_eq!(hash_on(&b, &done.id).await.as_deref(), Some("h-done"));
    let pruned = a
        .prune_finished(now_ms() - Duration::days(1), 10)
        .await
        .unwrap();
    assert_eq!(pruned, vec![done.id.clone()]);
    assert_eq!(hash_on(&a, &done.id).await, None);
    eventually(done.id.clone(), None).await;
}

/// Lease renewals (every heartbeat of a running task) update the task row in place (HOT: no
/// index entry written), which needs the lease out of every index (migration 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lease_renewals_update_task_rows_in_place() {
    let db = Db::postgres().await;
    let store = db.open().await;
    let t = running_task(&*store, "agent-hot").await;
    register(&*store, &t, "agent-hot").await;
    const N: i64 = 20;
    for i in 0..N {
        let r = store
            .renew_lease(
                &t.id,
                &agent("agent-hot"),
                1,
                Duration::seconds(30),
                now_ms() + Duration::milliseconds(i),
                serde_json::json!({}),
            )
            .await
            .expect("renew");
        assert_eq!(r.registered, Some(true));
    }
    // The statistics reach the shared counters within a second or so of the backend's commits.
    let hot = |table: &str| {
        format!("SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = '{table}'")
    };
    let start = std::time::Instant::now();
    loop {
        let n: i64 = db.raw(&hot("tasks")).await.unwrap().parse().unwrap_or(0);
        if n >= N {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{n} of {N} renewals were HOT updates"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// PostgreSQL crashes (SIGKILL) under a stream of writes and comes back: writes during the
/// outage fail with `Unavailable` (HTTP 503; the message names the database without its
/// password), writes succeed again after the restart without reopening the store, and every
/// acknowledged write is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_crash_under_load_loses_no_acknowledged_write() {
    let mut pg = Postgres::start().await.expect("testbed postgres");
    let url = pg.create_database("outage").await.unwrap();
    let store: Arc<dyn StateStore> = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut failures = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = task("acme", TaskStatus::Scheduled, now_ms());
                    let r = store
                        .insert_task(
                            t.clone(),
                            "h".into(),
                            scheduled_event(&t),
                            audit("task.schedule", t.id.as_str()),
                        )
                        .await;
                    match r {
                        Ok(_) => acked.push((t.id, std::time::Instant::now())),
                        Err(e) => {
                            failures.push(e);
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    }
                }
                (acked, failures)
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    pg.kill();
    let killed = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let during = store.get_task(&TaskId::generate()).await.expect_err("down");
    pg.start_again().await.expect("restart postgres");
    let restarted = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let msg = during.to_string();
    assert!(
        matches!(during, StoreError::Unavailable { .. }),
        "{during:?}"
    );
    assert!(
        msg.contains(&format!(
            "postgres://guildnet@127.0.0.1:{}/outage",
            pg.port()
        )),
        "{msg}"
    );
    assert!(!msg.contains(pg.password()), "{msg}");

    let (mut acked, mut failures) = (Vec::new(), Vec::new());
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failures.extend(f);
    }
    assert!(
        !failures.is_empty(),
        "writes failed while postgres was down"
    );
    for f in &failures {
        assert!(
            matches!(f, StoreError::Unavailable { .. }),
            "an outage is Unavailable, not {f:?}"
        );
    }
    assert!(
        acked.iter().any(|(_, at)| *at < killed),
        "writes were acknowledged before the crash"
    );
    assert!(
        acked.iter().any(|(_, at)| *at > restarted),
        "writes succeed again after the restart"
    );
    let stored: BTreeSet<TaskId> = store
        .list_tasks(TaskQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    eprintln!(
        "acknowledged {} writes, {} failed during the outage",
        acked.len(),
        failures.len()
    );
}

/// Pages every task of `q` with the keyset cursor, `per_page` at a time.
async fn all_pages(store: &dyn StateStore, q: TaskQuery, per_page: usize) -> Vec<Task> {
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

async fn task_pages_are_the_listing_serialized_and_page_by_keyset(db: Db) {
    let store = db.open().await;
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
        insert(&*store, &t, "h").await;
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
        let paged = all_pages(&*store, TaskQuery::default(), per_page).await;
        assert_eq!(ids(&paged), ids(&listed), "{per_page} per page");
    }
    let running = TaskQuery {
        statuses: vec![TaskStatus::Running],
        ..Default::default()
    };
    let paged = all_pages(&*store, running.clone(), 2).await;
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
        ids(&all_pages(&*store, acme.clone(), 3).await),
        ids(&store.list_tasks(acme).await.unwrap())
    );
}

// ---- SQLite only (continued) ----

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

async fn task_counts_count_every_status(db: Db) {
    let store = db.open().await;
    for status in [
        TaskStatus::Scheduled,
        TaskStatus::Scheduled,
        TaskStatus::Running,
        TaskStatus::Succeeded,
    ] {
        insert(&*store, &task("acme", status, now_ms()), "h").await;
    }
    let counts = store.task_counts().await.unwrap();
    assert_eq!(
        counts.len(),
        TaskStatus::ALL.len(),
        "every status, zeros too"
    );
    let of = |s: TaskStatus| counts.iter().find(|(x, _)| *x == s).map(|(_, n)| *n);
    assert_eq!(of(TaskStatus::Scheduled), Some(2));
    assert_eq!(of(TaskStatus::Running), Some(1));
    assert_eq!(of(TaskStatus::Succeeded), Some(1));
    assert_eq!(of(TaskStatus::Failed), Some(0));
}

async fn prune_removes_old_finished_tasks_with_their_logs_and_agents(db: Db) {
    let store = db.open().await;
    let old = now_ms() - Duration::days(30);
    // Three finished long ago (oldest first: a, b, c), one finished now, one still running.
    let mut finished = Vec::new();
    for (i, status) in [
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("agent-old{i}");
        let mut t = running_task(&*store, &name).await;
        store
            .append_logs(&t.id, batch(&agent(&name), lines(1..=3)))
            .await
            .unwrap();
        register(&*store, &t, &name).await;
        let at = old + Duration::minutes(i as i64);
        let s = status;
        let u = store
            .update_task(
                &t.id,
                Box::new(move |t| {
                    t.status = s;
                    t.finished_at = Some(at);
                    t.updated_at = at;
                    Ok(TaskChange::default())
                }),
            )
            .await
            .unwrap();
        t = u.task;
        finished.push(t);
    }
    let recent = running_task(&*store, "agent-new").await;
    let r = recent.id.clone();
    store
        .update_task(
            &r,
            Box::new(|t| {
                t.status = TaskStatus::Succeeded;
                t.finished_at = Some(now_ms());
                Ok(TaskChange::default())
            }),
        )
        .await
        .unwrap();
    let running = running_task(&*store, "agent-run").await;
    store
        .append_logs(&running.id, batch(&agent("agent-run"), lines(1..=2)))
        .await
        .unwrap();
    let events_before = store.events_after(0, 0).await.unwrap();
    let pruned: Vec<Option<TaskId>> = finished.iter().map(|t| Some(t.id.clone())).collect();
    let events_kept: Vec<u64> = events_before
        .iter()
        .filter(|e| !pruned.contains(&e.task_id))
        .map(|e| e.id)
        .collect();
    assert!(
        events_kept.len() < events_before.len() && !events_kept.is_empty(),
        "the fixture has events of pruned and of kept tasks"
    );
    let audit_before = store.audit_after(0, 0).await.unwrap().len();
    let cutoff = now_ms() - Duration::days(1);

    // At most two per call, oldest first.
    let first = store.prune_finished(cutoff, 2).await.unwrap();
    assert_eq!(first, vec![finished[0].id.clone(), finished[1].id.clone()]);
    let second = store.prune_finished(cutoff, 2).await.unwrap();
    assert_eq!(second, vec![finished[2].id.clone()]);
    assert!(store.prune_finished(cutoff, 2).await.unwrap().is_empty());

    for (i, t) in finished.iter().enumerate() {
        assert!(store.get_task(&t.id).await.unwrap().is_none());
        assert!(store.task_logs(&t.id, 0, 0).await.unwrap().is_empty());
        let name = agent(&format!("agent-old{i}"));
        assert!(store.get_agent(&name).await.unwrap().is_none());
        assert!(store.agent_logs(&name, 0, 0).await.unwrap().is_empty());
    }
    // What is recent or unfinished stays, with its lines.
    assert!(store.get_task(&recent.id).await.unwrap().is_some());
    assert!(store.get_task(&running.id).await.unwrap().is_some());
    assert_eq!(store.task_logs(&running.id, 0, 0).await.unwrap().len(), 2);
    // The pruned tasks' events go, every other event stays (same ids, same order); one audit
    // row per call that removed something.
    let events_after: Vec<u64> = store
        .events_after(0, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(events_after, events_kept);
    let audit = store.audit_after(0, 0).await.unwrap();
    assert_eq!(audit.len(), audit_before + 2);
    assert!(audit[audit_before..]
        .iter()
        .all(|a| a.action == "retention.prune"));
    assert_eq!(audit[audit_before].subject, "2 task(s)");
}

async fn register(store: &dyn StateStore, t: &Task, name: &str) {
    let now = now_ms();
    store
        .upsert_agent(
            Agent {
                name: agent(name),
                org: t.org.clone(),
                task_id: Some(t.id.clone()),
                version: None,
                editor_address: None,
                registered_at: now,
                last_seen_at: now,
                state: serde_json::json!({}),
            },
            NewEvent::for_task("agent.registered", t, None),
        )
        .await
        .expect("register agent");
}

/// `renew_lease` (a heartbeat with a fencing token) follows `lifecycle::renew` exactly: the
/// holder's token renews a running task's lease and records the heartbeat; a stale token or
/// another agent is refused and writes nothing; a finished task is left as it is and the
/// heartbeat is not recorded; an agent not registered for the task is told so. It never
/// writes an event or an audit row.
async fn lease_renewals_follow_the_fencing_rules_and_write_no_events(db: Db) {
    let store = db.open().await;
    let t = running_task(store.as_ref(), "a-1").await;
    register(store.as_ref(), &t, "a-1").await;
    let events = store.last_event_id().await.expect("events");
    let audit_rows = store.audit_after(0, 0).await.expect("audit").len();
    let ttl = Duration::seconds(30);
    let at = now_ms() + Duration::seconds(7);
    let r = store
        .renew_lease(
            &t.id,
            &agent("a-1"),
            1,
            ttl,
            at,
            serde_json::json!({"step": 3}),
        )
        .await
        .expect("renew");
    assert_eq!(r.registered, Some(true));
    assert_eq!(r.task.lease_expires_at, Some(at + ttl));
    assert_eq!(r.task.status, TaskStatus::Running);
    let stored = store.get_task(&t.id).await.expect("get").expect("task");
    assert_eq!(stored, r.task, "the answer is the stored task");
    assert_eq!(
        stored.updated_at, t.updated_at,
        "a renewal is not an update"
    );
    let a = store
        .get_agent(&agent("a-1"))
        .await
        .expect("agent")
        .expect("a-1");
    assert_eq!(a.last_seen_at, at);
    assert_eq!(a.state, serde_json::json!({"step": 3}));

    // A stale token, token 0, another agent: refused, nothing written.
    for (who, fencing) in [("a-1", 2), ("a-1", 0), ("b-1", 1)] {
        let later = at + Duration::seconds(5);
        let e = store
            .renew_lease(
                &t.id,
                &agent(who),
                fencing,
                ttl,
                later,
                serde_json::json!({}),
            )
            .await
            .expect_err("stale");
        assert!(
            matches!(&e, StoreError::Rejected(r) if r.kind == RejectionKind::StaleFencing),
            "{who}/{fencing}: {e}"
        );
    }
    assert_eq!(
        store.get_task(&t.id).await.expect("get").expect("task"),
        stored
    );
    let a2 = store
        .get_agent(&agent("a-1"))
        .await
        .expect("agent")
        .expect("a-1");
    assert_eq!(a2.last_seen_at, at, "a refused heartbeat records nothing");
    let missing = TaskId::generate();
    assert!(matches!(
        store
            .renew_lease(&missing, &agent("a-1"), 1, ttl, at, serde_json::json!({}))
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Registered for another task only: the lease is renewed, the heartbeat not recorded.
    let u = running_task(store.as_ref(), "u-1").await;
    let r = store
        .renew_lease(&u.id, &agent("u-1"), 1, ttl, at, serde_json::json!({}))
        .await
        .expect("renew unregistered");
    assert_eq!(r.registered, Some(false));

    // A finished task: left as it is, heartbeat not recorded.
    store
        .update_task(
            &t.id,
            Box::new(|t| {
                t.status = TaskStatus::Succeeded;
                t.lease_expires_at = None;
                Ok(TaskChange::default())
            }),
        )
        .await
        .expect("finish");
    let done = store.get_task(&t.id).await.expect("get").expect("task");
    let later = at + Duration::seconds(9);
    let r = store
        .renew_lease(&t.id, &agent("a-1"), 1, ttl, later, serde_json::json!({}))
        .await
        .expect("renew finished");
    assert_eq!(r.registered, None);
    assert_eq!(r.task, done);
    assert_eq!(
        store.get_task(&t.id).await.expect("get").expect("task"),
        done
    );
    let a3 = store
        .get_agent(&agent("a-1"))
        .await
        .expect("agent")
        .expect("a-1");
    assert_eq!(
        a3.last_seen_at, at,
        "no heartbeat recorded for a finished task"
    );

    // No event, no audit row from any of it (only the registration of u-1's task insert).
    let new_events = store.events_after(events, 0).await.expect("events");
    assert!(
        new_events.iter().all(|e| e.kind == "task.scheduled"),
        "renewals wrote events: {new_events:?}"
    );
    let audit_after = store.audit_after(0, 0).await.expect("audit");
    assert!(audit_after[audit_rows..]
        .iter()
        .all(|a| a.action == "task.schedule"));
}

/// Writes sent together land in one batch: one that fails (a task id that exists already)
/// fails alone; the others are stored with their events, in order, and each caller gets its
/// own answer.
async fn a_batch_with_one_bad_write_keeps_the_others(db: Db) {
    let store = db.open().await;
    let dup = task("acme", TaskStatus::Scheduled, now_ms());
    insert(store.as_ref(), &dup, "h").await;
    let before = store.last_event_id().await.expect("events");
    let mut tasks: Vec<Task> = (0..20)
        .map(|_| task("acme", TaskStatus::Scheduled, now_ms()))
        .collect();
    tasks.insert(7, dup.clone());
    let results = futures_util::future::join_all(tasks.iter().map(|t| {
        let store = store.clone();
        let t = t.clone();
        async move {
            store
                .insert_task(
                    t.clone(),
                    "h".into(),
                    scheduled_event(&t),
                    audit("task.schedule", t.id.as_str()),
                )
                .await
        }
    }))
    .await;
    for (t, r) in tasks.iter().zip(&results) {
        if t.id == dup.id {
            assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "{r:?}");
        } else {
            let id = *r.as_ref().expect("insert");
            assert!(id > before);
            assert_eq!(store.get_task(&t.id).await.expect("get").as_ref(), Some(t));
        }
    }
    let events = store.events_after(before, 0).await.expect("events");
    assert_eq!(
        events.len(),
        20,
        "one event per stored task, none for the duplicate"
    );
    let mut got: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    got.sort_unstable();
    assert_eq!(got, events.iter().map(|e| e.id).collect::<Vec<_>>());
}

/// An agent's editor close is kept for every replica: unknown agents say so, a later close
/// moves the time forward, an earlier one does not move it back, a re-registration keeps it,
/// and it survives a reopen.
async fn editor_closes_are_kept_per_agent_and_only_move_forward(db: Db) {
    let store = db.open().await;
    let t = running_task(store.as_ref(), "a-1").await;
    register(store.as_ref(), &t, "a-1").await;
    let a = agent("a-1");
    assert_eq!(store.agent_editor_closed_at(&a).await.expect("read"), None);
    assert!(!store
        .close_agent_editor(&agent("nobody"), now_ms())
        .await
        .expect("close unknown"));
    assert_eq!(
        store
            .agent_editor_closed_at(&agent("nobody"))
            .await
            .expect("read"),
        None
    );
    let t1 = now_ms();
    assert!(store.close_agent_editor(&a, t1).await.expect("close"));
    assert_eq!(
        store.agent_editor_closed_at(&a).await.expect("read"),
        Some(t1)
    );
    let t2 = t1 + Duration::seconds(5);
    assert!(store.close_agent_editor(&a, t2).await.expect("close later"));
    assert!(store
        .close_agent_editor(&a, t1)
        .await
        .expect("close earlier"));
    assert_eq!(
        store.agent_editor_closed_at(&a).await.expect("read"),
        Some(t2)
    );
    register(store.as_ref(), &t, "a-1").await;
    assert_eq!(
        store.agent_editor_closed_at(&a).await.expect("read"),
        Some(t2)
    );
    drop(store);
    let store = db.open().await;
    assert_eq!(
        store.agent_editor_closed_at(&a).await.expect("read"),
        Some(t2)
    );
}

/// A PostgreSQL store opens its pools' connections right after it connected, each with the
/// agent hot path's statements prepared (the server's last statement of every soft-pool
/// session is the lease renewal), unless `warm_up` is off, when it opens them on first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_store_opens_its_connections_at_start() {
    let db = Db::postgres().await;
    let Db::Postgres { url, name, .. } = &db else {
        unreachable!("a PostgreSQL database")
    };
    let sessions = |app: String, filter: &'static str| {
        let db = &db;
        async move {
            let sql = format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'{filter}"
            );
            db.raw(&sql).await.unwrap().parse::<usize>().unwrap()
        }
    };
    let opts = PostgresOptions::default();
    let (main, soft) = (opts.max_connections, opts.max_connections / 2);

    let cold = format!("{name}-cold");
    let store = PostgresStore::connect_with(
        &format!("{url}?application_name={cold}"),
        PostgresOptions {
            warm_up: false,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let opened = sessions(cold.clone(), "").await;
    assert!(opened <= 2, "without warm-up: {opened} sessions");
    drop(store);

    let warm = format!("{name}-warm");
    let store = PostgresStore::connect_with(&format!("{url}?application_name={warm}"), opts)
        .await
        .unwrap();
    let renewal = " AND query LIKE 'WITH r AS (UPDATE tasks SET lease_expires_at%'";
    guildnet_testbed::eventually(
        "every connection of both pools is open",
        std::time::Duration::from_secs(10),
        || async {
            (sessions(warm.clone(), "").await >= main + soft
                && sessions(warm.clone(), renewal).await == soft)
                .then_some(())
        },
    )
    .await;
    // The store works on its opened connections.
    let t = task("acme", TaskStatus::Scheduled, now_ms());
    insert(&store, &t, "h").await;
    assert_eq!(store.get_task(&t.id).await.unwrap().unwrap().id, t.id);
}
