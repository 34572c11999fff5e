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
//! - A version 2 header (`"gridmesh/block/v2"`, sealed since issue 14) is the same fields
//!   followed by the block's [`StateCommitment`]: six SHA-256 part digests (the interval's
//!   result, readings with their status, statements, compliance rows, withheld mints, and the
//!   operator decisions since the previous block) ‖ decision count (u32 BE) ‖ each decision's
//!   quarantine id (u64 BE). Each part digest is `SHA-256(tag ‖ 0x00 ‖ (len u32 BE ‖ item)*)`
//!   with the items of [`StateCommitment`]'s fields. Version 1 headers still parse and verify.

use chrono::{DateTime, TimeZone, Utc};
use gridmesh_protocol::Interval;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The tag version 1 block headers start with (no state commitment).
pub const BLOCK_TAG: &str = "gridmesh/block/v1";
/// The tag version 2 block headers start with (with a [`StateCommitment`]).
pub const BLOCK_TAG_V2: &str = "gridmesh/block/v2";
/// Length of a version 1 block header (and of a version 2 header's common part).
pub const HEADER_LEN: usize = 17 + 8 + 8 + 2 + 32 + 32 + 8 + 8;
/// Length of a version 2 header's state commitment without its decision ids.
pub const COMMITMENT_LEN: usize = 6 * 32 + 4;

/// Tags of the part digests of a [`StateCommitment`], in header order.
pub const PART_TAGS: [&str; 6] = [
    "gridmesh/state/result/v1",
    "gridmesh/state/readings/v1",
    "gridmesh/state/statements/v1",
    "gridmesh/state/compliance/v1",
    "gridmesh/state/withheld/v1",
    "gridmesh/state/decisions/v1",
];

/// What a version 2 block commits to besides its entries: the settled interval's money state
/// at sealing, and the operator decisions made since the previous block. Each digest is
/// [`part_digest`] of the items named on its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCommitment {
    /// The stored result body bytes (one item).
    pub result: [u8; 32],
    /// `reading_key \n digest \n status` of each `accepted` or `flagged` reading of the
    /// interval, by reading key (the status at sealing).
    pub readings: [u8; 32],
    /// Each statement's JSON (`serde_json`, field order as declared), by participant.
    pub statements: [u8; 32],
    /// Each compliance row's JSON, by gateway.
    pub compliance: [u8; 32],
    /// Each withheld mint plan's JSON, in the order withheld.
    pub withheld: [u8; 32],
    /// `id \n reading_key \n status \n resolved_at_ms` of each decision in `decision_ids`.
    pub decisions: [u8; 32],
    /// The quarantine ids of the operator decisions (e.g. a flagged reading accepted) made
    /// since the previous block, ascending.
    pub decision_ids: Vec<i64>,
}

/// `SHA-256(tag ‖ 0x00 ‖ (len u32 BE ‖ item)*)`: one part of a [`StateCommitment`].
pub fn part_digest<I, T>(tag: &str, items: I) -> [u8; 32]
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update([0u8]);
    for item in items {
        let item = item.as_ref();
        h.update((item.len() as u32).to_be_bytes());
        h.update(item);
    }
    h.finalize().into()
}

/// A reading's item in the `readings` part.
pub fn reading_item(key: &str, digest: &str, status: &str) -> String {
    format!("{key}\n{digest}\n{status}")
}

/// A decision's item in the `decisions` part.
pub fn decision_item(id: i64, reading_key: &str, status: &str, resolved_at_ms: i64) -> String {
    format!("{id}\n{reading_key}\n{status}\n{resolved_at_ms}")
}

/// One reading as the `readings` part sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedReading {
    /// Idempotency key.
    pub key: String,
    /// SHA-256 of the signed payload (hex).
    pub digest: String,
    /// `accepted` or `flagged` (others are not committed).
    pub status: String,
}

