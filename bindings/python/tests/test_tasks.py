"""Scheduling, waiting, logs (stored and followed), cancel, agents and orgs against a real
orchestrator."""

import datetime
import threading
import time

import pytest

import guildnet
from conftest import ORG, wait_status


def test_health_and_client_repr_hide_the_token(orchestrator, client):
    assert client.health()["backend"] == "local"
    assert client.health()["status"] == "ok"
    assert repr(client) == f"OrchestratorClient(url='{orchestrator.url}')"
    assert orchestrator.token not in repr(client)
    assert client.url == orchestrator.url


def test_schedule_then_wait_succeeds(client):
    task = client.schedule(ORG, "echo hello; echo world", agent_hint="tester")
    assert task.status == "Scheduled"
    assert task.org == ORG and task.agent_hint == "tester" and task.attempt == 1
    assert not task.done
    assert repr(task).startswith(f"Task(id='{task.id}', org='acme', status='Scheduled'")

    done = client.wait(task.id, timeout=30)
    assert done.status == "Succeeded", done.reason
    assert done.succeeded and done.done
    assert done.exit_code == 0
    assert done.claims == 1 and done.fencing == 1
    assert isinstance(done.finished_at, datetime.datetime)
    assert done.finished_at.tzinfo is not None
    assert done.started_at <= done.finished_at
    assert done.agent is not None and done.agent.startswith("agent-")
    assert done.to_dict()["status"] == "Succeeded"
    assert done.to_dict()["id"] == task.id
    assert client.task(task.id) == done

    assert task.id in [t.id for t in client.tasks(org=ORG)]
    assert task.id in [t.id for t in client.tasks(status="Succeeded", limit=1000)]
    assert all(t.status == "Succeeded" for t in client.tasks(status="Succeeded"))
    assert len(client.tasks(limit=1)) == 1


def test_failing_task_reports_exit_code(client):
    task = client.schedule(ORG, "echo bad >&2; exit 7")
    done = client.wait(task.id, timeout=30)
    assert done.status == "Failed"
    assert done.exit_code == 7
    assert not done.succeeded
    stderr = [l.line for l in client.logs(task.id, follow=False) if l.stream == "stderr"]
    assert stderr == ["bad"]


