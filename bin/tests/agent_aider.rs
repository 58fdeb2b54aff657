//! A real open-source coding CLI as the runner: aider (PyPI `aider-chat`, from the testbed),
//! chosen per task through the `aider` runner preset, run by the real `guildnet-agent` in a
//! clone of a real Gitea repository. Its edit is committed, pushed and becomes a pull request.
//!
//! The one simulated part is the model vendor: aider talks to an OpenAI-compatible endpoint this
//! test serves on loopback (`/v1/chat/completions`, streamed or not), which answers with a
//! scripted reply in aider's "whole file" edit format and records what it was sent. Everything
//! else is real, which checks the runner contract with a real CLI: the working directory (aider
//! finds the checkout's git repository and writes there), the task text on stdin (it reaches the
//! model), the environment (endpoint, model, the API key from a 0600 file, redacted in the log),
//! the exit code and the streamed output.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use guildnet_core::context::RepoSpec;
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::ScheduleRequest;
use guildnet_testbed::forge::Gitea;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const MODEL_KEY: &str = "sk-scripted-model-key-93e1c0a7";
const TASK: &str = "Create HELLO.md that greets the reader";
/// The scripted model's answer, in aider's "whole" edit format.
const REPLY: &str = "HELLO.md\n```\nHello from aider, via GuildNet\n```\n";

type Requests = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// The scripted OpenAI-compatible chat endpoint (the simulated model vendor).
async fn completions(
    State(seen): State<Requests>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push((auth, body.clone()));
    let model = body["model"].as_str().unwrap_or("scripted").to_owned();
    if body["stream"].as_bool() == Some(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_764_000_000,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let sse = format!(
            "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
            chunk(json!({"role": "assistant", "content": REPLY}), Value::Null),
            chunk(json!({}), json!("stop"))
        );
        ([("content-type", "text/event-stream")], sse).into_response()
    } else {
        (
            StatusCode::OK,
            Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_764_000_000,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112}
            })),
        )
            .into_response()
    }
}

async fn scripted_model() -> (String, Requests) {
    let seen: Requests = Arc::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}/v1"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aider_edits_the_checkout_and_its_change_becomes_a_pull_request() {
    let aider = guildnet_testbed::bin("aider").expect("aider (scripts/testbed/install.sh aider)");
    let gitea = Gitea::start().await.expect("gitea");
    let repo = gitea.create_repo("greeter", true).await.unwrap();
    let (model_url, seen) = scripted_model().await;

    let dir = tempfile::tempdir().unwrap();
    let write_private = |name: &str, content: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    let token_file = write_private("forge.token", gitea.token());
    let key_file = write_private("openai.key", MODEL_KEY);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let path = format!(
        "{}:{}",
        aider.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let state = dir.path().join("state");
    let args = [
        "--named-runner".to_owned(),
        "aider".to_owned(),
        "--named-runner".to_owned(),
        "shell=preset:script".to_owned(),
        "--forge-api".to_owned(),
        gitea.url().to_owned(),
        "--forge-kind".to_owned(),
        "gitea".to_owned(),
        "--forge-token-file".to_owned(),
        token_file.display().to_string(),
        "--agent-env".to_owned(),
        format!("OPENAI_API_BASE={model_url}"),
        "--agent-env".to_owned(),
        "AIDER_MODEL=openai/guildnet-scripted".to_owned(),
        "--agent-secret-file".to_owned(),
        format!("OPENAI_API_KEY={}", key_file.display()),
        AGENTS_AS_ME[0].to_owned(),
        AGENTS_AS_ME[1].to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let home_s = home.display().to_string();
    let orch = Orchestrator::start_with(
        &state,
        free_port(),
        &args,
        &[("PATH", path.as_str()), ("HOME", home_s.as_str())],
    );
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();

    // With named runners configured, a hint that names none is refused.
    let mut typo = ScheduleRequest::new(acme.clone(), TASK);
    typo.agent_hint = Some("aidr".into());
    let e = c.schedule_request(&typo).await.unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(422), Some("agentHint")),
        "{e}"
    );

    let mut req = ScheduleRequest::new(acme, TASK);
    req.agent_hint = Some("aider".into());
    req.repo = Some(RepoSpec::parse(&format!("{}@main", repo.clone_url)));
    let t = c.schedule_request(&req).await.unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 240)
        .await
        .remove(0);
    let logs: Vec<String> = c
        .logs(&t.id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}\n{logs:#?}");
    assert_eq!(done.exit_code, Some(0));
    assert!(logs.iter().any(|l| l == "runner: aider"), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l == "runner started: aider"),
        "{logs:#?}"
    );
    // aider's own output, streamed line by line.
    assert!(
        logs.iter().any(|l| l.starts_with("Aider v0.86.2")),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .any(|l| l == "Model: openai/guildnet-scripted with whole edit format"),
        "{logs:#?}"
    );
    assert!(
        logs.iter().any(|l| l == "Applied edit to HELLO.md"),
        "{logs:#?}"
    );

    // The model got the task text (from stdin) and the key (from the secret file).
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.is_empty());
    let (auth, body) = &requests[0];
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {MODEL_KEY}").as_str())
    );
    assert_eq!(body["model"], "guildnet-scripted");
    let user = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap();
    assert!(user["content"].as_str().unwrap().contains(TASK), "{user}");

    // The edit is committed on guildnet/<id>, pushed to Gitea, and a pull request is open.
    let branch = format!("guildnet/{}", t.id);
    assert_eq!(
        gitea.raw_file(&repo, "HELLO.md", &branch).await.unwrap(),
        "Hello from aider, via GuildNet\n"
    );
    let ignore = gitea.raw_file(&repo, ".gitignore", &branch).await.unwrap();
    assert!(ignore.contains(".aider*"), "{ignore:?}");
    let prs = gitea.pulls(&repo).await.unwrap();
    assert_eq!(prs.len(), 1, "{prs:#?}");
    assert_eq!(prs[0]["head"]["ref"], branch.as_str());
    assert_eq!(prs[0]["title"], TASK);
    assert_eq!(done.pr_url.as_deref(), prs[0]["html_url"].as_str());
    // The chat history went to the workspace, not into the pull request.
    let files = gitea
        .get(&format!(
            "/repos/{}/{}/contents?ref={}",
            repo.owner,
            repo.name,
            branch.replace('/', "%2F")
        ))
        .await
        .unwrap();
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".aider")), "{names:?}");

    // The key never reached the log.
    assert!(!logs.iter().any(|l| l.contains(MODEL_KEY)), "{logs:#?}");
}
