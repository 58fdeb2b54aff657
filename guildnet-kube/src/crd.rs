//! The `AgentTask` custom resource (guildnet.io/v1alpha1), and the names the orchestrator's
//! backend ([`crate::backend`]) and the operator ([`crate::operator`]) share about it: labels,
//! the credentials Secret and its keys. The Rust type is the source of truth; the CRD YAML (see
//! [`crd_yaml`]) is generated from it.
//!
//! This module owns types and names only: no API calls.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Label on every object GuildNet creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "guildnet");
/// Label with the AgentTask a child object belongs to (on its Deployment, Service, Secrets and
/// pods, and on an adopted warm pool pod).
pub const TASK_LABEL: &str = "guildnet.io/agenttask";
/// Label on an AgentTask (and an adopted pool pod) with its current agent's name.
pub const AGENT_LABEL: &str = "guildnet.io/agent";
/// Label on AgentTasks: their org (set by the orchestrator's backend).
pub const ORG_LABEL: &str = "guildnet.io/org";
/// The agent's code-server port (the Service's and the port-forward's target).
pub const EDITOR_PORT: u16 = 8443;
/// Key of the agent token in the credentials Secret.
pub const CREDENTIALS_TOKEN_KEY: &str = "agent-token";
/// Key of the code-server password in the credentials Secret.
pub const CREDENTIALS_PASSWORD_KEY: &str = "code-server-password";
/// Prefix of the credentials Secret's keys that carry the agent's secret environment
/// (`env.<NAME>`); the operator copies them into the pod's env Secret as `<NAME>`.
pub const SECRET_ENV_KEY_PREFIX: &str = "env.";

/// Name of an AgentTask's credentials Secret (written by the backend, read by the operator):
/// `spec.credentialsSecret`, else `<name>-credentials`.
pub fn credentials_secret_name(at: &AgentTask) -> String {
    use kube::ResourceExt;
    at.spec
        .credentials_secret
        .clone()
        .unwrap_or_else(|| format!("{}-credentials", at.name_any()))
}

/// API group of GuildNet's resources.
pub const GROUP: &str = "guildnet.io";
/// API version of `AgentTask`.
pub const VERSION: &str = "v1alpha1";

/// What an agent should do, for whom, with which image. Created by the orchestrator's Kubernetes
/// backend; reconciled by the operator into a Secret, a Deployment and a Service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "guildnet.io",
    version = "v1alpha1",
    kind = "AgentTask",
    plural = "agenttasks",
    shortname = "atask",
    namespaced,
    status = "AgentTaskStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Org","type":"string","jsonPath":".spec.orgId"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agentName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskSpec {
    /// The organization (DNS-1123 label).
    pub org_id: String,
    /// The orchestrator's task id (DNS-1123 label).
    pub task_id: String,
    /// The task text given to the agent.
    pub task: String,
    /// Agent container image.
    pub image: String,
    /// Extra environment for the agent (not secret: secrets go in the credentials Secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Repository to clone into the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoRef>,
    /// Set to stop the agent and remove its workload (phase becomes Cancelled).
    #[serde(default)]
    pub cancel: bool,
    /// Delete the AgentTask this long after it finished (Succeeded, Failed or Cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Compute resources of the agent container (defaults apply when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Attempt number (1-based); a new attempt rolls the pod with fresh credentials.
    #[serde(default = "one")]
    pub attempt: u32,
    /// The agent's name for this attempt (the orchestrator's identity for it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_name: String,
    /// URL at which the agent reaches the orchestrator, when the operator has no
    /// PUBLIC_ORCHESTRATOR_URL of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator_url: Option<String>,
    /// Name of the Secret (same namespace) holding `agent-token` and `code-server-password`.
    /// Defaults to `<name>-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Set when a warm pool agent took the task: its pod, which the operator adopts as the
    /// task's workload instead of creating a Deployment (see [`crate::pool`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_pod: Option<String>,
    /// Set when the orchestrator has a mesh: the operator adds a userspace tailscale sidecar
    /// that joins the tailnet with the single-use pre-auth key from the credentials Secret
    /// (see [`crate::mesh_sidecar`]). The key itself is never in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<AgentMeshSpec>,
}

/// How an agent joins the tailnet (no secret: the pre-auth key is in the credentials Secret
/// under [`crate::mesh_sidecar::CREDENTIALS_AUTHKEY_KEY`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentMeshSpec {
    /// The Headscale URL the sidecar logs in to (`--login-server`).
    pub login_server: String,
    /// The node's host name on the tailnet (the agent's name; unique per attempt).
    pub hostname: String,
    /// The orchestrator's URL on the tailnet: the agent reaches it through the sidecar's proxy.
    /// Overrides the operator's `--public-orchestrator-url` (a pod-network address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator_url: Option<String>,
}

fn one() -> u32 {
    1
}

/// A git repository and ref.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoRef {
    /// Clone URL.
    pub url: String,
    /// Branch, tag or commit; the default branch when absent.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// Lifecycle phase of an AgentTask.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    /// Created; the workload is not available yet.
    #[default]
    Pending,
    /// The agent's Deployment is available.
    Running,
    /// The orchestrator recorded success.
    Succeeded,
    /// The orchestrator recorded failure.
    Failed,
    /// Cancelled through `spec.cancel`.
    Cancelled,
}

impl Phase {
    /// Succeeded, Failed or Cancelled.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }

    /// The phase's name as shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }
}

/// Observed state of an AgentTask.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// The agent of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// Name of the Deployment, Service and `<name>-env` Secret; decided once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    /// Where the agent stored its artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_path: Option<String>,
    /// The pull request the agent opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_url: Option<String>,
    /// Why the task failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The agent's exit code, when it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the workload first became available (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the task finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Conditions (Ready, Valid, CredentialsReady).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition, as in Kubernetes' own types.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type (Ready, Valid, CredentialsReady).
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// Machine-readable reason (CamelCase).
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The CustomResourceDefinition of AgentTask.
pub fn crd() -> CustomResourceDefinition {
    AgentTask::crd()
}

/// Every CustomResourceDefinition of GuildNet: AgentTask and AgentPool.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![AgentTask::crd(), crate::pool::AgentPool::crd()]
}

/// The CRDs as YAML (what `guildnet-operator crd` prints and `deploy/crd.yaml` holds).
pub fn crd_yaml() -> Result<String, crate::Error> {
    let values = crds()
        .iter()
        .map(|c| {
            serde_json::to_value(c).map_err(|e| crate::Error::Serialize {
                what: "CRD",
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    crate::yaml::to_multi_yaml(&values)
}
