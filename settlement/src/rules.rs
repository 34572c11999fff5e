//! Pure settlement of one interval: metered energy against the cleared trades, imbalances at
//! the utility's tariffs, statements in integer Wh and money, and the tokens to mint.
//!
//! # Rules
//! For every participant `p` with trades or readings in the interval:
//! - `sold` and `bought` are the sums of `p`'s trades in the market's result; `exported` and
//!   `imported` the sums of the grid-meter deltas of `p`'s stored readings.
//! - **Trades are firm**: for every trade the buyer pays the seller `price × energy` (rounded
//!   once per trade, see `PricePerMwh::cost_of`), whatever is delivered. The utility is the
//!   counterparty of trades against the root.
//! - **Seller under-delivers** (`within < sold`, `within` as below): `delivered =
//!   min(within, sold)`; the
//!   shortfall `sold − delivered` is energy the utility supplied in the seller's place: the
//!   seller pays the utility the *retail* price for it.
//! - **Operating envelope**: `excess` is the participant's export beyond its gateways'
//!   operating envelopes (see [`crate::compliance`]; 0 without an envelope), and
//!   `within = exported − excess`. Only `within` counts as delivery: `delivered =
//!   min(within, sold)`. The excess is a line of its own, `envelope_excess`, priced at the
//!   network's `utility.envelope_excess_price` (0 = paid nothing, the default; negative = a
//!   penalty the participant pays the utility); it is never sold at feed-in and never minted.
//! - **Seller over-delivers**: `within − delivered` is sold to the utility at the *feed-in*
//!   price.
//! - **Buyer under-consumes** (`imported < bought`): `consumed = min(imported, bought)`; the
//!   energy bought but not taken went back to the grid: the utility pays the buyer the
//!   *feed-in* price for it.
//! - **Buyer over-consumes**: `imported − consumed` is bought from the utility at *retail*.
//! - **Missing readings** (no stored reading of `p` for the interval): nothing is proven
//!   delivered, so a seller's whole sale is a shortfall; a buyer is assumed to have taken
//!   exactly what it bought (no imbalance either way). No tokens are minted for trades of a
//!   participant without readings, and the statement is marked `estimated`.
//! - **Flagged readings** (implausible or unzoned, awaiting an operator) move neither money nor
//!   tokens: [`settle_with_envelopes`] meters only the trusted (`accepted`) readings, so the
//!   statement's energies, money lines, `net` and the envelope compliance are what the trusted
//!   readings prove (a participant whose readings are all flagged is settled as one without
//!   readings). The statement lists each flagged reading as **pending** (`pending`: digest,
//!   gateway, reason, the export and import it would count if accepted) and says what
//!   accepting them all would add to `net` (`pending_worth`); a participant with flagged
//!   readings only gets a statement for them (`estimated`, no lines, `net` 0). The mints of
//!   trades with a flagged party are withheld (planned with the flagged energy included).
//!   When an operator accepts the reading, the interval is settled again from its now trusted
//!   readings: its statements and compliance rows are replaced (corrected, the pending line
//!   becomes paying lines), and withheld mints whose readings are all accepted are released.
//!   Energy sums that overflow `i64` are a typed [`RulesError::Overflow`], never a wrap.
//! - **Export capped at the site's rating**: a reading flagged `implausible_export` (it exports
//!   more than the registered inverter plus battery can deliver in the interval) counts, once
//!   accepted, with at most that rating ([`rated_export`]; 0 Wh if the gateway's registration
//!   is unknown): for money, tokens, withheld mints, compliance and its pending line alike.
//! - **Late readings** (arriving after the interval was settled) are stored but change
//!   nothing: an interval is settled once.
//! - Tariffs: retail is the result's `utility.retail_price`, else the highest cleared node
//!   price, else 0; feed-in is `utility.feed_in_price`, else 0.
//! - **Tokens**: a seller's `delivered` is allocated to its trades pro rata to their energy,
//!   as is a buyer's `consumed` (integer Wh, largest remainder, ties to the earlier trade).
//!   For each trade between two participants, `min(seller's allocation, buyer's allocation)`
//!   Wh are minted to the buyer. If one of the readings behind it is flagged as implausible,
//!   the mint is *withheld* until an operator accepts the reading.
//!
//! Every money line appears twice with opposite signs (participant and counterparty), so the
//! money flows over participants and the utility sum to exactly zero.

