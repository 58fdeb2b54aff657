//! One progress event type for every long-running flow: the mesh setup (guildnet-mesh), an org
//! cluster's bootstrap (guildnet-talos, through the orchestrator), and the dashboard's setup and
//! provision streams, which relay them to the browser as server-sent events.
//!
//! JSON (the SSE `data:`; the SSE `event:` name is the same as `kind`):
//!
//! | kind        | fields                                              |
//! |-------------|-----------------------------------------------------|
//! | `begin`     | `flow`, `steps` (step ids in order)                 |
//! | `step`      | `step`, `message`: a step started                   |
//! | `stepDone`  | `step`, `message`?: a step finished                 |
//! | `stepError` | `step`, `message`: a step failed                    |
//! | `log`       | `step`?, `line`: an output line                     |
//! | `hint`      | `message`: advice for the person watching           |
//! | `done`      | `ok`, `message`, `result`?: always the last         |
//!
//! No event holds a secret: flows redact what they report.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// A progress event (see the module docs for the wire format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Progress {
    /// The flow starts, with the steps it plans.
    Begin {
        /// Which flow (`setup`, `create`, `connect`, `provision`...).
        flow: String,
        /// Step ids, in order.
        steps: Vec<String>,
    },
    /// A step starts.
    Step {
        /// Step id.
        step: String,
        /// What is happening.
        message: String,
    },
    /// A step finished.
    StepDone {
        /// Step id.
        step: String,
        /// What it did or found.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A step failed; a `done` with `ok: false` follows.
    StepError {
        /// Step id.
        step: String,
        /// Why.
        message: String,
    },
    /// An output line.
    Log {
        /// The step it belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        /// The line.
        line: String,
    },
    /// Advice for the person running the flow.
    Hint {
        /// The advice.
        message: String,
    },
    /// The flow ended.
    Done {
        /// Whether it succeeded.
        ok: bool,
        /// Summary.
        message: String,
        /// What the flow produced (flow-specific JSON).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
    },
}

impl Progress {
    /// The SSE `event:` name: the same as the JSON `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Progress::Begin { .. } => "begin",
            Progress::Step { .. } => "step",
            Progress::StepDone { .. } => "stepDone",
            Progress::StepError { .. } => "stepError",
            Progress::Log { .. } => "log",
            Progress::Hint { .. } => "hint",
            Progress::Done { .. } => "done",
        }
    }

    /// The JSON text (SSE `data:`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"kind\":\"{}\"}}", self.kind()))
    }

    /// Whether this event ends a flow.
    pub fn is_done(&self) -> bool {
        matches!(self, Progress::Done { .. })
    }
}

/// The sending half a flow reports on. A missing or closed receiver is not an error: the flow
/// goes on (the person watching may have left).
#[derive(Debug, Clone, Default)]
pub struct ProgressSender {
    tx: Option<mpsc::Sender<Progress>>,
}

impl ProgressSender {
    /// Reports on `tx`.
    pub fn new(tx: mpsc::Sender<Progress>) -> Self {
        Self { tx: Some(tx) }
    }

    /// Reports nowhere (events are only traced at debug level).
    pub fn none() -> Self {
        Self { tx: None }
    }

    /// From an optional channel.
    pub fn from_option(tx: Option<mpsc::Sender<Progress>>) -> Self {
        Self { tx }
    }

    /// Sends any event.
    pub async fn send(&self, e: Progress) {
        tracing::debug!(kind = e.kind(), event = %e.to_json(), "progress");
        if let Some(tx) = &self.tx {
            let _ = tx.send(e).await;
        }
    }

    /// `begin`.
    pub async fn begin(&self, flow: &str, steps: &[&str]) {
        self.send(Progress::Begin {
            flow: flow.to_owned(),
            steps: steps.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
    }

    /// `step`.
    pub async fn step(&self, step: &str, message: impl Into<String>) {
        self.send(Progress::Step {
            step: step.to_owned(),
            message: message.into(),
        })
        .await
    }

    /// `stepDone`.
    pub async fn step_done(&self, step: &str, message: Option<String>) {
        self.send(Progress::StepDone {
            step: step.to_owned(),
            message,
        })
        .await
    }

    /// `stepError`.
    pub async fn step_error(&self, step: &str, message: impl Into<String>) {
        self.send(Progress::StepError {
            step: step.to_owned(),
            message: message.into(),
        })
        .await
    }

    /// `log`.
    pub async fn log(&self, step: Option<&str>, line: impl Into<String>) {
        self.send(Progress::Log {
            step: step.map(str::to_owned),
            line: line.into(),
        })
        .await
    }

    /// `hint`.
    pub async fn hint(&self, message: impl Into<String>) {
        self.send(Progress::Hint {
            message: message.into(),
        })
        .await
    }

    /// `done`.
    pub async fn done(&self, ok: bool, message: impl Into<String>, result: Option<Value>) {
        self.send(Progress::Done {
            ok,
            message: message.into(),
            result,
        })
        .await
    }

    /// Whether the receiver is gone (a flow may stop early).
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| t.is_closed())
    }
}

impl From<crate::api::BootstrapProgress> for Progress {
    /// An orchestrator bootstrap event (`{step, phase, message}`): `start` is a step starting,
    /// `output` a log line of it, `done` and `error` its end.
    fn from(p: crate::api::BootstrapProgress) -> Self {
        match p.phase.as_str() {
            "start" => Progress::Step {
                step: p.step,
                message: p.message,
            },
            "done" => Progress::StepDone {
                step: p.step,
                message: (!p.message.is_empty()).then_some(p.message),
            },
            "error" => Progress::StepError {
                step: p.step,
                message: p.message,
            },
            _ => Progress::Log {
                step: Some(p.step),
                line: p.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_names_every_kind_and_leaves_out_empty_fields() {
        let e = Progress::StepDone {
            step: "a".into(),
            message: None,
        };
        assert_eq!(e.kind(), "stepDone");
        assert_eq!(e.to_json(), r#"{"kind":"stepDone","step":"a"}"#);
        let l = Progress::Log {
            step: None,
            line: "x".into(),
        };
        assert_eq!(l.to_json(), r#"{"kind":"log","line":"x"}"#);
        let back: Progress = serde_json::from_str(&l.to_json()).unwrap();
        assert_eq!(back, l);
        assert!(Progress::Done {
            ok: true,
            message: "m".into(),
            result: None
        }
        .is_done());
    }

    #[test]
    fn bootstrap_phases_map_onto_steps() {
        let p = |phase: &str| crate::api::BootstrapProgress {
            step: "apply".into(),
            phase: phase.into(),
            message: "m".into(),
        };
        assert_eq!(Progress::from(p("start")).kind(), "step");
        assert_eq!(Progress::from(p("output")).kind(), "log");
        assert_eq!(Progress::from(p("done")).kind(), "stepDone");
        assert_eq!(Progress::from(p("error")).kind(), "stepError");
    }
}
