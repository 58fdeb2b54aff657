//! Errors of the create and connect flows.

use crate::binary::BinaryNotFound;
use crate::headscale::{HeadscaleError, SettingsError};
use crate::tailscale::TailscaleError;
use std::time::Duration;

/// Why a setup flow failed. Never carries an API key or a pre-auth key.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An input is invalid (which field, why).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The input (`HEADSCALE_URL`, `TS_AUTHKEY`, `TS_HOSTNAME`, `user`...).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A binary is missing.
    #[error(transparent)]
    Binary(#[from] BinaryNotFound),
    /// A file or process operation failed.
    #[error("{what}: {reason}")]
    Io {
        /// What was attempted, on which path.
        what: String,
        /// The OS error.
        reason: String,
    },
    /// A server exited while it should be running.
    #[error("{name} exited with {status}; last output:\n{log}")]
    ServerExited {
        /// Which server.
        name: String,
        /// Exit status.
        status: String,
        /// Tail of its log.
        log: String,
    },
    /// A server did not become ready in time.
    #[error("{what} not ready after {after:?} ({last}); last output:\n{log}")]
    NotReady {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
        /// The last probe's error.
        last: String,
        /// Tail of its log.
        log: String,
    },
    /// A one-shot command failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line (holds no secrets).
        command: String,
        /// Exit status.
        status: String,
        /// Its error output (redacted).
        output: String,
    },
    /// Settings of a local Headscale are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The Headscale API failed.
    #[error(transparent)]
    Headscale(#[from] HeadscaleError),
    /// Tailscale failed.
    #[error(transparent)]
    Tailscale(#[from] TailscaleError),
}

impl SetupError {
    /// The input field an [`SetupError::Invalid`] names.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            SetupError::Invalid { field, .. } => Some(field),
            SetupError::Settings(s) => Some(s.field),
            _ => None,
        }
    }
}
