//! `/api/setup/stream` over guildnet-mesh with the testbed's real headscale, tailscaled and
//! tailscale: "create" starts a local Headscale and joins this machine's userspace node;
//! "connect" to a server that does not answer fails at the probe with a clear message, and a
//! refused pre-auth key fails at the join without the key appearing anywhere.

mod support;

use guildnet_dashboard::mesh::{MeshBinaries, MeshSetup};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use support::*;

/// Runs one setup stream to its end; returns (event name, data) pairs.
async fn run(me: &Browserish, body: Value) -> Vec<(String, Value)> {
    let mut rx = me
        .sse(me.req(Method::POST, "/api/setup/stream").json(&body))
        .await;
    let mut out = Vec::new();
    while let Some(m) = next_msg(&mut rx, 120).await {
        let data: Value = serde_json::from_str(&m.data).expect("JSON data");
        let done = m.event == "done";
        out.push((m.event, data));
        if done {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_starts_headscale_and_joins_this_machine_and_connect_fails_clearly() {
    let bins = MeshBinaries {
        headscale: Some(guildnet_testbed::bin("headscale").expect("testbed headscale")),
        tailscaled: Some(guildnet_testbed::bin("tailscaled").expect("testbed tailscaled")),
        tailscale: Some(guildnet_testbed::bin("tailscale").expect("testbed tailscale")),
    };
    // A short state path: tailscaled's socket must fit in a unix socket path.
    let mesh_dir = tempfile::Builder::new().prefix("gm").tempdir().unwrap();
    let mesh = Arc::new(MeshSetup::new(mesh_dir.path(), bins));
    let flow = mesh.clone();
    let env = start(move |cfg| cfg.setup_flow = Some(flow)).await;
    let me = Browserish::login(&env.dash_url).await;

    let server_url = format!(
        "http://127.0.0.1:{}",
        guildnet_testbed::free_port().unwrap()
    );
    let events = run(
        &me,
        json!({"mode": "create", "hostname": "dash-node", "serverUrl": server_url}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done", "{names:?}");
    assert_eq!(done["ok"], true, "{events:?}");
    assert_eq!(names[0], "begin");
    for step in ["config", "start", "apiKey", "user", "preauthKey", "join"] {
        assert!(
            events
                .iter()
                .any(|(n, d)| n == "stepDone" && d["step"] == step),
            "no stepDone for {step}: {events:?}"
        );
    }
    let node = &done["result"]["node"];
    assert_eq!(node["backendState"], "Running", "{done}");
    assert_eq!(node["hostname"], "dash-node", "{done}");
    assert!(
        node["addresses"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x.as_str().is_some_and(|s| s.starts_with("100.")))),
        "no tailnet address: {done}"
    );
    assert!(mesh.socks5_addr().await.is_some());
    assert_eq!(done["result"]["headscaleUrl"], server_url.as_str());
    // Headscale's files are under the state dir, the API key private.
    let key_file = mesh_dir.path().join("headscale");
    assert!(key_file.is_dir());
    let (_, v) = me.json(Method::GET, "/api/setup", None).await;
    assert_eq!(v["configured"], true, "{v}");
    assert_eq!(v["setup"]["mode"], "create", "{v}");

    // Re-running create is idempotent: the same server, the node stays on the tailnet.
    let again = run(
        &me,
        json!({"mode": "create", "hostname": "dash-node", "serverUrl": server_url}),
    )
    .await;
    let (_, done2) = again.last().unwrap();
    assert_eq!(done2["ok"], true, "{again:?}");
    assert_eq!(done2["result"]["node"]["addresses"], node["addresses"]);
    assert!(
        again.iter().any(|(n, e)| n == "log"
            && e["line"]
                .as_str()
                .is_some_and(|m| m.contains("already on this tailnet"))),
        "the joined node is left alone: {again:?}"
    );

    // Connect to a server that does not answer: the probe step fails, clearly.
    let secret = "hskey-auth-notarealkey0123456789abcdef";
    let closed = format!(
        "http://127.0.0.1:{}",
        guildnet_testbed::free_port().unwrap()
    );
    let events = run(
        &me,
        json!({"mode": "connect", "hostname": "dash-node", "loginServer": closed, "authKey": secret}),
    )
    .await;
    let err = events
        .iter()
        .find(|(n, _)| n == "stepError")
        .expect("stepError");
    assert_eq!(err.1["step"], "probe", "{events:?}");
    assert!(
        err.1["message"].as_str().unwrap().contains("127.0.0.1"),
        "{err:?}"
    );
    assert_eq!(events.last().unwrap().1["ok"], false);
    assert!(!format!("{events:?}").contains(secret));

    // A machine that is not on the tailnet yet connects to the real server with a key the
    // server never issued: the join fails, without the key. (A node that already is on the
    // tailnet stays on it: `tailscale up` does not use the key then.)
    let fresh_dir = tempfile::Builder::new().prefix("gm").tempdir().unwrap();
    let fresh = Arc::new(MeshSetup::new(
        fresh_dir.path(),
        MeshBinaries {
            headscale: None,
            tailscaled: Some(guildnet_testbed::bin("tailscaled").unwrap()),
            tailscale: Some(guildnet_testbed::bin("tailscale").unwrap()),
        },
    ));
    let env2 = start(move |cfg| cfg.setup_flow = Some(fresh)).await;
    let me2 = Browserish::login(&env2.dash_url).await;
    let events = run(
        &me2,
        json!({"mode": "connect", "hostname": "dash-node", "loginServer": server_url, "authKey": secret}),
    )
    .await;
    let err = events
        .iter()
        .find(|(n, _)| n == "stepError")
        .unwrap_or_else(|| panic!("stepError: {events:?}"));
    assert_eq!(err.1["step"], "join", "{events:?}");
    assert_eq!(events.last().unwrap().1["ok"], false);
    assert!(!format!("{events:?}").contains(secret), "{events:?}");
    // Failed setups record nothing; the first dashboard keeps its create.
    let (_, v) = me2.json(Method::GET, "/api/setup", None).await;
    assert_eq!(v["configured"], false, "{v}");
    let (_, v) = me.json(Method::GET, "/api/setup", None).await;
    assert_eq!(v["setup"]["mode"], "create", "{v}");
}
