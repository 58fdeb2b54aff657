//! API tests: a real orchestrator (in-process, real SQLite, real agent runtime and `cat`
//! runner) behind a real dashboard (its own SQLite file), over HTTP on loopback.

mod support;

use async_trait::async_trait;
use guildnet_dashboard::flows::{FlowResult, ProgressSender, SetupFlow, SetupRequest};
use reqwest::Method;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_sessions_csrf_and_headers() {
    let env = start(|_| {}).await;
    let anon = Browserish::new(&env.dash_url);

    // Health needs no session; everything else under /api does.
    let (st, v) = anon.json(Method::GET, "/api/health", None).await;
    assert_eq!((st, v["ok"].clone()), (200, json!(true)));
    for path in [
        "/api/orgs",
        "/api/tasks",
        "/api/agents",
        "/api/events",
        "/api/setup",
    ] {
        let (st, v) = anon.json(Method::GET, path, None).await;
        assert_eq!(st, 401, "{path}");
        assert_eq!(v["error"]["code"], "unauthorized", "{path}: {v}");
    }
    let (st, _) = anon
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 401);

    // Wrong password: 401 JSON, no cookie.
    let resp = anon
        .req(Method::POST, "/api/login")
        .json(&json!({"password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "wrong password");

    // Right password: an HttpOnly, SameSite=Strict session cookie.
    let resp = anon
        .req(Method::POST, "/api/login")
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains(PASSWORD) && !cookie.contains(ORCH_TOKEN));
    let me = Browserish::login(&env.dash_url).await;
    let (st, v) = me.json(Method::GET, "/api/session", None).await;
    assert_eq!((st, v["authenticated"].clone()), (200, json!(true)));

    // CSRF: a cross-site Origin or Sec-Fetch-Site is refused even with a valid session.
    let resp = me
        .req(Method::POST, "/api/orgs")
        .header("origin", "https://evil.example")
        .json(&json!({"name": "evil"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "forbidden");
    let resp = me
        .req(Method::POST, "/api/schedule")
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"org": "acme", "task": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Same origin is fine.
    let host = env.dash_url.trim_start_matches("http://").to_owned();
    let resp = me
        .req(Method::POST, "/api/orgs")
        .header("origin", format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"name": "same-origin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (st, v) = me.json(Method::GET, "/api/orgs", None).await;
    assert_eq!(st, 200);
    assert!(!v.to_string().contains("evil"));

    // Security headers, and no secret in the page or its script.
    for path in ["/", "/assets/app.js", "/api/health"] {
        let resp = anon.req(Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        // Frames come only from the editor origin, never from the dashboard's own.
        assert!(
            csp.contains("default-src 'self'")
                && csp.contains(&format!("frame-src {}", env.editor_url))
                && !csp.contains("frame-src 'self'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h.contains_key("referrer-policy"));
        let body = resp.text().await.unwrap();
        assert!(!body.contains(ORCH_TOKEN) && !body.contains(PASSWORD));
    }

    // Prometheus metrics: requests by route template, no secrets.
    let resp = anon.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), 401, "metrics need the admin token");
    let resp = anon
        .req(Method::GET, "/metrics")
        .bearer_auth(ORCH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("guildnet_dashboard_http_requests_total{")
            && text.contains(r#"route="/api/orgs""#),
        "{text}"
    );
    assert!(!text.contains(PASSWORD) && !text.contains(ORCH_TOKEN));

    // Logout ends the session server-side.
    let (st, _) = me.json(Method::POST, "/api/logout", None).await;
    assert_eq!(st, 200);
    let (st, _) = me.json(Method::GET, "/api/orgs", None).await;
    assert_eq!(st, 401);

    // Password guessing from one address is throttled: after a few wrong passwords it gets
    // 429 with Retry-After, and even the right password waits.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = anon
            .req(Method::POST, "/api/login")
            .json(&json!({"password": "guess"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "too_many_attempts", "{v}");
        }
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(statuses[7], 429, "{statuses:?}");
    let r = anon
        .req(Method::POST, "/api/login")
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "locked out for now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_configs_and_input_errors() {
    let env = start(|_| {}).await;
    let me = Browserish::login(&env.dash_url).await;

    // Create, duplicate, invalid, list; the orchestrator knows the org too.
    let (st, v) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["name"], "acme");
    assert_eq!(v["kubeconfig"]["exists"], false);
    let (st, v) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 409);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already exists"));
    let (st, v) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "Bad_Name"})))
        .await;
    assert_eq!(st, 422);
    assert_eq!(v["error"]["field"], "name");
    // A path that does not decode is a JSON error naming the path, like every other input error.
    for path in ["/api/orgs/%FF", "/api/tasks/%FF/logs", "/api/agents/%C3%28"] {
        let resp = me.req(Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), 422, "{path}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["field"], "path", "{path}: {v}");
    }
    let (_, list) = me.json(Method::GET, "/api/orgs", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let orch = guildnet_core::client::OrchestratorClient::new(
        &env.orch_url,
        guildnet_core::token::Secret::new(ORCH_TOKEN),
    )
    .unwrap();
    let orch_orgs = orch.orgs().await.unwrap();
    assert!(orch_orgs.iter().any(|o| o.name.as_str() == "acme"));
    // One registry: an org made elsewhere (CLI, API, Python) is the dashboard's org too, and
    // an org deleted here is gone from the orchestrator.
    let globex = guildnet_core::names::OrgName::new("globex").unwrap();
    orch.create_org(&globex).await.unwrap();
    let (st, v) = me.json(Method::GET, "/api/orgs/globex", None).await;
    assert_eq!((st, v["name"].clone()), (200, json!("globex")), "{v}");
    let (st, _) = me
        .json(
            Method::DELETE,
            "/api/orgs/globex",
            Some(json!({"confirm": "globex"})),
        )
        .await;
    assert_eq!(st, 200);
    assert!(orch
        .orgs()
        .await
        .unwrap()
        .iter()
        .all(|o| o.name.as_str() != "globex"));

    // Bad JSON, unknown fields, wrong content type.
    let resp = me
        .req(Method::POST, "/api/orgs")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    let (st, v) = me
        .json(
            Method::POST,
            "/api/orgs",
            Some(json!({"name": "x", "admin": true})),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(v["error"]["field"], "admin", "{v}");
    let resp = me
        .req(Method::POST, "/api/orgs")
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let (st, v) = me.json(Method::GET, "/api/nope", None).await;
    assert_eq!((st, v["error"]["code"].clone()), (404, json!("not_found")));
    let (st, v) = me.json(Method::GET, "/api/tasks?bogus=1", None).await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (400, json!("invalid_query")),
        "{v}"
    );

    // Kubeconfig: good upload -> 0600 file and status; bad uploads -> 422, file untouched.
    let kc_path = env.dash_state.join("kube/acme.config");
    let (st, v) = me
        .json(
            Method::PUT,
            "/api/orgs/acme/kubeconfig",
            Some(json!({"content": GOOD_KUBECONFIG})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["server"], "https://10.0.0.1:6443");
    let mode = std::fs::metadata(&kc_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let no_ctx = GOOD_KUBECONFIG.replace("current-context: dev\n", "");
    let (st, v) = me
        .json(
            Method::PUT,
            "/api/orgs/acme/kubeconfig",
            Some(json!({"content": no_ctx})),
        )
        .await;
    assert_eq!(st, 422);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("current-context"),
        "{v}"
    );
    let (st, v) = me
        .json(
            Method::PUT,
            "/api/orgs/acme/kubeconfig",
            Some(json!({"content": "clusters: [oops\n  token: not-a-real-token"})),
        )
        .await;
    assert_eq!(st, 422);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not valid YAML"), "{msg}");
    assert!(!msg.contains("not-a-real-token"), "secret echoed: {msg}");
    assert_eq!(std::fs::read_to_string(&kc_path).unwrap(), GOOD_KUBECONFIG);
    let (st, v) = me
        .json(Method::GET, "/api/orgs/acme/kubeconfig", None)
        .await;
    assert_eq!((st, v["valid"].clone()), (200, json!(true)));
    assert!(!v.to_string().contains("not-a-real-token"));
    // Talosconfig.
    let (st, _) = me
        .json(
            Method::PUT,
            "/api/orgs/acme/talosconfig",
            Some(json!({"content": "context: c\ncontexts:\n  c:\n    endpoints: [10.0.0.5]\n"})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = me
        .json(
            Method::PUT,
            "/api/orgs/acme/talosconfig",
            Some(json!({"content": "context: c\ncontexts:\n  c: {}\n"})),
        )
        .await;
    assert_eq!(st, 422);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no endpoints"));
    let tc_path = env.dash_state.join("talos/acme.talosconfig");
    assert!(tc_path.is_file());
    let (st, _) = me
        .json(
            Method::PUT,
            "/api/orgs/ghost/kubeconfig",
            Some(json!({"content": GOOD_KUBECONFIG})),
        )
        .await;
    assert_eq!(st, 404);

    // Provision input is validated before any stream starts.
    let (st, v) = me
        .json(
            Method::POST,
            "/api/orgs/acme/provision/stream",
            Some(json!({"cpNodes": ["not a host"]})),
        )
        .await;
    assert_eq!(st, 422);
    assert_eq!(v["error"]["field"], "cpNodes");

    // Delete needs the confirmation and removes the config files.
    let (st, v) = me
        .json(
            Method::DELETE,
            "/api/orgs/acme",
            Some(json!({"confirm": "wrong"})),
        )
        .await;
    assert_eq!((st, v["error"]["field"].clone()), (422, json!("confirm")));
    assert!(kc_path.is_file());
    let (st, _) = me
        .json(
            Method::DELETE,
            "/api/orgs/acme",
            Some(json!({"confirm": "acme"})),
        )
        .await;
    assert_eq!(st, 200);
    assert!(!kc_path.exists() && !tc_path.exists());
    let (_, list) = me.json(Method::GET, "/api/orgs", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_runs_to_succeeded_and_live_events_resume() {
    let env = start(|_| {}).await;
    let me = Browserish::login(&env.dash_url).await;
    let (st, _) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 201);

    let mut live = me.sse(me.req(Method::GET, "/api/events")).await;
    let (st, task) = me
        .json(
            Method::POST,
            "/api/schedule",
            Some(json!({"org": "acme", "task": "hello from the dashboard"})),
        )
        .await;
    assert_eq!(st, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();

    // Follow the live stream until the task succeeds.
    let mut seen: Vec<(u64, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no Succeeded event: {seen:?}");
        let Some(m) = next_msg(&mut live, 60).await else {
            panic!("live stream ended: {seen:?}")
        };
        let v: Value = serde_json::from_str(&m.data).unwrap();
        let ev_id: u64 = m.id.as_deref().unwrap().parse().unwrap();
        if m.event == "task" && v["taskId"] == id.as_str() {
            assert_eq!(v["id"].as_u64(), Some(ev_id));
            seen.push((ev_id, v.clone()));
            if v["status"] == "Succeeded" {
                break;
            }
        }
    }
    assert!(seen.len() >= 2, "scheduled .. succeeded: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));

    // The task, its detail and its log (the `cat` runner echoes the task text).
    let (st, d) = me
        .json(Method::GET, &format!("/api/tasks/{id}"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(d["status"], "Succeeded");
    assert!(d["workload"]["resource"].as_str().is_some(), "{d}");
    let (_, logs) = me
        .json(Method::GET, &format!("/api/tasks/{id}/logs"), None)
        .await;
    assert!(logs
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["line"] == "hello from the dashboard"));
    // Live log relay ends with `end`.
    let mut log = me
        .sse(me.req(Method::GET, &format!("/api/tasks/{id}/logs/stream")))
        .await;
    let mut lines = Vec::new();
    loop {
        let m = next_msg(&mut log, 20).await.expect("log stream item");
        if m.event == "end" {
            break;
        }
        lines.push(serde_json::from_str::<Value>(&m.data).unwrap()["line"].clone());
    }
    assert!(lines.contains(&json!("hello from the dashboard")));
    let (st, _) = me
        .json(Method::GET, "/api/tasks/not_an_id/logs/stream", None)
        .await;
    assert_eq!(st, 422);

    // Resume: a new stream from the first event's id replays every later event of the task.
    let first = seen[0].0;
    let mut resumed = me
        .sse(
            me.req(Method::GET, "/api/events")
                .header("last-event-id", first.to_string()),
        )
        .await;
    let mut replay = Vec::new();
    while replay.len() < seen.len() - 1 {
        let m = next_msg(&mut resumed, 10).await.expect("replayed event");
        let ev_id: u64 = m.id.as_deref().unwrap().parse().unwrap();
        assert!(
            ev_id > first,
            "replayed an event at or before Last-Event-ID"
        );
        let v: Value = serde_json::from_str(&m.data).unwrap();
        if v["taskId"] == id.as_str() {
            replay.push(ev_id);
        }
    }
    assert_eq!(
        replay,
        seen[1..].iter().map(|s| s.0).collect::<Vec<_>>(),
        "resume delivers exactly the missed events"
    );
    let (st, _) = me.json(Method::GET, "/api/events?after=abc", None).await;
    assert_eq!(st, 400);

    // Cancel a finished task: the orchestrator's refusal comes through as JSON.
    let (st, v) = me
        .json(Method::POST, &format!("/api/tasks/{id}/cancel"), None)
        .await;
    assert!(st == 200 || st == 409, "{st} {v}");
    // Unknown org: the orchestrator's error is relayed with its status.
    let (st, v) = me
        .json(
            Method::POST,
            "/api/schedule",
            Some(json!({"org": "nobody", "task": "x"})),
        )
        .await;
    assert!(st == 404 || st == 400 || st == 422, "{st} {v}");
    assert!(v["error"]["message"].as_str().is_some());
    // Agents are listed.
    let (st, agents) = me.json(Method::GET, "/api/agents", None).await;
    assert_eq!(st, 200);
    assert!(agents
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["taskId"] == id.as_str()));
}

/// A setup flow that records what it got and reports two steps.
struct FakeMesh {
    got: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl SetupFlow for FakeMesh {
    async fn run(&self, req: SetupRequest, events: ProgressSender) -> FlowResult {
        events.begin("setup", &["headscale", "join"]).await;
        events.step("headscale", "starting").await;
        events.log(Some("headscale"), "listening").await;
        events.step_done("headscale", None).await;
        events.step("join", "joining").await;
        if let SetupRequest::Connect { auth_key, .. } = &req {
            self.got.lock().unwrap().push(auth_key.expose().to_owned());
        }
        events.step_done("join", Some("joined".into())).await;
        Ok(json!({"hostname": "laptop"}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_stream_validates_then_streams_and_records() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let env = start(move |cfg| cfg.setup_flow = Some(Arc::new(FakeMesh { got: g }))).await;
    let me = Browserish::login(&env.dash_url).await;
    let (_, v) = me.json(Method::GET, "/api/setup", None).await;
    assert_eq!(v["configured"], false);

    // Invalid input: 422 JSON, not a stream.
    for (body, field) in [
        (
            json!({"mode": "connect", "hostname": "laptop", "loginServer": "nope", "authKey": "k"}),
            "loginServer",
        ),
        (
            json!({"mode": "connect", "hostname": "laptop", "loginServer": "https://hs.test"}),
            "authKey",
        ),
        (
            json!({"mode": "create", "hostname": "Bad Host", "serverUrl": "https://hs.test"}),
            "hostname",
        ),
        (json!({"mode": "teleport", "hostname": "laptop"}), "mode"),
    ] {
        let resp = me
            .req(Method::POST, "/api/setup/stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{body}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["field"], field, "{v}");
    }

    let mut rx = me
        .sse(me.req(Method::POST, "/api/setup/stream").json(&json!({
            "mode": "connect", "hostname": "laptop",
            "loginServer": "https://hs.test:8443", "authKey": "tskey-secret-123"
        })))
        .await;
    let mut names = Vec::new();
    while let Some(m) = next_msg(&mut rx, 10).await {
        names.push(m.event.clone());
        if m.event == "done" {
            let v: Value = serde_json::from_str(&m.data).unwrap();
            assert_eq!(v["ok"], true);
            assert!(!m.data.contains("tskey-secret-123"));
        }
    }
    assert_eq!(
        names,
        ["begin", "step", "log", "stepDone", "step", "stepDone", "done"]
    );
    assert_eq!(got.lock().unwrap().as_slice(), ["tskey-secret-123"]);
    // Recorded, without the key.
    let (_, v) = me.json(Method::GET, "/api/setup", None).await;
    assert_eq!(v["configured"], true);
    assert_eq!(v["setup"]["server"], "https://hs.test:8443");
    assert!(!v.to_string().contains("tskey"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_stream_reports_orchestrator_refusal_as_step_error() {
    // The real provision flow against this orchestrator. If it has no bootstrap API (or no
    // Talos), the stream must end with stepError + done{ok:false} and a clear message.
    let env = start(|_| {}).await;
    let me = Browserish::login(&env.dash_url).await;
    me.json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    let mut rx = me
        .sse(
            me.req(Method::POST, "/api/orgs/acme/provision/stream")
                .json(&json!({"cpNodes": ["127.0.0.1"], "workerNodes": []})),
        )
        .await;
    let mut events = Vec::new();
    while let Some(m) = next_msg(&mut rx, 60).await {
        events.push((m.event.clone(), m.data.clone()));
    }
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("begin"));
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done");
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["ok"], false, "{events:?}");
    assert!(events.iter().any(|e| e.0 == "stepError"), "{events:?}");
    assert!(!data.contains(ORCH_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_uses_a_generated_certificate_and_secure_cookies() {
    let env = start(|cfg| cfg.tls = true).await;
    assert!(env.dash_url.starts_with("https://"), "{}", env.dash_url);
    let key = env.dash_state.join("tls/dashboard.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut me = Browserish::new(&env.dash_url);
    me.http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let (st, _) = me.json(Method::GET, "/api/health", None).await;
    assert_eq!(st, 200);
    let resp = me
        .req(Method::POST, "/api/login")
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Without trusting the self-signed certificate, clients refuse it; plain HTTP gets nothing.
    assert!(reqwest::get(format!("{}/api/health", env.dash_url))
        .await
        .is_err());
    let plain = env.dash_url.replace("https://", "http://");
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .get(format!("{plain}/api/health"))
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_is_set_shown_and_removed_through_the_orchestrator() {
    let env = start(|_| {}).await;
    let me = Browserish::login(&env.dash_url).await;
    let (st, v) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 201, "{v}");
    let orch = guildnet_core::client::OrchestratorClient::new(
        &env.orch_url,
        guildnet_core::token::Secret::new(ORCH_TOKEN),
    )
    .unwrap();
    let acme = guildnet_core::names::OrgName::new("acme").unwrap();

    // No pool yet.
    let (st, v) = me.json(Method::GET, "/api/orgs/acme/pool", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["org"], "acme");
    assert_eq!(v["waiting"], 0);
    assert!(v.get("backend").is_none(), "{v}");

    // Set: the orchestrator (and its backend) has the pool the dashboard set.
    let spec = json!({"size": 2, "image": "registry.example/agent:1", "runner": "claude", "idleSeconds": 600});
    let (st, v) = me
        .json(Method::PUT, "/api/orgs/acme/pool", Some(spec.clone()))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["backend"]["spec"], spec, "{v}");
    assert_eq!(v["backend"]["desired"], 2, "{v}");
    let seen = orch.pool(&acme).await.unwrap();
    let b = seen.backend.expect("backend pool");
    assert_eq!(b.spec.expect("spec").runner.as_deref(), Some("claude"));
    // Shown: what the CLI or API set elsewhere is what the dashboard shows.
    orch.set_pool(
        &acme,
        &guildnet_core::pool::PoolSpec {
            size: 5,
            image: None,
            runner: None,
            idle_seconds: None,
        },
    )
    .await
    .unwrap();
    let (st, v) = me.json(Method::GET, "/api/orgs/acme/pool", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["backend"]["spec"], json!({"size": 5}), "{v}");

    // Bad input: the field is named, nothing reaches the orchestrator.
    for (body, field) in [
        (json!({"size": 101}), "size"),
        (json!({"size": 1, "idleSeconds": 0}), "idleSeconds"),
        (json!({"size": 1, "image": "has space"}), "image"),
        (json!({"size": 1, "runner": ""}), "runner"),
    ] {
        let (st, v) = me
            .json(Method::PUT, "/api/orgs/acme/pool", Some(body.clone()))
            .await;
        assert_eq!(st, 422, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (st, v) = me
        .json(
            Method::PUT,
            "/api/orgs/acme/pool",
            Some(json!({"size": 1, "replicas": 3})),
        )
        .await;
    assert!(st == 400 || st == 422, "{st} {v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("replicas"),
        "{v}"
    );
    let (_, v) = me.json(Method::GET, "/api/orgs/acme/pool", None).await;
    assert_eq!(v["backend"]["spec"], json!({"size": 5}), "unchanged: {v}");
    // An unknown org, a bad name.
    let (st, v) = me
        .json(Method::PUT, "/api/orgs/nope/pool", Some(json!({"size": 1})))
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = me.json(Method::GET, "/api/orgs/Bad_Name/pool", None).await;
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (422, json!("name")),
        "{v}"
    );

    // Without a session: refused.
    let anon = Browserish::new(&env.dash_url);
    let (st, _) = anon.json(Method::GET, "/api/orgs/acme/pool", None).await;
    assert_eq!(st, 401);

    // Removed.
    let (st, v) = me.json(Method::DELETE, "/api/orgs/acme/pool", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"org": "acme", "removed": true}));
    assert!(orch.pool(&acme).await.unwrap().backend.is_none());
    let (st, v) = me.json(Method::DELETE, "/api/orgs/acme/pool", None).await;
    assert_eq!((st, v["removed"].clone()), (200, json!(false)), "{v}");

    // The page has the pool controls.
    let page = me
        .req(Method::GET, "/")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for id in [
        "pool-size",
        "pool-image",
        "pool-runner",
        "pool-idle",
        "pool-save",
        "pool-delete",
    ] {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "{id} missing from the page"
        );
    }
}
