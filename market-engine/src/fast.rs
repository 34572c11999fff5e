//! The fast exact clearing: aggregated price steps merged up the tree, then prices and
//! quantities pushed down.
//!
//! # Why it is exact
//!
//! Look at a subtree from its parent. Its best welfare as a function of its net export `x`
//! is concave and piecewise linear; walking `x` up from its minimum (every buy filled, no sell)
//! consumes one "unit" at a time — cancel a buy or fill a sell — and the best order is by price
//! ascending. So a subtree *is* a sorted list of price steps plus its minimum `x`: the merit
//! order. Children combine by merging their step lists (sup-convolution of concave functions),
//! and a branch transforms a child's list exactly: steps on the import side (`x < 0`) get
//! cheaper by the fee, steps on the export side dearer, and the list is cut to the branch's
//! limits (units beyond a limit are forced). With no limit and no fee this is just the merit
//! order of the whole book, so the method provably gives the merit-order optimum when nothing
//! binds, and the same tree recursion gives the LP optimum when limits bind. The utility is two
//! extra steps at the root (a sell at the retail price and a buy at the feed-in price, each as
//! large as the whole book or its limit).
//!
//! Going down, each node's price is chosen from the interval of valid duals at its net export
//! (see [`crate::prices`] for the rule), and its net export is split between its own orders and
//! its children's subtrees by price: everything cheaper than the node price is consumed, nothing
//! dearer, and ties are shared by the rule in [`crate::prices`]. All quantities stay integer.
//!
//! Cost: one sort of each node's own orders plus a merge per tree level, then a linear pass.

use crate::book::BookOrder;
use crate::network::{Node, Topology};
use crate::prices::{choose_child_price, choose_root_price, pro_rata};
use gridmesh_protocol::Side;

/// The prices standing for "no bound" (defined with the price rules; `prices` needs nothing
/// from this module).
pub use crate::prices::{NEG_INF, POS_INF};
/// An energy standing for "unlimited" on a branch.
const INF_Q: i64 = 1 << 61;

/// The integer solution of one clearing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    /// Cleared Wh per order (same order as the input).
    pub cleared: Vec<i64>,
    /// Price per node (minor units per MWh), indexed like the topology.
    pub prices: Vec<i64>,
    /// Flow into each node's subtree (Wh; negative = out of it); 0 for the root.
    pub flows: Vec<i64>,
    /// Energy the utility sold into the root.
    pub utility_import: i64,
    /// Energy the utility bought from the root.
    pub utility_export: i64,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    price: i64,
    qty: i64,
}

/// A subtree's aggregated merit order: minimum net export and sorted price steps.
#[derive(Debug, Default)]
struct Curve {
    xmin: i64,
    steps: Vec<Step>,
    /// `prefix[j]` = total quantity of the first `j` steps.
    prefix: Vec<i64>,
}

impl Curve {
    fn new(xmin: i64, mut steps: Vec<Step>, presorted_runs: bool) -> Self {
        if presorted_runs {
            steps.sort_by_key(|s| s.price);
        } else {
            steps.sort_unstable_by_key(|s| s.price);
        }
        Self::from_sorted(xmin, steps)
    }

    fn from_sorted(xmin: i64, steps: impl IntoIterator<Item = Step>) -> Self {
        let steps = steps.into_iter();
        let mut merged: Vec<Step> = Vec::with_capacity(steps.size_hint().0);
        for s in steps {
            if s.qty == 0 {
                continue;
            }
            match merged.last_mut() {
                Some(last) if last.price == s.price => last.qty += s.qty,
                _ => merged.push(s),
            }
        }
        let mut prefix = Vec::with_capacity(merged.len() + 1);
        let mut acc = 0;
        prefix.push(0);
        for s in &merged {
            acc += s.qty;
            prefix.push(acc);
        }
        Curve {
            xmin,
            steps: merged,
            prefix,
        }
    }

    /// Net export when every unit priced below `p` is consumed.
    fn below(&self, p: i64) -> i64 {
        self.xmin + self.prefix[self.steps.partition_point(|s| s.price < p)]
    }

    /// Net export when every unit priced at or below `p` is consumed.
    fn at_or_below(&self, p: i64) -> i64 {
        self.xmin + self.prefix[self.steps.partition_point(|s| s.price <= p)]
    }

    /// The prices that are valid duals at net export `x` (inclusive, sentinels for none).
    fn price_interval(&self, x: i64) -> (i64, i64) {
        let k = x - self.xmin;
        let j = self.prefix.partition_point(|&p| p < k);
        if j < self.prefix.len() && self.prefix[j] == k {
            let lo = if j == 0 {
                NEG_INF
            } else {
                self.steps[j - 1].price
            };
            let hi = self.steps.get(j).map_or(POS_INF, |s| s.price);
            (lo, hi)
        } else {
            let p = self.steps[j.saturating_sub(1).min(self.steps.len() - 1)].price;
            (p, p)
        }
    }
}

