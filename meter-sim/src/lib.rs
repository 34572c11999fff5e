//! meter-sim: a neighbourhood of SunSpec inverters, batteries and grid meters that real clients
//! can read, driven by deterministic physics, with fault injection and ground truth.
//!
//! Each home gets one Modbus TCP port (`base_port + i`, or an ephemeral port when the base port
//! is 0) with three devices behind it:
//!
//! | unit | device | SunSpec models (map at 40000) | energy counter |
//! |---|---|---|---|
//! | 1 | PV inverter | 1, 103, 123 | 103 `WH` (acc32, Wh, SF 0) = PV energy; 123 `WMaxLimPct` power limit |
//! | 2 | battery | 1, 124, 802, 701 | 701 `TotWhAbs` = charge, `TotWhInj` = discharge (uint64, Wh, `TotWh_SF` 0) |
//! | 3 | grid meter | 1, 203 | 203 `TotWhImp` / `TotWhExp` (acc32, Wh, SF 0) |
//!
//! Models 124 and 802 have no energy counters, so the battery also exposes the standard DER AC
//! measurement model 701 for its inverter's AC side: energy *absorbed* from the AC bus is
//! charge, energy *injected* is discharge. Signs follow the field: meter `W` + = import,
//! battery `W` + = discharge. Every counter is the floor of the physics' accumulated Wh, so
//! register deltas between two reads taken at interval boundaries equal
//! [`Simulator::ground_truth`] exactly.
//!
//! The inverter obeys SunSpec model 123's power limit (`WMaxLimPct`, `WMaxLim_Ena`,
//! `WMaxLimPct_RvrtTms`): while it is enabled and not reverted, PV = min(available, limit ×
//! rating). The ground truth also reports the available and curtailed PV and the battery's
//! headroom, so tests can check that batteries take the surplus before PV is curtailed.
//!
//! # Modules
//!
//! - [`scenario`]: the TOML scenario and its validation;
//! - [`weather`]: sun, clouds and household load as pure functions of time;
//! - [`home`]: one home's physics, counters, battery controller and ground-truth history;
//! - [`sunspec`]: model layouts, sentinels and register rendering;
//! - [`modbus`]: the tokio-modbus servers and how faults change their answers;
//! - [`faults`]: the fault kinds and what each does;
//! - [`manifest`]: the JSON description of every device;
//! - [`state`]: the shared state every server uses, the running [`Simulator`], status and
//!   ground truth;
//! - [`error`]: why starting or a request failed ([`SimError`]);
//! - [`sim`]: [`start`], which builds the state and starts the servers and the physics;
//! - [`control`]: the control/status HTTP API;
//! - [`mqtt_devices`]: Tasmota, Shelly Gen2 and OpenDTU emulation;
//! - [`metrics`]: Prometheus text.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), meter_sim::SimError> {
//! use gridmesh_runtime::{clock::Clock, shutdown::Shutdown};
//! let scenario = meter_sim::Scenario::small(3, 7);
//! let clock = Clock::scaled(scenario.start.unwrap(), 60.0);
//! let shutdown = Shutdown::new();
//! shutdown.trigger_on_signals();
//! let sim = meter_sim::start(scenario, clock, &shutdown).await?;
//! for home in sim.manifest().homes {
//!     println!("{} on port {}", home.id, home.devices[0].port);
//! }
//! // Runs until Ctrl-C or SIGTERM, then waits for every task.
//! shutdown.wait().await;
//! # Ok(()) }
//! ```

pub mod control;
pub mod error;
pub mod faults;
pub mod home;
pub mod manifest;
pub mod metrics;
pub mod modbus;
pub mod mqtt_devices;
pub mod scenario;
pub mod sim;
pub mod state;
pub mod sunspec;
pub mod weather;

pub use error::SimError;
pub use faults::{DeviceKind, Fault};
pub use manifest::{Manifest, ManifestDevice, ManifestHome};
pub use scenario::{Homes, Scenario, ScenarioError};
pub use sim::start;
pub use state::{HomeStatus, Simulator, Status, TrueEnergy};
