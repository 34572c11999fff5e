//! The HTTP routes of the trust, incident and export features (merged into [`crate::routes`],
//! behind the same access guard: every route here needs a session).
//!
//! | route | who |
//! |---|---|
//! | `GET /api/ledger/verify/{hash}` | a session; a mint's readings show their values only to admin, viewer and the household they belong to |
//! | `GET /api/ledger/search?q=`, `GET /api/ledger/page?before=&limit=` | a session (the ledger is public) |
//! | `GET /api/incidents` | a session; a household sees the grid-wide incidents and its own home's |
//! | `POST /api/incidents/{id}/ack` | admin, with the CSRF token (viewer and household: 403) |
//! | `GET /api/export/intervals.csv`, `incidents.csv`, `ledger.csv` | a session |
//! | `GET /api/export/statements.csv` | admin and viewer: every home's; a household: only its own |

use crate::auth::{Role, Session};
use crate::export::{self, LedgerQuery, Range};
use crate::hub::Hub;
use crate::incidents::{Ack, Incident};
use crate::proof::{self, EntryProof};
use crate::routes::ApiError;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use gridmesh_protocol::api::settlement::{Balances, BlockSummary};
use gridmesh_runtime::http::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The routes of this module.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/ledger/verify/{hash}", get(verify))
        .route("/api/ledger/search", get(search))
        .route("/api/ledger/page", get(page))
        .route("/api/incidents", get(incidents))
        .route("/api/incidents/{id}/ack", post(acknowledge))
        .route("/api/export/{file}", get(export_csv))
}

async fn verify(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    ApiPath(hash): ApiPath<String>,
) -> Result<ApiJson<EntryProof>, ApiError> {
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "entry hash `{hash}` is not 64 hexadecimal characters; copy it from a block or a holding"
        )));
    }
    let role = session.role.clone();
    let proof =
        proof::verify_entry(&hub, &hub.trust, &hash, |p| role.may_read_participant(p)).await?;
    if !proof.verified {
        tracing::warn!(entry = %hash, failed = ?proof.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect::<Vec<_>>(), "a ledger entry did not verify");
    }
    Ok(ApiJson(proof))
}

/// A ledger search.
#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: String,
}

/// What a ledger search found.
#[derive(Debug, Serialize)]
struct SearchAnswer {
    /// `height`, `hash` or `participant`.
    kind: &'static str,
    /// Blocks found (a height, or the block holding a hash).
    blocks: Vec<BlockSummary>,
    /// Entry hashes found (a hash, or a participant's lots and their mints).
    entries: Vec<String>,
    /// What was searched, in words.
    message: String,
}

async fn search(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<ApiJson<SearchAnswer>, ApiError> {
    let parsed = export::ledger_query(&query.q).map_err(ApiError::BadRequest)?;
    Ok(ApiJson(match parsed {
        LedgerQuery::Height(h) => {
            let b: BlockSummary = hub.settlement.get(&format!("/ledger/blocks/{h}")).await?;
            SearchAnswer {
                kind: "height",
                entries: b.entries.clone(),
                blocks: vec![b],
                message: format!("block {h}"),
            }
        }
        LedgerQuery::Hash(hash) => {
            let snap = hub.snapshot();
            if let Some(b) = snap.blocks.iter().find(|b| b.hash == hash) {
                return Ok(ApiJson(SearchAnswer {
                    kind: "hash",
                    entries: b.entries.clone(),
                    blocks: vec![b.clone()],
                    message: format!("block {} by its hash", b.header.height),
                }));
            }
            let entry: gridmesh_protocol::api::settlement::EntryView = hub
                .settlement
                .get(&format!("/ledger/entries/{hash}"))
                .await?;
            let blocks = match entry.block_height {
                Some(h) => vec![hub.settlement.get(&format!("/ledger/blocks/{h}")).await?],
                None => Vec::new(),
            };
            SearchAnswer {
                kind: "hash",
                blocks,
                entries: vec![entry.hash],
                message: "the entry with this hash".into(),
            }
        }
        LedgerQuery::Participant(id) => {
            if !session.role.may_read_participant(&id) {
                return Err(ApiError::Forbidden(format!(
                    "participant {id}'s holdings belong to another household"
                )));
            }
            let b: Balances = hub
                .settlement
                .get(&format!(
                    "/balances/{}",
                    crate::upstream::encode_component(&id)
                ))
                .await?;
            let mut entries: Vec<String> = Vec::new();
            for h in &b.holdings {
                for e in [&h.lot, &h.origin_mint] {
                    if !entries.contains(e) {
                        entries.push(e.clone());
                    }
                }
            }
            SearchAnswer {
                kind: "participant",
                blocks: Vec::new(),
                message: format!(
                    "{} ledger entries behind participant {id}'s {} lot(s)",
                    entries.len(),
                    b.holdings.len()
                ),
                entries,
            }
        }
    }))
}

/// A page of blocks below `before`.
#[derive(Debug, Deserialize)]
struct PageQuery {
    before: Option<u64>,
    limit: Option<u64>,
}

/// One page of blocks, newest first.
#[derive(Debug, Serialize)]
struct PageAnswer {
    blocks: Vec<BlockSummary>,
    /// Pass as `before` for the next (older) page; `null` at the first block.
    next_before: Option<u64>,
}

async fn page(
    State(hub): State<Arc<Hub>>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<PageAnswer>, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 50);
    let top = match q.before {
        Some(b) => b,
        None => hub
            .snapshot()
            .blocks
            .iter()
            .map(|b| b.header.height + 1)
            .max()
            .unwrap_or(0),
    };
    let low = top.saturating_sub(limit);
    let fetches = (low..top).rev().map(|h| {
        let hub = hub.clone();
        async move {
            hub.settlement
                .get::<BlockSummary>(&format!("/ledger/blocks/{h}"))
                .await
        }
    });
    let blocks = futures::future::join_all(fetches)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ApiJson(PageAnswer {
        blocks,
        next_before: (low > 0).then_some(low),
    }))
}

