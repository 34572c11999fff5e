//! The gateway's configuration: TOML with environment overrides, validated into clear errors.
//!
//! Loading happens in two stages, as ripgrep does it: [`GatewayConfig::load`] parses the file
//! (serde reports the line and column of a mistake), then [`GatewayConfig::validate`] checks
//! what serde cannot (a Modbus device without a host, an `mqtts://` URL without a CA, ...) and
//! says how to fix it.

use gridmesh_protocol::signing::PublicKey;
use gridmesh_protocol::{
    DeviceId, GatewayId, IntervalLength, NodeId, ParticipantId, PricePerMwh, ZoneId,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The market's price bound (minor units per MWh), as market-engine checks it.
pub const MAX_ABS_PRICE: i64 = 10_000_000;
/// The market's largest order (1 TWh), as market-engine checks it.
pub const MAX_ORDER_WH: i64 = 1_000_000_000_000;
/// The largest inverter or battery power a gateway may enrol, W (market-engine's bound).
pub const MAX_SITE_POWER_W: u32 = 1_000_000;

/// Environment prefix for overrides: `GRIDMESH_GATEWAY_MARKET_URL=...`.
pub const ENV_PREFIX: &str = "GRIDMESH_GATEWAY";

/// Why a configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed (the message names the line).
    #[error(transparent)]
    Load(#[from] gridmesh_runtime::config::ConfigError),
    /// A value parsed but does not make sense.
    #[error("config problem in {field}: {problem}. Fix: {fix}")]
    Invalid {
        /// The offending key, for example `devices[2].host`.
        field: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

pub(crate) fn invalid(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The complete gateway configuration. Every field has a default, so `GatewayConfig::default()`
/// is a valid starting point for code that builds a config (the in-process launcher, tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's id (also in its MQTT topic and client id).
    pub gateway_id: GatewayId,
    /// The household it meters and trades for.
    pub participant: ParticipantId,
    /// The household's grid node (feeder connection).
    pub node: NodeId,
    /// The market zone the gateway is enrolled in (`edge-gateway enroll` prints it): signed
    /// into every reading (`gridmesh/reading/v2`) and order (`gridmesh/order/v2`), so neither
    /// counts in another zone. Absent: readings are signed in the legacy v1 layout, which
    /// names no zone (settlement with a zone configured holds them as flagged until an
    /// operator accepts them), and the agent takes the zone the market reports.
    pub zone: Option<ZoneId>,
    /// The device-set id signed into readings (usually the whole home).
    pub device_set: DeviceId,
    /// Delivery interval length in minutes (5, 15, 30 or 60).
    pub interval_minutes: u16,
    /// The ed25519 key file (mode 0600), created by `edge-gateway keygen`.
    pub key_path: PathBuf,
    /// The SQLite outbox file.
    pub outbox_path: PathBuf,
    /// Largest outbox size in bytes of stored readings before the oldest are dropped (with a
    /// loud warning from 80% on).
    pub outbox_cap_bytes: u64,
    /// The market's REST base URL (orders, enrolment), for example `http://127.0.0.1:8081`.
    pub market_url: Option<String>,
    /// Settlement's REST base URL (HTTP fallback for readings), e.g. `http://127.0.0.1:8082`.
    pub settlement_url: Option<String>,
    /// The operator/enrolment token for `edge-gateway enroll`.
    pub enroll_token: Option<String>,
    /// The market's public key (base64 ed25519, from `GET {market_url}/market-key`; `edge-gateway
    /// enroll` prints it). Only envelopes signed by this key are acted on; without it the
    /// default envelope of `[control]` always applies.
    pub market_public_key: Option<PublicKey>,
    /// The MQTT broker (readings uplink and MQTT devices).
    pub mqtt: MqttConfig,
    /// TLS trust for `mqtts://` and `https://` (see [`crate::tls`]).
    pub tls: TlsConfig,
    /// How often to poll devices, in real milliseconds.
    pub poll_ms: u64,
    /// Timeout of every single Modbus call, in real milliseconds.
    pub modbus_timeout_ms: u64,
    /// A value older than this (simulated seconds) at interval close is stale.
    pub stale_after_s: u64,
    /// Where `/healthz` and `/metrics` listen (`127.0.0.1:0` picks a free port).
    pub health_listen: String,
    /// The firmware version signed into readings (at most 16 ASCII bytes).
    pub firmware: String,
    /// Accelerated time for demos and tests (absent: the system clock).
    pub clock: Option<ClockConfig>,
    /// The household bidding agent.
    pub agent: AgentConfig,
    /// Site data sent with `enroll`.
    pub site: SiteConfig,
    /// The control loop that keeps the home inside its operating envelope.
    pub control: ControlConfig,
    /// The devices to read.
    pub devices: Vec<DeviceConfig>,
    /// The homeowner's local page (`[local_page]`; served only once a password hash is set).
    pub local_page: crate::local_page::LocalPageConfig,
    /// Home Assistant MQTT discovery to the household's own broker (`[home_assistant]`).
    pub home_assistant: crate::home_assistant::HomeAssistantConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            gateway_id: GatewayId::new("gateway-1").expect("valid id"),
            participant: ParticipantId::new("household-1").expect("valid id"),
            node: NodeId::new("home-1").expect("valid id"),
            zone: None,
            device_set: DeviceId::new("home").expect("valid id"),
            interval_minutes: 15,
            key_path: PathBuf::from("gateway.key"),
            outbox_path: PathBuf::from("outbox.db"),
            outbox_cap_bytes: 64 * 1024 * 1024,
            market_url: None,
            settlement_url: None,
            enroll_token: None,
            market_public_key: None,
            mqtt: MqttConfig::default(),
            tls: TlsConfig::default(),
            poll_ms: 1000,
            modbus_timeout_ms: 1000,
            stale_after_s: 60,
            health_listen: "127.0.0.1:9100".into(),
            firmware: concat!("gw-", env!("CARGO_PKG_VERSION")).into(),
            clock: None,
            agent: AgentConfig::default(),
            site: SiteConfig::default(),
            control: ControlConfig::default(),
            devices: Vec::new(),
            local_page: Default::default(),
            home_assistant: Default::default(),
        }
    }
}

/// MQTT broker settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:1883` or, with TLS, `mqtts://host:8883` (absent: readings go over HTTP
    /// only).
    pub url: Option<String>,
    /// CA certificates (PEM) trusted for the broker only; default `[tls] ca_file`, else the
    /// built-in public roots.
    pub ca_file: Option<PathBuf>,
    /// Client id (default `gridmesh-gw-<gateway id>`).
    pub client_id: Option<String>,
    /// This gateway's client certificate (PEM, `mqtts://` only), its broker identity.
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1; mode 0600).
    pub client_key_file: Option<PathBuf>,
    /// Broker username, sent with the password of `password_file` (default: the gateway id).
    pub username: Option<String>,
    /// A file whose first line is this gateway's broker password (mode 0600); absent: no
    /// username and password are sent.
    pub password_file: Option<PathBuf>,
}

