//! The battery schedule for the next day: dynamic programming over a discretised state of
//! charge (integer Wh), re-planned every interval. Small and exact on its grid, no LP solver:
//! at most [`MAX_STATES`] SoC levels × 96 slots × the levels one slot's power can reach.
//!
//! # Model (per slot `t`, all energies in Wh at the home's AC side)
//! - Forecast PV `pv` and consumption `load`; the battery moves the SoC from level `i` to `j`:
//!   charging `Δ = soc_j − soc_i > 0` draws `⌈Δ / η_c⌉` Wh, discharging delivers `⌊−Δ · η_d⌋` Wh,
//!   with `η_c = η_d = √(round-trip efficiency)` (per mille).
//! - Grid `g = load − pv + drawn − delivered`: import when positive, paid at `buy_price`;
//!   export when negative, earning `sell_price` on at most `export_cap` Wh (the operating
//!   envelope); more is curtailed (model 123) and earns nothing. A `sell_price` at or below 0
//!   curtails all export instead of paying for it.
//! - Constraints (a transition breaking one is never chosen): the SoC stays within
//!   `reserve ..= capacity` (a start below the reserve may stay or charge, never discharge);
//!   drawn ≤ `max_charge_wh`, delivered ≤ `max_discharge_wh` (power × slot length); charging
//!   never raises import above `import_cap` and discharging never raises export above
//!   `export_cap` (the envelope; at a `sell_price` ≤ 0 nothing may be exported, so
//!   discharging never feeds curtailment); without grid charging, drawn ≤ the PV surplus.
//! - Cost = grid money + `cycle_cost` per Wh delivered (the homeowner's willingness to cycle,
//!   wear) − the stored energy left at the end valued at `terminal_price` × η_d.
//!
//! Money inside the DP is in "price × Wh" (minor units per MWh × Wh = 10⁻⁶ minor units), so a
//! difference of costs divided by a difference of energies is directly a price per MWh: the
//! marginal values that the bid curves ([`super::bids`]) are built from.

use gridmesh_protocol::PricePerMwh;

/// The largest number of SoC levels (the grid step grows with the capacity).
pub const MAX_STATES: i64 = 101;

/// A cost that no feasible plan reaches.
const INFEASIBLE: i64 = i64::MAX / 4;

/// The battery and the homeowner's settings for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Battery {
    /// Usable capacity, Wh.
    pub capacity_wh: i64,
    /// State of charge now, Wh.
    pub soc_wh: i64,
    /// Never discharged below this, Wh.
    pub reserve_wh: i64,
    /// Most energy drawn to charge in one slot, Wh.
    pub max_charge_wh: i64,
    /// Most energy delivered by discharging in one slot, Wh.
    pub max_discharge_wh: i64,
    /// Round-trip efficiency, per mille (e.g. 900).
    pub round_trip_permille: i64,
    /// Cost of wear per MWh delivered (0: cycle freely).
    pub cycle_cost: PricePerMwh,
    /// Whether the battery may charge from the grid (else only from PV surplus).
    pub grid_charging: bool,
}

impl Battery {
    /// One-way efficiency, per mille: √(round trip).
    pub fn one_way_permille(&self) -> i64 {
        let rt = self.round_trip_permille.clamp(1, 1000) as f64 / 1000.0;
        ((rt.sqrt() * 1000.0).floor() as i64).clamp(1, 1000)
    }

    /// Energy drawn from the home to raise the SoC by `delta` Wh.
    pub fn drawn_for(&self, delta: i64) -> i64 {
        let eta = self.one_way_permille();
        (delta * 1000 + eta - 1) / eta
    }

    /// Energy delivered to the home by lowering the SoC by `delta` Wh.
    pub fn delivered_for(&self, delta: i64) -> i64 {
        delta * self.one_way_permille() / 1000
    }
}

