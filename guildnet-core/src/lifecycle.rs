//! The task lifecycle: every change of a task's status is one pure function here.
//!
//! Each transition takes the task (as read inside the store's transaction), checks that the
//! change is allowed, applies it and returns what to record with it (events and audit rows), or
//! a [`Rejection`] that leaves the task untouched. Nothing here touches a database, a clock or a
//! backend: the service ([`crate::orchestrator::Orchestrator`]) validates input, runs a
//! transition inside [`crate::store::StateStore::update_task`], then notifies and calls the
//! backend. The state machine is therefore tested on its own, including a property test over
//! random operation sequences (see the tests at the bottom).
//!
//! ```text
//! Scheduled --dispatch--> Submitted --claim--> Running --complete--> Succeeded | Failed
//!     ^  <--submit_failed--'   |                  |
//!     '-------------------requeue (lost lease / never claimed; Failed after max attempts)
//! Submitted --fail_start (the backend says its agent cannot start)--> Failed
//! any non-terminal --cancel--> Cancelled
//! ```
//!
//! This module owns the rules; it must not know about HTTP, SQL or the backends.

use crate::model::{NewAudit, NewEvent, Task, TaskStatus};
use crate::names::{AgentName, ProcessId};
use chrono::{DateTime, Duration, Utc};

/// Why a transition refused to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The category, which maps to an HTTP status.
    pub kind: RejectionKind,
    /// A message for the caller.
    pub message: String,
    /// The request field at fault, when there is one (e.g. `lines[3].seq`).
    pub field: Option<String>,
}

/// Categories of [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The task is in a state that does not allow the change.
    Conflict,
    /// The caller's fencing token is not the current one.
    StaleFencing,
    /// The caller may not change this task.
    Forbidden,
    /// A log line's sequence number is at or below the task's highest stored one, and not a
    /// re-send of a stored line (live followers would never see it).
    LogOutOfOrder,
    /// The task's log is complete; no more lines are taken.
    LogSealed,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Rejection {
    fn of(kind: RejectionKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// A conflict rejection.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::of(RejectionKind::Conflict, message)
    }

    /// A stale-fencing rejection.
    pub fn stale(message: impl Into<String>) -> Self {
        Self::of(RejectionKind::StaleFencing, message)
    }

    /// A forbidden rejection.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::of(RejectionKind::Forbidden, message)
    }
}

/// What a transition records besides the new task row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskChange {
    /// Events to append (streamed over SSE).
    pub events: Vec<NewEvent>,
    /// Audit rows to append.
    pub audit: Vec<NewAudit>,
}

/// The kinds of recorded events (the `kind` of [`crate::model::Event`] on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A task was recorded.
    TaskScheduled,
    /// A task was handed to its backend.
    TaskSubmitted,
    /// The backend refused a task; it waits for another try.
    TaskSubmitFailed,
    /// An agent claimed its task.
    TaskClaimed,
    /// A task's attempt was lost and a new one scheduled.
    TaskRequeued,
    /// A task succeeded.
    TaskSucceeded,
    /// A task failed.
    TaskFailed,
    /// A task was cancelled.
    TaskCancelled,
    /// An agent registered.
    AgentRegistered,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 9] = [
        EventKind::TaskScheduled,
        EventKind::TaskSubmitted,
        EventKind::TaskSubmitFailed,
        EventKind::TaskClaimed,
        EventKind::TaskRequeued,
        EventKind::TaskSucceeded,
        EventKind::TaskFailed,
        EventKind::TaskCancelled,
        EventKind::AgentRegistered,
    ];

    /// The wire form, e.g. `task.claimed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TaskScheduled => "task.scheduled",
            EventKind::TaskSubmitted => "task.submitted",
            EventKind::TaskSubmitFailed => "task.submit_failed",
            EventKind::TaskClaimed => "task.claimed",
            EventKind::TaskRequeued => "task.requeued",
            EventKind::TaskSucceeded => "task.succeeded",
            EventKind::TaskFailed => "task.failed",
            EventKind::TaskCancelled => "task.cancelled",
            EventKind::AgentRegistered => "agent.registered",
        }
    }

    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl AsRef<str> for EventKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn event(kind: EventKind, t: &Task, message: Option<String>) -> NewEvent {
    NewEvent::for_task(kind, t, message)
}

