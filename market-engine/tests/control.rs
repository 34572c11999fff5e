//! The market's side of the control loop over a real socket, on SQLite and PostgreSQL: the
//! signing key, signed results, per-gateway signed operating envelopes that verify with the key
//! from `/market-key` and carry the result's allocation (the README's worked example), and
//! operator limit overrides that change clearing and envelopes.

use chrono::{DateTime, Utc};
use gridmesh_protocol::envelope::{EnvelopeBasis, MarketKey, OperatingEnvelope, SignedResult};
use gridmesh_protocol::grid::{Branch, LimitOverride, Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::{
    GatewayId, Interval, NodeId, ParticipantId, PricePerMwh, Side, SignedEnvelope, Wh, ZoneId,
};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, RunningMarket, serve};
use serde_json::{Value, json};
use std::path::Path;

const TOKEN: &str = "operator-secret";

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// The README's example: feeder f1 exports at most 3 000 Wh and imports at most 2 000 Wh per
/// interval.
fn network() -> Network {
    Network {
        root: node("sub"),
        branches: vec![Branch {
            node: node("f1"),
            parent: node("sub"),
            import_limit_wh: Some(Wh(2_000)),
            export_limit_wh: Some(Wh(3_000)),
            fee_per_mwh: None,
        }],
        utility: UtilityTariff {
            retail_price: Some(PricePerMwh(30_000)),
            feed_in_price: Some(PricePerMwh(8_000)),
            ..Default::default()
        },
    }
}

fn config(database_url: String, key: &Path) -> MarketConfig {
    MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        zone: "ctl".into(),
        operator_token: Some(TOKEN.into()),
        topology: Some(network()),
        signing_key: Some(key.to_owned()),
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

    async fn send(&self, req: reqwest::RequestBuilder, token: Option<&str>) -> (u16, Value) {
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A read as the operator (results in full and every gateway's envelopes are not public).
    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)), Some(TOKEN))
            .await
    }

    async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_value(body).unwrap()
    }

    async fn text(&self, path: &str) -> String {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        token: Option<&str>,
    ) -> (u16, Value) {
        self.send(
            self.http.post(format!("{}{path}", self.base)).json(body),
            token,
        )
        .await
    }

    async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)), token)
            .await
    }
}

fn assert_code(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(got.1["message"].as_str().unwrap().len() > 10);
}

fn key(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_seed([seed; 32])
}

/// The four homes of the README example: (id, inverter W, battery W).
const HOMES: [(&str, u32, u32); 4] = [
    ("h1", 5_000, 3_000),
    ("h2", 4_000, 0),
    ("h3", 6_000, 2_000),
    ("h4", 0, 0),
];

async fn enrol(c: &Client) {
    for (i, (id, inverter_w, battery_w)) in HOMES.iter().enumerate() {
        let k = key(i as u8 + 1);
        let p = Participant {
            id: ParticipantId::new(*id).unwrap(),
            public_key: k.public_key(),
            node: node("f1"),
            kind: ParticipantKind::Household,
        };
        assert_eq!(c.post("/participants", &p, Some(TOKEN)).await.0, 201);
        let g = GatewayEnrollment {
            gateway: GatewayId::new(format!("gw-{id}")).unwrap(),
            participant: p.id.clone(),
            node: node("f1"),
            public_key: k.public_key(),
            inverter_w: *inverter_w,
            battery_w: *battery_w,
            latitude_microdeg: 0,
            longitude_microdeg: 0,
        };
        assert_eq!(c.post("/gateways", &g, Some(TOKEN)).await.0, 201);
    }
}

async fn order(c: &Client, home: usize, interval: Interval, side: Side, q: i64, p: i64, n: u64) {
    let o = Order {
        zone: Some(ZoneId::new("ctl").unwrap()),
        participant: ParticipantId::new(HOMES[home].0).unwrap(),
        node: node("f1"),
        interval,
        side,
        quantity: Wh(q),
        limit_price: PricePerMwh(p),
        nonce: n,
    };
    let signed = SignedEnvelope::sign(&o, &key(home as u8 + 1));
    let (status, body) = c.post("/orders", &signed, None).await;
    assert_eq!(status, 201, "{body}");
}

fn limits(r: &IntervalResult) -> Vec<(i64, i64)> {
    r.envelopes
        .iter()
        .map(|e| (e.export_limit_wh.0, e.import_limit_wh.0))
        .collect()
}

