//! Pure derivations from a [`Snapshot`] to what each page shows: the feeder tree with the
//! measured flows beside the cleared plan and the limits, per-participant figures, and alerts.
//! No I/O; every function is deterministic.
//!
//! The grid's state is what was **measured** (settlement's flows from verified readings); the
//! market's cleared flows are a plan and are always labelled as one. Colours, statuses and
//! congestion alerts follow the measured flow only.

use crate::snapshot::{GatewayLiveness, Snapshot, SourceHealth};
use gridmesh_protocol::Interval;
use gridmesh_protocol::api::market::MarketStatus;
use gridmesh_protocol::api::settlement::Statement;
use gridmesh_protocol::envelope::{
    EnvelopeAlert, EnvelopeSource, MeasuredBranchFlow, MeasuredFlows,
};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::order::Side;
use gridmesh_protocol::registry::ParticipantKind;
use gridmesh_protocol::units::{Money, Wh};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A measured flow against its limit. It is derived from the **measured** (metered) flow only,
/// never from the cleared plan: over the limit, from 90 % of it, below that, no limit in the
/// flow's direction, or nothing measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowStatus {
    /// Under 90 % of the limit.
    Normal,
    /// 90 % of the limit or more, but not over it (amber).
    Near,
    /// Over the limit (red).
    Over,
    /// No limit in the measured flow's direction.
    Unlimited,
    /// No home below reported a verified reading for the interval.
    NoData,
}

/// Percentage of `limit` that `flow` uses, rounded half up; `None` without a limit.
pub fn utilisation_pct(flow: Wh, limit: Option<Wh>) -> Option<i64> {
    let limit = limit?.0;
    if limit <= 0 {
        return Some(if flow.0 == 0 { 0 } else { 100 });
    }
    let flow = i128::from(flow.0).abs();
    let limit = i128::from(limit);
    Some(i64::try_from((flow * 100 + limit / 2) / limit).unwrap_or(i64::MAX))
}

/// The status of a measured `flow` against the `limit` in its direction: over it is
/// [`FlowStatus::Over`], from 90 % of it [`FlowStatus::Near`] (exact integer comparison, no
/// rounding).
pub fn flow_status(flow: Wh, limit: Option<Wh>) -> FlowStatus {
    let Some(limit) = limit else {
        return FlowStatus::Unlimited;
    };
    let flow = i128::from(flow.0).abs();
    let limit = i128::from(limit.0.max(0));
    if flow > limit {
        FlowStatus::Over
    } else if flow > 0 && flow * 10 >= limit * 9 {
        FlowStatus::Near
    } else {
        FlowStatus::Normal
    }
}

/// The limit that applies to `flow` (≥ 0 = into the subtree, so the import limit).
fn directed_limit(flow: Wh, import: Option<Wh>, export: Option<Wh>) -> Option<Wh> {
    if flow.0 >= 0 { import } else { export }
}

/// What the homes' verified readings say about one branch (or the utility connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeasuredView {
    /// Net metered flow into the subtree, Wh (negative = export out of it).
    pub flow_wh: i64,
    /// Σ metered export of the homes below, Wh.
    pub export_wh: i64,
    /// Σ metered import of the homes below, Wh.
    pub import_wh: i64,
    /// Homes below with a verified reading for the interval.
    pub homes_reporting: u32,
    /// Homes enrolled below.
    pub homes_enrolled: u32,
}

/// The gateways' control loops below one branch (from their retained control status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ControlView {
    /// Gateways enrolled below.
    pub gateways: usize,
    /// Of them, those whose control status is for the current control interval.
    pub reporting: usize,
    /// Of those, the ones enforcing their configured default envelope (no valid market
    /// envelope for the interval).
    pub on_default: usize,
    /// PV energy curtailed so far in the current control interval, Wh.
    pub curtailed_wh: i64,
    /// PV energy curtailed since each gateway started, Wh (running total).
    pub curtailed_total_wh: i64,
}

/// One row of the Grid page: a branch, or the utility connection at the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    /// The branch's child node (the root for the utility connection).
    pub node: String,
    /// Its parent (`None` for the utility connection).
    pub parent: Option<String>,
    /// Depth below the root (the utility connection is 0, feeders 1).
    pub depth: usize,
    /// Participants at this node or below it.
    pub participants: usize,
    /// The measured (metered) flow of the measured interval; `None` when no home below
    /// reported (then there is no metered data: the plan is never shown in its place).
    pub measured: Option<MeasuredView>,
    /// The market's cleared flow (a plan) for the same interval, Wh into the subtree.
    pub cleared_flow_wh: Option<i64>,
    /// Whether the plan used the whole limit (an informational note, not a grid state).
    pub cleared_at_limit: bool,
    /// Import limit in force for the interval, Wh.
    pub import_limit_wh: Option<i64>,
    /// Export limit in force for the interval, Wh.
    pub export_limit_wh: Option<i64>,
    /// The limit in the measured flow's direction.
    pub limit_wh: Option<i64>,
    /// Percentage of that limit the measured flow uses.
    pub utilisation_pct: Option<i64>,
    /// The status, from the measured flow only.
    pub status: FlowStatus,
    /// Control loops below: curtailment and default envelopes.
    pub control: ControlView,
}

