//! PostgreSQL implementation of [`StateStore`], for several orchestrator replicas on one
//! database (feature `postgres`).
//!
//! **Driver.** `tokio-postgres` with a `deadpool-postgres` pool. tokio-postgres is the
//! maintained, pure-Rust, async PostgreSQL client of the rust-postgres project (the protocol,
//! SCRAM authentication and types crates under it are shared with the sync `postgres` crate);
//! it runs on the tokio runtime this service already uses and brings no macros, no compile-time
//! database checks and no ORM, so the build stays small. deadpool-postgres is the small pool
//! around it with per-connection statement caches, wait/create timeouts and health checks on
//! recycle. sqlx would also do, but its query macros want a database (or offline metadata) at
//! build time, and its runtime and TLS feature matrix is far larger than what this store uses.
//! TLS: `sslmode=require` (or `verify-ca`, `verify-full`) in the URL connects over rustls and
//! always verifies the server's certificate and host name, against `sslrootcert=<PEM file>` or
//! the Mozilla roots; without it the connection is plain (see [`super::pg_tls`]).
//!
//! **Semantics** are the SQLite store's, method by method, and the same test suite runs against
//! both (`guildnet-core/tests/store.rs`):
//! - **Group commit.** Every write except heartbeats and lease renewals goes to this
//!   process's batch writer, as in the SQLite store: it takes every write that is waiting (up
//!   to 512), runs them in one transaction, commits once, and only then answers the callers. A
//!   batch pays one WAL flush and one lock wait for all its writes. The writer has a
//!   connection of its own (so that reads, which use the pool, one statement each, cannot
//!   keep it waiting for a connection).
//! - **Fewer round trips per batch.** A write that is one statement with its journal (a new
//!   task with its events and audit rows, an agent's registration with its event, events
//!   alone: data-modifying CTEs, the journal guarded by the row write) goes into the batch's
//!   pipeline: all of them are sent at once inside savepoint `grp`, one round trip for the
//!   lot. If any of them fails, `grp` is rolled back and each runs again alone in its own
//!   savepoint, so one bad write never fails the others (the statements are data, so they
//!   can run twice; a statement that answers an error such as "already exists" writes
//!   nothing). The rows of every task a batch updates are read and locked at its start in one
//!   statement (`FOR UPDATE`, in id order, outside the savepoints, so the locks last until the
//!   commit); each conditional task update (claim, completion, requeue...) is then applied to
//!   its row at once and its write (the row with its events and audit rows, one statement of
//!   data) joins the pipeline ([`updates`]). The new tasks of a batch are one statement
//!   together ([`inserts`]: PostgreSQL's time per statement, not per row, was most of a
//!   schedule's). The other writes (log batches, retention, a second update of one task in a
//!   batch, which reads its row again) run after the pipeline, one after another, each
//!   inside its own savepoint (a failing write rolls back alone); a job that changes a task
//!   row otherwise than by an update drops the row read for it first. When nothing runs
//!   after the pipeline (the usual batch of schedules, registrations and claims), the commit
//!   is sent in the pipeline's round trip: a batch that updates tasks holds the ordering
//!   lock for two round trips (rows, then pipeline and commit), one without updates for one.
//!   If a statement of the pipeline failed, the savepoint's release fails, the server skips
//!   the `COMMIT` after it in the same query string, and the writes run again alone as above.
//! - **Fewer reads per agent request.** The reads every agent request makes (the agent
//!   token's hash; a claim's highest log sequence number) are statements prepared once per
//!   connection, not text parsed and planned in a round trip of their own each time, and an
//!   update that writes reads the task's highest log sequence number in its own statement
//!   ([`TaskUpdated::max_log_seq`]), so a claim needs no read after its commit.
//! - **Connections opened at start.** Right after it connected, the store opens every
//!   connection of its request and soft pools in the background and prepares the agent hot
//!   path's statements on each ([`PostgresOptions::warm_up`]), so the first burst of agent
//!   requests after a replica starts waits for neither a new server process, its
//!   authentication, nor a parse and plan (measured, 7 interleaved pairs at 10,000 agents on 2
//!   replicas: the claims of the second in which the first heartbeats began were the run's
//!   slowest without it).
//! - Conditional task updates lock the task's row (`SELECT ... FOR UPDATE`), apply the pure
//!   [`TaskUpdateFn`] and write back, so claims and fencing tokens are atomic across replicas,
//!   not only across tasks of one process.
//! - Times are stored as milliseconds since the epoch (`BIGINT`), as in SQLite; names and ids
//!   compare bytewise (`COLLATE "C"`), as in SQLite, whatever the database's locale.
//! - Event, audit and log ids are identity columns used as resume cursors (`Last-Event-ID`).
//!   A sequence hands out ids before commit, so two concurrent transactions could commit ids
//!   out of order and a reader that saw the later one would skip the earlier one forever.
//!   Every batch therefore takes one transaction advisory lock ([`LOCK_WRITES`]) with its
//!   `BEGIN` and holds it until its commit: batches of all replicas commit one after another,
//!   so ids become visible in id order, on every replica, and readers need no extra care.
//!   Taking it first, before any row lock, also means two replicas' batches never wait for
//!   each other's row locks (no deadlock). Before group commit every transaction that wrote
//!   an event or a log line took such a lock and held it through its own WAL flush, so those
//!   commits ran one at a time (measured: 16 clients spent ~90% of their time waiting on the
//!   advisory lock; ~200 schedules/s).
//! - **Why group commit, not a cursor that tolerates concurrent commits.** The alternative is
//!   to let commits run in parallel and have readers stop at a safe horizon (below the lowest
//!   id an unfinished transaction may still commit). PostgreSQL cannot tell a reader which ids
//!   unfinished transactions hold: a sequence value is taken before the transaction has an
//!   xid, snapshots do not list every running xid (those at or above `xmax` are left out),
//!   rolled-back ids and pruned log lines leave permanent holes to tell apart from pending
//!   ones, and `agent_logs` filters one agent's lines out of the global id order. Getting all
//!   of that right on every reader is far more code and risk than one ordered batch per
//!   commit, which keeps the simple invariant (visible ids have no pending holes) and also
//!   folds the per-transaction NOTIFY, which PostgreSQL serializes at commit as well, into one
//!   per batch. The cost: writes of all replicas share one commit at a time, so throughput is
//!   bounded by how fast one connection runs a batch's statements (each job's savepoint is
//!   pipelined with its first statement, events and audit rows go in one statement each).
//! - Every write is committed with `synchronous_commit` as configured on the server (on by
//!   default: durable when acknowledged), except agent heartbeats ([`StateStore::touch_agent`])
//!   and lease renewals ([`StateStore::renew_lease`]), which are liveness only: they write no
//!   ids, so they run outside the batches, in autocommit on a small pool of their own whose
//!   sessions set `synchronous_commit = off` (the SQLite store's "soft" writes; half as many
//!   connections as [`PostgresOptions::max_connections`]).
//! - **Lease renewals** (a heartbeat with a fencing token) are one conditional `UPDATE`
//!   (`WHERE id AND agent AND fencing AND status = 'Running'`: [`crate::lifecycle::renew`]'s
//!   rule; its row lock makes it atomic with claims and completions on every replica) with
//!   the heartbeat's `touch_agent` when it matched, one statement (one transaction: measured,
//!   PostgreSQL's CPU per agent request 2-10% lower than with two); when the UPDATE matches
//!   nothing (a stale token, a finished task), the renewal runs through the batch and the
//!   lifecycle function for the exact answer. The statement locks the task's row, then the
//!   agent's: the order in which batches lock them (task rows at a batch's start), so it
//!   cannot deadlock with a batch. Why not durable: a renewal lost to a
//!   crash of the database server (not of a replica; at most the last ~3 x `wal_writer_delay`
//!   of commits, and any later durable commit flushes it too) leaves the lease at its
//!   previous expiry, one heartbeat interval earlier than the agent was told (5 s of a 30 s
//!   TTL by default), while the server was down and the agent's heartbeats failed anyway.
//!   The worst case is a task requeued a few seconds early after a long database outage;
//!   the claim and its fencing token, which keep a requeued task's old agent from writing,
//!   are durable writes, so no guarantee rests on a renewal.
//! - Cluster-wide jobs ([`StateStore::lead`], the reaper): a session advisory lock per job,
//!   held on a connection of its own; when its holder dies, the server ends the session and
//!   the next replica that asks gets it. Every reaper action is a conditional update anyway,
//!   so a moment of overlap after a lost connection does no harm.
//! - Cluster-wide locks ([`StateStore::try_lock`], an org's bootstrap): the same kind of session
//!   advisory lock, on a connection taken out of the pool for as long as the guard lives;
//!   dropping the guard closes that connection, which releases the lock.
//! - Other replicas' writes wake this one's readers: a batch that stored events or log lines
//!   sends one `NOTIFY guildnet_changes` (delivered at commit), and [`StateStore::external_changes`]
//!   follows it with `LISTEN` on a connection of its own, reconnecting when lost. The table
//!   stays the source; a notification only says "look again".
//! - Agent token hashes are served from memory while that LISTEN connection is up: a token
//!   rotation or a prune notifies every replica in its own transaction ([`token_cache`]), so an
//!   agent request needs no read of its own to be authenticated.
//! - Migrations are numbered; `guildnet_schema` records each one applied. Replicas starting
//!   together migrate under an advisory lock, once. A database whose schema is newer than this
//!   build is refused with [`StoreError::Corrupt`] naming both versions.
//! - Errors: connection failures (refused, lost, pool wait timeout, server shutting down) are
//!   [`StoreError::Unavailable`] (HTTP 503); other server errors [`StoreError::Backend`].
//!   When a batch's transaction fails as a whole (connection lost, commit refused), every
//!   write in it gets that error; none of them is acknowledged.
//!   Messages name the database as `postgres://user@host:port/db`, never with its password.

mod inserts;
mod token_cache;
mod updates;

use super::{
    AppendedLogs, LeaseRenewed, LogBatch, Rejection, RejectionKind, StateStore, StoreError,
    TaskChange, TaskQuery, TaskUpdateFn, TaskUpdated,
};
use crate::context::TaskContext;
use crate::model::{
    Agent, Artifact, AuditEntry, Event, LogLine, LogStream, NewAudit, NewEvent, Org, Task,
    TaskStatus,
};
use crate::names::{AgentName, OrgName, ProcessId, TaskId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Schema migrations, applied in order; `guildnet_schema` holds one row per applied version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orgs (
    name        TEXT COLLATE "C" PRIMARY KEY,
    created_at  BIGINT NOT NULL
);
CREATE TABLE tasks (
    id               TEXT COLLATE "C" PRIMARY KEY,
    org              TEXT NOT NULL,
    task             TEXT NOT NULL,
    agent_hint       TEXT,
    status           TEXT NOT NULL,
    agent            TEXT,
    attempt          BIGINT NOT NULL,
    fencing          BIGINT NOT NULL,
    claims           BIGINT NOT NULL,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    exit_code        INTEGER,
    reason           TEXT,
    artifacts        TEXT NOT NULL,
    pr_url           TEXT,
    context          TEXT,
    log_sealed       BOOLEAN NOT NULL DEFAULT false,
    log_bytes        BIGINT NOT NULL DEFAULT 0,
    token_hash       TEXT NOT NULL
);
CREATE INDEX tasks_status ON tasks(status, updated_at);
CREATE INDEX tasks_created_id ON tasks(created_at, id);
CREATE INDEX tasks_lease ON tasks(status, lease_expires_at);
CREATE INDEX tasks_org ON tasks(org, status);
CREATE TABLE agents (
    name           TEXT COLLATE "C" PRIMARY KEY,
    org            TEXT NOT NULL,
    task_id        TEXT,
    version        TEXT,
    editor_address TEXT,
    registered_at  BIGINT NOT NULL,
    last_seen_at   BIGINT NOT NULL,
    state          TEXT NOT NULL
);
CREATE TABLE logs (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id TEXT NOT NULL,
    agent   TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    stream  TEXT NOT NULL,
    line    TEXT NOT NULL,
    ts      BIGINT NOT NULL,
    UNIQUE (task_id, seq)
);
CREATE INDEX logs_agent ON logs(agent, id);
CREATE TABLE events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    task_id TEXT,
    agent   TEXT,
    org     TEXT,
    status  TEXT,
    message TEXT
);
CREATE TABLE audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT
);
CREATE FUNCTION guildnet_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION guildnet_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION guildnet_audit_append_only();
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // 2: retention removes a pruned task's events with it; they are found by task.
    r#"
CREATE INDEX events_task ON events(task_id) WHERE task_id IS NOT NULL;
"#,
    // 3: the agent process holding a task's claim (`Task::claim_process`).
    r#"
ALTER TABLE tasks ADD COLUMN claim_process TEXT;
"#,
    // 4: when an agent's editor was last closed, for every replica (ms since the epoch).
    r#"
