#!/usr/bin/env python3
"""Schedule a batch of GuildNet tasks, follow their logs live, wait for them and summarise.

    ORCHESTRATOR_TOKEN=... python examples/python/batch.py --org acme \\
        --task "Add a CONTRIBUTING.md" --task "Fix the flaky test in ci.yml"
    python examples/python/batch.py --org acme --tasks-file tasks.txt --timeout 1800

The admin token comes from ORCHESTRATOR_TOKEN, else from the state dir's orchestrator.token
(what `guildnet up` generates); it never goes on the command line. Tasks are followed in
parallel threads (the client releases the GIL while it waits on the network). Every log line is
printed with its task's short id; pull-request links are collected from each task's `pr_url`,
else from the last PR link its log printed. A task still running at --timeout is cancelled.

Exit status: 0 when every task succeeded, 1 when one did not, 2 when the batch could not run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional

import guildnet

PR_LINK = re.compile(r"https?://\S+/(?:pull|pulls|merge_requests)/\d+")


@dataclass
class Outcome:
    """What became of one task."""

    task: guildnet.Task
    status: str = "Unknown"
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    pr_url: Optional[str] = None
    seconds: float = 0.0
    lines: int = 0
    log_prs: List[str] = field(default_factory=list)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run a batch of GuildNet tasks and summarise them.")
    p.add_argument("--url", default=os.environ.get("GUILDNET_URL", "http://127.0.0.1:8080"))
    p.add_argument("--org", default="default", help="org whose cluster runs the tasks")
    p.add_argument("--task", action="append", default=[], help="a task text (repeat)")
    p.add_argument(
        "--tasks-file", help="a file with one task per line ('#' comments and blanks skipped)"
    )
    p.add_argument("--agent-hint", help="hint recorded with every task (an agent profile)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per task")
    p.add_argument("--parallel", type=int, default=8, help="tasks followed at once")
    p.add_argument("--quiet", action="store_true", help="do not print log lines")
    return p.parse_args(argv)


def read_tasks(args: argparse.Namespace) -> List[str]:
    tasks = list(args.task)
    if args.tasks_file:
        with open(args.tasks_file, encoding="utf-8") as f:
            for raw in f:
                line = raw.strip()
                if line and not line.startswith("#"):
                    tasks.append(line)
    return tasks


def connect(url: str) -> guildnet.OrchestratorClient:
    token = os.environ.get("ORCHESTRATOR_TOKEN")
    if token:
        return guildnet.OrchestratorClient(url, token)
    return guildnet.OrchestratorClient.from_state_dir(url)


class Printer:
    """Serialises output from the follower threads."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.lock = threading.Lock()

    def line(self, task_id: str, text: str) -> None:
        if not self.quiet:
            with self.lock:
                print(f"[{task_id[:9]}] {text}", flush=True)


def follow(
    client: guildnet.OrchestratorClient, task: guildnet.Task, timeout: float, out: Printer
) -> Outcome:
    """Follows one task's log to its end, then reads its outcome."""
    outcome = Outcome(task=task)
    start = time.monotonic()
    deadline = start + timeout
    stream = client.logs(task.id, follow=True)
    # Stop following at the deadline: closing the stream ends the iteration.
    watchdog = threading.Timer(timeout, stream.close)
    watchdog.daemon = True
    watchdog.start()
    try:
        for line in stream:
            outcome.lines += 1
            out.line(task.id, line.line if line.stream != "stderr" else f"(stderr) {line.line}")
            outcome.log_prs.extend(PR_LINK.findall(line.line))
    finally:
        watchdog.cancel()
    try:
        final = client.wait(task.id, timeout=max(0.0, deadline - time.monotonic()))
    except guildnet.GuildNetTimeoutError:
        out.line(task.id, f"still running after {timeout:.0f} s: cancelling")
        final = client.cancel(task.id)
        outcome.status = "TimedOut"
    else:
        outcome.status = final.status
    outcome.task = final
    outcome.exit_code = final.exit_code
    outcome.reason = final.reason
    outcome.pr_url = final.pr_url or (outcome.log_prs[-1] if outcome.log_prs else None)
    outcome.seconds = time.monotonic() - start
    return outcome


def summary(outcomes: List[Outcome]) -> str:
    rows = [("task", "status", "exit", "secs", "lines", "pull request / reason")]
    for o in outcomes:
        detail = o.pr_url or o.reason or ""
        exit_code = "" if o.exit_code is None else str(o.exit_code)
        rows.append(
            (o.task.id, o.status, exit_code, f"{o.seconds:.1f}", str(o.lines), detail)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1]
        for r in rows
    ]
    count = {s: sum(1 for o in outcomes if o.status == s) for s in
             ("Succeeded", "Failed", "Cancelled", "TimedOut")}
    prs = [o.pr_url for o in outcomes if o.pr_url]
    text.append(
        f"summary: {len(outcomes)} tasks, {count['Succeeded']} succeeded, {count['Failed']} "
        f"failed, {count['Cancelled']} cancelled, {count['TimedOut']} timed out"
    )
    text.append("pull requests: " + (", ".join(prs) if prs else "none"))
    return "\n".join(text)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    tasks = read_tasks(args)
    if not tasks:
        print("batch: no tasks given (--task or --tasks-file)", file=sys.stderr)
        return 2
    try:
        client = connect(args.url)
        health = client.health()
        print(f"orchestrator {client.url}: {health['status']}, backend {health['backend']}")
        scheduled = [client.schedule(args.org, t, args.agent_hint) for t in tasks]
    except guildnet.GuildNetError as e:
        print(f"batch: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    for t in scheduled:
        print(f"scheduled {t.id}: {t.task[:60]}")
    out = Printer(args.quiet)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = [pool.submit(follow, client, t, args.timeout, out) for t in scheduled]
        outcomes = []
        for t, f in zip(scheduled, futures):
            try:
                outcomes.append(f.result())
            except guildnet.GuildNetError as e:
                outcomes.append(Outcome(task=t, status="Error", reason=str(e)))
    print(summary(outcomes))
    return 0 if all(o.status == "Succeeded" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
