//! "Verified" means verified: the dashboard's own check of a ledger entry and everything behind
//! it, so that what the entry view shows comes only from bytes that were checked.
//!
//! For an entry hash `H` (the [`verify_entry`] answer, `GET /api/ledger/verify/{hash}`):
//!
//! 1. **entry hash** — settlement's `body_base64` hashes to `H` (`SHA-256(0x00 ‖ body)`); the
//!    body shown is decoded from *those bytes*, never from the JSON `body` beside them;
//! 2. **block signature** — the block header is rebuilt from its fields in settlement's signed
//!    byte layout (see [`header_bytes`]), hashes to the block hash, and its ed25519 signature
//!    verifies with the settlement authority key **pinned in the dashboard's config**
//!    (`settlement_authority_key`), whatever key the answer names;
//! 3. **Merkle root** — the inclusion proof leads from the leaf to the root **in the signed
//!    header** (the entry answer's own `merkle_root` is ignored);
//! 4. **prev-hash chain** — each block's `prev_hash` is the hash of the (signature-checked)
//!    block below it, back to a block verified before, the pinned `ledger_anchor`, or the first
//!    block (whose previous hash is 32 zero bytes); verified block hashes are remembered;
//! 5. **reading keys** — for a mint, each signed reading it names hashes to its digest, its
//!    signature verifies, and it is signed by the key the market enrolled for its gateway (the
//!    registry, market `GET /gateways`); a reading's values come from its verified payload.
//!
//! The checks are pure functions over settlement's answers ([`check_block`], [`fold_proof`],
//! [`check_reading`]); [`verify_entry`] does the fetching. Every check is reported with a
//! sentence, failed or not, so the page can show exactly which one failed.

use crate::hub::Hub;
use crate::upstream::UpstreamError;
use gridmesh_protocol::Interval;
use gridmesh_protocol::api::settlement::{
    BlockHeaderView, BlockSummary, EntryBody, EntryView, ProofStep, StoredReading,
};
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::{PublicKey, Signable};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The tag settlement's block headers start with.
pub const BLOCK_TAG: &str = "gridmesh/block/v1";

/// How far back the chain is walked in one request before giving up (pin a recent block with
/// `ledger_anchor` for longer ledgers).
pub const MAX_CHAIN_WALK: u64 = 20_000;

/// One check and its outcome, with a sentence saying what was compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name: `entry_hash`, `block_signature`, `merkle_root`, `chain`, `reading_digest`,
    /// `reading_signature`, `reading_key`.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was checked, or what is wrong.
    pub message: String,
}

impl Check {
    fn pass(name: &'static str, message: impl Into<String>) -> Self {
        Check {
            name,
            ok: true,
            message: message.into(),
        }
    }
    fn fail(name: &'static str, message: impl Into<String>) -> Self {
        Check {
            name,
            ok: false,
            message: message.into(),
        }
    }
}

/// One signed reading behind a mint, checked.
#[derive(Debug, Clone, Serialize)]
pub struct ReadingProof {
    /// The digest the mint names.
    pub digest: String,
    /// Whether every check passed.
    pub ok: bool,
    /// The checks.
    pub checks: Vec<Check>,
    /// The reading decoded from the verified payload (`null` if it did not verify or belongs
    /// to another household).
    pub reading: Option<Reading>,
}

/// The dashboard's verdict on one entry (`GET /api/ledger/verify/{hash}`).
#[derive(Debug, Clone, Serialize)]
pub struct EntryProof {
    /// The entry hash asked about.
    pub hash: String,
    /// Whether every check passed (entry, block, proof, chain and every reading).
    pub verified: bool,
    /// The checks on the entry, its block and the chain.
    pub checks: Vec<Check>,
    /// The body decoded from the verified bytes (`null` when the bytes do not hash to `hash`).
    pub body: Option<EntryBody>,
    /// The entry's exact hashed bytes (base64), for a second check in the browser.
    pub body_base64: Option<String>,
    /// The inclusion proof as served.
    pub proof: Vec<ProofStep>,
    /// The block's header when its signature verified with the pinned key.
    pub block: Option<BlockHeaderView>,
    /// The checked block's hash (hex).
    pub block_hash: Option<String>,
    /// The signed readings behind a mint, each checked.
    pub readings: Vec<ReadingProof>,
}

