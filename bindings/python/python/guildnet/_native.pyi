"""Type stubs of the Rust extension ``guildnet._native`` (re-exported by ``guildnet``)."""

import datetime
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Type, Union, overload

__version__: str

StrPath = Union[str, "os.PathLike[str]"]

class Artifact:
    """Something a task produced: a pull request, a file, a link."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def uri(self) -> str: ...

class Task:
    """A task as the orchestrator reported it (a snapshot; fetch again for news)."""

    @property
    def id(self) -> str: ...
    @property
    def org(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def agent_hint(self) -> Optional[str]: ...
    @property
    def status(
        self,
    ) -> Literal["Scheduled", "Submitted", "Running", "Succeeded", "Failed", "Cancelled"]: ...
    @property
    def agent(self) -> Optional[str]: ...
    @property
    def attempt(self) -> int: ...
    @property
    def fencing(self) -> int: ...
    @property
    def claims(self) -> int: ...
    @property
    def lease_expires_at(self) -> Optional[datetime.datetime]: ...
    @property
    def created_at(self) -> datetime.datetime: ...
    @property
    def updated_at(self) -> datetime.datetime: ...
    @property
    def started_at(self) -> Optional[datetime.datetime]: ...
    @property
    def finished_at(self) -> Optional[datetime.datetime]: ...
    @property
    def exit_code(self) -> Optional[int]: ...
    @property
    def reason(self) -> Optional[str]: ...
    @property
    def artifacts(self) -> List[Artifact]: ...
    @property
    def pr_url(self) -> Optional[str]: ...
    @property
    def repo(self) -> Optional[str]: ...
    @property
    def ref(self) -> Optional[str]: ...
    @property
    def files(self) -> List[str]: ...
    @property
    def done(self) -> bool:
        """True once Succeeded, Failed or Cancelled."""
    @property
    def succeeded(self) -> bool:
        """True when Succeeded."""
    def to_dict(self) -> Dict[str, Any]:
        """The task with the API's (camelCase) field names."""
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class Agent:
    """An agent: the process (or pod) that ran one attempt of a task."""

    @property
    def name(self) -> str: ...
    @property
    def org(self) -> str: ...
    @property
    def task_id(self) -> Optional[str]: ...
    @property
    def version(self) -> Optional[str]: ...
    @property
    def editor_address(self) -> Optional[str]: ...
    @property
    def registered_at(self) -> datetime.datetime: ...
    @property
    def last_seen_at(self) -> datetime.datetime: ...
    @property
    def state(self) -> Dict[str, Any]:
        """What the agent reported in its last heartbeat."""
    def to_dict(self) -> Dict[str, Any]: ...

