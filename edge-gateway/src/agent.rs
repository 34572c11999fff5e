//! The household bidding agent, two strategies (`agent.strategy`):
//!
//! - `simple`: before each gate closure it forecasts the coming interval's net position from
//!   recent intervals and the same time of day on previous days, and submits signed orders
//!   within the homeowner's limits (an ask for surplus at no less than the minimum sell price,
//!   a bid for deficit at no more than the maximum buy price, battery energy above the reserve
//!   offered only when the gateway may steer the battery) ([`plan`]);
//! - `scheduled`: pure forecasts of PV, load and prices for the next day ([`forecast`]), a
//!   battery schedule by dynamic programming over the state of charge re-planned every
//!   interval ([`schedule`]), and bid curves of several steps per side from its marginal values
//!   ([`bids`]) ([`plan_scheduled`]).

pub mod bids;
pub mod forecast;
pub mod schedule;

use crate::config::{AgentConfig, SiteConfig};
use crate::outbox::HistoryRow;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::order::{Order, Side};
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, Wh, ZoneId};
use std::collections::BTreeMap;

/// The forecast net export (export − import) of `target`, in Wh, or `None` without history.
///
/// Mean of the last four intervals (of the last eight interval lengths), averaged with the mean of the same slot on up to seven
/// previous days when those exist.
pub fn forecast_net(history: &[HistoryRow], target: &Interval) -> Option<i64> {
    let net = |r: &HistoryRow| r.deltas.grid_export.0 - r.deltas.grid_import.0;
    let mut recent: Vec<&HistoryRow> = history
        .iter()
        .filter(|r| {
            r.interval_start < target.start_unix()
                && r.interval_start >= target.start_unix() - 8 * target.length().seconds()
        })
        .collect();
    recent.sort_by_key(|r| std::cmp::Reverse(r.interval_start));
    recent.truncate(4);
    let recent_mean = (!recent.is_empty())
        .then(|| recent.iter().map(|r| net(r)).sum::<i64>() / recent.len() as i64);
    let same_slot: Vec<i64> = (1..=7)
        .filter_map(|d| {
            let start = target.start_unix() - d * 86_400;
            history.iter().find(|r| r.interval_start == start).map(net)
        })
        .collect();
    let slot_mean =
        (!same_slot.is_empty()).then(|| same_slot.iter().sum::<i64>() / same_slot.len() as i64);
    match (recent_mean, slot_mean) {
        (Some(a), Some(b)) => Some((a + b) / 2),
        (a, b) => a.or(b),
    }
}

/// Energy the battery may sell in one interval: above the reserve and within its power.
pub fn battery_sellable(
    config: &AgentConfig,
    soc_permille: Option<u16>,
    battery_w: u32,
    interval: &Interval,
) -> i64 {
    if !config.steer_battery || config.battery_capacity_wh <= 0 {
        return 0;
    }
    let Some(soc) = soc_permille else { return 0 };
    let reserve = i64::from(config.battery_reserve_pct) * 10;
    let above = (i64::from(soc) - reserve).max(0) * config.battery_capacity_wh / 1000;
    let by_power = i64::from(battery_w) * interval.length().seconds() / 3600;
    above.min(by_power)
}

/// The orders for `target`, signed for the market `zone` (`gridmesh/order/v2`).
#[allow(clippy::too_many_arguments)]
pub fn plan(
    zone: ZoneId,
    config: &AgentConfig,
    participant: &ParticipantId,
    node: &NodeId,
    target: Interval,
    history: &[HistoryRow],
    soc_permille: Option<u16>,
    battery_w: u32,
) -> Vec<Order> {
    let Some(net) = forecast_net(history, &target) else {
        return Vec::new();
    };
    let sell = net.max(0) + battery_sellable(config, soc_permille, battery_w, &target);
    let buy = (-net).max(0);
    let nonce_base = (target.start_unix() / 60) as u64 * 4;
    let mut orders = Vec::new();
    for (side, quantity, price, code) in [
        (Side::Sell, sell, config.min_sell_price, 2),
        (Side::Buy, buy, config.max_buy_price, 1),
    ] {
        if quantity >= config.min_order_wh.max(1) {
            orders.push(Order {
                zone: Some(zone),
                participant: participant.clone(),
                node: node.clone(),
                interval: target,
                side,
                quantity: Wh(quantity),
                limit_price: price,
                nonce: nonce_base + code,
            });
        }
    }
    orders
}

