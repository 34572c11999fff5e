//! The REST API (axum): the shared market contract, JSON errors `{"code","message"}`.
//!
//! One error type ([`MarketError`]) becomes every error response; database details are logged,
//! never sent. Bodies are parsed here rather than by axum's extractor so that malformed JSON
//! gets the same error shape as everything else.
//!
//! Who may call what ([`crate::access`], and the table in market-engine/README.md): results,
//! prices, book depth, status, envelopes and the market key are public; enrolled gateways and
//! orders are household data (the household's signed request, the auditor or the operator);
//! registrations need the home's one-time enrolment token or the operator token and are
//! create-only (409 `conflict`); the topology and limit overrides need the operator token (the
//! auditor's answers 403 `forbidden`); orders and cancellations are authorised by their
//! participant's signature, and so is a key rotation (`POST /participants/{id}/key`, signed by
//! the key in force).

use crate::access::{Caller, ResultView};
use crate::book::depth;
use crate::error::MarketError;
use crate::metrics::OrderStages;
use crate::service::{Market, Registration};
use crate::store::StoredOrder;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use gridmesh_protocol::api::market::{
    BookDepth, ErrorBody, Health, MAX_ORDER_BATCH, MarketStatus, OrderAccepted, OrderBatch,
    OrderBatchAccepted, OrderBatchItem, OrderCancelled, OrderRecord, PublicResult,
};
use gridmesh_protocol::envelope::{MarketKey, SignedResult};
use gridmesh_protocol::grid::{LimitOverride, Network};
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::rotation::ParticipantWithKeys;
use gridmesh_protocol::{GatewayId, Interval, NodeId, ParticipantId, SignedEnvelope};
use gridmesh_runtime::http::{
    ApiError, ApiPath, ApiQuery, HttpLimits, check_bearer, layers, sse_from_broadcast,
};
use serde::Deserialize;
use std::sync::{Arc, LazyLock};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The market.
    pub market: Arc<Market>,
    /// Ends SSE streams on shutdown.
    pub cancel: CancellationToken,
}

impl From<MarketError> for ApiError {
    /// The runtime kit's error answer with the market's status and stable code; server errors
    /// (except shutting down) are logged with their details and answered with a generic
    /// sentence.
    fn from(error: MarketError) -> Self {
        let (status, code) = error.status_and_code();
        let message = if status >= 500 && !matches!(error, MarketError::ShuttingDown) {
            tracing::error!(%error, "request failed");
            "the market could not complete the request; the operator's log has the details".into()
        } else {
            error.to_string()
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for MarketError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

type ApiResult<T> = Result<T, MarketError>;

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes, what: &str) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| MarketError::InvalidRequest(format!("the body is not a valid {what}: {e}")))
}

/// Admits the operator: no `Authorization: Bearer …` header is 401 `operator_token_required`;
/// the auditor's token is 403 `forbidden` (it reads only); a wrong token, or none configured,
/// is 403 `operator_token_invalid`. The comparisons are the runtime kit's constant-time
/// [`check_bearer`].
fn operator(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if !bearer {
        return Err(MarketError::OperatorTokenMissing);
    }
    let config = &state.market.config;
    if let Some(auditor) = config.auditor_token.as_deref().filter(|t| !t.is_empty()) {
        let is_operator = config
            .operator_token
            .as_deref()
            .is_some_and(|op| check_bearer(headers, op).is_ok());
        if !is_operator && check_bearer(headers, auditor).is_ok() {
            return Err(MarketError::Forbidden(
                "the auditor token reads only; this change needs the operator token".into(),
            ));
        }
    }
    let expected = state
        .market
        .config
        .operator_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or(MarketError::OperatorTokenInvalid)?;
    check_bearer(headers, expected).map_err(|_| MarketError::OperatorTokenInvalid)
}

/// Identifies the caller of a `GET` (a signed request covers an empty body).
async fn reader(state: &AppState, headers: &HeaderMap, uri: &Uri) -> ApiResult<Caller> {
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    Caller::identify(state, headers, "GET", path_and_query, b"").await
}

