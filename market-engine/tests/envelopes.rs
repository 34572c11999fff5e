//! Property tests of the envelope allocation on random radial trees: households clear a random
//! book, then every enrolled home gets an envelope that keeps every branch and the utility
//! connection within budget, never below its cleared position and never above its rating
//! (unless its cleared position is), and leaves no branch with unused headroom while a home
//! below it could still take more.

use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::PublicKey;
use gridmesh_protocol::{GatewayId, IntervalLength, NodeId, ParticipantId, PricePerMwh, Side, Wh};
use market_engine::book::{BookOrder, Owners};
use market_engine::clearing::clear;
use market_engine::envelopes::{
    Allocation, ConnectionPoint, Position, allocate, envelopes_for, rating_wh,
};
use market_engine::network::Topology;
use market_engine::prices::PricingRule;
use proptest::prelude::*;

const LENGTH: IntervalLength = IntervalLength::Min15;
const IMPORT_W: u32 = 11_000;

#[derive(Debug, Clone)]
struct Case {
    topology: Topology,
    /// (node, inverter W, battery W) per home.
    homes: Vec<(usize, u32, u32)>,
    /// (home, sell?, quantity, price).
    orders: Vec<(usize, bool, i64, i64)>,
}

fn name(i: usize) -> NodeId {
    NodeId::new(format!("n{i}")).unwrap()
}

fn case_strategy(limited: bool) -> impl Strategy<Value = Case> {
    (1usize..12, 1usize..16).prop_flat_map(move |(n_nodes, n_homes)| {
        let limit = if limited {
            prop_oneof![Just(None), (0i64..6_000).prop_map(Some)].boxed()
        } else {
            Just(None).boxed()
        };
        let parents = (1..n_nodes).map(|i| 0..i).collect::<Vec<_>>();
        let branches = proptest::collection::vec((limit.clone(), limit.clone()), n_nodes - 1);
        let root = (limit.clone(), limit);
        let homes = proptest::collection::vec(
            (
                0..n_nodes,
                prop_oneof![Just(0u32), 0u32..12_000],
                prop_oneof![Just(0u32), 0u32..6_000],
            ),
            n_homes,
        );
        let orders = proptest::collection::vec(
            (
                0..n_homes,
                any::<bool>(),
                1i64..4_000,
                (0i64..8).prop_map(|k| 5_000 + 5_000 * k),
            ),
            0..30,
        );
        (parents, branches, root, homes, orders).prop_map(
            |(parents, branches, (root_exp, root_imp), homes, orders)| {
                let network = Network {
                    root: name(0),
                    branches: parents
                        .iter()
                        .zip(branches)
                        .enumerate()
                        .map(|(k, (&p, (exp, imp)))| Branch {
                            node: name(k + 1),
                            parent: name(p),
                            export_limit_wh: exp.map(Wh),
                            import_limit_wh: imp.map(Wh),
                            fee_per_mwh: None,
                        })
                        .collect(),
                    utility: UtilityTariff {
                        retail_price: Some(PricePerMwh(30_000)),
                        feed_in_price: Some(PricePerMwh(8_000)),
                        export_limit_wh: root_exp.map(Wh),
                        import_limit_wh: root_imp.map(Wh),
                        ..Default::default()
                    },
                };
                Case {
                    topology: Topology::new(&network).unwrap(),
                    homes,
                    orders,
                }
            },
        )
    })
}

fn participant(h: usize) -> ParticipantId {
    ParticipantId::new(format!("h{h:02}")).unwrap()
}

fn gateways(case: &Case) -> Vec<GatewayEnrollment> {
    case.homes
        .iter()
        .enumerate()
        .map(|(h, &(node, inverter_w, battery_w))| GatewayEnrollment {
            gateway: GatewayId::new(format!("gw-h{h:02}")).unwrap(),
            participant: participant(h),
            node: case.topology.nodes()[node].id.clone(),
            public_key: PublicKey([0; 32]),
            inverter_w,
            battery_w,
            latitude_microdeg: 0,
            longitude_microdeg: 0,
        })
        .collect()
}

