//! The editor proxy as its own part beside the service: built from constructor arguments, it
//! asks the service where an editor is and forgets the editors of agents that ended, also when
//! more agents ended than the service's announcement buffer holds. Real SQLite store, a mocked
//! cluster backend, a loopback stand-in for code-server, the router driven in-process.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::orchestrator::api::{EditorRequest, RegisterRequest, ScheduleRequest};
use guildnet_core::orchestrator::http::router;
use guildnet_core::orchestrator::{App, EditorProxyConfig, Orchestrator, OrchestratorConfig};
use guildnet_core::seams::{AgentLaunch, EditorEndpoint, MockClusterBackend, WorkloadState};
use guildnet_core::store::{Durability, SqliteStore};
use guildnet_core::token::Secret;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower::ServiceExt;

const ADMIN: &str = "admin";
const WAIT: Duration = Duration::from_secs(20);

/// An orchestrator whose backend says every editor is the stand-in at `editor_port`.
fn orchestrator(
    dir: &tempfile::TempDir,
    editor_port: u16,
) -> (Orchestrator, mpsc::UnboundedReceiver<AgentLaunch>) {
    let store = SqliteStore::open(dir.path().join("guildnet.db"), Durability::Normal).unwrap();
    let (tx, launches) = mpsc::unbounded_channel();
    let mut mock = MockClusterBackend::new();
    mock.expect_name().return_const("mock");
    mock.expect_task_finished().returning(|_| Ok(()));
    mock.expect_describe().returning(|_, _, _| Ok(None));
    mock.expect_submit().returning(move |launch| {
        let _ = tx.send(launch);
        Ok(())
    });
    mock.expect_cancel().returning(|_, _, _| Ok(()));
    mock.expect_status()
        .returning(|_, _, _| Ok(WorkloadState::Running));
    mock.expect_editor_endpoint().returning(move |_, _| {
        Ok(Some(EditorEndpoint {
            host: "127.0.0.1".into(),
            port: editor_port,
            password: None,
            via_tailnet: false,
            held_by: None,
        }))
    });
    mock.expect_close_editor().returning(|_, _| Ok(false));
    let o = Orchestrator::new(
        Arc::new(store),
        Arc::new(mock),
        OrchestratorConfig::new(Secret::new(ADMIN), "http://127.0.0.1:1"),
    );
    (o, launches)
}

/// A code-server stand-in: every path answers `editor`.
async fn stand_in() -> u16 {
    let app = Router::new().fallback(|| async { "editor" });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

fn org() -> OrgName {
    OrgName::new("acme").unwrap()
}

/// Schedules a task and returns it with the agent the backend was asked to start.
async fn dispatched(
    o: &Orchestrator,
    launches: &mut mpsc::UnboundedReceiver<AgentLaunch>,
    text: &str,
) -> (TaskId, AgentName) {
    let t = o
        .schedule(ScheduleRequest::new(org(), text))
        .await
        .expect("schedule");
    let launch = tokio::time::timeout(WAIT, launches.recv())
        .await
        .expect("dispatched in time")
        .expect("channel open");
    assert_eq!(launch.task_id, t.id);
    (t.id, launch.agent)
}

async fn register(o: &Orchestrator, task: &TaskId, agent: &AgentName) {
    o.register(
        task,
        RegisterRequest {
            agent: agent.clone(),
            version: Some("test".into()),
            editor_address: None,
        },
    )
    .await
    .expect("register");
}

/// `GET /editor/proxy/{port}/` with the admin token: the status.
async fn proxied(app: &Router, port: u16) -> StatusCode {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("/editor/proxy/{port}/"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

#[test]
fn the_service_and_its_editor_proxy_are_built_without_a_runtime() {
    // No tokio runtime here: building spawns nothing and cannot fail.
    let dir = tempfile::tempdir().unwrap();
    let (o, _launches) = orchestrator(&dir, 1);
    let app = App::new(o, EditorProxyConfig::default());
    assert_eq!(app.editors.config().frame_ancestors, "'self'");
    assert_eq!(app.orchestrator.backend_name(), "mock");
}

#[tokio::test]
async fn an_ended_agent_s_editor_is_no_longer_served() {
    let dir = tempfile::tempdir().unwrap();
    let (o, mut launches) = orchestrator(&dir, stand_in().await);
    o.create_org(org()).await.unwrap();
    let app = App::from(o.clone());
    let http = router(app.clone());
    let (task, agent) = dispatched(&o, &mut launches, "edit").await;
    register(&o, &task, &agent).await;
    let opened = app
        .editors
        .open(EditorRequest {
            name: agent.clone(),
            org: org(),
        })
        .await
        .expect("open");
    assert_eq!(proxied(&http, opened.port).await, StatusCode::OK);
    o.cancel(&task).await.expect("cancel");
    assert_eq!(
        proxied(&http, opened.port).await,
        StatusCode::NOT_FOUND,
        "the cancelled task's editor is forgotten"
    );
}

#[tokio::test]
async fn after_more_ends_than_the_buffer_holds_each_open_editor_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (o, mut launches) = orchestrator(&dir, stand_in().await);
    o.create_org(org()).await.unwrap();
    let app = App::from(o.clone());
    let http = router(app.clone());
    let mut open = Vec::new();
    for name in ["kept", "ended"] {
        let (task, agent) = dispatched(&o, &mut launches, name).await;
        register(&o, &task, &agent).await;
        // Distinct proxy ports for the one stand-in: the second open gets the next free one.
        let e = app
            .editors
            .open(EditorRequest {
                name: agent.clone(),
                org: org(),
            })
            .await
            .expect("open");
        assert_eq!(proxied(&http, e.port).await, StatusCode::OK);
        open.push((task, e.port));
    }
    let (ended_task, ended_port) = open.pop().unwrap();
    let (_, kept_port) = open.pop().unwrap();
    assert_ne!(kept_port, ended_port);
    o.cancel(&ended_task).await.expect("cancel");
    // More ended agents than the announcement buffer (1024) keeps: the proxy lags behind.
    for i in 0..1100 {
        let (task, _) = dispatched(&o, &mut launches, &format!("noise {i}")).await;
        o.cancel(&task).await.expect("cancel");
    }
    assert_eq!(
        proxied(&http, ended_port).await,
        StatusCode::NOT_FOUND,
        "the ended agent's editor was found out by asking the service"
    );
    assert_eq!(
        proxied(&http, kept_port).await,
        StatusCode::OK,
        "the live agent's editor stays"
    );
}
