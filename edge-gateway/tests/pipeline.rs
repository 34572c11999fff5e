//! The gateway end to end over real sockets: a SunSpec home on Modbus TCP, the real Mosquitto,
//! accelerated time (one 5-minute interval per real second).

mod common;

use common::*;
use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use edge_gateway::{KeySource, run_with_key};
use gridmesh_protocol::GatewayId;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::reading::ReadingFlags;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SPEED: f64 = 300.0;
/// Documented rounding: counters are whole Wh and boundaries are interpolated between polls,
/// so each interval's delta is within 2 Wh of the exact energy.
const TOLERANCE_WH: i64 = 2;

fn config(gateway: &str, home: &Home, dir: &std::path::Path, broker: &str) -> GatewayConfig {
    let mut c = GatewayConfig {
        gateway_id: GatewayId::new(gateway).unwrap(),
        interval_minutes: 5,
        outbox_path: dir.join("outbox.db"),
        key_path: dir.join("gw.key"),
        poll_ms: 50,
        modbus_timeout_ms: 200,
        stale_after_s: 120,
        health_listen: "127.0.0.1:0".into(),
        ..GatewayConfig::default()
    };
    c.mqtt.url = Some(broker.into());
    let (host, port) = ("127.0.0.1", home.addr.port());
    c.devices = vec![
        DeviceConfig::modbus_tcp("inverter", Role::Inverter, host, port, 1),
        DeviceConfig::modbus_tcp("battery", Role::Battery, host, port, 2),
        DeviceConfig::modbus_tcp("meter", Role::GridMeter, host, port, 3),
    ];
    c
}

