//! Bilateral trades from a cleared solution, routed along the tree.
//!
//! Bottom-up, each node first matches its own sellers with its own buyers; what is left (only
//! sellers if the subtree exports, only buyers if it imports) moves up to the parent, whose
//! own orders and the children's leftovers are matched in turn. At the root the utility closes
//! the book. So every trade's energy follows the tree path between the two nodes, the energy
//! moved up a branch equals its flow exactly, and no trade runs against a branch's flow.
//!
//! Matching at a node is first-in, first-out: own orders in book order, then the children's
//! leftovers in topology order; quantities are integer Wh, so every node balances exactly.

use crate::book::BookOrder;
use crate::fast::Solution;
use crate::network::Topology;
use crate::prices::PricingRule;
use gridmesh_protocol::Side;

/// One side of a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The order at this index in the book.
    Order(usize),
    /// The utility at the root.
    Utility,
}

/// A trade between two parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawTrade {
    /// The buying side.
    pub buyer: Party,
    /// The selling side.
    pub seller: Party,
    /// Energy in Wh.
    pub wh: i64,
    /// The price the buyer pays (minor units per MWh).
    pub price: i64,
}

/// Energy still to be matched, per party.
type Packets = Vec<(Party, i64)>;

/// Decomposes a solution into trades.
pub fn decompose(
    topology: &Topology,
    orders: &[BookOrder],
    solution: &Solution,
    rule: PricingRule,
) -> Vec<RawTrade> {
    let nodes = topology.nodes();
    let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, o) in orders.iter().enumerate() {
        if solution.cleared[i] > 0 {
            by_node[o.node].push(i);
        }
    }
    let buyer_price = |party: Party| match (party, rule) {
        (Party::Order(i), PricingRule::PayAsClear) => solution.prices[orders[i].node],
        (Party::Order(i), PricingRule::PayAsBid) => orders[i].limit_price,
        (Party::Utility, PricingRule::PayAsClear) => solution.prices[0],
        (Party::Utility, PricingRule::PayAsBid) => topology.utility.feed_in.unwrap_or(0),
    };
    let mut left_over: Vec<(Packets, Packets)> = vec![(Vec::new(), Vec::new()); nodes.len()];
    let mut trades = Vec::new();
    for v in (0..nodes.len()).rev() {
        let mut supply = Vec::new();
        let mut demand = Vec::new();
        for &i in &by_node[v] {
            let packet = (Party::Order(i), solution.cleared[i]);
            match orders[i].side {
                Side::Sell => supply.push(packet),
                Side::Buy => demand.push(packet),
            }
        }
        for &c in &nodes[v].children {
            let (s, d) = std::mem::take(&mut left_over[c]);
            supply.extend(s);
            demand.extend(d);
        }
        if v == 0 {
            if solution.utility_import > 0 {
                supply.push((Party::Utility, solution.utility_import));
            }
            if solution.utility_export > 0 {
                demand.push((Party::Utility, solution.utility_export));
            }
        }
        let (mut si, mut di) = (0, 0);
        while si < supply.len() && di < demand.len() {
            let wh = supply[si].1.min(demand[di].1);
            trades.push(RawTrade {
                buyer: demand[di].0,
                seller: supply[si].0,
                wh,
                price: buyer_price(demand[di].0),
            });
            supply[si].1 -= wh;
            demand[di].1 -= wh;
            if supply[si].1 == 0 {
                si += 1;
            }
            if demand[di].1 == 0 {
                di += 1;
            }
        }
        supply.drain(..si);
        demand.drain(..di);
        left_over[v] = (supply, demand);
    }
    debug_assert!(left_over[0].0.is_empty() && left_over[0].1.is_empty());
    trades
}
