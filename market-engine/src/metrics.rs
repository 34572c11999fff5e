//! Counters and gauges, rendered in the Prometheus text format on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The market's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Orders accepted.
    pub orders_accepted: AtomicU64,
    /// Orders rejected (any reason).
    pub orders_rejected: AtomicU64,
    /// Orders cancelled.
    pub orders_cancelled: AtomicU64,
    /// Database write batches for orders.
    pub order_batches: AtomicU64,
    /// Intervals cleared.
    pub intervals_cleared: AtomicU64,
    /// Duration of the last clearing, microseconds.
    pub last_clearing_micros: AtomicU64,
    /// Orders in the last cleared interval.
    pub last_clearing_orders: AtomicU64,
    /// Results published on MQTT.
    pub results_published: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: &AtomicU64| {
            let v = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        metric(
            "gridmesh_market_orders_accepted_total",
            "counter",
            "Orders accepted.",
            &self.orders_accepted,
        );
        metric(
            "gridmesh_market_orders_rejected_total",
            "counter",
            "Orders rejected.",
            &self.orders_rejected,
        );
        metric(
            "gridmesh_market_orders_cancelled_total",
            "counter",
            "Orders cancelled.",
            &self.orders_cancelled,
        );
        metric(
            "gridmesh_market_order_write_batches_total",
            "counter",
            "Database transactions writing orders.",
            &self.order_batches,
        );
        metric(
            "gridmesh_market_intervals_cleared_total",
            "counter",
            "Intervals cleared.",
            &self.intervals_cleared,
        );
        metric(
            "gridmesh_market_last_clearing_duration_microseconds",
            "gauge",
            "Time the last clearing took.",
            &self.last_clearing_micros,
        );
        metric(
            "gridmesh_market_last_clearing_orders",
            "gauge",
            "Orders in the last cleared interval.",
            &self.last_clearing_orders,
        );
        metric(
            "gridmesh_market_results_published_total",
            "counter",
            "Results published on MQTT.",
            &self.results_published,
        );
        out
    }
}
