//! `guildnet-agent`: runs in a task's pod (or as a local child process). Reads its environment,
//! hardens its own process before any thread starts (secrets out of the environment, not
//! dumpable, child subreaper), and runs the agent runtime from guildnet-core until the task is
//! done or SIGTERM.

use clap::Parser;
use guildnet_bin::{agent_start, init_tracing, run_agent_start};

/// Agent environment, documented for `--help` (the names from `guildnet_core::agent_env`).
fn env_help() -> String {
    use guildnet_core::agent_env as e;
    format!(
        "Configured by environment: {}, {}, {}, {}, {}, {} (command template), {}, {}; sandbox: \
         {}, {}; {}; warm pool mode: {}, {}, {} without {} (see docs/AGENT.md).",
        e::ORCHESTRATOR_URL,
        e::AGENT_TOKEN,
        e::TASK_ID,
        e::ORG_NAME,
        e::AGENT_NAME,
        e::RUNNER,
        e::WORKSPACE,
        e::STATE_DIR,
        e::DENY_PATHS,
        e::SANDBOX_WRITE_PATHS,
        e::SHUTDOWN_SECS,
        e::POOL_TOKEN,
        e::POOL_POD,
        e::POOL_RUNNER,
        e::TASK_ID,
    )
}

#[derive(Parser)]
#[command(
    name = "guildnet-agent",
    version,
    about = "GuildNet agent: registers, claims its task, runs it, streams logs, reports completion",
    long_about = env_help()
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
