//! Steps 3 and 4: every mint against a settled result's trade and the stored, accepted readings
//! of its seller and buyer (never more than the seller exported within its envelope or the
//! buyer imported); a replay of all entries (transfers and retirements signed by the lot's
//! holder with the registered key, never more than the lot holds); the stored lots against the
//! replay. Results stored with the market's attestation are checked against it first.

use super::readings::{ReadingInfo, Readings};
use super::{AuditError, AuditReport, bad};
use crate::ledger::{EntryBody, MintEntry, RetireEntry, TransferEntry};
use crate::store::audit::{AuditData, ResultRecord};
use gridmesh_protocol::envelope::SignedResult;
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::rotation::KeyPeriod;
use gridmesh_protocol::signing::{PublicKey, SignedEnvelope};
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use std::collections::{BTreeMap, HashMap};

/// The stored results by interval key, with whether each is settled.
pub(super) type Results = HashMap<String, (IntervalResult, bool)>;

/// Parses every result and checks the market's attestations: by `pinned` when given (then
/// every result must be attested), else by one market key for all.
pub(super) fn results(
    data: &AuditData,
    pinned: Option<PublicKey>,
    report: &mut AuditReport,
) -> Result<Results, AuditError> {
    let mut results = HashMap::new();
    let mut market_key: Option<PublicKey> = pinned;
    for r in &data.results {
        let loc = format!("result {}", r.key);
        let result: IntervalResult =
            serde_json::from_str(&r.body).map_err(|e| bad(&loc, format!("does not parse: {e}")))?;
        if result.interval.key() != r.key {
            return Err(bad(
                &loc,
                format!(
                    "field interval: the body is the result of {}",
                    result.interval.key()
                ),
            ));
        }
        match (&r.attestation, pinned) {
            (Some(attestation), _) => {
                check_attestation(r, attestation, &mut market_key)?;
                report.results_signed += 1;
            }
            (None, Some(k)) => {
                return Err(bad(
                    &loc,
                    format!(
                        "field attestation is empty, but results must be signed by the pinned market key {k}"
                    ),
                ));
            }
            (None, None) => {}
        }
        results.insert(r.key.clone(), (result, r.settled));
    }
    report.market_key = market_key.map(|k| k.to_string());
    Ok(results)
}

fn check_attestation(
    r: &ResultRecord,
    attestation: &str,
    market_key: &mut Option<PublicKey>,
) -> Result<(), AuditError> {
    let loc = format!("result {}", r.key);
    let attestation: SignedEnvelope = serde_json::from_str(attestation)
        .map_err(|e| bad(&loc, format!("its market attestation does not parse: {e}")))?;
    let signer = attestation.public_key;
    if let Some(k) = market_key.filter(|k| *k != signer) {
        return Err(bad(
            &loc,
            format!("attested by {signer}, not by the market key {k}"),
        ));
    }
    *market_key = Some(signer);
    let signed = SignedResult {
        body_base64: r.body.clone().into_bytes(),
        attestation,
    };
    let opened = signed
        .open(&signer)
        .map_err(|e| bad(&loc, format!("the market's attestation does not hold: {e}")))?;
    if opened.interval.key() != r.key {
        return Err(bad(
            &loc,
            format!("the attested result is for {}", opened.interval.key()),
        ));
    }
    Ok(())
}

#[derive(Clone)]
struct Lot {
    holder: String,
    initial: i64,
    remaining: i64,
    retired: i64,
}

impl Lot {
    fn new(holder: String, amount: i64) -> Self {
        Lot {
            holder,
            initial: amount,
            remaining: amount,
            retired: 0,
        }
    }
}

/// The replay's state.
struct Replay<'a> {
    results: &'a Results,
    readings: &'a HashMap<String, ReadingInfo>,
    participant_keys: HashMap<&'a str, Vec<PublicKey>>,
    key_periods: HashMap<&'a str, Vec<&'a KeyPeriod>>,
    lots: HashMap<String, Lot>,
    minted_by_seller: HashMap<(String, String), i64>,
    minted_to_buyer: HashMap<(String, String), i64>,
}

