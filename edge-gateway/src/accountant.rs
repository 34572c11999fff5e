//! Interval accounting: from timed counter samples to the energy of each delivery interval.
//!
//! Pure and deterministic (no I/O, no clock): the reader feeds [`Sample`]s, the accountant hands
//! back [`ClosedInterval`]s. Rules, per energy channel:
//!
//! - **Counters, not power.** A channel's energy is the difference of its cumulative counter
//!   at the interval's two boundaries. Only when a device has no counter is power integrated
//!   (trapezoid rule, mW × ms) into a virtual counter; such intervals carry `INTERPOLATED`
//!   ("estimated, not read from a counter").
//! - **Boundaries.** The value at a boundary is interpolated linearly between the last sample
//!   before and the first sample after it. The reader polls exactly at each boundary, so the
//!   two are normally a poll apart; when they are further apart than the tolerance (a missed
//!   boundary poll, a gateway restart) the interval is flagged `INTERPOLATED`.
//! - **Resets and wraps.** A counter that goes down is a wrap (when it was near the register's
//!   modulus and is now near zero: `COUNTER_WRAP`) or a reset (`COUNTER_RESET`, the counter is
//!   taken to restart from zero). A counter that jumps up by more than a plausible power allows
//!   is a meter swap (`COUNTER_RESET`, the jump is not counted); likewise a counter that goes
//!   down to a value that could not have accrued since the previous poll is a replacement meter
//!   whose reading becomes the new baseline. Either way the gateway's own
//!   register continues monotonically: it never produces negative or huge energy.
//! - **Rounding.** Registers are the gateway's continuous counter floored to whole Wh, and each
//!   delta is the difference of two such registers, so rounding never accumulates: the sum of
//!   deltas equals the register difference exactly and each delta is within 1 Wh of the
//!   metered energy.
//! - **Missing data.** A channel that has no sample after a boundary within the grace period
//!   is closed with its last value held (`DEVICE_ERROR`); the energy then shows up in the next
//!   interval, never lost. A channel without a device is reported as zero with `PARTIAL`.
//! - A clock step during an interval flags it `CLOCK_STEP`; a stale value at close, `STALE`.

use crate::sample::{Channel, Counter, DeviceValues, Sample};
use chrono::{DateTime, TimeZone, Utc};
use gridmesh_protocol::reading::{ReadingFlags, Registers};
use gridmesh_protocol::{Interval, IntervalLength, Wh};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest plausible power on any channel, mW (a counter rising faster is a meter swap).
pub const MAX_PLAUSIBLE_MW: i64 = 100_000_000;

/// What the accountant remembers at a boundary so a restarted gateway continues seamlessly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelResume {
    /// The boundary instant, Unix milliseconds.
    pub at_ms: i64,
    /// The device's raw counter (or the virtual counter) at the boundary, mWh.
    pub raw_mwh: i64,
    /// The gateway's continuous counter at the boundary, mWh.
    pub adjusted_mwh: i64,
    /// Whether the channel is integrated from power.
    pub integrated: bool,
}

/// Where to continue after a restart: the next interval to account and each channel's state
/// at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Start of the next interval to produce, Unix seconds.
    pub next_start: i64,
    /// Per channel, in [`Channel::ALL`] order.
    pub channels: [Option<ChannelResume>; 5],
}

/// One finished interval, ready to be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedInterval {
    /// The interval.
    pub interval: Interval,
    /// The gateway's registers at its end (Wh).
    pub registers: Registers,
    /// The energy in it (Wh).
    pub deltas: Registers,
    /// Battery SoC at its end, per mille.
    pub soc_permille: Option<u16>,
    /// Flags.
    pub flags: ReadingFlags,
    /// When the closing values were measured (the last sample used).
    pub measured_at: DateTime<Utc>,
    /// The state to persist with the reading so a restart resumes here.
    pub resume: Resume,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    at: i64,
    raw: i64,
    adjusted: i64,
}

