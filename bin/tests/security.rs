//! Bad input and security against the real `guildnet-orchestrator` binary over HTTP (local
//! backend, real agents, the testbed's real code-server for editors):
//!
//! - every route of `routes()` x malformed JSON, oversized bodies, wrong types, unknown fields,
//!   hostile names (`../x`, very long, unicode, NUL) in bodies, paths and queries: a 4xx with a
//!   JSON error naming the field or the problem, never a 5xx;
//! - the auth matrix: every route x {no token, wrong token, another task's agent token, an
//!   expired editor session};
//! - the editor proxy reaches only opened editors: unopened ports, absolute-URI targets, `Host:`
//!   tricks, `..` and encoded slashes, `X-Forwarded-Prefix` from a non-admin caller, and an
//!   editor address an agent registers itself;
//! - no secret (admin token, agent tokens, editor password and session, forge token) appears in
//!   any log of a full run at debug level.

mod common;

use common::*;
use guildnet_core::names::{AgentName, OrgName, TaskId};
use guildnet_core::orchestrator::http::{routes, MAX_BODY_BYTES};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- helpers ------------------------------------------------------------------------------------

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The value of `key` in a process's environment.
fn env_of(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A running task's id, agent name and agent token (read from the agent's environment, which is
/// how the local backend hands it over).
struct Running {
    id: TaskId,
    agent: AgentName,
    token: String,
    pid: i32,
}

async fn running_task(orch: &Orchestrator, script: &str) -> Running {
    let c = orch.client();
    let t = c
        .schedule(&OrgName::new("acme").unwrap(), script, None)
        .await
        .unwrap();
    let cur = wait_running(&c, &t.id).await;
    let pid = orch.agent_pid(&t.id);
    let token = env_of(pid, "GUILDNET_AGENT_TOKEN").expect("agent token in the agent's env");
    Running {
        id: t.id,
        agent: cur.agent.unwrap(),
        token,
        pid,
    }
}

/// One response: status, content type, body.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        // A 2xx on a stream route would never end: do not read it.
        let body = if content_type.starts_with("text/event-stream") {
            String::new()
        } else {
            r.text().await.unwrap_or_default()
        };
        Reply {
            status,
            content_type,
            body,
        }
    }

    fn error(&self) -> Option<Value> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        let e = v.get("error")?.clone();
        let msg_ok = e["message"].as_str().is_some_and(|m| !m.is_empty());
        (e["code"].is_string() && msg_ok).then_some(e)
    }

    /// `Ok` when this is a 4xx (other than 401/403) with a JSON error; with `field`, the error
    /// must name it.
    fn refused(&self, field: Option<&str>) -> Result<(), String> {
        let short: String = self.body.chars().take(300).collect();
        if !(400..500).contains(&self.status) || self.status == 401 || self.status == 403 {
            return Err(format!("HTTP {} {short}", self.status));
        }
        if !self.content_type.starts_with("application/json") {
            return Err(format!(
                "HTTP {} with content type {:?}: {short}",
                self.status, self.content_type
            ));
        }
        let e = self
            .error()
            .ok_or_else(|| format!("HTTP {} without a JSON error: {short}", self.status))?;
        if let Some(f) = field {
            let named = e["field"].as_str() == Some(f)
                || e["message"].as_str().is_some_and(|m| m.contains(f));
            if !named {
                return Err(format!(
                    "HTTP {}: error does not name {f}: {e}",
                    self.status
                ));
            }
        }
        Ok(())
    }
}

/// Sends raw bytes on a fresh connection and returns the whole response text.
async fn raw(port: u16, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A TCP listener that only counts connections: nothing the proxy does may ever reach it.
async fn canary() -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nCANARY",
                )
                .await;
        }
    });
    (port, hits)
}

fn hostile_names() -> Vec<(&'static str, String)> {
    vec![
        ("dot-dot", "../x".into()),
        ("dot-dot-deep", "../../../../etc/passwd".into()),
        ("very long", "a".repeat(10_000)),
        ("unicode", "ünïcødé-名前-💥".into()),
        ("nul", "nul\u{0}byte".into()),
        ("empty", String::new()),
        ("newline", "a\nb".into()),
        ("uppercase", "ACME".into()),
    ]
}