fn change(kind: EventKind, t: &Task, message: Option<String>, audit: Vec<NewAudit>) -> TaskChange {
    TaskChange {
        events: vec![event(kind, t, message)],
        audit,
    }
}

/// Checks that `agent` is the task's agent and `fencing` its current claim token.
pub fn check_fencing(t: &Task, agent: &AgentName, fencing: u64) -> Result<(), Rejection> {
    if t.agent.as_ref() != Some(agent) {
        return Err(Rejection::stale(format!(
            "agent {agent} is not the current agent of task {}",
            t.id
        )));
    }
    if t.fencing != fencing || fencing == 0 {
        return Err(Rejection::stale(format!(
            "fencing token {fencing} is not current for task {} (current {})",
            t.id, t.fencing
        )));
    }
    Ok(())
}

/// `Scheduled` -> `Submitted` for `attempt`, with the attempt's agent name.
pub fn dispatch(t: &mut Task, attempt: u32, now: DateTime<Utc>) -> Result<TaskChange, Rejection> {
    if t.status != TaskStatus::Scheduled || t.attempt != attempt {
        return Err(Rejection::conflict("already dispatched"));
    }
    t.status = TaskStatus::Submitted;
    t.agent = Some(t.id.agent_name(t.attempt));
    t.updated_at = now;
    t.reason = None;
    Ok(change(EventKind::TaskSubmitted, t, None, vec![]))
}