#[derive(Debug, Default)]
struct ChannelAcc {
    expected: bool,
    integrated: bool,
    /// Adjusted value at the current interval's start.
    start: Option<i64>,
    last: Option<Point>,
    offset: i64,
    last_power: Option<(i64, i64)>,
    virtual_mwh: i64,
    /// Adjusted values at interval ends (Unix ms), with whether they were interpolated.
    ends: BTreeMap<i64, (i64, bool)>,
    last_seen: Option<i64>,
}

/// Accounting settings.
#[derive(Debug, Clone, Copy)]
pub struct AccountantSettings {
    /// The interval length.
    pub length: IntervalLength,
    /// Boundary samples further apart than this (ms) make the boundary "interpolated".
    pub tolerance_ms: i64,
    /// How long after a boundary (ms) to wait for every channel before holding values.
    pub grace_ms: i64,
    /// A channel whose last sample is older than this (ms) at close is stale.
    pub stale_ms: i64,
}

/// The interval accountant for one device set.
#[derive(Debug)]
pub struct Accountant {
    settings: AccountantSettings,
    channels: [ChannelAcc; 5],
    /// The interval being accumulated (None until the first boundary is seen).
    current: Option<Interval>,
    flags: BTreeMap<i64, ReadingFlags>,
    soc: Vec<(i64, u16)>,
    last_measured: i64,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn wh(adjusted_mwh: i64) -> i64 {
    adjusted_mwh.max(0).div_euclid(1000)
}

fn interpolate(a: Point, at: i64, adjusted: i64, e: i64) -> i64 {
    if at <= a.at {
        return adjusted;
    }
    let num = i128::from(adjusted - a.adjusted) * i128::from(e - a.at);
    a.adjusted + (num / i128::from(at - a.at)) as i64
}

impl Accountant {
    /// A fresh accountant expecting data on `expected` channels, resuming from `resume` if a
    /// previous run left state.
    pub fn new(
        settings: AccountantSettings,
        expected: &[Channel],
        resume: Option<&Resume>,
    ) -> Self {
        let mut acc = Accountant {
            settings,
            channels: Default::default(),
            current: None,
            flags: BTreeMap::new(),
            soc: Vec::new(),
            last_measured: 0,
        };
        for c in expected {
            acc.channels[c.index()].expected = true;
        }
        if let Some(resume) = resume
            && let Ok(interval) =
                Interval::from_unix(resume.next_start, settings.length.minutes().into())
        {
            acc.current = Some(interval);
            for (i, state) in resume.channels.iter().enumerate() {
                if let Some(s) = state {
                    let ch = &mut acc.channels[i];
                    ch.start = Some(s.adjusted_mwh);
                    ch.last = Some(Point {
                        at: s.at_ms,
                        raw: s.raw_mwh,
                        adjusted: s.adjusted_mwh,
                    });
                    ch.offset = s.adjusted_mwh - s.raw_mwh;
                    ch.integrated = s.integrated;
                    ch.virtual_mwh = if s.integrated { s.raw_mwh } else { 0 };
                }
            }
        }
        acc
    }

    /// The interval being accumulated.
    pub fn current(&self) -> Option<Interval> {
        self.current
    }

    fn flag_at(&mut self, at: i64, flag: ReadingFlags) {
        let start = Interval::containing(
            Utc.timestamp_millis_opt(at).single().unwrap_or_default(),
            self.settings.length,
        )
        .start_unix();
        self.flags.entry(start).or_default().insert(flag);
    }

    /// Flags the interval containing `at` (for example `CLOCK_STEP`).
    pub fn flag(&mut self, at: DateTime<Utc>, flag: ReadingFlags) {
        self.flag_at(ms(at), flag);
    }

    /// Feeds one device poll.
    pub fn feed(&mut self, sample: &Sample) {
        let at = ms(sample.at);
        match &sample.values {
            Ok(values) => {
                if sample.stale {
                    self.flag_at(at, ReadingFlags::STALE);
                } else {
                    self.feed_values(at, values);
                }
            }
            Err(_) => self.flag_at(at, ReadingFlags::DEVICE_ERROR),
        }
    }