ALTER TABLE agents ADD COLUMN editor_closed_at BIGINT;
"#,
    // 5: lease renewals (every heartbeat of a running task) change `lease_expires_at` only;
    // with that column in no index, PostgreSQL updates the row in place on its page (a HOT
    // update: no new entry in any of the table's indexes), when the page has room, which a
    // fill factor below 100 keeps. The reaper, once a second, finds Running tasks oldest
    // first through `tasks_status` (status, updated_at) and checks their lease on the row.
    // Heartbeats rewrite `agents` rows the same way.
    r#"
DROP INDEX tasks_lease;
ALTER TABLE tasks SET (fillfactor = 80);
ALTER TABLE agents SET (fillfactor = 80);
"#,
];

/// Advisory lock keys (one namespace: "guildnet" in ASCII, then a number).
const LOCK_MIGRATE: i64 = 0x6775_696c_646e_0001;
/// Held by every batch of writes from its first statement until its commit, on every replica
/// (see the module docs): ids become visible in id order. (Key 3, once the log lines' own lock,
/// is no longer used.)
const LOCK_WRITES: i64 = 0x6775_696c_646e_0002;
/// Most writes one batch (one transaction) carries.
const MAX_BATCH: usize = 512;

/// Options of [`PostgresStore::connect_with`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections of the pool for requests; batches of writes have one connection of
    /// their own, and heartbeats and lease renewals a second pool of half as many (at least
    /// one).
    pub max_connections: usize,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// How long a request waits for a free connection before it fails with
    /// [`StoreError::Unavailable`].
    pub wait_timeout: Duration,
    /// Whether the new tasks of a batch go into PostgreSQL in one statement and its task
    /// updates into its pipeline (default); off, each new task is a statement of its own and
    /// each update runs alone in its own savepoint, as before (kept to measure the
    /// difference: the `replicas` bench's `REPLICAS_BENCH_NO_GROUP`).
    pub group_new_tasks: bool,
    /// Whether the store opens its connections right after it connected (in the background,
    /// default), each with the statements of the agent hot path prepared, rather than on
    /// first use. Off, a replica that just started opened and prepared them under its first
    /// burst of agent requests (measured: the claims of the second in which 10,000 agents'
    /// first heartbeats began had a p99 of 37-65 ms, the other seconds 6-23 ms).
    pub warm_up: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(10),
            group_new_tasks: true,
            warm_up: true,
        }
    }
}

/// PostgreSQL-backed [`StateStore`]. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<PgInner>,
}

struct PgInner {
    pool: Pool,
    /// Connections whose sessions commit with `synchronous_commit = off`, in autocommit:
    /// heartbeats and lease renewals (liveness only, see the module docs).
    soft: Pool,
    /// The database, without its password.
    display: String,
    /// Connection settings, for the LISTEN connection.
    config: tokio_postgres::Config,
    /// The TLS connector, when the URL asked for TLS.
    tls: Option<super::pg_tls::RustlsConnect>,
    /// Connections holding a job's session advisory lock ([`StateStore::lead`]).
    leaders: tokio::sync::Mutex<std::collections::HashMap<&'static str, deadpool_postgres::Object>>,
    /// The change counter fed by LISTEN (started on first use).
    changes: std::sync::OnceLock<tokio::sync::watch::Receiver<u64>>,
    /// The LISTEN task, stopped with the store.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Agent token hashes, kept while the LISTEN connection is up ([`token_cache`]).
    tokens: Arc<token_cache::TokenCache>,
    /// Writes for the batch writer ([`writer_loop`]); dropping it stops that task once the
    /// waiting writes are done.
    writer: mpsc::UnboundedSender<(std::time::Instant, Work)>,
    /// Group commit counters, for [`PostgresStore::commit_stats`].
    stats: Arc<Counters>,
}

impl Drop for PgInner {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listener.lock() {
            if let Some(h) = l.take() {
                h.abort();
            }
        }
    }
}

/// The NOTIFY channel of stored events and log lines.
const CHANGES_CHANNEL: &str = "guildnet_changes";

/// Tells every replica's [`token_cache`] that these tasks (`$1`, ids) are gone.
static PRUNED_TOKENS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT pg_notify('{}', id) FROM unnest($1::text[]) AS id",
        token_cache::TOKENS_CHANNEL
    )
});

/// A session advisory lock: the connection that holds it, out of the pool. Dropping it closes
/// the connection (not returned to the pool, where the lock would stay held), which ends the
/// session and so releases the lock, as the death of the process does.
struct SessionLock(Option<deadpool_postgres::Object>);

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

/// Advisory lock key of a cluster-wide job.
fn job_key(job: &str) -> i64 {
    // FNV-1a, folded into the store's key namespace.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    0x6775_696c_646e_1000 + i64::try_from(h & 0xfff).unwrap_or(0)
}

/// Follows NOTIFYs on a connection of its own, reconnecting forever: on [`CHANGES_CHANNEL`] it
/// bumps `tx` for each (and once after every (re)connect, for what it may have missed); on
/// [`token_cache::TOKENS_CHANNEL`] it drops what `tokens` was told, and keeps `tokens` on only
/// while the connection is listening.
async fn listen_loop<T>(
    cfg: tokio_postgres::Config,
    db: String,
    tx: tokio::sync::watch::Sender<u64>,
    tokens: Arc<token_cache::TokenCache>,
    tls: T,
) where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    use futures_util::StreamExt;
    let bump = |tx: &tokio::sync::watch::Sender<u64>| tx.send_modify(|v| *v = v.wrapping_add(1));
    let mut warned = false;
    loop {
        match cfg.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<()>();
                let dropped = tokens.clone();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(tokio_postgres::AsyncMessage::Notification(n))
                                if n.channel() == token_cache::TOKENS_CHANNEL =>
                            {
                                dropped.notified(n.payload());
                            }
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                if ntx.send(()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
                let listen = format!(
                    "LISTEN {CHANGES_CHANNEL}; LISTEN {}",
                    token_cache::TOKENS_CHANNEL
                );
                match client.batch_execute(&listen).await {
                    Ok(()) => {
                        if warned {
                            tracing::info!(db = %db, "postgres: change notifications back");
                            warned = false;
                        }
                        tokens.set_live(true);
                        bump(&tx);
                        while nrx.recv().await.is_some() {
                            bump(&tx);
                        }
                        tokens.set_live(false);
                    }
                    Err(e) => {
                        tracing::warn!(db = %db, error = %reason(&e), "postgres: LISTEN failed")
                    }
                }
                driver.abort();
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(db = %db, error = %reason(&e),
                        "postgres: change notifications lost; reconnecting");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresStore({})", self.inner.display)
    }
}

/// Whether `url` selects the PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// `postgres://user@host:port/db` for a parsed config: what messages show of a database URL
/// (never its password).
fn describe(cfg: &tokio_postgres::Config) -> String {
    let user = cfg.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            match cfg.get_ports().get(i).or(cfg.get_ports().first()) {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    let db = cfg.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// A database URL with its password (in the user info or a `password=` parameter) replaced
/// by `***`, for messages about URLs that may not parse.
pub fn redact_url(url: &str) -> String {
    if let Ok(cfg) = tokio_postgres::Config::from_str(url) {
        return describe(&cfg);
    }
    match url.find("://") {
        Some(i) => format!("{}://(not shown: it does not parse)", &url[..i]),
        None => "(a database URL that does not parse; not shown)".into(),
    }
}

/// The text of a driver error with its cause (tokio-postgres shows only "db error" on its own).
fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// Whether the error means the server cannot be used right now (as opposed to a bad query).
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c == "57P01" // admin shutdown
                || c == "57P02" // crash shutdown
                || c == "57P03" // cannot connect now (starting up, recovering)
                || c == "53300" // too many connections
        }
        // No SQLSTATE: an I/O, connect or timeout error of the client.
        None => e.as_db_error().is_none() && !matches_client_bug(e),
    }
}

/// Client-side errors that are the program's fault, not the server's availability.
fn matches_client_bug(e: &tokio_postgres::Error) -> bool {
    let s = e.to_string();
    s.starts_with("error serializing")
        || s.starts_with("error deserializing")
        || s.starts_with("invalid column")
        || s.starts_with("expected ")
        || s.starts_with("query returned")
}

fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::Corrupt(msg.into())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A resume cursor as PostgreSQL's BIGINT: saturates instead of wrapping (see the SQLite store).
fn cursor(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn id_of(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative id {v}")))
}

fn from_ms(v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| corrupt(format!("timestamp {v}")))
}

fn opt_from_ms(v: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    v.map(from_ms).transpose()
}

fn limit_sql(limit: usize) -> Option<i64> {
    (limit != 0).then(|| i64::try_from(limit).unwrap_or(i64::MAX))
}

fn parse_name<T>(
    v: String,
    f: impl Fn(String) -> Result<T, crate::names::ValidationError>,
) -> Result<T, StoreError> {
    f(v).map_err(|e| corrupt(e.to_string()))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|e| corrupt(format!("column {i}: {}", reason(&e))))
}

fn u32_of(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v} out of range")))
}

/// Collects decoded rows, skipping (and logging) rows that cannot be decoded, so one corrupt
/// row does not make a whole listing fail.
fn collect_rows<T>(
    what: &'static str,
    rows: Vec<Row>,
    decode: impl Fn(&Row) -> Result<T, StoreError>,
) -> Vec<T> {
    rows.iter()
        .filter_map(|r| match decode(r) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, what, "postgres: skipping a row that cannot be decoded");
                None
            }
        })
        .collect()
}

/// The task columns a new task is inserted with: every column [`task_from_row`] reads but
/// [`Task::claim_process`], which a task gets only when it is claimed.
macro_rules! task_insert_cols {
    () => {
        "id, org, task, agent_hint, status, agent, attempt, fencing, claims, \
         lease_expires_at, created_at, updated_at, started_at, finished_at, exit_code, reason, \
         artifacts, pr_url, context, log_sealed"
    };
}
const TASK_COLS: &str = task_insert_cols!();
/// [`TASK_READ_COLS`] as a literal, for `concat!`.
macro_rules! task_read_cols {
    () => {
        concat!(task_insert_cols!(), ", claim_process")
    };
}
/// The task columns [`task_from_row`] reads.
const TASK_READ_COLS: &str = task_read_cols!();

/// A task's row ([`load_task`] without a lock).
const LOAD_TASK: &str = concat!("SELECT ", task_read_cols!(), " FROM tasks WHERE id = $1");
/// A task's row, locked until the transaction ends ([`load_task`] with a lock).
const LOAD_TASK_FOR_UPDATE: &str = concat!(
    "SELECT ",
    task_read_cols!(),
    " FROM tasks WHERE id = $1 FOR UPDATE"
);
/// An agent's token hash ([`StateStore::task_token_hash`], when not served from memory).
const TOKEN_HASH: &str = "SELECT token_hash FROM tasks WHERE id = $1";
/// A heartbeat without a lease ([`StateStore::touch_agent`]).
const TOUCH_AGENT: &str =
    "UPDATE agents SET last_seen_at = $2, state = $3 WHERE name = $1 AND task_id = $4";
/// A lease renewal with its heartbeat, one statement ([`StateStore::renew_lease`]): the
/// renewal of `lifecycle::renew` for a running task held with this token, as one conditional
/// UPDATE (its row lock makes it atomic with claims, requeues and completions on every
/// replica), and, when it matched, the heartbeat of `touch_agent`: one transaction without a
/// wait for the WAL flush, one round trip. It locks the task's row, then the agent's, the
/// order of the batches (which lock their task rows first), so it cannot deadlock with them.
const RENEW_LEASE: &str = concat!(
    "WITH r AS (UPDATE tasks SET lease_expires_at = $4 WHERE id = $1 AND agent = $2 \
     AND fencing = $3 AND $3 > 0 AND status = 'Running' RETURNING ",
    task_read_cols!(),
    "), a AS (UPDATE agents SET last_seen_at = $5, state = $6 \
     WHERE name = $2 AND task_id = $1 AND EXISTS (SELECT 1 FROM r) RETURNING 1) \
     SELECT r.*, EXISTS (SELECT 1 FROM agents WHERE name = $2 AND task_id = $1) FROM r"
);
/// The statements the request pool serves on the agent hot path (prepared by [`warm_up`]).
const HOT_READS: &[&str] = &[LOAD_TASK, TOKEN_HASH];
/// The statements the soft pool serves (prepared by [`warm_up`], in this order).
const HOT_SOFT_WRITES: &[&str] = &[TOUCH_AGENT, RENEW_LEASE];

