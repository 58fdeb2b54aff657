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
//! Stand-in: the testbed has no storage provisioner, so the test creates two hostPath
//! PersistentVolumes for the chart's claims to bind to (what a cluster's provisioner does).
//!
//! One real node runs at a time on a machine: the test waits for the machine-wide node lock.

use guildnet_testbed::eventually;
use guildnet_testbed::images::build_and_push;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::registry::Registry;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

    schedule_into_the_same_cluster(&client, &pods).await;
}

/// The orchestrator pod's API (at its pod IP: the host is the node) schedules a task for org
/// `acme`, which has no kubeconfig: the AgentTask lands in the chart's namespace through the
/// in-cluster ServiceAccount, and the operator pod reconciles it into a Deployment.
async fn schedule_into_the_same_cluster(client: &kube::Client, pods: &Api<Pod>) {
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
    let ip = listed
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("the orchestrator pod's IP");
    let http = reqwest::Client::new();
    let res = http
        .post(format!("http://{ip}:8080/schedule"))
        .bearer_auth(&token)
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
        .bearer_auth(&token)
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
