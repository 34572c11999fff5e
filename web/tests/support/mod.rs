//! **Test double, for the dashboard's own tests and local development only**: tiny axum servers
//! on 127.0.0.1:0 that play the market and settlement. Every reply is built from the shared
//! protocol types the real services serialise (`gridmesh_protocol::api` read models, results,
//! registry, envelopes), with settlement's documented ledger hashing for entries and inclusion
//! proofs. The real services replace them in the neighbourhood tests.
#![allow(dead_code)]

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use gridmesh_protocol::GatewayId;
use gridmesh_protocol::api::market::{
    BookDepth, DepthStep, ErrorBody, MarketStatus, NodeDepth, PricingRule,
};
use gridmesh_protocol::api::readings::ReasonCode;
use gridmesh_protocol::api::settlement::{
    Balances, BlockHeaderView, BlockSummary, EntryBody, EntryView, Holding, LEAF_HASHING,
    ProofStep, QuarantineItem, QuarantineStatus, Statement,
};
use gridmesh_protocol::envelope::{
    ControlStatus, EnvelopeAlert, EnvelopeSource, MeasuredBranchFlow, MeasuredFlows,
};
use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::market::{BranchFlow, ClearedOrder, Counterparty, IntervalResult, Trade};
use gridmesh_protocol::order::Side;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::signing::PublicKey;
use gridmesh_protocol::{Interval, Money, NodeId, ParticipantId, PricePerMwh, Wh};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}
fn pid(s: &str) -> ParticipantId {
    ParticipantId::new(s).unwrap()
}

/// Substation `sub`, feeders `f1` (5 kWh import limit) and `f2` (20 kWh), homes below them.
pub fn network() -> Network {
    let b = |n: &str, p: &str, imp: Option<i64>, exp: Option<i64>| Branch {
        node: node(n),
        parent: node(p),
        import_limit_wh: imp.map(Wh),
        export_limit_wh: exp.map(Wh),
        fee_per_mwh: None,
    };
    Network {
        root: node("sub"),
        branches: vec![
            b("f1", "sub", Some(5_000), Some(4_000)),
            b("f2", "sub", Some(20_000), Some(20_000)),
            b("h001", "f1", None, None),
            b("h002", "f1", None, None),
            b("h003", "f2", None, None),
        ],
        utility: UtilityTariff {
            envelope_excess_price: Default::default(),
            retail_price: Some(PricePerMwh(300_000)),
            feed_in_price: Some(PricePerMwh(80_000)),
            import_limit_wh: Some(Wh(100_000)),
            export_limit_wh: None,
        },
    }
}

/// Three households.
pub fn participants() -> Vec<Participant> {
    ["h001", "h002", "h003"]
        .iter()
        .enumerate()
        .map(|(i, id)| Participant {
            id: pid(id),
            public_key: PublicKey([i as u8 + 1; 32]),
            node: node(id),
            kind: ParticipantKind::Household,
        })
        .collect()
}

/// Their gateways.
pub fn gateways() -> Vec<GatewayEnrollment> {
    participants()
        .into_iter()
        .map(|p| GatewayEnrollment {
            gateway: GatewayId::new(format!("gw-{}", p.id)).unwrap(),
            participant: p.id.clone(),
            node: p.node.clone(),
            public_key: p.public_key,
            inverter_w: 5_000,
            battery_w: 3_000,
            latitude_microdeg: 48_000_000,
            longitude_microdeg: 11_000_000,
        })
        .collect()
}

