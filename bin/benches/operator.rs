//! Operator benchmark on the testbed's real control plane (etcd, kube-apiserver,
//! controller-manager, scheduler, kwok):
//!
//! 1. The operator (`guildnet-operator run`, a separate process) turns N AgentTasks into 3N
//!    children (Secret, Deployment, Service) and brings them to Running (Deployments available
//!    on kwok nodes). Its peak RSS is read from /proc.
//! 2. A bare kube-rs client creates the same 3N objects directly, with the same concurrency.
//!
//! Prints the times and the ratio (target: operator <= 1.5x bare; RSS < 64 MB).
//! `cargo bench -p guildnet-bin --bench operator [-- --tasks N]` (default 1000).

use futures_util::{stream, StreamExt};
use guildnet_kube::crd::{AgentTask, Phase};
use guildnet_testbed::kube::KubeCluster;
use guildnet_testbed::{free_port, Proc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 16;
const NS: &str = "mvp-agents";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rss_peak_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn count<K>(api: &Api<K>, labels: &str) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut n = 0;
    let mut lp = ListParams::default().labels(labels).limit(500);
    loop {
        let Ok(page) = api.list_metadata(&lp).await else {
            return n;
        };
        n += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return n,
        }
    }
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--tasks").and_then(|v| v.parse().ok()).unwrap_or(1000);
    println!("GuildNet operator benchmark: {n} AgentTasks, concurrency {CONCURRENCY}");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut cluster = KubeCluster::start_with_workloads()
        .await
        .expect("control plane");
    for i in 1..n.div_ceil(100).max(1) {
        cluster
            .add_node(&format!("kwok-node-{i}"))
            .await
            .expect("node");
    }
    let admin = cluster.client().await.expect("client");
    guildnet_kube::install::install(&admin, &Default::default())
        .await
        .expect("install");
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = Proc::spawn(
        "guildnet-operator",
        Path::new(env!("CARGO_BIN_EXE_guildnet-operator")),
        [
            "run".to_owned(),
            "--kubeconfig".to_owned(),
            cluster.kubeconfig_path().display().to_string(),
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{}", free_port().expect("port")),
            "--public-orchestrator-url".to_owned(),
            "http://orchestrator.bench:8080".to_owned(),
        ],
        &[("RUST_LOG", OsStr::new("warn"))],
        &dir.path().join("operator.log"),
    )
    .expect("operator");

    // 1. Operator: AgentTasks (+ their credentials) in, Running out.
    let pp = PatchParams::apply("bench").force();
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(CONCURRENCY, |i| {
            let (tasks, secrets, pp) = (tasks.clone(), secrets.clone(), pp.clone());
            async move {
                let name = format!("atask-b{i}");
                let at = json!({
                    "apiVersion": "guildnet.io/v1alpha1", "kind": "AgentTask",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"orgId": "bench", "taskId": format!("b{i}"), "task": "bench",
                             "image": "example.invalid/agent:1", "agentName": format!("b{i}-a1")},
                });
                tasks
                    .patch(&name, &pp, &Patch::Apply(&at))
                    .await
                    .expect("AgentTask");
                let s = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("{name}-credentials"), "namespace": NS},
                    "stringData": {"agent-token": "t", "code-server-password": "p"},
                });
                secrets
                    .patch(&format!("{name}-credentials"), &pp, &Patch::Apply(&s))
                    .await
                    .expect("credentials");
            }
        })
        .await;
    let submitted = start.elapsed();
    let deps: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let managed = "app.kubernetes.io/managed-by=guildnet,guildnet.io/agenttask";
    let mut children_at = None;
    let running_at = loop {
        if children_at.is_none() {
            let (d, s, e) = (
                count(&deps, managed).await,
                count(&services, managed).await,
                count(&secrets, managed).await,
            );
            if d >= n && s >= n && e >= n {
                children_at = Some(start.elapsed());
            }
        }
        if children_at.is_some() {
            let running = tasks
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|t| t.status.as_ref().is_some_and(|s| s.phase == Phase::Running))
                        .count()
                })
                .unwrap_or(0);
            if running >= n {
                break start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "operator too slow"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let children_at = children_at.unwrap_or(running_at);
    let rss = rss_peak_kb(operator.pid()).unwrap_or(0);
    drop(operator);

    // 2. Bare client: the same 3N objects, created directly.
    let bare_ns = "bare";
    Api::<Namespace>::all(admin.clone())
        .patch(
            bare_ns,
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": bare_ns}}),
            ),
        )
        .await
        .expect("namespace");
    let bdeps: Api<Deployment> = Api::namespaced(admin.clone(), bare_ns);
    let bsvcs: Api<Service> = Api::namespaced(admin.clone(), bare_ns);
    let bsecrets: Api<Secret> = Api::namespaced(admin.clone(), bare_ns);
    let start = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(CONCURRENCY, |i| {
            let (bdeps, bsvcs, bsecrets, pp) =
                (bdeps.clone(), bsvcs.clone(), bsecrets.clone(), pp.clone());
            async move {
                let name = format!("bare-{i}");
                let labels = json!({"app": name});
                let s = json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("{name}-env"), "namespace": bare_ns},
                    "stringData": {"GUILDNET_AGENT_TOKEN": "t"}});
                bsecrets.patch(&format!("{name}-env"), &pp, &Patch::Apply(&s)).await.expect("secret");
                let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": bare_ns},
                    "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels},
                            "spec": {"containers": [{"name": "agent", "image": "example.invalid/agent:1",
                                "envFrom": [{"secretRef": {"name": format!("{name}-env")}}]}]}}}});
                bdeps.patch(&name, &pp, &Patch::Apply(&d)).await.expect("deployment");
                let v = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": bare_ns},
                    "spec": {"selector": labels, "ports": [{"port": 8443}]}});
                bsvcs.patch(&name, &pp, &Patch::Apply(&v)).await.expect("service");
            }
        })
        .await;
    let bare = start.elapsed();

    let ratio = children_at.as_secs_f64() / bare.as_secs_f64();
    println!(
        "{:<52} {:>9.2} s",
        "AgentTasks + credentials submitted",
        submitted.as_secs_f64()
    );
    println!(
        "{:<52} {:>9.2} s",
        "operator: all 3N children exist",
        children_at.as_secs_f64()
    );
    println!(
        "{:<52} {:>9.2} s",
        "operator: all AgentTasks Running",
        running_at.as_secs_f64()
    );
    println!(
        "{:<52} {:>9.2} s",
        "bare kube-rs client: 3N objects created",
        bare.as_secs_f64()
    );
    println!(
        "{:<52} {:>9.2}   target <= 1.5 ({})",
        "ratio operator children / bare",
        ratio,
        if ratio <= 1.5 { "meets" } else { "MISSES" }
    );
    println!(
        "{:<52} {:>9.1} MB target < 64 MB ({})",
        "operator peak RSS (VmHWM)",
        rss as f64 / 1024.0,
        if rss < 64 * 1024 { "meets" } else { "MISSES" }
    );
}
