//! The REST API (axum on the runtime's HTTP kit): readings in, statements, balances, ledger,
//! token operations, quarantine, envelope compliance, alerts and measured flows, server-sent
//! events, health, metrics and the OpenAPI document.
//!
//! Every answer is a read model from `gridmesh_protocol::api` (or `envelope`); the OpenAPI
//! document is generated from the handlers' `#[utoipa::path]` and those types, and the router
//! is built from the same list, so a route cannot be served undocumented. Errors are
//! `{"code": "snake_case", "message": "human sentence"}` with a 4xx/5xx status — including bad
//! query strings and path segments; storage details are logged, never sent to clients.

use crate::access::{Caller, refuse_auditor_write};
use crate::compliance::FlowAudience;
use crate::rules::Statement;
use crate::service::admission::UploadError;
use crate::service::{Receipt, Service, ServiceError, Submission};
use crate::store::readings::QuarantineFilter;
use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::api::readings::ReadingOutcome;
use gridmesh_protocol::api::settlement::{
    Balances, BlockSummary, EntryView, Event, QuarantineAccepted, QuarantineItem, QuarantineQuery,
    QuarantineStatus, StoredReading,
};
use gridmesh_protocol::envelope::{EnvelopeAlert, EnvelopeCompliance, MeasuredFlows};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_runtime::http::{
    ApiError, ApiJson, ApiPath, ApiQuery, HttpLimits, OperatorToken, layers, sse_from_broadcast,
};
use serde::Deserialize;
use std::sync::{Arc, LazyLock};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The core.
    pub service: Arc<Service>,
    /// The operator's bearer token (`None` = operator endpoints disabled).
    pub operator_token: Option<String>,
    /// The auditor's bearer token: reads everything, writes nothing (`None` = no auditor).
    pub auditor_token: Option<String>,
    /// Ends open event streams on shutdown (so graceful shutdown does not wait for them).
    pub stop: tokio_util::sync::CancellationToken,
}

impl FromRef<AppState> for OperatorToken {
    fn from_ref(state: &AppState) -> Self {
        OperatorToken::new(state.operator_token.as_deref())
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
            ServiceError::BadRequest(m) => ApiError::bad_request(m),
            ServiceError::Forbidden(m) => ApiError::forbidden(m),
            ServiceError::NotFound(m) => ApiError::not_found(m),
            ServiceError::Conflict(m) => ApiError::conflict(m),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The document's frame: title, description, the operator's bearer scheme and the error schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gridmesh settlement",
        description = "Verifies signed meter readings, settles each interval's trades against delivered energy and mints delivered, matched energy as tokens (1 token = 1 Wh) into an authority-signed ledger. Energies are integer Wh, money integer minor units, prices minor units per MWh. Errors are JSON {\"code\",\"message\"} (ErrorBody)."
    ),
    components(schemas(ErrorBody)),
    modifiers(&OperatorBearer)
)]
struct Frame;

/// Adds the credentials of the access model: the `operator` and `auditor` bearer tokens and
/// the `participant`'s signed request (`Authorization: Gridmesh <payload>.<signature>`).
struct OperatorBearer;

impl Modify for OperatorBearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["operator", "auditor"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
        components.add_security_scheme(
            "gateway",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "a gateway's signed request over the whole body, `GridmeshGateway <base64 payload>.<base64 signature>` (gridmesh/gateway-request/v1, docs/protocol.md), by the gateway's enrolled key",
            ))),
        );
        components.add_security_scheme(
            "participant",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "a signed request, `Gridmesh <base64 payload>.<base64 signature>` (gridmesh/request/v1, docs/protocol.md), by the participant's registered key",
            ))),
        );
    }
}

/// The routes and their OpenAPI operations, from the same handlers.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(Frame::openapi())
        .routes(routes!(post_readings))
        .routes(routes!(get_statements))
        .routes(routes!(crate::monthly::http::get_monthly))
        .routes(routes!(get_balances))
        .routes(routes!(post_transfer))
        .routes(routes!(post_retire))
        .routes(routes!(get_blocks))
        .routes(routes!(get_block))
        .routes(routes!(get_entry))
        .routes(routes!(get_reading))
        .routes(routes!(get_quarantine))
        .routes(routes!(post_accept))
        .routes(routes!(get_compliance))
        .routes(routes!(get_alerts))
        .routes(routes!(get_flows))
        .routes(routes!(get_events))
        .routes(routes!(healthz))
        .routes(routes!(get_metrics))
        .routes(routes!(get_openapi))
}

/// Settlement's OpenAPI 3.1 document, generated from the handlers and the protocol's types.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> =
        LazyLock::new(|| openapi_router().into_openapi());
    &DOCUMENT
}

