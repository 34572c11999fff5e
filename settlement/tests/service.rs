//! The whole service on real sockets: REST on 127.0.0.1:0, SSE, operator auth, automatic
//! settlement from a fed source, and MQTT ingest through the real Mosquitto broker.

mod common;

use common::*;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::token::TokenTransfer;
use gridmesh_protocol::{ParticipantId, Wh, topics};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings, Qos};
use gridmesh_runtime::shutdown::Shutdown;
use serde_json::Value;
use settlement::service::Event;
use settlement::verify::ReasonCode;
use settlement::{SettlementConfig, serve_with_source};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn rest_sse_settlement_and_mqtt_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let source = registry_source();
    let shutdown = Shutdown::new();
    let config = SettlementConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
        market_url: None,
        broker_url: Some(broker()),
        mqtt_client_id: format!("settlement-test-{}", std::process::id()),
        operator_token: Some("op-secret".into()),
        poll_secs: 0.05,
        ..SettlementConfig::default()
    };
    let running = serve_with_source(
        config,
        Clock::scaled(epoch(), 1.0),
        shutdown.clone(),
        Some(Arc::new(source.clone())),
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    // Readings over REST: one good, one forged, per-item statuses, 200.
    let i = interval("12:00");
    let good = sign(&reading("gw-alice", 1, i, 0, 600, 700, 1_000));
    let bob = sign(&reading("gw-bob", 1, i, 600, 0, 0, 1_000));
    let mut forged = sign(&reading("gw-bob", 2, interval("12:15"), 1, 1, 1, 2_000));
    forged.signature[10] ^= 0x80;
    let body = serde_json::to_vec(&vec![&good, &bob, &forged]).unwrap();
    let resp = http
        .post(format!("{base}/readings"))
        .header("authorization", upload_auth("gw-alice", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Vec<Value> = resp.json().await.unwrap();
    let statuses: Vec<&str> = body.iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["accepted", "accepted", "quarantined"]);
    assert_eq!(body[2]["code"], "bad_signature");
    let body = "{\"not\": \"an array\"}";
    let resp = http
        .post(format!("{base}/readings"))
        .header("authorization", upload_auth("gw-alice", body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "bad_request");

    // Operator endpoints need the bearer token; a forged reading can never be accepted.
    let q: Vec<Value> = http
        .get(format!("{base}/quarantine"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = q[0]["id"].as_i64().unwrap();
    let url = format!("{base}/quarantine/{id}/accept");
    assert_eq!(http.post(&url).send().await.unwrap().status(), 401);
    let resp = http
        .post(&url)
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);

    // Health, metrics, OpenAPI.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gridmesh_settlement_readings_accepted_total 2"),
        "{metrics}"
    );
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/ledger/entries/{hash}"].is_object());

    // SSE: a result arrives through the source; the settler settles it (its end + grace has
    // passed on the clock) and announces `settled` and `block`.
    let mut sse = http.get(format!("{base}/events")).send().await.unwrap();
    source.add_result(result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 500, 200_000)],
    ));
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(seen.contains("event: settled") && seen.contains("event: block")) {
            let chunk = sse.chunk().await.unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("settled and block events");
    let balances: Value = http
        .get(format!("{base}/balances/bob"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(balances["balance"], 500);
    let statements: Vec<Value> = http
        .get(format!(
            "{base}/statements?participant=alice&interval=2026-06-21T12:00:00Z"
        ))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(statements.len(), 1);
    assert_eq!(
        statements[0]["net"],
        100 + 8,
        "500 Wh sold at 200/MWh, 100 Wh surplus at feed-in"
    );

    // A holder-signed transfer over REST, then the block and entry endpoints.
    let lot = balances["holdings"][0]["lot"].as_str().unwrap();
    let t = TokenTransfer {
        from: ParticipantId::new("bob").unwrap(),
        to: ParticipantId::new("alice").unwrap(),
        lot: settlement::ledger::parse_hex32(lot).unwrap(),
        amount: Wh(120),
        nonce: 1,
    };
    let env = SignedEnvelope::sign(&t, &participant_key("bob"));
    let resp = http
        .post(format!("{base}/tokens/transfer"))
        .json(&env)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let blocks: Vec<Value> = http
        .get(format!("{base}/ledger/blocks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(blocks.len(), 1);
    let entry_hash = blocks[0]["entries"][0].as_str().unwrap();
    let entry: Value = http
        .get(format!("{base}/ledger/entries/{entry_hash}"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entry["kind"], "mint");
    assert_eq!(entry["block_height"], 0);
    // The exact hashed bytes travel with the entry: SHA-256(0x00 || bytes) is its hash.
    use base64::Engine as _;
    use sha2::Digest as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry["body_base64"].as_str().unwrap())
        .unwrap();
    let leaf = sha2::Sha256::digest([&[0u8][..], &bytes].concat());
    assert_eq!(hex::encode(leaf), entry_hash);
    // Provenance down to the signed readings: each digest a mint names fetches the reading,
    // whose envelope verifies and hashes to that digest.
    let digests = entry["body"]["seller_readings"].as_array().unwrap();
    assert!(!digests.is_empty());
    for digest in digests {
        let digest = digest.as_str().unwrap();
        let stored: Value = http
            .get(format!("{base}/readings/{digest}"))
            .bearer_auth("op-secret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let envelope: SignedEnvelope = serde_json::from_value(stored["envelope"].clone()).unwrap();
        assert_eq!(envelope.digest_hex(), digest);
        let reading: gridmesh_protocol::Reading = envelope.open().unwrap();
        assert_eq!(reading.gateway.as_str(), stored["reading"]["gateway"]);
        assert_eq!(stored["participant"], "alice");
    }
    let missing = http
        .get(format!("{base}/readings/{}", "0".repeat(64)))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        http.get(format!("{base}/ledger/blocks/9"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // MQTT: readings on gridmesh/readings/<gateway> are stored, then acknowledged; junk is
    // quarantined with its topic. Publish until the subscription is in place.
    let (publisher, _) = MqttSession::start(
        MqttSettings::new(
            broker(),
            format!("settlement-test-pub-{}", std::process::id()),
        ),
        &shutdown,
    )
    .unwrap();
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);
    let carol = sign(&reading("gw-carol", 1, interval("12:15"), 0, 50, 60, 1_000));
    let topic = topics::readings(&gridmesh_protocol::GatewayId::new("gw-carol").unwrap());
    let mut events = running.service.subscribe();
    let mut arrived = false;
    for attempt in 0..20 {
        publisher
            .publish(
                topic.clone(),
                serde_json::to_vec(&carol).unwrap(),
                Qos::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
        publisher
            .publish(
                topic.clone(),
                format!("junk {attempt}").into_bytes(),
                Qos::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
        let wait = async {
            loop {
                if let Ok(Event::Quarantined {
                    code: ReasonCode::Malformed,
                    ..
                }) = events.recv().await
                {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_millis(500), wait)
            .await
            .is_ok()
        {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "MQTT readings reached settlement");
    let q: Vec<Value> = http
        .get(format!("{base}/quarantine"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        q.iter()
            .any(|r| r["source"] == format!("mqtt:{topic}") && r["code"] == "malformed")
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM readings WHERE reading_key = 'gw-carol/home/1782044100'",
    )
    .fetch_one(&running.service.db().pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), shutdown.stop())
        .await
        .expect("clean shutdown");
}
