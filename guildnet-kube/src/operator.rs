//! The operator: reconciles each AgentTask into a Secret `<name>-env`, a Deployment `<name>` and a
//! Service `<name>`, all applied server-side under one field manager with a controller owner
//! reference, and keeps the AgentTask's status (phase, conditions, times) up to date.
//!
//! Phase rules: Pending until the Deployment is available, then Running. Succeeded and Failed
//! are written by the orchestrator (see [`crate::backend`]); the operator then removes the
//! workload. `spec.cancel` removes the workload and sets Cancelled. A finished AgentTask is
//! deleted `ttlSecondsAfterFinished` after it finished. A finished phase is sticky for its agent:
//! only a new attempt (a new `spec.agentName`) starts the workload again.
//!
//! Status writes carry the resourceVersion the operator read, so a status the orchestrator wrote
//! in between is never overwritten from a stale copy (the write fails with 409 and is retried).

use crate::crd::{AgentTask, AgentTaskStatus, Condition, Phase};
use crate::{Error, EDITOR_PORT, MANAGED_BY, TASK_LABEL};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::seams::env as agent_env;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The operator's field manager for server-side apply.
pub const OPERATOR_FIELD_MANAGER: &str = "guildnet-operator";
/// Environment variable with the code-server password, in the agent's env Secret.
pub const CODE_SERVER_PASSWORD_ENV: &str = "CODE_SERVER_PASSWORD";
/// Key of the agent token in the credentials Secret.
pub const CREDENTIALS_TOKEN_KEY: &str = "agent-token";
/// Key of the code-server password in the credentials Secret.
pub const CREDENTIALS_PASSWORD_KEY: &str = "code-server-password";
/// Port of the agent's own health endpoint (`/healthz`), probed by the kubelet.
pub const AGENT_HEALTH_PORT: u16 = 8081;
/// Annotation on the pod template carrying the attempt (a new attempt rolls the pod).
pub const ATTEMPT_ANNOTATION: &str = "guildnet.io/attempt";

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

/// Counters exposed on /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Reconciles that failed.
    pub reconcile_errors: AtomicU64,
    /// Objects applied (Secret, Deployment, Service).
    pub applies: AtomicU64,
    /// Status writes.
    pub status_writes: AtomicU64,
}

impl Metrics {
    /// Prometheus text format.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE guildnet_operator_reconciles_total counter\nguildnet_operator_reconciles_total {}\n\
             # TYPE guildnet_operator_reconcile_errors_total counter\nguildnet_operator_reconcile_errors_total {}\n\
             # TYPE guildnet_operator_applies_total counter\nguildnet_operator_applies_total {}\n\
             # TYPE guildnet_operator_status_writes_total counter\nguildnet_operator_status_writes_total {}\n",
            g(&self.reconciles),
            g(&self.reconcile_errors),
            g(&self.applies),
            g(&self.status_writes)
        )
    }
}

/// Annotation on each child with a hash of what the operator last applied: a reconcile that
/// would apply the same object again skips the request (the watch cache shows it is there).
pub const SPEC_HASH_ANNOTATION: &str = "guildnet.io/spec-hash";

type Writers = (Writer<Deployment>, Writer<Service>, Writer<Secret>);

/// Shared state of the reconciler.
pub struct Context {
    pub(crate) client: kube::Client,
    pub(crate) cfg: OperatorConfig,
    recorder: Recorder,
    /// Counters.
    pub metrics: Arc<Metrics>,
    failures: std::sync::Mutex<BTreeMap<String, u32>>,
    deployments: Store<Deployment>,
    services: Store<Service>,
    secrets: Store<Secret>,
    writers: std::sync::Mutex<Option<Writers>>,
}

impl Context {
    /// A context over a client.
    pub fn new(client: kube::Client, cfg: OperatorConfig) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "guildnet-operator".into(),
                instance: cfg.instance.clone(),
            },
        );
        let (deployments, wd) = reflector::store();
        let (services, ws) = reflector::store();
        let (secrets, wsec) = reflector::store();
        Context {
            client,
            cfg,
            recorder,
            metrics: Arc::default(),
            failures: Default::default(),
            deployments,
            services,
            secrets,
            writers: std::sync::Mutex::new(Some((wd, ws, wsec))),
        }
    }
}

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> RunOutcome {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let Some(lease_cfg) = ctx.cfg.leader_election.clone() else {
        run_controller(ctx, stopped(stop_rx)).await;
        return RunOutcome::Stopped;
    };
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &lease_cfg.namespace);
    tokio::select! {
        _ = crate::leader::acquire(&leases, &lease_cfg) => {}
        _ = stopped(stop_rx.clone()) => return RunOutcome::Stopped,
    }
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    let (l2, c2) = (leases.clone(), lease_cfg.clone());
    let holder = tokio::spawn(async move {
        crate::leader::hold(&l2, &c2).await;
        let _ = lost_tx.send(true);
    });
    let mut rx_stop = stop_rx.clone();
    let mut rx_lost = lost_rx.clone();
    run_controller(ctx, async move {
        tokio::select! {
            _ = rx_stop.wait_for(|v| *v) => {}
            _ = rx_lost.wait_for(|v| *v) => {}
        }
    })
    .await;
    holder.abort();
    if *lost_rx.borrow() {
        return RunOutcome::LostLeadership;
    }
    crate::leader::release(&leases, &lease_cfg).await;
    RunOutcome::Stopped
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Shut down as asked.
    Stopped,
    /// Another replica took the lease: exit (and be restarted) rather than reconcile alongside it.
    LostLeadership,
}

