//! What a result shows to whom: the public view (aggregates per area, trades under
//! pseudonyms, no participant id) and a participant's own view. Pure: no I/O, no clock.
//!
//! **Areas.** Every figure the public sees sums at least
//! [`MIN_AREA_PARTICIPANTS`](gridmesh_protocol::api::market::MIN_AREA_PARTICIPANTS)
//! participants. Walking the interval's network from the leaves up, a node whose own
//! participants plus those folded into it from below reach that number becomes an area;
//! otherwise its participants are folded into its parent. The root is always an area. Areas are
//! computed from the result alone (its network, orders and envelopes), so the public view of an
//! interval never changes when homes enrol later (a later split of an area would let a reader
//! subtract the new areas from the old one).
//!
//! **Pseudonyms.** A party of a public trade is named `p-` and the first 8 bytes (hex) of
//! HMAC-SHA-256(market secret, tag ‖ interval start ‖ participant id). The secret is derived from
//! the market's signing key ([`crate::service::Market::pseudonym_secret`]); the interval start in
//! the message makes pseudonyms stable within one interval only: a reader sees that one seller
//! served three buyers, but cannot link a home's trades across intervals into the 15-minute
//! profile that the access model keeps private (a daily pseudonym would publish exactly that
//! profile, 96 points a day, enough to single out a home by its PV curve).
//!
//! **Own view.** A participant reads the full result's shape reduced to its own orders, trades
//! and envelopes, with the other side of each trade under its pseudonym and area, and the
//! public prices and flows.

use gridmesh_protocol::api::market::{
    AreaAggregate, BookDepth, MIN_AREA_PARTICIPANTS, PSEUDONYMS_PER_INTERVAL, PublicParty,
    PublicResult, PublicTrade,
};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::order::Side;
use gridmesh_protocol::{Interval, NodeId, ParticipantId, Wh};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};

/// A public view could not be summed (a stored result with energies near `i64::MAX`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the public view of {interval} cannot be built: the sum of `{what}` in area {area} overflows"
)]
pub struct ViewError {
    /// The interval.
    pub interval: String,
    /// Which figure.
    pub what: &'static str,
    /// Which area.
    pub area: NodeId,
}

/// The areas of one network: which area every node's participants count in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Areas {
    root: NodeId,
    area_of: BTreeMap<NodeId, NodeId>,
    /// Area node → (its nodes, own node first; its participants), in the network's pre-order.
    members: Vec<(NodeId, Vec<NodeId>, u32)>,
}