use crate::compliance::{self, GatewayMetered};
use gridmesh_protocol::api::readings::ReasonCode;
use gridmesh_protocol::envelope::EnvelopeCompliance;
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::units::Overflow;
use gridmesh_protocol::{GatewayId, Money, ParticipantId, PricePerMwh, Wh};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a participant's readings say for one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metered {
    /// Grid import, Wh.
    pub imported: Wh,
    /// Grid export, Wh.
    pub exported: Wh,
    /// PV production, Wh (for the mint's source).
    pub pv: Wh,
    /// Battery discharge, Wh (for the mint's source).
    pub battery_discharge: Wh,
    /// SHA-256 digests (hex) of the signed readings.
    pub readings: Vec<String>,
    /// Whether any of them is flagged and awaits an operator.
    pub flagged: bool,
    /// Export beyond the operating envelopes of the participant's gateways, Wh (0 without an
    /// envelope; at most `exported`).
    pub envelope_excess: Wh,
}

/// One stored reading as settlement uses it (status `accepted` or `flagged`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterRow {
    /// The participant it was attributed to at ingest.
    pub participant: ParticipantId,
    /// The gateway that signed it.
    pub gateway: GatewayId,
    /// SHA-256 (hex) of its signed payload.
    pub digest: String,
    /// Whether it is flagged as implausible and awaits an operator.
    pub flagged: bool,
    /// Grid import delta.
    pub imported: Wh,
    /// Grid export delta.
    pub exported: Wh,
    /// PV delta.
    pub pv: Wh,
    /// Battery discharge delta.
    pub battery_discharge: Wh,
}

/// What settlement knows of an interval's readings besides their energy: why each flagged
/// reading was flagged, and each site's rating (for the export cap, see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sites {
    /// Why each reading (by digest) was flagged at ingest, kept once an operator accepted it
    /// (its quarantine item's code). Readings accepted outright are absent.
    pub reasons: BTreeMap<String, ReasonCode>,
    /// Each gateway's rated export over the interval, Wh ([`rated_export`]).
    pub ratings: BTreeMap<GatewayId, Wh>,
}

impl Sites {
    /// Ratings of every registered gateway over an interval of `minutes`.
    pub fn rate<'a>(
        &mut self,
        sites: impl IntoIterator<Item = &'a GatewayEnrollment>,
        minutes: i64,
    ) {
        for site in sites {
            self.ratings
                .insert(site.gateway.clone(), rated_export(site, minutes));
        }
    }

    /// The row as settlement counts it: a reading flagged `implausible_export` exports at
    /// most its site's rating (0 Wh for an unregistered gateway).
    fn cap(&self, row: &MeterRow) -> MeterRow {
        let mut row = row.clone();
        if self.reasons.get(&row.digest) == Some(&ReasonCode::ImplausibleExport) {
            let rating = self.ratings.get(&row.gateway).copied().unwrap_or_default();
            row.exported = row.exported.min(rating.max(Wh(0)));
        }
        row
    }
}

/// The most a site's registered inverter plus battery can deliver in `minutes`, Wh, rounded
/// up (what `implausible_export` is judged against, see [`crate::verify`]).
pub fn rated_export(site: &GatewayEnrollment, minutes: i64) -> Wh {
    let capability_w = i64::from(site.inverter_w) + i64::from(site.battery_w);
    Wh((capability_w * minutes.max(0) + 59) / 60)
}

/// Metered energy of one interval per participant (for [`settle`]) and per gateway (for
/// envelopes and flows).
pub type MeteredInterval = (
    BTreeMap<ParticipantId, Metered>,
    BTreeMap<GatewayId, GatewayMetered>,
);

