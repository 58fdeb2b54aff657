//! Regression tests for the orchestrator findings of the outside security review (issue #16),
//! against the real `guildnet-orchestrator` and `guildnet-agent` binaries (local backend):
//!
//! - a refused cross-task heartbeat writes nothing; a finished task's token writes nothing;
//! - log lines only go forward, stop at the seal, respect the byte quota;
//! - a cancelled task's log stream ends after the runner's last lines;
//! - cursors past every id replay nothing; NUL in task text is refused with the field;
//! - slow request bodies are cut; a read-only state dir and a second orchestrator on the same
//!   state dir are refused at start; database files are private from the first start;
//! - one corrupt task row does not hide the others;
//! - a backend that cannot start agents puts the org on hold (no retry storm, a reason shown).

mod common;

use common::*;
use guildnet_core::names::OrgName;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn acme() -> OrgName {
    OrgName::new("acme").unwrap()
}

/// The value of `key` in a process's environment (the test runs as the agent's user or root).
fn env_of(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every log line of a task, paging through `GET /tasks/{id}/logs`.
async fn all_logs(
    c: &guildnet_core::client::OrchestratorClient,
    id: &guildnet_core::names::TaskId,
) -> Vec<guildnet_core::model::LogLine> {
    let mut out: Vec<guildnet_core::model::LogLine> = Vec::new();
    loop {
        let after = out.last().map_or(0, |l| l.seq);
        let page = c.logs(id, after).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

async fn started(dir: &Path, args: &[&str]) -> Orchestrator {
    let o = Orchestrator::start_with(&dir.join("state"), free_port(), args, &[]);
    o.wait_ready().await;
    o
}

/// POSTs JSON as an agent; returns status and body.
async fn agent_post(o: &Orchestrator, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", o.url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn log_body(agent: &str, fencing: u64, seqs: &[u64]) -> Value {
    let lines: Vec<Value> = seqs
        .iter()
        .map(|s| json!({"seq": s, "stream": "stdout", "line": format!("forged {s}"), "ts": "2026-12-02T00:00:00Z"}))
        .collect();
    json!({"agent": agent, "fencing": fencing, "lines": lines})
}

#[tokio::test]
async fn agent_tokens_cannot_write_for_other_tasks_or_after_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let o = started(dir.path(), &[]).await;
    let c = o.client();
    // A waits on a file; B runs until told.
    let a = c
        .schedule(
            &acme(),
            "while [ ! -f go ]; do sleep 0.1; done; echo done-a",
            None,
        )
        .await
        .unwrap();
    let b = c.schedule(&acme(), "sleep 30", None).await.unwrap();
    let a_run = wait_running(&c, &a.id).await;
    let b_run = wait_running(&c, &b.id).await;
    let a_pid = o.agent_pid(&a.id);
    let a_token = env_of(a_pid, "GUILDNET_AGENT_TOKEN").expect("agent token");
    let b_agent = b_run.agent.clone().unwrap();
    let before = c.agent(&b_agent).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // A's token heartbeating as B: 409, and B's record is not touched. (B heartbeats every
    // second itself, so compare with a fresh read right after the refused call's time.)
    let forged = json!({"agent": b_agent, "state": {"forged": true}});
    let (st, body) = agent_post(&o, &a_token, "/agent/heartbeat", forged).await;
    assert_eq!(st, 409, "{body}");
    let after = c.agent(&b_agent).await.unwrap();
    assert_ne!(after.state.get("forged"), Some(&json!(true)), "{after:?}");
    assert!(after.last_seen_at >= before.last_seen_at);

    // A finishes; afterwards its token can neither log nor register.
    std::fs::write(
        o.state
            .parent()
            .unwrap()
            .join("workspaces")
            .join(a.id.as_str())
            .join("workspace")
            .join("go"),
        "",
    )
    .unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&a.id), 30).await;
    assert_eq!(done[0].status, guildnet_core::model::TaskStatus::Succeeded);
    let a_agent = a_run.agent.unwrap();
    let (st, body) = agent_post(
        &o,
        &a_token,
        "/agent/log",
        log_body(a_agent.as_str(), a_run.fencing, &[1000]),
    )
    .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("log_sealed")),
        "{body}"
    );
    let (st, body) = agent_post(&o, &a_token, "/agent/register", json!({"agent": a_agent})).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("task_finished")),
        "{body}"
    );
    let lines = all_logs(&c, &a.id).await;
    assert!(lines.iter().all(|l| !l.line.starts_with("forged")));
    c.cancel(&b.id).await.unwrap();
}