impl Areas {
    /// Folds `network`'s nodes into areas of at least `min` participants, given how many
    /// participants each node holds. Participants at nodes the network does not have count in
    /// the root's area.
    pub fn new(network: &Network, participants: &BTreeMap<NodeId, u32>, min: u32) -> Areas {
        let root = network.root.clone();
        let mut parent: BTreeMap<&NodeId, &NodeId> = BTreeMap::new();
        let mut children: BTreeMap<&NodeId, Vec<&NodeId>> = BTreeMap::new();
        for b in &network.branches {
            parent.insert(&b.node, &b.parent);
            children.entry(&b.parent).or_default().push(&b.node);
        }
        // Pre-order from the root (parents before children); a validated network is a tree.
        let mut order: Vec<&NodeId> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack = vec![&root];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            order.push(n);
            if let Some(cs) = children.get(n) {
                stack.extend(cs.iter().rev());
            }
        }
        let outside: u32 = participants
            .iter()
            .filter(|(n, _)| !seen.contains(n))
            .map(|(_, c)| *c)
            .fold(0, u32::saturating_add);
        // Leaves first: what each node holds with everything folded into it from below.
        let mut held: BTreeMap<&NodeId, u32> = BTreeMap::new();
        let mut is_area: BTreeSet<&NodeId> = BTreeSet::new();
        for &n in order.iter().rev() {
            let folded = children
                .get(n)
                .into_iter()
                .flatten()
                .filter(|c| !is_area.contains(*c))
                .map(|c| held.get(c).copied().unwrap_or(0))
                .fold(0, u32::saturating_add);
            let mut total = participants
                .get(n)
                .copied()
                .unwrap_or(0)
                .saturating_add(folded);
            if *n == root {
                total = total.saturating_add(outside);
            }
            held.insert(n, total);
            if total >= min || *n == root {
                is_area.insert(n);
            }
        }
        // Parents first: a node that is no area counts in its parent's.
        let mut area_of: BTreeMap<NodeId, NodeId> = BTreeMap::new();
        let mut members: Vec<(NodeId, Vec<NodeId>, u32)> = Vec::new();
        let mut index: BTreeMap<NodeId, usize> = BTreeMap::new();
        for &n in &order {
            let area = if is_area.contains(n) {
                index.insert(n.clone(), members.len());
                members.push((n.clone(), Vec::new(), held[n]));
                n.clone()
            } else {
                parent
                    .get(n)
                    .and_then(|p| area_of.get(*p))
                    .cloned()
                    .unwrap_or_else(|| root.clone())
            };
            members[index[&area]].1.push(n.clone());
            area_of.insert(n.clone(), area);
        }
        Areas {
            root,
            area_of,
            members,
        }
    }

    /// The areas of a result: its network, with the participants its envelopes (enrolled
    /// households) and orders name, each counted once per node.
    pub fn of_result(result: &IntervalResult) -> Areas {
        let mut pairs: BTreeSet<(&NodeId, &ParticipantId)> = BTreeSet::new();
        for e in &result.envelopes {
            pairs.insert((&e.node, &e.participant));
        }
        for o in &result.orders {
            pairs.insert((&o.node, &o.participant));
        }
        let mut participants: BTreeMap<NodeId, u32> = BTreeMap::new();
        for (node, _) in pairs {
            *participants.entry(node.clone()).or_default() += 1;
        }
        Areas::new(&result.network, &participants, MIN_AREA_PARTICIPANTS)
    }

    /// The area node `node`'s participants count in (the root for a node not in the network).
    pub fn area_of(&self, node: &NodeId) -> &NodeId {
        self.area_of.get(node).unwrap_or(&self.root)
    }

    /// Whether `node` is an area's own node.
    pub fn is_area(&self, node: &NodeId) -> bool {
        self.area_of.get(node) == Some(node)
    }

    /// How many participants the whole network holds.
    pub fn participants(&self) -> u32 {
        self.members
            .iter()
            .map(|(_, _, c)| *c)
            .fold(0, u32::saturating_add)
    }
}

/// The pseudonym of `participant` in `interval`'s public result (see the module docs).
pub fn pseudonym(secret: &[u8; 32], interval: &Interval, participant: &ParticipantId) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"gridmesh/pseudonym/v1\n");
    mac.update(&interval.start().timestamp().to_be_bytes());
    mac.update(participant.as_str().as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("p-{}", hex::encode(&tag[..8]))
}

fn add(
    sum: &mut Wh,
    value: Wh,
    what: &'static str,
    area: &NodeId,
    interval: &Interval,
) -> Result<(), ViewError> {
    *sum = sum.checked_add(value).map_err(|_| ViewError {
        interval: interval.key(),
        what,
        area: area.clone(),
    })?;
    Ok(())
}