fn interval_at(state: &AppState, start: &str) -> ApiResult<Interval> {
    Interval::parse(start, state.market.config.interval_minutes.minutes().into())
        .map_err(|e| MarketError::InvalidRequest(e.to_string()))
}

/// The routes and their OpenAPI operations, from the same handlers: a route cannot be served
/// without being documented.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(post_participant, get_participants))
        .routes(routes!(get_participant))
        .routes(routes!(post_participant_key))
        .routes(routes!(post_gateway, get_gateways))
        .routes(routes!(get_gateway))
        .routes(routes!(post_order, get_orders))
        .routes(routes!(post_orders_batch))
        .routes(routes!(post_cancel))
        .routes(routes!(get_book))
        .routes(routes!(get_result))
        .routes(routes!(get_signed_result))
        .routes(routes!(get_results))
        .routes(routes!(get_signed_results))
        .routes(routes!(get_market_key))
        .routes(routes!(get_envelopes))
        .routes(routes!(post_limit, get_limits))
        .routes(routes!(delete_limit))
        .routes(routes!(get_topology, put_topology))
        .routes(routes!(get_status))
        .routes(routes!(get_events))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// The market's OpenAPI document, generated from the handlers and the protocol's types.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> =
        LazyLock::new(|| openapi_router().into_openapi());
    &DOCUMENT
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let (router, _document) = openapi_router().split_for_parts();
    let router = router
        .fallback(|| async { MarketError::NotFound("no such endpoint; see /openapi.json".into()) })
        .with_state(state);
    layers(router, &HttpLimits::default())
}

#[utoipa::path(post, path = "/participants", tag = "registry",
    summary = "Register a participant (its enrolment token, or the operator); create-only",
    request_body = Participant,
    security(("operator" = []), ("enrolment" = [])),
    responses(
        (status = 201, description = "registered", body = Participant),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized: no credential, or an unknown, expired or used enrolment token", body = ErrorBody),
        (status = 403, description = "forbidden: another participant's enrolment token, the auditor, a signed request", body = ErrorBody),
        (status = 409, description = "conflict: the id is registered", body = ErrorBody),
        (status = 422, description = "unknown_node", body = ErrorBody),
    ))]
async fn post_participant(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let caller = Caller::identify(&s, &headers, "POST", path, &body).await?;
    let p: Participant = parse_body(&body, "participant")?;
    caller.may_enrol(&p.id)?;
    match s.market.register_participant(p.clone()).await? {
        Registration::Created => Ok((StatusCode::CREATED, Json(p))),
        Registration::Unchanged => Err(MarketError::Conflict(format!(
            "participant `{}` is already registered (with exactly this record)",
            p.id
        ))),
    }
}

#[utoipa::path(get, path = "/participants", tag = "registry",
    summary = "List participants, each with the key in force and every key's validity period",
    responses((status = 200, description = "every registered participant", body = Vec<ParticipantWithKeys>)))]
async fn get_participants(State(s): State<AppState>) -> Json<Vec<ParticipantWithKeys>> {
    Json(s.market.participants_with_keys())
}

#[utoipa::path(get, path = "/participants/{id}", tag = "registry",
    summary = "One participant, with the key in force and every key's validity period",
    params(("id" = String, Path, description = "the participant id")),
    responses(
        (status = 200, description = "the participant", body = ParticipantWithKeys),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 404, description = "not_found: not registered", body = ErrorBody),
    ))]