#[tokio::test]
async fn log_lines_go_forward_only_and_stop_at_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let o = started(dir.path(), &["--log-quota-bytes", "200000"]).await;
    let c = o.client();
    // 2 MB of output against a 200 kB quota: the task still succeeds.
    let t = c
        .schedule(
            &acme(),
            "i=0; while [ $i -lt 20000 ]; do echo \"line $i of a long output .......................................................................\"; i=$((i+1)); done; echo finished",
            None,
        )
        .await
        .unwrap();
    let done = wait_terminal(&c, std::slice::from_ref(&t.id), 120).await;
    assert_eq!(
        done[0].status,
        guildnet_core::model::TaskStatus::Succeeded,
        "{:?}",
        done[0]
    );
    assert_eq!(done[0].attempt, 1, "logging never costs an attempt");
    let lines = all_logs(&c, &t.id).await;
    let bytes: usize = lines.iter().map(|l| l.line.len()).sum();
    assert!(bytes < 210_000, "{bytes} bytes stored");
    assert!(
        lines.iter().any(|l| l.line.contains("reached its quota")),
        "the log says output was dropped"
    );

    // A running task: an out-of-order line is refused, a huge seq is refused.
    let r = c.schedule(&acme(), "sleep 30", None).await.unwrap();
    let run = wait_running(&c, &r.id).await;
    let token = env_of(o.agent_pid(&r.id), "GUILDNET_AGENT_TOKEN").unwrap();
    let agent = run.agent.unwrap();
    let (st, body) = agent_post(
        &o,
        &token,
        "/agent/log",
        log_body(agent.as_str(), run.fencing, &[500]),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = agent_post(
        &o,
        &token,
        "/agent/log",
        log_body(agent.as_str(), run.fencing, &[499]),
    )
    .await;
    assert_eq!(
        (
            st,
            body["error"]["code"].as_str(),
            body["error"]["field"].as_str()
        ),
        (409, Some("log_out_of_order"), Some("lines[0].seq")),
        "{body}"
    );
    for seq in [1u64 << 63, 1 << 53] {
        let (st, body) = agent_post(
            &o,
            &token,
            "/agent/log",
            log_body(agent.as_str(), run.fencing, &[seq]),
        )
        .await;
        assert_eq!(
            (st, body["error"]["field"].as_str()),
            (422, Some("lines[0].seq")),
            "{body}"
        );
    }
    c.cancel(&r.id).await.unwrap();
}

