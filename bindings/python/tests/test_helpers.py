"""State-dir resolution, org config paths, the CRD and the token-file client."""

from pathlib import Path

import pytest

import guildnet
from conftest import TOKEN


def test_state_dir_follows_the_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("GUILDNET_STATE_DIR", str(tmp_path / "s"))
    assert guildnet.state_dir() == tmp_path / "s"
    monkeypatch.delenv("GUILDNET_STATE_DIR")
    monkeypatch.setenv("GUILDNET_HOME", str(tmp_path / "g"))
    assert guildnet.state_dir() == tmp_path / "g" / "state"
    monkeypatch.delenv("GUILDNET_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.setenv("GUILDNET_ENV", "dev")
    assert guildnet.state_dir() == tmp_path / "h" / ".guildnetdev" / "state"
    monkeypatch.delenv("GUILDNET_ENV")
    assert guildnet.state_dir() == tmp_path / "h" / ".guildnet" / "state"


def test_org_config_paths(monkeypatch, tmp_path):
    assert guildnet.kubeconfig_path("acme", "/st") == Path("/st/kube/acme.config")
    assert guildnet.talosconfig_path("acme", tmp_path) == tmp_path / "talos" / "acme.talosconfig"
    assert guildnet.admin_token_path("/st") == Path("/st/orchestrator.token")
    monkeypatch.setenv("GUILDNET_STATE_DIR", str(tmp_path))
    assert guildnet.kubeconfig_path("acme") == tmp_path / "kube" / "acme.config"
    with pytest.raises(guildnet.InvalidInputError) as err:
        guildnet.kubeconfig_path("../../etc", "/st")
    assert err.value.field == "org"


def test_find_kubeconfig(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    state = tmp_path / "state"
    assert guildnet.find_kubeconfig("acme", state) is None
    kc = guildnet.kubeconfig_path("acme", state)
    kc.parent.mkdir(parents=True)
    kc.write_text("apiVersion: v1\n")
    assert guildnet.find_kubeconfig("acme", state) == kc
    explicit = tmp_path / "explicit.config"
    explicit.write_text("x")
    monkeypatch.setenv("KUBECONFIG", str(explicit))
    # KUBECONFIG never overrides an org's own file; it is the fallback for orgs without one.
    assert guildnet.find_kubeconfig("acme", state) == kc
    assert guildnet.find_kubeconfig("globex", state) == explicit


def test_agenttask_crd_yaml():
    y = guildnet.agenttask_crd_yaml()
    assert "kind: CustomResourceDefinition" in y
    assert "agenttasks." in y
    assert "AgentTask" in y


def test_client_from_state_dir_reads_the_token_file(orchestrator, tmp_path):
    with pytest.raises(guildnet.GuildNetError) as err:
        guildnet.OrchestratorClient.from_state_dir(orchestrator.url, tmp_path)
    assert "orchestrator.token" in err.value.message
    guildnet.admin_token_path(tmp_path).write_text(TOKEN + "\n")
    c = guildnet.OrchestratorClient.from_state_dir(orchestrator.url, tmp_path)
    assert "acme" in [o.name for o in c.orgs()]
    assert TOKEN not in repr(c)


def test_client_from_env_like_the_cli(orchestrator, tmp_path, monkeypatch):
    monkeypatch.setenv("GUILDNET_URL", orchestrator.url)
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", TOKEN)
    assert "acme" in [o.name for o in guildnet.OrchestratorClient.from_env().orgs()]
    # Without ORCHESTRATOR_TOKEN: the state dir's token file.
    monkeypatch.delenv("ORCHESTRATOR_TOKEN")
    monkeypatch.setenv("GUILDNET_STATE_DIR", str(tmp_path))
    guildnet.admin_token_path(tmp_path).write_text(TOKEN + "\n")
    c = guildnet.OrchestratorClient.from_env()
    assert c.url.startswith(orchestrator.url)
    assert "acme" in [o.name for o in c.orgs()]


def test_client_from_env_reads_the_context_file(orchestrator, tmp_path, monkeypatch):
    for k in ("GUILDNET_URL", "ORCHESTRATOR_TOKEN", "GUILDNET_CONTEXT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GUILDNET_STATE_DIR", str(tmp_path / "empty-state"))
    config = tmp_path / "config.toml"
    monkeypatch.setenv("GUILDNET_CONFIG", str(config))
    config.write_text(
        'current-context = "dead"\n'
        '[contexts.dead]\nurl = "http://127.0.0.1:9"\ntoken = "nope"\n'
        f'[contexts.here]\nurl = "{orchestrator.url}"\ntoken = "{TOKEN}"\n'
    )
    assert guildnet.OrchestratorClient.from_env().url.startswith("http://127.0.0.1:9")
    # A context by name (argument, then GUILDNET_CONTEXT) beats the current one.
    c = guildnet.OrchestratorClient.from_env("here")
    assert "acme" in [o.name for o in c.orgs()]
    monkeypatch.setenv("GUILDNET_CONTEXT", "here")
    assert "acme" in [o.name for o in guildnet.OrchestratorClient.from_env().orgs()]
    # GUILDNET_URL beats the context, whose token is then not sent: no token, a clear error.
    monkeypatch.setenv("GUILDNET_URL", "http://127.0.0.1:9")
    with pytest.raises(guildnet.GuildNetError) as err:
        guildnet.OrchestratorClient.from_env()
    assert "guildnet login" in err.value.message
    assert TOKEN not in err.value.message
    # An unknown context names the known ones.
    with pytest.raises(guildnet.GuildNetError) as err:
        guildnet.OrchestratorClient.from_env("nope")
    assert "dead, here" in err.value.message


def test_version():
    assert guildnet.__version__ == "0.1.0"
