//! Wiring of a complete orchestrator from options: state dir, state store (the SQLite file in
//! the state dir, or PostgreSQL by URL), admin token, local backend, orgs, listener. The
//! binaries (`guildnet-orchestrator`, `guildnet up`) call this.

use crate::local::{LocalBackend, LocalBackendConfig};
use crate::names::OrgName;
use crate::orchestrator::{
    admin_token, AdminTokenSource, App, EditorProxyConfig, Orchestrator, OrchestratorConfig,
};
use crate::state_dir::StatePaths;
use crate::store::{Durability, SqliteStore, StateStore, StoreError};
use crate::token::Secret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors while starting an orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The state dir could not be resolved or prepared.
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another orchestrator holds the state dir.
    #[error(transparent)]
    Locked(#[from] crate::state_dir::LockError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The local agents' user cannot be used (see [`crate::agent_user`]).
    #[error(transparent)]
    AgentUser(#[from] crate::agent_user::AgentUserError),
    /// Startup failed otherwise.
    #[error("{0}")]
    Other(String),
}

/// Where the orchestrator keeps its state, when not in the SQLite file of its state dir: a
/// `postgres://user:password@host:port/db` URL. Its `Debug` and `Display` never show the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password.
    pub fn redacted(&self) -> String {
        #[cfg(feature = "postgres")]
        {
            crate::store::redact_url(&self.0)
        }
        #[cfg(not(feature = "postgres"))]
        {
            match self.0.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://(not shown)"),
                None => "(not shown)".into(),
            }
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Opens the store a [`StoreUrl`] names.
pub async fn open_store_url(url: &StoreUrl) -> Result<Arc<dyn StateStore>, LaunchError> {
    let lower = url.expose().trim_start().to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            let store = crate::store::PostgresStore::connect(url.expose()).await?;
            tracing::info!(store = %store.display_url(), "state store: PostgreSQL");
            return Ok(Arc::new(store));
        }
        #[cfg(not(feature = "postgres"))]
        {
            return Err(LaunchError::Other(format!(
                "--store {url}: this build has no PostgreSQL support (cargo feature `postgres`)"
            )));
        }
    }
    Err(LaunchError::Other(format!(
        "--store {url}: not a supported store URL; use postgres://user:password@host:port/db, \
         or leave --store unset for the SQLite file in the state dir"
    )))
}

/// Options of a local orchestrator (SQLite or PostgreSQL store + local backend).
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The state store: `None` for the SQLite file in the state dir.
    pub store: Option<StoreUrl>,
    /// State dir (resolved with the standard rules when `None`).
    pub state_dir: Option<PathBuf>,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// URL agents use to reach the orchestrator; defaults to `http://<listen>`.
    pub public_url: Option<String>,
    /// Admin token; generated and stored in the state dir when `None`.
    pub admin_token: Option<String>,
    /// The agent executable; defaults to `guildnet-agent` next to the current executable.
    pub agent_bin: Option<PathBuf>,
    /// Runner command template handed to agents.
    pub runner: Option<String>,
    /// Local backend: variables of this process's environment passed on to agents (see
    /// [`LocalBackendConfig::pass_env`]).
    pub pass_env: Vec<String>,
    /// Orgs to register at start (existing ones are kept).
    pub orgs: Vec<OrgName>,
    /// Commit durability (SQLite).
    pub durability: Durability,
    /// The service's settings: leases, heartbeats, log quota, retention, what agents are told
    /// (runners, forge, keys). Their defaults are [`OrchestratorConfig::new`]'s. Its
    /// `admin_token`, `public_url`, `state_paths` and `workspaces_root` are not read:
    /// [`start_local`] sets them from [`LocalOptions::admin_token`] (generated when unset),
    /// [`LocalOptions::public_url`] (`http://<listen>` when unset) and the state dir. The
    /// agents' default runner is [`LocalOptions::runner`] when `service.agents` has none.
    pub service: OrchestratorConfig,
    /// The editor proxy's settings: which editor addresses it trusts, and how it reaches
    /// editors on the tailnet (e.g. guildnet-mesh's `TailnetDialer` through a userspace
    /// tailscaled's SOCKS5 proxy). Its `frame_ancestors` is not read: [`start_local`] sets it
    /// from [`LocalOptions::frame_ancestors`].
    pub editors: EditorProxyConfig,
    /// Run agents through this backend instead of as local processes (e.g. the Kubernetes
    /// backend of `guildnet-kube`).
    pub backend: Option<BackendOverride>,
    /// Local backend: the code-server executable; every agent then runs an editor.
    pub code_server: Option<PathBuf>,
    /// Local backend: the user agents run as (default: `nobody` when run as root).
    pub agent_user: crate::agent_user::AgentUserSpec,
    /// Origins (besides the orchestrator's own) allowed to embed proxied editors in a frame,
    /// e.g. the dashboard's `https://dash.example:8090`.
    pub frame_ancestors: Vec<String>,
    /// Org cluster bootstrap behind `POST /orgs/bootstrap` (e.g. guildnet-talos).
    pub bootstrap: Option<BootstrapOverride>,
    /// The mesh behind `/mesh` (e.g. guildnet-mesh's `RuntimeMesh` with the Kubernetes
    /// backend); without it `PUT /mesh` answers 503.
    pub mesh: Option<MeshOverride>,
}