async fn get_participant(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ParticipantWithKeys>> {
    let id = ParticipantId::new(id).map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    s.market
        .participant_with_keys(&id)
        .map(Json)
        .ok_or_else(|| MarketError::NotFound(format!("participant `{id}` is not registered")))
}

#[utoipa::path(post, path = "/participants/{id}/key", tag = "registry",
    summary = "Rotate a participant's key (a KeyRotation signed by the key in force)",
    description = "The envelope carries a `KeyRotation` (`gridmesh/rotate/v1`, docs/protocol.md) signed by the participant's key in force now. From `valid_from` on the new key signs and the old one is refused (`key_mismatch`).",
    params(("id" = String, Path, description = "the participant id")),
    request_body = SignedEnvelope,
    responses(
        (status = 200, description = "rotated: the participant with every key's validity period", body = ParticipantWithKeys),
        (status = 400, description = "invalid_request (another participant than the path, valid_from in the past or not after the current key's, an unusable key) | wrong_message", body = ErrorBody),
        (status = 401, description = "bad_signature | key_mismatch: not signed by the key in force", body = ErrorBody),
        (status = 403, description = "unknown_participant", body = ErrorBody),
        (status = 409, description = "replayed_nonce | conflict: a rotation is pending", body = ErrorBody),
    ))]
async fn post_participant_key(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> ApiResult<Json<ParticipantWithKeys>> {
    let id = ParticipantId::new(id).map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    let envelope: SignedEnvelope = parse_body(&body, "signed envelope")?;
    Ok(Json(s.market.rotate_key(&id, envelope).await?))
}

#[utoipa::path(post, path = "/gateways", tag = "registry",
    summary = "Enrol a gateway (its participant's enrolment token, used up here; or the operator); create-only",
    request_body = GatewayEnrollment,
    security(("operator" = []), ("enrolment" = [])),
    responses(
        (status = 201, description = "enrolled", body = GatewayEnrollment),
        (status = 400, description = "invalid_request (also values above the documented maxima)", body = ErrorBody),
        (status = 401, description = "unauthorized: no credential, or an unknown, expired or used enrolment token", body = ErrorBody),
        (status = 403, description = "forbidden (another participant's token, the auditor), unknown_participant or wrong_node", body = ErrorBody),
        (status = 409, description = "conflict: the id is enrolled", body = ErrorBody),
    ))]
async fn post_gateway(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let caller = Caller::identify(&s, &headers, "POST", path, &body).await?;
    let g: GatewayEnrollment = parse_body(&body, "gateway enrollment")?;
    caller.may_enrol(&g.participant)?;
    // An enrolment token is used up by its gateway: claim it first (one request wins), give
    // it back if the enrolment does not happen.
    let claimed = match &caller {
        Caller::Enrolment { token_sha256, .. } => {
            let now = chrono::Utc::now().timestamp();
            if !s
                .market
                .store
                .use_enrolment_token(token_sha256, now)
                .await?
            {
                return Err(MarketError::Unauthorized(
                    "this enrolment token was just used up by another request; ask the operator for a new one".into(),
                ));
            }
            Some(token_sha256.clone())
        }
        _ => None,
    };
    let outcome = s.market.enroll_gateway(g.clone()).await;
    if let Some(hash) = claimed {
        if !matches!(outcome, Ok(Registration::Created)) {
            s.market.store.release_enrolment_token(&hash).await?;
        }
    }
    match outcome? {
        Registration::Created => Ok((StatusCode::CREATED, Json(g))),
        Registration::Unchanged => Err(MarketError::Conflict(format!(
            "gateway `{}` is already enrolled (with exactly this record)",
            g.gateway
        ))),
    }
}

#[utoipa::path(get, path = "/gateways", tag = "registry",
    summary = "List enrolled gateways (household data: auditor, operator, or a household's signed request for its own)",
    security(("operator" = []), ("auditor" = []), ("participant" = [])),
    responses(
        (status = 200, description = "every enrolled gateway the caller may see", body = Vec<GatewayEnrollment>),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden", body = ErrorBody),
        (status = 500, description = "storage_error", body = ErrorBody),
    ))]
