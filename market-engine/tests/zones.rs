//! Zone binding and bounds at every entry point (issue 14, items 6a and 7), over a real socket
//! on SQLite and PostgreSQL, and through the binary:
//! - an order signed for zone A and copied to zone B's market is refused (`wrong_zone`, naming
//!   both zones); a legacy v1 order (no zone) is refused (`unzoned_order`, naming the zone);
//! - `limit_price = i64::MIN` (and other out-of-range values) is refused by `POST /orders`, by
//!   offline clearing and by the trader CLI, instead of wrapping `abs()`.

use chrono::{DateTime, Utc};
use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::registry::{Participant, ParticipantKind};
use gridmesh_protocol::signing::{Signable, SignedEnvelope};
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, Side, Wh, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, RunningMarket, serve};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

const TOKEN: &str = "operator-secret";

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn zone(s: &str) -> ZoneId {
    ZoneId::new(s).unwrap()
}

fn network() -> Network {
    Network {
        root: node("sub"),
        branches: vec![Branch {
            node: node("f1"),
            parent: node("sub"),
            import_limit_wh: Some(Wh(50_000)),
            export_limit_wh: Some(Wh(50_000)),
            fee_per_mwh: None,
        }],
        utility: UtilityTariff {
            retail_price: Some(PricePerMwh(30_000)),
            feed_in_price: Some(PricePerMwh(8_000)),
            ..Default::default()
        },
    }
}

async fn start(zone: &str, database_url: String) -> (RunningMarket, Shutdown) {
    let shutdown = Shutdown::new();
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        zone: zone.into(),
        operator_token: Some(TOKEN.into()),
        topology: Some(network()),
        ..MarketConfig::default()
    };
    let m = serve(config, Clock::scaled(epoch(), 1.0), shutdown.clone())
        .await
        .unwrap();
    (m, shutdown)
}

async fn post(m: &RunningMarket, path: &str, body: &impl serde::Serialize) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", m.url()))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The error's status and code, and its message (in the protocol's error shape).
fn refused(got: (u16, Value), status: u16, code: &str) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    let error: ErrorBody = serde_json::from_value(got.1).unwrap();
    assert_eq!(error.code, code, "{}", error.message);
    error.message
}

fn trader_key() -> SigningKeyPair {
    SigningKeyPair::from_seed([9; 32])
}

/// The trader `tom`, registered with the same key in every zone (a trader active in several
/// zones: exactly the case a v1 order could be replayed in).
async fn register_trader(m: &RunningMarket) {
    let tom = Participant {
        id: ParticipantId::new("tom").unwrap(),
        public_key: trader_key().public_key(),
        node: node("sub"),
        kind: ParticipantKind::Trader,
    };
    assert_eq!(post(m, "/participants", &tom).await.0, 201);
}

fn order(zone: Option<ZoneId>, quantity: i64, limit_price: i64, nonce: u64) -> Order {
    Order {
        zone,
        participant: ParticipantId::new("tom").unwrap(),
        node: node("f1"),
        interval: Interval::parse("2026-06-21T12:15:00Z", 15).unwrap(),
        side: Side::Buy,
        quantity: Wh(quantity),
        limit_price: PricePerMwh(limit_price),
        nonce,
    }
}

fn signed(order: &Order) -> SignedEnvelope {
    SignedEnvelope::sign(order, &trader_key())
}

