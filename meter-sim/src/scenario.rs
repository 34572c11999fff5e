//! The scenario: which homes exist, what they own, where they listen and how time runs.
//!
//! A scenario is plain TOML (see `meter-sim/README.md` for an annotated example). Every field
//! has a default, so an empty file, or [`Scenario::default`], is the built-in neighbourhood of
//! twelve homes on two feeders. [`Scenario::resolve`] validates it and expands it into one
//! [`HomeParams`] per home.

use crate::faults::{DeviceKind, Fault};
use chrono::{DateTime, Utc};
use gridmesh_protocol::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Why a scenario cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// A field has a value outside its range.
    #[error("scenario field `{field}` is invalid: {message}")]
    Invalid {
        /// The field (for example `homes[3].kwp`).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A whole simulated neighbourhood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random process (clouds, load noise, appliance spikes).
    pub seed: u64,
    /// Simulated time at start; `None` = the wall clock at start.
    pub start: Option<DateTime<Utc>>,
    /// Simulated seconds per real second (60 = a simulated hour per real minute).
    pub speed: f64,
    /// Address the Modbus servers bind to and the manifest names.
    pub host: String,
    /// Port of the first home; home *i* listens on `base_port + i`. 0 = an ephemeral port per home.
    pub base_port: u16,
    /// Latitude in degrees (north positive) used for the sun's position.
    pub latitude: f64,
    /// Longitude in degrees (east positive); solar time = UTC + longitude / 15 h.
    pub longitude: f64,
    /// Physics step in simulated seconds (1 is the default and the finest).
    pub step_seconds: u32,
    /// How many simulated days of ground truth to keep.
    pub history_days: u32,
    /// Number of feeders `f1..fN` when homes do not name their feeder.
    pub feeders: usize,
    /// The homes: a count (generated from the defaults and the seed) or an explicit list.
    pub homes: Homes,
    /// Values for every home that does not set its own.
    pub defaults: HomeDefaults,
    /// Optional MQTT device emulation.
    pub mqtt: Option<MqttOptions>,
    /// Faults injected at given simulated times.
    pub faults: Vec<ScheduledFault>,
}

/// The homes of a scenario: a count or an explicit list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Homes {
    /// `homes = 12`: homes `h001..h012`, sizes varied around the defaults by the seed.
    Count(usize),
    /// `[[homes]]` tables.
    List(Vec<HomeSpec>),
}

/// One explicitly listed home; unset fields take the scenario's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeSpec {
    /// Identifier such as `h001` (letters, digits and `. _ : -`).
    pub id: String,
    /// Feeder node id such as `f1`.
    pub feeder: Option<String>,
    /// PV peak power in kWp (0 = no PV inverter).
    pub kwp: Option<f64>,
    /// Usable battery capacity in kWh (0 = no battery).
    pub battery_kwh: Option<f64>,
    /// Annual household consumption in kWh.
    pub annual_load_kwh: Option<f64>,
    /// AC rating of the PV inverter in W.
    pub inverter_w: Option<u32>,
    /// Charge and discharge power limit of the battery in W.
    pub battery_w: Option<u32>,
    /// What the counters show at start, in Wh: grid import, grid export, PV, battery charge,
    /// battery discharge. Lets a stopped simulation resume where its meters were (default: a
    /// used-looking value derived from the seed).
    pub counters_wh: Option<[u64; 5]>,
    /// State of charge at start, percent (default: `defaults.initial_soc_pct`).
    pub soc_pct: Option<f64>,
}