/// Replays every entry, then compares the stored lots with the replay.
pub(super) fn replay(
    data: &AuditData,
    results: &Results,
    readings: &Readings,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let mut replay = Replay {
        results,
        readings: &readings.by_digest,
        // A key that does not parse counts as no registered key.
        participant_keys: data.participants.iter().fold(
            HashMap::new(),
            |mut keys: HashMap<&str, Vec<PublicKey>>, (p, k)| {
                if let Ok(k) = k.parse() {
                    keys.entry(p.as_str()).or_default().push(k);
                }
                keys
            },
        ),
        key_periods: data.key_periods.iter().fold(
            HashMap::new(),
            |mut periods: HashMap<&str, Vec<&KeyPeriod>>, (p, k)| {
                periods.entry(p.as_str()).or_default().push(k);
                periods
            },
        ),
        lots: HashMap::new(),
        minted_by_seller: HashMap::new(),
        minted_to_buyer: HashMap::new(),
    };
    for e in &data.entries {
        let loc = format!("ledger entry #{} ({} {})", e.seq, e.kind, e.hash);
        let entry: EntryBody = serde_json::from_slice(&e.body)
            .map_err(|err| bad(&loc, format!("does not parse: {err}")))?;
        if entry.kind() != e.kind {
            return Err(bad(
                &loc,
                format!(
                    "stored kind `{}` differs from its body `{}`",
                    e.kind,
                    entry.kind()
                ),
            ));
        }
        match entry {
            EntryBody::Mint(m) => {
                replay.mint(&loc, &e.hash, &m)?;
                report.mints += 1;
            }
            EntryBody::Transfer(t) => replay.transfer(&loc, &e.hash, &t, e.created_at)?,
            EntryBody::Retire(t) => replay.retire(&loc, &t, e.created_at)?,
        }
    }
    compare_lots(data, &replay.lots, report)
}

