//! What a device poll yields: cumulative counters and powers per energy channel, and SoC.
//!
//! Quantities are integers at the edge: counters in milliwatt-hours (mWh) and powers in
//! milliwatts (mW), converted from the device's scaled or float registers by
//! [`scale_to_milli`] / [`float_to_milli`] (round half away from zero).

use chrono::{DateTime, Utc};

/// The five energy channels of a reading, in the protocol's register order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Grid import.
    GridImport,
    /// Grid export.
    GridExport,
    /// PV production.
    Pv,
    /// Battery charge.
    BatteryCharge,
    /// Battery discharge.
    BatteryDischarge,
}

impl Channel {
    /// All channels in register order.
    pub const ALL: [Channel; 5] = [
        Channel::GridImport,
        Channel::GridExport,
        Channel::Pv,
        Channel::BatteryCharge,
        Channel::BatteryDischarge,
    ];

    /// Index in [`Channel::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short name for logs, metrics and storage.
    pub fn name(self) -> &'static str {
        match self {
            Channel::GridImport => "grid_import",
            Channel::GridExport => "grid_export",
            Channel::Pv => "pv",
            Channel::BatteryCharge => "battery_charge",
            Channel::BatteryDischarge => "battery_discharge",
        }
    }
}

/// A cumulative energy counter as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The value in mWh.
    pub mwh: i64,
    /// The value at which the raw register wraps to zero, in mWh (acc32: 2^32 × scale), if
    /// known.
    pub modulus_mwh: Option<i64>,
}

/// One successful poll of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceValues {
    /// Counters found.
    pub counters: Vec<(Channel, Counter)>,
    /// Powers found, in mW, per channel (always ≥ 0: a signed meter power is split into the
    /// import and export channels).
    pub power_mw: Vec<(Channel, i64)>,
    /// Battery state of charge, per mille.
    pub soc_permille: Option<u16>,
    /// The inverter's active power limit (SunSpec model 123), when it offers one.
    pub pv_limit: Option<PvLimit>,
}

/// An inverter's active power limit as read from SunSpec model 123 (immediate controls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvLimit {
    /// Whether the limit is enabled (`WMaxLim_Ena` = 1).
    pub enabled: bool,
    /// The limit in thousandths of a percent of the rated power (`WMaxLimPct` scaled by
    /// `WMaxLimPct_SF`), `None` when not implemented.
    pub pct_milli: Option<i64>,
    /// `WMaxLimPct_SF`, needed to write a new limit (0 when not implemented).
    pub sf: i16,
    /// `WMaxLimPct_RvrtTms`, seconds.
    pub revert_s: Option<u16>,
}

impl DeviceValues {
    /// Adds a signed power: positive goes to `positive`, negative to `negative`.
    pub fn split_power(&mut self, mw: i64, positive: Channel, negative: Channel) {
        self.power_mw.push((positive, mw.max(0)));
        self.power_mw.push((negative, (-mw).max(0)));
    }
}

/// A device poll with its time, as the accountant consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When it was read (gateway clock).
    pub at: DateTime<Utc>,
    /// Which device.
    pub device: String,
    /// What was read, or why not.
    pub values: Result<DeviceValues, String>,
    /// Whether the value is stale (MQTT devices that stopped publishing).
    pub stale: bool,
}

/// `value × 10^(sf + 3)`, rounded half away from zero: a scaled register in milli-units.
pub fn scale_to_milli(value: i64, sf: i16) -> i64 {
    let exp = i32::from(sf) + 3;
    if exp >= 0 {
        value.saturating_mul(10i64.saturating_pow(exp.min(18) as u32))
    } else {
        let div = 10i64.pow((-exp).min(18) as u32);
        let q = value / div;
        let r = value % div;
        if r.abs() * 2 >= div {
            q + value.signum()
        } else {
            q
        }
    }
}

/// A float (device float registers, MQTT JSON numbers) times `factor`, rounded half away from
/// zero to an integer. Non-finite values give `None`.
pub fn float_to_milli(value: f64, factor: f64) -> Option<i64> {
    let scaled = value * factor;
    (scaled.is_finite() && scaled.abs() < 9.0e18).then(|| scaled.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_rounds_half_away_from_zero() {
        assert_eq!(scale_to_milli(1234, 0), 1_234_000);
        assert_eq!(scale_to_milli(1234, -2), 12_340);
        assert_eq!(scale_to_milli(12345, -4), 1235);
        assert_eq!(scale_to_milli(-12345, -4), -1235);
        assert_eq!(scale_to_milli(12344, -4), 1234);
        assert_eq!(scale_to_milli(5, 3), 5_000_000);
        assert_eq!(float_to_milli(1.2345675, 1e6), Some(1_234_568));
        assert_eq!(float_to_milli(f64::NAN, 1e3), None);
    }
}