/// `n` cleared intervals from 12:00 UTC; the last one has feeder f1 at its import limit.
pub fn results(n: usize) -> Vec<IntervalResult> {
    let mut out = Vec::new();
    let mut interval = Interval::parse("2026-06-21T12:00:00Z", 15).unwrap();
    for i in 0..n {
        let last = i + 1 == n;
        let f1_flow = if last { 5_000 } else { 2_000 + 100 * i as i64 };
        let price = PricePerMwh(200_000 + 5_000 * i as i64);
        let order = |id: &str, who: &str, side: Side, q: i64| ClearedOrder {
            order_id: id.into(),
            participant: pid(who),
            node: node(who),
            side,
            quantity: Wh(q),
            limit_price: price,
            cleared: Wh(q),
            price,
        };
        out.push(IntervalResult {
            envelopes: Vec::new(),
            interval,
            zone: "test".into(),
            cleared_at: interval.start() - chrono::Duration::minutes(5),
            prices: BTreeMap::from([
                (
                    node("f1"),
                    PricePerMwh(price.0 + if last { 40_000 } else { 0 }),
                ),
                (node("f2"), price),
                (node("sub"), price),
            ]),
            orders: vec![
                order(&format!("o{i}a"), "h001", Side::Buy, 1_500),
                order(&format!("o{i}b"), "h003", Side::Sell, 1_000),
            ],
            trades: vec![
                Trade {
                    buyer: Counterparty::Order {
                        order_id: format!("o{i}a"),
                        participant: pid("h001"),
                        node: node("h001"),
                    },
                    seller: Counterparty::Order {
                        order_id: format!("o{i}b"),
                        participant: pid("h003"),
                        node: node("h003"),
                    },
                    energy: Wh(1_000),
                    price,
                },
                Trade {
                    buyer: Counterparty::Order {
                        order_id: format!("o{i}a"),
                        participant: pid("h001"),
                        node: node("h001"),
                    },
                    seller: Counterparty::Utility,
                    energy: Wh(500),
                    price,
                },
            ],
            utility_import: Wh(if last { 9_000 } else { 500 }),
            utility_export: Wh(0),
            flows: vec![
                BranchFlow {
                    node: node("f1"),
                    flow: Wh(f1_flow),
                    import_limit: Some(Wh(5_000)),
                    export_limit: Some(Wh(4_000)),
                    congested: last,
                },
                BranchFlow {
                    node: node("f2"),
                    flow: Wh(-1_000),
                    import_limit: Some(Wh(20_000)),
                    export_limit: Some(Wh(20_000)),
                    congested: false,
                },
            ],
            welfare: Money(123),
            network: network(),
        });
        interval = interval.next();
    }
    out
}

/// Settlement's measured flows for the first `n − 1` of the `n` cleared intervals of
/// [`results`] (the newest cleared interval is still a plan, not measured yet). In the newest
/// measured one, h001 exports 4.5 kWh and h002 did not report: feeder f1 exports 4 500 Wh
/// against its 4 000 Wh export limit (over it, while the plan had f1 *importing* 2 400 Wh), f2
/// exports 18 500 Wh of 20 000 (92.5 %), the utility connection exports 23 000 Wh (no limit).
/// Earlier intervals are well inside every limit.
pub fn measured_flows(n: usize) -> Vec<MeasuredFlows> {
    let mut out = Vec::new();
    let measured = n.saturating_sub(1);
    for (i, r) in results(n).into_iter().take(measured).enumerate() {
        let newest = i + 1 == measured;
        // (home, export, reported)
        let homes = [
            ("h001", if newest { 4_500 } else { 1_000 }, true),
            ("h002", 500, !newest),
            ("h003", if newest { 18_500 } else { 5_000 }, true),
        ];
        let flow = |members: &[&str]| {
            let reporting: Vec<_> = homes
                .iter()
                .filter(|(h, _, reported)| *reported && members.contains(h))
                .collect();
            let export: i64 = reporting.iter().map(|(_, e, _)| e).sum();
            (export, reporting.len() as u32, members.len() as u32)
        };
        let entry = |n: &str, members: &[&str]| {
            let (export, reporting, enrolled) = flow(members);
            MeasuredBranchFlow {
                node: node(n),
                flow_wh: Wh(-export),
                export_wh: Wh(export),
                import_wh: Wh(0),
                homes_reporting: reporting,
                homes_enrolled: enrolled,
            }
        };
        out.push(MeasuredFlows {
            interval: r.interval,
            branches: vec![
                entry("f1", &["h001", "h002"]),
                entry("f2", &["h003"]),
                entry("h001", &["h001"]),
                entry("h002", &["h002"]),
                entry("h003", &["h003"]),
                entry("sub", &["h001", "h002", "h003"]),
            ],
        });
    }
    out
}