/// One operator decision on a quarantine item, as the `decisions` part sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Quarantine id.
    pub id: i64,
    /// The reading it decided (empty when none).
    pub reading_key: String,
    /// The decision (`accepted`, ...).
    pub status: String,
    /// When it was made, Unix ms.
    pub resolved_at: i64,
}

/// The money state of one settled interval that a block commits to.
#[derive(Debug, Clone, Copy)]
pub struct IntervalState<'a> {
    /// The stored result body bytes.
    pub result_body: &'a [u8],
    /// The interval's readings (any order; only `accepted` and `flagged` ones count).
    pub readings: &'a [CommittedReading],
    /// Its statements (any order).
    pub statements: &'a [crate::rules::Statement],
    /// Its compliance rows (any order).
    pub compliance: &'a [gridmesh_protocol::envelope::EnvelopeCompliance],
    /// Its withheld mints, in the order withheld.
    pub withheld: &'a [crate::rules::MintPlan],
}

impl StateCommitment {
    /// Commits to an interval's state and the decisions since the previous block (any order).
    pub fn compute(state: IntervalState<'_>, decisions: &[Decision]) -> Self {
        let mut readings: Vec<&CommittedReading> = state
            .readings
            .iter()
            .filter(|r| r.status == "accepted" || r.status == "flagged")
            .collect();
        readings.sort_by(|a, b| a.key.cmp(&b.key));
        let mut statements: Vec<&crate::rules::Statement> = state.statements.iter().collect();
        statements.sort_by(|a, b| a.participant.as_str().cmp(b.participant.as_str()));
        let mut compliance: Vec<_> = state.compliance.iter().collect();
        compliance.sort_by(|a, b| a.gateway.as_str().cmp(b.gateway.as_str()));
        let mut decisions: Vec<&Decision> = decisions.iter().collect();
        decisions.sort_by_key(|d| d.id);
        StateCommitment {
            result: part_digest(PART_TAGS[0], [state.result_body]),
            readings: part_digest(
                PART_TAGS[1],
                readings
                    .iter()
                    .map(|r| reading_item(&r.key, &r.digest, &r.status)),
            ),
            statements: part_digest(PART_TAGS[2], statements.iter().map(|s| json(*s))),
            compliance: part_digest(PART_TAGS[3], compliance.iter().map(|c| json(*c))),
            withheld: part_digest(PART_TAGS[4], state.withheld.iter().map(json)),
            decisions: part_digest(
                PART_TAGS[5],
                decisions
                    .iter()
                    .map(|d| decision_item(d.id, &d.reading_key, &d.status, d.resolved_at)),
            ),
            decision_ids: decisions.iter().map(|d| d.id).collect(),
        }
    }

