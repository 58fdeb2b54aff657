//! The AgentTask reconciler: validates the spec, reads the credentials, applies the children
//! built by [`super::manifests`] (skipping those the watch cache shows unchanged), derives the
//! phase and conditions, and handles cancel, finish and the TTL. It writes only the AgentTask's
//! status and its own children; task state (Succeeded, Failed) is the orchestrator's to write.

use super::manifests::{self, env_secret_name, Credentials, SPEC_HASH_ANNOTATION};
use super::{ignore_404, Context, Metrics, OPERATOR_FIELD_MANAGER};
use crate::crd::{
    credentials_secret_name, AgentTask, AgentTaskStatus, Condition, Phase, AGENT_LABEL,
    CREDENTIALS_PASSWORD_KEY, CREDENTIALS_TOKEN_KEY, SECRET_ENV_KEY_PREFIX,
};
use crate::Error;
use chrono::{DateTime, SecondsFormat, Utc};
use guildnet_core::agent_env;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Adds the spec-hash annotation to `desired`; returns the cached object when it already
/// carries the same hash and belongs to the same owner (then the apply can be skipped).
fn unchanged<K>(store: &Store<K>, desired: &mut K, ns: &str, owner_uid: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
{
    let hash = manifests::spec_hash(desired);
    let name = desired.meta().name.clone().unwrap_or_default();
    desired.meta_mut().annotations = Some(BTreeMap::from([(
        SPEC_HASH_ANNOTATION.to_owned(),
        hash.clone(),
    )]));
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

pub(super) fn error_policy(obj: Arc<AgentTask>, err: &Error, ctx: Arc<Context>) -> Action {
    Metrics::inc(&ctx.metrics.reconcile_errors);
    let delay = ctx.failed(&obj.name_any());
    tracing::warn!(agenttask = %obj.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub(super) fn now_rfc3339() -> String {
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
    if let Some(m) = &s.mesh {
        crate::mesh_sidecar::validate(m)?;
    }
    if !s.agent_name.is_empty() {
        AgentName::new(&s.agent_name).map_err(|e| format!("spec.agentName: {e}"))?;
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
        if agent_env::OPERATOR_SET.contains(&k.as_str()) {
            return Err(format!(
                "spec.env.{k}: reserved for GuildNet (set by the operator)"
            ));
        }
    }
    Ok(())
}

pub(super) fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) {
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

pub(super) async fn reconcile(at: Arc<AgentTask>, ctx: Arc<Context>) -> Result<Action, Error> {
    Metrics::inc(&ctx.metrics.reconciles);
    let action = reconcile_inner(&at, &ctx).await?;
    ctx.succeeded(&at.name_any());
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
    let ns = ctx.namespace_of(at);
    let pp = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let uid = oref.uid.clone();
    let mut env = manifests::env_secret(at, &ctx.cfg, &workload, &ns, &oref, &creds);
    if unchanged(&ctx.caches.secrets, &mut env, &ns, &uid).is_none() {
        Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .patch(&env_secret_name(&workload), &pp, &Patch::Apply(&env))
            .await?;
        Metrics::inc(&ctx.metrics.applies);
    }
    let mut dep = manifests::deployment(at, &workload, &ns, &oref, &ctx.cfg);
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let applied = match unchanged(&ctx.caches.deployments, &mut dep, &ns, &uid) {
        Some(cached) if deployment_available(&cached) => (*cached).clone(),
        Some(cached) => fresh_deployment(&deployments, &workload, cached).await?,
        None => {
            Metrics::inc(&ctx.metrics.applies);
            deployments
                .patch(&workload, &pp, &Patch::Apply(&dep))
                .await?
        }
    };
    let mut svc = manifests::service(&workload, &ns, &oref);
    if unchanged(&ctx.caches.services, &mut svc, &ns, &uid).is_none() {
        Api::<Service>::namespaced(ctx.client.clone(), &ns)
            .patch(&workload, &pp, &Patch::Apply(&svc))
            .await?;
        Metrics::inc(&ctx.metrics.applies);
    }

    let available = deployment_available(&applied);
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
    Ok(Action::requeue(if available {
        RUNNING_RESYNC
    } else {
        NOT_AVAILABLE_RESYNC
    }))
}

/// How often a Running task's AgentTask is reconciled without an event.
const RUNNING_RESYNC: Duration = Duration::from_secs(300);

/// How often a task whose Deployment is not available yet is reconciled without an event: the
/// Deployment's events should come first, this is the backstop for one that was missed.
const NOT_AVAILABLE_RESYNC: Duration = Duration::from_secs(30);

/// Whether the Deployment has an available replica for its current generation.
fn deployment_available(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .is_some_and(|s| s.available_replicas.unwrap_or(0) >= 1)
        && d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation
}

/// The Deployment as the API server has it now, when the watch cache shows it not available.
///
/// The cache is fed by its own watch, apart from the controller's watch of the Deployments that
/// triggers reconciles: the event that triggered this reconcile (the Deployment became
/// available) may not be in the cache yet. Deciding on the cache then would leave the task
/// Pending, with nothing changed to write and no event to come, until the next resync.
/// Only Deployments not available yet are read again; gone since: the cached one.
async fn fresh_deployment(
    api: &Api<Deployment>,
    name: &str,
    cached: Arc<Deployment>,
) -> Result<Deployment, Error> {
    let Some(fresh) = api.get_opt(name).await? else {
        return Ok((*cached).clone());
    };
    if deployment_available(&fresh) {
        tracing::debug!(
            deployment = name,
            cached_rv = cached.metadata.resource_version.as_deref().unwrap_or(""),
            fresh_rv = fresh.metadata.resource_version.as_deref().unwrap_or(""),
            "the watch cache was behind: the Deployment is available"
        );
    }
    Ok(fresh)
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
    use super::pool::{adopt_pool_pod, Adopted};
    let ns = ctx.namespace_of(at);
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

/// Whether `name` may be copied from the credentials Secret into the pod's environment: a
/// variable name that is not one the operator sets itself.
fn secret_env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !agent_env::OPERATOR_SET.contains(&name)
}

/// Reads the agent token, the code-server password and the secret environment from the
/// credentials Secret.
async fn credentials(at: &AgentTask, ctx: &Context) -> Result<Option<Credentials>, Error> {
    let ns = ctx.namespace_of(at);
    let name = credentials_secret_name(at);
    let cached = ctx.caches.secrets.get(&ObjectRef::new(&name).within(&ns));
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
        let Some(name) = k.strip_prefix(SECRET_ENV_KEY_PREFIX) else {
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

async fn delete_workload(at: &AgentTask, ctx: &Context, workload: &str) -> Result<(), Error> {
    let ns = ctx.namespace_of(at);
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
    // The agent token is worthless once the task is over; do not leave it lying around. Only
    // this attempt's: after a requeue the orchestrator cancels the old attempt and at once
    // applies the next one's credentials under the same name, and a reconcile of the cancel
    // (from a view of the AgentTask that is already old) must not delete them.
    delete_own_credentials(at, &secrets).await?;
    // A warm pool agent's pod that took the task goes with it (it never takes another).
    if let Some(pod) = &at.spec.pool_pod {
        ignore_404(
            Api::<Pod>::namespaced(c.clone(), &ns)
                .delete(pod, &dp)
                .await,
        )?;
    }
    Ok(())
}

/// Deletes the credentials Secret of `at` if it is the one of `at`'s attempt (labelled with its
/// agent, or unlabelled), and only the version looked at (a precondition on its
/// resourceVersion: a Secret replaced meanwhile by the next attempt's stays).
async fn delete_own_credentials(at: &AgentTask, secrets: &Api<Secret>) -> Result<(), Error> {
    let name = credentials_secret_name(at);
    let Some(s) = secrets.get_opt(&name).await? else {
        return Ok(());
    };
    if !credentials_of_attempt(&s, &at.spec.agent_name) {
        tracing::debug!(secret = %name, agent = %at.spec.agent_name, "credentials of another attempt kept");
        return Ok(());
    }
    let mut dp = DeleteParams::background();
    dp.preconditions = Some(kube::api::Preconditions {
        resource_version: s.metadata.resource_version.clone(),
        uid: s.metadata.uid.clone(),
    });
    match secrets.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        // Gone, or changed since we looked (the next attempt's): nothing of ours to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a credentials Secret belongs to the attempt of `agent` (an unlabelled one, from
/// before attempts were labelled, counts as the current attempt's).
pub(crate) fn credentials_of_attempt(s: &Secret, agent: &str) -> bool {
    s.labels()
        .get(AGENT_LABEL)
        .is_none_or(|a| agent.is_empty() || a == agent)
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
    let ns = ctx.namespace_of(at);
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
    let ns = ctx.namespace_of(at);
    // A full replace of the status subresource: fields that became empty are cleared, and the
    // resourceVersion in the object makes a concurrent write fail with 409 instead of losing it.
    let mut obj = at.clone();
    obj.status = Some(new.clone());
    Api::<AgentTask>::namespaced(ctx.client.clone(), &ns)
        .replace_status(&at.name_any(), &kube::api::PostParams::default(), &obj)
        .await?;
    Metrics::inc(&ctx.metrics.status_writes);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_attempts_credentials_are_deleted() {
        let secret = |agent: Option<&str>| {
            let mut s = Secret::default();
            if let Some(a) = agent {
                s.metadata.labels = Some(BTreeMap::from([(AGENT_LABEL.to_owned(), a.to_owned())]));
            }
            s
        };
        assert!(credentials_of_attempt(
            &secret(Some("agent-x-1")),
            "agent-x-1"
        ));
        assert!(!credentials_of_attempt(
            &secret(Some("agent-x-2")),
            "agent-x-1"
        ));
        assert!(credentials_of_attempt(&secret(None), "agent-x-1"));
    }
    use crate::crd::AgentTaskSpec;

    fn at(env: &[(&str, &str)]) -> AgentTask {
        let mut spec: AgentTaskSpec = serde_json::from_value(serde_json::json!({
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
        let e = validate(&at(&[("CODE_SERVER_PASSWORD", "x")])).expect_err("reserved");
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
    fn only_usable_names_not_set_by_the_operator_come_from_the_credentials() {
        assert!(!secret_env_name_ok("GUILDNET_AGENT_TOKEN"));
        assert!(!secret_env_name_ok("CODE_SERVER_PASSWORD"));
        assert!(!secret_env_name_ok("1X"));
        assert!(!secret_env_name_ok("A-B"));
        assert!(!secret_env_name_ok(""));
        assert!(secret_env_name_ok("ANTHROPIC_API_KEY"));
        assert!(secret_env_name_ok("GUILDNET_FORGE_TOKEN"));
    }

    #[test]
    fn an_unchanged_child_is_recognised_by_hash_and_owner() {
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;
        let mut t = at(&[]);
        t.metadata.uid = Some("uid-1".into());
        let oref = t.controller_owner_ref(&()).expect("owner ref");
        let cfg = super::super::OperatorConfig::new("ns");
        let mut w: Writer<Deployment> = Writer::default();
        let store = w.as_reader();
        let mut desired = manifests::deployment(&t, "atask-t1", "ns", &oref, &cfg);
        // Not cached yet: apply.
        assert!(unchanged(&store, &mut desired, "ns", "uid-1").is_none());
        let hash =
            desired.metadata.annotations.as_ref().expect("annotated")[SPEC_HASH_ANNOTATION].clone();
        w.apply_watcher_event(&Event::Apply(desired.clone()));
        let mut again = manifests::deployment(&t, "atask-t1", "ns", &oref, &cfg);
        assert!(unchanged(&store, &mut again, "ns", "uid-1").is_some());
        // Another owner, or another spec: apply.
        let mut again = manifests::deployment(&t, "atask-t1", "ns", &oref, &cfg);
        assert!(unchanged(&store, &mut again, "ns", "uid-2").is_none());
        t.spec.attempt = 2;
        let mut changed = manifests::deployment(&t, "atask-t1", "ns", &oref, &cfg);
        assert!(unchanged(&store, &mut changed, "ns", "uid-1").is_none());
        assert_ne!(
            changed.metadata.annotations.expect("annotated")[SPEC_HASH_ANNOTATION],
            hash
        );
    }

    /// The watch cache that skips applies lags the controller's own watch of the Deployments:
    /// a reconcile triggered by the Deployment becoming available can see the cache's older,
    /// unavailable copy. It must still mark the task Running (it used to leave it Pending with
    /// nothing to write and wait the 300 s resync: the CI flake of kube_mesh_e2e).
    #[tokio::test]
    async fn a_cache_behind_the_api_server_does_not_keep_the_task_pending() {
        use kube::api::PostParams;
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;
        let cluster = guildnet_testbed::kube::KubeCluster::start()
            .await
            .expect("control plane (no controllers: the test writes the Deployment status)");
        let client = cluster.client().await.expect("client");
        crate::install::install_crd(&client).await.expect("CRDs");
        let ns = "cache-lag";
        let pp = PatchParams::apply("test").force();
        let namespace =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(ns, &pp, &Patch::Apply(&namespace))
            .await
            .expect("namespace");
        let tasks = Api::<AgentTask>::namespaced(client.clone(), ns);
        let mut task = at(&[]);
        task.metadata.namespace = Some(ns.into());
        let task = tasks
            .create(&PostParams::default(), &task)
            .await
            .expect("AgentTask");
        let creds = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": credentials_secret_name(&task), "namespace": ns},
            "stringData": {CREDENTIALS_TOKEN_KEY: "gnt.t1.0011", CREDENTIALS_PASSWORD_KEY: "pw"},
        });
        Api::<Secret>::namespaced(client.clone(), ns)
            .patch(&credentials_secret_name(&task), &pp, &Patch::Apply(&creds))
            .await
            .expect("credentials");
        let mut deployments_w: Writer<Deployment> = Writer::default();
        let caches = super::super::Caches {
            deployments: deployments_w.as_reader(),
            services: Writer::<Service>::default().as_reader(),
            secrets: Writer::<Secret>::default().as_reader(),
        };
        let op = super::super::Operator::new(client.clone(), super::super::OperatorConfig::new(ns));
        let ctx = Arc::new(Context::new(&op, caches));
        let phase = |t: &AgentTask| t.status.as_ref().map(|s| s.phase);

        // First reconcile: the Deployment is applied (no controller-manager: never available).
        reconcile(Arc::new(task), ctx.clone())
            .await
            .expect("reconcile");
        let task = tasks.get("atask-t1").await.expect("AgentTask");
        assert_eq!(phase(&task), Some(Phase::Pending));
        let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
        let dep = deployments
            .get("atask-t1")
            .await
            .expect("Deployment applied");
        assert!(!deployment_available(&dep));
        // The cache has that unavailable copy...
        deployments_w.apply_watcher_event(&Event::Apply(dep.clone()));
        // ... while the API server's becomes available (what the deployment controller writes).
        let status = serde_json::json!({"status": {
            "observedGeneration": dep.metadata.generation, "replicas": 1, "readyReplicas": 1,
            "availableReplicas": 1, "updatedReplicas": 1,
        }});
        deployments
            .patch_status("atask-t1", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("Deployment status");

        // The reconcile that event triggers: Running, although the cache is behind.
        reconcile(Arc::new(task), ctx.clone())
            .await
            .expect("reconcile");
        let task = tasks.get("atask-t1").await.expect("AgentTask");
        assert_eq!(
            phase(&task),
            Some(Phase::Running),
            "{:?}",
            task.status.map(|s| s.conditions)
        );
    }
}
