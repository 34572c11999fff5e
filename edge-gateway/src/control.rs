//! The envelope control loop's pure core: keeps the interval's metered grid export and import
//! inside the envelope in force, battery first, then PV curtailment through SunSpec model 123.
//!
//! Every poll ([`ControlLoop::step`]):
//!
//! 1. **Metered so far.** [`IntervalMeter`] takes the grid meter's cumulative export and
//!    import registers; "so far" is the value now minus the value at the interval's start
//!    boundary (interpolated between the polls around it, as the accountant does).
//! 2. **Allowed power.** The remaining export budget R = limit − exported so far is spread
//!    over the rest of the interval: allowed export W = R / remaining time × 97 % (never
//!    negative); import likewise.
//! 3. **Battery first.** A self-consuming battery charges the surplus by itself; the
//!    controller never fights it. A discharge the bidding agent asked for (to deliver a
//!    cleared sale) is clipped so that it cannot push export over the allowed power; when
//!    import runs over the allowed import power and the battery is not already covering it,
//!    a discharge is asked for.
//! 4. **PV curtailment only for the rest.** When the (predicted) export power still exceeds
//!    the allowed power, the inverter's limit becomes PV W − (export W − allowed W), clamped
//!    to 0 ..= rating. With a limit active and export below the allowed power, the limit is
//!    raised by the gap; when it would reach 100 % or PV runs below it with a margin (the
//!    limit does not bind), the limit is released (`WMaxLim_Ena` = 0). So PV is not
//!    over-curtailed.
//! 5. **Bounded writes.** Limits are clamped to 0 ..= rating, at most one write per device
//!    per poll, at least `min_write_interval_ms` (real time) apart unless the envelope
//!    changed, and refreshed at half the revert timeout while still needed. Every limit
//!    carries `WMaxLimPct_RvrtTms`, so a crashed gateway never leaves the inverter curtailed
//!    for good.
//!
//! Curtailed energy is an estimate shown in status only (never used for money): while the
//! limit binds (PV within the margin of the limit) it integrates (reference W − PV W), where
//! the reference is the PV power last measured while the inverter was not limited or the
//! limit did not bind. The sun moves, so over long curtailment the estimate drifts; what can
//! be measured (PV produced, the limit) is reported beside it.

use crate::envelope::InForce;
use crate::sample::{Channel, PvLimit, Sample};
use chrono::{DateTime, Utc};
use gridmesh_protocol::envelope::{ControlStatus, EnvelopeSource};
use gridmesh_protocol::{GatewayId, Interval, IntervalLength, Wh};

/// The share of the remaining budget the controller aims at, per mille.
pub const AIM_PERMILLE: i64 = 970;

/// The controller's fixed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// The inverter's rated AC power, W (`site.inverter_w`; 0: PV is never curtailed).
    pub rating_w: i64,
    /// The battery's rated power, W (`site.battery_w`; 0: the battery is never asked).
    pub battery_w: i64,
    /// `WMaxLimPct_RvrtTms` / `InOutWRte_RvrtTms` written with every control, device seconds.
    pub revert_s: u16,
    /// Least real time between two writes to one device unless the envelope changed.
    pub min_write_interval_ms: u64,
}

impl ControlSettings {
    /// Changes smaller than this are not worth a write: 1 % of the rating, at least 20 W.
    pub fn deadband_w(&self) -> i64 {
        (self.rating_w / 100).max(20)
    }

    /// PV this far below the limit means the limit does not bind: 3 % of the rating, at
    /// least 50 W.
    pub fn margin_w(&self) -> i64 {
        (self.rating_w * 3 / 100).max(50)
    }

    fn battery_deadband_w(&self) -> i64 {
        (self.battery_w / 50).max(50)
    }
}

/// Grid power at the meter, W (both ≥ 0; at most one is non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GridPower {
    /// Export power.
    pub export_w: i64,
    /// Import power.
    pub import_w: i64,
}

