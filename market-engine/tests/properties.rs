//! Property tests: on random books the fast clearing is feasible, has the reference LP's
//! welfare, and its prices are valid duals (complementary slackness holds exactly).

use gridmesh_protocol::Side;
use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::{NodeId, PricePerMwh, Wh};
use market_engine::book::BookOrder;
use market_engine::clearing::{check_feasible, clear, welfare_micro};
use market_engine::network::Topology;
use market_engine::prices::PricingRule;
use market_engine::reference;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    network: Network,
    orders: Vec<(usize, bool, i64, i64)>,
}

fn price_strategy(extreme: bool) -> BoxedStrategy<i64> {
    if extreme {
        prop_oneof![
            Just(-10_000_000i64),
            Just(10_000_000i64),
            -10_000_000i64..=10_000_000
        ]
        .boxed()
    } else {
        // A coarse grid makes ties common.
        (0i64..8).prop_map(|k| 10_000 + 2_500 * k).boxed()
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1usize..7, any::<bool>(), any::<bool>(), 0usize..4).prop_flat_map(
        |(n_nodes, extreme, congested, utility_kind)| {
            let parents = (1..n_nodes).map(|i| 0..i).collect::<Vec<_>>();
            let limit = if congested {
                prop_oneof![Just(None), (0i64..400).prop_map(Some)].boxed()
            } else {
                Just(None).boxed()
            };
            let branches = proptest::collection::vec(
                (limit.clone(), limit, prop_oneof![Just(0i64), 0i64..3_000]),
                n_nodes - 1,
            );
            let orders = proptest::collection::vec(
                (
                    0..n_nodes,
                    any::<bool>(),
                    1i64..500,
                    price_strategy(extreme),
                ),
                0..25,
            );
            let one_sided = any::<u8>();
            (parents, branches, orders, Just(utility_kind), one_sided).prop_map(
                move |(parents, branches, mut orders, utility_kind, one_sided)| {
                    match one_sided % 4 {
                        0 => orders.iter_mut().for_each(|o| o.1 = true),
                        1 => orders.iter_mut().for_each(|o| o.1 = false),
                        _ => {}
                    }
                    let name = |i: usize| NodeId::new(format!("n{i}")).unwrap();
                    let branches = parents
                        .iter()
                        .zip(branches)
                        .enumerate()
                        .map(|(k, (&p, (imp, exp, fee)))| Branch {
                            node: name(k + 1),
                            parent: name(p),
                            import_limit_wh: imp.map(Wh),
                            export_limit_wh: exp.map(Wh),
                            fee_per_mwh: Some(PricePerMwh(fee)),
                        })
                        .collect();
                    let utility = match utility_kind {
                        0 => UtilityTariff::default(),
                        1 => UtilityTariff {
                            envelope_excess_price: Default::default(),
                            retail_price: Some(PricePerMwh(25_000)),
                            feed_in_price: Some(PricePerMwh(12_500)),
                            ..Default::default()
                        },
                        2 => UtilityTariff {
                            envelope_excess_price: Default::default(),
                            retail_price: Some(PricePerMwh(25_000)),
                            feed_in_price: None,
                            import_limit_wh: Some(Wh(300)),
                            export_limit_wh: None,
                        },
                        _ => UtilityTariff {
                            envelope_excess_price: Default::default(),
                            retail_price: None,
                            feed_in_price: Some(PricePerMwh(15_000)),
                            import_limit_wh: None,
                            export_limit_wh: Some(Wh(200)),
                        },
                    };
                    Case {
                        network: Network {
                            root: name(0),
                            branches,
                            utility,
                        },
                        orders,
                    }
                },
            )
        },
    )
}

fn book(case: &Case) -> (Topology, Vec<BookOrder>) {
    let topology = Topology::new(&case.network).unwrap();
    let orders = case
        .orders
        .iter()
        .enumerate()
        .map(|(i, &(node, buy, q, p))| BookOrder {
            id: format!("o{i}"),
            node: topology
                .index_of(&NodeId::new(format!("n{node}")).unwrap())
                .unwrap(),
            side: if buy { Side::Buy } else { Side::Sell },
            quantity: q,
            limit_price: p,
        })
        .collect();
    (topology, orders)
}