/// What the `scheduled` strategy needs besides the config.
#[derive(Debug, Clone, Copy)]
pub struct ScheduledInputs<'a> {
    /// The gateway's signed intervals (newest first or any order).
    pub history: &'a [HistoryRow],
    /// Cleared prices at the home's node by interval start (Unix seconds).
    pub cleared: &'a BTreeMap<i64, PricePerMwh>,
    /// The battery's SoC now, per mille (`None`: no battery read).
    pub soc_permille: Option<u16>,
    /// Site facts (inverter and battery power, coordinates).
    pub site: &'a SiteConfig,
    /// The export allowed in the target interval (envelope in force or default), Wh.
    pub export_cap: Wh,
    /// The default envelope's export and import per interval, Wh (for the later slots).
    pub default_caps: (Wh, Wh),
}

/// The `scheduled` strategy's decision for one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledPlan {
    /// The signed-to-be orders: the bid curve's steps.
    pub orders: Vec<Order>,
    /// Forecast grid energy of the target without the battery (+ import, − export), Wh.
    pub base_grid_wh: i64,
    /// The schedule's first step (what the battery is planned to do).
    pub first: schedule::Step,
    /// Whether the battery is steered (a battery, its SoC known, `steer_battery` on).
    pub battery_modelled: bool,
}

/// The schedule's horizon, seconds: one day from the target interval.
pub const HORIZON_S: i64 = 86_400;

