//! The `guildnet` CLI's arguments (clap), in the library so docs/USAGE.md is generated from
//! them ([`crate::usage::markdown`]).

use crate::{OrchestratorArgs, UpDashboardArgs};
use clap::{Args, Parser, Subcommand, ValueEnum};
use guildnet_core::names::{OrgName, TaskId};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "guildnet",
    version,
    about = "GuildNet: run AI coding agents on your own clusters",
    after_help = "Examples:
  guildnet up                                   orchestrator + dashboard on this machine
  guildnet up --runner-preset claude-code       ... with an AI coding CLI as the runner
  guildnet schedule \"Add a CONTRIBUTING.md\" -f  schedule in org `default`, follow the log
  guildnet schedule --org acme --repo https://git.example/acme/app.git@main \"Fix the build\"
  guildnet login https://guildnet.example.com --token-file ./admin.token
  guildnet tasks --status running -o yaml
  guildnet logs <task id> -f
  guildnet org create acme
  guildnet completion bash > ~/.local/share/bash-completion/completions/guildnet"
)]
pub struct Cli {
    /// Orchestrator URL [default: GUILDNET_URL, else the context's URL, else
    /// http://127.0.0.1:8080].
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// Admin token [default: ORCHESTRATOR_TOKEN, else the context's token, else the token file
    /// in the state dir, as written by `guildnet up`].
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// The context (an orchestrator saved by `guildnet login`) to use [default:
    /// GUILDNET_CONTEXT, else the config file's current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Print JSON instead of tables (same as `-o json`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    pub output: Option<Output>,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Output formats (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables and lines.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the orchestrator on the embedded SQLite store (or PostgreSQL with --store), by
    /// default with the local backend (agents run as local processes). Registers org `default`
    /// unless --org is given.
    Up {
        #[command(flatten)]
        args: Box<OrchestratorArgs>,
        #[command(flatten)]
        dashboard: UpDashboardArgs,
    },
    /// Manage orgs.
    Org {
        #[command(subcommand)]
        cmd: OrgCmd,
    },
    /// Manage an org's warm agent pool (agents waiting in the org's cluster; see
    /// docs/KUBERNETES.md#warm-agent-pools).
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
    },
    /// The tailnet the orchestrator puts Kubernetes agents on (set by the dashboard's mesh
    /// setup, PUT /mesh, or the orchestrator's --mesh-* flags; see docs/MESH.md).
    Mesh {
        #[command(subcommand)]
        cmd: MeshCmd,
    },
    /// Schedule a task.
    Schedule {
        /// Org whose cluster runs it.
        #[arg(long, env = "GUILDNET_ORG", default_value = "default")]
        org: OrgName,
        /// The task text; `-` reads it from stdin.
        #[arg(value_name = "TASK", required_unless_present = "task")]
        text: Option<String>,
        /// The task text (same as the positional TASK).
        #[arg(long, conflicts_with = "text")]
        task: Option<String>,
        /// Optional agent hint recorded with the task; when the orchestrator has named
        /// runners, it chooses one of them.
        #[arg(long)]
        agent_hint: Option<String>,
        /// Repository the agent clones before running the task: URL[@REF] (the ref after the
        /// last '@' in the URL's path: a branch, tag or commit).
        #[arg(long)]
        repo: Option<String>,
        /// The ref to check out (instead of URL@REF).
        #[arg(long = "ref", requires = "repo")]
        git_ref: Option<String>,
        /// A local file the agent writes into its workspace before the task: PATH[=DEST] (DEST
        /// relative to the checkout; default PATH when it is relative, else its file name).
        /// Repeat for more files.
        #[arg(long = "file")]
        files: Vec<String>,
        /// Follow the task's log until it finishes; exit non-zero if it did not succeed.
        #[arg(long, short)]
        follow: bool,
    },
    /// List tasks.
    Tasks {
        /// Only this status (Scheduled, Submitted, Running, Succeeded, Failed, Cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this org.
        #[arg(long)]
        org: Option<OrgName>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one task.
    Task {
        /// Task id.
        id: TaskId,
    },
    /// Print a task's log.
    Logs {
        /// Task id.
        id: TaskId,
        /// Follow until the task finishes (reconnects if the orchestrator restarts).
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: TaskId,
    },
    /// List agents.
    Agents,
    /// Show the disk use of the orchestrator's state dir, database and local workspaces, and
    /// its retention.
    Disk,
    /// Remove finished tasks (with their logs and local workspaces) that finished more than
    /// --older-than ago; `guildnet up --retention AGE` does it continuously.
    Prune {
        /// Age: 30d, 12h, 90m, 0s (every finished task).
        #[arg(long, value_parser = guildnet_core::orchestrator::retention::parse_age)]
        older_than: std::time::Duration,
    },
    /// Save an orchestrator as a context in the config file and make it the current one,
    /// after checking the token against it (like `kubectl config` + `coder login`).
    #[command(after_help = "Examples:
  guildnet login https://guildnet.example.com --token-file ./admin.token
  pass show guildnet | guildnet login https://guildnet.example.com --name prod --token-stdin
  guildnet login http://127.0.0.1:8080      the local `guildnet up`: its token file is used")]
    Login {
        /// The orchestrator's URL.
        url: String,
        /// The context's name [default: the URL's host and port].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        token: TokenInput,
    },
    /// Manage contexts (orchestrators saved in ~/.config/guildnet/config.toml).
    Context {
        /// The action.
        #[command(subcommand)]
        cmd: ContextCmd,
    },
    /// Run the agent runtime (what a task's pod runs), configured by environment:
    /// ORCHESTRATOR_URL, GUILDNET_AGENT_TOKEN, TASK_ID, ORG_NAME, AGENT_NAME, GUILDNET_RUNNER,
    /// GUILDNET_WORKSPACE.
    Agent,
    /// Print a shell completion script: `guildnet completion bash > /etc/bash_completion.d/guildnet`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Show the client's and the orchestrator's versions.
    Version,
}