/// Settlement's compliance alerts: h001 exceeded its envelope in the three newest measured
/// intervals of [`results`]`(n)` (needs `n ≥ 4`; none otherwise), and is still doing so.
pub fn envelope_alerts(n: usize) -> Vec<EnvelopeAlert> {
    if n < 4 {
        return Vec::new();
    }
    let results = results(n);
    vec![EnvelopeAlert {
        gateway: GatewayId::new("gw-h001").unwrap(),
        participant: pid("h001"),
        node: node("h001"),
        first_interval: results[n - 4].interval,
        last_interval: results[n - 2].interval,
        intervals: 3,
        excess_export_wh: Wh(1_800),
        excess_import_wh: Wh(0),
        active: true,
    }]
}

/// A gateway's control status as it publishes it on `gridmesh/gateways/<id>/control`.
pub fn control_status(
    gateway: &str,
    interval: Interval,
    source: EnvelopeSource,
    curtailed_wh: i64,
    curtailed_total_wh: i64,
) -> ControlStatus {
    ControlStatus {
        gateway: GatewayId::new(gateway).unwrap(),
        interval,
        source,
        export_limit_wh: Wh(400),
        import_limit_wh: Wh(2_750),
        exported_wh: Wh(380),
        imported_wh: Wh(0),
        curtailed_wh: Wh(curtailed_wh),
        curtailed_total_wh: Wh(curtailed_total_wh),
        pv_limit_pct: (curtailed_wh > 0).then_some(40),
        battery_setpoint_w: -3_000,
        violations_in_a_row: 0,
    }
}

/// SHA-256(0x00 ‖ body), as settlement documents it.
pub fn leaf(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

fn inner(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

fn levels(leaves: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let mut out = vec![leaves.to_vec()];
    while out.last().unwrap().len() > 1 {
        let next = out
            .last()
            .unwrap()
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    inner(&p[0], &p[1])
                } else {
                    p[0]
                }
            })
            .collect();
        out.push(next);
    }
    out
}

/// The ledger double: three mint entries in block 0, with real hashes and proofs.
pub struct Ledger {
    /// Entry bodies (verbatim JSON text) by hex hash.
    pub bodies: Vec<(String, String)>,
    /// Merkle root (hex).
    pub root: String,
}

impl Ledger {
    /// Builds it.
    pub fn new() -> Self {
        // Written out in settlement's stored field order (the `kind` tag, then the struct's
        // fields), which differs from the sorted order a re-serialised JSON value has.
        let bodies: Vec<String> = (0..3)
            .map(|i| {
                format!(
                    concat!(
                        r#"{{"kind":"mint","interval":"2026-06-21T12:00:00Z/15","trade_index":{i},"#,
                        r#""seller":"h003","buyer":"h001","seller_order":"o0b","buyer_order":"o0a","#,
                        r#""source":"pv","price":200000,"amount":{amount},"seller_readings":["{sr:064x}"],"#,
                        r#""buyer_readings":["{br:064x}"],"released":false}}"#
                    ),
                    i = i,
                    amount = 1000 + i,
                    sr = 0xaa00 + i,
                    br = 0xbb00 + i
                )
            })
            .collect();
        let leaves: Vec<[u8; 32]> = bodies.iter().map(|b| leaf(b.as_bytes())).collect();
        let levels = levels(&leaves);
        Ledger {
            bodies: bodies
                .into_iter()
                .zip(&leaves)
                .map(|(b, l)| (hex::encode(l), b))
                .collect(),
            root: hex::encode(levels.last().unwrap()[0]),
        }
    }

