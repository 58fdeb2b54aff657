//! Ships log lines to the orchestrator in order, in batches, retrying until each batch is
//! acknowledged. Lines carry per-task sequence numbers, so a batch re-sent after a lost reply is
//! not stored twice: nothing is lost or duplicated across reconnects.
//!
//! Logging never stops a task: whatever `/agent/log` answers, the shipper decides locally and
//! goes on (the heartbeats, not the log, keep the lease):
//! - batches are capped by lines and by bytes ([`ShipLimits`]), well under the orchestrator's
//!   body limit, and lines are cut at its line limit ([`super::lines`]);
//! - memory is bounded: past [`ShipLimits::max_queued_bytes`] (an orchestrator slow or
//!   unreachable for long), output lines are dropped and one system line says how many;
//! - `quotaExceeded` in a reply: further stdout/stderr lines are dropped here, one system line
//!   says so, system lines are still sent;
//! - 409 `log_sealed`, `stale_fencing` and 401/403/404 end shipping (the claim or the log is
//!   gone); 409 `log_out_of_order` drops that batch; 413/422 split the batch, then drop the
//!   line; 5xx, 429 and transport errors are retried with backoff;
//! - [`LogShipper::finish`] sends everything left and then a batch with `final: true`, so the
//!   orchestrator can seal the log, and returns after at most the time it is given.

use crate::api::LogRequest;
use crate::client::{AgentClient, ClientError};
use crate::model::{LogStream, NewLogLine};
use crate::names::AgentName;
use chrono::Utc;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Bounds of the shipper.
#[derive(Debug, Clone, Copy)]
pub struct ShipLimits {
    /// Most lines in one request.
    pub batch_lines: usize,
    /// Most bytes of serialized lines in one request.
    pub batch_bytes: usize,
    /// Most bytes of lines kept in memory while waiting for the orchestrator.
    pub max_queued_bytes: usize,
}

impl Default for ShipLimits {
    fn default() -> Self {
        Self {
            batch_lines: 500,
            // The orchestrator takes bodies up to 2 MiB.
            batch_bytes: 1024 * 1024,
            max_queued_bytes: 32 * 1024 * 1024,
        }
    }
}

/// How shipping ended, from [`LogShipper::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipReport {
    /// The final batch was acknowledged: the orchestrator has every line it accepted.
    pub sealed: bool,
    /// Lines dropped here (quota, full buffer, refused batches, after the end).
    pub dropped: u64,
    /// Why shipping stopped early, if it did (refused, timed out).
    pub problem: Option<String>,
}

struct Queued {
    line: NewLogLine,
    size: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    next_seq: u64,
    quota_exceeded: bool,
    /// Output lines (and their bytes) dropped since the buffer filled up, not yet reported.
    overflow: Option<(u64, u64)>,
    dropped: u64,
    final_requested: bool,
    /// With `final_requested`: the last batch seals the log (`final: true`). Without it the
    /// queue is only drained (see [`LogShipper::flush`]).
    seal: bool,
    /// Set when shipping is over: `None` inside = sealed, `Some(why)` = stopped early.
    ended: Option<Option<String>>,
    /// Smaller batches after a 413/422.
    max_lines_now: Option<usize>,
}

impl State {
    fn enqueue(&mut self, stream: LogStream, line: String) {
        let line = NewLogLine {
            seq: self.next_seq,
            stream,
            line,
            ts: Utc::now(),
        };
        self.next_seq += 1;
        let size = serde_json::to_vec(&line).map(|v| v.len() + 1).unwrap_or(0);
        self.queued_bytes += size;
        self.queue.push_back(Queued { line, size });
    }

    fn pop_front(&mut self, n: usize) {
        for q in self.queue.drain(..n.min(self.queue.len())) {
            self.queued_bytes -= q.size;
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    ended: watch::Sender<bool>,
    limits: ShipLimits,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the background shipper. Cheap to clone.
#[derive(Clone)]
pub struct LogShipper {
    shared: Arc<Shared>,
    /// Secrets removed from every line before it is queued.
    redactor: Arc<crate::redact::Redactor>,
}

fn is_output(s: LogStream) -> bool {
    matches!(s, LogStream::Stdout | LogStream::Stderr)
}

impl LogShipper {
    /// Starts shipping for `agent` under claim `fencing`; sequence numbers start at `first_seq`.
    pub fn start(client: AgentClient, agent: AgentName, fencing: u64, first_seq: u64) -> Self {
        Self::start_with(client, agent, fencing, first_seq, ShipLimits::default())
    }

    /// Like [`LogShipper::start`] with explicit limits.
    pub fn start_with(
        client: AgentClient,
        agent: AgentName,
        fencing: u64,
        first_seq: u64,
        limits: ShipLimits,
    ) -> Self {
        let (ended, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_seq: first_seq.max(1),
                ..State::default()
            }),
            wake: Notify::new(),
            ended,
            limits,
        });
        tokio::spawn(ship_loop(client, agent, fencing, shared.clone()));
        Self {
            shared,
            redactor: Arc::default(),
        }
    }

