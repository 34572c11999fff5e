//! Operating envelopes: how much each enrolled connection point may export and import in one
//! interval so that, if every home stays inside its envelope, no branch limit and no utility
//! limit is exceeded.
//!
//! # The rule
//!
//! For each direction (export and import, independently):
//!
//! 1. **Rating.** A connection point's export rating is its inverter plus battery power, its
//!    import rating the configured connection size (`connection_import_w`), both as Wh per
//!    interval (rounded down).
//! 2. **Cleared positions first.** A household's net cleared sale (Σ cleared sells − Σ cleared
//!    buys, if positive) is reserved in its export envelope; its net cleared purchase in its
//!    import envelope.
//! 3. **Branch budget.** `budget_b = export_limit_b + Σ net cleared purchases of the households
//!    below b` (the market's flow already nets local purchases against local sales; we assume
//!    cleared buyers import what they bought). Import is symmetric. The utility's
//!    `export_limit_wh`/`import_limit_wh` are the root's limits. `None` = unlimited.
//! 4. **Headroom, shared max-min fairly.** `headroom_b = budget_b − Σ reservations below b`
//!    (at least 0) is water-filled among the connection points below `b`: first up to each
//!    home's *declared need* (its uncleared sell quantity for export, its uncleared buy
//!    quantity for import), then the rest up to each home's rating. A subtree that runs out of
//!    headroom freezes at its own water level while the others keep filling. Levels are integer
//!    Wh, rounded down, so `Σ envelopes below b ≤ budget_b` holds exactly (a few Wh per branch
//!    may stay unallocated).
//!
//! A home's envelope is never below its cleared position and never above its rating, unless its
//! cleared position is above it. An unconstrained branch gives every home below it its rating.
//! A household with several gateways has its orders attributed to its first gateway (by id);
//! orders are matched to a household's gateway at the order's node (households trade only at
//! their own node).
//!
//! # Cost
//!
//! One pass over the orders, then for each direction and phase one bottom-up pass that moves
//! each home's cap up the tree and sorts the list of every *limited* node once (to find its
//! water level), and one top-down pass: O(n log n) per tree level with a limit.

use crate::book::{BookOrder, Owners};
use crate::network::Topology;
use gridmesh_protocol::envelope::EnvelopeAllocation;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::{IntervalLength, Side, Wh};

/// "No water level": the subtree never runs out of headroom.
const UNBOUNDED: i64 = i64::MAX;

/// One connection point (a gateway's home) as the allocation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionPoint {
    /// Its node's index in the topology.
    pub node: usize,
    /// Most it can export in the interval, Wh (inverter + battery).
    pub export_rating: i64,
    /// Most it can import in the interval, Wh (the connection's size).
    pub import_rating: i64,
}

/// A connection point's cleared net position and declared (uncleared) need in the interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Net cleared sale (0 if it net bought), Wh.
    pub cleared_export: i64,
    /// Net cleared purchase (0 if it net sold), Wh.
    pub cleared_import: i64,
    /// Σ uncleared quantity of its sells, Wh.
    pub need_export: i64,
    /// Σ uncleared quantity of its buys, Wh.
    pub need_import: i64,
}

/// One connection point's envelope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Most it may export, Wh.
    pub export_limit: i64,
    /// Most it may import, Wh.
    pub import_limit: i64,
    /// The part of `export_limit` reserved for its cleared sale.
    pub cleared_export: i64,
    /// The part of `import_limit` reserved for its cleared purchase.
    pub cleared_import: i64,
}

/// Energy of `watts` over one interval, Wh (rounded down; negative counts as 0).
pub fn rating_wh(watts: i64, length: IntervalLength) -> i64 {
    watts.max(0).saturating_mul(i64::from(length.minutes())) / 60
}

