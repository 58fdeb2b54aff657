//! chromedriver and a minimal W3C WebDriver client for headless Chromium.
//!
//! [`ChromeDriver::start`] runs Debian's chromedriver on a free loopback port; it only accepts
//! local connections. [`ChromeDriver::new_session`] launches Chromium (the real binary
//! `/usr/lib/chromium/chromium`, not the `/usr/bin/chromium` shell wrapper) with a fresh
//! profile dir. Chromium is a child of chromedriver and stays in its process group, so
//! dropping the [`ChromeDriver`] also kills every browser it started, even when a
//! [`Session`] was never closed.

use crate::process::Proc;
use crate::{bin, free_port, probe_client, wait_for, Result, TestbedError};
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The key under which W3C WebDriver returns element references.
pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The Debian package's real Chromium binary; `/usr/bin/chromium` is a shell wrapper around it.
const REAL_CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// How long chromedriver may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout of a single WebDriver command. Navigation waits for the page load inside the
/// command, so this is generous.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The Chromium binary to launch: `/usr/lib/chromium/chromium` if it exists (Debian's wrapper
/// `/usr/bin/chromium` prints a harmless `[: …: unexpected operator` on this machine, from its
/// `/etc/chromium.d/dev-shm` snippet), else the testbed's `bin/chromium` resolved through its
/// symlink.
pub fn chromium_binary() -> Result<PathBuf> {
    let real = Path::new(REAL_CHROMIUM);
    if real.is_file() {
        return Ok(real.to_owned());
    }
    let link = bin("chromium")?;
    Ok(std::fs::canonicalize(&link).unwrap_or(link))
}

/// The Chromium command-line switches a session uses (besides `--user-data-dir`).
///
/// `--no-sandbox` is needed as root; `--disable-dev-shm-usage` keeps shared memory in /tmp
/// (/dev/shm may be small in containers); the others keep a headless browser quiet and
/// deterministic on a machine without a GPU or network.
pub fn chromium_args(headless: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--password-store=basic",
        "--use-mock-keychain",
        "--mute-audio",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if headless {
        args.insert(0, "--headless=new".to_owned());
    }
    args
}

/// A running chromedriver on `127.0.0.1:<free port>`. Dropping it stops chromedriver and
/// every Chromium it launched (they share its process group), then removes the profiles.
#[derive(Debug)]
pub struct ChromeDriver {
    // Declared before `dir`, so the browsers stop before their profiles are removed.
    proc: Proc,
    url: String,
    http: reqwest::Client,
    sessions: AtomicUsize,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    /// Starts chromedriver (`--port=<free> --enable-chrome-logs`, so Chromium's own stderr
    /// lands in the same log) and waits until `GET /status` reports `ready: true`.
    ///
    /// No `--allowed-ips`: without it chromedriver listens on loopback only and accepts only
    /// local connections; with it, it would listen on every interface.
    pub async fn start() -> Result<ChromeDriver> {
        let program = bin("chromedriver")?;
        let dir = tempfile::Builder::new()
            .prefix("guildnet-chromedriver-")
            .tempdir()
            .map_err(TestbedError::io("create chromedriver temp dir"))?;
        let port = free_port()?;
        let args = [format!("--port={port}"), "--enable-chrome-logs".to_owned()];
        // Chromium keeps its crash database and caches under these; point them into the temp
        // dir so nothing lands in the real home.
        let config = dir.path().join("config");
        let cache = dir.path().join("cache");
        let mut proc = Proc::spawn(
            "chromedriver",
            &program,
            args,
            &[
                ("HOME", dir.path().as_os_str()),
                ("XDG_CONFIG_HOME", config.as_os_str()),
                ("XDG_CACHE_HOME", cache.as_os_str()),
            ],
            &dir.path().join("chromedriver.log"),
        )?
        .with_stop_timeout(Duration::from_secs(5))
        .listening_on(port);
        let url = format!("http://127.0.0.1:{port}");
        let status_url = format!("{url}/status");
        let probe = probe_client();
        wait_for(
            "chromedriver /status to report ready",
            START_TIMEOUT,
            Some(&mut proc),
            || {
                let req = probe.get(&status_url);
                async move {
                    let resp = req.send().await.ok()?;
                    let body: Value = resp.json().await.ok()?;
                    body.pointer("/value/ready")
                        .and_then(Value::as_bool)
                        .filter(|r| *r)
                }
            },
        )
        .await?;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(ChromeDriver {
            proc,
            url,
            http,
            sessions: AtomicUsize::new(0),
            dir,
        })
    }

    /// chromedriver's base URL, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// chromedriver's log file (with Chromium's stderr in it).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The last few KB of the log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// The driver's temp dir: its log, `HOME` for chromedriver and Chromium, and the
    /// sessions' profiles.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of chromedriver (also the id of its process group).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Launches a Chromium with a fresh profile (`--user-data-dir` inside this driver's temp
    /// dir) and the switches of [`chromium_args`], headless with `--headless=new` if asked.
    pub async fn new_session(&self, headless: bool) -> Result<Session> {
        self.new_session_with_args(headless, &[]).await
    }

