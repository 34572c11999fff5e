//! Orders as the clearing sees them, the offline book file, and order-book depth.
//!
//! The clearing core works on [`BookOrder`]s: an id, a node index into the [`Topology`], a side,
//! an integer quantity (Wh) and an integer limit price (minor units per MWh).

use crate::network::{MAX_ABS_PRICE, MAX_ENERGY_WH, NetworkError, Topology};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::{ParticipantId, Side};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Most orders in one book.
pub const MAX_ORDERS: usize = 1_000_000;

/// One order in the form the clearing works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookOrder {
    /// The order's id (unique within the book).
    pub id: String,
    /// The index of its node in the topology.
    pub node: usize,
    /// Buy or sell.
    pub side: Side,
    /// Quantity in Wh (positive).
    pub quantity: i64,
    /// Limit price in minor units per MWh.
    pub limit_price: i64,
}

/// The owners of a book's orders, interned as the book is read: each distinct participant is
/// stored once and every order refers to its owner by a small index. Clearing results and
/// envelopes then match orders to households by integer, not by comparing ids.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    ids: Vec<ParticipantId>,
    index: HashMap<ParticipantId, u32, foldhash::fast::RandomState>,
    of_order: Vec<u32>,
}

impl Owners {
    /// No orders yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the owner of the next order.
    pub fn push(&mut self, owner: ParticipantId) {
        let k = match self.index.get(owner.as_str()) {
            Some(&k) => k,
            None => {
                let k = self.ids.len() as u32;
                self.ids.push(owner.clone());
                self.index.insert(owner, k);
                k
            }
        };
        self.of_order.push(k);
    }

    /// The owner of order `i`.
    pub fn of(&self, i: usize) -> &ParticipantId {
        &self.ids[self.of_order[i] as usize]
    }

    /// The owner index of order `i` (an index into [`Owners::participants`]).
    pub fn index_of_order(&self, i: usize) -> u32 {
        self.of_order[i]
    }

    /// The index of `participant`, if it owns any order.
    pub fn index_of(&self, participant: &ParticipantId) -> Option<u32> {
        self.index.get(participant).copied()
    }

    /// The distinct owners, in order of their first order.
    pub fn participants(&self) -> &[ParticipantId] {
        &self.ids
    }

    /// The number of orders recorded.
    pub fn len(&self) -> usize {
        self.of_order.len()
    }

    /// Whether no order is recorded.
    pub fn is_empty(&self) -> bool {
        self.of_order.is_empty()
    }
}

impl FromIterator<ParticipantId> for Owners {
    fn from_iter<I: IntoIterator<Item = ParticipantId>>(iter: I) -> Self {
        let mut owners = Owners::new();
        for p in iter {
            owners.push(p);
        }
        owners
    }
}

/// Why an order or a book is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// The network is invalid.
    #[error("invalid network: {0}")]
    Network(#[from] NetworkError),
    /// The book file is not JSON of the expected shape.
    #[error("the book is not valid JSON of the expected shape: {0}")]
    Json(String),
    /// An order names a node that is not in the network.
    #[error("order `{order}` is at node `{node}`, which is not in the network")]
    UnknownNode {
        /// The order.
        order: String,
        /// The node.
        node: String,
    },
    /// A quantity that is zero, negative or too large.
    #[error("order `{order}` has quantity {quantity} Wh; it must be between 1 and {max}")]
    BadQuantity {
        /// The order.
        order: String,
        /// The quantity.
        quantity: i64,
        /// The largest allowed.
        max: i64,
    },
    /// An absurd price.
    #[error(
        "order `{order}` has limit price {price}; prices must lie within ±{max} minor units per MWh"
    )]
    BadPrice {
        /// The order.
        order: String,
        /// The price.
        price: i64,
        /// The bound.
        max: i64,
    },
    /// Two orders share an id.
    #[error("order id `{0}` appears twice; ids must be unique")]
    DuplicateId(String),
    /// Too many orders.
    #[error("the book holds {0} orders; at most 1000000 are supported")]
    TooMany(usize),
}