/// Complementary slackness, exactly, in integers.
fn check_duals(topology: &Topology, orders: &[BookOrder], s: &market_engine::fast::Solution) {
    for (i, o) in orders.iter().enumerate() {
        let lambda = s.prices[o.node];
        let q = s.cleared[i];
        let (full, none) = (q == o.quantity, q == 0);
        let surplus = match o.side {
            Side::Buy => o.limit_price - lambda,
            Side::Sell => lambda - o.limit_price,
        };
        if !full && !none {
            assert_eq!(
                surplus, 0,
                "order {i} cleared {q} of {} at a price not its own",
                o.quantity
            );
        }
        if surplus > 0 {
            assert!(full, "order {i} has surplus {surplus} but cleared {q}");
        }
        if surplus < 0 {
            assert!(none, "order {i} loses {surplus} but cleared {q}");
        }
    }
    for (c, n) in topology.nodes().iter().enumerate().skip(1) {
        let p = n.parent.unwrap();
        let d = s.prices[c] - s.prices[p];
        let f = s.flows[c];
        let at_import = n.import_limit == Some(f);
        let at_export = n.export_limit.is_some_and(|l| -f == l);
        if f > 0 && !at_import {
            assert_eq!(d, n.fee, "branch {c} imports below its limit");
        }
        if f < 0 && !at_export {
            assert_eq!(d, -n.fee, "branch {c} exports below its limit");
        }
        if f == 0 && !at_import && !at_export {
            assert!(d.abs() <= n.fee, "branch {c} idle but prices differ by {d}");
        }
        // The branch's duals: d - fee is the import limit's (>= 0, positive only when binding),
        // -d - fee the export limit's (likewise). Flow in one direction needs that direction's
        // dual to be non-negative.
        if f > 0 {
            assert!(
                d >= n.fee,
                "branch {c} imports {f} but the price rises only {d}"
            );
        }
        if f < 0 {
            assert!(
                d <= -n.fee,
                "branch {c} exports {} but the price falls only {}",
                -f,
                -d
            );
        }
        if d > n.fee {
            assert!(
                at_import,
                "branch {c}: price step {d} above fee {} with import {f} below its limit",
                n.fee
            );
        }
        if d < -n.fee {
            assert!(
                at_export,
                "branch {c}: price step {d} below -fee {} with export {} below its limit {:?}",
                -n.fee, -f, n.export_limit
            );
        }
    }
}

/// The utility's duals at the root: importing needs a root price of at least the retail price
/// (at most, unless the import limit binds); exporting, at most the feed-in price (at least,
/// unless the export limit binds).
fn check_utility_duals(topology: &Topology, s: &market_engine::fast::Solution) {
    let u = topology.utility;
    let root = s.prices[0];
    let (imp, exp) = (s.utility_import, s.utility_export);
    if let Some(retail) = u.retail {
        if imp > 0 {
            assert!(
                root >= retail,
                "imports {imp} at root price {root} < retail {retail}"
            );
        }
        if u.import_limit.is_none_or(|l| imp < l) {
            assert!(
                root <= retail,
                "root price {root} > retail {retail} with import {imp} below its limit"
            );
        }
    }
    if let Some(feed_in) = u.feed_in {
        if exp > 0 {
            assert!(
                root <= feed_in,
                "exports {exp} at root price {root} > feed-in {feed_in}"
            );
        }
        if u.export_limit.is_none_or(|l| exp < l) {
            assert!(
                root >= feed_in,
                "root price {root} < feed-in {feed_in} with export {exp} below its limit"
            );
        }
    }
}

