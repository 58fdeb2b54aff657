//! Chaos for the operator on a real kube-apiserver (testbed): AgentTasks are applied while the
//! operator is crashed (its task aborted mid-reconcile) and restarted twice, and some specs are
//! changed while it is down. In the end every AgentTask has exactly its Secret `<name>-env`,
//! Deployment `<name>` and Service `<name>`, owned by it and carrying its latest spec; no child
//! exists without its AgentTask; nothing is duplicated.
//!
//! `GUILDNET_CHAOS_TASKS` sets the number of AgentTasks (default 500).

use futures_util::{stream, StreamExt};
use guildnet_kube::crd::AgentTask;
use guildnet_kube::install::{install, InstallOptions};
use guildnet_kube::operator::{self, Operator, OperatorConfig};
use guildnet_kube::TASK_LABEL;
use guildnet_testbed::kube::KubeCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "mvp-agents";
const CONCURRENCY: usize = 16;
const MANAGED: &str = "app.kubernetes.io/managed-by=guildnet";

fn start(client: kube::Client) -> tokio::task::JoinHandle<operator::RunOutcome> {
    let mut cfg = OperatorConfig::new(NS);
    cfg.public_orchestrator_url = Some("http://orchestrator.chaos:8080".into());
    cfg.error_backoff = Duration::from_millis(200);
    let ctx = Arc::new(Operator::new(client, cfg));
    tokio::spawn(operator::run(ctx, std::future::pending()))
}

fn agent_task(i: usize, level: &str) -> serde_json::Value {
    json!({
        "apiVersion": "guildnet.io/v1alpha1", "kind": "AgentTask",
        "metadata": {"name": format!("atask-c{i}"), "namespace": NS},
        "spec": {"orgId": "chaos", "taskId": format!("c{i}"), "task": "chaos",
                 "image": "example.invalid/agent:1", "agentName": format!("c{i}-a1"),
                 "env": {"LEVEL": level}},
    })
}

async fn apply(admin: &kube::Client, range: std::ops::Range<usize>, level: &'static str) {
    let pp = PatchParams::apply("chaos").force();
    let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    stream::iter(range)
        .for_each_concurrent(CONCURRENCY, |i| {
            let (tasks, secrets, pp) = (tasks.clone(), secrets.clone(), pp.clone());
            async move {
                let name = format!("atask-c{i}");
                tasks
                    .patch(&name, &pp, &Patch::Apply(agent_task(i, level)))
                    .await
                    .expect("apply AgentTask");
                let s = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("{name}-credentials"), "namespace": NS},
                    "stringData": {"agent-token": format!("gnt.c{i}.secret"), "code-server-password": "pw"},
                });
                secrets
                    .patch(&format!("{name}-credentials"), &pp, &Patch::Apply(&s))
                    .await
                    .expect("apply credentials");
            }
        })
        .await;
}

async fn list_all<K>(api: &Api<K>, labels: &str) -> Vec<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut lp = ListParams::default().labels(labels).limit(500);
    loop {
        let page = api.list(&lp).await.expect("list");
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return out,
        }
    }
}