class LogLine:
    """One line of a task's log; ``str(line)`` is its text."""

    @property
    def id(self) -> int: ...
    @property
    def task_id(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def stream(self) -> Literal["stdout", "stderr", "system"]: ...
    @property
    def line(self) -> str: ...
    @property
    def ts(self) -> datetime.datetime: ...

class Org:
    """An organization registered with the orchestrator."""

    @property
    def name(self) -> str: ...
    @property
    def created_at(self) -> datetime.datetime: ...

class LogStream(Iterator[LogLine]):
    """A followed task log: yields lines as they arrive, stops when the task finishes."""

    def __iter__(self) -> "LogStream": ...
    def __next__(self) -> LogLine: ...
    @property
    def task(self) -> Optional[Task]:
        """The finished task, once the stream ended."""
    @property
    def task_id(self) -> str: ...
    def close(self) -> None:
        """Stops following."""
    def __enter__(self) -> "LogStream": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class TaskPages(Iterator[Task]):
    """Every task matching a filter, page by page along the orchestrator's cursor."""

    def __iter__(self) -> "TaskPages": ...
    def __next__(self) -> Task: ...
    @property
    def cursor(self) -> Optional[str]:
        """Where the next page starts (``None`` once the last page was read)."""

class OrchestratorClient:
    """Client of a GuildNet orchestrator's admin API. Raises ``guildnet.errors`` exceptions."""

    def __init__(self, url: str, token: str) -> None: ...
    @staticmethod
    def from_state_dir(
        url: str = "http://127.0.0.1:8080", state_dir: Optional[StrPath] = None
    ) -> "OrchestratorClient":
        """A client using the admin token stored in the state dir."""
    @property
    def url(self) -> str: ...
    @staticmethod
    def from_env(context: Optional[str] = None) -> "OrchestratorClient":
        """Configured like the guildnet CLI. URL: GUILDNET_URL, else the context's (``context``,
        GUILDNET_CONTEXT, or the current context of ~/.config/guildnet/config.toml as saved by
        ``guildnet login``), else http://127.0.0.1:8080. Token: ORCHESTRATOR_TOKEN, else the
        context's (only for its own URL), else the state dir's token file."""
        ...
    def health(self) -> Dict[str, str]: ...
    def schedule(
        self,
        org: str,
        task: str,
        agent_hint: Optional[str] = None,
        repo: Optional[str] = None,
        ref: Optional[str] = None,
        files: Optional[Dict[str, str]] = None,
    ) -> Task:
        """Schedules a task; returns it as recorded (Scheduled).

        ``repo`` is a clone URL (``URL@REF`` or ``ref=`` names the ref to check out); ``files``
        maps paths inside the checkout to contents written there before the task runs.
        """
    def tasks(
        self,
        status: Optional[str] = None,
        org: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> List[Task]:
        """Lists tasks, newest first (at most ``limit``, default 100, at most 1000)."""
    def tasks_page(
        self,
        status: Optional[str] = None,
        org: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Tuple[List[Task], Optional[str]]:
        """One page of tasks, newest first, and the cursor of the next page (``None`` after
        the last)."""
    def iter_tasks(
        self,
        status: Optional[str] = None,
        org: Optional[str] = None,
        page_size: int = 500,
    ) -> TaskPages:
        """Every matching task, newest first, fetched a page at a time as you iterate."""
    def task(self, id: str) -> Task: ...
    @overload
    def logs(self, id: str, follow: Literal[True] = True, after: int = 0) -> LogStream: ...
    @overload
    def logs(self, id: str, follow: Literal[False], after: int = 0) -> List[LogLine]: ...
    def cancel(self, id: str) -> Task: ...
    def wait(
        self, id: str, timeout: Optional[float] = None, poll_interval: Optional[float] = None
    ) -> Task:
        """Waits until the task finishes (its terminal server-sent event, no polling); raises
        GuildNetTimeoutError after ``timeout`` s. ``poll_interval`` is ignored."""
    def events(self, after: int = 0) -> EventStream:
        """Follows the orchestrator's task and agent events live, from event id ``after``."""
    def agents(self) -> List[Agent]: ...
    def agent(self, name: str) -> Agent: ...
    def create_org(self, name: str) -> Org: ...
    def delete_org(self, name: str) -> None:
        """Removes an org that has no unfinished task (its task history stays)."""
        ...
    def orgs(self) -> List[Org]: ...

class Event:
    """One event of the orchestrator's event stream."""

    @property
    def id(self) -> int: ...
    @property
    def ts(self) -> datetime.datetime: ...
    @property
    def kind(self) -> str:
        """E.g. ``task.scheduled``, ``task.claimed``, ``agent.registered``."""
    @property
    def task_id(self) -> Optional[str]: ...
    @property
    def agent(self) -> Optional[str]: ...
    @property
    def org(self) -> Optional[str]: ...
    @property
    def status(self) -> Optional[str]: ...
    @property
    def message(self) -> Optional[str]: ...

class EventStream(Iterator[Event]):
    """Iterator over live events; does not end by itself (close it, or leave a ``with``)."""

    def __iter__(self) -> Iterator[Event]: ...
    def __next__(self) -> Event: ...
    @property
    def last_id(self) -> int:
        """The id of the last event yielded (resume with ``events(after=last_id)``)."""
    def close(self) -> None: ...
    def __enter__(self) -> "EventStream": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

def state_dir() -> Path:
    """The GuildNet state directory (GUILDNET_STATE_DIR, GUILDNET_HOME/state, ...)."""

def kubeconfig_path(org_name: str, state_dir: Optional[StrPath] = None) -> Path:
    """``<state>/kube/<org>.config``."""

def talosconfig_path(org_name: str, state_dir: Optional[StrPath] = None) -> Path:
    """``<state>/talos/<org>.talosconfig``."""

def find_kubeconfig(org_name: str, state_dir: Optional[StrPath] = None) -> Optional[Path]:
    """The first existing of $KUBECONFIG, <state>/kube/<org>.config, ~/.kube/<org>.config."""

def admin_token_path(state_dir: Optional[StrPath] = None) -> Path:
    """``<state>/orchestrator.token``."""

def agenttask_crd_yaml() -> str:
    """The AgentTask CustomResourceDefinition as YAML."""
