//! `guildnet.OrchestratorClient`: the orchestrator's admin API for Python.

use crate::errors::{invalid, Error};
use crate::logs::LogStream;
use crate::pages::TaskPages;
use crate::runtime::block_on;
use crate::types::{dict_of, Agent, LogLine, Org, Task};
use guildnet_core::client as core;
use guildnet_core::context::{ContextFile, RepoSpec};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::api::{ScheduleRequest, TaskListQuery};
use guildnet_core::token::Secret;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a followed log keeps reconnecting after the connection broke.
const FOLLOW_RETRY: Duration = Duration::from_secs(30);

fn task_id(id: &str) -> Result<TaskId, Error> {
    TaskId::parse_field("id", id).map_err(Error::from)
}

fn seconds(field: &str, v: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        invalid(
            field,
            format!("{field} must be a finite number >= 0 (got {v})"),
        )
    })
}

/// The query of `GET /tasks` from the Python arguments, each checked and named when refused.
fn task_query(
    status: Option<&str>,
    org: Option<&str>,
    limit: Option<usize>,
    cursor: Option<String>,
) -> Result<TaskListQuery, Error> {
    let status = match status {
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            invalid(
                "status",
                format!(
                    "unknown status {s:?}; one of Scheduled, Submitted, Running, Succeeded, \
                     Failed, Cancelled"
                ),
            )
        })?),
        None => None,
    };
    Ok(TaskListQuery {
        status,
        org: org.map(OrgName::new).transpose()?,
        limit,
        cursor,
    })
}

/// Client of a GuildNet orchestrator's admin API.
///
/// `OrchestratorClient(url, token)`; `url` is the orchestrator's base URL
/// (`http://127.0.0.1:8080`), `token` its admin token. Methods block the calling thread (with
/// the GIL released, so other threads run) and raise `guildnet.GuildNetError` subclasses.
#[pyclass(frozen, module = "guildnet")]
pub struct OrchestratorClient {
    inner: core::OrchestratorClient,
}

#[pymethods]
impl OrchestratorClient {
    #[new]
    fn new(py: Python<'_>, url: &str, token: &str) -> PyResult<Self> {
        if token.trim().is_empty() {
            return Err(invalid("token", "the admin token must not be empty").into_py_err(py));
        }
        let inner = core::OrchestratorClient::new(url, Secret::new(token.trim()))
            .map_err(|e| Error::from(e).into_py_err(py))?;
        Ok(Self { inner })
    }