async fn run_controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = ctx.cfg.namespace.clone();
    let tasks: Api<AgentTask> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    // Watch caches of the children (and of the namespace's Secrets, for the credentials), so
    // a reconcile reads from memory and skips applies that would change nothing.
    let writers = ctx.writers.lock().unwrap_or_else(|p| p.into_inner()).take();
    let mut caches = Vec::new();
    if let Some((wd, ws, wsec)) = writers {
        let c = &ctx.client;
        caches.push(tokio::spawn(drain(
            watcher(Api::<Deployment>::namespaced(c.clone(), &ns), owned.clone())
                .default_backoff()
                .modify(|o| o.managed_fields_mut().clear())
                .reflect(wd),
        )));
        caches.push(tokio::spawn(drain(
            watcher(Api::<Service>::namespaced(c.clone(), &ns), owned.clone())
                .default_backoff()
                .modify(|o| o.managed_fields_mut().clear())
                .reflect(ws),
        )));
        caches.push(tokio::spawn(drain(
            watcher(
                Api::<Secret>::namespaced(c.clone(), &ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(|o| o.managed_fields_mut().clear())
            .reflect(wsec),
        )));
        let ready = async {
            let _ = ctx.deployments.wait_until_ready().await;
            let _ = ctx.services.wait_until_ready().await;
            let _ = ctx.secrets.wait_until_ready().await;
        };
        if tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .is_err()
        {
            tracing::warn!("watch caches not ready after 60 s; reconciling without them");
        }
    }
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let pools = tokio::spawn(run_pool_controller(ctx.clone(), shutdown.clone()));
    Controller::new(tasks, watcher::Config::default())
        // Bounded: each reconcile in flight holds request and response buffers; unbounded, a
        // thousand new AgentTasks meant a thousand at once (memory peak, API server overload).
        .with_config(controller::Config::default().concurrency(ctx.cfg.concurrency))
        .owns(
            Api::<Deployment>::namespaced(ctx.client.clone(), &ns),
            owned.clone(),
        )
        .owns(Api::<Service>::namespaced(ctx.client.clone(), &ns), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(agenttask = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    let _ = pools.await;
    for c in caches {
        c.abort();
    }
}

/// The AgentPool controller: reconciles each org's pool when it changes, when one of its pods
/// changes (also when a pod is adopted by a task), and when an AgentTask of its org changes (a
/// new task ends an idle period).
async fn run_pool_controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use crate::pool::{AgentPool, POOL_LABEL};
    let ns = ctx.cfg.namespace.clone();
    let c = &ctx.client;
    let ns2 = ns.clone();
    let ns3 = ns.clone();
    Controller::new(
        Api::<AgentPool>::namespaced(c.clone(), &ns),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().concurrency(4))
    .watches(
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns),
        watcher::Config::default().labels(POOL_LABEL),
        move |pod| {
            pod.labels()
                .get(POOL_LABEL)
                .map(|org| ObjectRef::<AgentPool>::new(org).within(&ns2))
        },
    )
    .watches(
        Api::<AgentTask>::namespaced(c.clone(), &ns),
        watcher::Config::default(),
        move |at| Some(ObjectRef::<AgentPool>::new(&at.spec.org_id).within(&ns3)),
    )
    .graceful_shutdown_on(shutdown)
    .run(crate::pool::reconcile_pool, pool_error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(agentpool = %obj.name, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "pool reconcile error"),
        }
    })
    .await;
}

fn pool_error_policy(pool: Arc<crate::pool::AgentPool>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(agentpool = %pool.name_any(), error = %err, "pool reconcile failed; retrying");
    Action::requeue(ctx.cfg.error_backoff)
}

async fn drain<S: futures_util::Stream + Send>(s: S) {
    futures_util::pin_mut!(s);
    while let Some(_event) = s.next().await {}
}

fn spec_hash(obj: &Value) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&bytes)[..12])
}

