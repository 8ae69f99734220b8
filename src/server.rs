//! The HTTP endpoints: `/healthz` (the process is alive), `/readyz` (config loaded, scheduler running,
//! Kubernetes caches synced; 503 until then) and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The readiness conditions, each set by the part that fulfils it.
#[derive(Default)]
pub struct Health {
    pub config_loaded: AtomicBool,
    pub caches_synced: AtomicBool,
    pub scheduler_running: AtomicBool,
}

impl Health {
    fn unmet(&self) -> Vec<&'static str> {
        [
            (&self.config_loaded, "config not loaded"),
            (&self.caches_synced, "Kubernetes pod caches not synced"),
            (&self.scheduler_running, "scheduler not running"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Acquire))
        .map(|(_, why)| why)
        .collect()
    }

    pub fn set(flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Metrics,
}

pub fn router(health: Arc<Health>, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { health, metrics })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let unmet = state.health.unmet();
    if unmet.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", unmet.join(", ")),
        )
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let chunks = state
        .metrics
        .exposition()
        .map(Ok::<_, std::convert::Infallible>);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        Body::from_stream(futures::stream::iter(chunks)),
    )
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(health, metrics))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
