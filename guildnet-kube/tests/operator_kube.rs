//! The operator, installer and Kubernetes backend against a real kube-apiserver (testbed), with
//! the operator running under its own ServiceAccount's token to prove its Role is enough.

use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::{
    ClaimRequest, CompleteRequest, EditorRequest, RegisterRequest, ScheduleRequest,
};
use guildnet_core::orchestrator::{
    EditorProxy, EditorProxyConfig, Orchestrator, OrchestratorConfig,
};
use guildnet_core::seams::{ClusterBackend, WorkloadState};
use guildnet_core::state_dir::StatePaths;
use guildnet_core::store::{Durability, SqliteStore};
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::{agenttask_name, KubeBackend, KubeBackendConfig};
use guildnet_kube::crd::{AgentTask, Phase};
use guildnet_kube::install::{install, InstallOptions, OPERATOR_NAME};
use guildnet_kube::operator::{self, Operator, OperatorConfig};
use guildnet_testbed::eventually;
use guildnet_testbed::kube::{client_from_kubeconfig, KubeCluster, KubeOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "mvp-agents";
/// A model provider key the orchestrator hands agents as a secret setting.
const MODEL_KEY: &str = "sk-test-model-key-0123456789";

/// Answers every HTTP request with a fixed page.
async fn serve_fake_editor(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let body = "<html>fake code-server</html>";
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// A plain HTTP/1.1 GET over TCP (no proxy), read until the body is complete. (A Kubernetes
/// port-forward stream does not pass on the remote side's close, so EOF cannot end the read.)
async fn http_get(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: editor\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("</html>") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that authenticates as the operator's ServiceAccount (a real, API-server-signed token).
async fn operator_sa_client(cluster: &KubeCluster, admin: &kube::Client) -> kube::Client {
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .expect("token request");
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .create_token_request(OPERATOR_NAME, &PostParams::default(), &tr)
        .await
        .expect("token for the operator's service account")
        .status
        .and_then(|s| s.token)
        .expect("token");
    client_from_kubeconfig(&cluster.kubeconfig_for_token("operator", &token))
        .await
        .expect("operator client")
}

struct RunningOperator {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<operator::RunOutcome>,
    ctx: Arc<Operator>,
}

fn start_operator(client: kube::Client) -> RunningOperator {
    start_operator_with(client, |_| {})
}

fn start_operator_with(
    client: kube::Client,
    tweak: impl FnOnce(&mut OperatorConfig),
) -> RunningOperator {
    let mut cfg = OperatorConfig::new(NS);
    cfg.public_orchestrator_url = Some("http://orchestrator.test:8080".into());
    cfg.error_backoff = Duration::from_millis(200);
    tweak(&mut cfg);
    let ctx = Arc::new(Operator::new(client, cfg));
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(operator::run(ctx.clone(), async move {
        let _ = rx.wait_for(|v| *v).await;
    }));
    RunningOperator { stop, handle, ctx }
}

impl RunningOperator {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.handle).await;
    }
}

fn agent_task(name: &str, task_id: &str, env: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "guildnet.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "orgId": "acme",
            "taskId": task_id,
            "task": "fix the flaky test",
            "image": "example.invalid/agent:1",
            "agentName": format!("{task_id}-a1"),
            "env": env,
        },
    })
}

async fn apply_with_credentials(admin: &kube::Client, name: &str, task_id: &str) -> AgentTask {
    let pp = PatchParams::apply("test").force();
    let at = Api::<AgentTask>::namespaced(admin.clone(), NS)
        .patch(
            name,
            &pp,
            &Patch::Apply(agent_task(name, task_id, json!({"LEVEL": "3"}))),
        )
        .await
        .expect("apply AgentTask");
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{name}-credentials"), "namespace": NS},
        "stringData": {"agent-token": format!("gnt.{task_id}.0011"), "code-server-password": "pw"},
    });
    Api::<Secret>::namespaced(admin.clone(), NS)
        .patch(&format!("{name}-credentials"), &pp, &Patch::Apply(&secret))
        .await
        .expect("apply credentials");
    at
}

async fn status_of(api: &Api<AgentTask>, name: &str) -> Option<guildnet_kube::AgentTaskStatus> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|a| a.status)
}