#[derive(Subcommand)]
pub enum MeshCmd {
    /// Show the mesh and whether the orchestrator's own node is on it (never the API key).
    Show,
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Set the org's pool (created or updated).
    Set {
        /// The org.
        #[arg(long, env = "GUILDNET_ORG")]
        org: OrgName,
        /// Warm agents to keep (0 to 100).
        #[arg(long)]
        size: u32,
        /// Agent image of the pool (default: the orchestrator's agent image).
        #[arg(long)]
        image: Option<String>,
        /// The named runner the pool's agents take tasks for (default: any).
        #[arg(long)]
        runner: Option<String>,
        /// Scale to zero after this many seconds without task activity, counted from the last
        /// task's end (default: never).
        #[arg(long)]
        idle_secs: Option<u64>,
    },
    /// Show the org's pool: agents waiting, warm and cold starts, the backend's view.
    Show {
        /// The org.
        #[arg(long, env = "GUILDNET_ORG")]
        org: OrgName,
    },
    /// Remove the org's pool.
    Delete {
        /// The org.
        #[arg(long, env = "GUILDNET_ORG")]
        org: OrgName,
    },
}

#[derive(Subcommand)]
pub enum OrgCmd {
    /// Register an org.
    Create {
        /// Name (DNS-1123 label).
        name: OrgName,
    },
    /// List orgs.
    List,
    /// Remove an org that has no unfinished task (its task history stays).
    Delete {
        /// Name.
        name: OrgName,
    },
    /// Bootstrap the org's Talos cluster through the orchestrator (gen config, apply-config,
    /// bootstrap, health, kubeconfig), following its progress.
    Bootstrap {
        /// The org (must be registered).
        #[arg(long)]
        org: OrgName,
        /// Control-plane node address (repeat or comma-separate; at least one).
        #[arg(long = "cp", value_delimiter = ',', required = true)]
        cp: Vec<String>,
        /// Worker node address (repeat or comma-separate).
        #[arg(long = "worker", value_delimiter = ',')]
        worker: Vec<String>,
    },
    /// Fetch the org cluster's kubeconfig again (the bootstrap's last step alone).
    Kubeconfig {
        /// The org.
        #[arg(long)]
        org: OrgName,
        /// A control-plane node address.
        #[arg(long)]
        endpoint: String,
    },
}

/// Where `login` and `context add` read the admin token from.
#[derive(Args, Debug, Clone, Default)]
#[group(multiple = false)]
pub struct TokenInput {
    /// Read the admin token from this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Read the admin token from stdin.
    #[arg(long)]
    pub token_stdin: bool,
}

/// `guildnet context` subcommands.
#[derive(Subcommand)]
pub enum ContextCmd {
    /// Add (or replace) a context without contacting the orchestrator.
    Add {
        /// The context's name.
        name: String,
        /// The orchestrator's URL.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        token: TokenInput,
        /// Make it the current context.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make a context the current one.
    Use {
        /// The context's name.
        name: String,
    },
    /// List contexts (the current one is marked `*`; tokens are never printed).
    List,
    /// Remove a context.
    Remove {
        /// The context's name.
        name: String,
    },
}
