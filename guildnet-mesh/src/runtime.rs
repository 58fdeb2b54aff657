//! The orchestrator's mesh, set while it runs (`PUT /mesh`, issue 22): [`RuntimeMesh`] is
//! guildnet-core's [`MeshControl`].
//!
//! Setting a mesh:
//! 1. checks the API key and reaches Headscale (the agents' user is created if missing);
//! 2. mints a single-use pre-auth key for the orchestrator's own node and joins it: a userspace
//!    `tailscaled` under `${state}/mesh/` (no root, no TUN), one directory per login server, so
//!    a failed switch leaves the previous node as it was;
//! 3. keeps the setting, API key included, in `${state}/mesh/mesh.json` (mode 0600), so a
//!    restart of the orchestrator keeps the mesh ([`RuntimeMesh::restore`]);
//! 4. hands the new mesh over: the agent keys and the orchestrator's tailnet URL to the cluster
//!    backend ([`MeshSink`]), the node's SOCKS5 proxy to the editor proxy's tailnet dialer (a
//!    [`SwappableDialer`]).
//!
//! When start-up flags (`--mesh-headscale-url`) set the mesh, they win: [`RuntimeMesh::from_flags`]
//! reports it and refuses changes (409); a saved runtime mesh is then ignored.
//!
//! The API key is a [`Secret`]: never in `Debug` output, a log line, an error or a reply.

use crate::agent_keys::{AgentMeshKeys, DEFAULT_AGENT_USER};
use crate::headscale::{HeadscaleClient, PreAuthKeyRequest};
use crate::redact::display_url;
use crate::tailscale::{Tailscaled, TailscaledConfig};
use async_trait::async_trait;
use guildnet_core::api::{MeshRequest, MeshStatus};
use guildnet_core::proxy::SwappableDialer;
use guildnet_core::seams::{MeshControl, MeshControlError};
use guildnet_core::token::Secret;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Mutex;

/// The orchestrator's default host name on the tailnet.
pub const DEFAULT_ORCHESTRATOR_HOSTNAME: &str = "guildnet-orchestrator";

/// How long the orchestrator's own pre-auth key stays usable (it is single-use).
const NODE_KEY_VALIDITY: Duration = Duration::from_secs(10 * 60);

/// A mesh handed to the cluster backend.
#[derive(Debug, Clone)]
pub struct MeshHandoff {
    /// Mints agent keys and removes agent nodes.
    pub keys: Arc<AgentMeshKeys>,
    /// The URL agents on the tailnet reach the orchestrator at (its tailnet address and
    /// listen port), when known.
    pub orchestrator_url: Option<String>,
}

/// Where a new mesh (or none) goes: e.g. the Kubernetes backend's `MeshSlot`.
pub type MeshSink = Arc<dyn Fn(Option<MeshHandoff>) + Send + Sync>;

/// How [`RuntimeMesh`] runs the orchestrator's node.
#[derive(Debug, Clone)]
pub struct RuntimeMeshConfig {
    /// The orchestrator's state dir: everything goes under `mesh/` in it.
    pub state_dir: PathBuf,
    /// `tailscaled` (default: from `PATH`).
    pub tailscaled_bin: Option<PathBuf>,
    /// `tailscale` (default: from `PATH`).
    pub tailscale_bin: Option<PathBuf>,
    /// How long the node may take to join (default 60 s).
    pub join_timeout: Duration,
    /// How long an agent's pre-auth key stays usable (default 15 min).
    pub agent_key_validity: Duration,
}

impl RuntimeMeshConfig {
    /// Defaults for the state dir `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            tailscaled_bin: None,
            tailscale_bin: None,
            join_timeout: Duration::from_secs(60),
            agent_key_validity: crate::agent_keys::DEFAULT_KEY_VALIDITY,
        }
    }

    fn dir(&self) -> PathBuf {
        self.state_dir.join("mesh")
    }

    fn file(&self) -> PathBuf {
        self.dir().join("mesh.json")
    }
}

