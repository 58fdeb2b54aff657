//! A real Kubernetes node on this machine: containerd (with Debian's runc and CNI plugins) and a
//! kubelet registered with a testbed API server, so pods really run.
//!
//! [`RealNode`] is started by [`crate::kube::KubeCluster::start_with_node`], which also gives the
//! API server what the kubelet needs (a node token, a client certificate for the kubelet API,
//! `--kubelet-preferred-address-types=InternalIP`). This module owns the two processes, their
//! config files, the node's temp dir and the machine-wide node lock; what the node changes
//! outside its temp dir, and how that is undone, is in [`crate::host`]. The settings and why
//! each is needed are in docs/TESTBED.md ("A real node").
//!
//! Only one node runs on a machine at a time: the bridge, the cgroup root and the shim socket
//! dir are machine-wide. [`NodeLock`] (an `flock` on `<testbed dir>/node/lock`) serializes
//! nodes across processes; a second test waits for the first to finish.

use crate::host;
use crate::process::{Proc, TestbedError};
use crate::{bin, free_port, wait_for, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use nix::fcntl::{Flock, FlockArg};
use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The pinned versions `scripts/testbed/install.sh` builds (the pause image's name is there).
const VERSIONS_ENV: &str = include_str!("../../scripts/testbed/versions.env");

/// The pause image's reference in containerd, `PAUSE_IMAGE:PAUSE_VERSION` from versions.env (as
/// `install.sh pause` tags it). containerd runs it as every pod's sandbox.
pub fn pause_image() -> String {
    let field = |k: &str| {
        VERSIONS_ENV
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_default()
    };
    format!("{}:{}", field("PAUSE_IMAGE"), field("PAUSE_VERSION"))
}

/// Where Debian's containernetworking-plugins puts the CNI plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// How long the node may take to become Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of a real node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The Node's name (default `testbed-node`).
    pub name: String,
    /// Registries (`host:port`) containerd pulls from over plain HTTP, like the testbed
    /// [`crate::registry::Registry`]. More can be added later with
    /// [`RealNode::trust_insecure_registry`].
    pub insecure_registries: Vec<String>,
    /// How long to wait for another node on this machine to go away (default 20 min).
    pub lock_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            name: "testbed-node".to_owned(),
            insecure_registries: Vec::new(),
            lock_timeout: Duration::from_secs(20 * 60),
        }
    }
}

/// The machine-wide lock that lets one real node run at a time. Dropping it releases it.
#[derive(Debug)]
pub struct NodeLock {
    _lock: Flock<File>,
}

impl NodeLock {
    /// Dir of the lock and state files.
    fn dir() -> PathBuf {
        crate::testbed_dir().join("node")
    }

