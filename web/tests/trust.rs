//! "Verified" means verified (issue 17): the dashboard's entry check against a settlement double
//! with a real two-block ledger signed by an authority key, answering what the real settlement
//! would — and, per test, with exactly one thing altered. Each alteration must fail exactly the
//! check that guards it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use gridmesh_protocol::api::settlement::{
    BlockHeaderView, BlockSummary, EntryView, ProofStep, StoredReading, StoredReadingStatus,
};
use gridmesh_protocol::example::{example_key, example_reading};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_web::WebConfig;
use gridmesh_web::hub::Hub;
use gridmesh_web::proof::{self, EntryProof, header_bytes};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One thing the double alters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    None,
    /// The entry's hashed bytes (a different amount).
    BodyBytes,
    /// Only the decoded JSON `body` beside the bytes.
    BodyJson,
    /// A sibling of the inclusion proof.
    ProofSibling,
    /// The block answer's own Merkle root and a matching forged proof: a re-hashed forgery.
    ForgedRoot,
    /// The block's signature.
    Signature,
    /// Blocks re-signed by another key (named in the answer).
    OtherAuthority,
    /// Block 0 replaced by a validly signed block with another root: the chain breaks.
    ChainParent,
    /// The reading re-signed by another valid key.
    ReadingKey,
    /// Only the JSON `reading` beside the signed payload.
    ReadingJson,
}

struct Ledger {
    authority: SigningKeyPair,
    /// (hex hash, body bytes) per block.
    blocks: Vec<Vec<(String, Vec<u8>)>>,
    reading: StoredReading,
    tamper: Tamper,
}

fn leaf(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// Root and proof for a block of at most two entries.
fn root_and_proof(leaves: &[[u8; 32]], index: usize) -> ([u8; 32], Vec<ProofStep>) {
    match leaves {
        [only] => (*only, Vec::new()),
        [l, r] => (
            node(l, r),
            vec![ProofStep {
                sibling: hex::encode(leaves[index ^ 1]),
                side: if index == 0 { "right" } else { "left" }.into(),
            }],
        ),
        _ => unreachable!("the double has blocks of one or two entries"),
    }
}

fn mint(trade: u32, amount: i64, reading_digest: &str) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"kind":"mint","interval":"2026-06-21T12:00:00Z/15","trade_index":{t},"#,
            r#""seller":"h001","buyer":"h002","seller_order":"o1","buyer_order":"o2","#,
            r#""source":"pv","price":200000,"amount":{a},"seller_readings":["{d}"],"#,
            r#""buyer_readings":[],"released":false}}"#
        ),
        t = trade,
        a = amount,
        d = reading_digest
    )
    .into_bytes()
}

impl Ledger {
    fn new() -> Self {
        let reading = example_reading();
        let envelope = SignedEnvelope::sign(&reading, &example_key());
        let digest = envelope.digest_hex();
        let stored = StoredReading {
            digest: digest.clone(),
            key: "k".into(),
            participant: "h001".into(),
            status: StoredReadingStatus::Accepted,
            envelope,
            reading,
        };
        let body = |t, a| {
            let b = mint(t, a, &digest);
            (hex::encode(leaf(&b)), b)
        };
        Ledger {
            authority: SigningKeyPair::from_seed([9; 32]),
            blocks: vec![vec![body(0, 500)], vec![body(1, 1000), body(2, 1500)]],
            reading: stored,
            tamper: Tamper::None,
        }
    }

    fn header(&self, height: usize, prev: [u8; 32], root: [u8; 32]) -> BlockHeaderView {
        BlockHeaderView {
            height: height as u64,
            interval: format!("2026-06-21T12:{:02}:00Z/15", height * 15),
            prev_hash: hex::encode(prev),
            merkle_root: hex::encode(root),
            entry_count: self.blocks[height].len() as u64,
            sealed_at: chrono::DateTime::parse_from_rfc3339("2026-06-21T13:00:00.123Z")
                .unwrap()
                .with_timezone(&chrono::Utc)
                + chrono::Duration::minutes(15 * height as i64),
        }
    }

    fn sign(header: BlockHeaderView, key: &SigningKeyPair, entries: Vec<String>) -> BlockSummary {
        let bytes = header_bytes(&header).unwrap();
        BlockSummary {
            hash: hex::encode(Sha256::digest(&bytes)),
            signature: hex::encode(key.sign_raw(&bytes)),
            public_key: key.public_key().to_string(),
            header,
            entries,
            header_base64: None,
        }
    }

