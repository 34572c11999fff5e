//! The HTTP surface: pages, embedded assets, the JSON API the pages read, SVG charts, the
//! browser event stream, `/healthz` and `/metrics`.
//!
//! Pages are one embedded shell; the script switches pages with the History API and re-reads
//! only the data it shows when an event arrives, so nothing ever reloads the whole page.
//!
//! Built on the runtime's HTTP kit: errors answer `{code, message}` (also for bad paths and
//! queries), every route has the standard trace, timeout, body-limit and concurrency layers,
//! and the browser stream is the kit's SSE-from-broadcast (ending at shutdown). JSON answers
//! are the typed structs of [`crate::api`].

use crate::api::{
    AlertsAnswer, BlocksAnswer, HealthAnswer, ParticipantDetail, ParticipantsAnswer, ReadyAnswer,
    StatusAnswer,
};
use crate::assets;
use crate::charts;
use crate::hub::{Change, Hub};
use crate::upstream::{UpstreamError, encode_component};
use crate::views;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt as _};
use gridmesh_protocol::api::settlement::{
    Balances, BlockSummary, EntryView, Statement, StoredReading,
};
use gridmesh_runtime::http::{
    ApiJson, ApiPath, ApiQuery, HttpLimits, SSE_KEEP_ALIVE, broadcast_events, layers,
};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;

/// The pages of the dashboard: (path, title).
pub const PAGES: [(&str, &str); 5] = [
    ("/grid", "Grid"),
    ("/market", "Market"),
    ("/participants", "Participants"),
    ("/ledger", "Ledger"),
    ("/alerts", "Alerts"),
];

/// An error answered to the browser as `{"code", "message"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing by that name.
    #[error("{0}")]
    NotFound(String),
    /// A chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] charts::ChartError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Upstream(UpstreamError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "not_found".to_owned())
            }
            ApiError::Upstream(e) if e.is_unreachable() => (
                StatusCode::BAD_GATEWAY,
                format!("{}_unreachable", e.service().name()),
            ),
            ApiError::Upstream(e) => (
                StatusCode::BAD_GATEWAY,
                format!("{}_error", e.service().name()),
            ),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request".into()),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found".into()),
            ApiError::Chart(_) => (StatusCode::INTERNAL_SERVER_ERROR, "chart_failed".into()),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        gridmesh_runtime::http::ApiError::new(status, code, self.to_string()).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Builds the router over a hub.
pub fn router(hub: Arc<Hub>) -> Router {
    let mut router = Router::new().route("/", get(page));
    for (path, _) in PAGES {
        router = router.route(path, get(page));
    }
    let router = router
        .route("/participants/{id}", get(page))
        .route("/ledger/{*rest}", get(page))
        .route("/assets/{name}", get(asset))
        .route("/api/status", get(api_status))
        .route("/api/ready", get(api_ready))
        .route("/api/grid", get(api_grid))
        .route("/api/market", get(api_market))
        .route("/api/participants", get(api_participants))
        .route("/api/participants/{id}", get(api_participant))
        .route("/api/alerts", get(api_alerts))
        .route("/api/ledger/blocks", get(api_blocks))
        .route("/api/ledger/blocks/{height}", get(api_block))
        .route("/api/ledger/entries/{hash}", get(api_entry))
        .route("/api/readings/{digest}", get(api_reading))
        .route("/api/events", get(api_events))
        .route("/charts/prices.svg", get(chart_prices))
        .route("/charts/volume.svg", get(chart_volume))
        .route("/charts/depth.svg", get(chart_depth))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            count_requests,
        ))
        .with_state(hub);
    layers(router, &HttpLimits::default())
}

async fn count_requests(
    State(hub): State<Arc<Hub>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    hub.metrics.requests.inc();
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such page; try /grid, /market, /participants, /ledger or /alerts".into())
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        assets::INDEX_HTML,
    )
        .into_response()
}

async fn asset(ApiPath(name): ApiPath<String>) -> Response {
    match assets::get(&name) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response(),
        None => ApiError::NotFound(format!("no asset named {name}")).into_response(),
    }
}

