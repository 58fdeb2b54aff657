//! The Python classes for the orchestrator's records: `Task`, `Agent`, `LogLine`, `Org`,
//! `Artifact`. Read-only snapshots of what the orchestrator answered.

use chrono::{DateTime, Utc};
use guildnet_core::model;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Python's `repr()` of a string: single-quoted, with backslashes, quotes and control
/// characters escaped.
pub(crate) fn pyrepr(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `repr()` of an optional string: `'x'` or `None`.
fn opt_repr(v: &Option<String>) -> String {
    match v {
        Some(s) => pyrepr(s),
        None => "None".into(),
    }
}

/// Converts a serde value to Python objects through the `json` module.
fn json_to_py<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// Something a task produced: a pull request, a file, a link.
#[pyclass(frozen, get_all, module = "guildnet")]
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Short name, e.g. `pr`.
    pub name: String,
    /// Kind, e.g. `pr`, `file`, `url`.
    pub kind: String,
    /// Where it is (URL or workspace path).
    pub uri: String,
}

#[pymethods]
impl Artifact {
    fn __repr__(&self) -> String {
        format!(
            "Artifact(name={}, kind={}, uri={})",
            pyrepr(&self.name),
            pyrepr(&self.kind),
            pyrepr(&self.uri)
        )
    }
}

/// A task as the orchestrator reported it.
#[pyclass(frozen, module = "guildnet")]
#[derive(Debug, Clone)]
pub struct Task {
    raw: model::Task,
    /// Task id.
    #[pyo3(get)]
    pub id: String,
    /// Org whose cluster runs it.
    #[pyo3(get)]
    pub org: String,
    /// The task text.
    #[pyo3(get)]
    pub task: String,
    /// Hint recorded with the task.
    #[pyo3(get)]
    pub agent_hint: Option<String>,
    /// `Scheduled`, `Submitted`, `Running`, `Succeeded`, `Failed` or `Cancelled`.
    #[pyo3(get)]
    pub status: String,
    /// Agent of the current attempt.
    #[pyo3(get)]
    pub agent: Option<String>,
    /// Attempt number (1-based).
    #[pyo3(get)]
    pub attempt: u32,
    /// Fencing token of the current claim.
    #[pyo3(get)]
    pub fencing: u64,
    /// Claims granted in total.
    #[pyo3(get)]
    pub claims: u32,
    /// When the current lease expires.
    #[pyo3(get)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    #[pyo3(get)]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[pyo3(get)]
    pub updated_at: DateTime<Utc>,
    /// When the runner started.
    #[pyo3(get)]
    pub started_at: Option<DateTime<Utc>>,
    /// When the task finished.
    #[pyo3(get)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Runner exit code.
    #[pyo3(get)]
    pub exit_code: Option<i32>,
    /// Why it failed, was cancelled or requeued.
    #[pyo3(get)]
    pub reason: Option<String>,
    /// Artifacts reported at completion.
    #[pyo3(get)]
    pub artifacts: Vec<Artifact>,
    /// Pull request URL, when the task opened one.
    #[pyo3(get)]
    pub pr_url: Option<String>,
    /// Clone URL of the task's repository, if it has one.
    #[pyo3(get)]
    pub repo: Option<String>,
    /// The ref checked out (branch, tag or commit), if one was given.
    #[pyo3(get, name = "ref")]
    pub git_ref: Option<String>,
    /// Paths of the context files written into the workspace.
    #[pyo3(get)]
    pub files: Vec<String>,
}

impl From<model::Task> for Task {
    fn from(t: model::Task) -> Self {
        Self {
            id: t.id.to_string(),
            org: t.org.to_string(),
            task: t.task.clone(),
            agent_hint: t.agent_hint.clone(),
            status: t.status.as_str().to_owned(),
            agent: t.agent.as_ref().map(|a| a.to_string()),
            attempt: t.attempt,
            fencing: t.fencing,
            claims: t.claims,
            lease_expires_at: t.lease_expires_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            artifacts: t
                .artifacts
                .iter()
                .map(|a| Artifact {
                    name: a.name.clone(),
                    kind: a.kind.clone(),
                    uri: a.uri.clone(),
                })
                .collect(),
            pr_url: t.pr_url.clone(),
            repo: t.context.repo.as_ref().map(|r| r.url.clone()),
            git_ref: t.context.repo.as_ref().and_then(|r| r.git_ref.clone()),
            files: t.context.files.iter().map(|f| f.path.clone()).collect(),
            raw: t,
        }
    }
}

#[pymethods]
impl Task {
    /// True once the task is `Succeeded`, `Failed` or `Cancelled`.
    #[getter]
    fn done(&self) -> bool {
        self.raw.status.is_terminal()
    }

    /// True when the task `Succeeded`.
    #[getter]
    fn succeeded(&self) -> bool {
        self.raw.status == model::TaskStatus::Succeeded
    }

    /// The task as a dict with the API's (camelCase) field names.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.raw)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Task>()
            .map(|o| o.get().raw == self.raw)
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.id.hash(&mut h);
        self.updated_at.hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        let exit = self
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "None".into());
        format!(
            "Task(id={}, org={}, status={}, attempt={}, agent={}, exit_code={exit}, pr_url={})",
            pyrepr(&self.id),
            pyrepr(&self.org),
            pyrepr(&self.status),
            self.attempt,
            opt_repr(&self.agent),
            opt_repr(&self.pr_url)
        )
    }
}

