//! Counters and gauges, rendered in the Prometheus text format on `/metrics`.

use gridmesh_runtime::metrics::{Exposition, MetricKind};
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
    /// Signed operating envelopes issued (one per gateway and cleared interval).
    pub envelopes_issued: AtomicU64,
    /// Signed operating envelopes published on MQTT (acknowledged by the broker).
    pub envelopes_published: AtomicU64,
    /// Time the last envelope allocation took, microseconds.
    pub last_envelopes_micros: AtomicU64,
    /// MQTT messages dropped because they exceed the broker connection's packet size.
    pub mqtt_oversized: AtomicU64,
    /// Time single orders (`POST /orders`) spent in each stage of intake.
    pub order_stages: OrderStages,
}

/// Where single orders' time goes (`POST /orders`): summed microseconds per stage, and how many
/// orders were timed. Divide a stage's sum by the count for its mean.
#[derive(Debug, Default)]
pub struct OrderStages {
    /// Orders timed (each that reached the stage it stopped at is counted once).
    pub orders: AtomicU64,
    /// Decoding the JSON body into a signed envelope.
    pub decode_micros: AtomicU64,
    /// Claim checks (layout, participant, key) before the signature.
    pub claim_micros: AtomicU64,
    /// Waiting for the verification stage and verifying.
    pub verify_micros: AtomicU64,
    /// Market checks and the gate: from the verified signature until the order is queued for
    /// the database.
    pub admit_micros: AtomicU64,
    /// From queued for the database until its transaction committed.
    pub store_micros: AtomicU64,
}

impl OrderStages {
    /// Adds `since`'s elapsed time to a stage's sum.
    pub fn add(stage: &AtomicU64, since: std::time::Instant) {
        stage.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Exposition::new();
        let mut metric = |name: &str, kind: MetricKind, help: &str, value: &AtomicU64| {
            out.single(name, kind, help, value.load(Ordering::Relaxed));
        };
        metric(
            "gridmesh_market_orders_accepted_total",
            MetricKind::Counter,
            "Orders accepted.",
            &self.orders_accepted,
        );
        metric(
            "gridmesh_market_orders_rejected_total",
            MetricKind::Counter,
            "Orders rejected.",
            &self.orders_rejected,
        );
        metric(
            "gridmesh_market_orders_cancelled_total",
            MetricKind::Counter,
            "Orders cancelled.",
            &self.orders_cancelled,
        );
        metric(
            "gridmesh_market_order_write_batches_total",
            MetricKind::Counter,
            "Database transactions writing orders.",
            &self.order_batches,
        );
        metric(
            "gridmesh_market_intervals_cleared_total",
            MetricKind::Counter,
            "Intervals cleared.",
            &self.intervals_cleared,
        );
        metric(
            "gridmesh_market_last_clearing_duration_microseconds",
            MetricKind::Gauge,
            "Time the last clearing took.",
            &self.last_clearing_micros,
        );
        metric(
            "gridmesh_market_last_clearing_orders",
            MetricKind::Gauge,
            "Orders in the last cleared interval.",
            &self.last_clearing_orders,
        );
        metric(
            "gridmesh_market_results_published_total",
            MetricKind::Counter,
            "Results published on MQTT.",
            &self.results_published,
        );
        metric(
            "gridmesh_market_envelopes_issued_total",
            MetricKind::Counter,
            "Signed operating envelopes issued (one per gateway and cleared interval).",
            &self.envelopes_issued,
        );
        metric(
            "gridmesh_market_envelopes_published_total",
            MetricKind::Counter,
            "Signed operating envelopes published on MQTT.",
            &self.envelopes_published,
        );
        metric(
            "gridmesh_market_last_envelopes_duration_microseconds",
            MetricKind::Gauge,
            "Time the last envelope allocation took.",
            &self.last_envelopes_micros,
        );
        metric(
            "gridmesh_market_mqtt_oversized_total",
            MetricKind::Counter,
            "MQTT messages not published because they exceed the packet size limit.",
            &self.mqtt_oversized,
        );
        let stages = &self.order_stages;
        out.single(
            "gridmesh_market_single_orders_timed_total",
            MetricKind::Counter,
            "Single orders (POST /orders) whose intake stages were timed.",
            stages.orders.load(Ordering::Relaxed),
        );
        let mut family = out.family(
            "gridmesh_market_single_order_stage_microseconds_total",
            MetricKind::Counter,
            "Time single orders spent per intake stage (decode, claim, verify, admit, store).",
        );
        for (stage, value) in [
            ("decode", &stages.decode_micros),
            ("claim", &stages.claim_micros),
            ("verify", &stages.verify_micros),
            ("admit", &stages.admit_micros),
            ("store", &stages.store_micros),
        ] {
            family.sample(&[("stage", stage)], value.load(Ordering::Relaxed));
        }
        drop(family);
        out.finish()
    }
}