/// The public view of `result`: no participant id, every figure a sum over an area of at least
/// [`MIN_AREA_PARTICIPANTS`] participants, trades under per-interval pseudonyms. A zone with
/// fewer participants than that in all publishes only its prices: no areas, trades or flows,
/// and no utility energy or welfare (they would be the few participants' own sums).
pub fn public_view(result: &IntervalResult, secret: &[u8; 32]) -> Result<PublicResult, ViewError> {
    let areas = Areas::of_result(result);
    let interval = &result.interval;
    let withheld = areas.participants() < MIN_AREA_PARTICIPANTS;
    let mut aggregates: BTreeMap<&NodeId, AreaAggregate> = areas
        .members
        .iter()
        .map(|(node, nodes, participants)| {
            let aggregate = AreaAggregate {
                node: node.clone(),
                nodes: nodes.clone(),
                participants: *participants,
                orders: 0,
                bid: Wh(0),
                offered: Wh(0),
                bought: Wh(0),
                sold: Wh(0),
                export_limit: Wh(0),
                import_limit: Wh(0),
                price: result.prices.get(node).copied(),
            };
            (node, aggregate)
        })
        .collect();
    for o in &result.orders {
        let area = areas.area_of(&o.node);
        let a = aggregates
            .get_mut(area)
            .expect("every area has an aggregate");
        a.orders = a.orders.saturating_add(1);
        match o.side {
            Side::Buy => {
                add(&mut a.bid, o.quantity, "bid", area, interval)?;
                add(&mut a.bought, o.cleared, "bought", area, interval)?;
            }
            Side::Sell => {
                add(&mut a.offered, o.quantity, "offered", area, interval)?;
                add(&mut a.sold, o.cleared, "sold", area, interval)?;
            }
        }
    }
    for e in &result.envelopes {
        let area = areas.area_of(&e.node);
        let a = aggregates
            .get_mut(area)
            .expect("every area has an aggregate");
        add(
            &mut a.export_limit,
            e.export_limit_wh,
            "export_limit",
            area,
            interval,
        )?;
        add(
            &mut a.import_limit,
            e.import_limit_wh,
            "import_limit",
            area,
            interval,
        )?;
    }
    let party = |c: &Counterparty| match c {
        Counterparty::Order {
            participant, node, ..
        } => PublicParty::Participant {
            pseudonym: pseudonym(secret, interval, participant),
            area: areas.area_of(node).clone(),
        },
        Counterparty::Utility => PublicParty::Utility,
    };
    // The areas in pre-order with the root's last.
    let mut ordered: Vec<AreaAggregate> = areas
        .members
        .iter()
        .filter_map(|(node, _, _)| aggregates.remove(node))
        .collect();
    if !ordered.is_empty() {
        ordered.rotate_left(1);
    }
    let prices = result
        .prices
        .iter()
        .filter(|(node, _)| areas.is_area(node))
        .map(|(n, p)| (n.clone(), *p))
        .collect();
    let mut public = PublicResult {
        interval: result.interval,
        zone: result.zone.clone(),
        cleared_at: result.cleared_at,
        prices,
        areas: ordered,
        trades: result
            .trades
            .iter()
            .map(|t| PublicTrade {
                buyer: party(&t.buyer),
                seller: party(&t.seller),
                energy: t.energy,
                price: t.price,
            })
            .collect(),
        utility_import: Some(result.utility_import),
        utility_export: Some(result.utility_export),
        flows: result
            .flows
            .iter()
            .filter(|f| areas.is_area(&f.node))
            .cloned()
            .collect(),
        welfare: Some(result.welfare),
        pseudonyms: PSEUDONYMS_PER_INTERVAL.to_owned(),
        min_area_participants: MIN_AREA_PARTICIPANTS,
        withheld,
    };
    if withheld {
        public.areas.clear();
        public.trades.clear();
        public.flows.clear();
        public.utility_import = None;
        public.utility_export = None;
        public.welfare = None;
    }
    Ok(public)
}

