//! The pure clearing core: `clear(topology, orders, rule)` → quantities, prices, flows, trades.
//!
//! No I/O, no clock, no floats: the same book always gives the same outcome, bit for bit.
//! Welfare is kept exactly in micro-minor units (price per MWh × Wh) and rounded to minor units
//! only for display, half away from zero.

use crate::book::{BookOrder, Owners};
use crate::decompose::{Party, RawTrade, decompose};
use crate::fast::{self, Solution};
use crate::network::Topology;
use crate::prices::PricingRule;
use chrono::{DateTime, Utc};
use gridmesh_protocol::market::{BranchFlow, ClearedOrder, Counterparty, IntervalResult, Trade};
use gridmesh_protocol::{Interval, Money, NodeId, PricePerMwh, Side, Wh};
use serde::Serialize;
use std::collections::BTreeMap;

/// Everything one clearing produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearingOutcome {
    /// Quantities, node prices, flows and the utility's volumes.
    pub solution: Solution,
    /// The pricing rule applied.
    pub rule: PricingRule,
    /// The price each order settles at (node price, or its limit under pay-as-bid).
    pub order_prices: Vec<i64>,
    /// Exact welfare in micro-minor units (minor units per MWh × Wh).
    pub welfare_micro: i128,
    /// The bilateral trades.
    pub trades: Vec<RawTrade>,
}

impl ClearingOutcome {
    /// Welfare in minor units, rounded half away from zero.
    pub fn welfare(&self) -> Money {
        let w = self.welfare_micro;
        let rounded = w.unsigned_abs().saturating_add(500_000) / 1_000_000;
        let rounded = i128::try_from(rounded).unwrap_or(i128::MAX) * w.signum();
        Money(rounded.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
    }
}

/// Clears a validated book on a validated topology.
pub fn clear(topology: &Topology, orders: &[BookOrder], rule: PricingRule) -> ClearingOutcome {
    let solution = fast::solve(topology, orders);
    let welfare_micro = welfare_micro(topology, orders, &solution);
    let order_prices = orders
        .iter()
        .map(|o| match rule {
            PricingRule::PayAsClear => solution.prices[o.node],
            PricingRule::PayAsBid => o.limit_price,
        })
        .collect();
    let trades = decompose(topology, orders, &solution, rule);
    ClearingOutcome {
        solution,
        rule,
        order_prices,
        welfare_micro,
        trades,
    }
}

/// Welfare of a solution: Σ buy limit·q − Σ sell limit·q − retail·import + feed-in·export
/// − Σ fee·|flow|, exactly, in micro-minor units.
///
/// Every product of two `i64` fits in `i128`; the sum saturates instead of wrapping. With
/// validated books (|price| ≤ 10^7, quantities ≤ 10^12 Wh, at most 10^6 orders) it stays
/// below 10^26, far inside `i128`, so saturation never happens there.
pub fn welfare_micro(topology: &Topology, orders: &[BookOrder], solution: &Solution) -> i128 {
    let product = |a: i64, b: i64| i128::from(a) * i128::from(b);
    let mut w: i128 = 0;
    for (o, &q) in orders.iter().zip(&solution.cleared) {
        let v = product(o.limit_price, q);
        w = match o.side {
            Side::Buy => w.saturating_add(v),
            Side::Sell => w.saturating_sub(v),
        };
    }
    let u = topology.utility;
    w = w.saturating_sub(product(u.retail.unwrap_or(0), solution.utility_import));
    w = w.saturating_add(product(u.feed_in.unwrap_or(0), solution.utility_export));
    for (node, &flow) in topology.nodes().iter().zip(&solution.flows) {
        let cost = i128::from(node.fee) * i128::from(flow.unsigned_abs());
        w = w.saturating_sub(cost);
    }
    w
}

/// Why a solution is infeasible (used by tests and as a self-check).
pub fn check_feasible(
    topology: &Topology,
    orders: &[BookOrder],
    solution: &Solution,
) -> Result<(), String> {
    let nodes = topology.nodes();
    let mut net = vec![0i64; nodes.len()]; // supply minus demand at each node
    for (i, (o, &q)) in orders.iter().zip(&solution.cleared).enumerate() {
        if q < 0 || q > o.quantity {
            return Err(format!("order {i} cleared {q} of {}", o.quantity));
        }
        net[o.node] += if o.side == Side::Sell { q } else { -q };
    }
    let u = topology.utility;
    let (imp, exp) = (solution.utility_import, solution.utility_export);
    if imp < 0 || exp < 0 {
        return Err("negative utility volume".into());
    }
    if (u.retail.is_none() && imp > 0) || u.import_limit.is_some_and(|l| imp > l) {
        return Err(format!("utility import {imp} not allowed"));
    }
    if (u.feed_in.is_none() && exp > 0) || u.export_limit.is_some_and(|l| exp > l) {
        return Err(format!("utility export {exp} not allowed"));
    }
    net[0] += imp - exp;
    for (v, node) in nodes.iter().enumerate() {
        let f = solution.flows[v];
        if v > 0 {
            if node.import_limit.is_some_and(|l| f > l) || node.export_limit.is_some_and(|l| -f > l)
            {
                return Err(format!("branch {} flow {f} exceeds a limit", node.id));
            }
            net[v] += f;
        }
        let out: i64 = node.children.iter().map(|&c| solution.flows[c]).sum();
        if net[v] != out {
            return Err(format!("node {} unbalanced: {} vs {out}", node.id, net[v]));
        }
    }
    Ok(())
}

/// The offline clearing report printed by `market-engine clear`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfflineReport {
    /// Welfare in minor units.
    pub welfare: i64,
    /// Price per node.
    pub prices: BTreeMap<String, i64>,
    /// Cleared Wh per order, in book order.
    pub orders: Vec<OfflineOrder>,
    /// The utility's volumes.
    pub utility: OfflineUtility,
    /// Flow per branch (positive = into the subtree).
    pub flows: Vec<OfflineFlow>,
    /// Bilateral trades.
    pub trades: Vec<OfflineTrade>,
}