/// Cleared positions and needs per connection point. `owner(i)` is the connection point whose
/// household placed `orders[i]` (`None` for traders and households without a gateway);
/// `cleared[i]` is how much of it cleared.
pub fn positions(
    points: usize,
    orders: &[BookOrder],
    cleared: &[i64],
    owner: impl Fn(usize) -> Option<u32>,
) -> Vec<Position> {
    // Σ cleared sells, Σ cleared buys, Σ uncleared sells, Σ uncleared buys.
    let mut sums = vec![[0i64; 4]; points];
    for (i, (o, &q)) in orders.iter().zip(cleared).enumerate() {
        let Some(p) = owner(i) else { continue };
        let s = &mut sums[p as usize];
        let open = (o.quantity - q).max(0);
        match o.side {
            Side::Sell => {
                s[0] = s[0].saturating_add(q);
                s[2] = s[2].saturating_add(open);
            }
            Side::Buy => {
                s[1] = s[1].saturating_add(q);
                s[3] = s[3].saturating_add(open);
            }
        }
    }
    sums.into_iter()
        .map(|[sold, bought, open_sell, open_buy]| Position {
            cleared_export: (sold - bought).max(0),
            cleared_import: (bought - sold).max(0),
            need_export: open_sell,
            need_import: open_buy,
        })
        .collect()
}

/// The envelope of every connection point (same order as `points`) under the rule in the
/// module documentation. `topology` carries the limits in force (operator overrides applied).
///
/// # Panics
///
/// If `positions` and `points` differ in length (one position per point is the contract).
pub fn allocate(
    topology: &Topology,
    points: &[ConnectionPoint],
    positions: &[Position],
) -> Vec<Allocation> {
    assert_eq!(points.len(), positions.len(), "one position per point");
    let nodes = topology.nodes();
    let tree = Tree::new(topology, points);
    let utility = topology.utility;
    let export_limits: Vec<Option<i64>> = nodes
        .iter()
        .enumerate()
        .map(|(v, n)| {
            if v == 0 {
                utility.export_limit
            } else {
                n.export_limit
            }
        })
        .collect();
    let import_limits: Vec<Option<i64>> = nodes
        .iter()
        .enumerate()
        .map(|(v, n)| {
            if v == 0 {
                utility.import_limit
            } else {
                n.import_limit
            }
        })
        .collect();
    let export = direction(
        &tree,
        &export_limits,
        points.iter().zip(positions).map(|(c, p)| Home {
            rating: c.export_rating.max(0),
            reserved: p.cleared_export,
            offset: p.cleared_import,
            need: p.need_export,
        }),
    );
    let import = direction(
        &tree,
        &import_limits,
        points.iter().zip(positions).map(|(c, p)| Home {
            rating: c.import_rating.max(0),
            reserved: p.cleared_import,
            offset: p.cleared_export,
            need: p.need_import,
        }),
    );
    positions
        .iter()
        .zip(export.into_iter().zip(import))
        .map(|(p, (e, i))| Allocation {
            export_limit: e,
            import_limit: i,
            cleared_export: p.cleared_export,
            cleared_import: p.cleared_import,
        })
        .collect()
}

/// Finds the connection point of an order's owner: the first point (lowest index) of that
/// participant *at the order's node* (households can only trade at their own node, and a
/// gateway sits at its household's node). Orders of traders and of households without a
/// gateway have none.
///
/// Owners are the book's interned indices ([`Owners`]), so a look-up is two array reads and a
/// scan over the owner's points (one, unless a household has several gateways).
#[derive(Debug)]
pub struct PointIndex {
    /// Each owner's entries: `point[start[o]..start[o + 1]]`, in point order.
    start: Vec<u32>,
    point: Vec<u32>,
    node: Vec<u32>,
}

impl PointIndex {
    /// Indexes `points` by owner: `owner_of_point[k]` is the owner index (of [`Owners`]) of the
    /// participant of `points[k]`, `None` if that participant has no order; `owners` is the
    /// number of owner indices.
    pub fn new(owners: usize, points: &[ConnectionPoint], owner_of_point: &[Option<u32>]) -> Self {
        let mut start = vec![0u32; owners + 1];
        for o in owner_of_point.iter().flatten() {
            start[*o as usize + 1] += 1;
        }
        for o in 0..owners {
            start[o + 1] += start[o];
        }
        let mut fill = start.clone();
        let n = start[owners] as usize;
        let (mut point, mut node) = (vec![0u32; n], vec![0u32; n]);
        for (k, o) in owner_of_point.iter().enumerate() {
            let Some(o) = *o else { continue };
            let at = fill[o as usize] as usize;
            point[at] = k as u32;
            node[at] = points[k].node as u32;
            fill[o as usize] += 1;
        }
        PointIndex { start, point, node }
    }

