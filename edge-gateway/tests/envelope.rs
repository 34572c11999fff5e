//! Operating envelopes end to end at one home: a meter-sim home at midday over real Modbus TCP,
//! envelopes signed with a test market key and served by a small mock of the market's
//! `GET /envelopes/{gateway}` (404 for unknown gateways, like the real one), and meter-sim's
//! ground truth as the judge.
//!
//! Tolerances: meter-sim's physics advances in ticks of about 20 ms real time (2 simulated s at
//! speed 100) and the gateway polls every 100 ms real (10 simulated s), so an interval's export
//! may run over its envelope by what one poll lets through before the next correction; the
//! brief's bound is limit + 2 % + 10 Wh.

mod common;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, TimeZone, Utc};
use common::BROKER;
use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use edge_gateway::{KeySource, RunningGateway, run_with_key};
use gridmesh_protocol::SignedEnvelope;
use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::envelope::{
    ControlStatus, EnvelopeBasis, EnvelopeSource, OperatingEnvelope,
};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::{GatewayId, Interval, IntervalLength, NodeId, ParticipantId, Wh, topics};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings};
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::scenario::HomeSpec;
use meter_sim::{DeviceKind, Homes, ManifestHome, Scenario, Simulator};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_modbus::Slave;
use tokio_modbus::client::{Context, Reader, tcp};
use tokio_util::sync::CancellationToken;

const SPEED: f64 = 100.0;
const POLL_MS: u64 = 100;
/// Simulated seconds per poll.
const POLL_S: i64 = (POLL_MS as f64 * SPEED / 1000.0) as i64;
const REVERT_S: u16 = 30;
/// Model 123 sits right after 1 (at 40002, 66 registers) and 103 (at 40070, 50 registers).
const M123: u16 = 40_122;

fn market_key() -> SigningKeyPair {
    SigningKeyPair::from_seed([77; 32])
}

/// The mock market: serves the signed envelopes of a gateway whose interval has not ended
/// (oldest first, at most 4), 404 {code, message} for any other gateway.
#[derive(Clone)]
struct Mock {
    gateway: GatewayId,
    envelopes: Arc<Mutex<Vec<SignedEnvelope>>>,
    clock: Clock,
}

async fn envelopes(State(m): State<Mock>, Path(gateway): Path<String>) -> Response {
    if gateway != m.gateway.as_str() {
        return (
            StatusCode::NOT_FOUND,
            Json(ErrorBody {
                code: "not_found".into(),
                message: format!("gateway {gateway} is not enrolled"),
            }),
        )
            .into_response();
    }
    let now = m.clock.now();
    let list: Vec<SignedEnvelope> = m
        .envelopes
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            // The mock serves whatever it holds (a tampered one too): only the end is checked.
            let end = envelope_interval(s).end();
            end > now
        })
        .take(4)
        .cloned()
        .collect();
    Json(list).into_response()
}

/// The interval of a signed envelope, read from the canonical bytes (offset 148, i64 start;
/// 156, u16 minutes), so a tampered one is still placed.
fn envelope_interval(s: &SignedEnvelope) -> Interval {
    let start = i64::from_be_bytes(s.payload[148..156].try_into().unwrap());
    let minutes = u16::from_be_bytes(s.payload[156..158].try_into().unwrap());
    Interval::from_unix(start, minutes.into()).unwrap()
}

async fn start_mock(mock: Mock) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new()
        .route("/envelopes/{gateway}", get(envelopes))
        .with_state(mock);
    let handle = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), handle)
}

fn envelope(gateway: &GatewayId, interval: Interval, export_wh: i64) -> OperatingEnvelope {
    OperatingEnvelope {
        zone: "test".into(),
        gateway: gateway.clone(),
        participant: ParticipantId::new("h001").unwrap(),
        node: NodeId::new("f1").unwrap(),
        interval,
        export_limit: Wh(export_wh),
        import_limit: Wh(1_000),
        basis: EnvelopeBasis::Cleared,
        result_digest: [1; 32],
        issued_at: Utc.timestamp_opt(interval.start_unix() - 300, 0).unwrap(),
    }
}

