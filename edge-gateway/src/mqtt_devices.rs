//! Devices that publish over MQTT: Tasmota, Shelly Gen2+ and OpenDTU, with their units
//! converted carefully (Tasmota `Total` and OpenDTU `yieldtotal` are kWh, Shelly `aenergy.total`
//! is Wh; powers are W) and staleness tracked.
//!
//! Parsing is pure ([`MqttDeviceState::apply`]); the gateway's MQTT session routes messages on
//! [`subscriptions`] to the matching device's state, and polling a device reads its state.

use crate::config::{DeviceConfig, MqttFormat, Role};
use crate::sample::{Channel, Counter, DeviceValues, float_to_milli};
use serde_json::Value;

/// The topic prefix a device's messages share: a bare Tasmota topic name, Shelly id or
/// OpenDTU serial expands to the formats' usual topics; a value with `/` in it is taken as the
/// full topic as the device (or meter-sim's manifest) names it, so prefixed set-ups work.
pub fn base_topic(device: &DeviceConfig) -> String {
    let topic = device.topic.as_deref().unwrap_or("").trim_end_matches('/');
    match device.format {
        Some(MqttFormat::Tasmota) if topic.contains('/') => topic.to_owned(),
        Some(MqttFormat::Tasmota) => format!("tele/{topic}/SENSOR"),
        Some(MqttFormat::ShellyGen2) => match topic.find("/status/") {
            Some(i) => topic[..i].to_owned(),
            None => topic.to_owned(),
        },
        Some(MqttFormat::Opendtu) if topic.contains('/') => match topic.rfind("/0/") {
            Some(i) => topic[..i].to_owned(),
            None => topic.to_owned(),
        },
        Some(MqttFormat::Opendtu) => format!("solar/{topic}"),
        None => topic.to_owned(),
    }
}

/// The topic filters a device needs.
pub fn subscriptions(device: &DeviceConfig) -> Vec<String> {
    let base = base_topic(device);
    match device.format {
        Some(MqttFormat::Tasmota) => vec![base],
        Some(MqttFormat::ShellyGen2) => vec![format!("{base}/status/+")],
        Some(MqttFormat::Opendtu) => vec![format!("{base}/0/+")],
        None => Vec::new(),
    }
}

/// The latest values an MQTT device published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttDeviceState {
    /// The values.
    pub values: DeviceValues,
    /// When they were last updated (gateway clock, Unix ms).
    pub updated_ms: Option<i64>,
}

fn energy_channel(role: Role) -> Option<Channel> {
    match role {
        Role::Inverter => Some(Channel::Pv),
        Role::GridMeter => Some(Channel::GridImport),
        Role::Battery => None,
    }
}

fn set_counter(values: &mut DeviceValues, channel: Channel, mwh: i64) {
    values.counters.retain(|(c, _)| *c != channel);
    values.counters.push((
        channel,
        Counter {
            mwh,
            modulus_mwh: None,
        },
    ));
}

