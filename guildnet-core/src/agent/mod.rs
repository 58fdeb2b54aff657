//! The agent runtime, run inside a task's pod (or as a local child process): starts and
//! supervises its editor (code-server), registers, claims its task, heartbeats (renewing the
//! lease), prepares the workspace (git clone, context files), runs the task with a configurable
//! runner, ships every output line to the orchestrator without losing any across reconnects,
//! pushes the changes on `guildnet/<task id>` and opens a pull request, and reports the outcome
//! with its artifacts.
//!
//! The runner is a command template (`GUILDNET_RUNNER`, split like a shell would but never run
//! through one). Placeholders `{task_id}`, `{org}`, `{agent}` and `{workspace}` are replaced in
//! each argument; the task text reaches the runner as `GUILDNET_TASK` and on stdin.
//!
//! The runner, git and code-server are untrusted: they run sandboxed ([`sandbox`]), the agent
//! keeps its secrets out of their reach ([`process`]), never follows links in the trees they
//! control ([`fsafe`]), and reads their output with bounded memory ([`lines`]). On SIGTERM the
//! agent stops the runner, ships what it can and exits within a bounded time
//! ([`AgentConfig::shutdown_budget`]).

pub mod editor;
pub mod forge;
pub mod fsafe;
pub mod git;
mod health;
pub mod lines;
mod logship;
pub mod pool;
pub mod process;
mod runner;
pub mod sandbox;

pub use logship::{LogShipper, ShipLimits, ShipReport};
pub use runner::{RunOutcome, RunnerSpec};

use crate::agent_env;
use crate::api::{ClaimRequest, CompleteRequest, HeartbeatRequest, RegisterRequest};
use crate::client::{AgentClient, ClientError};
use crate::model::{Artifact, LogStream, Task, TaskStatus};
use crate::names::{AgentName, OrgName, ProcessId, TaskId};
use crate::redact::Redactor;
use crate::token::Secret;
use editor::{EditorConfig, EditorState, EditorSupervisor};
use forge::{ForgeKind, ForgeSettings, PullRequest};
use git::{GitConfig, GitWork};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Errors that end an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A required environment variable is missing or invalid.
    #[error("agent configuration: {0}")]
    Config(String),
    /// The orchestrator refused us for good (bad token, stale agent, task gone).
    #[error("orchestrator refused the agent: {0}")]
    Refused(ClientError),
    /// The orchestrator stayed unreachable longer than the patience allows.
    #[error("orchestrator unreachable for too long: {0}")]
    Unreachable(ClientError),
}

/// Where pull requests are opened.
#[derive(Debug, Clone)]
pub struct ForgeConfig {
    /// The forge: kind, URL and token.
    pub settings: ForgeSettings,
    /// The repository's path on the forge, if not derived from the clone URL.
    pub repo: Option<String>,
}

/// Agent settings, usually from the environment ([`AgentConfig::from_env`]).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Orchestrator base URL.
    pub orchestrator_url: String,
    /// Per-task agent token.
    pub token: Secret,
    /// Task id.
    pub task_id: TaskId,
    /// Org.
    pub org: OrgName,
    /// This agent's name.
    pub agent: AgentName,
    /// Runner command template; `None` fails the task with a clear reason.
    pub runner: Option<String>,
    /// Working directory of the runner (the clone goes to `repo/` inside it).
    pub workspace: PathBuf,
    /// The agent's state dir (`last_pr.json`, code-server data).
    pub state_dir: PathBuf,
    /// The editor, when configured.
    pub editor: Option<EditorConfig>,
    /// `host:port` sent at register as the editor's address.
    pub editor_advertise: Option<String>,
    /// Where to serve `/healthz`.
    pub health_addr: Option<SocketAddr>,
    /// Git settings.
    pub git: GitConfig,
    /// Forge for pull requests.
    pub forge: Option<ForgeConfig>,
    /// The name of the runner the orchestrator chose, for the log.
    pub runner_name: Option<String>,
    /// Removes this agent's secrets from log lines and reasons.
    pub redactor: Redactor,
    /// The secret variables the orchestrator set for the runner (`GUILDNET_SECRET_ENV`, e.g. a
    /// model provider's API key), read once: the agent removes them from its own environment
    /// and hands them to the runner alone (not to code-server or git).
    pub runner_secrets: Vec<(String, Secret)>,
    /// How long to keep retrying an unreachable orchestrator before giving up.
    pub patience: Duration,
    /// Grace between SIGTERM and SIGKILL when stopping the runner.
    pub kill_grace: Duration,
    /// After a stop (SIGTERM), the most time spent shipping the last log lines or completing,
    /// on top of the runner's grace.
    pub shutdown_budget: Duration,
    /// What the runner, git and code-server may touch.
    pub sandbox: sandbox::SandboxConfig,
    /// Set when this agent waited in a warm pool and was handed the task: its pod name (the
    /// task's log then says it started warm).
    pub warm_pod: Option<String>,
}

