//! Per-org backoff of submits to a cluster backend that refuses them.
//!
//! When an org's backend cannot take tasks (cluster down, no kubeconfig), retrying every waiting
//! task every few seconds is a storm: one submit and one warning per task per retry. Instead the
//! first refusal puts the whole org on hold: no task of that org is submitted until the hold
//! expires, then one task probes the backend. Each further refusal doubles the hold up to a cap;
//! a success lifts it. One warning is logged per org per hold, and `GET /tasks/{id}` shows the
//! reason a `Scheduled` task waits ([`OrgBackoff::waiting`]).
//!
//! Capacity refusals ([`crate::seams::BackendError::AtCapacity`]) are not failures: they keep
//! the plain retry interval, because a full pool frees slots as tasks finish.

use crate::names::OrgName;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Hold {
    failures: u32,
    until: DateTime<Utc>,
    reason: String,
}

/// The holds, by org. Lives in memory: a restarted orchestrator probes each org once again.
#[derive(Debug, Default)]
pub(crate) struct OrgBackoff {
    holds: Mutex<HashMap<OrgName, Hold>>,
}

/// What [`OrgBackoff::failed`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HoldSet {
    /// How long the org is on hold now.
    pub(crate) delay: Duration,
    /// Whether this failure starts a new hold (log a warning) rather than repeating the current
    /// one (a submit that was already in flight when the hold began).
    pub(crate) new_hold: bool,
}

impl OrgBackoff {
    /// Whether tasks of `org` may be submitted at `now`.
    pub(crate) fn ready(&self, org: &OrgName, now: DateTime<Utc>) -> bool {
        self.lock().get(org).is_none_or(|h| h.until <= now)
    }

    /// Orgs on hold at `now`.
    pub(crate) fn held(&self, now: DateTime<Utc>) -> Vec<OrgName> {
        self.lock()
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// Records a refused submit: the hold starts at `base` and doubles per failure up to `max`.
    pub(crate) fn failed(
        &self,
        org: &OrgName,
        now: DateTime<Utc>,
        base: Duration,
        max: Duration,
        reason: String,
    ) -> HoldSet {
        let mut holds = self.lock();
        let hold = holds.entry(org.clone()).or_insert(Hold {
            failures: 0,
            until: now,
            reason: String::new(),
        });
        if hold.until > now {
            // Already on hold: a submit that started before the hold; keep the hold as is.
            hold.reason = reason;
            let left = (hold.until - now).to_std().unwrap_or_default();
            return HoldSet {
                delay: left,
                new_hold: false,
            };
        }
        hold.failures = hold.failures.saturating_add(1);
        let factor = 2u32.saturating_pow(hold.failures.saturating_sub(1).min(20));
        let delay = base.saturating_mul(factor).min(max);
        hold.until = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        hold.reason = reason;
        HoldSet {
            delay,
            new_hold: true,
        }
    }

    /// Records an accepted submit: the org's hold, if any, is lifted.
    pub(crate) fn succeeded(&self, org: &OrgName) {
        self.lock().remove(org);
    }

    /// Why tasks of `org` wait at `now`, if the org is on hold.
    pub(crate) fn waiting(&self, org: &OrgName, now: DateTime<Utc>) -> Option<String> {
        let holds = self.lock();
        let h = holds.get(org).filter(|h| h.until > now)?;
        let secs = (h.until - now).num_milliseconds().max(0) as f64 / 1000.0;
        Some(format!(
            "the backend of org {org} refused the last submit ({}); next try in {secs:.1} s \
             ({} refusals in a row)",
            h.reason, h.failures
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrgName, Hold>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_double_up_to_the_cap_and_a_success_lifts_them() {
        let b = OrgBackoff::default();
        let org = OrgName::new("acme").expect("org");
        let t0 = Utc::now();
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(5));
        assert!(b.ready(&org, t0));
        let h = b.failed(&org, t0, base, max, "down".into());
        assert_eq!(
            h,
            HoldSet {
                delay: base,
                new_hold: true
            }
        );
        assert!(!b.ready(&org, t0));
        assert_eq!(b.held(t0), vec![org.clone()]);
        assert!(b.waiting(&org, t0).expect("waiting").contains("down"));
        // A second refusal inside the hold does not extend it or warn again.
        let again = b.failed(&org, t0, base, max, "down".into());
        assert!(!again.new_hold);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            now += chrono::Duration::seconds(10);
            assert!(b.ready(&org, now));
            delays.push(b.failed(&org, now, base, max, "down".into()).delay);
        }
        assert_eq!(
            delays,
            [2, 4, 5, 5].map(Duration::from_secs),
            "doubles, capped"
        );
        b.succeeded(&org);
        assert!(b.ready(&org, now));
        assert_eq!(b.waiting(&org, now), None);
    }
}