/// Sums an interval's readings per participant and per gateway (digests kept in row order).
pub fn meter(rows: &[MeterRow]) -> Result<MeteredInterval, Overflow> {
    let mut out: BTreeMap<ParticipantId, Metered> = BTreeMap::new();
    let mut by_gateway: BTreeMap<GatewayId, GatewayMetered> = BTreeMap::new();
    for r in rows {
        let g = by_gateway
            .entry(r.gateway.clone())
            .or_insert_with(|| GatewayMetered {
                participant: r.participant.clone(),
                exported: Wh(0),
                imported: Wh(0),
            });
        g.imported = g.imported.checked_add(r.imported)?;
        g.exported = g.exported.checked_add(r.exported)?;
        let m = out.entry(r.participant.clone()).or_default();
        m.readings.push(r.digest.clone());
        m.flagged |= r.flagged;
        m.imported = m.imported.checked_add(r.imported)?;
        m.exported = m.exported.checked_add(r.exported)?;
        m.pv = m.pv.checked_add(r.pv)?;
        m.battery_discharge = m.battery_discharge.checked_add(r.battery_discharge)?;
    }
    Ok((out, by_gateway))
}

/// Settles one interval from its readings: compliance with the result's operating envelopes
/// (see [`crate::compliance`]), each participant's export beyond its envelopes, then
/// [`settle`]. What the service writes and what `settlement verify` recomputes.
///
/// Every row is first capped at its site's rating where `sites` says so (see the module docs).
/// Money, statements and compliance come from the trusted (`accepted`) rows only: a flagged
/// row's energy is left out and listed as the statement's pending line (see "Flagged readings"
/// in the module docs). The mints are those of trades whose two parties have no flagged row;
/// the mints of the others are computed with the flagged rows included and *withheld*. If the
/// flagged energy cannot even be summed (it overflows), nothing is withheld, no pending worth
/// is given and [`Settlement::flagged_overflow`] says so.
pub fn settle_with_envelopes(
    result: &IntervalResult,
    rows: &[MeterRow],
    sites: &Sites,
) -> Result<(Settlement, Vec<EnvelopeCompliance>), RulesError> {
    let capped: Vec<MeterRow> = rows.iter().map(|r| sites.cap(r)).collect();
    let trusted: Vec<MeterRow> = capped.iter().filter(|r| !r.flagged).cloned().collect();
    let (mut settlement, compliance_rows) = settle_metered(result, &trusted)?;
    let flagged: std::collections::BTreeSet<&ParticipantId> = capped
        .iter()
        .filter(|r| r.flagged)
        .map(|r| &r.participant)
        .collect();
    if flagged.is_empty() {
        return Ok((settlement, compliance_rows));
    }
    // Trades with a flagged party mint nothing now, whatever their trusted rows say.
    let (mints, _): (Vec<MintPlan>, Vec<MintPlan>) = std::mem::take(&mut settlement.mints)
        .into_iter()
        .partition(|m| !flagged.contains(&m.seller) && !flagged.contains(&m.buyer));
    settlement.mints = mints;
    let mut tokens: BTreeMap<&ParticipantId, Wh> = BTreeMap::new();
    for m in &settlement.mints {
        let t = tokens.entry(&m.buyer).or_default();
        *t = t.checked_add(m.amount)?;
    }
    for s in &mut settlement.statements {
        s.tokens = tokens.get(&s.participant).copied().unwrap_or_default();
    }
    // What accepting every flagged row would mint: withheld until then.
    let all = match settle_metered(result, &capped) {
        Ok((all, _)) => Some(all),
        Err(RulesError::Overflow(_)) => None,
        Err(e) => return Err(e),
    };
    match &all {
        Some(all) => settlement.withheld = all.withheld.clone(),
        None => settlement.flagged_overflow = true,
    }
    add_pending(
        &mut settlement.statements,
        result,
        rows,
        &capped,
        sites,
        all.as_ref(),
    )?;
    Ok((settlement, compliance_rows))
}