/// The pinned trust roots and the block hashes verified so far.
#[derive(Debug, Default)]
pub struct Trust {
    authority: Option<PublicKey>,
    verified: Mutex<BTreeMap<u64, [u8; 32]>>,
}

impl Trust {
    /// Trust roots from the configuration (already validated): the authority key and the
    /// optional pinned block `HEIGHT:HASH`.
    pub fn new(authority_key: Option<&str>, anchor: Option<&str>) -> Self {
        let authority = authority_key.and_then(|k| k.parse().ok());
        let mut verified = BTreeMap::new();
        if let Some((height, hash)) = anchor.and_then(parse_anchor) {
            verified.insert(height, hash);
        }
        Trust {
            authority,
            verified: Mutex::new(verified),
        }
    }

    /// The pinned authority key, if configured.
    pub fn authority(&self) -> Option<&PublicKey> {
        self.authority.as_ref()
    }

    fn known(&self, height: u64) -> Option<[u8; 32]> {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&height)
            .copied()
    }

    fn remember(&self, blocks: &[(u64, [u8; 32])]) {
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        for (h, hash) in blocks {
            v.insert(*h, *hash);
        }
    }
}

/// Parses a pinned block `HEIGHT:HASH` (hash 64 hex characters).
pub fn parse_anchor(text: &str) -> Option<(u64, [u8; 32])> {
    let (height, hash) = text.trim().split_once(':')?;
    Some((height.parse().ok()?, parse_hex32(hash)?))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok().map(|_| out)
}

/// Settlement's signed block header bytes: `"gridmesh/block/v1"` ‖ height (u64 BE) ‖ interval
/// start (i64 BE, Unix s) ‖ interval minutes (u16 BE) ‖ previous hash (32) ‖ Merkle root (32)
/// ‖ entry count (u64 BE) ‖ sealed-at (i64 BE, Unix ms) — as settlement's `ledger` module and
/// docs/protocol.md document it.
pub fn header_bytes(h: &BlockHeaderView) -> Result<Vec<u8>, String> {
    let interval = Interval::from_key(&h.interval)
        .map_err(|e| format!("the header's interval `{}` is malformed: {e}", h.interval))?;
    let minutes: u16 = interval.length().minutes();
    let prev = parse_hex32(&h.prev_hash)
        .ok_or_else(|| format!("prev_hash `{}` is not 64 hex characters", h.prev_hash))?;
    let root = parse_hex32(&h.merkle_root)
        .ok_or_else(|| format!("merkle_root `{}` is not 64 hex characters", h.merkle_root))?;
    let mut out = Vec::with_capacity(BLOCK_TAG.len() + 98);
    out.extend_from_slice(BLOCK_TAG.as_bytes());
    out.extend_from_slice(&h.height.to_be_bytes());
    out.extend_from_slice(&interval.start_unix().to_be_bytes());
    out.extend_from_slice(&minutes.to_be_bytes());
    out.extend_from_slice(&prev);
    out.extend_from_slice(&root);
    out.extend_from_slice(&h.entry_count.to_be_bytes());
    out.extend_from_slice(&h.sealed_at.timestamp_millis().to_be_bytes());
    Ok(out)
}

/// The tag of version 2 headers (the version 1 fields, then a state commitment).
pub const BLOCK_TAG_V2: &str = "gridmesh/block/v2";

/// Length of the common part of a header after its tag.
const COMMON_LEN: usize = 8 + 8 + 2 + 32 + 32 + 8 + 8;

