//! "Provision a Talos cluster" from the dashboard, with the operator running for real (issue 22,
//! steps 2 and 3): the real dashboard and orchestrator binaries, the real talosctl against the
//! testbed's Talos emulator, whose bootstrap starts the testbed's control plane with a real node
//! (kubelet + containerd on this machine). The dashboard installs the operator image that
//! `scripts/images/build.sh` built from this build's binary and pushed to the testbed's registry;
//! its Deployment becomes available on the real node (its pod pulls the image, reaches the API
//! server through the `kubernetes` Service and passes its readiness probe).
//!
//! The emulated Talos nodes are registered as Node objects with a NoSchedule taint (no kubelet
//! backs them), so the operator's pod lands on the real node.
//!
//! One real node runs at a time on a machine: the test waits for the machine-wide node lock.

mod common;

use common::*;
use guildnet_testbed::images::build_and_push;
use guildnet_testbed::registry::Registry;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD: &str = "provision-node-dashboard-password";

/// The `event:` names of a finished SSE body, with their `step` (`stepDone:operator/crd`).
fn events(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut event = String::new();
    for line in body.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            let v: serde_json::Value = serde_json::from_str(d.trim()).unwrap_or_default();
            out.push(format!("{event}:{}", v["step"].as_str().unwrap_or("")));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_provisions_a_talos_cluster_whose_operator_runs_on_a_real_node() {
    let registry = Registry::start().await.expect("registry");
    let tag = format!("prov-{}", std::process::id());
    let built = build_and_push(
        &[(
            "operator",
            Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
        )],
        &registry,
        &tag,
    )
    .await
    .expect("scripts/images/build.sh");
    let operator_image = built.get("operator").expect("operator").reference.clone();
    // Only named on the operator's command line here: no agent pod runs.
    let sidecar_image = format!("{}/testbed/tailscale:{tag}", registry.host());
    let emu = node::talos_emulator_on_real_node(2, registry.host()).await;
    let (cp, worker) = (emu.nodes()[0].clone(), emu.nodes()[1].clone());

    let dir = tempfile::tempdir().expect("tempdir");
    let talosctl = guildnet_testbed::bin("talosctl").expect("testbed talosctl");
    let orch = Orchestrator::start_with(
        &dir.path().join("orch"),
        free_port(),
        &["--talosctl", talosctl.to_str().expect("utf-8 path")],
        &[],
    );
    orch.wait_ready().await;
    let dash = dashboard::Dashboard::start(
        &dir.path().join("dash"),
        &orch.url(),
        TOKEN,
        PASSWORD,
        &[
            "--operator-image",
            &operator_image,
            "--operator-mesh-sidecar-image",
            &sidecar_image,
            "--operator-mesh-plain-http-derp",
        ],
        &[],
    );
    let dash_url = dash.url.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    let session = dash.login(PASSWORD).await;
    let r = http
        .post(format!("{dash_url}/api/orgs"))
        .header("cookie", &session)
        .header("origin", &dash_url)
        .json(&json!({"name": "globex"}))
        .send()
        .await
        .expect("create org");
    assert_eq!(r.status(), 201);

    // Provision: the real talosctl bootstraps the emulated nodes, then the operator install.
    let t = Instant::now();
    let body = http
        .post(format!("{dash_url}/api/orgs/globex/provision/stream"))
        .header("cookie", &session)
        .header("origin", &dash_url)
        .json(&json!({"cpNodes": [cp], "workerNodes": [worker]}))
        .send()
        .await
        .expect("provision")
        .text()
        .await
        .expect("provision stream");
    let provisioned = t.elapsed();
    let seq = events(&body);
    assert_eq!(
        seq.last().map(String::as_str),
        Some("done:"),
        "{body}\n{}",
        emu.diagnostics().await
    );
    assert!(body.contains("\"ok\":true"), "{body}");
    for want in [
        "stepDone:bootstrap/bootstrap",
        "stepDone:bootstrap/kubeconfig",
        "stepDone:kubeconfig",
        "stepDone:operator/crd",
        "stepDone:operator/rbac",
        "stepDone:operator/deployment",
        "stepDone:operator",
    ] {
        assert!(seq.iter().any(|s| s == want), "missing {want} in {seq:?}");
    }

    // The operator runs on the real node, from the image the dashboard was told to install.
    let kc =
        std::fs::read_to_string(dir.path().join("dash/kube/globex.config")).expect("kubeconfig");
    let client = guildnet_testbed::kube::client_from_kubeconfig(&kc)
        .await
        .expect("org kubeconfig");
    let ns = guildnet_kube::DEFAULT_NAMESPACE;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    let available = async {
        loop {
            let d = deploys
                .get(guildnet_kube::install::OPERATOR_NAME)
                .await
                .ok()?;
            if d.status.and_then(|s| s.available_replicas).unwrap_or(0) >= 1 {
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(240), available)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = pods.list(&ListParams::default()).await.expect("pods");
        let states: Vec<String> = list
            .items
            .iter()
            .map(guildnet_kube::backend::describe_pod)
            .collect();
        panic!("the operator Deployment never became available: {states:#?}");
    }
    let available_after = t.elapsed();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=guildnet-operator"))
        .await
        .expect("operator pods")
        .items
        .into_iter()
        .next()
        .expect("an operator pod");
    let spec = pod.spec.expect("pod spec");
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some(operator_image.as_str())
    );
    let args = spec.containers[0].args.clone().unwrap_or_default();
    let i = args
        .iter()
        .position(|a| a == "--mesh-sidecar-image")
        .unwrap_or_else(|| panic!("no --mesh-sidecar-image in {args:?}"));
    assert_eq!(args[i + 1], sidecar_image);
    assert!(
        args.iter().any(|a| a == "--mesh-plain-http-derp"),
        "{args:?}"
    );
    let node = spec.node_name.expect("scheduled");
    assert!(
        !node.starts_with("talos-"),
        "the operator landed on an emulated node: {node}"
    );
    println!(
        "PROVISION-NODE provision_stream_s {:.1} operator_available_after_s {:.1}",
        provisioned.as_secs_f64(),
        available_after.as_secs_f64()
    );
}
