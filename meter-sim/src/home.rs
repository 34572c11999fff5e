//! One home's physics: PV, load, battery and grid meter, stepped in fixed simulated steps.
//!
//! Per step of `dt` seconds at time `t` (powers taken at `t`, held for the step):
//!
//! - `pv_available` = kWp × plane-of-array irradiance / 1000 × 0.86 (losses) × cloud factor,
//!   clipped to the inverter's AC rating; `pv` = `pv_available`, or min(`pv_available`,
//!   WMaxLimPct × rating) while a SunSpec model 123 power limit is enabled and not reverted
//!   ([`PvControl`]); the difference is counted as curtailed energy;
//! - `load` from the household profile;
//! - `battery` (AC side, + = discharge) from the controller in [`BatteryControl`], limited by the
//!   power rating, the state of charge (reserve .. 100 %) and split efficiency
//!   √(round trip) on each way;
//! - `grid = load − pv − battery` (+ = import); in self-consumption the battery aims for a
//!   small import (`grid_setpoint_w`, 30 W by default), as real controllers do.
//!
//! Energy is integrated in f64 Wh accumulators; the device counters are their floors, so they
//! only grow, and `load = pv + import − export + discharge − charge` holds at every step to
//! floating-point precision. The floors at every 5-minute boundary (and the battery's stored
//! energy there) are kept as ground truth.

use crate::faults::{DeviceKind, Fault};
use crate::scenario::HomeParams;
use crate::weather;
use serde::Serialize;
use std::collections::VecDeque;

/// Seconds between ground-truth snapshots (the finest interval length).
pub const SNAPSHOT_SECONDS: i64 = 300;

/// How many cumulative energies the ground truth keeps per snapshot: the five device counters
/// (see [`Energies::floors`]) then available and curtailed PV.
pub const TRUTH_COUNTERS: usize = 7;

/// The cumulative energies of a home in Wh (f64, exact integration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Energies {
    /// Grid import.
    pub grid_import: f64,
    /// Grid export.
    pub grid_export: f64,
    /// PV production.
    pub pv: f64,
    /// Battery charge (AC side).
    pub battery_charge: f64,
    /// Battery discharge (AC side).
    pub battery_discharge: f64,
    /// Household consumption (not a device counter; for conservation checks).
    pub load: f64,
    /// PV the sun offered (before any power limit; not a device counter).
    pub pv_available: f64,
    /// PV withheld by the model 123 power limit: `pv_available − pv` (not a device counter).
    pub pv_curtailed: f64,
}

impl Energies {
    /// The device counters: floors of the five device energies, in the order
    /// import, export, pv, charge, discharge.
    pub fn floors(&self) -> [u64; 5] {
        [
            self.grid_import.floor() as u64,
            self.grid_export.floor() as u64,
            self.pv.floor() as u64,
            self.battery_charge.floor() as u64,
            self.battery_discharge.floor() as u64,
        ]
    }

    /// What the ground truth keeps: the five device counters of [`Energies::floors`], then the
    /// floors of available and curtailed PV.
    pub fn truth_floors(&self) -> [u64; TRUTH_COUNTERS] {
        let f = self.floors();
        [
            f[0],
            f[1],
            f[2],
            f[3],
            f[4],
            self.pv_available.floor() as u64,
            self.pv_curtailed.floor() as u64,
        ]
    }
}

/// The inverter's SunSpec model 123 "Immediate Controls" power limit, as written over Modbus.
///
/// While `enabled` = 1 and not reverted, PV output is at most `WMaxLimPct` × the inverter's
/// rated W. Time windows and ramps (`WinTms`, `RmpTms`) are stored and shown but not simulated:
/// a limit acts at the next physics step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PvControl {
    /// WMaxLimPct as a register value: tenths of a percent of the rated W (WMaxLimPct_SF = −1).
    pub limit_tenths_pct: u16,
    /// WMaxLimPct_WinTms, seconds (stored only).
    pub window_seconds: u16,
    /// WMaxLimPct_RvrtTms: seconds after the last write of WMaxLimPct or WMaxLim_Ena at which
    /// the limit is dropped (0 = never).
    pub revert_seconds: u16,
    /// WMaxLimPct_RmpTms, seconds (stored only).
    pub ramp_seconds: u16,
    /// WMaxLim_Ena: 0 disabled, 1 enabled.
    pub enabled: u16,
    /// Device-clock Unix time of the last accepted write of WMaxLimPct or WMaxLim_Ena.
    pub last_write: i64,
}

