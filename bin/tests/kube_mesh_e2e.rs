//! SIMULATION (kwok) of the agent pod, with everything else real: agents on the tailnet
//! (issue 22). Real kube-apiserver + kwok node, real headscale, real userspace tailscaled nodes,
//! the real `guildnet-orchestrator` (Kubernetes backend with `--mesh-headscale-url`) and
//! `guildnet-operator`.
//!
//! kwok pods run no process, so the test plays the kubelet from the pod spec the operator
//! built: it starts a userspace tailscaled as the sidecar would (the auth key read from the
//! Secret the `secretKeyRef` names, the host name and login server from the sidecar's env), then
//! the real `guildnet-agent` with the env Secret and the container env (its `HTTP_PROXY` pointed
//! at that tailscaled's proxy: the only difference, since the test's tailscaled cannot use the
//! pod's fixed loopback ports). The agent reaches the orchestrator at its tailnet address only,
//! through the proxy; the orchestrator reaches the "editor" (an HTTP server on the agent host's
//! loopback :8443, what code-server is in the pod) at the agent node's tailnet address through
//! its own node; when the task ends its node is gone from Headscale although its tailscaled
//! still runs, and the key was in no spec, log or event.

mod common;

use common::tailnet::{join, node};
use guildnet_core::client::OrchestratorClient;
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::agenttask_name;
use guildnet_kube::crd::{AgentTask, Phase};
use guildnet_mesh::headscale::HeadscaleSettings;
use guildnet_mesh::setup::{self, CreateOptions};
use guildnet_testbed::eventually;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::{free_port, process, Proc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "kube-mesh-e2e-admin-token-0123456789";

fn testbed(name: &str) -> std::path::PathBuf {
    guildnet_testbed::bin(name).expect("testbed binary")
}

/// The editor stand-in on the agent host's loopback :8443 (code-server's port in the pod).
async fn editor_stand_in() -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", guildnet_kube::EDITOR_PORT))
        .await
        .expect("127.0.0.1:8443 must be free for the editor stand-in");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "editor over the tailnet";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    })
}

