//! Shared fixtures: keys, gateways, participants, signed readings, results and a service on
//! SQLite or PostgreSQL.
#![allow(dead_code)]

use chrono::{DateTime, TimeZone, Utc};
use gridmesh_protocol::grid::{Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::{Counterparty, IntervalResult, Trade};
use gridmesh_protocol::reading::{Reading, ReadingFlags, Registers};
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::{
    DeviceId, GatewayId, Interval, Money, NodeId, ParticipantId, PricePerMwh, Wh,
};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::db::scratch;
use settlement::service::{CoreSettings, Service, Submission};
use settlement::verify::Limits;
use std::collections::BTreeMap;

pub const EPOCH: &str = "2026-06-21T14:00:00Z";

pub fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(EPOCH)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn interval(hhmm: &str) -> Interval {
    Interval::parse(&format!("2026-06-21T{hhmm}:00Z"), 15).unwrap()
}

/// The test households: (participant, gateway, key seed).
pub const HOMES: [(&str, &str, u8); 3] = [
    ("alice", "gw-alice", 1),
    ("bob", "gw-bob", 2),
    ("carol", "gw-carol", 3),
];

pub fn gateway_key(name: &str) -> SigningKeyPair {
    let seed = HOMES
        .iter()
        .find(|h| h.1 == name)
        .map(|h| h.2)
        .unwrap_or(99);
    SigningKeyPair::from_seed([seed; 32])
}

pub fn participant_key(name: &str) -> SigningKeyPair {
    let seed = HOMES
        .iter()
        .find(|h| h.0 == name)
        .map(|h| h.2)
        .unwrap_or(98);
    SigningKeyPair::from_seed([seed + 100; 32])
}

pub fn enrollments() -> Vec<GatewayEnrollment> {
    HOMES
        .iter()
        .map(|(p, g, _)| GatewayEnrollment {
            gateway: GatewayId::new(*g).unwrap(),
            participant: ParticipantId::new(*p).unwrap(),
            node: NodeId::new("f1").unwrap(),
            public_key: gateway_key(g).public_key(),
            inverter_w: 8_000,
            battery_w: 4_000,
            // Berlin.
            latitude_microdeg: 52_520_000,
            longitude_microdeg: 13_400_000,
        })
        .collect()
}

pub fn participants() -> Vec<Participant> {
    HOMES
        .iter()
        .map(|(p, _, _)| Participant {
            id: ParticipantId::new(*p).unwrap(),
            public_key: participant_key(p).public_key(),
            node: NodeId::new("f1").unwrap(),
            kind: ParticipantKind::Household,
        })
        .collect()
}

/// A reading of `gateway` for `interval` with cumulative registers `base + deltas`.
pub fn reading(
    gateway: &str,
    sequence: u64,
    interval: Interval,
    import: i64,
    export: i64,
    pv: i64,
    base: i64,
) -> Reading {
    Reading {
        zone: None,
        gateway: GatewayId::new(gateway).unwrap(),
        device: DeviceId::new("home").unwrap(),
        firmware: "0.1.0".into(),
        sequence,
        interval,
        measured_at: interval.end(),
        clock_synced: true,
        clock_set_count: 1,
        operating_seconds: 1000 + sequence,
        registers: Registers {
            grid_import: Wh(base + import),
            grid_export: Wh(base + export),
            pv: Wh(base + pv),
            battery_charge: Wh(base),
            battery_discharge: Wh(base),
        },
        deltas: Registers {
            grid_import: Wh(import),
            grid_export: Wh(export),
            pv: Wh(pv),
            battery_charge: Wh(0),
            battery_discharge: Wh(0),
        },
        soc_permille: None,
        flags: ReadingFlags::empty(),
    }
}

pub fn sign(r: &Reading) -> SignedEnvelope {
    SignedEnvelope::sign(r, &gateway_key(r.gateway.as_str()))
}

pub fn submit(envs: &[SignedEnvelope]) -> Vec<Submission> {
    envs.iter()
        .map(|e| Submission {
            source: "test".into(),
            raw: serde_json::to_vec(e).unwrap(),
        })
        .collect()
}

pub fn order(p: &str, id: &str) -> Counterparty {
    Counterparty::Order {
        order_id: id.into(),
        participant: ParticipantId::new(p).unwrap(),
        node: NodeId::new("f1").unwrap(),
    }
}

pub const RETAIL: PricePerMwh = PricePerMwh(300_000);
pub const FEED_IN: PricePerMwh = PricePerMwh(80_000);

pub fn result(interval: Interval, trades: Vec<Trade>) -> IntervalResult {
    IntervalResult {
        envelopes: Vec::new(),
        interval,
        zone: "test".into(),
        cleared_at: interval.start() - chrono::Duration::minutes(5),
        prices: BTreeMap::from([(NodeId::new("f1").unwrap(), PricePerMwh(200_000))]),
        orders: vec![],
        trades,
        utility_import: Wh(0),
        utility_export: Wh(0),
        flows: vec![],
        welfare: Money(0),
        network: Network {
            root: NodeId::new("root").unwrap(),
            branches: vec![],
            utility: UtilityTariff {
                envelope_excess_price: Default::default(),
                retail_price: Some(RETAIL),
                feed_in_price: Some(FEED_IN),
                import_limit_wh: None,
                export_limit_wh: None,
            },
        },
    }
}

pub fn trade(seller: Counterparty, buyer: Counterparty, wh: i64, price: i64) -> Trade {
    Trade {
        buyer,
        seller,
        energy: Wh(wh),
        price: PricePerMwh(price),
    }
}

pub fn settings() -> CoreSettings {
    CoreSettings {
        limits: Limits {
            horizon: chrono::Duration::days(2),
            max_clock_skew: chrono::Duration::seconds(60),
            zone: None,
        },
        grace: chrono::Duration::seconds(120),
    }
}

pub fn authority() -> SigningKeyPair {
    SigningKeyPair::from_seed([42; 32])
}

/// A database URL per back end; the tempdir must outlive the test.
pub async fn database(backend: &str, label: &str) -> (String, Option<tempfile::TempDir>) {
    match backend {
        "sqlite" => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("s.db").display());
            (url, Some(dir))
        }
        _ => (scratch::fresh_postgres(label).await.unwrap(), None),
    }
}

