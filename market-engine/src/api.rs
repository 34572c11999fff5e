//! The REST API (axum): the shared market contract, JSON errors `{"code","message"}`.
//!
//! One error type ([`MarketError`]) becomes every error response; database details are logged,
//! never sent. Bodies are parsed here rather than by axum's extractor so that malformed JSON
//! gets the same error shape as everything else.
//!
//! Who may call what: reads are public (results, envelopes and the market key are not secret);
//! writes of registrations, the topology and limit overrides need the operator's bearer token;
//! orders and cancellations are authorised by their participant's signature.

use crate::book::depth;
use crate::error::MarketError;
use crate::service::Market;
use crate::store::StoredOrder;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use gridmesh_protocol::api::market::{
    BookDepth, ErrorBody, Health, MarketStatus, OrderAccepted, OrderCancelled,
};
use gridmesh_protocol::envelope::{MarketKey, SignedResult};
use gridmesh_protocol::grid::{LimitOverride, Network};
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::{GatewayId, Interval, ParticipantId, SignedEnvelope};
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The market.
    pub market: Arc<Market>,
    /// Ends SSE streams on shutdown.
    pub cancel: CancellationToken,
}

impl IntoResponse for MarketError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status >= 500 && !matches!(self, MarketError::ShuttingDown) {
            tracing::error!(error = %self, "request failed");
            "the market could not complete the request; the operator's log has the details".into()
        } else {
            self.to_string()
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                code: code.to_owned(),
                message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, MarketError>;

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes, what: &str) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| MarketError::InvalidRequest(format!("the body is not a valid {what}: {e}")))
}

fn operator(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(MarketError::OperatorTokenMissing)?;
    let expected = state
        .market
        .config
        .operator_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or(MarketError::OperatorTokenInvalid)?;
    // Compare in constant time with respect to the content.
    let same = sent.len() == expected.len()
        && sent
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(MarketError::OperatorTokenInvalid)
    }
}

fn interval_at(state: &AppState, start: &str) -> ApiResult<Interval> {
    Interval::parse(start, state.market.config.interval_minutes.minutes().into())
        .map_err(|e| MarketError::InvalidRequest(e.to_string()))
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/participants",
            post(post_participant).get(get_participants),
        )
        .route("/gateways", post(post_gateway).get(get_gateways))
        .route("/gateways/{id}", get(get_gateway))
        .route("/orders", post(post_order).get(get_orders))
        .route("/orders/cancel", post(post_cancel))
        .route("/intervals/{start}/book", get(get_book))
        .route("/intervals/{start}/result", get(get_result))
        .route("/intervals/{start}/result/signed", get(get_signed_result))
        .route("/results", get(get_results))
        .route("/results/signed", get(get_signed_results))
        .route("/market-key", get(get_market_key))
        .route("/envelopes/{gateway}", get(get_envelopes))
        .route("/limits", post(post_limit).get(get_limits))
        .route("/limits/{id}", delete(delete_limit))
        .route("/topology", get(get_topology).put(put_topology))
        .route("/status", get(get_status))
        .route("/events", get(get_events))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { MarketError::NotFound("no such endpoint; see /openapi.json".into()) })
        .with_state(state)
}

async fn post_participant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    operator(&s, &headers)?;
    let p: Participant = parse_body(&body, "participant")?;
    s.market.register_participant(p.clone()).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn get_participants(State(s): State<AppState>) -> Json<Vec<Participant>> {
    Json(s.market.participants())
}

async fn post_gateway(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    operator(&s, &headers)?;
    let g: GatewayEnrollment = parse_body(&body, "gateway enrollment")?;
    s.market.enroll_gateway(g.clone()).await?;
    Ok((StatusCode::CREATED, Json(g)))
}

async fn get_gateways(State(s): State<AppState>) -> ApiResult<Json<Vec<GatewayEnrollment>>> {
    Ok(Json(s.market.store.gateways().await?))
}