/// A gateway with its liveness and control status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayView {
    /// The gateway id.
    pub gateway: String,
    /// Its household.
    pub participant: String,
    /// Its node.
    pub node: String,
    /// `online`, `offline` or `unknown`.
    pub status: String,
    /// When the status was observed.
    pub seen_at: Option<String>,
    /// Where its envelope for the current control interval comes from (`market` or
    /// `default`); `None` when it has not reported a control status for that interval.
    pub envelope: Option<EnvelopeSource>,
    /// PV energy it curtailed so far in the current control interval, Wh.
    pub curtailed_wh: Option<i64>,
}

/// The Grid page.
#[derive(Debug, Clone, Serialize)]
pub struct GridView {
    /// Upstream health (market, settlement, broker).
    pub sources: Sources,
    /// The newest interval with measured flows (settlement's verified readings).
    pub measured_interval: Option<String>,
    /// One sentence on what is measured: the interval and how many homes reported, or
    /// "no metered data yet".
    pub metered_summary: String,
    /// The interval of the "Cleared (plan)" figures: the measured interval, or the latest
    /// cleared one while nothing is measured.
    pub cleared_interval: Option<String>,
    /// The newest cleared interval (a plan for now or the near future).
    pub latest_cleared_interval: Option<String>,
    /// The interval the gateways' control status refers to (the newest any gateway reports).
    pub control_interval: Option<String>,
    /// The substation node.
    pub root: Option<String>,
    /// The utility connection at the root.
    pub utility: Option<FlowRow>,
    /// Branches in tree order (depth first).
    pub branches: Vec<FlowRow>,
    /// Enrolled gateways and their liveness.
    pub gateways: Vec<GatewayView>,
}

/// Upstream health for the page banners.
#[derive(Debug, Clone, Serialize)]
pub struct Sources {
    /// Market health.
    pub market: SourceHealth,
    /// Settlement health.
    pub settlement: SourceHealth,
    /// Broker health, if configured.
    pub broker: Option<SourceHealth>,
}

impl Sources {
    /// The sources of a snapshot.
    pub fn of(snap: &Snapshot) -> Self {
        Sources {
            market: snap.market.clone(),
            settlement: snap.settlement.clone(),
            broker: snap.broker.clone(),
        }
    }
}

/// Parent of each node in the network.
fn parents(network: &Network) -> HashMap<&str, &str> {
    network
        .branches
        .iter()
        .map(|b| (b.node.as_str(), b.parent.as_str()))
        .collect()
}

/// `node` and every node above it up to the root (bounded, so a malformed tree cannot loop).
fn ancestors<'a>(parents: &HashMap<&'a str, &'a str>, node: &'a str) -> Vec<&'a str> {
    let mut out = vec![node];
    let mut current = node;
    for _ in 0..parents.len() {
        match parents.get(current) {
            Some(p) => {
                out.push(*p);
                current = p;
            }
            None => break,
        }
    }
    out
}

/// Whether `node` is `ancestor` or lies below it.
pub fn is_within(network: &Network, node: &str, ancestor: &str) -> bool {
    ancestors(&parents(network), node).contains(&ancestor)
}

/// The feeder (the root's child) that `node` hangs from.
pub fn feeder_of(network: &Network, node: &str) -> Option<String> {
    let parents = parents(network);
    let chain = ancestors(&parents, node);
    let at = chain.iter().position(|n| *n == network.root.as_str())?;
    (at >= 1).then(|| chain[at - 1].to_owned())
}

/// Import and export limits of `node` (a branch, or the root for the utility connection) in
/// a network.
fn network_limits(network: &Network, node: &str) -> Option<(Option<Wh>, Option<Wh>)> {
    if network.root.as_str() == node {
        return Some((
            network.utility.import_limit_wh,
            network.utility.export_limit_wh,
        ));
    }
    network
        .branches
        .iter()
        .find(|b| b.node.as_str() == node)
        .map(|b| (b.import_limit_wh, b.export_limit_wh))
}

