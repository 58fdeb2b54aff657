//! GuildNet benchmark suite (not a test): prints figures and their ratio to the targets.
//!
//! 1. **Agents at scale**: one orchestrator (its own process, real SQLite store with
//!    `synchronous=FULL`, a backend that starts nothing and hands each task's agent credentials to
//!    the bench) and N simulated agents. Each agent is a task of this process speaking HTTP/1.1
//!    the way the real agent does: it registers and claims its task on one connection (agents
//!    join over a ramp), then heartbeats every 5 s with its fencing token (each heartbeat renews
//!    the lease: a durable write), each on a new connection, since the real agent's client drops
//!    connections idle for more than `AGENT_POOL_IDLE` (500 ms). Heartbeat latency includes the
//!    connect. Reports claim and heartbeat latency p50/p99 and the orchestrator's RSS.
//! 2. **Idle agent RSS**: the real `guildnet-agent` started by the real `guildnet-orchestrator`
//!    (local backend, `sleep` runner, no editor), VmRSS read from /proc after it settles.
//!
//! Schedule throughput/latency and schedule -> claimed are the `schedule` bench; the operator's
//! figures are the `operator` bench (`scripts/bench.sh` runs them and prints one table).
//!
//! `cargo bench -p guildnet-bin --bench suite [-- --agents N --secs S --ramp-secs R --keep-alive]`
//! (default 10,000 agents, 30 s of heartbeats after a 10 s ramp; `--keep-alive` makes each
//! agent keep one connection for all its requests, to measure what idle connections cost).

/// The orchestrator's allocator is mimalloc: on the schedule path glibc's malloc, free and
/// consolidation took about 11% of the server's CPU, and mimalloc took the CPU per schedule from
/// 52.8 to 40.4 µs (docs/BENCHMARKS.md, issue 23). The agent keeps glibc's (its idle RSS was
/// 7.4 MB with glibc, 18.3 MB with mimalloc; its target is < 15 MB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::NullBackend;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::store::{Durability, SqliteStore, StateStore};
use guildnet_core::token::Secret;
use guildnet_testbed::bench::{pct, row};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const ADMIN: &str = "suite-bench-admin-token";
const HEARTBEAT: Duration = Duration::from_secs(5);

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---- the orchestrator process (this binary with --serve-orchestrator) -----------------------------

async fn serve_orchestrator(dir: &Path) {
    // Warnings and errors (e.g. the detail behind a 500) go to the bench's stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let store = SqliteStore::open(dir.join("suite.db"), Durability::Full).expect("open store");
    let org = OrgName::new("bench").expect("org name");
    store
        .create_org(
            &org,
            guildnet_core::model::NewAudit::new("bench", "org.create", "bench", None),
        )
        .await
        .expect("org");
    let mut cfg = OrchestratorConfig::new(Secret::new(ADMIN), "http://127.0.0.1:1");
    cfg.heartbeat_interval = HEARTBEAT;
    cfg.lease_ttl = Duration::from_secs(30);
    cfg.claim_timeout = Duration::from_secs(3600);
    let o = Orchestrator::new(
        Arc::new(store),
        // Each launch (`LAUNCH <task> <agent> <token>`) goes to stdout, a pipe read only by
        // the parent bench process.
        Arc::new(NullBackend {
            on_submit: Some(Box::new(|l| {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(
                    o,
                    "LAUNCH {} {} {}",
                    l.task_id,
                    l.agent,
                    l.agent_token.expose()
                );
                let _ = o.flush();
            })),
            ..Default::default()
        }),
        cfg,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("READY {}", listener.local_addr().expect("addr"));
    let _ = std::io::stdout().flush();
    let _ = guildnet_core::orchestrator::serve(listener, o, std::future::pending()).await;
}

// ---- simulated agents -------------------------------------------------------------------------

/// A keep-alive HTTP/1.1 connection that posts JSON (just enough client for the agent protocol,
/// so 10,000 agents cost 10,000 sockets and not 10,000 connection pools).
struct Conn {
    r: BufReader<tokio::io::ReadHalf<tokio::net::TcpStream>>,
    w: tokio::io::WriteHalf<tokio::net::TcpStream>,
    token: String,
}

impl Conn {
    async fn open(addr: &str, token: String) -> std::io::Result<Conn> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = tokio::io::split(s);
        Ok(Conn {
            r: BufReader::new(r),
            w,
            token,
        })
    }

    /// Posts `body`; returns the status and the response body.
    async fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: orchestrator\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        self.w.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            if self.r.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).await?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

