//! The gridmesh market engine: signed orders in, a welfare-maximising double auction per
//! delivery interval under feeder limits, prices per node, bilateral trades out.
//!
//! Module map (pure core first, I/O at the edges):
//!
//! - [`network`]: the radial tree built and validated from `protocol::grid::Network`;
//! - [`book`]: orders as the clearing sees them, the offline book file, depth per node;
//! - [`clearing`]: the pure core, `clear(topology, orders, rule)`;
//! - [`fast`]: the exact tree algorithm behind it (merit order merged up the tree);
//! - `reference` (feature `reference-lp`): the plain good_lp LP over every order, kept as the
//!   reference for tests and `market-bench`; never linked into the service;
//! - [`prices`]: node prices from duals, pay-as-bid, deterministic tie-breaking;
//! - [`decompose`]: bilateral trades routed along the tree, integer Wh;
//! - [`envelopes`]: operating envelopes per connection point (cleared positions, then the
//!   branches' headroom water-filled max-min fairly);
//! - [`overrides`]: operator limit overrides (validation, applying those in force);
//! - [`public`]: what a result shows to whom (public aggregates per area under pseudonyms, a
//!   participant's own part);
//! - [`store`]: SQLite/PostgreSQL persistence (orders with nonces, immutable results);
//! - [`service`]: order intake with signature, nonce and gate checks; clearing an interval;
//! - [`gate`]: automatic clearing at gate closure and MQTT publishing;
//! - [`api`]: the REST API (axum), [`openapi`]: its OpenAPI document, [`metrics`]: Prometheus;
//! - [`config`], [`error`], [`server`]: configuration, the typed error, and [`serve`].
//!
//! The command line (`serve`, `clear`, `key` and the trader's `order` and `results` commands)
//! is the `market-engine` binary's own (`src/bin/market-engine/`), not part of this library.
//!
//! Architecture invariant: the clearing core (`network`, `book`, `clearing`, `fast`,
//! `prices`, `decompose`, `envelopes`) does no I/O, reads no clock and uses no floats; `reference` is the
//! only place with floating point and is never on the service path.
//!
//! # Example
//!
//! ```
//! use market_engine::book::BookFile;
//! use market_engine::clearing::clear;
//! use market_engine::prices::PricingRule;
//!
//! let book = BookFile::parse(r#"{"network":{"root":"sub","branches":[],
//!     "utility":{"retail_price":30000,"feed_in_price":8000}},
//!     "orders":[{"id":"b1","side":"buy","node":"sub","quantity_wh":1000,"limit_price":35000}]}"#)
//!     .unwrap();
//! let (topology, orders) = book.validate().unwrap();
//! let outcome = clear(&topology, &orders, PricingRule::PayAsClear);
//! assert_eq!(outcome.solution.cleared, vec![1000]);   // bought from the utility
//! assert_eq!(outcome.solution.prices, vec![30000]);   // at the retail price
//! ```

#![warn(missing_docs)]

pub mod access;
pub mod api;
pub mod book;
pub mod broker_acl;
pub mod clearing;
pub mod config;
pub mod decompose;
pub mod enrolment;
pub mod envelopes;
pub mod error;
pub mod fast;
pub mod gate;
pub mod metrics;
pub mod network;
pub mod openapi;
pub mod overrides;
pub mod prices;
pub mod public;
#[cfg(feature = "reference-lp")]
pub mod reference;
pub mod server;
pub mod service;
pub mod store;

pub use config::MarketConfig;
pub use error::MarketError;
pub use server::{RunningMarket, serve};