    fn feed_values(&mut self, at: i64, values: &DeviceValues) {
        self.last_measured = self.last_measured.max(at);
        if let Some(soc) = values.soc_permille {
            self.soc.push((at, soc));
            if self.soc.len() > 64 {
                self.soc.drain(..32);
            }
        }
        let mut with_counter = [false; 5];
        for (channel, counter) in &values.counters {
            with_counter[channel.index()] = true;
            self.feed_counter(*channel, at, *counter, false);
        }
        for (channel, mw) in &values.power_mw {
            let i = channel.index();
            if with_counter[i] || values.counters.iter().any(|(c, _)| c == channel) {
                continue;
            }
            let ch = &mut self.channels[i];
            if !ch.integrated && ch.last.is_some() {
                // A counter channel whose counter vanished: do not mix in integration.
                continue;
            }
            ch.integrated = true;
            if let Some((t0, p0)) = ch.last_power
                && at > t0
            {
                let avg = (i128::from(p0) + i128::from(*mw)) / 2;
                ch.virtual_mwh += (avg * i128::from(at - t0) / 3_600_000) as i64;
            }
            ch.last_power = Some((at, *mw));
            let v = ch.virtual_mwh;
            self.feed_counter(
                *channel,
                at,
                Counter {
                    mwh: v,
                    modulus_mwh: None,
                },
                true,
            );
        }
    }

    fn feed_counter(&mut self, channel: Channel, at: i64, counter: Counter, integrated: bool) {
        let raw = counter.mwh.max(0);
        let mut flags = Vec::new();
        let tolerance = self.settings.tolerance_ms;
        let ch = &mut self.channels[channel.index()];
        ch.last_seen = Some(at);
        if integrated {
            flags.push(ReadingFlags::INTERPOLATED);
        }
        if let Some(last) = ch.last {
            if at < last.at {
                // Out-of-order sample (clock stepped back): ignore for energy.
                return;
            }
            if raw < last.raw {
                let wrapped = counter.modulus_mwh.is_some_and(|m| {
                    last.raw > m / 2
                        && raw < m / 2
                        && (m - last.raw + raw) <= plausible(at - last.at)
                });
                if wrapped {
                    ch.offset += counter.modulus_mwh.unwrap_or(0);
                    flags.push(ReadingFlags::COUNTER_WRAP);
                } else if raw <= plausible(at - last.at) {
                    // Reset to (near) zero: what it counts now accrued since the reset.
                    ch.offset = last.adjusted;
                    flags.push(ReadingFlags::COUNTER_RESET);
                } else {
                    // A replacement meter that starts from its own large value: its reading
                    // is a new baseline, not energy.
                    ch.offset = last.adjusted - raw;
                    flags.push(ReadingFlags::COUNTER_RESET);
                }
            } else if raw - last.raw > plausible(at - last.at) {
                ch.offset = last.adjusted - raw;
                flags.push(ReadingFlags::COUNTER_RESET);
            }
        }
        let adjusted = raw + ch.offset;
        let point = Point { at, raw, adjusted };
        let length_ms = self.settings.length.seconds() * 1000;
        match ch.last {
            Some(last) => {
                // Every boundary in (last.at, at].
                let mut e = (last.at.div_euclid(length_ms) + 1) * length_ms;
                while e <= at {
                    let value = interpolate(last, at, adjusted, e);
                    let interpolated = at - last.at > tolerance;
                    ch.ends.insert(e, (value, interpolated));
                    e += length_ms;
                }
            }
            None => {
                if at % length_ms == 0 {
                    ch.ends.insert(at, (adjusted, false));
                }
            }
        }
        ch.last = Some(point);
        for f in flags {
            self.flag_at(at, f);
        }
    }

