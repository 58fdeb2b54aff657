#![warn(missing_docs)]
//! # guildnet-dashboard
//!
//! GuildNet's web dashboard: a small axum server with an embedded vanilla-JS single page, in
//! front of the orchestrator's REST API. The orchestrator's admin token stays on the server; the
//! browser logs in with the dashboard password and holds only an HttpOnly session cookie.
//!
//! - [`Dashboard::bind`] prepares everything and binds the listener; [`Dashboard::serve`] runs
//!   until a shutdown future resolves. [`serve`] does both.
//! - [`router`] builds the whole app from an [`AppState`], for callers adding routes.
//! - Orgs live in `${state}/dashboard.db` ([`db`]); kubeconfigs and talosconfigs in
//!   `${state}/kube/<org>.config` and `${state}/talos/<org>.talosconfig` ([`configs`]).
//! - Long flows (mesh setup, org provisioning) stream [`flows::Progress`] events; plug real
//!   implementations in through [`flows::SetupFlow`] and [`flows::ProvisionFlow`].
//! - Live task and agent events: one upstream subscription fanned out to browsers ([`live`]).
//! - Agents' editors are served from a second listener, the editor origin, never from the
//!   dashboard's own origin ([`editor_origin`]).

pub mod api;
pub mod assets;
pub mod auth;
pub mod configs;
pub mod db;
pub mod editor_origin;
pub mod error;
pub mod flows;
pub mod live;
pub mod mesh;
pub mod pool;
pub mod provision;
mod routes;
pub mod tls;
pub mod validate;

pub use error::{ApiError, DashboardError};
pub use routes::router;

use guildnet_core::client::OrchestratorClient;
use guildnet_core::state_dir::StatePaths;
use guildnet_core::token::Secret;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the dashboard reaches the orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorHandle {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Admin token (kept server-side).
    pub token: Secret,
}

/// Dashboard settings.
#[derive(Clone)]
pub struct DashboardConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the editor origin's listener (default: the dashboard's IP, a free port).
    pub editor_listen: Option<SocketAddr>,
    /// The editor origin as browsers reach it (`https://editors.example.com`), when it is not
    /// the dashboard's host with the editor listener's port (e.g. behind a reverse proxy).
    pub editor_url: Option<String>,
    /// State dir (`dashboard.db`, `kube/`, `talos/`, the generated password and certificate).
    pub state_dir: PathBuf,
    /// Admin password; read from or generated into `${state}/dashboard.password` when `None`.
    pub password: Option<Secret>,
    /// Serve HTTPS with a self-signed certificate generated into the state dir.
    pub tls: bool,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// Mesh setup implementation (default: [`flows::NoMeshSetup`]).
    pub setup_flow: Option<flows::SharedSetup>,
    /// Provisioning implementation (default: [`provision::OrchestratorProvision`]).
    pub provision_flow: Option<flows::SharedProvision>,
    /// What the default provisioning installs as the operator (image, tailnet sidecar
    /// settings); a provision request's `publicOrchestratorUrl` overrides the URL. Default:
    /// [`guildnet_kube::install::InstallOptions::default`], the release image.
    pub operator_install: guildnet_kube::install::InstallOptions,
}

impl DashboardConfig {
    /// Defaults: listen on 127.0.0.1:8090, plain HTTP, 12 h sessions.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            editor_listen: None,
            editor_url: None,
            state_dir: state_dir.into(),
            password: None,
            tls: false,
            session_ttl: Duration::from_secs(12 * 3600),
            setup_flow: None,
            provision_flow: None,
            operator_install: Default::default(),
        }
    }
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardConfig")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Shared state of the handlers (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    /// Orchestrator client (admin token inside).
    pub orchestrator: OrchestratorClient,
    /// The admin token, for calls the client lacks.
    pub orchestrator_token: Secret,
    /// Plain HTTP client for such calls.
    pub http: reqwest::Client,
    /// Dashboard database.
    pub db: db::Db,
    /// State paths.
    pub paths: StatePaths,
    /// Sessions.
    pub sessions: Arc<auth::Sessions>,
    /// The admin password.
    pub password: Arc<Secret>,
    /// Live events hub.
    pub live: Arc<live::LiveHub>,
    /// Setup flow.
    pub setup_flow: flows::SharedSetup,
    /// Provision flow.
    pub provision_flow: flows::SharedProvision,
    /// Whether the dashboard is served over TLS (sets `Secure` cookies).
    pub tls: bool,
    /// The orchestrator's `host:port` for the editor relay, or why it cannot be relayed to.
    pub orchestrator_authority: Arc<Result<String, String>>,
    /// The editor relay's pooled reverse proxy.
    pub embed_proxy: guildnet_core::proxy::ReverseProxy,
    /// Password guessing throttle.
    pub login_throttle: Arc<auth::LoginThrottle>,
    /// One-time login links ([`Dashboard::login_link`]).
    pub login_links: Arc<auth::LoginLinks>,
    /// The editor origin: its port, public URL, tickets and sessions.
    pub editor: Arc<editor_origin::EditorOrigin>,
}