/// Opens every connection `pool` does not have yet and prepares `statements` on each, so that
/// the first burst of requests after a replica starts pays for neither (opening a connection
/// is a new server process and an authentication; preparing, a parse and plan per
/// connection). It takes only connections free right now (a request never waits for it); one
/// that cannot be opened (the server's `max_connections` reached, say) is left to the pool,
/// which opens it on demand as without warm-up, and the first such error is logged as a
/// warning. Returns how many connections it held at once.
async fn warm_up(pool: &Pool, statements: &[&str], db: &str) -> usize {
    let now = deadpool_postgres::Timeouts {
        wait: Some(Duration::ZERO),
        ..pool.timeouts()
    };
    let max = pool.status().max_size;
    let tries = futures_util::future::join_all((0..max).map(|_| async {
        let c = match pool.timeout_get(&now).await {
            Ok(c) => c,
            // In use by a request: already open.
            Err(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => {
                return Ok(None)
            }
            Err(e) => return Err(pool_reason(&e)),
        };
        for sql in statements {
            c.prepare_cached(sql).await.map_err(|e| reason(&e))?;
        }
        Ok(Some(c))
    }))
    .await;
    let opened = tries.iter().filter(|t| matches!(t, Ok(Some(_)))).count();
    if let Some(Err(error)) = tries.iter().find(|t| t.is_err()) {
        let failed = tries.iter().filter(|t| t.is_err()).count();
        tracing::warn!(
            db,
            opened,
            failed,
            error,
            "postgres: could not open every connection of a pool at start; \
             the pool opens them when requests need them"
        );
    }
    opened
}

fn task_from_row(r: &Row) -> Result<Task, StoreError> {
    let id: String = get(r, 0)?;
    let status: String = get(r, 4)?;
    let artifacts: String = get(r, 16)?;
    let ctx = |e: StoreError| match e {
        StoreError::Corrupt(m) => corrupt(format!("task {id}: {m}")),
        other => other,
    };
    (|| {
        Ok(Task {
            id: parse_name(id.clone(), TaskId::new)?,
            org: parse_name(get(r, 1)?, OrgName::new)?,
            task: get(r, 2)?,
            agent_hint: get(r, 3)?,
            status: TaskStatus::parse(&status)
                .ok_or_else(|| corrupt(format!("status {status}")))?,
            agent: get::<Option<String>>(r, 5)?
                .map(|a| parse_name(a, AgentName::new))
                .transpose()?,
            attempt: u32_of(get(r, 6)?, "attempt")?,
            fencing: id_of(get(r, 7)?)?,
            claims: u32_of(get(r, 8)?, "claims")?,
            lease_expires_at: opt_from_ms(get(r, 9)?)?,
            created_at: from_ms(get(r, 10)?)?,
            updated_at: from_ms(get(r, 11)?)?,
            started_at: opt_from_ms(get(r, 12)?)?,
            finished_at: opt_from_ms(get(r, 13)?)?,
            exit_code: get(r, 14)?,
            reason: get(r, 15)?,
            artifacts: serde_json::from_str::<Vec<Artifact>>(&artifacts)
                .map_err(|e| corrupt(format!("artifacts: {e}")))?,
            pr_url: get(r, 17)?,
            context: match get::<Option<String>>(r, 18)? {
                None => TaskContext::default(),
                Some(j) => {
                    serde_json::from_str(&j).map_err(|e| corrupt(format!("context: {e}")))?
                }
            },
            log_sealed: get(r, 19)?,
            claim_process: get::<Option<String>>(r, 20)?
                .map(|p| parse_name(p, ProcessId::new))
                .transpose()?,
        })
    })()
    .map_err(ctx)
}

const AGENT_COLS: &str =
    "name, org, task_id, version, editor_address, registered_at, last_seen_at, state";

fn agent_from_row(r: &Row) -> Result<Agent, StoreError> {
    agent_from_row_at(r, 0)
}

/// An agent from the [`AGENT_COLS`] of `r` that start at column `at`.
fn agent_from_row_at(r: &Row, at: usize) -> Result<Agent, StoreError> {
    let state: String = get(r, at + 7)?;
    Ok(Agent {
        name: parse_name(get(r, at)?, AgentName::new)?,
        org: parse_name(get(r, at + 1)?, OrgName::new)?,
        task_id: get::<Option<String>>(r, at + 2)?
            .map(|t| parse_name(t, TaskId::new))
            .transpose()?,
        version: get(r, at + 3)?,
        editor_address: get(r, at + 4)?,
        registered_at: from_ms(get(r, at + 5)?)?,
        last_seen_at: from_ms(get(r, at + 6)?)?,
        state: serde_json::from_str(&state).map_err(|e| corrupt(format!("agent state: {e}")))?,
    })
}

const LOG_COLS: &str = "id, task_id, agent, seq, stream, line, ts";

fn log_from_row(r: &Row) -> Result<LogLine, StoreError> {
    let stream: String = get(r, 4)?;
    Ok(LogLine {
        id: id_of(get(r, 0)?)?,
        task_id: parse_name(get(r, 1)?, TaskId::new)?,
        agent: parse_name(get(r, 2)?, AgentName::new)?,
        seq: id_of(get(r, 3)?)?,
        stream: LogStream::parse(&stream).ok_or_else(|| corrupt(format!("stream {stream}")))?,
        line: get(r, 5)?,
        ts: from_ms(get(r, 6)?)?,
    })
}

fn event_from_row(r: &Row) -> Result<Event, StoreError> {
    let status: Option<String> = get(r, 6)?;
    Ok(Event {
        id: id_of(get(r, 0)?)?,
        ts: from_ms(get(r, 1)?)?,
        kind: get(r, 2)?,
        task_id: get::<Option<String>>(r, 3)?
            .map(|v| parse_name(v, TaskId::new))
            .transpose()?,
        agent: get::<Option<String>>(r, 4)?
            .map(|v| parse_name(v, AgentName::new))
            .transpose()?,
        org: get::<Option<String>>(r, 5)?
            .map(|v| parse_name(v, OrgName::new))
            .transpose()?,
        status: status
            .map(|s| TaskStatus::parse(&s).ok_or_else(|| corrupt(format!("status {s}"))))
            .transpose()?,
        message: get(r, 7)?,
    })
}

fn org_from_row(r: &Row) -> Result<Org, StoreError> {
    Ok(Org {
        name: parse_name(get(r, 0)?, OrgName::new)?,
        created_at: from_ms(get(r, 1)?)?,
    })
}

fn artifacts_json(a: &[Artifact]) -> Result<String, StoreError> {
    serde_json::to_string(a).map_err(|e| corrupt(format!("artifacts: {e}")))
}

fn context_json(c: &TaskContext) -> Result<Option<String>, StoreError> {
    if c.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(c)
        .map(Some)
        .map_err(|e| corrupt(format!("context: {e}")))
}

// ---- group commit --------------------------------------------------------------------------

/// The future of a write running in a [`Batch`].
type JobFuture<'a, R> = Pin<Box<dyn Future<Output = Result<R, StoreError>> + Send + 'a>>;

/// What a job does once its batch's commit is known (`Err`: the commit failed).
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// The transaction of one batch of writes. Jobs run in it one after another, each inside the
/// savepoint `job` (a failing job rolls back alone), under [`LOCK_WRITES`].
struct Batch<'a> {
    c: &'a deadpool_postgres::Object,
    display: &'a str,
    notify: AtomicBool,
    /// Task rows read and locked (`FOR UPDATE`) at the start of the batch for its task
    /// updates, each taken by the first job that uses it. A job that changes a task row
    /// otherwise than through [`StateStore::update_task`] drops its entry first.
    rows: std::sync::Mutex<std::collections::HashMap<String, Task>>,
}

impl<'a> Batch<'a> {
    /// Maps a driver error of `op` (see [`PostgresStore::err`]).
    fn err(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + Copy + 'a {
        let db = self.display;
        move |e| pg_error(db, op, e)
    }

    /// Wakes other replicas' readers at commit (one NOTIFY per batch).
    fn notify(&self) {
        self.notify.store(true, Ordering::Relaxed);
    }

    /// The task row read and locked for `id` at the start of the batch, if there is one and
    /// no job took it yet (the row is locked by the batch's transaction, so it is current).
    fn take_row(&self, id: &TaskId) -> Option<Task> {
        self.rows.lock().ok()?.remove(id.as_str())
    }

    /// The row of `id`, locked until the commit: the one read at the batch's start if no job
    /// took it yet ([`Batch::take_row`]), else read and locked now. `None`: no such task.
    async fn lock_row(&self, id: &TaskId, op: &'static str) -> Result<Option<Task>, StoreError> {
        match self.take_row(id) {
            Some(t) => Ok(Some(t)),
            None => load_task(self.c, id, true, self.err(op)).await,
        }
    }

    /// Forgets the row read for `id` (a job is changing it otherwise); `None`: every row.
    fn forget_rows(&self, id: Option<&TaskId>) {
        if let Ok(mut rows) = self.rows.lock() {
            match id {
                Some(id) => {
                    rows.remove(id.as_str());
                }
                None => rows.clear(),
            }
        }
    }
}

/// One write waiting for a batch.
trait Job: Send {
    /// Runs the write in `b`; returns whether it succeeded (its savepoint is kept) and what to
    /// do once the commit is known.
    fn run<'a>(
        self: Box<Self>,
        b: &'a Batch<'a>,
    ) -> Pin<Box<dyn Future<Output = (bool, Finish)> + Send + 'a>>;
    /// The batch could not run the write: answers `e`.
    fn fail(self: Box<Self>, e: StoreError);
    /// The task whose row the write reads and locks first, if any: the batch reads and locks
    /// all of them at its start, in one statement ([`Batch::take_row`]).
    fn task(&self) -> Option<&TaskId> {
        None
    }
}

struct JobOf<R, F> {
    f: F,
    reply: oneshot::Sender<Result<R, StoreError>>,
    task: Option<TaskId>,
}

impl<R, F> Job for JobOf<R, F>
where
    R: Send + 'static,
    F: for<'b> FnOnce(&'b Batch<'b>) -> JobFuture<'b, R> + Send + 'static,
{
    fn run<'a>(
        self: Box<Self>,
        b: &'a Batch<'a>,
    ) -> Pin<Box<dyn Future<Output = (bool, Finish)> + Send + 'a>> {
        Box::pin(async move {
            let JobOf { f, reply, .. } = *self;
            let r = f(b).await;
            let ok = r.is_ok();
            let finish: Finish = Box::new(move |commit| {
                let out = match (commit, r) {
                    // A write that failed wrote nothing: its own error stands.
                    (_, Err(e)) => Err(e),
                    (Ok(()), ok) => ok,
                    (Err(e), Ok(_)) => Err(again(e)),
                };
                let _ = reply.send(out);
            });
            (ok, finish)
        })
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }

    fn task(&self) -> Option<&TaskId> {
        self.task.as_ref()
    }
}

/// A write for the batch writer.
enum Work {
    /// A write that runs its statements in its own savepoint, one job after another.
    Job(Box<dyn Job>),
    /// A write of one statement: it runs in one pipeline with the batch's other statement
    /// writes (see [`run_batch`]).
    Piped(Box<dyn Piped>),
    /// A new task: the batch's new tasks go in one statement ([`inserts`]), in its pipeline.
    Insert(Box<inserts::TaskInsert>),
    /// A conditional task update: applied to the row the batch read at its start, it is one
    /// statement in the pipeline ([`updates`]).
    Update(Box<updates::TaskUpdate>),
}

/// A task update run on its own, after the pipeline (see [`updates`]).
struct UpdateJob(updates::TaskUpdate);

impl Job for UpdateJob {
    fn run<'a>(
        self: Box<Self>,
        b: &'a Batch<'a>,
    ) -> Pin<Box<dyn Future<Output = (bool, Finish)> + Send + 'a>> {
        Box::pin(self.0.run_alone(b))
    }

    fn fail(self: Box<Self>, e: StoreError) {
        self.0.fail(e)
    }

    fn task(&self) -> Option<&TaskId> {
        Some(&self.0.id)
    }
}

/// The owned parameters of a statement.
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn param_refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// A write that is one statement with owned parameters, so that it can run in a pipeline
/// with others and, when that pipeline fails, run again alone. Its statement must write
/// nothing when its answer is an error other than a failure of the statement itself (e.g. a
/// conflict found by `ON CONFLICT DO NOTHING`): in a pipeline it has no savepoint of its own.
trait Piped: Send + Sync {
    /// The statement.
    fn sql(&self) -> &str;
    /// Its parameters.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)>;
    /// Whether it stores events or log lines (the batch then wakes other replicas).
    fn notifies(&self) -> bool;
    /// What it does, for errors.
    fn op(&self) -> &'static str;
    /// The statement's outcome: whether the write stands, and what to do once the commit is
    /// known.
    fn settle(self: Box<Self>, row: Result<Row, StoreError>) -> (bool, Finish);
    /// The batch could not run the write: answers `e`.
    fn fail(self: Box<Self>, e: StoreError);
    /// The writes it carries, each as a statement of its own (to run again alone when its
    /// pipeline failed): itself, or the members of a grouped statement.
    fn split(self: Box<Self>) -> Vec<Box<dyn Piped>>;
}

