//! A placement policy as a [`ClusterBackend`]: pools chosen by org labels, with capacity.
//!
//! The orchestrator hands every task attempt to its backend's `submit`. This backend picks the
//! pool for the task's org (the pools whose selector the org's labels satisfy; among them the
//! one with the most free slots), reserves a slot and delegates to that pool's own backend. When
//! every matching pool is full it refuses with [`BackendError::AtCapacity`]: the orchestrator
//! then keeps the task `Scheduled` (reason `submit failed: ...`) and retries it after its
//! `submit_retry`, oldest first, so refusals are a queue. Slots free when a task finishes
//! ([`ClusterBackend::task_finished`]) or its agent is stopped ([`ClusterBackend::cancel`]: a
//! cancel, or a requeue after a lost lease).
//!
//! Placement lives in memory; after a restart, [`PlacementBackend::adopt`] re-counts the tasks
//! the store says are still in flight.

use crate::labels::{Labels, PoolSpec};
use async_trait::async_trait;
use guildnet_core::model::Task;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::seams::{
    AgentLaunch, BackendError, ClusterBackend, EditorEndpoint, WorkloadInfo, WorkloadState,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// A pool: a backend with a capacity and a label selector.
pub struct Pool {
    /// Name, selector and capacity.
    pub spec: PoolSpec,
    /// Where its tasks run.
    pub backend: Arc<dyn ClusterBackend>,
}

/// Where a task was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    pool: usize,
    agent: AgentName,
}

#[derive(Default)]
struct State {
    /// Tasks holding a slot.
    placed: HashMap<TaskId, Slot>,
    /// Why a task was last refused (shown by `describe` while it waits).
    refused: HashMap<TaskId, String>,
}

/// How full each pool is: name -> (used, capacity).
pub type Occupancy = BTreeMap<String, (usize, usize)>;

/// The placement backend.
pub struct PlacementBackend {
    pools: Vec<Pool>,
    orgs: HashMap<OrgName, Labels>,
    state: Mutex<State>,
}

impl PlacementBackend {
    /// Pools in order of preference (ties go to the first), and the labels of each org (orgs
    /// not listed have no labels).
    pub fn new(pools: Vec<Pool>, orgs: HashMap<OrgName, Labels>) -> Self {
        Self {
            pools,
            orgs,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state holds plain maps: still consistent if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn used(state: &State, pool: usize) -> usize {
        state.placed.values().filter(|s| s.pool == pool).count()
    }

    /// Used and total slots per pool.
    pub fn occupancy(&self) -> Occupancy {
        let st = self.state();
        self.pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.spec.name.clone(), (Self::used(&st, i), p.spec.capacity)))
            .collect()
    }

    /// The pool a task holds a slot in, if any.
    pub fn pool_of(&self, task: &TaskId) -> Option<String> {
        let st = self.state();
        st.placed
            .get(task)
            .map(|s| self.pools[s.pool].spec.name.clone())
    }

    fn matching(&self, org: &OrgName) -> Vec<usize> {
        let empty = Labels::default();
        let labels = self.orgs.get(org).unwrap_or(&empty);
        (0..self.pools.len())
            .filter(|i| labels.satisfies(&self.pools[*i].spec.selector))
            .collect()
    }

    /// Chooses and reserves a slot for the launch, or says why not.
    fn place(&self, launch: &AgentLaunch) -> Result<usize, String> {
        let candidates = self.matching(&launch.org);
        let mut st = self.state();
        if let Some(slot) = st.placed.get_mut(&launch.task_id) {
            // A retried submit or a new attempt of a placed task keeps its slot.
            slot.agent = launch.agent.clone();
            return Ok(slot.pool);
        }
        if candidates.is_empty() {
            let labels = self.orgs.get(&launch.org).cloned().unwrap_or_default();
            let why = format!(
                "no pool accepts org {} (labels {labels})",
                launch.org.as_str()
            );
            st.refused.insert(launch.task_id.clone(), why.clone());
            return Err(why);
        }
        let free = |i: usize| {
            self.pools[i]
                .spec
                .capacity
                .saturating_sub(Self::used(&st, i))
        };
        let best = candidates
            .iter()
            .copied()
            .filter(|i| free(*i) > 0)
            .max_by_key(|i| (free(*i), std::cmp::Reverse(*i)));
        let Some(pool) = best else {
            let full: Vec<String> = candidates
                .iter()
                .map(|i| {
                    let p = &self.pools[*i].spec;
                    format!("{} {}/{}", p.name, Self::used(&st, *i), p.capacity)
                })
                .collect();
            let why = format!(
                "every pool for org {} is at capacity ({}); queued",
                launch.org.as_str(),
                full.join(", ")
            );
            st.refused.insert(launch.task_id.clone(), why.clone());
            return Err(why);
        };
        st.refused.remove(&launch.task_id);
        st.placed.insert(
            launch.task_id.clone(),
            Slot {
                pool,
                agent: launch.agent.clone(),
            },
        );
        Ok(pool)
    }

