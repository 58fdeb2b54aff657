//! Schedule -> claimed on real pods: how long from `POST /schedule` until the agent in its pod
//! has claimed the task (the task's `startedAt - createdAt`, both the orchestrator's clock).
//!
//! The testbed's control plane with a real node (containerd + kubelet), the registry, the
//! images built by `scripts/images/build.sh` from this build's binaries, the operator on the
//! host (`guildnet-operator run`), the orchestrator with `--backend kubernetes` on the node's
//! address. Tasks run one at a time (the stand-in runner `sh -s` with `exit 0`):
//!
//! - cold: before each task the node is replaced by a fresh one (`KubeCluster::restart_node`:
//!   containerd with an empty content store), so the kubelet pulls the agent image from the
//!   registry (on loopback: no network in the figure, but the whole download, decompression and
//!   unpacking of 177 MB);
//! - warm: the image is on the node.
//! - pool: a warm pool of 3 (`PUT /orgs/acme/pool`): an agent already waits in its pod, and the
//!   task is handed to it over its open `POST /pool/wait` (issue 21). Before each task the bench
//!   waits until the pool is back to 3 waiting agents.
//!
//! Also the agent's RSS (PID 1 of the pod: guildnet-agent, code-server being its child).
//! Targets (issue 15): warm p50 < 3 s, cold p50 < 10 s, agent RSS < 15 MB; (issue 21) pool
//! p50 < 100 ms, p99 < 300 ms.
//! `cargo bench -p guildnet-bin --bench pod_start [-- --tasks N] [--cold N] [--pool N]`
//! (default 20 of each; `--cold 0` skips the cold rounds).

