"""Exceptions raised by the guildnet client.

Every error derives from :class:`GuildNetError` and carries:

- ``message``: what went wrong (never secret material),
- ``status``: the HTTP status when the orchestrator answered (``None`` otherwise),
- ``code``: the orchestrator's error code (``not_found``, ``unknown_org``, ...) or ``None``,
- ``field``: the input field at fault, when known.
"""

from typing import Optional

__all__ = [
    "GuildNetError",
    "AuthError",
    "NotFoundError",
    "InvalidInputError",
    "ConflictError",
    "GuildNetConnectionError",
    "GuildNetTimeoutError",
]


class GuildNetError(Exception):
    """Base class of every guildnet error."""

    message: str
    status: Optional[int]
    code: Optional[str]
    field: Optional[str]

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        code: Optional[str] = None,
        field: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field

    def __str__(self) -> str:
        if self.status is not None:
            return f"{self.status} {self.code or 'error'}: {self.message}"
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"code={self.code!r}, field={self.field!r})"
        )


class AuthError(GuildNetError):
    """The orchestrator refused the token (HTTP 401 or 403)."""


class NotFoundError(GuildNetError):
    """No such task, agent or org (HTTP 404)."""


class InvalidInputError(GuildNetError, ValueError):
    """A value was rejected: by the client before sending (``status`` is ``None``) or by the
    orchestrator (HTTP 400, 413, 415 or 422). ``field`` names the argument or JSON field."""


class ConflictError(GuildNetError):
    """The request conflicts with the current state (HTTP 409), e.g. cancelling a finished
    task or creating an org that exists."""


class GuildNetConnectionError(GuildNetError, ConnectionError):
    """The orchestrator could not be reached, or the connection broke. Also a builtin
    :class:`ConnectionError`."""


class GuildNetTimeoutError(GuildNetError, TimeoutError):
    """:meth:`OrchestratorClient.wait` ran out of time. Also a builtin :class:`TimeoutError`."""
