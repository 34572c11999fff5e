//! Read models: the typed answers services give each other and their REST/SSE clients.
//!
//! Every payload one service reads from another — and every public REST or SSE answer — has one
//! type here. The service that answers serialises it; the dashboard, the gateway's uplink and
//! the trader CLI deserialise the same type, and test doubles are built from it. Renaming a
//! field is then a compile error in every reader, not a silently blank column.
//!
//! - [`readings`]: what settlement says about each submitted reading;
//! - [`settlement`]: statements, balances and holdings, ledger blocks and entries, quarantine,
//!   compliance and settlement's events;
//! - [`market`]: the market's status and participants.

pub mod market;
pub mod readings;
pub mod settlement;
