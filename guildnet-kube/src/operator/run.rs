//! Running the operator: leader election around the controllers, the watch caches (reflectors)
//! each controller run reads from, and the two controllers (AgentTask and AgentPool). This
//! module wires things together; it must not decide what a reconcile does.

use super::{pool, reconcile, Caches, Context, Operator};
use crate::crd::AgentTask;
use crate::pool::{AgentPool, POOL_LABEL};
use crate::MANAGED_BY;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Shut down as asked.
    Stopped,
    /// Another replica took the lease: exit (and be restarted) rather than reconcile alongside it.
    LostLeadership,
}

/// Runs the operator until `shutdown` resolves (or, with leader election, until another replica
/// takes the lease).
pub async fn run(
    op: Arc<Operator>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> RunOutcome {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let Some(lease_cfg) = op.cfg.leader_election.clone() else {
        run_controllers(&op, stopped(stop_rx)).await;
        return RunOutcome::Stopped;
    };
    let leases: Api<Lease> = Api::namespaced(op.client.clone(), &lease_cfg.namespace);
    tokio::select! {
        _ = crate::leader::acquire(&leases, &lease_cfg) => {}
        _ = stopped(stop_rx.clone()) => return RunOutcome::Stopped,
    }
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
    let (l2, c2) = (leases.clone(), lease_cfg.clone());
    let holder = tokio::spawn(async move {
        crate::leader::hold(&l2, &c2).await;
        let _ = lost_tx.send(true);
    });
    let mut rx_stop = stop_rx.clone();
    let mut rx_lost = lost_rx.clone();
    run_controllers(&op, async move {
        tokio::select! {
            _ = rx_stop.wait_for(|v| *v) => {}
            _ = rx_lost.wait_for(|v| *v) => {}
        }
    })
    .await;
    holder.abort();
    if *lost_rx.borrow() {
        return RunOutcome::LostLeadership;
    }
    crate::leader::release(&leases, &lease_cfg).await;
    RunOutcome::Stopped
}

/// Starts the reflectors of the children and the namespace's Secrets; returns their stores and
/// the tasks that feed them (abort them when the controllers stop).
fn start_caches(
    op: &Operator,
    owned: &watcher::Config,
) -> (Caches, Vec<tokio::task::JoinHandle<()>>) {
    let ns = &op.cfg.namespace;
    let c = &op.client;
    let (deployments, wd) = reflector::store();
    let (services, ws) = reflector::store();
    let (secrets, wsec) = reflector::store();
    let tasks = vec![
        tokio::spawn(drain(
            watcher(Api::<Deployment>::namespaced(c.clone(), ns), owned.clone())
                .default_backoff()
                .modify(|o| o.managed_fields_mut().clear())
                .reflect(wd),
        )),
        tokio::spawn(drain(
            watcher(Api::<Service>::namespaced(c.clone(), ns), owned.clone())
                .default_backoff()
                .modify(|o| o.managed_fields_mut().clear())
                .reflect(ws),
        )),
        tokio::spawn(drain(
            watcher(
                Api::<Secret>::namespaced(c.clone(), ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(|o| o.managed_fields_mut().clear())
            .reflect(wsec),
        )),
    ];
    let caches = Caches {
        deployments,
        services,
        secrets,
    };
    (caches, tasks)
}

async fn run_controllers(
    op: &Operator,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = op.cfg.namespace.clone();
    let tasks: Api<AgentTask> = Api::namespaced(op.client.clone(), &ns);
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let (caches, feeders) = start_caches(op, &owned);
    let ready = async {
        let _ = caches.deployments.wait_until_ready().await;
        let _ = caches.services.wait_until_ready().await;
        let _ = caches.secrets.wait_until_ready().await;
    };
    if tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .is_err()
    {
        tracing::warn!("watch caches not ready after 60 s; reconciling without them");
    }
    let ctx = Arc::new(Context::new(op, caches));
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let pools = tokio::spawn(run_pool_controller(ctx.clone(), shutdown.clone()));
    Controller::new(tasks, watcher::Config::default())
        // Bounded: each reconcile in flight holds request and response buffers; unbounded, a
        // thousand new AgentTasks meant a thousand at once (memory peak, API server overload).
        .with_config(controller::Config::default().concurrency(ctx.cfg.concurrency))
        .owns(
            Api::<Deployment>::namespaced(ctx.client.clone(), &ns),
            owned.clone(),
        )
        .owns(Api::<Service>::namespaced(ctx.client.clone(), &ns), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(agenttask = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    let _ = pools.await;
    for f in feeders {
        f.abort();
    }
}

/// The AgentPool controller: reconciles each org's pool when it changes, when one of its pods
/// changes (also when a pod is adopted by a task), and when an AgentTask of its org changes (a
/// new task ends an idle period).
async fn run_pool_controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = ctx.cfg.namespace.clone();
    let c = &ctx.client;
    let ns2 = ns.clone();
    let ns3 = ns.clone();
    Controller::new(
        Api::<AgentPool>::namespaced(c.clone(), &ns),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().concurrency(4))
    .watches(
        Api::<Pod>::namespaced(c.clone(), &ns),
        watcher::Config::default().labels(POOL_LABEL),
        move |pod| {
            pod.labels()
                .get(POOL_LABEL)
                .map(|org| ObjectRef::<AgentPool>::new(org).within(&ns2))
        },
    )
    .watches(
        Api::<AgentTask>::namespaced(c.clone(), &ns),
        watcher::Config::default(),
        move |at| Some(ObjectRef::<AgentPool>::new(&at.spec.org_id).within(&ns3)),
    )
    .graceful_shutdown_on(shutdown)
    .run(pool::reconcile_pool, pool::error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(agentpool = %obj.name, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "pool reconcile error"),
        }
    })
    .await;
}

async fn drain<S: futures_util::Stream + Send>(s: S) {
    futures_util::pin_mut!(s);
    while let Some(_event) = s.next().await {}
}
