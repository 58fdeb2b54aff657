//! Supervises the agent's editor: code-server on the workspace, password auth, restarted with
//! capped exponential backoff when it dies. Its state goes into heartbeats and `/healthz`.
//!
//! code-server gets its password from a config file (`<data dir>/config/config.yaml`, 0600,
//! written without following links), never from its environment or command line: its
//! environment is inherited by everything started in the editor (terminals, extensions, the
//! repository's code) and is readable in `/proc`. It runs in its own sandbox
//! ([`super::sandbox`]): it cannot read the agent's state (apart from its data dir) nor the
//! orchestrator's, and a runner, in another Landlock domain, cannot read its memory,
//! environment or data dir. Without Landlock a runner of the same uid can read that file
//! (code-server is an ordinary, dumpable process of that uid).

use crate::token::Secret;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How to run code-server.
#[derive(Debug, Clone)]
pub struct EditorConfig {
    /// The code-server executable.
    pub code_server: PathBuf,
    /// Address to bind (`0.0.0.0:8443` in a pod).
    pub bind: SocketAddr,
    /// The login password (from `CODE_SERVER_PASSWORD`).
    pub password: Secret,
    /// Folder to open.
    pub workspace: PathBuf,
    /// code-server's user data and extensions go here.
    pub data_dir: PathBuf,
    /// Where code-server's own output goes.
    pub log_file: PathBuf,
    /// What code-server may touch; `None` runs it unconfined (tests only).
    pub sandbox: Option<super::sandbox::SandboxPolicy>,
    /// Its private temp dir (`TMPDIR`, `XDG_RUNTIME_DIR`), if any.
    pub tmp_dir: Option<PathBuf>,
    /// How long the agent waits, before it claims its task, for code-server to accept
    /// connections (`GUILDNET_EDITOR_READY_SECS`, default [`DEFAULT_READY_WAIT`]): a task is
    /// Running only once its editor can be opened. Past it the agent claims anyway and says why.
    pub ready_wait: Duration,
}

/// Default [`EditorConfig::ready_wait`]: code-server (Node.js) starts in 1-3 s on an idle
/// machine, 10-20 s in a pod on a loaded one.
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(60);

/// Why [`wait_until_ready`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Still not answering when the wait ran out.
    #[error("code-server did not accept connections within {} s (editor {state})", waited.as_secs())]
    TimedOut {
        /// How long it waited.
        waited: Duration,
        /// The editor's last state (`starting`, `restarting: exit status: 1`).
        state: String,
    },
    /// It cannot start at all.
    #[error("code-server cannot start: {0}")]
    Failed(String),
}

impl EditorState {
    /// A short description for log lines: `starting`, `restarting after exit status: 1`.
    pub fn describe(&self) -> String {
        match self {
            EditorState::Disabled => "disabled".into(),
            EditorState::Starting { .. } => "starting".into(),
            EditorState::Running { .. } => "running".into(),
            EditorState::Restarting { last_exit, .. } => format!("restarting after {last_exit}"),
            EditorState::Failed { reason } => format!("failed: {reason}"),
        }
    }
}

/// Waits at most `limit` until the editor answers (`Running`) or is not wanted (`Disabled`).
/// An editor that cannot start (`Failed`) ends the wait at once.
pub async fn wait_until_ready(
    mut state: watch::Receiver<EditorState>,
    limit: Duration,
) -> Result<(), NotReady> {
    let waited = async {
        loop {
            let now = state.borrow_and_update().clone();
            match now {
                EditorState::Running { .. } | EditorState::Disabled => return Ok(()),
                EditorState::Failed { reason } => return Err(NotReady::Failed(reason)),
                _ => {}
            }
            if state.changed().await.is_err() {
                // The supervisor is gone: nothing will change any more.
                let last = state.borrow().describe();
                return Err(NotReady::TimedOut {
                    waited: Duration::ZERO,
                    state: format!("{last}, supervisor stopped"),
                });
            }
        }
    };
    match tokio::time::timeout(limit, waited).await {
        Ok(r) => r,
        Err(_) => Err(NotReady::TimedOut {
            waited: limit,
            state: state.borrow().describe(),
        }),
    }
}

