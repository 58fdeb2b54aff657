//! The dashboard's page in headless Chromium (the testbed's ChromeDriver) and the `guildnet` CLI
//! as a person runs them, for the tests that drive `guildnet up`.

use guildnet_testbed::browser::Session;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Polls a JS expression in the page until it is truthy; returns its value (panics after
/// `secs`, naming `what`).
pub async fn wait_js(s: &Session, what: &str, script: &str, secs: u64) -> Value {
    match s.wait_until(what, script, Duration::from_secs(secs)).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Waits until the element with this id is displayed.
pub async fn visible(s: &Session, id: &str, secs: u64) {
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

/// Clicks the first element matching `css`.
pub async fn click(s: &Session, css: &str) {
    let e = s.find_css(css).await.expect(css);
    s.click(&e).await.expect(css);
}

/// Types into the first element matching `css`.
pub async fn type_into(s: &Session, css: &str, text: &str) {
    let e = s.find_css(css).await.expect(css);
    s.send_keys(&e, text).await.expect(css);
}

/// Opens the dashboard at `dash_url`, logs in with `password`, continues past the setup gate
/// without a network and waits until the navigation takes clicks.
pub async fn log_in(s: &Session, dash_url: &str, password: &str) {
    s.goto(dash_url).await.expect("dashboard page");
    visible(s, "login-password", 20).await;
    type_into(s, "#login-password", password).await;
    click(s, "#login-submit").await;
    visible(s, "setup-skip", 20).await;
    click(s, "#setup-skip").await;
    // The setup gate fades out: wait until the navigation takes clicks.
    wait_js(
        s,
        "navigation shown",
        "const n = document.getElementById('nav-agents'); const g = document.getElementById('setup-skip'); \
         return !!n && n.offsetParent !== null && (!g || g.offsetParent === null);",
        20,
    )
    .await;
}

/// Runs the real `guildnet` CLI against the orchestrator at `url`, with the admin token from
/// the state dir `state` (no context, no config file, no token in the environment).
pub fn cli(state: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guildnet"))
        .args(args)
        .env("GUILDNET_STATE_DIR", state)
        .env("GUILDNET_URL", url)
        .env("GUILDNET_CONFIG", state.join("absent-config.toml"))
        .env_remove("ORCHESTRATOR_TOKEN")
        .env_remove("GUILDNET_CONTEXT")
        .output()
        .expect("run guildnet")
}

/// Like [`cli`], asserting it succeeded; returns its standard output.
pub fn cli_ok(state: &Path, url: &str, args: &[&str]) -> String {
    let out = cli(state, url, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "guildnet {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