/// One sunny home at midday: 8 kWp on an 8 kW inverter, a 10 kWh battery at half charge that
/// takes at most 1.5 kW, so its surplus (~5 kW) is far above what the battery can absorb.
async fn midday_home(start: &str, battery_w: u32) -> (Simulator, Clock, Shutdown, ManifestHome) {
    let mut scenario = Scenario::small(1, 3);
    scenario.start = Some(DateTime::parse_from_rfc3339(start).unwrap().to_utc());
    scenario.speed = SPEED;
    scenario.homes = Homes::List(vec![HomeSpec {
        id: "h001".into(),
        feeder: Some("f1".into()),
        kwp: Some(8.0),
        inverter_w: Some(8_000),
        battery_kwh: Some(if battery_w > 0 { 10.0 } else { 0.0 }),
        battery_w: (battery_w > 0).then_some(battery_w),
        soc_pct: Some(50.0),
        annual_load_kwh: Some(3_000.0),
        ..HomeSpec::default()
    }]);
    let clock = scenario.clock();
    let shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock.clone(), &shutdown)
        .await
        .unwrap();
    let home = sim.manifest().homes[0].clone();
    (sim, clock, shutdown, home)
}

fn config(gw: &GatewayId, home: &ManifestHome, dir: &std::path::Path) -> GatewayConfig {
    let devices = common::modbus_devices(home);
    let mut c = GatewayConfig {
        gateway_id: gw.clone(),
        interval_minutes: 5,
        outbox_path: dir.join("outbox.db"),
        poll_ms: POLL_MS,
        modbus_timeout_ms: 500,
        health_listen: "127.0.0.1:0".into(),
        market_public_key: Some(market_key().public_key()),
        devices,
        ..GatewayConfig::default()
    };
    c.site.inverter_w = home.inverter_w;
    c.site.battery_w = home.battery_w;
    c.control.revert_secs = REVERT_S;
    c.control.min_write_interval_ms = POLL_MS;
    c
}

fn inverter_addr(home: &ManifestHome) -> (SocketAddr, u8) {
    let d = home.device(DeviceKind::Inverter).unwrap();
    assert!(d.models.contains(&123), "meter-sim's inverter serves 123");
    (format!("{}:{}", d.host, d.port).parse().unwrap(), d.unit)
}

/// Model 123 read over Modbus by the test itself: (WMaxLim_Ena, WMaxLimPct %).
async fn read_limit(ctx: &mut Context) -> (bool, f64) {
    let regs = ctx.read_holding_registers(M123, 26).await.unwrap().unwrap();
    assert_eq!((regs[0], regs[1]), (123, 24), "model 123 at {M123}");
    let sf = regs[23] as i16;
    (regs[9] == 1, f64::from(regs[5]) * 10f64.powi(sf.into()))
}

