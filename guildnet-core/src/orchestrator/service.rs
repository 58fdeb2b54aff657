//! The orchestrator service: scheduling, dispatch to a cluster backend, the agent protocol
//! (register, heartbeat, claim with lease and fencing, log, complete), cancel, and the reaper that
//! requeues tasks whose lease expired.

use super::api::*;
use super::error::ApiError;
use crate::context::TaskContext;
use crate::lifecycle::{self, EventKind};
use crate::model::{
    Agent, AuditEntry, Event, LogLine, NewAudit, NewEvent, NewLogLine, Org, Task, TaskStatus,
};
use crate::names::{AgentName, OrgName, TaskId};
use crate::seams::{AgentLaunch, ClusterBackend, WorkloadState};
use crate::store::{LogBatch, StateStore, TaskQuery};
use crate::token::{self, Secret};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

mod pool;

/// Largest task text accepted.
pub const MAX_TASK_BYTES: usize = 64 * 1024;
/// Most log lines in one `POST /agent/log`.
pub const MAX_LOG_LINES: usize = 1000;
/// Longest log line stored (longer lines are cut, with a marker).
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
/// Largest log sequence number an agent may send: 2^53 - 1, the largest integer every JSON
/// client (JavaScript included) reads exactly.
pub const MAX_LOG_SEQ: u64 = (1 << 53) - 1;
/// Default per-task log quota in bytes of text.
pub const DEFAULT_LOG_QUOTA_BYTES: u64 = 64 * 1024 * 1024;
/// Default claim lease: a claim not renewed by a heartbeat for this long expires.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Default interval between an agent's heartbeats (must stay well below the lease).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Orchestrator settings.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Admin token for admin routes.
    pub admin_token: Secret,
    /// URL agents use to reach the orchestrator (`ORCHESTRATOR_URL`).
    pub public_url: String,
    /// How long a claim lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// A Submitted task not claimed within this time is requeued.
    pub claim_timeout: Duration,
    /// How often the reaper runs.
    pub reaper_interval: Duration,
    /// How long to wait before retrying a failed submit: an org whose backend refuses a
    /// submit is put on hold this long, doubling per refusal up to `submit_backoff_max`.
    pub submit_retry: Duration,
    /// Longest hold of an org whose backend keeps refusing submits.
    pub submit_backoff_max: Duration,
    /// Most bytes of log text stored per task; output past it is dropped (the task goes on).
    pub log_quota_bytes: u64,
    /// Attempts before a task whose leases keep expiring is failed.
    pub max_attempts: u32,
    /// SSE keep-alive comment interval.
    pub sse_keepalive: Duration,
    /// What agents are told besides the launch contract: runners, forge, keys.
    pub agents: crate::agent_settings::AgentSettingsConfig,
    /// Finished tasks older than this are removed with their logs and workspaces (see
    /// [`super::retention`]); `None` keeps them forever.
    pub retention: Option<Duration>,
    /// The state dir, for disk use and the local backend's workspaces (`None`: not reported,
    /// workspaces not removed).
    pub state_paths: Option<crate::state_dir::StatePaths>,
    /// Where the local backend keeps its agents' directories (`None`: no local backend, no
    /// workspaces to remove or measure).
    pub workspaces_root: Option<std::path::PathBuf>,
}

impl OrchestratorConfig {
    /// Defaults around `admin_token` and `public_url`.
    pub fn new(admin_token: Secret, public_url: impl Into<String>) -> Self {
        Self {
            admin_token,
            public_url: public_url.into(),
            lease_ttl: DEFAULT_LEASE_TTL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            claim_timeout: Duration::from_secs(120),
            reaper_interval: Duration::from_secs(1),
            submit_retry: Duration::from_secs(5),
            submit_backoff_max: Duration::from_secs(60),
            log_quota_bytes: DEFAULT_LOG_QUOTA_BYTES,
            max_attempts: 3,
            sse_keepalive: Duration::from_secs(15),
            agents: Default::default(),
            retention: None,
            state_paths: None,
            workspaces_root: None,
        }
    }

    fn timings(&self) -> ProtocolTimings {
        ProtocolTimings {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            lease_ttl_ms: self.lease_ttl.as_millis() as u64,
        }
    }
}

/// The orchestrator. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn StateStore>,
    backend: Arc<dyn ClusterBackend>,
    cfg: OrchestratorConfig,
    /// SHA-256 of the admin token, computed once (requests are checked against it in
    /// constant time).
    admin_digest: token::TokenDigest,
    /// Orgs known to exist, so a schedule needs no store read: a name not in here is looked up
    /// in the store (and added when found); deleting an org removes it.
    known_orgs: std::sync::RwLock<std::collections::HashSet<OrgName>>,
    /// Bumped after every stored event or log line; SSE streams wait on it.
    changes: watch::Sender<u64>,
    /// When this process started: leases are not reaped until one lease period later, so agents
    /// that kept running while the orchestrator was down can renew first.
    started_at: DateTime<Utc>,
    /// Set when the server shuts down: SSE streams end so connections can close.
    closing: watch::Sender<bool>,
    /// Last time the reaper asked the backend whether unclaimed agents still run.
    last_liveness: std::sync::Mutex<DateTime<Utc>>,
    /// Workload notes already copied into each waiting task's log (see `post_workload_notes`).
    notes_posted:
        std::sync::Mutex<std::collections::HashMap<TaskId, std::collections::HashSet<String>>>,
    /// Agents whose task ended or moved on (the editor proxy forgets their editors).
    agent_ends: tokio::sync::broadcast::Sender<EndedAgent>,
    /// Org cluster bootstrap, when configured.
    bootstrap: Option<Arc<dyn crate::seams::ClusterBootstrap>>,
    /// The mesh set at run time (`/mesh`), when this orchestrator can have one.
    mesh: Option<Arc<dyn crate::seams::MeshControl>>,
    /// Orgs whose backend refused submits, on hold.
    backoff: super::backoff::OrgBackoff,
    /// Warm pool agents waiting for a task, by org.
    pool: crate::pool::registry::WarmRegistry,
    /// Mints and checks pool tokens.
    pool_keys: crate::pool::token::PoolKeys,
    /// Mints and checks editor session tokens (the editor proxy's cookies).
    editor_keys: super::editor_session::EditorKeys,
    /// Orgs with a warm pool (set through the API, or an agent of theirs waited): their
    /// dispatches look for a warm agent and log a cold start when none waits.
    pool_orgs: std::sync::RwLock<std::collections::HashSet<OrgName>>,
    /// Bootstrap jobs by org.
    bootstrap_jobs: crate::jobs::JobRegistry<
        OrgName,
        crate::seams::BootstrapProgress,
        crate::seams::BootstrapOutcome,
    >,
}

