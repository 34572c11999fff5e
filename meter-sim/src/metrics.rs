//! A small hand-written Prometheus text encoder for the simulator's metrics.

use crate::sim::Simulator;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Renders every metric in the Prometheus text exposition format.
pub fn render(sim: &Simulator) -> String {
    let s = &sim.shared.stats;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "gridmesh_sim_homes",
        "gauge",
        "Simulated homes.",
        sim.homes().len() as f64,
    );
    metric(
        "gridmesh_sim_simulated_time_seconds",
        "gauge",
        "Simulated Unix time the physics has reached.",
        s.physics_time.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_speed_ratio",
        "gauge",
        "Simulated seconds per real second.",
        sim.clock().speed(),
    );
    metric(
        "gridmesh_sim_physics_steps_total",
        "counter",
        "Physics steps taken over all homes.",
        s.steps.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_modbus_requests_total",
        "counter",
        "Modbus requests received.",
        s.modbus_requests.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_modbus_exceptions_total",
        "counter",
        "Modbus requests answered with an exception.",
        s.modbus_exceptions.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_modbus_dropped_connections_total",
        "counter",
        "Connections closed by the drop fault.",
        s.dropped_connections.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_mqtt_published_total",
        "counter",
        "MQTT device messages published.",
        s.mqtt_published.load(Ordering::Relaxed) as f64,
    );
    metric(
        "gridmesh_sim_faults_active",
        "gauge",
        "Lasting faults now active.",
        sim.faults().len() as f64,
    );
    out
}
