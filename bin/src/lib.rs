//! Shared flag definitions and small helpers of the GuildNet binaries (no business logic).

pub mod cli_args;
pub mod mesh_args;
pub mod usage;

use clap::Args;
use guildnet_core::agent::forge::ForgeKind;
use guildnet_core::agent_settings::{read_secret_file, AgentSettingsConfig, ForgeAccess};
use guildnet_core::launch::{start_local, BackendOverride, BootstrapOverride, LocalOptions};
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::AdminTokenSource;
use guildnet_core::state_dir::StatePaths;
use guildnet_core::store::Durability;
use guildnet_core::token::Secret;
use guildnet_kube::backend::{KubeBackend, KubeBackendConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of an orchestrator (SQLite or PostgreSQL store; local or Kubernetes backend).
#[derive(Args, Debug, Clone)]
pub struct OrchestratorArgs {
    /// Address to listen on.
    #[arg(long, env = "GUILDNET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// State directory (default: GUILDNET_STATE_DIR, GUILDNET_HOME/state, ~/.guildnet/state).
    #[arg(long, env = guildnet_core::agent_env::STATE_DIR)]
    pub state_dir: Option<PathBuf>,
    /// State store: a PostgreSQL URL (postgres://user:password@host:port/db) for several
    /// replicas on one database; unset: the SQLite file in the state dir.
    #[arg(long, env = "GUILDNET_STORE", hide_env_values = true)]
    pub store: Option<guildnet_core::launch::StoreUrl>,
    /// URL agents use to reach the orchestrator (default: http://<listen>).
    #[arg(long, env = "PUBLIC_ORCHESTRATOR_URL")]
    pub public_url: Option<String>,
    /// Admin token (default: generated once and stored 0600 in the state dir).
    #[arg(long, env = "ORCHESTRATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The guildnet-agent executable (default: next to this binary).
    #[arg(long, env = "GUILDNET_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// Runner command template for agents, e.g. "my-ai-cli --task-file -" ({task_id}, {org},
    /// {agent}, {workspace} are replaced; the task text is on stdin and in GUILDNET_TASK).
    #[arg(long, env = guildnet_core::agent_env::RUNNER)]
    pub runner: Option<String>,
    /// Default runner from a preset instead of --runner: claude-code, codex, gemini, opencode,
    /// aider, script, echo (see docs/AGENT.md for each one's invocation and environment).
    #[arg(long, env = "GUILDNET_RUNNER_PRESET", conflicts_with = "runner")]
    pub runner_preset: Option<String>,
    /// A named runner a task can choose with its agentHint, or an org with --org-runner:
    /// NAME=TEMPLATE, NAME=preset:PRESET, or a preset name alone (repeat; in the environment
    /// separate them with ';'). While any is configured, a task's agentHint must name one.
    #[arg(
        long = "named-runner",
        env = "GUILDNET_NAMED_RUNNERS",
        value_delimiter = ';'
    )]
    pub named_runners: Vec<String>,
    /// An org's runner: ORG=NAME, NAME a named runner (repeat or comma-separate).
    #[arg(
        long = "org-runner",
        env = "GUILDNET_ORG_RUNNERS",
        value_delimiter = ','
    )]
    pub org_runners: Vec<String>,
    /// The forge agents push to and open pull requests on: its web root or API base URL
    /// (https://github.com, https://ghe.example/api/v3, https://gitea.example,
    /// https://gitlab.example). Needs a token (--forge-token-file or GUILDNET_FORGE_TOKEN).
    #[arg(long, env = guildnet_core::agent_env::FORGE_API)]
    pub forge_api: Option<String>,
    /// The forge's API: github, gitea (also Forgejo) or gitlab (default: guessed from the URL,
    /// else github).
    #[arg(long, env = guildnet_core::agent_env::FORGE_KIND)]
    pub forge_kind: Option<String>,
    /// A file (mode 0600) holding the forge token; GUILDNET_FORGE_TOKEN in the environment
    /// works too. Agents get it as a secret; it is never put in a URL or on a command line.
    #[arg(long, env = guildnet_core::agent_env::FORGE_TOKEN_FILE)]
    pub forge_token_file: Option<PathBuf>,
    /// Author name of the agents' commits.
    #[arg(long, env = guildnet_core::agent_env::GIT_AUTHOR_NAME)]
    pub git_author_name: Option<String>,
    /// Author email of the agents' commits.
    #[arg(long, env = guildnet_core::agent_env::GIT_AUTHOR_EMAIL)]
    pub git_author_email: Option<String>,
    /// Extra environment for every agent and its runner: NAME=VALUE (repeat), e.g.
    /// OPENAI_API_BASE=https://llm.internal/v1 or AIDER_MODEL=openai/gpt-4.1. Not secret.
    #[arg(long = "agent-env")]
    pub agent_env: Vec<String>,
    /// A secret for every agent's runner, read from a file (mode 0600): NAME=PATH (repeat),
    /// e.g. ANTHROPIC_API_KEY=/run/secrets/anthropic. Kept out of logs and task records.
    #[arg(long = "agent-secret-file")]
    pub agent_secret_files: Vec<String>,
    /// A secret for every agent's runner, taken from this process's variable of the same name
    /// (repeat), e.g. --agent-secret-env OPENAI_API_KEY.
    #[arg(long = "agent-secret-env")]
    pub agent_secret_env: Vec<String>,
    /// Orgs to register at start (repeat or comma-separate).
    #[arg(long = "org", env = "GUILDNET_ORGS", value_delimiter = ',')]
    pub orgs: Vec<OrgName>,
    /// Commit durability: full (fsync every commit) or normal (survives process crashes).
    #[arg(long, env = "GUILDNET_DURABILITY", value_enum, default_value_t = Durability::Full)]
    pub durability: Durability,
    /// Claim lease duration in seconds.
    #[arg(long, env = "GUILDNET_LEASE_TTL_SECS", default_value_t = guildnet_core::orchestrator::DEFAULT_LEASE_TTL.as_secs())]
    pub lease_ttl_secs: u64,
    /// Agent heartbeat interval in seconds.
    #[arg(long, env = "GUILDNET_HEARTBEAT_SECS", default_value_t = guildnet_core::orchestrator::DEFAULT_HEARTBEAT_INTERVAL.as_secs())]
    pub heartbeat_secs: u64,
    /// Where agents run: `local` (child processes) or `kubernetes` (an AgentTask in each org's
    /// cluster, reconciled by guildnet-operator; kubeconfig at <state>/kube/<org>.config).
    #[arg(long, env = "GUILDNET_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Kubernetes backend: namespace of the AgentTasks (the operator's namespace).
    #[arg(long, env = "GUILDNET_NAMESPACE", default_value = guildnet_kube::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Kubernetes backend: agent image.
    #[arg(long, env = "GUILDNET_AGENT_IMAGE")]
    pub agent_image: Option<String>,
    /// Kubernetes backend: fail a task whose agent pod has not come up this many seconds after
    /// submit (image not pullable, pod unschedulable, ...), with the cause the pod shows; 0
    /// waits for the claim timeout (120 s) to requeue it instead. Keep it below 120.
    #[arg(long, env = "GUILDNET_AGENT_START_DEADLINE_SECS", default_value_t = guildnet_kube::backend::DEFAULT_START_DEADLINE.as_secs())]
    pub agent_start_deadline_secs: u64,
    /// Kubernetes backend: an org with no kubeconfig at all runs its agents in the cluster
    /// this process runs in, with its pod's ServiceAccount (for an orchestrator deployed in
    /// that cluster, as the Helm chart does).
    #[arg(long, env = "GUILDNET_KUBE_IN_CLUSTER")]
    pub kube_in_cluster: bool,
    /// Local backend: the code-server executable; each agent then serves its workspace in an
    /// editor, reachable through /editor/proxy/<port>/ after POST /agents/editor/open.
    #[arg(long, env = guildnet_core::agent_env::CODE_SERVER)]
    pub code_server: Option<PathBuf>,
    /// Local backend: the user agents and their runners run as: `auto` (`nobody` when this
    /// process runs as root, else this process's user), `current`, a user name, or UID[:GID].
    /// A root orchestrator then keeps agent directories in /var/lib/guildnet/workspaces-*
    /// when its state dir's parent is closed to that user.
    #[arg(long, env = guildnet_core::agent_user::AGENT_USER_ENV, default_value = "auto")]
    pub agent_user: guildnet_core::agent_user::AgentUserSpec,
    /// Origins allowed to embed proxied editors in a frame (the dashboard's origin, e.g.
    /// http://127.0.0.1:8090); repeat or comma-separate.
    #[arg(
        long = "frame-ancestor",
        env = "GUILDNET_FRAME_ANCESTORS",
        value_delimiter = ','
    )]
    pub frame_ancestors: Vec<String>,
    /// talosctl for org cluster bootstrap (POST /orgs/bootstrap): a path or a name on PATH.
    #[arg(long, env = "GUILDNET_TALOSCTL", default_value = "talosctl")]
    pub talosctl: PathBuf,
    /// SOCKS5 proxy of this host's (userspace) tailscaled: editors that agents advertise on the
    /// tailnet are reached through it, instead of a port-forward.
    #[arg(long, env = guildnet_core::agent_env::TAILNET_SOCKS5)]
    pub tailnet_socks5: Option<SocketAddr>,
    /// Proxy to any editor address an agent advertises at register (e.g. an editor sidecar on
    /// a pod network). Off by default: without it only tailnet addresses dialed through
    /// --tailnet-socks5 are accepted, so an agent's credentials cannot aim the proxy elsewhere.
    #[arg(long, env = "GUILDNET_TRUST_ADVERTISED_EDITORS")]
    pub trust_advertised_editors: bool,
    /// Close an HTTP connection that sends no complete request head for this many seconds (an
    /// idle keep-alive connection, or a client trickling its headers). Streams (SSE) and editor
    /// WebSockets are not affected.
    #[arg(long, env = "GUILDNET_HTTP_IDLE_SECS", default_value_t = 30)]
    pub http_idle_secs: u64,
    /// Most log text stored per task, in bytes; output past it is dropped, a log line says so,
    /// and the task goes on.
    #[arg(long, env = "GUILDNET_LOG_QUOTA_BYTES", default_value_t = guildnet_core::orchestrator::DEFAULT_LOG_QUOTA_BYTES)]
    pub log_quota_bytes: u64,
    /// Local backend: pass this variable of the orchestrator's environment on to agents and
    /// their runners (repeat or comma-separate), e.g. a model provider's API key. Agents
    /// otherwise start from a clean environment (PATH, HOME, locale, proxies, certificates).
    #[arg(long = "pass-env", env = "GUILDNET_PASS_ENV", value_delimiter = ',')]
    pub pass_env: Vec<String>,
    /// Remove finished tasks (with their logs and local workspaces) this long after they
    /// finished: 30d, 12h, 90m (default: keep them). `guildnet disk` shows the disk use.
    #[arg(long, env = "GUILDNET_RETENTION", value_parser = guildnet_core::orchestrator::retention::parse_age)]
    pub retention: Option<std::time::Duration>,
    /// Agents on the tailnet (Kubernetes backend).
    #[command(flatten)]
    pub mesh: mesh_args::MeshArgs,
}

