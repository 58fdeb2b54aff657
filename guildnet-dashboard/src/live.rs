//! Live task and agent events: one upstream subscription to the orchestrator's `GET /events`,
//! fanned out to every browser through a `tokio::sync::broadcast`, with a ring buffer of recent
//! events so a browser that reconnects with `Last-Event-ID` gets what it missed.
//!
//! Browser events are named `task` (the event concerns a task), `agent` (an agent only) or
//! `event`; their data is the orchestrator's event JSON and their id its event id. When a
//! browser asks to resume from an id older than the buffer (or falls behind the broadcast),
//! it gets a `resync` event and should reload its lists.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use guildnet_core::client::{OrchestratorClient, SseMessage};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Longest wait before reconnecting to the orchestrator's `/events`.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// The waits between reconnects to the orchestrator's `/events`: 0.2 s doubling up to
/// [`MAX_RECONNECT_DELAY`], for ever (backon's exponential backoff, no jitter).
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_RECONNECT_DELAY)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// Events kept for resumption.
pub const RING_CAPACITY: usize = 4096;
/// Keep-alive comment interval on browser streams.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// One relayed event, pre-rendered as an SSE frame.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// Orchestrator event id.
    pub id: u64,
    /// The SSE frame (`id:`, `event:`, `data:` lines and the blank line).
    pub frame: Bytes,
}

impl LiveEvent {
    /// Builds an event from the orchestrator's SSE message; `None` without a numeric id.
    pub fn from_upstream(msg: &SseMessage) -> Option<Self> {
        let id: u64 = msg.id.as_deref()?.trim().parse().ok()?;
        let v: serde_json::Value = serde_json::from_str(&msg.data).ok()?;
        let name = if v.get("taskId").is_some_and(|t| !t.is_null()) {
            "task"
        } else if v.get("agent").is_some_and(|a| !a.is_null()) {
            "agent"
        } else {
            "event"
        };
        // Re-serialise: one line of JSON, so the frame needs a single data line.
        let data = serde_json::to_string(&v).ok()?;
        Some(Self {
            id,
            frame: Bytes::from(format!("id: {id}\nevent: {name}\ndata: {data}\n\n")),
        })
    }
}

struct Ring {
    events: VecDeque<LiveEvent>,
    /// Highest id dropped from the front (0 when nothing was dropped).
    evicted_up_to: u64,
    last_id: u64,
}

/// The fan-out hub.
pub struct LiveHub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<LiveEvent>,
    connected: AtomicBool,
    capacity: usize,
}

/// What a new subscriber starts with.
pub struct Subscription {
    /// Buffered events after the requested id.
    pub backlog: Vec<LiveEvent>,
    /// Whether events between the requested id and the backlog were lost.
    pub gap: bool,
    /// Live events.
    pub rx: broadcast::Receiver<LiveEvent>,
}

