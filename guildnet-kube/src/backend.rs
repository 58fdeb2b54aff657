//! The Kubernetes `ClusterBackend`: each task becomes an AgentTask `atask-<task id>` in its org's
//! cluster (kubeconfig from the state dir), with a credentials Secret the operator reads. Cancel
//! sets `spec.cancel`; completion is written to the AgentTask's status; the workload state is read
//! back from the status phase.

use crate::crd::{
    credentials_secret_name, AGENT_LABEL, CREDENTIALS_PASSWORD_KEY, CREDENTIALS_TOKEN_KEY,
    ORG_LABEL, SECRET_ENV_KEY_PREFIX,
};
use crate::crd::{AgentTask, AgentTaskSpec, Phase};
use crate::{portforward, Error, DEFAULT_NAMESPACE, EDITOR_PORT, MANAGED_BY, TASK_LABEL};
use async_trait::async_trait;
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::seams::{
    AgentLaunch, BackendError, ClusterBackend, EditorEndpoint, WorkloadInfo, WorkloadState,
};
use guildnet_core::state_dir::{find_kubeconfig, StatePaths};
use guildnet_core::token::Secret as TokenSecret;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Resource, ResourceExt};
use rand::RngCore;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

/// The orchestrator's field manager (distinct from the operator's).
pub const ORCHESTRATOR_FIELD_MANAGER: &str = "guildnet-orchestrator";

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeBackendConfig {
    /// Where kubeconfigs live (`kube/<org>.config`).
    pub state: StatePaths,
    /// Namespace of the AgentTasks (the operator's watch namespace).
    pub namespace: String,
    /// Agent image.
    pub image: String,
    /// TTL after finish set on new AgentTasks.
    pub ttl_seconds_after_finished: Option<i64>,
    /// How long an attempt's workload may stay Pending (pod not scheduled, image not pulled,
    /// agent not ready) before the task fails with the cause the pods show. `None`: wait until
    /// the orchestrator's claim timeout requeues it. Keep it below the claim timeout (120 s).
    pub start_deadline: Option<std::time::Duration>,
    /// Puts each agent on the tailnet (see [`crate::backend_mesh`]); `None`: agents reach the
    /// orchestrator on the pod network and the editor is port-forwarded.
    pub mesh: crate::backend_mesh::MeshSlot,
    /// An org with no kubeconfig at all (none of its own, no `$KUBECONFIG`, no
    /// `~/.kube/config`) runs its agents in the cluster this process runs in, with the pod's
    /// ServiceAccount (`KUBERNETES_SERVICE_HOST` and the mounted token). For an orchestrator
    /// deployed in the cluster its agents run in (the Helm chart's default). Off: such an org
    /// reports "no kubeconfig".
    pub in_cluster: bool,
}

/// Default [`KubeBackendConfig::start_deadline`]: below the orchestrator's 120 s claim timeout,
/// so a workload that cannot start fails with its cause instead of being retried blindly.
pub const DEFAULT_START_DEADLINE: std::time::Duration = std::time::Duration::from_secs(100);

/// Annotation on an AgentTask: when the orchestrator submitted the current attempt (RFC 3339,
/// the orchestrator's clock). The start deadline counts from it.
pub const SUBMITTED_AT_ANNOTATION: &str = "guildnet.io/submitted-at";

impl KubeBackendConfig {
    /// Defaults over a state dir.
    pub fn new(state: StatePaths) -> Self {
        KubeBackendConfig {
            state,
            namespace: DEFAULT_NAMESPACE.into(),
            image: format!(
                "ghcr.io/guildnet/guildnet-agent:{}",
                env!("CARGO_PKG_VERSION")
            ),
            ttl_seconds_after_finished: Some(3600),
            start_deadline: Some(DEFAULT_START_DEADLINE),
            mesh: Default::default(),
            in_cluster: false,
        }
    }
}

