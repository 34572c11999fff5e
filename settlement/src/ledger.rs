//! The tamper-evident ledger's pure parts: entry bodies, hashing, Merkle trees, inclusion
//! proofs and signed block headers.
//!
//! # Hashing (SHA-256, domain separated)
//! - An entry is stored as its JSON body bytes, verbatim; its hash (and Merkle leaf) is
//!   `SHA-256(0x00 ‖ body)`. A lot (a token holding) is named by the hash of the entry that
//!   created it.
//! - An inner node is `SHA-256(0x01 ‖ left ‖ right)`. An odd node at the end of a level is
//!   promoted unchanged (never duplicated, so no two leaf lists share a root). The root of an
//!   empty block is 32 zero bytes.
//! - A block header is the bytes `"gridmesh/block/v1"` ‖ height (u64 BE) ‖ interval start
//!   (i64 BE, Unix s) ‖ interval minutes (u16 BE) ‖ previous block hash (32) ‖ Merkle root (32)
//!   ‖ entry count (u64 BE) ‖ sealed-at (i64 BE, Unix ms). The block hash is
//!   `SHA-256(header)`; the authority signs the header bytes with ed25519. The first block's
//!   previous hash is 32 zero bytes.

use chrono::{DateTime, TimeZone, Utc};
use gridmesh_protocol::Interval;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The tag block headers start with.
pub const BLOCK_TAG: &str = "gridmesh/block/v1";
/// Length of a block header.
pub const HEADER_LEN: usize = 17 + 8 + 8 + 2 + 32 + 32 + 8 + 8;

pub use gridmesh_protocol::api::settlement::{
    EntryBody, MintEntry, ProofStep, RetireEntry, TransferEntry,
};

/// `SHA-256(0x00 ‖ body)`: the entry hash and Merkle leaf.
pub fn entry_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn next_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node(l, r),
            [odd] => *odd,
            _ => unreachable!("chunks(2)"),
        })
        .collect()
}

/// The Merkle root of leaves (see the module docs).
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return [0; 32];
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// The inclusion proof of leaf `index` (levels where the node is promoted contribute no step).
pub fn inclusion_proof(leaves: &[[u8; 32]], mut index: usize) -> Vec<ProofStep> {
    let mut proof = Vec::new();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if sibling < level.len() {
            proof.push(ProofStep {
                sibling: hex::encode(level[sibling]),
                side: if sibling < index { "left" } else { "right" }.to_owned(),
            });
        }
        level = next_level(&level);
        index /= 2;
    }
    proof
}

/// Checks an inclusion proof.
pub fn verify_proof(leaf: [u8; 32], proof: &[ProofStep], root: [u8; 32]) -> bool {
    let mut acc = leaf;
    for step in proof {
        let mut sibling = [0u8; 32];
        if hex::decode_to_slice(&step.sibling, &mut sibling).is_err() {
            return false;
        }
        acc = match step.side.as_str() {
            "left" => node(&sibling, &acc),
            "right" => node(&acc, &sibling),
            _ => return false,
        };
    }
    acc == root
}

/// A block header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Height (0 for the first block).
    pub height: u64,
    /// The settled interval.
    pub interval: Interval,
    /// Previous block hash (hex).
    pub prev_hash: String,
    /// Merkle root of the entries (hex).
    pub merkle_root: String,
    /// Number of entries.
    pub entry_count: u64,
    /// When it was sealed.
    pub sealed_at: DateTime<Utc>,
}

/// Why header bytes do not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block header is malformed: {0}")]
pub struct HeaderError(pub String);

