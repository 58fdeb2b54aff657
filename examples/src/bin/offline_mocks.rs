//! `offline-mocks`: the GuildNet SDK end to end with no cluster and no agent process.
//!
//! guildnet-core's `MockClusterBackend` (the `mocks` feature) stands in for the cluster: its
//! first submit fails (a cluster still starting), the orchestrator retries, the second is
//! accepted. A real SQLite store in a temp dir and the real HTTP API on a loopback port carry
//! everything else. The example then plays the agent through the agent-protocol client
//! (register, claim, log, heartbeat, complete with a PR) and the user through the admin client
//! (schedule, follow the log, read the outcome). It exits non-zero if anything differs from what
//! the SDK promises.

use futures_util::StreamExt;
use guildnet_core::api::{
    ClaimRequest, CompleteRequest, HeartbeatRequest, LogRequest, RegisterRequest,
};
use guildnet_core::client::{AgentClient, ClientError, LogFollow, OrchestratorClient};
use guildnet_core::model::{Artifact, LogStream, NewLogLine, TaskStatus};
use guildnet_core::names::OrgName;
use guildnet_core::orchestrator::{serve, Orchestrator, OrchestratorConfig};
use guildnet_core::seams::{AgentLaunch, BackendError, MockClusterBackend, WorkloadState};
use guildnet_core::store::{Durability, SqliteStore, StateStore};
use guildnet_core::token;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PR_URL: &str = "https://git.example.invalid/acme/docs/pull/7";

/// What can go wrong in the example.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("store: {0}")]
    Store(#[from] guildnet_core::store::StoreError),
    #[error("setup: {0}")]
    Setup(String),
    #[error("check failed: {0}")]
    Check(String),
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Check(what.into()))
    }
}