    /// Removes `redactor`'s secrets from every line pushed from now on.
    pub fn with_redactor(mut self, redactor: crate::redact::Redactor) -> Self {
        self.redactor = Arc::new(redactor);
        self
    }

    /// Queues a line (never blocks; memory is bounded: see the module doc).
    pub fn push(&self, stream: LogStream, line: String) {
        let line = super::lines::clip(self.redactor.apply_owned(line));
        let limits = self.shared.limits;
        let mut st = self.shared.lock();
        if st.ended.is_some() || (st.final_requested && st.queue.is_empty()) {
            st.dropped += 1;
            return;
        }
        if is_output(stream) {
            if st.quota_exceeded {
                st.dropped += 1;
                return;
            }
            if st.queued_bytes + line.len() > limits.max_queued_bytes {
                st.dropped += 1;
                match &mut st.overflow {
                    Some((n, b)) => {
                        *n += 1;
                        *b += line.len() as u64;
                    }
                    None => {
                        st.overflow = Some((1, line.len() as u64));
                        st.enqueue(
                            LogStream::System,
                            "log buffer full (the orchestrator is slow or unreachable): \
                             dropping output lines until it catches up"
                                .into(),
                        );
                        self.shared.wake.notify_one();
                    }
                }
                return;
            }
        } else if st.queued_bytes + line.len() > 2 * limits.max_queued_bytes {
            st.dropped += 1;
            return;
        }
        st.enqueue(stream, line);
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Sends every queued line, then the final batch (`final: true`), waiting at most `limit`.
    /// Never fails: the report says what could not be done. Later pushes are dropped.
    pub async fn finish(&self, limit: Duration) -> ShipReport {
        self.end(limit, true).await
    }

    /// Sends every queued line without sealing the log, waiting at most `limit`, then stops
    /// (later pushes are dropped). For an agent stopped before its task ended: another agent
    /// (the replacement pod of the same attempt, or the next attempt) goes on writing the log.
    /// `sealed` in the report is false; `problem` says what could not be sent.
    pub async fn flush(&self, limit: Duration) -> ShipReport {
        self.end(limit, false).await
    }

    async fn end(&self, limit: Duration, seal: bool) -> ShipReport {
        {
            let mut st = self.shared.lock();
            st.final_requested = true;
            st.seal = seal;
        }
        self.shared.wake.notify_one();
        let mut ended = self.shared.ended.subscribe();
        let timed_out = tokio::time::timeout(limit, ended.wait_for(|e| *e))
            .await
            .is_err();
        let st = self.shared.lock();
        match &st.ended {
            Some(None) => ShipReport {
                sealed: seal,
                dropped: st.dropped,
                problem: None,
            },
            Some(Some(why)) => ShipReport {
                sealed: false,
                dropped: st.dropped,
                problem: Some(why.clone()),
            },
            None => ShipReport {
                sealed: false,
                dropped: st.dropped,
                problem: timed_out.then(|| {
                    format!(
                        "{} line(s) not acknowledged after {limit:?}",
                        st.queue.len()
                    )
                }),
            },
        }
    }
}

/// What to do after a refused batch.
enum Refusal {
    /// Drop this batch and go on.
    DropBatch,
    /// Retry with smaller batches (one line: drop it).
    Split,
    /// Stop shipping.
    Stop(String),
}

fn classify(e: &ClientError) -> Refusal {
    match (e.status(), e.code()) {
        (Some(409), Some("log_out_of_order")) => Refusal::DropBatch,
        (Some(409), Some("log_sealed")) => Refusal::Stop("the orchestrator sealed the log".into()),
        (Some(409 | 401 | 403 | 404), _) => {
            Refusal::Stop(format!("the orchestrator refused the log: {e}"))
        }
        (Some(413 | 422), _) => Refusal::Split,
        _ => Refusal::DropBatch,
    }
}

async fn ship_loop(client: AgentClient, agent: AgentName, fencing: u64, shared: Arc<Shared>) {
    let limits = shared.limits;
    let mut delay = Duration::from_millis(100);
    loop {
        // Wait for something to send.
        let (lines, is_final) = loop {
            {
                let mut st = shared.lock();
                if st.ended.is_some() {
                    return;
                }
                if st.final_requested && !st.seal && st.queue.is_empty() {
                    // Drained, not sealed: done.
                    st.ended = Some(None);
                    drop(st);
                    let _ = shared.ended.send(true);
                    return;
                }
                if !st.queue.is_empty() || st.final_requested {
                    break take_batch(&st, &limits);
                }
            }
            shared.wake.notified().await;
            // Give a burst of lines a moment to gather into one batch.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let n = lines.len();
        let req = LogRequest {
            agent: agent.clone(),
            fencing,
            lines,
            is_final,
        };
        let result = client.log(&req).await;
        let mut st = shared.lock();
        match result {
            Ok(resp) => {
                delay = Duration::from_millis(100);
                st.pop_front(n);
                st.max_lines_now = None;
                if is_final {
                    // Lines pushed while the final batch was on its way are not sent.
                    st.dropped += st.queue.len() as u64;
                    st.ended = Some(None);
                    drop(st);
                    let _ = shared.ended.send(true);
                    return;
                }
                if resp.quota_exceeded && !st.quota_exceeded {
                    st.quota_exceeded = true;
                    let before = st.queue.len();
                    let mut freed = 0;
                    st.queue.retain(|q| {
                        let keep = !is_output(q.line.stream);
                        if !keep {
                            freed += q.size;
                        }
                        keep
                    });
                    st.queued_bytes -= freed;
                    st.dropped += (before - st.queue.len()) as u64;
                    st.enqueue(
                        LogStream::System,
                        "log quota exceeded: the runner's further output is not stored \
                         (the task goes on)"
                            .into(),
                    );
                }
                if let Some((lines, bytes)) = st.overflow {
                    if st.queued_bytes < limits.max_queued_bytes / 2 {
                        st.overflow = None;
                        st.enqueue(
                            LogStream::System,
                            format!(
                                "dropped {lines} output line(s) ({bytes} bytes) while the log \
                                 buffer was full"
                            ),
                        );
                    }
                }
            }
            Err(e) if e.is_transient() => {
                drop(st);
                tracing::warn!(error = %e, "log upload failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => match classify(&e) {
                Refusal::Stop(why) => {
                    tracing::warn!(error = %e, "log upload refused; dropping further lines");
                    st.dropped += st.queue.len() as u64;
                    st.queue.clear();
                    st.queued_bytes = 0;
                    st.ended = Some(Some(why));
                    drop(st);
                    let _ = shared.ended.send(true);
                    return;
                }
                Refusal::Split if n > 1 => {
                    tracing::warn!(error = %e, lines = n, "log batch refused; splitting it");
                    st.max_lines_now = Some((n / 2).max(1));
                }
                Refusal::Split | Refusal::DropBatch => {
                    tracing::warn!(error = %e, lines = n, "log batch refused; dropping it");
                    st.pop_front(n);
                    st.dropped += n as u64;
                    st.max_lines_now = None;
                }
            },
        }
    }
}

/// The next batch from the front of the queue, and whether it is the final one.
fn take_batch(st: &State, limits: &ShipLimits) -> (Vec<NewLogLine>, bool) {
    let max_lines = st.max_lines_now.unwrap_or(limits.batch_lines).max(1);
    let mut bytes = 0;
    let mut lines = Vec::new();
    for q in st.queue.iter() {
        if lines.len() >= max_lines || (!lines.is_empty() && bytes + q.size > limits.batch_bytes) {
            break;
        }
        bytes += q.size;
        lines.push(q.line.clone());
    }
    let is_final = st.final_requested && st.seal && lines.len() == st.queue.len();
    (lines, is_final)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State as AxState;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};

    /// A stand-in for `/agent/log` (a mock for unit tests): records every request body and
    /// answers with what `reply` says for the n-th call.
    type Reply = Arc<dyn Fn(usize, &Value) -> (StatusCode, Value) + Send + Sync>;

    #[derive(Clone)]
    struct Mock {
        bodies: Arc<Mutex<Vec<(usize, Value)>>>,
        reply: Reply,
    }

    async fn log(AxState(m): AxState<Mock>, body: axum::body::Bytes) -> (StatusCode, Json<Value>) {
        let v: Value = serde_json::from_slice(&body).unwrap();
        let n = {
            let mut b = m.bodies.lock().unwrap();
            b.push((body.len(), v.clone()));
            b.len() - 1
        };
        let (s, r) = (m.reply)(n, &v);
        (s, Json(r))
    }

    fn ok(v: &Value) -> (StatusCode, Value) {
        let n = v["lines"].as_array().unwrap().len();
        (StatusCode::OK, json!({"inserted": n, "maxSeq": 0}))
    }

    fn err(status: StatusCode, code: &str) -> (StatusCode, Value) {
        (status, json!({"error": {"code": code, "message": code}}))
    }

    async fn mock(reply: Reply) -> (AgentClient, Arc<Mutex<Vec<(usize, Value)>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/agent/log", post(log))
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::orchestrator::http::MAX_BODY_BYTES,
            ))
            .with_state(Mock {
                bodies: bodies.clone(),
                reply,
            });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let c = AgentClient::new(
            &format!("http://{addr}"),
            crate::token::Secret::new("gnt.t1.x"),
        )
        .unwrap();
        (c, bodies)
    }

