//! Enrolment: registering the household (participant) and this gateway with its key at the
//! market, with the home's one-time enrolment token (`market-engine enrolment-token
//! --participant ID`, sent as `Authorization: Bearer gme_…`; the market accepts it for this
//! participant only and uses it up when the gateway is enrolled), and fetching the market's
//! public key (`GET /market-key`) to pin as `market_public_key`. Registrations are
//! create-only: a 409 means the id is registered already. A retry after the participant was
//! registered but the gateway was not carries on with the gateway — if the market holds this
//! gateway's key for the participant; another key under the id is an error that says so.

use crate::config::GatewayConfig;
use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::envelope::MarketKey;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::signing::PublicKey;
use std::time::Duration;

/// Why enrolment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// No market URL configured.
    #[error("market_url is not set in the config; add market_url = \"http://HOST:8081\"")]
    NoMarket,
    /// The market could not be reached.
    #[error(
        "cannot reach the market at {url}: {detail}; is market_url right and the market running?"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport error.
        detail: String,
    },
    /// The token was refused.
    #[error(
        "the market refused the enrolment token ({status}): {body}. Ask the operator for a valid token"
    )]
    Token {
        /// HTTP status.
        status: u16,
        /// The market's message.
        body: String,
    },
    /// The HTTPS settings cannot be used (CA file).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] crate::gateway::GatewayError),
    /// The market did not serve its key.
    #[error(
        "the market at {url} did not serve its public key ({detail}); ask the operator for it and set market_public_key in the config"
    )]
    NoMarketKey {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The participant id is registered already, with a key that is not this gateway's.
    #[error(
        "participant {participant} is already registered at the market with another key ({registered}); this gateway's key is {ours}. Check `participant` in the config; if the id is yours, ask the operator: registrations are create-only and a key changes only by a rotation signed with the registered key"
    )]
    TakenByAnotherKey {
        /// The participant id.
        participant: String,
        /// The key the market holds for it.
        registered: PublicKey,
        /// This gateway's key.
        ours: PublicKey,
    },
    /// The market refused a registration.
    #[error("the market refused the {what} registration ({status}): {body}")]
    Refused {
        /// `participants` or `gateways`.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// The market's message.
        body: String,
    },
}

/// What each registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Newly registered.
    Created,
    /// Already known to the market (409).
    AlreadyRegistered,
}

/// The participant and gateway records for `config` with `key`.
pub fn records(config: &GatewayConfig, key: &PublicKey) -> (Participant, GatewayEnrollment) {
    (
        Participant {
            id: config.participant.clone(),
            public_key: *key,
            node: config.node.clone(),
            kind: ParticipantKind::Household,
        },
        GatewayEnrollment {
            gateway: config.gateway_id.clone(),
            participant: config.participant.clone(),
            node: config.node.clone(),
            public_key: *key,
            inverter_w: config.site.inverter_w,
            battery_w: config.site.battery_w,
            latitude_microdeg: (config.site.latitude * 1e6).round() as i32,
            longitude_microdeg: (config.site.longitude * 1e6).round() as i32,
        },
    )
}

/// Registers the participant, then the gateway. Returns what happened to each.
pub async fn enroll(
    config: &GatewayConfig,
    key: &PublicKey,
    token: &str,
) -> Result<[Registered; 2], EnrollError> {
    let market = config.market_url.as_deref().ok_or(EnrollError::NoMarket)?;
    let base = market.trim_end_matches('/');
    let (participant, gateway) = records(config, key);
    let http = crate::gateway::configured_http_client(config)?;
    let trust = crate::tls::Trust::http(config);
    let first = register(&http, &trust, base, "participants", token, &participant).await?;
    if first == Registered::AlreadyRegistered {
        // A retry after the participant was registered is fine; someone else's key under this
        // id is not (the gateway's orders and readings would all be refused).
        check_registered_key(&http, &trust, base, &participant).await?;
    }
    Ok([
        first,
        register(&http, &trust, base, "gateways", token, &gateway).await?,
    ])
}

