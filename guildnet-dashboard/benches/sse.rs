//! Fan-out latency of the dashboard's live stream: N concurrent SSE subscribers to
//! `/api/events` (each a logged-in HTTP client), a real orchestrator behind it; each round
//! schedules one task through the dashboard and measures, per subscriber, the time from the
//! schedule request to the arrival of that task's `task.scheduled` event.
//!
//! Run: `cargo bench -p guildnet-dashboard --bench sse` (`SSE_SUBSCRIBERS`, `SSE_ROUNDS`).

#[path = "../tests/support/mod.rs"]
mod support;

use futures_util::StreamExt;
use guildnet_core::client::sse_messages;
use guildnet_testbed::bench::{pct_duration, row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let n = env_usize("SSE_SUBSCRIBERS", 1000);
    let rounds = env_usize("SSE_ROUNDS", 10);
    let env = start(|_| {}).await;
    let me = Browserish::login(&env.dash_url).await;
    me.json(
        reqwest::Method::POST,
        "/api/orgs",
        Some(serde_json::json!({"name": "bench"})),
    )
    .await;

    // Each subscriber reports (task id, arrival instant) of every task.scheduled event.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let opened = Arc::new(tokio::sync::Semaphore::new(0));
    let t_open = Instant::now();
    for _ in 0..n {
        let tx = tx.clone();
        let client = client.clone();
        let url = format!("{}/api/events", env.dash_url);
        let cookie = me.cookie.clone().unwrap_or_default();
        let opened = opened.clone();
        tokio::spawn(async move {
            let resp = match client.get(url).header("cookie", cookie).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    eprintln!("subscriber refused: {}", r.status());
                    return;
                }
                Err(e) => {
                    eprintln!("subscriber failed: {e}");
                    return;
                }
            };
            let mut counted = false;
            // The first chunk is the ": live" comment: the subscription is in place.
            let body = resp.bytes_stream().inspect(move |_| {
                if !counted {
                    opened.add_permits(1);
                    counted = true;
                }
            });
            let mut messages = Box::pin(sse_messages(body));
            while let Some(Ok(m)) = messages.next().await {
                let now = Instant::now();
                if m.event != "task" {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&m.data) else {
                    continue;
                };
                if v["kind"] == "task.scheduled" {
                    let id = v["taskId"].as_str().unwrap_or_default().to_owned();
                    let _ = tx.send((id, now));
                }
            }
        });
    }
    drop(tx);
    let ready = tokio::time::timeout(Duration::from_secs(120), opened.acquire_many(n as u32)).await;
    let Ok(Ok(permit)) = ready else {
        panic!("not all {n} subscribers connected");
    };
    permit.forget();
    println!("{n} subscribers connected in {:.2?}", t_open.elapsed());

    let mut all = Vec::with_capacity(n * rounds);
    let mut hub_delays = Vec::new();
    for _ in 0..rounds {
        // Drain stray events of the previous round (task started/finished...).
        tokio::time::sleep(Duration::from_millis(300)).await;
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let (st, task) = me
            .json(
                reqwest::Method::POST,
                "/api/schedule",
                Some(serde_json::json!({"org": "bench", "task": "bench"})),
            )
            .await;
        assert_eq!(st, 201, "{task}");
        let id = task["id"].as_str().unwrap_or_default().to_owned();
        let mut got = 0;
        let mut first: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while got < n && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some((tid, at))) if tid == id => {
                    got += 1;
                    first = Some(first.map_or(at, |f| f.min(at)));
                    all.push(at.saturating_duration_since(t0));
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(got, n, "only {got} of {n} subscribers got the event");
        if let Some(f) = first {
            hub_delays.push(f.saturating_duration_since(t0));
        }
    }
    all.sort();
    hub_delays.sort();
    let p50 = pct_duration(&all, 0.50);
    let p99 = pct_duration(&all, 0.99);
    let first50 = pct_duration(&hub_delays, 0.50);
    println!(
        "sse fan-out: {n} subscribers x {rounds} events = {} deliveries",
        all.len()
    );
    println!(
        "delivery latency (schedule request -> event at subscriber): p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        p50,
        p99,
        all.last().copied().unwrap_or_default()
    );
    println!(
        "first subscriber p50 {:.2?}; fan-out spread (p99 - first) {:.2?}; p99/p50 ratio {:.2}",
        first50,
        p99.saturating_sub(first50),
        p99.as_secs_f64() / p50.as_secs_f64().max(1e-9)
    );
    row(
        &format!("SSE delivery p99 ({n} subscribers)"),
        p99.as_secs_f64() * 1e3,
        "ms",
        50.0,
        true,
    );
}