impl AgentConfig {
    /// Reads `ORCHESTRATOR_URL`, `GUILDNET_AGENT_TOKEN`, `TASK_ID`, `ORG_NAME`, `AGENT_NAME`,
    /// `GUILDNET_RUNNER`, `GUILDNET_WORKSPACE` (default: current dir), `GUILDNET_STATE_DIR`, and
    /// the optional settings in [`agent_env`].
    pub fn from_env() -> Result<Self, AgentError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`AgentConfig::from_env`] over any lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, AgentError> {
        let opt = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let req = |k: &str| opt(k).ok_or_else(|| AgentError::Config(format!("{k} is not set")));
        let bad =
            |k: &str, e: crate::names::ValidationError| AgentError::Config(format!("{k}: {e}"));
        let addr = |k: &str, default: Option<&str>| -> Result<Option<SocketAddr>, AgentError> {
            match opt(k).or(default.map(str::to_owned)) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| AgentError::Config(format!("{k}: {v:?} is not an ip:port"))),
            }
        };
        // The launch contract first: its errors are the ones to report.
        let orchestrator_url = req(agent_env::ORCHESTRATOR_URL)?;
        let token = Secret::new(req(agent_env::AGENT_TOKEN)?);
        let task_id =
            TaskId::new(req(agent_env::TASK_ID)?).map_err(|e| bad(agent_env::TASK_ID, e))?;
        let org =
            OrgName::new(req(agent_env::ORG_NAME)?).map_err(|e| bad(agent_env::ORG_NAME, e))?;
        let agent = AgentName::new(req(agent_env::AGENT_NAME)?)
            .map_err(|e| bad(agent_env::AGENT_NAME, e))?;
        let workspace = opt(agent_env::WORKSPACE)
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        // Never inside the workspace: the runner controls that tree.
        let state_dir =
            crate::state_dir::resolve_state_dir_with(|k: &str| get(k)).map_err(|e| {
                AgentError::Config(format!(
                    "the agent's state dir ({}): {e}",
                    agent_env::STATE_DIR
                ))
            })?;
        let editor = match opt(agent_env::CODE_SERVER) {
            None => None,
            Some(bin) => {
                let password = opt(agent_env::CODE_SERVER_PASSWORD).ok_or_else(|| {
                    AgentError::Config(format!(
                        "{} is not set (needed with {})",
                        agent_env::CODE_SERVER_PASSWORD,
                        agent_env::CODE_SERVER
                    ))
                })?;
                Some(EditorConfig {
                    code_server: PathBuf::from(bin),
                    bind: addr(agent_env::EDITOR_ADDR, Some("0.0.0.0:8443"))?
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8443))),
                    password: Secret::new(password),
                    workspace: workspace.clone(),
                    data_dir: state_dir.join("code-server"),
                    log_file: state_dir.join("code-server.log"),
                    sandbox: None,
                    tmp_dir: None,
                    ready_wait: match opt(agent_env::EDITOR_READY_SECS) {
                        None => editor::DEFAULT_READY_WAIT,
                        Some(v) => v.trim().parse().map(Duration::from_secs).map_err(|_| {
                            AgentError::Config(format!(
                                "{}: {v:?} is not a number of seconds",
                                agent_env::EDITOR_READY_SECS
                            ))
                        })?,
                    },
                })
            }
        };
        let forge_token = match (
            opt(agent_env::FORGE_TOKEN),
            opt(agent_env::FORGE_TOKEN_FILE),
        ) {
            (Some(t), _) => Some(Secret::new(t)),
            (None, Some(path)) => Some(
                crate::agent_settings::read_secret_file(std::path::Path::new(&path)).map_err(
                    |e| AgentError::Config(format!("{}: {e}", agent_env::FORGE_TOKEN_FILE)),
                )?,
            ),
            (None, None) => None,
        };
        let forge = match (opt(agent_env::FORGE_API), forge_token.clone()) {
            (Some(url), Some(token)) => {
                let kind = match opt(agent_env::FORGE_KIND) {
                    Some(k) => ForgeKind::parse(&k).ok_or_else(|| {
                        AgentError::Config(format!(
                            "{}: {k:?} is not github, gitea, forgejo or gitlab",
                            agent_env::FORGE_KIND
                        ))
                    })?,
                    None => ForgeKind::guess(&url).unwrap_or(ForgeKind::GitHub),
                };
                let settings = ForgeSettings { kind, url, token };
                settings
                    .endpoints()
                    .map_err(|e| AgentError::Config(format!("{}: {e}", agent_env::FORGE_API)))?;
                Some(ForgeConfig {
                    settings,
                    repo: opt(agent_env::FORGE_REPO),
                })
            }
            (Some(_), None) => {
                return Err(AgentError::Config(format!(
                    "{} is set but neither {} nor {} is",
                    agent_env::FORGE_API,
                    agent_env::FORGE_TOKEN,
                    agent_env::FORGE_TOKEN_FILE
                )))
            }
            _ => None,
        };
        // Every secret this agent holds, so none of them reaches a log line.
        let mut secrets: Vec<Secret> = forge_token.into_iter().collect();
        secrets.extend(opt(agent_env::AGENT_TOKEN).map(Secret::new));
        secrets.extend(opt(agent_env::CODE_SERVER_PASSWORD).map(Secret::new));
        let mut runner_secrets = Vec::new();
        for name in opt(agent_env::SECRET_ENV).unwrap_or_default().split(',') {
            let name = name.trim();
            if let Some(v) = opt(name) {
                secrets.push(Secret::new(v.clone()));
                // The agent's own credentials never go to the runner.
                if !agent_env::SECRETS.contains(&name) {
                    runner_secrets.push((name.to_owned(), Secret::new(v)));
                }
            }
        }
        let redactor = Redactor::new(secrets.iter());
        let mut git = GitConfig::default();
        if let Some(g) = opt(agent_env::GIT) {
            git.git = PathBuf::from(g);
        }
        if let Some(n) = opt(agent_env::GIT_AUTHOR_NAME) {
            git.author_name = n;
        }
        if let Some(e) = opt(agent_env::GIT_AUTHOR_EMAIL) {
            git.author_email = e;
        }
        let shutdown_budget = match opt(agent_env::SHUTDOWN_SECS) {
            None => Duration::from_secs(5),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    AgentError::Config(format!(
                        "{}: {v:?} is not a number of seconds (0 to 3600)",
                        agent_env::SHUTDOWN_SECS
                    ))
                })?,
        };
        let home = get("HOME").map(PathBuf::from);
        let sandbox = sandbox::SandboxConfig::new(
            opt(agent_env::DENY_PATHS).as_deref(),
            opt(agent_env::SANDBOX_WRITE_PATHS).as_deref(),
            home.as_deref(),
            opt("KUBECONFIG").as_deref(),
        );
        if let Some(f) = &forge {
            git.http_auth = Some(
                f.settings
                    .git_http_auth()
                    .map_err(|e| AgentError::Config(format!("{}: {e}", agent_env::FORGE_API)))?,
            );
        }
        Ok(Self {
            orchestrator_url,
            token,
            task_id,
            org,
            agent,
            runner: opt(agent_env::RUNNER),
            editor_advertise: opt(agent_env::EDITOR_ADVERTISE),
            health_addr: addr(agent_env::HEALTH_ADDR, None)?,
            workspace,
            state_dir,
            editor,
            git,
            forge,
            runner_name: opt(agent_env::RUNNER_NAME),
            redactor,
            runner_secrets,
            patience: Duration::from_secs(600),
            kill_grace: Duration::from_secs(3),
            shutdown_budget,
            sandbox,
            warm_pod: None,
        })
    }
}