/// Where an orchestrator runs its agents (`--backend`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Child processes of the orchestrator, on its machine.
    Local,
    /// An AgentTask in each org's cluster, reconciled by guildnet-operator.
    Kubernetes,
}

impl OrchestratorArgs {
    /// The HTTP server's connection options (`--http-idle-secs`).
    pub fn server_options(&self) -> anyhow::Result<guildnet_core::http_server::ServerOptions> {
        if self.http_idle_secs == 0 {
            anyhow::bail!("--http-idle-secs must be > 0");
        }
        Ok(guildnet_core::http_server::ServerOptions {
            idle_timeout: std::time::Duration::from_secs(self.http_idle_secs),
            ..Default::default()
        })
    }

    /// Converts flags to launch options.
    pub fn to_options(&self) -> anyhow::Result<LocalOptions> {
        Ok(self.to_options_and_mesh()?.0)
    }

    /// Converts flags to launch options, with the runtime mesh (`/mesh`) of the Kubernetes
    /// backend: the caller tells it the listen port, restores it and stops it at the end
    /// ([`run_orchestrator`] and [`run_up`] do).
    pub fn to_options_and_mesh(
        &self,
    ) -> anyhow::Result<(
        LocalOptions,
        Option<Arc<guildnet_mesh::runtime::RuntimeMesh>>,
    )> {
        if self.heartbeat_secs == 0 || self.lease_ttl_secs <= self.heartbeat_secs {
            anyhow::bail!(
                "--lease-ttl-secs ({}) must be greater than --heartbeat-secs ({}), which must be > 0",
                self.lease_ttl_secs,
                self.heartbeat_secs
            );
        }
        let mut o = LocalOptions::new();
        o.listen = self.listen;
        o.state_dir = self.state_dir.clone();
        o.store = self.store.clone();
        o.public_url = self.public_url.clone();
        o.admin_token = self.token.clone();
        o.agent_bin = self.agent_bin.clone();
        o.runner = self.runner.clone();
        o.pass_env = self.pass_env.clone();
        o.service.log_quota_bytes = self.log_quota_bytes;
        o.service.retention = self.retention;
        o.service.agents = self.agent_settings()?;
        o.orgs = self.orgs.clone();
        o.code_server = self.code_server.clone();
        o.agent_user = self.agent_user.clone();
        for a in &self.frame_ancestors {
            let ok = (a.starts_with("http://") || a.starts_with("https://"))
                && !a.contains(|c: char| c.is_whitespace() || c == ';' || c == ',' || c == '\'');
            if !ok {
                anyhow::bail!(
                    "--frame-ancestor {a:?}: must be an origin like https://dash.example:8090"
                );
            }
        }
        o.frame_ancestors = self.frame_ancestors.clone();
        o.editors.trust_advertised = self.trust_advertised_editors;
        // The tailnet dialer: the node of --tailnet-socks5, else the orchestrator's own node
        // once a mesh is set through the API (PUT /mesh).
        let swappable = Arc::new(guildnet_core::proxy::SwappableDialer::new(
            self.tailnet_socks5.map(|socks| {
                Arc::new(guildnet_mesh::tailscale::TailnetDialer::new(socks))
                    as Arc<dyn guildnet_core::proxy::Dialer>
            }),
        ));
        o.editors.dialer = Some(swappable.clone());
        let mut runtime_mesh = None;
        let paths = match &self.state_dir {
            Some(d) => StatePaths::new(d.clone()),
            None => StatePaths::resolve()?,
        };
        let mut talos = guildnet_talos::TalosOptions::new(paths);
        talos.talosctl = self.talosctl.clone();
        o.bootstrap = Some(BootstrapOverride(Arc::new(
            guildnet_talos::TalosctlBootstrap::new(talos),
        )));
        o.durability = self.durability;
        o.service.lease_ttl = Duration::from_secs(self.lease_ttl_secs);
        o.service.heartbeat_interval = Duration::from_secs(self.heartbeat_secs);
        if self.backend == BackendKind::Kubernetes {
            let paths = match &self.state_dir {
                Some(d) => StatePaths::new(d.clone()),
                None => StatePaths::resolve()?,
            };
            let mut cfg = KubeBackendConfig::new(paths.clone());
            cfg.namespace = self.namespace.clone();
            if let Some(image) = &self.agent_image {
                cfg.image = image.clone();
            }
            cfg.start_deadline = (self.agent_start_deadline_secs > 0)
                .then(|| Duration::from_secs(self.agent_start_deadline_secs));
            cfg.mesh = guildnet_kube::backend_mesh::MeshSlot::new(self.mesh.kube_mesh()?);
            let rm = Arc::new(self.mesh.runtime_mesh(
                paths.root(),
                cfg.mesh.clone(),
                swappable,
                self.tailnet_socks5.is_some(),
            ));
            o.mesh = Some(guildnet_core::launch::MeshOverride(rm.clone()));
            runtime_mesh = Some(rm);
            cfg.in_cluster = self.kube_in_cluster;
            o.backend = Some(BackendOverride(Arc::new(KubeBackend::new(cfg))));
        } else if self.mesh.enabled() {
            anyhow::bail!("--mesh-headscale-url needs --backend kubernetes");
        } else if self.kube_in_cluster {
            anyhow::bail!("--kube-in-cluster needs --backend kubernetes");
        }
        Ok((o, runtime_mesh))
    }
}