/// Checks an order's quantity (1 to [`MAX_ENERGY_WH`]) and price (within ±[`MAX_ABS_PRICE`])
/// bounds: every entry point (REST order, offline book, trader CLI) goes through here.
pub fn check_order_values(id: &str, quantity: i64, price: i64) -> Result<(), BookError> {
    if !(1..=MAX_ENERGY_WH).contains(&quantity) {
        return Err(BookError::BadQuantity {
            order: id.to_owned(),
            quantity,
            max: MAX_ENERGY_WH,
        });
    }
    // Not `price.abs()`: `i64::MIN.abs()` overflows (and wraps to itself in a build without
    // overflow checks, which then passed this bound).
    if !(-MAX_ABS_PRICE..=MAX_ABS_PRICE).contains(&price) {
        return Err(BookError::BadPrice {
            order: id.to_owned(),
            price,
            max: MAX_ABS_PRICE,
        });
    }
    Ok(())
}

/// One order of the offline book file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOrder {
    /// Order id.
    pub id: String,
    /// `buy` or `sell`.
    pub side: Side,
    /// Node id.
    pub node: String,
    /// Quantity in Wh.
    pub quantity_wh: i64,
    /// Limit price in minor units per MWh.
    pub limit_price: i64,
}

/// The offline book file: `{"network": …, "orders": […]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookFile {
    /// The topology and tariff.
    pub network: Network,
    /// The orders.
    pub orders: Vec<FileOrder>,
}

impl BookFile {
    /// Parses the JSON text of a book file.
    pub fn parse(text: &str) -> Result<Self, BookError> {
        serde_json::from_str(text).map_err(|e| BookError::Json(e.to_string()))
    }

    /// Validates the book and returns the topology and the orders for clearing.
    pub fn validate(&self) -> Result<(Topology, Vec<BookOrder>), BookError> {
        let topology = Topology::new(&self.network)?;
        if self.orders.len() > MAX_ORDERS {
            return Err(BookError::TooMany(self.orders.len()));
        }
        let mut seen = HashSet::new();
        let mut orders = Vec::with_capacity(self.orders.len());
        for o in &self.orders {
            if !seen.insert(o.id.as_str()) {
                return Err(BookError::DuplicateId(o.id.clone()));
            }
            let node = gridmesh_protocol::NodeId::new(o.node.clone())
                .ok()
                .and_then(|n| topology.index_of(&n))
                .ok_or_else(|| BookError::UnknownNode {
                    order: o.id.clone(),
                    node: o.node.clone(),
                })?;
            check_order_values(&o.id, o.quantity_wh, o.limit_price)?;
            orders.push(BookOrder {
                id: o.id.clone(),
                node,
                side: o.side,
                quantity: o.quantity_wh,
                limit_price: o.limit_price,
            });
        }
        Ok((topology, orders))
    }
}

/// Depth at one node and its price steps (the wire types, re-exported from the protocol).
pub use gridmesh_protocol::api::market::{DepthStep, NodeDepth};

/// Quantity and order count per price.
type Steps = BTreeMap<i64, (i64, usize)>;

