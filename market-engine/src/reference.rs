//! The reference: the plain welfare LP over every order, solved by good_lp with Clarabel.
//!
//! It is slow on large books but obviously right, so tests and the benchmark compare the fast
//! clearing against it. Variables are scaled (quantities by the largest quantity, prices by
//! the largest price) to keep the interior-point solver well conditioned; node prices come from
//! the duals of the balance constraints.

use crate::book::BookOrder;
use crate::network::Topology;
use good_lp::{
    Expression, ProblemVariables, Solution, SolutionWithDual, SolverModel, clarabel, variable,
};
use gridmesh_protocol::Side;

/// The reference solution, in floating point.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSolution {
    /// Welfare in micro-minor units (price per MWh × Wh).
    pub welfare_micro: f64,
    /// Cleared Wh per order.
    pub cleared: Vec<f64>,
    /// Flow into each node's subtree (0 at the root).
    pub flows: Vec<f64>,
    /// Node prices from the duals.
    pub prices: Vec<f64>,
    /// Utility import and export.
    pub utility: (f64, f64),
}

/// Why the reference LP failed.
#[derive(Debug, thiserror::Error)]
#[error("the reference LP failed: {0}")]
pub struct ReferenceError(pub String);

/// Solves the welfare LP over every order.
pub fn solve(
    topology: &Topology,
    orders: &[BookOrder],
) -> Result<ReferenceSolution, ReferenceError> {
    let nodes = topology.nodes();
    let u = topology.utility;
    let qs = orders
        .iter()
        .map(|o| o.quantity)
        .chain(nodes.iter().filter_map(|n| n.import_limit))
        .chain(nodes.iter().filter_map(|n| n.export_limit))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let ps = orders
        .iter()
        .map(|o| o.limit_price.abs())
        .chain(nodes.iter().map(|n| n.fee))
        .chain(u.retail.map(i64::abs))
        .chain(u.feed_in.map(i64::abs))
        .max()
        .unwrap_or(1)
        .max(1) as f64;

    let mut vars = ProblemVariables::new();
    let q: Vec<_> = orders
        .iter()
        .map(|o| vars.add(variable().min(0.0).max(o.quantity as f64 / qs)))
        .collect();
    let bounded = |limit: Option<i64>| {
        let v = variable().min(0.0);
        match limit {
            Some(l) => v.max(l as f64 / qs),
            None => v,
        }
    };
    let imp = u.retail.map(|_| vars.add(bounded(u.import_limit)));
    let exp = u.feed_in.map(|_| vars.add(bounded(u.export_limit)));
    let flows: Vec<_> = nodes
        .iter()
        .map(|n| {
            (
                vars.add(bounded(n.import_limit)),
                vars.add(bounded(n.export_limit)),
            )
        })
        .collect();

    let mut objective = Expression::from(0.0);
    for (o, &v) in orders.iter().zip(&q) {
        let c = o.limit_price as f64 / ps;
        match o.side {
            Side::Buy => objective += c * v,
            Side::Sell => objective -= c * v,
        }
    }
    if let (Some(v), Some(p)) = (imp, u.retail) {
        objective -= (p as f64 / ps) * v;
    }
    if let (Some(v), Some(p)) = (exp, u.feed_in) {
        objective += (p as f64 / ps) * v;
    }
    for (n, &(fp, fm)) in nodes.iter().zip(&flows).skip(1) {
        objective -= (n.fee as f64 / ps) * (fp + fm);
    }

    let mut balance: Vec<Expression> = vec![Expression::from(0.0); nodes.len()];
    for (o, &v) in orders.iter().zip(&q) {
        match o.side {
            Side::Sell => balance[o.node] += v,
            Side::Buy => balance[o.node] -= v,
        }
    }
    if let Some(v) = imp {
        balance[0] += v;
    }
    if let Some(v) = exp {
        balance[0] -= v;
    }
    for (c, n) in nodes.iter().enumerate().skip(1) {
        let (fp, fm) = flows[c];
        let p = n.parent.expect("non-root has a parent");
        balance[c] += fp - fm;
        balance[p] -= fp - fm;
    }
    // Fix the root's unused flow pair at zero.
    let mut problem = vars.maximise(objective.clone()).using(clarabel);
    problem
        .settings()
        .tol_gap_abs(1e-11)
        .tol_gap_rel(1e-11)
        .tol_feas(1e-11)
        .max_iter(500);
    let root_pair = flows[0];
    problem.add_constraint((root_pair.0 + root_pair.1).eq(0.0));
    let refs: Vec<_> = balance
        .into_iter()
        .map(|b| problem.add_constraint(b.eq(0.0)))
        .collect();
    let mut solution = problem.solve().map_err(|e| ReferenceError(e.to_string()))?;
    let value = |v| solution.value(v) * qs;
    let cleared: Vec<f64> = q.iter().map(|&v| value(v)).collect();
    let flow_values: Vec<f64> = flows
        .iter()
        .map(|&(fp, fm)| value(fp) - value(fm))
        .collect();
    let utility = (imp.map_or(0.0, value), exp.map_or(0.0, value));
    let mut welfare = 0.0;
    for (o, &c) in orders.iter().zip(&cleared) {
        let v = o.limit_price as f64 * c;
        welfare += if o.side == Side::Buy { v } else { -v };
    }
    welfare -= u.retail.unwrap_or(0) as f64 * utility.0;
    welfare += u.feed_in.unwrap_or(0) as f64 * utility.1;
    for (n, &(fp, fm)) in nodes.iter().zip(&flows).skip(1) {
        welfare -= n.fee as f64 * (value(fp) + value(fm));
    }
    let duals = solution.compute_dual();
    use good_lp::solvers::DualValues;
    let prices = refs.into_iter().map(|r| -duals.dual(r) * ps).collect();
    Ok(ReferenceSolution {
        welfare_micro: welfare,
        cleared,
        flows: flow_values,
        prices,
        utility,
    })
}