    /// Takes the lock, polling every 250 ms until `timeout`.
    pub async fn acquire(timeout: Duration) -> Result<NodeLock> {
        let dir = Self::dir();
        std::fs::create_dir_all(&dir)
            .map_err(TestbedError::io(format!("create {}", dir.display())))?;
        let path = dir.join("lock");
        let start = Instant::now();
        let mut warned = false;
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(TestbedError::io(format!("open {}", path.display())))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(NodeLock { _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
                Err((_, e)) => {
                    return Err(TestbedError::Io {
                        what: format!("flock {}", path.display()),
                        source: e.into(),
                    })
                }
            }
            if start.elapsed() > timeout {
                return Err(TestbedError::Timeout {
                    what: format!(
                        "the machine-wide node lock {} (another real node is running)",
                        path.display()
                    ),
                    after: timeout,
                    log: String::new(),
                });
            }
            if !warned {
                tracing::info!(lock = %path.display(), "another real testbed node runs on this machine; waiting for it");
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What the state file records while a node runs, so that the next node can clean up after a
/// process that was killed before its drop ran.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeState {
    dir: PathBuf,
    ip_forward: Option<String>,
    /// The kubelet puts its device-plugin socket in /var/lib/kubelet/device-plugins whatever
    /// its root dir is; the dir is removed at teardown only if this node created it.
    created_var_lib_kubelet: bool,
}

impl NodeState {
    fn path() -> PathBuf {
        NodeLock::dir().join("state")
    }

    fn write(&self) -> Result<()> {
        let text = format!(
            "dir={}\nip_forward={}\ncreated_var_lib_kubelet={}\n",
            self.dir.display(),
            self.ip_forward.as_deref().unwrap_or(""),
            self.created_var_lib_kubelet
        );
        std::fs::write(Self::path(), text).map_err(TestbedError::io(format!(
            "write {}",
            Self::path().display()
        )))
    }

    fn read() -> Option<NodeState> {
        let text = std::fs::read_to_string(Self::path()).ok()?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
        };
        Some(NodeState {
            dir: PathBuf::from(field("dir")?),
            ip_forward: field("ip_forward").filter(|v| !v.is_empty()),
            created_var_lib_kubelet: field("created_var_lib_kubelet").as_deref() == Some("true"),
        })
    }

    fn clear() {
        let _ = std::fs::remove_file(Self::path());
    }
}

/// What the API server gives a node: where it is and how the kubelet authenticates to it.
#[derive(Debug, Clone)]
pub(crate) struct ApiAccess {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// PEM the kubelet trusts for the API server.
    pub ca_pem: Vec<u8>,
    /// Bearer token of `system:node:<name>` (group `system:nodes`).
    pub node_token: String,
    /// CA of the client certificate the API server presents to the kubelet.
    pub kubelet_client_ca: PathBuf,
    /// The API server's address on the node's IP: pods reach it at the `kubernetes` Service's
    /// ClusterIP through a DNAT to here (see [`host::add_api_service_nat`]).
    pub service_target: std::net::SocketAddrV4,
}

/// A running node: containerd and a kubelet. Dropping it stops both, kills every container and
/// shim, and removes what the node changed on the machine (see [`crate::host`]); then it removes
/// its temp dir and releases the machine-wide lock.
#[derive(Debug)]
pub struct RealNode {
    kubelet: Option<Proc>,
    containerd: Option<Proc>,
    name: String,
    ip: Ipv4Addr,
    kubelet_port: u16,
    socket: PathBuf,
    state: NodeState,
    dir: Option<tempfile::TempDir>,
    lock: Option<NodeLock>,
    ready_after: Duration,
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).map_err(TestbedError::io(format!("write {}", path.display())))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(TestbedError::io(format!("create {}", path.display())))
}

/// The `hosts.toml` that makes containerd pull from `host` over plain HTTP.
fn hosts_toml(host: &str) -> String {
    format!(
        "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

impl RealNode {
    /// Starts containerd and the kubelet and waits until the Node is Ready. `client` is an
    /// admin client of the same API server.
    pub(crate) async fn start(
        api: &ApiAccess,
        opts: &NodeOptions,
        client: kube::Client,
    ) -> Result<RealNode> {
        let containerd_bin = bin("containerd")?;
        bin("containerd-shim-runc-v2")?;
        let kubelet_bin = bin("kubelet")?;
        let runc = bin("runc")?;
        let pause = crate::registry::testbed_image("pause")?;
        let ip = host::host_ip().map_err(TestbedError::Unexpected)?;
        for plugin in ["bridge", "host-local", "loopback"] {
            let p = Path::new(CNI_BIN_DIR).join(plugin);
            if !p.exists() {
                return Err(TestbedError::MissingBinary {
                    name: format!("CNI plugin {plugin}"),
                    path: p,
                    item: "node-deps".into(),
                });
            }
        }

        let lock = NodeLock::acquire(opts.lock_timeout).await?;
        let started = Instant::now();
        // A node whose process was killed before its drop ran left its things behind.
        if let Some(stale) = NodeState::read() {
            tracing::warn!(dir = %stale.dir.display(), "cleaning up after a testbed node that did not stop");
            // Its kubelet, containerd and shims may still run (their owner was killed).
            let killed = host::kill_processes_using(&stale.dir);
            if killed > 0 {
                tracing::warn!(
                    killed,
                    "killed the processes of a testbed node that did not stop"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let errors = host::clean(&stale.dir, &containerd_socket(&stale.dir));
            if !errors.is_empty() {
                tracing::warn!(?errors, "stale node cleanup was incomplete");
            }
            // Never recurse into a dir that still has mounts: that would delete through them.
            if host::mounts_under(&stale.dir).is_empty() {
                let _ = std::fs::remove_dir_all(&stale.dir);
            }
            if let Some(v) = &stale.ip_forward {
                let _ = host::set_ip_forward(v);
            }
            if stale.created_var_lib_kubelet {
                let _ = std::fs::remove_dir_all(host::VAR_LIB_KUBELET);
            }
            NodeState::clear();
        }
        let dir = tempfile::Builder::new()
            .prefix("gn-node-")
            .tempdir()
            .map_err(TestbedError::io("create temp dir"))?;
        let d = dir
            .path()
            .canonicalize()
            .map_err(TestbedError::io("canonicalize the node dir"))?;
        // The state file is written before anything machine-wide is changed, so a killed test
        // leaves enough for the next node to clean up.
        let state = NodeState {
            dir: d.clone(),
            ip_forward: host::ip_forward(),
            created_var_lib_kubelet: !Path::new(host::VAR_LIB_KUBELET).exists(),
        };
        state.write()?;
        let mut node = RealNode {
            kubelet: None,
            containerd: None,
            name: opts.name.clone(),
            ip,
            kubelet_port: 0,
            socket: containerd_socket(&d),
            state,
            dir: Some(dir),
            lock: Some(lock),
            ready_after: Duration::ZERO,
        };
        for sub in [
            "containerd/root",
            "containerd/state",
            "containerd/certs.d",
            "cni/net.d",
            "cni/ipam",
            "runc",
            "kubelet",
            "pod-logs",
            "volume-plugins",
        ] {
            mkdir(&d.join(sub))?;
        }
        host::create_node_cgroups().map_err(TestbedError::Unexpected)?;
        // Pods reach the API server at the `kubernetes` Service (in-cluster clients such as an
        // operator pod use KUBERNETES_SERVICE_HOST); there is no kube-proxy to route it.
        host::add_api_service_nat(api.service_target).map_err(|e| {
            TestbedError::Unexpected(format!(
                "route the kubernetes Service to the API server: {e}"
            ))
        })?;
        for r in &opts.insecure_registries {
            node.trust_insecure_registry(r)?;
        }

        // containerd
        write(
            &d.join("cni/net.d/10-guildnet-testbed.conflist"),
            cni_config(&d),
        )?;
        let config = d.join("containerd/config.toml");
        write(&config, containerd_config(&d, &node.socket, &runc))?;
        let bin_dir = crate::testbed_dir().join("bin");
        let path = std::env::join_paths(
            std::iter::once(bin_dir.clone()).chain(
                [
                    "/usr/local/sbin",
                    "/usr/local/bin",
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
                .into_iter()
                .map(PathBuf::from),
            ),
        )
        .map_err(|e| TestbedError::Unexpected(format!("PATH: {e}")))?;
        let containerd = Proc::spawn(
            "containerd",
            &containerd_bin,
            [OsStr::new("--config"), config.as_os_str()],
            &[("PATH", path.as_os_str())],
            &d.join("containerd.log"),
        )?;
        let containerd = node.containerd.insert(containerd);
        let sock = node.socket.clone();
        wait_for(
            "containerd socket",
            Duration::from_secs(30),
            Some(containerd),
            || async { sock.exists().then_some(()) },
        )
        .await?;
        // The CRI plugin is what the kubelet talks to; when its config is wrong containerd still
        // starts, without it.
        let plugins = node.ctr(&[OsStr::new("plugins"), OsStr::new("ls")]).await?;
        let cri_ok = plugins.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"io.containerd.grpc.v1")
                && w.get(1) == Some(&"cri")
                && w.last() == Some(&"ok")
        });
        if !cri_ok {
            return Err(TestbedError::Unexpected(format!(
                "containerd's CRI plugin did not load:\n{plugins}\ncontainerd log:\n{}",
                node.containerd
                    .as_ref()
                    .map(Proc::log_tail)
                    .unwrap_or_default()
            )));
        }
        // The sandbox image: no registry serves pause, so it is imported (and pinned by the
        // config's pinned_images.sandbox, so nothing garbage-collects it).
        node.ctr(&[
            OsStr::new("images"),
            OsStr::new("import"),
            OsStr::new("--local"),
            pause.as_os_str(),
        ])
        .await?;
        let images = node
            .ctr(&[OsStr::new("images"), OsStr::new("ls"), OsStr::new("-q")])
            .await?;
        let pause_ref = pause_image();
        if !images.lines().any(|l| l == pause_ref) {
            return Err(TestbedError::Unexpected(format!(
                "{} did not import as {pause_ref}; containerd has: {images}",
                pause.display()
            )));
        }

        // kubelet
        node.kubelet_port = free_port_on(ip)?;
        let healthz_port = free_port()?;
        let kubeconfig = d.join("kubelet/kubeconfig");
        write(
            &kubeconfig,
            crate::kube::render_kubeconfig("node", &api.server, &api.ca_pem, &api.node_token),
        )?;
        let kubelet_config = d.join("kubelet/config.yaml");
        write(
            &kubelet_config,
            kubelet_config_yaml(
                &d,
                ip,
                node.kubelet_port,
                healthz_port,
                &node.socket,
                &api.kubelet_client_ca,
            ),
        )?;
        let kubelet = Proc::spawn(
            "kubelet",
            &kubelet_bin,
            [
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={}", d.join("kubelet/root").display()),
                format!("--cert-dir={}", d.join("kubelet/pki").display()),
                format!("--node-ip={ip}"),
                format!("--hostname-override={}", node.name),
                "--v=1".to_owned(),
            ],
            &[("PATH", path.as_os_str())],
            &d.join("kubelet.log"),
        )?
        .listening_on(node.kubelet_port)
        .listening_on(healthz_port);
        let kubelet = node.kubelet.insert(kubelet);
        let nodes: Api<Node> = Api::all(client);
        let name = node.name.clone();
        wait_for(
            &format!("node {name} Ready (kubelet)"),
            READY_TIMEOUT,
            Some(kubelet),
            || async {
                let n = nodes.get(&name).await.ok()?;
                let ready = n
                    .status?
                    .conditions?
                    .into_iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(())
            },
        )
        .await?;
        node.ready_after = started.elapsed();
        Ok(node)
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's IP: the machine's default-route address (eth0), never loopback. Pods reach
    /// servers on the host at this address (a server must listen on it or on 0.0.0.0).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The kubelet API port (on [`Self::ip`]).
    pub fn kubelet_port(&self) -> u16 {
        self.kubelet_port
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> &Path {
        &self.socket
    }

    /// The node's temp dir (`containerd.log` and `kubelet.log` are in it).
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// From lock taken to Node Ready.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Lets containerd pull from `host` (`host:port`) over plain HTTP, from the next pull on.
    pub fn trust_insecure_registry(&self, host: &str) -> Result<()> {
        let dir = self.state.dir.join("containerd/certs.d").join(host);
        mkdir(&dir)?;
        write(&dir.join("hosts.toml"), hosts_toml(host))
    }

    /// Runs `ctr -a <socket> -n k8s.io ARGS` (the CRI namespace) and returns its stdout.
    pub async fn ctr(&self, args: &[&OsStr]) -> Result<String> {
        let ctr = bin("ctr")?;
        let mut all: Vec<&OsStr> = vec![
            OsStr::new("--address"),
            self.socket.as_os_str(),
            OsStr::new("--namespace"),
            OsStr::new("k8s.io"),
        ];
        all.extend_from_slice(args);
        crate::process::run(&ctr, all, &[]).await
    }

    /// Stops the node and cleans the machine, returning what could not be removed. The
    /// machine-wide lock is handed back rather than released, so a test can check the host
    /// before another node starts (it is `None` only if it was handed back before).
    pub fn stop(mut self) -> (Option<NodeLock>, Vec<String>) {
        let errors = self.teardown();
        (self.lock.take(), errors)
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        // The kubelet first, so it restarts nothing; then containerd (its shims stay).
        drop(self.kubelet.take());
        drop(self.containerd.take());
        errors.extend(host::clean(&self.state.dir, &self.socket));
        if let Some(dir) = self.dir.take() {
            if host::mounts_under(&self.state.dir).is_empty() {
                if let Err(e) = dir.close() {
                    errors.push(format!("remove {}: {e}", self.state.dir.display()));
                }
            } else {
                // Removing it would delete through the mounts: leave it for the next node.
                let _ = dir.keep();
                errors.push(format!(
                    "kept {}: it still has mounts",
                    self.state.dir.display()
                ));
            }
        }
        if self.state.created_var_lib_kubelet {
            if let Err(e) = std::fs::remove_dir_all(host::VAR_LIB_KUBELET) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("remove {}: {e}", host::VAR_LIB_KUBELET));
                }
            }
        }
        if let Some(v) = &self.state.ip_forward {
            if host::ip_forward().as_ref() != Some(v) {
                if let Err(e) = host::set_ip_forward(v) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            NodeState::clear();
        } else {
            // The state file stays, so the next node retries the cleanup.
            tracing::warn!(?errors, "testbed node cleanup was incomplete");
        }
        errors
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if self.kubelet.is_some() || self.containerd.is_some() || self.dir.is_some() {
            self.teardown();
        }
    }
}

fn containerd_socket(dir: &Path) -> PathBuf {
    dir.join("containerd/containerd.sock")
}

/// A port on `ip` that was free a moment ago.
pub(crate) fn free_port_on(ip: Ipv4Addr) -> Result<u16> {
    let l =
        std::net::TcpListener::bind((ip, 0)).map_err(TestbedError::io(format!("bind {ip}:0")))?;
    Ok(l.local_addr()
        .map_err(TestbedError::io("local_addr"))?
        .port())
}

/// The CNI network: a bridge with host-local IPAM whose state stays in the node dir. No
/// masquerading and no portmap: pods only talk to the host, so CNI adds no iptables rules.
fn cni_config(d: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": host::CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": host::BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": host::POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": d.join("cni/ipam"),
            },
        }],
    })
    .to_string()
}