impl LiveHub {
    /// A hub keeping `capacity` events.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity.min(RING_CAPACITY)),
                evicted_up_to: 0,
                last_id: 0,
            }),
            tx,
            connected: AtomicBool::new(false),
            capacity: capacity.max(1),
        }
    }

    /// Publishes an event (ignored if not newer than the last one).
    pub fn publish(&self, ev: LiveEvent) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        if ev.id <= ring.last_id {
            return;
        }
        ring.last_id = ev.id;
        if ring.events.len() >= self.capacity {
            if let Some(old) = ring.events.pop_front() {
                ring.evicted_up_to = old.id;
            }
        }
        ring.events.push_back(ev.clone());
        // Sent under the lock so a subscriber's backlog and live events never overlap or miss.
        let _ = self.tx.send(ev);
    }

    /// Subscribes; `after` is the last id the client saw (`None`: live events only).
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        match self.ring.lock() {
            Ok(ring) => {
                let rx = self.tx.subscribe();
                let (backlog, gap) = match after {
                    None => (Vec::new(), false),
                    Some(a) => (
                        ring.events.iter().filter(|e| e.id > a).cloned().collect(),
                        a < ring.evicted_up_to,
                    ),
                };
                Subscription { backlog, gap, rx }
            }
            Err(_) => Subscription {
                backlog: Vec::new(),
                gap: true,
                rx: self.tx.subscribe(),
            },
        }
    }

    /// The id of the newest event seen.
    pub fn last_id(&self) -> u64 {
        self.ring.lock().map(|r| r.last_id).unwrap_or(0)
    }

    /// Whether the upstream subscription is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Follows the orchestrator's `/events` forever, reconnecting with the last id seen after
    /// a wait of 0.2 s doubling up to 5 s (the waits start over once connected).
    pub async fn run_upstream(self: Arc<Self>, client: OrchestratorClient) {
        let mut backoff = reconnect_delays();
        loop {
            let last = self.last_id();
            let last_s = (last > 0).then(|| last.to_string());
            match client.open_sse("/events", last_s.as_deref()).await {
                Ok(stream) => {
                    self.connected.store(true, Ordering::Relaxed);
                    backoff = reconnect_delays();
                    let mut stream = Box::pin(stream);
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(msg) if msg.event == "error" => {
                                tracing::warn!(data = %msg.data, "orchestrator event stream error");
                                break;
                            }
                            Ok(msg) => match LiveEvent::from_upstream(&msg) {
                                Some(ev) => self.publish(ev),
                                None => tracing::debug!("skipping an event without id or JSON"),
                            },
                            Err(e) => {
                                tracing::warn!(error = %e, "orchestrator event stream broke");
                                break;
                            }
                        }
                    }
                    self.connected.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    self.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot follow orchestrator events; retrying");
                }
            }
            let wait = backoff.next().unwrap_or(MAX_RECONNECT_DELAY);
            tokio::time::sleep(wait).await;
        }
    }

    /// The SSE body for one browser: backlog, then live events, with keep-alives. The stream
    /// polls the broadcast receiver directly (no task per subscriber).
    pub fn browser_stream(
        &self,
        after: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
        let Subscription { backlog, gap, rx } = self.subscribe(after);
        let mut head: VecDeque<Bytes> = VecDeque::with_capacity(backlog.len() + 2);
        // A first comment so clients see the stream open right away.
        head.push_back(Bytes::from_static(b": live\n\n"));
        if gap {
            head.push_back(resync_frame());
        }
        let mut last = after.unwrap_or(0);
        for ev in backlog {
            last = ev.id;
            head.push_back(ev.frame);
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let st = BrowserStream {
            head,
            rx,
            last,
            tick,
        };
        futures_util::stream::unfold(st, |mut st| async move {
            if let Some(b) = st.head.pop_front() {
                return Some((Ok(b), st));
            }
            loop {
                tokio::select! {
                    r = st.rx.recv() => match r {
                        Ok(ev) => {
                            if ev.id <= st.last {
                                continue;
                            }
                            st.last = ev.id;
                            return Some((Ok(ev.frame), st));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Ok(resync_frame()), st));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = st.tick.tick() => {
                        return Some((Ok(Bytes::from_static(b": keepalive\n\n")), st));
                    }
                }
            }
        })
    }
}

struct BrowserStream {
    head: VecDeque<Bytes>,
    rx: broadcast::Receiver<LiveEvent>,
    last: u64,
    tick: tokio::time::Interval,
}

fn resync_frame() -> Bytes {
    Bytes::from_static(b"event: resync\ndata: {}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_double_from_200_ms_up_to_5_s() {
        let waits: Vec<u128> = reconnect_delays().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    fn ev(id: u64) -> LiveEvent {
        LiveEvent::from_upstream(&SseMessage {
            id: Some(id.to_string()),
            event: "message".into(),
            data: format!(r#"{{"id":{id},"kind":"task.scheduled","taskId":"t{id}"}}"#),
        })
        .unwrap()
    }

    #[test]
    fn frames_are_named_and_single_line() {
        let f = ev(3).frame;
        let s = std::str::from_utf8(&f).unwrap();
        assert!(s.starts_with("id: 3\nevent: task\ndata: {"), "{s}");
        assert!(s.ends_with("}\n\n"));
        let a = LiveEvent::from_upstream(&SseMessage {
            id: Some("4".into()),
            event: "message".into(),
            data: r#"{"agent":"a","taskId":null}"#.into(),
        })
        .unwrap();
        assert!(std::str::from_utf8(&a.frame)
            .unwrap()
            .contains("event: agent"));
        assert!(LiveEvent::from_upstream(&SseMessage::default()).is_none());
    }

    #[test]
    fn resume_replays_after_id_and_detects_gaps() {
        let hub = LiveHub::new(3);
        for i in 1..=5 {
            hub.publish(ev(i));
        }
        hub.publish(ev(2)); // stale: ignored
        let s = hub.subscribe(Some(3));
        assert_eq!(s.backlog.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5]);
        assert!(!s.gap);
        let s = hub.subscribe(Some(1));
        assert!(s.gap, "ids 2 were evicted");
        assert_eq!(s.backlog.len(), 3);
        let s = hub.subscribe(None);
        assert!(s.backlog.is_empty());
    }

    #[tokio::test]
    async fn browser_stream_gets_backlog_then_live() {
        let hub = Arc::new(LiveHub::new(16));
        hub.publish(ev(1));
        hub.publish(ev(2));
        let mut s = Box::pin(hub.browser_stream(Some(1)));
        let mut seen = String::new();
        let h2 = hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            h2.publish(ev(3));
        });
        while !seen.contains("id: 3\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(!seen.contains("id: 1\n"));
        assert!(seen.contains("id: 2\n"));
    }
}
