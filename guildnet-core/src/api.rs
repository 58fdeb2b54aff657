//! The wire contract: every request and response body of the orchestrator API (also the
//! OpenAPI schemas), including the error body and the org-bootstrap bodies. The ground floor:
//! it imports only the model and names, so the client, the agent, the dashboard, the Python
//! bindings and the server all share it without importing a server module.

use crate::context::{ContextFile, RepoSpec};
use crate::model::{Artifact, NewLogLine, Task, TaskStatus};
use crate::names::{AgentName, OrgName, ProcessId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok` when the orchestrator answers.
    pub status: String,
    /// Orchestrator version.
    pub version: String,
    /// Cluster backend in use.
    pub backend: String,
}

/// `POST /orgs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// The org name (DNS-1123 label).
    pub name: OrgName,
}

pub use crate::pool::{
    Handoff, PoolBackendStatus, PoolSpec, PoolStatus, PoolWaitRequest, PoolWaitResponse,
};

/// `DELETE /orgs/{org}/pool`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeletedPool {
    /// The org.
    pub org: OrgName,
    /// Whether the backend had a pool for it.
    pub removed: bool,
}

/// `POST /schedule`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleRequest {
    /// Org whose cluster runs the task (must be registered).
    pub org: OrgName,
    /// The task text for the agent's runner (1 byte to 64 KiB).
    pub task: String,
    /// Optional hint recorded with the task (e.g. an agent profile), up to 63 characters. When
    /// the orchestrator has named runners, it must name one, and that runner runs the task.
    #[serde(default)]
    pub agent_hint: Option<String>,
    /// Repository the agent clones into its workspace before running the task. The URL must
    /// not carry credentials (422 `repo.url`): the forge token is the orchestrator's.
    #[serde(default)]
    pub repo: Option<RepoSpec>,
    /// Files the agent writes into its workspace (after the clone).
    #[serde(default)]
    pub files: Vec<ContextFile>,
}

impl ScheduleRequest {
    /// A request with only the org and the task text.
    pub fn new(org: OrgName, task: impl Into<String>) -> Self {
        Self {
            org,
            task: task.into(),
            agent_hint: None,
            repo: None,
            files: Vec::new(),
        }
    }
}

/// Query of `GET /tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct TaskListQuery {
    /// Only tasks with this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this org.
    pub org: Option<OrgName>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Continue after the previous page: the `X-Next-Cursor` header of that page's response
    /// (an opaque string). Pages are keyset-paginated, so each costs the same however deep
    /// the listing goes, and tasks scheduled meanwhile never shift a page.
    pub cursor: Option<String>,
}

/// Query of `GET /tasks/{id}/logs` and the log streams.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct LogQuery {
    /// Only lines after this sequence number (task logs) or id (agent logs). `Last-Event-ID`
    /// takes precedence on streams.
    pub after: Option<u64>,
    /// At most this many lines (default 1000, at most 10000).
    pub limit: Option<usize>,
}

/// Query of `GET /events` and `GET /audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct AfterQuery {
    /// Only entries with a greater id. `Last-Event-ID` takes precedence on streams.
    pub after: Option<u64>,
    /// At most this many (default 1000, at most 10000).
    pub limit: Option<usize>,
    /// `GET /events` only, without `after` or `Last-Event-ID`: start after the newest event
    /// (only events recorded from now on), e.g. to wait for a task's end.
    pub tail: Option<bool>,
}

/// `POST /agent/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// The agent's name (as given in `AGENT_NAME`).
    pub agent: AgentName,
    /// Agent version.
    #[serde(default)]
    pub version: Option<String>,
    /// Where its editor listens (`host:port`), if it serves one.
    #[serde(default)]
    pub editor_address: Option<String>,
}

/// Protocol timings an agent must follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ProtocolTimings {
    /// Send a heartbeat at least this often.
    pub heartbeat_interval_ms: u64,
    /// A claim lease lasts this long unless renewed by a heartbeat.
    pub lease_ttl_ms: u64,
}

/// Reply to `POST /agent/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    /// The task this agent was started for.
    pub task: Task,
    /// Timings to follow.
    pub timings: ProtocolTimings,
}

/// `POST /agent/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRequest {
    /// The claiming agent.
    pub agent: AgentName,
    /// This process of the agent ([`ProcessId::generate`], once per process). A claim again
    /// with the same process (a retry after a lost reply) keeps the fencing token; a claim by
    /// another process of the same agent (a replacement pod) takes the task over with a new
    /// token, so the old process can no longer write its log, renew or complete. Without it,
    /// every claim again by the agent keeps the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessId>,
}

