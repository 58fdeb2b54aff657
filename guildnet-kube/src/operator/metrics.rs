//! The operator's counters and the small HTTP server that exposes them (`/metrics`, Prometheus
//! text) with `/healthz`. This module owns the counters' names and format; it must not reach
//! the Kubernetes API.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Counters exposed on /metrics (`prometheus-client` counters: cheap to clone, shared).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles that failed.
    pub reconcile_errors: Counter,
    /// Objects applied (Secret, Deployment, Service).
    pub applies: Counter,
    /// Status writes.
    pub status_writes: Counter,
}

impl Metrics {
    /// Adds one to a counter.
    pub(crate) fn inc(counter: &Counter) {
        counter.inc();
    }

    /// The text exposition (OpenMetrics text, as the orchestrator's `/metrics`): every counter
    /// as `guildnet_operator_<name>_total`.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("guildnet_operator");
        registry.register("reconciles", "Reconciles run", self.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "applies",
            "Objects applied (Secret, Deployment, Service)",
            self.applies.clone(),
        );
        registry.register(
            "status_writes",
            "AgentTask status writes",
            self.status_writes.clone(),
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
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
                async move { guildnet_core::metrics::response(m.render()) }
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
        assert!(
            text.contains("# TYPE guildnet_operator_status_writes counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