impl PvControl {
    /// The state after power-up: 100 %, disabled, no revert timer.
    pub fn new(time: i64) -> Self {
        PvControl {
            limit_tenths_pct: 1000,
            window_seconds: 0,
            revert_seconds: 0,
            ramp_seconds: 0,
            enabled: 0,
            last_write: time,
        }
    }

    /// Whether the revert timer has run out at device time `t`.
    pub fn reverted(&self, t: i64) -> bool {
        self.revert_seconds > 0 && t - self.last_write >= self.revert_seconds as i64
    }

    /// Whether the limit is in force at device time `t`: enabled and not reverted.
    pub fn active(&self, t: i64) -> bool {
        self.enabled == 1 && !self.reverted(t)
    }

    /// The limit in percent of the rated W.
    pub fn limit_pct(&self) -> f64 {
        self.limit_tenths_pct as f64 / 10.0
    }
}

/// One home's ground truth over an interval (see [`Home::truth_between`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TruthSpan {
    /// Counter increases in Wh: import, export, pv, charge, discharge, pv available,
    /// pv curtailed.
    pub counters: [u64; TRUTH_COUNTERS],
    /// Energy stored in the battery (DC side) at the start, Wh.
    pub stored_start_wh: f64,
    /// Energy stored in the battery (DC side) at the end, Wh.
    pub stored_end_wh: f64,
    /// The most AC-side energy the battery could have absorbed over the interval from its
    /// state at the start: min(rated W × duration, room up to the upper SoC limit ÷ √η), Wh.
    pub headroom_wh: f64,
}

/// A ground-truth snapshot at a 5-minute boundary.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    time: i64,
    counters: [u64; TRUTH_COUNTERS],
    stored_wh: f64,
    room_wh: f64,
}

/// Battery set-points written over Modbus (models 124 and 802).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatteryControl {
    /// 124 StorCtl_Mod: bit 0 = limit charging to InWRte, bit 1 = limit discharging to OutWRte.
    pub stor_ctl_mod: u16,
    /// 124 WChaMax in W (the reference for InWRte/OutWRte).
    pub w_cha_max: u16,
    /// 124 InWRte, percent of WChaMax (negative = forced discharge at that rate).
    pub in_w_rte: i16,
    /// 124 OutWRte, percent of WChaMax (negative = forced charge at that rate).
    pub out_w_rte: i16,
    /// 124 InOutWRte_RvrtTms: seconds after the last write at which the rates revert (0 = never).
    pub revert_seconds: u16,
    /// 124 ChaGriSet: 0 = PV only, 1 = grid charging allowed (needed for forced charge).
    pub cha_gri_set: u16,
    /// 124 MinRsvPct / 802 SoCRsvMin, percent.
    pub reserve_pct: f64,
    /// 802 SocRsvMax, percent.
    pub max_soc_pct: f64,
    /// 802 SetOp: 1 = connect, 2 = disconnect (holds at 0 W).
    pub set_op: u16,
    /// 802 SetInvState.
    pub set_inv_state: u16,
    /// Simulated Unix time of the last control write.
    pub last_write: i64,
}

/// What the battery is doing, as in SunSpec ChaSt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeState {
    /// 1.
    Off,
    /// 2.
    Empty,
    /// 3.
    Discharging,
    /// 4.
    Charging,
    /// 5.
    Full,
    /// 6.
    Holding,
}

impl ChargeState {
    /// The SunSpec enum value.
    pub fn code(self) -> u16 {
        match self {
            ChargeState::Off => 1,
            ChargeState::Empty => 2,
            ChargeState::Discharging => 3,
            ChargeState::Charging => 4,
            ChargeState::Full => 5,
            ChargeState::Holding => 6,
        }
    }
}

