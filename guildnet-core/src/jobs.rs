//! An in-memory registry of long-running jobs, one at a time per key (an org's bootstrap, say).
//!
//! - [`JobRegistry::start`] runs a job on the tokio runtime. The job gets an unbounded progress
//!   sender; it returns `Ok(outcome)` or an error (kept as its `Display` text). A second start
//!   for a key whose job still runs is refused with [`JobError::AlreadyRunning`] (HTTP 409).
//! - [`JobRegistry::subscribe`] returns every event recorded so far plus a live feed of the
//!   following ones and, last, the final [`JobState`]; a client that connects late (an SSE
//!   stream opened after the POST) sees the whole run, in order, without gaps or duplicates.
//! - [`JobRegistry::status`] tells running / succeeded (with the outcome) / failed (with the
//!   message). The final state and the history stay until the next run of the same key.
//!
//! ```
//! # use guildnet_core::jobs::{JobRegistry, JobState};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let jobs: JobRegistry<String, String, u32> = JobRegistry::new();
//! jobs.start("acme".to_owned(), |progress| async move {
//!     let _ = progress.send("step one".to_owned());
//!     Ok::<_, std::convert::Infallible>(42)
//! })
//! .unwrap();
//! let sub = jobs.subscribe(&"acme".to_owned()).unwrap();
//! let (events, state) = sub.collect().await;
//! assert_eq!(events, vec!["step one".to_owned()]);
//! assert_eq!(state, JobState::Succeeded(42));
//! # }
//! ```

use futures_util::FutureExt;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Events kept per job by default ([`JobRegistry::with_history_limit`] changes it).
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// Why a job could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// A job for this key is still running (map to HTTP 409 Conflict).
    #[error("a job for {key} is already running")]
    AlreadyRunning {
        /// The key (e.g. the org name).
        key: String,
    },
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "result", rename_all = "snake_case")]
pub enum JobState<O> {
    /// Still running.
    Running,
    /// Finished with this outcome.
    Succeeded(O),
    /// Finished with this error message (the job's error, or a note that it panicked).
    Failed(String),
}

impl<O> JobState<O> {
    /// Whether the job has finished (either way).
    pub fn is_finished(&self) -> bool {
        !matches!(self, JobState::Running)
    }
}

/// One item of a job's feed: a progress event, or the final state (always the last item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobUpdate<E, O> {
    /// A progress event.
    Event(E),
    /// The job ended; nothing follows.
    Finished(JobState<O>),
}

/// A job's feed for one subscriber: the history recorded before subscribing, then live updates,
/// then the final state.
#[derive(Debug)]
pub struct JobSubscription<E, O> {
    history: VecDeque<E>,
    live: mpsc::UnboundedReceiver<JobUpdate<E, O>>,
}

impl<E, O> JobSubscription<E, O> {
    /// How many recorded events are still to be returned before the live ones.
    pub fn replay_len(&self) -> usize {
        self.history.len()
    }

    /// The next update: recorded events first, then live ones, then [`JobUpdate::Finished`];
    /// `None` after that (or if the registry dropped the job, which it never does while running).
    pub async fn next(&mut self) -> Option<JobUpdate<E, O>> {
        if let Some(event) = self.history.pop_front() {
            return Some(JobUpdate::Event(event));
        }
        self.live.recv().await
    }

    /// Waits for the end of the job; returns every event it saw and the final state.
    pub async fn collect(mut self) -> (Vec<E>, JobState<O>) {
        let mut events = Vec::new();
        while let Some(update) = self.next().await {
            match update {
                JobUpdate::Event(e) => events.push(e),
                JobUpdate::Finished(state) => return (events, state),
            }
        }
        (
            events,
            JobState::Failed("the job's feed ended without a result".to_owned()),
        )
    }

    /// The feed as a stream (for an SSE response): it ends after [`JobUpdate::Finished`].
    pub fn into_stream(self) -> impl futures_util::Stream<Item = JobUpdate<E, O>> + Send
    where
        E: Send,
        O: Send,
    {
        futures_util::stream::unfold(self, |mut sub| async move {
            let update = sub.next().await?;
            Some((update, sub))
        })
    }
}

struct Job<E, O> {
    history: VecDeque<E>,
    state: JobState<O>,
    subscribers: Vec<mpsc::UnboundedSender<JobUpdate<E, O>>>,
    /// Distinguishes runs of the same key, so a stale run never writes into a newer one.
    run: u64,
}

