//! Schedule benchmark (not a test): prints figures and their ratio to the targets.
//!
//! 1. Durable schedule latency at a fixed open-loop rate of 1,000 req/s over HTTP on loopback
//!    (SQLite with synchronous=FULL, every request committed before its 202). The backend here
//!    accepts submissions without starting processes, so the figure is the orchestrator's own cost.
//! 2. Closed-loop schedule throughput (32 concurrent clients).
//! 3. Schedule -> claimed latency with the real local backend: each task's `guildnet-agent`
//!    process starts, registers and claims (server-side timestamps).
//!
//! Run: `cargo bench -p guildnet-bin --bench schedule` (`-- --quick` for a short run).

mod common;

use common::NullBackend;
use guildnet_core::client::OrchestratorClient;
use guildnet_core::launch::{start_local, LocalOptions};
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::store::{Durability, SqliteStore, StateStore};
use guildnet_core::token::Secret;
use guildnet_testbed::bench::{pct, row};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn null_orchestrator(dir: &std::path::Path) -> (String, OrchestratorClient) {
    let store = SqliteStore::open(dir.join("bench.db"), Durability::Full).expect("open store");
    let org = OrgName::new("bench").unwrap();
    store
        .create_org(
            &org,
            guildnet_core::model::NewAudit::new("bench", "org.create", "bench", None),
        )
        .await
        .expect("org");
    let o = Orchestrator::new(
        Arc::new(store),
        Arc::new(NullBackend::default()),
        OrchestratorConfig::new(Secret::new("bench-token"), "http://127.0.0.1:1"),
    )
    .await
    .expect("orchestrator");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(guildnet_core::orchestrator::serve(
        listener,
        o,
        std::future::pending(),
    ));
    let client = OrchestratorClient::new(&url, Secret::new("bench-token")).unwrap();
    (url, client)
}

async fn open_loop(client: &OrchestratorClient, rate: u64, secs: u64) -> (Vec<f64>, usize) {
    let org = OrgName::new("bench").unwrap();
    let n = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        tick.tick().await;
        let c = client.clone();
        let org = org.clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = c.schedule(&org, &format!("bench task {i}"), None).await;
            (t0.elapsed().as_secs_f64() * 1000.0, r.is_ok())
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let mut errors = 0;
    for h in handles {
        let (ms, ok) = h.await.unwrap();
        if ok {
            lat.push(ms);
        } else {
            errors += 1;
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat, errors)
}

async fn closed_loop(client: &OrchestratorClient, workers: usize, secs: u64) -> f64 {
    let org = OrgName::new("bench").unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut hs = Vec::new();
    for w in 0..workers {
        let c = client.clone();
        let org = org.clone();
        hs.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if c.schedule(&org, &format!("closed {w}-{n}"), None)
                    .await
                    .is_ok()
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for h in hs {
        total += h.await.unwrap();
    }
    total as f64 / secs as f64
}

async fn schedule_to_claimed(n: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LocalOptions::new();
    opts.state_dir = Some(dir.path().join("state"));
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.admin_token = Some("bench-token".into());
    opts.agent_bin = Some(env!("CARGO_BIN_EXE_guildnet-agent").into());
    opts.runner = Some("true".into());
    opts.orgs = vec![OrgName::new("bench").unwrap()];
    opts.heartbeat_interval = Duration::from_secs(1);
    opts.lease_ttl = Duration::from_secs(10);
    let started = start_local(opts).await.expect("start");
    let o = started.orchestrator.clone();
    tokio::spawn(guildnet_core::orchestrator::serve(
        started.listener,
        started.orchestrator,
        std::future::pending(),
    ));
    let org = OrgName::new("bench").unwrap();
    let mut lat = Vec::new();
    for i in 0..n {
        let req = guildnet_core::orchestrator::api::ScheduleRequest::new(
            org.clone(),
            format!("claim bench {i}"),
        );
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (secs, claims) = if quick { (2, 10) } else { (5, 40) };
    println!(
        "GuildNet schedule benchmark ({} run)",
        if quick { "quick" } else { "full" }
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let dir = tempfile::tempdir().unwrap();
    let (_url, client) = null_orchestrator(dir.path()).await;
    // Warm up connections and the database.
    let _ = open_loop(&client, 200, 1).await;
    let (lat, errors) = open_loop(&client, 1000, secs).await;
    println!(
        "open loop: {} requests at 1000 req/s, {} errors, durable (synchronous=FULL)",
        lat.len() + errors,
        errors
    );
    row(
        "schedule latency p50 @1000 req/s",
        pct(&lat, 0.50),
        "ms",
        5.0,
        true,
    );
    row(
        "schedule latency p99 @1000 req/s",
        pct(&lat, 0.99),
        "ms",
        5.0,
        true,
    );
    println!(
        "  (p99.9 {:.2} ms, max {:.2} ms, {} of {} over 5 ms)",
        pct(&lat, 0.999),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.iter().filter(|ms| **ms > 5.0).count(),
        lat.len()
    );
    let tput = closed_loop(&client, 32, secs).await;
    row(
        "schedule throughput (32 clients, durable)",
        tput,
        "req/s",
        1000.0,
        false,
    );

    let lat = schedule_to_claimed(claims).await;
    println!(
        "schedule -> claimed with the local backend: {} tasks, sequential",
        lat.len()
    );
    row("schedule -> claimed p50", pct(&lat, 0.50), "ms", 50.0, true);
    row("schedule -> claimed p99", pct(&lat, 0.99), "ms", 50.0, true);
}