/// Adds the spec-hash annotation to `desired`; returns the cached object when it already
/// carries the same hash and belongs to the same owner (then the apply can be skipped).
fn unchanged<K>(store: &Store<K>, desired: &mut Value, ns: &str, owner_uid: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    let hash = spec_hash(desired);
    let name = desired["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    desired["metadata"]["annotations"] = json!({ SPEC_HASH_ANNOTATION: hash });
    let cached = store.get(&ObjectRef::new(&name).within(ns))?;
    let meta = cached.meta();
    let same_hash = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
        == Some(&hash);
    let same_owner = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == owner_uid && o.controller == Some(true));
    (same_hash && same_owner && meta.deletion_timestamp.is_none()).then_some(cached)
}

fn error_policy(obj: Arc<AgentTask>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.fetch_add(1, Ordering::Relaxed);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(obj.name_any()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = ctx
        .cfg
        .error_backoff
        .saturating_mul(1u32 << (n - 1).min(8))
        .min(Duration::from_secs(300));
    tracing::warn!(agenttask = %obj.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Checks an AgentTask's spec; the message says which field and why.
pub fn validate(at: &AgentTask) -> Result<(), String> {
    let s = &at.spec;
    TaskId::new(&s.task_id).map_err(|e| format!("spec.taskId: {e}"))?;
    OrgName::new(&s.org_id).map_err(|e| format!("spec.orgId: {e}"))?;
    if s.image.trim().is_empty() {
        return Err("spec.image: must not be empty".into());
    }
    if s.attempt == 0 {
        return Err("spec.attempt: must be at least 1".into());
    }
    if !s.agent_name.is_empty() {
        AgentName::new(&s.agent_name).map_err(|e| format!("spec.agentName: {e}"))?;
    }
    if let Some(m) = &s.mesh {
        crate::mesh_sidecar::validate(m)?;
    }
    if let Some(p) = &s.pool_pod {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err("spec.poolPod: must be a pod name (DNS-1123 subdomain)".into());
        }
    }
    if s.task.len() > 256 * 1024 {
        return Err("spec.task: at most 256 KiB".into());
    }
    for k in s.env.keys() {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "spec.env.{k}: not a valid environment variable name"
            ));
        }
        if reserved_env().contains(&k.as_str()) {
            return Err(format!(
                "spec.env.{k}: reserved for GuildNet (set by the operator)"
            ));
        }
    }
    Ok(())
}

fn reserved_env() -> [&'static str; 6] {
    [
        agent_env::ORCHESTRATOR_URL,
        agent_env::AGENT_TOKEN,
        agent_env::TASK_ID,
        agent_env::ORG_NAME,
        agent_env::AGENT_NAME,
        CODE_SERVER_PASSWORD_ENV,
    ]
}

/// Name of an AgentTask's credentials Secret.
pub fn credentials_secret_name(at: &AgentTask) -> String {
    at.spec
        .credentials_secret
        .clone()
        .unwrap_or_else(|| format!("{}-credentials", at.name_any()))
}

/// Name of the operator-made env Secret for a workload.
pub fn env_secret_name(workload: &str) -> String {
    format!("{workload}-env")
}

fn set_condition(conds: &mut Vec<Condition>, type_: &str, ok: bool, reason: &str, message: &str) {
    let status = if ok { "True" } else { "False" };
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now_rfc3339();
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
    } else {
        conds.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now_rfc3339(),
        });
    }
}

async fn reconcile(at: Arc<AgentTask>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    let action = reconcile_inner(&at, &ctx).await?;
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&at.name_any());
    Ok(action)
}

