//! The whole Kubernetes path, for real: agents in real pods on a real node.
//!
//! The testbed's control plane (etcd, kube-apiserver, controller-manager, scheduler) with a real
//! node (containerd + kubelet on this machine) and a real OCI registry. The agent and operator
//! images are built by `scripts/images/build.sh` (mmdebstrap + umoci, no Docker) from this
//! build's binaries and pushed to the registry. `guildnet-operator install` runs the operator as
//! a pod from its image (it reaches the API server through the `kubernetes` Service). The
//! orchestrator runs on the host with `--backend kubernetes`, listening on the node's address,
//! which is its public URL for the agents. Every agent is the image's `guildnet-agent` in a pod,
//! started by the kubelet from the operator's Deployment.
//!
//! Stand-in: the runner is `sh -s` (the task text is a shell script), not an AI coding CLI. It
//! exists in the image and lets each task choose its output, duration and exit code.
//!
//! The first task has a repository on the testbed's Gitea (listening on the node's address, so
//! pods reach it): the agent in the pod clones it, the runner changes a file, the agent commits,
//! pushes and opens a pull request.
//!
//! One test: a node takes the machine-wide lock, and one cluster serves every scenario (real
//! pods, a pulled image, a repository and a pull request, the editor through a port-forward, a
//! secret that must stay secret, cancel, a pod deleted mid-task, an image that does not exist).
//! Figures are printed as `POD-E2E <what> <value>` lines.

mod common;

use common::node::{exec_stdout, pods_report, KeepOnPanic};

use guildnet_core::client::OrchestratorClient;
use guildnet_core::context::RepoSpec;
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::api::ScheduleRequest;
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::agenttask_name;
use guildnet_kube::crd::{AgentTask, Phase};
use guildnet_kube::TASK_LABEL;
use guildnet_testbed::forge::Gitea;
use guildnet_testbed::images::{build_and_push, BuiltImage};
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::registry::Registry;
use guildnet_testbed::{eventually, process, Proc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "kube-pod-e2e-admin-token-0123456789";
const NS: &str = "mvp-agents";

fn figure(what: &str, value: impl std::fmt::Display) {
    println!("POD-E2E {what} {value}");
}

fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("e2e-{}-{nanos}", std::process::id())
}

