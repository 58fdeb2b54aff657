//! Gitea, a real git forge (git over HTTP, the REST API with pull requests), on loopback.
//!
//! [`Gitea::start`] writes an `app.ini` into a temp dir (SQLite database, repositories and
//! logs inside it; `INSTALL_LOCK` so no install page; no SSH, no mail, no registration, offline
//! mode), creates the tables (`gitea migrate`), an admin user with a random password (`gitea
//! admin user create --random-password`) and an API token with every scope (`gitea admin user
//! generate-access-token --raw`, read from stdout, so it never appears on a command line), then
//! starts `gitea web` on a free port and waits for `GET /api/v1/version`. Repositories are
//! created through the API ([`Gitea::create_repo`]).
//!
//! The binary is `bin/gitea` from `scripts/testbed/install.sh gitea`, built without the
//! `bindata` tag: templates, options and public assets come from `share/gitea`
//! (`STATIC_ROOT_PATH`). Gitea refuses to run as root unless
//! `GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT=true`; the test machine runs tests as root, so it is set.

use crate::process::{run, Proc};
use crate::{bin, probe_client, testbed_dir, wait_for, Result, TestbedError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long Gitea may take to answer its API after start (it usually takes 1 to 3 s).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The admin user [`Gitea::start`] creates.
pub const ADMIN_USER: &str = "guildnet-admin";

/// A repository created through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiteaRepo {
    /// Owner (user or org).
    pub owner: String,
    /// Name.
    pub name: String,
    /// HTTP clone URL (`http://<ip>:<port>/<owner>/<name>.git`), no credentials.
    pub clone_url: String,
    /// Web URL.
    pub html_url: String,
    /// Default branch.
    pub default_branch: String,
}

#[derive(Deserialize)]
struct RepoReply {
    name: String,
    clone_url: String,
    html_url: String,
    default_branch: String,
    owner: OwnerReply,
}

#[derive(Deserialize)]
struct OwnerReply {
    login: String,
}