/// Clears the households' book and computes the envelopes (in gateway-id order, which is home
/// order here).
fn run(case: &Case) -> (Vec<BookOrder>, Vec<i64>, Vec<Allocation>) {
    let orders: Vec<BookOrder> = case
        .orders
        .iter()
        .enumerate()
        .map(|(i, &(h, sell, q, p))| BookOrder {
            id: format!("o{i}"),
            node: case.homes[h].0,
            side: if sell { Side::Sell } else { Side::Buy },
            quantity: q,
            limit_price: p,
        })
        .collect();
    let owners: Owners = case.orders.iter().map(|o| participant(o.0)).collect();
    let outcome = clear(&case.topology, &orders, PricingRule::PayAsClear);
    let envelopes = envelopes_for(
        &case.topology,
        LENGTH,
        IMPORT_W,
        &orders,
        &outcome.solution.cleared,
        &owners,
        gateways(case),
    );
    let allocations = envelopes
        .iter()
        .map(|e| Allocation {
            export_limit: e.export_limit_wh.0,
            import_limit: e.import_limit_wh.0,
            cleared_export: e.cleared_export_wh.0,
            cleared_import: e.cleared_import_wh.0,
        })
        .collect();
    (orders, outcome.solution.cleared, allocations)
}

/// Whether node `v` lies in the subtree of `b`.
fn below(t: &Topology, mut v: usize, b: usize) -> bool {
    loop {
        if v == b {
            return true;
        }
        match t.nodes()[v].parent {
            Some(p) => v = p,
            None => return false,
        }
    }
}

fn export_rating(home: &(usize, u32, u32)) -> i64 {
    rating_wh(i64::from(home.1) + i64::from(home.2), LENGTH)
}

fn import_rating() -> i64 {
    rating_wh(i64::from(IMPORT_W), LENGTH)
}