fn deltas(r: &gridmesh_protocol::Reading) -> [i64; 5] {
    r.deltas.as_array().map(|w| w.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arrive_signed_contiguous_and_match_truth() {
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let gw = unique("truth");
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings(&gw, cancel.clone());
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKeyPair::from_seed([3; 32]);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config(&gw, &home, dir.path(), BROKER),
        KeySource::Key(Box::new(key.clone())),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let items = collect(&mut rx, 4, Duration::from_secs(30)).await;
    let readings = dedup(&items);
    assert!(readings.len() >= 4, "only {} readings", readings.len());
    assert_contiguous(&readings);
    for (envelope, _) in &items {
        assert_eq!(envelope.public_key, key.public_key());
    }
    for r in &readings {
        let truth = home.truth(r.interval.start(), r.interval.end());
        for (channel, (got, want)) in deltas(r).iter().zip(truth).enumerate() {
            assert!(
                (got - want).abs() <= TOLERANCE_WH,
                "channel {channel} of {}: {got} vs {want}",
                r.interval
            );
        }
        let registers = home.counters(r.interval.end());
        for (got, want) in r.registers.as_array().iter().zip(registers) {
            assert!(
                (got.0 - want).abs() <= TOLERANCE_WH,
                "register {got:?} vs {want}"
            );
        }
        assert_eq!(r.soc_permille, Some(655));
        assert!(
            !r.flags.contains(ReadingFlags::INTERPOLATED),
            "{:?}",
            r.flags.names()
        );
        assert!(
            !r.flags.contains(ReadingFlags::DEVICE_ERROR),
            "{:?}",
            r.flags.names()
        );
        assert!(!r.flags.contains(ReadingFlags::PARTIAL));
        // (`clock_synced` is not asserted: it is always true on a simulated clock.)
    }
    // The documented accounting bound: each delta is within 1 Wh of the difference of the
    // counters the gateway signed at the two ends of its interval (readings are contiguous).
    for pair in readings.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let (was, now) = (before.registers.as_array(), after.registers.as_array());
        for (channel, delta) in deltas(after).iter().enumerate() {
            let difference = now[channel].0 - was[channel].0;
            assert!(
                (delta - difference).abs() <= 1,
                "channel {channel} of {}: delta {delta} but the counters moved {difference}",
                after.interval
            );
        }
    }
    // Health and metrics on the local port.
    let base = format!("http://{}", running.health_addr);
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gridmesh_gateway_device_up{device=\"inverter\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gridmesh_gateway_readings_signed_total"));
    shutdown.stop().await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_timeout_and_counter_reset_lose_nothing() {
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let gw = unique("faults");
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings(&gw, cancel.clone());
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    run_with_key(
        config(&gw, &home, dir.path(), BROKER),
        KeySource::Key(Box::new(SigningKeyPair::from_seed([4; 32]))),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut items = collect(&mut rx, 1, Duration::from_secs(10)).await;
    // The inverter stops answering across a boundary...
    home.set_hang(1, true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    home.set_hang(1, false);
    // ...and later its counter is reset.
    let reset_at = clock.now() + chrono::Duration::seconds(400);
    home.faults.lock().unwrap().pv_reset_at = Some(reset_at);
    items.extend(collect(&mut rx, 8, Duration::from_secs(30)).await);
    let readings = dedup(&items);
    assert!(readings.len() >= 8, "only {} readings", readings.len());
    assert_contiguous(&readings);
    let flagged = |f: ReadingFlags| readings.iter().any(|r| r.flags.contains(f));
    assert!(
        flagged(ReadingFlags::DEVICE_ERROR),
        "the timeout is flagged"
    );
    assert!(flagged(ReadingFlags::COUNTER_RESET), "the reset is flagged");
    // The other devices were read normally all along: their deltas are exact in every interval.
    for r in &readings {
        let truth = home.truth(r.interval.start(), r.interval.end());
        assert!(
            (deltas(r)[1] - truth[1]).abs() <= TOLERANCE_WH,
            "export in {}",
            r.interval
        );
        assert!(
            (deltas(r)[3] - truth[3]).abs() <= TOLERANCE_WH,
            "charge in {}",
            r.interval
        );
    }
    // PV energy is never lost: held energy shows up in the next interval, and across the reset
    // only the energy between the last poll before the reset and the reset is unknowable. That
    // window is one poll period (15 simulated s) plus however long the machine stalled the
    // gateway: allow half a real second of stall, scaled by the clock's speed (a loaded 2-core
    // machine stalled ~150 ms here), and measure the window's energy from meter-sim's truth.
    let window = chrono::Duration::milliseconds((50.0 * SPEED + 500.0 * SPEED) as i64);
    let unknowable = home.truth(reset_at - window, reset_at)[2];
    let total: i64 = readings.iter().map(|r| deltas(r)[2]).sum();
    let truth = home.truth(
        readings[0].interval.start(),
        readings.last().unwrap().interval.end(),
    )[2];
    assert!(
        total <= truth + TOLERANCE_WH && total >= truth - unknowable - TOLERANCE_WH,
        "pv {total} vs {truth} (at most {unknowable} Wh unknowable across the reset)"
    );
    assert!(
        readings
            .iter()
            .all(|r| deltas(r)[2] <= home.truth(r.interval.start(), r.interval.end())[2] * 2 + 10)
    );
    shutdown.stop().await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_for_several_intervals_then_replay_in_order() {
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let proxy = Proxy::start("127.0.0.1:1883").await;
    let gw = unique("outage");
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings(&gw, cancel.clone());
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config(&gw, &home, dir.path(), &proxy.url()),
        KeySource::Key(Box::new(SigningKeyPair::from_seed([5; 32]))),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut items = collect(&mut rx, 1, Duration::from_secs(10)).await;
    proxy.set_up(false);
    // Three or more intervals without a broker: readings pile up in the outbox.
    let during = collect(&mut rx, 1, Duration::from_millis(3500)).await;
    let queued = running.status.snapshot().outbox_count;
    assert!(
        queued >= 2,
        "readings wait in the outbox during the outage (outbox: {queued})"
    );
    items.extend(during);
    proxy.set_up(true);
    items.extend(collect(&mut rx, 7, Duration::from_secs(30)).await);
    let readings = dedup(&items);
    assert!(readings.len() >= 7, "only {} readings", readings.len());
    assert_contiguous(&readings);
    // Replayed in order: the first arrival of each key comes in sequence order.
    let mut firsts = Vec::new();
    for (_, r) in &items {
        if !firsts.contains(&r.sequence) {
            firsts.push(r.sequence);
        }
    }
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "delivery order {firsts:?}"
    );
    for r in &readings {
        let truth = home.truth(r.interval.start(), r.interval.end());
        assert!((deltas(r)[2] - truth[2]).abs() <= TOLERANCE_WH);
    }
    shutdown.stop().await;
    cancel.cancel();
}
