//! The router: `/api`, the embedded page and assets, and the security headers.

use crate::api;
use crate::assets;
use crate::auth;
use crate::pool;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;

/// Content-Security-Policy of every dashboard response, but for `frame-src`, which names the
/// editor origin (see [`csp`]).
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'";

/// The dashboard's policy for a request: [`CSP`] plus `frame-src` the editor origin only (the
/// dashboard itself serves nothing to frame).
pub fn csp(editor_origin: Option<&str>) -> String {
    format!("{CSP}; frame-src {}", editor_origin.unwrap_or("'none'"))
}

async fn security_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let editor = crate::editor_origin::editor_origin_for(&state, req.headers());
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp(editor.as_deref())) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    resp
}

/// `GET /metrics`: needs `Authorization: Bearer <the orchestrator's admin token>` (what a
/// Prometheus scraping the orchestrator already holds); browsers' sessions do not count.
async fn dashboard_metrics(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    axum::Extension(m): axum::Extension<std::sync::Arc<guildnet_core::metrics::HttpMetrics>>,
) -> Response {
    use axum::response::IntoResponse;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(t) if guildnet_core::token::equals(t.trim(), s.orchestrator_token.expose()) => {
            guildnet_core::metrics::response(m.encode())
        }
        _ => crate::ApiError::unauthorized(
            "metrics need Authorization: Bearer <the orchestrator's admin token>",
        )
        .into_response(),
    }
}

/// The `/api` routes (relative paths, nested under `/api`).
fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(api::health))
        .route("/session", get(api::session))
        .route("/login", post(api::login))
        .route("/logout", post(api::logout))
        .route("/setup", get(api::setup_status))
        .route("/setup/skip", post(api::setup_skip))
        .route("/setup/stream", post(api::setup_stream))
        .route("/orgs", get(api::list_orgs).post(api::create_org))
        .route("/orgs/{name}", get(api::get_org).delete(api::delete_org))
        .route(
            "/orgs/{name}/kubeconfig",
            put(api::put_kubeconfig).get(api::get_kubeconfig),
        )
        .route(
            "/orgs/{name}/talosconfig",
            put(api::put_talosconfig).get(api::get_talosconfig),
        )
        .route(
            "/orgs/{name}/pool",
            get(pool::get_pool)
                .put(pool::put_pool)
                .delete(pool::delete_pool),
        )
        .route("/orgs/{name}/provision/stream", post(api::provision_stream))
        .route("/schedule", post(api::schedule))
        .route("/tasks", get(api::list_tasks))
        .route("/tasks/{id}", get(api::get_task))
        .route("/tasks/{id}/logs", get(api::task_logs))
        .route("/tasks/{id}/logs/stream", get(api::task_log_stream))
        .route("/tasks/{id}/cancel", post(api::cancel_task))
        .route("/artifacts", get(api::artifacts))
        .route("/agents", get(api::list_agents))
        .route("/agents/{name}", get(api::get_agent))
        .route("/agents/{name}/logs/stream", get(api::agent_log_stream))
        .route("/agents/{name}/editor", post(api::open_editor))
        .route("/agents/{name}/editor/close", post(api::close_editor))
        .route("/events", get(api::events))
        .fallback(api::api_not_found)
        .method_not_allowed_fallback(|| async {
            crate::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
}

/// The whole dashboard app: `/api`, the page and its assets. Editors are not served here but
/// from the editor origin ([`crate::editor_origin::router`]). Add routes with
/// `router(state.clone()).merge(...)` or by extending this function; the session guard covers
/// `/api/*` for any route added before the layers below.
pub fn router(state: AppState) -> Router {
    let metrics = std::sync::Arc::new(guildnet_core::metrics::HttpMetrics::new(
        "guildnet_dashboard",
    ));
    Router::new()
        .nest("/api", api_routes())
        .route("/", get(assets::index))
        .route("/login/link", get(api::login_link))
        .route("/assets/{file}", get(assets::asset))
        // Request counts and times by route (no ids, no secrets), for the admin token.
        .route("/metrics", get(dashboard_metrics))
        .route_layer(middleware::from_fn_with_state(
            metrics.clone(),
            guildnet_core::metrics::track,
        ))
        .layer(axum::Extension(metrics))
        .fallback(assets::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(DefaultBodyLimit::max(
            guildnet_core::httpapi::MAX_BODY_BYTES,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}