/// How an agent run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentOutcome {
    /// The task finished and the orchestrator recorded it.
    Completed(Box<Task>),
    /// The task was cancelled (or taken away); the runner was stopped.
    Cancelled,
    /// The agent was asked to stop (SIGTERM) before the task finished.
    Stopped,
}

/// Retries `op` while it fails with transient errors, with capped exponential backoff, for at
/// most `patience`.
pub async fn retry<T, F, Fut>(what: &str, patience: Duration, op: F) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    use backon::Retryable;
    let start = tokio::time::Instant::now();
    let policy = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times();
    op.retry(policy)
        .sleep(tokio::time::sleep)
        .when(|e: &ClientError| e.is_transient() && start.elapsed() <= patience)
        .notify(|e: &ClientError, wait: Duration| {
            tracing::warn!(what, error = %e, ?wait, "retrying");
        })
        .await
        .map_err(|e| {
            if e.is_transient() {
                AgentError::Unreachable(e)
            } else {
                AgentError::Refused(e)
            }
        })
}

/// What the agent reports about itself in heartbeats and on `/healthz`.
#[derive(Clone)]
pub(crate) struct StateView {
    runner: watch::Receiver<&'static str>,
    editor: watch::Receiver<EditorState>,
    sandbox: serde_json::Value,
}