/// Instantaneous powers in W.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Powers {
    /// PV production (≥ 0), after any power limit.
    pub pv_w: f64,
    /// PV the sun offers (≥ 0, ≥ `pv_w`): production without a power limit.
    pub pv_available_w: f64,
    /// Household load (≥ 0).
    pub load_w: f64,
    /// Battery AC power, + = discharge.
    pub battery_w: f64,
    /// Grid power, + = import.
    pub grid_w: f64,
}

/// A lasting fault and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ActiveFault {
    /// The fault.
    pub fault: Fault,
    /// Simulated Unix time at which it clears itself, if scheduled.
    pub until: Option<i64>,
}

/// Per-device fault state.
#[derive(Debug, Clone, Default)]
pub struct DeviceFaults {
    /// The lasting fault, if any.
    pub active: Option<ActiveFault>,
    /// Values frozen by a `freeze` fault.
    pub frozen: Option<DeviceValues>,
    /// Counter offsets from `counter_reset` faults (subtracted from the registers).
    pub offsets: [u64; 5],
    /// How many times the counters were reset.
    pub resets: u32,
}

/// Everything a device's registers show, captured at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeviceValues {
    /// Simulated (device-clock) Unix time.
    pub time: i64,
    /// Powers.
    pub powers: Powers,
    /// Register counters after reset offsets: import, export, pv, charge, discharge (Wh).
    pub counters: [u64; 5],
    /// Battery state of charge, percent.
    pub soc_pct: f64,
    /// Battery charge state.
    pub charge_state: ChargeState,
    /// Battery controls.
    pub control: BatteryControl,
    /// Inverter power limit (model 123).
    pub pv_control: PvControl,
    /// Heartbeat (802 Hb): simulated seconds modulo 65536.
    pub heartbeat: u16,
    /// Full equivalent cycles.
    pub cycles: u32,
}

/// One simulated home.
#[derive(Debug, Clone)]
pub struct Home {
    /// Its parameters.
    pub params: HomeParams,
    seed: u64,
    /// Physics time (Unix seconds, device clock).
    pub time: i64,
    /// Device clock offset from the shared clock, seconds (clock-jump faults).
    pub clock_offset: i64,
    /// Powers of the last step.
    pub powers: Powers,
    /// Accumulated energies.
    pub energy: Energies,
    /// Stored battery energy in Wh (DC side).
    pub stored_wh: f64,
    /// Initial stored energy (for conservation checks).
    pub initial_stored_wh: f64,
    /// Battery controls.
    pub control: BatteryControl,
    /// Inverter power limit (model 123).
    pub pv_control: PvControl,
    /// Fault state per device (index = [`DeviceKind::index`]).
    pub faults: [DeviceFaults; 3],
    /// What the counters showed when the simulation started (devices are not new), in the
    /// order import, export, pv, charge, discharge. Never 0, which SunSpec reads as "not
    /// implemented" for acc32.
    pub base: [u64; 5],
    truth: VecDeque<Snapshot>,
    truth_capacity: usize,
}

