//! Pure, deterministic functions of time: sun position, clear-sky irradiance, clouds and the
//! household load profile.
//!
//! Every function depends only on its arguments (simulated Unix time, place, seed), never on how
//! the simulation was stepped, so two runs with the same seed agree at every instant.
//!
//! - Sun: declination and hour angle from the day of year and solar time (UTC + longitude/15 h;
//!   the equation of time is ignored), clear-sky global horizontal irradiance by the Haurwitz
//!   model, 15 % of it diffuse, plane-of-array transposition for the panel's tilt and azimuth.
//! - Clouds: one neighbourhood-wide process: a daily weather type (clear, mixed or overcast)
//!   plus smooth 5-minute value noise; irradiance is scaled by Kasten–Czeplak, 1 − 0.75·c^3.4.
//! - Load: a daily energy from the annual total (20 % more in winter) spread over a profile with
//!   morning, midday and evening peaks, times smooth per-home noise, plus appliance spikes of
//!   1.5–3 kW lasting 3–12 minutes in about 8 % of quarter-hours.

use crate::scenario::unit_hash;
use std::f64::consts::PI;

const DAY: i64 = 86_400;

/// Solar time of day in hours (0..24) and day of year (0-based) at `unix` seconds.
fn solar_clock(unix: i64, longitude: f64) -> (f64, f64) {
    let solar = unix as f64 + longitude / 15.0 * 3600.0;
    let day = (solar / DAY as f64).floor();
    let hours = (solar - day * DAY as f64) / 3600.0;
    // Day of year from the civil date of the solar instant.
    let doy = chrono::DateTime::from_timestamp(solar as i64, 0)
        .map(|t| chrono::Datelike::ordinal0(&t) as f64)
        .unwrap_or(0.0);
    (hours, doy)
}

/// Plane-of-array clear-sky irradiance in W/m² for a panel at the given place and time.
pub fn clear_sky_poa(
    unix: i64,
    latitude: f64,
    longitude: f64,
    tilt_deg: f64,
    azimuth_deg: f64,
) -> f64 {
    let (hours, doy) = solar_clock(unix, longitude);
    let decl = (23.44f64).to_radians() * (2.0 * PI * (284.0 + doy + 1.0) / 365.0).sin();
    let lat = latitude.to_radians();
    let omega = (15.0 * (hours - 12.0)).to_radians();
    let sin_h = lat.sin() * decl.sin() + lat.cos() * decl.cos() * omega.cos();
    if sin_h <= 0.01 {
        return 0.0;
    }
    let ghi = 1098.0 * sin_h * (-0.057 / sin_h).exp();
    let dhi = 0.15 * ghi;
    let dni = (ghi - dhi) / sin_h;
    let cos_h = (1.0 - sin_h * sin_h).max(0.0).sqrt();
    // Sun azimuth measured from north, clockwise.
    let sun_az = omega
        .sin()
        .atan2(omega.cos() * lat.sin() - decl.tan() * lat.cos())
        + PI;
    let tilt = tilt_deg.to_radians();
    let cos_inc =
        sin_h * tilt.cos() + cos_h * tilt.sin() * (sun_az - azimuth_deg.to_radians()).cos();
    dni * cos_inc.max(0.0) + dhi * (1.0 + tilt.cos()) / 2.0
}

fn smoothstep(x: f64) -> f64 {
    x * x * (3.0 - 2.0 * x)
}

/// Smooth value noise in [0, 1): random values at multiples of `period` seconds, interpolated.
fn value_noise(seed: u64, stream: u64, unix: i64, period: i64) -> f64 {
    let slot = unix.div_euclid(period);
    let frac = unix.rem_euclid(period) as f64 / period as f64;
    let a = unit_hash(seed ^ stream, slot as u64);
    let b = unit_hash(seed ^ stream, (slot + 1) as u64);
    a + (b - a) * smoothstep(frac)
}

