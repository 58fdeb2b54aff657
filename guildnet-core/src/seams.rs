//! Traits at the real seams of GuildNet, each with a caller here and implementations elsewhere:
//! where tasks run (a cluster backend), how a task's agent gets on the tailnet (agent mesh
//! keys), and how an org's cluster comes to exist (a bootstrap).
//!
//! Implementations live in their own crates (`guildnet-kube`, `guildnet-mesh`, `guildnet-talos`)
//! and in [`crate::local`]. With the `mocks` feature, mockall automocks (`MockClusterBackend`,
//! `MockAgentMesh`, `MockClusterBootstrap`, and `store::MockStateStore`) let downstream code
//! test offline; `tests/mocks_downstream.rs` uses the backend, bootstrap and store ones that way.

use crate::names::{AgentName, OrgName, TaskId};
use crate::token::Secret;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Errors from a cluster backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The org has no reachable cluster (no kubeconfig, not provisioned...).
    #[error("org {org} has no usable cluster: {reason}")]
    OrgUnavailable {
        /// Which org.
        org: OrgName,
        /// Why.
        reason: String,
    },
    /// Starting or stopping the task's agent failed.
    #[error("backend failed to {action} agent {agent} of task {task}: {reason}")]
    Workload {
        /// What was attempted (submit, cancel, inspect).
        action: &'static str,
        /// Which task.
        task: TaskId,
        /// Which agent.
        agent: AgentName,
        /// Why.
        reason: String,
    },
    /// The org's cluster works but has no room for another agent now. The orchestrator tries
    /// again after its submit retry interval, without backing off (a refusal is a queue).
    #[error("org {org} is at capacity: {reason}")]
    AtCapacity {
        /// Which org.
        org: OrgName,
        /// Why.
        reason: String,
    },
    /// The backend does not support this operation.
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// Operation.
        what: &'static str,
    },
}

/// Everything a backend needs to start a task's agent. The agent receives these as environment
/// variables (see [`AgentLaunch::env`]), the same in a pod and in a local child process.
#[derive(Debug, Clone)]
pub struct AgentLaunch {
    /// Task id.
    pub task_id: TaskId,
    /// Org whose cluster runs it.
    pub org: OrgName,
    /// The agent's name for this attempt.
    pub agent: AgentName,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// The task's text (what the agent is asked to do). Not secret, but can be long.
    pub task: String,
    /// Optional hint recorded with the task (e.g. an agent profile).
    pub agent_hint: Option<String>,
    /// URL at which the agent reaches the orchestrator.
    pub orchestrator_url: String,
    /// The per-task agent token (the orchestrator keeps only its hash).
    pub agent_token: Secret,
    /// Settings for the agent computed by the orchestrator from its configuration (runner,
    /// forge, git author, model provider keys), split into plain and secret environment.
    pub settings: AgentSettings,
    /// Set when a warm pool agent already took this task (it got the token and settings over
    /// its open wait): the backend starts nothing, it only records the task's workload as that
    /// agent's pod.
    pub pool: Option<PoolPlacement>,
}

/// Where a pooled task runs: the warm agent that took it.
#[derive(Debug, Clone)]
pub struct PoolPlacement {
    /// The agent's pod (or process) name, as it gave it when it started waiting.
    pub pod: String,
    /// The code-server password the agent was handed for this task (the editor proxy logs in
    /// with it).
    pub editor_password: Secret,
}

/// What a backend needs to run an org's warm pool.
#[derive(Debug, Clone)]
pub struct PoolLaunch {
    /// URL at which the pool's agents reach the orchestrator.
    pub orchestrator_url: String,
    /// The pool token the agents wait with (see [`crate::pool::token`]).
    pub pool_token: Secret,
}

