//! Every environment variable name of the agent, declared once. The agent reads them
//! (`agent`); the local backend (`local`), the Kubernetes operator (`guildnet-kube`), the
//! orchestrator's settings (`agent_settings`) and the warm pool set them. Names only, so the
//! module is in the client-only build too. Nothing else spells these names: a new variable is added here and used from here.
//!
//! This module owns names and the lists built from them, nothing else: no parsing, no I/O.

/// Orchestrator base URL (launch contract).
pub const ORCHESTRATOR_URL: &str = "ORCHESTRATOR_URL";
/// Per-task agent token (launch contract, secret).
pub const AGENT_TOKEN: &str = "GUILDNET_AGENT_TOKEN";
/// Task id (launch contract).
pub const TASK_ID: &str = "TASK_ID";
/// Org name (launch contract).
pub const ORG_NAME: &str = "ORG_NAME";
/// Agent name (launch contract).
pub const AGENT_NAME: &str = "AGENT_NAME";

/// In a pod on the tailnet: the tailscale sidecar's SOCKS5 proxy (`host:port`), for a runner
/// that dials tailnet addresses itself (HTTP clients use `HTTP(S)_PROXY`). The orchestrator's
/// `--tailnet-socks5` reads the same name for its own tailscaled.
pub const TAILNET_SOCKS5: &str = "GUILDNET_TAILNET_SOCKS5";

/// The agent's workspace directory (default: its working directory).
pub const WORKSPACE: &str = "GUILDNET_WORKSPACE";
/// The agent's own state dir, outside the workspace (also the orchestrator's and the CLI's
/// state-dir variable: [`crate::state_dir`]).
pub const STATE_DIR: &str = "GUILDNET_STATE_DIR";
/// The runner command template (the orchestrator's default runner too).
pub const RUNNER: &str = "GUILDNET_RUNNER";
/// The name of the runner the orchestrator chose (for the log).
pub const RUNNER_NAME: &str = "GUILDNET_RUNNER_NAME";
/// The task text, handed by the agent to its runner.
pub const TASK_TEXT: &str = "GUILDNET_TASK";

/// The code-server executable; the editor is off when unset.
pub const CODE_SERVER: &str = "GUILDNET_CODE_SERVER";
/// Address code-server binds (default `0.0.0.0:8443`).
pub const EDITOR_ADDR: &str = "GUILDNET_EDITOR_ADDR";
/// Most seconds the agent waits, before it claims, for code-server to accept connections
/// (default 60; `0` claims at once).
pub const EDITOR_READY_SECS: &str = "GUILDNET_EDITOR_READY_SECS";
/// The code-server password (secret).
pub const CODE_SERVER_PASSWORD: &str = "CODE_SERVER_PASSWORD";
/// `host:port` at which others reach the editor (sent at register).
pub const EDITOR_ADVERTISE: &str = "GUILDNET_EDITOR_ADVERTISE";
/// Address of the agent's own `/healthz` (off when unset; `0.0.0.0:8081` in a pod).
pub const HEALTH_ADDR: &str = "GUILDNET_HEALTH_ADDR";

/// The git executable (default `git`).
pub const GIT: &str = "GUILDNET_GIT";
/// Commit author name.
pub const GIT_AUTHOR_NAME: &str = "GUILDNET_GIT_AUTHOR_NAME";
/// Commit author email.
pub const GIT_AUTHOR_EMAIL: &str = "GUILDNET_GIT_AUTHOR_EMAIL";
/// The forge's URL: its web root or API base (`https://github.com`,
/// `https://ghe.example/api/v3`, `https://gitea.example`, `https://gitlab.example/api/v4`);
/// pushes go unauthenticated and no pull request is opened when unset.
pub const FORGE_API: &str = "GUILDNET_FORGE_API";
/// The forge's API: `github`, `gitea` (also Forgejo) or `gitlab` (default: guessed from
/// the URL, else `github`).
pub const FORGE_KIND: &str = "GUILDNET_FORGE_KIND";
/// Forge token (secret): git over HTTPS to the forge and its API.
pub const FORGE_TOKEN: &str = "GUILDNET_FORGE_TOKEN";
/// A file holding the forge token (instead of [`FORGE_TOKEN`]).
pub const FORGE_TOKEN_FILE: &str = "GUILDNET_FORGE_TOKEN_FILE";
/// The repository's path on the forge (`owner/name`; default: from the clone URL).
pub const FORGE_REPO: &str = "GUILDNET_FORGE_REPO";

