//! The warm agents waiting on this orchestrator, per org, and the one-shot handoff of a task to
//! one of them.
//!
//! Invariants (checked by the unit tests and by `guildnet-core/tests/pool_handoff.rs`):
//! - each waiting request receives at most one task (its channel is a oneshot, taken out of the
//!   registry under the lock that sends on it);
//! - an agent (org, pod) that was handed a task is never handed another: its later waits are
//!   refused ([`WaitError::AlreadyUsed`]);
//! - a task is handed to at most one agent (the caller hands each dispatched attempt once);
//! - a task is handed to a warm agent at most once: a later attempt (the handed agent vanished
//!   before claiming, or died running it) starts cold ([`WarmRegistry::was_handed`]), so a
//!   pool scaling down under a task cannot use up the task's attempts one warm agent at a time.

use super::Handoff;
use crate::names::{OrgName, TaskId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Most (org, pod) pairs remembered as used; older ones are forgotten first. A pod that exits
/// after its task never comes back, so this only guards against a confused or hostile agent.
const USED_MEMORY: usize = 100_000;

/// Why a wait was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// This agent already took a task: a used agent never takes a second one.
    #[error("pool agent {pod} of org {org} already took a task; a used agent exits and the pool replaces it")]
    AlreadyUsed {
        /// The org.
        org: OrgName,
        /// The agent's pod.
        pod: String,
    },
}

struct Waiter {
    id: u64,
    pod: String,
    runner: Option<String>,
    tx: oneshot::Sender<Handoff>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<OrgName, VecDeque<Waiter>>,
    used: HashSet<(OrgName, String)>,
    used_order: VecDeque<(OrgName, String)>,
    handed: HashSet<TaskId>,
    handed_order: VecDeque<TaskId>,
    warm_starts: HashMap<OrgName, u64>,
    cold_starts: HashMap<OrgName, u64>,
}

/// Waiting warm agents, by org.
#[derive(Default)]
pub struct WarmRegistry {
    state: Mutex<State>,
    next_id: AtomicU64,
}

/// A registered wait: resolve it with [`WarmRegistry::finish_wait`] (or drop it: a dropped
/// receiver makes the next handoff skip this agent).
pub struct Wait {
    /// Identifies the wait in the registry.
    pub id: u64,
    /// The org.
    pub org: OrgName,
    /// Receives the task, once.
    pub rx: oneshot::Receiver<Handoff>,
}