/// Agent settings the orchestrator computed for one task, as environment for the agent.
///
/// A backend passes [`AgentSettings::env`] where workload specs are visible (the Kubernetes
/// backend: the AgentTask spec) and [`AgentSettings::secret_env`] only where secrets are kept
/// (the Kubernetes backend: the per-task credentials Secret; the local backend: the agent
/// process's environment, readable only by its user). The plain half includes
/// `GUILDNET_SECRET_ENV`, the names of the secret variables, so the agent can redact their
/// values from every log line it ships.
#[derive(Debug, Clone, Default)]
pub struct AgentSettings {
    /// Plain environment: the runner template, forge API URL and kind, git author, ...
    pub env: Vec<(String, String)>,
    /// Secret environment: the forge token, model provider API keys.
    pub secret_env: Vec<(String, Secret)>,
}

impl AgentSettings {
    /// The value of a plain variable, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when a secret variable of this name is set.
    pub fn has_secret(&self, name: &str) -> bool {
        self.secret_env.iter().any(|(k, _)| k == name)
    }
}

impl AgentLaunch {
    /// The environment the agent gets. Contains the token: never log it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                crate::agent_env::ORCHESTRATOR_URL,
                self.orchestrator_url.clone(),
            ),
            (
                crate::agent_env::AGENT_TOKEN,
                self.agent_token.expose().to_owned(),
            ),
            (crate::agent_env::TASK_ID, self.task_id.to_string()),
            (crate::agent_env::ORG_NAME, self.org.to_string()),
            (crate::agent_env::AGENT_NAME, self.agent.to_string()),
        ]
    }
}

/// What a backend knows about a task's workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadState {
    /// Being created.
    Pending,
    /// Up.
    Running,
    /// Ended, with its exit code when known.
    Exited(Option<i32>),
    /// Not present (never started, or removed).
    Absent,
    /// This backend cannot tell: it did not start the workload itself, and can only see its
    /// own (the local backend of another orchestrator replica started it). The reaper leaves
    /// such a task to the claim timeout instead of requeueing it at once.
    Unknown,
    /// It did not start and will not: its start deadline passed while it was stuck (an image
    /// that cannot be pulled, an unschedulable pod, a crash loop). The text names the cause.
    FailedToStart(String),
}

pub use crate::api::WorkloadInfo;

/// Where an agent's editor (code-server) listens, as seen from the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditorEndpoint {
    /// Host or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The editor's login password, when the backend knows it: the orchestrator's editor proxy
    /// logs in with it so the person never needs it. Never serialized.
    #[serde(skip)]
    pub password: Option<crate::token::Secret>,
    /// The host is a tailnet address: the orchestrator dials it through its node's SOCKS5
    /// proxy (`--tailnet-socks5`), never directly.
    #[serde(skip)]
    pub via_tailnet: bool,
    /// The process whose tree must hold the port (the local backend's agent, code-server's
    /// parent): the orchestrator's editor proxy sends nothing there while another process holds
    /// it, say one that bound the port while code-server restarted. Only for a port on the
    /// orchestrator's host. The orchestrator's own pid (a port-forward's local port) means that
    /// process alone: its children (a local agent and its runner) do not count. Never
    /// serialized.
    #[serde(skip)]
    pub held_by: Option<u32>,
}

