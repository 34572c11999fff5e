//! The market engine's read models: its status, orders as listed, order-book depth, the
//! answers to order submission and cancellation, its health and its error shape.
//!
//! Results are public as [`PublicResult`]: aggregates per area and pseudonymous trades.
//!
//! Participants, gateways, limit overrides, the topology, full results and the market key are
//! answered with the protocol's own types ([`crate::registry::Participant`],
//! [`crate::registry::GatewayEnrollment`], [`crate::grid::LimitOverride`],
//! [`crate::grid::Network`], [`crate::market::IntervalResult`],
//! [`crate::envelope::SignedResult`], [`crate::envelope::MarketKey`]).
//!
//! ```
//! use gridmesh_protocol::api::market::{MarketStatus, OrderAccepted};
//!
//! let accepted: OrderAccepted = serde_json::from_str(r#"{"order_id":"alice:1"}"#).unwrap();
//! assert_eq!(accepted.order_id, "alice:1");
//! let status: MarketStatus = serde_json::from_str(r#"{"zone":"default","interval_minutes":15,
//!     "gate_closure_lead_seconds":300,
//!     "next_open_interval":{"start":"2026-06-21T12:15:00Z","minutes":15},
//!     "next_gate_closure":"2026-06-21T12:10:00Z","clock":"2026-06-21T12:00:00Z",
//!     "clock_speed":1.0,"pricing":"pay_as_clear"}"#).unwrap();
//! assert_eq!(status.interval_minutes, 15);
//! ```

use crate::ids::{NodeId, ParticipantId};
use crate::interval::Interval;
use crate::market::BranchFlow;
use crate::order::Side;
use crate::signing::SignedEnvelope;
use crate::units::{Money, PricePerMwh, Wh};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How cleared orders are priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PricingRule {
    /// Everyone at a node pays or receives the node price.
    #[default]
    PayAsClear,
    /// Everyone pays or receives their own limit price.
    PayAsBid,
}

/// `GET /status`: the market's zone, interval length, gate-closure lead, next open interval
/// and clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MarketStatus {
    /// The market zone's name.
    pub zone: String,
    /// Delivery interval length in minutes (5, 15, 30 or 60).
    pub interval_minutes: u16,
    /// Orders for an interval close this many seconds before it starts.
    pub gate_closure_lead_seconds: i64,
    /// The next interval that still accepts orders.
    pub next_open_interval: Interval,
    /// Its gate closure.
    pub next_gate_closure: DateTime<Utc>,
    /// The market's clock (accelerated in demos and tests).
    pub clock: DateTime<Utc>,
    /// How many market seconds pass per real second (1.0 = real time).
    pub clock_speed: f64,
    /// Pay-as-clear or pay-as-bid.
    pub pricing: PricingRule,
}

/// An order as the market stores and lists it (`GET /orders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderRecord {
    /// The market's id: `<participant>:<nonce>`.
    pub order_id: String,
    /// The owner.
    pub participant: ParticipantId,
    /// The owner's nonce.
    pub nonce: u64,
    /// The interval.
    pub interval: Interval,
    /// The node.
    pub node: NodeId,
    /// Buy or sell.
    pub side: Side,
    /// Quantity, Wh.
    pub quantity_wh: i64,
    /// Limit price, minor units per MWh.
    pub limit_price: i64,
    /// Whether it was cancelled before gate closure.
    pub cancelled: bool,
    /// When it was received (RFC 3339, market clock).
    pub received_at: String,
    /// The signed envelope it arrived in.
    pub envelope: SignedEnvelope,
}

/// `POST /orders` (201): the id the market gave the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderAccepted {
    /// `<participant>:<nonce>`.
    pub order_id: String,
}

/// Most signed orders one `POST /orders/batch` may carry.
pub const MAX_ORDER_BATCH: usize = 1000;

/// `POST /orders/batch` body: up to [`MAX_ORDER_BATCH`] signed orders, each exactly as
/// `POST /orders` takes one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderBatch {
    /// The signed orders, answered in this order.
    pub orders: Vec<SignedEnvelope>,
}

/// The outcome of one order of a batch: what `POST /orders` would have answered for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderBatchItem {
    /// The HTTP status `POST /orders` gives it: 201 booked, else the error's status.
    pub status: u16,
    /// `<participant>:<nonce>`, when booked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The stable error code (as in `ErrorBody`), when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What is wrong and what to do, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /orders/batch` (200): one outcome per order, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderBatchAccepted {
    /// How many were booked (status 201).
    pub accepted: usize,
    /// How many were refused.
    pub rejected: usize,
    /// One outcome per order.
    pub results: Vec<OrderBatchItem>,
}

