//! The operator's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process serves),
//! `/readyz` (the watch caches are filled), and `/sessions/{namespace}/{cluster}/{node}` (who is
//! on a node counted by the database probe, for `kubectl omero sessions`: [`sessions`]).
//!
//! `/readyz` never depends on holding the leader lease: a standby replica runs its watches and
//! is ready too, or a rolling `helm upgrade` would wait for ever on a new pod that cannot lead
//! while the old one still does.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

pub mod sessions;

/// What the endpoints report from.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    /// Set once every watch cache has been filled.
    pub caches_ready: Arc<AtomicBool>,
    /// What answers `/sessions/...`, set once the pod cache it reads is filled; until then the
    /// route answers 503.
    pub sessions: Arc<OnceLock<sessions::SessionLister>>,
}

impl Endpoints {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics, caches_ready: Arc::default(), sessions: Arc::default() }
    }

    /// Serves `/sessions/...` with `lister` from now on (the first lister set stays).
    pub fn serve_sessions(&self, lister: sessions::SessionLister) {
        let _ = self.sessions.set(lister);
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
        .route("/sessions/{namespace}/{cluster}/{node}", get(sessions::list))
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