/// Reads the common fields from signed header bytes (version 1, or version 2 whose state
/// commitment follows them).
pub fn parse_header(bytes: &[u8]) -> Result<BlockHeaderView, String> {
    let rest = if let Some(r) = bytes.strip_prefix(BLOCK_TAG.as_bytes()) {
        if r.len() != COMMON_LEN {
            return Err(format!(
                "a {BLOCK_TAG} header is {} bytes, not {}",
                BLOCK_TAG.len() + COMMON_LEN,
                bytes.len()
            ));
        }
        r
    } else if let Some(r) = bytes.strip_prefix(BLOCK_TAG_V2.as_bytes()) {
        if r.len() < COMMON_LEN {
            return Err(format!(
                "the {BLOCK_TAG_V2} header is too short ({} bytes)",
                bytes.len()
            ));
        }
        r
    } else {
        return Err("the header bytes start with neither gridmesh/block/v1 nor v2".into());
    };
    let mut at = 0;
    let mut take = |n: usize| {
        let s = &rest[at..at + n];
        at += n;
        s
    };
    let be8 = |s: &[u8]| <[u8; 8]>::try_from(s).expect("8 bytes");
    let height = u64::from_be_bytes(be8(take(8)));
    let start = i64::from_be_bytes(be8(take(8)));
    let minutes = u16::from_be_bytes(<[u8; 2]>::try_from(take(2)).expect("2 bytes"));
    let prev_hash = hex::encode(take(32));
    let merkle_root = hex::encode(take(32));
    let entry_count = u64::from_be_bytes(be8(take(8)));
    let sealed = i64::from_be_bytes(be8(take(8)));
    let interval = Interval::from_unix(start, minutes.into())
        .map_err(|e| format!("the header's interval is malformed: {e}"))?;
    let sealed_at = chrono::DateTime::from_timestamp_millis(sealed)
        .ok_or_else(|| "the header's sealed-at is out of range".to_owned())?;
    Ok(BlockHeaderView {
        height,
        interval: interval.key(),
        prev_hash,
        merkle_root,
        entry_count,
        sealed_at,
    })
}

/// Checks one block on its own: its signed header bytes (`header_base64`, else rebuilt from
/// the fields in the version 1 layout) hash to the block hash, the signature verifies with the
/// pinned `authority` key, and the fields shown beside them are the signed ones. Returns the
/// block hash and the header **as read from the signed bytes**.
pub fn check_block(
    b: &BlockSummary,
    authority: &PublicKey,
) -> Result<([u8; 32], BlockHeaderView), String> {
    use base64::Engine as _;
    let bytes = match &b.header_base64 {
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| {
                format!(
                    "block {}'s header_base64 is not base64: {e}",
                    b.header.height
                )
            })?,
        None => header_bytes(&b.header)?,
    };
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    if hex::encode(hash) != b.hash.to_ascii_lowercase() {
        return Err(format!(
            "block {}'s header hashes to {}, but settlement names the block {}: a header field was altered",
            b.header.height,
            hex::encode(hash),
            b.hash
        ));
    }
    let mut signature = [0u8; 64];
    if hex::decode_to_slice(&b.signature, &mut signature).is_err() {
        return Err(format!(
            "block {}'s signature is not 128 hex characters",
            b.header.height
        ));
    }
    if authority.verify(&bytes, &signature).is_err() {
        let named = if b.public_key == authority.to_string() {
            String::new()
        } else {
            format!(" (the answer names key {})", b.public_key)
        };
        return Err(format!(
            "block {}'s signature does not verify with the pinned settlement authority key {authority}{named}: it was not sealed by settlement",
            b.header.height
        ));
    }
    let signed = parse_header(&bytes)?;
    if signed != b.header {
        return Err(format!(
            "block {}'s fields beside its signed header differ from it (signed: height {}, prev_hash {}, merkle_root {}, {} entries): the answer was altered",
            b.header.height,
            signed.height,
            signed.prev_hash,
            signed.merkle_root,
            signed.entry_count
        ));
    }
    Ok((hash, signed))
}

