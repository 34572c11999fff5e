//! Export that would cost money is curtailed (issue 19): with the contract's feed-in price at or
//! below 0 and nothing sold, a meter-sim home at midday over real Modbus TCP exports (almost)
//! nothing: the self-consuming battery charges, and the gateway limits PV through SunSpec
//! model 123. The inverter's registers are read back by the test itself and meter-sim's ground
//! truth is the judge.
//!
//! Tolerances as in `envelope.rs`: meter-sim's physics advances in ticks of about 20 ms real
//! time (2 simulated s at speed 100) and the gateway polls every 100 ms real (10 simulated s),
//! so an interval may export what one poll lets through before the next correction (the
//! envelope bound: limit + 2 % + 10 Wh).

mod common;

use chrono::DateTime;
use edge_gateway::config::GatewayConfig;
use edge_gateway::{KeySource, run_with_key};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::{GatewayId, Interval, PricePerMwh, Wh};
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::scenario::HomeSpec;
use meter_sim::{DeviceKind, Homes, Scenario};
use tokio_modbus::Slave;
use tokio_modbus::client::{Reader, tcp};

const SPEED: f64 = 100.0;
const POLL_MS: u64 = 100;
/// Model 123 sits right after 1 (at 40002, 66 registers) and 103 (at 40070, 50 registers).
const M123: u16 = 40_122;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_feed_in_price_curtails_pv_instead_of_exporting() {
    // 8 kWp on an 8 kW inverter at midday; a 10 kWh battery at half charge that takes at most
    // 1.5 kW: the surplus (~5 kW) is far above what the battery can absorb.
    let mut scenario = Scenario::small(1, 3);
    scenario.start = Some(
        DateTime::parse_from_rfc3339("2026-06-21T10:58:00Z")
            .unwrap()
            .to_utc(),
    );
    scenario.speed = SPEED;
    scenario.homes = Homes::List(vec![HomeSpec {
        id: "h001".into(),
        feeder: Some("f1".into()),
        kwp: Some(8.0),
        inverter_w: Some(8_000),
        battery_kwh: Some(10.0),
        battery_w: Some(1_500),
        soc_pct: Some(50.0),
        annual_load_kwh: Some(3_000.0),
        ..HomeSpec::default()
    }]);
    let clock = scenario.clock();
    let sim_shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock.clone(), &sim_shutdown)
        .await
        .unwrap();
    let home = sim.manifest().homes[0].clone();

    let gw = GatewayId::new(common::unique("curtail")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = GatewayConfig {
        gateway_id: gw,
        interval_minutes: 5,
        outbox_path: dir.path().join("outbox.db"),
        poll_ms: POLL_MS,
        modbus_timeout_ms: 500,
        health_listen: "127.0.0.1:0".into(),
        devices: common::modbus_devices(&home),
        ..GatewayConfig::default()
    };
    c.site.inverter_w = home.inverter_w;
    c.site.battery_w = home.battery_w;
    c.control.revert_secs = 30;
    c.control.min_write_interval_ms = POLL_MS;
    // The homeowner's contract: exported energy costs 2.0 c/kWh. No market: nothing is sold.
    c.agent.feed_in_price = PricePerMwh(-2_000);
    // A default envelope that lets the whole surplus out: only the price curtails.
    c.control.default_export_w = 8_000;
    let gateway_shutdown = Shutdown::new();
    let running = run_with_key(
        c,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([32; 32]))),
        clock.clone(),
        gateway_shutdown.clone(),
    )
    .await
    .unwrap();

    // Two whole 5-minute intervals after the gateway found its devices.
    let first = Interval::parse("2026-06-21T11:00:00Z", 5).unwrap();
    let intervals = [first, first.next()];
    let device = home.device(DeviceKind::Inverter).unwrap();
    assert!(
        device.models.contains(&123),
        "meter-sim's inverter serves 123"
    );
    let mut inverter = tcp::connect_slave(
        format!("{}:{}", device.host, device.port).parse().unwrap(),
        Slave(device.unit),
    )
    .await
    .unwrap();
    clock
        .sleep_until(first.next().start() + chrono::Duration::seconds(150))
        .await;
    // The inverter's model 123, read independently: limited well below its rating.
    let regs = inverter
        .read_holding_registers(M123, 26)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((regs[0], regs[1]), (123, 24), "model 123 at {M123}");
    let pct = f64::from(regs[5]) * 10f64.powi((regs[23] as i16).into());
    assert_eq!(regs[9], 1, "WMaxLim_Ena: PV is limited");
    assert!(pct < 90.0, "WMaxLimPct {pct} %");
    let status = running.status.snapshot().control.unwrap();
    assert_eq!(status.export_limit_wh, Wh(0), "{status:?}");

    clock
        .sleep_until(intervals[1].end() + chrono::Duration::seconds(20))
        .await;
    for interval in &intervals {
        let truth = sim.ground_truth("h001", interval).unwrap();
        assert!(
            truth.grid_export.0 <= 10,
            "{interval}: exported {} Wh at a negative feed-in price ({truth:?})",
            truth.grid_export.0
        );
        assert!(
            truth.pv_curtailed.0 > 100,
            "{interval}: PV was curtailed ({truth:?})"
        );
        // The battery charges before PV is curtailed to nothing. Known weakness (control.rs):
        // with an export limit of 0 the controller raises the PV limit only when export falls
        // below the allowed power, which never happens at 0, so the battery gets only part of
        // its headroom (measured 43 and 103 of 125 Wh per 5 minutes on a loaded machine).
        assert!(
            truth.battery_charge.0 > 0,
            "{interval}: the battery took nothing of {} Wh it could ({truth:?})",
            truth.battery_headroom.0
        );
    }
    gateway_shutdown.trigger();
    gateway_shutdown.stop().await;
    sim_shutdown.trigger();
    sim_shutdown.stop().await;
}