use guildnet_core::client::OrchestratorClient;
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::agenttask_name;
use guildnet_kube::TASK_LABEL;
use guildnet_testbed::bench::{pct_duration, row};
use guildnet_testbed::images::build_and_push;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::registry::Registry;
use guildnet_testbed::{eventually, Proc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const TOKEN: &str = "pod-start-bench-admin-token-0123456789";
const NS: &str = "mvp-agents";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn task_pods(pods: &Api<Pod>, id: &TaskId) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("{TASK_LABEL}={}", agenttask_name(id))))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn wait_task(c: &OrchestratorClient, id: &TaskId, ok: fn(&Task) -> bool) -> Task {
    let start = Instant::now();
    loop {
        if let Ok(t) = c.task(id).await {
            if ok(&t) {
                return t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "task {id} stuck: {t:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn agent_rss_kib(pods: &Api<Pod>, pod: &str) -> Option<u64> {
    let mut attached = pods
        .exec(
            pod,
            ["cat", "/proc/1/status"],
            &AttachParams::default().stdout(true).stderr(false),
        )
        .await
        .ok()?;
    let mut out = String::new();
    attached.stdout()?.read_to_string(&mut out).await.ok()?;
    let _ = attached.join().await;
    out.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Schedules `script` and returns the task once claimed.
async fn schedule_claimed(c: &OrchestratorClient, script: &str) -> Task {
    let acme = OrgName::new("acme").expect("org");
    let t = c.schedule(&acme, script, None).await.expect("schedule");
    wait_task(c, &t.id, |t| t.started_at.is_some()).await
}

/// A claimed task's schedule -> claimed time (both the orchestrator's clock).
fn took(claimed: &Task) -> Duration {
    claimed
        .started_at
        .and_then(|s| (s - claimed.created_at).to_std().ok())
        .unwrap_or_default()
}

/// Waits until `id` succeeded and its pods are gone.
async fn finish(c: &OrchestratorClient, pods: &Api<Pod>, id: &TaskId) {
    let done = wait_task(c, id, |t| t.status.is_terminal()).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    // The pod must be gone before the next cold round removes the image.
    let start = Instant::now();
    while !task_pods(pods, id).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "pod of {id} stays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one task to the end and returns its schedule -> claimed time (and the agent's RSS,
/// read while it runs, if asked).
async fn one(
    c: &OrchestratorClient,
    pods: &Api<Pod>,
    script: &str,
    measure_rss: bool,
) -> (Duration, Option<u64>) {
    let claimed = schedule_claimed(c, script).await;
    let mut rss = None;
    if measure_rss {
        if let Some(name) = task_pods(pods, &claimed.id)
            .await
            .into_iter()
            .next()
            .and_then(|p| p.metadata.name)
        {
            rss = agent_rss_kib(pods, &name).await;
        }
    }
    finish(c, pods, &claimed.id).await;
    (took(&claimed), rss)
}

/// The time at the start of a log line (`tracing`'s RFC 3339 timestamp), if the line contains
/// `what` (and `task`, when given).
fn stamp(lines: &str, what: &str, task: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    lines
        .lines()
        .find(|l| l.contains(what) && task.is_none_or(|t| l.contains(t)))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Where a warm task's schedule -> claimed time went, from the orchestrator's log and the pool
/// pod's agent log (both on this machine's clock): created -> handed (the orchestrator's insert
/// and dispatch), handed -> agent has it (the wait's response), -> registered, -> claimed.
#[derive(Default)]
struct Breakdown {
    handed: Vec<Duration>,
    received: Vec<Duration>,
    registered: Vec<Duration>,
    claimed: Vec<Duration>,
}

async fn breakdown(
    pods: &Api<Pod>,
    tasks: &Api<guildnet_kube::crd::AgentTask>,
    orch_log: &Path,
    t: &Task,
    into: &mut Breakdown,
) {
    let id = t.id.as_str();
    let Ok(Some(at)) = tasks.get_opt(&agenttask_name(&t.id)).await else {
        return;
    };
    let Some(pod) = at.spec.pool_pod else { return };
    let mut agent = String::new();
    for _ in 0..20 {
        agent = pods
            .logs(&pod, &kube::api::LogParams::default())
            .await
            .unwrap_or_default();
        if agent.contains(" claimed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orch = std::fs::read_to_string(orch_log).unwrap_or_default();
    let since = |a: chrono::DateTime<chrono::Utc>, b: Option<chrono::DateTime<chrono::Utc>>| {
        b.and_then(|b| (b - a).to_std().ok())
    };
    let created = t.created_at;
    let handed = stamp(&orch, "task handed to a warm pool agent", Some(id));
    let received = stamp(&agent, "warm: handed a task", Some(id));
    let registered = stamp(&agent, " registered", None);
    let claimed = t.started_at;
    if let (Some(h), Some(r), Some(g), Some(c)) = (
        since(created, handed),
        handed.and_then(|h| since(h, received)),
        received.and_then(|r| since(r, registered)),
        registered.and_then(|g| since(g, claimed)),
    ) {
        into.handed.push(h);
        into.received.push(r);
        into.registered.push(g);
        into.claimed.push(c);
    }
}

fn report(name: &str, mut v: Vec<Duration>, target_ms: f64, p99_target_ms: Option<f64>) {
    if v.is_empty() {
        return;
    }
    v.sort();
    let p50 = pct_duration(&v, 0.5).as_secs_f64() * 1000.0;
    let p95 = pct_duration(&v, 0.95).as_secs_f64() * 1000.0;
    let p99 = pct_duration(&v, 0.99).as_secs_f64() * 1000.0;
    println!(
        "{name}: n={} min={:?} p50={:.0} ms p95={:.0} ms p99={:.0} ms max={:?}",
        v.len(),
        v.first().copied().unwrap_or_default(),
        p50,
        p95,
        p99,
        v.last().copied().unwrap_or_default()
    );
    row(&format!("{name} p50"), p50, "ms", target_ms, true);
    println!("{:<44} {:>10.2} ms", format!("{name} p95"), p95);
    match p99_target_ms {
        Some(t) => row(&format!("{name} p99"), p99, "ms", t, true),
        None => println!("{:<44} {:>10.2} ms", format!("{name} p99"), p99),
    }
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--tasks").and_then(|s| s.parse().ok()).unwrap_or(20);
    let n_cold: usize = arg("--cold").and_then(|s| s.parse().ok()).unwrap_or(n);
    let n_pool: usize = arg("--pool").and_then(|s| s.parse().ok()).unwrap_or(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start().await.expect("registry");
    let tag = format!("bench-{}", std::process::id());
    let built = build_and_push(
        &[
            ("agent", Path::new(env!("CARGO_BIN_EXE_guildnet-agent"))),
            (
                "operator",
                Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
            ),
        ],
        &registry,
        &tag,
    )
    .await
    .expect("build images");
    let agent = built.get("agent").expect("agent").clone();
    let operator = built.get("operator").expect("operator").clone();
    println!(
        "images: agent {} MB compressed ({} MB uncompressed), operator {} MB, built and pushed in {:.1} s",
        agent.compressed_bytes / 1_000_000,
        agent.uncompressed_bytes / 1_000_000,
        operator.compressed_bytes / 1_000_000,
        built.elapsed.as_secs_f64()
    );
    let mut cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("cluster with a real node");
    let ip = cluster.node().expect("node").ip();
    let admin = cluster.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);

    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("kube")).expect("mkdir");
    std::fs::copy(cluster.kubeconfig_path(), state.join("kube/acme.config")).expect("kubeconfig");
    let port = std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://{ip}:{port}");
    let orch_log = dir.path().join("orchestrator.log");
    let _orch = Proc::spawn(
        "guildnet-orchestrator",
        Path::new(env!("CARGO_BIN_EXE_guildnet-orchestrator")),
        [
            "--listen",
            &format!("{ip}:{port}"),
            "--public-url",
            &url,
            "--org",
            "acme",
            "--backend",
            "kubernetes",
            "--agent-image",
            &agent.reference,
            "--runner",
            "sh -s",
        ],
        &[
            ("GUILDNET_STATE_DIR", state.as_os_str()),
            ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
        ],
        &orch_log,
    )
    .expect("orchestrator");
    let c = OrchestratorClient::new(&url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator", Duration::from_secs(30), || async {
        c.health().await.ok()
    })
    .await;
    // The operator runs on the host here (kube_pod_e2e runs it as a pod): the cold rounds
    // replace the node, and an operator pod would have to come back (and wait out its old
    // Lease) every round.
    guildnet_kube::install::install_crd(&admin)
        .await
        .expect("CRD");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let _operator = Proc::spawn(
        "guildnet-operator",
        Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
        [
            "run".to_owned(),
            "--kubeconfig".to_owned(),
            cluster.kubeconfig_path().display().to_string(),
            "--metrics-addr".to_owned(),
            metrics.to_string(),
            "--public-orchestrator-url".to_owned(),
            url.clone(),
        ],
        &[],
        &dir.path().join("operator.log"),
    )
    .expect("operator");

    // Cold: a fresh node (containerd with an empty content store) before each task, so the
    // kubelet pulls the agent image from the registry.
    let script = "exit 0";
    let mut cold = Vec::new();
    let mut restarts = Vec::new();
    for i in 0..n_cold {
        let r = cluster.restart_node().await.expect("restart node");
        restarts.push(r);
        let (d, _) = one(&c, &pods, script, false).await;
        println!("cold {i}: {d:?} (node replaced in {r:?})");
        cold.push(d);
    }
    let mut warm = Vec::new();
    let mut rss = Vec::new();
    for i in 0..n {
        let (d, r) = one(&c, &pods, "sleep 1", i < 5).await;
        println!("warm {i}: {d:?}");
        warm.push(d);
        rss.extend(r);
    }
    // Pool: 3 warm agents waiting in their pods; each task is handed to one of them.
    let acme = OrgName::new("acme").expect("org");
    let mut pooled = Vec::new();
    let mut parts = Breakdown::default();
    let tasks: Api<guildnet_kube::crd::AgentTask> = Api::namespaced(admin.clone(), NS);
    if n_pool > 0 {
        let spec = guildnet_core::orchestrator::api::PoolSpec {
            size: 3,
            image: None,
            runner: None,
            idle_seconds: None,
        };
        c.set_pool(&acme, &spec).await.expect("set pool");
        let t = Instant::now();
        for i in 0..n_pool {
            let start = Instant::now();
            while c.pool(&acme).await.map(|p| p.waiting).unwrap_or(0) < 3 {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "pool not back to 3 waiting agents"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if i == 0 {
                println!("pool of 3 warm in {:?}", t.elapsed());
            }
            let t = schedule_claimed(&c, "exit 0").await;
            breakdown(&pods, &tasks, &orch_log, &t, &mut parts).await;
            finish(&c, &pods, &t.id).await;
            let d = took(&t);
            println!("pool {i}: {d:?} (pool refilled in {:?})", start.elapsed());
            pooled.push(d);
        }
        let st = c.pool(&acme).await.expect("pool");
        assert_eq!(st.warm_starts as usize, n_pool, "every pool task went warm");
    }
    println!();
    restarts.sort();
    println!(
        "node replacement (stop, clean, new containerd + kubelet, Ready): p50 {:?}",
        pct_duration(&restarts, 0.5)
    );
    report(
        "pod schedule->claimed cold (image pulled)",
        cold,
        10_000.0,
        None,
    );
    report(
        "pod schedule->claimed warm (image on node)",
        warm,
        3_000.0,
        None,
    );
    report(
        "pod schedule->claimed warm pool (agent waiting)",
        pooled,
        100.0,
        Some(300.0),
    );
    if !parts.claimed.is_empty() {
        let n = parts.claimed.len();
        println!("warm pool breakdown (p50 of {n} tasks with every log line found):");
        for (what, mut v) in [
            ("created -> handed (insert, dispatch)", parts.handed),
            ("handed -> agent has it (wait response)", parts.received),
            ("agent has it -> registered", parts.registered),
            ("registered -> claimed", parts.claimed),
        ] {
            v.sort();
            println!(
                "  {what:<44} {:>8.1} ms",
                pct_duration(&v, 0.5).as_secs_f64() * 1000.0
            );
        }
    }
    if let Some(max) = rss.iter().max() {
        row(
            "agent RSS in its pod (PID 1, max of 5)",
            *max as f64 / 1024.0,
            "MiB",
            15.0,
            true,
        );
    }
}
