//! Schedule benchmark (not a test): GuildNet's orchestrator side by side with an in-memory
//! reference handler, on the same load generator, in one run.
//!
//! Two servers, each in its own process (this binary with `--serve KIND DIR`), so that the
//! server's CPU time can be read from `/proc/<pid>/stat` (utime + stime) and its peak RSS from
//! `/proc/<pid>/status` (VmHWM):
//! - **reference**: a minimal axum handler (`axum::serve`) that validates the same JSON body as
//!   GuildNet (the same [`ApiJson`] extractor and checks), inserts the task into a `Vec` in
//!   memory and answers 202 with the task. No auth, no durability. It stands in for the
//!   in-memory orchestrator GuildNet replaces, and stays here as the reference.
//! - **guildnet**: the orchestrator's own code as the release binary runs it (SQLite store with
//!   `synchronous=FULL` and group commit, admin-token auth, tracing at INFO to a log file), with
//!   a backend that accepts submissions and starts nothing, so every figure is the
//!   orchestrator's own cost: validation, the durable insert, dispatch bookkeeping (a second
//!   durable write: Scheduled -> Submitted), the reaper.
//!
//! Phases, per server: fill 10,000 tasks; `GET /tasks?limit=1000` closed loop (tasks/s); open
//! loop at 1,000 req/s, latency measured from each request's *intended* send time, so a stalled
//! server cannot hide its backlog (no coordinated omission); `POST /schedule` closed loop with
//! 32 clients (req/s, server CPU µs per schedule, group commit batch sizes); peak RSS. The order
//! of the servers rotates every round and the table gives the median per figure.
//! Then GuildNet alone: listing 100,000 tasks page by page with the `next` cursor (first vs
//! last pages), 50,000 tasks waiting on a backend that refuses every submit (orchestrator CPU,
//! warnings, what `GET /tasks/{id}` says), and schedule -> claimed with the real local backend.
//!
//! Run: `cargo bench -p guildnet-bin --bench schedule [-- --quick | --rounds N --secs S]`.
//! Built without optimizations (as `cargo test` builds it) it runs a smoke version of every
//! phase and checks only that each produced a figure: that is CI's check that the bench works.

/// The orchestrator's allocator is mimalloc: on the schedule path glibc's malloc, free and
/// consolidation took about 11% of the server's CPU, and mimalloc took the CPU per schedule from
/// 52.8 to 40.4 µs (docs/BENCHMARKS.md, issue 23). The agent keeps glibc's (its idle RSS was
/// 7.4 MB with glibc, 18.3 MB with mimalloc; its target is < 15 MB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::NullBackend;
use guildnet_core::launch::{start_local, LocalOptions};
use guildnet_core::model::Task;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::ScheduleRequest;
use guildnet_core::orchestrator::http::ApiJson;
use guildnet_core::orchestrator::{ApiError, Orchestrator, OrchestratorConfig};
use guildnet_core::store::{Durability, SqliteStore, StateStore};
use guildnet_core::token::Secret;
use guildnet_testbed::bench::{pct, row};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "schedule-bench-admin-token";
const ORG: &str = "bench";

// ---- settings -----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Settings {
    /// Smoke run (debug build): tiny phases, checks only that figures come out.
    smoke: bool,
    rounds: usize,
    /// Seconds of each timed phase.
    secs: f64,
    /// Tasks stored before the list phase.
    list_tasks: u64,
    /// Tasks listed page by page.
    page_tasks: u64,
    /// Tasks waiting on the dead backend, and how long their CPU is watched.
    dead_tasks: u64,
    dead_secs: f64,
    claims: usize,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

