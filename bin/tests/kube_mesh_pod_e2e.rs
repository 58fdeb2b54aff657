//! The agent pod's tailscale sidecar on a real node (issue 22): the testbed's control plane with
//! a real kubelet + containerd, a real registry, real headscale listening on the node's address
//! (pods reach it there), and the sidecar image the testbed builds from the pinned tailscale
//! source (`scripts/testbed/install.sh tailscale-image`: containerboot, tailscale, tailscaled,
//! what `tailscale/tailscale` is).
//!
//! The pod is what the operator builds for an AgentTask with `spec.mesh`
//! ([`guildnet_kube::mesh_sidecar::pod_parts`] applied to the pod), with the testbed's busybox
//! standing in for the agent image (the agent image needs a release build of this repository,
//! see `kube_pod_e2e.rs`): its "editor" is busybox httpd on :8443, and its "agent" fetches the
//! orchestrator's tailnet URL with busybox wget through the sidecar's HTTP proxy. The test checks
//! that the native sidecar starts unprivileged in userspace mode and joins with the single-use
//! key from the Secret, that the pod reaches a host server at its tailnet address only, that
//! the host's node reaches the pod's :8443 at the pod's tailnet address, and that removing the
//! node (task end) takes it off Headscale.

mod common;

use common::{free_port_on, free_udp_on, tailnet};

use guildnet_core::seams::AgentMesh;
use guildnet_kube::crd::{AgentMeshSpec, AgentTask, AgentTaskSpec};
use guildnet_kube::mesh_sidecar::{self, SidecarConfig, CREDENTIALS_AUTHKEY_KEY};
use guildnet_mesh::headscale::HeadscaleSettings;
use guildnet_mesh::setup::{self, CreateOptions};
use guildnet_mesh::AgentMeshKeys;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::registry::{testbed_image, Registry};
use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, PodSpec, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "default";
const HOST: &str = "mesh-pod-a1";

fn testbed(name: &str) -> std::path::PathBuf {
    guildnet_testbed::bin(name).expect("testbed binary")
}