async fn get_gateways(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<Vec<GatewayEnrollment>>> {
    let caller = reader(&s, &headers, &uri).await?;
    let scope = caller.read_scope()?;
    let mut gateways = s.market.store.gateways().await?;
    if let Some(p) = scope {
        gateways.retain(|g| &g.participant == p);
    }
    Ok(Json(gateways))
}

#[utoipa::path(get, path = "/gateways/{id}", tag = "registry",
    summary = "One enrolled gateway (household data: auditor, operator, or its household's signed request)",
    params(("id" = String, Path, description = "the gateway id")),
    security(("operator" = []), ("auditor" = []), ("participant" = [])),
    responses(
        (status = 200, description = "the gateway", body = GatewayEnrollment),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: another household's gateway", body = ErrorBody),
        (status = 404, description = "not_found: not enrolled", body = ErrorBody),
    ))]
async fn get_gateway(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<GatewayEnrollment>> {
    let caller = reader(&s, &headers, &uri).await?;
    caller.read_scope()?;
    let id = GatewayId::new(id).map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    let gateway = s
        .market
        .store
        .gateway(&id)
        .await?
        .ok_or_else(|| MarketError::NotFound(format!("gateway `{id}` is not enrolled")))?;
    caller.may_read(&gateway.participant)?;
    Ok(Json(gateway))
}

#[utoipa::path(post, path = "/orders", tag = "orders",
    summary = "Submit a signed order",
    description = "The envelope carries an `Order` in its canonical bytes (docs/protocol.md), signed by the participant's registered key.",
    request_body = SignedEnvelope,
    responses(
        (status = 201, description = "accepted", body = OrderAccepted),
        (status = 400, description = "invalid_request | wrong_message", body = ErrorBody),
        (status = 401, description = "bad_signature | key_mismatch", body = ErrorBody),
        (status = 403, description = "unknown_participant | wrong_node", body = ErrorBody),
        (status = 409, description = "gate_closed | replayed_nonce", body = ErrorBody),
        (status = 422, description = "invalid_quantity | invalid_price | unknown_node | wrong_interval_length | interval_too_far_ahead | invalid_order", body = ErrorBody),
        (status = 503, description = "shutting_down", body = ErrorBody),
    ))]
async fn post_order(State(s): State<AppState>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let decoding = std::time::Instant::now();
    let envelope: SignedEnvelope = parse_body(&body, "signed envelope")?;
    OrderStages::add(&s.market.metrics.order_stages.decode_micros, decoding);
    let order_id = s.market.submit_order(envelope).await?;
    Ok((StatusCode::CREATED, Json(OrderAccepted { order_id })))
}

#[utoipa::path(post, path = "/orders/batch", tag = "orders",
    summary = "Submit up to 1000 signed orders at once (each authorised by its own signature)",
    description = "Each order is checked exactly as `POST /orders` checks one; the signatures are verified in one batch and the orders that pass are stored in one transaction. The answer has one outcome per order, in the order sent: status 201 and the order id, or the status, code and message `POST /orders` would have answered. Every order answered 201 is in its interval's book.",
    request_body = OrderBatch,
    responses(
        (status = 200, description = "one outcome per order", body = OrderBatchAccepted),
        (status = 400, description = "invalid_request: not a batch, empty, or more than 1000 orders", body = ErrorBody),
        (status = 413, description = "payload_too_large: the body is over the server's limit", body = ErrorBody),
        (status = 503, description = "shutting_down", body = ErrorBody),
    ))]
async fn post_orders_batch(
    State(s): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<OrderBatchAccepted>> {
    let batch: OrderBatch = parse_body(&body, "order batch ({\"orders\": [signed envelopes]})")?;
    if batch.orders.is_empty() {
        return Err(MarketError::InvalidRequest(
            "the batch holds no orders: send {\"orders\": [signed envelopes]}".into(),
        ));
    }
    if batch.orders.len() > MAX_ORDER_BATCH {
        return Err(MarketError::InvalidRequest(format!(
            "the batch holds {} orders; at most {MAX_ORDER_BATCH} per request: split it",
            batch.orders.len()
        )));
    }
    let outcomes = s.market.submit_orders(batch.orders).await;
    if outcomes
        .iter()
        .any(|o| matches!(o, Err(MarketError::ShuttingDown)))
    {
        return Err(MarketError::ShuttingDown);
    }
    let mut accepted = 0;
    let results: Vec<OrderBatchItem> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(order_id) => {
                accepted += 1;
                OrderBatchItem {
                    status: 201,
                    order_id: Some(order_id),
                    code: None,
                    message: None,
                }
            }
            Err(error) => {
                let api = ApiError::from(error);
                OrderBatchItem {
                    status: api.status.as_u16(),
                    order_id: None,
                    code: Some(api.code.to_string()),
                    message: Some(api.message),
                }
            }
        })
        .collect();
    Ok(Json(OrderBatchAccepted {
        accepted,
        rejected: results.len() - accepted,
        results,
    }))
}

