//! `guildnet.EventStream`: the orchestrator's event stream (`GET /events`) as a Python
//! iterator of `Event`s.

use crate::errors::Error;
use crate::runtime::{block_on, runtime};
use crate::types::Event;
use futures_util::{Stream, StreamExt};
use guildnet_core::client::{ClientError, OrchestratorClient};
use guildnet_core::model;
use pyo3::prelude::*;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type Follow = Pin<Box<dyn Stream<Item = Result<model::Event, ClientError>> + Send>>;

/// An iterator over the orchestrator's events (`task.scheduled`, `task.claimed`,
/// `task.succeeded`, `agent.registered`, ...) in id order, live. It does not end by itself:
/// stop with `close()`, a `with` block or `break`. Reconnects with the last id seen, so no event
/// is missed or repeated. `last_id` is the id to resume from in a later `events(after=...)`.
#[pyclass(frozen, module = "guildnet")]
pub struct EventStream {
    stream: Arc<tokio::sync::Mutex<Option<Follow>>>,
    last_id: std::sync::atomic::AtomicU64,
    closed: tokio::sync::watch::Sender<bool>,
}

impl EventStream {
    /// Starts following after event id `after`.
    pub(crate) fn open(
        client: &OrchestratorClient,
        after: u64,
        max_retry: Duration,
    ) -> Result<Self, Error> {
        let _guard = runtime()?.enter();
        let follow: Follow = Box::pin(client.follow_events(after, max_retry));
        Ok(Self {
            stream: Arc::new(tokio::sync::Mutex::new(Some(follow))),
            last_id: std::sync::atomic::AtomicU64::new(after),
            closed: tokio::sync::watch::channel(false).0,
        })
    }
}

#[pymethods]
impl EventStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Event>> {
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
                Some(Ok(ev)) => Ok(Some(ev)),
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
        Ok(item.map(|ev| {
            self.last_id
                .store(ev.id, std::sync::atomic::Ordering::Relaxed);
            Event::from(ev)
        }))
    }

    /// The id of the last event yielded (or the `after` it started from).
    #[getter]
    fn last_id(&self) -> u64 {
        self.last_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops following. May be called from another thread while one iterates.
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
        format!("EventStream(last_id={})", self.last_id())
    }
}