/// TLS settings shared by `mqtts://` and `https://` (`[tls]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificates (PEM, one or more) that sign the broker's, settlement's and the market's
    /// certificates. Absent: the public roots compiled in (Mozilla's list, webpki-roots).
    pub ca_file: Option<PathBuf>,
}

/// Accelerated time (`[clock]`): the runtime's shared settings, so every service reads the same
/// table.
pub use gridmesh_runtime::clock::ClockSettings as ClockConfig;

/// The household bidding agent's limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Whether to submit orders at all.
    pub enabled: bool,
    /// Lowest price to sell at, minor units per MWh (default 8 000 = 8.0 c/kWh, a typical
    /// feed-in tariff: selling below it earns less than exporting).
    pub min_sell_price: PricePerMwh,
    /// Highest price to buy at, minor units per MWh (default 30 000 = 30.0 c/kWh, a typical
    /// retail tariff: buying above it costs more than importing).
    pub max_buy_price: PricePerMwh,
    /// Battery state of charge (percent) never offered for sale.
    pub battery_reserve_pct: u8,
    /// Usable battery capacity in Wh (0: no battery energy is offered).
    pub battery_capacity_wh: i64,
    /// Whether to steer the battery (SunSpec model 124 writes) toward the cleared position.
    pub steer_battery: bool,
    /// Submit orders this many simulated seconds before gate closure.
    pub submit_margin_s: i64,
    /// The market's gate-closure lead time in simulated seconds.
    pub gate_closure_lead_s: i64,
    /// Smallest order worth sending, Wh.
    pub min_order_wh: i64,
    /// `simple` (one price per side for the forecast net position, the agent before issue 19)
    /// or `scheduled` (a day-ahead battery schedule re-planned every interval, bid as curves;
    /// see `agent::schedule` and `agent::bids`).
    pub strategy: AgentStrategy,
    /// The utility's feed-in price in the homeowner's contract, minor units per MWh (what
    /// unsold export earns; `scheduled` never sells below it, and curtails when it is ≤ 0).
    pub feed_in_price: PricePerMwh,
    /// The utility's retail price in the homeowner's contract, minor units per MWh (what
    /// unbought import costs; `scheduled` never bids above it).
    pub retail_price: PricePerMwh,
    /// The battery's round-trip efficiency, percent (`scheduled`).
    pub round_trip_efficiency_pct: u8,
    /// Willingness to cycle: the wear charged per MWh discharged, minor units per MWh
    /// (`scheduled`; 0 = cycle whenever it pays at all, higher = only for wider spreads).
    pub cycle_cost: PricePerMwh,
    /// Whether the battery may charge from the grid when the spread pays for the losses
    /// (`scheduled`; default false: only from PV surplus).
    pub grid_charging: bool,
}