impl StateView {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "runner": *self.runner.borrow(),
            "editor": *self.editor.borrow(),
            "sandbox": self.sandbox,
        })
    }

    fn healthy(&self) -> bool {
        self.editor.borrow().healthy()
    }
}

/// The sandbox as heartbeats report it: `{"landlock": "available", "abi": 6}` or
/// `{"landlock": "unavailable", "reason": "..."}`.
fn sandbox_state() -> serde_json::Value {
    serde_json::to_value(sandbox::landlock_support()).unwrap_or_default()
}

/// The result of the work after the runner: artifacts, PR URL, or why it failed.
struct Delivery {
    artifacts: Vec<Artifact>,
    pr_url: Option<String>,
}

/// A stop request (SIGTERM) seen by every phase, and the deadline it sets: once the runner is
/// stopped (its grace) everything left (the last log lines, the completion) gets `budget`.
#[derive(Clone)]
struct Stopper {
    rx: watch::Receiver<Option<tokio::time::Instant>>,
    budget: Duration,
    runner_ended: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Stopper {
    fn new(stop: impl Future<Output = ()> + Send + 'static, budget: Duration) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            stop.await;
            let _ = tx.send(Some(tokio::time::Instant::now()));
        });
        Self {
            rx,
            budget,
            runner_ended: Arc::default(),
        }
    }

    /// Resolves once a stop was requested.
    async fn stopped(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|s| s.is_some()).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn is_stopped(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// The runner is over (ended, or stopped within its grace): the budget counts from here.
    fn runner_ended(&self) {
        if let Ok(mut r) = self.runner_ended.lock() {
            *r = Some(tokio::time::Instant::now());
        }
    }

    /// Time left before the stop deadline (the whole budget while no stop was requested).
    fn remaining(&self) -> Duration {
        let Some(stop_at) = *self.rx.borrow() else {
            return self.budget;
        };
        let ended = self.runner_ended.lock().ok().and_then(|r| *r);
        let from = ended.map_or(stop_at, |e| e.max(stop_at));
        (from + self.budget).saturating_duration_since(tokio::time::Instant::now())
    }

    /// Runs `fut` to its end, but once a stop is requested only until the stop deadline.
    async fn bounded<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(fut);
        tokio::select! {
            v = &mut fut => Some(v),
            _ = self.stopped() => tokio::time::timeout(self.remaining(), fut).await.ok(),
        }
    }
}

/// A directory for one child's temporary files (`TMPDIR`), private (0700) and short (UNIX
/// socket paths are limited to 108 bytes), removed when dropped.
struct PrivateTmp(PathBuf);