/// `Submitted` -> `Scheduled` after the backend refused `attempt`.
pub fn submit_failed(
    t: &mut Task,
    attempt: u32,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<TaskChange, Rejection> {
    if t.status != TaskStatus::Submitted || t.attempt != attempt {
        return Err(Rejection::conflict("moved on"));
    }
    t.status = TaskStatus::Scheduled;
    t.updated_at = now;
    t.reason = Some(format!("submit failed: {reason}"));
    Ok(change(
        EventKind::TaskSubmitFailed,
        t,
        t.reason.clone(),
        vec![],
    ))
}

/// The task's own agent claims it: `Submitted` -> `Running` with a new fencing token and a
/// lease until `now + ttl`, held by `process` (the agent process that asked, if it said).
///
/// A claim again by the holder renews the lease and reopens the log (whatever the old process
/// sealed, more of it is coming), and then:
/// - from the **same process** (a retry after a lost reply; also two claims that both name no
///   process): it keeps the token, so the retry is idempotent;
/// - from **another process** of the same agent (the Deployment's next pod after the first was
///   deleted): it takes the task over with a new token, counted as a claim. The old process
///   can no longer write log lines, renew or complete, so its last lines cannot take the
///   sequence numbers the new process was given.
pub fn claim(
    t: &mut Task,
    agent: &AgentName,
    process: Option<&ProcessId>,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<TaskChange, Rejection> {
    if t.agent.as_ref() != Some(agent) {
        return Err(Rejection::stale(format!(
            "agent {agent} is not the current agent of task {}",
            t.id
        )));
    }
    match t.status {
        TaskStatus::Submitted => {
            t.status = TaskStatus::Running;
            t.fencing += 1;
            t.claims += 1;
            t.claim_process = process.cloned();
            t.lease_expires_at = Some(now + ttl);
            t.started_at = Some(now);
            t.updated_at = now;
            let audit = NewAudit::new(
                &format!("agent:{agent}"),
                "task.claim",
                t.id.as_str(),
                Some(format!("fencing={}", t.fencing)),
            );
            Ok(change(EventKind::TaskClaimed, t, None, vec![audit]))
        }
        TaskStatus::Running => {
            t.lease_expires_at = Some(now + ttl);
            t.log_sealed = false;
            if t.claim_process.as_ref() == process {
                return Ok(TaskChange::default());
            }
            t.fencing += 1;
            t.claims += 1;
            t.claim_process = process.cloned();
            t.updated_at = now;
            let why = format!(
                "a new process of agent {agent} took the task over (fencing token {})",
                t.fencing
            );
            let audit = NewAudit::new(
                &format!("agent:{agent}"),
                "task.claim",
                t.id.as_str(),
                Some(format!("fencing={} takeover", t.fencing)),
            );
            Ok(change(EventKind::TaskClaimed, t, Some(why), vec![audit]))
        }
        other => Err(Rejection::conflict(format!(
            "task {} is {other} and cannot be claimed",
            t.id
        ))),
    }
}

/// A heartbeat with the claim's fencing token: renews the lease of a running task (a finished
/// one stays as it is). Records nothing.
pub fn renew(
    t: &mut Task,
    agent: &AgentName,
    fencing: u64,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<TaskChange, Rejection> {
    check_fencing(t, agent, fencing)?;
    if t.status == TaskStatus::Running {
        t.lease_expires_at = Some(now + ttl);
    }
    Ok(TaskChange::default())
}

/// An admin cancels a task that has not finished. A running agent still sends its runner's last
/// lines (then its final batch), so the log stays open; otherwise no agent can write any more
/// and the log is sealed. Cancelling a cancelled task changes nothing.
pub fn cancel(t: &mut Task, now: DateTime<Utc>) -> Result<TaskChange, Rejection> {
    if t.status == TaskStatus::Cancelled {
        return Ok(TaskChange::default());
    }
    if t.status.is_terminal() {
        return Err(Rejection::conflict(format!(
            "task {} already finished ({})",
            t.id, t.status
        )));
    }
    t.log_sealed = t.status != TaskStatus::Running;
    t.status = TaskStatus::Cancelled;
    t.updated_at = now;
    t.finished_at = Some(now);
    t.lease_expires_at = None;
    t.reason = Some("cancelled by admin".into());
    let audit = NewAudit::new("admin", "task.cancel", t.id.as_str(), None);
    Ok(change(
        EventKind::TaskCancelled,
        t,
        t.reason.clone(),
        vec![audit],
    ))
}

/// What an agent reports at the end of its task.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `Succeeded` or `Failed`.
    pub status: TaskStatus,
    /// The runner's exit code.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub reason: Option<String>,
    /// What it produced.
    pub artifacts: Vec<crate::model::Artifact>,
    /// The pull request it opened.
    pub pr_url: Option<String>,
}

/// The claim holder reports the outcome: `Running` -> `Succeeded` | `Failed`, and the log is
/// sealed (the agent ships every line before it completes). Repeating the same completion
/// changes nothing.
pub fn complete(
    t: &mut Task,
    agent: &AgentName,
    fencing: u64,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> Result<TaskChange, Rejection> {
    if !matches!(outcome.status, TaskStatus::Succeeded | TaskStatus::Failed) {
        return Err(Rejection::conflict("an outcome is Succeeded or Failed"));
    }
    check_fencing(t, agent, fencing)?;
    if t.status == outcome.status {
        return Ok(TaskChange::default());
    }
    if t.status != TaskStatus::Running {
        return Err(Rejection::conflict(format!(
            "task {} is {} and cannot complete",
            t.id, t.status
        )));
    }
    t.log_sealed = true;
    t.status = outcome.status;
    t.finished_at = Some(now);
    t.updated_at = now;
    t.lease_expires_at = None;
    t.exit_code = outcome.exit_code;
    t.reason = outcome.reason;
    t.artifacts = outcome.artifacts;
    t.pr_url = outcome.pr_url;
    let kind = if t.status == TaskStatus::Succeeded {
        EventKind::TaskSucceeded
    } else {
        EventKind::TaskFailed
    };
    let audit = NewAudit::new(
        &format!("agent:{agent}"),
        "task.complete",
        t.id.as_str(),
        Some(format!("status={} exit={:?}", t.status, t.exit_code)),
    );
    Ok(change(kind, t, t.reason.clone(), vec![audit]))
}

/// The backend reports that attempt `attempt`'s agent will never start (its start deadline
/// passed: an image that cannot be pulled, an unschedulable pod): `Submitted` -> `Failed` with
/// the backend's reason. No retry: another attempt would meet the same cause. A task that moved
/// on (claimed meanwhile, or a newer attempt) is left alone.
pub fn fail_start(
    t: &mut Task,
    attempt: u32,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<TaskChange, Rejection> {
    if t.status != TaskStatus::Submitted || t.attempt != attempt {
        return Err(Rejection::conflict("moved on"));
    }
    // No agent ever claimed: nobody can write to the log any more.
    t.log_sealed = true;
    t.status = TaskStatus::Failed;
    t.finished_at = Some(now);
    t.updated_at = now;
    t.lease_expires_at = None;
    t.reason = Some(format!("agent did not start: {reason}"));
    let audit = NewAudit::new("system", "task.fail", t.id.as_str(), t.reason.clone());
    Ok(change(
        EventKind::TaskFailed,
        t,
        t.reason.clone(),
        vec![audit],
    ))
}

/// The attempt is lost (its lease expired, or its agent never claimed): back to `Scheduled`
/// with a new attempt, or `Failed` once `max_attempts` were used. `expected` is the status and
/// attempt the caller saw; a task that moved on (or whose lease was renewed meanwhile) is left
/// alone.
pub fn requeue(
    t: &mut Task,
    expected: (TaskStatus, u32),
    max_attempts: u32,
    why: &str,
    now: DateTime<Utc>,
) -> Result<TaskChange, Rejection> {
    if (t.status, t.attempt) != expected {
        return Err(Rejection::conflict("moved on"));
    }
    if t.status == TaskStatus::Running && t.lease_expires_at.is_some_and(|l| l >= now) {
        return Err(Rejection::conflict("lease was renewed"));
    }
    if !matches!(t.status, TaskStatus::Running | TaskStatus::Submitted) {
        return Err(Rejection::conflict(format!(
            "task {} is {}: no attempt to requeue",
            t.id, t.status
        )));
    }
    t.updated_at = now;
    t.lease_expires_at = None;
    if t.attempt >= max_attempts {
        // The agent lost its lease: nothing it sends is taken any more.
        t.log_sealed = true;
        t.status = TaskStatus::Failed;
        t.finished_at = Some(now);
        t.reason = Some(format!("{why}; gave up after {max_attempts} attempts"));
        let audit = NewAudit::new("system", "task.fail", t.id.as_str(), t.reason.clone());
        return Ok(change(
            EventKind::TaskFailed,
            t,
            t.reason.clone(),
            vec![audit],
        ));
    }
    t.attempt += 1;
    t.status = TaskStatus::Scheduled;
    t.agent = None;
    // The next attempt has not started: its agent must claim before it writes, and its log is
    // open again (the lost agent may have sealed it).
    t.started_at = None;
    t.log_sealed = false;
    t.reason = Some(why.to_owned());
    let audit = NewAudit::new(
        "system",
        "task.requeue",
        t.id.as_str(),
        Some(format!("{why}; attempt {}", t.attempt)),
    );
    Ok(change(
        EventKind::TaskRequeued,
        t,
        Some(why.to_owned()),
        vec![audit],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{OrgName, TaskId};
    use proptest::prelude::*;

    fn fresh(now: DateTime<Utc>) -> Task {
        Task {
            id: TaskId::new("t1").expect("id"),
            org: OrgName::new("acme").expect("org"),
            task: "work".into(),
            agent_hint: None,
            status: TaskStatus::Scheduled,
            agent: None,
            attempt: 1,
            fencing: 0,
            claims: 0,
            lease_expires_at: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            artifacts: vec![],
            pr_url: None,
            context: Default::default(),
            log_sealed: false,
            claim_process: None,
        }
    }

    fn outcome(status: TaskStatus) -> Outcome {
        Outcome {
            status,
            exit_code: Some(0),
            reason: None,
            artifacts: vec![],
            pr_url: None,
        }
    }

    #[test]
    fn another_process_of_the_agent_takes_the_claim_over_and_fences_the_first_off() {
        let now = Utc::now();
        let ttl = Duration::seconds(30);
        let mut t = fresh(now);
        dispatch(&mut t, 1, now).expect("dispatch");
        let agent = t.agent.clone().expect("agent");
        let (first, second) = (ProcessId::generate(), ProcessId::generate());
        claim(&mut t, &agent, Some(&first), ttl, now).expect("claim");
        assert_eq!((t.fencing, t.claims), (1, 1));
        assert_eq!(t.claim_process.as_ref(), Some(&first));
        // The first process again (its reply was lost): idempotent.
        assert_eq!(
            claim(&mut t, &agent, Some(&first), ttl, now),
            Ok(TaskChange::default())
        );
        assert_eq!((t.fencing, t.claims), (1, 1));
        // A replacement process: a new token, an event saying why, the old token refused.
        t.log_sealed = true;
        let c = claim(&mut t, &agent, Some(&second), ttl, now).expect("takeover");
        assert_eq!((t.status, t.fencing, t.claims), (TaskStatus::Running, 2, 2));
        assert_eq!(t.claim_process.as_ref(), Some(&second));
        assert!(!t.log_sealed, "the new process writes more of the log");
        assert_eq!(c.events[0].kind, EventKind::TaskClaimed.as_str());
        let why = c.events[0].message.as_deref().unwrap_or("");
        assert!(why.contains("took the task over"), "{why}");
        assert_eq!(c.audit.len(), 1);
        assert!(
            renew(&mut t, &agent, 1, ttl, now).is_err(),
            "the old process is fenced off"
        );
        assert!(complete(&mut t, &agent, 1, outcome(TaskStatus::Succeeded), now).is_err());
        renew(&mut t, &agent, 2, ttl, now).expect("the new process renews");
        // The new process's own retry keeps its token; a claim naming no process is another
        // process too (an older agent build).
        assert_eq!(
            claim(&mut t, &agent, Some(&second), ttl, now),
            Ok(TaskChange::default())
        );
        claim(&mut t, &agent, None, ttl, now).expect("takeover by a process naming none");
        assert_eq!((t.fencing, t.claims, t.claim_process.clone()), (3, 3, None));
    }

    #[test]
    fn a_task_runs_through_its_happy_path_and_each_step_records_its_event() {
        let now = Utc::now();
        let ttl = Duration::seconds(30);
        let mut t = fresh(now);
        let c = dispatch(&mut t, 1, now).expect("dispatch");
        assert_eq!(c.events[0].kind, "task.submitted");
        let agent = t.agent.clone().expect("agent");
        let c = claim(&mut t, &agent, None, ttl, now).expect("claim");
        assert_eq!((t.status, t.fencing, t.claims), (TaskStatus::Running, 1, 1));
        assert_eq!(c.events[0].kind, EventKind::TaskClaimed.as_str());
        // A repeated claim renews and records nothing; a log the old process sealed reopens.
        t.log_sealed = true;
        assert_eq!(
            claim(&mut t, &agent, None, ttl, now),
            Ok(TaskChange::default())
        );
        assert_eq!(t.fencing, 1);
        assert!(!t.log_sealed);
        renew(&mut t, &agent, 1, ttl, now + ttl).expect("renew");
        assert_eq!(t.lease_expires_at, Some(now + ttl + ttl));
        assert!(renew(&mut t, &agent, 2, ttl, now).is_err(), "wrong token");
        let c = complete(&mut t, &agent, 1, outcome(TaskStatus::Succeeded), now).expect("done");
        assert_eq!(c.events[0].kind, "task.succeeded");
        assert!(t.log_sealed && t.lease_expires_at.is_none());
        // The same completion again is accepted and changes nothing; another is refused.
        assert_eq!(
            complete(&mut t, &agent, 1, outcome(TaskStatus::Succeeded), now),
            Ok(TaskChange::default())
        );
        assert!(complete(&mut t, &agent, 1, outcome(TaskStatus::Failed), now).is_err());
        assert!(cancel(&mut t, now).is_err());
    }

    #[test]
    fn lost_attempts_requeue_then_fail() {
        let now = Utc::now();
        let mut t = fresh(now);
        for attempt in 1..=3 {
            dispatch(&mut t, attempt, now).expect("dispatch");
            let agent = t.agent.clone().expect("agent");
            claim(&mut t, &agent, None, Duration::seconds(1), now).expect("claim");
            let later = now + Duration::seconds(10);
            assert!(
                requeue(&mut t, (TaskStatus::Running, attempt + 1), 3, "x", later).is_err(),
                "a stale view is refused"
            );
            requeue(
                &mut t,
                (TaskStatus::Running, attempt),
                3,
                "lease expired",
                later,
            )
            .expect("requeue");
        }
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(t.attempt, 3);
        assert!(t
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("gave up after 3")));
    }

    #[test]
    fn an_agent_that_cannot_start_fails_the_submitted_attempt_only() {
        let now = Utc::now();
        let mut t = fresh(now);
        assert!(
            fail_start(&mut t, 1, "x", now).is_err(),
            "not dispatched yet"
        );
        dispatch(&mut t, 1, now).expect("dispatch");
        assert!(fail_start(&mut t, 2, "x", now).is_err(), "another attempt");
        let c = fail_start(&mut t, 1, "image pull failed: ImagePullBackOff", now).expect("fail");
        assert_eq!(c.events[0].kind, "task.failed");
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(
            t.reason.as_deref(),
            Some("agent did not start: image pull failed: ImagePullBackOff")
        );
        assert!(t.log_sealed && t.finished_at.is_some());
        // A claimed task is not failed by a late report.
        let mut t = fresh(now);
        dispatch(&mut t, 1, now).expect("dispatch");
        let agent = t.agent.clone().expect("agent");
        claim(&mut t, &agent, None, Duration::seconds(30), now).expect("claim");
        assert!(fail_start(&mut t, 1, "x", now).is_err());
        assert_eq!(t.status, TaskStatus::Running);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Dispatch,
        SubmitFailed,
        Claim { current: bool, process: u8 },
        Renew { current: bool, stale_token: bool },
        Complete { ok: bool, stale_token: bool },
        Cancel,
        Requeue { advance_secs: i64 },
        FailStart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Dispatch),
            Just(Op::SubmitFailed),
            (any::<bool>(), 0u8..3).prop_map(|(current, process)| Op::Claim { current, process }),
            (any::<bool>(), any::<bool>()).prop_map(|(current, stale_token)| Op::Renew {
                current,
                stale_token
            }),
            (any::<bool>(), any::<bool>())
                .prop_map(|(ok, stale_token)| Op::Complete { ok, stale_token }),
            Just(Op::Cancel),
            (0i64..120).prop_map(|advance_secs| Op::Requeue { advance_secs }),
            Just(Op::FailStart),
        ]
    }

    proptest! {
        /// Whatever happens, in any order: at most one live claim (a Running task has exactly
        /// one agent, a token and a lease); nothing leaves a terminal status; attempts, fencing
        /// tokens and claim counts only grow; a rejected operation leaves the task unchanged.
        #[test]
        fn invariants_hold_over_random_operation_sequences(ops in prop::collection::vec(op(), 1..60)) {
            let start = Utc::now();
            let ttl = Duration::seconds(30);
            let mut now = start;
            let mut t = fresh(start);
            let stranger = AgentName::new("agent-stranger-9").expect("agent");
            let processes = [None, Some(ProcessId::generate()), Some(ProcessId::generate())];
            for op in ops {
                let before = t.clone();
                let agent_of = |t: &Task, current: bool| {
                    if current { t.agent.clone().unwrap_or_else(|| stranger.clone()) } else { stranger.clone() }
                };
                let res = match op {
                    Op::Dispatch => dispatch(&mut t, before.attempt, now),
                    Op::SubmitFailed => submit_failed(&mut t, before.attempt, "refused", now),
                    Op::Claim { current, process } => {
                        let p = processes.get(usize::from(process)).and_then(Option::as_ref);
                        claim(&mut t, &agent_of(&before, current), p, ttl, now)
                    }
                    Op::Renew { current, stale_token } => {
                        let f = if stale_token { before.fencing + 1 } else { before.fencing };
                        renew(&mut t, &agent_of(&before, current), f, ttl, now)
                    }
                    Op::Complete { ok, stale_token } => {
                        let f = if stale_token { before.fencing + 1 } else { before.fencing };
                        let st = if ok { TaskStatus::Succeeded } else { TaskStatus::Failed };
                        complete(&mut t, &agent_of(&before, true), f, outcome(st), now)
                    }
                    Op::Cancel => cancel(&mut t, now),
                    Op::Requeue { advance_secs } => {
                        now += Duration::seconds(advance_secs);
                        requeue(&mut t, (before.status, before.attempt), 3, "lost", now)
                    }
                    Op::FailStart => fail_start(&mut t, before.attempt, "ImagePullBackOff", now),
                };
                if res.is_err() {
                    prop_assert_eq!(&t, &before, "a rejection changes nothing");
                }
                if before.status.is_terminal() {
                    prop_assert_eq!(t.status, before.status, "no way out of a terminal status");
                }
                prop_assert!(t.attempt >= before.attempt);
                prop_assert!(t.fencing >= before.fencing);
                prop_assert!(t.claims >= before.claims);
                prop_assert!(t.fencing == u64::from(t.claims), "one token per granted claim");
                if t.status == TaskStatus::Running {
                    prop_assert!(t.agent.is_some() && t.fencing > 0 && t.lease_expires_at.is_some());
                    prop_assert!(t.started_at.is_some(), "the running agent holds the claim");
                }
                if t.status.is_terminal() {
                    prop_assert!(t.finished_at.is_some() && t.lease_expires_at.is_none());
                }
                prop_assert!(t.attempt <= 3);
            }
        }
    }
}
