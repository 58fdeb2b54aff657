//! The mesh against real servers: headscale and userspace tailscaled from the testbed
//! (`scripts/testbed/install.sh headscale tailscale`), all on loopback.

use guildnet_core::seams::MeshError;
use guildnet_core::token::Secret;
use guildnet_mesh::headscale::{HeadscaleClient, HeadscaleError, HeadscaleSettings};
use guildnet_mesh::setup::{self, ConnectRequest, CreateOptions, Progress, SetupError};
use guildnet_mesh::tailscale::{TailscaleError, Tailscaled, TailscaledConfig};
use guildnet_mesh::{MeshJoin, TailscaleMesh};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

mod support;

const PEER_TIMEOUT: Duration = Duration::from_secs(30);

fn create_options(state: &Path) -> CreateOptions {
    let port = support::free_port;
    let mut o = CreateOptions::new(state);
    o.headscale_bin = Some(support::bin("headscale"));
    o.settings = HeadscaleSettings::on_loopback(port(), port(), port(), support::free_udp_port());
    o.user = "agents".into();
    o
}

/// Runs `create`, returning its outcome and every event it sent.
async fn run_create(
    opts: &CreateOptions,
) -> (Result<setup::CreateOutcome, SetupError>, Vec<Progress>) {
    let (tx, mut rx) = mpsc::channel(64);
    let res = setup::create(opts, Some(tx)).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (res, events)
}

async fn start_node(dir: &Path) -> Tailscaled {
    let mut c = TailscaledConfig::new(dir);
    c.tailscaled_bin = Some(support::bin("tailscaled"));
    c.tailscale_bin = Some(support::bin("tailscale"));
    c.plain_http_derp = true;
    Tailscaled::start(&c).await.expect("tailscaled starts")
}

