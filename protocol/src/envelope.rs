//! Dynamic operating envelopes: the most energy one connection point may export to and import
//! from the grid in one interval, signed by the market, and what settlement measured against them.
//!
//! The market computes an envelope for every enrolled gateway from each interval's clearing
//! (cleared positions first, then the branches' remaining headroom shared by a documented rule;
//! see market-engine/README.md). If every home stays inside its envelope, no branch limit and
//! no utility limit is exceeded. The gateway keeps its home inside the envelope (battery first,
//! then PV curtailment) and falls back to a configured *default envelope* whenever it holds no
//! valid, current envelope (market unreachable, envelope late, signature bad), as the default
//! DER control of IEEE 2030.5 CSIP-AUS does.
//!
//! # Signed layout `gridmesh/envelope/v1` (225 bytes)
//!
//! | offset | bytes | field | encoding |
//! |---|---|---|---|
//! | 0 | 20 | tag | ASCII `gridmesh/envelope/v1` |
//! | 20 | 32 | zone | identifier (zero-padded ASCII) |
//! | 52 | 32 | gateway | identifier |
//! | 84 | 32 | participant | identifier |
//! | 116 | 32 | node | identifier |
//! | 148 | 8 | interval_start | i64, Unix seconds |
//! | 156 | 2 | interval_minutes | u16 |
//! | 158 | 8 | export_limit_wh | i64, ≥ 0 |
//! | 166 | 8 | import_limit_wh | i64, ≥ 0 |
//! | 174 | 1 | basis | u8: 1 cleared, 2 operator override only |
//! | 175 | 32 | result_digest | SHA-256 of the signed result body it was computed with |
//! | 207 | 8 | issued_at | i64, Unix seconds (market clock) |
//! | 215 | 10 | reserved | zero bytes |
//!
//! # Signed layout `gridmesh/result/v1` (126 bytes)
//!
//! The market signs a short attestation of each result's exact JSON body bytes:
//!
//! | offset | bytes | field | encoding |
//! |---|---|---|---|
//! | 0 | 18 | tag | ASCII `gridmesh/result/v1` |
//! | 18 | 32 | zone | identifier |
//! | 50 | 8 | interval_start | i64, Unix seconds |
//! | 58 | 2 | interval_minutes | u16 |
//! | 60 | 32 | body_digest | SHA-256 of the body bytes |
//! | 92 | 8 | cleared_at | i64, Unix seconds |
//! | 100 | 26 | reserved | zero bytes |

use crate::ids::{GatewayId, NodeId, ParticipantId};
use crate::interval::Interval;
use crate::keys::SigningKeyPair;
use crate::layout::{LayoutError, Reader, Writer};
use crate::market::IntervalResult;
use crate::signing::{PublicKey, Signable, SignedEnvelope, SigningError};
use crate::units::Wh;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Average power, in W, of `energy` spread evenly over `interval` (rounded toward zero).
pub fn average_w(energy: Wh, interval: &Interval) -> i64 {
    let seconds = interval.length().seconds().max(1);
    energy.0.saturating_mul(3_600) / seconds
}

/// Why an envelope's limits were set as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeBasis {
    /// Computed from the interval's clearing (cleared positions plus a share of the headroom).
    Cleared,
    /// No clearing result was available; only the branch limits (and operator overrides) apply.
    LimitsOnly,
}

impl EnvelopeBasis {
    fn code(self) -> u8 {
        match self {
            EnvelopeBasis::Cleared => 1,
            EnvelopeBasis::LimitsOnly => 2,
        }
    }
}

/// One connection point's limits for one interval, as carried inside the [`IntervalResult`]
/// (defined with it in `market`, so that `market` needs nothing from this module).
pub use crate::market::EnvelopeAllocation;

