//! Home Assistant MQTT discovery, to the household's own broker (`[home_assistant]`).
//!
//! When `url` is set the gateway connects to that broker with a last will, then publishes:
//!
//! - `<prefix>/sensor/<node>/<object>/config` (retained): one discovery config per entity
//!   ([`ENTITIES`]), `<node>` = `gridmesh_<gateway id>`;
//! - `gridmesh/<gateway id>/ha/<object>` (retained): each entity's state, when it changes;
//! - `gridmesh/<gateway id>/ha/availability` (retained): `online` once connected; the broker
//!   publishes the last will `offline` when the gateway disappears, and the gateway publishes
//!   `offline` itself when it stops.
//!
//! Energy sensors are `device_class: energy` with `state_class: total_increasing` in kWh (the
//! devices' lifetime counters), so HA's Energy dashboard accepts them; powers are `power` /
//! `measurement` in W; the interval price is in `<currency>/kWh`, the month's earnings
//! `monetary` / `total` in `<currency>`. Amounts are formatted from integers (no floats).

use crate::config::{ConfigError, invalid};
use crate::status::Status;
use gridmesh_runtime::clock::Clock;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `[home_assistant]`: discovery to the household's broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// The household's broker, `mqtt://host:1883` (absent: no Home Assistant integration).
    pub url: Option<String>,
    /// HA's discovery prefix (HA's default `homeassistant`).
    pub discovery_prefix: String,
    /// Broker username (with `password_file`).
    pub username: Option<String>,
    /// A file whose first line is the broker password.
    pub password_file: Option<PathBuf>,
    /// The currency of prices and earnings (ISO 4217; amounts are in its minor units, 1/100).
    pub currency: String,
    /// How often states are checked for changes, real milliseconds.
    pub state_period_ms: u64,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            url: None,
            discovery_prefix: "homeassistant".into(),
            username: None,
            password_file: None,
            currency: "EUR".into(),
            state_period_ms: 5_000,
        }
    }
}

impl HomeAssistantConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url
            && broker_address(url).is_none()
        {
            return Err(invalid(
                "home_assistant.url",
                format!("`{url}` is not a plain MQTT URL with a host"),
                "write it as mqtt://192.168.1.10:1883 (the broker Home Assistant uses)",
            ));
        }
        if self.discovery_prefix.is_empty() || self.discovery_prefix.contains(['#', '+', ' ']) {
            return Err(invalid(
                "home_assistant.discovery_prefix",
                "must be a topic level without wildcards",
                "use homeassistant (HA's default)",
            ));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                "home_assistant.currency",
                format!("`{}` is not an ISO 4217 code", self.currency),
                "use three capital letters, for example EUR",
            ));
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err(invalid(
                "home_assistant.username / password_file",
                "a username needs a password file and a password file a username",
                "set both, or neither",
            ));
        }
        if self.state_period_ms == 0 {
            return Err(invalid(
                "home_assistant.state_period_ms",
                "must be positive",
                "use 5000",
            ));
        }
        Ok(())
    }
}

/// `(host, port)` of an `mqtt://host[:port]` URL.
pub fn broker_address(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, 1883),
    };
    (!host.is_empty() && !host.contains('/')).then(|| (host.to_owned(), port))
}

/// What kind of quantity an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// W, `power` / `measurement`.
    Power,
    /// kWh lifetime counter, `energy` / `total_increasing`.
    Energy,
    /// %, `battery` / `measurement`.
    Soc,
    /// `<currency>/kWh`, `measurement`.
    Price,
    /// Wh of the current interval, `measurement`.
    IntervalEnergy,
    /// `<currency>`, `monetary` / `total`.
    Money,
}

/// One entity: its object id, name and kind.
#[derive(Debug, Clone, Copy)]
pub struct Entity {
    /// The object id (topic level and unique id suffix).
    pub object: &'static str,
    /// The name HA shows (after the device's name).
    pub name: &'static str,
    /// The quantity.
    pub kind: Kind,
}

/// Every entity the gateway publishes.
pub const ENTITIES: &[Entity] = &[
    Entity {
        object: "pv_power",
        name: "PV power",
        kind: Kind::Power,
    },
    Entity {
        object: "pv_energy",
        name: "PV energy",
        kind: Kind::Energy,
    },
    Entity {
        object: "battery_power",
        name: "Battery power (+ discharge)",
        kind: Kind::Power,
    },
    Entity {
        object: "battery_soc",
        name: "Battery state of charge",
        kind: Kind::Soc,
    },
    Entity {
        object: "battery_charge_energy",
        name: "Battery charge energy",
        kind: Kind::Energy,
    },
    Entity {
        object: "battery_discharge_energy",
        name: "Battery discharge energy",
        kind: Kind::Energy,
    },
    Entity {
        object: "grid_import_power",
        name: "Grid import power",
        kind: Kind::Power,
    },
    Entity {
        object: "grid_export_power",
        name: "Grid export power",
        kind: Kind::Power,
    },
    Entity {
        object: "grid_import_energy",
        name: "Grid import energy",
        kind: Kind::Energy,
    },
    Entity {
        object: "grid_export_energy",
        name: "Grid export energy",
        kind: Kind::Energy,
    },
    Entity {
        object: "interval_price",
        name: "Current interval price",
        kind: Kind::Price,
    },
    Entity {
        object: "cleared_sale",
        name: "Cleared sale (current interval)",
        kind: Kind::IntervalEnergy,
    },
    Entity {
        object: "cleared_purchase",
        name: "Cleared purchase (current interval)",
        kind: Kind::IntervalEnergy,
    },
    Entity {
        object: "month_earnings",
        name: "Earnings this month",
        kind: Kind::Money,
    },
];

