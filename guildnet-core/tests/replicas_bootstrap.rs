//! An org's bootstrap runs once cluster-wide: two orchestrator services (two replicas) on one
//! real PostgreSQL (the testbed's), each with its own bootstrapper. While replica A runs the
//! org's bootstrap, a start on B is refused (409 `bootstrap_running_elsewhere`); when A's job
//! ends, B may start it; when the replica holding it dies mid-run (its database session ends:
//! here the server terminates it, as the kernel closing a killed process's socket does), the
//! lock is handed over and A may run it again. Two bootstraps of one org never overlap.
//!
//! The bootstrapper is a stand-in that waits for the test to let it finish (no Talos nodes
//! here); the lock, the store and the database are real.

#![cfg(all(feature = "postgres", feature = "mocks"))]

use async_trait::async_trait;
use axum::http::StatusCode;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::bootstrap::OrgBootstrapRequest;
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::seams::{
    BootstrapError, BootstrapOutcome, BootstrapProgress, BootstrapRequest, ClusterBootstrap,
    MockClusterBackend,
};
use guildnet_core::store::PostgresStore;
use guildnet_core::token::Secret;
use guildnet_testbed::postgres::Postgres;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Counts runs, and how many of one org run at once across both replicas.
#[derive(Default)]
struct Runs {
    started: AtomicUsize,
    running: AtomicUsize,
    /// Per org: (running now, most ever running at once).
    per_org: Mutex<HashMap<String, (usize, usize)>>,
}

/// A bootstrap that runs until the test adds a permit to `finish`.
struct StandIn {
    runs: Arc<Runs>,
    finish: Arc<Semaphore>,
}