/// Runs task agents for orgs: a local process, a Kubernetes AgentTask, ...
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ClusterBackend: Send + Sync {
    /// Short backend name for logs and errors (`local`, `kubernetes`).
    fn name(&self) -> &'static str;
    /// Starts the agent for a task attempt. Must be idempotent for the same agent name.
    async fn submit(&self, launch: AgentLaunch) -> Result<(), BackendError>;
    /// Stops a task's agent and removes its workload. Idempotent.
    async fn cancel(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<(), BackendError>;
    /// The state of a task's workload.
    async fn status(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<WorkloadState, BackendError>;
    /// Where the agent's editor can be reached from the orchestrator, if the backend knows.
    /// Backends that need a tunnel (the Kubernetes port-forward) open it here and reuse it.
    async fn editor_endpoint(
        &self,
        org: &OrgName,
        agent: &AgentName,
    ) -> Result<Option<EditorEndpoint>, BackendError>;
    /// Details of a task's workload for people (phase, conditions, pods, warning events), if the
    /// backend has any. `agent` is the task's current agent, when it has one.
    async fn describe(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: Option<AgentName>,
    ) -> Result<Option<WorkloadInfo>, BackendError>;
    /// Stops access to an agent's editor opened by [`ClusterBackend::editor_endpoint`] (a
    /// port-forward, say). Returns whether something was open.
    async fn close_editor(&self, org: &OrgName, agent: &AgentName) -> Result<bool, BackendError>;
    /// Records that a task reached Succeeded or Failed (the orchestrator has already stored it),
    /// so the backend can reflect it where the workload lives (the Kubernetes backend patches
    /// the AgentTask's status). Failures are logged by the caller, never returned to the agent.
    async fn task_finished(&self, task: &crate::model::Task) -> Result<(), BackendError>;

    /// Creates or updates the warm pool of `org` (see [`crate::pool`]). Backends without pools
    /// answer [`BackendError::Unsupported`].
    async fn set_pool(
        &self,
        org: &OrgName,
        spec: &crate::pool::PoolSpec,
        launch: PoolLaunch,
    ) -> Result<(), BackendError> {
        let _ = (org, spec, launch);
        Err(BackendError::Unsupported {
            backend: self.name(),
            what: "warm pools",
        })
    }

    /// Removes the warm pool of `org` and its idle agents. Returns whether there was one.
    async fn delete_pool(&self, org: &OrgName) -> Result<bool, BackendError> {
        let _ = org;
        Ok(false)
    }

    /// The backend's view of the warm pool of `org`, if it has one.
    async fn pool_status(
        &self,
        org: &OrgName,
    ) -> Result<Option<crate::pool::PoolBackendStatus>, BackendError> {
        let _ = org;
        Ok(None)
    }
}

/// Errors from a mesh implementation.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The control server refused the credentials (wrong or expired key).
    #[error("mesh authentication failed: {0}")]
    Auth(String),
    /// The control server or local daemon could not be reached.
    #[error("mesh unreachable at {target}: {reason}")]
    Unreachable {
        /// What was dialled.
        target: String,
        /// Why.
        reason: String,
    },
    /// Anything else, with context.
    #[error("mesh operation {op} failed: {reason}")]
    Failed {
        /// The operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
}

/// What a cluster backend needs to put each task's agent on the mesh (issue 22): a
/// single-use, ephemeral pre-auth key per agent, the node's tailnet address (the editor is
/// reached there), and removing the node when the task ends. Implemented over the Headscale API
/// by `guildnet_mesh::AgentMeshKeys`; the agent's tailnet host name is its [`AgentName`].
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait AgentMesh: Send + Sync + std::fmt::Debug {
    /// The control server's URL agents log in to (`--login-server`).
    fn login_server(&self) -> String;
    /// Mints a single-use, ephemeral pre-auth key for the agent node `hostname`.
    async fn agent_key(&self, hostname: &str) -> Result<Secret, MeshError>;
    /// The tailnet IPv4 (else IPv6) address of the node registered as `hostname`, if any.
    async fn node_address(&self, hostname: &str) -> Result<Option<String>, MeshError>;
    /// Removes every node registered as `hostname` from the control server and returns how
    /// many there were (0 when it never joined or is already gone).
    async fn remove_node(&self, hostname: &str) -> Result<usize, MeshError>;
}

/// Errors from a cluster bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The request is invalid: which field, and why.
    #[error("invalid bootstrap request: {field}: {reason}")]
    Invalid {
        /// The field as the bootstrapper names it (`control_plane[0]`, `endpoint`, ...).
        field: String,
        /// Why it is refused (never secret material).
        reason: String,
    },
    /// The org has not been bootstrapped yet (no talosconfig): nothing to generate from.
    #[error("org {org} is not bootstrapped: {reason}")]
    NotBootstrapped {
        /// Which org.
        org: OrgName,
        /// What is missing.
        reason: String,
    },
    /// A step failed.
    #[error("bootstrap of org {org} failed at step {step}: {reason}")]
    Step {
        /// Which org.
        org: OrgName,
        /// Which step.
        step: String,
        /// Why (secrets redacted).
        reason: String,
    },
}

impl BootstrapError {
    /// An [`BootstrapError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        BootstrapError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<crate::names::ValidationError> for BootstrapError {
    fn from(e: crate::names::ValidationError) -> Self {
        BootstrapError::invalid(e.field, e.reason)
    }
}

/// Nodes of an org's cluster to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRequest {
    /// The org (also the cluster name).
    pub org: OrgName,
    /// Control-plane node addresses (at least one).
    pub control_plane: Vec<String>,
    /// Worker node addresses.
    pub workers: Vec<String>,
}