/// The mesh as kept in `${state}/mesh/mesh.json` (0600).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    headscale_url: String,
    login_server: String,
    api_key: String,
    user: String,
    tags: Vec<String>,
    hostname: String,
    /// The last known URL agents reach the orchestrator at (the node keeps its address
    /// across restarts), so agents started before the node is back still get it.
    #[serde(default)]
    orchestrator_url: Option<String>,
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("headscale_url", &display_url(&self.headscale_url))
            .field("login_server", &self.login_server)
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The mesh of the start-up flags, as [`RuntimeMesh::from_flags`] reports it.
#[derive(Debug, Clone)]
pub struct FlagsMesh {
    /// Headscale's URL.
    pub headscale_url: String,
    /// The login server.
    pub login_server: String,
    /// The agents' user.
    pub user: String,
    /// The agents' tags.
    pub tags: Vec<String>,
}

#[derive(Default)]
struct Current {
    saved: Option<Saved>,
    node: Option<Tailscaled>,
    /// The node's directory (per login server).
    node_dir: Option<PathBuf>,
    error: Option<String>,
}

/// guildnet-core's [`MeshControl`] over Headscale and a userspace tailscaled of the
/// orchestrator's own (see the module docs).
pub struct RuntimeMesh {
    cfg: RuntimeMeshConfig,
    flags: Option<FlagsMesh>,
    dialer: Arc<SwappableDialer>,
    sink: MeshSink,
    listen_port: OnceLock<u16>,
    current: Mutex<Current>,
    /// Held while the node is started or joined (set, clear, the rejoin after a restart), so
    /// two of them never run one node directory at once.
    node_lock: Mutex<()>,
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RuntimeMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeMesh")
            .field("state_dir", &self.cfg.state_dir)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

fn failed(step: &'static str, e: impl std::fmt::Display) -> MeshControlError {
    MeshControlError::Failed {
        step,
        reason: e.to_string(),
    }
}

/// A short, stable directory name per login server (the socket path must stay short).
fn node_dir_name(login_server: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(login_server.trim_end_matches('/').as_bytes());
    let hex: String = h.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("ts-{hex}")
}

impl RuntimeMesh {
    /// A mesh managed through the API: `dialer` is the editor proxy's tailnet dialer, `sink`
    /// receives each new mesh.
    pub fn new(cfg: RuntimeMeshConfig, dialer: Arc<SwappableDialer>, sink: MeshSink) -> Self {
        Self {
            cfg,
            flags: None,
            dialer,
            sink,
            listen_port: OnceLock::new(),
            current: Mutex::new(Current::default()),
            node_lock: Mutex::new(()),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The mesh the start-up flags set: reported by `GET /mesh`, changes refused.
    pub fn from_flags(cfg: RuntimeMeshConfig, flags: FlagsMesh) -> Self {
        let mut m = Self::new(cfg, Arc::new(SwappableDialer::default()), Arc::new(|_| {}));
        m.flags = Some(flags);
        m
    }

    /// The orchestrator's listen port: with the node's tailnet address, the URL agents reach
    /// it at (the node forwards tailnet connections to the host's loopback).
    pub fn set_listen_port(&self, port: u16) {
        let _ = self.listen_port.set(port);
    }

    fn orchestrator_url(&self, ip: Option<&str>) -> Option<String> {
        let port = self.listen_port.get()?;
        let ip = ip?;
        Some(if ip.contains(':') {
            format!("http://[{ip}]:{port}")
        } else {
            format!("http://{ip}:{port}")
        })
    }

    fn load(&self) -> Option<Saved> {
        let text = std::fs::read_to_string(self.cfg.file()).ok()?;
        match serde_json::from_str::<Saved>(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(file = %self.cfg.file().display(), error = %e,
                    "the saved mesh is unreadable: ignored");
                None
            }
        }
    }

    fn save(&self, s: &Saved) -> Result<(), MeshControlError> {
        let json = serde_json::to_vec_pretty(s).map_err(|e| failed("store", e))?;
        guildnet_core::state_dir::write_private_file(&self.cfg.file(), &json)
            .map_err(|e| failed("store", e))
    }

    fn keys(&self, s: &Saved) -> Result<AgentMeshKeys, MeshControlError> {
        let client = HeadscaleClient::new(&s.headscale_url, Secret::new(s.api_key.clone()))
            .map_err(|e| MeshControlError::Invalid {
                field: "headscaleUrl".into(),
                reason: format!("headscaleUrl: {e}"),
            })?;
        AgentMeshKeys::new(client, s.login_server.clone())
            .with_user(s.user.clone())
            .with_tags(s.tags.clone())
            .map(|k| k.with_key_validity(self.cfg.agent_key_validity))
            .map_err(|e| MeshControlError::Invalid {
                field: "tags".into(),
                reason: format!("tags: {e}"),
            })
    }

    /// Starts the node of `s`'s login server and joins it (see [`RuntimeMesh::join_node`]).
    async fn join(&self, s: &Saved) -> Result<Tailscaled, MeshControlError> {
        let node = self.start_node(s).await?;
        self.join_node(s, &node).await?;
        Ok(node)
    }

    /// Starts the node of `s`'s login server (its own directory; its login state is kept).
    async fn start_node(&self, s: &Saved) -> Result<Tailscaled, MeshControlError> {
        let mut c = TailscaledConfig::new(self.cfg.dir().join(node_dir_name(&s.login_server)));
        c.tailscaled_bin = self.cfg.tailscaled_bin.clone();
        c.tailscale_bin = self.cfg.tailscale_bin.clone();
        // A plain-http control server (a local Headscale) serves DERP over plain http.
        c.plain_http_derp = s.login_server.starts_with("http://");
        Tailscaled::start(&c).await.map_err(|e| failed("join", e))
    }

    /// Joins a running node with a freshly minted single-use key, unless it already is on
    /// `s`'s tailnet under its host name.
    async fn join_node(&self, s: &Saved, node: &Tailscaled) -> Result<(), MeshControlError> {
        let client = HeadscaleClient::new(&s.headscale_url, Secret::new(s.api_key.clone()))
            .map_err(|e| failed("headscale", e))?;
        let already = node
            .cli()
            .status()
            .await
            .ok()
            .filter(|st| st.is_running() && st.hostname == s.hostname)
            .is_some()
            && node.cli().prefs().await.is_ok_and(|p| {
                p.control_url.trim_end_matches('/') == s.login_server.trim_end_matches('/')
            });
        if !already {
            let (user, _) = client
                .ensure_user(&s.user)
                .await
                .map_err(|e| failed("headscale", e))?;
            let key = client
                .create_preauth_key(&PreAuthKeyRequest {
                    user_id: user.id,
                    reusable: false,
                    ephemeral: false,
                    expiration: chrono::Utc::now()
                        + chrono::Duration::from_std(NODE_KEY_VALIDITY)
                            .unwrap_or(chrono::Duration::minutes(10)),
                    acl_tags: Vec::new(),
                })
                .await
                .map_err(|e| failed("headscale", e))?;
            node.cli()
                .join(
                    &s.login_server,
                    &key.key,
                    &s.hostname,
                    self.cfg.join_timeout,
                )
                .await
                .map_err(|e| failed("join", e))?;
        }
        Ok(())
    }

    /// Hands `s` over to the backend and the editor proxy.
    fn publish(&self, s: &Saved, node: Option<&Tailscaled>) -> Result<(), MeshControlError> {
        let keys = self.keys(s)?;
        if let Some(n) = node {
            self.dialer.set(Some(Arc::new(n.dialer())));
        }
        (self.sink)(Some(MeshHandoff {
            keys: Arc::new(keys),
            orchestrator_url: s.orchestrator_url.clone(),
        }));
        Ok(())
    }

    /// At start-up: puts the saved mesh (if any, and no flags set one) back in effect. The
    /// agents' keys are handed over at once; the node is started and joined in the background,
    /// retried until Headscale answers (it may start later, e.g. with the dashboard).
    pub async fn restore(self: &Arc<Self>) {
        if self.flags.is_some() {
            if self.cfg.file().exists() {
                tracing::warn!(file = %self.cfg.file().display(),
                    "a mesh set through the API is saved, but the start-up flags set the mesh: the flags win");
            }
            return;
        }
        let Some(saved) = self.load() else {
            return;
        };
        tracing::info!(headscale = %display_url(&saved.headscale_url), "restoring the mesh set through the API");
        if let Err(e) = self.publish(&saved, None) {
            tracing::warn!(error = %e, "the saved mesh is unusable: ignored");
            return;
        }
        self.current.lock().await.saved = Some(saved);
        let me = self.clone();
        tokio::spawn(async move { me.rejoin_until_joined().await });
    }

    async fn rejoin_until_joined(self: Arc<Self>) {
        let mut wait = Duration::from_secs(2);
        loop {
            {
                // `PUT` and `DELETE /mesh` wait for this attempt (they take the node lock too);
                // `GET /mesh` does not (the state lock is held only around the bookkeeping).
                let _nodes = self.node_lock.lock().await;
                let (saved, node) = {
                    let mut cur = self.current.lock().await;
                    let Some(saved) = cur.saved.clone() else {
                        return;
                    };
                    (saved, cur.node.take())
                };
                let node = match node {
                    Some(n) => Ok(n),
                    None => self.start_node(&saved).await,
                };
                let (node, joined) = match node {
                    Ok(n) => {
                        let r = self.join_node(&saved, &n).await;
                        (Some(n), r)
                    }
                    Err(e) => (None, Err(e)),
                };
                let mut cur = self.current.lock().await;
                if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(mut n) = node {
                        n.stop();
                    }
                    return;
                }
                if let Some(n) = &node {
                    // Its proxy works as soon as it runs; it reaches the tailnet once joined.
                    self.dialer.set(Some(Arc::new(n.dialer())));
                    cur.node_dir = Some(self.cfg.dir().join(node_dir_name(&saved.login_server)));
                }
                match joined {
                    Ok(()) => {
                        let ip = match &node {
                            Some(n) => n
                                .cli()
                                .status()
                                .await
                                .ok()
                                .and_then(|st| st.ipv4())
                                .map(|i| i.to_string()),
                            None => None,
                        };
                        let mut saved = saved;
                        if let Some(url) = self.orchestrator_url(ip.as_deref()) {
                            saved.orchestrator_url = Some(url);
                        }
                        if let Err(e) = self.publish(&saved, node.as_ref()) {
                            tracing::warn!(error = %e, "the saved mesh is unusable");
                        }
                        if let Err(e) = self.save(&saved) {
                            tracing::warn!(error = %e, "the mesh could not be saved");
                        }
                        cur.saved = Some(saved);
                        cur.node = node;
                        cur.error = None;
                        tracing::info!("the orchestrator's node is back on the tailnet");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "the orchestrator's node cannot join the tailnet yet");
                        cur.node = node;
                        cur.error = Some(e.to_string());
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }

    /// Stops the orchestrator's node (its login state stays for the next start).
    pub async fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut cur = self.current.lock().await;
        self.dialer.set(None);
        if let Some(mut n) = cur.node.take() {
            n.stop();
        }
    }

    async fn status_of(&self, cur: &Current) -> MeshStatus {
        if let Some(f) = &self.flags {
            return MeshStatus {
                available: true,
                configured: true,
                source: Some("flags".into()),
                headscale_url: Some(display_url(&f.headscale_url)),
                login_server: Some(f.login_server.clone()),
                user: Some(f.user.clone()),
                tags: f.tags.clone(),
                ..Default::default()
            };
        }
        let Some(s) = &cur.saved else {
            return MeshStatus {
                available: true,
                ..Default::default()
            };
        };
        let st = match &cur.node {
            Some(n) => n.cli().status().await.ok(),
            None => None,
        };
        let joined = st.as_ref().is_some_and(|st| st.is_running());
        MeshStatus {
            available: true,
            configured: true,
            source: Some("api".into()),
            headscale_url: Some(display_url(&s.headscale_url)),
            login_server: Some(s.login_server.clone()),
            user: Some(s.user.clone()),
            tags: s.tags.clone(),
            hostname: Some(s.hostname.clone()),
            joined,
            tailnet_ips: st.map(|st| st.addresses).unwrap_or_default(),
            orchestrator_url: s.orchestrator_url.clone(),
            error: if joined { None } else { cur.error.clone() },
        }
    }
}

/// Removes a node directory's tailscaled state (a node of a mesh no longer used).
fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the old node's directory");
        }
    }
}

