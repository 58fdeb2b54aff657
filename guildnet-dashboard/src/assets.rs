//! The page and its static assets, embedded in the binary (no build step).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use guildnet_core::httpapi::ApiPath;

/// The single page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The script.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The style sheet.
pub const APP_CSS: &str = include_str!("../assets/app.css");

fn with_type(body: &'static str, ctype: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`.
pub async fn index() -> Response {
    with_type(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /assets/{file}`.
pub async fn asset(ApiPath(file): ApiPath<String>) -> Response {
    match file.as_str() {
        "app.js" => with_type(APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => with_type(APP_CSS, "text/css; charset=utf-8"),
        _ => not_found().await,
    }
}

/// Anything else.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}
