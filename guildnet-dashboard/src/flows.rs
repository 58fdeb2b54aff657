//! Long-running flows reported as server-sent events: mesh setup (`/api/setup/stream`) and org
//! provisioning (`/api/orgs/{name}/provision/stream`).
//!
//! # Event format
//! Every event has a name and JSON data:
//!
//! | event      | data                                                   |
//! |------------|--------------------------------------------------------|
//! | `begin`    | `{"flow": "setup"|"provision", "steps": [step names]}` |
//! | `step`     | `{"step", "message"}`: a step started                  |
//! | `stepDone` | `{"step", "message"?}`: a step finished                |
//! | `stepError`| `{"step", "message"}`: a step failed                   |
//! | `log`      | `{"step"?, "line"}`: detail output                     |
//! | `hint`     | `{"message"}`: advice for the person watching          |
//! | `done`     | `{"ok": bool, "message", "result"?}`: always the last  |
//!
//! A flow is a [`SetupFlow`] or [`ProvisionFlow`]: given the validated request and a
//! [`FlowSender`], it runs to completion and returns its result; the dashboard sends `done`
//! (and `stepError` on failure) itself, so every stream ends with exactly one `done`.

use async_trait::async_trait;
use bytes::Bytes;
use guildnet_core::names::OrgName;
use guildnet_core::token::Secret;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One flow event (see the module docs for the wire format).
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    /// The flow started; the steps it plans.
    Begin {
        /// `setup` or `provision`.
        flow: String,
        /// Step names in order.
        steps: Vec<String>,
    },
    /// A step started.
    Step {
        /// Step name.
        step: String,
        /// What is happening.
        message: String,
    },
    /// A step finished.
    StepDone {
        /// Step name.
        step: String,
        /// Outcome detail.
        message: Option<String>,
    },
    /// A step failed.
    StepError {
        /// Step name.
        step: String,
        /// Why.
        message: String,
    },
    /// Output line.
    Log {
        /// Step it belongs to.
        step: Option<String>,
        /// The line.
        line: String,
    },
    /// Advice.
    Hint {
        /// The advice.
        message: String,
    },
    /// The end.
    Done {
        /// Success.
        ok: bool,
        /// Summary.
        message: String,
        /// Flow-specific result.
        result: Option<Value>,
    },
}

impl FlowEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            FlowEvent::Begin { .. } => "begin",
            FlowEvent::Step { .. } => "step",
            FlowEvent::StepDone { .. } => "stepDone",
            FlowEvent::StepError { .. } => "stepError",
            FlowEvent::Log { .. } => "log",
            FlowEvent::Hint { .. } => "hint",
            FlowEvent::Done { .. } => "done",
        }
    }

    /// The JSON data.
    pub fn data(&self) -> Value {
        match self {
            FlowEvent::Begin { flow, steps } => json!({"flow": flow, "steps": steps}),
            FlowEvent::Step { step, message } => json!({"step": step, "message": message}),
            FlowEvent::StepDone { step, message } => match message {
                Some(m) => json!({"step": step, "message": m}),
                None => json!({"step": step}),
            },
            FlowEvent::StepError { step, message } => json!({"step": step, "message": message}),
            FlowEvent::Log { step, line } => match step {
                Some(s) => json!({"step": s, "line": line}),
                None => json!({"line": line}),
            },
            FlowEvent::Hint { message } => json!({"message": message}),
            FlowEvent::Done {
                ok,
                message,
                result,
            } => match result {
                Some(r) => json!({"ok": ok, "message": message, "result": r}),
                None => json!({"ok": ok, "message": message}),
            },
        }
    }

    /// The SSE frame.
    pub fn frame(&self) -> Bytes {
        Bytes::from(format!("event: {}\ndata: {}\n\n", self.name(), self.data()))
    }
}

/// The sending half handed to a flow. Sends fail quietly once the browser went away; flows may
/// check [`FlowSender::is_closed`] to stop early.
#[derive(Clone)]
pub struct FlowSender {
    tx: mpsc::Sender<FlowEvent>,
}

impl FlowSender {
    /// Wraps a channel.
    pub fn new(tx: mpsc::Sender<FlowEvent>) -> Self {
        Self { tx }
    }

    /// Sends any event.
    pub async fn send(&self, ev: FlowEvent) {
        let _ = self.tx.send(ev).await;
    }

