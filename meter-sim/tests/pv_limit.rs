//! The inverter's SunSpec model 123 power limit over real Modbus TCP: layout and sentinels,
//! writes and refusals, the physics obeying the limit, the revert timer on device time, and
//! the ground truth of curtailed PV.

mod common;

use common::*;
use gridmesh_protocol::{Interval, IntervalLength};
use tokio_modbus::ExceptionCode;

const NOT_IMPLEMENTED_U16: u16 = 0xFFFF;
const NOT_IMPLEMENTED_I16: u16 = 0x8000;

/// Offsets of model 123's points from its ID register (the standard's, independent of the
/// server's tables).
mod off {
    pub const CONN_WIN_TMS: usize = 2;
    pub const CONN_RVRT_TMS: usize = 3;
    pub const CONN: usize = 4;
    pub const WMAX_LIM_PCT: usize = 5;
    pub const WIN_TMS: usize = 6;
    pub const RVRT_TMS: usize = 7;
    pub const RMP_TMS: usize = 8;
    pub const ENA: usize = 9;
    pub const OUT_PF_SET: usize = 10;
    pub const WMAX_LIM_PCT_SF: usize = 23;
    pub const OUT_PF_SET_SF: usize = 24;
    pub const VAR_PCT_SF: usize = 25;
}

fn at(offset: usize) -> u16 {
    M123 + offset as u16
}