/// One poll's view, as the pure [`Controller`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Gateway (device) clock.
    pub now: DateTime<Utc>,
    /// Monotonic real time, ms (for the write rate limit).
    pub real_ms: u64,
    /// The envelope in force.
    pub envelope: InForce,
    /// Export metered so far in the envelope's interval, mWh (`None`: no grid meter reading).
    pub exported_mwh: Option<i64>,
    /// Import metered so far, mWh.
    pub imported_mwh: Option<i64>,
    /// Grid power now (`None`: the meter was not read).
    pub grid: Option<GridPower>,
    /// PV power now, W.
    pub pv_w: Option<i64>,
    /// Battery power now, W (+ discharge, − charge).
    pub battery_w: Option<i64>,
    /// The inverter's model-123 state as read this poll (`None`: no model 123 or not read).
    pub pv_limit: Option<PvLimit>,
    /// The discharge the bidding agent asked for in this interval, W (0: none).
    pub steer_discharge_w: i64,
}

/// A write to the inverter's model 123.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvCommand {
    /// Limit active power to `watts` (= `pct_milli` thousandths of a percent of the rating).
    Limit {
        /// The limit, W.
        watts: i64,
        /// The limit in thousandths of a percent of the rating (100 % = 100 000).
        pct_milli: i64,
        /// `WMaxLimPct_SF` as read from the device.
        sf: i16,
    },
    /// Disable the limit.
    Release,
}

/// What to write this poll (at most one write per device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Commands {
    /// The inverter's limit.
    pub pv: Option<PvCommand>,
    /// The battery: forced power, W (+ discharge, − charge, 0 = back to automatic).
    pub battery: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written<T> {
    value: T,
    real_ms: u64,
    at: DateTime<Utc>,
}

/// The controller's memory between polls.
#[derive(Debug, Clone)]
pub struct Controller {
    settings: ControlSettings,
    envelope_key: Option<(i64, EnvelopeSource, i64, i64)>,
    pv_written: Option<Written<PvCommand>>,
    battery_written: Option<Written<i64>>,
    allowed_export_w: i64,
    allowed_import_w: i64,
}

/// Average power that uses `remaining_mwh` over `remaining_ms`, times [`AIM_PERMILLE`], W.
pub fn allowed_power_w(remaining_mwh: i64, remaining_ms: i64) -> i64 {
    let ms = remaining_ms.max(1) as i128;
    let w = i128::from(remaining_mwh.max(0)) * 3600 / ms;
    (w * i128::from(AIM_PERMILLE) / 1000).min(i128::from(i64::MAX)) as i64
}