/// A signed operating envelope for one gateway and interval (`gridmesh/envelope/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperatingEnvelope {
    /// The market zone that issued it.
    pub zone: String,
    /// The gateway it applies to.
    pub gateway: GatewayId,
    /// The household behind the gateway.
    pub participant: ParticipantId,
    /// The household's grid node.
    pub node: NodeId,
    /// The interval it applies to.
    pub interval: Interval,
    /// Most energy the connection point may export in the interval.
    pub export_limit: Wh,
    /// Most energy the connection point may import in the interval.
    pub import_limit: Wh,
    /// What it was computed from.
    pub basis: EnvelopeBasis,
    /// SHA-256 of the signed result body it was computed with (zeros for `LimitsOnly`).
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    #[serde(with = "crate::signing::hex32")]
    pub result_digest: [u8; 32],
    /// When the market issued it (whole seconds).
    pub issued_at: DateTime<Utc>,
}

impl OperatingEnvelope {
    /// The export limit as average power over the interval, W.
    pub fn export_limit_w(&self) -> i64 {
        average_w(self.export_limit, &self.interval)
    }

    /// The import limit as average power over the interval, W.
    pub fn import_limit_w(&self) -> i64 {
        average_w(self.import_limit, &self.interval)
    }
}

fn zone_field(r: &mut Reader<'_>) -> Result<String, LayoutError> {
    r.text::<{ crate::layout::ID_WIDTH }>("zone")
}

fn check_zone(zone: &str) -> bool {
    !zone.is_empty() && zone.len() <= crate::layout::ID_WIDTH && zone.is_ascii()
}

fn unix_time(r: &Reader<'_>, field: &'static str, secs: i64) -> Result<DateTime<Utc>, LayoutError> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .ok_or_else(|| r.bad(field, format!("{secs} is not a valid time")))
}

impl Signable for OperatingEnvelope {
    const TAG: &'static str = "gridmesh/envelope/v1";
    const LEN: usize = 20 + 32 * 4 + 8 + 2 + 8 + 8 + 1 + 32 + 8 + 10;

    fn encode(&self) -> Vec<u8> {
        debug_assert!(check_zone(&self.zone), "zone must be a valid identifier");
        let mut w = Writer::new(Self::TAG, Self::LEN);
        w.id(&self.zone)
            .id(self.gateway.as_str())
            .id(self.participant.as_str())
            .id(self.node.as_str())
            .i64(self.interval.start_unix())
            .u16(self.interval.length().minutes())
            .i64(self.export_limit.0)
            .i64(self.import_limit.0)
            .u8(self.basis.code())
            .bytes(&self.result_digest)
            .i64(self.issued_at.timestamp())
            .bytes(&[0u8; 10]);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        let zone = zone_field(&mut r)?;
        if !check_zone(&zone) {
            return Err(r.bad("zone", "empty"));
        }
        let gateway = r.id("gateway", GatewayId::new)?;
        let participant = r.id("participant", ParticipantId::new)?;
        let node = r.id("node", NodeId::new)?;
        let start = r.i64();
        let minutes = r.u16();
        let interval =
            Interval::from_unix(start, minutes.into()).map_err(|e| r.bad("interval_start", e))?;
        let export_limit = Wh(r.non_negative("export_limit_wh")?);
        let import_limit = Wh(r.non_negative("import_limit_wh")?);
        let basis = match r.u8() {
            1 => EnvelopeBasis::Cleared,
            2 => EnvelopeBasis::LimitsOnly,
            other => {
                return Err(r.bad(
                    "basis",
                    format!("{other} is neither 1 (cleared) nor 2 (limits only)"),
                ));
            }
        };
        let result_digest = r.digest();
        let issued = r.i64();
        let issued_at = unix_time(&r, "issued_at", issued)?;
        if r.take_reserved::<10>().iter().any(|&b| b != 0) {
            return Err(r.bad("reserved", "must be zero"));
        }
        Ok(OperatingEnvelope {
            zone,
            gateway,
            participant,
            node,
            interval,
            export_limit,
            import_limit,
            basis,
            result_digest,
            issued_at,
        })
    }
}

/// The market's signature over one result body (`gridmesh/result/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultAttestation {
    /// The zone that cleared the interval.
    pub zone: String,
    /// The interval.
    pub interval: Interval,
    /// SHA-256 of the exact JSON body bytes.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    #[serde(with = "crate::signing::hex32")]
    pub body_digest: [u8; 32],
    /// When the interval was cleared (whole seconds).
    pub cleared_at: DateTime<Utc>,
}

