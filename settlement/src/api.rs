//! The REST API (axum): readings in, statements, balances, ledger, token operations,
//! quarantine, envelope compliance, alerts and measured flows, server-sent events, health,
//! metrics and the OpenAPI document.
//!
//! Errors are `{"code": "snake_case", "message": "human sentence"}` with a 4xx/5xx status;
//! storage details are logged, never sent to clients.

use crate::service::{Service, ServiceError, Submission};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use gridmesh_protocol::api::settlement::{QuarantineAccepted, QuarantineStatus};
use gridmesh_protocol::signing::SignedEnvelope;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The core.
    pub service: Arc<Service>,
    /// The operator's bearer token (`None` = operator endpoints disabled).
    pub operator_token: Option<String>,
    /// Ends open event streams on shutdown (so graceful shutdown does not wait for them).
    pub stop: tokio_util::sync::CancellationToken,
}

/// An HTTP error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

/// The JSON body of every error answer.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(inner) => {
                tracing::error!(error = %inner, "storage error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the settlement database is unavailable; nothing was recorded, retry later",
                )
            }
            ServiceError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            ServiceError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            ServiceError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/readings", post(post_readings))
        .route("/statements", get(get_statements))
        .route("/balances/{participant}", get(get_balances))
        .route("/tokens/transfer", post(post_transfer))
        .route("/tokens/retire", post(post_retire))
        .route("/ledger/blocks", get(get_blocks))
        .route("/ledger/blocks/{height}", get(get_block))
        .route("/ledger/entries/{hash}", get(get_entry))
        .route("/readings/{digest}", get(get_reading))
        .route("/quarantine", get(get_quarantine))
        .route("/quarantine/{id}/accept", post(post_accept))
        .route("/compliance", get(get_compliance))
        .route("/compliance/alerts", get(get_alerts))
        .route("/flows", get(get_flows))
        .route("/events", get(get_events))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(get_metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(state)
}

async fn post_readings(State(s): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body must be a JSON array of signed envelopes: {e}"),
        )
    })?;
    let subs = items
        .iter()
        .map(|v| Submission {
            source: "rest".into(),
            raw: serde_json::to_vec(v).expect("a parsed value serialises"),
        })
        .collect();
    let outcomes = s.service.ingest(subs).await?;
    Ok(Json(outcomes).into_response())
}

#[derive(Deserialize)]
struct StatementQuery {
    participant: Option<String>,
    interval: Option<String>,
}

async fn get_statements(
    State(s): State<AppState>,
    Query(q): Query<StatementQuery>,
) -> ApiResult<Response> {
    let list = s
        .service
        .statements(q.participant.as_deref(), q.interval.as_deref())
        .await?;
    Ok(Json(list).into_response())
}

async fn get_balances(State(s): State<AppState>, Path(p): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.service.balances(&p).await?).into_response())
}

fn envelope(body: &[u8]) -> ApiResult<SignedEnvelope> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body must be a signed envelope {{payload, signature, public_key}}: {e}"),
        )
    })
}

async fn post_transfer(State(s): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let r = s.service.transfer(envelope(&body)?).await?;
    let status = if r.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(r)).into_response())
}

async fn post_retire(State(s): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let r = s.service.retire(envelope(&body)?).await?;
    let status = if r.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(r)).into_response())
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn get_blocks(State(s): State<AppState>, Query(q): Query<Limit>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(s.service.blocks(limit).await?).into_response())
}

async fn get_block(State(s): State<AppState>, Path(h): Path<i64>) -> ApiResult<Response> {
    match s.service.block(h).await? {
        Some(b) => Ok(Json(b).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no block at height {h}"),
        )),
    }
}

async fn get_entry(State(s): State<AppState>, Path(hash): Path<String>) -> ApiResult<Response> {
    match s.service.entry(&hash).await? {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no ledger entry with hash {hash}"),
        )),
    }
}

async fn get_reading(State(s): State<AppState>, Path(digest): Path<String>) -> ApiResult<Response> {
    match s.service.reading_by_digest(&digest).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no stored reading whose signed payload has SHA-256 {digest}"),
        )),
    }
}

async fn get_quarantine(State(s): State<AppState>, Query(q): Query<Limit>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(s.service.quarantine(limit).await?).into_response())
}

/// Checks the operator's bearer token. Without a configured token, `required` endpoints are
/// disabled (403) and the others are open.
fn operator(s: &AppState, headers: &HeaderMap, required: bool) -> ApiResult<()> {
    let Some(expected) = &s.operator_token else {
        if !required {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_disabled",
            "no operator token is configured; set operator_token in the settlement config",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(expected.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "operator endpoints need `Authorization: Bearer <operator token>`",
        ));
    }
    Ok(())
}