impl BlockHeader {
    /// The canonical header bytes (signed, hashed). Fails if a hash field is not 64 hex
    /// characters.
    pub fn to_bytes(&self) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(BLOCK_TAG.as_bytes());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.interval.start_unix().to_be_bytes());
        out.extend_from_slice(&self.interval.length().minutes().to_be_bytes());
        out.extend_from_slice(&hex32(&self.prev_hash).map_err(|e| HeaderError(e.to_string()))?);
        out.extend_from_slice(&hex32(&self.merkle_root).map_err(|e| HeaderError(e.to_string()))?);
        out.extend_from_slice(&self.entry_count.to_be_bytes());
        out.extend_from_slice(&self.sealed_at.timestamp_millis().to_be_bytes());
        Ok(out)
    }

    /// Parses canonical header bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() != HEADER_LEN || !b.starts_with(BLOCK_TAG.as_bytes()) {
            return Err(HeaderError(format!(
                "expected {HEADER_LEN} bytes starting with {BLOCK_TAG}"
            )));
        }
        let mut at = BLOCK_TAG.len();
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let height = u64::from_be_bytes(take(8).try_into().expect("8"));
        let start = i64::from_be_bytes(take(8).try_into().expect("8"));
        let minutes = u16::from_be_bytes(take(2).try_into().expect("2"));
        let prev_hash = hex::encode(take(32));
        let merkle_root = hex::encode(take(32));
        let entry_count = u64::from_be_bytes(take(8).try_into().expect("8"));
        let sealed = i64::from_be_bytes(take(8).try_into().expect("8"));
        let interval =
            Interval::from_unix(start, minutes.into()).map_err(|e| HeaderError(e.to_string()))?;
        let sealed_at = Utc
            .timestamp_millis_opt(sealed)
            .single()
            .ok_or_else(|| HeaderError("sealed-at out of range".into()))?;
        Ok(BlockHeader {
            height,
            interval,
            prev_hash,
            merkle_root,
            entry_count,
            sealed_at,
        })
    }

    /// `SHA-256(header bytes)`.
    pub fn hash(&self) -> Result<[u8; 32], HeaderError> {
        Ok(Sha256::digest(self.to_bytes()?).into())
    }
}

/// A hash that is not 64 hex characters: the stored data is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a SHA-256 hash (64 hex characters)")]
pub struct BadHash(pub String);

/// Parses a SHA-256 hash from 64 hex characters.
pub fn hex32(s: &str) -> Result<[u8; 32], BadHash> {
    parse_hex32(s).ok_or_else(|| BadHash(s.to_owned()))
}

/// Parses 64 hex characters strictly.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok().map(|_| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u8) -> Vec<[u8; 32]> {
        (0..n).map(|i| entry_hash(&[i])).collect()
    }

    #[test]
    fn proofs_verify_for_every_leaf_and_size() {
        for n in 1..=9u8 {
            let l = leaves(n);
            let root = merkle_root(&l);
            for i in 0..l.len() {
                let p = inclusion_proof(&l, i);
                assert!(verify_proof(l[i], &p, root), "n={n} i={i}");
                assert!(!verify_proof(entry_hash(b"other"), &p, root));
            }
        }
        assert_eq!(merkle_root(&[]), [0; 32]);
        // Leaves and nodes are domain separated: a node is never a valid leaf.
        let l = leaves(2);
        assert_ne!(merkle_root(&l), entry_hash(&[l[0], l[1]].concat()));
    }

    #[test]
    fn header_round_trips() {
        let h = BlockHeader {
            height: 7,
            interval: Interval::parse("2026-06-21T12:00:00Z", 15).unwrap(),
            prev_hash: hex::encode([3u8; 32]),
            merkle_root: hex::encode([4u8; 32]),
            entry_count: 12,
            sealed_at: Utc.timestamp_millis_opt(1_782_044_100_250).unwrap(),
        };
        let b = h.to_bytes().unwrap();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(BlockHeader::from_bytes(&b).unwrap(), h);
    }

    /// Regression: malformed hex used to read as 32 zero bytes, so a corrupt hash gave a
    /// header (and Merkle leaves) that silently differed from what was stored.
    #[test]
    fn malformed_hashes_are_corruption_not_zeros() {
        let good = hex::encode([7u8; 32]);
        assert_eq!(hex32(&good), Ok([7u8; 32]));
        for bad in [
            "",
            "zz",
            &good[..62],
            &format!("{good}00"),
            &good.replace('7', "g"),
        ] {
            assert_eq!(hex32(bad), Err(BadHash(bad.to_owned())), "{bad:?}");
        }
        let h = BlockHeader {
            height: 1,
            interval: Interval::parse("2026-06-21T12:00:00Z", 15).unwrap(),
            prev_hash: "not hex".into(),
            merkle_root: hex::encode([4u8; 32]),
            entry_count: 0,
            sealed_at: Utc.timestamp_millis_opt(1_782_044_100_250).unwrap(),
        };
        let err = h.to_bytes().unwrap_err();
        assert!(err.to_string().contains("not hex"), "{err}");
        assert!(h.hash().is_err());
    }
}
