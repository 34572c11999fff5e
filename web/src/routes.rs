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
//!
//! Access (see [`crate::auth`]): every request's `Host` must be an allowed host (else 421).
//! `/healthz`, `/metrics`, `/login` and the login page's assets (`style.css`, `favicon.svg`)
//! are public; everything else needs a session: without one `/api/*` and `/charts/*` answer
//! 401 JSON and pages redirect to `/login`. Writes need the session's CSRF token and, when the
//! browser sends `Origin`, an origin naming the same host. Operator actions (`POST
//! /api/quarantine/{id}/accept`) are for admins (403 for others); a household user sees only
//! its own participant's detail (403 for another's).

use crate::api::{
    AlertsAnswer, BlocksAnswer, HealthAnswer, MeAnswer, ParticipantDetail, ParticipantsAnswer,
    QuarantineAnswer, ReadyAnswer, StatusAnswer,
};
use crate::assets;
use crate::auth::{CSRF_HEADER, Role, Session, session_id};
use crate::charts;
use crate::hub::{Change, Hub};
use crate::upstream::{UpstreamError, encode_component};
use crate::views;
use crate::views::Alert;
use axum::extract::{Form, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::routing::post;
use axum::{Extension, Router};
use futures::{Stream, StreamExt as _};
use gridmesh_protocol::api::settlement::{
    Balances, BlockSummary, EntryView, QuarantineAccepted, Statement, StoredReading,
};
use gridmesh_runtime::http::{
    ApiJson, ApiPath, ApiQuery, HttpLimits, SSE_KEEP_ALIVE, broadcast_events, layers,
};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;

/// The pages of the dashboard: (path, title).
pub const PAGES: [(&str, &str); 6] = [
    ("/grid", "Grid"),
    ("/history", "History"),
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
    /// The user's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The dashboard is not configured for this.
    #[error("{0}")]
    Unavailable(String),
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
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden".into()),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into()),
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
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/api/me", get(api_me))
        .route("/api/quarantine", get(api_quarantine))
        .route("/api/quarantine/{id}/accept", post(api_accept))
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
        .merge(crate::history::routes())
        .merge(crate::diagram::routes())
        .merge(crate::ops_routes::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(hub.clone(), guard))
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

/// Paths served without a session: health, metrics, the login page and its assets.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/metrics" | "/login" | "/assets/style.css" | "/assets/favicon.svg"
    )
}

fn json_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    gridmesh_runtime::http::ApiError::new(status, code, message.into()).into_response()
}

/// The access check in front of every route: allowed Host, session, CSRF token and Origin on
/// writes. The session goes into the request's extensions for the handlers.
async fn guard(
    State(hub): State<Arc<Hub>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let Some(host) = host.filter(|h| hub.auth.host_allowed(h)) else {
        return json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            "this dashboard does not answer to that Host; add the name to `allowed_hosts`",
        );
    };
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if write {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let same = origin.to_str().ok().is_some_and(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(&host))
            });
            if !same {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "cross-origin write refused: the Origin is not this dashboard",
                );
            }
        }
    }
    let path = request.uri().path().to_owned();
    if is_public(&path) {
        return next.run(request).await;
    }
    let session = session_id(request.headers()).and_then(|id| hub.auth.session(&id));
    let Some(session) = session else {
        if path.starts_with("/api/") || path.starts_with("/charts/") || write {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "log in to the dashboard first (POST /login); this needs a session cookie",
            );
        }
        return redirect("/login");
    };
    if write && path != "/logout" {
        let token = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !session.csrf_matches(token) {
            return json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "missing or wrong CSRF token: send the session's token (GET /api/me) in x-csrf-token",
            );
        }
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

/// The logout form's field.
#[derive(Debug, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn login_page() -> Response {
    html(StatusCode::OK, assets::login_html(None))
}

async fn login(State(hub): State<Arc<Hub>>, Form(form): Form<LoginForm>) -> Response {
    let auth = &hub.auth;
    let name = form.name.trim().to_owned();
    let password = form.password;
    if let Some(wait) = auth.locked_for(&name) {
        tracing::warn!(user = %name, "dashboard login refused: too many failed attempts");
        return html(
            StatusCode::TOO_MANY_REQUESTS,
            assets::login_html(Some(&format!(
                "Too many failed logins for this name; try again in {} s.",
                wait.as_secs().max(1)
            ))),
        );
    }
    let outcome = tokio::task::spawn_blocking({
        let hub = hub.clone();
        move || hub.auth.login(&name, &password).map(|s| (s, name))
    })
    .await;
    match outcome {
        Ok(Ok((Some((id, session)), _))) => {
            tracing::info!(user = %session.user, role = session.role.name(), "dashboard login");
            let cookie = auth.cookie(&id);
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/grid".to_owned()),
                    (header::SET_COOKIE, cookie),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
            )
                .into_response()
        }
        Ok(Ok((None, name))) => {
            tracing::warn!(user = %name, "dashboard login refused");
            html(
                StatusCode::UNAUTHORIZED,
                assets::login_html(Some("Wrong user name or password.")),
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the dashboard's users");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                assets::login_html(Some(
                    "The dashboard cannot read its users file; see its log.",
                )),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "login task failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                assets::login_html(Some("Login failed; try again.")),
            )
        }
    }
}

async fn logout(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    headers: axum::http::HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or(LogoutForm {
        csrf: String::new(),
    });
    let header_token = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !session.csrf_matches(&form.csrf) && !session.csrf_matches(header_token) {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "missing or wrong CSRF token on logout",
        );
    }
    if let Some(id) = session_id(&headers) {
        hub.auth.logout(&id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_owned()),
            (header::SET_COOKIE, hub.auth.clear_cookie()),
        ],
    )
        .into_response()
}