    /// A client using the admin token stored in a state dir (`orchestrator.token`, written by
    /// an orchestrator that generated its token), so the token never passes through Python.
    #[staticmethod]
    #[pyo3(signature = (url = "http://127.0.0.1:8080", state_dir = None))]
    fn from_state_dir(py: Python<'_>, url: &str, state_dir: Option<PathBuf>) -> PyResult<Self> {
        let paths = crate::helpers::paths(state_dir).map_err(|e| e.into_py_err(py))?;
        let file = paths.admin_token_file();
        let token = std::fs::read_to_string(&file)
            .map_err(|e| {
                Error::Other(format!(
                    "cannot read the admin token {}: {e}",
                    file.display()
                ))
                .into_py_err(py)
            })?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(
                Error::Other(format!("the admin token file {} is empty", file.display()))
                    .into_py_err(py),
            );
        }
        let inner = core::OrchestratorClient::new(url, Secret::new(token))
            .map_err(|e| Error::from(e).into_py_err(py))?;
        Ok(Self { inner })
    }

    /// A client configured like the `guildnet` CLI: the URL from `GUILDNET_URL`, else the
    /// context's (`GUILDNET_CONTEXT` or the config file's current context, as saved by
    /// `guildnet login`), else `http://127.0.0.1:8080`; the token from `ORCHESTRATOR_TOKEN`,
    /// else the context's (only for the context's own URL), else the state dir's token file.
    #[staticmethod]
    #[pyo3(signature = (context = None))]
    fn from_env(py: Python<'_>, context: Option<String>) -> PyResult<Self> {
        use guildnet_core::client_config::{resolve, Overrides};
        let ep = resolve(&Overrides {
            context,
            ..Default::default()
        })
        .map_err(|e| Error::Other(e.to_string()).into_py_err(py))?;
        let Some(token) = ep.token else {
            let file = ep
                .token_file
                .map(|f| format!(" (no token file at {})", f.display()))
                .unwrap_or_default();
            return Err(Error::Other(format!(
                "no admin token for {}: set ORCHESTRATOR_TOKEN, run `guildnet login URL`, or \
                 start `guildnet up` here{file}",
                ep.url
            ))
            .into_py_err(py));
        };
        let inner = core::OrchestratorClient::new(&ep.url, token)
            .map_err(|e| Error::from(e).into_py_err(py))?;
        Ok(Self { inner })
    }

    /// The orchestrator's base URL.
    #[getter]
    fn url(&self) -> String {
        self.inner.base_url().to_owned()
    }

    /// `GET /health`: `{"status": "ok", "version": ..., "backend": ...}`.
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.clone();
        let h = block_on(py, async move { Ok(c.health().await?) })?;
        dict_of(
            py,
            &[
                ("status", &h.status),
                ("version", &h.version),
                ("backend", &h.backend),
            ],
        )
    }

    /// Schedules `task` (the text handed to the agent's runner) for `org`. Returns the task as
    /// recorded (`Scheduled`); the orchestrator dispatches it right after.
    ///
    /// `repo` is a clone URL the agent checks out before the task (`URL@REF` names the ref
    /// after the last `@` in the URL's path; or pass `ref`); `files` maps paths inside the
    /// checkout to contents the agent writes there first. The orchestrator refuses a URL with
    /// credentials in it (`InvalidFieldError` naming `repo.url`): the forge token belongs to the
    /// orchestrator's configuration.
    #[pyo3(signature = (org, task, agent_hint = None, repo = None, r#ref = None, files = None))]
    #[allow(clippy::too_many_arguments)]
    fn schedule(
        &self,
        py: Python<'_>,
        org: &str,
        task: &str,
        agent_hint: Option<&str>,
        repo: Option<&str>,
        r#ref: Option<&str>,
        files: Option<BTreeMap<String, String>>,
    ) -> PyResult<Task> {
        let org = OrgName::new(org).map_err(|e| Error::from(e).into_py_err(py))?;
        if r#ref.is_some() && repo.is_none() {
            return Err(invalid("ref", "ref needs repo").into_py_err(py));
        }
        let mut req = ScheduleRequest::new(org, task);
        req.agent_hint = agent_hint.map(str::to_owned);
        req.repo = repo.map(|r| match r#ref {
            Some(git_ref) => RepoSpec {
                url: r.to_owned(),
                git_ref: Some(git_ref.to_owned()),
            },
            None => RepoSpec::parse(r),
        });
        req.files = files
            .unwrap_or_default()
            .into_iter()
            .map(|(path, content)| ContextFile { path, content })
            .collect();
        let c = self.inner.clone();
        block_on(py, async move { Ok(c.schedule_request(&req).await?) }).map(Task::from)
    }

    /// Lists tasks, newest first: optionally only one `status` (`"Running"`, ...) or `org`,
    /// at most `limit` (default 100, at most 1000). For more, `iter_tasks()` or `tasks_page()`.
    #[pyo3(signature = (status = None, org = None, limit = None))]
    fn tasks(
        &self,
        py: Python<'_>,
        status: Option<&str>,
        org: Option<&str>,
        limit: Option<usize>,
    ) -> PyResult<Vec<Task>> {
        let q = task_query(status, org, limit, None).map_err(|e| e.into_py_err(py))?;
        let c = self.inner.clone();
        let tasks = block_on(py, async move { Ok(c.tasks(&q).await?) })?;
        Ok(tasks.into_iter().map(Task::from).collect())
    }

    /// One page of tasks, newest first, and the cursor of the next page: `(tasks, cursor)`.
    /// Pass `cursor` back for the next page; it is `None` after the last one. Pages follow the
    /// cursor, not an offset, so tasks scheduled meanwhile neither repeat nor hide others.
    #[pyo3(signature = (status = None, org = None, limit = None, cursor = None))]
    fn tasks_page(
        &self,
        py: Python<'_>,
        status: Option<&str>,
        org: Option<&str>,
        limit: Option<usize>,
        cursor: Option<String>,
    ) -> PyResult<(Vec<Task>, Option<String>)> {
        let q = task_query(status, org, limit, cursor).map_err(|e| e.into_py_err(py))?;
        let c = self.inner.clone();
        let (tasks, next) = block_on(py, async move { Ok(c.tasks_page(&q).await?) })?;
        Ok((tasks.into_iter().map(Task::from).collect(), next))
    }

    /// Every task (optionally only one `status` or `org`), newest first, fetched `page_size`
    /// at a time (default 500, at most 1000) as you iterate.
    #[pyo3(signature = (status = None, org = None, page_size = 500))]
    fn iter_tasks(
        &self,
        py: Python<'_>,
        status: Option<&str>,
        org: Option<&str>,
        page_size: usize,
    ) -> PyResult<TaskPages> {
        let q = task_query(status, org, Some(page_size), None).map_err(|e| e.into_py_err(py))?;
        Ok(TaskPages::new(self.inner.clone(), q))
    }

    /// One task by id.
    fn task(&self, py: Python<'_>, id: &str) -> PyResult<Task> {
        let id = task_id(id).map_err(|e| e.into_py_err(py))?;
        let c = self.inner.clone();
        block_on(py, async move { Ok(c.task(&id).await?) }).map(Task::from)
    }

    /// A task's log. With `follow=True` (the default) an iterator over the log stream (SSE)
    /// that yields `LogLine`s as they arrive and ends when the task finishes (reconnecting
    /// without loss if the connection drops); `after` skips lines up to that sequence number.
    /// With `follow=False` the list of lines stored so far.
    #[pyo3(signature = (id, follow = true, after = 0))]
    fn logs(&self, py: Python<'_>, id: &str, follow: bool, after: u64) -> PyResult<Py<PyAny>> {
        let id = task_id(id).map_err(|e| e.into_py_err(py))?;
        let c = self.inner.clone();
        if follow {
            // Fail here, not at the first next(), when the task does not exist.
            let (c2, id2) = (c.clone(), id.clone());
            block_on(py, async move { Ok(c2.task(&id2).await?) })?;
            let stream =
                LogStream::open(&c, &id, after, FOLLOW_RETRY).map_err(|e| e.into_py_err(py))?;
            return Ok(Py::new(py, stream)?.into_any());
        }
        let lines = block_on(py, async move {
            let mut all = Vec::new();
            let mut last = after;
            // Pages until an empty one, whatever page size the orchestrator uses.
            loop {
                let page = c.logs(&id, last).await?;
                match page.last() {
                    Some(l) => last = l.seq,
                    None => return Ok(all),
                }
                all.extend(page);
            }
        })?;
        let lines: Vec<LogLine> = lines.into_iter().map(LogLine::from).collect();
        Ok(lines.into_pyobject(py)?.into_any().unbind())
    }

    /// Cancels a task that has not finished (its agent is stopped). Cancelling a cancelled
    /// task is a no-op; a finished one raises `ConflictError`.
    fn cancel(&self, py: Python<'_>, id: &str) -> PyResult<Task> {
        let id = task_id(id).map_err(|e| e.into_py_err(py))?;
        let c = self.inner.clone();
        block_on(py, async move { Ok(c.cancel(&id).await?) }).map(Task::from)
    }

    /// Waits until the task is `Succeeded`, `Failed` or `Cancelled` and returns it. Driven by
    /// the orchestrator's server-sent events (the task's terminal status event), not by
    /// polling: it returns as soon as the orchestrator records the end. Raises `GuildNetTimeoutError` (also
    /// a builtin `TimeoutError`) after `timeout` seconds (`None`: wait forever).
    /// `poll_interval` is accepted for compatibility and ignored.
    #[pyo3(signature = (id, timeout = None, poll_interval = None))]
    fn wait(
        &self,
        py: Python<'_>,
        id: &str,
        timeout: Option<f64>,
        poll_interval: Option<f64>,
    ) -> PyResult<Task> {
        let _ = poll_interval;
        let args = (|| -> Result<_, Error> {
            let id = task_id(id)?;
            let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
            Ok((id, timeout))
        })()
        .map_err(|e| e.into_py_err(py))?;
        let (id, timeout) = args;
        let c = self.inner.clone();
        block_on(py, async move { wait_for_end(&c, &id, timeout).await }).map(Task::from)
    }

    /// Follows the orchestrator's events (task and agent events) live, from event id `after`
    /// (0: from the first one recorded). Returns an `EventStream`: iterate it; it does not end
    /// by itself (`close()`, `with`, or `break`).
    #[pyo3(signature = (after = 0))]
    fn events(&self, py: Python<'_>, after: u64) -> PyResult<crate::events::EventStream> {
        crate::events::EventStream::open(&self.inner, after, Duration::from_secs(120))
            .map_err(|e| e.into_py_err(py))
    }

    /// All agents the orchestrator knows, with their last heartbeat.
    fn agents(&self, py: Python<'_>) -> PyResult<Vec<Agent>> {
        let c = self.inner.clone();
        let agents = block_on(py, async move { Ok(c.agents().await?) })?;
        Ok(agents.into_iter().map(Agent::from).collect())
    }

    /// One agent by name.
    fn agent(&self, py: Python<'_>, name: &str) -> PyResult<Agent> {
        let name = AgentName::new(name).map_err(|e| Error::from(e).into_py_err(py))?;
        let c = self.inner.clone();
        block_on(py, async move { Ok(c.agent(&name).await?) }).map(Agent::from)
    }

    /// Registers an org (a DNS-1123 label: lowercase letters, digits, '-').
    fn create_org(&self, py: Python<'_>, name: &str) -> PyResult<Org> {
        let name = OrgName::new(name).map_err(|e| Error::from(e).into_py_err(py))?;
        let c = self.inner.clone();
        block_on(py, async move { Ok(c.create_org(&name).await?) }).map(Org::from)
    }

    /// Removes an org that has no unfinished task (its task history stays).
    fn delete_org(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let name = OrgName::new(name).map_err(|e| Error::from(e).into_py_err(py))?;
        let c = self.inner.clone();
        block_on(py, async move { Ok(c.delete_org(&name).await?) })
    }

    /// All registered orgs.
    fn orgs(&self, py: Python<'_>) -> PyResult<Vec<Org>> {
        let c = self.inner.clone();
        let orgs = block_on(py, async move { Ok(c.orgs().await?) })?;
        Ok(orgs.into_iter().map(Org::from).collect())
    }

    fn __repr__(&self) -> String {
        // Never the token.
        format!("OrchestratorClient(url='{}')", self.inner.base_url())
    }
}

/// Waits for the task's terminal status event on the orchestrator's event stream (no polling),
/// with an optional time limit.
pub(crate) async fn wait_for_end(
    c: &core::OrchestratorClient,
    id: &TaskId,
    timeout: Option<Duration>,
) -> Result<guildnet_core::model::Task, Error> {
    let start = Instant::now();
    match timeout {
        None => Ok(c.wait_finished(id).await?),
        Some(limit) => match tokio::time::timeout(limit, c.wait_finished(id)).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                let status = c
                    .task(id)
                    .await
                    .map(|t| t.status.to_string())
                    .unwrap_or_else(|_| "unfinished".into());
                Err(Error::Timeout(format!(
                    "task {id} is still {status} after {:.1} s",
                    start.elapsed().as_secs_f64()
                )))
            }
        },
    }
}