impl Home {
    /// A home whose physics starts at `time` (Unix seconds).
    pub fn new(params: HomeParams, seed: u64, time: i64, history_days: u32) -> Self {
        let capacity_wh = params.battery_kwh * 1000.0;
        let params_index = params.index as u64;
        let stored = capacity_wh * params.initial_soc_pct / 100.0;
        let start_counters = params.counters_wh;
        let control = BatteryControl {
            stor_ctl_mod: 0,
            w_cha_max: params.battery_w.min(u16::MAX as u32) as u16,
            in_w_rte: 100,
            out_w_rte: 100,
            revert_seconds: 0,
            cha_gri_set: 1,
            reserve_pct: params.reserve_pct,
            max_soc_pct: 100.0,
            set_op: 1,
            set_inv_state: 3,
            last_write: time,
        };
        let mut home = Home {
            params,
            seed,
            time,
            clock_offset: 0,
            powers: Powers::default(),
            energy: Energies::default(),
            stored_wh: stored,
            initial_stored_wh: stored,
            control,
            pv_control: PvControl::new(time),
            faults: Default::default(),
            base: match start_counters {
                Some(counters) => counters.map(|wh| wh.max(1)),
                None => std::array::from_fn(|i| {
                    let key = (params_index << 4) | i as u64;
                    1_000 + (crate::scenario::unit_hash(seed ^ 0xBA5E, key) * 5_000_000.0) as u64
                }),
            },
            truth: VecDeque::new(),
            truth_capacity: (history_days as usize * 86_400 / SNAPSHOT_SECONDS as usize) + 1,
        };
        home.powers = home.powers_at(time, 1.0);
        if time.rem_euclid(SNAPSHOT_SECONDS) == 0 {
            home.truth.push_back(home.snapshot());
        }
        home
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            time: self.time,
            counters: self.energy.truth_floors(),
            stored_wh: self.stored_wh,
            room_wh: if self.params.has_battery() {
                (self.capacity_wh() * self.control.max_soc_pct.clamp(0.0, 100.0) / 100.0
                    - self.stored_wh)
                    .max(0.0)
            } else {
                0.0
            },
        }
    }

    fn capacity_wh(&self) -> f64 {
        self.params.battery_kwh * 1000.0
    }

    /// State of charge in percent.
    pub fn soc_pct(&self) -> f64 {
        if self.params.has_battery() {
            100.0 * self.stored_wh / self.capacity_wh()
        } else {
            0.0
        }
    }

    fn efficiency(&self) -> f64 {
        self.params.round_trip_efficiency.sqrt()
    }

    /// The powers at `t` for a step of `dt` seconds (the battery respects its energy limits
    /// over the step).
    fn powers_at(&self, t: i64, dt: f64) -> Powers {
        let p = &self.params;
        let pv_available_w = if p.has_pv() {
            let poa = weather::clear_sky_poa(t, p.latitude, p.longitude, p.tilt_deg, p.azimuth_deg);
            (p.pv_kwp * poa * 0.86 * weather::cloud_factor(self.seed, t)).min(p.inverter_w as f64)
        } else {
            0.0
        };
        let pv_w = if self.pv_control.active(t) {
            pv_available_w.min(self.pv_control.limit_pct() / 100.0 * p.inverter_w as f64)
        } else {
            pv_available_w
        };
        let load_w =
            weather::household_load(self.seed, p.index as u64, p.annual_load_kwh, t, p.longitude);
        let battery_w = if p.has_battery() {
            self.battery_power(t, pv_w, load_w, dt)
        } else {
            0.0
        };
        Powers {
            pv_w,
            pv_available_w,
            load_w,
            battery_w,
            grid_w: load_w - pv_w - battery_w,
        }
    }

    fn battery_power(&self, t: i64, pv_w: f64, load_w: f64, dt: f64) -> f64 {
        let c = &self.control;
        if c.set_op == 2 {
            return 0.0;
        }
        let rating = self.params.battery_w as f64;
        let reference = (c.w_cha_max as f64).min(rating);
        let reverted = c.revert_seconds > 0 && t - c.last_write >= c.revert_seconds as i64;
        let (mode, in_rte, out_rte) = if reverted {
            (0, 100, 100)
        } else {
            (c.stor_ctl_mod, c.in_w_rte, c.out_w_rte)
        };
        let mut charge_limit = reference;
        let mut discharge_limit = reference;
        let mut wanted = load_w - pv_w - self.params.grid_setpoint_w;
        if mode & 1 != 0 {
            if in_rte < 0 {
                wanted = reference * (-in_rte as f64) / 100.0;
            } else {
                charge_limit = reference * in_rte as f64 / 100.0;
            }
        }
        if mode & 2 != 0 {
            if out_rte < 0 {
                wanted = if c.cha_gri_set == 1 {
                    -reference * (-out_rte as f64) / 100.0
                } else {
                    -pv_w.min(reference * (-out_rte as f64) / 100.0)
                };
            } else {
                discharge_limit = reference * out_rte as f64 / 100.0;
            }
        }
        let eta = self.efficiency();
        let hours = dt / 3600.0;
        let reserve_wh = self.capacity_wh() * c.reserve_pct.clamp(0.0, 100.0) / 100.0;
        let max_wh = self.capacity_wh() * c.max_soc_pct.clamp(0.0, 100.0) / 100.0;
        let can_discharge =
            ((self.stored_wh - reserve_wh).max(0.0) * eta / hours).min(discharge_limit.max(0.0));
        let can_charge =
            ((max_wh - self.stored_wh).max(0.0) / eta / hours).min(charge_limit.max(0.0));
        wanted.clamp(-can_charge, can_discharge)
    }

    /// Advances the physics by one step of `dt` seconds.
    pub fn step(&mut self, dt: u32) {
        let t = self.time;
        let dt_f = dt as f64;
        let p = self.powers_at(t, dt_f);
        let hours = dt_f / 3600.0;
        let eta = self.efficiency();
        let e = &mut self.energy;
        e.pv += p.pv_w * hours;
        e.pv_available += p.pv_available_w * hours;
        e.pv_curtailed += (p.pv_available_w - p.pv_w) * hours;
        e.load += p.load_w * hours;
        if p.grid_w >= 0.0 {
            e.grid_import += p.grid_w * hours;
        } else {
            e.grid_export += -p.grid_w * hours;
        }
        if p.battery_w >= 0.0 {
            e.battery_discharge += p.battery_w * hours;
            self.stored_wh -= p.battery_w * hours / eta;
        } else {
            e.battery_charge += -p.battery_w * hours;
            self.stored_wh += -p.battery_w * hours * eta;
        }
        self.stored_wh = self.stored_wh.max(0.0);
        self.powers = p;
        self.time = t + dt as i64;
        if self.time.rem_euclid(SNAPSHOT_SECONDS) == 0 {
            if self.truth.len() == self.truth_capacity {
                self.truth.pop_front();
            }
            self.truth.push_back(self.snapshot());
        }
        if self.pv_control.enabled == 1 && self.pv_control.reverted(self.time) {
            self.pv_control.enabled = 0;
            tracing::debug!(home = %self.params.id, "PV power limit reverted (WMaxLimPct_RvrtTms ran out)");
        }
        if self.control.revert_seconds > 0
            && self.time - self.control.last_write >= self.control.revert_seconds as i64
            && (self.control.stor_ctl_mod != 0
                || self.control.in_w_rte != 100
                || self.control.out_w_rte != 100)
        {
            self.control.stor_ctl_mod = 0;
            self.control.in_w_rte = 100;
            self.control.out_w_rte = 100;
        }
    }

    /// Steps until the physics time reaches `target` (device clock), in steps of `dt`.
    /// Returns the number of steps taken.
    pub fn advance_to(&mut self, target: i64, dt: u32) -> u64 {
        let mut steps = 0;
        while self.time + dt as i64 <= target {
            self.step(dt);
            steps += 1;
        }
        steps
    }

    /// The ground truth over `[start, end)`: counter increases in Wh (import, export, pv,
    /// charge, discharge, pv available, pv curtailed) and the battery's state, if both
    /// boundaries are in the history.
    pub fn truth_between(&self, start: i64, end: i64) -> Option<TruthSpan> {
        let first = self.truth.front()?.time;
        let at = |t: i64| -> Option<Snapshot> {
            if t < first || (t - first) % SNAPSHOT_SECONDS != 0 {
                return None;
            }
            let entry = self.truth.get(((t - first) / SNAPSHOT_SECONDS) as usize)?;
            (entry.time == t).then_some(*entry)
        };
        let a = at(start)?;
        let b = at(end)?;
        let hours = (end - start) as f64 / 3600.0;
        let headroom_wh = if self.params.has_battery() {
            (self.params.battery_w as f64 * hours).min(a.room_wh / self.efficiency())
        } else {
            0.0
        };
        Some(TruthSpan {
            counters: std::array::from_fn(|i| b.counters[i] - a.counters[i]),
            stored_start_wh: a.stored_wh,
            stored_end_wh: b.stored_wh,
            headroom_wh,
        })
    }

    /// The oldest and newest ground-truth boundary kept.
    pub fn truth_range(&self) -> Option<(i64, i64)> {
        Some((self.truth.front()?.time, self.truth.back()?.time))
    }

    /// The charge state as SunSpec's ChaSt.
    pub fn charge_state(&self) -> ChargeState {
        if !self.params.has_battery() {
            return ChargeState::Off;
        }
        let soc = self.soc_pct();
        let w = self.powers.battery_w;
        if w > 0.5 {
            ChargeState::Discharging
        } else if w < -0.5 {
            ChargeState::Charging
        } else if soc >= self.control.max_soc_pct - 0.01 {
            ChargeState::Full
        } else if soc <= self.control.reserve_pct + 0.01 {
            ChargeState::Empty
        } else {
            ChargeState::Holding
        }
    }

    /// The live values of a device (ignoring a freeze).
    pub fn live_values(&self, kind: DeviceKind) -> DeviceValues {
        let offsets = self.faults[kind.index()].offsets;
        let floors = self.energy.floors();
        let counters =
            std::array::from_fn(|i| (floors[i] + self.base[i]).saturating_sub(offsets[i]));
        let cycles = if self.params.has_battery() {
            (self.energy.battery_discharge / self.capacity_wh()) as u32
        } else {
            0
        };
        DeviceValues {
            time: self.time,
            powers: self.powers,
            counters,
            soc_pct: self.soc_pct(),
            charge_state: self.charge_state(),
            control: self.control,
            pv_control: self.pv_control,
            heartbeat: (self.time.rem_euclid(65_536)) as u16,
            cycles,
        }
    }

    /// What a device shows now: frozen values under a freeze fault, live values otherwise.
    pub fn values(&self, kind: DeviceKind) -> DeviceValues {
        self.faults[kind.index()]
            .frozen
            .unwrap_or_else(|| self.live_values(kind))
    }

    /// Applies a fault to a device (see [`crate::faults`]).
    pub fn inject(&mut self, kind: DeviceKind, fault: Fault, until: Option<i64>) {
        let live = self.live_values(kind);
        let device = &mut self.faults[kind.index()];
        match fault {
            Fault::CounterReset => {
                let floors = self.energy.floors();
                device.offsets = std::array::from_fn(|i| floors[i] + self.base[i]);
                device.resets += 1;
                if let Some(frozen) = &mut device.frozen {
                    frozen.counters = [0; 5];
                }
            }
            Fault::ClockJump { seconds } => {
                self.clock_offset += seconds;
            }
            lasting => {
                device.frozen = (lasting == Fault::Freeze).then_some(live);
                device.active = Some(ActiveFault {
                    fault: lasting,
                    until,
                });
            }
        }
    }

    /// Clears a device's lasting fault.
    pub fn clear(&mut self, kind: DeviceKind) {
        let device = &mut self.faults[kind.index()];
        device.active = None;
        device.frozen = None;
    }

    /// Clears lasting faults whose scheduled end has passed.
    pub fn expire_faults(&mut self, now: i64) {
        for kind in DeviceKind::ALL {
            if let Some(ActiveFault {
                until: Some(until), ..
            }) = self.faults[kind.index()].active
                && now >= until
            {
                self.clear(kind);
            }
        }
    }

    /// The lasting fault of a device, if any.
    pub fn fault(&self, kind: DeviceKind) -> Option<Fault> {
        self.faults[kind.index()].active.map(|a| a.fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use proptest::prelude::*;

    fn home(seed: u64, index: usize) -> Home {
        let params = Scenario::small(3, seed).resolve().unwrap().remove(index);
        let start = chrono::DateTime::parse_from_rfc3339("2026-06-21T00:00:00Z")
            .unwrap()
            .timestamp();
        Home::new(params, seed, start, 2)
    }

    #[test]
    fn a_day_conserves_energy_and_produces_plausible_totals() {
        let mut h = home(5, 0);
        h.advance_to(h.time + 86_400, 1);
        let e = h.energy;
        let balance =
            e.pv + e.grid_import - e.grid_export + e.battery_discharge - e.battery_charge - e.load;
        assert!(balance.abs() < 1e-6, "{balance}");
        assert!(e.pv > 5_000.0, "{e:?}");
        assert!(e.load > 5_000.0 && e.load < 25_000.0, "{e:?}");
        assert!(e.battery_charge > 1_000.0, "{e:?}");
        // Ground truth: 288 five-minute slots summing to the floors.
        let start = h.time - 86_400;
        let day = h.truth_between(start, h.time).unwrap().counters;
        assert_eq!(day, h.energy.truth_floors());
        assert_eq!(day[..5], h.energy.floors());
        // No limit was written: nothing curtailed, available = produced.
        assert_eq!(day[6], 0);
        assert_eq!(day[5], day[2]);
        let mut sum = [0u64; TRUTH_COUNTERS];
        for k in 0..96 {
            let q = h
                .truth_between(start + k * 900, start + (k + 1) * 900)
                .unwrap()
                .counters;
            for i in 0..TRUTH_COUNTERS {
                sum[i] += q[i];
            }
        }
        assert_eq!(sum, day);
        assert_eq!(h.truth_between(start + 1, h.time), None);
    }

    #[test]
    fn deterministic_from_seed() {
        let mut a = home(9, 1);
        let mut b = home(9, 1);
        a.advance_to(a.time + 7_200, 1);
        b.advance_to(b.time + 3_600, 1);
        b.advance_to(b.time + 3_600, 1);
        assert_eq!(a.energy, b.energy);
        let mut c = home(10, 1);
        c.advance_to(c.time + 7_200, 1);
        assert_ne!(a.energy, c.energy);
    }

    #[test]
    fn control_writes_are_obeyed() {
        let mut h = home(3, 0);
        h.time += 11 * 3600; // midday: PV surplus, the battery would charge
        h.control.stor_ctl_mod = 1;
        h.control.in_w_rte = 0;
        h.step(1);
        assert_eq!(h.powers.battery_w, 0.0, "charging blocked");
        h.control.stor_ctl_mod = 2;
        h.control.out_w_rte = -50;
        h.step(1);
        let expected = -(h.control.w_cha_max as f64) * 0.5;
        assert!(
            (h.powers.battery_w - expected).abs() < 1e-9,
            "{:?}",
            h.powers
        );
        h.control.set_op = 2;
        h.step(1);
        assert_eq!(h.powers.battery_w, 0.0);
    }

    #[test]
    fn pv_limit_caps_production_counts_curtailment_and_reverts() {
        let mut h = home(3, 0);
        h.time += 11 * 3600; // midday: the sun offers more than 20 % of the rating
        let rating = h.params.inverter_w as f64;
        h.pv_control = PvControl {
            limit_tenths_pct: 200,
            revert_seconds: 600,
            enabled: 1,
            ..PvControl::new(h.time)
        };
        for _ in 0..599 {
            h.step(1);
            assert!(h.powers.pv_w <= 0.2 * rating + 1e-9, "{:?}", h.powers);
            assert!(h.powers.pv_available_w > 0.2 * rating, "{:?}", h.powers);
            assert_eq!(h.pv_control.enabled, 1);
        }
        // The 600th step still starts inside the window; then the limit reverts.
        h.step(1);
        assert!(h.powers.pv_w <= 0.2 * rating + 1e-9);
        assert_eq!(h.pv_control.enabled, 0, "reverted after RvrtTms");
        assert!(!h.pv_control.active(h.time));
        h.step(1);
        assert_eq!(h.powers.pv_w, h.powers.pv_available_w);
        let e = h.energy;
        assert!(
            (e.pv_available - e.pv - e.pv_curtailed).abs() < 1e-6,
            "{e:?}"
        );
        // About 10 minutes at 80 % of a ~6 kW rating withheld.
        assert!(e.pv_curtailed > 0.5 * 0.8 * rating / 6.0, "{e:?}");
        let balance =
            e.pv + e.grid_import - e.grid_export + e.battery_discharge - e.battery_charge - e.load;
        assert!(balance.abs() < 1e-6, "{balance}");
    }

    #[test]
    fn headroom_is_the_most_the_battery_could_take() {
        let mut h = home(3, 0);
        let start = h.time;
        h.advance_to(start + 900, 1);
        let span = h.truth_between(start, start + 900).unwrap();
        let rating_wh = h.params.battery_w as f64 / 4.0;
        let room = h.capacity_wh() - span.stored_start_wh;
        assert!(
            (span.headroom_wh - rating_wh.min(room / h.efficiency())).abs() < 1e-9,
            "{span:?}"
        );
        // A full battery (held at 0 W) has no headroom.
        h.stored_wh = h.capacity_wh();
        h.control.set_op = 2;
        h.advance_to(start + 1200, 1);
        h.advance_to(start + 1500, 1);
        let full = h.truth_between(start + 1200, start + 1500).unwrap();
        assert!(full.headroom_wh < 1e-6, "{full:?}");
        // A home without a battery has none either.
        let mut nb = home(3, 2);
        assert!(!nb.params.has_battery());
        let t = nb.time;
        nb.advance_to(t + 300, 1);
        assert_eq!(nb.truth_between(t, t + 300).unwrap().headroom_wh, 0.0);
    }

    #[test]
    fn counter_reset_and_freeze() {
        let mut h = home(4, 0);
        h.time += 11 * 3600;
        h.advance_to(h.time + 600, 1);
        let before = h.values(DeviceKind::Inverter).counters[2];
        assert!(before > 0);
        h.inject(DeviceKind::Inverter, Fault::CounterReset, None);
        assert_eq!(h.values(DeviceKind::Inverter).counters[2], 0);
        h.inject(DeviceKind::Meter, Fault::Freeze, None);
        let frozen = h.values(DeviceKind::Meter);
        h.advance_to(h.time + 600, 1);
        assert_eq!(h.values(DeviceKind::Meter), frozen);
        assert!(h.values(DeviceKind::Inverter).counters[2] > 0);
        h.clear(DeviceKind::Meter);
        assert_ne!(h.values(DeviceKind::Meter), frozen);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn energy_is_conserved_and_counters_only_grow(seed in 0u64..1000, index in 0usize..3, hours in 1i64..6, start_hour in 0i64..24, mode in 0u16..4, rte in -100i16..=100, limit in proptest::option::of(0u16..=1000)) {
            let mut h = home(seed, index);
            h.time += start_hour * 3600;
            h.control.stor_ctl_mod = mode;
            h.control.in_w_rte = rte;
            h.control.out_w_rte = -rte;
            if let Some(limit) = limit {
                h.pv_control = PvControl { limit_tenths_pct: limit, enabled: 1, ..PvControl::new(h.time) };
            }
            let cap = limit.map_or(f64::INFINITY, |l| l as f64 / 1000.0 * h.params.inverter_w as f64);
            let mut last = h.energy.truth_floors();
            for _ in 0..hours * 60 {
                h.advance_to(h.time + 60, 1);
                prop_assert!(h.powers.pv_w <= cap + 1e-9 && h.powers.pv_w <= h.powers.pv_available_w);
                let now = h.energy.truth_floors();
                for i in 0..TRUTH_COUNTERS { prop_assert!(now[i] >= last[i]); }
                last = now;
                let soc = h.soc_pct();
                prop_assert!(!h.params.has_battery() || (-1e-9..=100.0 + 1e-9).contains(&soc), "soc {}", soc);
            }
            let e = h.energy;
            let balance = e.pv + e.grid_import - e.grid_export + e.battery_discharge - e.battery_charge - e.load;
            prop_assert!(balance.abs() < 1e-6);
            let eta = h.params.round_trip_efficiency.sqrt();
            let stored = h.initial_stored_wh + e.battery_charge * eta - e.battery_discharge / eta;
            prop_assert!((stored - h.stored_wh).abs() < 1e-6);
            prop_assert!(e.grid_import >= 0.0 && e.grid_export >= 0.0 && e.pv >= 0.0);
            prop_assert!((e.pv_available - e.pv - e.pv_curtailed).abs() < 1e-6);
            prop_assert!(limit.is_some() || e.pv_curtailed == 0.0);
        }
    }
}
