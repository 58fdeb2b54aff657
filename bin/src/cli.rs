//! `guildnet`: the command-line front end. `up` runs an orchestrator on SQLite with the local
//! backend; the other commands talk to an orchestrator over its API.

/// The orchestrator's allocator is mimalloc: on the schedule path glibc's malloc, free and
/// consolidation took about 11% of the server's CPU, and mimalloc took the CPU per schedule from
/// 52.8 to 40.4 µs (docs/BENCHMARKS.md, issue 23). The agent keeps glibc's (its idle RSS was
/// 7.4 MB with glibc, 18.3 MB with mimalloc; its target is < 15 MB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "cli/contexts.rs"]
mod contexts;
#[path = "cli/view.rs"]
mod view;

use clap::{CommandFactory, Parser};
use futures_util::StreamExt;
use guildnet_bin::cli_args::{Cli, Cmd, MeshCmd, OrgCmd, Output, PoolCmd};
use guildnet_bin::{init_tracing, run_up, shutdown_signal};
use guildnet_core::api::{ScheduleRequest, TaskListQuery};
use guildnet_core::client::{LogFollow, OrchestratorClient};
use guildnet_core::client_config::{self, Overrides};
use guildnet_core::context::{ContextFile, RepoSpec};
use guildnet_core::model::{LogStream, Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::token::Secret;
use std::io::{Read, Write};
use std::time::Duration;

/// The output format chosen for this run (set once in `real_main`).
static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

fn print_pool(st: &guildnet_core::api::PoolStatus) {
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

/// The orchestrator to talk to: flags > env > context > state dir (see
/// guildnet_core::client_config).
fn endpoint(cli: &Cli) -> anyhow::Result<client_config::Endpoint> {
    Ok(client_config::resolve(&Overrides {
        url: cli.url.clone(),
        token: cli.token.clone().map(Secret::new),
        context: cli.context.clone(),
    })?)
}

/// A client for the resolved endpoint; without a token, an error that says where to get one.
fn admin_client(ep: &client_config::Endpoint) -> anyhow::Result<OrchestratorClient> {
    let Some(token) = ep.token.clone() else {
        let file = ep
            .token_file
            .as_ref()
            .map(|f| format!(" (no token file at {})", f.display()))
            .unwrap_or_default();
        anyhow::bail!(
            "no admin token for {}: pass --token, set ORCHESTRATOR_TOKEN, save one with \
             `guildnet login URL --token-file PATH`, or run `guildnet up` here{file}",
            ep.url
        );
    };
    Ok(OrchestratorClient::new(&ep.url, token)?)
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

/// Prints `v` in the chosen structured format (JSON unless `-o yaml`).
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
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
                     or point --url (GUILDNET_URL) or a context (`guildnet context use`) at yours."
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
    if let Cmd::Login { url, name, token } = &cli.cmd {
        contexts::login(url, name.clone(), token, cli.token.clone(), cli.json).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Cmd::Context { cmd } = cli.cmd {
        contexts::context(cmd, cli.json)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Cmd::Version = cli.cmd {
        let ep = endpoint(&cli)?;
        let url = ep.url.clone();
        let client = OrchestratorClient::new(&url, Secret::new(""))?;
        let server = client.health().await;
        let v = serde_json::json!({
            "client": env!("CARGO_PKG_VERSION"),
            "server": server.as_ref().ok().map(|h| h.version.clone()),
            "serverUrl": url,
            "serverError": server.as_ref().err().map(|e| e.to_string()),
        });
        if cli.json {
            print_json(&v)?;
        } else {
            println!("client: guildnet {}", env!("CARGO_PKG_VERSION"));
            match server {
                Ok(h) => println!("server: {} ({url}, {} backend)", h.version, h.backend),
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
    let client = admin_client(&endpoint(&cli)?)?;
    let now = chrono::Utc::now;
    match cli.cmd {
        Cmd::Up { .. }
        | Cmd::Agent
        | Cmd::Completion { .. }
        | Cmd::Version
        | Cmd::Login { .. }
        | Cmd::Context { .. } => {
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
                    let spec = guildnet_core::api::PoolSpec {
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
                print!("{}", view::tasks_table(&tasks, now()));
            }
        }
        Cmd::Task { id } => {
            let d = client.task_detail(&id).await?;
            if cli.json {
                print_json(&d)?;
            } else {
                print!("{}", view::task_view(&d, now()));
            }
        }
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
        Cmd::Mesh { cmd: MeshCmd::Show } => {
            let m = client.mesh().await?;
            if cli.json {
                print_json(&m)?;
            } else {
                print!("{}", mesh_view(&m));
            }
        }
        Cmd::Disk => {
            let d = client.disk().await?;
            if cli.json {
                print_json(&d)?;
            } else {
                print!("{}", view::disk_view(&d));
            }
        }
        Cmd::Prune { older_than } => {
            let r = client.prune(older_than).await?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!(
                    "removed {} finished task(s) and {} workspace(s) ({}) that finished before {}",
                    r.tasks,
                    r.workspaces,
                    view::human_bytes(r.workspace_bytes),
                    r.before.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
        }
        Cmd::Agents => {
            let agents = client.agents().await?;
            if cli.json {
                print_json(&agents)?;
            } else {
                print!("{}", view::agents_table(&agents, now()));
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

/// `guildnet mesh show` as text.
fn mesh_view(m: &guildnet_core::api::MeshStatus) -> String {
    if !m.available {
        return "mesh: not available (the orchestrator runs agents on its own machine)\n".into();
    }
    if !m.configured {
        return "mesh: none (agents run off the tailnet); set one in the dashboard or with PUT /mesh\n"
            .into();
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "mesh: {} (from {})\nlogin server: {}\nagents' user: {}{}\n",
        dash(&m.headscale_url),
        dash(&m.source),
        dash(&m.login_server),
        dash(&m.user),
        if m.tags.is_empty() {
            String::new()
        } else {
            format!(", tags {}", m.tags.join(","))
        }
    );
    if m.source.as_deref() == Some("api") {
        out.push_str(&format!(
            "orchestrator node: {} {} {}\n",
            dash(&m.hostname),
            if m.joined { "joined at" } else { "not joined" },
            m.tailnet_ips.join(", ")
        ));
        out.push_str(&format!(
            "agents reach it at: {}\n",
            dash(&m.orchestrator_url)
        ));
        if let Some(e) = &m.error {
            out.push_str(&format!("last error: {e}\n"));
        }
    }
    out
}
