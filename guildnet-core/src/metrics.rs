//! Prometheus metrics for GuildNet's servers (`GET /metrics`, text format), through the
//! `prometheus-client` crate.
//!
//! [`HttpMetrics`] counts requests by method, matched route (the route template, never the raw
//! path, so ids do not explode the label space) and status, and times them per route. A server
//! adds its own metrics to [`HttpMetrics::registry_mut`] before serving, and may refresh gauges
//! just before encoding (the orchestrator sets its task counts by status at scrape time).
//! Labels never carry secrets, org names or ids.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// Labels of a counted request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method: one of the standard methods, or `other` (a client can send any token as a
    /// method; each would otherwise be a new series kept for ever).
    pub method: &'static str,
    /// The matched route template (`/tasks/{id}`), or `unmatched`.
    pub route: String,
    /// Status code.
    pub status: u16,
}

/// Labels of a timed route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template.
    pub route: String,
}

/// Labels of a per-status gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// A task status.
    pub status: String,
}

/// A server's registry with its HTTP request metrics.
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl HttpMetrics {
    /// A registry whose metric names start with `prefix` (`guildnet_orchestrator`).
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~8 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 15))
        });
        let in_flight = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request time until the response head, by route",
            duration.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled (streams included)",
            in_flight.clone(),
        );
        let build = Family::<Vec<(String, String)>, Gauge>::default();
        build
            .get_or_create(&vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )])
            .set(1);
        registry.register("build_info", "The running version", build);
        Self {
            registry,
            requests,
            duration,
            in_flight,
        }
    }

    /// The registry, to add a server's own metrics before it serves.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Records one request.
    fn record(&self, method: &str, route: &str, status: u16, secs: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(secs);
    }
}

/// The label of a request method: the standard methods by name, anything else `other`.
fn method_label(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("other")
}

/// Middleware: counts and times every request (install with
/// `axum::middleware::from_fn_with_state(metrics, track)`).
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method().as_str());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    m.in_flight.inc();
    let resp = next.run(req).await;
    m.in_flight.dec();
    m.record(
        method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// A `GET /metrics` response with the Prometheus text content type.
pub fn response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_template() {
        let m = HttpMetrics::new("guildnet_test");
        m.record("GET", "/tasks/{id}", 200, 0.002);
        m.record("GET", "/tasks/{id}", 200, 0.003);
        m.record("POST", "/schedule", 422, 0.001);
        let text = m.encode();
        assert!(
            text.contains(
                r#"guildnet_test_http_requests_total{method="GET",route="/tasks/{id}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"status="422""#), "{text}");
        assert!(text.contains("guildnet_test_http_request_duration_seconds_bucket"));
        assert!(
            text.contains(r#"guildnet_test_build_info{version=""#),
            "{text}"
        );
    }

    #[test]
    fn made_up_methods_share_one_series() {
        let m = HttpMetrics::new("guildnet_test");
        for i in 0..100 {
            m.record(&format!("X{i}"), "unmatched", 405, 0.001);
        }
        m.record("DELETE", "/tasks/{id}", 204, 0.001);
        let text = m.encode();
        assert!(
            text.contains(
                r#"guildnet_test_http_requests_total{method="other",route="unmatched",status="405"} 100"#
            ),
            "{text}"
        );
        assert!(!text.contains("X1"), "{text}");
        assert!(text.contains(r#"method="DELETE""#), "{text}");
    }
}
