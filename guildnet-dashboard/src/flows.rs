//! Long-running flows reported as server-sent events: mesh setup (`/api/setup/stream`) and org
//! provisioning (`/api/orgs/{name}/provision/stream`).
//!
//! Events are [`Progress`], GuildNet's one progress type (its module documents the wire
//! format); the SSE event name is its `kind`. A flow is a [`SetupFlow`] or [`ProvisionFlow`]:
//! given the validated request and a [`ProgressSender`], it runs to completion and returns its
//! result; the dashboard sends `done` (and `stepError` on failure) itself, so every stream ends
//! with exactly one `done`.

use async_trait::async_trait;
use guildnet_core::names::OrgName;
pub use guildnet_core::progress::{Progress, ProgressSender};
use guildnet_core::token::Secret;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

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
        /// URL the Headscale server will be reachable at (by this machine, the orchestrator
        /// and agent pods: e.g. the node IP when pods reach the host there).
        server_url: String,
        /// Where Headscale listens (default: loopback when `server_url`'s host is a loopback
        /// address, else all interfaces, on `server_url`'s port).
        listen_addr: Option<std::net::SocketAddr>,
    },
    /// Connect to an existing network.
    Connect {
        /// This machine's host name on the mesh.
        hostname: String,
        /// The Headscale URL.
        login_server: String,
        /// Pre-auth key (never logged or echoed).
        auth_key: Secret,
        /// A Headscale API key, so the orchestrator can put agents on this mesh (mint a key per
        /// task); without it, the mesh is not handed to the orchestrator. Never logged or echoed.
        api_key: Option<Secret>,
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
                ..
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
    async fn run(&self, req: SetupRequest, events: ProgressSender) -> FlowResult;
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
    async fn run(&self, req: ProvisionRequest, events: ProgressSender) -> FlowResult;
}

/// The setup flow of a build without mesh support: fails with a clear message.
pub struct NoMeshSetup;

#[async_trait]
impl SetupFlow for NoMeshSetup {
    async fn run(&self, req: SetupRequest, events: ProgressSender) -> FlowResult {
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

/// Runs `fut` (a flow) and forwards its events as server-sent events (axum's `Sse`, with
/// keep-alive comments), then `stepError` (on failure) and `done`.
pub fn run_flow<F>(
    fut: F,
    tx: mpsc::Sender<Progress>,
    rx: mpsc::Receiver<Progress>,
    on_result: impl FnOnce(&FlowResult) + Send + 'static,
) -> axum::response::Response
where
    F: std::future::Future<Output = FlowResult> + Send + 'static,
{
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let events = flow_events(fut, tx, rx, on_result).map(|ev| {
        Ok::<_, std::convert::Infallible>(
            axum::response::sse::Event::default()
                .event(ev.kind())
                .data(ev.to_json()),
        )
    });
    let mut resp = axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response();
    // No proxy buffering (nginx), so each step shows when it happens.
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    resp
}

/// The events of a flow run: its own, then `stepError` (on failure) and one `done`.
fn flow_events<F>(
    fut: F,
    tx: mpsc::Sender<Progress>,
    rx: mpsc::Receiver<Progress>,
    on_result: impl FnOnce(&FlowResult) + Send + 'static,
) -> impl futures_util::Stream<Item = Progress> + Send + 'static
where
    F: std::future::Future<Output = FlowResult> + Send + 'static,
{
    tokio::spawn(async move {
        let result = fut.await;
        on_result(&result);
        let last = match result {
            Ok(v) => Progress::Done {
                ok: true,
                message: "finished".into(),
                result: Some(v),
            },
            Err(f) => {
                if let Some(step) = &f.step {
                    let _ = tx
                        .send(Progress::StepError {
                            step: step.clone(),
                            message: f.message.clone(),
                        })
                        .await;
                }
                Progress::Done {
                    ok: false,
                    message: f.message,
                    result: None,
                }
            }
        };
        let _ = tx.send(last).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A shared setup flow.
pub type SharedSetup = Arc<dyn SetupFlow>;
/// A shared provision flow.
pub type SharedProvision = Arc<dyn ProvisionFlow>;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn failures_end_with_step_error_then_done() {
        let (tx, rx) = mpsc::channel(16);
        let sender = ProgressSender::new(tx.clone());
        let fut = async move {
            NoMeshSetup
                .run(
                    SetupRequest::Create {
                        hostname: "h".into(),
                        server_url: "https://x".into(),
                        listen_addr: None,
                    },
                    sender,
                )
                .await
        };
        let events: Vec<Progress> = flow_events(fut, tx, rx, |_| {}).collect().await;
        let names: Vec<&str> = events.iter().map(|e| e.kind()).collect();
        assert_eq!(names, ["begin", "step", "hint", "stepError", "done"]);
        assert!(matches!(events[4], Progress::Done { ok: false, .. }));
    }
}