    /// Like [`ChromeDriver::new_session`], with extra Chromium switches.
    pub async fn new_session_with_args(&self, headless: bool, extra: &[&str]) -> Result<Session> {
        let n = self.sessions.fetch_add(1, Ordering::SeqCst);
        let profile = self.dir.path().join(format!("profile-{n}"));
        std::fs::create_dir_all(&profile)
            .map_err(TestbedError::io(format!("create {}", profile.display())))?;
        let mut args = chromium_args(headless);
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let binary = chromium_binary()?;
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": {"pageLoad": 60_000, "script": 30_000, "implicit": 0},
                    "goog:chromeOptions": {
                        "binary": binary.to_string_lossy(),
                        "args": args,
                        "excludeSwitches": ["enable-automation"],
                    },
                }
            }
        });
        let value = command(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.url),
            Some(caps),
        )
        .await
        .map_err(|e| {
            TestbedError::Unexpected(format!(
                "new WebDriver session: {e}\nchromedriver log:\n{}",
                self.log_tail()
            ))
        })?;
        let id = value
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TestbedError::Unexpected(format!("new session answered without sessionId: {value}"))
            })?
            .to_owned();
        let browser_version = value
            .pointer("/capabilities/browserVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Session {
            http: self.http.clone(),
            base: format!("{}/session/{id}", self.url),
            id,
            browser_version,
            closed: false,
        })
    }
}

/// A reference to an element of the current page (its W3C WebDriver element id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(pub String);

impl Element {
    /// The element as a script argument for [`Session::execute`].
    pub fn to_json(&self) -> Value {
        json!({ ELEMENT_KEY: self.0 })
    }
}

/// A WebDriver session: one Chromium window.
///
/// Close it with [`Session::close`]. Dropping it unclosed tries to delete the session in the
/// background, and the [`ChromeDriver`]'s drop kills the browser in any case.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    base: String,
    id: String,
    browser_version: String,
    closed: bool,
}

impl Session {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The browser version reported at session creation, e.g. `156.0.8078.79`.
    pub fn browser_version(&self) -> &str {
        &self.browser_version
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        command(&self.http, method, &format!("{}{path}", self.base), body).await
    }

    /// Navigates to `url` and waits for the page load (document `complete`).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    /// The current URL.
    pub async fn current_url(&self) -> Result<String> {
        string(self.cmd(reqwest::Method::GET, "/url", None).await?, "url")
    }

    /// The document title.
    pub async fn title(&self) -> Result<String> {
        string(
            self.cmd(reqwest::Method::GET, "/title", None).await?,
            "title",
        )
    }

    /// The page source (the current DOM serialized).
    pub async fn source(&self) -> Result<String> {
        string(
            self.cmd(reqwest::Method::GET, "/source", None).await?,
            "source",
        )
    }