/// After a 409: the key the market holds for `ours.id` must be `ours.public_key`.
async fn check_registered_key(
    http: &reqwest::Client,
    trust: &crate::tls::Trust,
    base: &str,
    ours: &Participant,
) -> Result<(), EnrollError> {
    let url = format!("{base}/participants/{}", ours.id);
    let response = http
        .get(&url)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| EnrollError::Unreachable {
            url: url.clone(),
            detail: crate::tls::explain(&crate::tls::error_chain(&e), trust),
        })?;
    let status = response.status();
    let registered = match response.json::<Participant>().await {
        Ok(p) if status.is_success() => p,
        _ => {
            return Err(EnrollError::Refused {
                what: "participants",
                status: status.as_u16(),
                body: format!(
                    "the id is registered already, and GET {url} did not show with which key"
                ),
            });
        }
    };
    if registered.public_key == ours.public_key {
        Ok(())
    } else {
        Err(EnrollError::TakenByAnotherKey {
            participant: ours.id.to_string(),
            registered: registered.public_key,
            ours: ours.public_key,
        })
    }
}

/// `POST {base}/{what}` with `record` and the token: created (2xx) or already known (409).
async fn register(
    http: &reqwest::Client,
    trust: &crate::tls::Trust,
    base: &str,
    what: &'static str,
    token: &str,
    record: &impl serde::Serialize,
) -> Result<Registered, EnrollError> {
    let url = format!("{base}/{what}");
    let response = http
        .post(&url)
        .bearer_auth(token)
        .json(record)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| EnrollError::Unreachable {
            url: url.clone(),
            detail: crate::tls::explain(&crate::tls::error_chain(&e), trust),
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    // The market's error answer is `{code, message}`; its message is what to show.
    let body = || {
        serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.message)
            .unwrap_or_else(|_| text.clone())
    };
    match status.as_u16() {
        200..=299 => Ok(Registered::Created),
        409 => Ok(Registered::AlreadyRegistered),
        401 | 403 => Err(EnrollError::Token {
            status: status.as_u16(),
            body: body(),
        }),
        code => Err(EnrollError::Refused {
            what,
            status: code,
            body: body(),
        }),
    }
}

/// Fetches the market's public key from `GET {market_url}/market-key`.
pub async fn market_key(config: &GatewayConfig) -> Result<MarketKey, EnrollError> {
    let market = config.market_url.as_deref().ok_or(EnrollError::NoMarket)?;
    let url = format!("{}/market-key", market.trim_end_matches('/'));
    let trust = crate::tls::Trust::http(config);
    let response = crate::gateway::configured_http_client(config)?
        .get(&url)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| EnrollError::Unreachable {
            url: url.clone(),
            detail: crate::tls::explain(&crate::tls::error_chain(&e), &trust),
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(EnrollError::NoMarketKey {
            url,
            detail: format!("HTTP {status}"),
        });
    }
    response
        .json::<MarketKey>()
        .await
        .map_err(|e| EnrollError::NoMarketKey {
            url,
            detail: e.to_string(),
        })
}

/// What to tell the user about the market key and zone: the lines to paste, or that the
/// configured ones already match, or a warning when they differ.
pub fn market_key_advice(config: &GatewayConfig, key: &MarketKey) -> String {
    let key_advice = match &config.market_public_key {
        Some(k) if *k == key.public_key => format!(
            "market key (zone {}): {} (matches market_public_key in the config)",
            key.zone, key.public_key
        ),
        Some(k) => format!(
            "WARNING: the config pins market_public_key = \"{k}\", but the market (zone {}) serves {}. Envelopes signed by the market will be refused until they agree: check market_url, then replace the line with\nmarket_public_key = \"{}\"",
            key.zone, key.public_key, key.public_key
        ),
        None => format!(
            "market key (zone {}): {}\nAdd this line to the config (top level) so the gateway acts on the market's operating envelopes:\nmarket_public_key = \"{}\"",
            key.zone, key.public_key, key.public_key
        ),
    };
    let zone_advice = match &config.zone {
        Some(z) if *z == key.zone => format!("zone {z} (matches zone in the config)"),
        Some(z) => format!(
            "WARNING: the config names zone = \"{z}\", but the market clears zone {}: readings and orders signed for {z} are refused there. Check market_url, then replace the line with\nzone = \"{}\"",
            key.zone, key.zone
        ),
        None => format!(
            "Add this line to the config (top level) so readings and orders name the market's zone (gridmesh/reading/v2, gridmesh/order/v2):\nzone = \"{}\"",
            key.zone
        ),
    };
    format!("{key_advice}\n{zone_advice}")
}