/// The config file code-server reads its password from.
fn config_yaml(cfg: &EditorConfig) -> String {
    // A JSON string is a valid YAML double-quoted scalar: any password is quoted safely.
    let quoted = serde_json::to_string(cfg.password.expose()).unwrap_or_else(|_| "\"\"".into());
    format!(
        "bind-addr: {}\nauth: password\npassword: {quoted}\ncert: false\n",
        cfg.bind
    )
}

/// The editor's state, as heartbeats and `/healthz` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum EditorState {
    /// No editor configured.
    Disabled,
    /// Started, not answering yet.
    Starting {
        /// Restarts so far.
        restarts: u32,
    },
    /// Answering `/healthz`.
    Running {
        /// Restarts so far.
        restarts: u32,
    },
    /// Exited; restarting after a backoff.
    Restarting {
        /// Restarts so far.
        restarts: u32,
        /// How it ended.
        last_exit: String,
    },
    /// Could not be started at all (missing executable).
    Failed {
        /// Why.
        reason: String,
    },
}

impl EditorState {
    /// True when the editor is up or not wanted (what `/healthz` needs).
    pub fn healthy(&self) -> bool {
        matches!(
            self,
            EditorState::Disabled | EditorState::Running { .. } | EditorState::Starting { .. }
        )
    }
}

/// A running supervisor. Dropping it stops code-server.
pub struct EditorSupervisor {
    state: watch::Receiver<EditorState>,
    stop: Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EditorSupervisor {
    /// A supervisor that does nothing (no editor configured).
    pub fn disabled() -> Self {
        let (_tx, rx) = watch::channel(EditorState::Disabled);
        Self {
            state: rx,
            stop: Arc::new(tokio::sync::Notify::new()),
            task: None,
        }
    }

    /// Starts code-server and keeps it running.
    pub fn start(cfg: EditorConfig) -> Self {
        Self::start_after(cfg, std::future::ready(()))
    }

    /// Like [`EditorSupervisor::start`], but code-server's process is started only once `gate`
    /// resolves (the state says `starting` until then); a stop before that starts nothing. A
    /// warm pool agent starts its editor right after its claim, so code-server's start (a
    /// Node.js process: most of a CPU core for a second) does not compete with the claim.
    pub fn start_after(
        cfg: EditorConfig,
        gate: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        let (tx, rx) = watch::channel(EditorState::Starting { restarts: 0 });
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop_gate = stop.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = gate => {}
                _ = stop_gate.notified() => return,
            }
            supervise(cfg, tx, stop_gate).await
        });
        Self {
            state: rx,
            stop,
            task: Some(task),
        }
    }

    /// The current state.
    pub fn state(&self) -> EditorState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn watch(&self) -> watch::Receiver<EditorState> {
        self.state.clone()
    }

    /// Stops code-server and waits for it to exit.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(4)).await
    }

    /// Stops code-server, waiting at most `limit` (it gets SIGTERM, then SIGKILL).
    pub async fn shutdown_within(mut self, limit: Duration) {
        self.stop.notify_one();
        if let Some(mut t) = self.task.take() {
            if tokio::time::timeout(limit, &mut t).await.is_err() {
                // Aborting drops the child: kill_on_drop sends SIGKILL to code-server itself.
                t.abort();
            }
        }
    }
}