impl Settings {
    fn from_args() -> Self {
        let has = |f: &str| std::env::args().any(|a| a == f);
        let mut s = if cfg!(debug_assertions) && !has("--quick") && !has("--full") {
            // `cargo test` builds benches that say `test = true` without optimizations and runs
            // them with its own arguments: a smoke run, whatever they are.
            return Settings {
                smoke: true,
                rounds: 1,
                secs: 0.3,
                list_tasks: 300,
                page_tasks: 600,
                dead_tasks: 200,
                dead_secs: 1.0,
                claims: 2,
            };
        } else if has("--quick") {
            Settings {
                smoke: false,
                rounds: 2,
                secs: 2.0,
                list_tasks: 10_000,
                page_tasks: 20_000,
                dead_tasks: 10_000,
                dead_secs: 10.0,
                claims: 10,
            }
        } else {
            Settings {
                smoke: false,
                rounds: 3,
                secs: 5.0,
                list_tasks: 10_000,
                page_tasks: 100_000,
                dead_tasks: 50_000,
                dead_secs: 30.0,
                claims: 40,
            }
        };
        if let Some(r) = arg("--rounds").and_then(|v| v.parse().ok()) {
            s.rounds = r;
        }
        if let Some(v) = arg("--secs").and_then(|v| v.parse().ok()) {
            s.secs = v;
        }
        s
    }
}

// ---- a lean HTTP/1.1 client (the same for both servers) -----------------------------------------

/// One keep-alive connection. Just enough HTTP/1.1 for the bench (Content-Length and chunked
/// bodies), so the load generator costs little CPU on the 2 cores it shares with the server.
struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
    body_len: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    /// `n` more body bytes, copied into `out` when `keep`.
    async fn take(&mut self, n: usize, keep: bool, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut left = n;
        while left > 0 {
            if self.start == self.end {
                self.fill().await?;
            }
            let k = left.min(self.end - self.start);
            if keep {
                out.extend_from_slice(&self.buf[self.start..self.start + k]);
            }
            self.start += k;
            left -= k;
        }
        Ok(())
    }

    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(p) = find(&self.buf[self.start..self.end], b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[self.start..self.start + p]).into_owned();
                self.start += p + 2;
                return Ok(l);
            }
            self.fill().await?;
        }
    }

    async fn send(&mut self, req: &[u8], keep_body: bool) -> std::io::Result<Reply> {
        self.stream.write_all(req).await?;
        let head_len = loop {
            if let Some(p) = find(&self.buf[self.start..self.end], b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head =
            String::from_utf8_lossy(&self.buf[self.start..self.start + head_len]).into_owned();
        self.start += head_len;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = None;
        let mut chunked = false;
        for l in head.lines().skip(1) {
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        let mut body = Vec::new();
        let mut body_len = 0;
        if chunked {
            loop {
                let size_line = self.line().await?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| {
                            std::io::Error::other(format!("bad chunk size {size_line:?}"))
                        })?;
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.take(size, keep_body, &mut body).await?;
                body_len += size;
                self.line().await?;
            }
        } else if let Some(n) = len {
            self.take(n, keep_body, &mut body).await?;
            body_len = n;
        }
        Ok(Reply {
            status,
            head,
            body,
            body_len,
        })
    }
}

fn schedule_request(n: u64) -> Vec<u8> {
    let body = format!(r#"{{"org":"{ORG}","task":"bench task {n}"}}"#);
    format!(
        "POST /schedule HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
        .into_bytes()
}

// ---- the servers (this binary with --serve KIND DIR) --------------------------------------------

/// The reference: validates like GuildNet, stores in memory.
#[derive(Default)]
struct RefState {
    tasks: Mutex<Vec<Task>>,
}

async fn ref_schedule(
    axum::extract::State(s): axum::extract::State<Arc<RefState>>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> Result<(axum::http::StatusCode, axum::Json<Task>), ApiError> {
    if req.task.trim().is_empty() {
        return Err(ApiError::invalid("task", "must not be empty"));
    }
    if req.task.contains('\0') {
        return Err(ApiError::invalid("task", "must not contain NUL characters"));
    }
    if req.task.len() > guildnet_core::orchestrator::MAX_TASK_BYTES {
        return Err(ApiError::invalid("task", "too large"));
    }
    if req.org.as_str() != ORG {
        return Err(ApiError::invalid("org", "unknown org"));
    }
    let now = chrono::Utc::now();
    let task = Task {
        agent: None,
        id: guildnet_core::names::TaskId::generate(),
        org: req.org,
        task: req.task,
        agent_hint: req.agent_hint,
        status: guildnet_core::model::TaskStatus::Scheduled,
        attempt: 1,
        fencing: 0,
        claims: 0,
        lease_expires_at: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        exit_code: None,
        reason: None,
        artifacts: Vec::new(),
        pr_url: None,
        context: guildnet_core::context::TaskContext {
            repo: req.repo,
            files: req.files,
        },
        log_sealed: false,
        claim_process: None,
    };
    s.tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(task.clone());
    Ok((axum::http::StatusCode::ACCEPTED, axum::Json(task)))
}

#[derive(serde::Deserialize)]
struct RefListQuery {
    limit: Option<usize>,
}

async fn ref_list(
    axum::extract::State(s): axum::extract::State<Arc<RefState>>,
    axum::extract::Query(q): axum::extract::Query<RefListQuery>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let limit = q.limit.unwrap_or(100).min(1000);
    let body = {
        let tasks = s.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let newest: Vec<&Task> = tasks.iter().rev().take(limit).collect();
        serde_json::to_vec(&newest).unwrap_or_default()
    };
    ([("content-type", "application/json")], body).into_response()
}

async fn serve_reference() {
    let state = Arc::new(RefState::default());
    let app = axum::Router::new()
        .route("/schedule", axum::routing::post(ref_schedule))
        .route("/tasks", axum::routing::get(ref_list))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    ready(listener.local_addr().expect("addr"));
    axum::serve(listener, app).await.expect("serve");
}

fn ready(addr: std::net::SocketAddr) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "READY {addr}");
    let _ = o.flush();
}

/// GuildNet as the release binary runs it, with a backend that starts nothing (`dead`: one
/// that refuses every submit, as a cluster that is down).
async fn serve_guildnet(dir: &Path, dead: bool) {
    guildnet_bin::init_tracing();
    let store = SqliteStore::open(dir.join("bench.db"), Durability::Full).expect("open store");
    let org = OrgName::new(ORG).expect("org");
    store
        .create_org(
            &org,
            guildnet_core::model::NewAudit::new("bench", "org.create", ORG, None),
        )
        .await
        .expect("org");
    let backend = NullBackend {
        refuse: dead.then(|| "cluster unreachable (bench: dead backend)".to_owned()),
        ..Default::default()
    };
    let stats_store = store.clone();
    let o = Orchestrator::new(
        Arc::new(store),
        Arc::new(backend),
        OrchestratorConfig::new(Secret::new(ADMIN), "http://127.0.0.1:1"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    ready(listener.local_addr().expect("addr"));
    // `STATS` on stdin: the group commit counters on stdout.
    std::thread::spawn(move || {
        for l in std::io::stdin().lines() {
            let Ok(l) = l else { break };
            if l.trim() == "STATS" {
                let c = stats_store.commit_stats();
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "STATS {} {} {}", c.batches, c.writes, c.largest);
                let _ = o.flush();
            }
        }
    });
    let _ = guildnet_core::orchestrator::serve(listener, o, std::future::pending()).await;
}

// ---- driving a server process -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reference,
    GuildNet,
    GuildNetDeadBackend,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            Kind::GuildNet => "guildnet",
            Kind::GuildNetDeadBackend => "guildnet-dead",
        }
    }
}

