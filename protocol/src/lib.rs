//! Wire types and the canonical signed byte layout shared by every gridmesh service.
//!
//! This crate is the bottom of the dependency graph. It owns every type that crosses a
//! process boundary and does no I/O beyond reading and writing key files:
//!
//! - [`units`]: energy in integer Wh, money in integer minor units, prices in minor units per MWh;
//! - [`ids`]: participant, gateway, device, grid-node and market-zone identifiers;
//! - [`interval`]: UTC-aligned delivery intervals and gate-closure arithmetic;
//! - [`order`] and [`reading`]: what traders and gateways sign;
//! - [`layout`]: the canonical byte layout both are signed in (documented byte by byte in
//!   `docs/protocol.md`);
//! - [`signing`]: ed25519 signatures over exactly those bytes, the JSON envelope that carries
//!   them, and batch verification;
//! - [`grid`], [`market`], [`registry`], [`topics`]: the network, clearing results, who may sign
//!   what, and MQTT topic names;
//! - [`envelope`]: operating envelopes per connection point and interval, signed results, and
//!   what settlement measured against them;
//! - [`api`]: read models — the typed REST/SSE answers services give each other and clients;
//! - [`request`]: signed requests, by which a participant proves who reads its own data;
//! - [`rotation`]: key rotation signed by the old key, and each key's validity period;
//! - [`keys`]: key files (generate, store with mode 0600, load, show the public key);
//! - [`verify_stage`]: strict batched signature verification off the async threads, shared by
//!   the services.
//!
//! # Example
//!
//! ```
//! use gridmesh_protocol::{keys::SigningKeyPair, order::{Order, Side}, interval::Interval,
//!     units::{Wh, PricePerMwh}, ids::{ParticipantId, NodeId, ZoneId}, signing::SignedEnvelope};
//!
//! let key = SigningKeyPair::from_seed([7; 32]);
//! let order = Order {
//!     zone: Some(ZoneId::new("demo").unwrap()),
//!     participant: ParticipantId::new("alice").unwrap(),
//!     node: NodeId::new("f1").unwrap(),
//!     interval: Interval::parse("2026-06-21T12:00:00Z", 15).unwrap(),
//!     side: Side::Buy,
//!     quantity: Wh(1200),
//!     limit_price: PricePerMwh(250_00_0),
//!     nonce: 1,
//! };
//! let envelope = SignedEnvelope::sign(&order, &key);
//! let verified: Order = envelope.open().unwrap();
//! assert_eq!(verified, order);
//! ```

pub mod api;
pub mod envelope;
pub mod example;
pub mod grid;
pub mod ids;
pub mod interval;
pub mod keys;
pub mod layout;
pub mod market;
pub mod order;
pub mod reading;
pub mod registry;
pub mod request;
pub mod rotation;
pub mod signing;
pub mod token;
pub mod topics;
pub mod units;
pub mod verify_stage;

pub use ids::{DeviceId, GatewayId, NodeId, ParticipantId, ZoneId};
pub use interval::{Interval, IntervalLength};
pub use order::{Order, Side};
pub use reading::{Reading, ReadingFlags};
pub use signing::{SignedEnvelope, SigningError};
pub use units::{Money, PricePerMwh, Wh};
