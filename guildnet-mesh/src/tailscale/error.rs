//! Errors of the Tailscale side.

use crate::binary::BinaryNotFound;
use std::time::Duration;

/// What went wrong with tailscaled or the tailscale CLI. Never carries a pre-auth key.
#[derive(Debug, thiserror::Error)]
pub enum TailscaleError {
    /// A binary is missing.
    #[error(transparent)]
    Binary(#[from] BinaryNotFound),
    /// A setting or argument is invalid.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which one.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {reason}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why.
        reason: String,
    },
    /// tailscaled exited.
    #[error("tailscaled exited with {status}; last output:\n{log}")]
    DaemonExited {
        /// Exit status.
        status: String,
        /// Tail of its log.
        log: String,
    },
    /// The control server refused the pre-auth key (wrong, expired, already used).
    #[error("the control server refused the pre-auth key: {message}")]
    Auth {
        /// tailscale's explanation (the key redacted).
        message: String,
    },
    /// A tailscale CLI command failed.
    #[error("tailscale {op} failed ({status}): {output}")]
    Command {
        /// The operation (`up`, `status`, `down`, `logout`).
        op: &'static str,
        /// Exit status.
        status: String,
        /// Its output (the key redacted).
        output: String,
    },
    /// A command's output could not be read.
    #[error("tailscale {op}: unexpected output: {reason}")]
    Parse {
        /// The operation.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A connection through a node's proxy failed.
    #[error("dial {target} over the tailnet via SOCKS5 {via}: {reason}")]
    Dial {
        /// `host:port` dialled.
        target: String,
        /// The SOCKS5 proxy.
        via: String,
        /// Why.
        reason: String,
    },
}

impl From<TailscaleError> for guildnet_core::seams::MeshError {
    fn from(e: TailscaleError) -> Self {
        use guildnet_core::seams::MeshError;
        match e {
            TailscaleError::Auth { .. } => MeshError::Auth(e.to_string()),
            TailscaleError::Dial { target, reason, .. } => {
                MeshError::Unreachable { target, reason }
            }
            TailscaleError::DaemonExited { .. } => MeshError::Unreachable {
                target: "tailscaled".into(),
                reason: e.to_string(),
            },
            other => MeshError::Failed {
                op: "tailscale",
                reason: other.to_string(),
            },
        }
    }
}
