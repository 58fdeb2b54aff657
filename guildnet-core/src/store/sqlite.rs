//! SQLite implementation of [`StateStore`].
//!
//! One writer thread owns the write connection and commits in groups: it takes every write that
//! is waiting, runs each inside its own savepoint (a failing write rolls back alone), commits
//! once, and only then answers the callers. Reads use a separate connection (WAL lets them run
//! beside the writer) on tokio's blocking pool, so no SQLite work runs on the async runtime.

use super::{
    AppendedLogs, LogBatch, Rejection, RejectionKind, StateStore, StoreError, TaskChange, TaskKey,
    TaskPage, TaskQuery, TaskUpdateFn, TaskUpdated,
};
use crate::context::TaskContext;
use crate::model::{
    Agent, Artifact, AuditEntry, Event, LogLine, LogStream, NewAudit, NewEvent, Org, Task,
    TaskStatus,
};
use crate::names::{AgentName, OrgName, ProcessId, TaskId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Durability {
    /// `synchronous=FULL`: every commit is on disk before it is acknowledged (survives power loss).
    #[default]
    Full,
    /// `synchronous=NORMAL`: survives a process crash (kill -9), may lose the last commits on
    /// power loss.
    Normal,
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orgs (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    org              TEXT NOT NULL,
    task             TEXT NOT NULL,
    agent_hint       TEXT,
    status           TEXT NOT NULL,
    agent            TEXT,
    attempt          INTEGER NOT NULL,
    fencing          INTEGER NOT NULL,
    claims           INTEGER NOT NULL,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    exit_code        INTEGER,
    reason           TEXT,
    artifacts        TEXT NOT NULL,
    pr_url           TEXT,
    token_hash       TEXT NOT NULL
);
CREATE INDEX tasks_status ON tasks(status, updated_at);
CREATE INDEX tasks_created ON tasks(created_at);
CREATE TABLE agents (
    name           TEXT PRIMARY KEY,
    org            TEXT NOT NULL,
    task_id        TEXT,
    version        TEXT,
    editor_address TEXT,
    registered_at  INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    state          TEXT NOT NULL
);
CREATE TABLE logs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    agent   TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    stream  TEXT NOT NULL,
    line    TEXT NOT NULL,
    ts      INTEGER NOT NULL,
    UNIQUE (task_id, seq)
);
CREATE INDEX logs_agent ON logs(agent, id);
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    task_id TEXT,
    agent   TEXT,
    org     TEXT,
    status  TEXT,
    message TEXT
);
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"#,
    // 2: the reaper looks up expired leases by status and expiry.
    r#"
CREATE INDEX tasks_lease ON tasks(status, lease_expires_at);
"#,
    // 3: the task's context (repository, files) as JSON; NULL when empty.
    r#"
ALTER TABLE tasks ADD COLUMN context TEXT;
"#,
    // 4: the log seal, the bytes of log text stored per task (its quota), and a key/value
    //    table the store writes at every open (which also proves the database is writable).
    r#"
ALTER TABLE tasks ADD COLUMN log_sealed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // 5: each task's API JSON, kept with every write, so a listing serves stored bytes
    //    (filled for existing rows at open, see `fill_task_json`); the newest-first listing's
    //    keyset (created_at, id) as one index.
    r#"
ALTER TABLE tasks ADD COLUMN json TEXT;
CREATE INDEX tasks_created_id ON tasks(created_at, id);
DROP INDEX tasks_created;
"#,
    // 6: retention removes a pruned task's events with it; they are found by task.
    r#"
CREATE INDEX events_task ON events(task_id) WHERE task_id IS NOT NULL;
"#,
    // 7: the agent process holding a task's claim (`Task::claim_process`).
    r#"
ALTER TABLE tasks ADD COLUMN claim_process TEXT;
"#,
    // 8: when an agent's editor was last closed, for every replica (ms since the epoch).
    r#"
ALTER TABLE agents ADD COLUMN editor_closed_at INTEGER;
"#,
];

/// Version of the stored task JSON (the `json` column): bump it when [`Task`]'s serialized
/// form changes, and every row's JSON is written anew at the next open.
const TASK_JSON_VERSION: &str = "1";

/// Number of read connections.
const READERS: usize = 4;

/// How much of the database file the readers map (SQLite's `mmap_size`).
const READER_MMAP_BYTES: i64 = 128 * 1024 * 1024;

/// Size of the pieces a task page is written in: under glibc's mmap threshold, so the buffers
/// of one listing are reused by the next instead of being mapped and faulted in afresh.
const PAGE_CHUNK: usize = 32 * 1024;

type Finish = Box<dyn FnOnce(Option<String>) + Send>;

/// One write for the writer thread.
struct WriteJob {
    /// Must be on disk before it is acknowledged (with [`Durability::Full`]). Soft writes
    /// (liveness: an agent's last-seen time and reported state) may ride a commit without an
    /// fsync; they still survive a process crash, and the next durable commit syncs them too.
    durable: bool,
    run: Box<dyn FnOnce(&mut Transaction<'_>) -> Finish + Send>,
}

/// SQLite-backed [`StateStore`]. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    /// Read connections; a read takes the first free one (WAL readers do not block each other
    /// or the writer), so a long scan does not hold up short lookups.
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// One permit per read connection: reads wait here, asynchronously, rather than as
    /// blocked threads of tokio's blocking pool (which grows to hundreds of threads, and
    /// their memory, under thousands of concurrent agents).
    read_permits: tokio::sync::Semaphore,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The checkpoint thread and the sender whose drop stops it (after one last checkpoint).
    checkpoints: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// Group commit counters, for [`SqliteStore::commit_stats`].
    stats: Arc<CommitCounters>,
}

#[derive(Default)]
struct CommitCounters {
    batches: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    largest: std::sync::atomic::AtomicU64,
}

/// How the writer has grouped writes into commits since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed (each one fsync with [`Durability::Full`], when it holds a
    /// durable write).
    pub batches: u64,
    /// Writes they held.
    pub writes: u64,
    /// Most writes in one commit.
    pub largest: u64,
}

/// A dropped store leaves no thread behind that still has the file open: the writer finishes
/// its queued writes and the checkpoint thread its last checkpoint before the drop returns.
impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Ok(mut h) = self.worker.lock() {
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
        if let Ok(mut c) = self.checkpoints.lock() {
            if let Some((stop, h)) = c.take() {
                drop(stop);
                let _ = h.join();
            }
        }
    }
}

