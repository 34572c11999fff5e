//! Key rotation (issue 13): a participant replaces its key by a `KeyRotation` signed by the
//! key in force; the market keeps and serves each key's validity period, refuses the old key
//! once the new one takes effect, and refuses rotations by any other key, replays, back-dated
//! periods and a body for another participant. On SQLite (with a restart) and PostgreSQL.

use chrono::{DateTime, Utc};
use gridmesh_protocol::grid::{Branch, Network};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::registry::{Participant, ParticipantKind};
use gridmesh_protocol::rotation::{KeyRotation, ParticipantWithKeys};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, Side, Wh, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, RunningMarket, serve};
use serde_json::Value;

const OPERATOR: &str = "operator-secret";

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn t0() -> i64 {
    epoch().timestamp()
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

async fn start_on(database_url: String) -> (RunningMarket, Shutdown) {
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        zone: "test".into(),
        operator_token: Some(OPERATOR.into()),
        topology: Some(network()),
        ..MarketConfig::default()
    };
    let shutdown = Shutdown::new();
    let m = serve(config, Clock::scaled(epoch(), 1.0), shutdown.clone())
        .await
        .unwrap();
    (m, shutdown)
}

async fn post(m: &RunningMarket, path: &str, body: &impl serde::Serialize) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", m.url()))
        .bearer_auth(OPERATOR)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn get(m: &RunningMarket, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{}{path}", m.url())).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn assert_code(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
}

fn rotation(who: &str, new_seed: u8, valid_from: i64, nonce: u64, signer: u8) -> SignedEnvelope {
    let r = KeyRotation {
        participant: pid(who),
        new_public_key: key(new_seed).public_key(),
        valid_from,
        nonce,
    };
    SignedEnvelope::sign(&r, &key(signer))
}

fn order(who: &str, seed: u8, nonce: u64) -> SignedEnvelope {
    let order = Order {
        zone: Some(ZoneId::new("test").unwrap()),
        participant: pid(who),
        node: node("f1"),
        interval: Interval::parse("2026-06-21T12:15:00Z", 15).unwrap(),
        side: Side::Buy,
        quantity: Wh(100),
        limit_price: PricePerMwh(20_000),
        nonce,
    };
    SignedEnvelope::sign(&order, &key(seed))
}

