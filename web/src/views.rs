//! Pure derivations from a [`Snapshot`] to what each page shows: the feeder tree with its
//! loading, per-participant figures, and alerts. No I/O; every function is deterministic.

use crate::snapshot::{GatewayLiveness, Snapshot, SourceHealth, as_list, find_i64, find_str};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::order::Side;
use gridmesh_protocol::units::{Money, Wh};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// How loaded a branch is: below 80 %, from 80 %, from 100 % of its limit in the flow's
/// direction, or without a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loading {
    /// Under 80 % of the limit.
    Normal,
    /// 80 % to under 100 %.
    High,
    /// At or over the limit (congested).
    Full,
    /// No limit in this direction.
    Unlimited,
}

/// Percentage of `limit` that `flow` uses, rounded half up; `None` without a (positive) limit.
pub fn utilisation_pct(flow: Wh, limit: Option<Wh>) -> Option<i64> {
    let limit = limit?.0;
    if limit <= 0 {
        return Some(if flow.0 == 0 { 0 } else { 100 });
    }
    let flow = i128::from(flow.0.unsigned_abs() as i64);
    let limit = i128::from(limit);
    Some(((flow * 100 + limit / 2) / limit) as i64)
}

/// The loading class of a percentage (80 % and 100 % are the thresholds).
pub fn loading(pct: Option<i64>, congested: bool) -> Loading {
    match pct {
        _ if congested => Loading::Full,
        None => Loading::Unlimited,
        Some(p) if p >= 100 => Loading::Full,
        Some(p) if p >= 80 => Loading::High,
        Some(_) => Loading::Normal,
    }
}

/// One branch of the feeder tree as the Grid page draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchView {
    /// The child node.
    pub node: String,
    /// Its parent.
    pub parent: String,
    /// Depth below the root (feeders are 1).
    pub depth: usize,
    /// Flow into the subtree in the latest cleared interval, Wh (negative = export).
    pub flow_wh: i64,
    /// Import limit, Wh per interval.
    pub import_limit_wh: Option<i64>,
    /// Export limit, Wh per interval.
    pub export_limit_wh: Option<i64>,
    /// The limit that applies to the flow's direction.
    pub limit_wh: Option<i64>,
    /// Percentage of that limit in use.
    pub utilisation_pct: Option<i64>,
    /// The loading class.
    pub loading: Loading,
    /// Whether the market reported a binding limit.
    pub congested: bool,
    /// Participants at this node or below it.
    pub participants: usize,
}

/// A gateway with its liveness.
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
}