    /// The connection point of the order of owner `owner` at node `node`.
    pub fn point_of(&self, node: usize, owner: u32) -> Option<u32> {
        let o = owner as usize;
        let (from, to) = (self.start[o] as usize, self.start[o + 1] as usize);
        (from..to)
            .find(|&j| self.node[j] as usize == node)
            .map(|j| self.point[j])
    }
}

/// The envelope allocations of an interval for the enrolled `gateways` (in gateway-id order;
/// gateways whose node is not in `topology` are left out): ratings from the enrolment,
/// positions from the cleared `orders` (`owners` owns them). The enrolments are consumed so
/// their ids move into the allocations.
pub fn envelopes_for(
    topology: &Topology,
    length: IntervalLength,
    connection_import_w: u32,
    orders: &[BookOrder],
    cleared: &[i64],
    owners: &Owners,
    gateways: Vec<GatewayEnrollment>,
) -> Vec<EnvelopeAllocation> {
    let mut gateways = gateways;
    // The store lists gateways by id already.
    if !gateways.is_sorted_by(|a, b| a.gateway <= b.gateway) {
        gateways.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    }
    let nodes: Vec<Option<usize>> = gateways
        .iter()
        .map(|g| topology.index_of(&g.node))
        .collect();
    // Gateways at nodes outside the topology get no envelope (the service warns about them).
    if nodes.contains(&None) {
        let mut keep = nodes.iter().map(Option::is_some);
        gateways.retain(|_| keep.next().unwrap_or(false));
    }
    let nodes: Vec<usize> = nodes.into_iter().flatten().collect();
    let export_w = |g: &GatewayEnrollment| i64::from(g.inverter_w) + i64::from(g.battery_w);
    let import_rating = rating_wh(i64::from(connection_import_w), length);
    let points: Vec<ConnectionPoint> = gateways
        .iter()
        .zip(&nodes)
        .map(|(g, &node)| ConnectionPoint {
            node,
            export_rating: rating_wh(export_w(g), length),
            import_rating,
        })
        .collect();
    let owner_of_point: Vec<Option<u32>> = gateways
        .iter()
        .map(|g| owners.index_of(&g.participant))
        .collect();
    let index = PointIndex::new(owners.participants().len(), &points, &owner_of_point);
    let positions = positions(points.len(), orders, cleared, |i| {
        index.point_of(orders[i].node, owners.index_of_order(i))
    });
    let allocations = allocate(topology, &points, &positions);
    gateways
        .into_iter()
        .zip(allocations)
        .map(|(g, a)| EnvelopeAllocation {
            gateway: g.gateway,
            participant: g.participant,
            node: g.node,
            export_limit_wh: Wh(a.export_limit),
            import_limit_wh: Wh(a.import_limit),
            cleared_export_wh: Wh(a.cleared_export),
            cleared_import_wh: Wh(a.cleared_import),
        })
        .collect()
}

/// The tree shape the water-filling walks: parents, and the connection points at each node.
struct Tree {
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    /// Connection points grouped by node (CSR: `at[start[v]..start[v + 1]]`).
    start: Vec<usize>,
    at: Vec<usize>,
    /// Each point's node.
    node_of: Vec<usize>,
}

impl Tree {
    fn new(topology: &Topology, points: &[ConnectionPoint]) -> Self {
        let nodes = topology.nodes();
        let mut start = vec![0usize; nodes.len() + 1];
        for p in points {
            start[p.node + 1] += 1;
        }
        for v in 0..nodes.len() {
            start[v + 1] += start[v];
        }
        let mut fill = start.clone();
        let mut at = vec![0usize; points.len()];
        for (k, p) in points.iter().enumerate() {
            at[fill[p.node]] = k;
            fill[p.node] += 1;
        }
        Tree {
            parent: nodes.iter().map(|n| n.parent).collect(),
            children: nodes.iter().map(|n| n.children.clone()).collect(),
            start,
            at,
            node_of: points.iter().map(|p| p.node).collect(),
        }
    }

