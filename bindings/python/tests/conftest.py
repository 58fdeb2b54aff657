"""Fixtures: a real `guildnet-orchestrator` on loopback with the local backend.

The orchestrator runs agents as local `guildnet-agent` processes whose runner is `sh -s`, so each
task's text is a shell script and tests choose what a task prints, how long it takes and how it
exits. Binaries come from GUILDNET_BIN_DIR, else $CARGO_TARGET_DIR/debug, else
~/.cache/guildnet/target/debug (build them with
`cargo build -p guildnet-bin --bin guildnet-orchestrator --bin guildnet-agent`).
"""

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

import guildnet

TOKEN = "pytest-admin-token-0123456789abcdef"
ORG = "acme"


def bin_dir() -> Path:
    """Where the GuildNet binaries are."""
    explicit = os.environ.get("GUILDNET_BIN_DIR")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(
        Path.home() / ".cache" / "guildnet" / "target"
    )
    return Path(target) / "debug"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orchestrator:
    """A running orchestrator process."""

    def __init__(self, state: Path, port: int, proc: subprocess.Popen, log: Path) -> None:
        self.state = state
        self.port = port
        self.proc = proc
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.token = TOKEN

    def client(self) -> guildnet.OrchestratorClient:
        return guildnet.OrchestratorClient(self.url, TOKEN)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def orchestrator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    bins = bin_dir()
    orch_bin, agent_bin = bins / "guildnet-orchestrator", bins / "guildnet-agent"
    for b in (orch_bin, agent_bin):
        if not b.is_file():
            pytest.fail(
                f"{b} is missing: build it with `cargo build -p guildnet-bin --bin "
                "guildnet-orchestrator --bin guildnet-agent` or set GUILDNET_BIN_DIR "
                "(scripts/python-test.sh does both)",
                pytrace=False,
            )
    root = tmp_path_factory.mktemp("orchestrator")
    state, log = root / "state", root / "orchestrator.log"
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "GUILDNET_STATE_DIR": str(state),
            "ORCHESTRATOR_TOKEN": TOKEN,
            "GUILDNET_AGENT_BIN": str(agent_bin),
            # The tests' file:// repositories belong to the test user; as `nobody` (the
            # default under root) git would refuse them ("dubious ownership").
            "GUILDNET_AGENT_USER": "current",
            "RUST_LOG": "info",
        }
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(orch_bin),
                "--listen",
                f"127.0.0.1:{port}",
                "--org",
                ORG,
                "--runner",
                "sh -s",
                "--heartbeat-secs",
                "1",
                "--lease-ttl-secs",
                "5",
                "--durability",
                "normal",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    o = Orchestrator(state, port, proc, log)
    client = o.client()
    deadline = time.monotonic() + 30
    while True:
        try:
            client.health()
            break
        except guildnet.GuildNetConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"orchestrator did not start:\n{o.log_tail()}", pytrace=False)
            time.sleep(0.05)
    yield o
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def client(orchestrator: Orchestrator) -> guildnet.OrchestratorClient:
    return orchestrator.client()


def wait_status(client: guildnet.OrchestratorClient, task_id: str, status: str) -> guildnet.Task:
    """Polls until the task has `status` (at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        t = client.task(task_id)
        if t.status == status:
            return t
        assert not t.done, f"task finished as {t.status} before reaching {status}: {t!r}"
        assert time.monotonic() < deadline, f"task never reached {status}: {t!r}"
        time.sleep(0.05)
