//! `guildnet-dashboard`: flags/env -> config -> serve. All logic lives in guildnet-dashboard.

use anyhow::Context as _;
use clap::Parser;
use guildnet_bin::{init_tracing, shutdown_signal};
use guildnet_core::state_dir::StatePaths;
use guildnet_core::token::Secret;
use guildnet_dashboard::{Dashboard, DashboardConfig, OrchestratorHandle};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "guildnet-dashboard",
    version,
    about = "GuildNet dashboard: web UI over the orchestrator"
)]
struct Cli {
    /// Address to listen on.
    #[arg(
        long,
        env = "GUILDNET_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    listen: SocketAddr,
    /// State directory (default: GUILDNET_STATE_DIR, GUILDNET_HOME/state, ~/.guildnet/state).
    #[arg(long, env = "GUILDNET_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Orchestrator base URL.
    #[arg(
        long,
        env = "GUILDNET_ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    orchestrator_url: String,
    /// Orchestrator admin token (default: the state dir's orchestrator.token).
    #[arg(long, env = "ORCHESTRATOR_TOKEN", hide_env_values = true)]
    orchestrator_token: Option<String>,
    /// Dashboard password (default: generated once into the state dir's dashboard.password).
    #[arg(long, env = "GUILDNET_DASHBOARD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Serve HTTPS with a self-signed certificate kept in the state dir.
    #[arg(long)]
    tls: bool,
    /// Where agents' editors are served: a second origin, never the dashboard's own (default:
    /// the dashboard's IP and a free port).
    #[arg(long, env = "GUILDNET_DASHBOARD_EDITOR_LISTEN")]
    editor_listen: Option<SocketAddr>,
    /// The editor origin as browsers reach it (e.g. https://editors.example.com behind a
    /// reverse proxy); it must be same-site with the dashboard.
    #[arg(long, env = "GUILDNET_DASHBOARD_EDITOR_URL")]
    editor_url: Option<String>,
    /// Print a one-time login link: auto (when output is a terminal), always, never.
    #[arg(long, env = "GUILDNET_LOGIN_LINK", value_enum, default_value_t = guildnet_bin::LoginLinkMode::Auto)]
    login_link: guildnet_bin::LoginLinkMode,
    /// What "provision a Talos cluster" installs.
    #[command(flatten)]
    operator: guildnet_bin::OperatorInstallArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    guildnet_core::state_dir::private_umask();
    init_tracing();
    let cli = Cli::parse();
    let paths = match cli.state_dir {
        Some(d) => StatePaths::new(d),
        None => StatePaths::resolve()?,
    };
    let token = match cli.orchestrator_token.filter(|t| !t.trim().is_empty()) {
        Some(t) => t.trim().to_owned(),
        None => {
            let file = paths.admin_token_file();
            std::fs::read_to_string(&file)
                .map(|t| t.trim().to_owned())
                .ok()
                .filter(|t| !t.is_empty())
                .with_context(|| {
                    format!(
                        "no orchestrator token: pass --orchestrator-token (or ORCHESTRATOR_TOKEN), or run next to an orchestrator whose token is in {}",
                        file.display()
                    )
                })?
        }
    };
    let mut cfg = DashboardConfig::new(paths.root());
    cfg.listen = cli.listen;
    cfg.password = cli.password.map(Secret::new);
    cfg.tls = cli.tls;
    cfg.editor_listen = cli.editor_listen;
    cfg.editor_url = cli.editor_url;
    cli.operator.apply(&mut cfg.operator_install);
    let handle = OrchestratorHandle {
        url: cli.orchestrator_url,
        token: Secret::new(token),
    };
    cfg.setup_flow = Some(guildnet_bin::mesh_setup(paths.root(), &handle)?);
    let dash = Dashboard::bind(cfg, handle).await?;
    guildnet_bin::print_dashboard_login(&dash, cli.login_link);
    dash.serve(shutdown_signal()).await?;
    Ok(())
}