/// Rotation by the old key works, by another key is refused, the old key stops working, the
/// history is served; replays, back-dating and a body for another participant are refused.
async fn rotation_scenario(m: &RunningMarket) {
    for (id, seed) in [("h1", 1), ("h2", 21)] {
        let p = Participant {
            id: pid(id),
            public_key: key(seed).public_key(),
            node: node("f1"),
            kind: ParticipantKind::Household,
        };
        assert_eq!(post(m, "/participants", &p).await.0, 201);
    }
    // Before any rotation: one key, valid from 0, open-ended.
    let (status, body) = get(m, "/participants/h1").await;
    assert_eq!(status, 200, "{body}");
    let h1: ParticipantWithKeys = serde_json::from_value(body).unwrap();
    assert_eq!(h1.participant.public_key, key(1).public_key());
    assert_eq!(h1.keys.len(), 1);
    assert_eq!((h1.keys[0].valid_from, h1.keys[0].valid_until), (0, None));
    assert_code(get(m, "/participants/nobody").await, 404, "not_found");

    let rotate = "/participants/h1/key";
    // Signed by another key (an attacker's, or another household's): refused.
    assert_code(
        post(m, rotate, &rotation("h1", 2, t0(), 1, 9)).await,
        401,
        "key_mismatch",
    );
    assert_code(
        post(m, rotate, &rotation("h1", 2, t0(), 1, 21)).await,
        401,
        "key_mismatch",
    );
    // A rotation of h2 (validly signed by h2) posted for h1: refused.
    assert_code(
        post(m, rotate, &rotation("h2", 2, t0(), 1, 21)).await,
        400,
        "invalid_request",
    );
    // Back-dated by an hour: refused.
    assert_code(
        post(m, rotate, &rotation("h1", 2, t0() - 3600, 1, 1)).await,
        400,
        "invalid_request",
    );
    // Another message than a rotation: refused.
    assert_code(
        post(m, rotate, &order("h1", 1, 1)).await,
        400,
        "wrong_message",
    );
    // Nothing changed so far: the old key still trades.
    assert_eq!(post(m, "/orders", &order("h1", 1, 1)).await.0, 201);

    // Signed by the key in force: rotated, effective now.
    let (status, body) = post(m, rotate, &rotation("h1", 2, t0(), 1, 1)).await;
    assert_eq!(status, 200, "{body}");
    let h1: ParticipantWithKeys = serde_json::from_value(body).unwrap();
    assert_eq!(h1.participant.public_key, key(2).public_key());
    assert_eq!(h1.keys.len(), 2);
    assert_eq!(h1.keys[0].public_key, key(1).public_key());
    assert_eq!(
        (h1.keys[0].valid_from, h1.keys[0].valid_until),
        (0, Some(t0()))
    );
    assert_eq!(h1.keys[1].public_key, key(2).public_key());
    assert_eq!(
        (h1.keys[1].valid_from, h1.keys[1].valid_until),
        (t0(), None)
    );

    // The old key stops working; the new one signs.
    assert_code(
        post(m, "/orders", &order("h1", 1, 2)).await,
        401,
        "key_mismatch",
    );
    assert_eq!(post(m, "/orders", &order("h1", 2, 3)).await.0, 201);
    // The old key cannot rotate any more either (a replay of its rotation included).
    assert_code(
        post(m, rotate, &rotation("h1", 2, t0(), 1, 1)).await,
        401,
        "key_mismatch",
    );
    // A used rotation nonce: refused even when signed by the new key.
    assert_code(
        post(m, rotate, &rotation("h1", 3, t0() + 60, 1, 2)).await,
        409,
        "replayed_nonce",
    );
    // Not after the current key's valid_from: refused.
    assert_code(
        post(m, rotate, &rotation("h1", 3, t0() - 10, 2, 2)).await,
        400,
        "invalid_request",
    );
    // A rotation in the future: the current key signs until then.
    let later = t0() + 3600;
    let (status, body) = post(m, rotate, &rotation("h1", 3, later, 2, 2)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(post(m, "/orders", &order("h1", 2, 4)).await.0, 201);
    assert_code(
        post(m, "/orders", &order("h1", 3, 5)).await,
        401,
        "key_mismatch",
    );
    // While it is pending, no other rotation.
    assert_code(
        post(m, rotate, &rotation("h1", 4, later + 60, 3, 2)).await,
        409,
        "conflict",
    );
}

/// The history as the list and `GET /participants/{id}` serve it after the scenario.
async fn assert_history(m: &RunningMarket) {
    let later = t0() + 3600;
    let (status, body) = get(m, "/participants").await;
    assert_eq!(status, 200, "{body}");
    // Older readers still parse the list as plain participants.
    let plain: Vec<Participant> = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(plain.len(), 2);
    assert_eq!(plain[0].public_key, key(2).public_key());
    let all: Vec<ParticipantWithKeys> = serde_json::from_value(body).unwrap();
    let periods: Vec<_> = all[0]
        .keys
        .iter()
        .map(|k| (k.public_key, k.valid_from, k.valid_until))
        .collect();
    assert_eq!(
        periods,
        vec![
            (key(1).public_key(), 0, Some(t0())),
            (key(2).public_key(), t0(), Some(later)),
            (key(3).public_key(), later, None),
        ]
    );
    assert_eq!(all[1].keys.len(), 1);
    let (status, body) = get(m, "/participants/h1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["keys"].as_array().unwrap().len(), 3);
    assert_eq!(body["keys"][2]["valid_until"], Value::Null);
}

#[tokio::test]
async fn rotation_on_sqlite_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let (m, shutdown) = start_on(url.clone()).await;
    rotation_scenario(&m).await;
    assert_history(&m).await;
    shutdown.stop().await;
    drop(m);
    let (m, shutdown) = start_on(url).await;
    assert_history(&m).await;
    assert_code(
        post(&m, "/orders", &order("h1", 1, 6)).await,
        401,
        "key_mismatch",
    );
    assert_eq!(post(&m, "/orders", &order("h1", 2, 7)).await.0, 201);
    shutdown.stop().await;
}

#[tokio::test]
async fn rotation_on_postgres() {
    let url = gridmesh_runtime::db::scratch::fresh_postgres("market_rotation")
        .await
        .unwrap();
    let (m, shutdown) = start_on(url).await;
    rotation_scenario(&m).await;
    assert_history(&m).await;
    shutdown.stop().await;
}

/// Migrates a database to just before the key history (0001–0003), registers `h7` the old
/// way, then lets the market migrate it: the registered key is back-filled, valid from 0.
async fn backfill_scenario(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let db = gridmesh_runtime::db::Database::connect(&url).await.unwrap();
    let mut migrators = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let to = dir.path().join(backend);
        std::fs::create_dir_all(&to).unwrap();
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        for name in [
            "0001_market.sql",
            "0002_envelopes.sql",
            "0003_enrolment_tokens.sql",
        ] {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
        migrators.push(sqlx::migrate::Migrator::new(to).await.unwrap());
    }
    db.migrate(&migrators[0], &migrators[1]).await.unwrap();
    let old = Participant {
        id: pid("h7"),
        public_key: key(7).public_key(),
        node: node("f1"),
        kind: ParticipantKind::Household,
    };
    sqlx::query("INSERT INTO participants (id, body) VALUES ($1, $2)")
        .bind("h7")
        .bind(serde_json::to_string(&old).unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    db.pool.close().await;
    let (m, shutdown) = start_on(url).await;
    let (status, body) = get(&m, "/participants/h7").await;
    assert_eq!(status, 200, "{body}");
    let h7: ParticipantWithKeys = serde_json::from_value(body).unwrap();
    assert_eq!(h7.keys.len(), 1);
    assert_eq!(h7.keys[0].public_key, key(7).public_key());
    assert_eq!((h7.keys[0].valid_from, h7.keys[0].valid_until), (0, None));
    // And the back-filled key rotates like any other.
    let (status, body) = post(&m, "/participants/h7/key", &rotation("h7", 8, t0(), 1, 7)).await;
    assert_eq!(status, 200, "{body}");
    shutdown.stop().await;
}

#[tokio::test]
async fn existing_keys_are_back_filled_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    backfill_scenario(format!("sqlite://{}", dir.path().join("m.db").display())).await;
}

#[tokio::test]
async fn existing_keys_are_back_filled_on_postgres() {
    let url = gridmesh_runtime::db::scratch::fresh_postgres("market_rotation_backfill")
        .await
        .unwrap();
    backfill_scenario(url).await;
}
