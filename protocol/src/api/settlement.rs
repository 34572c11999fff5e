//! Settlement's read models: statements and their money lines, balances and holdings with the
//! mint they came from, ledger blocks and entries with inclusion proofs, stored readings,
//! quarantine items, the answers of its POST endpoints and the events it streams.
//!
//! Settlement serialises exactly these types; the dashboard, the gateway and the trader CLI
//! deserialise them. Compliance rows, alerts and measured flows are in
//! [`crate::envelope`] ([`EnvelopeCompliance`](crate::envelope::EnvelopeCompliance),
//! [`EnvelopeAlert`], [`MeasuredFlows`](crate::envelope::MeasuredFlows)); per-reading
//! outcomes of `POST /readings` are in [`super::readings`].
//!
//! Ledger entry bodies ([`EntryBody`]) are also the bytes settlement hashes into its ledger:
//! their serialised form must never change.

use super::readings::ReasonCode;
use crate::envelope::EnvelopeAlert;
use crate::reading::Reading;
use crate::signing::SignedEnvelope;
use crate::units::{Money, PricePerMwh, Wh};
use crate::{GatewayId, ParticipantId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One line of a statement: positive `amount` = the participant receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MoneyLine {
    /// `trade_sale`, `trade_purchase`, `shortfall`, `surplus_export`, `envelope_excess`,
    /// `untaken`, `extra_import`.
    pub kind: String,
    /// The other side: a participant id or `utility`.
    pub counterparty: String,
    /// Energy, Wh.
    pub energy: Wh,
    /// Price per MWh.
    pub price: PricePerMwh,
    /// Money, minor units (positive = received).
    pub amount: Money,
}

/// One participant's statement for one interval (`GET /statements` answers a list of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Statement {
    /// The participant.
    pub participant: ParticipantId,
    /// The interval key (`2026-06-21T12:00:00Z/15`).
    pub interval: String,
    /// Energy sold in trades.
    pub sold: Wh,
    /// Energy bought in trades.
    pub bought: Wh,
    /// Metered export.
    pub exported: Wh,
    /// Metered import.
    pub imported: Wh,
    /// Export beyond the operating envelope (its own `envelope_excess` line; never counted as
    /// delivery, never tokenized).
    #[serde(default)]
    pub envelope_excess: Wh,
    /// Export allocated to sales (within the envelope).
    pub delivered: Wh,
    /// Import allocated to purchases.
    pub consumed: Wh,
    /// Tokens minted to this participant as buyer (not those withheld while a reading is
    /// flagged).
    pub tokens: Wh,
    /// True when the participant had no trusted readings (none, or only flagged ones: see
    /// settlement's rules).
    pub estimated: bool,
    /// Money lines.
    pub lines: Vec<MoneyLine>,
    /// Sum of the lines (positive = the participant receives).
    pub net: Money,
    /// The participant's flagged readings of the interval, held back until an operator accepts
    /// them: their energy is in none of the fields above, in no line and not in `net`. Absent
    /// when there are none (so statements without them serialise as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingLine>,
    /// What accepting every pending reading would add to `net` (minor units, positive = the
    /// participant would receive more). Absent without pending lines, or when the flagged
    /// energy overflows (accepting it would fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_worth: Option<Money>,
}

/// A flagged reading on a [`Statement`]: verified, but implausible (or unzoned), so it moves
/// no money and mints no tokens until an operator accepts it. Accepting it settles the interval
/// again and its energy moves into the statement's lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingLine {
    /// SHA-256 (hex) of the signed reading (as `GET /readings/{digest}` names it).
    pub reading: String,
    /// The gateway that signed it.
    pub gateway: GatewayId,
    /// Why it was flagged (`implausible_export`, `pv_at_night`, `unzoned_reading`); `null` if
    /// settlement has no quarantine item for it.
    pub reason: Option<ReasonCode>,
    /// Grid export that would count if accepted, Wh: the metered export capped at the site's
    /// rating (registered inverter plus battery power over the interval).
    pub exported: Wh,
    /// Grid import that would count if accepted, Wh.
    pub imported: Wh,
    /// Grid export as signed by the gateway, Wh (above `exported` when capped).
    pub metered_exported: Wh,
}

