//! The local `/healthz` (JSON status) and `/metrics` (Prometheus text) endpoints.

use crate::status::Status;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

/// The router.
pub fn router(status: Arc<Status>) -> Router {
    let s1 = status.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let snapshot = s1.snapshot();
                async move {
                    let healthy = snapshot.devices.values().all(|d| d.ok);
                    let code = if healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        code,
                        axum::Json(serde_json::json!({
                            "status": if healthy { "ok" } else { "degraded" },
                            "detail": snapshot,
                        })),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = status.metrics();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response()
                }
            }),
        )
}