/// Defaults for homes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeDefaults {
    /// PV peak power in kWp.
    pub kwp: f64,
    /// Battery capacity in kWh.
    pub battery_kwh: f64,
    /// Annual consumption in kWh.
    pub annual_load_kwh: f64,
    /// Panel tilt in degrees from horizontal.
    pub tilt_deg: f64,
    /// Panel azimuth in degrees from north (180 = south).
    pub azimuth_deg: f64,
    /// Battery round-trip efficiency (0..1].
    pub round_trip_efficiency: f64,
    /// State of charge at start, percent.
    pub initial_soc_pct: f64,
    /// Minimum reserve, percent (SunSpec MinRsvPct / SoCRsvMin).
    pub reserve_pct: f64,
    /// When a count of homes is given: every how-many-th home has no battery (0 = all have one).
    pub no_battery_every: usize,
    /// Grid power the battery controller aims for in self-consumption, W (+ = import), as real
    /// controllers keep a small import to avoid feeding the battery into the grid.
    pub grid_setpoint_w: f64,
}

impl Default for HomeDefaults {
    fn default() -> Self {
        HomeDefaults {
            kwp: 6.0,
            battery_kwh: 10.0,
            annual_load_kwh: 4000.0,
            tilt_deg: 30.0,
            azimuth_deg: 180.0,
            round_trip_efficiency: 0.92,
            initial_soc_pct: 50.0,
            reserve_pct: 5.0,
            no_battery_every: 3,
            grid_setpoint_w: 30.0,
        }
    }
}

/// How homes appear on MQTT (in addition to Modbus, or instead of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttOptions {
    /// Broker URL, `mqtt://host:port`.
    pub url: String,
    /// How the grid meter publishes: `tasmota`, `shelly` or `none`.
    pub meter: MeterFlavour,
    /// How the PV inverter publishes: `opendtu` or `none`.
    pub pv: PvFlavour,
    /// Publish period in simulated seconds (at most ten publishes per real second are made).
    pub every_seconds: f64,
    /// Whether the Modbus servers still run (`false` = MQTT only).
    pub modbus: bool,
    /// Prefix put before every topic (empty = the devices' usual topics); tests use it to keep
    /// their topics apart.
    pub topic_prefix: String,
}

impl Default for MqttOptions {
    fn default() -> Self {
        MqttOptions {
            url: "mqtt://127.0.0.1:1883".into(),
            meter: MeterFlavour::Tasmota,
            pv: PvFlavour::Opendtu,
            every_seconds: 10.0,
            modbus: true,
            topic_prefix: String::new(),
        }
    }
}

/// MQTT format of the grid meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterFlavour {
    /// Tasmota SML reader: `tele/<topic>/SENSOR` with `ENERGY.Total` (import kWh),
    /// `ENERGY.ExportActive` (export kWh) and `ENERGY.Power` (W, + = import).
    Tasmota,
    /// Shelly Pro 3EM (Gen2): `<id>/status/em:0` and `<id>/status/emdata:0`.
    Shelly,
    /// Not published.
    None,
}

/// MQTT format of the PV inverter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PvFlavour {
    /// OpenDTU: `solar/<serial>/0/power` (W), `solar/<serial>/0/yieldtotal` (kWh),
    /// `solar/<serial>/0/yieldday` (Wh).
    Opendtu,
    /// Not published.
    None,
}

/// A fault injected when simulated time reaches `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledFault {
    /// The home id.
    pub home: String,
    /// The device.
    pub device: DeviceKind,
    /// Simulated time at which the fault starts.
    pub at: DateTime<Utc>,
    /// How long a lasting fault lasts, in simulated seconds (absent = until cleared).
    #[serde(default)]
    pub for_seconds: Option<u64>,
    /// The fault.
    pub fault: Fault,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 42,
            start: Some(
                DateTime::parse_from_rfc3339("2026-06-21T06:00:00Z")
                    .expect("valid literal")
                    .with_timezone(&Utc),
            ),
            speed: 1.0,
            host: "127.0.0.1".into(),
            base_port: 15020,
            latitude: 48.14,
            longitude: 11.58,
            step_seconds: 1,
            history_days: 7,
            feeders: 2,
            homes: Homes::Count(12),
            defaults: HomeDefaults::default(),
            mqtt: None,
            faults: Vec::new(),
        }
    }
}