#[derive(Deserialize)]
struct OrderQuery {
    participant: Option<String>,
    interval: Option<String>,
}

#[utoipa::path(get, path = "/orders", tag = "orders",
    summary = "List orders in arrival order (household data: auditor, operator, or a participant's signed request for its own)",
    params(
        ("participant" = Option<String>, Query, description = "only this participant's (a participant's signed request sees only its own)"),
        ("interval" = Option<String>, Query, description = "only this interval (its start, RFC 3339)"),
    ),
    security(("operator" = []), ("auditor" = []), ("participant" = [])),
    responses(
        (status = 200, description = "orders in arrival order", body = Vec<OrderRecord>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: another participant's orders", body = ErrorBody),
    ))]
async fn get_orders(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiQuery(q): ApiQuery<OrderQuery>,
) -> ApiResult<Json<Vec<StoredOrder>>> {
    let caller = reader(&s, &headers, &uri).await?;
    let mut participant = q
        .participant
        .filter(|p| !p.is_empty())
        .map(ParticipantId::new)
        .transpose()
        .map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    if let Some(own) = caller.read_scope()? {
        if let Some(asked) = &participant {
            caller.may_read(asked)?;
        }
        participant = Some(own.clone());
    }
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

#[utoipa::path(post, path = "/orders/cancel", tag = "orders",
    summary = "Cancel an order before gate closure (a signed OrderCancel)",
    request_body = SignedEnvelope,
    responses(
        (status = 200, description = "cancelled", body = OrderCancelled),
        (status = 400, description = "invalid_request | wrong_message", body = ErrorBody),
        (status = 401, description = "bad_signature | key_mismatch", body = ErrorBody),
        (status = 403, description = "unknown_participant", body = ErrorBody),
        (status = 404, description = "order_not_found", body = ErrorBody),
        (status = 409, description = "gate_closed", body = ErrorBody),
    ))]
async fn post_cancel(State(s): State<AppState>, body: Bytes) -> ApiResult<Json<OrderCancelled>> {
    let envelope: SignedEnvelope = parse_body(&body, "signed envelope")?;
    let order_id = s.market.cancel_order(envelope).await?;
    Ok(Json(OrderCancelled {
        order_id,
        cancelled: true,
    }))
}

#[utoipa::path(get, path = "/intervals/{start}/book", tag = "orders",
    summary = "Order-book depth (price steps): per area of at least 5 participants (public), per node (auditor, operator)",
    description = "Without the auditor's or operator's token each node's steps are folded into its area (a node with fewer than 5 registered participants counts in its parent's), so no step shows a single home's bid; a zone with fewer than 5 participants shows no steps.",
    params(("start" = String, Path, description = "the interval's start, RFC 3339")),
    security((), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "depth", body = BookDepth),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized: an invalid credential", body = ErrorBody),
    ))]
async fn get_book(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiPath(start): ApiPath<String>,
) -> ApiResult<Json<BookDepth>> {
    let caller = reader(&s, &headers, &uri).await?;
    let interval = interval_at(&s, &start)?;
    let orders = s.market.store.orders(None, Some(&interval), true).await?;
    if caller.result_view() == ResultView::Full {
        let nodes = depth(
            orders
                .iter()
                .map(|o| (o.node.as_str(), o.side, o.quantity_wh, o.limit_price)),
        );
        return Ok(Json(BookDepth {
            interval,
            orders: orders.len(),
            nodes,
        }));
    }
    let mut participants: std::collections::BTreeMap<NodeId, u32> = Default::default();
    for p in s.market.participants() {
        *participants.entry(p.node).or_default() += 1;
    }
    let topology = s.market.topology();
    Ok(Json(crate::public::public_depth(
        topology.network(),
        &participants,
        orders
            .into_iter()
            .map(|o| (o.node, o.side, o.quantity_wh, o.limit_price)),
        interval,
    )))
}

