//! Security tests of the access model (issue 13): create-only registration, one-time
//! enrolment tokens, private gateways and orders, the read-only auditor. Each fails on the
//! market before issue 13 (registration overwrote, everything was readable without a
//! credential, there was no enrolment or auditor token).

use chrono::{DateTime, Utc};
use gridmesh_protocol::grid::{Branch, Network};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::request::authorization;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::{
    GatewayId, Interval, NodeId, ParticipantId, PricePerMwh, Side, Wh, ZoneId,
};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, RunningMarket, serve};
use serde_json::Value;

const OPERATOR: &str = "operator-secret";
const AUDITOR: &str = "auditor-secret";

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn pid(s: &str) -> ParticipantId {
    ParticipantId::new(s).unwrap()
}

fn key(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_seed([seed; 32])
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
        utility: Default::default(),
    }
}

fn household(id: &str, seed: u8) -> Participant {
    Participant {
        id: pid(id),
        public_key: key(seed).public_key(),
        node: node("f1"),
        kind: ParticipantKind::Household,
    }
}

fn gateway(id: &str, owner: &str, seed: u8) -> GatewayEnrollment {
    GatewayEnrollment {
        gateway: GatewayId::new(id).unwrap(),
        participant: pid(owner),
        node: node("f1"),
        public_key: key(seed).public_key(),
        inverter_w: 5_000,
        battery_w: 3_000,
        latitude_microdeg: 52_520_008,
        longitude_microdeg: 13_404_954,
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

enum Auth<'a> {
    None,
    Bearer(&'a str),
    Signed(&'a str, &'a SigningKeyPair),
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        auth: Auth<'_>,
    ) -> (u16, Value) {
        let body = body.unwrap_or_default();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.clone());
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => req = req.bearer_auth(t),
            Auth::Signed(who, k) => {
                let now = Utc::now().timestamp();
                let header = authorization(&pid(who), k, now, method.as_str(), path, &body);
                req = req.header("authorization", header);
            }
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, auth: Auth<'_>) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, auth).await
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize, auth: Auth<'_>) -> (u16, Value) {
        let body = serde_json::to_vec(body).unwrap();
        self.send(reqwest::Method::POST, path, Some(body), auth)
            .await
    }
}

fn assert_code(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
}

async fn start(dir: &std::path::Path) -> (RunningMarket, Shutdown, Client) {
    start_on(format!("sqlite://{}", dir.join("m.db").display())).await
}

async fn start_on(database_url: String) -> (RunningMarket, Shutdown, Client) {
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        zone: "test".into(),
        operator_token: Some(OPERATOR.into()),
        auditor_token: Some(AUDITOR.into()),
        topology: Some(network()),
        ..MarketConfig::default()
    };
    let shutdown = Shutdown::new();
    let m = serve(config, Clock::scaled(epoch(), 1.0), shutdown.clone())
        .await
        .unwrap();
    let c = Client {
        http: reqwest::Client::new(),
        base: m.url(),
    };
    (m, shutdown, c)
}

fn signed_order(who: &str, seed: u8, nonce: u64) -> SignedEnvelope {
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let order = Order {
        zone: Some(ZoneId::new("test").unwrap()),
        participant: pid(who),
        node: node("f1"),
        interval: open,
        side: Side::Buy,
        quantity: Wh(100),
        limit_price: PricePerMwh(20_000),
        nonce,
    };
    SignedEnvelope::sign(&order, &key(seed))
}

/// Defect 1: with the (operator) token an attacker re-registered an existing participant
/// with their own key and then traded as it. Registration is create-only now.
#[tokio::test]
async fn registration_is_create_only_and_values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, shutdown, c) = start(dir.path()).await;
    let alice = household("alice", 1);
    assert_eq!(
        c.post("/participants", &alice, Auth::Bearer(OPERATOR))
            .await
            .0,
        201
    );

    let attacker = household("alice", 66);
    assert_code(
        c.post("/participants", &attacker, Auth::Bearer(OPERATOR))
            .await,
        409,
        "conflict",
    );
    // Exactly the same record again is still 409 (the id exists).
    assert_code(
        c.post("/participants", &alice, Auth::Bearer(OPERATOR))
            .await,
        409,
        "conflict",
    );
    // The old key still signs orders, the attacker's does not.
    assert_eq!(
        c.post("/orders", &signed_order("alice", 1, 1), Auth::None)
            .await
            .0,
        201
    );
    assert_code(
        c.post("/orders", &signed_order("alice", 66, 2), Auth::None)
            .await,
        401,
        "key_mismatch",
    );

    // Gateways: create-only, and absurd values refused.
    let gw = gateway("gw-alice", "alice", 11);
    assert_eq!(
        c.post("/gateways", &gw, Auth::Bearer(OPERATOR)).await.0,
        201
    );
    let mut hijack = gw.clone();
    hijack.public_key = key(67).public_key();
    assert_code(
        c.post("/gateways", &hijack, Auth::Bearer(OPERATOR)).await,
        409,
        "conflict",
    );
    let mut absurd = gateway("gw-alice-2", "alice", 12);
    absurd.inverter_w = 4_000_000_000;
    assert_code(
        c.post("/gateways", &absurd, Auth::Bearer(OPERATOR)).await,
        400,
        "invalid_request",
    );
    let mut nowhere = gateway("gw-alice-3", "alice", 13);
    nowhere.latitude_microdeg = 91_000_000;
    assert_code(
        c.post("/gateways", &nowhere, Auth::Bearer(OPERATOR)).await,
        400,
        "invalid_request",
    );
    let stored: GatewayEnrollment =
        serde_json::from_value(c.get("/gateways/gw-alice", Auth::Bearer(AUDITOR)).await.1).unwrap();
    assert_eq!(stored, gw, "the first enrolment stays in force");
    shutdown.stop().await;
}