/// A fully resolved home: everything the physics and the servers need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomeParams {
    /// Position in the scenario (0-based); also the port offset.
    pub index: usize,
    /// Identifier.
    pub id: String,
    /// Feeder node id.
    pub feeder: String,
    /// PV peak power in kWp (0 = no inverter).
    pub pv_kwp: f64,
    /// Battery capacity in kWh (0 = no battery).
    pub battery_kwh: f64,
    /// Annual consumption in kWh.
    pub annual_load_kwh: f64,
    /// Inverter AC limit in W.
    pub inverter_w: u32,
    /// Battery power limit in W.
    pub battery_w: u32,
    /// Panel tilt in degrees.
    pub tilt_deg: f64,
    /// Panel azimuth in degrees from north.
    pub azimuth_deg: f64,
    /// Battery round-trip efficiency.
    pub round_trip_efficiency: f64,
    /// Initial state of charge, percent.
    pub initial_soc_pct: f64,
    /// Minimum reserve, percent.
    pub reserve_pct: f64,
    /// Counter readings at start, if given (see [`HomeSpec::counters_wh`]).
    pub counters_wh: Option<[u64; 5]>,
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
    /// Grid set-point of the battery controller in W.
    pub grid_setpoint_w: f64,
}

impl HomeParams {
    /// Whether the home has a PV inverter.
    pub fn has_pv(&self) -> bool {
        self.pv_kwp > 0.0
    }

    /// Whether the home has a battery.
    pub fn has_battery(&self) -> bool {
        self.battery_kwh > 0.0
    }
}