async fn scenario(url: String, dir: &Path) {
    let key_path = dir.join("keys").join("market.key");
    let clock = Clock::scaled(epoch(), 1.0);
    let shutdown = Shutdown::new();
    let m = serve(
        config(url.clone(), &key_path),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let c = Client::new(&m);

    // The key file was created private, and /market-key serves its public key.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let market_key: MarketKey = c.get_as("/market-key").await;
    assert_eq!(market_key.zone, "ctl");
    assert_eq!(market_key.public_key, m.market_key);
    assert_eq!(
        market_key.public_key,
        SigningKeyPair::load(&key_path).unwrap().public_key()
    );

    enrol(&c).await;
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    // h1 sells 600 Wh cheaply, h2 offers 900 Wh above what anyone pays, h4 buys 400 Wh; h3
    // places no order.
    order(&c, 0, open, Side::Sell, 600, 5_000, 1).await;
    order(&c, 1, open, Side::Sell, 900, 29_000, 1).await;
    order(&c, 3, open, Side::Buy, 400, 35_000, 1).await;
    // Enrolled, nothing cleared yet: no envelope (the gateway uses its default).
    assert!(
        c.get_as::<Vec<SignedEnvelope>>("/envelopes/gw-h1")
            .await
            .is_empty()
    );
    let result = m.market.clear_interval(open).await.unwrap();
    let cleared: Vec<i64> = result.orders.iter().map(|o| o.cleared.0).collect();
    assert_eq!(cleared, vec![600, 0, 400]);
    // The README's worked example, gateway by gateway (h1..h4).
    assert_eq!(
        limits(&result),
        vec![(1_500, 550), (1_000, 550), (900, 550), (0, 950)]
    );
    assert_eq!(result.envelopes[0].cleared_export_wh, Wh(600));
    assert_eq!(result.envelopes[3].cleared_import_wh, Wh(400));

    // The signed result verifies with the market key; its body is byte for byte what the
    // unsigned endpoint serves.
    let signed: SignedResult = c
        .get_as("/intervals/2026-06-21T12:15:00Z/result/signed")
        .await;
    assert_eq!(signed.open(&market_key.public_key).unwrap(), result);
    let unsigned = c.text("/intervals/2026-06-21T12:15:00Z/result").await;
    assert_eq!(unsigned.as_bytes(), &signed.body_base64[..]);
    assert_code(
        c.get("/intervals/2026-06-21T12:30:00Z/result/signed").await,
        404,
        "not_cleared",
    );

    // Every gateway's served envelope verifies with /market-key and equals its allocation.
    for (i, allocation) in result.envelopes.iter().enumerate() {
        let served: Vec<SignedEnvelope> = c
            .get_as(&format!("/envelopes/{}", allocation.gateway))
            .await;
        assert_eq!(served.len(), 1, "gateway {i}");
        let e: OperatingEnvelope = served[0].open_by(&market_key.public_key).unwrap();
        assert_eq!(e.gateway, allocation.gateway);
        assert_eq!(e.participant, allocation.participant);
        assert_eq!(e.node, allocation.node);
        assert_eq!(e.interval, open);
        assert_eq!(e.zone, "ctl");
        assert_eq!(e.export_limit, allocation.export_limit_wh);
        assert_eq!(e.import_limit, allocation.import_limit_wh);
        assert_eq!(e.basis, EnvelopeBasis::Cleared);
        assert_eq!(e.result_digest, signed.body_digest());
        assert!(e.issued_at <= clock.now() && e.issued_at >= epoch());
        // A forged copy (one bit flipped) does not verify.
        let mut forged = served[0].clone();
        forged.payload[170] ^= 1;
        assert!(
            forged
                .open_by::<OperatingEnvelope>(&market_key.public_key)
                .is_err()
        );
    }
    assert_code(c.get("/envelopes/gw-nobody").await, 404, "not_found");
    assert_code(
        c.get("/envelopes/a-gateway-id-that-is-far-too-long-to-be-valid")
            .await,
        400,
        "invalid_request",
    );

    // Limit overrides: operator only, validated.
    let over = |node_id: &str, from: &str, until: &str, exp: Option<i64>| LimitOverride {
        id: 77, // ignored
        node: node(node_id),
        from: DateTime::parse_from_rfc3339(from)
            .unwrap()
            .with_timezone(&Utc),
        until: DateTime::parse_from_rfc3339(until)
            .unwrap()
            .with_timezone(&Utc),
        import_limit_wh: None,
        export_limit_wh: exp.map(Wh),
        reason: "transformer maintenance".into(),
    };
    let good = over(
        "f1",
        "2026-06-21T12:30:00Z",
        "2026-06-21T12:45:00Z",
        Some(1_000),
    );
    assert_code(
        c.post("/limits", &good, None).await,
        401,
        "operator_token_required",
    );
    assert_code(
        c.post("/limits", &good, Some("wrong")).await,
        403,
        "operator_token_invalid",
    );
    for bad in [
        over(
            "sub",
            "2026-06-21T12:30:00Z",
            "2026-06-21T12:45:00Z",
            Some(1),
        ),
        over(
            "f9",
            "2026-06-21T12:30:00Z",
            "2026-06-21T12:45:00Z",
            Some(1),
        ),
        over(
            "f1",
            "2026-06-21T12:45:00Z",
            "2026-06-21T12:30:00Z",
            Some(1),
        ),
        over(
            "f1",
            "2026-06-21T12:30:00Z",
            "2026-06-21T12:45:00Z",
            Some(-1),
        ),
    ] {
        assert_code(
            c.post("/limits", &bad, Some(TOKEN)).await,
            400,
            "invalid_override",
        );
    }
    assert_code(
        c.post("/limits", &json!({"node": "f1"}), Some(TOKEN)).await,
        400,
        "invalid_request",
    );
    let (status, stored) = c.post("/limits", &good, Some(TOKEN)).await;
    assert_eq!(status, 201, "{stored}");
    let stored: LimitOverride = serde_json::from_value(stored).unwrap();
    assert_ne!(stored.id, 77);
    assert_eq!(
        LimitOverride {
            id: 77,
            ..stored.clone()
        },
        good
    );
    let listed: Vec<LimitOverride> = c.get_as("/limits").await;
    assert_eq!(listed, vec![stored.clone()]);

    // The override tightens f1's export for 12:30 only: h1's 1 500 Wh sale clears 1 400 Wh
    // (400 to h4 on the feeder, 1 000 out of it), and nothing is left for the others.
    let later = open.next();
    order(&c, 0, later, Side::Sell, 1_500, 5_000, 2).await;
    order(&c, 3, later, Side::Buy, 400, 35_000, 2).await;
    let constrained = m.market.clear_interval(later).await.unwrap();
    assert_eq!(
        constrained.network.branches[0].export_limit_wh,
        Some(Wh(1_000))
    );
    assert_eq!(
        constrained.network.branches[0].import_limit_wh,
        Some(Wh(2_000))
    );
    assert_eq!(constrained.flows[0].export_limit, Some(Wh(1_000)));
    assert_eq!(constrained.flows[0].flow, Wh(-1_000));
    let cleared: Vec<i64> = constrained.orders.iter().map(|o| o.cleared.0).collect();
    assert_eq!(cleared, vec![1_400, 400]);
    let exports: Vec<i64> = limits(&constrained).iter().map(|l| l.0).collect();
    assert_eq!(exports, vec![1_400, 0, 0, 0]);
    // The interval after is outside the override's window: the configured 3 000 Wh again.
    let after = later.next();
    let free = m.market.clear_interval(after).await.unwrap();
    assert_eq!(free.network.branches[0].export_limit_wh, Some(Wh(3_000)));
    // No orders: 3 000 Wh shared max-min fairly (h2's 1 000 Wh rating, the others' level).
    let exports: Vec<i64> = limits(&free).iter().map(|l| l.0).collect();
    assert_eq!(exports, vec![1_000, 1_000, 1_000, 0]);

    // Envelopes of every interval not yet ended, oldest first.
    let served: Vec<SignedEnvelope> = c.get_as("/envelopes/gw-h1").await;
    let intervals: Vec<Interval> = served
        .iter()
        .map(|e| {
            e.open_by::<OperatingEnvelope>(&market_key.public_key)
                .unwrap()
                .interval
        })
        .collect();
    assert_eq!(intervals, vec![open, later, after]);

    // Deleting: operator only; the stored results keep the override they were cleared with.
    let path = format!("/limits/{}", stored.id);
    assert_code(c.delete(&path, None).await, 401, "operator_token_required");
    assert_code(
        c.delete(&path, Some("wrong")).await,
        403,
        "operator_token_invalid",
    );
    assert_eq!(c.delete(&path, Some(TOKEN)).await.0, 204);
    assert_code(c.delete(&path, Some(TOKEN)).await, 404, "not_found");
    assert_code(
        c.delete("/limits/abc", Some(TOKEN)).await,
        400,
        "invalid_request",
    );
    assert!(c.get_as::<Vec<LimitOverride>>("/limits").await.is_empty());
    assert_eq!(m.market.clear_interval(later).await.unwrap(), constrained);

    // Signed results page like /results, and each verifies.
    let page: Vec<SignedResult> = c
        .get_as("/results/signed?since=2026-06-21T12:30:00Z&limit=1")
        .await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].open(&market_key.public_key).unwrap(), constrained);
    let all: Vec<SignedResult> = c.get_as("/results/signed").await;
    assert_eq!(all.len(), 3);
    let unsigned: Vec<Value> = c.get_as("/results").await;
    for (s, u) in all.iter().zip(&unsigned) {
        let body: Value = serde_json::from_slice(&s.body_base64).unwrap();
        assert_eq!(&body, u);
    }
    assert_code(
        c.get("/results/signed?since=yesterday").await,
        400,
        "invalid_request",
    );

    // A result stored before the market signed results is signed once, on first request.
    let mut old = result.clone();
    old.interval = Interval::parse("2026-06-21T11:45:00Z", 15).unwrap();
    old.envelopes.clear();
    let old_body = serde_json::to_string(&old)
        .unwrap()
        .replace(",\"envelopes\":[]", "");
    sqlx::query("INSERT INTO results (interval_start, body) VALUES ($1, $2)")
        .bind(old.interval.start_unix())
        .bind(old_body.clone())
        .execute(&m.market.store.database().pool)
        .await
        .unwrap();
    let first: SignedResult = c
        .get_as("/intervals/2026-06-21T11:45:00Z/result/signed")
        .await;
    assert_eq!(first.body_base64, old_body.as_bytes());
    assert_eq!(first.open(&market_key.public_key).unwrap(), old);
    let again: SignedResult = c
        .get_as("/intervals/2026-06-21T11:45:00Z/result/signed")
        .await;
    assert_eq!(again, first);

    // Every documented path is routed (none falls through to "no such endpoint").
    let (_, api) = c.get("/openapi.json").await;
    for (path, methods) in api["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{start}", "2026-06-21T12:15:00Z")
            .replace("{gateway}", "gw-h1")
            .replace("{id}", "1");
        if path == "/events" {
            continue; // a stream that stays open
        }
        for method in methods.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = c
                .send(
                    c.http
                        .request(method.clone(), format!("{}{concrete}", c.base)),
                    None,
                )
                .await;
            assert!(
                !(status == 404 && body.to_string().contains("no such endpoint")),
                "{method} {path} is documented but not routed"
            );
        }
    }
    let (_, metrics) = c.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("gridmesh_market_envelopes_issued_total 12")
    );

    // A restart keeps the key.
    shutdown.stop().await;
    let shutdown = Shutdown::new();
    let m2 = serve(config(url, &key_path), clock, shutdown.clone())
        .await
        .unwrap();
    assert_eq!(m2.market_key, market_key.public_key);
    let c = Client::new(&m2);
    let still: SignedResult = c
        .get_as("/intervals/2026-06-21T12:15:00Z/result/signed")
        .await;
    assert_eq!(still, signed);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(
        format!("sqlite://{}", dir.path().join("m.db").display()),
        dir.path(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = gridmesh_runtime::db::scratch::fresh_postgres("market_control")
        .await
        .unwrap();
    scenario(url, dir.path()).await;
}

/// Without a configured key the market signs with an ephemeral one (a new key per start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configured_key_means_an_ephemeral_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let mut keys = Vec::new();
    for _ in 0..2 {
        let shutdown = Shutdown::new();
        let config = MarketConfig {
            signing_key: None,
            ..config(url.clone(), Path::new("unused"))
        };
        let m = serve(config, Clock::scaled(epoch(), 1.0), shutdown.clone())
            .await
            .unwrap();
        let served: MarketKey = Client::new(&m).get_as("/market-key").await;
        assert_eq!(served.public_key, m.market_key);
        keys.push(m.market_key);
        shutdown.stop().await;
    }
    assert_ne!(keys[0], keys[1]);
    assert!(!Path::new("unused").exists());
}
