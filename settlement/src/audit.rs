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

use crate::ledger::{BlockHeader, EntryBody, entry_hash, merkle_root};
use crate::rules::{MeterRow, Statement, settle_with_envelopes};
use crate::verify::verify_signatures;
use gridmesh_protocol::envelope::{EnvelopeCompliance, SignedResult};
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::{PublicKey, Signable, SignedEnvelope};
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use gridmesh_protocol::{GatewayId, ParticipantId, Wh};
use gridmesh_runtime::db::Database;
use serde::Serialize;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

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

/// seq, hash, kind, body, block height.
type StoredEntry = (i64, String, String, Vec<u8>, Option<i64>);

struct ReadingInfo {
    participant: String,
    gateway: String,
    interval_start: i64,
    minutes: i64,
    status: String,
    import: i64,
    export: i64,
    pv: i64,
    battery_discharge: i64,
}

#[derive(Clone)]
struct Lot {
    holder: String,
    initial: i64,
    remaining: i64,
    retired: i64,
}

/// Audits the whole store. `authority`: the expected block signer (default: whoever signed
/// block 0, and every block must be signed by the same key).
pub async fn verify(
    db: &Database,
    authority: Option<PublicKey>,
) -> Result<AuditReport, AuditError> {
    let pool = &db.pool;
    let mut report = AuditReport::default();
    if sqlx::query("SELECT COUNT(*) FROM blocks")
        .fetch_one(pool)
        .await
        .is_err()
    {
        return Err(AuditError::NotSettlement);
    }

    // (1) Blocks and entries.
    let mut authority = authority;
    let mut prev_hash = hex::encode([0u8; 32]);
    let blocks = sqlx::query(
        "SELECT height, interval_key, header, hash, signature, public_key FROM blocks ORDER BY height",
    )
    .fetch_all(pool)
    .await?;
    let mut entries_by_block: BTreeMap<i64, Vec<(i64, String, Vec<u8>)>> = BTreeMap::new();
    let mut all_entries: Vec<StoredEntry> = Vec::new();
    for r in sqlx::query("SELECT seq, hash, kind, body, block_height FROM entries ORDER BY seq")
        .fetch_all(pool)
        .await?
    {
        let (seq, hash, kind, body, height): (i64, String, String, Vec<u8>, Option<i64>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let computed = hex::encode(entry_hash(&body));
        if computed != hash {
            return Err(bad(
                format!("ledger entry #{seq} ({kind}, stored hash {hash})"),
                format!("its body hashes to {computed}: the entry or its hash was altered"),
            ));
        }
        if let Some(h) = height {
            entries_by_block
                .entry(h)
                .or_default()
                .push((seq, hash.clone(), body.clone()));
        }
        all_entries.push((seq, hash, kind, body, height));
    }
    for (i, r) in blocks.iter().enumerate() {
        let height: i64 = r.get(0);
        let loc = format!("block {height}");
        if height != i as i64 {
            return Err(bad(loc, format!("expected height {i}: a block is missing")));
        }
        let key: String = r.get(1);
        let header_bytes: Vec<u8> = r.get(2);
        let hash: String = r.get(3);
        let signature: Vec<u8> = r.get(4);
        let public_key: String = r.get(5);
        let header =
            BlockHeader::from_bytes(&header_bytes).map_err(|e| bad(&loc, e.to_string()))?;
        if header.height != height as u64 || header.interval.key() != key {
            return Err(bad(
                &loc,
                "the header's height or interval differs from the block's row",
            ));
        }
        let computed = hex::encode(header.hash());
        if computed != hash {
            return Err(bad(
                &loc,
                format!("header hashes to {computed}, but the stored hash is {hash}"),
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
        let key: PublicKey = public_key
            .parse()
            .map_err(|_| bad(&loc, "the signer's public key is malformed"))?;
        match authority {
            None => authority = Some(key),
            Some(a) if a != key => {
                return Err(bad(
                    &loc,
                    format!("signed by {key}, not by the settlement authority {a}"),
                ));
            }
            _ => {}
        }
        let sig: [u8; 64] = signature
            .as_slice()
            .try_into()
            .map_err(|_| bad(&loc, "the signature is not 64 bytes"))?;
        if key.verify(&header_bytes, &sig).is_err() {
            return Err(bad(
                &loc,
                "the authority's signature over the header does not verify",
            ));
        }
        let entries = entries_by_block.remove(&height).unwrap_or_default();
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
        let leaves: Vec<[u8; 32]> = entries.iter().map(|(_, _, b)| entry_hash(b)).collect();
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
        prev_hash = hash;
        report.blocks += 1;
    }
    if let Some((h, entries)) = entries_by_block.into_iter().next() {
        return Err(bad(
            format!("ledger entry #{}", entries[0].0),
            format!("claims block {h}, which does not exist"),
        ));
    }
    report.authority = authority.map(|a| a.to_string());
    report.entries = all_entries.len();

    // (2) Readings.
    let gateways: HashMap<String, GatewayEnrollment> =
        sqlx::query("SELECT gateway, body FROM gateways")
            .fetch_all(pool)
            .await?
            .iter()
            .filter_map(|r| {
                Some((
                    r.get::<String, _>(0),
                    serde_json::from_str(&r.get::<String, _>(1)).ok()?,
                ))
            })
            .collect();
    let rows = sqlx::query(
        "SELECT reading_key, gateway, device, participant, interval_start, minutes, sequence, payload, \
         signature, public_key, digest, grid_import, grid_export, pv, battery_discharge, status \
         FROM readings ORDER BY reading_key",
    )
    .fetch_all(pool)
    .await?;
    let mut envelopes = Vec::with_capacity(rows.len());
    for r in &rows {
        let key: String = r.get(0);
        let signature: Vec<u8> = r.get(8);
        let pk: String = r.get(9);
        let loc = format!("reading {key}");
        let env = SignedEnvelope {
            payload: r.get(7),
            signature: signature
                .as_slice()
                .try_into()
                .map_err(|_| bad(&loc, "signature is not 64 bytes"))?,
            public_key: pk
                .parse()
                .map_err(|_| bad(&loc, "public key is malformed"))?,
        };
        envelopes.push(env);
    }
    let refs: Vec<&SignedEnvelope> = envelopes.iter().collect();
    let sig_ok = verify_signatures(&refs);
    let mut readings: HashMap<String, ReadingInfo> = HashMap::new();
    // Digests per (interval start, minutes), in reading-key order (as settlement reads them).
    let mut by_interval: HashMap<(i64, i64), Vec<String>> = HashMap::new();
    for ((r, env), ok) in rows.iter().zip(&envelopes).zip(sig_ok) {
        let key: String = r.get(0);
        let loc = format!("reading {key}");
        if !ok {
            return Err(bad(
                &loc,
                "the signature does not verify over the stored payload: the reading was altered",
            ));
        }
        let reading = Reading::decode(&env.payload).map_err(|e| bad(&loc, e.to_string()))?;
        let participant: String = r.get(3);
        let checks = [
            ("key", reading.idempotency_key() == key),
            ("gateway", reading.gateway.as_str() == r.get::<String, _>(1)),
            ("device", reading.device.as_str() == r.get::<String, _>(2)),
            (
                "interval_start",
                reading.interval.start_unix() == r.get::<i64, _>(4),
            ),
            (
                "minutes",
                i64::from(reading.interval.length().minutes()) == r.get::<i64, _>(5),
            ),
            ("sequence", reading.sequence as i64 == r.get::<i64, _>(6)),
            ("digest", env.digest_hex() == r.get::<String, _>(10)),
            (
                "grid_import",
                reading.deltas.grid_import.0 == r.get::<i64, _>(11),
            ),
            (
                "grid_export",
                reading.deltas.grid_export.0 == r.get::<i64, _>(12),
            ),
            ("pv", reading.deltas.pv.0 == r.get::<i64, _>(13)),
            (
                "battery_discharge",
                reading.deltas.battery_discharge.0 == r.get::<i64, _>(14),
            ),
        ];
        if let Some((column, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(bad(
                &loc,
                format!("stored column `{column}` differs from the signed payload"),
            ));
        }
        if let Some(g) = gateways.get(reading.gateway.as_str()) {
            if g.public_key != env.public_key {
                return Err(bad(
                    &loc,
                    format!(
                        "signed by {}, but the gateway's registered key is {}",
                        env.public_key, g.public_key
                    ),
                ));
            }
            if g.participant.as_str() != participant {
                return Err(bad(
                    &loc,
                    format!(
                        "attributed to {participant}, but gateway {} meters {}",
                        g.gateway, g.participant
                    ),
                ));
            }
        }
        by_interval
            .entry((r.get(4), r.get(5)))
            .or_default()
            .push(env.digest_hex());
        readings.insert(
            env.digest_hex(),
            ReadingInfo {
                participant,
                gateway: r.get(1),
                interval_start: r.get(4),
                minutes: r.get(5),
                status: r.get(15),
                import: r.get(11),
                export: r.get(12),
                pv: r.get(13),
                battery_discharge: r.get(14),
            },
        );
        report.readings += 1;
    }

    // (3) + (4) Mints against trades and readings; replay of the ledger.
    let mut results: HashMap<String, (IntervalResult, bool)> = HashMap::new();
    let mut market_key: Option<PublicKey> = None;
    for r in sqlx::query("SELECT interval_key, body, settled, attestation FROM results")
        .fetch_all(pool)
        .await?
    {
        let key: String = r.get(0);
        let loc = format!("result {key}");
        let body: String = r.get(1);
        let result: IntervalResult =
            serde_json::from_str(&body).map_err(|e| bad(&loc, format!("does not parse: {e}")))?;
        if let Some(attestation) = r.get::<Option<String>, _>(3) {
            let attestation: SignedEnvelope = serde_json::from_str(&attestation)
                .map_err(|e| bad(&loc, format!("its market attestation does not parse: {e}")))?;
            let signer = attestation.public_key;
            if let Some(k) = market_key.filter(|k| *k != signer) {
                return Err(bad(
                    &loc,
                    format!("attested by {signer}, but earlier results by the market key {k}"),
                ));
            }
            market_key = Some(signer);
            let signed = SignedResult {
                body_base64: body.into_bytes(),
                attestation,
            };
            let opened = signed
                .open(&signer)
                .map_err(|e| bad(&loc, format!("the market's attestation does not hold: {e}")))?;
            if opened.interval.key() != key {
                return Err(bad(
                    &loc,
                    format!("the attested result is for {}", opened.interval.key()),
                ));
            }
            report.results_signed += 1;
        }
        results.insert(key, (result, r.get::<i64, _>(2) != 0));
    }
    report.market_key = market_key.map(|k| k.to_string());
    let participant_keys: HashMap<String, PublicKey> =
        sqlx::query("SELECT participant, public_key FROM participants")
            .fetch_all(pool)
            .await?
            .iter()
            .filter_map(|r| Some((r.get::<String, _>(0), r.get::<String, _>(1).parse().ok()?)))
            .collect();
    let mut lots: HashMap<String, Lot> = HashMap::new();
    let mut minted_by_seller: HashMap<(String, String), i64> = HashMap::new();
    let mut minted_to_buyer: HashMap<(String, String), i64> = HashMap::new();
    for (seq, hash, kind, body, _) in &all_entries {
        let loc = format!("ledger entry #{seq} ({kind} {hash})");
        let entry: EntryBody =
            serde_json::from_slice(body).map_err(|e| bad(&loc, format!("does not parse: {e}")))?;
        if entry.kind() != kind {
            return Err(bad(
                &loc,
                format!(
                    "stored kind `{kind}` differs from its body `{}`",
                    entry.kind()
                ),
            ));
        }
        match entry {
            EntryBody::Mint(m) => {
                let (result, settled) = results.get(&m.interval).ok_or_else(|| {
                    bad(
                        &loc,
                        format!("no stored market result for interval {}", m.interval),
                    )
                })?;
                if !settled {
                    return Err(bad(&loc, format!("interval {} is not settled", m.interval)));
                }
                let trade = result.trades.get(m.trade_index as usize).ok_or_else(|| {
                    bad(
                        &loc,
                        format!("trade {} does not exist in the result", m.trade_index),
                    )
                })?;
                let matches = |c: &Counterparty, who: &str, order: &str| matches!(c, Counterparty::Order { participant, order_id, .. } if participant.as_str() == who && order_id == order);
                if !matches(&trade.seller, m.seller.as_str(), &m.seller_order)
                    || !matches(&trade.buyer, m.buyer.as_str(), &m.buyer_order)
                    || trade.price != m.price
                    || m.amount.0 <= 0
                    || m.amount > trade.energy
                {
                    return Err(bad(
                        &loc,
                        format!(
                            "is not backed by trade {} of interval {}",
                            m.trade_index, m.interval
                        ),
                    ));
                }
                for (side, digests, who) in [
                    ("seller", &m.seller_readings, &m.seller),
                    ("buyer", &m.buyer_readings, &m.buyer),
                ] {
                    if digests.is_empty() {
                        return Err(bad(&loc, format!("names no {side} reading")));
                    }
                    for d in digests {
                        let info = readings.get(d).ok_or_else(|| {
                            bad(&loc, format!("{side} reading {d} is not stored"))
                        })?;
                        if info.participant != who.as_str()
                            || info.interval_start != result.interval.start_unix()
                            || info.minutes != i64::from(result.interval.length().minutes())
                        {
                            return Err(bad(
                                &loc,
                                format!(
                                    "{side} reading {d} is not {who}'s reading for {}",
                                    m.interval
                                ),
                            ));
                        }
                        if info.status != "accepted" {
                            return Err(bad(
                                &loc,
                                format!("{side} reading {d} is `{}`, not accepted", info.status),
                            ));
                        }
                    }
                }
                let exported = export_within_envelope(result, &m.seller_readings, &readings);
                let imported: i64 = m.buyer_readings.iter().map(|d| readings[d].import).sum();
                let s = minted_by_seller
                    .entry((m.interval.clone(), m.seller.to_string()))
                    .or_default();
                *s += m.amount.0;
                if *s > exported {
                    return Err(bad(
                        &loc,
                        format!(
                            "{} minted from {}'s sales in {} exceeds its metered export within its operating envelope, {exported} Wh",
                            s, m.seller, m.interval
                        ),
                    ));
                }
                let b = minted_to_buyer
                    .entry((m.interval.clone(), m.buyer.to_string()))
                    .or_default();
                *b += m.amount.0;
                if *b > imported {
                    return Err(bad(
                        &loc,
                        format!(
                            "{} minted to {} in {} exceeds its metered import of {imported} Wh",
                            b, m.buyer, m.interval
                        ),
                    ));
                }
                lots.insert(
                    hash.clone(),
                    Lot {
                        holder: m.buyer.to_string(),
                        initial: m.amount.0,
                        remaining: m.amount.0,
                        retired: 0,
                    },
                );
                report.mints += 1;
            }
            EntryBody::Transfer(t) => {
                let op: TokenTransfer = t
                    .envelope
                    .open()
                    .map_err(|e| bad(&loc, format!("holder's signature: {e}")))?;
                if hex::encode(op.lot) != t.lot
                    || op.from != t.from
                    || op.to != t.to
                    || op.amount != t.amount
                {
                    return Err(bad(
                        &loc,
                        "the recorded fields differ from the signed transfer",
                    ));
                }
                spend(
                    &mut lots,
                    &participant_keys,
                    &loc,
                    &t.lot,
                    op.from.as_str(),
                    &t.envelope.public_key,
                    op.amount.0,
                    false,
                )?;
                lots.insert(
                    hash.clone(),
                    Lot {
                        holder: op.to.to_string(),
                        initial: op.amount.0,
                        remaining: op.amount.0,
                        retired: 0,
                    },
                );
            }
            EntryBody::Retire(t) => {
                let op: TokenRetire = t
                    .envelope
                    .open()
                    .map_err(|e| bad(&loc, format!("holder's signature: {e}")))?;
                if hex::encode(op.lot) != t.lot || op.holder != t.holder || op.amount != t.amount {
                    return Err(bad(
                        &loc,
                        "the recorded fields differ from the signed retirement",
                    ));
                }
                spend(
                    &mut lots,
                    &participant_keys,
                    &loc,
                    &t.lot,
                    op.holder.as_str(),
                    &t.envelope.public_key,
                    op.amount.0,
                    true,
                )?;
            }
        }
    }
    let stored =
        sqlx::query("SELECT lot, holder, initial, remaining, retired FROM lots ORDER BY lot")
            .fetch_all(pool)
            .await?;
    if stored.len() != lots.len() {
        return Err(bad(
            "lots",
            format!(
                "{} lots stored, the ledger creates {}",
                stored.len(),
                lots.len()
            ),
        ));
    }
    for r in &stored {
        let lot: String = r.get(0);
        let loc = format!("balance of lot {lot}");
        let want = lots
            .get(&lot)
            .ok_or_else(|| bad(&loc, "no ledger entry creates it"))?;
        let (holder, initial, remaining, retired): (String, i64, i64, i64) =
            (r.get(1), r.get(2), r.get(3), r.get(4));
        if holder != want.holder
            || initial != want.initial
            || remaining != want.remaining
            || retired != want.retired
        {
            return Err(bad(
                &loc,
                format!(
                    "stored holder {holder}, remaining {remaining}, retired {retired}; the ledger says holder {}, remaining {}, retired {}",
                    want.holder, want.remaining, want.retired
                ),
            ));
        }
        report.lots += 1;
    }

    // (5) Statements.
    let mut p2p: BTreeMap<String, i64> = BTreeMap::new();
    for r in sqlx::query("SELECT interval_key, participant, net, body FROM statements ORDER BY interval_key, participant")
        .fetch_all(pool)
        .await?
    {
        let (key, participant, net, body): (String, String, i64, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let loc = format!("statement of {participant} for {key}");
        let s: Statement = serde_json::from_str(&body).map_err(|e| bad(&loc, format!("does not parse: {e}")))?;
        let sum: i64 = s.lines.iter().map(|l| l.amount.0).sum();
        if sum != net || s.net.0 != net || s.participant.as_str() != participant || s.interval != key {
            return Err(bad(&loc, format!("net {net} does not equal the sum of its lines {sum}")));
        }
        *p2p.entry(key).or_default() += s.lines.iter().filter(|l| l.counterparty != "utility").map(|l| l.amount.0).sum::<i64>();
        report.statements += 1;
    }
    if let Some((key, sum)) = p2p.into_iter().find(|(_, s)| *s != 0) {
        return Err(bad(
            format!("statements for {key}"),
            format!("payments between participants sum to {sum}, not 0"),
        ));
    }

    // (6) Every settled interval settled again from its result and readings.
    let mut stored: HashMap<String, BTreeMap<String, Statement>> = HashMap::new();
    for r in sqlx::query("SELECT interval_key, participant, body FROM statements")
        .fetch_all(pool)
        .await?
    {
        let (key, participant, body): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let s: Statement = serde_json::from_str(&body).map_err(|e| {
            bad(
                format!("statement of {participant} for {key}"),
                format!("does not parse: {e}"),
            )
        })?;
        stored.entry(key).or_default().insert(participant, s);
    }
    let mut stored_compliance: HashMap<String, BTreeMap<String, EnvelopeCompliance>> =
        HashMap::new();
    for r in sqlx::query("SELECT interval_key, gateway, body FROM compliance")
        .fetch_all(pool)
        .await?
    {
        let (key, gateway, body): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let c: EnvelopeCompliance = serde_json::from_str(&body).map_err(|e| {
            bad(
                format!("compliance of {gateway} for {key}"),
                format!("does not parse: {e}"),
            )
        })?;
        stored_compliance.entry(key).or_default().insert(gateway, c);
    }
    let mut settled: Vec<(&String, &IntervalResult)> = results
        .iter()
        .filter(|(_, (_, settled))| *settled)
        .map(|(k, (r, _))| (k, r))
        .collect();
    settled.sort_by_key(|(_, r)| r.interval.start());
    for (key, result) in settled {
        let rows = meter_rows(result, &by_interval, &readings)?;
        let (settlement, compliance) = settle_with_envelopes(result, &rows).map_err(|e| {
            bad(
                format!("interval {key}"),
                format!("cannot be settled again: {e}"),
            )
        })?;
        let want: BTreeMap<String, Statement> = settlement
            .statements
            .into_iter()
            .map(|s| (s.participant.to_string(), s))
            .collect();
        let mut have = stored.remove(key).unwrap_or_default();
        for (p, w) in &want {
            let loc = format!("statement of {p} for {key}");
            match have.remove(p) {
                None => return Err(bad(&loc, "is missing: settling again writes one")),
                Some(h) if &h != w => {
                    return Err(bad(
                        &loc,
                        format!(
                            "differs from settling the stored result and readings again (stored net {}, envelope excess {} Wh; recomputed net {}, envelope excess {} Wh)",
                            h.net.0, h.envelope_excess.0, w.net.0, w.envelope_excess.0
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
        let mut have = stored_compliance.remove(key).unwrap_or_default();
        for c in &compliance {
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
                            "stored export {} / import {} Wh against {} / {} Wh; the readings and the envelope give {} / {} against {} / {}",
                            h.export_wh.0,
                            h.import_wh.0,
                            h.export_limit_wh.0,
                            h.import_limit_wh.0,
                            c.export_wh.0,
                            c.import_wh.0,
                            c.export_limit_wh.0,
                            c.import_limit_wh.0
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
        report.intervals_recomputed += 1;
    }
    if let Some(key) = stored.keys().chain(stored_compliance.keys()).next() {
        return Err(bad(
            format!("interval {key}"),
            "has statements or compliance rows but no settled result",
        ));
    }
    Ok(report)
}

/// The readings settlement used for an interval (`accepted` and `flagged`; `late` ones never
/// count), in reading-key order.
fn meter_rows(
    result: &IntervalResult,
    by_interval: &HashMap<(i64, i64), Vec<String>>,
    readings: &HashMap<String, ReadingInfo>,
) -> Result<Vec<MeterRow>, AuditError> {
    let at = (
        result.interval.start_unix(),
        i64::from(result.interval.length().minutes()),
    );
    let mut rows = Vec::new();
    for d in by_interval.get(&at).map(Vec::as_slice).unwrap_or_default() {
        let info = &readings[d];
        if info.status != "accepted" && info.status != "flagged" {
            continue;
        }
        let loc = || format!("reading {d}");
        rows.push(MeterRow {
            participant: ParticipantId::new(info.participant.clone())
                .map_err(|e| bad(loc(), e.to_string()))?,
            gateway: GatewayId::new(info.gateway.clone()).map_err(|e| bad(loc(), e.to_string()))?,
            digest: d.clone(),
            flagged: info.status == "flagged",
            imported: Wh(info.import),
            exported: Wh(info.export),
            pv: Wh(info.pv),
            battery_discharge: Wh(info.battery_discharge),
        });
    }
    Ok(rows)
}

/// The seller's metered export counted as delivery: per gateway, its export capped at the
/// gateway's envelope in the result (uncapped without one).
fn export_within_envelope(
    result: &IntervalResult,
    digests: &[String],
    readings: &HashMap<String, ReadingInfo>,
) -> i64 {
    let mut by_gateway: BTreeMap<&str, i64> = BTreeMap::new();
    for d in digests {
        if let Some(info) = readings.get(d) {
            *by_gateway.entry(info.gateway.as_str()).or_default() += info.export;
        }
    }
    by_gateway
        .into_iter()
        .map(|(g, export)| {
            result
                .envelopes
                .iter()
                .find(|e| e.gateway.as_str() == g)
                .map_or(export, |e| export.min(e.export_limit_wh.0))
        })
        .sum()
}

#[allow(clippy::too_many_arguments)]
fn spend(
    lots: &mut HashMap<String, Lot>,
    keys: &HashMap<String, PublicKey>,
    loc: &str,
    lot: &str,
    holder: &str,
    signer: &PublicKey,
    amount: i64,
    retire: bool,
) -> Result<(), AuditError> {
    let registered = keys
        .get(holder)
        .ok_or_else(|| bad(loc, format!("{holder} has no registered key")))?;
    if registered != signer {
        return Err(bad(
            loc,
            format!("signed by {signer}, not by {holder}'s registered key {registered}"),
        ));
    }
    let l = lots.get_mut(lot).ok_or_else(|| {
        bad(
            loc,
            format!("spends lot {lot}, which no earlier entry created"),
        )
    })?;
    if l.holder != holder {
        return Err(bad(
            loc,
            format!(
                "spends lot {lot} held by {}, not by the signer {holder}",
                l.holder
            ),
        ));
    }
    if l.remaining < amount {
        return Err(bad(
            loc,
            format!(
                "spends {amount} from lot {lot}, which holds only {}: tokens spent twice",
                l.remaining
            ),
        ));
    }
    l.remaining -= amount;
    if retire {
        l.retired += amount;
    }
    Ok(())
}
