//! The orchestrator: a library service ([`Orchestrator`]), its editor proxy
//! ([`editor_proxy::EditorProxy`]) and its HTTP API ([`http::router`]) over both ([`App`]).
//!
//! Binaries only build the pieces and call [`serve`].

pub mod api;
mod backoff;
pub mod bootstrap;
pub mod editor_proxy;
pub mod editor_session;
pub mod error;
pub mod http;
pub mod mesh;
pub mod retention;
mod service;
pub mod sse;

pub use editor_proxy::{EditorProxy, EditorProxyConfig};
pub use error::ApiError;
pub use service::{
    task_of_agent_token, EditorLocation, EditorSource, EndedAgent, Orchestrator,
    OrchestratorBuilder, OrchestratorConfig, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LEASE_TTL,
    DEFAULT_LOG_QUOTA_BYTES, MAX_LOG_LINES, MAX_LOG_LINE_BYTES, MAX_LOG_SEQ, MAX_TASK_BYTES,
};

/// What the orchestrator's HTTP server serves: the service and its editor proxy (the router's
/// state; handlers take the part they need).
#[derive(Clone)]
pub struct App {
    /// The service.
    pub orchestrator: Orchestrator,
    /// The editor proxy in front of the service's agents.
    pub editors: EditorProxy,
}

impl App {
    /// The service with an editor proxy configured by `editors`.
    pub fn new(orchestrator: Orchestrator, editors: EditorProxyConfig) -> Self {
        Self {
            editors: EditorProxy::new(orchestrator.clone(), editors),
            orchestrator,
        }
    }
}

impl From<Orchestrator> for App {
    /// The service with an editor proxy of [`EditorProxyConfig::default`] settings.
    fn from(o: Orchestrator) -> Self {
        Self::new(o, EditorProxyConfig::default())
    }
}

impl axum::extract::FromRef<App> for Orchestrator {
    fn from_ref(app: &App) -> Orchestrator {
        app.orchestrator.clone()
    }
}

impl axum::extract::FromRef<App> for EditorProxy {
    fn from_ref(app: &App) -> EditorProxy {
        app.editors.clone()
    }
}

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
/// [`ServerOptions`](crate::http_server::ServerOptions) until `shutdown` resolves. An
/// [`Orchestrator`] alone is served with a default editor proxy.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: impl Into<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        app,
        &crate::http_server::ServerOptions::default(),
        shutdown,
    )
    .await
}

/// [`serve`] with explicit connection options.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: impl Into<App>,
    opts: &crate::http_server::ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.into();
    let o = app.orchestrator.clone();
    let bg = o.spawn_background();
    let retention = o.spawn_retention();
    let closer = o.clone();
    let app = http::router(app);
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
