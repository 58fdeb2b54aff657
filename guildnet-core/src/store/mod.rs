//! Durable state: the [`StateStore`] seam, its SQLite implementation (the embedded default)
//! and, with the `postgres` feature, its PostgreSQL implementation (several replicas).

#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::{is_postgres_url, redact_url, BatchTimes, PostgresOptions, PostgresStore};
pub use sqlite::{CommitStats, Durability, SqliteStore};

use crate::model::{
    Agent, AuditEntry, Event, LogLine, NewAudit, NewEvent, NewLogLine, Org, Task, TaskStatus,
};
use crate::names::{AgentName, OrgName, TaskId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Errors from a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error during {op}: {source}")]
    Db {
        /// What the store was doing.
        op: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Opening the database failed.
    #[error("cannot open database {path}: {reason}")]
    Open {
        /// Database file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The database server reported an error (PostgreSQL).
    #[error("database error during {op}: {reason}")]
    Backend {
        /// What the store was doing.
        op: &'static str,
        /// The server's message.
        reason: String,
    },
    /// The database server cannot be reached now (connection refused or lost, no free
    /// connection in time, server shutting down); the request may succeed when retried.
    #[error("database {db} is unavailable during {op}: {reason}")]
    Unavailable {
        /// What the store was doing.
        op: &'static str,
        /// The database, without its password.
        db: String,
        /// Why.
        reason: String,
    },
    /// The record already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The record does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The record cannot be removed while something still uses it.
    #[error("{0}")]
    InUse(String),
    /// A conditional update refused the change.
    #[error("{0}")]
    Rejected(Rejection),
    /// A stored row could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store's worker is gone (shutting down).
    #[error("state store is shut down")]
    Closed,
    /// The database cannot be written (read-only file, directory or file system).
    #[error(
        "database {path} is read-only: {reason} (the orchestrator needs a writable state dir)"
    )]
    ReadOnly {
        /// Database file.
        path: String,
        /// What SQLite said.
        reason: String,
    },
    /// This store does not implement the operation (HTTP 501).
    #[error("{0} is not supported by this state store")]
    Unsupported(&'static str),
}

pub use crate::lifecycle::{Rejection, RejectionKind, TaskChange};

/// A cluster-wide lock from [`StateStore::try_lock`], released when dropped.
pub struct ClusterLock {
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl ClusterLock {
    /// The lock of a store that one process uses alone: nothing to hold.
    pub fn in_process() -> Self {
        Self { _held: None }
    }

    /// A lock that `guard` holds until it is dropped (a database session, say).
    pub fn held_by(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _held: Some(Box::new(guard)),
        }
    }

    /// Whether another process could hold the same lock (false for [`ClusterLock::in_process`]).
    pub fn is_shared(&self) -> bool {
        self._held.is_some()
    }
}

impl std::fmt::Debug for ClusterLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLock")
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// A conditional mutation applied atomically to one task. Returning an error leaves the task as
/// it was. If the task is unchanged and no events are returned, nothing is written.
pub type TaskUpdateFn = Box<dyn FnOnce(&mut Task) -> Result<TaskChange, Rejection> + Send>;

/// Result of [`StateStore::update_task`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpdated {
    /// The task after the update.
    pub task: Task,
    /// Whether anything was written.
    pub changed: bool,
    /// Id of the last event appended, if any.
    pub last_event_id: Option<u64>,
    /// When the update wrote: the highest log sequence number stored for the task (0 when
    /// none), read in the update's own transaction after its write, so it is what
    /// [`StateStore::max_log_seq`] answers right after the commit (a claim's answer needs it:
    /// log lines of the task's earlier agents can no longer be added once the claim is
    /// written). `None` when nothing was written.
    pub max_log_seq: Option<u64>,
}

/// Result of [`StateStore::renew_lease`].
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRenewed {
    /// The task after the renewal.
    pub task: Task,
    /// Whether the agent is registered for the task (its heartbeat recorded); `None` when the
    /// task has finished (no heartbeat is recorded then).
    pub registered: Option<bool>,
}

/// [`StateStore::renew_lease`] as two steps: the renewal through
/// [`StateStore::update_task`], then [`StateStore::touch_agent`] unless the task finished.
pub async fn renew_lease_in_steps<S: StateStore + ?Sized>(
    store: &S,
    task: &TaskId,
    agent: &AgentName,
    fencing: u64,
    ttl: chrono::Duration,
    at: DateTime<Utc>,
    state: serde_json::Value,
) -> Result<LeaseRenewed, StoreError> {
    let a = agent.clone();
    let task_after = store
        .update_task(
            task,
            Box::new(move |t| crate::lifecycle::renew(t, &a, fencing, ttl, at)),
        )
        .await?
        .task;
    if task_after.status.is_terminal() {
        return Ok(LeaseRenewed {
            task: task_after,
            registered: None,
        });
    }
    let registered = store.touch_agent(agent, task, at, state).await?;
    Ok(LeaseRenewed {
        task: task_after,
        registered: Some(registered),
    })
}

