//! `settlement verify`: re-checks everything from storage alone and reports the FIRST
//! inconsistency precisely: the table, the row's key and, where one field is wrong, the field.
//!
//! Storage is read once, as one consistent snapshot ([`crate::store::audit::load`]: a
//! read-only transaction, so verify runs beside a live settlement); the checks are pure
//! functions over it, in this order (inputs before what is computed from them):
//!
//! 1. `blocks`: contiguous heights, header bytes, stored hash, hash links, the authority's
//!    signature (the pinned key, see [`Trust`]), entry count and Merkle root; every entry's
//!    hash against its body.
//! 2. `readings`: every stored reading's signature over the stored payload, its indexed
//!    columns against the payload, its signer against the gateway's registered key.
//! 3. `ledger::results`: results parse; attested ones verify against the market key (pinned
//!    with [`Trust::market_key`]: then every result must carry its attestation); each
//!    result's body against what its version 2 block committed to.
//! 4. `quarantine`: flagged readings against their pending quarantine items, accepted ones
//!    against the operator's decisions, and every decision against the block that lists it.
//! 5. `ledger::replay`: every mint against a settled result's trade and accepted readings;
//!    transfers and retirements signed by the lot's holder with the key valid when they were
//!    received, never more than the lot holds; the stored lots against the replay; withheld
//!    mints against the released mint entries.
//! 6. `statements::check_sums`: every statement's net equals its lines; payments between
//!    participants sum to zero per interval.
//! 7. `statements::settle_again`: every settled interval settled again from its result and
//!    readings with the published rules ([`crate::rules::settle_with_envelopes`]); stored
//!    statements and compliance rows must equal the recomputation, field by field.
//! 8. `commitments`: every settled interval as it was when its block was sealed (readings
//!    accepted by a later decision were flagged then) settled again: its withheld mints and
//!    mints must equal the recomputation, and for a version 2 block every part of the state
//!    commitment (readings with status, statements, compliance rows, withheld mints,
//!    decisions) must match. An alteration that keeps everything else consistent (for
//!    example a flagged reading marked accepted and its statements recomputed) still
//!    contradicts the authority's signed commitment.

mod blocks;
mod commitments;
mod ledger;
mod quarantine;
mod readings;
mod statements;

use crate::store::audit::{AuditData, has_settlement_tables, load};
use gridmesh_protocol::signing::PublicKey;
use gridmesh_runtime::db::Database;
use serde::Serialize;
use std::fmt;

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Inconsistency {
    /// The table holding the bad item (`blocks`, `entries`, `readings`, `results`,
    /// `statements`, `compliance`, `lots`, `withheld_mints`, `quarantine`, `gateways`).
    pub table: &'static str,
    /// Which item, e.g. `block 3` or `reading gw-1/home/1782043200`.
    pub location: String,
    /// What is wrong (naming the field when one field is).
    pub problem: String,
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [table {}]: {}",
            self.location, self.table, self.problem
        )
    }
}

/// The table a location names (by the location's first words).
fn table_of(location: &str) -> &'static str {
    const TABLES: [(&str, &str); 12] = [
        ("block", "blocks"),
        ("ledger entry", "entries"),
        ("reading", "readings"),
        ("result", "results"),
        ("statement", "statements"),
        ("compliance", "compliance"),
        ("balance of lot", "lots"),
        ("lots", "lots"),
        ("withheld mint", "withheld_mints"),
        ("quarantine", "quarantine"),
        ("gateway", "gateways"),
        ("interval", "results"),
    ];
    TABLES
        .iter()
        .find(|(prefix, _)| location.starts_with(prefix))
        .map_or("settlement", |(_, t)| t)
}

/// Which keys the audit trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Every block must be signed by this key (the settlement's `authority_key`).
    Pinned(PublicKey),
    /// Whoever signed block 0 (explicitly asked for: `--trust-first-block`); a chain re-signed
    /// entirely by another key then verifies, so pin the key wherever it is known.
    TrustFirstBlock,
}

/// The keys an audit trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    /// The block signer.
    pub authority: Authority,
    /// The market's result key: when given, every stored result must carry the market's
    /// attestation by this key; when not, attested results must all share one key.
    pub market_key: Option<PublicKey>,
}

impl Trust {
    /// Blocks signed by `authority`, results not pinned.
    pub fn pinned(authority: PublicKey) -> Self {
        Trust {
            authority: Authority::Pinned(authority),
            market_key: None,
        }
    }
}

/// Why an audit could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database could not be read.
    #[error("cannot read the settlement database")]
    Database(#[from] sqlx::Error),
    /// The database has no settlement tables.
    #[error(
        "this database has no settlement tables; check --database (it must be the URL `settlement serve` uses)"
    )]
    NotSettlement,
    /// The stored data is inconsistent.
    #[error("INCONSISTENT: {0}")]
    Inconsistent(#[from] Inconsistency),
}

