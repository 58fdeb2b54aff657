//! The agent's delivery on a real forge: Gitea from the testbed, the real `guildnet-orchestrator`
//! and `guildnet-agent` binaries with the local backend.
//!
//! - A private Gitea repository is cloned over HTTP with the forge token (given to the
//!   orchestrator in a 0600 file, handed to the agent as secret environment, sent by git in a
//!   header scoped to Gitea's URL), the runner changes it, the agent commits on
//!   `guildnet/<task id>`, pushes and opens a pull request: Gitea's API shows it, the task has
//!   its `prUrl`, `last_pr.json` records it, and no log line, task field or URL holds the token.
//! - A retried attempt (the orchestrator killed while the first agent reports, that agent killed
//!   after it opened the pull request, the task requeued after the restart) pushes again and
//!   reuses the open pull request: Gitea still has exactly one.
//! - A wrong token fails the task with a clear reason and no token anywhere.

mod common;

use common::*;
use guildnet_core::context::RepoSpec;
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::ScheduleRequest;
use guildnet_testbed::forge::{Gitea, GiteaRepo};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A model-provider key handed to runners as secret environment: it must never reach a log.
const MODEL_KEY: &str = "sk-test-model-key-4f2a9d71";

fn write_private(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn forge_args(gitea: &Gitea, token_file: &Path) -> Vec<String> {
    vec![
        "--forge-api".into(),
        gitea.url().into(),
        "--forge-kind".into(),
        "gitea".into(),
        "--forge-token-file".into(),
        token_file.display().to_string(),
        "--git-author-name".into(),
        "GuildNet Test Agent".into(),
        "--git-author-email".into(),
        "agent@guildnet.invalid".into(),
        "--agent-secret-env".into(),
        "OPENAI_API_KEY".into(),
    ]
}

fn start_orchestrator(state: &Path, port: u16, args: &[String]) -> Orchestrator {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Orchestrator::start_with(state, port, &args, &[("OPENAI_API_KEY", MODEL_KEY)])
}

async fn log_lines(
    c: &guildnet_core::client::OrchestratorClient,
    id: &guildnet_core::names::TaskId,
) -> Vec<String> {
    c.logs(id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect()
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} contains a secret:\n{text}");
    }
}

