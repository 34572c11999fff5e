//! Ingest that junk cannot stall or fill, and no valid reading lost to timing (issue 14, items
//! 3, 5, 6b and 8): gateway-signed uploads, per-gateway rate limits, bounded junk samples,
//! a paged and filtered quarantine, unknown gateways retried (REST) or held and re-admitted
//! (MQTT), transfer nonces used once, and concurrent writers on SQLite.

mod common;

use common::*;
use gridmesh_protocol::request::gateway_authorization;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::token::TokenRetire;
use gridmesh_protocol::{GatewayId, NodeId, ParticipantId, Wh, topics};
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings, Qos};
use reqwest::StatusCode;
use serde_json::Value;
use settlement::SettlementConfig;
use settlement::service::admission::{SAMPLE_BYTES, SAMPLES_PER_GATEWAY_PER_HOUR};
use settlement::service::{ReadingStatus, ServiceError, Submission};
use std::sync::Arc;
use std::time::Duration;

type Running = Api;

async fn start(broker_url: Option<String>, poll_secs: f64) -> Running {
    let (url, dir) = database("sqlite", "bounds").await;
    let config = SettlementConfig {
        broker_url,
        mqtt_client_id: format!("settlement-bounds-{}-{}", std::process::id(), rand_suffix()),
        poll_secs,
        ..api_config(url)
    };
    serve_api(config, dir).await
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Running {
    async fn post(&self, auth: Option<String>, body: Vec<u8>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/readings", self.base))
            .header("content-type", "application/json");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.body(body).send().await.unwrap()
    }

    async fn post_signed(&self, gateway: &str, body: Vec<u8>) -> reqwest::Response {
        let auth = upload_auth(gateway, &body);
        self.post(Some(auth), body).await
    }

    async fn quarantine(&self, query: &str) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}/quarantine{query}", self.base))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET /quarantine{query}");
        response.json().await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.shutdown.stop())
            .await
            .expect("clean shutdown");
    }
}

