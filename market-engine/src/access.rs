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
//!   own gateways, orders, envelopes and its own part of each result;
//! - **gateway**: `Authorization: GridmeshGateway <payload>.<signature>`, a gateway's signed
//!   request verified against the key it enrolled with — its own operating envelopes and its
//!   household's part of each result;
//! - **public**: no credential — results and book depth as aggregates per area with
//!   pseudonymous trades ([`crate::public`]), prices, status, the topology, the market key.
//!
//! Results are served by [`ResultView`]: the full result to the operator and the auditor
//! (settlement and the dashboard read with the auditor token), a participant's own part to its
//! signed request (or its gateway's), the public view otherwise. A gateway's envelopes go to
//! the gateway's own signed request (`GridmeshGateway`, [`Caller::Gateway`]), its household's
//! signed request, the auditor and the operator.
//!
//! Bearer tokens are compared in constant time ([`check_bearer`]); enrolment tokens are looked
//! up by their SHA-256. A signed request's freshness is judged against the wall clock (not the
//! possibly accelerated market clock), since it limits how long a captured header can be
//! replayed in real time; enrolment tokens expire by the wall clock too.

use crate::api::AppState;
use crate::enrolment::{PREFIX, token_sha256};
use crate::error::MarketError;
use axum::http::{HeaderMap, header};
use gridmesh_protocol::request::{GATEWAY_SCHEME, SCHEME, SignedGatewayRequest, SignedRequest};
use gridmesh_protocol::{GatewayId, ParticipantId};
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
    /// A gateway's signed request (`GridmeshGateway …`, verified against the key it enrolled
    /// with): its own operating envelopes, and its household's part of each result (the
    /// gateway bids for its household).
    Gateway {
        /// The gateway.
        gateway: GatewayId,
        /// The household it is enrolled for.
        participant: ParticipantId,
    },
    /// No credential.
    Public,
}

/// How much of a result a caller sees ([`Caller::result_view`], [`crate::public`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultView {
    /// The whole `IntervalResult`, as signed.
    Full,
    /// The participant's own orders, trades and envelopes.
    Own(ParticipantId),
    /// Aggregates per area and pseudonymous trades (`PublicResult`).
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
        // `GridmeshGateway` before `Gridmesh`: the one scheme is a prefix of the other.
        if value.starts_with(GATEWAY_SCHEME) {
            return Self::gateway(state, value, method, path_and_query, body).await;
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

    /// A gateway's signed request, checked against the key the gateway enrolled with.
    async fn gateway(
        state: &AppState,
        value: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Caller, MarketError> {
        let request = SignedGatewayRequest::parse(value)
            .map_err(|e| MarketError::Unauthorized(e.to_string()))?;
        let gateway = request.gateway().clone();
        let Some(enrolled) = state.market.store.gateway(&gateway).await? else {
            return Err(MarketError::Unauthorized(format!(
                "gateway {gateway} is not enrolled, so its request signature cannot be checked; enrol it first (`edge-gateway enroll`)"
            )));
        };
        request
            .verify(
                &enrolled.public_key,
                wall_clock(),
                method,
                path_and_query,
                body,
            )
            .map_err(|e| MarketError::Unauthorized(e.to_string()))?;
        Ok(Caller::Gateway {
            gateway,
            participant: enrolled.participant,
        })
    }

    /// Admits the caller to `gateway`'s operating envelopes (enrolled for `owner`, `None` if
    /// it is not enrolled): the gateway itself, its household, the operator or an auditor.
    /// Another gateway or household is 403 `forbidden`, no credential 401.
    pub fn may_read_envelopes(
        &self,
        gateway: &GatewayId,
        owner: Option<&ParticipantId>,
    ) -> Result<(), MarketError> {
        match (self, owner) {
            (Caller::Gateway { gateway: g, .. }, _) if g == gateway => Ok(()),
            (Caller::Gateway { gateway: g, .. }, _) => Err(MarketError::Forbidden(format!(
                "gateway {g} may read only its own envelopes, not {gateway}'s"
            ))),
            (_, Some(owner)) => self.may_read(owner),
            (_, None) => match self.read_scope()? {
                None => Ok(()),
                Some(p) => Err(MarketError::Forbidden(format!(
                    "gateway {gateway} is not one of {p}'s gateways"
                ))),
            },
        }
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
            Caller::Gateway { gateway: g, .. } => Err(MarketError::Forbidden(format!(
                "gateway {g}'s signed request reads only its own envelopes and its household's part of results; household data needs the household's signed request"
            ))),
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

    /// How much of a cleared result the caller sees: everything (operator, auditor — and
    /// settlement, which reads with the auditor token), its own part (a participant's signed
    /// request, or its gateway's), or the public view (no credential, or an enrolment token, which only enrols).
    pub fn result_view(&self) -> ResultView {
        match self {
            Caller::Operator | Caller::Auditor => ResultView::Full,
            Caller::Participant(p) | Caller::Gateway { participant: p, .. } => {
                ResultView::Own(p.clone())
            }
            Caller::Public | Caller::Enrolment { .. } => ResultView::Public,
        }
    }

    /// Admits the caller to every participant's data at once (signed results carry every
    /// order): the operator or an auditor. No credential is 401, anyone else 403.
    pub fn may_read_all(&self, what: &str) -> Result<(), MarketError> {
        match self {
            Caller::Operator | Caller::Auditor => Ok(()),
            Caller::Public => Err(MarketError::Unauthorized(format!(
                "{what} name every participant: send `Authorization: Bearer <auditor or operator token>`; the public view is GET /results"
            ))),
            Caller::Participant(p) => Err(MarketError::Forbidden(format!(
                "{what} name every participant, so only the auditor and the operator read them; {p} reads its own part at GET /intervals/{{start}}/result or GET /results with its signed request"
            ))),
            Caller::Enrolment { .. } => Err(MarketError::Forbidden(
                "an enrolment token may only register its participant and enrol its gateway".into(),
            )),
            Caller::Gateway { gateway: g, .. } => Err(MarketError::Forbidden(format!(
                "{what} name every participant; gateway {g} reads its household's part at GET /intervals/{{start}}/result"
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
            Caller::Gateway { gateway: g, .. } => Err(MarketError::Forbidden(format!(
                "gateway {g}'s signed request cannot register anyone; registration needs the home's enrolment token or the operator token"
            ))),
            Caller::Public => Err(MarketError::Unauthorized(NEEDS_ENROLMENT_CREDENTIAL.into())),
        }
    }
}
