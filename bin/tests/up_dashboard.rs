//! `guildnet up` as a person runs it: the real CLI starts the orchestrator (SQLite, local
//! backend) and the dashboard in one process and prints the URL and how to log in. An agent
//! runs the testbed's real code-server; headless Chromium logs in to the dashboard, opens the
//! agent's editor in the iframe (served from the dashboard's separate editor origin, which
//! relays to the orchestrator's editor proxy) and sees the workbench and its explorer, which
//! needs the WebSocket to code-server through both proxies. The editor origin's rules (one-time
//! tickets, its own cookie, no dashboard cookie forwarded) are checked over HTTP too.
//!
//! The orgs are the orchestrator's wherever they are created: an org made with `guildnet org
//! create` shows in the dashboard's page, one made in the page shows in `guildnet org list` and
//! the orchestrator's `GET /orgs`, and the page never shows a stale list.

mod common;

use common::dashboard::{cli, cli_ok, click, log_in, type_into, visible, wait_js};
use common::{free_port, GuildnetUp};
use guildnet_core::client::OrchestratorClient;
use guildnet_core::names::OrgName;
use guildnet_core::token::Secret;
use guildnet_testbed::browser::ChromeDriver;
use guildnet_testbed::eventually;
use guildnet_testbed::image::{artifact_dir, decode_png};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guildnet_up_serves_the_dashboard_and_its_editor_iframe_reaches_code_server() {
    let code_server = guildnet_testbed::bin("code-server").expect("testbed code-server");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (orch_port, dash_port) = (free_port(), free_port());
    // What `guildnet up` prints: both URLs, where the token and the password are.
    let up = GuildnetUp::start(&state, orch_port, dash_port, &code_server);
    let dash_url = format!("http://127.0.0.1:{dash_port}");
    let printed = up.printed.clone();
    let text = printed.join("\n");
    assert!(
        text.contains(&format!("GuildNet dashboard: {dash_url}")),
        "{text}"
    );
    let password_file = state.join("dashboard.password");
    assert!(
        text.contains(&format!(
            "Log in with the password in {}",
            password_file.display()
        )),
        "{text}"
    );
    let password = std::fs::read_to_string(&password_file).unwrap();
    let password = password.trim();
    // The one-time login link: one line, the dashboard's /login/link with a token.
    let link_prefix = format!("{dash_url}/login/link?token=");
    let links: Vec<&str> = printed
        .iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with(&link_prefix)))
        .collect();
    assert_eq!(links.len(), 1, "{text}");
    let login_link = links[0].to_owned();
    // It works once (303 to the dashboard with a session cookie), then never again.
    let r = http().get(&login_link).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let link_session = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let who: Value = http()
        .get(format!("{dash_url}/api/session"))
        .header("cookie", &link_session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["authenticated"], true, "{who}");
    let again = http().get(&login_link).send().await.unwrap();
    assert_eq!(again.status(), 401, "a login link works once");
    assert!(again.headers().get("set-cookie").is_none());
    assert!(again
        .text()
        .await
        .unwrap()
        .contains("already used or has expired"));
    let forged = http()
        .get(format!("{link_prefix}{}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let token = std::fs::read_to_string(state.join("orchestrator.token")).unwrap();
    assert!(
        !text.contains(password) && !text.contains(token.trim()),
        "secrets printed"
    );

    // A task whose agent serves its workspace in code-server.
    let c = OrchestratorClient::new(
        &format!("http://127.0.0.1:{orch_port}"),
        Secret::new(token.trim()),
    )
    .unwrap();
    let task = c
        .schedule(&OrgName::new("acme").unwrap(), "watch me", None)
        .await
        .unwrap();
    let agent = eventually(
        "the agent's editor running",
        Duration::from_secs(120),
        || async {
            let t = c.task(&task.id).await.ok()?;
            let a = c.agent(t.agent.as_ref()?).await.ok()?;
            (a.state["editor"]["state"] == "running").then_some(a.name)
        },
    )
    .await;

    // The dashboard's own origin serves no editor content any more.
    let login = http()
        .post(format!("{dash_url}/api/login"))
        .json(&json!({"password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let session = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = http()
        .get(format!("{dash_url}/embed/orchestrator/{orch_port}/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "editor content on the dashboard origin");

    // Opening an editor answers a one-time ticket URL on the editor origin (another port).
    let opened: Value = http()
        .post(format!("{dash_url}/api/agents/{agent}/editor"))
        .header("cookie", &session)
        .header("origin", &dash_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = opened["url"].as_str().expect("url").to_owned();
    let port = opened["port"].as_u64().unwrap();
    let editor_origin = url.split("/_guildnet/").next().unwrap().to_owned();
    assert!(
        editor_origin.starts_with("http://127.0.0.1:") && editor_origin != dash_url,
        "{url}"
    );
    let path = format!("/e/{port}/");
    // Without the editor origin's own session, nothing is relayed: neither with no cookie nor
    // with the dashboard's session cookie (browsers send it to every port of the host).
    for cookie in [None, Some(session.as_str())] {
        let mut req = http().get(format!("{editor_origin}{path}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "cookie {cookie:?}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let bad = http()
        .get(format!("{editor_origin}/_guildnet/enter?ticket=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    // The ticket gives the editor origin's own cookie and sends the browser to the editor.
    let entered = http().get(&url).send().await.unwrap();
    assert_eq!(entered.status(), 303);
    assert_eq!(entered.headers()["location"], path.as_str());
    let editor_cookie = entered.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        editor_cookie.starts_with("guildnet_editor=") && editor_cookie.contains("HttpOnly"),
        "{editor_cookie}"
    );
    let editor_cookie = editor_cookie.split(';').next().unwrap().to_owned();
    let again = http().get(&url).send().await.unwrap();
    assert_eq!(again.status(), 401, "a ticket works once");
    // Another port than the ticket's is refused.
    let r = http()
        .get(format!("{editor_origin}/e/{orch_port}/"))
        .header("cookie", &editor_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The page comes back logged in to code-server, framed only by the dashboard, and its
    // redirect stays under the relay's prefix.
    let mut r = http()
        .get(format!("{editor_origin}{path}"))
        .header("cookie", format!("{editor_cookie}; {session}"))
        .send()
        .await
        .unwrap();
    if r.status().is_redirection() {
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(!loc.contains("login"), "{loc}");
        assert!(!loc.starts_with('/') || loc.starts_with(&path), "{loc}");
        let next = reqwest::Url::parse(&format!("{editor_origin}{path}"))
            .unwrap()
            .join(&loc)
            .unwrap();
        r = http()
            .get(next)
            .header("cookie", &editor_cookie)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(r.status(), 200);
    let csp: Vec<String> = r
        .headers()
        .get_all("content-security-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        csp.iter()
            .any(|c| c == &format!("frame-ancestors {dash_url}")),
        "{csp:?}"
    );
    assert!(
        !csp.iter()
            .any(|c| c.contains("object-src 'none'; base-uri 'none'")),
        "the dashboard's own policy would break code-server: {csp:?}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("workbench"), "{html:.300}");

    // A WebSocket upgrade through the editor origin and the orchestrator's proxy.
    let ws_url = format!(
        "{}{path}?reconnectionToken=0b8f1c2e-4a2b-4c1d-9e3f-5a6b7c8d9e0f&reconnection=false&skipWebSocketFrames=false",
        editor_origin.replacen("http://", "ws://", 1)
    );
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", editor_cookie.parse().unwrap());
    req.headers_mut()
        .insert("origin", editor_origin.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket through the editor origin");
    assert_eq!(resp.status(), 101);
    drop(ws);
    let err = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect_err("an upgrade without an editor session");
    assert!(err.to_string().contains("401"), "{err}");

    // Chromium: log in, skip the mesh, open the editor from the agents page.
    let driver = ChromeDriver::start().await.expect("chromedriver");
    let s = driver.new_session(true).await.expect("session");
    log_in(&s, &dash_url, password).await;
    let nav = s.find_css("#nav-agents").await.unwrap();
    s.click(&nav).await.unwrap();
    // The agents list re-renders on live events: the button is clicked by its selector, looked
    // up again if the row was replaced meanwhile.
    let open = format!("[data-testid=agent-row][data-agent='{agent}'] [data-testid=open-editor]");
    s.wait_for_css(&open, Duration::from_secs(30))
        .await
        .expect("agent row with an Open editor button");
    s.click_css(&open).await.unwrap();
    let src = wait_js(
        &s,
        "iframe src",
        "const f = document.getElementById('editor-frame'); return f && f.getAttribute('src');",
        30,
    )
    .await;
    let src = src.as_str().unwrap_or_default().to_owned();
    assert!(
        src.starts_with(&format!("{editor_origin}/_guildnet/enter?ticket=")),
        "{src}"
    );
    // Once the editor loads, the frame is cross-origin: the dashboard's script cannot reach
    // into it (`contentDocument` is null).
    wait_js(
        &s,
        "a cross-origin editor frame",
        "return document.getElementById('editor-frame').contentDocument === null;",
        60,
    )
    .await;
    let frame = s.find_css("#editor-frame").await.unwrap();
    s.switch_to_frame(&frame).await.unwrap();
    wait_js(
        &s,
        "workbench in the iframe",
        "return !!document.querySelector('.monaco-workbench');",
        120,
    )
    .await;
    wait_js(
        &s,
        "explorer in the iframe (needs the WebSocket to code-server)",
        "return !!document.querySelector('.explorer-folders-view, .explorer-viewlet');",
        90,
    )
    .await;
    let frame_origin = s.execute("return location.origin;", vec![]).await.unwrap();
    assert_eq!(frame_origin, json!(editor_origin));
    s.switch_to_top().await.unwrap();
    // Give the workbench a moment to paint before the screenshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shot = artifact_dir("dashboard").join("editor-iframe.png");
    let png = s.save_screenshot(&shot).await.unwrap();
    let (rendered, colours) = decode_png(&png).unwrap().looks_rendered();
    assert!(rendered, "screenshot looks blank: {colours} colours");
    s.close().await.unwrap();

    c.cancel(&task.id).await.unwrap();
    drop(up);
}

/// Names of the org rows the dashboard's orgs page shows, in order.
async fn org_rows(s: &guildnet_testbed::browser::Session) -> Vec<String> {
    let v = s
        .execute(
            "return [...document.querySelectorAll('[data-testid=org-row]')].map(r => r.dataset.org);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// The orgs of the schedule box on the tasks page.
async fn schedule_orgs(s: &guildnet_testbed::browser::Session) -> Vec<String> {
    let v = s
        .execute(
            "return [...document.querySelectorAll('#schedule-org option')].map(o => o.value);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Waits until the orgs page lists exactly the orgs `want` (sorted).
async fn wait_org_rows(s: &guildnet_testbed::browser::Session, want: &[&str]) {
    let script = format!(
        "const rows = [...document.querySelectorAll('[data-testid=org-row]')].map(r => r.dataset.org).sort(); \
         return JSON.stringify(rows) === {:?};",
        serde_json::to_string(want).unwrap()
    );
    wait_js(s, &format!("org rows {want:?}"), &script, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_cli_show_the_same_orgs() {
    let code_server = guildnet_testbed::bin("code-server").expect("testbed code-server");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (orch_port, dash_port) = (free_port(), free_port());
    let up = GuildnetUp::start(&state, orch_port, dash_port, &code_server);
    let (orch_url, dash_url) = (
        format!("http://127.0.0.1:{orch_port}"),
        format!("http://127.0.0.1:{dash_port}"),
    );
    let password = std::fs::read_to_string(state.join("dashboard.password")).unwrap();
    let token = std::fs::read_to_string(state.join("orchestrator.token")).unwrap();
    let orch = OrchestratorClient::new(&orch_url, Secret::new(token.trim())).unwrap();
    let api_orgs = || async {
        let mut names: Vec<String> = orch
            .orgs()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.name.to_string())
            .collect();
        names.sort();
        names
    };
    let cli_orgs = || {
        let mut names: Vec<String> = cli_ok(&state, &orch_url, &["org", "list"])
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    };

    // Made with the CLI (a real process) ...
    let out = cli_ok(&state, &orch_url, &["org", "create", "cli-made"]);
    assert!(out.contains("cli-made"), "{out}");
    assert_eq!(api_orgs().await, ["acme", "cli-made"]);

    // ... the dashboard's orgs page lists it beside `guildnet up`'s org.
    let driver = ChromeDriver::start().await.expect("chromedriver");
    let s = driver.new_session(true).await.expect("session");
    log_in(&s, &dash_url, password.trim()).await;
    click(&s, "#nav-orgs").await;
    visible(&s, "page-orgs", 10).await;
    wait_org_rows(&s, &["acme", "cli-made"]).await;

    // Made in the page: `guildnet org list` and the orchestrator's `GET /orgs` have it.
    type_into(&s, "#org-create-name", "ui-made").await;
    click(&s, "#org-create-submit").await;
    s.wait_for_css(
        "[data-testid=org-row][data-org=ui-made]",
        Duration::from_secs(15),
    )
    .await
    .expect("the org made in the page listed");
    let err = s
        .execute(
            "return document.getElementById('org-create-error').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(err, json!(""), "the page showed an error");
    assert_eq!(cli_orgs(), ["acme", "cli-made", "ui-made"]);
    assert_eq!(api_orgs().await, ["acme", "cli-made", "ui-made"]);
    // The same through the orchestrator's HTTP API as any client sees it.
    let listed: Value = http()
        .get(format!("{orch_url}/orgs"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .expect("a list of orgs")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert!(names.contains(&"ui-made"), "{listed}");

    // While the page stays open, the CLI adds one and removes another: the page shows the
    // orchestrator's list each time it is shown, not a copy it kept (the schedule box too).
    cli_ok(&state, &orch_url, &["org", "create", "cli-later"]);
    cli_ok(&state, &orch_url, &["org", "delete", "cli-made"]);
    click(&s, "#nav-tasks").await;
    visible(&s, "page-tasks", 10).await;
    wait_js(
        &s,
        "the schedule box follows the orchestrator's orgs",
        "const o = [...document.querySelectorAll('#schedule-org option')].map(o => o.value); \
         return o.includes('cli-later') && !o.includes('cli-made');",
        15,
    )
    .await;
    let mut in_box = schedule_orgs(&s).await;
    in_box.sort();
    assert_eq!(in_box, ["acme", "cli-later", "ui-made"]);
    click(&s, "#nav-orgs").await;
    visible(&s, "page-orgs", 10).await;
    wait_org_rows(&s, &["acme", "cli-later", "ui-made"]).await;
    let mut rows = org_rows(&s).await;
    rows.sort();
    assert_eq!(rows, cli_orgs());

    // An invalid name: refused in the page with the reason the CLI gives too; nothing is made.
    type_into(&s, "#org-create-name", "Bad_Name").await;
    click(&s, "#org-create-submit").await;
    let msg = wait_js(
        &s,
        "org create error",
        "const e = document.getElementById('org-create-error'); return !e.hidden && e.textContent;",
        10,
    )
    .await;
    let out = cli(&state, &orch_url, &["org", "create", "Bad_Name"]);
    assert!(!out.status.success());
    let (msg, stderr) = (
        msg.as_str().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !msg.is_empty() && stderr.contains(msg),
        "page: {msg}; cli: {stderr}"
    );
    assert_eq!(cli_orgs(), ["acme", "cli-later", "ui-made"]);

    s.close().await.unwrap();
    drop(up);
}