    fn block(&self, height: usize) -> BlockSummary {
        let other = SigningKeyPair::from_seed([66; 32]);
        let key = if self.tamper == Tamper::OtherAuthority {
            &other
        } else {
            &self.authority
        };
        let mut prev = [0u8; 32];
        let mut out = None;
        for h in 0..=height {
            let leaves: Vec<[u8; 32]> = self.blocks[h].iter().map(|(_, b)| leaf(b)).collect();
            let (mut root, _) = root_and_proof(&leaves, 0);
            if h == 0 && self.tamper == Tamper::ChainParent && height == 0 {
                root = [7; 32];
            }
            let entries = self.blocks[h].iter().map(|(x, _)| x.clone()).collect();
            let b = Self::sign(self.header(h, prev, root), key, entries);
            prev = proof_hash(&b);
            out = Some(b);
        }
        let mut b = out.unwrap();
        if self.tamper == Tamper::Signature {
            b.signature = flip(&b.signature);
        }
        if self.tamper == Tamper::ForgedRoot && height == 1 {
            b.header.merkle_root = hex::encode([5u8; 32]);
        }
        b
    }

    fn entry(&self, hash: &str) -> Option<EntryView> {
        for (height, block) in self.blocks.iter().enumerate() {
            let Some(i) = block.iter().position(|(h, _)| h == hash) else {
                continue;
            };
            let leaves: Vec<[u8; 32]> = block.iter().map(|(_, b)| leaf(b)).collect();
            let (root, mut proof) = root_and_proof(&leaves, i);
            let mut bytes = block[i].1.clone();
            let mut body: gridmesh_protocol::api::settlement::EntryBody =
                serde_json::from_slice(&bytes).unwrap();
            match self.tamper {
                Tamper::BodyBytes => {
                    bytes = String::from_utf8(bytes)
                        .unwrap()
                        .replace("1000", "9000")
                        .into_bytes();
                }
                Tamper::BodyJson => {
                    if let gridmesh_protocol::api::settlement::EntryBody::Mint(m) = &mut body {
                        m.amount = gridmesh_protocol::units::Wh(999_999);
                    }
                }
                Tamper::ProofSibling => proof[0].sibling = flip(&proof[0].sibling),
                // A forged proof that leads to the forged root `5…5`: not possible with SHA-256,
                // so the forger just claims it; the check must use the signed header's root.
                Tamper::ForgedRoot => proof.clear(),
                _ => {}
            }
            return Some(EntryView {
                hash: hash.to_owned(),
                seq: i as i64,
                kind: "mint".into(),
                body,
                body_base64: B64.encode(&bytes),
                block_height: Some(height as i64),
                merkle_root: Some(if self.tamper == Tamper::ForgedRoot {
                    hex::encode(leaf(&bytes))
                } else {
                    hex::encode(root)
                }),
                proof: Some(proof),
                leaf_hashing: gridmesh_protocol::api::settlement::LEAF_HASHING.into(),
            });
        }
        None
    }

    fn reading(&self) -> StoredReading {
        let mut r = self.reading.clone();
        match self.tamper {
            Tamper::ReadingKey => {
                let intruder = SigningKeyPair::from_seed([13; 32]);
                r.envelope = SignedEnvelope::sign_bytes(r.envelope.payload.clone(), &intruder);
            }
            Tamper::ReadingJson => {
                r.reading.deltas.grid_export = gridmesh_protocol::units::Wh(777_777)
            }
            _ => {}
        }
        r
    }
}

fn proof_hash(b: &BlockSummary) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(&b.hash, &mut out).unwrap();
    out
}

fn flip(hx: &str) -> String {
    let first = u8::from_str_radix(&hx[..1], 16).unwrap() ^ 1;
    format!("{first:x}{}", &hx[1..])
}

type Shared = Arc<Mutex<Ledger>>;