/// `SHA-256(0x00 ‖ body)`: an entry's hash and Merkle leaf.
pub fn entry_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// Folds an inclusion proof from `leaf` up to the root it leads to.
pub fn fold_proof(leaf: [u8; 32], proof: &[ProofStep]) -> Result<[u8; 32], String> {
    let mut acc = leaf;
    for (i, step) in proof.iter().enumerate() {
        let sibling = parse_hex32(&step.sibling)
            .ok_or_else(|| format!("proof step {i}'s sibling is not 64 hex characters"))?;
        let (l, r) = match step.side.as_str() {
            "left" => (sibling, acc),
            "right" => (acc, sibling),
            other => return Err(format!("proof step {i} has side `{other}`, not left/right")),
        };
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(l);
        h.update(r);
        acc = h.finalize().into();
    }
    Ok(acc)
}

/// Checks a signed reading against the digest a mint names and the gateway registry; the
/// reading is returned only when every check passed (decoded from the verified payload).
pub fn check_reading(
    digest: &str,
    stored: &StoredReading,
    enrolled: &[GatewayEnrollment],
) -> (Vec<Check>, Option<Reading>) {
    let env = &stored.envelope;
    let mut checks = Vec::new();
    let actual = hex::encode(Sha256::digest(&env.payload));
    let digest_ok = actual == digest.to_ascii_lowercase();
    checks.push(if digest_ok {
        Check::pass("reading_digest", "the signed payload hashes to the digest the mint names")
    } else {
        Check::fail(
            "reading_digest",
            format!("the signed payload hashes to {actual}, not to the digest {digest} the mint names: it is another reading"),
        )
    });
    let decoded = env
        .verify()
        .map_err(|e| e.to_string())
        .and_then(|()| Reading::decode(&env.payload).map_err(|e| e.to_string()));
    let reading = match decoded {
        Ok(r) => {
            checks.push(Check::pass(
                "reading_signature",
                "the ed25519 signature verifies over the payload",
            ));
            Some(r)
        }
        Err(e) => {
            checks.push(Check::fail(
                "reading_signature",
                format!("the signature does not verify or the payload does not decode: {e}"),
            ));
            None
        }
    };
    let key_ok = match &reading {
        None => {
            checks.push(Check::fail(
                "reading_key",
                "cannot check the gateway's enrolled key: the reading did not verify",
            ));
            false
        }
        Some(r) => match enrolled.iter().find(|g| g.gateway == r.gateway) {
            None => {
                checks.push(Check::fail(
                    "reading_key",
                    format!(
                        "gateway {} is not in the market's gateway registry",
                        r.gateway
                    ),
                ));
                false
            }
            Some(g) if g.public_key != env.public_key => {
                checks.push(Check::fail(
                    "reading_key",
                    format!(
                        "signed by key {}, but the market enrolled key {} for gateway {}: not the gateway's reading",
                        env.public_key, g.public_key, r.gateway
                    ),
                ));
                false
            }
            Some(g) => {
                checks.push(Check::pass(
                    "reading_key",
                    format!(
                        "signed by the key the market enrolled for gateway {}",
                        g.gateway
                    ),
                ));
                true
            }
        },
    };
    let ok = digest_ok && key_ok && reading.is_some();
    (checks, if ok { reading } else { None })
}

/// The block at `height`: from the snapshot's list when it is there, else fetched.
async fn block_at(hub: &Hub, height: u64) -> Result<BlockSummary, UpstreamError> {
    if let Some(b) = hub
        .snapshot()
        .blocks
        .iter()
        .find(|b| b.header.height == height)
    {
        return Ok(b.clone());
    }
    hub.settlement
        .get(&format!("/ledger/blocks/{height}"))
        .await
}

