//! Faults that can be injected into a device, and what each one does.
//!
//! | fault | kind | effect |
//! |---|---|---|
//! | `drop` | lasting | every request to the device's unit makes the server close the TCP connection without answering (the other units on the port are unaffected until a request to this unit arrives on the same connection) |
//! | `exception` | lasting | every request to the unit is answered with the Modbus exception `code` (for example 4 = server device failure, 6 = busy) |
//! | `late` | lasting | every answer from the unit is sent `millis` real milliseconds late (beyond a client timeout) |
//! | `freeze` | lasting | the device's registers keep the values they had when the fault started; the physics (and ground truth) run on |
//! | `counter_reset` | one-shot | the device's energy counters restart from 0 (meter replaced); ground truth keeps the true energy |
//! | `clock_jump` | one-shot | the home's device clock jumps by `seconds`: forward, the home's physics integrates the skipped time at once (counters leap); backward, the physics pauses until the shared clock catches up. Applies to the whole home and shows in MQTT timestamps |
//!
//! A lasting fault stays until cleared (`Simulator::clear` or `DELETE /faults/{home}/{device}`)
//! or until its scheduled duration ends. Injecting a lasting fault replaces the device's
//! previous lasting fault.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One of the three devices of a home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// The PV inverter (Modbus unit 1, models 1 and 103).
    Inverter,
    /// The battery (Modbus unit 2, models 1, 124, 802 and 701).
    Battery,
    /// The bidirectional grid meter (Modbus unit 3, models 1 and 203).
    Meter,
}

impl DeviceKind {
    /// All three, in unit order.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Inverter, DeviceKind::Battery, DeviceKind::Meter];

    /// The Modbus unit id the device answers on.
    pub const fn unit(self) -> u8 {
        match self {
            DeviceKind::Inverter => 1,
            DeviceKind::Battery => 2,
            DeviceKind::Meter => 3,
        }
    }

    /// Index 0..3 for per-device arrays.
    pub const fn index(self) -> usize {
        self.unit() as usize - 1
    }

    /// The lower-case name used in JSON, TOML and URLs.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::Inverter => "inverter",
            DeviceKind::Battery => "battery",
            DeviceKind::Meter => "meter",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault (see the module docs for each one's behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Close the connection instead of answering.
    Drop,
    /// Answer with this Modbus exception code.
    Exception {
        /// The exception code (1..=255; 4 = server device failure).
        code: u8,
    },
    /// Answer this many real milliseconds late.
    Late {
        /// The delay.
        millis: u64,
    },
    /// Keep serving the values of the moment the fault started.
    Freeze,
    /// Restart the energy counters from zero (one-shot).
    CounterReset,
    /// Jump the home's device clock by this many simulated seconds (one-shot).
    ClockJump {
        /// Seconds, positive = forward.
        seconds: i64,
    },
}

impl Fault {
    /// Whether the fault lasts until cleared (as opposed to a one-shot action).
    pub fn is_lasting(&self) -> bool {
        !matches!(self, Fault::CounterReset | Fault::ClockJump { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let f: Fault = serde_json::from_str(r#"{"kind":"exception","code":4}"#).unwrap();
        assert_eq!(f, Fault::Exception { code: 4 });
        assert_eq!(
            serde_json::to_string(&Fault::Drop).unwrap(),
            r#"{"kind":"drop"}"#
        );
        assert!(!Fault::CounterReset.is_lasting());
        assert_eq!(DeviceKind::parse("meter"), Some(DeviceKind::Meter));
        assert_eq!(DeviceKind::Meter.unit(), 3);
    }
}