    /// The inclusion proof of entry `index`.
    pub fn proof(&self, mut index: usize) -> Vec<ProofStep> {
        let leaves: Vec<[u8; 32]> = self
            .bodies
            .iter()
            .map(|(_, b)| leaf(b.as_bytes()))
            .collect();
        let mut proof = Vec::new();
        for level in levels(&leaves).iter().take_while(|l| l.len() > 1) {
            let sibling = index ^ 1;
            if sibling < level.len() {
                proof.push(ProofStep {
                    sibling: hex::encode(level[sibling]),
                    side: if sibling < index { "left" } else { "right" }.into(),
                });
            }
            index /= 2;
        }
        proof
    }

    /// Entry `index`'s decoded body.
    pub fn body(&self, index: usize) -> EntryBody {
        serde_json::from_str(&self.bodies[index].1).unwrap()
    }

    /// Block 0, as settlement lists and answers it.
    pub fn block(&self) -> BlockSummary {
        BlockSummary {
            header: BlockHeaderView {
                height: 0,
                interval: "2026-06-21T12:00:00Z/15".into(),
                prev_hash: "00".repeat(32),
                merkle_root: self.root.clone(),
                entry_count: self.bodies.len() as u64,
                sealed_at: chrono::DateTime::parse_from_rfc3339("2026-06-21T12:20:00Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc),
            },
            hash: "ab".repeat(32),
            signature: "cd".repeat(64),
            public_key: "authority".into(),
            entries: self.bodies.iter().map(|(h, _)| h.clone()).collect(),
            header_base64: None,
        }
    }
}

/// The market's `GET /status`: the next open interval starts at 13:00.
pub fn market_status() -> MarketStatus {
    let at = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    MarketStatus {
        zone: "test".into(),
        interval_minutes: 15,
        gate_closure_lead_seconds: 300,
        next_open_interval: Interval::parse("2026-06-21T13:00:00Z", 15).unwrap(),
        next_gate_closure: at("2026-06-21T12:55:00Z"),
        clock: at("2026-06-21T12:50:00Z"),
        clock_speed: 1.0,
        pricing: PricingRule::PayAsClear,
    }
}

/// Settlement's statements: h001 bought and imported, h003 sold and exported.
pub fn statements() -> Vec<Statement> {
    let st = |p: &str, sold: i64, bought: i64, exported: i64, imported: i64, net: i64| Statement {
        participant: pid(p),
        interval: "2026-06-21T12:00:00Z/15".into(),
        sold: Wh(sold),
        bought: Wh(bought),
        exported: Wh(exported),
        imported: Wh(imported),
        envelope_excess: Wh(0),
        delivered: Wh(sold.min(exported)),
        consumed: Wh(bought.min(imported)),
        tokens: Wh(0),
        estimated: false,
        lines: Vec::new(),
        net: Money(net),
        pending: Vec::new(),
        pending_worth: None,
    };
    vec![
        st("h001", 0, 1500, 0, 2100, -300),
        st("h003", 1000, 0, 1900, 50, 200),
    ]
}

fn not_found(message: &str) -> axum::response::Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            code: "not_found".into(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// What the doubles serve; tests may change it between refreshes.
pub struct Fixture {
    /// Cleared results.
    pub results: Vec<IntervalResult>,
    /// The ledger.
    pub ledger: Ledger,
    /// Settlement's measured flows (`GET /flows`).
    pub flows: Vec<MeasuredFlows>,
    /// Settlement's envelope alerts (`GET /compliance/alerts`).
    pub envelope_alerts: Vec<EnvelopeAlert>,
}

type Shared = Arc<std::sync::Mutex<Fixture>>;

/// A running pair of doubles.
pub struct Upstreams {
    /// Market double address.
    pub market: SocketAddr,
    /// Settlement double address.
    pub settlement: SocketAddr,
    /// The data they serve.
    pub fixture: Shared,
    /// Every `Authorization` header the doubles received ("" when none), in order.
    pub authorizations: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The operator token settlement's double accepts on `POST /quarantine/{id}/accept`.
pub const OPERATOR_TOKEN: &str = "operator-secret";

fn recording(router: Router, seen: Arc<std::sync::Mutex<Vec<String>>>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                let header = request
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(header);
                next.run(request).await
            }
        },
    ))
}