fn control(running: &RunningGateway) -> Option<ControlStatus> {
    running.status.snapshot().control
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_envelope_is_kept_the_default_follows_and_the_inverter_reverts() {
    let (sim, clock, sim_shutdown, home) = midday_home("2026-06-21T10:58:00Z", 1_500).await;
    let gw = GatewayId::new(common::unique("env")).unwrap();
    let first = Interval::parse("2026-06-21T10:55:00Z", 5).unwrap();
    // Market envelopes for 10:55 .. 11:20: 100 Wh per 5 minutes (1.2 kW on average).
    let intervals: Vec<Interval> = (0..5)
        .scan(first, |i, _| {
            let cur = *i;
            *i = i.next();
            Some(cur)
        })
        .collect();
    let last = *intervals.last().unwrap();
    let mock = Mock {
        gateway: gw.clone(),
        envelopes: Arc::new(Mutex::new(
            intervals
                .iter()
                .map(|i| SignedEnvelope::sign(&envelope(&gw, *i, 100), &market_key()))
                .collect(),
        )),
        clock: clock.clone(),
    };
    let (url, server) = start_mock(mock).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&gw, &home, dir.path());
    c.market_url = Some(url);
    // A tight default too (25 Wh per 5 minutes), so the switch is visible in the inverter.
    c.control.default_export_w = 300;
    let gateway_shutdown = Shutdown::new();
    let running = run_with_key(
        c,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([31; 32]))),
        clock.clone(),
        gateway_shutdown.clone(),
    )
    .await
    .unwrap();

    // The source goes away once every envelope through 11:15–11:20 is held.
    clock
        .sleep_until(
            DateTime::parse_from_rfc3339("2026-06-21T11:02:00Z")
                .unwrap()
                .to_utc(),
        )
        .await;
    let held = running.status.snapshot();
    assert_eq!(held.envelopes_refused, 0);
    assert!(held.envelopes_accepted >= 5, "{held:?}");
    server.abort();

    // Up to the last envelope's end: the market envelope is in force.
    let (inv_addr, unit) = inverter_addr(&home);
    let mut inverter = tcp::connect_slave(inv_addr, Slave(unit)).await.unwrap();
    clock
        .sleep_until(last.end() - chrono::Duration::seconds(30))
        .await;
    let before = control(&running).unwrap();
    assert_eq!(before.source, EnvelopeSource::Market);
    assert_eq!(before.export_limit_wh, Wh(100));
    let (enabled, pct_market) = read_limit(&mut inverter).await;
    assert!(enabled, "PV is limited under the tight envelope");

    // The default is in force within one poll after the last envelope's interval ends.
    let mut last_market = before.clone();
    let switched_at = loop {
        let now = clock.now();
        if let Some(c) = control(&running)
            && c.source == EnvelopeSource::Market
        {
            last_market = c;
        } else if let Some(c) = control(&running)
            && c.source == EnvelopeSource::Default
        {
            assert_eq!(c.interval, last.next());
            assert_eq!(c.export_limit_wh, Wh(25));
            assert_eq!(c.import_limit_wh, Wh(11_000 * 300 / 3600));
            break now;
        }
        assert!(
            now < last.end() + chrono::Duration::seconds(120),
            "no switch"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let late = (switched_at - last.end()).num_milliseconds();
    assert!(
        late <= (POLL_S + 2) * 1000,
        "default in force {late} ms after the envelope ended (poll {POLL_S} s)"
    );
    // /healthz says the same.
    let health: serde_json::Value = reqwest::get(format!("http://{}/healthz", running.health_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["detail"]["control"]["source"], "default");
    // The inverter's limit, read independently, follows the tighter default within a few polls.
    let mut pct_default = pct_market;
    for _ in 0..50 {
        let (enabled, pct) = read_limit(&mut inverter).await;
        if enabled && pct < pct_market - 5.0 {
            pct_default = pct;
            break;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    assert!(
        pct_default < pct_market - 5.0,
        "limit {pct_market} % under the market envelope should drop under the default"
    );

    // Ground truth: every whole interval under the market envelope kept inside it, with the
    // battery charging at its rating before PV was curtailed, and PV not over-curtailed.
    clock
        .sleep_until(last.next().start() + chrono::Duration::seconds(180))
        .await;
    for interval in &intervals[1..] {
        let truth = sim.ground_truth("h001", interval).unwrap();
        let export = truth.grid_export.0;
        assert!(
            export <= 100 + 2 + 10,
            "{interval}: exported {export} Wh, envelope 100 Wh ({truth:?})"
        );
        assert!(
            truth.pv_curtailed.0 > 100,
            "{interval}: curtailment needed ({truth:?})"
        );
        assert!(
            export >= 80,
            "{interval}: PV over-curtailed: exported only {export} Wh of 100 ({truth:?})"
        );
        assert!(
            truth.battery_charge.0 * 100 >= truth.battery_headroom.0 * 95 - 1000,
            "{interval}: the battery took {} Wh of {} Wh it could while PV was curtailed",
            truth.battery_charge.0,
            truth.battery_headroom.0
        );
    }
    // The curtailment estimate of the last market interval, against the truth.
    assert_eq!(last_market.interval, last);
    let truth = sim.ground_truth("h001", &last).unwrap().pv_curtailed.0;
    let estimate = last_market.curtailed_wh.0;
    eprintln!("curtailed in {last}: estimated {estimate} Wh, truth {truth} Wh");
    assert!(
        (estimate - truth).abs() * 2 <= truth,
        "curtailment estimate {estimate} Wh vs {truth} Wh"
    );
    let snapshot = running.status.snapshot();
    let status = snapshot.control.unwrap();
    assert!(status.curtailed_total_wh.0 > 0, "curtailment is estimated");
    assert_eq!(status.violations_in_a_row, 0);
    assert_eq!(snapshot.pv_curtailment_available, Some(true));

    // Stop the gateway with a limit in force: the inverter drops it by itself within
    // revert_secs of the last write (at most revert_secs after the stop).
    let (enabled, _) = read_limit(&mut inverter).await;
    assert!(enabled, "limited when the gateway stops");
    gateway_shutdown.trigger();
    gateway_shutdown.stop().await;
    let stopped_at = clock.now();
    let reverted_at = loop {
        let (enabled, _) = read_limit(&mut inverter).await;
        if !enabled {
            break clock.now();
        }
        assert!(
            clock.now() < stopped_at + chrono::Duration::seconds(i64::from(REVERT_S) * 3),
            "the inverter never reverted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = (reverted_at - stopped_at).num_seconds();
    assert!(
        after <= i64::from(REVERT_S) + 4,
        "reverted {after} s after the stop (revert_secs {REVERT_S})"
    );
    // The physics follows within a few of its steps (on a loaded machine one status read can
    // still show the step computed under the limit).
    let physics_deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    let h = loop {
        sim.sync();
        let h = sim
            .status()
            .homes
            .into_iter()
            .find(|h| h.id == "h001")
            .unwrap();
        if (h.pv_w - h.pv_available_w).abs() <= 50 || tokio::time::Instant::now() > physics_deadline
        {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(h.pv_limit_pct, None);
    assert!(
        (h.pv_w - h.pv_available_w).abs() <= 50,
        "PV no longer limited: {} W of {} W",
        h.pv_w,
        h.pv_available_w
    );
    sim_shutdown.trigger();
    sim_shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_envelope_is_refused_and_the_default_applies() {
    let (_sim, clock, sim_shutdown, home) = midday_home("2026-06-21T11:00:30Z", 0).await;
    let gw = GatewayId::new(common::unique("tamper")).unwrap();
    let now = clock.now();
    let current = Interval::containing(now, IntervalLength::from_minutes(5).unwrap());
    // A tight envelope with one bit flipped in its payload (export limit 10 Wh → 14 Wh).
    let mut tampered = SignedEnvelope::sign(&envelope(&gw, current, 10), &market_key());
    tampered.payload[165] ^= 0x04;
    // And one signed by another key.
    let forged = SignedEnvelope::sign(
        &envelope(&gw, current.next(), 10),
        &SigningKeyPair::from_seed([78; 32]),
    );
    let mock = Mock {
        gateway: gw.clone(),
        envelopes: Arc::new(Mutex::new(vec![tampered, forged])),
        clock: clock.clone(),
    };
    let (url, _server) = start_mock(mock).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&gw, &home, dir.path());
    c.market_url = Some(url.clone());
    c.control.default_export_w = 20_000;
    let gateway_shutdown = Shutdown::new();
    let running = run_with_key(
        c,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([32; 32]))),
        clock.clone(),
        gateway_shutdown.clone(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running.status.snapshot().envelopes_refused < 2 {
        assert!(tokio::time::Instant::now() < deadline, "nothing refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Served again every poll, refused again, but counted once each.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let s = running.status.snapshot();
    assert_eq!(s.envelopes_refused, 2);
    assert_eq!(s.envelopes_accepted, 0);
    let c = s.control.unwrap();
    assert_eq!(c.source, EnvelopeSource::Default);
    assert_eq!(c.export_limit_wh, Wh(20_000 * 300 / 3600));
    // The tampered 10 Wh limit was never applied: the inverter is not limited.
    let (inv_addr, unit) = inverter_addr(&home);
    let mut inverter = tcp::connect_slave(inv_addr, Slave(unit)).await.unwrap();
    assert!(!read_limit(&mut inverter).await.0, "PV must not be limited");
    let metrics = reqwest::get(format!("http://{}/metrics", running.health_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gridmesh_gateway_envelopes_refused_total 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("gridmesh_gateway_envelope_source{source=\"default\"} 1\n"));
    // The mock answers like the market: 404 with {code, message} for an unknown gateway.
    let r = reqwest::get(format!("{url}/envelopes/gw-unknown"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gateway_shutdown.trigger();
    gateway_shutdown.stop().await;
    sim_shutdown.trigger();
    sim_shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_mqtt_envelope_is_enforced_and_the_control_status_is_published() {
    let epoch = common::epoch();
    let clock = Clock::scaled(epoch, 60.0);
    let home = common::start_home(clock.clone(), epoch).await;
    let gw = GatewayId::new(common::unique("mqttenv")).unwrap();
    let cancel = CancellationToken::new();
    let session = gridmesh_runtime::shutdown::Shutdown::child_of(&cancel);
    let (publisher, _) =
        MqttSession::start(MqttSettings::new(BROKER, format!("pub-{gw}")), &session).unwrap();
    assert!(publisher.wait_connected(Duration::from_secs(5)).await);
    let length = IntervalLength::from_minutes(5).unwrap();
    let current = Interval::containing(clock.now(), length);
    let signed = SignedEnvelope::sign(&envelope(&gw, current, 40), &market_key());
    publisher
        .publish(
            topics::envelope(&gw),
            serde_json::to_vec(&signed).unwrap(),
            rumqttc::QoS::AtLeastOnce,
            true,
        )
        .await
        .unwrap();
    let mut watch = MqttSettings::new(BROKER, format!("watch-{gw}"));
    watch.subscriptions = vec![topics::gateway_control(&gw)];
    let session = gridmesh_runtime::shutdown::Shutdown::child_of(&cancel);
    let (watcher, mut statuses) = MqttSession::start(watch, &session).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = home.addr.port();
    let mut c = GatewayConfig {
        gateway_id: gw.clone(),
        interval_minutes: 5,
        outbox_path: dir.path().join("outbox.db"),
        poll_ms: 100,
        modbus_timeout_ms: 500,
        health_listen: "127.0.0.1:0".into(),
        market_public_key: Some(market_key().public_key()),
        devices: vec![
            DeviceConfig::modbus_tcp("inverter", Role::Inverter, "127.0.0.1", port, 1),
            DeviceConfig::modbus_tcp("meter", Role::GridMeter, "127.0.0.1", port, 3),
        ],
        ..GatewayConfig::default()
    };
    c.mqtt.url = Some(BROKER.into());
    c.site.inverter_w = 5_000;
    let shutdown = Shutdown::new();
    let running = run_with_key(
        c,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([33; 32]))),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    // The retained status arrives with the market envelope in force.
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = statuses.recv().await.expect("status stream");
            let status: ControlStatus = serde_json::from_slice(&message.payload).unwrap();
            watcher.ack(message).await;
            if status.source == EnvelopeSource::Market {
                break status;
            }
        }
    })
    .await
    .expect("a control status from the market envelope");
    assert_eq!(status.gateway, gw);
    assert_eq!(status.interval, current);
    assert_eq!(status.export_limit_wh, Wh(40));
    assert_eq!(status.import_limit_wh, Wh(1_000));
    let s = running.status.snapshot();
    assert_eq!(s.envelopes_accepted, 1);
    // The fixture's inverter has no model 123: said in the status.
    assert_eq!(s.pv_curtailment_available, Some(false));
    assert!(
        s.pv_curtailment_note
            .as_deref()
            .unwrap_or("")
            .contains("not 123"),
        "{s:?}"
    );
    shutdown.trigger();
    shutdown.stop().await;
    // Clean up the retained messages.
    for topic in [topics::envelope(&gw), topics::gateway_control(&gw)] {
        let _ = publisher
            .publish(topic, Vec::new(), rumqttc::QoS::AtLeastOnce, true)
            .await;
    }
    cancel.cancel();
}