    /// Counts a task that is already in flight (Submitted or Running when the orchestrator
    /// starts) against the matching pool with the most free slots, even beyond its capacity: it
    /// runs already. Returns the pool's name, or `None` when no pool matches its org.
    pub fn adopt(&self, task: &Task) -> Option<String> {
        let agent = task.agent.clone()?;
        let candidates = self.matching(&task.org);
        let mut st = self.state();
        let pool = candidates.iter().copied().max_by_key(|i| {
            let free = self.pools[*i].spec.capacity as i64 - Self::used(&st, *i) as i64;
            (free, std::cmp::Reverse(*i))
        })?;
        st.placed.insert(task.id.clone(), Slot { pool, agent });
        Some(self.pools[pool].spec.name.clone())
    }

    /// Frees a task's slot; returns the pool it held.
    fn release(&self, task: &TaskId) -> Option<usize> {
        let mut st = self.state();
        st.refused.remove(task);
        st.placed.remove(task).map(|s| s.pool)
    }

    fn slot(&self, task: &TaskId) -> Option<Slot> {
        self.state().placed.get(task).cloned()
    }

    fn slot_of_agent(&self, agent: &AgentName) -> Option<Slot> {
        self.state()
            .placed
            .values()
            .find(|s| &s.agent == agent)
            .cloned()
    }
}

