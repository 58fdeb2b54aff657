//! The editor proxy over the tailnet: real headscale and two userspace tailscaled nodes (the
//! orchestrator's and the agent's). The agent advertises its editor at its tailnet address; the
//! orchestrator, started with `--tailnet-socks5` (its node's SOCKS5 proxy), opens it and proxies
//! HTTP and WebSocket traffic to it through the tailnet: no port-forward, no open port.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use guildnet_core::names::OrgName;
use guildnet_mesh::headscale::HeadscaleSettings;
use guildnet_mesh::setup::{self, CreateOptions};
use guildnet_mesh::{MeshJoin, TailscaleMesh};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn testbed(name: &str) -> std::path::PathBuf {
    guildnet_testbed::bin(name).expect("testbed binary")
}

/// An editor stand-in on loopback: a WebSocket echo server.
async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_proxy_reaches_an_agent_over_the_tailnet() {
    let dir = tempfile::Builder::new()
        .prefix("gne")
        .tempdir_in("/tmp")
        .unwrap();
    let mut opts = CreateOptions::new(dir.path().join("headscale"));
    opts.headscale_bin = Some(testbed("headscale"));
    opts.settings = HeadscaleSettings::on_loopback(
        free_port(),
        free_port(),
        free_port(),
        free_udp_on(std::net::Ipv4Addr::LOCALHOST),
    );
    let created = setup::create(&opts, None).await.expect("headscale");
    let key = created.preauth_key.key.clone();

    let orch_node = tailnet::node(&dir.path().join("orch-node")).await;
    let agent_node = tailnet::node(&dir.path().join("agent-node")).await;
    for (n, host) in [(&orch_node, "orchestrator"), (&agent_node, "agent-pod")] {
        TailscaleMesh::new(n.cli().clone(), Some(created.client.clone()))
            .join(MeshJoin {
                login_server: created.url().to_owned(),
                auth_key: key.clone(),
                hostname: host.into(),
            })
            .await
            .expect("join");
    }
    let agent_ip = agent_node
        .cli()
        .status()
        .await
        .unwrap()
        .ipv4()
        .expect("agent tailnet ip")
        .to_string();
    orch_node
        .cli()
        .wait_for_peer("agent-pod", Duration::from_secs(60))
        .await
        .expect("agent node online");

    // The agent's editor listens on the agent host's loopback only; it advertises its tailnet
    // address, which the agent node forwards to that loopback port.
    let echo = echo_server().await;
    let advertise = format!("{agent_ip}:{echo}");
    let socks = orch_node.socks5_addr().to_string();
    let orch = Orchestrator::start_with(
        &dir.path().join("state"),
        free_port(),
        &["--tailnet-socks5", &socks],
        &[("GUILDNET_EDITOR_ADVERTISE", advertise.as_str())],
    );
    orch.wait_ready().await;
    let c = orch.client();
    let t = c
        .schedule(&OrgName::new("acme").unwrap(), "sleep 300", None)
        .await
        .unwrap();
    let agent = wait_running(&c, &t.id).await.agent.unwrap();
    let a = c.agent(&agent).await.unwrap();
    assert_eq!(a.editor_address.as_deref(), Some(advertise.as_str()));

    let opened: Value = reqwest::Client::new()
        .post(format!("{}/agents/editor/open", orch.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"name": agent, "org": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(opened["host"], agent_ip.as_str(), "{opened}");
    let path = opened["path"].as_str().unwrap().to_owned();

    let url = format!("ws://127.0.0.1:{}{path}ws", orch.port);
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket through the proxy and the tailnet");
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        let m = Message::text(format!("over the tailnet {i}"));
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), m);
    }
    ws.close(None).await.unwrap();
    c.cancel(&t.id).await.unwrap();
    drop(created);
}
