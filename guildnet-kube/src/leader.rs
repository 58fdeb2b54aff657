//! Optional leader election over a `coordination.k8s.io/v1` Lease, so several operator replicas
//! can run and only one reconciles. The holder renews the lease; another replica takes it over
//! once it has not been renewed for the lease duration. Writes carry the resourceVersion read,
//! so two replicas can never both believe they acquired it.

use crate::Error;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::ResourceExt;
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

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// The Lease `cfg` names with `spec`; `resource_version` makes a replace conditional on it.
fn lease(cfg: &LeaseConfig, resource_version: Option<String>, spec: LeaseSpec) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

/// Who holds the lease (an empty identity is none), when it was last renewed, and how often it
/// changed hands.
fn holder(lease: &Lease) -> (Option<String>, Option<Timestamp>, i32) {
    let spec = lease.spec.as_ref();
    let who = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|s| !s.is_empty());
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    (who, renewed, transitions)
}

/// Tries once to acquire or renew the lease. Returns whether this replica holds it now.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, Error> {
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(current) = api.get_opt(&cfg.name).await? else {
        let now = micro_now();
        let new = lease(
            cfg,
            None,
            LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            },
        );
        return match api.create(&PostParams::default(), &new).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let (who, renewed, transitions) = holder(&current);
    let mine = who.as_deref() == Some(cfg.identity.as_str());
    let expired = renewed
        .map(|r| Timestamp::now().duration_since(r) > SignedDuration::from_secs(i64::from(secs)))
        .unwrap_or(true);
    if !mine && who.is_some() && !expired {
        return Ok(false);
    }
    let mut spec = current.spec.clone().unwrap_or_default();
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(micro_now());
    if !mine {
        spec.acquire_time = Some(micro_now());
        spec.lease_transitions = Some(transitions.saturating_add(1));
    }
    let new = lease(cfg, current.resource_version(), spec);
    match api.replace(&cfg.name, &PostParams::default(), &new).await {
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
    let mut spec = current.spec.clone().unwrap_or_default();
    spec.holder_identity = Some(String::new());
    let released = lease(cfg, current.resource_version(), spec);
    let _ = api
        .replace(&cfg.name, &PostParams::default(), &released)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_holder_is_no_holder_and_the_lease_keeps_its_other_fields() {
        let cfg = LeaseConfig::new("ns", "me");
        let renewed = micro_now();
        let l = lease(
            &cfg,
            Some("7".into()),
            LeaseSpec {
                holder_identity: Some(String::new()),
                renew_time: Some(renewed.clone()),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            },
        );
        assert_eq!(holder(&l), (None, Some(renewed.0), 4));
        let v = serde_json::to_value(&l).expect("json");
        assert_eq!(v["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(v["kind"], "Lease");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        // Microsecond precision, as the API server stores it.
        let t = v["spec"]["renewTime"].as_str().expect("renewTime");
        assert!(
            t.ends_with('Z') && t.split('.').nth(1).map(str::len) == Some(7),
            "{t}"
        );
    }
}
