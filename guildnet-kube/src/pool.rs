//! Warm agent pools on Kubernetes: the `AgentPool` resource (one per org, named after it) and
//! its reconciler, which keeps `spec.size` warm agent pods running (bare pods, restart policy
//! Never), replaces the ones that die, scales to zero after `spec.idleSeconds` without a task for
//! the org, and reports pods that cannot pull the pool's image.
//!
//! A warm pod carries only the pool token (from the Secret `spec.tokenSecret`), never a task's
//! token or settings: it waits on the orchestrator's `POST /pool/wait`. When the orchestrator
//! hands it a task, the AgentTask it creates names the pod in `spec.poolPod`, and the AgentTask
//! reconciler *adopts* the pod ([`adopt_pool_pod`]): the pod is relabelled as taken and becomes
//! the AgentTask's (owner reference), which removes it from the pool's count, so the pool
//! creates a replacement. The adopted pod goes with its task's workload when the task ends.

use crate::crd::Condition;
use crate::operator::{Context, AGENT_HEALTH_PORT, OPERATOR_FIELD_MANAGER};
use crate::{AgentTask, Error, EDITOR_PORT, MANAGED_BY, TASK_LABEL};
use chrono::{DateTime, SecondsFormat, Utc};
use guildnet_core::pool::pool_env;
use guildnet_core::seams::env as agent_env;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Label on every pool pod: the org (= the AgentPool's name) it was made for. Kept after adoption.
pub const POOL_LABEL: &str = "guildnet.io/pool";
/// Label on every pool pod: `warm` (waiting, counted by the pool) or `taken` (handed a task).
pub const POOL_STATE_LABEL: &str = "guildnet.io/pool-state";
/// Annotation on the AgentPool: when the orchestrator last set it (RFC 3339); idle time counts
/// from here or from the org's newest AgentTask, whichever is later.
pub const POOL_UPDATED_ANNOTATION: &str = "guildnet.io/pool-updated-at";
/// Key of the pool token in the pool's token Secret.
pub const POOL_TOKEN_KEY: &str = "pool-token";
/// Label on AgentTasks: their org (set by the orchestrator's backend).
pub const ORG_LABEL: &str = "guildnet.io/org";
/// Annotation on each warm pod: a hash of the pool settings it was made from. A warm pod whose
/// hash differs (new image, runner or URL) is replaced.
pub const POOL_HASH_ANNOTATION: &str = "guildnet.io/pool-spec-hash";

/// The hash of the settings that shape a warm pod.
pub fn pod_hash(spec: &AgentPoolSpec, url: &str) -> String {
    use sha2::Digest;
    let key = serde_json::to_vec(&json!([spec.image, spec.runner, url, spec.token_secret]))
        .unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&key)[..8])
}

/// An org's warm agent pool. Created by the orchestrator's Kubernetes backend
/// (`PUT /orgs/{org}/pool`); reconciled by the operator into warm agent pods.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "guildnet.io",
    version = "v1alpha1",
    kind = "AgentPool",
    plural = "agentpools",
    shortname = "apool",
    namespaced,
    status = "AgentPoolStatus",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#,
    printcolumn = r#"{"name":"Warm","type":"integer","jsonPath":".status.warm"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.running"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolSpec {
    /// The org (DNS-1123 label); the AgentPool's name is the org's.
    pub org_id: String,
    /// Warm agents to keep.
    pub size: u32,
    /// Agent image of the pool's pods.
    pub image: String,
    /// The named runner the pool's agents take tasks for (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Scale to zero after this many seconds without a task for the org (never when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<u64>,
    /// URL at which the agents reach the orchestrator (the operator's
    /// PUBLIC_ORCHESTRATOR_URL wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator_url: Option<String>,
    /// Name of the Secret (same namespace) holding `pool-token`.
    pub token_secret: String,
}

/// Observed state of an AgentPool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolStatus {
    /// Warm pods wanted now (0 while scaled to zero).
    #[serde(default)]
    pub desired: u32,
    /// Warm pods that exist (not handed a task).
    #[serde(default)]
    pub warm: u32,
    /// Of those, pods running.
    #[serde(default)]
    pub running: u32,
    /// Scaled to zero after the idle time.
    #[serde(default)]
    pub scaled_to_zero: bool,
    /// Last task or pool change seen (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    /// Conditions (ImageReady).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Checks an AgentPool's spec; the message names the field.
