//! New tasks of one batch in one statement.
//!
//! A schedule is one statement (the task row, its audit rows and its events: data-modifying
//! CTEs). Measured with `pg_stat_statements` on the `replicas` bench (docs/BENCHMARKS.md),
//! most of a schedule's time in PostgreSQL is per statement, not per row: one backend runs a
//! replica's batches one after another, so its time per statement bounds schedules per
//! second. [`group`] therefore folds the new tasks of a batch into one statement with arrays
//! (`unnest`), which inserts every task, then the audit rows and events of the tasks it
//! inserted, in order, and answers each write's outcome in one row. When that statement
//! fails, [`Piped::split`] gives the writes back and each runs again alone in its own
//! savepoint, as any failed pipeline's writes do, so one bad task never fails the others.

use super::{
    again, journal_cte, journal_params, journaled, param_refs, Finish, Params, Piped, StoreError,
    TASK_COLS,
};
use crate::model::{NewAudit, NewEvent};
use std::collections::HashSet;
use std::sync::LazyLock;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The statement of one new task alone, with its journal ([`journal_cte`] at `$22`).
static ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH t AS (INSERT INTO tasks ({TASK_COLS}, token_hash) VALUES ($1, $2, $3, $4, $5, \
         $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
         ON CONFLICT (id) DO NOTHING RETURNING 1){}",
        journal_cte("t", 22)
    )
});

/// The statement of several new tasks: `$1..$21` the columns as arrays (one element per
/// task), `$22` the journal's time, `$23..$27` the audit rows (owner task id, actor, action,
/// subject, detail), `$28..$33` the events (whose task is their owner). A task whose id
/// exists already is not inserted (`ON CONFLICT DO NOTHING`), and neither are its audit rows
/// and events. Answers one row: per task, in order, whether it was inserted and the id of its
/// last event.
static MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH s AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], \
         $12::int8[], $13::int8[], $14::int8[], $15::int4[], $16::text[], $17::text[], \
         $18::text[], $19::text[], $20::bool[], $21::text[]) WITH ORDINALITY AS s(id, org, \
         task, agent_hint, status, agent, attempt, fencing, claims, lease_expires_at, \
         created_at, updated_at, started_at, finished_at, exit_code, reason, artifacts, pr_url, \
         context, log_sealed, token_hash, w)), \
         t AS (INSERT INTO tasks ({TASK_COLS}, token_hash) SELECT {TASK_COLS}, token_hash \
         FROM s ORDER BY w ON CONFLICT (id) DO NOTHING RETURNING id), \
         a AS (INSERT INTO audit (ts, actor, action, subject, detail) \
         SELECT $22::BIGINT, actor, action, subject, detail FROM \
         unnest($23::text[], $24::text[], $25::text[], $26::text[], $27::text[]) \
         WITH ORDINALITY AS x(owner, actor, action, subject, detail, n) \
         WHERE owner IN (SELECT id FROM t) ORDER BY n), \
         e AS (INSERT INTO events (ts, kind, task_id, agent, org, status, message) \
         SELECT $22::BIGINT, kind, task_id, agent, org, status, message FROM \
         unnest($28::text[], $29::text[], $30::text[], $31::text[], $32::text[], $33::text[]) \
         WITH ORDINALITY AS x(kind, task_id, agent, org, status, message, n) \
         WHERE task_id IN (SELECT id FROM t) ORDER BY n RETURNING id, task_id) \
         SELECT array_agg(t.id IS NOT NULL ORDER BY s.w), array_agg(em.m ORDER BY s.w) \
         FROM s LEFT JOIN t ON t.id = s.id LEFT JOIN \
         (SELECT task_id, MAX(id) AS m FROM e GROUP BY task_id) em ON em.task_id = s.id"
    )
});

/// A new task's row, as the statement's parameters.
pub(super) struct TaskRow {
    pub id: String,
    pub org: String,
    pub task: String,
    pub agent_hint: Option<String>,
    pub status: &'static str,
    pub agent: Option<String>,
    pub attempt: i64,
    pub fencing: i64,
    pub claims: i64,
    pub lease_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub artifacts: String,
    pub pr_url: Option<String>,
    pub context: Option<String>,
    pub log_sealed: bool,
    pub token_hash: String,
}