async fn spawn(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Starts both doubles with `n` cleared intervals.
pub async fn start(n: usize) -> Upstreams {
    let fixture = Arc::new(std::sync::Mutex::new(Fixture {
        results: results(n),
        ledger: Ledger::new(),
        flows: measured_flows(n),
        envelope_alerts: envelope_alerts(n),
    }));
    let market = Router::new()
        .route("/status", get(|| async { Json(market_status()) }))
        .route("/topology", get(|| async { Json(network()) }))
        .route("/participants", get(|| async { Json(participants()) }))
        .route("/gateways", get(|| async { Json(gateways()) }))
        .route(
            "/results",
            get(
                |State(f): State<Shared>, Query(q): Query<HashMap<String, String>>| async move {
                    let since = q.get("since").cloned().unwrap_or_default();
                    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                    let f = f.lock().unwrap();
                    let list: Vec<_> = f
                        .results
                        .iter()
                        .filter(|r| {
                            r.interval.start().format("%Y-%m-%dT%H:%M:%SZ").to_string() >= since
                        })
                        .take(limit)
                        .cloned()
                        .collect();
                    Json(list)
                },
            ),
        )
        .route(
            "/intervals/{start}/book",
            get(|Path(start): Path<String>| async move {
                if start != "2026-06-21T13:00:00Z" {
                    return not_found("no such interval");
                }
                let step = |price: i64, quantity_wh: i64, orders: usize| DepthStep {
                    price,
                    quantity_wh,
                    orders,
                };
                Json(BookDepth {
                    interval: Interval::parse(&start, 15).unwrap(),
                    orders: 5,
                    nodes: BTreeMap::from([
                        (
                            "h001".to_owned(),
                            NodeDepth {
                                bids: vec![step(310_000, 1_200, 1), step(250_000, 800, 2)],
                                asks: vec![],
                            },
                        ),
                        (
                            "h003".to_owned(),
                            NodeDepth {
                                bids: vec![],
                                asks: vec![step(150_000, 900, 1), step(220_000, 1_500, 1)],
                            },
                        ),
                    ]),
                })
                .into_response()
            }),
        )
        .route(
            "/events",
            get(|| async {
                let stream = futures::stream::iter(vec![Ok::<_, Infallible>(
                    Event::default().event("result").data("{}"),
                )]);
                Sse::new(stream)
            }),
        )
        .with_state(fixture.clone());
    let settlement =
        Router::new()
            .route(
                "/quarantine",
                get(|| async {
                    Json(vec![QuarantineItem {
                        id: 7,
                        received_at: chrono::DateTime::from_timestamp(1_782_045_600, 0),
                        source: "mqtt:gridmesh/readings/gw-h002".into(),
                        key: Some("gw-h002/home/2026-06-21T12:30:00Z".into()),
                        gateway: Some("gw-h002".into()),
                        raw: "{}".into(),
                        acceptable: false,
                        code: ReasonCode::RegisterDecreased,
                        reason: "register went down without a reset flag".into(),
                        status: QuarantineStatus::Open,
                    }])
                }),
            )
            .route(
                "/ledger/blocks",
                get(|State(f): State<Shared>| async move {
                    Json(vec![f.lock().unwrap().ledger.block()])
                }),
            )
            .route(
                "/ledger/blocks/{height}",
                get(|State(f): State<Shared>, Path(h): Path<u64>| async move {
                    let f = f.lock().unwrap();
                    if h != 0 {
                        return not_found("no block");
                    }
                    Json(f.ledger.block()).into_response()
                }),
            )
            .route(
                "/ledger/entries/{hash}",
                get(
                    |State(f): State<Shared>, Path(hash): Path<String>| async move {
                        let f = f.lock().unwrap();
                        match f.ledger.bodies.iter().position(|(h, _)| *h == hash) {
                            Some(i) => Json(EntryView {
                                hash,
                                seq: i as i64,
                                kind: "mint".into(),
                                body: f.ledger.body(i),
                                body_base64: BASE64.encode(&f.ledger.bodies[i].1),
                                block_height: Some(0),
                                merkle_root: Some(f.ledger.root.clone()),
                                proof: Some(f.ledger.proof(i)),
                                leaf_hashing: LEAF_HASHING.into(),
                            })
                            .into_response(),
                            None => not_found("no such entry"),
                        }
                    },
                ),
            )
            .route(
                "/balances/{participant}",
                get(
                    |State(f): State<Shared>, Path(p): Path<String>| async move {
                        let f = f.lock().unwrap();
                        let holdings: Vec<Holding> = if p == "h001" {
                            f.ledger
                                .bodies
                                .iter()
                                .enumerate()
                                .map(|(i, (h, _))| Holding {
                                    lot: h.clone(),
                                    amount: Wh(1000 + i as i64),
                                    retired: Wh(0),
                                    received: Wh(1000 + i as i64),
                                    parent_lot: None,
                                    origin_mint: h.clone(),
                                    provenance: f.ledger.body(i),
                                })
                                .collect()
                        } else {
                            Vec::new()
                        };
                        let balance = Wh(holdings.iter().map(|h| h.amount.0).sum());
                        Json(Balances {
                            participant: p,
                            balance,
                            retired: Wh(0),
                            holdings,
                        })
                    },
                ),
            )
            .route(
                "/statements",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    let mut list = statements();
                    if let Some(p) = q.get("participant") {
                        list.retain(|s| s.participant.as_str() == p);
                    }
                    Json(list)
                }),
            )
            .route(
                "/flows",
                get(
                    |State(f): State<Shared>, Query(q): Query<HashMap<String, String>>| async move {
                        // Settlement's paging: `since` inclusive (RFC 3339), oldest first, `limit` items.
                        let since = match q.get("since") {
                            Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                                Ok(t) => Some(t.with_timezone(&chrono::Utc)),
                                Err(_) => {
                                    return (
                                        StatusCode::BAD_REQUEST,
                                        Json(ErrorBody {
                                            code: "bad_request".into(),
                                            message: format!("since `{s}` is not an RFC 3339 time"),
                                        }),
                                    )
                                        .into_response();
                                }
                            },
                            None => None,
                        };
                        let limit: usize =
                            q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
                        let f = f.lock().unwrap();
                        let list: Vec<MeasuredFlows> = f
                            .flows
                            .iter()
                            .filter(|m| since.is_none_or(|s| m.interval.start() >= s))
                            .take(limit)
                            .cloned()
                            .collect();
                        Json(list).into_response()
                    },
                ),
            )
            .route(
                "/compliance/alerts",
                get(|State(f): State<Shared>| async move {
                    Json(f.lock().unwrap().envelope_alerts.clone())
                }),
            )
            .route(
                "/events",
                get(|| async { Sse::new(futures::stream::pending::<Result<Event, Infallible>>()) }),
            )
            .route(
                "/quarantine/{id}/accept",
                axum::routing::post(
                    |headers: axum::http::HeaderMap, Path(id): Path<i64>| async move {
                        let expected = format!("Bearer {OPERATOR_TOKEN}");
                        if headers.get("authorization").and_then(|v| v.to_str().ok())
                            != Some(expected.as_str())
                        {
                            return (
                                StatusCode::UNAUTHORIZED,
                                Json(ErrorBody {
                                    code: "unauthorized".into(),
                                    message: "operator token needed".into(),
                                }),
                            )
                                .into_response();
                        }
                        Json(gridmesh_protocol::api::settlement::QuarantineAccepted {
                            id,
                            status: QuarantineStatus::Accepted,
                            mints_released: 0,
                        })
                        .into_response()
                    },
                ),
            )
            .with_state(fixture.clone());
    let authorizations = Arc::new(std::sync::Mutex::new(Vec::new()));
    Upstreams {
        market: spawn(recording(market, authorizations.clone())).await,
        settlement: spawn(recording(settlement, authorizations.clone())).await,
        fixture,
        authorizations,
    }
}
