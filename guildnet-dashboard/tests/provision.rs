//! The real provision flow end to end: the orchestrator's bootstrap API (with a bootstrap that
//! stands in for Talos and hands back the kubeconfig of a real kube-apiserver from the
//! testbed), relayed as dashboard flow events, then the operator installed into that apiserver
//! with the org's kubeconfig.

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
        |_| {},
    )
    .await;
    let me = Browserish::login(&env.dash_url).await;
    let (st, _) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 201);

    let mut rx = me
        .sse(
            me.req(Method::POST, "/api/orgs/acme/provision/stream")
                .json(&json!({"cpNodes": ["10.5.0.2"], "workerNodes": ["10.5.0.3"]})),
        )
        .await;
    let mut events: Vec<(String, Value)> = Vec::new();
    while let Some(m) = next_msg(&mut rx, 120).await {
        events.push((m.event.clone(), serde_json::from_str(&m.data).unwrap()));
    }
    let seq: Vec<String> = events
        .iter()
        .map(|(n, d)| format!("{n}:{}", d["step"].as_str().unwrap_or("")))
        .collect();
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done");
    assert_eq!(done["ok"], true, "{seq:?} {events:?}");
    for want in [
        "begin:",
        "step:bootstrap",
        "step:bootstrap/genconfig",
        "log:bootstrap/genconfig",
        "stepDone:bootstrap/genconfig",
        "stepDone:bootstrap",
        "stepDone:kubeconfig",
        "step:operator",
        "stepDone:operator",
    ] {
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
    let client = cluster.client().await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client, guildnet_kube::DEFAULT_NAMESPACE);
    let d = deploys
        .get(guildnet_kube::install::OPERATOR_NAME)
        .await
        .expect("operator deployment");
    assert_eq!(d.metadata.name.as_deref(), Some("guildnet-operator"));

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
