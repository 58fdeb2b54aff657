//! Warm pool mode: the agent starts without a task (no task token, no task secrets), holding
//! only its org's pool token, and waits on `POST /pool/wait` (a long poll it keeps open) until
//! the orchestrator hands it a task. It then runs that task exactly like a cold agent (register,
//! claim with lease and fencing, run, complete) and exits: a used agent never waits again.
//!
//! Set by the operator on a pool's pods: `GUILDNET_POOL_TOKEN`, `GUILDNET_POOL_POD`,
//! `ORG_NAME`, `ORCHESTRATOR_URL` and optionally `GUILDNET_POOL_RUNNER`; no `TASK_ID`.

use super::{AgentConfig, AgentError};
use crate::agent_env;
use crate::client::{AgentClient, ClientError, PoolClient};
use crate::names::OrgName;
use crate::pool::{Handoff, PoolWaitRequest};
use crate::token::Secret;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// A warm agent's settings: how to wait, and the environment a task's settings are laid over.
#[derive(Clone)]
pub struct PoolAgentConfig {
    /// Orchestrator base URL.
    pub orchestrator_url: String,
    /// The pool token (waits for a task of `org`, nothing else).
    pub pool_token: Secret,
    /// The pool's org.
    pub org: OrgName,
    /// This agent's pod name.
    pub pod: String,
    /// The named runner this agent takes tasks for.
    pub runner: Option<String>,
    /// Seconds each wait is held open.
    pub wait_secs: u64,
    /// How long to keep retrying an unreachable orchestrator before giving up.
    pub patience: Duration,
    /// The environment at start, without the pool token: the task's settings go over it.
    base: BTreeMap<String, String>,
}

impl std::fmt::Debug for PoolAgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolAgentConfig")
            .field("orchestrator_url", &self.orchestrator_url)
            .field("org", &self.org)
            .field("pod", &self.pod)
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl PoolAgentConfig {
    /// Whether an environment asks for pool mode: a pool token and no task.
    pub fn wanted(get: impl Fn(&str) -> Option<String>) -> bool {
        let set = |k: &str| get(k).is_some_and(|v| !v.trim().is_empty());
        set(agent_env::POOL_TOKEN) && !set(agent_env::TASK_ID)
    }

    /// Reads the pool settings from an environment (all its variables).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, AgentError> {
        let mut base: BTreeMap<String, String> = vars.into_iter().collect();
        let opt = |m: &BTreeMap<String, String>, k: &str| {
            m.get(k).filter(|v| !v.trim().is_empty()).cloned()
        };
        let req = |m: &BTreeMap<String, String>, k: &str| {
            opt(m, k).ok_or_else(|| AgentError::Config(format!("{k} is not set (pool mode)")))
        };
        let orchestrator_url = req(&base, agent_env::ORCHESTRATOR_URL)?;
        let org = OrgName::new(req(&base, agent_env::ORG_NAME)?)
            .map_err(|e| AgentError::Config(format!("{}: {e}", agent_env::ORG_NAME)))?;
        let pod = opt(&base, agent_env::POOL_POD)
            .or_else(|| opt(&base, "HOSTNAME"))
            .ok_or_else(|| {
                AgentError::Config(format!("{} is not set (pool mode)", agent_env::POOL_POD))
            })?;
        let runner = opt(&base, agent_env::POOL_RUNNER);
        let probe = PoolWaitRequest {
            pod: pod.clone(),
            runner: runner.clone(),
            wait_secs: None,
        };
        probe
            .validate()
            .map_err(|(f, m)| AgentError::Config(format!("pool {f}: {m}")))?;
        let pool_token = Secret::new(req(&base, agent_env::POOL_TOKEN)?);
        // The task's launch contract comes from the handoff alone.
        for k in [
            agent_env::POOL_TOKEN,
            agent_env::AGENT_TOKEN,
            agent_env::TASK_ID,
            agent_env::AGENT_NAME,
        ] {
            base.remove(k);
        }
        Ok(Self {
            orchestrator_url,
            pool_token,
            org,
            pod,
            runner,
            wait_secs: crate::pool::DEFAULT_WAIT_SECS,
            patience: Duration::from_secs(600),
            base,
        })
    }

    /// The agent configuration for a handed-over task: the start environment, then the task's
    /// plain and secret settings, then its launch contract (which always wins).
    pub fn task_config(&self, h: &Handoff) -> Result<AgentConfig, AgentError> {
        if h.org != self.org {
            return Err(AgentError::Config(format!(
                "handed a task of org {}, but this pool serves org {}",
                h.org, self.org
            )));
        }
        let mut vars = self.base.clone();
        vars.extend(h.env.iter().cloned());
        vars.extend(h.secret_env.iter().cloned());
        for (k, v) in [
            (agent_env::ORCHESTRATOR_URL, self.orchestrator_url.clone()),
            (agent_env::AGENT_TOKEN, h.agent_token.clone()),
            (agent_env::TASK_ID, h.task_id.to_string()),
            (agent_env::ORG_NAME, h.org.to_string()),
            (agent_env::AGENT_NAME, h.agent.to_string()),
        ] {
            vars.insert(k.to_owned(), v);
        }
        let mut cfg = AgentConfig::from_lookup(|k| vars.get(k).cloned())?;
        cfg.warm_pod = Some(self.pod.clone());
        Ok(cfg)
    }
}