fn db(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A resume cursor (id or sequence number) as SQLite's integer: a cursor beyond every stored
/// value means "nothing after it", so it saturates instead of wrapping to a negative number.
fn cursor(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored id or sequence number (never negative) as the API's integer.
fn id_of(v: i64) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative id {v}")))
}

/// Collects rows, skipping (and logging) rows that cannot be decoded, so one corrupt row does
/// not make a whole listing fail. Errors of the query itself still fail it.
fn collect_rows<T>(
    what: &'static str,
    rows: impl Iterator<Item = rusqlite::Result<T>>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for r in rows {
        match r {
            Ok(v) => out.push(v),
            Err(
                e @ (rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)),
            ) => {
                tracing::warn!(error = %e, what, "sqlite: skipping a row that cannot be decoded");
            }
            Err(e) => {
                return Err(StoreError::Db {
                    op: what,
                    source: e,
                })
            }
        }
    }
    Ok(out)
}

fn from_ms(v: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| corrupt(format!("timestamp {v}")))
}

fn opt_from_ms(v: Option<i64>) -> rusqlite::Result<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

fn corrupt(msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(StoreError::Corrupt(msg)),
    )
}

fn parse_name<T>(
    v: String,
    f: impl Fn(String) -> Result<T, crate::names::ValidationError>,
) -> rusqlite::Result<T> {
    f(v).map_err(|e| corrupt(e.to_string()))
}

fn open_conn(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let conn = Connection::open(path)
        .map_err(|e| read_only_or(db("open database")(e), path))
        .map_err(|e| match e {
            StoreError::Db { source, .. } => open_err(source),
            other => other,
        })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(open_err)?;
    // Every statement of the hot paths stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"
    ))
    .map_err(|e| read_only_or(db("enable WAL")(e), path))
    .map_err(|e| match e {
        StoreError::Db { source, .. } => open_err(source),
        other => other,
    })?;
    Ok(conn)
}

/// Creates the database file with mode 0600 before SQLite opens it: SQLite gives its `-wal`
/// and `-shm` files the database file's mode, so they are private from the first start.
fn create_private_db_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let open_err = |e: std::io::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // An existing database keeps its data; tighten its mode (and its companions').
            for suffix in ["", "-wal", "-shm"] {
                let p = PathBuf::from(format!("{}{suffix}", path.display()));
                if p.exists() {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                        .or_else(|e| match e.raw_os_error() {
                            // A read-only file system: the probe write reports it clearly.
                            Some(nix::libc::EROFS) | Some(nix::libc::EPERM) => Ok(()),
                            _ => Err(e),
                        })
                        .map_err(open_err)?;
                }
            }
            Ok(())
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::EROFS) | Some(nix::libc::EACCES)
            ) =>
        {
            Err(StoreError::ReadOnly {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
        Err(e) => Err(open_err(e)),
    }
}

/// Maps SQLite's "read-only database" failures to [`StoreError::ReadOnly`].
fn read_only_or(e: StoreError, path: &Path) -> StoreError {
    let code = match &e {
        StoreError::Db {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } => Some(f.code),
        _ => None,
    };
    match code {
        Some(rusqlite::ErrorCode::ReadOnly) | Some(rusqlite::ErrorCode::CannotOpen) => {
            StoreError::ReadOnly {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        }
        _ => e,
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("read schema version"))?;
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this build supports ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db("begin migration"))?;
        tx.execute_batch(sql).map_err(db("apply migration"))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(db("record schema version"))?;
        tx.commit().map_err(db("commit migration"))?;
    }
    Ok(())
}

/// A task's API JSON as stored: exactly what `serde_json` makes of the task as it reads back
/// from the database (timestamps are stored in milliseconds).
fn task_json(t: &Task) -> Result<String, StoreError> {
    let whole_ms = |d: &DateTime<Utc>| d.timestamp_subsec_nanos() % 1_000_000 == 0;
    let aligned = [t.lease_expires_at, t.started_at, t.finished_at]
        .iter()
        .flatten()
        .chain([&t.created_at, &t.updated_at])
        .all(whole_ms);
    let out = if aligned {
        serde_json::to_string(t)
    } else {
        let to_ms =
            |d: DateTime<Utc>| DateTime::from_timestamp_millis(d.timestamp_millis()).unwrap_or(d);
        let mut c = t.clone();
        c.created_at = to_ms(c.created_at);
        c.updated_at = to_ms(c.updated_at);
        c.lease_expires_at = c.lease_expires_at.map(to_ms);
        c.started_at = c.started_at.map(to_ms);
        c.finished_at = c.finished_at.map(to_ms);
        serde_json::to_string(&c)
    };
    out.map_err(|e| StoreError::Corrupt(format!("task json: {e}")))
}

