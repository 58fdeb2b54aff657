//! How the setup flows report progress: [`guildnet_core::progress::Progress`] events (the one
//! progress type of GuildNet), sent through a [`Reporter`] that keeps the flows' own wording
//! (step titles, the Headscale URL of the outcome).

use guildnet_core::progress::{Progress, ProgressSender};
use serde_json::json;
use tokio::sync::mpsc;

/// Which flow runs (the `flow` of its `begin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// A local Headscale ([`super::create`]).
    Create,
    /// An existing Headscale ([`super::connect`]).
    Connect,
}

/// Sends events; a closed or missing receiver is ignored (the flow goes on).
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    out: ProgressSender,
}

impl Reporter {
    pub(crate) fn new(tx: Option<mpsc::Sender<Progress>>) -> Self {
        Self {
            out: ProgressSender::from_option(tx),
        }
    }

    pub(crate) async fn begin(&self, flow: Flow, steps: &[(&str, &str)]) {
        let name = match flow {
            Flow::Create => "create",
            Flow::Connect => "connect",
        };
        let ids: Vec<&str> = steps.iter().map(|(id, _)| *id).collect();
        self.out.begin(name, &ids).await;
    }

    pub(crate) async fn step(&self, id: &str, title: &str) {
        self.out.step(id, title).await;
    }

    /// `stepDone`; an empty detail is left out.
    pub(crate) async fn step_done(&self, id: &str, detail: impl Into<String>) {
        let d = detail.into();
        self.out.step_done(id, (!d.is_empty()).then_some(d)).await;
    }

    pub(crate) async fn step_error(&self, id: &str, error: &impl std::fmt::Display) {
        self.out.step_error(id, error.to_string()).await;
    }

    pub(crate) async fn log(&self, message: impl Into<String>) {
        self.out.log(None, message).await;
    }

    pub(crate) async fn hint(&self, message: impl Into<String>) {
        self.out.hint(message).await;
    }

    /// `done`; the Headscale URL, when known, is the result's `headscaleUrl`.
    pub(crate) async fn done(&self, ok: bool, message: impl Into<String>, url: Option<String>) {
        let result = url.map(|u| json!({ "headscaleUrl": u }));
        self.out.done(ok, message, result).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_flows_wording_maps_onto_progress_events() {
        let (tx, mut rx) = mpsc::channel(16);
        let r = Reporter::new(Some(tx));
        r.begin(
            Flow::Create,
            &[("config", "Write config"), ("start", "Start")],
        )
        .await;
        r.log("careful").await;
        r.done(true, "ok", Some("http://127.0.0.1:8080".into()))
            .await;
        drop(r);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(serde_json::to_value(&e).unwrap());
        }
        assert_eq!(
            got,
            [
                json!({"kind":"begin","flow":"create","steps":["config","start"]}),
                json!({"kind":"log","line":"careful"}),
                json!({"kind":"done","ok":true,"message":"ok","result":{"headscaleUrl":"http://127.0.0.1:8080"}}),
            ]
        );
    }

    #[tokio::test]
    async fn a_closed_receiver_does_not_stop_a_flow() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let r = Reporter::new(Some(tx));
        r.hint("still fine").await;
        Reporter::new(None).done(true, "ok", None).await;
    }
}