impl WarmRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `pod` of `org` as waiting (replacing an earlier wait of the same pod). Refused
    /// when this pod already took a task.
    pub fn wait(
        &self,
        org: &OrgName,
        pod: &str,
        runner: Option<String>,
    ) -> Result<Wait, WaitError> {
        let mut st = self.lock();
        if st.used.contains(&(org.clone(), pod.to_owned())) {
            return Err(WaitError::AlreadyUsed {
                org: org.clone(),
                pod: pod.to_owned(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let q = st.waiting.entry(org.clone()).or_default();
        q.retain(|w| w.pod != pod && !w.tx.is_closed());
        q.push_back(Waiter {
            id,
            pod: pod.to_owned(),
            runner,
            tx,
        });
        Ok(Wait {
            id,
            org: org.clone(),
            rx,
        })
    }

    /// Ends a wait that timed out: removes it unless a task was already handed to it, which
    /// is then returned (it is in the channel: the sender sends under the registry's lock).
    pub fn finish_wait(&self, mut wait: Wait) -> Option<Handoff> {
        {
            let mut st = self.lock();
            if let Some(q) = st.waiting.get_mut(&wait.org) {
                let before = q.len();
                q.retain(|w| w.id != wait.id);
                if q.len() != before {
                    return None;
                }
            }
        }
        wait.rx.try_recv().ok()
    }

    /// Hands `handoff` to the longest-waiting agent of its org that takes tasks of `runner`
    /// (the task's runner name; agents without a runner take any). Returns the agent's pod, or
    /// `None` when no agent waits (the handoff, and its token, are dropped).
    pub fn hand_off(&self, runner: &str, handoff: Handoff) -> Option<String> {
        let org = handoff.org.clone();
        let task = handoff.task_id.clone();
        let mut st = self.lock();
        let mut handoff = handoff;
        loop {
            let next = st.waiting.get_mut(&org).and_then(|q| {
                let pos = q
                    .iter()
                    .position(|w| w.runner.as_deref().is_none_or(|r| r == runner))?;
                q.remove(pos)
            });
            let Some(w) = next else {
                *st.cold_starts.entry(org).or_default() += 1;
                return None;
            };
            match w.tx.send(handoff) {
                Ok(()) => {
                    let key = (org.clone(), w.pod.clone());
                    if st.used.insert(key.clone()) {
                        st.used_order.push_back(key);
                        while st.used_order.len() > USED_MEMORY {
                            if let Some(old) = st.used_order.pop_front() {
                                st.used.remove(&old);
                            }
                        }
                    }
                    if st.handed.insert(task.clone()) {
                        st.handed_order.push_back(task);
                        while st.handed_order.len() > USED_MEMORY {
                            if let Some(old) = st.handed_order.pop_front() {
                                st.handed.remove(&old);
                            }
                        }
                    }
                    *st.warm_starts.entry(org).or_default() += 1;
                    return Some(w.pod);
                }
                // That request is gone (the agent disconnected): try the next one.
                Err(back) => handoff = back,
            }
        }
    }

    /// Whether an attempt of `task` was already handed to a warm agent (by this registry, within
    /// its memory of the last 100,000 handoffs).
    pub fn was_handed(&self, task: &TaskId) -> bool {
        self.lock().handed.contains(task)
    }

    /// Counts a cold start of `org` decided without looking for a waiting agent.
    pub fn count_cold(&self, org: &OrgName) {
        *self.lock().cold_starts.entry(org.clone()).or_default() += 1;
    }

    /// Agents of `org` waiting now.
    pub fn waiting(&self, org: &OrgName) -> u32 {
        let st = self.lock();
        st.waiting
            .get(org)
            .map_or(0, |q| q.iter().filter(|w| !w.tx.is_closed()).count() as u32)
    }

    /// (warm starts, cold starts) of `org` since this registry was made. Cold starts count only
    /// dispatches that looked for a warm agent.
    pub fn starts(&self, org: &OrgName) -> (u64, u64) {
        let st = self.lock();
        (
            st.warm_starts.get(org).copied().unwrap_or(0),
            st.cold_starts.get(org).copied().unwrap_or(0),
        )
    }

    /// Drops every wait of `org` (its pool was removed): the agents' requests end without a task.
    pub fn forget_org(&self, org: &OrgName) {
        self.lock().waiting.remove(org);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::AgentName;

    fn org(s: &str) -> OrgName {
        OrgName::new(s).unwrap()
    }

    fn h(n: u32, o: &str) -> Handoff {
        Handoff {
            task_id: TaskId::new(format!("t-{n}")).unwrap(),
            org: org(o),
            agent: AgentName::new(format!("agent-{n}")).unwrap(),
            agent_token: format!("tok-{n}"),
            env: vec![],
            secret_env: vec![],
        }
    }

    #[test]
    fn one_task_per_wait_and_never_a_second_to_a_used_pod() {
        let r = WarmRegistry::default();
        let mut w1 = r.wait(&org("acme"), "p1", None).unwrap();
        let mut w2 = r.wait(&org("acme"), "p2", None).unwrap();
        assert_eq!(r.waiting(&org("acme")), 2);
        assert_eq!(r.hand_off("default", h(1, "acme")), Some("p1".into()));
        assert_eq!(r.hand_off("default", h(2, "acme")), Some("p2".into()));
        // Nobody left: the third task comes back (cold start).
        assert!(r.hand_off("default", h(3, "acme")).is_none());
        assert_eq!(w1.rx.try_recv().unwrap().task_id.as_str(), "t-1");
        assert_eq!(w2.rx.try_recv().unwrap().task_id.as_str(), "t-2");
        assert_eq!(r.starts(&org("acme")), (2, 1));
        // A used pod may not wait again.
        assert!(matches!(
            r.wait(&org("acme"), "p1", None),
            Err(WaitError::AlreadyUsed { .. })
        ));
        // Another org's agent never gets acme's task.
        let _other = r.wait(&org("other"), "p9", None).unwrap();
        assert!(r.hand_off("default", h(4, "acme")).is_none());
    }

    #[test]
    fn handed_tasks_are_remembered_and_unhanded_ones_are_not() {
        let r = WarmRegistry::default();
        let _w = r.wait(&org("acme"), "p1", None).unwrap();
        assert_eq!(r.hand_off("default", h(1, "acme")), Some("p1".into()));
        // No agent left: task 2 was not handed, so its retry may still go warm.
        assert!(r.hand_off("default", h(2, "acme")).is_none());
        assert!(r.was_handed(&TaskId::new("t-1").unwrap()));
        assert!(!r.was_handed(&TaskId::new("t-2").unwrap()));
        // A request that went away does not count as a handoff.
        let gone = r.wait(&org("acme"), "p2", None).unwrap();
        drop(gone);
        assert!(r.hand_off("default", h(3, "acme")).is_none());
        assert!(!r.was_handed(&TaskId::new("t-3").unwrap()));
        r.count_cold(&org("acme"));
        assert_eq!(r.starts(&org("acme")), (1, 3));
    }

    #[test]
    fn a_gone_request_is_skipped_and_a_timed_out_wait_is_removed() {
        let r = WarmRegistry::default();
        let gone = r.wait(&org("acme"), "p1", None).unwrap();
        drop(gone);
        let w = r.wait(&org("acme"), "p2", None).unwrap();
        assert_eq!(r.hand_off("default", h(1, "acme")), Some("p2".into()));
        // The wait was taken before it timed out: finishing it returns the task.
        assert_eq!(r.finish_wait(w).unwrap().task_id.as_str(), "t-1");
        let w3 = r.wait(&org("acme"), "p3", None).unwrap();
        assert!(r.finish_wait(w3).is_none());
        assert_eq!(r.waiting(&org("acme")), 0);
    }

    #[test]
    fn runners_match_and_waits_replace_per_pod() {
        let r = WarmRegistry::default();
        let _a = r.wait(&org("acme"), "aider", Some("aider".into())).unwrap();
        let _b1 = r.wait(&org("acme"), "any", None).unwrap();
        let mut b2 = r.wait(&org("acme"), "any", None).unwrap();
        assert_eq!(
            r.waiting(&org("acme")),
            2,
            "the second wait of a pod replaces the first"
        );
        assert_eq!(r.hand_off("claude", h(1, "acme")), Some("any".into()));
        assert!(b2.rx.try_recv().is_ok());
        assert!(r.hand_off("claude", h(2, "acme")).is_none());
        assert_eq!(r.hand_off("aider", h(3, "acme")), Some("aider".into()));
    }
}