async fn get_gateway(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<GatewayEnrollment>> {
    let id = GatewayId::new(id).map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    s.market
        .store
        .gateways()
        .await?
        .into_iter()
        .find(|g| g.gateway == id)
        .map(Json)
        .ok_or_else(|| MarketError::NotFound(format!("gateway `{id}` is not enrolled")))
}

async fn post_order(State(s): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let envelope: SignedEnvelope = parse_body(&body, "signed envelope")?;
    let order_id = s.market.submit_order(envelope).await?;
    Ok((StatusCode::CREATED, Json(OrderAccepted { order_id })))
}

#[derive(Deserialize)]
struct OrderQuery {
    participant: Option<String>,
    interval: Option<String>,
}

async fn get_orders(
    State(s): State<AppState>,
    Query(q): Query<OrderQuery>,
) -> ApiResult<Json<Vec<StoredOrder>>> {
    let participant = q
        .participant
        .filter(|p| !p.is_empty())
        .map(ParticipantId::new)
        .transpose()
        .map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    let interval = q
        .interval
        .filter(|i| !i.is_empty())
        .map(|i| interval_at(&s, &i))
        .transpose()?;
    let orders = s
        .market
        .store
        .orders(participant.as_ref(), interval.as_ref(), false)
        .await?;
    Ok(Json(orders))
}

async fn post_cancel(State(s): State<AppState>, body: Bytes) -> ApiResult<Json<OrderCancelled>> {
    let envelope: SignedEnvelope = parse_body(&body, "signed envelope")?;
    let order_id = s.market.cancel_order(envelope).await?;
    Ok(Json(OrderCancelled {
        order_id,
        cancelled: true,
    }))
}

async fn get_book(
    State(s): State<AppState>,
    Path(start): Path<String>,
) -> ApiResult<Json<BookDepth>> {
    let interval = interval_at(&s, &start)?;
    let orders = s.market.store.orders(None, Some(&interval), true).await?;
    let nodes = depth(
        orders
            .iter()
            .map(|o| (o.node.as_str(), o.side, o.quantity_wh, o.limit_price)),
    );
    Ok(Json(BookDepth {
        interval,
        orders: orders.len(),
        nodes,
    }))
}

/// A JSON response of exact, already serialised bytes.
fn raw_json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn get_result(State(s): State<AppState>, Path(start): Path<String>) -> ApiResult<Response> {
    let interval = interval_at(&s, &start)?;
    s.market
        .store
        .result_row(&interval)
        .await?
        .map(|row| raw_json(row.body))
        .ok_or_else(|| MarketError::NotCleared(interval.key()))
}

async fn get_signed_result(
    State(s): State<AppState>,
    Path(start): Path<String>,
) -> ApiResult<Json<SignedResult>> {
    let interval = interval_at(&s, &start)?;
    s.market
        .signed_result(&interval)
        .await?
        .map(Json)
        .ok_or_else(|| MarketError::NotCleared(interval.key()))
}

#[derive(Deserialize)]
struct ResultsQuery {
    since: Option<String>,
    limit: Option<i64>,
}

impl ResultsQuery {
    /// `(since as Unix seconds, limit)`: everything by default, at most 1000 per page.
    fn page(self) -> ApiResult<(i64, i64)> {
        let since = match self.since.filter(|v| !v.is_empty()) {
            Some(start) => chrono::DateTime::parse_from_rfc3339(&start)
                .map_err(|_| {
                    MarketError::InvalidRequest(format!(
                        "since `{start}` is not an RFC 3339 time such as 2026-06-21T12:00:00Z"
                    ))
                })?
                .timestamp(),
            None => i64::MIN,
        };
        Ok((since, self.limit.unwrap_or(100).clamp(1, 1000)))
    }
}

async fn get_results(
    State(s): State<AppState>,
    Query(q): Query<ResultsQuery>,
) -> ApiResult<Response> {
    let (since, limit) = q.page()?;
    let rows = s.market.store.result_rows_since(since, limit).await?;
    // The stored bodies, byte for byte (the bytes the market signed).
    let mut body = String::with_capacity(rows.iter().map(|r| r.body.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&row.body);
    }
    body.push(']');
    Ok(raw_json(body))
}

async fn get_signed_results(
    State(s): State<AppState>,
    Query(q): Query<ResultsQuery>,
) -> ApiResult<Json<Vec<SignedResult>>> {
    let (since, limit) = q.page()?;
    Ok(Json(s.market.signed_results(since, limit).await?))
}

async fn get_market_key(State(s): State<AppState>) -> Json<MarketKey> {
    Json(MarketKey {
        zone: s.market.config.zone.clone(),
        public_key: s.market.public_key(),
    })
}

async fn get_envelopes(
    State(s): State<AppState>,
    Path(gateway): Path<String>,
) -> ApiResult<Json<Vec<SignedEnvelope>>> {
    let gateway =
        GatewayId::new(gateway).map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    Ok(Json(s.market.current_envelopes(&gateway).await?))
}

async fn post_limit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    operator(&s, &headers)?;
    let o: LimitOverride = parse_body(&body, "limit override")?;
    let stored = s.market.add_override(o).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

async fn get_limits(State(s): State<AppState>) -> ApiResult<Json<Vec<LimitOverride>>> {
    Ok(Json(s.market.store.overrides().await?))
}

async fn delete_limit(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    operator(&s, &headers)?;
    let id: i64 = id.parse().map_err(|_| {
        MarketError::InvalidRequest(format!("`{id}` is not an override id; see GET /limits"))
    })?;
    if s.market.store.delete_override(id).await? {
        tracing::info!(id, "limit override deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(MarketError::NotFound(format!(
            "there is no limit override {id}; see GET /limits"
        )))
    }
}

async fn get_topology(State(s): State<AppState>) -> Json<Network> {
    Json(s.market.topology().network().clone())
}

async fn put_topology(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    operator(&s, &headers)?;
    let network: Network = parse_body(&body, "network")?;
    s.market.set_topology(network.clone()).await?;
    Ok(Json(network))
}

async fn get_status(State(s): State<AppState>) -> Json<MarketStatus> {
    let m = &s.market;
    let next = m.next_open();
    Json(MarketStatus {
        zone: m.config.zone.clone(),
        interval_minutes: m.config.interval_minutes.minutes(),
        gate_closure_lead_seconds: m.config.gate_closure_lead_seconds,
        next_open_interval: next,
        next_gate_closure: next.gate_closure(m.config.lead()),
        clock: m.clock.now(),
        clock_speed: m.clock.speed(),
        pricing: m.config.pricing,
    })
}

async fn get_events(State(s): State<AppState>) -> impl IntoResponse {
    let rx = s.market.subscribe();
    let stream = futures::stream::unfold((rx, s.cancel.clone()), |(mut rx, cancel)| async move {
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = cancel.cancelled() => return None,
            };
            match next {
                Ok(result) => {
                    let data = serde_json::to_string(&*result).expect("a result serialises");
                    let event = Event::default().event("result").data(data);
                    return Some((Ok::<_, std::convert::Infallible>(event), (rx, cancel)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn healthz(State(s): State<AppState>) -> ApiResult<Json<Health>> {
    sqlx::query("SELECT 1")
        .execute(&s.market.store.database().pool)
        .await
        .map_err(|e| MarketError::Storage(e.into()))?;
    Ok(Json(Health::ok()))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.market.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}
