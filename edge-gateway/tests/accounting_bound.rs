//! The documented accounting bound (issue 15, item 3): each interval's delta is within 1 Wh of
//! the metered energy, checked against a ground truth computed here from the fed counters (not
//! with the accountant's own arithmetic).

use chrono::{TimeZone, Utc};
use edge_gateway::accountant::{Accountant, AccountantSettings, ClosedInterval};
use edge_gateway::sample::{Channel, Counter, DeviceValues, Sample};
use gridmesh_protocol::IntervalLength;
use gridmesh_protocol::reading::ReadingFlags;
use proptest::prelude::*;

/// A boundary of 5-minute intervals (ms since the epoch).
const B0: i64 = 1_782_000_000_000;

fn pv(at_ms: i64, mwh: i64) -> Sample {
    Sample {
        at: Utc.timestamp_millis_opt(at_ms).unwrap(),
        device: "inv".into(),
        values: Ok(DeviceValues {
            counters: vec![(
                Channel::Pv,
                Counter {
                    mwh,
                    modulus_mwh: Some(4_294_967_296_000),
                },
            )],
            ..Default::default()
        }),
        stale: false,
    }
}

/// The metered counter at `t` (mWh): the device's counter is linear between two polls
/// (constant power), so interpolate exactly, as a fraction.
fn truth_at(points: &[(i64, i64)], t: i64) -> Option<f64> {
    let k = points.windows(2).position(|w| w[0].0 <= t && t <= w[1].0)?;
    let ((t0, c0), (t1, c1)) = (points[k], points[k + 1]);
    Some(c0 as f64 + (c1 - c0) as f64 * (t - t0) as f64 / (t1 - t0) as f64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Polls at irregular gaps (well within the grace period) with changing power: every
    /// interval's delta is within 1 Wh of the metered energy over it. (The accountant works
    /// in whole mWh, so its boundary values may be up to 1 mWh below the exact fraction.)
    #[test]
    fn each_delta_is_within_one_wh_of_the_metered_energy(
        steps in proptest::collection::vec((100i64..20_000, 0i64..12_000), 20..400),
        start in 0i64..10_000_000,
    ) {
        let settings = AccountantSettings {
            length: IntervalLength::Min5,
            tolerance_ms: 5_000,
            grace_ms: 30_000,
            stale_ms: 60_000,
        };
        let mut acc = Accountant::new(settings, &[Channel::Pv], None);
        let mut t = B0 - 1_000;
        let mut counter = start;
        let mut points = vec![(t, counter)];
        let mut closed: Vec<ClosedInterval> = Vec::new();
        acc.feed(&pv(t, counter));
        for (gap_ms, power_w) in &steps {
            t += gap_ms;
            counter += power_w * gap_ms / 3_600;
            points.push((t, counter));
            acc.feed(&pv(t, counter));
            closed.extend(acc.close_ready(Utc.timestamp_millis_opt(t).unwrap()));
        }
        let mut checked = 0;
        for c in &closed {
            prop_assert!(!c.flags.contains(ReadingFlags::COUNTER_RESET), "{:?}", c.flags.names());
            let (from, to) = (c.interval.start().timestamp_millis(), c.interval.end().timestamp_millis());
            let (Some(a), Some(b)) = (truth_at(&points, from), truth_at(&points, to)) else {
                continue;
            };
            let metered = b - a;
            let delta = (c.deltas.pv.0 * 1_000) as f64;
            prop_assert!(
                (delta - metered).abs() <= 1_000.0 + 2.0,
                "{}: delta {} Wh, metered {} mWh", c.interval, c.deltas.pv.0, metered
            );
            checked += 1;
        }
        // The polls span at least 20 × 100 ms; with more than a few intervals, most are checked.
        if t - B0 > 3 * 300_000 {
            prop_assert!(checked >= 2, "only {} of {} intervals checked", checked, closed.len());
        }
    }
}
