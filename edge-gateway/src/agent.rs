//! The household bidding agent: before each gate closure it forecasts the coming interval's
//! net position from recent intervals and the same time of day on previous days, and submits
//! signed orders within the homeowner's limits (an ask for surplus at no less than the minimum
//! sell price, a bid for deficit at no more than the maximum buy price, battery energy above
//! the reserve offered only when the gateway may steer the battery).

use crate::config::AgentConfig;
use crate::outbox::HistoryRow;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::order::{Order, Side};
use gridmesh_protocol::{Interval, NodeId, ParticipantId, Wh, ZoneId};

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
}
