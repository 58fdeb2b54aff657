//! The GitHub and GitLab forge clients against recorded-shape replies (see
//! `tests/fixtures/forge/README.md`: written to the vendors' documented shapes, not captured
//! live, since neither server can run here). A loopback server replays a script of exchanges
//! in order and records each request, so the tests check both what the clients send (method,
//! path and its encoding, query, auth header, body) and what they make of each reply: a new
//! pull request, an open one reused on lookup, the "already exists" race (GitHub 422, GitLab
//! 409) resolved by a second lookup, another 422 reported, a refused token. The Gitea client is
//! tested against a real Gitea in `bin/tests/forge_gitea.rs`.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Router;
use guildnet_core::agent::forge::{
    endpoints, Forge, ForgeError, ForgeKind, ForgeSettings, GitHubForge, GitLabForge, PullRequest,
};
use guildnet_core::token::Secret;
use serde_json::Value;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "ghp_fixtureToken0123456789";

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/forge/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// One scripted exchange: the request expected and the reply.
struct Exchange {
    method: Method,
    /// Path as sent (still percent-encoded).
    path: String,
    status: u16,
    body: String,
}

fn ex(method: Method, path: &str, status: u16, body: String) -> Exchange {
    Exchange {
        method,
        path: path.to_owned(),
        status,
        body,
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Default)]
struct Replay {
    script: Arc<Mutex<Vec<Exchange>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Serves `script` on a loopback port; returns its base URL and the recorder.
async fn replay(script: Vec<Exchange>) -> (String, Replay) {
    let r = Replay {
        script: Arc::new(Mutex::new(script.into_iter().rev().collect())),
        seen: Arc::default(),
    };
    let state = r.clone();
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                state.seen.lock().unwrap().push(Seen {
                    method: method.clone(),
                    path: uri.path().to_owned(),
                    query: uri.query().unwrap_or("").to_owned(),
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                let Some(next) = state.script.lock().unwrap().pop() else {
                    return (
                        StatusCode::IM_A_TEAPOT,
                        "no more scripted exchanges".to_owned(),
                    );
                };
                if next.method != method || next.path != uri.path() {
                    return (
                        StatusCode::IM_A_TEAPOT,
                        format!(
                            "expected {} {}, got {method} {}",
                            next.method,
                            next.path,
                            uri.path()
                        ),
                    );
                }
                (StatusCode::from_u16(next.status).unwrap(), next.body)
            }
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}"), r)
}

impl Replay {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn done(&self) -> bool {
        self.script.lock().unwrap().is_empty()
    }
}

fn pr() -> PullRequest {
    PullRequest {
        title: "Fix the flaky login test".into(),
        head: "guildnet/t-1".into(),
        base: "main".into(),
        body: "Opened by GuildNet agent agent-t-1-1 for task t-1.".into(),
    }
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---- GitHub -------------------------------------------------------------------------------

const GH_PULLS: &str = "/repos/acme/app/pulls";

fn github(base: &str) -> GitHubForge {
    GitHubForge::new(base, "acme/app", Secret::new(TOKEN)).unwrap()
}

#[tokio::test]
async fn github_creates_a_pull_request_when_none_is_open() {
    let (base, r) = replay(vec![
        ex(Method::GET, GH_PULLS, 200, "[]".into()),
        ex(
            Method::POST,
            GH_PULLS,
            201,
            fixture("github/pr_created.json"),
        ),
    ])
    .await;
    let opened = github(&base).open_pull_request(&pr()).await.unwrap();
    assert_eq!(opened.url, "https://github.com/acme/app/pull/42");
    assert_eq!(opened.number, Some(42));
    assert!(!opened.reused);
    assert!(r.done());
    let seen = r.seen();
    assert_eq!(
        query_pairs(&seen[0].query),
        [
            ("head".to_owned(), "acme:guildnet/t-1".to_owned()),
            ("base".to_owned(), "main".to_owned()),
            ("state".to_owned(), "open".to_owned())
        ]
    );
    for s in &seen {
        assert_eq!(
            s.headers["authorization"],
            format!("Bearer {TOKEN}").as_str()
        );
        assert_eq!(s.headers["accept"], "application/vnd.github+json");
        assert_eq!(s.headers["x-github-api-version"], "2022-11-28");
        assert!(s.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("guildnet-agent/"));
    }
    assert_eq!(seen[1].method, Method::POST);
    assert!(seen.iter().all(|s| s.path == GH_PULLS), "{seen:?}");
    assert_eq!(seen[1].body["head"], "guildnet/t-1");
    assert_eq!(seen[1].body["base"], "main");
    assert_eq!(seen[1].body["title"], "Fix the flaky login test");
    assert!(seen[1].body["body"].as_str().unwrap().contains("task t-1"));
}

#[tokio::test]
async fn github_reuses_an_open_pull_request_without_creating_one() {
    let (base, r) = replay(vec![ex(
        Method::GET,
        GH_PULLS,
        200,
        fixture("github/pr_list_one.json"),
    )])
    .await;
    let opened = github(&base).open_pull_request(&pr()).await.unwrap();
    assert_eq!(opened.url, "https://github.com/acme/app/pull/42");
    assert!(opened.reused);
    assert_eq!(r.seen().len(), 1, "no POST");
}

#[tokio::test]
async fn github_422_already_exists_is_resolved_by_looking_again() {
    // Two attempts racing: the lookup saw none, the create lost.
    let (base, r) = replay(vec![
        ex(Method::GET, GH_PULLS, 200, "[]".into()),
        ex(
            Method::POST,
            GH_PULLS,
            422,
            fixture("github/pr_exists_422.json"),
        ),
        ex(
            Method::GET,
            GH_PULLS,
            200,
            fixture("github/pr_list_one.json"),
        ),
    ])
    .await;
    let opened = github(&base).open_pull_request(&pr()).await.unwrap();
    assert_eq!(opened.number, Some(42));
    assert!(opened.reused);
    assert!(r.done());
}

#[tokio::test]
async fn github_other_422s_are_reported_with_the_forges_message() {
    let (base, _r) = replay(vec![
        ex(Method::GET, GH_PULLS, 200, "[]".into()),
        ex(
            Method::POST,
            GH_PULLS,
            422,
            fixture("github/no_commits_422.json"),
        ),
        ex(Method::GET, GH_PULLS, 200, "[]".into()),
    ])
    .await;
    let e = github(&base).open_pull_request(&pr()).await.unwrap_err();
    match &e {
        ForgeError::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 422);
            assert_eq!(
                message,
                "Validation Failed; No commits between main and guildnet/t-1"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn github_bad_credentials_are_an_auth_error_without_the_token() {
    let (base, _r) = replay(vec![ex(
        Method::GET,
        GH_PULLS,
        401,
        fixture("github/bad_credentials_401.json"),
    )])
    .await;
    let e = github(&base).open_pull_request(&pr()).await.unwrap_err();
    assert!(
        matches!(&e, ForgeError::Auth { status: 401, message, .. } if message == "Bad credentials"),
        "{e:?}"
    );
    assert!(!e.to_string().contains(TOKEN), "{e}");
    assert!(!format!("{e:?}").contains(TOKEN));
}

#[tokio::test]
async fn github_enterprise_server_is_reached_under_api_v3() {
    let (base, r) = replay(vec![ex(
        Method::GET,
        &format!("/api/v3{GH_PULLS}"),
        200,
        fixture("github/pr_list_one.json"),
    )])
    .await;
    // A GHE web root as a user would give it.
    let s = ForgeSettings {
        kind: ForgeKind::GitHub,
        url: base.clone(),
        token: Secret::new(TOKEN),
    };
    assert_eq!(s.endpoints().unwrap().api, format!("{base}/api/v3"));
    assert_eq!(
        s.repo_path(&format!("{base}/acme/app.git")).as_deref(),
        Some("acme/app")
    );
    let opened = s
        .connect("acme/app")
        .unwrap()
        .open_pull_request(&pr())
        .await
        .unwrap();
    assert!(opened.reused);
    assert!(r.done());
}

// ---- GitLab -------------------------------------------------------------------------------

const GL_MRS: &str = "/api/v4/projects/grp%2Fsub%2Fapp/merge_requests";

fn gitlab(base: &str) -> GitLabForge {
    GitLabForge::new(&format!("{base}/api/v4"), "grp/sub/app", Secret::new(TOKEN)).unwrap()
}

#[tokio::test]
async fn gitlab_creates_a_merge_request_for_a_nested_project() {
    let (base, r) = replay(vec![
        ex(Method::GET, GL_MRS, 200, "[]".into()),
        ex(Method::POST, GL_MRS, 201, fixture("gitlab/mr_created.json")),
    ])
    .await;
    let opened = gitlab(&base).open_pull_request(&pr()).await.unwrap();
    assert_eq!(
        opened.url,
        "https://gitlab.example/grp/sub/app/-/merge_requests/5"
    );
    assert_eq!(opened.number, Some(5));
    assert!(!opened.reused);
    let seen = r.seen();
    assert_eq!(
        query_pairs(&seen[0].query),
        [
            ("source_branch".to_owned(), "guildnet/t-1".to_owned()),
            ("target_branch".to_owned(), "main".to_owned()),
            ("state".to_owned(), "opened".to_owned())
        ]
    );
    // The project path is one segment, its '/' encoded.
    assert!(seen.iter().all(|s| s.path == GL_MRS), "{seen:?}");
    for s in &seen {
        assert_eq!(s.headers["private-token"], TOKEN);
        assert!(!s.headers.contains_key("authorization"));
    }
    assert_eq!(seen[1].body["source_branch"], "guildnet/t-1");
    assert_eq!(seen[1].body["target_branch"], "main");
    assert_eq!(seen[1].body["title"], "Fix the flaky login test");
    assert!(seen[1].body["description"]
        .as_str()
        .unwrap()
        .contains("task t-1"));
}

#[tokio::test]
async fn gitlab_409_already_exists_reuses_the_open_merge_request() {
    let (base, r) = replay(vec![
        ex(Method::GET, GL_MRS, 200, "[]".into()),
        ex(
            Method::POST,
            GL_MRS,
            409,
            fixture("gitlab/mr_exists_409.json"),
        ),
        ex(Method::GET, GL_MRS, 200, fixture("gitlab/mr_list_one.json")),
    ])
    .await;
    let opened = gitlab(&base).open_pull_request(&pr()).await.unwrap();
    assert_eq!(opened.number, Some(5));
    assert!(opened.reused);
    assert!(r.done());
}

#[tokio::test]
async fn gitlab_409_without_an_open_mr_is_reported() {
    let (base, _r) = replay(vec![
        ex(Method::GET, GL_MRS, 200, "[]".into()),
        ex(
            Method::POST,
            GL_MRS,
            409,
            fixture("gitlab/mr_exists_409.json"),
        ),
        ex(Method::GET, GL_MRS, 200, "[]".into()),
    ])
    .await;
    let e = gitlab(&base).open_pull_request(&pr()).await.unwrap_err();
    assert!(
        matches!(&e, ForgeError::Api { status: 409, message, .. }
            if message == "Another open merge request already exists for this source branch: !5"),
        "{e:?}"
    );
}

#[tokio::test]
async fn gitlab_refused_token_is_an_auth_error() {
    let (base, _r) = replay(vec![ex(
        Method::GET,
        GL_MRS,
        401,
        fixture("gitlab/unauthorized_401.json"),
    )])
    .await;
    let e = gitlab(&base).open_pull_request(&pr()).await.unwrap_err();
    assert!(
        matches!(&e, ForgeError::Auth { status: 401, message, .. } if message == "401 Unauthorized"),
        "{e:?}"
    );
    assert!(!e.to_string().contains(TOKEN));
}

#[test]
fn gitlab_settings_from_a_web_root() {
    let s = ForgeSettings {
        kind: ForgeKind::GitLab,
        url: "https://gitlab.example".into(),
        token: Secret::new(TOKEN),
    };
    assert_eq!(
        endpoints(ForgeKind::GitLab, &s.url).unwrap().api,
        "https://gitlab.example/api/v4"
    );
    assert_eq!(
        s.repo_path("https://gitlab.example/grp/sub/app.git")
            .as_deref(),
        Some("grp/sub/app")
    );
    assert!(GitLabForge::new("https://gitlab.example/api/v4", "app", Secret::new(TOKEN)).is_err());
}
