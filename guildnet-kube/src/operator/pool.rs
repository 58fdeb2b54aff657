//! The AgentPool reconciler: keeps an org's warm agent pods (built by
//! [`super::manifests::warm_pod`]) at the wanted count, replaces dead and outdated ones, scales
//! to zero when idle and reports image pull problems; and the adoption of a warm pod by the
//! AgentTask it was handed. It writes only AgentPool status and pool pods; it must not touch an
//! AgentTask or its other children.

use super::manifests;
use super::reconcile::set_condition;
use super::{ignore_404, Context, Metrics, OPERATOR_FIELD_MANAGER};
use crate::crd::{AgentTask, AGENT_LABEL, ORG_LABEL, TASK_LABEL};
use crate::pool::{
    validate, AgentPool, AgentPoolStatus, POOL_HASH_ANNOTATION, POOL_LABEL, POOL_STATE_LABEL,
    POOL_UPDATED_ANNOTATION,
};
use crate::Error;
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn error_policy(pool: Arc<AgentPool>, err: &Error, ctx: Arc<Context>) -> Action {
    Metrics::inc(&ctx.metrics.reconcile_errors);
    tracing::warn!(agentpool = %pool.name_any(), error = %err, "pool reconcile failed; retrying");
    Action::requeue(ctx.cfg.error_backoff)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn from_k8s(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond())
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Why a pod's agent container cannot start because of its image, if that is the case.
pub(crate) fn image_problem(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref()?;
        matches!(
            reason,
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull"
        )
        .then(|| {
            format!(
                "{}: {reason}: {}",
                pod.name_any(),
                w.message.as_deref().unwrap_or("").trim()
            )
        })
    })
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Reconciles one AgentPool: warm pods up to the wanted count, dead ones replaced, idle
/// scale-to-zero, image problems reported.
pub(super) async fn reconcile_pool(
    pool: Arc<AgentPool>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ctx.namespace_of(pool.as_ref());
    let old = pool.status.clone().unwrap_or_default();
    let mut st = old.clone();
    if let Err(why) = validate(&pool) {
        set_condition(&mut st.conditions, "Valid", false, "InvalidSpec", &why);
        write_pool_status(&pool, &ctx, &ns, &old, &st).await?;
        return Ok(Action::await_change());
    }
    let org = pool.spec.org_id.clone();
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={org},{POOL_STATE_LABEL}=warm")))
        .await?
        .items;
    let tasks = Api::<AgentTask>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{ORG_LABEL}={org}")))
        .await?
        .items;
    // Pods handed a task whose AgentTask has not adopted them yet (still labelled warm): they
    // are the task's now, so they are neither counted as warm nor removed by a scale-down.
    let handed = handed_pods(&tasks);
    let dp = DeleteParams::background();
    let mut warm = Vec::new();
    let mut problem = None;
    let url = manifests::orchestrator_url(&ctx.cfg, pool.spec.orchestrator_url.as_deref());
    let want_hash = manifests::pod_hash(&pool.spec, &url);
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() || handed.contains(p.name_any().as_str()) {
            continue;
        }
        if p.annotations().get(POOL_HASH_ANNOTATION) != Some(&want_hash) {
            // Made from older settings (another image, runner or URL): replace it.
            tracing::info!(pod = %p.name_any(), %org, "pool: warm pod outdated; replacing it");
            ignore_404(pods_api.delete(&p.name_any(), &dp).await)?;
            continue;
        }
        if matches!(phase(&p), "Succeeded" | "Failed") {
            // A warm agent that died (or was stopped) without a task: replace it.
            tracing::info!(pod = %p.name_any(), %org, "pool: warm pod ended; replacing it");
            ignore_404(pods_api.delete(&p.name_any(), &dp).await)?;
            continue;
        }
        if problem.is_none() {
            problem = image_problem(&p);
        }
        warm.push(p);
    }
    // Idle time: since the pool's last change or the org's last task activity.
    let now = Utc::now();
    let changed = pool
        .annotations()
        .get(POOL_UPDATED_ANNOTATION)
        .and_then(|t| parse_time(t))
        .or_else(|| pool.creation_timestamp().and_then(|t| from_k8s(&t)))
        .unwrap_or(now);
    let last = last_activity(changed, &tasks, now);
    let idle_for = (now - last).to_std().unwrap_or_default();
    let idle = pool
        .spec
        .idle_seconds
        .is_some_and(|s| idle_for >= Duration::from_secs(s));
    let desired = if idle { 0 } else { pool.spec.size };
    let have = warm.len() as u32;
    if have < desired {
        let pod = manifests::warm_pod(&pool, &ns, &ctx.cfg);
        for _ in have..desired {
            pods_api.create(&PostParams::default(), &pod).await?;
        }
        tracing::info!(%org, created = desired - have, "pool: warm pods created");
    } else if have > desired {
        // Surplus: the ones not running yet go first.
        warm.sort_by_key(|p| phase(p) == "Running");
        for p in warm.iter().take((have - desired) as usize) {
            ignore_404(pods_api.delete(&p.name_any(), &dp).await)?;
        }
        tracing::info!(%org, removed = have - desired, idle, "pool: warm pods removed");
        warm.drain(..(have - desired) as usize);
    }
    st.desired = desired;
    st.warm = warm.len() as u32 + desired.saturating_sub(have);
    st.running = warm.iter().filter(|p| phase(p) == "Running").count() as u32;
    st.scaled_to_zero = idle;
    st.last_activity = Some(rfc3339(last));
    set_condition(&mut st.conditions, "Valid", true, "SpecValid", "");
    match &problem {
        Some(msg) => set_condition(
            &mut st.conditions,
            "ImageReady",
            false,
            "ImagePullFailed",
            &format!(
                "warm pods cannot pull {}; tasks start cold: {msg}",
                pool.spec.image
            ),
        ),
        None => set_condition(&mut st.conditions, "ImageReady", true, "Pulled", ""),
    }
    write_pool_status(&pool, &ctx, &ns, &old, &st).await?;
    // Look again when the idle time runs out, and every 30 s anyway.
    let mut next = Duration::from_secs(30);
    if let Some(s) = pool.spec.idle_seconds.filter(|_| !idle) {
        let left = Duration::from_secs(s).saturating_sub(idle_for);
        next = next.min(left + Duration::from_millis(200));
    }
    Ok(Action::requeue(next))
}

