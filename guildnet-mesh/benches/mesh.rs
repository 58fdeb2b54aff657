//! Mesh timings against real headscale and userspace tailscaled (testbed binaries), on loopback:
//!
//! 1. `create` → first node online: a fresh create flow (headscale start, API key, user, key),
//!    a tailscaled start, `tailscale up`, until Headscale lists the node online.
//! 2. node start → service reachable: with node A on the tailnet, start node B with an HTTP
//!    service on its loopback (a stand-in for an agent's editor), join it, and poll until A
//!    gets a 200 from it over the tailnet through A's SOCKS5 proxy.
//!
//! Run: `cargo bench -p guildnet-mesh --bench mesh` (ITERATIONS env, default 3).

use guildnet_mesh::headscale::HeadscaleSettings;
use guildnet_mesh::setup::{self, CreateOptions};
use guildnet_mesh::tailscale::{Tailscaled, TailscaledConfig};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "../tests/support/mod.rs"]
mod support;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn options(state: &Path) -> Res<CreateOptions> {
    let mut o = CreateOptions::new(state);
    o.headscale_bin = Some(support::bin("headscale"));
    o.settings = HeadscaleSettings::on_loopback(
        support::free_port(),
        support::free_port(),
        support::free_port(),
        support::free_udp_port(),
    );
    Ok(o)
}

async fn node(dir: &Path) -> Res<Tailscaled> {
    let mut c = TailscaledConfig::new(dir);
    c.tailscaled_bin = Some(support::bin("tailscaled"));
    c.tailscale_bin = Some(support::bin("tailscale"));
    c.plain_http_derp = true;
    Ok(Tailscaled::start(&c).await?)
}

async fn serve_http() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    Ok(port)
}

struct Sample {
    b_daemon: Duration,
    b_up: Duration,
    b_seen: Duration,
    create: Duration,
    rerun: Duration,
    first_online: Duration,
    reachable: Duration,
}

async fn one(i: usize) -> Res<Sample> {
    let dir = tempfile::Builder::new().prefix("gnb").tempdir_in("/tmp")?;
    let opts = options(dir.path())?;

    // 1. create -> first node online
    let t0 = Instant::now();
    let created = setup::create(&opts, None).await?;
    let create = t0.elapsed();
    let a = node(&dir.path().join("a")).await?;
    a.cli()
        .up(
            created.url(),
            &created.preauth_key.key,
            "node-a",
            Duration::from_secs(60),
        )
        .await?;
    loop {
        let nodes = created.client.list_nodes(None).await?;
        if nodes.iter().any(|n| n.name == "node-a" && n.online) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("node-a never came online".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_online = t0.elapsed();

    let t = Instant::now();
    setup::create(&opts, None).await?;
    let rerun = t.elapsed();

    // 2. node start -> HTTP service on it reachable from the other node
    let port = serve_http().await?;
    let t1 = Instant::now();
    let b = node(&dir.path().join("b")).await?;
    let b_daemon = t1.elapsed();
    let host = format!("node-b{i}");
    b.cli()
        .up(
            created.url(),
            &created.preauth_key.key,
            &host,
            Duration::from_secs(60),
        )
        .await?;
    let b_up = t1.elapsed();
    let b_ip = b
        .cli()
        .status()
        .await?
        .ipv4()
        .ok_or("node B has no address")?;
    a.cli()
        .wait_for_peer(&host, Duration::from_secs(60))
        .await?;
    let b_seen = t1.elapsed();
    let dialer = a.dialer().with_timeout(Duration::from_secs(2));
    loop {
        let attempt = async {
            let mut s = dialer.connect(&b_ip.to_string(), port).await.ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
                .await
                .ok()?;
            let mut r = String::new();
            s.read_to_string(&mut r).await.ok()?;
            r.starts_with("HTTP/1.1 200").then_some(())
        };
        if attempt.await.is_some() {
            break;
        }
        if t1.elapsed() > Duration::from_secs(60) {
            return Err("node B's service never became reachable".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reachable = t1.elapsed();
    drop(b);
    drop(a);
    drop(created);
    Ok(Sample {
        b_daemon,
        b_up,
        b_seen,
        create,
        rerun,
        first_online,
        reachable,
    })
}

fn stats(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let med = v[v.len() / 2];
    println!(
        "{name:<44} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms",
        med.as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
    med
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let n: usize = std::env::var("ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    println!("guildnet-mesh bench: {n} iterations (headscale + userspace tailscaled on loopback)");
    let mut samples = Vec::new();
    for i in 0..n {
        samples.push(one(i).await?);
    }
    let create = stats(
        "create flow (fresh state)",
        samples.iter().map(|s| s.create).collect(),
    );
    let rerun = stats(
        "create flow re-run (server running)",
        samples.iter().map(|s| s.rerun).collect(),
    );
    let online = stats(
        "create -> first node online",
        samples.iter().map(|s| s.first_online).collect(),
    );
    stats(
        "  node start: tailscaled LocalAPI up",
        samples.iter().map(|s| s.b_daemon).collect(),
    );
    stats(
        "  node start: + tailscale up returned",
        samples.iter().map(|s| s.b_up).collect(),
    );
    stats(
        "  node start: + peer online with a path",
        samples.iter().map(|s| s.b_seen).collect(),
    );
    let reach = stats(
        "node start -> its HTTP service reachable",
        samples.iter().map(|s| s.reachable).collect(),
    );
    println!(
        "ratios: re-run/create {:.2}; create share of first-online {:.2}; reachable/first-online {:.2}",
        rerun.as_secs_f64() / create.as_secs_f64(),
        create.as_secs_f64() / online.as_secs_f64(),
        reach.as_secs_f64() / online.as_secs_f64()
    );
    Ok(())
}
