//! The Talos node emulator (`testbed/talos-emulator`, a Go server): Talos nodes for the real
//! `talosctl`, on loopback.
//!
//! Each emulated node listens on `<its own 127.x.y.z>:50000` (talosctl always dials port
//! 50000) and speaks the real Talos machine API with the types of the machinery Go module:
//! maintenance mode (insecure TLS, `apply-config --insecure` only) until a config is applied,
//! then mutual TLS with client certificates signed by the config's OS CA. `bootstrap` is
//! accepted once per cluster; the emulator then writes `bootstrap.json` and this helper starts
//! the testbed's real control plane ([`KubeCluster`]) and hands it to the emulator
//! (`control-plane.json`), which answers `health` from it and returns its admin kubeconfig
//! from `kubeconfig`. What the emulator checks the way Talos does, and what it does not, is in
//! `testbed/talos-emulator/README.md`.

use crate::kube::KubeCluster;
use crate::process::Proc;
use crate::{bin, wait_for, Result, TestbedError};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Deserialize;
use std::future::Future;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// The port talosctl dials on every node (Talos' apid port).
pub const APID_PORT: u16 = 50000;

/// How long the emulator may take to listen, and the control plane to start.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What the emulator recorded for a successful `talosctl bootstrap` (`bootstrap.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapRecord {
    /// The node that was bootstrapped.
    pub node: String,
    /// The cluster name from its machine config (`cluster.clusterName`).
    pub cluster: String,
    /// The configured control-plane nodes of that cluster at the time.
    #[serde(default)]
    pub control_plane_nodes: Vec<String>,
    /// The configured worker nodes of that cluster at the time.
    #[serde(default)]
    pub worker_nodes: Vec<String>,
}

impl BootstrapRecord {
    /// Every node of the cluster, control planes first.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.control_plane_nodes
            .iter()
            .chain(&self.worker_nodes)
            .map(String::as_str)
    }
}

/// Starts the control plane once the emulator reports a bootstrap.
pub type ControlPlaneStarter = Box<
    dyn FnOnce(BootstrapRecord) -> Pin<Box<dyn Future<Output = Result<KubeCluster>> + Send>> + Send,
>;

/// The control plane the helper started on bootstrap (or why it failed).
#[derive(Debug, Default)]
pub struct ControlPlaneSlot {
    /// The running control plane, once started.
    pub cluster: Option<KubeCluster>,
    /// Why starting it failed, if it did.
    pub error: Option<String>,
}

/// A running emulator. Dropping it stops the emulator and the control plane it started.
pub struct TalosEmulator {
    control_plane: Arc<Mutex<ControlPlaneSlot>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    proc: Proc,
    nodes: Vec<String>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TalosEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalosEmulator")
            .field("nodes", &self.nodes)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TalosEmulator {
    /// Starts `count` emulated nodes in maintenance mode. On bootstrap, the control plane is
    /// [`start_registered_nodes`]: etcd + kube-apiserver, with a Node object per Talos node.
    pub async fn start(count: usize) -> Result<TalosEmulator> {
        Self::start_with(
            count,
            Box::new(|record| Box::pin(start_registered_nodes(record))),
        )
        .await
    }

    /// Starts `count` emulated nodes; `starter` brings up the control plane on bootstrap.
    pub async fn start_with(count: usize, starter: ControlPlaneStarter) -> Result<TalosEmulator> {
        if count == 0 {
            return Err(TestbedError::Unexpected(
                "the Talos emulator needs at least one node".into(),
            ));
        }
        let program = bin("talos-emulator")?;
        let dir = tempfile::Builder::new()
            .prefix("gn-talos-emu-")
            .tempdir()
            .map_err(TestbedError::io("create temp dir"))?;
        let nodes = free_loopback_addresses(count)?;
        let state = dir.path().join("state");
        let mut proc = Proc::spawn(
            "talos-emulator",
            &program,
            [
                format!("--dir={}", state.display()),
                format!("--nodes={}", nodes.join(",")),
                "--poll-interval=200ms".to_owned(),
            ],
            &[],
            &dir.path().join("talos-emulator.log"),
        )?
        .listening_on(APID_PORT);
        let ready = state.join("ready");
        wait_for(
            "talos-emulator listening",
            READY_TIMEOUT,
            Some(&mut proc),
            || async { ready.is_file().then_some(()) },
        )
        .await?;
        let control_plane = Arc::new(Mutex::new(ControlPlaneSlot::default()));
        let watcher = tokio::spawn(watch_bootstrap(
            state.clone(),
            control_plane.clone(),
            starter,
        ));
        Ok(TalosEmulator {
            control_plane,
            watcher: Some(watcher),
            proc,
            nodes,
            dir,
        })
    }

    /// The emulated nodes' addresses (distinct 127.x.y.z), in the order given to talosctl.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The emulator's state directory (`ready`, `bootstrap.json`, `control-plane.json`,
    /// `fail/`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Fault injection (a test control, not Talos behaviour): `control` is `<cmd>` or
    /// `<cmd>@<node>` (cmd: `apply-config`, `bootstrap`, `health`, `kubeconfig`), `how` is
    /// `transient N` (the next N calls fail with gRPC Unavailable) or `permanent`
    /// (InvalidArgument).
    pub fn fail(&self, control: &str, how: &str) -> Result<()> {
        let path = self.state_dir().join("fail").join(control);
        std::fs::write(&path, how).map_err(TestbedError::io(format!("write {}", path.display())))
    }

    /// Removes every fault injection.
    pub fn clear_failures(&self) -> Result<()> {
        let dir = self.state_dir().join("fail");
        let entries =
            std::fs::read_dir(&dir).map_err(TestbedError::io(format!("read {}", dir.display())))?;
        for e in entries.flatten() {
            std::fs::remove_file(e.path())
                .map_err(TestbedError::io(format!("remove {}", e.path().display())))?;
        }
        Ok(())
    }

    /// The calls the emulator served, one line per target node and attempt (injected failures
    /// included): `apply-config --insecure <node>`, `apply-config <node>` (over mTLS),
    /// `bootstrap <node>`, `health <node> control-plane=<a,b> workers=<c>`, `kubeconfig <node>`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.state_dir().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.state_dir().join("calls.log"));
    }

