"""GuildNet for Python: schedule AI coding-agent tasks on a GuildNet orchestrator, follow their
logs and wait for their outcomes.

>>> from guildnet import OrchestratorClient
>>> client = OrchestratorClient("http://127.0.0.1:8080", token)
>>> task = client.schedule("acme", "Add a CONTRIBUTING.md")
>>> for line in client.logs(task.id):
...     print(line.line)
>>> client.wait(task.id, timeout=600).status
'Succeeded'

``guildnet.aio.AsyncOrchestratorClient`` is the asyncio twin; ``client.events()`` follows the
orchestrator's events; ``OrchestratorClient.from_env()`` reads GUILDNET_URL/ORCHESTRATOR_TOKEN or
the context saved by ``guildnet login``.

The client is implemented in Rust (``guildnet._native``, on the ``guildnet-core`` SDK). Calls
block the calling thread with the GIL released, so other Python threads keep running.
"""

from ._native import (
    Agent,
    Artifact,
    Event,
    EventStream,
    LogLine,
    LogStream,
    OrchestratorClient,
    Org,
    Task,
    TaskPages,
    __version__,
    admin_token_path,
    agenttask_crd_yaml,
    find_kubeconfig,
    kubeconfig_path,
    state_dir,
    talosconfig_path,
)
from .errors import (
    AuthError,
    ConflictError,
    GuildNetConnectionError,
    GuildNetError,
    GuildNetTimeoutError,
    InvalidInputError,
    NotFoundError,
)

from .aio import AsyncOrchestratorClient

#: Task statuses, in lifecycle order.
TASK_STATUSES = ("Scheduled", "Submitted", "Running", "Succeeded", "Failed", "Cancelled")

__all__ = [
    "Agent",
    "Artifact",
    "AsyncOrchestratorClient",
    "AuthError",
    "ConflictError",
    "Event",
    "EventStream",
    "GuildNetConnectionError",
    "GuildNetError",
    "GuildNetTimeoutError",
    "InvalidInputError",
    "LogLine",
    "LogStream",
    "NotFoundError",
    "OrchestratorClient",
    "Org",
    "TASK_STATUSES",
    "Task",
    "TaskPages",
    "__version__",
    "admin_token_path",
    "agenttask_crd_yaml",
    "find_kubeconfig",
    "kubeconfig_path",
    "state_dir",
    "talosconfig_path",
]