impl Controller {
    /// A controller with nothing written yet.
    pub fn new(settings: ControlSettings) -> Self {
        Controller {
            settings,
            envelope_key: None,
            pv_written: None,
            battery_written: None,
            allowed_export_w: 0,
            allowed_import_w: 0,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    /// The allowed export power computed in the last step, W.
    pub fn allowed_export_w(&self) -> i64 {
        self.allowed_export_w
    }

    /// The allowed import power computed in the last step, W.
    pub fn allowed_import_w(&self) -> i64 {
        self.allowed_import_w
    }

    /// The battery power last written (+ discharge, 0 automatic).
    pub fn battery_setpoint_w(&self) -> i64 {
        self.battery_written.map_or(0, |w| w.value)
    }

    /// The inverter limit in force as read, W (`None`: not limited).
    pub fn active_limit_w(&self, pv_limit: Option<PvLimit>) -> Option<i64> {
        let l = pv_limit.filter(|l| l.enabled)?;
        let pct = l.pct_milli?;
        Some(pct.clamp(0, 100_000) * self.settings.rating_w / 100_000)
    }

    /// Forget a failed inverter write, so the next allowed poll tries again.
    pub fn pv_write_failed(&mut self) {
        if let Some(w) = &mut self.pv_written {
            w.value = PvCommand::Release;
            w.at = DateTime::<Utc>::MIN_UTC;
        }
    }

    /// Forget a failed battery write.
    pub fn battery_write_failed(&mut self) {
        self.battery_written = None;
    }

    fn may_write<T>(&self, last: &Option<Written<T>>, now_ms: u64, changed: bool) -> bool {
        match last {
            None => true,
            Some(w) => {
                changed || now_ms.saturating_sub(w.real_ms) >= self.settings.min_write_interval_ms
            }
        }
    }

    fn refresh_due<T>(&self, last: &Option<Written<T>>, now: DateTime<Utc>) -> bool {
        let half_ms = i64::from(self.settings.revert_s) * 500;
        last.as_ref()
            .is_none_or(|w| (now - w.at).num_milliseconds() >= half_ms)
    }

    /// Decides this poll's writes. Call [`Controller::pv_write_failed`] /
    /// [`Controller::battery_write_failed`] if applying them fails.
    pub fn step(&mut self, i: &Inputs) -> Commands {
        let key = (
            i.envelope.interval.start_unix(),
            i.envelope.source,
            i.envelope.export_limit.0,
            i.envelope.import_limit.0,
        );
        let changed = self.envelope_key != Some(key);
        self.envelope_key = Some(key);
        let remaining_ms = (i.envelope.interval.end() - i.now)
            .num_milliseconds()
            .max(1);
        let mut out = Commands::default();
        let active = self.active_limit_w(i.pv_limit);
        let (Some(grid), Some(exported), Some(imported)) = (i.grid, i.exported_mwh, i.imported_mwh)
        else {
            // No meter reading: hold what is in force (refresh it), decide nothing new.
            if let Some(refresh) = self.refresh(i.pv_limit)
                && active.is_some()
                && self.refresh_due(&self.pv_written, i.now)
            {
                out.pv = Some(refresh);
            }
            let setpoint = self.battery_setpoint_w();
            if setpoint != 0 && self.refresh_due(&self.battery_written, i.now) {
                out.battery = Some(setpoint);
            }
            self.record(&out, i);
            return out;
        };
        let allowed_export =
            allowed_power_w(i.envelope.export_limit.0 * 1000 - exported, remaining_ms);
        let allowed_import =
            allowed_power_w(i.envelope.import_limit.0 * 1000 - imported, remaining_ms);
        self.allowed_export_w = allowed_export;
        self.allowed_import_w = allowed_import;

        // Battery first.
        let mut predicted_export = grid.export_w;
        if let Some(battery_w) = i.battery_w
            && self.settings.battery_w > 0
        {
            let net_export = grid.export_w - grid.import_w;
            // Net export if the battery were idle.
            let natural = net_export - battery_w;
            let deadband = self.settings.battery_deadband_w();
            let mut target = 0;
            if i.steer_discharge_w > 0 {
                target = i.steer_discharge_w.min((allowed_export - natural).max(0));
            }
            let need = -natural - allowed_import;
            if need > 0 && battery_w < need - deadband {
                target = target.max(need);
            }
            target = target.min(self.settings.battery_w);
            if target < deadband {
                target = 0;
            }
            let current = self.battery_setpoint_w();
            let battery_changed =
                (target - current).abs() >= deadband || (target == 0) != (current == 0);
            if battery_changed {
                if self.may_write(&self.battery_written, i.real_ms, changed) {
                    out.battery = Some(target);
                }
            } else if current != 0 && self.refresh_due(&self.battery_written, i.now) {
                out.battery = Some(current);
            }
            // A setpoint changed this poll moves export before the next poll measures it.
            match out.battery {
                Some(new) if new != current && new > 0 => {
                    predicted_export = (natural + new).max(0);
                }
                Some(0) if current > 0 => {
                    // Forced discharge released: back to self-consumption, which exports
                    // at most the natural surplus.
                    predicted_export = grid.export_w.min(natural.max(0));
                }
                _ => {}
            }
        }

        // PV curtailment for what the battery cannot take.
        if let Some(pv_limit) = i.pv_limit
            && self.settings.rating_w > 0
        {
            let rating = self.settings.rating_w;
            let deadband = self.settings.deadband_w();
            let excess = predicted_export - allowed_export;
            let pv = i.pv_w.or(active).unwrap_or(rating);
            let mut command = None;
            if excess > deadband {
                let target = (pv - excess).clamp(0, rating);
                match active {
                    Some(l) if target >= l - deadband / 2 => {
                        // Already at (or below) what is needed.
                        if self.refresh_due(&self.pv_written, i.now) {
                            command = self.refresh(Some(pv_limit)).map(|c| (c, true));
                        }
                    }
                    _ => command = Some((self.limit(target, pv_limit.sf), false)),
                }
            } else if let Some(l) = active {
                let gap = (allowed_export - predicted_export).max(0);
                let raised = l + gap;
                let binding = pv + self.settings.margin_w() >= l;
                if raised >= rating || !binding {
                    command = Some((PvCommand::Release, false));
                } else if gap > deadband {
                    command = Some((self.limit(raised, pv_limit.sf), false));
                } else if self.refresh_due(&self.pv_written, i.now) {
                    command = self.refresh(Some(pv_limit)).map(|c| (c, true));
                }
            }
            if let Some((c, refresh)) = command
                && (refresh || self.may_write(&self.pv_written, i.real_ms, changed))
            {
                out.pv = Some(c);
            }
        }
        self.record(&out, i);
        out
    }

    /// The limit in force as read, written again unchanged (restarts the revert timer).
    fn refresh(&self, pv_limit: Option<PvLimit>) -> Option<PvCommand> {
        let l = pv_limit.filter(|l| l.enabled)?;
        let pct = l.pct_milli?.clamp(0, 100_000);
        Some(PvCommand::Limit {
            watts: pct * self.settings.rating_w / 100_000,
            pct_milli: pct,
            sf: l.sf,
        })
    }

    fn limit(&self, watts: i64, sf: i16) -> PvCommand {
        let rating = self.settings.rating_w.max(1);
        let watts = watts.clamp(0, rating);
        PvCommand::Limit {
            watts,
            pct_milli: watts * 100_000 / rating,
            sf,
        }
    }

    fn record(&mut self, out: &Commands, i: &Inputs) {
        if let Some(pv) = out.pv {
            self.pv_written = Some(Written {
                value: pv,
                real_ms: i.real_ms,
                at: i.now,
            });
        }
        if let Some(b) = out.battery {
            self.battery_written = Some(Written {
                value: b,
                real_ms: i.real_ms,
                at: i.now,
            });
        }
    }
}

/// Energy metered in the interval so far, from cumulative counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoFar {
    /// The interval.
    pub interval: Interval,
    /// Export so far, mWh.
    pub exported_mwh: i64,
    /// Import so far, mWh.
    pub imported_mwh: i64,
    /// Whether the start of the interval was not observed (gateway started mid-interval, a
    /// gap in readings or a counter reset): the figures then undercount.
    pub partial: bool,
}

#[derive(Debug, Clone, Copy)]
struct Start {
    interval: Interval,
    export_mwh: i64,
    import_mwh: i64,
    partial: bool,
}

/// Export and import so far in the current interval, from the grid meter's cumulative
/// registers (value now − value at the interval's start boundary).
#[derive(Debug, Clone)]
pub struct IntervalMeter {
    length: IntervalLength,
    start: Option<Start>,
    last: Option<(DateTime<Utc>, i64, i64)>,
}

/// What [`IntervalMeter::observe`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterUpdate {
    /// The current interval so far.
    pub now: SoFar,
    /// The interval that just ended, with its totals, when this observation crossed a boundary.
    pub closed: Option<SoFar>,
}

