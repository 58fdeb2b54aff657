//! The dashboard's errors and their JSON form: `{"error": {"code", "message", "field"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use guildnet_core::client::ClientError;
use serde::Serialize;

/// An error answered to a browser: a status, a stable code and a human-readable message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid_field`, `conflict`, ...).
    pub code: &'static str,
    /// Message for people; never holds secrets.
    pub message: String,
    /// The request field at fault, when one is.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: a request field is invalid.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    /// 400: the body is not acceptable JSON.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 422: the content was read but is not usable (a kubeconfig without a server...).
    pub fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_content", message).with_field(field)
    }

    /// 500, logging the detail and answering a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {detail}"),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        })
        .unwrap_or_else(|_| serde_json::json!({"error": {"code": "internal", "message": "error"}}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<ClientError> for ApiError {
    /// Orchestrator API errors keep their status and message; transport and decode errors
    /// become 502.
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api {
                status,
                message,
                field,
                ..
            } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let code = match status.as_u16() {
                    400 | 422 => "invalid_field",
                    404 => "not_found",
                    409 => "conflict",
                    401 | 403 => "orchestrator_refused",
                    _ => "orchestrator_error",
                };
                // The dashboard's own session is fine: the orchestrator refusing our token is a
                // server misconfiguration, not the browser's fault.
                let status = if matches!(status.as_u16(), 401 | 403) {
                    StatusCode::BAD_GATEWAY
                } else {
                    status
                };
                let mut err = ApiError::new(status, code, format!("orchestrator: {message}"));
                err.field = field;
                err
            }
            other => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "orchestrator_unreachable",
                other.to_string(),
            ),
        }
    }
}

impl From<guildnet_core::names::ValidationError> for ApiError {
    fn from(e: guildnet_core::names::ValidationError) -> Self {
        ApiError::invalid(e.field, e.to_string())
    }
}

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