struct Inner<K, E, O> {
    jobs: HashMap<K, Job<E, O>>,
    next_run: u64,
}

/// The registry: cheap to clone (shared state), one running job per key.
pub struct JobRegistry<K, E, O> {
    inner: Arc<Mutex<Inner<K, E, O>>>,
    history_limit: usize,
}

impl<K, E, O> Clone for JobRegistry<K, E, O> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            history_limit: self.history_limit,
        }
    }
}

impl<K, E, O> Default for JobRegistry<K, E, O> {
    fn default() -> Self {
        Self::with_history_limit(DEFAULT_HISTORY_LIMIT)
    }
}

impl<K, E, O> Debug for JobRegistry<K, E, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRegistry")
            .field("history_limit", &self.history_limit)
            .finish_non_exhaustive()
    }
}

impl<K, E, O> JobRegistry<K, E, O> {
    /// An empty registry keeping up to [`DEFAULT_HISTORY_LIMIT`] events per job.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry keeping up to `limit` events per job (the oldest are dropped first,
    /// so a late subscriber then misses the start of a very chatty job).
    pub fn with_history_limit(limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                jobs: HashMap::new(),
                next_run: 0,
            })),
            history_limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, E, O>> {
        // A panic never happens while the lock is held (no user code runs under it), but if
        // one did the data is still consistent: recover instead of poisoning every caller.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K, E, O> JobRegistry<K, E, O>
where
    K: Eq + Hash + Clone + Display + Send + 'static,
    E: Clone + Send + 'static,
    O: Clone + Send + 'static,
{
    /// Starts `job` for `key` on the current tokio runtime (call from within one).
    ///
    /// `job` receives the progress sender; what it sends is recorded and fanned out to
    /// subscribers, in order. Its `Err` is kept as its `Display` text; a panic becomes
    /// [`JobState::Failed`]. Refused with [`JobError::AlreadyRunning`] while a job for `key`
    /// runs; allowed again once it finished (the previous history and result are replaced).
    pub fn start<F, Fut, Er>(&self, key: K, job: F) -> Result<(), JobError>
    where
        F: FnOnce(mpsc::UnboundedSender<E>) -> Fut,
        Fut: Future<Output = Result<O, Er>> + Send + 'static,
        Er: Display,
    {
        let run = {
            let mut inner = self.lock();
            if let Some(existing) = inner.jobs.get(&key) {
                if !existing.state.is_finished() {
                    return Err(JobError::AlreadyRunning {
                        key: key.to_string(),
                    });
                }
            }
            inner.next_run += 1;
            let run = inner.next_run;
            inner.jobs.insert(
                key.clone(),
                Job {
                    history: VecDeque::new(),
                    state: JobState::Running,
                    subscribers: Vec::new(),
                    run,
                },
            );
            run
        };
        tracing::debug!(%key, run, "job started");
        let (tx, mut rx) = mpsc::unbounded_channel::<E>();
        let fut = job(tx);
        let registry = self.clone();
        tokio::spawn(async move {
            let fut = AssertUnwindSafe(fut).catch_unwind();
            tokio::pin!(fut);
            let result = loop {
                tokio::select! {
                    biased;
                    Some(event) = rx.recv() => registry.record(&key, run, event),
                    result = &mut fut => break result,
                }
            };
            // Events the job sent just before returning are still queued: record them first.
            while let Ok(event) = rx.try_recv() {
                registry.record(&key, run, event);
            }
            let state = match result {
                Ok(Ok(outcome)) => JobState::Succeeded(outcome),
                Ok(Err(e)) => JobState::Failed(e.to_string()),
                Err(_) => JobState::Failed("the job panicked".to_owned()),
            };
            registry.finish(&key, run, state);
        });
        Ok(())
    }

    fn record(&self, key: &K, run: u64, event: E) {
        let mut inner = self.lock();
        let Some(job) = inner.jobs.get_mut(key).filter(|j| j.run == run) else {
            return;
        };
        job.subscribers
            .retain(|s| s.send(JobUpdate::Event(event.clone())).is_ok());
        if job.history.len() >= self.history_limit {
            job.history.pop_front();
        }
        job.history.push_back(event);
    }

    fn finish(&self, key: &K, run: u64, state: JobState<O>) {
        let mut inner = self.lock();
        let Some(job) = inner.jobs.get_mut(key).filter(|j| j.run == run) else {
            return;
        };
        tracing::debug!(%key, run, succeeded = matches!(state, JobState::Succeeded(_)), "job finished");
        for s in job.subscribers.drain(..) {
            let _ = s.send(JobUpdate::Finished(state.clone()));
        }
        job.state = state;
    }

    /// The feed of `key`'s current (or last) job: its history so far, then live updates, then
    /// the final state. `None` if no job ever ran for `key`.
    pub fn subscribe(&self, key: &K) -> Option<JobSubscription<E, O>> {
        let mut inner = self.lock();
        let job = inner.jobs.get_mut(key)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if job.state.is_finished() {
            let _ = tx.send(JobUpdate::Finished(job.state.clone()));
        } else {
            job.subscribers.push(tx);
        }
        Some(JobSubscription {
            history: job.history.clone(),
            live: rx,
        })
    }

    /// Where `key`'s current (or last) job stands; `None` if no job ever ran for `key`.
    pub fn status(&self, key: &K) -> Option<JobState<O>> {
        self.lock().jobs.get(key).map(|j| j.state.clone())
    }

    /// The events recorded so far and the state of `key`'s current (or last) job, for a
    /// one-shot status answer; `None` if no job ever ran for `key`.
    pub fn snapshot(&self, key: &K) -> Option<(Vec<E>, JobState<O>)> {
        self.lock()
            .jobs
            .get(key)
            .map(|j| (j.history.iter().cloned().collect(), j.state.clone()))
    }

    /// Whether a job for `key` is running now.
    pub fn is_running(&self, key: &K) -> bool {
        matches!(self.status(key), Some(JobState::Running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    type Reg = JobRegistry<String, String, u32>;

    fn key(s: &str) -> String {
        s.to_owned()
    }

    #[tokio::test]
    async fn second_start_is_refused_while_running_and_allowed_after() {
        let reg = Reg::new();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        reg.start(key("acme"), |p| async move {
            let _ = p.send("one".into());
            let _ = release_rx.await;
            Ok::<_, String>(1)
        })
        .unwrap();
        assert_eq!(reg.status(&key("acme")), Some(JobState::Running));
        let err = reg
            .start(key("acme"), |_| async { Ok::<_, String>(2) })
            .unwrap_err();
        assert_eq!(
            err,
            JobError::AlreadyRunning {
                key: "acme".to_owned()
            }
        );
        assert_eq!(err.to_string(), "a job for acme is already running");
        // Another key is independent.
        reg.start(key("other"), |_| async { Ok::<_, String>(7) })
            .unwrap();

        release_tx.send(()).unwrap();
        let (events, state) = reg.subscribe(&key("acme")).unwrap().collect().await;
        assert_eq!(events, vec!["one".to_owned()]);
        assert_eq!(state, JobState::Succeeded(1));
        // The result is kept, and a new run is allowed.
        assert_eq!(reg.status(&key("acme")), Some(JobState::Succeeded(1)));
        reg.start(key("acme"), |p| async move {
            let _ = p.send("again".into());
            Err::<u32, _>("boom at step x")
        })
        .unwrap();
        let (events, state) = reg.subscribe(&key("acme")).unwrap().collect().await;
        assert_eq!(events, vec!["again".to_owned()], "history is per run");
        assert_eq!(state, JobState::Failed("boom at step x".to_owned()));
        assert_eq!(
            reg.subscribe(&key("other")).unwrap().collect().await.1,
            JobState::Succeeded(7)
        );
        let (events, state) = reg.snapshot(&key("acme")).unwrap();
        assert_eq!(
            (events, state),
            (
                vec!["again".to_owned()],
                JobState::Failed("boom at step x".to_owned())
            )
        );
        assert!(reg.snapshot(&key("never")).is_none());
        assert_eq!(reg.status(&key("never")), None);
        assert!(reg.subscribe(&key("never")).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_starts_exactly_one_wins() {
        let reg = Reg::new();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        for i in 0..8u32 {
            let reg = reg.clone();
            let mut release = release_rx.clone();
            handles.push(tokio::spawn(async move {
                reg.start(key("acme"), move |_| async move {
                    let _ = release.wait_for(|r| *r).await;
                    Ok::<_, String>(i)
                })
            }));
        }
        let mut ok = 0;
        let mut refused = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(()) => ok += 1,
                Err(JobError::AlreadyRunning { key }) => {
                    assert_eq!(key, "acme");
                    refused += 1
                }
            }
        }
        assert_eq!((ok, refused), (1, 7));
        release_tx.send(true).unwrap();
        let (_, state) = reg.subscribe(&key("acme")).unwrap().collect().await;
        assert!(matches!(state, JobState::Succeeded(i) if i < 8));
    }

    #[tokio::test]
    async fn late_subscriber_gets_history_then_live_then_result() {
        let reg = Reg::new();
        let (step_tx, mut step_rx) = mpsc::unbounded_channel::<()>();
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<()>();
        reg.start(key("acme"), move |p| async move {
            for i in 0..6 {
                // Wait for the test's go, then report.
                if step_rx.recv().await.is_none() {
                    break;
                }
                let _ = p.send(format!("e{i}"));
                let _ = sent_tx.send(());
            }
            Ok::<_, String>(6)
        })
        .unwrap();
        let early = reg.subscribe(&key("acme")).unwrap();
        for _ in 0..3 {
            step_tx.send(()).unwrap();
            sent_rx.recv().await.unwrap();
        }
        // Let the registry record the three events.
        let mut late = None;
        for _ in 0..100 {
            let sub = reg.subscribe(&key("acme")).unwrap();
            if sub.replay_len() == 3 {
                late = Some(sub);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut late = late.expect("three events recorded");
        assert_eq!(late.next().await, Some(JobUpdate::Event("e0".to_owned())));
        for _ in 0..3 {
            step_tx.send(()).unwrap();
        }
        let expected: Vec<String> = (0..6).map(|i| format!("e{i}")).collect();
        let (mut late_events, late_state) = late.collect().await;
        late_events.insert(0, "e0".to_owned());
        assert_eq!(late_events, expected);
        assert_eq!(late_state, JobState::Succeeded(6));
        let (early_events, early_state) = early.collect().await;
        assert_eq!(early_events, expected);
        assert_eq!(early_state, JobState::Succeeded(6));
        // After the end: the full history and the result, then the stream ends.
        let after: Vec<_> = {
            use futures_util::StreamExt;
            reg.subscribe(&key("acme"))
                .unwrap()
                .into_stream()
                .collect()
                .await
        };
        assert_eq!(after.len(), 7);
        assert_eq!(after[6], JobUpdate::Finished(JobState::Succeeded(6)));
    }

    #[tokio::test]
    async fn events_sent_right_before_return_are_kept_and_panics_fail_the_job() {
        let reg = Reg::new();
        reg.start(key("a"), |p| async move {
            for i in 0..100 {
                let _ = p.send(format!("{i}"));
            }
            Ok::<_, String>(0)
        })
        .unwrap();
        let (events, _) = reg.subscribe(&key("a")).unwrap().collect().await;
        assert_eq!(events.len(), 100);

        reg.start(key("b"), |_| async move {
            if key("b") == "b" {
                panic!("job bug");
            }
            Ok::<_, String>(0)
        })
        .unwrap();
        let (_, state) = reg.subscribe(&key("b")).unwrap().collect().await;
        assert_eq!(state, JobState::Failed("the job panicked".to_owned()));
        assert!(!reg.is_running(&key("b")));
    }

    #[tokio::test]
    async fn history_limit_drops_oldest() {
        let reg: Reg = JobRegistry::with_history_limit(3);
        reg.start(key("a"), |p| async move {
            for i in 0..5 {
                let _ = p.send(format!("{i}"));
            }
            Ok::<_, String>(0)
        })
        .unwrap();
        let sub = reg.subscribe(&key("a")).unwrap();
        let (events, _) = sub.collect().await;
        // The subscriber may have joined before any event; wait for the end and look again.
        assert!(events.len() >= 3);
        let (events, _) = reg.subscribe(&key("a")).unwrap().collect().await;
        assert_eq!(events, vec!["2", "3", "4"]);
    }

    #[test]
    fn state_serializes_for_http() {
        let s = serde_json::to_value(JobState::Succeeded(3u32)).unwrap();
        assert_eq!(s, serde_json::json!({"state": "succeeded", "result": 3}));
        let f = serde_json::to_value(JobState::<u32>::Failed("x".into())).unwrap();
        assert_eq!(f, serde_json::json!({"state": "failed", "result": "x"}));
        let r = serde_json::to_value(JobState::<u32>::Running).unwrap();
        assert_eq!(r, serde_json::json!({"state": "running"}));
    }
}
