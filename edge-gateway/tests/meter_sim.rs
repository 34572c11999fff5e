//! The gateway against meter-sim over real TCP and the real Mosquitto.
//!
//! Documented tolerance: the gateway's own rounding keeps each delta within 1 Wh of the
//! counter difference at the boundaries (see `accountant`). Against meter-sim, whose physics
//! advances in ticks of at least 20 ms real time (2 simulated seconds at speed 100) while the
//! gateway timestamps a poll when it sends it, a boundary value can lag by up to one tick:
//! each interval's delta is checked within 3 Wh + 2% of the true energy, and the sum over all
//! intervals (where only the two outer boundaries contribute) within 8 Wh per channel.

mod common;

use common::*;
use edge_gateway::config::{DeviceConfig, GatewayConfig, MqttFormat, Role};
use edge_gateway::reader::ModbusDevice;
use edge_gateway::{KeySource, run_with_key};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::reading::ReadingFlags;
use gridmesh_protocol::{GatewayId, Reading};
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::scenario::MqttOptions;
use meter_sim::{DeviceKind, Scenario};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn gateway_config(gw: &str, dir: &std::path::Path, devices: Vec<DeviceConfig>) -> GatewayConfig {
    let mut c = GatewayConfig {
        gateway_id: GatewayId::new(gw).unwrap(),
        interval_minutes: 5,
        outbox_path: dir.join(format!("{gw}.db")),
        poll_ms: 100,
        modbus_timeout_ms: 500,
        health_listen: "127.0.0.1:0".into(),
        devices,
        ..GatewayConfig::default()
    };
    c.mqtt.url = Some(BROKER.into());
    c
}

fn check_against_truth(sim: &meter_sim::Simulator, home: &str, readings: &[Reading]) {
    let mut sums = [0i64; 5];
    let mut truth_sums = [0i64; 5];
    for r in readings {
        let truth = sim
            .ground_truth(home, &r.interval)
            .unwrap_or_else(|| panic!("no ground truth for {home} {}", r.interval))
            .registers()
            .as_array();
        for (i, (got, want)) in r.deltas.as_array().iter().zip(truth).enumerate() {
            let tolerance = 3 + want.0 / 50;
            assert!(
                (got.0 - want.0).abs() <= tolerance,
                "{home} {} channel {i}: gateway {} Wh, truth {} Wh",
                r.interval,
                got.0,
                want.0
            );
            sums[i] += got.0;
            truth_sums[i] += want.0;
        }
    }
    for i in 0..5 {
        assert!(
            (sums[i] - truth_sums[i]).abs() <= 8,
            "{home} channel {i}: {} vs {}",
            sums[i],
            truth_sums[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_homes_over_modbus_match_ground_truth() {
    let mut scenario = Scenario::small(3, 11);
    scenario.speed = 100.0;
    let clock = scenario.clock();
    let shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock.clone(), &shutdown)
        .await
        .unwrap();
    let manifest = sim.manifest();
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let mut streams = Vec::new();
    for (i, home) in manifest.homes.iter().enumerate() {
        let gw = unique(&format!("sim-{}", home.id));
        let rx = subscribe_readings(&gw, cancel.clone());
        let key = SigningKeyPair::from_seed([10 + i as u8; 32]);
        run_with_key(
            gateway_config(&gw, dir.path(), modbus_devices(home)),
            KeySource::Key(Box::new(key.clone())),
            clock.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        streams.push((home.id.clone(), home.battery_kwh > 0.0, key, rx));
    }
    for (home, has_battery, key, rx) in &mut streams {
        let items = collect(rx, 3, Duration::from_secs(40)).await;
        for (envelope, _) in &items {
            assert_eq!(
                &envelope.public_key,
                &key.public_key(),
                "signed by the gateway's key"
            );
        }
        let readings = dedup(&items);
        assert!(
            readings.len() >= 3,
            "{home}: only {} readings",
            readings.len()
        );
        assert_contiguous(&readings);
        check_against_truth(&sim, home, &readings);
        for r in &readings {
            assert!(
                !r.flags.contains(ReadingFlags::DEVICE_ERROR),
                "{home}: {:?}",
                r.flags.names()
            );
            assert_eq!(r.flags.contains(ReadingFlags::PARTIAL), !*has_battery);
            assert_eq!(r.soc_permille.is_some(), *has_battery);
        }
    }
    shutdown.stop().await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_devices_tasmota_and_opendtu_match_ground_truth() {
    let mut scenario = Scenario::small(1, 5);
    scenario.speed = 100.0;
    let prefix = unique("simmqtt");
    scenario.mqtt = Some(MqttOptions {
        url: BROKER.into(),
        topic_prefix: prefix,
        ..MqttOptions::default()
    });
    let clock = scenario.clock();
    let shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock.clone(), &shutdown)
        .await
        .unwrap();
    let home = sim.manifest().homes[0].clone();
    let topic = |kind: DeviceKind| {
        home.device(kind)
            .and_then(|d| d.mqtt.clone())
            .expect("published over MQTT")
            .topic
    };
    let mut devices = vec![
        DeviceConfig::mqtt(
            "meter",
            Role::GridMeter,
            MqttFormat::Tasmota,
            &topic(DeviceKind::Meter),
        ),
        DeviceConfig::mqtt(
            "pv",
            Role::Inverter,
            MqttFormat::Opendtu,
            &topic(DeviceKind::Inverter),
        ),
    ];
    devices.extend(
        modbus_devices(&home)
            .into_iter()
            .filter(|d| d.role == Role::Battery),
    );
    let gw = unique("simmqtt-gw");
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings(&gw, cancel.clone());
    let dir = tempfile::tempdir().unwrap();
    run_with_key(
        gateway_config(&gw, dir.path(), devices),
        KeySource::Key(Box::new(SigningKeyPair::from_seed([21; 32]))),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let readings = dedup(&collect(&mut rx, 3, Duration::from_secs(40)).await);
    assert!(readings.len() >= 3, "only {} readings", readings.len());
    assert_contiguous(&readings);
    // MQTT devices publish every 10 simulated seconds: boundaries are interpolated between
    // messages, within the same tolerance.
    check_against_truth(&sim, &home.id, &readings);
    assert!(
        readings.iter().all(|r| r.flags == ReadingFlags::empty()),
        "{:?}",
        readings.iter().map(|r| r.flags.names()).collect::<Vec<_>>()
    );
    shutdown.stop().await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_steering_through_model_124() {
    let mut scenario = Scenario::small(1, 3);
    scenario.speed = 1.0;
    let clock = scenario.clock();
    let shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock.clone(), &shutdown)
        .await
        .unwrap();
    let home = sim.manifest().homes[0].clone();
    let battery = modbus_devices(&home)
        .into_iter()
        .find(|d| d.role == Role::Battery)
        .unwrap();
    let mut device = ModbusDevice::new(battery, Duration::from_millis(500));
    device.poll().await.unwrap();
    device.steer(-2000, 900).await.unwrap();
    let id = home.id.clone();
    let mut discharging = 0;
    for _ in 0..50 {
        sim.sync();
        discharging = sim
            .status()
            .homes
            .iter()
            .find(|h| h.id == id)
            .unwrap()
            .battery_w;
        if discharging > 1500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        (1900..=2100).contains(&discharging),
        "battery W after steering: {discharging}"
    );
    device.steer(0, 900).await.unwrap();
    shutdown.stop().await;
}
