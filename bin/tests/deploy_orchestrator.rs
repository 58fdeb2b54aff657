//! deploy/orchestrator/: the orchestrator as a Deployment of 2+ replicas on an external
//! PostgreSQL. Checked offline (what every replica needs: the same store URL and admin token
//! from one Secret, the Service's URL for agents, probes, a disruption budget), then applied
//! server-side to the testbed's real kube-apiserver (with the Secrets it refers to), which
//! validates every object against its schema; the Deployment read back keeps 2 replicas.

use guildnet_testbed::kube::KubeCluster;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};
use std::path::Path;

fn manifests() -> Vec<Value> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/orchestrator/orchestrator.yaml");
    let text = std::fs::read_to_string(&path).expect("read orchestrator.yaml");
    serde_saphyr::from_multiple::<Value>(&text).expect("orchestrator.yaml is YAML")
}

fn find<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in orchestrator.yaml"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("env {name} missing"))
}

#[test]
fn the_orchestrator_deployment_runs_several_replicas_on_one_postgres() {
    let objs = manifests();
    let dep = find(&objs, "Deployment");
    assert!(dep["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    // The store URL and the admin token: one Secret, the same on every replica, never inline.
    for (var, key) in [
        ("GUILDNET_STORE", "store-url"),
        ("ORCHESTRATOR_TOKEN", "admin-token"),
    ] {
        let e = env(c, var);
        assert!(e.get("value").is_none(), "{var} must not be inline");
        assert_eq!(
            e["valueFrom"]["secretKeyRef"]["name"],
            "guildnet-orchestrator"
        );
        assert_eq!(e["valueFrom"]["secretKeyRef"]["key"], key);
    }
    assert_eq!(env(c, "GUILDNET_BACKEND")["value"], "kubernetes");
    assert_eq!(env(c, "GUILDNET_LISTEN")["value"], "0.0.0.0:8080");
    let svc = find(&objs, "Service");
    let public = env(c, "PUBLIC_ORCHESTRATOR_URL")["value"].as_str().unwrap();
    assert_eq!(
        public,
        format!(
            "http://{}.{}.svc:{}",
            svc["metadata"]["name"].as_str().unwrap(),
            svc["metadata"]["namespace"].as_str().unwrap(),
            svc["spec"]["ports"][0]["port"]
        ),
        "agents reach every replica through the Service"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        find(&objs, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(svc["spec"]["selector"], *labels);
}

fn plural(kind: &str) -> &'static str {
    match kind {
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "Deployment" => "deployments",
        "Service" => "services",
        "Secret" => "secrets",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        other => panic!("this test does not know the kind {other}"),
    }
}

async fn apply(client: &kube::Client, obj: &Value) {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural(kind),
    );
    let name = obj["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    // Strict field validation: an unknown or misspelt field is an error, not dropped.
    let pp = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::apply("guildnet-deploy-test").force()
    };
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_manifests_apply_to_a_real_api_server() {
    let cluster = KubeCluster::start()
        .await
        .expect("the testbed's kube-apiserver (scripts/testbed/install.sh etcd kube)");
    let client = cluster.client().await.expect("admin client");
    let objs = manifests();
    // The Namespace first, then the Secrets the kustomization's comment has users create.
    apply(&client, find(&objs, "Namespace")).await;
    for (name, data) in [
        (
            "guildnet-orchestrator",
            json!({"store-url": "postgres://guildnet:pw@db.internal:5432/guildnet?sslmode=require",
                   "admin-token": "0123456789abcdef0123456789abcdef"}),
        ),
        (
            "guildnet-org-kubeconfigs",
            json!({"acme.config": "apiVersion: v1\nkind: Config\n"}),
        ),
    ] {
        apply(
            &client,
            &json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "namespace": "guildnet"}, "stringData": data}),
        )
        .await;
    }
    for o in objs.iter().filter(|o| o["kind"] != "Namespace") {
        apply(&client, o).await;
    }
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "guildnet");
    let d = deps.get("guildnet-orchestrator").await.expect("deployment");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(2));
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client, "guildnet");
    let s = svcs.get("guildnet-orchestrator").await.expect("service");
    assert_eq!(s.spec.and_then(|s| s.ports).map(|p| p[0].port), Some(8080));
}