/// AgentTasks in each org's cluster.
pub struct KubeBackend {
    pub(crate) cfg: KubeBackendConfig,
    /// Per org: the kubeconfig it was built from (`None`: in-cluster) and the client.
    clients: Mutex<HashMap<OrgName, (Option<PathBuf>, kube::Client)>>,
    forwards: portforward::Forwards,
    editor_passwords: Mutex<HashMap<String, TokenSecret>>,
}

/// A port-forward's local end: its listener is this process's own, so the editor proxy sends
/// nothing to the port once another process holds it (the forward closed and the port was
/// taken).
fn loopback(addr: std::net::SocketAddr, password: Option<TokenSecret>) -> EditorEndpoint {
    EditorEndpoint {
        host: addr.ip().to_string(),
        port: addr.port(),
        password,
        via_tailnet: false,
        held_by: Some(std::process::id()),
    }
}

/// The AgentTask name of a task.
pub fn agenttask_name(task: &TaskId) -> String {
    format!("atask-{task}")
}

fn random_secret() -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl KubeBackend {
    fn editor_password(&self, key: &str) -> Option<TokenSecret> {
        self.editor_passwords.lock().ok()?.get(key).cloned()
    }

    /// The code-server password from the AgentTask's credentials Secret (None if unreadable:
    /// the proxy then shows code-server's own login page).
    async fn read_editor_password(
        &self,
        client: kube::Client,
        at: &AgentTask,
    ) -> Option<TokenSecret> {
        let name = credentials_secret_name(at);
        let secret = Api::<Secret>::namespaced(client, &self.cfg.namespace)
            .get_opt(&name)
            .await
            .map_err(|e| tracing::debug!(secret = %name, error = %e, "cannot read editor password"))
            .ok()??;
        let bytes = secret.data?.get(CREDENTIALS_PASSWORD_KEY)?.0.clone();
        String::from_utf8(bytes).ok().map(TokenSecret::new)
    }

    /// A backend over the given settings.
    pub fn new(cfg: KubeBackendConfig) -> Self {
        KubeBackend {
            cfg,
            clients: Mutex::default(),
            forwards: portforward::Forwards::default(),
            editor_passwords: Mutex::new(HashMap::new()),
        }
    }

    /// The kube client for an org, from its kubeconfig (cached per kubeconfig path).
    pub async fn client(&self, org: &OrgName) -> Result<kube::Client, BackendError> {
        let unavailable = |reason: String| BackendError::OrgUnavailable {
            org: org.clone(),
            reason,
        };
        let path = find_kubeconfig(&self.cfg.state, org);
        if path.is_none() && !self.cfg.in_cluster {
            return Err(unavailable(format!(
                "no kubeconfig (looked for {}, ~/.kube/{org}.config, $KUBECONFIG and \
                 ~/.kube/config; an orchestrator running in the org's cluster can use its \
                 ServiceAccount with --kube-in-cluster)",
                self.cfg.state.kubeconfig(org).display()
            )));
        }
        if let Some((p, c)) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
        {
            if *p == path {
                return Ok(c.clone());
            }
        }
        let client = match &path {
            Some(path) => {
                if !guildnet_core::state_dir::is_org_kubeconfig(path, org) {
                    tracing::warn!(
                        org = %org,
                        kubeconfig = %path.display(),
                        "org has no kubeconfig of its own: using the shared one"
                    );
                }
                client_from_path(path)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?
            }
            None => {
                let config = kube::Config::incluster().map_err(|e| {
                    unavailable(format!(
                        "no kubeconfig, and the in-cluster configuration is unusable \
                         (is this process running in a pod with a ServiceAccount token?): {e}"
                    ))
                })?;
                tracing::info!(org = %org, "org has no kubeconfig: using this pod's cluster");
                kube::Client::try_from(config).map_err(|e| unavailable(e.to_string()))?
            }
        };
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(org.clone(), (path, client.clone()));
        Ok(client)
    }

    fn workload_err(
        action: &'static str,
        task: &TaskId,
        agent: &AgentName,
    ) -> impl FnOnce(kube::Error) -> BackendError {
        let (task, agent) = (task.clone(), agent.clone());
        move |e| BackendError::Workload {
            action,
            task,
            agent,
            reason: e.to_string(),
        }
    }

    /// Creates the namespace if it is missing. A ServiceAccount allowed only into the agents'
    /// namespace (the Helm chart's orchestrator: a Role, no cluster-wide rights) may not read
    /// namespaces: then the namespace is taken to exist, and writing the AgentTask says so if
    /// it does not.
    pub async fn prepare_namespace(&self, client: &kube::Client) -> Result<(), kube::Error> {
        let nss: Api<Namespace> = Api::all(client.clone());
        match nss.get_opt(&self.cfg.namespace).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::debug!(namespace = %self.cfg.namespace, "may not read namespaces: assuming it exists");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(self.cfg.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_owned(),
                    MANAGED_BY.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        nss.patch(
            &self.cfg.namespace,
            &PatchParams::apply(ORCHESTRATOR_FIELD_MANAGER),
            &Patch::Apply(&ns),
        )
        .await?;
        Ok(())
    }

    /// The org cluster's version (a cheap reachability check).
    pub async fn ping(&self, org: &OrgName) -> Result<String, BackendError> {
        let c = self.client(org).await?;
        let v = c
            .apiserver_version()
            .await
            .map_err(|e| BackendError::OrgUnavailable {
                org: org.clone(),
                reason: e.to_string(),
            })?;
        Ok(v.git_version)
    }

    /// Whether the warm pool pod `pod` still exists and is not being deleted (its agent may
    /// still claim the task it was handed).
    async fn pool_pod_alive(&self, org: &OrgName, pod: &str) -> Result<bool, BackendError> {
        let c = self.client(org).await?;
        let p = Api::<Pod>::namespaced(c, &self.cfg.namespace)
            .get_opt(pod)
            .await
            .map_err(|e| BackendError::OrgUnavailable {
                org: org.clone(),
                reason: e.to_string(),
            })?;
        Ok(p.is_some_and(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        }))
    }

    /// The AgentTask of a task, if any.
    pub async fn agent_task(
        &self,
        org: &OrgName,
        task: &TaskId,
    ) -> Result<Option<AgentTask>, BackendError> {
        let c = self.client(org).await?;
        Api::<AgentTask>::namespaced(c, &self.cfg.namespace)
            .get_opt(&agenttask_name(task))
            .await
            .map_err(|e| BackendError::OrgUnavailable {
                org: org.clone(),
                reason: e.to_string(),
            })
    }
}

