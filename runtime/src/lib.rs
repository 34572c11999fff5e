//! I/O plumbing shared by the gridmesh services.
//!
//! The protocol crate says *what* crosses a process boundary; this crate holds the few pieces of
//! *how* that every service needs and that should behave the same everywhere:
//!
//! - [`clock`]: wall-clock or accelerated time that every service agrees on;
//! - [`config`]: TOML config files with environment overrides and errors that name the line;
//! - [`telemetry`]: `tracing` set-up;
//! - [`metrics`]: the Prometheus text encoder behind every `/metrics`;
//! - [`shutdown`]: one shutdown signal for every task, and waiting for them all;
//! - [`failpoint`]: named places where a process aborts on purpose (`GRIDMESH_FAILPOINT`), for
//!   crash tests of the real binaries;
//! - [`mqtt`] (feature `mqtt`): an MQTT session that reconnects with backoff, re-subscribes on
//!   every connection, confirms QoS 1 publishes by their PUBACK and lets the consumer
//!   acknowledge incoming messages only after it has stored them;
//! - [`db`] (feature `db`): sqlx pools over SQLite or PostgreSQL with per-back-end migrations;
//! - [`http`] (feature `http`): the HTTP kit of every server: `{code, message}` errors and
//!   extractor rejections, the bearer-token check, SSE from a broadcast channel, the
//!   trace, timeout, body-limit and concurrency layers, and `serve`: header read and idle
//!   timeouts, a connection limit, HTTPS from PEM files (rustls) and graceful shutdown;
//! - [`testing`] (feature `testing`, dev-dependencies only): hostile bodies and ids, an
//!   announced oversized body and clear-refusal assertions for the services' HTTP tests.
//!
//! It knows nothing of markets, meters or ledgers.

pub mod clock;
pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod failpoint;
#[cfg(feature = "http")]
pub mod http;
pub mod metrics;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