#[tokio::test]
async fn operator_reconciles_idempotently_validates_and_cancels_under_its_own_role() {
    let cluster = KubeCluster::start().await.expect("kube-apiserver");
    let admin = cluster.client().await.expect("admin client");

    // Install twice: the second run changes nothing.
    let opts = InstallOptions::default();
    install(&admin, &opts).await.expect("install");
    let roles: Api<Role> = Api::namespaced(admin.clone(), NS);
    let deps: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let rv_role = roles
        .get(OPERATOR_NAME)
        .await
        .expect("role")
        .resource_version();
    let rv_dep = deps
        .get(OPERATOR_NAME)
        .await
        .expect("operator deployment")
        .resource_version();
    install(&admin, &opts).await.expect("second install");
    assert_eq!(
        roles
            .get(OPERATOR_NAME)
            .await
            .expect("role")
            .resource_version(),
        rv_role
    );
    assert_eq!(
        deps.get(OPERATOR_NAME)
            .await
            .expect("dep")
            .resource_version(),
        rv_dep
    );

    let op = start_operator(operator_sa_client(&cluster, &admin).await);
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);

    let at = apply_with_credentials(&admin, "atask-t1", "t1").await;
    let uid = at.uid().expect("uid");

    // Children appear, each with a controller owner reference to the AgentTask.
    let dep = eventually("deployment", Duration::from_secs(30), || async {
        deps.get_opt("atask-t1").await.ok().flatten()
    })
    .await;
    let env = eventually("env secret", Duration::from_secs(10), || async {
        secrets.get_opt("atask-t1-env").await.ok().flatten()
    })
    .await;
    let svc = eventually("service", Duration::from_secs(10), || async {
        services.get_opt("atask-t1").await.ok().flatten()
    })
    .await;
    for refs in [
        dep.owner_references(),
        env.owner_references(),
        svc.owner_references(),
    ] {
        assert_eq!(refs.len(), 1, "{refs:?}");
        assert_eq!(refs[0].uid, uid);
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(refs[0].kind, "AgentTask");
    }
    let data = env.data.clone().unwrap_or_default();
    let get = |k: &str| String::from_utf8(data.get(k).expect(k).0.clone()).expect("utf8");
    assert_eq!(get("GUILDNET_AGENT_TOKEN"), "gnt.t1.0011");
    assert_eq!(get("ORCHESTRATOR_URL"), "http://orchestrator.test:8080");
    assert_eq!(get("TASK_ID"), "t1");
    assert_eq!(get("ORG_NAME"), "acme");
    assert_eq!(get("CODE_SERVER_PASSWORD"), "pw");
    let spec = dep.spec.clone().expect("deployment spec");
    let pod = spec.template.spec.expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("example.invalid/agent:1"));
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    assert_eq!(
        c.security_context
            .as_ref()
            .and_then(|s| s.allow_privilege_escalation),
        Some(false)
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    assert!(c.env.iter().flatten().any(|e| e.name == "LEVEL"));
    assert_eq!(svc.spec.and_then(|s| s.ports).expect("ports")[0].port, 8443);

    // No controller-manager here: the Deployment never becomes available, so Pending.
    let st = eventually("pending status", Duration::from_secs(10), || async {
        status_of(&tasks, "atask-t1")
            .await
            .filter(|s| s.conditions.iter().any(|c| c.type_ == "Ready"))
    })
    .await;
    assert_eq!(st.phase, Phase::Pending);
    assert_eq!(st.workload_name.as_deref(), Some("atask-t1"));
    assert_eq!(st.agent_name.as_deref(), Some("t1-a1"));

    // A second reconcile changes nothing: same resourceVersions everywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (
        tasks.get("atask-t1").await.expect("at").resource_version(),
        deps.get("atask-t1").await.expect("dep").resource_version(),
        secrets
            .get("atask-t1-env")
            .await
            .expect("env")
            .resource_version(),
        services
            .get("atask-t1")
            .await
            .expect("svc")
            .resource_version(),
    );
    let reconciles = op.ctx.metrics.reconciles.get();
    tasks
        .patch(
            "atask-t1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .expect("poke");
    eventually("another reconcile", Duration::from_secs(10), || async {
        (op.ctx.metrics.reconciles.get() > reconciles).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (
        before.0.clone(),
        deps.get("atask-t1").await.expect("dep").resource_version(),
        secrets
            .get("atask-t1-env")
            .await
            .expect("env")
            .resource_version(),
        services
            .get("atask-t1")
            .await
            .expect("svc")
            .resource_version(),
    );
    assert_eq!(
        before.1, after.1,
        "deployment rewritten by a no-op reconcile"
    );
    assert_eq!(before.2, after.2, "secret rewritten by a no-op reconcile");
    assert_eq!(before.3, after.3, "service rewritten by a no-op reconcile");
    let st_after = status_of(&tasks, "atask-t1").await.expect("status");
    assert_eq!(st_after, st, "status rewritten by a no-op reconcile");
    assert_eq!(
        deps.list(&ListParams::default().labels("guildnet.io/agenttask=atask-t1"))
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    // A deleted child comes back (the watch on children triggers a reconcile).
    services
        .delete("atask-t1", &Default::default())
        .await
        .expect("delete service");
    eventually("service recreated", Duration::from_secs(15), || async {
        services.get_opt("atask-t1").await.ok().flatten()
    })
    .await;

    // An invalid AgentTask gets a condition that says why, and no workload.
    let pp = PatchParams::apply("test").force();
    tasks
        .patch(
            "atask-bad",
            &pp,
            &Patch::Apply(agent_task(
                "atask-bad",
                "bad",
                json!({"GUILDNET_AGENT_TOKEN": "x"}),
            )),
        )
        .await
        .expect("apply invalid AgentTask");
    let st = eventually("invalid condition", Duration::from_secs(10), || async {
        status_of(&tasks, "atask-bad")
            .await
            .filter(|s| s.conditions.iter().any(|c| c.type_ == "Valid"))
    })
    .await;
    let valid = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .expect("Valid");
    assert_eq!(valid.status, "False");
    assert!(
        valid.message.contains("spec.env.GUILDNET_AGENT_TOKEN"),
        "{valid:?}"
    );
    assert!(deps.get_opt("atask-bad").await.expect("get").is_none());

    // Cancel removes the workload and the credentials; TTL then deletes the AgentTask.
    tasks
        .patch(
            "atask-t1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true, "ttlSecondsAfterFinished": 1}})),
        )
        .await
        .expect("cancel");
    let st = eventually("cancelled", Duration::from_secs(30), || async {
        status_of(&tasks, "atask-t1")
            .await
            .filter(|s| s.phase == Phase::Cancelled)
    })
    .await;
    assert!(st.finished_at.is_some());
    assert!(deps.get_opt("atask-t1").await.expect("get").is_none());
    assert!(secrets
        .get_opt("atask-t1-env")
        .await
        .expect("get")
        .is_none());
    assert!(secrets
        .get_opt("atask-t1-credentials")
        .await
        .expect("get")
        .is_none());
    eventually("TTL deletion", Duration::from_secs(15), || async {
        tasks
            .get_opt("atask-t1")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn kubernetes_backend_runs_a_task_to_succeeded_on_kwok_and_ttl_removes_it() {
    // kwok pods run nothing: a real HTTP server on loopback plays the agent's editor on :8443.
    let editor = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let editor_addr = editor.local_addr().expect("addr");
    tokio::spawn(serve_fake_editor(editor));
    let cluster = KubeCluster::start_with(KubeOptions {
        workloads: true,
        pod_port_forwards: vec![(8443, editor_addr)],
    })
    .await
    .expect("control plane + kwok");
    let admin = cluster.client().await.expect("admin client");
    install(&admin, &InstallOptions::default())
        .await
        .expect("install");
    let op = start_operator_with(operator_sa_client(&cluster, &admin).await, |c| {
        c.image_pull_secrets = vec!["regcred".into()];
    });

    // The orchestrator, durable on SQLite, with the Kubernetes backend over a state dir whose
    // kube/acme.config is the test cluster's kubeconfig.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StatePaths::new(dir.path());
    std::fs::create_dir_all(dir.path().join("kube")).expect("mkdir");
    let acme = OrgName::new("acme").expect("org");
    std::fs::copy(cluster.kubeconfig_path(), state.kubeconfig(&acme)).expect("kubeconfig");
    let mut bcfg = KubeBackendConfig::new(state.clone());
    bcfg.ttl_seconds_after_finished = Some(2);
    let backend = Arc::new(KubeBackend::new(bcfg));
    assert!(backend
        .ping(&acme)
        .await
        .expect("ping")
        .starts_with("v1.36"));
    let store =
        SqliteStore::open(dir.path().join("orchestrator.db"), Durability::Full).expect("store");
    // Agent settings with a plain and a secret half, as the orchestrator's flags make them.
    let mut ocfg =
        OrchestratorConfig::new(Token::new("admin-token-for-test"), "http://orch.test:8080");
    ocfg.agents.default_runner = Some("my-ai-cli --task-file -".into());
    ocfg.agents.add_env("MODEL=big-model").expect("env");
    ocfg.agents
        .secret_env
        .push(("MODEL_API_KEY".into(), Token::new(MODEL_KEY)));
    let o = Orchestrator::new(Arc::new(store), backend.clone(), ocfg);
    o.create_org(acme.clone()).await.expect("org");
    let req: ScheduleRequest =
        serde_json::from_value(json!({"org": "acme", "task": "open a PR"})).expect("req");
    let task = o.schedule(req).await.expect("schedule");
    let name = agenttask_name(&task.id);
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);

    // dispatch -> AgentTask -> operator -> Deployment available on a kwok node -> Running.
    let st = eventually("Running", Duration::from_secs(60), || async {
        status_of(&tasks, &name)
            .await
            .filter(|s| s.phase == Phase::Running)
    })
    .await;
    assert!(st.started_at.is_some());
    let at = tasks.get(&name).await.expect("AgentTask");
    assert_eq!(at.spec.task, "open a PR");
    // The settings: the plain half in spec.env, the secret half only in Secrets; the pod pulls
    // with the operator's pull secret.
    assert_eq!(
        at.spec.env.get("GUILDNET_RUNNER").map(String::as_str),
        Some("my-ai-cli --task-file -")
    );
    assert_eq!(
        at.spec.env.get("MODEL").map(String::as_str),
        Some("big-model")
    );
    assert_eq!(
        at.spec.env.get("GUILDNET_SECRET_ENV").map(String::as_str),
        Some("MODEL_API_KEY")
    );
    assert!(!serde_json::to_string(&at)
        .expect("json")
        .contains(MODEL_KEY));
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let secret_value = |s: &Secret, k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let creds = secrets
        .get(&format!("{name}-credentials"))
        .await
        .expect("credentials");
    assert_eq!(
        secret_value(&creds, "env.MODEL_API_KEY").as_deref(),
        Some(MODEL_KEY)
    );
    let env_secret = secrets.get(&format!("{name}-env")).await.expect("env");
    assert_eq!(
        secret_value(&env_secret, "MODEL_API_KEY").as_deref(),
        Some(MODEL_KEY)
    );
    let dep = Api::<Deployment>::namespaced(admin.clone(), NS)
        .get(&name)
        .await
        .expect("Deployment");
    let pod_spec = dep.spec.expect("spec").template.spec.expect("pod spec");
    let pulls: Vec<String> = pod_spec
        .image_pull_secrets
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(pulls, ["regcred"]);
    assert!(
        pod_spec.containers[0]
            .env
            .iter()
            .flatten()
            .all(|e| e.value.as_deref() != Some(MODEL_KEY)),
        "the secret is not a plain env value"
    );
    let agent = guildnet_core::names::AgentName::new(&at.spec.agent_name).expect("agent name");
    assert_eq!(
        backend
            .status(&acme, &task.id, &agent)
            .await
            .expect("status"),
        WorkloadState::Running
    );

    // The agent's token as the pod would see it (from the operator's env Secret) is accepted
    // by the orchestrator: the credentials path works end to end.
    let env = Api::<Secret>::namespaced(admin.clone(), NS)
        .get(&format!("{name}-env"))
        .await
        .expect("env secret");
    let token = String::from_utf8(
        env.data
            .expect("data")
            .get("GUILDNET_AGENT_TOKEN")
            .expect("token")
            .0
            .clone(),
    )
    .expect("utf8");
    assert_eq!(
        o.authenticate_agent(&token).await.expect("token accepted"),
        task.id
    );
    // GET /tasks/{id} carries the backend's view: AgentTask phase, conditions and the pod.
    let detail = o.task_detail(&task.id).await.expect("task detail");
    let w = detail.workload.expect("workload info");
    assert_eq!(w.phase.as_deref(), Some("Running"));
    assert!(
        w.conditions.iter().any(|c| c.starts_with("Ready=True")),
        "{w:?}"
    );
    assert!(w.pods.iter().any(|p| p.contains("Running")), "{w:?}");

    // The editor: the orchestrator opens a port-forward (kube-rs, through the API server and
    // the kubelet) on 127.0.0.1, reuses it, and closes it.
    let reg: RegisterRequest = serde_json::from_value(json!({"agent": agent})).expect("register");
    o.register(&task.id, reg).await.expect("register");
    let req = || EditorRequest {
        name: agent.clone(),
        org: acme.clone(),
    };
    let editors = EditorProxy::new(o.clone(), EditorProxyConfig::default());
    let ep = editors.open(req()).await.expect("open editor");
    assert_eq!(ep.host, "127.0.0.1");
    let page = http_get(&format!("{}:{}", ep.host, ep.port)).await;
    assert!(page.contains("fake code-server"), "{page}");
    let again = editors.open(req()).await.expect("reopen");
    assert_eq!(again.port, ep.port, "a live forward is reused");
    let other_org = EditorRequest {
        name: agent.clone(),
        org: OrgName::new("other").expect("org"),
    };
    let err = editors.open(other_org).await.expect_err("wrong org");
    assert_eq!(err.status, axum::http::StatusCode::NOT_FOUND, "{err:?}");
    assert!(editors.close(req()).await.expect("close").closed);
    eventually("forward closed", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", ep.port))
            .await
            .is_err()
            .then_some(())
    })
    .await;

    let claim = o
        .claim(
            &task.id,
            ClaimRequest {
                agent: agent.clone(),
                process: None,
            },
        )
        .await
        .expect("claim");
    let done: CompleteRequest = serde_json::from_value(json!({
        "agent": agent,
        "fencing": claim.fencing,
        "status": "Succeeded",
        "exitCode": 0,
        "prUrl": "https://git.example/acme/repo/pull/7",
        "artifacts": [{"name": "report.md", "kind": "file", "uri": "artifacts/report.md"}],
    }))
    .expect("complete request");
    o.complete(&task.id, done).await.expect("complete");

    // Completion is recorded on the AgentTask; the operator removes the workload; TTL deletes it.
    let st = eventually("Succeeded", Duration::from_secs(15), || async {
        status_of(&tasks, &name)
            .await
            .filter(|s| s.phase == Phase::Succeeded)
    })
    .await;
    assert_eq!(
        st.pr_url.as_deref(),
        Some("https://git.example/acme/repo/pull/7")
    );
    assert_eq!(st.artifact_path.as_deref(), Some("artifacts/report.md"));
    let deps: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    eventually("workload removed", Duration::from_secs(15), || async {
        deps.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    eventually("TTL deletion", Duration::from_secs(20), || async {
        tasks.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        backend
            .status(&acme, &task.id, &agent)
            .await
            .expect("status"),
        WorkloadState::Absent
    );
    op.stop().await;
}

#[tokio::test]
async fn backend_without_kubeconfig_says_which_org_and_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = KubeBackend::new(KubeBackendConfig::new(StatePaths::new(dir.path())));
    let org = OrgName::new("nocluster").expect("org");
    std::env::remove_var("KUBECONFIG");
    let err = backend.ping(&org).await.expect_err("no kubeconfig");
    let msg = err.to_string();
    assert!(
        msg.contains("nocluster") && msg.contains("kube/nocluster.config"),
        "{msg}"
    );
}

#[tokio::test]
async fn operator_restarted_mid_way_converges_with_no_duplicates_or_orphans() {
    let cluster = KubeCluster::start().await.expect("kube-apiserver");
    let admin = cluster.client().await.expect("admin client");
    install(&admin, &InstallOptions::default())
        .await
        .expect("install");
    const N: usize = 40;
    for i in 0..N {
        apply_with_credentials(&admin, &format!("atask-r{i}"), &format!("r{i}")).await;
    }
    let deps: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let managed =
        ListParams::default().labels("app.kubernetes.io/managed-by=guildnet,guildnet.io/agenttask");

    // First operator: stop it as soon as it has made some, not all, of the workloads.
    let op = start_operator(operator_sa_client(&cluster, &admin).await);
    eventually("some progress", Duration::from_secs(30), || async {
        let n = deps.list(&managed).await.ok()?.items.len();
        (n >= 3).then_some(())
    })
    .await;
    op.stop().await;
    let partial = deps.list(&managed).await.expect("list").items.len();

    // Cancel one task while no operator runs.
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    tasks
        .patch(
            "atask-r0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .expect("cancel r0");

    // A new operator converges: one Deployment per live AgentTask, none for the cancelled one.
    let op = start_operator(operator_sa_client(&cluster, &admin).await);
    eventually("convergence", Duration::from_secs(60), || async {
        let names: Vec<String> = deps
            .list(&managed)
            .await
            .ok()?
            .items
            .into_iter()
            .map(|d| d.name_any())
            .collect();
        let want: Vec<String> = (1..N).map(|i| format!("atask-r{i}")).collect();
        let mut got = names.clone();
        got.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        (got == want_sorted).then_some(())
    })
    .await;
    let st = eventually("r0 cancelled", Duration::from_secs(10), || async {
        status_of(&tasks, "atask-r0")
            .await
            .filter(|s| s.phase == Phase::Cancelled)
    })
    .await;
    assert!(st.finished_at.is_some());
    // Every child points at its own AgentTask's uid; no secret or service without an owner.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let uids: std::collections::HashMap<String, String> = tasks
        .list(&ListParams::default())
        .await
        .expect("list tasks")
        .items
        .into_iter()
        .map(|t| (t.name_any(), t.uid().unwrap_or_default()))
        .collect();
    let env_secrets = secrets.list(&managed).await.expect("secrets").items;
    assert_eq!(env_secrets.len(), N - 1);
    assert_eq!(
        services.list(&managed).await.expect("services").items.len(),
        N - 1
    );
    for s in env_secrets {
        let owner = &s.owner_references()[0];
        assert_eq!(Some(&owner.uid), uids.get(&owner.name), "{}", s.name_any());
    }
    eprintln!("first operator made {partial} of {N} Deployments before it was stopped");
    op.stop().await;
}

#[tokio::test]
async fn describe_explains_why_a_pod_does_not_start() {
    let cluster = KubeCluster::start_with_workloads()
        .await
        .expect("control plane + kwok");
    let admin = cluster.client().await.expect("admin client");
    install(&admin, &InstallOptions::default())
        .await
        .expect("install");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StatePaths::new(dir.path());
    std::fs::create_dir_all(dir.path().join("kube")).expect("mkdir");
    let acme = OrgName::new("acme").expect("org");
    std::fs::copy(cluster.kubeconfig_path(), state.kubeconfig(&acme)).expect("kubeconfig");
    let backend = Arc::new(KubeBackend::new(KubeBackendConfig::new(state)));
    let store =
        SqliteStore::open(dir.path().join("orchestrator.db"), Durability::Full).expect("store");
    let o = Orchestrator::new(
        Arc::new(store),
        backend.clone(),
        OrchestratorConfig::new(Token::new("admin-token-for-test"), "http://orch.test:8080"),
    );
    o.create_org(acme.clone()).await.expect("org");
    let req: ScheduleRequest =
        serde_json::from_value(json!({"org": "acme", "task": "needs a big machine"})).expect("req");
    let task = o.schedule(req).await.expect("schedule").id;
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    let at = eventually("AgentTask", Duration::from_secs(20), || async {
        tasks.get_opt(&agenttask_name(&task)).await.ok().flatten()
    })
    .await;
    let agent = guildnet_core::names::AgentName::new(&at.spec.agent_name).expect("agent");
    // Ask for more CPU than any node has: the scheduler says why, and describe shows it.
    Api::<AgentTask>::namespaced(admin.clone(), NS)
        .patch(
            &agenttask_name(&task),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"cpu": "500"}}}})),
        )
        .await
        .expect("patch resources");
    // The operator starts after the spec asks for too much: the pod never schedules.
    let op = start_operator(operator_sa_client(&cluster, &admin).await);
    let info = eventually(
        "unschedulable explained",
        Duration::from_secs(60),
        || async {
            let info = backend
                .describe(&acme, &task, Some(agent.clone()))
                .await
                .ok()??;
            (info.pods.iter().any(|p| p.contains("Unschedulable"))
                && info.events.iter().any(|e| e.contains("FailedScheduling")))
            .then_some(info)
        },
    )
    .await;
    assert_eq!(info.phase.as_deref(), Some("Pending"));
    assert!(
        info.pods.iter().any(|p| p.contains("Insufficient cpu")),
        "{info:?}"
    );
    assert_eq!(
        backend.status(&acme, &task, &agent).await.expect("status"),
        WorkloadState::Pending
    );
    // The orchestrator copies these lines into the task's log while the task waits.
    let line = eventually("note in the task log", Duration::from_secs(30), || async {
        o.reap_once(chrono::Utc::now()).await.ok()?;
        let logs = o.store().task_logs(&task, 0, 100).await.ok()?;
        logs.into_iter()
            .find(|l| l.line.contains("Insufficient cpu"))
    })
    .await;
    assert_eq!(line.stream, guildnet_core::model::LogStream::System);
    assert!(line.line.starts_with("[kubernetes] "), "{}", line.line);
    // Each line once, however many probes run.
    tokio::time::sleep(Duration::from_secs(6)).await;
    o.reap_once(chrono::Utc::now()).await.expect("reap");
    let logs = o.store().task_logs(&task, 0, 100).await.expect("logs");
    let copies = logs.iter().filter(|l| l.line == line.line).count();
    assert_eq!(copies, 1, "{logs:?}");
    op.stop().await;
}

#[tokio::test]
async fn with_leader_election_one_replica_reconciles_and_another_takes_over() {
    let cluster = KubeCluster::start().await.expect("kube-apiserver");
    let admin = cluster.client().await.expect("admin client");
    install(&admin, &InstallOptions::default())
        .await
        .expect("install");
    let elect = |who: &str| {
        let mut l = guildnet_kube::leader::LeaseConfig::new(NS, who);
        l.lease_duration = Duration::from_secs(3);
        l.retry_every = Duration::from_millis(500);
        l
    };
    let a = start_operator_with(operator_sa_client(&cluster, &admin).await, |c| {
        c.leader_election = Some(elect("replica-a"))
    });
    // Let a take the lease first.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(admin.clone(), NS);
    eventually("a leads", Duration::from_secs(10), || async {
        let l = leases.get_opt("guildnet-operator").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = start_operator_with(operator_sa_client(&cluster, &admin).await, |c| {
        c.leader_election = Some(elect("replica-b"))
    });
    apply_with_credentials(&admin, "atask-l1", "l1").await;
    let deps: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    eventually("a reconciles", Duration::from_secs(20), || async {
        deps.get_opt("atask-l1").await.ok().flatten()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reconciles = |o: &RunningOperator| o.ctx.metrics.reconciles.get();
    assert!(reconciles(&a) > 0);
    assert_eq!(reconciles(&b), 0, "the follower must not reconcile");

    // The leader stops (and releases the lease): b takes over and reconciles new work.
    a.stop().await;
    apply_with_credentials(&admin, "atask-l2", "l2").await;
    eventually(
        "b reconciles after take-over",
        Duration::from_secs(30),
        || async { deps.get_opt("atask-l2").await.ok().flatten() },
    )
    .await;
    assert!(reconciles(&b) > 0);
    let l = leases.get("guildnet-operator").await.expect("lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-b")
    );
    b.stop().await;
}
