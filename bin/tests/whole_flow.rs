//! The whole flow a person walks (issue 22), as one test in headless Chromium, with the real
//! binaries and servers: the dashboard and orchestrator binaries, the real `talosctl` against the
//! testbed's Talos emulator (whose bootstrap starts the testbed's control plane with a real
//! node: kubelet + containerd on this machine), the agent and operator images built by
//! `scripts/images/build.sh` from this build's binaries and pushed to the testbed's registry,
//! and a repository on the testbed's Gitea (listening on the node's address, so pods reach it).
//!
//! 1. Log in to the dashboard and create a mesh in its setup gate: the real headscale on the
//!    node's address (pods reach it there), the dashboard's host joins, and the flow hands the
//!    mesh to the orchestrator, whose host joins with a userspace tailscaled of its own.
//! 2. Create org `acme` with "provision a Talos cluster" in the page: talosctl bootstraps the
//!    emulated nodes, the kubeconfig lands in `${state}/kube/acme.config`, the dashboard
//!    installs the operator (with the tailscale sidecar image for agents).
//! 3. The operator runs as a pod on the real node.
//! 4. Schedule a task with the repository from the dashboard's page.
//! 5. The agent pod joins the tailnet (its sidecar, with the single-use key the orchestrator
//!    minted) and claims at the orchestrator's tailnet URL; its log streams live in the page.
//! 6. Open the editor from the page: the workbench renders in the iframe, served over the
//!    tailnet (the orchestrator dials the pod's tailnet address through its own node; no
//!    port-forward is opened).
//! 7. The task ends Succeeded with a pull request on Gitea, shown in the dashboard's artifacts.
//! 8. After the task, the agent's pod is gone and Headscale no longer lists its node.
//!
//! Each step prints `WHOLE-FLOW <step> <seconds>` (docs/TESTBED.md keeps a run's figures).
//!
//! Stand-in: the runner is `sh -s` (the task text is a shell script), not an AI coding CLI; it
//! waits for a gate file (created with `kubectl exec`) so the log is seen live and the editor
//! opened while the task runs.
//!
//! One real node runs at a time on a machine: the test waits for the machine-wide node lock.

mod common;