fn interpolate(a: (DateTime<Utc>, i64), b: (DateTime<Utc>, i64), at: DateTime<Utc>) -> i64 {
    let span = (b.0 - a.0).num_milliseconds();
    if span <= 0 {
        return b.1;
    }
    let part = (at - a.0).num_milliseconds().clamp(0, span);
    a.1 + ((i128::from(b.1 - a.1) * i128::from(part)) / i128::from(span)) as i64
}

impl IntervalMeter {
    /// A meter for intervals of `length`.
    pub fn new(length: IntervalLength) -> Self {
        IntervalMeter {
            length,
            start: None,
            last: None,
        }
    }

    /// Takes one reading of the cumulative export and import counters (mWh) at `at`.
    pub fn observe(&mut self, at: DateTime<Utc>, export_mwh: i64, import_mwh: i64) -> MeterUpdate {
        let interval = Interval::containing(at, self.length);
        let mut closed = None;
        let start = match self.start {
            Some(s) if s.interval == interval => {
                let reset = self
                    .last
                    .is_some_and(|(_, e, i)| export_mwh < e || import_mwh < i);
                if reset {
                    // A counter went down: count from here.
                    Start {
                        interval,
                        export_mwh,
                        import_mwh,
                        partial: true,
                    }
                } else {
                    s
                }
            }
            Some(s) if s.interval.start() < interval.start() => {
                let boundary = interval.start();
                let adjacent = s.interval.next() == interval;
                let (e, i, gap) = match self.last {
                    Some((t, e0, i0))
                        if adjacent && t <= boundary && export_mwh >= e0 && import_mwh >= i0 =>
                    {
                        (
                            interpolate((t, e0), (at, export_mwh), boundary),
                            interpolate((t, i0), (at, import_mwh), boundary),
                            false,
                        )
                    }
                    _ => (export_mwh, import_mwh, true),
                };
                if adjacent {
                    closed = Some(SoFar {
                        interval: s.interval,
                        exported_mwh: (e - s.export_mwh).max(0),
                        imported_mwh: (i - s.import_mwh).max(0),
                        partial: s.partial || gap,
                    });
                }
                Start {
                    interval,
                    export_mwh: e,
                    import_mwh: i,
                    partial: gap,
                }
            }
            // First reading, or time went backwards.
            _ => Start {
                interval,
                export_mwh,
                import_mwh,
                partial: at != interval.start(),
            },
        };
        self.start = Some(start);
        self.last = Some((at, export_mwh, import_mwh));
        MeterUpdate {
            now: SoFar {
                interval,
                exported_mwh: (export_mwh - start.export_mwh).max(0),
                imported_mwh: (import_mwh - start.import_mwh).max(0),
                partial: start.partial,
            },
            closed,
        }
    }
}