/// Lists every flagged row on its participant's statement (one made for a participant without
/// any) with what accepting them all would add to its `net`.
fn add_pending(
    statements: &mut Vec<Statement>,
    result: &IntervalResult,
    raw: &[MeterRow],
    capped: &[MeterRow],
    sites: &Sites,
    all: Option<&Settlement>,
) -> Result<(), RulesError> {
    for (raw, row) in raw.iter().zip(capped).filter(|(_, r)| r.flagged) {
        let at = match statements.binary_search_by(|s| s.participant.cmp(&row.participant)) {
            Ok(at) => at,
            Err(at) => {
                statements.insert(at, empty_statement(result, &row.participant));
                at
            }
        };
        statements[at].pending.push(PendingLine {
            reading: row.digest.clone(),
            gateway: row.gateway.clone(),
            reason: sites.reasons.get(&row.digest).copied(),
            exported: row.exported,
            imported: row.imported,
            metered_exported: raw.exported,
        });
    }
    let Some(all) = all else { return Ok(()) };
    for s in statements.iter_mut().filter(|s| !s.pending.is_empty()) {
        let accepted = all
            .statements
            .iter()
            .find(|a| a.participant == s.participant)
            .map_or(Money(0), |a| a.net);
        s.pending_worth = Some(accepted.checked_sub(s.net)?);
    }
    Ok(())
}

/// The statement of a participant with neither trades nor trusted readings.
fn empty_statement(result: &IntervalResult, participant: &ParticipantId) -> Statement {
    Statement {
        participant: participant.clone(),
        interval: result.interval.key(),
        sold: Wh(0),
        bought: Wh(0),
        exported: Wh(0),
        imported: Wh(0),
        envelope_excess: Wh(0),
        delivered: Wh(0),
        consumed: Wh(0),
        tokens: Wh(0),
        estimated: true,
        lines: Vec::new(),
        net: Money(0),
        pending: Vec::new(),
        pending_worth: None,
    }
}

/// Envelope compliance and [`settle`] over exactly these rows (flagged or not).
fn settle_metered(
    result: &IntervalResult,
    rows: &[MeterRow],
) -> Result<(Settlement, Vec<EnvelopeCompliance>), RulesError> {
    let (mut metered, by_gateway) = meter(rows)?;
    let rows = compliance::compliance(result, &by_gateway);
    for (p, wh) in compliance::excess_by_participant(&rows, &by_gateway)? {
        if let Some(m) = metered.get_mut(&p) {
            m.envelope_excess = wh;
        }
    }
    Ok((settle(result, &metered)?, rows))
}

pub use gridmesh_protocol::api::settlement::{MoneyLine, PendingLine, Statement};

/// A mint to make for one trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintPlan {
    /// Index of the trade in the result.
    pub trade_index: u32,
    /// The seller.
    pub seller: ParticipantId,
    /// The buyer (receives the tokens).
    pub buyer: ParticipantId,
    /// The seller's order id.
    pub seller_order: String,
    /// The buyer's order id.
    pub buyer_order: String,
    /// `pv`, `battery`, `pv_and_battery` or `unknown`, from the seller's readings.
    pub source: String,
    /// The trade price.
    pub price: PricePerMwh,
    /// Tokens (Wh).
    pub amount: Wh,
    /// Digests of the seller's readings.
    pub seller_readings: Vec<String>,
    /// Digests of the buyer's readings.
    pub buyer_readings: Vec<String>,
}

/// The outcome of settling one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settlement {
    /// One statement per participant.
    pub statements: Vec<Statement>,
    /// The utility's net (positive = the utility receives).
    pub utility_net: Money,
    /// Mints to make now.
    pub mints: Vec<MintPlan>,
    /// Mints withheld until flagged readings are accepted.
    pub withheld: Vec<MintPlan>,
    /// The flagged readings' energy overflowed when summed with the rest, so no mint could be
    /// planned for it (nothing is withheld; accepting such a reading fails the same way).
    pub flagged_overflow: bool,
}

/// Why an interval could not be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Integer overflow.
    #[error("settlement arithmetic overflowed: {0}")]
    Overflow(#[from] Overflow),
    /// A trade with a negative quantity.
    #[error("trade {0} has a negative energy; the market result is invalid")]
    NegativeTrade(usize),
}