struct PipedOf<R> {
    sql: String,
    params: Params,
    notify: bool,
    op: &'static str,
    /// The answer from the statement's row.
    decode: fn(&Row) -> Result<R, StoreError>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R: Send + 'static> Piped for PipedOf<R> {
    fn sql(&self) -> &str {
        &self.sql
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        param_refs(&self.params)
    }

    fn notifies(&self) -> bool {
        self.notify
    }

    fn op(&self) -> &'static str {
        self.op
    }

    fn settle(self: Box<Self>, row: Result<Row, StoreError>) -> (bool, Finish) {
        let r = row.and_then(|row| (self.decode)(&row));
        let reply = self.reply;
        let ok = r.is_ok();
        let finish: Finish = Box::new(move |commit| {
            let out = match (commit, r) {
                (_, Err(e)) => Err(e),
                (Ok(()), ok) => ok,
                (Err(e), Ok(_)) => Err(again(e)),
            };
            let _ = reply.send(out);
        });
        (ok, finish)
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Piped>> {
        vec![self]
    }
}

/// A [`Piped`] write run alone, as a [`Job`] in its own savepoint (after its pipeline failed).
struct Alone(Box<dyn Piped>);

impl Job for Alone {
    fn run<'a>(
        self: Box<Self>,
        b: &'a Batch<'a>,
    ) -> Pin<Box<dyn Future<Output = (bool, Finish)> + Send + 'a>> {
        Box::pin(async move {
            let p = self.0;
            let e = b.err(p.op());
            let row = match b.c.prepare_cached(p.sql()).await {
                Ok(stmt) => b.c.query_one(&stmt, &p.params()).await.map_err(e),
                Err(err) => Err(e(err)),
            };
            if row.is_ok() && p.notifies() {
                b.notify();
            }
            p.settle(row)
        })
    }

    fn fail(self: Box<Self>, e: StoreError) {
        self.0.fail(e)
    }
}

/// Opens the batch's transaction (`begin`) and reads and locks the rows of the tasks `ids`,
/// in one round trip.
async fn prefetch(
    c: &deadpool_postgres::Object,
    db: &str,
    begin: &str,
    ids: &[String],
) -> Result<Vec<Task>, StoreError> {
    let op = "read the tasks of a batch";
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {TASK_READ_COLS} FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        ))
        .await
        .map_err(|e| pg_error(db, op, e))?;
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (pre, rows) = tokio::join!(c.batch_execute(begin), c.query(&stmt, &params));
    pre.map_err(|e| pg_error(db, "begin a write", e))?;
    let rows = rows.map_err(|e| pg_error(db, op, e))?;
    // A row that cannot be decoded is left out: its job reads it again and reports it.
    Ok(rows.iter().filter_map(|r| task_from_row(r).ok()).collect())
}

/// Runs the statements of `piped` in one pipeline (one round trip for all of them), after
/// `prelude` and, when every statement could be prepared, followed by `commit` in the same
/// round trip. Returns the prelude's result, each statement's row, in order, and the result
/// of `commit` if it was sent.
async fn run_pipeline(
    c: &deadpool_postgres::Object,
    db: &str,
    prelude: &str,
    piped: &[Box<dyn Piped>],
    commit: Option<&str>,
) -> PipelineResults {
    // Statements are prepared first (once per connection: they are cached), so that the
    // pipeline holds only executions.
    let mut stmts = Vec::with_capacity(piped.len());
    for p in piped {
        match c.prepare_cached(p.sql()).await {
            Ok(s) => stmts.push(Ok(s)),
            Err(e) => stmts.push(Err(pg_error(db, p.op(), e))),
        }
    }
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = piped.iter().map(|p| p.params()).collect();
    let runs = stmts
        .iter()
        .zip(&params)
        .zip(piped)
        .map(|((s, params), p)| async move {
            match s {
                Ok(s) => c
                    .query_one(s, params)
                    .await
                    .map_err(|e| pg_error(db, p.op(), e)),
                Err(e) => Err(again(e)),
            }
        });
    // A statement that could not be prepared was not sent: the pipeline's writes must then
    // run again alone, so the commit is not sent with them.
    let commit = commit.filter(|_| stmts.iter().all(|s| s.is_ok()));
    // `join!` polls its futures in order the first time, so they are sent in this order.
    let (pre, rows, committed) = tokio::join!(
        c.batch_execute(prelude),
        futures_util::future::join_all(runs),
        async {
            match commit {
                Some(sql) => Some(c.batch_execute(sql).await),
                None => None,
            }
        }
    );
    (pre, rows, committed)
}

/// What [`run_pipeline`] answers: the prelude's result, each statement's row, and the
/// commit's result if the commit was sent.
type PipelineResults = (
    Result<(), tokio_postgres::Error>,
    Vec<Result<Row, StoreError>>,
    Option<Result<(), tokio_postgres::Error>>,
);

/// The same error again, for every write of a batch that failed as a whole.
fn again(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { op, db, reason } => StoreError::Unavailable {
            op,
            db: db.clone(),
            reason: reason.clone(),
        },
        StoreError::Backend { op, reason } => StoreError::Backend {
            op,
            reason: reason.clone(),
        },
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Backend {
            op: "commit",
            reason: other.to_string(),
        },
    }
}

/// The connection of a batch: back to the pool only when its transaction ended cleanly, else
/// closed (a connection left inside a transaction must never serve another request).
struct BatchConn {
    c: Option<deadpool_postgres::Object>,
    clean: bool,
}

impl Drop for BatchConn {
    fn drop(&mut self) {
        if !self.clean {
            if let Some(c) = self.c.take() {
                drop(deadpool_postgres::Object::take(c));
            }
        }
    }
}

/// Takes every write that is waiting (up to [`MAX_BATCH`]), runs them in one transaction and
/// commits once, then answers their callers; until the store is dropped.
async fn writer_loop(
    pool: Pool,
    db: String,
    mut rx: mpsc::UnboundedReceiver<(std::time::Instant, Work)>,
    stats: Arc<Counters>,
    group: bool,
) {
    while let Some(first) = rx.recv().await {
        let mut work = vec![first];
        while work.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => work.push(j),
                Err(_) => break,
            }
        }
        let now = std::time::Instant::now();
        let work: Vec<Work> = work
            .into_iter()
            .map(|(at, w)| {
                add_ns(&stats.queued_ns, now.saturating_duration_since(at));
                w
            })
            .collect();
        let n = work.len() as u64;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.writes.fetch_add(n, Ordering::Relaxed);
        stats.largest.fetch_max(n, Ordering::Relaxed);
        let mut jobs: Vec<Box<dyn Job>> = Vec::new();
        let mut piped: Vec<Box<dyn Piped>> = Vec::new();
        let mut new_tasks = Vec::new();
        let mut task_updates = Vec::new();
        for w in work {
            match w {
                Work::Job(j) => jobs.push(j),
                Work::Piped(p) => piped.push(p),
                Work::Insert(t) => new_tasks.push(*t),
                Work::Update(u) if group => task_updates.push(*u),
                Work::Update(u) => jobs.push(Box::new(UpdateJob(*u))),
            }
        }
        // The new tasks first, in one statement.
        if group {
            piped.splice(0..0, inserts::group(new_tasks));
        } else {
            piped.splice(
                0..0,
                new_tasks.into_iter().map(|t| Box::new(t) as Box<dyn Piped>),
            );
        }
        run_batch(&pool, &db, piped, task_updates, jobs, &stats).await;
    }
}

/// Where a batch's transaction stands between its writes.
#[derive(Clone, Copy)]
enum Open {
    /// Nothing sent yet.
    Not,
    /// The transaction is open (rows read), no savepoint yet.
    Begun,
    /// The pipeline ran in savepoint `grp`, every statement of it succeeded.
    GroupOk,
    /// The pipeline failed: its writes are to be rolled back and run again alone.
    GroupFailed,
    /// The last job ran in savepoint `job`, and succeeded (true) or not.
    Job(bool),
    /// The pipeline ran and its commit was sent with it (nothing else to run).
    Committed,
}

/// Runs one batch: the statement writes (`piped`) in one pipeline inside savepoint `grp`
/// (every statement of it in one round trip; when one of them fails, `grp` is rolled back
/// and each runs again alone, so one bad write cannot fail the others), then the other
/// writes (`jobs`) one after another, each in its own savepoint `job`; one commit.
async fn run_batch(
    pool: &Pool,
    db: &str,
    mut piped: Vec<Box<dyn Piped>>,
    task_updates: Vec<updates::TaskUpdate>,
    mut jobs: Vec<Box<dyn Job>>,
    stats: &Counters,
) {
    let t0 = std::time::Instant::now();
    let got = pool.get().await;
    add_ns(&stats.pool_ns, t0.elapsed());
    let t1 = std::time::Instant::now();
    let c = match got {
        Ok(c) => c,
        Err(e) => {
            let err = pool_error(db, "write", e);
            for p in piped {
                p.fail(again(&err));
            }
            for u in task_updates {
                u.fail(again(&err));
            }
            for j in jobs {
                j.fail(again(&err));
            }
            return;
        }
    };
    let mut conn = BatchConn {
        c: Some(c),
        clean: false,
    };
    let Some(c) = conn.c.as_ref() else { return };
    let b = Batch {
        c,
        display: db,
        notify: AtomicBool::new(false),
        rows: Default::default(),
    };
    let n = piped.len() + task_updates.len() + jobs.len();
    let mut finishers: Vec<Finish> = Vec::with_capacity(n);
    let mut broken = None;
    let mut open = Open::Not;
    // The commit's result, when it was sent with the pipeline.
    let mut folded: Option<Result<(), StoreError>> = None;
    // The transaction and the lock that orders ids (held until the commit).
    let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({LOCK_WRITES})");
    // The rows of the tasks the jobs update, read and locked at once (in id order), outside
    // any savepoint so that their locks last until the commit.
    let mut ids: Vec<String> = jobs
        .iter()
        .filter_map(|j| j.task().map(|t| t.as_str().to_owned()))
        .chain(task_updates.iter().map(|u| u.id.as_str().to_owned()))
        .collect();
    if !ids.is_empty() {
        ids.sort_unstable();
        ids.dedup();
        match prefetch(c, db, &begin, &ids).await {
            Ok(rows) => {
                open = Open::Begun;
                if let Ok(mut cache) = b.rows.lock() {
                    for t in rows {
                        cache.insert(t.id.as_str().to_owned(), t);
                    }
                }
            }
            Err(e) => broken = Some(e),
        }
    }
    // Updates whose row was read: applied now, their writes join the pipeline. The others
    // (a second update of one task, a task that does not exist, a batch that could not start)
    // run on their own after it.
    for u in task_updates {
        match b.take_row(&u.id).filter(|_| broken.is_none()) {
            Some(row) => match u.prepare(row) {
                updates::Prepared::Done(f) => finishers.push(f),
                updates::Prepared::Write(w) => piped.push(w),
            },
            None => jobs.push(Box::new(UpdateJob(u))),
        }
    }
    if let (false, Some(err)) = (piped.is_empty(), &broken) {
        for p in piped {
            p.fail(failed_with_batch(err));
        }
    } else if !piped.is_empty() {
        let prelude = match open {
            Open::Not => format!("{begin}; SAVEPOINT grp"),
            _ => "SAVEPOINT grp".to_owned(),
        };
        // When nothing runs after the pipeline, its commit goes in the same round trip, so
        // the batch holds the ordering lock one round trip less. If a statement of the
        // pipeline failed, the transaction is aborted: `RELEASE SAVEPOINT grp` fails and the
        // server skips the rest of that query string, `COMMIT` included, so the transaction
        // stays open and the pipeline's writes run again alone, as when the commit is not
        // sent with it. (Every piped statement answers exactly one row, so a statement that
        // did not fail on the server cannot be answered with an error here.)
        let commit = jobs.is_empty().then(|| {
            let notify = if piped.iter().any(|p| p.notifies()) {
                format!("NOTIFY {CHANGES_CHANNEL}; ")
            } else {
                String::new()
            };
            format!("RELEASE SAVEPOINT grp; {notify}COMMIT")
        });
        let (pre, rows, committed) = run_pipeline(c, db, &prelude, &piped, commit.as_deref()).await;
        let all_ok = rows.iter().all(|r| r.is_ok());
        if let Err(e) = pre {
            let err = pg_error(db, "begin a write", e);
            for p in piped {
                p.fail(failed_with_batch(&err));
            }
            broken = Some(err);
        } else if all_ok || matches!(committed, Some(Ok(()))) {
            open = match committed {
                Some(r) => {
                    stats.folded.fetch_add(1, Ordering::Relaxed);
                    folded = Some(r.map_err(|e| pg_error(db, "commit", e)));
                    Open::Committed
                }
                None => Open::GroupOk,
            };
            for (p, row) in piped.into_iter().zip(rows) {
                if p.notifies() {
                    b.notify();
                }
                let (_, finish) = p.settle(row);
                finishers.push(finish);
            }
        } else {
            // One statement failed, so the pipeline's transaction is aborted: run each
            // write again alone, before the other jobs.
            open = Open::GroupFailed;
            let alone: Vec<Box<dyn Job>> = piped
                .into_iter()
                .flat_map(|p| p.split())
                .map(|p| Box::new(Alone(p)) as Box<dyn Job>)
                .collect();
            jobs.splice(0..0, alone);
        }
    }
    for job in jobs {
        if let Some(err) = &broken {
            job.fail(failed_with_batch(err));
            continue;
        }
        // The statements that give the job a clean savepoint `job`, sent in the same pipeline
        // as the job's first statement (no round trip of their own): after a job that
        // succeeded, its savepoint is released (its writes kept); after one that failed, its
        // writes are rolled back to the savepoint (which stays).
        let prelude = match open {
            Open::Not => format!("{begin}; SAVEPOINT job"),
            Open::Begun => "SAVEPOINT job".to_owned(),
            Open::GroupOk => "RELEASE SAVEPOINT grp; SAVEPOINT job".to_owned(),
            Open::GroupFailed => {
                "ROLLBACK TO SAVEPOINT grp; RELEASE SAVEPOINT grp; SAVEPOINT job".to_owned()
            }
            Open::Job(true) => "RELEASE SAVEPOINT job; SAVEPOINT job".to_owned(),
            Open::Job(false) => "ROLLBACK TO SAVEPOINT job".to_owned(),
            // Not reached: a commit is sent with the pipeline only when no job follows.
            Open::Committed => {
                job.fail(StoreError::Backend {
                    op: "write",
                    reason: "the batch was committed before this write ran".into(),
                });
                continue;
            }
        };
        let (pre, (ok, finish)) = tokio::join!(c.batch_execute(&prelude), job.run(&b));
        finishers.push(finish);
        if let Err(e) = pre {
            let op = if matches!(open, Open::Not) {
                "begin a write"
            } else {
                "write (savepoint)"
            };
            broken = Some(pg_error(db, op, e));
        }
        open = Open::Job(ok);
    }
    add_ns(&stats.run_ns, t1.elapsed());
    let t2 = std::time::Instant::now();
    let result = match (broken, folded) {
        (Some(err), _) => Err(err),
        (None, Some(committed)) => committed,
        (None, None) => {
            // The savepoint is released explicitly so that a job which left the transaction
            // aborted fails the commit instead of turning it into a silent rollback.
            let mut sql = String::from(match open {
                Open::GroupOk => "RELEASE SAVEPOINT grp; ",
                Open::Job(true) => "RELEASE SAVEPOINT job; ",
                Open::Job(false) => "ROLLBACK TO SAVEPOINT job; ",
                // Not reached: a failed group always leaves jobs to run, a batch that read
                // rows has jobs or a pipeline, and a commit sent with the pipeline is
                // answered above.
                Open::Not | Open::Begun | Open::GroupFailed | Open::Committed => "",
            });
            if b.notify.load(Ordering::Relaxed) {
                sql.push_str(&format!("NOTIFY {CHANGES_CHANNEL}; "));
            }
            sql.push_str("COMMIT");
            c.batch_execute(&sql)
                .await
                .map_err(|e| pg_error(db, "commit", e))
        }
    };
    add_ns(&stats.commit_ns, t2.elapsed());
    match result {
        Ok(()) => {
            conn.clean = true;
            for f in finishers {
                f(Ok(()));
            }
        }
        Err(err) => {
            tracing::warn!(db, error = %err, writes = n, "postgres: a batch of writes failed");
            for f in finishers {
                f(Err(&err));
            }
            conn.clean = c.batch_execute("ROLLBACK").await.is_ok();
        }
    }
}