pub use crate::api::BootstrapProgress;

/// Where a finished bootstrap left its configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapOutcome {
    /// Kubeconfig written for the org.
    pub kubeconfig: PathBuf,
    /// Talosconfig written for the org.
    pub talosconfig: PathBuf,
}

/// Why a [`MeshControl`] refused or failed a change of the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshControlError {
    /// A field is invalid (422, naming the field).
    #[error("{reason}")]
    Invalid {
        /// The request field (`headscaleUrl`, `apiKey`, `tags[0]`...).
        field: String,
        /// Why (never quoting the API key).
        reason: String,
    },
    /// The mesh comes from the start-up flags, which win (409).
    #[error("the mesh is set by the orchestrator's start-up flags (--mesh-headscale-url): remove them to manage it through the API")]
    FromFlags,
    /// Headscale or the orchestrator's node refused or could not be reached (502); nothing
    /// was changed.
    #[error("{step}: {reason}")]
    Failed {
        /// What failed (`headscale`, `join`, `store`).
        step: &'static str,
        /// Why (no secrets).
        reason: String,
    },
}

/// The mesh of a running orchestrator, changed through `PUT` and `DELETE /mesh` (issue 22):
/// implemented by `guildnet_mesh::runtime::RuntimeMesh`, which joins the orchestrator's host
/// to the tailnet, keeps the setting across restarts and hands the new mesh to the Kubernetes
/// backend and the editor proxy's tailnet dialer.
#[async_trait]
pub trait MeshControl: Send + Sync {
    /// The mesh now (never the API key).
    async fn status(&self) -> crate::api::MeshStatus;
    /// Sets the mesh (a validated request): the orchestrator's node joins it, new tasks'
    /// agents go on it; tasks already running keep theirs. Nothing changes on failure.
    async fn set(
        &self,
        req: crate::api::MeshRequest,
    ) -> Result<crate::api::MeshStatus, MeshControlError>;
    /// Removes the mesh: new agents run off the tailnet, the orchestrator's node leaves it.
    async fn clear(&self) -> Result<crate::api::MeshStatus, MeshControlError>;
}

/// Brings an org's cluster into being (Talos first).
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ClusterBootstrap: Send + Sync {
    /// Runs the whole bootstrap, reporting progress on `progress`. Re-runnable.
    async fn bootstrap(
        &self,
        request: BootstrapRequest,
        progress: tokio::sync::mpsc::UnboundedSender<BootstrapProgress>,
    ) -> Result<BootstrapOutcome, BootstrapError>;

    /// Checks a request before any work starts (so an API can answer 422 at once).
    fn validate(&self, request: &BootstrapRequest) -> Result<(), BootstrapError>;

    /// The kubeconfig step alone: fetches the org cluster's admin kubeconfig from `endpoint`
    /// (a control-plane node) and writes it to the org's kubeconfig path, which it returns.
    async fn generate_kubeconfig(
        &self,
        org: &OrgName,
        endpoint: &str,
    ) -> Result<PathBuf, BootstrapError>;
}