/// `participant`'s own view of `result`: its orders, trades and envelopes, the other side of
/// each trade under its pseudonym (as `participant` and `order_id`) and its area (as `node`),
/// the public prices and flows plus the prices at its own nodes.
pub fn own_view(
    result: &IntervalResult,
    participant: &ParticipantId,
    secret: &[u8; 32],
) -> IntervalResult {
    let areas = Areas::of_result(result);
    let interval = &result.interval;
    let mine = |c: &Counterparty| matches!(c, Counterparty::Order { participant: p, .. } if p == participant);
    let other = |c: &Counterparty| match c {
        Counterparty::Order {
            participant: p,
            node,
            ..
        } if p != participant => {
            let name = pseudonym(secret, interval, p);
            Counterparty::Order {
                order_id: name.clone(),
                participant: ParticipantId::new(name).expect("a pseudonym is a valid id"),
                node: areas.area_of(node).clone(),
            }
        }
        c => c.clone(),
    };
    let orders: Vec<_> = result
        .orders
        .iter()
        .filter(|o| &o.participant == participant)
        .cloned()
        .collect();
    let envelopes: Vec<_> = result
        .envelopes
        .iter()
        .filter(|e| &e.participant == participant)
        .cloned()
        .collect();
    let own_nodes: BTreeSet<&NodeId> = orders
        .iter()
        .map(|o| &o.node)
        .chain(envelopes.iter().map(|e| &e.node))
        .collect();
    IntervalResult {
        interval: result.interval,
        zone: result.zone.clone(),
        cleared_at: result.cleared_at,
        prices: result
            .prices
            .iter()
            .filter(|(n, _)| areas.is_area(n) || own_nodes.contains(n))
            .map(|(n, p)| (n.clone(), *p))
            .collect(),
        trades: result
            .trades
            .iter()
            .filter(|t| mine(&t.buyer) || mine(&t.seller))
            .map(|t| gridmesh_protocol::market::Trade {
                buyer: other(&t.buyer),
                seller: other(&t.seller),
                energy: t.energy,
                price: t.price,
            })
            .collect(),
        orders,
        utility_import: result.utility_import,
        utility_export: result.utility_export,
        flows: result
            .flows
            .iter()
            .filter(|f| areas.is_area(&f.node))
            .cloned()
            .collect(),
        welfare: result.welfare,
        network: result.network.clone(),
        envelopes,
    }
}