/// The topic names for one gateway.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    node: String,
    base: String,
}

impl Topics {
    /// The topics of `gateway` under `prefix`.
    pub fn new(prefix: &str, gateway: &str) -> Self {
        let clean: String = gateway
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Topics {
            prefix: prefix.to_owned(),
            node: format!("gridmesh_{clean}"),
            base: format!("gridmesh/{gateway}/ha"),
        }
    }

    /// The discovery config topic of `object`.
    pub fn config(&self, object: &str) -> String {
        format!("{}/sensor/{}/{object}/config", self.prefix, self.node)
    }

    /// The state topic of `object`.
    pub fn state(&self, object: &str) -> String {
        format!("{}/{object}", self.base)
    }

    /// The availability topic (last will).
    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }
}

/// The discovery config of `entity` for `gateway`.
pub fn discovery_config(
    topics: &Topics,
    gateway: &str,
    participant: &str,
    currency: &str,
    entity: &Entity,
) -> serde_json::Value {
    let mut c = serde_json::json!({
        "name": entity.name,
        "unique_id": format!("{}_{}", topics.node, entity.object),
        "object_id": format!("{}_{}", topics.node, entity.object),
        "state_topic": topics.state(entity.object),
        "availability_topic": topics.availability(),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [topics.node.clone()],
            "name": format!("gridmesh gateway {gateway}"),
            "manufacturer": "gridmesh",
            "model": format!("edge-gateway (household {participant})"),
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
        "origin": { "name": "gridmesh edge-gateway", "sw_version": env!("CARGO_PKG_VERSION") },
    });
    let fields: &[(&str, String)] = &match entity.kind {
        Kind::Power => [
            ("device_class", "power".into()),
            ("state_class", "measurement".into()),
            ("unit_of_measurement", "W".into()),
        ]
        .to_vec(),
        Kind::Energy => [
            ("device_class", "energy".into()),
            ("state_class", "total_increasing".into()),
            ("unit_of_measurement", "kWh".into()),
            ("suggested_display_precision", "1".into()),
        ]
        .to_vec(),
        Kind::Soc => [
            ("device_class", "battery".into()),
            ("state_class", "measurement".into()),
            ("unit_of_measurement", "%".into()),
        ]
        .to_vec(),
        Kind::Price => [
            ("state_class", "measurement".into()),
            ("unit_of_measurement", format!("{currency}/kWh")),
        ]
        .to_vec(),
        Kind::IntervalEnergy => [
            ("state_class", "measurement".into()),
            ("unit_of_measurement", "Wh".into()),
        ]
        .to_vec(),
        Kind::Money => [
            ("device_class", "monetary".into()),
            ("state_class", "total".into()),
            ("unit_of_measurement", currency.to_owned()),
        ]
        .to_vec(),
    };
    if let Some(map) = c.as_object_mut() {
        for (k, v) in fields {
            let value = match v.parse::<i64>() {
                Ok(n) if *k == "suggested_display_precision" => serde_json::json!(n),
                _ => serde_json::json!(v),
            };
            map.insert((*k).to_owned(), value);
        }
    }
    c
}

/// `n / 10^places` as a decimal string, exactly.
fn decimal(n: i64, places: u32) -> String {
    let div = 10i64.pow(places);
    let sign = if n < 0 { "-" } else { "" };
    let (whole, frac) = (n.unsigned_abs() / div as u64, n.unsigned_abs() % div as u64);
    format!("{sign}{whole}.{frac:0width$}", width = places as usize)
}

/// The states known now, per object id.
pub fn states(
    status: &Status,
    now: chrono::DateTime<chrono::Utc>,
) -> HashMap<&'static str, String> {
    let s = status.snapshot();
    let live = &s.live;
    let mut out = HashMap::new();
    let mut put = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            out.insert(k, v);
        }
    };
    put("pv_power", live.pv_w.map(|w| w.to_string()));
    put("battery_power", live.battery_w.map(|w| w.to_string()));
    put(
        "battery_soc",
        live.soc_permille.map(|p| decimal(i64::from(p), 1)),
    );
    put(
        "grid_import_power",
        live.grid_w.map(|w| w.max(0).to_string()),
    );
    put(
        "grid_export_power",
        live.grid_w.map(|w| (-w).max(0).to_string()),
    );
    let kwh = |name: &str| live.counters_wh.get(name).map(|wh| decimal(*wh, 3));
    put("pv_energy", kwh("pv"));
    put("battery_charge_energy", kwh("battery_charge"));
    put("battery_discharge_energy", kwh("battery_discharge"));
    put("grid_import_energy", kwh("grid_import"));
    put("grid_export_energy", kwh("grid_export"));
    let (current, month) = status.with_household(|h| {
        let month = now.format("%Y-%m").to_string();
        (
            h.at(now).cloned(),
            (h.settlement.month.as_deref() == Some(month.as_str()))
                .then_some(h.settlement.month_net)
                .flatten(),
        )
    });
    if let Some(row) = current.filter(|r| r.cleared) {
        // minor units per MWh → major units per kWh: / 100 / 1000.
        put("interval_price", row.price.map(|p| decimal(p, 5)));
        put("cleared_sale", row.sold_wh.map(|w| w.to_string()));
        put("cleared_purchase", row.bought_wh.map(|w| w.to_string()));
    }
    put("month_earnings", month.map(|m| decimal(m, 2)));
    out
}

