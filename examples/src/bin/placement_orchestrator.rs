//! `placement-orchestrator`: a custom GuildNet orchestrator assembled from guildnet-core's
//! pieces (SQLite store, orchestrator service, HTTP API) over its own placement policy: tasks go
//! to pools chosen by the org's labels, each pool runs at most CAPACITY tasks at once, and tasks
//! beyond that stay queued until a slot frees. It serves the standard API, so the `guildnet` CLI,
//! the Python client and curl work against it unchanged.
//!
//! ```sh
//! placement-orchestrator --listen 127.0.0.1:8080 --runner "sh -s" \
//!     --pool gpu:1:tier=gpu --pool shared:4 \
//!     --org acme:tier=gpu --org beta
//! ```
//!
//! Each pool here is a local backend (agents as local processes, with `GUILDNET_POOL=<pool>` in
//! their environment); in production each would be a cluster's backend.

use clap::Parser;
use guildnet_core::local::{LocalBackend, LocalBackendConfig};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::{
    admin_token, serve, AdminTokenSource, Orchestrator, OrchestratorConfig,
};
use guildnet_core::seams::ClusterBackend;
use guildnet_core::state_dir::StatePaths;
use guildnet_core::store::{Durability, SqliteStore, StateStore, StoreError, TaskQuery};
use guildnet_examples::labels::{Labels, OrgSpec, PoolSpec};
use guildnet_examples::placement::{PlacementBackend, Pool};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "placement-orchestrator",
    about = "A GuildNet orchestrator with label- and capacity-aware placement across pools"
)]
struct Cli {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// State directory (default: the standard GuildNet state dir).
    #[arg(long, env = "GUILDNET_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Admin token (default: generated once and stored 0600 in the state dir).
    #[arg(long, env = "ORCHESTRATOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Agent executable (default: `example-agent` next to this binary).
    #[arg(long, env = "GUILDNET_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Runner command template for agents (the task text is on its stdin).
    #[arg(long, env = guildnet_core::agent_env::RUNNER)]
    runner: Option<String>,
    /// A pool: `NAME:CAPACITY[:SELECTOR]`, e.g. `gpu:2:tier=gpu` (repeat; first wins ties).
    #[arg(long = "pool", default_value = "default:4")]
    pools: Vec<PoolSpec>,
    /// An org to register, with its labels: `NAME[:k=v,...]`, e.g. `acme:tier=gpu` (repeat).
    #[arg(long = "org")]
    orgs: Vec<OrgSpec>,
    /// How long a refused (queued) task waits before it is offered again, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    submit_retry_ms: u64,
    /// Agent heartbeat interval in seconds.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// Claim lease in seconds (greater than the heartbeat interval).
    #[arg(long, default_value_t = 30)]
    lease_ttl_secs: u64,
}

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("invalid flags: {0}")]
    Flags(String),
    #[error(transparent)]
    StateDir(#[from] guildnet_core::state_dir::StateDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn pools(cli: &Cli, paths: &StatePaths) -> Result<Vec<Pool>, StartError> {
    let agent_bin = match &cli.agent_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("example-agent")))
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                StartError::Flags("no example-agent next to this binary: pass --agent-bin".into())
            })?,
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for spec in &cli.pools {
        if !seen.insert(spec.name.clone()) {
            return Err(StartError::Flags(format!(
                "pool {} is given twice",
                spec.name
            )));
        }
        let mut cfg = LocalBackendConfig::new(paths.clone());
        cfg.agent_bin = agent_bin.clone();
        cfg.agent_args.clear();
        cfg.runner = cli.runner.clone();
        cfg.extra_env
            .push(("GUILDNET_POOL".into(), spec.name.clone()));
        if let Ok(rl) = std::env::var("RUST_LOG") {
            cfg.extra_env.push(("RUST_LOG".into(), rl));
        }
        let backend: Arc<dyn ClusterBackend> = Arc::new(LocalBackend::new(cfg));
        out.push(Pool {
            spec: spec.clone(),
            backend,
        });
    }
    Ok(out)
}

async fn run(cli: Cli) -> Result<(), StartError> {
    if cli.heartbeat_secs == 0 || cli.lease_ttl_secs <= cli.heartbeat_secs {
        return Err(StartError::Flags(
            "--lease-ttl-secs must be greater than --heartbeat-secs, which must be > 0".into(),
        ));
    }
    let paths = match &cli.state_dir {
        Some(d) => StatePaths::new(d.clone()),
        None => StatePaths::resolve()?,
    };
    paths.ensure()?;
    let (token, source) = admin_token(cli.token.clone(), &paths)?;

    // 1. The durable store.
    let db = paths.orchestrator_db();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(db, Durability::Full))
        .await
        .map_err(|e| StartError::Other(format!("store open task failed: {e}")))??;
    let store: Arc<dyn StateStore> = Arc::new(store);
    let mut labels: HashMap<OrgName, Labels> = HashMap::new();
    for org in &cli.orgs {
        let audit =
            guildnet_core::model::NewAudit::new("system", "org.create", org.name.as_str(), None);
        match store.create_org(&org.name, audit).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        labels.insert(org.name.clone(), org.labels.clone());
    }

    // 2. The listener, so agents learn the real address (port 0 works).
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cli.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: cli.listen,
        source,
    })?;

    // 3. The placement policy over one backend per pool.
    let backend = Arc::new(PlacementBackend::new(pools(&cli, &paths)?, labels));

    //    Tasks still in flight from a previous run keep their slots.
    let in_flight = store
        .list_tasks(TaskQuery {
            statuses: vec![TaskStatus::Submitted, TaskStatus::Running],
            ..Default::default()
        })
        .await?;
    for t in &in_flight {
        match backend.adopt(t) {
            Some(pool) => tracing::info!(task = %t.id, pool, "in-flight task adopted"),
            None => tracing::warn!(task = %t.id, org = %t.org, "in-flight task matches no pool"),
        }
    }

    // 4. The orchestrator service with our retry cadence: a refused task is offered again after
    //    `submit_retry`, which is how the queue drains.
    let mut cfg = OrchestratorConfig::new(token, format!("http://{addr}"));
    cfg.submit_retry = Duration::from_millis(cli.submit_retry_ms);
    cfg.heartbeat_interval = Duration::from_secs(cli.heartbeat_secs);
    cfg.lease_ttl = Duration::from_secs(cli.lease_ttl_secs);
    let orchestrator = Orchestrator::new(store, backend.clone(), cfg);

    println!("placement orchestrator listening on http://{addr}");
    for (name, (_, cap)) in backend.occupancy() {
        let spec = cli.pools.iter().find(|p| p.name == name);
        let selector = spec.map(|p| p.selector.to_string()).unwrap_or_default();
        println!("pool {name}: capacity {cap}, selector {selector}");
    }
    for org in &cli.orgs {
        println!("org {}: labels {}", org.name, org.labels);
    }
    match source {
        AdminTokenSource::Configured => println!("admin token: from ORCHESTRATOR_TOKEN / --token"),
        AdminTokenSource::File(p) | AdminTokenSource::Generated(p) => {
            println!("admin token: in {} (mode 0600)", p.display())
        }
    }

    // 5. The standard HTTP API (and the background dispatcher/reaper) until SIGINT/SIGTERM.
    serve(listener, orchestrator, shutdown_signal())
        .await
        .map_err(|e| StartError::Other(format!("server failed: {e}")))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("placement-orchestrator: {e}");
            ExitCode::FAILURE
        }
    }
}
