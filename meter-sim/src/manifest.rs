//! The manifest: every device of every home, where to reach it and what it is.
//!
//! Its JSON shape (written by `--manifest PATH` and served at `GET /manifest`):
//!
//! ```json
//! {"homes":[{"id":"h001","feeder":"f1","pv_kwp":6.0,"battery_kwh":10.0,"inverter_w":6000,
//!   "battery_w":5000,"annual_load_kwh":4000.0,"latitude":48.14,"longitude":11.58,
//!   "devices":[{"kind":"inverter","host":"127.0.0.1","port":15020,"unit":1,"models":[1,103],
//!               "base_address":40000,"serial":"h001-INV"}, ...]}]}
//! ```
//!
//! A device that is also (or only) published over MQTT carries an `mqtt` object with its
//! format and topic.

use crate::faults::DeviceKind;
use serde::{Deserialize, Serialize};

/// Every simulated device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// One entry per home, in scenario order.
    pub homes: Vec<ManifestHome>,
}

/// One home.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestHome {
    /// Home id, for example `h001`.
    pub id: String,
    /// Feeder node id, for example `f1`.
    pub feeder: String,
    /// PV peak power in kWp (0 = no PV inverter).
    pub pv_kwp: f64,
    /// Battery capacity in kWh (0 = no battery).
    pub battery_kwh: f64,
    /// PV inverter AC rating in W.
    pub inverter_w: u32,
    /// Battery charge/discharge rating in W.
    pub battery_w: u32,
    /// Annual consumption in kWh.
    pub annual_load_kwh: f64,
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
    /// The home's devices.
    pub devices: Vec<ManifestDevice>,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestDevice {
    /// `inverter`, `battery` or `meter`.
    pub kind: DeviceKind,
    /// Modbus TCP host.
    pub host: String,
    /// Modbus TCP port (0 if the device is only on MQTT).
    pub port: u16,
    /// Modbus unit id (inverter 1, battery 2, meter 3).
    pub unit: u8,
    /// SunSpec model ids after the "SunS" marker, in map order.
    pub models: Vec<u16>,
    /// First register of the SunSpec map.
    pub base_address: u16,
    /// Serial number (also in model 1 `SN`).
    pub serial: String,
    /// MQTT publication of this device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttEndpoint>,
}

/// How a device appears on MQTT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MqttEndpoint {
    /// Broker URL.
    pub broker: String,
    /// `tasmota`, `shelly` or `opendtu`.
    pub format: String,
    /// The main topic (Tasmota `tele/<t>/SENSOR`, Shelly `<id>/status/emdata:0`, OpenDTU
    /// `solar/<serial>/0/yieldtotal`).
    pub topic: String,
}

impl Manifest {
    /// The home with this id.
    pub fn home(&self, id: &str) -> Option<&ManifestHome> {
        self.homes.iter().find(|h| h.id == id)
    }
}

impl ManifestHome {
    /// The device of this kind, if the home has one.
    pub fn device(&self, kind: DeviceKind) -> Option<&ManifestDevice> {
        self.devices.iter().find(|d| d.kind == kind)
    }
}
