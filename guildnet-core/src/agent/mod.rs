//! The agent runtime, run inside a task's pod (or as a local child process): registers, claims
//! its task, heartbeats (renewing the lease), runs the task with a configurable runner, ships
//! every output line to the orchestrator without losing any across reconnects, and reports the
//! outcome.
//!
//! The runner is a command template (`GUILDNET_RUNNER`, split like a shell would but never run
//! through one). Placeholders `{task_id}`, `{org}`, `{agent}` and `{workspace}` are replaced in
//! each argument; the task text reaches the runner as `GUILDNET_TASK` and on stdin.

mod logship;
mod runner;

pub use logship::LogShipper;
pub use runner::{RunOutcome, RunnerSpec};

use crate::client::{AgentClient, ClientError};
use crate::model::{LogStream, Task, TaskStatus};
use crate::names::{AgentName, OrgName, TaskId};
use crate::orchestrator::api::{ClaimRequest, CompleteRequest, HeartbeatRequest, RegisterRequest};
use crate::seams::env;
use crate::token::Secret;
use std::future::Future;
use std::path::PathBuf;
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
    /// Working directory of the runner.
    pub workspace: PathBuf,
    /// How long to keep retrying an unreachable orchestrator before giving up.
    pub patience: Duration,
    /// Grace between SIGTERM and SIGKILL when stopping the runner.
    pub kill_grace: Duration,
}

impl AgentConfig {
    /// Reads `ORCHESTRATOR_URL`, `GUILDNET_AGENT_TOKEN`, `TASK_ID`, `ORG_NAME`, `AGENT_NAME`,
    /// `GUILDNET_RUNNER`, `GUILDNET_WORKSPACE` (default: current dir).
    pub fn from_env() -> Result<Self, AgentError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`AgentConfig::from_env`] over any lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, AgentError> {
        let req = |k: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| AgentError::Config(format!("{k} is not set")))
        };
        let bad =
            |k: &str, e: crate::names::ValidationError| AgentError::Config(format!("{k}: {e}"));
        Ok(Self {
            orchestrator_url: req(env::ORCHESTRATOR_URL)?,
            token: Secret::new(req(env::AGENT_TOKEN)?),
            task_id: TaskId::new(req(env::TASK_ID)?).map_err(|e| bad(env::TASK_ID, e))?,
            org: OrgName::new(req(env::ORG_NAME)?).map_err(|e| bad(env::ORG_NAME, e))?,
            agent: AgentName::new(req(env::AGENT_NAME)?).map_err(|e| bad(env::AGENT_NAME, e))?,
            runner: get(crate::local::RUNNER_ENV).filter(|v| !v.trim().is_empty()),
            workspace: get(crate::local::WORKSPACE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::current_dir().ok())
                .unwrap_or_else(|| PathBuf::from(".")),
            patience: Duration::from_secs(600),
            kill_grace: Duration::from_secs(3),
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
pub async fn retry<T, F, Fut>(what: &str, patience: Duration, mut op: F) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                if start.elapsed() > patience {
                    return Err(AgentError::Unreachable(e));
                }
                tracing::warn!(what, error = %e, "retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(AgentError::Refused(e)),
        }
    }
}

/// Runs the agent to the end. `stop` resolving (e.g. on SIGTERM) stops the runner and returns
/// [`AgentOutcome::Stopped`] without completing the task (its lease then expires and the task is
/// requeued).
pub async fn run(
    cfg: AgentConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<AgentOutcome, AgentError> {
    let client = AgentClient::new(&cfg.orchestrator_url, cfg.token.clone())
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let patience = cfg.patience;
    let register = RegisterRequest {
        agent: cfg.agent.clone(),
        version: Some(env!("CARGO_PKG_VERSION").into()),
        editor_address: None,
    };
    let reg = retry("register", patience, || client.register(&register)).await?;
    tracing::info!(task = %cfg.task_id, agent = %cfg.agent, "registered");
    if reg.task.status == TaskStatus::Cancelled {
        return Ok(AgentOutcome::Cancelled);
    }
    let claim_req = ClaimRequest {
        agent: cfg.agent.clone(),
    };
    let claim = retry("claim", patience, || client.claim(&claim_req)).await?;
    let fencing = claim.fencing;
    let task = claim.task;
    tracing::info!(task = %task.id, fencing, "claimed");

    // cancel_tx: set when the orchestrator says stop (cancelled, or our claim went stale).
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(serde_json::json!({"runner": "starting"}));
    let hb = tokio::spawn(heartbeat_loop(
        client.clone(),
        cfg.agent.clone(),
        fencing,
        Duration::from_millis(claim.timings.heartbeat_interval_ms.max(100)),
        cancel_tx,
        state_rx,
    ));

    let shipper = LogShipper::start(
        client.clone(),
        cfg.agent.clone(),
        fencing,
        claim.next_log_seq.max(1),
    );
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
        Some(template) => match RunnerSpec::parse(template, &task, &cfg) {
            Err(e) => {
                shipper.push(LogStream::System, format!("invalid runner: {e}"));
                Some(RunOutcome::NotStarted(format!("invalid runner: {e}")))
            }
            Ok(spec) => {
                let _ = state_tx.send(serde_json::json!({"runner": "running"}));
                spec.run(&task.task, &shipper, cancel_rx, stop, cfg.kill_grace)
                    .await
            }
        },
    };
    let _ = state_tx.send(serde_json::json!({"runner": "finished"}));
    // Every line must be stored before completion is reported.
    let flushed = shipper.finish(patience).await;
    hb.abort();
    let (status, exit_code, reason) = match outcome {
        None => return Ok(AgentOutcome::Stopped),
        Some(RunOutcome::Cancelled) => return Ok(AgentOutcome::Cancelled),
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
    flushed?;
    let req = CompleteRequest {
        agent: cfg.agent.clone(),
        fencing,
        status,
        exit_code,
        reason,
        artifacts: Vec::new(),
        pr_url: None,
    };
    match retry("complete", patience, || client.complete(&req)).await {
        Ok(t) => Ok(AgentOutcome::Completed(Box::new(t))),
        Err(AgentError::Refused(e)) if e.status() == Some(409) => Ok(AgentOutcome::Cancelled),
        Err(e) => Err(e),
    }
}

async fn heartbeat_loop(
    client: AgentClient,
    agent: AgentName,
    fencing: u64,
    every: Duration,
    cancel: watch::Sender<bool>,
    state: watch::Receiver<serde_json::Value>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let req = HeartbeatRequest {
            agent: agent.clone(),
            fencing: Some(fencing),
            state: Some(state.borrow().clone()),
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
