//! Pure forecasts for the household agent, from the gateway's own history (no internet needed):
//!
//! - **PV**: a clear-sky profile from the sun's position at the site (latitude, longitude,
//!   time of day and year), scaled by the ratio of measured PV to that profile over the recent
//!   days ([`pv`]);
//! - **load**: the household's consumption (PV + import + discharge − export − charge) in the
//!   same weekday and slot on earlier weeks, else the same slot on earlier days, else the recent
//!   mean ([`load`]);
//! - **prices**: the cleared price at the home's node in the same slot on recent days, else the
//!   mean of all recent cleared prices, else nothing ([`prices`]).
//!
//! Every forecast is integers (Wh, minor units per MWh); floats appear only inside the solar
//! geometry. Missing history never fails: it falls back as documented on each function.

use crate::outbox::HistoryRow;
use gridmesh_protocol::{Interval, PricePerMwh};
use std::collections::BTreeMap;

/// Seconds in a day.
const DAY: i64 = 86_400;

/// How many earlier days of PV history scale the clear-sky profile.
pub const PV_SCALE_DAYS: i64 = 3;

/// The sine of the sun's elevation at `lat`/`lon` (degrees) and Unix time `t` (seconds, UTC);
/// negative below the horizon. Declination and equation of time from the usual low-precision
/// approximations (within about a degree, plenty for an energy profile).
pub fn sun_elevation_sin(lat: f64, lon: f64, t: i64) -> f64 {
    let days = t.div_euclid(DAY) as f64 + (t.rem_euclid(DAY) as f64) / DAY as f64;
    // Day of the year (0 = 1 January), good for any year within a day.
    let day_of_year = (days + 0.5 - 10_957.0).rem_euclid(365.2422);
    let gamma = 2.0 * std::f64::consts::PI * day_of_year / 365.2422;
    let declination = 0.006918 - 0.399912 * gamma.cos() + 0.070257 * gamma.sin()
        - 0.006758 * (2.0 * gamma).cos()
        + 0.000907 * (2.0 * gamma).sin();
    let equation_of_time_min = 229.18
        * (0.000075 + 0.001868 * gamma.cos()
            - 0.032077 * gamma.sin()
            - 0.014615 * (2.0 * gamma).cos()
            - 0.040849 * (2.0 * gamma).sin());
    let utc_minutes = t.rem_euclid(DAY) as f64 / 60.0;
    let solar_minutes = utc_minutes + equation_of_time_min + 4.0 * lon;
    let hour_angle = (solar_minutes / 4.0 - 180.0).to_radians();
    let phi = lat.to_radians();
    phi.sin() * declination.sin() + phi.cos() * declination.cos() * hour_angle.cos()
}

/// The clear-sky profile of `interval` at the site: the mean over the interval of the sun's
/// elevation sine (0 below the horizon), a dimensionless shape in 0 ..= 1 that the recent yield
/// scales into energy.
pub fn clear_sky(lat: f64, lon: f64, interval: &Interval) -> f64 {
    const SAMPLES: i64 = 5;
    let length = interval.length().seconds();
    (0..SAMPLES)
        .map(|k| {
            let t = interval.start_unix() + (2 * k + 1) * length / (2 * SAMPLES);
            sun_elevation_sin(lat, lon, t).max(0.0)
        })
        .sum::<f64>()
        / SAMPLES as f64
}

/// The next `slots` intervals from `first` on.
pub fn horizon(first: Interval, slots: usize) -> Vec<Interval> {
    std::iter::successors(Some(first), |i| Some(i.next()))
        .take(slots)
        .collect()
}

/// Forecast PV energy (Wh) of each interval of `slots`.
///
/// Scale: the PV measured in the last [`PV_SCALE_DAYS`] days before `slots[0]` divided by the
/// clear-sky profile of the same intervals (Wh per unit of profile). Without any PV history under
/// a sun above the horizon, `inverter_w` stands in (a clear day at 75 % of the rating at the
/// zenith); with neither, 0.
pub fn pv(
    history: &[HistoryRow],
    lat: f64,
    lon: f64,
    inverter_w: u32,
    slots: &[Interval],
) -> Vec<i64> {
    let Some(first) = slots.first() else {
        return Vec::new();
    };
    let length = first.length();
    let since = first.start_unix() - PV_SCALE_DAYS * DAY;
    let (mut measured, mut shape) = (0i64, 0.0f64);
    for row in history
        .iter()
        .filter(|r| r.interval_start >= since && r.interval_start < first.start_unix())
    {
        let Ok(interval) = Interval::from_unix(row.interval_start, i64::from(length.minutes()))
        else {
            continue;
        };
        measured = measured.saturating_add(row.deltas.pv.0.max(0));
        shape += clear_sky(lat, lon, &interval);
    }
    let per_unit = if shape > 0.5 {
        measured as f64 / shape
    } else {
        f64::from(inverter_w) * 0.75 * length.seconds() as f64 / 3600.0
    };
    slots
        .iter()
        .map(|i| (clear_sky(lat, lon, i) * per_unit).round().max(0.0) as i64)
        .collect()
}

