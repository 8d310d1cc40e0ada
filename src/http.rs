//! The operator's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process serves),
//! `/readyz` (the watch caches are filled).
//!
//! `/readyz` never depends on holding the leader lease: a standby replica runs its watches and
//! is ready too, or a rolling `helm upgrade` would wait for ever on a new pod that cannot lead
//! while the old one still does.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

/// What the endpoints report from.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    /// Set once every watch cache has been filled.
    pub caches_ready: Arc<AtomicBool>,
}

impl Endpoints {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics, caches_ready: Arc::default() }
    }

    pub fn set_ready(&self) {
        self.caches_ready.store(true, Ordering::Release);
    }
}

/// The routes, for `axum::serve` (and for tests, as a tower service).
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(endpoints)
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Endpoints,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(endpoints)).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        endpoints.metrics.encode(),
    )
}

async fn ready(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    if endpoints.caches_ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready: watch caches filled\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the watch caches are still being filled\n")
    }
}
