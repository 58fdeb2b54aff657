//! The agent's own `/healthz` (probed by the kubelet on :8081): 200 while the editor is up or
//! not configured, 503 while it is down; the body shows the runner and editor state.

use super::StateView;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;

async fn healthz(State(view): State<StateView>) -> (StatusCode, Json<serde_json::Value>) {
    let code = if view.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(view.json()))
}

/// Serves `/healthz` on `addr` until the returned task is aborted.
pub(crate) async fn serve(
    addr: SocketAddr,
    view: StateView,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(view);
    Ok(tokio::spawn(async move {
        let opts = crate::http_server::ServerOptions::default();
        let forever = std::future::pending();
        if let Err(e) = crate::http_server::serve(listener, app, &opts, forever).await {
            tracing::warn!(error = %e, "health endpoint stopped");
        }
    }))
}