/// Which household agent bids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStrategy {
    /// One ask for the forecast surplus at `min_sell_price`, one bid for the forecast deficit
    /// at `max_buy_price`.
    #[default]
    Simple,
    /// A battery schedule over the next day and bid curves from its marginal values.
    Scheduled,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            enabled: false,
            min_sell_price: PricePerMwh(8_000),
            max_buy_price: PricePerMwh(30_000),
            battery_reserve_pct: 20,
            battery_capacity_wh: 0,
            steer_battery: false,
            submit_margin_s: 60,
            gate_closure_lead_s: 300,
            min_order_wh: 10,
            strategy: AgentStrategy::Simple,
            feed_in_price: PricePerMwh(8_000),
            retail_price: PricePerMwh(30_000),
            round_trip_efficiency_pct: 90,
            cycle_cost: PricePerMwh(2_000),
            grid_charging: false,
        }
    }
}

/// Site facts for enrolment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiteConfig {
    /// Rated PV inverter power, W.
    pub inverter_w: u32,
    /// Rated battery discharge power, W.
    pub battery_w: u32,
    /// Latitude, degrees north.
    pub latitude: f64,
    /// Longitude, degrees east.
    pub longitude: f64,
}

/// The envelope control loop (`[control]`): battery first, then PV curtailment through SunSpec
/// model 123, so that the interval's metered export and import stay inside the envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Whether the gateway controls devices at all (false: it only measures and reports).
    pub enabled: bool,
    /// Export limit of the default envelope (no valid, current market envelope held), W
    /// averaged over the interval.
    pub default_export_w: u32,
    /// Import limit of the default envelope, W averaged over the interval.
    pub default_import_w: u32,
    /// The inverter drops a power limit this many seconds (device clock) after the last write
    /// (`WMaxLimPct_RvrtTms`); the gateway refreshes the limit at half of it while needed.
    pub revert_secs: u16,
    /// Least real time between two control writes to one device, unless the envelope changed.
    pub min_write_interval_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            default_export_w: 1_500,
            default_import_w: 11_000,
            revert_secs: 120,
            min_write_interval_ms: 1_000,
        }
    }
}

