//! The local `/healthz` (JSON status) and `/metrics` (Prometheus text) endpoints.

use crate::status::{Snapshot, Status};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use std::sync::Arc;

/// The `/healthz` answer: `ok` when every device answered its last poll, else `degraded`
/// (served with 503), and the full status.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// Everything the gateway reports.
    pub detail: Snapshot,
}

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
                    let health = Health {
                        status: if healthy { "ok" } else { "degraded" },
                        detail: snapshot,
                    };
                    (code, axum::Json(health))
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