use common::dashboard::{click, type_into, visible, wait_js, Dashboard};
use common::node::{exec_stdout, pods_report, talos_emulator_on_real_node, KeepOnPanic};
use guildnet_core::client::OrchestratorClient;
use guildnet_core::model::TaskStatus;
use guildnet_core::names::TaskId;
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::agenttask_name;
use guildnet_kube::crd::AgentTask;
use guildnet_kube::TASK_LABEL;
use guildnet_mesh::headscale::HeadscaleClient;
use guildnet_testbed::browser::{ChromeDriver, Session};
use guildnet_testbed::forge::Gitea;
use guildnet_testbed::image::{artifact_dir, decode_png};
use guildnet_testbed::images::build_and_push;
use guildnet_testbed::node::NodeLock;
use guildnet_testbed::registry::{testbed_image, Registry};
use guildnet_testbed::{eventually, Proc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "whole-flow-admin-token-0123456789";
const PASSWORD: &str = "whole-flow-dashboard-password";
const NS: &str = guildnet_kube::DEFAULT_NAMESPACE;

/// Prints a step's time.
fn step(name: &str, since: Instant) {
    println!("WHOLE-FLOW {name} {:.1}", since.elapsed().as_secs_f64());
}

/// The page's visible state, for a failure message.
async fn page_state(s: &Session) -> String {
    s.execute(
        "const t = (id) => { const e = document.getElementById(id); return e ? `${id}: ${e.hidden ? '(hidden) ' : ''}${e.textContent.trim().slice(0, 2000)}` : ''; }; \
         return ['global-error', 'org-create-error', 'progress-steps', 'progress-log', 'progress-done', \
                 'schedule-error', 'task-detail-status', 'task-detail-reason', 'task-conditions', \
                 'task-log', 'agents-error'].map(t).join('\\n');",
        vec![],
    )
    .await
    .map(|v| v.as_str().unwrap_or_default().to_owned())
    .unwrap_or_else(|e| format!("(page unreadable: {e})"))
}

/// The agent pods of a task.
async fn task_pods(pods: &Api<Pod>, id: &TaskId) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("{TASK_LABEL}={}", agenttask_name(id))))
        .await
        .expect("list pods")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_goes_from_the_dashboard_to_a_pull_request_on_a_real_node() {
    let t_all = Instant::now();
    let dir = KeepOnPanic::new("gn-whole-flow-");

    // The images, built from this build's binaries and pushed to the registry.
    let t = Instant::now();
    let registry = Registry::start().await.expect("registry");
    let tag = format!("flow-{}", std::process::id());
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
    let agent_image = built.get("agent").expect("agent").clone();
    let operator_image = built.get("operator").expect("operator").clone();
    let sidecar_image = registry
        .push_oci_archive(
            &testbed_image("tailscale")
                .expect("the sidecar image: run scripts/testbed/install.sh tailscale-image"),
            "testbed/tailscale",
            &tag,
        )
        .await
        .expect("push the tailscale sidecar image");
    step("images_built_and_pushed", t);

    // The forge, on the address the node will have (the host's), so agent pods reach it.
    let ip = guildnet_testbed::host::host_ip().expect("host ip");
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
    let emu = talos_emulator_on_real_node(2, registry.host()).await;
    let (cp, worker) = (emu.nodes()[0].clone(), emu.nodes()[1].clone());

    // The orchestrator (Kubernetes backend, no org, no mesh yet) and the dashboard, one state
    // dir as `guildnet up` has. It listens on every interface: on loopback for its tailnet
    // node (userspace tailscaled hands tailnet connections to the host's loopback), on the
    // node's address for the page's API calls.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let port = {
        let l = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        l.local_addr().expect("addr").port()
    };
    let orch_url = format!("http://{ip}:{port}");
    let talosctl = guildnet_testbed::bin("talosctl").expect("testbed talosctl");
    let (headscale, tailscaled, tailscale) = (
        guildnet_testbed::bin("headscale").expect("testbed headscale"),
        guildnet_testbed::bin("tailscaled").expect("testbed tailscaled"),
        guildnet_testbed::bin("tailscale").expect("testbed tailscale"),
    );
    let mesh_bins: [(&str, &OsStr); 3] = [
        ("GUILDNET_HEADSCALE", headscale.as_os_str()),
        ("GUILDNET_TAILSCALED", tailscaled.as_os_str()),
        ("GUILDNET_TAILSCALE", tailscale.as_os_str()),
    ];
    let orch = Proc::spawn(
        "orchestrator",
        Path::new(env!("CARGO_BIN_EXE_guildnet-orchestrator")),
        [
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--public-url",
            &orch_url,
            "--backend",
            "kubernetes",
            "--agent-image",
            &agent_image.reference,
            "--agent-start-deadline-secs",
            "100",
            "--talosctl",
            talosctl.to_str().expect("utf-8 path"),
            // Stand-in runner: the task text is a shell script.
            "--runner",
            "sh -s",
            "--forge-api",
            gitea.url(),
            "--forge-kind",
            "gitea",
            "--forge-token-file",
            token_file.to_str().expect("utf-8 path"),
            "--git-author-name",
            "GuildNet Whole Flow",
            "--git-author-email",
            "whole-flow@guildnet.invalid",
        ],
        &[
            ("GUILDNET_STATE_DIR", state.as_os_str()),
            ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
            ("RUST_LOG", OsStr::new("info")),
            mesh_bins[1],
            mesh_bins[2],
        ],
        &dir.path().join("orchestrator.log"),
    )
    .expect("start the orchestrator");
    let api = OrchestratorClient::new(&orch_url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator ready", Duration::from_secs(30), || async {
        api.health().await.ok()
    })
    .await;
    let dash = Dashboard::start(
        &state,
        &orch_url,
        TOKEN,
        PASSWORD,
        &[
            "--operator-image",
            &operator_image.reference,
            "--operator-mesh-sidecar-image",
            &sidecar_image,
            // The testbed's Headscale serves its DERP relay over plain HTTP.
            "--operator-mesh-plain-http-derp",
        ],
        &mesh_bins,
    );

    // 1. Log in.
    let t = Instant::now();
    let driver = ChromeDriver::start().await.expect("chromedriver");
    let s = driver.new_session(true).await.expect("browser session");
    eventually("dashboard listening", Duration::from_secs(30), || async {
        reqwest::get(format!("{}/api/session", dash.url)).await.ok()
    })
    .await;
    s.goto(&dash.url).await.expect("dashboard page");
    let field = s
        .wait_for_css("#login-password", Duration::from_secs(20))
        .await
        .expect("login form");
    s.send_keys(&field, PASSWORD).await.expect("password");
    click(&s, "#login-submit").await;
    step("logged_in", t);

    // 1b. Create the mesh in the setup gate: Headscale on the node's address.
    let t = Instant::now();
    let hs_port = {
        let l = std::net::TcpListener::bind((ip, 0)).expect("bind");
        l.local_addr().expect("addr").port()
    };
    let hs_url = format!("http://{ip}:{hs_port}");
    visible(&s, "setup-start", 20).await;
    click(&s, "#setup-mode-create").await;
    type_into(&s, "#setup-hostname", "flow-dashboard").await;
    type_into(&s, "#setup-server-url", &hs_url).await;
    type_into(&s, "#setup-listen-addr", &format!("{ip}:{hs_port}")).await;
    click(&s, "#setup-start").await;
    let done = match s
        .wait_until(
            "mesh created",
            "const d = document.getElementById('progress-done').textContent; return d || null;",
            Duration::from_secs(240),
        )
        .await
    {
        Ok(v) => v.as_str().unwrap_or_default().to_owned(),
        Err(e) => panic!("{e}\n{}", page_state(&s).await),
    };
    assert_eq!(done, "Done.", "{}", page_state(&s).await);
    let mesh = api.mesh().await.expect("GET /mesh");
    assert!(mesh.configured && mesh.joined, "{mesh:?}");
    assert_eq!(mesh.headscale_url.as_deref(), Some(hs_url.as_str()));
    let orch_tailnet_ip = mesh
        .tailnet_ips
        .iter()
        .find(|a| a.starts_with("100."))
        .unwrap_or_else(|| panic!("the orchestrator has no tailnet IPv4: {mesh:?}"))
        .clone();
    let tailnet_url = format!("http://{orch_tailnet_ip}:{port}");
    assert_eq!(mesh.orchestrator_url.as_deref(), Some(tailnet_url.as_str()));
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("mesh/mesh.json")).expect("the saved mesh"),
    )
    .expect("mesh.json");
    let hs = HeadscaleClient::new(
        &hs_url,
        Token::new(saved["apiKey"].as_str().expect("apiKey").to_owned()),
    )
    .expect("headscale client");
    let nodes = hs.list_nodes(None).await.expect("Headscale nodes");
    for want in ["flow-dashboard", "guildnet-orchestrator"] {
        assert!(
            nodes.iter().any(|n| n.name == want),
            "Headscale does not list {want}: {nodes:?}"
        );
    }
    visible(&s, "progress-close", 30).await;
    click(&s, "#progress-close").await;
    wait_js(
        &s,
        "navigation shown",
        "const n = document.getElementById('nav-orgs'); const g = document.getElementById('setup-skip'); \
         return !!n && n.offsetParent !== null && (!g || g.offsetParent === null);",
        20,
    )
    .await;
    step("mesh_created_and_orchestrator_joined", t);

    // 2. Create org acme with a Talos cluster: the real talosctl against the emulator.
    let t = Instant::now();
    click(&s, "#nav-orgs").await;
    visible(&s, "org-create-name", 20).await;
    type_into(&s, "#org-create-name", "acme").await;
    click(&s, "#org-create-provision summary").await;
    visible(&s, "org-create-cp", 10).await;
    type_into(&s, "#org-create-cp", &cp).await;
    type_into(&s, "#org-create-workers", &worker).await;
    // The bootstrap starts the real node, which waits for the machine-wide lock: wait for the
    // node of another test to go first, so the provisioning's own deadlines do not count it.
    drop(
        NodeLock::acquire(Duration::from_secs(20 * 60))
            .await
            .expect("the real node is free"),
    );
    click(&s, "#org-create-submit").await;
    let done = match s
        .wait_until(
            "provisioning ended",
            // The overlay showed the mesh's flow before: wait for this flow's steps.
            "const d = document.getElementById('progress-done').textContent; \
             const mine = [...document.querySelectorAll('#progress-steps li')].some(l => l.dataset.step === 'bootstrap'); \
             return (mine && d) || null;",
            Duration::from_secs(600),
        )
        .await
    {
        Ok(v) => v.as_str().unwrap_or_default().to_owned(),
        Err(e) => panic!("{e}\n{}\n{}", page_state(&s).await, emu.diagnostics().await),
    };
    assert_eq!(
        done,
        "Done.",
        "{}\n{}",
        page_state(&s).await,
        emu.diagnostics().await
    );
    let steps = s
        .execute(
            "return [...document.querySelectorAll('#progress-steps li')].map(l => `${l.dataset.step}:${l.className}`);",
            vec![],
        )
        .await
        .expect("progress steps");
    for want in [
        "bootstrap:done",
        "bootstrap/bootstrap:done",
        "bootstrap/kubeconfig:done",
        "kubeconfig:done",
        "operator/crd:done",
        "operator/rbac:done",
        "operator/deployment:done",
        "operator:done",
    ] {
        assert!(
            steps
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s == want)),
            "no {want} in {steps}"
        );
    }
    click(&s, "#progress-close").await;
    let kubeconfig = state.join("kube/acme.config");
    let kc = std::fs::read_to_string(&kubeconfig).expect("the org's kubeconfig");
    wait_js(
        &s,
        "org row with its kubeconfig",
        "const r = document.querySelector(\"[data-testid=org-row][data-org='acme']\"); \
         return !!r && r.textContent.includes('ok (');",
        30,
    )
    .await;
    step("org_created_and_provisioned", t);

    // 3. The operator runs as a pod on the real node, from the pushed image.
    let t = Instant::now();
    let admin = guildnet_testbed::kube::client_from_kubeconfig(&kc)
        .await
        .expect("org kubeconfig");
    let deploys: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let available = async {
        loop {
            let ready = deploys
                .get_opt(guildnet_kube::install::OPERATOR_NAME)
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status?.available_replicas)
                .is_some_and(|n| n >= 1);
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(240), available)
        .await
        .is_err()
    {
        panic!(
            "the operator Deployment never became available:\n{}",
            pods_report(&admin, NS).await
        );
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let op_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=guildnet-operator"))
        .await
        .expect("operator pods")
        .items
        .into_iter()
        .next()
        .expect("an operator pod");
    let op_node = op_pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("scheduled");
    assert!(
        !op_node.starts_with("talos-"),
        "the operator landed on an emulated node: {op_node}"
    );
    let op_status = op_pod.status.clone().expect("status");
    assert!(
        op_status.container_statuses.expect("containers")[0]
            .image_id
            .ends_with(&operator_image.digest),
        "the operator pod does not run the pushed image"
    );
    step("operator_running_on_the_node", t);

    // 4. Schedule a task with the repository, from the tasks page.
    let t = Instant::now();
    click(&s, "#nav-tasks").await;
    wait_js(
        &s,
        "org acme to schedule in",
        "return document.getElementById('schedule-org').value === 'acme';",
        20,
    )
    .await;
    let script = ": Add a line from the whole flow\n\
                  echo first-line\n\
                  echo 'written by the whole flow' >> README.md\n\
                  while [ ! -e /home/coder/gate ]; do sleep 0.2; done\n\
                  echo last-line\n";
    type_into(&s, "#schedule-task", script).await;
    click(&s, "#schedule-more summary").await;
    visible(&s, "schedule-repo", 10).await;
    type_into(&s, "#schedule-repo", &repo.clone_url).await;
    type_into(&s, "#schedule-ref", "main").await;
    click(&s, "#schedule-submit").await;
    let id = wait_js(
        &s,
        "the task's row",
        "const r = document.querySelector('[data-testid=task-row]'); return r && r.dataset.taskId;",
        30,
    )
    .await;
    let id = TaskId::new(id.as_str().expect("task id")).expect("a task id");
    let scheduled = api.task(&id).await.expect("the task");
    assert!(scheduled.task.contains("echo first-line"), "{scheduled:?}");
    let want_repo = scheduled
        .context
        .repo
        .as_ref()
        .map(|r| (r.url.as_str(), r.git_ref.as_deref()));
    assert_eq!(want_repo, Some((repo.clone_url.as_str(), Some("main"))));
    step("task_scheduled_from_the_page", t);

    // 5. The agent pod claims it; its log streams live in the page.
    let t = Instant::now();
    click(&s, &format!("[data-testid=task-row][data-task-id='{id}']")).await;
    visible(&s, "task-detail", 10).await;
    if s.wait_until(
        "first line in the page",
        "return document.getElementById('task-log').textContent.includes('first-line');",
        Duration::from_secs(240),
    )
    .await
    .is_err()
    {
        panic!(
            "no live log line in the page:\n{}\n{}",
            page_state(&s).await,
            pods_report(&admin, NS).await
        );
    }
    let live = s
        .execute(
            "return [document.getElementById('task-detail-status').textContent, \
                     document.getElementById('task-log').textContent];",
            vec![],
        )
        .await
        .expect("task detail");
    assert_eq!(live[0], "Running", "{live}");
    assert!(
        !live[1].as_str().unwrap_or_default().contains("last-line"),
        "the first line came before the end: {live}"
    );
    let running = api.task(&id).await.expect("task");
    let agent = running.agent.clone().expect("agent name");
    let pod = task_pods(&pods, &id)
        .await
        .into_iter()
        .next()
        .expect("agent pod");
    let pod_name = pod.metadata.name.clone().expect("pod name");
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    assert!(
        node.as_deref().is_some_and(|n| !n.starts_with("talos-")),
        "the agent pod is not on the real node: {node:?}"
    );
    let cs = &pod
        .status
        .clone()
        .expect("status")
        .container_statuses
        .expect("container statuses")[0];
    assert!(
        cs.image_id.ends_with(&agent_image.digest),
        "imageID {} is not the pushed agent image {}",
        cs.image_id,
        agent_image.digest
    );
    // On the tailnet: the orchestrator minted the agent a key and told it its tailnet URL; the
    // pod's sidecar joined Headscale with it, and the agent's requests go through the sidecar.
    let at = Api::<AgentTask>::namespaced(admin.clone(), NS)
        .get(&agenttask_name(&id))
        .await
        .expect("the AgentTask");
    let at_mesh = at
        .spec
        .mesh
        .clone()
        .expect("spec.mesh: the org's agents are on the mesh");
    assert_eq!(at_mesh.login_server, hs_url);
    assert_eq!(
        at_mesh.orchestrator_url.as_deref(),
        Some(tailnet_url.as_str())
    );
    let spec = pod.spec.clone().expect("pod spec");
    let agent_env: std::collections::BTreeMap<String, String> = spec.containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert_eq!(
        agent_env.get("ORCHESTRATOR_URL").map(String::as_str),
        Some(tailnet_url.as_str()),
        "the agent is not pointed at the orchestrator's tailnet URL: {agent_env:?}"
    );
    assert!(
        agent_env
            .get("HTTP_PROXY")
            .is_some_and(|p| p.starts_with("http://127.0.0.1:")),
        "the agent's requests do not go through its sidecar: {agent_env:?}"
    );
    let sidecars: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.image.clone().unwrap_or_default())
        .collect();
    assert!(
        sidecars.iter().any(|i| i == &sidecar_image),
        "no tailscale sidecar in the agent pod: {sidecars:?}"
    );
    let nodes = hs.list_nodes(None).await.expect("Headscale nodes");
    let agent_node = nodes
        .iter()
        .find(|n| n.name == at_mesh.hostname)
        .unwrap_or_else(|| panic!("Headscale does not list {}: {nodes:?}", at_mesh.hostname));
    let agent_tailnet_ip = agent_node
        .ip_addresses
        .iter()
        .find(|a| a.starts_with("100."))
        .expect("the agent node's tailnet IPv4")
        .clone();
    step("agent_claimed_over_the_tailnet_and_log_live_in_the_page", t);
    // The agent claimed once code-server accepted connections; how long it waited for it.
    let agent_log = pods
        .logs(&pod_name, &Default::default())
        .await
        .expect("agent log");
    let waited_ms: u64 = agent_log
        .lines()
        .find(|l| l.contains("the editor accepts connections; claiming"))
        .and_then(|l| l.split("waited_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the agent did not wait for its editor:\n{agent_log}"));
    println!(
        "WHOLE-FLOW agent_waited_for_code_server {:.1}",
        waited_ms as f64 / 1000.0
    );

    // 6. Open the editor from the agents page: the workbench renders in the iframe (the editor
    //    origin relays to the orchestrator's proxy, which dials the pod's tailnet address
    //    through the orchestrator's own node).
    let t = Instant::now();
    click(&s, "#nav-agents").await;
    let button = format!("[data-testid=agent-row][data-agent='{agent}'] [data-testid=open-editor]");
    if s.wait_for_css(&button, Duration::from_secs(60))
        .await
        .is_err()
    {
        panic!(
            "no Open editor button for {agent}:\n{}\n{:?}",
            page_state(&s).await,
            api.agent(&agent).await.map(|a| a.state)
        );
    }
    click(&s, &button).await;
    wait_js(
        &s,
        "a cross-origin editor frame",
        "const f = document.getElementById('editor-frame'); \
         return !!f && !!f.getAttribute('src') && f.contentDocument === null;",
        60,
    )
    .await;
    let frame = s.find_css("#editor-frame").await.expect("editor frame");
    s.switch_to_frame(&frame).await.expect("into the frame");
    wait_js(
        &s,
        "workbench in the iframe",
        "return !!document.querySelector('.monaco-workbench');",
        120,
    )
    .await;
    wait_js(
        &s,
        "explorer in the iframe (needs the WebSocket into the pod)",
        "return !!document.querySelector('.explorer-folders-view, .explorer-viewlet');",
        90,
    )
    .await;
    s.switch_to_top().await.expect("back to the dashboard");
    step("editor_rendered_from_the_page", t);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let png = s
        .save_screenshot(&artifact_dir("whole-flow").join("editor.png"))
        .await
        .expect("screenshot");
    let (rendered, colours) = decode_png(&png).expect("png").looks_rendered();
    assert!(
        rendered,
        "the editor screenshot looks blank: {colours} colours"
    );
    click(&s, "#editor-close").await;
    let opened: serde_json::Value = reqwest::Client::new()
        .post(format!("{orch_url}/agents/editor/open"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": agent.as_str(), "org": "acme"}))
        .send()
        .await
        .expect("open the editor")
        .json()
        .await
        .expect("json");
    assert_eq!(
        opened["host"],
        agent_tailnet_ip.as_str(),
        "the editor is not served over the tailnet: {opened}"
    );
    let orch_log = std::fs::read_to_string(dir.path().join("orchestrator.log")).unwrap_or_default();
    assert!(
        !orch_log.contains("editor port-forward opened"),
        "a port-forward was opened for the editor on the tailnet"
    );

    // 7. The runner finishes: Succeeded, a pull request on the forge, shown in the dashboard.
    let t = Instant::now();
    exec_stdout(&pods, &pod_name, &["touch", "/home/coder/gate"]).await;
    click(&s, "#nav-tasks").await;
    click(&s, &format!("[data-testid=task-row][data-task-id='{id}']")).await;
    if s.wait_until(
        "Succeeded in the page",
        "return document.getElementById('task-detail-status').textContent === 'Succeeded';",
        Duration::from_secs(120),
    )
    .await
    .is_err()
    {
        panic!(
            "the task did not succeed:\n{}\n{}",
            page_state(&s).await,
            pods_report(&admin, NS).await
        );
    }
    let prs = gitea.pulls(&repo).await.expect("pulls");
    assert_eq!(prs.len(), 1, "{prs:#?}");
    assert_eq!(prs[0]["head"]["ref"], format!("guildnet/{id}").as_str());
    assert_eq!(prs[0]["title"], ": Add a line from the whole flow");
    let pr_url = prs[0]["html_url"].as_str().expect("PR url").to_owned();
    let readme = gitea
        .raw_file(&repo, "README.md", &format!("guildnet/{id}"))
        .await
        .expect("README on the branch");
    assert!(
        readme.ends_with("written by the whole flow\n"),
        "{readme:?}"
    );
    wait_js(
        &s,
        "the pull request link in the task",
        &format!(
            "const a = document.querySelector('#task-artifacts [data-testid=pr-link]'); \
             return !!a && a.href === {};",
            json!(pr_url)
        ),
        30,
    )
    .await;
    let log = s
        .execute(
            "return document.getElementById('task-log').textContent;",
            vec![],
        )
        .await
        .expect("task log");
    let log = log.as_str().unwrap_or_default();
    assert!(log.contains("last-line"), "{log}");
    assert!(log.contains(&format!("pull request: {pr_url}")), "{log}");
    click(&s, "#nav-artifacts").await;
    wait_js(
        &s,
        "the pull request on the artifacts page",
        &format!(
            "return [...document.querySelectorAll('[data-testid=artifact-item]')].some(i => \
             i.textContent.includes({}) && i.textContent.includes('Succeeded') && \
             [...i.querySelectorAll('a[data-testid=pr-link]')].some(a => a.href === {}));",
            json!(id.as_str()),
            json!(pr_url)
        ),
        30,
    )
    .await;
    let done = api.task(&id).await.expect("task");
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(done.pr_url.as_deref(), Some(pr_url.as_str()));
    step("task_succeeded_with_a_pr_in_the_artifacts", t);
    // 8. The agent's workload goes once the task is over, and its node leaves the tailnet.
    let t = Instant::now();
    eventually(
        "the agent's node gone from Headscale",
        Duration::from_secs(60),
        || async {
            let nodes = hs.list_nodes(None).await.ok()?;
            (!nodes.iter().any(|n| n.name == at_mesh.hostname)).then_some(())
        },
    )
    .await;
    step("agent_node_gone_from_headscale", t);
    let t = Instant::now();
    eventually("agent pod gone", Duration::from_secs(90), || async {
        task_pods(&pods, &id).await.is_empty().then_some(())
    })
    .await;
    step("agent_pod_gone_after_the_task", t);
    let _ = s.close().await;
    step("total", t_all);
    // The teardown, piece by piece (the test's own time after the steps).
    let mut cluster = emu.control_plane().await.cluster.take().expect("cluster");
    let t = Instant::now();
    let node = cluster.stop_node();
    step("teardown_node", t);
    for (what, piece) in [
        ("browser", Box::new(driver) as Box<dyn Send>),
        ("dashboard", Box::new(dash)),
        ("orchestrator", Box::new(orch)),
        ("control_plane", Box::new(cluster)),
        ("node_lock", Box::new(node)),
        ("talos_emulator", Box::new(emu)),
        ("gitea", Box::new(gitea)),
        ("registry", Box::new(registry)),
    ] {
        let t = Instant::now();
        drop(piece);
        step(&format!("teardown_{what}"), t);
    }
}
