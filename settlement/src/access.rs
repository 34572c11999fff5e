//! Who is calling: the roles of the access model (operator, auditor, participant, public) and
//! the checks every REST handler makes with them.
//!
//! - **operator**: `Authorization: Bearer <operator_token>` — quarantine decisions and every
//!   read;
//! - **auditor**: `Authorization: Bearer <auditor_token>` — every read, no write (a write with
//!   it answers 403 `forbidden`);
//! - **participant**: `Authorization: Gridmesh <payload>.<signature>`, a signed request
//!   (`gridmesh_protocol::request`) verified against the participant's key as the market
//!   registered it (settlement's copy, refreshed by the poller) — its own data only;
//! - **public**: no credential — ledger block headers (with their authority signatures and
//!   entry hashes), aggregates, health. Ledger entries name participants: they go to the
//!   participants they name, auditors and the operator ([`Caller::may_read_entry`]).
//!
//! Bearer tokens are compared in constant time ([`check_bearer`]). A signed request's
//! freshness is judged against the wall clock (not the possibly accelerated market clock),
//! since it limits how long a captured header can be replayed in real time.

use crate::api::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use gridmesh_protocol::ParticipantId;
use gridmesh_protocol::api::settlement::EntryBody;
use gridmesh_protocol::request::{SCHEME, SignedRequest};
use gridmesh_runtime::http::{ApiError, check_bearer};

/// The role a request proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator's bearer token.
    Operator,
    /// The auditor's bearer token: reads everything, writes nothing.
    Auditor,
    /// A participant's signed request: its own data only.
    Participant(ParticipantId),
    /// No credential.
    Public,
}

/// What a protected endpoint tells a caller without a credential.
const NEEDS_CREDENTIAL: &str = "this endpoint serves household data: send the household's signed request (`Authorization: Gridmesh <payload>.<signature>`, see docs/protocol.md), or `Authorization: Bearer <auditor or operator token>`";

