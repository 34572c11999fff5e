//! MQTT device JSON (`edge_gateway::mqtt_devices`): Tasmota, Shelly Gen2 and OpenDTU messages,
//! as any device on the broker (or anyone who may publish on its topic) can send them.
//!
//! Input: one byte picks format and role; then messages, each a topic byte (one of the
//! format's real topics, or a topic read from the message), a time step in seconds (u16) and a
//! payload (u16 length). Every message is applied to the device's state; its values then go
//! through the accountant as the gateway's poll would, so that what a device publishes can
//! never panic the gateway or make negative energy.
#![no_main]

use edge_gateway::config::{DeviceConfig, MqttFormat, Role};
use edge_gateway::mqtt_devices::{MqttDeviceState, base_topic, subscriptions};
use gridmesh_fuzz::{T0_MS, account};
use libfuzzer_sys::fuzz_target;

const FORMATS: [MqttFormat; 3] = [
    MqttFormat::Tasmota,
    MqttFormat::ShellyGen2,
    MqttFormat::Opendtu,
];
const ROLES: [Role; 3] = [Role::Inverter, Role::GridMeter, Role::Battery];
const SUFFIXES: [&str; 8] = [
    "",
    "/status/switch:0",
    "/status/pm1:0",
    "/status/emdata:0",
    "/status/em:0",
    "/0/yieldtotal",
    "/0/power",
    "/0/yieldday",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(pick % 3)];
    let role = ROLES[usize::from((pick / 3) % 3)];
    let topic = match (pick / 9) % 3 {
        0 => "dev1",
        1 => "home/dev1/",
        _ => "shellypro3em-1/status/em:0",
    };
    let device = DeviceConfig::mqtt("dev", role, format, topic);
    let base = base_topic(&device);
    let _ = subscriptions(&device);
    let mut state = MqttDeviceState::default();
    let mut now = T0_MS;
    let mut polls = Vec::new();
    while rest.len() >= 5 {
        let kind = rest[0];
        let step_s = u16::from_be_bytes([rest[1], rest[2]]);
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let payload = &rest[5..(5 + len).min(rest.len())];
        rest = &rest[(5 + len).min(rest.len())..];
        now += i64::from(step_s) * 1_000;
        let (topic, payload) = if usize::from(kind) < SUFFIXES.len() {
            (format!("{base}{}", SUFFIXES[usize::from(kind)]), payload)
        } else {
            // The topic is the payload's first line.
            let split = payload
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(payload.len());
            let topic = String::from_utf8_lossy(&payload[..split]).into_owned();
            (topic, payload.get(split + 1..).unwrap_or_default())
        };
        let understood = state.apply(&device, &topic, payload, now);
        if understood {
            assert_eq!(state.updated_ms, Some(now));
        }
        for (_, mw) in &state.values.power_mw {
            assert!(*mw >= 0, "a negative power channel: {:?}", state.values);
        }
        polls.push((now, state.values.clone()));
    }
    account(&polls);
});