/// Welfare computed from the case itself (not from `Topology` nor `welfare_micro`): the buyers'
/// limit value minus the sellers' limit cost, the utility's retail and feed-in, and each
/// branch's fee on the energy through it, with branch flows summed from the cleared orders.
fn independent_welfare(case: &Case, cleared: &[i64], import: i64, export: i64) -> i128 {
    let parent_of = |node: usize| -> Option<usize> {
        case.network
            .branches
            .iter()
            .find(|b| b.node.as_str() == format!("n{node}"))
            .map(|b| b.parent.as_str()[1..].parse().unwrap())
    };
    let n_nodes = case.network.branches.len() + 1;
    let mut welfare: i128 = 0;
    let mut into = vec![0i128; n_nodes]; // demand minus supply in each node's subtree
    for (&(node, buy, _, price), &q) in case.orders.iter().zip(cleared) {
        let (value, signed) = if buy {
            (i128::from(price) * i128::from(q), i128::from(q))
        } else {
            (-i128::from(price) * i128::from(q), -i128::from(q))
        };
        welfare += value;
        let mut v = Some(node);
        while let Some(n) = v {
            into[n] += signed;
            v = parent_of(n);
        }
    }
    // The root's net demand is the utility's net sale.
    assert_eq!(
        into[0],
        i128::from(import) - i128::from(export),
        "the root does not balance"
    );
    let u = &case.network.utility;
    welfare -= i128::from(u.retail_price.map_or(0, |p| p.0)) * i128::from(import);
    welfare += i128::from(u.feed_in_price.map_or(0, |p| p.0)) * i128::from(export);
    for b in &case.network.branches {
        let node: usize = b.node.as_str()[1..].parse().unwrap();
        let fee = i128::from(b.fee_per_mwh.map_or(0, |p| p.0));
        welfare -= fee * into[node].abs();
    }
    welfare
}

/// Trades follow the tree: summing every trade's energy along its path gives exactly the branch
/// flows, and each order trades exactly what it cleared.
fn check_trades(
    topology: &Topology,
    orders: &[BookOrder],
    outcome: &market_engine::clearing::ClearingOutcome,
) {
    use market_engine::decompose::Party;
    let nodes = topology.nodes();
    let s = &outcome.solution;
    let mut flows = vec![0i64; nodes.len()];
    let mut traded = vec![0i64; orders.len()];
    let (mut bought, mut sold) = (0i64, 0i64);
    let node_of = |p: Party| match p {
        Party::Order(i) => orders[i].node,
        Party::Utility => 0,
    };
    let depth = |mut v: usize| {
        let mut d = 0;
        while let Some(p) = nodes[v].parent {
            v = p;
            d += 1;
        }
        d
    };
    for t in &outcome.trades {
        assert!(t.wh > 0);
        match t.buyer {
            Party::Order(i) => {
                assert_eq!(orders[i].side, Side::Buy);
                traded[i] += t.wh;
            }
            Party::Utility => bought += t.wh,
        }
        match t.seller {
            Party::Order(i) => {
                assert_eq!(orders[i].side, Side::Sell);
                traded[i] += t.wh;
            }
            Party::Utility => sold += t.wh,
        }
        // Walk both ends up to their common ancestor.
        let (mut a, mut b) = (node_of(t.seller), node_of(t.buyer));
        let (mut da, mut db) = (depth(a), depth(b));
        while a != b {
            if da >= db {
                flows[a] -= t.wh; // out of the seller's subtree
                a = nodes[a].parent.unwrap();
                da -= 1;
            } else {
                flows[b] += t.wh; // into the buyer's subtree
                b = nodes[b].parent.unwrap();
                db -= 1;
            }
        }
    }
    assert_eq!(flows, s.flows, "trades do not add up to the branch flows");
    assert_eq!(
        traded, s.cleared,
        "trades do not add up to the cleared quantities"
    );
    assert_eq!((bought, sold), (s.utility_export, s.utility_import));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn fast_matches_reference(case in case_strategy()) {
        let (topology, orders) = book(&case);
        let outcome = clear(&topology, &orders, PricingRule::PayAsClear);
        check_feasible(&topology, &orders, &outcome.solution).map_err(TestCaseError::fail)?;
        check_duals(&topology, &orders, &outcome.solution);
        check_utility_duals(&topology, &outcome.solution);
        check_trades(&topology, &orders, &outcome);
        prop_assert_eq!(outcome.welfare_micro, welfare_micro(&topology, &orders, &outcome.solution));
        let s = &outcome.solution;
        prop_assert_eq!(
            outcome.welfare_micro,
            independent_welfare(&case, &s.cleared, s.utility_import, s.utility_export)
        );
        let fast = outcome.welfare_micro as f64;
        let reference = reference::solve(&topology, &orders).unwrap();
        // Relative to the gross value in play, so an all-zero welfare is compared sensibly.
        let scale: f64 = orders.iter().map(|o| (o.limit_price.abs() * o.quantity) as f64).sum::<f64>().max(1e6);
        let diff = (fast - reference.welfare_micro).abs();
        prop_assert!(diff <= 1e-9 * scale.max(fast.abs()),
            "fast {} reference {} diff {} scale {}", fast, reference.welfare_micro, diff, scale);
        // Determinism: clearing twice gives the same outcome.
        prop_assert_eq!(clear(&topology, &orders, PricingRule::PayAsClear), outcome);
    }
}

