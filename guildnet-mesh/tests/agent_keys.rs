//! Per-agent pre-auth keys against real servers (headscale and userspace tailscaled from the
//! testbed): a minted key registers one node, cannot register a second, the node's tailnet
//! address is found by host name, and removing it takes it off `headscale nodes list`.

use guildnet_core::seams::AgentMesh;
use guildnet_mesh::headscale::HeadscaleSettings;
use guildnet_mesh::setup::{self, CreateOptions};
use guildnet_mesh::tailscale::{TailscaleError, Tailscaled, TailscaledConfig};
use guildnet_mesh::AgentMeshKeys;
use std::path::Path;
use std::time::Duration;

mod support;

async fn start_node(dir: &Path) -> Tailscaled {
    let mut c = TailscaledConfig::new(dir);
    c.tailscaled_bin = Some(support::bin("tailscaled"));
    c.tailscale_bin = Some(support::bin("tailscale"));
    c.plain_http_derp = true;
    Tailscaled::start(&c).await.expect("tailscaled starts")
}

/// `headscale nodes list -o json` through the CLI (the unix socket), as an operator would look.
async fn cli_node_names(config: &Path) -> Vec<String> {
    let out = tokio::process::Command::new(support::bin("headscale"))
        .arg("-c")
        .arg(config)
        .args(["nodes", "list", "-o", "json"])
        .output()
        .await
        .expect("headscale nodes list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_key_registers_one_node_which_is_removed_at_task_end() {
    let state = tempfile::Builder::new()
        .prefix("gnak")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let port = support::free_port;
    let mut opts = CreateOptions::new(state.path());
    opts.headscale_bin = Some(support::bin("headscale"));
    opts.settings =
        HeadscaleSettings::on_loopback(port(), port(), port(), support::free_udp_port());
    let created = setup::create(&opts, None).await.expect("create");
    let url = created.url().to_owned();
    let keys = AgentMeshKeys::new(created.client.clone(), url.clone())
        .with_tags(vec!["tag:guildnet-agent".into()])
        .expect("tags");
    assert_eq!(keys.login_server(), url);

    let host = "t1abc-a1";
    let key = keys.agent_key(host).await.expect("mint");
    assert!(key.expose().starts_with("hskey-auth-"));
    // The listing shows it single-use, ephemeral, tagged and short-lived.
    let listed = created.client.list_preauth_keys().await.expect("list keys");
    let info = listed
        .iter()
        .find(|k| {
            k.masked_key.ends_with("***")
                && key
                    .expose()
                    .starts_with(k.masked_key.trim_end_matches("-***"))
        })
        .expect("minted key listed");
    assert!(!info.reusable && info.ephemeral, "{info:?}");
    assert_eq!(info.acl_tags, vec!["tag:guildnet-agent".to_owned()]);
    let left = info.expiration.expect("expiry") - chrono::Utc::now();
    assert!(left <= chrono::Duration::minutes(15) && left > chrono::Duration::minutes(10));
    assert_eq!(keys.node_address(host).await.expect("lookup"), None);

    // The agent's node joins with it.
    let a = start_node(&state.path().join("a")).await;
    a.cli()
        .up(&url, &key, host, Duration::from_secs(60))
        .await
        .expect("agent node joins with its key");
    let addr = keys
        .node_address(host)
        .await
        .expect("lookup")
        .expect("registered");
    assert!(addr.starts_with("100."), "{addr}");
    let st = a.cli().status().await.expect("status");
    assert_eq!(st.ipv4().map(|a| a.to_string()), Some(addr.clone()));
    assert!(cli_node_names(&created.files.config)
        .await
        .contains(&host.to_owned()));

    // The key is spent: a second node cannot register with it.
    let b = start_node(&state.path().join("b")).await;
    let e = b
        .cli()
        .up(&url, &key, "t1abc-a1-copy", Duration::from_secs(30))
        .await
        .expect_err("a used single-use key is refused");
    assert!(matches!(e, TailscaleError::Auth { .. }), "{e}");
    assert!(!e.to_string().contains(key.expose()), "{e}");

    // Task end: the node is removed at once (not after headscale's inactivity timeout), even
    // while its tailscaled still runs.
    assert_eq!(keys.remove_node(host).await.expect("remove"), 1);
    assert!(keys.nodes_named(host).await.expect("list").is_empty());
    let names = cli_node_names(&created.files.config).await;
    assert!(!names.contains(&host.to_owned()), "{names:?}");
    // Removing again is a no-op.
    assert_eq!(keys.remove_node(host).await.expect("remove again"), 0);
    drop((a, b));
}

#[tokio::test]
async fn an_unreachable_headscale_is_a_clear_error_without_the_api_key() {
    let client = guildnet_mesh::headscale::HeadscaleClient::with_timeout(
        &format!("http://127.0.0.1:{}", support::free_port()),
        guildnet_core::token::Secret::new("hskey-api-do-not-show-me"),
        Duration::from_secs(3),
    )
    .expect("client");
    let keys = AgentMeshKeys::new(client, "http://127.0.0.1:1");
    let e = keys.agent_key("t1-a1").await.expect_err("unreachable");
    let text = e.to_string();
    assert!(text.contains("unreachable"), "{text}");
    assert!(!text.contains("do-not-show-me"), "{text}");
}