impl Drop for EditorSupervisor {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

async fn supervise(
    cfg: EditorConfig,
    tx: watch::Sender<EditorState>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut restarts = 0u32;
    let mut delays = restart_delays();
    loop {
        let _ = std::fs::create_dir_all(&cfg.data_dir);
        let config = cfg.data_dir.join("config").join("config.yaml");
        if let Err(e) = super::fsafe::write_beneath(
            &cfg.data_dir,
            "config/config.yaml",
            config_yaml(&cfg).as_bytes(),
            0o600,
        ) {
            let last_exit = format!("cannot write its config: {e}");
            tracing::error!(%last_exit, "editor cannot start");
            let _ = tx.send(EditorState::Failed { reason: last_exit });
            stop.notified().await;
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.log_file);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = tokio::process::Command::new(&cfg.code_server);
        cmd.arg("--bind-addr")
            .arg(cfg.bind.to_string())
            .args([
                "--auth",
                "password",
                "--disable-telemetry",
                "--disable-update-check",
            ])
            .arg("--user-data-dir")
            .arg(cfg.data_dir.join("user"))
            .arg("--extensions-dir")
            .arg(cfg.data_dir.join("extensions"))
            .args([
                "--disable-workspace-trust",
                "--disable-getting-started-override",
                "--ignore-last-opened",
            ])
            .arg(&cfg.workspace)
            .env("XDG_CONFIG_HOME", cfg.data_dir.join("config"))
            .env("XDG_DATA_HOME", cfg.data_dir.join("data"))
            .env("XDG_CACHE_HOME", cfg.data_dir.join("cache"))
            .env("CODE_SERVER_CONFIG", &config)
            // Inherited values of these would override the config file (bind address,
            // password) or hand the folder to another running instance.
            .env_remove("PASSWORD")
            .env_remove("HASHED_PASSWORD")
            .env_remove("PORT")
            .env_remove("CODE_SERVER_HOST")
            .env_remove("VSCODE_IPC_HOOK_CLI")
            .env_remove("VSCODE_PROXY_URI")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        for k in crate::agent_env::SECRETS {
            cmd.env_remove(k);
        }
        if let Some(t) = &cfg.tmp_dir {
            cmd.env("TMPDIR", t).env("XDG_RUNTIME_DIR", t);
        }
        let opts = super::sandbox::ChildOptions { subreaper: true };
        match &cfg.sandbox {
            Some(policy) => match policy.prepare() {
                Ok(p) => p.install(&mut cmd, opts),
                Err(e) => {
                    let reason = format!("cannot sandbox code-server: {e}");
                    tracing::error!(%reason, "editor cannot start");
                    let _ = tx.send(EditorState::Failed { reason });
                    stop.notified().await;
                    return;
                }
            },
            None => {
                // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                            .map_err(std::io::Error::from)?;
                        nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
                    });
                }
            }
        }
        let (mut child, _tracked) = match super::process::spawn_tracked(&mut cmd) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let reason = format!("{} not found", cfg.code_server.display());
                tracing::error!(%reason, "editor cannot start");
                let _ = tx.send(EditorState::Failed { reason });
                stop.notified().await;
                return;
            }
            Err(e) => {
                let last_exit = format!("spawn failed: {e}");
                let _ = tx.send(EditorState::Restarting {
                    restarts,
                    last_exit,
                });
                let delay = delays.next().unwrap_or(MAX_RESTART_DELAY);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.notified() => return,
                }
                restarts += 1;
                continue;
            }
        };
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        let _ = tx.send(EditorState::Starting { restarts });
        tracing::info!(bind = %cfg.bind, restarts, "code-server started");
        let ready = wait_ready(cfg.bind, child.id(), tx.clone(), restarts);
        tokio::pin!(ready);
        let started = tokio::time::Instant::now();
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                _ = &mut ready => {}
                _ = stop.notified() => {
                    if let Some(pg) = pgid {
                        let _ = killpg(pg, Signal::SIGTERM);
                    }
                    if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
                        if let Some(pg) = pgid {
                            let _ = killpg(pg, Signal::SIGKILL);
                        }
                        let _ = child.wait().await;
                    }
                    return;
                }
            }
        };
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let last_exit = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(%last_exit, restarts, "code-server exited; restarting");
        // A run that stayed up a while resets the backoff.
        if started.elapsed() > Duration::from_secs(60) {
            delays = restart_delays();
        }
        let _ = tx.send(EditorState::Restarting {
            restarts,
            last_exit,
        });
        let delay = delays.next().unwrap_or(MAX_RESTART_DELAY);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.notified() => return,
        }
        restarts += 1;
    }
}

