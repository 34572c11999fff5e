//! REST tests over a real socket on SQLite and PostgreSQL: registration, signed orders and
//! every rejection, cancellation, depth, clearing, immutable results, restart recovery.

use chrono::{DateTime, Utc};
use gridmesh_protocol::api::market::{
    BookDepth, ErrorBody, MarketStatus, OrderRecord, PricingRule,
};
use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::{Order, OrderCancel};
use gridmesh_protocol::registry::{Participant, ParticipantKind};
use gridmesh_protocol::signing::{Signable, SignedEnvelope};
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, Side, Wh, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, RunningMarket, serve};
use serde_json::{Value, json};

const TOKEN: &str = "operator-secret";

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn network() -> Network {
    let branch = |n: &str, limit: i64| Branch {
        node: node(n),
        parent: node("sub"),
        import_limit_wh: Some(Wh(limit)),
        export_limit_wh: Some(Wh(limit)),
        fee_per_mwh: None,
    };
    Network {
        root: node("sub"),
        branches: vec![branch("f1", 50_000), branch("f2", 500)],
        utility: UtilityTariff {
            envelope_excess_price: Default::default(),
            retail_price: Some(PricePerMwh(30_000)),
            feed_in_price: Some(PricePerMwh(8_000)),
            ..Default::default()
        },
    }
}

