//! Ships log lines to the orchestrator in order, in batches, retrying until each batch is
//! acknowledged. Lines carry per-task sequence numbers, so a batch re-sent after a lost reply is
//! not stored twice: nothing is lost or duplicated across reconnects.

use super::AgentError;
use crate::client::AgentClient;
use crate::model::{LogStream, NewLogLine};
use crate::names::AgentName;
use crate::orchestrator::api::LogRequest;
use chrono::Utc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 500;

enum Msg {
    Line(NewLogLine),
    Flush(oneshot::Sender<()>),
}

/// Handle to the background shipper. Cheap to clone.
#[derive(Clone)]
pub struct LogShipper {
    tx: mpsc::UnboundedSender<Msg>,
    next_seq: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    redactor: Arc<crate::redact::Redactor>,
}

impl LogShipper {
    /// Starts shipping for `agent` under claim `fencing`; sequence numbers start at `first_seq`.
    pub fn start(client: AgentClient, agent: AgentName, fencing: u64, first_seq: u64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(ship_loop(client, agent, fencing, rx, failed.clone()));
        Self {
            tx,
            next_seq: Arc::new(AtomicU64::new(first_seq)),
            failed,
            redactor: Arc::default(),
        }
    }

    /// Queues a line (never blocks; lines are kept in memory until acknowledged).
    pub fn push(&self, stream: LogStream, line: String) {
        let line = self.redactor.apply_owned(line);
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Line(NewLogLine {
            seq,
            stream,
            line,
            ts: Utc::now(),
        }));
    }

    /// Removes `redactor`'s secrets from every line pushed from now on.
    pub fn with_redactor(mut self, redactor: crate::redact::Redactor) -> Self {
        self.redactor = Arc::new(redactor);
        self
    }

    /// Waits until every queued line is acknowledged, for at most `patience`.
    pub async fn finish(&self, patience: Duration) -> Result<(), AgentError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Flush(tx));
        match tokio::time::timeout(patience, rx).await {
            Ok(Ok(())) => match self.failed.lock().ok().and_then(|f| f.clone()) {
                None => Ok(()),
                Some(why) => Err(AgentError::Config(format!("log shipping stopped: {why}"))),
            },
            _ => Err(AgentError::Config(
                "timed out flushing logs to the orchestrator".into(),
            )),
        }
    }
}

async fn ship_loop(
    client: AgentClient,
    agent: AgentName,
    fencing: u64,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut pending: Vec<NewLogLine> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    let mut delay = Duration::from_millis(100);
    let mut dead = false;
    while open || !pending.is_empty() || !flushes.is_empty() {
        if pending.is_empty() && flushes.is_empty() {
            match rx.recv().await {
                Some(m) => accept(m, &mut pending, &mut flushes),
                None => open = false,
            }
            // Give a burst of lines a moment to gather into one batch.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while let Ok(m) = rx.try_recv() {
            accept(m, &mut pending, &mut flushes);
        }
        if pending.is_empty() || dead {
            pending.clear();
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
            continue;
        }
        let n = pending.len().min(BATCH);
        let req = LogRequest {
            agent: agent.clone(),
            fencing,
            lines: pending[..n].to_vec(),
        };
        match client.log(&req).await {
            Ok(_) => {
                pending.drain(..n);
                delay = Duration::from_millis(100);
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, pending = pending.len(), "log upload failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "log upload refused; dropping further lines");
                if let Ok(mut f) = failed.lock() {
                    *f = Some(e.to_string());
                }
                dead = true;
            }
        }
    }
}

fn accept(m: Msg, pending: &mut Vec<NewLogLine>, flushes: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Msg::Line(l) => pending.push(l),
        Msg::Flush(f) => flushes.push(f),
    }
}