/// A one-line HTTP server on 127.0.0.1: answers every request with `body`.
async fn serve_http(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_join_reach_over_the_tailnet_and_rerun() {
    let state = tempfile::Builder::new()
        .prefix("gnm")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let opts = create_options(state.path());

    // Create: real headscale, API key, user, pre-auth key; progress as events.
    let (res, events) = run_create(&opts).await;
    let mut first = res.expect("create succeeds");
    assert!(first.server.is_some(), "first run starts headscale");
    assert!(first.user_created && !first.api_key_reused);
    assert_eq!(first.user.name, "agents");
    let key = first.preauth_key.key.clone();
    let api_key = first.client.api_key().clone();
    assert!(key.expose().starts_with("hskey-auth-"));
    assert!(
        matches!(events.first(), Some(Progress::Begin { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Progress::Done { ok: true, .. })),
        "{events:?}"
    );
    for step in ["config", "start", "apiKey", "user", "preauthKey"] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Progress::StepDone { step: s, .. } if s == step)),
            "no stepDone for {step}: {events:?}"
        );
    }
    for e in &events {
        let j = e.to_json();
        assert!(
            !j.contains(key.expose()) && !j.contains(api_key.expose()),
            "{j}"
        );
    }
    let files = first.files.clone();
    assert_eq!(mode(&files.api_key), 0o600);
    assert_eq!(
        std::fs::read_to_string(&files.api_key).expect("api key file"),
        api_key.expose()
    );
    assert!(files.database.exists() && files.config.exists());

    // Two userspace nodes: A joins through the Mesh trait, B through the connect flow.
    let mut a = start_node(&state.path().join("a")).await;
    let mut b = start_node(&state.path().join("b")).await;
    let mesh_a = TailscaleMesh::new(a.cli().clone(), Some(first.client.clone()));
    let st_a = mesh_a
        .join(MeshJoin {
            login_server: first.url().to_owned(),
            auth_key: key.clone(),
            hostname: "node-a".into(),
        })
        .await
        .expect("node A joins");
    assert_eq!(st_a.hostname, "node-a");
    assert!(
        st_a.addresses.iter().any(|a| a.starts_with("100.64.")),
        "{st_a:?}"
    );

    let (tx, mut rx) = mpsc::channel(64);
    let conn = setup::connect(
        &ConnectRequest {
            headscale_url: first.url().to_owned(),
            auth_key: key.clone(),
            hostname: "node-b".into(),
        },
        Some(b.cli()),
        Duration::from_secs(30),
        Some(tx),
    )
    .await
    .expect("node B connects");
    let mut conn_events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        conn_events.push(e);
    }
    assert!(
        matches!(conn_events.last(), Some(Progress::Done { ok: true, .. })),
        "{conn_events:?}"
    );
    assert_eq!(conn.server_version.as_deref(), Some("v0.29.1"));
    let b_ip = conn
        .status
        .as_ref()
        .and_then(|s| s.ipv4())
        .expect("node B has an address");

    // Re-running connect for a node already on the tailnet leaves it there untouched (no
    // re-login, which would drop its connections), same address.
    let (tx, mut rx) = mpsc::channel(64);
    let again = setup::connect(
        &ConnectRequest {
            headscale_url: first.url().to_owned(),
            auth_key: key.clone(),
            hostname: "node-b".into(),
        },
        Some(b.cli()),
        Duration::from_secs(30),
        Some(tx),
    )
    .await
    .expect("connect re-run");
    assert_eq!(again.status.as_ref().and_then(|s| s.ipv4()), Some(b_ip));
    let mut again_events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        again_events.push(e);
    }
    assert!(
        again_events
            .iter()
            .any(|e| matches!(e, Progress::Log { line, .. }
            if line.contains("already on this tailnet"))),
        "{again_events:?}"
    );
    let prefs = b.cli().prefs().await.expect("prefs");
    assert_eq!(prefs.hostname, "node-b");
    assert_eq!(
        prefs.control_url.trim_end_matches('/'),
        first.url().trim_end_matches('/')
    );

    // They see each other online.
    let peer_b = a
        .cli()
        .wait_for_peer("node-b", PEER_TIMEOUT)
        .await
        .expect("A sees B");
    assert_eq!(peer_b.ipv4(), Some(b_ip));
    b.cli()
        .wait_for_peer("node-a", PEER_TIMEOUT)
        .await
        .expect("B sees A");
    let st = mesh_a.status().await.expect("status");
    assert!(
        st.peers.iter().any(|p| p.hostname == "node-b" && p.online),
        "{st:?}"
    );
    let nodes = first
        .client
        .list_nodes(Some("agents"))
        .await
        .expect("nodes");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.online), "{nodes:?}");

    // An HTTP service on B's loopback, reached from A over the tailnet: SOCKS5 and HTTP proxy.
    let port = serve_http("hello from node-b").await;
    let mut s = a
        .dial(&b_ip.to_string(), port)
        .await
        .expect("dial B via A's SOCKS5");
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("hello from node-b"),
        "{resp}"
    );
    let http = a.http_client(Duration::from_secs(10)).expect("client");
    let body = http
        .get(format!("http://{b_ip}:{port}/"))
        .send()
        .await
        .expect("GET via A's HTTP proxy")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "hello from node-b");

    // The Mesh trait mints keys through the API; they are listed (masked) for the user.
    let minted = mesh_a
        .create_auth_key("agents", false, true)
        .await
        .expect("mint");
    let listed = first.client.list_preauth_keys().await.expect("list keys");
    let info = listed
        .iter()
        .find(|k| {
            let p = k.masked_key.trim_end_matches('*');
            !p.is_empty() && minted.expose().starts_with(p)
        })
        .expect("minted key listed");
    assert!(info.ephemeral && !info.reusable && !info.used);

    // Node and API key management.
    let node_b = nodes.iter().find(|n| n.name == "node-b").expect("node-b");
    let renamed = first
        .client
        .rename_node(node_b.id, "editor-b")
        .await
        .expect("rename");
    assert_eq!(renamed.given_name, "editor-b");
    let extra = first
        .client
        .create_api_key(chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .expect("create api key");
    let keys = first.client.list_api_keys().await.expect("list api keys");
    let extra_info = keys
        .iter()
        .find(|k| extra.expose().starts_with(k.bare_prefix()))
        .expect("new key listed");
    first
        .client
        .expire_api_key(extra_info.bare_prefix())
        .await
        .expect("expire api key");
    let expired_client = HeadscaleClient::new(first.client.url(), extra.clone()).expect("client");
    let e = expired_client
        .list_users()
        .await
        .expect_err("expired API key");
    assert!(matches!(e, HeadscaleError::Auth { status: 401, .. }), "{e}");
    assert!(!e.to_string().contains(extra.expose()));

    // Re-running create while the server runs reuses everything.
    let (res, _) = run_create(&opts).await;
    let second = res.expect("re-run");
    assert!(second.server.is_none(), "reuses the running server");
    assert!(second.api_key_reused && !second.user_created);
    assert_eq!(second.user.id, first.user.id);
    assert_eq!(second.client.api_key(), &api_key);

    // After a restart too: same config, database, API key and user.
    if let Some(s) = first.server.as_mut() {
        s.stop();
    }
    let (res, events) = run_create(&opts).await;
    let third = res.expect("re-run after stop");
    assert!(third.server.is_some(), "starts headscale again");
    assert!(third.api_key_reused && !third.user_created, "{events:?}");
    assert_eq!(third.user.id, first.user.id);
    let nodes = third
        .client
        .list_nodes(None)
        .await
        .expect("nodes after restart");
    assert_eq!(nodes.len(), 2, "the database was kept");

    // Expire node A: its key no longer works.
    let node_a = nodes.iter().find(|n| n.name == "node-a").expect("node-a");
    let expired = third
        .client
        .expire_node(node_a.id)
        .await
        .expect("expire node");
    assert!(expired.expiry.is_some_and(|e| e <= chrono::Utc::now()));
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_and_unreachable_servers_fail_clearly() {
    let state = tempfile::Builder::new()
        .prefix("gnm")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let opts = create_options(state.path());
    let (res, _) = run_create(&opts).await;
    let created = res.expect("create");
    let url = created.url().to_owned();

    // A wrong API key is Auth, and the error does not contain it.
    let wrong = Secret::new("hskey-api-AAAAAAAAAAAA-wrongwrongwrongwrongwrongwrong");
    let c = HeadscaleClient::new(&url, wrong.clone()).expect("client");
    let e = c.list_users().await.expect_err("wrong key");
    assert!(matches!(e, HeadscaleError::Auth { .. }), "{e}");
    assert!(!e.to_string().contains(wrong.expose()) && !format!("{e:?}").contains(wrong.expose()));
    assert!(matches!(MeshError::from(e), MeshError::Auth(_)));

    // An unreachable URL is Unreachable, naming the URL.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let c = HeadscaleClient::new(&closed, wrong.clone()).expect("client");
    let e = c.list_users().await.expect_err("nothing listens");
    assert!(
        matches!(&e, HeadscaleError::Unreachable { url, .. } if *url == closed),
        "{e}"
    );
    assert!(!e.to_string().contains(wrong.expose()));

    // Something that is not Headscale's API (its metrics listener) is a VersionMismatch.
    let metrics = format!("http://{}", created.settings.metrics_listen_addr);
    let c = HeadscaleClient::new(&metrics, created.client.api_key().clone()).expect("client");
    let e = c.list_users().await.expect_err("no API there");
    assert!(matches!(e, HeadscaleError::VersionMismatch { .. }), "{e}");
    assert!(e.to_string().contains("/api/v1/user"), "{e}");

    // The connect flow: validation names the field; an unreachable server fails the probe.
    let bad = ConnectRequest {
        headscale_url: url.clone(),
        auth_key: Secret::new(""),
        hostname: "node-c".into(),
    };
    let e = setup::connect(&bad, None, Duration::from_secs(5), None)
        .await
        .expect_err("empty key");
    assert_eq!(e.field(), Some("TS_AUTHKEY"), "{e}");
    let (tx, mut rx) = mpsc::channel(64);
    let e = setup::connect(
        &ConnectRequest {
            headscale_url: closed.clone(),
            auth_key: Secret::new("hskey-auth-x"),
            hostname: "node-c".into(),
        },
        None,
        Duration::from_secs(5),
        Some(tx),
    )
    .await
    .expect_err("unreachable");
    assert!(
        matches!(e, SetupError::Headscale(HeadscaleError::Unreachable { .. })),
        "{e}"
    );
    let mut ev = Vec::new();
    while let Ok(x) = rx.try_recv() {
        ev.push(x);
    }
    assert!(
        ev.iter()
            .any(|x| matches!(x, Progress::StepError { step, .. } if step == "probe")),
        "{ev:?}"
    );
    assert!(
        matches!(ev.last(), Some(Progress::Done { ok: false, .. })),
        "{ev:?}"
    );

    // An expired pre-auth key: join fails with Auth, naming the reason, not the key.
    let mut node = start_node(&state.path().join("c")).await;
    let expired = created.preauth_key.clone();
    created
        .client
        .expire_preauth_key(expired.info.id)
        .await
        .expect("expire key");
    let listed = created.client.list_preauth_keys().await.expect("list");
    assert!(listed
        .iter()
        .any(|k| k.id == expired.info.id && k.is_expired(chrono::Utc::now())));
    let (tx, mut rx) = mpsc::channel(64);
    let e = setup::connect(
        &ConnectRequest {
            headscale_url: url.clone(),
            auth_key: expired.key.clone(),
            hostname: "node-c".into(),
        },
        Some(node.cli()),
        Duration::from_secs(20),
        Some(tx),
    )
    .await
    .expect_err("expired key");
    let text = e.to_string();
    assert!(
        matches!(e, SetupError::Tailscale(TailscaleError::Auth { .. })),
        "{text}"
    );
    assert!(text.contains("expired"), "{text}");
    assert!(!text.contains(expired.key.expose()), "{text}");
    while let Ok(x) = rx.try_recv() {
        assert!(!x.to_json().contains(expired.key.expose()), "{x:?}");
    }

    // A wrong pre-auth key, through the Mesh trait.
    let mesh = TailscaleMesh::new(node.cli().clone(), None);
    let wrong_key = Secret::new(format!("hskey-auth-BBBBBBBBBBBB-{}", "w".repeat(64)));
    let e = mesh
        .join(MeshJoin {
            login_server: url.clone(),
            auth_key: wrong_key.clone(),
            hostname: "node-c".into(),
        })
        .await
        .expect_err("wrong key");
    let text = e.to_string();
    assert!(matches!(e, MeshError::Auth(_)), "{text}");
    assert!(!text.contains(wrong_key.expose()), "{text}");
    let e = mesh
        .create_auth_key("agents", true, false)
        .await
        .expect_err("no API client");
    assert!(matches!(e, MeshError::Failed { .. }), "{e}");
    node.stop();
}
