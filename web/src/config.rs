//! The dashboard's configuration: where to listen and where the services it reads live.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the dashboard needs to run. `WebConfig::default()` matches the services' default
/// ports on one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Address the dashboard listens on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Base URL of the market engine's REST API.
    pub market_url: String,
    /// Base URL of settlement's REST API.
    pub settlement_url: String,
    /// MQTT broker for gateways' retained online/offline status (`mqtt://host:port`); without
    /// it, gateway liveness is inferred from settlement's recent readings where possible.
    pub broker_url: Option<String>,
    /// How often the upstream APIs are polled, in milliseconds (SSE events trigger extra
    /// refreshes in between).
    pub poll_interval_ms: u64,
    /// Time limit for one upstream request, in milliseconds.
    pub request_timeout_ms: u64,
    /// How many cleared intervals the market pages keep and chart.
    pub history_intervals: usize,
    /// An interval whose utility exchange exceeds this many times the median of the previous
    /// intervals raises an imbalance alert.
    pub imbalance_spike_factor: u32,
    /// The dashboard's users (name, role, argon2 hash), a JSON file written with mode 0600 by
    /// `gridmesh-web user add`. Read at every login, so users added while it runs can log in.
    pub users_file: PathBuf,
    /// Host names (optionally `name:port`) the dashboard answers to; a bare name also matches
    /// `name:<listen port>`. Any other `Host` header answers 421.
    pub allowed_hosts: Vec<String>,
    /// Mark the session cookie `Secure` (set this when a TLS-terminating proxy serves the
    /// dashboard; with `tls_cert` the cookie is always `Secure`).
    pub secure_cookies: bool,
    /// The certificate chain (PEM) to serve HTTPS with; set together with `tls_key`. Neither =
    /// plain HTTP (on 127.0.0.1, or behind a TLS-terminating proxy).
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A session unused for this many minutes ends (the user logs in again).
    pub session_idle_minutes: u64,
    /// The dashboard's upstream credential (the market's and settlement's `auditor_token`),
    /// sent as `Authorization: Bearer` on every request to them.
    pub upstream_token: Option<String>,
    /// The operator credential used only to forward an admin user's operator actions
    /// (accepting a quarantined reading in settlement). Without it those actions answer 503.
    pub operator_token: Option<String>,
    /// Settlement's block-signing authority public key (base64, 44 characters), pinned: the
    /// ledger's entry view checks every block signature with this key and no other. Without
    /// it no entry shows as verified.
    pub settlement_authority_key: Option<String>,
    /// A pinned block `HEIGHT:HASH` the prev-hash chain may end at (else it is followed down to
    /// the first block); blocks verified since the start are remembered too.
    pub ledger_anchor: Option<String>,
    /// Where the incident store lives (`incidents.jsonl`: acknowledgements and notifications,
    /// appended line by line).
    pub data_dir: PathBuf,
    /// URL that new and resolved incidents are POSTed to as JSON (retried with bounded backoff);
    /// none = no notifications.
    pub incident_webhook: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            market_url: "http://127.0.0.1:8081".into(),
            settlement_url: "http://127.0.0.1:8082".into(),
            broker_url: None,
            poll_interval_ms: 2_000,
            request_timeout_ms: 3_000,
            history_intervals: 96,
            imbalance_spike_factor: 3,
            users_file: PathBuf::from("gridmesh-web-users.json"),
            allowed_hosts: vec!["127.0.0.1".into(), "localhost".into()],
            secure_cookies: false,
            tls_cert: None,
            tls_key: None,
            session_idle_minutes: 30,
            upstream_token: None,
            operator_token: None,
            settlement_authority_key: None,
            ledger_anchor: None,
            data_dir: PathBuf::from("."),
            incident_webhook: None,
        }
    }
}

impl WebConfig {
    /// The poll interval as a duration (at least 50 ms).
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(50))
    }

    /// The request timeout as a duration (at least 100 ms).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(100))
    }

    /// How long an unused session lives (at least one minute).
    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_minutes.max(1) * 60)
    }

    /// Checks values that serde cannot: URLs must be http(s) and the history non-empty.
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [
            ("market_url", &self.market_url),
            ("settlement_url", &self.settlement_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{name} `{url}` is not an http URL; use for example http://127.0.0.1:8081"
                ));
            }
        }
        if let Some(url) = &self.broker_url {
            if !url.starts_with("mqtt://") {
                return Err(format!(
                    "broker_url `{url}` is not an MQTT URL; use for example mqtt://127.0.0.1:1883"
                ));
            }
        }
        if self.allowed_hosts.is_empty() {
            return Err(
                "allowed_hosts is empty, so every request would be refused; list the host names browsers use, e.g. [\"127.0.0.1\", \"localhost\"]".into(),
            );
        }
        if let Some(key) = &self.settlement_authority_key {
            key.parse::<gridmesh_protocol::signing::PublicKey>().map_err(|e| {
                format!("settlement_authority_key: {e}; copy settlement's authority public key (the `public_key` of its blocks, checked out of band)")
            })?;
        }
        if let Some(anchor) = &self.ledger_anchor {
            if crate::proof::parse_anchor(anchor).is_none() {
                return Err(format!(
                    "ledger_anchor `{anchor}` is not HEIGHT:HASH (a block height, a colon and its 64-hex-character hash)"
                ));
            }
        }
        if let Some(url) = &self.incident_webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "incident_webhook `{url}` is not an http URL; use for example https://alerts.example.org/gridmesh"
                ));
            }
        }
        if self.history_intervals == 0 {
            return Err("history_intervals must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_overrides_apply() {
        assert!(WebConfig::default().validate().is_ok());
        let c: WebConfig = toml_like("market_url = \"http://m:1\"\npoll_interval_ms = 10");
        assert_eq!(c.market_url, "http://m:1");
        assert_eq!(c.poll_interval(), Duration::from_millis(50));
        let bad = WebConfig {
            settlement_url: "127.0.0.1:8082".into(),
            ..WebConfig::default()
        };
        let err = bad.validate().unwrap_err();
        assert!(err.contains("settlement_url"), "{err}");
    }

    fn toml_like(text: &str) -> WebConfig {
        let dir = std::env::temp_dir().join(format!("gridmesh-web-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.toml");
        std::fs::write(&path, text).unwrap();
        gridmesh_runtime::config::load_with_env(Some(&path), "GRIDMESH_WEB_TEST", &[]).unwrap()
    }
}