#[derive(Default)]
struct Samples {
    register: Vec<f64>,
    claim: Vec<f64>,
    heartbeat: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

impl Samples {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

async fn timed(c: &mut Conn, path: &str, body: &str) -> Result<(f64, String), String> {
    let t0 = Instant::now();
    let (status, body) = c.post(path, body).await.map_err(|e| e.to_string())?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if status == 200 {
        Ok((ms, body))
    } else {
        Err(format!("{path}: HTTP {status} {body:.200}"))
    }
}

/// One agent: join at `join_at`, heartbeat every 5 s until `end`.
async fn agent(
    addr: String,
    agent: String,
    token: String,
    join_at: Instant,
    end: Instant,
    keep_alive: bool,
    samples: Arc<Mutex<Samples>>,
) {
    tokio::time::sleep_until(join_at.into()).await;
    let run = async {
        // Like the real agent (guildnet-core's AgentClient drops connections idle for
        // AGENT_POOL_IDLE, far less than the heartbeat interval): register and claim share a
        // connection; each heartbeat opens its own, and its latency includes the connect.
        let mut c = Conn::open(&addr, token.clone())
            .await
            .map_err(|e| e.to_string())?;
        let who = format!("{{\"agent\":\"{agent}\"}}");
        let (reg, _) = timed(&mut c, "/agent/register", &who).await?;
        let (claim, body) = timed(&mut c, "/agent/claim", &who).await?;
        let mut kept = keep_alive.then_some(c);
        let fencing = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["fencing"].as_u64())
            .ok_or_else(|| format!("claim without fencing: {body:.200}"))?;
        if let Ok(mut s) = samples.lock() {
            s.register.push(reg);
            s.claim.push(claim);
        }
        let hb = format!("{{\"agent\":\"{agent}\",\"fencing\":{fencing}}}");
        let mut next = Instant::now() + HEARTBEAT;
        while next < end {
            tokio::time::sleep_until(next.into()).await;
            next += HEARTBEAT;
            let t0 = Instant::now();
            match kept.as_mut() {
                Some(c) => {
                    timed(c, "/agent/heartbeat", &hb).await?;
                }
                None => {
                    let mut c = Conn::open(&addr, token.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    timed(&mut c, "/agent/heartbeat", &hb).await?;
                }
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            if let Ok(mut s) = samples.lock() {
                s.heartbeat.push(ms);
            }
        }
        Ok::<(), String>(())
    };
    if let Err(e) = run.await {
        if let Ok(mut s) = samples.lock() {
            s.error(e);
        }
    }
}

async fn agents_at_scale(n: usize, secs: u64, ramp: u64, keep_alive: bool) {
    println!(
        "\n== {n} simulated agents, heartbeat every {}s, {ramp}s ramp + {secs}s steady, {} ==",
        HEARTBEAT.as_secs(),
        if keep_alive {
            "one kept-alive connection per agent"
        } else {
            "a new connection per heartbeat (like the real agent)"
        }
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve-orchestrator")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("orchestrator process");
    let pid = child.id().unwrap_or(0);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        match lines.next_line().await {
            Ok(Some(l)) if l.starts_with("READY ") => break l[6..].to_owned(),
            Ok(Some(_)) => continue,
            _ => panic!("orchestrator process did not start"),
        }
    };
    let rss_idle = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let launches: Arc<Mutex<HashMap<String, (String, String)>>> = Arc::default();
    let l2 = launches.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let mut p = l.split(' ');
            if let (Some("LAUNCH"), Some(t), Some(a), Some(tok)) =
                (p.next(), p.next(), p.next(), p.next())
            {
                if let Ok(mut m) = l2.lock() {
                    m.insert(t.to_owned(), (a.to_owned(), tok.to_owned()));
                }
            }
        }
    });

