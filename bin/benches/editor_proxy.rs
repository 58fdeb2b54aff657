//! Editor proxy benchmark: the orchestrator's `/editor/proxy/<port>/` against a direct
//! connection and against an nginx reverse proxy (Debian `nginx-light`), in one run, to the same
//! upstreams on loopback:
//!
//! 1. small requests (code-server's `/healthz`) at concurrency 16: requests/s and p50/p99;
//! 2. a large static asset of code-server's workbench (several MB) at concurrency 4: MB/s;
//! 3. WebSocket round trips (64-byte text frames, one connection) to an echo server: p50/p99.
//!
//! The orchestrator is the real binary with the local backend; its agent runs the testbed's
//! real code-server, which the proxy logs in to. Targets: proxy >= 0.9x direct and >= nginx.
//! `cargo bench -p guildnet-bin --bench editor_proxy [-- --requests N --ws N]`.

use futures_util::{stream, SinkExt, StreamExt};
use guildnet_core::client::OrchestratorClient;
use guildnet_core::names::OrgName;
use guildnet_core::token::Secret;
use guildnet_testbed::bench::{pct_duration, row};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "bench-admin-token-0123456789";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A process started in a session of its own: dropping it kills the whole session (the
/// orchestrator's agents and editors, nginx's workers), so the bench leaves nothing behind.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        guildnet_testbed::process::kill_session(self.0.id());
    }
}

fn orchestrator(state: &Path, port: u16, args: &[&str], envs: &[(&str, &str)]) -> Killed {
    let log = std::fs::File::create(state.with_extension("log")).expect("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_guildnet-orchestrator"));
    guildnet_testbed::process::in_new_session(&mut cmd);
    Killed(
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--org", "acme"])
            .args(["--runner", "sh -s"])
            .args(args)
            .env("GUILDNET_STATE_DIR", state)
            .env("ORCHESTRATOR_TOKEN", TOKEN)
            .env("GUILDNET_AGENT_BIN", env!("CARGO_BIN_EXE_guildnet-agent"))
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn orchestrator"),
    )
}