/// The error of a write that did not run because an earlier statement of its batch failed
/// with `err`: of the same class, so that a lost connection is `Unavailable` (HTTP 503, retry)
/// for every write of the batch, not a backend error for all but the first.
fn failed_with_batch(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable { op, db, reason } => StoreError::Unavailable {
            op,
            db: db.clone(),
            reason: reason.clone(),
        },
        other => StoreError::Backend {
            op: "write",
            reason: format!("an earlier statement of its batch failed: {other}"),
        },
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    largest: AtomicU64,
    /// Nanoseconds the batch writer spent waiting for a connection, running batches' writes
    /// (from `BEGIN` to before the commit), and committing (see [`BatchTimes`]).
    pool_ns: AtomicU64,
    run_ns: AtomicU64,
    commit_ns: AtomicU64,
    /// Nanoseconds writes waited in the queue before their batch started, summed.
    queued_ns: AtomicU64,
    /// Batches whose commit was sent with their pipeline.
    folded: AtomicU64,
}

/// Where the batch writer's time went since the store opened (for profiling: the `replicas`
/// bench prints it). The writer runs one batch at a time, so `pool + run + commit` is its busy
/// time; `queued` sums every write's wait for its batch to start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTimes {
    /// Batches run.
    pub batches: u64,
    /// Writes they held.
    pub writes: u64,
    /// Waiting for a pooled connection.
    pub pool: Duration,
    /// From `BEGIN` to the last write's answer (statements, row locks, the ordering lock).
    pub run: Duration,
    /// The commit's round trip (with the WAL flush), when it is one of its own.
    pub commit: Duration,
    /// Writes' time in the queue before their batch started, summed over writes.
    pub queued: Duration,
    /// Batches whose commit was sent in the round trip of their pipeline (nothing ran after
    /// it); their commit's time is counted in `run`.
    pub folded: u64,
}

fn add_ns(c: &AtomicU64, d: Duration) {
    c.fetch_add(
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Maps a driver error of `op` on database `db` (shown without its password).
fn pg_error(db: &str, op: &'static str, e: tokio_postgres::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable {
            op,
            db: db.to_owned(),
            reason: reason(&e),
        }
    } else {
        StoreError::Backend {
            op,
            reason: reason(&e),
        }
    }
}

/// Maps a failure to get a pooled connection for `op`.
fn pool_error(db: &str, op: &'static str, e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        deadpool_postgres::PoolError::Backend(b) if !is_unavailable(&b) => StoreError::Backend {
            op,
            reason: reason(&b),
        },
        other => StoreError::Unavailable {
            op,
            db: db.to_owned(),
            reason: pool_reason(&other),
        },
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`) with default options,
    /// migrating the schema if needed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `opts` (see [`PostgresStore::connect`]). Fails with
    /// [`StoreError::Open`] (naming the database without its password) when the server cannot
    /// be reached or refuses the login, and with [`StoreError::Corrupt`] when the database's
    /// schema is newer than this build.
    pub async fn connect_with(url: &str, opts: PostgresOptions) -> Result<Self, StoreError> {
        let tls = super::pg_tls::settings(url);
        let mut cfg = tokio_postgres::Config::from_str(&tls.url).map_err(|e| StoreError::Open {
            path: redact_url(url),
            reason: format!("invalid PostgreSQL URL: {}", reason(&e)),
        })?;
        let connector = if tls.tls {
            let config = super::pg_tls::client_config(tls.root_cert.as_deref()).map_err(|e| {
                StoreError::Open {
                    path: redact_url(url),
                    reason: e.to_string(),
                }
            })?;
            Some(super::pg_tls::RustlsConnect::new(config))
        } else {
            None
        };
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(opts.connect_timeout);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("guildnet-orchestrator");
        }
        let display = describe(&cfg);
        let mc = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &connector {
            Some(c) => Manager::from_config(cfg.clone(), c.clone(), mc()),
            None => Manager::from_config(cfg.clone(), NoTls, mc()),
        };
        // Half as many connections again (at least one) for heartbeats and lease renewals,
        // whose sessions do not wait for the WAL flush at commit.
        let soft_size = (opts.max_connections / 2).max(1);
        let mut soft_cfg = cfg.clone();
        soft_cfg.options(match cfg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=off"),
            _ => "-c synchronous_commit=off".to_owned(),
        });
        let soft_mgr = match &connector {
            Some(c) => Manager::from_config(soft_cfg, c.clone(), mc()),
            None => Manager::from_config(soft_cfg, NoTls, mc()),
        };
        let build = |mgr: Manager, size: usize| {
            Pool::builder(mgr)
                .max_size(size.max(1))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(opts.wait_timeout))
                .create_timeout(Some(opts.connect_timeout))
                .recycle_timeout(Some(opts.connect_timeout))
                .build()
                .map_err(|e| StoreError::Open {
                    path: display.clone(),
                    reason: format!("cannot build the connection pool: {e}"),
                })
        };
        let pool = build(mgr, opts.max_connections)?;
        // The batch writer's own connection: it runs one batch at a time, and behind a pool
        // shared with reads it waited for a free connection (measured at 10,000 agents on 2
        // replicas: up to 0.9 s of every second, with every read connection busy).
        let writer_mgr = match &connector {
            Some(c) => Manager::from_config(cfg.clone(), c.clone(), mc()),
            None => Manager::from_config(cfg.clone(), NoTls, mc()),
        };
        let writer_pool = build(writer_mgr, 1)?;
        let soft = build(soft_mgr, soft_size)?;
        let (writer, jobs) = mpsc::unbounded_channel();
        let stats = Arc::new(Counters::default());
        tokio::spawn(writer_loop(
            writer_pool,
            display.clone(),
            jobs,
            stats.clone(),
            opts.group_new_tasks,
        ));
        let store = Self {
            inner: Arc::new(PgInner {
                pool,
                soft,
                display,
                config: cfg,
                tls: connector,
                leaders: Default::default(),
                changes: std::sync::OnceLock::new(),
                listener: std::sync::Mutex::new(None),
                tokens: Default::default(),
                writer,
                stats,
            }),
        };
        let mut client = store.client_for_open().await?;
        migrate(&mut client, &store.inner.display).await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('opened_at', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&Utc::now().to_rfc3339()],
            )
            .await
            .map_err(|e| StoreError::Open {
                path: store.inner.display.clone(),
                reason: format!("cannot write: {}", reason(&e)),
            })?;
        drop(client);
        if opts.warm_up {
            let (pool, soft) = (store.inner.pool.clone(), store.inner.soft.clone());
            let db = store.inner.display.clone();
            tokio::spawn(async move {
                let (reads, writes) = tokio::join!(
                    warm_up(&pool, HOT_READS, &db),
                    warm_up(&soft, HOT_SOFT_WRITES, &db)
                );
                tracing::debug!(db, reads, writes, "postgres: connections opened at start");
            });
        }
        Ok(store)
    }

    /// The change counter fed by the LISTEN connection, which this starts on first use.
    fn listening(&self) -> &tokio::sync::watch::Receiver<u64> {
        self.inner.changes.get_or_init(|| {
            let (tx, rx) = tokio::sync::watch::channel(0);
            let (cfg, db) = (self.inner.config.clone(), self.inner.display.clone());
            let tokens = self.inner.tokens.clone();
            let task = match self.inner.tls.clone() {
                Some(t) => tokio::spawn(listen_loop(cfg, db, tx, tokens, t)),
                None => tokio::spawn(listen_loop(cfg, db, tx, tokens, NoTls)),
            };
            if let Ok(mut l) = self.inner.listener.lock() {
                *l = Some(task);
            }
            rx
        })
    }

    /// The database, as `postgres://user@host:port/db` (no password).
    pub fn display_url(&self) -> &str {
        &self.inner.display
    }

    /// The schema version this build migrates to.
    pub fn schema_version() -> usize {
        MIGRATIONS.len()
    }

    async fn client_for_open(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(|e| StoreError::Open {
            path: self.inner.display.clone(),
            reason: format!("cannot connect: {}", pool_reason(&e)),
        })
    }

    async fn client(&self, op: &'static str) -> Result<deadpool_postgres::Object, StoreError> {
        let db = &self.inner.display;
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| pool_error(db, op, e))
    }

    /// A connection of the soft pool: each statement its own transaction, committed without
    /// waiting for the WAL flush (`synchronous_commit = off`).
    async fn soft_client(&self, op: &'static str) -> Result<deadpool_postgres::Object, StoreError> {
        let db = &self.inner.display;
        self.inner
            .soft
            .get()
            .await
            .map_err(|e| pool_error(db, op, e))
    }

    /// Maps a driver error of `op`.
    fn err(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError + Copy + '_ {
        let db = self.inner.display.as_str();
        move |e| pg_error(db, op, e)
    }

    /// Runs the write `f` in the next batch (group commit, see the module docs) and answers
    /// once that batch committed.
    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'b> FnOnce(&'b Batch<'b>) -> JobFuture<'b, R> + Send + 'static,
    {
        self.write_on(None, f).await
    }

    /// [`PostgresStore::write`] of a write that first reads and locks the row of `task`
    /// ([`Batch::take_row`]).
    async fn write_on<R, F>(&self, task: Option<TaskId>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'b> FnOnce(&'b Batch<'b>) -> JobFuture<'b, R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send((
                std::time::Instant::now(),
                Work::Job(Box::new(JobOf { f, reply, task })),
            ))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs the one-statement write `sql` in the next batch's pipeline (see [`run_batch`])
    /// and answers `decode` of its row once that batch committed. `notify`: it stores events
    /// or log lines. When `decode` answers an error, the statement must have written nothing.
    async fn write_piped<R: Send + 'static>(
        &self,
        op: &'static str,
        sql: String,
        params: Params,
        notify: bool,
        decode: fn(&Row) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send((
                std::time::Instant::now(),
                Work::Piped(Box::new(PipedOf {
                    sql,
                    params,
                    notify,
                    op,
                    decode,
                    reply,
                })),
            ))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Where the batch writer's time went so far (see [`BatchTimes`]).
    pub fn batch_times(&self) -> BatchTimes {
        let c = &self.inner.stats;
        let d = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        BatchTimes {
            batches: c.batches.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            pool: d(&c.pool_ns),
            run: d(&c.run_ns),
            commit: d(&c.commit_ns),
            queued: d(&c.queued_ns),
            folded: c.folded.load(Ordering::Relaxed),
        }
    }

    /// How writes were grouped into commits so far by this process (group commit batch sizes).
    pub fn commit_stats(&self) -> super::CommitStats {
        let c = &self.inner.stats;
        super::CommitStats {
            batches: c.batches.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            largest: c.largest.load(Ordering::Relaxed),
        }
    }
}