/// The "orchestrator": an HTTP server on the host's loopback, reached by pods only over the
/// tailnet.
async fn host_server(body: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

async fn logs(pods: &Api<Pod>, container: &str) -> String {
    pods.logs(
        "agent",
        &LogParams {
            container: Some(container.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| format!("(no logs: {e})"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_puts_a_real_pod_on_the_tailnet() {
    let registry = Registry::start().await.expect("registry");
    let tag = format!("t{}", std::process::id());
    let busybox = registry
        .push_oci_archive(
            &testbed_image("busybox").expect("busybox image"),
            "testbed/busybox",
            &tag,
        )
        .await
        .expect("push busybox");
    let sidecar_image = registry
        .push_oci_archive(
            &testbed_image("tailscale")
                .expect("the sidecar image: run scripts/testbed/install.sh tailscale-image"),
            "testbed/tailscale",
            &tag,
        )
        .await
        .expect("push tailscale");
    let cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("control plane + real node");
    let node_ip = cluster.node().expect("node").ip();
    let client = cluster.client().await.expect("client");

    // Headscale on the node's address: pods reach the host only there.
    let dir = tempfile::Builder::new()
        .prefix("gkmp")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let mut opts = CreateOptions::new(dir.path().join("headscale"));
    opts.headscale_bin = Some(testbed("headscale"));
    opts.settings = HeadscaleSettings::serving_at(
        node_ip,
        free_port_on(node_ip),
        free_port_on(Ipv4Addr::LOCALHOST),
        free_port_on(Ipv4Addr::LOCALHOST),
        free_udp_on(node_ip),
    );
    let created = setup::create(&opts, None).await.expect("headscale");
    let login = created.url().to_owned();

    // The orchestrator's host node.
    let orch_node = tailnet::node(&dir.path().join("on")).await;
    tailnet::join(&orch_node, &login, &created.preauth_key.key, "orchestrator").await;
    let orch_ip = orch_node
        .cli()
        .status()
        .await
        .expect("status")
        .ipv4()
        .expect("ip")
        .to_string();
    let orch_port = host_server("orchestrator over the tailnet").await;
    let orch_url = format!("http://{orch_ip}:{orch_port}");

    // The agent's key, in its credentials Secret.
    let keys = AgentMeshKeys::new(created.client.clone(), login.clone());
    let key = keys.agent_key(HOST).await.expect("mint");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut data = BTreeMap::new();
    data.insert(
        CREDENTIALS_AUTHKEY_KEY.to_owned(),
        ByteString(key.expose().as_bytes().to_vec()),
    );
    let mut secret = Secret {
        data: Some(data),
        ..Default::default()
    };
    secret.metadata.name = Some("agent-credentials".into());
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");

    // The pod as the operator builds it for spec.mesh, with busybox as the agent.
    let mut spec: AgentTaskSpec = serde_json::from_value(serde_json::json!({
        "orgId": "acme", "taskId": "t1", "task": "x", "image": busybox, "agentName": HOST,
    }))
    .expect("spec");
    spec.mesh = Some(AgentMeshSpec {
        login_server: login.clone(),
        hostname: HOST.into(),
        orchestrator_url: Some(orch_url.clone()),
    });
    let at = AgentTask::new("atask-t1", spec);
    let parts = mesh_sidecar::pod_parts(
        &at,
        "agent-credentials",
        &SidecarConfig {
            image: sidecar_image.clone(),
            // This Headscale serves its embedded DERP over plain HTTP.
            plain_http_derp: true,
        },
    )
    .expect("parts");
    let mut pod_spec = PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            run_as_group: Some(1000),
            fs_group: Some(1000),
            ..Default::default()
        }),
        containers: vec![Container {
            name: "agent".into(),
            image: Some(busybox.clone()),
            command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                // The editor on :8443; the agent calls the orchestrator through the HTTP proxy
                // its env names (an absolute-form request, as an HTTP client with HTTP_PROXY
                // sends it; busybox wget segfaults in this image, so nc, which must keep its
                // side open until the answer came: the proxy cancels a request whose client
                // hung up).
                "busybox httpd -p 8443 -h /www; \
                 proxy=${HTTP_PROXY#http://}; \
                 while true; do \
                   out=$({ printf 'GET %s/ HTTP/1.0\\r\\n\\r\\n' \"$ORCHESTRATOR_URL\"; sleep 4; } | busybox nc -w 5 ${proxy%:*} ${proxy##*:} 2>&1 | tail -n 1); \
                   echo \"REACHED? $out\"; \
                   sleep 2; \
                 done"
                    .into(),
            ]),
            ..Default::default()
        }],
        ..Default::default()
    };
    parts.apply(&mut pod_spec, "agent");
    let mut pod = Pod {
        spec: Some(pod_spec),
        ..Default::default()
    };
    pod.metadata.name = Some("agent".into());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let t = Instant::now();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");

    // The agent container starts only once the sidecar's startup probe passed (on the tailnet).
    let started = loop {
        let p = pods.get("agent").await.expect("pod");
        let st = p.status.clone().unwrap_or_default();
        let agent_running = st.container_statuses.iter().flatten().any(|c| {
            c.name == "agent" && c.state.as_ref().and_then(|s| s.running.as_ref()).is_some()
        });
        if agent_running {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(150) {
            panic!(
                "the agent container did not start: {:?}\nsidecar log:\n{}",
                st,
                logs(&pods, "tailscale").await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "MESH-POD pod_created_to_agent_started_s {:.1}",
        started.as_secs_f64()
    );
    let sidecar_log = logs(&pods, "tailscale").await;
    assert!(
        !sidecar_log.contains(key.expose()),
        "the key is in the sidecar's log"
    );

    // The node is in Headscale under the agent's name.
    let pod_ip = keys
        .node_address(HOST)
        .await
        .expect("lookup")
        .unwrap_or_else(|| panic!("{HOST} not registered; sidecar log:\n{sidecar_log}"));

    // Agent -> orchestrator, over the tailnet through the sidecar's proxy.
    let t = Instant::now();
    loop {
        let l = logs(&pods, "agent").await;
        if l.contains("REACHED? orchestrator over the tailnet") {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            panic!(
                "the pod never reached {orch_url}:\nagent log:\n{l}\nsidecar log:\n{}",
                logs(&pods, "tailscale").await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "MESH-POD agent_started_to_orchestrator_reached_s {:.1}",
        t.elapsed().as_secs_f64()
    );

    // Host -> the pod's editor port at its tailnet address, through the host node's proxy.
    orch_node
        .cli()
        .wait_for_peer(HOST, Duration::from_secs(60))
        .await
        .expect("the pod's node seen from the host");
    let http = orch_node
        .http_client(Duration::from_secs(10))
        .expect("client through the host node");
    let body = http
        .get(format!("http://{pod_ip}:8443/index.html"))
        .send()
        .await
        .expect("editor over the tailnet")
        .text()
        .await
        .expect("body");
    assert!(
        body.contains("hello from the testbed busybox image"),
        "{body}"
    );

    // Task end: the node is removed from Headscale while the pod still runs.
    assert_eq!(keys.remove_node(HOST).await.expect("remove"), 1);
    assert!(keys.node_address(HOST).await.expect("lookup").is_none());
    let _ = pods.delete("agent", &DeleteParams::default()).await;
    drop(orch_node);
}

/// The whole path on the real node: the real agent image (built by scripts/images/build.sh) in
/// a pod the real operator built, with the sidecar, claiming at the orchestrator's tailnet URL
/// (reachable only over the tailnet), its code-server served by the orchestrator's editor proxy
/// over the tailnet (workbench page and WebSocket, rendered in headless Chromium), Succeeded, its node gone from Headscale once
/// it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pod_claims_over_the_tailnet_and_leaves_it_at_task_end() {
    use guildnet_core::client::OrchestratorClient;
    use guildnet_core::model::TaskStatus;
    use guildnet_core::names::OrgName;
    use guildnet_core::token::Secret as Token;
    use guildnet_testbed::images::build_and_push;
    use guildnet_testbed::{eventually, Proc};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use std::ffi::OsStr;
    use std::path::Path;
    const TOKEN: &str = "kube-mesh-pod-e2e-admin-token-0123456789";

    let registry = Registry::start().await.expect("registry");
    let tag = format!("m{}", std::process::id());
    let built = build_and_push(
        &[("agent", Path::new(env!("CARGO_BIN_EXE_guildnet-agent")))],
        &registry,
        &tag,
    )
    .await
    .expect("scripts/images/build.sh");
    let agent_image = built.get("agent").expect("agent").reference.clone();
    let sidecar_image = registry
        .push_oci_archive(
            &testbed_image("tailscale").expect("scripts/testbed/install.sh tailscale-image"),
            "testbed/tailscale",
            &tag,
        )
        .await
        .expect("push tailscale");
    let cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("control plane + real node");
    let node_ip = cluster.node().expect("node").ip();
    let admin = cluster.client().await.expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in guildnet_kube::crd::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("crd");
    }

    let dir = tempfile::Builder::new()
        .prefix("gkma")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let mut opts = CreateOptions::new(dir.path().join("headscale"));
    opts.headscale_bin = Some(testbed("headscale"));
    opts.settings = HeadscaleSettings::serving_at(
        node_ip,
        free_port_on(node_ip),
        free_port_on(Ipv4Addr::LOCALHOST),
        free_port_on(Ipv4Addr::LOCALHOST),
        free_udp_on(node_ip),
    );
    let created = setup::create(&opts, None).await.expect("headscale");
    let hs = created.client.clone();
    let orch_node = tailnet::node(&dir.path().join("on")).await;
    tailnet::join(
        &orch_node,
        created.url(),
        &created.preauth_key.key,
        "orchestrator",
    )
    .await;
    let orch_ip = orch_node
        .cli()
        .status()
        .await
        .expect("status")
        .ipv4()
        .expect("ip")
        .to_string();
    let key_file = dir.path().join("hs.key");
    std::fs::write(&key_file, hs.api_key().expose()).expect("key file");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");

    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("kube")).expect("mkdir");
    std::fs::copy(cluster.kubeconfig_path(), state.join("kube/acme.config")).expect("kubeconfig");
    let _operator = Proc::spawn(
        "guildnet-operator",
        Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
        [
            "run".to_owned(),
            "--kubeconfig".to_owned(),
            cluster.kubeconfig_path().display().to_string(),
            "--metrics-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--mesh-sidecar-image".to_owned(),
            sidecar_image.clone(),
            "--mesh-plain-http-derp".to_owned(),
        ],
        &[],
        &dir.path().join("operator.log"),
    )
    .expect("operator");
    let orch_port = free_port_on(Ipv4Addr::LOCALHOST);
    let loopback_url = format!("http://127.0.0.1:{orch_port}");
    let tailnet_url = format!("http://{orch_ip}:{orch_port}");
    let socks = orch_node.socks5_addr().to_string();
    let _orch = Proc::spawn(
        "guildnet-orchestrator",
        Path::new(env!("CARGO_BIN_EXE_guildnet-orchestrator")),
        [
            "--listen",
            &format!("127.0.0.1:{orch_port}"),
            "--public-url",
            &tailnet_url,
            "--org",
            "acme",
            "--backend",
            "kubernetes",
            "--agent-image",
            &agent_image,
            "--runner",
            "sh -s",
            "--tailnet-socks5",
            &socks,
            "--mesh-headscale-url",
            created.url(),
            "--mesh-api-key-file",
            &key_file.display().to_string(),
            "--agent-start-deadline-secs",
            "110",
        ],
        &[
            ("GUILDNET_STATE_DIR", state.as_os_str()),
            ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
            ("RUST_LOG", OsStr::new("info")),
        ],
        &dir.path().join("orchestrator.log"),
    )
    .expect("orchestrator");
    let client = OrchestratorClient::new(&loopback_url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator ready", Duration::from_secs(30), || async {
        client.health().await.ok()
    })
    .await;
    let t = Instant::now();
    let task = client
        .schedule(
            &OrgName::new("acme").expect("org"),
            // It ends once the test touched the release file (after the editor checks), or
            // after 4 minutes.
            &format!(
                "echo hello from a pod on the tailnet; i=0; \
                 while [ ! -e {RELEASE} ] && [ $i -lt 240 ]; do sleep 1; i=$((i+1)); done"
            ),
            None,
        )
        .await
        .expect("schedule");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "mvp-agents");
    let running = loop {
        let tk = client.task(&task.id).await.expect("task");
        if tk.status == TaskStatus::Running {
            break tk;
        }
        if tk.status.is_terminal() || t.elapsed() > Duration::from_secs(200) {
            let list = pods.list(&Default::default()).await.expect("pods");
            let mut why = String::new();
            for p in &list.items {
                why.push_str(&format!("{:?}\n", p.status));
                let name = p.metadata.name.clone().unwrap_or_default();
                for c in ["tailscale", "agent"] {
                    let l = pods
                        .logs(
                            &name,
                            &LogParams {
                                container: Some(c.into()),
                                tail_lines: Some(30),
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap_or_default();
                    why.push_str(&format!("--- {name}/{c}:\n{l}\n"));
                }
            }
            panic!("task not Running over the tailnet: {tk:?}\n{why}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "MESH-POD agent_pod_schedule_to_running_s {:.1}",
        t.elapsed().as_secs_f64()
    );
    let agent = running.agent.clone().expect("agent");
    let node = keys_node(&hs, agent.as_str()).await;
    assert!(node.is_some(), "the agent's node is in headscale");

    // The editor through the orchestrator, over the tailnet (no port-forward): the proxy logs
    // in to code-server in the pod and serves its workbench, and a WebSocket upgrade goes
    // through. code-server may still be starting when the task is Running.
    let t = Instant::now();
    let (html, session, path) = loop {
        match open_workbench(&loopback_url, agent.as_str()).await {
            Ok(w) => break w,
            Err(why) if t.elapsed() < Duration::from_secs(120) => {
                eprintln!("editor not there yet: {why}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(why) => panic!(
                "no workbench over the tailnet after 120 s: {why}\norchestrator log:\n{}",
                tail(&dir.path().join("orchestrator.log"), 40)
            ),
        }
    };
    println!(
        "MESH-POD editor_open_to_workbench_over_tailnet_s {:.1}",
        t.elapsed().as_secs_f64()
    );
    assert!(html.contains("workbench"), "not the workbench: {html:.400}");
    assert!(
        !html.contains("type=\"password\""),
        "code-server's login page: {html:.400}"
    );
    let status = websocket_status(orch_port, &path, &session).await;
    assert_eq!(status, 101, "the workbench's WebSocket through the proxy");
    // Headless Chromium renders that workbench, with the explorer (which needs the WebSocket
    // through the proxy and the tailnet into the pod).
    let t = Instant::now();
    common::render_editor_in_chromium(
        &loopback_url,
        TOKEN,
        &agent,
        "over the tailnet into the pod",
    )
    .await;
    println!(
        "MESH-POD editor_rendered_in_chromium_over_tailnet_s {:.1}",
        t.elapsed().as_secs_f64()
    );
    let pod = pods
        .list(&Default::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .find(|n| n.starts_with("atask-"))
        .expect("the agent pod");
    touch_in_agent(&pods, &pod, RELEASE).await;
    let done = eventually("task Succeeded", Duration::from_secs(200), || async {
        let tk = client.task(&task.id).await.ok()?;
        tk.status.is_terminal().then_some(tk)
    })
    .await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    let logs = client.logs(&task.id, 0).await.expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.line == "hello from a pod on the tailnet"),
        "{logs:?}"
    );
    eventually(
        "agent node gone from headscale",
        Duration::from_secs(30),
        || async { keys_node(&hs, agent.as_str()).await.is_none().then_some(()) },
    )
    .await;
}

/// The file the second test's task waits for (in the agent's workspace).
const RELEASE: &str = "/home/coder/workspace/.release";

/// The end of a log file, for a failure message.
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `POST /agents/editor/open`, then the proxied editor page with the session cookie (following
/// code-server's redirect to `./?folder=...`): the page's HTML, the session cookie and the
/// proxy path.
async fn open_workbench(base: &str, agent: &str) -> Result<(String, String, String), String> {
    const TOKEN: &str = "kube-mesh-pod-e2e-admin-token-0123456789";
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http
        .post(format!("{base}/agents/editor/open"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": agent, "org": "acme"}))
        .send()
        .await
        .map_err(|e| format!("editor open: {e}"))?;
    if resp.status() != 200 {
        let st = resp.status();
        return Err(format!(
            "editor open: {st} {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    let session = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or("no session cookie")?
        .to_owned();
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    let path = body["path"].as_str().ok_or("no path")?.to_owned();
    let page = format!("{base}{path}");
    let mut r = http
        .get(&page)
        .header("cookie", &session)
        .send()
        .await
        .map_err(|e| format!("editor page: {e}"))?;
    if r.status().is_redirection() {
        let loc = r.headers()["location"]
            .to_str()
            .map_err(|e| e.to_string())?
            .to_owned();
        if loc.contains("login") {
            return Err(format!("sent to code-server's login: {loc}"));
        }
        let next = reqwest::Url::parse(&page)
            .and_then(|u| u.join(&loc))
            .map_err(|e| e.to_string())?;
        r = http
            .get(next)
            .header("cookie", &session)
            .send()
            .await
            .map_err(|e| format!("workbench: {e}"))?;
    }
    let st = r.status();
    let text = r.text().await.map_err(|e| format!("workbench body: {e}"))?;
    if st != 200 {
        return Err(format!("proxied editor page: {st} {text:.300}"));
    }
    Ok((text, session, path))
}

/// The status of a WebSocket upgrade to code-server's remote-extension-host endpoint (what the
/// workbench opens first), through the proxy, from the page's origin.
async fn websocket_status(orch_port: u16, path: &str, session: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://127.0.0.1:{orch_port}{path}?reconnectionToken={}&reconnection=false&skipWebSocketFrames=false",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let mut req = url.as_str().into_client_request().expect("ws request");
    req.headers_mut()
        .insert("cookie", session.parse().expect("cookie header"));
    req.headers_mut().insert(
        "origin",
        format!("http://127.0.0.1:{orch_port}")
            .parse()
            .expect("origin header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("websocket through the proxy: {e}"),
    }
}

/// Creates `file` in the pod's agent container.
async fn touch_in_agent(pods: &Api<Pod>, pod: &str, file: &str) {
    use kube::api::AttachParams;
    let mut attached = pods
        .exec(
            pod,
            ["touch", file],
            &AttachParams::default()
                .container("agent")
                .stdout(false)
                .stderr(true),
        )
        .await
        .expect("exec touch");
    let mut err = String::new();
    if let Some(mut e) = attached.stderr() {
        let _ = e.read_to_string(&mut err).await;
    }
    attached.join().await.expect("touch finished");
    assert!(err.is_empty(), "touch {file}: {err}");
}

async fn keys_node(
    hs: &guildnet_mesh::headscale::HeadscaleClient,
    name: &str,
) -> Option<guildnet_mesh::headscale::Node> {
    hs.list_nodes(None)
        .await
        .ok()?
        .into_iter()
        .find(|n| n.name == name)
}