    fn len(&self) -> usize {
        self.parent.len()
    }

    fn points_at(&self, v: usize) -> &[usize] {
        &self.at[self.start[v]..self.start[v + 1]]
    }
}

/// One home in one direction.
struct Home {
    /// Its rating, Wh.
    rating: i64,
    /// Its cleared position in this direction (reserved).
    reserved: i64,
    /// Its cleared position in the other direction (adds to the branches' budgets).
    offset: i64,
    /// Its declared need.
    need: i64,
}

/// The limits of one direction for every home: reservations, then headroom water-filled up to
/// the needs, then up to the ratings.
fn direction(tree: &Tree, limits: &[Option<i64>], homes: impl Iterator<Item = Home>) -> Vec<i64> {
    let homes: Vec<Home> = homes.collect();
    // Headroom of every node: limit − Σ (reserved − offset) below it, at least 0.
    let mut net = vec![0i128; tree.len()];
    for (k, h) in homes.iter().enumerate() {
        net[tree.node_of[k]] += i128::from(h.reserved) - i128::from(h.offset);
    }
    for v in (1..tree.len()).rev() {
        let p = tree.parent[v].expect("only the root has no parent");
        net[p] += net[v];
    }
    let headroom: Vec<Option<i128>> = limits
        .iter()
        .zip(&net)
        .map(|(l, n)| l.map(|l| (i128::from(l) - n).max(0)))
        .collect();
    // Phase 1: up to the declared need; phase 2: the rest up to the rating.
    let room: Vec<i64> = homes
        .iter()
        .map(|h| (h.rating - h.reserved).max(0))
        .collect();
    let first_caps: Vec<i64> = homes
        .iter()
        .zip(&room)
        .map(|(h, &r)| h.need.clamp(0, r))
        .collect();
    let first = water_fill(tree, &headroom, &first_caps);
    let mut used = vec![0i128; tree.len()];
    for (k, &a) in first.iter().enumerate() {
        used[tree.node_of[k]] += i128::from(a);
    }
    for v in (1..tree.len()).rev() {
        let p = tree.parent[v].expect("only the root has no parent");
        used[p] += used[v];
    }
    let left: Vec<Option<i128>> = headroom
        .iter()
        .zip(&used)
        .map(|(h, u)| h.map(|h| (h - u).max(0)))
        .collect();
    let second_caps: Vec<i64> = room.iter().zip(&first).map(|(r, a)| r - a).collect();
    let second = water_fill(tree, &left, &second_caps);
    homes
        .iter()
        .zip(first.iter().zip(&second))
        .map(|(h, (a, b))| h.reserved.max(0) + a + b)
        .collect()
}

/// Max-min fair integer shares `a[k] ≤ caps[k]` with `Σ a below v ≤ headroom[v]` for every
/// node `v` (`None` = no bound).
///
/// Bottom-up, each node gathers the caps of the homes below it, each already cut at the water
/// level of every limited subtree it passed through; at a limited node the list is sorted and
/// the node's level is the largest integer `L` with `Σ min(cap, L) ≤ headroom`. Top-down, a
/// home's share is its cap cut at the lowest level on its path to the root.
fn water_fill(tree: &Tree, headroom: &[Option<i128>], caps: &[i64]) -> Vec<i64> {
    let n = tree.len();
    let mut level = vec![UNBOUNDED; n];
    let mut lists: Vec<Vec<i64>> = vec![Vec::new(); n];
    for v in (0..n).rev() {
        let mut list: Vec<i64> = tree
            .points_at(v)
            .iter()
            .map(|&k| caps[k])
            .filter(|&c| c > 0)
            .collect();
        for &c in &tree.children[v] {
            let child = std::mem::take(&mut lists[c]);
            let cut = level[c];
            if cut == UNBOUNDED {
                list.extend(child);
            } else {
                list.extend(child.into_iter().map(|x| x.min(cut)));
            }
        }
        if let Some(h) = headroom[v] {
            level[v] = water_level(&mut list, h);
        }
        if v > 0 {
            lists[v] = list;
        }
    }
    // Top-down: the lowest level on the path from the root.
    for v in 1..n {
        let p = tree.parent[v].expect("only the root has no parent");
        level[v] = level[v].min(level[p]);
    }
    tree.node_of
        .iter()
        .zip(caps)
        .map(|(&v, &c)| c.max(0).min(level[v]))
        .collect()
}

