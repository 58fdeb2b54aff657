//! `example-agent`: guildnet-core's agent runtime as a binary, started by the placement
//! orchestrator's local pools (the same as `guildnet-agent`). It reads its task from the
//! environment the backend sets (ORCHESTRATOR_URL, GUILDNET_AGENT_TOKEN, TASK_ID, ...).

use guildnet_core::agent::{run, AgentConfig, AgentOutcome};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = match AgentConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("example-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match run(cfg, stop).await {
        Ok(AgentOutcome::Completed(t)) => {
            tracing::info!(task = %t.id, status = %t.status, "task completed");
            ExitCode::SUCCESS
        }
        Ok(AgentOutcome::Cancelled) => ExitCode::SUCCESS,
        Ok(AgentOutcome::Stopped) => ExitCode::from(143),
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            ExitCode::FAILURE
        }
    }
}
