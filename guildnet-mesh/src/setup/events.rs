//! Progress events of the setup flows, serializable as-is for Server-Sent Events.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Which flow runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Flow {
    /// A local Headscale ([`super::create`]).
    Create,
    /// An existing Headscale ([`super::connect`]).
    Connect,
}

/// A step a flow will go through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepInfo {
    /// Stable id (`config`, `start`, `apiKey`...).
    pub id: String,
    /// Human title.
    pub title: String,
}

/// Severity of a [`SetupEvent::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogLevel {
    /// Informational.
    Info,
    /// Something to look at.
    Warn,
}

/// A progress event. JSON: `{"kind":"stepDone","step":"apiKey","detail":"..."}`; kinds are
/// `begin`, `step`, `stepDone`, `stepError`, `log`, `hint`, `done`. No event ever holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum SetupEvent {
    /// The flow starts, with the steps it will take.
    Begin {
        /// Which flow.
        flow: Flow,
        /// Its steps, in order.
        steps: Vec<StepInfo>,
    },
    /// A step starts.
    Step {
        /// Step id.
        step: String,
        /// Human title.
        title: String,
    },
    /// A step finished.
    StepDone {
        /// Step id.
        step: String,
        /// What it did or found.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A step failed; a `done` with `ok: false` follows.
    StepError {
        /// Step id.
        step: String,
        /// Why (secrets redacted).
        error: String,
    },
    /// A log line.
    Log {
        /// Severity.
        level: LogLevel,
        /// Text.
        message: String,
    },
    /// Advice for the person running the flow.
    Hint {
        /// Text.
        message: String,
    },
    /// The flow ended.
    Done {
        /// Whether it succeeded.
        ok: bool,
        /// Summary.
        message: String,
        /// The Headscale URL, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headscale_url: Option<String>,
    },
}

impl SetupEvent {
    /// The SSE `event:` name: the same as the JSON `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            SetupEvent::Begin { .. } => "begin",
            SetupEvent::Step { .. } => "step",
            SetupEvent::StepDone { .. } => "stepDone",
            SetupEvent::StepError { .. } => "stepError",
            SetupEvent::Log { .. } => "log",
            SetupEvent::Hint { .. } => "hint",
            SetupEvent::Done { .. } => "done",
        }
    }

    /// The JSON text (SSE `data:`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"kind\":\"{}\"}}", self.kind()))
    }

    /// Whether this event ends a flow.
    pub fn is_done(&self) -> bool {
        matches!(self, SetupEvent::Done { .. })
    }
}

/// Sends events; a closed or missing receiver is ignored (the flow goes on).
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    tx: Option<mpsc::Sender<SetupEvent>>,
}

impl Reporter {
    pub(crate) fn new(tx: Option<mpsc::Sender<SetupEvent>>) -> Self {
        Self { tx }
    }

    pub(crate) async fn send(&self, e: SetupEvent) {
        tracing::debug!(kind = e.kind(), event = %e.to_json(), "setup event");
        if let Some(tx) = &self.tx {
            let _ = tx.send(e).await;
        }
    }

    pub(crate) async fn begin(&self, flow: Flow, steps: &[(&str, &str)]) {
        self.send(SetupEvent::Begin {
            flow,
            steps: steps
                .iter()
                .map(|(id, title)| StepInfo {
                    id: (*id).to_owned(),
                    title: (*title).to_owned(),
                })
                .collect(),
        })
        .await;
    }

    pub(crate) async fn step(&self, id: &str, title: &str) {
        self.send(SetupEvent::Step {
            step: id.to_owned(),
            title: title.to_owned(),
        })
        .await;
    }

    pub(crate) async fn step_done(&self, id: &str, detail: impl Into<String>) {
        let d = detail.into();
        self.send(SetupEvent::StepDone {
            step: id.to_owned(),
            detail: (!d.is_empty()).then_some(d),
        })
        .await;
    }

    pub(crate) async fn step_error(&self, id: &str, error: &impl std::fmt::Display) {
        self.send(SetupEvent::StepError {
            step: id.to_owned(),
            error: error.to_string(),
        })
        .await;
    }

    pub(crate) async fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.send(SetupEvent::Log {
            level,
            message: message.into(),
        })
        .await;
    }

    pub(crate) async fn hint(&self, message: impl Into<String>) {
        self.send(SetupEvent::Hint {
            message: message.into(),
        })
        .await;
    }

    pub(crate) async fn done(&self, ok: bool, message: impl Into<String>, url: Option<String>) {
        self.send(SetupEvent::Done {
            ok,
            message: message.into(),
            headscale_url: url,
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_serialize_as_camel_case_kinds() {
        let cases = [
            (
                SetupEvent::Begin {
                    flow: Flow::Create,
                    steps: vec![StepInfo {
                        id: "apiKey".into(),
                        title: "API key".into(),
                    }],
                },
                json!({"kind":"begin","flow":"create","steps":[{"id":"apiKey","title":"API key"}]}),
            ),
            (
                SetupEvent::Step {
                    step: "start".into(),
                    title: "Start headscale".into(),
                },
                json!({"kind":"step","step":"start","title":"Start headscale"}),
            ),
            (
                SetupEvent::StepDone {
                    step: "start".into(),
                    detail: None,
                },
                json!({"kind":"stepDone","step":"start"}),
            ),
            (
                SetupEvent::StepError {
                    step: "probe".into(),
                    error: "x".into(),
                },
                json!({"kind":"stepError","step":"probe","error":"x"}),
            ),
            (
                SetupEvent::Log {
                    level: LogLevel::Warn,
                    message: "m".into(),
                },
                json!({"kind":"log","level":"warn","message":"m"}),
            ),
            (
                SetupEvent::Hint {
                    message: "h".into(),
                },
                json!({"kind":"hint","message":"h"}),
            ),
            (
                SetupEvent::Done {
                    ok: true,
                    message: "ok".into(),
                    headscale_url: Some("http://127.0.0.1:8080".into()),
                },
                json!({"kind":"done","ok":true,"message":"ok","headscaleUrl":"http://127.0.0.1:8080"}),
            ),
        ];
        for (event, expected) in cases {
            let v: serde_json::Value = serde_json::from_str(&event.to_json()).expect("valid JSON");
            assert_eq!(v, expected);
            assert_eq!(v["kind"], event.kind());
            let back: SetupEvent = serde_json::from_value(v).expect("round trip");
            assert_eq!(back, event);
        }
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
