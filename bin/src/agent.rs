//! `guildnet-agent`: runs in a task's pod (or as a local child process). Reads its environment
//! and runs the agent runtime from guildnet-core until the task is done.

use clap::Parser;
use guildnet_bin::{init_tracing, shutdown_signal};
use guildnet_core::agent::{run, AgentConfig, AgentOutcome};

#[derive(Parser)]
#[command(
    name = "guildnet-agent",
    version,
    about = "GuildNet agent: registers, claims its task, runs it, streams logs, reports completion",
    long_about = "Configured by environment: ORCHESTRATOR_URL, GUILDNET_AGENT_TOKEN, TASK_ID, ORG_NAME, AGENT_NAME, GUILDNET_RUNNER (command template), GUILDNET_WORKSPACE."
)]
struct Cli {}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    let _ = Cli::parse();
    let cfg = match AgentConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("guildnet-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(cfg, shutdown_signal()).await {
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
