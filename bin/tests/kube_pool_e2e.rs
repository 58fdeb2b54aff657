//! Warm agent pools on a real node: the testbed's control plane with a real kubelet node and
//! registry, the agent and operator images built by `scripts/images/build.sh` and pushed there,
//! the operator running as a pod (installed by `guildnet-operator install`), the orchestrator
//! with `--backend kubernetes` on the node's address.
//!
//! - `PUT /orgs/acme/pool {size: 3}`: the orchestrator writes an AgentPool and its token Secret;
//!   the operator starts 3 warm agent pods, which wait on `POST /pool/wait` holding only the
//!   pool token;
//! - 20 tasks in 5 rounds of 4 at once: 3 of each round are handed to the warm agents over their
//!   open wait (the agent's log line says `[pool] warm start`), the 4th finds the pool exhausted
//!   and starts cold (`[pool] cold start` in its log); exactly one claim and one completion each;
//!   the used pods go with their tasks and the pool is back to 3 after each round;
//! - an image that cannot be pulled: the pool reports `ImageReady=False`, and a task still
//!   starts cold with the default image;
//! - the scale-down race: a task handed to a (frozen) warm agent while the pool scales down to
//!   0 keeps its pod; that agent then vanishing before its claim sends the task to a cold start
//!   well before the claim timeout, claimed and completed once;
//! - scale to zero after the idle time, and back up when a task comes;
//! - deleting the org removes its pool.
//!
//! Stand-in runner: `sh -s` (the task text is a shell script). Figures are printed as
//! `POOL-E2E <what> <value>` lines (`--nocapture`). The handoff under load (100 tasks, pool of
//! 10) is `guildnet-core/tests/pool_handoff.rs`, in-process.

mod common;

use guildnet_core::client::OrchestratorClient;
use guildnet_core::model::{Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::api::PoolSpec;
use guildnet_core::token::Secret as Token;
use guildnet_kube::backend::agenttask_name;
use guildnet_kube::crd::AgentTask;
use guildnet_kube::pool::{AgentPool, POOL_LABEL, POOL_STATE_LABEL};
use guildnet_testbed::images::build_and_push;
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::node::NodeOptions;
use guildnet_testbed::registry::Registry;
use guildnet_testbed::{eventually, process, Proc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "kube-pool-e2e-admin-token-0123456789";
const NS: &str = "mvp-agents";

fn figure(what: &str, value: impl std::fmt::Display) {
    println!("POOL-E2E {what} {value}");
}

fn acme() -> OrgName {
    OrgName::new("acme").expect("org")
}

fn spec(size: u32) -> PoolSpec {
    PoolSpec {
        size,
        image: None,
        runner: None,
        idle_seconds: None,
    }
}

/// Sends `sig` to the agent processes of `pod`, found on this host by the pod's cgroup (the
/// kubelet's cgroupfs driver names it `pod<uid>`); returns how many were signalled.
fn signal_pod_agent(pod: &Pod, sig: Signal) -> usize {
    let Some(uid) = pod.metadata.uid.as_deref() else {
        return 0;
    };
    let needle = format!("pod{uid}");
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if comm.trim() == "guildnet-agent" && cgroup.contains(&needle) {
            n += usize::from(nix::sys::signal::kill(Pid::from_raw(pid), sig).is_ok());
        }
    }
    n
}

struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("kube_pool_e2e: logs kept in {}", d.keep().display());
            }
        }
    }
}

