//! `guildnet-agent`: runs in a task's pod (or as a local child process). Reads its environment
//! and runs the agent runtime from guildnet-core until the task is done.

use clap::Parser;
use guildnet_bin::{init_tracing, run_agent};

/// Agent environment, documented for `--help`.
const ENV_HELP: &str = "Configured by environment: ORCHESTRATOR_URL, GUILDNET_AGENT_TOKEN, TASK_ID, ORG_NAME, AGENT_NAME, GUILDNET_RUNNER (command template), GUILDNET_WORKSPACE.";

#[derive(Parser)]
#[command(
    name = "guildnet-agent",
    version,
    about = "GuildNet agent: registers, claims its task, runs it, streams logs, reports completion",
    long_about = ENV_HELP
)]
struct Cli {}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    let _ = Cli::parse();
    run_agent().await
}
