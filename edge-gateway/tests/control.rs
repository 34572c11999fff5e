//! The control loop's pure core, data-driven: one `check(case, expected)` per behaviour —
//! curtail only beyond the battery, release when headroom returns, never negative, clamped,
//! rate-limited, refreshed before the inverter's revert timeout, battery discharges clipped to
//! the envelope, discharge under an import envelope.

use chrono::{DateTime, Duration, Utc};
use edge_gateway::control::{
    Commands, ControlSettings, Controller, GridPower, Inputs, PvCommand, allowed_power_w,
};
use edge_gateway::envelope::InForce;
use edge_gateway::sample::PvLimit;
use gridmesh_protocol::envelope::EnvelopeSource;
use gridmesh_protocol::{Interval, Wh};

const RATING: i64 = 6_000;

fn settings() -> ControlSettings {
    ControlSettings {
        rating_w: RATING,
        battery_w: 3_000,
        revert_s: 120,
        min_write_interval_ms: 1_000,
    }
}

fn interval() -> Interval {
    Interval::parse("2026-06-21T12:00:00Z", 5).unwrap()
}

/// One poll, in the terms of the brief. Defaults: 60 s into a 5-minute interval whose export
/// limit is 100 Wh, 20 Wh exported so far, so the allowed export is 80 Wh over 240 s = 1200 W,
/// aimed at 97 % = 1164 W.
#[derive(Clone, Copy)]
struct Case {
    at_s: i64,
    real_ms: u64,
    export_limit_wh: i64,
    import_limit_wh: i64,
    exported_wh: Option<i64>,
    imported_wh: i64,
    export_w: i64,
    import_w: i64,
    pv_w: i64,
    battery_w: Option<i64>,
    /// The inverter's limit as read: `Some(W)` enabled, `None` disabled.
    limit_w: Option<i64>,
    /// `false`: the inverter has no model 123.
    has_123: bool,
    steer_w: i64,
}

const BASE: Case = Case {
    at_s: 60,
    real_ms: 10_000,
    export_limit_wh: 100,
    import_limit_wh: 1_000,
    exported_wh: Some(20),
    imported_wh: 0,
    export_w: 1_000,
    import_w: 0,
    pv_w: 4_000,
    battery_w: None,
    limit_w: None,
    has_123: true,
    steer_w: 0,
};

fn inputs(c: &Case) -> Inputs {
    let start: DateTime<Utc> = interval().start();
    Inputs {
        now: start + Duration::seconds(c.at_s),
        real_ms: c.real_ms,
        envelope: InForce {
            interval: interval(),
            source: EnvelopeSource::Market,
            export_limit: Wh(c.export_limit_wh),
            import_limit: Wh(c.import_limit_wh),
        },
        exported_mwh: c.exported_wh.map(|w| w * 1000),
        imported_mwh: c.exported_wh.map(|_| c.imported_wh * 1000),
        grid: c.exported_wh.map(|_| GridPower {
            export_w: c.export_w,
            import_w: c.import_w,
        }),
        pv_w: Some(c.pv_w),
        battery_w: c.battery_w,
        pv_limit: c.has_123.then_some(PvLimit {
            enabled: c.limit_w.is_some(),
            pct_milli: Some(c.limit_w.unwrap_or(RATING) * 100_000 / RATING),
            sf: -1,
            revert_s: Some(120),
        }),
        steer_discharge_w: c.steer_w,
    }
}

fn limit(watts: i64) -> Option<PvCommand> {
    Some(PvCommand::Limit {
        watts,
        pct_milli: watts * 100_000 / RATING,
        sf: -1,
    })
}

/// Runs `cases` in order through one controller (so later cases see what earlier ones wrote)
/// and compares each poll's commands.
fn check(cases: &[(Case, Commands)]) {
    let mut controller = Controller::new(settings());
    for (i, (case, expected)) in cases.iter().enumerate() {
        let got = controller.step(&inputs(case));
        assert_eq!(&got, expected, "poll {i}");
    }
}

