//! What settlement answers for each submitted reading (`POST /readings`, one item per
//! submitted envelope, in order).

use serde::{Deserialize, Serialize};

/// What happened to one submitted reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadingOutcome {
    /// The reading's idempotency key (`<gateway>/<device>/<interval start>`), if the payload
    /// decoded.
    pub key: Option<String>,
    /// Whether the reading is stored.
    pub status: ReadingStatus,
    /// The reason code when not plainly accepted.
    pub code: Option<ReasonCode>,
    /// The reason sentence when not plainly accepted.
    pub reason: Option<String>,
}

/// Where a submitted reading ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReadingStatus {
    /// Verified and stored (possibly flagged or late: see the code).
    Accepted,
    /// The same reading was stored before; counted once.
    Duplicate,
    /// Refused; kept verbatim in quarantine with the reason.
    Quarantined,
}

impl ReadingStatus {
    /// Whether settlement holds the reading (or its verbatim copy in quarantine), so the sender
    /// may delete it from its outbox.
    pub fn is_stored(self) -> bool {
        // Every status means settlement has it; spelled out so a new status must decide.
        match self {
            ReadingStatus::Accepted | ReadingStatus::Duplicate | ReadingStatus::Quarantined => true,
        }
    }

    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadingStatus::Accepted => "accepted",
            ReadingStatus::Duplicate => "duplicate",
            ReadingStatus::Quarantined => "quarantined",
        }
    }
}

/// Why a reading was not accepted as is: the stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// Not JSON, not an envelope, or the payload does not decode as a reading.
    Malformed,
    /// The gateway is not registered with the market.
    UnknownGateway,
    /// Signed by a key other than the gateway's registered key.
    KeyMismatch,
    /// The signature does not verify.
    BadSignature,
    /// A different reading with the same idempotency key was stored before.
    Conflict,
    /// The interval has not ended yet.
    FutureInterval,
    /// The interval is older than the horizon.
    TooOld,
    /// The sequence number does not increase with the interval.
    SequenceNotIncreasing,
    /// A cumulative register went down without a signed reset flag.
    RegisterDecreased,
    /// The interval was already settled when the reading arrived.
    Late,
    /// Export above the registered inverter plus battery capability.
    ImplausibleExport,
    /// PV output while the sun was below the horizon.
    PvAtNight,
    /// A `gridmesh/reading/v2` signed for another market zone than settlement's.
    WrongZone,
    /// A legacy `gridmesh/reading/v1` (no zone) at a settlement with a zone configured: stored
    /// flagged until an operator accepts it.
    UnzonedReading,
}

impl ReasonCode {
    /// The code as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Malformed => "malformed",
            ReasonCode::UnknownGateway => "unknown_gateway",
            ReasonCode::KeyMismatch => "key_mismatch",
            ReasonCode::BadSignature => "bad_signature",
            ReasonCode::Conflict => "conflict",
            ReasonCode::FutureInterval => "future_interval",
            ReasonCode::TooOld => "too_old",
            ReasonCode::SequenceNotIncreasing => "sequence_not_increasing",
            ReasonCode::RegisterDecreased => "register_decreased",
            ReasonCode::Late => "late",
            ReasonCode::ImplausibleExport => "implausible_export",
            ReasonCode::PvAtNight => "pv_at_night",
            ReasonCode::WrongZone => "wrong_zone",
            ReasonCode::UnzonedReading => "unzoned_reading",
        }
    }

    /// Every code, in declaration order.
    pub const ALL: [ReasonCode; 14] = [
        ReasonCode::Malformed,
        ReasonCode::UnknownGateway,
        ReasonCode::KeyMismatch,
        ReasonCode::BadSignature,
        ReasonCode::Conflict,
        ReasonCode::FutureInterval,
        ReasonCode::TooOld,
        ReasonCode::SequenceNotIncreasing,
        ReasonCode::RegisterDecreased,
        ReasonCode::Late,
        ReasonCode::ImplausibleExport,
        ReasonCode::PvAtNight,
        ReasonCode::WrongZone,
        ReasonCode::UnzonedReading,
    ];

    /// Parses a stored code (the inverse of [`ReasonCode::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether an operator may accept a reading quarantined for this reason (only flagged,
    /// correctly signed readings can be accepted).
    pub fn operator_acceptable(self) -> bool {
        matches!(
            self,
            ReasonCode::ImplausibleExport | ReasonCode::PvAtNight | ReasonCode::UnzonedReading
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_as_settlement_writes_them() {
        let json = r#"[{"key":"gw-h1/meter/2026-06-21T12:00:00Z","status":"accepted","code":null,"reason":null},
            {"key":null,"status":"quarantined","code":"malformed","reason":"not JSON"}]"#;
        let outcomes: Vec<ReadingOutcome> = serde_json::from_str(json).unwrap();
        assert_eq!(outcomes[0].status, ReadingStatus::Accepted);
        assert_eq!(outcomes[1].code, Some(ReasonCode::Malformed));
        assert!(outcomes.iter().all(|o| o.status.is_stored()));
        let again = serde_json::to_string(&outcomes[1]).unwrap();
        assert!(again.contains(r#""status":"quarantined""#));
        assert_eq!(ReasonCode::PvAtNight.as_str(), "pv_at_night");
        for c in ReasonCode::ALL {
            assert_eq!(ReasonCode::parse(c.as_str()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        assert_eq!(ReasonCode::parse("nope"), None);
    }
}