fn party(c: &Counterparty) -> Option<(&ParticipantId, &str)> {
    match c {
        Counterparty::Order {
            participant,
            order_id,
            ..
        } => Some((participant, order_id.as_str())),
        Counterparty::Utility => None,
    }
}

/// Splits `total` over `weights` pro rata (largest remainder, ties to the earlier index).
pub fn allocate(total: Wh, weights: &[Wh]) -> Vec<Wh> {
    let sum: i128 = weights.iter().map(|w| i128::from(w.0)).sum();
    if sum <= 0 || total.0 <= 0 {
        return vec![Wh(0); weights.len()];
    }
    let total = i128::from(total.0).min(sum);
    let mut out: Vec<i128> = Vec::with_capacity(weights.len());
    let mut rems: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = total * i128::from(w.0);
        out.push(exact / sum);
        rems.push((exact % sum, i));
    }
    let mut left = total - out.iter().sum::<i128>();
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out.into_iter().map(|v| Wh(v as i64)).collect()
}

fn source_of(m: &Metered) -> &'static str {
    match (m.pv.0 > 0, m.battery_discharge.0 > 0) {
        (true, false) => "pv",
        (false, true) => "battery",
        (true, true) => "pv_and_battery",
        (false, false) => "unknown",
    }
}

#[derive(Clone, Copy)]
struct Facts {
    exported: Wh,
    imported: Wh,
    excess: Wh,
    delivered: Wh,
    consumed: Wh,
    estimated: bool,
}

#[derive(Default)]
struct Acc {
    lines: Vec<MoneyLine>,
    sold: Wh,
    bought: Wh,
    tokens: Wh,
}

/// Settles one interval (see the module docs for the rules): the trades' money lines, then
/// each participant's imbalances against its metered energy, then the mints, then the
/// statements.
pub fn settle(
    result: &IntervalResult,
    metered: &BTreeMap<ParticipantId, Metered>,
) -> Result<Settlement, RulesError> {
    let mut books = trade_lines(result)?;
    for p in metered.keys() {
        books.acc.entry(p.clone()).or_default();
    }
    let tariffs = Tariffs::of(result);
    let allocations = imbalances(result, metered, &tariffs, &mut books)?;
    let (mints, withheld) = plan_mints(result, metered, &allocations, &mut books.acc)?;
    let interval = result.interval.key();
    let mut statements = Vec::with_capacity(books.acc.len());
    for (p, a) in books.acc {
        let f = allocations.facts[&p];
        let net = Money::checked_sum(a.lines.iter().map(|l| l.amount))?;
        statements.push(Statement {
            participant: p,
            interval: interval.clone(),
            sold: a.sold,
            bought: a.bought,
            exported: f.exported,
            imported: f.imported,
            envelope_excess: f.excess,
            delivered: f.delivered,
            consumed: f.consumed,
            tokens: a.tokens,
            estimated: f.estimated,
            lines: a.lines,
            net,
            pending: Vec::new(),
            pending_worth: None,
        });
    }
    let utility_net = Money::checked_sum(books.utility_lines)?;
    Ok(Settlement {
        statements,
        utility_net,
        mints,
        withheld,
        flagged_overflow: false,
    })
}

/// The utility's prices for one interval (also what the monthly statement's utility-only
/// baseline is priced at, see [`crate::monthly`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tariffs {
    /// Retail: the result's `utility.retail_price`, else the highest cleared node price, else 0.
    pub retail: PricePerMwh,
    /// Feed-in: `utility.feed_in_price`, else 0.
    pub feed_in: PricePerMwh,
    /// Export beyond the operating envelope: `utility.envelope_excess_price`.
    pub excess: PricePerMwh,
}

