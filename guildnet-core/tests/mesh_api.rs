//! `GET`, `PUT` and `DELETE /mesh` driven in-process over a real SQLite store, a mocked
//! cluster backend and a recording mesh control (the real one, guildnet-mesh's `RuntimeMesh`,
//! runs with real Headscale and tailscaled in guildnet-bin's `mesh_runtime_e2e`): input errors
//! name the field, the API key is never echoed, and the mesh control's refusals map to 409,
//! 502 and 503. Authentication of these routes is in `http_api`'s auth matrix.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use guildnet_core::api::{MeshRequest, MeshStatus};
use guildnet_core::orchestrator::http::router;
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::seams::{MeshControl, MeshControlError, MockClusterBackend};
use guildnet_core::store::{Durability, SqliteStore};
use guildnet_core::token::Secret;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

const ADMIN: &str = "admin";
const KEY: &str = "hskey-api-very-secret-value";

/// Records what it was given; answers as told.
#[derive(Default)]
struct Recording {
    got: Mutex<Vec<MeshRequest>>,
    cleared: Mutex<u32>,
    refuse: Option<&'static str>,
}

#[async_trait]
impl MeshControl for Recording {
    async fn status(&self) -> MeshStatus {
        let got = self.got.lock().unwrap();
        match got.last() {
            Some(r) => MeshStatus {
                available: true,
                configured: true,
                source: Some("api".into()),
                headscale_url: Some(r.headscale_url.clone()),
                joined: true,
                tailnet_ips: vec!["100.64.0.1".into()],
                ..Default::default()
            },
            None => MeshStatus {
                available: true,
                ..Default::default()
            },
        }
    }

    async fn set(&self, req: MeshRequest) -> Result<MeshStatus, MeshControlError> {
        match self.refuse {
            Some("flags") => return Err(MeshControlError::FromFlags),
            Some(_) => {
                return Err(MeshControlError::Failed {
                    step: "headscale",
                    reason: "headscale at http://hs:1 refused the API key (HTTP 401)".into(),
                })
            }
            None => {}
        }
        self.got.lock().unwrap().push(req);
        Ok(self.status().await)
    }

    async fn clear(&self) -> Result<MeshStatus, MeshControlError> {
        *self.cleared.lock().unwrap() += 1;
        self.got.lock().unwrap().clear();
        Ok(self.status().await)
    }
}

fn orchestrator(dir: &tempfile::TempDir, mesh: Option<Arc<Recording>>) -> axum::Router {
    let store = SqliteStore::open(dir.path().join("guildnet.db"), Durability::Full).unwrap();
    let mut mock = MockClusterBackend::new();
    mock.expect_name().return_const("mock");
    let mut b = Orchestrator::builder(
        Arc::new(store),
        Arc::new(mock),
        OrchestratorConfig::new(Secret::new(ADMIN), "http://127.0.0.1:1"),
    );
    if let Some(m) = mesh {
        b = b.mesh(m);
    }
    router(b.build())
}