/// Paths (colon-separated, absolute) that the runner, git and code-server may not read or
/// write: the local backend sets the orchestrator's state dir, the other agents' directories
/// (the agent's own workspace stays allowed) and the user's kubeconfigs here. `~/.kube`,
/// `~/.guildnet`, `~/.guildnetdev`, the files of `KUBECONFIG` and the agent's own state dir
/// are always denied.
pub const DENY_PATHS: &str = "GUILDNET_DENY_PATHS";
/// Extra paths (colon-separated, absolute) that the runner, git and code-server may write
/// (e.g. the pod's home directory for tools that keep caches there).
pub const SANDBOX_WRITE_PATHS: &str = "GUILDNET_SANDBOX_WRITE_PATHS";
/// Seconds the agent may spend after SIGTERM (and the runner's grace) shipping its last log
/// lines before it exits (default 5).
pub const SHUTDOWN_SECS: &str = "GUILDNET_SHUTDOWN_SECS";
/// Comma-separated names of the variables that hold secrets (set by the orchestrator): their
/// values are removed from every log line and reason the agent sends.
pub const SECRET_ENV: &str = "GUILDNET_SECRET_ENV";

/// The pool token (secret) of a warm agent: lets it wait for a task of its org, nothing else.
pub const POOL_TOKEN: &str = "GUILDNET_POOL_TOKEN";
/// A warm agent's pod name (the downward API's `metadata.name`).
pub const POOL_POD: &str = "GUILDNET_POOL_POD";
/// The named runner a warm agent takes tasks for.
pub const POOL_RUNNER: &str = "GUILDNET_POOL_RUNNER";

/// The orchestrator's admin token. Never meant for an agent: the agent removes it from its
/// environment if it finds it there, and settings may not set it.
pub const ORCHESTRATOR_TOKEN: &str = "ORCHESTRATOR_TOKEN";

/// The launch contract: what every backend sets for a task's agent.
pub const LAUNCH_CONTRACT: [&str; 5] =
    [ORCHESTRATOR_URL, AGENT_TOKEN, TASK_ID, ORG_NAME, AGENT_NAME];

/// Variables that hold the agent's secrets: the agent reads them once, then removes them from
/// its environment.
pub const SECRETS: &[&str] = &[
    AGENT_TOKEN,
    FORGE_TOKEN,
    FORGE_TOKEN_FILE,
    CODE_SERVER_PASSWORD,
    POOL_TOKEN,
    ORCHESTRATOR_TOKEN,
];

/// Variables of the launch contract and the backends' own, which the orchestrator's agent
/// settings must not set.
pub const RESERVED: &[&str] = &[
    ORCHESTRATOR_URL,
    AGENT_TOKEN,
    TASK_ID,
    ORG_NAME,
    AGENT_NAME,
    WORKSPACE,
    STATE_DIR,
    CODE_SERVER,
    CODE_SERVER_PASSWORD,
    EDITOR_ADDR,
    EDITOR_ADVERTISE,
    HEALTH_ADDR,
    SECRET_ENV,
    ORCHESTRATOR_TOKEN,
];

/// Variables the Kubernetes operator sets itself from the credentials Secret, which an
/// AgentTask's `spec.env` and the secret settings must not set: the launch contract and the
/// code-server password.
pub const OPERATOR_SET: [&str; 6] = [
    ORCHESTRATOR_URL,
    AGENT_TOKEN,
    TASK_ID,
    ORG_NAME,
    AGENT_NAME,
    CODE_SERVER_PASSWORD,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_agree() {
        for n in LAUNCH_CONTRACT {
            assert!(RESERVED.contains(&n), "{n} is not reserved");
            assert!(OPERATOR_SET.contains(&n), "{n} is not set by the operator");
        }
        assert!(SECRETS.contains(&AGENT_TOKEN) && SECRETS.contains(&CODE_SERVER_PASSWORD));
        assert!(OPERATOR_SET.iter().all(|n| RESERVED.contains(n)));
    }
}