struct Server {
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    child: tokio::process::Child,
    pid: u32,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Server {
    /// A server from `exe`: this binary, or another build of this bench (`--baseline-exe`).
    async fn start_exe(kind: Kind, exe: &Path) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = tokio::process::Command::new(exe)
            .arg("--serve")
            .arg(kind.arg())
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start server");
        let pid = child.id().expect("pid");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            match tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
                Ok(Ok(Some(l))) if l.starts_with("READY ") => break l[6..].to_owned(),
                Ok(Ok(Some(_))) => continue,
                other => panic!("{} server did not start: {other:?}", kind.arg()),
            }
        };
        Server {
            stdin: child.stdin.take().expect("stdin"),
            stdout: lines,
            child,
            pid,
            addr,
            log,
            _dir: dir,
        }
    }

    /// CPU time (user + system) the server process has used, in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which is in parentheses and may hold spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime is field 14, stime 15.
        let ticks = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(14) + ticks(15)) / clock_ticks_per_sec()
    }

    fn status_kb(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// The GuildNet server's group commit counters (batches, writes, largest batch); `None`
    /// from the reference, or from a build that does not report them.
    async fn commit_stats(&mut self) -> Option<(u64, u64, u64)> {
        self.stdin.write_all(b"STATS\n").await.ok()?;
        let l = tokio::time::timeout(Duration::from_millis(500), self.stdout.next_line())
            .await
            .ok()?
            .ok()??;
        let mut it = l.strip_prefix("STATS ")?.split_whitespace();
        let mut next = || it.next()?.parse::<u64>().ok();
        Some((next()?, next()?, next()?))
    }

    /// Lines of the server's log that are warnings.
    fn warnings(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            // The log may carry colour codes around the level.
            .filter(|l| l.contains("WARN"))
            .count()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What one closed loop did.
struct Loop {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    bytes: u64,
}

/// `clients` connections sending requests back to back for `secs` or until `total` succeeded.
async fn closed_loop(
    addr: &str,
    clients: usize,
    secs: f64,
    total: Option<u64>,
    make: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
) -> Loop {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut hs = Vec::new();
    for _ in 0..clients {
        let (addr, make, next, done) = (addr.to_owned(), make.clone(), next.clone(), done.clone());
        hs.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await.expect("connect");
            let (mut ok, mut errors, mut bytes, mut first_error) = (0u64, 0u64, 0u64, None);
            loop {
                if Instant::now() >= deadline && total.is_none() {
                    break;
                }
                if total.is_some_and(|t| done.load(Ordering::Relaxed) >= t) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                match c.send(&make(n), false).await {
                    Ok(r) if r.status < 300 => {
                        ok += 1;
                        bytes += r.body_len as u64;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        errors += 1;
                        first_error.get_or_insert(format!("HTTP {}", r.status));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
                        match Conn::open(&addr).await {
                            Ok(n) => c = n,
                            Err(_) => break,
                        }
                    }
                }
            }
            (ok, errors, bytes, first_error)
        }));
    }
    let mut l = Loop {
        ok: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        bytes: 0,
    };
    for h in hs {
        let (ok, errors, bytes, fe) = h.await.expect("client");
        l.ok += ok;
        l.errors += errors;
        l.bytes += bytes;
        if l.first_error.is_none() {
            l.first_error = fe;
        }
    }
    l.secs = t0.elapsed().as_secs_f64();
    l
}