#[async_trait]
impl MeshControl for RuntimeMesh {
    async fn status(&self) -> MeshStatus {
        let cur = self.current.lock().await;
        self.status_of(&cur).await
    }

    async fn set(&self, req: MeshRequest) -> Result<MeshStatus, MeshControlError> {
        if self.flags.is_some() {
            return Err(MeshControlError::FromFlags);
        }
        let headscale_url = req.headscale_url.trim().trim_end_matches('/').to_owned();
        let mut saved = Saved {
            login_server: req
                .login_server
                .as_deref()
                .map(|l| l.trim().trim_end_matches('/').to_owned())
                .unwrap_or_else(|| headscale_url.clone()),
            headscale_url,
            api_key: req.api_key.clone(),
            user: req
                .user
                .clone()
                .unwrap_or_else(|| DEFAULT_AGENT_USER.into()),
            tags: req.tags.clone(),
            hostname: req
                .hostname
                .clone()
                .unwrap_or_else(|| DEFAULT_ORCHESTRATOR_HOSTNAME.into()),
            orchestrator_url: None,
        };
        let _nodes = self.node_lock.lock().await;
        // Invalid settings fail before anything runs, then Headscale must take the API key.
        self.keys(&saved)?;
        let client = HeadscaleClient::new(&saved.headscale_url, Secret::new(saved.api_key.clone()))
            .map_err(|e| failed("headscale", e))?;
        client
            .ensure_user(&saved.user)
            .await
            .map_err(|e| failed("headscale", e))?;
        let dir = self.cfg.dir().join(node_dir_name(&saved.login_server));
        // The node of the same login server is reused (and put back if the join fails);
        // another one is left as it is until the new one has joined. The join runs without the
        // state lock, so `GET /mesh` answers meanwhile (the node lock keeps other changes out).
        let reused = {
            let mut cur = self.current.lock().await;
            if cur.node.is_some() && cur.node_dir.as_deref() == Some(dir.as_path()) {
                cur.node.take()
            } else {
                None
            }
        };
        let joined = match reused {
            Some(n) => match self.join_node(&saved, &n).await {
                Ok(()) => Ok(n),
                Err(e) => Err((e, Some(n))),
            },
            None => self.join(&saved).await.map_err(|e| (e, None)),
        };
        let mut cur = self.current.lock().await;
        let node = match joined {
            Ok(n) => n,
            Err((e, back)) => {
                if back.is_some() {
                    cur.node = back;
                }
                cur.error = Some(e.to_string());
                return Err(e);
            }
        };
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            let mut node = node;
            node.stop();
            return Err(failed("join", "the orchestrator is stopping"));
        }
        let ip = node
            .cli()
            .status()
            .await
            .ok()
            .and_then(|st| st.ipv4())
            .map(|i| i.to_string());
        saved.orchestrator_url = self.orchestrator_url(ip.as_deref());
        self.save(&saved)?;
        self.publish(&saved, Some(&node))?;
        if let Some(mut old) = cur.node.take() {
            let _ = old.cli().logout().await;
            old.stop();
            if let Some(d) = cur.node_dir.take() {
                remove_dir(&d);
            }
        }
        cur.saved = Some(saved);
        cur.node = Some(node);
        cur.node_dir = Some(dir);
        cur.error = None;
        Ok(self.status_of(&cur).await)
    }

    async fn clear(&self) -> Result<MeshStatus, MeshControlError> {
        if self.flags.is_some() {
            return Err(MeshControlError::FromFlags);
        }
        let _nodes = self.node_lock.lock().await;
        let mut cur = self.current.lock().await;
        (self.sink)(None);
        self.dialer.set(None);
        if let Some(mut n) = cur.node.take() {
            if let Err(e) = n.cli().logout().await {
                tracing::warn!(error = %e, "the orchestrator's node could not log out");
            }
            n.stop();
        }
        // And its node goes from Headscale (best effort: Headscale may be gone).
        if let Some(s) = &cur.saved {
            if let Ok(keys) = self.keys(s) {
                use guildnet_core::seams::AgentMesh as _;
                if let Err(e) = keys.remove_node(&s.hostname).await {
                    tracing::warn!(error = %e, "the orchestrator's node could not be removed from headscale");
                }
            }
        }
        if let Some(d) = cur.node_dir.take() {
            remove_dir(&d);
        }
        match std::fs::remove_file(self.cfg.file()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("store", e)),
        }
        cur.saved = None;
        cur.error = None;
        Ok(self.status_of(&cur).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn req(url: &str) -> MeshRequest {
        MeshRequest {
            headscale_url: url.into(),
            login_server: None,
            api_key: "hskey-api-secret-value".into(),
            user: None,
            tags: Vec::new(),
            hostname: None,
        }
    }

    #[test]
    fn node_dirs_are_short_and_per_login_server() {
        assert_eq!(node_dir_name("http://a:1"), node_dir_name("http://a:1/"));
        assert_ne!(node_dir_name("http://a:1"), node_dir_name("http://b:1"));
        assert_eq!(node_dir_name("http://a:1").len(), 11);
    }

    #[tokio::test]
    async fn flags_win_and_an_unreachable_headscale_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flags = RuntimeMesh::from_flags(
            RuntimeMeshConfig::new(dir.path()),
            FlagsMesh {
                headscale_url: "http://hs:8080".into(),
                login_server: "http://hs:8080".into(),
                user: "u".into(),
                tags: vec![],
            },
        );
        assert!(matches!(
            flags.set(req("http://127.0.0.1:9")).await,
            Err(MeshControlError::FromFlags)
        ));
        assert!(matches!(
            flags.clear().await,
            Err(MeshControlError::FromFlags)
        ));
        let st = flags.status().await;
        assert_eq!(st.source.as_deref(), Some("flags"));

        let got: Arc<StdMutex<Vec<bool>>> = Arc::default();
        let seen = got.clone();
        let m = RuntimeMesh::new(
            RuntimeMeshConfig::new(dir.path()),
            Arc::new(SwappableDialer::default()),
            Arc::new(move |h| seen.lock().expect("lock").push(h.is_some())),
        );
        // Nothing listens on port 9: Headscale is unreachable, so nothing is saved or handed
        // over, and the error does not quote the key.
        let e = m
            .set(req("http://127.0.0.1:9"))
            .await
            .expect_err("unreachable");
        let text = e.to_string();
        assert!(!text.contains("secret-value"), "{text}");
        assert!(!dir.path().join("mesh/mesh.json").exists());
        assert!(got.lock().expect("lock").is_empty());
        let st = m.status().await;
        assert!(st.available && !st.configured, "{st:?}");
        m.clear().await.expect("clear without a mesh");
        assert_eq!(*got.lock().expect("lock"), vec![false]);
    }
}
