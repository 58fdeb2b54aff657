//! Warm pool handoff under load, in-process: the real orchestrator (SQLite store, HTTP API on
//! loopback) with a mocked cluster backend. The warm and cold agents are simulated by the test
//! over real HTTP (pool wait, register, claim, complete), and the test refills the pool the way
//! the operator does. 100 tasks at once against a pool of 10: every task is claimed once and
//! completed once, no warm agent is handed two tasks, and a used agent is refused a second wait.
//!
//! The real agent runtime in pool mode, on real pods, is `bin/tests/kube_pool_e2e.rs`.

use guildnet_core::client::{AgentClient, ClientError, OrchestratorClient, PoolClient};
use guildnet_core::model::TaskStatus;
use guildnet_core::names::{OrgName, TaskId};
use guildnet_core::orchestrator::api::{
    ClaimRequest, CompleteRequest, PoolSpec, PoolWaitRequest, RegisterRequest,
};
use guildnet_core::orchestrator::{Orchestrator, OrchestratorConfig};
use guildnet_core::seams::{AgentLaunch, MockClusterBackend, PoolLaunch, WorkloadState};
use guildnet_core::store::{Durability, SqliteStore, StateStore};
use guildnet_core::token::Secret;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const ADMIN: &str = "admin-token-pool-test";