impl OrchestratorArgs {
    /// The agent settings from the runner, forge and agent-environment flags.
    pub fn agent_settings(&self) -> anyhow::Result<AgentSettingsConfig> {
        let mut a = AgentSettingsConfig::default();
        if let Some(p) = &self.runner_preset {
            a.use_preset(p)?;
        }
        for spec in self.named_runners.iter().filter(|s| !s.trim().is_empty()) {
            a.add_named_runner(spec)?;
        }
        for spec in &self.org_runners {
            a.set_org_runner(spec)?;
        }
        if let Some(url) = &self.forge_api {
            let kind = match &self.forge_kind {
                Some(k) => ForgeKind::parse(k).ok_or_else(|| {
                    anyhow::anyhow!("--forge-kind {k:?}: one of github, gitea, forgejo, gitlab")
                })?,
                // The agent's own rule: guessed from the URL, else the GitHub API (which is
                // what GUILDNET_FORGE_API meant before there were kinds).
                None => ForgeKind::guess(url).unwrap_or_else(|| {
                    tracing::warn!(
                        url = %url,
                        "cannot tell which forge --forge-api is; assuming github (pass --forge-kind)"
                    );
                    ForgeKind::GitHub
                }),
            };
            let token = match &self.forge_token_file {
                Some(p) => read_secret_file(p)?,
                None => match std::env::var(guildnet_core::agent_env::FORGE_TOKEN) {
                    Ok(t) if !t.trim().is_empty() => Secret::new(t.trim()),
                    _ => anyhow::bail!(
                        "--forge-api needs a token: --forge-token-file PATH or GUILDNET_FORGE_TOKEN"
                    ),
                },
            };
            a.forge = Some(ForgeAccess {
                kind,
                url: url.clone(),
                token,
            });
        } else if self.forge_token_file.is_some() || self.forge_kind.is_some() {
            anyhow::bail!("--forge-kind and --forge-token-file need --forge-api");
        }
        a.git_author_name = self.git_author_name.clone();
        a.git_author_email = self.git_author_email.clone();
        for spec in &self.agent_env {
            a.add_env(spec)?;
        }
        for spec in &self.agent_secret_files {
            a.add_secret_file(spec)?;
        }
        for name in &self.agent_secret_env {
            a.add_secret_from_env(name, |k| std::env::var(k).ok())?;
        }
        a.validate()?;
        Ok(a)
    }
}