/// Aggregates orders into price steps per node.
pub fn depth<'a>(
    orders: impl IntoIterator<Item = (&'a str, Side, i64, i64)>,
) -> BTreeMap<String, NodeDepth> {
    let mut acc: BTreeMap<String, (Steps, Steps)> = BTreeMap::new();
    for (node, side, quantity, price) in orders {
        let entry = acc.entry(node.to_owned()).or_default();
        let map = match side {
            Side::Buy => &mut entry.0,
            Side::Sell => &mut entry.1,
        };
        let step = map.entry(price).or_default();
        // Saturating: a depth view never wraps, whatever the stored quantities.
        step.0 = step.0.saturating_add(quantity);
        step.1 += 1;
    }
    let step = |(price, (quantity_wh, orders)): (&i64, &(i64, usize))| DepthStep {
        price: *price,
        quantity_wh: *quantity_wh,
        orders: *orders,
    };
    acc.into_iter()
        .map(|(node, (bids, asks))| {
            (
                node,
                NodeDepth {
                    bids: bids.iter().rev().map(step).collect(),
                    asks: asks.iter().map(step).collect(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"network":{"root":"sub","branches":[{"node":"f1","parent":"sub","import_limit_wh":50000,"export_limit_wh":30000,"fee_per_mwh":0}],"utility":{"retail_price":30000,"feed_in_price":8000}},"orders":[{"id":"b1","side":"buy","node":"f1","quantity_wh":1200,"limit_price":25000}]}"#;

    #[test]
    fn owners_are_interned_in_order_of_first_order() {
        let id = |s: &str| ParticipantId::new(s).unwrap();
        let owners: Owners = ["h2", "h1", "h2", "trader", "h1"]
            .iter()
            .map(|s| id(s))
            .collect();
        assert_eq!(owners.len(), 5);
        assert_eq!(owners.participants(), &[id("h2"), id("h1"), id("trader")]);
        let of: Vec<u32> = (0..5).map(|i| owners.index_of_order(i)).collect();
        assert_eq!(of, [0, 1, 0, 2, 1]);
        assert_eq!(owners.of(4), &id("h1"));
        assert_eq!(owners.index_of(&id("trader")), Some(2));
        assert_eq!(owners.index_of(&id("h3")), None);
    }

    #[test]
    fn parses_the_issue_example() {
        let (topology, orders) = BookFile::parse(EXAMPLE).unwrap().validate().unwrap();
        assert_eq!(topology.nodes().len(), 2);
        assert_eq!(orders[0].node, 1);
        assert_eq!(orders[0].quantity, 1200);
    }

    #[test]
    fn rejects_bad_orders() {
        let bad = |from: &str, to: &str, expected: &str| {
            let text = EXAMPLE.replace(from, to);
            let err = BookFile::parse(&text)
                .and_then(|b| b.validate().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        };
        bad("\"quantity_wh\":1200", "\"quantity_wh\":-5", "quantity -5");
        bad("\"quantity_wh\":1200", "\"quantity_wh\":0", "quantity 0");
        bad(
            "\"node\":\"f1\",\"q",
            "\"node\":\"f9\",\"q",
            "not in the network",
        );
        bad("25000}", "99999999}", "limit price 99999999");
        // Regression (issue 14, item 6a): `abs()` wrapped for i64::MIN, so this passed.
        bad(
            "25000}",
            &format!("{}}}", i64::MIN),
            &format!("limit price {}", i64::MIN),
        );
        bad(
            "25000}",
            &format!("{}}}", -MAX_ABS_PRICE - 1),
            "prices must lie within",
        );
        bad(
            "\"quantity_wh\":1200",
            &format!("\"quantity_wh\":{}", i64::MIN),
            "must be between 1 and",
        );
        bad(
            "\"quantity_wh\":1200",
            &format!("\"quantity_wh\":{}", MAX_ENERGY_WH + 1),
            "must be between 1 and",
        );
        bad("\"root\":\"sub\",", "", "root");
    }

    #[test]
    fn order_values_at_the_bounds() {
        assert!(check_order_values("o", 1, MAX_ABS_PRICE).is_ok());
        assert!(check_order_values("o", MAX_ENERGY_WH, -MAX_ABS_PRICE).is_ok());
        for (q, p) in [
            (0, 0),
            (-1, 0),
            (i64::MIN, 0),
            (MAX_ENERGY_WH + 1, 0),
            (i64::MAX, 0),
            (1, MAX_ABS_PRICE + 1),
            (1, -MAX_ABS_PRICE - 1),
            (1, i64::MIN),
            (1, i64::MAX),
        ] {
            assert!(check_order_values("o", q, p).is_err(), "{q} Wh at {p}");
        }
    }

    #[test]
    fn depth_aggregates_steps() {
        let d = depth([
            ("f1", Side::Buy, 10, 5),
            ("f1", Side::Buy, 5, 5),
            ("f1", Side::Buy, 1, 7),
            ("f1", Side::Sell, 3, 2),
        ]);
        let f1 = &d["f1"];
        assert_eq!(f1.bids[0].price, 7);
        assert_eq!(f1.bids[1].quantity_wh, 15);
        assert_eq!(f1.bids[1].orders, 2);
        assert_eq!(f1.asks.len(), 1);
    }
}
