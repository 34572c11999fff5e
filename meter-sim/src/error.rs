//! Why the simulator could not start or could not do what was asked.

use crate::faults::DeviceKind;
use crate::scenario::ScenarioError;

/// Why the simulator could not start or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A Modbus port could not be bound.
    #[error(
        "cannot listen on {addr} for home {home}: {source}; pick a free base port (or 0 for ephemeral ports) with --base-port"
    )]
    Bind {
        /// The home.
        home: String,
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The control API's address could not be bound.
    #[error(
        "cannot listen on {addr} for the control API: {source}; choose a free address with --control"
    )]
    ControlBind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No home has this id.
    #[error("no home is called `{0}`; see GET /manifest for the ids")]
    UnknownHome(String),
    /// The home has no such device (for example no battery).
    #[error("home {home} has no {device}")]
    NoDevice {
        /// The home.
        home: String,
        /// The device.
        device: DeviceKind,
    },
    /// The MQTT emulation could not start.
    #[error("MQTT device emulation cannot start: {0}")]
    Mqtt(#[from] gridmesh_runtime::mqtt::MqttError),
}