/// The router, with the kit's standard layers (tracing, timeout, body and concurrency limits).
pub fn router(state: AppState) -> Router {
    let (router, _document) = openapi_router().split_for_parts();
    let router =
        router.fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") });
    layers(router, &HttpLimits::default()).with_state(state)
}

#[utoipa::path(post, path = "/readings", tag = "readings",
    summary = "Submit signed readings (enrolled gateways only, rate-limited per gateway)",
    description = "A JSON array of SignedEnvelope of Reading, uploaded by an enrolled gateway: the request carries the gateway's signed request over the whole body (`Authorization: GridmeshGateway <base64 payload>.<base64 signature>`, gridmesh/gateway-request/v1 in docs/protocol.md), and each reading is itself checked against its gateway's enrolled key. One outcome per item, in order: accepted, duplicate or quarantined (with its reason code). 200 means every item was durably recorded (junk only as a bounded sample). Each gateway may send 1000 readings at once and 2 per second on average (429 with Retry-After beyond). A gateway the market has not enrolled (the sender, or a reading's gateway) makes settlement ask the market again; if it is still unknown the answer is 503 `unknown_gateway` with Retry-After and nothing is stored, so the gateway keeps its readings and resends.",
    request_body = Vec<SignedEnvelope>,
    security(("gateway" = [])),
    responses(
        (status = 200, description = "one outcome per submitted envelope", body = Vec<ReadingOutcome>),
        (status = 400, description = "bad_request: not a JSON array, or more than 1000 items", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid gateway signature", body = ErrorBody),
        (status = 403, description = "forbidden: the auditor token writes nothing", body = ErrorBody),
        (status = 429, description = "rate_limited: over the gateway's rate; nothing stored, resend after Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 503, description = "unknown_gateway (not enrolled yet: keep the readings, resend after Retry-After) | storage_unavailable: nothing was recorded, retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait"))),
    ))]
async fn post_readings(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> Response {
    match upload(&s, &headers, &uri, &body).await {
        Ok(outcomes) => ApiJson(outcomes).into_response(),
        Err(e) => e,
    }
}

/// `POST /readings`: authenticate the gateway, parse, rate-limit, ingest.
async fn upload(
    s: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<Vec<ReadingOutcome>, Response> {
    refuse_auditor_write(s, headers).map_err(IntoResponse::into_response)?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let sender = s
        .service
        .upload_sender(authorization, "POST", path, body)
        .await
        .map_err(upload_error)?;
    let source = format!("rest:{sender}");
    // Each item stays opaque JSON until ingest decodes it: what does not decode is kept (as a
    // bounded sample) in quarantine as sent, so the array is split without interpreting items.
    let items: Vec<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(items) => items,
        Err(e) => {
            let why = format!("the body must be a JSON array of signed envelopes: {e}");
            if let Err(e) = s.service.keep_junk(&source, body, &why).await {
                tracing::warn!(error = %e, "could not keep a sample of a refused upload");
            }
            return Err(ApiError::bad_request(why).into_response());
        }
    };
    s.service
        .admit_upload(&sender, items.len())
        .map_err(upload_error)?;
    let subs = items
        .iter()
        .map(|v| Submission {
            source: source.clone(),
            raw: serde_json::to_vec(v).expect("a parsed value serialises"),
        })
        .collect();
    s.service.ingest_upload(subs).await.map_err(upload_error)
}

/// The answer to a refused upload; 429 and 503 `unknown_gateway` carry `Retry-After`.
fn upload_error(e: UploadError) -> Response {
    let with_retry =
        |status: StatusCode, code: &'static str, wait: std::time::Duration, m: String| {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = ApiError::new(status, code, m).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
            response
        };
    match e {
        UploadError::Unauthorized(m) => ApiError::unauthorized(m).into_response(),
        UploadError::BadRequest(m) => ApiError::bad_request(m).into_response(),
        UploadError::UnknownGateway { retry_after, .. } => with_retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "unknown_gateway",
            retry_after,
            e.to_string(),
        ),
        UploadError::RateLimited { retry_after, .. } => with_retry(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            retry_after,
            e.to_string(),
        ),
        UploadError::Service(inner) => ApiError::from(inner).into_response(),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatementQuery {
    /// Only this participant's statements.
    participant: Option<String>,
    /// Only this interval: its key (`2026-06-21T12:00:00Z/15`) or its start.
    interval: Option<String>,
}

#[utoipa::path(get, path = "/statements", tag = "statements",
    summary = "Statements per participant and interval (the household, auditor, operator)",
    description = "Per-household money: a participant's signed request reads its own statements (without a `participant` filter it gets only its own); the auditor and the operator read everyone's.",
    params(StatementQuery),
    security(("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "statements by interval and participant", body = Vec<Statement>),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: another household's data", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_statements(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> ApiResult<ApiJson<Vec<Statement>>> {
    let asked = q.participant.as_deref().filter(|p| !p.is_empty());
    let who = match (caller.scope()?, asked) {
        (None, asked) => asked,
        (Some(own), None) => Some(own.as_str()),
        (Some(_), Some(asked)) => {
            caller.may_read(asked)?;
            Some(asked)
        }
    };
    let list = s.service.statements(who, q.interval.as_deref()).await?;
    Ok(ApiJson(list))
}

#[utoipa::path(get, path = "/balances/{participant}", tag = "tokens",
    summary = "Token holdings with provenance (the household, auditor, operator)",
    description = "Each lot with its origin mint: interval, seller, buyer, source, price and reading digests.",
    params(("participant" = String, Path, description = "the participant id")),
    security(("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "the participant's lots", body = Balances),
        (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: another household's data", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_balances(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<String>,
) -> ApiResult<ApiJson<Balances>> {
    caller.may_read(&p)?;
    Ok(ApiJson(s.service.balances(&p).await?))
}

fn envelope(body: &[u8]) -> ApiResult<SignedEnvelope> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a signed envelope {{payload, signature, public_key}}: {e}"
        ))
    })
}

/// 201 for a new operation, 200 when this exact operation was applied before.
fn receipt(r: Receipt) -> Response {
    let status = if r.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, ApiJson(r)).into_response()
}