/// One slot's forecast, prices and envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Forecast PV, Wh.
    pub pv_wh: i64,
    /// Forecast consumption, Wh.
    pub load_wh: i64,
    /// Expected price of imported energy.
    pub buy_price: PricePerMwh,
    /// Expected price of exported energy (≤ 0: export is curtailed instead).
    pub sell_price: PricePerMwh,
    /// Most export allowed (operating envelope), Wh.
    pub export_cap_wh: i64,
    /// Most import allowed, Wh.
    pub import_cap_wh: i64,
}

impl Slot {
    /// Grid energy (+ import, − export) without the battery.
    pub fn base_grid_wh(&self) -> i64 {
        self.load_wh - self.pv_wh
    }
}

/// What happens in one slot of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    /// SoC at the slot's start, Wh.
    pub soc_before_wh: i64,
    /// SoC at its end, Wh.
    pub soc_after_wh: i64,
    /// Energy drawn to charge, Wh.
    pub charge_wh: i64,
    /// Energy delivered by discharging, Wh.
    pub discharge_wh: i64,
    /// Import, Wh.
    pub import_wh: i64,
    /// Export (after curtailment), Wh.
    pub export_wh: i64,
    /// PV curtailed (over the envelope, or at a price ≤ 0), Wh.
    pub curtail_wh: i64,
}

/// The result of planning: the steps, and the cost-to-go after the first slot for every SoC
/// level (for marginal values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// One step per slot.
    pub steps: Vec<Step>,
    /// The SoC levels, Wh.
    pub levels: Vec<i64>,
    /// The level the first slot starts at.
    pub start_level: usize,
    /// Cost-to-go from the end of the first slot, per level (price × Wh; [`i64::MAX`]/4 where
    /// infeasible).
    pub value_after_first: Vec<i64>,
    /// Total planned cost, price × Wh.
    pub cost: i64,
}

/// One feasible choice for the first slot: the level it ends at, its grid energy and the cost
/// that does not depend on the market (wear + the cost-to-go afterwards), price × Wh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Option1 {
    /// End level index.
    pub level: usize,
    /// Energy drawn to charge, Wh.
    pub charge_wh: i64,
    /// Energy delivered, Wh.
    pub discharge_wh: i64,
    /// Grid energy before curtailment (+ import, − export), Wh.
    pub grid_wh: i64,
    /// Wear + cost-to-go, price × Wh.
    pub rest_cost: i64,
}

/// A transition's energies, or `None` when it breaks a constraint.
fn transition(b: &Battery, slot: &Slot, from: i64, to: i64) -> Option<(i64, i64, i64)> {
    let delta = to - from;
    let (drawn, delivered) = match delta {
        0 => (0, 0),
        d if d > 0 => (b.drawn_for(d), 0),
        d => (0, b.delivered_for(-d)),
    };
    if drawn > b.max_charge_wh || delivered > b.max_discharge_wh {
        return None;
    }
    if delta < 0 && to < b.reserve_wh {
        return None;
    }
    let base = slot.base_grid_wh();
    let grid = base + drawn - delivered;
    if drawn > 0 && !b.grid_charging && drawn > (-base).max(0) {
        return None;
    }
    if drawn > 0 && grid > slot.import_cap_wh.max(base) {
        return None;
    }
    // Discharging never pushes export over the envelope, nor into curtailment at a price
    // at or below 0.
    let exportable = if slot.sell_price.0 <= 0 {
        0
    } else {
        slot.export_cap_wh.max(0)
    };
    if delivered > 0 && -grid > exportable {
        return None;
    }
    Some((drawn, delivered, grid))
}

/// Grid money of a slot (price × Wh; + paid) and the energy split, for grid energy `grid`.
fn grid_cost(slot: &Slot, grid: i64) -> (i64, i64, i64, i64) {
    if grid >= 0 {
        (grid.saturating_mul(slot.buy_price.0), grid, 0, 0)
    } else {
        let surplus = -grid;
        let export = if slot.sell_price.0 <= 0 {
            0
        } else {
            surplus.min(slot.export_cap_wh.max(0))
        };
        (
            -export.saturating_mul(slot.sell_price.0),
            0,
            export,
            surplus - export,
        )
    }
}