/// Everything under `dir` (files only), as text, for a secret scan.
fn all_text(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

async fn pulls(gitea: &Gitea, repo: &GiteaRepo) -> Vec<Value> {
    gitea.pulls(repo).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_clones_pushes_and_opens_a_pr_on_gitea_and_a_retry_reuses_it() {
    let gitea = Gitea::start().await.expect("gitea");
    let repo = gitea.create_repo("app", true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("forge.token");
    write_private(&token_file, &format!("{}\n", gitea.token()));
    let state = dir.path().join("state");
    let port = free_port();
    let args = forge_args(&gitea, &token_file);
    let mut orch = start_orchestrator(&state, port, &args);
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();
    let secrets = [gitea.token(), MODEL_KEY];

    // --- First task: clone, change, push, pull request. --------------------------------------
    let script = ": Add a line to the README\n\
                  echo \"forge token visible: ${GUILDNET_FORGE_TOKEN:-no}\"\n\
                  echo \"model key: $OPENAI_API_KEY\"\n\
                  git remote -v\n\
                  git config --get-regexp 'http.*extraheader' || echo 'no extraheader in .git/config'\n\
                  echo 'written by the agent' >> README.md\n";
    let req = ScheduleRequest {
        repo: Some(RepoSpec::parse(&format!("{}@main", repo.clone_url))),
        ..ScheduleRequest::new(acme.clone(), script)
    };
    let t = c.schedule_request(&req).await.unwrap();
    assert_eq!(t.context.repo.as_ref().unwrap().url, repo.clone_url);
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 120)
        .await
        .remove(0);
    let logs = log_lines(&c, &t.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}\n{logs:#?}");
    assert!(
        logs.iter().any(|l| l == "forge token visible: no"),
        "{logs:#?}"
    );
    // The model key reached the runner, and the agent redacted it from the log.
    assert!(logs.iter().any(|l| l == "model key: ***"), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l == "no extraheader in .git/config"),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.starts_with("origin\t") && l.contains(&repo.clone_url)),
        "{logs:#?}"
    );

    let branch = format!("guildnet/{}", t.id);
    let prs = pulls(&gitea, &repo).await;
    assert_eq!(prs.len(), 1, "{prs:#?}");
    let pr = &prs[0];
    assert_eq!(pr["head"]["ref"], branch.as_str(), "{pr}");
    assert_eq!(pr["base"]["ref"], "main", "{pr}");
    assert_eq!(pr["state"], "open", "{pr}");
    assert_eq!(pr["title"], ": Add a line to the README", "{pr}");
    let pr_url = pr["html_url"].as_str().unwrap().to_owned();
    assert_eq!(done.pr_url.as_deref(), Some(pr_url.as_str()));
    assert!(
        logs.iter().any(|l| l == &format!("pull request: {pr_url}")),
        "{logs:#?}"
    );
    let readme = gitea.raw_file(&repo, "README.md", &branch).await.unwrap();
    assert!(readme.ends_with("written by the agent\n"), "{readme:?}");
    let commit = gitea
        .get(&format!(
            "/repos/{}/{}/commits?sha={}&limit=1",
            repo.owner,
            repo.name,
            urlencode(&branch)
        ))
        .await
        .unwrap();
    assert_eq!(
        commit[0]["commit"]["author"]["name"], "GuildNet Test Agent",
        "{commit}"
    );
    let sha = commit[0]["sha"].as_str().unwrap().to_owned();
    let kinds: Vec<(&str, &str)> = done
        .artifacts
        .iter()
        .map(|a| (a.kind.as_str(), a.uri.as_str()))
        .collect();
    assert!(kinds.contains(&("branch", branch.as_str())), "{kinds:?}");
    assert!(kinds.contains(&("commit", sha.as_str())), "{kinds:?}");
    assert!(kinds.contains(&("pr", pr_url.as_str())), "{kinds:?}");
    let last = guildnet_core::state_dir::StatePaths::new(&state)
        .local_agent_dir(&t.id)
        .join("state")
        .join("last_pr.json");
    let rec: Value = serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    assert_eq!(rec["url"], pr_url.as_str());
    assert_eq!(rec["branch"], branch.as_str());
    assert_eq!(rec["commit"], sha.as_str());

    // No secret in the task as the API shows it, in the logs, or in the agent's files
    // (workspace, .git/config, agent.log, last_pr.json).
    let listed = reqwest::Client::new()
        .get(format!("{}/tasks", orch.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_no_secret("GET /tasks", &listed, &secrets);
    assert_no_secret("the log", &logs.join("\n"), &secrets);
    for (p, text) in
        all_text(&guildnet_core::state_dir::StatePaths::new(&state).local_agent_dir(&t.id))
    {
        assert_no_secret(&p.display().to_string(), &text, &secrets);
    }

    // --- Second task: a retried attempt reuses the open pull request. ------------------------
    // The runner waits for a file, so the test can take the orchestrator down while it runs.
    let gate = dir.path().join("gate");
    let script = format!(
        ": Retry me\nwhile [ ! -e {gate} ]; do sleep 0.2; done\necho \"attempt $TASK_ID\" >> retried.txt\n",
        gate = gate.display()
    );
    let req = ScheduleRequest {
        repo: Some(RepoSpec {
            url: repo.clone_url.clone(),
            git_ref: Some("main".into()),
        }),
        ..ScheduleRequest::new(acme.clone(), script)
    };
    let t2 = c.schedule_request(&req).await.unwrap();
    let first = wait_running(&c, &t2.id).await;
    assert_eq!(first.attempt, 1);
    let branch2 = format!("guildnet/{}", t2.id);
    // Orchestrator down; the runner finishes; the agent pushes, opens the pull request, and
    // keeps retrying its completion.
    orch.kill9();
    std::fs::write(&gate, "go").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pr2 = loop {
        let open: Vec<Value> = pulls(&gitea, &repo)
            .await
            .into_iter()
            .filter(|p| p["head"]["ref"] == branch2.as_str())
            .collect();
        if let Some(p) = open.into_iter().next() {
            break p;
        }
        assert!(Instant::now() < deadline, "no pull request for {branch2}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // That agent is lost before it could report.
    let pid = orch.agent_pid(&t2.id);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    // Restart: the lease expires, the task is requeued, attempt 2 runs the same work.
    let orch = start_orchestrator(&state, port, &args);
    orch.wait_ready().await;
    let c = orch.client();
    let done2 = wait_terminal(&c, std::slice::from_ref(&t2.id), 120)
        .await
        .remove(0);
    let logs2 = log_lines(&c, &t2.id).await;
    assert_eq!(done2.status, TaskStatus::Succeeded, "{done2:?}\n{logs2:#?}");
    assert!(done2.attempt >= 2, "{done2:?}");
    let pr2_url = pr2["html_url"].as_str().unwrap();
    assert_eq!(done2.pr_url.as_deref(), Some(pr2_url), "{logs2:#?}");
    assert!(
        logs2
            .iter()
            .any(|l| l == &format!("pull request (already open, reused): {pr2_url}")),
        "{logs2:#?}"
    );
    let for_branch: Vec<Value> = pulls(&gitea, &repo)
        .await
        .into_iter()
        .filter(|p| p["head"]["ref"] == branch2.as_str())
        .collect();
    assert_eq!(for_branch.len(), 1, "{for_branch:#?}");
    // The branch holds the second attempt's commit (a forced push of the same change).
    let retried = gitea
        .raw_file(&repo, "retried.txt", &branch2)
        .await
        .unwrap();
    assert_eq!(retried, format!("attempt {}\n", t2.id));
    assert_no_secret("the retried task's log", &logs2.join("\n"), &secrets);
    // Nor in the orchestrator's own log.
    let orch_log = std::fs::read_to_string(state.with_extension("log")).unwrap_or_default();
    assert_no_secret("the orchestrator's log", &orch_log, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_forge_token_fails_clearly_without_showing_it() {
    let gitea = Gitea::start().await.expect("gitea");
    let repo = gitea.create_repo("private", true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = "0123456789abcdef0123456789abcdef01234567";
    let token_file = dir.path().join("forge.token");
    write_private(&token_file, wrong);
    let state = dir.path().join("state");
    let orch = start_orchestrator(&state, free_port(), &forge_args(&gitea, &token_file));
    orch.wait_ready().await;
    let c = orch.client();
    let req = ScheduleRequest {
        repo: Some(RepoSpec {
            url: repo.clone_url.clone(),
            git_ref: None,
        }),
        ..ScheduleRequest::new(OrgName::new("acme").unwrap(), "echo never runs")
    };
    let t = c.schedule_request(&req).await.unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 90)
        .await
        .remove(0);
    let logs = log_lines(&c, &t.id).await;
    assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
    let reason = done.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("the forge token was refused") && reason.contains("HTTP 401"),
        "{reason}"
    );
    assert!(reason.contains("cannot clone"), "{reason}");
    assert!(!logs.iter().any(|l| l == "never runs"), "{logs:#?}");
    assert_no_secret("the reason", &reason, &[wrong]);
    assert_no_secret("the log", &logs.join("\n"), &[wrong]);
    for (p, text) in
        all_text(&guildnet_core::state_dir::StatePaths::new(&state).local_agent_dir(&t.id))
    {
        assert_no_secret(&p.display().to_string(), &text, &[wrong]);
    }
    assert!(gitea.pulls(&repo).await.unwrap().is_empty());
}

fn urlencode(s: &str) -> String {
    s.replace('/', "%2F")
}