async fn reconcile_inner(at: &AgentTask, ctx: &Context) -> Result<Action, Error> {
    if at.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let old = at.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let workload = st.workload_name.clone().unwrap_or_else(|| at.name_any());
    st.workload_name = Some(workload.clone());
    st.observed_generation = at.meta().generation;
    let agent = (!at.spec.agent_name.is_empty()).then(|| at.spec.agent_name.clone());
    let new_attempt = agent.is_some() && st.agent_name.is_some() && st.agent_name != agent;
    if new_attempt && (st.phase.is_finished() || st.phase == Phase::Running) && !at.spec.cancel {
        // A new attempt starts over (the orchestrator requeued the task).
        st.phase = Phase::Pending;
        st.started_at = None;
        st.finished_at = None;
        st.reason = None;
        st.exit_code = None;
    }
    st.agent_name = agent.or(st.agent_name);

    if let Err(why) = validate(at) {
        set_condition(&mut st.conditions, "Valid", false, "InvalidSpec", &why);
        set_condition(&mut st.conditions, "Ready", false, "InvalidSpec", &why);
        let changed = write_status(at, ctx, &old, &st).await?;
        if changed {
            publish(ctx, at, EventType::Warning, "InvalidSpec", "Validate", &why).await;
        }
        return Ok(Action::await_change());
    }
    set_condition(&mut st.conditions, "Valid", true, "SpecValid", "");

    if at.spec.cancel
        && st.phase != Phase::Cancelled
        && !matches!(st.phase, Phase::Succeeded | Phase::Failed)
    {
        delete_workload(at, ctx, &workload).await?;
        st.phase = Phase::Cancelled;
        st.finished_at = Some(now_rfc3339());
        st.reason = Some("cancelled".into());
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            "Cancelled",
            "the task was cancelled",
        );
        write_status(at, ctx, &old, &st).await?;
        publish(
            ctx,
            at,
            EventType::Normal,
            "Cancelled",
            "Cancel",
            "workload removed",
        )
        .await;
        return Ok(ttl_action(at, &st));
    }
    if st.phase.is_finished() {
        delete_workload(at, ctx, &workload).await?;
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            st.phase.as_str(),
            "the task finished; workload removed",
        );
        if write_status(at, ctx, &old, &st).await? {
            publish(
                ctx,
                at,
                EventType::Normal,
                st.phase.as_str(),
                "Finish",
                "workload removed",
            )
            .await;
        }
        return ttl_delete(at, ctx, &st).await;
    }

    if let Some(pod) = at.spec.pool_pod.clone() {
        return reconcile_pooled(at, ctx, &old, st, &workload, &pod).await;
    }

    // Credentials come from the orchestrator's Secret.
    let creds = credentials(at, ctx).await?;
    let Some(creds) = creds else {
        let msg = format!("waiting for Secret {}", credentials_secret_name(at));
        set_condition(
            &mut st.conditions,
            "CredentialsReady",
            false,
            "WaitingForCredentials",
            &msg,
        );
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            "WaitingForCredentials",
            &msg,
        );
        write_status(at, ctx, &old, &st).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    set_condition(&mut st.conditions, "CredentialsReady", true, "Found", "");

    let oref = at
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("AgentTask has no uid yet".into()))?;
    let ns = at.namespace().unwrap_or_else(|| ctx.cfg.namespace.clone());
    let pp = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let uid = oref.uid.clone();
    let mut env = env_secret(
        at,
        ctx.cfg.public_orchestrator_url.as_deref(),
        &workload,
        &ns,
        &oref,
        &creds,
    );
    if unchanged(&ctx.secrets, &mut env, &ns, &uid).is_none() {
        Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .patch(&env_secret_name(&workload), &pp, &Patch::Apply(&env))
            .await?;
        ctx.metrics.applies.fetch_add(1, Ordering::Relaxed);
    }
    let mut dep = deployment(at, &workload, &ns, &oref, &ctx.cfg.image_pull_secrets);
    // On the tailnet: the tailscale sidecar (issue 22).
    if let Some(m) =
        crate::mesh_sidecar::pod_parts(at, &credentials_secret_name(at), &ctx.cfg.mesh_sidecar)
    {
        m.apply_to_deployment_json(&mut dep, "agent")?;
    }
    let applied = match unchanged(&ctx.deployments, &mut dep, &ns, &uid) {
        Some(cached) => (*cached).clone(),
        None => {
            ctx.metrics.applies.fetch_add(1, Ordering::Relaxed);
            Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
                .patch(&workload, &pp, &Patch::Apply(&dep))
                .await?
        }
    };
    let mut svc = service(&workload, &ns, &oref);
    if unchanged(&ctx.services, &mut svc, &ns, &uid).is_none() {
        Api::<Service>::namespaced(ctx.client.clone(), &ns)
            .patch(&workload, &pp, &Patch::Apply(&svc))
            .await?;
        ctx.metrics.applies.fetch_add(1, Ordering::Relaxed);
    }

    let available = applied
        .status
        .as_ref()
        .is_some_and(|s| s.available_replicas.unwrap_or(0) >= 1)
        && applied.status.as_ref().and_then(|s| s.observed_generation)
            >= applied.metadata.generation;
    if available {
        st.phase = Phase::Running;
        if st.started_at.is_none() {
            st.started_at = Some(now_rfc3339());
        }
        set_condition(&mut st.conditions, "Ready", true, "DeploymentAvailable", "");
    } else {
        let msg = format!("Deployment {workload} is not available yet");
        set_condition(
            &mut st.conditions,
            "Ready",
            false,
            "DeploymentUnavailable",
            &msg,
        );
    }
    let from = old.phase;
    if write_status(at, ctx, &old, &st).await? && from != st.phase {
        let note = format!("{} -> {}", from.as_str(), st.phase.as_str());
        publish(
            ctx,
            at,
            EventType::Normal,
            st.phase.as_str(),
            "Reconcile",
            &note,
        )
        .await;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// A task a warm pool agent took: its pod becomes the workload (no Deployment, Service or env
/// Secret: the agent got its token and settings from the orchestrator directly).
async fn reconcile_pooled(
    at: &AgentTask,
    ctx: &Context,
    old: &AgentTaskStatus,
    mut st: AgentTaskStatus,
    workload: &str,
    pod: &str,
) -> Result<Action, Error> {
    use crate::pool::{adopt_pool_pod, Adopted};
    let ns = at.namespace().unwrap_or_else(|| ctx.cfg.namespace.clone());
    let adopted = adopt_pool_pod(at, ctx, &ns, workload, pod).await?;
    let requeue = match &adopted {
        Adopted::Running => {
            st.phase = Phase::Running;
            if st.started_at.is_none() {
                st.started_at = Some(now_rfc3339());
            }
            set_condition(&mut st.conditions, "Ready", true, "PoolPodRunning", pod);
            Action::requeue(Duration::from_secs(300))
        }
        Adopted::NotRunning(why) => {
            set_condition(&mut st.conditions, "Ready", false, "PoolPodNotRunning", why);
            Action::requeue(Duration::from_secs(5))
        }
        Adopted::Gone => {
            let msg = format!("pool pod {pod} does not exist");
            set_condition(&mut st.conditions, "Ready", false, "PoolPodGone", &msg);
            Action::requeue(Duration::from_secs(30))
        }
        Adopted::Refused(why) => {
            set_condition(&mut st.conditions, "Valid", false, "InvalidPoolPod", why);
            set_condition(&mut st.conditions, "Ready", false, "InvalidPoolPod", why);
            Action::await_change()
        }
    };
    let from = old.phase;
    if write_status(at, ctx, old, &st).await? && from != st.phase {
        let note = format!(
            "{} -> {} (warm pool pod {pod})",
            from.as_str(),
            st.phase.as_str()
        );
        publish(
            ctx,
            at,
            EventType::Normal,
            st.phase.as_str(),
            "Reconcile",
            &note,
        )
        .await;
    }
    Ok(requeue)
}

/// What the orchestrator's credentials Secret holds for one attempt.
#[derive(Debug, Clone)]
struct Credentials {
    token: String,
    password: String,
    /// The agent's secret environment (`env.<NAME>` keys), as raw bytes.
    secret_env: BTreeMap<String, Vec<u8>>,
}

/// Whether `name` may be copied from the credentials Secret into the pod's environment: a
/// variable name that is not one the operator sets itself.
fn secret_env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !reserved_env().contains(&name)
}