/// Filter for [`StateStore::list_tasks`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskQuery {
    /// Only these statuses (all when empty).
    pub statuses: Vec<TaskStatus>,
    /// Only this org.
    pub org: Option<OrgName>,
    /// Not these orgs.
    pub exclude_orgs: Vec<OrgName>,
    /// Only tasks whose lease expired before this time (Running tasks).
    pub lease_expired_before: Option<DateTime<Utc>>,
    /// Only tasks last updated before this time.
    pub updated_before: Option<DateTime<Utc>>,
    /// At most this many; 0 means no limit.
    pub limit: usize,
    /// Order by last update, oldest first (default: newest created first).
    pub oldest_first: bool,
    /// Newest-first order only: only tasks after this one in that order (keyset pagination:
    /// the key of the previous page's last task).
    pub after: Option<TaskKey>,
}

/// A task's place in the newest-first order: creation time (milliseconds, as stored), then id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskKey {
    /// `created_at` in milliseconds since the epoch.
    pub created_at_ms: i64,
    /// The task id (ties on `created_at` are ordered by id, descending).
    pub id: TaskId,
}

impl TaskPage {
    /// The JSON array in one piece.
    pub fn to_vec(&self) -> Vec<u8> {
        self.json.concat()
    }
}

impl TaskKey {
    /// The key of `t`.
    pub fn of(t: &Task) -> Self {
        Self {
            created_at_ms: t.created_at.timestamp_millis(),
            id: t.id.clone(),
        }
    }

    /// The opaque cursor form (`<ms>.<id>`), safe in a URL query.
    pub fn to_cursor(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.id)
    }

    /// Parses [`TaskKey::to_cursor`]'s form.
    pub fn from_cursor(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('.')?;
        Some(Self {
            created_at_ms: ms.parse().ok()?,
            id: TaskId::new(id).ok()?,
        })
    }
}

/// One page of tasks as the API serializes them ([`StateStore::task_page`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPage {
    /// A JSON array of the tasks, each exactly as `serde_json` serializes a [`Task`], in
    /// pieces (concatenated, they are the array).
    pub json: Vec<bytes::Bytes>,
    /// How many tasks it holds.
    pub count: usize,
    /// The key of its last task (for the next page), when it holds any.
    pub last: Option<TaskKey>,
}

/// A batch of log lines from a task's agent, for [`StateStore::append_logs`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogBatch {
    /// The agent sending them; it must hold the task's claim with `fencing`
    /// ([`Task::claimed_by`]).
    pub agent: AgentName,
    /// Fencing token of its claim.
    pub fencing: u64,
    /// The lines, with strictly increasing sequence numbers.
    pub lines: Vec<NewLogLine>,
    /// The agent's last batch: seal the log after storing it.
    pub seal: bool,
    /// Most bytes of log text the task may store; lines past it are dropped and one system
    /// line says so.
    pub quota_bytes: u64,
}

/// Result of [`StateStore::append_logs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedLogs {
    /// Lines newly stored (re-sent lines are skipped).
    pub inserted: usize,
    /// Highest per-task sequence number stored for the task so far.
    pub max_seq: u64,
    /// The task's log quota is used up (now or before this batch).
    pub quota_exceeded: bool,
}

/// The text of the system line stored when a task's log reaches its quota.
pub fn quota_note(quota_bytes: u64) -> String {
    format!(
        "[guildnet] this task's log reached its quota of {quota_bytes} bytes; further output \
         is dropped (the task goes on)"
    )
}

