//! Dev-only test support for GuildNet: the real upstream servers, on loopback.
//!
//! `scripts/testbed/install.sh` builds or installs pinned versions of every server into
//! `${GUILDNET_TESTBED_DIR:-~/.cache/guildnet/testbed}/bin`. This crate starts them for tests,
//! each with free loopback ports and its own temp dir, waits until each is ready, and stops them
//! when the handle is dropped (SIGTERM to the process group, then SIGKILL).
//!
//! - [`kube::KubeCluster`]: etcd + kube-apiserver (token auth, RBAC, service-account signing),
//!   optionally kube-controller-manager + kube-scheduler + kwok with simulated nodes, or a real
//!   node ([`node::RealNode`]: containerd + kubelet on this machine, pods really run; one per
//!   machine at a time, and [`host`] undoes what it changes on the machine).
//! - [`registry::Registry`]: distribution's OCI registry on loopback, and a skopeo push helper.
//! - [`images`]: GuildNet's own images built by `scripts/images/build.sh` and pushed there.
//! - [`mesh::Headscale`] and [`mesh::Tailscaled`]: a control server with an API key, and
//!   userspace-networking tailscale nodes with their own state dirs, sockets and HTTP proxies.
//! - [`editor::CodeServer`]: code-server with password auth.
//! - [`browser::ChromeDriver`] with a minimal W3C WebDriver session for headless Chromium.
//! - [`bench`](mod@bench): percentiles and the table-row format of the bench binaries.
//! - [`talos::Talosctl`]: the client-side talosctl commands; [`talos_emulator::TalosEmulator`]:
//!   emulated Talos nodes (the real machine API over mTLS) that the real talosctl drives, whose
//!   bootstrap starts a real control plane.
//! - [`forge::Gitea`]: a real git forge with an admin token, repositories and pull requests.
//! - [`postgres::Postgres`]: PostgreSQL from Debian, initialised in a temp dir, run as an
//!   unprivileged system user.
//! - [`nginx::Nginx`]: nginx from Debian as an HTTP load balancer in front of several
//!   orchestrator replicas (round-robin, or primary and backup), SSE-friendly.
//!
//! A missing binary is an error that names the install command; nothing is skipped silently.

pub mod bench;
pub mod browser;
pub mod editor;
pub mod forge;
pub mod host;
pub mod image;
pub mod images;
pub mod kube;
pub mod mesh;
pub mod nginx;
pub mod node;
pub mod postgres;
pub mod process;
pub mod registry;
pub mod talos;
pub mod talos_emulator;

pub use process::{Proc, TestbedError};

use std::path::PathBuf;
use std::time::Duration;

/// Result type of this crate.
pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// The testbed cache: `$GUILDNET_TESTBED_DIR`, else `~/.cache/guildnet/testbed`.
pub fn testbed_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GUILDNET_TESTBED_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/guildnet/testbed")
}

/// Path of an installed testbed binary, or an error naming the `install.sh` item to run.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = testbed_dir().join("bin").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(TestbedError::MissingBinary {
            name: name.to_owned(),
            path,
            item: install_item(name).to_owned(),
        })
    }
}

fn install_item(bin: &str) -> &str {
    match bin {
        "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" => "kube",
        "tailscaled" => "tailscale",
        "containerd-shim-runc-v2" | "ctr" => "containerd",
        "kubectl" => "kubelet",
        "runc" | "skopeo" => "node-deps",
        "chromedriver" => "chromium",
        "initdb" | "pg_isready" | "psql" => "postgres",
        other => other,
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(TestbedError::io("bind :0"))?;
    let port = l
        .local_addr()
        .map_err(TestbedError::io("local_addr"))?
        .port();
    Ok(port)
}

/// An HTTP client for readiness probes: short timeouts, and it accepts the self-signed
/// certificates the servers generate for themselves.
pub fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Polls `check` every 100 ms until it returns `Some`, the process `proc` exits, or `timeout`
/// passes. Errors quote the tail of the process's log. An answer counts only while `proc`
/// holds every port it declared ([`Proc::listening_on`]): otherwise it came from another
/// process on that port.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut proc: Option<&mut Proc>,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stranger = Vec::new();
    loop {
        if let Some(v) = check().await {
            match proc.as_deref() {
                Some(p) => {
                    stranger = p.ports_not_held();
                    if stranger.is_empty() {
                        return Ok(v);
                    }
                }
                None => return Ok(v),
            }
        }
        if let Some(p) = proc.as_deref_mut() {
            p.ensure_running()?;
        }
        if tokio::time::Instant::now() >= deadline {
            let what = if stranger.is_empty() {
                what.to_owned()
            } else {
                format!(
                    "{what} (an answer came, but not from this server: it does not listen on \
                     port {stranger:?}, another process does)"
                )
            };
            return Err(TestbedError::Timeout {
                what,
                after: timeout,
                log: proc.map(|p| p.log_tail()).unwrap_or_default(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For tests: polls `check` every 100 ms until it returns `Some`, and panics naming `what` when
/// `timeout` passes first.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