fn config(database_url: String) -> MarketConfig {
    MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        zone: "test".into(),
        operator_token: Some(TOKEN.into()),
        topology: Some(network()),
        ..MarketConfig::default()
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(m: &RunningMarket) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: m.url(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.get_req(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn get_with(&self, path: &str, token: &str) -> (u16, Value) {
        self.get_req(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    async fn get_req(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

fn key(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_seed([seed; 32])
}

fn order(who: &str, at: &str, interval: Interval, side: Side, q: i64, p: i64, nonce: u64) -> Order {
    Order {
        zone: Some(ZoneId::new("test").unwrap()),
        participant: ParticipantId::new(who).unwrap(),
        node: node(at),
        interval,
        side,
        quantity: Wh(q),
        limit_price: PricePerMwh(p),
        nonce,
    }
}

fn assert_code(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(got.1["message"].as_str().unwrap().len() > 10);
    // Exactly the protocol's error shape.
    let typed: ErrorBody = serde_json::from_value(got.1.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), got.1);
}

async fn start(url: String, clock: Clock) -> (RunningMarket, Shutdown) {
    let shutdown = Shutdown::new();
    let m = serve(config(url), clock, shutdown.clone()).await.unwrap();
    (m, shutdown)
}

async fn scenario(url: String) {
    let clock = Clock::scaled(epoch(), 1.0);
    let (m, shutdown) = start(url.clone(), clock.clone()).await;
    let c = Client::new(&m);
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let later = open.next();
    let past = Interval::parse("2026-06-21T12:00:00Z", 15).unwrap();

    // Registration needs the operator token (or the home's enrolment token, tests/access.rs).
    let alice = Participant {
        id: ParticipantId::new("alice").unwrap(),
        public_key: key(1).public_key(),
        node: node("f1"),
        kind: ParticipantKind::Household,
    };
    assert_code(
        c.post("/participants", &alice, None).await,
        401,
        "unauthorized",
    );
    assert_code(
        c.post("/participants", &alice, Some("nope")).await,
        401,
        "unauthorized",
    );
    assert_eq!(c.post("/participants", &alice, Some(TOKEN)).await.0, 201);
    let bob = Participant {
        id: ParticipantId::new("bob").unwrap(),
        public_key: key(2).public_key(),
        node: node("f1"),
        kind: ParticipantKind::Household,
    };
    assert_eq!(c.post("/participants", &bob, Some(TOKEN)).await.0, 201);
    let trader = Participant {
        id: ParticipantId::new("tom").unwrap(),
        public_key: key(3).public_key(),
        node: node("sub"),
        kind: ParticipantKind::Trader,
    };
    assert_eq!(c.post("/participants", &trader, Some(TOKEN)).await.0, 201);
    let mut ghost = trader.clone();
    ghost.node = node("f9");
    assert_code(
        c.post("/participants", &ghost, Some(TOKEN)).await,
        422,
        "unknown_node",
    );
    assert_eq!(c.get("/participants").await.1.as_array().unwrap().len(), 3);

    // A good order, then every kind of bad one.
    let buy = SignedEnvelope::sign(
        &order("alice", "f1", open, Side::Buy, 1200, 25_000, 1),
        &key(1),
    );
    let (status, body) = c.post("/orders", &buy, None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, json!({ "order_id": "alice:1" }));
    assert_code(c.post("/orders", &buy, None).await, 409, "replayed_nonce");
    let mut forged = SignedEnvelope::sign(
        &order("alice", "f1", open, Side::Buy, 1200, 25_000, 2),
        &key(1),
    );
    let qty_offset = forged.payload.len() - 24;
    forged.payload[qty_offset + 7] ^= 1; // quantity changed after signing
    assert_code(c.post("/orders", &forged, None).await, 401, "bad_signature");
    let impostor = SignedEnvelope::sign(
        &order("alice", "f1", open, Side::Buy, 1, 25_000, 3),
        &key(9),
    );
    assert_code(
        c.post("/orders", &impostor, None).await,
        401,
        "key_mismatch",
    );
    let stranger =
        SignedEnvelope::sign(&order("zed", "f1", open, Side::Buy, 1, 25_000, 1), &key(9));
    assert_code(
        c.post("/orders", &stranger, None).await,
        403,
        "unknown_participant",
    );
    for q in [0, -5] {
        let bytes = order("alice", "f1", open, Side::Buy, q, 25_000, 10).encode();
        let env = SignedEnvelope::sign_bytes(bytes, &key(1));
        assert_code(c.post("/orders", &env, None).await, 422, "invalid_quantity");
    }
    let absurd = SignedEnvelope::sign(
        &order("alice", "f1", open, Side::Buy, 5, 50_000_000, 11),
        &key(1),
    );
    assert_code(c.post("/orders", &absurd, None).await, 422, "invalid_price");
    let nowhere = SignedEnvelope::sign(&order("tom", "f9", open, Side::Buy, 5, 100, 1), &key(3));
    assert_code(c.post("/orders", &nowhere, None).await, 422, "unknown_node");
    let elsewhere =
        SignedEnvelope::sign(&order("alice", "f2", open, Side::Buy, 5, 100, 12), &key(1));
    assert_code(c.post("/orders", &elsewhere, None).await, 403, "wrong_node");
    let late = SignedEnvelope::sign(&order("alice", "f1", past, Side::Buy, 5, 100, 13), &key(1));
    assert_code(c.post("/orders", &late, None).await, 409, "gate_closed");
    let cancel_as_order = SignedEnvelope::sign(
        &OrderCancel {
            participant: ParticipantId::new("alice").unwrap(),
            order_nonce: 1,
        },
        &key(1),
    );
    assert_code(
        c.post("/orders", &cancel_as_order, None).await,
        400,
        "wrong_message",
    );
    assert_code(
        c.post("/orders", &json!({"payload": 1}), None).await,
        400,
        "invalid_request",
    );

    // Sellers; one cancels; a later-interval order stays open across the restart.
    let sell = SignedEnvelope::sign(
        &order("bob", "f1", open, Side::Sell, 1000, 10_000, 1),
        &key(2),
    );
    assert_eq!(c.post("/orders", &sell, None).await.0, 201);
    let extra = SignedEnvelope::sign(
        &order("bob", "f1", open, Side::Sell, 700, 9_000, 2),
        &key(2),
    );
    assert_eq!(c.post("/orders", &extra, None).await.0, 201);
    let cancel = SignedEnvelope::sign(
        &OrderCancel {
            participant: ParticipantId::new("bob").unwrap(),
            order_nonce: 2,
        },
        &key(2),
    );
    let (status, body) = c.post("/orders/cancel", &cancel, None).await;
    assert_eq!(
        (status, body),
        (200, json!({ "order_id": "bob:2", "cancelled": true }))
    );
    let cancel_missing = SignedEnvelope::sign(
        &OrderCancel {
            participant: ParticipantId::new("bob").unwrap(),
            order_nonce: 99,
        },
        &key(2),
    );
    assert_code(
        c.post("/orders/cancel", &cancel_missing, None).await,
        404,
        "order_not_found",
    );
    let future = SignedEnvelope::sign(
        &order("tom", "sub", later, Side::Buy, 400, 40_000, 1),
        &key(3),
    );
    assert_eq!(c.post("/orders", &future, None).await.0, 201);

    // Orders are household data: the operator reads them (tests/access.rs has the rest).
    let (status, mine) = c
        .get_with(
            "/orders?participant=bob&interval=2026-06-21T12:15:00Z",
            TOKEN,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(mine.as_array().unwrap().len(), 2);
    let (status, book) = c
        .get_with("/intervals/2026-06-21T12:15:00Z/book", TOKEN)
        .await;
    assert_eq!(status, 200);
    assert_eq!(book["orders"], 2);
    assert_eq!(book["nodes"]["f1"]["bids"][0]["quantity_wh"], 1200);
    assert_eq!(book["nodes"]["f1"]["asks"][0]["price"], 10_000);
    let typed: BookDepth = serde_json::from_value(book.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), book);
    let typed: Vec<OrderRecord> = serde_json::from_value(mine.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), mine);
    assert_code(
        c.get_with("/intervals/2026-06-21T12:15:00Z/result", TOKEN)
            .await,
        404,
        "not_cleared",
    );
    assert_code(
        c.get("/intervals/2026-06-21T12:07:00Z/book").await,
        400,
        "invalid_request",
    );

    // Restart mid-interval: the open book, registrations and used nonces survive.
    shutdown.stop().await;
    let (m, shutdown) = start(url.clone(), clock.clone()).await;
    let c = Client::new(&m);
    assert_eq!(c.get("/participants").await.1.as_array().unwrap().len(), 3);
    assert_eq!(
        c.get_with("/intervals/2026-06-21T12:15:00Z/book", TOKEN)
            .await
            .1["orders"],
        2
    );
    assert_code(c.post("/orders", &buy, None).await, 409, "replayed_nonce");

    // Clear the open interval (as gate closure would) — twice: the same stored result.
    let first = m.market.clear_interval(open).await.unwrap();
    let again = m.market.clear_interval(open).await.unwrap();
    assert_eq!(first, again);
    let (status, result) = c
        .get_with("/intervals/2026-06-21T12:15:00Z/result", TOKEN)
        .await;
    assert_eq!(status, 200);
    assert_eq!(result, serde_json::to_value(&first).unwrap());
    let cleared: Vec<i64> = first.orders.iter().map(|o| o.cleared.0).collect();
    assert_eq!(cleared, vec![1000, 1000]); // alice buys bob's 1000 Wh; the rest is above her bid
    assert_eq!(first.prices[&node("f1")], PricePerMwh(25_000));
    assert_eq!(first.trades.len(), 1);
    let after = SignedEnvelope::sign(&order("alice", "f1", open, Side::Buy, 5, 100, 20), &key(1));
    assert_code(c.post("/orders", &after, None).await, 409, "gate_closed");
    let (status, results) = c
        .get_with("/results?since=2026-06-21T12:00:00Z&limit=10", TOKEN)
        .await;
    assert_eq!(status, 200);
    assert_eq!(results.as_array().unwrap().len(), 1);

    // Topology is operator-only and validated.
    let mut bad = network();
    bad.branches[0].parent = node("nowhere");
    let put = |token: Option<&'static str>, body: Network| {
        let mut req = c.http.put(format!("{}/topology", c.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_code(put(None, network()).await, 401, "operator_token_required");
    assert_code(put(Some(TOKEN), bad).await, 422, "invalid_topology");
    assert_eq!(put(Some(TOKEN), network()).await.0, 200);
    assert_eq!(c.get("/topology").await.1["root"], "sub");

    // Service endpoints.
    assert_eq!(c.get("/healthz").await, (200, json!({ "status": "ok" })));
    let (_, status) = c.get("/status").await;
    assert_eq!(status["interval_minutes"], 15);
    assert_eq!(
        status["next_open_interval"]["start"],
        "2026-06-21T12:15:00Z"
    );
    // The read model's shape: exactly these keys, and it decodes as the protocol type.
    let mut keys: Vec<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "clock",
            "clock_speed",
            "gate_closure_lead_seconds",
            "interval_minutes",
            "next_gate_closure",
            "next_open_interval",
            "pricing",
            "zone"
        ]
    );
    let typed: MarketStatus = serde_json::from_value(status.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), status);
    assert_eq!(typed.pricing, PricingRule::PayAsClear);
    let (_, metrics) = c.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("gridmesh_market_intervals_cleared_total 1")
    );
    let (_, api) = c.get("/openapi.json").await;
    assert_eq!(api["openapi"], "3.1.0");
    assert!(api["paths"]["/orders"]["post"].is_object());
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(format!("sqlite://{}", dir.path().join("m.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_on_postgres() {
    let url = gridmesh_runtime::db::scratch::fresh_postgres("market_rest")
        .await
        .unwrap();
    scenario(url).await;
}

/// Many orders in flight at once share one batch verification; forgeries among them are
/// still found one by one and only they are rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_forgeries_are_singled_out() {
    let dir = tempfile::tempdir().unwrap();
    let (m, shutdown) = start(
        format!("sqlite://{}", dir.path().join("m.db").display()),
        Clock::scaled(epoch(), 1.0),
    )
    .await;
    let c = Client::new(&m);
    let trader = Participant {
        id: ParticipantId::new("tom").unwrap(),
        public_key: key(3).public_key(),
        node: node("sub"),
        kind: ParticipantKind::Trader,
    };
    assert_eq!(c.post("/participants", &trader, Some(TOKEN)).await.0, 201);
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let mut requests = Vec::new();
    for nonce in 0..60u64 {
        let mut env = SignedEnvelope::sign(
            &order(
                "tom",
                "sub",
                open,
                Side::Buy,
                100 + nonce as i64,
                20_000,
                nonce,
            ),
            &key(3),
        );
        if nonce % 7 == 3 {
            env.signature[5] ^= 0x40;
        }
        let (http, url) = (c.http.clone(), format!("{}/orders", c.base));
        requests.push(tokio::spawn(async move {
            let r = http.post(url).json(&env).send().await.unwrap();
            (nonce, r.status().as_u16())
        }));
    }
    for r in requests {
        let (nonce, status) = r.await.unwrap();
        let expected = if nonce % 7 == 3 { 401 } else { 201 };
        assert_eq!(status, expected, "nonce {nonce}");
    }
    let (_, book) = c
        .get_with("/intervals/2026-06-21T12:15:00Z/book", TOKEN)
        .await;
    assert_eq!(book["orders"], 60 - 9);
    shutdown.stop().await;
}

/// A market that was down over a gate closure clears the missed interval as soon as it is back,
/// from the book it stored before going down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_after_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let (m, shutdown) = start(url.clone(), Clock::scaled(epoch(), 1.0)).await;
    let c = Client::new(&m);
    let trader = Participant {
        id: ParticipantId::new("tom").unwrap(),
        public_key: key(3).public_key(),
        node: node("sub"),
        kind: ParticipantKind::Trader,
    };
    assert_eq!(c.post("/participants", &trader, Some(TOKEN)).await.0, 201);
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let buy = SignedEnvelope::sign(
        &order("tom", "sub", open, Side::Buy, 500, 40_000, 1),
        &key(3),
    );
    assert_eq!(c.post("/orders", &buy, None).await.0, 201);
    shutdown.stop().await;

    // Back at 12:20, after the 12:10 gate closure.
    let later = epoch() + chrono::Duration::minutes(20);
    let (m, shutdown) = start(url, Clock::scaled(later, 1.0)).await;
    let c = Client::new(&m);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let result = loop {
        let (status, body) = c
            .get_with("/intervals/2026-06-21T12:15:00Z/result", TOKEN)
            .await;
        if status == 200 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not cleared: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(result["orders"][0]["cleared"], 500);
    assert_eq!(result["utility_import"], 500);
    assert_eq!(result["prices"]["sub"], 30_000);
    shutdown.stop().await;
}
