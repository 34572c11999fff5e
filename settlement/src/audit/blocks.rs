//! Step 1: blocks by height (contiguous heights, header bytes, stored hash, hash links, one
//! authority's signature, entry count and Merkle root) and every entry's hash against its body;
//! the verified headers, with their state commitments, for the later steps.

use super::{AuditError, AuditReport, bad};
use crate::ledger::{BlockHeader, entry_hash, merkle_root};
use crate::store::audit::{AuditData, BlockRecord, EntryRecord};
use gridmesh_protocol::signing::PublicKey;
use std::collections::{BTreeMap, HashMap};

/// The verified chain: every header by height, the block of each interval, and the block
/// that lists each operator decision.
#[derive(Default)]
pub(super) struct Chain {
    /// Headers by height.
    pub headers: Vec<BlockHeader>,
    /// Height by interval key.
    pub by_interval: HashMap<String, usize>,
    /// Height of the block listing each decision (quarantine id).
    pub decision_block: HashMap<i64, usize>,
    /// The first version 2 block's height.
    pub first_v2: Option<usize>,
}

/// Checks the blocks and entries; records the authority, block and entry counts.
pub(super) fn check(
    data: &AuditData,
    authority: Option<PublicKey>,
    report: &mut AuditReport,
) -> Result<Chain, AuditError> {
    let mut by_block = entries_by_block(&data.entries)?;
    let mut authority = authority;
    let mut prev_hash = hex::encode([0u8; 32]);
    let mut chain = Chain::default();
    for (i, block) in data.blocks.iter().enumerate() {
        let entries = by_block.remove(&block.height).unwrap_or_default();
        let header = check_block(block, i, &prev_hash, &entries, &mut authority)?;
        let loc = format!("block {}", block.height);
        match (&header.state, chain.first_v2) {
            (Some(state), first) => {
                chain.first_v2 = first.or(Some(i));
                for id in &state.decision_ids {
                    if let Some(h) = chain.decision_block.insert(*id, i) {
                        return Err(bad(
                            loc,
                            format!(
                                "lists quarantine decision #{id}, which block {h} listed already"
                            ),
                        ));
                    }
                }
            }
            (None, Some(first)) => {
                return Err(bad(
                    loc,
                    format!(
                        "is a version 1 header (no state commitment) after version 2 block {first}"
                    ),
                ));
            }
            (None, None) => {}
        }
        chain.by_interval.insert(block.interval_key.clone(), i);
        chain.headers.push(header);
        prev_hash = block.hash.clone();
        report.blocks += 1;
    }
    if let Some((h, entries)) = by_block.into_iter().next() {
        return Err(bad(
            format!("ledger entry #{}", entries[0].seq),
            format!("claims block {h}, which does not exist"),
        ));
    }
    report.authority = authority.map(|a| a.to_string());
    report.entries = data.entries.len();
    Ok(chain)
}

/// Every entry's hash against its body; the entries of each block, in ledger order.
fn entries_by_block(
    entries: &[EntryRecord],
) -> Result<BTreeMap<i64, Vec<&EntryRecord>>, AuditError> {
    let mut by_block: BTreeMap<i64, Vec<&EntryRecord>> = BTreeMap::new();
    for e in entries {
        let computed = hex::encode(entry_hash(&e.body));
        if computed != e.hash {
            return Err(bad(
                format!(
                    "ledger entry #{} ({}, stored hash {})",
                    e.seq, e.kind, e.hash
                ),
                format!("its body hashes to {computed}: the entry or its hash was altered"),
            ));
        }
        if let Some(h) = e.block_height {
            by_block.entry(h).or_default().push(e);
        }
    }
    Ok(by_block)
}

/// Checks one block (the `index`th, after a block hashing to `prev_hash`) with its entries,
/// signed by `authority` (the first block's signer when none is expected).
fn check_block(
    block: &BlockRecord,
    index: usize,
    prev_hash: &str,
    entries: &[&EntryRecord],
    authority: &mut Option<PublicKey>,
) -> Result<BlockHeader, AuditError> {
    let height = block.height;
    let loc = format!("block {height}");
    if height != index as i64 {
        return Err(bad(
            loc,
            format!("expected height {index}: a block is missing"),
        ));
    }
    let header = BlockHeader::from_bytes(&block.header).map_err(|e| bad(&loc, e.to_string()))?;
    if header.height != height as u64 || header.interval.key() != block.interval_key {
        return Err(bad(
            &loc,
            "the header's height or interval differs from the block's row",
        ));
    }
    let computed = hex::encode(header.hash().map_err(|e| bad(&loc, e.to_string()))?);
    if computed != block.hash {
        return Err(bad(
            &loc,
            format!(
                "header hashes to {computed}, but the stored hash is {}",
                block.hash
            ),
        ));
    }
    if header.prev_hash != prev_hash {
        return Err(bad(
            &loc,
            format!(
                "previous hash {} does not link to block {}'s hash {prev_hash}",
                header.prev_hash,
                height - 1
            ),
        ));
    }
    let key: PublicKey = block
        .public_key
        .parse()
        .map_err(|_| bad(&loc, "the signer's public key is malformed"))?;
    match *authority {
        None => *authority = Some(key),
        Some(a) if a != key => {
            return Err(bad(
                &loc,
                format!("signed by {key}, not by the settlement authority {a}"),
            ));
        }
        _ => {}
    }
    let sig: [u8; 64] = block
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| bad(&loc, "the signature is not 64 bytes"))?;
    if key.verify(&block.header, &sig).is_err() {
        return Err(bad(
            &loc,
            "the authority's signature over the header does not verify",
        ));
    }
    if entries.len() as u64 != header.entry_count {
        return Err(bad(
            &loc,
            format!(
                "header counts {} entries, {} are stored",
                header.entry_count,
                entries.len()
            ),
        ));
    }
    let leaves: Vec<[u8; 32]> = entries.iter().map(|e| entry_hash(&e.body)).collect();
    let root = hex::encode(merkle_root(&leaves));
    if root != header.merkle_root {
        return Err(bad(
            &loc,
            format!(
                "Merkle root of its entries is {root}, the header says {}",
                header.merkle_root
            ),
        ));
    }
    Ok(header)
}