/// A service with the test registrations, its clock at [`EPOCH`] (running in real time).
pub async fn service(url: &str) -> Service {
    let db = settlement::store::open(url).await.unwrap();
    let mut s = Service::open(db, authority(), Clock::scaled(epoch(), 1.0), settings())
        .await
        .unwrap();
    s.use_postgres_copy(url).await.unwrap();
    s.set_gateways(&enrollments()).await.unwrap();
    s.set_participants(&participants()).await.unwrap();
    s
}

pub fn ts(s: &str) -> DateTime<Utc> {
    Utc.from_utc_datetime(&chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap())
}

/// The JSON a typed answer serialises to: what REST clients see.
pub fn json<T: serde::Serialize>(answer: &T) -> serde_json::Value {
    serde_json::to_value(answer).expect("answers serialise")
}

/// The test broker: `GRIDMESH_TEST_MQTT`, else the local Mosquitto.
pub fn broker() -> String {
    std::env::var("GRIDMESH_TEST_MQTT").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

/// A market source that knows the fixtures' gateways and participants.
pub fn registry_source() -> settlement::sources::StaticSource {
    let source = settlement::sources::StaticSource::default();
    for g in enrollments() {
        source.add_gateway(g);
    }
    for p in participants() {
        source.add_participant(p);
    }
    source
}

/// The `Authorization` header an enrolled gateway sends with a `POST /readings` batch: its
/// signed request over exactly `body` (what edge-gateway's uplink sends).
pub fn upload_auth(gateway: &str, body: &[u8]) -> String {
    gridmesh_protocol::request::gateway_authorization(
        &GatewayId::new(gateway).unwrap(),
        &gateway_key(gateway),
        Utc::now().timestamp(),
        "POST",
        "/readings",
        body,
    )
}

/// The operator's bearer token of the API fixtures.
pub const OPERATOR: &str = "op-secret";
/// The auditor's bearer token of the API fixtures that have one.
pub const AUDITOR: &str = "audit-secret";

/// A test's settlement config over `database_url`: any free local port, no market URL (the
/// fixtures' registry is the source), the operator token [`OPERATOR`]; the rest default.
pub fn api_config(database_url: String) -> settlement::SettlementConfig {
    settlement::SettlementConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        market_url: None,
        operator_token: Some(OPERATOR.into()),
        ..settlement::SettlementConfig::default()
    }
}

/// Settlement's HTTP API running for a test, its clock at [`EPOCH`] (real time).
pub struct Api {
    /// `http://addr`.
    pub base: String,
    pub http: reqwest::Client,
    /// The market source settlement reads: the fixtures' registry; add results to it.
    pub source: settlement::sources::StaticSource,
    pub shutdown: gridmesh_runtime::shutdown::Shutdown,
    pub running: settlement::RunningSettlement,
    /// The SQLite database's folder, kept while the API runs.
    pub dir: Option<tempfile::TempDir>,
}

/// Starts settlement with `config` and [`registry_source`] as its market source; `dir` is the
/// database's folder, kept as long as the [`Api`].
pub async fn serve_api(
    config: settlement::SettlementConfig,
    dir: Option<tempfile::TempDir>,
) -> Api {
    let source = registry_source();
    let shutdown = gridmesh_runtime::shutdown::Shutdown::new();
    let running = settlement::serve_with_source(
        config,
        Clock::scaled(epoch(), 1.0),
        shutdown.clone(),
        Some(std::sync::Arc::new(source.clone())),
    )
    .await
    .unwrap();
    Api {
        base: format!("http://{}", running.addr),
        http: reqwest::Client::new(),
        source,
        shutdown,
        running,
        dir,
    }
}

/// alice sells 500 Wh to bob at 12:00 on `s`, both readings in and the interval settled: bob
/// holds 500 Wh of tokens in one lot. Returns that lot.
pub async fn bob_holds_500_wh(s: &Service) -> [u8; 32] {
    let i = interval("12:00");
    s.ingest(submit(&[
        sign(&reading("gw-alice", 1, i, 0, 600, 700, 1_000)),
        sign(&reading("gw-bob", 1, i, 600, 0, 0, 1_000)),
    ]))
    .await
    .unwrap();
    s.add_result(&result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 500, 200_000)],
    ))
    .await
    .unwrap();
    s.settle(&i.key()).await.unwrap();
    let balances = json(&s.balances("bob").await.unwrap());
    let lot_hex = balances["holdings"][0]["lot"].as_str().unwrap().to_owned();
    hex::decode(&lot_hex).unwrap().try_into().unwrap()
}

/// bob's signed transfer of `amount` Wh of `lot` to carol with `nonce`.
pub fn bob_to_carol(lot: [u8; 32], amount: i64, nonce: u64) -> SignedEnvelope {
    SignedEnvelope::sign(
        &gridmesh_protocol::token::TokenTransfer {
            from: ParticipantId::new("bob").unwrap(),
            to: ParticipantId::new("carol").unwrap(),
            lot,
            amount: Wh(amount),
            nonce,
        },
        &participant_key("bob"),
    )
}
