//! The Kubernetes backend's side of warm pools: writes an org's `AgentPool` and its token
//! Secret, removes them, and reads the pool's status for `GET /orgs/{org}/pool`.

use crate::backend::{KubeBackend, ORCHESTRATOR_FIELD_MANAGER};
use crate::pool::{AgentPool, AgentPoolSpec, POOL_TOKEN_KEY, POOL_UPDATED_ANNOTATION};
use crate::MANAGED_BY;
use guildnet_core::names::OrgName;
use guildnet_core::pool::{PoolBackendStatus, PoolSpec};
use guildnet_core::seams::{BackendError, PoolLaunch};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Resource;
use std::collections::BTreeMap;

/// Name of the Secret holding an org's pool token.
pub fn token_secret_name(org: &OrgName) -> String {
    format!("{org}-pool-token")
}

fn err(org: &OrgName, what: &str) -> impl FnOnce(kube::Error) -> BackendError {
    let (org, what) = (org.clone(), what.to_owned());
    move |e| BackendError::OrgUnavailable {
        org,
        reason: format!("{what}: {e}"),
    }
}

pub(crate) async fn set_pool(
    b: &KubeBackend,
    org: &OrgName,
    spec: &PoolSpec,
    launch: PoolLaunch,
) -> Result<(), BackendError> {
    let client = b.client(org).await?;
    b.prepare_namespace(&client)
        .await
        .map_err(err(org, "namespace"))?;
    let ns = &b.cfg.namespace;
    let pp = PatchParams::apply(ORCHESTRATOR_FIELD_MANAGER).force();
    let pool_spec = AgentPoolSpec {
        org_id: org.to_string(),
        size: spec.size,
        image: spec.image.clone().unwrap_or_else(|| b.cfg.image.clone()),
        runner: spec.runner.clone(),
        idle_seconds: spec.idle_seconds,
        orchestrator_url: Some(launch.orchestrator_url.clone()),
        token_secret: token_secret_name(org),
    };
    let mut obj = AgentPool::new(org.as_str(), pool_spec);
    obj.metadata.namespace = Some(ns.clone());
    obj.metadata.labels = Some(BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (crate::crd::ORG_LABEL.to_owned(), org.to_string()),
    ]));
    obj.metadata.annotations = Some(BTreeMap::from([(
        POOL_UPDATED_ANNOTATION.to_owned(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )]));
    let pool = Api::<AgentPool>::namespaced(client.clone(), ns)
        .patch(org.as_str(), &pp, &Patch::Apply(&obj))
        .await
        .map_err(err(org, "apply AgentPool"))?;
    // The token Secret goes with its pool (owner reference).
    let oref = pool.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(token_secret_name(org)),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (crate::pool::POOL_LABEL.to_owned(), org.to_string()),
            ])),
            owner_references: Some(oref.into_iter().collect()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            POOL_TOKEN_KEY.to_owned(),
            ByteString(launch.pool_token.expose().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client, ns)
        .patch(&token_secret_name(org), &pp, &Patch::Apply(&secret))
        .await
        .map_err(err(org, "apply the pool token Secret"))?;
    tracing::info!(%org, size = spec.size, "AgentPool applied");
    Ok(())
}

pub(crate) async fn delete_pool(b: &KubeBackend, org: &OrgName) -> Result<bool, BackendError> {
    let client = b.client(org).await?;
    let ns = &b.cfg.namespace;
    let dp = DeleteParams::background();
    let removed = match Api::<AgentPool>::namespaced(client.clone(), ns)
        .delete(org.as_str(), &dp)
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => return Err(err(org, "delete AgentPool")(e)),
    };
    match Api::<Secret>::namespaced(client, ns)
        .delete(&token_secret_name(org), &dp)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(err(org, "delete the pool token Secret")(e)),
    }
    Ok(removed)
}

pub(crate) async fn pool_status(
    b: &KubeBackend,
    org: &OrgName,
) -> Result<Option<PoolBackendStatus>, BackendError> {
    let client = b.client(org).await?;
    let ns = &b.cfg.namespace;
    let Some(pool) = Api::<AgentPool>::namespaced(client, ns)
        .get_opt(org.as_str())
        .await
        .map_err(err(org, "read AgentPool"))?
    else {
        return Ok(None);
    };
    let st = pool.status.clone().unwrap_or_default();
    Ok(Some(PoolBackendStatus {
        resource: format!("AgentPool {ns}/{org}"),
        spec: Some(PoolSpec {
            size: pool.spec.size,
            image: Some(pool.spec.image.clone()),
            runner: pool.spec.runner.clone(),
            idle_seconds: pool.spec.idle_seconds,
        }),
        desired: st.desired,
        warm: st.warm,
        running: st.running,
        scaled_to_zero: st.scaled_to_zero,
        conditions: st
            .conditions
            .iter()
            .map(|c| {
                let msg = if c.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.message)
                };
                format!("{}={} {}{msg}", c.type_, c.status, c.reason)
            })
            .collect(),
    }))
}