/// Writes the JSON of every task that has none (rows from before the column, or all rows
/// after [`TASK_JSON_VERSION`] changed), in batches.
fn fill_task_json(conn: &mut Connection) -> Result<(), StoreError> {
    let version: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'task_json'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db("read task json version"))?;
    if version.as_deref() != Some(TASK_JSON_VERSION) {
        conn.execute("UPDATE tasks SET json = NULL", [])
            .map_err(db("reset task json"))?;
    }
    let mut after = i64::MIN;
    loop {
        let tx = conn.transaction().map_err(db("begin task json fill"))?;
        let ids: Vec<(i64, String)> = {
            let mut st = tx
                .prepare(
                    "SELECT rowid, id FROM tasks WHERE rowid > ?1 AND json IS NULL \
                     ORDER BY rowid LIMIT 1000",
                )
                .map_err(db("find tasks without json"))?;
            let rows = st
                .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db("find tasks without json"))?;
            rows.collect::<Result<_, _>>()
                .map_err(db("find tasks without json"))?
        };
        let Some((last, _)) = ids.last() else {
            tx.commit().map_err(db("commit task json fill"))?;
            break;
        };
        after = *last;
        for (_, id) in &ids {
            let Ok(id) = TaskId::new(id.as_str()) else {
                continue;
            };
            // A row that does not decode keeps NULL; listings skip it, as they did before.
            let Ok(Some(t)) = load_task(&tx, &id) else {
                continue;
            };
            tx.execute(
                "UPDATE tasks SET json = ?2 WHERE id = ?1",
                params![id.as_str(), task_json(&t)?],
            )
            .map_err(db("fill task json"))?;
        }
        tx.commit().map_err(db("commit task json fill"))?;
    }
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('task_json', ?1) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [TASK_JSON_VERSION],
    )
    .map_err(db("record task json version"))?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::state_dir::create_private_dir(parent).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        create_private_db_file(&path)?;
        let mut writer = open_conn(&path, durability)?;
        migrate(&mut writer).map_err(|e| read_only_or(e, &path))?;
        fill_task_json(&mut writer).map_err(|e| read_only_or(e, &path))?;
        // A real write at every open: a read-only file, directory or file system fails here,
        // at start, rather than as a 500 on the first request.
        writer
            .execute(
                "INSERT INTO meta (key, value) VALUES ('opened_at', ?1) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [Utc::now().to_rfc3339()],
            )
            .map_err(|e| read_only_or(db("record open")(e), &path))?;
        // Commits never checkpoint themselves (that would stall them on the database file's
        // fsync); a background thread checkpoints instead.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db("disable auto-checkpoint"))?;
        let checkpointer = open_conn(&path, durability)?;
        let readers = (0..READERS)
            .map(|_| {
                let c = open_conn(&path, durability)?;
                // Readers map the database file instead of copying every page they read out
                // of the OS page cache (a listing reads hundreds of pages); the mapping is
                // file-backed, shared by the readers and reclaimable.
                c.pragma_update(None, "mmap_size", READER_MMAP_BYTES)
                    .map_err(db("map database"))?;
                Ok(Arc::new(Mutex::new(c)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let checkpoints = std::thread::Builder::new()
            .name("guildnet-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, stop_rx))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: format!("cannot start checkpoint thread: {e}"),
            })?;
        let (tx, rx) = mpsc::channel::<WriteJob>();
        let stats = Arc::new(CommitCounters::default());
        let worker = std::thread::Builder::new()
            .name("guildnet-sqlite-writer".into())
            .spawn({
                let stats = stats.clone();
                move || writer_loop(writer, rx, durability, &stats)
            })
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Some(tx)),
                read_permits: tokio::sync::Semaphore::new(readers.len().max(1)),
                readers,
                next_reader: std::sync::atomic::AtomicUsize::new(0),
                worker: Mutex::new(Some(worker)),
                checkpoints: Mutex::new(Some((stop_tx, checkpoints))),
                stats,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How writes were grouped into commits so far (group commit batch sizes).
    pub fn commit_stats(&self) -> CommitStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.stats;
        CommitStats {
            batches: c.batches.load(Relaxed),
            writes: c.writes.load(Relaxed),
            largest: c.largest.load(Relaxed),
        }
    }

    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_with(true, f).await
    }

    /// A write that need not wait for an fsync (see [`WriteJob::durable`]).
    async fn write_soft<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_with(false, f).await
    }

    async fn write_with<R, F>(&self, durable: bool, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<R, StoreError>>();
        let run = Box::new(move |txn: &mut Transaction<'_>| {
            // Each job in its own savepoint (statements cached: they run for every write), so a
            // failing job rolls back alone.
            let conn: &Connection = txn;
            let sp = |sql: &'static str| -> Result<(), StoreError> {
                conn.prepare_cached(sql)
                    .and_then(|mut st| st.execute([]))
                    .map(|_| ())
                    .map_err(|e| StoreError::Db {
                        op: "savepoint",
                        source: e,
                    })
            };
            let result = match sp("SAVEPOINT job") {
                Ok(()) => {
                    let r = f(conn);
                    match &r {
                        Ok(_) => match sp("RELEASE job") {
                            Ok(()) => r,
                            Err(e) => Err(e),
                        },
                        Err(_) => {
                            let _ = sp("ROLLBACK TO job").and_then(|()| sp("RELEASE job"));
                            r
                        }
                    }
                }
                Err(e) => Err(e),
            };
            Box::new(move |commit_err: Option<String>| {
                let out = match commit_err {
                    None => result,
                    Some(msg) => Err(StoreError::Corrupt(format!("commit failed: {msg}"))),
                };
                let _ = tx.send(out);
            }) as Finish
        });
        let job = WriteJob { durable, run };
        {
            let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender.send(job).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let n = inner.readers.len();
            let start = inner
                .next_reader
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Take a free connection if there is one, else wait for our round-robin pick.
            let free = (0..n).find_map(|i| inner.readers[(start + i) % n].try_lock().ok());
            let conn = match free {
                Some(c) => c,
                None => inner.readers[start % n]
                    .lock()
                    .map_err(|_| StoreError::Closed)?,
            };
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// Checkpoints the WAL into the database file twice a second (PASSIVE: never blocks writers or
/// readers), and once more when the store closes.
fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    loop {
        let stopping = !matches!(
            stop.recv_timeout(std::time::Duration::from_millis(500)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "sqlite: checkpoint failed");
        }
        if stopping {
            return;
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<WriteJob>,
    durability: Durability,
    stats: &CommitCounters,
) {
    const MAX_BATCH: usize = 256;
    let mut synced = durability == Durability::Full;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // A batch of soft writes only commits without an fsync (WAL + NORMAL); a batch with a
        // durable write syncs the WAL, which also covers every earlier soft commit.
        let sync = durability == Durability::Full && jobs.iter().any(|j| j.durable);
        if sync != synced {
            let level = if sync { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", level) {
                Ok(()) => synced = sync,
                Err(e) => tracing::warn!(error = %e, level, "sqlite: cannot set synchronous"),
            }
        }
        // IMMEDIATE: the write lock is taken at BEGIN (under the busy timeout), never by
        // upgrading a read snapshot mid-batch, which SQLite may refuse at once with "database
        // is locked" (seen as a rare 500 on /agent/heartbeat under 10,000 agents).
        let mut txn = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "sqlite: cannot begin transaction");
                // Jobs are dropped; their callers see the store as closed for this write.
                drop(jobs);
                continue;
            }
        };
        let n = jobs.len() as u64;
        let finishers: Vec<Finish> = jobs.into_iter().map(|job| (job.run)(&mut txn)).collect();
        {
            use std::sync::atomic::Ordering::Relaxed;
            stats.batches.fetch_add(1, Relaxed);
            stats.writes.fetch_add(n, Relaxed);
            stats.largest.fetch_max(n, Relaxed);
        }
        let commit_err = txn.commit().err().map(|e| e.to_string());
        if let Some(msg) = &commit_err {
            tracing::error!(error = %msg, "sqlite: commit failed");
        }
        for f in finishers {
            f(commit_err.clone());
        }
    }
}