/// `POST /orders/cancel` (200): which order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderCancelled {
    /// `<participant>:<nonce>`.
    pub order_id: String,
    /// Always `true`.
    pub cancelled: bool,
}

/// One price step of the depth view: total quantity offered at one price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DepthStep {
    /// Price in minor units per MWh.
    pub price: i64,
    /// Total quantity in Wh at that price.
    pub quantity_wh: i64,
    /// Number of orders at that price.
    pub orders: usize,
}

/// Depth at one node: bids from the highest price down, asks from the lowest up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeDepth {
    /// Buy steps, best (highest) first.
    pub bids: Vec<DepthStep>,
    /// Sell steps, best (lowest) first.
    pub asks: Vec<DepthStep>,
}

/// `GET /intervals/{start}/book`: the open orders of one interval as price steps per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BookDepth {
    /// The interval.
    pub interval: Interval,
    /// How many open (not cancelled) orders it has.
    pub orders: usize,
    /// Depth per node id.
    pub nodes: BTreeMap<String, NodeDepth>,
}

/// How a public result names the parties of its trades: a pseudonym that is stable within one
/// interval only (see [`PublicResult`]).
pub const PSEUDONYMS_PER_INTERVAL: &str = "per_interval";

/// The fewest participants an area of a public result holds: a node with fewer is folded into
/// its parent's area (only the zone's root area may hold fewer, when the whole zone does).
pub const MIN_AREA_PARTICIPANTS: u32 = 5;

/// One area of a [`PublicResult`]: a grid node together with the nodes below it that were
/// folded into it because they hold fewer than [`MIN_AREA_PARTICIPANTS`] participants. Every
/// figure is a sum over at least that many participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AreaAggregate {
    /// The area's node (a feeder, a lateral or the zone's root).
    pub node: NodeId,
    /// Every node whose participants count here, the area's own node first.
    pub nodes: Vec<NodeId>,
    /// Participants in the area: the enrolled households and everyone with an order.
    pub participants: u32,
    /// Orders of the interval in the area.
    pub orders: u32,
    /// Energy bid for (buy orders), Wh.
    pub bid: Wh,
    /// Energy offered (sell orders), Wh.
    pub offered: Wh,
    /// Energy bought (cleared buy orders), Wh.
    pub bought: Wh,
    /// Energy sold (cleared sell orders), Wh.
    pub sold: Wh,
    /// Sum of the area's operating envelopes' export limits, Wh.
    pub export_limit: Wh,
    /// Sum of the area's operating envelopes' import limits, Wh.
    pub import_limit: Wh,
    /// The price at the area's node (`null` if the result has none for it).
    pub price: Option<PricePerMwh>,
}

/// One side of a [`PublicTrade`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PublicParty {
    /// A participant, under its pseudonym for this interval, and its area.
    Participant {
        /// `p-` and 16 hex digits: a keyed hash of the participant and the interval.
        pseudonym: String,
        /// The node of the participant's area ([`AreaAggregate::node`]).
        area: NodeId,
    },
    /// The utility (backstop at the root).
    Utility,
}

/// A bilateral trade as the public sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicTrade {
    /// The buying side.
    pub buyer: PublicParty,
    /// The selling side.
    pub seller: PublicParty,
    /// Energy traded.
    pub energy: Wh,
    /// The price the buyer pays per MWh.
    pub price: PricePerMwh,
}

