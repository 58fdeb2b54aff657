//! The Helm chart's pods, for real: `helm install` of deploy/helm/guildnet with its default
//! values (operator, orchestrator on SQLite on a PersistentVolumeClaim, dashboard) into the
//! testbed's cluster with a real node (containerd + kubelet on this machine). The operator,
//! orchestrator and dashboard images are built by `scripts/images/build.sh` from this build's
//! binaries and pushed to the testbed's registry; the chart pulls them from there
//! (`image.registry`, `image.tag`). The three Deployments become available (their readiness
//! probes pass), and the orchestrator's SQLite database is on the claimed volume. Then a task
//! scheduled for an org with no kubeconfig goes to this same cluster (the chart's
//! `orchestrator.inCluster`, its ServiceAccount and Role): its AgentTask is created and the
//! operator pod makes its Deployment. The agent's own pod is not the point here (the agent
//! image is not in the testbed's registry; bin/tests/kube_pod_e2e.rs runs agents on the node).
//!
//! Then the orchestrator in its pod joins a tailnet at run time (issue 22): the testbed's
//! Headscale listens on the node's address (pods reach the host only there), `PUT /mesh` with
//! its URL and an API key starts the image's userspace tailscaled under the state dir (on the
//! claimed volume, with the chart's securityContext: non-root, read-only root filesystem, no
//! capabilities), `GET /mesh` says joined with a 100.x address, Headscale lists the node, and a
//! node on the host reaches the orchestrator's API at the tailnet URL agents are given.
//!
//! Stand-in: the testbed has no storage provisioner, so the test creates two hostPath
//! PersistentVolumes for the chart's claims to bind to (what a cluster's provisioner does).
//!
//! One real node runs at a time on a machine: the test waits for the machine-wide node lock.

mod common;

use common::{free_port_on, free_udp_on, tailnet};
use guildnet_core::api::MeshRequest;
use guildnet_core::client::OrchestratorClient;
use guildnet_core::token::Secret as Token;
use guildnet_mesh::headscale::HeadscaleSettings;
use guildnet_mesh::setup::{self, CreateOptions};
use guildnet_testbed::eventually;
use guildnet_testbed::images::build_and_push;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::registry::Registry;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "guildnet";

fn helm(home: &Path, args: &[&str]) -> String {
    let bin = guildnet_testbed::bin("helm").expect("the testbed's helm (install.sh helm)");
    let out = Command::new(bin)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "helm {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A hostPath PersistentVolume writable by the chart's user (65532): the kubelet applies no
/// fsGroup to hostPath volumes.
fn host_volume(dir: &Path, name: &str, size: &str) -> PersistentVolume {
    let path = dir.join(name);
    std::fs::create_dir(&path).expect("volume dir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": path.to_str().unwrap(), "type": "Directory"},
        }
    }))
    .expect("PersistentVolume")
}