/// The task columns [`task_from_row`] reads, as a literal for `concat!`.
macro_rules! task_cols {
    () => {
        "id, org, task, agent_hint, status, agent, attempt, fencing, claims, \
         lease_expires_at, created_at, updated_at, started_at, finished_at, exit_code, reason, \
         artifacts, pr_url, context, log_sealed, claim_process"
    };
}
const TASK_COLS: &str = task_cols!();

fn task_from_row(r: &Row<'_>) -> rusqlite::Result<Task> {
    let status: String = r.get(4)?;
    let artifacts: String = r.get(16)?;
    Ok(Task {
        id: parse_name(r.get(0)?, TaskId::new)?,
        org: parse_name(r.get(1)?, OrgName::new)?,
        task: r.get(2)?,
        agent_hint: r.get(3)?,
        status: TaskStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?,
        agent: r
            .get::<_, Option<String>>(5)?
            .map(|a| parse_name(a, AgentName::new))
            .transpose()?,
        attempt: r.get(6)?,
        fencing: id_of(r.get(7)?)?,
        claims: r.get(8)?,
        lease_expires_at: opt_from_ms(r.get(9)?)?,
        created_at: from_ms(r.get(10)?)?,
        updated_at: from_ms(r.get(11)?)?,
        started_at: opt_from_ms(r.get(12)?)?,
        finished_at: opt_from_ms(r.get(13)?)?,
        exit_code: r.get(14)?,
        reason: r.get(15)?,
        artifacts: serde_json::from_str::<Vec<Artifact>>(&artifacts)
            .map_err(|e| corrupt(format!("artifacts: {e}")))?,
        pr_url: r.get(17)?,
        context: match r.get::<_, Option<String>>(18)? {
            None => TaskContext::default(),
            Some(j) => serde_json::from_str(&j).map_err(|e| corrupt(format!("context: {e}")))?,
        },
        log_sealed: r.get(19)?,
        claim_process: r
            .get::<_, Option<String>>(20)?
            .map(|p| parse_name(p, ProcessId::new))
            .transpose()?,
    })
}

fn context_json(c: &TaskContext) -> Result<Option<String>, StoreError> {
    if c.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(c)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("context: {e}")))
}

fn artifacts_json(a: &[Artifact]) -> Result<String, StoreError> {
    serde_json::to_string(a).map_err(|e| StoreError::Corrupt(format!("artifacts: {e}")))
}

fn load_task(conn: &Connection, id: &TaskId) -> Result<Option<Task>, StoreError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        task_cols!(),
        " FROM tasks WHERE id = ?1"
    ))
    .map_err(db("load task"))?
    .query_row([id.as_str()], task_from_row)
    .optional()
    .map_err(db("load task"))
}

fn save_task(conn: &Connection, t: &Task) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE tasks SET status=?2, agent=?3, attempt=?4, fencing=?5, claims=?6, \
         lease_expires_at=?7, updated_at=?8, started_at=?9, finished_at=?10, exit_code=?11, \
         reason=?12, artifacts=?13, pr_url=?14, agent_hint=?15, task=?16, log_sealed=?17, \
         json=?18, claim_process=?19 WHERE id=?1",
    )
    .map_err(db("update task"))?
    .execute(params![
        t.id.as_str(),
        t.status.as_str(),
        t.agent.as_ref().map(|a| a.as_str()),
        t.attempt,
        t.fencing as i64,
        t.claims,
        t.lease_expires_at.map(ms),
        ms(t.updated_at),
        t.started_at.map(ms),
        t.finished_at.map(ms),
        t.exit_code,
        t.reason,
        artifacts_json(&t.artifacts)?,
        t.pr_url,
        t.agent_hint,
        t.task,
        t.log_sealed,
        task_json(t)?,
        t.claim_process.as_ref().map(|p| p.as_str()),
    ])
    .map_err(db("update task"))?;
    Ok(())
}

fn insert_events(conn: &Connection, events: &[NewEvent], now: i64) -> Result<u64, StoreError> {
    let mut last = 0;
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO events (ts, kind, task_id, agent, org, status, message) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db("prepare event insert"))?;
    for e in events {
        stmt.execute(params![
            now,
            e.kind,
            e.task_id.as_ref().map(|v| v.as_str()),
            e.agent.as_ref().map(|v| v.as_str()),
            e.org.as_ref().map(|v| v.as_str()),
            e.status.map(|s| s.as_str()),
            e.message,
        ])
        .map_err(db("insert event"))?;
        last = id_of(conn.last_insert_rowid()).map_err(db("event id"))?;
    }
    Ok(last)
}

fn insert_audit(conn: &Connection, rows: &[NewAudit], now: i64) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO audit (ts, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db("prepare audit insert"))?;
    for a in rows {
        stmt.execute(params![now, a.actor, a.action, a.subject, a.detail])
            .map_err(db("insert audit"))?;
    }
    Ok(())
}

fn agent_from_row(r: &Row<'_>) -> rusqlite::Result<Agent> {
    let state: String = r.get(7)?;
    Ok(Agent {
        name: parse_name(r.get(0)?, AgentName::new)?,
        org: parse_name(r.get(1)?, OrgName::new)?,
        task_id: r
            .get::<_, Option<String>>(2)?
            .map(|t| parse_name(t, TaskId::new))
            .transpose()?,
        version: r.get(3)?,
        editor_address: r.get(4)?,
        registered_at: from_ms(r.get(5)?)?,
        last_seen_at: from_ms(r.get(6)?)?,
        state: serde_json::from_str(&state).map_err(|e| corrupt(format!("agent state: {e}")))?,
    })
}

const AGENT_COLS: &str =
    "name, org, task_id, version, editor_address, registered_at, last_seen_at, state";

fn log_from_row(r: &Row<'_>) -> rusqlite::Result<LogLine> {
    let stream: String = r.get(4)?;
    Ok(LogLine {
        id: id_of(r.get(0)?)?,
        task_id: parse_name(r.get(1)?, TaskId::new)?,
        agent: parse_name(r.get(2)?, AgentName::new)?,
        seq: id_of(r.get(3)?)?,
        stream: LogStream::parse(&stream).ok_or_else(|| corrupt(format!("stream {stream}")))?,
        line: r.get(5)?,
        ts: from_ms(r.get(6)?)?,
    })
}

