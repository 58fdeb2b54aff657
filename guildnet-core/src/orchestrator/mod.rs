//! The orchestrator: a library service ([`Orchestrator`]) and its HTTP API ([`http::router`]).
//!
//! Binaries only build the pieces and call [`serve`].

pub mod api;
mod backoff;
pub mod bootstrap;
pub mod editor_proxy;
pub mod error;
pub mod http;
pub mod retention;
mod service;
pub mod sse;

pub use error::ApiError;
pub use service::{
    task_of_agent_token, Orchestrator, OrchestratorConfig, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LEASE_TTL, DEFAULT_LOG_QUOTA_BYTES, MAX_LOG_LINES, MAX_LOG_LINE_BYTES, MAX_LOG_SEQ,
    MAX_TASK_BYTES,
};

use crate::state_dir::{write_private_file, StatePaths};
use crate::token::{self, Secret};

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// Given in configuration (e.g. `ORCHESTRATOR_TOKEN`).
    Configured,
    /// Read from the token file a previous run generated.
    File(std::path::PathBuf),
    /// Generated now and stored (0600) at this path.
    Generated(std::path::PathBuf),
}

/// The admin token: the configured one, else the one stored in the state dir, else a new one
/// generated and stored there with mode 0600. There is no "auth off".
pub fn admin_token(
    configured: Option<String>,
    paths: &StatePaths,
) -> Result<(Secret, AdminTokenSource), crate::state_dir::StateDirError> {
    if let Some(t) = configured.filter(|t| !t.trim().is_empty()) {
        return Ok((Secret::new(t.trim()), AdminTokenSource::Configured));
    }
    let file = paths.admin_token_file();
    if let Ok(t) = std::fs::read_to_string(&file) {
        let t = t.trim();
        if !t.is_empty() {
            return Ok((Secret::new(t), AdminTokenSource::File(file)));
        }
    }
    let t = token::generate("gna_");
    write_private_file(&file, format!("{}\n", t.expose()).as_bytes())?;
    Ok((t, AdminTokenSource::Generated(file)))
}

/// Serves the orchestrator's API on `listener` with the default
/// [`ServerOptions`](crate::http_server::ServerOptions) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    o: Orchestrator,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        o,
        &crate::http_server::ServerOptions::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with explicit connection options.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    o: Orchestrator,
    opts: &crate::http_server::ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bg = o.spawn_background();
    let retention = o.spawn_retention();
    let closer = o.clone();
    let app = http::router(o);
    use axum::serve::ListenerExt;
    // Small responses go out at once (no Nagle delay behind an unacknowledged segment).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let res = crate::http_server::serve(listener, app, opts, async move {
        shutdown.await;
        // End SSE streams, or open ones would hold the drain up.
        closer.begin_shutdown();
    })
    .await;
    bg.abort();
    if let Some(r) = retention {
        r.abort();
    }
    res
}