/// A mesh control chosen by the caller (see [`LocalOptions::mesh`]).
#[derive(Clone)]
pub struct MeshOverride(pub Arc<dyn crate::seams::MeshControl>);

impl std::fmt::Debug for MeshOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshOverride")
    }
}

/// A cluster bootstrap chosen by the caller (see [`LocalOptions::bootstrap`]).
#[derive(Clone)]
pub struct BootstrapOverride(pub Arc<dyn crate::seams::ClusterBootstrap>);

impl std::fmt::Debug for BootstrapOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapOverride")
    }
}

/// A cluster backend chosen by the caller (see [`LocalOptions::backend`]).
#[derive(Clone)]
pub struct BackendOverride(pub Arc<dyn crate::seams::ClusterBackend>);

impl std::fmt::Debug for BackendOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendOverride({})", self.0.name())
    }
}

impl LocalOptions {
    /// Defaults: listen on 127.0.0.1:8080, durable commits, the service's defaults.
    pub fn new() -> Self {
        Self {
            store: None,
            state_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            admin_token: None,
            agent_bin: None,
            runner: None,
            pass_env: Vec::new(),
            orgs: Vec::new(),
            durability: Durability::Full,
            service: OrchestratorConfig::new(Secret::new(String::new()), String::new()),
            editors: EditorProxyConfig::default(),
            backend: None,
            code_server: None,
            agent_user: Default::default(),
            frame_ancestors: Vec::new(),
            bootstrap: None,
            mesh: None,
        }
    }
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A started (not yet serving) local orchestrator.
pub struct LocalOrchestrator {
    /// The service and its editor proxy ([`crate::orchestrator::serve`] serves them).
    pub app: App,
    /// The bound listener.
    pub listener: tokio::net::TcpListener,
    /// Actual address (useful with port 0).
    pub addr: SocketAddr,
    /// State paths.
    pub paths: StatePaths,
    /// The state store, for messages: the SQLite file, or the PostgreSQL URL without password.
    pub store: String,
    /// Where the admin token came from.
    pub token_source: AdminTokenSource,
    /// The state dir's exclusive lock, held as long as this value (and the orchestrator) lives.
    pub lock: crate::state_dir::StateLock,
}

/// Builds everything and binds the listener.
pub async fn start_local(opts: LocalOptions) -> Result<LocalOrchestrator, LaunchError> {
    let paths = match &opts.state_dir {
        Some(d) => StatePaths::new(d.clone()),
        None => StatePaths::resolve()?,
    };
    paths.ensure()?;
    let holder = format!(
        "{} on {}",
        std::env::args()
            .next()
            .and_then(|a| Some(PathBuf::from(a).file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "guildnet".into()),
        opts.listen
    );
    let lock = paths.lock(&holder)?;
    let (token, token_source) = admin_token(opts.admin_token.clone(), &paths)?;
    let store_desc = match &opts.store {
        Some(url) => url.redacted(),
        None => paths.orchestrator_db().display().to_string(),
    };
    let store: Arc<dyn StateStore> = match &opts.store {
        Some(url) => open_store_url(url).await?,
        None => {
            let db_path = paths.orchestrator_db();
            let durability = opts.durability;
            Arc::new(
                tokio::task::spawn_blocking(move || SqliteStore::open(db_path, durability))
                    .await
                    .map_err(|e| LaunchError::Other(format!("store open task failed: {e}")))??,
            )
        }
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| LaunchError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| LaunchError::Listen {
            addr: opts.listen,
            source,
        })?;
    let public_url = opts
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut backend_cfg = LocalBackendConfig::new(paths.clone());
    if let Some(bin) = &opts.agent_bin {
        backend_cfg.agent_bin = bin.clone();
        backend_cfg.agent_args.clear();
    }
    backend_cfg.runner = opts.runner.clone();
    backend_cfg.pass_env = opts.pass_env.clone();
    backend_cfg.code_server = opts.code_server.clone();
    backend_cfg.shared_store = opts.store.is_some();
    if let Ok(rl) = std::env::var("RUST_LOG") {
        backend_cfg.extra_env.push(("RUST_LOG".into(), rl));
    }
    let mut workspaces_root = None;
    let backend: Arc<dyn crate::seams::ClusterBackend> = match &opts.backend {
        Some(b) => b.0.clone(),
        None => {
            backend_cfg.run_agents_as(&opts.agent_user)?;
            workspaces_root = Some(backend_cfg.workspaces_root.clone());
            Arc::new(LocalBackend::new(backend_cfg))
        }
    };
    let mut cfg = opts.service.clone();
    cfg.admin_token = token;
    cfg.public_url = public_url;
    cfg.state_paths = Some(paths.clone());
    cfg.workspaces_root = workspaces_root;
    if cfg.agents.default_runner.is_none() {
        cfg.agents.default_runner = opts.runner.clone();
    }
    cfg.agents
        .validate()
        .map_err(|e| LaunchError::Other(e.to_string()))?;
    for w in cfg.agents.warnings() {
        tracing::warn!("{w}");
    }
    let mut editors = opts.editors.clone();
    editors.frame_ancestors = std::iter::once("'self'".to_owned())
        .chain(opts.frame_ancestors.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    for org in &opts.orgs {
        let audit = crate::model::NewAudit::new("system", "org.create", org.as_str(), None);
        match store.create_org(org, audit).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut orchestrator = Orchestrator::builder(store, backend, cfg);
    if let Some(b) = &opts.bootstrap {
        orchestrator = orchestrator.bootstrap(b.0.clone());
    }
    if let Some(m) = &opts.mesh {
        orchestrator = orchestrator.mesh(m.0.clone());
    }
    let app = App::new(orchestrator.build(), editors);
    Ok(LocalOrchestrator {
        app,
        listener,
        addr,
        paths,
        store: store_desc,
        token_source,
        lock,
    })
}

#[cfg(all(test, feature = "postgres"))]
mod store_url_tests {
    use super::StoreUrl;

    #[test]
    fn store_urls_never_show_their_password() {
        let u: StoreUrl = "postgres://guildnet:hunter2-pw@db.internal:5432/guildnet"
            .parse()
            .unwrap();
        for shown in [format!("{u:?}"), u.to_string(), u.redacted()] {
            assert!(!shown.contains("hunter2-pw"), "{shown}");
            assert!(
                shown.contains("guildnet@db.internal:5432/guildnet"),
                "{shown}"
            );
        }
        assert_eq!(
            u.expose(),
            "postgres://guildnet:hunter2-pw@db.internal:5432/guildnet"
        );
    }

    #[tokio::test]
    async fn an_unsupported_store_url_is_refused_without_showing_it() {
        let u = StoreUrl::new("mysql://root:hunter2-pw@db/guildnet");
        let err = match super::open_store_url(&u).await {
            Ok(_) => panic!("a mysql URL opened a store"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("not a supported store URL"), "{err}");
        assert!(!err.contains("hunter2-pw"), "{err}");
    }
}