impl Signable for ResultAttestation {
    const TAG: &'static str = "gridmesh/result/v1";
    const LEN: usize = 18 + 32 + 8 + 2 + 32 + 8 + 26;

    fn encode(&self) -> Vec<u8> {
        debug_assert!(check_zone(&self.zone), "zone must be a valid identifier");
        let mut w = Writer::new(Self::TAG, Self::LEN);
        w.id(&self.zone)
            .i64(self.interval.start_unix())
            .u16(self.interval.length().minutes())
            .bytes(&self.body_digest)
            .i64(self.cleared_at.timestamp())
            .bytes(&[0u8; 26]);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        let zone = zone_field(&mut r)?;
        if !check_zone(&zone) {
            return Err(r.bad("zone", "empty"));
        }
        let start = r.i64();
        let minutes = r.u16();
        let interval =
            Interval::from_unix(start, minutes.into()).map_err(|e| r.bad("interval_start", e))?;
        let body_digest = r.digest();
        let cleared = r.i64();
        let cleared_at = unix_time(&r, "cleared_at", cleared)?;
        if r.take_reserved::<26>().iter().any(|&b| b != 0) {
            return Err(r.bad("reserved", "must be zero"));
        }
        Ok(ResultAttestation {
            zone,
            interval,
            body_digest,
            cleared_at,
        })
    }
}

/// Why a signed result or envelope was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedResultError {
    /// The signature or key is wrong.
    #[error(transparent)]
    Signature(#[from] SigningError),
    /// The body is not the one the market signed.
    #[error("the result body does not match the market's signed digest: it was altered")]
    BodyAltered,
    /// The body does not parse as a result.
    #[error("the signed result body is not a valid result: {0}")]
    BadBody(String),
    /// The body's zone or interval differs from the signed attestation.
    #[error("the result body names {found}, but the market signed {expected}")]
    Mismatch {
        /// What the attestation says.
        expected: String,
        /// What the body says.
        found: String,
    },
}

/// A clearing result as the market signs it: the exact JSON body bytes plus the market's
/// signed attestation of their SHA-256. JSON: `{"body_base64": …, "attestation": {envelope}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedResult {
    /// The exact JSON bytes of the [`IntervalResult`].
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    #[serde(with = "crate::signing::base64_vec")]
    pub body_base64: Vec<u8>,
    /// The market's signed [`ResultAttestation`].
    pub attestation: SignedEnvelope,
}

impl SignedResult {
    /// Serialises `result` and signs the bytes with the market's key.
    pub fn sign(result: &IntervalResult, key: &SigningKeyPair) -> Self {
        let body = serde_json::to_vec(result).expect("a result serialises");
        let attestation = ResultAttestation {
            zone: result.zone.clone(),
            interval: result.interval,
            body_digest: Sha256::digest(&body).into(),
            cleared_at: Utc
                .timestamp_opt(result.cleared_at.timestamp(), 0)
                .single()
                .expect("a valid time"),
        };
        SignedResult {
            body_base64: body,
            attestation: SignedEnvelope::sign(&attestation, key),
        }
    }

    /// SHA-256 of the body: what envelopes computed from this result name.
    pub fn body_digest(&self) -> [u8; 32] {
        Sha256::digest(&self.body_base64).into()
    }

    /// Verifies the market's signature (by `market_key`), the body digest and that body and
    /// attestation name the same zone and interval, then parses the body.
    pub fn open(&self, market_key: &PublicKey) -> Result<IntervalResult, SignedResultError> {
        let attestation: ResultAttestation = self.attestation.open_by(market_key)?;
        if attestation.body_digest != self.body_digest() {
            return Err(SignedResultError::BodyAltered);
        }
        let result: IntervalResult = serde_json::from_slice(&self.body_base64)
            .map_err(|e| SignedResultError::BadBody(e.to_string()))?;
        if result.zone != attestation.zone || result.interval != attestation.interval {
            return Err(SignedResultError::Mismatch {
                expected: format!("{} {}", attestation.zone, attestation.interval),
                found: format!("{} {}", result.zone, result.interval),
            });
        }
        Ok(result)
    }
}

