//! The orchestrator's axum router driven in-process (`tower::ServiceExt::oneshot`) over a real
//! SQLite store and a mocked cluster backend: the OpenAPI document, authentication, input
//! errors, and resumable SSE streams.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use futures_util::StreamExt;
use guildnet_core::model::{NewEvent, Task, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::http::{router, routes, MAX_BODY_BYTES};
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::seams::{AgentLaunch, MockClusterBackend, WorkloadState};
use guildnet_core::store::{Durability, SqliteStore};
use guildnet_core::token::Secret;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower::ServiceExt;

const ADMIN: &str = "admin";
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    app: Router,
    o: Orchestrator,
    launches: mpsc::UnboundedReceiver<AgentLaunch>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("guildnet.db"), Durability::Full).unwrap();
    let (tx, launches) = mpsc::unbounded_channel();
    let mut mock = MockClusterBackend::new();
    mock.expect_name().return_const("mock");
    // Deleting an org removes its warm pool (none here).
    mock.expect_delete_pool().returning(|_| Ok(false));
    mock.expect_task_finished().returning(|_| Ok(()));
    mock.expect_describe().returning(|_, _, _| Ok(None));
    mock.expect_submit().returning(move |launch| {
        let _ = tx.send(launch);
        Ok(())
    });
    mock.expect_cancel().returning(|_, _, _| Ok(()));
    mock.expect_status()
        .returning(|_, _, _| Ok(WorkloadState::Running));
    mock.expect_editor_endpoint().returning(|_, _| Ok(None));
    let o = Orchestrator::new(
        Arc::new(store),
        Arc::new(mock),
        OrchestratorConfig::new(Secret::new(ADMIN), "http://127.0.0.1:1"),
    );
    o.create_org(OrgName::new("acme").unwrap()).await.unwrap();
    Harness {
        app: router(o.clone()),
        o,
        launches,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the status and that the body is `{"error": {"code", "message", "field"?}}`;
    /// returns the error object.
    fn error(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("application/json"), "content type {ct:?}");
        let v = self.json();
        let err = v
            .get("error")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("no error object: {v}"));
        assert!(err.get("code").is_some_and(Value::is_string), "{v}");
        assert!(
            err.get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert_eq!(err["code"], code, "{v}");
        Value::Object(err.clone())
    }

    fn field(&self, status: StatusCode, code: &str, field: &str) {
        let e = self.error(status, code);
        assert_eq!(e["field"], field, "{e}");
    }
}

fn request(method: Method, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b
}

fn json_req(
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    request(method, uri, token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn empty(method: Method, uri: &str, token: Option<&str>) -> Request<Body> {
    request(method, uri, token).body(Body::empty()).unwrap()
}

impl Harness {
    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(WAIT, axum::body::to_bytes(body, usize::MAX))
            .await
            .expect("response body did not end")
            .unwrap();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a request whose response is a stream; returns its status and body.
    async fn open(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Body) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts.status, parts.headers, body)
    }

    async fn schedule(&mut self, text: &str) -> (Task, AgentLaunch) {
        let r = self
            .send(json_req(
                Method::POST,
                "/schedule",
                Some(ADMIN),
                json!({"org": "acme", "task": text}).to_string(),
            ))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        let task: Task = serde_json::from_slice(&r.body).unwrap();
        let launch = tokio::time::timeout(WAIT, self.launches.recv())
            .await
            .expect("submit not called")
            .unwrap();
        assert_eq!(launch.task_id, task.id);
        (task, launch)
    }

    async fn agent_post(&self, launch: &AgentLaunch, path: &str, body: Value) -> Reply {
        self.send(json_req(
            Method::POST,
            path,
            Some(launch.agent_token.expose()),
            body.to_string(),
        ))
        .await
    }
}