/// A branch's limits as net-export bounds `[a, b]` of the child subtree, and its fee.
fn branch_bounds(node: &Node) -> (i64, i64, i64) {
    (
        -node.import_limit.unwrap_or(INF_Q),
        node.export_limit.unwrap_or(INF_Q),
        node.fee,
    )
}

/// The subtree's response seen from the parent at price `p` (strict or inclusive).
fn through_branch(curve: &Curve, node: &Node, p: i64, inclusive: bool) -> i64 {
    let (a, b, fee) = branch_bounds(node);
    let at = |q: i64| {
        if inclusive {
            curve.at_or_below(q)
        } else {
            curve.below(q)
        }
    };
    let import_side = at(p + fee);
    let g = if import_side < 0 {
        import_side
    } else {
        at(p - fee).max(0)
    };
    g.clamp(a, b)
}

/// The subtree's steps as seen from the parent: fee-shifted and cut to the branch limits.
fn through_branch_steps(curve: &Curve, node: &Node, out: &mut Vec<Step>) -> i64 {
    let (a, b, fee) = branch_bounds(node);
    let mut pos = curve.xmin;
    for s in &curve.steps {
        let (start, end) = (pos, pos + s.qty);
        pos = end;
        // Import side [start, min(end, 0)), export side [max(start, 0), end), each cut to [a, b].
        let (ls, le) = (start.max(a), end.min(0).min(b));
        if le > ls {
            out.push(Step {
                price: s.price - fee,
                qty: le - ls,
            });
        }
        let (rs, re) = (start.max(0).max(a), end.min(b));
        if re > rs {
            out.push(Step {
                price: s.price + fee,
                qty: re - rs,
            });
        }
    }
    curve.xmin.max(a)
}