/// A ledger entry's content, tagged by `kind`. Stored as these exact JSON bytes and hashed:
/// the serialised form is part of the ledger and must not change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EntryBody {
    /// Tokens minted for delivered, matched energy.
    Mint(MintEntry),
    /// Part of a lot moved to another holder.
    Transfer(TransferEntry),
    /// Tokens retired (claimed).
    Retire(RetireEntry),
}

impl EntryBody {
    /// `mint`, `transfer` or `retire`.
    pub fn kind(&self) -> &'static str {
        match self {
            EntryBody::Mint(_) => "mint",
            EntryBody::Transfer(_) => "transfer",
            EntryBody::Retire(_) => "retire",
        }
    }

    /// The canonical bytes stored and hashed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entry bodies always serialise")
    }
}

/// A mint with its provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MintEntry {
    /// Interval key.
    pub interval: String,
    /// Index of the trade in the interval's result.
    pub trade_index: u32,
    /// The seller.
    pub seller: ParticipantId,
    /// The buyer, who receives the tokens.
    pub buyer: ParticipantId,
    /// The seller's order id.
    pub seller_order: String,
    /// The buyer's order id.
    pub buyer_order: String,
    /// `pv`, `battery`, `pv_and_battery` or `unknown`.
    pub source: String,
    /// The trade price.
    pub price: PricePerMwh,
    /// Tokens minted (1 token = 1 Wh).
    pub amount: Wh,
    /// SHA-256 (hex) of the seller's signed readings.
    pub seller_readings: Vec<String>,
    /// SHA-256 (hex) of the buyer's signed readings.
    pub buyer_readings: Vec<String>,
    /// Whether the mint was withheld and released after an operator accepted a reading.
    #[serde(default)]
    pub released: bool,
}

/// A transfer, with the holder's signed envelope verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferEntry {
    /// The signed `TokenTransfer`.
    pub envelope: SignedEnvelope,
    /// The source lot (hex).
    pub lot: String,
    /// From.
    pub from: ParticipantId,
    /// To.
    pub to: ParticipantId,
    /// Amount.
    pub amount: Wh,
}

/// A retirement, with the holder's signed envelope verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetireEntry {
    /// The signed `TokenRetire`.
    pub envelope: SignedEnvelope,
    /// The lot (hex).
    pub lot: String,
    /// The holder.
    pub holder: ParticipantId,
    /// Amount.
    pub amount: Wh,
}

/// A participant's token holdings (`GET /balances/{participant}`); 1 token = 1 Wh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balances {
    /// The participant asked about.
    pub participant: String,
    /// Tokens held and not retired, over all lots.
    pub balance: Wh,
    /// Tokens retired from these lots.
    pub retired: Wh,
    /// The lots, by lot id.
    pub holdings: Vec<Holding>,
}

/// One lot a participant holds, with the mint its tokens come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Holding {
    /// The lot id (hash of the entry that created it, hex).
    pub lot: String,
    /// Tokens remaining in the lot.
    pub amount: Wh,
    /// Tokens retired from the lot.
    pub retired: Wh,
    /// Tokens the lot was created with.
    pub received: Wh,
    /// The lot it was split from by a transfer, if any.
    pub parent_lot: Option<String>,
    /// Hash of the mint entry its tokens come from.
    pub origin_mint: String,
    /// That mint entry's body (interval, seller, buyer, source, price, reading digests).
    pub provenance: EntryBody,
}

/// The fields of a sealed block's header, as shown (see settlement's ledger for the signed
/// byte layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlockHeaderView {
    /// Height (0 for the first block).
    pub height: u64,
    /// The settled interval's key.
    pub interval: String,
    /// Previous block hash (hex; zeros for the first block).
    pub prev_hash: String,
    /// Merkle root of the entries (hex).
    pub merkle_root: String,
    /// Number of entries.
    pub entry_count: u64,
    /// When it was sealed.
    pub sealed_at: DateTime<Utc>,
}

