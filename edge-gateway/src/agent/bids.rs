//! Bid curves from the battery schedule's marginal values: several price–quantity steps per
//! side instead of one price for the whole forecast position.
//!
//! For the interval being bid for, every feasible end-of-slot SoC level gives a grid energy
//! `g` (+ import, − export) and a cost that does not depend on the market: wear plus the
//! schedule's cost-to-go from that level ([`super::schedule::first_slot_options`]). On the
//! lower convex hull of those points (`g`, cost), the slope between two neighbours is the
//! household's **marginal value** of one more Wh from the grid there (price per MWh). Then:
//!
//! - a hull segment on the **export** side becomes a sell step at its marginal value: battery
//!   energy is sold only above its opportunity value, and PV surplus that the schedule would
//!   store only above what storing it is worth;
//! - a segment on the **import** side becomes a buy step at its marginal value: energy to charge
//!   is bought only below its opportunity value;
//! - export that remains even when the battery charges as fast as it may is PV that cannot be
//!   stored: a sell step at the floor; import that remains even when it discharges as fast as
//!   it may is load that must be met: a buy step at the ceiling.
//!
//! The floor is the highest of the homeowner's `min_sell_price`, the utility's feed-in price
//! (unsold PV is exported at feed-in anyway) and 1 (never pay to export); the ceiling is the
//! lowest of `max_buy_price` and the retail price. Steps are monotone by construction: sell
//! prices rise and buy prices fall with the quantity offered. At most [`MAX_STEPS`] steps per
//! side, each at least `min_order_wh`; merged steps take the dearer sell price or the cheaper
//! buy price (never a step the household would regret). Sells are capped in total at the
//! envelope's export limit.
//!
//! # Orders and nonces
//! Each step is one order of the interval, with the nonce `m × 64 + 32 + 16 × side + index`,
//! where `m` is the interval start in Unix minutes, `side` is 0 for buy and 1 for sell, and
//! `index` counts the side's steps (0 = the cheapest sell, the dearest buy). So every
//! (interval, side, step) has its own nonce, a re-submission after a restart repeats the same
//! nonces (the market answers `replayed_nonce`, a duplicate), and the range never meets the
//! simple strategy's (`m × 4 + 1` or `+ 2`).

use gridmesh_protocol::PricePerMwh;
use gridmesh_protocol::order::Side;

use super::schedule::Option1;

/// At most this many steps per side.
pub const MAX_STEPS: usize = 4;

/// One price–quantity step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BidStep {
    /// Buy or sell.
    pub side: Side,
    /// Wh.
    pub quantity: i64,
    /// Limit price.
    pub price: PricePerMwh,
}

/// The limits the curve must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurveLimits {
    /// Lowest sell price (already the highest of `min_sell_price`, feed-in and 1).
    pub floor: PricePerMwh,
    /// Highest buy price (already the lowest of `max_buy_price` and retail).
    pub ceiling: PricePerMwh,
    /// Most export the home may sell (the envelope), Wh.
    pub export_cap_wh: i64,
    /// Smallest order, Wh (at least 1).
    pub min_order_wh: i64,
}

/// The lower convex hull of (grid Wh, cost), ordered by grid energy.
fn hull(options: &[Option1]) -> Vec<(i64, i64)> {
    let mut points: Vec<(i64, i64)> = Vec::new();
    for o in options {
        match points.last_mut() {
            Some(last) if last.0 == o.grid_wh => last.1 = last.1.min(o.rest_cost),
            _ => points.push((o.grid_wh, o.rest_cost)),
        }
    }
    points.sort();
    let mut h: Vec<(i64, i64)> = Vec::new();
    for p in points {
        while h.len() >= 2 {
            let (a, b) = (h[h.len() - 2], h[h.len() - 1]);
            // b is above the segment a–p: drop it (cross product in i128).
            let cross = i128::from(b.0 - a.0) * i128::from(p.1 - a.1)
                - i128::from(b.1 - a.1) * i128::from(p.0 - a.0);
            if cross <= 0 {
                h.pop();
            } else {
                break;
            }
        }
        h.push(p);
    }
    // Only the decreasing part matters: drawing more from the grid than where the cost stops
    // falling is never worth a positive price.
    h
}