/// containerd's config (version 3). Everything it writes goes under the node dir; the CRI
/// settings are the ones this machine needs (docs/TESTBED.md explains each).
fn containerd_config(d: &Path, socket: &Path, runc: &Path) -> String {
    let p = |s: &str| d.join(s).display().to_string();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
# Not /etc/containerd/conf.d/*.toml: nothing of the host's containerd config applies.
imports = []
# Plugins that would write outside the node dir (NRI's socket under /var/run/nri, the opt
# plugin's /opt/containerd) or that this machine cannot use.
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  # The transfer service needs it; it only looks in this dir.
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = "{verifiers}"

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{pause}"
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "{certs}"

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    disable_hugetlb_controller = true
    tolerate_missing_hugetlb_controller = true
    netns_mounts_under_state_dir = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{runc_root}"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{cni_conf}"
      max_conf_num = 1
      # containerd brings up the pods' lo itself: the loopback plugin would leave a libcni
      # cache entry (cni-loopback-*) for every pod killed without CNI DEL.
      use_internal_loopback = true
"#,
        root = p("containerd/root"),
        state = p("containerd/state"),
        socket = socket.display(),
        pause = pause_image(),
        certs = p("containerd/certs.d"),
        runc = runc.display(),
        runc_root = p("runc"),
        cni_bin = CNI_BIN_DIR,
        cni_conf = p("cni/net.d"),
        verifiers = p("containerd/image-verifiers"),
    )
}

/// The kubelet's config. See docs/TESTBED.md for why each setting is there.
fn kubelet_config_yaml(
    d: &Path,
    ip: Ipv4Addr,
    port: u16,
    healthz_port: u16,
    socket: &Path,
    client_ca: &Path,
) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "{ip}"
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
failCgroupV1: false
failSwapOn: false
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {client_ca}
authorization:
  mode: AlwaysAllow
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
"#,
        socket = socket.display(),
        cgroup_root = host::CGROUP_ROOT,
        pod_logs = d.join("pod-logs").display(),
        volume_plugins = d.join("volume-plugins").display(),
        client_ca = client_ca.display(),
    )
}