    /// The first element matching the CSS `selector`; an error if there is none.
    pub async fn find_css(&self, selector: &str) -> Result<Element> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": selector })),
            )
            .await?;
        element(&v)
    }

    /// Every element matching the CSS `selector` (possibly none).
    pub async fn find_all_css(&self, selector: &str) -> Result<Vec<Element>> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({ "using": "css selector", "value": selector })),
            )
            .await?;
        match v {
            Value::Array(items) => items.iter().map(element).collect(),
            other => Err(TestbedError::Unexpected(format!(
                "find elements answered {other}"
            ))),
        }
    }

    /// Polls every 200 ms until an element matches `selector`, or `timeout` passes. Errors of
    /// single polls (say, while a navigation is under way) are retried. The timeout error names
    /// the current URL and title, the last poll error if any, and quotes the start of the
    /// page's text.
    pub async fn wait_for_css(&self, selector: &str, timeout: Duration) -> Result<Element> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_error = None;
        loop {
            match self.find_all_css(selector).await {
                Ok(found) => {
                    if let Some(el) = found.into_iter().next() {
                        return Ok(el);
                    }
                }
                Err(e) => last_error = Some(e),
            }
            if tokio::time::Instant::now() >= deadline {
                let url = self.current_url().await.unwrap_or_default();
                let title = self.title().await.unwrap_or_default();
                let text = self
                    .execute(
                        "return document.body ? document.body.innerText.slice(0, 2000) : ''",
                        vec![],
                    )
                    .await
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let error = last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default();
                return Err(TestbedError::Timeout {
                    what: format!(
                        "an element matching `{selector}` at {url} (title {title:?}){error}"
                    ),
                    after: timeout,
                    log: format!("page text:\n{text}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The rendered text of `element`.
    pub async fn text(&self, element: &Element) -> Result<String> {
        let v = self
            .cmd(
                reqwest::Method::GET,
                &format!("/element/{}/text", element.0),
                None,
            )
            .await?;
        string(v, "element text")
    }

    /// The value of `element`'s property `name` (e.g. `value`), `null` if it has none.
    pub async fn property(&self, element: &Element, name: &str) -> Result<Value> {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{}/property/{name}", element.0),
            None,
        )
        .await
    }

    /// Clicks `element` (scrolling it into view first).
    pub async fn click(&self, element: &Element) -> Result<()> {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    /// Clicks the first element matching `css`. Pages that re-render (lists updated by live
    /// events) replace their elements: one gone stale between the lookup and the click is
    /// looked up again (up to 10 times, 100 ms apart).
    pub async fn click_css(&self, css: &str) -> Result<()> {
        self.on_fresh(css, |e| async move { self.click(&e).await })
            .await
    }

    /// Types `text` into the first element matching `css`, looking it up again when it went
    /// stale (as [`Session::click_css`]).
    pub async fn send_keys_css(&self, css: &str, text: &str) -> Result<()> {
        self.on_fresh(css, |e| async move { self.send_keys(&e, text).await })
            .await
    }

    /// Runs `f` on the first element matching `css`, again on a fresh lookup while it fails
    /// with WebDriver's "stale element reference".
    async fn on_fresh<F, Fut>(&self, css: &str, f: F) -> Result<()>
    where
        F: Fn(Element) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let e = self.find_css(css).await?;
            match f(e).await {
                Err(err) if attempt < 10 && err.to_string().contains("stale element") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Types `text` into `element` (focusing it first). WebDriver key codes work too, e.g.
    /// `"\u{E007}"` for Enter.
    pub async fn send_keys(&self, element: &Element, text: &str) -> Result<()> {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    /// Makes `element` (an `<iframe>`) the browsing context later commands run in: scripts and
    /// searches then see the frame's document, even when it comes from another origin.
    pub async fn switch_to_frame(&self, element: &Element) -> Result<()> {
        self.cmd(
            reqwest::Method::POST,
            "/frame",
            Some(json!({ "id": element.to_json() })),
        )
        .await?;
        Ok(())
    }

    /// Back to the top-level document after [`Session::switch_to_frame`].
    pub async fn switch_to_top(&self) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/frame", Some(json!({ "id": null })))
            .await?;
        Ok(())
    }

    /// Runs `script` as the body of a function with `args` (`arguments[0]`, …) and returns
    /// what it returns (a returned Promise is awaited). Elements are passed with
    /// [`Element::to_json`].
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Polls `script` (as in [`Session::execute`]) until it returns a truthy value in the
    /// JavaScript sense (not `null`, `false`, `0` or `""`) and returns that value. On timeout the
    /// error names `what` and carries the start of the page's text.
    pub async fn wait_until(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(v) = self.execute(script, vec![]).await {
                let truthy = match &v {
                    Value::Null | Value::Bool(false) => false,
                    Value::String(x) => !x.is_empty(),
                    Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                    _ => true,
                };
                if truthy {
                    return Ok(v);
                }
            }
            if std::time::Instant::now() > deadline {
                let text = self
                    .execute("return document.body.innerText.slice(0, 3000)", vec![])
                    .await
                    .unwrap_or_default();
                return Err(TestbedError::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                    log: format!("page text:\n{}", text.as_str().unwrap_or_default()),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG screenshot of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await?;
        let b64 = string(v, "screenshot")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| TestbedError::Unexpected(format!("screenshot is not base64: {e}")))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Err(TestbedError::Unexpected(
                "screenshot is not a PNG".to_owned(),
            ));
        }
        Ok(png)
    }

    /// Takes a screenshot and writes it to `path`; returns the PNG bytes too.
    pub async fn save_screenshot(&self, path: &Path) -> Result<Vec<u8>> {
        let png = self.screenshot().await?;
        std::fs::write(path, &png)
            .map_err(TestbedError::io(format!("write {}", path.display())))?;
        Ok(png)
    }

    /// Ends the session: chromedriver closes the browser.
    pub async fn close(mut self) -> Result<()> {
        self.closed = true;
        self.cmd(reqwest::Method::DELETE, "", None).await?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Best effort; ChromeDriver's drop kills the browser anyway.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let req = self.http.delete(&self.base);
            rt.spawn(async move {
                let _ = req.send().await;
            });
        }
    }
}

/// Sends one WebDriver command and returns its `value`, or an error with the WebDriver error
/// code and message.
async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut req = http.request(method.clone(), url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    let parsed: Value = serde_json::from_str(&text).map_err(|e| {
        TestbedError::Unexpected(format!(
            "WebDriver {method} {url}: {status}, not JSON ({e}): {}",
            text.chars().take(500).collect::<String>()
        ))
    })?;
    let value = match parsed {
        Value::Object(mut m) => m.remove("value").unwrap_or(Value::Null),
        other => other,
    };
    if status.is_success() {
        return Ok(value);
    }
    let error = value.get("error").and_then(Value::as_str).unwrap_or("?");
    let message = value
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(TestbedError::Unexpected(format!(
        "WebDriver {method} {url}: {status} {error}: {message}"
    )))
}

fn string(v: Value, what: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(TestbedError::Unexpected(format!(
            "WebDriver {what}: expected a string, got {other}"
        ))),
    }
}

fn element(v: &Value) -> Result<Element> {
    v.get(ELEMENT_KEY)
        .and_then(Value::as_str)
        .map(|id| Element(id.to_owned()))
        .ok_or_else(|| TestbedError::Unexpected(format!("not an element reference: {v}")))
}
