//! The orchestrator's error type and its JSON form: `{"error": {"code", "message", "field"?}}`.

use crate::names::ValidationError;
use crate::seams::BackendError;
use crate::store::{RejectionKind, StoreError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Detail of an error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`, `stale_fencing`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error the API reports to its caller.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Field at fault.
    pub field: Option<String>,
}

impl ApiError {
    /// A new error.
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

    /// 422 for an invalid field value.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
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

    /// 500 with a generic message; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the orchestrator log",
        )
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid(e.field, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::InUse(why) => ApiError::new(StatusCode::CONFLICT, "in_use", why),
            StoreError::AlreadyExists(what) => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{what} already exists"),
            ),
            StoreError::Rejected(r) => {
                let e = match r.kind {
                    RejectionKind::Conflict => ApiError::conflict(r.message),
                    RejectionKind::StaleFencing => {
                        ApiError::new(StatusCode::CONFLICT, "stale_fencing", r.message)
                    }
                    RejectionKind::Forbidden => ApiError::forbidden(r.message),
                    RejectionKind::LogOutOfOrder => {
                        ApiError::new(StatusCode::CONFLICT, "log_out_of_order", r.message)
                    }
                    RejectionKind::LogSealed => {
                        ApiError::new(StatusCode::CONFLICT, "log_sealed", r.message)
                    }
                };
                match r.field {
                    Some(f) => e.with_field(f),
                    None => e,
                }
            }
            e @ StoreError::Unavailable { .. } => {
                tracing::warn!(error = %e, "state store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the orchestrator's database is unavailable; retry shortly",
                )
            }
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the orchestrator is shutting down",
            ),
            e @ StoreError::Unsupported(_) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "unsupported", e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unsupported { .. } => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "unsupported", e.to_string())
            }
            other => ApiError::new(StatusCode::BAD_GATEWAY, "backend_error", other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