    /// `begin`.
    pub async fn begin(&self, flow: &str, steps: &[&str]) {
        self.send(FlowEvent::Begin {
            flow: flow.into(),
            steps: steps.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
    }

    /// `step`.
    pub async fn step(&self, step: &str, message: impl Into<String>) {
        self.send(FlowEvent::Step {
            step: step.into(),
            message: message.into(),
        })
        .await
    }

    /// `stepDone`.
    pub async fn step_done(&self, step: &str, message: Option<String>) {
        self.send(FlowEvent::StepDone {
            step: step.into(),
            message,
        })
        .await
    }

    /// `log`.
    pub async fn log(&self, step: Option<&str>, line: impl Into<String>) {
        self.send(FlowEvent::Log {
            step: step.map(str::to_owned),
            line: line.into(),
        })
        .await
    }

    /// `hint`.
    pub async fn hint(&self, message: impl Into<String>) {
        self.send(FlowEvent::Hint {
            message: message.into(),
        })
        .await
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// How a flow failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FlowFailure {
    /// The step that failed, if one did.
    pub step: Option<String>,
    /// Why (no secrets).
    pub message: String,
}

impl FlowFailure {
    /// A failure of `step`.
    pub fn at(step: &str, message: impl Into<String>) -> Self {
        Self {
            step: Some(step.into()),
            message: message.into(),
        }
    }
}

/// What a flow returns: a JSON result, or why it failed.
pub type FlowResult = Result<Value, FlowFailure>;

/// A validated mesh setup request.
#[derive(Debug, Clone)]
pub enum SetupRequest {
    /// Create a network: run a local Headscale reachable at `server_url`.
    Create {
        /// This machine's host name on the mesh.
        hostname: String,
        /// URL the Headscale server will be reachable at.
        server_url: String,
    },
    /// Connect to an existing network.
    Connect {
        /// This machine's host name on the mesh.
        hostname: String,
        /// The Headscale URL.
        login_server: String,
        /// Pre-auth key (never logged or echoed).
        auth_key: Secret,
    },
}

impl SetupRequest {
    /// `create` or `connect`.
    pub fn mode(&self) -> &'static str {
        match self {
            SetupRequest::Create { .. } => "create",
            SetupRequest::Connect { .. } => "connect",
        }
    }

    /// What is safe to store and show about it (no key).
    pub fn summary(&self) -> Value {
        match self {
            SetupRequest::Create {
                hostname,
                server_url,
            } => json!({"mode": "create", "hostname": hostname, "server": server_url}),
            SetupRequest::Connect {
                hostname,
                login_server,
                ..
            } => json!({"mode": "connect", "hostname": hostname, "server": login_server}),
        }
    }
}

/// Creates or joins the mesh. Plug `guildnet-mesh` in here.
#[async_trait]
pub trait SetupFlow: Send + Sync {
    /// Runs the setup, reporting progress on `events`.
    async fn run(&self, req: SetupRequest, events: FlowSender) -> FlowResult;
}

/// A validated provisioning request for one org.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionRequest {
    /// The org.
    pub org: OrgName,
    /// Control-plane node addresses.
    pub cp_nodes: Vec<String>,
    /// Worker node addresses.
    pub worker_nodes: Vec<String>,
    /// Install the operator after the bootstrap.
    pub install_operator: bool,
    /// URL agents use to reach the orchestrator (operator setting).
    pub public_orchestrator_url: Option<String>,
}

/// Bootstraps an org's cluster and installs the operator.
#[async_trait]
pub trait ProvisionFlow: Send + Sync {
    /// Runs the provisioning, reporting progress on `events`.
    async fn run(&self, req: ProvisionRequest, events: FlowSender) -> FlowResult;
}

/// The setup flow of a build without mesh support: fails with a clear message.
pub struct NoMeshSetup;

#[async_trait]
impl SetupFlow for NoMeshSetup {
    async fn run(&self, req: SetupRequest, events: FlowSender) -> FlowResult {
        events.begin("setup", &["mesh"]).await;
        events
            .step("mesh", format!("{} the network", req.mode()))
            .await;
        events
            .hint("Choose \"continue without a network\" to use GuildNet on this machine only.")
            .await;
        Err(FlowFailure::at(
            "mesh",
            "mesh setup is not available in this dashboard build (no mesh implementation is configured)",
        ))
    }
}

/// Runs `fut` (a flow) and forwards its events, then `stepError` (on failure) and `done`.
/// Returns the SSE byte stream and a handle on the final result.
pub fn run_flow<F>(
    fut: F,
    tx: mpsc::Sender<FlowEvent>,
    rx: mpsc::Receiver<FlowEvent>,
    on_result: impl FnOnce(&FlowResult) + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static
where
    F: std::future::Future<Output = FlowResult> + Send + 'static,
{
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let result = fut.await;
        on_result(&result);
        let last = match result {
            Ok(v) => FlowEvent::Done {
                ok: true,
                message: "finished".into(),
                result: Some(v),
            },
            Err(f) => {
                if let Some(step) = &f.step {
                    let _ = tx
                        .send(FlowEvent::StepError {
                            step: step.clone(),
                            message: f.message.clone(),
                        })
                        .await;
                }
                FlowEvent::Done {
                    ok: false,
                    message: f.message,
                    result: None,
                }
            }
        };
        let _ = tx.send(last).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|ev| Ok(ev.frame()))
}

/// A shared setup flow.
pub type SharedSetup = Arc<dyn SetupFlow>;
/// A shared provision flow.
pub type SharedProvision = Arc<dyn ProvisionFlow>;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn wire_names_and_data() {
        let e = FlowEvent::StepDone {
            step: "a".into(),
            message: None,
        };
        assert_eq!(e.name(), "stepDone");
        assert_eq!(
            std::str::from_utf8(&e.frame()).unwrap(),
            "event: stepDone\ndata: {\"step\":\"a\"}\n\n"
        );
    }

    #[tokio::test]
    async fn failures_end_with_step_error_then_done() {
        let (tx, rx) = mpsc::channel(16);
        let sender = FlowSender::new(tx.clone());
        let fut = async move {
            NoMeshSetup
                .run(
                    SetupRequest::Create {
                        hostname: "h".into(),
                        server_url: "https://x".into(),
                    },
                    sender,
                )
                .await
        };
        let frames: Vec<String> = run_flow(fut, tx, rx, |_| {})
            .map(|b| String::from_utf8(b.unwrap().to_vec()).unwrap())
            .collect()
            .await;
        let names: Vec<&str> = frames
            .iter()
            .map(|f| f.lines().next().unwrap().trim_start_matches("event: "))
            .collect();
        assert_eq!(names, ["begin", "step", "hint", "stepError", "done"]);
        assert!(frames[4].contains("\"ok\":false"));
    }
}
