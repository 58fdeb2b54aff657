//! Three mocks of the `mocks` feature, used the way a downstream crate testing offline would:
//! each stands in for one seam while the real code of guildnet-core runs around it (the
//! orchestrator's HTTP API on a loopback port, driven through the real `OrchestratorClient`).
//!
//! - `MockClusterBackend`: the cluster. A scheduled task is submitted to it, and cancelling the
//!   task stops the agent it was given.
//! - `MockStateStore`: the database, failing. The API answers 503 `store_unavailable` without
//!   the database's address, and maps the store's "already exists" to 409.
//! - `MockClusterBootstrap`: the Talos bootstrap. A bad request is refused with 422 naming the
//!   field before any work; a good one runs as a job whose result the API reports.
//!
//! Run: `cargo test -p guildnet-core --features mocks --test mocks_downstream`.
#![cfg(feature = "mocks")]

use guildnet_core::api::OrgBootstrapRequest;
use guildnet_core::client::{ClientError, OrchestratorClient};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::orchestrator::{serve, Orchestrator, OrchestratorConfig};
use guildnet_core::seams::{
    AgentLaunch, BootstrapError, BootstrapOutcome, BootstrapProgress, ClusterBackend,
    ClusterBootstrap, MockClusterBackend, MockClusterBootstrap, WorkloadState,
};
use guildnet_core::store::{Durability, MockStateStore, SqliteStore, StateStore, StoreError};
use guildnet_core::token::Secret;
use mockall::predicate::eq;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const ADMIN: &str = "admin-token-mocks-downstream";

/// The real orchestrator over `store` and `backend`, serving on a loopback port until dropped.
struct Served {
    client: OrchestratorClient,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve_orchestrator(
    store: Arc<dyn StateStore>,
    backend: Arc<dyn ClusterBackend>,
    bootstrap: Option<Arc<dyn ClusterBootstrap>>,
) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = OrchestratorConfig::new(Secret::new(ADMIN), url.clone());
    cfg.submit_retry = Duration::from_millis(100);
    let mut o = Orchestrator::builder(store, backend, cfg);
    if let Some(b) = bootstrap {
        o = o.bootstrap(b);
    }
    let o = o.build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, o, async move {
        let _ = stopped.await;
    }));
    Served {
        client: OrchestratorClient::new(&url, Secret::new(ADMIN)).unwrap(),
        _stop: stop,
    }
}

async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
    let path = dir.path().join("orchestrator.db");
    let s = tokio::task::spawn_blocking(move || SqliteStore::open(path, Durability::Normal))
        .await
        .unwrap()
        .unwrap();
    Arc::new(s)
}

/// A backend that runs nothing: the orchestrator never calls it for a task here.
fn idle_backend() -> MockClusterBackend {
    let mut b = MockClusterBackend::new();
    b.expect_name().return_const("mock");
    b.expect_submit().times(0);
    b
}

fn api_error(e: ClientError) -> (u16, String, String, Option<String>) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
            field,
        } => (status, code, message, field),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn mock_cluster_backend_receives_the_submit_and_the_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let (launches_tx, mut launches) = mpsc::unbounded_channel::<AgentLaunch>();
    let (cancels_tx, mut cancels) = mpsc::unbounded_channel::<(OrgName, TaskId, AgentName)>();
    let mut backend = MockClusterBackend::new();
    backend.expect_name().return_const("mock");
    backend.expect_submit().times(1).returning(move |launch| {
        launches_tx.send(launch).unwrap();
        Ok(())
    });
    backend
        .expect_status()
        .returning(|_, _, _| Ok(WorkloadState::Running));
    backend.expect_describe().returning(|_, _, _| Ok(None));
    backend.expect_close_editor().returning(|_, _| Ok(false));
    backend
        .expect_cancel()
        .times(1)
        .returning(move |org, task, agent| {
            cancels_tx
                .send((org.clone(), task.clone(), agent.clone()))
                .unwrap();
            Ok(())
        });
    let s = serve_orchestrator(sqlite(&dir).await, Arc::new(backend), None).await;

    let org = OrgName::new("acme").unwrap();
    s.client.create_org(&org).await.unwrap();
    let task = s
        .client
        .schedule(&org, "Add a CONTRIBUTING.md", None)
        .await
        .unwrap();
    let launch = tokio::time::timeout(Duration::from_secs(10), launches.recv())
        .await
        .expect("no submit within 10 s")
        .unwrap();
    assert_eq!(launch.task_id, task.id);
    assert_eq!(launch.org, org);
    assert_eq!(launch.task, "Add a CONTRIBUTING.md");
    assert_eq!(launch.attempt, 1);
    assert!(
        launch.orchestrator_url.starts_with("http://127.0.0.1:"),
        "{}",
        launch.orchestrator_url
    );

    let cancelled = s.client.cancel(&task.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    let (c_org, c_task, c_agent) = tokio::time::timeout(Duration::from_secs(10), cancels.recv())
        .await
        .expect("the backend was not asked to stop the agent")
        .unwrap();
    assert_eq!(
        (c_org, c_task, c_agent),
        (org, task.id.clone(), launch.agent)
    );
    assert_eq!(
        s.client.task(&task.id).await.unwrap().status,
        TaskStatus::Cancelled
    );
}