/// Path segments that must not pass as ids or names (already percent-encoded).
fn hostile_segments() -> Vec<(&'static str, String)> {
    vec![
        ("encoded ../x", "..%2Fx".into()),
        ("encoded ..", "%2e%2e".into()),
        ("very long", "a".repeat(5_000)),
        ("unicode", "%C3%BCn%C3%AFc%C3%B8d%C3%A9".into()),
        ("nul", "a%00b".into()),
        ("invalid utf-8", "%FF%FE".into()),
        ("space", "a%20b".into()),
        ("emoji", "%F0%9F%92%A5".into()),
    ]
}

fn admin_route(path: &str) -> bool {
    !path.starts_with("/agent/") && path != "/health" && path != "/openapi.json"
}

/// A well-formed body for each POST route (never sent as is: only mutated).
fn shape(path: &str, agent: &AgentName) -> Option<Value> {
    let ln = json!([{"seq": 1, "stream": "stdout", "line": "x", "ts": "2026-01-01T00:00:00Z"}]);
    Some(match path {
        "/orgs" => json!({"name": "acme2"}),
        "/orgs/bootstrap" => json!({"org": "acme", "cpNodes": ["10.0.0.1"]}),
        "/kubeconfig/generate" => json!({"org": "acme", "endpoint": "https://10.0.0.1:6443"}),
        "/schedule" => json!({"org": "acme", "task": "x"}),
        "/agents/editor/open" | "/agents/editor/close" => json!({"name": agent, "org": "acme"}),
        "/agent/register" | "/agent/claim" => json!({"agent": agent}),
        "/agent/heartbeat" => json!({"agent": agent, "fencing": 1}),
        "/agent/log" => json!({"agent": agent, "fencing": 1, "lines": ln}),
        "/agent/complete" => json!({"agent": agent, "fencing": 1, "status": "Succeeded"}),
        _ => return None,
    })
}

fn wrong_type(v: &Value) -> Value {
    match v {
        Value::String(_) => json!(12345),
        Value::Number(_) => json!("one"),
        Value::Array(_) => json!({"not": "a list"}),
        Value::Object(_) => json!([1, 2]),
        Value::Bool(_) => json!("yes"),
        Value::Null => json!(1),
    }
}

