//! `guildnet`: the command-line front end. `up` runs an orchestrator on SQLite with the local
//! backend; the other commands talk to an orchestrator over its API.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use guildnet_bin::{init_tracing, run_up, shutdown_signal, OrchestratorArgs, UpDashboardArgs};
use guildnet_core::client::{LogFollow, OrchestratorClient};
use guildnet_core::context::{ContextFile, RepoSpec};
use guildnet_core::model::{LogStream, Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::api::{ScheduleRequest, TaskListQuery};
use guildnet_core::state_dir::StatePaths;
use guildnet_core::token::Secret;
use std::io::{Read, Write};
use std::time::Duration;

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
  guildnet tasks --status running -o yaml
  guildnet logs <task id> -f
  guildnet org create acme
  guildnet completion bash > ~/.local/share/bash-completion/completions/guildnet"
)]
struct Cli {
    /// Orchestrator URL.
    #[arg(
        long,
        global = true,
        env = "GUILDNET_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Admin token (default: the token file in the state dir, as written by `guildnet up`).
    #[arg(
        long,
        global = true,
        env = "ORCHESTRATOR_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print JSON instead of tables (same as `-o json`).
    #[arg(long, global = true)]
    json: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    output: Option<Output>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Output formats (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable tables and lines.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// The output format chosen for this run (set once in `real_main`).
static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Cmd {
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
enum PoolCmd {
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
        /// Scale to zero after this many seconds without a task (default: never).
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

fn print_pool(st: &guildnet_core::orchestrator::api::PoolStatus) {
    println!(
        "pool of org {}: {} waiting, {} warm starts, {} cold starts",
        st.org, st.waiting, st.warm_starts, st.cold_starts
    );
    if let Some(b) = &st.backend {
        let size = b.spec.as_ref().map_or(0, |s| s.size);
        println!(
            "{}: size {size}, desired {}, warm pods {} ({} running){}",
            b.resource,
            b.desired,
            b.warm,
            b.running,
            if b.scaled_to_zero {
                ", scaled to zero (idle)"
            } else {
                ""
            }
        );
        for c in &b.conditions {
            println!("  {c}");
        }
    }
}

#[derive(Subcommand)]
enum OrgCmd {
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

fn admin_token(explicit: Option<String>) -> anyhow::Result<Secret> {
    if let Some(t) = explicit.filter(|t| !t.is_empty()) {
        return Ok(Secret::new(t));
    }
    let paths = StatePaths::resolve()?;
    let file = paths.admin_token_file();
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
        _ => anyhow::bail!(
            "no admin token: set ORCHESTRATOR_TOKEN or pass --token (no token file at {})",
            file.display()
        ),
    }
}

/// Reads `PATH[=DEST]` into a context file.
fn context_file(spec: &str) -> anyhow::Result<ContextFile> {
    let (path, dest) = match spec.split_once('=') {
        Some((p, d)) => (p, d.to_owned()),
        None => {
            let p = std::path::Path::new(spec);
            let dest = if guildnet_core::context::validate_rel_path(spec).is_ok() {
                spec.to_owned()
            } else {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow::anyhow!("--file {spec}: no file name; give PATH=DEST"))?
                    .to_owned()
            };
            (spec, dest)
        }
    };
    let content = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--file {spec}: cannot read {path}: {e}"))?;
    Ok(ContextFile {
        path: dest,
        content,
    })
}

fn print_tasks(tasks: &[Task]) {
    println!(
        "{:<34} {:<10} {:<16} {:<22} TASK",
        "ID", "STATUS", "ORG", "AGENT"
    );
    for t in tasks {
        let text: String = t
            .task
            .chars()
            .take(40)
            .collect::<String>()
            .replace('\n', " ");
        println!(
            "{:<34} {:<10} {:<16} {:<22} {}",
            t.id,
            t.status,
            t.org,
            t.agent.as_ref().map(|a| a.as_str()).unwrap_or("-"),
            text
        );
    }
}

/// Prints `v` in the chosen structured format (JSON unless `-o yaml`).
fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    if OUTPUT.get() == Some(&Output::Yaml) {
        print!("{}", serde_saphyr::to_string(v)?);
    } else {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

async fn follow(client: &OrchestratorClient, id: &TaskId, json: bool) -> anyhow::Result<Task> {
    let mut s = Box::pin(client.follow_logs(id, 0, Duration::from_secs(120)));
    let mut out = std::io::stdout();
    while let Some(item) = s.next().await {
        match item? {
            LogFollow::Line(l) => {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&l)?)?;
                } else if l.stream == LogStream::System {
                    writeln!(out, "[agent] {}", l.line)?;
                } else {
                    writeln!(out, "{}", l.line)?;
                }
            }
            LogFollow::End(t) => return Ok(*t),
        }
    }
    anyhow::bail!("log stream ended before the task finished")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    match real_main().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guildnet: {e:#}");
            if let Some(guildnet_core::client::ClientError::Transport { url, .. }) =
                e.downcast_ref::<guildnet_core::client::ClientError>()
            {
                eprintln!(
                    "hint: is an orchestrator running at {url}? Start one with `guildnet up`, \
                     or point --url (GUILDNET_URL) at yours."
                );
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<std::process::ExitCode> {
    let mut cli = Cli::parse();
    let output = match (cli.output, cli.json) {
        (Some(o), _) => o,
        (None, true) => Output::Json,
        (None, false) => Output::Table,
    };
    let _ = OUTPUT.set(output);
    cli.json = output != Output::Table;
    if let Cmd::Completion { shell } = cli.cmd {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "guildnet",
            &mut std::io::stdout(),
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Cmd::Version = cli.cmd {
        let client = OrchestratorClient::new(&cli.url, Secret::new(""))?;
        let server = client.health().await;
        let v = serde_json::json!({
            "client": env!("CARGO_PKG_VERSION"),
            "server": server.as_ref().ok().map(|h| h.version.clone()),
            "serverUrl": cli.url,
            "serverError": server.as_ref().err().map(|e| e.to_string()),
        });
        if cli.json {
            print_json(&v)?;
        } else {
            println!("client: guildnet {}", env!("CARGO_PKG_VERSION"));
            match server {
                Ok(h) => println!("server: {} ({}, {} backend)", h.version, cli.url, h.backend),
                Err(e) => println!("server: unreachable ({e})"),
            }
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Cmd::Agent = cli.cmd {
        return Ok(guildnet_bin::run_agent().await);
    }
    if let Cmd::Up { args, dashboard } = cli.cmd {
        guildnet_core::state_dir::private_umask();
        let mut args = *args;
        if args.orgs.is_empty() {
            args.orgs.push(OrgName::new("default")?);
        }
        if args.runner.is_none() && args.runner_preset.is_none() {
            // Echo runner: shows the pipeline end to end; plug in an AI CLI with --runner.
            args.runner = Some("cat".into());
        }
        run_up(args, dashboard, shutdown_signal()).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let client = OrchestratorClient::new(&cli.url, admin_token(cli.token)?)?;
    match cli.cmd {
        Cmd::Up { .. } | Cmd::Agent | Cmd::Completion { .. } | Cmd::Version => {
            anyhow::bail!("internal error: command handled above")
        }
        Cmd::Org {
            cmd: OrgCmd::Delete { name },
        } => {
            client.delete_org(&name).await?;
            if cli.json {
                print_json(&serde_json::json!({ "deleted": name }))?;
            } else {
                println!("org {name} deleted");
            }
        }
        Cmd::Org {
            cmd: OrgCmd::Create { name },
        } => {
            let org = client.create_org(&name).await?;
            if cli.json {
                print_json(&org)?;
            } else {
                println!("org {} created", org.name);
            }
        }
        Cmd::Org {
            cmd: OrgCmd::Bootstrap { org, cp, worker },
        } => {
            let total = 1 + cp.len() + worker.len() + 4;
            let req = guildnet_core::orchestrator::bootstrap::OrgBootstrapRequest {
                org: org.clone(),
                cp_nodes: cp,
                worker_nodes: worker,
            };
            let started = client.start_bootstrap(&req).await?;
            eprintln!("bootstrap of org {} {}", started.org, started.state);
            let ok = follow_bootstrap(&client, &org, total, cli.json).await?;
            if !ok {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Cmd::Org {
            cmd: OrgCmd::Kubeconfig { org, endpoint },
        } => {
            let r = client.generate_kubeconfig(&org, &endpoint).await?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!("kubeconfig of org {} written to {}", r.org, r.path);
            }
        }
        Cmd::Pool { cmd } => {
            let st = match cmd {
                PoolCmd::Set {
                    org,
                    size,
                    image,
                    runner,
                    idle_secs,
                } => {
                    let spec = guildnet_core::orchestrator::api::PoolSpec {
                        size,
                        image,
                        runner,
                        idle_seconds: idle_secs,
                    };
                    Some(client.set_pool(&org, &spec).await?)
                }
                PoolCmd::Show { org } => Some(client.pool(&org).await?),
                PoolCmd::Delete { org } => {
                    let d = client.delete_pool(&org).await?;
                    if cli.json {
                        print_json(&d)?;
                    } else if d.removed {
                        println!("pool of org {} removed", d.org);
                    } else {
                        println!("org {} had no pool", d.org);
                    }
                    None
                }
            };
            if let Some(st) = st {
                if cli.json {
                    print_json(&st)?;
                } else {
                    print_pool(&st);
                }
            }
        }
        Cmd::Org { cmd: OrgCmd::List } => {
            let orgs = client.orgs().await?;
            if cli.json {
                print_json(&orgs)?;
            } else {
                for o in orgs {
                    println!("{}", o.name);
                }
            }
        }
        Cmd::Schedule {
            org,
            text: positional,
            task,
            agent_hint,
            repo,
            git_ref,
            files,
            follow: f,
        } => {
            let task = positional.or(task).unwrap_or_default();
            let text = if task == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                task
            };
            let mut req = ScheduleRequest::new(org, text);
            req.agent_hint = agent_hint;
            req.repo = repo.map(|r| {
                let mut spec = RepoSpec::parse(&r);
                if git_ref.is_some() {
                    spec = RepoSpec {
                        url: r.clone(),
                        git_ref: git_ref.clone(),
                    };
                }
                spec
            });
            req.files = files
                .iter()
                .map(|f| context_file(f))
                .collect::<anyhow::Result<_>>()?;
            let t = client.schedule_request(&req).await?;
            if cli.json && !f {
                print_json(&t)?;
            } else {
                eprintln!("scheduled task {} in org {}", t.id, t.org);
            }
            if f {
                let done = follow(&client, &t.id, cli.json).await?;
                eprintln!("task {} {}", done.id, done.status);
                if done.status != TaskStatus::Succeeded {
                    return Ok(std::process::ExitCode::FAILURE);
                }
            }
        }
        Cmd::Tasks { status, org, limit } => {
            let status = match status {
                Some(s) => Some(TaskStatus::parse_any_case(&s).ok_or_else(|| {
                    anyhow::anyhow!("unknown status {s:?}; one of Scheduled, Submitted, Running, Succeeded, Failed, Cancelled")
                })?),
                None => None,
            };
            let tasks = client
                .tasks(&TaskListQuery {
                    status,
                    org,
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            if cli.json {
                print_json(&tasks)?;
            } else {
                print_tasks(&tasks);
            }
        }
        Cmd::Task { id } => print_json(&client.task_detail(&id).await?)?,
        Cmd::Logs { id, follow: f } => {
            if f {
                // Like `schedule -f`: the exit code says whether the task succeeded.
                let done = follow(&client, &id, cli.json).await?;
                eprintln!("task {} {}", done.id, done.status);
                if done.status != TaskStatus::Succeeded {
                    return Ok(std::process::ExitCode::FAILURE);
                }
            } else {
                for l in client.logs(&id, 0).await? {
                    if cli.json {
                        println!("{}", serde_json::to_string(&l)?);
                    } else {
                        println!("{}", l.line);
                    }
                }
            }
        }
        Cmd::Cancel { id } => {
            let t = client.cancel(&id).await?;
            if cli.json {
                print_json(&t)?;
            } else {
                println!("task {} {}", t.id, t.status);
            }
        }
        Cmd::Agents => {
            let agents = client.agents().await?;
            if cli.json {
                print_json(&agents)?;
            } else {
                println!("{:<22} {:<16} {:<34} LAST SEEN", "NAME", "ORG", "TASK");
                for a in agents {
                    println!(
                        "{:<22} {:<16} {:<34} {}",
                        a.name,
                        a.org,
                        a.task_id.as_ref().map(|t| t.as_str()).unwrap_or("-"),
                        a.last_seen_at.to_rfc3339()
                    );
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A text progress bar: `[#####-----] 3/10`.
fn progress_bar(done: usize, total: usize) -> String {
    let total = total.max(1);
    let done = done.min(total);
    let width = 20;
    let filled = done * width / total;
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

/// Follows an org's bootstrap stream, printing each step with a progress bar (or the JSON
/// events with `--json`). True when it succeeded.
async fn follow_bootstrap(
    client: &OrchestratorClient,
    org: &OrgName,
    total: usize,
    json: bool,
) -> anyhow::Result<bool> {
    let stream = client.follow_bootstrap(org).await?;
    futures_util::pin_mut!(stream);
    let mut done = 0usize;
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        if json {
            println!("{}", msg.data);
        }
        match msg.event.as_str() {
            "progress" => {
                let p: guildnet_core::seams::BootstrapProgress = serde_json::from_str(&msg.data)?;
                if json {
                    continue;
                }
                match p.phase.as_str() {
                    "start" => eprintln!("{} {} ...", progress_bar(done, total), p.step),
                    "done" => {
                        done += 1;
                        eprintln!("{} {} done", progress_bar(done, total), p.step);
                    }
                    "error" => eprintln!(
                        "{} {} failed: {}",
                        progress_bar(done, total),
                        p.step,
                        p.message
                    ),
                    _ => eprintln!("    {}", p.message),
                }
            }
            "done" => {
                if !json {
                    let s: guildnet_core::orchestrator::bootstrap::BootstrapStatus =
                        serde_json::from_str(&msg.data)?;
                    eprintln!(
                        "{} bootstrap of org {org} succeeded",
                        progress_bar(total, total)
                    );
                    if let Some(r) = s.result {
                        for key in ["kubeconfig", "talosconfig"] {
                            if let Some(p) = r.get(key).and_then(|v| v.as_str()) {
                                println!("{key}: {p}");
                            }
                        }
                    }
                }
                return Ok(true);
            }
            "error" => {
                if !json {
                    let s: guildnet_core::orchestrator::bootstrap::BootstrapStatus =
                        serde_json::from_str(&msg.data)?;
                    eprintln!(
                        "bootstrap of org {org} failed: {}",
                        s.error.unwrap_or_default()
                    );
                }
                return Ok(false);
            }
            _ => {}
        }
    }
    anyhow::bail!("the bootstrap stream ended without a result; GET /orgs/<org>/bootstrap tells where it stands")
}
