//! The agent's git work end to end, with the real binaries: a local bare repository is the
//! remote; the agent clones it (with a ref and context files), the runner changes the working
//! copy, the agent pushes `guildnet/<task id>`, writes `last_pr.json` and reports the artifacts
//! (no forge here: pull requests on a real Gitea are in agent_forge.rs). An unreachable
//! repository fails the task with a clear reason; a hostile URL is refused at schedule time.

mod common;

use common::*;
use guildnet_core::context::{ContextFile, RepoSpec};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::api::ScheduleRequest;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Seeder",
            "-c",
            "user.email=seed@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository with one commit on `main` (README.md).
fn seed_remote(root: &Path) -> std::path::PathBuf {
    let remote = root.join("acme").join("app.git");
    std::fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "-q", "--bare", "-b", "main"]);
    let work = root.join("seed");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.md"), "# app\n").unwrap();
    git(&work, &["add", "README.md"]);
    git(&work, &["commit", "-q", "-m", "initial"]);
    git(
        &work,
        &[
            "push",
            "-q",
            remote.to_str().unwrap(),
            "main:refs/heads/main",
        ],
    );
    remote
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pushes_the_task_branch_and_writes_last_pr_json() {
    let dir = tempfile::tempdir().unwrap();
    let remote = seed_remote(dir.path());
    let remote_url = format!("file://{}", remote.display());
    let state = dir.path().join("state");
    // The `file://` remote belongs to the test's user: an agent run as `nobody` may not push
    // to it (git refuses a repository of another owner: "detected dubious ownership").
    let orch = Orchestrator::start_with(&state, free_port(), &AGENTS_AS_ME, &[]);
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();

    // The runner (sh -s) sees the context file and changes the working copy.
    let script = "Add a line to the README\n\
                  cat notes/context.md\n\
                  echo 'written by the agent' >> README.md\n";
    let req = ScheduleRequest {
        repo: Some(RepoSpec {
            url: remote_url.clone(),
            git_ref: Some("main".into()),
        }),
        files: vec![ContextFile {
            path: "notes/context.md".into(),
            content: "context from the orchestrator\n".into(),
        }],
        ..ScheduleRequest::new(acme.clone(), script)
    };
    // sh -s reads the first line as a command: make it harmless.
    let req = ScheduleRequest {
        task: format!(": {}", req.task),
        ..req
    };
    let t = c.schedule_request(&req).await.unwrap();
    assert_eq!(t.context.repo.as_ref().unwrap().url, remote_url);
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 90)
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
    assert!(
        logs.iter().any(|l| l == "context from the orchestrator"),
        "{logs:#?}"
    );

    // The branch is on the remote, with the runner's change on top of main.
    let branch = format!("guildnet/{}", t.id);
    let remote_dir = remote.as_path();
    let tip = git(remote_dir, &["rev-parse", &branch]);
    let readme = git(remote_dir, &["show", &format!("{branch}:README.md")]);
    assert_eq!(readme, "# app\nwritten by the agent");
    let subject = git(remote_dir, &["log", "-1", "--format=%s", &branch]);
    assert_eq!(subject, ": Add a line to the README");
    let parent = git(remote_dir, &["rev-parse", &format!("{branch}~1")]);
    assert_eq!(parent, git(remote_dir, &["rev-parse", "main"]));
    // Context files are not committed... unless the runner wants them: here they are new files
    // in the working copy, so they are part of the change.
    let files = git(remote_dir, &["show", "--name-only", "--format=", &branch]);
    assert!(files.contains("README.md"), "{files}");

    // No forge configured: no pull request.
    assert_eq!(done.pr_url, None);
    let kinds: Vec<(&str, &str)> = done
        .artifacts
        .iter()
        .map(|a| (a.kind.as_str(), a.uri.as_str()))
        .collect();
    assert!(kinds.contains(&("branch", branch.as_str())), "{kinds:?}");
    assert!(kinds.contains(&("commit", tip.as_str())), "{kinds:?}");
    assert!(!kinds.iter().any(|(k, _)| *k == "pr"), "{kinds:?}");

    // last_pr.json in the agent's state dir.
    let last = guildnet_core::state_dir::StatePaths::new(&state)
        .local_agent_dir(&t.id)
        .join("state")
        .join("last_pr.json");
    let rec: Value = serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    assert_eq!(rec["url"], Value::Null);
    assert_eq!(rec["branch"], branch.as_str());
    assert_eq!(rec["commit"], tip.as_str());
    assert_eq!(rec["taskId"], t.id.as_str());
    assert!(
        chrono::DateTime::parse_from_rfc3339(rec["createdAt"].as_str().unwrap()).is_ok(),
        "{rec}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&last).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_repos_fail_clearly_and_hostile_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orchestrator::start(&dir.path().join("state"), free_port());
    orch.wait_ready().await;
    let c = orch.client();
    let acme = OrgName::new("acme").unwrap();

    let missing = format!("file://{}/nowhere.git", dir.path().display());
    let req = ScheduleRequest {
        repo: Some(RepoSpec {
            url: missing,
            git_ref: None,
        }),
        ..ScheduleRequest::new(acme.clone(), "echo never runs")
    };
    let t = c.schedule_request(&req).await.unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 60)
        .await
        .remove(0);
    assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
    let reason = done.reason.unwrap_or_default();
    assert!(reason.contains("cannot clone"), "{reason}");
    assert!(reason.contains("nowhere.git"), "{reason}");

    // A URL that would make git run a command is refused before anything is recorded.
    let before = c.tasks(&Default::default()).await.unwrap().len();
    let req = ScheduleRequest {
        repo: Some(RepoSpec {
            url: "ext::sh%20-c%20touch%20/tmp/pwned".into(),
            git_ref: None,
        }),
        ..ScheduleRequest::new(acme.clone(), "x")
    };
    let err = c.schedule_request(&req).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    assert_eq!(err.field(), Some("repo.url"), "{err}");
    let req = ScheduleRequest {
        files: vec![ContextFile {
            path: "../../etc/passwd".into(),
            content: String::new(),
        }],
        ..ScheduleRequest::new(acme, "x")
    };
    let err = c.schedule_request(&req).await.unwrap_err();
    assert_eq!(err.field(), Some("files[0].path"), "{err}");
    assert_eq!(c.tasks(&Default::default()).await.unwrap().len(), before);
}
