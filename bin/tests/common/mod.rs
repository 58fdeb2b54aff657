//! Test harness shared by the end-to-end tests: the real `guildnet-orchestrator` binary with the
//! local backend (agents are the real `guildnet-agent`), on loopback, with a real SQLite file.
#![allow(dead_code)]

pub mod dashboard;
pub mod node;
pub mod tailnet;

use guildnet_core::client::OrchestratorClient;
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::token::Secret;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "e2e-admin-token-0123456789";

pub struct Orchestrator {
    pub child: Option<Child>,
    pub port: u16,
    pub state: PathBuf,
    /// The orchestrator runs in a session of its own; dropping this value kills the whole
    /// session (its agents, editors and runners too), so nothing outlives the test.
    pub session: u32,
}

pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A free TCP port on `ip`.
pub fn free_port_on(ip: std::net::Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A free UDP port on `ip`.
pub fn free_udp_on(ip: std::net::Ipv4Addr) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

impl Orchestrator {
    pub fn start(state: &Path, port: u16) -> Self {
        Self::start_with(state, port, &[], &[])
    }

    /// Like [`Orchestrator::start`] with extra flags and environment (for the orchestrator and,
    /// through `--pass-env`, its agents).
    pub fn start_with(state: &Path, port: u16, args: &[&str], envs: &[(&str, &str)]) -> Self {
        open_for_agents(state);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.with_extension("log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guildnet-orchestrator"));
        guildnet_testbed::process::in_new_session(&mut cmd);
        let child = cmd
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--org", "acme"])
            .args(["--heartbeat-secs", "1", "--lease-ttl-secs", "4"])
            // The e2e runner executes the task text as a shell script, so tasks choose their
            // own behaviour (output, exit code, duration).
            .args(["--runner", "sh -s"])
            .env("GUILDNET_STATE_DIR", state)
            .env("ORCHESTRATOR_TOKEN", TOKEN)
            .env("GUILDNET_AGENT_BIN", env!("CARGO_BIN_EXE_guildnet-agent"))
            .env("RUST_LOG", "info")
            .args(args)
            // Agents start from a clean environment: what a test sets is for them, so pass it.
            .args(envs.iter().flat_map(|(k, _)| ["--pass-env", k]))
            .envs(envs.iter().copied())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn orchestrator");
        Self {
            session: child.id(),
            child: Some(child),
            port,
            state: state.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> OrchestratorClient {
        OrchestratorClient::new(&self.url(), Secret::new(TOKEN)).expect("client")
    }

    pub async fn wait_ready(&self) {
        let c = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                process_alive(self.session),
                "the orchestrator on port {} exited; its log:\n{}",
                self.port,
                guildnet_testbed::process::read_tail(&self.state.with_extension("log"))
            );
            // Its own answer, not that of another process holding the port it could not bind.
            if guildnet_testbed::process::listens_on(&[self.session], self.port)
                && c.health().await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "orchestrator did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

/// What `POST /agents/editor/open` answered.
pub struct OpenedEditor {
    /// The proxy port.
    pub port: u16,
    /// The proxy path (`/editor/proxy/<port>/`).
    pub path: String,
    /// The whole `Set-Cookie` header of the editor session.
    pub set_cookie: String,
    /// Its `name=value` pair, to send back as `Cookie`.
    pub session: String,
}

impl Orchestrator {
    /// Opens an agent's editor of org `acme` through the API (asserts a 200).
    pub async fn open_editor(&self, agent: &guildnet_core::names::AgentName) -> OpenedEditor {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let resp = http
            .post(format!("{}/agents/editor/open", self.url()))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"name": agent, "org": "acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let set_cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap()
            .to_owned();
        let body: serde_json::Value = resp.json().await.unwrap();
        let session = set_cookie.split(';').next().unwrap().to_owned();
        OpenedEditor {
            port: body["port"].as_u64().unwrap() as u16,
            path: body["path"].as_str().unwrap().to_owned(),
            set_cookie,
            session,
        }
    }
}

impl Orchestrator {
    /// The pid of a task's current agent, from the local backend's pid file.
    pub fn agent_pid(&self, task: &guildnet_core::names::TaskId) -> i32 {
        let file = guildnet_core::state_dir::StatePaths::new(&self.state)
            .local_agent_dir(task)
            .join("agent.pid");
        let text = std::fs::read_to_string(&file).expect("agent pid file");
        text.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("pid in agent pid file")
    }
}

/// Lets agents that a root orchestrator runs as `nobody` (its default) pass through the test's
/// temp dir (mode 0711: search, no listing) to their directory beside the state dir, as they
/// pass through `/home/<user>` on a normal machine; the state dir itself stays 0700.
pub fn open_for_agents(state: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Some(parent) = state.parent() else { return };
    let _ = std::fs::create_dir_all(parent);
    // Only a private dir of the test's own (a temp dir is 0700), never /tmp or a home.
    let private = std::fs::metadata(parent).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o700);
    if private {
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711));
    }
}

/// The testbed's tools (code-server, aider) live under the test user's home, which is closed to
/// `nobody`: tests that run them in agents keep the agents as the test's own user (a real
/// install puts them where every user can run them, see docs/SECURITY.md).
pub const AGENTS_AS_ME: [&str; 2] = ["--agent-user", "current"];

