//! Operating-envelope compliance, envelope alerts and measured branch flows: pure functions of
//! an interval's market result, the verified readings' energy per gateway and the enrolments.
//!
//! - **Compliance** ([`compliance`]): for every gateway that has an envelope in the result
//!   (`IntervalResult::envelopes`) *and* at least one reading settlement uses for money
//!   (status `accepted` or `flagged`), its metered export and import against the envelope's
//!   limits; anything beyond a limit is excess. A gateway without an envelope gets no row (there
//!   is nothing to comply with); a gateway without readings gets no row either (nothing was
//!   measured; its statement is `estimated`).
//! - **Alerts** ([`alerts`]): a gateway whose rows exceed the envelope in two or more
//!   *consecutive settled intervals* (adjacent in the list of settled intervals, ordered by
//!   start). An interval in which it has no violating row (compliant, or no reading) ends the
//!   run. A run is `active` when it includes the latest settled interval.
//! - **Measured flows** ([`measured_flows`]): per branch of the result's network (in the
//!   network's order) and then the root, the sums of metered export and import of the homes
//!   enrolled at or below the branch's node; a home whose node is not in the network is not
//!   counted anywhere.
//! - **Public flows** ([`withhold_small_aggregates`]): what a caller who may not read household
//!   data gets. A branch is shown only if at least [`MIN_PUBLIC_HOMES`] homes report below it,
//!   *and* the homes it adds to the shown branches below it are none or at least
//!   [`MIN_PUBLIC_HOMES`]: otherwise a parent minus its shown children would be the flow of
//!   fewer homes (one, say). Withheld homes count towards the next ancestor instead.

use gridmesh_protocol::envelope::{
    EnvelopeAlert, EnvelopeCompliance, MeasuredBranchFlow, MeasuredFlows,
};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::units::Overflow;
use gridmesh_protocol::{GatewayId, Interval, NodeId, ParticipantId, Wh};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Who asks for measured flows: the auditor and the operator get every branch, everyone else
/// the public aggregates ([`withhold_small_aggregates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowAudience {
    /// Every branch (auditor, operator).
    Full,
    /// Only branches that single out no fewer than [`MIN_PUBLIC_HOMES`] homes.
    Public,
}

/// The fewest homes that must report in a public aggregate (see the module docs).
pub const MIN_PUBLIC_HOMES: u32 = 5;

/// Removes from `flows` every branch whose public figures could single out fewer than
/// [`MIN_PUBLIC_HOMES`] homes, alone or subtracted from another shown branch (see the module
/// docs). `network` is the network `flows` was measured on.
pub fn withhold_small_aggregates(flows: &mut MeasuredFlows, network: &Network) {
    let parent: HashMap<&NodeId, &NodeId> = network
        .branches
        .iter()
        .map(|b| (&b.node, &b.parent))
        .collect();
    fn depth<'a>(parent: &HashMap<&'a NodeId, &'a NodeId>, mut node: &'a NodeId) -> usize {
        let mut d = 0usize;
        // Bounded against a cyclic network.
        while let Some(p) = parent.get(node).filter(|_| d <= parent.len()) {
            node = p;
            d += 1;
        }
        d
    }
    // Deepest first, so every child is decided before its parent.
    let mut order: Vec<(NodeId, u32)> = flows
        .branches
        .iter()
        .map(|b| (b.node.clone(), b.homes_reporting))
        .collect();
    order.sort_by_cached_key(|(n, _)| (std::cmp::Reverse(depth(&parent, n)), n.clone()));
    // Homes in the shown branches nearest below each node (each home counted once).
    let mut shown_below: HashMap<NodeId, u32> = HashMap::new();
    let mut shown: HashSet<NodeId> = HashSet::new();
    for (node, homes) in order {
        let below = shown_below.get(&node).copied().unwrap_or(0);
        let added = homes.saturating_sub(below);
        let public = homes >= MIN_PUBLIC_HOMES && (added == 0 || added >= MIN_PUBLIC_HOMES);
        if let Some(p) = parent.get(&node) {
            *shown_below.entry((*p).clone()).or_default() += if public { homes } else { below };
        }
        if public {
            shown.insert(node);
        }
    }
    flows.branches.retain(|b| shown.contains(&b.node));
}