impl KubeBackend {
    /// How long the current attempt has waited, if that is past the start deadline.
    fn start_deadline_passed(&self, at: &AgentTask) -> Option<std::time::Duration> {
        let deadline = self.cfg.start_deadline?;
        let submitted = at
            .annotations()
            .get(SUBMITTED_AT_ANNOTATION)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
        let waited = (chrono::Utc::now() - submitted.with_timezone(&chrono::Utc))
            .to_std()
            .ok()?;
        (waited > deadline).then_some(waited)
    }

    /// Why a Pending AgentTask's workload is not up, from its pods (waiting reasons such as
    /// ImagePullBackOff, unschedulable) and their latest warning event, or its conditions.
    async fn why_not_started(&self, org: &OrgName, task: &TaskId, at: &AgentTask) -> String {
        let info = match self.describe(org, task, None).await {
            Ok(Some(i)) => i,
            Ok(None) => return "the AgentTask is gone".into(),
            Err(e) => return format!("its pods could not be read: {e}"),
        };
        let mut parts: Vec<String> = info.pods.clone();
        if let Some(ev) = info.events.last() {
            parts.push(format!("last warning: {ev}"));
        }
        if parts.is_empty() {
            let conds: Vec<&String> = info
                .conditions
                .iter()
                .filter(|c| c.contains("=False"))
                .collect();
            if conds.is_empty() {
                return format!(
                    "no pod was created for AgentTask {} (is guildnet-operator running?)",
                    at.name_any()
                );
            }
            return conds
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join("; ");
        }
        let mut why = parts.join("; ");
        if why.len() > 1500 {
            let mut end = 1500;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
            why.push('…');
        }
        why
    }
}