/// The stored token hash of a task not dispatched yet: not hex, so no token's hash equals it.
const NO_TOKEN_YET: &str = "-";

/// How often (seconds) the reaper asks the backend about agents that have not claimed yet.
const LIVENESS_EVERY_SECS: i64 = 5;

/// Most tasks one reaper pass looks at per category (oldest first), so a pass stays short
/// however many tasks there are.
const REAP_BATCH: usize = 256;

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn agent_token_for(task: &TaskId) -> Secret {
    let t = token::generate("");
    Secret::new(format!("gnt.{task}.{}", t.expose()))
}

/// The task id an agent token claims to be for (`gnt.<task id>.<random>`); verified separately.
pub fn task_of_agent_token(tok: &str) -> Option<TaskId> {
    let mut parts = tok.splitn(3, '.');
    if parts.next()? != "gnt" {
        return None;
    }
    let id = TaskId::new(parts.next()?).ok()?;
    parts.next().filter(|r| !r.is_empty())?;
    Some(id)
}

/// Builds an [`Orchestrator`] with optional parts ([`Orchestrator::builder`]).
pub struct OrchestratorBuilder {
    store: Arc<dyn StateStore>,
    backend: Arc<dyn ClusterBackend>,
    cfg: OrchestratorConfig,
    bootstrap: Option<Arc<dyn crate::seams::ClusterBootstrap>>,
    mesh: Option<Arc<dyn crate::seams::MeshControl>>,
}

impl OrchestratorBuilder {
    /// The mesh behind `GET`, `PUT` and `DELETE /mesh` (without it `PUT` and `DELETE` answer
    /// 503 and `GET` says the mesh is not available).
    pub fn mesh(mut self, m: Arc<dyn crate::seams::MeshControl>) -> Self {
        self.mesh = Some(m);
        self
    }

    /// Org cluster bootstrap behind `POST /orgs/bootstrap` (without it those routes answer 503).
    pub fn bootstrap(mut self, b: Arc<dyn crate::seams::ClusterBootstrap>) -> Self {
        self.bootstrap = Some(b);
        self
    }

    /// The orchestrator. Nothing runs yet: [`Orchestrator::spawn_background`] starts dispatch,
    /// the reaper and the relay of other replicas' changes.
    pub fn build(self) -> Orchestrator {
        let cfg = self.cfg;
        Orchestrator {
            inner: Arc::new(Inner {
                store: self.store,
                backend: self.backend,
                admin_digest: token::TokenDigest::of(cfg.admin_token.expose()),
                pool: Default::default(),
                pool_keys: crate::pool::token::PoolKeys::from_admin_token(&cfg.admin_token),
                editor_keys: super::editor_session::EditorKeys::from_admin_token(&cfg.admin_token),
                pool_orgs: Default::default(),
                known_orgs: Default::default(),
                cfg,
                changes: watch::channel(0).0,
                started_at: Utc::now(),
                last_liveness: std::sync::Mutex::new(Utc::now()),
                notes_posted: Default::default(),
                closing: watch::channel(false).0,
                agent_ends: tokio::sync::broadcast::channel(AGENT_ENDS_BUFFER).0,
                bootstrap: self.bootstrap,
                mesh: self.mesh,
                bootstrap_jobs: crate::jobs::JobRegistry::new(),
                backoff: Default::default(),
            }),
        }
    }
}

/// An agent whose task ended or moved on to another agent: nothing of it is served any more
/// (see [`Orchestrator::subscribe_agent_ends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedAgent {
    /// Its org.
    pub org: OrgName,
    /// The agent.
    pub agent: AgentName,
}

/// Ended agents kept for subscribers that have not read them yet; one that falls further
/// behind is told it lagged (and re-checks what it holds).
const AGENT_ENDS_BUFFER: usize = 1024;

/// Where an agent's editor listens, as the service knows it
/// ([`Orchestrator::editor_location`]).
#[derive(Debug, Clone)]
pub struct EditorLocation {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The editor's password, when the backend knows it (the proxy logs in with it).
    pub password: Option<Secret>,
    /// The process whose tree must hold the port ([`crate::seams::EditorEndpoint::held_by`]).
    pub held_by: Option<u32>,
    /// Who said the editor is there.
    pub source: EditorSource,
}

/// Who told the service where an editor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditorSource {
    /// The backend (a local port, a port-forward, or an agent pod's tailnet address).
    Backend {
        /// The address is on the tailnet and needs the tailnet dialer.
        via_tailnet: bool,
    },
    /// The agent, at register (`editorAddress`): only as trustworthy as its credentials.
    Advertised,
}

impl Orchestrator {
    /// Builds the orchestrator over a store and a backend. Call [`Orchestrator::spawn_background`]
    /// to start dispatch and the reaper.
    pub fn new(
        store: Arc<dyn StateStore>,
        backend: Arc<dyn ClusterBackend>,
        cfg: OrchestratorConfig,
    ) -> Self {
        Self::builder(store, backend, cfg).build()
    }

    /// Like [`Orchestrator::new`], with optional parts set on the builder.
    pub fn builder(
        store: Arc<dyn StateStore>,
        backend: Arc<dyn ClusterBackend>,
        cfg: OrchestratorConfig,
    ) -> OrchestratorBuilder {
        OrchestratorBuilder {
            store,
            backend,
            cfg,
            bootstrap: None,
            mesh: None,
        }
    }