/// A block with its hash, authority signature and entry hashes (`GET /ledger/blocks` lists
/// them newest first, `GET /ledger/blocks/{height}` answers one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlockSummary {
    /// The header fields.
    #[serde(flatten)]
    pub header: BlockHeaderView,
    /// `SHA-256(header bytes)`, hex.
    pub hash: String,
    /// The authority's ed25519 signature over the header bytes, hex.
    pub signature: String,
    /// The authority's public key.
    pub public_key: String,
    /// The entry hashes in ledger order (hex).
    pub entries: Vec<String>,
    /// The header bytes exactly as hashed and signed (base64), so a verifier needs no
    /// re-encoding: a version 2 header carries a state commitment beyond the fields above.
    /// Absent from older answers (then the version 1 layout is rebuilt from the fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_base64: Option<String>,
}

/// One step of a Merkle inclusion proof: the sibling hash and which side it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProofStep {
    /// The sibling hash (hex).
    pub sibling: String,
    /// `left` if the sibling is the left operand.
    pub side: String,
}

/// How entry leaves and inner nodes are hashed (the `leaf_hashing` of every [`EntryView`]).
pub const LEAF_HASHING: &str = "SHA-256(0x00 || body bytes); nodes SHA-256(0x01 || left || right)";

/// One ledger entry with its inclusion proof (`GET /ledger/entries/{hash}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryView {
    /// The entry hash (hex).
    pub hash: String,
    /// Its position in the ledger.
    pub seq: i64,
    /// `mint`, `transfer` or `retire`.
    pub kind: String,
    /// The decoded body.
    pub body: EntryBody,
    /// The exact bytes that were hashed (base64), so anyone can recompute the leaf.
    pub body_base64: String,
    /// The block it is in (`null` until it is sealed into one).
    pub block_height: Option<i64>,
    /// That block's Merkle root (hex; `null` before sealing).
    pub merkle_root: Option<String>,
    /// The inclusion proof from the leaf to the root (`null` before sealing).
    pub proof: Option<Vec<ProofStep>>,
    /// How leaves and nodes are hashed ([`LEAF_HASHING`]).
    pub leaf_hashing: String,
}

/// Where a stored reading stands in settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StoredReadingStatus {
    /// Verified and used for money and tokens (also a flagged reading an operator accepted).
    Accepted,
    /// Verified but implausible (or unzoned): moves neither money nor tokens until an operator
    /// accepts it; its statement lists it as a [`PendingLine`] and the mints of its trades are
    /// withheld.
    Flagged,
    /// Arrived after its interval was settled: stored, changes nothing.
    Late,
}

impl StoredReadingStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredReadingStatus::Accepted => "accepted",
            StoredReadingStatus::Flagged => "flagged",
            StoredReadingStatus::Late => "late",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(StoredReadingStatus::Accepted),
            "flagged" => Some(StoredReadingStatus::Flagged),
            "late" => Some(StoredReadingStatus::Late),
            _ => None,
        }
    }
}

/// A stored signed reading (`GET /readings/{digest}`, the digest token provenance names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredReading {
    /// SHA-256 (hex) of the signed payload.
    pub digest: String,
    /// The idempotency key (`<gateway>/<device>/<interval start>`).
    pub key: String,
    /// The participant it was attributed to.
    pub participant: String,
    /// Its status.
    pub status: StoredReadingStatus,
    /// The signed envelope, verbatim.
    pub envelope: SignedEnvelope,
    /// The decoded reading.
    pub reading: Reading,
}

/// Where a quarantine item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum QuarantineStatus {
    /// Awaiting an operator (or never acceptable).
    Open,
    /// Accepted by an operator.
    Accepted,
    /// A signed reading of a gateway settlement did not know yet (arrived by MQTT, which
    /// cannot answer "retry"): kept whole and re-admitted automatically once the market
    /// enrols the gateway.
    Held,
    /// A held reading that was re-admitted after its gateway was enrolled: its outcome is
    /// that of a fresh submission (accepted, flagged, or quarantined anew).
    Readmitted,
}

