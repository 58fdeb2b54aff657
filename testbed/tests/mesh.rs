//! Smoke tests of the real headscale and tailscaled (userspace networking) on loopback.
//!
//! In every test the `Headscale` is declared first, so it is dropped last: the tailscaled nodes
//! stop while their control server is still up.

use guildnet_testbed::eventually;
use guildnet_testbed::mesh::{Headscale, Tailscaled};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A one-route HTTP server on the host's 127.0.0.1 that answers every request with `body` and
/// closes the connection. Returns its port.
async fn serve_body(body: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                // Read the request head (the clients here send no body).
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn headscale_creates_user_and_preauth_key() {
    let hs = Headscale::start().await.expect("headscale");
    assert!(hs.api_key().starts_with("hskey-api-"), "{}", hs.api_key());
    assert!(hs.config_path().is_file());

    let user = hs.create_user("guildnet").await.expect("create user");
    assert_eq!(user.name, "guildnet");
    assert!(!user.id.is_empty());
    let key = hs
        .create_preauth_key(&user.id, true, false)
        .await
        .expect("create preauth key");
    assert!(!key.is_empty());
    assert!(
        key.len() >= 32,
        "suspiciously short key ({} chars)",
        key.len()
    );

    // The REST API, with the API key, lists both.
    let users = hs.users().await.expect("list users");
    assert!(users.contains(&user), "{users:?}");
    let keys = hs.preauth_keys().await.expect("list preauth keys");
    let listed = keys
        .iter()
        .find(|k| k.matches(&key))
        .unwrap_or_else(|| panic!("the new key is not listed: {keys:?}"));
    assert_eq!(listed.user, "guildnet");
    assert!(
        listed.reusable && !listed.ephemeral && !listed.used,
        "{listed:?}"
    );
    assert!(
        !listed.masked_key.contains(&key),
        "the REST API shows the whole key"
    );
    assert!(hs.nodes().await.expect("list nodes").is_empty());

    // A wrong API key, or none, is refused.
    for bad in ["hskey-api-notarealkey-0123456789", ""] {
        let (status, body) = hs.api_get("/api/v1/user", bad).await.expect("request");
        assert!(
            status == 401 || status == 403,
            "API key {bad:?}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn two_tailscaled_join_and_reach_http_over_the_tailnet() {
    let started = Instant::now();
    let hs = Headscale::start().await.expect("headscale");
    let user = hs.create_user("agents").await.expect("user");
    let key = hs
        .create_preauth_key(&user.id, true, false)
        .await
        .expect("key");
    let (a, b) = tokio::join!(Tailscaled::start("a"), Tailscaled::start("b"));
    let mut a = a.expect("tailscaled a");
    let mut b = b.expect("tailscaled b");
    let (up_a, up_b) = tokio::join!(
        a.up(hs.url(), &key, "node-a"),
        b.up(hs.url(), &key, "node-b")
    );
    up_a.expect("a joins");
    up_b.expect("b joins");
    let joined = started.elapsed();

    let a_ip = a.ipv4().await.expect("a's address");
    let b_ip = b.ipv4().await.expect("b's address");
    assert_ne!(a_ip, b_ip);
    let a_status = a.status().await.expect("a status");
    assert_eq!(a_status.backend_state, "Running");
    assert!(a_status.self_node.as_ref().is_some_and(|s| s.online));

    let seen_by_a = a
        .wait_for_peer("node-b", Duration::from_secs(60))
        .await
        .expect("a sees b online");
    assert_eq!(seen_by_a.ipv4(), Some(b_ip));
    let seen_by_b = b
        .wait_for_peer("node-a", Duration::from_secs(60))
        .await
        .expect("b sees a online");
    assert_eq!(seen_by_b.ipv4(), Some(a_ip));
    let peered = started.elapsed();

    // An HTTP server on the host's loopback. B's netstack forwards tailnet TCP connections to
    // B's address to the same port on 127.0.0.1.
    let body = format!("hello over the tailnet {}", std::process::id());
    let port = serve_body(body.clone()).await;

    // Through A's outbound HTTP proxy.
    let via_a = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(a.http_proxy_url()).expect("proxy"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("http://{b_ip}:{port}/");
    let (status, got) = eventually(
        "HTTP over the tailnet via A's proxy",
        Duration::from_secs(60),
        || async {
            let r = via_a.get(&url).send().await.ok()?;
            let status = r.status();
            Some((status, r.text().await.ok()?))
        },
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{got}");
    assert_eq!(got, body);

    // Through A's SOCKS5 server, by node name, as raw TCP.
    let mut conn = tokio::time::timeout(Duration::from_secs(30), a.dial("node-b", port))
        .await
        .expect("SOCKS5 dial in time")
        .expect("SOCKS5 dial");
    conn.write_all(b"GET / HTTP/1.1\r\nhost: node-b\r\n\r\n")
        .await
        .expect("write");
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut resp))
        .await
        .expect("response in time")
        .expect("read");
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.ends_with(&body), "{resp}");

    // Headscale's REST API (with the API key) lists both nodes online.
    let nodes = eventually(
        "both nodes online in headscale",
        Duration::from_secs(30),
        || async {
            let nodes = hs.nodes().await.ok()?;
            (nodes.len() == 2 && nodes.iter().all(|n| n.online)).then_some(nodes)
        },
    )
    .await;
    for (name, ip) in [("node-a", a_ip), ("node-b", b_ip)] {
        let n = nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name} missing: {nodes:?}"));
        assert!(n.ip_addresses.contains(&ip.to_string()), "{nodes:?}");
        assert_eq!(n.user, "agents");
    }

    let stopping = Instant::now();
    a.stop();
    b.stop();
    eprintln!(
        "joined after {joined:?}, peered after {peered:?}, nodes stopped in {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn wrong_auth_key_is_a_clear_error() {
    let hs = Headscale::start().await.expect("headscale");
    let ts = Tailscaled::start("c").await.expect("tailscaled");
    // Well-formed (prefix, 12-char id, 64-char secret) but unknown to the server.
    let bogus = format!("hskey-auth-AbCdEfGhIjKl-{}", "0123456789abcdef".repeat(4));
    let err = tokio::time::timeout(Duration::from_secs(90), ts.up(hs.url(), &bogus, "node-c"))
        .await
        .expect("up returns in time")
        .expect_err("a bogus key must not join");
    let msg = err.to_string();
    assert!(!msg.contains(&bogus), "the key leaked: {msg}");
    assert!(
        !msg.contains("AbCdEfGhIjKl"),
        "part of the key leaked: {msg}"
    );
    assert!(msg.contains("--authkey <redacted>"), "{msg}");
    assert!(
        msg.contains("invalid pre auth key"),
        "not a clear error: {msg}"
    );
    assert!(ts.ipv4().await.is_err(), "the node must not have joined");
    assert!(hs.nodes().await.expect("nodes").is_empty());
}