    /// Closes every interval that can be closed at `now`; returns them in order.
    pub fn close_ready(&mut self, now: DateTime<Utc>) -> Vec<ClosedInterval> {
        let now = ms(now);
        let length_ms = self.settings.length.seconds() * 1000;
        let mut out = Vec::new();
        loop {
            let current = match self.current {
                Some(c) => c,
                None => {
                    // Start at the earliest boundary any channel has seen.
                    let Some(first) = self
                        .channels
                        .iter()
                        .filter_map(|c| c.ends.keys().next().copied())
                        .min()
                    else {
                        return out;
                    };
                    // Wait (up to the grace period) until every channel with data has seen
                    // that boundary, so the first interval starts complete.
                    let all_seen = self
                        .channels
                        .iter()
                        .filter(|c| c.expected && c.last.is_some())
                        .all(|c| c.ends.contains_key(&first));
                    if !all_seen && now < first + self.settings.grace_ms {
                        return out;
                    }
                    for ch in &mut self.channels {
                        if let Some((v, _)) = ch.ends.get(&first).copied() {
                            ch.start = Some(v);
                        }
                        ch.ends.retain(|k, _| *k > first);
                    }
                    let interval =
                        Interval::from_unix(first / 1000, self.settings.length.minutes().into())
                            .expect("boundaries are aligned");
                    self.current = Some(interval);
                    continue;
                }
            };
            let end = current.end().timestamp_millis();
            if now < end {
                return out;
            }
            let all_known = self
                .channels
                .iter()
                .filter(|c| c.expected && c.last.is_some())
                .all(|c| c.ends.contains_key(&end));
            if !all_known && now < end + self.settings.grace_ms {
                return out;
            }
            out.push(self.close(current, end));
            self.current = Some(current.next());
            debug_assert_eq!(current.next().start().timestamp_millis(), end);
            let _ = length_ms;
        }
    }