/// Reads the agent token, the code-server password and the secret environment from the
/// credentials Secret.
async fn credentials(at: &AgentTask, ctx: &Context) -> Result<Option<Credentials>, Error> {
    let ns = at.namespace().unwrap_or_else(|| ctx.cfg.namespace.clone());
    let name = credentials_secret_name(at);
    let cached = ctx.secrets.get(&ObjectRef::new(&name).within(&ns));
    let s = match cached {
        Some(s) => (*s).clone(),
        None => match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
        {
            Some(s) => s,
            None => return Ok(None),
        },
    };
    let data = s.data.unwrap_or_default();
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    let Some((token, password)) = get(CREDENTIALS_TOKEN_KEY).zip(get(CREDENTIALS_PASSWORD_KEY))
    else {
        return Ok(None);
    };
    let mut secret_env = BTreeMap::new();
    for (k, v) in &data {
        let Some(name) = k.strip_prefix(crate::backend::SECRET_ENV_KEY_PREFIX) else {
            continue;
        };
        if secret_env_name_ok(name) {
            secret_env.insert(name.to_owned(), v.0.clone());
        } else {
            // The name only, never the value.
            tracing::warn!(agenttask = %at.name_any(), key = %k, "credentials key skipped: not a usable variable name");
        }
    }
    Ok(Some(Credentials {
        token,
        password,
        secret_env,
    }))
}

fn labels(workload: &str) -> Value {
    json!({
        MANAGED_BY.0: MANAGED_BY.1,
        TASK_LABEL: workload,
        "app.kubernetes.io/name": "guildnet-agent",
    })
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn env_secret(
    at: &AgentTask,
    public_orchestrator_url: Option<&str>,
    workload: &str,
    ns: &str,
    oref: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    creds: &Credentials,
) -> Value {
    let url = public_orchestrator_url
        .map(str::to_owned)
        .or_else(|| at.spec.orchestrator_url.clone())
        .unwrap_or_default();
    let mut data = serde_json::Map::new();
    // The secret settings first: the launch contract below always wins.
    for (k, v) in &creds.secret_env {
        data.insert(
            k.clone(),
            base64::engine::general_purpose::STANDARD.encode(v).into(),
        );
    }
    for (k, v) in [
        (agent_env::ORCHESTRATOR_URL, url.as_str()),
        (agent_env::AGENT_TOKEN, creds.token.as_str()),
        (agent_env::TASK_ID, at.spec.task_id.as_str()),
        (agent_env::ORG_NAME, at.spec.org_id.as_str()),
        (agent_env::AGENT_NAME, at.spec.agent_name.as_str()),
        (CODE_SERVER_PASSWORD_ENV, creds.password.as_str()),
    ] {
        data.insert(k.to_owned(), b64(v).into());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": env_secret_name(workload),
            "namespace": ns,
            "labels": labels(workload),
            "ownerReferences": [oref],
        },
        "type": "Opaque",
        "data": data,
    })
}