/// Open loop: request `i` is due at `t0 + i / rate`; a pacing thread releases each at its due
/// time and any free connection sends it. Latency runs from the due time to the reply, so time a
/// request spent waiting for a free connection (a stalled server) counts.
async fn open_loop(addr: &str, rate: u64, secs: f64) -> (Vec<f64>, u64) {
    let n = (rate as f64 * secs) as u64;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut hs = Vec::new();
    for _ in 0..64 {
        let (addr, rx) = (addr.to_owned(), rx.clone());
        hs.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await.expect("connect");
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, due)) = next else { break };
                match c.send(&schedule_request(1_000_000_000 + i), false).await {
                    Ok(r) if r.status < 300 => lat.push(due.elapsed().as_secs_f64() * 1000.0),
                    _ => {
                        errors += 1;
                        if let Ok(n) = Conn::open(&addr).await {
                            c = n;
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let pacer = std::thread::spawn(move || {
        let t0 = Instant::now() + Duration::from_millis(20);
        for i in 0..n {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                break;
            }
        }
    });
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in hs {
        let (l, e) = h.await.expect("client");
        lat.extend(l);
        errors += e;
    }
    let _ = pacer.join();
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat, errors)
}

/// One server's figures.
#[derive(Debug, Default, Clone)]
struct Figures {
    closed_rps: f64,
    closed_cpu_us: f64,
    open_p50: f64,
    open_p99: f64,
    open_p999: f64,
    open_max: f64,
    open_errors: u64,
    open_cpu_us: f64,
    /// Writes per commit in the closed loop (mean) and the largest commit.
    batch_mean: f64,
    batch_max: u64,
    list_tasks_per_s: f64,
    list_rps: f64,
    rss_mb: f64,
}

fn schedule_maker() -> Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync> {
    Arc::new(schedule_request)
}

fn check(l: &Loop, what: &str) {
    if l.errors > 0 {
        println!(
            "  {what}: {} errors (first: {})",
            l.errors,
            l.first_error.as_deref().unwrap_or("?")
        );
    }
    assert!(
        l.ok > 0,
        "{what}: no request succeeded ({:?})",
        l.first_error
    );
}

