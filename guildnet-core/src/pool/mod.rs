//! Warm agent pools: agents already running in an org's cluster, waiting for a task.
//!
//! A pool is set per org (`PUT /orgs/{org}/pool`, [`PoolSpec`]) and kept by the backend (the
//! Kubernetes backend writes an `AgentPool` resource that the operator reconciles into pods).
//! A warm agent holds no task credentials: only a *pool token* ([`token`]) that lets it wait for
//! a task of its org (`POST /pool/wait`, a long poll it keeps open). When a task of the org is
//! dispatched and an agent waits, the orchestrator hands it the task with a fresh per-task
//! token over that open request ([`registry`]); the agent then registers and claims with a
//! lease and fencing exactly like a cold agent. A used agent never waits again: it exits after
//! its task, and the pool refills.
//!
//! This module owns the wire types of the pool API, the pool token, and the registry of waiting
//! agents. It must not touch the store or a backend (the service does).

pub mod registry;
pub mod token;

use crate::names::{AgentName, OrgName, TaskId};
use serde::{Deserialize, Serialize};

/// Most warm agents one org's pool may keep.
pub const MAX_POOL_SIZE: u32 = 100;
/// Longest a `POST /pool/wait` is held open (seconds).
pub const MAX_WAIT_SECS: u64 = 60;
/// How long a `POST /pool/wait` is held open when the agent does not say (seconds).
pub const DEFAULT_WAIT_SECS: u64 = 20;

/// `PUT /orgs/{org}/pool`: the org's warm pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// Warm agents to keep (0 to 100; 0 keeps the pool but runs no agent).
    pub size: u32,
    /// Agent image of the pool's pods (the backend's agent image when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The named runner (orchestrator `--runner NAME=...` or a preset) the pool's agents take
    /// tasks for; absent: tasks of any runner (the pool's image must have its CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Scale to zero after this many seconds without task activity for the org (counted from the
    /// last task's end, never while one runs); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<u64>,
}

impl PoolSpec {
    /// Checks the fields; the error names the field and says why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.size > MAX_POOL_SIZE {
            return Err(("size", format!("must be between 0 and {MAX_POOL_SIZE}")));
        }
        if let Some(image) = &self.image {
            if image.is_empty()
                || image.len() > 512
                || image.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err((
                    "image",
                    "must be an image reference (1 to 512 characters, no spaces)".into(),
                ));
            }
        }
        if let Some(r) = &self.runner {
            if r.is_empty() || r.len() > 63 || r.chars().any(|c| c.is_control()) {
                return Err(("runner", "must be 1 to 63 printable characters".into()));
            }
        }
        if let Some(s) = self.idle_seconds {
            if s == 0 || s > 30 * 24 * 3600 {
                return Err(("idleSeconds", "must be between 1 and 2592000".into()));
            }
        }
        Ok(())
    }
}

/// What the backend reports about an org's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolBackendStatus {
    /// The backend's resource, e.g. `AgentPool mvp-agents/acme`.
    pub resource: String,
    /// The pool as stored by the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PoolSpec>,
    /// Warm agents wanted now (0 while scaled to zero).
    pub desired: u32,
    /// Warm agent pods that exist (not yet handed a task).
    pub warm: u32,
    /// Of those, pods that are running.
    pub running: u32,
    /// Scaled to zero after the idle time.
    pub scaled_to_zero: bool,
    /// Conditions, one line each (`ImageReady=False ImagePullBackOff: ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
}

/// `GET /orgs/{org}/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// The org.
    pub org: OrgName,
    /// Warm agents waiting on this orchestrator now (ready to take a task at once).
    pub waiting: u32,
    /// Tasks handed to warm agents since this orchestrator started.
    pub warm_starts: u64,
    /// Tasks of this org started cold since this orchestrator started (no agent waiting).
    pub cold_starts: u64,
    /// The backend's view, when it keeps pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<PoolBackendStatus>,
}

/// `POST /pool/wait` (pool token): a warm agent waits for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolWaitRequest {
    /// The agent's pod (or process) name, unique in the org: a DNS-1123 subdomain.
    pub pod: String,
    /// The named runner the agent takes tasks for (its pool's `runner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// How long to hold the request open without a task (1 to 60 s, default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u64>,
}