fn pool_reason(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(b) => reason(b),
        deadpool_postgres::PoolError::Timeout(t) => {
            format!("timed out ({t:?}) waiting for a database connection")
        }
        other => other.to_string(),
    }
}

async fn migrate(client: &mut deadpool_postgres::Object, db: &str) -> Result<(), StoreError> {
    let fail = |what: &str, e: tokio_postgres::Error| StoreError::Open {
        path: db.to_owned(),
        reason: format!("{what}: {}", reason(&e)),
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| fail("begin migration", e))?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
        .await
        .map_err(|e| fail("lock for migration", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS guildnet_schema (\
             version    INTEGER PRIMARY KEY, \
             applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(|e| fail("create the schema version table", e))?;
    let version: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM guildnet_schema", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("read schema version", e))?;
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database {db}: schema version {version} is newer than this build supports ({}); \
             run a newer guildnet",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| fail("apply migration", e))?;
        let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO guildnet_schema (version, applied_at) VALUES ($1, $2)",
            &[&v, &ms(Utc::now())],
        )
        .await
        .map_err(|e| fail("record schema version", e))?;
        tracing::info!(version = v, db, "postgres: schema migrated");
    }
    tx.commit().await.map_err(|e| fail("commit migration", e))?;
    Ok(())
}

/// Inserts events (in a batch, under [`LOCK_WRITES`]) with one statement, ids in the given
/// order; returns the last id (0 when none).
async fn insert_events(
    tx: &impl GenericClient,
    events: &[NewEvent],
    now: i64,
    err: impl Fn(tokio_postgres::Error) -> StoreError,
) -> Result<u64, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (ts, kind, task_id, agent, org, status, message) \
             SELECT $1, kind, task_id, agent, org, status, message FROM \
             unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
             WITH ORDINALITY AS e(kind, task_id, agent, org, status, message, n) \
             ORDER BY n RETURNING id",
        )
        .await
        .map_err(&err)?;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let tasks: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.task_id.as_ref().map(|v| v.as_str()))
        .collect();
    let agents: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.agent.as_ref().map(|v| v.as_str()))
        .collect();
    let orgs: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.org.as_ref().map(|v| v.as_str()))
        .collect();
    let statuses: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.status.map(|s| s.as_str()))
        .collect();
    let messages: Vec<Option<&str>> = events.iter().map(|e| e.message.as_deref()).collect();
    let rows = tx
        .query(
            &stmt,
            &[&now, &kinds, &tasks, &agents, &orgs, &statuses, &messages],
        )
        .await
        .map_err(&err)?;
    let mut last = 0;
    for r in &rows {
        last = last.max(id_of(get(r, 0)?)?);
    }
    Ok(last)
}

/// Inserts audit rows with one statement.
async fn insert_audit(
    tx: &impl GenericClient,
    rows: &[NewAudit],
    now: i64,
    err: impl Fn(tokio_postgres::Error) -> StoreError,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO audit (ts, actor, action, subject, detail) \
             SELECT $1, actor, action, subject, detail FROM \
             unnest($2::text[], $3::text[], $4::text[], $5::text[]) \
             WITH ORDINALITY AS a(actor, action, subject, detail, n) ORDER BY n",
        )
        .await
        .map_err(&err)?;
    let actors: Vec<&str> = rows.iter().map(|a| a.actor.as_str()).collect();
    let actions: Vec<&str> = rows.iter().map(|a| a.action.as_str()).collect();
    let subjects: Vec<&str> = rows.iter().map(|a| a.subject.as_str()).collect();
    let details: Vec<Option<&str>> = rows.iter().map(|a| a.detail.as_deref()).collect();
    tx.execute(&stmt, &[&now, &actors, &actions, &subjects, &details])
        .await
        .map_err(&err)?;
    Ok(())
}

/// Appends `audit` and `events` in the batch `b` (ids in order: see the module docs), and has
/// the batch wake other replicas' readers when there are events.
async fn journal(
    b: &Batch<'_>,
    events: &[NewEvent],
    audit: &[NewAudit],
    err: impl Fn(tokio_postgres::Error) -> StoreError + Copy,
) -> Result<u64, StoreError> {
    if events.is_empty() && audit.is_empty() {
        return Ok(0);
    }
    let now = ms(Utc::now());
    if !events.is_empty() {
        b.notify();
    }
    // Sent in one pipeline: audit rows, then events, in order.
    let (a, e) = tokio::join!(
        insert_audit(b.c, audit, now, err),
        insert_events(b.c, events, now, err)
    );
    a?;
    e
}

/// Appends the 11 parameters of [`journal_cte`] for `events` and `audit` to `p`.
fn journal_params(p: &mut Params, events: &[NewEvent], audit: &[NewAudit]) {
    fn texts<T>(v: &[T], f: impl Fn(&T) -> &str) -> Box<dyn ToSql + Sync + Send> {
        Box::new(v.iter().map(|x| f(x).to_owned()).collect::<Vec<String>>())
    }
    fn opts<T>(v: &[T], f: impl Fn(&T) -> Option<&str>) -> Box<dyn ToSql + Sync + Send> {
        Box::new(
            v.iter()
                .map(|x| f(x).map(str::to_owned))
                .collect::<Vec<Option<String>>>(),
        )
    }
    p.push(Box::new(ms(Utc::now())));
    p.push(texts(audit, |a| &a.actor));
    p.push(texts(audit, |a| &a.action));
    p.push(texts(audit, |a| &a.subject));
    p.push(opts(audit, |a| a.detail.as_deref()));
    p.push(texts(events, |e| &e.kind));
    p.push(opts(events, |e| e.task_id.as_ref().map(|v| v.as_str())));
    p.push(opts(events, |e| e.agent.as_ref().map(|v| v.as_str())));
    p.push(opts(events, |e| e.org.as_ref().map(|v| v.as_str())));
    p.push(opts(events, |e| e.status.map(|s| s.as_str())));
    p.push(opts(events, |e| e.message.as_deref()));
}

/// The end of a statement `WITH <guard> AS (<a write> RETURNING ...)` that also appends the
/// write's audit rows and events, only when `guard` returned a row, in the same statement (one
/// round trip for the write and its journal): CTEs `a` and `e`, then the final
/// `SELECT <rows of guard>, <last event id or NULL>`. Its 11 parameters ([`journal_params`])
/// start at `$first`; event ids follow the given order.
fn journal_cte(guard: &str, first: usize) -> String {
    let p: Vec<String> = (0..11).map(|i| format!("${}", first + i)).collect();
    format!(
        ", a AS (INSERT INTO audit (ts, actor, action, subject, detail) \
         SELECT {ts}::BIGINT, actor, action, subject, detail FROM \
         unnest({}::text[], {}::text[], {}::text[], {}::text[]) \
         WITH ORDINALITY AS x(actor, action, subject, detail, n) \
         WHERE EXISTS (SELECT 1 FROM {guard}) ORDER BY n), \
         e AS (INSERT INTO events (ts, kind, task_id, agent, org, status, message) \
         SELECT {ts}::BIGINT, kind, task_id, agent, org, status, message FROM \
         unnest({}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::text[]) \
         WITH ORDINALITY AS x(kind, task_id, agent, org, status, message, n) \
         WHERE EXISTS (SELECT 1 FROM {guard}) ORDER BY n RETURNING id) \
         SELECT (SELECT COUNT(*) FROM {guard}), (SELECT MAX(id) FROM e)",
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        p[7],
        p[8],
        p[9],
        p[10],
        ts = p[0],
    )
}

/// The row of a statement ending in [`journal_cte`]: whether `guard` wrote a row, and the
/// last event id (0 when none).
fn journaled(row: &Row) -> Result<(bool, u64), StoreError> {
    let n: i64 = get(row, 0)?;
    let last: Option<i64> = get(row, 1)?;
    Ok((n > 0, last.map(id_of).transpose()?.unwrap_or(0)))
}