/// Pods of the namespace with their phase and container states, for failure messages.
async fn pod_report(pods: &Api<Pod>) -> String {
    let mut out = String::new();
    for p in pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let st = p.status.unwrap_or_default();
        out += &format!(
            "{} {:?} {}\n",
            p.metadata.name.unwrap_or_default(),
            st.phase,
            serde_json::to_string(&st.container_statuses).unwrap_or_default()
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_pods_become_ready_on_a_real_node() {
    let dir = tempfile::Builder::new()
        .prefix("gn-helm-node-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let registry = Registry::start().await.expect("registry");
    let tag = format!("helm-{}", std::process::id());
    let t = Instant::now();
    let built = build_and_push(
        &[
            (
                "operator",
                Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
            ),
            (
                "orchestrator",
                Path::new(env!("CARGO_BIN_EXE_guildnet-orchestrator")),
            ),
            (
                "dashboard",
                Path::new(env!("CARGO_BIN_EXE_guildnet-dashboard")),
            ),
        ],
        &registry,
        &tag,
    )
    .await
    .expect("scripts/images/build.sh");
    println!("HELM-NODE images_s {:.1}", t.elapsed().as_secs_f64());
    for kind in ["operator", "orchestrator", "dashboard"] {
        assert_eq!(
            built.get(kind).unwrap().reference,
            format!("{}/guildnet-{kind}:{tag}", registry.host())
        );
    }

    let cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("control plane + real node");
    let client = cluster.client().await.expect("admin client");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for (name, size) in [
        ("helm-pv-orchestrator", "2Gi"),
        ("helm-pv-dashboard", "256Mi"),
    ] {
        pvs.create(&PostParams::default(), &host_volume(dir.path(), name, size))
            .await
            .expect("create PersistentVolume");
    }

    let home = dir.path().join("helm");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/guildnet");
    let registry_value = format!("image.registry={}", registry.host());
    let tag_value = format!("image.tag={tag}");
    let t = Instant::now();
    let out = helm(
        &home,
        &[
            "install",
            "gn",
            chart.to_str().unwrap(),
            "--namespace",
            NS,
            "--create-namespace",
            "--kubeconfig",
            cluster.kubeconfig_path().to_str().unwrap(),
            "--set",
            &registry_value,
            "--set",
            &tag_value,
            "--set",
            "controlPlane.orchestrator.orgs={acme}",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    assert!(out.contains("STATUS: deployed"), "{out}");
    println!("HELM-NODE install_wait_s {:.1}", t.elapsed().as_secs_f64());

    // helm --wait returned: every Deployment has its replicas available (readiness passed).
    let deps: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for d in [
        "gn-guildnet-operator",
        "gn-guildnet-orchestrator",
        "gn-guildnet-dashboard",
    ] {
        let available = deps
            .get(d)
            .await
            .expect("deployment")
            .status
            .and_then(|s| s.available_replicas);
        assert_eq!(available, Some(1), "{d}:\n{}", pod_report(&pods).await);
    }
    // The claims are bound to the volumes, and the orchestrator's database is on its volume.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let claim = pvcs
        .get("gn-guildnet-orchestrator-state")
        .await
        .expect("pvc");
    assert_eq!(claim.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    let db = dir.path().join("helm-pv-orchestrator/orchestrator.db");
    eventually(
        "orchestrator.db on the volume",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move { db.exists().then_some(()) }
        },
    )
    .await;
    // The dashboard keeps its own database on its own volume.
    let dash_db = dir.path().join("helm-pv-dashboard/dashboard.db");
    eventually(
        "dashboard.db on the volume",
        Duration::from_secs(30),
        || {
            let db = dash_db.clone();
            async move { db.exists().then_some(()) }
        },
    )
    .await;

    let orch = OrchestratorPod::find(&client, &pods).await;
    schedule_into_the_same_cluster(&client, &orch).await;
    let node_ip = cluster.node().expect("the real node").ip();
    the_orchestrator_pod_joins_the_mesh(&orch, node_ip, &dir.path().join("helm-pv-orchestrator"))
        .await;
}

/// The orchestrator pod's address (the host is the node: pod IPs route) and the chart's admin
/// token.
struct OrchestratorPod {
    ip: String,
    token: String,
}

impl OrchestratorPod {
    async fn find(client: &kube::Client, pods: &Api<Pod>) -> Self {
        let secret: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
        let token = secret
            .get("gn-guildnet")
            .await
            .expect("the chart's Secret")
            .data
            .and_then(|d| d.get("admin-token").cloned())
            .expect("admin-token");
        let token = String::from_utf8(token.0).expect("utf-8 token");
        let listed = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=orchestrator"))
            .await
            .expect("orchestrator pods");
        let pod = listed
            .items
            .into_iter()
            .find(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
            .expect("the orchestrator pod with an IP");
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        // The chart's restrictions, which the mesh must work under: non-root, read-only root
        // filesystem, no capabilities, no privilege escalation.
        let spec = pod.spec.expect("pod spec");
        let psc = spec.security_context.expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true), "{psc:?}");
        assert_eq!(psc.run_as_user, Some(65532), "{psc:?}");
        let c = spec
            .containers
            .iter()
            .find(|c| c.name == "orchestrator")
            .expect("orchestrator container");
        let csc = c
            .security_context
            .clone()
            .expect("container securityContext");
        assert_eq!(csc.read_only_root_filesystem, Some(true), "{csc:?}");
        assert_eq!(csc.allow_privilege_escalation, Some(false), "{csc:?}");
        assert_eq!(csc.privileged, None, "{csc:?}");
        let caps = csc.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]), "{caps:?}");
        assert_eq!(caps.add, None, "{caps:?}");
        Self { ip, token }
    }

    fn url(&self) -> String {
        format!("http://{}:8080", self.ip)
    }
}

/// `PUT /mesh` to the orchestrator in its pod: its image's tailscaled joins Headscale (on the
/// node's address) from the chart's pod, its state on the volume `volume`.
async fn the_orchestrator_pod_joins_the_mesh(
    orch: &OrchestratorPod,
    node_ip: Ipv4Addr,
    volume: &Path,
) {
    let dir = tempfile::Builder::new()
        .prefix("ghnm")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let mut opts = CreateOptions::new(dir.path().join("headscale"));
    opts.headscale_bin = Some(guildnet_testbed::bin("headscale").expect("testbed headscale"));
    opts.settings = HeadscaleSettings::serving_at(
        node_ip,
        free_port_on(node_ip),
        free_port_on(Ipv4Addr::LOCALHOST),
        free_port_on(Ipv4Addr::LOCALHOST),
        free_udp_on(node_ip),
    );
    let created = setup::create(&opts, None).await.expect("headscale");
    let hs_url = created.url().to_owned();
    let api_key = created.client.api_key().expose().to_owned();

    let client = OrchestratorClient::new(&orch.url(), Token::new(orch.token.clone()))
        .expect("orchestrator client");
    let before = client.mesh().await.expect("GET /mesh");
    assert!(before.available && !before.configured, "{before:?}");
    let t = Instant::now();
    let set = client
        .set_mesh(&MeshRequest {
            headscale_url: hs_url.clone(),
            login_server: None,
            api_key: api_key.clone(),
            user: None,
            tags: Vec::new(),
            hostname: Some("helm-orchestrator".into()),
        })
        .await;
    let took = t.elapsed().as_secs_f64();
    let set = set.unwrap_or_else(|e| {
        let log = volume.join("mesh");
        panic!(
            "PUT /mesh to the orchestrator pod: {e}\n{}",
            tailscaled_logs(&log)
        )
    });
    println!("HELM-NODE put_mesh_s {took:.1}");
    assert!(set.joined, "{set:?}");

    let st = client.mesh().await.expect("GET /mesh");
    assert!(st.configured && st.joined, "{st:?}");
    assert_eq!(st.source.as_deref(), Some("api"), "{st:?}");
    assert_eq!(st.headscale_url.as_deref(), Some(hs_url.as_str()), "{st:?}");
    assert_eq!(st.hostname.as_deref(), Some("helm-orchestrator"), "{st:?}");
    let ip = st
        .tailnet_ips
        .iter()
        .find(|a| a.starts_with("100."))
        .unwrap_or_else(|| panic!("no 100.x address: {st:?}"))
        .clone();
    let tailnet_url = format!("http://{ip}:8080");
    assert_eq!(
        st.orchestrator_url.as_deref(),
        Some(tailnet_url.as_str()),
        "{st:?}"
    );

    // Headscale lists the orchestrator's node, online, at that address.
    let nodes = created.client.list_nodes(None).await.expect("nodes");
    let node = nodes
        .iter()
        .find(|n| n.name == "helm-orchestrator")
        .unwrap_or_else(|| panic!("Headscale does not list helm-orchestrator: {nodes:?}"));
    assert!(node.ip_addresses.contains(&ip), "{node:?}");
    assert!(node.online, "{node:?}");

    // The node's state and the saved mesh are on the claimed volume (the state dir), 0600.
    let saved = volume.join("mesh/mesh.json");
    let mode = std::fs::metadata(&saved)
        .unwrap_or_else(|e| panic!("{}: {e}", saved.display()))
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "mesh.json mode {mode:o}");
    let sockets: Vec<_> = std::fs::read_dir(volume.join("mesh"))
        .expect("mesh dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("tailscaled.sock").exists())
        .collect();
    assert_eq!(
        sockets.len(),
        1,
        "one node directory with its LocalAPI socket"
    );

    // A node on the host reaches the orchestrator's API at the tailnet URL agents are given
    // (the pod's netstack forwards it to the orchestrator's listener). The host node runs the
    // image's own tailscaled too, so that its outbound proxies (SOCKS5, which the orchestrator's
    // editor proxy dials through, and HTTP) are exercised in that build.
    let (tailscaled, tailscale) = image_tailscaled(&dir.path().join("img"));
    let host_node = tailnet::node_with(&dir.path().join("hn"), tailscaled, tailscale).await;
    tailnet::join(&host_node, &hs_url, &created.preauth_key.key, "helm-host").await;
    let http = host_node
        .http_client(Duration::from_secs(10))
        .expect("tailnet http client");
    let t = Instant::now();
    let health = eventually(
        "the orchestrator's /health over the tailnet",
        Duration::from_secs(60),
        || {
            let (http, url) = (http.clone(), format!("{tailnet_url}/health"));
            async move {
                let r = http.get(url).send().await.ok()?;
                r.status().is_success().then_some(r.status())
            }
        },
    )
    .await;
    assert!(health.is_success());
    println!(
        "HELM-NODE tailnet_health_s {:.1}",
        t.elapsed().as_secs_f64()
    );
    // Through the SOCKS5 proxy: a plain HTTP/1.1 request on the dialed stream.
    let mut stream = host_node
        .dial(&ip, 8080)
        .await
        .expect("SOCKS5 dial to the orchestrator's tailnet address");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: orchestrator\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("reply in 10 s")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// The tailscaled of the orchestrator image (the top layer of the cached stage that
/// `scripts/images/build.sh` just built the image from), unpacked into `dir`: the paths of
/// `tailscaled` and of `tailscale` (the symlink to it).
fn image_tailscaled(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cache = std::env::var_os("GUILDNET_IMAGES_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/guildnet/images")
        });
    let stage = std::fs::read_dir(&cache)
        .expect("the images cache")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("stage-orchestrator-") && !n.ends_with(".tmp"))
        })
        .expect("the orchestrator stage in the images cache");
    let oci = stage.join("oci");
    let json = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).expect("OCI file")).expect("OCI JSON")
    };
    let blob = |digest: &serde_json::Value| {
        oci.join("blobs")
            .join(digest.as_str().expect("digest").replacen(':', "/", 1))
    };
    let index = json(oci.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let layers = manifest["layers"].as_array().expect("layers");
    let top = blob(&layers.last().expect("a layer")["digest"]);
    std::fs::create_dir_all(dir).expect("dir");
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&top)
        .arg("-C")
        .arg(dir)
        .args(["usr/local/bin/tailscaled", "usr/local/bin/tailscale"])
        .output()
        .expect("tar");
    // The layers umoci 0.4.7 inserts here end without tar's end-of-archive blocks (containerd
    // accepts that, GNU tar exits 2 with "Unexpected EOF"): the files themselves are checked.
    let bin = dir.join("usr/local/bin");
    let daemon = bin.join("tailscaled");
    let size = std::fs::metadata(&daemon).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000_000 && bin.join("tailscale").is_file(),
        "tailscaled ({size} bytes) and tailscale from {}: tar {}: {}",
        top.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (daemon, bin.join("tailscale"))
}