/// Durable storage of orgs, tasks, agents, logs, events and the audit log.
///
/// Implementations must make every method atomic, and every write durable before it returns.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Registers an org; `AlreadyExists` if present.
    async fn create_org(&self, name: &OrgName, audit: NewAudit) -> Result<Org, StoreError>;
    /// Looks up an org.
    async fn get_org(&self, name: &OrgName) -> Result<Option<Org>, StoreError>;
    /// All orgs by name.
    async fn list_orgs(&self) -> Result<Vec<Org>, StoreError>;
    /// Removes an org: `NotFound` if absent, `InUse` while any of its tasks is not finished.
    /// Its finished tasks, events and audit rows stay (history).
    async fn delete_org(&self, name: &OrgName, audit: NewAudit) -> Result<(), StoreError>;

    /// Stores a new task with the hash of its agent token, its first event and an audit row.
    /// Returns the event id.
    async fn insert_task(
        &self,
        task: Task,
        token_hash: String,
        event: NewEvent,
        audit: NewAudit,
    ) -> Result<u64, StoreError> {
        self.insert_task_with_events(task, token_hash, vec![event], vec![audit])
            .await
    }
    /// Stores a new task, in whatever state it is given (e.g. already dispatched), with the
    /// hash of its agent token, its events (in order) and its audit rows, in one transaction.
    /// Returns the last event id.
    async fn insert_task_with_events(
        &self,
        task: Task,
        token_hash: String,
        events: Vec<NewEvent>,
        audit: Vec<NewAudit>,
    ) -> Result<u64, StoreError>;
    /// Looks up a task.
    async fn get_task(&self, id: &TaskId) -> Result<Option<Task>, StoreError>;
    /// The stored hash of a task's agent token.
    async fn task_token_hash(&self, id: &TaskId) -> Result<Option<String>, StoreError>;
    /// Tasks matching `query`, newest first.
    async fn list_tasks(&self, query: TaskQuery) -> Result<Vec<Task>, StoreError>;
    /// How many tasks have each status (for metrics). The default lists the tasks and counts
    /// them; stores override it with an aggregate query.
    async fn task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        let tasks = self.list_tasks(TaskQuery::default()).await?;
        Ok(TaskStatus::ALL
            .into_iter()
            .map(|s| (s, tasks.iter().filter(|t| t.status == s).count() as u64))
            .collect())
    }
    /// Like [`StateStore::list_tasks`], already serialized as a JSON array (what `GET /tasks`
    /// answers): a store that keeps each task's JSON serves a page without decoding rows.
    async fn task_page(&self, query: TaskQuery) -> Result<TaskPage, StoreError> {
        let tasks = self.list_tasks(query).await?;
        let json = serde_json::to_vec(&tasks)
            .map_err(|e| StoreError::Corrupt(format!("task page: {e}")))?;
        Ok(TaskPage {
            json: vec![json.into()],
            count: tasks.len(),
            last: tasks.last().map(TaskKey::of),
        })
    }
    /// Applies `update` to the task atomically (see [`TaskUpdateFn`]).
    async fn update_task(
        &self,
        id: &TaskId,
        update: TaskUpdateFn,
    ) -> Result<TaskUpdated, StoreError> {
        self.update_task_with_token(id, None, update).await
    }
    /// Like [`StateStore::update_task`], and when the update applies and `token_hash` is given,
    /// replaces the task's agent token hash in the same transaction.
    async fn update_task_with_token(
        &self,
        id: &TaskId,
        token_hash: Option<String>,
        update: TaskUpdateFn,
    ) -> Result<TaskUpdated, StoreError>;

    /// Inserts or replaces an agent's registration; returns the stored agent (keeping the first
    /// registration time).
    async fn upsert_agent(&self, agent: Agent, event: NewEvent) -> Result<Agent, StoreError>;
    /// Records a heartbeat of the agent registered for `task`; false if no such agent is
    /// registered for that task (nothing is written then).
    async fn touch_agent(
        &self,
        name: &AgentName,
        task: &TaskId,
        at: DateTime<Utc>,
        state: serde_json::Value,
    ) -> Result<bool, StoreError>;
    /// A heartbeat with a fencing token: renews the lease as [`crate::lifecycle::renew`] does
    /// (the agent must hold the task's claim with `fencing`, else
    /// [`RejectionKind::StaleFencing`] and nothing is written), then, unless the task has
    /// finished, records the heartbeat as [`StateStore::touch_agent`] does. A renewal writes
    /// no event and no audit row, so a store may run it outside its ordered writes; it is
    /// liveness, stored with the durability of [`StateStore::touch_agent`]. The default runs
    /// [`StateStore::update_task`] and [`StateStore::touch_agent`] one after the other.
    async fn renew_lease(
        &self,
        task: &TaskId,
        agent: &AgentName,
        fencing: u64,
        ttl: chrono::Duration,
        at: DateTime<Utc>,
        state: serde_json::Value,
    ) -> Result<LeaseRenewed, StoreError> {
        renew_lease_in_steps(self, task, agent, fencing, ttl, at, state).await
    }
    /// Records that the agent's editor was closed at `at` (`POST /agents/editor/close`), for
    /// every replica: editor sessions issued until then are refused. A later close moves the
    /// time forward, an earlier one does not move it back. `false` when there is no such agent.
    async fn close_agent_editor(
        &self,
        name: &AgentName,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// When the agent's editor was last closed ([`StateStore::close_agent_editor`]); `None`
    /// when never, or when there is no such agent.
    async fn agent_editor_closed_at(
        &self,
        name: &AgentName,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Looks up an agent.
    async fn get_agent(&self, name: &AgentName) -> Result<Option<Agent>, StoreError>;
    /// All agents, most recently seen first.
    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError>;

    /// Stores an agent's log lines, atomically with these checks: the agent holds the task's
    /// claim with the batch's fencing token ([`Task::claimed_by`], else
    /// [`RejectionKind::StaleFencing`]); the log is open ([`Task::log_open`], else
    /// [`RejectionKind::LogSealed`]); each line is new (its `seq` above every stored one) or a
    /// re-send of a stored line, which is skipped (else [`RejectionKind::LogOutOfOrder`]).
    /// Lines past the task's byte quota are dropped; the first one dropped is replaced by
    /// [`quota_note`]. With `seal`, the log is sealed after the batch.
    async fn append_logs(&self, task: &TaskId, batch: LogBatch)
        -> Result<AppendedLogs, StoreError>;
    /// Appends one `system` line to a task's log on the orchestrator's behalf (e.g. why its pod
    /// does not start), only while the task is Submitted to `agent` (not yet claimed): the check
    /// and the insert are one transaction, so the line's sequence number can never collide with
    /// the agent's, which start after the highest one stored at claim time. Returns the line's
    /// sequence number, or `None` when the task is no longer waiting for that agent.
    async fn append_unclaimed_note(
        &self,
        task: &TaskId,
        agent: &AgentName,
        line: String,
    ) -> Result<Option<u64>, StoreError>;
    /// A task's log lines with `seq > after_seq`, in order.
    async fn task_logs(
        &self,
        task: &TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError>;
    /// An agent's log lines with `id > after_id`, in order.
    async fn agent_logs(
        &self,
        agent: &AgentName,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError>;
    /// Highest log sequence number stored for a task (0 when none).
    async fn max_log_seq(&self, task: &TaskId) -> Result<u64, StoreError>;
    /// Id of the newest log line (0 when none).
    async fn last_log_id(&self) -> Result<u64, StoreError>;

    /// Appends events and audit rows; returns the id of the last event (0 if none were given).
    async fn append_events(
        &self,
        events: Vec<NewEvent>,
        audit: Vec<NewAudit>,
    ) -> Result<u64, StoreError>;
    /// Events with `id > after`, in order.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Id of the newest event (0 when none).
    async fn last_event_id(&self) -> Result<u64, StoreError>;
    /// Audit rows with `id > after`, in order.
    async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Retention: removes at most `limit` finished tasks (Succeeded, Failed, Cancelled) whose
    /// `finished_at` is before `before`, oldest first, with their log lines, their events and
    /// their agents' records, in one transaction, and records one audit row. The audit log
    /// stays (append-only), as do events that name no task. The events feed's ids are never
    /// reused, so a follower resuming past a removed event misses only the removed task's.
    /// Returns the ids removed (fewer than `limit`: none left).
    async fn prune_finished(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        let _ = (before, limit);
        Err(StoreError::Unsupported(
            "removing finished tasks (retention)",
        ))
    }

    /// Whether this process runs the cluster-wide job `job` (e.g. the reaper) now: true for
    /// one process at a time among all that share the store. A store used by one process
    /// only (SQLite) always says true. Call it before every run of the job: leadership moves
    /// when its holder dies.
    async fn lead(&self, job: &'static str) -> Result<bool, StoreError> {
        let _ = job;
        Ok(true)
    }

    /// Takes the cluster-wide lock `key` (an org's bootstrap, say) for as long as the returned
    /// guard lives; `None` while another process sharing the store holds it. When the holder
    /// dies the lock is released (PostgreSQL ends its session), so another replica can take
    /// it. A store used by one process only (SQLite) always grants it: exclusion inside the
    /// process is the caller's.
    async fn try_lock(&self, key: &str) -> Result<Option<ClusterLock>, StoreError> {
        let _ = key;
        Ok(Some(ClusterLock::in_process()))
    }

    /// A counter that moves when another process sharing the store (another replica) stored
    /// events or log lines, so waiting readers (SSE streams) look again; `None` when only
    /// this process writes. Call it from within a tokio runtime.
    fn external_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
