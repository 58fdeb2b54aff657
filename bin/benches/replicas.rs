//! Several replicas on PostgreSQL, side by side with SQLite (not a test): prints figures and
//! their ratio to the targets.
//!
//! Three setups, one after the other, each with fresh state:
//! - **sqlite-1**: one orchestrator process on a SQLite file (`synchronous=FULL`);
//! - **pg-1**: one orchestrator process on the testbed's PostgreSQL (a real server from Debian);
//! - **pg-2**: two orchestrator processes on one PostgreSQL database behind the testbed's nginx
//!   (round-robin), every request going through nginx.
//!
//! Each orchestrator is this binary with `--serve-orchestrator` (the orchestrator's own code,
//! with a backend that starts nothing and hands each task's agent credentials to the bench).
//! In each setup:
//! 1. **Schedule**: 32 clients post tasks in a closed loop for `--schedule-secs` (default 10):
//!    throughput and latency p50/p99 as the client sees them.
//! 2. **Agents**: `--agents` simulated agents (default 10,000; HTTP/1.1 as in the `suite` bench:
//!    register and claim on one connection over a `--ramp-secs` ramp, then a heartbeat every 5 s
//!    on a new connection each) for `--secs` (default 20): claim and heartbeat p50/p99.
//! 3. **Failover** (pg-2 only): while the agents heartbeat, replica A is killed with SIGKILL.
//!    Probes through nginx (one claim of a task kept unclaimed for it, one heartbeat loop, each
//!    retried every 10 ms) give the time from the kill to the first successful claim and the
//!    first successful heartbeat, and the agents' failed requests are counted.
//!
//! `cargo bench -p guildnet-bin --bench replicas [-- --agents N --secs S --ramp-secs R
//! --schedule-secs S --only sqlite-1,pg-1,pg-2]`. Needs the testbed's postgres and nginx
//! (`scripts/testbed/install.sh postgres nginx`).
//!
//! Profile, printed per setup and phase: CPU time per schedule / agent request of the bench,
//! the orchestrator(s), PostgreSQL and nginx, and the share of the cores the rest of the
//! machine took (from `/proc`); the database backends' wait events (`pg_stat_activity`, every
//! 20 ms). With `GUILDNET_TESTBED_POSTGRES_SETTINGS=shared_preload_libraries=pg_stat_statements`
//! also each phase's top statements; with `REPLICAS_BENCH_STORE_TIMES=1` each
//! PostgreSQL replica's batch writer every second; `REPLICAS_BENCH_NO_GROUP=1` runs the store
//! without grouping new tasks and task updates, `REPLICAS_BENCH_NO_WARM_UP=1` without opening
//! its connections at start (to compare).

mod common;

use common::NullBackend;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::store::{Durability, PostgresStore, SqliteStore, StateStore};
use guildnet_core::token::Secret;
use guildnet_testbed::bench::{pct, row};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const ADMIN: &str = "replicas-bench-admin-token";
const HEARTBEAT: Duration = Duration::from_secs(5);
const SCHEDULERS: usize = 32;
/// Tasks kept unclaimed for the failover claim probe.
const RESERVE: usize = 200;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

// ---- an orchestrator process (this binary with --serve-orchestrator DIR STORE) -----------------

