//! The dashboard's picture of the neighbourhood: the last data read from each service, and
//! whether each service is reachable right now.
//!
//! A snapshot is replaced whole after every refresh, so a page never sees half an update.
//! When a service is down its last data stays (marked stale by its health), so the page keeps
//! showing something useful next to "market unreachable at URL".

use chrono::{DateTime, Utc};
use gridmesh_protocol::api::market::{BookDepth, MarketStatus};
use gridmesh_protocol::api::settlement::{Balances, BlockSummary, QuarantineItem, Statement};
use gridmesh_protocol::envelope::{ControlStatus, EnvelopeAlert, MeasuredFlows};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::reading::Registers;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use serde::Serialize;
use std::collections::BTreeMap;

/// Whether one upstream answered on the last refresh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceHealth {
    /// The base URL polled.
    pub url: String,
    /// Whether the last refresh reached it.
    pub ok: bool,
    /// The last error, in words a user can act on.
    pub error: Option<String>,
    /// When it last answered.
    pub last_ok: Option<DateTime<Utc>>,
    /// Refreshes that failed in a row.
    pub consecutive_failures: u64,
}

impl SourceHealth {
    /// A source not polled yet.
    pub fn new(url: &str) -> Self {
        SourceHealth {
            url: url.to_owned(),
            ok: false,
            error: Some("not contacted yet".into()),
            last_ok: None,
            consecutive_failures: 0,
        }
    }

    /// Records a successful refresh.
    pub fn succeeded(&mut self, at: DateTime<Utc>) {
        self.ok = true;
        self.error = None;
        self.last_ok = Some(at);
        self.consecutive_failures = 0;
    }

    /// Records a failed refresh.
    pub fn failed(&mut self, error: String) {
        self.ok = false;
        self.error = Some(error);
        self.consecutive_failures += 1;
    }
}

/// A gateway's liveness as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayLiveness {
    /// `online`, `offline` or `unknown`.
    pub status: String,
    /// Where the status came from (`mqtt` retained status or `readings`).
    pub source: String,
    /// When it was observed.
    pub seen_at: DateTime<Utc>,
}

/// Everything the pages are built from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Bumped whenever the data changes.
    pub version: u64,
    /// When the last refresh finished.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// The market's reachability.
    pub market: SourceHealth,
    /// Settlement's reachability.
    pub settlement: SourceHealth,
    /// The broker's reachability, when one is configured.
    pub broker: Option<SourceHealth>,
    /// The market's `GET /status` document.
    pub status: Option<MarketStatus>,
    /// The current topology.
    pub topology: Option<Network>,
    /// Cleared intervals, oldest first (at most the configured history).
    pub results: Vec<IntervalResult>,
    /// Registered participants.
    pub participants: Vec<Participant>,
    /// Enrolled gateways.
    pub gateways: Vec<GatewayEnrollment>,
    /// The start (RFC 3339) of the next interval open for orders, if the market says.
    pub next_interval: Option<String>,
    /// That interval's order-book depth as the market reports it.
    pub book: Option<BookDepth>,
    /// Settlement's quarantined readings.
    pub quarantine: Vec<QuarantineItem>,
    /// The newest ledger blocks, newest first.
    pub blocks: Vec<BlockSummary>,
    /// Settlement statements (all participants, newest intervals).
    pub statements: Vec<Statement>,
    /// Token holdings per participant, as settlement reports them.
    pub balances: BTreeMap<String, Balances>,
    /// Gateway liveness by gateway id.
    pub gateway_status: BTreeMap<String, GatewayLiveness>,
    /// Interval deltas of signed readings seen on the broker (verified), by gateway id then
    /// interval key.
    pub readings: BTreeMap<String, BTreeMap<String, Registers>>,
    /// Measured flows per interval from settlement's verified readings (`GET /flows`), oldest
    /// first (at most the configured history).
    pub measured_flows: Vec<MeasuredFlows>,
    /// Homes that exceeded their operating envelope in consecutive intervals (settlement's
    /// `GET /compliance/alerts`).
    pub envelope_alerts: Vec<EnvelopeAlert>,
    /// Each gateway's latest control status from its retained `…/control` topic, by gateway id.
    pub control: BTreeMap<String, ControlStatus>,
}

impl Snapshot {
    /// The newest cleared interval.
    pub fn latest_result(&self) -> Option<&IntervalResult> {
        self.results.last()
    }

    /// The newest interval with measured flows in which at least one home reported.
    pub fn latest_measured(&self) -> Option<&MeasuredFlows> {
        self.measured_flows
            .iter()
            .rev()
            .find(|m| m.branches.iter().any(|b| b.homes_reporting > 0))
    }

    /// The held clearing result of the interval starting at `start`.
    pub fn result_for(&self, interval: &gridmesh_protocol::Interval) -> Option<&IntervalResult> {
        self.results
            .binary_search_by(|r| r.interval.start().cmp(&interval.start()))
            .ok()
            .map(|i| &self.results[i])
    }

    /// The topology in force: the market's current one, else the latest result's.
    pub fn network(&self) -> Option<&Network> {
        self.topology
            .as_ref()
            .or_else(|| self.latest_result().map(|r| &r.network))
    }

    /// A fingerprint of the data (not the health timestamps), to tell whether anything changed.
    pub fn data_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let data = Fingerprint {
            m: self.market.ok,
            me: &self.market.error,
            s: self.settlement.ok,
            se: &self.settlement.error,
            b: self.broker.as_ref().map(|b| b.ok),
            st: self.status.as_ref().map(|s| &s.next_open_interval),
            t: &self.topology,
            r: self.results.last().map(|r| (&r.interval, r.cleared_at)),
            rn: self.results.len(),
            p: &self.participants,
            g: &self.gateways,
            bk: &self.book,
            q: &self.quarantine,
            bl: &self.blocks,
            sm: &self.statements,
            ba: &self.balances,
            gs: self
                .gateway_status
                .iter()
                .map(|(k, v)| (k, &v.status))
                .collect(),
            rd: self.readings.iter().map(|(k, v)| (k, v.len())).collect(),
            mf: &self.measured_flows,
            ea: &self.envelope_alerts,
            ct: &self.control,
        };
        let text = serde_json::to_string(&data).expect("snapshots serialise");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        hasher.finish()
    }
}

/// What [`Snapshot::data_fingerprint`] hashes: the data, without health timestamps.
#[derive(Serialize)]
struct Fingerprint<'a> {
    m: bool,
    me: &'a Option<String>,
    s: bool,
    se: &'a Option<String>,
    b: Option<bool>,
    st: Option<&'a gridmesh_protocol::Interval>,
    t: &'a Option<Network>,
    r: Option<(&'a gridmesh_protocol::Interval, DateTime<Utc>)>,
    rn: usize,
    p: &'a [Participant],
    g: &'a [GatewayEnrollment],
    bk: &'a Option<BookDepth>,
    q: &'a [QuarantineItem],
    bl: &'a [BlockSummary],
    sm: &'a [Statement],
    ba: &'a BTreeMap<String, Balances>,
    gs: Vec<(&'a String, &'a String)>,
    rd: Vec<(&'a String, usize)>,
    mf: &'a [MeasuredFlows],
    ea: &'a [EnvelopeAlert],
    ct: &'a BTreeMap<String, ControlStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_transitions() {
        let mut h = SourceHealth::new("http://x");
        assert!(!h.ok);
        h.failed("market unreachable".into());
        h.failed("market unreachable".into());
        assert_eq!(h.consecutive_failures, 2);
        h.succeeded(Utc::now());
        assert!(h.ok && h.error.is_none() && h.consecutive_failures == 0);
    }
}