/// The `scheduled` strategy: forecasts for the next day ([`forecast`]), the battery schedule
/// ([`schedule::plan`]) and the bid curve of the target interval ([`bids::curve`]) as orders
/// (nonces per [`bids::nonce`]).
///
/// Expected prices per slot: the forecast cleared price at the node, clamped to the contract's
/// feed-in ..= retail, for import (else retail); export is valued at feed-in, the price every
/// unsold Wh earns (market sales above it come through the curve). Without a steerable battery
/// the target's position is the simple strategy's net forecast (which includes what an
/// unsteered battery does by itself), bid at the floor and ceiling.
pub fn plan_scheduled(
    zone: ZoneId,
    config: &AgentConfig,
    participant: &ParticipantId,
    node: &NodeId,
    target: Interval,
    inputs: &ScheduledInputs<'_>,
) -> ScheduledPlan {
    let length_s = target.length().seconds();
    let slots_n = usize::try_from(HORIZON_S / length_s).unwrap_or(96);
    let horizon = forecast::horizon(target, slots_n);
    let feed_in = config.feed_in_price;
    let retail = config.retail_price;
    let battery_modelled = config.steer_battery
        && config.battery_capacity_wh > 0
        && inputs.soc_permille.is_some()
        && inputs.site.battery_w > 0;
    let per_slot_power = i64::from(inputs.site.battery_w) * length_s / 3600;
    let (slots, battery) = if battery_modelled {
        let pv = forecast::pv(
            inputs.history,
            inputs.site.latitude,
            inputs.site.longitude,
            inputs.site.inverter_w,
            &horizon,
        );
        let load = forecast::load(inputs.history, &horizon, 0);
        let prices = forecast::prices(inputs.cleared, &horizon);
        let slots: Vec<schedule::Slot> = (0..horizon.len())
            .map(|k| schedule::Slot {
                pv_wh: pv[k],
                load_wh: load[k],
                buy_price: prices[k].map_or(retail, |p| p.max(feed_in).min(retail)),
                sell_price: feed_in,
                export_cap_wh: if k == 0 {
                    inputs.export_cap.0
                } else {
                    inputs.default_caps.0.0
                },
                import_cap_wh: inputs.default_caps.1.0,
            })
            .collect();
        let capacity = config.battery_capacity_wh;
        let soc = i64::from(inputs.soc_permille.unwrap_or(0).min(1000)) * capacity / 1000;
        let battery = schedule::Battery {
            capacity_wh: capacity,
            soc_wh: soc,
            reserve_wh: i64::from(config.battery_reserve_pct.min(100)) * capacity / 100,
            max_charge_wh: per_slot_power,
            max_discharge_wh: per_slot_power,
            round_trip_permille: i64::from(config.round_trip_efficiency_pct) * 10,
            cycle_cost: config.cycle_cost,
            grid_charging: config.grid_charging,
        };
        (slots, battery)
    } else {
        let net = forecast_net(inputs.history, &target).unwrap_or(0);
        let slot = schedule::Slot {
            pv_wh: net.max(0),
            load_wh: (-net).max(0),
            buy_price: retail,
            sell_price: feed_in,
            export_cap_wh: inputs.export_cap.0,
            import_cap_wh: inputs.default_caps.1.0,
        };
        let none = schedule::Battery {
            capacity_wh: 0,
            soc_wh: 0,
            reserve_wh: 0,
            max_charge_wh: 0,
            max_discharge_wh: 0,
            round_trip_permille: 1000,
            cycle_cost: PricePerMwh(0),
            grid_charging: false,
        };
        (vec![slot], none)
    };
    let terminal = feed_in;
    let schedule = schedule::plan(&battery, &slots, terminal);
    let options = schedule::first_slot_options(&battery, &slots[0], &schedule);
    let limits = bids::CurveLimits {
        floor: config.min_sell_price.max(feed_in).max(PricePerMwh(1)),
        ceiling: config.max_buy_price.min(retail),
        export_cap_wh: inputs.export_cap.0,
        min_order_wh: config.min_order_wh.max(1),
    };
    let mut steps = bids::curve(&options, &limits);
    if battery_modelled {
        // The battery covers the forecast deficit by itself (steering 0 W = automatic): a buy
        // instead of discharging would not be taken and is paid back at feed-in. So the buy
        // band between the deficit left at full discharge and the whole deficit is not bid.
        let full_discharge = options.first().map_or(0, |o| o.grid_wh.max(0));
        let deficit = slots[0].base_grid_wh().max(0);
        steps = drop_buy_band(steps, full_discharge, deficit, limits.min_order_wh);
        // Likewise the battery stores the forecast surplus by itself: a sale of PV it would
        // store is not delivered (the battery charges it) and the shortfall is bought back at
        // retail. So while it can still charge, only the surplus left at full charge is sold.
        // (The battery's own power and room, not the schedule's SoC grid: it charges by itself
        // as much as it physically can.)
        let surplus = (-slots[0].base_grid_wh()).max(0);
        let room = battery.drawn_for((battery.capacity_wh - battery.soc_wh).max(0));
        let stored_by_itself = battery.max_charge_wh.min(room).max(0);
        if stored_by_itself > 0 && surplus > 0 {
            steps = cap_sell_steps(steps, surplus - stored_by_itself, limits.min_order_wh);
        }
    }
    let mut index = [0usize; 2];
    let orders = steps
        .iter()
        .map(|step| {
            let k = usize::from(step.side == Side::Sell);
            let nonce = bids::nonce(target.start_unix(), step.side, index[k]);
            index[k] += 1;
            Order {
                zone: Some(zone),
                participant: participant.clone(),
                node: node.clone(),
                interval: target,
                side: step.side,
                quantity: Wh(step.quantity),
                limit_price: step.price,
                nonce,
            }
        })
        .collect();
    ScheduledPlan {
        orders,
        base_grid_wh: slots[0].base_grid_wh(),
        first: schedule.steps.first().copied().unwrap_or_default(),
        battery_modelled,
    }
}

/// Removes the cumulative buy quantity in `from .. to` (buys ordered dearest first); what is
/// left of a step below `min_order_wh` is dropped.
fn drop_buy_band(
    steps: Vec<bids::BidStep>,
    from: i64,
    to: i64,
    min_order_wh: i64,
) -> Vec<bids::BidStep> {
    let mut at = 0i64;
    let mut out = Vec::with_capacity(steps.len());
    for mut step in steps {
        if step.side == Side::Buy {
            let (lo, hi) = (at, at + step.quantity);
            at = hi;
            let overlap = (hi.min(to) - lo.max(from)).max(0);
            step.quantity -= overlap;
            if step.quantity < min_order_wh.max(1) {
                continue;
            }
        }
        out.push(step);
    }
    out
}