async fn measure(kind: Kind, exe: &Path, s: &Settings) -> Figures {
    let mut srv = Server::start_exe(kind, exe).await;
    let mut f = Figures::default();
    // Warm up, then fill to the listing's task count.
    let warm = (s.list_tasks / 5).min(2000);
    let w = closed_loop(&srv.addr, 8, 0.0, Some(warm), schedule_maker()).await;
    check(&w, "warm-up");
    let left = s.list_tasks.saturating_sub(w.ok);
    if left > 0 {
        let fill = closed_loop(&srv.addr, 32, 0.0, Some(left), schedule_maker()).await;
        check(&fill, "fill");
    }

    // GET /tasks?limit=1000.
    let list = Arc::new(get_request("/tasks?limit=1000"));
    let l = closed_loop(&srv.addr, 4, s.secs, None, Arc::new(move |_| list.to_vec())).await;
    check(&l, "list");
    f.list_rps = l.ok as f64 / l.secs;
    f.list_tasks_per_s = f.list_rps * 1000f64.min(s.list_tasks as f64);

    // Open loop at 1,000 req/s, before the closed loop (as the first version of this bench
    // did): a steady state, not the tail of the closed loop's burst (up to 100,000 writes
    // whose WAL is still being checkpointed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu0 = srv.cpu_secs();
    let (lat, errors) = open_loop(&srv.addr, 1000, s.secs).await;
    let cpu = srv.cpu_secs() - cpu0;
    assert!(!lat.is_empty(), "open loop: no request succeeded");
    f.open_p50 = pct(&lat, 0.50);
    f.open_p99 = pct(&lat, 0.99);
    f.open_p999 = pct(&lat, 0.999);
    f.open_max = lat.last().copied().unwrap_or(f64::NAN);
    f.open_errors = errors;
    f.open_cpu_us = cpu * 1e6 / lat.len().max(1) as f64;

    // Closed loop, 32 clients.
    let stats0 = srv.commit_stats().await;
    let cpu0 = srv.cpu_secs();
    let c = closed_loop(&srv.addr, 32, s.secs, None, schedule_maker()).await;
    let cpu = srv.cpu_secs() - cpu0;
    if let (Some(a), Some(b)) = (stats0, srv.commit_stats().await) {
        f.batch_mean = (b.1 - a.1) as f64 / (b.0 - a.0).max(1) as f64;
        f.batch_max = b.2;
    }
    check(&c, "closed loop");
    f.closed_rps = c.ok as f64 / c.secs;
    f.closed_cpu_us = cpu * 1e6 / c.ok.max(1) as f64;

    f.rss_mb = srv.status_kb("VmHWM:") as f64 / 1024.0;
    srv.stop().await;
    f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn print_side_by_side(reference: &[Figures], guildnet: &[Figures], baseline: &[Figures]) {
    type Get = fn(&Figures) -> f64;
    let rows: [(&str, &str, Get); 9] = [
        ("POST /schedule closed loop, 32 clients", "req/s", |f| {
            f.closed_rps
        }),
        ("server CPU per schedule (closed loop)", "µs", |f| {
            f.closed_cpu_us
        }),
        ("server CPU per schedule (1,000 req/s)", "µs", |f| {
            f.open_cpu_us
        }),
        ("p50 at 1,000 req/s open loop", "ms", |f| f.open_p50),
        ("p99 at 1,000 req/s open loop", "ms", |f| f.open_p99),
        ("p99.9 at 1,000 req/s open loop", "ms", |f| f.open_p999),
        ("peak RSS", "MB", |f| f.rss_mb),
        ("GET /tasks?limit=1000, 10,000 tasks", "req/s", |f| {
            f.list_rps
        }),
        ("  = tasks serialized", "tasks/s", |f| f.list_tasks_per_s),
    ];
    let with_base = !baseline.is_empty();
    println!();
    println!(
        "{:<38} {:>10} {:>10} {:>7}{}   (median of {} runs each; every run: reference | guildnet{})",
        "figure",
        "reference",
        "guildnet",
        "ratio",
        if with_base {
            format!(" {:>10} {:>7}", "baseline", "ratio")
        } else {
            String::new()
        },
        reference.len(),
        if with_base { " | baseline" } else { "" }
    );
    let runs = |fs: &[Figures], get: Get| {
        fs.iter()
            .map(|f| fmt_num(get(f)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (name, unit, get) in rows {
        let r = median(reference.iter().map(get).collect());
        let g = median(guildnet.iter().map(get).collect());
        let (base_cols, base_runs) = if with_base {
            let b = median(baseline.iter().map(get).collect());
            (
                format!(" {:>10} {:>6.2}x", fmt_num(b), b / r),
                format!(" | {}", runs(baseline, get)),
            )
        } else {
            (String::new(), String::new())
        };
        println!(
            "{:<38} {:>10} {:>10} {:>6.2}x{base_cols}   {unit}; {} | {}{base_runs}",
            name,
            fmt_num(r),
            fmt_num(g),
            g / r,
            runs(reference, get),
            runs(guildnet, get),
        );
    }
    println!();
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

// ---- GuildNet only: pages, dead backend, schedule -> claimed -------------------------------------

/// One walk through every page: (ms, whether the page was full) per page, and the tasks seen.
async fn walk_pages(c: &mut Conn, per_page: u64, expected: u64) -> (Vec<(f64, bool)>, u64) {
    let mut path = format!("/tasks?limit={per_page}");
    // (ms, full page)
    let mut times: Vec<(f64, bool)> = Vec::new();
    let mut seen = 0u64;
    loop {
        let t0 = Instant::now();
        let r = c.send(&get_request(&path), true).await.expect("page");
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(
            r.status,
            200,
            "page {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("page json");
        let items = v.as_array().map(|a| a.len()).unwrap_or(0);
        times.push((ms, items as u64 == per_page));
        seen += items as u64;
        let next = r.head.lines().find_map(|l| {
            let (k, val) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-next-cursor")
                .then(|| val.trim().to_owned())
        });
        match next {
            Some(n) if items > 0 => path = format!("/tasks?limit={per_page}&cursor={n}"),
            _ => break,
        }
        if seen > expected * 2 {
            break;
        }
    }
    (times, seen)
}

/// Lists every task page by page with the cursor (`X-Next-Cursor`), twice (the first walk
/// reads what the fill just wrote for the first time); returns, for the second walk, (pages,
/// tasks, median ms of the first tenth of its full pages, median ms of the last tenth).
async fn page_through(addr: &str, expected: u64, per_page: u64) -> (usize, u64, f64, f64) {
    let mut c = Conn::open(addr).await.expect("connect");
    let _ = walk_pages(&mut c, per_page, expected).await;
    let (times, seen) = walk_pages(&mut c, per_page, expected).await;
    let full: Vec<f64> = times.iter().filter(|t| t.1).map(|t| t.0).collect();
    if full.is_empty() {
        return (times.len(), seen, f64::NAN, f64::NAN);
    }
    let k = (full.len() / 10).max(3).min(full.len());
    let first = median(full[..k].to_vec());
    let last = median(full[full.len() - k..].to_vec());
    (times.len(), seen, first, last)
}

async fn pages(s: &Settings, exe: &Path, label: &str) {
    let srv = Server::start_exe(Kind::GuildNet, exe).await;
    let fill = closed_loop(&srv.addr, 32, 0.0, Some(s.page_tasks), schedule_maker()).await;
    check(&fill, "fill for paging");
    let per_page = (s.page_tasks / 5).clamp(1, 1000);
    let (pages, seen, first, last) = page_through(&srv.addr, s.page_tasks, per_page).await;
    println!(
        "{label}: paging: {seen} of {} tasks in {pages} pages of {per_page} (second walk); \
         first tenth of the full pages {first:.2} ms/page, last tenth {last:.2} ms/page (medians)",
        s.page_tasks
    );
    if s.smoke && label == "guildnet" {
        assert!(
            pages > 1 && seen >= s.page_tasks,
            "paging: {pages} pages, {seen} tasks"
        );
    }
    if label == "guildnet" {
        row(
            "list page by page: last / first page time",
            last / first,
            "x",
            1.5,
            true,
        );
    }
    srv.stop().await;
}

async fn dead_backend(s: &Settings, exe: &Path, label: &str) {
    let srv = Server::start_exe(Kind::GuildNetDeadBackend, exe).await;
    let t_fill = Instant::now();
    let fill = closed_loop(&srv.addr, 32, 0.0, Some(s.dead_tasks), schedule_maker()).await;
    check(&fill, "fill for the dead backend");
    let fill_secs = t_fill.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, warn0, t0) = (srv.cpu_secs(), srv.warnings(), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(s.dead_secs)).await;
    let (cpu, warns, secs) = (
        srv.cpu_secs() - cpu0,
        srv.warnings() - warn0,
        t0.elapsed().as_secs_f64(),
    );
    // What a user sees about a waiting task.
    let mut c = Conn::open(&srv.addr).await.expect("connect");
    let r = c
        .send(&get_request("/tasks?limit=1"), true)
        .await
        .expect("list");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let first = v
        .get("tasks")
        .and_then(|t| t.as_array())
        .or_else(|| v.as_array())
        .and_then(|a| a.first())
        .and_then(|t| t.get("id"))
        .and_then(|i| i.as_str())
        .map(str::to_owned)
        .expect("a task");
    let r = c
        .send(&get_request(&format!("/tasks/{first}")), true)
        .await
        .expect("task");
    let detail: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    println!(
        "{label}: dead backend: {} tasks waiting (stored in {fill_secs:.1} s), {} warnings in all, \
         {warns} in the {secs:.0} s watched",
        fill.ok,
        srv.warnings()
    );
    println!(
        "  GET /tasks/{{id}}: status {}, waiting: {}",
        detail["status"],
        detail
            .get("waiting")
            .map(|w| w.to_string())
            .unwrap_or_else(|| "(none)".into())
    );
    println!(
        "  orchestrator CPU while they wait: {:.2}% of one core",
        cpu / secs * 100.0
    );
    if label == "guildnet" {
        row(
            "orchestrator CPU, tasks waiting on dead backend",
            cpu / secs * 100.0,
            "%core",
            5.0,
            true,
        );
    }
    srv.stop().await;
}

async fn schedule_to_claimed(n: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LocalOptions::new();
    opts.state_dir = Some(dir.path().join("state"));
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.admin_token = Some("bench-token".into());
    opts.agent_bin = Some(env!("CARGO_BIN_EXE_guildnet-agent").into());
    opts.runner = Some("true".into());
    opts.orgs = vec![OrgName::new(ORG).unwrap()];
    opts.service.heartbeat_interval = Duration::from_secs(1);
    opts.service.lease_ttl = Duration::from_secs(10);
    let started = start_local(opts).await.expect("start");
    let o = started.app.orchestrator.clone();
    tokio::spawn(guildnet_core::orchestrator::serve(
        started.listener,
        started.app,
        std::future::pending(),
    ));
    let org = OrgName::new(ORG).unwrap();
    let mut lat = Vec::new();
    for i in 0..n {
        let req = ScheduleRequest::new(org.clone(), format!("claim bench {i}"));
        let t = o.schedule(req).await.expect("schedule");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let cur = o.task(&t.id).await.expect("task");
            if let Some(started_at) = cur.started_at {
                lat.push(
                    (started_at - cur.created_at)
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1000.0,
                );
                break;
            }
            assert!(Instant::now() < deadline, "task {} never claimed", t.id);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // Let the last agents finish before the temp dir goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lat.sort_by(|a, b| a.total_cmp(b));
    lat
}

// ---- main ---------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let kind = args.get(i + 1).cloned().unwrap_or_default();
        let dir = PathBuf::from(args.get(i + 2).cloned().unwrap_or_else(|| ".".into()));
        // As the release binary: a multi-threaded runtime with one worker per core.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            match kind.as_str() {
                "reference" => serve_reference().await,
                "guildnet" => serve_guildnet(&dir, false).await,
                "guildnet-dead" => serve_guildnet(&dir, true).await,
                other => panic!("unknown server kind {other}"),
            }
        });
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(addr) = arg("--load") {
        // Load only, against a server started elsewhere (e.g. under a profiler):
        // `--serve guildnet DIR` in one shell, `--load ADDR [--secs S]` in another.
        let secs = arg("--secs").and_then(|v| v.parse().ok()).unwrap_or(10.0);
        rt.block_on(async move {
            let l = closed_loop(&addr, 32, secs, None, schedule_maker()).await;
            println!(
                "{} schedules in {:.1} s: {:.0} req/s, {} errors",
                l.ok,
                l.secs,
                l.ok as f64 / l.secs,
                l.errors
            );
        });
        return;
    }
    rt.block_on(bench(Settings::from_args()));
}

async fn bench(s: Settings) {
    let mode = if s.smoke {
        "smoke (debug build: checks that the bench runs; figures mean nothing)"
    } else if s.secs < 5.0 {
        "quick"
    } else {
        "full"
    };
    println!("GuildNet schedule benchmark ({mode})");
    println!(
        "machine: {} cores; {} rounds of {} s per phase; load generator and servers share the cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        s.rounds,
        s.secs
    );
    let own = std::env::current_exe().expect("own path");
    let baseline_exe = arg("--baseline-exe").map(PathBuf::from);
    // (label, binary, kind): the reference, this build's GuildNet, and optionally the GuildNet
    // of another build of this bench (before/after in one run).
    let mut servers = vec![
        ("reference", own.clone(), Kind::Reference),
        ("guildnet", own.clone(), Kind::GuildNet),
    ];
    if let Some(b) = &baseline_exe {
        servers.push(("baseline", b.clone(), Kind::GuildNet));
    }
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); servers.len()];
    for round in 0..s.rounds {
        // Rotate the order every round so no server always runs first (or right after
        // another's fsync backlog).
        for k in 0..servers.len() {
            let i = (k + round) % servers.len();
            let (label, exe, kind) = &servers[i];
            let f = measure(*kind, exe, &s).await;
            println!(
                "round {} {:<9}: {:>7.0} req/s, {:>6.1} µs CPU/schedule, p50/p99 {:.2}/{:.2} ms \
                 (p99.9 {:.2}, max {:.2}, {} errors), {:.0} tasks/s listed, {:.1} MB{}",
                round + 1,
                label,
                f.closed_rps,
                f.closed_cpu_us,
                f.open_p50,
                f.open_p99,
                f.open_p999,
                f.open_max,
                f.open_errors,
                f.list_tasks_per_s,
                f.rss_mb,
                if f.batch_mean > 0.0 {
                    format!(
                        ", group commit {:.1} writes/commit (largest {})",
                        f.batch_mean, f.batch_max
                    )
                } else {
                    String::new()
                }
            );
            results[i].push(f);
        }
    }
    let baseline = results.get(2).cloned().unwrap_or_default();
    let (reference, guildnet) = (results[0].clone(), results[1].clone());
    print_side_by_side(&reference, &guildnet, &baseline);
    let g = |get: fn(&Figures) -> f64| median(guildnet.iter().map(get).collect());
    let r = |get: fn(&Figures) -> f64| median(reference.iter().map(get).collect());
    row(
        "schedule req/s, guildnet / reference",
        g(|f| f.closed_rps) / r(|f| f.closed_rps),
        "x",
        1.0,
        false,
    );
    row(
        "server CPU per schedule (durable)",
        g(|f| f.closed_cpu_us),
        "us",
        50.0,
        true,
    );
    row(
        "schedule latency p99 @1000 req/s",
        g(|f| f.open_p99),
        "ms",
        5.0,
        true,
    );
    row(
        "GET /tasks?limit=1000 tasks serialized",
        g(|f| f.list_tasks_per_s) / 1e6,
        "M/s",
        2.0,
        false,
    );

    for (label, exe) in
        std::iter::once(("guildnet", &own)).chain(baseline_exe.as_ref().map(|b| ("baseline", b)))
    {
        pages(&s, exe, label).await;
        dead_backend(&s, exe, label).await;
    }

    let lat = schedule_to_claimed(s.claims).await;
    println!(
        "schedule -> claimed with the local backend: {} tasks, sequential",
        lat.len()
    );
    row("schedule -> claimed p50", pct(&lat, 0.50), "ms", 50.0, true);
    row("schedule -> claimed p99", pct(&lat, 0.99), "ms", 50.0, true);
    if s.smoke {
        assert!(g(|f| f.closed_rps) > 0.0 && r(|f| f.closed_rps) > 0.0);
        assert!(g(|f| f.open_p99).is_finite() && r(|f| f.open_p99).is_finite());
        assert!(!lat.is_empty());
        println!("schedule bench smoke run: 1 passed, 0 failed");
    }
}