/// One line about a pod: its phase and why it is not running (unschedulable, waiting container
/// reasons such as ImagePullBackOff, terminated containers).
pub fn describe_pod(pod: &Pod) -> String {
    let name = pod.name_any();
    let Some(st) = pod.status.as_ref() else {
        return format!("{name} (no status yet)");
    };
    let mut why = Vec::new();
    for c in st.conditions.iter().flatten() {
        if c.status == "False" && c.type_ == "PodScheduled" {
            why.push(format!(
                "{}: {}",
                c.reason.clone().unwrap_or_else(|| "NotScheduled".into()),
                c.message.clone().unwrap_or_default()
            ));
        }
    }
    for cs in st.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            why.push(format!(
                "container {} waiting: {} {}",
                cs.name,
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            ));
        }
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            why.push(format!(
                "container {} terminated: exit {} {}",
                cs.name,
                t.exit_code,
                t.reason.clone().unwrap_or_default()
            ));
        }
    }
    let phase = st.phase.clone().unwrap_or_else(|| "Unknown".into());
    if why.is_empty() {
        format!("{name} {phase}")
    } else {
        format!("{name} {phase}: {}", why.join("; ").trim())
    }
}

/// A kube client from a kubeconfig file (its current context).
pub async fn client_from_path(path: &std::path::Path) -> Result<kube::Client, Error> {
    let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(kube::Client::try_from(config)?)
}