/// Whether `role` may see an incident: everyone sees grid-wide ones; a household sees the
/// per-home kinds only for its own home and gateways.
fn visible(incident: &Incident, role: &Role, own_gateways: &[String]) -> bool {
    let Some(own) = role.household() else {
        return true;
    };
    match incident.kind.as_str() {
        "gateway_offline" | "quarantine" | "envelope_violation" => {
            let s = incident.subject.as_str();
            s == own
                || own_gateways.iter().any(|g| {
                    s == g
                        || s.strip_prefix(g.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                })
        }
        _ => true,
    }
}

/// The incidents a session may see.
pub fn incidents_for(hub: &Hub, role: &Role) -> Vec<Incident> {
    let snap = hub.snapshot();
    let own_gateways: Vec<String> = match role.household() {
        Some(own) => snap
            .gateways
            .iter()
            .filter(|g| g.participant.as_str() == own)
            .map(|g| g.gateway.to_string())
            .collect(),
        None => Vec::new(),
    };
    hub.incidents
        .list()
        .into_iter()
        .filter(|i| visible(i, role, &own_gateways))
        .collect()
}

/// Active incidents nobody acknowledged yet, as `role` sees them (the nav badge).
pub fn unacknowledged(hub: &Hub, role: &Role) -> usize {
    incidents_for(hub, role)
        .iter()
        .filter(|i| i.is_active() && i.acknowledged_by.is_none())
        .count()
}

/// `GET /api/incidents`.
#[derive(Debug, Serialize)]
struct IncidentsAnswer {
    incidents: Vec<Incident>,
    /// Active and not acknowledged.
    unacknowledged: usize,
    /// Whether this user may acknowledge.
    may_acknowledge: bool,
}

async fn incidents(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
) -> ApiJson<IncidentsAnswer> {
    let list = incidents_for(&hub, &session.role);
    let unacknowledged = list
        .iter()
        .filter(|i| i.is_active() && i.acknowledged_by.is_none())
        .count();
    ApiJson(IncidentsAnswer {
        incidents: list,
        unacknowledged,
        may_acknowledge: session.role.is_admin(),
    })
}

async fn acknowledge(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Ack>, ApiError> {
    if !session.role.is_admin() {
        return Err(ApiError::Forbidden(format!(
            "acknowledging an incident is an operator action; {} users may not take it",
            session.role.name()
        )));
    }
    match hub
        .incidents
        .acknowledge(&id, &session.user, chrono::Utc::now())
    {
        Ok(Some(ack)) => {
            tracing::info!(user = %session.user, incident = %id, "incident acknowledged");
            hub.wake("incident");
            Ok(ApiJson(ack))
        }
        Ok(None) => Err(ApiError::NotFound(format!(
            "no incident {id}; it may have aged out — reload the alerts page"
        ))),
        Err(e) => Err(ApiError::Unavailable(format!(
            "the acknowledgement could not be stored: {e}"
        ))),
    }
}

/// The range of an export.
#[derive(Debug, Deserialize)]
struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn export_csv(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    ApiPath(file): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let range = Range::parse(q.from.as_deref(), q.to.as_deref()).map_err(ApiError::BadRequest)?;
    let snap = hub.snapshot();
    let body = match file.as_str() {
        "intervals.csv" => export::intervals_csv(&snap.results, range),
        "statements.csv" => export::statements_csv(
            snap.statements
                .iter()
                .filter(|s| session.role.may_read_participant(s.participant.as_str())),
            range,
        ),
        "incidents.csv" => export::incidents_csv(&incidents_for(&hub, &session.role), range),
        "ledger.csv" => export::ledger_csv(&snap.blocks, range),
        other => {
            return Err(ApiError::NotFound(format!(
                "no export `{other}`; choose intervals.csv, statements.csv, incidents.csv or ledger.csv"
            )));
        }
    };
    let disposition = format!("attachment; filename=\"gridmesh-{file}\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}
