//! Domain types shared by the store, the orchestrator, the clients and the agent.

use crate::context::TaskContext;
use crate::names::{AgentName, OrgName, ProcessId, TaskId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Lifecycle of a task.
///
/// `Scheduled` (recorded, waiting for a backend) -> `Submitted` (the backend started an agent for
/// it) -> `Running` (that agent holds the claim lease) -> `Succeeded` | `Failed` | `Cancelled`.
/// A `Running` task whose lease expires goes back to `Scheduled` with a new attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskStatus {
    /// Recorded durably; not yet handed to a cluster backend.
    Scheduled,
    /// The backend accepted it and started (or is starting) the task's agent.
    Submitted,
    /// Claimed by its agent, which holds a lease.
    Running,
    /// Finished with success.
    Succeeded,
    /// Finished with failure (non-zero exit, runner error, too many lost leases).
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl TaskStatus {
    /// All statuses, in lifecycle order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Scheduled,
        TaskStatus::Submitted,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// The stable string form (also the JSON and database form).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Scheduled => "Scheduled",
            TaskStatus::Submitted => "Submitted",
            TaskStatus::Running => "Running",
            TaskStatus::Succeeded => "Succeeded",
            TaskStatus::Failed => "Failed",
            TaskStatus::Cancelled => "Cancelled",
        }
    }

    /// Parses the stable string form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Like [`TaskStatus::parse`], in any letter case (`running`, `RUNNING`), for people typing.
    pub fn parse_any_case(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// True for Succeeded, Failed and Cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Something a task produced: a pull request, a file, a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// Short name, e.g. `pr` or `report.md`.
    pub name: String,
    /// Kind, e.g. `pr`, `file`, `url`.
    pub kind: String,
    /// Where it is: a URL or a path inside the agent's workspace.
    pub uri: String,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Task id.
    pub id: TaskId,
    /// Organization whose cluster runs it.
    pub org: OrgName,
    /// The task text given to the agent's runner.
    pub task: String,
    /// Optional hint recorded with the task and passed to the backend (e.g. an agent profile).
    pub agent_hint: Option<String>,
    /// Current status.
    pub status: TaskStatus,
    /// Agent assigned to the current attempt (set when submitted).
    pub agent: Option<AgentName>,
    /// Attempt number, starting at 1; grows when a lost lease requeues the task.
    pub attempt: u32,
    /// Fencing token of the current claim: grows by one with every granted claim, 0 if never claimed.
    pub fencing: u64,
    /// How many claims were granted in total (a healthy run has exactly 1).
    pub claims: u32,
    /// When the current claim lease expires.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the runner started (claim time).
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Exit code of the runner, when it exited.
    pub exit_code: Option<i32>,
    /// Why it failed, was cancelled or was requeued.
    pub reason: Option<String>,
    /// Artifacts reported at completion.
    pub artifacts: Vec<Artifact>,
    /// Pull request URL, when the task opened one.
    pub pr_url: Option<String>,
    /// Repository and files the agent prepares before running the task.
    #[serde(default, skip_serializing_if = "TaskContext::is_empty")]
    pub context: TaskContext,
    /// Every log line of the task is stored: its agent sent its last batch, or the task ended
    /// without an agent that could still write. See [`Task::log_complete`].
    #[serde(default)]
    pub log_sealed: bool,
    /// The agent process holding the current claim, when its agent sent one
    /// ([`crate::api::ClaimRequest::process`]): a claim by another process of the same agent
    /// takes the task over with a new fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_process: Option<ProcessId>,
}

/// How long after a task finished its agent may still send log lines (the last output of a
/// cancelled runner) when it never sends its final batch.
pub const LOG_SEAL_GRACE: chrono::Duration = chrono::Duration::seconds(30);

impl Task {
    /// Whether the task has finished and no more log lines can arrive at `now`: its log is
    /// sealed (the agent's final batch, or an end no agent can write after), or it finished
    /// more than [`LOG_SEAL_GRACE`] ago. A sealed log of a task that still runs (the agent sent
    /// its final batch and is reporting) is not complete yet.
    pub fn log_complete(&self, now: DateTime<Utc>) -> bool {
        self.status.is_terminal()
            && (self.log_sealed || self.finished_at.is_none_or(|f| f + LOG_SEAL_GRACE <= now))
    }

    /// Whether the agent holding the claim may still add log lines at `now`: not after its
    /// final batch, and not once the log is complete.
    pub fn log_open(&self, now: DateTime<Utc>) -> bool {
        !self.log_sealed && !self.log_complete(now)
    }