/// Waits (re-polling) until the orchestrator hands this agent a task; returns its configuration
/// and a client on the same connections, or `None` when `stop` resolved first.
pub async fn wait_for_task(
    cfg: &PoolAgentConfig,
    stop: impl Future<Output = ()>,
) -> Result<Option<(AgentConfig, AgentClient)>, AgentError> {
    let client = PoolClient::new(&cfg.orchestrator_url, cfg.pool_token.clone())
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let req = PoolWaitRequest {
        pod: cfg.pod.clone(),
        runner: cfg.runner.clone(),
        wait_secs: Some(cfg.wait_secs),
    };
    tracing::info!(org = %cfg.org, pod = %cfg.pod, "warm: waiting for a task");
    let waiting = async {
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        let mut delay = Duration::from_millis(100);
        loop {
            match client.wait(&req).await {
                Ok(r) => {
                    unreachable_since = None;
                    delay = Duration::from_millis(100);
                    if let Some(h) = r.handoff {
                        return Ok(h);
                    }
                }
                Err(e) if e.is_transient() => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > cfg.patience {
                        return Err(AgentError::Unreachable(e));
                    }
                    tracing::warn!(error = %e, ?delay, "warm: wait failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(AgentError::Refused(e)),
            }
        }
    };
    let handoff: Result<Handoff, AgentError> = tokio::select! {
        h = waiting => h,
        _ = stop => return Ok(None),
    };
    let h = handoff?;
    tracing::info!(task = %h.task_id, agent = %h.agent, "warm: handed a task");
    let task_cfg = cfg.task_config(&h)?;
    let agent_client = client.agent_client(task_cfg.token.clone());
    Ok(Some((task_cfg, agent_client)))
}

/// Whether `e` says this agent already took a task (it must exit, not wait again).
pub fn is_used(e: &ClientError) -> bool {
    e.code() == Some("pool_agent_used")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{AgentName, TaskId};

    fn vars() -> Vec<(String, String)> {
        [
            ("ORCHESTRATOR_URL", "http://10.0.0.1:8080"),
            ("GUILDNET_POOL_TOKEN", "gnp.acme.x.y"),
            ("ORG_NAME", "acme"),
            ("GUILDNET_POOL_POD", "pool-acme-abcde"),
            ("GUILDNET_WORKSPACE", "/ws"),
            ("GUILDNET_STATE_DIR", "/st"),
            ("GUILDNET_RUNNER", "from-the-pod"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn handoff(org: &str) -> Handoff {
        Handoff {
            task_id: TaskId::new("t-1").unwrap(),
            org: OrgName::new(org).unwrap(),
            agent: AgentName::new("agent-t-1-1").unwrap(),
            agent_token: "gnt.t-1.secret".into(),
            env: vec![
                ("GUILDNET_RUNNER".into(), "sh -s".into()),
                ("GUILDNET_SECRET_ENV".into(), "MODEL_KEY".into()),
            ],
            secret_env: vec![("MODEL_KEY".into(), "sk-123".into())],
        }
    }

    #[test]
    fn pool_mode_is_a_pool_token_without_a_task() {
        let m: BTreeMap<_, _> = vars().into_iter().collect();
        assert!(PoolAgentConfig::wanted(|k| m.get(k).cloned()));
        let mut with_task = m.clone();
        with_task.insert("TASK_ID".into(), "t-1".into());
        assert!(!PoolAgentConfig::wanted(|k| with_task.get(k).cloned()));
    }

    #[test]
    fn the_handoff_makes_the_task_config_and_its_contract_wins() {
        let p = PoolAgentConfig::from_vars(vars()).unwrap();
        assert_eq!(p.pod, "pool-acme-abcde");
        let cfg = p.task_config(&handoff("acme")).unwrap();
        assert_eq!(cfg.task_id.as_str(), "t-1");
        assert_eq!(cfg.agent.as_str(), "agent-t-1-1");
        assert_eq!(cfg.token.expose(), "gnt.t-1.secret");
        assert_eq!(
            cfg.runner.as_deref(),
            Some("sh -s"),
            "the task's runner wins"
        );
        assert_eq!(cfg.warm_pod.as_deref(), Some("pool-acme-abcde"));
        assert!(cfg
            .runner_secrets
            .iter()
            .any(|(k, v)| k == "MODEL_KEY" && v.expose() == "sk-123"));
        // The pool token never reaches the task's configuration.
        assert!(!format!("{:?}", p.base).contains("gnp."));
        // A task of another org is refused.
        assert!(p.task_config(&handoff("other")).is_err());
    }

    #[test]
    fn missing_pool_settings_are_named() {
        let v: Vec<_> = vars()
            .into_iter()
            .filter(|(k, _)| k != "GUILDNET_POOL_POD")
            .collect();
        let e = PoolAgentConfig::from_vars(v).unwrap_err().to_string();
        assert!(e.contains("GUILDNET_POOL_POD"), "{e}");
    }
}
