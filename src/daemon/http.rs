//! The metrics and health endpoints: an axum server on `[metrics] listen` with `/metrics`
//! (Prometheus text), `/healthz` (the process answers) and `/readyz` (see [`super::health`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::health::SharedHealth;
use super::lock;
use crate::app::Config;

/// Default `[metrics] listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// How long a stopping server may take to finish the requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `[metrics] listen`, or its default.
pub(super) fn listen_address(config: &Config) -> String {
    config
        .metrics
        .as_ref()
        .map(|m| m.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string())
}

/// The server task, serving until [`HttpServer::stop`].
pub(super) struct HttpServer {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl HttpServer {
    /// Serves the endpoints on a bound listener.
    pub(super) fn spawn(listener: TcpListener, health: SharedHealth) -> HttpServer {
        let stop = CancellationToken::new();
        let app = router(health);
        let cancelled = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(cancelled)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics/health server failed");
            }
        });
        HttpServer { task, stop }
    }

    /// Stops gracefully, or abandons the requests still in flight after [`STOP_GRACE`].
    pub(super) async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

fn router(health: SharedHealth) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(health)
}

async fn metrics_handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        crate::telemetry::render(),
    )
}

async fn readyz_handler(State(health): State<SharedHealth>) -> impl IntoResponse {
    let verdict = lock(&health).readiness(Utc::now());
    match verdict {
        Ok(body) => (StatusCode::OK, body),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
    }
}