/// When the org was last active: the pool's last change, the newest task's creation, the latest
/// task's end, and `now` while a task is unfinished. A pool woken by a task therefore stays up
/// for its whole idle time after that task ends, not after it was created.
pub(crate) fn last_activity(
    changed: DateTime<Utc>,
    tasks: &[AgentTask],
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    tasks.iter().fold(changed, |last, t| {
        let created = t.creation_timestamp().and_then(|c| from_k8s(&c));
        let status = t.status.as_ref();
        let ended = match status.filter(|s| s.phase.is_finished()) {
            Some(s) => s.finished_at.as_deref().and_then(parse_time).or(created),
            None => Some(now),
        };
        last.max(created.unwrap_or(last)).max(ended.unwrap_or(last))
    })
}

/// The pool pods named by AgentTasks (`spec.poolPod`): handed a task, so no longer warm even
/// before the AgentTask's reconcile relabels them as taken.
pub(crate) fn handed_pods(tasks: &[AgentTask]) -> HashSet<&str> {
    tasks
        .iter()
        .filter_map(|t| t.spec.pool_pod.as_deref())
        .collect()
}

async fn write_pool_status(
    pool: &AgentPool,
    ctx: &Context,
    ns: &str,
    old: &AgentPoolStatus,
    new: &AgentPoolStatus,
) -> Result<(), Error> {
    if old == new && pool.status.is_some() {
        return Ok(());
    }
    Api::<AgentPool>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &pool.name_any(),
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "guildnet.io/v1alpha1",
                "kind": "AgentPool",
                "status": new,
            })),
        )
        .await?;
    Ok(())
}

/// What happened to a pooled AgentTask's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Adopted {
    /// The pod is the task's and runs.
    Running,
    /// The pod is the task's and not running (yet, or any more).
    NotRunning(String),
    /// No such pod.
    Gone,
    /// The pod is not a pool pod of the task's org: left alone.
    Refused(String),
}

