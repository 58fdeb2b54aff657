//! code-server (VS Code in the browser) with password auth, on loopback.
//!
//! GuildNet's agents serve code-server on :8443 and the dashboard embeds it; the tests start
//! the real code-server 4.100.3 with [`CodeServer::start`].
//!
//! How code-server's password login works (4.100, `out/node/routes/login.js`):
//! - `GET /` without a session answers `302 Location: ./login`.
//! - `POST /login` with the form field `password` (`application/x-www-form-urlencoded`; the
//!   page's form also sends `base` and `href`, which only affect the cookie path). On success:
//!   `302 Location: ./` and `Set-Cookie: code-server-session=<argon2 hash>; Path=/; SameSite=Lax`.
//!   On failure: `200` with the login page again, containing
//!   `<div class="error">Incorrect password</div>`, and no cookie.
//! - Failed logins are rate limited per server process: 2 a minute plus 12 an hour. After
//!   that even the right password is refused (the page says "Login rate limited!").
//!   Successful logins do not count.
//! - With the cookie, `GET /` answers `302 Location: ./?folder=<workspace>` and that answers
//!   the workbench HTML.

use crate::process::Proc;
use crate::{bin, free_port, probe_client, wait_for, Result, TestbedError};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of code-server's session cookie.
pub const SESSION_COOKIE: &str = "code-server-session";

/// The file that [`CodeServer::start`] puts into the workspace it creates.
pub const WORKSPACE_FILE: &str = "README.md";

/// The contents of [`WORKSPACE_FILE`].
pub const WORKSPACE_FILE_CONTENTS: &str =
    "# GuildNet testbed workspace\n\nHello from code-server.\n";

/// How long code-server may take to answer `/healthz` (it usually takes about 1 s).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running code-server with password auth on `127.0.0.1:<free port>`, plain HTTP.
/// Dropping it stops the server and its children (extension host, file watcher, …) and
/// removes its temp dir.
#[derive(Debug)]
pub struct CodeServer {
    // Declared before `dir`, so the server stops before its files are removed.
    proc: Proc,
    port: u16,
    url: String,
    password: String,
    workspace: PathBuf,
    dir: tempfile::TempDir,
}

impl CodeServer {
    /// Starts code-server with `password`, opening a fresh workspace dir that contains
    /// [`WORKSPACE_FILE`]. Returns once `GET /healthz` answers 200.
    pub async fn start(password: &str) -> Result<CodeServer> {
        CodeServer::start_with(password, None).await
    }