    fn close(&mut self, interval: Interval, end: i64) -> ClosedInterval {
        let mut flags = self
            .flags
            .remove(&interval.start_unix())
            .unwrap_or_default();
        self.flags.retain(|k, _| *k > interval.start_unix());
        let mut registers = [0i64; 5];
        let mut deltas = [0i64; 5];
        let mut resume = [None; 5];
        let mut measured_at = end;
        for (i, ch) in self.channels.iter_mut().enumerate() {
            if !ch.expected && ch.last.is_none() {
                flags.insert(ReadingFlags::PARTIAL);
                continue;
            }
            let Some(last) = ch.last else {
                flags.insert(ReadingFlags::DEVICE_ERROR);
                flags.insert(ReadingFlags::PARTIAL);
                continue;
            };
            let (end_value, interpolated) = match ch.ends.get(&end).copied() {
                Some(v) => v,
                None => {
                    // Hold the last value at the boundary; the energy moves to the next interval.
                    flags.insert(ReadingFlags::DEVICE_ERROR);
                    ch.last = Some(Point {
                        at: end.max(last.at),
                        ..last
                    });
                    (last.adjusted, false)
                }
            };
            if interpolated || ch.integrated {
                flags.insert(ReadingFlags::INTERPOLATED);
            }
            if ch
                .last_seen
                .is_none_or(|seen| end - seen > self.settings.stale_ms)
            {
                flags.insert(ReadingFlags::STALE);
            }
            if let Some(seen) = ch.last_seen {
                measured_at = measured_at.max(seen.min(end + self.settings.grace_ms));
            }
            match ch.start {
                Some(start) => {
                    registers[i] = wh(end_value);
                    deltas[i] = (wh(end_value) - wh(start)).max(0);
                }
                None => {
                    registers[i] = wh(end_value);
                    flags.insert(ReadingFlags::DEVICE_ERROR);
                }
            }
            ch.start = Some(end_value);
            ch.ends.retain(|k, _| *k > end);
            let raw_at_end = end_value - ch.offset;
            resume[i] = Some(ChannelResume {
                at_ms: end,
                raw_mwh: if ch.integrated { end_value } else { raw_at_end },
                adjusted_mwh: end_value,
                integrated: ch.integrated,
            });
        }
        let soc_permille = self
            .soc
            .iter()
            .rev()
            .find(|(at, _)| *at <= end)
            .or_else(|| self.soc.iter().find(|(at, _)| *at > end))
            .map(|(_, v)| *v);
        let regs = |a: [i64; 5]| Registers {
            grid_import: Wh(a[0]),
            grid_export: Wh(a[1]),
            pv: Wh(a[2]),
            battery_charge: Wh(a[3]),
            battery_discharge: Wh(a[4]),
        };
        ClosedInterval {
            interval,
            registers: regs(registers),
            deltas: regs(deltas),
            soc_permille,
            flags,
            measured_at: Utc
                .timestamp_millis_opt(measured_at.min(self.last_measured.max(end)))
                .single()
                .unwrap_or_default(),
            resume: Resume {
                next_start: interval.next().start_unix(),
                channels: resume,
            },
        }
    }
}

fn plausible(dt_ms: i64) -> i64 {
    // Energy at MAX_PLAUSIBLE_MW over dt, plus 10 Wh of slack, in mWh.
    (i128::from(MAX_PLAUSIBLE_MW) * i128::from(dt_ms.max(0)) / 3_600_000) as i64 + 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_781_999_100_000; // some instant; boundaries are multiples of 300 000 ms
    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }
    fn boundary(n: i64) -> i64 {
        (T0.div_euclid(300_000) + n) * 300_000
    }
    fn settings() -> AccountantSettings {
        AccountantSettings {
            length: IntervalLength::Min5,
            tolerance_ms: 5_000,
            grace_ms: 30_000,
            stale_ms: 60_000,
        }
    }
    fn pv(at_ms: i64, mwh: i64) -> Sample {
        Sample {
            at: at(at_ms),
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

    /// Feeds a 1 W·h/s-ish ramp: counter = 1000 mWh per second (3.6 kW), one sample per second.
    fn run(
        acc: &mut Accountant,
        from_s: i64,
        to_s: i64,
        value: impl Fn(i64) -> i64,
    ) -> Vec<ClosedInterval> {
        let mut out = Vec::new();
        for s in from_s..=to_s {
            let t = boundary(0) + s * 1000;
            acc.feed(&pv(t, value(s)));
            out.extend(acc.close_ready(at(t)));
        }
        out
    }

    #[test]
    fn counter_differences_per_interval() {
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        let closed = run(&mut acc, -10, 900, |s| 5_000_000 + (s + 10) * 1000);
        // Boundaries at 0 (start), 300, 600, 900 s → three full intervals.
        assert_eq!(closed.len(), 3);
        for c in &closed {
            assert_eq!(c.deltas.pv, Wh(300), "{c:?}");
            assert!(!c.flags.contains(ReadingFlags::INTERPOLATED));
            assert!(c.flags.contains(ReadingFlags::PARTIAL));
        }
        assert_eq!(closed[0].registers.pv, Wh(5_000 + 310));
        assert_eq!(closed[0].interval.start().timestamp_millis(), boundary(0));
    }

    #[test]
    fn sub_wh_rounding_does_not_accumulate() {
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        // 1.7 Wh per second: 510 Wh per interval exactly, but counters in fractional Wh.
        let closed = run(&mut acc, 0, 1500, |s| 123 + s * 1700);
        let total: i64 = closed.iter().map(|c| c.deltas.pv.0).sum();
        assert_eq!(total, (123 + 1500 * 1700) / 1000); // 123 mWh floors to 0 Wh
        assert!(closed.iter().all(|c| (c.deltas.pv.0 - 510).abs() <= 1));
    }

    #[test]
    fn reset_and_wrap_are_flagged_never_negative_or_huge() {
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        // Reset to 0 at s = 450.
        let closed = run(&mut acc, 0, 900, |s| {
            if s < 450 {
                9_000_000 + s * 1000
            } else {
                (s - 450) * 1000
            }
        });
        assert_eq!(closed.len(), 3);
        assert_eq!(closed[1].deltas.pv, Wh(299)); // one poll step lost across the reset
        assert!(closed[1].flags.contains(ReadingFlags::COUNTER_RESET));
        assert!(!closed[0].flags.contains(ReadingFlags::COUNTER_RESET));
        assert!(closed[1].registers.pv >= closed[0].registers.pv);
        // Wrap of an acc32 counter.
        let m = 4_294_967_296_000i64;
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        let closed = run(&mut acc, 0, 600, |s| (m - 100_000 + s * 1000) % m);
        assert_eq!(closed[0].deltas.pv, Wh(300));
        assert!(closed[0].flags.contains(ReadingFlags::COUNTER_WRAP));
        assert_eq!(closed[1].deltas.pv, Wh(300));
        // A meter swapped for one reading a huge value: the jump is not counted.
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        let closed = run(&mut acc, 0, 600, |s| {
            if s < 100 {
                s * 1000
            } else {
                900_000_000_000 + s * 1000
            }
        });
        assert_eq!(closed[0].deltas.pv, Wh(299));
        assert!(closed[0].flags.contains(ReadingFlags::COUNTER_RESET));
        // A meter swapped for one that starts lower, but far from zero (a used replacement):
        // its first reading is a new baseline, never counted as energy.
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        let closed = run(&mut acc, 0, 600, |s| {
            if s < 100 {
                900_000_000_000 + s * 1000
            } else {
                500_000_000_000 + s * 1000
            }
        });
        assert_eq!(closed[0].deltas.pv, Wh(299));
        assert!(closed[0].flags.contains(ReadingFlags::COUNTER_RESET));
        assert_eq!(closed[1].deltas.pv, Wh(300));
    }

    #[test]
    fn missed_boundary_is_interpolated_and_flagged() {
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        let mut closed = run(&mut acc, 0, 280, |s| s * 1000);
        // Nothing from 281 s to 620 s (two boundaries missed), then data again.
        closed.extend(run(&mut acc, 620, 900, |s| s * 1000));
        assert_eq!(closed.len(), 3);
        assert!(closed.iter().all(|c| c.deltas.pv == Wh(300)), "{closed:?}");
        assert!(closed[0].flags.contains(ReadingFlags::INTERPOLATED));
        assert!(closed[1].flags.contains(ReadingFlags::INTERPOLATED));
        assert!(!closed[2].flags.contains(ReadingFlags::INTERPOLATED));
    }

    #[test]
    fn restart_resumes_without_gap_or_duplicate() {
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        let first = run(&mut acc, 0, 400, |s| s * 1000);
        assert_eq!(first.len(), 1);
        let resume = first[0].resume.clone();
        // "Restart": a new accountant from the resume state; down from 400 s to 700 s.
        let mut acc = Accountant::new(settings(), &[Channel::Pv], Some(&resume));
        let second = run(&mut acc, 700, 900, |s| s * 1000);
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].interval, first[0].interval.next());
        assert_eq!(second[0].deltas.pv, Wh(300));
        assert!(second[0].flags.contains(ReadingFlags::INTERPOLATED));
        assert_eq!(second[1].deltas.pv, Wh(300));
    }