/// An order's cleared quantity in the offline report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfflineOrder {
    /// Order id.
    pub id: String,
    /// Cleared Wh.
    pub cleared_wh: i64,
}

/// The utility's volumes in the offline report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfflineUtility {
    /// Sold into the root.
    pub import_wh: i64,
    /// Bought from the root.
    pub export_wh: i64,
}

/// A branch flow in the offline report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfflineFlow {
    /// The branch's child node.
    pub node: String,
    /// Wh into the subtree.
    pub flow_wh: i64,
}

/// A trade in the offline report (`"utility"` names the utility).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfflineTrade {
    /// Buying order id.
    pub buy: String,
    /// Selling order id.
    pub sell: String,
    /// Energy.
    pub wh: i64,
    /// Price the buyer pays.
    pub price: i64,
}

fn party_name(orders: &[BookOrder], p: Party) -> String {
    match p {
        Party::Order(i) => orders[i].id.clone(),
        Party::Utility => "utility".to_owned(),
    }
}

/// Builds the offline report.
pub fn offline_report(
    topology: &Topology,
    orders: &[BookOrder],
    outcome: &ClearingOutcome,
) -> OfflineReport {
    let s = &outcome.solution;
    let nodes = topology.nodes();
    OfflineReport {
        welfare: outcome.welfare().0,
        prices: nodes
            .iter()
            .zip(&s.prices)
            .map(|(n, &p)| (n.id.to_string(), p))
            .collect(),
        orders: orders
            .iter()
            .zip(&s.cleared)
            .map(|(o, &q)| OfflineOrder {
                id: o.id.clone(),
                cleared_wh: q,
            })
            .collect(),
        utility: OfflineUtility {
            import_wh: s.utility_import,
            export_wh: s.utility_export,
        },
        flows: nodes
            .iter()
            .zip(&s.flows)
            .skip(1)
            .map(|(n, &f)| OfflineFlow {
                node: n.id.to_string(),
                flow_wh: f,
            })
            .collect(),
        trades: outcome
            .trades
            .iter()
            .map(|t| OfflineTrade {
                buy: party_name(orders, t.buyer),
                sell: party_name(orders, t.seller),
                wh: t.wh,
                price: t.price,
            })
            .collect(),
    }
}