/// Enrolment tokens: one participant, single use, expiring; the auditor cannot register.
#[tokio::test]
async fn enrolment_tokens_enrol_one_home_once() {
    let dir = tempfile::tempdir().unwrap();
    enrolment_scenario(start(dir.path()).await).await;
}

/// The same on PostgreSQL (the token table and its queries on the other back end).
#[tokio::test]
async fn enrolment_tokens_on_postgres() {
    let url = gridmesh_runtime::db::scratch::fresh_postgres("market_access")
        .await
        .unwrap();
    enrolment_scenario(start_on(url).await).await;
}

async fn enrolment_scenario((m, shutdown, c): (RunningMarket, Shutdown, Client)) {
    let store = &m.market.store;
    let now = Utc::now().timestamp();
    let token = market_engine::enrolment::issue(store, &pid("h042"), 72, now)
        .await
        .unwrap()
        .token;
    assert!(
        token.starts_with("gme_") && token.len() == 4 + 64,
        "{token}"
    );

    // Another home with h042's token: 403, before and after h042 registered.
    assert_code(
        c.post(
            "/participants",
            &household("h043", 43),
            Auth::Bearer(&token),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(
        c.post(
            "/participants",
            &household("h042", 42),
            Auth::Bearer(&token)
        )
        .await
        .0,
        201
    );
    assert_code(
        c.post(
            "/gateways",
            &gateway("gw-h043", "h043", 43),
            Auth::Bearer(&token),
        )
        .await,
        403,
        "forbidden",
    );
    assert_eq!(
        c.post(
            "/gateways",
            &gateway("gw-h042", "h042", 142),
            Auth::Bearer(&token)
        )
        .await
        .0,
        201
    );
    // Used up by its gateway.
    let used = c
        .post(
            "/gateways",
            &gateway("gw-h042-b", "h042", 143),
            Auth::Bearer(&token),
        )
        .await;
    assert_code(used.clone(), 401, "unauthorized");
    assert!(
        used.1["message"].as_str().unwrap().contains("used up"),
        "{}",
        used.1
    );

    // Expired.
    let old = market_engine::enrolment::issue(store, &pid("h044"), 1, now - 7200)
        .await
        .unwrap()
        .token;
    let expired = c
        .post("/participants", &household("h044", 44), Auth::Bearer(&old))
        .await;
    assert_code(expired.clone(), 401, "unauthorized");
    assert!(
        expired.1["message"].as_str().unwrap().contains("expired"),
        "{}",
        expired.1
    );
    // Never issued.
    assert_code(
        c.post(
            "/participants",
            &household("h045", 45),
            Auth::Bearer(&format!("gme_{}", "0".repeat(64))),
        )
        .await,
        401,
        "unauthorized",
    );
    // A token only enrols: it reads nothing.
    let fresh = market_engine::enrolment::issue(store, &pid("h046"), 72, now)
        .await
        .unwrap()
        .token;
    assert_code(
        c.get("/gateways", Auth::Bearer(&fresh)).await,
        403,
        "forbidden",
    );

    // The auditor reads but never writes.
    assert_code(
        c.post(
            "/participants",
            &household("h047", 47),
            Auth::Bearer(AUDITOR),
        )
        .await,
        403,
        "forbidden",
    );
    let put = c
        .send(
            reqwest::Method::PUT,
            "/topology",
            Some(serde_json::to_vec(&network()).unwrap()),
            Auth::Bearer(AUDITOR),
        )
        .await;
    assert_code(put, 403, "forbidden");
    shutdown.stop().await;
}

/// Defect 2: enrolled gateways (coordinates, equipment) and everyone's orders were public.
#[tokio::test]
async fn gateways_and_orders_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, shutdown, c) = start(dir.path()).await;
    for (who, seed) in [("alice", 1), ("bob", 2)] {
        assert_eq!(
            c.post(
                "/participants",
                &household(who, seed),
                Auth::Bearer(OPERATOR)
            )
            .await
            .0,
            201
        );
        let gw = gateway(&format!("gw-{who}"), who, seed + 10);
        assert_eq!(
            c.post("/gateways", &gw, Auth::Bearer(OPERATOR)).await.0,
            201
        );
        assert_eq!(
            c.post("/orders", &signed_order(who, seed, 1), Auth::None)
                .await
                .0,
            201
        );
    }

    // No credential: 401, for each household-data endpoint.
    for path in [
        "/gateways",
        "/gateways/gw-alice",
        "/orders",
        "/orders?participant=alice",
    ] {
        assert_code(c.get(path, Auth::None).await, 401, "unauthorized");
    }
    // A wrong bearer token: 401.
    assert_code(
        c.get("/gateways", Auth::Bearer("nope")).await,
        401,
        "unauthorized",
    );

    // Auditor and operator read everything.
    for token in [AUDITOR, OPERATOR] {
        let (status, all) = c.get("/gateways", Auth::Bearer(token)).await;
        assert_eq!(status, 200);
        assert_eq!(all.as_array().unwrap().len(), 2);
        let (status, orders) = c.get("/orders", Auth::Bearer(token)).await;
        assert_eq!(status, 200);
        assert_eq!(orders.as_array().unwrap().len(), 2);
    }

    // A household's signed request: its own data only.
    let alice = key(1);
    let (status, mine) = c.get("/gateways", Auth::Signed("alice", &alice)).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["gateway"], "gw-alice");
    assert_eq!(
        c.get("/gateways/gw-alice", Auth::Signed("alice", &alice))
            .await
            .0,
        200
    );
    assert_code(
        c.get("/gateways/gw-bob", Auth::Signed("alice", &alice))
            .await,
        403,
        "forbidden",
    );
    let (status, orders) = c.get("/orders", Auth::Signed("alice", &alice)).await;
    assert_eq!(status, 200);
    assert_eq!(orders.as_array().unwrap().len(), 1);
    assert_eq!(orders[0]["participant"], "alice");
    assert_code(
        c.get("/orders?participant=bob", Auth::Signed("alice", &alice))
            .await,
        403,
        "forbidden",
    );
    // Signed by another key than alice's registered one: 401.
    assert_code(
        c.get("/orders", Auth::Signed("alice", &key(2))).await,
        401,
        "unauthorized",
    );

    // Public market data stays public.
    assert_eq!(
        c.get("/intervals/2026-06-21T12:15:00Z/book", Auth::None)
            .await
            .0,
        200
    );
    assert_eq!(c.get("/participants", Auth::None).await.0, 200);
    assert_eq!(c.get("/market-key", Auth::None).await.0, 200);
    shutdown.stop().await;
}

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_market-engine"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The CLI: `enrolment-token` issues a token the running market accepts; `order list` signs
/// its request with the participant's key (or sends the auditor's token).
#[tokio::test(flavor = "multi_thread")]
async fn cli_issues_tokens_and_lists_own_orders() {
    let dir = tempfile::tempdir().unwrap();
    let (m, shutdown, c) = start(dir.path()).await;
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let env = [("GRIDMESH_MARKET_DATABASE_URL", db.as_str())];

    let (code, token, err) = run_cli(
        &[
            "enrolment-token",
            "--participant",
            "h050",
            "--valid-hours",
            "2",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let token = token.trim();
    assert!(token.starts_with("gme_"), "{token}");
    assert_eq!(
        c.post("/participants", &household("h050", 50), Auth::Bearer(token))
            .await
            .0,
        201
    );

    // h050 orders, then lists its own orders with a signed request.
    assert_eq!(
        c.post("/orders", &signed_order("h050", 50, 1), Auth::None)
            .await
            .0,
        201
    );
    let key_file = dir.path().join("h051.key");
    let pair = SigningKeyPair::generate_file(&key_file).unwrap();
    // The registered key is key(50); register one with a key file for the CLI.
    let (code, token2, err) = run_cli(&["enrolment-token", "--participant", "h051"], &env);
    assert_eq!(code, 0, "{err}");
    let h051 = Participant {
        id: pid("h051"),
        public_key: pair.public_key(),
        node: node("f1"),
        kind: ParticipantKind::Household,
    };
    assert_eq!(
        c.post("/participants", &h051, Auth::Bearer(token2.trim()))
            .await
            .0,
        201
    );
    let order = Order {
        zone: Some(ZoneId::new("test").unwrap()),
        participant: pid("h051"),
        node: node("f1"),
        interval: Interval::parse("2026-06-21T12:15:00Z", 15).unwrap(),
        side: Side::Sell,
        quantity: Wh(100),
        limit_price: PricePerMwh(10_000),
        nonce: 9,
    };
    let signed = SignedEnvelope::sign(&order, &pair);
    assert_eq!(c.post("/orders", &signed, Auth::None).await.0, 201);

    let url = m.url();
    let key_arg = key_file.display().to_string();
    let (code, out, err) = run_cli(
        &[
            "order",
            "list",
            "--market",
            &url,
            "--participant",
            "h051",
            "--key",
            &key_arg,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(rows[0]["participant"], "h051");
    // Without a credential the market refuses; with the auditor token it lists everyone's.
    let (code, _, err) = run_cli(&["order", "list", "--market", &url], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
    let (code, out, err) = run_cli(
        &["order", "list", "--market", &url, "--token", AUDITOR],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{out}");
    shutdown.stop().await;
}
