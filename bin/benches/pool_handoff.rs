//! Schedule -> claimed through a warm pool, without pods: the orchestrator in-process (SQLite
//! store, full durability, its HTTP API on loopback) with a backend that starts nothing, and
//! warm agents simulated over HTTP (`POST /pool/wait` with the pool token, then register and
//! claim on the same connection, then complete). It is the orchestrator's share of the real-pod
//! figure (`pod_start`'s pool phase adds the agent process in its pod and the node's network).
//!
//! Tasks are scheduled one at a time with 10 agents waiting; the figure is the task's
//! `startedAt - createdAt` (the orchestrator's clock). Targets (issue 21): p50 < 100 ms,
//! p99 < 300 ms (on real pods). `cargo bench -p guildnet-bin --bench pool_handoff [-- --tasks N]`.

mod common;

use guildnet_core::client::{OrchestratorClient, PoolClient};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::{
    ClaimRequest, CompleteRequest, PoolWaitRequest, RegisterRequest,
};
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::store::{Durability, SqliteStore};
use guildnet_core::token::Secret;
use guildnet_testbed::bench::{pct_duration, row};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// One warm agent: waits, runs the task it is handed (register, claim, complete), exits.
async fn warm_agent(url: String, token: Secret, pod: String) {
    let pool = PoolClient::new(&url, token).expect("pool client");
    let req = PoolWaitRequest {
        pod,
        runner: None,
        wait_secs: Some(20),
    };
    let h = loop {
        match pool.wait(&req).await {
            Ok(r) => {
                if let Some(h) = r.handoff {
                    break h;
                }
            }
            Err(e) => panic!("wait: {e}"),
        }
    };
    let c = pool.agent_client(Secret::new(h.agent_token.clone()));
    c.register(&RegisterRequest {
        agent: h.agent.clone(),
        version: None,
        editor_address: None,
    })
    .await
    .expect("register");
    let claim = c
        .claim(&ClaimRequest {
            agent: h.agent.clone(),
            process: None,
        })
        .await
        .expect("claim");
    c.complete(&CompleteRequest {
        agent: h.agent,
        fencing: claim.fencing,
        status: TaskStatus::Succeeded,
        exit_code: Some(0),
        reason: None,
        artifacts: vec![],
        pr_url: None,
    })
    .await
    .expect("complete");
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--tasks").and_then(|s| s.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("g.db"), Durability::Full).expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let admin = Secret::new("pool-bench-admin-token-0123456789");
    let o = Orchestrator::new(
        Arc::new(store),
        Arc::new(common::NullBackend::default()),
        OrchestratorConfig::new(admin.clone(), url.clone()),
    );
    let org = OrgName::new("acme").expect("org");
    o.create_org(org.clone()).await.expect("org");
    let token = o.mint_pool_token(&org);
    tokio::spawn(guildnet_core::orchestrator::serve(
        listener,
        o,
        std::future::pending(),
    ));
    let c = OrchestratorClient::new(&url, admin).expect("client");
    let mut next = 0usize;
    let mut spawn = |k: usize| {
        for _ in 0..k {
            tokio::spawn(warm_agent(
                url.clone(),
                token.clone(),
                format!("pool-acme-{next}"),
            ));
            next += 1;
        }
    };
    spawn(10);
    let mut v = Vec::with_capacity(n);
    let t_all = Instant::now();
    for _ in 0..n {
        // Keep 10 waiting (the operator's refill, instantly).
        let start = Instant::now();
        loop {
            let w = c.pool(&org).await.expect("pool").waiting as usize;
            if w >= 10 {
                break;
            }
            spawn(10 - w);
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agents do not wait"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = c.schedule(&org, "exit 0", None).await.expect("schedule");
        let done = loop {
            let t = c.task(&t.id).await.expect("task");
            if t.status.is_terminal() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert_eq!(done.status, TaskStatus::Succeeded);
        v.push(
            (done.started_at.expect("claimed") - done.created_at)
                .to_std()
                .unwrap_or_default(),
        );
    }
    let warm = c.pool(&org).await.expect("pool").warm_starts;
    assert_eq!(warm as usize, n, "every task went to a warm agent");
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "pool handoff (in-process, loopback): n={n} in {:.1} s, min {:.2} ms, max {:.2} ms",
        t_all.elapsed().as_secs_f64(),
        ms(v[0]),
        ms(v[v.len() - 1])
    );
    row(
        "pool schedule->claimed loopback p50",
        ms(pct_duration(&v, 0.5)),
        "ms",
        100.0,
        true,
    );
    println!(
        "{:<44} {:>10.2} ms",
        "pool schedule->claimed loopback p95",
        ms(pct_duration(&v, 0.95))
    );
    row(
        "pool schedule->claimed loopback p99",
        ms(pct_duration(&v, 0.99)),
        "ms",
        300.0,
        true,
    );
}