fn set_power(values: &mut DeviceValues, role: Role, mw: i64) {
    values.power_mw.clear();
    match role {
        Role::GridMeter => values.split_power(mw, Channel::GridImport, Channel::GridExport),
        Role::Inverter => values.power_mw.push((Channel::Pv, mw.max(0))),
        Role::Battery => values.split_power(mw, Channel::BatteryDischarge, Channel::BatteryCharge),
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl MqttDeviceState {
    /// Applies one message for `device` received at `now_ms`; returns whether anything was
    /// understood.
    pub fn apply(
        &mut self,
        device: &DeviceConfig,
        topic: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> bool {
        let role = device.role;
        let base = base_topic(device);
        let text = String::from_utf8_lossy(payload);
        let mut understood = false;
        match device.format {
            Some(MqttFormat::Tasmota) => {
                if topic != base {
                    return false;
                }
                let Ok(json) = serde_json::from_str::<Value>(&text) else {
                    return false;
                };
                let energy = &json["ENERGY"];
                // Total and ExportActive are kWh.
                if let (Some(ch), Some(kwh)) = (energy_channel(role), number(energy.get("Total")))
                    && let Some(mwh) = float_to_milli(kwh, 1e6)
                {
                    set_counter(&mut self.values, ch, mwh);
                    understood = true;
                }
                if role == Role::GridMeter
                    && let Some(kwh) = number(energy.get("ExportActive"))
                    && let Some(mwh) = float_to_milli(kwh, 1e6)
                {
                    set_counter(&mut self.values, Channel::GridExport, mwh);
                }
                if let Some(w) = number(energy.get("Power")).and_then(|w| float_to_milli(w, 1e3)) {
                    set_power(&mut self.values, role, w);
                    understood = true;
                }
            }
            Some(MqttFormat::ShellyGen2) => {
                if !topic.starts_with(&format!("{base}/status/")) {
                    return false;
                }
                let Ok(json) = serde_json::from_str::<Value>(&text) else {
                    return false;
                };
                let component = topic.rsplit('/').next().unwrap_or("");
                if component.starts_with("switch:") || component.starts_with("pm1:") {
                    // aenergy.total is Wh, apower W.
                    if let (Some(ch), Some(whv)) =
                        (energy_channel(role), number(json.pointer("/aenergy/total")))
                        && let Some(mwh) = float_to_milli(whv, 1e3)
                    {
                        set_counter(&mut self.values, ch, mwh);
                        understood = true;
                    }
                    if let Some(w) = number(json.get("apower")).and_then(|w| float_to_milli(w, 1e3))
                    {
                        set_power(&mut self.values, role, w);
                        understood = true;
                    }
                } else if component.starts_with("emdata:") && role == Role::GridMeter {
                    // total_act / total_act_ret are Wh.
                    if let Some(mwh) =
                        number(json.get("total_act")).and_then(|v| float_to_milli(v, 1e3))
                    {
                        set_counter(&mut self.values, Channel::GridImport, mwh);
                        understood = true;
                    }
                    if let Some(mwh) =
                        number(json.get("total_act_ret")).and_then(|v| float_to_milli(v, 1e3))
                    {
                        set_counter(&mut self.values, Channel::GridExport, mwh);
                        understood = true;
                    }
                } else if component.starts_with("em:")
                    && let Some(w) =
                        number(json.get("total_act_power")).and_then(|w| float_to_milli(w, 1e3))
                {
                    set_power(&mut self.values, role, w);
                    understood = true;
                }
            }
            Some(MqttFormat::Opendtu) => {
                let prefix = format!("{base}/0/");
                let Some(point) = topic.strip_prefix(&prefix) else {
                    return false;
                };
                let value = text.trim().parse::<f64>().ok();
                match (point, value) {
                    // yieldtotal is kWh (yieldday is Wh and not a lifetime counter: unused).
                    ("yieldtotal", Some(kwh)) => {
                        if let (Some(ch), Some(mwh)) =
                            (energy_channel(role), float_to_milli(kwh, 1e6))
                        {
                            set_counter(&mut self.values, ch, mwh);
                            understood = true;
                        }
                    }
                    ("power", Some(w)) => {
                        if let Some(mw) = float_to_milli(w, 1e3) {
                            set_power(&mut self.values, role, mw);
                            understood = true;
                        }
                    }
                    _ => {}
                }
            }
            None => {}
        }
        if understood {
            self.updated_ms = Some(now_ms);
        }
        understood
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(format: MqttFormat, role: Role, topic: &str) -> DeviceConfig {
        DeviceConfig::mqtt("d", role, format, topic)
    }

    #[test]
    fn units_are_converted_per_format() {
        let d = dev(MqttFormat::Tasmota, Role::GridMeter, "plug");
        assert_eq!(subscriptions(&d), vec!["tele/plug/SENSOR"]);
        let mut s = MqttDeviceState::default();
        assert!(s.apply(
            &d,
            "tele/plug/SENSOR",
            br#"{"ENERGY":{"Total":12.345,"Power":-250,"ExportActive":1.5}}"#,
            7
        ));
        assert_eq!(s.values.counters[0].1.mwh, 12_345_000);
        assert_eq!(
            s.values.counters[1],
            (
                Channel::GridExport,
                Counter {
                    mwh: 1_500_000,
                    modulus_mwh: None
                }
            )
        );
        assert_eq!(
            s.values.power_mw,
            vec![(Channel::GridImport, 0), (Channel::GridExport, 250_000)]
        );
        assert_eq!(s.updated_ms, Some(7));

        let d = dev(MqttFormat::ShellyGen2, Role::Inverter, "shellyplus1pm-a");
        let mut s = MqttDeviceState::default();
        assert!(s.apply(
            &d,
            "shellyplus1pm-a/status/switch:0",
            br#"{"id":0,"apower":812.4,"aenergy":{"total":4567.891}}"#,
            1
        ));
        assert_eq!(
            s.values.counters[0],
            (
                Channel::Pv,
                Counter {
                    mwh: 4_567_891,
                    modulus_mwh: None
                }
            )
        );
        assert_eq!(s.values.power_mw, vec![(Channel::Pv, 812_400)]);

        let d = dev(MqttFormat::Opendtu, Role::Inverter, "114172220000");
        assert_eq!(subscriptions(&d), vec!["solar/114172220000/0/+"]);
        let full = dev(
            MqttFormat::Opendtu,
            Role::Inverter,
            "p1/solar/116100000001/0/yieldtotal",
        );
        assert_eq!(subscriptions(&full), vec!["p1/solar/116100000001/0/+"]);
        let full = dev(
            MqttFormat::Tasmota,
            Role::GridMeter,
            "p1/tele/h001-meter/SENSOR",
        );
        assert_eq!(subscriptions(&full), vec!["p1/tele/h001-meter/SENSOR"]);
        let full = dev(
            MqttFormat::ShellyGen2,
            Role::GridMeter,
            "p1/shellypro3em-h001/status/emdata:0",
        );
        assert_eq!(subscriptions(&full), vec!["p1/shellypro3em-h001/status/+"]);
        let mut s = MqttDeviceState::default();
        assert!(s.apply(&d, "solar/114172220000/0/yieldtotal", b"123.456", 1));
        assert!(!s.apply(&d, "solar/114172220000/0/yieldday", b"789", 2));
        assert!(s.apply(&d, "solar/114172220000/0/power", b"301.5", 3));
        assert_eq!(
            s.values.counters,
            vec![(
                Channel::Pv,
                Counter {
                    mwh: 123_456_000,
                    modulus_mwh: None
                }
            )]
        );
        assert_eq!(s.values.power_mw, vec![(Channel::Pv, 301_500)]);
        assert!(!s.apply(&d, "solar/114172220000/0/power", b"garbage", 4));
        assert_eq!(s.updated_ms, Some(3));
    }
}