async fn settlement(ledger: Shared) -> String {
    let app = Router::new()
        .route(
            "/ledger/blocks/{height}",
            get(|State(l): State<Shared>, Path(h): Path<usize>| async move {
                let l = l.lock().unwrap();
                if h < l.blocks.len() {
                    Json(l.block(h)).into_response()
                } else {
                    StatusCode::NOT_FOUND.into_response()
                }
            }),
        )
        .route(
            "/ledger/entries/{hash}",
            get(
                |State(l): State<Shared>, Path(h): Path<String>| async move {
                    match l.lock().unwrap().entry(&h) {
                        Some(e) => Json(e).into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        )
        .route(
            "/readings/{digest}",
            get(|State(l): State<Shared>| async move { Json(l.lock().unwrap().reading()) }),
        )
        .with_state(ledger);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A dashboard hub (no server, no refresher) over the double, with the authority key pinned
/// and the example gateway enrolled with its real key.
async fn setup(tamper: Tamper) -> (Arc<Hub>, String) {
    let mut ledger = Ledger::new();
    ledger.tamper = tamper;
    let authority = ledger.authority.public_key().to_string();
    let hash = ledger.blocks[1][0].0.clone();
    let gateway = ledger.reading.reading.gateway.clone();
    let url = settlement(Arc::new(Mutex::new(ledger))).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new(WebConfig {
        settlement_url: url,
        settlement_authority_key: Some(authority),
        data_dir: dir.keep(),
        ..WebConfig::default()
    })
    .unwrap();
    hub.update("test", |s| {
        s.gateways = vec![GatewayEnrollment {
            gateway,
            participant: "h001".parse().unwrap(),
            node: "f1".parse().unwrap(),
            public_key: example_key().public_key(),
            inverter_w: 0,
            battery_w: 0,
            latitude_microdeg: 0,
            longitude_microdeg: 0,
        }]
    });
    (hub, hash)
}

async fn verify(tamper: Tamper) -> EntryProof {
    let (hub, hash) = setup(tamper).await;
    proof::verify_entry(&hub, &hub.trust, &hash, |_| true)
        .await
        .unwrap()
}

fn failed(p: &EntryProof) -> Vec<&'static str> {
    p.checks
        .iter()
        .chain(p.readings.iter().flat_map(|r| &r.checks))
        .filter(|c| !c.ok)
        .map(|c| c.name)
        .collect()
}

#[tokio::test]
async fn an_untampered_entry_verifies_down_to_its_readings() {
    let p = verify(Tamper::None).await;
    assert!(p.verified, "{:#?}", p.checks);
    assert_eq!(failed(&p), Vec::<&str>::new());
    let names: Vec<_> = p.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        ["entry_hash", "block_signature", "merkle_root", "chain"]
    );
    assert_eq!(p.readings.len(), 1);
    assert!(p.readings[0].reading.is_some());
    assert!(
        p.checks[3].message.contains("first block"),
        "{}",
        p.checks[3].message
    );
}

#[tokio::test]
async fn altered_entry_bytes_fail_the_entry_hash_and_show_no_values() {
    let p = verify(Tamper::BodyBytes).await;
    assert!(!p.verified);
    assert!(failed(&p).contains(&"entry_hash"), "{:?}", failed(&p));
    assert!(
        p.body.is_none(),
        "no values from bytes that do not hash to the entry"
    );
}

#[tokio::test]
async fn values_come_from_the_verified_bytes_not_the_json_beside_them() {
    let p = verify(Tamper::BodyJson).await;
    assert!(p.verified, "{:?}", failed(&p));
    let Some(gridmesh_protocol::api::settlement::EntryBody::Mint(m)) = &p.body else {
        panic!("a mint");
    };
    assert_eq!(
        m.amount.0, 1000,
        "the amount in the hashed bytes, not the altered 999999"
    );

    let p = verify(Tamper::ReadingJson).await;
    assert!(p.verified, "{:?}", failed(&p));
    let shown = p.readings[0].reading.as_ref().unwrap();
    assert_eq!(
        shown.deltas.grid_export,
        example_reading().deltas.grid_export
    );
}

#[tokio::test]
async fn an_altered_proof_or_a_forged_root_fails_the_merkle_check() {
    let p = verify(Tamper::ProofSibling).await;
    assert_eq!(failed(&p), ["merkle_root"]);
    // Regression (issue 17): the root was taken from the entry answer itself, so a re-hashed
    // forgery that names its own root passed.
    let p = verify(Tamper::ForgedRoot).await;
    assert!(failed(&p).contains(&"block_signature") || failed(&p).contains(&"merkle_root"));
    assert!(!p.verified);
}

#[tokio::test]
async fn a_bad_signature_or_another_key_fails_the_block_signature() {
    let p = verify(Tamper::Signature).await;
    assert_eq!(failed(&p), ["block_signature"]);
    let p = verify(Tamper::OtherAuthority).await;
    assert_eq!(failed(&p), ["block_signature"]);
    let c = p
        .checks
        .iter()
        .find(|c| c.name == "block_signature")
        .unwrap();
    assert!(
        c.message.contains("pinned settlement authority key"),
        "{}",
        c.message
    );
}

#[tokio::test]
async fn a_broken_prev_hash_chain_fails_the_chain_check() {
    let p = verify(Tamper::ChainParent).await;
    assert_eq!(failed(&p), ["chain"], "{:#?}", p.checks);
    let c = p.checks.iter().find(|c| c.name == "chain").unwrap();
    assert!(c.message.contains("chain is broken"), "{}", c.message);
}

#[tokio::test]
async fn a_reading_signed_by_another_key_fails_the_registry_check() {
    let p = verify(Tamper::ReadingKey).await;
    assert_eq!(failed(&p), ["reading_key"]);
    assert!(
        p.readings[0].reading.is_none(),
        "no values from an unverified reading"
    );
}

#[tokio::test]
async fn without_a_pinned_key_nothing_shows_as_verified() {
    let (hub, hash) = setup(Tamper::None).await;
    let unpinned = proof::Trust::new(None, None);
    let p = proof::verify_entry(&hub, &unpinned, &hash, |_| true)
        .await
        .unwrap();
    assert!(!p.verified);
    assert!(failed(&p).contains(&"block_signature"));
}

#[tokio::test]
async fn a_verified_block_is_remembered_and_a_changed_history_is_caught() {
    let mut ledger = Ledger::new();
    let authority = ledger.authority.public_key().to_string();
    let hash = ledger.blocks[1][0].0.clone();
    ledger.tamper = Tamper::None;
    let shared = Arc::new(Mutex::new(ledger));
    let url = settlement(shared.clone()).await;
    let hub = Hub::new(WebConfig {
        settlement_url: url,
        settlement_authority_key: Some(authority),
        data_dir: tempfile::tempdir().unwrap().keep(),
        ..WebConfig::default()
    })
    .unwrap();
    let first = proof::verify_entry(&hub, &hub.trust, &hash, |_| true)
        .await
        .unwrap();
    assert!(first.checks.iter().all(|c| c.ok), "{:#?}", first.checks);
    // Settlement now answers a re-signed block 1 with another sealing time: signed by the
    // authority, but not the block 1 verified before.
    {
        let mut l = shared.lock().unwrap();
        l.blocks[1].swap(0, 1);
    }
    let second = proof::verify_entry(&hub, &hub.trust, &hash, |_| true)
        .await
        .unwrap();
    let chain = second.checks.iter().find(|c| c.name == "chain").unwrap();
    assert!(!chain.ok, "{chain:?}");
    assert!(
        chain.message.contains("verified before"),
        "{}",
        chain.message
    );
}

#[test]
fn signed_header_bytes_are_checked_and_their_fields_win() {
    // A version 2 header: the version 1 fields under the v2 tag, then a state commitment.
    let ledger = Ledger::new();
    let b = ledger.block(0);
    let v1 = header_bytes(&b.header).unwrap();
    let mut v2 = proof::BLOCK_TAG_V2.as_bytes().to_vec();
    v2.extend_from_slice(&v1[proof::BLOCK_TAG.len()..]);
    v2.extend_from_slice(&[3u8; 6 * 32 + 4]);
    let signed = BlockSummary {
        hash: hex::encode(Sha256::digest(&v2)),
        signature: hex::encode(ledger.authority.sign_raw(&v2)),
        header_base64: Some(B64.encode(&v2)),
        ..b.clone()
    };
    let authority = ledger.authority.public_key();
    let (_, header) = proof::check_block(&signed, &authority).unwrap();
    assert_eq!(header, b.header);
    // A field beside the signed bytes altered: refused, naming the signed value.
    let mut altered = signed.clone();
    altered.header.merkle_root = "11".repeat(32);
    let err = proof::check_block(&altered, &authority).unwrap_err();
    assert!(err.contains("differ from it"), "{err}");
    // The signed bytes altered: the hash no longer matches.
    let mut forged = v2.clone();
    forged[40] ^= 1;
    let forged = BlockSummary {
        header_base64: Some(B64.encode(&forged)),
        ..signed
    };
    assert!(proof::check_block(&forged, &authority).is_err());
}
