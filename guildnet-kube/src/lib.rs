#![warn(missing_docs)]
//! Kubernetes integration for GuildNet.
//!
//! - [`crd`]: the `AgentTask` custom resource (guildnet.io/v1alpha1), its YAML generated from the
//!   Rust type, and the names the backend and the operator share (labels, the credentials
//!   Secret and its keys).
//! - [`pool`]: the `AgentPool` custom resource and its names.
//! - [`operator`]: the reconcilers that turn an AgentTask into a Secret, a Deployment and a
//!   Service (typed manifests in [`operator::manifests`], server-side apply, one field manager,
//!   controller owner references) and an AgentPool into warm pods; they track phases, honour
//!   cancel and TTL, and emit Kubernetes Events.
//! - [`install`]: the per-cluster manifests, typed (namespace, CRD, ServiceAccount, least-privilege
//!   Role/RoleBinding, operator Deployment) and an idempotent installer.
//! - [`mesh_sidecar`]: the agent pod's userspace tailscale sidecar when the AgentTask has
//!   `spec.mesh` (the agent on the tailnet, issue 22).
//! - [`backend`]: [`backend::KubeBackend`], core's `ClusterBackend` over AgentTasks in each
//!   org's cluster, including the editor port-forward ([`portforward`]).

pub mod backend;
pub mod backend_mesh;
pub mod crd;
pub mod install;
pub mod leader;
pub mod mesh_sidecar;
pub mod operator;
pub mod pool;
mod pool_backend;
pub mod portforward;
pub mod yaml;

pub use crd::{
    AgentMeshSpec, AgentTask, AgentTaskSpec, AgentTaskStatus, Phase, EDITOR_PORT, MANAGED_BY,
    TASK_LABEL,
};
pub use pool::{AgentPool, AgentPoolSpec, AgentPoolStatus};

/// The field manager of every server-side apply GuildNet makes.
pub const FIELD_MANAGER: &str = "guildnet";
/// Namespace the operator watches and the backend creates AgentTasks in, by default.
pub const DEFAULT_NAMESPACE: &str = "mvp-agents";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An AgentTask's spec is invalid.
    #[error("invalid AgentTask: {0}")]
    Invalid(String),
    /// Serializing a manifest failed.
    #[error("serialize {what}: {reason}")]
    Serialize {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
}
