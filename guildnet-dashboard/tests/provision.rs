//! The real provision flow end to end: the orchestrator's bootstrap API relayed as dashboard
//! flow events, then the operator installed (CRDs, RBAC, Deployment, each its own step) with the
//! org's kubeconfig. The first test's bootstrap stands in for Talos and hands back the
//! kubeconfig of a real kube-apiserver from the testbed; the second runs the real talosctl
//! against the testbed's Talos emulator, whose bootstrap starts a real control plane.

mod support;

use async_trait::async_trait;
use guildnet_core::launch::BootstrapOverride;
use guildnet_core::names::OrgName;
use guildnet_core::seams::{
    BootstrapError, BootstrapOutcome, BootstrapProgress, BootstrapRequest, ClusterBootstrap,
};
use guildnet_core::state_dir::{write_private_file, StatePaths};
use guildnet_testbed::kube::KubeCluster;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use reqwest::Method;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use support::*;

/// Writes the testbed apiserver's kubeconfig where a Talos bootstrap would write the org's.
struct TestbedBootstrap {
    paths: StatePaths,
    kubeconfig: String,
}

#[async_trait]
impl ClusterBootstrap for TestbedBootstrap {
    async fn bootstrap(
        &self,
        req: BootstrapRequest,
        progress: tokio::sync::mpsc::UnboundedSender<BootstrapProgress>,
    ) -> Result<BootstrapOutcome, BootstrapError> {
        let p = |step: &str, phase: &str, message: &str| BootstrapProgress {
            step: step.into(),
            phase: phase.into(),
            message: message.into(),
        };
        let _ = progress.send(p("genconfig", "start", "generating machine configs"));
        let _ = progress.send(p("genconfig", "output", "generated controlplane.yaml"));
        let _ = progress.send(p("genconfig", "done", "ok"));
        let _ = progress.send(p("kubeconfig", "start", "fetching the kubeconfig"));
        let kc = self.paths.kubeconfig(&req.org);
        let tc = self.paths.talosconfig(&req.org);
        write_private_file(&kc, self.kubeconfig.as_bytes()).map_err(|e| BootstrapError::Step {
            org: req.org.clone(),
            step: "kubeconfig".into(),
            reason: e.to_string(),
        })?;
        let talos = format!(
            "context: {o}\ncontexts:\n  {o}:\n    endpoints: [{e}]\n",
            o = req.org,
            e = req.control_plane[0]
        );
        write_private_file(&tc, talos.as_bytes()).map_err(|e| BootstrapError::Step {
            org: req.org.clone(),
            step: "talosconfig".into(),
            reason: e.to_string(),
        })?;
        let _ = progress.send(p("kubeconfig", "done", "written"));
        Ok(BootstrapOutcome {
            kubeconfig: kc,
            talosconfig: tc,
        })
    }

    fn validate(&self, _: &BootstrapRequest) -> Result<(), BootstrapError> {
        Ok(())
    }

