//! Steps 5 and 6: every statement's net equals its lines and payments between participants sum
//! to zero per interval; every settled interval settled again from its stored result and
//! readings (`rules::settle_with_envelopes`) gives exactly the stored statements and
//! operating-envelope compliance rows.

use super::ledger::Results;
use super::readings::{ReadingInfo, Readings};
use super::{AuditError, AuditReport, bad, first_difference};
use crate::rules::{MeterRow, Sites, Statement, settle_with_envelopes};
use crate::store::audit::AuditData;
use gridmesh_protocol::envelope::EnvelopeCompliance;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::{GatewayId, ParticipantId, Wh};
use std::collections::{BTreeMap, HashMap};

/// Statements by interval key and participant.
type Stored = HashMap<String, BTreeMap<String, Statement>>;
/// Compliance rows by interval key and gateway.
type StoredCompliance = HashMap<String, BTreeMap<String, EnvelopeCompliance>>;

pub(super) fn parse_statement(
    key: &str,
    participant: &str,
    body: &str,
) -> Result<Statement, AuditError> {
    serde_json::from_str(body).map_err(|e| {
        bad(
            format!("statement of {participant} for {key}"),
            format!("does not parse: {e}"),
        )
    })
}

/// Step 5: nets against lines, and payments between participants per interval.
pub(super) fn check_sums(data: &AuditData, report: &mut AuditReport) -> Result<(), AuditError> {
    let mut p2p: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &data.statements {
        let (key, participant, net) = (&r.interval_key, &r.participant, r.net);
        let s = parse_statement(key, participant, &r.body)?;
        let overflow = || {
            bad(
                format!("statement of {participant} for {key}"),
                "its money lines overflow when summed",
            )
        };
        let sum = s
            .lines
            .iter()
            .try_fold(0i64, |a, l| a.checked_add(l.amount.0))
            .ok_or_else(overflow)?;
        if sum != net
            || s.net.0 != net
            || s.participant.as_str() != participant
            || &s.interval != key
        {
            return Err(bad(
                format!("statement of {participant} for {key}"),
                format!("net {net} does not equal the sum of its lines {sum}"),
            ));
        }
        let total = p2p.entry(key).or_default();
        *total = s
            .lines
            .iter()
            .filter(|l| l.counterparty != "utility")
            .try_fold(*total, |a, l| a.checked_add(l.amount.0))
            .ok_or_else(overflow)?;
        report.statements += 1;
    }
    if let Some((key, sum)) = p2p.into_iter().find(|(_, s)| *s != 0) {
        return Err(bad(
            format!("statements for {key}"),
            format!("payments between participants sum to {sum}, not 0"),
        ));
    }
    Ok(())
}

/// Step 6: every settled interval settled again.
pub(super) fn settle_again(
    data: &AuditData,
    results: &Results,
    readings: &Readings,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let mut stored: Stored = HashMap::new();
    for r in &data.statements {
        let s = parse_statement(&r.interval_key, &r.participant, &r.body)?;
        stored
            .entry(r.interval_key.clone())
            .or_default()
            .insert(r.participant.clone(), s);
    }
    let mut stored_compliance: StoredCompliance = HashMap::new();
    for r in &data.compliance {
        let c: EnvelopeCompliance = serde_json::from_str(&r.body).map_err(|e| {
            bad(
                format!("compliance of {} for {}", r.gateway, r.interval_key),
                format!("does not parse: {e}"),
            )
        })?;
        stored_compliance
            .entry(r.interval_key.clone())
            .or_default()
            .insert(r.gateway.clone(), c);
    }
    let mut settled: Vec<(&String, &IntervalResult)> = results
        .iter()
        .filter(|(_, (_, settled))| *settled)
        .map(|(k, (r, _))| (k, r))
        .collect();
    settled.sort_by_key(|(_, r)| r.interval.start());
    for (key, result) in settled {
        let (rows, sites) = meter_rows(result, readings, |_| false)?;
        let (settlement, compliance) =
            settle_with_envelopes(result, &rows, &sites).map_err(|e| {
                bad(
                    format!("interval {key}"),
                    format!("cannot be settled again: {e}"),
                )
            })?;
        compare_statements(
            key,
            settlement.statements,
            stored.remove(key).unwrap_or_default(),
        )?;
        compare_compliance(
            key,
            &compliance,
            stored_compliance.remove(key).unwrap_or_default(),
        )?;
        report.intervals_recomputed += 1;
    }
    if let Some(key) = stored.keys().chain(stored_compliance.keys()).next() {
        return Err(bad(
            format!("interval {key}"),
            "has statements or compliance rows but no settled result",
        ));
    }
    Ok(())
}

