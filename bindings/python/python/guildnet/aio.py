"""asyncio client: :class:`AsyncOrchestratorClient`, the same calls as
:class:`guildnet.OrchestratorClient`, awaitable.

>>> from guildnet.aio import AsyncOrchestratorClient
>>> async with AsyncOrchestratorClient.from_env() as client:
...     task = await client.schedule("default", "Add a CONTRIBUTING.md")
...     async for line in client.logs(task.id):
...         print(line.line)
...     done = await client.wait(task.id, timeout=600)

Each call runs the Rust client on a worker thread (``asyncio.to_thread``; the Rust side releases
the GIL while it waits on the network), so the event loop never blocks and many calls run
concurrently. Cancelling an ``async for`` over ``logs()`` or ``events()`` closes the stream.
"""

import asyncio
from types import TracebackType
from typing import (
    AsyncIterator,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from ._native import (
    Agent,
    Event,
    EventStream,
    LogLine,
    LogStream,
    OrchestratorClient,
    Org,
    Task,
)

__all__ = ["AsyncOrchestratorClient"]

T = TypeVar("T")
_Stream = Union[LogStream, EventStream]


async def _call(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


_END = object()


def _next_or_end(stream: _Stream) -> object:
    # StopIteration cannot cross an asyncio future: map it to a sentinel.
    return next(stream, _END)


async def _iterate(stream: _Stream) -> AsyncIterator[object]:
    try:
        while True:
            item = await asyncio.to_thread(_next_or_end, stream)
            if item is _END:
                return
            yield item
    finally:
        # Also on cancellation or `break`: wakes the worker thread blocked in next().
        await asyncio.to_thread(stream.close)


class AsyncOrchestratorClient:
    """Client of a GuildNet orchestrator's admin API for asyncio code. Raises the same
    ``guildnet.errors`` exceptions as the sync client."""

    def __init__(self, url: str, token: str) -> None:
        self._client = OrchestratorClient(url, token)

    @classmethod
    def wrap(cls, client: OrchestratorClient) -> "AsyncOrchestratorClient":
        """An async client sharing ``client``'s connection pool."""
        obj = cls.__new__(cls)
        obj._client = client
        return obj

    @classmethod
    def from_env(cls, context: Optional[str] = None) -> "AsyncOrchestratorClient":
        """Configured like the guildnet CLI (see ``OrchestratorClient.from_env``)."""
        return cls.wrap(OrchestratorClient.from_env(context))

    @classmethod
    def from_state_dir(
        cls, url: str = "http://127.0.0.1:8080", state_dir: Optional[str] = None
    ) -> "AsyncOrchestratorClient":
        """A client using the admin token stored in the state dir."""
        return cls.wrap(OrchestratorClient.from_state_dir(url, state_dir))

    @property
    def sync(self) -> OrchestratorClient:
        """The blocking client underneath."""
        return self._client

    @property
    def url(self) -> str:
        return self._client.url

    async def __aenter__(self) -> "AsyncOrchestratorClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        return None

    async def health(self) -> Dict[str, str]:
        return await _call(self._client.health)

    async def schedule(
        self,
        org: str,
        task: str,
        agent_hint: Optional[str] = None,
        repo: Optional[str] = None,
        ref: Optional[str] = None,
        files: Optional[Dict[str, str]] = None,
    ) -> Task:
        """Schedules a task (see ``OrchestratorClient.schedule``)."""
        return await _call(
            self._client.schedule, org, task, agent_hint, repo, ref, files
        )

    async def tasks(
        self,
        status: Optional[str] = None,
        org: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> List[Task]:
        return await _call(self._client.tasks, status, org, limit)

    async def tasks_page(
        self,
        status: Optional[str] = None,
        org: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Tuple[List[Task], Optional[str]]:
        """One page of tasks and the cursor of the next (``None`` after the last)."""
        return await _call(self._client.tasks_page, status, org, limit, cursor)

    async def iter_tasks(
        self,
        status: Optional[str] = None,
        org: Optional[str] = None,
        page_size: int = 500,
    ) -> AsyncIterator[Task]:
        """Every matching task, newest first, a page at a time along the cursor."""
        cursor: Optional[str] = None
        while True:
            page, cursor = await self.tasks_page(status, org, page_size, cursor)
            for task in page:
                yield task
            if cursor is None:
                return

    async def task(self, id: str) -> Task:
        return await _call(self._client.task, id)

    async def log_lines(self, id: str, after: int = 0) -> List[LogLine]:
        """The lines stored so far (no following)."""
        return await _call(self._client.logs, id, False, after)

    async def logs(self, id: str, after: int = 0) -> AsyncIterator[LogLine]:
        """Follows the task's log until the task finishes."""
        stream = await _call(self._client.logs, id, True, after)
        async for line in _iterate(stream):
            yield line  # type: ignore[misc]

    async def events(self, after: int = 0) -> AsyncIterator[Event]:
        """Follows the orchestrator's events live (does not end by itself)."""
        stream = await _call(self._client.events, after)
        async for ev in _iterate(stream):
            yield ev  # type: ignore[misc]

    async def cancel(self, id: str) -> Task:
        return await _call(self._client.cancel, id)

    async def wait(self, id: str, timeout: Optional[float] = None) -> Task:
        """Waits until the task finishes (its terminal server-sent event)."""
        return await _call(self._client.wait, id, timeout)

    async def agents(self) -> List[Agent]:
        return await _call(self._client.agents)

    async def agent(self, name: str) -> Agent:
        return await _call(self._client.agent, name)

    async def create_org(self, name: str) -> Org:
        return await _call(self._client.create_org, name)

    async def delete_org(self, name: str) -> None:
        await _call(self._client.delete_org, name)

    async def orgs(self) -> List[Org]:
        return await _call(self._client.orgs)

    def __repr__(self) -> str:
        return f"AsyncOrchestratorClient(url={self.url!r})"