async fn scenario(url_north: String, url_south: String) {
    let (north, stop_north) = start("north", url_north).await;
    let (south, stop_south) = start("south", url_south).await;
    register_trader(&north).await;
    register_trader(&south).await;

    // An order for north is booked in north…
    let for_north = signed(&order(Some(zone("north")), 1_200, 25_000, 1));
    assert_eq!(for_north.payload.len(), Order::LEN);
    let (status, body) = post(&north, "/orders", &for_north).await;
    assert_eq!(status, 201, "{body}");
    // …and the same envelope, copied to south (where tom trades with the same key and nonce 1
    // is fresh), is refused with both zones named.
    let message = refused(post(&south, "/orders", &for_north).await, 422, "wrong_zone");
    assert!(
        message.contains("`north`") && message.contains("`south`"),
        "{message}"
    );
    // South books an order signed for south with the same nonce.
    let for_south = signed(&order(Some(zone("south")), 1_200, 25_000, 1));
    assert_eq!(post(&south, "/orders", &for_south).await.0, 201);

    // A legacy v1 order (no zone) is refused in every zone, naming the zone to sign for.
    let v1 = signed(&order(None, 1_200, 25_000, 2));
    assert!(v1.payload.starts_with(b"gridmesh/order/v1"));
    for (m, name) in [(&north, "north"), (&south, "south")] {
        let message = refused(post(m, "/orders", &v1).await, 422, "unzoned_order");
        assert!(message.contains("gridmesh/order/v2"), "{message}");
        assert!(message.contains(&format!("`{name}`")), "{message}");
    }

    // Bounds (regression: `abs()` wrapped for i64::MIN, so this price was booked).
    for (nonce, price) in [
        (10, i64::MIN),
        (11, i64::MAX),
        (12, -10_000_001),
        (13, 10_000_001),
    ] {
        let bad = signed(&order(Some(zone("north")), 1_200, price, nonce));
        let message = refused(post(&north, "/orders", &bad).await, 422, "invalid_price");
        assert!(message.contains(&price.to_string()), "{message}");
    }
    for (nonce, quantity) in [(20, i64::MAX), (21, 1_000_000_000_001)] {
        let bad = signed(&order(Some(zone("north")), quantity, 25_000, nonce));
        refused(post(&north, "/orders", &bad).await, 422, "invalid_quantity");
    }
    // The bounds themselves are accepted.
    let edge = signed(&order(
        Some(zone("north")),
        1_000_000_000_000,
        -10_000_000,
        30,
    ));
    assert_eq!(post(&north, "/orders", &edge).await.0, 201);

    stop_north.stop().await;
    stop_south.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_and_bounds_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(
        format!("sqlite://{}", dir.path().join("north.db").display()),
        format!("sqlite://{}", dir.path().join("south.db").display()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_and_bounds_on_postgres() {
    let north = gridmesh_runtime::db::scratch::fresh_postgres("market_zone_north")
        .await
        .unwrap();
    let south = gridmesh_runtime::db::scratch::fresh_postgres("market_zone_south")
        .await
        .unwrap();
    scenario(north, south).await;
}

/// A market whose configured zone cannot be signed into a 32-byte identifier does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_zone_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("m.db").display()),
        zone: "north zone".into(),
        ..MarketConfig::default()
    };
    let err = serve(config, Clock::scaled(epoch(), 1.0), Shutdown::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("zone") && err.contains("north zone"), "{err}");
}

fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_market-engine"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Regression (issue 14, item 6a): offline clearing took `limit_price = i64::MIN` and reported
/// a welfare of 9.2·10^18; it is now an invalid book (exit code 2) that names the price.
#[test]
fn offline_clearing_refuses_out_of_range_prices() {
    let book = |price: i64| {
        format!(
            r#"{{"network":{{"root":"sub","branches":[{{"node":"f1","parent":"sub","import_limit_wh":50000,"export_limit_wh":30000,"fee_per_mwh":0}}],"utility":{{"retail_price":30000,"feed_in_price":8000}}}},"orders":[{{"id":"b1","side":"buy","node":"f1","quantity_wh":1200,"limit_price":25000}},{{"id":"s1","side":"sell","node":"f1","quantity_wh":2000,"limit_price":{price}}}]}}"#
        )
    };
    let (code, stdout, stderr) = run(&["clear", "--book", "-"], &book(i64::MIN));
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains(&i64::MIN.to_string()), "{stderr}");
    assert!(stderr.contains("prices must lie within"), "{stderr}");
    // The bound itself clears, and the welfare is what the prices say.
    let (code, stdout, stderr) = run(&["clear", "--book", "-"], &book(-10_000_000));
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    // s1 sells all 2000 Wh at −10^7: 1200 Wh to b1 (25 000), 800 Wh to the utility (feed-in
    // 8000): (25 000 × 1200 + 10^7 × 2000 + 8000 × 800) / 10^6 = 20 036.4 → 20 036.
    assert_eq!(report["welfare"], 20_036, "{stdout}");
}

/// The trader CLI checks the bounds before it signs or sends anything (no market is running at
/// the URL it is given: the refusal comes first).
#[test]
fn trader_cli_refuses_out_of_range_orders() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tom.key");
    SigningKeyPair::generate_file(&key).unwrap();
    let key = key.display().to_string();
    let submit = |quantity: &str, price: &str| {
        run(
            &[
                "order",
                "--market",
                "http://127.0.0.1:9",
                "submit",
                "--key",
                &key,
                "--participant",
                "tom",
                "--node",
                "f1",
                "--side",
                "buy",
                "--quantity-wh",
                quantity,
                "--limit-price",
                price,
            ],
            "",
        )
    };
    let (code, _, stderr) = submit("1200", &i64::MIN.to_string());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("prices must lie within"), "{stderr}");
    let (code, _, stderr) = submit("0", "25000");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("quantity 0"), "{stderr}");
    // In range, it goes on to the market (which is not there: a runtime failure, exit 1).
    let (code, _, stderr) = submit("1200", "25000");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot reach the market"), "{stderr}");
}
