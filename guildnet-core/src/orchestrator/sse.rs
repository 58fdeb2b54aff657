//! Server-sent event streams that resume without loss.
//!
//! Every stream polls the store from a cursor (the last event id the client saw, from
//! `Last-Event-ID` or `?after=`), sends what is there with its id, then waits for the
//! orchestrator's change notification and polls again. Because the store is the source, a client
//! that reconnects with its last id misses nothing, even across orchestrator restarts.

use super::error::ApiError;
use axum::response::sse::Event as SseEvent;
use futures_util::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use tokio::sync::watch;

/// Items fetched from a cursor.
pub struct Batch {
    /// `(id, JSON data)` in increasing id order.
    pub items: Vec<(u64, String)>,
    /// When set and `items` is empty, the stream ends with an `end` event carrying this data.
    pub end: Option<String>,
    /// When set and nothing arrived, fetch again after this long even without a change
    /// notification (for an end that comes with time, not with a write).
    pub recheck_after: Option<std::time::Duration>,
}

impl Batch {
    /// Items, no end.
    pub fn items(items: Vec<(u64, String)>) -> Self {
        Self {
            items,
            end: None,
            recheck_after: None,
        }
    }
}

struct PollState<F> {
    cursor: u64,
    changes: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    fetch: F,
    buf: VecDeque<SseEvent>,
    done: bool,
}

/// A resumable SSE stream over `fetch(cursor)`. It ends when `closing` turns true (server
/// shutdown); clients reconnect with their last id.
pub fn poll_stream<F, Fut>(
    cursor: u64,
    changes: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    fetch: F,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send
where
    F: FnMut(u64) -> Fut + Send,
    Fut: Future<Output = Result<Batch, ApiError>> + Send,
{
    let st = PollState {
        cursor,
        changes,
        closing,
        fetch,
        buf: VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.buf.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.done || *st.closing.borrow() {
                return None;
            }
            // Mark the current change as seen before reading, so a change that lands while we
            // read wakes us again.
            st.changes.borrow_and_update();
            match (st.fetch)(st.cursor).await {
                Ok(batch) => {
                    if batch.items.is_empty() {
                        if let Some(end) = batch.end {
                            st.buf.push_back(SseEvent::default().event("end").data(end));
                            st.done = true;
                            continue;
                        }
                        let recheck = async {
                            match batch.recheck_after {
                                Some(d) => tokio::time::sleep(d).await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            r = st.changes.changed() => if r.is_err() { return None },
                            _ = st.closing.changed() => return None,
                            _ = recheck => {}
                        }
                        continue;
                    }
                    for (id, data) in batch.items {
                        st.cursor = id;
                        st.buf
                            .push_back(SseEvent::default().id(id.to_string()).data(data));
                    }
                }
                Err(e) => {
                    let body = serde_json::json!({"code": e.code, "message": e.message});
                    st.buf
                        .push_back(SseEvent::default().event("error").data(body.to_string()));
                    st.done = true;
                }
            }
        }
    })
}