impl QuarantineStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineStatus::Open => "open",
            QuarantineStatus::Accepted => "accepted",
            QuarantineStatus::Held => "held",
            QuarantineStatus::Readmitted => "readmitted",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(QuarantineStatus::Open),
            "accepted" => Some(QuarantineStatus::Accepted),
            "held" => Some(QuarantineStatus::Held),
            "readmitted" => Some(QuarantineStatus::Readmitted),
            _ => None,
        }
    }
}

/// The filters and page of `GET /quarantine` (all optional): items newest first, `limit` at a
/// time; the next page is `before=<id of the last item>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct QuarantineQuery {
    /// Only items of this gateway (as the reading or the uploading gateway names it).
    pub gateway: Option<String>,
    /// Only items with this reason code (`bad_signature`, `implausible_export`, …).
    pub reason: Option<ReasonCode>,
    /// Only items with this status (`open`, `accepted`, `held`, `readmitted`).
    pub status: Option<QuarantineStatus>,
    /// Only items with an id below this one (the next page after an item).
    pub before: Option<i64>,
    /// At most this many items (default 100, 1–1000).
    pub limit: Option<i64>,
}

impl QuarantineQuery {
    /// The page size: `limit` clamped to 1–1000, 100 when absent.
    pub fn page_size(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

/// A quarantined, flagged or late reading (`GET /quarantine` lists them newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuarantineItem {
    /// The quarantine id (for `POST /quarantine/{id}/accept`).
    pub id: i64,
    /// When it arrived.
    pub received_at: Option<DateTime<Utc>>,
    /// `rest` or `mqtt:<topic>`.
    pub source: String,
    /// The reading's idempotency key, if the payload decoded.
    pub key: Option<String>,
    /// The gateway, if the payload decoded.
    pub gateway: Option<String>,
    /// The submitted bytes (as UTF-8, invalid sequences replaced), verbatim for signed
    /// readings; of a submission that is not a reading only a sample (its first 4 KiB) is
    /// kept, and the reason says how long it was.
    pub raw: String,
    /// Whether an operator may accept it ([`ReasonCode::operator_acceptable`]).
    pub acceptable: bool,
    /// Why it is here.
    pub code: ReasonCode,
    /// The reason sentence.
    pub reason: String,
    /// Open, accepted, held or readmitted.
    pub status: QuarantineStatus,
}

/// The answer of `POST /quarantine/{id}/accept`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuarantineAccepted {
    /// The quarantine id.
    pub id: i64,
    /// Always `accepted`.
    pub status: QuarantineStatus,
    /// Withheld mints released by this acceptance.
    pub mints_released: u64,
}

/// Receipt of a token operation (`POST /tokens/transfer`, `POST /tokens/retire`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenReceipt {
    /// The ledger entry's hash.
    pub entry: String,
    /// The lot the tokens are in afterwards (the new lot of a transfer).
    pub lot: String,
    /// Whether this exact operation had been applied before.
    pub duplicate: bool,
}

/// What settlement streams on `GET /events` (the SSE event name is [`Event::name`]; the data
/// is this JSON, tagged by `event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// An interval was settled.
    Settled {
        /// Interval key.
        interval: String,
        /// Statements written.
        statements: usize,
        /// Tokens minted, Wh.
        minted: Wh,
    },
    /// A block was sealed.
    Block {
        /// Height.
        height: u64,
        /// Hash (hex).
        hash: String,
        /// Interval key.
        interval: String,
    },
    /// A reading was quarantined.
    Quarantined {
        /// Quarantine id.
        id: i64,
        /// Reason code.
        code: ReasonCode,
        /// Reason sentence.
        reason: String,
    },
    /// A home exceeded its operating envelope in a second consecutive settled interval (the
    /// alert starts; it is not repeated while the run goes on).
    #[serde(rename = "envelope_alert")]
    EnvelopeAlert(EnvelopeAlert),
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Settled { .. } => "settled",
            Event::Block { .. } => "block",
            Event::Quarantined { .. } => "quarantined",
            Event::EnvelopeAlert(_) => "envelope_alert",
        }
    }
}

