//! Each fault behaves as documented in `meter_sim::faults`.

mod common;

use chrono::Duration as SimDuration;
use common::*;
use meter_sim::{DeviceKind, Fault, Scenario};
use std::time::Duration;
use tokio_modbus::ExceptionCode;
use tokio_modbus::client::Reader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_answers_the_code_on_that_unit_only() {
    let (sim, shutdown) = start(1, 1, 0.001).await;
    let addr = sim.modbus_addr("h001").unwrap();
    sim.inject("h001", DeviceKind::Meter, Fault::Exception { code: 4 })
        .unwrap();
    let mut met = connect(addr, 3).await;
    assert_eq!(
        read(&mut met, 40_000, 2).await,
        Err(ExceptionCode::ServerDeviceFailure)
    );
    let mut inv = connect(addr, 1).await;
    assert!(read(&mut inv, 40_000, 2).await.is_ok());
    sim.inject("h001", DeviceKind::Meter, Fault::Exception { code: 6 })
        .unwrap();
    assert_eq!(
        read(&mut met, 40_000, 2).await,
        Err(ExceptionCode::ServerDeviceBusy)
    );
    sim.clear("h001", DeviceKind::Meter).unwrap();
    assert!(read(&mut met, 40_000, 2).await.is_ok());
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_the_connection_without_an_answer() {
    let (sim, shutdown) = start(1, 1, 0.001).await;
    let addr = sim.modbus_addr("h001").unwrap();
    sim.inject("h001", DeviceKind::Inverter, Fault::Drop)
        .unwrap();
    let mut inv = connect(addr, 1).await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        inv.read_holding_registers(40_000, 2),
    )
    .await
    .expect("the server closes the connection instead of leaving the client hanging");
    assert!(
        outcome.is_err(),
        "a transport error, not an answer: {outcome:?}"
    );
    // Other units on a fresh connection still answer.
    let mut met = connect(addr, 3).await;
    assert!(read(&mut met, 40_000, 2).await.is_ok());
    sim.clear("h001", DeviceKind::Inverter).unwrap();
    let mut inv = connect(addr, 1).await;
    assert_eq!(
        read(&mut inv, 40_000, 2).await.unwrap(),
        vec![0x5375, 0x6e53]
    );
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_miss_a_client_timeout() {
    let (sim, shutdown) = start(1, 1, 0.001).await;
    let addr = sim.modbus_addr("h001").unwrap();
    sim.inject("h001", DeviceKind::Battery, Fault::Late { millis: 30_000 })
        .unwrap();
    let mut bat = connect(addr, 2).await;
    let late = tokio::time::timeout(
        Duration::from_millis(200),
        bat.read_holding_registers(40_000, 2),
    )
    .await;
    assert!(late.is_err(), "no answer within the client's timeout");
    sim.clear("h001", DeviceKind::Battery).unwrap();
    // As the tokio-modbus docs advise, reconnect after a timeout.
    let mut bat = connect(addr, 2).await;
    let on_time = tokio::time::timeout(
        Duration::from_secs(10),
        bat.read_holding_registers(40_000, 2),
    )
    .await;
    assert_eq!(on_time.unwrap().unwrap().unwrap(), vec![0x5375, 0x6e53]);
    // A short delay still answers.
    sim.inject("h001", DeviceKind::Battery, Fault::Late { millis: 10 })
        .unwrap();
    assert!(read(&mut bat, 40_000, 2).await.is_ok());
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_keeps_the_registers_while_physics_runs_on() {
    let (sim, shutdown) = start(1, 5, 3600.0).await;
    let addr = sim.modbus_addr("h001").unwrap();
    sim.inject("h001", DeviceKind::Meter, Fault::Freeze)
        .unwrap();
    let mut met = connect(addr, 3).await;
    let mut inv = connect(addr, 1).await;
    let frozen = read(&mut met, M203, 107 - 2).await.unwrap();
    let pv1 = acc32(&read(&mut inv, M103 + 24, 2).await.unwrap(), 0);
    let clock = sim.clock().clone();
    clock
        .sleep_until(clock.now() + SimDuration::minutes(30))
        .await;
    sim.sync();
    assert_eq!(read(&mut met, M203, 107 - 2).await.unwrap(), frozen);
    let pv2 = acc32(&read(&mut inv, M103 + 24, 2).await.unwrap(), 0);
    assert!(pv2 > pv1, "the inverter is not frozen");
    sim.clear("h001", DeviceKind::Meter).unwrap();
    let live = read(&mut met, M203, 107 - 2).await.unwrap();
    // After the freeze the registers show the energy integrated meanwhile.
    let energy = |r: &[u16]| acc32(r, 38) as u64 + acc32(r, 46) as u64;
    assert!(
        energy(&live) > energy(&frozen),
        "{} vs {}",
        energy(&live),
        energy(&frozen)
    );
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_reset_restarts_the_registers_but_not_the_truth() {
    let (sim, shutdown) = start(1, 6, 3600.0).await;
    let addr = sim.modbus_addr("h001").unwrap();
    let mut inv = connect(addr, 1).await;
    let before = acc32(&read(&mut inv, M103 + 24, 2).await.unwrap(), 0);
    assert!(
        before >= 1_000,
        "devices start with a used counter: {before}"
    );
    let truth_before = sim.status().homes[0].counters.pv;
    sim.inject("h001", DeviceKind::Inverter, Fault::CounterReset)
        .unwrap();
    let after = acc32(&read(&mut inv, M103 + 24, 2).await.unwrap(), 0);
    assert!(after < before && after < 100, "{before} → {after}");
    // One-shot: not listed as an active fault; the counter grows again from there.
    assert!(sim.faults().is_empty());
    let clock = sim.clock().clone();
    clock
        .sleep_until(clock.now() + SimDuration::minutes(20))
        .await;
    sim.sync();
    let later = acc32(&read(&mut inv, M103 + 24, 2).await.unwrap(), 0);
    assert!(later > after);
    assert!(
        sim.status().homes[0].counters.pv > truth_before,
        "the true counter never restarts"
    );
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jump_moves_the_home_ahead_and_pauses_it_back() {
    let (sim, shutdown) = start(2, 7, 60.0).await;
    let clock = sim.clock().clone();
    let (t0, c0) = sim.register_counters("h001").unwrap();
    sim.inject(
        "h001",
        DeviceKind::Meter,
        Fault::ClockJump { seconds: 3_600 },
    )
    .unwrap();
    sim.sync();
    let (t1, c1) = sim.register_counters("h001").unwrap();
    assert!(t1 >= t0 + SimDuration::seconds(3_590), "{t0} → {t1}");
    assert!(c1.pv.0 > c0.pv.0, "the skipped hour was integrated at once");
    // The other home keeps to the shared clock.
    let (other, _) = sim.register_counters("h002").unwrap();
    assert!(other < t0 + SimDuration::seconds(600));
    // Jumping back two hours pauses the home until the shared clock catches up.
    sim.inject(
        "h001",
        DeviceKind::Meter,
        Fault::ClockJump { seconds: -7_200 },
    )
    .unwrap();
    clock
        .sleep_until(clock.now() + SimDuration::seconds(30))
        .await;
    sim.sync();
    let (t2, c2) = sim.register_counters("h001").unwrap();
    assert_eq!((t2, c2), (t1, c1), "paused, counters never go down");
    assert!(clock.now() < t2);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_faults_start_and_end_on_simulated_time() {
    let mut scenario = Scenario::small(1, 8);
    let start = scenario.start.unwrap();
    scenario.faults = vec![meter_sim::scenario::ScheduledFault {
        home: "h001".into(),
        device: DeviceKind::Meter,
        at: start + SimDuration::seconds(20),
        for_seconds: Some(240),
        fault: Fault::Exception { code: 4 },
    }];
    // Speed 120: the fault starts after about 0.17 s and lasts about 2 s of real time.
    let (sim, shutdown) = start_scenario(scenario, 120.0).await;
    let addr = sim.modbus_addr("h001").unwrap();
    let mut met = connect(addr, 3).await;
    assert!(read(&mut met, 40_000, 2).await.is_ok(), "not yet");
    let clock = sim.clock().clone();
    clock.sleep_until(start + SimDuration::seconds(30)).await;
    sim.sync();
    assert_eq!(
        read(&mut met, 40_000, 2).await,
        Err(ExceptionCode::ServerDeviceFailure)
    );
    assert_eq!(sim.faults().len(), 1);
    clock.sleep_until(start + SimDuration::seconds(265)).await;
    sim.sync();
    assert!(read(&mut met, 40_000, 2).await.is_ok(), "over");
    assert!(sim.faults().is_empty());
    shutdown.stop().await;
}