async fn send(app: &axum::Router, method: Method, body: Option<Value>) -> (StatusCode, String) {
    let mut r = Request::builder()
        .method(method)
        .uri("/mesh")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
    let body = match body {
        Some(v) => {
            r = r.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(r.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn good() -> Value {
    json!({"headscaleUrl": "http://10.0.0.5:8080", "apiKey": KEY})
}

fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].clone()
}

#[tokio::test]
async fn bad_input_is_422_naming_the_field_and_never_quotes_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recording::default());
    let app = orchestrator(&dir, Some(rec.clone()));
    let with = |k: &str, v: Value| {
        let mut b = good();
        b[k] = v;
        b
    };
    let cases = [
        (json!({"apiKey": KEY}), "headscaleUrl"),
        (with("headscaleUrl", json!("ftp://hs:21")), "headscaleUrl"),
        (with("headscaleUrl", json!("not a url")), "headscaleUrl"),
        (
            with("headscaleUrl", json!(format!("http://u:{KEY}@hs:8080"))),
            "headscaleUrl",
        ),
        (
            with("headscaleUrl", json!("http://hs:8080/?k=1")),
            "headscaleUrl",
        ),
        (with("loginServer", json!("hs.example")), "loginServer"),
        (json!({"headscaleUrl": "http://hs:1"}), "apiKey"),
        (with("apiKey", json!("")), "apiKey"),
        (with("apiKey", json!(format!("{KEY} and more"))), "apiKey"),
        (with("apiKey", json!(7)), "apiKey"),
        (with("user", json!("a b")), "user"),
        (with("tags", json!(["tag:ok", "agents"])), "tags[1]"),
        (with("hostname", json!("Not-A-Label")), "hostname"),
        (with("surprise", json!(1)), "surprise"),
    ];
    for (body, field) in cases {
        let (status, text) = send(&app, Method::PUT, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {text}");
        let e = error_of(&text);
        assert_eq!(e["field"], field, "{body}: {text}");
        assert!(!text.contains(KEY), "the key is echoed: {text}");
    }
    assert!(
        rec.got.lock().unwrap().is_empty(),
        "nothing reached the mesh"
    );
    // Malformed JSON: 400.
    let resp = app
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::PUT)
                .uri("/mesh")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(format!("{{\"apiKey\": \"{KEY}\"")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains(KEY));
}

#[tokio::test]
async fn a_mesh_is_set_shown_without_its_key_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recording::default());
    let app = orchestrator(&dir, Some(rec.clone()));
    let (status, text) = send(&app, Method::GET, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let st: MeshStatus = serde_json::from_str(&text).unwrap();
    assert!(st.available && !st.configured, "{st:?}");

    let mut body = good();
    body["tags"] = json!(["tag:guildnet-agent"]);
    body["loginServer"] = json!("http://10.0.0.5:8080/");
    let (status, text) = send(&app, Method::PUT, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!text.contains(KEY), "{text}");
    let st: MeshStatus = serde_json::from_str(&text).unwrap();
    assert!(st.configured && st.joined, "{st:?}");
    {
        let got = rec.got.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].api_key, KEY);
        assert_eq!(got[0].tags, vec!["tag:guildnet-agent".to_owned()]);
        assert!(
            !format!("{:?}", got[0]).contains(KEY),
            "Debug shows the key"
        );
    }
    let (status, text) = send(&app, Method::GET, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["tailnetIps"],
        json!(["100.64.0.1"])
    );

    let (status, text) = send(&app, Method::DELETE, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let st: MeshStatus = serde_json::from_str(&text).unwrap();
    assert!(!st.configured, "{st:?}");
    assert_eq!(*rec.cleared.lock().unwrap(), 1);
}

#[tokio::test]
async fn refusals_map_to_409_502_and_503() {
    let dir = tempfile::tempdir().unwrap();
    let flags = orchestrator(
        &dir,
        Some(Arc::new(Recording {
            refuse: Some("flags"),
            ..Default::default()
        })),
    );
    let (status, text) = send(&flags, Method::PUT, Some(good())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert_eq!(error_of(&text)["code"], "mesh_from_flags");

    let dir2 = tempfile::tempdir().unwrap();
    let refused = orchestrator(
        &dir2,
        Some(Arc::new(Recording {
            refuse: Some("headscale"),
            ..Default::default()
        })),
    );
    let (status, text) = send(&refused, Method::PUT, Some(good())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert_eq!(error_of(&text)["code"], "mesh_failed");
    assert!(!text.contains(KEY), "{text}");

    // No mesh control (the local backend): GET says so, changes are 503.
    let dir3 = tempfile::tempdir().unwrap();
    let none = orchestrator(&dir3, None);
    let (status, text) = send(&none, Method::GET, None).await;
    assert_eq!(status, StatusCode::OK);
    let st: MeshStatus = serde_json::from_str(&text).unwrap();
    assert!(!st.available && !st.configured, "{st:?}");
    for (m, body) in [(Method::PUT, Some(good())), (Method::DELETE, None)] {
        let (status, text) = send(&none, m, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert_eq!(error_of(&text)["code"], "mesh_unavailable");
    }
}