/// Flags of the dashboard that `guildnet up` starts beside the orchestrator.
#[derive(Args, Debug, Clone)]
pub struct UpDashboardArgs {
    /// Dashboard address to listen on.
    #[arg(
        long = "dashboard-listen",
        env = "GUILDNET_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub dashboard_listen: SocketAddr,
    /// Run the orchestrator alone, without the dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
    /// Dashboard password (default: generated once into the state dir's dashboard.password).
    #[arg(long, env = "GUILDNET_DASHBOARD_PASSWORD", hide_env_values = true)]
    pub dashboard_password: Option<String>,
    /// Serve the dashboard over HTTPS with a self-signed certificate kept in the state dir.
    #[arg(long)]
    pub dashboard_tls: bool,
    /// Where agents' editors are served: a second origin, never the dashboard's own (default:
    /// the dashboard's IP and a free port).
    #[arg(long, env = "GUILDNET_DASHBOARD_EDITOR_LISTEN")]
    pub dashboard_editor_listen: Option<SocketAddr>,
    /// The editor origin as browsers reach it (e.g. https://editors.example.com behind a
    /// reverse proxy); it must be same-site with the dashboard.
    #[arg(long, env = "GUILDNET_DASHBOARD_EDITOR_URL")]
    pub dashboard_editor_url: Option<String>,
    /// Print a one-time dashboard login link: auto (when output is a terminal), always, never.
    #[arg(long, env = "GUILDNET_LOGIN_LINK", value_enum, default_value_t = LoginLinkMode::Auto)]
    pub login_link: LoginLinkMode,
    /// What the dashboard's "provision a Talos cluster" installs.
    #[command(flatten)]
    pub operator: OperatorInstallArgs,
}