/// A JSON response of exact, already serialised bytes.
fn raw_json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The JSON of one stored result as `view` sees it: the stored bytes themselves for the full
/// view (the bytes the market signed).
fn result_json(state: &AppState, view: &ResultView, body: String) -> ApiResult<String> {
    if *view == ResultView::Full {
        return Ok(body);
    }
    let result: IntervalResult = serde_json::from_str(&body).map_err(|e| {
        MarketError::Storage(crate::store::StoreError::Corrupt(format!("result: {e}")))
    })?;
    view_json(state, view, &result)
}

/// The JSON of `result` as `view` sees it ([`crate::public`]).
fn view_json(state: &AppState, view: &ResultView, result: &IntervalResult) -> ApiResult<String> {
    let secret = state.market.pseudonym_secret();
    let json = match view {
        ResultView::Full => serde_json::to_string(result),
        ResultView::Own(p) => serde_json::to_string(&crate::public::own_view(result, p, &secret)),
        ResultView::Public => {
            serde_json::to_string(&crate::public::public_view(result, &secret).map_err(|e| {
                MarketError::Storage(crate::store::StoreError::Corrupt(e.to_string()))
            })?)
        }
    };
    Ok(json.expect("a result view serialises"))
}

#[utoipa::path(get, path = "/intervals/{start}/result", tag = "results",
    summary = "The interval's result: public aggregates; the full signed bytes to the auditor and operator; a participant's own part to its signed request",
    description = "Without a credential: a `PublicResult` (aggregates per area of at least 5 participants, trades under per-interval pseudonyms, no participant id). With the auditor's or operator's token: the `IntervalResult`, the exact JSON body bytes the market signed. With a participant's signed request: an `IntervalResult` holding only its own orders, trades and envelopes, the other side of each trade under its pseudonym.",
    params(("start" = String, Path, description = "the interval's start, RFC 3339")),
    security((), ("auditor" = []), ("operator" = []), ("participant" = [])),
    responses(
        (status = 200, description = "the result as the caller may see it (public: PublicResult)", body = PublicResult),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized: an invalid credential", body = ErrorBody),
        (status = 404, description = "not_cleared", body = ErrorBody),
    ))]
async fn get_result(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiPath(start): ApiPath<String>,
) -> ApiResult<Response> {
    let caller = reader(&s, &headers, &uri).await?;
    let interval = interval_at(&s, &start)?;
    let row = s
        .market
        .store
        .result_row(&interval)
        .await?
        .ok_or_else(|| MarketError::NotCleared(interval.key()))?;
    Ok(raw_json(result_json(&s, &caller.result_view(), row.body)?))
}

#[utoipa::path(get, path = "/intervals/{start}/result/signed", tag = "results",
    summary = "The interval's result as signed by the market (auditor, operator; verify with GET /market-key)",
    params(("start" = String, Path, description = "the interval's start, RFC 3339")),
    security(("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "the signed result", body = SignedResult),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: a participant or an enrolment token", body = ErrorBody),
        (status = 404, description = "not_cleared", body = ErrorBody),
    ))]