/// The Grid page.
#[derive(Debug, Clone, Serialize)]
pub struct GridView {
    /// Upstream health (market, settlement, broker).
    pub sources: Sources,
    /// The interval the flows belong to.
    pub interval: Option<String>,
    /// The substation node.
    pub root: Option<String>,
    /// Energy the utility sold into the root in that interval.
    pub utility_import_wh: i64,
    /// Energy the utility bought from the root.
    pub utility_export_wh: i64,
    /// The utility's import limit.
    pub utility_import_limit_wh: Option<i64>,
    /// The utility's export limit.
    pub utility_export_limit_wh: Option<i64>,
    /// Branches in tree order (depth first).
    pub branches: Vec<BranchView>,
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

/// Whether `node` is `ancestor` or lies below it.
pub fn is_within(network: &Network, node: &str, ancestor: &str) -> bool {
    let parents = parents(network);
    let mut current = node;
    for _ in 0..=network.branches.len() {
        if current == ancestor {
            return true;
        }
        match parents.get(current) {
            Some(p) => current = p,
            None => return false,
        }
    }
    false
}

/// The feeder (the root's child) that `node` hangs from.
pub fn feeder_of(network: &Network, node: &str) -> Option<String> {
    let parents = parents(network);
    let mut current = node;
    for _ in 0..=network.branches.len() {
        let parent = parents.get(current)?;
        if *parent == network.root.as_str() {
            return Some(current.to_owned());
        }
        current = parent;
    }
    None
}

/// Builds the Grid page.
pub fn grid(snap: &Snapshot) -> GridView {
    let latest = snap.latest_result();
    let mut view = GridView {
        sources: Sources::of(snap),
        interval: latest.map(|r| r.interval.key()),
        root: None,
        utility_import_wh: latest.map_or(0, |r| r.utility_import.0),
        utility_export_wh: latest.map_or(0, |r| r.utility_export.0),
        utility_import_limit_wh: None,
        utility_export_limit_wh: None,
        branches: Vec::new(),
        gateways: gateways(snap),
    };
    let Some(network) = snap.network() else {
        return view;
    };
    view.root = Some(network.root.to_string());
    view.utility_import_limit_wh = network.utility.import_limit_wh.map(|w| w.0);
    view.utility_export_limit_wh = network.utility.export_limit_wh.map(|w| w.0);
    let flows: HashMap<&str, _> = latest
        .map(|r| r.flows.iter().map(|f| (f.node.as_str(), f)).collect())
        .unwrap_or_default();
    let mut children: BTreeMap<&str, Vec<&gridmesh_protocol::grid::Branch>> = BTreeMap::new();
    for b in &network.branches {
        children.entry(b.parent.as_str()).or_default().push(b);
    }
    let mut stack: Vec<(&str, usize)> = vec![(network.root.as_str(), 0)];
    let mut seen = 0;
    while let Some((node, depth)) = stack.pop() {
        if let Some(kids) = children.get(node) {
            for b in kids.iter().rev() {
                stack.push((b.node.as_str(), depth + 1));
            }
        }
        let Some(branch) = network.branches.iter().find(|b| b.node.as_str() == node) else {
            continue;
        };
        seen += 1;
        if seen > network.branches.len() {
            break;
        }
        let flow = flows.get(node).map_or(Wh(0), |f| f.flow);
        let congested = flows.get(node).is_some_and(|f| f.congested);
        let (import_limit, export_limit) = match flows.get(node) {
            Some(f) => (f.import_limit, f.export_limit),
            None => (branch.import_limit_wh, branch.export_limit_wh),
        };
        let limit = if flow.0 >= 0 {
            import_limit
        } else {
            export_limit
        };
        let pct = utilisation_pct(flow, limit);
        view.branches.push(BranchView {
            node: node.to_owned(),
            parent: branch.parent.to_string(),
            depth,
            flow_wh: flow.0,
            import_limit_wh: import_limit.map(|w| w.0),
            export_limit_wh: export_limit.map(|w| w.0),
            limit_wh: limit.map(|w| w.0),
            utilisation_pct: pct,
            loading: loading(pct, congested),
            congested,
            participants: snap
                .participants
                .iter()
                .filter(|p| is_within(network, p.node.as_str(), node))
                .count(),
        });
    }
    view
}

fn gateways(snap: &Snapshot) -> Vec<GatewayView> {
    snap.gateways
        .iter()
        .map(|g| {
            let live: Option<&GatewayLiveness> = snap.gateway_status.get(g.gateway.as_str());
            GatewayView {
                gateway: g.gateway.to_string(),
                participant: g.participant.to_string(),
                node: g.node.to_string(),
                status: live.map_or_else(|| "unknown".into(), |l| l.status.clone()),
                seen_at: live.map(|l| l.seen_at.to_rfc3339()),
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
    pub kind: String,
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

/// Sums `keys` over the statements of participant `id` (`None` when no statement has them).
fn statement_sum(statements: &[Value], id: &str, keys: &[&str]) -> Option<i64> {
    let mut total = None;
    for s in statements {
        if find_str(s, &["participant", "participant_id"]).as_deref() != Some(id) {
            continue;
        }
        let value = find_i64(s, keys).or_else(|| {
            ["delivered", "metered", "energy", "registers"]
                .iter()
                .find_map(|nested| s.get(*nested).and_then(|n| find_i64(n, keys)))
        });
        if let Some(v) = value {
            total = Some(total.unwrap_or(0i64).saturating_add(v));
        }
    }
    total
}

/// The holdings in a balances reply.
pub fn holdings(balance: &Value) -> Vec<Value> {
    as_list(balance.clone(), &["holdings", "lots", "items", "balances"])
}

/// Tokens of one holding.
pub fn holding_amount(holding: &Value) -> i64 {
    find_i64(
        holding,
        &[
            "amount",
            "amount_wh",
            "remaining",
            "remaining_wh",
            "tokens",
            "balance",
        ],
    )
    .unwrap_or(0)
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
            let lots = balance.map(holdings).unwrap_or_default();
            ParticipantRow {
                id: id.to_owned(),
                kind: serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
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
                export_wh: statement_sum(
                    &snap.statements,
                    id,
                    &["exported", "export_wh", "grid_export"],
                )
                .or(metered.map(|m| m.grid_export.0)),
                import_wh: statement_sum(
                    &snap.statements,
                    id,
                    &["imported", "import_wh", "grid_import"],
                )
                .or(metered.map(|m| m.grid_import.0)),
                settled_net: statement_sum(&snap.statements, id, &["net"]),
                tokens_wh: balance.map(|b| {
                    find_i64(b, &["balance", "total", "total_wh", "tokens_wh"])
                        .unwrap_or_else(|| lots.iter().map(holding_amount).sum())
                }),
                lots: lots.len(),
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
    pub status: Option<Value>,
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
    /// `congestion`, `gateway_offline`, `quarantine`, `imbalance` or `service`.
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
        if !health.ok {
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
    for e in congestion_events(&snap.results) {
        out.push(Alert {
            kind: "congestion".into(),
            severity: "warning".into(),
            message: format!(
                "Branch {} at its {} limit: {} Wh of {} Wh",
                e.node,
                if e.flow_wh >= 0 { "import" } else { "export" },
                e.flow_wh.abs(),
                e.limit_wh.map_or_else(|| "?".into(), |l| l.to_string())
            ),
            interval: Some(e.interval),
            subject: e.node,
        });
    }
    for g in gateways(snap).into_iter().filter(|g| g.status == "offline") {
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
        let subject = find_str(q, &["key", "id", "reading_key", "gateway"])
            .unwrap_or_else(|| "reading".into());
        let reason = find_str(q, &["reason", "message", "error"])
            .unwrap_or_else(|| "no reason given".into());
        out.push(Alert {
            kind: "quarantine".into(),
            severity: "warning".into(),
            interval: find_str(q, &["interval", "interval_start"]),
            message: format!("Reading {subject} quarantined: {reason}"),
            subject,
        });
    }
    out.extend(imbalance_spikes(&snap.results, spike_factor));
    out
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
                    "Utility exchange spiked to {now} Wh (median of the previous intervals {median} Wh)"
                ),
            });
        }
    }
    out
}
