//! Edges and hostile input over a real socket (issue 15): an order exactly at its interval's
//! gate closure and one second either side (accepted only strictly before, as documented:
//! `Interval::accepts_orders_at` is `now < closure`), an order replayed in a later interval,
//! and hostile bodies and identifiers on every POST/PUT route: a clear 4xx with a JSON
//! `{code, message}`, never a 5xx.

use chrono::{DateTime, Duration, Utc};
use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::registry::{Participant, ParticipantKind};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, Side, Wh, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use gridmesh_runtime::testing::{
    HOSTILE_IDS, announce_oversized, assert_clear_4xx, assert_clear_413, hostile_bodies,
};
use market_engine::{MarketConfig, RunningMarket, serve};
use serde_json::Value;

const TOKEN: &str = "operator-secret";

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
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
            envelope_excess_price: Default::default(),
            retail_price: Some(PricePerMwh(30_000)),
            feed_in_price: Some(PricePerMwh(8_000)),
            ..Default::default()
        },
    }
}

/// The traded interval of these tests.
fn interval() -> Interval {
    Interval::parse("2026-06-21T12:15:00Z", 15).unwrap()
}

fn key() -> SigningKeyPair {
    SigningKeyPair::from_seed([1; 32])
}

fn order(interval: Interval, nonce: u64) -> SignedEnvelope {
    let order = Order {
        zone: Some(ZoneId::new("test").unwrap()),
        participant: ParticipantId::new("alice").unwrap(),
        node: node("f1"),
        interval,
        side: Side::Buy,
        quantity: Wh(1_000),
        limit_price: PricePerMwh(25_000),
        nonce,
    };
    SignedEnvelope::sign(&order, &key())
}

struct Market {
    running: RunningMarket,
    shutdown: Shutdown,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Market {
    /// A market on SQLite whose clock starts at `epoch` and runs `speed` times real time,
    /// with alice registered at f1.
    async fn start(epoch: DateTime<Utc>, speed: f64) -> Market {
        let dir = tempfile::tempdir().unwrap();
        let config = MarketConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("m.db").display()),
            zone: "test".into(),
            operator_token: Some(TOKEN.into()),
            topology: Some(network()),
            ..MarketConfig::default()
        };
        let shutdown = Shutdown::new();
        let running = serve(config, Clock::scaled(epoch, speed), shutdown.clone())
            .await
            .unwrap();
        let market = Market {
            running,
            shutdown,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        let alice = Participant {
            id: ParticipantId::new("alice").unwrap(),
            public_key: key().public_key(),
            node: node("f1"),
            kind: ParticipantKind::Household,
        };
        let (status, body) = market.post("/participants", &alice).await;
        assert_eq!(status, 201, "{body}");
        market
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.running.url()))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