/// What the dashboard's "provision a Talos cluster" installs into a new org's cluster (flags
/// of `guildnet-dashboard` and `guildnet up`).
#[derive(Args, Debug, Clone, Default)]
pub struct OperatorInstallArgs {
    /// The operator image "provision a Talos cluster" installs into a new org's cluster
    /// (default: the release image).
    #[arg(long, env = "GUILDNET_OPERATOR_IMAGE")]
    pub operator_image: Option<String>,
    /// The tailscale sidecar image that operator adds to agents on the tailnet (default: the
    /// operator's, tailscale/tailscale).
    #[arg(long, env = "GUILDNET_OPERATOR_MESH_SIDECAR_IMAGE")]
    pub operator_mesh_sidecar_image: Option<String>,
    /// That sidecar speaks plain HTTP to DERP relays: only for a plain-HTTP Headscale with its
    /// embedded DERP (a local or test setup).
    #[arg(long, env = "GUILDNET_OPERATOR_MESH_PLAIN_HTTP_DERP")]
    pub operator_mesh_plain_http_derp: bool,
}

impl OperatorInstallArgs {
    /// Sets these flags on the dashboard's operator install options (blank values are unset).
    pub fn apply(&self, opts: &mut guildnet_kube::install::InstallOptions) {
        if let Some(i) = self
            .operator_image
            .as_ref()
            .filter(|i| !i.trim().is_empty())
        {
            opts.image = i.trim().to_owned();
        }
        opts.mesh_sidecar_image = self
            .operator_mesh_sidecar_image
            .as_ref()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty());
        opts.mesh_plain_http_derp = self.operator_mesh_plain_http_derp;
    }
}

