//! The whole gridmesh neighbourhood in one process tree: the demo launcher and the harness the
//! end-to-end tests use.
//!
//! - [`broker`]: the embedded MQTT broker (demo and embedded-broker tests only).
pub mod broker;
