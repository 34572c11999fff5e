//! The dashboard's picture of the neighbourhood: the last data read from each service, and
//! whether each service is reachable right now.
//!
//! A snapshot is replaced whole after every refresh, so a page never sees half an update.
//! When a service is down its last data stays (marked stale by its health), so the page keeps
//! showing something useful next to "market unreachable at URL".

use chrono::{DateTime, Utc};
use gridmesh_protocol::envelope::{ControlStatus, EnvelopeAlert, MeasuredFlows};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::reading::Registers;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use serde::Serialize;
use serde_json::Value;
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
    pub status: Option<Value>,
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
    pub book: Option<Value>,
    /// Settlement's quarantined readings.
    pub quarantine: Vec<Value>,
    /// The newest ledger blocks.
    pub blocks: Vec<Value>,
    /// Settlement statements (all participants, newest intervals).
    pub statements: Vec<Value>,
    /// Token holdings per participant, as settlement reports them.
    pub balances: BTreeMap<String, Value>,
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
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let data = serde_json::json!({
            "m": self.market.ok, "me": self.market.error, "s": self.settlement.ok,
            "se": self.settlement.error, "b": self.broker.as_ref().map(|b| b.ok),
            "st": self.status.as_ref().and_then(|s| s.get("next_open_interval")).cloned(),
            "t": self.topology, "r": self.results.last().map(|r| (&r.interval, r.cleared_at)),
            "rn": self.results.len(), "p": self.participants, "g": self.gateways,
            "bk": self.book, "q": self.quarantine, "bl": self.blocks, "sm": self.statements,
            "ba": self.balances,
            "gs": self.gateway_status.iter().map(|(k, v)| (k, &v.status)).collect::<Vec<_>>(),
            "rd": self.readings.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>(),
            "mf": self.measured_flows, "ea": self.envelope_alerts, "ct": self.control,
        });
        data.to_string().hash(&mut hasher);
        hasher.finish()
    }
}

/// Reads a string at the first of `keys` present in `value` (objects only). An interval-like
/// object `{ "start": .. }` yields its start.
pub fn find_str(value: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match value.get(*k)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("start").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    })
}

/// Reads an integer at the first of `keys` present in `value`.
pub fn find_i64(value: &Value, keys: &[&str]) -> Option<i64> {
    keys.iter().find_map(|k| {
        let v = value.get(*k)?;
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f.round() as i64))
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}

/// The list inside a reply: the reply itself when it is an array, else the first array-valued
/// field among `keys`.
pub fn as_list(value: Value, keys: &[&str]) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        Value::Object(mut o) => keys
            .iter()
            .find_map(|k| match o.remove(*k) {
                Some(Value::Array(items)) => Some(items),
                _ => None,
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerant_readers() {
        let v = json!({"next_open_interval": {"start": "2026-06-21T12:00:00Z", "minutes": 15},
                       "n": 4.6, "s": "7"});
        assert_eq!(
            find_str(&v, &["next", "next_open_interval"]).as_deref(),
            Some("2026-06-21T12:00:00Z")
        );
        assert_eq!(find_i64(&v, &["n"]), Some(5));
        assert_eq!(find_i64(&v, &["x", "s"]), Some(7));
        assert_eq!(as_list(json!([1, 2]), &[]).len(), 2);
        assert_eq!(
            as_list(json!({"blocks": [1]}), &["items", "blocks"]).len(),
            1
        );
        assert!(as_list(json!({"blocks": 3}), &["blocks"]).is_empty());
    }

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