/// Keeps at most `cap` Wh of sells (sells ordered cheapest first, so the dearest are cut); what
/// is left of a step below `min_order_wh` is dropped.
fn cap_sell_steps(steps: Vec<bids::BidStep>, cap: i64, min_order_wh: i64) -> Vec<bids::BidStep> {
    let mut left = cap.max(0);
    let mut out = Vec::with_capacity(steps.len());
    for mut step in steps {
        if step.side == Side::Sell {
            step.quantity = step.quantity.min(left);
            left -= step.quantity;
            if step.quantity < min_order_wh.max(1) {
                continue;
            }
        }
        out.push(step);
    }
    out
}

/// The battery power (W, + charge / − discharge, 0 = automatic) for the `scheduled` strategy
/// once the market cleared. The battery makes up the difference between the cleared position
/// (bought − sold) and the forecast grid energy without the battery (`base_grid_wh`, + import):
/// with a sale it discharges the sale **plus** the forecast deficit (the house's load is served
/// first; discharging only the sale left the sale short by the load, bought back at retail);
/// with a purchase beyond the forecast deficit it charges the rest; otherwise the battery runs
/// by itself (self-consumption). Clamped to `battery_w`.
pub fn steering_for_position(
    result: &IntervalResult,
    participant: &ParticipantId,
    base_grid_wh: i64,
    battery_w: u32,
) -> i64 {
    let cleared = |side: Side| -> i64 {
        result
            .orders
            .iter()
            .filter(|o| &o.participant == participant && o.side == side)
            .map(|o| o.cleared.0)
            .sum()
    };
    let sold = cleared(Side::Sell);
    let bought = cleared(Side::Buy);
    let length = result.interval.length().seconds();
    // + charge, − discharge: what the battery must do for the grid to show the position.
    let battery = bought - sold - base_grid_wh;
    let energy = if (sold > 0 && battery < 0) || (bought > base_grid_wh.max(0) && battery > 0) {
        battery
    } else {
        0
    };
    let limit = i64::from(battery_w);
    (energy * 3600 / length).clamp(-limit, limit)
}

/// The envelope the control loop enforces once export would cost money: with the contract's
/// feed-in price at or below 0, every Wh exported beyond the cleared sales of the interval
/// (`sold`, 0 without) is paid at that price, so the export limit becomes
/// min(envelope, sold) and the control loop curtails PV (SunSpec model 123) for the rest, the
/// self-consuming battery first. A positive feed-in price leaves the envelope as it is.
pub fn unpaid_export_curtailed(
    in_force: crate::envelope::InForce,
    feed_in_price: PricePerMwh,
    sold: Wh,
) -> crate::envelope::InForce {
    if feed_in_price.0 > 0 {
        return in_force;
    }
    crate::envelope::InForce {
        export_limit: Wh(in_force.export_limit.0.min(sold.0.max(0))),
        ..in_force
    }
}

/// Energy the household sold in `result` (all its cleared sell orders), Wh.
pub fn cleared_sales(result: &IntervalResult, participant: &ParticipantId) -> Wh {
    Wh(result
        .orders
        .iter()
        .filter(|o| &o.participant == participant && o.side == Side::Sell)
        .map(|o| o.cleared.0)
        .sum())
}

/// Caps every sell order at `cap` (the envelope's export limit: the home may not export more,
/// so it never offers more); an order capped below `min_order_wh` (at least 1 Wh) is dropped.
pub fn cap_sells(orders: &mut Vec<Order>, cap: Wh, min_order_wh: i64) {
    for o in orders.iter_mut() {
        if o.side == Side::Sell && o.quantity.0 > cap.0 {
            o.quantity = Wh(cap.0.max(0));
        }
    }
    orders.retain(|o| o.side != Side::Sell || o.quantity.0 >= min_order_wh.max(1));
}

