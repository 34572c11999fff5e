//! The control loop against physics: the demo's solar street (f1, export limit far below its
//! midday surplus) runs around noon, and every branch's *physical* export and import — summed
//! from meter-sim's ground truth, never from gridmesh's own figures — stays within its limit
//! plus 2 % plus 50 Wh from the second interval after start. It also checks that curtailment was
//! really needed (the street's available surplus exceeded its limit) and that batteries took the
//! surplus before PV was curtailed.

use chrono::{DateTime, Utc};
use gridmesh_e2e::invariants::{intervals_from, wait_sealed};
use gridmesh_e2e::neighbourhood::{Neighbourhood, Options};
use gridmesh_protocol::interval::{Interval, IntervalLength};
use gridmesh_runtime::shutdown::Shutdown;
use std::time::Duration;

const INTERVALS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn branches_stay_within_their_limits_in_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        // The demo's neighbourhood: its 24 homes on 3 feeders, f1 the solar street.
        start: DateTime::parse_from_rfc3339("2026-06-21T11:20:00Z")
            .unwrap()
            .with_timezone(&Utc),
        data_dir: dir.path().to_owned(),
        ports_from: 0,
        modbus_base_port: 0,
        ..Options::default()
    };
    let shutdown = Shutdown::new();
    let hood = Neighbourhood::start(options, &shutdown)
        .await
        .expect("neighbourhood starts");
    // From the second interval after start.
    let first = Interval::containing(hood.clock.now(), IntervalLength::Min15)
        .next()
        .next();
    let wanted = intervals_from(first, INTERVALS);
    wait_sealed(
        &hood.settlement_url(),
        wanted.last().unwrap(),
        Duration::from_secs(240),
    )
    .await
    .unwrap();

    let homes = hood.sim.manifest().homes;
    let params = hood.sim.homes().to_vec();
    let mut street_surplus_over_limit = false;
    let mut report = Vec::new();
    for interval in &wanted {
        for branch in &hood.network.branches {
            let (mut export, mut import, mut curtailed, mut available_surplus) =
                (0i64, 0i64, 0i64, 0i64);
            for home in homes.iter().filter(|h| h.feeder == branch.node.as_str()) {
                let truth = hood
                    .sim
                    .ground_truth(&home.id, interval)
                    .expect("ground truth");
                export += truth.grid_export.0;
                import += truth.grid_import.0;
                curtailed += truth.pv_curtailed.0;
                available_surplus +=
                    truth.grid_export.0 - truth.grid_import.0 + truth.pv_curtailed.0;
                // Batteries first: a home whose PV was curtailed had its battery take all it could.
                if truth.pv_curtailed.0 > 20 {
                    let battery = params.iter().find(|p| p.id == home.id);
                    if battery.is_some_and(|p| p.battery_w > 0) {
                        assert!(
                            truth.battery_charge.0 + 20 >= truth.battery_headroom.0,
                            "{} in {interval}: PV curtailed {} Wh while its battery took {} of {} Wh it could",
                            home.id,
                            truth.pv_curtailed.0,
                            truth.battery_charge.0,
                            truth.battery_headroom.0
                        );
                    }
                }
            }
            let net_export = export - import;
            report.push(format!(
                "{interval} {}: net export {net_export} Wh (limit {:?}), curtailed {curtailed} Wh",
                branch.node, branch.export_limit_wh
            ));
            if let Some(limit) = branch.export_limit_wh {
                let tolerance = limit.0 * 2 / 100 + 50;
                assert!(
                    net_export <= limit.0 + tolerance,
                    "{interval}: {} physically exported {net_export} Wh, limit {} Wh\n{}",
                    branch.node,
                    limit.0,
                    report.join("\n")
                );
                if available_surplus > 2 * limit.0 {
                    street_surplus_over_limit = true;
                }
                // No over-curtailment: at most what the limit requires plus 10 % (and a poll's
                // worth of slack when almost nothing was required).
                let required = (available_surplus - limit.0).max(0);
                assert!(
                    curtailed <= required + required / 10 + 50,
                    "{interval}: {} curtailed {curtailed} Wh where its limit required {required} Wh\n{}",
                    branch.node,
                    report.join("\n")
                );
            }
            if let Some(limit) = branch.import_limit_wh {
                let tolerance = limit.0 * 2 / 100 + 50;
                assert!(
                    -net_export <= limit.0 + tolerance,
                    "{interval}: {} physically imported {} Wh, limit {} Wh",
                    branch.node,
                    -net_export,
                    limit.0
                );
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        street_surplus_over_limit,
        "the solar street never had more surplus than its limit: the test proved nothing\n{}",
        report.join("\n")
    );
    shutdown.trigger();
    hood.stop(&shutdown).await.unwrap();
}