/// Cloud cover in [0, 1] over the whole neighbourhood.
pub fn cloud_cover(seed: u64, unix: i64) -> f64 {
    let day = unix.div_euclid(DAY) as u64;
    let kind = unit_hash(seed ^ 0xC10D, day);
    let (mean, spread) = if kind < 0.45 {
        (0.05, 0.15)
    } else if kind < 0.8 {
        (0.5, 0.9)
    } else {
        (0.88, 0.2)
    };
    let n = value_noise(seed, 0xC10D_0001, unix, 300) * 0.6
        + value_noise(seed, 0xC10D_0002, unix, 1800) * 0.4;
    (mean + (n - 0.5) * spread).clamp(0.0, 1.0)
}

/// Irradiance factor of the clouds (Kasten–Czeplak).
pub fn cloud_factor(seed: u64, unix: i64) -> f64 {
    1.0 - 0.75 * cloud_cover(seed, unix).powf(3.4)
}

/// The load profile's shape at a solar hour; its mean over a day is 1.
pub fn load_shape(hours: f64) -> f64 {
    raw_shape(hours) / shape_mean()
}

fn gauss(x: f64, mu: f64, sigma: f64) -> f64 {
    let d = (x - mu) / sigma;
    (-0.5 * d * d).exp()
}

fn raw_shape(hours: f64) -> f64 {
    0.35 + 0.9 * gauss(hours, 7.5, 1.0)
        + 0.4 * gauss(hours, 12.5, 1.5)
        + 1.4 * gauss(hours, 19.0, 2.0)
        + 1.4 * gauss(hours, 43.0, 2.0)
        + 1.4 * gauss(hours, -5.0, 2.0)
}

fn shape_mean() -> f64 {
    static MEAN: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *MEAN.get_or_init(|| (0..1440).map(|m| raw_shape(m as f64 / 60.0)).sum::<f64>() / 1440.0)
}

/// Household load in W for home `home` (its index) at `unix`.
pub fn household_load(seed: u64, home: u64, annual_kwh: f64, unix: i64, longitude: f64) -> f64 {
    let (hours, doy) = solar_clock(unix, longitude);
    let season = 1.0 + 0.2 * (2.0 * PI * (doy - 15.0) / 365.0).cos();
    let mean_w = annual_kwh * 1000.0 / 8760.0 * season;
    let stream = 0x10AD_0000 ^ (home << 20);
    let noise = 0.75 + 0.5 * value_noise(seed, stream, unix, 900);
    let mut load = mean_w * load_shape(hours) * noise;
    // Appliance spikes: in about 8 % of quarter-hours an appliance runs for 3–12 minutes.
    let slot = unix.div_euclid(900);
    let key = (home << 40) ^ slot as u64;
    if unit_hash(seed ^ 0x5B1CE, key) < 0.08 {
        let begin = slot * 900 + (unit_hash(seed ^ 0x5B1CF, key) * 600.0) as i64;
        let length = 180 + (unit_hash(seed ^ 0x5B1D0, key) * 540.0) as i64;
        if unix >= begin && unix < begin + length {
            load += 1500.0 + 1500.0 * unit_hash(seed ^ 0x5B1D1, key);
        }
    }
    load.max(50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn sun_is_up_at_noon_and_down_at_midnight() {
        let noon = clear_sky_poa(t("2026-06-21T11:15:00Z"), 48.1, 11.6, 30.0, 180.0);
        assert!((800.0..1200.0).contains(&noon), "{noon}");
        assert_eq!(
            clear_sky_poa(t("2026-06-21T23:00:00Z"), 48.1, 11.6, 30.0, 180.0),
            0.0
        );
        let winter = clear_sky_poa(t("2026-12-21T11:15:00Z"), 48.1, 11.6, 30.0, 180.0);
        assert!(winter < noon && winter > 200.0, "{winter}");
    }

    #[test]
    fn load_profile_averages_to_the_annual_energy() {
        let start = t("2026-03-21T00:00:00Z");
        let wh: f64 = (0..86_400)
            .step_by(60)
            .map(|s| household_load(1, 0, 3650.0, start + s, 0.0) / 60.0)
            .sum();
        // 10 kWh/day ± noise, season and spikes.
        assert!((7_000.0..15_000.0).contains(&wh), "{wh}");
        let clouds = cloud_factor(3, start);
        assert!((0.25..=1.0).contains(&clouds));
    }
}