fn compare_statements(
    key: &str,
    recomputed: Vec<Statement>,
    mut have: BTreeMap<String, Statement>,
) -> Result<(), AuditError> {
    let want: BTreeMap<String, Statement> = recomputed
        .into_iter()
        .map(|s| (s.participant.to_string(), s))
        .collect();
    for (p, w) in &want {
        let loc = format!("statement of {p} for {key}");
        match have.remove(p) {
            None => return Err(bad(&loc, "is missing: settling again writes one")),
            Some(h) if &h != w => {
                let field = first_difference(&h, w);
                let hint = if field.starts_with("pending") {
                    " (a pending line's reason and export cap come from its reading's quarantine item's code: check that item too)"
                } else {
                    ""
                };
                return Err(bad(
                    &loc,
                    format!(
                        "differs from settling the stored result and readings again with the published rules: field {field}{hint}"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(p) = have.keys().next() {
        return Err(bad(
            format!("statement of {p} for {key}"),
            "is not produced by settling the stored result and readings again",
        ));
    }
    Ok(())
}

fn compare_compliance(
    key: &str,
    recomputed: &[EnvelopeCompliance],
    mut have: BTreeMap<String, EnvelopeCompliance>,
) -> Result<(), AuditError> {
    for c in recomputed {
        let loc = format!("compliance of {} for {key}", c.gateway);
        match have.remove(c.gateway.as_str()) {
            None => {
                return Err(bad(
                    &loc,
                    "is missing: the readings and the envelope give one",
                ));
            }
            Some(h) if &h != c => {
                return Err(bad(
                    &loc,
                    format!(
                        "stored export {} / import {} Wh against {} / {} Wh; the readings and the envelope give {} / {} against {} / {}: field {}",
                        h.export_wh.0,
                        h.import_wh.0,
                        h.export_limit_wh.0,
                        h.import_limit_wh.0,
                        c.export_wh.0,
                        c.import_wh.0,
                        c.export_limit_wh.0,
                        c.import_limit_wh.0,
                        first_difference(&h, c)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(g) = have.keys().next() {
        return Err(bad(
            format!("compliance of {g} for {key}"),
            "has no envelope or no readings behind it",
        ));
    }
    Ok(())
}

/// The readings settlement used for an interval (`accepted` and `flagged`; `late` ones never
/// count), in reading-key order, with why the flagged ones were flagged and their sites'
/// ratings (as the service settles them, see [`Sites`]); `flagged_then` marks accepted
/// readings (by key) as flagged (their acceptance came later).
pub(super) fn meter_rows(
    result: &IntervalResult,
    readings: &Readings,
    flagged_then: impl Fn(&str) -> bool,
) -> Result<(Vec<MeterRow>, Sites), AuditError> {
    let at = (
        result.interval.start_unix(),
        i64::from(result.interval.length().minutes()),
    );
    let mut rows = Vec::new();
    let mut sites = Sites::default();
    for d in readings
        .by_interval
        .get(&at)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let info: &ReadingInfo = &readings.by_digest[d];
        if info.status != "accepted" && info.status != "flagged" {
            continue;
        }
        let loc = || format!("reading {d}");
        if let Some(reason) = info.flag_reason {
            sites.reasons.insert(d.clone(), reason);
            sites.rate(readings.sites.get(&info.gateway), at.1);
        }
        rows.push(MeterRow {
            participant: ParticipantId::new(info.participant.clone())
                .map_err(|e| bad(loc(), e.to_string()))?,
            gateway: GatewayId::new(info.gateway.clone()).map_err(|e| bad(loc(), e.to_string()))?,
            digest: d.clone(),
            flagged: info.status == "flagged" || flagged_then(&info.key),
            imported: Wh(info.import),
            exported: Wh(info.export),
            pv: Wh(info.pv),
            battery_discharge: Wh(info.battery_discharge),
        });
    }
    Ok((rows, sites))
}