/// The market's public key, as `GET /market-key` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MarketKey {
    /// The zone the market clears.
    pub zone: String,
    /// The key that signs results and envelopes.
    pub public_key: PublicKey,
}

/// Metered energy of one connection point in one interval against its envelope, as
/// settlement computes it from verified readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvelopeCompliance {
    /// The interval.
    pub interval: Interval,
    /// The gateway.
    pub gateway: GatewayId,
    /// The household.
    pub participant: ParticipantId,
    /// Its grid node.
    pub node: NodeId,
    /// Metered export (from the signed reading).
    pub export_wh: Wh,
    /// Metered import (from the signed reading).
    pub import_wh: Wh,
    /// The envelope's export limit.
    pub export_limit_wh: Wh,
    /// The envelope's import limit.
    pub import_limit_wh: Wh,
    /// Export beyond the envelope (0 when compliant).
    pub excess_export_wh: Wh,
    /// Import beyond the envelope (0 when compliant).
    pub excess_import_wh: Wh,
}

impl EnvelopeCompliance {
    /// Whether the home stayed inside its envelope.
    pub fn compliant(&self) -> bool {
        self.excess_export_wh.0 == 0 && self.excess_import_wh.0 == 0
    }
}

/// The measured flow through one branch (or the utility connection) in one interval, summed
/// from the verified readings of the homes below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeasuredBranchFlow {
    /// The branch's child node (the root for the utility connection).
    pub node: NodeId,
    /// Energy into the subtree (negative = out of it), measured: Σ import − Σ export.
    pub flow_wh: Wh,
    /// Σ metered export of the homes below.
    pub export_wh: Wh,
    /// Σ metered import of the homes below.
    pub import_wh: Wh,
    /// Homes below with an accepted reading for the interval.
    pub homes_reporting: u32,
    /// Homes enrolled below.
    pub homes_enrolled: u32,
}

/// Measured flows of one interval (settlement's `GET /flows`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeasuredFlows {
    /// The interval.
    pub interval: Interval,
    /// Per branch, then the root (the utility connection) last.
    pub branches: Vec<MeasuredBranchFlow>,
}

/// A home that exceeded its envelope in consecutive intervals (settlement's
/// `GET /compliance/alerts`; raised from two intervals in a row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvelopeAlert {
    /// The gateway.
    pub gateway: GatewayId,
    /// The household.
    pub participant: ParticipantId,
    /// Its grid node.
    pub node: NodeId,
    /// The first interval of the run of violations.
    pub first_interval: Interval,
    /// The latest interval of the run.
    pub last_interval: Interval,
    /// Intervals in the run (≥ 2).
    pub intervals: u32,
    /// Σ export beyond the envelope over the run.
    pub excess_export_wh: Wh,
    /// Σ import beyond the envelope over the run.
    pub excess_import_wh: Wh,
    /// Whether the run is still going (its last interval is the latest settled one).
    pub active: bool,
}

/// Where the envelope a gateway enforces came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeSource {
    /// A current envelope signed by the market.
    Market,
    /// The gateway's configured default (no valid, current envelope held).
    Default,
}

