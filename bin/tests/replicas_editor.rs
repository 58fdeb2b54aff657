//! Editor sessions across orchestrator replicas: two real `guildnet-orchestrator` replicas on the
//! testbed's real PostgreSQL behind the testbed's nginx. An agent's editor is opened through the
//! load balancer; the replica that opened it is killed with SIGKILL; the browser's next page
//! load and its WebSocket reconnect, through nginx with the same session cookie, reach the
//! editor again on the surviving replica, which had never served that session before (no
//! re-open, no user action). Forged, tampered or other-port cookies are refused by the
//! survivor, and the session ends with its agent and with `editor/close`, also on a replica that
//! serves it and was not the one the close or the agent's end went through. The same holds through the dashboard's editor
//! origin (the real `guildnet-dashboard` in front of the same entrance): its relay sends the
//! orchestrator's session, so the iframe's page and WebSocket recover the same way; headless
//! Chromium, on that editor origin, sees its page's WebSocket reconnect by itself and echo.
//!
//! The editor is a **stand-in for code-server** (a local HTTP + WebSocket echo server the agent
//! advertises with `GUILDNET_EDITOR_ADVERTISE`, accepted with `--trust-advertised-editors`):
//! what is under test is the orchestrators' proxy and its session, not code-server, which
//! `editor_proxy.rs` runs for real.

mod common;

use common::dashboard::Dashboard;
use common::*;
use futures_util::{SinkExt, StreamExt};
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::editor_proxy::SESSION_COOKIE;
use guildnet_core::token::Secret;
use guildnet_testbed::nginx::Nginx;
use guildnet_testbed::postgres::Postgres;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The stand-in editor's page. Like code-server's workbench, its script keeps a WebSocket to
/// the editor open and reconnects when it drops; it records what happened in `window.gn`
/// (`echoAt`: when the last connection's first message came back, ms since the epoch).
const PAGE: &str = r#"<!doctype html><title>stand-in editor</title><body>stand-in editor workbench<script>
window.gn = { opens: 0, echoes: 0, drops: 0, echoAt: 0 };
function connect() {
  const ws = new WebSocket(location.href.replace(/^http/, 'ws') + 'socket');
  let n = 0;
  ws.onopen = () => { n = ++window.gn.opens; ws.send('ping-' + n); };
  ws.onmessage = (m) => { if (m.data === 'ping-' + n) { window.gn.echoes = n; window.gn.echoAt = Date.now(); } };
  ws.onclose = () => { window.gn.drops++; setTimeout(connect, 100); };
}
connect();
</script></body>"#;

/// The stand-in for code-server: on loopback, answers every plain HTTP request with [`PAGE`]
/// and echoes every WebSocket message. Returns its port.
async fn stand_in_editor() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_one(s));
        }
    });
    port
}

