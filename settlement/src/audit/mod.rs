//! `settlement verify`: re-checks everything from storage alone and reports the FIRST
//! inconsistency precisely.
//!
//! Order of checks: (1) blocks by height: contiguous heights, header bytes, stored hash,
//! hash links, authority signature (and that one authority signed them all), entry count and
//! Merkle root over the block's entries; every entry's stored hash against its body; (2) every
//! stored reading: signature over the stored payload, the indexed columns against the payload,
//! the signer against the gateway's registered key; (3) every mint: a settled result with the
//! trade it names, readings of the seller and buyer for that interval that are stored, valid and
//! accepted, and no more minted than the seller exported or the buyer imported; (4) a replay of
//! all entries: every transfer and retirement signed by the lot's holder with the registered key,
//! never more than the lot holds (no token spent twice), and the stored balances equal to the
//! replay; (5) every statement's net equals its lines, and payments between participants sum to
//! zero per interval; (6) every settled interval is settled again from its stored result and
//! readings (`rules::settle_with_envelopes`: imbalances, the `envelope_excess` rule, mints'
//! totals): the stored statements and operating-envelope compliance rows must equal the
//! recomputation. Results stored with the market's attestation are checked against it
//! (signature and body digest, one market key for all), and no mint exceeds the seller's
//! export *within its operating envelope*.
//!
//! Storage is read once ([`crate::store::audit::load`]); the checks are pure functions over it,
//! one module per step: `blocks` (1), `readings` (2), `ledger` (3, 4), `statements` (5, 6).

mod blocks;
mod ledger;
mod readings;
mod statements;

use crate::store::audit::{AuditData, has_settlement_tables, load};
use gridmesh_protocol::signing::PublicKey;
use gridmesh_runtime::db::Database;
use serde::Serialize;

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct Inconsistency {
    /// What is wrong where, e.g. `block 3` or `reading gw-1/home/1782043200`.
    pub location: String,
    /// What is wrong.
    pub problem: String,
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
}

fn bad(location: impl Into<String>, problem: impl Into<String>) -> AuditError {
    AuditError::Inconsistent(Inconsistency {
        location: location.into(),
        problem: problem.into(),
    })
}

/// Audits the whole store. `authority`: the expected block signer (default: whoever signed
/// block 0, and every block must be signed by the same key).
pub async fn verify(
    db: &Database,
    authority: Option<PublicKey>,
) -> Result<AuditReport, AuditError> {
    if !has_settlement_tables(&db.pool).await {
        return Err(AuditError::NotSettlement);
    }
    let data = load(&db.pool).await?;
    check(&data, authority)
}

/// The checks over loaded data, in order; the first inconsistency ends them.
pub fn check(data: &AuditData, authority: Option<PublicKey>) -> Result<AuditReport, AuditError> {
    let mut report = AuditReport::default();
    blocks::check(data, authority, &mut report)?;
    let readings = readings::check(data, &mut report)?;
    let results = ledger::results(data, &mut report)?;
    ledger::replay(data, &results, &readings, &mut report)?;
    statements::check_sums(data, &mut report)?;
    statements::settle_again(data, &results, &readings, &mut report)?;
    Ok(report)
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
            }],
            ..AuditData::default()
        };
        let i = first_problem(&entry);
        assert!(i.location.starts_with("ledger entry #1"), "{i}");
        assert!(i.problem.contains("was altered"), "{i}");
    }
}
