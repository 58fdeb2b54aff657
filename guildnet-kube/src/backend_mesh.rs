//! The Kubernetes backend's part of putting agents on the tailnet (issue 22).
//!
//! With [`KubeMesh`] in [`crate::backend::KubeBackendConfig::mesh`]:
//! - **submit** mints a single-use, ephemeral pre-auth key for the attempt's agent (host name =
//!   agent name) through [`AgentMesh::agent_key`] *before* anything is applied, puts it in the
//!   credentials Secret under [`crate::mesh_sidecar::CREDENTIALS_AUTHKEY_KEY`], and sets
//!   `spec.mesh` (login server, host name, the orchestrator's URL) so the operator adds the
//!   sidecar. The key is never in the spec, a log line or an event. If Headscale cannot mint one
//!   (unreachable, API key refused) the submit fails with that reason: the orchestrator keeps
//!   the task Scheduled, shows the reason and retries with its per-org backoff. Only
//!   [`KubeMesh::allow_off_mesh`] lets it start the agent on the pod network instead (a
//!   warning is logged).
//! - A new attempt first removes the previous attempt's node.
//! - **task end** (Succeeded/Failed through `task_finished`, and cancel) deletes the agent's
//!   node from Headscale through the API at once; Headscale's own removal of ephemeral nodes
//!   after inactivity is only the backstop (a crash of the orchestrator in between).
//! - **editor**: the editor is reached at the node's tailnet address, dialed through the
//!   orchestrator's own node (`EditorEndpoint::via_tailnet`), not through a port-forward.
//!
//! Warm pool agents (a task taken by a pool pod) are not put on the mesh here.

use crate::crd::AgentMeshSpec;
use guildnet_core::names::{AgentName, TaskId};
use guildnet_core::seams::{AgentLaunch, AgentMesh, BackendError};
use guildnet_core::token::Secret;
use std::sync::Arc;

/// The mesh the Kubernetes backend puts agents on.
#[derive(Debug, Clone)]
pub struct KubeMesh {
    /// Mints agent keys and removes agent nodes (`guildnet_mesh::AgentMeshKeys`).
    pub keys: Arc<dyn AgentMesh>,
    /// Start the agent without the mesh when no key can be minted, instead of failing the
    /// submit. Off by default: a task never silently runs off the mesh.
    pub allow_off_mesh: bool,
}

impl KubeMesh {
    /// Agents on the mesh of `keys`; no key, no agent.
    pub fn new(keys: Arc<dyn AgentMesh>) -> Self {
        KubeMesh {
            keys,
            allow_off_mesh: false,
        }
    }
}

/// The mesh spec and key of a launch, or `None` when it runs off the mesh (no mesh configured,
/// a pooled task, or a failure allowed by [`KubeMesh::allow_off_mesh`]).
pub(crate) async fn mint(
    mesh: Option<&KubeMesh>,
    launch: &AgentLaunch,
) -> Result<Option<(AgentMeshSpec, Secret)>, BackendError> {
    let Some(mesh) = mesh else {
        return Ok(None);
    };
    if launch.pool.is_some() {
        return Ok(None);
    }
    let hostname = launch.agent.to_string();
    if launch.attempt > 1 {
        let prev = launch.task_id.agent_name(launch.attempt - 1);
        remove(mesh, &launch.task_id, &prev).await;
    }
    match mesh.keys.agent_key(&hostname).await {
        Ok(key) => Ok(Some((
            AgentMeshSpec {
                login_server: mesh.keys.login_server(),
                hostname,
                orchestrator_url: Some(launch.orchestrator_url.clone()),
            },
            key,
        ))),
        Err(e) if mesh.allow_off_mesh => {
            tracing::warn!(
                task = %launch.task_id, agent = %launch.agent, error = %e,
                "no tailnet key for the agent: starting it off the mesh (--mesh-allow-off-mesh)"
            );
            Ok(None)
        }
        Err(e) => Err(BackendError::Workload {
            action: "submit",
            task: launch.task_id.clone(),
            agent: launch.agent.clone(),
            reason: format!(
                "cannot put the agent on the tailnet (no pre-auth key from headscale): {e}"
            ),
        }),
    }
}

/// Removes the agent's node from the mesh; failures are logged (ephemeral nodes also go away
/// on their own after inactivity). Returns whether the call succeeded.
pub(crate) async fn remove(mesh: &KubeMesh, task: &TaskId, agent: &AgentName) -> bool {
    match mesh.keys.remove_node(agent.as_str()).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(%task, %agent, nodes = n, "agent's tailnet node removed");
            }
            true
        }
        Err(e) => {
            tracing::warn!(%task, %agent, error = %e, "could not remove the agent's tailnet node");
            false
        }
    }
}

/// Like [`remove`], as a backend error for `task_finished`.
pub(crate) async fn remove_or_err(
    mesh: &KubeMesh,
    task: &TaskId,
    agent: &AgentName,
) -> Result<(), BackendError> {
    mesh.keys
        .remove_node(agent.as_str())
        .await
        .map(|n| {
            tracing::info!(%task, %agent, nodes = n, "task ended: agent's tailnet node removed");
        })
        .map_err(|e| BackendError::Workload {
            action: "remove the tailnet node of",
            task: task.clone(),
            agent: agent.clone(),
            reason: e.to_string(),
        })
}
