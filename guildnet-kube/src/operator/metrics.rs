//! The operator's counters and the small HTTP server that exposes them (`/metrics`, Prometheus
//! text) with `/healthz`. This module owns the counters' names and format; it must not reach
//! the Kubernetes API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters exposed on /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Reconciles that failed.
    pub reconcile_errors: AtomicU64,
    /// Objects applied (Secret, Deployment, Service).
    pub applies: AtomicU64,
    /// Status writes.
    pub status_writes: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE guildnet_operator_reconciles_total counter\nguildnet_operator_reconciles_total {}\n\
             # TYPE guildnet_operator_reconcile_errors_total counter\nguildnet_operator_reconcile_errors_total {}\n\
             # TYPE guildnet_operator_applies_total counter\nguildnet_operator_applies_total {}\n\
             # TYPE guildnet_operator_status_writes_total counter\nguildnet_operator_status_writes_total {}\n",
            g(&self.reconciles),
            g(&self.reconcile_errors),
            g(&self.applies),
            g(&self.status_writes)
        )
    }
}

/// Serves `/metrics` (Prometheus text) and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    guildnet_core::http_server::serve(
        listener,
        app,
        &guildnet_core::http_server::ServerOptions::default(),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.reconciles);
        Metrics::inc(&m.reconciles);
        Metrics::inc(&m.applies);
        let text = m.render();
        assert!(
            text.contains("guildnet_operator_reconciles_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("guildnet_operator_applies_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("guildnet_operator_reconcile_errors_total 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE guildnet_operator_status_writes_total counter\n"));
    }
}
