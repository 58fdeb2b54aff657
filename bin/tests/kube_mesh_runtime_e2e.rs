//! A mesh created in the dashboard reaches the orchestrator (issue 22), with no flags and no
//! restart. Real `guildnet up --backend kubernetes` (orchestrator and dashboard in one
//! process), the testbed's real headscale, tailscaled and tailscale, a real kube-apiserver with
//! a kwok node (SIMULATION of the agent pod: kwok runs no container, so the test plays the
//! sidecar with a real userspace tailscaled and the editor with a loopback HTTP server, as
//! `kube_mesh_e2e` does).
//!
//! 1. Log in to the dashboard and run its "create" flow: a local Headscale, this machine's
//!    node, then the last step hands the mesh to the orchestrator (`PUT /mesh`): the
//!    orchestrator's host joins the tailnet with a node of its own.
//! 2. `GET /mesh` (and `guildnet mesh show`) shows it joined, without the API key; Headscale
//!    lists the node; a `PUT /mesh` with a wrong API key is refused (502) and changes nothing.
//! 3. A task of org `acme` gets a single-use pre-auth key minted (in its credentials Secret)
//!    and `spec.mesh` set, with the orchestrator's tailnet URL for the agent.
//! 4. The agent's node joins with that key and registers at the orchestrator's tailnet URL
//!    through it; the orchestrator opens its editor over the tailnet through its own node (no
//!    port-forward).
//! 5. After a restart the mesh is still set (kept 0600 in the state dir); the dashboard's
//!    create flow run again (its Headscale lives in the dashboard's process) finds the
//!    orchestrator's node at the same address; `DELETE /mesh` removes the mesh and the node.
//!
//! The API key is in no reply and no log.

mod common;

use common::tailnet::{join, node};
use guildnet_core::client::OrchestratorClient;
use guildnet_core::names::OrgName;
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::agenttask_name;
use guildnet_kube::crd::AgentTask;
use guildnet_mesh::headscale::HeadscaleClient;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::{eventually, free_port, process, Proc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "kube-mesh-runtime-admin-token-0123456789";
const PASSWORD: &str = "kube-mesh-runtime-dashboard-pw";

fn testbed(name: &str) -> std::path::PathBuf {
    guildnet_testbed::bin(name).expect("testbed binary")
}

/// `guildnet up` with the Kubernetes backend and no mesh flags.
fn guildnet_up(dir: &Path, orch_port: u16, dash_port: u16, log: &str) -> Proc {
    let state = dir.join("state");
    let (hs, tsd, ts) = (
        testbed("headscale"),
        testbed("tailscaled"),
        testbed("tailscale"),
    );
    Proc::spawn(
        "guildnet up",
        Path::new(env!("CARGO_BIN_EXE_guildnet")),
        [
            "up".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{orch_port}"),
            "--dashboard-listen".to_owned(),
            format!("127.0.0.1:{dash_port}"),
            "--org".to_owned(),
            "acme".to_owned(),
            "--backend".to_owned(),
            "kubernetes".to_owned(),
            "--agent-image".to_owned(),
            "example.invalid/guildnet-agent:test".to_owned(),
            "--login-link".to_owned(),
            "never".to_owned(),
        ],
        &[
            ("GUILDNET_STATE_DIR", state.as_os_str()),
            ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
            ("GUILDNET_DASHBOARD_PASSWORD", OsStr::new(PASSWORD)),
            ("GUILDNET_HEADSCALE", hs.as_os_str()),
            ("GUILDNET_TAILSCALED", tsd.as_os_str()),
            ("GUILDNET_TAILSCALE", ts.as_os_str()),
            ("RUST_LOG", OsStr::new("info")),
        ],
        &dir.join(log),
    )
    .expect("start guildnet up")
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
                let body = "editor over the runtime tailnet";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    })
}