fn deployment(
    at: &AgentTask,
    workload: &str,
    ns: &str,
    oref: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    image_pull_secrets: &[String],
) -> Value {
    // The agent image's defaults (code-server on :8443, /healthz on :8081); spec.env comes after
    // them and so can override any of these.
    let defaults = [
        ("GUILDNET_CODE_SERVER", "code-server".to_owned()),
        ("GUILDNET_EDITOR_ADDR", format!("0.0.0.0:{EDITOR_PORT}")),
        (
            "GUILDNET_HEALTH_ADDR",
            format!("0.0.0.0:{AGENT_HEALTH_PORT}"),
        ),
        ("GUILDNET_WORKSPACE", "/home/coder/workspace".to_owned()),
        (
            "GUILDNET_STATE_DIR",
            "/home/coder/.guildnet/state".to_owned(),
        ),
    ];
    let env: Vec<Value> = defaults
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .chain(
            at.spec
                .env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v})),
        )
        .collect();
    let resources = at.spec.resources.clone().map_or_else(
        || {
            json!({
                "requests": {"cpu": "250m", "memory": "512Mi"},
                "limits": {"cpu": "2", "memory": "4Gi"},
            })
        },
        |r| serde_json::to_value(r).unwrap_or_else(|_| json!({})),
    );
    let probe = |initial: i32, period: i32, failures: i32| {
        json!({
            "httpGet": {"path": "/healthz", "port": "health"},
            "initialDelaySeconds": initial,
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": workload,
            "namespace": ns,
            "labels": labels(workload),
            "ownerReferences": [oref],
        },
        "spec": {
            "replicas": 1,
            // Never two agents of one task at once, even across attempts.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {TASK_LABEL: workload}},
            "template": {
                "metadata": {
                    "labels": labels(workload),
                    "annotations": {
                        ATTEMPT_ANNOTATION: at.spec.attempt.to_string(),
                    },
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "imagePullSecrets": image_pull_secrets
                        .iter()
                        .map(|n| json!({"name": n}))
                        .collect::<Vec<_>>(),
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "agent",
                        "image": at.spec.image,
                        "ports": [
                            {"name": "editor", "containerPort": EDITOR_PORT},
                            {"name": "health", "containerPort": AGENT_HEALTH_PORT},
                        ],
                        "envFrom": [{"secretRef": {"name": env_secret_name(workload)}}],
                        "env": env,
                        "readinessProbe": probe(2, 5, 3),
                        "livenessProbe": probe(15, 10, 6),
                        "resources": resources,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    })
}

fn service(
    workload: &str,
    ns: &str,
    oref: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": workload,
            "namespace": ns,
            "labels": labels(workload),
            "ownerReferences": [oref],
        },
        "spec": {
            "selector": {TASK_LABEL: workload},
            "ports": [{"name": "editor", "port": EDITOR_PORT, "targetPort": "editor"}],
        },
    })
}

async fn delete_workload(at: &AgentTask, ctx: &Context, workload: &str) -> Result<(), Error> {
    let ns = at.namespace().unwrap_or_else(|| ctx.cfg.namespace.clone());
    let dp = DeleteParams::background();
    let c = &ctx.client;
    ignore_404(
        Api::<Deployment>::namespaced(c.clone(), &ns)
            .delete(workload, &dp)
            .await,
    )?;
    ignore_404(
        Api::<Service>::namespaced(c.clone(), &ns)
            .delete(workload, &dp)
            .await,
    )?;
    let secrets = Api::<Secret>::namespaced(c.clone(), &ns);
    ignore_404(secrets.delete(&env_secret_name(workload), &dp).await)?;
    // The agent token is worthless once the task is over; do not leave it lying around.
    ignore_404(secrets.delete(&credentials_secret_name(at), &dp).await)?;
    // A warm pool agent's pod that took the task goes with it (it never takes another).
    if let Some(pod) = &at.spec.pool_pod {
        ignore_404(
            Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns)
                .delete(pod, &dp)
                .await,
        )?;
    }
    Ok(())
}

