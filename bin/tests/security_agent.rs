//! The agent against hostile runners and repositories, with the real binaries (orchestrator on
//! the local backend, real agents, runner `sh -s` so the task text is the hostile script), one
//! test per finding of the outside review (issue 16):
//!
//! - a runner can neither read `/proc/$PPID/environ` nor find its agent's token (or the admin
//!   token) anywhere it can read, and cannot read the orchestrator's state dir, while it still
//!   reads the system and writes its workspace; the heartbeat reports the sandbox;
//! - code-server gets no agent secret in its environment and runs without privileges, and the
//!   editor still works through the proxy;
//! - a repository's symlink cannot take a context file out of the workspace;
//! - large output (200 lines of 15 KB, a 3 MB line) and a non-UTF-8 byte neither kill the runner
//!   nor requeue the task;
//! - a `setsid` child of the runner does not survive cancel;
//! - with the orchestrator gone, SIGTERM ends the agent within its shutdown bound.

mod common;

use common::*;
use guildnet_core::context::{ContextFile, RepoSpec};
use guildnet_core::model::{LogStream, TaskStatus};
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::api::ScheduleRequest;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn acme() -> OrgName {
    OrgName::new("acme").unwrap()
}

/// The value of `key` in a process's environment (the test runs as root, which may read a
/// non-dumpable process's environment; a runner may not).
fn env_of(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn is_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().unwrap_or("").split_whitespace().next() == Some("Z"))
        .unwrap_or(true)
}

/// Live processes whose environment contains `needle` (`KEY=value`).
fn processes_with_env(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && !is_gone(pid) {
            out.push(pid);
        }
    }
    out
}

/// Kills every process of a task (its environment holds `TASK_ID=<id>`: the agent, the runner
/// and all they started) when dropped, so a failing test leaves nothing running.
struct TaskProcesses(String);

impl TaskProcesses {
    fn of(id: &TaskId) -> Self {
        Self(format!("TASK_ID={id}"))
    }
}

impl Drop for TaskProcesses {
    fn drop(&mut self) {
        for pid in processes_with_env(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|x| x.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn workspace(state: &Path, id: &TaskId) -> PathBuf {
    guildnet_core::state_dir::StatePaths::new(state)
        .local_agent_dir(id)
        .join("workspace")
}

/// Every file under `dir` contains none of `needles` (returns the offenders).
fn files_containing(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                for n in needles {
                    if text.contains(n) {
                        hits.push(format!("{} contains {n:.12}…", p.display()));
                    }
                }
            }
        }
    }
    hits
}

async fn log_text(orch: &Orchestrator, id: &TaskId) -> Vec<(LogStream, String)> {
    orch.client()
        .logs(id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.stream, l.line))
        .collect()
}