fn pv(command: Option<PvCommand>) -> Commands {
    Commands {
        pv: command,
        battery: None,
    }
}

#[test]
fn allowed_power_is_the_rest_of_the_budget_over_the_rest_of_the_interval() {
    assert_eq!(allowed_power_w(80_000, 240_000), 1_164);
}

#[test]
fn inside_the_envelope_nothing_is_written() {
    check(&[(
        Case {
            export_w: 1_100,
            ..BASE
        },
        pv(None),
    )]);
}

#[test]
fn pv_is_curtailed_by_the_excess_only() {
    // Export 2000 W, allowed 1164 W: the limit is PV − 836 W.
    check(&[(
        Case {
            export_w: 2_000,
            ..BASE
        },
        pv(limit(4_000 - 836)),
    )]);
}

#[test]
fn the_battery_takes_the_surplus_first() {
    // The battery charges 1500 W by itself and export stays below the allowed power: PV
    // is not touched, and the battery is not told anything either.
    check(&[(
        Case {
            export_w: 1_000,
            battery_w: Some(-1_500),
            ..BASE
        },
        pv(None),
    )]);
    // The battery is at its rating and export is still 700 W over: curtail only those.
    check(&[(
        Case {
            export_w: 1_864,
            battery_w: Some(-3_000),
            ..BASE
        },
        pv(limit(4_000 - 700)),
    )]);
}

#[test]
fn curtailment_is_released_as_headroom_returns() {
    check(&[
        // Limited to 3000 W and binding; export 400 W below the allowed power: raise by the gap.
        (
            Case {
                export_w: 764,
                pv_w: 3_000,
                limit_w: Some(3_000),
                ..BASE
            },
            pv(limit(3_400)),
        ),
        // A second later the gap is small: nothing (no refresh due yet).
        (
            Case {
                real_ms: 11_000,
                at_s: 61,
                export_w: 1_150,
                pv_w: 3_400,
                limit_w: Some(3_400),
                ..BASE
            },
            pv(None),
        ),
        // The raised limit would reach the rating: release.
        (
            Case {
                real_ms: 12_000,
                at_s: 62,
                export_w: 0,
                pv_w: 5_900,
                limit_w: Some(5_900),
                ..BASE
            },
            pv(Some(PvCommand::Release)),
        ),
    ]);
    // PV runs well below the limit (clouds): the limit does not bind, release it.
    check(&[(
        Case {
            export_w: 1_100,
            pv_w: 2_000,
            limit_w: Some(3_000),
            ..BASE
        },
        pv(Some(PvCommand::Release)),
    )]);
}

#[test]
fn limits_are_never_negative_and_never_above_the_rating() {
    // Budget used up (allowed 0 W) while exporting 5 kW with 4 kW of PV: limit 0, not −1000.
    check(&[(
        Case {
            exported_wh: Some(120),
            export_w: 5_000,
            ..BASE
        },
        pv(limit(0)),
    )]);
    // The inverter reports more than its rating (measurement noise): the limit is clamped.
    check(&[(
        Case {
            export_w: 1_200,
            pv_w: 9_000,
            exported_wh: Some(99),
            ..BASE
        },
        pv(limit(RATING)),
    )]);
}

#[test]
fn writes_are_rate_limited_unless_the_envelope_changes() {
    let over = Case {
        export_w: 2_000,
        ..BASE
    };
    check(&[
        (over, pv(limit(3_164))),
        // 100 ms later, still over (the inverter has not followed yet): no second write.
        (
            Case {
                real_ms: 10_100,
                export_w: 2_500,
                ..over
            },
            pv(None),
        ),
        // The envelope changes (a tighter limit): written at once.
        (
            Case {
                real_ms: 10_200,
                pv_w: 4_000,
                limit_w: None,
                export_limit_wh: 50,
                export_w: 2_000,
                ..over
            },
            pv(limit(4_000 - (2_000 - allowed_power_w(30_000, 240_000)))),
        ),
        // And after min_write_interval_ms a new value may go out again.
        (
            Case {
                real_ms: 11_300,
                pv_w: 1_000,
                limit_w: Some(1_000),
                export_limit_wh: 50,
                export_w: 900,
                ..over
            },
            pv(limit(1_000 - (900 - allowed_power_w(30_000, 240_000)))),
        ),
    ]);
}