    async fn generate_kubeconfig(&self, org: &OrgName, _: &str) -> Result<PathBuf, BootstrapError> {
        Ok(self.paths.kubeconfig(org))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_relays_the_bootstrap_then_installs_the_operator() {
    let cluster = KubeCluster::start().await.expect("kube-apiserver");
    let kubeconfig = std::fs::read_to_string(cluster.kubeconfig_path()).unwrap();
    let env = start_with(
        |o| {
            let paths = StatePaths::new(o.state_dir.clone().unwrap());
            o.bootstrap = Some(BootstrapOverride(Arc::new(TestbedBootstrap {
                paths,
                kubeconfig,
            })));
        },
        |d| d.operator_install.image = OPERATOR_IMAGE.into(),
    )
    .await;
    let me = Browserish::login(&env.dash_url).await;
    let (st, _) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 201);

    let seq = provision(&me, &["10.5.0.2"], &["10.5.0.3"]).await;
    for want in [
        "begin:",
        "step:bootstrap",
        "step:bootstrap/genconfig",
        "log:bootstrap/genconfig",
        "stepDone:bootstrap/genconfig",
        "stepDone:bootstrap",
        "stepDone:kubeconfig",
    ]
    .into_iter()
    .chain(OPERATOR_STEPS)
    {
        assert!(seq.iter().any(|s| s == want), "missing {want} in {seq:?}");
    }
    // The configs the orchestrator wrote were copied into the dashboard's state (0600).
    let kc = env.dash_state.join("kube/acme.config");
    assert_eq!(
        std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, org) = me.json(Method::GET, "/api/orgs/acme", None).await;
    assert_eq!(org["kubeconfig"]["valid"], true, "{org}");
    assert_eq!(org["talosconfig"]["valid"], true, "{org}");
    // The operator is installed in the apiserver.
    assert_operator_installed(cluster.client().await.unwrap()).await;

    // A second bootstrap request while none runs works again; bad input is 422 before streaming.
    let (st, v) = me
        .json(
            Method::POST,
            "/api/orgs/acme/provision/stream",
            Some(json!({"cpNodes": ["10.5.0.2", "10.5.0.2"]})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
}

/// The operator image the tests install (no pod runs it: the API server has no node).
const OPERATOR_IMAGE: &str = "registry.test/guildnet-operator:provision";

/// The operator install's steps on the provision stream, each started then done, in order.
const OPERATOR_STEPS: [&str; 8] = [
    "step:operator",
    "step:operator/crd",
    "stepDone:operator/crd",
    "step:operator/rbac",
    "stepDone:operator/rbac",
    "step:operator/deployment",
    "stepDone:operator/deployment",
    "stepDone:operator",
];

/// Runs "provision a Talos cluster" for acme through the dashboard's stream and returns the
/// events as `event:step`, after checking that it ended with `done` and ok, and that the
/// operator steps came in order.
async fn provision(me: &Browserish, cp: &[&str], workers: &[&str]) -> Vec<String> {
    let mut rx = me
        .sse(
            me.req(Method::POST, "/api/orgs/acme/provision/stream")
                .json(&json!({"cpNodes": cp, "workerNodes": workers})),
        )
        .await;
    let mut events: Vec<(String, Value)> = Vec::new();
    while let Some(m) = next_msg(&mut rx, 300).await {
        events.push((m.event.clone(), serde_json::from_str(&m.data).unwrap()));
    }
    let seq: Vec<String> = events
        .iter()
        .map(|(n, d)| format!("{n}:{}", d["step"].as_str().unwrap_or("")))
        .collect();
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["ok"], true, "{seq:?} {events:?}");
    let operator: Vec<&str> = seq
        .iter()
        .map(String::as_str)
        .filter(|s| s.contains(":operator"))
        .collect();
    assert_eq!(operator, OPERATOR_STEPS, "{seq:?}");
    // Each install step names what it applied.
    let deployment = events
        .iter()
        .find(|(n, d)| n == "stepDone" && d["step"] == "operator/deployment")
        .expect("deployment done");
    assert_eq!(
        deployment.1["message"], "Deployment/guildnet-operator",
        "{deployment:?}"
    );
    seq
}

/// The CRDs, the operator's RBAC and its Deployment (with the configured image) are in the
/// cluster `client` talks to.
async fn assert_operator_installed(client: kube::Client) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let ns = guildnet_kube::DEFAULT_NAMESPACE;
    let name = guildnet_kube::install::OPERATOR_NAME;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ["agenttasks.guildnet.io", "agentpools.guildnet.io"] {
        crds.get(crd)
            .await
            .unwrap_or_else(|e| panic!("CRD {crd}: {e}"));
    }
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("operator service account");
    let role = Api::<Role>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("operator role");
    assert!(!role.rules.unwrap_or_default().is_empty());
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("operator role binding");
    let d = Api::<Deployment>::namespaced(client, ns)
        .get(name)
        .await
        .expect("operator deployment");
    let spec = d.spec.and_then(|s| s.template.spec).expect("pod spec");
    assert_eq!(spec.service_account_name.as_deref(), Some(name));
    assert_eq!(spec.containers[0].image.as_deref(), Some(OPERATOR_IMAGE));
}

/// The whole "provision a Talos cluster" path with no stand-in for Talos: the real talosctl
/// (the orchestrator's bootstrap) against the testbed's Talos emulator, whose bootstrap starts a
/// real control plane; the dashboard then installs the operator into that cluster with the
/// kubeconfig `talosctl kubeconfig` returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_with_the_real_talosctl_installs_the_operator_in_the_new_cluster() {
    use guildnet_testbed::talos_emulator::TalosEmulator;
    let talosctl = guildnet_testbed::bin("talosctl").expect("testbed talosctl");
    let emu = TalosEmulator::start(2)
        .await
        .expect("talos emulator (scripts/testbed/install.sh talos-emulator)");
    let (cp, worker) = (emu.nodes()[0].clone(), emu.nodes()[1].clone());
    let env = start_with(
        |o| {
            let mut talos =
                guildnet_talos::TalosOptions::new(StatePaths::new(o.state_dir.clone().unwrap()));
            talos.talosctl = talosctl;
            o.bootstrap = Some(BootstrapOverride(Arc::new(
                guildnet_talos::TalosctlBootstrap::new(talos),
            )));
        },
        |d| d.operator_install.image = OPERATOR_IMAGE.into(),
    )
    .await;
    let me = Browserish::login(&env.dash_url).await;
    let (st, _) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 201);
    let t = std::time::Instant::now();
    let seq = provision(&me, &[&cp], &[&worker]).await;
    println!(
        "PROVISION talos_emulator_bootstrap_and_operator_install_s {:.1}",
        t.elapsed().as_secs_f64()
    );
    for want in [
        format!("stepDone:bootstrap/apply-config {cp}"),
        format!("stepDone:bootstrap/apply-config {worker}"),
        "stepDone:bootstrap/bootstrap".to_owned(),
        "stepDone:bootstrap/health".to_owned(),
        "stepDone:bootstrap/kubeconfig".to_owned(),
        "stepDone:kubeconfig".to_owned(),
    ] {
        assert!(
            seq.contains(&want),
            "missing {want} in {seq:?}\n{}",
            emu.diagnostics().await
        );
    }
    // The org's kubeconfig (from `talosctl kubeconfig`) reaches the control plane the emulated
    // bootstrap started, where the operator is now installed.
    let kc = std::fs::read_to_string(env.dash_state.join("kube/acme.config")).unwrap();
    let client = guildnet_testbed::kube::client_from_kubeconfig(&kc)
        .await
        .expect("org kubeconfig");
    assert_operator_installed(client).await;
}
