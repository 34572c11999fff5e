//! Live status shared by the pipeline tasks, shown on `/healthz` and `/metrics`.
//!
//! Metrics are written in the Prometheus text format by `gridmesh_runtime::metrics`:
//! names follow `gridmesh_gateway_<name>_<unit>[_total]`.

use gridmesh_protocol::envelope::{ControlStatus, EnvelopeSource};
use gridmesh_runtime::metrics::{Exposition, MetricKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One sample of a metric family: its labels and value.
type Sample = (Vec<(&'static str, String)>, i64);

/// One device's health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceStatus {
    /// Whether the last poll succeeded.
    pub ok: bool,
    /// The last error, if the last poll failed.
    pub last_error: Option<String>,
    /// Polls attempted.
    pub polls: u64,
    /// Polls failed.
    pub errors: u64,
}

/// Everything `/healthz` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Per device.
    pub devices: BTreeMap<String, DeviceStatus>,
    /// Readings signed since start.
    pub readings_signed: u64,
    /// Readings delivered over MQTT (PUBACK) since start.
    pub delivered_mqtt: u64,
    /// Readings delivered over HTTP since start.
    pub delivered_http: u64,
    /// Failed delivery attempts since start.
    pub delivery_failures: u64,
    /// Readings waiting in the outbox.
    pub outbox_count: u64,
    /// Bytes waiting in the outbox.
    pub outbox_bytes: u64,
    /// Readings dropped because the outbox was full.
    pub outbox_dropped: u64,
    /// Orders accepted by the market.
    pub orders_submitted: u64,
    /// Orders refused or not delivered.
    pub orders_failed: u64,
    /// The last interval signed.
    pub last_interval: Option<String>,
    /// The last sequence number signed.
    pub last_sequence: Option<u64>,
    /// Whether the MQTT session is connected.
    pub mqtt_connected: bool,
    /// Why the last connection to the broker failed, while not connected (for example a broker
    /// certificate the configured CA does not sign).
    pub mqtt_error: Option<String>,
    /// Clock steps detected.
    pub clock_steps: u64,
    /// Whether `market_public_key` is configured (without it only the default envelope applies).
    pub market_key_set: bool,
    /// Market envelopes verified and accepted since start.
    pub envelopes_accepted: u64,
    /// Envelopes refused (bad signature, wrong key, another gateway's) since start.
    pub envelopes_refused: u64,
    /// Why the last envelope was refused.
    pub last_envelope_refusal: Option<String>,
    /// The control loop: envelope in force, metered so far, curtailment.
    pub control: Option<ControlStatus>,
    /// Whether PV can be curtailed: `Some(true)` when the inverter offers SunSpec model 123,
    /// `Some(false)` when it does not (see `pv_curtailment_note`), `None` before discovery.
    pub pv_curtailment_available: Option<bool>,
    /// Why PV cannot be curtailed, when it cannot.
    pub pv_curtailment_note: Option<String>,
    /// The allowed average export power for the rest of the interval, W.
    pub allowed_export_w: Option<i64>,
    /// Control writes (model 123 / 124) sent.
    pub control_writes: u64,
    /// Control writes that failed.
    pub control_write_errors: u64,
    /// Live power flows and counters from the latest polls (the local page, Home Assistant).
    pub live: crate::local_page::Live,
}

/// The shared status.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<Snapshot>,
    /// The household's recent intervals and its settlement data (the local page, Home
    /// Assistant); kept apart so `/healthz` stays small.
    household: Mutex<crate::local_page::Household>,
}

impl Status {
    /// Changes the status.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    /// A copy of the status.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the household view (recent intervals, settlement data).
    pub fn update_household(&self, f: impl FnOnce(&mut crate::local_page::Household)) {
        let mut guard = self.household.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }

    /// Reads the household view without copying all of it.
    pub fn with_household<T>(&self, f: impl FnOnce(&crate::local_page::Household) -> T) -> T {
        f(&self.household.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records a device poll.
    pub fn device_polled(&self, device: &str, error: Option<String>) {
        self.update(|s| {
            let d = s.devices.entry(device.to_owned()).or_default();
            d.polls += 1;
            d.ok = error.is_none();
            if error.is_some() {
                d.errors += 1;
            }
            d.last_error = error;
        });
    }

    /// The Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let s = self.snapshot();
        let mut out = Exposition::new();
        let mut metric = |name: &str, kind: MetricKind, help: &str, samples: &[Sample]| {
            let mut family = out.family(&format!("gridmesh_gateway_{name}"), kind, help);
            for (labels, value) in samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                family.sample(&labels, value);
            }
        };
        let one = |v: u64| vec![(Vec::new(), v as i64)];
        let per_device = |f: &dyn Fn(&DeviceStatus) -> u64| -> Vec<Sample> {
            s.devices
                .iter()
                .map(|(name, d)| (vec![("device", name.clone())], f(d) as i64))
                .collect()
        };
        metric(
            "device_polls_total",
            MetricKind::Counter,
            "Device polls attempted.",
            &per_device(&|d| d.polls),
        );
        metric(
            "device_poll_errors_total",
            MetricKind::Counter,
            "Device polls failed.",
            &per_device(&|d| d.errors),
        );
        metric(
            "device_up",
            MetricKind::Gauge,
            "Whether the last poll succeeded.",
            &per_device(&|d| u64::from(d.ok)),
        );
        metric(
            "readings_signed_total",
            MetricKind::Counter,
            "Readings signed.",
            &one(s.readings_signed),
        );
        metric(
            "readings_delivered_total",
            MetricKind::Counter,
            "Readings delivered, by path.",
            &[
                (vec![("path", "mqtt".to_owned())], s.delivered_mqtt as i64),
                (vec![("path", "http".to_owned())], s.delivered_http as i64),
            ],
        );
        metric(
            "delivery_failures_total",
            MetricKind::Counter,
            "Failed delivery attempts.",
            &one(s.delivery_failures),
        );
        metric(
            "outbox_readings",
            MetricKind::Gauge,
            "Readings waiting in the outbox.",
            &one(s.outbox_count),
        );
        metric(
            "outbox_bytes",
            MetricKind::Gauge,
            "Bytes waiting in the outbox.",
            &one(s.outbox_bytes),
        );
        metric(
            "outbox_dropped_total",
            MetricKind::Counter,
            "Readings dropped because the outbox was full.",
            &one(s.outbox_dropped),
        );
        metric(
            "orders_submitted_total",
            MetricKind::Counter,
            "Orders accepted by the market.",
            &one(s.orders_submitted),
        );
        metric(
            "orders_failed_total",
            MetricKind::Counter,
            "Orders refused or undelivered.",
            &one(s.orders_failed),
        );
        metric(
            "mqtt_connected",
            MetricKind::Gauge,
            "Whether the MQTT session is up.",
            &one(u64::from(s.mqtt_connected)),
        );
        metric(
            "clock_steps_total",
            MetricKind::Counter,
            "Clock steps detected.",
            &one(s.clock_steps),
        );
        metric(
            "market_key_configured",
            MetricKind::Gauge,
            "Whether market_public_key is set (without it the default envelope applies).",
            &one(u64::from(s.market_key_set)),
        );
        metric(
            "envelopes_accepted_total",
            MetricKind::Counter,
            "Market envelopes verified and accepted.",
            &one(s.envelopes_accepted),
        );
        metric(
            "envelopes_refused_total",
            MetricKind::Counter,
            "Envelopes refused (bad signature, foreign key, another gateway's); never applied.",
            &one(s.envelopes_refused),
        );
        metric(
            "control_writes_total",
            MetricKind::Counter,
            "Control writes sent to devices (SunSpec models 123 and 124).",
            &one(s.control_writes),
        );
        metric(
            "control_write_errors_total",
            MetricKind::Counter,
            "Control writes that failed.",
            &one(s.control_write_errors),
        );
        if let Some(available) = s.pv_curtailment_available {
            metric(
                "pv_curtailment_available",
                MetricKind::Gauge,
                "Whether the inverter offers SunSpec model 123, so PV can be curtailed.",
                &one(u64::from(available)),
            );
        }
        if let Some(c) = &s.control {
            let source = |which: EnvelopeSource| i64::from(c.source == which);
            metric(
                "envelope_source",
                MetricKind::Gauge,
                "Where the envelope in force came from (1 on the active source).",
                &[
                    (
                        vec![("source", "market".to_owned())],
                        source(EnvelopeSource::Market),
                    ),
                    (
                        vec![("source", "default".to_owned())],
                        source(EnvelopeSource::Default),
                    ),
                ],
            );
            let single = |v: i64| vec![(Vec::new(), v)];
            metric(
                "envelope_export_limit_wh",
                MetricKind::Gauge,
                "Export limit of the envelope in force for the current interval.",
                &single(c.export_limit_wh.0),
            );
            metric(
                "envelope_import_limit_wh",
                MetricKind::Gauge,
                "Import limit of the envelope in force for the current interval.",
                &single(c.import_limit_wh.0),
            );
            metric(
                "interval_exported_wh",
                MetricKind::Gauge,
                "Grid export metered so far in the current interval.",
                &single(c.exported_wh.0),
            );
            metric(
                "interval_imported_wh",
                MetricKind::Gauge,
                "Grid import metered so far in the current interval.",
                &single(c.imported_wh.0),
            );
            metric(
                "curtailed_wh",
                MetricKind::Gauge,
                "PV energy curtailed so far in the current interval (estimate).",
                &single(c.curtailed_wh.0),
            );
            metric(
                "curtailed_wh_total",
                MetricKind::Counter,
                "PV energy curtailed since start (estimate).",
                &single(c.curtailed_total_wh.0),
            );
            metric(
                "pv_limit_pct",
                MetricKind::Gauge,
                "The inverter's active power limit, % of its rating (100 when not limited).",
                &single(c.pv_limit_pct.map_or(100, i64::from)),
            );
            metric(
                "battery_setpoint_w",
                MetricKind::Gauge,
                "Battery power requested by the control loop (+ discharge, - charge, 0 automatic).",
                &single(c.battery_setpoint_w),
            );
            metric(
                "envelope_violations_in_a_row",
                MetricKind::Gauge,
                "Intervals in a row whose metered export or import exceeded the envelope.",
                &single(i64::from(c.violations_in_a_row)),
            );
        }
        if let Some(w) = s.allowed_export_w {
            metric(
                "allowed_export_w",
                MetricKind::Gauge,
                "Allowed average export power for the rest of the interval.",
                &[(Vec::new(), w)],
            );
        }
        let mut text = out.finish();
        text.push_str("# EOF\n");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_format() {
        let s = Status::default();
        s.device_polled("inv", None);
        s.device_polled("inv", Some("timeout".into()));
        let text = s.metrics();
        assert!(
            text.contains("gridmesh_gateway_device_polls_total{device=\"inv\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("gridmesh_gateway_device_up{device=\"inv\"} 0\n"));
        assert!(text.contains("# TYPE gridmesh_gateway_readings_signed_total counter\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