/// Makes the warm pod `pod` the AgentTask's: labelled as taken (so its pool replaces it) and as
/// the task's workload, owned by the AgentTask. Idempotent.
pub(super) async fn adopt_pool_pod(
    at: &AgentTask,
    ctx: &Context,
    ns: &str,
    workload: &str,
    pod: &str,
) -> Result<Adopted, Error> {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let Some(p) = api.get_opt(pod).await? else {
        return Ok(Adopted::Gone);
    };
    if p.labels().get(POOL_LABEL) != Some(&at.spec.org_id) {
        return Ok(Adopted::Refused(format!(
            "pod {pod} is not a pool pod of org {}",
            at.spec.org_id
        )));
    }
    let owned = p
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == at.meta().uid.as_ref());
    let labelled = p.labels().get(TASK_LABEL).map(String::as_str) == Some(workload)
        && p.labels().get(POOL_STATE_LABEL).map(String::as_str) == Some("taken");
    let p = if owned && labelled {
        p
    } else {
        let oref = at
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Invalid("AgentTask has no uid yet".into()))?;
        let patch = json!({
            "metadata": {
                "labels": {
                    TASK_LABEL: workload,
                    POOL_STATE_LABEL: "taken",
                    AGENT_LABEL: at.spec.agent_name,
                },
                "ownerReferences": [oref],
            }
        });
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await?
    };
    Ok(match phase(&p) {
        "Running" => Adopted::Running,
        other => Adopted::NotRunning(format!("pod {pod} is {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_named_by_agenttasks_are_handed_not_warm() {
        let at = |name: &str, pool_pod: Option<&str>| {
            let spec: crate::crd::AgentTaskSpec = serde_json::from_value(json!({
                "orgId": "acme", "taskId": name, "task": "x", "image": "img:1",
                "poolPod": pool_pod,
            }))
            .unwrap();
            AgentTask::new(name, spec)
        };
        let tasks = vec![
            at("t1", Some("pool-acme-a")),
            at("t2", None),
            at("t3", Some("pool-acme-c")),
        ];
        let handed = handed_pods(&tasks);
        assert_eq!(handed, HashSet::from(["pool-acme-a", "pool-acme-c"]));
        assert!(handed_pods(&[]).is_empty());
    }

    #[test]
    fn activity_runs_until_the_last_task_ends() {
        let t0 = parse_time("2026-12-03T10:00:00Z").unwrap();
        let at = |created: &str, phase: &str, finished: Option<&str>| {
            serde_json::from_value::<AgentTask>(json!({
                "apiVersion": "guildnet.io/v1alpha1", "kind": "AgentTask",
                "metadata": {"name": "t", "creationTimestamp": created},
                "spec": {"orgId": "acme", "taskId": "t", "task": "x", "image": "img:1"},
                "status": {"phase": phase, "finishedAt": finished},
            }))
            .unwrap()
        };
        let now = t0 + chrono::Duration::seconds(100);
        // No task: the pool's last change.
        assert_eq!(last_activity(t0, &[], now), t0);
        // A task created later and finished later still: its end counts, not its creation.
        let done = at(
            "2026-12-03T10:00:10Z",
            "Succeeded",
            Some("2026-12-03T10:00:40Z"),
        );
        assert_eq!(
            last_activity(t0, std::slice::from_ref(&done), now),
            t0 + chrono::Duration::seconds(40)
        );
        // An unfinished task keeps the org active now, whenever it was created.
        let running = at("2026-12-03T09:00:00Z", "Running", None);
        assert_eq!(last_activity(t0, &[done, running], now), now);
        // A finished task without an end time counts from its creation.
        let old = at("2026-12-03T10:00:20Z", "Failed", None);
        assert_eq!(
            last_activity(t0, &[old], now),
            t0 + chrono::Duration::seconds(20)
        );
        // Nothing moves activity back before the pool's last change.
        let stale = at(
            "2026-12-03T09:00:00Z",
            "Cancelled",
            Some("2026-12-03T09:00:01Z"),
        );
        assert_eq!(last_activity(t0, &[stale], now), t0);
    }

    #[test]
    fn image_pull_failures_are_recognised() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "pool-acme-x"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "agent", "image": "nope", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
            }]}
        }))
        .unwrap();
        let msg = image_problem(&pod).unwrap();
        assert!(
            msg.contains("ImagePullBackOff") && msg.contains("pool-acme-x"),
            "{msg}"
        );
        let running: Pod = serde_json::from_value(json!({
            "metadata": {"name": "pool-acme-y"},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        assert_eq!(image_problem(&running), None);
    }
}