/// Reply to `POST /agent/claim`: the task and the lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClaimResponse {
    /// The claimed task.
    pub task: Task,
    /// Fencing token: send it with every later call; a newer claim makes it stale (409).
    pub fencing: u64,
    /// When the lease expires unless renewed.
    pub lease_expires_at: DateTime<Utc>,
    /// Sequence number of this agent's first log line: a task's log is one sequence across
    /// attempts, so a requeued task's new agent continues after the old one's lines.
    pub next_log_seq: u64,
    /// Timings to follow.
    pub timings: ProtocolTimings,
}

/// `POST /agent/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The agent.
    pub agent: AgentName,
    /// The fencing token of its claim, once it holds one: renews the lease.
    #[serde(default)]
    pub fencing: Option<u64>,
    /// Free-form state (runner, editor), shown in `GET /agents`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub state: Option<serde_json::Value>,
}

/// Reply to `POST /agent/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// The task's status now.
    pub task_status: TaskStatus,
    /// True when the agent must stop its runner (the task was cancelled or taken away).
    pub cancel: bool,
    /// When the lease now expires, if the agent holds it.
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// `POST /agent/log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogRequest {
    /// The agent.
    pub agent: AgentName,
    /// Fencing token of its claim.
    pub fencing: u64,
    /// Lines, each with a per-task sequence number (at most 1000 per call). Sequence numbers
    /// grow strictly within a batch; a new line must come after every stored line of the task
    /// (gaps are allowed, going back is refused with 409 `log_out_of_order`); a line whose
    /// number is already stored is a re-send and is skipped.
    pub lines: Vec<NewLogLine>,
    /// This is the agent's last batch for the task: the log is sealed after it, later writes
    /// get 409 `log_sealed`, and log streams end once the task is finished and its log sealed.
    #[serde(default, rename = "final")]
    pub is_final: bool,
}

/// Reply to `POST /agent/log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogResponse {
    /// Lines newly stored (re-sent lines are skipped).
    pub inserted: usize,
    /// Highest sequence number stored for the task.
    pub max_seq: u64,
    /// The task's log quota is used up: output lines past it were dropped (a system line says
    /// so). The agent should stop sending output lines; the task itself goes on.
    #[serde(default)]
    pub quota_exceeded: bool,
}

/// `POST /agent/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompleteRequest {
    /// The agent.
    pub agent: AgentName,
    /// Fencing token of its claim.
    pub fencing: u64,
    /// `Succeeded` or `Failed`.
    pub status: TaskStatus,
    /// Runner exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// Artifacts produced.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// Pull request opened, if any.
    #[serde(default)]
    pub pr_url: Option<String>,
}

/// `POST /tasks/{id}/cancel`: no fields; the body may be left out or be `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {}

/// `POST /agents/editor/open` and `POST /agents/editor/close`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EditorRequest {
    /// The agent.
    pub name: AgentName,
    /// Its org.
    pub org: OrgName,
}

/// Reply to `POST /agents/editor/open`: where the orchestrator reaches the agent's editor
/// (for the Kubernetes backend, a port-forward on 127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EditorOpenResponse {
    /// The agent.
    pub name: AgentName,
    /// Host or IP address.
    pub host: String,
    /// The port the orchestrator serves the editor under (`/editor/proxy/<port>/`): the local
    /// end of a port-forward or a local editor's own port (unique on the orchestrator's host);
    /// for an editor on the tailnet or at an address the agent advertised (their ports are
    /// shared: every code-server listens on 8443), a number from 20000 up derived from the org
    /// and agent names, the same on every replica.
    pub port: u16,
    /// Where the orchestrator serves the editor (`/editor/proxy/<port>/`); the reply also sets
    /// an HttpOnly session cookie for that path.
    pub path: String,
}

/// Reply to `POST /agents/editor/close`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EditorCloseResponse {
    /// Whether an open editor connection was closed.
    pub closed: bool,
}

/// Reply to `GET /tasks/{id}`: the task, and what its backend says about its workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskDetail {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// The backend's view of the workload (Kubernetes: AgentTask phase and conditions, pods,
    /// warning events); absent when the backend has nothing to say or could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadInfo>,
    /// Why a `Scheduled` task is waiting, when the orchestrator knows (e.g. its org's backend
    /// refused the last submit and the next try is later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// `DELETE /orgs/{org}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeletedOrg {
    /// The removed org.
    pub deleted: OrgName,
}

