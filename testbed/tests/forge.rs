//! Smoke test of the Gitea handle: the server starts with an admin token, a private repository
//! is created through the API, git clones and pushes over HTTP with the token in a header
//! passed through git's environment (never in the URL), pull requests are created, a second
//! one for the same branches answers 409, and a wrong token is refused.

use guildnet_testbed::forge::{Gitea, ADMIN_USER};
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, auth: Option<(&str, &str)>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("git");
    cmd.args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0");
    if let Some((url, token)) = auth {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("guildnet:{token}"));
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", format!("http.{url}/.extraHeader"))
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Basic {basic}"),
            );
    }
    cmd.output().expect("run git")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_serves_git_over_http_and_pull_requests() {
    let g = Gitea::start().await.expect("gitea starts");
    let v = g.get("/version").await.unwrap();
    assert_eq!(v["version"], "1.26.0", "{v}");
    let me = g.get("/user").await.unwrap();
    assert_eq!(me["login"], ADMIN_USER);

    let repo = g.create_repo("smoke", true).await.unwrap();
    assert_eq!(repo.default_branch, "main");
    assert_eq!(
        repo.clone_url,
        format!("{}/{ADMIN_USER}/smoke.git", g.url())
    );
    let work = tempfile::tempdir().unwrap();

    // A private repository: no token, no clone.
    let anon = git(work.path(), None, &["clone", "-q", &repo.clone_url, "anon"]);
    assert!(!anon.status.success());
    // A wrong token: refused.
    let wrong = git(
        work.path(),
        Some((g.url(), "0000000000000000000000000000000000000000")),
        &["clone", "-q", &repo.clone_url, "wrong"],
    );
    assert!(!wrong.status.success());
    // Gitea answers 401, and git, which may not prompt, asks for a user name it cannot read.
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("could not read Username"), "{err}");
    assert!(!work.path().join("wrong").join("README.md").exists());

    // The admin token in a header: clone, commit, push a branch.
    let ok = git(
        work.path(),
        Some((g.url(), g.token())),
        &["clone", "-q", &repo.clone_url, "co"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let co = work.path().join("co");
    assert!(co.join("README.md").is_file());
    std::fs::write(co.join("new.txt"), "hello\n").unwrap();
    assert!(git(&co, None, &["checkout", "-q", "-b", "feature/x"])
        .status
        .success());
    assert!(git(&co, None, &["add", "new.txt"]).status.success());
    assert!(git(&co, None, &["commit", "-q", "-m", "add new.txt"])
        .status
        .success());
    let push = git(
        &co,
        Some((g.url(), g.token())),
        &["push", "-q", "origin", "feature/x"],
    );
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    assert_eq!(
        g.raw_file(&repo, "new.txt", "feature/x").await.unwrap(),
        "hello\n"
    );

    // A pull request; the same again is a 409.
    let path = format!("/repos/{}/{}/pulls", repo.owner, repo.name);
    let body = serde_json::json!({"title": "t", "head": "feature/x", "base": "main"});
    let pr = g.post(&path, &body).await.unwrap();
    assert_eq!(pr["number"], 1, "{pr}");
    let again = g.post(&path, &body).await.unwrap_err().to_string();
    assert!(again.contains("409"), "{again}");
    assert_eq!(g.pulls(&repo).await.unwrap().len(), 1);
}
