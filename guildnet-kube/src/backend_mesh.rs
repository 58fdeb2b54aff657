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
//!
//! **Changing the mesh while running** (`PUT /mesh`): the backend holds its mesh in a
//! [`MeshSlot`]. New submits use the current mesh; a running agent's editor, its cancel and its
//! task end use the mesh its AgentTask names (`spec.mesh.loginServer`), so tasks already running
//! keep theirs after a change.

use crate::crd::AgentMeshSpec;
use guildnet_core::names::{AgentName, TaskId};
use guildnet_core::seams::{AgentLaunch, AgentMesh, BackendError};
use guildnet_core::token::Secret;
use std::sync::{Arc, RwLock};

/// The mesh the Kubernetes backend puts agents on.
#[derive(Debug, Clone)]
pub struct KubeMesh {
    /// Mints agent keys and removes agent nodes (`guildnet_mesh::AgentMeshKeys`).
    pub keys: Arc<dyn AgentMesh>,
    /// Start the agent without the mesh when no key can be minted, instead of failing the
    /// submit. Off by default: a task never silently runs off the mesh.
    pub allow_off_mesh: bool,
    /// The URL agents on this mesh reach the orchestrator at (`spec.mesh.orchestratorUrl`),
    /// e.g. the orchestrator's own tailnet address; `None`: the orchestrator's public URL.
    pub orchestrator_url: Option<String>,
}

impl KubeMesh {
    /// Agents on the mesh of `keys`; no key, no agent.
    pub fn new(keys: Arc<dyn AgentMesh>) -> Self {
        KubeMesh {
            keys,
            allow_off_mesh: false,
            orchestrator_url: None,
        }
    }
}

/// How many replaced meshes a [`MeshSlot`] remembers for the agents still on them.
const RETIRED_KEPT: usize = 8;

#[derive(Debug, Default)]
struct SlotState {
    current: Option<Arc<KubeMesh>>,
    /// Replaced meshes, newest first (one per login server).
    retired: Vec<Arc<KubeMesh>>,
}

/// The backend's mesh, replaceable while it runs (`PUT /mesh`, guildnet-mesh's
/// `RuntimeMesh`). Cheap to clone; clones share the mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshSlot {
    state: Arc<RwLock<SlotState>>,
}

impl MeshSlot {
    /// A slot holding `mesh` (or none: agents off the mesh).
    pub fn new(mesh: Option<KubeMesh>) -> Self {
        let slot = Self::default();
        slot.set(mesh);
        slot
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SlotState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the mesh new agents go on; the previous one is remembered for the agents
    /// still on it.
    pub fn set(&self, mesh: Option<KubeMesh>) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let new = mesh.map(Arc::new);
        if let Some(old) = st.current.take() {
            let login = old.keys.login_server();
            st.retired.retain(|m| m.keys.login_server() != login);
            st.retired.insert(0, old);
            st.retired.truncate(RETIRED_KEPT);
        }
        if let Some(n) = &new {
            let login = n.keys.login_server();
            st.retired.retain(|m| m.keys.login_server() != login);
        }
        st.current = new;
    }

    /// The mesh new agents go on.
    pub fn current(&self) -> Option<Arc<KubeMesh>> {
        self.read().current.clone()
    }

    /// Whether a replaced mesh may still have agents.
    pub fn has_retired(&self) -> bool {
        !self.read().retired.is_empty()
    }