    /// The part digests with their names, in header order.
    pub fn parts(&self) -> [(&'static str, &[u8; 32]); 6] {
        [
            ("result", &self.result),
            ("readings", &self.readings),
            ("statements", &self.statements),
            ("compliance", &self.compliance),
            ("withheld", &self.withheld),
            ("decisions", &self.decisions),
        ]
    }
}

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
    /// The state commitment (version 2 headers); `None` for a version 1 header.
    pub state: Option<StateCommitment>,
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
        let tag = if self.state.is_some() {
            BLOCK_TAG_V2
        } else {
            BLOCK_TAG
        };
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.interval.start_unix().to_be_bytes());
        out.extend_from_slice(&self.interval.length().minutes().to_be_bytes());
        out.extend_from_slice(&hex32(&self.prev_hash).map_err(|e| HeaderError(e.to_string()))?);
        out.extend_from_slice(&hex32(&self.merkle_root).map_err(|e| HeaderError(e.to_string()))?);
        out.extend_from_slice(&self.entry_count.to_be_bytes());
        out.extend_from_slice(&self.sealed_at.timestamp_millis().to_be_bytes());
        if let Some(state) = &self.state {
            for (_, d) in state.parts() {
                out.extend_from_slice(d);
            }
            let count = u32::try_from(state.decision_ids.len())
                .map_err(|_| HeaderError("too many decisions for one block".into()))?;
            out.extend_from_slice(&count.to_be_bytes());
            for id in &state.decision_ids {
                out.extend_from_slice(&(*id as u64).to_be_bytes());
            }
        }
        Ok(out)
    }

    /// Parses canonical header bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, HeaderError> {
        let v2 = b.starts_with(BLOCK_TAG_V2.as_bytes());
        let fits = if v2 {
            b.len() >= HEADER_LEN + COMMITMENT_LEN
        } else {
            b.len() == HEADER_LEN && b.starts_with(BLOCK_TAG.as_bytes())
        };
        if !fits {
            return Err(HeaderError(format!(
                "expected {HEADER_LEN} bytes starting with {BLOCK_TAG}, or at least {} starting with {BLOCK_TAG_V2}",
                HEADER_LEN + COMMITMENT_LEN
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
        let state = if v2 {
            let mut part = || -> [u8; 32] { take(32).try_into().expect("32") };
            let (result, readings, statements, compliance, withheld, decisions) =
                (part(), part(), part(), part(), part(), part());
            let count = u32::from_be_bytes(take(4).try_into().expect("4")) as usize;
            if b.len() != HEADER_LEN + COMMITMENT_LEN + 8 * count {
                return Err(HeaderError(format!(
                    "a version 2 header with {count} decisions is {} bytes, not {}",
                    HEADER_LEN + COMMITMENT_LEN + 8 * count,
                    b.len()
                )));
            }
            let decision_ids = (0..count)
                .map(|_| u64::from_be_bytes(take(8).try_into().expect("8")) as i64)
                .collect();
            Some(StateCommitment {
                result,
                readings,
                statements,
                compliance,
                withheld,
                decisions,
                decision_ids,
            })
        } else {
            None
        };
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
            state,
        })
    }

    /// `SHA-256(header bytes)`.
    pub fn hash(&self) -> Result<[u8; 32], HeaderError> {
        Ok(Sha256::digest(self.to_bytes()?).into())
    }
}

/// A part item's bytes: `serde_json`, fields in declared order.
fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state items always serialise")
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
            state: None,
        };
        let b = h.to_bytes().unwrap();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(BlockHeader::from_bytes(&b).unwrap(), h);
        let v2 = BlockHeader {
            state: Some(StateCommitment {
                result: [1; 32],
                readings: [2; 32],
                statements: [3; 32],
                compliance: [4; 32],
                withheld: [5; 32],
                decisions: [6; 32],
                decision_ids: vec![3, 9],
            }),
            ..h
        };
        let b2 = v2.to_bytes().unwrap();
        assert_eq!(b2.len(), HEADER_LEN + COMMITMENT_LEN + 16);
        assert!(b2.starts_with(BLOCK_TAG_V2.as_bytes()));
        assert_eq!(BlockHeader::from_bytes(&b2).unwrap(), v2);
        // A truncated or extended version 2 header is malformed.
        assert!(BlockHeader::from_bytes(&b2[..b2.len() - 1]).is_err());
        assert!(BlockHeader::from_bytes(&[b2.as_slice(), &[0]].concat()).is_err());
    }

    #[test]
    fn part_digests_are_length_prefixed_and_tagged() {
        // Moving a byte between items, or changing the tag, changes the digest.
        assert_ne!(
            part_digest(PART_TAGS[0], ["ab", "c"]),
            part_digest(PART_TAGS[0], ["a", "bc"])
        );
        assert_ne!(
            part_digest(PART_TAGS[0], ["a"]),
            part_digest(PART_TAGS[1], ["a"])
        );
        assert_ne!(
            part_digest(PART_TAGS[2], Vec::<&[u8]>::new()),
            part_digest(PART_TAGS[2], [b""])
        );
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
            state: None,
        };
        let err = h.to_bytes().unwrap_err();
        assert!(err.to_string().contains("not hex"), "{err}");
        assert!(h.hash().is_err());
    }
}