/// Walks the prev-hash chain down from `block` (already signature-checked, with hash `hash`)
/// to a block verified before, the pinned anchor or the first block.
async fn check_chain(hub: &Hub, trust: &Trust, block: &BlockHeaderView, hash: [u8; 32]) -> Check {
    let authority = match trust.authority() {
        Some(k) => *k,
        None => return Check::fail("chain", "no settlement_authority_key is pinned"),
    };
    let top = block.height;
    if let Some(known) = trust.known(top) {
        return if known == hash {
            Check::pass(
                "chain",
                format!("block {top} was verified before (or is the pinned block)"),
            )
        } else {
            Check::fail(
                "chain",
                format!(
                    "block {top}'s hash {} differs from the block {top} verified before ({}): settlement now answers another history",
                    hex::encode(hash),
                    hex::encode(known)
                ),
            )
        };
    }
    let mut walked = vec![(top, hash)];
    let mut child_prev = block.prev_hash.clone();
    let mut height = top;
    loop {
        if height == 0 {
            if child_prev != hex::encode([0u8; 32]) {
                return Check::fail(
                    "chain",
                    format!("block 0's previous hash is {child_prev}, not 32 zero bytes"),
                );
            }
            break;
        }
        if top - height >= MAX_CHAIN_WALK {
            return Check::fail(
                "chain",
                format!(
                    "no verified block within {MAX_CHAIN_WALK} blocks below {top}; pin a recent block with `ledger_anchor`"
                ),
            );
        }
        let below = height - 1;
        if let Some(known) = trust.known(below) {
            if hex::encode(known) != child_prev {
                return Check::fail(
                    "chain",
                    format!(
                        "block {height}'s prev_hash {child_prev} is not the hash {} of block {below} verified before",
                        hex::encode(known)
                    ),
                );
            }
            break;
        }
        let parent = match block_at(hub, below).await {
            Ok(b) => b,
            Err(e) => {
                return Check::fail(
                    "chain",
                    format!("cannot read block {below} to check the chain: {e}"),
                );
            }
        };
        if parent.header.height != below {
            return Check::fail(
                "chain",
                format!(
                    "asked for block {below}, settlement answered block {}: the chain cannot be followed",
                    parent.header.height
                ),
            );
        }
        let (parent_hash, parent_header) = match check_block(&parent, &authority) {
            Ok(h) => h,
            Err(e) => return Check::fail("chain", format!("below block {height}: {e}")),
        };
        if hex::encode(parent_hash) != child_prev {
            return Check::fail(
                "chain",
                format!(
                    "block {height}'s prev_hash {child_prev} is not the hash {} of block {below}: the chain is broken",
                    hex::encode(parent_hash)
                ),
            );
        }
        walked.push((below, parent_hash));
        child_prev = parent_header.prev_hash;
        height = below;
    }
    let steps = walked.len() - 1;
    trust.remember(&walked);
    Check::pass(
        "chain",
        format!(
            "block {top} links back through {steps} signed block(s) to {}",
            if height == 0 {
                "the first block".to_owned()
            } else {
                format!("block {} verified before", height - 1)
            }
        ),
    )
}

