//! `guildnet-orchestrator`: flags/env -> config -> serve. All logic lives in guildnet-core.

/// The orchestrator's allocator is mimalloc: on the schedule path glibc's malloc, free and
/// consolidation took about 11% of the server's CPU, and mimalloc took the CPU per schedule from
/// 52.8 to 40.4 µs (docs/BENCHMARKS.md, issue 23). The agent keeps glibc's (its idle RSS was
/// 7.4 MB with glibc, 18.3 MB with mimalloc; its target is < 15 MB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
