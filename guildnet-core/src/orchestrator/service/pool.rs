//! The orchestrator's side of warm pools (see [`crate::pool`]): setting an org's pool through
//! the backend, the long poll warm agents wait on, and the handoff of a dispatched task to one of
//! them. The handoff carries this attempt's fresh agent token and the task's own settings only.

use super::Orchestrator;
use crate::names::OrgName;
use crate::orchestrator::error::ApiError;
use crate::pool::registry::WaitError;
use crate::pool::{
    Handoff, PoolSpec, PoolStatus, PoolWaitRequest, PoolWaitResponse, DEFAULT_WAIT_SECS,
};
use crate::seams::{AgentLaunch, PoolLaunch, PoolPlacement};
use crate::token::{self, Secret};
use axum::http::StatusCode;
use std::time::Duration;

impl Orchestrator {
    /// Whether `org` has a warm pool this orchestrator knows of.
    pub(super) fn has_pool(&self, org: &OrgName) -> bool {
        self.inner
            .pool_orgs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(org)
    }

    fn mark_pool(&self, org: &OrgName, on: bool) {
        let mut set = self
            .inner
            .pool_orgs
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if on {
            set.insert(org.clone());
        } else {
            set.remove(org);
        }
    }

    /// Hands the task of `launch` to a waiting warm agent of its org, unless an earlier attempt
    /// of the task was handed to one already (that agent vanished before claiming, or died with
    /// the task: this attempt starts cold, so a pool going away under a task cannot use up its
    /// attempts). Returns where it went, or the line for the task's log saying why it starts
    /// cold.
    pub(super) fn hand_to_warm_agent_once(
        &self,
        launch: &AgentLaunch,
    ) -> Result<PoolPlacement, String> {
        if self.inner.pool.was_handed(&launch.task_id) {
            self.inner.pool.count_cold(&launch.org);
            return Err(format!(
                "[pool] cold start: an earlier attempt of this task was handed to a warm agent of org {}'s pool that did not claim or finish it; attempt {} starts a new agent",
                launch.org, launch.attempt
            ));
        }
        self.hand_to_warm_agent(launch).map_err(|waiting| {
            format!(
                "[pool] cold start: no warm agent of org {}'s pool was free ({waiting} waiting for another runner); starting a new agent",
                launch.org
            )
        })
    }

    /// Hands the task of `launch` to a waiting warm agent of its org. Returns where it went, or
    /// how many agents of the org were waiting (for other runners) when none took it.
    fn hand_to_warm_agent(&self, launch: &AgentLaunch) -> Result<PoolPlacement, u32> {
        let runner = launch
            .settings
            .get(crate::agent_env::RUNNER_NAME)
            .unwrap_or("default")
            .to_owned();
        let editor_password = token::generate("");
        let mut secret_env: Vec<(String, String)> = launch
            .settings
            .secret_env
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect();
        secret_env.push((
            crate::agent_env::CODE_SERVER_PASSWORD.to_owned(),
            editor_password.expose().to_owned(),
        ));
        let handoff = Handoff {
            task_id: launch.task_id.clone(),
            org: launch.org.clone(),
            agent: launch.agent.clone(),
            agent_token: launch.agent_token.expose().to_owned(),
            env: launch.settings.env.clone(),
            secret_env,
        };
        match self.inner.pool.hand_off(&runner, handoff) {
            Some(pod) => {
                tracing::info!(task = %launch.task_id, org = %launch.org, %pod, "task handed to a warm pool agent");
                Ok(PoolPlacement {
                    pod,
                    editor_password,
                })
            }
            None => Err(self.inner.pool.waiting(&launch.org)),
        }
    }

    /// A pool token for `org`: what the backend gives the org's warm agents. Only the holder of
    /// the admin token can get one (through `PUT /orgs/{org}/pool`, or this call in-process).
    pub fn mint_pool_token(&self, org: &OrgName) -> Secret {
        self.inner.pool_keys.mint(org)
    }