/// A household's monthly statement (`GET /statements/monthly/{participant}/{month}`, also as
/// CSV and a printable HTML page; `edge-gateway statement --month 2026-06` prints it).
///
/// Built from the per-interval [`Statement`]s settlement wrote for the month, the tariffs of
/// each interval's market result and the signed readings it metered. Months are calendar months
/// in **UTC**: `from` is the first instant of the month, `to` the first instant of the next;
/// an interval belongs to the month its start falls in. Energies are integer Wh, money integer
/// minor units (positive = the household receives), prices minor units per MWh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonthlyStatement {
    /// The household.
    pub participant: ParticipantId,
    /// The month, `YYYY-MM`.
    pub month: String,
    /// The time zone of the month's boundaries: always `UTC`.
    pub time_zone: String,
    /// First instant of the month (inclusive).
    pub from: DateTime<Utc>,
    /// First instant of the next month (exclusive).
    pub to: DateTime<Utc>,
    /// Every settled interval of the month with a statement for the household, oldest first.
    pub intervals: Vec<MonthlyInterval>,
    /// Sums over `intervals`.
    pub totals: MonthlyTotals,
    /// Where the household's energy came from and went to.
    pub community: CommunityShare,
    /// The month against a utility-only baseline at the same tariffs.
    pub savings: Savings,
}

/// One interval of a [`MonthlyStatement`]: the interval's [`Statement`] with its tariffs, its
/// lines summed by category, its community split, its baseline and its readings' digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonthlyInterval {
    /// The interval key (`2026-06-21T12:00:00Z/15`).
    pub interval: String,
    /// The utility's retail price settlement used for this interval.
    pub retail_price: PricePerMwh,
    /// The utility's feed-in price settlement used for this interval.
    pub feed_in_price: PricePerMwh,
    /// The price of export beyond the operating envelope.
    pub envelope_excess_price: PricePerMwh,
    /// The interval's statement exactly as `GET /statements` answers it (its lines: trades,
    /// imbalances and any fees; its tokens; its net).
    pub statement: Statement,
    /// Sum of the `trade_sale` and `trade_purchase` lines.
    pub trades: Money,
    /// Sum of the imbalance lines (`shortfall`, `surplus_export`, `envelope_excess`,
    /// `untaken`, `extra_import`).
    pub imbalance: Money,
    /// Sum of any other lines (fees); settlement charges none today (branch fees are part of
    /// the cleared node prices), so this is 0.
    pub fees: Money,
    /// Metered import bought from neighbours and proven delivered: the tokens minted to the
    /// household for this interval.
    pub from_neighbours: Wh,
    /// Metered import from the grid: `imported − from_neighbours`.
    pub from_grid: Wh,
    /// Delivered export sold to neighbours: `min(delivered, energy sold to participants)`.
    pub to_neighbours: Wh,
    /// Export that went to the grid: `exported − to_neighbours`.
    pub to_grid: Wh,
    /// What the same metered energy would have earned with the utility alone:
    /// `feed_in × (exported − envelope_excess) + envelope_excess_price × envelope_excess −
    /// retail × imported`, each product rounded as trades are. `null` for an estimated
    /// interval (no readings: nothing metered to compare).
    pub baseline: Option<Money>,
    /// `statement.net − baseline` (positive = the market did better); `null` when estimated.
    pub savings: Option<Money>,
    /// The household's signed readings settlement stored for this interval (accepted,
    /// flagged and late), by key.
    pub readings: Vec<ReadingDigest>,
}

