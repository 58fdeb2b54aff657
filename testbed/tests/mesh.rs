//! Smoke tests of the real headscale and tailscaled (userspace networking) on loopback.

use guildnet_testbed::mesh::{Headscale, Tailscaled};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn headscale_creates_user_and_preauth_key_and_checks_api_keys() {
    let hs = Headscale::start().await.expect("headscale");
    let user = hs.create_user("guildnet").await.expect("user");
    assert_eq!(user.name, "guildnet");
    let key = hs
        .create_preauth_key(&user.id, true, false)
        .await
        .expect("preauth key");
    assert!(key.len() >= 16, "{key}");
    let (status, users) = hs
        .api_get("/api/v1/user", hs.api_key())
        .await
        .expect("users");
    assert_eq!(status, 200, "{users}");
    assert!(
        users["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["name"] == "guildnet")),
        "{users}"
    );
    let (status, _) = hs
        .api_get("/api/v1/user", "not-a-real-api-key")
        .await
        .expect("request");
    assert_eq!(status, 401);
}

#[tokio::test]
async fn two_tailscaled_join_and_reach_http_over_the_tailnet() {
    let hs = Headscale::start().await.expect("headscale");
    let user = hs.create_user("agents").await.expect("user");
    let key = hs
        .create_preauth_key(&user.id, true, false)
        .await
        .expect("key");
    let a = Tailscaled::start("a").await.expect("tailscaled a");
    let b = Tailscaled::start("b").await.expect("tailscaled b");
    a.up(hs.url(), &key, "node-a").await.expect("a joins");
    b.up(hs.url(), &key, "node-b").await.expect("b joins");

    let b_ip = eventually("b has an address", Duration::from_secs(30), || async {
        b.ipv4().await.ok()
    })
    .await;
    for (node, peer) in [(&a, "node-b"), (&b, "node-a")] {
        eventually(
            &format!("{peer} online"),
            Duration::from_secs(60),
            || async {
                let st = node.status().await.ok()?;
                st.peers()
                    .iter()
                    .any(|p| p.host_name == peer && p.online)
                    .then_some(())
            },
        )
        .await;
    }

    // An HTTP server on the host's loopback: B's netstack forwards tailnet connections to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let body = format!("hello over the tailnet {port}");
    let served = body.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{served}",
                    served.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let via_a = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(a.http_proxy_url()).expect("proxy"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("http://{b_ip}:{port}/");
    let got = eventually("HTTP over the tailnet", Duration::from_secs(60), || async {
        let r = via_a.get(&url).send().await.ok()?;
        r.text().await.ok()
    })
    .await;
    assert_eq!(got, body);

    let nodes = hs.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.online), "{nodes:?}");
    assert!(
        nodes.iter().any(|n| n.ip_addresses.contains(&b_ip)),
        "{nodes:?}"
    );
    drop(a);
    drop(b);
}

#[tokio::test]
async fn a_wrong_auth_key_is_a_clear_error_without_the_key() {
    let hs = Headscale::start().await.expect("headscale");
    let ts = Tailscaled::start("c").await.expect("tailscaled");
    let bogus = "0123456789abcdef0123456789abcdef0123456789abcdef";
    let err = tokio::time::timeout(Duration::from_secs(90), ts.up(hs.url(), bogus, "node-c"))
        .await
        .expect("up returns")
        .expect_err("a bogus key must not join");
    let msg = err.to_string();
    assert!(!msg.contains(bogus), "the key leaked: {msg}");
    assert!(msg.contains("<redacted>"), "{msg}");
    drop(ts);
}