/// What one gateway's readings settlement uses for money say about one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayMetered {
    /// The participant the readings were attributed to at ingest (from the enrolment).
    pub participant: ParticipantId,
    /// Σ grid export, Wh.
    pub exported: Wh,
    /// Σ grid import, Wh.
    pub imported: Wh,
}

/// The compliance rows of one interval (see the module docs), ordered by gateway.
pub fn compliance(
    result: &IntervalResult,
    metered: &BTreeMap<GatewayId, GatewayMetered>,
) -> Vec<EnvelopeCompliance> {
    let mut rows: Vec<EnvelopeCompliance> = result
        .envelopes
        .iter()
        .filter_map(|e| {
            let m = metered.get(&e.gateway)?;
            Some(EnvelopeCompliance {
                interval: result.interval,
                gateway: e.gateway.clone(),
                participant: e.participant.clone(),
                node: e.node.clone(),
                export_wh: m.exported,
                import_wh: m.imported,
                export_limit_wh: e.export_limit_wh,
                import_limit_wh: e.import_limit_wh,
                excess_export_wh: beyond(m.exported, e.export_limit_wh),
                excess_import_wh: beyond(m.imported, e.import_limit_wh),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    // Two allocations for one gateway would be a market bug; keep the first (the stricter
    // reading would be arbitrary), so a gateway has one row per interval.
    rows.dedup_by(|a, b| a.gateway == b.gateway);
    rows
}

/// `value − limit` when positive, else 0 (never overflows: both are non-negative i64).
fn beyond(value: Wh, limit: Wh) -> Wh {
    Wh(value.0.saturating_sub(limit.0.max(0)).max(0))
}

/// Export beyond the envelope per participant (the one the readings were attributed to),
/// summed over its gateways: what `rules::settle` books as `envelope_excess`.
pub fn excess_by_participant(
    rows: &[EnvelopeCompliance],
    metered: &BTreeMap<GatewayId, GatewayMetered>,
) -> Result<BTreeMap<ParticipantId, Wh>, Overflow> {
    let mut out: BTreeMap<ParticipantId, Wh> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.excess_export_wh.0 > 0) {
        let who = metered
            .get(&row.gateway)
            .map_or(&row.participant, |m| &m.participant);
        let v = out.entry(who.clone()).or_default();
        *v = v.checked_add(row.excess_export_wh)?;
    }
    Ok(out)
}

/// Runs of violations of two or more consecutive settled intervals (see the module docs).
///
/// `settled` lists the settled intervals (any order); `violations` holds compliance rows, of
/// which only those exceeding the envelope count. Alerts come newest first (by last interval,
/// then gateway).
pub fn alerts(settled: &[Interval], violations: &[EnvelopeCompliance]) -> Vec<EnvelopeAlert> {
    let mut order: Vec<Interval> = settled.to_vec();
    order.sort_by_key(|i| i.start());
    order.dedup();
    let position: HashMap<Interval, usize> =
        order.iter().enumerate().map(|(n, i)| (*i, n)).collect();
    let latest = order.len().checked_sub(1);
    let mut by_gateway: BTreeMap<&GatewayId, Vec<(usize, &EnvelopeCompliance)>> = BTreeMap::new();
    for row in violations.iter().filter(|r| !r.compliant()) {
        if let Some(&n) = position.get(&row.interval) {
            by_gateway.entry(&row.gateway).or_default().push((n, row));
        }
    }
    let mut out = Vec::new();
    for (_, mut rows) in by_gateway {
        rows.sort_by_key(|(n, _)| *n);
        rows.dedup_by_key(|(n, _)| *n);
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            while end + 1 < rows.len() && rows[end + 1].0 == rows[end].0 + 1 {
                end += 1;
            }
            let run = &rows[start..=end];
            if run.len() >= 2 {
                let (first, last) = (run[0].1, run[run.len() - 1].1);
                // Excess is bounded by metered energy; saturate rather than fail a read-only view.
                let sum = |f: fn(&EnvelopeCompliance) -> Wh| {
                    Wh(run.iter().fold(0i64, |a, (_, r)| a.saturating_add(f(r).0)))
                };
                out.push(EnvelopeAlert {
                    gateway: last.gateway.clone(),
                    participant: last.participant.clone(),
                    node: last.node.clone(),
                    first_interval: first.interval,
                    last_interval: last.interval,
                    intervals: run.len() as u32,
                    excess_export_wh: sum(|r| r.excess_export_wh),
                    excess_import_wh: sum(|r| r.excess_import_wh),
                    active: Some(run[run.len() - 1].0) == latest,
                });
            }
            start = end + 1;
        }
    }
    out.sort_by(|a, b| {
        b.last_interval
            .start()
            .cmp(&a.last_interval.start())
            .then_with(|| a.gateway.cmp(&b.gateway))
    });
    out
}

/// The measured flows of one interval (see the module docs). `enrolled` maps every enrolled
/// gateway to its node.
pub fn measured_flows(
    result: &IntervalResult,
    enrolled: &BTreeMap<GatewayId, NodeId>,
    metered: &BTreeMap<GatewayId, GatewayMetered>,
) -> Result<MeasuredFlows, Overflow> {
    let network = &result.network;
    let parent: HashMap<&NodeId, &NodeId> = network
        .branches
        .iter()
        .map(|b| (&b.node, &b.parent))
        .collect();
    let mut acc: HashMap<&NodeId, MeasuredBranchFlow> = HashMap::new();
    let zero = |node: &NodeId| MeasuredBranchFlow {
        node: node.clone(),
        flow_wh: Wh(0),
        export_wh: Wh(0),
        import_wh: Wh(0),
        homes_reporting: 0,
        homes_enrolled: 0,
    };
    for node in network
        .branches
        .iter()
        .map(|b| &b.node)
        .chain([&network.root])
    {
        acc.insert(node, zero(node));
    }
    for (gateway, node) in enrolled {
        if !acc.contains_key(node) {
            continue;
        }
        let m = metered.get(gateway);
        // The node itself, then its ancestors up to the root (bounded against a cyclic network).
        let mut at = node;
        for _ in 0..=network.branches.len() {
            let Some(f) = acc.get_mut(at) else { break };
            f.homes_enrolled += 1;
            if let Some(m) = m {
                f.homes_reporting += 1;
                f.export_wh = f.export_wh.checked_add(m.exported)?;
                f.import_wh = f.import_wh.checked_add(m.imported)?;
            }
            if at == &network.root {
                break;
            }
            match parent.get(at) {
                Some(p) => at = p,
                None => break,
            }
        }
    }
    let mut branches = Vec::with_capacity(acc.len());
    for node in network
        .branches
        .iter()
        .map(|b| &b.node)
        .chain([&network.root])
    {
        if let Some(mut f) = acc.remove(node) {
            f.flow_wh = f.import_wh.checked_sub(f.export_wh)?;
            branches.push(f);
        }
    }
    Ok(MeasuredFlows {
        interval: result.interval,
        branches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32) -> Interval {
        Interval::parse(&format!("2026-06-21T12:{minute:02}:00Z"), 15).unwrap()
    }

    fn row(
        gateway: &str,
        i: Interval,
        excess_export: i64,
        excess_import: i64,
    ) -> EnvelopeCompliance {
        EnvelopeCompliance {
            interval: i,
            gateway: GatewayId::new(gateway).unwrap(),
            participant: ParticipantId::new("p").unwrap(),
            node: NodeId::new("f1").unwrap(),
            export_wh: Wh(500 + excess_export),
            import_wh: Wh(100 + excess_import),
            export_limit_wh: Wh(500),
            import_limit_wh: Wh(100),
            excess_export_wh: Wh(excess_export),
            excess_import_wh: Wh(excess_import),
        }
    }

    /// `check(settled minutes, violations (gateway, minute), expected (gateway, first, last, n, active))`.
    fn check(
        settled: &[u32],
        violations: &[(&str, u32)],
        expected: &[(&str, u32, u32, u32, bool)],
    ) {
        let settled: Vec<Interval> = settled.iter().map(|m| at(*m)).collect();
        let rows: Vec<EnvelopeCompliance> = violations
            .iter()
            .map(|(g, m)| row(g, at(*m), 10, 0))
            .collect();
        let got: Vec<(String, Interval, Interval, u32, bool)> = alerts(&settled, &rows)
            .into_iter()
            .map(|a| {
                (
                    a.gateway.to_string(),
                    a.first_interval,
                    a.last_interval,
                    a.intervals,
                    a.active,
                )
            })
            .collect();
        let want: Vec<(String, Interval, Interval, u32, bool)> = expected
            .iter()
            .map(|(g, f, l, n, a)| (g.to_string(), at(*f), at(*l), *n, *a))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn alerts_need_two_consecutive_settled_intervals() {
        check(&[0, 15, 30], &[("a", 0)], &[]);
        check(&[0, 15, 30], &[("a", 0), ("a", 30)], &[]);
        check(
            &[0, 15, 30],
            &[("a", 0), ("a", 15)],
            &[("a", 0, 15, 2, false)],
        );
        check(
            &[0, 15, 30],
            &[("a", 15), ("a", 30)],
            &[("a", 15, 30, 2, true)],
        );
        // An interval that was never settled (no result) does not break the run.
        check(&[0, 30], &[("a", 0), ("a", 30)], &[("a", 0, 30, 2, true)]);
        // Two runs of one home, two homes; newest first.
        check(
            &[0, 15, 30, 45],
            &[("a", 0), ("a", 15), ("a", 45), ("b", 30), ("b", 45)],
            &[("b", 30, 45, 2, true), ("a", 0, 15, 2, false)],
        );
        // Rows of intervals not settled are ignored.
        check(&[0], &[("a", 0), ("a", 15)], &[]);
    }

    #[test]
    fn compliant_rows_and_import_excess() {
        let rows = vec![
            row("a", at(0), 0, 5),
            row("a", at(15), 0, 0),
            row("a", at(30), 0, 7),
            row("a", at(45), 3, 0),
        ];
        let got = alerts(&[at(0), at(15), at(30), at(45)], &rows);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].intervals,
                got[0].excess_export_wh,
                got[0].excess_import_wh
            ),
            (2, Wh(3), Wh(7))
        );
    }

    #[test]
    fn excess_is_floored_at_zero() {
        assert_eq!(beyond(Wh(10), Wh(20)), Wh(0));
        assert_eq!(beyond(Wh(30), Wh(20)), Wh(10));
        assert_eq!(beyond(Wh(0), Wh(0)), Wh(0));
    }

    /// `sub` ← f1 ← f1a, `sub` ← f2; `homes` gives the reporting homes at or below each node.
    fn public_nodes(homes: [(&str, u32); 4]) -> Vec<String> {
        let network: Network = serde_json::from_value(serde_json::json!({
            "root": "sub",
            "branches": [
                {"node": "f1", "parent": "sub", "import_limit_wh": null, "export_limit_wh": null},
                {"node": "f1a", "parent": "f1", "import_limit_wh": null, "export_limit_wh": null},
                {"node": "f2", "parent": "sub", "import_limit_wh": null, "export_limit_wh": null},
            ],
            "utility": {"retail_price": null, "feed_in_price": null},
        }))
        .unwrap();
        let mut flows = MeasuredFlows {
            interval: at(0),
            branches: homes
                .iter()
                .map(|(node, n)| MeasuredBranchFlow {
                    node: NodeId::new(*node).unwrap(),
                    flow_wh: Wh(0),
                    export_wh: Wh(0),
                    import_wh: Wh(0),
                    homes_reporting: *n,
                    homes_enrolled: *n,
                })
                .collect(),
        };
        withhold_small_aggregates(&mut flows, &network);
        flows
            .branches
            .iter()
            .map(|b| b.node.as_str().to_owned())
            .collect()
    }

    #[test]
    fn no_public_aggregate_singles_out_fewer_than_five_homes_even_by_subtraction() {
        // f1 is f1a's 5 homes plus 1: f1 − f1a would be that one home, so f1 is withheld;
        // sub adds 3 homes to the shown f1a (f1's extra one and f2's two): withheld too.
        assert_eq!(
            public_nodes([("f1", 6), ("f1a", 5), ("f2", 2), ("sub", 8)]),
            ["f1a"]
        );
        // Every difference is 0 or at least 5 homes: everything is shown.
        assert_eq!(
            public_nodes([("f1", 10), ("f1a", 5), ("f2", 5), ("sub", 15)]),
            ["f1", "f1a", "f2", "sub"]
        );
        // f1 holds exactly f1a's homes: nothing new, shown; sub adds f2's 4 homes: withheld.
        assert_eq!(
            public_nodes([("f1", 5), ("f1a", 5), ("f2", 4), ("sub", 9)]),
            ["f1", "f1a"]
        );
        // A withheld child's homes count towards its parent: f1a (3) is hidden, f1 adds 3 + 2.
        assert_eq!(
            public_nodes([("f1", 5), ("f1a", 3), ("f2", 0), ("sub", 5)]),
            ["f1", "sub"]
        );
    }
}