    fn agent() -> AgentName {
        AgentName::new("agent-1").unwrap()
    }

    fn lines_of(bodies: &[(usize, Value)]) -> Vec<(u64, String, String)> {
        bodies
            .iter()
            .flat_map(|(_, b)| b["lines"].as_array().unwrap().clone())
            .map(|l| {
                (
                    l["seq"].as_u64().unwrap(),
                    l["stream"].as_str().unwrap().to_owned(),
                    l["line"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn large_output_goes_in_bounded_batches_and_ends_with_a_final_one() {
        let (c, bodies) = mock(Arc::new(|_, v| ok(v))).await;
        let s = LogShipper::start(c, agent(), 1, 1);
        // 200 lines of 15 KB and one line over 2 MiB (cut to the line limit).
        for i in 0..200 {
            s.push(LogStream::Stdout, format!("{i:03}{}", "x".repeat(15_000)));
        }
        s.push(LogStream::Stderr, "y".repeat(3 << 20));
        let report = s.finish(Duration::from_secs(20)).await;
        assert_eq!(
            report,
            ShipReport {
                sealed: true,
                dropped: 0,
                problem: None
            }
        );
        let b = bodies.lock().unwrap().clone();
        assert!(b.len() >= 3, "{} batches", b.len());
        for (size, _) in &b {
            assert!(*size <= 1024 * 1024 + 4096, "a batch of {size} bytes");
        }
        let finals: Vec<bool> = b
            .iter()
            .map(|(_, v)| v["final"].as_bool().unwrap_or(false))
            .collect();
        assert_eq!(finals.iter().filter(|f| **f).count(), 1);
        assert!(finals.last().unwrap());
        let l = lines_of(&b);
        assert_eq!(l.len(), 201);
        assert!(l.windows(2).all(|w| w[0].0 < w[1].0));
        let last = &l[200].2;
        assert!(last.len() <= crate::orchestrator::MAX_LOG_LINE_BYTES);
        assert!(last.ends_with("bytes]"), "{}", &last[last.len() - 40..]);
        // Pushed after the end: dropped, never sent.
        s.push(LogStream::Stdout, "late".into());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bodies.lock().unwrap().len(), b.len());
    }

    #[tokio::test]
    async fn flush_sends_every_line_without_sealing_and_then_stops() {
        let (c, bodies) = mock(Arc::new(|_, v| ok(v))).await;
        let s = LogShipper::start(c, agent(), 1, 1);
        for i in 0..5 {
            s.push(LogStream::Stdout, format!("line {i}"));
        }
        let report = s.flush(Duration::from_secs(10)).await;
        assert_eq!(
            report,
            ShipReport {
                sealed: false,
                dropped: 0,
                problem: None
            }
        );
        let b = bodies.lock().unwrap().clone();
        assert_eq!(lines_of(&b).len(), 5);
        assert!(
            b.iter()
                .all(|(_, v)| !v["final"].as_bool().unwrap_or(false)),
            "no final batch"
        );
        s.push(LogStream::Stdout, "late".into());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            bodies.lock().unwrap().len(),
            b.len(),
            "nothing after the flush"
        );
    }

    #[tokio::test]
    async fn quota_exceeded_drops_output_but_keeps_system_lines() {
        let (c, bodies) = mock(Arc::new(|_, v| {
            let n = v["lines"].as_array().unwrap().len();
            (
                StatusCode::OK,
                json!({"inserted": n, "maxSeq": 0, "quotaExceeded": true}),
            )
        }))
        .await;
        let s = LogShipper::start(c, agent(), 1, 10);
        s.push(LogStream::Stdout, "first".into());
        // Let the first batch be answered before more output comes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..50 {
            s.push(LogStream::Stdout, format!("out {i}"));
        }
        s.push(LogStream::System, "runner exited with code 0".into());
        let report = s.finish(Duration::from_secs(10)).await;
        assert!(report.sealed);
        assert_eq!(report.dropped, 50);
        let l = lines_of(&bodies.lock().unwrap());
        let texts: Vec<&str> = l.iter().map(|x| x.2.as_str()).collect();
        assert_eq!(texts[0], "first");
        assert!(texts[1].starts_with("log quota exceeded"), "{texts:?}");
        assert_eq!(texts[2], "runner exited with code 0");
        assert_eq!(texts.len(), 3, "{texts:?}");
    }

    #[tokio::test]
    async fn refusals_never_loop_forever() {
        // 409 log_sealed: stop at once.
        let (c, bodies) = mock(Arc::new(|_, _| err(StatusCode::CONFLICT, "log_sealed"))).await;
        let s = LogShipper::start(c, agent(), 1, 1);
        s.push(LogStream::Stdout, "a".into());
        let t = std::time::Instant::now();
        let report = s.finish(Duration::from_secs(10)).await;
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(!report.sealed);
        assert!(report.problem.unwrap().contains("sealed"));
        assert_eq!(bodies.lock().unwrap().len(), 1);

        // 409 stale_fencing: stop too.
        let (c, _) = mock(Arc::new(|_, _| err(StatusCode::CONFLICT, "stale_fencing"))).await;
        let s = LogShipper::start(c, agent(), 1, 1);
        s.push(LogStream::Stdout, "a".into());
        assert!(!s.finish(Duration::from_secs(10)).await.sealed);

        // 409 log_out_of_order on the first batch: that batch is dropped, the rest goes on.
        let (c, bodies) = mock(Arc::new(|n, v| {
            if n == 0 {
                err(StatusCode::CONFLICT, "log_out_of_order")
            } else {
                ok(v)
            }
        }))
        .await;
        let s = LogShipper::start(c, agent(), 1, 1);
        s.push(LogStream::Stdout, "lost".into());
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.push(LogStream::Stdout, "kept".into());
        let report = s.finish(Duration::from_secs(10)).await;
        assert!(report.sealed);
        assert_eq!(report.dropped, 1);
        let b = bodies.lock().unwrap().clone();
        assert_eq!(b.len(), 2);
        assert_eq!(lines_of(&b[1..])[0].2, "kept");

        // 413: the batch is split until single lines go through.
        let (c, bodies) = mock(Arc::new(|_, v| {
            if v["lines"].as_array().unwrap().len() > 2 {
                err(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            } else {
                ok(v)
            }
        }))
        .await;
        let s = LogShipper::start(c, agent(), 1, 1);
        for i in 0..8 {
            s.push(LogStream::Stdout, format!("l{i}"));
        }
        let report = s.finish(Duration::from_secs(10)).await;
        assert!(report.sealed, "{report:?}");
        assert_eq!(report.dropped, 0);
        let stored: Vec<String> = bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["lines"].as_array().unwrap().len() <= 2)
            .flat_map(|(_, v)| v["lines"].as_array().unwrap().clone())
            .map(|l| l["line"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stored, (0..8).map(|i| format!("l{i}")).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_unreachable_orchestrator_bounds_finish_and_memory() {
        let (c, bodies) = mock(Arc::new(|_, _| {
            err(StatusCode::SERVICE_UNAVAILABLE, "down")
        }))
        .await;
        let limits = ShipLimits {
            batch_lines: 10,
            batch_bytes: 64 * 1024,
            max_queued_bytes: 64 * 1024,
        };
        let s = LogShipper::start_with(c, agent(), 1, 1, limits);
        for i in 0..1000 {
            s.push(LogStream::Stdout, format!("line {i} {}", "z".repeat(500)));
        }
        {
            let st = s.shared.lock();
            assert!(st.queued_bytes <= 2 * limits.max_queued_bytes);
            assert!(st.dropped > 800, "{}", st.dropped);
            assert!(st
                .queue
                .iter()
                .any(|q| q.line.line.starts_with("log buffer full")));
        }
        let t = std::time::Instant::now();
        let report = s.finish(Duration::from_millis(500)).await;
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(!report.sealed);
        assert!(report.problem.unwrap().contains("not acknowledged"));
        assert!(!bodies.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn nothing_left_still_sends_an_empty_final_batch() {
        let (c, bodies) = mock(Arc::new(|_, v| ok(v))).await;
        let s = LogShipper::start(c, agent(), 7, 1);
        assert!(s.finish(Duration::from_secs(5)).await.sealed);
        let b = bodies.lock().unwrap().clone();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].1["final"], json!(true));
        assert_eq!(b[0].1["fencing"], json!(7));
        assert_eq!(b[0].1["lines"], json!([]));
    }
}
