//! Steps 3b and 8: what each block committed to. A version 2 block's state commitment pins its
//! interval's result (checked before anything is computed from it), and the interval's
//! readings with their status, statements, compliance rows, withheld mints and the operator
//! decisions since the previous block (checked last, after the field-by-field checks had their
//! chance to name a single altered field). Every sealed interval is also settled again as it
//! stood at sealing (readings accepted by a later decision were flagged then): its withheld
//! mints and its mints must be the recomputed ones, and released mints must be withheld ones.

use super::blocks::Chain;
use super::ledger::Results;
use super::quarantine::Decisions;
use super::readings::Readings;
use super::statements::{meter_rows, parse_statement};
use super::{AuditError, AuditReport, bad, first_difference};
use crate::ledger::{
    BlockHeader, CommittedReading, EntryBody, IntervalState, MintEntry, PART_TAGS, StateCommitment,
    part_digest,
};
use crate::rules::{MintPlan, Statement, settle_with_envelopes};
use crate::store::audit::{AuditData, WithheldRecord};
use gridmesh_protocol::envelope::EnvelopeCompliance;
use std::collections::HashMap;

/// Step 3b: each version 2 block's `result` digest against its interval's stored result.
pub(super) fn check_results(data: &AuditData, chain: &Chain) -> Result<(), AuditError> {
    let bodies: HashMap<&str, &str> = data
        .results
        .iter()
        .map(|r| (r.key.as_str(), r.body.as_str()))
        .collect();
    for (height, header) in chain.headers.iter().enumerate() {
        let Some(state) = &header.state else { continue };
        let key = header.interval.key();
        let body = bodies.get(key.as_str()).ok_or_else(|| {
            bad(
                format!("block {height}"),
                format!("seals interval {key}, which has no stored result"),
            )
        })?;
        if part_digest(PART_TAGS[0], [body.as_bytes()]) != state.result {
            return Err(bad(
                format!("result {key}"),
                format!(
                    "field body differs from the result block {height} committed to when it was sealed (a trade, price, envelope or tariff was changed)"
                ),
            ));
        }
    }
    Ok(())
}

/// A mint entry's plan (what settling planned for it).
fn plan_of(m: &MintEntry) -> MintPlan {
    MintPlan {
        trade_index: m.trade_index,
        seller: m.seller.clone(),
        buyer: m.buyer.clone(),
        seller_order: m.seller_order.clone(),
        buyer_order: m.buyer_order.clone(),
        source: m.source.clone(),
        price: m.price,
        amount: m.amount,
        seller_readings: m.seller_readings.clone(),
        buyer_readings: m.buyer_readings.clone(),
    }
}

/// The stored mints by interval: (seq, plan, released).
type Mints = HashMap<String, Vec<(i64, MintPlan, bool)>>;

fn mints(data: &AuditData) -> Mints {
    let mut out: Mints = HashMap::new();
    for e in &data.entries {
        // Entries were parsed and checked by the replay already.
        if let Ok(EntryBody::Mint(m)) = serde_json::from_slice::<EntryBody>(&e.body) {
            out.entry(m.interval.clone())
                .or_default()
                .push((e.seq, plan_of(&m), m.released));
        }
    }
    out
}

fn parse_withheld(w: &WithheldRecord) -> Result<MintPlan, AuditError> {
    serde_json::from_str(&w.body).map_err(|e| {
        bad(
            format!("withheld mint #{}", w.id),
            format!("field body does not parse: {e}"),
        )
    })
}

