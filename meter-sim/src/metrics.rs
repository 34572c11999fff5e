//! The simulator's metrics, in the Prometheus text format of `gridmesh_runtime::metrics`.

use crate::state::Simulator;
use gridmesh_runtime::metrics::{Exposition, MetricKind};
use std::sync::atomic::Ordering;

/// Renders every metric in the Prometheus text exposition format.
pub fn render(sim: &Simulator) -> String {
    let s = &sim.shared.stats;
    let (curtailed_wh, limits_active) = sim.pv_curtailment();
    let mut out = Exposition::new();
    let mut metric = |name: &str, kind: MetricKind, help: &str, value: f64| {
        out.single(name, kind, help, value);
    };
    metric(
        "gridmesh_sim_homes",
        MetricKind::Gauge,
        "Simulated homes.",
        sim.homes().len() as f64,
    );
    metric(
        "gridmesh_sim_simulated_time_seconds",
        MetricKind::Gauge,
        "Simulated Unix time the physics has reached.",
        s.physics_time.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_speed_ratio",
        MetricKind::Gauge,
        "Simulated seconds per real second.",
        sim.clock().speed(),
    );
    metric(
        "gridmesh_sim_physics_steps_total",
        MetricKind::Counter,
        "Physics steps taken over all homes.",
        s.steps.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_modbus_requests_total",
        MetricKind::Counter,
        "Modbus requests received.",
        s.modbus_requests.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_modbus_exceptions_total",
        MetricKind::Counter,
        "Modbus requests answered with an exception.",
        s.modbus_exceptions.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_modbus_dropped_connections_total",
        MetricKind::Counter,
        "Connections closed by the drop fault.",
        s.dropped_connections.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_mqtt_published_total",
        MetricKind::Counter,
        "MQTT device messages published.",
        s.mqtt_published.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_faults_active",
        MetricKind::Gauge,
        "Lasting faults now active.",
        sim.faults().len() as f64,
    );
    metric(
        "gridmesh_sim_pv_curtailed_wh_total",
        MetricKind::Counter,
        "PV energy withheld by inverter power limits (SunSpec model 123), all homes, Wh.",
        curtailed_wh as f64,
    );
    metric(
        "gridmesh_sim_pv_limits_active",
        MetricKind::Gauge,
        "Inverters whose model 123 power limit is enabled and not reverted.",
        limits_active as f64,
    );
    out.finish()
}