/// The tails of the tailscaled logs under the volume's `mesh/`, for failure messages.
fn tailscaled_logs(mesh: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(mesh).into_iter().flatten().flatten() {
        let log = e.path().join("tailscaled.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out += &format!("--- {}\n{tail}\n", log.display());
        }
    }
    out
}

/// The orchestrator pod's API (at its pod IP: the host is the node) schedules a task for org
/// `acme`, which has no kubeconfig: the AgentTask lands in the chart's namespace through the
/// in-cluster ServiceAccount, and the operator pod reconciles it into a Deployment.
async fn schedule_into_the_same_cluster(client: &kube::Client, orch: &OrchestratorPod) {
    let (ip, token) = (&orch.ip, &orch.token);
    let http = reqwest::Client::new();
    let res = http
        .post(format!("http://{ip}:8080/schedule"))
        .bearer_auth(token)
        .json(&json!({"org": "acme", "task": "echo hello"}))
        .send()
        .await
        .expect("POST /schedule to the orchestrator pod");
    let status = res.status();
    let body: serde_json::Value = res.json().await.expect("schedule answer");
    assert!(status.is_success(), "{status}: {body}");
    let id = body["id"].as_str().expect("task id").to_owned();

    let tasks: Api<guildnet_kube::crd::AgentTask> = Api::namespaced(client.clone(), NS);
    let name = guildnet_kube::backend::agenttask_name(
        &guildnet_core::names::TaskId::parse_field("id", &id).expect("a task id"),
    );
    let t = Instant::now();
    eventually(
        "the task's AgentTask in the chart's namespace",
        Duration::from_secs(60),
        || {
            let (tasks, name) = (tasks.clone(), name.clone());
            async move { tasks.get_opt(&name).await.ok().flatten().map(|_| ()) }
        },
    )
    .await;
    println!(
        "HELM-NODE schedule_to_agenttask_s {:.1}",
        t.elapsed().as_secs_f64()
    );
    // The operator pod owns a Deployment for it.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), NS);
    eventually(
        "the operator's Deployment for the AgentTask",
        Duration::from_secs(60),
        || {
            let (deps, name) = (deps.clone(), name.clone());
            async move {
                let list = deps.list(&ListParams::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|d| {
                        d.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|o| o.kind == "AgentTask" && o.name == name)
                    })
                    .then_some(())
            }
        },
    )
    .await;
    // The orchestrator says the task went to a cluster, not "no kubeconfig".
    let task: serde_json::Value = http
        .get(format!("http://{ip}:8080/tasks/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /tasks/{id}")
        .json()
        .await
        .expect("task JSON");
    assert!(
        !task.to_string().contains("no kubeconfig"),
        "the in-cluster org backend was not used: {task}"
    );
}
