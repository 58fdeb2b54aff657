//! Conditional task updates (claims, completions, requeues...) in a batch's pipeline.
//!
//! A task update reads and locks its row, applies the pure [`TaskUpdateFn`] and writes the
//! row back with its events and audit rows (one statement). The batch reads and locks the rows
//! of all its updates at its start, in one statement ([`super::prefetch`]); with the row in
//! hand, [`TaskUpdate::prepare`] applies the function at once, and what is left to write is
//! one statement of data ([`UpdateRow`]), which goes into the batch's pipeline with the other
//! statement writes: a batch of claims is one round trip instead of one per claim. Like every
//! pipelined write, it runs again alone in its own savepoint when the pipeline fails. An
//! update whose row was not read at the start (a second update of one task in a batch, or a
//! task that does not exist) runs after the pipeline, on its own, reading its row then
//! ([`TaskUpdate::run_alone`]).

use super::{
    again, artifacts_json, cursor, get, id_of, journal_cte, journal_params, journaled, ms,
    param_refs, Batch, Finish, Params, Piped, StoreError, TaskChange, TaskUpdateFn, TaskUpdated,
};
use crate::model::Task;
use crate::names::TaskId;
use std::sync::LazyLock;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The row, its audit rows and its events in one statement ([`journal_cte`] at `$20`), and
/// the task's highest stored log sequence number ([`TaskUpdated::max_log_seq`]: a claim
/// answers it, and reading it here saves the claim a read of its own after the commit). The
/// batch holds the ordering lock, so every other replica's log lines that are not visible
/// here are written after this commit, through a batch that reads the task's row as this
/// update left it (log lines are fenced on it). An update that sets a new agent token hash
/// (`$18`) tells every replica's token cache at commit ([`super::token_cache`]).
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH u AS (UPDATE tasks SET status=$2, agent=$3, attempt=$4, fencing=$5, \
         claims=$6, lease_expires_at=$7, updated_at=$8, started_at=$9, \
         finished_at=$10, exit_code=$11, reason=$12, artifacts=$13, pr_url=$14, \
         agent_hint=$15, task=$16, log_sealed=$17, \
         token_hash=COALESCE($18, token_hash), claim_process=$19 WHERE id=$1 \
         RETURNING CASE WHEN $18::TEXT IS NULL THEN 1 \
         ELSE (SELECT 1 FROM pg_notify('{}', $1)) END){}, \
         (SELECT COALESCE(MAX(seq), 0)::BIGINT FROM logs WHERE task_id = $1)",
        super::token_cache::TOKENS_CHANNEL,
        journal_cte("u", 20)
    )
});

/// The answer to an update's caller.
type Reply = oneshot::Sender<Result<TaskUpdated, StoreError>>;

/// A task update waiting for a batch.
pub(super) struct TaskUpdate {
    pub id: TaskId,
    token_hash: Option<String>,
    update: TaskUpdateFn,
    reply: Reply,
}

/// What is left of an update once its function ran.
pub(super) enum Prepared {
    /// Nothing to write (refused, or no change): the answer, once the commit is known.
    Done(Finish),
    /// A statement to run.
    Write(Box<UpdateRow>),
}

impl TaskUpdate {
    pub(super) fn new(
        id: TaskId,
        token_hash: Option<String>,
        update: TaskUpdateFn,
        reply: Reply,
    ) -> Self {
        Self {
            id,
            token_hash,
            update,
            reply,
        }
    }

    /// Applies the update to `before`, the task's row as locked by the batch.
    pub(super) fn prepare(self, before: Task) -> Prepared {
        let TaskUpdate {
            token_hash,
            update,
            reply,
            ..
        } = self;
        let mut after = before.clone();
        let change: TaskChange = match update(&mut after) {
            Ok(c) => c,
            Err(r) => return Prepared::Done(answer(reply, Err(StoreError::Rejected(r))).1),
        };
        let changed = after != before || !change.events.is_empty() || token_hash.is_some();
        if !changed {
            // Nothing written (the row lock ends with the batch).
            let r = Ok(TaskUpdated {
                task: after,
                changed: false,
                last_event_id: None,
                max_log_seq: None,
            });
            return Prepared::Done(answer(reply, r).1);
        }
        match UpdateRow::new(after, &change, token_hash, reply) {
            Ok(w) => Prepared::Write(Box::new(w)),
            Err((reply, e)) => Prepared::Done(answer(reply, Err(e)).1),
        }
    }