/// What a gateway's control loop is doing, on its retained `gridmesh/gateways/<id>/control`
/// topic and its `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControlStatus {
    /// The gateway.
    pub gateway: GatewayId,
    /// The interval being controlled.
    pub interval: Interval,
    /// Where the envelope in force came from.
    pub source: EnvelopeSource,
    /// The export limit in force for the interval.
    pub export_limit_wh: Wh,
    /// The import limit in force for the interval.
    pub import_limit_wh: Wh,
    /// Export metered so far in the interval.
    pub exported_wh: Wh,
    /// Import metered so far in the interval.
    pub imported_wh: Wh,
    /// PV energy curtailed so far in the interval (estimated from the inverter's limit).
    pub curtailed_wh: Wh,
    /// PV energy curtailed since the gateway started.
    pub curtailed_total_wh: Wh,
    /// The inverter's active power limit, % of its rating (`None` = not limited).
    pub pv_limit_pct: Option<u16>,
    /// The battery power requested (positive = discharge, negative = charge), W.
    pub battery_setpoint_w: i64,
    /// Intervals in a row whose metered export or import exceeded the envelope.
    pub violations_in_a_row: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> OperatingEnvelope {
        OperatingEnvelope {
            zone: "demo".to_owned(),
            gateway: GatewayId::new("gw-h001").unwrap(),
            participant: ParticipantId::new("h001").unwrap(),
            node: NodeId::new("f1").unwrap(),
            interval: Interval::parse("2026-06-21T12:15:00Z", 15).unwrap(),
            export_limit: Wh(400),
            import_limit: Wh(2_000),
            basis: EnvelopeBasis::Cleared,
            result_digest: [7; 32],
            issued_at: Utc.timestamp_opt(1_782_044_000, 0).single().unwrap(),
        }
    }

    #[test]
    fn envelope_round_trips_and_is_its_documented_length() {
        let e = envelope();
        let bytes = e.encode();
        assert_eq!(bytes.len(), 225);
        assert_eq!(OperatingEnvelope::decode(&bytes).unwrap(), e);
        assert_eq!(e.export_limit_w(), 1_600);
        assert_eq!(e.import_limit_w(), 8_000);
    }

    #[test]
    fn every_bit_flip_of_a_signed_envelope_is_refused() {
        let key = SigningKeyPair::from_seed([3; 32]);
        let signed = SignedEnvelope::sign(&envelope(), &key);
        for i in 0..signed.payload.len() * 8 {
            let mut bad = signed.clone();
            bad.payload[i / 8] ^= 1 << (i % 8);
            assert!(bad.open_by::<OperatingEnvelope>(&key.public_key()).is_err());
        }
        let other = SigningKeyPair::from_seed([4; 32]);
        let forged = SignedEnvelope::sign(&envelope(), &other);
        assert!(matches!(
            forged.open_by::<OperatingEnvelope>(&key.public_key()),
            Err(SigningError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn negative_limits_and_nonzero_reserved_bytes_are_refused() {
        let mut bytes = envelope().encode();
        bytes[158] = 0xff;
        assert!(OperatingEnvelope::decode(&bytes).is_err());
        let mut bytes = envelope().encode();
        bytes[224] = 1;
        assert!(OperatingEnvelope::decode(&bytes).is_err());
    }

    #[test]
    fn signed_result_detects_an_altered_body_and_a_foreign_key() {
        use crate::grid::Network;
        let key = SigningKeyPair::from_seed([5; 32]);
        let result = IntervalResult {
            interval: Interval::parse("2026-06-21T12:15:00Z", 15).unwrap(),
            zone: "demo".to_owned(),
            cleared_at: Utc.timestamp_opt(1_782_044_000, 0).single().unwrap(),
            prices: Default::default(),
            orders: vec![],
            trades: vec![],
            utility_import: Wh(0),
            utility_export: Wh(0),
            flows: vec![],
            welfare: crate::units::Money(0),
            network: Network {
                root: NodeId::new("sub").unwrap(),
                branches: vec![],
                utility: Default::default(),
            },
            envelopes: vec![],
        };
        let signed = SignedResult::sign(&result, &key);
        assert_eq!(signed.open(&key.public_key()).unwrap(), result);
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.open(&key.public_key()).unwrap(), result);
        let mut altered = signed.clone();
        let at = altered.body_base64.len() - 3;
        altered.body_base64[at] ^= 1;
        assert_eq!(
            altered.open(&key.public_key()),
            Err(SignedResultError::BodyAltered)
        );
        let other = SigningKeyPair::from_seed([6; 32]);
        assert!(matches!(
            signed.open(&other.public_key()),
            Err(SignedResultError::Signature(
                SigningError::KeyMismatch { .. }
            ))
        ));
    }

    #[test]
    fn attestation_is_its_documented_length() {
        let a = ResultAttestation {
            zone: "demo".to_owned(),
            interval: Interval::parse("2026-06-21T12:15:00Z", 15).unwrap(),
            body_digest: [1; 32],
            cleared_at: Utc.timestamp_opt(1_782_044_000, 0).single().unwrap(),
        };
        let bytes = a.encode();
        assert_eq!(bytes.len(), 126);
        assert_eq!(ResultAttestation::decode(&bytes).unwrap(), a);
    }
}