/// Bigger books than above: 50 nodes in deep trees (each node's parent among the three before
/// it), hundreds of orders. Feasibility, complementary slackness (which with feasibility proves
/// the clearing optimal), the trades, the independently computed welfare and the reference
/// LP's welfare.
fn big_case_strategy() -> impl Strategy<Value = Case> {
    const NODES: usize = 50;
    let parents = (1..NODES)
        .map(|i| i.saturating_sub(3)..i)
        .collect::<Vec<_>>();
    let limit = prop_oneof![Just(None), (0i64..3_000).prop_map(Some)];
    let branches = proptest::collection::vec(
        (limit.clone(), limit, prop_oneof![Just(0i64), 0i64..3_000]),
        NODES - 1,
    );
    let orders = proptest::collection::vec(
        (0..NODES, any::<bool>(), 1i64..500, price_strategy(false)),
        100..400,
    );
    (parents, branches, orders, any::<bool>()).prop_map(|(parents, branches, orders, utility)| {
        let name = |i: usize| NodeId::new(format!("n{i}")).unwrap();
        let branches = parents
            .iter()
            .zip(branches)
            .enumerate()
            .map(|(k, (&p, (imp, exp, fee)))| Branch {
                node: name(k + 1),
                parent: name(p),
                import_limit_wh: imp.map(Wh),
                export_limit_wh: exp.map(Wh),
                fee_per_mwh: Some(PricePerMwh(fee)),
            })
            .collect();
        let utility = if utility {
            UtilityTariff {
                envelope_excess_price: Default::default(),
                retail_price: Some(PricePerMwh(25_000)),
                feed_in_price: Some(PricePerMwh(12_500)),
                import_limit_wh: Some(Wh(5_000)),
                export_limit_wh: Some(Wh(5_000)),
            }
        } else {
            UtilityTariff::default()
        };
        Case {
            network: Network {
                root: name(0),
                branches,
                utility,
            },
            orders,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn big_books_clear_optimally(case in big_case_strategy()) {
        let (topology, orders) = book(&case);
        let outcome = clear(&topology, &orders, PricingRule::PayAsClear);
        check_feasible(&topology, &orders, &outcome.solution).map_err(TestCaseError::fail)?;
        check_duals(&topology, &orders, &outcome.solution);
        check_utility_duals(&topology, &outcome.solution);
        check_trades(&topology, &orders, &outcome);
        let s = &outcome.solution;
        prop_assert_eq!(
            outcome.welfare_micro,
            independent_welfare(&case, &s.cleared, s.utility_import, s.utility_export)
        );
        let reference = reference::solve(&topology, &orders).unwrap();
        let fast = outcome.welfare_micro as f64;
        let diff = (fast - reference.welfare_micro).abs();
        prop_assert!(diff <= 1e-9 * fast.abs().max(1e9), "fast {} reference {}", fast, reference.welfare_micro);
    }
}
