//! Who is calling: the roles of the access model (docs: market-engine/README.md, "Who may
//! call what") and the checks the REST handlers make with them.
//!
//! - **operator**: `Authorization: Bearer <operator_token>` — topology, limits,
//!   registrations, every read;
//! - **auditor**: `Authorization: Bearer <auditor_token>` — every read, no write (a write
//!   answers 403 `forbidden`);
//! - **enrolment**: `Authorization: Bearer gme_…`, a one-time token ([`crate::enrolment`]) —
//!   only `POST /participants` and `POST /gateways` for its participant;
//! - **participant**: `Authorization: Gridmesh <payload>.<signature>`, a signed request
//!   (`gridmesh_protocol::request`) verified against the participant's registered key — its
//!   own gateways and orders only;
//! - **public**: no credential — results, prices, book depth, status, the market key.
//!
//! Bearer tokens are compared in constant time ([`check_bearer`]); enrolment tokens are looked
//! up by their SHA-256. A signed request's freshness is judged against the wall clock (not the
//! possibly accelerated market clock), since it limits how long a captured header can be
//! replayed in real time; enrolment tokens expire by the wall clock too.

use crate::api::AppState;
use crate::enrolment::{PREFIX, token_sha256};
use crate::error::MarketError;
use axum::http::{HeaderMap, header};
use gridmesh_protocol::ParticipantId;
use gridmesh_protocol::request::{SCHEME, SignedRequest};
use gridmesh_runtime::http::check_bearer;

/// The role a request proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator's bearer token.
    Operator,
    /// The auditor's bearer token: reads everything, writes nothing.
    Auditor,
    /// A valid, unused, unexpired enrolment token for this participant.
    Enrolment {
        /// The participant it may enrol.
        participant: ParticipantId,
        /// The token's SHA-256 (hex), to use it up.
        token_sha256: String,
    },
    /// A participant's signed request: its own data only.
    Participant(ParticipantId),
    /// No credential.
    Public,
}

/// What a household-data endpoint tells a caller without a credential.
pub const NEEDS_READ_CREDENTIAL: &str = "this endpoint serves household data: send the household's signed request (`Authorization: Gridmesh <payload>.<signature>`, see docs/protocol.md), or `Authorization: Bearer <auditor or operator token>`";

/// What the registration endpoints tell a caller without a credential.
pub const NEEDS_ENROLMENT_CREDENTIAL: &str = "registration needs the home's one-time enrolment token (`market-engine enrolment-token --participant ID`) or the operator token: send `Authorization: Bearer <token>`";