/// Runs the dashboard's setup stream to its end: (event, data, seconds since the start).
async fn setup_stream(dash: &str, session: &str, body: Value) -> Vec<(String, Value, f64)> {
    use futures_util::StreamExt;
    let t0 = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{dash}/api/setup/stream"))
        .header("cookie", session)
        .header("origin", dash)
        .json(&body)
        .send()
        .await
        .expect("setup stream");
    assert_eq!(resp.status(), 200, "setup stream refused");
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(_) => break,
            Err(_) => panic!("setup stream did not end: {out:?}"),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let block = buf[..i].to_owned();
            buf.drain(..i + 2);
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if name.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            let done = name == "done";
            out.push((name, v, t0.elapsed().as_secs_f64()));
            if done {
                return out;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_created_in_the_dashboard_reaches_the_orchestrator_and_its_kubernetes_agents() {
    // A short path: tailscaled's socket must fit in a unix socket path.
    let dir = tempfile::Builder::new()
        .prefix("gmr")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let state = dir.path().join("state");
    let cluster = KubeCluster::start_with_workloads()
        .await
        .expect("control plane + kwok");
    let admin = cluster.client().await.expect("admin client");
    std::fs::create_dir_all(state.join("kube")).expect("mkdir");
    std::fs::copy(cluster.kubeconfig_path(), state.join("kube/acme.config")).expect("kubeconfig");
    let out = process::run(
        Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
        [
            OsStr::new("install"),
            OsStr::new("--kubeconfig"),
            cluster.kubeconfig_path().as_os_str(),
        ],
        &[],
    )
    .await
    .expect("guildnet-operator install (the AgentTask CRD)");
    assert!(out.contains("installed"), "{out}");

    let (orch_port, dash_port) = (free_port().expect("port"), free_port().expect("port"));
    let up = guildnet_up(dir.path(), orch_port, dash_port, "up.log");
    let orch_url = format!("http://127.0.0.1:{orch_port}");
    let dash_url = format!("http://127.0.0.1:{dash_port}");
    let client = OrchestratorClient::new(&orch_url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator ready", Duration::from_secs(60), || async {
        client.health().await.ok()
    })
    .await;
    let before = client.mesh().await.expect("GET /mesh");
    assert!(before.available && !before.configured, "{before:?}");

    // 1. The dashboard's create flow, ending with the hand-over.
    let login = reqwest::Client::new()
        .post(format!("{dash_url}/api/login"))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200);
    let session = login.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie")
        .to_owned();
    let hs_port = free_port().expect("port");
    let server_url = format!("http://127.0.0.1:{hs_port}");
    let events = setup_stream(
        &dash_url,
        &session,
        json!({"mode": "create", "hostname": "dash-node", "serverUrl": server_url,
               "listenAddr": format!("127.0.0.1:{hs_port}")}),
    )
    .await;
    let (last, done, total) = events.last().cloned().expect("events");
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["ok"], true, "{events:?}");
    let at = |kind: &str, step: &str| {
        events
            .iter()
            .find(|(n, d, _)| n == kind && d["step"] == step)
            .map(|(_, _, t)| *t)
            .unwrap_or_else(|| panic!("no {kind} {step}: {events:?}"))
    };
    let handover = at("stepDone", "orchestrator") - at("step", "orchestrator");
    eprintln!(
        "FIGURES: dashboard create flow {total:.1} s in all (local mesh joined at {:.1} s); \
         hand-over to the orchestrator (PUT /mesh: its node starts and joins) {handover:.1} s",
        at("stepDone", "join")
    );
    let handed = &done["result"]["orchestrator"];
    assert_eq!(handed["handedOver"], true, "{done}");

    // 2. The orchestrator is on the tailnet; the key is nowhere in its replies.
    let mesh_file = state.join("mesh/mesh.json");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&mesh_file).expect("mesh.json"))
            .expect("json");
    let api_key = saved["apiKey"].as_str().expect("apiKey").to_owned();
    assert!(api_key.len() > 10);
    let mode = std::fs::metadata(&mesh_file)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "mesh.json mode {mode:o}");
    let raw = reqwest::Client::new()
        .get(format!("{orch_url}/mesh"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /mesh")
        .text()
        .await
        .expect("body");
    assert!(
        !raw.contains(&api_key),
        "GET /mesh shows the API key: {raw}"
    );
    let st = client.mesh().await.expect("GET /mesh");
    assert!(st.configured && st.joined, "{st:?}");
    assert_eq!(st.source.as_deref(), Some("api"));
    assert_eq!(st.headscale_url.as_deref(), Some(server_url.as_str()));
    let orch_ip = st
        .tailnet_ips
        .iter()
        .find(|a| a.starts_with("100."))
        .expect("orchestrator tailnet IPv4")
        .clone();
    let tailnet_url = format!("http://{orch_ip}:{orch_port}");
    assert_eq!(st.orchestrator_url.as_deref(), Some(tailnet_url.as_str()));
    // A refused API key changes nothing, and the error does not quote it.
    let wrong = "hskey-api-wrongwrong-0123456789abcdef";
    let refused = client
        .set_mesh(&guildnet_core::api::MeshRequest {
            headscale_url: server_url.clone(),
            login_server: None,
            api_key: wrong.to_owned(),
            user: None,
            tags: Vec::new(),
            hostname: None,
        })
        .await
        .expect_err("a wrong API key");
    assert_eq!(refused.status(), Some(502), "{refused}");
    assert!(!refused.to_string().contains(wrong), "{refused}");
    let still = client.mesh().await.expect("GET /mesh");
    assert!(
        still.joined && still.tailnet_ips == st.tailnet_ips,
        "{still:?}"
    );
    // The CLI shows it too.
    let shown = process::run(
        Path::new(env!("CARGO_BIN_EXE_guildnet")),
        ["--url", orch_url.as_str(), "--token", TOKEN, "mesh", "show"],
        &[],
    )
    .await
    .expect("guildnet mesh show");
    assert!(
        shown.contains("from api") && shown.contains(&format!("joined at {orch_ip}")),
        "{shown}"
    );
    assert!(!shown.contains(&api_key), "{shown}");
    let hs = HeadscaleClient::new(&server_url, Token::new(api_key.clone())).expect("client");
    let nodes = hs.list_nodes(None).await.expect("nodes");
    assert!(
        nodes.iter().any(|n| n.name == "guildnet-orchestrator"),
        "{nodes:?}"
    );
    assert!(nodes.iter().any(|n| n.name == "dash-node"), "{nodes:?}");

    // 3. A task's agent gets a key and spec.mesh, without a restart.
    let task = client
        .schedule(
            &OrgName::new("acme").expect("org"),
            "echo on the tailnet",
            None,
        )
        .await
        .expect("schedule");
    let ns = "mvp-agents";
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), ns);
    let name = agenttask_name(&task.id);
    let at = eventually("AgentTask", Duration::from_secs(60), || async {
        tasks.get_opt(&name).await.ok()?
    })
    .await;
    let mesh = at.spec.mesh.clone().expect("spec.mesh set");
    assert_eq!(mesh.login_server, server_url);
    assert_eq!(mesh.orchestrator_url.as_deref(), Some(tailnet_url.as_str()));
    let hostname = mesh.hostname.clone();
    let creds = Api::<Secret>::namespaced(admin.clone(), ns)
        .get(&guildnet_kube::crd::credentials_secret_name(&at))
        .await
        .expect("credentials Secret");
    let auth_key = creds
        .data
        .as_ref()
        .and_then(|d| d.get(guildnet_kube::mesh_sidecar::CREDENTIALS_AUTHKEY_KEY))
        .map(|b| String::from_utf8(b.0.clone()).expect("utf8"))
        .expect("the agent's pre-auth key is in the credentials Secret");
    assert!(auth_key.starts_with("hskey-auth-"), "not a pre-auth key");

    // 4. The agent's node joins with it; its editor is served over the tailnet.
    let agent_node = node(&dir.path().join("an")).await;
    join(
        &agent_node,
        &server_url,
        &Token::new(auth_key.clone()),
        &hostname,
    )
    .await;
    let agent_ip = agent_node
        .cli()
        .status()
        .await
        .expect("status")
        .ipv4()
        .expect("agent ip")
        .to_string();
    agent_node
        .cli()
        .wait_for_peer("guildnet-orchestrator", Duration::from_secs(60))
        .await
        .expect("the orchestrator's node is seen from the agent's");
    // The agent registers at the orchestrator's tailnet URL, through its node's proxy (what
    // the pod's HTTP_PROXY does).
    let agent_token = creds
        .data
        .as_ref()
        .and_then(|d| d.get(guildnet_kube::crd::CREDENTIALS_TOKEN_KEY))
        .map(|b| String::from_utf8(b.0.clone()).expect("utf8"))
        .expect("agent token");
    let via_tailnet = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(agent_node.http_proxy_url()).expect("proxy"))
        .build()
        .expect("client");
    eventually(
        "the agent registers over the tailnet",
        Duration::from_secs(60),
        || async {
            let r = via_tailnet
                .post(format!("{tailnet_url}/agent/register"))
                .bearer_auth(&agent_token)
                .json(&json!({"agent": hostname}))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    let _editor = editor_stand_in().await;
    let http = reqwest::Client::new();
    let agent = hostname.clone();
    let opened: Value = http
        .post(format!("{orch_url}/agents/editor/open"))
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
        .get(format!("{orch_url}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("proxied")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "editor over the runtime tailnet");
    client.cancel(&task.id).await.expect("cancel");
    eventually(
        "agent node gone from headscale",
        Duration::from_secs(30),
        || async {
            let nodes = hs.list_nodes(None).await.ok()?;
            (!nodes.iter().any(|n| n.name == hostname)).then_some(())
        },
    )
    .await;

    // 5. A restart keeps the mesh (the dashboard's Headscale went with the first process: the
    // node waits for it, the setting and the agents' URL are back at once).
    drop(up);
    let up = guildnet_up(dir.path(), orch_port, dash_port, "up2.log");
    eventually(
        "orchestrator ready again",
        Duration::from_secs(60),
        || async { client.health().await.ok() },
    )
    .await;
    let st = client.mesh().await.expect("GET /mesh");
    assert!(st.configured, "{st:?}");
    assert_eq!(st.source.as_deref(), Some("api"));
    assert_eq!(st.orchestrator_url.as_deref(), Some(tailnet_url.as_str()));
    // Running the dashboard's create flow again (what brings its Headscale back after a
    // restart) hands the mesh over again: the orchestrator's node is the same (same address).
    let login = reqwest::Client::new()
        .post(format!("{dash_url}/api/login"))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("login");
    let session = login.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie")
        .to_owned();
    let again = setup_stream(
        &dash_url,
        &session,
        json!({"mode": "create", "hostname": "dash-node", "serverUrl": server_url,
               "listenAddr": format!("127.0.0.1:{hs_port}")}),
    )
    .await;
    let (_, done, _) = again.last().cloned().expect("events");
    assert_eq!(done["ok"], true, "{again:?}");
    let st = eventually("joined again", Duration::from_secs(60), || async {
        let st = client.mesh().await.ok()?;
        st.joined.then_some(st)
    })
    .await;
    assert!(st.tailnet_ips.contains(&orch_ip), "{st:?}");
    assert_eq!(st.orchestrator_url.as_deref(), Some(tailnet_url.as_str()));
    // DELETE: the node leaves Headscale, the setting goes.
    let cleared = client.delete_mesh().await.expect("DELETE /mesh");
    assert!(!cleared.configured, "{cleared:?}");
    assert!(!mesh_file.exists(), "mesh.json removed");
    let nodes = hs.list_nodes(None).await.expect("nodes");
    assert!(
        !nodes.iter().any(|n| n.name == "guildnet-orchestrator"),
        "{nodes:?}"
    );
    drop(up);

    for log in ["up.log", "up2.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        assert!(!text.contains(&api_key), "the API key is in {log}");
        assert!(!text.contains(&auth_key), "the agent's key is in {log}");
    }
}