/// Verifies entry `hash` and everything behind it (see the module docs). Upstream failures are
/// reported as failed checks; `may_read` says whose readings' values the caller may see.
pub async fn verify_entry(
    hub: &Hub,
    trust: &Trust,
    hash: &str,
    may_read: impl Fn(&str) -> bool,
) -> Result<EntryProof, UpstreamError> {
    let hash = hash.to_ascii_lowercase();
    let entry: EntryView = hub
        .settlement
        .get(&format!("/ledger/entries/{hash}"))
        .await?;
    let mut checks = Vec::new();
    let mut proof = EntryProof {
        hash: hash.clone(),
        verified: false,
        checks: Vec::new(),
        body: None,
        body_base64: Some(entry.body_base64.clone()),
        proof: entry.proof.clone().unwrap_or_default(),
        block: None,
        block_hash: None,
        readings: Vec::new(),
    };
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry.body_base64.as_bytes())
        .unwrap_or_default();
    let leaf = entry_hash(&bytes);
    if hex::encode(leaf) == hash {
        match serde_json::from_slice::<EntryBody>(&bytes) {
            Ok(body) => {
                checks.push(Check::pass(
                    "entry_hash",
                    "SHA-256(0x00 ‖ body bytes) is the entry hash; the values shown are decoded from these bytes",
                ));
                proof.body = Some(body);
            }
            Err(e) => checks.push(Check::fail(
                "entry_hash",
                format!("the hashed bytes are not an entry body: {e}"),
            )),
        }
    } else {
        checks.push(Check::fail(
            "entry_hash",
            format!(
                "the body bytes hash to {}, not to the entry hash {hash}: the entry was altered",
                hex::encode(leaf)
            ),
        ));
    }
    let Some(authority) = trust.authority().copied() else {
        checks.push(Check::fail(
            "block_signature",
            "no settlement_authority_key is pinned in the dashboard's config, so no block can be verified; set it to settlement's authority public key",
        ));
        proof.checks = checks;
        return Ok(proof);
    };
    let Some(height) = entry.block_height.and_then(|h| u64::try_from(h).ok()) else {
        checks.push(Check::fail(
            "block_signature",
            "the entry is not sealed into a block yet; it can be verified once its interval's block is sealed",
        ));
        proof.checks = checks;
        return Ok(proof);
    };
    let block: Result<BlockSummary, _> = hub
        .settlement
        .get(&format!("/ledger/blocks/{height}"))
        .await;
    let block = match block {
        Ok(b) if b.header.height == height => b,
        Ok(b) => {
            checks.push(Check::fail(
                "block_signature",
                format!(
                    "asked for block {height}, settlement answered block {}",
                    b.header.height
                ),
            ));
            proof.checks = checks;
            return Ok(proof);
        }
        Err(e) => {
            checks.push(Check::fail(
                "block_signature",
                format!("cannot read block {height}: {e}"),
            ));
            proof.checks = checks;
            return Ok(proof);
        }
    };
    match check_block(&block, &authority) {
        Ok((block_hash, signed)) => {
            checks.push(Check::pass(
                "block_signature",
                format!("block {height}'s header hashes to its hash and is signed by the pinned settlement authority key"),
            ));
            let root = fold_proof(leaf, &proof.proof);
            checks.push(match root {
                Ok(r) if hex::encode(r) == signed.merkle_root => {
                    Check::pass(
                        "merkle_root",
                        format!(
                            "{} proof step(s) lead from the entry to the Merkle root in block {height}'s signed header",
                            proof.proof.len()
                        ),
                    )
                }
                Ok(r) => Check::fail(
                    "merkle_root",
                    format!(
                        "the proof leads to {}, but block {height}'s signed header has Merkle root {}: the entry is not in that block",
                        hex::encode(r),
                        signed.merkle_root
                    ),
                ),
                Err(e) => Check::fail("merkle_root", format!("the proof is malformed: {e}")),
            });
            checks.push(check_chain(hub, trust, &signed, block_hash).await);
            proof.block = Some(signed);
            proof.block_hash = Some(hex::encode(block_hash));
        }
        Err(e) => checks.push(Check::fail("block_signature", e)),
    }
    if let Some(EntryBody::Mint(mint)) = &proof.body {
        let enrolled = hub.snapshot().gateways.clone();
        for digest in mint.seller_readings.iter().chain(&mint.buyer_readings) {
            let stored: Result<StoredReading, _> =
                if digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()) {
                    hub.settlement.get(&format!("/readings/{digest}")).await
                } else {
                    Err(UpstreamError::NotFound {
                        service: crate::upstream::Service::Settlement,
                        url: digest.clone(),
                    })
                };
            let (checks, reading) = match stored {
                Ok(stored) => {
                    let (checks, reading) = check_reading(digest, &stored, &enrolled);
                    let visible = may_read(&stored.participant);
                    (checks, reading.filter(|_| visible))
                }
                Err(e) => (
                    vec![Check::fail(
                        "reading_digest",
                        format!("cannot read the signed reading: {e}"),
                    )],
                    None,
                ),
            };
            proof.readings.push(ReadingProof {
                digest: digest.clone(),
                ok: checks.iter().all(|c| c.ok),
                checks,
                reading,
            });
        }
    }
    proof.verified = checks.iter().all(|c| c.ok)
        && proof.body.is_some()
        && proof.block.is_some()
        && proof.readings.iter().all(|r| r.ok);
    proof.checks = checks;
    Ok(proof)
}