    #[test]
    fn device_down_at_boundary_holds_value_after_grace() {
        let mut acc = Accountant::new(settings(), &[Channel::Pv, Channel::GridImport], None);
        let grid = |t: i64, mwh: i64| Sample {
            at: at(t),
            device: "meter".into(),
            values: Ok(DeviceValues {
                counters: vec![(
                    Channel::GridImport,
                    Counter {
                        mwh,
                        modulus_mwh: None,
                    },
                )],
                ..Default::default()
            }),
            stale: false,
        };
        let mut closed = Vec::new();
        for s in -5..=700i64 {
            let t = boundary(0) + s * 1000;
            acc.feed(&pv(t, s.max(0) * 1000));
            if s < 250 {
                acc.feed(&grid(t, 1_000_000 + s * 500));
            } else {
                acc.feed(&Sample {
                    at: at(t),
                    device: "meter".into(),
                    values: Err("timeout".into()),
                    stale: false,
                });
            }
            closed.extend(acc.close_ready(at(t)));
        }
        // Interval 0 closed only after the grace period, with the grid value held.
        assert_eq!(closed.len(), 2);
        assert!(closed[0].flags.contains(ReadingFlags::DEVICE_ERROR));
        assert_eq!(closed[0].deltas.grid_import, Wh(124)); // last value at 249 s held
        assert_eq!(closed[0].deltas.pv, Wh(300));
    }

