//! The gridmesh edge gateway: the homeowner's Raspberry Pi that reads the home's inverter,
//! battery and grid meter, signs what was metered per delivery interval, never loses a reading,
//! and bids for the household.
//!
//! The pipeline, one module per stage, with bounded channels between the tasks:
//!
//! - [`config`]: the TOML config, environment overrides, validation with fixes;
//! - [`modbus`], [`sunspec`], [`mqtt_devices`], [`reader`]: reading devices (Modbus TCP, RTU,
//!   RTU over TCP with SunSpec discovery; Tasmota, Shelly, OpenDTU over MQTT) into [`sample`]s;
//! - [`accountant`]: interval energy from cumulative counters, with resets, wraps, missed
//!   boundaries and clock steps flagged (pure);
//! - [`outbox`]: signing into the protocol's [`Reading`](gridmesh_protocol::Reading) and the
//!   durable SQLite outbox, with the sequence number and resume state in the same transaction;
//! - [`uplink`]: delivery by MQTT QoS 1 (PUBACK) or HTTP to settlement, in order, with backoff;
//! - [`agent`] (pure) and [`agent_loop`]: the household bidding agent and battery steering;
//! - [`envelope`]: the market's signed operating envelopes (verified with the pinned key) and
//!   the envelope in force, or the default; [`control`] (pure core): keeping the home inside
//!   it, battery first, then PV curtailment through SunSpec model 123;
//! - [`status`] and [`health`]: `/healthz` and Prometheus `/metrics`;
//! - [`local_page`]: the homeowner's password-protected page on the LAN (live flows, today's
//!   intervals, settlement's statements and tokens); [`home_assistant`]: MQTT discovery to the
//!   household's own broker;
//! - [`detect`]: the `detect HOST` scan; [`enroll`]: registration with the market;
//! - [`tls`]: `mqtts://` and `https://` with rustls (configurable CA, client certificate);
//! - [`gateway`]: wiring it all up ([`run`]).
//!
//! Architecture invariant: the gateway knows nothing of clearing or settlement rules, and pulls
//! in neither an LP solver nor a PostgreSQL driver.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), edge_gateway::GatewayError> {
//! use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
//! let mut config = GatewayConfig::default();
//! config.devices.push(DeviceConfig::modbus_tcp("inverter", Role::Inverter, "127.0.0.1", 15020, 1));
//! config.health_listen = "127.0.0.1:0".into();
//! let shutdown = gridmesh_runtime::shutdown::Shutdown::new();
//! shutdown.trigger_on_signals();
//! let running = edge_gateway::run(config, gridmesh_runtime::clock::Clock::system(), shutdown.clone()).await?;
//! println!("health on {}", running.health_addr);
//! // Runs until Ctrl-C or SIGTERM, then waits for every task.
//! shutdown.wait().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod accountant;
pub mod agent;
pub mod agent_loop;
pub mod config;
pub mod control;
pub mod detect;
pub mod enroll;
pub mod envelope;
pub mod gateway;
pub mod health;
pub mod home_assistant;
pub mod local_page;
pub mod modbus;
pub mod mqtt_devices;
pub mod outbox;
pub mod reader;
pub mod sample;
pub mod statement;
pub mod status;
pub mod sunspec;
pub mod tls;
pub mod uplink;

pub use config::GatewayConfig;
pub use gateway::{GatewayError, KeySource, RunningGateway, run, run_with_key};