/// Import and export limits of `node` as they applied in `result` (its flows and network
/// carry the interval's operator overrides), else in the network in force now.
fn limits_of(
    snap: &Snapshot,
    result: Option<&IntervalResult>,
    node: &str,
) -> (Option<Wh>, Option<Wh>) {
    if let Some(r) = result {
        if let Some(f) = r.flows.iter().find(|f| f.node.as_str() == node) {
            return (f.import_limit, f.export_limit);
        }
        if let Some(limits) = network_limits(&r.network, node) {
            return limits;
        }
    }
    snap.network()
        .and_then(|n| network_limits(n, node))
        .unwrap_or((None, None))
}

/// The cleared flow (plan) of `node` in `result` and whether it used the whole limit.
fn cleared_of(result: &IntervalResult, node: &str) -> Option<(Wh, bool)> {
    if let Some(f) = result.flows.iter().find(|f| f.node.as_str() == node) {
        return Some((f.flow, f.congested));
    }
    if result.network.root.as_str() == node {
        let flow = result
            .utility_import
            .checked_sub(result.utility_export)
            .ok()?;
        let utility = &result.network.utility;
        let limit = directed_limit(flow, utility.import_limit_wh, utility.export_limit_wh);
        let at_limit =
            limit.is_some_and(|l| flow.0 != 0 && i128::from(flow.0).abs() >= i128::from(l.0));
        return Some((flow, at_limit));
    }
    None
}

/// The interval the gateways' control status refers to: the newest one any gateway reports.
pub fn control_interval(snap: &Snapshot) -> Option<Interval> {
    snap.control.values().map(|c| c.interval).max()
}