    /// Settings.
    pub fn config(&self) -> &OrchestratorConfig {
        &self.inner.cfg
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// Subscribes to change notifications: the value changes after new events or log lines
    /// are stored (re-read the store to see them).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Starts shutting down: open SSE streams end.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Watches for [`Orchestrator::begin_shutdown`].
    pub fn subscribe_closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    fn notify_change(&self) {
        self.inner.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn notify_event(&self, id: Option<u64>) {
        if id.is_some() {
            self.notify_change();
        }
    }

    /// The keys of editor session tokens, derived from the admin token (the same on every
    /// replica).
    pub(crate) fn editor_keys(&self) -> &super::editor_session::EditorKeys {
        &self.inner.editor_keys
    }

    /// Checks an admin bearer token.
    pub fn is_admin_token(&self, presented: &str) -> bool {
        self.inner.admin_digest.matches(presented)
    }

    /// Whether `org` is registered: from memory once seen, else from the store.
    async fn org_exists(&self, org: &OrgName) -> Result<bool, ApiError> {
        let known = self
            .inner
            .known_orgs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(org);
        if known {
            return Ok(true);
        }
        if self.inner.store.get_org(org).await?.is_none() {
            return Ok(false);
        }
        self.inner
            .known_orgs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(org.clone());
        Ok(true)
    }

    /// Authenticates an agent bearer token; returns the task it is valid for.
    pub async fn authenticate_agent(&self, presented: &str) -> Result<TaskId, ApiError> {
        let bad = || ApiError::unauthorized("invalid agent token");
        let id = task_of_agent_token(presented).ok_or_else(bad)?;
        let hash = self
            .inner
            .store
            .task_token_hash(&id)
            .await?
            .ok_or_else(bad)?;
        if token::verify_hash(presented, &hash) {
            Ok(id)
        } else {
            Err(bad())
        }
    }

    // ---- orgs -------------------------------------------------------------------------------

    /// Registers an org.
    pub async fn create_org(&self, name: OrgName) -> Result<Org, ApiError> {
        let audit = NewAudit::new("admin", "org.create", name.as_str(), None);
        Ok(self.inner.store.create_org(&name, audit).await?)
    }

    /// Removes an org that has no unfinished task (409 `in_use` otherwise); its history stays.
    pub async fn delete_org(&self, name: OrgName) -> Result<(), ApiError> {
        let audit = NewAudit::new("admin", "org.delete", name.as_str(), None);
        let deleted = self.inner.store.delete_org(&name, audit).await;
        // Forget the org whatever the outcome: the next schedule for it asks the store.
        self.inner
            .known_orgs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        deleted?;
        // Its warm pool goes with it.
        if let Err(e) = self.delete_pool(name.clone()).await {
            tracing::warn!(org = %name, error = %e, "could not remove the deleted org's pool");
        }
        Ok(())
    }

    /// How many tasks have each status.
    pub async fn task_counts(&self) -> Result<Vec<(TaskStatus, u64)>, ApiError> {
        Ok(self.inner.store.task_counts().await?)
    }

    /// Lists orgs.
    pub async fn orgs(&self) -> Result<Vec<Org>, ApiError> {
        Ok(self.inner.store.list_orgs().await?)
    }

    // ---- tasks ------------------------------------------------------------------------------

    /// Records a task durably and hands it to the backend. Returns the task as recorded
    /// (`Scheduled`); dispatch happens right after, in the background.
    pub async fn schedule(&self, req: ScheduleRequest) -> Result<Task, ApiError> {
        if req.task.trim().is_empty() {
            return Err(ApiError::invalid("task", "must not be empty"));
        }
        no_nul("task", &req.task)?;
        if req.task.len() > MAX_TASK_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "task_too_large",
                format!(
                    "task is {} bytes; the limit is {MAX_TASK_BYTES}",
                    req.task.len()
                ),
            )
            .with_field("task"));
        }
        if let Some(h) = &req.agent_hint {
            if h.is_empty() || h.len() > 63 || h.chars().any(|c| c.is_control()) {
                return Err(ApiError::invalid(
                    "agentHint",
                    "must be 1 to 63 printable characters",
                ));
            }
        }
        (self.inner.cfg.agents)
            .check_hint(req.agent_hint.as_deref())
            .map_err(|m| ApiError::invalid("agentHint", m))?;
        let context = TaskContext {
            repo: req.repo,
            files: req.files,
        };
        context.validate().map_err(|e| {
            if e.too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "context_too_large",
                    e.message,
                )
                .with_field("files")
            } else {
                ApiError::invalid(&e.field, e.message)
            }
        })?;
        if !self.org_exists(&req.org).await? {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_org",
                format!(
                    "org {:?} is not registered; create it first (`guildnet org create <name>`, the dashboard's Orgs page, or POST /orgs)",
                    req.org.as_str()
                ),
            )
            .with_field("org"));
        }
        let now = Utc::now();
        let id = TaskId::generate();
        let task = Task {
            agent: None,
            id: id.clone(),
            org: req.org,
            task: req.task,
            agent_hint: req.agent_hint,
            status: TaskStatus::Scheduled,
            attempt: 1,
            fencing: 0,
            claims: 0,
            lease_expires_at: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            artifacts: Vec::new(),
            pr_url: None,
            context,
            log_sealed: false,
            claim_process: None,
        };
        // The task is recorded and, unless its org is on hold, dispatched in the same
        // transaction (Scheduled -> Submitted with a fresh agent token, of which only the hash
        // is stored): one durable write per schedule. The backend is asked right after the
        // commit; if the process dies in between, the reaper finds the Submitted task whose
        // agent does not exist and requeues it. Until dispatch the stored hash is a
        // placeholder that is not a SHA-256 hex digest, so no token ever matches it.
        let mut events = vec![NewEvent::for_task(EventKind::TaskScheduled, &task, None)];
        let mut audit = vec![NewAudit::new(
            "admin",
            "task.schedule",
            id.as_str(),
            Some(format!("org={}", task.org)),
        )];
        let mut stored = task.clone();
        let mut token_hash = NO_TOKEN_YET.to_owned();
        let mut launch_token = None;
        if self.inner.backoff.ready(&task.org, now) {
            if let Ok(change) = lifecycle::dispatch(&mut stored, task.attempt, now) {
                let tok = agent_token_for(&id);
                token_hash = token::hash(tok.expose());
                launch_token = Some(tok);
                events.extend(change.events);
                audit.extend(change.audit);
            }
        }
        let ev = self
            .inner
            .store
            .insert_task_with_events(stored.clone(), token_hash, events, audit)
            .await?;
        self.notify_event(Some(ev));
        if let Some(tok) = launch_token {
            let me = self.clone();
            tokio::spawn(async move {
                me.submit(stored, tok, now).await;
            });
        }
        Ok(task)
    }

    /// Hands a Scheduled task to the backend: marks it Submitted with a fresh agent token (only
    /// the hash is stored) and asks the backend to start its agent. On failure the task goes back
    /// to Scheduled and is retried later.
    pub async fn dispatch(&self, task: Task) {
        self.dispatch_at(task, Utc::now()).await
    }

    /// [`Orchestrator::dispatch`] as of `now` (the reaper's clock).
    async fn dispatch_at(&self, task: Task, now: DateTime<Utc>) {
        if !self.inner.backoff.ready(&task.org, now) {
            // The org is on hold after its backend refused a submit; the reaper tries again
            // when the hold ends.
            return;
        }
        let tok = agent_token_for(&task.id);
        let expected_attempt = task.attempt;
        let upd = self
            .inner
            .store
            .update_task_with_token(
                &task.id,
                Some(token::hash(tok.expose())),
                Box::new(move |t| lifecycle::dispatch(t, expected_attempt, Utc::now())),
            )
            .await;
        let task = match upd {
            Ok(u) => {
                self.notify_event(u.last_event_id);
                u.task
            }
            Err(e) => {
                tracing::debug!(task = %task.id, error = %e, "dispatch skipped");
                return;
            }
        };
        self.submit(task, tok, now).await;
    }

    /// Asks the backend to start the agent of a task just marked Submitted with the agent
    /// token `tok`. A refusal puts the task back to Scheduled and, unless the org is only at
    /// capacity, the org on hold from `now` (one warning per hold).
    async fn submit(&self, task: Task, tok: Secret, now: DateTime<Utc>) {
        let Some(agent) = task.agent.clone() else {
            return;
        };
        let mut launch = AgentLaunch {
            task_id: task.id.clone(),
            org: task.org.clone(),
            agent: agent.clone(),
            attempt: task.attempt,
            task: task.task.clone(),
            agent_hint: task.agent_hint.clone(),
            orchestrator_url: self.inner.cfg.public_url.clone(),
            agent_token: tok,
            settings: (self.inner.cfg.agents).for_task(&task.org, task.agent_hint.as_deref()),
            pool: None,
        };
        if self.has_pool(&task.org) {
            match self.hand_to_warm_agent_once(&launch) {
                Ok(placement) => {
                    // The agent has the task already; the backend only records where it runs.
                    // A refusal here does not take the task back: the agent claims it anyway.
                    launch.pool = Some(placement);
                    if let Err(e) = self.inner.backend.submit(launch).await {
                        tracing::warn!(task = %task.id, error = %e, "backend could not record the pooled task's workload");
                    }
                    // A fast task can finish before its workload was recorded: tell the backend
                    // again, now that it knows the workload.
                    if let Ok(Some(t)) = self.inner.store.get_task(&task.id).await {
                        if matches!(t.status, TaskStatus::Succeeded | TaskStatus::Failed) {
                            if let Err(e) = self.inner.backend.task_finished(&t).await {
                                tracing::warn!(task = %t.id, error = %e, "backend could not record completion");
                            }
                        }
                    }
                    return;
                }
                Err(line) => {
                    self.note_unclaimed(&task.id, &agent, line).await;
                }
            }
        }
        let submitted = self.inner.backend.submit(launch).await;
        if submitted.is_ok() {
            self.inner.backoff.succeeded(&task.org);
        }
        if let Err(e) = submitted {
            let reason = e.to_string();
            if matches!(e, crate::seams::BackendError::AtCapacity { .. }) {
                tracing::debug!(task = %task.id, error = %e, "org at capacity; will retry");
            } else {
                let hold = self.inner.backoff.failed(
                    &task.org,
                    now,
                    self.inner.cfg.submit_retry,
                    self.inner.cfg.submit_backoff_max,
                    reason.clone(),
                );
                if hold.new_hold {
                    tracing::warn!(
                        org = %task.org, task = %task.id, error = %e,
                        retry_in_ms = hold.delay.as_millis() as u64,
                        "backend refused a submit; the org's tasks wait"
                    );
                }
                // The task's own log says why it waits (the line is written while the task is
                // still Submitted to this agent, so it cannot collide with an agent's lines).
                // Only the task that was tried gets it: while the org is on hold the others
                // are not tried, and `GET /tasks/{id}` gives each its reason.
                let line = format!(
                    "[orchestrator] waiting: the backend could not start an agent: {reason}; \
                     org {}'s tasks are retried in {} s",
                    task.org,
                    hold.delay.as_secs().max(1)
                );
                self.note_unclaimed(&task.id, &agent, line).await;
            }
            let attempt = task.attempt;
            let res = self
                .inner
                .store
                .update_task(
                    &task.id,
                    Box::new(move |t| lifecycle::submit_failed(t, attempt, &reason, Utc::now())),
                )
                .await;
            if let Ok(u) = res {
                self.notify_event(u.last_event_id);
            }
        }
    }

    /// Writes an orchestrator line into the log of a task still Submitted to `agent` (see
    /// [`StateStore::append_unclaimed_note`]); a task that moved on gets none. Best effort: a
    /// store error is only traced. Returns whether the line was written.
    async fn note_unclaimed(&self, task: &TaskId, agent: &AgentName, line: String) -> bool {
        match self
            .inner
            .store
            .append_unclaimed_note(task, agent, line)
            .await
        {
            Ok(Some(_)) => {
                self.notify_change();
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(task = %task, error = %e, "could not write a note to the task log");
                false
            }
        }
    }

    /// Lists tasks, newest first.
    pub async fn tasks(&self, q: TaskListQuery) -> Result<Vec<Task>, ApiError> {
        Ok(self.inner.store.list_tasks(task_query(q)?).await?)
    }

    /// `GET /tasks`: one page of tasks, newest first, as a JSON array, and the cursor of the
    /// next page when this one is full (the next page may still be empty).
    pub async fn task_page(
        &self,
        q: TaskListQuery,
    ) -> Result<(Vec<bytes::Bytes>, Option<String>), ApiError> {
        let query = task_query(q)?;
        let limit = query.limit;
        let page = self.inner.store.task_page(query).await?;
        let next = (page.count >= limit)
            .then(|| page.last.map(|k| k.to_cursor()))
            .flatten();
        Ok((page.json, next))
    }

    /// One task.
    pub async fn task(&self, id: &TaskId) -> Result<Task, ApiError> {
        self.inner
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("task {id} not found")))
    }

    /// A task's log lines after sequence number `after`, in order, at most `limit`.
    pub async fn task_logs(
        &self,
        id: &TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, ApiError> {
        Ok(self.inner.store.task_logs(id, after, limit).await?)
    }

    /// An agent's log lines after global log id `after`, in order, at most `limit`.
    pub async fn agent_logs(
        &self,
        name: &AgentName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, ApiError> {
        Ok(self.inner.store.agent_logs(name, after, limit).await?)
    }

    /// Events after id `after`, in order, at most `limit`.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, ApiError> {
        Ok(self.inner.store.events_after(after, limit).await?)
    }

    /// The newest event's id (0 when none).
    pub async fn last_event_id(&self) -> Result<u64, ApiError> {
        Ok(self.inner.store.last_event_id().await?)
    }

    /// Audit rows after id `after`, in order, at most `limit`.
    pub async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, ApiError> {
        Ok(self.inner.store.audit_after(after, limit).await?)
    }

    /// Cancels a task that has not finished; the backend stops its agent.
    pub async fn cancel(&self, id: &TaskId) -> Result<Task, ApiError> {
        let u = self
            .inner
            .store
            .update_task(id, Box::new(|t| lifecycle::cancel(t, Utc::now())))
            .await?;
        self.notify_event(u.last_event_id);
        if u.changed {
            if let Some(agent) = &u.task.agent {
                self.agent_ended(&u.task.org, agent);
                if let Err(e) = self.inner.backend.cancel(&u.task.org, id, agent).await {
                    tracing::warn!(task = %id, error = %e, "backend cancel failed");
                }
            }
        }
        Ok(u.task)
    }

    // ---- agents -----------------------------------------------------------------------------

    /// Lists agents.
    pub async fn agents(&self) -> Result<Vec<Agent>, ApiError> {
        Ok(self.inner.store.list_agents().await?)
    }

    /// One agent.
    pub async fn agent(&self, name: &AgentName) -> Result<Agent, ApiError> {
        self.inner
            .store
            .get_agent(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("agent {name} not found")))
    }

    async fn agent_in_org(&self, name: &AgentName, org: &OrgName) -> Result<Agent, ApiError> {
        let agent = self.agent(name).await?;
        if &agent.org != org {
            return Err(ApiError::not_found(format!(
                "agent {name} not found in org {org}"
            )));
        }
        Ok(agent)
    }

    /// `GET /tasks/{id}`: the task and its backend's view of the workload. A slow or failing
    /// backend does not fail the request: the task is returned without `workload`.
    pub async fn task_detail(&self, id: &TaskId) -> Result<TaskDetail, ApiError> {
        let task = self.task(id).await?;
        let ask = self
            .inner
            .backend
            .describe(&task.org, &task.id, task.agent.clone());
        let workload = match tokio::time::timeout(std::time::Duration::from_secs(3), ask).await {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                tracing::debug!(task = %task.id, error = %e, "backend describe failed");
                None
            }
            Err(_) => {
                tracing::debug!(task = %task.id, "backend describe timed out");
                None
            }
        };
        let waiting = (task.status == TaskStatus::Scheduled)
            .then(|| self.inner.backoff.waiting(&task.org, Utc::now()))
            .flatten();
        Ok(TaskDetail {
            task,
            workload,
            waiting,
        })
    }

    pub(crate) fn mesh_control(&self) -> Option<Arc<dyn crate::seams::MeshControl>> {
        self.inner.mesh.clone()
    }

    pub(crate) fn bootstrapper(&self) -> Option<Arc<dyn crate::seams::ClusterBootstrap>> {
        self.inner.bootstrap.clone()
    }

    pub(crate) fn bootstrap_jobs(
        &self,
    ) -> &crate::jobs::JobRegistry<
        OrgName,
        crate::seams::BootstrapProgress,
        crate::seams::BootstrapOutcome,
    > {
        &self.inner.bootstrap_jobs
    }

    /// Follows agents whose task ended (completed, failed to start, cancelled) or moved on to a
    /// new attempt. Only agents that end after the call are seen.
    pub fn subscribe_agent_ends(&self) -> tokio::sync::broadcast::Receiver<EndedAgent> {
        self.inner.agent_ends.subscribe()
    }

    fn agent_ended(&self, org: &OrgName, agent: &AgentName) {
        // No subscriber (no editor proxy) is fine.
        let _ = self.inner.agent_ends.send(EndedAgent {
            org: org.clone(),
            agent: agent.clone(),
        });
    }

    /// Whether `agent` is still its task's current agent and the task has not finished: what
    /// [`Orchestrator::subscribe_agent_ends`] would have said otherwise.
    pub async fn agent_is_current(
        &self,
        org: &OrgName,
        agent: &AgentName,
    ) -> Result<bool, ApiError> {
        let a = match self.agent_in_org(agent, org).await {
            Ok(a) => a,
            Err(e) if e.status == StatusCode::NOT_FOUND => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(task_id) = a.task_id else {
            return Ok(false);
        };
        let Some(task) = self.inner.store.get_task(&task_id).await? else {
            return Ok(false);
        };
        Ok(task.agent.as_ref() == Some(agent)
            && !task.status.is_terminal()
            && task.status != TaskStatus::Scheduled)
    }

    /// Where the agent's editor listens: the backend's answer (it opens or reuses a tunnel when
    /// it needs one), else the address the agent advertised at register. 404 for an agent
    /// not in `org`, 409 `editor_unavailable` when there is no editor yet. Which of these
    /// addresses may be proxied to is the editor proxy's policy
    /// ([`super::editor_proxy::EditorProxy::open`]).
    pub async fn editor_location(
        &self,
        org: &OrgName,
        name: &AgentName,
    ) -> Result<EditorLocation, ApiError> {
        let agent = self.agent_in_org(name, org).await?;
        if let Some(ep) = self.inner.backend.editor_endpoint(org, name).await? {
            return Ok(EditorLocation {
                host: ep.host,
                port: ep.port,
                password: ep.password,
                held_by: ep.held_by,
                source: EditorSource::Backend {
                    via_tailnet: ep.via_tailnet,
                },
            });
        }
        agent
            .editor_address
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(h, p)| {
                Some(EditorLocation {
                    host: h.to_owned(),
                    port: p.parse::<u16>().ok()?,
                    password: None,
                    held_by: None,
                    source: EditorSource::Advertised,
                })
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "editor_unavailable",
                    format!("agent {name} has no reachable editor yet"),
                )
            })
    }

    /// Records the close of the agent's editor in the store, `at` (ms since the epoch), so every
    /// replica refuses the sessions issued until then ([`Orchestrator::editor_closed_at`]), and
    /// closes the backend's way to it (a port-forward), if it has one: whether it had one. 404
    /// for an agent not in `org`.
    pub async fn close_editor_endpoint(
        &self,
        org: &OrgName,
        name: &AgentName,
        at: u64,
    ) -> Result<bool, ApiError> {
        self.agent_in_org(name, org).await?;
        let at = DateTime::<Utc>::from_timestamp_millis(at as i64).unwrap_or_else(Utc::now);
        self.inner.store.close_agent_editor(name, at).await?;
        Ok(self.inner.backend.close_editor(org, name).await?)
    }

    /// When the agent's editor was last closed through any replica (ms since the epoch), if
    /// ever. The caller has found the agent in its org already (the editor proxy asks after
    /// [`Orchestrator::agent_is_current`] or [`Orchestrator::editor_location`]), so this is one
    /// read of the store, with no org check of its own.
    pub async fn editor_closed_at(&self, name: &AgentName) -> Result<Option<u64>, ApiError> {
        Ok(self
            .inner
            .store
            .agent_editor_closed_at(name)
            .await?
            .map(|t| t.timestamp_millis().max(0) as u64))
    }

    async fn agent_task(&self, task_id: &TaskId, agent: &AgentName) -> Result<Task, ApiError> {
        let task = self.task(task_id).await?;
        if task.agent.as_ref() != Some(agent) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "stale_agent",
                format!(
                    "agent {agent} is not the current agent of task {task_id} (attempt {})",
                    task.attempt
                ),
            )
            .with_field("agent"));
        }
        Ok(task)
    }

    /// `POST /agent/register`.
    pub async fn register(
        &self,
        task_id: &TaskId,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, ApiError> {
        let task = self.agent_task(task_id, &req.agent).await?;
        if task.status.is_terminal() {
            return Err(task_finished(&task));
        }
        if let Some(addr) = &req.editor_address {
            if addr.len() > 255 || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ApiError::invalid("editorAddress", "must be host:port"));
            }
        }
        let now = Utc::now();
        let agent = Agent {
            name: req.agent.clone(),
            org: task.org.clone(),
            task_id: Some(task.id.clone()),
            version: req.version,
            editor_address: req.editor_address,
            registered_at: now,
            last_seen_at: now,
            state: serde_json::json!({}),
        };
        let event = NewEvent {
            kind: EventKind::AgentRegistered.as_str().into(),
            task_id: Some(task.id.clone()),
            agent: Some(req.agent),
            org: Some(task.org.clone()),
            status: Some(task.status),
            message: None,
        };
        self.inner.store.upsert_agent(agent, event).await?;
        self.notify_change();
        Ok(RegisterResponse {
            task,
            timings: self.inner.cfg.timings(),
        })
    }

    /// `POST /agent/claim`: grants the lease to the task's own agent. Re-claiming a task the
    /// agent already holds returns the same fencing token when the same process asks again
    /// (idempotent after a lost reply); another process of the agent takes the claim over with
    /// a new token (see [`lifecycle::claim`]).
    pub async fn claim(
        &self,
        task_id: &TaskId,
        req: ClaimRequest,
    ) -> Result<ClaimResponse, ApiError> {
        let agent = req.agent;
        let process = req.process;
        let ttl = chrono_dur(self.inner.cfg.lease_ttl);
        let a = agent.clone();
        let u = self
            .inner
            .store
            .update_task(
                task_id,
                Box::new(move |t| lifecycle::claim(t, &a, process.as_ref(), ttl, Utc::now())),
            )
            .await?;
        self.notify_event(u.last_event_id);
        // The claim is committed, so earlier agents of this task can no longer add lines: the
        // highest stored sequence number is final for them. A claim that wrote read it with
        // its write; a repeated claim (nothing written) asks now.
        let max_log_seq = match u.max_log_seq {
            Some(m) => m,
            None => self.inner.store.max_log_seq(task_id).await?,
        };
        let next_log_seq = max_log_seq + 1;
        let lease = u.task.lease_expires_at.unwrap_or_else(Utc::now);
        Ok(ClaimResponse {
            fencing: u.task.fencing,
            lease_expires_at: lease,
            next_log_seq,
            task: u.task,
            timings: self.inner.cfg.timings(),
        })
    }

    /// `POST /agent/heartbeat`: records liveness; with a fencing token, renews the lease. Every
    /// check runs before anything is written: a refused heartbeat changes nothing, and a
    /// finished task's agent only learns the status (its token no longer writes).
    pub async fn heartbeat(
        &self,
        task_id: &TaskId,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ApiError> {
        let agent = req.agent.clone();
        let state = req.state.unwrap_or_else(|| serde_json::json!({}));
        if serde_json::to_vec(&state).map(|v| v.len()).unwrap_or(0) > 16 * 1024 {
            return Err(ApiError::invalid("state", "must be at most 16 KiB of JSON"));
        }
        let reply = |t: &Task| HeartbeatResponse {
            task_status: t.status,
            cancel: t.status == TaskStatus::Cancelled,
            lease_expires_at: (t.status == TaskStatus::Running)
                .then_some(t.lease_expires_at)
                .flatten(),
        };
        let (task, known) = match req.fencing {
            None => {
                let task = self.agent_task(task_id, &agent).await?;
                if task.status.is_terminal() {
                    return Ok(reply(&task));
                }
                let known = self
                    .inner
                    .store
                    .touch_agent(&agent, task_id, Utc::now(), state)
                    .await?;
                (task, known)
            }
            Some(fencing) => {
                // The lease renewal (lifecycle::renew) and the liveness record in one store
                // call: it writes no event, so the store runs it outside its ordered writes.
                let ttl = chrono_dur(self.inner.cfg.lease_ttl);
                let r = self
                    .inner
                    .store
                    .renew_lease(task_id, &agent, fencing, ttl, Utc::now(), state)
                    .await?;
                match r.registered {
                    None => return Ok(reply(&r.task)),
                    Some(known) => (r.task, known),
                }
            }
        };
        if !known {
            return Err(ApiError::not_found(format!(
                "agent {agent} is not registered for task {task_id}; call /agent/register first"
            ))
            .with_field("agent"));
        }
        Ok(reply(&task))
    }

    /// `POST /agent/log`: stores lines (idempotent per sequence number). Only the agent holding
    /// the task's claim may write, only until the log is complete, only forward (see
    /// [`StateStore::append_logs`]), and only up to the task's log quota.
    pub async fn append_logs(
        &self,
        task_id: &TaskId,
        req: LogRequest,
    ) -> Result<LogResponse, ApiError> {
        if req.lines.len() > MAX_LOG_LINES {
            return Err(ApiError::invalid(
                "lines",
                format!(
                    "at most {MAX_LOG_LINES} lines per call (got {})",
                    req.lines.len()
                ),
            ));
        }
        let mut last = 0;
        for (i, l) in req.lines.iter().enumerate() {
            let field = || format!("lines[{i}].seq");
            if l.seq == 0 || l.seq > MAX_LOG_SEQ {
                return Err(ApiError::invalid(
                    &field(),
                    format!("sequence numbers run from 1 to {MAX_LOG_SEQ}"),
                ));
            }
            if l.seq <= last {
                return Err(ApiError::invalid(
                    &field(),
                    "sequence numbers must grow strictly within a batch",
                ));
            }
            last = l.seq;
        }
        let lines: Vec<NewLogLine> = req
            .lines
            .into_iter()
            .map(|mut l| {
                if l.line.len() > MAX_LOG_LINE_BYTES {
                    let total = l.line.len();
                    let mut cut = MAX_LOG_LINE_BYTES;
                    while !l.line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    l.line.truncate(cut);
                    l.line
                        .push_str(&format!(" …[truncated: {total} bytes in all]"));
                }
                l
            })
            .collect();
        // Cheap checks first, for clear errors; the store checks again, atomically.
        let task = self.agent_task(task_id, &req.agent).await?;
        if task.fencing != req.fencing || req.fencing == 0 || task.started_at.is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "stale_fencing",
                format!(
                    "fencing token {} is not held by agent {} for task {task_id}",
                    req.fencing, req.agent
                ),
            )
            .with_field("fencing"));
        }
        let r = self
            .inner
            .store
            .append_logs(
                task_id,
                LogBatch {
                    agent: req.agent,
                    fencing: req.fencing,
                    lines,
                    seal: req.is_final,
                    quota_bytes: self.inner.cfg.log_quota_bytes,
                },
            )
            .await?;
        if r.inserted > 0 || req.is_final {
            self.notify_change();
        }
        Ok(LogResponse {
            inserted: r.inserted,
            max_seq: r.max_seq,
            quota_exceeded: r.quota_exceeded,
        })
    }

    /// `POST /agent/complete`: records the outcome. Repeating the same completion is accepted.
    pub async fn complete(&self, task_id: &TaskId, req: CompleteRequest) -> Result<Task, ApiError> {
        if !matches!(req.status, TaskStatus::Succeeded | TaskStatus::Failed) {
            return Err(ApiError::invalid("status", "must be Succeeded or Failed"));
        }
        if req.artifacts.len() > 100 {
            return Err(ApiError::invalid("artifacts", "at most 100 artifacts"));
        }
        if let Some(r) = &req.reason {
            if r.len() > 4096 {
                return Err(ApiError::invalid("reason", "at most 4096 bytes"));
            }
        }
        no_nul_opt("reason", req.reason.as_deref())?;
        let agent = req.agent.clone();
        let agent_name = req.agent.clone();
        let u = self
            .inner
            .store
            .update_task(
                task_id,
                Box::new(move |t| {
                    lifecycle::complete(
                        t,
                        &agent,
                        req.fencing,
                        lifecycle::Outcome {
                            status: req.status,
                            exit_code: req.exit_code,
                            reason: req.reason,
                            artifacts: req.artifacts,
                            pr_url: req.pr_url,
                        },
                        Utc::now(),
                    )
                }),
            )
            .await?;
        self.notify_event(u.last_event_id);
        if u.last_event_id.is_some() {
            self.agent_ended(&u.task.org, &agent_name);
            // Newly finished (not a repeated completion): tell the backend.
            if let Err(e) = self.inner.backend.task_finished(&u.task).await {
                tracing::warn!(task = %u.task.id, error = %e, "backend could not record completion");
            }
        }
        Ok(u.task)
    }

    // ---- background -------------------------------------------------------------------------

    /// Starts the reaper/dispatcher loop, and the relay that wakes this replica's SSE streams
    /// on other replicas' writes (PostgreSQL NOTIFY). Both stop when the returned handle is
    /// aborted.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let external = self.inner.store.external_changes();
        let relay = {
            let me = self.clone();
            async move {
                let Some(mut rx) = external else { return };
                while rx.changed().await.is_ok() {
                    me.notify_change();
                }
            }
        };
        let reaper = async move {
            let mut tick = tokio::time::interval(me.inner.cfg.reaper_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut leading = None;
            loop {
                tick.tick().await;
                // One replica reaps at a time (the store decides; always this one on SQLite).
                let lead = match me.inner.store.lead("reaper").await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "reaper: cannot tell which replica leads");
                        false
                    }
                };
                if leading != Some(lead) {
                    if lead {
                        tracing::info!("reaper: this orchestrator runs the reaper");
                    } else {
                        tracing::info!("reaper: another replica runs the reaper");
                    }
                    leading = Some(lead);
                }
                if !lead {
                    continue;
                }
                if let Err(e) = me.reap_once(Utc::now()).await {
                    tracing::warn!(error = %e, "reaper pass failed");
                }
            }
        };
        tokio::spawn(async move {
            futures_util::future::join(reaper, relay).await;
        })
    }

    /// One reaper pass at time `now`: requeues Running tasks whose lease expired (once one lease
    /// period has passed since this orchestrator started) and Submitted tasks whose agent never
    /// claimed (or is gone), and dispatches Scheduled tasks.
    pub async fn reap_once(&self, now: DateTime<Utc>) -> Result<(), ApiError> {
        let store = &self.inner.store;
        let batch = |statuses: Vec<TaskStatus>| TaskQuery {
            statuses,
            limit: REAP_BATCH,
            oldest_first: true,
            ..Default::default()
        };
        // 1. Running tasks whose lease expired (after the restart grace period).
        let grace_over = now >= self.inner.started_at + chrono_dur(self.inner.cfg.lease_ttl);
        if grace_over {
            let q = TaskQuery {
                lease_expired_before: Some(now),
                ..batch(vec![TaskStatus::Running])
            };
            for t in store.list_tasks(q).await? {
                self.requeue(&t, now, "lease expired (no heartbeat)").await;
            }
        }
        // 2. Submitted tasks never claimed within the claim timeout.
        let q = TaskQuery {
            updated_before: Some(now - chrono_dur(self.inner.cfg.claim_timeout)),
            ..batch(vec![TaskStatus::Submitted])
        };
        for t in store.list_tasks(q).await? {
            self.requeue(&t, now, "agent did not claim the task in time")
                .await;
        }
        // 3. Every few seconds: Submitted tasks whose agent exited or vanished before claiming
        //    (it never will claim).
        let probe = {
            let mut last = self
                .inner
                .last_liveness
                .lock()
                .map_err(|_| ApiError::internal("reaper state poisoned"))?;
            let due = now - *last >= chrono::Duration::seconds(LIVENESS_EVERY_SECS);
            if due {
                *last = now;
            }
            due
        };
        if probe {
            let q = TaskQuery {
                updated_before: Some(now - chrono::Duration::seconds(2)),
                ..batch(vec![TaskStatus::Submitted])
            };
            for t in store.list_tasks(q).await? {
                let Some(agent) = &t.agent else { continue };
                match self.inner.backend.status(&t.org, &t.id, agent).await {
                    Ok(WorkloadState::Absent) | Ok(WorkloadState::Exited(_)) => {
                        self.requeue(&t, now, "agent exited before claiming the task")
                            .await;
                    }
                    Ok(WorkloadState::Pending) => self.post_workload_notes(&t, agent).await,
                    // Another replica's local agent: the claim timeout (step 2) decides.
                    Ok(WorkloadState::Unknown) => {}
                    Ok(WorkloadState::FailedToStart(reason)) => {
                        // The log gets the backend's last view first (image pull errors, ...).
                        self.post_workload_notes(&t, agent).await;
                        self.fail_start(&t, agent, &reason, now).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(task = %t.id, error = %e, "backend status failed"),
                }
            }
        }
        // 4. Scheduled tasks to (re)dispatch. Fresh tasks are dispatched by `schedule` itself
        //    (give it a moment); tasks whose submit failed wait `submit_retry`.
        //    Orgs on hold after a refused submit are left out until their hold ends.
        let retry_before = now - chrono_dur(self.inner.cfg.submit_retry);
        let q = TaskQuery {
            updated_before: Some(now - chrono::Duration::seconds(1)),
            exclude_orgs: self.inner.backoff.held(now),
            ..batch(vec![TaskStatus::Scheduled])
        };
        for t in store.list_tasks(q).await? {
            let held = !self.inner.backoff.ready(&t.org, now);
            if !held && (t.reason.is_none() || t.updated_at < retry_before) {
                self.dispatch_at(t, now).await;
            }
        }
        Ok(())
    }

    /// Copies what the backend says about a waiting task's workload (unschedulable pod, image
    /// pull errors, warning events) into the task's log as `system` lines, each line once, so
    /// `logs -f` shows why a task is not starting. Only while the task is unclaimed.
    async fn post_workload_notes(&self, task: &Task, agent: &AgentName) {
        let ask = self
            .inner
            .backend
            .describe(&task.org, &task.id, Some(agent.clone()));
        let Ok(Ok(Some(info))) = tokio::time::timeout(std::time::Duration::from_secs(3), ask).await
        else {
            return;
        };
        let lines: Vec<String> = info
            .pods
            .iter()
            .chain(info.events.iter())
            .map(|l| format!("[{}] {l}", self.inner.backend.name()))
            .collect();
        for line in lines {
            let fresh = {
                let mut posted = self
                    .inner
                    .notes_posted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if posted.len() > 10_000 {
                    posted.clear();
                }
                posted
                    .entry(task.id.clone())
                    .or_default()
                    .insert(line.clone())
            };
            if !fresh {
                continue;
            }
            if !self.note_unclaimed(&task.id, agent, line).await {
                return;
            }
        }
    }

    /// Fails a Submitted task whose agent the backend says will never start, records it on the
    /// backend (the Kubernetes backend writes the AgentTask's status, and the operator removes
    /// the stuck workload), and stops the workload.
    async fn fail_start(&self, task: &Task, agent: &AgentName, reason: &str, now: DateTime<Utc>) {
        let attempt = task.attempt;
        let why = reason.to_owned();
        let res = self
            .inner
            .store
            .update_task(
                &task.id,
                Box::new(move |t| lifecycle::fail_start(t, attempt, &why, now)),
            )
            .await;
        match res {
            Ok(u) => {
                self.notify_event(u.last_event_id);
                tracing::warn!(task = %task.id, %agent, reason, "agent did not start: task failed");
                self.agent_ended(&task.org, agent);
                if let Err(e) = self.inner.backend.task_finished(&u.task).await {
                    tracing::warn!(task = %task.id, error = %e, "backend could not record the failure");
                }
                if let Err(e) = self.inner.backend.cancel(&task.org, &task.id, agent).await {
                    tracing::warn!(task = %task.id, error = %e, "cancel of the stuck agent failed");
                }
            }
            Err(e) => tracing::debug!(task = %task.id, error = %e, "start failure not recorded"),
        }
    }

    async fn requeue(&self, task: &Task, now: DateTime<Utc>, why: &'static str) {
        let max = self.inner.cfg.max_attempts;
        let (expected_status, expected_attempt) = (task.status, task.attempt);
        let res = self
            .inner
            .store
            .update_task(
                &task.id,
                Box::new(move |t| {
                    lifecycle::requeue(t, (expected_status, expected_attempt), max, why, now)
                }),
            )
            .await;
        match res {
            Ok(u) => {
                self.notify_event(u.last_event_id);
                tracing::info!(task = %task.id, status = %u.task.status, why, "task requeued");
                if let Some(agent) = &task.agent {
                    self.agent_ended(&task.org, agent);
                    if let Err(e) = self.inner.backend.cancel(&task.org, &task.id, agent).await {
                        tracing::warn!(task = %task.id, error = %e, "cancel of old agent failed");
                    }
                }
                if u.task.status == TaskStatus::Scheduled {
                    self.dispatch_at(u.task, now).await;
                }
            }
            Err(e) => tracing::debug!(task = %task.id, error = %e, "requeue skipped"),
        }
    }
}

/// The store query of a `GET /tasks` query (limit 1 to 1000, default 100; a valid cursor).
fn task_query(q: TaskListQuery) -> Result<TaskQuery, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let after = q
        .cursor
        .map(|c| {
            crate::store::TaskKey::from_cursor(&c).ok_or_else(|| {
                ApiError::invalid(
                    "cursor",
                    "not a cursor of this API (pass the X-Next-Cursor header of the previous page)",
                )
            })
        })
        .transpose()?;
    Ok(TaskQuery {
        statuses: q.status.into_iter().collect(),
        org: q.org,
        limit,
        after,
        ..Default::default()
    })
}

/// Refuses NUL in a text field: it cannot travel in an environment variable or a C string,
/// so a task carrying one could only fail later.
fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

fn no_nul_opt(field: &str, value: Option<&str>) -> Result<(), ApiError> {
    value.map_or(Ok(()), |v| no_nul(field, v))
}

/// 409 for an agent call about a task that has finished.
fn task_finished(t: &Task) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "task_finished",
        format!("task {} has finished ({})", t.id, t.status),
    )
}