/// Whether this test process runs as root (agents then run as `nobody` by default).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Waits until a task is Running and returns it.
pub async fn wait_running(c: &OrchestratorClient, id: &guildnet_core::names::TaskId) -> Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cur = c.task(id).await.unwrap();
        if cur.status == TaskStatus::Running {
            return cur;
        }
        assert!(Instant::now() < deadline, "task {id} never ran: {cur:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    guildnet_core::procfs::stat(pid).is_some_and(|s| s.state != 'Z')
}

impl Drop for Orchestrator {
    /// Kills the orchestrator and its agents; when the test is failing, its log's tail goes to
    /// stderr (as the testbed's servers do), so a CI failure shows what it said.
    fn drop(&mut self) {
        self.kill9();
        guildnet_testbed::process::kill_session(self.session);
        if std::thread::panicking() {
            let log = self.state.with_extension("log");
            eprintln!(
                "---- last bytes of the orchestrator on port {} ({}) ----\n{}\n---- end of it ----",
                self.port,
                log.display(),
                guildnet_testbed::process::read_tail(&log)
            );
        }
    }
}

pub async fn wait_terminal(
    c: &OrchestratorClient,
    ids: &[guildnet_core::names::TaskId],
    secs: u64,
) -> Vec<Task> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut all = Vec::new();
        for id in ids {
            if let Ok(t) = c.task(id).await {
                all.push(t);
            }
        }
        if all.len() == ids.len() && all.iter().all(|t| t.status.is_terminal()) {
            return all;
        }
        if Instant::now() > deadline {
            let states: Vec<_> = all.iter().map(|t| (t.id.to_string(), t.status)).collect();
            panic!("tasks did not finish in {secs}s: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `guildnet up` (orchestrator + dashboard in one process) as a person runs it: org `acme`, the
/// runner `sleep 300`, the given code-server. Stopped with SIGTERM (then SIGKILL) on drop.
pub struct GuildnetUp {
    child: Child,
    /// What it printed up to and including its login line.
    pub printed: Vec<String>,
}

impl GuildnetUp {
    /// Starts it (printing a one-time login link) and waits (60 s at most) for that line,
    /// the last of its banner.
    pub fn start(state: &Path, orch_port: u16, dash_port: u16, code_server: &Path) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_guildnet"))
            .arg("up")
            .args(["--listen", &format!("127.0.0.1:{orch_port}")])
            .args(["--dashboard-listen", &format!("127.0.0.1:{dash_port}")])
            .args(["--org", "acme", "--runner", "sleep 300"])
            .arg("--code-server")
            .arg(code_server)
            .args(AGENTS_AS_ME)
            .args(["--login-link", "always"])
            .env("GUILDNET_STATE_DIR", state)
            .env("GUILDNET_AGENT_BIN", env!("CARGO_BIN_EXE_guildnet-agent"))
            .env_remove("ORCHESTRATOR_TOKEN")
            .env_remove("GUILDNET_DASHBOARD_PASSWORD")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn guildnet up");
        let stdout = child.stdout.take().expect("stdout");
        let mut up = Self {
            child,
            printed: Vec::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !up.printed.iter().any(|l| l.contains("one-time login link")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => up.printed.push(l),
                Err(_) => panic!("guildnet up printed no login line: {:?}", up.printed),
            }
        }
        up
    }
}

impl Drop for GuildnetUp {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens an agent's editor (org `acme`) from a page of the orchestrator at `base_url` in
/// headless Chromium (`POST /agents/editor/open` with the admin `token`, as the dashboard's page
/// does), goes to the proxied editor and waits until code-server's workbench renders, then its
/// explorer, which needs the editor's WebSocket through the proxy. `via` says how the proxy
/// reaches the editor, for the panics ("into the pod", "over the tailnet into the pod").
pub async fn render_editor_in_chromium(
    base_url: &str,
    token: &str,
    agent: &guildnet_core::names::AgentName,
    via: &str,
) {
    let driver = guildnet_testbed::browser::ChromeDriver::start()
        .await
        .expect("chromedriver");
    let s = driver.new_session(true).await.expect("browser session");
    s.goto(&format!("{base_url}/health")).await.expect("health");
    let opened = s
        .execute(
            "return fetch('/agents/editor/open', {method: 'POST', headers: {'Authorization': \
             'Bearer ' + arguments[0], 'Content-Type': 'application/json'}, body: \
             JSON.stringify({name: arguments[1], org: 'acme'})}).then(r => r.json())",
            vec![serde_json::json!(token), serde_json::json!(agent.as_str())],
        )
        .await
        .expect("editor open from the page");
    let path = opened["path"].as_str().expect("editor path").to_owned();
    s.goto(&format!("{base_url}{path}"))
        .await
        .expect("editor page");
    s.wait_for_css(".monaco-workbench", Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("workbench not rendered in Chromium {via}: {e}"));
    s.wait_for_css(
        ".explorer-folders-view, .explorer-viewlet",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("no explorer (the WebSocket {via}): {e}"));
    let _ = s.close().await;
    drop(driver);
}
