//! The operator: reconciles each AgentTask into a Secret `<name>-env`, a Deployment `<name>` and a
//! Service `<name>`, all applied server-side under one field manager with a controller owner
//! reference, and keeps the AgentTask's status (phase, conditions, times) up to date. It also
//! reconciles each AgentPool into warm agent pods ([`crate::pool`]).
//!
//! Phase rules: Pending until the Deployment is available, then Running. Succeeded and Failed
//! are written by the orchestrator (see [`crate::backend`]); the operator then removes the
//! workload. `spec.cancel` removes the workload and sets Cancelled. A finished AgentTask is
//! deleted `ttlSecondsAfterFinished` after it finished. A finished phase is sticky for its agent:
//! only a new attempt (a new `spec.agentName`) starts the workload again.
//!
//! Status writes carry the resourceVersion the operator read, so a status the orchestrator wrote
//! in between is never overwritten from a stale copy (the write fails with 409 and is retried).
//!
//! Modules:
//! - [`manifests`]: the children as typed k8s-openapi objects (env Secret, Deployment and its
//!   pod spec, Service, warm pool pod). Pure functions: no API calls, no clock.
//! - `reconcile`: the AgentTask reconciler (validation, status and conditions, applies that
//!   skip unchanged children, cancel, finish, TTL, Events).
//! - `pool`: the AgentPool reconciler and the adoption of a warm pod by its task.
//! - [`metrics`]: the counters and the `/metrics` and `/healthz` server.
//! - `run`: the controllers, the watch caches they read from, and leader election.

pub mod manifests;
pub mod metrics;
mod pool;
mod reconcile;
mod run;

pub use manifests::{AGENT_HEALTH_PORT, ATTEMPT_ANNOTATION, SPEC_HASH_ANNOTATION};
pub use metrics::{serve_metrics, Metrics};
pub use reconcile::validate;
pub use run::{run, RunOutcome};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The operator's field manager for server-side apply.
pub const OPERATOR_FIELD_MANAGER: &str = "guildnet-operator";

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Namespace whose AgentTasks are reconciled.
    pub namespace: String,
    /// URL agents use to reach the orchestrator; overrides `spec.orchestratorUrl`.
    pub public_orchestrator_url: Option<String>,
    /// Delay before retrying after an error (doubles per consecutive failure, capped at 5 min).
    pub error_backoff: Duration,
    /// Reporting instance for Events (the pod name, say).
    pub instance: Option<String>,
    /// Reconciles in flight at most.
    pub concurrency: u16,
    /// Run only while holding this Lease (several replicas, one active).
    pub leader_election: Option<crate::leader::LeaseConfig>,
    /// Secrets (in the watched namespace) the agent pods pull their image with: a private
    /// registry's `kubernetes.io/dockerconfigjson` Secrets.
    pub image_pull_secrets: Vec<String>,
    /// The tailscale sidecar of agents whose AgentTask has `spec.mesh`.
    pub mesh_sidecar: crate::mesh_sidecar::SidecarConfig,
}

impl OperatorConfig {
    /// Defaults for a namespace.
    pub fn new(namespace: impl Into<String>) -> Self {
        OperatorConfig {
            namespace: namespace.into(),
            public_orchestrator_url: None,
            error_backoff: Duration::from_secs(2),
            instance: None,
            concurrency: 16,
            leader_election: None,
            image_pull_secrets: Vec::new(),
            mesh_sidecar: Default::default(),
        }
    }
}

/// An operator to [`run`]: its client, settings and counters.
pub struct Operator {
    pub(crate) client: kube::Client,
    pub(crate) cfg: OperatorConfig,
    /// Counters (shared with [`serve_metrics`]).
    pub metrics: Arc<Metrics>,
}

impl Operator {
    /// An operator over a client.
    pub fn new(client: kube::Client, cfg: OperatorConfig) -> Self {
        Operator {
            client,
            cfg,
            metrics: Arc::default(),
        }
    }
}

/// The watch caches of the children (and of the namespace's Secrets, for the credentials): a
/// reconcile reads from memory and skips applies that would change nothing. Filled by the
/// reflectors [`run`] starts; empty (every apply goes out) until they have listed.
#[derive(Clone)]
pub(crate) struct Caches {
    pub(crate) deployments: Store<Deployment>,
    pub(crate) services: Store<Service>,
    pub(crate) secrets: Store<Secret>,
}

/// What each reconcile gets: the operator's client and settings, the caches of one controller
/// run, the Event recorder and the per-object failure counts (for the error backoff).
pub(crate) struct Context {
    pub(crate) client: kube::Client,
    pub(crate) cfg: OperatorConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) caches: Caches,
    recorder: Recorder,
    /// The retry waits of each object whose reconciles keep failing ([`failure_backoff`]).
    failures: std::sync::Mutex<BTreeMap<String, backon::ExponentialBackoff>>,
}

/// Longest wait before retrying a failed reconcile.
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(300);

/// The waits before retrying an object whose reconciles keep failing: `first` doubling per
/// consecutive failure up to 256 times `first`, and never past [`MAX_FAILURE_DELAY`]
/// (backon's exponential backoff, no jitter).
fn failure_backoff(first: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(first.saturating_mul(256).min(MAX_FAILURE_DELAY))
        .with_factor(2.0)
        .without_max_times()
        .build()
}

impl Context {
    /// The context of one controller run over `caches`.
    pub(crate) fn new(op: &Operator, caches: Caches) -> Self {
        let recorder = Recorder::new(
            op.client.clone(),
            Reporter {
                controller: "guildnet-operator".into(),
                instance: op.cfg.instance.clone(),
            },
        );
        Context {
            client: op.client.clone(),
            cfg: op.cfg.clone(),
            metrics: op.metrics.clone(),
            caches,
            recorder,
            failures: Default::default(),
        }
    }

    /// The namespace of `obj`, or the watched one.
    pub(crate) fn namespace_of(&self, obj: &impl kube::ResourceExt) -> String {
        obj.namespace()
            .unwrap_or_else(|| self.cfg.namespace.clone())
    }

    /// Counts one more consecutive failure of `name`; returns the wait before its retry.
    pub(crate) fn failed(&self, name: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.entry(name.to_owned())
            .or_insert_with(|| failure_backoff(self.cfg.error_backoff))
            .next()
            .unwrap_or(MAX_FAILURE_DELAY)
    }

    /// Forgets the failures of `name` (it reconciled).
    pub(crate) fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// Treats a 404 from the API as done (the object is already gone).
pub(crate) fn ignore_404<T>(r: Result<T, kube::Error>) -> Result<(), crate::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod failure_backoff_tests {
    use super::*;

    #[test]
    fn failed_reconciles_wait_longer_each_time_up_to_the_caps() {
        let secs = |first: Duration, n: usize| -> Vec<u64> {
            failure_backoff(first)
                .take(n)
                // backon computes in floating point: 10 ms x 256 is 2559.99... ms.
                .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
                .collect()
        };
        // 2 s doubling, capped at 300 s.
        assert_eq!(
            secs(Duration::from_secs(2), 10),
            [2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000, 300000]
        );
        // A short first wait stops doubling at 256 times itself.
        assert_eq!(secs(Duration::from_millis(10), 10)[8..], [2560, 2560]);
    }
}