/// Item 3: unauthenticated junk is refused and stores nothing; an enrolled gateway's junk is
/// answered but kept only as a bounded sample; a gateway over its rate gets 429 with
/// Retry-After; good readings still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_uploads_are_refused_or_bounded() {
    let s = start(None, 3600.0).await;

    // Unauthenticated: 401 with a code and a message, nothing stored.
    let junk = vec![b'x'; 100_000];
    let response = s.post(None, junk.clone()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let err: Value = response.json().await.unwrap();
    assert_eq!(err["code"], "unauthorized");
    assert!(
        err["message"].as_str().unwrap().contains("GridmeshGateway"),
        "{err}"
    );
    // Signed by a key that is not the gateway's enrolled one: 401 too.
    let forged = gateway_authorization(
        &GatewayId::new("gw-alice").unwrap(),
        &gateway_key("gw-bob"),
        chrono::Utc::now().timestamp(),
        "POST",
        "/readings",
        b"[]",
    );
    assert_eq!(
        s.post(Some(forged), b"[]".to_vec()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // A proof for another body: 401.
    let other_body = upload_auth("gw-alice", b"[]");
    assert_eq!(
        s.post(Some(other_body), b"[1]".to_vec()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(s.quarantine("").await.is_empty(), "nothing stored");

    // Signed, but not a JSON array: 400, a sample of at most SAMPLE_BYTES kept.
    let response = s.post_signed("gw-alice", junk.clone()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let q = s.quarantine("").await;
    assert_eq!(q.len(), 1);
    assert!(q[0]["raw"].as_str().unwrap().len() <= SAMPLE_BYTES);
    assert!(
        q[0]["reason"].as_str().unwrap().contains("100000 bytes"),
        "{}",
        q[0]
    );
    assert_eq!(q[0]["source"], "rest:gw-alice");

    // A batch of 100 junk items of 10 kB each: answered item by item, at most the hourly
    // budget kept, each as a sample.
    let items: Vec<String> = (0..100)
        .map(|i| format!("{i}{}", "y".repeat(10_000)))
        .collect();
    let response = s
        .post_signed("gw-alice", serde_json::to_vec(&items).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    let outcomes: Vec<Value> = response.json().await.unwrap();
    assert_eq!(outcomes.len(), 100);
    assert!(outcomes.iter().all(|o| o["code"] == "malformed"));
    let q = s.quarantine("?limit=1000").await;
    assert_eq!(
        q.len(),
        SAMPLES_PER_GATEWAY_PER_HOUR as usize,
        "the budget bounds junk"
    );
    assert!(
        q.iter()
            .all(|i| i["raw"].as_str().unwrap().len() <= SAMPLE_BYTES)
    );
    assert!(
        outcomes[99]["reason"]
            .as_str()
            .unwrap()
            .contains("not kept"),
        "{}",
        outcomes[99]
    );

    // A real reading of alice's, uploaded by alice, is accepted as before.
    let good = sign(&reading(
        "gw-alice",
        1,
        interval("12:00"),
        0,
        600,
        700,
        1_000,
    ));
    let response = s
        .post_signed("gw-alice", serde_json::to_vec(&vec![good]).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    let outcomes: Vec<Value> = response.json().await.unwrap();
    assert_eq!(outcomes[0]["status"], "accepted");

    // Over the gateway's rate (1000 at once, 2 per second): 429 with Retry-After, nothing
    // stored. alice has spent 103 of her 1000.
    let many: Vec<u32> = (0..950).collect();
    let response = s
        .post_signed("gw-alice", serde_json::to_vec(&many).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let err: Value = response.json().await.unwrap();
    assert_eq!(err["code"], "rate_limited");
    // Another gateway has its own bucket.
    let bob = sign(&reading("gw-bob", 1, interval("12:00"), 600, 0, 0, 1_000));
    let response = s
        .post_signed("gw-bob", serde_json::to_vec(&vec![bob]).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    // More than 1000 in one batch: 400, split it.
    let response = s
        .post_signed("gw-carol", serde_json::to_vec(&vec![0; 1001]).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

/// `GET /quarantine` is paged (`before`, `limit`) and filtered (`gateway`, `reason`,
/// `status`); a household sees only its own gateways' items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quarantine_is_paged_and_filtered() {
    let s = start(None, 3600.0).await;
    // Forged readings of bob (bad_signature) and a flagged one of carol (implausible_export).
    let mut envs = Vec::new();
    for k in 0..5u64 {
        let mut forged = sign(&reading(
            "gw-bob",
            k + 1,
            interval("10:00"),
            1,
            1,
            1,
            1_000 + k as i64,
        ));
        forged.signature[7] ^= 1;
        envs.push(forged);
    }
    envs.push(sign(&reading(
        "gw-carol",
        1,
        interval("12:00"),
        0,
        9_000,
        9_000,
        1_000,
    )));
    let response = s
        .post_signed("gw-bob", serde_json::to_vec(&envs).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    // Junk buries nothing: alice's junk is filtered away.
    let junk: Vec<&str> = vec!["junk"; 10];
    s.post_signed("gw-alice", serde_json::to_vec(&junk).unwrap())
        .await;

    let all = s.quarantine("?limit=1000").await;
    assert_eq!(all.len(), 16);
    let bob = s.quarantine("?gateway=gw-bob&reason=bad_signature").await;
    assert_eq!(bob.len(), 5);
    let flagged = s.quarantine("?reason=implausible_export&status=open").await;
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0]["gateway"], "gw-carol");
    assert_eq!(flagged[0]["acceptable"], true);
    assert!(s.quarantine("?status=accepted").await.is_empty());
    // Pages of two, newest first, without overlap.
    let first = s.quarantine("?gateway=gw-bob&limit=2").await;
    let last_id = first[1]["id"].as_i64().unwrap();
    let second = s
        .quarantine(&format!("?gateway=gw-bob&limit=2&before={last_id}"))
        .await;
    assert_eq!(second.len(), 2);
    assert!(second[0]["id"].as_i64().unwrap() < last_id);
    assert!(first[0]["id"].as_i64().unwrap() > first[1]["id"].as_i64().unwrap());
    // A bad filter is a 400 with a code.
    let response = s
        .http
        .get(format!("{}/quarantine?reason=nope", s.base))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Carol's signed request sees only carol's gateway's items; asking for bob's is 403.
    let ask = |path: &str| {
        let header = gridmesh_protocol::request::authorization(
            &ParticipantId::new("carol").unwrap(),
            &participant_key("carol"),
            chrono::Utc::now().timestamp(),
            "GET",
            path,
            b"",
        );
        s.http
            .get(format!("{}{path}", s.base))
            .header("authorization", header)
            .send()
    };
    let own: Vec<Value> = ask("/quarantine").await.unwrap().json().await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["gateway"], "gw-carol");
    assert_eq!(
        ask("/quarantine?gateway=gw-bob").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    s.stop().await;
}

fn dave() -> gridmesh_protocol::registry::GatewayEnrollment {
    let mut g = enrollments()[0].clone();
    g.gateway = GatewayId::new("gw-dave").unwrap();
    g.participant = ParticipantId::new("alice").unwrap();
    g.node = NodeId::new("f1").unwrap();
    g.public_key = gateway_key("gw-dave").public_key();
    g
}

/// Item 5 over REST: a gateway enrolled after settlement's last poll is found at once (the
/// registry is read again); one the market does not know yet gets 503 `unknown_gateway` with
/// Retry-After and nothing is stored, so it keeps its readings, and succeeds once enrolled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_enrolled_moments_ago_loses_nothing_over_rest() {
    // No periodic poll during the test: only the refresh an unknown gateway triggers.
    let s = start(None, 3600.0).await;
    let body = |seq: u64, hhmm: &str| {
        let r = sign(&reading(
            "gw-dave",
            seq,
            interval(hhmm),
            0,
            100,
            100,
            1_000 + seq as i64,
        ));
        serde_json::to_vec(&vec![r]).unwrap()
    };

    // Not enrolled at the market: 503 unknown_gateway, Retry-After, nothing stored.
    let response = s.post_signed("gw-dave", body(1, "12:00")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let err: Value = response.json().await.unwrap();
    assert_eq!(err["code"], "unknown_gateway");
    assert!(
        err["message"].as_str().unwrap().contains("gw-dave"),
        "{err}"
    );
    assert!(
        s.quarantine("").await.is_empty(),
        "nothing stored, nothing acknowledged"
    );

    // The market enrols it; settlement has not polled. The gateway resends after Retry-After
    // (as the uplink does) until it is accepted.
    s.source.add_gateway(dave());
    let accepted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let response = s.post_signed("gw-dave", body(1, "12:00")).await;
            if response.status() == 200 {
                let outcomes: Vec<Value> = response.json().await.unwrap();
                return outcomes;
            }
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let wait: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    })
    .await
    .expect("accepted once enrolled");
    assert_eq!(accepted[0]["status"], "accepted", "{accepted:?}");
    s.stop().await;
}

/// Item 5, the 5 ms case over REST: the market enrolled the gateway just before its first
/// upload, before settlement's next poll: the first upload is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_upload_of_a_just_enrolled_gateway_is_accepted() {
    let s = start(None, 3600.0).await;
    s.source.add_gateway(dave());
    let r = sign(&reading(
        "gw-dave",
        1,
        interval("12:00"),
        0,
        100,
        100,
        1_000,
    ));
    let response = s
        .post_signed("gw-dave", serde_json::to_vec(&vec![r]).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    let outcomes: Vec<Value> = response.json().await.unwrap();
    assert_eq!(outcomes[0]["status"], "accepted", "{outcomes:?}");
    s.stop().await;
}

/// Item 5 over MQTT (the real Mosquitto): a reading of a gateway the market has not enrolled
/// is held, and re-admitted automatically once it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_gateways_mqtt_reading_is_held_then_readmitted() {
    let s = start(Some(broker()), 0.1).await;
    let (publisher, _) = MqttSession::start(
        MqttSettings::new(
            broker(),
            format!(
                "settlement-bounds-pub-{}-{}",
                std::process::id(),
                rand_suffix()
            ),
        ),
        &s.shutdown,
    )
    .unwrap();
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);
    let r = sign(&reading(
        "gw-dave",
        1,
        interval("12:00"),
        0,
        100,
        100,
        1_000,
    ));
    let topic = topics::readings(&GatewayId::new("gw-dave").unwrap());
    // Publish until settlement's subscription is in place and the reading is held.
    let held = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            publisher
                .publish(
                    topic.clone(),
                    serde_json::to_vec(&r).unwrap(),
                    Qos::AtLeastOnce,
                    false,
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let held = s.quarantine("?status=held").await;
            if !held.is_empty() {
                return held;
            }
        }
    })
    .await
    .expect("the reading is held");
    assert_eq!(held[0]["code"], "unknown_gateway");
    assert_eq!(held[0]["gateway"], "gw-dave");
    let key = "gw-dave/home/1782043200";
    let stored = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM readings WHERE reading_key = $1")
            .bind(key)
            .fetch_optional(&s.running.service.db().pool)
            .await
            .unwrap()
    };
    assert_eq!(stored().await, None);

    // The market enrols the gateway: the next poll re-admits the held reading.
    s.source.add_gateway(dave());
    tokio::time::timeout(Duration::from_secs(30), async {
        while stored().await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("re-admitted once enrolled");
    assert_eq!(stored().await.as_deref(), Some("accepted"));
    let readmitted = s.quarantine("?status=readmitted&gateway=gw-dave").await;
    assert!(!readmitted.is_empty());
    assert!(s.quarantine("?status=held").await.is_empty());
    s.stop().await;
}

/// Held readings survive a restart and are re-admitted on SQLite and PostgreSQL (the service
/// alone, its registry fed by hand).
async fn held_and_readmitted(backend: &str) {
    let (url, _dir) = database(backend, "held").await;
    let s = service(&url).await;
    let r = sign(&reading(
        "gw-dave",
        1,
        interval("12:00"),
        0,
        100,
        100,
        1_000,
    ));
    let out = s.ingest(submit(std::slice::from_ref(&r))).await.unwrap();
    assert_eq!(out[0].status, ReadingStatus::Quarantined);
    assert_eq!(out[0].code.unwrap().as_str(), "unknown_gateway");
    assert!(out[0].reason.as_deref().unwrap().contains("held"));
    drop(s);
    let s = service(&url).await;
    s.set_gateways(&[dave()]).await.unwrap();
    assert_eq!(s.readmit_held().await.unwrap(), 1);
    assert_eq!(s.readmit_held().await.unwrap(), 0, "once");
    let again = s.ingest(submit(&[r])).await.unwrap();
    assert_eq!(again[0].status, ReadingStatus::Duplicate, "it was stored");
}

#[tokio::test]
async fn held_readings_are_readmitted_sqlite() {
    held_and_readmitted("sqlite").await;
}

#[tokio::test]
async fn held_readings_are_readmitted_postgres() {
    held_and_readmitted("postgres").await;
}

/// Item 6b: a holder's transfer nonce is used once; the same signed transfer again is a
/// duplicate, another amount with the same nonce is refused (409), a retirement has its own
/// nonces.
async fn nonce_reuse(backend: &str) {
    let (url, _dir) = database(backend, "nonce").await;
    let s = service(&url).await;
    let lot = bob_holds_500_wh(&s).await;
    let transfer = |amount, nonce| bob_to_carol(lot, amount, nonce);
    let first = transfer(100, 7);
    assert!(!s.transfer(first.clone()).await.unwrap().duplicate);
    assert!(
        s.transfer(first).await.unwrap().duplicate,
        "the same transfer applies once"
    );
    match s.transfer(transfer(50, 7)).await {
        Err(ServiceError::Conflict(m)) => {
            assert!(m.contains("nonce 7") && m.contains("fresh nonce"), "{m}")
        }
        other => panic!("nonce reuse must be refused: {other:?}"),
    }
    assert!(!s.transfer(transfer(50, 8)).await.unwrap().duplicate);
    let retire = SignedEnvelope::sign(
        &TokenRetire {
            holder: ParticipantId::new("bob").unwrap(),
            lot,
            amount: Wh(10),
            nonce: 7,
        },
        &participant_key("bob"),
    );
    assert!(!s.retire(retire).await.unwrap().duplicate);
    let remaining = json(&s.balances("bob").await.unwrap())["balance"].clone();
    assert_eq!(remaining, 500 - 100 - 50 - 10);
}

#[tokio::test]
async fn a_transfer_nonce_is_used_once_sqlite() {
    nonce_reuse("sqlite").await;
}

#[tokio::test]
async fn a_transfer_nonce_is_used_once_postgres() {
    nonce_reuse("postgres").await;
}

/// Item 8: on SQLite, concurrent writers (reading batches, results, junk samples, registry
/// updates) all succeed: none sees `database is locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_see_a_locked_database() {
    let (url, _dir) = database("sqlite", "writers").await;
    let s = Arc::new(service(&url).await);
    let mut tasks = Vec::new();
    for (k, gw) in ["gw-alice", "gw-bob", "gw-carol"].into_iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..30u64 {
                let iv = interval("00:00");
                let iv =
                    gridmesh_protocol::Interval::from_unix(iv.start_unix() + n as i64 * 900, 15)
                        .unwrap();
                let r = sign(&reading(gw, n + 1, iv, 1, 0, 0, 100 * n as i64 + k as i64));
                let out = s.ingest(submit(&[r])).await.map_err(|e| e.to_string())?;
                assert_eq!(out[0].status, ReadingStatus::Accepted, "{out:?}");
            }
            Ok::<(), String>(())
        }));
    }
    {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..30 {
                let iv = interval("00:00");
                let iv =
                    gridmesh_protocol::Interval::from_unix(iv.start_unix() + n * 900, 15).unwrap();
                s.add_result(&result(iv, vec![]))
                    .await
                    .map_err(|e| e.to_string())?;
                s.set_gateways(&enrollments())
                    .await
                    .map_err(|e| e.to_string())?;
                s.keep_junk("rest:gw-x", b"junk", "junk")
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }));
    }
    {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                s.settle_due().await.map_err(|e| e.to_string())?;
                let junk = Submission {
                    source: "test".into(),
                    raw: b"not a reading".to_vec(),
                };
                s.ingest(vec![junk]).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("no writer fails");
    }
}