impl Tariffs {
    /// The tariffs settlement applies to `result`'s interval.
    pub fn of(result: &IntervalResult) -> Self {
        let utility = &result.network.utility;
        Tariffs {
            retail: utility
                .retail_price
                .or_else(|| result.prices.values().max().copied())
                .unwrap_or(PricePerMwh(0)),
            feed_in: utility.feed_in_price.unwrap_or(PricePerMwh(0)),
            excess: utility.envelope_excess_price,
        }
    }
}

/// The money lines so far, per participant and the utility's, and which trades each
/// participant sold and bought in.
#[derive(Default)]
struct Books {
    acc: BTreeMap<ParticipantId, Acc>,
    utility_lines: Vec<Money>,
    sales: BTreeMap<ParticipantId, Vec<usize>>,
    purchases: BTreeMap<ParticipantId, Vec<usize>>,
}

/// Every trade is firm: the buyer pays the seller (the utility stands in for the root).
fn trade_lines(result: &IntervalResult) -> Result<Books, RulesError> {
    let mut books = Books::default();
    for (i, trade) in result.trades.iter().enumerate() {
        if trade.energy.0 < 0 {
            return Err(RulesError::NegativeTrade(i));
        }
        let cost = trade.price.cost_of(trade.energy)?;
        let name = |c: &Counterparty| {
            party(c).map_or_else(|| "utility".to_owned(), |(p, _)| p.to_string())
        };
        match party(&trade.buyer) {
            Some((p, _)) => {
                let a = books.acc.entry(p.clone()).or_default();
                a.bought = a.bought.checked_add(trade.energy)?;
                a.lines.push(MoneyLine {
                    kind: "trade_purchase".into(),
                    counterparty: name(&trade.seller),
                    energy: trade.energy,
                    price: trade.price,
                    amount: -cost,
                });
                books.purchases.entry(p.clone()).or_default().push(i);
            }
            None => books.utility_lines.push(-cost),
        }
        match party(&trade.seller) {
            Some((p, _)) => {
                let a = books.acc.entry(p.clone()).or_default();
                a.sold = a.sold.checked_add(trade.energy)?;
                a.lines.push(MoneyLine {
                    kind: "trade_sale".into(),
                    counterparty: name(&trade.buyer),
                    energy: trade.energy,
                    price: trade.price,
                    amount: cost,
                });
                books.sales.entry(p.clone()).or_default().push(i);
            }
            None => books.utility_lines.push(cost),
        }
    }
    Ok(books)
}

/// What each participant delivered and consumed, and the energy of each trade it backs.
struct Allocations {
    facts: BTreeMap<ParticipantId, Facts>,
    seller: BTreeMap<usize, Wh>,
    buyer: BTreeMap<usize, Wh>,
}

/// Each participant's imbalance lines against its metered energy, and its delivered and
/// consumed energy allocated to its trades.
fn imbalances(
    result: &IntervalResult,
    metered: &BTreeMap<ParticipantId, Metered>,
    tariffs: &Tariffs,
    books: &mut Books,
) -> Result<Allocations, RulesError> {
    let mut out = Allocations {
        facts: BTreeMap::new(),
        seller: BTreeMap::new(),
        buyer: BTreeMap::new(),
    };
    let utility_lines = &mut books.utility_lines;
    for (p, a) in books.acc.iter_mut() {
        let m = metered.get(p);
        let (exported, imported) = m.map_or((Wh(0), Wh(0)), |m| (m.exported, m.imported));
        let excess = m.map_or(Wh(0), |m| {
            m.envelope_excess.max(Wh(0)).min(exported.max(Wh(0)))
        });
        let within = exported.checked_sub(excess)?;
        let delivered = within.min(a.sold);
        let shortfall = a.sold.checked_sub(delivered)?;
        let surplus = within.checked_sub(delivered)?;
        let (consumed, untaken, extra) = match m {
            Some(_) => {
                let consumed = imported.min(a.bought);
                (
                    consumed,
                    a.bought.checked_sub(consumed)?,
                    imported.checked_sub(consumed)?,
                )
            }
            None => (a.bought, Wh(0), Wh(0)),
        };
        let mut push = |kind: &str, energy: Wh, price: PricePerMwh, receives: bool| {
            if energy.0 == 0 {
                return Ok::<(), RulesError>(());
            }
            let cost = price.cost_of(energy)?;
            let amount = if receives { cost } else { -cost };
            a.lines.push(MoneyLine {
                kind: kind.into(),
                counterparty: "utility".into(),
                energy,
                price,
                amount,
            });
            utility_lines.push(-amount);
            Ok(())
        };
        push("shortfall", shortfall, tariffs.retail, false)?;
        push("surplus_export", surplus, tariffs.feed_in, true)?;
        push("envelope_excess", excess, tariffs.excess, true)?;
        push("untaken", untaken, tariffs.feed_in, true)?;
        push("extra_import", extra, tariffs.retail, false)?;
        if let Some(idx) = books.sales.get(p) {
            let w: Vec<Wh> = idx.iter().map(|&i| result.trades[i].energy).collect();
            for (i, v) in idx.iter().zip(allocate(delivered, &w)) {
                out.seller.insert(*i, v);
            }
        }
        if let Some(idx) = books.purchases.get(p) {
            let w: Vec<Wh> = idx.iter().map(|&i| result.trades[i].energy).collect();
            let tokenizable = if m.is_some() { consumed } else { Wh(0) };
            for (i, v) in idx.iter().zip(allocate(tokenizable, &w)) {
                out.buyer.insert(*i, v);
            }
        }
        out.facts.insert(
            p.clone(),
            Facts {
                exported,
                imported,
                excess,
                delivered,
                consumed,
                estimated: m.is_none(),
            },
        );
    }
    Ok(out)
}