/// Groups an integer in threes with spaces, as the alerts print energy (`9 980`).
pub fn grouped(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Builds the Grid page: per branch and for the utility connection, the measured flow of the
/// newest metered interval beside the cleared flow of the same interval and the limit; the
/// status follows the measured flow only.
pub fn grid(snap: &Snapshot) -> GridView {
    let measured = snap.latest_measured();
    let compared = match measured {
        Some(m) => snap.result_for(&m.interval),
        None => snap.latest_result(),
    };
    let control_at = control_interval(snap);
    let mut view = GridView {
        sources: Sources::of(snap),
        measured_interval: measured.map(|m| m.interval.key()),
        metered_summary: String::new(),
        cleared_interval: compared.map(|r| r.interval.key()),
        latest_cleared_interval: snap.latest_result().map(|r| r.interval.key()),
        control_interval: control_at.map(|i| i.key()),
        root: None,
        utility: None,
        branches: Vec::new(),
        gateways: gateways(snap, control_at),
    };
    let network = snap.network();
    view.metered_summary = metered_summary(measured, network);
    let Some(network) = network else {
        return view;
    };
    view.root = Some(network.root.to_string());
    let parents = parents(network);
    let measured_at: HashMap<&str, &MeasuredBranchFlow> = measured
        .map(|m| m.branches.iter().map(|b| (b.node.as_str(), b)).collect())
        .unwrap_or_default();

    // Participants and control loops summed up the tree, once per node.
    let mut participants: HashMap<&str, usize> = HashMap::new();
    for p in &snap.participants {
        for n in ancestors(&parents, p.node.as_str()) {
            *participants.entry(n).or_default() += 1;
        }
    }
    let mut control: HashMap<&str, ControlView> = HashMap::new();
    for g in &snap.gateways {
        let status = snap.control.get(g.gateway.as_str());
        let current = status.filter(|c| Some(c.interval) == control_at);
        for n in ancestors(&parents, g.node.as_str()) {
            let c = control.entry(n).or_default();
            c.gateways += 1;
            if let Some(s) = status {
                c.curtailed_total_wh = c.curtailed_total_wh.saturating_add(s.curtailed_total_wh.0);
            }
            if let Some(s) = current {
                c.reporting += 1;
                c.on_default += usize::from(s.source == EnvelopeSource::Default);
                c.curtailed_wh = c.curtailed_wh.saturating_add(s.curtailed_wh.0);
            }
        }
    }

    let row = |node: &str, parent: Option<String>, depth: usize| -> FlowRow {
        let m = measured_at
            .get(node)
            .filter(|b| b.homes_reporting > 0)
            .map(|b| MeasuredView {
                flow_wh: b.flow_wh.0,
                export_wh: b.export_wh.0,
                import_wh: b.import_wh.0,
                homes_reporting: b.homes_reporting,
                homes_enrolled: b.homes_enrolled,
            });
        let (import_limit, export_limit) = limits_of(snap, compared, node);
        let cleared = compared.and_then(|r| cleared_of(r, node));
        let (limit, pct, status) = match &m {
            Some(m) => {
                let flow = Wh(m.flow_wh);
                let limit = directed_limit(flow, import_limit, export_limit);
                (
                    limit,
                    utilisation_pct(flow, limit),
                    flow_status(flow, limit),
                )
            }
            None => (None, None, FlowStatus::NoData),
        };
        FlowRow {
            node: node.to_owned(),
            parent,
            depth,
            participants: participants.get(node).copied().unwrap_or(0),
            measured: m,
            cleared_flow_wh: cleared.map(|(f, _)| f.0),
            cleared_at_limit: cleared.is_some_and(|(_, at)| at),
            import_limit_wh: import_limit.map(|w| w.0),
            export_limit_wh: export_limit.map(|w| w.0),
            limit_wh: limit.map(|w| w.0),
            utilisation_pct: pct,
            status,
            control: control.get(node).cloned().unwrap_or_default(),
        }
    };

    view.utility = Some(row(network.root.as_str(), None, 0));
    let mut children: BTreeMap<&str, Vec<&gridmesh_protocol::grid::Branch>> = BTreeMap::new();
    for b in &network.branches {
        children.entry(b.parent.as_str()).or_default().push(b);
    }
    let mut stack: Vec<(&gridmesh_protocol::grid::Branch, usize)> = children
        .get(network.root.as_str())
        .map(|kids| kids.iter().rev().map(|b| (*b, 1)).collect())
        .unwrap_or_default();
    while let Some((branch, depth)) = stack.pop() {
        if view.branches.len() >= network.branches.len() {
            break;
        }
        if let Some(kids) = children.get(branch.node.as_str()) {
            stack.extend(kids.iter().rev().map(|b| (*b, depth + 1)));
        }
        view.branches.push(row(
            branch.node.as_str(),
            Some(branch.parent.to_string()),
            depth,
        ));
    }
    view
}

/// "Metered interval … : n of m homes reported", or "no metered data yet".
fn metered_summary(measured: Option<&MeasuredFlows>, network: Option<&Network>) -> String {
    let Some(m) = measured else {
        return "no metered data yet: settlement has no verified readings for any interval shown"
            .into();
    };
    let root = network.map(|n| n.root.as_str());
    let totals = m
        .branches
        .iter()
        .find(|b| Some(b.node.as_str()) == root)
        .or_else(|| m.branches.iter().max_by_key(|b| b.homes_enrolled));
    match totals {
        Some(t) => format!(
            "Metered interval {}: {} of {} homes reported",
            m.interval.key(),
            t.homes_reporting,
            t.homes_enrolled
        ),
        None => format!("Metered interval {}", m.interval.key()),
    }
}

fn gateways(snap: &Snapshot, control_at: Option<Interval>) -> Vec<GatewayView> {
    snap.gateways
        .iter()
        .map(|g| {
            let live: Option<&GatewayLiveness> = snap.gateway_status.get(g.gateway.as_str());
            let control = snap
                .control
                .get(g.gateway.as_str())
                .filter(|c| Some(c.interval) == control_at);
            GatewayView {
                gateway: g.gateway.to_string(),
                participant: g.participant.to_string(),
                node: g.node.to_string(),
                status: live.map_or_else(|| "unknown".into(), |l| l.status.clone()),
                seen_at: live.map(|l| l.seen_at.to_rfc3339()),
                envelope: control.map(|c| c.source),
                curtailed_wh: control.map(|c| c.curtailed_wh.0),
            }
        })
        .collect()
}

/// One participant's figures over the dashboard's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantRow {
    /// The participant.
    pub id: String,
    /// `household` or `trader`.
    pub kind: ParticipantKind,
    /// Its node.
    pub node: String,
    /// The feeder its node hangs from.
    pub feeder: Option<String>,
    /// Its gateway, if enrolled.
    pub gateway: Option<String>,
    /// That gateway's liveness.
    pub gateway_status: Option<String>,
    /// Energy bought in the market (cleared buy orders), Wh.
    pub bought_wh: i64,
    /// Energy sold in the market (cleared sell orders), Wh.
    pub sold_wh: i64,
    /// What it paid for cleared buys, minor units.
    pub spent: i64,
    /// What it earned from cleared sells, minor units.
    pub earned: i64,
    /// PV generation from the home's verified readings (needs the broker), Wh.
    pub generation_wh: Option<i64>,
    /// Consumption from the home's verified readings: import + PV + battery discharge − export
    /// − battery charge, Wh.
    pub consumption_wh: Option<i64>,
    /// Metered grid export: settlement's statements, else the readings, Wh.
    pub export_wh: Option<i64>,
    /// Metered grid import: settlement's statements, else the readings, Wh.
    pub import_wh: Option<i64>,
    /// Settled money over the statements (positive = received), minor units.
    pub settled_net: Option<i64>,
    /// Tokens held, Wh.
    pub tokens_wh: Option<i64>,
    /// Lots (holdings) held.
    pub lots: usize,
}