/// A bound, not yet serving dashboard.
pub struct Dashboard {
    state: AppState,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    editor_listener: tokio::net::TcpListener,
    editor_addr: SocketAddr,
    password_source: auth::PasswordSource,
    tls: Option<tls::TlsFiles>,
}

impl Dashboard {
    /// Prepares the state dir, database, password and (optionally) certificate, and binds.
    pub async fn bind(
        cfg: DashboardConfig,
        orch: OrchestratorHandle,
    ) -> Result<Self, DashboardError> {
        let paths = StatePaths::new(cfg.state_dir.clone());
        paths.ensure()?;
        let (password, password_source) = auth::admin_password(cfg.password.clone(), &paths)?;
        let db_path = paths.dashboard_db();
        let db = {
            let p = db_path.clone();
            tokio::task::spawn_blocking(move || db::Db::open(&p))
                .await
                .map_err(|e| DashboardError::Tls(format!("database open task failed: {e}")))?
                .map_err(|e| match e {
                    db::DbError::Sqlite { path, source } => DashboardError::Db { path, source },
                    other => DashboardError::Db {
                        path: db_path.clone(),
                        source: rusqlite::Error::InvalidParameterName(other.to_string()),
                    },
                })?
        };
        let orchestrator = OrchestratorClient::new(&orch.url, orch.token.clone())?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| DashboardError::Tls(format!("HTTP client: {e}")))?;
        let provision_flow: flows::SharedProvision = match cfg.provision_flow.clone() {
            Some(f) => f,
            None => Arc::new(
                provision::OrchestratorProvision::new(&orch.url, orch.token.clone(), paths.clone())
                    .map_err(|e| DashboardError::Tls(e.to_string()))?
                    .with_install_options(cfg.operator_install.clone()),
            ),
        };
        let tls = if cfg.tls {
            Some(tls::ensure_certificate(&paths)?)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| DashboardError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DashboardError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let editor_bind = cfg
            .editor_listen
            .unwrap_or_else(|| SocketAddr::new(addr.ip(), 0));
        if let Some(u) = &cfg.editor_url {
            if !editor_origin::is_origin(u.trim_end_matches('/')) {
                return Err(DashboardError::Config(format!(
                    "--editor-url {u:?}: must be an origin like https://editors.example.com \
                     (scheme, host and optional port, no path)"
                )));
            }
        }
        let editor_listener =
            tokio::net::TcpListener::bind(editor_bind)
                .await
                .map_err(|source| DashboardError::Listen {
                    addr: editor_bind,
                    source,
                })?;
        let editor_addr =
            editor_listener
                .local_addr()
                .map_err(|source| DashboardError::Listen {
                    addr: editor_bind,
                    source,
                })?;
        if editor_addr.port() == addr.port() && editor_addr.ip() == addr.ip() {
            return Err(DashboardError::Config(
                "the editor origin must listen on another port than the dashboard".into(),
            ));
        }
        let state = AppState {
            orchestrator,
            orchestrator_token: orch.token,
            http,
            db,
            paths,
            sessions: Arc::new(auth::Sessions::new(cfg.session_ttl)),
            password: Arc::new(password),
            live: Arc::new(live::LiveHub::new(live::RING_CAPACITY)),
            setup_flow: cfg
                .setup_flow
                .clone()
                .unwrap_or_else(|| Arc::new(flows::NoMeshSetup)),
            provision_flow,
            tls: cfg.tls,
            orchestrator_authority: Arc::new(editor_origin::orchestrator_authority(&orch.url)),
            embed_proxy: guildnet_core::proxy::ReverseProxy::new(),
            login_throttle: Arc::new(auth::LoginThrottle::default()),
            login_links: Arc::new(auth::LoginLinks::default()),
            editor: Arc::new(editor_origin::EditorOrigin {
                port: editor_addr.port(),
                public_url: cfg
                    .editor_url
                    .as_ref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
                gate: editor_origin::EditorGate::default(),
            }),
        };
        Ok(Self {
            state,
            listener,
            addr,
            editor_listener,
            editor_addr,
            password_source,
            tls,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to open (`http://` or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The editor origin listener's bound address.
    pub fn editor_addr(&self) -> SocketAddr {
        self.editor_addr
    }

    /// A one-time login link, valid for [`auth::LOGIN_LINK_TTL`]: opening it starts a session
    /// without the password. It is a secret: print it only to the person who runs the
    /// dashboard.
    pub fn login_link(&self) -> String {
        let t = self.state.login_links.mint(auth::LOGIN_LINK_TTL);
        format!("{}/login/link?token={}", self.url(), t.expose())
    }

    /// Where the password came from (to tell people how to log in).
    pub fn password_source(&self) -> &auth::PasswordSource {
        &self.password_source
    }

    /// The handlers' state (to build extra routes).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves [`router`] until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DashboardError> {
        let app = router(self.state.clone());
        self.serve_with(app, shutdown).await
    }

    /// Serves `app` (e.g. [`router`] with extra routes) until `shutdown` resolves.
    pub async fn serve_with(
        self,
        app: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DashboardError> {
        let upstream = tokio::spawn(
            self.state
                .live
                .clone()
                .run_upstream(self.state.orchestrator.clone()),
        );
        tokio::spawn(migrate_orgs(self.state.clone()));
        tracing::info!(url = %self.url(), editor_origin = %self.editor_addr, "dashboard listening");
        // Both listeners stop on the same shutdown.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let editor_app = editor_origin::router(self.state.clone());
        let (main, editor) = match self.tls {
            None => {
                let opts = guildnet_core::http_server::ServerOptions::default();
                tokio::join!(
                    async {
                        guildnet_core::http_server::serve(self.listener, app, &opts, stopped())
                            .await
                            .map_err(DashboardError::Serve)
                    },
                    async {
                        guildnet_core::http_server::serve(
                            self.editor_listener,
                            editor_app,
                            &opts,
                            stopped(),
                        )
                        .await
                        .map_err(DashboardError::Serve)
                    }
                )
            }
            Some(files) => tokio::join!(
                tls::serve(self.listener, app, &files, stopped()),
                tls::serve(self.editor_listener, editor_app, &files, stopped())
            ),
        };
        let r = main.and(editor);
        upstream.abort();
        r
    }
}

/// Moves orgs that an older dashboard kept in its own `dashboard.db` into the orchestrator's
/// registry (the one list of orgs), then forgets them here. Retries while the orchestrator is
/// not reachable yet (it may start after the dashboard).
async fn migrate_orgs(state: AppState) {
    let rows = match state.db.orgs().await {
        Ok(r) if r.is_empty() => return,
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the dashboard's old org list");
            return;
        }
    };
    for row in rows {
        let mut delay = Duration::from_secs(1);
        loop {
            match state.orchestrator.create_org(&row.name).await {
                Ok(_) => break,
                Err(e) if e.status() == Some(409) => break,
                Err(e) if e.status().is_some() => {
                    tracing::warn!(org = %row.name, error = %e, "cannot move org to the orchestrator");
                    return;
                }
                Err(_) if delay < Duration::from_secs(60) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::warn!(org = %row.name, error = %e, "orchestrator unreachable; org not moved");
                    return;
                }
            }
        }
        if let Err(e) = state.db.delete_org(&row.name).await {
            tracing::warn!(org = %row.name, error = %e, "cannot forget the moved org");
        } else {
            tracing::info!(org = %row.name, "org moved from dashboard.db to the orchestrator");
        }
    }
}

/// Binds and serves until `shutdown` resolves. Use [`Dashboard::bind`] to learn the address
/// first.
pub async fn serve(
    cfg: DashboardConfig,
    orchestrator: OrchestratorHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DashboardError> {
    Dashboard::bind(cfg, orchestrator)
        .await?
        .serve(shutdown)
        .await
}