pub(crate) fn ignore_404<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn finished_at(st: &AgentTaskStatus) -> Option<DateTime<Utc>> {
    st.finished_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn ttl_action(at: &AgentTask, st: &AgentTaskStatus) -> Action {
    match (at.spec.ttl_seconds_after_finished, finished_at(st)) {
        (Some(ttl), Some(done)) => {
            let due = done + chrono::Duration::seconds(ttl.max(0));
            let left = (due - Utc::now()).to_std().unwrap_or_default();
            Action::requeue(left.max(Duration::from_millis(200)))
        }
        _ => Action::await_change(),
    }
}

async fn ttl_delete(at: &AgentTask, ctx: &Context, st: &AgentTaskStatus) -> Result<Action, Error> {
    let (Some(ttl), Some(done)) = (at.spec.ttl_seconds_after_finished, finished_at(st)) else {
        return Ok(Action::await_change());
    };
    if Utc::now() < done + chrono::Duration::seconds(ttl.max(0)) {
        return Ok(ttl_action(at, st));
    }
    let ns = at.namespace().unwrap_or_else(|| ctx.cfg.namespace.clone());
    let mut dp = DeleteParams::background();
    dp.preconditions = Some(kube::api::Preconditions {
        uid: at.uid(),
        resource_version: None,
    });
    ignore_404(
        Api::<AgentTask>::namespaced(ctx.client.clone(), &ns)
            .delete(&at.name_any(), &dp)
            .await,
    )?;
    publish(
        ctx,
        at,
        EventType::Normal,
        "Expired",
        "Delete",
        "TTL after finish reached",
    )
    .await;
    Ok(Action::await_change())
}

/// Writes the status if it changed, guarded by the resourceVersion that was read. Returns
/// whether a write happened.
async fn write_status(
    at: &AgentTask,
    ctx: &Context,
    old: &AgentTaskStatus,
    new: &AgentTaskStatus,
) -> Result<bool, Error> {
    if old == new && at.status.is_some() {
        return Ok(false);
    }
    let ns = at.namespace().unwrap_or_else(|| ctx.cfg.namespace.clone());
    // A full replace of the status subresource: fields that became empty are cleared, and the
    // resourceVersion in the object makes a concurrent write fail with 409 instead of losing it.
    let mut obj = at.clone();
    obj.status = Some(new.clone());
    Api::<AgentTask>::namespaced(ctx.client.clone(), &ns)
        .replace_status(&at.name_any(), &kube::api::PostParams::default(), &obj)
        .await?;
    ctx.metrics.status_writes.fetch_add(1, Ordering::Relaxed);
    Ok(true)
}

async fn publish(
    ctx: &Context,
    at: &AgentTask,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: (!note.is_empty()).then(|| note.to_owned()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &at.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish event");
    }
}

/// Serves `/metrics` (Prometheus text) and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    guildnet_core::http_server::serve(
        listener,
        app,
        &guildnet_core::http_server::ServerOptions::default(),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AgentTaskSpec;

    fn at(env: &[(&str, &str)]) -> AgentTask {
        let mut spec: AgentTaskSpec = serde_json::from_value(json!({
            "orgId": "acme", "taskId": "t1", "task": "x", "image": "img:1", "agentName": "t1-a1",
        }))
        .expect("spec");
        spec.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentTask::new("atask-t1", spec)
    }

    #[test]
    fn validation_names_the_field_and_the_reason() {
        assert_eq!(validate(&at(&[("LEVEL", "3")])), Ok(()));
        let e = validate(&at(&[("1BAD", "x")])).expect_err("digit first");
        assert!(e.starts_with("spec.env.1BAD"), "{e}");
        let e = validate(&at(&[("TASK_ID", "x")])).expect_err("reserved");
        assert!(e.contains("reserved"), "{e}");
        let mut bad = at(&[]);
        bad.spec.org_id = "Not_A_Label".into();
        assert!(validate(&bad).expect_err("org").starts_with("spec.orgId"));
        bad = at(&[]);
        bad.spec.image = " ".into();
        assert!(validate(&bad).expect_err("image").starts_with("spec.image"));
        bad = at(&[]);
        bad.spec.attempt = 0;
        assert!(validate(&bad)
            .expect_err("attempt")
            .starts_with("spec.attempt"));
    }

    #[test]
    fn spec_hash_is_stable_and_sees_changes() {
        let a = json!({"metadata": {"name": "x"}, "spec": {"replicas": 1}});
        let b = json!({"metadata": {"name": "x"}, "spec": {"replicas": 2}});
        assert_eq!(spec_hash(&a), spec_hash(&a.clone()));
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }

    #[test]
    fn conditions_keep_their_transition_time_until_the_status_flips() {
        let mut conds = Vec::new();
        set_condition(&mut conds, "Ready", false, "Waiting", "m1");
        let t0 = conds[0].last_transition_time.clone();
        set_condition(&mut conds, "Ready", false, "StillWaiting", "m2");
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t0);
        assert_eq!(conds[0].reason, "StillWaiting");
        set_condition(&mut conds, "Ready", true, "Available", "");
        assert_eq!(conds[0].status, "True");
    }

    #[test]
    fn the_env_secret_carries_the_secret_settings_and_the_contract_wins() {
        let mut t = at(&[]);
        t.metadata.uid = Some("uid-1".into());
        let oref = t.controller_owner_ref(&()).expect("owner ref");
        let creds = Credentials {
            token: "tok".into(),
            password: "pw".into(),
            secret_env: [
                ("GUILDNET_FORGE_TOKEN".to_owned(), b"forge-secret".to_vec()),
                ("OPENAI_API_KEY".to_owned(), b"sk-1".to_vec()),
            ]
            .into_iter()
            .collect(),
        };
        let s = env_secret(&t, Some("http://o:1"), "atask-t1", "ns", &oref, &creds);
        let get = |k: &str| {
            let v = s["data"][k].as_str().unwrap_or_default();
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .expect("base64"),
            )
            .expect("utf8")
        };
        assert_eq!(get("GUILDNET_FORGE_TOKEN"), "forge-secret");
        assert_eq!(get("OPENAI_API_KEY"), "sk-1");
        assert_eq!(get("GUILDNET_AGENT_TOKEN"), "tok");
        assert_eq!(get("ORCHESTRATOR_URL"), "http://o:1");
        // Names the operator sets itself are never taken from the credentials.
        assert!(!secret_env_name_ok("GUILDNET_AGENT_TOKEN"));
        assert!(!secret_env_name_ok("1X"));
        assert!(!secret_env_name_ok("A-B"));
        assert!(secret_env_name_ok("ANTHROPIC_API_KEY"));
    }

    #[test]
    fn children_are_owned_hardened_and_named_after_the_agenttask() {
        let mut t = at(&[]);
        t.metadata.uid = Some("uid-1".into());
        let oref = t.controller_owner_ref(&()).expect("owner ref");
        let d = deployment(&t, "atask-t1", "ns", &oref, &["regcred".to_owned()]);
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "atask-t1-env");
        let s = service("atask-t1", "ns", &oref);
        assert_eq!(s["spec"]["ports"][0]["port"], EDITOR_PORT);
    }

    #[test]
    fn a_mesh_task_gets_the_tailscale_sidecar_and_the_pod_stays_hardened() {
        let mut t = at(&[]);
        t.metadata.uid = Some("uid-1".into());
        let oref = t.controller_owner_ref(&()).expect("owner ref");
        let plain = deployment(&t, "atask-t1", "ns", &oref, &[]);
        assert!(crate::mesh_sidecar::pod_parts(&t, "c", &Default::default()).is_none());
        assert!(plain["spec"]["template"]["spec"]["initContainers"].is_null());
        t.spec.mesh = Some(crate::crd::AgentMeshSpec {
            login_server: "http://100.64.0.9:8080".into(),
            hostname: "t1-a1".into(),
            orchestrator_url: Some("http://100.64.0.1:8080".into()),
        });
        assert_eq!(validate(&t), Ok(()));
        let mut d = deployment(&t, "atask-t1", "ns", &oref, &[]);
        crate::mesh_sidecar::pod_parts(&t, &credentials_secret_name(&t), &Default::default())
            .expect("parts")
            .apply_to_deployment_json(&mut d, "agent")
            .expect("apply");
        let pod = &d["spec"]["template"]["spec"];
        // What the operator had built is still there.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["automountServiceAccountToken"], false);
        let agent = &pod["containers"][0];
        assert_eq!(agent["name"], "agent");
        assert_eq!(agent["envFrom"][0]["secretRef"]["name"], "atask-t1-env");
        assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/healthz");
        let env = agent["env"].as_array().expect("env");
        let get = |k: &str| {
            env.iter()
                .find(|e| e["name"] == k)
                .map(|e| e["value"].clone())
        };
        assert_eq!(get("GUILDNET_EDITOR_ADDR"), Some(json!("0.0.0.0:8443")));
        assert_eq!(get("HTTPS_PROXY"), Some(json!("http://127.0.0.1:1056")));
        assert_eq!(
            get("ORCHESTRATOR_URL"),
            Some(json!("http://100.64.0.1:8080"))
        );
        let side = &pod["initContainers"][0];
        assert_eq!(side["name"], "tailscale");
        assert_eq!(side["restartPolicy"], "Always");
        assert_eq!(side["securityContext"]["privileged"], false);
        assert!(side["securityContext"]["capabilities"]["add"].is_null());
        let key = side["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "TS_AUTHKEY")
            .expect("TS_AUTHKEY");
        assert_eq!(
            key["valueFrom"]["secretKeyRef"]["name"],
            "atask-t1-credentials"
        );
        assert!(key["value"].is_null());
        assert_eq!(pod["volumes"].as_array().map(Vec::len), Some(2));
        t.spec.mesh.as_mut().expect("mesh").hostname = "No Label".into();
        assert!(validate(&t)
            .expect_err("bad")
            .starts_with("spec.mesh.hostname"));
    }
}