/// What the publisher needs.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// The settings.
    pub config: HomeAssistantConfig,
    /// The gateway id.
    pub gateway: String,
    /// The household.
    pub participant: String,
    /// Live status.
    pub status: Arc<Status>,
    /// The gateway clock.
    pub clock: Clock,
}

impl Publisher {
    /// Connects, announces and publishes states until `cancel`; reconnects with backoff.
    pub async fn run(self, cancel: CancellationToken) {
        let Some((host, port)) = self.config.url.as_deref().and_then(broker_address) else {
            return;
        };
        let topics = Topics::new(&self.config.discovery_prefix, &self.gateway);
        let mut options = MqttOptions::new(format!("gridmesh-ha-{}", self.gateway), host, port);
        options.set_keep_alive(Duration::from_secs(15));
        options.set_last_will(LastWill::new(
            topics.availability(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let (Some(user), Some(file)) = (&self.config.username, &self.config.password_file) {
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    options.set_credentials(user, text.lines().next().unwrap_or("").trim());
                }
                Err(error) => {
                    tracing::error!(%error, file = %file.display(), "cannot read home_assistant.password_file; Home Assistant discovery is off");
                    return;
                }
            }
        }
        let (client, mut events) = AsyncClient::new(options, 64);
        let connected = Arc::new(tokio::sync::Notify::new());
        let notify = connected.clone();
        let poll_cancel = CancellationToken::new();
        let stop_driver = poll_cancel.clone();
        // The event loop: connections, reconnections with backoff.
        let driver = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            let mut reported = false;
            loop {
                tokio::select! {
                    _ = poll_cancel.cancelled() => return,
                    event = events.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            backoff = Duration::from_millis(500);
                            reported = false;
                            tracing::info!("connected to the Home Assistant broker");
                            notify.notify_one();
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(error) => {
                            if !reported {
                                tracing::warn!(%error, "cannot reach the Home Assistant broker; retrying");
                                reported = true;
                            }
                            tokio::select! {
                                _ = poll_cancel.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        });
        let period = Duration::from_millis(self.config.state_period_ms);
        let mut sent: HashMap<&'static str, String> = HashMap::new();
        loop {
            // (Re)announce after every connection: configs, availability, all states.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = connected.notified() => {}
                _ = tokio::time::sleep(period) => {
                    let states = states(&self.status, self.clock.now());
                    for (object, value) in &states {
                        if sent.get(object) != Some(value) {
                            let _ = client.publish(topics.state(object), QoS::AtLeastOnce, true, value.clone()).await;
                        }
                    }
                    sent = states;
                    continue;
                }
            }
            for entity in ENTITIES {
                let config = discovery_config(
                    &topics,
                    &self.gateway,
                    &self.participant,
                    &self.config.currency,
                    entity,
                );
                let _ = client
                    .publish(
                        topics.config(entity.object),
                        QoS::AtLeastOnce,
                        true,
                        config.to_string(),
                    )
                    .await;
            }
            let _ = client
                .publish(topics.availability(), QoS::AtLeastOnce, true, "online")
                .await;
            sent = states(&self.status, self.clock.now());
            for (object, value) in &sent {
                let _ = client
                    .publish(topics.state(object), QoS::AtLeastOnce, true, value.clone())
                    .await;
            }
        }
        // A clean stop: say so (the last will covers a crash or a lost connection).
        let _ = client.try_publish(topics.availability(), QoS::AtLeastOnce, true, "offline");
        let _ = client.try_disconnect();
        if tokio::time::timeout(Duration::from_secs(2), driver)
            .await
            .is_err()
        {
            stop_driver.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(12_345, 3), "12.345");
        assert_eq!(decimal(-5, 2), "-0.05");
        assert_eq!(decimal(25_000, 5), "0.25000");
        assert_eq!(decimal(0, 1), "0.0");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            broker_address("mqtt://ha.local:1884"),
            Some(("ha.local".into(), 1884))
        );
        assert_eq!(
            broker_address("mqtt://10.0.0.2"),
            Some(("10.0.0.2".into(), 1883))
        );
        assert_eq!(broker_address("mqtts://x:8883"), None);
        assert_eq!(broker_address("mqtt://:1883"), None);
    }
}
