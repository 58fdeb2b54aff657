//! `guildnet-agent`: runs in a task's pod (or as a local child process). Reads its environment,
//! hardens its own process before any thread starts (secrets out of the environment, not
//! dumpable, child subreaper), and runs the agent runtime from guildnet-core until the task is
//! done or SIGTERM.

use clap::Parser;
use guildnet_bin::{agent_start, init_tracing, run_agent_start};

/// Agent environment, documented for `--help`.
const ENV_HELP: &str = "Configured by environment: ORCHESTRATOR_URL, GUILDNET_AGENT_TOKEN, TASK_ID, ORG_NAME, AGENT_NAME, GUILDNET_RUNNER (command template), GUILDNET_WORKSPACE, GUILDNET_STATE_DIR; sandbox: GUILDNET_DENY_PATHS, GUILDNET_SANDBOX_WRITE_PATHS; GUILDNET_SHUTDOWN_SECS; warm pool mode: GUILDNET_POOL_TOKEN, GUILDNET_POOL_POD, GUILDNET_POOL_RUNNER without TASK_ID (see docs/AGENT.md).";

#[derive(Parser)]
#[command(
    name = "guildnet-agent",
    version,
    about = "GuildNet agent: registers, claims its task, runs it, streams logs, reports completion",
    long_about = ENV_HELP
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    init_tracing();
    let _ = Cli::parse();
    // Before the runtime starts its threads: the environment is changed here.
    let start = match agent_start() {
        Ok(s) => s,
        Err(code) => return code,
    };
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run_agent_start(start)),
        Err(e) => {
            eprintln!("guildnet-agent: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
