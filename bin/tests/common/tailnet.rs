//! Userspace `tailscaled` nodes for the mesh tests (no root, no TUN), with DERP over plain HTTP
//! as the testbed's Headscale serves it.

use guildnet_core::token::Secret;
use guildnet_mesh::tailscale::{Tailscaled, TailscaledConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A node under `dir` run by the testbed's `tailscaled` and `tailscale`.
pub async fn node(dir: &Path) -> Tailscaled {
    let bin = |name| guildnet_testbed::bin(name).expect("testbed binary");
    node_with(dir, bin("tailscaled"), bin("tailscale")).await
}

/// A node under `dir` run by the given `tailscaled` and `tailscale` binaries.
pub async fn node_with(dir: &Path, tailscaled: PathBuf, tailscale: PathBuf) -> Tailscaled {
    let mut c = TailscaledConfig::new(dir);
    c.tailscaled_bin = Some(tailscaled);
    c.tailscale_bin = Some(tailscale);
    c.plain_http_derp = true;
    Tailscaled::start(&c).await.expect("tailscaled starts")
}

/// Logs `node` in at `login` with the pre-auth `key` as `hostname`; panics unless it joins
/// within 60 s.
pub async fn join(node: &Tailscaled, login: &str, key: &Secret, hostname: &str) {
    node.cli()
        .up(login, key, hostname, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("node {hostname} joins the tailnet at {login}: {e}"));
}
