//! Counters in the Prometheus text format (a small hand-written encoder, no registry needed).

use gridmesh_runtime::metrics::{Exposition, MetricKind};
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Readings accepted.
    pub readings_accepted: Counter,
    /// Readings accepted that arrived over MQTT (of `readings_accepted`).
    pub readings_accepted_mqtt: Counter,
    /// Readings accepted that arrived over REST, `POST /readings` (of `readings_accepted`).
    pub readings_accepted_rest: Counter,
    /// Readings acknowledged again as duplicates.
    pub readings_duplicate: Counter,
    /// Readings quarantined (including flagged and late ones).
    pub readings_quarantined: Counter,
    /// Intervals settled.
    pub intervals_settled: Counter,
    /// Blocks sealed.
    pub blocks_sealed: Counter,
    /// Tokens minted, Wh.
    pub tokens_minted_wh: Counter,
    /// Tokens transferred, Wh.
    pub tokens_transferred_wh: Counter,
    /// Tokens retired, Wh.
    pub tokens_retired_wh: Counter,
    /// Failed polls of the market.
    pub source_errors: Counter,
    /// Market results refused (signature, digest or body did not verify).
    pub results_refused: Counter,
    /// Home-intervals whose metered export or import exceeded the operating envelope.
    pub envelope_violations: Counter,
    /// Export beyond operating envelopes, Wh.
    pub envelope_excess_wh: Counter,
    /// Envelope alerts raised (a home over its envelope in two consecutive settled intervals).
    pub envelope_alerts: Counter,
    /// MQTT messages acknowledged and dropped unread because they were oversized.
    pub mqtt_dropped: Counter,
    /// Junk submissions answered but not stored: the sample budget was spent.
    pub quarantine_samples_dropped: Counter,
    /// `POST /readings` batches refused: unauthenticated (401) or over the gateway's rate (429).
    pub uploads_refused: Counter,
    /// Readings of not-yet-enrolled gateways held, and re-admitted once enrolled.
    pub readings_held: Counter,
}

impl Metrics {
    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = Exposition::new();
        let items: [(&str, &str, &Counter); 19] = [
            (
                "gridmesh_settlement_readings_accepted_total",
                "Signed readings verified and stored.",
                &self.readings_accepted,
            ),
            (
                "gridmesh_settlement_readings_accepted_mqtt_total",
                "Signed readings verified and stored that arrived over MQTT.",
                &self.readings_accepted_mqtt,
            ),
            (
                "gridmesh_settlement_readings_accepted_rest_total",
                "Signed readings verified and stored that arrived over REST (POST /readings).",
                &self.readings_accepted_rest,
            ),
            (
                "gridmesh_settlement_readings_duplicate_total",
                "Readings acknowledged again as duplicates (counted once).",
                &self.readings_duplicate,
            ),
            (
                "gridmesh_settlement_readings_quarantined_total",
                "Readings quarantined, flagged or late, each with a reason.",
                &self.readings_quarantined,
            ),
            (
                "gridmesh_settlement_intervals_settled_total",
                "Intervals settled.",
                &self.intervals_settled,
            ),
            (
                "gridmesh_settlement_blocks_sealed_total",
                "Ledger blocks sealed.",
                &self.blocks_sealed,
            ),
            (
                "gridmesh_settlement_tokens_minted_wh_total",
                "Tokens minted (1 token = 1 Wh).",
                &self.tokens_minted_wh,
            ),
            (
                "gridmesh_settlement_tokens_transferred_wh_total",
                "Tokens transferred.",
                &self.tokens_transferred_wh,
            ),
            (
                "gridmesh_settlement_tokens_retired_wh_total",
                "Tokens retired.",
                &self.tokens_retired_wh,
            ),
            (
                "gridmesh_settlement_source_errors_total",
                "Failed polls of the market.",
                &self.source_errors,
            ),
            (
                "gridmesh_settlement_results_refused_total",
                "Market results refused because their signature, digest or body did not verify.",
                &self.results_refused,
            ),
            (
                "gridmesh_settlement_envelope_violations_total",
                "Home-intervals whose metered export or import exceeded the operating envelope.",
                &self.envelope_violations,
            ),
            (
                "gridmesh_settlement_envelope_excess_wh_total",
                "Metered export beyond operating envelopes (never tokenized).",
                &self.envelope_excess_wh,
            ),
            (
                "gridmesh_settlement_envelope_alerts_total",
                "Envelope alerts raised (a home over its envelope in two consecutive settled intervals).",
                &self.envelope_alerts,
            ),
            (
                "gridmesh_settlement_mqtt_dropped_total",
                "MQTT messages acknowledged and dropped unread because they exceeded the payload limit (the log names topic and size).",
                &self.mqtt_dropped,
            ),
            (
                "gridmesh_settlement_quarantine_samples_dropped_total",
                "Junk submissions answered but not stored because the hourly sample budget was spent.",
                &self.quarantine_samples_dropped,
            ),
            (
                "gridmesh_settlement_uploads_refused_total",
                "POST /readings batches refused: no valid gateway signature (401) or over the gateway's rate (429).",
                &self.uploads_refused,
            ),
            (
                "gridmesh_settlement_readings_held_total",
                "Readings of not-yet-enrolled gateways held until the market enrols them (MQTT).",
                &self.readings_held,
            ),
        ];
        for (name, help, c) in items {
            out.single(name, MetricKind::Counter, help, c.get());
        }
        out.finish()
    }
}
