"""Rust errors become typed Python exceptions carrying status, code, field and message."""

import pytest

import guildnet
from conftest import ORG, free_port

UNKNOWN_TASK = "t" + "0" * 32


def test_wrong_token_is_auth_error(orchestrator):
    bad = guildnet.OrchestratorClient(orchestrator.url, "not-the-token")
    with pytest.raises(guildnet.AuthError) as err:
        bad.tasks()
    assert err.value.status == 401
    assert isinstance(err.value, guildnet.GuildNetError)
    assert "not-the-token" not in str(err.value)
    assert str(err.value).startswith("401 ")


def test_unknown_task_is_not_found(client):
    with pytest.raises(guildnet.NotFoundError) as err:
        client.task(UNKNOWN_TASK)
    assert err.value.status == 404
    assert UNKNOWN_TASK in err.value.message
    with pytest.raises(guildnet.NotFoundError):
        client.cancel(UNKNOWN_TASK)
    # Following an unknown task fails at once, not at the first next().
    with pytest.raises(guildnet.NotFoundError):
        client.logs(UNKNOWN_TASK)


def test_bad_org_name_is_invalid_input_before_any_request(client):
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.schedule("Bad_Org", "echo")
    assert err.value.field == "org"
    assert err.value.status is None
    assert isinstance(err.value, ValueError)
    assert "lowercase" in err.value.message
    with pytest.raises(guildnet.InvalidInputError):
        client.create_org("-nope")
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.task("../etc/passwd")
    assert err.value.field == "id"
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.tasks(status="Done")
    assert err.value.field == "status"


def test_server_side_validation_is_invalid_input(client):
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.schedule("nope", "echo")
    assert (err.value.status, err.value.code, err.value.field) == (422, "unknown_org", "org")
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.schedule(ORG, "   ")
    assert err.value.status == 422 and err.value.field == "task"
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.tasks(limit=5000)
    assert err.value.status == 422 and err.value.field == "limit"


def test_dead_port_is_connection_error():
    c = guildnet.OrchestratorClient(f"http://127.0.0.1:{free_port()}", "t")
    with pytest.raises(guildnet.GuildNetConnectionError) as err:
        c.orgs()
    assert isinstance(err.value, ConnectionError)
    assert isinstance(err.value, guildnet.GuildNetError)
    assert err.value.status is None
    assert "127.0.0.1" in err.value.message


def test_bad_url_and_empty_token_are_rejected():
    with pytest.raises(guildnet.InvalidInputError) as err:
        guildnet.OrchestratorClient("ftp://example.invalid", "t")
    assert err.value.field == "url"
    with pytest.raises(guildnet.InvalidInputError) as err:
        guildnet.OrchestratorClient("http://127.0.0.1:1", " ")
    assert err.value.field == "token"


def test_exception_repr_and_hierarchy():
    e = guildnet.NotFoundError("task x not found", 404, "not_found", None)
    assert repr(e) == (
        "NotFoundError(message='task x not found', status=404, code='not_found', field=None)"
    )
    assert str(e) == "404 not_found: task x not found"
    for cls in (
        guildnet.AuthError,
        guildnet.NotFoundError,
        guildnet.InvalidInputError,
        guildnet.ConflictError,
        guildnet.GuildNetConnectionError,
        guildnet.GuildNetTimeoutError,
    ):
        assert issubclass(cls, guildnet.GuildNetError)