/// Builds the published [`IntervalResult`]; `owners` owns `orders`.
pub fn interval_result(
    topology: &Topology,
    orders: &[BookOrder],
    owners: &Owners,
    outcome: &ClearingOutcome,
    interval: Interval,
    zone: &str,
    cleared_at: DateTime<Utc>,
) -> IntervalResult {
    let s = &outcome.solution;
    let nodes = topology.nodes();
    let node_id = |i: usize| -> NodeId { nodes[i].id.clone() };
    let party = |p: Party| match p {
        Party::Order(i) => Counterparty::Order {
            order_id: orders[i].id.clone(),
            participant: owners.of(i).clone(),
            node: node_id(orders[i].node),
        },
        Party::Utility => Counterparty::Utility,
    };
    IntervalResult {
        envelopes: Vec::new(),
        interval,
        zone: zone.to_owned(),
        cleared_at,
        prices: nodes
            .iter()
            .zip(&s.prices)
            .map(|(n, &p)| (n.id.clone(), PricePerMwh(p)))
            .collect(),
        orders: orders
            .iter()
            .enumerate()
            .map(|(i, o)| ClearedOrder {
                order_id: o.id.clone(),
                participant: owners.of(i).clone(),
                node: node_id(o.node),
                side: o.side,
                quantity: Wh(o.quantity),
                limit_price: PricePerMwh(o.limit_price),
                cleared: Wh(s.cleared[i]),
                price: PricePerMwh(outcome.order_prices[i]),
            })
            .collect(),
        trades: outcome
            .trades
            .iter()
            .map(|t| Trade {
                buyer: party(t.buyer),
                seller: party(t.seller),
                energy: Wh(t.wh),
                price: PricePerMwh(t.price),
            })
            .collect(),
        utility_import: Wh(s.utility_import),
        utility_export: Wh(s.utility_export),
        flows: nodes
            .iter()
            .enumerate()
            .skip(1)
            .map(|(v, n)| {
                let f = s.flows[v];
                BranchFlow {
                    node: n.id.clone(),
                    flow: Wh(f),
                    import_limit: n.import_limit.map(Wh),
                    export_limit: n.export_limit.map(Wh),
                    congested: n.import_limit.is_some_and(|l| f >= l)
                        || n.export_limit.is_some_and(|l| -f >= l),
                }
            })
            .collect(),
        welfare: outcome.welfare(),
        network: topology.network().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::BookFile;

    /// Clears a book given as JSON and returns the offline report.
    fn check(book: &str) -> OfflineReport {
        let (t, o) = BookFile::parse(book).unwrap().validate().unwrap();
        let out = clear(&t, &o, PricingRule::PayAsClear);
        check_feasible(&t, &o, &out.solution).unwrap();
        offline_report(&t, &o, &out)
    }

    fn book(branches: &str, utility: &str, orders: &str) -> String {
        format!(
            r#"{{"network":{{"root":"sub","branches":[{branches}],"utility":{utility}}},"orders":[{orders}]}}"#
        )
    }

    const F1: &str = r#"{"node":"f1","parent":"sub","import_limit_wh":50000,"export_limit_wh":30000,"fee_per_mwh":0}"#;
    const TARIFF: &str = r#"{"retail_price":30000,"feed_in_price":8000}"#;

    #[test]
    fn issue_example_buyer_below_retail_does_not_trade() {
        let r = check(&book(
            F1,
            TARIFF,
            r#"{"id":"b1","side":"buy","node":"f1","quantity_wh":1200,"limit_price":25000}"#,
        ));
        assert_eq!(r.orders[0].cleared_wh, 0);
        assert_eq!(r.welfare, 0);
        // Nothing traded: the price is the midpoint of the buyer's bid and the retail price.
        assert_eq!(r.prices["sub"], 27_500);
        assert_eq!(r.prices["f1"], 27_500);
        assert!(r.trades.is_empty());
    }

    #[test]
    fn local_match_with_uniform_price() {
        let r = check(&book(
            F1,
            TARIFF,
            r#"{"id":"b1","side":"buy","node":"f1","quantity_wh":1200,"limit_price":25000},
               {"id":"s1","side":"sell","node":"f1","quantity_wh":1000,"limit_price":10000}"#,
        ));
        // s1 fills completely; b1 takes 1000 from s1; the rest would cost retail 30000 > 25000.
        assert_eq!(r.orders[0].cleared_wh, 1000);
        assert_eq!(r.orders[1].cleared_wh, 1000);
        assert_eq!(r.prices["f1"], 25_000);
        assert_eq!(r.prices["sub"], 25_000);
        assert_eq!(r.welfare, 15); // (25000-10000)*1000/1e6
        assert_eq!(
            r.trades,
            vec![OfflineTrade {
                buy: "b1".into(),
                sell: "s1".into(),
                wh: 1000,
                price: 25_000
            }]
        );
    }

    #[test]
    fn congestion_splits_prices() {
        // f1 exports at most 300 Wh; its cheap seller would sell 1000 to the root's buyer.
        let f1 = r#"{"node":"f1","parent":"sub","import_limit_wh":null,"export_limit_wh":300,"fee_per_mwh":null}"#;
        let r = check(&book(
            f1,
            r#"{"retail_price":null,"feed_in_price":null}"#,
            r#"{"id":"b1","side":"buy","node":"sub","quantity_wh":1000,"limit_price":20000},
               {"id":"s1","side":"sell","node":"f1","quantity_wh":1000,"limit_price":5000}"#,
        ));
        assert_eq!(r.orders[0].cleared_wh, 300);
        assert_eq!(r.orders[1].cleared_wh, 300);
        assert_eq!(r.flows[0].flow_wh, -300);
        assert_eq!(r.prices["sub"], 20_000); // partly filled buyer sets it
        assert_eq!(r.prices["f1"], 5_000); // partly filled seller sets it
    }

    #[test]
    fn fee_separates_prices_by_exactly_the_fee() {
        let f1 = r#"{"node":"f1","parent":"sub","import_limit_wh":null,"export_limit_wh":null,"fee_per_mwh":1000}"#;
        let r = check(&book(
            f1,
            TARIFF,
            r#"{"id":"b1","side":"buy","node":"f1","quantity_wh":2000,"limit_price":40000}"#,
        ));
        // Imports 2000 Wh from the utility at 30000 plus the 1000 fee.
        assert_eq!(r.orders[0].cleared_wh, 2000);
        assert_eq!(r.utility.import_wh, 2000);
        assert_eq!(r.prices["sub"], 30_000);
        assert_eq!(r.prices["f1"], 31_000);
        assert_eq!(r.welfare, 18); // (40000-30000-1000)*2000/1e6
        assert_eq!(r.trades[0].sell, "utility");
    }

    #[test]
    fn pay_as_bid_keeps_quantities_and_settles_at_limits() {
        let text = book(
            F1,
            TARIFF,
            r#"{"id":"b1","side":"buy","node":"f1","quantity_wh":1200,"limit_price":25000},
               {"id":"s1","side":"sell","node":"f1","quantity_wh":1000,"limit_price":10000}"#,
        );
        let (t, o) = BookFile::parse(&text).unwrap().validate().unwrap();
        let clear_price = clear(&t, &o, PricingRule::PayAsClear);
        let bid = clear(&t, &o, PricingRule::PayAsBid);
        assert_eq!(bid.solution, clear_price.solution);
        assert_eq!(clear_price.order_prices, vec![25_000, 25_000]);
        assert_eq!(bid.order_prices, vec![25_000, 10_000]);
        assert_eq!(bid.trades[0].price, 25_000);
    }

    #[test]
    fn ties_share_pro_rata() {
        let r = check(&book(
            F1,
            r#"{"retail_price":null,"feed_in_price":null}"#,
            r#"{"id":"b1","side":"buy","node":"f1","quantity_wh":300,"limit_price":20000},
               {"id":"s1","side":"sell","node":"f1","quantity_wh":200,"limit_price":10000},
               {"id":"s2","side":"sell","node":"f1","quantity_wh":400,"limit_price":10000}"#,
        ));
        assert_eq!(r.orders[1].cleared_wh, 100);
        assert_eq!(r.orders[2].cleared_wh, 200);
        assert_eq!(r.prices["f1"], 10_000);
    }
}