// ---- bad input --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_input_with_a_json_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start(&dir.path().join("state"), free_port());
    orch.wait_ready().await;
    let r = running_task(&orch, "sleep 120").await;
    let base = orch.url();
    let h = http();
    let mut failures: Vec<String> = Vec::new();
    let mut checked = 0usize;

    // A warm pool agent's token for org acme (what the operator puts in a pool's Secret).
    let pool_token = guildnet_core::pool::token::PoolKeys::from_admin_token(
        &guildnet_core::token::Secret::new(TOKEN),
    )
    .mint(&OrgName::new("acme").unwrap())
    .expose()
    .to_owned();
    let token_for = |path: &str| -> Option<String> {
        if path.starts_with("/pool/") {
            Some(pool_token.clone())
        } else if path.starts_with("/agent/") {
            Some(r.token.clone())
        } else if admin_route(path) {
            Some(TOKEN.to_owned())
        } else {
            None
        }
    };
    let concrete = |p: &str| {
        p.replace("{id}", r.id.as_str())
            .replace("{name}", r.agent.as_str())
            .replace("{org}", "acme")
    };
    macro_rules! check {
        ($what:expr, $req:expr, $field:expr) => {{
            checked += 1;
            match $req.send().await {
                Ok(resp) => {
                    let reply = Reply::from(resp).await;
                    if let Err(e) = reply.refused($field) {
                        failures.push(format!("{}: {e}", $what));
                    }
                }
                Err(e) => failures.push(format!("{}: no response: {e}", $what)),
            }
        }};
    }

    let all_routes = routes();
    for (m, p) in &all_routes {
        let path = concrete(p);
        let url = format!("{base}{path}");
        let tok = token_for(p);
        let with_auth = |b: reqwest::RequestBuilder| match &tok {
            Some(t) => b.bearer_auth(t),
            None => b,
        };

        // Wrong methods: 405 with a JSON error (a method no route of this path has).
        let other = ["DELETE", "PUT", "PATCH"]
            .into_iter()
            .find(|o| {
                !all_routes
                    .iter()
                    .any(|(rm, rp)| rp == p && rm.eq_ignore_ascii_case(o))
            })
            .unwrap_or("PATCH");
        check!(
            format!("{other} {p}"),
            with_auth(h.request(reqwest::Method::from_bytes(other.as_bytes()).unwrap(), &url)),
            None
        );

        // Hostile path parameters.
        if p.contains('{') {
            for (what, seg) in hostile_segments() {
                let hp = p
                    .replace("{id}", &seg)
                    .replace("{name}", &seg)
                    .replace("{org}", &seg);
                let b = if *m == "get" {
                    h.get(format!("{base}{hp}"))
                } else {
                    h.post(format!("{base}{hp}"))
                };
                check!(
                    format!("{m} {p} with {what} in the path"),
                    with_auth(b),
                    None
                );
            }
        }

        // Hostile and malformed query strings on the routes that read one.
        let query_fields: &[&str] = match p.as_str() {
            "/tasks" => &["limit", "status", "org"],
            "/tasks/{id}/logs" | "/tasks/{id}/logs/stream" | "/agents/{name}/logs/stream" => {
                &["after", "limit"]
            }
            "/events" | "/audit" => &["after", "limit"],
            _ => &[],
        };
        if !query_fields.is_empty() {
            let mut queries = vec![
                "zzUnknown=1".to_owned(),
                "limit=abc".into(),
                "limit=-1".into(),
                "after=-5".into(),
                "after=99999999999999999999999999".into(),
                "after=1e3".into(),
            ];
            if *p == "/tasks" {
                queries.push("status=Bogus".into());
                queries.push("org=..%2Fx".into());
                queries.push(format!("org={}", "a".repeat(5000)));
                queries.push("limit=0".into());
                queries.push("limit=100000".into());
            }
            if *p == "/audit" || *p == "/tasks/{id}/logs" {
                queries.push("limit=0".into());
                queries.push("limit=100000000".into());
            }
            for q in queries {
                if q.starts_with("after") && !query_fields.contains(&"after") {
                    continue;
                }
                check!(
                    format!("{m} {p}?{q}"),
                    with_auth(h.get(format!("{url}?{q}"))),
                    None
                );
            }
            // A bad Last-Event-ID on the stream routes.
            if p.ends_with("/stream") || *p == "/events" {
                for bad in ["-1", "abc", "1.5", "99999999999999999999999"] {
                    check!(
                        format!("{m} {p} with Last-Event-ID {bad}"),
                        with_auth(h.get(&url)).header("last-event-id", bad),
                        Some("Last-Event-ID")
                    );
                }
            }
        }

        if *m != "post" {
            continue;
        }
        let post = |body: Vec<u8>| {
            with_auth(h.post(&url))
                .header("content-type", "application/json")
                .body(body)
        };
        // Malformed JSON, invalid UTF-8, trailing data, deep nesting, an array, null.
        let deep = format!("{}1{}", "{\"a\":".repeat(20_000), "}".repeat(20_000));
        let malformed: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", b"{\"org\": ".to_vec()),
            ("not json", b"hello".to_vec()),
            ("invalid utf-8", b"{\"org\": \"\xff\xfe\"}".to_vec()),
            ("two objects", b"{}{}".to_vec()),
            ("deep nesting", deep.into_bytes()),
            ("array", b"[1,2,3]".to_vec()),
            ("null", b"null".to_vec()),
            ("number", b"42".to_vec()),
            ("nul byte", b"{\"org\":\x00}".to_vec()),
        ];
        for (what, body) in malformed {
            check!(format!("POST {p} {what}"), post(body), None);
        }
        // Oversized bodies: just over the limit, with and without Content-Length.
        let big = format!("{{\"task\": \"{}\"}}", "x".repeat(MAX_BODY_BYTES + 1 - 12));
        check!(
            format!("POST {p} oversized"),
            post(big.clone().into_bytes()),
            None
        );
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
            .into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok(c.to_vec()))
            .collect();
        check!(
            format!("POST {p} oversized, chunked"),
            with_auth(h.post(&url))
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks
                ))),
            None
        );
        // Wrong content type.
        if p != "/tasks/{id}/cancel" {
            check!(
                format!("POST {p} as text/plain"),
                with_auth(h.post(&url))
                    .header("content-type", "text/plain")
                    .body("{}"),
                None
            );
        }
        let Some(Value::Object(valid)) = shape(p, &r.agent) else {
            continue;
        };
        // Unknown fields are named.
        let mut unknown = valid.clone();
        unknown.insert("zzUnknown".into(), json!(1));
        check!(
            format!("POST {p} unknown field"),
            post(serde_json::to_vec(&unknown).unwrap()),
            Some("zzUnknown")
        );
        // Each field: missing, wrong type, hostile strings.
        for (k, v) in &valid {
            let mut missing = valid.clone();
            missing.remove(k);
            // A field with a default may be left out; then the request must not be a 5xx.
            checked += 1;
            match post(serde_json::to_vec(&missing).unwrap()).send().await {
                Ok(resp) => {
                    let reply = Reply::from(resp).await;
                    if reply.status >= 500 {
                        failures.push(format!("POST {p} without {k}: HTTP {}", reply.status));
                    }
                }
                Err(e) => failures.push(format!("POST {p} without {k}: {e}")),
            }
            let mut wt = valid.clone();
            wt.insert(k.clone(), wrong_type(v));
            check!(
                format!("POST {p} {k} of the wrong type"),
                post(serde_json::to_vec(&wt).unwrap()),
                Some(k.as_str())
            );
            let strings = matches!(v, Value::String(_))
                || v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
            // The task text is free text (only size-limited); everything else is a name or an
            // address.
            if !strings || (p == "/schedule" && k == "task") {
                continue;
            }
            for (what, s) in hostile_names() {
                // Node addresses are host names, which are case-insensitive.
                if what == "uppercase" && (k == "cpNodes" || k == "workerNodes") {
                    continue;
                }
                let mut hb = valid.clone();
                let hv = if v.is_array() { json!([s]) } else { json!(s) };
                hb.insert(k.clone(), hv);
                check!(
                    format!("POST {p} {k} = {what}"),
                    post(serde_json::to_vec(&hb).unwrap()),
                    None
                );
            }
        }
    }
    // No route 404s or panics its way out: the orchestrator is still healthy.
    assert!(orch.client().health().await.is_ok());
    let log = std::fs::read_to_string(orch.state.with_extension("log")).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "a handler panicked: see {log:.2000}"
    );
    let _ = r.pid;
    eprintln!("bad input: {checked} requests, {} failures", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {checked} bad requests were not refused cleanly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- auth matrix and the editor proxy --------------------------------------------------------

/// Starts an orchestrator whose agents run the testbed's code-server, and a running task whose
/// editor is up.
async fn with_editor(dir: &Path, envs: &[(&str, &str)]) -> (Orchestrator, Running) {
    let code_server = guildnet_testbed::bin("code-server").expect("testbed code-server");
    let orch = Orchestrator::start_with(
        &dir.join("state"),
        free_port(),
        &[
            "--code-server",
            code_server.to_str().unwrap(),
            AGENTS_AS_ME[0],
            AGENTS_AS_ME[1],
        ],
        envs,
    );
    orch.wait_ready().await;
    let r = running_task(&orch, "echo editor-task; sleep 300").await;
    let c = orch.client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = c.agent(&r.agent).await.unwrap();
        if a.state["editor"]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "editor never ran: {}", a.state);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (orch, r)
}