    /// The mesh whose login server is `login` (the current one first), for an agent an
    /// AgentTask put on it.
    pub fn for_login_server(&self, login: &str) -> Option<Arc<KubeMesh>> {
        let st = self.read();
        st.current
            .iter()
            .chain(st.retired.iter())
            .find(|m| m.keys.login_server() == login)
            .cloned()
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
                orchestrator_url: Some(
                    mesh.orchestrator_url
                        .clone()
                        .unwrap_or_else(|| launch.orchestrator_url.clone()),
                ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use guildnet_core::names::OrgName;
    use guildnet_core::seams::{AgentSettings, MeshError, PoolPlacement};
    use std::sync::Mutex;

    /// A mesh that records calls and fails minting when told to.
    #[derive(Debug, Default)]
    struct Fake {
        fail: bool,
        login: String,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl AgentMesh for Fake {
        fn login_server(&self) -> String {
            if self.login.is_empty() {
                "https://hs.example".into()
            } else {
                self.login.clone()
            }
        }
        async fn agent_key(&self, hostname: &str) -> Result<Secret, MeshError> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("key {hostname}"));
            if self.fail {
                return Err(MeshError::Unreachable {
                    target: "https://hs.example".into(),
                    reason: "connection refused".into(),
                });
            }
            Ok(Secret::new("hskey-auth-k"))
        }
        async fn node_address(&self, _: &str) -> Result<Option<String>, MeshError> {
            Ok(None)
        }
        async fn remove_node(&self, hostname: &str) -> Result<usize, MeshError> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("remove {hostname}"));
            Ok(1)
        }
    }

    fn launch(attempt: u32) -> AgentLaunch {
        let task_id = TaskId::new("t1abc").expect("id");
        AgentLaunch {
            agent: task_id.agent_name(attempt),
            task_id,
            org: OrgName::new("acme").expect("org"),
            attempt,
            task: "x".into(),
            agent_hint: None,
            orchestrator_url: "http://100.64.0.1:8080".into(),
            agent_token: Secret::new("tok"),
            settings: AgentSettings::default(),
            pool: None,
        }
    }

    fn mesh(fail: bool, allow_off_mesh: bool) -> (KubeMesh, Arc<Fake>) {
        let fake = Arc::new(Fake {
            fail,
            ..Default::default()
        });
        let m = KubeMesh {
            keys: fake.clone(),
            allow_off_mesh,
            orchestrator_url: None,
        };
        (m, fake)
    }

    #[tokio::test]
    async fn a_key_per_attempt_and_the_previous_node_goes() {
        assert!(mint(None, &launch(1)).await.expect("no mesh").is_none());
        let (m, fake) = mesh(false, false);
        let l = launch(2);
        let (spec, key) = mint(Some(&m), &l).await.expect("ok").expect("mesh");
        assert_eq!(spec.hostname, l.agent.as_str());
        assert_eq!(spec.login_server, "https://hs.example");
        assert_eq!(
            spec.orchestrator_url.as_deref(),
            Some("http://100.64.0.1:8080")
        );
        assert_eq!(key.expose(), "hskey-auth-k");
        let prev = l.task_id.agent_name(1);
        assert_eq!(
            *fake.calls.lock().expect("lock"),
            vec![format!("remove {prev}"), format!("key {}", l.agent)]
        );
    }

    #[tokio::test]
    async fn no_key_fails_the_submit_unless_off_mesh_is_allowed() {
        let (m, _) = mesh(true, false);
        let e = mint(Some(&m), &launch(1)).await.expect_err("no key");
        let text = e.to_string();
        assert!(
            text.contains("tailnet") && text.contains("connection refused"),
            "{text}"
        );
        let (m, _) = mesh(true, true);
        assert!(mint(Some(&m), &launch(1)).await.expect("allowed").is_none());
    }

    #[tokio::test]
    async fn a_new_mesh_is_used_by_new_agents_and_the_old_one_by_its_agents() {
        let mesh_at = |login: &str, url: Option<&str>| {
            let mut m = KubeMesh::new(Arc::new(Fake {
                login: login.into(),
                ..Default::default()
            }));
            m.orchestrator_url = url.map(str::to_owned);
            m
        };
        let slot = MeshSlot::new(None);
        assert!(slot.current().is_none() && !slot.has_retired());
        slot.set(Some(mesh_at("http://a:1", None)));
        slot.set(Some(mesh_at("http://b:1", Some("http://100.64.0.9:8080"))));
        let cur = slot.current().expect("current");
        assert_eq!(cur.keys.login_server(), "http://b:1");
        // A new agent gets the new mesh and the orchestrator's tailnet URL.
        let (spec, _) = mint(Some(&cur), &launch(1))
            .await
            .expect("ok")
            .expect("mesh");
        assert_eq!(spec.login_server, "http://b:1");
        assert_eq!(
            spec.orchestrator_url.as_deref(),
            Some("http://100.64.0.9:8080")
        );
        // An agent put on the first mesh still finds it.
        assert!(slot.has_retired());
        let old = slot.for_login_server("http://a:1").expect("retired mesh");
        assert_eq!(old.keys.login_server(), "http://a:1");
        assert!(slot.for_login_server("http://c:1").is_none());
        // Removed: no new agent goes on a mesh; the old ones are still known.
        slot.set(None);
        assert!(slot.current().is_none());
        assert!(slot.for_login_server("http://b:1").is_some());
        // Setting one that was retired makes it current again, once.
        slot.set(Some(mesh_at("http://a:1", None)));
        assert_eq!(
            slot.current().expect("current").keys.login_server(),
            "http://a:1"
        );
        assert!(slot.for_login_server("http://b:1").is_some());
    }

    #[tokio::test]
    async fn a_pooled_task_is_not_put_on_the_mesh() {
        let (m, fake) = mesh(false, false);
        let mut l = launch(1);
        l.pool = Some(PoolPlacement {
            pod: "pool-1".into(),
            editor_password: Secret::new("pw"),
        });
        assert!(mint(Some(&m), &l).await.expect("ok").is_none());
        assert!(fake.calls.lock().expect("lock").is_empty());
    }
}