async fn api_status(State(hub): State<Arc<Hub>>) -> ApiJson<StatusAnswer> {
    let snap = hub.snapshot();
    ApiJson(StatusAnswer {
        version: snap.version,
        refreshed_at: snap.refreshed_at,
        sources: views::Sources::of(&snap),
        next_interval: snap.next_interval.clone(),
        latest_interval: snap.latest_result().map(|r| r.interval.key()),
        alerts: views::alerts(&snap, hub.config.imbalance_spike_factor).len(),
    })
}

/// Whether the dashboard has enough data for every page: both services reachable, two cleared
/// intervals, participants, a sealed block and a token holding (scripts wait on this).
async fn api_ready(State(hub): State<Arc<Hub>>) -> ApiJson<ReadyAnswer> {
    let snap = hub.snapshot();
    let holdings = snap.balances.values().any(|b| !b.holdings.is_empty());
    let checks = [
        ("market reachable", snap.market.ok),
        ("settlement reachable", snap.settlement.ok),
        ("two cleared intervals", snap.results.len() >= 2),
        ("participants registered", !snap.participants.is_empty()),
        ("a ledger block", !snap.blocks.is_empty()),
        ("a token holding", holdings),
    ];
    let missing: Vec<&'static str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    ApiJson(ReadyAnswer {
        ready: missing.is_empty(),
        missing,
        version: snap.version,
    })
}

async fn api_grid(State(hub): State<Arc<Hub>>) -> ApiJson<views::GridView> {
    ApiJson(views::grid(&hub.snapshot()))
}

async fn api_market(State(hub): State<Arc<Hub>>) -> ApiJson<views::MarketView> {
    ApiJson(views::market(&hub.snapshot()))
}

/// Filters of the participants list.
#[derive(Debug, Deserialize)]
struct ParticipantQuery {
    q: Option<String>,
    node: Option<String>,
}

async fn api_participants(
    State(hub): State<Arc<Hub>>,
    ApiQuery(query): ApiQuery<ParticipantQuery>,
) -> ApiJson<ParticipantsAnswer> {
    let snap = hub.snapshot();
    let rows = views::participants(&snap, query.q.as_deref(), query.node.as_deref());
    ApiJson(ParticipantsAnswer {
        sources: views::Sources::of(&snap),
        node: query.node,
        participants: rows,
    })
}

/// One participant: its row, its holdings and statements fresh from settlement.
async fn api_participant(
    State(hub): State<Arc<Hub>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<ParticipantDetail>> {
    let snap = hub.snapshot();
    let row = views::participants(&snap, None, None)
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| {
            ApiError::NotFound(format!("no participant {id} is registered with the market"))
        })?;
    let encoded = encode_component(&id);
    let balance_path = format!("/balances/{encoded}");
    let statements_path = format!("/statements?participant={encoded}");
    let (balance, statements) = tokio::join!(
        hub.settlement.get::<Balances>(&balance_path),
        hub.settlement.get::<Vec<Statement>>(&statements_path),
    );
    let (balance, balance_error) = split(balance, snap.balances.get(&id).cloned());
    let (statements, statements_error) = split(statements, None);
    let holdings = balance
        .as_ref()
        .map(|b| b.holdings.clone())
        .unwrap_or_default();
    let errors: Vec<String> = [balance_error, statements_error]
        .into_iter()
        .flatten()
        .collect();
    Ok(ApiJson(ParticipantDetail {
        participant: row,
        holdings,
        balance,
        statements,
        errors,
    }))
}

/// A fresh value, or the cached one with the error beside it.
fn split<T>(r: Result<T, UpstreamError>, cached: Option<T>) -> (Option<T>, Option<String>) {
    match r {
        Ok(v) => (Some(v), None),
        Err(e) => (cached, Some(e.to_string())),
    }
}

async fn api_alerts(State(hub): State<Arc<Hub>>) -> ApiJson<AlertsAnswer> {
    let snap = hub.snapshot();
    ApiJson(AlertsAnswer {
        sources: views::Sources::of(&snap),
        alerts: views::alerts(&snap, hub.config.imbalance_spike_factor),
    })
}

