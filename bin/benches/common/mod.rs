//! Shared by the bench binaries (`mod common;`): a cluster backend that starts nothing.

use async_trait::async_trait;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::seams::{
    AgentLaunch, BackendError, ClusterBackend, EditorEndpoint, WorkloadInfo, WorkloadState,
};

/// What [`NullBackend`] does with each launch.
pub type OnSubmit = Box<dyn Fn(&AgentLaunch) + Send + Sync>;

/// Accepts every submission and starts nothing, so a bench measures the orchestrator's own
/// cost; `on_submit` (if any) sees each launch, e.g. to hand its credentials to the bench.
/// With `refuse`, it refuses every submission instead (a cluster that is down).
#[derive(Default)]
pub struct NullBackend {
    pub on_submit: Option<OnSubmit>,
    pub refuse: Option<String>,
}

#[async_trait]
impl ClusterBackend for NullBackend {
    fn name(&self) -> &'static str {
        "null"
    }
    async fn submit(&self, l: AgentLaunch) -> Result<(), BackendError> {
        if let Some(reason) = &self.refuse {
            return Err(BackendError::OrgUnavailable {
                org: l.org,
                reason: reason.clone(),
            });
        }
        if let Some(f) = &self.on_submit {
            f(&l);
        }
        Ok(())
    }
    async fn cancel(&self, _: &OrgName, _: &TaskId, _: &AgentName) -> Result<(), BackendError> {
        Ok(())
    }
    async fn status(
        &self,
        _: &OrgName,
        _: &TaskId,
        _: &AgentName,
    ) -> Result<WorkloadState, BackendError> {
        Ok(WorkloadState::Running)
    }
    async fn editor_endpoint(
        &self,
        _: &OrgName,
        _: &AgentName,
    ) -> Result<Option<EditorEndpoint>, BackendError> {
        Ok(None)
    }
    async fn describe(
        &self,
        _: &OrgName,
        _: &TaskId,
        _: Option<AgentName>,
    ) -> Result<Option<WorkloadInfo>, BackendError> {
        Ok(None)
    }
    async fn close_editor(&self, _: &OrgName, _: &AgentName) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn task_finished(&self, _: &guildnet_core::model::Task) -> Result<(), BackendError> {
        Ok(())
    }
}