/// What the samples of one poll say, for the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// When the grid meter was read, and its export and import counters, mWh.
    pub grid_counters: Option<(DateTime<Utc>, i64, i64)>,
    /// Grid power.
    pub grid: Option<GridPower>,
    /// PV power of the controlled inverter (or of all inverters without model 123), W.
    pub pv_w: Option<i64>,
    /// Battery power, W (+ discharge).
    pub battery_w: Option<i64>,
    /// The controlled inverter (the first offering model 123) and its model-123 state.
    pub pv_limit: Option<(String, PvLimit)>,
}

/// Extracts what the controller needs from one poll's samples (fresh, successful ones).
pub fn observe(samples: &[Sample]) -> Observed {
    let mut o = Observed::default();
    let mut pv_sum: Option<i64> = None;
    let mut battery: Option<i64> = None;
    for s in samples {
        let Ok(v) = &s.values else { continue };
        if s.stale {
            continue;
        }
        let counter = |c: Channel| v.counters.iter().find(|(ch, _)| *ch == c).map(|x| x.1.mwh);
        let power = |c: Channel| {
            v.power_mw
                .iter()
                .find(|(ch, _)| *ch == c)
                .map(|x| x.1 / 1000)
        };
        if o.grid_counters.is_none()
            && let (Some(e), Some(i)) = (counter(Channel::GridExport), counter(Channel::GridImport))
        {
            o.grid_counters = Some((s.at, e, i));
            if let (Some(e), Some(i)) = (power(Channel::GridExport), power(Channel::GridImport)) {
                o.grid = Some(GridPower {
                    export_w: e,
                    import_w: i,
                });
            }
        }
        if let Some(pv) = power(Channel::Pv) {
            pv_sum = Some(pv_sum.unwrap_or(0) + pv);
            if o.pv_limit.is_none()
                && let Some(l) = v.pv_limit
            {
                o.pv_limit = Some((s.device.clone(), l));
                o.pv_w = Some(pv);
            }
        }
        if let (Some(d), Some(c)) = (
            power(Channel::BatteryDischarge),
            power(Channel::BatteryCharge),
        ) {
            battery = Some(battery.unwrap_or(0) + d - c);
        }
    }
    if o.pv_limit.is_none() {
        o.pv_w = pv_sum;
    }
    o.battery_w = battery;
    o
}

