//! The dashboard's schedule API passes a repository, a ref, context files and a runner hint to
//! the orchestrator, which checks them (a URL with credentials is refused, naming `repo.url`)
//! and whose agent clones the repository and writes the files before the runner starts.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_form_body_carries_repo_ref_files_and_hint() {
    let env = start(|_| {}).await;
    let me = Browserish::login(&env.dash_url).await;
    let (st, _) = me
        .json(Method::POST, "/api/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(st, 201);

    let bare = env.dir.path().join("app.git");
    let seed = env.dir.path().join("seed");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::create_dir_all(&seed).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("README.md"), "# app\n").unwrap();
    git(&seed, &["add", "README.md"]);
    git(&seed, &["commit", "-q", "-m", "initial"]);
    git(
        &seed,
        &["push", "-q", bare.to_str().unwrap(), "main:refs/heads/main"],
    );
    let url = format!("file://{}", bare.display());

    let (st, task) = me
        .json(
            Method::POST,
            "/api/schedule",
            Some(json!({
                "org": "acme",
                "task": "read the notes",
                "agentHint": "reviewer",
                "repo": {"url": url, "ref": "main"},
                "files": [{"path": "notes/todo.md", "content": "- check the README\n"}],
            })),
        )
        .await;
    assert_eq!(st, 201, "{task}");
    assert_eq!(task["agentHint"], "reviewer");
    assert_eq!(task["context"]["repo"], json!({"url": url, "ref": "main"}));
    assert_eq!(task["context"]["files"][0]["path"], "notes/todo.md");
    let id = task["id"].as_str().unwrap().to_owned();

    // The agent cloned the repository and wrote the file before the runner ran.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (st, t) = me
            .json(Method::GET, &format!("/api/tasks/{id}"), None)
            .await;
        assert_eq!(st, 200, "{t}");
        if ["Succeeded", "Failed", "Cancelled"].contains(&t["status"].as_str().unwrap_or("")) {
            break t;
        }
        assert!(Instant::now() < deadline, "task did not finish: {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "Succeeded", "{done}");
    let (st, logs) = me
        .json(Method::GET, &format!("/api/tasks/{id}/logs"), None)
        .await;
    assert_eq!(st, 200, "{logs}");
    let lines: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("cloning file://")),
        "{lines:?}"
    );
    assert!(lines.contains(&"wrote 1 context file(s)"), "{lines:?}");

    // Credentials in the URL: refused by the orchestrator, field named, nothing recorded.
    let (st, v): (u16, Value) = me
        .json(
            Method::POST,
            "/api/schedule",
            Some(json!({
                "org": "acme",
                "task": "x",
                "repo": {"url": "https://bot:ghp_topsecret1@forge.example/a/b.git"},
            })),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["field"], "repo.url", "{v}");
    assert!(!v.to_string().contains("ghp_topsecret1"));
}