/// Step 8.
pub(super) fn check_sealed_state(
    data: &AuditData,
    chain: &Chain,
    results: &Results,
    readings: &Readings,
    decisions: &Decisions,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let mints = mints(data);
    let mut withheld: HashMap<&str, Vec<(&WithheldRecord, MintPlan)>> = HashMap::new();
    for w in &data.withheld {
        let plan = parse_withheld(w)?;
        if w.released != 0 && w.released != 1 {
            return Err(bad(
                format!("withheld mint #{}", w.id),
                format!("field released is {}, not 0 or 1", w.released),
            ));
        }
        withheld
            .entry(w.interval_key.as_str())
            .or_default()
            .push((w, plan));
        report.withheld += 1;
    }
    check_released(&withheld, &mints)?;
    for (height, header) in chain.headers.iter().enumerate() {
        let key = header.interval.key();
        let Some((result, true)) = results.get(&key) else {
            return Err(bad(
                format!("interval {key}"),
                format!("block {height} seals it, but its result is missing or field settled is 0"),
            ));
        };
        let sealed_ms = header.sealed_at.timestamp_millis();
        let accepted_later = |reading: &str| {
            decisions.get(reading).is_some_and(|a| match a.listed_in {
                Some(h) => h > height,
                None => a.resolved_at >= sealed_ms,
            })
        };
        let (rows, sites) = meter_rows(result, readings, accepted_later)?;
        let (at_seal, compliance_at_seal) =
            settle_with_envelopes(result, &rows, &sites).map_err(|e| {
                bad(
                    format!("interval {key}"),
                    format!("cannot be settled again as it was sealed: {e}"),
                )
            })?;
        let stored_withheld = withheld.remove(key.as_str()).unwrap_or_default();
        compare_withheld(&key, &stored_withheld, &at_seal.withheld)?;
        let minted: Vec<(i64, MintPlan)> = mints
            .get(&key)
            .map(|v| {
                v.iter()
                    .filter(|(_, _, released)| !released)
                    .map(|(seq, p, _)| (*seq, p.clone()))
                    .collect()
            })
            .unwrap_or_default();
        compare_mints(&key, &minted, &at_seal.mints)?;
        if let Some(state) = &header.state {
            let changed_since = rows
                .iter()
                .any(|r| r.flagged && readings.by_digest[&r.digest].status == "accepted");
            let (statements, compliance) = if changed_since {
                (at_seal.statements.clone(), compliance_at_seal.clone())
            } else {
                stored_state(data, &key)?
            };
            let committed: Vec<CommittedReading> = rows
                .iter()
                .map(|r| CommittedReading {
                    key: readings.by_digest[&r.digest].key.clone(),
                    digest: r.digest.clone(),
                    status: if r.flagged { "flagged" } else { "accepted" }.to_owned(),
                })
                .collect();
            let plans: Vec<MintPlan> = stored_withheld.iter().map(|(_, p)| p.clone()).collect();
            let body = data
                .results
                .iter()
                .find(|r| r.key == key)
                .map(|r| r.body.as_bytes())
                .unwrap_or_default();
            let recomputed = StateCommitment::compute(
                IntervalState {
                    result_body: body,
                    readings: &committed,
                    statements: &statements,
                    compliance: &compliance,
                    withheld: &plans,
                },
                &[],
            );
            compare_commitment(height, header, state, &recomputed)?;
            report.commitments += 1;
        }
    }
    if let Some((key, rows)) = withheld.into_iter().next() {
        return Err(bad(
            format!("withheld mint #{}", rows[0].0.id),
            format!("field interval_key names {key}, which no block seals"),
        ));
    }
    Ok(())
}

/// The stored statements and compliance rows of an interval.
fn stored_state(
    data: &AuditData,
    key: &str,
) -> Result<(Vec<Statement>, Vec<EnvelopeCompliance>), AuditError> {
    let mut statements = Vec::new();
    for r in data.statements.iter().filter(|r| r.interval_key == key) {
        statements.push(parse_statement(key, &r.participant, &r.body)?);
    }
    let mut compliance = Vec::new();
    for r in data.compliance.iter().filter(|r| r.interval_key == key) {
        compliance.push(serde_json::from_str(&r.body).map_err(|e| {
            bad(
                format!("compliance of {} for {key}", r.gateway),
                format!("does not parse: {e}"),
            )
        })?);
    }
    Ok((statements, compliance))
}

/// Each committed part against the stored state, naming the table of the first that differs.
fn compare_commitment(
    height: usize,
    header: &BlockHeader,
    committed: &StateCommitment,
    stored: &StateCommitment,
) -> Result<(), AuditError> {
    let key = header.interval.key();
    for ((part, want), (_, have)) in committed.parts().into_iter().zip(stored.parts()) {
        // Decisions were checked with the quarantine items.
        if part == "decisions" || want == have {
            continue;
        }
        let location = match part {
            "readings" => format!("readings of {key}"),
            "statements" => format!("statements for {key}"),
            "compliance" => format!("compliance rows for {key}"),
            "withheld" => format!("withheld mints of {key}"),
            _ => format!("result {key}"),
        };
        return Err(bad(
            location,
            format!(
                "differ from the {part} block {height} committed to when it was sealed (field {part} of its state commitment): rows were altered, added or removed consistently with each other, but not with the authority's signature"
            ),
        ));
    }
    Ok(())
}