/// The mock cluster: refuses the first submit, accepts the next and hands the launch (with the
/// agent's token) to the example, which plays the agent.
fn mock_backend(
    launches: tokio::sync::mpsc::UnboundedSender<AgentLaunch>,
    submits: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
) -> MockClusterBackend {
    let mut m = MockClusterBackend::new();
    m.expect_name().return_const("mock");
    m.expect_submit().times(2).returning(move |launch| {
        if submits.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(BackendError::OrgUnavailable {
                org: launch.org,
                reason: "cluster still starting".into(),
            });
        }
        launches
            .send(launch)
            .map_err(|_| BackendError::Unsupported {
                backend: "mock",
                what: "submit after the example ended",
            })
    });
    m.expect_status()
        .returning(|_, _, _| Ok(WorkloadState::Running));
    m.expect_describe().returning(|_, _, _| Ok(None));
    m.expect_cancel().times(0).returning(|_, _, _| Ok(()));
    m.expect_task_finished()
        .withf(|t| t.status == TaskStatus::Succeeded && t.pr_url.as_deref() == Some(PR_URL))
        .times(1)
        .returning(move |_| {
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    m
}

/// The agent's side of one task, through the agent protocol.
async fn play_agent(url: &str, launch: AgentLaunch) -> Result<(), Error> {
    let agent = AgentClient::new(url, launch.agent_token.clone())?;
    let reg = agent
        .register(&RegisterRequest {
            agent: launch.agent.clone(),
            version: Some("offline-mocks".into()),
            editor_address: None,
        })
        .await?;
    println!(
        "agent {}: registered for task {}",
        launch.agent, reg.task.id
    );
    let claim = agent
        .claim(&ClaimRequest {
            agent: launch.agent.clone(),
            process: None,
        })
        .await?;
    println!(
        "agent {}: claimed with fencing token {}",
        launch.agent, claim.fencing
    );
    let lines = [
        "reading the repository",
        "writing docs/usage.md",
        "opened a pull request",
    ];
    let first = claim.next_log_seq;
    agent
        .log(&LogRequest {
            agent: launch.agent.clone(),
            fencing: claim.fencing,
            lines: lines
                .iter()
                .zip(first..)
                .map(|(line, seq)| NewLogLine {
                    seq,
                    stream: LogStream::Stdout,
                    line: (*line).to_owned(),
                    ts: chrono::Utc::now(),
                })
                .collect(),
            is_final: false,
        })
        .await?;
    let hb = agent
        .heartbeat(&HeartbeatRequest {
            agent: launch.agent.clone(),
            fencing: Some(claim.fencing),
            state: Some(serde_json::json!({"runner": "done"})),
        })
        .await?;
    check(!hb.cancel, "the orchestrator asked the agent to stop")?;
    agent
        .complete(&CompleteRequest {
            agent: launch.agent.clone(),
            fencing: claim.fencing,
            status: TaskStatus::Succeeded,
            exit_code: Some(0),
            reason: None,
            artifacts: vec![Artifact {
                name: "pr".into(),
                kind: "pr".into(),
                uri: PR_URL.into(),
            }],
            pr_url: Some(PR_URL.into()),
        })
        .await?;
    println!("agent {}: completed", launch.agent);
    Ok(())
}

async fn run() -> Result<String, Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Setup(format!("temp dir: {e}")))?;
    let db = dir.path().join("orchestrator.db");
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(db, Durability::Normal))
        .await
        .map_err(|e| Error::Setup(e.to_string()))??;
    let store: Arc<dyn StateStore> = Arc::new(store);

    let (tx, mut launches) = tokio::sync::mpsc::unbounded_channel();
    let submits = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let backend = Arc::new(mock_backend(tx, submits.clone(), finished.clone()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Setup(format!("bind: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Setup(format!("bind: {e}")))?;
    let url = format!("http://{addr}");
    let admin = token::generate("gna_");
    let mut cfg = OrchestratorConfig::new(admin.clone(), url.clone());
    cfg.submit_retry = Duration::from_millis(200);
    cfg.reaper_interval = Duration::from_millis(100);
    let orchestrator = Orchestrator::new(store, backend, cfg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, orchestrator, async move {
        let _ = stop_rx.await;
    }));
    println!("orchestrator (mock backend) on {url}");

    // The user: register an org and schedule.
    let client = OrchestratorClient::new(&url, admin)?;
    let org = OrgName::new("acme").map_err(|e| Error::Setup(e.to_string()))?;
    client.create_org(&org).await?;
    let task = client
        .schedule(
            &org,
            "Document the CLI in docs/usage.md",
            Some("docs-writer"),
        )
        .await?;
    println!("scheduled task {} ({})", task.id, task.status);

    // The mock refuses the first submit; the orchestrator retries and the second reaches us.
    let launch = tokio::time::timeout(Duration::from_secs(15), launches.recv())
        .await
        .map_err(|_| Error::Check("no accepted submit within 15 s".into()))?
        .ok_or_else(|| Error::Check("the mock backend went away".into()))?;
    check(launch.task_id == task.id, "the launch is for another task")?;
    check(
        launch.agent_hint.as_deref() == Some("docs-writer"),
        "agent hint lost",
    )?;
    println!(
        "backend: submit #1 refused, submit #2 accepted (agent {}, attempt {})",
        launch.agent, launch.attempt
    );

    // The agent runs while the user follows the log.
    let follow = client.follow_logs(&task.id, 0, Duration::from_secs(5));
    let agent_url = url.clone();
    let agent = tokio::spawn(async move { play_agent(&agent_url, launch).await });
    let mut follow = Box::pin(follow);
    let mut lines = Vec::new();
    let done = loop {
        let next = tokio::time::timeout(Duration::from_secs(15), follow.next())
            .await
            .map_err(|_| Error::Check("log stream stalled".into()))?;
        match next {
            Some(Ok(LogFollow::Line(l))) => {
                println!("log {}: {}", l.seq, l.line);
                lines.push(l.line);
            }
            Some(Ok(LogFollow::End(t))) => break *t,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Check("log stream ended without the task".into())),
        }
    };
    agent
        .await
        .map_err(|e| Error::Check(format!("agent task: {e}")))??;

    check(
        done.status == TaskStatus::Succeeded,
        format!("task ended {}", done.status),
    )?;
    check(
        done.pr_url.as_deref() == Some(PR_URL),
        "pr_url not recorded",
    )?;
    check(done.claims == 1, format!("{} claims", done.claims))?;
    // The orchestrator's line on the refused submit (why the task waited), then the agent's 3.
    check(lines.len() == 4, format!("{} log lines", lines.len()))?;
    check(
        lines[0].starts_with("[orchestrator] waiting:")
            && lines[0].contains("cluster still starting"),
        format!(
            "the first line does not say why the task waited: {:?}",
            lines[0]
        ),
    )?;
    check(
        submits.load(Ordering::SeqCst) == 2,
        "expected exactly 2 submits",
    )?;
    // task_finished is called right after the completion is stored.
    for _ in 0..50 {
        if finished.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check(
        finished.load(Ordering::SeqCst) == 1,
        "backend not told the task finished",
    )?;

    // Errors are typed: a wrong admin token is a 401.
    let wrong = OrchestratorClient::new(&url, token::Secret::new("wrong"))?;
    match wrong.tasks(&Default::default()).await {
        Err(e) if e.status() == Some(401) => println!("wrong token: {e}"),
        other => return Err(Error::Check(format!("wrong token gave {other:?}"))),
    }

    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(format!(
        "offline example OK: task {} {} after 2 submits, {} log lines, pr_url={}",
        done.id,
        done.status,
        lines.len(),
        done.pr_url.unwrap_or_default()
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run().await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("offline-mocks: {e}");
            ExitCode::FAILURE
        }
    }
}
