//! The local `/healthz` (JSON status) and `/metrics` (Prometheus text) endpoints, on the
//! runtime's HTTP kit: the standard trace, timeout, body-limit and concurrency layers, and
//! `{code, message}` for anything else.

use crate::status::{Snapshot, Status};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use gridmesh_runtime::http::{ApiError, ApiJson, HttpLimits, layers};
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
    let router = Router::new()
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
                    (code, ApiJson(health))
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
        );
    layers(
        router.fallback(|| async {
            ApiError::not_found("the gateway serves only /healthz and /metrics")
        }),
        &HttpLimits::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::api::market::ErrorBody;

    #[tokio::test]
    async fn healthz_metrics_and_json_errors() {
        let status = Arc::new(Status::default());
        status.device_polled("meter", None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(status)).await.unwrap() });
        let http = reqwest::Client::new();
        let health = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let body = health.text().await.unwrap();
        assert!(body.starts_with(r#"{"status":"ok","detail":{"#), "{body}");
        assert!(body.contains(r#""meter":{"ok":true"#), "{body}");
        let metrics = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(metrics.text().await.unwrap().contains("gridmesh_gateway_"));
        let missing = http
            .get(format!("http://{addr}/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let error: ErrorBody = missing.json().await.unwrap();
        assert_eq!(error.code, "not_found");
        assert!(error.message.contains("/healthz"), "{}", error.message);
    }
}