/// A secret value no log, spec or API answer may show.
fn secret_value() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("urandom");
    format!(
        "gn-secret-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

struct Orch {
    _proc: Proc,
    url: String,
    client: OrchestratorClient,
}

/// `guildnet-orchestrator --backend kubernetes` listening on `ip`, agents told to come back
/// there.
async fn start_orchestrator(
    dir: &Path,
    name: &str,
    cluster: &KubeCluster,
    ip: std::net::Ipv4Addr,
    agent_image: &str,
    extra: &[&str],
    env: &[(&str, &OsStr)],
) -> Orch {
    let state = dir.join(format!("{name}-state"));
    std::fs::create_dir_all(state.join("kube")).expect("mkdir");
    std::fs::copy(cluster.kubeconfig_path(), state.join("kube/acme.config")).expect("kubeconfig");
    let port = {
        let l = std::net::TcpListener::bind((ip, 0)).expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://{ip}:{port}");
    let mut args: Vec<String> = [
        "--listen",
        &format!("{ip}:{port}"),
        "--public-url",
        &url,
        "--org",
        "acme",
        "--backend",
        "kubernetes",
        "--agent-image",
        agent_image,
        // Stand-in runner: the task text is a shell script.
        "--runner",
        "sh -s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut envs: Vec<(&str, &OsStr)> = vec![
        ("GUILDNET_STATE_DIR", state.as_os_str()),
        ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
        ("RUST_LOG", OsStr::new("info")),
    ];
    envs.extend_from_slice(env);
    let proc = Proc::spawn(
        name,
        Path::new(env!("CARGO_BIN_EXE_guildnet-orchestrator")),
        args,
        &envs,
        &dir.join(format!("{name}.log")),
    )
    .expect("start orchestrator");
    let client = OrchestratorClient::new(&url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator ready", Duration::from_secs(30), || async {
        client.health().await.ok()
    })
    .await;
    Orch {
        _proc: proc,
        url,
        client,
    }
}

impl Orch {
    async fn schedule(&self, text: &str) -> Task {
        let acme = OrgName::new("acme").expect("org");
        self.client
            .schedule(&acme, text, None)
            .await
            .expect("schedule")
    }

    async fn wait(
        &self,
        id: &TaskId,
        what: &str,
        timeout: Duration,
        ok: fn(&Task) -> bool,
    ) -> Task {
        let start = Instant::now();
        loop {
            let t = self.client.task(id).await.expect("task");
            if ok(&t) {
                return t;
            }
            assert!(
                start.elapsed() < timeout,
                "task {id} not {what} after {timeout:?}: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn log_text(&self, id: &TaskId) -> Vec<String> {
        self.client
            .logs(id, 0)
            .await
            .expect("logs")
            .into_iter()
            .map(|l| l.line)
            .collect()
    }

    /// `GET <path>` as the admin, raw text.
    async fn get_raw(&self, path: &str) -> String {
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("body")
    }

    /// How many audit rows of `action` name the task.
    async fn audit_count(&self, id: &TaskId, action: &str) -> usize {
        let rows: serde_json::Value =
            serde_json::from_str(&self.get_raw("/audit?after=0&limit=10000").await)
                .expect("audit json");
        rows.as_array()
            .expect("audit rows")
            .iter()
            .filter(|r| r["action"] == action && r["subject"] == id.as_str())
            .count()
    }
}

/// `POST /agents/editor/open`, then the proxied editor page with the session cookie (following
/// code-server's redirect to `./?folder=...`); returns the page's HTML.
async fn open_workbench(orch_url: &str, agent: &str) -> Result<String, String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let resp = http
        .post(format!("{orch_url}/agents/editor/open"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": agent, "org": "acme"}))
        .send()
        .await
        .map_err(|e| format!("editor open: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("editor open: {}", resp.status()));
    }
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("session cookie")
        .to_owned();
    let session = cookie.split(';').next().expect("cookie pair").to_owned();
    let body: serde_json::Value = resp.json().await.expect("open body");
    let path = body["path"].as_str().expect("path").to_owned();
    let page = format!("{orch_url}{path}");
    let mut r = http
        .get(&page)
        .header("cookie", &session)
        .send()
        .await
        .map_err(|e| format!("editor page: {e}"))?;
    if r.status().is_redirection() {
        let loc = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        assert!(!loc.contains("login"), "sent to code-server's login: {loc}");
        let next = reqwest::Url::parse(&page)
            .expect("url")
            .join(&loc)
            .expect("join");
        r = http
            .get(next)
            .header("cookie", &session)
            .send()
            .await
            .map_err(|e| format!("workbench: {e}"))?;
    }
    if r.status() != 200 {
        return Err(format!("proxied editor page: {}", r.status()));
    }
    r.text().await.map_err(|e| format!("workbench body: {e}"))
}

fn claimed_after(t: &Task) -> Duration {
    t.started_at
        .map(|s| (s - t.created_at).to_std().unwrap_or_default())
        .expect("claimed")
}

async fn task_pods(pods: &Api<Pod>, id: &TaskId) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("{TASK_LABEL}={}", agenttask_name(id))))
        .await
        .expect("list pods")
        .items
}

#[tokio::test]
async fn agents_run_in_real_pods_from_images_built_without_docker() {
    let t_all = Instant::now();
    // Kept on failure (the orchestrators' logs are in it), removed at the end of a passing run.
    let dir = KeepOnPanic::new("gn-pod-e2e-");
    let registry = Registry::start().await.expect("registry");

    // Images: built from this build's binaries, pushed to the registry.
    let tag = unique_tag();
    let built = build_and_push(
        &[
            ("agent", Path::new(env!("CARGO_BIN_EXE_guildnet-agent"))),
            (
                "operator",
                Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
            ),
        ],
        &registry,
        &tag,
    )
    .await
    .expect("scripts/images/build.sh");
    figure(
        "images_build_and_push_s",
        format!("{:.1}", built.elapsed.as_secs_f64()),
    );
    for BuiltImage {
        kind,
        compressed_bytes,
        uncompressed_bytes,
        ..
    } in &built.images
    {
        figure(&format!("image_{kind}_compressed_bytes"), compressed_bytes);
        figure(
            &format!("image_{kind}_uncompressed_bytes"),
            uncompressed_bytes,
        );
    }
    let agent_image = built.get("agent").expect("agent").clone();
    let operator_image = built.get("operator").expect("operator").clone();
    assert_eq!(
        registry
            .manifest_digest("guildnet-agent", &tag)
            .await
            .expect("agent in the registry"),
        agent_image.digest
    );

    let t = Instant::now();
    let cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("control plane + real node");
    figure(
        "cluster_start_s",
        format!("{:.1}", t.elapsed().as_secs_f64()),
    );
    let node = cluster.node().expect("node");
    let ip = node.ip();
    let admin = cluster.client().await.expect("admin client");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);

    // A forge the pods can reach: Gitea on the node's address, a private repository.
    let gitea = Gitea::start_on(ip).await.expect("gitea");
    let repo = gitea.create_repo("app", true).await.expect("repo");
    let token_file = dir.path().join("forge.token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .expect("token file");
        std::io::Write::write_all(&mut f, gitea.token().as_bytes()).expect("write token");
    }

    // The orchestrator first: the operator is installed with its public URL.
    let secret = secret_value();
    let orch = start_orchestrator(
        dir.path(),
        "orchestrator",
        &cluster,
        ip,
        &agent_image.reference,
        &[
            "--agent-env",
            "GN_E2E_PLAIN=plain-value",
            "--agent-secret-env",
            "GN_E2E_SECRET",
            "--agent-start-deadline-secs",
            "90",
            "--forge-api",
            gitea.url(),
            "--forge-kind",
            "gitea",
            "--forge-token-file",
            token_file.to_str().expect("utf8 path"),
            "--git-author-name",
            "GuildNet Pod Agent",
            "--git-author-email",
            "pod-agent@guildnet.invalid",
        ],
        &[("GN_E2E_SECRET", OsStr::new(&secret))],
    )
    .await;

    // guildnet-operator install: the operator runs as a pod from its image.
    let t = Instant::now();
    let out = process::run(
        Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
        [
            OsStr::new("install"),
            OsStr::new("--kubeconfig"),
            cluster.kubeconfig_path().as_os_str(),
            OsStr::new("--image"),
            OsStr::new(&operator_image.reference),
            OsStr::new("--public-orchestrator-url"),
            OsStr::new(&orch.url),
        ],
        &[],
    )
    .await
    .expect("guildnet-operator install");
    assert!(out.contains("installed"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let start = Instant::now();
    loop {
        let d = deployments
            .get_opt("guildnet-operator")
            .await
            .ok()
            .flatten();
        if d.and_then(|d| d.status?.available_replicas)
            .is_some_and(|n| n >= 1)
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            panic!(
                "operator Deployment not available after 120 s\n{}",
                pods_report(&admin, NS).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    figure(
        "operator_pod_available_s",
        format!("{:.1}", t.elapsed().as_secs_f64()),
    );
    // The operator pod talks to the API server from inside the cluster: it holds its Lease.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NS);
    let holder = eventually("operator lease held", Duration::from_secs(60), || async {
        leases
            .get_opt("guildnet-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    assert!(
        holder.starts_with("guildnet-operator-"),
        "lease holder {holder}"
    );
    let op_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=guildnet-operator"))
        .await
        .expect("operator pods")
        .items
        .into_iter()
        .next()
        .expect("operator pod");
    let op_status = op_pod.status.clone().expect("status");
    assert!(
        op_status.container_statuses.expect("containers")[0]
            .image_id
            .ends_with(&operator_image.digest),
        "the operator pod runs the pushed image"
    );

    // 1. A task with a repository in a real pod (cold: the agent image is only in the
    //    registry): clone from Gitea, live log lines, the settings (plain and secret) in the
    //    runner's environment, the editor, commit, push and pull request, Succeeded, the
    //    AgentTask's status with the PR URL.
    let script = ": Add a line from a real pod\n\
                  echo stand-in runner: sh -s in the agent image\n\
                  echo first-line\n\
                  echo \"forge token visible: ${GUILDNET_FORGE_TOKEN:-no}\"\n\
                  echo 'written in a pod' >> README.md\n\
                  while [ ! -e /home/coder/gate ]; do sleep 0.2; done\n\
                  echo \"plain=$GN_E2E_PLAIN\"\n\
                  echo \"secret=$GN_E2E_SECRET\"\n\
                  echo \"secret-sha=$(printf %s \"$GN_E2E_SECRET\" | sha256sum | cut -c1-16)\"\n\
                  echo \"uid=$(id -u) home=$HOME pwd=$(pwd)\"\n\
                  echo 42 > result.txt && echo \"wrote result.txt\"\n\
                  echo last-line\n";
    let req = ScheduleRequest {
        repo: Some(RepoSpec::parse(&format!("{}@main", repo.clone_url))),
        ..ScheduleRequest::new(OrgName::new("acme").expect("org"), script)
    };
    let task = orch
        .client
        .schedule_request(&req)
        .await
        .expect("schedule with a repository");
    let name = agenttask_name(&task.id);
    let running = orch
        .wait(&task.id, "claimed", Duration::from_secs(180), |t| {
            t.status != TaskStatus::Submitted && t.status != TaskStatus::Scheduled
        })
        .await;
    figure(
        "schedule_to_claimed_cold_ms",
        claimed_after(&running).as_millis(),
    );
    // Live: the first line arrives while the runner still sleeps.
    eventually(
        "first line while running",
        Duration::from_secs(30),
        || async {
            let lines = orch.log_text(&task.id).await;
            lines.iter().any(|l| l == "first-line").then_some(())
        },
    )
    .await;
    let now = orch.client.task(&task.id).await.expect("task");
    let lines = orch.log_text(&task.id).await;
    assert_eq!(now.status, TaskStatus::Running, "{now:?}");
    assert!(
        !lines.iter().any(|l| l == "last-line"),
        "the first line came before the end: {lines:?}"
    );
    // The pod: the pushed image, really running the agent as uid 1000.
    let pod = task_pods(&pods, &task.id)
        .await
        .into_iter()
        .next()
        .expect("agent pod");
    let pod_name = pod.metadata.name.clone().expect("pod name");
    let cs = &pod
        .status
        .clone()
        .expect("status")
        .container_statuses
        .expect("cs")[0];
    assert!(
        cs.image_id.ends_with(&agent_image.digest),
        "imageID {} is not the pushed agent image {}",
        cs.image_id,
        agent_image.digest
    );
    let status = exec_stdout(&pods, &pod_name, &["cat", "/proc/1/status"]).await;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS of the agent");
    figure("agent_pid1_rss_kib", rss_kb);
    // The editor: POST /agents/editor/open port-forwards (through the API server and the
    // kubelet) to code-server in the pod; the proxy serves the workbench, already logged in.
    let agent = running.agent.clone().expect("agent name");
    // The agent claims only once code-server accepts connections, so the first try normally
    // works; the port-forward through the API server and the kubelet may still need a moment.
    let t = Instant::now();
    let html = loop {
        match open_workbench(&orch.url, agent.as_str()).await {
            Ok(html) => break html,
            Err(why) if t.elapsed() < Duration::from_secs(90) => {
                eprintln!("editor not there yet: {why}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(why) => panic!("no workbench after 90 s: {why}"),
        }
    };
    figure("editor_open_to_workbench_ms", t.elapsed().as_millis());
    assert!(html.contains("workbench"), "not the workbench: {html:.400}");
    assert!(
        !html.contains("type=\"password\""),
        "login page: {html:.400}"
    );
    // Headless Chromium renders that workbench through /editor/proxy/..., with the explorer
    // (which needs the WebSocket through the proxy and the port-forward into the pod).
    common::render_editor_in_chromium(&orch.url, TOKEN, &agent, "into the pod").await;
    figure("editor_rendered_in_chromium_ms", t.elapsed().as_millis());
    // Let the runner finish.
    exec_stdout(&pods, &pod_name, &["touch", "/home/coder/gate"]).await;
    let done = orch
        .wait(&task.id, "finished", Duration::from_secs(60), |t| {
            t.status.is_terminal()
        })
        .await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    let lines = orch.log_text(&task.id).await;
    for want in [
        "first-line",
        "forge token visible: no",
        "plain=plain-value",
        "uid=1000 home=/home/coder pwd=/home/coder/workspace/repo",
        "wrote result.txt",
        "last-line",
    ] {
        assert!(lines.iter().any(|l| l == want), "no {want:?} in {lines:?}");
    }
    // The secret reached the runner intact, and the log shows it masked.
    let sha = {
        use std::io::Write;
        let mut c = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(secret.as_bytes())
            .expect("write");
        let out = c.wait_with_output().expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)[..16].to_owned()
    };
    assert!(
        lines.iter().any(|l| *l == format!("secret-sha={sha}")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "secret=***"), "{lines:?}");
    let at = eventually("AgentTask Succeeded", Duration::from_secs(30), || async {
        let at = tasks.get_opt(&name).await.ok()??;
        (at.status.as_ref()?.phase == Phase::Succeeded).then_some(at)
    })
    .await;
    assert_eq!(at.status.as_ref().and_then(|s| s.exit_code), Some(0));
    // Delivered: the branch, the commit by the configured author, the pull request, and its
    // URL on the task and in the AgentTask's status.
    let branch = format!("guildnet/{}", task.id);
    let prs = gitea.pulls(&repo).await.expect("pulls");
    assert_eq!(prs.len(), 1, "{prs:#?}");
    assert_eq!(prs[0]["head"]["ref"], branch.as_str());
    assert_eq!(prs[0]["title"], ": Add a line from a real pod");
    let pr_url = prs[0]["html_url"].as_str().expect("PR url").to_owned();
    assert_eq!(done.pr_url.as_deref(), Some(pr_url.as_str()));
    assert_eq!(
        at.status.as_ref().and_then(|s| s.pr_url.as_deref()),
        Some(pr_url.as_str())
    );
    let readme = gitea
        .raw_file(&repo, "README.md", &branch)
        .await
        .expect("README on the branch");
    assert!(readme.ends_with("written in a pod\n"), "{readme:?}");
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("pull request: {pr_url}")),
        "{lines:?}"
    );
    // The secret is nowhere but in Secrets: not in the AgentTask, GET /tasks, the log, events.
    let at_json = serde_json::to_string(&at).expect("json");
    assert!(
        at_json.contains("GN_E2E_PLAIN"),
        "plain settings are in spec.env"
    );
    assert!(!at_json.contains(&secret), "secret in the AgentTask");
    assert!(
        !at_json.contains(gitea.token()),
        "forge token in the AgentTask"
    );
    assert!(
        !lines.iter().any(|l| l.contains(gitea.token())),
        "forge token in the log"
    );
    for path in [
        "/tasks".to_owned(),
        format!("/tasks/{}", task.id),
        format!("/tasks/{}/logs", task.id),
    ] {
        let body = orch.get_raw(&path).await;
        assert!(!body.contains(&secret), "secret in GET {path}");
        assert!(!body.contains(gitea.token()), "forge token in GET {path}");
    }
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("events");
    let events = serde_json::to_string(&events.items).expect("json");
    assert!(!events.contains(&secret), "secret in an Event");
    assert!(!events.contains(gitea.token()), "forge token in an Event");
    // The workload goes once the task is over, Secrets included.
    eventually("agent pod gone", Duration::from_secs(90), || async {
        task_pods(&pods, &task.id).await.is_empty().then_some(())
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    assert!(secrets
        .get_opt(&format!("{name}-credentials"))
        .await
        .expect("get")
        .is_none());

    // 2. Warm: the image is on the node now.
    let warm = orch.schedule("echo warm").await;
    let claimed = orch
        .wait(&warm.id, "claimed", Duration::from_secs(60), |t| {
            t.started_at.is_some()
        })
        .await;
    figure(
        "schedule_to_claimed_warm_ms",
        claimed_after(&claimed).as_millis(),
    );
    let warm_done = orch
        .wait(&warm.id, "finished", Duration::from_secs(60), |t| {
            t.status.is_terminal()
        })
        .await;
    assert_eq!(warm_done.status, TaskStatus::Succeeded, "{warm_done:?}");

    // 3. Cancel removes the pod.
    let long = orch.schedule("echo started; sleep 300").await;
    orch.wait(&long.id, "claimed", Duration::from_secs(60), |t| {
        t.status == TaskStatus::Running
    })
    .await;
    assert_eq!(task_pods(&pods, &long.id).await.len(), 1);
    let t = Instant::now();
    let cancelled = orch.client.cancel(&long.id).await.expect("cancel");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    eventually("cancelled pod gone", Duration::from_secs(90), || async {
        task_pods(&pods, &long.id).await.is_empty().then_some(())
    })
    .await;
    figure("cancel_to_pod_gone_ms", t.elapsed().as_millis());
    let at = tasks
        .get(&agenttask_name(&long.id))
        .await
        .expect("AgentTask");
    assert_eq!(at.status.expect("status").phase, Phase::Cancelled);

    // 4. The agent's pod deleted mid-task with --grace-period=0: the Deployment starts another
    //    pod, whose agent takes the same claim over; exactly one completion.
    let flaky = orch.schedule("echo begin; sleep 10; echo end").await;
    orch.wait(&flaky.id, "claimed", Duration::from_secs(60), |t| {
        t.status == TaskStatus::Running
    })
    .await;
    eventually("begin logged", Duration::from_secs(30), || async {
        orch.log_text(&flaky.id)
            .await
            .iter()
            .any(|l| l == "begin")
            .then_some(())
    })
    .await;
    let victim = task_pods(&pods, &flaky.id)
        .await
        .into_iter()
        .next()
        .and_then(|p| p.metadata.name)
        .expect("pod");
    pods.delete(
        &victim,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete pod");
    let finished = orch
        .wait(&flaky.id, "finished", Duration::from_secs(120), |t| {
            t.status.is_terminal()
        })
        .await;
    figure("pod_deleted_task_status", format!("{:?}", finished.status));
    figure("pod_deleted_task_claims", finished.claims);
    let flaky_log = orch.log_text(&flaky.id).await;
    figure("pod_deleted_task_log", format!("{flaky_log:?}"));
    // The replacement's runner ran the script again to its end. (The two agents of one claim
    // write to one log: lines of the replacement whose sequence numbers the stopping agent used
    // first are refused, so the log holds one "begin" or two.)
    assert!(flaky_log.iter().any(|l| l == "end"), "{flaky_log:?}");
    assert!(
        flaky_log.iter().any(|l| l == "runner exited with code 0"),
        "{flaky_log:?}"
    );
    assert_eq!(
        orch.audit_count(&flaky.id, "task.complete").await,
        1,
        "exactly one completion: {finished:?}"
    );
    assert_eq!(finished.status, TaskStatus::Succeeded, "{finished:?}");
    let replacement: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(!replacement.contains(&victim), "{replacement:?}");

    // 5. An image that does not exist: Failed within the start deadline, naming the cause.
    let missing = format!("{}/guildnet-agent:does-not-exist", registry.host());
    let orch2 = start_orchestrator(
        dir.path(),
        "orchestrator-missing-image",
        &cluster,
        ip,
        &missing,
        &["--agent-start-deadline-secs", "20"],
        &[],
    )
    .await;
    let t = Instant::now();
    let doomed = orch2.schedule("echo never").await;
    let failed = orch2
        .wait(&doomed.id, "failed", Duration::from_secs(60), |t| {
            t.status.is_terminal()
        })
        .await;
    figure("missing_image_to_failed_ms", t.elapsed().as_millis());
    assert_eq!(failed.status, TaskStatus::Failed, "{failed:?}");
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("ImagePullBackOff") || reason.contains("ErrImagePull"),
        "{reason}"
    );
    assert!(reason.contains("start deadline 20 s"), "{reason}");
    assert_eq!(failed.attempt, 1, "not retried");
    let at = eventually("AgentTask Failed", Duration::from_secs(30), || async {
        let at = tasks.get_opt(&agenttask_name(&doomed.id)).await.ok()??;
        (at.status.as_ref()?.phase == Phase::Failed).then_some(at)
    })
    .await;
    assert!(at
        .status
        .and_then(|s| s.reason)
        .is_some_and(|r| r.contains("ImagePull")));
    eventually("stuck pod removed", Duration::from_secs(60), || async {
        task_pods(&pods, &doomed.id).await.is_empty().then_some(())
    })
    .await;
    let note_lines = orch2.log_text(&doomed.id).await;
    assert!(
        note_lines.iter().any(|l| l.starts_with("[kubernetes]")),
        "{note_lines:?}"
    );

    // The operator pod's own log: it reconciled, and never printed the secret.
    let op_log = pods
        .logs(
            op_pod.metadata.name.as_deref().expect("name"),
            &LogParams::default(),
        )
        .await
        .expect("operator log");
    assert!(!op_log.contains(&secret));
    figure("total_s", format!("{:.1}", t_all.elapsed().as_secs_f64()));
}
