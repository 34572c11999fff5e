//! Step 4: quarantine decisions. A flagged reading has its `open` quarantine item; a reading
//! an operator accepted has the accepted item; every decision is listed by exactly one
//! version 2 block (the first sealed after it), whose `decisions` digest covers its id, reading,
//! status and time, unless it was made after the last block (the next block lists it) or
//! before the first version 2 block.

use super::blocks::Chain;
use super::readings::Readings;
use super::{AuditError, AuditReport, bad};
use crate::ledger::{Decision, PART_TAGS, decision_item, part_digest};
use crate::store::audit::{AuditData, QuarantineRecord};
use gridmesh_protocol::api::readings::ReasonCode;
use std::collections::{BTreeMap, HashMap};

/// An operator's acceptance of a flagged reading, as later steps need it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Acceptance {
    /// The block listing it (`None`: not listed: made after the last block or before the first
    /// version 2 block).
    pub listed_in: Option<usize>,
    /// When it was made, Unix ms.
    pub resolved_at: i64,
}

/// Acceptances by reading key.
pub(super) type Decisions = HashMap<String, Acceptance>;

/// Whether an item was decided (accepted by an operator, re-admitted, ...): neither `open`
/// nor `held`.
fn is_decided(q: &QuarantineRecord) -> bool {
    q.status != "open" && q.status != "held"
}

fn acceptable(q: &QuarantineRecord) -> bool {
    ReasonCode::parse(&q.code).is_some_and(ReasonCode::operator_acceptable)
}

/// The checks; returns the acceptances for the sealed-state recomputation.
pub(super) fn check(
    data: &AuditData,
    chain: &Chain,
    _readings: &Readings,
    report: &mut AuditReport,
) -> Result<Decisions, AuditError> {
    let rows: BTreeMap<i64, &QuarantineRecord> =
        data.quarantine.iter().map(|q| (q.id, q)).collect();
    let mut decided: Vec<Decision> = Vec::new();
    for q in rows.values().filter(|q| is_decided(q)) {
        let Some(resolved_at) = q.resolved_at else {
            return Err(bad(
                format!("quarantine #{}", q.id),
                format!(
                    "field resolved_at is empty, but its status is `{}`",
                    q.status
                ),
            ));
        };
        decided.push(Decision {
            id: q.id,
            reading_key: q.reading_key.clone().unwrap_or_default(),
            status: q.status.clone(),
            resolved_at,
        });
    }
    // Every block's decisions digest over the items it lists.
    for (height, header) in chain.headers.iter().enumerate() {
        let Some(state) = &header.state else { continue };
        let mut items = Vec::with_capacity(state.decision_ids.len());
        for id in &state.decision_ids {
            let d = decided.iter().find(|d| d.id == *id).ok_or_else(|| {
                bad(
                    format!("quarantine #{id}"),
                    format!("block {height} lists its decision, but the item is not decided (field status) or missing"),
                )
            })?;
            items.push(decision_item(
                d.id,
                &d.reading_key,
                &d.status,
                d.resolved_at,
            ));
        }
        if part_digest(PART_TAGS[5], &items) != state.decisions {
            let ids: Vec<String> = state.decision_ids.iter().map(|i| format!("#{i}")).collect();
            return Err(bad(
                format!("quarantine {}", ids.join(", ")),
                format!(
                    "the decisions listed by block {height} were altered (reading_key, status or resolved_at differ from its state commitment)"
                ),
            ));
        }
        report.decisions_sealed += state.decision_ids.len();
    }
    // Unlisted decisions: after the last block, or before the first version 2 block.
    let sealed_ms = |h: usize| chain.headers[h].sealed_at.timestamp_millis();
    let last = chain.headers.len().checked_sub(1).map(sealed_ms);
    let legacy_before = match chain.first_v2 {
        None => i64::MAX,
        Some(0) => i64::MIN,
        Some(k) => sealed_ms(k - 1),
    };
    let mut out = Decisions::new();
    for d in &decided {
        let listed_in = chain.decision_block.get(&d.id).copied();
        if listed_in.is_none() {
            let pending = last.is_none_or(|l| d.resolved_at >= l);
            if !pending && d.resolved_at >= legacy_before {
                return Err(bad(
                    format!("quarantine #{}", d.id),
                    format!(
                        "its decision `{}` (field status, resolved_at {}) is listed by no block, though blocks were sealed after it",
                        d.status, d.resolved_at
                    ),
                ));
            }
            if pending {
                report.decisions_unsealed += 1;
            }
        }
        if d.status == "accepted" && !d.reading_key.is_empty() {
            out.insert(
                d.reading_key.clone(),
                Acceptance {
                    listed_in,
                    resolved_at: d.resolved_at,
                },
            );
        }
    }
    check_reading_statuses(data, &rows)?;
    Ok(out)
}

/// Flagged readings against their open items, accepted ones against decisions. A flagged
/// reading needs an `open` item naming it (whatever flagged it); an accepted reading must not
/// have an open item an operator could still accept (that is, it was never accepted).
fn check_reading_statuses(
    data: &AuditData,
    rows: &BTreeMap<i64, &QuarantineRecord>,
) -> Result<(), AuditError> {
    let mut by_key: HashMap<&str, Vec<&QuarantineRecord>> = HashMap::new();
    for q in rows.values() {
        if let Some(k) = &q.reading_key {
            by_key.entry(k.as_str()).or_default().push(q);
        }
    }
    let mut stored: HashMap<&str, &str> = HashMap::new();
    for r in &data.readings {
        stored.insert(r.key.as_str(), r.status.as_str());
        let loc = format!("reading {}", r.key);
        let items = by_key
            .get(r.key.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let open = items.iter().find(|q| q.status == "open");
        let accepted = items.iter().find(|q| q.status == "accepted");
        match r.status.as_str() {
            "flagged" if open.is_none() => {
                return Err(bad(
                    &loc,
                    match accepted {
                        Some(q) => format!(
                            "field status is `flagged`, but quarantine item #{} is `accepted`",
                            q.id
                        ),
                        None => "field status is `flagged`, but no open quarantine item flags it"
                            .to_owned(),
                    },
                ));
            }
            "accepted" => {
                if let Some(q) = items.iter().find(|q| q.status == "open" && acceptable(q)) {
                    return Err(bad(
                        &loc,
                        format!(
                            "field status is `accepted`, but it was flagged and quarantine item #{} is still `open`: no operator accepted it",
                            q.id
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    for q in rows.values().filter(|q| q.status == "accepted") {
        let key = q.reading_key.as_deref().unwrap_or_default();
        match stored.get(key) {
            Some(&"accepted") => {}
            other => {
                return Err(bad(
                    format!("quarantine #{}", q.id),
                    format!(
                        "field status is `accepted`, but reading {key} is {}",
                        other.map_or("not stored".to_owned(), |s| format!("`{s}`"))
                    ),
                ));
            }
        }
    }
    Ok(())
}