/// One new task with its journal, waiting for a batch: whether it was inserted (false: the id
/// exists) and its last event id.
pub(super) struct TaskInsert {
    row: TaskRow,
    events: Vec<NewEvent>,
    audit: Vec<NewAudit>,
    /// The journal's parameters for [`ONE`].
    journal: Params,
    reply: oneshot::Sender<Result<(bool, u64), StoreError>>,
}

impl TaskInsert {
    pub(super) fn new(
        row: TaskRow,
        events: Vec<NewEvent>,
        audit: Vec<NewAudit>,
        reply: oneshot::Sender<Result<(bool, u64), StoreError>>,
    ) -> Self {
        let mut journal = Params::new();
        journal_params(&mut journal, &events, &audit);
        Self {
            row,
            events,
            audit,
            journal,
            reply,
        }
    }

    /// Whether [`MANY`] can carry it: its events are all its own task's (the statement finds
    /// a task's last event by the event's task id).
    fn groupable(&self) -> bool {
        self.events
            .iter()
            .all(|e| e.task_id.as_ref().map(|t| t.as_str()) == Some(self.row.id.as_str()))
    }

    fn answer(self, r: Result<(bool, u64), StoreError>) -> (bool, Finish) {
        answer(self.reply, r)
    }
}

/// The answer of a write whose statement gave `r`, once the commit is known.
fn answer(
    reply: oneshot::Sender<Result<(bool, u64), StoreError>>,
    r: Result<(bool, u64), StoreError>,
) -> (bool, Finish) {
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

impl Piped for TaskInsert {
    fn sql(&self) -> &str {
        &ONE
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let r = &self.row;
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![
            &r.id,
            &r.org,
            &r.task,
            &r.agent_hint,
            &r.status,
            &r.agent,
            &r.attempt,
            &r.fencing,
            &r.claims,
            &r.lease_expires_at,
            &r.created_at,
            &r.updated_at,
            &r.started_at,
            &r.finished_at,
            &r.exit_code,
            &r.reason,
            &r.artifacts,
            &r.pr_url,
            &r.context,
            &r.log_sealed,
            &r.token_hash,
        ];
        p.extend(param_refs(&self.journal));
        p
    }

    fn notifies(&self) -> bool {
        !self.events.is_empty()
    }

    fn op(&self) -> &'static str {
        "insert task"
    }

    fn settle(self: Box<Self>, row: Result<Row, StoreError>) -> (bool, Finish) {
        let r = row.and_then(|row| journaled(&row));
        self.answer(r)
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Piped>> {
        vec![self]
    }
}

/// Several [`TaskInsert`]s as one statement ([`MANY`]).
struct Grouped {
    members: Vec<TaskInsert>,
    params: Params,
}

impl Grouped {
    fn new(members: Vec<TaskInsert>) -> Self {
        fn col<V: ToSql + Sync + Send + 'static>(
            m: &[TaskInsert],
            f: impl Fn(&TaskRow) -> V,
        ) -> Box<dyn ToSql + Sync + Send> {
            Box::new(m.iter().map(|t| f(&t.row)).collect::<Vec<V>>())
        }
        let m = &members;
        let mut p: Params = vec![
            col(m, |r| r.id.clone()),
            col(m, |r| r.org.clone()),
            col(m, |r| r.task.clone()),
            col(m, |r| r.agent_hint.clone()),
            col(m, |r| r.status),
            col(m, |r| r.agent.clone()),
            col(m, |r| r.attempt),
            col(m, |r| r.fencing),
            col(m, |r| r.claims),
            col(m, |r| r.lease_expires_at),
            col(m, |r| r.created_at),
            col(m, |r| r.updated_at),
            col(m, |r| r.started_at),
            col(m, |r| r.finished_at),
            col(m, |r| r.exit_code),
            col(m, |r| r.reason.clone()),
            col(m, |r| r.artifacts.clone()),
            col(m, |r| r.pr_url.clone()),
            col(m, |r| r.context.clone()),
            col(m, |r| r.log_sealed),
            col(m, |r| r.token_hash.clone()),
        ];
        p.push(Box::new(super::ms(chrono::Utc::now())));
        let audit: Vec<(&str, &NewAudit)> = m
            .iter()
            .flat_map(|t| t.audit.iter().map(|a| (t.row.id.as_str(), a)))
            .collect();
        let texts = |f: &dyn Fn(&(&str, &NewAudit)) -> String| -> Box<dyn ToSql + Sync + Send> {
            Box::new(audit.iter().map(f).collect::<Vec<String>>())
        };
        p.push(texts(&|(o, _)| (*o).to_owned()));
        p.push(texts(&|(_, a)| a.actor.clone()));
        p.push(texts(&|(_, a)| a.action.clone()));
        p.push(texts(&|(_, a)| a.subject.clone()));
        p.push(Box::new(
            audit
                .iter()
                .map(|(_, a)| a.detail.clone())
                .collect::<Vec<Option<String>>>(),
        ));
        let events: Vec<&NewEvent> = m.iter().flat_map(|t| t.events.iter()).collect();
        let opts = |f: &dyn Fn(&NewEvent) -> Option<String>| -> Box<dyn ToSql + Sync + Send> {
            Box::new(events.iter().map(|e| f(e)).collect::<Vec<Option<String>>>())
        };
        p.push(Box::new(
            events
                .iter()
                .map(|e| e.kind.clone())
                .collect::<Vec<String>>(),
        ));
        p.push(opts(&|e| e.task_id.as_ref().map(|v| v.as_str().to_owned())));
        p.push(opts(&|e| e.agent.as_ref().map(|v| v.as_str().to_owned())));
        p.push(opts(&|e| e.org.as_ref().map(|v| v.as_str().to_owned())));
        p.push(opts(&|e| e.status.map(|s| s.as_str().to_owned())));
        p.push(opts(&|e| e.message.clone()));
        Self { members, params: p }
    }

    /// Each task's outcome from the statement's row.
    fn outcomes(&self, row: &Row) -> Result<Vec<(bool, u64)>, StoreError> {
        let inserted: Vec<bool> = super::get(row, 0)?;
        let last: Vec<Option<i64>> = super::get(row, 1)?;
        if inserted.len() != self.members.len() || last.len() != self.members.len() {
            return Err(super::corrupt(format!(
                "inserting {} tasks answered {} outcomes",
                self.members.len(),
                inserted.len()
            )));
        }
        inserted
            .into_iter()
            .zip(last)
            .map(|(i, l)| Ok((i, l.map(super::id_of).transpose()?.unwrap_or(0))))
            .collect()
    }
}

