//! What the market publishes for each cleared interval, as settlement and the dashboard read it.

use crate::grid::Network;
use crate::ids::{GatewayId, NodeId, ParticipantId};
use crate::interval::Interval;
use crate::order::Side;
use crate::units::{Money, PricePerMwh, Wh};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One side of a trade: an order, or the utility at the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Counterparty {
    /// A participant's order.
    Order {
        /// The market's order id.
        order_id: String,
        /// The order's owner.
        participant: ParticipantId,
        /// The order's node.
        node: NodeId,
    },
    /// The utility (backstop at the root).
    Utility,
}

/// A bilateral trade from the clearing's decomposition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Trade {
    /// The buying side.
    pub buyer: Counterparty,
    /// The selling side.
    pub seller: Counterparty,
    /// Energy traded.
    pub energy: Wh,
    /// The price the buyer pays per MWh.
    pub price: PricePerMwh,
}

/// How much of an order cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClearedOrder {
    /// The market's order id.
    pub order_id: String,
    /// The owner.
    pub participant: ParticipantId,
    /// The node.
    pub node: NodeId,
    /// Buy or sell.
    pub side: Side,
    /// The order's quantity.
    pub quantity: Wh,
    /// The order's limit price.
    pub limit_price: PricePerMwh,
    /// How much cleared (0 ≤ cleared ≤ quantity).
    pub cleared: Wh,
    /// The price it cleared at (its node's price, or its limit under pay-as-bid).
    pub price: PricePerMwh,
}

/// The flow on one branch (positive = into the subtree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BranchFlow {
    /// The branch's child node.
    pub node: NodeId,
    /// Energy into the subtree (negative = out of it).
    pub flow: Wh,
    /// The import limit in force, if any.
    pub import_limit: Option<Wh>,
    /// The export limit in force, if any.
    pub export_limit: Option<Wh>,
    /// Whether a limit binds.
    pub congested: bool,
}

/// The immutable result of clearing one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IntervalResult {
    /// The interval.
    pub interval: Interval,
    /// The market zone that cleared it.
    pub zone: String,
    /// When it was cleared.
    pub cleared_at: DateTime<Utc>,
    /// Pay-as-clear price per node.
    pub prices: BTreeMap<NodeId, PricePerMwh>,
    /// Every order of the interval with how much cleared.
    pub orders: Vec<ClearedOrder>,
    /// The bilateral trades.
    pub trades: Vec<Trade>,
    /// Energy the utility sold into the root.
    pub utility_import: Wh,
    /// Energy the utility bought from the root.
    pub utility_export: Wh,
    /// Flow on every branch.
    pub flows: Vec<BranchFlow>,
    /// Welfare in minor units.
    pub welfare: Money,
    /// The topology and tariffs the interval was cleared with (operator limit overrides for
    /// the interval already applied to the branches' limits).
    pub network: Network,
    /// Every enrolled connection point's operating envelope for the interval.
    #[serde(default)]
    pub envelopes: Vec<EnvelopeAllocation>,
}

/// One connection point's limits for one interval: the unsigned view carried inside the
/// [`IntervalResult`] (`envelopes`), as the dashboard and settlement read it. The signed
/// per-gateway form is `envelope::OperatingEnvelope`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvelopeAllocation {
    /// The gateway (connection point).
    pub gateway: GatewayId,
    /// The household behind it.
    pub participant: ParticipantId,
    /// Its grid node.
    pub node: NodeId,
    /// Most energy it may export in the interval.
    pub export_limit_wh: Wh,
    /// Most energy it may import in the interval.
    pub import_limit_wh: Wh,
    /// The part of `export_limit_wh` reserved for its cleared net sale.
    #[serde(default)]
    pub cleared_export_wh: Wh,
    /// The part of `import_limit_wh` reserved for its cleared net purchase.
    #[serde(default)]
    pub cleared_import_wh: Wh,
}