struct Server {
    url: String,
    admin: OrchestratorClient,
    store: SqliteStore,
    /// Cold launches (no warm agent took the task).
    cold: mpsc::UnboundedReceiver<AgentLaunch>,
    /// Pooled launches: task id -> the pod the orchestrator says took it.
    pooled: Arc<Mutex<Vec<(TaskId, String)>>>,
    /// The pool token the backend was given by `PUT /orgs/{org}/pool`.
    pool_token: Arc<Mutex<Option<Secret>>>,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("g.db"), Durability::Full).unwrap();
    let (tx, cold) = mpsc::unbounded_channel();
    let pooled: Arc<Mutex<Vec<(TaskId, String)>>> = Arc::default();
    let pool_token: Arc<Mutex<Option<Secret>>> = Arc::default();
    let mut mock = MockClusterBackend::new();
    mock.expect_name().return_const("mock");
    let p = pooled.clone();
    mock.expect_submit().returning(move |l: AgentLaunch| {
        match &l.pool {
            Some(placement) => p.lock().unwrap().push((l.task_id, placement.pod.clone())),
            None => {
                let _ = tx.send(l);
            }
        }
        Ok(())
    });
    mock.expect_status()
        .returning(|_, _, _| Ok(WorkloadState::Running));
    mock.expect_describe().returning(|_, _, _| Ok(None));
    mock.expect_task_finished().returning(|_| Ok(()));
    mock.expect_cancel().returning(|_, _, _| Ok(()));
    let pt = pool_token.clone();
    mock.expect_set_pool()
        .returning(move |_, _, l: PoolLaunch| {
            *pt.lock().unwrap() = Some(l.pool_token);
            Ok(())
        });
    mock.expect_pool_status().returning(|_| Ok(None));
    mock.expect_delete_pool().returning(|_| Ok(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = OrchestratorConfig::new(Secret::new(ADMIN), url.clone());
    let o = Orchestrator::new(Arc::new(store.clone()), Arc::new(mock), cfg);
    tokio::spawn(guildnet_core::orchestrator::serve(
        listener,
        o,
        std::future::pending(),
    ));
    let admin = OrchestratorClient::new(&url, Secret::new(ADMIN)).unwrap();
    admin
        .create_org(&OrgName::new("acme").unwrap())
        .await
        .unwrap();
    admin
        .create_org(&OrgName::new("other").unwrap())
        .await
        .unwrap();
    Server {
        url,
        admin,
        store,
        cold,
        pooled,
        pool_token,
        _dir: dir,
    }
}

fn acme() -> OrgName {
    OrgName::new("acme").unwrap()
}

/// Registers, claims and completes a task as its agent; returns the fencing token.
async fn run_task(client: &AgentClient, agent: &guildnet_core::names::AgentName) -> u64 {
    client
        .register(&RegisterRequest {
            agent: agent.clone(),
            version: None,
            editor_address: None,
        })
        .await
        .expect("register");
    let claim = client
        .claim(&ClaimRequest {
            agent: agent.clone(),
            process: None,
        })
        .await
        .expect("claim");
    client
        .complete(&CompleteRequest {
            agent: agent.clone(),
            fencing: claim.fencing,
            status: TaskStatus::Succeeded,
            exit_code: Some(0),
            reason: None,
            artifacts: vec![],
            pr_url: None,
        })
        .await
        .expect("complete");
    claim.fencing
}

/// A simulated warm agent: waits with the pool token, runs the task it is handed, then checks
/// that it may not wait again. Returns (pod, task) when it got one.
async fn warm_agent(url: String, token: Secret, pod: String) -> Option<(String, TaskId)> {
    let pool = PoolClient::new(&url, token).unwrap();
    let req = PoolWaitRequest {
        pod: pod.clone(),
        runner: None,
        wait_secs: Some(2),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let h = loop {
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        match pool.wait(&req).await.expect("wait") {
            r if r.handoff.is_some() => break r.handoff.unwrap(),
            _ => continue,
        }
    };
    assert_eq!(h.org, acme());
    let client = pool.agent_client(Secret::new(h.agent_token.clone()));
    run_task(&client, &h.agent).await;
    // A used agent never takes a second task.
    let again = pool.wait(&req).await.unwrap_err();
    assert_eq!(again.status(), Some(409), "{again}");
    assert_eq!(again.code(), Some("pool_agent_used"));
    Some((pod, h.task_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_tasks_against_a_pool_of_ten_each_handed_once() {
    let mut s = server().await;
    let spec = PoolSpec {
        size: 10,
        image: None,
        runner: None,
        idle_seconds: None,
    };
    let st = s.admin.set_pool(&acme(), &spec).await.expect("set pool");
    assert_eq!(st.org, acme());
    let token = s
        .pool_token
        .lock()
        .unwrap()
        .clone()
        .expect("the backend got a pool token");
    assert!(token.expose().starts_with("gnp.acme."));

    // The pool: 10 warm agents, refilled (as the operator does) while tasks keep coming.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<(String, TaskId)>>();
    let spawn = |n: usize| {
        let (url, token, tx) = (s.url.clone(), token.clone(), done_tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(warm_agent(url, token, format!("pool-acme-{n:04}")).await);
        });
    };
    for n in 0..10 {
        spawn(n);
    }
    // Wait until the 10 wait.
    for _ in 0..200 {
        if s.admin.pool(&acme()).await.unwrap().waiting == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.admin.pool(&acme()).await.unwrap().waiting, 10);

    // The cold path: agents started by the backend for tasks no warm agent took.
    let url = s.url.clone();
    let mut cold_rx = std::mem::replace(&mut s.cold, mpsc::unbounded_channel().1);
    let cold_seen: Arc<Mutex<Vec<TaskId>>> = Arc::default();
    let cs = cold_seen.clone();
    tokio::spawn(async move {
        while let Some(l) = cold_rx.recv().await {
            cs.lock().unwrap().push(l.task_id.clone());
            let url = url.clone();
            tokio::spawn(async move {
                let c = AgentClient::new(&url, l.agent_token.clone()).unwrap();
                run_task(&c, &l.agent).await;
            });
        }
    });

    // 100 tasks at once.
    let scheds = (0..100).map(|i| {
        let a = s.admin.clone();
        async move { a.schedule(&acme(), &format!("task {i}"), None).await }
    });
    let tasks: Vec<_> = futures_util::future::join_all(scheds)
        .await
        .into_iter()
        .map(|r| r.expect("schedule"))
        .collect();
    assert_eq!(tasks.len(), 100);

    // Refill: each used agent is replaced while tasks are still being scheduled or waiting.
    let mut handed: Vec<(String, TaskId)> = Vec::new();
    let mut next = 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let finished = {
            let mut n = 0;
            for t in &tasks {
                if s.admin.task(&t.id).await.unwrap().status == TaskStatus::Succeeded {
                    n += 1;
                }
            }
            n
        };
        while let Ok(r) = done_rx.try_recv() {
            if let Some(x) = r {
                handed.push(x);
                if next < 60 {
                    spawn(next);
                    next += 1;
                }
            }
        }
        if finished == 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {finished} of 100 tasks finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No warm agent was given two tasks, and no task was handed to two agents.
    let pods: BTreeSet<_> = handed.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(pods.len(), handed.len(), "a pod took two tasks: {handed:?}");
    let warm_tasks: BTreeSet<_> = handed.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(warm_tasks.len(), handed.len(), "a task was handed twice");
    // The backend was told the same pod that took each warm task.
    let pooled: HashMap<TaskId, String> = s.pooled.lock().unwrap().iter().cloned().collect();
    for (pod, task) in &handed {
        assert_eq!(pooled.get(task), Some(pod), "backend placement of {task}");
    }
    // Warm and cold together are exactly the 100 tasks, each one way only.
    let cold: BTreeSet<_> = cold_seen.lock().unwrap().iter().cloned().collect();
    assert!(
        cold.is_disjoint(&warm_tasks),
        "a task started both warm and cold"
    );
    assert_eq!(cold.len() + warm_tasks.len(), 100);
    assert!(
        warm_tasks.len() >= 10,
        "the first 10 at least go warm: {}",
        warm_tasks.len()
    );
    eprintln!(
        "POOL-HANDOFF warm {} cold {} (pool of 10, refilled {} times)",
        warm_tasks.len(),
        cold.len(),
        next - 10
    );

    // Exactly one claim and one completion per task.
    let mut completions: BTreeMap<String, u32> = BTreeMap::new();
    for a in s.store.audit_after(0, 100_000).await.unwrap() {
        if a.action == "task.complete" {
            *completions.entry(a.subject.clone()).or_default() += 1;
        }
    }
    for t in &tasks {
        let t = s.admin.task(&t.id).await.unwrap();
        assert_eq!(t.claims, 1, "task {} claims", t.id);
        assert_eq!(
            completions.get(t.id.as_str()),
            Some(&1),
            "task {} completions",
            t.id
        );
    }
    // A cold task's log says why it started cold.
    if let Some(c) = cold.iter().next() {
        let lines = s.admin.logs(c, 0).await.unwrap();
        assert!(
            lines.iter().any(|l| l.line.contains("[pool] cold start")),
            "{lines:?}"
        );
    }
    let st = s.admin.pool(&acme()).await.unwrap();
    assert_eq!(st.warm_starts as usize, warm_tasks.len());
    assert_eq!(st.cold_starts as usize, cold.len());
}

#[tokio::test]
async fn pool_tokens_and_bad_input_are_refused_with_named_fields() {
    let s = server().await;
    // Bad pool specs: 422 naming the field.
    for (body, field) in [
        (serde_json::json!({"size": 1000}), "size"),
        (
            serde_json::json!({"size": 1, "idleSeconds": 0}),
            "idleSeconds",
        ),
        (serde_json::json!({"size": 1, "image": "a b"}), "image"),
        (serde_json::json!({"size": 1, "bogus": 1}), "bogus"),
    ] {
        let r = reqwest::Client::new()
            .put(format!("{}/orgs/acme/pool", s.url))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    // An unknown org.
    let e = s
        .admin
        .set_pool(
            &OrgName::new("nope").unwrap(),
            &PoolSpec {
                size: 1,
                image: None,
                runner: None,
                idle_seconds: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    // No admin token, no pool.
    let r = reqwest::Client::new()
        .put(format!("{}/orgs/acme/pool", s.url))
        .json(&serde_json::json!({"size": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Waiting needs a valid pool token: not the admin token, not a forged one.
    let wait = |tok: &str| {
        let c = PoolClient::new(&s.url, Secret::new(tok)).unwrap();
        async move {
            c.wait(&PoolWaitRequest {
                pod: "p".into(),
                runner: None,
                wait_secs: Some(1),
            })
            .await
        }
    };
    for bad in [ADMIN, "gnp.acme.000000000000000000000000.00", ""] {
        let e: ClientError = wait(bad).await.unwrap_err();
        assert_eq!(e.status(), Some(401), "{bad}: {e}");
    }
    // An invalid pod name is named.
    s.admin
        .set_pool(
            &acme(),
            &PoolSpec {
                size: 1,
                image: None,
                runner: None,
                idle_seconds: None,
            },
        )
        .await
        .unwrap();
    let token = s.pool_token.lock().unwrap().clone().unwrap();
    let c = PoolClient::new(&s.url, token.clone()).unwrap();
    let e = c
        .wait(&PoolWaitRequest {
            pod: "Bad/Pod".into(),
            runner: None,
            wait_secs: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(422), Some("pod")), "{e}");
    // A wait with nothing to do ends empty.
    let r = c
        .wait(&PoolWaitRequest {
            pod: "pool-acme-idle".into(),
            runner: None,
            wait_secs: Some(1),
        })
        .await
        .unwrap();
    assert!(r.handoff.is_none());

    // acme's pool token waits for acme only: an `other` task never reaches it.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.wait(&PoolWaitRequest {
                pod: "pool-acme-x".into(),
                runner: None,
                wait_secs: Some(2),
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.admin
        .schedule(&OrgName::new("other").unwrap(), "not for acme", None)
        .await
        .unwrap();
    assert!(waiter.await.unwrap().unwrap().handoff.is_none());

    // Deleting the org removes its pool.
    let del = s.admin.delete_pool(&acme()).await.unwrap();
    assert!(del.removed);
}