/// A running Gitea with an admin user and its API token. Dropping it stops the server and
/// removes its temp dir (database, repositories).
#[derive(Debug)]
pub struct Gitea {
    // Declared before `dir`, so the server stops before its files are removed.
    proc: Proc,
    port: u16,
    url: String,
    token: String,
    config: PathBuf,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn ini(dir: &Path, ip: std::net::Ipv4Addr, port: u16, static_root: &Path) -> String {
    let d = dir.display();
    format!(
        "APP_NAME = GuildNet testbed\n\
         RUN_MODE = prod\n\
         WORK_PATH = {d}\n\
         \n\
         [server]\n\
         PROTOCOL = http\n\
         HTTP_ADDR = {ip}\n\
         HTTP_PORT = {port}\n\
         ROOT_URL = http://{ip}:{port}/\n\
         DISABLE_SSH = true\n\
         START_SSH_SERVER = false\n\
         OFFLINE_MODE = true\n\
         LFS_START_SERVER = false\n\
         STATIC_ROOT_PATH = {static_root}\n\
         APP_DATA_PATH = {d}/data\n\
         \n\
         [database]\n\
         DB_TYPE = sqlite3\n\
         PATH = {d}/data/gitea.db\n\
         \n\
         [repository]\n\
         ROOT = {d}/repos\n\
         DEFAULT_BRANCH = main\n\
         \n\
         [security]\n\
         INSTALL_LOCK = true\n\
         \n\
         [service]\n\
         DISABLE_REGISTRATION = true\n\
         REQUIRE_SIGNIN_VIEW = false\n\
         \n\
         [oauth2]\n\
         ENABLED = false\n\
         \n\
         [mailer]\n\
         ENABLED = false\n\
         \n\
         [picture]\n\
         DISABLE_GRAVATAR = true\n\
         \n\
         [actions]\n\
         ENABLED = false\n\
         \n\
         [cron]\n\
         ENABLED = false\n\
         \n\
         [log]\n\
         MODE = console\n\
         LEVEL = Warn\n\
         ROOT_PATH = {d}/log\n",
        static_root = static_root.display()
    )
}

impl Gitea {
    /// Starts Gitea on `127.0.0.1:<free port>` and returns once its API answers, with an admin
    /// user ([`ADMIN_USER`]) and an API token with every scope.
    pub async fn start() -> Result<Gitea> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST).await
    }

    /// Like [`Gitea::start`], listening on `ip` (and with clone URLs on it): pods of a real
    /// testbed node reach the host at [`crate::node::RealNode::ip`], not at 127.0.0.1.
    pub async fn start_on(ip: std::net::Ipv4Addr) -> Result<Gitea> {
        let program = bin("gitea")?;
        let static_root = testbed_dir().join("share").join("gitea");
        if !static_root.join("options").is_dir() {
            return Err(TestbedError::MissingBinary {
                name: "gitea assets (share/gitea)".into(),
                path: static_root,
                item: "gitea".into(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("guildnet-gitea-")
            .tempdir()
            .map_err(TestbedError::io("create gitea temp dir"))?;
        for sub in ["custom/conf", "data", "repos", "log", "home"] {
            std::fs::create_dir_all(dir.path().join(sub))
                .map_err(TestbedError::io(format!("create gitea {sub}")))?;
        }
        let port = crate::node::free_port_on(ip)?;
        let config = dir.path().join("custom/conf/app.ini");
        std::fs::write(&config, ini(dir.path(), ip, port, &static_root))
            .map_err(TestbedError::io("write app.ini"))?;
        let home = dir.path().join("home");
        let env: [(&str, &OsStr); 3] = [
            (
                "GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT",
                OsStr::new("true"),
            ),
            ("GITEA_WORK_DIR", dir.path().as_os_str()),
            // Gitea runs git with HOME set to its own; keep the user's ~/.gitconfig out of it.
            ("HOME", home.as_os_str()),
        ];
        let c = config.as_os_str();
        run(&program, [OsStr::new("migrate"), OsStr::new("-c"), c], &env).await?;
        run(
            &program,
            [
                OsStr::new("admin"),
                OsStr::new("user"),
                OsStr::new("create"),
                OsStr::new("--admin"),
                OsStr::new("--username"),
                OsStr::new(ADMIN_USER),
                OsStr::new("--email"),
                OsStr::new("admin@guildnet.invalid"),
                OsStr::new("--random-password"),
                OsStr::new("--must-change-password=false"),
                OsStr::new("-c"),
                c,
            ],
            &env,
        )
        .await?;
        let token = run(
            &program,
            [
                OsStr::new("admin"),
                OsStr::new("user"),
                OsStr::new("generate-access-token"),
                OsStr::new("--username"),
                OsStr::new(ADMIN_USER),
                OsStr::new("--token-name"),
                OsStr::new("guildnet-testbed"),
                OsStr::new("--scopes"),
                OsStr::new("all"),
                OsStr::new("--raw"),
                OsStr::new("-c"),
                c,
            ],
            &env,
        )
        .await?;
        // Console logging shares stdout (the root warning, say): the token is the line that is
        // 40 hex digits.
        let token = token
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 40 && l.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| {
                TestbedError::Unexpected(
                    "gitea generate-access-token printed no 40-hex-digit token".into(),
                )
            })?
            .to_owned();
        let log = dir.path().join("gitea.log");
        let mut proc = Proc::spawn(
            "gitea",
            &program,
            [OsStr::new("web"), OsStr::new("-c"), c],
            &env,
            &log,
        )?
        .with_stop_timeout(Duration::from_secs(10))
        .listening_on(port);
        let url = format!("http://{ip}:{port}");
        let probe = probe_client();
        let version_url = format!("{url}/api/v1/version");
        wait_for(
            "gitea /api/v1/version",
            START_TIMEOUT,
            Some(&mut proc),
            || {
                let probe = probe.clone();
                let u = version_url.clone();
                async move {
                    let r = probe.get(&u).send().await.ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        Ok(Gitea {
            proc,
            port,
            url,
            token,
            config,
            http,
            dir,
        })
    }

    /// The web root, `http://<ip>:<port>` (no trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API base, `http://<ip>:<port>/api/v1`.
    pub fn api(&self) -> String {
        format!("{}/api/v1", self.url)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin's API token (every scope).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The `app.ini` in use.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The temp dir holding the database and repositories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET`s an API path (`/repos/o/r/pulls`) with the admin token; errors on a non-2xx.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `POST`s JSON to an API path with the admin token; errors on a non-2xx.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.api()))
            .header("Authorization", format!("token {}", self.token));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(TestbedError::Unexpected(format!(
                "gitea {method} {path}: HTTP {status}: {text}"
            )));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| TestbedError::Unexpected(format!("gitea {method} {path}: {e}: {text}")))
    }

    /// Creates a repository of the admin user with one commit on `main` (a README), public or
    /// private.
    pub async fn create_repo(&self, name: &str, private: bool) -> Result<GiteaRepo> {
        let v = self
            .post(
                "/user/repos",
                &json!({
                    "name": name,
                    "private": private,
                    "auto_init": true,
                    "default_branch": "main",
                    "readme": "Default",
                }),
            )
            .await?;
        let r: RepoReply = serde_json::from_value(v)
            .map_err(|e| TestbedError::Unexpected(format!("gitea repo reply: {e}")))?;
        Ok(GiteaRepo {
            owner: r.owner.login,
            name: r.name,
            clone_url: r.clone_url,
            html_url: r.html_url,
            default_branch: r.default_branch,
        })
    }

    /// Creates a branch `name` from `from` in a repository.
    pub async fn create_branch(&self, repo: &GiteaRepo, name: &str, from: &str) -> Result<()> {
        self.post(
            &format!("/repos/{}/{}/branches", repo.owner, repo.name),
            &json!({"new_branch_name": name, "old_branch_name": from}),
        )
        .await?;
        Ok(())
    }

    /// The repository's pull requests in any state, newest first.
    pub async fn pulls(&self, repo: &GiteaRepo) -> Result<Vec<Value>> {
        let v = self
            .get(&format!(
                "/repos/{}/{}/pulls?state=all&limit=50",
                repo.owner, repo.name
            ))
            .await?;
        match v {
            Value::Array(a) => Ok(a),
            other => Err(TestbedError::Unexpected(format!(
                "gitea pulls: not a list: {other}"
            ))),
        }
    }

    /// A file's content on a branch (`GET /repos/o/r/raw/{path}?ref=`).
    pub async fn raw_file(&self, repo: &GiteaRepo, path: &str, git_ref: &str) -> Result<String> {
        let resp = self
            .http
            .get(format!(
                "{}/repos/{}/{}/raw/{path}",
                self.api(),
                repo.owner,
                repo.name
            ))
            .query(&[("ref", git_ref)])
            .header("Authorization", format!("token {}", self.token))
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(TestbedError::Unexpected(format!(
                "gitea raw {path}@{git_ref}: HTTP {status}: {text}"
            )));
        }
        Ok(text)
    }
}