/// The market side of one participant: (bought, sold, spent, earned).
fn market_figures(results: &[IntervalResult], id: &str) -> (Wh, Wh, Money, Money) {
    let (mut bought, mut sold, mut spent, mut earned) = (Wh(0), Wh(0), Money(0), Money(0));
    for r in results {
        for o in r.orders.iter().filter(|o| o.participant.as_str() == id) {
            let cost = o.price.cost_of(o.cleared).unwrap_or(Money(0));
            match o.side {
                Side::Buy => {
                    bought = bought.checked_add(o.cleared).unwrap_or(bought);
                    spent = spent.checked_add(cost).unwrap_or(spent);
                }
                Side::Sell => {
                    sold = sold.checked_add(o.cleared).unwrap_or(sold);
                    earned = earned.checked_add(cost).unwrap_or(earned);
                }
            }
        }
    }
    (bought, sold, spent, earned)
}

/// Sums `field` over the statements of participant `id` (`None` when it has none).
fn statement_sum(
    statements: &[Statement],
    id: &str,
    field: impl Fn(&Statement) -> i64,
) -> Option<i64> {
    statements
        .iter()
        .filter(|s| s.participant.as_str() == id)
        .map(field)
        .fold(None, |total, v| {
            Some(total.unwrap_or(0i64).saturating_add(v))
        })
}

/// Builds the Participants page rows, filtered by a search text (id, node, feeder or gateway
/// containing it, case-insensitive) and optionally by a subtree node.
pub fn participants(
    snap: &Snapshot,
    query: Option<&str>,
    within: Option<&str>,
) -> Vec<ParticipantRow> {
    let network = snap.network();
    let query = query
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    snap.participants
        .iter()
        .filter(|p| match (within, network) {
            (Some(node), Some(net)) => is_within(net, p.node.as_str(), node),
            (Some(node), None) => p.node.as_str() == node,
            (None, _) => true,
        })
        .map(|p| {
            let id = p.id.as_str();
            let (bought, sold, spent, earned) = market_figures(&snap.results, id);
            let gateway = snap.gateways.iter().find(|g| g.participant == p.id);
            let balance = snap.balances.get(id);
            let metered = gateway
                .and_then(|g| snap.readings.get(g.gateway.as_str()))
                .map(crate::gateways::total);
            ParticipantRow {
                id: id.to_owned(),
                kind: p.kind,
                node: p.node.to_string(),
                feeder: network.and_then(|n| feeder_of(n, p.node.as_str())),
                gateway: gateway.map(|g| g.gateway.to_string()),
                gateway_status: gateway.map(|g| {
                    snap.gateway_status
                        .get(g.gateway.as_str())
                        .map_or_else(|| "unknown".into(), |l| l.status.clone())
                }),
                bought_wh: bought.0,
                sold_wh: sold.0,
                spent: spent.0,
                earned: earned.0,
                generation_wh: metered.map(|m| m.pv.0),
                consumption_wh: metered.map(|m| {
                    m.grid_import.0 + m.pv.0 + m.battery_discharge.0
                        - m.grid_export.0
                        - m.battery_charge.0
                }),
                export_wh: statement_sum(&snap.statements, id, |s| s.exported.0)
                    .or(metered.map(|m| m.grid_export.0)),
                import_wh: statement_sum(&snap.statements, id, |s| s.imported.0)
                    .or(metered.map(|m| m.grid_import.0)),
                settled_net: statement_sum(&snap.statements, id, |s| s.net.0),
                tokens_wh: balance.map(|b| b.balance.0),
                lots: balance.map_or(0, |b| b.holdings.len()),
            }
        })
        .filter(|row| match &query {
            None => true,
            Some(q) => [
                Some(&row.id),
                Some(&row.node),
                row.feeder.as_ref(),
                row.gateway.as_ref(),
            ]
            .into_iter()
            .flatten()
            .any(|s| s.to_lowercase().contains(q.as_str())),
        })
        .collect()
}

/// Energy traded in one interval (sum of its trades, utility trades included).
pub fn traded_volume(r: &IntervalResult) -> Wh {
    Wh(r.trades.iter().map(|t| t.energy.0).sum())
}

/// Energy traded between participants only (neither side the utility).
pub fn local_volume(r: &IntervalResult) -> Wh {
    Wh(r.trades
        .iter()
        .filter(|t| {
            !matches!(t.buyer, Counterparty::Utility) && !matches!(t.seller, Counterparty::Utility)
        })
        .map(|t| t.energy.0)
        .sum())
}