/// What a clean audit covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Blocks checked.
    pub blocks: usize,
    /// Ledger entries checked.
    pub entries: usize,
    /// Readings checked.
    pub readings: usize,
    /// Mints checked against readings and trades.
    pub mints: usize,
    /// Lots compared with the replay.
    pub lots: usize,
    /// Statements checked.
    pub statements: usize,
    /// Settled intervals recomputed (statements and envelope compliance).
    pub intervals_recomputed: usize,
    /// Results whose market attestation was verified.
    pub results_signed: usize,
    /// The market key that signed the attested results.
    pub market_key: Option<String>,
    /// The authority key that signed every block.
    pub authority: Option<String>,
    /// Whether the authority key was pinned (not taken from block 0).
    pub authority_pinned: bool,
    /// Version 2 blocks whose state commitment was checked.
    pub commitments: usize,
    /// Withheld mints checked.
    pub withheld: usize,
    /// Operator decisions checked against the block listing them.
    pub decisions_sealed: usize,
    /// Operator decisions made since the last block (sealed by the next one).
    pub decisions_unsealed: usize,
}

fn bad(location: impl Into<String>, problem: impl Into<String>) -> AuditError {
    let location = location.into();
    AuditError::Inconsistent(Inconsistency {
        table: table_of(&location),
        location,
        problem: problem.into(),
    })
}

/// Audits the whole store. `authority`: the expected block signer; `None` trusts the signer
/// of block 0 (as `--trust-first-block`). See [`verify_with`] to pin the market key too.
pub async fn verify(
    db: &Database,
    authority: Option<PublicKey>,
) -> Result<AuditReport, AuditError> {
    verify_with(db, &trust_of(authority)).await
}

/// Audits the whole store, trusting the keys of `trust`.
pub async fn verify_with(db: &Database, trust: &Trust) -> Result<AuditReport, AuditError> {
    if !has_settlement_tables(&db.pool).await {
        return Err(AuditError::NotSettlement);
    }
    let data = load(db).await?;
    check_with(&data, trust)
}

fn trust_of(authority: Option<PublicKey>) -> Trust {
    Trust {
        authority: authority.map_or(Authority::TrustFirstBlock, Authority::Pinned),
        market_key: None,
    }
}

/// The checks over loaded data, in order; the first inconsistency ends them. `authority` as
/// in [`verify`].
pub fn check(data: &AuditData, authority: Option<PublicKey>) -> Result<AuditReport, AuditError> {
    check_with(data, &trust_of(authority))
}

/// The checks over loaded data with the keys of `trust`, in order (see the module docs).
pub fn check_with(data: &AuditData, trust: &Trust) -> Result<AuditReport, AuditError> {
    let mut report = AuditReport::default();
    let pinned = match trust.authority {
        Authority::Pinned(k) => Some(k),
        Authority::TrustFirstBlock => None,
    };
    report.authority_pinned = pinned.is_some();
    let chain = blocks::check(data, pinned, &mut report)?;
    let readings = readings::check(data, &mut report)?;
    let results = ledger::results(data, trust.market_key, &mut report)?;
    commitments::check_results(data, &chain)?;
    let decisions = quarantine::check(data, &chain, &readings, &mut report)?;
    ledger::replay(data, &results, &readings, &mut report)?;
    statements::check_sums(data, &mut report)?;
    statements::settle_again(data, &results, &readings, &mut report)?;
    commitments::check_sealed_state(data, &chain, &results, &readings, &decisions, &mut report)?;
    Ok(report)
}

/// The first field where `stored` and `expected` differ, as `path (stored X, expected Y)`,
/// e.g. `lines[0].amount (stored 1200, expected 200)`.
fn first_difference<T: Serialize>(stored: &T, expected: &T) -> String {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                keys.into_iter().find_map(|k| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                    )
                })
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (a, b))| walk(&format!("{path}[{i}]"), a, b)),
            _ if a != b => Some(format!("{path} (stored {a}, expected {b})")),
            _ => None,
        }
    }
    let (a, b) = (
        serde_json::to_value(stored).unwrap_or_default(),
        serde_json::to_value(expected).unwrap_or_default(),
    );
    walk("", &a, &b).unwrap_or_else(|| "no field".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::EntryRecord;

    fn first_problem(data: &AuditData) -> Inconsistency {
        match check(data, None) {
            Err(AuditError::Inconsistent(i)) => i,
            other => panic!("expected an inconsistency, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_store_is_consistent() {
        assert_eq!(
            check(&AuditData::default(), None).unwrap(),
            AuditReport::default()
        );
    }

    #[test]
    fn the_checks_are_pure_and_name_what_is_wrong() {
        let gateway = AuditData {
            gateways: vec![("gw-1".into(), "not json".into())],
            ..AuditData::default()
        };
        let i = first_problem(&gateway);
        assert_eq!(i.location, "gateway gw-1");
        assert!(i.problem.contains("does not parse"), "{i}");

        let entry = AuditData {
            entries: vec![EntryRecord {
                seq: 1,
                hash: "00".repeat(32),
                kind: "mint".into(),
                body: b"{}".to_vec(),
                block_height: None,
                created_at: 0,
            }],
            ..AuditData::default()
        };
        let i = first_problem(&entry);
        assert!(i.location.starts_with("ledger entry #1"), "{i}");
        assert!(i.problem.contains("was altered"), "{i}");
    }
}