async fn read_123(ctx: &mut tokio_modbus::client::Context) -> Vec<u16> {
    read_model(
        ctx,
        Model {
            id: 123,
            address: M123,
            length: 24,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_123_follows_103_with_the_standard_layout_and_sentinels() {
    let (sim, shutdown) = start(1, 5, 0.001).await;
    let mut inv = connect(sim.modbus_addr("h001").unwrap(), 1).await;
    let models = discover(&mut inv).await;
    assert_eq!(
        models,
        vec![
            Model {
                id: 1,
                address: 40_002,
                length: 66
            },
            Model {
                id: 103,
                address: M103,
                length: 50
            },
            Model {
                id: 123,
                address: M123,
                length: 24
            },
        ]
    );
    assert_eq!(read(&mut inv, M123 + 26, 2).await.unwrap(), vec![0xFFFF, 0]);
    let r = read_123(&mut inv).await;
    assert_eq!(r[0..2], [123, 24]);
    assert_eq!(r[off::CONN], 1, "Conn = CONNECT");
    assert_eq!(r[off::CONN_WIN_TMS], NOT_IMPLEMENTED_U16);
    assert_eq!(r[off::CONN_RVRT_TMS], NOT_IMPLEMENTED_U16);
    assert_eq!(r[off::WMAX_LIM_PCT_SF] as i16, -1, "WMaxLimPct_SF");
    assert_eq!(r[off::WMAX_LIM_PCT], 1000, "100.0 % after power-up");
    assert_eq!(r[off::ENA], 0, "no limit after power-up");
    assert_eq!(
        [r[off::WIN_TMS], r[off::RVRT_TMS], r[off::RMP_TMS]],
        [0, 0, 0]
    );
    // Power factor and VAr controls are not implemented: every point carries its sentinel.
    let int16 = [10, 15, 16, 17];
    let unsigned = [11, 12, 13, 14, 18, 19, 20, 21, 22];
    for o in int16 {
        assert_eq!(r[o], NOT_IMPLEMENTED_I16, "offset {o}");
    }
    for o in unsigned {
        assert_eq!(r[o], NOT_IMPLEMENTED_U16, "offset {o}");
    }
    assert_eq!(r[off::OUT_PF_SET_SF], NOT_IMPLEMENTED_I16);
    assert_eq!(r[off::VAR_PCT_SF], NOT_IMPLEMENTED_I16);
    assert_eq!(sim.status().homes[0].pv_limit_pct, None);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_writes_read_back_and_bad_writes_are_refused_whole() {
    let (sim, shutdown) = start(1, 6, 0.001).await;
    let mut inv = connect(sim.modbus_addr("h001").unwrap(), 1).await;
    // FC 6 for the limit, FC 16 for the timers and the enable.
    write(&mut inv, at(off::WMAX_LIM_PCT), &[455])
        .await
        .unwrap();
    write(&mut inv, at(off::WIN_TMS), &[5, 900, 10, 1])
        .await
        .unwrap();
    let r = read_123(&mut inv).await;
    assert_eq!(r[off::WMAX_LIM_PCT], 455);
    assert_eq!(
        [
            r[off::WIN_TMS],
            r[off::RVRT_TMS],
            r[off::RMP_TMS],
            r[off::ENA]
        ],
        [5, 900, 10, 1]
    );
    assert_eq!(sim.status().homes[0].pv_limit_pct, Some(45.5));
    // Out of range: above 100.0 %, an enum that is neither 0 nor 1, the sentinel as a time.
    for (offset, value) in [
        (off::WMAX_LIM_PCT, 1001),
        (off::ENA, 2),
        (off::RVRT_TMS, 0xFFFF),
    ] {
        assert_eq!(
            write(&mut inv, at(offset), &[value]).await,
            Err(ExceptionCode::IllegalDataValue),
            "offset {offset} value {value}"
        );
    }
    // Points that are not writable here: Conn, the power factor, the scale factor, 103's W.
    for offset in [off::CONN, off::OUT_PF_SET, off::WMAX_LIM_PCT_SF] {
        assert_eq!(
            write(&mut inv, at(offset), &[1]).await,
            Err(ExceptionCode::IllegalDataAddress),
            "offset {offset}"
        );
    }
    assert_eq!(
        write(&mut inv, M103 + 14, &[1]).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    // All or nothing: a good limit next to a bad enable, a good limit after Conn.
    assert_eq!(
        write(&mut inv, at(off::WMAX_LIM_PCT), &[200, 0, 60, 0, 7]).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        write(&mut inv, at(off::CONN), &[1, 300]).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(read_123(&mut inv).await, r, "nothing changed");
    // Disabling keeps the stored limit but lifts it.
    write(&mut inv, at(off::ENA), &[0]).await.unwrap();
    assert_eq!(
        read(&mut inv, at(off::WMAX_LIM_PCT), 1).await.unwrap(),
        [455]
    );
    assert_eq!(sim.status().homes[0].pv_limit_pct, None);
    // The battery's controls are unaffected by the inverter's.
    let mut bat = connect(sim.modbus_addr("h001").unwrap(), 2).await;
    assert_eq!(
        read(&mut bat, M124 + 5, 1).await.unwrap(),
        [0],
        "StorCtl_Mod"
    );
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pv_obeys_the_limit_and_ground_truth_counts_what_was_curtailed() {
    // 10 simulated minutes per real second.
    let (sim, shutdown) = start(1, 7, 600.0).await;
    let home = sim.homes()[0].clone();
    let mut inv = connect(sim.modbus_addr("h001").unwrap(), 1).await;
    // 10.0 % of the rating; June morning sun gives far more.
    write(&mut inv, at(off::WMAX_LIM_PCT), &[100, 0, 0, 0, 1])
        .await
        .unwrap();
    let limit_w = home.inverter_w as f64 * 0.1;
    let interval = Interval::containing(sim.clock().now(), IntervalLength::Min15).next();
    let clock = sim.clock().clone();
    clock
        .sleep_until(interval.start() + chrono::Duration::minutes(5))
        .await;
    sim.sync();
    let status = sim.status().homes[0].clone();
    assert_eq!(status.pv_limit_pct, Some(10.0));
    assert!(status.pv_w as f64 <= limit_w + 0.5, "{status:?}");
    assert!(
        status.pv_available_w as f64 > 2.0 * limit_w,
        "the sun offers more than the limit: {status:?}"
    );
    let w = read(&mut inv, M103 + 14, 2).await.unwrap();
    assert_eq!(w[1], 0, "W_SF");
    assert!((w[0] as i16 as f64) <= limit_w + 0.5, "103 W {}", w[0]);

    clock.sleep_until(interval.end()).await;
    let truth = sim
        .ground_truth("h001", &interval)
        .expect("ground truth of a passed interval");
    let quarter_hour_at_limit = limit_w / 4.0;
    assert!(
        truth.pv.0 as f64 <= quarter_hour_at_limit + 1.0,
        "PV {:?} over 15 min under a {limit_w} W limit",
        truth.pv
    );
    assert!(truth.pv_available.0 > 2 * truth.pv.0, "{truth:?}");
    let gap = truth.pv_available.0 - truth.pv.0 - truth.pv_curtailed.0;
    assert!(
        gap.abs() <= 1,
        "curtailed = available − produced ± 1 Wh: {truth:?}"
    );
    let metrics = sim.metrics_text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("gridmesh_sim_pv_curtailed_wh_total ") >= truth.pv_curtailed.0 as f64);
    assert_eq!(value("gridmesh_sim_pv_limits_active "), 1.0);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_reverts_after_rvrt_tms_of_device_time() {
    // 30 simulated seconds per real second: the 120 s timer runs out after four real seconds.
    let (sim, shutdown) = start(1, 8, 30.0).await;
    let mut inv = connect(sim.modbus_addr("h001").unwrap(), 1).await;
    let clock = sim.clock().clone();
    write(&mut inv, at(off::WMAX_LIM_PCT), &[50, 0, 120, 0, 1])
        .await
        .unwrap();
    // The write was recorded at a device time no later than this.
    let written_by = clock.now();
    let limit_w = sim.homes()[0].inverter_w as f64 * 0.05;
    clock
        .sleep_until(written_by + chrono::Duration::seconds(30))
        .await;
    sim.sync();
    assert_eq!(read(&mut inv, at(off::ENA), 1).await.unwrap(), [1]);
    let status = sim.status().homes[0].clone();
    assert_eq!(status.pv_limit_pct, Some(5.0));
    assert!(status.pv_w as f64 <= limit_w + 0.5, "{status:?}");

    clock
        .sleep_until(written_by + chrono::Duration::seconds(122))
        .await;
    sim.sync();
    let r = read_123(&mut inv).await;
    assert_eq!(r[off::ENA], 0, "WMaxLim_Ena returns to 0 after the revert");
    assert_eq!(r[off::WMAX_LIM_PCT], 50, "the limit value stays");
    assert_eq!(r[off::RVRT_TMS], 120);
    let status = sim.status().homes[0].clone();
    assert_eq!(status.pv_limit_pct, None);
    assert_eq!(status.pv_w, status.pv_available_w, "{status:?}");
    assert!(status.pv_w as f64 > 2.0 * limit_w, "{status:?}");

    // Enabling again starts a new timer.
    write(&mut inv, at(off::ENA), &[1]).await.unwrap();
    assert_eq!(read(&mut inv, at(off::ENA), 1).await.unwrap(), [1]);
    assert_eq!(sim.status().homes[0].pv_limit_pct, Some(5.0));
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_tells_whether_the_battery_took_the_surplus_first() {
    let (sim, shutdown) = start(1, 9, 600.0).await;
    let home = sim.homes()[0].clone();
    assert!(home.has_battery());
    let addr = sim.modbus_addr("h001").unwrap();
    let mut bat = connect(addr, 2).await;
    let mut inv = connect(addr, 1).await;
    let clock = sim.clock().clone();
    // Charge at the full rate (forced charge: StorCtl_Mod bit 1 with OutWRte = -100 %).
    write(&mut bat, M124 + 12, &[(-100i16) as u16])
        .await
        .unwrap();
    write(&mut bat, M124 + 5, &[2]).await.unwrap();
    let full_rate = Interval::containing(clock.now(), IntervalLength::Min15).next();
    clock.sleep_until(full_rate.end()).await;
    let t = sim.ground_truth("h001", &full_rate).expect("passed");
    let rated_quarter_hour = home.battery_w as i64 / 4;
    assert!(
        t.battery_headroom.0 > 0 && t.battery_headroom.0 <= rated_quarter_hour,
        "{t:?}"
    );
    assert!(
        (t.battery_charge.0 - t.battery_headroom.0).abs() <= 1,
        "charging at the full rate takes all the headroom: {t:?}"
    );
    assert!(t.battery_stored_end.0 > t.battery_stored_start.0, "{t:?}");
    assert_eq!(t.pv_curtailed.0, 0, "no limit yet");

    // Back to self-consumption, and PV limited to 0 %: PV is curtailed although the battery
    // had room, and the truth shows it (charge far below the headroom).
    write(&mut bat, M124 + 5, &[0]).await.unwrap();
    write(&mut inv, at(off::WMAX_LIM_PCT), &[0, 0, 0, 0, 1])
        .await
        .unwrap();
    let curtailed = Interval::containing(clock.now(), IntervalLength::Min15).next();
    clock.sleep_until(curtailed.end()).await;
    let t = sim.ground_truth("h001", &curtailed).expect("passed");
    assert_eq!(t.pv.0, 0, "{t:?}");
    assert!(t.pv_curtailed.0 > 500, "{t:?}");
    assert!(t.battery_headroom.0 > 500, "{t:?}");
    assert_eq!(t.battery_charge.0, 0, "{t:?}");
    shutdown.stop().await;
}