/// The largest integer `L ≥ 0` with `Σ min(cap, L) ≤ headroom`, or [`UNBOUNDED`] if every cap
/// fits. Sorts `caps` (all positive).
fn water_level(caps: &mut [i64], headroom: i128) -> i64 {
    let total: i128 = caps.iter().map(|&c| i128::from(c)).sum();
    if total <= headroom {
        return UNBOUNDED;
    }
    caps.sort_unstable();
    let m = caps.len() as i128;
    let mut below: i128 = 0; // Σ of the caps already passed
    for (k, &c) in caps.iter().enumerate() {
        let rest = m - k as i128; // homes still filling
        if below + rest * i128::from(c) > headroom {
            // The level lies between the previous cap and this one.
            let l = (headroom - below) / rest;
            return i64::try_from(l).expect("the level is below a cap");
        }
        below += i128::from(c);
    }
    unreachable!("the caps' total exceeds the headroom")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::NodeId;
    use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};

    /// A branch: (node, parent, export limit, import limit).
    type B = (&'static str, &'static str, Option<i64>, Option<i64>);
    /// A home: (node, export rating, import rating, cleared export, cleared import, need
    /// export, need import).
    type H = (&'static str, i64, i64, i64, i64, i64, i64);

    fn topology(branches: &[B], root: (Option<i64>, Option<i64>)) -> Topology {
        let id = |s: &str| NodeId::new(s).unwrap();
        Topology::new(&Network {
            root: id("sub"),
            branches: branches
                .iter()
                .map(|&(n, p, e, i)| Branch {
                    node: id(n),
                    parent: id(p),
                    export_limit_wh: e.map(Wh),
                    import_limit_wh: i.map(Wh),
                    fee_per_mwh: None,
                })
                .collect(),
            utility: UtilityTariff {
                export_limit_wh: root.0.map(Wh),
                import_limit_wh: root.1.map(Wh),
                ..Default::default()
            },
        })
        .unwrap()
    }

    /// Allocates and compares `(export, import)` per home.
    fn check(
        branches: &[B],
        root: (Option<i64>, Option<i64>),
        homes: &[H],
        expected: &[(i64, i64)],
    ) {
        let t = topology(branches, root);
        let points: Vec<ConnectionPoint> = homes
            .iter()
            .map(|h| ConnectionPoint {
                node: t.index_of(&NodeId::new(h.0).unwrap()).unwrap(),
                export_rating: h.1,
                import_rating: h.2,
            })
            .collect();
        let positions: Vec<Position> = homes
            .iter()
            .map(|h| Position {
                cleared_export: h.3,
                cleared_import: h.4,
                need_export: h.5,
                need_import: h.6,
            })
            .collect();
        let got: Vec<(i64, i64)> = allocate(&t, &points, &positions)
            .iter()
            .map(|a| (a.export_limit, a.import_limit))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn unconstrained_gives_ratings() {
        check(
            &[("f1", "sub", None, None)],
            (None, None),
            &[
                ("f1", 2000, 2750, 0, 0, 0, 0),
                ("sub", 500, 100, 0, 0, 0, 0),
            ],
            &[(2000, 2750), (500, 100)],
        );
    }

    #[test]
    fn readme_example() {
        // f1 exports at most 3000 Wh and imports at most 2000 Wh; h1 sold 600, h4 bought
        // 400, h2's 900 Wh offer did not clear, h3 placed no order.
        check(
            &[("f1", "sub", Some(3000), Some(2000))],
            (None, None),
            &[
                ("f1", 2000, 2750, 600, 0, 0, 0), // h1
                ("f1", 1000, 2750, 0, 0, 900, 0), // h2
                ("f1", 2000, 2750, 0, 0, 0, 0),   // h3
                ("f1", 0, 2750, 0, 400, 0, 0),    // h4
            ],
            &[(1500, 550), (1000, 550), (900, 550), (0, 950)],
        );
    }

    #[test]
    fn congested_branch_gives_cleared_positions_only() {
        check(
            &[("f1", "sub", Some(1000), None)],
            (None, None),
            &[
                ("f1", 2000, 100, 1400, 0, 100, 0),
                ("f1", 1000, 100, 0, 400, 900, 0),
            ],
            &[(1400, 100), (0, 400)],
        );
    }

    #[test]
    fn cleared_position_above_rating_is_kept() {
        check(
            &[("f1", "sub", Some(100), None)],
            (None, None),
            &[("f1", 50, 10, 80, 0, 0, 0)],
            &[(80, 10)],
        );
    }

    #[test]
    fn nested_limits_freeze_the_tighter_subtree() {
        // l1 (under f1) exports at most 300: its two homes share it; f1's 2000 leaves the
        // rest to the home directly on f1.
        check(
            &[
                ("f1", "sub", Some(2000), None),
                ("l1", "f1", Some(300), None),
            ],
            (None, None),
            &[
                ("l1", 1000, 0, 0, 0, 0, 0),
                ("l1", 100, 0, 0, 0, 0, 0),
                ("f1", 5000, 0, 0, 0, 0, 0),
            ],
            &[(200, 0), (100, 0), (1700, 0)],
        );
    }

    #[test]
    fn needs_are_served_before_the_rest() {
        // 1000 Wh of headroom: h2's need of 700 first, then 300 shared (150 each).
        check(
            &[("f1", "sub", Some(1000), None)],
            (None, None),
            &[("f1", 2000, 0, 0, 0, 0, 0), ("f1", 2000, 0, 0, 0, 700, 0)],
            &[(150, 0), (850, 0)],
        );
    }

    #[test]
    fn root_limits_bind_with_floors() {
        // The utility takes at most 1000: three homes get 333 each (1 Wh unallocated).
        check(
            &[],
            (Some(1000), Some(10)),
            &[
                ("sub", 900, 9, 0, 0, 0, 0),
                ("sub", 900, 9, 0, 0, 0, 0),
                ("sub", 900, 9, 0, 0, 0, 0),
            ],
            &[(333, 3), (333, 3), (333, 3)],
        );
    }

    #[test]
    fn positions_net_sells_against_buys() {
        let o = |side, q| BookOrder {
            id: String::new(),
            node: 0,
            side,
            quantity: q,
            limit_price: 0,
        };
        let orders = [
            o(Side::Sell, 500),
            o(Side::Buy, 200),
            o(Side::Buy, 100),
            o(Side::Sell, 50),
        ];
        let owner = [Some(0), Some(0), Some(1), None];
        let got = positions(2, &orders, &[400, 150, 100, 0], |i| owner[i]);
        assert_eq!(
            got,
            vec![
                Position {
                    cleared_export: 250,
                    cleared_import: 0,
                    need_export: 100,
                    need_import: 50
                },
                Position {
                    cleared_export: 0,
                    cleared_import: 100,
                    need_export: 0,
                    need_import: 0
                },
            ]
        );
    }

    #[test]
    fn owners_are_found_at_their_node_exactly() {
        // Owner 0 has two gateways at node 1 and one at node 2, owner 1 one at node 1, owner 2
        // (a trader) none; point 4 belongs to a household without orders.
        let at = |node| ConnectionPoint {
            node,
            export_rating: 0,
            import_rating: 0,
        };
        let points = [at(1), at(1), at(2), at(1), at(1)];
        let owner_of_point = [Some(0), Some(1), Some(0), Some(0), None];
        let index = PointIndex::new(3, &points, &owner_of_point);
        assert_eq!(index.point_of(1, 0), Some(0)); // its first gateway at the node
        assert_eq!(index.point_of(2, 0), Some(2));
        assert_eq!(index.point_of(1, 1), Some(1));
        assert_eq!(index.point_of(2, 1), None); // not at its node
        assert_eq!(index.point_of(1, 2), None);
        assert_eq!(index.point_of(0, 0), None);
    }

    #[test]
    fn ratings_are_energy_per_interval() {
        assert_eq!(rating_wh(11_000, IntervalLength::Min15), 2_750);
        assert_eq!(rating_wh(1_001, IntervalLength::Min15), 250);
        assert_eq!(rating_wh(-5, IntervalLength::Min60), 0);
    }
}