    /// The org a presented pool token is valid for.
    pub fn authenticate_pool(&self, presented: &str) -> Result<OrgName, ApiError> {
        self.inner
            .pool_keys
            .verify(presented)
            .ok_or_else(|| ApiError::unauthorized("invalid pool token"))
    }

    /// `POST /pool/wait`: a warm agent of `org` waits up to `wait_secs` for a task. Returns the
    /// task handed to it, or none (ask again). Refused (409 `pool_agent_used`) for an agent that
    /// already took a task.
    pub async fn pool_wait(
        &self,
        org: OrgName,
        req: PoolWaitRequest,
    ) -> Result<PoolWaitResponse, ApiError> {
        req.validate().map_err(|(f, m)| ApiError::invalid(f, m))?;
        if !self.org_exists(&org).await? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_org",
                format!("org {org:?} is not registered"),
            ));
        }
        self.mark_pool(&org, true);
        let wait = self
            .inner
            .pool
            .wait(&org, &req.pod, req.runner.clone())
            .map_err(|e| match e {
                WaitError::AlreadyUsed { .. } => {
                    ApiError::new(StatusCode::CONFLICT, "pool_agent_used", e.to_string())
                        .with_field("pod")
                }
            })?;
        let limit = Duration::from_secs(req.wait_secs.unwrap_or(DEFAULT_WAIT_SECS));
        let mut closing = self.subscribe_closing();
        let mut wait = wait;
        let got = tokio::select! {
            r = &mut wait.rx => r.ok(),
            _ = tokio::time::sleep(limit) => None,
            _ = closing.wait_for(|c| *c) => None,
        };
        let handoff = match got {
            Some(h) => Some(h),
            None => self.inner.pool.finish_wait(wait),
        };
        Ok(PoolWaitResponse { handoff })
    }

    /// `PUT /orgs/{org}/pool`: sets the org's warm pool on the backend, with a fresh pool token
    /// for its agents.
    pub async fn set_pool(&self, org: OrgName, spec: PoolSpec) -> Result<PoolStatus, ApiError> {
        spec.validate().map_err(|(f, m)| ApiError::invalid(f, m))?;
        self.known_org(&org).await?;
        let launch = PoolLaunch {
            orchestrator_url: self.inner.cfg.public_url.clone(),
            pool_token: self.mint_pool_token(&org),
        };
        self.inner.backend.set_pool(&org, &spec, launch).await?;
        self.mark_pool(&org, true);
        tracing::info!(%org, size = spec.size, "warm pool set");
        self.pool_status(org).await
    }

    /// `GET /orgs/{org}/pool`.
    pub async fn pool_status(&self, org: OrgName) -> Result<PoolStatus, ApiError> {
        self.known_org(&org).await?;
        let ask = self.inner.backend.pool_status(&org);
        let backend = match tokio::time::timeout(Duration::from_secs(3), ask).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(%org, error = %e, "backend pool status failed");
                None
            }
            Err(_) => None,
        };
        if backend.is_some() {
            self.mark_pool(&org, true);
        }
        let (warm_starts, cold_starts) = self.inner.pool.starts(&org);
        Ok(PoolStatus {
            waiting: self.inner.pool.waiting(&org),
            warm_starts,
            cold_starts,
            org,
            backend,
        })
    }

    /// `DELETE /orgs/{org}/pool`: removes the org's pool; its waiting agents get no task.
    pub async fn delete_pool(&self, org: OrgName) -> Result<bool, ApiError> {
        let removed = self.inner.backend.delete_pool(&org).await?;
        self.mark_pool(&org, false);
        self.inner.pool.forget_org(&org);
        Ok(removed)
    }

    async fn known_org(&self, org: &OrgName) -> Result<(), ApiError> {
        if self.org_exists(org).await? {
            Ok(())
        } else {
            Err(ApiError::not_found(format!("org {org} not found")))
        }
    }
}
