//! The orchestrator's errors in the shared HTTP kit's form ([`crate::httpapi::ApiError`]): how
//! store and backend failures map to statuses and codes.

use crate::seams::BackendError;
use crate::store::{RejectionKind, StoreError};
use axum::http::StatusCode;

pub use crate::api::{ErrorBody, ErrorDetail};
pub use crate::httpapi::ApiError;

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