/// Schedules a long task, waits for its agent (and editor), opens the editor; returns the
/// proxy path and the editor's direct address.
async fn open_editor(port: u16, want_editor: bool) -> (String, String, PathBuf) {
    let url = format!("http://127.0.0.1:{port}");
    let c = OrchestratorClient::new(&url, Secret::new(TOKEN)).expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.health().await.is_err() {
        assert!(Instant::now() < deadline, "orchestrator did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = c
        .schedule(&OrgName::new("acme").unwrap(), "sleep 3600", None)
        .await
        .expect("schedule");
    let deadline = Instant::now() + Duration::from_secs(120);
    let agent = loop {
        let cur = c.task(&t.id).await.expect("task");
        if let Some(a) = cur
            .agent
            .clone()
            .filter(|_| cur.status.as_str() == "Running")
        {
            let ag = c.agent(&a).await.expect("agent");
            if !want_editor || ag.state["editor"]["state"] == "running" {
                break a;
            }
        }
        assert!(Instant::now() < deadline, "agent/editor did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let opened: Value = reqwest::Client::new()
        .post(format!("{url}/agents/editor/open"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": agent, "org": "acme"}))
        .send()
        .await
        .expect("open")
        .json()
        .await
        .expect("open reply");
    let ws = PathBuf::from(format!("../workspaces/{}", t.id));
    (
        opened["path"].as_str().expect("path").to_owned(),
        format!(
            "{}:{}",
            opened["host"].as_str().unwrap_or("127.0.0.1"),
            opened["port"]
        ),
        ws,
    )
}

fn nginx(dir: &Path, listen: u16, upstream: &str) -> Option<Killed> {
    let bin = Path::new("/usr/sbin/nginx");
    if !bin.is_file() {
        eprintln!("nginx: not installed (apt-get install nginx-light); its column is skipped");
        return None;
    }
    let conf = format!(
        "worker_processes 2; daemon off; error_log stderr warn; pid {dir}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
           upstream up {{ server {upstream}; keepalive 32; }}\n\
           server {{ listen 127.0.0.1:{listen};\n\
             location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
               proxy_set_header Host $host; proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade; proxy_read_timeout 3600s; }} }} }}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let mut cmd = Command::new(bin);
    guildnet_testbed::process::in_new_session(&mut cmd);
    let child = cmd
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            &path.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(Killed(child))
}

struct Http {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn small_requests(url: &str, headers: &[(&str, String)], n: usize) -> Http {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .expect("client");
    // Warm-up: connections, login.
    for _ in 0..50 {
        let mut rb = client.get(url);
        for (k, v) in headers {
            rb = rb.header(*k, v);
        }
        let r = rb.send().await.expect("warm-up request");
        assert!(r.status().is_success(), "{url}: {}", r.status());
        let _ = r.bytes().await;
    }
    let start = Instant::now();
    let mut lat: Vec<Duration> = stream::iter(0..n)
        .map(|_| {
            let mut rb = client.get(url);
            for (k, v) in headers {
                rb = rb.header(*k, v);
            }
            async move {
                let t = Instant::now();
                let r = rb.send().await.expect("request");
                let _ = r.bytes().await.expect("body");
                t.elapsed()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = start.elapsed();
    lat.sort();
    Http {
        rps: n as f64 / elapsed.as_secs_f64(),
        p50: pct_duration(&lat, 0.5),
        p99: pct_duration(&lat, 0.99),
    }
}

async fn large_asset(url: &str, headers: &[(&str, String)], n: usize) -> f64 {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let bytes: Vec<usize> = stream::iter(0..n)
        .map(|_| {
            let mut rb = client.get(url);
            for (k, v) in headers {
                rb = rb.header(*k, v);
            }
            async move {
                let r = rb.send().await.expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.expect("body").len()
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    bytes.iter().sum::<usize>() as f64 / 1e6 / start.elapsed().as_secs_f64()
}

async fn ws_rtt(url: &str, bearer: bool, n: usize) -> (Duration, Duration) {
    let mut req = url.into_client_request().expect("ws url");
    if bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
    let payload = "x".repeat(64);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        ws.send(Message::text(payload.clone())).await.expect("send");
        let _ = ws.next().await.expect("echo").expect("frame");
        if i >= 100 {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    (pct_duration(&lat, 0.5), pct_duration(&lat, 0.99))
}

async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
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

/// A large static file of the workbench, found in the page code-server serves.
async fn asset_path(base: &str, cookie: &str) -> String {
    let client = reqwest::Client::new();
    let html = client
        .get(format!("{base}/?folder=/tmp"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("workbench")
        .text()
        .await
        .expect("html");
    let needle = "out/vs/code/browser/workbench/workbench.js";
    let at = html.find(needle).expect("workbench script in the page");
    let start = html[..at].rfind(['"', '\'']).map_or(0, |i| i + 1);
    let end = at + html[at..].find(['"', '\'']).unwrap_or(0);
    let rel = html[start..end].trim_start_matches("./").to_owned();
    let rel = if rel.ends_with(".js") || rel.ends_with(".css") {
        rel
    } else {
        format!("{rel}.js")
    };
    format!("/{rel}")
}

async fn login(addr: &str, password: &str) -> String {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://{addr}/login"))
        .form(&[("password", password)])
        .send()
        .await
        .expect("login");
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|c| c.starts_with("code-server-session="))
        .expect("session cookie")
        .to_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests = arg("--requests", 5000);
    let ws_n = arg("--ws", 2000);
    let code_server = guildnet_testbed::bin("code-server").expect("testbed code-server");
    let dir = tempfile::tempdir().expect("temp dir");

    // 1 + 2: code-server behind the orchestrator.
    let port = free_port();
    let state = dir.path().join("state");
    let _orch = orchestrator(
        &state,
        port,
        &["--code-server", code_server.to_str().unwrap()],
        &[],
    );
    let (path, direct, agent_dir) = open_editor(port, true).await;
    let rec: Value = serde_json::from_slice(
        &std::fs::read(state.join(&agent_dir).join("editor.json")).expect("editor.json"),
    )
    .expect("editor record");
    let cookie = login(&direct, rec["password"].as_str().unwrap()).await;
    let proxy_base = format!("http://127.0.0.1:{port}{}", path.trim_end_matches('/'));
    let direct_base = format!("http://{direct}");
    let nginx_port = free_port();
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let ng = nginx(&nginx_dir, nginx_port, &direct);
    let nginx_base = format!("http://127.0.0.1:{nginx_port}");
    let asset = asset_path(&direct_base, &cookie).await;
    let bearer = vec![("authorization", format!("Bearer {TOKEN}"))];
    let with_cookie = vec![("cookie", cookie.clone())];

    let mut rows: Vec<(&str, Http, f64)> = Vec::new();
    for (name, base, headers) in [
        ("direct", &direct_base, &with_cookie),
        ("orchestrator proxy", &proxy_base, &bearer),
        ("nginx", &nginx_base, &with_cookie),
    ] {
        if name == "nginx" && ng.is_none() {
            continue;
        }
        let small = small_requests(&format!("{base}/healthz"), headers, requests).await;
        let mbps = large_asset(&format!("{base}{asset}"), headers, 40).await;
        rows.push((name, small, mbps));
    }

    // 3: WebSocket echo behind a second orchestrator (the agent advertises the echo server).
    let echo = echo_server().await;
    let port2 = free_port();
    let advertise = format!("127.0.0.1:{echo}");
    let _orch2 = orchestrator(
        &dir.path().join("state2"),
        port2,
        &[
            "--trust-advertised-editors",
            "--pass-env",
            "GUILDNET_EDITOR_ADVERTISE",
        ],
        &[("GUILDNET_EDITOR_ADVERTISE", advertise.as_str())],
    );
    let (path2, _, _) = open_editor(port2, false).await;
    let ng_ws_port = free_port();
    let ng_ws_dir = dir.path().join("nginx-ws");
    std::fs::create_dir_all(&ng_ws_dir).unwrap();
    let ng_ws = nginx(&ng_ws_dir, ng_ws_port, &advertise);
    let mut ws_rows = vec![
        (
            "direct",
            ws_rtt(&format!("ws://{advertise}/"), false, ws_n).await,
        ),
        (
            "orchestrator proxy",
            ws_rtt(&format!("ws://127.0.0.1:{port2}{path2}"), true, ws_n).await,
        ),
    ];
    if ng_ws.is_some() {
        ws_rows.push((
            "nginx",
            ws_rtt(&format!("ws://127.0.0.1:{ng_ws_port}/"), false, ws_n).await,
        ));
    }

    println!("editor proxy benchmark ({requests} small requests at concurrency 16; 40 x {asset} at concurrency 4; {ws_n} WebSocket round trips)");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10}",
        "path", "req/s", "p50 ms", "p99 ms", "asset MB/s"
    );
    for (name, h, mbps) in &rows {
        println!(
            "{name:<20} {:>10.0} {:>10.2} {:>10.2} {:>10.1}",
            h.rps,
            h.p50.as_secs_f64() * 1e3,
            h.p99.as_secs_f64() * 1e3,
            mbps
        );
    }
    println!("{:<20} {:>10} {:>10}", "websocket", "p50 µs", "p99 µs");
    for (name, (p50, p99)) in &ws_rows {
        println!(
            "{name:<20} {:>10.0} {:>10.0}",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    let find = |n: &str| rows.iter().find(|r| r.0 == n);
    if let (Some(d), Some(p)) = (find("direct"), find("orchestrator proxy")) {
        println!(
            "ratio proxy/direct: req/s {:.2}x, asset {:.2}x (target >= 0.9x)",
            p.1.rps / d.1.rps,
            p.2 / d.2
        );
    }
    if let (Some(n), Some(p)) = (find("nginx"), find("orchestrator proxy")) {
        println!(
            "ratio proxy/nginx: req/s {:.2}x, asset {:.2}x (target >= 1.0x)",
            p.1.rps / n.1.rps,
            p.2 / n.2
        );
    }
    let ws = |n: &str| ws_rows.iter().find(|r| r.0 == n).map(|r| r.1 .0);
    if let (Some(d), Some(p)) = (ws("direct"), ws("orchestrator proxy")) {
        println!(
            "websocket p50 added by the proxy: {:.0} µs ({:.2}x direct)",
            (p.as_secs_f64() - d.as_secs_f64()) * 1e6,
            p.as_secs_f64() / d.as_secs_f64()
        );
    }
    if let (Some(n), Some(p)) = (ws("nginx"), ws("orchestrator proxy")) {
        println!(
            "websocket p50 proxy/nginx: {:.2}x (lower is better)",
            p.as_secs_f64() / n.as_secs_f64()
        );
    }
    // Table rows for scripts/bench.sh.
    if let (Some(d), Some(p)) = (find("direct"), find("orchestrator proxy")) {
        row(
            "editor proxy/direct, small requests",
            p.1.rps / d.1.rps,
            "x",
            0.9,
            false,
        );
        row(
            "editor proxy/direct, 11 MB asset",
            p.2 / d.2,
            "x",
            0.9,
            false,
        );
    }
    if let (Some(n), Some(p)) = (find("nginx"), find("orchestrator proxy")) {
        row(
            "editor proxy/nginx, small requests",
            p.1.rps / n.1.rps,
            "x",
            1.0,
            false,
        );
        row(
            "editor proxy/nginx, 11 MB asset",
            p.2 / n.2,
            "x",
            1.0,
            false,
        );
    }
    if let (Some(n), Some(p)) = (ws("nginx"), ws("orchestrator proxy")) {
        row(
            "editor WebSocket RTT p50, proxy/nginx",
            p.as_secs_f64() / n.as_secs_f64(),
            "x",
            1.0,
            true,
        );
    }
}