/// The SoC levels: from min(reserve, SoC now) to the capacity, at most [`MAX_STATES`], with the
/// SoC now and the reserve on the grid.
pub fn levels(b: &Battery) -> Vec<i64> {
    let low = b.reserve_wh.min(b.soc_wh).max(0);
    let high = b.capacity_wh.max(low);
    let step = ((high - low) + MAX_STATES - 2).max(1) / (MAX_STATES - 1).max(1);
    let step = step.max(1);
    let mut v: Vec<i64> = (0..)
        .map(|k| low + k * step)
        .take_while(|s| *s < high)
        .collect();
    v.push(high);
    for extra in [b.soc_wh.clamp(low, high), b.reserve_wh.clamp(low, high)] {
        if let Err(at) = v.binary_search(&extra) {
            v.insert(at, extra);
        }
    }
    v
}

/// Plans the battery over `slots` (the first is the interval being bid for). `terminal_price`
/// values the energy left above the reserve at the end.
pub fn plan(b: &Battery, slots: &[Slot], terminal_price: PricePerMwh) -> Schedule {
    let levels = levels(b);
    let n = levels.len();
    let start_level = levels
        .binary_search(&b.soc_wh.clamp(levels[0], levels[n - 1]))
        .unwrap_or(0);
    let eta = b.one_way_permille();
    // value[t][i]: the cheapest cost from the start of slot t at level i.
    let terminal: Vec<i64> = levels
        .iter()
        .map(|s| -((s - b.reserve_wh).max(0) * eta / 1000).saturating_mul(terminal_price.0.max(0)))
        .collect();
    let mut value = vec![terminal];
    let mut choice: Vec<Vec<usize>> = Vec::with_capacity(slots.len());
    for slot in slots.iter().rev() {
        let next = value.last().expect("terminal is there");
        let mut here = vec![INFEASIBLE; n];
        let mut best = vec![0usize; n];
        for (i, &from) in levels.iter().enumerate() {
            for (j, &to) in levels.iter().enumerate() {
                if next[j] >= INFEASIBLE {
                    continue;
                }
                let Some((_, delivered, grid)) = transition(b, slot, from, to) else {
                    continue;
                };
                let cost = grid_cost(slot, grid)
                    .0
                    .saturating_add(delivered.saturating_mul(b.cycle_cost.0))
                    .saturating_add(next[j]);
                // Ties go to the smaller move (no cycling for nothing).
                if cost < here[i] || (cost == here[i] && i.abs_diff(j) < i.abs_diff(best[i])) {
                    here[i] = cost;
                    best[i] = j;
                }
            }
        }
        value.push(here);
        choice.push(best);
    }
    value.reverse();
    choice.reverse();
    let mut steps = Vec::with_capacity(slots.len());
    let mut at = start_level;
    for (t, slot) in slots.iter().enumerate() {
        let to = if value[t][at] >= INFEASIBLE {
            // Only when even standing still is impossible (it never is: level → same level
            // always passes); stay put.
            at
        } else {
            choice[t][at]
        };
        let (charge, discharge, grid) =
            transition(b, slot, levels[at], levels[to]).unwrap_or((0, 0, slot.base_grid_wh()));
        let (_, import, export, curtail) = grid_cost(slot, grid);
        steps.push(Step {
            soc_before_wh: levels[at],
            soc_after_wh: levels[to],
            charge_wh: charge,
            discharge_wh: discharge,
            import_wh: import,
            export_wh: export,
            curtail_wh: curtail,
        });
        at = to;
    }
    Schedule {
        steps,
        value_after_first: value.get(1).cloned().unwrap_or_default(),
        cost: value[0][start_level],
        levels,
        start_level,
    }
}