/// An agent: the process (or pod) that ran one attempt of a task.
#[pyclass(frozen, module = "guildnet")]
#[derive(Debug, Clone)]
pub struct Agent {
    raw: model::Agent,
    /// Agent name.
    #[pyo3(get)]
    pub name: String,
    /// Org it runs for.
    #[pyo3(get)]
    pub org: String,
    /// The task it was started for.
    #[pyo3(get)]
    pub task_id: Option<String>,
    /// Version it reported.
    #[pyo3(get)]
    pub version: Option<String>,
    /// Where its editor (code-server) listens, as it advertised it.
    #[pyo3(get)]
    pub editor_address: Option<String>,
    /// First registration.
    #[pyo3(get)]
    pub registered_at: DateTime<Utc>,
    /// Last heartbeat.
    #[pyo3(get)]
    pub last_seen_at: DateTime<Utc>,
}

impl From<model::Agent> for Agent {
    fn from(a: model::Agent) -> Self {
        Self {
            name: a.name.to_string(),
            org: a.org.to_string(),
            task_id: a.task_id.as_ref().map(|t| t.to_string()),
            version: a.version.clone(),
            editor_address: a.editor_address.clone(),
            registered_at: a.registered_at,
            last_seen_at: a.last_seen_at,
            raw: a,
        }
    }
}

#[pymethods]
impl Agent {
    /// The state the agent reported in its last heartbeat (a dict).
    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.raw.state)
    }

    /// The agent as a dict with the API's (camelCase) field names.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.raw)
    }

    fn __repr__(&self) -> String {
        format!(
            "Agent(name={}, org={}, task_id={}, last_seen_at='{}')",
            pyrepr(&self.name),
            pyrepr(&self.org),
            opt_repr(&self.task_id),
            self.last_seen_at.to_rfc3339()
        )
    }
}

/// One line of a task's log.
#[pyclass(frozen, get_all, module = "guildnet")]
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Global, increasing id.
    pub id: u64,
    /// Task it belongs to.
    pub task_id: String,
    /// Agent that sent it.
    pub agent: String,
    /// Per-task sequence number (1-based).
    pub seq: u64,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// The text, without its newline.
    pub line: String,
    /// When the agent read it.
    pub ts: DateTime<Utc>,
}

impl From<model::LogLine> for LogLine {
    fn from(l: model::LogLine) -> Self {
        Self {
            id: l.id,
            task_id: l.task_id.to_string(),
            agent: l.agent.to_string(),
            seq: l.seq,
            stream: l.stream.as_str().to_owned(),
            line: l.line,
            ts: l.ts,
        }
    }
}

#[pymethods]
impl LogLine {
    fn __str__(&self) -> String {
        self.line.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "LogLine(task_id={}, seq={}, stream={}, line={})",
            pyrepr(&self.task_id),
            self.seq,
            pyrepr(&self.stream),
            pyrepr(&self.line)
        )
    }
}

/// An organization registered with the orchestrator.
#[pyclass(frozen, get_all, module = "guildnet")]
#[derive(Debug, Clone)]
pub struct Org {
    /// Its name.
    pub name: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

impl From<model::Org> for Org {
    fn from(o: model::Org) -> Self {
        Self {
            name: o.name.to_string(),
            created_at: o.created_at,
        }
    }
}

#[pymethods]
impl Org {
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Org>()
            .map(|o| o.get().name == self.name && o.get().created_at == self.created_at)
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "Org(name={}, created_at='{}')",
            pyrepr(&self.name),
            self.created_at.to_rfc3339()
        )
    }
}

/// A dict built from keyword pairs (used by `health()`).
pub(crate) fn dict_of<'py>(
    py: Python<'py>,
    pairs: &[(&str, &str)],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in pairs {
        d.set_item(k, v)?;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::pyrepr;

    #[test]
    fn repr_quotes_like_python() {
        assert_eq!(pyrepr("acme"), "'acme'");
        assert_eq!(pyrepr("it's\n"), "'it\\'s\\n'");
        assert_eq!(pyrepr("a\\b\u{1b}"), "'a\\\\b\\x1b'");
    }
}

/// One event of the orchestrator's event stream.
#[pyclass(frozen, get_all, module = "guildnet")]
#[derive(Debug, Clone)]
pub struct Event {
    /// Increasing id (resume with `events(after=id)`).
    pub id: u64,
    /// When it happened.
    pub ts: DateTime<Utc>,
    /// Kind, e.g. `task.scheduled`, `task.claimed`, `agent.registered`.
    pub kind: String,
    /// Task concerned, if any.
    pub task_id: Option<String>,
    /// Agent concerned, if any.
    pub agent: Option<String>,
    /// Org concerned, if any.
    pub org: Option<String>,
    /// The task's status after the event, for task events.
    pub status: Option<String>,
    /// Human-readable detail.
    pub message: Option<String>,
}

impl From<model::Event> for Event {
    fn from(e: model::Event) -> Self {
        Self {
            id: e.id,
            ts: e.ts,
            kind: e.kind,
            task_id: e.task_id.map(|t| t.to_string()),
            agent: e.agent.map(|a| a.to_string()),
            org: e.org.map(|o| o.to_string()),
            status: e.status.map(|s| s.to_string()),
            message: e.message,
        }
    }
}

#[pymethods]
impl Event {
    fn __repr__(&self) -> String {
        format!(
            "Event(id={}, kind={}, task_id={}, status={})",
            self.id,
            pyrepr(&self.kind),
            opt_repr(&self.task_id),
            opt_repr(&self.status)
        )
    }
}