/// The bid curve from the first slot's options (see the module docs).
pub fn curve(options: &[Option1], limits: &CurveLimits) -> Vec<BidStep> {
    let h = hull(options);
    let (Some(&(g_min, _)), Some(&(g_max, _))) = (h.first(), h.last()) else {
        return Vec::new();
    };
    let mut sells: Vec<(i64, i64)> = Vec::new(); // (quantity, price), cheapest first
    let mut buys: Vec<(i64, i64)> = Vec::new(); // dearest first
    // Unavoidable positions.
    if g_max < 0 {
        sells.push((-g_max, limits.floor.0));
    }
    if g_min > 0 {
        buys.push((g_min, limits.ceiling.0));
    }
    for w in h.windows(2) {
        let ((g0, c0), (g1, c1)) = (w[0], w[1]);
        let dg = g1 - g0;
        if dg <= 0 {
            continue;
        }
        // Value of one more Wh from the grid on this segment, price per MWh.
        let value = ((c0 - c1) as f64 / dg as f64).round() as i64;
        let export_part = (-g0).max(0) - (-g1).max(0);
        let import_part = g1.max(0) - g0.max(0);
        if export_part > 0 {
            sells.push((export_part, value.max(limits.floor.0)));
        }
        if import_part > 0 {
            buys.push((import_part, value.min(limits.ceiling.0)));
        }
    }
    // Segments nearer zero come first in `h`; sells must be ordered cheapest first (the
    // segment nearest zero has the highest value), buys dearest first.
    sells.reverse();
    sells.sort_by_key(|s| s.1);
    buys.sort_by_key(|b| std::cmp::Reverse(b.1));
    // The envelope caps the total offered.
    let mut left = limits.export_cap_wh.max(0);
    for s in &mut sells {
        s.0 = s.0.min(left);
        left -= s.0;
    }
    sells.retain(|s| s.0 > 0);
    // Never buy at or above a price the household sells at (a segment across zero gives both
    // sides one value): buys stay strictly below the cheapest sell.
    if let Some(cheapest) = sells.first().map(|s| s.1) {
        for b in &mut buys {
            b.1 = b.1.min(cheapest - 1);
        }
    }
    let mut out = merge(Side::Sell, &sells, limits.min_order_wh, |a, b| a.max(b));
    out.extend(merge(Side::Buy, &buys, limits.min_order_wh, |a, b| {
        a.min(b)
    }));
    out
}

/// Merges equal or small steps (and more than [`MAX_STEPS`]) keeping the conservative price.
fn merge(
    side: Side,
    steps: &[(i64, i64)],
    min_order_wh: i64,
    pick: impl Fn(i64, i64) -> i64,
) -> Vec<BidStep> {
    let min = min_order_wh.max(1);
    let mut merged: Vec<(i64, i64)> = Vec::new();
    let mut pending: Option<(i64, i64)> = None;
    for &(q, p) in steps {
        let (pq, pp) = pending.take().unwrap_or((0, p));
        let current = (pq + q, pick(pp, p));
        match merged.last_mut() {
            Some(last) if last.1 == current.1 => last.0 += current.0,
            _ if current.0 < min => pending = Some(current),
            _ => merged.push(current),
        }
    }
    if let Some((q, p)) = pending {
        match merged.last_mut() {
            Some(last) => *last = (last.0 + q, pick(last.1, p)),
            None if q >= min => merged.push((q, p)),
            None => {}
        }
    }
    while merged.len() > MAX_STEPS {
        // Merge the pair with the smallest combined quantity.
        let at = (0..merged.len() - 1)
            .min_by_key(|&i| merged[i].0 + merged[i + 1].0)
            .expect("more than one step");
        let b = merged.remove(at + 1);
        merged[at] = (merged[at].0 + b.0, pick(merged[at].1, b.1));
    }
    merged
        .into_iter()
        .map(|(quantity, price)| BidStep {
            side,
            quantity,
            price: PricePerMwh(price),
        })
        .collect()
}