impl Piped for Grouped {
    fn sql(&self) -> &str {
        &MANY
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        param_refs(&self.params)
    }

    fn notifies(&self) -> bool {
        self.members.iter().any(|m| !m.events.is_empty())
    }

    fn op(&self) -> &'static str {
        "insert tasks"
    }

    fn settle(self: Box<Self>, row: Result<Row, StoreError>) -> (bool, Finish) {
        let outcomes = row.and_then(|row| self.outcomes(&row));
        let mut finishers = Vec::with_capacity(self.members.len());
        let mut all_ok = true;
        match outcomes {
            Ok(o) => {
                for (m, r) in self.members.into_iter().zip(o) {
                    let (ok, f) = m.answer(Ok(r));
                    all_ok &= ok;
                    finishers.push(f);
                }
            }
            Err(e) => {
                all_ok = false;
                for m in self.members {
                    finishers.push(m.answer(Err(again(&e))).1);
                }
            }
        }
        let finish: Finish = Box::new(move |commit| {
            for f in finishers {
                f(commit);
            }
        });
        (all_ok, finish)
    }

    fn fail(self: Box<Self>, e: StoreError) {
        for m in self.members {
            let _ = m.reply.send(Err(again(&e)));
        }
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Piped>> {
        self.members
            .into_iter()
            .map(|m| Box::new(m) as Box<dyn Piped>)
            .collect()
    }
}

/// The new tasks of a batch as statements for its pipeline: those that can go together in
/// one statement ([`MANY`]; ids unique in the batch), and each other one alone.
pub(super) fn group(inserts: Vec<TaskInsert>) -> Vec<Box<dyn Piped>> {
    let mut seen = HashSet::new();
    let (mut together, mut alone) = (Vec::new(), Vec::<Box<dyn Piped>>::new());
    for t in inserts {
        if t.groupable() && seen.insert(t.row.id.clone()) {
            together.push(t);
        } else {
            alone.push(Box::new(t));
        }
    }
    match together.len() {
        0 => {}
        1 => alone.extend(together.into_iter().map(|t| Box::new(t) as Box<dyn Piped>)),
        _ => alone.insert(0, Box::new(Grouped::new(together))),
    }
    alone
}