// ---- errors ---------------------------------------------------------------------------------

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Detail of an error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`, `stale_fencing`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---- org bootstrap ---------------------------------------------------------------------------

/// `POST /orgs/bootstrap`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrgBootstrapRequest {
    /// The org (also the cluster name); must be registered.
    pub org: OrgName,
    /// Control-plane node addresses (IPs or host names; at least one).
    pub cp_nodes: Vec<String>,
    /// Worker node addresses.
    #[serde(default)]
    pub worker_nodes: Vec<String>,
}

/// Where a bootstrap job stands (`GET /orgs/{org}/bootstrap`, and the reply to the start).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BootstrapStatus {
    /// The org.
    pub org: OrgName,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Files written, once succeeded (`kubeconfig`, `talosconfig` paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Progress stream (SSE).
    pub stream: String,
}

/// `POST /kubeconfig/generate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeconfigRequest {
    /// The org.
    pub org: OrgName,
    /// A control-plane node address.
    pub endpoint: String,
}

/// Reply to `POST /kubeconfig/generate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigResponse {
    /// The org.
    pub org: OrgName,
    /// Where the kubeconfig was written (mode 0600).
    pub path: String,
}

/// What a backend can tell about a task's workload beyond its state, so a person can see why a
/// task does not start (unschedulable pod, image pull errors, an invalid spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    /// The backend's resource, e.g. `AgentTask mvp-agents/atask-<id>`.
    pub resource: String,
    /// The resource's phase, as the backend names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions, one line each (`Ready=False DeploymentUnavailable: ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// Pods, one line each (`<pod> Pending: Unschedulable: 0/1 nodes are available ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Recent warning events, newest last (`FailedScheduling: ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// A progress event of a long bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapProgress {
    /// Step name.
    pub step: String,
    /// `start`, `output`, `done` or `error`.
    pub phase: String,
    /// Detail (secrets redacted).
    pub message: String,
}

// ---- retention (`/admin/prune`, `/admin/disk`) ----

/// What one prune removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Tasks that finished before this time were removed.
    pub before: DateTime<Utc>,
    /// Tasks removed (with their log lines and agents).
    pub tasks: u64,
    /// Local workspaces removed.
    pub workspaces: u64,
    /// Bytes of workspace files removed.
    pub workspace_bytes: u64,
}

/// `POST /admin/prune` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneRequest {
    /// Remove tasks that finished more than this many seconds ago (0: every finished task).
    pub older_than_secs: u64,
}

/// Disk use of the orchestrator's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DiskUsage {
    /// The state dir (absent when the orchestrator was started without one).
    pub state_dir: Option<String>,
    /// Bytes of every file under the state dir (database included).
    pub state_dir_bytes: u64,
    /// Bytes of the SQLite database and its WAL (0 on PostgreSQL).
    pub database_bytes: u64,
    /// Where the local backend keeps workspaces.
    pub workspaces_dir: Option<String>,
    /// Bytes of every file under it.
    pub workspaces_bytes: u64,
    /// Workspaces (one per task the local backend ran).
    pub workspaces: u64,
    /// Finished tasks older than this many seconds are removed (absent: kept forever).
    pub retention_secs: Option<u64>,
}

/// `PUT /mesh`: the tailnet this orchestrator puts Kubernetes agents on, set at run time (the
/// dashboard's mesh setup hands its mesh over with it). The orchestrator's host joins it too
/// (a userspace tailscaled under its state dir) and reaches agents' editors through that node.
/// Its `Debug` never shows the API key.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRequest {
    /// Headscale's URL as the orchestrator reaches its REST API (`http(s)://host:port`).
    pub headscale_url: String,
    /// The URL nodes (agent pods, the orchestrator's node) log in to (default: `headscaleUrl`),
    /// e.g. when the orchestrator reaches Headscale on loopback but pods reach it at the node IP.
    #[serde(default)]
    pub login_server: Option<String>,
    /// A Headscale API key (`headscale apikeys create`). A secret: stored 0600 in the state
    /// dir, never in a reply, a log line or an error.
    pub api_key: String,
    /// The Headscale user owning agent nodes and the orchestrator's node (default
    /// `guildnet-agents`; created if missing).
    #[serde(default)]
    pub user: Option<String>,
    /// ACL tags (`tag:NAME`) for agent nodes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The orchestrator's host name on the tailnet (default `guildnet-orchestrator`).
    #[serde(default)]
    pub hostname: Option<String>,
}