/// One congestion event: a branch at its limit in one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CongestionEvent {
    /// The interval key.
    pub interval: String,
    /// The branch's node.
    pub node: String,
    /// The flow, Wh.
    pub flow_wh: i64,
    /// The binding limit, Wh.
    pub limit_wh: Option<i64>,
}

/// Every congested branch in the history, newest interval first.
pub fn congestion_events(results: &[IntervalResult]) -> Vec<CongestionEvent> {
    results
        .iter()
        .rev()
        .flat_map(|r| {
            r.flows
                .iter()
                .filter(|f| f.congested)
                .map(move |f| CongestionEvent {
                    interval: r.interval.key(),
                    node: f.node.to_string(),
                    flow_wh: f.flow.0,
                    limit_wh: if f.flow.0 >= 0 {
                        f.import_limit
                    } else {
                        f.export_limit
                    }
                    .map(|w| w.0),
                })
        })
        .collect()
}

/// One interval's summary row on the Market page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntervalRow {
    /// The interval key.
    pub interval: String,
    /// Energy traded (all trades), Wh.
    pub traded_wh: i64,
    /// Energy traded between participants, Wh.
    pub local_wh: i64,
    /// Utility import, Wh.
    pub utility_import_wh: i64,
    /// Utility export, Wh.
    pub utility_export_wh: i64,
    /// Price per node, minor units per MWh.
    pub prices: BTreeMap<String, i64>,
    /// Branches at their limit.
    pub congested: Vec<String>,
    /// Welfare, minor units.
    pub welfare: i64,
}

/// The Market page's tables (the charts are separate SVGs).
#[derive(Debug, Clone, Serialize)]
pub struct MarketView {
    /// Upstream health.
    pub sources: Sources,
    /// The next interval open for orders.
    pub next_interval: Option<String>,
    /// The market's status document.
    pub status: Option<MarketStatus>,
    /// Cleared intervals, newest first.
    pub intervals: Vec<IntervalRow>,
    /// Congestion events, newest first.
    pub congestion: Vec<CongestionEvent>,
}

/// Builds the Market page.
pub fn market(snap: &Snapshot) -> MarketView {
    MarketView {
        sources: Sources::of(snap),
        next_interval: snap.next_interval.clone(),
        status: snap.status.clone(),
        intervals: snap
            .results
            .iter()
            .rev()
            .map(|r| IntervalRow {
                interval: r.interval.key(),
                traded_wh: traded_volume(r).0,
                local_wh: local_volume(r).0,
                utility_import_wh: r.utility_import.0,
                utility_export_wh: r.utility_export.0,
                prices: r.prices.iter().map(|(k, v)| (k.to_string(), v.0)).collect(),
                congested: r
                    .flows
                    .iter()
                    .filter(|f| f.congested)
                    .map(|f| f.node.to_string())
                    .collect(),
                welfare: r.welfare.0,
            })
            .collect(),
        congestion: congestion_events(&snap.results),
    }
}

/// An alert on the Alerts page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// `service`, `congestion` (a measured flow over its limit), `envelope_violation`,
    /// `gateway_offline`, `quarantine`, `imbalance` or `cleared_at_limit` (a plan, informational).
    pub kind: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// The interval concerned, if any.
    pub interval: Option<String>,
    /// What it concerns (node, gateway, reading key, service).
    pub subject: String,
    /// A sentence for the operator.
    pub message: String,
}

/// Derives every alert, most urgent kinds first.
pub fn alerts(snap: &Snapshot, spike_factor: u32) -> Vec<Alert> {
    let mut out = Vec::new();
    for (name, health) in [("market", &snap.market), ("settlement", &snap.settlement)]
        .into_iter()
        .chain(snap.broker.as_ref().map(|b| ("broker", b)))
    {
        // A source not contacted yet (the dashboard just started) is not known to be down: no
        // alert, so a restart pages nobody (issue 17).
        if !health.ok && health.consecutive_failures > 0 {
            out.push(Alert {
                kind: "service".into(),
                severity: "critical".into(),
                interval: None,
                subject: name.into(),
                message: health
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("{name} unreachable at {}", health.url)),
            });
        }
    }
    out.extend(measured_congestion(snap));
    out.extend(envelope_violations(&snap.envelope_alerts));
    for g in gateways(snap, None)
        .into_iter()
        .filter(|g| g.status == "offline")
    {
        out.push(Alert {
            kind: "gateway_offline".into(),
            severity: "warning".into(),
            interval: None,
            message: format!(
                "Gateway {} of {} at node {} is offline{}",
                g.gateway,
                g.participant,
                g.node,
                g.seen_at
                    .map(|t| format!(" (since {t})"))
                    .unwrap_or_default()
            ),
            subject: g.gateway,
        });
    }
    for q in &snap.quarantine {
        let subject = q
            .key
            .clone()
            .or_else(|| q.gateway.clone())
            .unwrap_or_else(|| "reading".into());
        out.push(Alert {
            kind: "quarantine".into(),
            severity: "warning".into(),
            interval: None,
            message: format!("Reading {subject} quarantined: {}", q.reason),
            subject,
        });
    }
    out.extend(imbalance_spikes(&snap.results, spike_factor));
    out.extend(cleared_at_limit(snap));
    out
}

