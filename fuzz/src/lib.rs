//! Helpers the fuzz targets share: what the gateway does with device values after decoding.

use chrono::{DateTime, Utc};
use edge_gateway::accountant::{Accountant, AccountantSettings};
use edge_gateway::sample::{Channel, DeviceValues, Sample};
use gridmesh_protocol::IntervalLength;

/// The start of the fuzzed clock (2026-06-21T12:00:00Z), Unix ms.
pub const T0_MS: i64 = 1_782_043_200_000;

/// Feeds `polls` (Unix ms, values) to an accountant that expects every channel, closes what
/// it can after each poll and once well after the last, and checks every closed interval:
/// registers and deltas are never negative (they are signed and settled as energy).
pub fn account(polls: &[(i64, DeviceValues)]) {
    let settings = AccountantSettings {
        length: IntervalLength::from_minutes(5).expect("5 minutes is supported"),
        tolerance_ms: 2_000,
        grace_ms: 30_000,
        stale_ms: 60_000,
    };
    let mut accountant = Accountant::new(settings, &Channel::ALL, None);
    let mut last = T0_MS;
    for (at_ms, values) in polls {
        let Some(at) = DateTime::<Utc>::from_timestamp_millis(*at_ms) else {
            continue;
        };
        last = last.max(*at_ms);
        accountant.feed(&Sample {
            at,
            device: "fuzz".into(),
            values: Ok(values.clone()),
            stale: false,
        });
        check(accountant.close_ready(at));
    }
    if let Some(after) = DateTime::<Utc>::from_timestamp_millis(last + 3_600_000) {
        check(accountant.close_ready(after));
    }
}

fn check(closed: Vec<edge_gateway::accountant::ClosedInterval>) {
    for c in closed {
        for (name, r) in [("registers", &c.registers), ("deltas", &c.deltas)] {
            for (channel, wh) in [
                ("grid_import", r.grid_import),
                ("grid_export", r.grid_export),
                ("pv", r.pv),
                ("battery_charge", r.battery_charge),
                ("battery_discharge", r.battery_discharge),
            ] {
                assert!(wh.0 >= 0, "negative {name}.{channel}: {wh:?} in {c:?}");
            }
        }
    }
}