/// Starts an orchestrator whose agents deny its state dir (what the local backend will pass).
async fn orchestrator(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Orchestrator {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The local backend itself tells each agent what to keep its runner out of (the state
    // dir, the other agents' directories, kubeconfigs): nothing is set here.
    let orch = Orchestrator::start_with(&state, free_port(), args, envs);
    orch.wait_ready().await;
    orch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_finds_no_secret_and_cannot_read_the_orchestrator_state() {
    let dir = tempfile::tempdir().unwrap();
    let orch = orchestrator(dir.path(), &[], &[]).await;
    let state = orch.state.clone();
    // The harness passes the admin token in the environment; put it where `guildnet up` keeps
    // it, so the runner has something to try.
    std::fs::write(state.join("orchestrator.token"), TOKEN).unwrap();
    let c = orch.client();
    // The hostile runner: waits for the test to read the token, then tries every place.
    let script = format!(
        r#"n=0; while [ ! -f go ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
OUT="$PWD/out"; mkdir -p "$OUT"
cat /proc/$PPID/environ > "$OUT/ppid-environ" 2> "$OUT/ppid-environ.err"; echo "ppid_environ=$?"
cat "$OUT/ppid-environ.err"
cat /proc/$PPID/cmdline > "$OUT/ppid-cmdline" 2>/dev/null
cat {state}/orchestrator.token > "$OUT/admin-token" 2> "$OUT/admin-token.err"; echo "admin_token=$?"
cat "$OUT/admin-token.err"
ls {state} > /dev/null 2>&1; echo "list_state=$?"
cp -r {state} "$OUT/state-copy" 2>/dev/null; echo "copy_state=$?"
for p in /proc/[0-9]*; do cat $p/environ; echo; cat $p/cmdline; echo; done > "$OUT/proc.txt" 2>/dev/null
env > "$OUT/env.txt"
ls /usr/bin > /dev/null; echo "usr_bin=$?"
echo hello > "$PWD/written.txt"; echo "workspace_write=$?"
echo "tmpdir=$TMPDIR"
echo finished
"#,
        state = state.display()
    );
    let t = c.schedule(&acme(), &script, None).await.unwrap();
    let _cleanup = TaskProcesses::of(&t.id);
    let running = wait_running(&c, &t.id).await;
    let pid = orch.agent_pid(&t.id);
    let token = env_of(pid, "GUILDNET_AGENT_TOKEN").expect("agent token (read as root)");
    let ws = workspace(&state, &t.id);
    // The heartbeat reports the sandbox (checked at the end).
    let deadline = Instant::now() + Duration::from_secs(10);
    let agent_state = loop {
        let a = c.agent(running.agent.as_ref().unwrap()).await.unwrap();
        if !a.state["sandbox"].is_null() || Instant::now() > deadline {
            break a.state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    std::fs::write(ws.join("go"), "").unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 60).await;
    let lines = log_text(&orch, &t.id).await;
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(done[0].status, TaskStatus::Succeeded, "{text:#?}");
    for want in [
        "ppid_environ=1",
        "admin_token=1",
        "list_state=2",
        "usr_bin=0",
        "workspace_write=0",
        "finished",
    ] {
        assert!(text.contains(&want), "{want} not in {text:#?}");
    }
    assert!(
        text.iter()
            .filter(|l| l.contains("Permission denied"))
            .count()
            >= 2,
        "{text:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("written.txt")).unwrap(),
        "hello\n"
    );
    // Nothing the runner could read holds the agent token or the admin token.
    let hits = files_containing(&ws.join("out"), &[&token, TOKEN]);
    assert!(hits.is_empty(), "the runner found secrets: {hits:?}");
    let env = std::fs::read_to_string(ws.join("out/env.txt")).unwrap();
    assert!(!env.contains("GUILDNET_AGENT_TOKEN"), "{env}");
    assert!(!text.iter().any(|l| l.contains(&token)));
    assert_eq!(
        agent_state["sandbox"]["landlock"], "available",
        "{agent_state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_server_gets_no_agent_secret_and_no_privileges() {
    let code_server = guildnet_testbed::bin("code-server").expect("testbed code-server");
    let dir = tempfile::tempdir().unwrap();
    let orch = orchestrator(
        dir.path(),
        &[
            "--code-server",
            code_server.to_str().unwrap(),
            AGENTS_AS_ME[0],
            AGENTS_AS_ME[1],
        ],
        &[],
    )
    .await;
    let c = orch.client();
    let t = c.schedule(&acme(), "sleep 300", None).await.unwrap();
    let _cleanup = TaskProcesses::of(&t.id);
    let cur = wait_running(&c, &t.id).await;
    let agent = cur.agent.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a = c.agent(&agent).await.unwrap();
        if a.state["editor"]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "editor never ran: {}", a.state);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pid = orch.agent_pid(&t.id);
    let token = env_of(pid, "GUILDNET_AGENT_TOKEN").expect("agent token");
    let editor: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            guildnet_core::state_dir::StatePaths::new(&orch.state)
                .local_agent_dir(&t.id)
                .join("editor.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let password = editor["password"].as_str().unwrap().to_owned();
    // code-server is the agent's child (not the runner: that one is `sh`).
    let cs = children_of(pid)
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("code-server"))
                .unwrap_or(false)
        })
        .expect("code-server process");
    let env = std::fs::read(format!("/proc/{cs}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    for (what, secret) in [
        ("agent token", token.as_str()),
        ("editor password", password.as_str()),
        ("admin token", TOKEN),
    ] {
        assert!(
            !env.contains(secret),
            "code-server's environment holds the {what}"
        );
    }
    for var in [
        "PASSWORD=",
        "GUILDNET_AGENT_TOKEN=",
        "CODE_SERVER_PASSWORD=",
    ] {
        assert!(
            !env.split('\0').any(|kv| kv.starts_with(var)),
            "{var} in code-server's environment"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{cs}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    // The editor still logs in (the proxy uses the password; code-server reads it from its
    // config file).
    let e = orch.open_editor(&agent).await;
    let page = format!("{}{}", orch.url(), e.path);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = http
        .get(&page)
        .header("cookie", &e.session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("workbench"), "not the workbench: {html:.300}");
    c.cancel(&t.id).await.unwrap();
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_symlink_cannot_take_a_context_file_outside() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // A repository whose tree holds `link -> <outside>`.
    let remote = dir.path().join("evil.git");
    std::fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "-q", "--bare", "-b", "main"]);
    let work = dir.path().join("seed");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
    git(&work, &["add", "link"]);
    git(&work, &["commit", "-q", "-m", "a link"]);
    git(&work, &["push", "-q", remote.to_str().unwrap(), "main"]);

    // git, wrapped to record the environment the agent gives it.
    let git_env = dir.path().join("git-env.txt");
    // Created beforehand: its directory holds the denied state dir, so the sandbox only covers
    // the entries that exist when git starts (see docs/AGENT.md, Sandbox).
    std::fs::write(&git_env, "").unwrap();
    let wrapper = dir.path().join("git-wrapper");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nenv >> {}\nexec git \"$@\"\n", git_env.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let wrapper_s = wrapper.display().to_string();
    // The `file://` remote and the wrapper's record file are the test user's: the agent runs as
    // that user (as `nobody`, git refuses a repository of another owner).
    let orch = orchestrator(dir.path(), &AGENTS_AS_ME, &[("GUILDNET_GIT", &wrapper_s)]).await;
    let c = orch.client();
    let mut req = ScheduleRequest::new(acme(), "echo ran");
    req.repo = Some(RepoSpec {
        url: format!("file://{}", remote.display()),
        git_ref: Some("main".into()),
    });
    req.files = vec![ContextFile {
        path: "link/pwned.txt".into(),
        content: "pwned".into(),
    }];
    let t = c.schedule_request(&req).await.unwrap();
    let _cleanup = TaskProcesses::of(&t.id);
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 60).await;
    assert!(!outside.join("pwned.txt").exists(), "written outside");
    assert_eq!(done[0].status, TaskStatus::Failed);
    let reason = done[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("context files") && reason.contains("link"),
        "{reason}"
    );
    // git ran (it cloned) and never saw the agent's credentials.
    let env = std::fs::read_to_string(&git_env).unwrap();
    assert!(
        env.contains("GIT_ALLOW_PROTOCOL="),
        "git did not run through the wrapper"
    );
    for var in [
        "GUILDNET_AGENT_TOKEN=",
        "ORCHESTRATOR_TOKEN=",
        "CODE_SERVER_PASSWORD=",
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(var)),
            "{var} in git's env"
        );
    }
    assert!(!env.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_binary_output_neither_kills_nor_requeues_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let orch = orchestrator(dir.path(), &[], &[]).await;
    let c = orch.client();
    let script = r#"i=0
while [ $i -lt 200 ]; do head -c 15000 /dev/zero | tr '\0' x; echo " $i"; i=$((i+1)); done
head -c 3000000 /dev/zero | tr '\0' y; echo
printf 'bad \377 byte\n'
echo after-binary
"#;
    let t = c.schedule(&acme(), script, None).await.unwrap();
    let _cleanup = TaskProcesses::of(&t.id);
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 120).await;
    let lines = log_text(&orch, &t.id).await;
    assert_eq!(done[0].status, TaskStatus::Succeeded, "{:?}", done[0]);
    assert_eq!(done[0].attempt, 1, "the task was requeued");
    let out: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| *s == LogStream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(
        out.iter().filter(|l| l.starts_with("xxxx")).count(),
        200,
        "15 KB lines"
    );
    let long = out.iter().find(|l| l.starts_with("yyyy")).unwrap();
    assert!(long.len() <= 16 * 1024, "{}", long.len());
    assert!(long.contains("[cut "), "{}", &long[long.len() - 60..]);
    assert!(out.contains(&"bad \u{FFFD} byte"), "{out:?}");
    assert!(out.contains(&"after-binary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_child_of_the_runner_does_not_survive_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let orch = orchestrator(dir.path(), &[], &[]).await;
    let c = orch.client();
    let t = c
        .schedule(
            &acme(),
            "setsid sleep 1000 & sh -c 'sleep 1001 & exec sleep 1002' & echo started; sleep 300",
            None,
        )
        .await
        .unwrap();
    let _cleanup = TaskProcesses::of(&t.id);
    wait_running(&c, &t.id).await;
    let marker = format!("TASK_ID={}", t.id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_text(&orch, &t.id)
        .await
        .iter()
        .any(|(_, l)| l == "started")
        || processes_with_env(&marker).len() < 4
    {
        assert!(Instant::now() < deadline, "the runner never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = orch.agent_pid(&t.id);
    c.cancel(&t.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_with_env(&marker);
        if left.is_empty() && is_gone(pid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the cancelled task left: {left:?} (agent {pid} gone: {})",
            is_gone(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_orchestrator_gone_ends_the_agent_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = orchestrator(dir.path(), &[], &[("GUILDNET_SHUTDOWN_SECS", "2")]).await;
    let c = orch.client();
    let t = c
        .schedule(&acme(), "echo started; sleep 1000", None)
        .await
        .unwrap();
    let _cleanup = TaskProcesses::of(&t.id);
    wait_running(&c, &t.id).await;
    let pid = orch.agent_pid(&t.id);
    orch.kill9();
    // Let the agent notice: a heartbeat or two fail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!is_gone(pid), "the agent ended with the orchestrator");
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The runner ends at once on SIGTERM (`sh` and `sleep`), then the shutdown budget (2 s)
    // for the last log lines; the bound leaves room for a loaded machine.
    let bound = Duration::from_secs(6);
    while !is_gone(pid) {
        assert!(
            t0.elapsed() < bound,
            "the agent still runs {:?} after SIGTERM",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("agent exited {:?} after SIGTERM", t0.elapsed());
    let marker = format!("TASK_ID={}", t.id);
    assert!(processes_with_env(&marker).is_empty());
}