async fn api_blocks(State(hub): State<Arc<Hub>>) -> ApiJson<BlocksAnswer> {
    let snap = hub.snapshot();
    ApiJson(BlocksAnswer {
        sources: views::Sources::of(&snap),
        blocks: snap.blocks.clone(),
    })
}

async fn api_block(
    State(hub): State<Arc<Hub>>,
    ApiPath(height): ApiPath<String>,
) -> ApiResult<ApiJson<BlockSummary>> {
    let height: u64 = height
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("block height `{height}` is not a number")))?;
    Ok(ApiJson(
        hub.settlement
            .get(&format!("/ledger/blocks/{height}"))
            .await?,
    ))
}

async fn api_entry(
    State(hub): State<Arc<Hub>>,
    ApiPath(hash): ApiPath<String>,
) -> ApiResult<ApiJson<EntryView>> {
    if hash.is_empty() || hash.len() > 128 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "entry hash `{hash}` is not hexadecimal; copy it from a block or a holding"
        )));
    }
    Ok(ApiJson(
        hub.settlement
            .get(&format!("/ledger/entries/{hash}"))
            .await?,
    ))
}

/// A signed reading by the SHA-256 its token provenance names (settlement's `/readings/{digest}`).
async fn api_reading(
    State(hub): State<Arc<Hub>>,
    ApiPath(digest): ApiPath<String>,
) -> ApiResult<ApiJson<StoredReading>> {
    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "reading digest `{digest}` is not 64 hexadecimal characters; copy it from a mint's provenance"
        )));
    }
    Ok(ApiJson(
        hub.settlement.get(&format!("/readings/{digest}")).await?,
    ))
}

/// The browser stream: a `hello` with the current version, then one `update` per change
/// (a page that lagged skips to the newest); it ends at shutdown.
async fn api_events(
    State(hub): State<Arc<Hub>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    hub.metrics.browser_streams.inc();
    let receiver = hub.subscribe();
    let first = hub.snapshot();
    let hello = Change {
        version: first.version,
        market_ok: first.market.ok,
        settlement_ok: first.settlement.ok,
        cause: "hello".into(),
    };
    let stream = futures::stream::once(std::future::ready(Ok(update_event(&hello)))).chain(
        broadcast_events(receiver, hub.stop.clone(), |change: Change| {
            Some(update_event(&change))
        }),
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

/// One `update` event carrying a change.
fn update_event(change: &Change) -> Event {
    Event::default()
        .event("update")
        .json_data(change)
        .unwrap_or_else(|_| Event::default().event("update").data("{}"))
}

fn svg(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn chart_prices(State(hub): State<Arc<Hub>>) -> ApiResult<Response> {
    Ok(svg(charts::prices(&hub.snapshot().results)?))
}

async fn chart_volume(State(hub): State<Arc<Hub>>) -> ApiResult<Response> {
    Ok(svg(charts::volume(&hub.snapshot().results)?))
}

async fn chart_depth(State(hub): State<Arc<Hub>>) -> ApiResult<Response> {
    let snap = hub.snapshot();
    Ok(svg(charts::depth(
        snap.book.as_ref(),
        snap.next_interval.as_deref(),
    )?))
}

async fn healthz(State(hub): State<Arc<Hub>>) -> ApiJson<HealthAnswer> {
    let snap = hub.snapshot();
    ApiJson(HealthAnswer {
        status: "ok",
        market: snap.market.ok,
        settlement: snap.settlement.ok,
    })
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let snap = hub.snapshot();
    let text = hub.metrics.encode(&[
        (
            "gridmesh_web_market_up",
            "Whether the market answered the last refresh.",
            i64::from(snap.market.ok),
        ),
        (
            "gridmesh_web_settlement_up",
            "Whether settlement answered the last refresh.",
            i64::from(snap.settlement.ok),
        ),
        (
            "gridmesh_web_intervals",
            "Cleared intervals held for the charts.",
            snap.results.len() as i64,
        ),
        (
            "gridmesh_web_alerts",
            "Alerts currently shown.",
            views::alerts(&snap, hub.config.imbalance_spike_factor).len() as i64,
        ),
    ]);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
