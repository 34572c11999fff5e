//! Property tests of the pure settlement rules: money always balances to the unit, mints never
//! exceed what was metered or traded, exact delivery mints exactly the traded energy.

mod common;

use common::*;
use gridmesh_protocol::market::Counterparty;
use gridmesh_protocol::{ParticipantId, Wh};
use proptest::prelude::*;
use settlement::rules::{Metered, settle};
use std::collections::{BTreeMap, HashMap};

const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn party(i: usize) -> Counterparty {
    if i == NAMES.len() {
        Counterparty::Utility
    } else {
        order(NAMES[i], &format!("o-{i}"))
    }
}

prop_compose! {
    fn trades()(raw in prop::collection::vec((0..=4usize, 0..=4usize, 0i64..5_000, 0i64..600_000), 0..12))
        -> Vec<gridmesh_protocol::market::Trade> {
        raw.into_iter()
            .filter(|(s, b, _, _)| s != b && !(*s == 4 && *b == 4))
            .map(|(s, b, e, p)| trade(party(s), party(b), e, p))
            .collect()
    }
}

prop_compose! {
    fn metered()(raw in prop::collection::vec(prop::option::of((0i64..8_000, 0i64..8_000, 0i64..100, 0i64..100, any::<bool>(), prop::option::of(0u32..=100))), 4))
        -> BTreeMap<ParticipantId, Metered> {
        raw.into_iter().enumerate().filter_map(|(i, m)| {
            let (imported, exported, pv, bat, flagged, excess_pct) = m?;
            // Export beyond the envelope: none, or a share of the export.
            let excess = excess_pct.map_or(0, |pct| exported * i64::from(pct) / 100);
            Some((ParticipantId::new(NAMES[i]).unwrap(), Metered {
                imported: Wh(imported), exported: Wh(exported), pv: Wh(pv), battery_discharge: Wh(bat),
                readings: vec![format!("{i:064x}")], flagged, envelope_excess: Wh(excess),
            }))
        }).collect()
    }
}

proptest! {
    #[test]
    fn money_balances_and_mints_are_backed(trades in trades(), metered in metered(), excess_price in -500_000i64..500_000) {
        let mut r = result(interval("12:00"), trades.clone());
        r.network.utility.envelope_excess_price = gridmesh_protocol::PricePerMwh(excess_price);
        let s = settle(&r, &metered).unwrap();
        let participants: i64 = s.statements.iter().map(|x| x.net.0).sum();
        prop_assert_eq!(participants + s.utility_net.0, 0);
        for st in &s.statements {
            prop_assert_eq!(st.net.0, st.lines.iter().map(|l| l.amount.0).sum::<i64>());
        }
        let mut by_seller: HashMap<String, i64> = HashMap::new();
        let mut by_buyer: HashMap<String, i64> = HashMap::new();
        for m in s.mints.iter().chain(&s.withheld) {
            prop_assert!(m.amount.0 > 0);
            prop_assert!(m.amount <= trades[m.trade_index as usize].energy);
            *by_seller.entry(m.seller.to_string()).or_default() += m.amount.0;
            *by_buyer.entry(m.buyer.to_string()).or_default() += m.amount.0;
        }
        for (p, v) in by_seller {
            // Never minted from export beyond the envelope.
            let m = &metered[&ParticipantId::new(p).unwrap()];
            prop_assert!(v <= m.exported.0 - m.envelope_excess.0);
        }
        for st in &s.statements {
            let excess = metered.get(&st.participant).map_or(0, |m| m.envelope_excess.0);
            let lines: Vec<_> = st.lines.iter().filter(|l| l.kind == "envelope_excess").collect();
            prop_assert_eq!(lines.iter().map(|l| l.energy.0).sum::<i64>(), excess);
            prop_assert_eq!(st.envelope_excess.0, excess);
            // Delivery plus surplus plus excess is exactly the metered export.
            let surplus: i64 = st.lines.iter().filter(|l| l.kind == "surplus_export").map(|l| l.energy.0).sum();
            prop_assert_eq!(st.delivered.0 + surplus + excess, st.exported.0);
        }
        for (p, v) in by_buyer {
            prop_assert!(v <= metered[&ParticipantId::new(p).unwrap()].imported.0);
        }
        for m in &s.withheld {
            prop_assert!(metered[&m.seller].flagged || metered[&m.buyer].flagged);
        }
    }

    #[test]
    fn exact_delivery_mints_exactly_the_traded_energy(trades in trades()) {
        // Every participant exports exactly what it sold and imports exactly what it bought.
        let mut metered: BTreeMap<ParticipantId, Metered> = BTreeMap::new();
        for (i, n) in NAMES.iter().enumerate() {
            metered.insert(ParticipantId::new(*n).unwrap(), Metered { readings: vec![format!("{i}")], ..Default::default() });
        }
        let mut p2p = 0;
        for t in &trades {
            if let Counterparty::Order { participant, .. } = &t.seller {
                metered.get_mut(participant).unwrap().exported.0 += t.energy.0;
            }
            if let Counterparty::Order { participant, .. } = &t.buyer {
                metered.get_mut(participant).unwrap().imported.0 += t.energy.0;
            }
            if matches!((&t.seller, &t.buyer), (Counterparty::Order { .. }, Counterparty::Order { .. })) {
                p2p += t.energy.0;
            }
        }
        let s = settle(&result(interval("12:00"), trades.clone()), &metered).unwrap();
        let minted: i64 = s.mints.iter().map(|m| m.amount.0).sum();
        prop_assert_eq!(minted, p2p);
        for st in &s.statements {
            prop_assert!(st.lines.iter().all(|l| l.kind.starts_with("trade_")), "no imbalance: {:?}", st);
        }
        let participants: i64 = s.statements.iter().map(|x| x.net.0).sum();
        prop_assert_eq!(participants + s.utility_net.0, 0);
    }
}

#[test]
fn missing_readings_follow_the_documented_rule() {
    let trades = vec![trade(
        order("alice", "a"),
        order("bob", "b"),
        1_000,
        200_000,
    )];
    // Neither has a reading: alice's sale is a shortfall at retail, bob is taken at his word,
    // and nothing is minted.
    let s = settle(&result(interval("12:00"), trades), &BTreeMap::new()).unwrap();
    let alice = s
        .statements
        .iter()
        .find(|x| x.participant.as_str() == "alice")
        .unwrap();
    let bob = s
        .statements
        .iter()
        .find(|x| x.participant.as_str() == "bob")
        .unwrap();
    assert!(alice.estimated && bob.estimated);
    assert_eq!(alice.net.0, 200 - 300);
    assert_eq!(bob.net.0, -200);
    assert!(s.mints.is_empty());
    assert_eq!(s.utility_net.0, 300);
}
