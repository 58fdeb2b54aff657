"""The event stream, wait() on the server's `end` event, and the asyncio client, against the real
orchestrator of conftest.py."""

import ast
import asyncio
import inspect
import time
from pathlib import Path

import pytest

import guildnet
from guildnet.aio import AsyncOrchestratorClient
from conftest import ORG


def test_events_follow_a_task_to_its_end(client):
    start_id = 0
    with client.events() as events:
        task = client.schedule(ORG, "echo evented")
        kinds = []
        for ev in events:
            assert isinstance(ev, guildnet.Event)
            assert ev.id > start_id
            start_id = ev.id
            if ev.task_id == task.id:
                kinds.append(ev.kind)
                if ev.status == "Succeeded":
                    break
    assert kinds[0] == "task.scheduled", kinds
    assert events.last_id == start_id
    # Resuming after the last id yields only newer events.
    later = client.schedule(ORG, "true")
    with client.events(after=start_id) as events:
        first = next(events)
        assert first.id > start_id
    client.wait(later.id, timeout=30)


def test_wait_is_driven_by_server_sent_events_not_by_polling(client):
    task = client.schedule(ORG, "sleep 0.3; echo done")
    start = time.monotonic()
    # poll_interval is ignored: with polling every 60 s this would take a minute.
    done = client.wait(task.id, timeout=60, poll_interval=60)
    assert done.status == "Succeeded"
    assert time.monotonic() - start < 30
    with pytest.raises(guildnet.NotFoundError):
        client.wait("0" * 32, timeout=5)


def test_async_client(orchestrator):
    async def main():
        async with AsyncOrchestratorClient(orchestrator.url, orchestrator.token) as c:
            assert (await c.health())["status"] == "ok"
            tasks = [
                await c.schedule(ORG, f"sleep 0.5; echo async {i}") for i in range(3)
            ]
            # Three waits at once: concurrent, not one after the other.
            start = time.monotonic()
            done = await asyncio.gather(*(c.wait(t.id, timeout=60) for t in tasks))
            assert [d.status for d in done] == ["Succeeded"] * 3
            lines = [l.line async for l in c.logs(tasks[0].id)]
            assert "async 0" in lines
            assert "async 1" in [l.line for l in await c.log_lines(tasks[1].id)]
            # Breaking out of events() closes the stream.
            async for ev in c.events():
                assert ev.kind
                break
            with pytest.raises(guildnet.NotFoundError):
                await c.task("0" * 32)
            assert tasks[2].id in [t.id for t in await c.tasks(org=ORG, limit=100)]
            return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert elapsed < 60


def test_cancelling_an_async_follow_closes_it(orchestrator):
    async def main():
        c = AsyncOrchestratorClient(orchestrator.url, orchestrator.token)
        task = await c.schedule(ORG, "echo first; sleep 30")

        async def follow():
            async for _ in c.logs(task.id):
                pass

        f = asyncio.ensure_future(follow())
        await asyncio.sleep(1)
        f.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(f, 10)
        await c.cancel(task.id)

    asyncio.run(main())


def _stub_names(tree: ast.Module):
    classes, funcs = {}, set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef,))
            }
        elif isinstance(node, ast.FunctionDef):
            funcs.add(node.name)
    return classes, funcs


def test_type_stubs_cover_the_native_module():
    stub = Path(guildnet.__file__).with_name("_native.pyi")
    classes, funcs = _stub_names(ast.parse(stub.read_text()))
    import guildnet._native as native

    for name, obj in vars(native).items():
        if name.startswith("_"):
            continue
        if inspect.isclass(obj):
            assert name in classes, f"class {name} missing from _native.pyi"
            for attr in dir(obj):
                if attr.startswith("_"):
                    continue
                assert attr in classes[name], f"{name}.{attr} missing from _native.pyi"
        elif callable(obj):
            assert name in funcs, f"function {name} missing from _native.pyi"
    # And the async client has every public call of the sync one.
    sync = {a for a in dir(guildnet.OrchestratorClient) if not a.startswith("_")}
    aio = {a for a in dir(AsyncOrchestratorClient) if not a.startswith("_")}
    assert sync - {"from_state_dir", "from_env"} <= aio, sync - aio