#[async_trait]
impl ClusterBackend for PlacementBackend {
    fn name(&self) -> &'static str {
        "placement"
    }

    async fn submit(&self, launch: AgentLaunch) -> Result<(), BackendError> {
        let pool = self
            .place(&launch)
            .map_err(|reason| BackendError::AtCapacity {
                org: launch.org.clone(),
                reason,
            })?;
        let (task, name) = (launch.task_id.clone(), self.pools[pool].spec.name.clone());
        tracing::info!(task = %task, org = %launch.org, pool = %name, "placed");
        if let Err(e) = self.pools[pool].backend.submit(launch).await {
            self.release(&task);
            return Err(e);
        }
        Ok(())
    }

    async fn cancel(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<(), BackendError> {
        match self.release(task) {
            Some(pool) => self.pools[pool].backend.cancel(org, task, agent).await,
            // Not placed here (refused, or placed before a restart): stop it wherever it runs.
            None => {
                for i in self.matching(org) {
                    self.pools[i].backend.cancel(org, task, agent).await?;
                }
                Ok(())
            }
        }
    }

    async fn status(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: &AgentName,
    ) -> Result<WorkloadState, BackendError> {
        match self.slot(task) {
            Some(s) => self.pools[s.pool].backend.status(org, task, agent).await,
            None => Ok(WorkloadState::Absent),
        }
    }

    async fn editor_endpoint(
        &self,
        org: &OrgName,
        agent: &AgentName,
    ) -> Result<Option<EditorEndpoint>, BackendError> {
        match self.slot_of_agent(agent) {
            Some(s) => self.pools[s.pool].backend.editor_endpoint(org, agent).await,
            None => Ok(None),
        }
    }

    async fn describe(
        &self,
        org: &OrgName,
        task: &TaskId,
        agent: Option<AgentName>,
    ) -> Result<Option<WorkloadInfo>, BackendError> {
        if let Some(s) = self.slot(task) {
            let p = &self.pools[s.pool];
            let inner = p
                .backend
                .describe(org, task, agent)
                .await?
                .unwrap_or_default();
            let used = self.occupancy().get(&p.spec.name).map_or(0, |o| o.0);
            let mut conditions = vec![format!(
                "Placed=True pool={} ({used}/{} slots in use)",
                p.spec.name, p.spec.capacity
            )];
            conditions.extend(inner.conditions);
            return Ok(Some(WorkloadInfo {
                resource: format!("pool {} ({})", p.spec.name, p.backend.name()),
                conditions,
                ..inner
            }));
        }
        let refused = self.state().refused.get(task).cloned();
        Ok(refused.map(|why| WorkloadInfo {
            resource: "placement".into(),
            phase: Some("Queued".into()),
            conditions: vec![format!("Placed=False: {why}")],
            ..Default::default()
        }))
    }

    async fn close_editor(&self, org: &OrgName, agent: &AgentName) -> Result<bool, BackendError> {
        match self.slot_of_agent(agent) {
            Some(s) => self.pools[s.pool].backend.close_editor(org, agent).await,
            None => Ok(false),
        }
    }

    async fn task_finished(&self, task: &Task) -> Result<(), BackendError> {
        match self.release(&task.id) {
            Some(pool) => self.pools[pool].backend.task_finished(task).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guildnet_core::seams::MockClusterBackend;
    use guildnet_core::token::Secret;

    fn launch(task: &str, org: &str) -> AgentLaunch {
        let task_id = TaskId::new(task).unwrap();
        AgentLaunch {
            agent: task_id.agent_name(1),
            task_id,
            org: OrgName::new(org).unwrap(),
            attempt: 1,
            task: "echo".into(),
            agent_hint: None,
            orchestrator_url: "http://127.0.0.1:1".into(),
            agent_token: Secret::new("gnt.x.y"),
            settings: Default::default(),
            pool: None,
        }
    }

    fn accepting() -> Arc<dyn ClusterBackend> {
        let mut m = MockClusterBackend::new();
        m.expect_submit().returning(|_| Ok(()));
        m.expect_cancel().returning(|_, _, _| Ok(()));
        m.expect_task_finished().returning(|_| Ok(()));
        m.expect_name().return_const("mock");
        Arc::new(m)
    }

    fn backend() -> PlacementBackend {
        let pools = vec![
            Pool {
                spec: "gpu:1:tier=gpu".parse().unwrap(),
                backend: accepting(),
            },
            Pool {
                spec: "shared:2".parse().unwrap(),
                backend: accepting(),
            },
        ];
        let orgs = HashMap::from([
            (
                OrgName::new("acme").unwrap(),
                Labels::parse("tier=gpu").unwrap(),
            ),
            (OrgName::new("beta").unwrap(), Labels::default()),
        ]);
        PlacementBackend::new(pools, orgs)
    }

    #[tokio::test]
    async fn places_by_labels_and_free_slots_then_refuses_at_capacity() {
        let b = backend();
        // acme matches both pools; both have free slots, shared has more.
        b.submit(launch("t1", "acme")).await.unwrap();
        assert_eq!(
            b.pool_of(&TaskId::new("t1").unwrap()).as_deref(),
            Some("shared")
        );
        // beta matches only shared.
        b.submit(launch("t2", "beta")).await.unwrap();
        assert_eq!(
            b.pool_of(&TaskId::new("t2").unwrap()).as_deref(),
            Some("shared")
        );
        // shared is full: acme goes to gpu, beta is refused.
        b.submit(launch("t3", "acme")).await.unwrap();
        assert_eq!(
            b.pool_of(&TaskId::new("t3").unwrap()).as_deref(),
            Some("gpu")
        );
        let e = b.submit(launch("t4", "beta")).await.unwrap_err();
        assert!(e.to_string().contains("at capacity (shared 2/2)"), "{e}");
        let info = b
            .describe(
                &OrgName::new("beta").unwrap(),
                &TaskId::new("t4").unwrap(),
                None,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.phase.as_deref(), Some("Queued"));
        // A retried submit of a placed task keeps its slot.
        b.submit(launch("t1", "acme")).await.unwrap();
        assert_eq!(b.occupancy()["shared"], (2, 2));
        // Cancelling t1 frees a slot: t4 now fits.
        let t1 = launch("t1", "acme");
        b.cancel(&t1.org, &t1.task_id, &t1.agent).await.unwrap();
        b.submit(launch("t4", "beta")).await.unwrap();
        assert_eq!(b.occupancy()["shared"], (2, 2));
        assert_eq!(b.occupancy()["gpu"], (1, 1));
    }

    #[tokio::test]
    async fn adopted_tasks_count_against_capacity() {
        let b = backend();
        let l = launch("t9", "acme");
        // From JSON, as the API shows it, so new optional fields need no change here.
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": l.task_id, "org": l.org, "task": "echo", "status": "Running",
            "agent": l.agent, "attempt": 1, "fencing": 1, "claims": 1,
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
            "artifacts": [],
        }))
        .unwrap();
        assert_eq!(b.adopt(&task).as_deref(), Some("shared"));
        assert_eq!(b.occupancy()["shared"], (1, 2));
        b.task_finished(&task).await.unwrap();
        assert_eq!(b.occupancy()["shared"], (0, 2));
    }

    #[tokio::test]
    async fn orgs_without_a_matching_pool_are_refused() {
        let pools = vec![Pool {
            spec: "gpu:1:tier=gpu".parse().unwrap(),
            backend: accepting(),
        }];
        let b = PlacementBackend::new(pools, HashMap::new());
        let e = b.submit(launch("t1", "nolabels")).await.unwrap_err();
        assert!(
            e.to_string().contains("no pool accepts org nolabels"),
            "{e}"
        );
        assert_eq!(b.occupancy()["gpu"], (0, 1));
    }

    #[tokio::test]
    async fn a_failed_inner_submit_frees_the_slot() {
        let mut failing = MockClusterBackend::new();
        failing.expect_submit().returning(|l| {
            Err(BackendError::OrgUnavailable {
                org: l.org,
                reason: "cluster down".into(),
            })
        });
        let pools = vec![Pool {
            spec: "only:1".parse().unwrap(),
            backend: Arc::new(failing),
        }];
        let b = PlacementBackend::new(pools, HashMap::new());
        assert!(b.submit(launch("t1", "acme")).await.is_err());
        assert_eq!(b.occupancy()["only"], (0, 1));
    }
}
