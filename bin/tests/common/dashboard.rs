//! The dashboard: the real `guildnet-dashboard` binary in front of an orchestrator, its page in
//! headless Chromium (the testbed's ChromeDriver) and the `guildnet` CLI as a person runs them.

use guildnet_testbed::browser::Session;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

/// The dashboard binary (killed on drop), on 127.0.0.1.
pub struct Dashboard {
    child: Child,
    port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Dashboard {
    /// Starts `guildnet-dashboard` with its state in `state`, in front of the orchestrator at
    /// `orchestrator_url` (admin `token`), with login `password`, the `extra` flags
    /// (`--operator-image ...`) and `env` on top of the test's own (`GUILDNET_HEADSCALE`...).
    /// Its output goes to `<state>.log`.
    pub fn start(
        state: &Path,
        orchestrator_url: &str,
        token: &str,
        password: &str,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let port = super::free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.with_extension("log"))
            .expect("dashboard log file");
        let child = Command::new(env!("CARGO_BIN_EXE_guildnet-dashboard"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--orchestrator-url", orchestrator_url])
            .arg("--state-dir")
            .arg(state)
            .args(["--login-link", "never"])
            .args(extra)
            .envs(env.iter().copied())
            .env("ORCHESTRATOR_TOKEN", token)
            .env("GUILDNET_DASHBOARD_PASSWORD", password)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn the dashboard");
        Dashboard {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Logs in over HTTP (retrying until it listens, 30 s) and returns the session cookie pair.
    /// Only this dashboard's answer counts: not another process's that took its port first.
    pub async fn login(&self, password: &str) -> String {
        let http = reqwest::Client::new();
        let (pid, port) = (self.child.id(), self.port);
        let login =
            guildnet_testbed::eventually("dashboard login", Duration::from_secs(30), || {
                let req = http
                    .post(format!("{}/api/login", self.url))
                    .json(&serde_json::json!({ "password": password }));
                async move {
                    if !guildnet_testbed::process::listens_on(&[pid], port) {
                        return None;
                    }
                    req.send().await.ok().filter(|r| r.status() == 200)
                }
            })
            .await;
        login.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .split(';')
            .next()
            .expect("cookie pair")
            .to_owned()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a JS expression in the page until it is truthy and returns it; panics with `what`.
pub async fn wait_js(s: &Session, what: &str, script: &str, secs: u64) -> Value {
    match s.wait_until(what, script, Duration::from_secs(secs)).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Waits until the element with this id is shown (rendered, not hidden).
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

/// Clicks the first element matching `css` (looked up again when a re-render made it stale).
pub async fn click(s: &Session, css: &str) {
    s.click_css(css)
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Types `text` into the first element matching `css` (looked up again when stale).
pub async fn type_into(s: &Session, css: &str, text: &str) {
    s.send_keys_css(css, text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
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
