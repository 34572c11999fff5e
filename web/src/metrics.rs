//! Counters for `/metrics`, encoded in the Prometheus text format by
//! `gridmesh_runtime::metrics`.

use gridmesh_runtime::metrics::{Exposition, MetricKind};
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The dashboard's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Completed refresh rounds.
    pub refreshes: Counter,
    /// Refreshes in which the market could not be read.
    pub upstream_errors_market: Counter,
    /// Refreshes in which settlement could not be read.
    pub upstream_errors_settlement: Counter,
    /// Events received from the upstream event streams.
    pub upstream_events: Counter,
    /// HTTP requests served.
    pub requests: Counter,
    /// Browser event streams opened.
    pub browser_streams: Counter,
    /// Control-status messages ignored (malformed, or naming another gateway than their topic).
    pub bad_control_messages: Counter,
}

impl Metrics {
    /// The Prometheus text exposition, with the given gauges appended (`name`, help, value).
    pub fn encode(&self, gauges: &[(&str, &str, i64)]) -> String {
        let mut out = Exposition::new();
        let counters = [
            (
                "gridmesh_web_refreshes_total",
                "Completed refresh rounds of the upstream APIs.",
                &self.refreshes,
            ),
            (
                "gridmesh_web_requests_total",
                "HTTP requests served by the dashboard.",
                &self.requests,
            ),
            (
                "gridmesh_web_upstream_events_total",
                "Events received from upstream event streams.",
                &self.upstream_events,
            ),
            (
                "gridmesh_web_browser_streams_total",
                "Browser event streams opened.",
                &self.browser_streams,
            ),
            (
                "gridmesh_web_control_messages_rejected_total",
                "Gateway control-status messages ignored (malformed or naming another gateway).",
                &self.bad_control_messages,
            ),
        ];
        for (name, help, c) in counters {
            out.single(name, MetricKind::Counter, help, c.get());
        }
        out.family(
            "gridmesh_web_upstream_errors_total",
            MetricKind::Counter,
            "Refreshes in which an upstream service could not be read.",
        )
        .sample(&[("service", "market")], self.upstream_errors_market.get())
        .sample(
            &[("service", "settlement")],
            self.upstream_errors_settlement.get(),
        );
        for (name, help, value) in gauges {
            out.single(name, MetricKind::Gauge, help, value);
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_and_gauges() {
        let m = Metrics::default();
        m.refreshes.inc();
        m.refreshes.inc();
        let text = m.encode(&[("gridmesh_web_up", "Whether up.", 1)]);
        assert!(text.contains("gridmesh_web_refreshes_total 2\n"), "{text}");
        assert!(text.contains("# TYPE gridmesh_web_up gauge\ngridmesh_web_up 1\n"));
        assert!(!text.contains("EOF"));
    }
}