/// Branches (and the utility connection) whose **measured** flow exceeded the limit in its
/// direction, for every held interval with measurements, newest first: "f1 exported 9 980 Wh,
/// limit 320 Wh (measured)". The limit is the one in force for that interval (with operator
/// overrides, from the interval's result when held).
pub fn measured_congestion(snap: &Snapshot) -> Vec<Alert> {
    let root = snap.network().map(|n| n.root.to_string());
    let mut out = Vec::new();
    for m in snap.measured_flows.iter().rev() {
        let result = snap.result_for(&m.interval);
        for b in m.branches.iter().filter(|b| b.homes_reporting > 0) {
            let node = b.node.as_str();
            let (import, export) = limits_of(snap, result, node);
            let limit = directed_limit(b.flow_wh, import, export);
            if flow_status(b.flow_wh, limit) != FlowStatus::Over {
                continue;
            }
            let Some(limit) = limit else { continue };
            let exported = b.flow_wh.0 < 0;
            let name = if root.as_deref() == Some(node) {
                format!("Utility connection ({node})")
            } else {
                node.to_owned()
            };
            let mut message = format!(
                "{name} {} {} Wh, limit {} Wh (measured)",
                if exported { "exported" } else { "imported" },
                grouped(b.flow_wh.0.saturating_abs()),
                grouped(limit.0)
            );
            if b.homes_reporting < b.homes_enrolled {
                message.push_str(&format!(
                    "; {} of {} homes reported, so the real flow may be larger",
                    b.homes_reporting, b.homes_enrolled
                ));
            }
            if let Some((cleared, _)) = result.and_then(|r| cleared_of(r, node)) {
                message.push_str(&format!(
                    "; cleared (plan) {} Wh {}",
                    grouped(cleared.0.saturating_abs()),
                    if cleared.0 < 0 { "export" } else { "import" }
                ));
            }
            out.push(Alert {
                kind: "congestion".into(),
                severity: "critical".into(),
                interval: Some(m.interval.key()),
                subject: node.to_owned(),
                message,
            });
        }
    }
    out
}

/// Homes that exceeded their operating envelope in consecutive intervals (settlement's
/// compliance alerts), naming the home and the intervals.
pub fn envelope_violations(alerts: &[EnvelopeAlert]) -> Vec<Alert> {
    alerts
        .iter()
        .map(|a| {
            let mut beyond = Vec::new();
            if a.excess_export_wh.0 > 0 {
                beyond.push(format!("{} Wh export", grouped(a.excess_export_wh.0)));
            }
            if a.excess_import_wh.0 > 0 {
                beyond.push(format!("{} Wh import", grouped(a.excess_import_wh.0)));
            }
            Alert {
                kind: "envelope_violation".into(),
                severity: if a.active { "critical" } else { "warning" }.into(),
                interval: Some(a.last_interval.key()),
                subject: a.participant.to_string(),
                message: format!(
                    "Home {} (gateway {}, node {}) exceeded its operating envelope in {} intervals in a row, {}: {} beyond it{}",
                    a.participant,
                    a.gateway,
                    a.node,
                    a.intervals,
                    span_text(&a.first_interval, &a.last_interval),
                    if beyond.is_empty() {
                        "no energy".to_owned()
                    } else {
                        beyond.join(" and ")
                    },
                    if a.active { "; still going" } else { "; since back inside" }
                ),
            }
        })
        .collect()
}

/// The intervals from `first` to `last` (both included) in words, by their start times:
/// "intervals starting 2026-06-21 12:30 to 13:00 UTC (15 min)".
pub fn span_text(first: &Interval, last: &Interval) -> String {
    let same_day = first.start().date_naive() == last.start().date_naive();
    format!(
        "intervals starting {} to {} UTC ({} min)",
        first.start().format("%Y-%m-%d %H:%M"),
        last.start()
            .format(if same_day { "%H:%M" } else { "%Y-%m-%d %H:%M" }),
        last.length().minutes()
    )
}