/// The mints of trades between two participants with readings (withheld while one of the
/// readings is flagged); counts the tokens on the buyers' books.
fn plan_mints(
    result: &IntervalResult,
    metered: &BTreeMap<ParticipantId, Metered>,
    allocations: &Allocations,
    acc: &mut BTreeMap<ParticipantId, Acc>,
) -> Result<(Vec<MintPlan>, Vec<MintPlan>), RulesError> {
    let mut mints = Vec::new();
    let mut withheld = Vec::new();
    for (i, trade) in result.trades.iter().enumerate() {
        let (Some((seller, s_order)), Some((buyer, b_order))) =
            (party(&trade.seller), party(&trade.buyer))
        else {
            continue;
        };
        let (Some(sm), Some(bm)) = (metered.get(seller), metered.get(buyer)) else {
            continue;
        };
        let amount = allocations
            .seller
            .get(&i)
            .copied()
            .unwrap_or_default()
            .min(allocations.buyer.get(&i).copied().unwrap_or_default());
        if amount.0 <= 0 {
            continue;
        }
        let plan = MintPlan {
            trade_index: i as u32,
            seller: seller.clone(),
            buyer: buyer.clone(),
            seller_order: s_order.to_owned(),
            buyer_order: b_order.to_owned(),
            source: source_of(sm).to_owned(),
            price: trade.price,
            amount,
            seller_readings: sm.readings.clone(),
            buyer_readings: bm.readings.clone(),
        };
        if let Some(a) = acc.get_mut(buyer) {
            a.tokens = a.tokens.checked_add(amount)?;
        }
        if sm.flagged || bm.flagged {
            withheld.push(plan);
        } else {
            mints.push(plan);
        }
    }
    Ok((mints, withheld))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_exact_and_deterministic() {
        assert_eq!(
            allocate(Wh(10), &[Wh(7), Wh(7), Wh(7)]),
            vec![Wh(4), Wh(3), Wh(3)]
        );
        // Never more than the weights add up to.
        assert_eq!(allocate(Wh(10), &[Wh(1), Wh(1)]), vec![Wh(1), Wh(1)]);
        assert_eq!(allocate(Wh(100), &[Wh(30), Wh(20)]), vec![Wh(30), Wh(20)]);
        assert_eq!(allocate(Wh(0), &[Wh(30), Wh(20)]), vec![Wh(0), Wh(0)]);
        assert_eq!(allocate(Wh(7), &[Wh(0), Wh(20)]), vec![Wh(0), Wh(7)]);
    }
}