    /// Whether the current agent holds (or held, for a finished task) the claim whose fencing
    /// token is `fencing`: it is the task's agent, it claimed this attempt, and the token is
    /// the current one.
    pub fn claimed_by(&self, agent: &AgentName, fencing: u64) -> bool {
        self.agent.as_ref() == Some(agent)
            && self.started_at.is_some()
            && fencing != 0
            && self.fencing == fencing
    }
}

/// An agent as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Agent name.
    pub name: AgentName,
    /// Organization it runs for.
    pub org: OrgName,
    /// The task it was started for.
    pub task_id: Option<TaskId>,
    /// Agent version string it reported.
    pub version: Option<String>,
    /// Address of its editor (code-server) as it advertised it, if any.
    pub editor_address: Option<String>,
    /// First registration.
    pub registered_at: DateTime<Utc>,
    /// Last heartbeat (or registration).
    pub last_seen_at: DateTime<Utc>,
    /// Free-form state reported in the last heartbeat (runner state, code-server state).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub state: serde_json::Value,
}

/// Which output a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Runner stdout.
    Stdout,
    /// Runner stderr.
    Stderr,
    /// Messages from the agent itself.
    System,
}

impl LogStream {
    /// The stable string form.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::System => "system",
        }
    }

    /// Parses the stable string form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(LogStream::Stdout),
            "stderr" => Some(LogStream::Stderr),
            "system" => Some(LogStream::System),
            _ => None,
        }
    }
}

/// A stored log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Global, increasing id (the SSE event id of the agent log stream).
    pub id: u64,
    /// Task it belongs to.
    pub task_id: TaskId,
    /// Agent that sent it.
    pub agent: AgentName,
    /// Per-task sequence number assigned by the agent, starting at 1 (the SSE event id of the task
    /// log stream). Re-sent lines with a known sequence number are ignored.
    pub seq: u64,
    /// Source stream.
    pub stream: LogStream,
    /// The text, without trailing newline.
    pub line: String,
    /// When the agent read it.
    pub ts: DateTime<Utc>,
}

/// A log line as an agent sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewLogLine {
    /// Per-task sequence number, starting at 1, never reused.
    pub seq: u64,
    /// Source stream.
    pub stream: LogStream,
    /// The text.
    pub line: String,
    /// When the agent read it.
    pub ts: DateTime<Utc>,
}

/// An organization known to the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Org {
    /// Its name.
    pub name: OrgName,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// A recorded event, streamed over SSE with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing id (the SSE event id).
    pub id: u64,
    /// When it happened.
    pub ts: DateTime<Utc>,
    /// Kind, e.g. `task.scheduled`, `task.claimed`, `agent.registered`.
    pub kind: String,
    /// Task concerned.
    pub task_id: Option<TaskId>,
    /// Agent concerned.
    pub agent: Option<AgentName>,
    /// Organization concerned.
    pub org: Option<OrgName>,
    /// Task status after the event, for task events.
    pub status: Option<TaskStatus>,
    /// Human-readable detail.
    pub message: Option<String>,
}

/// An event before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Kind, e.g. `task.claimed`.
    pub kind: String,
    /// Task concerned.
    pub task_id: Option<TaskId>,
    /// Agent concerned.
    pub agent: Option<AgentName>,
    /// Organization concerned.
    pub org: Option<OrgName>,
    /// Task status after the event.
    pub status: Option<TaskStatus>,
    /// Detail.
    pub message: Option<String>,
}

impl NewEvent {
    /// A task event carrying the task's current org, agent and status. `kind` is usually a
    /// [`crate::lifecycle::EventKind`].
    pub fn for_task(kind: impl AsRef<str>, task: &Task, message: Option<String>) -> Self {
        Self {
            kind: kind.as_ref().to_owned(),
            task_id: Some(task.id.clone()),
            agent: task.agent.clone(),
            org: Some(task.org.clone()),
            status: Some(task.status),
            message,
        }
    }
}

/// One row of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Increasing id.
    pub id: u64,
    /// When.
    pub ts: DateTime<Utc>,
    /// Who: `admin`, `agent:<name>`, `system`.
    pub actor: String,
    /// What, e.g. `task.schedule`, `task.cancel`, `task.requeue`.
    pub action: String,
    /// On what, e.g. a task id or org name.
    pub subject: String,
    /// Detail (never secret material).
    pub detail: Option<String>,
}

/// An audit row before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub subject: String,
    /// Detail.
    pub detail: Option<String>,
}

impl NewAudit {
    /// Convenience constructor.
    pub fn new(actor: &str, action: &str, subject: &str, detail: Option<String>) -> Self {
        Self {
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail,
        }
    }
}