/// What a device is in the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A PV inverter (PV energy).
    Inverter,
    /// A battery (charge/discharge energy, SoC).
    Battery,
    /// The grid connection meter (import/export energy).
    GridMeter,
}

/// How a device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Modbus TCP.
    ModbusTcp,
    /// Modbus RTU on a serial port.
    ModbusRtu,
    /// Modbus RTU frames over a TCP connection (serial gateways).
    RtuOverTcp,
    /// An MQTT-publishing device.
    Mqtt,
}

/// The payload format of an MQTT device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttFormat {
    /// Tasmota `tele/<topic>/SENSOR` (ENERGY.Total kWh, ENERGY.Power W).
    Tasmota,
    /// Shelly Gen2+ `<id>/status/switch:0` (aenergy.total Wh) or `<id>/status/emdata:0`.
    ShellyGen2,
    /// OpenDTU `solar/<serial>/0/yieldtotal` (kWh) and `.../power` (W).
    Opendtu,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity (8N1).
    #[default]
    None,
    /// Even parity (8E1).
    Even,
    /// Odd parity (8O1).
    Odd,
}

/// One device. Which fields apply depends on `transport`; [`GatewayConfig::validate`] checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// A short name for logs and metrics.
    pub name: String,
    /// Inverter, battery or grid meter.
    pub role: Role,
    /// How it is reached.
    pub transport: Transport,
    /// Host (Modbus TCP, RTU over TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port (Modbus TCP default 502).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Modbus unit id (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u8>,
    /// Serial device path (Modbus RTU), e.g. `/dev/ttyUSB0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_path: Option<PathBuf>,
    /// Baud rate (Modbus RTU, default 9600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    /// Parity (Modbus RTU, default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Parity>,
    /// SunSpec base address (default: probe 40000, 0, 50000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunspec_base: Option<u16>,
    /// MQTT payload format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<MqttFormat>,
    /// MQTT device topic or id (Tasmota topic, Shelly id, OpenDTU serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl DeviceConfig {
    /// A Modbus TCP device.
    pub fn modbus_tcp(name: &str, role: Role, host: &str, port: u16, unit: u8) -> Self {
        DeviceConfig {
            name: name.into(),
            role,
            transport: Transport::ModbusTcp,
            host: Some(host.into()),
            port: Some(port),
            unit: Some(unit),
            serial_path: None,
            baud: None,
            parity: None,
            sunspec_base: None,
            format: None,
            topic: None,
        }
    }

    /// An MQTT device.
    pub fn mqtt(name: &str, role: Role, format: MqttFormat, topic: &str) -> Self {
        DeviceConfig {
            transport: Transport::Mqtt,
            host: None,
            port: None,
            unit: None,
            format: Some(format),
            topic: Some(topic.into()),
            ..Self::modbus_tcp(name, role, "", 0, 0)
        }
    }

    /// Where the device is, for messages: `host:port unit 1`.
    pub fn location(&self) -> String {
        match self.transport {
            Transport::ModbusTcp | Transport::RtuOverTcp => format!(
                "{}:{} unit {}",
                self.host.as_deref().unwrap_or("?"),
                self.port.unwrap_or(502),
                self.unit.unwrap_or(1)
            ),
            Transport::ModbusRtu => format!(
                "{} unit {}",
                self.serial_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                self.unit.unwrap_or(1)
            ),
            Transport::Mqtt => format!("mqtt topic {}", self.topic.as_deref().unwrap_or("?")),
        }
    }
}