async fn wait_task(c: &OrchestratorClient, id: &TaskId, what: &str, ok: fn(&Task) -> bool) -> Task {
    let start = Instant::now();
    loop {
        let t = c.task(id).await.expect("task");
        if ok(&t) {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "task {id} not {what}: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_lines(c: &OrchestratorClient, id: &TaskId) -> Vec<String> {
    c.logs(id, 0)
        .await
        .expect("logs")
        .into_iter()
        .map(|l| l.line)
        .collect()
}

async fn waiting(c: &OrchestratorClient) -> u32 {
    c.pool(&acme()).await.map(|p| p.waiting).unwrap_or(0)
}

/// The namespace's pods, events and logs, for a failure message.
async fn report(admin: &kube::Client) -> String {
    common::node::pods_report(admin, NS).await
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

#[tokio::test]
async fn a_warm_pool_of_three_serves_twenty_tasks_on_real_pods() {
    let t_all = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("gn-pool-e2e-")
        .tempdir()
        .expect("tempdir");
    let dirp = dir.path().to_owned();
    let _keep = KeepOnPanic(Some(dir));
    let registry = Registry::start().await.expect("registry");
    let tag = format!("pool-{}", std::process::id());
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
    .expect("scripts/images/build.sh");
    let agent_image = built.get("agent").expect("agent").clone();
    let operator_image = built.get("operator").expect("operator").clone();
    let cluster = KubeCluster::start_with_node(NodeOptions {
        insecure_registries: vec![registry.host().to_owned()],
        ..NodeOptions::default()
    })
    .await
    .expect("control plane + real node");
    let ip = cluster.node().expect("node").ip();
    let admin = cluster.client().await.expect("admin client");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    let pools: Api<AgentPool> = Api::namespaced(admin.clone(), NS);

    // The orchestrator, agents on Kubernetes.
    let state = dirp.join("state");
    std::fs::create_dir_all(state.join("kube")).expect("mkdir");
    std::fs::copy(cluster.kubeconfig_path(), state.join("kube/acme.config")).expect("kubeconfig");
    let port = std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://{ip}:{port}");
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
            &agent_image.reference,
            "--runner",
            "sh -s",
            "--agent-start-deadline-secs",
            "90",
        ],
        &[
            ("GUILDNET_STATE_DIR", state.as_os_str()),
            ("ORCHESTRATOR_TOKEN", OsStr::new(TOKEN)),
            ("RUST_LOG", OsStr::new("info")),
        ],
        &dirp.join("orchestrator.log"),
    )
    .expect("orchestrator");
    let c = OrchestratorClient::new(&url, Token::new(TOKEN)).expect("client");
    eventually("orchestrator ready", Duration::from_secs(30), || async {
        c.health().await.ok()
    })
    .await;

    // The operator as a pod, under its own ServiceAccount (the Role must allow pools and pods).
    let out = process::run(
        Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
        [
            OsStr::new("install"),
            OsStr::new("--kubeconfig"),
            cluster.kubeconfig_path().as_os_str(),
            OsStr::new("--image"),
            OsStr::new(&operator_image.reference),
            OsStr::new("--public-orchestrator-url"),
            OsStr::new(&url),
        ],
        &[],
    )
    .await
    .expect("guildnet-operator install");
    assert!(out.contains("installed"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let start = Instant::now();
    loop {
        let d = deployments
            .get_opt("guildnet-operator")
            .await
            .ok()
            .flatten();
        if d.and_then(|d| d.status?.available_replicas)
            .is_some_and(|n| n >= 1)
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            panic!(
                "operator not available after 120 s\n{}",
                report(&admin).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 0. One cold task first: the node pulls the agent image (the pool's pods then start from
    //    the cached image).
    let t0 = c.schedule(&acme(), "exit 0", None).await.expect("schedule");
    let t0 = wait_task(&c, &t0.id, "finished", |t| t.status.is_terminal()).await;
    assert_eq!(t0.status, TaskStatus::Succeeded, "{t0:?}");
    figure(
        "cold_image_pulled_claim_ms",
        ms((t0.started_at.expect("claimed") - t0.created_at)
            .to_std()
            .unwrap_or_default()),
    );

    // 1. The pool: 3 warm agents waiting on the orchestrator.
    let t = Instant::now();
    let st = c.set_pool(&acme(), &spec(3)).await.expect("set pool");
    assert_eq!(st.org, acme());
    let pool = pools.get("acme").await.expect("AgentPool acme");
    assert_eq!(pool.spec.size, 3);
    assert_eq!(
        pool.spec.image, agent_image.reference,
        "the default agent image"
    );
    let start = Instant::now();
    while waiting(&c).await < 3 {
        if start.elapsed() > Duration::from_secs(120) {
            panic!("pool not warm after 120 s\n{}", report(&admin).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figure(
        "pool_of_3_warm_s",
        format!("{:.1}", t.elapsed().as_secs_f64()),
    );
    // Warm pods hold the pool token (from its Secret) and no task credentials.
    let warm_pods = pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}=acme,{POOL_STATE_LABEL}=warm")))
        .await
        .expect("pool pods")
        .items;
    assert_eq!(warm_pods.len(), 3);
    for p in &warm_pods {
        let env = p.spec.as_ref().expect("spec").containers[0]
            .env
            .clone()
            .unwrap_or_default();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"GUILDNET_POOL_TOKEN"), "{names:?}");
        for forbidden in ["GUILDNET_AGENT_TOKEN", "TASK_ID", "CODE_SERVER_PASSWORD"] {
            assert!(!names.contains(&forbidden), "{forbidden} in a warm pod");
        }
        assert!(p.spec.as_ref().expect("spec").containers[0]
            .env_from
            .is_none());
    }

    // 2. 20 tasks, 5 rounds of 4 at once against the pool of 3.
    let mut all: Vec<TaskId> = Vec::new();
    let mut warm_claims = Vec::new();
    let mut cold_claims = Vec::new();
    let mut refills = Vec::new();
    for round in 0..5 {
        let start = Instant::now();
        while waiting(&c).await < 3 {
            if start.elapsed() > Duration::from_secs(120) {
                panic!(
                    "pool not back to 3 before round {round}\n{}",
                    report(&admin).await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if round > 0 {
            refills.push(start.elapsed());
        }
        let scheds = (0..4).map(|i| {
            let c = c.clone();
            async move {
                c.schedule(
                    &acme(),
                    &format!("echo round {round} task {i}; sleep 0.3"),
                    None,
                )
                .await
                .expect("schedule")
            }
        });
        let round_tasks = futures_util::future::join_all(scheds).await;
        let (mut warm, mut cold) = (0, 0);
        for t in &round_tasks {
            let done = wait_task(&c, &t.id, "finished", |t| t.status.is_terminal()).await;
            assert_eq!(
                done.status,
                TaskStatus::Succeeded,
                "{done:?}\n{}",
                report(&admin).await
            );
            assert_eq!(done.claims, 1, "{done:?}");
            let claim = (done.started_at.expect("claimed") - done.created_at)
                .to_std()
                .unwrap_or_default();
            let lines = log_lines(&c, &t.id).await;
            let is_warm = lines.iter().any(|l| l.contains("[pool] warm start"));
            let is_cold = lines.iter().any(|l| l.contains("[pool] cold start"));
            assert!(
                is_warm ^ is_cold,
                "the log says warm or cold, once: {lines:?}"
            );
            if is_warm {
                warm += 1;
                warm_claims.push(claim);
                // The AgentTask names the pod that took it.
                let at = tasks.get(&agenttask_name(&t.id)).await.expect("AgentTask");
                assert!(at.spec.pool_pod.is_some(), "{:?}", at.spec);
            } else {
                cold += 1;
                cold_claims.push(claim);
            }
            all.push(t.id.clone());
        }
        assert_eq!((warm, cold), (3, 1), "round {round}: 3 warm and 1 cold");
    }
    // Exactly one completion each (the audit log).
    let audit: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/audit?after=0&limit=10000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("audit json");
    for id in &all {
        let n = audit
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["action"] == "task.complete" && r["subject"] == id.as_str())
            .count();
        assert_eq!(n, 1, "completions of {id}");
    }
    warm_claims.sort();
    cold_claims.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    figure("warm_claims", warm_claims.len());
    figure("warm_claim_p50_ms", ms(pct(&warm_claims, 0.5)));
    figure("warm_claim_max_ms", ms(pct(&warm_claims, 1.0)));
    figure("cold_cached_claim_p50_ms", ms(pct(&cold_claims, 0.5)));
    if !refills.is_empty() {
        refills.sort();
        figure("pool_refill_p50_ms", ms(pct(&refills, 0.5)));
    }
    // The pool is back to 3 and the used pods are gone with their tasks.
    eventually(
        "pool back to 3, used pods gone",
        Duration::from_secs(120),
        || async {
            let st = c.pool(&acme()).await.ok()?;
            let b = st.backend?;
            let taken = pods
                .list(
                    &ListParams::default()
                        .labels(&format!("{POOL_LABEL}=acme,{POOL_STATE_LABEL}=taken")),
                )
                .await
                .ok()?
                .items;
            (st.waiting == 3 && b.warm == 3 && taken.is_empty()).then_some(())
        },
    )
    .await;
    assert_eq!(c.pool(&acme()).await.expect("pool").warm_starts, 15);

    // 2b. The scale-down race. The 3 waiting agents are frozen (SIGSTOP from the host), so a
    //     task handed to one stays handed and unclaimed: the pool then scales down to 0, and
    //     the operator must remove the two other warm pods but not the handed one (its
    //     AgentTask names it). Then the handed agent vanishes before claiming (its pod deleted
    //     at once): the task must start again, cold (a task is handed to a warm agent once),
    //     long before the 120 s claim timeout, and be claimed and completed once.
    let warm_pods = pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}=acme,{POOL_STATE_LABEL}=warm")))
        .await
        .expect("warm pods")
        .items;
    assert_eq!(warm_pods.len(), 3, "{}", report(&admin).await);
    for p in &warm_pods {
        let frozen = signal_pod_agent(p, Signal::SIGSTOP);
        assert!(
            frozen > 0,
            "no agent process found for pod {}",
            p.name_any()
        );
    }
    let raced = c
        .schedule(&acme(), "echo handed during a scale-down", None)
        .await
        .expect("schedule");
    let handed = eventually(
        "AgentTask names its pool pod",
        Duration::from_secs(30),
        || async {
            tasks
                .get_opt(&agenttask_name(&raced.id))
                .await
                .ok()??
                .spec
                .pool_pod
        },
    )
    .await;
    c.set_pool(&acme(), &spec(0)).await.expect("scale down");
    let others: Vec<String> = warm_pods
        .iter()
        .map(|p| p.name_any())
        .filter(|n| *n != handed)
        .collect();
    eventually(
        "the unhanded warm pods removed",
        Duration::from_secs(60),
        || async {
            for n in &others {
                if let Some(p) = pods.get_opt(n).await.ok()? {
                    p.metadata.deletion_timestamp.as_ref()?;
                }
            }
            Some(())
        },
    )
    .await;
    let kept = pods.get(&handed).await.expect("the handed pod is kept");
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "the scale-down removed the pod handed a task: {handed}"
    );
    let vanished = Instant::now();
    pods.delete(
        &handed,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete the handed pod");
    let done = wait_task(&c, &raced.id, "finished", |t| t.status.is_terminal()).await;
    assert_eq!(
        done.status,
        TaskStatus::Succeeded,
        "{done:?}\n{}",
        report(&admin).await
    );
    assert_eq!(done.claims, 1, "{done:?}");
    assert!(done.attempt >= 2, "started again: {done:?}");
    let restarted = vanished.elapsed();
    assert!(
        restarted < Duration::from_secs(60),
        "the vanished agent's task took {restarted:?} to finish (claim timeout 120 s)"
    );
    figure("vanished_handoff_finished_after_ms", ms(restarted));
    // The retry went cold on purpose (a task is handed warm once): the other warm agents were
    // going away too, and each would have used up an attempt.
    let lines = log_lines(&c, &raced.id).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[pool] cold start: an earlier attempt of this task was handed")),
        "{lines:?}"
    );
    let audit: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/audit?after=0&limit=10000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("audit json");
    let completions = audit
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["action"] == "task.complete" && r["subject"] == raced.id.as_str())
        .count();
    assert_eq!(completions, 1, "completions of {}", raced.id);

    // 3. An image that cannot be pulled: the pool says so, tasks start cold with the default.
    let bad = PoolSpec {
        image: Some(format!("{}/guildnet-agent:does-not-exist", registry.host())),
        ..spec(1)
    };
    c.set_pool(&acme(), &bad).await.expect("set pool");
    let cond = eventually("ImageReady=False", Duration::from_secs(90), || async {
        let b = c.pool(&acme()).await.ok()?.backend?;
        b.conditions
            .into_iter()
            .find(|c| c.starts_with("ImageReady=False"))
    })
    .await;
    figure("bad_image_condition", format!("{cond:?}"));
    eventually("old warm agents gone", Duration::from_secs(60), || async {
        (waiting(&c).await == 0).then_some(())
    })
    .await;
    let t = c.schedule(&acme(), "exit 0", None).await.expect("schedule");
    let t = wait_task(&c, &t.id, "finished", |t| t.status.is_terminal()).await;
    assert_eq!(t.status, TaskStatus::Succeeded, "{t:?}");
    assert!(log_lines(&c, &t.id)
        .await
        .iter()
        .any(|l| l.contains("[pool] cold start")));

    // 4. Scale to zero after 5 idle seconds; a task brings the pool back, and it stays up for
    //    the idle time after that task ends (long enough for its warm agents to register).
    let idle = PoolSpec {
        idle_seconds: Some(5),
        ..spec(2)
    };
    c.set_pool(&acme(), &idle).await.expect("set pool");
    eventually("pool of 2 warm", Duration::from_secs(90), || async {
        (waiting(&c).await == 2).then_some(())
    })
    .await;
    let t = Instant::now();
    eventually("scaled to zero", Duration::from_secs(60), || async {
        let b = c.pool(&acme()).await.ok()?.backend?;
        (b.scaled_to_zero && b.warm == 0 && waiting(&c).await == 0).then_some(())
    })
    .await;
    figure(
        "scaled_to_zero_after_s",
        format!("{:.1}", t.elapsed().as_secs_f64()),
    );
    let t = c.schedule(&acme(), "exit 0", None).await.expect("schedule");
    let t = wait_task(&c, &t.id, "finished", |t| t.status.is_terminal()).await;
    assert_eq!(t.status, TaskStatus::Succeeded);
    assert!(log_lines(&c, &t.id)
        .await
        .iter()
        .any(|l| l.contains("[pool] cold start")));
    eventually(
        "pool back up after a task",
        Duration::from_secs(90),
        || async {
            let b = c.pool(&acme()).await.ok()?.backend?;
            (!b.scaled_to_zero && waiting(&c).await == 2).then_some(())
        },
    )
    .await;

    // 5. Deleting the org removes its pool.
    eventually("no unfinished task", Duration::from_secs(60), || async {
        c.delete_org(&acme()).await.ok()
    })
    .await;
    eventually("AgentPool gone", Duration::from_secs(30), || async {
        pools.get_opt("acme").await.ok()?.is_none().then_some(())
    })
    .await;
    figure("total_s", format!("{:.1}", t_all.elapsed().as_secs_f64()));
}