async fn serve_orchestrator(dir: &Path, store_arg: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
        .with_writer(std::io::stderr)
        .try_init();
    let store: Arc<dyn StateStore> = if store_arg == "sqlite" {
        Arc::new(SqliteStore::open(dir.join("bench.db"), Durability::Full).expect("open store"))
    } else {
        let opts = guildnet_core::store::PostgresOptions {
            group_new_tasks: std::env::var_os(NO_GROUP_ENV).is_none(),
            warm_up: std::env::var_os(NO_WARM_UP_ENV).is_none(),
            ..Default::default()
        };
        let pg = PostgresStore::connect_with(store_arg, opts)
            .await
            .expect("connect to postgres");
        if std::env::var_os(STORE_TIMES_ENV).is_some() {
            tokio::spawn(print_batch_times(pg.clone()));
        }
        Arc::new(pg)
    };
    let org = OrgName::new("bench").expect("org name");
    if store.get_org(&org).await.ok().flatten().is_none() {
        // Two replicas starting together: one of them creates it.
        let _ = store
            .create_org(
                &org,
                guildnet_core::model::NewAudit::new("bench", "org.create", "bench", None),
            )
            .await;
    }
    let mut cfg = OrchestratorConfig::new(Secret::new(ADMIN), "http://127.0.0.1:1");
    cfg.heartbeat_interval = HEARTBEAT;
    cfg.lease_ttl = Duration::from_secs(30);
    cfg.claim_timeout = Duration::from_secs(3600);
    let o = Orchestrator::new(
        store,
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

/// Set: each PostgreSQL replica prints where its batch writer's time went, every second, to
/// stderr.
const STORE_TIMES_ENV: &str = "REPLICAS_BENCH_STORE_TIMES";

/// Every second with writes: batches and writes per second, the writer's busy time split
/// into pool wait / statements / commit (ms per second), and the mean wait of a write for its
/// batch to start.
async fn print_batch_times(pg: PostgresStore) {
    let mut last = pg.batch_times();
    let pid = std::process::id();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = pg.batch_times();
        let writes = now.writes - last.writes;
        if writes > 0 {
            let ms = |a: Duration, b: Duration| (a - b).as_secs_f64() * 1000.0;
            eprintln!(
                "store[{pid}]: {} batches, {writes} writes ({:.1}/batch); writer ms: pool {:.0}, statements {:.0}, commit {:.0}; queued {:.2} ms/write",
                now.batches - last.batches,
                writes as f64 / (now.batches - last.batches).max(1) as f64,
                ms(now.pool, last.pool),
                ms(now.run, last.run),
                ms(now.commit, last.commit),
                ms(now.queued, last.queued) / writes as f64
            );
        }
        last = now;
    }
}

/// Set: the PostgreSQL store runs each new task as a statement of its own instead of one
/// statement per batch (`PostgresOptions::group_new_tasks`), to compare.
const NO_GROUP_ENV: &str = "REPLICAS_BENCH_NO_GROUP";
/// Set: the PostgreSQL store opens its connections on first use, not at start
/// ([`guildnet_core::store::PostgresOptions::warm_up`] off), to compare.
const NO_WARM_UP_ENV: &str = "REPLICAS_BENCH_NO_WARM_UP";

type Launches = Arc<Mutex<HashMap<String, (String, String)>>>;

/// Starts an orchestrator process; returns it and its address. Its LAUNCH lines go to
/// `launches`.
async fn start_replica(
    dir: &Path,
    store: &str,
    launches: &Launches,
) -> (tokio::process::Child, String) {
    std::fs::create_dir_all(dir).expect("replica dir");
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve-orchestrator")
        .arg(dir)
        .arg(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("orchestrator process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        match lines.next_line().await {
            Ok(Some(l)) if l.starts_with("READY ") => break l[6..].to_owned(),
            Ok(Some(_)) => continue,
            _ => panic!("orchestrator process did not start"),
        }
    };
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
    (child, addr)
}

// ---- a minimal HTTP/1.1 client (as in the suite bench) ------------------------------------------

struct Conn {
    r: BufReader<tokio::io::ReadHalf<tokio::net::TcpStream>>,
    w: tokio::io::WriteHalf<tokio::net::TcpStream>,
    token: String,
    /// The server said `Connection: close` in its last answer: open a new connection for the
    /// next request (nginx does so after `keepalive_requests`, 1,000 by default).
    closing: bool,
}

impl Conn {
    async fn open(addr: &str, token: &str) -> std::io::Result<Conn> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = tokio::io::split(s);
        Ok(Conn {
            r: BufReader::new(r),
            w,
            token: token.to_owned(),
            closing: false,
        })
    }

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
                } else if k.eq_ignore_ascii_case("connection")
                    && v.trim().eq_ignore_ascii_case("close")
                {
                    self.closing = true;
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).await?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

async fn timed(c: &mut Conn, path: &str, body: &str) -> Result<(f64, String), String> {
    let t0 = Instant::now();
    let (status, body) = c.post(path, body).await.map_err(|e| e.to_string())?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if (200..300).contains(&status) {
        Ok((ms, body))
    } else {
        Err(format!("{path}: HTTP {status} {body:.200}"))
    }
}

// ---- where the CPU goes (from /proc) ------------------------------------------------------------

/// Linux's `USER_HZ`: /proc counts CPU time in 1/100 s on every architecture it runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// `(ppid, utime + stime in ticks)` of process `pid`, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the fields after it.
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// The CPU ticks of `roots` and of their children (PostgreSQL's backends are the
/// postmaster's children; nginx's workers its master's), by pid.
fn cpu_ticks(roots: &[u32]) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, t)) = proc_stat(pid) {
            if roots.contains(&pid) || roots.contains(&ppid) {
                out.insert(pid, t);
            }
        }
    }
    out
}