fn compare_withheld(
    key: &str,
    stored: &[(&WithheldRecord, MintPlan)],
    recomputed: &[MintPlan],
) -> Result<(), AuditError> {
    for (i, want) in recomputed.iter().enumerate() {
        match stored.get(i) {
            None => {
                return Err(bad(
                    format!("withheld mints of {key}"),
                    format!(
                        "settling the interval again as it was sealed withholds {} mints, {} are stored (trade {} is missing)",
                        recomputed.len(),
                        stored.len(),
                        want.trade_index
                    ),
                ));
            }
            Some((w, have)) if have != want => {
                return Err(bad(
                    format!("withheld mint #{}", w.id),
                    format!(
                        "differs from settling {key} again as it was sealed: field {}",
                        first_difference(have, want)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some((w, _)) = stored.get(recomputed.len()) {
        return Err(bad(
            format!("withheld mint #{}", w.id),
            format!("settling {key} again as it was sealed withholds no such mint"),
        ));
    }
    Ok(())
}

fn compare_mints(
    key: &str,
    stored: &[(i64, MintPlan)],
    recomputed: &[MintPlan],
) -> Result<(), AuditError> {
    for (i, want) in recomputed.iter().enumerate() {
        match stored.get(i) {
            None => {
                return Err(bad(
                    format!("interval {key}"),
                    format!(
                        "settling it again as it was sealed mints {} times, the ledger has {} mints for it",
                        recomputed.len(),
                        stored.len()
                    ),
                ));
            }
            Some((seq, have)) if have != want => {
                return Err(bad(
                    format!("ledger entry #{seq} (mint)"),
                    format!(
                        "differs from settling {key} again as it was sealed: field {}",
                        first_difference(have, want)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some((seq, _)) = stored.get(recomputed.len()) {
        return Err(bad(
            format!("ledger entry #{seq} (mint)"),
            format!("settling {key} again as it was sealed makes no such mint"),
        ));
    }
    Ok(())
}

/// A withheld mint is released (field released = 1) exactly when a released mint entry mints
/// it, and every released mint entry was withheld.
fn check_released(
    withheld: &HashMap<&str, Vec<(&WithheldRecord, MintPlan)>>,
    mints: &Mints,
) -> Result<(), AuditError> {
    let mut released: Vec<(&str, i64, &MintPlan)> = mints
        .iter()
        .flat_map(|(k, v)| {
            v.iter()
                .filter(|(_, _, r)| *r)
                .map(move |(seq, p, _)| (k.as_str(), *seq, p))
        })
        .collect();
    for (key, rows) in withheld {
        for (w, plan) in rows {
            let at = released.iter().position(|(k, _, p)| k == key && *p == plan);
            match (w.released, at) {
                (1, Some(i)) => {
                    released.swap_remove(i);
                }
                (1, None) => {
                    let near = released
                        .iter()
                        .find(|(k, _, p)| k == key && p.trade_index == plan.trade_index);
                    return Err(bad(
                        format!("withheld mint #{}", w.id),
                        match near {
                            Some((_, seq, p)) => format!(
                                "field released is 1, but the released mint entry #{seq} of its trade differs: field {}",
                                first_difference(plan, *p)
                            ),
                            None => "field released is 1, but no released mint entry mints it"
                                .to_owned(),
                        },
                    ));
                }
                (_, Some(i)) => {
                    return Err(bad(
                        format!("withheld mint #{}", w.id),
                        format!(
                            "field released is 0, but ledger entry #{} released it",
                            released[i].1
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    if let Some((key, seq, _)) = released.first() {
        return Err(bad(
            format!("ledger entry #{seq} (mint)"),
            format!(
                "is a released mint of {key}, but no withheld mint of that interval is released as it"
            ),
        ));
    }
    Ok(())
}