impl PoolWaitRequest {
    /// Checks the fields; the error names the field and says why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let p = &self.pod;
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(("pod", "must be a DNS-1123 subdomain (a pod name)".into()));
        }
        if let Some(r) = &self.runner {
            if r.is_empty() || r.len() > 63 || r.chars().any(|c| c.is_control()) {
                return Err(("runner", "must be 1 to 63 printable characters".into()));
            }
        }
        if let Some(s) = self.wait_secs {
            if s == 0 || s > MAX_WAIT_SECS {
                return Err(("waitSecs", format!("must be between 1 and {MAX_WAIT_SECS}")));
            }
        }
        Ok(())
    }
}

/// One task handed to a warm agent: everything a cold agent gets from its pod's environment.
/// Holds the per-task token and the task's secret settings: its `Debug` shows neither.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    /// The task.
    pub task_id: TaskId,
    /// Its org (the pool's).
    pub org: OrgName,
    /// The agent name of this attempt: the warm agent registers and claims under it.
    pub agent: AgentName,
    /// The per-task agent token (`GUILDNET_AGENT_TOKEN`).
    pub agent_token: String,
    /// Plain settings (runner template, forge URL, secret variable names, ...).
    pub env: Vec<(String, String)>,
    /// Secret settings of this task alone (forge token, model keys, code-server password).
    pub secret_env: Vec<(String, String)>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("task_id", &self.task_id)
            .field("org", &self.org)
            .field("agent", &self.agent)
            .field("agent_token", &"<redacted>")
            .field("env", &self.env)
            .field(
                "secret_env",
                &self.secret_env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The reply to `POST /pool/wait`: a task, or none when the wait ended without one (ask again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolWaitResponse {
    /// The task handed to this agent, if any.
    pub handoff: Option<Handoff>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_spec_checks_name_the_field() {
        let ok = PoolSpec {
            size: 3,
            image: Some("reg/agent:1".into()),
            runner: None,
            idle_seconds: Some(600),
        };
        assert!(ok.validate().is_ok());
        let bad = |s: PoolSpec| s.validate().unwrap_err().0;
        assert_eq!(
            bad(PoolSpec {
                size: 101,
                ..ok.clone()
            }),
            "size"
        );
        assert_eq!(
            bad(PoolSpec {
                image: Some("a b".into()),
                ..ok.clone()
            }),
            "image"
        );
        assert_eq!(
            bad(PoolSpec {
                idle_seconds: Some(0),
                ..ok.clone()
            }),
            "idleSeconds"
        );
        assert_eq!(
            bad(PoolSpec {
                runner: Some(String::new()),
                ..ok
            }),
            "runner"
        );
    }

    #[test]
    fn wait_request_wants_a_pod_name() {
        let r = |pod: &str| PoolWaitRequest {
            pod: pod.into(),
            runner: None,
            wait_secs: None,
        };
        assert!(r("pool-acme-x7k2p").validate().is_ok());
        for bad in ["", "Pod", "a/b", "-a", "a..b", &"a".repeat(254)] {
            assert_eq!(r(bad).validate().unwrap_err().0, "pod", "{bad:?}");
        }
        let mut w = r("p");
        w.wait_secs = Some(61);
        assert_eq!(w.validate().unwrap_err().0, "waitSecs");
    }

    #[test]
    fn handoff_debug_hides_the_token_and_secret_values() {
        let h = Handoff {
            task_id: TaskId::new("t-1").unwrap(),
            org: OrgName::new("acme").unwrap(),
            agent: AgentName::new("agent-t-1-1").unwrap(),
            agent_token: "gnt.t-1.SECRETVALUE".into(),
            env: vec![],
            secret_env: vec![("MODEL_KEY".into(), "sk-HIDDEN".into())],
        };
        let s = format!("{h:?}");
        assert!(!s.contains("SECRETVALUE") && !s.contains("HIDDEN"), "{s}");
        assert!(s.contains("MODEL_KEY"));
    }
}