fn wall_clock() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Caller {
    /// Identifies the caller from the request's `Authorization` header. `body` is the request
    /// body a signed request covers (empty for `GET`).
    ///
    /// A credential that is present but wrong answers 401 `unauthorized`: a bearer token that
    /// is neither the operator's, the auditor's nor a usable enrolment token; a malformed or
    /// stale signed request, one for another request, an unregistered participant or a
    /// signature by another key.
    pub async fn identify(
        state: &AppState,
        headers: &HeaderMap,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Caller, MarketError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Public);
        };
        let value = value.to_str().map_err(|_| {
            MarketError::Unauthorized("the Authorization header is not visible ASCII".into())
        })?;
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Self::bearer(state, headers, token.trim()).await;
        }
        if value.starts_with(SCHEME) {
            return Self::signed(state, value, method, path_and_query, body);
        }
        Err(MarketError::Unauthorized(format!(
            "unknown Authorization scheme; {NEEDS_READ_CREDENTIAL}"
        )))
    }

    async fn bearer(
        state: &AppState,
        headers: &HeaderMap,
        token: &str,
    ) -> Result<Caller, MarketError> {
        let config = &state.market.config;
        if let Some(op) = config.operator_token.as_deref().filter(|t| !t.is_empty()) {
            if check_bearer(headers, op).is_ok() {
                return Ok(Caller::Operator);
            }
        }
        if let Some(aud) = config.auditor_token.as_deref().filter(|t| !t.is_empty()) {
            if check_bearer(headers, aud).is_ok() {
                return Ok(Caller::Auditor);
            }
        }
        if token.starts_with(PREFIX) {
            let hash = token_sha256(token);
            let Some(row) = state.market.store.enrolment_token(&hash).await? else {
                return Err(MarketError::Unauthorized(
                    "this enrolment token was never issued by this market; ask the operator for a new one (`market-engine enrolment-token`)".into(),
                ));
            };
            if let Some(used) = row.used_at {
                return Err(MarketError::Unauthorized(format!(
                    "this enrolment token was used up at {used} (Unix seconds) when {}'s gateway was enrolled; tokens are single use — ask the operator for a new one",
                    row.participant
                )));
            }
            let now = wall_clock();
            if now >= row.expires_at {
                return Err(MarketError::Unauthorized(format!(
                    "this enrolment token expired at {} (Unix seconds); ask the operator for a new one",
                    row.expires_at
                )));
            }
            return Ok(Caller::Enrolment {
                participant: row.participant,
                token_sha256: hash,
            });
        }
        Err(MarketError::Unauthorized(
            "the bearer token is not this market's operator or auditor token, nor an enrolment token (`gme_…`)".into(),
        ))
    }

    fn signed(
        state: &AppState,
        value: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Caller, MarketError> {
        let request =
            SignedRequest::parse(value).map_err(|e| MarketError::Unauthorized(e.to_string()))?;
        let participant = request.participant().clone();
        let Some(registered) = state.market.participant(&participant) else {
            return Err(MarketError::Unauthorized(format!(
                "participant {participant} is not registered, so its request signature cannot be checked"
            )));
        };
        request
            .verify(
                &registered.public_key,
                wall_clock(),
                method,
                path_and_query,
                body,
            )
            .map_err(|e| MarketError::Unauthorized(e.to_string()))?;
        Ok(Caller::Participant(participant))
    }

    /// The participant whose household data the caller may read: `None` = everyone's
    /// (operator, auditor), `Some(p)` = only `p`'s. No credential is 401; an enrolment token
    /// is 403 (it only enrols).
    pub fn read_scope(&self) -> Result<Option<&ParticipantId>, MarketError> {
        match self {
            Caller::Operator | Caller::Auditor => Ok(None),
            Caller::Participant(p) => Ok(Some(p)),
            Caller::Public => Err(MarketError::Unauthorized(NEEDS_READ_CREDENTIAL.into())),
            Caller::Enrolment { .. } => Err(MarketError::Forbidden(
                "an enrolment token may only register its participant and enrol its gateway".into(),
            )),
        }
    }

    /// Admits the caller to `owner`'s household data: the household itself, the operator or
    /// an auditor. Another participant answers 403 `forbidden`, no credential 401.
    pub fn may_read(&self, owner: &ParticipantId) -> Result<(), MarketError> {
        match self.read_scope()? {
            None => Ok(()),
            Some(p) if p == owner => Ok(()),
            Some(p) => Err(MarketError::Forbidden(format!(
                "{p} may read only its own data, not {owner}'s"
            ))),
        }
    }

    /// Admits a registration of `participant` (`POST /participants`, `POST /gateways`): the
    /// operator, or an enrolment token issued for that participant. No credential is 401
    /// `unauthorized`; the auditor, a participant's signed request or another participant's
    /// token is 403 `forbidden`.
    pub fn may_enrol(&self, participant: &ParticipantId) -> Result<(), MarketError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Enrolment { participant: p, .. } if p == participant => Ok(()),
            Caller::Enrolment { participant: p, .. } => Err(MarketError::Forbidden(format!(
                "this enrolment token enrols `{p}` only, not `{participant}`"
            ))),
            Caller::Auditor => Err(MarketError::Forbidden(
                "the auditor token reads only; registration needs the home's enrolment token or the operator token".into(),
            )),
            Caller::Participant(p) => Err(MarketError::Forbidden(format!(
                "{p}'s signed request cannot register anyone; registration needs the home's enrolment token or the operator token"
            ))),
            Caller::Public => Err(MarketError::Unauthorized(NEEDS_ENROLMENT_CREDENTIAL.into())),
        }
    }
}