#[async_trait]
impl ClusterBackend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn submit(&self, launch: AgentLaunch) -> Result<(), BackendError> {
        let client = self.client(&launch.org).await?;
        let err = || Self::workload_err("submit", &launch.task_id, &launch.agent);
        self.prepare_namespace(&client).await.map_err(err())?;
        // Minted before anything is applied: no key, no AgentTask (unless off-mesh is allowed).
        let mesh = crate::backend_mesh::mint(self.cfg.mesh.current().as_deref(), &launch).await?;
        let name = agenttask_name(&launch.task_id);
        let ns = &self.cfg.namespace;
        let spec = AgentTaskSpec {
            org_id: launch.org.to_string(),
            task_id: launch.task_id.to_string(),
            task: launch.task.clone(),
            image: self.cfg.image.clone(),
            // The plain half of the settings (runner template, forge URL, secret names). Later
            // entries win, as in the agent's own environment.
            env: launch.settings.env.iter().cloned().collect(),
            repo: None,
            cancel: false,
            ttl_seconds_after_finished: self.cfg.ttl_seconds_after_finished,
            resources: None,
            attempt: launch.attempt,
            agent_name: launch.agent.to_string(),
            orchestrator_url: Some(launch.orchestrator_url.clone()),
            credentials_secret: None,
            pool_pod: launch.pool.as_ref().map(|p| p.pod.clone()),
            mesh: mesh.as_ref().map(|(m, _)| m.clone()),
        };
        let mut at = AgentTask::new(&name, spec);
        at.metadata.namespace = Some(ns.to_owned());
        at.metadata.labels = Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (ORG_LABEL.to_owned(), launch.org.to_string()),
            (AGENT_LABEL.to_owned(), launch.agent.to_string()),
        ]));
        at.metadata.annotations = Some(BTreeMap::from([(
            SUBMITTED_AT_ANNOTATION.to_owned(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )]));
        let pp = PatchParams::apply(ORCHESTRATOR_FIELD_MANAGER).force();
        let created = Api::<AgentTask>::namespaced(client.clone(), ns)
            .patch(&name, &pp, &Patch::Apply(&at))
            .await
            .map_err(err())?;
        // Credentials for this attempt, owned by the AgentTask so they go with it.
        let oref = created.controller_owner_ref(&()).map(|mut o| {
            o.controller = Some(false);
            o
        });
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        // The secret half of the settings (forge token, model keys) lives only here: the
        // operator copies it into the pod's env Secret, never into a spec.
        let mut data = BTreeMap::new();
        data.insert(
            CREDENTIALS_TOKEN_KEY.to_owned(),
            bytes(launch.agent_token.expose()),
        );
        // A warm agent was handed its code-server password with the task; a cold one gets a
        // new one through the pod's env Secret.
        let password = match &launch.pool {
            Some(p) => p.editor_password.expose().to_owned(),
            None => random_secret(),
        };
        data.insert(CREDENTIALS_PASSWORD_KEY.to_owned(), bytes(&password));
        if let Some((_, key)) = &mesh {
            data.insert(
                crate::mesh_sidecar::CREDENTIALS_AUTHKEY_KEY.to_owned(),
                bytes(key.expose()),
            );
        }
        for (k, v) in &launch.settings.secret_env {
            data.insert(format!("{SECRET_ENV_KEY_PREFIX}{k}"), bytes(v.expose()));
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(credentials_secret_name(&created)),
                namespace: Some(ns.to_owned()),
                // The attempt's agent: the operator deletes only its own attempt's credentials.
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                    (TASK_LABEL.to_owned(), created.name_any()),
                    (AGENT_LABEL.to_owned(), launch.agent.to_string()),
                ])),
                owner_references: Some(oref.into_iter().collect()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client, ns)
            .patch(
                &credentials_secret_name(&created),
                &pp,
                &Patch::Apply(&secret),
            )
            .await
            .map_err(err())?;
        tracing::info!(task = %launch.task_id, agent = %launch.agent, agenttask = %name, "AgentTask applied");
        Ok(())
    }

    async fn cancel(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<(), BackendError> {
        let client = self.client(org).await?;
        let api = Api::<AgentTask>::namespaced(client, &self.cfg.namespace);
        let name = agenttask_name(task);
        let Some(at) = api
            .get_opt(&name)
            .await
            .map_err(Self::workload_err("cancel", task, agent))?
        else {
            return Ok(());
        };
        if at.spec.agent_name != agent.as_str() || at.spec.cancel {
            // Another attempt's agent, or already cancelled.
            return Ok(());
        }
        let patch = json!({"spec": {"cancel": true}});
        let res = match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Self::workload_err("cancel", task, agent)(e)),
        };
        if let Some(mesh) = at
            .spec
            .mesh
            .as_ref()
            .and_then(|m| self.cfg.mesh.for_login_server(&m.login_server))
        {
            crate::backend_mesh::remove(&mesh, task, agent).await;
        }
        res
    }

    async fn status(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<WorkloadState, BackendError> {
        let Some(at) = self.agent_task(org, task).await? else {
            return Ok(WorkloadState::Absent);
        };
        if at.spec.agent_name != agent.as_str() {
            return Ok(WorkloadState::Absent);
        }
        let st = at.status.clone().unwrap_or_default();
        if let Some(pod) = &at.spec.pool_pod {
            // A warm agent handed this task whose pod is gone or going (the pool scaled down,
            // was deleted, or the node lost the pod) will never claim it: the orchestrator
            // requeues the task, which then starts again (cold, or on another warm agent).
            if matches!(st.phase, Phase::Pending | Phase::Running)
                && !self.pool_pod_alive(org, pod).await?
            {
                return Ok(WorkloadState::Absent);
            }
        }
        Ok(match st.phase {
            Phase::Pending => match self.start_deadline_passed(&at) {
                Some(waited) => {
                    let cause = self.why_not_started(org, task, &at).await;
                    WorkloadState::FailedToStart(format!(
                        "not started {} s after submit (start deadline {} s): {cause}",
                        waited.as_secs(),
                        self.cfg.start_deadline.unwrap_or_default().as_secs()
                    ))
                }
                None => WorkloadState::Pending,
            },
            Phase::Running => WorkloadState::Running,
            Phase::Succeeded => WorkloadState::Exited(Some(st.exit_code.unwrap_or(0))),
            Phase::Failed => WorkloadState::Exited(st.exit_code),
            Phase::Cancelled => WorkloadState::Absent,
        })
    }

    async fn editor_endpoint(
        &self,
        org: &OrgName,
        agent: &AgentName,
    ) -> Result<Option<EditorEndpoint>, BackendError> {
        let key = format!("{org}/{agent}");
        if let Some(f) = self.forwards.get(&key) {
            let pw = self.editor_password(&key);
            return Ok(Some(loopback(f.local_addr(), pw)));
        }
        let client = self.client(org).await?;
        let ns = &self.cfg.namespace;
        let err = |e: kube::Error| BackendError::OrgUnavailable {
            org: org.clone(),
            reason: e.to_string(),
        };
        let selector = format!("{AGENT_LABEL}={agent}");
        let tasks = Api::<AgentTask>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(err)?
            .items;
        let Some(at) = tasks
            .into_iter()
            .find(|t| t.spec.agent_name == agent.as_str())
        else {
            return Ok(None);
        };
        let password = self.read_editor_password(client.clone(), &at).await;
        let on_mesh = at.spec.mesh.as_ref().and_then(|m| {
            self.cfg
                .mesh
                .for_login_server(&m.login_server)
                .map(|mesh| (mesh, m))
        });
        if let Some((mesh, m)) = on_mesh {
            // On the tailnet: the node's address, dialed through the orchestrator's own node.
            let addr = mesh.keys.node_address(&m.hostname).await.map_err(|e| {
                BackendError::OrgUnavailable {
                    org: org.clone(),
                    reason: format!("cannot look up the agent's tailnet node: {e}"),
                }
            })?;
            return Ok(addr.map(|host| EditorEndpoint {
                host,
                port: EDITOR_PORT,
                password,
                via_tailnet: true,
                held_by: None,
            }));
        }
        let workload = at
            .status
            .and_then(|s| s.workload_name)
            .unwrap_or_else(|| at.metadata.name.clone().unwrap_or_default());
        let pods = Api::<Pod>::namespaced(client, ns);
        let Some(pod) = portforward::running_pod(&pods, &workload)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let fwd = portforward::forward(pods, &pod, EDITOR_PORT)
            .await
            .map_err(|e| BackendError::OrgUnavailable {
                org: org.clone(),
                reason: format!("port-forward listener: {e}"),
            })?;
        tracing::info!(%org, %agent, %pod, addr = %fwd.local_addr(), "editor port-forward opened");
        if let (Some(pw), Ok(mut m)) = (&password, self.editor_passwords.lock()) {
            m.insert(key.clone(), pw.clone());
        }
        let f = self.forwards.insert(key, fwd);
        Ok(Some(loopback(f.local_addr(), password)))
    }

    async fn describe(
        &self,
        org: &OrgName,
        task: &TaskId,
        _agent: Option<AgentName>,
    ) -> Result<Option<WorkloadInfo>, BackendError> {
        let Some(at) = self.agent_task(org, task).await? else {
            return Ok(None);
        };
        let client = self.client(org).await?;
        let ns = &self.cfg.namespace;
        let err = |e: kube::Error| BackendError::OrgUnavailable {
            org: org.clone(),
            reason: e.to_string(),
        };
        let name = at.name_any();
        let st = at.status.clone().unwrap_or_default();
        let workload = st.workload_name.clone().unwrap_or_else(|| name.clone());
        let mut info = WorkloadInfo {
            resource: format!("AgentTask {ns}/{name}"),
            // No status yet means the operator has not seen it: Pending.
            phase: Some(st.phase.as_str().to_owned()),
            conditions: st
                .conditions
                .iter()
                .map(|c| {
                    let msg = if c.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", c.message)
                    };
                    format!("{}={} {}{msg}", c.type_, c.status, c.reason)
                })
                .collect(),
            ..WorkloadInfo::default()
        };
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("{TASK_LABEL}={workload}")))
            .await
            .map_err(err)?
            .items;
        let events_api = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client, ns);
        for pod in pods {
            let pname = pod.name_any();
            info.pods.push(describe_pod(&pod));
            let evs = events_api
                .list(&ListParams::default().fields(&format!(
                    "involvedObject.kind=Pod,involvedObject.name={pname},type=Warning"
                )))
                .await
                .map_err(err)?
                .items;
            let mut evs: Vec<_> = evs
                .into_iter()
                .map(|e| {
                    let when = e
                        .last_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
                        .unwrap_or_default();
                    let line = format!(
                        "{pname} {}: {}",
                        e.reason.unwrap_or_default(),
                        e.message.unwrap_or_default().trim()
                    );
                    (when, line)
                })
                .collect();
            evs.sort();
            info.events
                .extend(evs.into_iter().rev().take(5).rev().map(|(_, l)| l));
        }
        Ok(Some(info))
    }

    async fn set_pool(
        &self,
        org: &OrgName,
        spec: &guildnet_core::pool::PoolSpec,
        launch: guildnet_core::seams::PoolLaunch,
    ) -> Result<(), BackendError> {
        crate::pool_backend::set_pool(self, org, spec, launch).await
    }

    async fn delete_pool(&self, org: &OrgName) -> Result<bool, BackendError> {
        crate::pool_backend::delete_pool(self, org).await
    }

    async fn pool_status(
        &self,
        org: &OrgName,
    ) -> Result<Option<guildnet_core::pool::PoolBackendStatus>, BackendError> {
        crate::pool_backend::pool_status(self, org).await
    }

    async fn close_editor(&self, org: &OrgName, agent: &AgentName) -> Result<bool, BackendError> {
        Ok(self.forwards.close(&format!("{org}/{agent}")))
    }

    async fn task_finished(&self, task: &Task) -> Result<(), BackendError> {
        let phase = match task.status {
            TaskStatus::Succeeded => Phase::Succeeded,
            TaskStatus::Failed => Phase::Failed,
            _ => return Ok(()),
        };
        let agent = task
            .agent
            .clone()
            .unwrap_or_else(|| task.id.agent_name(task.attempt));
        let client = self.client(&task.org).await?;
        let artifact_path = task
            .artifacts
            .iter()
            .find(|a| a.kind != "pr")
            .map(|a| a.uri.clone());
        let patch = json!({"status": {
            "phase": phase,
            "finishedAt": task.finished_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "prUrl": task.pr_url,
            "reason": task.reason,
            "exitCode": task.exit_code,
            "artifactPath": artifact_path,
        }});
        let recorded = match Api::<AgentTask>::namespaced(client, &self.cfg.namespace)
            .patch_status(
                &agenttask_name(&task.id),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Self::workload_err("record completion of", &task.id, &agent)(e)),
        };
        // The task is over: its node leaves the tailnet now.
        let mesh = if self.cfg.mesh.has_retired() {
            // The mesh may have changed since this agent started: the one its AgentTask names.
            match self.agent_task(&task.org, &task.id).await {
                Ok(Some(at)) => at
                    .spec
                    .mesh
                    .and_then(|m| self.cfg.mesh.for_login_server(&m.login_server)),
                _ => self.cfg.mesh.current(),
            }
        } else {
            self.cfg.mesh.current()
        };
        if let Some(mesh) = mesh {
            crate::backend_mesh::remove_or_err(&mesh, &task.id, &agent).await?;
        }
        recorded
    }
}