/// `(method, concrete path)` for every route, with valid path parameters.
fn concrete_routes() -> Vec<(String, String)> {
    let id = TaskId::generate();
    routes()
        .into_iter()
        .map(|(m, p)| {
            (
                m,
                p.replace("{id}", id.as_str())
                    .replace("{name}", id.agent_name(1).as_str())
                    .replace("{org}", "acme"),
            )
        })
        .collect()
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap()
}

fn is_public(path: &str) -> bool {
    path == "/health" || path == "/openapi.json"
}

#[tokio::test]
async fn openapi_documents_every_route_and_needs_no_auth() {
    let h = harness().await;
    let r = h.send(empty(Method::GET, "/openapi.json", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");

    let served = routes();
    assert!(served.len() >= 30, "{served:?}");
    for (m, p) in &served {
        let op = paths
            .get(p)
            .and_then(|item| item.get(m))
            .unwrap_or_else(|| panic!("{m} {p} is not in the OpenAPI document"));
        assert!(op.get("responses").is_some(), "{m} {p} documents responses");
    }
    // And nothing is documented that is not served.
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    ["get", "post", "put", "delete", "patch", "head", "options"]
                        .contains(&k.as_str())
                })
                .map(move |k| (k.clone(), p.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = served.into_iter().collect();
    assert_eq!(documented, served);

    // Security schemes are declared.
    assert!(doc["components"]["securitySchemes"]["admin"].is_object());
    assert!(doc["components"]["securitySchemes"]["agent"].is_object());

    let health = h.send(empty(Method::GET, "/health", None)).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["backend"], "mock");
}

#[tokio::test]
async fn auth_matrix() {
    let mut h = harness().await;
    let (_task, launch) = h.schedule("auth").await;
    let agent_token = launch.agent_token.expose().to_owned();

    let routes = concrete_routes();
    assert_eq!(routes.len(), self::routes().len());
    let mut checked = 0;
    for (m, path) in &routes {
        if is_public(path) {
            continue;
        }
        let agent_route = path.starts_with("/agent/");
        // No token, a wrong token, another scheme, the wrong kind of token.
        let mut attempts: Vec<(&str, Request<Body>)> = vec![
            ("none", empty(method(m), path, None)),
            ("wrong", empty(method(m), path, Some("not-the-token"))),
            (
                "basic",
                request(method(m), path, None)
                    .header(header::AUTHORIZATION, format!("Basic {ADMIN}"))
                    .body(Body::empty())
                    .unwrap(),
            ),
            ("empty bearer", empty(method(m), path, Some(""))),
        ];
        if agent_route {
            attempts.push((
                "admin token on agent route",
                empty(method(m), path, Some(ADMIN)),
            ));
        } else {
            attempts.push((
                "agent token on admin route",
                empty(method(m), path, Some(&agent_token)),
            ));
        }
        for (what, req) in attempts {
            let r = h.send(req).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{m} {path} with {what}: {}",
                String::from_utf8_lossy(&r.body)
            );
            r.error(StatusCode::UNAUTHORIZED, "unauthorized");
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        (routes.len() - 2) * 5,
        "every route but the 2 public ones"
    );

    // The right tokens get through.
    let r = h.send(empty(Method::GET, "/orgs", Some(ADMIN))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()[0]["name"], "acme");
    let r = h
        .agent_post(&launch, "/agent/claim", json!({"agent": launch.agent}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["fencing"], 1);
    // Case-insensitive scheme.
    let r = h
        .send(
            request(Method::GET, "/tasks", None)
                .header(header::AUTHORIZATION, format!("bearer {ADMIN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_gets_precise_json_errors() {
    let h = harness().await;
    let post = |path: &str, body: &str| json_req(Method::POST, path, Some(ADMIN), body.to_owned());

    // Malformed JSON, trailing garbage, empty body.
    for body in [
        r#"{"org": "acme", "task": "#,
        r#"{"org":"acme","task":"x"} extra"#,
        "",
    ] {
        h.send(post("/schedule", body))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid_json");
    }
    // Missing, unknown, invalid, wrong-typed fields.
    h.send(post("/schedule", r#"{"org": "acme"}"#)).await.field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        "task",
    );
    let r = h
        .send(post(
            "/schedule",
            r#"{"org": "acme", "task": "x", "bogus": 1}"#,
        ))
        .await;
    r.field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "bogus");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bogus"));
    h.send(post("/schedule", r#"{"org": "../x", "task": "x"}"#))
        .await
        .field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "org");
    h.send(post("/schedule", r#"{"org": "acme", "task": 5}"#))
        .await
        .field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "task");
    h.send(post("/schedule", r#""just a string""#))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    // An array is not read positionally in place of the object.
    h.send(post("/schedule", r#" ["acme", "x"]"#)).await.field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        "body",
    );
    h.send(post("/orgs", r#"{"name": "Not_A_Label"}"#))
        .await
        .field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "name");
    // Service-level validation through HTTP.
    h.send(post("/schedule", r#"{"org": "ghost", "task": "x"}"#))
        .await
        .field(StatusCode::UNPROCESSABLE_ENTITY, "unknown_org", "org");
    h.send(post("/schedule", r#"{"org": "acme", "task": "  "}"#))
        .await
        .field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "task");
    let big_task = json!({"org": "acme", "task": "x".repeat(64 * 1024 + 1)}).to_string();
    h.send(post("/schedule", &big_task)).await.field(
        StatusCode::PAYLOAD_TOO_LARGE,
        "task_too_large",
        "task",
    );
    h.send(post("/orgs", r#"{"name": "acme"}"#))
        .await
        .error(StatusCode::CONFLICT, "already_exists");

    // Wrong or missing content type.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut b = request(Method::POST, "/schedule", Some(ADMIN));
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let req = b
            .body(Body::from(r#"{"org": "acme", "task": "x"}"#))
            .unwrap();
        h.send(req)
            .await
            .error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }
    // A charset parameter is fine.
    let r = h
        .send(
            request(Method::POST, "/orgs", Some(ADMIN))
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(Body::from(r#"{"name": "beta"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Too large a body.
    let huge = format!(
        r#"{{"org": "acme", "task": "{}"}}"#,
        "x".repeat(MAX_BODY_BYTES + 1)
    );
    h.send(post("/schedule", &huge))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    // Bad ids in paths.
    for path in [
        "/tasks/..%2Fx",
        "/tasks/UPPER",
        "/tasks/a_b/logs",
        "/tasks/..%2F..%2Fetc/logs/stream",
    ] {
        h.send(empty(Method::GET, path, Some(ADMIN))).await.field(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "id",
        );
    }
    h.send(empty(Method::POST, "/tasks/UPPER/cancel", Some(ADMIN)))
        .await
        .field(StatusCode::BAD_REQUEST, "invalid_path", "id");
    h.send(empty(Method::GET, "/agents/..%2Fx", Some(ADMIN)))
        .await
        .field(StatusCode::BAD_REQUEST, "invalid_path", "name");
    // Valid but unknown ids.
    let unknown = TaskId::generate();
    h.send(empty(
        Method::GET,
        &format!("/tasks/{unknown}"),
        Some(ADMIN),
    ))
    .await
    .error(StatusCode::NOT_FOUND, "not_found");
    h.send(empty(Method::GET, "/agents/nobody", Some(ADMIN)))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // Query strings.
    h.send(empty(Method::GET, "/tasks?bogus=1", Some(ADMIN)))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_query");
    h.send(empty(Method::GET, "/tasks?limit=0", Some(ADMIN)))
        .await
        .field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "limit");
    h.send(empty(Method::GET, "/tasks?status=Sleeping", Some(ADMIN)))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid_query");
    h.send(empty(
        Method::GET,
        "/tasks?cursor=not-a-cursor",
        Some(ADMIN),
    ))
    .await
    .field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "cursor");
    h.send(
        request(Method::GET, "/events", Some(ADMIN))
            .header("last-event-id", "abc")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .field(StatusCode::BAD_REQUEST, "invalid_header", "Last-Event-ID");

    // Unknown routes and wrong methods.
    for path in ["/nope", "/tasks/x/y/z", "/"] {
        h.send(empty(Method::GET, path, Some(ADMIN)))
            .await
            .error(StatusCode::NOT_FOUND, "not_found");
    }
    for (m, path) in [
        (Method::DELETE, "/orgs"),
        (Method::GET, "/schedule"),
        (Method::POST, "/health"),
        (Method::PUT, "/agent/claim"),
    ] {
        h.send(empty(m, path, Some(ADMIN)))
            .await
            .error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }

    // None of the refused schedules recorded a task.
    let r = h.send(empty(Method::GET, "/tasks", Some(ADMIN))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!([]));
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut ev = Sse {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut any = false;
            for line in block.lines() {
                if line.starts_with(':') || line.is_empty() {
                    continue;
                }
                let (k, v) = line.split_once(':').unwrap_or((line, ""));
                let v = v.strip_prefix(' ').unwrap_or(v);
                any = true;
                match k {
                    "id" => ev.id = Some(v.parse().expect("numeric id")),
                    "event" => ev.event = Some(v.to_owned()),
                    "data" => {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v);
                    }
                    other => panic!("unexpected SSE field {other:?} in {block:?}"),
                }
            }
            any.then_some(ev)
        })
        .collect()
}

/// Reads an endless SSE body until `done` holds for the complete events read so far.
async fn read_sse_until(
    stream: &mut (impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
    buf: &mut String,
    done: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Only complete events (terminated by a blank line) count.
        let complete = match buf.rfind("\n\n") {
            Some(i) => parse_sse(&buf[..i + 2]),
            None => vec![],
        };
        if done(&complete) {
            return complete;
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => buf.push_str(std::str::from_utf8(&chunk).unwrap()),
            Ok(Some(Err(e))) => panic!("stream failed: {e}"),
            Ok(None) => panic!("stream ended early; got {buf:?}"),
            Err(_) => panic!("timed out waiting for SSE events; got {buf:?}"),
        }
    }
}

fn data_ids(events: &[Sse]) -> Vec<u64> {
    events.iter().filter_map(|e| e.id).collect()
}

#[tokio::test]
async fn events_stream_resumes_after_last_event_id() {
    let mut h = harness().await;
    let mut last = 0;
    for i in 1..=5 {
        last =
            h.o.store()
                .append_events(
                    vec![NewEvent {
                        kind: format!("test.{i}"),
                        task_id: None,
                        agent: None,
                        org: None,
                        status: None,
                        message: None,
                    }],
                    vec![],
                )
                .await
                .unwrap();
    }
    assert_eq!(last, 5);

    let (status, headers, body) = h
        .open(
            request(Method::GET, "/events", Some(ADMIN))
                .header("Last-Event-ID", "2")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = body.into_data_stream();
    let mut buf = String::new();
    let evs = read_sse_until(&mut stream, &mut buf, |e| data_ids(e).contains(&5)).await;
    assert_eq!(data_ids(&evs), vec![3, 4, 5]);
    let kinds: Vec<String> = evs
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["test.3", "test.4", "test.5"]);
    for e in &evs {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["id"].as_u64(), e.id, "the SSE id is the event id");
    }

    // The open stream follows new events live, without repeating old ones.
    let (task, _launch) = h.schedule("live").await;
    let evs = read_sse_until(&mut stream, &mut buf, |e| {
        e.iter().any(|e| e.data.contains("task.submitted"))
    })
    .await;
    let ids = data_ids(&evs);
    assert_eq!(ids, vec![3, 4, 5, 6, 7], "{evs:?}");
    let v6: Value = serde_json::from_str(&evs[3].data).unwrap();
    assert_eq!(v6["kind"], "task.scheduled");
    assert_eq!(v6["taskId"], task.id.as_str());
    let v7: Value = serde_json::from_str(&evs[4].data).unwrap();
    assert_eq!(v7["status"], "Submitted");
    drop(stream);

    // `?after=` works too, and Last-Event-ID takes precedence over it.
    for (after, header_id, expect_first) in [("4", None, 5), ("1", Some("6"), 7)] {
        let mut b = request(Method::GET, &format!("/events?after={after}"), Some(ADMIN));
        if let Some(id) = header_id {
            b = b.header("last-event-id", id);
        }
        let (status, _, body) = h.open(b.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let mut stream = body.into_data_stream();
        let mut buf = String::new();
        let evs = read_sse_until(&mut stream, &mut buf, |e| data_ids(e).contains(&7)).await;
        let ids = data_ids(&evs);
        assert_eq!(ids, (expect_first..=7).collect::<Vec<_>>());
    }
}

async fn collect_to_end(body: Body) -> String {
    let bytes = tokio::time::timeout(WAIT, axum::body::to_bytes(body, usize::MAX))
        .await
        .expect("stream did not end")
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn log_lines(seqs: impl IntoIterator<Item = u64>) -> Value {
    let lines: Vec<Value> = seqs
        .into_iter()
        .map(|s| {
            json!({"seq": s, "stream": "stdout", "line": format!("line {s}"),
                   "ts": "2024-01-01T00:00:00Z"})
        })
        .collect();
    Value::Array(lines)
}

/// Checks a finished log stream: each line exactly once, in order, with `id: <seq>`, then `end`.
fn assert_log_stream(text: &str, seqs: std::ops::RangeInclusive<u64>, task: &TaskId) {
    let evs = parse_sse(text);
    let (end, lines) = evs.split_last().expect("some events");
    assert_eq!(end.event.as_deref(), Some("end"), "{text}");
    assert_eq!(end.id, None);
    let finished: Task = serde_json::from_str(&end.data).unwrap();
    assert_eq!(&finished.id, task);
    assert_eq!(finished.status, TaskStatus::Succeeded);
    assert!(lines.iter().all(|e| e.event.is_none()), "{text}");
    assert_eq!(data_ids(lines), seqs.clone().collect::<Vec<_>>(), "{text}");
    for e in lines {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["seq"].as_u64(), e.id);
        assert_eq!(v["line"], format!("line {}", e.id.unwrap()));
        assert_eq!(v["taskId"], task.as_str());
        assert_eq!(
            text.matches(&format!("\"line {}\"", e.id.unwrap())).count(),
            1,
            "line {} exactly once",
            e.id.unwrap()
        );
    }
}

#[tokio::test]
async fn task_log_stream_delivers_each_line_once_and_ends() {
    let mut h = harness().await;
    let (task, launch) = h.schedule("log me").await;
    let agent = launch.agent.to_string();

    let r = h
        .agent_post(&launch, "/agent/claim", json!({"agent": agent}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let fencing = r.json()["fencing"].as_u64().unwrap();

    // Follow the log live while the agent is still writing.
    let (status, _, body) = h
        .open(empty(
            Method::GET,
            &format!("/tasks/{}/logs/stream", task.id),
            Some(ADMIN),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let live = tokio::spawn(collect_to_end(body));

    for (seqs, inserted) in [(1..=3, 3), (2..=5, 2), (1..=5, 0), (6..=8, 3)] {
        let r = h
            .agent_post(
                &launch,
                "/agent/log",
                json!({"agent": agent, "fencing": fencing, "lines": log_lines(seqs)}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.json()["inserted"], inserted);
        tokio::task::yield_now().await;
    }
    // A stale fencing token is refused over HTTP too.
    h.agent_post(
        &launch,
        "/agent/log",
        json!({"agent": agent, "fencing": fencing + 1, "lines": log_lines([9])}),
    )
    .await
    .error(StatusCode::CONFLICT, "stale_fencing");
    h.agent_post(
        &launch,
        "/agent/log",
        json!({"agent": agent, "fencing": fencing, "lines": log_lines([0])}),
    )
    .await
    .field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        "lines[0].seq",
    );

    let r = h
        .agent_post(
            &launch,
            "/agent/complete",
            json!({"agent": agent, "fencing": fencing, "status": "Succeeded", "exitCode": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["status"], "Succeeded");

    let text = tokio::time::timeout(WAIT, live).await.unwrap().unwrap();
    assert_log_stream(&text, 1..=8, &task.id);

    // Opened after the end: the whole log, then `end`.
    let (_, _, body) = h
        .open(empty(
            Method::GET,
            &format!("/tasks/{}/logs/stream", task.id),
            Some(ADMIN),
        ))
        .await;
    assert_log_stream(&collect_to_end(body).await, 1..=8, &task.id);

    // Resumed: only what follows Last-Event-ID.
    let (_, _, body) = h
        .open(
            request(
                Method::GET,
                &format!("/tasks/{}/logs/stream", task.id),
                Some(ADMIN),
            )
            .header("Last-Event-ID", "5")
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_log_stream(&collect_to_end(body).await, 6..=8, &task.id);

    // The paged JSON view agrees.
    let r = h
        .send(empty(
            Method::GET,
            &format!("/tasks/{}/logs?after=2&limit=3", task.id),
            Some(ADMIN),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seqs: Vec<u64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4, 5]);
}

#[test]
fn json_errors_name_the_field_at_fault() {
    use guildnet_core::orchestrator::api::LogRequest;
    use guildnet_core::orchestrator::http::parse_json;

    let line = json!({"seq": 1, "stream": "stdout", "line": "x", "ts": "2024-01-01T00:00:00Z"});
    let with_line =
        |l: Value| json!({"agent": "agent-a", "fencing": 1, "lines": [line.clone(), l]});
    let mut unknown = line.clone();
    unknown["bogus"] = json!(1);
    let mut missing = line.clone();
    missing.as_object_mut().unwrap().remove("stream");
    let mut bad_type = line.clone();
    bad_type["seq"] = json!("one");
    let mut bad_enum = line.clone();
    bad_enum["stream"] = json!("stdnope");
    let mut top_unknown = with_line(line.clone());
    top_unknown["extra"] = json!(true);
    let mut top_missing = with_line(line.clone());
    top_missing.as_object_mut().unwrap().remove("fencing");
    let mut bad_agent = with_line(line.clone());
    bad_agent["agent"] = json!("../x");

    for (body, field) in [
        (with_line(unknown), "lines[1].bogus"),
        (with_line(missing), "lines[1].stream"),
        (with_line(bad_type), "lines[1].seq"),
        (with_line(bad_enum), "lines[1].stream"),
        (top_unknown, "extra"),
        (top_missing, "fencing"),
        (bad_agent, "agent"),
    ] {
        let e = parse_json::<LogRequest>(body.to_string().as_bytes())
            .map(|_| ())
            .expect_err("invalid body");
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                Some(field)
            ),
            "{body}: {e:?}"
        );
    }
    // A body of the wrong shape is blamed on the body, not on a word quoted in the message.
    for body in ["5", "\"text\"", "[]", "null"] {
        let e = parse_json::<LogRequest>(body.as_bytes())
            .map(|_| ())
            .expect_err("invalid body");
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                Some("body")
            ),
            "{body}: {e:?}"
        );
    }
    assert!(parse_json::<LogRequest>(with_line(line.clone()).to_string().as_bytes()).is_ok());
}

#[tokio::test]
async fn task_list_pages_with_the_next_cursor() {
    let mut h = harness().await;
    let mut scheduled = Vec::new();
    for i in 0..7 {
        let t = h.schedule(&format!("task {i}")).await.0;
        scheduled.push((t.created_at.timestamp_millis(), t.id.to_string()));
    }
    // Newest first; ties within a millisecond by id.
    scheduled.sort_by(|a, b| b.cmp(a));
    let mut seen = Vec::new();
    let mut uri = "/tasks?limit=3&org=acme".to_owned();
    let mut pages = 0;
    loop {
        let r = h.send(empty(Method::GET, &uri, Some(ADMIN))).await;
        assert_eq!(r.status, StatusCode::OK);
        pages += 1;
        let items = r.json();
        let items = items.as_array().expect("a page is a JSON array");
        seen.extend(
            items
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        );
        let Some(next) = r.headers.get("x-next-cursor") else {
            assert!(items.len() < 3, "a full page carries a cursor");
            break;
        };
        let next = next.to_str().unwrap();
        let link = r.headers[header::LINK].to_str().unwrap();
        assert_eq!(
            link,
            format!("</tasks?org=acme&limit=3&cursor={next}>; rel=\"next\""),
            "Link keeps the filters"
        );
        uri = format!("/tasks?limit=3&org=acme&cursor={next}");
        assert!(pages < 10, "paging must end");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = scheduled.into_iter().map(|(_, id)| id).collect();
    assert_eq!(seen, expected, "every task once, newest first");
    // Without a limit the old behaviour holds: the newest 100, no cursor for a short list.
    let r = h.send(empty(Method::GET, "/tasks", Some(ADMIN))).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(7));
    assert!(r.headers.get("x-next-cursor").is_none());
}

#[tokio::test]
async fn orgs_are_deleted_only_without_unfinished_tasks() {
    let mut h = harness().await;
    let (task, _launch) = h.schedule("keeps acme busy").await;
    let del = |org: &str| empty(Method::DELETE, &format!("/orgs/{org}"), Some(ADMIN));
    h.send(del("acme"))
        .await
        .error(StatusCode::CONFLICT, "in_use");
    h.send(del("nope"))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    h.send(del("Bad_Name"))
        .await
        .field(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "org");
    let r = h
        .send(empty(
            Method::POST,
            &format!("/tasks/{}/cancel", task.id),
            Some(ADMIN),
        ))
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let r = h.send(del("acme")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let orgs = h.send(empty(Method::GET, "/orgs", Some(ADMIN))).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&orgs.body).unwrap(),
        json!([])
    );
    // The task's history stays.
    let r = h
        .send(empty(
            Method::GET,
            &format!("/tasks/{}", task.id),
            Some(ADMIN),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A deleted org takes no new task (the orchestrator forgets the org it had seen).
    h.send(json_req(
        Method::POST,
        "/schedule",
        Some(ADMIN),
        json!({"org": "acme", "task": "after the delete"}).to_string(),
    ))
    .await
    .field(StatusCode::UNPROCESSABLE_ENTITY, "unknown_org", "org");
}

#[tokio::test]
async fn metrics_count_tasks_and_requests_without_ids() {
    let mut h = harness().await;
    let (task, _launch) = h.schedule("measure me").await;
    h.send(empty(
        Method::GET,
        &format!("/tasks/{}", task.id),
        Some(ADMIN),
    ))
    .await;
    let r = h.send(empty(Method::GET, "/metrics", Some(ADMIN))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&r.body);
    let submitted = text
        .lines()
        .find(|l| l.starts_with(r#"guildnet_orchestrator_tasks{status="Submitted"}"#))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(submitted.ends_with(" 1"), "{submitted}");
    assert!(
        text.contains(
            r#"guildnet_orchestrator_http_requests_total{method="POST",route="/schedule",status="202"} 1"#
        ),
        "{text}"
    );
    // Routes are labelled by template: no task id in the metrics.
    assert!(text.contains(r#"route="/tasks/{id}""#), "{text}");
    assert!(!text.contains(task.id.as_str()), "{text}");
}