    /// Like [`CodeServer::start`], but opens `workspace` if given (it must exist; nothing is
    /// written into it).
    ///
    /// The server runs with `XDG_CONFIG_HOME`, `XDG_DATA_HOME` and `HOME` inside its temp dir
    /// (code-server writes a default `config.yaml` on every start), the password in `$PASSWORD`
    /// (environment variables that would override the flags are blanked), and
    /// `--auth password --bind-addr 127.0.0.1:<port> --disable-telemetry
    /// --disable-update-check --disable-workspace-trust --disable-getting-started-override
    /// --ignore-last-opened`.
    pub async fn start_with(password: &str, workspace: Option<&Path>) -> Result<CodeServer> {
        if password.is_empty() {
            return Err(TestbedError::Unexpected(
                "code-server needs a non-empty password".to_owned(),
            ));
        }
        let program = bin("code-server")?;
        let dir = tempfile::Builder::new()
            .prefix("guildnet-code-server-")
            .tempdir()
            .map_err(TestbedError::io("create code-server temp dir"))?;
        let workspace = match workspace {
            Some(w) => w.to_owned(),
            None => {
                let w = dir.path().join("workspace");
                std::fs::create_dir_all(&w).map_err(TestbedError::io("create workspace"))?;
                std::fs::write(w.join(WORKSPACE_FILE), WORKSPACE_FILE_CONTENTS)
                    .map_err(TestbedError::io("write workspace file"))?;
                w
            }
        };
        if !workspace.is_dir() {
            return Err(TestbedError::Unexpected(format!(
                "code-server workspace {} is not a directory",
                workspace.display()
            )));
        }
        let config_home = dir.path().join("config");
        let data_home = dir.path().join("data");
        for d in [&config_home, &data_home] {
            std::fs::create_dir_all(d)
                .map_err(TestbedError::io(format!("create {}", d.display())))?;
        }
        let port = free_port()?;
        let bind = format!("127.0.0.1:{port}");
        let args: Vec<&OsStr> = vec![
            OsStr::new("--auth"),
            OsStr::new("password"),
            OsStr::new("--bind-addr"),
            OsStr::new(&bind),
            OsStr::new("--disable-telemetry"),
            OsStr::new("--disable-update-check"),
            OsStr::new("--disable-workspace-trust"),
            OsStr::new("--disable-getting-started-override"),
            OsStr::new("--ignore-last-opened"),
            workspace.as_os_str(),
        ];
        let config_file = config_home.join("code-server").join("config.yaml");
        let port_str = port.to_string();
        let empty = OsStr::new("");
        let env: [(&str, &OsStr); 10] = [
            ("PASSWORD", OsStr::new(password)),
            ("XDG_CONFIG_HOME", config_home.as_os_str()),
            ("XDG_DATA_HOME", data_home.as_os_str()),
            ("CODE_SERVER_CONFIG", config_file.as_os_str()),
            // Keeps code-server from reading a developer's dotfiles or writing to the real home.
            ("HOME", dir.path().as_os_str()),
            // Inherited values of these would override the flags: `$PORT` and
            // `$CODE_SERVER_HOST` the bind address, `$HASHED_PASSWORD` the password, and
            // `$VSCODE_IPC_HOOK_CLI` (set in VS Code's terminals) would make code-server open the
            // folder in that existing instance instead of starting a server.
            ("PORT", OsStr::new(&port_str)),
            ("CODE_SERVER_HOST", OsStr::new("127.0.0.1")),
            ("HASHED_PASSWORD", empty),
            ("VSCODE_IPC_HOOK_CLI", empty),
            ("VSCODE_PROXY_URI", empty),
        ];
        let mut proc = Proc::spawn(
            "code-server",
            &program,
            args,
            &env,
            &dir.path().join("code-server.log"),
        )?
        .with_stop_timeout(Duration::from_secs(5))
        .listening_on(port);
        let url = format!("http://{bind}/");
        let health = format!("{url}healthz");
        let client = probe_client();
        wait_for(
            "code-server /healthz to answer 200",
            START_TIMEOUT,
            Some(&mut proc),
            || {
                let req = client.get(&health);
                async move {
                    match req.send().await {
                        Ok(r) if r.status().is_success() => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await?;
        Ok(CodeServer {
            proc,
            port,
            url,
            password: password.to_owned(),
            workspace,
            dir,
        })
    }

    /// The base URL, `http://127.0.0.1:<port>/` (with the trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The workspace folder code-server opens.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The server's temp dir (config, user data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The last few KB of the server's log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// An error quoting the log if the server has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }

    /// A client that does not follow redirects (so tests can see code-server's 302s and the
    /// cookie they set) and does not use a proxy.
    pub fn http_client() -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?)
    }

    /// Posts `password` to `/login` and returns the session cookie as a `Cookie` header value
    /// (`code-server-session=…`), or `None` if code-server answered without setting it (a wrong
    /// password, or rate limiting), together with the response status and body.
    pub async fn try_login(&self, password: &str) -> Result<LoginAttempt> {
        self.try_login_with(&CodeServer::http_client()?, password)
            .await
    }

    /// Like [`CodeServer::try_login`], over the caller's `client` (say, one that reaches the
    /// server through a proxy). The client must not follow redirects: the cookie comes with
    /// the `302`, and reqwest has no cookie store here, so a followed redirect would lose it.
    /// That case is an error rather than a silent `None`.
    pub async fn try_login_with(
        &self,
        client: &reqwest::Client,
        password: &str,
    ) -> Result<LoginAttempt> {
        let login_url = format!("{}login", self.url);
        let resp = client
            .post(&login_url)
            .form(&[
                ("password", password),
                ("base", "."),
                ("href", login_url.as_str()),
            ])
            .send()
            .await?;
        let url = resp.url().to_string();
        let followed = url != login_url;
        let status = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .map(str::trim)
            .find(|pair| {
                pair.split_once('=')
                    .is_some_and(|(k, v)| k == SESSION_COOKIE && !v.is_empty())
            })
            .map(str::to_owned);
        let body = resp.text().await?;
        let attempt = LoginAttempt {
            status,
            location,
            cookie,
            body,
        };
        // A failed POST always answers the login page with an error box, a successful one a
        // 302; the login page without an error is what a followed redirect ends on
        // (`./` → `./login`, as reqwest does not carry the cookie).
        if followed || (attempt.cookie.is_none() && attempt.error_message().is_none()) {
            return Err(TestbedError::Unexpected(format!(
                "code-server answered {} at {} without a session cookie or an error: the \
                 client probably followed the login redirect and lost the cookie; build it \
                 with `redirect(reqwest::redirect::Policy::none())`",
                attempt.status, url
            )));
        }
        Ok(attempt)
    }

    /// Logs in with the right password; returns the `Cookie` header value
    /// (`code-server-session=…`) to send with later requests.
    pub async fn login(&self) -> Result<String> {
        self.login_with(&CodeServer::http_client()?).await
    }

    /// Like [`CodeServer::login`], over the caller's `client`, which must not follow redirects
    /// (see [`CodeServer::try_login_with`]).
    pub async fn login_with(&self, client: &reqwest::Client) -> Result<String> {
        let attempt = self.try_login_with(client, &self.password).await?;
        match attempt.cookie {
            Some(cookie) => Ok(cookie),
            None => Err(TestbedError::Unexpected(format!(
                "code-server login set no {SESSION_COOKIE} cookie: {} {}; body: {}; log:\n{}",
                attempt.status,
                attempt.location.as_deref().unwrap_or_default(),
                attempt.error_message().unwrap_or(&attempt.body),
                self.log_tail()
            ))),
        }
    }

    /// Logs in and returns a client that sends the session cookie with every request (the
    /// workspace's reqwest has no cookie store) and does not follow redirects.
    pub async fn authenticated_client(&self) -> Result<reqwest::Client> {
        let cookie = self.login().await?;
        let mut headers = reqwest::header::HeaderMap::new();
        let value = reqwest::header::HeaderValue::from_str(&cookie).map_err(|e| {
            TestbedError::Unexpected(format!("code-server cookie is not a header value: {e}"))
        })?;
        headers.insert(reqwest::header::COOKIE, value);
        Ok(reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .default_headers(headers)
            .build()?)
    }
}

/// The outcome of a `POST /login`.
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    /// The response status: 302 on success, 200 (the login page again) on failure.
    pub status: reqwest::StatusCode,
    /// The `Location` header, `./` on success.
    pub location: Option<String>,
    /// `code-server-session=…` if the session cookie was set.
    pub cookie: Option<String>,
    /// The response body.
    pub body: String,
}

impl LoginAttempt {
    /// The text of the login page's error box (`<div class="error">…</div>`), e.g.
    /// `Incorrect password`.
    pub fn error_message(&self) -> Option<&str> {
        let start = self.body.find("<div class=\"error\">")? + "<div class=\"error\">".len();
        let len = self.body[start..].find("</div>")?;
        Some(self.body[start..start + len].trim())
    }
}