    /// Runs the update on its own in the batch `b` (inside the job's savepoint): reads and
    /// locks its row, applies it, writes. Returns whether it succeeded and its answer.
    pub(super) async fn run_alone(self, b: &Batch<'_>) -> (bool, Finish) {
        let e = b.err("update task");
        let before = match b.lock_row(&self.id, "update task").await {
            Ok(Some(t)) => t,
            Ok(None) => {
                let err = StoreError::NotFound(format!("task {}", self.id));
                return answer(self.reply, Err(err));
            }
            Err(err) => return answer(self.reply, Err(err)),
        };
        match self.prepare(before) {
            Prepared::Done(f) => (true, f),
            Prepared::Write(w) => {
                let row = match b.c.prepare_cached(w.sql()).await {
                    Ok(stmt) => b.c.query_one(&stmt, &w.params()).await.map_err(e),
                    Err(err) => Err(e(err)),
                };
                if row.is_ok() && w.notifies() {
                    b.notify();
                }
                w.settle(row)
            }
        }
    }

    /// The batch could not run the update: answers `e`.
    pub(super) fn fail(self, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

/// The answer of an update that gave `r`, once the commit is known: `r` itself when the
/// update failed (it wrote nothing), else `r` if the commit succeeded and its error if not.
fn answer(reply: Reply, r: Result<TaskUpdated, StoreError>) -> (bool, Finish) {
    let ok = r.is_ok();
    let finish: Finish = Box::new(move |commit| {
        let out = match (commit, r) {
            (_, Err(e)) => Err(e),
            (Ok(()), ok) => ok,
            (Err(e), Ok(_)) => Err(again(e)),
        };
        let _ = reply.send(out);
    });
    (ok, finish)
}

/// An update's write: the task's new row with its journal, one statement of data.
pub(super) struct UpdateRow {
    after: Task,
    events: bool,
    params: Params,
    reply: Reply,
}

impl UpdateRow {
    #[allow(clippy::result_large_err)]
    fn new(
        after: Task,
        change: &TaskChange,
        token_hash: Option<String>,
        reply: Reply,
    ) -> Result<Self, (Reply, StoreError)> {
        let artifacts = match artifacts_json(&after.artifacts) {
            Ok(a) => a,
            Err(e) => return Err((reply, e)),
        };
        let t = &after;
        let mut params: Params = vec![
            Box::new(t.id.as_str().to_owned()),
            Box::new(t.status.as_str()),
            Box::new(t.agent.as_ref().map(|a| a.as_str().to_owned())),
            Box::new(i64::from(t.attempt)),
            Box::new(cursor(t.fencing)),
            Box::new(i64::from(t.claims)),
            Box::new(t.lease_expires_at.map(ms)),
            Box::new(ms(t.updated_at)),
            Box::new(t.started_at.map(ms)),
            Box::new(t.finished_at.map(ms)),
            Box::new(t.exit_code),
            Box::new(t.reason.clone()),
            Box::new(artifacts),
            Box::new(t.pr_url.clone()),
            Box::new(t.agent_hint.clone()),
            Box::new(t.task.clone()),
            Box::new(t.log_sealed),
            Box::new(token_hash),
            Box::new(t.claim_process.as_ref().map(|p| p.as_str().to_owned())),
        ];
        journal_params(&mut params, &change.events, &change.audit);
        Ok(Self {
            after,
            events: !change.events.is_empty(),
            params,
            reply,
        })
    }
}

impl Piped for UpdateRow {
    fn sql(&self) -> &str {
        &UPDATE
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        param_refs(&self.params)
    }

    fn notifies(&self) -> bool {
        self.events
    }

    fn op(&self) -> &'static str {
        "update task"
    }

    fn settle(self: Box<Self>, row: Result<Row, StoreError>) -> (bool, Finish) {
        let UpdateRow {
            after,
            events,
            reply,
            ..
        } = *self;
        let r = row.and_then(|row| {
            let (_, last) = journaled(&row)?;
            let max_log_seq = id_of(get(&row, 2)?)?;
            Ok(TaskUpdated {
                task: after,
                changed: true,
                last_event_id: events.then_some(last),
                max_log_seq: Some(max_log_seq),
            })
        });
        answer(reply, r)
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Piped>> {
        vec![self]
    }
}
