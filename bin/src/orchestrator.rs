//! `guildnet-orchestrator`: flags/env -> config -> serve. All logic lives in guildnet-core.

use clap::Parser;
use guildnet_bin::{init_tracing, shutdown_signal, OrchestratorArgs};

#[derive(Parser)]
#[command(
    name = "guildnet-orchestrator",
    version,
    about = "GuildNet orchestrator: REST API, durable task state (SQLite, or PostgreSQL with --store), agent protocol, local backend"
)]
struct Cli {
    #[command(flatten)]
    args: OrchestratorArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    guildnet_core::state_dir::private_umask();
    init_tracing();
    let cli = Cli::parse();
    guildnet_bin::run_orchestrator(cli.args, shutdown_signal()).await
}
