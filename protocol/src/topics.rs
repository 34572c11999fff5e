//! MQTT topic names (one place, so publishers and subscribers cannot disagree).

use crate::ids::GatewayId;
use crate::interval::Interval;

/// Prefix of every gridmesh topic.
pub const ROOT: &str = "gridmesh";

/// Where a gateway publishes its signed readings (QoS 1, JSON [`SignedEnvelope`]).
///
/// [`SignedEnvelope`]: crate::signing::SignedEnvelope
pub fn readings(gateway: &GatewayId) -> String {
    format!("{ROOT}/readings/{gateway}")
}

/// The filter settlement subscribes to for all readings.
pub const READINGS_FILTER: &str = "gridmesh/readings/+";

/// A gateway's retained online/offline status (its last will is `offline`).
pub fn gateway_status(gateway: &GatewayId) -> String {
    format!("{ROOT}/gateways/{gateway}/status")
}

/// The filter for all gateway statuses.
pub const GATEWAY_STATUS_FILTER: &str = "gridmesh/gateways/+/status";

/// The retained clearing result of one interval in one zone (JSON `IntervalResult`).
pub fn result(zone: &str, interval: &Interval) -> String {
    format!(
        "{ROOT}/results/{zone}/{}",
        interval.start().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// The filter for all results of all zones.
pub const RESULTS_FILTER: &str = "gridmesh/results/#";