    // Schedule N tasks (32 clients).
    let admin = guildnet_core::client::OrchestratorClient::new(
        &format!("http://{addr}"),
        Secret::new(ADMIN),
    )
    .expect("client");
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for w in 0..32 {
        let admin = admin.clone();
        hs.push(tokio::spawn(async move {
            let org = OrgName::new("bench").expect("org");
            let mut i = w;
            while i < n {
                let _ = admin.schedule(&org, &format!("agent {i}"), None).await;
                i += 32;
            }
        }));
    }
    for h in hs {
        let _ = h.await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while launches.lock().map(|m| m.len()).unwrap_or(0) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agents: Vec<(String, String)> = launches
        .lock()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    println!(
        "scheduled {n} tasks in {:.1}s; {} agent launches handed over",
        t0.elapsed().as_secs_f64(),
        agents.len()
    );

    // Agents join over the ramp, then heartbeat.
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(ramp + secs);
    let mut hs = Vec::with_capacity(agents.len());
    for (i, (a, tok)) in agents.into_iter().enumerate() {
        let join_at = start + Duration::from_secs_f64(ramp as f64 * i as f64 / n.max(1) as f64);
        hs.push(tokio::spawn(agent(
            addr.clone(),
            a,
            tok,
            join_at,
            end,
            keep_alive,
            samples.clone(),
        )));
    }
    let mut rss_max = 0;
    while Instant::now() < end {
        rss_max = rss_max.max(proc_status_kb(pid, "VmRSS:").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for h in hs {
        let _ = h.await;
    }
    let rss_hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let _ = child.kill().await;

    let mut s = std::mem::take(&mut *samples.lock().expect("samples"));
    for v in [&mut s.register, &mut s.claim, &mut s.heartbeat] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let total = s.heartbeat.len() as f64;
    println!(
        "{} agents claimed; {} heartbeats ({:.0}/s in steady state); {} errors{}",
        s.claim.len(),
        s.heartbeat.len(),
        total / (secs + ramp) as f64,
        s.errors,
        s.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "  register p50 {:.2} ms p99 {:.2} ms; heartbeat max {:.2} ms; orchestrator RSS idle {:.1} MB",
        pct(&s.register, 0.5),
        pct(&s.register, 0.99),
        s.heartbeat.last().copied().unwrap_or(f64::NAN),
        rss_idle as f64 / 1024.0
    );
    row(
        &format!("claim p50 ({n} agents)"),
        pct(&s.claim, 0.5),
        "ms",
        20.0,
        true,
    );
    row(
        &format!("claim p99 ({n} agents)"),
        pct(&s.claim, 0.99),
        "ms",
        20.0,
        true,
    );
    row(
        &format!("heartbeat p50 ({n} agents)"),
        pct(&s.heartbeat, 0.5),
        "ms",
        20.0,
        true,
    );
    row(
        &format!("heartbeat p99 ({n} agents)"),
        pct(&s.heartbeat, 0.99),
        "ms",
        20.0,
        true,
    );
    row(
        &format!("orchestrator peak RSS ({n} agents)"),
        rss_hwm.max(rss_max) as f64 / 1024.0,
        "MB",
        150.0,
        true,
    );
    if s.claim.len() < n {
        println!(
            "SHORTFALL: {} of {n} agents claimed and heartbeated",
            s.claim.len()
        );
    }
}

// ---- idle agent RSS -----------------------------------------------------------------------------

async fn idle_agent_rss(settle: Duration) {
    println!(
        "\n== idle agent RSS (real guildnet-agent, local backend, sleep runner, no editor) =="
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let log = std::fs::File::create(dir.path().join("orchestrator.log")).expect("log");
    // In a session of its own: killing the session at the end stops its agents too.
    let mut std_cmd = std::process::Command::new(env!("CARGO_BIN_EXE_guildnet-orchestrator"));
    guildnet_testbed::process::in_new_session(&mut std_cmd);
    let mut orch = tokio::process::Command::from(std_cmd)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--org", "bench"])
        .args(["--runner", "sh -s"])
        .env("GUILDNET_STATE_DIR", &state)
        .env("ORCHESTRATOR_TOKEN", ADMIN)
        .env("GUILDNET_AGENT_BIN", env!("CARGO_BIN_EXE_guildnet-agent"))
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("orchestrator");
    let c = guildnet_core::client::OrchestratorClient::new(
        &format!("http://127.0.0.1:{port}"),
        Secret::new(ADMIN),
    )
    .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.health().await.is_err() {
        assert!(Instant::now() < deadline, "orchestrator did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rss = Vec::new();
    for _ in 0..3 {
        let t = c
            .schedule(&OrgName::new("bench").expect("org"), "sleep 600", None)
            .await
            .expect("schedule");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let cur = c.task(&t.id).await.expect("task");
            if cur.status == guildnet_core::model::TaskStatus::Running {
                break;
            }
            assert!(Instant::now() < deadline, "agent never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(settle).await;
        let pidfile = guildnet_core::state_dir::StatePaths::new(&state)
            .local_agent_dir(&t.id)
            .join("agent.pid");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .expect("agent pid");
        let kb = proc_status_kb(pid, "VmRSS:").expect("agent VmRSS");
        let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(kb);
        println!(
            "  agent {pid}: VmRSS {:.1} MB (peak {:.1} MB)",
            kb as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        rss.push(kb as f64 / 1024.0);
        let _ = c.cancel(&t.id).await;
    }
    rss.sort_by(|a, b| a.total_cmp(b));
    row(
        "idle agent RSS (median of 3)",
        pct(&rss, 0.5),
        "MB",
        15.0,
        true,
    );
    let session = orch.id().unwrap_or(0);
    let _ = orch.kill().await;
    guildnet_testbed::process::kill_session(session);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Some(dir) = arg("--serve-orchestrator") {
        serve_orchestrator(Path::new(&dir)).await;
        return;
    }
    let n: usize = arg("--agents")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let secs: u64 = arg("--secs").and_then(|v| v.parse().ok()).unwrap_or(30);
    let ramp: u64 = arg("--ramp-secs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    println!("GuildNet benchmark suite");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if !std::env::args().any(|a| a == "--skip-agents") {
        let keep_alive = std::env::args().any(|a| a == "--keep-alive");
        agents_at_scale(n, secs, ramp, keep_alive).await;
    }
    idle_agent_rss(Duration::from_secs(3)).await;
}