pub fn validate(p: &AgentPool) -> Result<(), String> {
    let s = &p.spec;
    guildnet_core::names::OrgName::new(&s.org_id).map_err(|e| format!("spec.orgId: {e}"))?;
    if p.metadata.name.as_deref() != Some(s.org_id.as_str()) {
        return Err("spec.orgId: must equal the AgentPool's name".into());
    }
    if s.size > guildnet_core::pool::MAX_POOL_SIZE {
        return Err(format!(
            "spec.size: at most {}",
            guildnet_core::pool::MAX_POOL_SIZE
        ));
    }
    if s.image.trim().is_empty() {
        return Err("spec.image: must not be empty".into());
    }
    if s.token_secret.trim().is_empty() {
        return Err("spec.tokenSecret: must not be empty".into());
    }
    Ok(())
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
pub fn image_problem(pod: &Pod) -> Option<String> {
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

/// The pod manifest of one warm agent of `pool`.
pub fn warm_pod(pool: &AgentPool, ns: &str, ctx_url: Option<&str>, pull: &[String]) -> Value {
    let s = &pool.spec;
    let url = ctx_url
        .map(str::to_owned)
        .or_else(|| s.orchestrator_url.clone())
        .unwrap_or_default();
    let oref = pool.controller_owner_ref(&());
    let hash = pod_hash(s, &url);
    let mut env = vec![
        json!({"name": "GUILDNET_CODE_SERVER", "value": "code-server"}),
        json!({"name": "GUILDNET_EDITOR_ADDR", "value": format!("0.0.0.0:{EDITOR_PORT}")}),
        json!({"name": "GUILDNET_HEALTH_ADDR", "value": format!("0.0.0.0:{AGENT_HEALTH_PORT}")}),
        json!({"name": "GUILDNET_WORKSPACE", "value": "/home/coder/workspace"}),
        json!({"name": "GUILDNET_STATE_DIR", "value": "/home/coder/.guildnet/state"}),
        json!({"name": agent_env::ORCHESTRATOR_URL, "value": url}),
        json!({"name": agent_env::ORG_NAME, "value": s.org_id}),
        json!({"name": pool_env::POOL_POD, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": pool_env::POOL_TOKEN, "valueFrom": {"secretKeyRef": {"name": s.token_secret, "key": POOL_TOKEN_KEY}}}),
    ];
    if let Some(r) = &s.runner {
        env.push(json!({"name": pool_env::POOL_RUNNER, "value": r}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("pool-{}-", s.org_id),
            "namespace": ns,
            "labels": {
                MANAGED_BY.0: MANAGED_BY.1,
                POOL_LABEL: s.org_id,
                POOL_STATE_LABEL: "warm",
                "app.kubernetes.io/name": "guildnet-agent",
            },
            "annotations": {POOL_HASH_ANNOTATION: hash},
            "ownerReferences": oref.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            // A used agent exits after its task; it is never restarted in place.
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "imagePullSecrets": pull.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "agent",
                "image": s.image,
                "ports": [
                    {"name": "editor", "containerPort": EDITOR_PORT},
                    {"name": "health", "containerPort": AGENT_HEALTH_PORT},
                ],
                "env": env,
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"cpu": "2", "memory": "4Gi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    })
}

fn set_condition(conds: &mut Vec<Condition>, type_: &str, ok: bool, reason: &str, message: &str) {
    let status = if ok { "True" } else { "False" };
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = rfc3339(Utc::now());
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        return;
    }
    conds.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: rfc3339(Utc::now()),
    });
}

/// Reconciles one AgentPool: warm pods up to the wanted count, dead ones replaced, idle
/// scale-to-zero, image problems reported.
pub async fn reconcile_pool(pool: Arc<AgentPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pool
        .namespace()
        .unwrap_or_else(|| ctx.cfg.namespace.clone());
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
    let dp = DeleteParams::background();
    let mut warm = Vec::new();
    let mut problem = None;
    let url = ctx
        .cfg
        .public_orchestrator_url
        .clone()
        .or_else(|| pool.spec.orchestrator_url.clone())
        .unwrap_or_default();
    let want_hash = pod_hash(&pool.spec, &url);
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if p.annotations().get(POOL_HASH_ANNOTATION) != Some(&want_hash) {
            // Made from older settings (another image, runner or URL): replace it.
            tracing::info!(pod = %p.name_any(), %org, "pool: warm pod outdated; replacing it");
            crate::operator::ignore_404(pods_api.delete(&p.name_any(), &dp).await)?;
            continue;
        }
        if matches!(phase(&p), "Succeeded" | "Failed") {
            // A warm agent that died (or was stopped) without a task: replace it.
            tracing::info!(pod = %p.name_any(), %org, "pool: warm pod ended; replacing it");
            crate::operator::ignore_404(pods_api.delete(&p.name_any(), &dp).await)?;
            continue;
        }
        if problem.is_none() {
            problem = image_problem(&p);
        }
        warm.push(p);
    }
    // Idle time: from the later of the pool's last change and the org's newest task.
    let now = Utc::now();
    let mut last = pool
        .annotations()
        .get(POOL_UPDATED_ANNOTATION)
        .and_then(|t| parse_time(t))
        .or_else(|| pool.creation_timestamp().and_then(|t| from_k8s(&t)))
        .unwrap_or(now);
    let tasks = Api::<AgentTask>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{ORG_LABEL}={org}")))
        .await?
        .items;
    if let Some(newest) = tasks
        .iter()
        .filter_map(|t| t.creation_timestamp().and_then(|c| from_k8s(&c)))
        .max()
    {
        last = last.max(newest);
    }
    let idle_for = (now - last).to_std().unwrap_or_default();
    let idle = pool
        .spec
        .idle_seconds
        .is_some_and(|s| idle_for >= Duration::from_secs(s));
    let desired = if idle { 0 } else { pool.spec.size };
    let have = warm.len() as u32;
    if have < desired {
        let manifest = warm_pod(
            &pool,
            &ns,
            ctx.cfg.public_orchestrator_url.as_deref(),
            &ctx.cfg.image_pull_secrets,
        );
        let pod: Pod = serde_json::from_value(manifest).map_err(|e| Error::Serialize {
            what: "pool pod",
            reason: e.to_string(),
        })?;
        for _ in have..desired {
            pods_api.create(&PostParams::default(), &pod).await?;
        }
        tracing::info!(%org, created = desired - have, "pool: warm pods created");
    } else if have > desired {
        // Surplus: the ones not running yet go first.
        warm.sort_by_key(|p| phase(p) == "Running");
        for p in warm.iter().take((have - desired) as usize) {
            crate::operator::ignore_404(pods_api.delete(&p.name_any(), &dp).await)?;
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
pub enum Adopted {
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
pub async fn adopt_pool_pod(
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
                    crate::backend::AGENT_LABEL: at.spec.agent_name,
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

    fn pool(size: u32) -> AgentPool {
        let mut p = AgentPool::new(
            "acme",
            AgentPoolSpec {
                org_id: "acme".into(),
                size,
                image: "reg/agent:1".into(),
                runner: Some("claude".into()),
                idle_seconds: Some(60),
                orchestrator_url: Some("http://10.0.0.1:8080".into()),
                token_secret: "acme-pool-token".into(),
            },
        );
        p.metadata.uid = Some("uid-1".into());
        p
    }

    #[test]
    fn warm_pods_hold_the_pool_token_and_no_task_credentials() {
        let v = warm_pod(&pool(3), "mvp-agents", None, &["regcred".into()]);
        let env = v["spec"]["containers"][0]["env"].as_array().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"GUILDNET_POOL_TOKEN"));
        for forbidden in [
            "GUILDNET_AGENT_TOKEN",
            "TASK_ID",
            "AGENT_NAME",
            "CODE_SERVER_PASSWORD",
        ] {
            assert!(!names.contains(&forbidden), "{forbidden} in a warm pod");
        }
        let tok = env
            .iter()
            .find(|e| e["name"] == "GUILDNET_POOL_TOKEN")
            .unwrap();
        assert!(
            tok.get("value").is_none(),
            "the token comes from the Secret"
        );
        assert_eq!(tok["valueFrom"]["secretKeyRef"]["name"], "acme-pool-token");
        assert_eq!(v["spec"]["restartPolicy"], "Never");
        assert_eq!(v["spec"]["automountServiceAccountToken"], false);
        assert_eq!(v["metadata"]["labels"][POOL_LABEL], "acme");
        assert_eq!(v["metadata"]["labels"][POOL_STATE_LABEL], "warm");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "AgentPool");
        assert_eq!(v["spec"]["imagePullSecrets"][0]["name"], "regcred");
        let runner = env
            .iter()
            .find(|e| e["name"] == "GUILDNET_POOL_RUNNER")
            .unwrap();
        assert_eq!(runner["value"], "claude");
        // The operator's URL wins over the spec's.
        let v = warm_pod(&pool(1), "ns", Some("http://op:1"), &[]);
        let env = v["spec"]["containers"][0]["env"].as_array().unwrap();
        let url = env
            .iter()
            .find(|e| e["name"] == "ORCHESTRATOR_URL")
            .unwrap();
        assert_eq!(url["value"], "http://op:1");
    }

    #[test]
    fn a_new_image_or_runner_changes_the_pod_hash() {
        let p = pool(3);
        let h = pod_hash(&p.spec, "http://u");
        let v = warm_pod(&p, "ns", Some("http://u"), &[]);
        assert_eq!(
            v["metadata"]["annotations"][POOL_HASH_ANNOTATION],
            h.as_str()
        );
        let mut q = p.clone();
        q.spec.size = 7;
        assert_eq!(
            pod_hash(&q.spec, "http://u"),
            h,
            "size does not reshape a pod"
        );
        q.spec.image = "reg/agent:2".into();
        assert_ne!(pod_hash(&q.spec, "http://u"), h);
        let mut r = p.clone();
        r.spec.runner = None;
        assert_ne!(pod_hash(&r.spec, "http://u"), h);
        assert_ne!(pod_hash(&p.spec, "http://other"), h);
    }

    #[test]
    fn pool_validation_names_the_field() {
        assert!(validate(&pool(3)).is_ok());
        let mut p = pool(101);
        assert!(validate(&p).unwrap_err().starts_with("spec.size"));
        p = pool(1);
        p.spec.org_id = "other".into();
        assert!(validate(&p).unwrap_err().starts_with("spec.orgId"));
        p = pool(1);
        p.spec.image = " ".into();
        assert!(validate(&p).unwrap_err().starts_with("spec.image"));
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
    }
}