impl GatewayConfig {
    /// Loads a TOML file (or only defaults) plus `GRIDMESH_GATEWAY_*` overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config: GatewayConfig = gridmesh_runtime::config::load(path, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment) and validates, for tests and `check-config`.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: GatewayConfig = toml::from_str(text).map_err(|e| {
            ConfigError::Load(gridmesh_runtime::config::ConfigError::Invalid {
                path: PathBuf::from("(text)"),
                message: e.to_string(),
            })
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The interval length.
    pub fn interval_length(&self) -> IntervalLength {
        IntervalLength::from_minutes(self.interval_minutes.into()).unwrap_or_default()
    }

    /// The MQTT client id.
    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gridmesh-gw-{}", self.gateway_id))
    }

    /// The bounds the market checks too (prices within ±[`MAX_ABS_PRICE`], site powers up to
    /// [`MAX_SITE_POWER_W`], coordinates on the globe), so a typo is named here and not as a
    /// refused order or enrolment later.
    fn validate_ranges(&self) -> Result<(), ConfigError> {
        for (field, price) in [
            ("agent.min_sell_price", self.agent.min_sell_price),
            ("agent.max_buy_price", self.agent.max_buy_price),
            ("agent.feed_in_price", self.agent.feed_in_price),
            ("agent.retail_price", self.agent.retail_price),
            ("agent.cycle_cost", self.agent.cycle_cost),
        ] {
            if !(-MAX_ABS_PRICE..=MAX_ABS_PRICE).contains(&price.0) {
                return Err(invalid(
                    field,
                    format!("{} is out of range", price.0),
                    format!(
                        "use minor units per MWh within ±{MAX_ABS_PRICE} (25.00 c/kWh = 25000)"
                    ),
                ));
            }
        }
        if !(50..=100).contains(&self.agent.round_trip_efficiency_pct) {
            return Err(invalid(
                "agent.round_trip_efficiency_pct",
                format!(
                    "{} % is not a battery's round-trip efficiency",
                    self.agent.round_trip_efficiency_pct
                ),
                "use 50 to 100 (typical home batteries: 85 to 95)",
            ));
        }
        if self.agent.cycle_cost.0 < 0 {
            return Err(invalid(
                "agent.cycle_cost",
                format!("{} is negative", self.agent.cycle_cost.0),
                "use 0 (cycle whenever it pays) or more, in minor units per MWh (2.0 c/kWh = 2000)",
            ));
        }
        if self.agent.feed_in_price > self.agent.retail_price {
            return Err(invalid(
                "agent.feed_in_price",
                format!(
                    "the feed-in price {} is above the retail price {}",
                    self.agent.feed_in_price.0, self.agent.retail_price.0
                ),
                "copy both from your electricity contract, minor units per MWh (8.0 c/kWh = 8000)",
            ));
        }
        for (field, wh) in [
            ("agent.battery_capacity_wh", self.agent.battery_capacity_wh),
            ("agent.min_order_wh", self.agent.min_order_wh),
        ] {
            if !(0..=MAX_ORDER_WH).contains(&wh) {
                return Err(invalid(
                    field,
                    format!("{wh} Wh is out of range"),
                    format!("use 0 to {MAX_ORDER_WH} Wh"),
                ));
            }
        }
        for (field, w) in [
            ("site.inverter_w", self.site.inverter_w),
            ("site.battery_w", self.site.battery_w),
        ] {
            if w > MAX_SITE_POWER_W {
                return Err(invalid(
                    field,
                    format!("{w} W is more than a gateway may enrol"),
                    format!(
                        "use at most {MAX_SITE_POWER_W} W (larger sites connect through the operator)"
                    ),
                ));
            }
        }
        for (field, degrees, max) in [
            ("site.latitude", self.site.latitude, 90.0),
            ("site.longitude", self.site.longitude, 180.0),
        ] {
            if !(-max..=max).contains(&degrees) {
                return Err(invalid(
                    field,
                    format!("{degrees} is not a coordinate"),
                    format!("use decimal degrees within ±{max}"),
                ));
            }
        }
        Ok(())
    }

    /// Checks what parsing cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if IntervalLength::from_minutes(self.interval_minutes.into()).is_err() {
            return Err(invalid(
                "interval_minutes",
                format!(
                    "{} minutes is not an allowed interval",
                    self.interval_minutes
                ),
                "use 5, 15, 30 or 60 (it must match the market's interval)",
            ));
        }
        if self.firmware.len() > 16 || !self.firmware.is_ascii() {
            return Err(invalid(
                "firmware",
                "longer than 16 ASCII bytes",
                "shorten it",
            ));
        }
        self.validate_ranges()?;
        self.local_page.validate()?;
        self.home_assistant.validate()?;
        if self.poll_ms == 0 || self.modbus_timeout_ms == 0 {
            return Err(invalid(
                "poll_ms / modbus_timeout_ms",
                "must be positive",
                "set poll_ms = 1000 and modbus_timeout_ms = 1000",
            ));
        }
        if let Some(url) = &self.mqtt.url
            && !(url.starts_with("mqtt://")
                || url.starts_with("tcp://")
                || crate::tls::is_mqtts(url))
        {
            return Err(invalid(
                "mqtt.url",
                format!("`{url}` is not an MQTT URL"),
                "write it as mqtt://host:1883, or mqtts://host:8883 for TLS",
            ));
        }
        match (&self.mqtt.client_cert_file, &self.mqtt.client_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "mqtt.client_cert_file / mqtt.client_key_file",
                    "a client certificate needs its key and a key needs its certificate",
                    "set both, or neither",
                ));
            }
            (Some(_), Some(_)) if !self.mqtt.url.as_deref().is_some_and(crate::tls::is_mqtts) => {
                return Err(invalid(
                    "mqtt.client_cert_file",
                    "a client certificate is only sent over TLS, but mqtt.url is not mqtts://",
                    "use mqtts://host:8883, or remove client_cert_file and client_key_file",
                ));
            }
            _ => {}
        }
        if self.mqtt.username.is_some() && self.mqtt.password_file.is_none() {
            return Err(invalid(
                "mqtt.username",
                "a broker username is only sent with a password",
                "set mqtt.password_file to a file holding the gateway's broker password",
            ));
        }
        for (name, url) in [
            ("market_url", &self.market_url),
            ("settlement_url", &self.settlement_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    name,
                    format!("`{url}` is not an HTTP URL"),
                    "write it as http://host:port, or https://host:port for TLS",
                ));
            }
        }
        if self.health_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "health_listen",
                format!("`{}` is not an IP:port address", self.health_listen),
                "write it as 127.0.0.1:9100",
            ));
        }
        if let Some(clock) = &self.clock
            && !(clock.speed.is_finite() && clock.speed > 0.0)
        {
            return Err(invalid(
                "clock.speed",
                "must be a positive number",
                "use 1.0 for real time",
            ));
        }
        if self.control.revert_secs < 2 {
            return Err(invalid(
                "control.revert_secs",
                format!(
                    "{} s leaves no time to refresh a limit before the inverter drops it",
                    self.control.revert_secs
                ),
                "use at least 2 (default 120)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let field = |key: &str| format!("devices[{i}] ({}).{key}", device.name);
            if !names.insert(device.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    "the name is used twice",
                    "give every device its own name",
                ));
            }
            match device.transport {
                Transport::ModbusTcp | Transport::RtuOverTcp => {
                    if device.host.as_deref().unwrap_or("").is_empty() {
                        return Err(invalid(
                            field("host"),
                            "a Modbus TCP device needs a host",
                            "add host = \"192.168.1.50\" (run `edge-gateway detect HOST` to find devices)",
                        ));
                    }
                }
                Transport::ModbusRtu => {
                    if device.serial_path.is_none() {
                        return Err(invalid(
                            field("serial_path"),
                            "a Modbus RTU device needs a serial port",
                            "add serial_path = \"/dev/ttyUSB0\"",
                        ));
                    }
                }
                Transport::Mqtt => {
                    if device.format.is_none() || device.topic.is_none() {
                        return Err(invalid(
                            field("format"),
                            "an MQTT device needs a format and a topic",
                            "add format = \"tasmota\" | \"shelly_gen2\" | \"opendtu\" and topic = \"<device topic>\"",
                        ));
                    }
                    if self.mqtt.url.is_none() {
                        return Err(invalid(
                            "mqtt.url",
                            format!(
                                "device `{}` is an MQTT device but no broker is configured",
                                device.name
                            ),
                            "set [mqtt] url = \"mqtt://host:1883\"",
                        ));
                    }
                }
            }
            if device.unit == Some(0) && device.transport != Transport::Mqtt {
                return Err(invalid(
                    field("unit"),
                    "unit 0 is the broadcast address and never answers",
                    "use the device's unit id (often 1; SunSpec meters often 2 or 126)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, expected: &[&str]) {
        let err = GatewayConfig::from_toml(text).unwrap_err().to_string();
        for piece in expected {
            assert!(err.contains(piece), "`{piece}` not in: {err}");
        }
    }

    #[test]
    fn out_of_range_values_are_named() {
        check_err(
            &format!("[agent]\nmin_sell_price = {}\n", i64::MIN),
            &["agent.min_sell_price", "out of range", "10000000"],
        );
        check_err(
            "[agent]\nmax_buy_price = 10000001\n",
            &["agent.max_buy_price"],
        );
        check_err(
            "[agent]\nbattery_capacity_wh = -1\n",
            &["agent.battery_capacity_wh"],
        );
        check_err(
            "[agent]\nround_trip_efficiency_pct = 120\n",
            &["agent.round_trip_efficiency_pct", "50 to 100"],
        );
        check_err(
            "[agent]\ncycle_cost = -1\n",
            &["agent.cycle_cost", "negative"],
        );
        check_err(
            "[agent]\nfeed_in_price = 31000\n",
            &["agent.feed_in_price", "above the retail price 30000"],
        );
        check_err("[agent]\nstrategy = \"clever\"\n", &["strategy"]);
        let scheduled = GatewayConfig::from_toml("[agent]\nstrategy = \"scheduled\"\n").unwrap();
        assert_eq!(scheduled.agent.strategy, AgentStrategy::Scheduled);
        check_err("[site]\ninverter_w = 1000001\n", &["site.inverter_w"]);
        check_err("[site]\nlatitude = 91.0\n", &["site.latitude"]);
        check_err("[site]\nlongitude = -180.5\n", &["site.longitude"]);
        check_err("[site]\nlatitude = nan\n", &["site.latitude"]);
        assert!(
            GatewayConfig::from_toml(
                "[agent]\nmin_sell_price = -10000000\n[site]\ninverter_w = 1000000\nlatitude = -90.0\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn the_zone_is_an_identifier() {
        assert_eq!(GatewayConfig::from_toml("").unwrap().zone, None);
        let c = GatewayConfig::from_toml("zone = \"north\"\n").unwrap();
        assert_eq!(c.zone, Some(ZoneId::new("north").unwrap()));
        assert!(GatewayConfig::from_toml("zone = \"no zone\"\n").is_err());
    }

    #[test]
    fn minimal_and_full_configs_parse() {
        let c = GatewayConfig::from_toml("").unwrap();
        assert_eq!(c.interval_minutes, 15);
        let c = GatewayConfig::from_toml(
            r#"
gateway_id = "gw-h001"
participant = "h001"
node = "f1-h001"
market_url = "http://127.0.0.1:8081"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[devices]]
name = "inv"
role = "inverter"
transport = "modbus_tcp"
host = "127.0.0.1"
port = 15020
unit = 1
[[devices]]
name = "plug"
role = "grid_meter"
transport = "mqtt"
format = "tasmota"
topic = "meter1"
"#,
        )
        .unwrap();
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].location(), "127.0.0.1:15020 unit 1");
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        check_err(
            "interval_minutes = \"x\"\n",
            &["line 1", "interval_minutes"],
        );
        check_err("\n\nbogus = 1\n", &["line 3", "bogus"]);
        check_err("gateway_id = \"gw 1\"\n", &["line 1", "letters, digits"]);
        check_err(
            "interval_minutes = 10\n",
            &["interval_minutes", "5, 15, 30 or 60"],
        );
        check_err(
            "[[devices]]\nname = \"a\"\nrole = \"inverter\"\ntransport = \"modbus_tcp\"\n",
            &["devices[0] (a).host", "detect"],
        );
        check_err(
            "[[devices]]\nname = \"a\"\nrole = \"solar\"\ntransport = \"modbus_tcp\"\n",
            &["line 3", "inverter"],
        );
        check_err(
            "[mqtt]\nurl = \"ws://x:8883\"\n",
            &["mqtt.url", "mqtts://host:8883"],
        );
        check_err(
            "[mqtt]\nurl = \"mqtts://x:8883\"\nclient_cert_file = \"gw.crt\"\n",
            &["client_key_file", "set both"],
        );
        check_err(
            "[mqtt]\nurl = \"mqtt://x:1883\"\nclient_cert_file = \"gw.crt\"\nclient_key_file = \"gw.pem\"\n",
            &["only sent over TLS", "mqtts://"],
        );
        check_err(
            "[mqtt]\nurl = \"mqtt://x:1883\"\nusername = \"gw\"\n",
            &["mqtt.username", "password_file"],
        );
        check_err("[tls]\ncafile = \"x\"\n", &["line 2", "cafile"]);
        check_err(
            "[[devices]]\nname = \"a\"\nrole = \"inverter\"\ntransport = \"mqtt\"\nformat = \"tasmota\"\ntopic = \"t\"\n",
            &["mqtt.url", "no broker"],
        );
        check_err(
            "\nmarket_public_key = \"not-a-key\"\n",
            &["line 2", "market_public_key", "32 bytes in standard base64"],
        );
        check_err(
            "[control]\nrevert_secs = 1\n",
            &["control.revert_secs", "at least 2"],
        );
        check_err("[control]\nrevert = 1\n", &["line 2", "revert"]);
    }

    #[test]
    fn tls_settings_parse() {
        let c = GatewayConfig::from_toml(
            "market_url = \"https://market.example:8443\"\n[tls]\nca_file = \"/etc/gridmesh/ca.pem\"\n[mqtt]\nurl = \"mqtts://broker.example:8883\"\nclient_cert_file = \"gw.crt\"\nclient_key_file = \"gw.pem\"\npassword_file = \"broker.password\"\n",
        )
        .unwrap();
        assert_eq!(
            c.tls.ca_file.unwrap(),
            PathBuf::from("/etc/gridmesh/ca.pem")
        );
        assert_eq!(c.mqtt.client_key_file.unwrap(), PathBuf::from("gw.pem"));
    }

    #[test]
    fn control_defaults_and_the_market_key() {
        let c = GatewayConfig::from_toml("").unwrap();
        assert!(c.control.enabled);
        assert_eq!(
            (
                c.control.default_export_w,
                c.control.default_import_w,
                c.control.revert_secs
            ),
            (1_500, 11_000, 120)
        );
        assert_eq!(c.market_public_key, None);
        let key = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
        let c = GatewayConfig::from_toml(&format!(
            "market_public_key = \"{key}\"\n[control]\nenabled = false\ndefault_export_w = 0\nmin_write_interval_ms = 500\n"
        ))
        .unwrap();
        assert_eq!(c.market_public_key.unwrap().to_string(), key);
        assert!(!c.control.enabled);
        assert_eq!(c.control.default_export_w, 0);
        assert_eq!(c.control.min_write_interval_ms, 500);
    }
}