/// The whole loop's state: meter, controller, curtailment estimate, violations, status.
#[derive(Debug, Clone)]
pub struct ControlLoop {
    gateway: GatewayId,
    enabled: bool,
    meter: IntervalMeter,
    controller: Controller,
    so_far: Option<SoFar>,
    limits: Option<InForce>,
    violations: u32,
    reference_pv_w: Option<i64>,
    last_at: Option<DateTime<Utc>>,
    curtailed_interval_mwh: i64,
    curtailed_total_mwh: i64,
    curtailed_interval: Option<Interval>,
    pv_limit_pct: Option<u16>,
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// The writes to apply (none when control is disabled).
    pub commands: Commands,
    /// The device the PV command is for.
    pub pv_device: Option<String>,
    /// The status to show and publish.
    pub status: ControlStatus,
    /// An interval that just closed with its totals and whether it exceeded its envelope.
    pub closed: Option<(SoFar, bool)>,
}

impl ControlLoop {
    /// A loop for `gateway` with intervals of `length`; `enabled = false` only measures.
    pub fn new(
        gateway: GatewayId,
        length: IntervalLength,
        settings: ControlSettings,
        enabled: bool,
    ) -> Self {
        ControlLoop {
            gateway,
            enabled,
            meter: IntervalMeter::new(length),
            controller: Controller::new(settings),
            so_far: None,
            limits: None,
            violations: 0,
            reference_pv_w: None,
            last_at: None,
            curtailed_interval_mwh: 0,
            curtailed_total_mwh: 0,
            curtailed_interval: None,
            pv_limit_pct: None,
        }
    }

    /// The controller.
    pub fn controller(&mut self) -> &mut Controller {
        &mut self.controller
    }