/// The nonce of step `index` of `side` for the interval starting at `start_unix` (see the
/// module docs).
pub fn nonce(start_unix: i64, side: Side, index: usize) -> u64 {
    let side_bit = match side {
        Side::Buy => 0,
        Side::Sell => 16,
    };
    (start_unix.max(0) / 60) as u64 * 64 + 32 + side_bit + (index as u64 % 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::schedule::{self, Battery, Slot};
    use proptest::prelude::*;

    fn limits() -> CurveLimits {
        CurveLimits {
            floor: PricePerMwh(8_000),
            ceiling: PricePerMwh(30_000),
            export_cap_wh: 100_000,
            min_order_wh: 10,
        }
    }

    fn battery(soc: i64) -> Battery {
        Battery {
            capacity_wh: 10_000,
            soc_wh: soc,
            reserve_wh: 2_000,
            max_charge_wh: 1_250,
            max_discharge_wh: 1_250,
            round_trip_permille: 900,
            cycle_cost: PricePerMwh(1_000),
            grid_charging: true,
        }
    }

    fn slot(pv: i64, load: i64, buy: i64) -> Slot {
        Slot {
            pv_wh: pv,
            load_wh: load,
            buy_price: PricePerMwh(buy),
            sell_price: PricePerMwh(8_000),
            export_cap_wh: 10_000,
            import_cap_wh: 10_000,
        }
    }

    fn curve_for(b: &Battery, slots: &[Slot], l: &CurveLimits) -> Vec<BidStep> {
        let s = schedule::plan(b, slots, PricePerMwh(8_000));
        curve(&schedule::first_slot_options(b, &slots[0], &s), l)
    }

    fn assert_monotone(steps: &[BidStep], l: &CurveLimits) {
        let sells: Vec<_> = steps.iter().filter(|s| s.side == Side::Sell).collect();
        let buys: Vec<_> = steps.iter().filter(|s| s.side == Side::Buy).collect();
        assert!(
            sells.windows(2).all(|w| w[0].price < w[1].price),
            "{steps:?}"
        );
        assert!(
            buys.windows(2).all(|w| w[0].price > w[1].price),
            "{steps:?}"
        );
        assert!(
            sells
                .iter()
                .all(|s| s.price >= l.floor && s.quantity >= l.min_order_wh)
        );
        assert!(
            buys.iter()
                .all(|s| s.price <= l.ceiling && s.quantity >= l.min_order_wh)
        );
        assert!(sells.len() <= MAX_STEPS && buys.len() <= MAX_STEPS);
        assert!(sells.iter().map(|s| s.quantity).sum::<i64>() <= l.export_cap_wh);
    }

    #[test]
    fn midday_surplus_with_an_expensive_evening() {
        // Sunny now, expensive evening load later: PV that fits in the battery is offered only
        // above what storing it is worth (≈ 0.9 × 30 c), the rest at the floor.
        let mut slots = vec![slot(3_000, 500, 9_000)];
        slots.extend(vec![slot(0, 1_000, 30_000); 12]);
        let l = limits();
        let steps = curve_for(&battery(2_000), &slots, &l);
        assert_monotone(&steps, &l);
        let sells: Vec<_> = steps.iter().filter(|s| s.side == Side::Sell).collect();
        // What the battery cannot take in the slot (1 250 Wh drawn at most, on a grid of 80 Wh
        // SoC levels, so up to one level more) sells at the floor.
        assert_eq!(sells[0].price, l.floor);
        assert!(
            (1_250..=1_250 + 90).contains(&sells[0].quantity),
            "{steps:?}"
        );
        // The stored part only at a high price.
        let total: i64 = sells.iter().map(|s| s.quantity).sum();
        assert_eq!(total, 2_500);
        assert!(sells.last().unwrap().price.0 > 20_000, "{steps:?}");
    }

    #[test]
    fn a_full_battery_before_a_cheap_night_sells_its_energy() {
        // Full battery, evening with PV gone, nothing expensive ahead (buy 9 c all night):
        // discharge energy is offered at its low opportunity value.
        let slots = vec![slot(0, 300, 9_000); 8];
        let l = limits();
        let steps = curve_for(&battery(10_000), &slots, &l);
        assert_monotone(&steps, &l);
        assert!(steps.iter().any(|s| s.side == Side::Sell), "{steps:?}");
        // The load is met first: the household never sells so much it must buy at retail.
        assert!(
            steps
                .iter()
                .all(|s| s.side != Side::Buy || s.price <= l.ceiling)
        );
    }

    #[test]
    fn empty_battery_buys_its_load_at_the_ceiling_and_charging_only_cheaply() {
        let mut slots = vec![slot(0, 500, 9_000)];
        slots.extend(vec![slot(0, 1_000, 30_000); 8]);
        let l = limits();
        let steps = curve_for(&battery(2_000), &slots, &l);
        assert_monotone(&steps, &l);
        let buys: Vec<_> = steps.iter().filter(|s| s.side == Side::Buy).collect();
        assert_eq!((buys[0].quantity, buys[0].price), (500, l.ceiling));
        // Charging energy is bid below the ceiling.
        assert!(buys.len() >= 2 && buys[1].price < l.ceiling, "{steps:?}");
        // Without grid charging only the load is bought.
        let mut b = battery(2_000);
        b.grid_charging = false;
        let steps = curve_for(&b, &slots, &l);
        let buys: Vec<_> = steps.iter().filter(|s| s.side == Side::Buy).collect();
        assert_eq!(buys.len(), 1);
        assert_eq!(buys[0].quantity, 500);
    }

    #[test]
    fn nonces_are_distinct_per_interval_side_and_step() {
        let t = 1_782_000_000 / 900 * 900;
        let mut seen = std::collections::BTreeSet::new();
        for start in [t, t + 900, t + 1800] {
            for side in [Side::Buy, Side::Sell] {
                for i in 0..MAX_STEPS {
                    assert!(seen.insert(nonce(start, side, i)));
                }
            }
            // Never the simple strategy's nonces.
            assert!(!seen.contains(&((start / 60) as u64 * 4 + 1)));
            assert!(!seen.contains(&((start / 60) as u64 * 4 + 2)));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn curves_are_monotone_and_within_limits(
            soc in 0i64..=10_000,
            pv in 0i64..4_000,
            load in 0i64..2_000,
            prices in proptest::collection::vec(8_000i64..40_000, 2..16),
            cap in 0i64..3_000,
            floor in 1i64..15_000,
            min_order in 1i64..300,
        ) {
            let slots: Vec<Slot> = prices.iter().enumerate().map(|(k, p)| {
                if k == 0 { slot(pv, load, *p) } else { slot(0, load, *p) }
            }).collect();
            let l = CurveLimits {
                floor: PricePerMwh(floor),
                ceiling: PricePerMwh(30_000),
                export_cap_wh: cap,
                min_order_wh: min_order,
            };
            let steps = curve_for(&battery(soc), &slots, &l);
            let sells: Vec<_> = steps.iter().filter(|s| s.side == Side::Sell).collect();
            let buys: Vec<_> = steps.iter().filter(|s| s.side == Side::Buy).collect();
            // More quantity only at better prices.
            prop_assert!(sells.windows(2).all(|w| w[0].price < w[1].price));
            prop_assert!(buys.windows(2).all(|w| w[0].price > w[1].price));
            prop_assert!(sells.iter().all(|s| s.price >= l.floor && s.quantity >= min_order));
            prop_assert!(buys.iter().all(|s| s.price <= l.ceiling && s.quantity >= min_order));
            prop_assert!(sells.len() <= MAX_STEPS && buys.len() <= MAX_STEPS);
            prop_assert!(sells.iter().map(|s| s.quantity).sum::<i64>() <= cap);
            // Never more offered than the battery and PV can give, nor bought than they can take.
            let most_export = (pv - load).max(0) + 1_250;
            prop_assert!(sells.iter().map(|s| s.quantity).sum::<i64>() <= most_export);
            let most_import = (load - pv).max(0) + 1_250;
            prop_assert!(buys.iter().map(|s| s.quantity).sum::<i64>() <= most_import);
            // A home that buys at a price does not sell at a lower one (no self-trading).
            if let (Some(cheapest_sell), Some(dearest_buy)) = (sells.first(), buys.first()) {
                prop_assert!(cheapest_sell.price > dearest_buy.price);
            }
        }
    }
}
