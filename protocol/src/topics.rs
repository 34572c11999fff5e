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

/// The retained public view of one interval's clearing result in one zone (JSON
/// [`crate::api::market::PublicResult`]: aggregates and pseudonyms, no household id).
pub fn result(zone: &str, interval: &Interval) -> String {
    format!(
        "{ROOT}/results/{zone}/{}",
        interval.start().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// The filter for all results of all zones.
pub const RESULTS_FILTER: &str = "gridmesh/results/#";

/// A gateway's current operating envelope (retained, QoS 1, JSON [`SignedEnvelope`] of an
/// [`OperatingEnvelope`]): the market republishes it for every interval it clears.
///
/// [`SignedEnvelope`]: crate::signing::SignedEnvelope
/// [`OperatingEnvelope`]: crate::envelope::OperatingEnvelope
pub fn envelope(gateway: &GatewayId) -> String {
    format!("{ROOT}/envelopes/{gateway}")
}

/// The filter for every gateway's envelope.
pub const ENVELOPES_FILTER: &str = "gridmesh/envelopes/+";

/// A gateway's retained control status (JSON `protocol::envelope::ControlStatus`): the
/// envelope in force, compliance so far and curtailed energy. Beside the online/offline
/// [`gateway_status`] topic.
pub fn gateway_control(gateway: &GatewayId) -> String {
    format!("{ROOT}/gateways/{gateway}/control")
}

/// The filter for all gateways' control status.
pub const GATEWAY_CONTROL_FILTER: &str = "gridmesh/gateways/+/control";
