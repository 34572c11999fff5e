//! Operator limit overrides: validating them and applying those in force to the network an
//! interval is cleared with (pure; storage lives in [`crate::store`]).
//!
//! An override covers every interval whose start lies in `[from, until)`. While in force it
//! replaces its branch's configured limits; `null` keeps the configured limit for that
//! direction. When several overrides of one branch are in force at once, the smallest limit of
//! each direction wins (the safe choice), so overlapping overrides never loosen each other.

use crate::network::{MAX_ENERGY_WH, Topology};
use gridmesh_protocol::grid::{LimitOverride, Network};

/// Why an override cannot be stored. Messages say what is wrong and what to send instead.
pub fn validate(topology: &Topology, o: &LimitOverride) -> Result<(), String> {
    let network = topology.network();
    if o.node == network.root {
        return Err(format!(
            "`{}` is the root; an override names a branch (its child node). The utility's limits are part of the topology (PUT /topology)",
            o.node
        ));
    }
    if !network.branches.iter().any(|b| b.node == o.node) {
        return Err(format!(
            "`{}` is not a branch of the topology; see GET /topology for the branches' nodes",
            o.node
        ));
    }
    if o.from >= o.until {
        return Err(format!(
            "`from` ({}) must be before `until` ({})",
            o.from.to_rfc3339(),
            o.until.to_rfc3339()
        ));
    }
    for (field, value) in [
        ("import_limit_wh", o.import_limit_wh),
        ("export_limit_wh", o.export_limit_wh),
    ] {
        if let Some(v) = value {
            if v.0 < 0 || v.0 > MAX_ENERGY_WH {
                return Err(format!(
                    "{field} {} is out of range; use 0 to {MAX_ENERGY_WH} Wh, or null to keep the configured limit",
                    v.0
                ));
            }
        }
    }
    if o.reason.len() > 500 {
        return Err("`reason` is longer than 500 characters; shorten it".into());
    }
    Ok(())
}

/// Whether `o` covers the interval starting at `start` (Unix seconds).
pub fn covers(o: &LimitOverride, start: i64) -> bool {
    o.from.timestamp() <= start && start < o.until.timestamp()
}

/// The network with the overrides that cover the interval starting at `start` applied
/// (overrides naming nodes that are no longer branches are ignored).
pub fn apply(network: &Network, overrides: &[LimitOverride], start: i64) -> Network {
    let mut out = network.clone();
    for b in &mut out.branches {
        let mut import = None;
        let mut export = None;
        for o in overrides
            .iter()
            .filter(|o| o.node == b.node && covers(o, start))
        {
            if let Some(v) = o.import_limit_wh {
                import = Some(import.map_or(v, |i: gridmesh_protocol::Wh| i.min(v)));
            }
            if let Some(v) = o.export_limit_wh {
                export = Some(export.map_or(v, |e: gridmesh_protocol::Wh| e.min(v)));
            }
        }
        if import.is_some() {
            b.import_limit_wh = import;
        }
        if export.is_some() {
            b.export_limit_wh = export;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use gridmesh_protocol::grid::{Branch, UtilityTariff};
    use gridmesh_protocol::{NodeId, Wh};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn network() -> Network {
        Network {
            root: NodeId::new("sub").unwrap(),
            branches: vec![Branch {
                node: NodeId::new("f1").unwrap(),
                parent: NodeId::new("sub").unwrap(),
                import_limit_wh: Some(Wh(5_000)),
                export_limit_wh: Some(Wh(3_000)),
                fee_per_mwh: None,
            }],
            utility: UtilityTariff::default(),
        }
    }

    fn over(
        node: &str,
        from: &str,
        until: &str,
        imp: Option<i64>,
        exp: Option<i64>,
    ) -> LimitOverride {
        LimitOverride {
            id: 0,
            node: NodeId::new(node).unwrap(),
            from: t(from),
            until: t(until),
            import_limit_wh: imp.map(Wh),
            export_limit_wh: exp.map(Wh),
            reason: String::new(),
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let topo = Topology::new(&network()).unwrap();
        let check = |o: LimitOverride, expected: &str| {
            let err = validate(&topo, &o).unwrap_err();
            assert!(err.contains(expected), "{err}");
        };
        check(
            over(
                "sub",
                "2026-06-21T12:00:00Z",
                "2026-06-21T13:00:00Z",
                None,
                Some(1),
            ),
            "root",
        );
        check(
            over(
                "f9",
                "2026-06-21T12:00:00Z",
                "2026-06-21T13:00:00Z",
                None,
                Some(1),
            ),
            "not a branch",
        );
        check(
            over(
                "f1",
                "2026-06-21T13:00:00Z",
                "2026-06-21T13:00:00Z",
                None,
                Some(1),
            ),
            "before",
        );
        check(
            over(
                "f1",
                "2026-06-21T12:00:00Z",
                "2026-06-21T13:00:00Z",
                Some(-1),
                None,
            ),
            "out of range",
        );
        assert!(
            validate(
                &topo,
                &over(
                    "f1",
                    "2026-06-21T12:00:00Z",
                    "2026-06-21T13:00:00Z",
                    None,
                    Some(0)
                )
            )
            .is_ok()
        );
    }

    #[test]
    fn applies_in_its_window_and_the_tightest_wins() {
        let os = [
            over(
                "f1",
                "2026-06-21T12:00:00Z",
                "2026-06-21T13:00:00Z",
                None,
                Some(800),
            ),
            over(
                "f1",
                "2026-06-21T12:30:00Z",
                "2026-06-21T12:45:00Z",
                Some(9_000),
                Some(500),
            ),
            over(
                "gone",
                "2026-06-21T12:00:00Z",
                "2026-06-21T13:00:00Z",
                Some(1),
                Some(1),
            ),
        ];
        let limits = |at: &str| {
            let n = apply(&network(), &os, t(at).timestamp());
            (
                n.branches[0].import_limit_wh.unwrap().0,
                n.branches[0].export_limit_wh.unwrap().0,
            )
        };
        assert_eq!(limits("2026-06-21T11:45:00Z"), (5_000, 3_000));
        assert_eq!(limits("2026-06-21T12:00:00Z"), (5_000, 800));
        assert_eq!(limits("2026-06-21T12:30:00Z"), (9_000, 500));
        assert_eq!(limits("2026-06-21T12:45:00Z"), (5_000, 800));
        assert_eq!(limits("2026-06-21T13:00:00Z"), (5_000, 3_000));
    }
}
