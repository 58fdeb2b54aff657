"""Runs examples/python/batch.py against the real orchestrator and checks its summary."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ORG

BATCH = Path(__file__).resolve().parents[3] / "examples" / "python" / "batch.py"


def run_batch(orchestrator, tmp_path, tasks, *extra):
    tasks_file = tmp_path / "tasks.txt"
    tasks_file.write_text("# one task per line\n\n" + "\n".join(tasks) + "\n")
    env = dict(os.environ, ORCHESTRATOR_TOKEN=orchestrator.token)
    proc = subprocess.run(
        [sys.executable, str(BATCH), "--url", orchestrator.url, "--org", ORG,
         "--tasks-file", str(tasks_file), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc


def test_batch_collects_outcomes_and_pull_requests(orchestrator, tmp_path):
    proc = run_batch(
        orchestrator,
        tmp_path,
        [
            'echo "updating README"; echo "PR: https://git.example.invalid/acme/app/pull/101"',
            'echo "fixing tests"; sleep 1; echo "opened https://git.example.invalid/acme/app/pull/102"',
            'echo "cannot build" >&2; exit 3',
        ],
        "--timeout", "60",
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr  # one task failed
    assert orchestrator.token not in out + proc.stderr
    ids = re.findall(r"^scheduled (t[0-9a-f]{32}):", out, re.M)
    assert len(ids) == 3, out
    # Log lines stream in, prefixed with the task's short id.
    assert f"[{ids[0][:9]}] updating README" in out
    assert f"[{ids[2][:9]}] (stderr) cannot build" in out
    assert "summary: 3 tasks, 2 succeeded, 1 failed, 0 cancelled, 0 timed out" in out
    assert (
        "pull requests: https://git.example.invalid/acme/app/pull/101, "
        "https://git.example.invalid/acme/app/pull/102" in out
    )
    failed_row = next(l for l in out.splitlines() if l.startswith(ids[2]))
    assert " Failed " in failed_row and " 3 " in failed_row


def test_batch_cancels_tasks_past_the_timeout(orchestrator, tmp_path):
    proc = run_batch(orchestrator, tmp_path, ["echo slow; sleep 60", "echo quick"],
                     "--timeout", "3", "--quiet")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "summary: 2 tasks, 1 succeeded, 0 failed, 0 cancelled, 1 timed out" in out, out
    assert "pull requests: none" in out
    slow = re.findall(r"^scheduled (t[0-9a-f]{32}): echo slow", out, re.M)[0]
    assert orchestrator.client().task(slow).status == "Cancelled"


def test_batch_without_tasks_or_orchestrator_exits_2(orchestrator, tmp_path):
    proc = subprocess.run([sys.executable, str(BATCH)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "no tasks given" in proc.stderr
    env = dict(os.environ, ORCHESTRATOR_TOKEN="wrong-token")
    proc = subprocess.run(
        [sys.executable, str(BATCH), "--url", orchestrator.url, "--task", "echo"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "AuthError" in proc.stderr