/// Every feasible choice for the first slot, ordered by grid energy (most export first).
pub fn first_slot_options(b: &Battery, slot: &Slot, schedule: &Schedule) -> Vec<Option1> {
    let from = schedule.levels[schedule.start_level];
    let mut options: Vec<Option1> = schedule
        .levels
        .iter()
        .enumerate()
        .filter_map(|(j, &to)| {
            let rest = *schedule.value_after_first.get(j)?;
            if rest >= INFEASIBLE {
                return None;
            }
            let (charge, discharge, grid) = transition(b, slot, from, to)?;
            Some(Option1 {
                level: j,
                charge_wh: charge,
                discharge_wh: discharge,
                grid_wh: grid,
                rest_cost: rest.saturating_add(discharge.saturating_mul(b.cycle_cost.0)),
            })
        })
        .collect();
    options.sort_by_key(|o| (o.grid_wh, o.level));
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn battery() -> Battery {
        Battery {
            capacity_wh: 10_000,
            soc_wh: 5_000,
            reserve_wh: 2_000,
            max_charge_wh: 1_250,
            max_discharge_wh: 1_250,
            round_trip_permille: 900,
            cycle_cost: PricePerMwh(0),
            grid_charging: true,
        }
    }

    fn slot(pv: i64, load: i64, buy: i64, sell: i64) -> Slot {
        Slot {
            pv_wh: pv,
            load_wh: load,
            buy_price: PricePerMwh(buy),
            sell_price: PricePerMwh(sell),
            export_cap_wh: 10_000,
            import_cap_wh: 10_000,
        }
    }

    #[test]
    fn charges_cheap_and_discharges_into_high_prices() {
        // Four cheap slots then four expensive ones with load: charge first, cover load later.
        let mut slots = vec![slot(0, 0, 5_000, 4_000); 4];
        slots.extend(vec![slot(0, 1_000, 40_000, 8_000); 4]);
        let s = plan(&battery(), &slots, PricePerMwh(0));
        let charged: i64 = s.steps[..4].iter().map(|x| x.charge_wh).sum();
        let discharged: i64 = s.steps[4..].iter().map(|x| x.discharge_wh).sum();
        assert!(charged > 0, "{:?}", s.steps);
        assert!(discharged >= 3_900, "{:?}", s.steps);
        // The expensive load is (almost) all covered.
        let imported_late: i64 = s.steps[4..].iter().map(|x| x.import_wh).sum();
        assert!(imported_late <= 100, "{imported_late}");
    }

    #[test]
    fn a_spread_smaller_than_the_losses_is_not_traded() {
        // Buy at 10, later avoid 10.5: 90 % round trip loses more than the 5 % spread.
        let slots = vec![
            slot(0, 0, 10_000, 8_000),
            slot(0, 0, 10_000, 8_000),
            slot(0, 1_000, 10_500, 8_000),
            slot(0, 1_000, 10_500, 8_000),
        ];
        let mut b = battery();
        b.soc_wh = b.reserve_wh;
        let s = plan(&b, &slots, PricePerMwh(0));
        assert!(s.steps.iter().all(|x| x.charge_wh == 0), "{:?}", s.steps);
        // Without grid charging nothing is charged even when the spread pays.
        b.grid_charging = false;
        let slots = vec![slot(0, 0, 1_000, 800), slot(0, 1_000, 40_000, 8_000)];
        assert!(
            plan(&b, &slots, PricePerMwh(0))
                .steps
                .iter()
                .all(|x| x.charge_wh == 0)
        );
    }

    #[test]
    fn negative_prices_curtail_instead_of_exporting() {
        let mut b = battery();
        b.soc_wh = b.capacity_wh;
        let s = plan(&b, &[slot(3_000, 500, 30_000, -2_000)], PricePerMwh(0));
        assert_eq!(s.steps[0].export_wh, 0);
        assert_eq!(s.steps[0].curtail_wh, 2_500);
    }

    #[test]
    fn levels_hold_the_soc_and_reserve() {
        let mut b = battery();
        b.soc_wh = 3_333;
        let l = levels(&b);
        assert!(l.len() as i64 <= MAX_STATES + 2);
        assert!(l.contains(&3_333) && l.contains(&2_000) && l.contains(&10_000));
        assert!(l.windows(2).all(|w| w[0] < w[1]));
        // Below the reserve: the grid starts at the SoC.
        b.soc_wh = 500;
        assert_eq!(levels(&b)[0], 500);
    }

    fn arb_slot() -> impl Strategy<Value = Slot> {
        (
            0i64..3_000,
            0i64..2_000,
            -5_000i64..50_000,
            -5_000i64..20_000,
            0i64..2_000,
            0i64..3_000,
        )
            .prop_map(|(pv, load, buy, sell, export_cap, import_cap)| Slot {
                pv_wh: pv,
                load_wh: load,
                buy_price: PricePerMwh(buy),
                sell_price: PricePerMwh(sell.min(buy)),
                export_cap_wh: export_cap,
                import_cap_wh: import_cap,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn never_violates_reserve_power_or_envelope(
            capacity in 1_000i64..20_000,
            soc_share in 0i64..=1000,
            reserve_share in 0i64..=500,
            power in 100i64..3_000,
            rt in 700i64..=1000,
            grid_charging: bool,
            slots in proptest::collection::vec(arb_slot(), 1..24),
        ) {
            let b = Battery {
                capacity_wh: capacity,
                soc_wh: capacity * soc_share / 1000,
                reserve_wh: capacity * reserve_share / 1000,
                max_charge_wh: power,
                max_discharge_wh: power,
                round_trip_permille: rt,
                cycle_cost: PricePerMwh(500),
                grid_charging,
            };
            let s = plan(&b, &slots, PricePerMwh(5_000));
            prop_assert_eq!(s.steps.len(), slots.len());
            prop_assert_eq!(s.steps[0].soc_before_wh, b.soc_wh);
            for (step, slot) in s.steps.iter().zip(&slots) {
                prop_assert!(step.soc_after_wh <= b.capacity_wh);
                prop_assert!(step.charge_wh <= b.max_charge_wh && step.discharge_wh <= b.max_discharge_wh);
                prop_assert!(step.charge_wh == 0 || step.discharge_wh == 0);
                if step.discharge_wh > 0 {
                    // Discharging never goes below the reserve, nor pushes export over the envelope.
                    prop_assert!(step.soc_after_wh >= b.reserve_wh);
                    prop_assert!(step.export_wh + step.curtail_wh <= slot.export_cap_wh.max(0));
                }
                if step.charge_wh > 0 {
                    prop_assert!(step.import_wh <= slot.import_cap_wh.max(slot.base_grid_wh()));
                    if !grid_charging {
                        prop_assert!(step.charge_wh <= (slot.pv_wh - slot.load_wh).max(0));
                    }
                }
                // Below the reserve only when it started there, and never lower.
                prop_assert!(step.soc_after_wh >= b.reserve_wh.min(step.soc_before_wh));
                // Export never exceeds the envelope and is never made at a price ≤ 0.
                prop_assert!(step.export_wh <= slot.export_cap_wh.max(0));
                prop_assert!(slot.sell_price.0 > 0 || step.export_wh == 0);
                // Energy balance at the home.
                prop_assert_eq!(
                    slot.pv_wh - step.curtail_wh + step.import_wh + step.discharge_wh,
                    slot.load_wh + step.export_wh + step.charge_wh
                );
            }
            for w in s.steps.windows(2) {
                prop_assert_eq!(w[0].soc_after_wh, w[1].soc_before_wh);
            }
        }

        #[test]
        fn the_plan_is_no_worse_than_doing_nothing(
            slots in proptest::collection::vec(arb_slot(), 1..16),
        ) {
            let b = battery();
            let s = plan(&b, &slots, PricePerMwh(0));
            // Standing still is always feasible, so the optimum costs at most that.
            let idle: i64 = slots.iter().map(|x| grid_cost(x, x.base_grid_wh()).0).sum();
            prop_assert!(s.cost <= idle, "{} > {}", s.cost, idle);
        }
    }
}