    /// What the emulator recorded for the bootstrap, if one succeeded.
    pub fn bootstrap_record(&self) -> Option<BootstrapRecord> {
        read_record(&self.state_dir()).and_then(|r| r.ok())
    }

    /// The control plane started on bootstrap (None in the slot until then).
    pub async fn control_plane(&self) -> tokio::sync::MutexGuard<'_, ControlPlaneSlot> {
        self.control_plane.lock().await
    }

    /// The tail of the emulator's log (each call it served, for failure messages).
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// For failure messages: the emulator's log tail and the control plane's state.
    pub async fn diagnostics(&self) -> String {
        let slot = self.control_plane.lock().await;
        let cp = match (&slot.cluster, &slot.error) {
            (Some(c), _) => format!("control plane running ({})", c.server_url()),
            (None, Some(e)) => format!("control plane failed to start: {e}"),
            (None, None) => "control plane not started (yet)".to_owned(),
        };
        format!("{cp}\nemulator log:\n{}", self.proc.log_tail())
    }
}

impl Drop for TalosEmulator {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if let Ok(mut slot) = self.control_plane.try_lock() {
            drop(slot.cluster.take());
        }
    }
}

/// `bootstrap.json`: None while there is none, an error if it does not parse.
fn read_record(state: &Path) -> Option<Result<BootstrapRecord>> {
    let data = std::fs::read(state.join("bootstrap.json")).ok()?;
    Some(
        serde_json::from_slice(&data)
            .map_err(|e| TestbedError::Unexpected(format!("bootstrap.json: {e}"))),
    )
}

