//! The HTTP kit every GuildNet server shares (the orchestrator, the dashboard, custom
//! orchestrators built on the crate): one error type with one JSON form
//! (`{"error": {"code", "message", "field"?}}`, [`crate::api::ErrorBody`]) and one status
//! semantics, and the extractors whose rejections are such errors:
//!
//! | problem | status | code |
//! |---|---|---|
//! | body is not JSON, or has trailing data | 400 | `invalid_json` |
//! | a field is missing, unknown, of the wrong type or invalid | 422 | `invalid_field` (+ `field`) |
//! | a field's content is unusable (e.g. a kubeconfig without a server) | 422 | `invalid_content` |
//! | query string malformed | 400 | `invalid_query` |
//! | path segment malformed | 422 | `invalid_field` (`field: "path"`) |
//! | body over the route's limit | 413 | `body_too_large` |
//! | not `Content-Type: application/json` | 415 | `unsupported_media_type` |
//! | 401 / 403 / 404 / 409 | | `unauthorized` / `forbidden` / `not_found` / `conflict` |
//! | 500 | | `internal` (detail only in the log) |
//!
//! A front that relays an orchestrator ([`From<ClientError>`](ApiError#impl-From<ClientError>-for-ApiError))
//! keeps the orchestrator's status and code.

use crate::api::{ErrorBody, ErrorDetail};
use crate::client::ClientError;
use crate::names::ValidationError;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;

// ---- the error -------------------------------------------------------------------------------

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

    /// 400: the body is not JSON at all.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 422: the field was read but its content is not usable (a kubeconfig without a server).
    pub fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_content", message).with_field(field)
    }

    /// 500 with a generic message; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid(e.field, e.to_string())
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

impl From<ClientError> for ApiError {
    /// Relays an upstream orchestrator's error: API errors keep their status, code, message
    /// and field; the orchestrator refusing this front's own token (401/403) is this server's
    /// misconfiguration, not the caller's fault, so it becomes 502; transport and decode errors
    /// are 502 `orchestrator_unreachable`.
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api {
                status,
                code,
                message,
                field,
            } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let (status, code) = match status.as_u16() {
                    401 | 403 => (StatusCode::BAD_GATEWAY, "orchestrator_refused"),
                    _ => (status, known_code(&code)),
                };
                ApiError {
                    status,
                    code,
                    message: format!("orchestrator: {message}"),
                    field,
                }
            }
            other => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "orchestrator_unreachable",
                other.to_string(),
            ),
        }
    }
}

/// The `'static` form of a code an orchestrator sent (unknown codes become
/// `orchestrator_error`, so a relayed body never carries arbitrary upstream text as a code).
fn known_code(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "invalid_field",
        "invalid_content",
        "invalid_json",
        "invalid_query",
        "not_found",
        "conflict",
        "already_exists",
        "in_use",
        "stale_fencing",
        "log_out_of_order",
        "log_sealed",
        "body_too_large",
        "unsupported_media_type",
        "store_unavailable",
        "shutting_down",
        "unsupported",
        "backend_error",
        "rate_limited",
    ];
    CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("orchestrator_error")
}

// ---- extractors ------------------------------------------------------------------------------

/// Largest request body accepted (bytes).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

// ---- extractors ---------------------------------------------------------------------------------

/// A path parameter extractor whose rejections (e.g. invalid UTF-8 in a percent-encoded
/// segment) are JSON errors naming the path, like every other error of this API.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::invalid("path", e.body_text()))
    }
}

/// A JSON body whose errors say which field is wrong and why (400 for malformed JSON, 422 for
/// missing, unknown or invalid fields, 413 when too large, 415 for another content type).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_owned())
}

/// Parses a JSON body, naming the failing field in the error. Every request body of this API is
/// a JSON object; an array in its place is refused (serde would otherwise read it positionally).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid(
            "body",
            "expected a JSON object, found an array",
        ));
    }
    // The common case, a valid body, needs no path tracking; a body that fails is parsed once
    // more with it, to name the field.
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let names_field =
                    msg.starts_with("missing field") || msg.starts_with("unknown field");
                let field = if path == "." || path.is_empty() {
                    names_field
                        .then(|| backticked(&msg))
                        .flatten()
                        .unwrap_or_else(|| "body".into())
                } else if msg.starts_with("missing field") {
                    match backticked(&msg) {
                        Some(f) => format!("{path}.{f}"),
                        None => path,
                    }
                } else {
                    // Also for unknown fields: the path already ends with the unknown key.
                    path
                };
                ApiError::invalid(&field, msg)
            }
            // serde_json reports some type errors (a number where an enum is expected) as
            // syntax errors; when the document itself is valid JSON, it is the field's value.
            serde_json::error::Category::Syntax
                if !(path == "." || path.is_empty())
                    && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() =>
            {
                ApiError::invalid(&path, format!("invalid value: {msg}"))
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("request body is not valid JSON: {msg}"),
            ),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("trailing characters after the JSON body: {e}"),
        )
    })?;
    Ok(value)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Whether the request says `Content-Type: application/json` (parameters such as `charset`
/// allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads a request body within the route's limit ([`MAX_BODY_BYTES`] unless a server sets
/// another with `DefaultBodyLimit`), with JSON errors.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })
}

/// Like [`ApiJson`] for routes whose body is optional: no body (or only whitespace) is `None`;
/// anything else must be JSON, with the same errors.
#[derive(Debug, Clone)]
pub struct OptionalApiJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = is_json(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Self(None));
        }
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json (or send none)",
            ));
        }
        parse_json(&bytes).map(|v| Self(Some(v)))
    }
}

/// A query string whose errors come back as JSON.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}
