//! `guildnet.LogStream`: a followed task log as a Python iterator.

use crate::errors::Error;
use crate::runtime::{block_on, runtime};
use crate::types::{LogLine, Task};
use futures_util::{Stream, StreamExt};
use guildnet_core::client::{ClientError, LogFollow, OrchestratorClient};
use guildnet_core::names::TaskId;
use pyo3::prelude::*;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Follow = Pin<Box<dyn Stream<Item = Result<LogFollow, ClientError>> + Send>>;

/// An iterator over a task's log stream: yields `LogLine`s as the agent sends them and stops
/// when the task finishes (then `task` holds the final `Task`). Reconnects with the last
/// sequence number seen when the connection drops, so no line is missed or repeated.
/// `close()` (or leaving a `with` block) stops following early.
#[pyclass(frozen, module = "guildnet")]
pub struct LogStream {
    task_id: String,
    /// `None` once ended or closed. A tokio mutex: it is held across the await of the next
    /// item, outside the GIL.
    stream: Arc<tokio::sync::Mutex<Option<Follow>>>,
    /// The finished task, once the stream ended.
    last: Mutex<Option<Task>>,
    /// Set by `close()`, from any thread: wakes a `__next__` blocked on the network.
    closed: tokio::sync::watch::Sender<bool>,
}

impl LogStream {
    /// Starts following `id` after sequence number `after`.
    pub(crate) fn open(
        client: &OrchestratorClient,
        id: &TaskId,
        after: u64,
        max_retry: Duration,
    ) -> Result<Self, Error> {
        // follow_logs spawns its reader onto the runtime.
        let _guard = runtime()?.enter();
        let follow: Follow = Box::pin(client.follow_logs(id, after, max_retry));
        Ok(Self {
            task_id: id.to_string(),
            stream: Arc::new(tokio::sync::Mutex::new(Some(follow))),
            last: Mutex::new(None),
            closed: tokio::sync::watch::channel(false).0,
        })
    }
}

#[pymethods]
impl LogStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<LogLine>> {
        let stream = self.stream.clone();
        let mut closed = self.closed.subscribe();
        let item = block_on(py, async move {
            let mut guard = stream.lock().await;
            if *closed.borrow_and_update() {
                *guard = None;
            }
            let Some(s) = guard.as_mut() else {
                return Ok(None);
            };
            let next = tokio::select! {
                next = s.next() => next,
                _ = closed.changed() => None,
            };
            match next {
                Some(Ok(LogFollow::Line(l))) => Ok(Some(Ok(l))),
                Some(Ok(LogFollow::End(t))) => {
                    *guard = None;
                    Ok(Some(Err(*t)))
                }
                Some(Err(e)) => {
                    *guard = None;
                    Err(Error::from(e))
                }
                None => {
                    *guard = None;
                    Ok(None)
                }
            }
        })?;
        match item {
            Some(Ok(line)) => Ok(Some(LogLine::from(line))),
            Some(Err(task)) => {
                if let Ok(mut last) = self.last.lock() {
                    *last = Some(Task::from(task));
                }
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The task as it finished, once the stream ended (else `None`).
    #[getter]
    fn task(&self) -> Option<Task> {
        self.last.lock().ok().and_then(|t| t.clone())
    }

    /// The id of the followed task.
    #[getter]
    fn task_id(&self) -> String {
        self.task_id.clone()
    }

    /// Stops following (closes the connection). Iterating afterwards yields nothing. May be
    /// called from another thread while one iterates: that thread's `next()` then ends.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.send_replace(true);
        let stream = self.stream.clone();
        block_on(py, async move {
            stream.lock().await.take();
            Ok(())
        })
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = match self.last.lock().ok().and_then(|t| t.clone()) {
            Some(t) => format!("ended, status='{}'", t.status),
            None => "following".into(),
        };
        format!("LogStream(task_id='{}', {state})", self.task_id)
    }
}