const LOG_COLS: &str = "id, task_id, agent, seq, stream, line, ts";

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    let status: Option<String> = r.get(6)?;
    Ok(Event {
        id: id_of(r.get(0)?)?,
        ts: from_ms(r.get(1)?)?,
        kind: r.get(2)?,
        task_id: r
            .get::<_, Option<String>>(3)?
            .map(|v| parse_name(v, TaskId::new))
            .transpose()?,
        agent: r
            .get::<_, Option<String>>(4)?
            .map(|v| parse_name(v, AgentName::new))
            .transpose()?,
        org: r
            .get::<_, Option<String>>(5)?
            .map(|v| parse_name(v, OrgName::new))
            .transpose()?,
        status: status
            .map(|s| TaskStatus::parse(&s).ok_or_else(|| corrupt(format!("status {s}"))))
            .transpose()?,
        message: r.get(7)?,
    })
}

fn limit_sql(limit: usize) -> i64 {
    if limit == 0 {
        -1
    } else {
        limit as i64
    }
}

/// The SQL (selecting `cols`) and arguments of a task query.
fn task_query_sql(cols: &str, q: &TaskQuery) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = format!("SELECT {cols} FROM tasks WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if !q.statuses.is_empty() {
        let marks: Vec<String> = q
            .statuses
            .iter()
            .map(|s| {
                args.push(s.as_str().to_owned().into());
                format!("?{}", args.len())
            })
            .collect();
        sql.push_str(&format!(" AND status IN ({})", marks.join(",")));
    }
    if let Some(org) = &q.org {
        args.push(org.as_str().to_owned().into());
        sql.push_str(&format!(" AND org = ?{}", args.len()));
    }
    if !q.exclude_orgs.is_empty() {
        let marks: Vec<String> = q
            .exclude_orgs
            .iter()
            .map(|o| {
                args.push(o.as_str().to_owned().into());
                format!("?{}", args.len())
            })
            .collect();
        sql.push_str(&format!(" AND org NOT IN ({})", marks.join(",")));
    }
    if let Some(t) = q.lease_expired_before {
        args.push(ms(t).into());
        sql.push_str(&format!(
            " AND lease_expires_at IS NOT NULL AND lease_expires_at < ?{}",
            args.len()
        ));
    }
    if let Some(t) = q.updated_before {
        args.push(ms(t).into());
        sql.push_str(&format!(" AND updated_at < ?{}", args.len()));
    }
    if let (Some(k), false) = (&q.after, q.oldest_first) {
        // Keyset: strictly after the given task in newest-first order (a range on the
        // (created_at, id) index, however deep the page).
        args.push(k.created_at_ms.into());
        args.push(k.id.as_str().to_owned().into());
        sql.push_str(&format!(
            " AND (created_at, id) < (?{}, ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    args.push(limit_sql(q.limit).into());
    let order = if q.oldest_first {
        "updated_at ASC, id ASC"
    } else {
        "created_at DESC, id DESC"
    };
    sql.push_str(&format!(" ORDER BY {order} LIMIT ?{}", args.len()));
    (sql, args)
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn create_org(&self, name: &OrgName, audit: NewAudit) -> Result<Org, StoreError> {
        let name = name.clone();
        self.write(move |tx| {
            let now = Utc::now();
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO orgs (name, created_at) VALUES (?1, ?2)",
                    params![name.as_str(), ms(now)],
                )
                .map_err(db("insert org"))?;
            if n == 0 {
                return Err(StoreError::AlreadyExists(format!("org {name}")));
            }
            insert_audit(tx, &[audit], ms(now))?;
            Ok(Org {
                name,
                created_at: from_ms(ms(now)).map_err(db("timestamp"))?,
            })
        })
        .await
    }

    async fn get_org(&self, name: &OrgName) -> Result<Option<Org>, StoreError> {
        let name = name.clone();
        self.read(move |c| {
            c.prepare_cached("SELECT name, created_at FROM orgs WHERE name = ?1")
                .map_err(db("get org"))?
                .query_row([name.as_str()], |r| {
                    Ok(Org {
                        name: parse_name(r.get(0)?, OrgName::new)?,
                        created_at: from_ms(r.get(1)?)?,
                    })
                })
                .optional()
                .map_err(db("get org"))
        })
        .await
    }

    async fn delete_org(&self, name: &OrgName, audit: NewAudit) -> Result<(), StoreError> {
        let name = name.clone();
        self.write(move |tx| {
            let active: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM tasks WHERE org = ?1 AND status NOT IN \
                     ('Succeeded', 'Failed', 'Cancelled')",
                    [name.as_str()],
                    |r| r.get(0),
                )
                .map_err(db("count org tasks"))?;
            if active > 0 {
                return Err(StoreError::InUse(format!(
                    "org {name} has {active} unfinished task(s); cancel them or wait for them \
                     to finish first"
                )));
            }
            let n = tx
                .execute("DELETE FROM orgs WHERE name = ?1", [name.as_str()])
                .map_err(db("delete org"))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("org {name}")));
            }
            insert_audit(tx, &[audit], ms(Utc::now()))?;
            Ok(())
        })
        .await
    }

    async fn prune_finished(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        let before = ms(before);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |tx| {
            let ids: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id FROM tasks WHERE status IN ('Succeeded', 'Failed', 'Cancelled') \
                         AND finished_at IS NOT NULL AND finished_at < ?1 \
                         ORDER BY finished_at LIMIT ?2",
                    )
                    .map_err(db("prepare prune select"))?;
                let rows = stmt
                    .query_map(rusqlite::params![before, limit], |r| r.get(0))
                    .map_err(db("select tasks to prune"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(db("read tasks to prune"))?
            };
            for id in &ids {
                for sql in [
                    "DELETE FROM logs WHERE task_id = ?1",
                    "DELETE FROM events WHERE task_id = ?1",
                    "DELETE FROM agents WHERE task_id = ?1",
                    "DELETE FROM tasks WHERE id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut st| st.execute([id]))
                        .map_err(db("prune a task"))?;
                }
            }
            if !ids.is_empty() {
                let audit = NewAudit::new(
                    "system",
                    "retention.prune",
                    &format!("{} task(s)", ids.len()),
                    Some(format!(
                        "finished before {}",
                        from_ms(before).map(|t| t.to_rfc3339()).unwrap_or_default()
                    )),
                );
                insert_audit(tx, &[audit], ms(Utc::now()))?;
            }
            ids.into_iter()
                .map(|id| {
                    TaskId::parse_field("id", &id)
                        .map_err(|e| StoreError::Corrupt(format!("task id {id:?}: {e}")))
                })
                .collect()
        })
        .await
    }

    async fn list_orgs(&self) -> Result<Vec<Org>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT name, created_at FROM orgs ORDER BY name")
                .map_err(db("list orgs"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Org {
                        name: parse_name(r.get(0)?, OrgName::new)?,
                        created_at: from_ms(r.get(1)?)?,
                    })
                })
                .map_err(db("list orgs"))?;
            collect_rows("list orgs", rows)
        })
        .await
    }

    async fn insert_task_with_events(
        &self,
        task: Task,
        token_hash: String,
        events: Vec<NewEvent>,
        audit: Vec<NewAudit>,
    ) -> Result<u64, StoreError> {
        self.write(move |tx| {
            let t = &task;
            let n = tx
                .prepare_cached(concat!(
                    "INSERT OR IGNORE INTO tasks (",
                    task_cols!(),
                    ", token_hash, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                     ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
                ))
                .map_err(db("insert task"))?
                .execute(params![
                    t.id.as_str(),
                    t.org.as_str(),
                    t.task,
                    t.agent_hint,
                    t.status.as_str(),
                    t.agent.as_ref().map(|a| a.as_str()),
                    t.attempt,
                    t.fencing as i64,
                    t.claims,
                    t.lease_expires_at.map(ms),
                    ms(t.created_at),
                    ms(t.updated_at),
                    t.started_at.map(ms),
                    t.finished_at.map(ms),
                    t.exit_code,
                    t.reason,
                    artifacts_json(&t.artifacts)?,
                    t.pr_url,
                    context_json(&t.context)?,
                    t.log_sealed,
                    t.claim_process.as_ref().map(|p| p.as_str()),
                    token_hash,
                    task_json(t)?,
                ])
                .map_err(db("insert task"))?;
            if n == 0 {
                return Err(StoreError::AlreadyExists(format!("task {}", t.id)));
            }
            let now = ms(Utc::now());
            insert_audit(tx, &audit, now)?;
            insert_events(tx, &events, now)
        })
        .await
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        let id = id.clone();
        self.read(move |c| load_task(c, &id)).await
    }

    async fn task_token_hash(&self, id: &TaskId) -> Result<Option<String>, StoreError> {
        let id = id.clone();
        self.read(move |c| {
            c.prepare_cached("SELECT token_hash FROM tasks WHERE id = ?1")
                .map_err(db("get token hash"))?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()
                .map_err(db("get token hash"))
        })
        .await
    }

    async fn task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                .map_err(db("count tasks"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db("count tasks"))?;
            let mut counts: Vec<(TaskStatus, u64)> =
                TaskStatus::ALL.into_iter().map(|s| (s, 0)).collect();
            for row in rows {
                let (status, n) = row.map_err(db("count tasks"))?;
                if let Some(c) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
                    c.1 = u64::try_from(n).unwrap_or(0);
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn list_tasks(&self, q: TaskQuery) -> Result<Vec<Task>, StoreError> {
        self.read(move |c| {
            let (sql, args) = task_query_sql(TASK_COLS, &q);
            let mut stmt = c.prepare_cached(&sql).map_err(db("list tasks"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), task_from_row)
                .map_err(db("list tasks"))?;
            collect_rows("list tasks", rows)
        })
        .await
    }

    async fn task_page(&self, q: TaskQuery) -> Result<TaskPage, StoreError> {
        self.read(move |c| {
            let (sql, args) = task_query_sql("json, created_at, id", &q);
            let mut stmt = c.prepare_cached(&sql).map_err(db("list tasks"))?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(args))
                .map_err(db("list tasks"))?;
            let mut page = TaskPage::default();
            let mut buf = Vec::with_capacity(PAGE_CHUNK);
            buf.push(b'[');
            let mut last: Option<(i64, String)> = None;
            while let Some(r) = rows.next().map_err(db("list tasks"))? {
                let id = match r.get_ref(2).map_err(db("list tasks"))? {
                    rusqlite::types::ValueRef::Text(b) => std::str::from_utf8(b).unwrap_or(""),
                    _ => "",
                };
                let stored;
                let json = match r.get_ref(0).map_err(db("list tasks"))? {
                    rusqlite::types::ValueRef::Text(j) => j,
                    _ => {
                        // No stored JSON (a row that did not decode when it was filled):
                        // decode it now, or skip it, as listings always did.
                        let t = TaskId::new(id)
                            .ok()
                            .and_then(|id| load_task(c, &id).ok().flatten());
                        let Some(t) = t else { continue };
                        stored = task_json(&t)?;
                        stored.as_bytes()
                    }
                };
                if buf.len() + json.len() + 1 > PAGE_CHUNK && !buf.is_empty() {
                    page.json.push(bytes::Bytes::from(std::mem::replace(
                        &mut buf,
                        Vec::with_capacity(PAGE_CHUNK),
                    )));
                }
                if page.count > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(json);
                page.count += 1;
                let created: i64 = r.get(1).map_err(db("list tasks"))?;
                match &mut last {
                    Some((ms, last_id)) => {
                        *ms = created;
                        last_id.clear();
                        last_id.push_str(id);
                    }
                    None => last = Some((created, id.to_owned())),
                }
            }
            buf.push(b']');
            page.json.push(bytes::Bytes::from(buf));
            page.last = last.and_then(|(created_at_ms, id)| {
                Some(TaskKey {
                    created_at_ms,
                    id: TaskId::new(id).ok()?,
                })
            });
            Ok(page)
        })
        .await
    }

    async fn update_task_with_token(
        &self,
        id: &TaskId,
        token_hash: Option<String>,
        update: TaskUpdateFn,
    ) -> Result<TaskUpdated, StoreError> {
        let id = id.clone();
        self.write(move |tx| {
            let before =
                load_task(tx, &id)?.ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
            let mut after = before.clone();
            let change: TaskChange = update(&mut after).map_err(StoreError::Rejected)?;
            let changed = after != before || !change.events.is_empty() || token_hash.is_some();
            if !changed {
                return Ok(TaskUpdated {
                    task: after,
                    changed: false,
                    last_event_id: None,
                    max_log_seq: None,
                });
            }
            save_task(tx, &after)?;
            if let Some(h) = &token_hash {
                tx.prepare_cached("UPDATE tasks SET token_hash = ?2 WHERE id = ?1")
                    .map_err(db("update token hash"))?
                    .execute(params![id.as_str(), h])
                    .map_err(db("update token hash"))?;
            }
            let now = ms(Utc::now());
            insert_audit(tx, &change.audit, now)?;
            let last = insert_events(tx, &change.events, now)?;
            let max_log_seq = tx
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE task_id = ?1")
                .and_then(|mut s| s.query_row([id.as_str()], |r| r.get::<_, i64>(0)))
                .and_then(id_of)
                .map_err(db("max log seq"))?;
            Ok(TaskUpdated {
                task: after,
                changed: true,
                last_event_id: (!change.events.is_empty()).then_some(last),
                max_log_seq: Some(max_log_seq),
            })
        })
        .await
    }

    async fn upsert_agent(&self, agent: Agent, event: NewEvent) -> Result<Agent, StoreError> {
        self.write(move |tx| {
            let state = serde_json::to_string(&agent.state)
                .map_err(|e| StoreError::Corrupt(format!("agent state: {e}")))?;
            tx.execute(
                "INSERT INTO agents (name, org, task_id, version, editor_address, registered_at, \
                 last_seen_at, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT(name) DO UPDATE SET org=excluded.org, task_id=excluded.task_id, \
                 version=excluded.version, editor_address=excluded.editor_address, \
                 last_seen_at=excluded.last_seen_at, state=excluded.state",
                params![
                    agent.name.as_str(),
                    agent.org.as_str(),
                    agent.task_id.as_ref().map(|t| t.as_str()),
                    agent.version,
                    agent.editor_address,
                    ms(agent.registered_at),
                    ms(agent.last_seen_at),
                    state,
                ],
            )
            .map_err(db("upsert agent"))?;
            insert_events(tx, &[event], ms(Utc::now()))?;
            tx.query_row(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE name = ?1"),
                [agent.name.as_str()],
                agent_from_row,
            )
            .map_err(db("reload agent"))
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
        let name = name.clone();
        let task = task.clone();
        // Liveness only: a soft write (no fsync wait on the heartbeat path).
        self.write_soft(move |tx| {
            let state = serde_json::to_string(&state)
                .map_err(|e| StoreError::Corrupt(format!("agent state: {e}")))?;
            let n = tx
                .execute(
                    "UPDATE agents SET last_seen_at = ?2, state = ?3 WHERE name = ?1 AND task_id = ?4",
                    params![name.as_str(), ms(at), state, task.as_str()],
                )
                .map_err(db("touch agent"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn close_agent_editor(
        &self,
        name: &AgentName,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE agents SET editor_closed_at = MAX(COALESCE(editor_closed_at, 0), ?2) \
                     WHERE name = ?1",
                    params![name.as_str(), ms(at)],
                )
                .map_err(db("close agent editor"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn agent_editor_closed_at(
        &self,
        name: &AgentName,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let name = name.clone();
        let at: Option<i64> = self
            .read(move |c| {
                c.query_row(
                    "SELECT editor_closed_at FROM agents WHERE name = ?1",
                    [name.as_str()],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()
                .map(Option::flatten)
                .map_err(db("agent editor closed at"))
            })
            .await?;
        at.map(from_ms)
            .transpose()
            .map_err(db("agent editor closed at"))
    }

    async fn get_agent(&self, name: &AgentName) -> Result<Option<Agent>, StoreError> {
        let name = name.clone();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE name = ?1"),
                [name.as_str()],
                agent_from_row,
            )
            .optional()
            .map_err(db("get agent"))
        })
        .await
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {AGENT_COLS} FROM agents ORDER BY last_seen_at DESC, name"
                ))
                .map_err(db("list agents"))?;
            let rows = stmt
                .query_map([], agent_from_row)
                .map_err(db("list agents"))?;
            collect_rows("list agents", rows)
        })
        .await
    }

    async fn append_unclaimed_note(
        &self,
        task: &TaskId,
        agent: &AgentName,
        line: String,
    ) -> Result<Option<u64>, StoreError> {
        let task = task.clone();
        let agent = agent.clone();
        self.write(move |tx| {
            let row: Option<(Option<String>, String)> = tx
                .query_row(
                    "SELECT agent, status FROM tasks WHERE id = ?1",
                    [task.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db("check note writer"))?;
            let Some((current, status)) = row else {
                return Err(StoreError::NotFound(format!("task {task}")));
            };
            if current.as_deref() != Some(agent.as_str())
                || status != crate::model::TaskStatus::Submitted.as_str()
            {
                return Ok(None);
            }
            let seq: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM logs WHERE task_id = ?1",
                    [task.as_str()],
                    |r| r.get(0),
                )
                .map_err(db("next note seq"))?;
            tx.execute(
                "INSERT INTO logs (task_id, agent, seq, stream, line, ts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    task.as_str(),
                    agent.as_str(),
                    seq,
                    crate::model::LogStream::System.as_str(),
                    line,
                    ms(chrono::Utc::now()),
                ],
            )
            .map_err(db("insert note"))?;
            Ok(Some(id_of(seq).map_err(db("next note seq"))?))
        })
        .await
    }

    async fn append_logs(
        &self,
        task: &TaskId,
        batch: LogBatch,
    ) -> Result<AppendedLogs, StoreError> {
        let task = task.clone();
        self.write(move |tx| {
            // Every check runs in the same transaction as the insert: once a task is requeued,
            // its old agent can no longer write, so sequence numbers handed to the new agent
            // stay free, and nothing lands after the log was sealed.
            let t = load_task(tx, &task)?
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
                    message: format!("the log of task {task} is complete; no more lines are taken"),
                    field: None,
                }));
            }
            let (max_seq, stored_bytes): (i64, i64) = tx
                .query_row(
                    "SELECT (SELECT COALESCE(MAX(seq), 0) FROM logs WHERE task_id = ?1), \
                     log_bytes FROM tasks WHERE id = ?1",
                    [task.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db("log position"))?;
            let quota = cursor(batch.quota_bytes);
            let mut bytes = stored_bytes;
            let was_over = bytes > quota;
            let mut inserted = 0;
            {
                let mut exists = tx
                    .prepare_cached("SELECT 1 FROM logs WHERE task_id = ?1 AND seq = ?2")
                    .map_err(db("prepare log lookup"))?;
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO logs (task_id, agent, seq, stream, line, ts) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(db("prepare log insert"))?;
                for (i, l) in batch.lines.iter().enumerate() {
                    let seq = cursor(l.seq);
                    if seq <= max_seq {
                        let stored = exists
                            .exists(params![task.as_str(), seq])
                            .map_err(db("log lookup"))?;
                        if stored {
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
                    insert
                        .execute(params![
                            task.as_str(),
                            batch.agent.as_str(),
                            seq,
                            stream.as_str(),
                            line,
                            ms(l.ts),
                        ])
                        .map_err(db("insert log"))?;
                    inserted += 1;
                }
            }
            if bytes != stored_bytes || batch.seal {
                let mut sealed = t.clone();
                sealed.log_sealed |= batch.seal;
                tx.execute(
                    "UPDATE tasks SET log_bytes = ?2, log_sealed = ?3, json = ?4 WHERE id = ?1",
                    params![task.as_str(), bytes, sealed.log_sealed, task_json(&sealed)?],
                )
                .map_err(db("record log size"))?;
            }
            let max_seq: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE task_id = ?1",
                    [task.as_str()],
                    |r| r.get(0),
                )
                .map_err(db("max log seq"))?;
            Ok(AppendedLogs {
                inserted,
                max_seq: id_of(max_seq).map_err(db("max log seq"))?,
                quota_exceeded: was_over || bytes > quota,
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
        let task = task.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {LOG_COLS} FROM logs WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ))
                .map_err(db("task logs"))?;
            let rows = stmt
                .query_map(
                    params![task.as_str(), cursor(after_seq), limit_sql(limit)],
                    log_from_row,
                )
                .map_err(db("task logs"))?;
            collect_rows("task logs", rows)
        })
        .await
    }

    async fn agent_logs(
        &self,
        agent: &AgentName,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let agent = agent.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {LOG_COLS} FROM logs WHERE agent = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                ))
                .map_err(db("agent logs"))?;
            let rows = stmt
                .query_map(
                    params![agent.as_str(), cursor(after_id), limit_sql(limit)],
                    log_from_row,
                )
                .map_err(db("agent logs"))?;
            collect_rows("agent logs", rows)
        })
        .await
    }

    async fn max_log_seq(&self, task: &TaskId) -> Result<u64, StoreError> {
        let task = task.clone();
        self.read(move |c| {
            c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE task_id = ?1",
                [task.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .and_then(id_of)
            .map_err(db("max log seq"))
        })
        .await
    }

    async fn last_log_id(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(MAX(id), 0) FROM logs", [], |r| {
                r.get::<_, i64>(0)
            })
            .and_then(id_of)
            .map_err(db("last log id"))
        })
        .await
    }

    async fn append_events(
        &self,
        events: Vec<NewEvent>,
        audit: Vec<NewAudit>,
    ) -> Result<u64, StoreError> {
        self.write(move |tx| {
            let now = ms(Utc::now());
            insert_audit(tx, &audit, now)?;
            insert_events(tx, &events, now)
        })
        .await
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, ts, kind, task_id, agent, org, status, message FROM events \
                     WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(db("events"))?;
            let rows = stmt
                .query_map(params![cursor(after), limit_sql(limit)], event_from_row)
                .map_err(db("events"))?;
            collect_rows("events", rows)
        })
        .await
    }

    async fn last_event_id(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
            .and_then(id_of)
            .map_err(db("last event id"))
        })
        .await
    }

    async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, ts, actor, action, subject, detail FROM audit WHERE id > ?1 \
                     ORDER BY id LIMIT ?2",
                )
                .map_err(db("audit"))?;
            let rows = stmt
                .query_map(params![cursor(after), limit_sql(limit)], |r| {
                    Ok(AuditEntry {
                        id: id_of(r.get(0)?)?,
                        ts: from_ms(r.get(1)?)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        subject: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })
                .map_err(db("audit"))?;
            collect_rows("audit", rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn synchronous_in(store: &SqliteStore, durable: bool) -> i64 {
        store
            .write_with(durable, |c| {
                c.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                    .map_err(db("read synchronous"))
            })
            .await
            .expect("pragma")
    }

    #[tokio::test]
    async fn soft_writes_skip_the_fsync_only_with_full_durability_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, Durability::Full).expect("open");
        // 2 = FULL, 1 = NORMAL.
        assert_eq!(synchronous_in(&store, true).await, 2);
        assert_eq!(synchronous_in(&store, false).await, 1);
        assert_eq!(synchronous_in(&store, true).await, 2, "back to FULL");

        let org = OrgName::new("acme").expect("org");
        store
            .create_org(
                &org,
                crate::model::NewAudit::new("t", "org.create", "acme", None),
            )
            .await
            .expect("org");
        let agent = AgentName::new("agent-1").expect("agent");
        let task = TaskId::new("t1").expect("task id");
        let now = Utc::now();
        store
            .upsert_agent(
                Agent {
                    name: agent.clone(),
                    org: org.clone(),
                    task_id: Some(task.clone()),
                    version: None,
                    editor_address: None,
                    registered_at: now,
                    last_seen_at: now,
                    state: serde_json::json!({}),
                },
                crate::model::NewEvent {
                    kind: "agent.registered".into(),
                    task_id: None,
                    agent: Some(agent.clone()),
                    org: Some(org.clone()),
                    status: None,
                    message: None,
                },
            )
            .await
            .expect("register");
        let later = now + chrono::Duration::seconds(5);
        assert!(store
            .touch_agent(
                &agent,
                &task,
                later,
                serde_json::json!({"phase": "running"})
            )
            .await
            .expect("touch"));
        drop(store);
        let store = SqliteStore::open(&path, Durability::Full).expect("reopen");
        let a = store.get_agent(&agent).await.expect("get").expect("agent");
        assert_eq!(a.last_seen_at.timestamp_millis(), later.timestamp_millis());
        assert_eq!(a.state["phase"], "running");

        let normal = SqliteStore::open(dir.path().join("n.db"), Durability::Normal).expect("open");
        assert_eq!(
            synchronous_in(&normal, true).await,
            1,
            "NORMAL stays NORMAL"
        );
    }
}