#[tokio::test]
async fn mock_state_store_failures_become_clear_api_errors() {
    let mut store = MockStateStore::new();
    store.expect_external_changes().returning(|| None);
    store.expect_list_orgs().returning(|| {
        Err(StoreError::Unavailable {
            op: "list orgs",
            db: "db.internal:5432/guildnet".into(),
            reason: "connection refused".into(),
        })
    });
    store.expect_get_org().returning(|_| Ok(None));
    store
        .expect_create_org()
        .withf(|name, _| name.as_str() == "acme")
        .returning(|name, _| Err(StoreError::AlreadyExists(format!("org {name}"))));
    let s = serve_orchestrator(Arc::new(store), Arc::new(idle_backend()), None).await;

    let (status, code, message, _) = api_error(s.client.orgs().await.unwrap_err());
    assert_eq!((status, code.as_str()), (503, "store_unavailable"));
    assert!(message.contains("retry"), "{message}");
    assert!(
        !message.contains("db.internal"),
        "the database's address leaked: {message}"
    );

    let org = OrgName::new("acme").unwrap();
    let (status, code, message, _) = api_error(s.client.create_org(&org).await.unwrap_err());
    assert_eq!(
        (status, code.as_str()),
        (409, "already_exists"),
        "{message}"
    );
    assert!(message.contains("acme"), "{message}");
}

#[tokio::test]
async fn mock_cluster_bootstrap_runs_as_a_job_behind_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kube/acme.config");
    let talosconfig = dir.path().join("talos/acme.talosconfig");
    let mut b = MockClusterBootstrap::new();
    b.expect_validate().returning(|r| {
        if r.control_plane.is_empty() {
            Err(BootstrapError::Invalid(
                "control_plane: at least one control-plane node".into(),
            ))
        } else {
            Ok(())
        }
    });
    let (kc, tc) = (kubeconfig.clone(), talosconfig.clone());
    b.expect_bootstrap()
        .withf(|r, _| r.org.as_str() == "acme" && r.control_plane == ["10.5.0.2"])
        .times(1)
        .returning(move |_, progress| {
            for step in ["gen-config", "apply-config", "bootstrap", "kubeconfig"] {
                let _ = progress.send(BootstrapProgress {
                    step: step.into(),
                    phase: "done".into(),
                    message: String::new(),
                });
            }
            Ok(BootstrapOutcome {
                kubeconfig: kc.clone(),
                talosconfig: tc.clone(),
            })
        });
    let kc = kubeconfig.clone();
    b.expect_generate_kubeconfig()
        .with(eq(OrgName::new("acme").unwrap()), eq("10.5.0.2"))
        .times(1)
        .returning(move |_, _| Ok(kc.clone()));
    let s = serve_orchestrator(
        sqlite(&dir).await,
        Arc::new(idle_backend()),
        Some(Arc::new(b)),
    )
    .await;
    let org = OrgName::new("acme").unwrap();
    s.client.create_org(&org).await.unwrap();

    // Checked before any work: 422 naming the API's field.
    let bad = OrgBootstrapRequest {
        org: org.clone(),
        cp_nodes: vec![],
        worker_nodes: vec![],
    };
    let (status, code, _, field) = api_error(s.client.start_bootstrap(&bad).await.unwrap_err());
    assert_eq!(status, 422, "{code}");
    assert_eq!(field.as_deref(), Some("cpNodes"));

    let started = s
        .client
        .start_bootstrap(&OrgBootstrapRequest {
            org: org.clone(),
            cp_nodes: vec!["10.5.0.2".into()],
            worker_nodes: vec![],
        })
        .await
        .unwrap();
    assert_eq!(started.org, org);
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let st = s.client.bootstrap_status(&org).await.unwrap();
            if st.state != "running" {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the bootstrap job did not finish");
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    let result = done.result.unwrap();
    assert_eq!(
        PathBuf::from(result["kubeconfig"].as_str().unwrap()),
        kubeconfig
    );

    let generated = s
        .client
        .generate_kubeconfig(&org, "10.5.0.2")
        .await
        .unwrap();
    assert_eq!(PathBuf::from(generated.path), kubeconfig);
}