/// The public depth of an open book: each node's steps folded into its area (areas from
/// `network` and the participants registered at each node); empty when the whole zone holds
/// fewer than [`MIN_AREA_PARTICIPANTS`] participants.
pub fn public_depth(
    network: &Network,
    participants: &BTreeMap<NodeId, u32>,
    orders: impl IntoIterator<Item = (NodeId, Side, i64, i64)>,
    interval: Interval,
) -> BookDepth {
    let areas = Areas::new(network, participants, MIN_AREA_PARTICIPANTS);
    let folded: Vec<(NodeId, Side, i64, i64)> = orders
        .into_iter()
        .map(|(node, side, q, p)| (areas.area_of(&node).clone(), side, q, p))
        .collect();
    let count = folded.len();
    let nodes = if areas.participants() < MIN_AREA_PARTICIPANTS {
        BTreeMap::new()
    } else {
        crate::book::depth(folded.iter().map(|(n, s, q, p)| (n.as_str(), *s, *q, *p)))
    };
    BookDepth {
        interval,
        orders: count,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::grid::Branch;
    use gridmesh_protocol::market::{ClearedOrder, Trade};
    use gridmesh_protocol::{Money, PricePerMwh};

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// `sub` ← `f1` ← `l1`, and `sub` ← `f2`.
    fn network() -> Network {
        let b = |node: &str, parent: &str| Branch {
            node: n(node),
            parent: n(parent),
            import_limit_wh: None,
            export_limit_wh: None,
            fee_per_mwh: None,
        };
        Network {
            root: n("sub"),
            branches: vec![b("f1", "sub"), b("l1", "f1"), b("f2", "sub")],
            utility: Default::default(),
        }
    }

    /// The areas as `(area, its nodes, participants)`.
    fn check(counts: &[(&str, u32)], expected: &[(&str, &[&str], u32)]) {
        let counts = counts.iter().map(|(k, v)| (n(k), *v)).collect();
        let areas = Areas::new(&network(), &counts, 5);
        let got: Vec<(String, Vec<String>, u32)> = areas
            .members
            .iter()
            .map(|(a, nodes, c)| {
                (
                    a.to_string(),
                    nodes.iter().map(|x| x.to_string()).collect(),
                    *c,
                )
            })
            .collect();
        let expected: Vec<(String, Vec<String>, u32)> = expected
            .iter()
            .map(|(a, nodes, c)| {
                (
                    a.to_string(),
                    nodes.iter().map(|x| x.to_string()).collect(),
                    *c,
                )
            })
            .collect();
        assert_eq!(got, expected, "{counts:?}");
    }

    #[test]
    fn small_nodes_fold_into_their_parents_area() {
        // Everyone on its own: every node with 5 is an area.
        check(
            &[("l1", 5), ("f1", 5), ("f2", 5)],
            &[
                ("sub", &["sub"], 0),
                ("f1", &["f1"], 5),
                ("l1", &["l1"], 5),
                ("f2", &["f2"], 5),
            ],
        );
        // l1's 3 fold into f1 (2 + 3 = 5: an area); f2's 4 into the root.
        check(
            &[("l1", 3), ("f1", 2), ("f2", 4)],
            &[("sub", &["sub", "f2"], 4), ("f1", &["f1", "l1"], 5)],
        );
        // Too few anywhere: everything in the root; unknown nodes count there too.
        check(
            &[("l1", 1), ("f2", 1), ("elsewhere", 2)],
            &[("sub", &["sub", "f1", "l1", "f2"], 4)],
        );
    }

    fn interval(start: &str) -> Interval {
        Interval::parse(start, 15).unwrap()
    }

    fn order(who: &str, node: &str, side: Side, q: i64, cleared: i64) -> ClearedOrder {
        ClearedOrder {
            order_id: format!("{who}:1"),
            participant: ParticipantId::new(who).unwrap(),
            node: n(node),
            side,
            quantity: Wh(q),
            limit_price: PricePerMwh(20_000),
            cleared: Wh(cleared),
            price: PricePerMwh(20_000),
        }
    }

    fn party(o: &ClearedOrder) -> Counterparty {
        Counterparty::Order {
            order_id: o.order_id.clone(),
            participant: o.participant.clone(),
            node: o.node.clone(),
        }
    }

    /// Five sellers and a buyer on f1, one buyer on f2 (folded into sub).
    fn result(start: &str) -> IntervalResult {
        let mut orders: Vec<ClearedOrder> = (1..=5)
            .map(|i| order(&format!("s{i}"), "f1", Side::Sell, 100, 100))
            .collect();
        orders.push(order("b1", "f1", Side::Buy, 300, 300));
        orders.push(order("b2", "f2", Side::Buy, 250, 200));
        let trades = vec![
            Trade {
                buyer: party(&orders[5]),
                seller: party(&orders[0]),
                energy: Wh(100),
                price: PricePerMwh(20_000),
            },
            Trade {
                buyer: party(&orders[6]),
                seller: party(&orders[0]),
                energy: Wh(0),
                price: PricePerMwh(20_000),
            },
            Trade {
                buyer: party(&orders[6]),
                seller: Counterparty::Utility,
                energy: Wh(200),
                price: PricePerMwh(30_000),
            },
        ];
        IntervalResult {
            interval: interval(start),
            zone: "z".into(),
            cleared_at: interval(start).start(),
            prices: [
                (n("sub"), PricePerMwh(20_000)),
                (n("f2"), PricePerMwh(21_000)),
            ]
            .into(),
            orders,
            trades,
            utility_import: Wh(200),
            utility_export: Wh(0),
            flows: Vec::new(),
            welfare: Money(1),
            network: network(),
            envelopes: Vec::new(),
        }
    }

    #[test]
    fn the_public_view_names_no_participant_and_sums_per_area() {
        let secret = [7; 32];
        let full = result("2026-06-21T12:15:00Z");
        let public = public_view(&full, &secret).unwrap();
        let json = serde_json::to_string(&public).unwrap();
        for o in &full.orders {
            assert!(!json.contains(o.participant.as_str()), "{json}");
        }
        assert!(!public.withheld);
        let f1 = &public.areas[0];
        assert_eq!((f1.node.as_str(), f1.participants, f1.orders), ("f1", 6, 6));
        assert_eq!(
            (f1.offered, f1.sold, f1.bid, f1.bought),
            (Wh(500), Wh(500), Wh(300), Wh(300))
        );
        let root = &public.areas[1];
        assert_eq!(
            (root.node.as_str(), root.participants, root.bought),
            ("sub", 1, Wh(200))
        );
        // f2 is no area: its price is not published.
        assert_eq!(
            public.prices.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["sub"]
        );
        // One seller in two trades: the same pseudonym within the interval, placed in its area.
        let seller = |t: &PublicTrade| t.seller.clone();
        assert_eq!(seller(&public.trades[0]), seller(&public.trades[1]));
        let PublicParty::Participant { pseudonym, area } = seller(&public.trades[0]) else {
            panic!("a participant sold");
        };
        assert_eq!(area.as_str(), "f1");
        assert!(
            pseudonym.starts_with("p-") && pseudonym.len() == 18,
            "{pseudonym}"
        );
        assert_eq!(public.trades[2].seller, PublicParty::Utility);
        // The next interval: another pseudonym for the same seller.
        let next = public_view(&result("2026-06-21T12:30:00Z"), &secret).unwrap();
        assert_ne!(seller(&next.trades[0]), seller(&public.trades[0]));
        // Another market secret: other pseudonyms.
        let other = public_view(&full, &[8; 32]).unwrap();
        assert_ne!(seller(&other.trades[0]), seller(&public.trades[0]));
    }

    #[test]
    fn a_zone_of_fewer_than_five_publishes_only_prices() {
        let mut small = result("2026-06-21T12:15:00Z");
        small.orders.truncate(3);
        small.trades.truncate(1);
        let public = public_view(&small, &[7; 32]).unwrap();
        assert!(public.withheld);
        assert!(public.areas.is_empty() && public.trades.is_empty() && public.flows.is_empty());
        assert_eq!((public.utility_import, public.welfare), (None, None));
    }

    #[test]
    fn a_participant_sees_its_own_trades_and_others_under_pseudonyms() {
        let secret = [7; 32];
        let full = result("2026-06-21T12:15:00Z");
        let b1 = ParticipantId::new("b1").unwrap();
        let own = own_view(&full, &b1, &secret);
        assert_eq!(own.orders.len(), 1);
        assert_eq!(own.trades.len(), 1);
        let Counterparty::Order {
            participant,
            order_id,
            node,
        } = &own.trades[0].seller
        else {
            panic!("s1 sold to b1");
        };
        let public = public_view(&full, &secret).unwrap();
        let PublicParty::Participant { pseudonym, .. } = &public.trades[0].seller else {
            panic!("a participant sold");
        };
        assert_eq!(
            (participant.as_str(), order_id, node.as_str()),
            (pseudonym.as_str(), pseudonym, "f1")
        );
        let json = serde_json::to_string(&own).unwrap();
        for who in ["s1", "s2", "b2"] {
            assert!(!json.contains(&format!("\"{who}")), "{who} in {json}");
        }
    }

    #[test]
    fn overflowing_sums_are_an_error_not_a_wrap() {
        let mut big = result("2026-06-21T12:15:00Z");
        big.orders[0].quantity = Wh(i64::MAX);
        let error = public_view(&big, &[7; 32]).unwrap_err();
        assert_eq!((error.what, error.area.as_str()), ("offered", "f1"));
    }
}
