//! The orchestrator's mesh flags: agents of the Kubernetes backend on the tailnet (issue 22).
//!
//! The Headscale API key is read from a 0600 file (`--mesh-api-key-file`) or from the
//! environment (`GUILDNET_MESH_API_KEY`), never from a command-line argument, and is never
//! logged.

use anyhow::Context as _;
use clap::Args;
use guildnet_core::agent_settings::read_secret_file;
use guildnet_core::token::Secret;
use guildnet_kube::backend_mesh::KubeMesh;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable with the Headscale API key (when no key file is given).
pub const MESH_API_KEY_ENV: &str = "GUILDNET_MESH_API_KEY";

/// Flags putting each Kubernetes agent on the tailnet.
#[derive(Args, Debug, Clone, Default)]
pub struct MeshArgs {
    /// Kubernetes backend: Headscale's URL (its REST API). When set, every agent pod gets a
    /// userspace tailscale sidecar that joins with a single-use, ephemeral pre-auth key minted
    /// per task; the node is removed when the task ends. Needs an API key
    /// (--mesh-api-key-file or GUILDNET_MESH_API_KEY) and, for the editor, --tailnet-socks5.
    #[arg(long, env = "GUILDNET_MESH_HEADSCALE_URL")]
    pub mesh_headscale_url: Option<String>,
    /// The URL agents log in to (default: --mesh-headscale-url), e.g. when the orchestrator
    /// reaches Headscale on loopback but pods reach it at another address.
    #[arg(long, env = "GUILDNET_MESH_LOGIN_SERVER")]
    pub mesh_login_server: Option<String>,
    /// A file (mode 0600) holding the Headscale API key (`headscale apikeys create`).
    #[arg(long, env = "GUILDNET_MESH_API_KEY_FILE")]
    pub mesh_api_key_file: Option<PathBuf>,
    /// The Headscale user owning agent nodes (created if missing).
    #[arg(long, env = "GUILDNET_MESH_USER", default_value = guildnet_mesh::agent_keys::DEFAULT_AGENT_USER)]
    pub mesh_user: String,
    /// An ACL tag (tag:NAME) for agent nodes, so Headscale's policy can say what agents may
    /// reach; repeat or comma-separate.
    #[arg(long = "mesh-tag", env = "GUILDNET_MESH_TAGS", value_delimiter = ',')]
    pub mesh_tags: Vec<String>,
    /// How long an agent's pre-auth key stays usable, in seconds (it is single-use: a pod that
    /// joined no longer needs it).
    #[arg(long, env = "GUILDNET_MESH_KEY_TTL_SECS", default_value_t = guildnet_mesh::agent_keys::DEFAULT_KEY_VALIDITY.as_secs())]
    pub mesh_key_ttl_secs: u64,
    /// Start an agent on the pod network when Headscale cannot mint its key, instead of
    /// keeping the task Scheduled (with the reason shown) until it can.
    #[arg(long, env = "GUILDNET_MESH_ALLOW_OFF_MESH")]
    pub mesh_allow_off_mesh: bool,
}

impl MeshArgs {
    /// Whether a mesh is configured.
    pub fn enabled(&self) -> bool {
        self.mesh_headscale_url.is_some()
    }

    /// The Kubernetes backend's mesh, when configured.
    pub fn kube_mesh(&self) -> anyhow::Result<Option<KubeMesh>> {
        self.kube_mesh_with(|k| std::env::var(k).ok())
    }

    fn kube_mesh_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<KubeMesh>> {
        let Some(url) = &self.mesh_headscale_url else {
            return Ok(None);
        };
        let api_key = match &self.mesh_api_key_file {
            Some(p) => read_secret_file(p).context("--mesh-api-key-file")?,
            None => match env(MESH_API_KEY_ENV) {
                Some(k) if !k.trim().is_empty() => Secret::new(k.trim()),
                _ => anyhow::bail!(
                    "--mesh-headscale-url needs an API key: --mesh-api-key-file PATH or \
                     {MESH_API_KEY_ENV}"
                ),
            },
        };
        let client = guildnet_mesh::headscale::HeadscaleClient::new(url, api_key)
            .context("--mesh-headscale-url")?;
        let login = self
            .mesh_login_server
            .clone()
            .unwrap_or_else(|| url.clone());
        guildnet_mesh::headscale::HeadscaleClient::new(&login, Secret::new("-"))
            .context("--mesh-login-server")?;
        if self.mesh_key_ttl_secs < 60 {
            anyhow::bail!("--mesh-key-ttl-secs must be at least 60");
        }
        let keys = guildnet_mesh::AgentMeshKeys::new(client, login)
            .with_user(self.mesh_user.clone())
            .with_tags(self.mesh_tags.clone())
            .context("--mesh-tag")?
            .with_key_validity(Duration::from_secs(self.mesh_key_ttl_secs));
        let mut m = KubeMesh::new(Arc::new(keys));
        m.allow_off_mesh = self.mesh_allow_off_mesh;
        Ok(Some(m))
    }
}