/// Clears `orders` on `topology` exactly. Orders must be validated (positive quantities,
/// bounded prices, known nodes).
///
/// Memory access is kept sequential where the book is large: orders are scattered once into a
/// per-node array of price steps (counting sort by node), the tree passes touch only the
/// aggregated curves, and the final fill is one pass over the orders in book order.
pub fn solve(topology: &Topology, orders: &[BookOrder]) -> Solution {
    let nodes = topology.nodes();
    let n = nodes.len();
    // Pass 1: orders per node.
    let mut start = vec![0usize; n + 1];
    for o in orders {
        start[o.node + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    // Pass 2: scatter price steps by node; total bought per node.
    let mut flat = vec![Step { price: 0, qty: 0 }; orders.len()];
    let mut fill = start.clone();
    let mut local_buy = vec![0i64; n];
    let mut book_total: i64 = 1;
    for o in orders {
        flat[fill[o.node]] = Step {
            price: o.limit_price,
            qty: o.quantity,
        };
        fill[o.node] += 1;
        if o.side == Side::Buy {
            local_buy[o.node] += o.quantity;
        }
        book_total += o.quantity;
    }
    drop(fill);

    // The utility: as large as the whole book, or its limit.
    let u = topology.utility;
    let u_sell = u
        .retail
        .map(|p| (p, u.import_limit.unwrap_or(book_total).min(book_total)));
    let u_buy = u
        .feed_in
        .map(|p| (p, u.export_limit.unwrap_or(book_total).min(book_total)));

    // Bottom-up: each node's own curve, and its subtree's curve (own steps merged with the
    // children's steps seen through their branches). A leaf's subtree curve is its own.
    let mut own: Vec<Curve> = (0..n).map(|_| Curve::default()).collect();
    let mut merged: Vec<Option<Curve>> = (0..n).map(|_| None).collect();
    for v in (0..n).rev() {
        let slice = &mut flat[start[v]..start[v + 1]];
        let mut xmin = -local_buy[v];
        own[v] = if v == 0 {
            let mut steps = slice.to_vec();
            if let Some((price, qty)) = u_sell {
                steps.push(Step { price, qty });
            }
            if let Some((price, qty)) = u_buy {
                xmin -= qty;
                steps.push(Step { price, qty });
            }
            Curve::new(xmin, steps, false)
        } else {
            slice.sort_unstable_by_key(|s| s.price);
            Curve::from_sorted(xmin, slice.iter().copied())
        };
        if !nodes[v].children.is_empty() {
            let mut steps = own[v].steps.clone();
            let mut xmin = own[v].xmin;
            for &c in &nodes[v].children {
                let child = merged[c].as_ref().unwrap_or(&own[c]);
                xmin += through_branch_steps(child, &nodes[c], &mut steps);
            }
            merged[v] = Some(Curve::new(xmin, steps, true));
        }
    }
    let subtree = |v: usize| merged[v].as_ref().unwrap_or(&own[v]);

    // Top-down: price each node, split its net export among its own orders and its children.
    let mut solution = Solution {
        cleared: vec![0; orders.len()],
        prices: vec![0; n],
        flows: vec![0; n],
        utility_import: 0,
        utility_export: 0,
    };
    let mut target = vec![0i64; n];
    let mut allowed = vec![(NEG_INF, POS_INF); n];
    let mut own_take = vec![0i64; n];
    let mut low = Vec::new();
    let mut slack = Vec::new();
    for v in 0..n {
        let (lo, hi) = subtree(v).price_interval(target[v]);
        let price = match nodes[v].parent {
            None => choose_root_price(lo, hi),
            Some(p) => choose_child_price(solution.prices[p], (lo, hi), allowed[v]),
        };
        solution.prices[v] = price;

        // Sources: own orders first, then children; each can take [low, low + slack].
        low.clear();
        slack.clear();
        let own_low = own[v].below(price);
        low.push(own_low);
        slack.push(own[v].at_or_below(price) - own_low);
        for &c in &nodes[v].children {
            let l = through_branch(subtree(c), &nodes[c], price, false);
            let h = through_branch(subtree(c), &nodes[c], price, true);
            low.push(l);
            slack.push(h - l);
        }
        let sum_low: i64 = low.iter().sum();
        let extra = (target[v] - sum_low).clamp(0, slack.iter().sum());
        debug_assert_eq!(extra, target[v] - sum_low, "node {v}: target outside range");
        let shares = pro_rata(extra, &slack);
        own_take[v] = shares[0];
        for (k, &c) in nodes[v].children.iter().enumerate() {
            let x = low[k + 1] + shares[k + 1];
            target[c] = x;
            solution.flows[c] = -x;
            let (a, b, fee) = branch_bounds(&nodes[c]);
            let lower = if x == b {
                NEG_INF
            } else if x < 0 {
                price + fee
            } else {
                price - fee
            };
            let upper = if x == a {
                POS_INF
            } else if x > 0 {
                price - fee
            } else {
                price + fee
            };
            allowed[c] = (lower, upper);
        }
    }
    fill_orders(orders, &own_take, u_sell, u_buy, &mut solution);
    solution
}

/// Fills every order from its node's price and the number of tied units its node consumes.
///
/// Among a node's own units priced exactly at the node price, the utility's purchase is cut
/// first, then participants' sells fill, then participants' buys are cut, and the utility's
/// sale comes last; pro rata within each class by largest remainder (equal remainders: the
/// earlier order in the book).
fn fill_orders(
    orders: &[BookOrder],
    own_take: &[i64],
    u_sell: Option<(i64, i64)>,
    u_buy: Option<(i64, i64)>,
    solution: &mut Solution,
) {
    let n = own_take.len();
    let prices = &solution.prices;
    // Tied participant quantity per node and class (0 = sells, 1 = buys).
    let mut tied = vec![[0i64; 2]; n];
    for o in orders {
        if o.limit_price == prices[o.node] {
            tied[o.node][usize::from(o.side == Side::Buy)] += o.quantity;
        }
    }
    let mut take = vec![[0i64; 2]; n];
    for v in 0..n {
        let mut left = own_take[v];
        if v == 0 {
            if let Some((p, q)) = u_buy {
                let cut = if p < prices[0] {
                    q
                } else if p == prices[0] {
                    let c = left.min(q);
                    left -= c;
                    c
                } else {
                    0
                };
                solution.utility_export = q - cut;
            }
        }
        for class in 0..2 {
            take[v][class] = left.min(tied[v][class]);
            left -= take[v][class];
        }
        if v == 0 {
            if let Some((p, q)) = u_sell {
                solution.utility_import = if p < prices[0] {
                    q
                } else if p == prices[0] {
                    left.min(q)
                } else {
                    0
                };
            }
        }
    }
    // One pass in book order: consumed = sold for a sell, cut for a buy.
    let mut given = vec![[0i64; 2]; n];
    let mut remainders: Vec<(usize, usize, i128, usize)> = Vec::new();
    for (i, o) in orders.iter().enumerate() {
        let v = o.node;
        let class = usize::from(o.side == Side::Buy);
        let consumed = match o.limit_price.cmp(&prices[v]) {
            std::cmp::Ordering::Less => o.quantity,
            std::cmp::Ordering::Greater => 0,
            std::cmp::Ordering::Equal => {
                let exact = i128::from(take[v][class]) * i128::from(o.quantity);
                let total = i128::from(tied[v][class]);
                let share = (exact / total) as i64;
                let rem = exact % total;
                if rem > 0 {
                    remainders.push((v, class, rem, i));
                }
                given[v][class] += share;
                share
            }
        };
        solution.cleared[i] = match o.side {
            Side::Sell => consumed,
            Side::Buy => o.quantity - consumed,
        };
    }
    if !remainders.is_empty() {
        remainders.sort_unstable_by(|a, b| (a.0, a.1, b.2, a.3).cmp(&(b.0, b.1, a.2, b.3)));
        for (v, class, _, i) in remainders {
            if given[v][class] < take[v][class] {
                given[v][class] += 1;
                solution.cleared[i] += if class == 0 { 1 } else { -1 };
            }
        }
    }
}
