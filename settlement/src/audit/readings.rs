//! Step 2: every stored reading — its signature over the stored payload, its indexed columns
//! against the payload, its signer against the gateway's registered key — and every gateway
//! registration parses.

use super::{AuditError, AuditReport, bad};
use crate::store::audit::{AuditData, ReadingRecord};
use crate::verify::verify_signatures;
use gridmesh_protocol::api::readings::ReasonCode;
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::{Signable, SignedEnvelope};
use std::collections::HashMap;

/// A verified reading's columns as the later steps use them.
pub(super) struct ReadingInfo {
    pub key: String,
    pub participant: String,
    pub gateway: String,
    pub interval_start: i64,
    pub minutes: i64,
    pub status: String,
    pub import: i64,
    pub export: i64,
    pub pv: i64,
    pub battery_discharge: i64,
    /// Why it was flagged at ingest (its first operator-acceptable quarantine item's code),
    /// also once accepted; `None` for a reading accepted outright.
    pub flag_reason: Option<ReasonCode>,
}

/// The verified readings.
pub(super) struct Readings {
    /// By digest (hex).
    pub by_digest: HashMap<String, ReadingInfo>,
    /// Digests per (interval start, minutes), in reading-key order (as settlement reads them).
    pub by_interval: HashMap<(i64, i64), Vec<String>>,
    /// The gateway registrations (for the sites' ratings).
    pub sites: HashMap<String, GatewayEnrollment>,
}

/// Checks every reading; records how many.
pub(super) fn check(data: &AuditData, report: &mut AuditReport) -> Result<Readings, AuditError> {
    let gateways = gateways(data)?;
    let envelopes = data
        .readings
        .iter()
        .map(envelope)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&SignedEnvelope> = envelopes.iter().collect();
    let sig_ok = verify_signatures(&refs);
    let mut reasons: HashMap<&str, (i64, ReasonCode)> = HashMap::new();
    for q in &data.quarantine {
        let (Some(key), Some(code)) = (&q.reading_key, ReasonCode::parse(&q.code)) else {
            continue;
        };
        if code.operator_acceptable() {
            let first = reasons.entry(key).or_insert((q.id, code));
            if q.id < first.0 {
                *first = (q.id, code);
            }
        }
    }
    let mut out = Readings {
        by_digest: HashMap::new(),
        by_interval: HashMap::new(),
        sites: gateways
            .iter()
            .map(|(g, e)| (g.to_string(), e.clone()))
            .collect(),
    };
    for ((r, env), ok) in data.readings.iter().zip(&envelopes).zip(sig_ok) {
        let loc = format!("reading {}", r.key);
        if !ok {
            return Err(bad(
                &loc,
                "the signature does not verify over the stored payload: the reading was altered",
            ));
        }
        let reading = Reading::decode(&env.payload).map_err(|e| bad(&loc, e.to_string()))?;
        check_columns(r, &reading, env)?;
        if let Some(g) = gateways.get(reading.gateway.as_str()) {
            check_signer(r, env, g)?;
        }
        out.by_interval
            .entry((r.interval_start, r.minutes))
            .or_default()
            .push(env.digest_hex());
        out.by_digest.insert(
            env.digest_hex(),
            ReadingInfo {
                key: r.key.clone(),
                participant: r.participant.clone(),
                gateway: r.gateway.clone(),
                interval_start: r.interval_start,
                minutes: r.minutes,
                status: r.status.clone(),
                import: r.grid_import,
                export: r.grid_export,
                pv: r.pv,
                battery_discharge: r.battery_discharge,
                flag_reason: reasons.get(r.key.as_str()).map(|(_, c)| *c),
            },
        );
        report.readings += 1;
    }
    Ok(out)
}

/// The gateway registrations by gateway; one that does not parse is an inconsistency (its
/// readings could not be checked against its key).
fn gateways(data: &AuditData) -> Result<HashMap<&str, GatewayEnrollment>, AuditError> {
    data.gateways
        .iter()
        .map(|(gateway, body)| {
            let g = serde_json::from_str(body).map_err(|e| {
                bad(
                    format!("gateway {gateway}"),
                    format!("its stored registration does not parse: {e}"),
                )
            })?;
            Ok((gateway.as_str(), g))
        })
        .collect()
}

fn envelope(r: &ReadingRecord) -> Result<SignedEnvelope, AuditError> {
    let loc = format!("reading {}", r.key);
    Ok(SignedEnvelope {
        payload: r.payload.clone(),
        signature: r
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| bad(&loc, "signature is not 64 bytes"))?,
        public_key: r
            .public_key
            .parse()
            .map_err(|_| bad(&loc, "public key is malformed"))?,
    })
}

/// The indexed columns against the signed payload.
fn check_columns(
    r: &ReadingRecord,
    reading: &Reading,
    env: &SignedEnvelope,
) -> Result<(), AuditError> {
    let checks = [
        ("key", reading.idempotency_key() == r.key),
        ("gateway", reading.gateway.as_str() == r.gateway),
        ("device", reading.device.as_str() == r.device),
        (
            "interval_start",
            reading.interval.start_unix() == r.interval_start,
        ),
        (
            "minutes",
            i64::from(reading.interval.length().minutes()) == r.minutes,
        ),
        ("sequence", reading.sequence as i64 == r.sequence),
        ("digest", env.digest_hex() == r.digest),
        ("grid_import", reading.deltas.grid_import.0 == r.grid_import),
        ("grid_export", reading.deltas.grid_export.0 == r.grid_export),
        ("pv", reading.deltas.pv.0 == r.pv),
        (
            "battery_discharge",
            reading.deltas.battery_discharge.0 == r.battery_discharge,
        ),
    ];
    if let Some((column, _)) = checks.iter().find(|(_, ok)| !ok) {
        return Err(bad(
            format!("reading {}", r.key),
            format!("stored column `{column}` differs from the signed payload"),
        ));
    }
    Ok(())
}

/// The signer against the gateway's registered key, the participant against its meter.
fn check_signer(
    r: &ReadingRecord,
    env: &SignedEnvelope,
    g: &GatewayEnrollment,
) -> Result<(), AuditError> {
    let loc = format!("reading {}", r.key);
    if g.public_key != env.public_key {
        return Err(bad(
            &loc,
            format!(
                "signed by {}, but the gateway's registered key is {}",
                env.public_key, g.public_key
            ),
        ));
    }
    if g.participant.as_str() != r.participant {
        return Err(bad(
            &loc,
            format!(
                "attributed to {}, but gateway {} meters {}",
                r.participant, g.gateway, g.participant
            ),
        ));
    }
    Ok(())
}
