//! The review's high-severity dashboard finding, reproduced in headless Chromium: editor content
//! is untrusted (a runner controls the agent's machine and can replace code-server), and a
//! script in it must not act as the admin who opens it in the dashboard.
//!
//! The agent's "code-server" here is a hostile stand-in: a small HTTP server that answers every
//! path (`/healthz` included) with a page whose script tries what a hostile editor would: call
//! `POST /api/schedule` and read `GET /api/tasks` on the dashboard with the admin's cookies,
//! reach into the parent page, and set a cookie named like the dashboard's session. The test
//! opens that editor from the dashboard as the admin, lets the script run, and checks that
//! nothing happened: no task scheduled, nothing read, the session intact.

mod common;

use common::{free_port, GuildnetUp};
use guildnet_core::client::OrchestratorClient;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::TaskListQuery;
use guildnet_core::token::Secret;
use guildnet_testbed::browser::ChromeDriver;
use guildnet_testbed::eventually;
use serde_json::{json, Value};
use std::time::Duration;

/// The hostile editor: serves `page` on the address code-server would bind.
fn hostile_editor(dir: &std::path::Path, page: &str) -> std::path::PathBuf {
    let html = dir.join("hostile.html");
    std::fs::write(&html, page).unwrap();
    let script = dir.join("hostile-code-server");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# Stand-in for a runner that replaced code-server: any page, on the editor's address.
addr=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bind-addr) addr="$2"; shift ;;
  esac
  shift
done
exec python3 -c '
import http.server, sys
host, port = sys.argv[1].rsplit(":", 1)
page = open(sys.argv[2], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)
    do_GET = do_POST = answer
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((host, int(port)), H).serve_forever()
' "$addr" "{}"
"#,
            html.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_editor_content_cannot_act_as_the_dashboard_admin() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (orch_port, dash_port) = (free_port(), free_port());
    let dash_url = format!("http://127.0.0.1:{dash_port}");
    // What a hostile page tries; it reports each outcome in its title and in its own storage
    // (read back through WebDriver from inside the frame).
    let page = format!(
        r#"<!doctype html><title>hostile</title><body>hostile editor<script>
const out = {{}};
const done = () => {{ document.title = 'done:' + JSON.stringify(out); }};
try {{ out.parent = String(window.parent.document.cookie); }} catch (e) {{ out.parent = 'blocked'; }}
document.cookie = 'guildnet_session=attacker; path=/';
Promise.all([
  fetch('{dash_url}/api/schedule', {{method: 'POST', credentials: 'include', mode: 'no-cors',
    headers: {{'content-type': 'text/plain'}}, body: JSON.stringify({{org: 'acme', task: 'pwned'}})}})
    .then(r => {{ out.schedule = r.type + ':' + r.status; }}, e => {{ out.schedule = 'error'; }}),
  fetch('{dash_url}/api/schedule', {{method: 'POST', credentials: 'include',
    headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{org: 'acme', task: 'pwned-json'}})}})
    .then(r => {{ out.scheduleJson = r.status; }}, e => {{ out.scheduleJson = 'error'; }}),
  fetch('{dash_url}/api/tasks', {{credentials: 'include'}})
    .then(r => r.text()).then(t => {{ out.tasks = t.slice(0, 200); }}, e => {{ out.tasks = 'error'; }}),
]).then(done, done);
</script>"#
    );
    let code_server = hostile_editor(dir.path(), &page);
    let _up = GuildnetUp::start(&state, orch_port, dash_port, &code_server);
    let password = std::fs::read_to_string(state.join("dashboard.password")).unwrap();
    let token = std::fs::read_to_string(state.join("orchestrator.token")).unwrap();
    let c = OrchestratorClient::new(
        &format!("http://127.0.0.1:{orch_port}"),
        Secret::new(token.trim()),
    )
    .unwrap();
    let task = c
        .schedule(
            &OrgName::new("acme").unwrap(),
            "host a hostile editor",
            None,
        )
        .await
        .unwrap();
    let agent = eventually(
        "the hostile editor reported running",
        Duration::from_secs(120),
        || async {
            let t = c.task(&task.id).await.ok()?;
            let a = c.agent(t.agent.as_ref()?).await.ok()?;
            (a.state["editor"]["state"] == "running").then_some(a.name)
        },
    )
    .await;

    // The admin logs in and opens the agent's editor from the agents page.
    let driver = ChromeDriver::start().await.expect("chromedriver");
    let s = driver.new_session(true).await.expect("session");
    s.goto(&dash_url).await.unwrap();
    let field = s
        .wait_for_css("#login-password", Duration::from_secs(20))
        .await
        .unwrap();
    s.send_keys(&field, password.trim()).await.unwrap();
    s.click(&s.find_css("#login-submit").await.unwrap())
        .await
        .unwrap();
    let skip = s
        .wait_for_css("#setup-skip", Duration::from_secs(20))
        .await
        .unwrap();
    s.wait_until(
        "setup gate",
        "const e = document.getElementById('setup-skip'); return !!e && e.offsetParent !== null;",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    s.click(&skip).await.unwrap();
    // The setup gate fades out: wait until the navigation takes clicks.
    s.wait_until(
        "navigation shown",
        "const n = document.getElementById('nav-agents'); const g = document.getElementById('setup-skip'); \
         return !!n && n.offsetParent !== null && (!g || g.offsetParent === null);",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    s.click(&s.find_css("#nav-agents").await.unwrap())
        .await
        .unwrap();
    // The agents list re-renders on live events: the button is clicked by its selector, looked
    // up again if the row was replaced meanwhile.
    let open = format!("[data-testid=agent-row][data-agent='{agent}'] [data-testid=open-editor]");
    s.wait_for_css(&open, Duration::from_secs(30))
        .await
        .expect("agent row with an Open editor button");
    s.click_css(&open).await.unwrap();

    // The hostile page loads in the frame and runs its script to the end.
    let frame = s
        .wait_for_css("#editor-frame[src^='http']", Duration::from_secs(30))
        .await
        .unwrap();
    s.switch_to_frame(&frame).await.unwrap();
    let title = s
        .wait_until(
            "the hostile script finished",
            "return document.title.startsWith('done:') && document.title;",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let origin = s.execute("return location.origin;", vec![]).await.unwrap();
    s.switch_to_top().await.unwrap();
    let out: Value =
        serde_json::from_str(title.as_str().unwrap().trim_start_matches("done:")).unwrap();
    assert_ne!(
        origin,
        json!(dash_url),
        "editor content on the dashboard origin"
    );
    assert_eq!(out["parent"], "blocked", "{out}");
    assert_eq!(
        out["tasks"], "error",
        "the dashboard's answer was readable: {out}"
    );
    assert_ne!(out["scheduleJson"], json!(200), "{out}");
    assert_ne!(out["scheduleJson"], json!(202), "{out}");

    // Nothing was scheduled, and the admin's own session still works from the dashboard page.
    let tasks = c.tasks(&TaskListQuery::default()).await.unwrap();
    assert!(
        tasks.iter().all(|t| !t.task.starts_with("pwned")),
        "the hostile page scheduled a task: {:?}",
        tasks.iter().map(|t| &t.task).collect::<Vec<_>>()
    );
    let still = s
        .execute(
            "return fetch('/api/session').then(r => r.json()).then(v => v.authenticated);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(still, json!(true), "the admin's session was disturbed");
    s.close().await.unwrap();
    c.cancel(&task.id).await.unwrap();
}
