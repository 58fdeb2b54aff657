//! SIMULATION (kwok): the pods are simulated, so this test starts the agent itself. The same path
//! with real pods, a real node and images built from this repository is
//! `kube_pod_e2e.rs`; this one stays because kwok needs no node lock and runs in seconds.
//!
//! End to end on Kubernetes, with the real binaries and the testbed's real control plane:
//! `guildnet-operator install` + `run`, `guildnet-orchestrator --backend kubernetes`; a scheduled
//! task becomes an AgentTask whose Deployment gets Available on a kwok node. kwok pods run no
//! process, so the test plays the kubelet: it starts the real `guildnet-agent` locally with the
//! environment the pod would get from the operator's Secret. The agent claims, runs, ships logs
//! and completes; the orchestrator records it and the AgentTask ends Succeeded.

use guildnet_core::client::OrchestratorClient;
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::agenttask_name;
use guildnet_kube::crd::{AgentTask, Phase};
use guildnet_testbed::eventually;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::{free_port, process, Proc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "kube-e2e-admin-token-0123456789";

#[tokio::test]
async fn scheduled_task_runs_through_agenttask_operator_and_agent_to_succeeded() {
    let cluster = KubeCluster::start_with_workloads()
        .await
        .expect("control plane + kwok");
    let admin = cluster.client().await.expect("admin client");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("kube")).expect("mkdir");
    std::fs::copy(cluster.kubeconfig_path(), state.join("kube/acme.config")).expect("kubeconfig");
    let kc = cluster.kubeconfig_path().as_os_str();
    let operator_bin = Path::new(env!("CARGO_BIN_EXE_guildnet-operator"));

    let out = process::run(
        operator_bin,
        [OsStr::new("install"), OsStr::new("--kubeconfig"), kc],
        &[],
    )
    .await
    .expect("guildnet-operator install");
    assert!(out.contains("installed"), "{out}");

    let orch_port = free_port().expect("port");
    let orch_url = format!("http://127.0.0.1:{orch_port}");
    let metrics_port = free_port().expect("port");
    let _operator = Proc::spawn(
        "guildnet-operator",
        operator_bin,
        [
            "run".to_owned(),
            "--kubeconfig".to_owned(),
            cluster.kubeconfig_path().display().to_string(),
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
            "--public-orchestrator-url".to_owned(),
            orch_url.clone(),
        ],
        &[],
        &dir.path().join("operator.log"),
    )
    .expect("start operator");
    let _orchestrator = Proc::spawn(
        "guildnet-orchestrator",
        Path::new(env!("CARGO_BIN_EXE_guildnet-orchestrator")),
        [
            "--listen",
            &format!("127.0.0.1:{orch_port}"),
            "--org",
            "acme",
            "--backend",
            "kubernetes",
            "--agent-image",
            "example.invalid/guildnet-agent:test",
        ],
        &[
            ("GUILDNET_STATE_DIR", state.as_os_str()),
            ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
        ],
        &dir.path().join("orchestrator.log"),
    )
    .expect("start orchestrator");

    let client = OrchestratorClient::new(&orch_url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator ready", Duration::from_secs(30), || async {
        client.health().await.ok()
    })
    .await;
    let acme = OrgName::new("acme").expect("org");
    let task = client
        .schedule(&acme, "echo hello from the cluster; echo done", None)
        .await
        .expect("schedule");
    let name = agenttask_name(&task.id);
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), "mvp-agents");
    eventually("AgentTask Running", Duration::from_secs(60), || async {
        let at = tasks.get_opt(&name).await.ok()??;
        (at.status?.phase == Phase::Running).then_some(())
    })
    .await;
    let at = tasks.get(&name).await.expect("AgentTask");
    assert_eq!(at.spec.image, "example.invalid/guildnet-agent:test");

    // The operator's metrics count the reconciles.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics.contains("guildnet_operator_reconciles_total"),
        "{metrics}"
    );

    // Play the kubelet: the pod's environment is the operator's Secret.
    let env_secret = Api::<Secret>::namespaced(admin.clone(), "mvp-agents")
        .get(&format!("{name}-env"))
        .await
        .expect("env secret");
    let data = env_secret.data.expect("data");
    let mut env: Vec<(String, String)> = data
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).expect("utf8")))
        .collect();
    assert!(env
        .iter()
        .any(|(k, v)| k == "ORCHESTRATOR_URL" && *v == orch_url));
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    env.push(("GUILDNET_RUNNER".into(), "sh -s".into()));
    env.push(("GUILDNET_WORKSPACE".into(), workspace.display().to_string()));
    let env_os: Vec<(&str, &OsStr)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), OsStr::new(v)))
        .collect();
    let _agent = Proc::spawn(
        "guildnet-agent",
        Path::new(env!("CARGO_BIN_EXE_guildnet-agent")),
        std::iter::empty::<&str>(),
        &env_os,
        &dir.path().join("agent.log"),
    )
    .expect("start agent");

    let done = eventually("task Succeeded", Duration::from_secs(60), || async {
        let t = client.task(&task.id).await.ok()?;
        matches!(t.status, TaskStatus::Succeeded | TaskStatus::Failed).then_some(t)
    })
    .await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    let logs = client.logs(&task.id, 0).await.expect("logs");
    let text: Vec<&str> = logs.iter().map(|l| l.line.as_str()).collect();
    assert!(text.contains(&"hello from the cluster"), "{text:?}");
    eventually("AgentTask Succeeded", Duration::from_secs(20), || async {
        let at = tasks.get_opt(&name).await.ok()??;
        (at.status?.phase == Phase::Succeeded).then_some(())
    })
    .await;
}