/// A deterministic number in [0, 1) from a seed and a key.
pub(crate) fn unit_hash(seed: u64, key: u64) -> f64 {
    let mut z = seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Scenario {
    /// `homes` homes on two feeders, with the given seed, ephemeral ports and a fixed start
    /// (2026-06-21 10:00 UTC, when the sun is up) at speed 1: the usual test fixture.
    pub fn small(homes: usize, seed: u64) -> Self {
        Scenario {
            seed,
            homes: Homes::Count(homes),
            base_port: 0,
            feeders: 2.min(homes.max(1)),
            start: Some(
                DateTime::parse_from_rfc3339("2026-06-21T10:00:00Z")
                    .expect("valid literal")
                    .with_timezone(&Utc),
            ),
            ..Scenario::default()
        }
    }

    /// A clock for this scenario: simulated time from `start` (or now) at `speed`. Hand clones
    /// of it to every service that must agree on simulated time.
    pub fn clock(&self) -> gridmesh_runtime::clock::Clock {
        match self.start {
            None if self.speed == 1.0 => gridmesh_runtime::clock::Clock::system(),
            start => {
                gridmesh_runtime::clock::Clock::scaled(start.unwrap_or_else(Utc::now), self.speed)
            }
        }
    }

    /// Parses a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The number of homes.
    pub fn home_count(&self) -> usize {
        match &self.homes {
            Homes::Count(n) => *n,
            Homes::List(list) => list.len(),
        }
    }

    /// Validates the scenario and expands it into one [`HomeParams`] per home.
    pub fn resolve(&self) -> Result<Vec<HomeParams>, ScenarioError> {
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(invalid(
                "speed",
                "must be a positive number such as 1 or 60",
            ));
        }
        if !(-90.0..=90.0).contains(&self.latitude) {
            return Err(invalid("latitude", "must lie between -90 and 90 degrees"));
        }
        if !(-180.0..=180.0).contains(&self.longitude) {
            return Err(invalid(
                "longitude",
                "must lie between -180 and 180 degrees",
            ));
        }
        if self.step_seconds == 0 || 300 % self.step_seconds != 0 {
            return Err(invalid(
                "step_seconds",
                "must divide 300 (for example 1, 2, 5, 10 or 60) so steps land on interval boundaries",
            ));
        }
        if self.history_days == 0 || self.history_days > 366 {
            return Err(invalid("history_days", "must lie between 1 and 366"));
        }
        let d = &self.defaults;
        if !(d.round_trip_efficiency > 0.0 && d.round_trip_efficiency <= 1.0) {
            return Err(invalid(
                "defaults.round_trip_efficiency",
                "must lie in (0, 1], for example 0.92",
            ));
        }
        if !(0.0..=100.0).contains(&d.initial_soc_pct) || !(0.0..100.0).contains(&d.reserve_pct) {
            return Err(invalid(
                "defaults.initial_soc_pct / defaults.reserve_pct",
                "must be percentages (reserve below 100)",
            ));
        }
        let count = self.home_count();
        if count == 0 {
            return Err(invalid("homes", "at least one home is needed"));
        }
        if self.base_port != 0 && self.base_port as usize + count > 65_536 {
            return Err(invalid(
                "base_port",
                format!(
                    "{} homes starting at port {} run past port 65535",
                    count, self.base_port
                ),
            ));
        }
        let feeders = self.feeders.max(1);
        let default_feeder = |i: usize| format!("f{}", 1 + i * feeders / count);
        let mut homes = Vec::with_capacity(count);
        match &self.homes {
            Homes::Count(n) => {
                for i in 0..*n {
                    // Vary sizes around the defaults, deterministically from the seed.
                    let vary = |k: u64, spread: f64| {
                        1.0 + spread * (2.0 * unit_hash(self.seed, (i as u64) << 8 | k) - 1.0)
                    };
                    let kwp = (d.kwp * vary(1, 0.4) * 10.0).round() / 10.0;
                    let no_battery = d.no_battery_every > 0 && i % d.no_battery_every == 2;
                    let battery_kwh = if no_battery {
                        0.0
                    } else {
                        (d.battery_kwh * vary(2, 0.3) * 10.0).round() / 10.0
                    };
                    let spec = HomeSpec {
                        id: format!("h{:03}", i + 1),
                        kwp: Some(kwp),
                        battery_kwh: Some(battery_kwh),
                        annual_load_kwh: Some((d.annual_load_kwh * vary(3, 0.35)).round()),
                        ..HomeSpec::default()
                    };
                    homes.push(self.home_from_spec(i, &spec, default_feeder(i))?);
                }
            }
            Homes::List(list) => {
                for (i, spec) in list.iter().enumerate() {
                    homes.push(self.home_from_spec(i, spec, default_feeder(i))?);
                }
            }
        }
        let mut seen = HashSet::new();
        for h in &homes {
            if !seen.insert(h.id.clone()) {
                return Err(invalid(
                    "homes",
                    format!("home id `{}` appears twice", h.id),
                ));
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            if !seen.contains(&f.home) {
                return Err(invalid(
                    format!("faults[{i}].home"),
                    format!("no home is called `{}`", f.home),
                ));
            }
        }
        if let Some(m) = &self.mqtt
            && !(m.every_seconds.is_finite() && m.every_seconds > 0.0)
        {
            return Err(invalid(
                "mqtt.every_seconds",
                "must be a positive number of seconds",
            ));
        }
        Ok(homes)
    }

    fn home_from_spec(
        &self,
        index: usize,
        spec: &HomeSpec,
        default_feeder: String,
    ) -> Result<HomeParams, ScenarioError> {
        let field = |name: &str| format!("homes[{index}].{name}");
        let id = if spec.id.is_empty() {
            format!("h{:03}", index + 1)
        } else {
            spec.id.clone()
        };
        gridmesh_protocol::DeviceId::new(id.clone())
            .map_err(|e| invalid(field("id"), e.to_string()))?;
        let feeder = spec.feeder.clone().unwrap_or(default_feeder);
        NodeId::new(feeder.clone()).map_err(|e| invalid(field("feeder"), e.to_string()))?;
        let d = &self.defaults;
        let pv_kwp = spec.kwp.unwrap_or(d.kwp);
        if !(0.0..=30.0).contains(&pv_kwp) {
            return Err(invalid(
                field("kwp"),
                "must lie between 0 and 30 kWp (0 = no PV)",
            ));
        }
        let battery_kwh = spec.battery_kwh.unwrap_or(d.battery_kwh);
        if !(0.0..=100.0).contains(&battery_kwh) {
            return Err(invalid(
                field("battery_kwh"),
                "must lie between 0 and 100 kWh (0 = no battery)",
            ));
        }
        let annual_load_kwh = spec.annual_load_kwh.unwrap_or(d.annual_load_kwh);
        if !(100.0..=50_000.0).contains(&annual_load_kwh) {
            return Err(invalid(
                field("annual_load_kwh"),
                "must lie between 100 and 50000 kWh",
            ));
        }
        let inverter_w = spec
            .inverter_w
            .unwrap_or_else(|| ((pv_kwp * 1000.0).round() as u32).clamp(600, 30_000));
        let battery_w = spec
            .battery_w
            .unwrap_or_else(|| ((battery_kwh * 500.0).round() as u32).clamp(1_000, 20_000));
        if inverter_w == 0 || inverter_w > 30_000 || battery_w == 0 || battery_w > 30_000 {
            return Err(invalid(
                field("inverter_w / battery_w"),
                "power ratings must lie between 1 and 30000 W",
            ));
        }
        Ok(HomeParams {
            index,
            id,
            feeder,
            pv_kwp,
            battery_kwh,
            annual_load_kwh,
            inverter_w,
            battery_w,
            tilt_deg: d.tilt_deg,
            azimuth_deg: d.azimuth_deg,
            round_trip_efficiency: d.round_trip_efficiency,
            initial_soc_pct: spec.soc_pct.unwrap_or(d.initial_soc_pct).clamp(0.0, 100.0),
            reserve_pct: d.reserve_pct,
            counters_wh: spec.counters_wh,
            latitude: self.latitude,
            longitude: self.longitude,
            grid_setpoint_w: d.grid_setpoint_w,
        })
    }
}

/// Which device of a home a unit id addresses (see the crate docs).
pub fn device_for_unit(unit: u8) -> Option<DeviceKind> {
    match unit {
        1 => Some(DeviceKind::Inverter),
        2 => Some(DeviceKind::Battery),
        3 => Some(DeviceKind::Meter),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_resolves_to_twelve_homes_on_two_feeders() {
        let homes = Scenario::default().resolve().unwrap();
        assert_eq!(homes.len(), 12);
        assert_eq!(homes[0].id, "h001");
        assert_eq!(homes[0].feeder, "f1");
        assert_eq!(homes[11].feeder, "f2");
        assert!(homes.iter().any(|h| !h.has_battery()));
        assert!(homes.iter().all(|h| h.has_pv()));
    }

    #[test]
    fn toml_with_list_and_count() {
        let s = Scenario::from_toml(
            "seed = 7\nbase_port = 0\n[[homes]]\nid = \"a1\"\nfeeder = \"f9\"\nkwp = 0\n[[homes]]\nid = \"a2\"\n",
        )
        .unwrap();
        let homes = s.resolve().unwrap();
        assert_eq!(homes.len(), 2);
        assert!(!homes[0].has_pv());
        assert_eq!(homes[0].feeder, "f9");
        let s = Scenario::from_toml("homes = 3").unwrap();
        assert_eq!(s.resolve().unwrap().len(), 3);
        assert!(Scenario::from_toml("homes = 3\nbogus = 1").is_err());
    }

    #[test]
    fn shipped_example_resolves() {
        let text = include_str!("../scenarios/neighbourhood.toml");
        let s = Scenario::from_toml(text).unwrap();
        let homes = s.resolve().unwrap();
        assert_eq!(homes.len(), 6);
        assert!(!homes[2].has_pv() && !homes[2].has_battery());
        assert_eq!(homes[3].battery_w, 5000);
        assert_eq!(s.faults.len(), 1);
        assert_eq!(s.defaults.reserve_pct, 10.0);
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut s = Scenario::small(2, 1);
        s.step_seconds = 7;
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("step_seconds"), "{e}");
        let s = Scenario::from_toml("[[homes]]\nid = \"bad id\"").unwrap();
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("homes[0].id"), "{e}");
    }
}