async fn serve_one(mut s: tokio::net::TcpStream) {
    // Look at the request head without consuming it: a WebSocket upgrade goes to tungstenite.
    let mut buf = vec![0u8; 16 * 1024];
    let head = loop {
        let Ok(n) = s.peek(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        if text.contains("\r\n\r\n") || n == buf.len() {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    if head.contains("upgrade: websocket") {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() || m.is_binary() {
                let _ = ws.send(m).await;
            }
        }
        return;
    }
    let end = head.find("\r\n\r\n").map(|i| i + 4).unwrap_or(head.len());
    let mut consumed = vec![0u8; end];
    if s.read_exact(&mut consumed).await.is_err() {
        return;
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
        PAGE.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GETs `url` with `cookie` (a `name=value` pair, if any): status and body.
async fn get(url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut r = http().get(url);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    match r.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The error code of an API error body.
fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` with the session cookie.
async fn ws_connect(url: &str, cookie: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("cookie", cookie.parse().map_err(|_| "cookie header")?);
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| "no answer in 5 s".to_owned())?
    .map_err(|e| e.to_string())?;
    if resp.status() != 101 {
        return Err(format!("status {}", resp.status()));
    }
    Ok(ws)
}

/// Sends `text` and expects it back.
async fn echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::text(text.to_owned()))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(m))) if m == Message::text(text.to_owned()) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_session_survives_the_kill9_of_the_replica_that_opened_it() {
    let pg = Postgres::start().await.expect(
        "the testbed's PostgreSQL must start (install it: scripts/testbed/install.sh postgres)",
    );
    let url = pg.create_database("guildnet").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let editor = stand_in_editor().await;
    let advertise = format!("127.0.0.1:{editor}");
    let (port_a, port_b) = (free_port(), free_port());
    let replicas = [
        SocketAddr::from(([127, 0, 0, 1], port_a)),
        SocketAddr::from(([127, 0, 0, 1], port_b)),
    ];
    let lb = Nginx::round_robin(&replicas)
        .await
        .expect("the testbed's nginx must start (install it: scripts/testbed/install.sh nginx)");
    let lb_url = lb.url();
    let args = [
        "--store",
        url.as_str(),
        "--public-url",
        lb_url.as_str(),
        "--trust-advertised-editors",
    ];
    let envs = [
        ("RUST_LOG", "info"),
        ("GUILDNET_EDITOR_ADVERTISE", advertise.as_str()),
    ];
    let mut orchs = vec![
        Orchestrator::start_with(&dir.path().join("a"), port_a, &args, &envs),
        Orchestrator::start_with(&dir.path().join("b"), port_b, &args, &envs),
    ];
    for o in &orchs {
        o.wait_ready().await;
    }

    // An agent with an editor, and its editor opened through the load balancer.
    let c = guildnet_core::client::OrchestratorClient::new(&lb_url, Secret::new(TOKEN)).unwrap();
    let task = c
        .schedule(&OrgName::new("acme").unwrap(), "sleep 300", None)
        .await
        .unwrap();
    let agent = wait_running(&c, &task.id).await.agent.unwrap();
    // A second agent, whose editor the dashboard opens (the same stand-in serves both).
    let task2 = c
        .schedule(&OrgName::new("acme").unwrap(), "sleep 300", None)
        .await
        .unwrap();
    let agent2 = wait_running(&c, &task2.id).await.agent.unwrap();
    let resp = http()
        .post(format!("{lb_url}/agents/editor/open"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": agent, "org": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let opened: Value = resp.json().await.unwrap();
    let port = opened["port"].as_u64().unwrap() as u16;
    let path = opened["path"].as_str().unwrap().to_owned();
    assert!(
        port >= 20000 && port != editor,
        "an advertised editor (its port is shared: every agent here advertises {editor}) is \
         served under the agent's own proxy port: {port}"
    );
    assert!(
        session.starts_with(&format!("{SESSION_COOKIE}=ges.acme.{agent}.{port}.")),
        "the session names its org, agent and port: {}",
        session.split('.').take(4).collect::<Vec<_>>().join(".")
    );

    // Which replica holds it: with the admin token and no session, only the opener serves it.
    let mut holder = None;
    for (i, o) in orchs.iter().enumerate() {
        let r = http()
            .get(format!("{}{path}", o.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {
                assert!(holder.is_none(), "both replicas hold the editor");
                holder = Some(i);
            }
            404 => {
                let body = r.text().await.unwrap();
                assert!(body.contains("no editor is open on port"), "{body}");
            }
            s => panic!("replica {i}: HTTP {s}"),
        }
    }
    let holder = holder.expect("one replica opened the editor");
    let survivor = 1 - holder;
    eprintln!("the editor was opened on replica {holder}; replica {survivor} survives");

    // A session that both replicas serve is closed on both by `editor/close` through one of
    // them, and ends on both when its agent ends through one of them: the other replica was told
    // nothing, and finds out from the store.
    let task3 = c
        .schedule(&OrgName::new("acme").unwrap(), "sleep 300", None)
        .await
        .unwrap();
    let agent3 = wait_running(&c, &task3.id).await.agent.unwrap();
    let open3 = |on: usize| {
        let agent3 = agent3.clone();
        let o = &orchs[on];
        async move {
            let opened = o.open_editor(&agent3).await;
            (opened.session, opened.path)
        }
    };
    // Polls `url` with `cookie` while it answers 200 (the page); returns the first other answer.
    let until_refused = |url: String, cookie: String| async move {
        let t = Instant::now();
        loop {
            let (s, body) = get(&url, Some(&cookie)).await;
            if s != 200 {
                return (s, body, t.elapsed());
            }
            assert_eq!(body, PAGE);
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "still served after 15 s: {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (session3, path3) = open3(holder).await;
    for o in &orchs {
        let (s, body) = get(&format!("{}{path3}", o.url()), Some(&session3)).await;
        assert_eq!(
            (s, body.as_str()),
            (200, PAGE),
            "agent 3's editor on {}",
            o.url()
        );
    }
    let r = http()
        .post(format!("{}/agents/editor/close", orchs[holder].url()))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": agent3, "org": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (s, body) = get(&format!("{}{path3}", orchs[holder].url()), Some(&session3)).await;
    assert_eq!(s, 401, "closed where it was closed: {body}");
    let (s, body, after) = until_refused(
        format!("{}{path3}", orchs[survivor].url()),
        session3.clone(),
    )
    .await;
    assert_eq!(s, 401, "closed on the other replica too: {body}");
    assert!(body.contains("was closed"), "{body}");
    eprintln!("the other replica refused agent 3's closed session {after:?} after the close");
    // Opened again, through the other replica this time: a new session, which the first one
    // adopts (the two replicas give agent 3 the same proxy port; before, each numbered from
    // 20000, so this one's port was agent 1's on the first replica: 409).
    let (session3, path3) = open3(survivor).await;
    for o in &orchs {
        let (s, body) = get(&format!("{}{path3}", o.url()), Some(&session3)).await;
        assert_eq!((s, body.as_str()), (200, PAGE), "reopened, on {}", o.url());
    }
    orchs[holder].client().cancel(&task3.id).await.unwrap();
    let (s, body, after) =
        until_refused(format!("{}{path3}", orchs[survivor].url()), session3).await;
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("editor_closed"), "{body}");
    eprintln!("the other replica ended agent 3's session {after:?} after its task was cancelled");

    // The browser's entrance prefers the holder (as session affinity would), so the survivor
    // has never served this session when the holder dies.
    let entrance = Nginx::primary_backup(replicas[holder], replicas[survivor])
        .await
        .unwrap();
    let page = format!("{}{path}", entrance.url());
    let ws_url = format!("ws://127.0.0.1:{}{path}socket", entrance.port());
    let (s, body) = get(&page, Some(&session)).await;
    assert_eq!((s, body.as_str()), (200, PAGE), "the page before the kill");
    let mut ws = ws_connect(&ws_url, &session)
        .await
        .expect("WebSocket before the kill");
    echo(&mut ws, "before").await.unwrap();
    let (s, body) = get(&format!("{}{path}", orchs[survivor].url()), None).await;
    assert_eq!(s, 401, "no session, no admin token: refused ({body})");

    // The dashboard in front of the same entrance: its editor origin's relay, as the iframe
    // uses it (ticket, editor-origin cookie, `/e/<port>/`).
    let editor_origin = format!("127.0.0.1:{}", free_port());
    let dash = Dashboard::start(
        &dir.path().join("dash"),
        &entrance.url(),
        TOKEN,
        "pw-0123456789",
        &["--editor-listen", editor_origin.as_str()],
        &[],
    );
    let dash_session = dash.login("pw-0123456789").await;
    let r = http()
        .post(format!("{}/api/agents/{agent2}/editor", dash.url))
        .header("cookie", &dash_session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    // Its proxy port is another one than the first agent's (same editor address).
    let port2 = v["port"].as_u64().unwrap() as u16;
    assert_ne!(port2, port);
    let r = http()
        .get(format!("{}/editor/proxy/{port2}/", orchs[survivor].url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the survivor does not serve the second editor yet"
    );
    let enter = http().get(v["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(enter.status(), 303);
    let iframe_cookie = enter.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        !iframe_cookie.contains("ges."),
        "the orchestrator's session stays in the dashboard"
    );
    let iframe_page = format!("http://{editor_origin}/e/{port2}/");
    let iframe_ws = format!("ws://{editor_origin}/e/{port2}/socket");
    let (s, body) = get(&iframe_page, Some(&iframe_cookie)).await;
    assert_eq!(
        (s, body.as_str()),
        (200, PAGE),
        "the iframe before the kill"
    );
    let mut iframe_ws_conn = ws_connect(&iframe_ws, &iframe_cookie).await.unwrap();
    echo(&mut iframe_ws_conn, "iframe before").await.unwrap();

    // Headless Chromium on the same editor through the dashboard's editor origin (a ticket of
    // its own): the page's script holds a WebSocket to the editor and reconnects when it drops.
    let driver = guildnet_testbed::browser::ChromeDriver::start()
        .await
        .expect("chromedriver (scripts/testbed/install.sh chromium)");
    let browser = driver.new_session(true).await.expect("browser session");
    let r = http()
        .post(format!("{}/api/agents/{agent2}/editor", dash.url))
        .header("cookie", &dash_session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["port"].as_u64(),
        Some(u64::from(port2)),
        "reopened: same port"
    );
    browser.goto(v["url"].as_str().unwrap()).await.unwrap();
    browser
        .wait_until(
            "the browser's WebSocket echoed before the kill",
            "return window.gn && window.gn.echoes >= 1 && location.pathname;",
            Duration::from_secs(20),
        )
        .await
        .unwrap();

    // kill -9 the replica that opened the editor.
    orchs[holder].kill9();
    let killed = Instant::now();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    // The open WebSocket drops.
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(
        dropped.is_ok(),
        "the WebSocket did not end with its replica"
    );
    eprintln!("the WebSocket ended {:?} after the kill", killed.elapsed());

    // The page reloads through the same entrance, with the same cookie: the survivor serves it.
    let mut statuses = Vec::new();
    let page_back = loop {
        let (s, body) = get(&page, Some(&session)).await;
        statuses.push(s);
        if s == 200 {
            assert_eq!(body, PAGE);
            break killed.elapsed();
        }
        assert!(
            s == 502 || s == 0,
            "only a gateway error may come before the survivor answers: {s} {body}"
        );
        assert!(killed.elapsed() < Duration::from_secs(10), "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // code-server's client reconnects its WebSocket: it reaches the editor again.
    let mut ws_attempts = 0;
    let ws_back = loop {
        ws_attempts += 1;
        match ws_connect(&ws_url, &session).await {
            Ok(mut ws) => {
                echo(&mut ws, "after").await.unwrap();
                let _ = ws.close(None).await;
                break killed.elapsed();
            }
            Err(e) => {
                assert!(killed.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!(
        "after the kill: page answered in {page_back:?} (statuses {statuses:?}), WebSocket \
         echoed in {ws_back:?} ({ws_attempts} attempt(s))"
    );
    // The browser's page reconnected its WebSocket by itself, through the dashboard's relay, to
    // the survivor (the first request of that session there), and got its echo.
    let gn = browser
        .wait_until(
            "the browser's WebSocket reconnected and echoed after the kill",
            "return window.gn.drops >= 1 && window.gn.echoes >= 2 && window.gn;",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let browser_back = gn["echoAt"].as_i64().unwrap() - killed_ms;
    eprintln!(
        "the browser's own WebSocket reconnected and echoed {browser_back} ms after the kill \
         (its page waits 100 ms before reconnecting; {gn})"
    );
    assert!(browser_back < 10_000, "{gn}");

    // The iframe, through the dashboard's relay: its WebSocket ended too; the page and a new
    // WebSocket work again.
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = iframe_ws_conn.next().await {}
    })
    .await;
    assert!(dropped.is_ok(), "the iframe's WebSocket did not end");
    let (s, body) = get(&iframe_page, Some(&iframe_cookie)).await;
    assert_eq!((s, body.as_str()), (200, PAGE), "the iframe after the kill");
    let mut again = ws_connect(&iframe_ws, &iframe_cookie).await.unwrap();
    echo(&mut again, "iframe after").await.unwrap();
    let iframe_back = killed.elapsed();
    eprintln!(
        "the dashboard's iframe (page and WebSocket) works again {iframe_back:?} after the kill"
    );

    // The survivor now serves the session under the same port (even to the admin alone).
    let r = http()
        .get(format!("{}{path}", orchs[survivor].url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the survivor adopted the session");
    // And through the round-robin load balancer too.
    let (s, body) = get(&format!("{lb_url}{path}"), Some(&session)).await;
    assert_eq!((s, body.as_str()), (200, PAGE));

    // What the survivor refuses: no cookie, a tampered one, another port's.
    let (name, value) = session.split_once('=').unwrap();
    let mut flipped = value.to_owned();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    let other_port = if port == u16::MAX { port - 1 } else { port + 1 };
    let forged_port = value.replacen(&format!(".{port}."), &format!(".{other_port}."), 1);
    for (what, url, cookie) in [
        ("no cookie", page.clone(), None),
        (
            "tampered MAC",
            page.clone(),
            Some(format!("{name}={flipped}")),
        ),
        (
            "the session on another port",
            format!("{}/editor/proxy/{other_port}/", entrance.url()),
            Some(session.clone()),
        ),
        (
            "a port changed in the token",
            format!("{}/editor/proxy/{other_port}/", entrance.url()),
            Some(format!("{name}={forged_port}")),
        ),
    ] {
        let (s, body) = get(&url, cookie.as_deref()).await;
        assert_eq!(s, 401, "{what}: {body}");
    }

    // The session ends with its agent: after the task is cancelled, the cookie opens nothing.
    c.cancel(&task.id).await.unwrap();
    c.cancel(&task2.id).await.unwrap();
    wait_terminal(&c, std::slice::from_ref(&task.id), 60).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = get(&page, Some(&session)).await;
        if s == 404 {
            assert_eq!(code(&body), "editor_closed", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still served after the agent ended: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
