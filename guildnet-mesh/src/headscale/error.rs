//! Errors of the Headscale REST client.

/// What went wrong talking to Headscale. No variant ever carries the API key or a pre-auth key.
#[derive(Debug, thiserror::Error)]
pub enum HeadscaleError {
    /// The server refused the API key (HTTP 401 or 403): wrong, expired or revoked.
    #[error("headscale at {url} refused the API key (HTTP {status}): it is wrong, expired or revoked; create one with `headscale apikeys create`")]
    Auth {
        /// Base URL (no credentials).
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The server could not be reached (connection refused, DNS, TLS, timeout).
    #[error("headscale at {url} is unreachable: {reason}")]
    Unreachable {
        /// What was dialled (no credentials).
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered, but not as Headscale v0.26+ does: a route is missing or a response
    /// has an unexpected shape.
    #[error("headscale at {url} does not speak the expected API: {what} (is it Headscale v0.26 or newer?)")]
    VersionMismatch {
        /// Base URL.
        url: String,
        /// Which route or response, and what was wrong.
        what: String,
    },
    /// The API refused the request.
    #[error("headscale {op} failed with HTTP {status}: {message}")]
    Api {
        /// The operation (`create user`, `expire pre-auth key`...).
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// Headscale's message.
        message: String,
    },
    /// An argument is invalid (which one, why).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<HeadscaleError> for guildnet_core::seams::MeshError {
    fn from(e: HeadscaleError) -> Self {
        use guildnet_core::seams::MeshError;
        match e {
            HeadscaleError::Auth { .. } => MeshError::Auth(e.to_string()),
            HeadscaleError::Unreachable { url, reason } => MeshError::Unreachable {
                target: url,
                reason,
            },
            other => MeshError::Failed {
                op: "headscale",
                reason: other.to_string(),
            },
        }
    }
}