/// Waits for `bootstrap.json`, starts the control plane, and publishes it to the emulator.
async fn watch_bootstrap(
    state: PathBuf,
    slot: Arc<Mutex<ControlPlaneSlot>>,
    starter: ControlPlaneStarter,
) {
    let record = loop {
        match read_record(&state) {
            Some(Ok(r)) => break r,
            Some(Err(e)) => {
                slot.lock().await.error = Some(e.to_string());
                return;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    tracing::info!(node = %record.node, cluster = %record.cluster, "Talos emulator bootstrapped; starting the control plane");
    let name = record.cluster.clone();
    let result = match starter(record).await {
        Ok(cluster) => publish_control_plane(&state, &cluster, &name).map(|()| cluster),
        Err(e) => Err(e),
    };
    let mut slot = slot.lock().await;
    match result {
        Ok(cluster) => slot.cluster = Some(cluster),
        Err(e) => {
            tracing::warn!(error = %e, "the Talos emulator's control plane did not start");
            slot.error = Some(e.to_string());
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ControlPlaneFile<'a> {
    kubeconfig: String,
    server: &'a str,
    ca_pem: String,
    token: &'a str,
    etcd: &'a str,
}

/// The admin kubeconfig of `cluster` in the shape Talos gives it for cluster `name`: cluster
/// `name`, user and context `admin@name` (the testbed's bearer token stands in for Talos'
/// admin client certificate).
pub fn talos_kubeconfig(cluster: &KubeCluster, name: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(cluster.ca_pem());
    let (server, token) = (cluster.server_url(), cluster.admin_token());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n    - name: {name}\n      cluster:\n        server: {server}\n        certificate-authority-data: {ca}\nusers:\n    - name: admin@{name}\n      user:\n        token: {token}\ncontexts:\n    - context:\n        cluster: {name}\n        namespace: default\n        user: admin@{name}\n      name: admin@{name}\ncurrent-context: admin@{name}\n"
    )
}

/// Writes `control-plane.json` for the emulator: the admin kubeconfig it returns from
/// `kubeconfig` (for Talos cluster `name`, see [`talos_kubeconfig`]), and the API server and
/// etcd its health checks query.
pub fn publish_control_plane(state: &Path, cluster: &KubeCluster, name: &str) -> Result<()> {
    let file = ControlPlaneFile {
        kubeconfig: talos_kubeconfig(cluster, name),
        server: cluster.server_url(),
        ca_pem: String::from_utf8_lossy(cluster.ca_pem()).into_owned(),
        token: cluster.admin_token(),
        etcd: cluster.etcd_url(),
    };
    let json = serde_json::to_vec(&file)
        .map_err(|e| TestbedError::Unexpected(format!("control-plane.json: {e}")))?;
    let tmp = state.join("control-plane.json.tmp");
    std::fs::write(&tmp, json).map_err(TestbedError::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, state.join("control-plane.json"))
        .map_err(TestbedError::io("rename control-plane.json"))
}

/// The default control plane: etcd + kube-apiserver ([`KubeCluster::start`]) and
/// [`register_talos_nodes`] without a taint.
pub async fn start_registered_nodes(record: BootstrapRecord) -> Result<KubeCluster> {
    let cluster = KubeCluster::start().await?;
    register_talos_nodes(&cluster, &record, false).await?;
    Ok(cluster)
}

/// Registers one Node object per Talos node of `record` (`talos-<ip with dashes>`, InternalIP =
/// the node's address, status Ready), so the emulator's health checks find the nodes Talos
/// would. These nodes are registered, not run: no kubelet or kwok backs them, and nothing marks
/// them NotReady. With `no_schedule` they get a `guildnet.dev/talos-emulator=registered:NoSchedule`
/// taint, for a starter that also runs a real node ([`KubeCluster::start_with_node`]) on which
/// pods must land.
pub async fn register_talos_nodes(
    cluster: &KubeCluster,
    record: &BootstrapRecord,
    no_schedule: bool,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(cluster.client().await?);
    for ip in record.nodes() {
        let name = format!("talos-{}", ip.replace(['.', ':'], "-"));
        let taints = if no_schedule {
            serde_json::json!([{"key": "guildnet.dev/talos-emulator", "value": "registered", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        };
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "guildnet.dev/talos-emulator": "registered"}},
            "spec": {"taints": taints},
        }))
        .map_err(|e| TestbedError::Unexpected(format!("node manifest: {e}")))?;
        nodes.create(&PostParams::default(), &node).await?;
        let now = "1970-01-01T00:00:00Z";
        let status = serde_json::json!({"status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "TalosEmulator",
                "message": "registered by the testbed's Talos emulator helper (no kubelet)",
                "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(())
}

/// `count` loopback addresses (127.x.y.z, not 127.0.0.1) whose apid port is free now.
fn free_loopback_addresses(count: usize) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(count);
    let mut tries = 0;
    while out.len() < count {
        tries += 1;
        if tries > 1000 {
            return Err(TestbedError::Unexpected(format!(
                "no free 127.x.y.z:{APID_PORT} found for the Talos emulator"
            )));
        }
        let mut b = [0u8; 3];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(TestbedError::io("read /dev/urandom"))?;
        let ip = Ipv4Addr::new(127, 64 + b[0] % 190, b[1], 1 + b[2] % 254);
        if out.contains(&ip.to_string()) {
            continue;
        }
        if TcpListener::bind((ip, APID_PORT)).is_ok() {
            out.push(ip.to_string());
        }
    }
    Ok(out)
}