    /// One poll: `envelope` in force at `now`, the poll's observations and the agent's
    /// requested discharge for this interval.
    pub fn step(
        &mut self,
        now: DateTime<Utc>,
        real_ms: u64,
        envelope: InForce,
        observed: &Observed,
        steer_discharge_w: i64,
    ) -> StepOutcome {
        let mut closed = None;
        if let Some((at, e, i)) = observed.grid_counters {
            let update = self.meter.observe(at, e, i);
            if let Some(c) = update.closed {
                let exceeded = self
                    .limits
                    .as_ref()
                    .filter(|l| l.interval == c.interval)
                    .map(|l| {
                        c.exported_mwh / 1000 > l.export_limit.0
                            || c.imported_mwh / 1000 > l.import_limit.0
                    });
                if let Some(exceeded) = exceeded
                    && !c.partial
                {
                    self.violations = if exceeded { self.violations + 1 } else { 0 };
                    closed = Some((c, exceeded));
                }
            }
            self.so_far = Some(update.now);
        }
        let so_far = self.so_far.filter(|s| s.interval == envelope.interval);
        let pv_limit = observed.pv_limit.as_ref().map(|(_, l)| *l);
        // Curtailment estimate.
        let active = self.controller.active_limit_w(pv_limit);
        let margin = self.controller.settings().margin_w();
        if self.curtailed_interval != Some(envelope.interval) {
            self.curtailed_interval = Some(envelope.interval);
            self.curtailed_interval_mwh = 0;
        }
        if let Some(pv) = observed.pv_w {
            let binding = active.is_some_and(|l| pv + margin >= l);
            if !binding {
                self.reference_pv_w = Some(pv);
            } else if let (Some(reference), Some(last)) = (self.reference_pv_w, self.last_at) {
                let dt_ms = (now - last).num_milliseconds().clamp(0, 120_000);
                let mwh = (reference - pv).max(0) * dt_ms / 3600;
                self.curtailed_interval_mwh += mwh;
                self.curtailed_total_mwh += mwh;
            }
        }
        self.last_at = Some(now);
        self.pv_limit_pct = active
            .and(pv_limit.and_then(|l| l.pct_milli))
            .map(|p| ((p.clamp(0, 100_000) + 500) / 1000) as u16);
        let commands = if self.enabled {
            self.controller.step(&Inputs {
                now,
                real_ms,
                envelope: envelope.clone(),
                exported_mwh: so_far.map(|s| s.exported_mwh),
                imported_mwh: so_far.map(|s| s.imported_mwh),
                grid: observed.grid,
                pv_w: observed.pv_w,
                battery_w: observed.battery_w,
                pv_limit,
                steer_discharge_w,
            })
        } else {
            Commands::default()
        };
        let status = ControlStatus {
            gateway: self.gateway.clone(),
            interval: envelope.interval,
            source: envelope.source,
            export_limit_wh: envelope.export_limit,
            import_limit_wh: envelope.import_limit,
            exported_wh: Wh(so_far.map_or(0, |s| s.exported_mwh / 1000)),
            imported_wh: Wh(so_far.map_or(0, |s| s.imported_mwh / 1000)),
            curtailed_wh: Wh(self.curtailed_interval_mwh / 1000),
            curtailed_total_wh: Wh(self.curtailed_total_mwh / 1000),
            pv_limit_pct: self.pv_limit_pct,
            battery_setpoint_w: self.controller.battery_setpoint_w(),
            violations_in_a_row: self.violations,
        };
        self.limits = Some(envelope);
        StepOutcome {
            commands,
            pv_device: observed.pv_limit.as_ref().map(|(d, _)| d.clone()),
            status,
            closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn allowed_power_spreads_the_rest_of_the_budget() {
        // 100 Wh over 6 minutes = 1000 W; 97 % of it.
        assert_eq!(allowed_power_w(100_000, 360_000), 970);
        assert_eq!(allowed_power_w(-5, 360_000), 0, "never negative");
        assert_eq!(allowed_power_w(10, 0), 34_920, "no division by zero");
    }

    #[test]
    fn the_meter_interpolates_the_boundary_and_closes_the_interval() {
        let length = IntervalLength::from_minutes(5).unwrap();
        let mut m = IntervalMeter::new(length);
        let u = m.observe(at("2026-06-21T12:04:50Z"), 1_000_000, 0);
        assert!(u.now.partial);
        // 10 s later, 20 Wh more: the boundary lies halfway.
        let u = m.observe(at("2026-06-21T12:05:00Z"), 1_010_000, 0);
        assert_eq!(u.closed.unwrap().exported_mwh, 10_000);
        assert!(u.closed.unwrap().partial);
        assert!(!u.now.partial);
        let u = m.observe(at("2026-06-21T12:09:55Z"), 1_300_000, 0);
        assert_eq!(u.now.exported_mwh, 290_000);
        let u = m.observe(at("2026-06-21T12:10:05Z"), 1_320_000, 0);
        let closed = u.closed.unwrap();
        assert_eq!((closed.exported_mwh, closed.partial), (300_000, false));
        assert_eq!(u.now.exported_mwh, 10_000);
        // A counter reset restarts the count, flagged partial.
        let u = m.observe(at("2026-06-21T12:10:10Z"), 5, 0);
        assert_eq!((u.now.exported_mwh, u.now.partial), (0, true));
        // A gap of more than an interval closes nothing.
        let u = m.observe(at("2026-06-21T12:30:10Z"), 50_000, 0);
        assert_eq!(u.closed, None);
        assert!(u.now.partial);
    }
}