impl Replay<'_> {
    fn mint(&mut self, loc: &str, hash: &str, m: &MintEntry) -> Result<(), AuditError> {
        let (result, settled) = self.results.get(&m.interval).ok_or_else(|| {
            bad(
                loc,
                format!("no stored market result for interval {}", m.interval),
            )
        })?;
        if !settled {
            return Err(bad(loc, format!("interval {} is not settled", m.interval)));
        }
        check_trade(loc, result, m)?;
        for (side, digests, who) in [
            ("seller", &m.seller_readings, &m.seller),
            ("buyer", &m.buyer_readings, &m.buyer),
        ] {
            if digests.is_empty() {
                return Err(bad(loc, format!("names no {side} reading")));
            }
            for d in digests {
                self.check_mint_reading(loc, result, m, side, d, who.as_str())?;
            }
        }
        let exported = export_within_envelope(result, &m.seller_readings, self.readings);
        let imported: i64 = m
            .buyer_readings
            .iter()
            .map(|d| self.readings[d].import)
            .sum();
        let s = self
            .minted_by_seller
            .entry((m.interval.clone(), m.seller.to_string()))
            .or_default();
        *s += m.amount.0;
        if *s > exported {
            return Err(bad(
                loc,
                format!(
                    "{} minted from {}'s sales in {} exceeds its metered export within its operating envelope, {exported} Wh",
                    s, m.seller, m.interval
                ),
            ));
        }
        let b = self
            .minted_to_buyer
            .entry((m.interval.clone(), m.buyer.to_string()))
            .or_default();
        *b += m.amount.0;
        if *b > imported {
            return Err(bad(
                loc,
                format!(
                    "{} minted to {} in {} exceeds its metered import of {imported} Wh",
                    b, m.buyer, m.interval
                ),
            ));
        }
        self.lots
            .insert(hash.to_owned(), Lot::new(m.buyer.to_string(), m.amount.0));
        Ok(())
    }

    fn check_mint_reading(
        &self,
        loc: &str,
        result: &IntervalResult,
        m: &MintEntry,
        side: &str,
        d: &str,
        who: &str,
    ) -> Result<(), AuditError> {
        let info = self
            .readings
            .get(d)
            .ok_or_else(|| bad(loc, format!("{side} reading {d} is not stored")))?;
        if info.participant != who
            || info.interval_start != result.interval.start_unix()
            || info.minutes != i64::from(result.interval.length().minutes())
        {
            return Err(bad(
                loc,
                format!(
                    "{side} reading {d} is not {who}'s reading for {}",
                    m.interval
                ),
            ));
        }
        if info.status != "accepted" {
            return Err(bad(
                loc,
                format!("{side} reading {d} is `{}`, not accepted", info.status),
            ));
        }
        Ok(())
    }

    fn transfer(
        &mut self,
        loc: &str,
        hash: &str,
        t: &TransferEntry,
        at_ms: i64,
    ) -> Result<(), AuditError> {
        let op: TokenTransfer = t
            .envelope
            .open()
            .map_err(|e| bad(loc, format!("holder's signature: {e}")))?;
        if hex::encode(op.lot) != t.lot
            || op.from != t.from
            || op.to != t.to
            || op.amount != t.amount
        {
            return Err(bad(
                loc,
                "the recorded fields differ from the signed transfer",
            ));
        }
        self.spend(
            loc,
            &t.lot,
            op.from.as_str(),
            &t.envelope.public_key,
            op.amount.0,
            false,
            at_ms,
        )?;
        self.lots
            .insert(hash.to_owned(), Lot::new(op.to.to_string(), op.amount.0));
        Ok(())
    }

    fn retire(&mut self, loc: &str, t: &RetireEntry, at_ms: i64) -> Result<(), AuditError> {
        let op: TokenRetire = t
            .envelope
            .open()
            .map_err(|e| bad(loc, format!("holder's signature: {e}")))?;
        if hex::encode(op.lot) != t.lot || op.holder != t.holder || op.amount != t.amount {
            return Err(bad(
                loc,
                "the recorded fields differ from the signed retirement",
            ));
        }
        self.spend(
            loc,
            &t.lot,
            op.holder.as_str(),
            &t.envelope.public_key,
            op.amount.0,
            true,
            at_ms,
        )
    }

    #[allow(clippy::too_many_arguments)] // one spend: lot, holder, signer, amount, kind, time
    fn spend(
        &mut self,
        loc: &str,
        lot: &str,
        holder: &str,
        signer: &PublicKey,
        amount: i64,
        retire: bool,
        at_ms: i64,
    ) -> Result<(), AuditError> {
        let registered = self
            .participant_keys
            .get(holder)
            .ok_or_else(|| bad(loc, format!("{holder} has no registered key")))?;
        // Any key the holder has had: a rotated-out key signed the entries of its period.
        if !registered.contains(signer) {
            let list: Vec<String> = registered.iter().map(ToString::to_string).collect();
            return Err(bad(
                loc,
                format!(
                    "signed by {signer}, not by {holder}'s registered key {}",
                    list.join(" or ")
                ),
            ));
        }
        // With validity periods: the key must have existed when settlement received the
        // entry. Its end is not enforced: settlement learns of a rotation at its next market
        // poll, and entries signed by the old key until then were rightly accepted.
        if let Some(periods) = self.key_periods.get(holder) {
            let at = at_ms.div_euclid(1000);
            let valid = periods
                .iter()
                .any(|p| p.public_key == *signer && p.valid_from <= at);
            if !valid {
                let when = chrono::DateTime::from_timestamp(at, 0)
                    .map_or_else(|| at.to_string(), |t| t.to_rfc3339());
                return Err(bad(
                    loc,
                    format!(
                        "signed by {signer}, which was not yet {holder}'s key when settlement received it ({when}, field created_at)"
                    ),
                ));
            }
        }
        let l = self.lots.get_mut(lot).ok_or_else(|| {
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
}

/// The mint names a trade of the result between its seller's and buyer's orders, at its
/// price, for no more than its energy.
fn check_trade(loc: &str, result: &IntervalResult, m: &MintEntry) -> Result<(), AuditError> {
    let trade = result.trades.get(m.trade_index as usize).ok_or_else(|| {
        bad(
            loc,
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
            loc,
            format!(
                "is not backed by trade {} of interval {}",
                m.trade_index, m.interval
            ),
        ));
    }
    Ok(())
}

/// The stored lots against the replay.
fn compare_lots(
    data: &AuditData,
    lots: &HashMap<String, Lot>,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    if data.lots.len() != lots.len() {
        return Err(bad(
            "lots",
            format!(
                "{} lots stored, the ledger creates {}",
                data.lots.len(),
                lots.len()
            ),
        ));
    }
    for r in &data.lots {
        let loc = format!("balance of lot {}", r.lot);
        let want = lots
            .get(&r.lot)
            .ok_or_else(|| bad(&loc, "no ledger entry creates it"))?;
        if r.holder != want.holder
            || r.initial != want.initial
            || r.remaining != want.remaining
            || r.retired != want.retired
        {
            return Err(bad(
                &loc,
                format!(
                    "stored holder {}, remaining {}, retired {}; the ledger says holder {}, remaining {}, retired {}",
                    r.holder, r.remaining, r.retired, want.holder, want.remaining, want.retired
                ),
            ));
        }
        report.lots += 1;
    }
    Ok(())
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
