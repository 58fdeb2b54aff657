//! Warm pools against a real kube-apiserver with kwok as the node (a *simulation* of pods: kwok
//! marks them Running, nothing runs in them). The operator runs under its own ServiceAccount's
//! token (its Role must allow pools and pods), the orchestrator in-process over the Kubernetes
//! backend, serving its HTTP API on loopback. The test plays the warm agent of a kwok pod: it
//! waits with the pool token read from the pool's Secret, under that pod's name.
//!
//! Shown: `PUT /orgs/acme/pool` -> AgentPool + token Secret -> 3 warm pods; a task handed to a
//! waiting agent -> AgentTask with `spec.poolPod` -> the operator adopts that pod (taken, owned
//! by the AgentTask) and the pool creates a replacement; the task's end removes the pod; a warm
//! pod that dies is replaced; a task with no agent waiting starts cold (a Deployment) and its log
//! says so; idle scale to zero; deleting the org removes the pool. On real pods: `bin/tests/kube_pool_e2e.rs`.

use guildnet_core::client::{OrchestratorClient, PoolClient};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::{
    ClaimRequest, CompleteRequest, PoolSpec, PoolWaitRequest, RegisterRequest,
};
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::state_dir::StatePaths;
use guildnet_core::store::{Durability, SqliteStore};
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::{agenttask_name, KubeBackend, KubeBackendConfig};
use guildnet_kube::crd::{AgentTask, Phase};
use guildnet_kube::install::{install, InstallOptions, OPERATOR_NAME};
use guildnet_kube::operator::{self, Operator, OperatorConfig};
use guildnet_kube::pool::{AgentPool, POOL_LABEL, POOL_STATE_LABEL, POOL_TOKEN_KEY};
use guildnet_testbed::eventually;
use guildnet_testbed::kube::{client_from_kubeconfig, KubeCluster};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "mvp-agents";
const ADMIN: &str = "admin-token-pool-kube";

async fn operator_sa_client(cluster: &KubeCluster, admin: &kube::Client) -> kube::Client {
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .expect("token request");
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .create_token_request(OPERATOR_NAME, &PostParams::default(), &tr)
        .await
        .expect("token")
        .status
        .and_then(|s| s.token)
        .expect("token");
    client_from_kubeconfig(&cluster.kubeconfig_for_token("operator", &token))
        .await
        .expect("operator client")
}

async fn pool_pods(pods: &Api<Pod>, state: &str) -> Vec<Pod> {
    pods.list(
        &ListParams::default().labels(&format!("{POOL_LABEL}=acme,{POOL_STATE_LABEL}={state}")),
    )
    .await
    .expect("pods")
    .items
    .into_iter()
    .filter(|p| p.metadata.deletion_timestamp.is_none())
    .collect()
}