async fn load_task(
    c: &impl GenericClient,
    id: &TaskId,
    for_update: bool,
    err: impl Fn(tokio_postgres::Error) -> StoreError,
) -> Result<Option<Task>, StoreError> {
    let sql = if for_update {
        LOAD_TASK_FOR_UPDATE
    } else {
        LOAD_TASK
    };
    let stmt = c.prepare_cached(sql).await.map_err(&err)?;
    let row = c.query_opt(&stmt, &[&id.as_str()]).await.map_err(err)?;
    row.as_ref().map(task_from_row).transpose()
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn create_org(&self, name: &OrgName, audit: NewAudit) -> Result<Org, StoreError> {
        let name = name.clone();
        self.write(move |b| {
            Box::pin(async move {
                let e = b.err("insert org");
                let now = ms(Utc::now());
                let n =
                    b.c.execute(
                        "INSERT INTO orgs (name, created_at) VALUES ($1, $2) \
                         ON CONFLICT DO NOTHING",
                        &[&name.as_str(), &now],
                    )
                    .await
                    .map_err(e)?;
                if n == 0 {
                    return Err(StoreError::AlreadyExists(format!("org {name}")));
                }
                journal(b, &[], &[audit], e).await?;
                Ok(Org {
                    name,
                    created_at: from_ms(now)?,
                })
            })
        })
        .await
    }

    async fn get_org(&self, name: &OrgName) -> Result<Option<Org>, StoreError> {
        let op = "get org";
        let c = self.client(op).await?;
        let row = c
            .query_opt(
                "SELECT name, created_at FROM orgs WHERE name = $1",
                &[&name.as_str()],
            )
            .await
            .map_err(self.err(op))?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn list_orgs(&self) -> Result<Vec<Org>, StoreError> {
        let op = "list orgs";
        let c = self.client(op).await?;
        let rows = c
            .query("SELECT name, created_at FROM orgs ORDER BY name", &[])
            .await
            .map_err(self.err(op))?;
        Ok(collect_rows(op, rows, org_from_row))
    }

    async fn delete_org(&self, name: &OrgName, audit: NewAudit) -> Result<(), StoreError> {
        let name = name.clone();
        self.write(move |b| {
            Box::pin(async move {
                let e = b.err("delete org");
                let tx = b.c;
                // Lock the org row first: a task scheduled into it concurrently is either
                // counted here or sees the org gone.
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM orgs WHERE name = $1 FOR UPDATE",
                        &[&name.as_str()],
                    )
                    .await
                    .map_err(e)?;
                let active: i64 = tx
                    .query_one(
                        "SELECT COUNT(*) FROM tasks WHERE org = $1 AND status NOT IN \
                         ('Succeeded', 'Failed', 'Cancelled')",
                        &[&name.as_str()],
                    )
                    .await
                    .map_err(e)
                    .and_then(|r| get(&r, 0))?;
                if active > 0 {
                    return Err(StoreError::InUse(format!(
                        "org {name} has {active} unfinished task(s); cancel them or wait for \
                         them to finish first"
                    )));
                }
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("org {name}")));
                }
                tx.execute("DELETE FROM orgs WHERE name = $1", &[&name.as_str()])
                    .await
                    .map_err(e)?;
                journal(b, &[], &[audit], e).await?;
                Ok(())
            })
        })
        .await
    }

    async fn prune_finished(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        let (before_ms, limit) = (ms(before), limit_sql(limit));
        let pruned = self
            .write(move |b| {
                Box::pin(async move {
                    let e = b.err("prune finished tasks");
                    b.forget_rows(None);
                    let tx = b.c;
                    let ids: Vec<String> = tx
                        .query(
                            "SELECT id FROM tasks WHERE status IN ('Succeeded', 'Failed', \
                         'Cancelled') AND finished_at IS NOT NULL AND finished_at < $1 \
                         ORDER BY finished_at, id LIMIT $2 FOR UPDATE",
                            &[&before_ms, &limit],
                        )
                        .await
                        .map_err(e)?
                        .iter()
                        .map(|r| get(r, 0))
                        .collect::<Result<_, _>>()?;
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    for sql in [
                        "DELETE FROM logs WHERE task_id = ANY($1)",
                        "DELETE FROM events WHERE task_id = ANY($1)",
                        "DELETE FROM agents WHERE task_id = ANY($1)",
                        "DELETE FROM tasks WHERE id = ANY($1)",
                    ] {
                        tx.execute(sql, &[&ids]).await.map_err(e)?;
                    }
                    // Every replica forgets the pruned tasks' token hashes at commit.
                    tx.execute(&*PRUNED_TOKENS, &[&ids]).await.map_err(e)?;
                    let audit = NewAudit::new(
                        "system",
                        "retention.prune",
                        &format!("{} task(s)", ids.len()),
                        Some(format!("finished before {}", before.to_rfc3339())),
                    );
                    journal(b, &[], &[audit], e).await?;
                    ids.into_iter()
                        .map(|id| parse_name(id, TaskId::new))
                        .collect()
                })
            })
            .await;
        // This replica forgets them before answering; after an error (the commit may still
        // have happened) it forgets every hash.
        match &pruned {
            Ok(ids) => ids
                .iter()
                .for_each(|id| self.inner.tokens.forget(id.as_str())),
            Err(_) => self.inner.tokens.forget_all(),
        }
        pruned
    }

    async fn insert_task_with_events(
        &self,
        task: Task,
        token_hash: String,
        events: Vec<NewEvent>,
        audit: Vec<NewAudit>,
    ) -> Result<u64, StoreError> {
        let t = task;
        let row = inserts::TaskRow {
            artifacts: artifacts_json(&t.artifacts)?,
            context: context_json(&t.context)?,
            id: t.id.as_str().to_owned(),
            org: t.org.as_str().to_owned(),
            task: t.task,
            agent_hint: t.agent_hint,
            status: t.status.as_str(),
            agent: t.agent.as_ref().map(|a| a.as_str().to_owned()),
            attempt: i64::from(t.attempt),
            fencing: cursor(t.fencing),
            claims: i64::from(t.claims),
            lease_expires_at: t.lease_expires_at.map(ms),
            created_at: ms(t.created_at),
            updated_at: ms(t.updated_at),
            started_at: t.started_at.map(ms),
            finished_at: t.finished_at.map(ms),
            exit_code: t.exit_code,
            reason: t.reason,
            pr_url: t.pr_url,
            log_sealed: t.log_sealed,
            token_hash,
        };
        // The task, its audit rows and its events in one statement, with the batch's other
        // new tasks (see `inserts`).
        let (reply, rx) = oneshot::channel();
        let insert = inserts::TaskInsert::new(row, events, audit, reply);
        self.inner
            .writer
            .send((std::time::Instant::now(), Work::Insert(Box::new(insert))))
            .map_err(|_| StoreError::Closed)?;
        let (inserted, last) = rx.await.map_err(|_| StoreError::Closed)??;
        if !inserted {
            // ON CONFLICT: nothing was written (its journal is guarded by the insert).
            return Err(StoreError::AlreadyExists(format!("task {}", t.id)));
        }
        Ok(last)
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        let op = "load task";
        let c = self.client(op).await?;
        load_task(&c, id, false, self.err(op)).await
    }

    async fn task_token_hash(&self, id: &TaskId) -> Result<Option<String>, StoreError> {
        let op = "get token hash";
        // Served from memory while this replica hears of every rotation ([`token_cache`]).
        self.listening();
        let tokens = &self.inner.tokens;
        if let Some(h) = tokens.get(id.as_str()) {
            return Ok(Some(h));
        }
        let generation = tokens.generation();
        let c = self.client(op).await?;
        // Every agent request asks this: prepared once per connection (a statement given as
        // text is parsed and planned again in a round trip of its own each time).
        let stmt = c.prepare_cached(TOKEN_HASH).await.map_err(self.err(op))?;
        let row = c
            .query_opt(&stmt, &[&id.as_str()])
            .await
            .map_err(self.err(op))?;
        let hash: Option<String> = row.as_ref().map(|r| get(r, 0)).transpose()?;
        if let Some(h) = &hash {
            tokens.put(id.as_str(), h.clone(), generation);
        }
        Ok(hash)
    }

    async fn list_tasks(&self, q: TaskQuery) -> Result<Vec<Task>, StoreError> {
        let op = "list tasks";
        let mut sql = format!("SELECT {TASK_READ_COLS} FROM tasks WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if !q.statuses.is_empty() {
            let v: Vec<String> = q.statuses.iter().map(|s| s.as_str().to_owned()).collect();
            args.push(Box::new(v));
            sql.push_str(&format!(" AND status = ANY(${})", args.len()));
        }
        if let Some(org) = &q.org {
            args.push(Box::new(org.as_str().to_owned()));
            sql.push_str(&format!(" AND org = ${}", args.len()));
        }
        if !q.exclude_orgs.is_empty() {
            let v: Vec<String> = q
                .exclude_orgs
                .iter()
                .map(|o| o.as_str().to_owned())
                .collect();
            args.push(Box::new(v));
            sql.push_str(&format!(" AND NOT (org = ANY(${}))", args.len()));
        }
        if let Some(t) = q.lease_expired_before {
            args.push(Box::new(ms(t)));
            sql.push_str(&format!(
                " AND lease_expires_at IS NOT NULL AND lease_expires_at < ${}",
                args.len()
            ));
        }
        if let Some(t) = q.updated_before {
            args.push(Box::new(ms(t)));
            sql.push_str(&format!(" AND updated_at < ${}", args.len()));
        }
        if let (Some(k), false) = (&q.after, q.oldest_first) {
            // Keyset: strictly after the given task in newest-first order (a range on the
            // (created_at, id) index, however deep the page).
            args.push(Box::new(k.created_at_ms));
            args.push(Box::new(k.id.as_str().to_owned()));
            sql.push_str(&format!(
                " AND (created_at, id) < (${}, ${})",
                args.len() - 1,
                args.len()
            ));
        }
        args.push(Box::new(limit_sql(q.limit)));
        let order = if q.oldest_first {
            "updated_at ASC, id ASC"
        } else {
            "created_at DESC, id DESC"
        };
        sql.push_str(&format!(" ORDER BY {order} LIMIT ${}", args.len()));
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let c = self.client(op).await?;
        let rows = c.query(&sql, &params).await.map_err(self.err(op))?;
        Ok(collect_rows(op, rows, task_from_row))
    }

    async fn update_task_with_token(
        &self,
        id: &TaskId,
        token_hash: Option<String>,
        update: TaskUpdateFn,
    ) -> Result<TaskUpdated, StoreError> {
        // Applied to the row the batch reads and locks at its start, then written in its
        // pipeline (see `updates`): the row lock makes the read-modify-write atomic across
        // every replica.
        let (reply, rx) = oneshot::channel();
        let rotates = token_hash.is_some();
        let u = updates::TaskUpdate::new(id.clone(), token_hash, update, reply);
        self.inner
            .writer
            .send((std::time::Instant::now(), Work::Update(Box::new(u))))
            .map_err(|_| StoreError::Closed)?;
        let r = rx.await.map_err(|_| StoreError::Closed);
        if rotates {
            // Whatever the outcome (a failed commit may still have happened): this replica's
            // next request reads the hash again. The others hear of it from the UPDATE's
            // notification.
            self.inner.tokens.forget(id.as_str());
        }
        r?
    }

    async fn upsert_agent(&self, agent: Agent, event: NewEvent) -> Result<Agent, StoreError> {
        let state = serde_json::to_string(&agent.state)
            .map_err(|e| corrupt(format!("agent state: {e}")))?;
        // The agent and its event in one statement.
        let sql = format!(
            "WITH g AS (INSERT INTO agents (name, org, task_id, version, editor_address, \
             registered_at, last_seen_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET org=excluded.org, task_id=excluded.task_id, \
             version=excluded.version, editor_address=excluded.editor_address, \
             last_seen_at=excluded.last_seen_at, state=excluded.state \
             RETURNING {AGENT_COLS}){}, {AGENT_COLS} FROM g",
            journal_cte("g", 9)
        );
        let mut params: Params = vec![
            Box::new(agent.name.as_str().to_owned()),
            Box::new(agent.org.as_str().to_owned()),
            Box::new(agent.task_id.as_ref().map(|t| t.as_str().to_owned())),
            Box::new(agent.version),
            Box::new(agent.editor_address),
            Box::new(ms(agent.registered_at)),
            Box::new(ms(agent.last_seen_at)),
            Box::new(state),
        ];
        journal_params(&mut params, std::slice::from_ref(&event), &[]);
        self.write_piped("upsert agent", sql, params, true, |row| {
            agent_from_row_at(row, 2)
        })
        .await
    }

    async fn touch_agent(
        &self,
        name: &AgentName,
        task: &TaskId,
        at: DateTime<Utc>,
        state: serde_json::Value,
    ) -> Result<bool, StoreError> {
        let op = "touch agent";
        let e = self.err(op);
        let state =
            serde_json::to_string(&state).map_err(|e| corrupt(format!("agent state: {e}")))?;
        // Liveness only: one statement on the soft pool, which does not wait for the WAL
        // flush (the SQLite store's soft write).
        let c = self.soft_client(op).await?;
        let stmt = c.prepare_cached(TOUCH_AGENT).await.map_err(e)?;
        let n = c
            .execute(&stmt, &[&name.as_str(), &ms(at), &state, &task.as_str()])
            .await
            .map_err(e)?;
        Ok(n > 0)
    }

    async fn renew_lease(
        &self,
        task: &TaskId,
        agent: &AgentName,
        fencing: u64,
        ttl: chrono::Duration,
        at: DateTime<Utc>,
        state: serde_json::Value,
    ) -> Result<LeaseRenewed, StoreError> {
        let op = "renew lease";
        let e = self.err(op);
        let state_json =
            serde_json::to_string(&state).map_err(|e| corrupt(format!("agent state: {e}")))?;
        let c = self.soft_client(op).await?;
        // See RENEW_LEASE: the renewal and its heartbeat in one statement.
        let stmt = c.prepare_cached(RENEW_LEASE).await.map_err(e)?;
        let (id, name, f, until, seen) = (
            task.as_str(),
            agent.as_str(),
            cursor(fencing),
            ms(at + ttl),
            ms(at),
        );
        let params: [&(dyn ToSql + Sync); 6] = [&id, &name, &f, &until, &seen, &state_json];
        let renewed = c.query_opt(&stmt, &params).await;
        drop(c);
        match renewed.map_err(e)? {
            Some(row) => Ok(LeaseRenewed {
                task: task_from_row(&row)?,
                registered: Some(get(&row, row.len() - 1)?),
            }),
            // Not a running task held with this token: the exact rules (a rejection, a
            // finished task) through the lifecycle, in the batch. Rare: stale or late agents.
            None => super::renew_lease_in_steps(self, task, agent, fencing, ttl, at, state).await,
        }
    }

    async fn close_agent_editor(
        &self,
        name: &AgentName,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let op = "close agent editor";
        // No ids: an autocommit statement on the pool (durable), outside the ordered batches.
        let c = self.client(op).await?;
        let n = c
            .execute(
                "UPDATE agents SET editor_closed_at = GREATEST(COALESCE(editor_closed_at, 0), $2) \
                 WHERE name = $1",
                &[&name.as_str(), &ms(at)],
            )
            .await
            .map_err(self.err(op))?;
        Ok(n > 0)
    }

    async fn agent_editor_closed_at(
        &self,
        name: &AgentName,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let op = "agent editor closed at";
        let c = self.client(op).await?;
        let row = c
            .query_opt(
                "SELECT editor_closed_at FROM agents WHERE name = $1",
                &[&name.as_str()],
            )
            .await
            .map_err(self.err(op))?;
        let at: Option<i64> = match row {
            Some(r) => get(&r, 0)?,
            None => None,
        };
        at.map(from_ms).transpose()
    }

    async fn get_agent(&self, name: &AgentName) -> Result<Option<Agent>, StoreError> {
        let op = "get agent";
        let c = self.client(op).await?;
        let row = c
            .query_opt(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE name = $1"),
                &[&name.as_str()],
            )
            .await
            .map_err(self.err(op))?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let op = "list agents";
        let c = self.client(op).await?;
        let rows = c
            .query(
                &format!("SELECT {AGENT_COLS} FROM agents ORDER BY last_seen_at DESC, name"),
                &[],
            )
            .await
            .map_err(self.err(op))?;
        Ok(collect_rows(op, rows, agent_from_row))
    }

    async fn append_logs(
        &self,
        task: &TaskId,
        batch: LogBatch,
    ) -> Result<AppendedLogs, StoreError> {
        let task = task.clone();
        self.write_on(Some(task.clone()), move |b| {
            Box::pin(async move {
                let task = &task;
                let e = b.err("append logs");
                let tx = b.c;
                // The task's row lock orders this batch against claims, requeues and other batches of
                // the same task on every replica: once a task is requeued its old agent can no longer
                // write, and nothing lands after the log was sealed. The batch read and locked the
                // row at its start with the other rows it updates (no statement of its own);
                // taking it means a later update in the batch reads it again (this job changes
                // it: log bytes, seal).
                let t = b
                    .lock_row(task, "append logs")
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("task {task}")))?;
                if !t.claimed_by(&batch.agent, batch.fencing) {
                    return Err(StoreError::Rejected(Rejection::stale(format!(
                        "agent {} does not hold the claim of task {task} with fencing token {}",
                        batch.agent, batch.fencing
                    ))));
                }
                if !t.log_open(Utc::now()) {
                    return Err(StoreError::Rejected(Rejection {
                        kind: RejectionKind::LogSealed,
                        message: format!(
                            "the log of task {task} is complete; no more lines are taken"
                        ),
                        field: None,
                    }));
                }
                let stmt = tx
            .prepare_cached(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM logs WHERE task_id = $1)::BIGINT, \
                 log_bytes FROM tasks WHERE id = $1",
            )
            .await
            .map_err(e)?;
                let row = tx.query_one(&stmt, &[&task.as_str()]).await.map_err(e)?;
                let max_seq: i64 = get(&row, 0)?;
                let stored_bytes: i64 = get(&row, 1)?;
                let quota = cursor(batch.quota_bytes);
                let mut bytes = stored_bytes;
                let was_over = bytes > quota;
                // Decide every line first (rejections write nothing), then insert.
                let mut rows: Vec<(i64, LogStream, String, i64)> = Vec::new();
                let mut resent: Vec<i64> = Vec::new();
                for l in &batch.lines {
                    let seq = cursor(l.seq);
                    if seq <= max_seq {
                        resent.push(seq);
                    }
                }
                let known: std::collections::HashSet<i64> = if resent.is_empty() {
                    Default::default()
                } else {
                    tx.query(
                        "SELECT seq FROM logs WHERE task_id = $1 AND seq = ANY($2)",
                        &[&task.as_str(), &resent],
                    )
                    .await
                    .map_err(e)?
                    .iter()
                    .map(|r| get::<i64>(r, 0))
                    .collect::<Result<_, _>>()?
                };
                for (i, l) in batch.lines.iter().enumerate() {
                    let seq = cursor(l.seq);
                    if seq <= max_seq {
                        if known.contains(&seq) {
                            continue; // a re-send
                        }
                        return Err(StoreError::Rejected(Rejection {
                            kind: RejectionKind::LogOutOfOrder,
                            message: format!(
                                "line {seq} of task {task} comes after line {max_seq} was stored; \
                         sequence numbers must grow"
                            ),
                            field: Some(format!("lines[{i}].seq")),
                        }));
                    }
                    if bytes > quota {
                        continue; // over the quota: dropped
                    }
                    let len = i64::try_from(l.line.len()).unwrap_or(i64::MAX);
                    let (stream, line) = if bytes.saturating_add(len) > quota {
                        bytes = quota.saturating_add(1);
                        (LogStream::System, super::quota_note(batch.quota_bytes))
                    } else {
                        bytes += len;
                        (l.stream, l.line.clone())
                    };
                    rows.push((seq, stream, line, ms(l.ts)));
                }
                // Within a batch, seqs after the stored maximum must also be new to each other (a
                // batch repeating a new seq is a re-send of its own line).
                let mut inserted = 0;
                if !rows.is_empty() {
                    b.notify();
                    let stmt = tx
                        .prepare_cached(
                            "INSERT INTO logs (task_id, agent, seq, stream, line, ts) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (task_id, seq) DO NOTHING",
                        )
                        .await
                        .map_err(e)?;
                    for (seq, stream, line, ts) in &rows {
                        let n = tx
                            .execute(
                                &stmt,
                                &[
                                    &task.as_str(),
                                    &batch.agent.as_str(),
                                    seq,
                                    &stream.as_str(),
                                    line,
                                    ts,
                                ],
                            )
                            .await
                            .map_err(e)?;
                        inserted += usize::try_from(n).unwrap_or(0);
                    }
                }
                if bytes != stored_bytes || batch.seal {
                    tx.execute(
                "UPDATE tasks SET log_bytes = $2, log_sealed = (log_sealed OR $3) WHERE id = $1",
                &[&task.as_str(), &bytes, &batch.seal],
            )
            .await
            .map_err(e)?;
                }
                // The highest stored seq: what was stored before, or the last line inserted now.
                let max_seq = rows.iter().map(|r| r.0).fold(max_seq, i64::max);
                Ok(AppendedLogs {
                    inserted,
                    max_seq: id_of(max_seq)?,
                    quota_exceeded: was_over || bytes > quota,
                })
            })
        })
        .await
    }

    async fn append_unclaimed_note(
        &self,
        task: &TaskId,
        agent: &AgentName,
        line: String,
    ) -> Result<Option<u64>, StoreError> {
        let (task, agent) = (task.clone(), agent.clone());
        self.write(move |b| {
            Box::pin(async move {
                let e = b.err("append note");
                let tx = b.c;
                let row = tx
                    .query_opt(
                        "SELECT agent, status FROM tasks WHERE id = $1 FOR UPDATE",
                        &[&task.as_str()],
                    )
                    .await
                    .map_err(e)?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound(format!("task {task}")));
                };
                let current: Option<String> = get(&row, 0)?;
                let status: String = get(&row, 1)?;
                if current.as_deref() != Some(agent.as_str())
                    || status != TaskStatus::Submitted.as_str()
                {
                    return Ok(None);
                }
                b.notify();
                let seq: i64 = tx
                    .query_one(
                        "INSERT INTO logs (task_id, agent, seq, stream, line, ts) \
                 SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5 FROM logs WHERE task_id = $1 \
                 RETURNING seq",
                        &[
                            &task.as_str(),
                            &agent.as_str(),
                            &LogStream::System.as_str(),
                            &line,
                            &ms(Utc::now()),
                        ],
                    )
                    .await
                    .map_err(e)
                    .and_then(|r| get(&r, 0))?;
                Ok(Some(id_of(seq)?))
            })
        })
        .await
    }

    async fn task_logs(
        &self,
        task: &TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let op = "task logs";
        let c = self.client(op).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {LOG_COLS} FROM logs WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .await
            .map_err(self.err(op))?;
        let rows = c
            .query(
                &stmt,
                &[&task.as_str(), &cursor(after_seq), &limit_sql(limit)],
            )
            .await
            .map_err(self.err(op))?;
        Ok(collect_rows(op, rows, log_from_row))
    }

    async fn agent_logs(
        &self,
        agent: &AgentName,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let op = "agent logs";
        let c = self.client(op).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {LOG_COLS} FROM logs WHERE agent = $1 AND id > $2 ORDER BY id LIMIT $3"
            ))
            .await
            .map_err(self.err(op))?;
        let rows = c
            .query(
                &stmt,
                &[&agent.as_str(), &cursor(after_id), &limit_sql(limit)],
            )
            .await
            .map_err(self.err(op))?;
        Ok(collect_rows(op, rows, log_from_row))
    }

    async fn max_log_seq(&self, task: &TaskId) -> Result<u64, StoreError> {
        let op = "max log seq";
        let c = self.client(op).await?;
        // Every claim asks this: prepared once per connection.
        let stmt = c
            .prepare_cached("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM logs WHERE task_id = $1")
            .await
            .map_err(self.err(op))?;
        let row = c
            .query_one(&stmt, &[&task.as_str()])
            .await
            .map_err(self.err(op))?;
        id_of(get(&row, 0)?)
    }

    async fn last_log_id(&self) -> Result<u64, StoreError> {
        let op = "last log id";
        let c = self.client(op).await?;
        let row = c
            .query_one("SELECT COALESCE(MAX(id), 0)::BIGINT FROM logs", &[])
            .await
            .map_err(self.err(op))?;
        id_of(get(&row, 0)?)
    }

    async fn append_events(
        &self,
        events: Vec<NewEvent>,
        audit: Vec<NewAudit>,
    ) -> Result<u64, StoreError> {
        if events.is_empty() && audit.is_empty() {
            return Ok(0);
        }
        // Audit rows and events in one statement (the guard always holds).
        let sql = format!("WITH g AS (SELECT 1){}", journal_cte("g", 1));
        let mut params = Params::new();
        journal_params(&mut params, &events, &audit);
        self.write_piped("append events", sql, params, !events.is_empty(), |row| {
            journaled(row).map(|(_, last)| last)
        })
        .await
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let op = "events";
        let c = self.client(op).await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, ts, kind, task_id, agent, org, status, message FROM events \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .await
            .map_err(self.err(op))?;
        let rows = c
            .query(&stmt, &[&cursor(after), &limit_sql(limit)])
            .await
            .map_err(self.err(op))?;
        Ok(collect_rows(op, rows, event_from_row))
    }

    async fn last_event_id(&self) -> Result<u64, StoreError> {
        let op = "last event id";
        let c = self.client(op).await?;
        let row = c
            .query_one("SELECT COALESCE(MAX(id), 0)::BIGINT FROM events", &[])
            .await
            .map_err(self.err(op))?;
        id_of(get(&row, 0)?)
    }

    async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let op = "audit";
        let c = self.client(op).await?;
        let rows = c
            .query(
                "SELECT id, ts, actor, action, subject, detail FROM audit WHERE id > $1 \
                 ORDER BY id LIMIT $2",
                &[&cursor(after), &limit_sql(limit)],
            )
            .await
            .map_err(self.err(op))?;
        Ok(collect_rows(op, rows, |r| {
            Ok(AuditEntry {
                id: id_of(get(r, 0)?)?,
                ts: from_ms(get(r, 1)?)?,
                actor: get(r, 2)?,
                action: get(r, 3)?,
                subject: get(r, 4)?,
                detail: get(r, 5)?,
            })
        }))
    }

    async fn task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        let op = "count tasks";
        let c = self.client(op).await?;
        let rows = c
            .query("SELECT status, COUNT(*) FROM tasks GROUP BY status", &[])
            .await
            .map_err(self.err(op))?;
        let mut counts: Vec<(TaskStatus, u64)> =
            TaskStatus::ALL.into_iter().map(|s| (s, 0)).collect();
        for r in &rows {
            let status: String = get(r, 0)?;
            let n: i64 = get(r, 1)?;
            if let Some(c) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
                c.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    async fn lead(&self, job: &'static str) -> Result<bool, StoreError> {
        let op = "lead";
        let mut held = self.inner.leaders.lock().await;
        if let Some(c) = held.get(job) {
            // The lock lives as long as its session: check the session is still there.
            if !c.is_closed() && c.simple_query("SELECT 1").await.is_ok() {
                return Ok(true);
            }
            held.remove(job);
            tracing::warn!(job, db = %self.inner.display, "lost the connection holding the lead");
        }
        let c = self.client(op).await?;
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1)", &[&job_key(job)])
            .await
            .map_err(self.err(op))
            .and_then(|r| get(&r, 0))?;
        if got {
            held.insert(job, c);
        }
        Ok(got)
    }

    async fn try_lock(&self, key: &str) -> Result<Option<super::ClusterLock>, StoreError> {
        let op = "try_lock";
        let c = self.client(op).await?;
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1)", &[&job_key(key)])
            .await
            .map_err(self.err(op))
            .and_then(|r| get(&r, 0))?;
        if !got {
            // This session holds nothing: back to the pool.
            return Ok(None);
        }
        Ok(Some(super::ClusterLock::held_by(SessionLock(Some(c)))))
    }

    fn external_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.listening().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_show_the_password() {
        for url in [
            "postgres://guildnet:s3cret-pw@db.example:5433/guildnet",
            "postgresql://guildnet:s3cret-pw@db.example/guildnet?sslmode=disable",
            "postgres://guildnet@db.example/guildnet?password=s3cret-pw",
            "host=db.example user=guildnet password=s3cret-pw dbname=guildnet",
            "postgres://guildnet:s3cret-pw@db.example:notaport/guildnet",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("s3cret-pw"), "{url} -> {shown}");
        }
        assert_eq!(
            redact_url("postgres://guildnet:s3cret-pw@db.example:5433/guildnet"),
            "postgres://guildnet@db.example:5433/guildnet"
        );
        assert!(is_postgres_url("postgres://x@y/z"));
        assert!(is_postgres_url("PostgreSQL://x@y/z"));
        assert!(!is_postgres_url("/var/lib/guildnet/orchestrator.db"));
    }
}
