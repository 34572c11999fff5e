//! SunSpec over real Modbus TCP: discovery, values, sentinels, errors, writes and counters.

mod common;

use common::*;
use meter_sim::DeviceKind;
use tokio_modbus::ExceptionCode;
use tokio_modbus::client::Reader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_models_on_the_documented_units() {
    let (sim, shutdown) = start(3, 1, 0.001).await;
    let manifest = sim.manifest();
    assert_eq!(manifest.homes.len(), 3);
    for home in &manifest.homes {
        let addr = sim.modbus_addr(&home.id).unwrap();
        for device in &home.devices {
            assert_eq!(device.port, addr.port());
            assert_eq!(device.base_address, 40_000);
            let mut ctx = connect(addr, device.unit).await;
            let ids: Vec<u16> = discover(&mut ctx).await.iter().map(|m| m.id).collect();
            assert_eq!(ids, device.models, "{} {}", home.id, device.kind);
            let expected: &[u16] = match device.kind {
                DeviceKind::Inverter => &[1, 103, 123],
                DeviceKind::Battery => &[1, 124, 802, 701],
                DeviceKind::Meter => &[1, 203],
            };
            assert_eq!(ids, expected);
            assert_eq!(device.unit, device.kind.unit());
            // Common model: manufacturer, serial and device address.
            let common = read_model(
                &mut ctx,
                Model {
                    id: 1,
                    address: 40_002,
                    length: 66,
                },
            )
            .await;
            let text = |from: usize, n: usize| -> String {
                common[from..from + n]
                    .iter()
                    .flat_map(|r| r.to_be_bytes())
                    .take_while(|b| *b != 0)
                    .map(char::from)
                    .collect()
            };
            assert_eq!(text(2, 16), "gridmesh");
            assert_eq!(text(50, 16), device.serial);
            assert_eq!(common[66], device.unit as u16);
        }
    }
    // The third home has no battery: unit 2 is not there.
    let h3 = &manifest.homes[2];
    assert!(h3.device(DeviceKind::Battery).is_none());
    let mut ctx = connect(sim.modbus_addr(&h3.id).unwrap(), 2).await;
    assert_eq!(
        read(&mut ctx, 40_000, 2).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_plausible_consistent_and_unimplemented_points_carry_sentinels() {
    // Nearly frozen time: every read sees the same physics step.
    let (sim, shutdown) = start(2, 4, 0.001).await;
    let addr = sim.modbus_addr("h001").unwrap();
    let home = &sim.homes()[0];
    let mut inv = connect(addr, 1).await;
    let r103 = read_model(
        &mut inv,
        Model {
            id: 103,
            address: M103,
            length: 50,
        },
    )
    .await;
    assert_eq!(r103[0..2], [103, 50]);
    let sf = |v: u16| v as i16 as i32;
    assert_eq!(sf(r103[15]), 0, "W_SF");
    let pv_w = r103[14] as i16 as i64;
    assert!(
        pv_w > 500 && pv_w <= home.inverter_w as i64,
        "PV at 10:00 UTC in June: {pv_w}"
    );
    assert_eq!((r103[16], sf(r103[17])), (5000, -2), "50.00 Hz");
    assert_eq!(sf(r103[26]), 0, "WH_SF");
    assert!(acc32(&r103, 24) > 0);
    assert_eq!(r103[38], 4, "St = MPPT");
    assert_eq!(r103[39], 0xFFFF, "StVnd not implemented");
    assert_eq!(acc32(&r103, 44), 0xFFFF_FFFF, "EvtVnd1 not implemented");

    let mut bat = connect(addr, 2).await;
    let r124 = read_model(
        &mut bat,
        Model {
            id: 124,
            address: M124,
            length: 24,
        },
    )
    .await;
    let r802 = read_model(
        &mut bat,
        Model {
            id: 802,
            address: M802,
            length: 62,
        },
    )
    .await;
    let r701 = read_model(
        &mut bat,
        Model {
            id: 701,
            address: M701,
            length: 153,
        },
    )
    .await;
    assert_eq!(r124[6], 0xFFFF, "VAChaMax not implemented");
    assert_eq!(r124[20], 0x8000, "VAChaMax_SF not implemented");
    assert_eq!(sf(r124[22]), -1, "ChaState_SF");
    assert!((0..=1000).contains(&r124[8]), "SoC in tenths of a percent");
    assert_eq!(
        r124[8], r802[11],
        "124 ChaState equals 802 SoC (both SF -1)"
    );
    assert_eq!(r124[11], r802[16], "ChaSt agrees");
    assert_eq!(r802[37], 0xFFFF, "CellVMax not implemented");
    assert_eq!(r802[49], 0x8000, "ReqW not implemented");
    let bat_w = r802[47] as i16 as i64;
    assert_eq!(r701[10] as i16 as i64, bat_w, "701 W equals 802 W");
    assert_eq!(u64_at(&r701, 31), u64::MAX, "TotVarhAbs not implemented");
    assert_eq!(sf(r701[120]), 0, "TotWh_SF");
    assert!(
        u64_at(&r701, 23) > 0 && u64_at(&r701, 19) > 0,
        "charge and discharge counters"
    );
    if bat_w < 0 {
        assert_eq!(r124[11], 4, "charging");
    }

    let mut met = connect(addr, 3).await;
    let r203 = read_model(
        &mut met,
        Model {
            id: 203,
            address: M203,
            length: 105,
        },
    )
    .await;
    assert_eq!(sf(r203[22]), 0, "W_SF");
    assert_eq!(sf(r203[54]), 0, "TotWh_SF");
    assert_eq!(acc32(&r203, 55), 0, "TotVAhExp not implemented (acc = 0)");
    assert_eq!(r203[71], 0x8000, "TotVAh_SF not implemented");
    let grid_w = r203[18] as i16 as i64;
    let status = sim.status();
    let load_w = status.homes[0].load_w;
    // The meter is the balance: load − PV − battery (each rounded once).
    assert!(
        (grid_w - (load_w - pv_w - bat_w)).abs() <= 2,
        "grid {grid_w} load {load_w} pv {pv_w} bat {bat_w}"
    );
    assert_eq!(status.homes[0].grid_w, grid_w);
    let (_, registers) = sim.register_counters("h001").unwrap();
    assert_eq!(acc32(&r203, 46) as i64, registers.grid_import.0);
    assert_eq!(acc32(&r203, 38) as i64, registers.grid_export.0);
    assert_eq!(acc32(&r103, 24) as i64, registers.pv.0);
    assert_eq!(u64_at(&r701, 23) as i64, registers.battery_charge.0);
    assert_eq!(u64_at(&r701, 19) as i64, registers.battery_discharge.0);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_exceptions() {
    let (sim, shutdown) = start(1, 2, 0.001).await;
    let addr = sim.modbus_addr("h001").unwrap();
    let mut ctx = connect(addr, 3).await;
    assert_eq!(
        read(&mut ctx, 40_000, 126).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(read(&mut ctx, 40_000, 125).await.unwrap().len(), 125);
    assert_eq!(
        read(&mut ctx, 0, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        read(&mut ctx, 50_000, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    // The meter map is 2 + 68 + 107 + 2 = 179 registers: the end model is the last thing.
    assert_eq!(read(&mut ctx, 40_177, 2).await.unwrap(), vec![0xFFFF, 0]);
    assert_eq!(
        read(&mut ctx, 40_178, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        read(&mut ctx, 40_179, 1).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    let input = ctx.read_input_registers(40_000, 2).await.unwrap();
    assert_eq!(input, Err(ExceptionCode::IllegalFunction));
    // Writing a read-only point (meter W) is refused.
    assert_eq!(
        write(&mut ctx, M203 + 18, &[5]).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    let mut other = connect(addr, 9).await;
    assert_eq!(
        read(&mut other, 40_000, 2).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    // The connection survived every exception.
    assert_eq!(
        read(&mut ctx, 40_000, 2).await.unwrap(),
        vec![0x5375, 0x6e53]
    );
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_obeys_control_writes() {
    let (sim, shutdown) = start(1, 3, 60.0).await;
    let addr = sim.modbus_addr("h001").unwrap();
    let mut bat = connect(addr, 2).await;
    // Forced charge at 50 % of WChaMax: StorCtl_Mod bit 1 (discharge limit) with a negative OutWRte.
    write(&mut bat, M124 + 12, &[(-50i16) as u16])
        .await
        .unwrap();
    write(&mut bat, M124 + 5, &[2]).await.unwrap();
    let r124 = read(&mut bat, M124, 26).await.unwrap();
    assert_eq!(r124[5], 2);
    assert_eq!(r124[12] as i16, -50);
    let expected = -((r124[2] as f64) * 0.5).round() as i64;
    // Wait two simulated seconds so the physics steps with the new set-points.
    let clock = sim.clock().clone();
    clock
        .sleep_until(clock.now() + chrono::Duration::seconds(3))
        .await;
    sim.sync();
    assert_eq!(sim.status().homes[0].battery_w, expected);
    assert_eq!(
        read(&mut bat, M802 + 47, 1).await.unwrap()[0] as i16 as i64,
        expected,
        "802 W"
    );
    assert_eq!(
        read(&mut bat, M124 + 11, 1).await.unwrap()[0],
        4,
        "ChaSt = CHARGING"
    );
    // 802 SetOp = 2 (disconnect) holds the battery at 0 W.
    write(&mut bat, M802 + 50, &[2]).await.unwrap();
    clock
        .sleep_until(clock.now() + chrono::Duration::seconds(3))
        .await;
    sim.sync();
    assert_eq!(sim.status().homes[0].battery_w, 0);
    // Invalid values are refused and change nothing.
    assert_eq!(
        write(&mut bat, M124 + 5, &[9]).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        write(&mut bat, M124 + 13, &[(-101i16) as u16]).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        write(&mut bat, M802 + 50, &[7]).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(read(&mut bat, M124 + 5, 1).await.unwrap(), vec![2]);
    // A multi-register write is all or nothing: OutWRte fine, InWRte out of range.
    assert_eq!(
        write(&mut bat, M124 + 12, &[10, 500]).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(read(&mut bat, M124 + 12, 1).await.unwrap()[0] as i16, -50);
    // Only the battery has writable points.
    let mut inv = connect(addr, 1).await;
    assert_eq!(
        write(&mut inv, M103 + 14, &[1]).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_at_speed_3600_advance_by_the_integrated_energy() {
    let (sim, shutdown) = start(1, 11, 3600.0).await;
    let addr = sim.modbus_addr("h001").unwrap();
    let mut inv = connect(addr, 1).await;
    let mut met = connect(addr, 3).await;
    // Bracket each Modbus read between two snapshots of the physics (which only moves forward).
    let (t0, before) = sim.register_counters("h001").unwrap();
    let pv1 = acc32(&read(&mut inv, M103 + 24, 2).await.unwrap(), 0) as i64;
    let imp1 = acc32(&read(&mut met, M203 + 46, 2).await.unwrap(), 0) as i64;
    let (t1, after) = sim.register_counters("h001").unwrap();
    assert!(before.pv.0 <= pv1 && pv1 <= after.pv.0);
    assert!(before.grid_import.0 <= imp1 && imp1 <= after.grid_import.0);
    // One simulated hour later (one real second).
    let clock = sim.clock().clone();
    clock.sleep_until(t1 + chrono::Duration::minutes(65)).await;
    let (t2, before2) = sim.register_counters("h001").unwrap();
    let pv2 = acc32(&read(&mut inv, M103 + 24, 2).await.unwrap(), 0) as i64;
    let imp2 = acc32(&read(&mut met, M203 + 46, 2).await.unwrap(), 0) as i64;
    let (t3, after2) = sim.register_counters("h001").unwrap();
    assert!(before2.pv.0 <= pv2 && pv2 <= after2.pv.0);
    // Ground truth of the whole 5-minute intervals between the reads is a lower bound of the
    // register delta, and that of the intervals covering both reads an upper bound.
    let five = |t: chrono::DateTime<chrono::Utc>| {
        gridmesh_protocol::Interval::containing(t, gridmesh_protocol::IntervalLength::Min5)
    };
    let sum = |from: gridmesh_protocol::Interval, to: gridmesh_protocol::Interval| {
        let mut i = from;
        let mut total = meter_sim::TrueEnergy::default();
        while i.start() <= to.start() {
            let g = sim
                .ground_truth("h001", &i)
                .expect("ground truth of a passed interval");
            total.pv.0 += g.pv.0;
            total.grid_import.0 += g.grid_import.0;
            i = i.next();
        }
        total
    };
    clock.sleep_until(t3 + chrono::Duration::minutes(6)).await;
    sim.sync();
    let inner = sum(five(t1).next(), five(t2).previous());
    let outer = sum(five(t0), five(t3));
    assert!(
        inner.pv.0 <= pv2 - pv1 && pv2 - pv1 <= outer.pv.0,
        "{inner:?} {} {outer:?}",
        pv2 - pv1
    );
    assert!(inner.grid_import.0 <= imp2 - imp1 && imp2 - imp1 <= outer.grid_import.0);
    // Roughly an hour of June-morning sun on a ~6 kWp roof.
    assert!(pv2 - pv1 > 1_000, "{}", pv2 - pv1);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_ground_truth_and_the_simulator_is_shareable() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<meter_sim::Simulator>();
    let (a, stop_a) = start(2, 77, 3600.0).await;
    let (b, stop_b) = start(2, 77, 3600.0).await;
    let (c, stop_c) = start(2, 78, 3600.0).await;
    let interval = gridmesh_protocol::Interval::parse("2026-06-21T10:00:00Z", 15).unwrap();
    a.clock().sleep_until(interval.end()).await;
    b.clock().sleep_until(interval.end()).await;
    c.clock().sleep_until(interval.end()).await;
    for home in ["h001", "h002"] {
        let ta = a.ground_truth(home, &interval).expect("passed");
        assert_eq!(Some(ta), b.ground_truth(home, &interval));
        assert_ne!(Some(ta), c.ground_truth(home, &interval));
    }
    stop_a.stop().await;
    stop_b.stop().await;
    stop_c.stop().await;
}