impl Caller {
    /// Identifies the caller from the request's `Authorization` header. `body` is the request
    /// body a signed request covers (empty for the `GET`s that need one).
    ///
    /// A credential that is present but wrong answers 401 `unauthorized`: a bearer token that
    /// is neither the operator's nor the auditor's, a malformed or stale signed request, one
    /// for another request, an unregistered participant or a signature by another key.
    pub fn identify(
        state: &AppState,
        headers: &HeaderMap,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Caller, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Public);
        };
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not visible ASCII"))?;
        if value.starts_with("Bearer ") {
            return Self::bearer(state, headers);
        }
        if value.starts_with(SCHEME) {
            return Self::signed(state, value, method, path_and_query, body);
        }
        Err(ApiError::unauthorized(format!(
            "unknown Authorization scheme; {NEEDS_CREDENTIAL}"
        )))
    }

    /// A bearer token: the operator's or the auditor's, each compared in constant time.
    fn bearer(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let configured = |t: &Option<String>| t.as_deref().filter(|t| !t.is_empty()).is_some();
        if let Some(op) = state.operator_token.as_deref().filter(|t| !t.is_empty()) {
            if check_bearer(headers, op).is_ok() {
                return Ok(Caller::Operator);
            }
        }
        if let Some(aud) = state.auditor_token.as_deref().filter(|t| !t.is_empty()) {
            if check_bearer(headers, aud).is_ok() {
                return Ok(Caller::Auditor);
            }
        }
        let hint = match (
            configured(&state.operator_token),
            configured(&state.auditor_token),
        ) {
            (false, false) => "this settlement has no operator_token or auditor_token configured",
            _ => "check the operator_token / auditor_token in settlement's config",
        };
        Err(ApiError::unauthorized(format!(
            "the bearer token is neither this settlement's operator token nor its auditor token; {hint}"
        )))
    }

    /// A participant's signed request, checked against its registered key.
    fn signed(
        state: &AppState,
        value: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Caller, ApiError> {
        let request =
            SignedRequest::parse(value).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let participant = request.participant().clone();
        if state.service.participant_key(&participant).is_none() {
            return Err(ApiError::unauthorized(format!(
                "participant {participant} is not registered with the market (settlement learns keys from the market's registry), so its signature cannot be checked"
            )));
        }
        let now = chrono::Utc::now().timestamp();
        let signed_at = request.proof.signed_at;
        // The key valid when the request was signed; a rotated-out key is named as such.
        let result = state
            .service
            .participant_key_at(&participant, signed_at)
            .map(|key| request.verify(&key, now, method, path_and_query, body));
        match result {
            Some(Ok(())) => {}
            failed => {
                for (old, until) in state.service.replaced_keys(&participant, signed_at) {
                    if request
                        .verify(&old, now, method, path_and_query, body)
                        .is_ok()
                    {
                        return Err(ApiError::unauthorized(format!(
                            "key_mismatch: the request is signed with a key of {participant} that was replaced at {}; sign with the current key",
                            crate::service::unix_time(until)
                        )));
                    }
                }
                return Err(ApiError::unauthorized(match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => format!(
                        "participant {participant} has no key valid at {signed_at} (when the request was signed)"
                    ),
                }));
            }
        }
        Ok(Caller::Participant(participant))
    }

    /// Whether the caller reads everything (operator or auditor).
    pub fn reads_all(&self) -> bool {
        matches!(self, Caller::Operator | Caller::Auditor)
    }

    /// The participant whose data the caller may read: `None` = everyone's (operator,
    /// auditor), `Some(p)` = only `p`'s. A caller without a credential gets 401.
    pub fn scope(&self) -> Result<Option<&ParticipantId>, ApiError> {
        match self {
            Caller::Operator | Caller::Auditor => Ok(None),
            Caller::Participant(p) => Ok(Some(p)),
            Caller::Public => Err(ApiError::unauthorized(NEEDS_CREDENTIAL)),
        }
    }

    /// Admits the caller to `owner`'s data: the household itself, the operator or an
    /// auditor. Another participant answers 403 `forbidden`, no credential 401.
    pub fn may_read(&self, owner: &str) -> Result<(), ApiError> {
        match self.scope()? {
            None => Ok(()),
            Some(p) if p.as_str() == owner => Ok(()),
            Some(p) => Err(ApiError::forbidden(format!(
                "{p} may read only its own data, not {owner}'s"
            ))),
        }
    }

    /// Admits the caller to a ledger entry: the participants it names (a mint's seller and
    /// buyer, a transfer's sender and recipient, a retirement's holder), the operator or an
    /// auditor. Another participant answers 403 `forbidden`, no credential 401. Block headers
    /// stay public: a holder checks its entry's inclusion proof against the public, signed
    /// block header's Merkle root.
    pub fn may_read_entry(&self, body: &EntryBody) -> Result<(), ApiError> {
        let named: Vec<&ParticipantId> = match body {
            EntryBody::Mint(m) => vec![&m.seller, &m.buyer],
            EntryBody::Transfer(t) => vec![&t.from, &t.to],
            EntryBody::Retire(r) => vec![&r.holder],
        };
        match self.scope()? {
            None => Ok(()),
            Some(p) if named.contains(&p) => Ok(()),
            Some(p) => Err(ApiError::forbidden(format!(
                "{p} is not a party to this {} entry; a participant reads only the entries that name it (the auditor reads all)",
                body.kind()
            ))),
        }
    }

    /// Admits only the operator (quarantine decisions). An auditor or a participant answers
    /// 403 `forbidden`, no credential 401; without a configured operator token the endpoint
    /// is disabled (403 `operator_disabled`).
    pub fn operator_only(&self, state: &AppState) -> Result<(), ApiError> {
        if state.operator_token.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_disabled",
                "no operator token is configured; set operator_token in settlement's config",
            ));
        }
        match self {
            Caller::Operator => Ok(()),
            Caller::Auditor => Err(ApiError::forbidden(
                "the auditor token reads only; this action needs the operator's token",
            )),
            Caller::Participant(p) => Err(ApiError::forbidden(format!(
                "{p} is a participant; this action needs the operator's token"
            ))),
            Caller::Public => Err(ApiError::unauthorized(
                "this action needs the operator's token: send `Authorization: Bearer <operator token>`",
            )),
        }
    }
}

/// Refuses a write made with the auditor's token (403 `forbidden`): writes that are
/// authorised by their own signature (readings, token operations) stay open, but the auditor
/// role changes nothing.
pub fn refuse_auditor_write(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(aud) = state.auditor_token.as_deref().filter(|t| !t.is_empty()) {
        if check_bearer(headers, aud).is_ok() {
            return Err(ApiError::forbidden(
                "the auditor token reads only; it may not submit or change anything",
            ));
        }
    }
    Ok(())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| parts.uri.path());
        // Only bodiless reads take a `Caller`; a signed request covers an empty body.
        Caller::identify(
            state,
            &parts.headers,
            parts.method.as_str(),
            path_and_query,
            b"",
        )
    }
}