/// The household's consumption in a history row, Wh (never negative): PV + import + discharge −
/// export − charge.
pub fn consumption(row: &HistoryRow) -> i64 {
    let d = &row.deltas;
    (d.pv.0 + d.grid_import.0 + d.battery_discharge.0 - d.grid_export.0 - d.battery_charge.0).max(0)
}

/// Forecast consumption (Wh) of each interval of `slots`: the mean of the same weekday and slot
/// on up to four earlier weeks; else the same slot on up to seven earlier days; else the mean of
/// the last four intervals before `slots[0]`; else `fallback_wh`.
pub fn load(history: &[HistoryRow], slots: &[Interval], fallback_wh: i64) -> Vec<i64> {
    let Some(first) = slots.first() else {
        return Vec::new();
    };
    let by_start: BTreeMap<i64, i64> = history
        .iter()
        .filter(|r| r.interval_start < first.start_unix())
        .map(|r| (r.interval_start, consumption(r)))
        .collect();
    let recent: Vec<i64> = by_start.values().rev().take(4).copied().collect();
    let recent_mean = mean(&recent);
    slots
        .iter()
        .map(|slot| {
            let earlier = |step: i64, count: i64| -> Vec<i64> {
                (1..)
                    .map(|k| slot.start_unix() - k * step)
                    .take_while(|&s| s >= slot.start_unix() - count * step)
                    .filter_map(|s| by_start.get(&s).copied())
                    .collect()
            };
            mean(&earlier(7 * DAY, 4))
                .or_else(|| mean(&earlier(DAY, 7)))
                .or(recent_mean)
                .unwrap_or(fallback_wh)
        })
        .collect()
}

/// Forecast cleared price at the home's node for each interval of `slots`: the mean of the
/// same slot of day over the known `cleared` prices (interval start → price), else the mean of
/// all of them, else `None` (no market history: the caller assumes the utility's tariffs).
pub fn prices(
    cleared: &BTreeMap<i64, PricePerMwh>,
    slots: &[Interval],
) -> Vec<Option<PricePerMwh>> {
    let all: Vec<i64> = cleared.values().map(|p| p.0).collect();
    let overall = mean(&all);
    slots
        .iter()
        .map(|slot| {
            let slot_of_day = slot.start_unix().rem_euclid(DAY);
            let same: Vec<i64> = cleared
                .iter()
                .filter(|(start, _)| {
                    **start < slot.start_unix() && start.rem_euclid(DAY) == slot_of_day
                })
                .map(|(_, p)| p.0)
                .collect();
            mean(&same).or(overall).map(PricePerMwh)
        })
        .collect()
}