/// The dashboard's mesh setup: guildnet-mesh with `headscale`, `tailscaled` and `tailscale`
/// from `GUILDNET_HEADSCALE`, `GUILDNET_TAILSCALED`, `GUILDNET_TAILSCALE`, else from `PATH`.
/// Each mesh set up is handed to `orchestrator` (`PUT /mesh`).
pub fn mesh_setup(
    state_dir: &std::path::Path,
    orchestrator: &guildnet_dashboard::OrchestratorHandle,
) -> anyhow::Result<guildnet_dashboard::flows::SharedSetup> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let client = guildnet_core::client::OrchestratorClient::new(
        &orchestrator.url,
        orchestrator.token.clone(),
    )?;
    Ok(Arc::new(
        guildnet_dashboard::mesh::MeshSetup::new(
            state_dir,
            guildnet_dashboard::mesh::MeshBinaries {
                headscale: env("GUILDNET_HEADSCALE"),
                tailscaled: env("GUILDNET_TAILSCALED"),
                tailscale: env("GUILDNET_TAILSCALE"),
            },
        )
        .with_orchestrator(client),
    ))
}

/// When to print a one-time dashboard login link (`--login-link`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoginLinkMode {
    /// Only when standard output is a terminal (not into a service's journal or a log file).
    #[default]
    Auto,
    /// Always (e.g. to capture it from a script).
    Always,
    /// Never: log in with the password.
    Never,
}

/// Prints where the dashboard is and how to log in: the password's file and, per `link`, a
/// one-time login link (a secret that works once, for 15 minutes).
pub fn print_dashboard_login(dash: &guildnet_dashboard::Dashboard, link: LoginLinkMode) {
    use guildnet_dashboard::auth::PasswordSource;
    use std::io::IsTerminal;
    println!("GuildNet dashboard: {}", dash.url());
    println!(
        "Agents' editors are served from a separate origin on {}",
        dash.editor_addr()
    );
    match dash.password_source() {
        PasswordSource::Configured => println!("Log in with the configured dashboard password"),
        PasswordSource::File(p) | PasswordSource::Generated(p) => {
            println!("Log in with the password in {}", p.display())
        }
    }
    let print_link = match link {
        LoginLinkMode::Auto => std::io::stdout().is_terminal(),
        LoginLinkMode::Always => true,
        LoginLinkMode::Never => false,
    };
    if print_link {
        println!(
            "Or open this one-time login link (works once, for 15 minutes): {}",
            dash.login_link()
        );
    }
}

