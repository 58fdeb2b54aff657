//! Optional leader election over a `coordination.k8s.io/v1` Lease, so several operator replicas
//! can run and only one reconciles. The holder renews the lease; another replica takes it over
//! once it has not been renewed for the lease duration. Writes carry the resourceVersion read,
//! so two replicas can never both believe they acquired it.

use crate::Error;
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (its pod name, say).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and others retry).
    pub retry_every: Duration,
}

impl LeaseConfig {
    /// Defaults: lease `guildnet-operator`, 15 s duration, renewal every 5 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: "guildnet-operator".into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_every: Duration::from_secs(5),
        }
    }
}

fn micro_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn lease_from_json(v: serde_json::Value) -> Result<Lease, Error> {
    serde_json::from_value(v).map_err(|e| Error::Serialize {
        what: "lease",
        reason: e.to_string(),
    })
}

/// When the lease was last renewed and by whom.
fn holder(lease: &Lease) -> (Option<String>, Option<DateTime<Utc>>, i64) {
    let spec = serde_json::to_value(&lease.spec).unwrap_or_default();
    let who = spec["holderIdentity"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let renewed = spec["renewTime"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
    (who, renewed, transitions)
}

/// Tries once to acquire or renew the lease. Returns whether this replica holds it now.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, Error> {
    let secs = cfg.lease_duration.as_secs() as i64;
    let Some(current) = api.get_opt(&cfg.name).await? else {
        let lease = lease_from_json(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": secs,
                     "acquireTime": micro_now(), "renewTime": micro_now(), "leaseTransitions": 0},
        }))?;
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let (who, renewed, transitions) = holder(&current);
    let mine = who.as_deref() == Some(cfg.identity.as_str());
    let expired = renewed
        .map(|r| Utc::now() - r > chrono::Duration::seconds(secs))
        .unwrap_or(true);
    if !mine && who.is_some() && !expired {
        return Ok(false);
    }
    let mut spec = serde_json::to_value(&current.spec).unwrap_or_else(|_| json!({}));
    spec["holderIdentity"] = json!(cfg.identity);
    spec["leaseDurationSeconds"] = json!(secs);
    spec["renewTime"] = json!(micro_now());
    if !mine {
        spec["acquireTime"] = json!(micro_now());
        spec["leaseTransitions"] = json!(transitions + 1);
    }
    let lease = lease_from_json(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                     "resourceVersion": current.resource_version()},
        "spec": spec,
    }))?;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) {
    loop {
        match try_acquire(api, cfg).await {
            Ok(true) => {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                return;
            }
            Ok(false) => tracing::debug!(lease = %cfg.name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(cfg.retry_every).await;
    }
}

/// Renews the lease until it is lost (another replica took it, or renewal failed for longer
/// than the lease duration); then returns.
pub async fn hold(api: &Api<Lease>, cfg: &LeaseConfig) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.retry_every).await;
        match try_acquire(api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(lease = %cfg.name, "leadership lost to another replica");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if last_ok.elapsed() >= cfg.lease_duration {
                    return;
                }
            }
        }
    }
}

/// Gives the lease up (on graceful shutdown), so another replica need not wait for it to expire.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(current)) = api.get_opt(&cfg.name).await else {
        return;
    };
    if holder(&current).0.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    let mut spec = serde_json::to_value(&current.spec).unwrap_or_else(|_| json!({}));
    spec["holderIdentity"] = json!("");
    let Ok(lease) = lease_from_json(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                     "resourceVersion": current.resource_version()},
        "spec": spec,
    })) else {
        return;
    };
    let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
}