async fn api_me(Extension(session): Extension<Arc<Session>>) -> ApiJson<MeAnswer> {
    ApiJson(MeAnswer {
        name: session.user.clone(),
        role: session.role.name(),
        participant: session.role.household().map(str::to_owned),
        operator_actions: session.role.is_admin(),
        csrf: session.csrf.clone(),
    })
}

/// Settlement's quarantined readings (raw envelopes of every home): admin and viewer only.
async fn api_quarantine(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
) -> ApiResult<ApiJson<QuarantineAnswer>> {
    if session.role.household().is_some() {
        return Err(ApiError::Forbidden(
            "quarantined readings are for the operator and auditors".into(),
        ));
    }
    let snap = hub.snapshot();
    Ok(ApiJson(QuarantineAnswer {
        sources: views::Sources::of(&snap),
        items: snap.quarantine.clone(),
    }))
}

/// An operator action: accepts a quarantined reading in settlement (admin only), forwarded
/// with the dashboard's `operator_token`.
async fn api_accept(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<ApiJson<QuarantineAccepted>> {
    if !session.role.is_admin() {
        return Err(ApiError::Forbidden(format!(
            "accepting a quarantined reading is an operator action; {} users may not take it",
            session.role.name()
        )));
    }
    let Some(token) = hub.config.operator_token.as_deref() else {
        return Err(ApiError::Unavailable(
            "operator actions are disabled: the dashboard has no `operator_token`".into(),
        ));
    };
    let accepted = hub
        .settlement
        .post_as(&format!("/quarantine/{id}/accept"), token)
        .await?;
    tracing::info!(user = %session.user, id, "quarantined reading accepted");
    hub.wake("quarantine");
    Ok(ApiJson(accepted))
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

/// The alerts `role` may see: every alert for admin and viewer; for a household, the
/// grid-wide ones and those about its own participant or gateways (another home's offline
/// gateway, quarantined reading or envelope violation is that home's data).
fn alerts_for(snap: &crate::snapshot::Snapshot, spike_factor: u32, role: &Role) -> Vec<Alert> {
    let all = views::alerts(snap, spike_factor);
    let Some(own) = role.household() else {
        return all;
    };
    let own_gateways: Vec<&str> = snap
        .gateways
        .iter()
        .filter(|g| g.participant.as_str() == own)
        .map(|g| g.gateway.as_str())
        .collect();
    let mine = |subject: &str| {
        subject == own
            || own_gateways.iter().any(|g| {
                subject == *g
                    || subject
                        .strip_prefix(g)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    };
    all.into_iter()
        .filter(|a| match a.kind.as_str() {
            "gateway_offline" | "quarantine" | "envelope_violation" => mine(&a.subject),
            _ => true,
        })
        .collect()
}

async fn api_status(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
) -> ApiJson<StatusAnswer> {
    let snap = hub.snapshot();
    ApiJson(StatusAnswer {
        version: snap.version,
        refreshed_at: snap.refreshed_at,
        sources: views::Sources::of(&snap),
        next_interval: snap.next_interval.clone(),
        latest_interval: snap.latest_result().map(|r| r.interval.key()),
        alerts: alerts_for(&snap, hub.config.imbalance_spike_factor, &session.role).len(),
        incidents_unacknowledged: crate::ops_routes::unacknowledged(&hub, &session.role),
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

async fn api_grid(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
) -> ApiJson<views::GridView> {
    let mut grid = views::grid(&hub.snapshot());
    // Branch totals are shared; the per-gateway list is each home's own.
    grid.gateways
        .retain(|g| session.role.may_read_participant(&g.participant));
    ApiJson(grid)
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
    Extension(session): Extension<Arc<Session>>,
    ApiQuery(query): ApiQuery<ParticipantQuery>,
) -> ApiJson<ParticipantsAnswer> {
    let snap = hub.snapshot();
    let mut rows = views::participants(&snap, query.q.as_deref(), query.node.as_deref());
    // A household sees its own row only.
    rows.retain(|r| session.role.may_read_participant(&r.id));
    ApiJson(ParticipantsAnswer {
        sources: views::Sources::of(&snap),
        node: query.node,
        participants: rows,
        period: crate::history::participants_period(&snap),
    })
}

/// One participant: its row, its holdings and statements fresh from settlement.
async fn api_participant(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<ParticipantDetail>> {
    if !session.role.may_read_participant(&id) {
        return Err(ApiError::Forbidden(format!(
            "participant {id}'s detail belongs to another household"
        )));
    }
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

async fn api_alerts(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
) -> ApiJson<AlertsAnswer> {
    let snap = hub.snapshot();
    ApiJson(AlertsAnswer {
        sources: views::Sources::of(&snap),
        alerts: alerts_for(&snap, hub.config.imbalance_spike_factor, &session.role),
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
    Extension(session): Extension<Arc<Session>>,
    ApiPath(digest): ApiPath<String>,
) -> ApiResult<ApiJson<StoredReading>> {
    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "reading digest `{digest}` is not 64 hexadecimal characters; copy it from a mint's provenance"
        )));
    }
    let reading: StoredReading = hub.settlement.get(&format!("/readings/{digest}")).await?;
    if !session.role.may_read_participant(&reading.participant) {
        return Err(ApiError::Forbidden(
            "that reading belongs to another household".into(),
        ));
    }
    Ok(ApiJson(reading))
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
        latest_interval: first.latest_result().map(|r| r.interval.key()),
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