    #[test]
    fn power_integration_when_no_counter() {
        let mut acc = Accountant::new(settings(), &[Channel::BatteryDischarge], None);
        let mut closed = Vec::new();
        for s in -2..=600i64 {
            let t = boundary(0) + s * 1000;
            let mut v = DeviceValues::default();
            v.split_power(1_200_000, Channel::BatteryDischarge, Channel::BatteryCharge);
            v.soc_permille = Some(500);
            acc.feed(&Sample {
                at: at(t),
                device: "bat".into(),
                values: Ok(v),
                stale: false,
            });
            closed.extend(acc.close_ready(at(t)));
        }
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].deltas.battery_discharge, Wh(100)); // 1.2 kW × 5 min
        assert_eq!(closed[0].deltas.battery_charge, Wh(0));
        assert!(closed[0].flags.contains(ReadingFlags::INTERPOLATED));
        assert_eq!(closed[0].soc_permille, Some(500));
    }

    proptest::proptest! {
        /// Whatever the polling pattern: intervals come out contiguous, energies are never
        /// negative, deltas telescope exactly to the register difference, and without resets
        /// the total is within 1 Wh of the counter's increase.
        #[test]
        fn accounting_invariants(
            steps in proptest::collection::vec((100i64..400_000, 0i64..12_000), 5..300),
            start in 0i64..10_000_000,
        ) {
            let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
            let mut t = boundary(0) - 1_000;
            let mut counter = start;
            let first = counter;
            let mut closed = Vec::new();
            for (gap_ms, power_w) in &steps {
                t += gap_ms;
                counter += power_w * gap_ms / 3_600;
                acc.feed(&pv(t, counter));
                closed.extend(acc.close_ready(at(t)));
            }
            for pair in closed.windows(2) {
                proptest::prop_assert_eq!(pair[1].interval, pair[0].interval.next());
                proptest::prop_assert_eq!(
                    pair[1].registers.pv.0 - pair[0].registers.pv.0,
                    pair[1].deltas.pv.0
                );
            }
            for c in &closed {
                proptest::prop_assert!(c.deltas.pv.0 >= 0);
                proptest::prop_assert!(!c.flags.contains(ReadingFlags::COUNTER_RESET));
            }
            if let (Some(a), Some(b)) = (closed.first(), closed.last()) {
                let total: i64 = closed.iter().map(|c| c.deltas.pv.0).sum();
                let span = b.registers.pv.0 - a.registers.pv.0 + a.deltas.pv.0;
                proptest::prop_assert_eq!(total, span);
                proptest::prop_assert!(b.registers.pv.0 <= counter / 1000);
                proptest::prop_assert!(a.registers.pv.0 - a.deltas.pv.0 >= first / 1000);
            }
        }
    }

    #[test]
    fn clock_step_flag() {
        let mut acc = Accountant::new(settings(), &[Channel::Pv], None);
        acc.flag(at(boundary(0) + 10_000), ReadingFlags::CLOCK_STEP);
        let closed = run(&mut acc, -1, 600, |s| s * 1000 + 1000);
        assert!(closed[0].flags.contains(ReadingFlags::CLOCK_STEP));
        assert!(!closed[1].flags.contains(ReadingFlags::CLOCK_STEP));
    }
}