fn mean(values: &[i64]) -> Option<i64> {
    let n = i64::try_from(values.len()).ok().filter(|n| *n > 0)?;
    let sum: i128 = values.iter().map(|v| i128::from(*v)).sum();
    i64::try_from(sum / i128::from(n)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::Wh;
    use gridmesh_protocol::reading::Registers;

    const LAT: f64 = 48.1;
    const LON: f64 = 11.6;

    fn at(rfc3339: &str) -> Interval {
        let t = chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp();
        Interval::from_unix(t, 15).unwrap()
    }

    fn row(start: i64, pv: i64, import: i64, export: i64) -> HistoryRow {
        HistoryRow {
            interval_start: start,
            deltas: Registers {
                grid_import: Wh(import),
                grid_export: Wh(export),
                pv: Wh(pv),
                ..Default::default()
            },
            soc_permille: None,
        }
    }

    #[test]
    fn the_sun_is_high_at_solar_noon_in_june_and_down_at_midnight() {
        // Munich, 21 June, ~11:15 UTC is solar noon: elevation 90 − 48.1 + 23.44 ≈ 65.3°.
        let t = at("2026-06-21T11:15:00Z").start_unix();
        let elevation = sun_elevation_sin(LAT, LON, t).asin().to_degrees();
        assert!((elevation - 65.3).abs() < 1.0, "{elevation}");
        assert!(sun_elevation_sin(LAT, LON, at("2026-06-21T23:15:00Z").start_unix()) < 0.0);
        // December noon is much lower (≈ 18.5°).
        let winter = sun_elevation_sin(LAT, LON, at("2026-12-21T11:15:00Z").start_unix());
        assert!((winter.asin().to_degrees() - 18.5).abs() < 1.0);
        assert_eq!(clear_sky(LAT, LON, &at("2026-06-21T23:00:00Z")), 0.0);
    }

    #[test]
    fn pv_is_the_clear_sky_shape_scaled_by_recent_yield() {
        let first = at("2026-06-21T00:00:00Z");
        let slots = horizon(first, 96);
        // Yesterday exactly 2 000 Wh per unit of profile.
        let history: Vec<HistoryRow> = horizon(at("2026-06-20T00:00:00Z"), 96)
            .iter()
            .map(|i| {
                row(
                    i.start_unix(),
                    (clear_sky(LAT, LON, i) * 2000.0).round() as i64,
                    0,
                    0,
                )
            })
            .collect();
        let forecast = pv(&history, LAT, LON, 5000, &slots);
        assert_eq!(forecast.len(), 96);
        // Night is zero, noon is the peak, a day later the sun is (almost) where it was.
        assert_eq!(forecast[0], 0);
        let peak = forecast
            .iter()
            .enumerate()
            .max_by_key(|(_, v)| **v)
            .unwrap()
            .0;
        assert!((44..=46).contains(&peak), "peak slot {peak}");
        let yesterday: i64 = history.iter().map(|r| r.deltas.pv.0).sum();
        let today: i64 = forecast.iter().sum();
        assert!(
            (today - yesterday).abs() * 100 < yesterday,
            "{today} vs {yesterday}"
        );
        // A cloudy history halves it.
        let cloudy: Vec<HistoryRow> = history
            .iter()
            .map(|r| row(r.interval_start, r.deltas.pv.0 / 2, 0, 0))
            .collect();
        let half: i64 = pv(&cloudy, LAT, LON, 5000, &slots).iter().sum();
        assert!((half * 2 - today).abs() * 100 < today);
    }

    #[test]
    fn pv_without_history_falls_back_to_the_rating_then_zero() {
        let slots = horizon(at("2026-06-21T11:00:00Z"), 4);
        let rated = pv(&[], LAT, LON, 4000, &slots);
        // 4 kW × 0.75 × 15 min × sin(~65°) ≈ 680 Wh.
        assert!((600..=760).contains(&rated[0]), "{rated:?}");
        assert_eq!(pv(&[], LAT, LON, 0, &slots), vec![0; 4]);
        // Night-only history (no sun to scale by) also falls back to the rating.
        let night = vec![row(at("2026-06-20T23:00:00Z").start_unix(), 0, 100, 0)];
        assert_eq!(pv(&night, LAT, LON, 4000, &slots), rated);
        assert!(pv(&[], LAT, LON, 4000, &[]).is_empty());
    }

    #[test]
    fn load_prefers_same_weekday_then_same_slot_then_recent() {
        let slot = at("2026-06-21T18:00:00Z");
        let t = slot.start_unix();
        // Nothing: the fallback.
        assert_eq!(load(&[], &[slot], 123), vec![123]);
        // Recent only: mean of the last four.
        let recent: Vec<HistoryRow> = (1..=6).map(|k| row(t - k * 900, 0, k * 100, 0)).collect();
        assert_eq!(load(&recent, &[slot], 0), vec![250]);
        // Same slot yesterday and the day before: their mean.
        let mut h = recent.clone();
        h.push(row(t - DAY, 0, 800, 0));
        h.push(row(t - 2 * DAY, 200, 500, 100)); // consumption 200 + 500 − 100 = 600
        assert_eq!(load(&h, &[slot], 0), vec![700]);
        // Same weekday last week wins.
        h.push(row(t - 7 * DAY, 0, 1500, 0));
        assert_eq!(load(&h, &[slot], 0), vec![1500]);
        // History after the first slot is never used.
        h.push(row(t, 0, 99_999, 0));
        assert_eq!(load(&h, &[slot], 0), vec![1500]);
    }

    #[test]
    fn prices_per_slot_of_day_with_fallbacks() {
        let slot = at("2026-06-21T12:00:00Z");
        let t = slot.start_unix();
        assert_eq!(prices(&BTreeMap::new(), &[slot]), vec![None]);
        let mut cleared = BTreeMap::new();
        cleared.insert(t - 900, PricePerMwh(20_000));
        // Another slot of day only: the overall mean.
        assert_eq!(prices(&cleared, &[slot]), vec![Some(PricePerMwh(20_000))]);
        cleared.insert(t - DAY, PricePerMwh(9_000));
        cleared.insert(t - 2 * DAY, PricePerMwh(11_000));
        assert_eq!(
            prices(&cleared, &[slot, slot.next()]),
            vec![Some(PricePerMwh(10_000)), Some(PricePerMwh(13_333))]
        );
    }
}