/// A signed reading named on a monthly statement, so the household can match it with the
/// envelope its gateway signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadingDigest {
    /// SHA-256 (hex) of the signed payload (as `GET /readings/{digest}` and token provenance
    /// name it).
    pub digest: String,
    /// The idempotency key (`<gateway>/<device>/<interval start>`).
    pub key: String,
    /// The gateway that signed it.
    pub gateway: String,
    /// Accepted, flagged or late.
    pub status: StoredReadingStatus,
    /// Its grid import delta.
    pub imported: Wh,
    /// Its grid export delta.
    pub exported: Wh,
}

/// Sums over a monthly statement's intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonthlyTotals {
    /// Intervals listed.
    pub intervals: u64,
    /// Of those, settled without readings (estimated).
    pub estimated_intervals: u64,
    /// Energy sold in trades.
    pub sold: Wh,
    /// Energy bought in trades.
    pub bought: Wh,
    /// Metered export.
    pub exported: Wh,
    /// Metered import.
    pub imported: Wh,
    /// Export beyond the operating envelope.
    pub envelope_excess: Wh,
    /// Export allocated to sales.
    pub delivered: Wh,
    /// Import allocated to purchases.
    pub consumed: Wh,
    /// Tokens minted to the household (1 token = 1 Wh).
    pub tokens: Wh,
    /// Trade lines.
    pub trades: Money,
    /// Imbalance lines.
    pub imbalance: Money,
    /// Fee lines.
    pub fees: Money,
    /// Sum of every line (= `trades + imbalance + fees`, = the sum of the intervals' nets).
    pub net: Money,
    /// Readings listed.
    pub readings: u64,
}

/// Where the month's energy came from and went to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommunityShare {
    /// Import bought from neighbours and proven delivered (tokens).
    pub from_neighbours: Wh,
    /// Import from the grid.
    pub from_grid: Wh,
    /// `from_neighbours / imported` in per mille (rounded down); `null` without import.
    pub import_share_permille: Option<u32>,
    /// Delivered export sold to neighbours.
    pub to_neighbours: Wh,
    /// Export that went to the grid.
    pub to_grid: Wh,
    /// `to_neighbours / exported` in per mille (rounded down); `null` without export.
    pub export_share_permille: Option<u32>,
}

