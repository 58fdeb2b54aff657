//! The agent's editor end to end: the real agent starts the testbed's real code-server, reports
//! it in heartbeats and on `/healthz`, restarts it when it dies; the orchestrator opens it and
//! serves it under `/editor/proxy/<port>/` (logging in to code-server itself; nothing goes to
//! a process that took the port while code-server was down), with framing
//! restricted to the dashboard's origin; only opened ports are reachable; WebSockets go through
//! (a byte-exact round trip against an echo server, and the upgrade against code-server); and
//! headless Chromium renders the proxied workbench (screenshot kept as a test artifact).

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_testbed::browser::ChromeDriver;
use guildnet_testbed::image::{artifact_dir, decode_png};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const DASHBOARD_ORIGIN: &str = "http://dash.test:8090";

async fn eventually<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Opens the agent's editor through the API; returns (port, path, session cookie pair).
async fn open_editor(orch: &Orchestrator, agent: &AgentName) -> (u16, String, String) {
    let e = orch.open_editor(agent).await;
    let (port, cookie) = (e.port, e.set_cookie);
    assert_eq!(e.path, format!("/editor/proxy/{port}/"));
    assert!(
        cookie.contains(&format!("Path=/editor/proxy/{port}/"))
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    (port, e.path, e.session)
}

/// GETs the proxied editor page with the session cookie, following code-server's redirect of
/// `/` to `./?folder=<workspace>` (which must stay under the proxy prefix and not go to login).
async fn load_workbench(page: &str, path: &str, session: &str) -> reqwest::Response {
    let r = http()
        .get(page)
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    if !r.status().is_redirection() {
        return r;
    }
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(!loc.contains("login"), "sent to code-server's login: {loc}");
    assert!(
        !loc.starts_with('/') || loc.starts_with(path),
        "redirect leaves the proxy prefix: {loc}"
    );
    let next = reqwest::Url::parse(page).unwrap().join(&loc).unwrap();
    http()
        .get(next)
        .header("cookie", session)
        .send()
        .await
        .unwrap()
}

async fn running_agent(orch: &Orchestrator, task: &str) -> (TaskId, AgentName) {
    let c = orch.client();
    let t = c
        .schedule(&OrgName::new("acme").unwrap(), task, None)
        .await
        .unwrap();
    let running = wait_running(&c, &t.id).await;
    (t.id, running.agent.unwrap())
}

/// Pids of processes whose command line contains `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_server_in_the_agent_is_served_through_the_proxy_and_rendered_in_chromium() {
    let started = Instant::now();
    let code_server = guildnet_testbed::bin("code-server").expect("testbed code-server");
    let dir = tempfile::tempdir().unwrap();
    let health_port = free_port();
    let health = format!("127.0.0.1:{health_port}");
    let orch = Orchestrator::start_with(
        &dir.path().join("state"),
        free_port(),
        &[
            "--code-server",
            code_server.to_str().unwrap(),
            "--frame-ancestor",
            DASHBOARD_ORIGIN,
            AGENTS_AS_ME[0],
            AGENTS_AS_ME[1],
        ],
        &[("GUILDNET_HEALTH_ADDR", health.as_str())],
    );
    orch.wait_ready().await;
    let c = orch.client();
    let (task, agent) = running_agent(&orch, "sleep 300").await;
    // The agent claims only once code-server accepts connections: as soon as the task is
    // Running, the agent's own /healthz says the editor runs (no wait here).
    let hz: Value = http()
        .get(format!("http://{health}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        hz["editor"]["state"], "running",
        "the task is Running before its editor: {hz}"
    );

    // The editor's state reaches the orchestrator in heartbeats, and the agent's /healthz.
    let state = eventually("editor running in heartbeats", 90, async || {
        let a = c.agent(&agent).await.ok()?;
        (a.state["editor"]["state"] == "running").then_some(a.state)
    })
    .await;
    assert_eq!(state["runner"], "running", "{state}");
    let hz = http()
        .get(format!("http://{health}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(hz.status(), 200);
    let hz: Value = hz.json().await.unwrap();
    assert_eq!(hz["editor"]["state"], "running", "{hz}");

    let (port, path, session) = open_editor(&orch, &agent).await;
    let page = format!("{}{path}", orch.url());

    // No credentials: 401 JSON, and nothing about the port.
    let r = http().get(&page).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    // The session cookie from the open call: the workbench, already logged in to code-server.
    let r = load_workbench(&page, &path, &session).await;
    assert_eq!(r.status(), 200);
    let csp: Vec<String> = r
        .headers()
        .get_all("content-security-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        csp.iter()
            .any(|c| c == &format!("frame-ancestors 'self' {DASHBOARD_ORIGIN}")),
        "{csp:?}"
    );
    assert!(r.headers().get("x-frame-options").is_none());
    let html = r.text().await.unwrap();
    assert!(html.contains("workbench"), "not the workbench: {html:.400}");
    assert!(
        !html.contains("type=\"password\""),
        "login page: {html:.400}"
    );
    // code-server's own login page redirects a logged-in user home: the Location is rewritten
    // under the proxy prefix.
    let r = http()
        .get(format!("{page}login"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    if r.status().is_redirection() {
        let loc = r.headers()["location"].to_str().unwrap();
        assert!(
            !loc.starts_with('/') || loc.starts_with(&format!("/editor/proxy/{port}/")),
            "{loc}"
        );
    }

    // Only opened ports: not the orchestrator's own, not a random one, not garbage.
    for (p, want) in [
        (orch.port.to_string(), 404),
        ("1".to_owned(), 404),
        ("0".to_owned(), 422),
        ("http:%2F%2Fevil.example".to_owned(), 422),
    ] {
        let r = http()
            .get(format!("{}/editor/proxy/{p}/health", orch.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "port {p}");
    }
    // The session cookie of one port does not open another.
    let r = http()
        .get(format!("{}/editor/proxy/{}/", orch.url(), orch.port))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The WebSocket upgrade reaches code-server through the proxy (origin checks pass).
    let ws_url = format!(
        "ws://127.0.0.1:{}{path}?reconnectionToken=6f3b0d1e-8e0a-4e55-9d7c-0b6a3c1f2e4d&reconnection=false&skipWebSocketFrames=false",
        orch.port
    );
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", session.parse().unwrap());
    req.headers_mut()
        .insert("origin", orch.url().parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    drop(ws);

    // Headless Chromium renders the proxied workbench: the open call (same origin) sets the
    // session cookie, then the page loads through the proxy.
    let driver = ChromeDriver::start().await.expect("chromedriver");
    let s = driver.new_session(true).await.expect("session");
    s.goto(&format!("{}/health", orch.url())).await.unwrap();
    let opened = s
        .execute(
            "return fetch('/agents/editor/open', {method: 'POST', headers: {'Authorization': \
             'Bearer ' + arguments[0], 'Content-Type': 'application/json'}, body: \
             JSON.stringify({name: arguments[1], org: 'acme'})}).then(r => r.status)",
            vec![json!(TOKEN), json!(agent.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(opened, json!(200));
    s.goto(&page).await.unwrap();
    s.wait_for_css(".monaco-workbench", Duration::from_secs(90))
        .await
        .expect("workbench through the proxy");
    s.wait_for_css(
        ".explorer-folders-view, .explorer-viewlet",
        Duration::from_secs(60),
    )
    .await
    .expect("explorer (needs the WebSocket to the server)");
    let shot = artifact_dir("editor").join("proxied-code-server.png");
    let png = s.save_screenshot(&shot).await.unwrap();
    let (rendered, colours) = decode_png(&png).unwrap().looks_rendered();
    assert!(rendered, "screenshot looks blank: {colours} colours");
    s.close().await.unwrap();

    // Kill code-server: the agent restarts it and says so.
    let needle = format!("workspaces/{task}/state/code-server");
    let pids = pids_with_cmdline(&needle);
    assert!(!pids.is_empty(), "no code-server process for {needle}");
    for pid in &pids {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // While code-server is down (the agent restarts it after a backoff), another process takes
    // its port: the proxy sends that process nothing, neither the person's request nor a login
    // with the password, and answers 502.
    let stranger = eventually("the editor's port free", 10, async || {
        std::net::TcpListener::bind(("127.0.0.1", port)).ok()
    })
    .await;
    stranger.set_nonblocking(true).unwrap();
    let r = http()
        .get(&page)
        .header("cookie", &session)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the proxy answers at once");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "editor_unreachable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("held by another process")),
        "{body}"
    );
    assert!(
        matches!(stranger.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the proxy connected to the process that took the editor's port"
    );
    drop(stranger);
    let restarted = eventually("code-server restarted", 90, async || {
        let a = c.agent(&agent).await.ok()?;
        let e = &a.state["editor"];
        (e["state"] == "running" && e["restarts"].as_u64() >= Some(1)).then(|| e.clone())
    })
    .await;
    assert!(restarted["restarts"].as_u64().unwrap() >= 1);
    let r = load_workbench(&page, &path, &session).await;
    assert_eq!(r.status(), 200, "proxy works after the restart");

    c.cancel(&task).await.unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&task), 60)
        .await
        .remove(0);
    assert_eq!(done.status, TaskStatus::Cancelled);
    eprintln!("editor e2e took {:?}", started.elapsed());
}

/// A WebSocket echo server on loopback.
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
async fn websocket_frames_round_trip_through_the_editor_proxy() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    // Without an editor of its own, the agent advertises this address (as a tailnet or sidecar
    // editor would); the orchestrator proxies to it after editor/open.
    let advertise = format!("127.0.0.1:{echo}");
    let orch = Orchestrator::start_with(
        &dir.path().join("state"),
        free_port(),
        &["--trust-advertised-editors"],
        &[("GUILDNET_EDITOR_ADVERTISE", advertise.as_str())],
    );
    orch.wait_ready().await;
    let (task, agent) = running_agent(&orch, "sleep 300").await;
    let (port, path, _) = open_editor(&orch, &agent).await;
    // An advertised editor's port is shared by other agents' editors: the proxy port is the
    // agent's own.
    assert!(port >= 20000 && port != echo, "{port}");
    assert_eq!(path, format!("/editor/proxy/{port}/"));

    let url = format!("ws://127.0.0.1:{}{path}echo", orch.port);
    // No credentials: the upgrade is refused.
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("unauthenticated upgrade");
    assert!(err.to_string().contains("401"), "{err}");

    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let text = format!("ping-{i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back, Message::text(text));
    }
    let blob: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), blob.as_slice());
    ws.close(None).await.unwrap();

    let c = orch.client();
    c.cancel(&task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_that_never_listens_holds_the_claim_back_only_for_the_ready_wait() {
    let dir = tempfile::tempdir().unwrap();
    // A code-server that starts and never listens.
    let silent = dir.path().join("silent-code-server");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 300\n").unwrap();
    let mut perm = std::fs::metadata(&silent).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&silent, perm).unwrap();
    let orch = Orchestrator::start_with(
        &dir.path().join("state"),
        free_port(),
        &[
            "--code-server",
            silent.to_str().unwrap(),
            AGENTS_AS_ME[0],
            AGENTS_AS_ME[1],
        ],
        &[("GUILDNET_EDITOR_READY_SECS", "2")],
    );
    orch.wait_ready().await;
    let c = orch.client();
    let t = c
        .schedule(&OrgName::new("acme").unwrap(), "echo ran anyway", None)
        .await
        .unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 60)
        .await
        .remove(0);
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    let waited = (done.started_at.unwrap() - done.created_at)
        .to_std()
        .unwrap();
    assert!(waited >= Duration::from_secs(2), "claimed after {waited:?}");
    let lines: Vec<String> = c
        .logs(&t.id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with(
            "[editor] code-server did not accept connections within 2 s (editor starting) on"
        )),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "ran anyway"), "{lines:?}");
}
