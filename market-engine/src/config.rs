//! The market's configuration (TOML file plus `GRIDMESH_MARKET_*` environment overrides).

use crate::prices::PricingRule;
use gridmesh_protocol::IntervalLength;
use gridmesh_protocol::grid::Network;
use gridmesh_runtime::clock::ClockSettings;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Environment prefix for overrides, e.g. `GRIDMESH_MARKET_LISTEN=0.0.0.0:8081`.
pub const ENV_PREFIX: &str = "GRIDMESH_MARKET";

/// Everything the market needs to run. `MarketConfig::default()` is a working local market.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// REST listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `sqlite://FILE` or `postgres://…`.
    pub database_url: String,
    /// The market zone's name (in MQTT topics and results).
    pub zone: String,
    /// Delivery interval length in minutes (5, 15, 30 or 60).
    pub interval_minutes: IntervalLength,
    /// Orders for an interval close this many seconds before it starts.
    pub gate_closure_lead_seconds: i64,
    /// Bearer token for operator endpoints (topology, limits, registrations); `None` disables
    /// them.
    pub operator_token: Option<String>,
    /// Bearer token of auditors (and the dashboard's upstream credential): reads every
    /// household's data, changes nothing (a write with it answers 403 `forbidden`). `None`:
    /// only the operator and each household itself read household data.
    pub auditor_token: Option<String>,
    /// `mqtt://host:port` to publish retained results on; `None` = REST and SSE only.
    pub broker_url: Option<String>,
    /// Pay-as-clear (default) or pay-as-bid.
    pub pricing: PricingRule,
    /// The topology to start with when the database has none.
    pub topology: Option<Network>,
    /// Most orders written in one database transaction.
    pub max_write_batch: usize,
    /// Accelerated time shared with the other services (`[clock]`); absent = the system clock.
    pub clock: Option<ClockSettings>,
    /// The key file that signs results and operating envelopes (created with mode 0600 if
    /// absent). `None`: an ephemeral key per start (a warning is logged; gateways and
    /// settlement that pin the market's key then refuse what a restarted market signs).
    pub signing_key: Option<PathBuf>,
    /// Every connection point's import rating, W, for its operating envelope.
    pub connection_import_w: u32,
    /// The certificate chain (PEM) to serve HTTPS with; set together with `tls_key`. Neither =
    /// plain HTTP (behind a TLS-terminating proxy, or on 127.0.0.1 only).
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: "sqlite://market.db".to_owned(),
            zone: "default".to_owned(),
            interval_minutes: IntervalLength::Min15,
            gate_closure_lead_seconds: 300,
            operator_token: None,
            auditor_token: None,
            broker_url: None,
            pricing: PricingRule::PayAsClear,
            topology: None,
            max_write_batch: 512,
            clock: None,
            signing_key: None,
            connection_import_w: 11_000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl MarketConfig {
    /// The gate-closure lead as a duration.
    pub fn lead(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.gate_closure_lead_seconds.max(0))
    }
}