impl MeshArgs {
    /// The mesh behind `/mesh`: the flags' mesh (reported, changes refused) when
    /// `--mesh-headscale-url` is set, else one set through the API, whose agents go into
    /// `slot` and whose node's SOCKS5 proxy goes into `dialer` (unless `--tailnet-socks5`
    /// already names a node: then it stays). `tailscaled` and `tailscale` come from
    /// `GUILDNET_TAILSCALED` and `GUILDNET_TAILSCALE`, else from `PATH`.
    pub fn runtime_mesh(
        &self,
        state_dir: &std::path::Path,
        slot: guildnet_kube::backend_mesh::MeshSlot,
        dialer: Arc<guildnet_core::proxy::SwappableDialer>,
        socks5_flag: bool,
    ) -> guildnet_mesh::runtime::RuntimeMesh {
        use guildnet_mesh::runtime::{FlagsMesh, RuntimeMesh, RuntimeMeshConfig};
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut cfg = RuntimeMeshConfig::new(state_dir);
        cfg.tailscaled_bin = env("GUILDNET_TAILSCALED");
        cfg.tailscale_bin = env("GUILDNET_TAILSCALE");
        cfg.agent_key_validity = Duration::from_secs(self.mesh_key_ttl_secs.max(60));
        if let Some(url) = &self.mesh_headscale_url {
            return RuntimeMesh::from_flags(
                cfg,
                FlagsMesh {
                    headscale_url: url.clone(),
                    login_server: self
                        .mesh_login_server
                        .clone()
                        .unwrap_or_else(|| url.clone()),
                    user: self.mesh_user.clone(),
                    tags: self.mesh_tags.clone(),
                },
            );
        }
        // With --tailnet-socks5 the editor proxy keeps that node; the API's mesh then only
        // changes which Headscale agents join.
        let node_dialer = if socks5_flag {
            Arc::new(guildnet_core::proxy::SwappableDialer::default())
        } else {
            dialer
        };
        let allow_off_mesh = self.mesh_allow_off_mesh;
        RuntimeMesh::new(
            cfg,
            node_dialer,
            Arc::new(move |handoff| {
                slot.set(handoff.map(|h| {
                    let mut m = KubeMesh::new(h.keys);
                    m.allow_off_mesh = allow_off_mesh;
                    m.orchestrator_url = h.orchestrator_url;
                    m
                }))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> MeshArgs {
        MeshArgs {
            mesh_headscale_url: Some(url.into()),
            mesh_user: "guildnet-agents".into(),
            mesh_key_ttl_secs: 900,
            ..Default::default()
        }
    }

    #[test]
    fn off_without_a_url() {
        assert!(MeshArgs::default()
            .kube_mesh_with(|_| None)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn a_url_needs_a_key_and_bad_input_names_the_flag() {
        let e = args("http://127.0.0.1:8080")
            .kube_mesh_with(|_| None)
            .expect_err("no key");
        assert!(format!("{e:#}").contains(MESH_API_KEY_ENV), "{e:#}");
        let key = |_: &str| Some("hskey-api-secret-value".to_owned());
        let m = args("http://127.0.0.1:8080")
            .kube_mesh_with(key)
            .expect("ok")
            .expect("mesh");
        assert_eq!(m.keys.login_server(), "http://127.0.0.1:8080");
        assert!(!format!("{m:?}").contains("secret-value"));
        let e = args("ftp://x").kube_mesh_with(key).expect_err("url");
        assert!(format!("{e:#}").contains("--mesh-headscale-url"), "{e:#}");
        let mut a = args("http://h");
        a.mesh_tags = vec!["agents".into()];
        let e = a.kube_mesh_with(key).expect_err("tag");
        assert!(format!("{e:#}").contains("--mesh-tag"), "{e:#}");
        let mut a = args("http://h");
        a.mesh_login_server = Some("http://100.64.0.1:8080".into());
        let m = a.kube_mesh_with(key).expect("ok").expect("mesh");
        assert_eq!(m.keys.login_server(), "http://100.64.0.1:8080");
    }
}
