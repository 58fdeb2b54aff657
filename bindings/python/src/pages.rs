//! `guildnet.TaskPages`: every task matching a filter, page by page (keyset pagination with the
//! orchestrator's `next` cursor), as a Python iterator of `Task`s.

use crate::runtime::block_on;
use crate::types::Task;
use guildnet_core::api::TaskListQuery;
use guildnet_core::client::OrchestratorClient;
use pyo3::prelude::*;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Where the iteration stands: the tasks fetched but not yet yielded, and the query of the next
/// page (`None` once the last page was read).
struct Pages {
    buffered: VecDeque<guildnet_core::model::Task>,
    next: Option<TaskListQuery>,
}

/// An iterator over all tasks that match a filter, newest first. It fetches one page at a time
/// (`page_size` tasks) and follows the orchestrator's cursor, so tasks scheduled while it runs do
/// not shift the pages: none is yielded twice or skipped. `cursor` is where the next page starts
/// (`None` at the end), to resume later with `tasks_page(cursor=...)`.
#[pyclass(frozen, module = "guildnet")]
pub struct TaskPages {
    client: OrchestratorClient,
    state: Mutex<Pages>,
}

impl TaskPages {
    /// Starts at the first page of `query`.
    pub(crate) fn new(client: OrchestratorClient, query: TaskListQuery) -> Self {
        Self {
            client,
            state: Mutex::new(Pages {
                buffered: VecDeque::new(),
                next: Some(query),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pages> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl TaskPages {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Task>> {
        loop {
            let query = {
                let mut st = self.lock();
                if let Some(t) = st.buffered.pop_front() {
                    return Ok(Some(Task::from(t)));
                }
                match st.next.take() {
                    Some(q) => q,
                    None => return Ok(None),
                }
            };
            let c = self.client.clone();
            let q = query.clone();
            let (tasks, cursor) = block_on(py, async move { Ok(c.tasks_page(&q).await?) })?;
            let mut st = self.lock();
            st.buffered.extend(tasks);
            st.next = cursor.map(|c| TaskListQuery {
                cursor: Some(c),
                ..query
            });
        }
    }

    /// The cursor of the page after the tasks fetched so far (`None` once the last page was
    /// read).
    #[getter]
    fn cursor(&self) -> Option<String> {
        self.lock().next.as_ref().and_then(|q| q.cursor.clone())
    }

    fn __repr__(&self) -> String {
        let st = self.lock();
        format!(
            "TaskPages(buffered={}, more={})",
            st.buffered.len(),
            st.next.is_some()
        )
    }
}