/// The machine's busy and total CPU ticks (all cores), from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Who ran on the CPU during a phase: the bench (clients), the orchestrator process(es),
/// PostgreSQL (postmaster and backends), nginx, and the rest of the machine.
struct CpuProbe {
    groups: Vec<(&'static str, Vec<u32>, HashMap<u32, u64>)>,
    machine: (u64, u64),
    t0: Instant,
}

impl CpuProbe {
    fn start(groups: Vec<(&'static str, Vec<u32>)>) -> CpuProbe {
        CpuProbe {
            groups: groups
                .into_iter()
                .map(|(n, roots)| {
                    let t = cpu_ticks(&roots);
                    (n, roots, t)
                })
                .collect(),
            machine: machine_ticks(),
            t0: Instant::now(),
        }
    }

    /// Prints each group's CPU time per `unit` of work done (`n` of them), and its share of
    /// the 2 cores.
    fn report(&self, n: usize, unit: &str) {
        let secs = self.t0.elapsed().as_secs_f64();
        let mut parts = Vec::new();
        let mut ours = 0.0;
        for (name, roots, before) in &self.groups {
            let after = cpu_ticks(roots);
            let ticks: u64 = after
                .iter()
                .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                .sum();
            let cpu = ticks as f64 / TICKS_PER_SEC;
            ours += cpu;
            parts.push(format!(
                "{name} {:.0} us/{unit} ({:.2} cores)",
                cpu * 1e6 / n.max(1) as f64,
                cpu / secs
            ));
        }
        let (busy, total) = machine_ticks();
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
        let busy = busy.saturating_sub(self.machine.0) as f64 / TICKS_PER_SEC;
        let total = total.saturating_sub(self.machine.1) as f64 / TICKS_PER_SEC;
        parts.push(format!(
            "rest of the machine {:.2} cores; machine busy {:.0}% of {cores} cores",
            (busy - ours).max(0.0) / secs,
            100.0 * busy / total.max(f64::MIN_POSITIVE)
        ));
        println!("  cpu: {}", parts.join(", "));
    }
}

/// Resets PostgreSQL's `pg_stat_statements` in `db` when it is loaded
/// (`GUILDNET_TESTBED_POSTGRES_SETTINGS=shared_preload_libraries=pg_stat_statements`); whether
/// it is.
async fn statements_reset(pg: &guildnet_testbed::postgres::Postgres, db: &str) -> bool {
    pg.psql(
        db,
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
    )
    .await
    .is_ok()
}

/// Prints the top statements of `pg_stat_statements` since the reset, by total time.
async fn statements_report(pg: &guildnet_testbed::postgres::Postgres, db: &str, n: usize) {
    let sql = "SELECT calls, round(total_exec_time::numeric, 1), \
               round((total_exec_time / greatest(calls, 1) * 1000)::numeric, 1), rows, \
               wal_records, regexp_replace(left(query, 110), '\\s+', ' ', 'g') \
               FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               ORDER BY total_exec_time DESC LIMIT 14";
    match pg.psql(db, sql).await {
        Ok(out) => {
            println!("  pg_stat_statements (calls|total ms|us per call|rows|wal records|query), {n} requests:");
            for l in out.lines() {
                println!("    {l}");
            }
        }
        Err(e) => println!("  pg_stat_statements: {e}"),
    }
}

/// Samples what the database's busy backends are doing every 20 ms for `secs` (one `psql`
/// running a loop in the server): counts of `state wait_event_type:wait_event` (`CPU` when
/// not waiting), most frequent first, then what autovacuum workers ran and when, and the
/// server's count of checkpoints and since when (seconds since the sampling began, from the
/// sample's index: about, since each sample also takes time; a second count means a
/// checkpoint ended in the phase).
///
/// Each sample is its own transaction (the loop commits after each, into an unlogged table):
/// one transaction for the whole loop, as this sampler had until 2026-12-04, holds back the
/// horizon below which PostgreSQL may remove dead row versions, so for the whole phase no
/// page could be pruned and most lease renewals could not be HOT updates (measured: 17% of
/// the task updates of an agent phase HOT).
async fn wait_samples(pg: &guildnet_testbed::postgres::Postgres, db: &str, secs: u64) -> String {
    let setup = "CREATE UNLOGGED TABLE IF NOT EXISTS bench_samples (i int, w text); \
                 TRUNCATE bench_samples";
    if let Err(e) = pg.psql(db, setup).await {
        return format!("(sampling failed: {e})");
    }
    // One statement alone (not in a transaction block), so that it may commit.
    let sample = format!(
        "DO $$ BEGIN FOR i IN 1..{n} LOOP \
           PERFORM pg_stat_clear_snapshot(); \
           INSERT INTO bench_samples SELECT i, CASE WHEN backend_type = 'autovacuum worker' \
             THEN left(query, 60) \
             ELSE state || ' ' || coalesce(wait_event_type || ':' || wait_event, 'CPU') END \
             FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' \
             AND pid <> pg_backend_pid(); \
           INSERT INTO bench_samples SELECT i, \
             'checkpoints ' || (checkpoints_timed + checkpoints_req) FROM pg_stat_bgwriter; \
           COMMIT; \
           PERFORM pg_sleep(0.02); \
         END LOOP; END $$",
        n = secs * 50
    );
    if let Err(e) = pg.psql(db, &sample).await {
        return format!("(sampling failed: {e})");
    }
    let report = "SELECT w, count(*) FROM bench_samples WHERE w NOT LIKE 'autovacuum:%' \
           AND w NOT LIKE 'checkpoints %' GROUP BY w ORDER BY 2 DESC LIMIT 8; \
         SELECT w, count(*), round(min(i) * 0.02, 1) || '-' || round(max(i) * 0.02, 1) || 's' \
           FROM bench_samples WHERE w LIKE 'autovacuum:%' OR w LIKE 'checkpoints %' \
           GROUP BY w ORDER BY min(i)";
    match pg.psql(db, report).await {
        Ok(out) => out.lines().collect::<Vec<_>>().join("; "),
        Err(e) => format!("(sampling failed: {e})"),
    }
}

// ---- phases -------------------------------------------------------------------------------------

struct ScheduleFigures {
    per_sec: f64,
    p50: f64,
    p99: f64,
    errors: usize,
    /// Failed requests by kind ([`error_kind`]).
    kinds: Vec<(String, usize)>,
}

/// 32 clients post tasks for `secs`, each on its own kept-alive connection.
async fn schedule_phase(addr: &str, secs: u64) -> ScheduleFigures {
    let end = Instant::now() + Duration::from_secs(secs);
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let errors = Arc::new(AtomicUsize::new(0));
    let kinds: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut hs = Vec::new();
    let t0 = Instant::now();
    for w in 0..SCHEDULERS {
        let (addr, lat, errors, kinds) =
            (addr.to_owned(), lat.clone(), errors.clone(), kinds.clone());
        hs.push(tokio::spawn(async move {
            let mut c: Option<Conn> = None;
            let mut i = 0;
            while Instant::now() < end {
                if c.as_ref().is_none_or(|c| c.closing) {
                    c = Conn::open(&addr, ADMIN).await.ok();
                }
                let Some(conn) = c.as_mut() else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut k) = kinds.lock() {
                        *k.entry("connect failed".to_owned()).or_default() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let body = format!("{{\"org\":\"bench\",\"task\":\"task {w}-{i}\"}}");
                i += 1;
                match timed(conn, "/schedule", &body).await {
                    Ok((ms, _)) => lat.lock().expect("lat").push(ms),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut k) = kinds.lock() {
                            *k.entry(error_kind(&e)).or_default() += 1;
                        }
                        c = None;
                    }
                }
            }
        }));
    }
    for h in hs {
        let _ = h.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *lat.lock().expect("lat"));
    l.sort_by(|a, b| a.total_cmp(b));
    let mut kinds: Vec<(String, usize)> = std::mem::take(&mut *kinds.lock().expect("kinds"))
        .into_iter()
        .collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    ScheduleFigures {
        per_sec: l.len() as f64 / elapsed,
        p50: pct(&l, 0.5),
        p99: pct(&l, 0.99),
        errors: errors.load(Ordering::Relaxed),
        kinds,
    }
}

