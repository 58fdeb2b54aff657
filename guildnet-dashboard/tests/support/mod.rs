//! Shared test setup: a real orchestrator (guildnet-core's `start_local` with a real SQLite
//! file, served over HTTP on loopback) whose agents run in this process through the real agent
//! runtime with a real runner process (`cat`), and a real dashboard (its own SQLite file) in
//! front of it.
//!
//! Why in-process agents: the local backend starts the `guildnet-agent` executable, which this
//! crate's tests cannot build; the backend below runs the same `guildnet_core::agent::run`
//! the executable runs, so tasks go through register, claim, heartbeats, log shipping and
//! completion over HTTP exactly as with the executable.
#![allow(dead_code)]

use async_trait::async_trait;
use futures_util::StreamExt;
use guildnet_core::agent::{self, AgentConfig};
use guildnet_core::client::{sse_messages, SseMessage};
use guildnet_core::launch::{start_local, BackendOverride, LocalOptions};
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::seams::{
    AgentLaunch, BackendError, ClusterBackend, EditorEndpoint, WorkloadInfo, WorkloadState,
};
use guildnet_core::store::Durability;
use guildnet_core::token::Secret;
use guildnet_dashboard::{Dashboard, DashboardConfig, OrchestratorHandle};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub const ORCH_TOKEN: &str = "dash-test-orchestrator-token-0123456789";
pub const PASSWORD: &str = "dash-test-password-9876543210";

/// A running in-process agent: its stop signal and its task.
type RunningAgent = (watch::Sender<bool>, tokio::task::JoinHandle<()>);

/// Runs each task's agent as a tokio task in this process (see the module docs).
pub struct InProcessAgents {
    root: PathBuf,
    runner: String,
    agents: Mutex<HashMap<AgentName, RunningAgent>>,
    /// Warm pools as set through the orchestrator: recorded only (a stand-in: no warm agent
    /// runs; the real pools are the Kubernetes backend's, `bin/tests/kube_pool_e2e.rs`).
    pools: Mutex<HashMap<OrgName, guildnet_core::pool::PoolSpec>>,
}

impl InProcessAgents {
    pub fn new(root: PathBuf, runner: &str) -> Self {
        Self {
            root,
            runner: runner.into(),
            agents: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl ClusterBackend for InProcessAgents {
    fn name(&self) -> &'static str {
        "in-process"
    }

    async fn submit(&self, l: AgentLaunch) -> Result<(), BackendError> {
        let mut agents = self.agents.lock().unwrap();
        if agents.contains_key(&l.agent) {
            return Ok(());
        }
        let workspace = self.root.join(l.task_id.as_str());
        std::fs::create_dir_all(&workspace).map_err(|e| BackendError::Workload {
            action: "submit",
            task: l.task_id.clone(),
            agent: l.agent.clone(),
            reason: e.to_string(),
        })?;
        // The agent's configuration from the same environment a pod or child process gets.
        let mut env: HashMap<String, String> = l
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.insert(guildnet_core::agent_env::RUNNER.into(), self.runner.clone());
        env.insert(
            guildnet_core::agent_env::WORKSPACE.into(),
            workspace.display().to_string(),
        );
        // The agent's own state dir, outside its workspace, like a pod's or a local agent's.
        env.insert(
            "GUILDNET_STATE_DIR".into(),
            self.root
                .join(format!("{}.state", l.task_id))
                .display()
                .to_string(),
        );
        let mut cfg = AgentConfig::from_lookup(|k| env.get(k).cloned()).map_err(|e| {
            BackendError::Workload {
                action: "submit",
                task: l.task_id.clone(),
                agent: l.agent.clone(),
                reason: e.to_string(),
            }
        })?;
        cfg.patience = Duration::from_secs(30);
        cfg.kill_grace = Duration::from_secs(1);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.wait_for(|v| *v).await;
            };
            if let Err(e) = agent::run(cfg, stop).await {
                eprintln!("in-process agent ended with an error: {e}");
            }
        });
        agents.insert(l.agent, (stop_tx, handle));
        Ok(())
    }

    async fn cancel(&self, _: &OrgName, _: &TaskId, agent: &AgentName) -> Result<(), BackendError> {
        if let Some((stop, _)) = self.agents.lock().unwrap().get(agent) {
            let _ = stop.send(true);
        }
        Ok(())
    }

    async fn status(
        &self,
        _: &OrgName,
        _: &TaskId,
        agent: &AgentName,
    ) -> Result<WorkloadState, BackendError> {
        Ok(match self.agents.lock().unwrap().get(agent) {
            None => WorkloadState::Absent,
            Some((_, h)) if h.is_finished() => WorkloadState::Exited(Some(0)),
            Some(_) => WorkloadState::Running,
        })
    }

    async fn editor_endpoint(
        &self,
        _: &OrgName,
        _: &AgentName,
    ) -> Result<Option<EditorEndpoint>, BackendError> {
        Ok(None)
    }

    async fn describe(
        &self,
        _: &OrgName,
        task: &TaskId,
        _: Option<AgentName>,
    ) -> Result<Option<WorkloadInfo>, BackendError> {
        Ok(Some(WorkloadInfo {
            resource: format!("in-process agent of {task}"),
            ..Default::default()
        }))
    }

    async fn close_editor(&self, _: &OrgName, _: &AgentName) -> Result<bool, BackendError> {
        Ok(false)
    }

    async fn task_finished(&self, _: &guildnet_core::model::Task) -> Result<(), BackendError> {
        Ok(())
    }

    async fn set_pool(
        &self,
        org: &OrgName,
        spec: &guildnet_core::pool::PoolSpec,
        _: guildnet_core::seams::PoolLaunch,
    ) -> Result<(), BackendError> {
        self.pools.lock().unwrap().insert(org.clone(), spec.clone());
        Ok(())
    }

    async fn delete_pool(&self, org: &OrgName) -> Result<bool, BackendError> {
        Ok(self.pools.lock().unwrap().remove(org).is_some())
    }

    async fn pool_status(
        &self,
        org: &OrgName,
    ) -> Result<Option<guildnet_core::pool::PoolBackendStatus>, BackendError> {
        Ok(self
            .pools
            .lock()
            .unwrap()
            .get(org)
            .map(|spec| guildnet_core::pool::PoolBackendStatus {
                resource: format!("in-process pool {org}"),
                spec: Some(spec.clone()),
                desired: spec.size,
                ..Default::default()
            }))
    }
}