async fn get_signed_result(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiPath(start): ApiPath<String>,
) -> ApiResult<Json<SignedResult>> {
    reader(&s, &headers, &uri)
        .await?
        .may_read_all("signed results")?;
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

#[utoipa::path(get, path = "/results", tag = "results",
    summary = "Results from `since` on, oldest first: public aggregates; full to the auditor and operator; a participant's own part",
    description = "As GET /intervals/{start}/result, per result: `PublicResult`s without a credential, the stored `IntervalResult` bodies byte for byte with the auditor's or operator's token, a participant's own part with its signed request.",
    params(
        ("since" = Option<String>, Query, description = "first interval start, RFC 3339 (default: all)"),
        ("limit" = Option<i64>, Query, description = "most results, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
    ),
    security((), ("auditor" = []), ("operator" = []), ("participant" = [])),
    responses(
        (status = 200, description = "the results as the caller may see them (public: PublicResult)", body = Vec<PublicResult>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized: an invalid credential", body = ErrorBody),
    ))]
async fn get_results(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiQuery(q): ApiQuery<ResultsQuery>,
) -> ApiResult<Response> {
    let view = reader(&s, &headers, &uri).await?.result_view();
    let (since, limit) = q.page()?;
    let rows = s.market.store.result_rows_since(since, limit).await?;
    // The full view: the stored bodies, byte for byte (the bytes the market signed).
    let mut body = String::with_capacity(rows.iter().map(|r| r.body.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&result_json(&s, &view, row.body)?);
    }
    body.push(']');
    Ok(raw_json(body))
}

#[utoipa::path(get, path = "/results/signed", tag = "results",
    summary = "Signed results from `since` on, oldest first (auditor, operator: settlement reads these; same paging as /results)",
    params(
        ("since" = Option<String>, Query, description = "first interval start, RFC 3339 (default: all)"),
        ("limit" = Option<i64>, Query, description = "most results, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
    ),
    security(("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "signed results", body = Vec<SignedResult>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: a participant or an enrolment token", body = ErrorBody),
    ))]
async fn get_signed_results(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiQuery(q): ApiQuery<ResultsQuery>,
) -> ApiResult<Json<Vec<SignedResult>>> {
    reader(&s, &headers, &uri)
        .await?
        .may_read_all("signed results")?;
    let (since, limit) = q.page()?;
    Ok(Json(s.market.signed_results(since, limit).await?))
}

#[utoipa::path(get, path = "/market-key", tag = "results",
    summary = "The zone and the public key that signs results and envelopes (public)",
    responses((status = 200, description = "the market key", body = MarketKey)))]
async fn get_market_key(State(s): State<AppState>) -> Json<MarketKey> {
    Json(MarketKey {
        zone: s.market.config.zone.clone(),
        public_key: s.market.public_key(),
    })
}

#[utoipa::path(get, path = "/envelopes/{gateway}", tag = "envelopes",
    summary = "The gateway's signed operating envelopes (gridmesh/envelope/v1) for every cleared interval that has not ended, oldest first, at most 4 (the gateway's or its household's signed request, auditor, operator)",
    description = "The gateway signs its request with the key it enrolled with (`Authorization: GridmeshGateway <payload>.<signature>`, `gridmesh/gateway-request/v1`, docs/protocol.md); its household may read them with its own signed request (`Authorization: Gridmesh …`). Another gateway's or household's request is 403; no credential 401.",
    params(("gateway" = String, Path, description = "the gateway id")),
    security(("gateway" = []), ("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "signed envelopes", body = Vec<SignedEnvelope>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: another household's gateway, or an enrolment token", body = ErrorBody),
        (status = 404, description = "not_found: gateway not enrolled", body = ErrorBody),
    ))]
async fn get_envelopes(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiPath(gateway): ApiPath<String>,
) -> ApiResult<Json<Vec<SignedEnvelope>>> {
    let caller = reader(&s, &headers, &uri).await?;
    let gateway =
        GatewayId::new(gateway).map_err(|e| MarketError::InvalidRequest(e.to_string()))?;
    // An unknown gateway is 404 only to those who may read every gateway; anyone else sees
    // 401/403 for a gateway that is not its own, enrolled or not.
    let enrolled = s.market.store.gateway(&gateway).await?;
    caller.may_read_envelopes(&gateway, enrolled.as_ref().map(|g| &g.participant))?;
    Ok(Json(s.market.current_envelopes(&gateway).await?))
}