impl PrivateTmp {
    fn create(what: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir =
            std::env::temp_dir().join(format!("gn-{what}-{:012x}", rand::random::<u64>() >> 16));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for PrivateTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where git may write besides the workspace: a local remote (`file://` URL or path) the task
/// names, since pushing writes to it.
fn local_remote(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Runs the agent to the end. `stop` resolving (e.g. on SIGTERM) stops the runner, ships what
/// it can within [`AgentConfig::shutdown_budget`] and returns [`AgentOutcome::Stopped`] without
/// completing the task (its lease then expires and the task is requeued).
pub async fn run(
    cfg: AgentConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<AgentOutcome, AgentError> {
    let client = AgentClient::new(&cfg.orchestrator_url, cfg.token.clone())
        .map_err(|e| AgentError::Config(e.to_string()))?;
    run_with_client(cfg, client, stop).await
}

/// [`run`] over a given client (a warm pool agent's, which reuses the connection it waited on).
pub async fn run_with_client(
    cfg: AgentConfig,
    client: AgentClient,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<AgentOutcome, AgentError> {
    // After a stop: the runner's grace, then the shutdown budget for the log and the report.
    let stopper = Stopper::new(stop, cfg.shutdown_budget);
    let _ = crate::state_dir::create_private_dir(&cfg.state_dir);
    // The editor comes up first: a person can watch the workspace while the task is prepared.
    // A warm pool agent starts it right after its claim instead (the claim is its hot path).
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut editor_tmp = None;
    let editor = match &cfg.editor {
        Some(e) => {
            let mut e = e.clone();
            let tmp = PrivateTmp::create("editor")
                .map_err(|err| AgentError::Config(format!("editor temp dir: {err}")))?;
            let _ = std::fs::create_dir_all(&e.data_dir);
            e.sandbox = Some(
                cfg.sandbox
                    .editor(&cfg.state_dir, &e.workspace, &e.data_dir, &tmp.0),
            );
            e.tmp_dir = Some(tmp.0.clone());
            editor_tmp = Some(tmp);
            if cfg.warm_pod.is_some() {
                // Also when the claim fails (the sender is dropped): the task ends then anyway.
                EditorSupervisor::start_after(e, async move {
                    let _ = claimed_rx.await;
                })
            } else {
                EditorSupervisor::start(e)
            }
        }
        None => EditorSupervisor::disabled(),
    };
    let (runner_tx, runner_rx) = watch::channel("starting");
    let view = StateView {
        runner: runner_rx,
        editor: editor.watch(),
        sandbox: sandbox_state(),
    };
    let health = match cfg.health_addr {
        Some(addr) => Some(
            health::serve(addr, view.clone())
                .await
                .map_err(|e| AgentError::Config(format!("{}: {e}", agent_env::HEALTH_ADDR)))?,
        ),
        None => None,
    };
    let result = run_task(&cfg, &client, view, runner_tx, &stopper, claimed_tx).await;
    // Whatever the runner or git left behind goes now (code-server's tree is not ours).
    process::kill_orphans(Duration::from_secs(1)).await;
    let editor_grace = if stopper.is_stopped() {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(4)
    };
    editor.shutdown_within(editor_grace).await;
    drop(editor_tmp);
    if let Some(h) = health {
        h.abort();
    }
    result
}

async fn run_task(
    cfg: &AgentConfig,
    client: &AgentClient,
    view: StateView,
    runner_tx: watch::Sender<&'static str>,
    stopper: &Stopper,
    claimed_tx: tokio::sync::oneshot::Sender<()>,
) -> Result<AgentOutcome, AgentError> {
    let patience = cfg.patience;
    let register = RegisterRequest {
        agent: cfg.agent.clone(),
        version: Some(env!("CARGO_PKG_VERSION").into()),
        editor_address: cfg.editor_advertise.clone(),
    };
    let reg = tokio::select! {
        r = retry("register", patience, || client.register(&register)) => r?,
        _ = stopper.stopped() => return Ok(AgentOutcome::Stopped),
    };
    tracing::info!(task = %cfg.task_id, agent = %cfg.agent, "registered");
    if reg.task.status == TaskStatus::Cancelled {
        return Ok(AgentOutcome::Cancelled);
    }
    // The task is Running once claimed: claim only once its editor can be opened (a warm pool
    // agent starts its editor after the claim instead, which is its hot path).
    let editor_note = match (&cfg.editor, &cfg.warm_pod) {
        (Some(e), None) if !e.ready_wait.is_zero() => {
            let t = tokio::time::Instant::now();
            let ready = tokio::select! {
                r = editor::wait_until_ready(view.editor.clone(), e.ready_wait) => r,
                _ = stopper.stopped() => return Ok(AgentOutcome::Stopped),
            };
            match ready {
                Ok(()) => {
                    tracing::info!(
                        bind = %e.bind,
                        waited_ms = t.elapsed().as_millis() as u64,
                        "the editor accepts connections; claiming"
                    );
                    None
                }
                Err(why) => {
                    let line = format!(
                        "[editor] {why} on {}; the task runs without it (the editor opens once it \
                         answers; its output is in the agent's code-server.log)",
                        e.bind
                    );
                    tracing::warn!(bind = %e.bind, "{line}");
                    Some(line)
                }
            }
        }
        _ => None,
    };
    // One id per process: its retries keep the claim's token, and a replacement process
    // (a new pod of this agent) takes the claim over and fences this one off.
    let claim_req = ClaimRequest {
        agent: cfg.agent.clone(),
        process: Some(ProcessId::generate()),
    };
    let claim = tokio::select! {
        r = retry("claim", patience, || client.claim(&claim_req)) => r?,
        _ = stopper.stopped() => return Ok(AgentOutcome::Stopped),
    };
    let fencing = claim.fencing;
    let task = claim.task;
    tracing::info!(task = %task.id, fencing, "claimed");
    let _ = claimed_tx.send(());

    // cancel_tx: set when the orchestrator says stop (cancelled, or our claim went stale).
    let (cancel_tx, cancel_rx) = watch::channel(false);
    // The interval comes from the orchestrator: keep it within sane bounds.
    let every = Duration::from_millis(claim.timings.heartbeat_interval_ms.clamp(100, 60_000));
    let hb = tokio::spawn(heartbeat_loop(
        client.clone(),
        cfg.agent.clone(),
        fencing,
        every,
        cancel_tx,
        view,
    ));
    let shipper = LogShipper::start(
        client.clone(),
        cfg.agent.clone(),
        fencing,
        claim.next_log_seq.max(1),
    )
    .with_redactor(cfg.redactor.clone());
    if let Some(line) = editor_note {
        shipper.push(LogStream::System, line);
    }
    if let Some(pod) = &cfg.warm_pod {
        shipper.push(
            LogStream::System,
            format!("[pool] warm start: pool agent {pod} was handed the task and claimed it"),
        );
    }
    let outcome = work(cfg, &task, stopper, cancel_rx, runner_tx, shipper).await;
    let (shipper, done) = outcome;
    let finish_limit = if stopper.is_stopped() {
        stopper.remaining()
    } else {
        patience
    };
    // Stopped (SIGTERM) before the task ended: the log is not complete, so it is not sealed.
    // Whoever goes on with the task writes the rest: the replacement pod of this attempt (its
    // agent takes the same claim over) or the next attempt.
    let seal = !matches!(done, Done::Stopped);
    let end = async {
        if seal {
            shipper.finish(finish_limit).await
        } else {
            shipper.flush(finish_limit).await
        }
    };
    let report = match stopper.bounded(end).await {
        Some(r) => r,
        None => ShipReport {
            sealed: false,
            dropped: 0,
            problem: Some("stopped while shipping the log".into()),
        },
    };
    if (seal && !report.sealed) || report.dropped > 0 || report.problem.is_some() {
        tracing::warn!(
            sealed = report.sealed,
            dropped = report.dropped,
            problem = report.problem.as_deref().unwrap_or(""),
            "the log was not shipped completely"
        );
    }
    let req = match done {
        Done::Stopped => {
            hb.abort();
            return Ok(AgentOutcome::Stopped);
        }
        Done::Cancelled => {
            hb.abort();
            return Ok(AgentOutcome::Cancelled);
        }
        Done::Complete {
            status,
            exit_code,
            reason,
            delivery,
        } => CompleteRequest {
            agent: cfg.agent.clone(),
            fencing,
            status,
            exit_code,
            reason: reason.map(|r| cfg.redactor.apply_owned(r)),
            artifacts: delivery.artifacts,
            pr_url: delivery.pr_url,
        },
    };
    // Heartbeats keep the lease while completing.
    let completed = stopper
        .bounded(retry("complete", patience, || client.complete(&req)))
        .await;
    hb.abort();
    match completed {
        None => Ok(AgentOutcome::Stopped),
        Some(Ok(t)) => Ok(AgentOutcome::Completed(Box::new(t))),
        Some(Err(AgentError::Refused(e))) if e.status() == Some(409) => Ok(AgentOutcome::Cancelled),
        Some(Err(e)) => Err(e),
    }
}

/// How the work on a claimed task ended.
enum Done {
    /// Stopped (SIGTERM) before it finished.
    Stopped,
    /// Cancelled by the orchestrator.
    Cancelled,
    /// Finished: report this.
    Complete {
        status: TaskStatus,
        exit_code: Option<i32>,
        reason: Option<String>,
        delivery: Delivery,
    },
}

/// Prepares the workspace, runs the runner and delivers its changes; every phase gives way to
/// a stop request.
async fn work(
    cfg: &AgentConfig,
    task: &Task,
    stopper: &Stopper,
    cancel_rx: watch::Receiver<bool>,
    runner_tx: watch::Sender<&'static str>,
    shipper: LogShipper,
) -> (LogShipper, Done) {
    let mut git_policy = cfg.sandbox.git(&cfg.state_dir, &cfg.workspace);
    if let Some(p) = task
        .context
        .repo
        .as_ref()
        .and_then(|r| local_remote(&r.url))
    {
        git_policy.write.push(p);
    }
    let gitw = GitWork::new(cfg.git.clone()).with_sandbox(git_policy);
    let _ = runner_tx.send("preparing");
    let _ = std::fs::create_dir_all(&cfg.workspace);
    let checkout_dir = if task.context.repo.is_some() {
        cfg.workspace.join("repo")
    } else {
        cfg.workspace.clone()
    };
    let prepared = tokio::select! {
        p = gitw.prepare(&task.context, &checkout_dir, &shipper) => p,
        _ = stopper.stopped() => {
            shipper.push(LogStream::System, "agent stopping: the task did not start".into());
            return (shipper, Done::Stopped);
        }
    };
    let (outcome, checkout) = match prepared {
        Err(e) => {
            let why = explain_git_failure(cfg, task, e.to_string()).await;
            shipper.push(
                LogStream::System,
                format!("cannot prepare the workspace: {why}"),
            );
            (Some(RunOutcome::NotStarted(why)), None)
        }
        Ok(checkout) => {
            let outcome = match &cfg.runner {
                None => {
                    shipper.push(
                        LogStream::System,
                        "no runner configured: set GUILDNET_RUNNER to a command template".into(),
                    );
                    Some(RunOutcome::NotStarted(
                        "no runner configured (GUILDNET_RUNNER is empty)".into(),
                    ))
                }
                Some(template) => match RunnerSpec::parse(template, task, cfg) {
                    Err(e) => {
                        shipper.push(LogStream::System, format!("invalid runner: {e}"));
                        Some(RunOutcome::NotStarted(format!("invalid runner: {e}")))
                    }
                    Ok(mut spec) => match PrivateTmp::create("runner") {
                        Err(e) => Some(RunOutcome::NotStarted(format!(
                            "cannot create the runner's temp dir: {e}"
                        ))),
                        Ok(tmp) => {
                            spec.cwd = checkout_dir.clone();
                            // A named runner says which one ran (the default says nothing).
                            if let Some(name) =
                                cfg.runner_name.as_deref().filter(|n| *n != "default")
                            {
                                shipper.push(LogStream::System, format!("runner: {name}"));
                            }
                            spec.env
                                .push(("TMPDIR".into(), tmp.0.display().to_string()));
                            spec.env.extend(
                                cfg.runner_secrets
                                    .iter()
                                    .map(|(k, v)| (k.clone(), v.expose().to_owned())),
                            );
                            spec.sandbox =
                                Some(cfg.sandbox.runner(&cfg.state_dir, &cfg.workspace, &tmp.0));
                            let _ = runner_tx.send("running");
                            let stop = {
                                let s = stopper.clone();
                                async move { s.stopped().await }
                            };
                            spec.run(&task.task, &shipper, cancel_rx, stop, cfg.kill_grace)
                                .await
                        }
                    },
                },
            };
            (outcome, checkout)
        }
    };
    stopper.runner_ended();
    let _ = runner_tx.send("finished");
    let (mut status, exit_code, mut reason) = match outcome {
        None => return (shipper, Done::Stopped),
        Some(RunOutcome::Cancelled) => return (shipper, Done::Cancelled),
        Some(RunOutcome::Exited(0)) => (TaskStatus::Succeeded, Some(0), None),
        Some(RunOutcome::Exited(code)) => (
            TaskStatus::Failed,
            Some(code),
            Some(format!("runner exited with code {code}")),
        ),
        Some(RunOutcome::Signalled(sig)) => (
            TaskStatus::Failed,
            None,
            Some(format!("runner killed by signal {sig}")),
        ),
        Some(RunOutcome::NotStarted(why)) => (TaskStatus::Failed, None, Some(why)),
    };
    let mut delivery = Delivery {
        artifacts: Vec::new(),
        pr_url: None,
    };
    if status == TaskStatus::Succeeded {
        if let Some(co) = &checkout {
            let _ = runner_tx.send("delivering");
            let delivered = tokio::select! {
                d = deliver(cfg, &gitw, co, task, &shipper) => d,
                _ = stopper.stopped() => {
                    shipper.push(LogStream::System, "agent stopping: delivery abandoned".into());
                    return (shipper, Done::Stopped);
                }
            };
            match delivered {
                Ok(d) => delivery = d,
                Err(why) => {
                    shipper.push(LogStream::System, format!("delivery failed: {why}"));
                    status = TaskStatus::Failed;
                    reason = Some(why);
                }
            }
        }
    }
    (
        shipper,
        Done::Complete {
            status,
            exit_code,
            reason,
            delivery,
        },
    )
}

/// After a git step failed on a repository of the configured forge: asks the forge whether it
/// accepts the token at all, and if it does not, says so in front of git's own message (git
/// only reports that it could not read a user name, since it may not prompt).
async fn explain_git_failure(cfg: &AgentConfig, task: &Task, why: String) -> String {
    let Some(fc) = &cfg.forge else {
        return why;
    };
    let on_forge = task
        .context
        .repo
        .as_ref()
        .is_some_and(|r| fc.settings.repo_path(&r.url).is_some());
    if !on_forge {
        return why;
    }
    match fc.settings.whoami().await {
        Err(e @ forge::ForgeError::Auth { .. }) => {
            format!("the forge token was refused: {e}; {why}")
        }
        _ => why,
    }
}

/// `last_pr.json`: what the task delivered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastPr {
    /// The pull request's URL, when a forge is configured.
    pub url: Option<String>,
    /// The pushed branch.
    pub branch: String,
    /// The pushed commit.
    pub commit: String,
    /// The task.
    pub task_id: String,
    /// When it was written.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Name of the delivery record in the agent's state dir.
pub const LAST_PR_FILE: &str = "last_pr.json";

/// Commits and pushes the changes, opens a PR when a forge is configured, writes
/// `last_pr.json`, and returns the artifacts. An error is the reason the task failed.
async fn deliver(
    cfg: &AgentConfig,
    gitw: &GitWork,
    co: &git::Checkout,
    task: &Task,
    shipper: &LogShipper,
) -> Result<Delivery, String> {
    let message = git::commit_message(task.id.as_str(), &task.task);
    let pushed = match gitw
        .commit_and_push(co, task.id.as_str(), &message, shipper)
        .await
    {
        Ok(p) => p,
        Err(e) => return Err(explain_git_failure(cfg, task, e.to_string()).await),
    };
    let Some(pushed) = pushed else {
        return Ok(Delivery {
            artifacts: Vec::new(),
            pr_url: None,
        });
    };
    let mut artifacts = vec![
        Artifact {
            name: "branch".into(),
            kind: "branch".into(),
            uri: pushed.branch.clone(),
        },
        Artifact {
            name: "commit".into(),
            kind: "commit".into(),
            uri: pushed.commit.clone(),
        },
    ];
    let mut pr_url = None;
    if let Some(fc) = &cfg.forge {
        let repo = fc
            .repo
            .clone()
            .or_else(|| fc.settings.repo_path(&co.repo.url));
        match repo {
            None => shipper.push(
                LogStream::System,
                format!(
                    "{} is not on the configured forge ({}); no pull request (set {} to name it)",
                    git::redact_url(&co.repo.url),
                    fc.settings.url,
                    agent_env::FORGE_REPO
                ),
            ),
            Some(repo) => {
                let f = fc.settings.connect(&repo).map_err(|e| e.to_string())?;
                // The branch that was checked out; a tag or commit leaves HEAD detached, and
                // then the pull request goes to `main`.
                let base = co.base_branch.clone().unwrap_or_else(|| "main".into());
                let pr = PullRequest {
                    title: message.lines().next().unwrap_or("GuildNet task").to_owned(),
                    head: pushed.branch.clone(),
                    base,
                    body: format!(
                        "Opened by GuildNet agent {} for task {}.\n\n{}",
                        cfg.agent,
                        task.id,
                        task.task.chars().take(4000).collect::<String>()
                    ),
                };
                let opened = f
                    .open_pull_request(&pr)
                    .await
                    .map_err(|e| format!("cannot open the pull request on {repo}: {e}"))?;
                shipper.push(
                    LogStream::System,
                    format!(
                        "pull request{}: {}",
                        if opened.reused {
                            " (already open, reused)"
                        } else {
                            ""
                        },
                        opened.url
                    ),
                );
                artifacts.push(Artifact {
                    name: "pr".into(),
                    kind: "pr".into(),
                    uri: opened.url.clone(),
                });
                pr_url = Some(opened.url);
            }
        }
    }
    let record = LastPr {
        url: pr_url.clone(),
        branch: pushed.branch,
        commit: pushed.commit,
        task_id: task.id.to_string(),
        created_at: chrono::Utc::now(),
    };
    let path = cfg.state_dir.join(LAST_PR_FILE);
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
    crate::state_dir::create_private_dir(&cfg.state_dir)
        .and_then(|_| crate::state_dir::write_private_file(&path, &bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    artifacts.push(Artifact {
        name: LAST_PR_FILE.into(),
        kind: "file".into(),
        uri: path.display().to_string(),
    });
    Ok(Delivery { artifacts, pr_url })
}

async fn heartbeat_loop(
    client: AgentClient,
    agent: AgentName,
    fencing: u64,
    every: Duration,
    cancel: watch::Sender<bool>,
    view: StateView,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let req = HeartbeatRequest {
            agent: agent.clone(),
            fencing: Some(fencing),
            state: Some(view.json()),
        };
        match client.heartbeat(&req).await {
            Ok(r) if r.cancel => {
                tracing::info!("orchestrator asked to cancel");
                let _ = cancel.send(true);
            }
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "heartbeat failed; will retry");
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat refused; stopping the runner");
                let _ = cancel.send(true);
            }
        }
    }
}
