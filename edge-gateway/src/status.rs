//! Live status shared by the pipeline tasks, shown on `/healthz` and `/metrics`.
//!
//! Metrics are written in the Prometheus text format by `gridmesh_runtime::metrics`:
//! names follow `gridmesh_gateway_<name>_<unit>[_total]`.

use gridmesh_runtime::metrics::{Exposition, MetricKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One sample of a metric family: its labels and value.
type Sample = (Vec<(&'static str, String)>, u64);

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
    /// Clock steps detected.
    pub clock_steps: u64,
}

/// The shared status.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<Snapshot>,
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
        let one = |v: u64| vec![(Vec::new(), v)];
        let per_device = |f: &dyn Fn(&DeviceStatus) -> u64| -> Vec<Sample> {
            s.devices
                .iter()
                .map(|(name, d)| (vec![("device", name.clone())], f(d)))
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
                (vec![("path", "mqtt".to_owned())], s.delivered_mqtt),
                (vec![("path", "http".to_owned())], s.delivered_http),
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