#[utoipa::path(post, path = "/limits", tag = "limits",
    summary = "Add an operator limit override for one branch and time range (operator; the id is assigned)",
    request_body = LimitOverride,
    security(("operator" = [])),
    responses(
        (status = 201, description = "stored, with its id", body = LimitOverride),
        (status = 400, description = "invalid_override | invalid_request", body = ErrorBody),
        (status = 401, description = "operator_token_required", body = ErrorBody),
        (status = 403, description = "operator_token_invalid", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/limits", tag = "limits",
    summary = "Every operator limit override (public)",
    responses(
        (status = 200, description = "limit overrides", body = Vec<LimitOverride>),
        (status = 500, description = "storage_error", body = ErrorBody),
    ))]
async fn get_limits(State(s): State<AppState>) -> ApiResult<Json<Vec<LimitOverride>>> {
    Ok(Json(s.market.store.overrides().await?))
}

#[utoipa::path(delete, path = "/limits/{id}", tag = "limits",
    summary = "Delete a limit override (operator)",
    params(("id" = i64, Path, description = "the override's id")),
    security(("operator" = [])),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "operator_token_required", body = ErrorBody),
        (status = 403, description = "operator_token_invalid", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
    ))]
async fn delete_limit(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
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

#[utoipa::path(get, path = "/topology", tag = "topology",
    summary = "The network and tariff",
    responses((status = 200, description = "the network", body = Network)))]
async fn get_topology(State(s): State<AppState>) -> Json<Network> {
    Json(s.market.topology().network().clone())
}

#[utoipa::path(put, path = "/topology", tag = "topology",
    summary = "Replace the network (operator)",
    request_body = Network,
    security(("operator" = [])),
    responses(
        (status = 200, description = "the new network", body = Network),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "operator_token_required", body = ErrorBody),
        (status = 403, description = "operator_token_invalid", body = ErrorBody),
        (status = 422, description = "invalid_topology", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/status", tag = "service",
    summary = "Zone, interval length, gate-closure lead, next open interval, clock",
    responses((status = 200, description = "the market's status", body = MarketStatus)))]
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

#[utoipa::path(get, path = "/events", tag = "results",
    summary = "Server-sent events: `result`, each as GET /intervals/{start}/result shows it to the caller",
    description = "Without a credential each `result` event's data is a `PublicResult`; with the auditor's or operator's token the full `IntervalResult`; with a participant's signed request (of `GET /events`) its own part.",
    security((), ("auditor" = []), ("operator" = []), ("participant" = [])),
    responses(
        (status = 200, description = "an event stream; each `result` event's data is the result as the caller may see it", content_type = "text/event-stream", body = String),
        (status = 401, description = "unauthorized: an invalid credential", body = ErrorBody),
    ))]
async fn get_events(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    let view = reader(&s, &headers, &uri).await?.result_view();
    let state = s.clone();
    Ok(sse_from_broadcast(
        s.market.subscribe(),
        s.cancel.clone(),
        move |result| match view_json(&state, &view, &result) {
            Ok(data) => Some(Event::default().event("result").data(data)),
            Err(error) => {
                tracing::error!(%error, "a result event could not be shown");
                None
            }
        },
    )
    .into_response())
}

#[utoipa::path(get, path = "/healthz", tag = "service",
    summary = "Liveness (checks the database)",
    responses(
        (status = 200, description = "ok", body = Health),
        (status = 500, description = "storage_error", body = ErrorBody),
    ))]
async fn healthz(State(s): State<AppState>) -> ApiResult<Json<Health>> {
    sqlx::query("SELECT 1")
        .execute(&s.market.store.database().pool)
        .await
        .map_err(|e| MarketError::Storage(e.into()))?;
    Ok(Json(Health::ok()))
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    summary = "Prometheus text format",
    responses((status = 200, description = "metrics", content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.market.metrics.render(),
    )
}

#[utoipa::path(get, path = "/openapi.json", tag = "service",
    summary = "This document",
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}