/// Problems with the children of `tasks` (empty when converged).
fn problems(
    tasks: &[AgentTask],
    deps: &[Deployment],
    svcs: &[Service],
    secrets: &[Secret],
    levels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let owners: BTreeMap<String, String> = tasks
        .iter()
        .map(|t| (t.name_any(), t.uid().unwrap_or_default()))
        .collect();
    let workload = |t: &AgentTask| {
        t.status
            .as_ref()
            .and_then(|s| s.workload_name.clone())
            .unwrap_or_else(|| t.name_any())
    };
    let workloads: BTreeMap<String, String> =
        tasks.iter().map(|t| (workload(t), t.name_any())).collect();
    // Every child: a known workload's, owned by its AgentTask, named as expected, once.
    let mut check_kind = |kind: &str, children: Vec<(String, &kube::api::ObjectMeta)>| {
        let mut seen = BTreeSet::new();
        for (expected_suffix, meta) in children {
            let name = meta.name.clone().unwrap_or_default();
            let label = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(TASK_LABEL))
                .cloned()
                .unwrap_or_default();
            let Some(task) = workloads.get(&label) else {
                out.push(format!("orphan {kind} {name} (label {label})"));
                continue;
            };
            if name != format!("{label}{expected_suffix}") {
                out.push(format!("{kind} {name} is not the child of {label}"));
            }
            let owner_ok = meta.owner_references.as_ref().is_some_and(|o| {
                o.iter()
                    .any(|r| r.kind == "AgentTask" && Some(&r.uid) == owners.get(task))
            });
            if !owner_ok {
                out.push(format!("{kind} {name} not owned by AgentTask {task}"));
            }
            if !seen.insert(label.clone()) {
                out.push(format!("duplicate {kind} for {label}"));
            }
        }
        for w in workloads.keys() {
            if !seen.contains(w) {
                out.push(format!("missing {kind} for {w}"));
            }
        }
    };
    check_kind(
        "Deployment",
        deps.iter().map(|d| (String::new(), &d.metadata)).collect(),
    );
    check_kind(
        "Service",
        svcs.iter().map(|s| (String::new(), &s.metadata)).collect(),
    );
    check_kind(
        "Secret",
        secrets
            .iter()
            .map(|s| ("-env".to_owned(), &s.metadata))
            .collect(),
    );
    // The latest spec reached every Deployment.
    for d in deps {
        let name = d.name_any();
        let Some(task) = workloads.get(&name) else {
            continue;
        };
        let want = levels.get(task).map(String::as_str).unwrap_or("1");
        let level = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.env.as_ref())
            .and_then(|e| e.iter().find(|v| v.name == "LEVEL"))
            .and_then(|v| v.value.clone())
            .unwrap_or_default();
        if level != want {
            out.push(format!("Deployment {name} has LEVEL={level}, want {want}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restarts_during_reconciles_converge_without_orphans_or_duplicates() {
    let n: usize = std::env::var("GUILDNET_CHAOS_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let started = Instant::now();
    let cluster = KubeCluster::start().await.expect("kube-apiserver");
    let admin = cluster.client().await.expect("admin client");
    install(&admin, &InstallOptions::default())
        .await
        .expect("install");

    // First third with the operator up; crash it mid-flight (abort: no graceful stop).
    let op = start(admin.clone());
    apply(&admin, 0..n / 3, "1").await;
    op.abort();
    let _ = op.await;
    // While it is down: more tasks, and changed specs for some it already reconciled.
    apply(&admin, n / 3..n / 2, "1").await;
    apply(&admin, 0..n / 10, "2").await;
    let op = start(admin.clone());
    apply(&admin, n / 2..(2 * n) / 3, "1").await;
    // Second crash, right in the middle of the next batch.
    let rest = {
        let admin = admin.clone();
        tokio::spawn(async move { apply(&admin, (2 * n) / 3..n, "1").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    op.abort();
    let _ = op.await;
    rest.await.expect("apply rest");
    apply(&admin, n / 10..n / 5, "3").await;
    let op = start(admin.clone());
    let applied_at = started.elapsed();

    let mut levels = BTreeMap::new();
    for i in 0..n {
        let l = if i < n / 10 {
            "2"
        } else if i < n / 5 {
            "3"
        } else {
            "1"
        };
        levels.insert(format!("atask-c{i}"), l.to_owned());
    }
    let tasks_api: Api<AgentTask> = Api::namespaced(admin.clone(), NS);
    let deps: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let svcs: Api<Service> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let child_labels = format!("{MANAGED},{TASK_LABEL}");
    let deadline = Instant::now() + Duration::from_secs(150);
    let last = loop {
        let tasks = list_all(&tasks_api, "").await;
        let d = list_all(&deps, &child_labels).await;
        let s = list_all(&svcs, &child_labels).await;
        let e = list_all(&secrets, &child_labels).await;
        assert_eq!(tasks.len(), n);
        let p = problems(&tasks, &d, &s, &e, &levels);
        if p.is_empty() {
            break None;
        }
        if Instant::now() > deadline {
            break Some(p);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    op.abort();
    if let Some(p) = last {
        panic!(
            "not converged after {:?}: {} problems, first: {:?}",
            started.elapsed(),
            p.len(),
            &p[..p.len().min(20)]
        );
    }
    eprintln!(
        "operator chaos: {n} AgentTasks, 2 crashes, applied after {:.1} s, converged after {:.1} s",
        applied_at.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