def test_stored_logs_in_order_with_after(client):
    script = "for i in 1 2 3 4 5; do echo line-$i; done; echo oops >&2"
    task = client.schedule(ORG, script)
    client.wait(task.id, timeout=30)
    lines = client.logs(task.id, follow=False)
    assert isinstance(lines, list)
    out = [l.line for l in lines if l.stream == "stdout"]
    assert out == [f"line-{i}" for i in range(1, 6)]
    assert [l.line for l in lines if l.stream == "stderr"] == ["oops"]
    seqs = [l.seq for l in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(l.task_id == task.id for l in lines)
    first = lines[0]
    assert str(first) == first.line
    assert repr(first).startswith(f"LogLine(task_id='{task.id}', seq={first.seq}")
    later = client.logs(task.id, follow=False, after=lines[2].seq)
    assert [l.seq for l in later] == seqs[3:]


def test_follow_yields_lines_live_and_ends_with_the_task(client):
    task = client.schedule(ORG, "echo first; sleep 2; echo second")
    stream = client.logs(task.id)
    assert isinstance(stream, guildnet.LogStream)
    assert repr(stream) == f"LogStream(task_id='{task.id}', following)"
    seen = []
    for line in stream:
        if line.stream != "stdout":
            continue
        seen.append(line.line)
        if line.line == "first":
            # The line arrived while the task was still running: streamed, not replayed.
            assert not client.task(task.id).done
    assert seen == ["first", "second"]
    assert stream.task is not None and stream.task.status == "Succeeded"
    assert "ended, status='Succeeded'" in repr(stream)
    # A finished stream stays finished.
    assert list(stream) == []
    # Following a finished task replays its stored lines and ends.
    replay = [l.line for l in client.logs(task.id, follow=True) if l.stream == "stdout"]
    assert replay == ["first", "second"]


def test_close_stops_following(client):
    task = client.schedule(ORG, "echo one; sleep 30")
    with client.logs(task.id) as stream:
        first = next(l for l in stream if l.stream == "stdout")
        assert first.line == "one"
    assert list(stream) == []
    assert stream.task is None
    client.cancel(task.id)


def test_close_from_another_thread_ends_a_blocked_next(client):
    task = client.schedule(ORG, "echo one; sleep 30")
    stream = client.logs(task.id)
    assert next(l for l in stream if l.stream == "stdout").line == "one"
    closer = threading.Timer(0.3, stream.close)
    closer.start()
    start = time.monotonic()
    rest = list(stream)  # blocks: the task sleeps; close() from the timer thread ends it
    assert time.monotonic() - start < 5
    assert [l.line for l in rest if l.stream == "stdout"] == []
    closer.join()
    client.cancel(task.id)


def test_cancel_a_running_task(client):
    task = client.schedule(ORG, "echo started; sleep 60")
    wait_status(client, task.id, "Running")
    cancelled = client.cancel(task.id)
    assert cancelled.status == "Cancelled"
    assert cancelled.reason == "cancelled by admin"
    assert client.wait(task.id, timeout=10).status == "Cancelled"
    # Cancelling again is a no-op; a finished task cannot be cancelled.
    assert client.cancel(task.id).status == "Cancelled"
    ok = client.schedule(ORG, "true")
    client.wait(ok.id, timeout=30)
    with pytest.raises(guildnet.ConflictError) as err:
        client.cancel(ok.id)
    assert err.value.status == 409


def test_wait_times_out(client):
    task = client.schedule(ORG, "sleep 60")
    start = time.monotonic()
    with pytest.raises(guildnet.GuildNetTimeoutError) as err:
        client.wait(task.id, timeout=0.5)
    assert 0.4 < time.monotonic() - start < 5
    assert isinstance(err.value, TimeoutError)
    assert isinstance(err.value, guildnet.GuildNetError)
    assert task.id in err.value.message
    assert err.value.status is None
    client.cancel(task.id)
    with pytest.raises(guildnet.InvalidInputError):
        client.wait(task.id, timeout=-1)


def test_agents_report_their_task(client):
    task = client.schedule(ORG, "echo hi")
    done = client.wait(task.id, timeout=30)
    agents = {a.name: a for a in client.agents()}
    assert done.agent in agents
    agent = client.agent(done.agent)
    assert agent.task_id == task.id
    assert agent.org == ORG
    assert agent.last_seen_at >= agent.registered_at
    assert isinstance(agent.state, dict)
    assert repr(agent).startswith(f"Agent(name='{agent.name}', org='acme', task_id='{task.id}'")
    with pytest.raises(guildnet.NotFoundError):
        client.agent("agent-nobody-1")


def test_orgs(client):
    org = client.create_org("beta")
    assert org.name == "beta"
    assert repr(org).startswith("Org(name='beta', created_at='")
    names = [o.name for o in client.orgs()]
    assert "acme" in names and "beta" in names
    with pytest.raises(guildnet.ConflictError) as err:
        client.create_org("beta")
    assert err.value.code == "already_exists"
    t = client.schedule("beta", "echo in beta")
    assert client.wait(t.id, timeout=30).status == "Succeeded"
    assert [x.id for x in client.tasks(org="beta")] == [t.id]
    # Deleting keeps the history; an org with an unfinished task cannot go.
    client.delete_org("beta")
    assert "beta" not in [o.name for o in client.orgs()]
    assert [x.id for x in client.tasks(org="beta")] == [t.id]
    with pytest.raises(guildnet.NotFoundError):
        client.delete_org("beta")


def test_calls_release_the_gil(client):
    """Another Python thread keeps running while a call blocks in Rust."""
    task = client.schedule(ORG, "sleep 1.5")
    progress = {"n": 0}
    stop = threading.Event()

    def count():
        while not stop.is_set():
            progress["n"] += 1

    worker = threading.Thread(target=count)
    worker.start()
    time.sleep(0.05)
    before_n, before_t = progress["n"], time.monotonic()
    client.wait(task.id, timeout=30)
    counted, blocked_for = progress["n"] - before_n, time.monotonic() - before_t
    stop.set()
    worker.join()
    assert blocked_for > 1.0
    # Had the call held the GIL, the counter could not move while it blocked.
    assert counted > 100_000, counted


def test_concurrent_waits_overlap(client):
    """Two threads waiting at once take about as long as one: the calls run in parallel."""
    tasks = [client.schedule(ORG, "sleep 1.5") for _ in range(2)]
    results = {}

    def wait(tid):
        results[tid] = client.wait(tid, timeout=30).status

    start = time.monotonic()
    threads = [threading.Thread(target=wait, args=(t.id,)) for t in tasks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert set(results.values()) == {"Succeeded"}
    assert time.monotonic() - start < 2 * 1.5 + 1.0


def _bare_repo(root) -> str:
    """A bare git repository with one commit on main (README.md), as a file:// URL."""
    import subprocess

    def git(cwd, *args):
        subprocess.run(
            ["git", "-c", "user.name=T", "-c", "user.email=t@example.invalid", *args],
            cwd=cwd,
            check=True,
            capture_output=True,
        )

    bare, seed = root / "app.git", root / "seed"
    bare.mkdir()
    seed.mkdir()
    git(bare, "init", "-q", "--bare", "-b", "main")
    git(seed, "init", "-q", "-b", "main")
    (seed / "README.md").write_text("# app from the repo\n")
    git(seed, "add", "README.md")
    git(seed, "commit", "-q", "-m", "initial")
    git(seed, "push", "-q", str(bare), "main:refs/heads/main")
    return f"file://{bare}"


def test_schedule_with_repo_ref_and_files(client, tmp_path):
    url = _bare_repo(tmp_path)
    task = client.schedule(
        ORG,
        ": read the context\ncat README.md\ncat notes/ctx.md\n",
        repo=f"{url}@main",
        files={"notes/ctx.md": "context from python\n"},
    )
    assert (task.repo, task.ref, task.files) == (url, "main", ["notes/ctx.md"])
    assert task.to_dict()["context"]["repo"] == {"url": url, "ref": "main"}
    done = client.wait(task.id, timeout=60)
    assert done.status == "Succeeded", done.reason
    out = [l.line for l in client.logs(task.id, follow=False) if l.stream == "stdout"]
    assert out == ["# app from the repo", "context from python"], out

    same = client.schedule(ORG, "true", repo=url, ref="main")
    assert (same.repo, same.ref) == (url, "main")
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.schedule(ORG, "x", ref="main")
    assert err.value.field == "ref"


def test_credentials_in_repo_urls_are_refused(client):
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.schedule(ORG, "x", repo="https://bot:ghp_secret123@forge.example/acme/app.git")
    assert (err.value.status, err.value.field) == (422, "repo.url")
    assert "ghp_secret123" not in str(err.value)
    with pytest.raises(guildnet.InvalidInputError) as err:
        client.schedule(ORG, "x", files={"../escape": "x"})
    assert err.value.field == "files[0].path"


def test_iter_tasks_follows_the_cursor_across_pages(client):
    org = "pages"
    client.create_org(org)
    ids = [client.schedule(org, f"echo page-{i}").id for i in range(7)]
    # Pages of 3: 3 + 3 + 1, newest first, each task exactly once.
    first, cursor = client.tasks_page(org=org, limit=3)
    assert [t.id for t in first] == ids[::-1][:3]
    assert cursor is not None
    second, cursor2 = client.tasks_page(org=org, limit=3, cursor=cursor)
    assert [t.id for t in second] == ids[::-1][3:6]

    pages = client.iter_tasks(org=org, page_size=3)
    # A task scheduled after the iteration started is newer than the cursor: not yielded, and
    # no page shifts because of it.
    seen = [next(pages).id]
    client.schedule(org, "echo late")
    seen += [t.id for t in pages]
    assert seen == ids[::-1]
    assert pages.cursor is None

    with pytest.raises(guildnet.InvalidInputError):
        client.tasks_page(org=org, cursor="not-a-cursor")
    with pytest.raises(guildnet.InvalidInputError):
        client.tasks_page(status="sleeping")


def test_async_iter_tasks_matches_the_sync_one(client):
    import asyncio

    org = "apages"
    client.create_org(org)
    ids = [client.schedule(org, f"echo a-{i}").id for i in range(5)]

    async def collect():
        aclient = guildnet.AsyncOrchestratorClient.wrap(client)
        return [t.id async for t in aclient.iter_tasks(org=org, page_size=2)]

    assert asyncio.run(collect()) == ids[::-1]