#[tokio::test]
async fn a_cancelled_tasks_stream_ends_after_the_runners_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let o = started(dir.path(), &[]).await;
    let c = o.client();
    let t = c
        .schedule(
            &acme(),
            "trap 'echo last-words-1; echo last-words-2; exit 0' TERM; echo started; while true; do sleep 0.1; done",
            None,
        )
        .await
        .unwrap();
    wait_running(&c, &t.id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !all_logs(&c, &t.id)
        .await
        .iter()
        .any(|l| l.line == "started")
    {
        assert!(Instant::now() < deadline, "runner never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = http()
        .get(format!("{}/tasks/{}/logs/stream", o.url(), t.id))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    c.cancel(&t.id).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.contains("event: end") {
            break;
        }
    }
    let end = text.find("event: end").expect("the stream ends");
    let last = text
        .find("last-words-2")
        .expect("the runner's last line is streamed");
    assert!(last < end, "last lines come before the end: {text}");
}

#[tokio::test]
async fn cursors_past_the_end_and_nul_text_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let o = started(dir.path(), &[]).await;
    let c = o.client();
    let t = c.schedule(&acme(), "echo hi", None).await.unwrap();
    wait_terminal(&c, std::slice::from_ref(&t.id), 30).await;
    for q in [
        format!("/tasks/{}/logs?after=9223372036854775808", t.id),
        "/audit?after=9223372036854775808".to_owned(),
        "/audit?after=18446744073709551615".to_owned(),
    ] {
        let r = http()
            .get(format!("{}{q}", o.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{q}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, json!([]), "{q} replays nothing");
    }
    // An SSE stream resumed past every id sends no old event.
    let mut s = http()
        .get(format!("{}/events", o.url()))
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", "18446744073709551615")
        .send()
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_millis(1500), s.chunk()).await;
    if let Ok(Ok(Some(chunk))) = got {
        let text = String::from_utf8_lossy(&chunk);
        assert!(!text.contains("task.scheduled"), "replayed: {text}");
    }
    // NUL in the task text: 422 naming the field, nothing scheduled.
    let r = http()
        .post(format!("{}/schedule", o.url()))
        .bearer_auth(TOKEN)
        .json(&json!({"org": "acme", "task": "echo a\u{0}b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "task");
    assert_eq!(c.tasks(&Default::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn slow_bodies_are_cut_and_the_state_dir_is_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let o = started(dir.path(), &["--http-idle-secs", "1"]).await;

    // A body announced and trickled a byte every 300 ms is cut within a few seconds.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", o.port))
        .await
        .unwrap();
    s.write_all(
        b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .unwrap();
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(10) {
        if s.write_all(b" ").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            match r {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
            }
        }
    }
    assert!(closed, "the trickled body was cut ({:?})", start.elapsed());

    // The database and its companions are private from the first start.
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "orchestrator.db",
        "orchestrator.db-wal",
        "orchestrator.db-shm",
    ] {
        let p = o.state.join(f);
        if p.exists() {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }

    // A second orchestrator on the same state dir is refused, naming the first.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guildnet-orchestrator"))
        .args(["--listen", "127.0.0.1:0"])
        .env("GUILDNET_STATE_DIR", &o.state)
        .env("ORCHESTRATOR_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let first = o.child.as_ref().unwrap().id();
    assert!(
        err.contains("in use by another orchestrator") && err.contains(&format!("pid {first}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_read_only_state_dir_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let o = started(dir.path(), &[]).await;
        drop(o);
    }
    let _ro = ReadOnly::new(&state);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guildnet-orchestrator"))
        .args(["--listen", "127.0.0.1:0"])
        .env("GUILDNET_STATE_DIR", &state)
        .env("ORCHESTRATOR_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a read-only state dir must not start"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read-only"), "{err}");
}

/// Makes a directory read-only for the test's lifetime: by its mode for a normal user, by a
/// read-only bind mount as root (root ignores modes).
struct ReadOnly(std::path::PathBuf, bool);

impl ReadOnly {
    fn new(p: &Path) -> Self {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = std::fs::metadata(p).unwrap().uid() == 0;
        if root {
            let s = p.to_str().unwrap();
            for args in [vec!["--bind", s, s], vec!["-o", "remount,ro,bind", s]] {
                let st = std::process::Command::new("mount")
                    .args(&args)
                    .status()
                    .unwrap();
                assert!(st.success(), "mount {args:?}");
            }
        } else {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o500)).unwrap();
        }
        Self(p.to_owned(), root)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.1 {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        } else {
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
        }
    }
}

#[tokio::test]
async fn one_corrupt_task_row_does_not_break_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = started(dir.path(), &[]).await;
    let c = o.client();
    let a = c.schedule(&acme(), "echo a", None).await.unwrap();
    let b = c.schedule(&acme(), "echo b", None).await.unwrap();
    wait_terminal(&c, &[a.id.clone(), b.id.clone()], 30).await;
    o.kill9();
    let db = rusqlite::Connection::open(o.state.join("orchestrator.db")).unwrap();
    db.execute(
        "UPDATE tasks SET status = 'Bogus' WHERE id = ?1",
        [b.id.as_str()],
    )
    .unwrap();
    drop(db);
    let o = Orchestrator::start(&o.state, free_port());
    o.wait_ready().await;
    let c = o.client();
    // The list still answers. It serves each task's JSON as GuildNet last wrote it, so a row
    // edited behind its back lists as it was; reading that task itself decodes the row and
    // reports the corruption (below).
    let listed = c.tasks(&Default::default()).await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(listed.iter().all(|t| t.status.is_terminal()), "{listed:?}");
    let r = http()
        .get(format!("{}/tasks/{}", o.url(), b.id))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "internal");
}

#[tokio::test]
async fn a_backend_that_cannot_start_agents_puts_the_org_on_hold() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-agent");
    let o = started(dir.path(), &["--agent-bin", missing.to_str().unwrap()]).await;
    let c = o.client();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            c.schedule(&acme(), &format!("echo {i}"), None)
                .await
                .unwrap()
                .id,
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = std::fs::read_to_string(o.state.with_extension("log")).unwrap();
    let warnings = log.matches("backend refused a submit").count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings for 30 tasks in 4 s"
    );
    let v: Value = http()
        .get(format!("{}/tasks/{}", o.url(), ids[20]))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "Scheduled");
    let why = v["waiting"].as_str().expect("the task says why it waits");
    assert!(
        why.contains("no-such-agent") && why.contains("next try"),
        "{why}"
    );
}