#[async_trait]
impl ClusterBootstrap for StandIn {
    async fn bootstrap(
        &self,
        request: BootstrapRequest,
        progress: tokio::sync::mpsc::UnboundedSender<BootstrapProgress>,
    ) -> Result<BootstrapOutcome, BootstrapError> {
        self.runs.started.fetch_add(1, Ordering::SeqCst);
        self.runs.running.fetch_add(1, Ordering::SeqCst);
        {
            let mut m = self.runs.per_org.lock().unwrap();
            let e = m.entry(request.org.to_string()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        let _ = progress.send(BootstrapProgress {
            step: "stand-in".into(),
            phase: "start".into(),
            message: String::new(),
        });
        let permit = self.finish.acquire().await;
        if let Some(e) = self
            .runs
            .per_org
            .lock()
            .unwrap()
            .get_mut(request.org.as_str())
        {
            e.0 -= 1;
        }
        self.runs.running.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
        Ok(BootstrapOutcome {
            kubeconfig: PathBuf::from(format!("/nonexistent/{}.kubeconfig", request.org)),
            talosconfig: PathBuf::from(format!("/nonexistent/{}.talosconfig", request.org)),
        })
    }

    fn validate(&self, _request: &BootstrapRequest) -> Result<(), BootstrapError> {
        Ok(())
    }

    async fn generate_kubeconfig(
        &self,
        _org: &OrgName,
        _endpoint: &str,
    ) -> Result<PathBuf, BootstrapError> {
        Err(BootstrapError::Invalid("not in this test".into()))
    }
}

async fn replica(url: &str, runs: &Arc<Runs>) -> (Orchestrator, Arc<Semaphore>) {
    let store = PostgresStore::connect(url).await.expect("connect");
    let mut backend = MockClusterBackend::new();
    backend.expect_name().return_const("mock");
    let cfg = OrchestratorConfig::new(Secret::new("admin"), "http://127.0.0.1:1");
    let finish = Arc::new(Semaphore::new(0));
    let o = Orchestrator::builder(Arc::new(store), Arc::new(backend), cfg)
        .bootstrap(Arc::new(StandIn {
            runs: runs.clone(),
            finish: finish.clone(),
        }))
        .build();
    (o, finish)
}

fn request(org: &OrgName) -> OrgBootstrapRequest {
    OrgBootstrapRequest {
        org: org.clone(),
        cp_nodes: vec!["10.0.0.1".into()],
        worker_nodes: vec![],
    }
}

async fn wait_finished(o: &Orchestrator, org: &OrgName) -> String {
    guildnet_testbed::eventually("the bootstrap to finish", Duration::from_secs(10), || {
        let st = o.bootstrap_status(org).ok().map(|s| s.state);
        async move { st.filter(|s| s != "running") }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_bootstrap_runs_once_across_replicas_and_is_handed_over_when_its_holder_dies() {
    let pg = Postgres::shared().await.expect(
        "the testbed's PostgreSQL must start (install it: scripts/testbed/install.sh postgres)",
    );
    let url = pg.fresh_database().await.unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let runs: Arc<Runs> = Arc::default();
    let (a, finish_a) = replica(&url, &runs).await;
    let (b, finish_b) = replica(&url, &runs).await;
    let acme = OrgName::new("acme").unwrap();
    a.create_org(acme.clone()).await.unwrap();

    // A runs it; B is refused while it runs; A itself says it is running here.
    let st = a.start_bootstrap(request(&acme)).await.expect("A starts");
    assert_eq!(st.state, "running");
    let e = b.start_bootstrap(request(&acme)).await.unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::CONFLICT, "bootstrap_running_elsewhere"),
        "{}",
        e.message
    );
    let e = a.start_bootstrap(request(&acme)).await.unwrap_err();
    assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "conflict"));
    // Another org is independent.
    let globex = OrgName::new("globex").unwrap();
    a.create_org(globex.clone()).await.unwrap();
    b.start_bootstrap(request(&globex))
        .await
        .expect("B bootstraps another org meanwhile");

    // A's job ends: B may run it now.
    finish_a.add_permits(1);
    assert_eq!(wait_finished(&a, &acme).await, "succeeded");
    let st = guildnet_testbed::eventually(
        "B starts once A's job ended",
        Duration::from_secs(10),
        || {
            let b = b.clone();
            let acme = acme.clone();
            async move { b.start_bootstrap(request(&acme)).await.ok() }
        },
    )
    .await;
    assert_eq!(st.state, "running");
    assert!(a.start_bootstrap(request(&acme)).await.is_err());

    // B "dies" mid-run: its sessions holding locks end. A may run it again.
    let ended = pg
        .psql(
            &db,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await
        .unwrap();
    assert_ne!(ended.trim(), "0", "the holder's sessions ended");
    // B's stand-in jobs outlive its "death" in this process (a killed process's would not):
    // let them end before A takes over, so that the overlap count below stays meaningful.
    let running_before = runs.running.load(Ordering::SeqCst);
    finish_b.add_permits(2);
    guildnet_testbed::eventually("B's jobs end", Duration::from_secs(10), || {
        let n = runs.running.load(Ordering::SeqCst);
        async move { (n == 0).then_some(()) }
    })
    .await;
    assert_eq!(running_before, 2, "acme on B and globex on B were running");
    let st = guildnet_testbed::eventually(
        "A takes the bootstrap over",
        Duration::from_secs(10),
        || {
            let a = a.clone();
            let acme = acme.clone();
            async move { a.start_bootstrap(request(&acme)).await.ok() }
        },
    )
    .await;
    assert_eq!(st.state, "running");
    finish_a.add_permits(1);
    assert_eq!(wait_finished(&a, &acme).await, "succeeded");
    // acme ran on A, on B, on A; globex on B: 4 runs, never two of one org at once.
    assert_eq!(runs.started.load(Ordering::SeqCst), 4);
    let per_org = runs.per_org.lock().unwrap().clone();
    assert_eq!(per_org.get("acme").map(|e| e.1), Some(1), "{per_org:?}");
    assert_eq!(per_org.get("globex").map(|e| e.1), Some(1), "{per_org:?}");
}