/// The month against a utility-only baseline: the same metered energy, each interval at that
/// interval's retail and feed-in prices, no market. Estimated intervals (no readings) are left
/// out of both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Savings {
    /// Sum of the metered intervals' nets.
    pub actual: Money,
    /// Sum of their baselines.
    pub baseline: Money,
    /// `actual − baseline` (positive = the household is better off with the market).
    pub savings: Money,
    /// Intervals compared.
    pub intervals: u64,
    /// Estimated intervals left out.
    pub estimated_excluded: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_and_named() {
        let e = Event::Quarantined {
            id: 3,
            code: ReasonCode::Late,
            reason: "late".into(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"quarantined","id":3,"code":"late","reason":"late"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        assert_eq!(e.name(), "quarantined");
    }

    #[test]
    fn block_header_fields_are_flat() {
        let json = r#"{"height":1,"interval":"2026-06-21T12:00:00Z/15","prev_hash":"00",
            "merkle_root":"11","entry_count":2,"sealed_at":"2026-06-21T12:20:00Z","hash":"22",
            "signature":"33","public_key":"44","entries":["a","b"]}"#;
        let b: BlockSummary = serde_json::from_str(json).unwrap();
        assert_eq!(b.header.entry_count, 2);
        let again = serde_json::to_value(&b).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn statuses_read_as_stored() {
        for s in ["accepted", "flagged", "late"] {
            assert_eq!(StoredReadingStatus::parse(s).unwrap().as_str(), s);
        }
        for s in ["open", "accepted"] {
            assert_eq!(QuarantineStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(StoredReadingStatus::parse("flagged?"), None);
    }

    fn mint() -> EntryBody {
        EntryBody::Mint(MintEntry {
            interval: "2026-06-21T12:00:00Z/15".into(),
            trade_index: 0,
            seller: ParticipantId::new("alice").unwrap(),
            buyer: ParticipantId::new("bob").unwrap(),
            seller_order: "o1".into(),
            buyer_order: "o2".into(),
            source: "pv".into(),
            price: PricePerMwh(100),
            amount: Wh(500),
            seller_readings: vec!["aa".into()],
            buyer_readings: vec![],
            released: false,
        })
    }

    // The shapes settlement answered with before the types existed (built by hand then).
    #[test]
    fn balances_keep_their_shape() {
        let b = Balances {
            participant: "bob".into(),
            balance: Wh(400),
            retired: Wh(100),
            holdings: vec![Holding {
                lot: "11".into(),
                amount: Wh(400),
                retired: Wh(100),
                received: Wh(500),
                parent_lot: None,
                origin_mint: "11".into(),
                provenance: mint(),
            }],
        };
        let expected = serde_json::json!({
            "participant": "bob", "balance": 400, "retired": 100,
            "holdings": [{"lot": "11", "amount": 400, "retired": 100, "received": 500,
                "parent_lot": null, "origin_mint": "11",
                "provenance": {"kind": "mint", "interval": "2026-06-21T12:00:00Z/15",
                    "trade_index": 0, "seller": "alice", "buyer": "bob", "seller_order": "o1",
                    "buyer_order": "o2", "source": "pv", "price": 100, "amount": 500,
                    "seller_readings": ["aa"], "buyer_readings": [], "released": false}}],
        });
        assert_eq!(serde_json::to_value(&b).unwrap(), expected);
        assert_eq!(serde_json::from_value::<Balances>(expected).unwrap(), b);
    }

    #[test]
    fn entries_show_null_proofs_until_sealed() {
        let mut e = EntryView {
            hash: "ab".into(),
            seq: 3,
            kind: "mint".into(),
            body: mint(),
            body_base64: "e30=".into(),
            block_height: None,
            merkle_root: None,
            proof: None,
            leaf_hashing: LEAF_HASHING.into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        for key in ["block_height", "merkle_root", "proof"] {
            assert_eq!(v[key], serde_json::Value::Null, "{key} is present as null");
        }
        assert_eq!(v["body"]["kind"], "mint");
        assert_eq!(
            v["leaf_hashing"],
            "SHA-256(0x00 || body bytes); nodes SHA-256(0x01 || left || right)"
        );
        e.block_height = Some(1);
        e.merkle_root = Some("cd".into());
        e.proof = Some(vec![ProofStep {
            sibling: "ef".into(),
            side: "left".into(),
        }]);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v["proof"],
            serde_json::json!([{"sibling": "ef", "side": "left"}])
        );
        assert_eq!(serde_json::from_value::<EntryView>(v).unwrap(), e);
    }

    #[test]
    fn quarantine_items_and_answers_keep_their_shape() {
        let q = QuarantineItem {
            id: 7,
            received_at: chrono::DateTime::from_timestamp_millis(1_782_043_200_000),
            source: "rest".into(),
            key: None,
            gateway: None,
            raw: "not json".into(),
            acceptable: false,
            code: ReasonCode::Malformed,
            reason: "not JSON".into(),
            status: QuarantineStatus::Open,
        };
        let expected = serde_json::json!({"id": 7, "received_at": "2026-06-21T12:00:00Z",
            "source": "rest", "key": null, "gateway": null, "raw": "not json",
            "acceptable": false, "code": "malformed", "reason": "not JSON", "status": "open"});
        assert_eq!(serde_json::to_value(&q).unwrap(), expected);
        assert_eq!(
            serde_json::from_value::<QuarantineItem>(expected).unwrap(),
            q
        );
        let a = QuarantineAccepted {
            id: 7,
            status: QuarantineStatus::Accepted,
            mints_released: 1,
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"id": 7, "status": "accepted", "mints_released": 1})
        );
        let r = TokenReceipt {
            entry: "e".into(),
            lot: "l".into(),
            duplicate: false,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"entry": "e", "lot": "l", "duplicate": false})
        );
    }
}
