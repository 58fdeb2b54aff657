//! The dashboard's own errors (starting and serving). Errors answered to a browser are the
//! shared HTTP kit's [`guildnet_core::httpapi::ApiError`], with the same JSON form and status
//! semantics as the orchestrator's API.

use guildnet_core::client::ClientError;

pub use guildnet_core::httpapi::ApiError;

/// Errors starting or running the dashboard server.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The state dir could not be prepared or a file in it written.
    #[error(transparent)]
    StateDir(#[from] guildnet_core::state_dir::StateDirError),
    /// The database could not be opened or migrated.
    #[error("dashboard database {path}: {source}")]
    Db {
        /// Database file.
        path: std::path::PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The orchestrator handle is unusable (bad URL).
    #[error("orchestrator client: {0}")]
    Orchestrator(#[from] ClientError),
    /// A setting that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// TLS setup failed (certificate generation or loading).
    #[error("TLS: {0}")]
    Tls(String),
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}