#[utoipa::path(post, path = "/tokens/transfer", tag = "tokens",
    summary = "Transfer part of a lot",
    description = "A holder-signed TokenTransfer envelope (authorised by the holder's signature). The tokens move into a new lot named by the entry; the recipient must be a participant registered with the market (400 otherwise).",
    request_body = SignedEnvelope,
    responses(
        (status = 201, description = "applied", body = Receipt),
        (status = 200, description = "this exact transfer was applied before", body = Receipt),
        (status = 400, description = "bad_request (incl. an unregistered recipient)", body = ErrorBody),
        (status = 403, description = "forbidden: not the holder's registered key or lot, or the auditor token", body = ErrorBody),
        (status = 404, description = "not_found: no such lot", body = ErrorBody),
        (status = 409, description = "conflict: the lot holds less", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn post_transfer(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    refuse_auditor_write(&s, &headers)?;
    Ok(receipt(s.service.transfer(envelope(&body)?).await?))
}

#[utoipa::path(post, path = "/tokens/retire", tag = "tokens",
    summary = "Retire tokens of a lot",
    description = "A holder-signed TokenRetire envelope.",
    request_body = SignedEnvelope,
    responses(
        (status = 201, description = "applied", body = Receipt),
        (status = 200, description = "this exact retirement was applied before", body = Receipt),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 403, description = "forbidden: not the holder's registered key or lot, or the auditor token", body = ErrorBody),
        (status = 404, description = "not_found: no such lot", body = ErrorBody),
        (status = 409, description = "conflict: the lot holds less", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn post_retire(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    refuse_auditor_write(&s, &headers)?;
    Ok(receipt(s.service.retire(envelope(&body)?).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Limit {
    /// At most this many (default 100, 1–1000).
    limit: Option<i64>,
}

impl Limit {
    fn get(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

#[utoipa::path(get, path = "/ledger/blocks", tag = "ledger",
    summary = "Blocks, newest first (public)",
    description = "Public, so that anyone can check the chain: headers, authority signatures and entry hashes (no participant id). The entries themselves go to the participants they name, the auditor and the operator.",
    params(Limit),
    responses(
        (status = 200, description = "blocks with their entry hashes", body = Vec<BlockSummary>),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_blocks(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<Limit>,
) -> ApiResult<ApiJson<Vec<BlockSummary>>> {
    Ok(ApiJson(s.service.blocks(q.get()).await?))
}

#[utoipa::path(get, path = "/ledger/blocks/{height}", tag = "ledger",
    summary = "One block: header fields, hash, authority signature, entry hashes (public)",
    params(("height" = i64, Path, description = "the block height (0 is the first)")),
    responses(
        (status = 200, description = "the block", body = BlockSummary),
        (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_block(
    State(s): State<AppState>,
    ApiPath(h): ApiPath<i64>,
) -> ApiResult<ApiJson<BlockSummary>> {
    match s.service.block(h).await? {
        Some(b) => Ok(ApiJson(b)),
        None => Err(ApiError::not_found(format!("no block at height {h}"))),
    }
}

#[utoipa::path(get, path = "/ledger/entries/{hash}", tag = "ledger",
    summary = "One ledger entry with its Merkle inclusion proof (the participants it names, auditor, operator)",
    description = "The body and its exact hashed bytes (body_base64), the block and the proof once sealed. Entries name participants, so they go to the participants they name (a signed request), the auditor and the operator; the auditor re-verifies the whole ledger, and a holder checks its own entries' proofs against the public block headers (GET /ledger/blocks).",
    params(("hash" = String, Path, description = "the entry hash (hex)")),
    security(("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "the entry", body = EntryView),
        (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: a participant the entry does not name", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_entry(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(hash): ApiPath<String>,
) -> ApiResult<ApiJson<EntryView>> {
    // No credential is refused before the lookup, so the public learns nothing of which
    // hashes exist beyond the block headers' lists.
    caller.scope()?;
    match s.service.entry(&hash).await? {
        Some(e) => {
            caller.may_read_entry(&e.body)?;
            Ok(ApiJson(e))
        }
        None => Err(ApiError::not_found(format!(
            "no ledger entry with hash {hash}"
        ))),
    }
}

#[utoipa::path(get, path = "/readings/{digest}", tag = "readings",
    summary = "A stored signed reading by the SHA-256 of its payload (the household, auditor, operator)",
    description = "As named in token provenance: the envelope verbatim, the decoded reading and its status. Only the household it is attributed to, the auditor and the operator.",
    params(("digest" = String, Path, description = "SHA-256 of the signed payload (hex)")),
    security(("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "the reading", body = StoredReading),
        (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: another household's data", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_reading(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(digest): ApiPath<String>,
) -> ApiResult<ApiJson<StoredReading>> {
    caller.scope()?;
    match s.service.reading_by_digest(&digest).await? {
        Some(r) => {
            caller.may_read(&r.participant)?;
            Ok(ApiJson(r))
        }
        None => Err(ApiError::not_found(format!(
            "no stored reading whose signed payload has SHA-256 {digest}"
        ))),
    }
}

#[utoipa::path(get, path = "/quarantine", tag = "readings",
    summary = "Quarantined, flagged, late and held readings with reasons, newest first, paged and filtered (auditor, operator; a household its own)",
    description = "Filters: `gateway`, `reason` (a reason code), `status` (open, accepted, held, readmitted); paging: `limit` (1–1000, default 100) items with an id below `before` (pass the last item's id for the next page). Signed readings are kept whole; of junk only a bounded sample. The auditor and the operator see every item; a participant's signed request sees only the items of its own enrolled gateways (asking for another gateway answers 403).",
    params(QuarantineQuery),
    security(("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "quarantine items, newest first", body = Vec<QuarantineItem>),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: another household's gateway", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_quarantine(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<QuarantineQuery>,
) -> ApiResult<ApiJson<Vec<QuarantineItem>>> {
    let mut filter = QuarantineFilter {
        gateway: q.gateway.clone().filter(|g| !g.is_empty()),
        gateways: None,
        code: q.reason.map(|c| c.as_str()),
        status: q.status.map(|s| s.as_str()),
        before: q.before,
    };
    if let Some(own) = caller.scope()? {
        let mine = s.service.gateways_of(own);
        if let Some(g) = &filter.gateway
            && !mine.contains(g)
        {
            return Err(ApiError::forbidden(format!(
                "{own} may read only the quarantine of its own gateways, and {g} is not one of them"
            )));
        }
        filter.gateways = Some(mine);
    }
    Ok(ApiJson(
        s.service.quarantine_where(&filter, q.page_size()).await?,
    ))
}

#[utoipa::path(post, path = "/quarantine/{id}/accept", tag = "readings",
    summary = "Accept a reading flagged as implausible (operator only)",
    description = "Withheld mints whose readings are all accepted now are released. No request body.",
    params(("id" = i64, Path, description = "the quarantine id")),
    security(("operator" = [])),
    responses(
        (status = 200, description = "accepted", body = QuarantineAccepted),
        (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden (auditor or participant) | operator_disabled", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 409, description = "conflict: refused for a reason no operator can accept", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn post_accept(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<ApiJson<QuarantineAccepted>> {
    caller.operator_only(&s)?;
    let released = s.service.accept_quarantined(id).await?;
    Ok(ApiJson(QuarantineAccepted {
        id,
        status: QuarantineStatus::Accepted,
        mints_released: released as u64,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Intervals starting at or after this RFC 3339 time.
    since: Option<String>,
    /// At most this many intervals (default 100, 1–1000).
    limit: Option<i64>,
    /// Only this participant's rows (`/compliance`).
    participant: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }

    fn since(&self) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
        match self.since.as_deref().filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.with_timezone(&chrono::Utc)))
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "since `{v}` is not an RFC 3339 time such as 2026-06-21T12:00:00Z"
                    ))
                }),
        }
    }
}

#[utoipa::path(get, path = "/compliance", tag = "envelopes",
    summary = "Per home and interval: metered export/import against the operating envelope (the household, auditor, operator)",
    description = "Oldest first. Per-home figures: a participant's signed request reads its own rows (without a `participant` filter it gets only its own); the auditor and the operator read everyone's.",
    params(PageQuery),
    security(("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "compliance rows", body = Vec<EnvelopeCompliance>),
        (status = 400, description = "bad_request | invalid_query", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: another household's data", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_compliance(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<ApiJson<Vec<EnvelopeCompliance>>> {
    let asked = q.participant.as_deref().filter(|p| !p.is_empty());
    let who = match (caller.scope()?, asked) {
        (None, asked) => asked,
        (Some(own), None) => Some(own.as_str()),
        (Some(_), Some(asked)) => {
            caller.may_read(asked)?;
            Some(asked)
        }
    };
    let rows = s.service.compliance(q.since()?, q.limit(), who).await?;
    Ok(ApiJson(rows))
}

#[utoipa::path(get, path = "/compliance/alerts", tag = "envelopes",
    summary = "Homes over their operating envelope in two or more consecutive settled intervals (auditor, operator; a household its own)",
    description = "Newest first; `active` = the run includes the latest settled interval. Each alert names a home, so it is not public: the auditor and the operator see all, a participant's signed request its own. Public per-branch aggregates are `GET /flows`.",
    params(Limit),
    security(("participant" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "alerts", body = Vec<EnvelopeAlert>),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_alerts(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<Limit>,
) -> ApiResult<ApiJson<Vec<EnvelopeAlert>>> {
    let scope = caller.scope()?.cloned();
    let mut alerts = s.service.envelope_alerts(q.get() as usize).await?;
    if let Some(own) = scope {
        alerts.retain(|a| a.participant == own);
    }
    Ok(ApiJson(alerts))
}

#[utoipa::path(get, path = "/flows", tag = "envelopes",
    summary = "Measured flows per branch of each result's network, root last (public aggregates)",
    description = "Aggregates from verified readings, for intervals that have ended, oldest first. Without the auditor's or operator's token a branch is listed only if at least 5 homes reported below it and the homes it adds to the listed branches below it are none or at least 5, so no aggregate, alone or subtracted from another, shows fewer than 5 homes.",
    params(PageQuery),
    responses(
        (status = 200, description = "measured flows per interval", body = Vec<MeasuredFlows>),
        (status = 400, description = "bad_request | invalid_query", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
async fn get_flows(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<ApiJson<Vec<MeasuredFlows>>> {
    let audience = if caller.reads_all() {
        FlowAudience::Full
    } else {
        FlowAudience::Public
    };
    Ok(ApiJson(
        s.service.flows(q.since()?, q.limit(), audience).await?,
    ))
}

#[utoipa::path(get, path = "/events", tag = "events",
    summary = "Server-sent events: settled, block (public); quarantined, envelope_alert (auditor, operator)",
    description = "Each event's name is its kind; its data is the Event JSON (tagged by `event`). Listeners without the auditor's or the operator's token receive only `settled` and `block`; `quarantined` and `envelope_alert` (per-household detail) go to the auditor and the operator.",
    security((), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "an event stream", body = Event, content_type = "text/event-stream"),
        (status = 401, description = "unauthorized: an invalid credential", body = ErrorBody),
    ))]
async fn get_events(State(s): State<AppState>, caller: Caller) -> impl IntoResponse {
    let all = caller.reads_all();
    sse_from_broadcast(s.service.subscribe(), s.stop.clone(), move |e: Event| {
        if !all && !public_event(&e) {
            return None;
        }
        let data = serde_json::to_string(&e).ok()?;
        Some(SseEvent::default().event(e.name()).data(data))
    })
}

/// Whether an event goes to every listener: `settled` and `block` carry no household detail;
/// `quarantined` (a gateway's refused reading) and `envelope_alert` (a named home) do.
fn public_event(e: &Event) -> bool {
    matches!(e, Event::Settled { .. } | Event::Block { .. })
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus text metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
async fn get_metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.service.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    summary = "This document",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
async fn get_openapi() -> ApiJson<&'static utoipa::openapi::OpenApi> {
    ApiJson(document())
}