/// Longest wait before restarting code-server.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// The waits between restarts: 0.5 s doubling up to [`MAX_RESTART_DELAY`], for ever.
fn restart_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(MAX_RESTART_DELAY)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// Polls code-server's `/healthz` until it answers, then reports Running (and stays pending).
/// The answer counts only while code-server's process tree (`pid` and its descendants) holds
/// the listening socket of the port ([`crate::procfs::listens_on`]): when another process took
/// the port first (the local backend picks a free port before code-server binds it, and a
/// runner on the same machine could bind it in between), that process answers and code-server
/// fails to bind; taking its answer would send the user's editor traffic, password included,
/// to it. When `/proc` cannot tell (an unreadable file table), the answer counts as before.
async fn wait_ready(
    bind: SocketAddr,
    pid: Option<u32>,
    tx: watch::Sender<EditorState>,
    restarts: u32,
) {
    let host = if bind.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], bind.port()))
    } else {
        bind
    };
    let url = format!("http://{host}/healthz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build();
    if let Ok(http) = http {
        let mut warned = false;
        loop {
            let answered = http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                // Read from /proc only once something answers.
                let own = pid.map_or(Some(true), |pid| {
                    crate::procfs::listens_on(&crate::procfs::tree(pid), bind.port())
                });
                if own == Some(false) {
                    if !warned {
                        tracing::warn!(
                            %bind,
                            "another process answers on the editor's port; code-server \
                             does not hold it (waiting, not taking that answer)"
                        );
                        warned = true;
                    }
                } else {
                    let _ = tx.send(EditorState::Running { restarts });
                    tracing::info!(%bind, "code-server is ready");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_serializes_with_a_tag() {
        let v = serde_json::to_value(EditorState::Running { restarts: 2 }).unwrap();
        assert_eq!(v, serde_json::json!({"state": "running", "restarts": 2}));
        assert!(!EditorState::Restarting {
            restarts: 1,
            last_exit: "exit status: 1".into()
        }
        .healthy());
    }

    #[tokio::test]
    async fn the_ready_wait_ends_when_the_editor_answers_fails_or_runs_out() {
        // Answers after a while: the wait ends then, not at its limit.
        let (tx, rx) = watch::channel(EditorState::Starting { restarts: 0 });
        let t = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(EditorState::Restarting {
                restarts: 0,
                last_exit: "exit status: 1".into(),
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(EditorState::Running { restarts: 1 });
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        wait_until_ready(rx, Duration::from_secs(20)).await.unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(10),
            "{took:?}"
        );
        // Never answers: gives up at the limit, naming the last state.
        let (tx, rx) = watch::channel(EditorState::Starting { restarts: 0 });
        let t = tokio::time::Instant::now();
        let err = wait_until_ready(rx, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(t.elapsed() >= Duration::from_secs(1));
        assert_eq!(
            err.to_string(),
            "code-server did not accept connections within 1 s (editor starting)"
        );
        drop(tx);
        // Cannot start: at once, with the reason.
        let (_tx, rx) = watch::channel(EditorState::Failed {
            reason: "/nope not found".into(),
        });
        let err = wait_until_ready(rx, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(err, NotReady::Failed("/nope not found".into()));
        // No editor: nothing to wait for.
        let (_tx, rx) = watch::channel(EditorState::Disabled);
        wait_until_ready(rx, Duration::from_millis(1))
            .await
            .unwrap();
    }

    /// An executable stand-in for code-server at `path`, with `body` as its shell script.
    fn stand_in(path: &std::path::Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        let mut perm = std::fs::metadata(path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(path, perm).unwrap();
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn config(d: &std::path::Path, script: std::path::PathBuf, port: u16) -> EditorConfig {
        EditorConfig {
            code_server: script,
            bind: format!("127.0.0.1:{port}").parse().unwrap(),
            password: Secret::new("pw"),
            workspace: d.to_path_buf(),
            data_dir: d.join("data"),
            log_file: d.join("cs.log"),
            sandbox: None,
            tmp_dir: None,
            ready_wait: DEFAULT_READY_WAIT,
        }
    }

    #[tokio::test]
    async fn a_real_listener_is_what_makes_the_editor_ready() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in whose port starts listening (in a child of the process the supervisor
        // started, as code-server's own server process does) only after 1 s.
        let port = free_port();
        let server = d.path().join("server.py");
        std::fs::write(
            &server,
            format!(
                "import time, http.server\n\
                 class H(http.server.BaseHTTPRequestHandler):\n\
                 \x20   def do_GET(self):\n\
                 \x20       self.send_response(200)\n\
                 \x20       self.send_header('content-length', '2')\n\
                 \x20       self.end_headers()\n\
                 \x20       self.wfile.write(b'ok')\n\
                 time.sleep(1)\n\
                 http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
            ),
        )
        .unwrap();
        let script = d.path().join("fake-code-server");
        stand_in(&script, &format!("python3 {}", server.display()));
        let sup = EditorSupervisor::start(config(d.path(), script, port));
        let t = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(sup.state(), EditorState::Starting { .. }));
        wait_until_ready(sup.watch(), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_secs(1));
        assert!(matches!(sup.state(), EditorState::Running { .. }));
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn an_answer_from_another_process_on_the_port_is_not_the_editor() {
        let d = tempfile::tempdir().unwrap();
        // code-server's port was taken by another process (here, the test) before it could
        // bind it; that process answers /healthz with 200. The stand-in never listens.
        let stranger = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = stranger.local_addr().unwrap().port();
        let answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = answers.clone();
        let serve = tokio::spawn(async move {
            loop {
                let (mut c, _) = stranger.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf).await;
                    let _ = c
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        let script = d.path().join("fake-code-server");
        stand_in(&script, "exec sleep 30");
        let sup = EditorSupervisor::start(config(d.path(), script, port));
        let err = wait_until_ready(sup.watch(), Duration::from_millis(1500))
            .await
            .unwrap_err();
        assert!(matches!(err, NotReady::TimedOut { .. }), "{err:?}");
        assert!(matches!(sup.state(), EditorState::Starting { .. }));
        // The stranger was asked (so the check, not a missing probe, kept the editor out).
        assert!(answers.load(std::sync::atomic::Ordering::SeqCst) > 0);
        serve.abort();
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_dying_editor_is_restarted_with_backoff() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in that exits at once: the supervisor must keep restarting it.
        let script = d.path().join("fake-code-server");
        std::fs::write(&script, "#!/bin/sh\necho started >> \"$0.runs\"\nexit 3\n").unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        let sup = EditorSupervisor::start(EditorConfig {
            code_server: script.clone(),
            bind: "127.0.0.1:1".parse().unwrap(),
            password: Secret::new("pw"),
            workspace: d.path().to_path_buf(),
            data_dir: d.path().join("data"),
            log_file: d.path().join("cs.log"),
            sandbox: None,
            tmp_dir: None,
            ready_wait: DEFAULT_READY_WAIT,
        });
        let mut w = sup.watch();
        let restarted = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let EditorState::Restarting {
                    restarts,
                    last_exit,
                } = w.borrow_and_update().clone()
                {
                    if restarts >= 1 {
                        return last_exit;
                    }
                }
                w.changed().await.unwrap();
            }
        })
        .await
        .expect("restarted");
        assert!(restarted.contains('3'), "{restarted}");
        sup.shutdown().await;
        let runs = std::fs::read_to_string(d.path().join("fake-code-server.runs")).unwrap();
        assert!(runs.lines().count() >= 2, "{runs}");
    }

    #[tokio::test]
    async fn a_gated_editor_starts_only_after_its_gate_and_not_after_a_stop() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in that records each start and stays up.
        let script = d.path().join("fake-code-server");
        std::fs::write(
            &script,
            "#!/bin/sh\necho started >> \"$0.runs\"\nexec sleep 30\n",
        )
        .unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        let cfg = EditorConfig {
            code_server: script.clone(),
            bind: "127.0.0.1:1".parse().unwrap(),
            password: Secret::new("pw"),
            workspace: d.path().to_path_buf(),
            data_dir: d.path().join("data"),
            log_file: d.path().join("cs.log"),
            sandbox: None,
            tmp_dir: None,
            ready_wait: DEFAULT_READY_WAIT,
        };
        let runs = d.path().join("fake-code-server.runs");
        let started = || {
            std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .count()
        };
        // Held back until the gate opens.
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let sup = EditorSupervisor::start_after(cfg.clone(), async move {
            let _ = gate.await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(started(), 0, "started before its gate");
        assert!(matches!(sup.state(), EditorState::Starting { .. }));
        open.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while started() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("started after its gate");
        sup.shutdown().await;
        // Stopped before its gate: never started.
        std::fs::remove_file(&runs).unwrap();
        let sup = EditorSupervisor::start_after(cfg, std::future::pending());
        sup.shutdown().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(started(), 0, "started after a stop");
    }

    #[tokio::test]
    async fn a_missing_editor_fails_clearly() {
        let d = tempfile::tempdir().unwrap();
        let sup = EditorSupervisor::start(EditorConfig {
            code_server: d.path().join("nope"),
            bind: "127.0.0.1:1".parse().unwrap(),
            password: Secret::new("pw"),
            workspace: d.path().to_path_buf(),
            data_dir: d.path().join("data"),
            log_file: d.path().join("cs.log"),
            sandbox: None,
            tmp_dir: None,
            ready_wait: DEFAULT_READY_WAIT,
        });
        let mut w = sup.watch();
        let st = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let s = w.borrow_and_update().clone();
                if let EditorState::Failed { .. } = s {
                    return s;
                }
                w.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        assert!(!st.healthy());
    }

    #[tokio::test]
    async fn the_password_reaches_code_server_in_a_private_file_not_its_environment() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in that records its environment and the config it was pointed at.
        let script = d.path().join("fake-code-server");
        std::fs::write(
            &script,
            "#!/bin/sh\nenv > \"$0.env\"\ncat \"$CODE_SERVER_CONFIG\" > \"$0.config\"\nsleep 30\n",
        )
        .unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        let pw = "pw-\"quoted\"\n-secret";
        let sup = EditorSupervisor::start(EditorConfig {
            code_server: script.clone(),
            bind: "127.0.0.1:1".parse().unwrap(),
            password: Secret::new(pw),
            workspace: d.path().to_path_buf(),
            data_dir: d.path().join("data"),
            log_file: d.path().join("cs.log"),
            sandbox: None,
            tmp_dir: None,
            ready_wait: DEFAULT_READY_WAIT,
        });
        let config = d.path().join("fake-code-server.config");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&config)
            .map(|c| c.is_empty())
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the stand-in never ran"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let env = std::fs::read_to_string(d.path().join("fake-code-server.env")).unwrap();
        assert!(!env.contains("secret"), "{env}");
        assert!(!env.lines().any(|l| l.starts_with("PASSWORD=")), "{env}");
        let yaml = std::fs::read_to_string(&config).unwrap();
        assert!(
            yaml.contains(r#"password: "pw-\"quoted\"\n-secret""#),
            "{yaml}"
        );
        assert!(yaml.contains("auth: password"));
        let mode = std::fs::metadata(d.path().join("data/config/config.yaml"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        sup.shutdown().await;
    }
}