/// Informational notes: branches the market cleared at their limit in the newest cleared
/// interval. A plan at its limit is not congestion of the grid.
pub fn cleared_at_limit(snap: &Snapshot) -> Vec<Alert> {
    let Some(r) = snap.latest_result() else {
        return Vec::new();
    };
    r.flows
        .iter()
        .filter(|f| f.congested)
        .map(|f| {
            let export = f.flow.0 < 0;
            let limit = if export {
                f.export_limit
            } else {
                f.import_limit
            };
            Alert {
                kind: "cleared_at_limit".into(),
                severity: "info".into(),
                interval: Some(r.interval.key()),
                subject: f.node.to_string(),
                message: format!(
                    "{} cleared at limit (plan): {} Wh {} of {} Wh; a plan, not a measurement",
                    f.node,
                    grouped(f.flow.0.saturating_abs()),
                    if export { "export" } else { "import" },
                    limit.map_or_else(|| "?".into(), |l| grouped(l.0))
                ),
            }
        })
        .collect()
}

/// Intervals whose utility exchange (import + export) exceeds `factor` times the median of the
/// up to 8 intervals before it (at least 3 needed), newest first.
pub fn imbalance_spikes(results: &[IntervalResult], factor: u32) -> Vec<Alert> {
    let exchange = |r: &IntervalResult| r.utility_import.0.saturating_add(r.utility_export.0);
    let mut out = Vec::new();
    for (i, r) in results.iter().enumerate().rev() {
        let window = &results[i.saturating_sub(8)..i];
        if window.len() < 3 {
            continue;
        }
        let mut values: Vec<i64> = window.iter().map(exchange).collect();
        values.sort_unstable();
        let median = values[values.len() / 2];
        let now = exchange(r);
        if now > median.max(1).saturating_mul(i64::from(factor)) {
            out.push(Alert {
                kind: "imbalance".into(),
                severity: "info".into(),
                interval: Some(r.interval.key()),
                subject: "utility".into(),
                message: format!(
                    "Cleared utility exchange (plan) spiked to {now} Wh (median of the previous intervals {median} Wh)"
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (flow, limit) → expected status.
    fn check(flow: i64, limit: Option<i64>, expected: FlowStatus) {
        assert_eq!(
            flow_status(Wh(flow), limit.map(Wh)),
            expected,
            "flow {flow} against {limit:?}"
        );
    }

    #[test]
    fn status_follows_the_measured_flow_at_90_and_over_100_percent() {
        check(0, Some(320), FlowStatus::Normal);
        check(287, Some(320), FlowStatus::Normal);
        check(288, Some(320), FlowStatus::Near);
        check(-288, Some(320), FlowStatus::Near);
        check(320, Some(320), FlowStatus::Near);
        check(321, Some(320), FlowStatus::Over);
        check(-9_980, Some(320), FlowStatus::Over);
        check(0, Some(0), FlowStatus::Normal);
        check(1, Some(0), FlowStatus::Over);
        check(-5, None, FlowStatus::Unlimited);
        check(i64::MIN, Some(i64::MAX), FlowStatus::Over);
    }

    #[test]
    fn utilisation_and_grouping() {
        assert_eq!(utilisation_pct(Wh(-9_980), Some(Wh(320))), Some(3_119));
        assert_eq!(utilisation_pct(Wh(160), Some(Wh(320))), Some(50));
        assert_eq!(utilisation_pct(Wh(5), None), None);
        assert_eq!(utilisation_pct(Wh(i64::MIN), Some(Wh(1))), Some(i64::MAX));
        assert_eq!(grouped(9_980), "9 980");
        assert_eq!(grouped(320), "320");
        assert_eq!(grouped(1_234_567), "1 234 567");
        assert_eq!(grouped(-23_000), "-23 000");
        assert_eq!(grouped(0), "0");
    }

    #[test]
    fn feeders_and_subtrees() {
        use gridmesh_protocol::NodeId;
        use gridmesh_protocol::grid::Branch;
        let b = |n: &str, p: &str| Branch {
            node: NodeId::new(n).unwrap(),
            parent: NodeId::new(p).unwrap(),
            import_limit_wh: None,
            export_limit_wh: None,
            fee_per_mwh: None,
        };
        let network = Network {
            root: NodeId::new("sub").unwrap(),
            branches: vec![b("f1", "sub"), b("c1", "f1"), b("h1", "c1")],
            utility: Default::default(),
        };
        assert_eq!(feeder_of(&network, "h1").as_deref(), Some("f1"));
        assert_eq!(feeder_of(&network, "f1").as_deref(), Some("f1"));
        assert_eq!(feeder_of(&network, "sub"), None);
        assert_eq!(feeder_of(&network, "elsewhere"), None);
        assert!(is_within(&network, "h1", "f1"));
        assert!(is_within(&network, "h1", "sub"));
        assert!(!is_within(&network, "f1", "c1"));
    }
}
