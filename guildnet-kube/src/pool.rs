//! Warm agent pools on Kubernetes: the `AgentPool` resource (one per org, named after it) and
//! the names the orchestrator's backend and the operator share about it. The operator's pool
//! reconciler keeps `spec.size` warm agent pods running (bare pods, restart policy Never),
//! replaces the ones that die, scales to zero after `spec.idleSeconds` without a task for the
//! org, and reports pods that cannot pull the pool's image; the pods are built by
//! [`crate::operator::manifests::warm_pod`].
//!
//! A warm pod carries only the pool token (from the Secret `spec.tokenSecret`), never a task's
//! token or settings: it waits on the orchestrator's `POST /pool/wait`. When the orchestrator
//! hands it a task, the AgentTask it creates names the pod in `spec.poolPod`, and the AgentTask
//! reconciler *adopts* the pod: the pod is relabelled as taken and becomes
//! the AgentTask's (owner reference), which removes it from the pool's count, so the pool
//! creates a replacement. The adopted pod goes with its task's workload when the task ends.
//!
//! This module owns the type and its names only: no API calls.

use crate::crd::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label on every pool pod: the org (= the AgentPool's name) it was made for. Kept after adoption.
pub const POOL_LABEL: &str = "guildnet.io/pool";
/// Label on every pool pod: `warm` (waiting, counted by the pool) or `taken` (handed a task).
pub const POOL_STATE_LABEL: &str = "guildnet.io/pool-state";
/// Annotation on the AgentPool: when the orchestrator last set it (RFC 3339); idle time counts
/// from here or from the org's newest AgentTask, whichever is later.
pub const POOL_UPDATED_ANNOTATION: &str = "guildnet.io/pool-updated-at";
/// Key of the pool token in the pool's token Secret.
pub const POOL_TOKEN_KEY: &str = "pool-token";
/// Annotation on each warm pod: a hash of the pool settings it was made from. A warm pod whose
/// hash differs (new image, runner or URL) is replaced (see
/// [`crate::operator::manifests::pod_hash`]).
pub const POOL_HASH_ANNOTATION: &str = "guildnet.io/pool-spec-hash";

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
    /// Scale to zero after this many seconds without task activity for the org: counted from
    /// the last task's end, never while one runs (never scales to zero when absent).
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pool(size: u32) -> AgentPool {
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
}