fn env_value<'a>(env: &'a [Value], name: &str) -> Option<&'a Value> {
    env.iter().find(|e| e["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_the_tailnet_claims_over_it_and_its_node_goes_at_task_end() {
    let dir = tempfile::Builder::new()
        .prefix("gkm")
        .tempdir_in("/tmp")
        .expect("tempdir");
    // Headscale and the orchestrator host's node.
    let mut opts = CreateOptions::new(dir.path().join("headscale"));
    opts.headscale_bin = Some(testbed("headscale"));
    opts.settings = HeadscaleSettings::on_loopback(
        free_port().expect("port"),
        free_port().expect("port"),
        free_port().expect("port"),
        common::free_udp_on(std::net::Ipv4Addr::LOCALHOST),
    );
    let created = setup::create(&opts, None).await.expect("headscale");
    let hs = created.client.clone();
    let orch_node = node(&dir.path().join("on")).await;
    join(
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
        .expect("orchestrator tailnet ip")
        .to_string();
    let key_file = dir.path().join("headscale-api.key");
    std::fs::write(&key_file, hs.api_key().expose()).expect("key file");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let cluster = KubeCluster::start_with_workloads()
        .await
        .expect("control plane + kwok");
    let admin = cluster.client().await.expect("admin client");
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
    let loopback_url = format!("http://127.0.0.1:{orch_port}");
    // What agents use: the orchestrator's address on the tailnet (its node forwards it to the
    // loopback listener).
    let tailnet_url = format!("http://{orch_ip}:{orch_port}");
    let _operator = Proc::spawn(
        "guildnet-operator",
        operator_bin,
        [
            "run".to_owned(),
            "--kubeconfig".to_owned(),
            cluster.kubeconfig_path().display().to_string(),
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{}", free_port().expect("port")),
            // A pod-network URL: spec.mesh.orchestratorUrl must win over it.
            "--public-orchestrator-url".to_owned(),
            loopback_url.clone(),
        ],
        &[],
        &dir.path().join("operator.log"),
    )
    .expect("start operator");
    let socks = orch_node.socks5_addr().to_string();
    let _orchestrator = Proc::spawn(
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
            "example.invalid/guildnet-agent:test",
            "--tailnet-socks5",
            &socks,
            "--mesh-headscale-url",
            created.url(),
            "--mesh-api-key-file",
            &key_file.display().to_string(),
            "--mesh-tag",
            "tag:guildnet-agent",
        ],
        &[
            ("GUILDNET_STATE_DIR", state.as_os_str()),
            ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
        ],
        &dir.path().join("orchestrator.log"),
    )
    .expect("start orchestrator");

    let client = OrchestratorClient::new(&loopback_url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator ready", Duration::from_secs(30), || async {
        client.health().await.ok()
    })
    .await;
    // The flags set the mesh: GET /mesh says so, and they win over PUT /mesh.
    let shown = client.mesh().await.expect("GET /mesh");
    assert_eq!(shown.source.as_deref(), Some("flags"), "{shown:?}");
    assert_eq!(shown.headscale_url.as_deref(), Some(created.url()));
    let refused = client
        .set_mesh(&guildnet_core::api::MeshRequest {
            headscale_url: created.url().to_owned(),
            login_server: None,
            api_key: hs.api_key().expose().to_owned(),
            user: None,
            tags: Vec::new(),
            hostname: None,
        })
        .await
        .expect_err("the flags win");
    assert_eq!(refused.status(), Some(409), "{refused}");
    let release = dir.path().join("release");
    let task = client
        .schedule(
            &OrgName::new("acme").expect("org"),
            &format!(
                "echo hello over the tailnet; while [ ! -e {} ]; do sleep 0.2; done; echo done",
                release.display()
            ),
            None,
        )
        .await
        .expect("schedule");
    let name = agenttask_name(&task.id);
    let ns = "mvp-agents";
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), ns);
    eventually("AgentTask Running", Duration::from_secs(60), || async {
        let at = tasks.get_opt(&name).await.ok()??;
        (at.status?.phase == Phase::Running).then_some(())
    })
    .await;
    let at = tasks.get(&name).await.expect("AgentTask");
    let mesh = at.spec.mesh.clone().expect("spec.mesh set");
    assert_eq!(mesh.login_server, created.url());
    assert_eq!(mesh.orchestrator_url.as_deref(), Some(tailnet_url.as_str()));
    let hostname = mesh.hostname.clone();

    // The pod spec the operator built: the sidecar and the agent's proxy environment.
    let dep = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(&name)
        .await
        .expect("Deployment");
    let dep = serde_json::to_value(&dep).expect("json");
    let pod = &dep["spec"]["template"]["spec"];
    let side = &pod["initContainers"][0];
    assert_eq!(side["name"], "tailscale");
    assert_eq!(side["restartPolicy"], "Always");
    let side_env = side["env"].as_array().expect("sidecar env").clone();
    assert_eq!(
        env_value(&side_env, "TS_USERSPACE").map(|e| &e["value"]),
        Some(&json!("true"))
    );
    assert_eq!(
        env_value(&side_env, "TS_HOSTNAME").map(|e| &e["value"]),
        Some(&json!(hostname))
    );
    let extra = env_value(&side_env, "TS_EXTRA_ARGS").expect("TS_EXTRA_ARGS")["value"]
        .as_str()
        .expect("str")
        .to_owned();
    let login = extra.strip_prefix("--login-server=").expect("login server");
    assert_eq!(login, created.url());
    let key_ref =
        &env_value(&side_env, "TS_AUTHKEY").expect("TS_AUTHKEY")["valueFrom"]["secretKeyRef"];
    let secrets = Api::<Secret>::namespaced(admin.clone(), ns);
    let creds = secrets
        .get(key_ref["name"].as_str().expect("secret name"))
        .await
        .expect("credentials Secret");
    let auth_key = creds
        .data
        .as_ref()
        .and_then(|d| d.get(key_ref["key"].as_str().expect("key")))
        .map(|b| String::from_utf8(b.0.clone()).expect("utf8"))
        .expect("the auth key is in the credentials Secret");
    assert!(auth_key.starts_with("hskey-auth-"));
    let spec_json = serde_json::to_string(&at).expect("json");
    assert!(
        !spec_json.contains(&auth_key),
        "the key is in the AgentTask"
    );
    let dep_json = dep.to_string();
    assert!(
        !dep_json.contains(&auth_key),
        "the key is in the Deployment"
    );
    let agent_container = &pod["containers"][0];
    let agent_env = agent_container["env"].as_array().expect("env").clone();

    // Play the kubelet: the sidecar joins with the key from the Secret...
    let agent_node = node(&dir.path().join("an")).await;
    join(&agent_node, login, &Token::new(auth_key.clone()), &hostname).await;
    let agent_ip = agent_node
        .cli()
        .status()
        .await
        .expect("status")
        .ipv4()
        .expect("agent ip")
        .to_string();
    let listed = hs.list_nodes(None).await.expect("nodes");
    let n = listed
        .iter()
        .find(|n| n.name == hostname)
        .expect("agent node listed");
    assert_eq!(n.tags, vec!["tag:guildnet-agent".to_owned()], "{n:?}");
    agent_node
        .cli()
        .wait_for_peer("orchestrator", Duration::from_secs(60))
        .await
        .expect("orchestrator node seen from the agent node");

    // ... then the agent, with the env Secret and the container's env.
    let env_secret = secrets
        .get(&format!("{name}-env"))
        .await
        .expect("env secret");
    let mut env: Vec<(String, String)> = env_secret
        .data
        .expect("data")
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).expect("utf8")))
        .collect();
    for e in &agent_env {
        let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) else {
            continue;
        };
        // The pod's sidecar proxy is on 127.0.0.1:1056; this node's is elsewhere.
        let v = v.replace(
            &format!("http://{}", guildnet_kube::mesh_sidecar::HTTP_PROXY_ADDR),
            &agent_node.http_proxy_url(),
        );
        env.push((k.to_owned(), v));
    }
    let get = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("ORCHESTRATOR_URL"), Some(tailnet_url.clone()));
    assert_eq!(get("HTTP_PROXY"), Some(agent_node.http_proxy_url()));
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    env.retain(|(k, _)| {
        k != "GUILDNET_WORKSPACE"
            && k != "GUILDNET_STATE_DIR"
            && k != "GUILDNET_CODE_SERVER"
            && k != "GUILDNET_EDITOR_ADDR"
            && k != "GUILDNET_HEALTH_ADDR"
    });
    env.push(("GUILDNET_RUNNER".into(), "sh -s".into()));
    env.push(("GUILDNET_WORKSPACE".into(), workspace.display().to_string()));
    env.push((
        "GUILDNET_STATE_DIR".into(),
        dir.path().join("agent-state").display().to_string(),
    ));
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
    let running = eventually("task Running", Duration::from_secs(90), || async {
        let t = client.task(&task.id).await.ok()?;
        (t.status == TaskStatus::Running).then_some(t)
    })
    .await;
    let agent = running.agent.clone().expect("agent");
    assert_eq!(agent.as_str(), hostname);

    // The editor, over the tailnet: no port-forward.
    let _editor = editor_stand_in().await;
    let http = reqwest::Client::new();
    let opened: Value = http
        .post(format!("{loopback_url}/agents/editor/open"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": agent, "org": "acme"}))
        .send()
        .await
        .expect("open")
        .json()
        .await
        .expect("json");
    assert_eq!(opened["host"], agent_ip.as_str(), "{opened}");
    let path = opened["path"].as_str().expect("path").to_owned();
    let body = http
        .get(format!("{loopback_url}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("proxied")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "editor over the tailnet");

    // Task end: Succeeded, and the node is removed from Headscale at once (its tailscaled
    // still runs, so this is not Headscale's inactivity cleanup).
    std::fs::write(&release, b"").expect("release");
    let done = eventually("task Succeeded", Duration::from_secs(60), || async {
        let t = client.task(&task.id).await.ok()?;
        matches!(t.status, TaskStatus::Succeeded | TaskStatus::Failed).then_some(t)
    })
    .await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    let logs = client.logs(&task.id, 0).await.expect("logs");
    let text: Vec<&str> = logs.iter().map(|l| l.line.as_str()).collect();
    assert!(text.contains(&"hello over the tailnet"), "{text:?}");
    eventually(
        "agent node gone from headscale",
        Duration::from_secs(20),
        || async {
            let nodes = hs.list_nodes(None).await.ok()?;
            (!nodes.iter().any(|n| n.name == hostname)).then_some(())
        },
    )
    .await;
    assert!(
        hs.list_nodes(None)
            .await
            .expect("nodes")
            .iter()
            .any(|n| n.name == "orchestrator"),
        "only the agent's node goes"
    );

    // The key is in no log and no event.
    let events = Api::<Event>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    let events = serde_json::to_string(&events.items).expect("json");
    assert!(!events.contains(&auth_key), "the key is in an event");
    for log in ["operator.log", "orchestrator.log", "agent.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        assert!(!text.contains(&auth_key), "the key is in {log}");
        assert!(
            !text.contains(hs.api_key().expose()),
            "the API key is in {log}"
        );
    }
}