#[tokio::test]
async fn pools_on_kwok_hand_over_adopt_refill_scale_to_zero_and_go_with_the_org() {
    let cluster = KubeCluster::start_with_workloads()
        .await
        .expect("control plane + kwok");
    let admin = cluster.client().await.expect("admin client");
    install(&admin, &InstallOptions::default())
        .await
        .expect("install");
    let mut cfg = OperatorConfig::new(NS);
    cfg.public_orchestrator_url = Some("http://orchestrator.test:8080".into());
    cfg.error_backoff = Duration::from_millis(200);
    let ctx = Arc::new(Operator::new(
        operator_sa_client(&cluster, &admin).await,
        cfg,
    ));
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let op = tokio::spawn(operator::run(ctx, async move {
        let _ = rx.wait_for(|v| *v).await;
    }));

    let dir = tempfile::tempdir().expect("tempdir");
    let state = StatePaths::new(dir.path());
    std::fs::create_dir_all(dir.path().join("kube")).expect("mkdir");
    let acme = OrgName::new("acme").expect("org");
    std::fs::copy(cluster.kubeconfig_path(), state.kubeconfig(&acme)).expect("kubeconfig");
    let mut bcfg = KubeBackendConfig::new(state.clone());
    bcfg.image = "registry.test/guildnet-agent:1".into();
    let backend = Arc::new(KubeBackend::new(bcfg));
    let store = SqliteStore::open(dir.path().join("o.db"), Durability::Full).expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let mut ocfg = OrchestratorConfig::new(Token::new(ADMIN), url.clone());
    ocfg.agents.default_runner = Some("sh -s".into());
    let o = Orchestrator::new(Arc::new(store), backend, ocfg);
    o.create_org(acme.clone()).await.expect("org");
    tokio::spawn(guildnet_core::orchestrator::serve(
        listener,
        o,
        std::future::pending(),
    ));
    let c = OrchestratorClient::new(&url, Token::new(ADMIN)).expect("client");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    let pools: Api<AgentPool> = Api::namespaced(admin.clone(), NS);

    // The pool: AgentPool + token Secret, then 3 warm pods (Running on kwok).
    let spec = PoolSpec {
        size: 3,
        image: None,
        runner: None,
        idle_seconds: None,
    };
    c.set_pool(&acme, &spec).await.expect("set pool");
    let pool = pools.get("acme").await.expect("AgentPool");
    assert_eq!(pool.spec.image, "registry.test/guildnet-agent:1");
    let token_secret: Secret = Api::namespaced(admin.clone(), NS)
        .get(&pool.spec.token_secret)
        .await
        .expect("token Secret");
    let pool_token = String::from_utf8(token_secret.data.expect("data")[POOL_TOKEN_KEY].0.clone())
        .expect("utf8");
    assert!(pool_token.starts_with("gnp.acme."));
    assert!(!serde_json::to_string(&pool)
        .expect("json")
        .contains(&pool_token));
    eventually("3 warm pods running", Duration::from_secs(60), || async {
        let b = c.pool(&acme).await.ok()?.backend?;
        (b.warm == 3 && b.running == 3).then_some(())
    })
    .await;
    let warm = pool_pods(&pods, "warm").await;
    assert_eq!(warm.len(), 3);
    let pod_name = warm[0].name_any();
    // The pod's environment: the pool token from the Secret, no task credentials.
    let env = warm[0].spec.as_ref().expect("spec").containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(env
        .iter()
        .any(|e| e.name == "GUILDNET_POOL_TOKEN" && e.value.is_none()));
    assert!(!env
        .iter()
        .any(|e| e.name == "GUILDNET_AGENT_TOKEN" || e.name == "TASK_ID"));

    // A warm agent waits as that pod; a task is handed to it.
    let pool_client = PoolClient::new(&url, Token::new(pool_token.clone())).expect("pool client");
    let waiter = {
        let pc = pool_client.clone();
        let pod = pod_name.clone();
        tokio::spawn(async move {
            pc.wait(&PoolWaitRequest {
                pod,
                runner: None,
                wait_secs: Some(20),
            })
            .await
        })
    };
    eventually("agent waiting", Duration::from_secs(10), || async {
        (c.pool(&acme).await.ok()?.waiting == 1).then_some(())
    })
    .await;
    let warm_task = c
        .schedule(&acme, "echo warm", None)
        .await
        .expect("schedule");
    let h = waiter
        .await
        .expect("join")
        .expect("wait")
        .handoff
        .expect("a task was handed over");
    assert_eq!(h.task_id, warm_task.id);
    assert!(h
        .secret_env
        .iter()
        .any(|(k, _)| k == "CODE_SERVER_PASSWORD"));
    assert!(h
        .env
        .iter()
        .any(|(k, v)| k == "GUILDNET_RUNNER" && v == "sh -s"));
    let agent = pool_client.agent_client(Token::new(h.agent_token.clone()));
    agent
        .register(&RegisterRequest {
            agent: h.agent.clone(),
            version: None,
            editor_address: None,
        })
        .await
        .expect("register");
    let claim = agent
        .claim(&ClaimRequest {
            agent: h.agent.clone(),
            process: None,
        })
        .await
        .expect("claim");

    // The AgentTask names the pod; the operator adopts it and the pool replaces it.
    let name = agenttask_name(&warm_task.id);
    let at = eventually(
        "pooled AgentTask Running",
        Duration::from_secs(30),
        || async {
            let at = tasks.get_opt(&name).await.ok()??;
            (at.status.as_ref()?.phase == Phase::Running).then_some(at)
        },
    )
    .await;
    assert_eq!(at.spec.pool_pod.as_deref(), Some(pod_name.as_str()));
    let p = pods.get(&pod_name).await.expect("adopted pod");
    assert_eq!(
        p.labels().get(POOL_STATE_LABEL).map(String::as_str),
        Some("taken")
    );
    assert_eq!(p.owner_references()[0].kind, "AgentTask");
    assert!(
        Api::<Deployment>::namespaced(admin.clone(), NS)
            .get_opt(&name)
            .await
            .expect("get")
            .is_none(),
        "no Deployment for a pooled task"
    );
    eventually(
        "pool refilled to 3 warm",
        Duration::from_secs(30),
        || async {
            let w = pool_pods(&pods, "warm").await;
            (w.len() == 3 && w.iter().all(|p| p.name_any() != pod_name)).then_some(())
        },
    )
    .await;
    // The credentials Secret carries the password the agent was handed (the editor proxy logs
    // in with it).
    let creds: Secret = Api::namespaced(admin.clone(), NS)
        .get(&format!("{name}-credentials"))
        .await
        .expect("credentials");
    let pw = h
        .secret_env
        .iter()
        .find(|(k, _)| k == "CODE_SERVER_PASSWORD")
        .map(|(_, v)| v.clone())
        .expect("pw");
    assert_eq!(
        creds.data.expect("data")["code-server-password"].0,
        pw.as_bytes()
    );

    // The task ends: the adopted pod goes with its workload; the used agent may not wait again.
    agent
        .complete(&CompleteRequest {
            agent: h.agent.clone(),
            fencing: claim.fencing,
            status: TaskStatus::Succeeded,
            exit_code: Some(0),
            reason: None,
            artifacts: vec![],
            pr_url: None,
        })
        .await
        .expect("complete");
    eventually("adopted pod removed", Duration::from_secs(30), || async {
        pods.get_opt(&pod_name).await.ok()?.is_none().then_some(())
    })
    .await;
    let again = pool_client
        .wait(&PoolWaitRequest {
            pod: pod_name.clone(),
            runner: None,
            wait_secs: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("pool_agent_used"));

    // A warm pod that dies is replaced.
    let victim = pool_pods(&pods, "warm").await[0].name_any();
    pods.delete(&victim, &Default::default())
        .await
        .expect("delete a warm pod");
    eventually(
        "dead warm pod replaced",
        Duration::from_secs(30),
        || async {
            let w = pool_pods(&pods, "warm").await;
            (w.len() == 3 && w.iter().all(|p| p.name_any() != victim)).then_some(())
        },
    )
    .await;

    // No agent waits: the next task starts cold (a Deployment), and its log says so.
    let cold = c
        .schedule(&acme, "echo cold", None)
        .await
        .expect("schedule");
    let cold_name = agenttask_name(&cold.id);
    eventually("cold Deployment", Duration::from_secs(30), || async {
        Api::<Deployment>::namespaced(admin.clone(), NS)
            .get_opt(&cold_name)
            .await
            .ok()?
    })
    .await;
    let lines = c.logs(&cold.id, 0).await.expect("logs");
    assert!(
        lines.iter().any(|l| l.line.contains("[pool] cold start")),
        "{lines:?}"
    );
    c.cancel(&cold.id).await.expect("cancel");

    // Idle: scale to zero after 2 s without a task.
    let idle = PoolSpec {
        idle_seconds: Some(2),
        ..spec.clone()
    };
    c.set_pool(&acme, &idle).await.expect("set pool");
    eventually("scaled to zero", Duration::from_secs(30), || async {
        let b = c.pool(&acme).await.ok()?.backend?;
        (b.scaled_to_zero && b.desired == 0 && pool_pods(&pods, "warm").await.is_empty())
            .then_some(())
    })
    .await;

    // Deleting the org removes the pool and its token Secret.
    eventually("org deleted", Duration::from_secs(30), || async {
        c.delete_org(&acme).await.ok()
    })
    .await;
    assert!(pools.get_opt("acme").await.expect("get").is_none());
    assert!(Api::<Secret>::namespaced(admin.clone(), NS)
        .get_opt(&pool.spec.token_secret)
        .await
        .expect("get")
        .is_none());
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), op).await;
}