/// The battery power (W, + charge / − discharge, 0 = automatic) that delivers the cleared
/// sale beyond the forecast surplus.
pub fn steering_for(
    result: &IntervalResult,
    participant: &ParticipantId,
    forecast_net: i64,
) -> i64 {
    let sold: i64 = result
        .orders
        .iter()
        .filter(|o| &o.participant == participant && o.side == Side::Sell)
        .map(|o| o.cleared.0)
        .sum();
    let from_battery = sold - forecast_net.max(0);
    if from_battery <= 0 {
        return 0;
    }
    -(from_battery * 3600 / result.interval.length().seconds())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::reading::Registers;

    fn zone() -> ZoneId {
        ZoneId::new("z1").unwrap()
    }

    #[test]
    fn orders_name_the_zone() {
        let target = Interval::from_unix(1_782_000_000 / 900 * 900, 15).unwrap();
        let t = target.start_unix();
        let p = ParticipantId::new("h1").unwrap();
        let n = NodeId::new("n1").unwrap();
        let orders = plan(
            zone(),
            &AgentConfig::default(),
            &p,
            &n,
            target,
            &[row(t - 900, 0, 500)],
            None,
            0,
        );
        assert!(!orders.is_empty());
        for o in &orders {
            assert_eq!(o.zone, Some(zone()));
            assert_eq!(o.layout_tag(), "gridmesh/order/v2");
        }
    }

    fn row(start: i64, import: i64, export: i64) -> HistoryRow {
        HistoryRow {
            interval_start: start,
            deltas: Registers {
                grid_import: Wh(import),
                grid_export: Wh(export),
                ..Default::default()
            },
            soc_permille: None,
        }
    }

    #[test]
    fn forecast_blends_recent_and_time_of_day() {
        let target = Interval::from_unix(1_782_000_000 / 900 * 900, 15).unwrap();
        let t = target.start_unix();
        assert_eq!(forecast_net(&[], &target), None);
        let history = vec![
            row(t - 900, 0, 400),
            row(t - 1800, 0, 200),
            row(t - 86_400, 100, 0),
        ];
        // recent mean 300, same slot yesterday −100 → 100.
        assert_eq!(forecast_net(&history, &target), Some(100));
        // A future row is ignored.
        let mut h = history.clone();
        h.push(row(t, 9999, 0));
        assert_eq!(forecast_net(&h, &target), Some(100));
    }

    #[test]
    fn sells_are_capped_at_the_envelope() {
        let target = Interval::from_unix(1_782_000_000 / 900 * 900, 15).unwrap();
        let t = target.start_unix();
        let p = ParticipantId::new("h1").unwrap();
        let n = NodeId::new("n1").unwrap();
        let config = AgentConfig::default();
        let sell = plan(
            zone(),
            &config,
            &p,
            &n,
            target,
            &[row(t - 900, 0, 500)],
            None,
            0,
        );
        let check = |cap: i64, expected: Option<i64>| {
            let mut orders = sell.clone();
            cap_sells(&mut orders, Wh(cap), config.min_order_wh);
            assert_eq!(orders.first().map(|o| o.quantity.0), expected, "cap {cap}");
        };
        check(10_000, Some(500));
        check(320, Some(320));
        check(9, None);
        check(0, None);
        // Buys are never capped by the export limit.
        let mut buy = plan(
            zone(),
            &config,
            &p,
            &n,
            target,
            &[row(t - 900, 700, 0)],
            None,
            0,
        );
        cap_sells(&mut buy, Wh(0), config.min_order_wh);
        assert_eq!(buy[0].quantity, Wh(700));
    }

    #[test]
    fn plan_respects_limits_and_reserve() {
        let target = Interval::from_unix(1_782_000_000 / 900 * 900, 15).unwrap();
        let t = target.start_unix();
        let p = ParticipantId::new("h1").unwrap();
        let n = NodeId::new("n1").unwrap();
        let mut config = AgentConfig::default();
        let orders = plan(
            zone(),
            &config,
            &p,
            &n,
            target,
            &[row(t - 900, 0, 500)],
            Some(900),
            5000,
        );
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].side, Side::Sell);
        assert_eq!(orders[0].quantity, Wh(500));
        assert_eq!(orders[0].limit_price, config.min_sell_price);
        // With steering: battery above the 20% reserve adds min(70% × 10 kWh, 5 kW × 15 min).
        config.steer_battery = true;
        config.battery_capacity_wh = 10_000;
        let orders = plan(
            zone(),
            &config,
            &p,
            &n,
            target,
            &[row(t - 900, 0, 500)],
            Some(900),
            5000,
        );
        assert_eq!(orders[0].quantity, Wh(500 + 1250));
        // Below the reserve nothing extra.
        let orders = plan(
            zone(),
            &config,
            &p,
            &n,
            target,
            &[row(t - 900, 0, 500)],
            Some(150),
            5000,
        );
        assert_eq!(orders[0].quantity, Wh(500));
        // Deficit → a bid at the max buy price.
        let orders = plan(
            zone(),
            &config,
            &p,
            &n,
            target,
            &[row(t - 900, 700, 0)],
            None,
            0,
        );
        assert_eq!(
            (orders[0].side, orders[0].quantity, orders[0].limit_price),
            (Side::Buy, Wh(700), config.max_buy_price)
        );
        assert_ne!(
            orders[0].nonce,
            plan(
                zone(),
                &config,
                &p,
                &n,
                target.next(),
                &[row(t, 700, 0)],
                None,
                0
            )[0]
            .nonce
        );
    }

    fn scheduled_config() -> (AgentConfig, SiteConfig) {
        let config = AgentConfig {
            strategy: crate::config::AgentStrategy::Scheduled,
            steer_battery: true,
            battery_capacity_wh: 10_000,
            ..AgentConfig::default()
        };
        let site = SiteConfig {
            inverter_w: 6_000,
            battery_w: 5_000,
            latitude: 48.1,
            longitude: 11.6,
        };
        (config, site)
    }

    /// Yesterday's intervals before `t` at a sunny site (48.1 N, 11.6 E): PV `peak_wh` per
    /// interval at the zenith, consumption 200 Wh per interval, no battery use.
    fn sunny_history(t: i64, peak_wh: f64) -> Vec<HistoryRow> {
        (1..=96)
            .map(|k| {
                let start = t - k * 900;
                let i = Interval::from_unix(start, 15).unwrap();
                let pv = (forecast::clear_sky(48.1, 11.6, &i) * peak_wh) as i64;
                let mut r = row(start, 0, 0);
                r.deltas.pv = Wh(pv);
                // Consumption 200 Wh per interval: PV beyond it is exported.
                if pv >= 200 {
                    r.deltas.grid_export = Wh(pv - 200);
                } else {
                    r.deltas.grid_import = Wh(200 - pv);
                }
                r
            })
            .collect()
    }

    /// Regression (backtest, issue 19): with the battery able to charge, a sale of PV that the
    /// self-consuming battery stores anyway was not delivered and the shortfall was bought back
    /// at retail. Only the surplus left at full charge is offered until the battery is full.
    #[test]
    fn pv_the_battery_stores_by_itself_is_not_offered() {
        let (config, mut site) = scheduled_config();
        // A 2 kW battery: it takes 500 Wh of the ~1 100 Wh surplus per interval.
        site.battery_w = 2_000;
        let target = Interval::parse("2026-06-21T11:00:00Z", 15).unwrap();
        let history = sunny_history(target.start_unix(), 1_500.0);
        let cleared = BTreeMap::new();
        let inputs = |soc| ScheduledInputs {
            history: &history,
            cleared: &cleared,
            soc_permille: Some(soc),
            site: &site,
            export_cap: Wh(100_000),
            default_caps: (Wh(100_000), Wh(100_000)),
        };
        let p = ParticipantId::new("h1").unwrap();
        let n = NodeId::new("n1").unwrap();
        let offered = |plan: &ScheduledPlan| -> i64 {
            plan.orders
                .iter()
                .filter(|o| o.side == Side::Sell)
                .map(|o| o.quantity.0)
                .sum()
        };
        let half = plan_scheduled(zone(), &config, &p, &n, target, &inputs(500));
        let surplus = -half.base_grid_wh;
        let max_charge = i64::from(site.battery_w) / 4;
        assert!(
            surplus > max_charge,
            "a surplus above the battery's power: {half:?}"
        );
        assert!(
            offered(&half) <= surplus - max_charge,
            "only what the battery cannot take: {half:?}"
        );
        // A full battery stores nothing: the whole surplus is offered (and battery energy).
        let full = plan_scheduled(zone(), &config, &p, &n, target, &inputs(1000));
        assert!(offered(&full) >= surplus, "{full:?}");
        // The cap keeps the cheapest steps.
        let step = |side: Side, quantity: i64, price: i64| bids::BidStep {
            side,
            quantity,
            price: PricePerMwh(price),
        };
        let steps = vec![
            step(Side::Sell, 300, 8_000),
            step(Side::Sell, 500, 12_000),
            step(Side::Buy, 100, 7_000),
        ];
        assert_eq!(
            cap_sell_steps(steps.clone(), 400, 10),
            vec![
                step(Side::Sell, 300, 8_000),
                step(Side::Sell, 100, 12_000),
                step(Side::Buy, 100, 7_000)
            ]
        );
        assert_eq!(
            cap_sell_steps(steps, 305, 10),
            vec![step(Side::Sell, 300, 8_000), step(Side::Buy, 100, 7_000)]
        );
    }

    #[test]
    fn scheduled_bids_curves_with_their_own_nonces_and_caps() {
        let (config, site) = scheduled_config();
        // A June day at 11:00 UTC, yesterday's PV history: the sun is up.
        let target = Interval::parse("2026-06-21T11:00:00Z", 15).unwrap();
        let history = sunny_history(target.start_unix(), 1_500.0);
        let cleared = BTreeMap::new();
        let inputs = ScheduledInputs {
            history: &history,
            cleared: &cleared,
            soc_permille: Some(1000),
            site: &site,
            export_cap: Wh(100_000),
            default_caps: (Wh(100_000), Wh(100_000)),
        };
        let p = ParticipantId::new("h1").unwrap();
        let n = NodeId::new("n1").unwrap();
        let plan = plan_scheduled(zone(), &config, &p, &n, target, &inputs);
        assert!(plan.battery_modelled);
        assert!(plan.base_grid_wh < 0, "midday surplus: {plan:?}");
        let sells: Vec<&Order> = plan
            .orders
            .iter()
            .filter(|o| o.side == Side::Sell)
            .collect();
        assert!(sells.len() >= 2, "{plan:?}");
        assert!(
            sells
                .windows(2)
                .all(|w| w[0].limit_price < w[1].limit_price)
        );
        assert!(sells.iter().all(|o| o.limit_price >= config.feed_in_price));
        let nonces: std::collections::BTreeSet<u64> = plan.orders.iter().map(|o| o.nonce).collect();
        assert_eq!(nonces.len(), plan.orders.len());
        assert!(
            plan.orders
                .iter()
                .all(|o| o.zone == Some(zone()) && o.interval == target)
        );
        // The envelope caps what is offered.
        let capped = plan_scheduled(
            zone(),
            &config,
            &p,
            &n,
            target,
            &ScheduledInputs {
                export_cap: Wh(300),
                ..inputs
            },
        );
        let offered: i64 = capped
            .orders
            .iter()
            .filter(|o| o.side == Side::Sell)
            .map(|o| o.quantity.0)
            .sum();
        assert!(offered <= 300, "{capped:?}");
        // Without steering the battery is not modelled: the net forecast at the floor.
        let simple_battery = AgentConfig {
            steer_battery: false,
            ..config.clone()
        };
        let plain = plan_scheduled(zone(), &simple_battery, &p, &n, target, &inputs);
        assert!(!plain.battery_modelled);
        assert_eq!(plain.orders.len(), 1);
        assert_eq!(
            plain.orders[0].limit_price,
            config.min_sell_price.max(config.feed_in_price)
        );
        // No history at all: nothing to sell or buy without a battery.
        let empty = plan_scheduled(
            zone(),
            &simple_battery,
            &p,
            &n,
            target,
            &ScheduledInputs {
                history: &[],
                ..inputs
            },
        );
        assert!(empty.orders.is_empty());
    }

    #[test]
    fn scheduled_steering_follows_the_cleared_position() {
        let target = Interval::parse("2026-06-21T11:00:00Z", 15).unwrap();
        let p = ParticipantId::new("h1").unwrap();
        let order = |side: Side, cleared: i64| gridmesh_protocol::market::ClearedOrder {
            order_id: "x".into(),
            participant: p.clone(),
            node: NodeId::new("n1").unwrap(),
            side,
            quantity: Wh(cleared),
            limit_price: PricePerMwh(9_000),
            cleared: Wh(cleared),
            price: PricePerMwh(9_000),
        };
        let result = |orders: Vec<gridmesh_protocol::market::ClearedOrder>| IntervalResult {
            interval: target,
            zone: "z1".into(),
            cleared_at: target.start(),
            prices: Default::default(),
            orders,
            trades: vec![],
            utility_import: Wh(0),
            utility_export: Wh(0),
            flows: vec![],
            welfare: gridmesh_protocol::Money(0),
            network: gridmesh_protocol::grid::Network {
                root: NodeId::new("sub").unwrap(),
                branches: vec![],
                utility: Default::default(),
            },
            envelopes: vec![],
        };
        // Sold 1 000 Wh with 400 Wh of forecast surplus: discharge 600 Wh = 2 400 W.
        assert_eq!(
            steering_for_position(&result(vec![order(Side::Sell, 1_000)]), &p, -400, 5_000),
            -2_400
        );
        // Bought 1 000 Wh to charge on top of 200 Wh of load: charge 800 Wh = 3 200 W.
        assert_eq!(
            steering_for_position(&result(vec![order(Side::Buy, 1_000)]), &p, 200, 5_000),
            3_200
        );
        // Clamped to the battery's power.
        assert_eq!(
            steering_for_position(&result(vec![order(Side::Buy, 5_000)]), &p, 0, 5_000),
            5_000
        );
        // Within the forecast position: automatic.
        assert_eq!(
            steering_for_position(&result(vec![order(Side::Sell, 300)]), &p, -400, 5_000),
            0
        );
        assert_eq!(steering_for_position(&result(vec![]), &p, 700, 5_000), 0);
        // Regression (backtest, issue 19): a sale in the evening with 300 Wh of forecast load
        // discharges the sale and the load (was only the sale: the load took 300 Wh of it,
        // a shortfall bought back at retail).
        assert_eq!(
            steering_for_position(&result(vec![order(Side::Sell, 500)]), &p, 300, 5_000),
            -3_200
        );
        // A purchase within the forecast deficit: the battery covers the rest by itself.
        assert_eq!(
            steering_for_position(&result(vec![order(Side::Buy, 200)]), &p, 700, 5_000),
            0
        );
    }

    #[test]
    fn export_is_curtailed_beyond_the_sales_when_it_costs_money() {
        let in_force = crate::envelope::InForce {
            interval: Interval::parse("2026-06-21T11:00:00Z", 15).unwrap(),
            source: gridmesh_protocol::envelope::EnvelopeSource::Market,
            export_limit: Wh(900),
            import_limit: Wh(2_000),
        };
        // Paid feed-in: the envelope as it is.
        assert_eq!(
            unpaid_export_curtailed(in_force.clone(), PricePerMwh(8_000), Wh(0)),
            in_force
        );
        // Feed-in 0 or below: export only what was sold, never above the envelope.
        for price in [0, -3_000] {
            let p = PricePerMwh(price);
            assert_eq!(
                unpaid_export_curtailed(in_force.clone(), p, Wh(0)).export_limit,
                Wh(0)
            );
            assert_eq!(
                unpaid_export_curtailed(in_force.clone(), p, Wh(400)).export_limit,
                Wh(400)
            );
            let capped = unpaid_export_curtailed(in_force.clone(), p, Wh(5_000));
            assert_eq!(capped.export_limit, Wh(900));
            assert_eq!(capped.import_limit, Wh(2_000));
        }
    }

    #[test]
    fn the_buy_band_the_battery_covers_by_itself_is_not_bid() {
        let step = |side: Side, quantity: i64, price: i64| bids::BidStep {
            side,
            quantity,
            price: PricePerMwh(price),
        };
        let steps = vec![
            step(Side::Sell, 500, 9_000),
            step(Side::Buy, 200, 30_000),
            step(Side::Buy, 600, 25_000),
            step(Side::Buy, 400, 8_000),
        ];
        // Deficit 800 Wh, 200 Wh left at full discharge: 200 ..= 800 is not bid.
        let left = drop_buy_band(steps.clone(), 200, 800, 10);
        assert_eq!(
            left,
            vec![
                step(Side::Sell, 500, 9_000),
                step(Side::Buy, 200, 30_000),
                step(Side::Buy, 400, 8_000),
            ]
        );
        // A partial overlap shrinks a step; an empty band changes nothing.
        let left = drop_buy_band(steps.clone(), 100, 300, 10);
        assert_eq!(left[1].quantity, 100);
        assert_eq!(left[2].quantity, 500);
        assert_eq!(drop_buy_band(steps.clone(), 0, 0, 10), steps);
    }
}