async fn post_accept(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    operator(&s, &headers, true)?;
    let released = s.service.accept_quarantined(id).await?;
    Ok(Json(QuarantineAccepted {
        id,
        status: QuarantineStatus::Accepted,
        mints_released: released as u64,
    })
    .into_response())
}

#[derive(Deserialize)]
struct PageQuery {
    since: Option<String>,
    limit: Option<i64>,
    participant: Option<String>,
}

fn since(q: &PageQuery) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
    match q.since.as_deref().filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("since `{v}` is not an RFC 3339 time such as 2026-06-21T12:00:00Z"),
                )
            }),
    }
}

async fn get_compliance(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    // Per-home figures: operator only when an operator token is configured.
    operator(&s, &headers, false)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let who = q.participant.as_deref().filter(|p| !p.is_empty());
    Ok(Json(s.service.compliance(since(&q)?, limit, who).await?).into_response())
}

async fn get_alerts(State(s): State<AppState>, Query(q): Query<Limit>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    Ok(Json(s.service.envelope_alerts(limit).await?).into_response())
}

async fn get_flows(State(s): State<AppState>, Query(q): Query<PageQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(s.service.flows(since(&q)?, limit).await?).into_response())
}

async fn get_events(
    State(s): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(s.service.subscribe()).filter_map(|e| {
        let e = e.ok()?;
        let data = serde_json::to_string(&e).ok()?;
        Some(Ok(SseEvent::default().event(e.name()).data(data)))
    });
    let stream = futures::StreamExt::take_until(stream, s.stop.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn get_metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.service.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> serde_json::Value {
    let op = |summary: &str| json!({"summary": summary, "responses": {"200": {"description": "OK"}, "4XX": {"description": "{code, message}"}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "gridmesh settlement", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/readings": {"post": op("Submit a JSON array of SignedEnvelope of Reading; per item {key, status: accepted|duplicate|quarantined, code, reason}; 200 when every item was durably recorded")},
            "/statements": {"get": op("Statements per participant and interval (query: participant, interval = key like 2026-06-21T12:00:00Z/15 or its start)")},
            "/balances/{participant}": {"get": op("Token holdings with provenance (origin mint: interval, seller, buyer, source, price, reading digests)")},
            "/tokens/transfer": {"post": op("Apply a holder-signed TokenTransfer envelope; 201 with {entry, lot}")},
            "/tokens/retire": {"post": op("Apply a holder-signed TokenRetire envelope; 201 with {entry, lot}")},
            "/ledger/blocks": {"get": op("Blocks, newest first (query: limit)")},
            "/ledger/blocks/{height}": {"get": op("One block: header fields, hash, authority signature, entry hashes")},
            "/ledger/entries/{hash}": {"get": op("One ledger entry (body and its exact hashed bytes as body_base64) with its Merkle inclusion proof")},
            "/readings/{digest}": {"get": op("A stored signed reading by the SHA-256 of its payload (as named in token provenance): the envelope verbatim, the decoded reading and its status")},
            "/quarantine": {"get": op("Quarantined, flagged and late readings with reasons, newest first")},
            "/quarantine/{id}/accept": {"post": op("Operator (Bearer token): accept a reading flagged as implausible; withheld mints are released")},
            "/compliance": {"get": op("Operator (Bearer token, when one is configured): per home and interval, metered export/import against the operating envelope, Vec<EnvelopeCompliance>, oldest first (query: since = RFC 3339 interval start, limit = at most this many intervals (default 100, max 1000), participant)")},
            "/compliance/alerts": {"get": op("Public: homes over their operating envelope in two or more consecutive settled intervals, Vec<EnvelopeAlert>, newest first; active = the run includes the latest settled interval (query: limit)")},
            "/flows": {"get": op("Public aggregates: per branch of each result's network and the root last, the metered export/import of the homes enrolled below it from verified readings, Vec<MeasuredFlows>, for intervals that have ended, oldest first (query: since = RFC 3339 interval start, limit)")},
            "/events": {"get": op("Server-sent events: settled, block, quarantined, envelope_alert (a home over its envelope in a second consecutive settled interval)")},
            "/healthz": {"get": op("Liveness")},
            "/metrics": {"get": op("Prometheus text metrics")},
            "/openapi.json": {"get": op("This document")}
        }
    })
}