#[test]
fn a_needed_limit_is_refreshed_before_the_inverter_reverts() {
    let steady = Case {
        export_w: 1_150,
        pv_w: 3_000,
        limit_w: Some(3_000),
        ..BASE
    };
    check(&[
        // First poll: nothing written by this controller yet, so the limit is refreshed.
        (steady, pv(limit(3_000))),
        // 59 s later: not yet (half of 120 s is 60 s).
        (
            Case {
                at_s: 119,
                real_ms: 69_000,
                exported_wh: Some(39),
                export_w: 1_163,
                ..steady
            },
            pv(None),
        ),
        // 60 s after the write: refreshed, same limit.
        (
            Case {
                at_s: 120,
                real_ms: 70_000,
                exported_wh: Some(39),
                export_w: 1_163,
                ..steady
            },
            pv(limit(3_000)),
        ),
    ]);
}

#[test]
fn without_model_123_or_a_rating_pv_is_never_written() {
    check(&[(
        Case {
            export_w: 5_000,
            has_123: false,
            ..BASE
        },
        pv(None),
    )]);
    let mut controller = Controller::new(ControlSettings {
        rating_w: 0,
        ..settings()
    });
    let out = controller.step(&inputs(&Case {
        export_w: 5_000,
        ..BASE
    }));
    assert_eq!(out, Commands::default());
}

#[test]
fn a_requested_discharge_is_clipped_to_the_envelope() {
    let battery = |w| Commands {
        pv: None,
        battery: Some(w),
    };
    // Net export without the battery is 200 W; 1164 W are allowed: discharge at most 964 W.
    check(&[(
        Case {
            export_w: 200,
            battery_w: Some(0),
            steer_w: 2_000,
            ..BASE
        },
        battery(964),
    )]);
    // Surplus above the allowed export already: no forced discharge at all (and the battery,
    // charging 500 W by itself, is left alone).
    check(&[(
        Case {
            export_w: 1_000,
            battery_w: Some(-500),
            steer_w: 2_000,
            ..BASE
        },
        pv(None),
    )]);
}

#[test]
fn under_an_import_envelope_the_battery_is_asked_to_discharge() {
    // Importing 2500 W with 727 W allowed (50 Wh left over 240 s, at 97 %) while the battery
    // idles: ask it to discharge the difference, at most its rating.
    let allowed = allowed_power_w(50_000, 240_000);
    check(&[(
        Case {
            import_limit_wh: 60,
            imported_wh: 10,
            export_w: 0,
            import_w: 2_500,
            pv_w: 0,
            battery_w: Some(0),
            ..BASE
        },
        Commands {
            pv: None,
            battery: Some(2_500 - allowed),
        },
    )]);
    check(&[(
        Case {
            import_limit_wh: 60,
            imported_wh: 10,
            export_w: 0,
            import_w: 9_000,
            pv_w: 0,
            battery_w: Some(0),
            ..BASE
        },
        Commands {
            pv: None,
            battery: Some(3_000),
        },
    )]);
}

#[test]
fn without_a_meter_reading_the_limit_in_force_is_only_held() {
    check(&[
        (
            Case {
                exported_wh: None,
                limit_w: Some(1_800),
                pv_w: 1_800,
                ..BASE
            },
            pv(limit(1_800)),
        ),
        (
            Case {
                exported_wh: None,
                limit_w: Some(1_800),
                pv_w: 1_800,
                real_ms: 20_000,
                at_s: 70,
                ..BASE
            },
            pv(None),
        ),
    ]);
}
