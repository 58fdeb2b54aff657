//! Browser tests: headless Chromium (testbed ChromeDriver) against a real dashboard and a real
//! orchestrator. Screenshots of each page go to
//! `$CARGO_TARGET_DIR/guildnet-artifacts/dashboard/` and are checked not to be blank.

mod support;

use guildnet_testbed::browser::{ChromeDriver, Session};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use support::*;

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // target/<profile>/deps/<test binary>
            std::env::current_exe()
                .ok()
                .and_then(|p| p.ancestors().nth(3).map(|p| p.to_owned()))
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("guildnet-artifacts").join("dashboard");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Saves a screenshot and checks it is a PNG with more than one colour.
async fn shot(s: &Session, name: &str) {
    let path = artifacts_dir().join(format!("{name}.png"));
    let bytes = s.save_screenshot(&path).await.expect("screenshot");
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let px = info.color_type.samples() * (info.bit_depth as u8 as usize).div_ceil(8);
    let data = &buf[..info.buffer_size()];
    let first = &data[..px];
    let distinct = data.chunks(px).filter(|c| *c != first).count();
    assert!(
        distinct > (data.len() / px) / 100,
        "screenshot {name} looks blank ({distinct} pixels differ from the first)"
    );
}

/// Polls a JS expression until it returns a truthy value; returns it.
async fn wait_js(s: &Session, what: &str, script: &str, secs: u64) -> Value {
    match s.wait_until(what, script, Duration::from_secs(secs)).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

async fn visible(s: &Session, id: &str, secs: u64) {
    wait_js(
        s,
        &format!("#{id} visible"),
        &format!(
            "const e = document.getElementById('{id}'); return !!e && e.offsetParent !== null;"
        ),
        secs,
    )
    .await;
}

async fn click(s: &Session, css: &str) {
    s.click_css(css)
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(s: &Session, css: &str, text: &str) {
    s.send_keys_css(css, text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_org_kubeconfig_error_and_live_task() {
    let env = start(|_| {}).await;
    let driver = ChromeDriver::start().await.expect("chromedriver");
    let s = driver.new_session(true).await.expect("browser session");

    // Login page; a wrong password shows the server's message.
    s.goto(&env.dash_url).await.unwrap();
    visible(&s, "page-login", 20).await;
    shot(&s, "login").await;
    type_into(&s, "#login-password", "wrong").await;
    click(&s, "#login-submit").await;
    wait_js(
        &s,
        "login error",
        "return document.getElementById('login-error').textContent.includes('wrong password')",
        10,
    )
    .await;
    s.execute(
        "document.getElementById('login-password').value = ''",
        vec![],
    )
    .await
    .unwrap();
    type_into(&s, "#login-password", PASSWORD).await;
    click(&s, "#login-submit").await;

    // Setup gate, then continue without a network.
    visible(&s, "setup-gate", 20).await;
    shot(&s, "setup").await;
    click(&s, "#setup-skip").await;
    visible(&s, "page-tasks", 20).await;
    // No token or password reachable from script; the session cookie is HttpOnly.
    let cookies = s.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""));

    // Orgs: empty state, create one.
    click(&s, "#nav-orgs").await;
    visible(&s, "orgs-empty", 10).await;
    type_into(&s, "#org-create-name", "acme").await;
    click(&s, "#org-create-submit").await;
    s.wait_for_css(
        "[data-testid=org-row][data-org=acme]",
        Duration::from_secs(15),
    )
    .await
    .expect("org row");
    visible(&s, "org-detail", 10).await;
    // A bad kubeconfig shows the server's explanation.
    type_into(
        &s,
        "#kubeconfig-text",
        "apiVersion: v1\nkind: Config\nclusters: []\n",
    )
    .await;
    click(&s, "#kubeconfig-upload").await;
    let msg = wait_js(
        &s,
        "kubeconfig error",
        "const e = document.getElementById('kubeconfig-error'); return !e.hidden && e.textContent;",
        10,
    )
    .await;
    assert!(
        msg.as_str().unwrap().contains("no current-context"),
        "{msg}"
    );
    shot(&s, "orgs").await;
    // A good one is accepted and its server shown.
    s.execute(
        "document.getElementById('kubeconfig-text').value = arguments[0]",
        vec![json!(GOOD_KUBECONFIG)],
    )
    .await
    .unwrap();
    click(&s, "#kubeconfig-upload").await;
    wait_js(
        &s,
        "kubeconfig status",
        "return document.getElementById('kubeconfig-status').textContent.includes('https://10.0.0.1:6443')",
        10,
    )
    .await;

    // Tasks: schedule and watch it succeed without a reload.
    click(&s, "#nav-tasks").await;
    visible(&s, "page-tasks", 10).await;
    wait_js(
        &s,
        "org in the schedule box",
        "return [...document.querySelectorAll('#schedule-org option')].some(o => o.value === 'acme')",
        10,
    )
    .await;
    wait_js(
        &s,
        "live stream",
        "return document.getElementById('live-status').textContent === 'live'",
        15,
    )
    .await;
    s.execute("window.__sameDocument = 'yes'", vec![])
        .await
        .unwrap();
    type_into(&s, "#schedule-task", "write the release notes").await;
    click(&s, "#schedule-submit").await;
    wait_js(
        &s,
        "task Succeeded live",
        "const r = document.querySelector('[data-testid=task-row] [data-testid=task-status]'); return !!r && r.textContent === 'Succeeded';",
        60,
    )
    .await;
    let same = s
        .execute("return window.__sameDocument", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!("yes"), "the page reloaded");
    // Task detail with its live log.
    click(&s, "[data-testid=task-row]").await;
    visible(&s, "task-detail", 10).await;
    wait_js(
        &s,
        "task log",
        "return document.getElementById('task-log').textContent.includes('write the release notes')",
        20,
    )
    .await;
    shot(&s, "tasks").await;

    // The open task is in the address (a deep link), and the list filters by status.
    let id = s
        .execute(
            "return document.querySelector('[data-testid=task-row]').dataset.taskId",
            vec![],
        )
        .await
        .unwrap();
    let id = id.as_str().unwrap().to_owned();
    let url = s.current_url().await.unwrap();
    assert!(url.ends_with(&format!("#/tasks/{id}")), "{url}");
    let filter = |status: &str| {
        format!(
            "const f = document.getElementById('tasks-filter-status'); f.value = '{status}'; \
             f.dispatchEvent(new Event('change'));"
        )
    };
    s.execute(&filter("Failed"), vec![]).await.unwrap();
    visible(&s, "tasks-empty", 10).await;
    s.execute(&filter("Succeeded"), vec![]).await.unwrap();
    s.wait_for_css("[data-testid=task-row]", Duration::from_secs(10))
        .await
        .expect("the succeeded task listed");
    s.execute(&filter(""), vec![]).await.unwrap();
    // Opening the deep link in a fresh page shows that task and its log.
    s.goto("about:blank").await.unwrap();
    s.goto(&format!("{}/#/tasks/{id}", env.dash_url))
        .await
        .unwrap();
    visible(&s, "task-detail", 20).await;
    wait_js(
        &s,
        "the linked task's log",
        "return document.getElementById('task-log').textContent.includes('write the release notes')",
        20,
    )
    .await;
    click(&s, "#task-detail-close").await;

    // Agents page: active agents by default; the finished task's agent shows with "Show
    // finished agents", as exited, with no editor to open.
    click(&s, "#nav-agents").await;
    visible(&s, "page-agents", 5).await;
    click(&s, "#agents-show-finished").await;
    s.wait_for_css("[data-testid=agent-row]", Duration::from_secs(10))
        .await
        .expect("agent row");
    wait_js(
        &s,
        "the finished agent shown as exited",
        "const r = document.querySelector('[data-testid=agent-row]'); \
         return r.dataset.active === 'false' \
           && r.querySelector('[data-testid=agent-state]').textContent.startsWith('exited') \
           && !r.querySelector('[data-testid=open-editor]');",
        20,
    )
    .await;
    shot(&s, "agents").await;

    // Artifacts page: empty state.
    click(&s, "#nav-artifacts").await;
    visible(&s, "artifacts-empty", 10).await;
    shot(&s, "artifacts").await;

    // Phone width: the tasks page fits without horizontal scrolling.
    let rect = reqwest::Client::new()
        .post(format!("{}/session/{}/window/rect", driver.url(), s.id()))
        .json(&json!({"width": 390, "height": 844}))
        .send()
        .await
        .expect("set window rect");
    assert!(rect.status().is_success(), "window/rect: {}", rect.status());
    click(&s, "#nav-tasks").await;
    visible(&s, "page-tasks", 10).await;
    let dims = s
        .execute(
            "return [window.innerWidth, document.documentElement.scrollWidth, [...document.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)]",
            vec![],
        )
        .await
        .unwrap();
    eprintln!("phone width: [innerWidth, scrollWidth, overflowing] = {dims}");
    wait_js(
        &s,
        "no horizontal overflow at phone width",
        "return window.innerWidth < 500 && document.documentElement.scrollWidth <= window.innerWidth + 1",
        10,
    )
    .await;
    shot(&s, "tasks-phone").await;

    s.close().await.ok();
}
