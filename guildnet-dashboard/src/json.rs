//! Strict JSON request bodies: `application/json` only, unknown fields refused, every failure a
//! 400 JSON error naming the field. Path parameters too ([`ApiPath`]): a rejected path (bad
//! percent-encoding, invalid UTF-8) is a JSON error, never axum's plain-text one.

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// Path parameters whose rejection is a JSON [`ApiError`] naming `path`.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| ApiError::invalid("path", e.body_text()))
    }
}

/// Largest JSON body accepted (kubeconfigs included).
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// A JSON body parsed strictly (see the module docs).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// Parses `bytes` as `T`, naming the failing field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path.is_empty() || path == "." {
                    backticked(&msg).unwrap_or_else(|| "body".into())
                } else {
                    path
                };
                ApiError::invalid(&field, format!("invalid {field}: {msg}"))
            }
            _ => ApiError::bad_json(format!("request body is not valid JSON: {msg}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_json(format!("trailing data after the JSON body: {e}")))?;
    Ok(value)
}

fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_owned())
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!("request body is larger than {MAX_JSON_BYTES} bytes"),
                    )
                } else {
                    ApiError::bad_json(format!("cannot read the request body: {e}"))
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        name: String,
    }

    #[test]
    fn errors_name_fields_and_are_400() {
        let e = parse::<Req>(b"{").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        let e = parse::<Req>(br#"{"name":"a","x":1}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.field.as_deref(), Some("x"), "{e:?}");
        let e = parse::<Req>(br#"{}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = parse::<Req>(br#"{"name":1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        assert!(parse::<Req>(br#"{"name":"a"} x"#).is_err());
        assert_eq!(parse::<Req>(br#"{"name":"a"}"#).unwrap().name, "a");
    }
}