impl std::fmt::Debug for MeshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRequest")
            .field("headscale_url", &self.headscale_url)
            .field("login_server", &self.login_server)
            .field("api_key", &"<redacted>")
            .field("user", &self.user)
            .field("tags", &self.tags)
            .field("hostname", &self.hostname)
            .finish()
    }
}

/// The most bytes of a [`MeshRequest`] URL.
const MAX_MESH_URL: usize = 2048;

fn mesh_url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("is required".into());
    }
    if url.len() > MAX_MESH_URL {
        return Some(format!("longer than {MAX_MESH_URL} bytes"));
    }
    match reqwest::Url::parse(url) {
        Err(e) => Some(format!("not a URL ({e})")),
        Ok(u) if u.scheme() != "http" && u.scheme() != "https" => {
            Some("must be an http:// or https:// URL".into())
        }
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("has no host".into()),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            Some("must not carry credentials (pass the API key as apiKey)".into())
        }
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            Some("must not have a query or fragment".into())
        }
        Ok(_) => None,
    }
}

/// A DNS label: 1-63 lower-case letters, digits and '-', not starting or ending with '-'.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl MeshRequest {
    /// Checks every field; the error names the field (`headscaleUrl`, `loginServer`, `apiKey`,
    /// `user`, `tags[N]`, `hostname`) and never quotes the API key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, why: String| Err((f.to_owned(), format!("{f}: {why}")));
        if let Some(why) = mesh_url_problem(self.headscale_url.trim()) {
            return bad("headscaleUrl", why);
        }
        if let Some(l) = &self.login_server {
            if let Some(why) = mesh_url_problem(l.trim()) {
                return bad("loginServer", why);
            }
        }
        let k = &self.api_key;
        if k.trim().is_empty() {
            return bad("apiKey", "is required".into());
        }
        if k.len() > 512 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad(
                "apiKey",
                "must be one token of at most 512 characters without spaces".into(),
            );
        }
        if let Some(u) = &self.user {
            let ok = !u.is_empty()
                && u.len() <= 63
                && u.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == '@'
                });
            if !ok {
                return bad(
                    "user",
                    "1-63 letters, digits, '-', '_', '.' or '@' (a Headscale user name)".into(),
                );
            }
        }
        if self.tags.len() > 32 {
            return bad("tags", "at most 32 tags".into());
        }
        for (i, t) in self.tags.iter().enumerate() {
            let ok = t.strip_prefix("tag:").is_some_and(|n| {
                !n.is_empty()
                    && n.len() <= 63
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
            if !ok {
                return bad(
                    &format!("tags[{i}]"),
                    "not a tag (tag:<letters, digits, '-', '_'>)".into(),
                );
            }
        }
        if let Some(h) = &self.hostname {
            if !dns_label(h) {
                return bad(
                    "hostname",
                    "a DNS label: 1-63 lower-case letters, digits and '-'".into(),
                );
            }
        }
        Ok(())
    }
}

/// `GET /mesh`, and the reply of `PUT` and `DELETE /mesh`: the tailnet agents of the
/// Kubernetes backend are put on, and this orchestrator's own node on it. Never the API key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// Whether this orchestrator can put agents on a mesh (the Kubernetes backend).
    pub available: bool,
    /// Whether a mesh is configured.
    pub configured: bool,
    /// Where it comes from: `flags` (start-up flags, which win: `PUT` and `DELETE` are refused)
    /// or `api` (`PUT /mesh`, kept across restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Headscale's API URL (without credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headscale_url: Option<String>,
    /// The URL nodes log in to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_server: Option<String>,
    /// The Headscale user of agent nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// ACL tags of agent nodes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The orchestrator's host name on the tailnet (a mesh set through the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Whether the orchestrator's own node is on the tailnet now (a mesh set through the API;
    /// with start-up flags, the node of `--tailnet-socks5` is not looked at: false).
    pub joined: bool,
    /// The orchestrator node's tailnet addresses.
    #[serde(default)]
    pub tailnet_ips: Vec<String>,
    /// The URL agents on the tailnet reach the orchestrator at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator_url: Option<String>,
    /// Why the node is not joined (yet), when known (no secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