/// Opens the agent's editor; returns (proxy port, `name=value` session cookie).
async fn open_editor(orch: &Orchestrator, agent: &AgentName) -> (u16, String) {
    let e = orch.open_editor(agent).await;
    (e.port, e.session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_and_editor_proxy_confinement() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, a) = with_editor(dir.path(), &[]).await;
    let b = running_task(&orch, "sleep 300").await;
    let (canary_port, canary_hits) = canary().await;
    let h = http();
    let base = orch.url();
    let (port, cookie) = open_editor(&orch, &a.agent).await;

    // The session works while the editor is open.
    let ok = h
        .get(format!("{base}/editor/proxy/{port}/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(
        ok.status().is_success() || ok.status().is_redirection(),
        "{}",
        ok.status()
    );

    // --- editor proxy confinement (admin caller: only the target may be refused) ---
    let admin_get = |path: String| h.get(format!("{base}{path}")).bearer_auth(TOKEN);
    for bad in [
        format!("/editor/proxy/{canary_port}/"),
        format!("/editor/proxy/{}/", port.wrapping_add(1)),
        "/editor/proxy/0/".into(),
        "/editor/proxy/65536/".into(),
        "/editor/proxy/-1/".into(),
        "/editor/proxy/abc/".into(),
        "/editor/proxy/%2e%2e/".into(),
        format!("/editor/proxy/127.0.0.1:{canary_port}/"),
        format!("/editor/proxy/{port}%2F..%2F{canary_port}/"),
    ] {
        let r = Reply::from(admin_get(bad.clone()).send().await.unwrap()).await;
        assert!(
            (400..500).contains(&r.status) && r.error().is_some(),
            "{bad}: HTTP {} {}",
            r.status,
            r.body
        );
    }
    // Path tricks under an open port stay on that editor (they may 404 there).
    for trick in [
        format!("..%2F..%2F127.0.0.1:{canary_port}/"),
        format!("%2F%2F127.0.0.1:{canary_port}/"),
        format!("@127.0.0.1:{canary_port}/"),
        format!("http://127.0.0.1:{canary_port}/"),
        "..;/..;/tasks".into(),
        format!("x%0d%0aHost:%20127.0.0.1:{canary_port}"),
        "%2e%2e/%2e%2e/%2e%2e/tasks".into(),
    ] {
        let r = Reply::from(
            admin_get(format!("/editor/proxy/{port}/{trick}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(r.status < 500 || r.status == 502, "{trick}: {}", r.status);
        assert!(!r.body.contains("CANARY"), "{trick} reached another host");
    }
    // Raw requests: `..` left unnormalised, absolute-form targets, Host tricks, CONNECT.
    let op = orch.port;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let raws = [
        format!("GET /editor/proxy/{port}/../../../tasks HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
        format!("GET http://127.0.0.1:{canary_port}/editor/proxy/{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{canary_port}\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET http://127.0.0.1:{canary_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{canary_port}\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET /editor/proxy/{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{canary_port}\r\nX-Forwarded-Host: 127.0.0.1:{canary_port}\r\n{auth}Connection: close\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{canary_port} HTTP/1.1\r\nHost: 127.0.0.1:{canary_port}\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET //127.0.0.1:{canary_port}/ HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    ];
    for req in &raws {
        let resp = raw(op, req.as_bytes()).await;
        let st = raw_status(&resp);
        assert!(
            st != 0 && st < 500,
            "{req:?} -> {}",
            resp.chars().take(300).collect::<String>()
        );
        assert!(!resp.contains("CANARY"), "{req:?} reached another host");
        // The raw `..` did not escape to the orchestrator's own admin API.
        assert!(
            !resp.contains("\"attempt\""),
            "{req:?} reached /tasks: {resp:.300}"
        );
    }
    // X-Forwarded-Prefix: ignored for a cookie caller, checked for the admin.
    let r = h
        .get(format!("{base}/editor/proxy/{port}/"))
        .header("cookie", &cookie)
        .header("x-forwarded-prefix", "/evil")
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 500);
    for (k, v) in r.headers() {
        let v = v.to_str().unwrap_or("");
        assert!(!v.contains("/evil"), "{k}: {v}");
    }
    let body = r.text().await.unwrap_or_default();
    assert!(!body.contains("/evil/"), "the prefix reached the page");
    let r = Reply::from(
        admin_get(format!("/editor/proxy/{port}/"))
            .header("x-forwarded-prefix", "//evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.refused(Some("X-Forwarded-Prefix")).unwrap();
    // The session cookie of one port does not open another.
    let other = Reply::from(
        h.get(format!("{base}/editor/proxy/{}/", port.wrapping_add(1)))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(other.status, 401, "{}", other.body);

    // --- close the editor: its session is now expired ---
    let closed = h
        .post(format!("{base}/agents/editor/close"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": a.agent, "org": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200);

    // --- the auth matrix ---
    let mut routes: Vec<(String, String)> = routes()
        .into_iter()
        .map(|(m, p)| {
            (
                m,
                p.replace("{id}", a.id.as_str())
                    .replace("{name}", a.agent.as_str())
                    .replace("{org}", "acme"),
            )
        })
        .collect();
    for m in ["get", "post"] {
        routes.push((m.into(), format!("/editor/proxy/{port}/")));
        routes.push((m.into(), format!("/editor/proxy/{port}/static/x.js")));
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (m, path) in &routes {
        if path == "/health" || path == "/openapi.json" {
            continue;
        }
        let agent_route = path.starts_with("/agent/");
        let body = shape(path, &a.agent).unwrap_or(json!({}));
        let creds: [(&str, Option<String>, Option<String>); 4] = [
            ("no token", None, None),
            ("wrong token", Some("gnt.not-a-token".into()), None),
            ("another task's agent token", Some(b.token.clone()), None),
            ("expired editor session", None, Some(cookie.clone())),
        ];
        for (what, bearer, cookie) in creds {
            let mut req = h.request(
                reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap(),
                format!("{base}{path}"),
            );
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            if m == "post" {
                req = req.json(&body);
            }
            checked += 1;
            let r = Reply::from(req.send().await.unwrap()).await;
            // Another task's agent token authenticates as that task; on its own protocol it
            // must be refused as not that task's agent (409), never act on task A.
            let expected: &[u16] = if agent_route && what == "another task's agent token" {
                &[409]
            } else {
                &[401]
            };
            if !expected.contains(&r.status) || r.error().is_none() {
                failures.push(format!(
                    "{m} {path} with {what}: HTTP {} {}",
                    r.status,
                    r.body.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    // Task A is untouched by all of that.
    let after = orch.client().task(&a.id).await.unwrap();
    assert_eq!(
        (after.status, after.fencing, after.claims),
        (guildnet_core::model::TaskStatus::Running, 1, 1),
        "{after:?}"
    );
    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "the canary was reached"
    );
    eprintln!(
        "auth matrix: {checked} requests, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = (a.pid, b.pid);
}

/// An agent may register any `editorAddress`; the orchestrator must not become a proxy to it
/// when the backend has no editor of its own for that agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registered_editor_address_cannot_point_the_proxy_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start(&dir.path().join("state"), free_port());
    orch.wait_ready().await;
    let r = running_task(&orch, "sleep 120").await;
    let (canary_port, hits) = canary().await;
    let h = http();
    let base = orch.url();
    // The agent's credentials (what a runner able to read its agent's environment has).
    let reg = h
        .post(format!("{base}/agent/register"))
        .bearer_auth(&r.token)
        .json(&json!({"agent": r.agent, "editorAddress": format!("127.0.0.1:{canary_port}")}))
        .send()
        .await
        .unwrap();
    eprintln!(
        "re-register with a foreign editor address: HTTP {}",
        reg.status()
    );
    let open = h
        .post(format!("{base}/agents/editor/open"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": r.agent, "org": "acme"}))
        .send()
        .await
        .unwrap();
    let status = open.status().as_u16();
    let body = open.text().await.unwrap_or_default();
    if status == 200 {
        let v: Value = serde_json::from_str(&body).unwrap();
        let path = v["path"].as_str().unwrap_or("/");
        let page = h
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        assert!(
            !page.contains("CANARY") && hits.load(Ordering::SeqCst) == 0,
            "the editor proxy forwarded to an address the agent chose (127.0.0.1:{canary_port})"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

// ---- secrets never in logs --------------------------------------------------------------------

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log_of_a_full_run() {
    const FORGE_TOKEN: &str = "ghp_suiteForgeTokenDoNotLog0123456789";
    let dir = tempfile::tempdir().unwrap();
    let (mut orch, a) = with_editor(
        dir.path(),
        &[
            ("RUST_LOG", "debug"),
            ("GUILDNET_FORGE_API", "http://127.0.0.1:9"),
            ("GUILDNET_FORGE_TOKEN", FORGE_TOKEN),
        ],
    )
    .await;
    let mut secrets: Vec<(String, String)> = vec![
        ("admin token".into(), TOKEN.into()),
        ("forge token".into(), FORGE_TOKEN.into()),
        ("agent token A".into(), a.token.clone()),
    ];
    if let Some(pw) = env_of(a.pid, "CODE_SERVER_PASSWORD") {
        secrets.push(("editor password".into(), pw));
    }
    let h = http();
    let base = orch.url();
    // The editor: open, use (the proxy logs in with the password), close.
    let (port, cookie) = open_editor(&orch, &a.agent).await;
    secrets.push((
        "editor session".into(),
        cookie.split_once('=').unwrap().1.to_owned(),
    ));
    let _ = h
        .get(format!("{base}/editor/proxy/{port}/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    // Tasks that succeed, fail and get cancelled; their agents' tokens are secrets too.
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();
    let ok = running_task(&orch, "echo working; sleep 2; echo done").await;
    secrets.push(("agent token ok".into(), ok.token.clone()));
    let bad = running_task(&orch, "echo failing; sleep 2; exit 3").await;
    secrets.push(("agent token bad".into(), bad.token.clone()));
    // Credentials presented in the wrong places (log lines about refusals must not echo them).
    for (path, tok) in [
        ("/agent/heartbeat", TOKEN.to_owned()),
        ("/tasks", ok.token.clone()),
        ("/agent/complete", format!("{}x", a.token)),
    ] {
        let _ = h
            .post(format!("{base}{path}"))
            .bearer_auth(&tok)
            .json(&json!({"agent": a.agent, "fencing": 1, "status": "Succeeded"}))
            .send()
            .await;
    }
    let _ = h
        .get(format!("{base}/editor/proxy/{port}/"))
        .header("cookie", format!("guildnet_editor={}", a.token))
        .send()
        .await;
    let _ = h
        .post(format!("{base}/agents/editor/close"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": a.agent, "org": "acme"}))
        .send()
        .await;
    wait_terminal(&c, &[ok.id.clone(), bad.id.clone()], 60).await;
    c.cancel(&a.id).await.unwrap();
    let _ = c.schedule(&acme, "echo last", None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    orch.kill9();

    let mut files = vec![orch.state.with_extension("log")];
    files_under(&orch.state, &mut files);
    let mut scanned = 0;
    let mut leaks = Vec::new();
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_log = name.ends_with(".log") || name.contains(".log.");
        let is_db = name.contains(".db") || name.ends_with("-wal");
        if !is_log && !is_db {
            continue;
        }
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        scanned += bytes.len();
        let text = String::from_utf8_lossy(&bytes);
        for (what, s) in &secrets {
            // The whole secret and its random part (after the last '.').
            let tail = s.rsplit('.').next().unwrap_or(s);
            let needles: Vec<&str> = if tail.len() >= 16 && tail != s {
                vec![s.as_str(), tail]
            } else {
                vec![s.as_str()]
            };
            if needles.iter().any(|n| text.contains(n)) {
                leaks.push(format!("{what} in {}", f.display()));
            }
        }
    }
    eprintln!(
        "secret scan: {} secrets, {} files, {scanned} bytes",
        secrets.len(),
        files.len()
    );
    assert!(
        scanned > 10_000,
        "too little log to prove anything: {scanned} bytes"
    );
    assert!(leaks.is_empty(), "secrets leaked: {leaks:?}");
}

// ---- slow and idle connections -------------------------------------------------------------------

/// Whether the server closes `s` within `limit` (reads and discards whatever comes first).
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed_and_streams_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start_with(
        &dir.path().join("state"),
        free_port(),
        &["--http-idle-secs", "1"],
        &[],
    );
    orch.wait_ready().await;
    let addr = ("127.0.0.1", orch.port);

    // 200 connections that never send a byte, one that trickles a header, one idle after a
    // keep-alive response: all closed by the server, none kept forever.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"GET /health HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    // An SSE stream lasts longer than the idle timeout and keeps delivering.
    let c = orch.client();
    let mut events = http()
        .get(format!("{}/events", orch.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

    let t0 = Instant::now();
    for s in silent.iter_mut() {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a silent connection was kept"
        );
    }
    assert!(
        closed_within(&mut trickle, Duration::from_secs(5)).await,
        "a trickled header was kept"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)).await,
        "an idle keep-alive connection was kept"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed too early: {waited:?}"
    );

    // The stream is still open 2 s later: a task scheduled now shows up on it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let task = c
        .schedule(&OrgName::new("acme").unwrap(), "echo late", None)
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(task.id.as_str()) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no event on the stream: {seen}");
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("stream ended: {other:?} after {seen}"),
        }
    }
    // And the server still answers new connections.
    assert!(c.health().await.is_ok());
}