/// `GET /results`, `GET /intervals/{start}/result` and the `result` events of `GET /events`
/// without a credential: an interval's result with no participant id in it.
///
/// Orders and envelopes are summed per area (each area holds at least
/// [`MIN_AREA_PARTICIPANTS`] participants); prices and branch flows are given only for the
/// areas' nodes, since a smaller branch's flow would be the net position of its few homes.
/// Trades name their parties by pseudonyms that are stable within the interval only, so a
/// reader sees that one seller served three buyers but cannot follow a home from one interval
/// to the next. The operator, auditors and settlement read the full
/// [`crate::market::IntervalResult`]; a participant reads its own orders and trades.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicResult {
    /// The interval.
    pub interval: Interval,
    /// The market zone that cleared it.
    pub zone: String,
    /// When it was cleared.
    pub cleared_at: DateTime<Utc>,
    /// Pay-as-clear price per area node.
    pub prices: BTreeMap<NodeId, PricePerMwh>,
    /// The areas, the root's last.
    pub areas: Vec<AreaAggregate>,
    /// The bilateral trades, parties under pseudonyms.
    pub trades: Vec<PublicTrade>,
    /// Energy the utility sold into the root (`null` when withheld).
    pub utility_import: Option<Wh>,
    /// Energy the utility bought from the root (`null` when withheld).
    pub utility_export: Option<Wh>,
    /// Flow on every branch into an area's node.
    pub flows: Vec<BranchFlow>,
    /// Welfare in minor units (`null` when withheld).
    pub welfare: Option<Money>,
    /// How long a pseudonym holds: [`PSEUDONYMS_PER_INTERVAL`].
    pub pseudonyms: String,
    /// The fewest participants per area ([`MIN_AREA_PARTICIPANTS`]).
    pub min_area_participants: u32,
    /// `true` when the whole zone holds fewer than [`MIN_AREA_PARTICIPANTS`] participants:
    /// then only the prices are published (no areas, trades or flows, no utility energy or
    /// welfare), since every other figure would sum too few homes.
    pub withheld: bool,
}

/// `GET /healthz` (200): the service and its database answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`.
    pub status: String,
}

impl Health {
    /// `{"status":"ok"}`.
    pub fn ok() -> Self {
        Health {
            status: "ok".to_owned(),
        }
    }
}

/// Every error answer of the market (and of the other services' REST APIs):
/// `{"code": snake_case, "message": sentence}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The stable machine-readable code, e.g. `gate_closed`.
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_has_the_served_shape() {
        let interval = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
        let status = MarketStatus {
            zone: "z".into(),
            interval_minutes: 15,
            gate_closure_lead_seconds: 300,
            next_open_interval: interval,
            next_gate_closure: interval.gate_closure(chrono::Duration::seconds(300)),
            clock: interval.start(),
            clock_speed: 60.0,
            pricing: PricingRule::PayAsBid,
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(
            v,
            json!({
                "zone": "z",
                "interval_minutes": 15,
                "gate_closure_lead_seconds": 300,
                "next_open_interval": {"start": "2026-06-21T12:15:00Z", "minutes": 15},
                "next_gate_closure": "2026-06-21T12:10:00Z",
                "clock": "2026-06-21T12:15:00Z",
                "clock_speed": 60.0,
                "pricing": "pay_as_bid",
            })
        );
        assert_eq!(serde_json::from_value::<MarketStatus>(v).unwrap(), status);
    }

    #[test]
    fn small_answers_have_the_served_shape() {
        let check = |v: serde_json::Value, expected: serde_json::Value| assert_eq!(v, expected);
        check(
            serde_json::to_value(OrderAccepted {
                order_id: "a:1".into(),
            })
            .unwrap(),
            json!({"order_id": "a:1"}),
        );
        check(
            serde_json::to_value(OrderCancelled {
                order_id: "a:1".into(),
                cancelled: true,
            })
            .unwrap(),
            json!({"order_id": "a:1", "cancelled": true}),
        );
        check(
            serde_json::to_value(Health::ok()).unwrap(),
            json!({"status": "ok"}),
        );
        check(
            serde_json::to_value(ErrorBody {
                code: "gate_closed".into(),
                message: "m".into(),
            })
            .unwrap(),
            json!({"code": "gate_closed", "message": "m"}),
        );
    }

    #[test]
    fn book_depth_has_the_served_shape() {
        let interval = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
        let step = DepthStep {
            price: 25000,
            quantity_wh: 1200,
            orders: 2,
        };
        let book = BookDepth {
            interval,
            orders: 2,
            nodes: BTreeMap::from([(
                "f1".to_owned(),
                NodeDepth {
                    bids: vec![step],
                    asks: vec![],
                },
            )]),
        };
        let v = serde_json::to_value(&book).unwrap();
        assert_eq!(
            v,
            json!({
                "interval": {"start": "2026-06-21T12:15:00Z", "minutes": 15},
                "orders": 2,
                "nodes": {"f1": {"bids": [{"price": 25000, "quantity_wh": 1200, "orders": 2}], "asks": []}},
            })
        );
        assert_eq!(serde_json::from_value::<BookDepth>(v).unwrap(), book);
    }
}