/// A running orchestrator + dashboard.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub orch_url: String,
    pub dash_url: String,
    /// The editor origin (`http://127.0.0.1:<port>`).
    pub editor_url: String,
    pub dash_state: PathBuf,
    pub orch_state: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stop_dash: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.stop_dash.take() {
            let _ = s.send(());
        }
    }
}

/// Starts everything; `tweak` adjusts the dashboard config (flows...).
pub async fn start(tweak: impl FnOnce(&mut DashboardConfig)) -> Env {
    start_with(|_| {}, tweak).await
}

/// Like [`start`], also adjusting the orchestrator's options.
pub async fn start_with(
    tweak_orch: impl FnOnce(&mut LocalOptions),
    tweak: impl FnOnce(&mut DashboardConfig),
) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let orch_state = dir.path().join("orch-state");
    let mut opts = LocalOptions::new();
    opts.state_dir = Some(orch_state.clone());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.admin_token = Some(ORCH_TOKEN.into());
    opts.durability = Durability::Normal;
    opts.service.heartbeat_interval = Duration::from_millis(500);
    opts.service.lease_ttl = Duration::from_secs(5);
    opts.backend = Some(BackendOverride(Arc::new(InProcessAgents::new(
        dir.path().join("agents"),
        "cat",
    ))));
    tweak_orch(&mut opts);
    let lo = start_local(opts).await.expect("start orchestrator");
    let orch_url = format!("http://{}", lo.addr);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(guildnet_core::orchestrator::serve(
        lo.listener,
        lo.app,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let dash_state = dir.path().join("dash-state");
    let mut cfg = DashboardConfig::new(&dash_state);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.password = Some(Secret::new(PASSWORD));
    tweak(&mut cfg);
    let dash = Dashboard::bind(
        cfg,
        OrchestratorHandle {
            url: orch_url.clone(),
            token: Secret::new(ORCH_TOKEN),
        },
    )
    .await
    .expect("bind dashboard");
    let dash_url = dash.url();
    let editor_url = format!("http://{}", dash.editor_addr());
    let (stop_dash, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dash.serve(async move {
        let _ = rx.await;
    }));
    Env {
        dir,
        orch_url,
        dash_url,
        editor_url,
        dash_state,
        orch_state,
        stop: Some(stop),
        stop_dash: Some(stop_dash),
    }
}

/// A logged-in HTTP client of the dashboard (cookie kept by hand).
#[derive(Clone)]
pub struct Browserish {
    pub base: String,
    pub http: reqwest::Client,
    pub cookie: Option<String>,
}

impl Browserish {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
            cookie: None,
        }
    }

    pub async fn login(base: &str) -> Self {
        let mut b = Self::new(base);
        let resp = b
            .req(reqwest::Method::POST, "/api/login")
            .json(&serde_json::json!({"password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let set = resp
            .headers()
            .get("set-cookie")
            .expect("login sets a cookie")
            .to_str()
            .unwrap()
            .to_owned();
        b.cookie = Some(set.split(';').next().unwrap().to_owned());
        b
    }

    pub fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(m, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            rb = rb.header("cookie", c);
        }
        rb
    }

    /// Sends and returns (status, JSON body).
    pub async fn json(
        &self,
        m: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut rb = self.req(m, path);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    /// Opens an SSE stream (GET, or POST with a body) and returns a channel of parsed messages.
    pub async fn sse(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> tokio::sync::mpsc::Receiver<SseMessage> {
        let resp = rb
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "SSE open failed");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut messages = Box::pin(sse_messages(resp.bytes_stream()));
            while let Some(Ok(m)) = messages.next().await {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// Next message within `secs`.
pub async fn next_msg(
    rx: &mut tokio::sync::mpsc::Receiver<SseMessage>,
    secs: u64,
) -> Option<SseMessage> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}

pub const GOOD_KUBECONFIG: &str = "apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {cluster: c1, user: u1}
clusters:
- name: c1
  cluster: {server: 'https://10.0.0.1:6443'}
users:
- name: u1
  user: {token: not-a-real-token}
";