impl Drop for Market {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A clock that stands still for the test (a billionth of real speed: a few nanoseconds in
/// a test's seconds).
const STILL: f64 = 1e-9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_at_gate_closure_is_refused_one_second_before_it_is_accepted() {
    let lead = Duration::seconds(MarketConfig::default().gate_closure_lead_seconds);
    let closure = interval().gate_closure(lead);
    for (offset, accepted) in [(-1, true), (0, false), (1, false)] {
        let market = Market::start(closure + Duration::seconds(offset), STILL).await;
        let (status, body) = market.post("/orders", &order(interval(), 1)).await;
        let (batch_status, batch) = market
            .post(
                "/orders/batch",
                &serde_json::json!({ "orders": [order(interval(), 2)] }),
            )
            .await;
        assert_eq!(batch_status, 200, "{batch}");
        if accepted {
            assert_eq!(status, 201, "closure {offset:+} s: {body}");
            assert_eq!(body["order_id"], "alice:1");
            assert!(batch.to_string().contains("alice:2"), "{batch}");
        } else {
            assert_eq!(status, 409, "closure {offset:+} s: {body}");
            assert_eq!(body["code"], "gate_closed", "{body}");
            let message = body["message"].as_str().unwrap();
            // It says when the gate closed and which interval is open instead.
            assert!(
                message.contains(&closure.to_rfc3339()) && message.contains("12:30"),
                "{message}"
            );
            assert!(batch.to_string().contains("gate_closed"), "{batch}");
            assert!(!batch.to_string().contains("alice:2"), "{batch}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_replayed_in_a_later_interval_is_refused() {
    let lead = Duration::seconds(MarketConfig::default().gate_closure_lead_seconds);
    let closure = interval().gate_closure(lead);
    // 60x: the order goes in 2 real seconds before its gate closes.
    let clock_speed = 60.0;
    let market = Market::start(closure - Duration::seconds(120), clock_speed).await;
    let signed = order(interval(), 7);
    let (status, body) = market.post("/orders", &signed).await;
    assert_eq!(status, 201, "{body}");
    // Wait (on the market's own clock) until the next interval trades.
    let clock = market.running.market.clock.clone();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        clock.sleep_until(closure + Duration::seconds(1)),
    )
    .await
    .expect("the market's clock passes the gate closure");
    // The same signed order again: its interval is closed.
    let (status, body) = market.post("/orders", &signed).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["code"] == "gate_closed" || body["code"] == "replayed_nonce",
        "{body}"
    );
    // Its nonce re-used for the interval now trading: refused as a replay.
    let (status, body) = market.post("/orders", &order(interval().next(), 7)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "replayed_nonce", "{body}");
    // Nothing of it is in the later interval's book.
    let orders: Value = market
        .http
        .get(format!(
            "{}/orders?interval={}",
            market.running.url(),
            interval().next().key()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!orders.to_string().contains("alice:7"), "{orders}");
    // A fresh nonce for the later interval is fine.
    let (status, body) = market.post("/orders", &order(interval().next(), 8)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_and_ids_on_every_post_route_get_a_clear_4xx() {
    let lead = Duration::seconds(MarketConfig::default().gate_closure_lead_seconds);
    let market = Market::start(interval().gate_closure(lead) - Duration::minutes(5), 1.0).await;
    let base = market.running.url();
    let doc: Value = market
        .http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut writes: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ["post", "put"] {
            if ops.get(method).is_some() {
                writes.push((method.to_owned(), path.clone()));
            }
        }
    }
    writes.sort();
    assert!(writes.len() >= 8, "{writes:?}");
    let bodies = hostile_bodies(b"{\"id\":\"\xff\xfe\xc3\x28\"}");
    for (method, path) in &writes {
        // Hostile characters in path ids too.
        let path = path
            .replace("{id}", "al%25i_ce%27")
            .replace("{participant}", "%27");
        assert!(
            !path.contains('{'),
            "a path parameter is not covered: {path}"
        );
        for (what, body) in &bodies {
            let request = match method.as_str() {
                "post" => market.http.post(format!("{base}{path}")),
                _ => market.http.put(format!("{base}{path}")),
            };
            // With the operator's token, so the body itself is what is refused.
            let response = request
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_clear_4xx(response, &format!("{method} {path}, {what}")).await;
        }
        let answer = announce_oversized(
            market.running.addr,
            &method.to_uppercase(),
            &path,
            &format!("Bearer {TOKEN}"),
        )
        .await;
        assert_clear_413(answer, &format!("{method} {path}, over the limit"));
    }
    // Hostile ids in GET paths and filters: 4xx or an empty answer, never a 5xx.
    for id in HOSTILE_IDS {
        for path in [
            format!("/participants/{id}"),
            format!("/gateways/{id}"),
            format!("/orders?participant={id}"),
            format!("/results/{id}"),
        ] {
            let response = market
                .http
                .get(format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(
                !status.is_server_error() && (status.is_client_error() || text == "[]"),
                "{path}: {status} {text}"
            );
        }
    }
}
