//! `GET /statements/monthly/{participant}/{month}`: the monthly statement as JSON (the
//! default), CSV (`?format=csv`) or a printable HTML page (`?format=html`).
//!
//! Who may call it: the household itself (its participant's signed request, `Gridmesh …`), one
//! of its enrolled gateways (the gateway's signed request, `GridmeshGateway …`, so
//! `edge-gateway statement` works with the key the gateway already holds), the auditor and the
//! operator. Another household or gateway gets 403, no credential 401.

use crate::access::Caller;
use crate::api::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use gridmesh_protocol::ParticipantId;
use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::api::settlement::MonthlyStatement;
use gridmesh_protocol::request::GATEWAY_SCHEME;
use gridmesh_runtime::http::{ApiError, ApiJson, ApiPath, ApiQuery};
use serde::Deserialize;
use utoipa::IntoParams;

/// The answer's format.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `MonthlyStatement` JSON.
    #[default]
    Json,
    /// RFC 4180 CSV, integer units.
    Csv,
    /// A self-contained printable HTML page.
    Html,
}

/// The query of the monthly statement.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MonthlyQuery {
    /// `json` (default), `csv` or `html`.
    #[param(inline)]
    pub format: Option<Format>,
}

/// Identifies the caller: a gateway's signed request stands for the household it is enrolled
/// for; anything else is checked as on every other endpoint ([`Caller::identify`]).
async fn caller(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<Caller, ApiError> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(value) = authorization.filter(|v| v.starts_with(&format!("{GATEWAY_SCHEME} "))) else {
        return Caller::identify(state, headers, "GET", path, b"");
    };
    let gateway = state
        .service
        .upload_sender(Some(value), "GET", path, b"")
        .await
        .map_err(|e| {
            ApiError::unauthorized(format!("the gateway's signed request was refused: {e}"))
        })?;
    let owner = state.service.gateway_owner(gateway.as_str()).ok_or_else(|| {
        ApiError::unauthorized(format!(
            "gateway {gateway} is not enrolled for any household; enrol it with the market first"
        ))
    })?;
    Ok(Caller::Participant(owner))
}

#[utoipa::path(get, path = "/statements/monthly/{participant}/{month}", tag = "statements",
    summary = "A household's monthly statement: JSON, CSV or printable HTML (the household or its gateway, auditor, operator)",
    description = "Every settled interval of the calendar month (UTC; an interval belongs to the month its start is in) with the household's trade and imbalance lines, fees, tokens, tariffs and the digests of its signed readings; totals (equal to the sum of the lines and of the per-interval statements of GET /statements); the community share (import from neighbours, i.e. tokens, vs from the grid); and the savings against a utility-only baseline at the same tariffs (estimated intervals, without readings, left out). `format=csv` answers text/csv, `format=html` a printable page. Callers: the household's signed request, the signed request of a gateway enrolled for it, the auditor, the operator; another household is refused (403).",
    params(
        ("participant" = String, Path, description = "the household's participant id"),
        ("month" = String, Path, description = "the month, YYYY-MM (UTC)"),
        MonthlyQuery,
    ),
    security(("participant" = []), ("gateway" = []), ("auditor" = []), ("operator" = [])),
    responses(
        (status = 200, description = "the statement: JSON, or with `format` RFC 4180 CSV or a printable HTML page", content(
            (MonthlyStatement = "application/json"),
            (String = "text/csv"),
            (String = "text/html"),
        )),
        (status = 400, description = "bad_request (not a YYYY-MM month, a bad participant id) | invalid_query | invalid_path", body = ErrorBody),
        (status = 401, description = "unauthorized: no or an invalid credential", body = ErrorBody),
        (status = 403, description = "forbidden: another household's statement", body = ErrorBody),
        (status = 503, description = "storage_unavailable", body = ErrorBody),
    ))]
pub async fn get_monthly(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ApiPath((participant, month)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<MonthlyQuery>,
) -> Result<Response, ApiError> {
    let caller = caller(&s, &headers, &uri).await?;
    caller.may_read(&participant)?;
    let participant = ParticipantId::new(participant.as_str()).map_err(|e| {
        ApiError::bad_request(format!("`{participant}` is not a participant id: {e}"))
    })?;
    let statement = super::load(&s.service, &participant, &month).await?;
    Ok(match q.format.unwrap_or_default() {
        Format::Json => ApiJson(statement).into_response(),
        Format::Csv => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"statement-{participant}-{month}.csv\""),
                ),
            ],
            super::csv(&statement),
        )
            .into_response(),
        Format::Html => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            super::html(&statement),
        )
            .into_response(),
    })
}