/// Budget of node `b` in one direction: its limit (the utility's at the root) plus the cleared
/// positions of the other direction below it; `None` = unlimited.
fn budget(
    t: &Topology,
    b: usize,
    a: &[Allocation],
    homes: &[(usize, u32, u32)],
    export: bool,
) -> Option<i64> {
    let limit = match (b, export) {
        (0, true) => t.utility.export_limit,
        (0, false) => t.utility.import_limit,
        (_, true) => t.nodes()[b].export_limit,
        (_, false) => t.nodes()[b].import_limit,
    }?;
    let other: i64 = homes
        .iter()
        .zip(a)
        .filter(|(h, _)| below(t, h.0, b))
        .map(|(_, x)| {
            if export {
                x.cleared_import
            } else {
                x.cleared_export
            }
        })
        .sum();
    Some(limit + other)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn envelopes_respect_every_budget_and_position(case in case_strategy(true)) {
        let (_, _, a) = run(&case);
        let t = &case.topology;
        prop_assert_eq!(a.len(), case.homes.len(), "every home gets an envelope, with orders or not");
        for (h, x) in case.homes.iter().zip(&a) {
            prop_assert!(x.export_limit >= x.cleared_export && x.import_limit >= x.cleared_import);
            prop_assert!(x.cleared_export == 0 || x.cleared_import == 0, "positions are net");
            prop_assert!(x.export_limit <= export_rating(h).max(x.cleared_export));
            prop_assert!(x.import_limit <= import_rating().max(x.cleared_import));
        }
        for b in 0..t.nodes().len() {
            let homes_below: Vec<usize> = (0..case.homes.len()).filter(|&h| below(t, case.homes[h].0, b)).collect();
            for export in [true, false] {
                let Some(budget) = budget(t, b, &a, &case.homes, export) else { continue };
                let sum: i64 = homes_below.iter().map(|&h| if export { a[h].export_limit } else { a[h].import_limit }).sum();
                prop_assert!(sum <= budget, "node {b} export={export}: Σ envelopes {sum} > budget {budget}");
            }
        }
        // Nothing left on the table: a home below its rating sits under a branch whose budget
        // is used up to the rounding (less than 2 Wh per home below it, one per phase).
        for (k, (h, x)) in case.homes.iter().zip(&a).enumerate() {
            for export in [true, false] {
                let (got, rating) = if export {
                    (x.export_limit, export_rating(h))
                } else {
                    (x.import_limit, import_rating())
                };
                if got >= rating {
                    continue;
                }
                let saturated = (0..t.nodes().len()).filter(|&b| below(t, h.0, b)).any(|b| {
                    let Some(budget) = budget(t, b, &a, &case.homes, export) else { return false };
                    let below_b: Vec<usize> = (0..case.homes.len()).filter(|&j| below(t, case.homes[j].0, b)).collect();
                    let sum: i64 = below_b.iter().map(|&j| if export { a[j].export_limit } else { a[j].import_limit }).sum();
                    budget - sum < 2 * below_b.len() as i64
                });
                prop_assert!(saturated, "home {k} (export={export}) got {got} < rating {rating} with headroom left");
            }
        }
    }

    #[test]
    fn unconstrained_envelopes_are_the_ratings(case in case_strategy(false)) {
        let (_, _, a) = run(&case);
        for (h, x) in case.homes.iter().zip(&a) {
            prop_assert_eq!(x.export_limit, export_rating(h).max(x.cleared_export));
            prop_assert_eq!(x.import_limit, import_rating().max(x.cleared_import));
        }
    }

    #[test]
    fn allocation_is_deterministic_and_independent_of_enrolment_order(case in case_strategy(true)) {
        let (orders, cleared, a) = run(&case);
        let owners: Owners = case.orders.iter().map(|o| participant(o.0)).collect();
        let mut shuffled = gateways(&case);
        shuffled.reverse();
        let again = envelopes_for(&case.topology, LENGTH, IMPORT_W, &orders, &cleared, &owners, shuffled);
        let again: Vec<i64> = again.iter().flat_map(|e| [e.export_limit_wh.0, e.import_limit_wh.0]).collect();
        let first: Vec<i64> = a.iter().flat_map(|x| [x.export_limit, x.import_limit]).collect();
        prop_assert_eq!(first, again);
    }

    /// With arbitrary positions (not from a feasible clearing) the envelopes still never exceed
    /// a budget, except by cleared positions that alone exceed it (then they get exactly those).
    #[test]
    fn arbitrary_positions_never_overbook_headroom(
        case in case_strategy(true),
        raw in proptest::collection::vec((0i64..3_000, 0i64..3_000, 0i64..3_000, 0i64..3_000), 16),
    ) {
        let t = &case.topology;
        let points: Vec<ConnectionPoint> = case.homes.iter().map(|h| ConnectionPoint {
            node: h.0,
            export_rating: export_rating(h),
            import_rating: import_rating(),
        }).collect();
        let positions: Vec<Position> = raw.iter().take(points.len()).map(|&(s, b, ne, ni)| Position {
            cleared_export: (s - b).max(0),
            cleared_import: (b - s).max(0),
            need_export: ne,
            need_import: ni,
        }).collect();
        let a = allocate(t, &points, &positions);
        for b in 0..t.nodes().len() {
            for export in [true, false] {
                let Some(budget) = budget(t, b, &a, &case.homes, export) else { continue };
                let (sum, reserved) = case.homes.iter().zip(&a).filter(|(h, _)| below(t, h.0, b))
                    .fold((0, 0), |(s, r), (_, x)| if export {
                        (s + x.export_limit, r + x.cleared_export)
                    } else {
                        (s + x.import_limit, r + x.cleared_import)
                    });
                prop_assert!(sum <= budget.max(reserved), "node {b}: {sum} > max({budget}, {reserved})");
            }
        }
    }
}
