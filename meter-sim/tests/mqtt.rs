//! MQTT device emulation against the Mosquitto broker at 127.0.0.1:1883.

mod common;

use common::*;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings};
use meter_sim::scenario::{MeterFlavour, MqttOptions, PvFlavour};
use meter_sim::{DeviceKind, Scenario};
use std::collections::HashMap;
use std::time::Duration;

const BROKER: &str = "mqtt://127.0.0.1:1883";

/// Collects the latest payload per topic under `prefix/#` until `done` says enough.
async fn collect(
    prefix: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut settings = MqttSettings::new(BROKER, format!("{prefix}-listener"));
    settings.subscriptions = vec![format!("{prefix}/#")];
    let cancel = tokio_util::sync::CancellationToken::new();
    let session = gridmesh_runtime::shutdown::Shutdown::child_of(&cancel);
    let (handle, mut incoming) = MqttSession::start(settings, &session).unwrap();
    assert!(
        handle.wait_connected(Duration::from_secs(10)).await,
        "Mosquitto reachable at {BROKER}"
    );
    let mut seen = HashMap::new();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = incoming.recv().await {
            seen.insert(
                message.topic.clone(),
                String::from_utf8(message.payload.clone()).unwrap(),
            );
            handle.ack(message).await;
            if done(&seen) {
                break;
            }
        }
    })
    .await;
    cancel.cancel();
    assert!(
        result.is_ok(),
        "messages arrived: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
    seen
}

fn scenario(prefix: &str, meter: MeterFlavour, modbus: bool) -> Scenario {
    let mut s = Scenario::small(2, 12);
    s.mqtt = Some(MqttOptions {
        url: BROKER.into(),
        meter,
        pv: PvFlavour::Opendtu,
        every_seconds: 60.0,
        modbus,
        topic_prefix: prefix.into(),
    });
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasmota_meter_and_opendtu_inverter_publish_the_counters() {
    let prefix = format!("meter-sim-test-{}-tasmota", std::process::id());
    let (sim, shutdown) =
        start_scenario(scenario(&prefix, MeterFlavour::Tasmota, true), 600.0).await;
    let home = sim.manifest().homes[0].clone();
    let sensor = home
        .device(DeviceKind::Meter)
        .unwrap()
        .mqtt
        .clone()
        .unwrap();
    assert_eq!(sensor.format, "tasmota");
    assert_eq!(sensor.topic, format!("{prefix}/tele/h001-meter/SENSOR"));
    let pv_topic = home
        .device(DeviceKind::Inverter)
        .unwrap()
        .mqtt
        .clone()
        .unwrap()
        .topic;
    assert_eq!(
        pv_topic,
        format!("{prefix}/solar/116100000001/0/yieldtotal")
    );
    let seen = collect(&prefix, |s| {
        s.contains_key(&sensor.topic) && s.contains_key(&pv_topic)
    })
    .await;
    let (_, counters) = sim.register_counters("h001").unwrap();
    let payload: serde_json::Value = serde_json::from_str(&seen[&sensor.topic]).unwrap();
    let total_wh = (payload["ENERGY"]["Total"].as_f64().unwrap() * 1000.0).round() as i64;
    assert!(
        total_wh > 0 && total_wh <= counters.grid_import.0,
        "{total_wh} vs {counters:?}"
    );
    assert!(payload["ENERGY"]["ExportActive"].as_f64().is_some());
    assert!(payload["ENERGY"]["Power"].as_i64().is_some());
    assert!(payload["Time"].as_str().unwrap().starts_with("2026-06-21T"));
    let yield_wh = (seen[&pv_topic].parse::<f64>().unwrap() * 1000.0).round() as i64;
    assert!(yield_wh > 0 && yield_wh <= counters.pv.0);
    assert!(seen.contains_key(&format!("{prefix}/solar/116100000001/0/power")));
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shelly_meter_can_replace_modbus() {
    let prefix = format!("meter-sim-test-{}-shelly", std::process::id());
    let (sim, shutdown) =
        start_scenario(scenario(&prefix, MeterFlavour::Shelly, false), 600.0).await;
    assert_eq!(sim.modbus_addr("h001"), None);
    let home = sim.manifest().homes[1].clone();
    let meter = home.device(DeviceKind::Meter).unwrap();
    assert_eq!(meter.port, 0);
    let topic = meter.mqtt.clone().unwrap().topic;
    assert_eq!(topic, format!("{prefix}/shellypro3em-h002/status/emdata:0"));
    let em = format!("{prefix}/shellypro3em-h002/status/em:0");
    let seen = collect(&prefix, |s| s.contains_key(&topic) && s.contains_key(&em)).await;
    let emdata: serde_json::Value = serde_json::from_str(&seen[&topic]).unwrap();
    let (_, counters) = sim.register_counters("h002").unwrap();
    let import = emdata["total_act"].as_i64().unwrap();
    assert!(import > 0 && import <= counters.grid_import.0);
    assert!(emdata["total_act_ret"].as_i64().is_some());
    let em: serde_json::Value = serde_json::from_str(&seen[&em]).unwrap();
    assert!(em["total_act_power"].as_f64().is_some());
    shutdown.stop().await;
}
