//! The whole gridmesh neighbourhood in one process tree: the demo launcher and the harness the
//! end-to-end tests use.
//!
//! - [`broker`]: the embedded MQTT broker (demo and embedded-broker tests only);
//! - [`neighbourhood`]: starts meter-sim, a gateway per home, the market, settlement and the
//!   dashboard on one accelerated clock;
//! - [`progress`]: the one-line-per-interval report the demo prints;
//! - [`processes`]: services as OS child processes (binaries, a private Mosquitto, TOML files);
//! - [`invariants`]: "nothing lost, nothing counted twice", checked through settlement's API;
//! - [`delivery`]: which path (MQTT or HTTP) readings took, with a witness on the broker.
pub mod broker;
pub mod delivery;
pub mod invariants;
pub mod neighbourhood;
pub mod processes;
pub mod progress;