/// `guildnet up`: the orchestrator and (unless disabled) the dashboard in one process, until
/// `shutdown` resolves.
pub async fn run_up(
    args: OrchestratorArgs,
    dash: UpDashboardArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use guildnet_dashboard::{Dashboard, DashboardConfig, OrchestratorHandle};
    let server = args.server_options()?;
    let runner_line = match (&args.runner, &args.runner_preset) {
        (_, Some(p)) => format!("Runner: the {p} preset"),
        (Some(r), None) if r == "cat" => "Runner: `cat` (echoes the task: a demo that changes \
             nothing). Use an AI coding CLI with --runner-preset claude-code|codex|gemini|opencode|aider \
             or --runner \"<command>\""
            .to_owned(),
        (Some(r), None) => format!("Runner: {r}"),
        (None, None) => "Runner: none (tasks fail until you pass --runner)".to_owned(),
    };
    let orgs: Vec<String> = args.orgs.iter().map(|o| o.to_string()).collect();
    let namespace = args.namespace.clone();
    let (opts, mesh) = args.to_options_and_mesh()?;
    let started = start_local(opts).await?;
    announce_orchestrator(&started);
    restore_mesh(mesh.as_ref(), &started).await;
    println!("{runner_line}");
    println!("Orgs: {}", orgs.join(", "));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let dashboard = if dash.no_dashboard {
        None
    } else {
        let mut cfg = DashboardConfig::new(started.paths.root());
        cfg.listen = dash.dashboard_listen;
        cfg.password = dash.dashboard_password.map(Secret::new);
        cfg.tls = dash.dashboard_tls;
        cfg.editor_listen = dash.dashboard_editor_listen;
        cfg.editor_url = dash.dashboard_editor_url;
        // The operator it installs watches the namespace this orchestrator puts AgentTasks in.
        cfg.operator_install.namespace = namespace.clone();
        dash.operator.apply(&mut cfg.operator_install);
        let handle = OrchestratorHandle {
            url: format!("http://{}", started.addr),
            token: started.app.orchestrator.config().admin_token.clone(),
        };
        cfg.setup_flow = Some(mesh_setup(started.paths.root(), &handle)?);
        let d = Dashboard::bind(cfg, handle).await?;
        print_dashboard_login(&d, dash.login_link);
        if let Some(org) = orgs.first() {
            println!(
                "Next: open the dashboard, or run `guildnet schedule --org {org} \"your task\" -f` \
                 (token from the state dir)"
            );
        }
        Some(tokio::spawn(d.serve(stopped())))
    };
    let orchestrator = tokio::spawn(async move {
        guildnet_core::orchestrator::serve_with(started.listener, started.app, &server, stopped())
            .await
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    let served = orchestrator.await;
    if let Some(m) = &mesh {
        m.stop().await;
    }
    served??;
    if let Some(d) = dashboard {
        d.await??;
    }
    Ok(())
}

/// Tells the runtime mesh where the orchestrator listens and puts a saved mesh back.
async fn restore_mesh(
    mesh: Option<&Arc<guildnet_mesh::runtime::RuntimeMesh>>,
    started: &guildnet_core::launch::LocalOrchestrator,
) {
    if let Some(m) = mesh {
        m.set_listen_port(started.addr.port());
        m.restore().await;
    }
}

fn announce_orchestrator(started: &guildnet_core::launch::LocalOrchestrator) {
    match &started.token_source {
        AdminTokenSource::Configured => {
            tracing::info!("admin token: from ORCHESTRATOR_TOKEN / --token")
        }
        AdminTokenSource::File(p) | AdminTokenSource::Generated(p) => {
            tracing::info!(path = %p.display(), "admin token: stored in file (mode 0600)")
        }
    }
    tracing::info!(
        addr = %started.addr,
        state = %started.paths.root().display(),
        backend = started.app.orchestrator.backend_name(),
        store = %started.store,
        "orchestrator listening"
    );
    println!(
        "GuildNet orchestrator listening on http://{} (state: {}, store: {})",
        started.addr,
        started.paths.root().display(),
        started.store
    );
    if let AdminTokenSource::Generated(p) | AdminTokenSource::File(p) = &started.token_source {
        println!("Admin token: in {} (mode 0600)", p.display());
    }
}

/// Starts and serves an orchestrator until `shutdown` resolves.
pub async fn run_orchestrator(
    args: OrchestratorArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = args.server_options()?;
    let (opts, mesh) = args.to_options_and_mesh()?;
    let started = start_local(opts).await?;
    announce_orchestrator(&started);
    restore_mesh(mesh.as_ref(), &started).await;
    let served =
        guildnet_core::orchestrator::serve_with(started.listener, started.app, &server, shutdown)
            .await;
    if let Some(m) = &mesh {
        m.stop().await;
    }
    served?;
    Ok(())
}

/// Reads the agent's configuration from the environment, then hardens the process: the
/// secrets leave the environment (no child inherits them), the process becomes non-dumpable
/// (its `/proc/<pid>/environ` and memory need `CAP_SYS_PTRACE`) and a child subreaper. Call it
/// before starting threads (the `guildnet-agent` binary does; `guildnet agent` calls it from
/// its runtime's first task, before anything else runs).
pub fn agent_config() -> Result<guildnet_core::agent::AgentConfig, std::process::ExitCode> {
    let cfg = guildnet_core::agent::AgentConfig::from_env().map_err(|e| {
        eprintln!("guildnet-agent: {e}");
        std::process::ExitCode::from(2)
    })?;
    // The orchestrator names the other secret variables it set (model provider keys...).
    let listed = std::env::var(guildnet_core::agent_env::SECRET_ENV).unwrap_or_default();
    let extra: Vec<&str> = listed
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let h = guildnet_core::agent::process::harden_self(&extra);
    tracing::debug!(removed = ?h.removed, h.non_dumpable, h.subreaper, "agent process hardened");
    Ok(cfg)
}

/// How the agent starts: with its task, or warm in a pool (waiting for one).
pub enum AgentStart {
    /// A task's agent (its environment carries the task and its token).
    Task(Box<guildnet_core::agent::AgentConfig>),
    /// A warm pool agent (its environment carries only its org's pool token).
    Pool(Box<guildnet_core::agent::pool::PoolAgentConfig>),
}

/// Like [`agent_config`], also for warm pool agents (a pool token and no `TASK_ID`): reads the
/// configuration, then hardens the process (the pool token leaves the environment too).
pub fn agent_start() -> Result<AgentStart, std::process::ExitCode> {
    use guildnet_core::agent::pool::PoolAgentConfig;
    if !PoolAgentConfig::wanted(|k| std::env::var(k).ok()) {
        return agent_config().map(|c| AgentStart::Task(Box::new(c)));
    }
    // Variables that are not UTF-8 cannot be agent settings; they are left out.
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let cfg = PoolAgentConfig::from_vars(vars).map_err(|e| {
        eprintln!("guildnet-agent: {e}");
        std::process::ExitCode::from(2)
    })?;
    let h = guildnet_core::agent::process::harden_self(&[]);
    tracing::debug!(removed = ?h.removed, h.non_dumpable, h.subreaper, "warm agent process hardened");
    Ok(AgentStart::Pool(Box::new(cfg)))
}

/// Runs an agent as [`agent_start`] read it: a warm one first waits for its task (SIGTERM while
/// waiting exits at once, code 0), then runs it like any agent and exits.
pub async fn run_agent_start(start: AgentStart) -> std::process::ExitCode {
    match start {
        AgentStart::Task(cfg) => run_agent_with(*cfg).await,
        AgentStart::Pool(pool) => {
            match guildnet_core::agent::pool::wait_for_task(&pool, shutdown_signal()).await {
                Ok(Some((cfg, client))) => run_agent_with_client(cfg, Some(client)).await,
                Ok(None) => {
                    tracing::info!("warm agent stopped while waiting");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "warm agent could not get a task");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs the agent runtime from the environment until its task is done (what `guildnet-agent`
/// and `guildnet agent` do); a warm pool agent first waits for its task.
pub async fn run_agent() -> std::process::ExitCode {
    match agent_start() {
        Ok(start) => run_agent_start(start).await,
        Err(code) => code,
    }
}

/// Runs the agent with `cfg` until its task is done or SIGTERM/SIGINT. After the signal the
/// agent has the runner's grace plus its shutdown budget to finish; a backstop exits the process
/// (code 143) a few seconds after that, whatever is still pending.
pub async fn run_agent_with(cfg: guildnet_core::agent::AgentConfig) -> std::process::ExitCode {
    run_agent_with_client(cfg, None).await
}

/// [`run_agent_with`] over a given client (a warm agent's), or a new one.
pub async fn run_agent_with_client(
    cfg: guildnet_core::agent::AgentConfig,
    client: Option<guildnet_core::client::AgentClient>,
) -> std::process::ExitCode {
    use guildnet_core::agent::{run, run_with_client, AgentOutcome};
    let backstop = cfg.kill_grace + cfg.shutdown_budget + std::time::Duration::from_secs(5);
    let stop = async move {
        shutdown_signal().await;
        tracing::info!(?backstop, "stop requested: shutting down");
        std::thread::spawn(move || {
            std::thread::sleep(backstop);
            eprintln!("guildnet-agent: shutdown took longer than {backstop:?}; exiting");
            std::process::exit(143);
        });
    };
    let outcome = match client {
        Some(c) => run_with_client(cfg, c, stop).await,
        None => run(cfg, stop).await,
    };
    match outcome {
        Ok(AgentOutcome::Completed(t)) => {
            tracing::info!(task = %t.id, status = %t.status, "task completed");
            std::process::ExitCode::SUCCESS
        }
        Ok(AgentOutcome::Cancelled) => {
            tracing::info!("task cancelled");
            std::process::ExitCode::SUCCESS
        }
        Ok(AgentOutcome::Stopped) => {
            tracing::info!("agent stopped before the task finished");
            std::process::ExitCode::from(143)
        }
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr for the binaries: `RUST_LOG` filters (default `info`), `GUILDNET_LOG_FORMAT=json`
/// switches to JSON lines, and colour codes are only written to a terminal.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // GUILDNET_LOG_FORMAT=json: one JSON object per line, for log collectors. Colours only on
    // a terminal.
    let _ = match std::env::var("GUILDNET_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().with_current_span(false).try_init(),
        _ => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Up {
        #[command(flatten)]
        dash: UpDashboardArgs,
    }

    #[test]
    fn guildnet_up_passes_the_operator_install_flags_to_its_dashboard() {
        let up = Up::try_parse_from([
            "up",
            "--operator-image",
            " registry.test/guildnet-operator:1 ",
            "--operator-mesh-sidecar-image",
            "registry.test/tailscale:1",
            "--operator-mesh-plain-http-derp",
        ])
        .unwrap();
        let mut opts = guildnet_kube::install::InstallOptions::default();
        up.dash.operator.apply(&mut opts);
        assert_eq!(opts.image, "registry.test/guildnet-operator:1");
        assert_eq!(
            opts.mesh_sidecar_image.as_deref(),
            Some("registry.test/tailscale:1")
        );
        assert!(opts.mesh_plain_http_derp);
        // Unset or blank: the release image stays.
        let up = Up::try_parse_from(["up", "--operator-image", " "]).unwrap();
        let mut opts = guildnet_kube::install::InstallOptions::default();
        up.dash.operator.apply(&mut opts);
        assert_eq!(
            opts.image,
            guildnet_kube::install::InstallOptions::default().image
        );
        assert_eq!(opts.mesh_sidecar_image, None);
    }
}