#[derive(Default)]
struct Samples {
    claim: Vec<f64>,
    /// Each claim's latency with the second of the run it was sent in (from the start of
    /// the ramp): where in the run the slow ones are.
    claim_at: Vec<(u64, f64)>,
    heartbeat: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    /// Failed requests after the kill (failover), by the agents.
    errors_after_kill: usize,
    /// Failed requests by kind (the error without names and numbers).
    kinds: HashMap<String, usize>,
}

/// What kind of failure an error message is: the message with names, numbers and bodies cut
/// (so that errors of the same cause count together).
fn error_kind(e: &str) -> String {
    let e = e.split(" {").next().unwrap_or(e);
    e.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(80)
        .collect()
}

/// When a simulated agent joins and stops, and when the ramp began.
#[derive(Clone, Copy)]
struct AgentTimes {
    ramp_start: Instant,
    join_at: Instant,
    end: Instant,
}

/// One simulated agent: join at `join_at`, heartbeat every 5 s until `end`.
async fn agent(
    addr: String,
    name: String,
    token: String,
    at: AgentTimes,
    samples: Arc<Mutex<Samples>>,
    killed: Arc<Mutex<Option<Instant>>>,
) {
    let AgentTimes {
        ramp_start,
        join_at,
        end,
    } = at;
    tokio::time::sleep_until(join_at.into()).await;
    let fail = |e: String| {
        if let Ok(mut s) = samples.lock() {
            s.errors += 1;
            if killed.lock().map(|k| k.is_some()).unwrap_or(false) {
                s.errors_after_kill += 1;
            }
            *s.kinds.entry(error_kind(&e)).or_default() += 1;
            s.first_error.get_or_insert(e);
        }
    };
    let who = format!("{{\"agent\":\"{name}\"}}");
    let mut fencing = None;
    // Register and claim (retried, as the real agent does).
    while fencing.is_none() && Instant::now() < end {
        let r = async {
            let mut c = Conn::open(&addr, &token).await.map_err(|e| e.to_string())?;
            timed(&mut c, "/agent/register", &who).await?;
            let sent = Instant::now();
            let (ms, body) = timed(&mut c, "/agent/claim", &who).await?;
            let f = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["fencing"].as_u64())
                .ok_or_else(|| format!("claim without fencing: {body:.200}"))?;
            Ok::<_, String>((ms, f, sent))
        }
        .await;
        match r {
            Ok((ms, f, sent)) => {
                if let Ok(mut s) = samples.lock() {
                    s.claim.push(ms);
                    s.claim_at
                        .push((sent.saturating_duration_since(ramp_start).as_secs(), ms));
                }
                fencing = Some(f);
            }
            Err(e) => {
                fail(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let Some(fencing) = fencing else { return };
    let hb = format!("{{\"agent\":\"{name}\",\"fencing\":{fencing}}}");
    let mut next = Instant::now() + HEARTBEAT;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += HEARTBEAT;
        let t0 = Instant::now();
        let r = async {
            let mut c = Conn::open(&addr, &token).await.map_err(|e| e.to_string())?;
            timed(&mut c, "/agent/heartbeat", &hb).await
        }
        .await;
        match r {
            Ok(_) => {
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                if let Ok(mut s) = samples.lock() {
                    s.heartbeat.push(ms);
                }
            }
            Err(e) => fail(e),
        }
    }
}

/// Retries `f` every 10 ms from `since` until it succeeds; returns the time from `since`.
async fn first_success<F, Fut>(since: Instant, limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while since.elapsed() < limit {
        if f().await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

struct Setup<'a> {
    name: &'static str,
    /// Store URLs of the replicas ("sqlite" for the SQLite file).
    stores: Vec<String>,
    /// The PostgreSQL server and database name, on PostgreSQL.
    pg: Option<(&'a guildnet_testbed::postgres::Postgres, String)>,
}

/// What one setup measured.
#[derive(Default)]
struct Figures {
    schedule_per_sec: f64,
    heartbeat_p99: f64,
    claim_p99: f64,
    /// Kill -> first claim, kill -> first heartbeat (pg-2).
    failover: Option<(Option<Duration>, Option<Duration>)>,
}

async fn run_setup(
    setup: &Setup<'_>,
    agents: usize,
    secs: u64,
    ramp: u64,
    schedule_secs: u64,
) -> Figures {
    println!(
        "\n== {}: {} replica(s) on {} ==",
        setup.name,
        setup.stores.len(),
        if setup.stores[0] == "sqlite" {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let launches: Launches = Arc::default();
    let mut replicas = Vec::new();
    for (i, store) in setup.stores.iter().enumerate() {
        replicas.push(start_replica(&dir.path().join(format!("r{i}")), store, &launches).await);
    }
    // Two replicas: everything goes through nginx.
    let nginx = if replicas.len() > 1 {
        let addrs: Vec<std::net::SocketAddr> = replicas
            .iter()
            .map(|(_, a)| a.parse().expect("addr"))
            .collect();
        Some(
            guildnet_testbed::nginx::Nginx::round_robin(&addrs)
                .await
                .expect("the testbed's nginx (scripts/testbed/install.sh nginx)"),
        )
    } else {
        None
    };
    let addr = match &nginx {
        Some(n) => format!("127.0.0.1:{}", n.port()),
        None => replicas[0].1.clone(),
    };

    // 1. Schedule.
    let stats = match &setup.pg {
        Some((pg, db)) => statements_reset(pg, db).await,
        None => false,
    };
    let mut groups = vec![
        ("bench", vec![std::process::id()]),
        (
            "orchestrator",
            replicas.iter().filter_map(|(c, _)| c.id()).collect(),
        ),
    ];
    if let Some(pid) = setup.pg.as_ref().and_then(|(pg, _)| pg.pid()) {
        groups.push(("postgres", vec![pid]));
    }
    if let Some(n) = &nginx {
        groups.push(("nginx", vec![n.pid()]));
    }
    let probe = CpuProbe::start(groups.clone());
    let waits = async {
        match &setup.pg {
            Some((pg, db)) => Some(wait_samples(pg, db, schedule_secs).await),
            None => None,
        }
    };
    let (s, waits) = tokio::join!(schedule_phase(&addr, schedule_secs), waits);
    println!(
        "schedule: {:.0} tasks/s over {schedule_secs} s ({SCHEDULERS} clients), p50 {:.2} ms, p99 {:.2} ms, {} errors",
        s.per_sec, s.p50, s.p99, s.errors
    );
    let done = (s.per_sec * schedule_secs as f64) as usize;
    probe.report(done, "schedule");
    for (kind, n) in s.kinds.iter().take(5) {
        println!("  {n} failed: {kind}");
    }
    if let Some(w) = waits {
        println!("  backends of the database, sampled every 20 ms (state wait|samples): {w}");
    }
    if let (true, Some((pg, db))) = (stats, &setup.pg) {
        statements_report(pg, db, done).await;
    }
    let mut figures = Figures {
        schedule_per_sec: s.per_sec,
        ..Figures::default()
    };

    // More tasks if the schedule phase made fewer than the agents need.
    let want = agents + RESERVE;
    let admin = guildnet_core::client::OrchestratorClient::new(
        &format!("http://{addr}"),
        Secret::new(ADMIN),
    )
    .expect("client");
    let have = launches.lock().map(|m| m.len()).unwrap_or(0);
    if have < want {
        let next = Arc::new(AtomicUsize::new(have));
        let mut hs = Vec::new();
        for _ in 0..SCHEDULERS {
            let (admin, next) = (admin.clone(), next.clone());
            hs.push(tokio::spawn(async move {
                let org = OrgName::new("bench").expect("org");
                while next.fetch_add(1, Ordering::SeqCst) < want {
                    let _ = admin.schedule(&org, "more", None).await;
                }
            }));
        }
        for h in hs {
            let _ = h.await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while launches.lock().map(|m| m.len()).unwrap_or(0) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut all: Vec<(String, (String, String))> = launches
        .lock()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    all.sort();
    let reserve: Vec<(String, String)> = all
        .iter()
        .skip(agents)
        .take(RESERVE)
        .map(|(_, v)| v.clone())
        .collect();
    let chosen: Vec<(String, String)> = all.into_iter().take(agents).map(|(_, v)| v).collect();

    // 2. Agents.
    if let (true, Some((pg, db))) = (stats, &setup.pg) {
        statements_reset(pg, db).await;
    }
    let agent_probe = CpuProbe::start(groups);
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let killed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(ramp + secs);
    let agent_waits = {
        let pg = setup.pg.as_ref().map(|(pg, db)| (*pg, db.clone()));
        async move {
            match pg {
                Some((pg, db)) => {
                    let left = end.saturating_duration_since(Instant::now()).as_secs();
                    Some(wait_samples(pg, &db, left.max(1)).await)
                }
                None => None,
            }
        }
    };
    let n = chosen.len();
    let mut hs = Vec::with_capacity(n);
    for (i, (a, tok)) in chosen.into_iter().enumerate() {
        let join_at = start + Duration::from_secs_f64(ramp as f64 * i as f64 / n.max(1) as f64);
        hs.push(tokio::spawn(agent(
            addr.clone(),
            a,
            tok,
            AgentTimes {
                ramp_start: start,
                join_at,
                end,
            },
            samples.clone(),
            killed.clone(),
        )));
    }

    // 3. Failover: in the middle of the steady heartbeats, kill replica A.
    let failover_fut = async {
        let mut failover = None;
        if replicas.len() > 1 {
            tokio::time::sleep_until((start + Duration::from_secs(ramp + secs / 2)).into()).await;
            let (probe_agent, probe_token) = reserve.first().cloned().expect("a reserve task");
            // The heartbeat probe: an agent of the reserve, claimed before the kill.
            let who = format!("{{\"agent\":\"{probe_agent}\"}}");
            let mut c = Conn::open(&addr, &probe_token).await.expect("probe conn");
            let _ = timed(&mut c, "/agent/register", &who).await;
            let (_, body) = timed(&mut c, "/agent/claim", &who)
                .await
                .expect("probe claim");
            let fencing = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["fencing"].as_u64())
                .expect("probe fencing");
            let hb = format!("{{\"agent\":\"{probe_agent}\",\"fencing\":{fencing}}}");
            let (mut victim, _) = replicas.remove(0);
            let _ = victim.start_kill();
            let t_kill = Instant::now();
            *killed.lock().expect("killed") = Some(t_kill);
            let _ = victim.wait().await;
            let addr2 = addr.clone();
            let claim_pool = Arc::new(Mutex::new(reserve[1..].to_vec()));
            let claim = first_success(t_kill, Duration::from_secs(30), || {
                let (addr, pool) = (addr2.clone(), claim_pool.clone());
                async move {
                    let Some((a, tok)) = pool.lock().ok().and_then(|mut p| p.pop()) else {
                        return false;
                    };
                    let who = format!("{{\"agent\":\"{a}\"}}");
                    let Ok(mut c) = Conn::open(&addr, &tok).await else {
                        return false;
                    };
                    timed(&mut c, "/agent/register", &who).await.is_ok()
                        && timed(&mut c, "/agent/claim", &who).await.is_ok()
                }
            })
            .await;
            let addr3 = addr.clone();
            let heartbeat = first_success(t_kill, Duration::from_secs(30), || {
                let (addr, tok, hb) = (addr3.clone(), probe_token.clone(), hb.clone());
                async move {
                    let Ok(mut c) = Conn::open(&addr, &tok).await else {
                        return false;
                    };
                    timed(&mut c, "/agent/heartbeat", &hb).await.is_ok()
                }
            })
            .await;
            failover = Some((claim, heartbeat));
        }
        for h in hs {
            let _ = h.await;
        }
        failover
    };
    let (failover, agent_waits) = tokio::join!(failover_fut, agent_waits);
    let mut s = std::mem::take(&mut *samples.lock().expect("samples"));
    for v in [&mut s.claim, &mut s.heartbeat] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "{n} agents: {} claimed, {} heartbeats, {} failed requests{}{}",
        s.claim.len(),
        s.heartbeat.len(),
        s.errors,
        if failover.is_some() {
            format!(" ({} after the kill)", s.errors_after_kill)
        } else {
            String::new()
        },
        s.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "  claim p50 {:.2} ms p99 {:.2} ms; heartbeat p50 {:.2} ms p99 {:.2} ms",
        pct(&s.claim, 0.5),
        pct(&s.claim, 0.99),
        pct(&s.heartbeat, 0.5),
        pct(&s.heartbeat, 0.99)
    );
    agent_probe.report(s.claim.len() * 2 + s.heartbeat.len(), "request");
    // Where the slow claims are: p99 and claims over 30 ms, by second of the run.
    let mut by_sec: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (sec, ms) in &s.claim_at {
        by_sec.entry(*sec).or_default().push(*ms);
    }
    let line: Vec<String> = by_sec
        .iter_mut()
        .map(|(sec, v)| {
            v.sort_by(|a, b| a.total_cmp(b));
            let slow = v.iter().filter(|&&m| m > 30.0).count();
            format!("{sec}s {:.0}/{slow}", pct(v, 0.99))
        })
        .collect();
    println!(
        "  claims by second (p99 ms / over 30 ms): {}",
        line.join(", ")
    );
    if let Some(w) = agent_waits {
        println!("  backends of the database, sampled every 20 ms (state wait|samples): {w}");
    }
    if let (true, Some((pg, db))) = (stats, &setup.pg) {
        statements_report(pg, db, s.claim.len() * 2 + s.heartbeat.len()).await;
    }
    if let Some((pg, db)) = &setup.pg {
        // Updates that stayed on their page (HOT: no index entries) against all updates,
        // since the database was created (the server flushes these counts about once a
        // second, so the last second may be missing).
        let sql = "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                   WHERE relname IN ('tasks', 'agents') ORDER BY relname";
        match pg.psql(db, sql).await {
            Ok(out) => println!(
                "  row updates (table|updates|HOT updates): {}",
                out.lines().collect::<Vec<_>>().join("; ")
            ),
            Err(e) => println!("  row updates: {e}"),
        }
    }
    let mut kinds: Vec<(String, usize)> = s.kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    for (kind, n) in kinds.iter().take(5) {
        println!("  {n} failed: {kind}");
    }
    if let Some(n) = &nginx {
        // nginx logs why it dropped or failed a request (worker_connections, upstream errors).
        let mut seen: HashMap<String, usize> = HashMap::new();
        let log =
            std::fs::read_to_string(n.dir().join("nginx.log")).unwrap_or_else(|_| n.log_tail());
        for l in log.lines() {
            let msg = l.split("] ").nth(1).unwrap_or(l);
            let msg = msg.split(", client:").next().unwrap_or(msg);
            *seen.entry(error_kind(msg)).or_default() += 1;
        }
        let mut seen: Vec<(String, usize)> = seen.into_iter().collect();
        seen.sort_by_key(|k| std::cmp::Reverse(k.1));
        for (msg, k) in seen.iter().take(5) {
            println!("  nginx log ({k} lines): {msg}");
        }
    }
    figures.claim_p99 = pct(&s.claim, 0.99);
    figures.heartbeat_p99 = pct(&s.heartbeat, 0.99);
    if let Some((claim, heartbeat)) = failover {
        let ms = |d: Option<Duration>| d.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1000.0);
        println!(
            "failover: first claim {:.0} ms, first heartbeat {:.0} ms after the kill",
            ms(claim),
            ms(heartbeat)
        );
    }
    figures.failover = failover;
    drop(nginx);
    for (mut c, _) in replicas {
        let _ = c.kill().await;
    }
    figures
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-orchestrator") {
        let dir = args.get(i + 1).expect("dir");
        let store = args.get(i + 2).expect("store");
        serve_orchestrator(Path::new(dir), store).await;
        return;
    }
    // `cargo test` runs benches with --bench absent: a smoke run.
    let smoke = !args.iter().any(|a| a == "--bench");
    let num = |name: &str, default: u64| arg(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let agents = num("--agents", if smoke { 20 } else { 10_000 }) as usize;
    let secs = num("--secs", if smoke { 6 } else { 20 });
    let ramp = num("--ramp-secs", if smoke { 1 } else { 10 });
    let schedule_secs = num("--schedule-secs", if smoke { 1 } else { 10 });
    let only = arg("--only").unwrap_or_else(|| "sqlite-1,pg-1,pg-2".to_owned());
    println!(
        "replicas bench: {agents} agents, {ramp} s ramp + {secs} s of heartbeats, {schedule_secs} s of scheduling; setups {only}"
    );
    let pg = if only.contains("pg-") {
        Some(
            guildnet_testbed::postgres::Postgres::start()
                .await
                .expect("the testbed's PostgreSQL (scripts/testbed/install.sh postgres)"),
        )
    } else {
        None
    };
    let mut results: Vec<(&str, Figures)> = Vec::new();
    for name in ["sqlite-1", "pg-1", "pg-2"] {
        if !only.split(',').any(|o| o == name) {
            continue;
        }
        let (stores, on_pg) = match name {
            "sqlite-1" => (vec!["sqlite".to_owned()], None),
            _ => {
                let pg = pg.as_ref().expect("postgres");
                let db = format!("bench_{}", name.replace('-', "_"));
                let url = pg.create_database(&db).await.expect("database");
                let stores = if name == "pg-1" {
                    vec![url]
                } else {
                    vec![url.clone(), url]
                };
                (stores, Some((pg, db)))
            }
        };
        let setup = Setup {
            name,
            stores,
            pg: on_pg,
        };
        let f = run_setup(&setup, agents, secs, ramp, schedule_secs).await;
        results.push((name, f));
    }

    println!("\n== replicas: figures and targets ==");
    let get = |n: &str| results.iter().find(|(name, _)| *name == n).map(|(_, f)| f);
    for (name, f) in &results {
        println!(
            "{name}: schedule {:.0}/s; claim p99 {:.2} ms, heartbeat p99 {:.2} ms ({agents} agents)",
            f.schedule_per_sec, f.claim_p99, f.heartbeat_p99
        );
    }
    if let (Some(sq), Some(p1)) = (get("sqlite-1"), get("pg-1")) {
        row(
            "schedule throughput pg-1 / sqlite-1",
            p1.schedule_per_sec / sq.schedule_per_sec.max(f64::MIN_POSITIVE),
            "x",
            0.5,
            false,
        );
    }
    if let Some(p2) = get("pg-2") {
        // No target: the one on throughput is pg-1's. Replicas add availability, not write
        // capacity (their batches take turns on one database), and here the second replica
        // and nginx share the same two cores.
        println!(
            "{:<44} {:>10.2} x      (no target; {:.0}/s)",
            "schedule throughput pg-2 / sqlite-1",
            p2.schedule_per_sec / get("sqlite-1").map_or(f64::NAN, |s| s.schedule_per_sec),
            p2.schedule_per_sec
        );
        row(
            &format!("claim p99 ({agents} agents, pg-2)"),
            p2.claim_p99,
            "ms",
            30.0,
            true,
        );
        row(
            &format!("heartbeat p99 ({agents} agents, pg-2)"),
            p2.heartbeat_p99,
            "ms",
            30.0,
            true,
        );
        if let Some((claim, heartbeat)) = p2.failover {
            let ms = |d: Option<Duration>| d.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1000.0);
            row(
                "failover: kill -> first claim (pg-2)",
                ms(claim),
                "ms",
                5000.0,
                true,
            );
            row(
                "failover: kill -> first heartbeat (pg-2)",
                ms(heartbeat),
                "ms",
                5000.0,
                true,
            );
        }
    }
}
