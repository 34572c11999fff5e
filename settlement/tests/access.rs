//! Security tests of issue 13 for settlement: who may read and change what (the access model of
//! roles: operator, auditor, participant by signed request, public). Each test fails on the
//! old behaviour, where every read was public, a transfer to an unregistered recipient was
//! applied, the auditor role did not exist and the operator token was compared with `!=`.

mod common;

use common::*;
use gridmesh_protocol::request::authorization;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::token::TokenTransfer;
use gridmesh_protocol::{ParticipantId, Wh};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use reqwest::StatusCode;
use serde_json::Value;
use settlement::SettlementConfig;
use std::time::Duration;

type Running = Api;

async fn start() -> Running {
    let (url, dir) = database("sqlite", "access").await;
    let config = SettlementConfig {
        auditor_token: Some(AUDITOR.into()),
        poll_secs: 0.05,
        ..api_config(url)
    };
    serve_api(config, dir).await
}

/// A participant's signed-request header for `GET path_and_query`, signed now.
fn signed_get(participant: &str, path_and_query: &str) -> String {
    authorization(
        &ParticipantId::new(participant).unwrap(),
        &participant_key(participant),
        chrono::Utc::now().timestamp(),
        "GET",
        path_and_query,
        b"",
    )
}

impl Running {
    async fn get(&self, path: &str, auth: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn as_participant(&self, who: &str, path: &str) -> (StatusCode, Value) {
        self.get(path, Some(&signed_get(who, path))).await
    }

    async fn as_bearer(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.get(path, Some(&format!("Bearer {token}"))).await
    }

    /// alice sells 500 Wh to bob at 12:00; one forged reading of bob's gateway is quarantined.
    /// Waits until the interval is settled. Returns the digest of alice's reading.
    async fn settle_one_interval(&self) -> String {
        let i = interval("12:00");
        let alice = sign(&reading("gw-alice", 1, i, 0, 600, 700, 1_000));
        let bob = sign(&reading("gw-bob", 1, i, 600, 0, 0, 1_000));
        let mut forged = sign(&reading("gw-bob", 2, interval("12:15"), 1, 1, 1, 2_000));
        forged.signature[10] ^= 0x80;
        let body = serde_json::to_vec(&vec![&alice, &bob, &forged]).unwrap();
        let response = self
            .http
            .post(format!("{}/readings", self.base))
            .header("authorization", upload_auth("gw-alice", &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "readings stay open to gateways");
        self.source.add_result(result(
            i,
            vec![trade(order("alice", "a"), order("bob", "b"), 500, 200_000)],
        ));
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (status, body) = self.as_bearer(AUDITOR, "/statements").await;
                if status == 200 && body.as_array().is_some_and(|l| l.len() >= 2) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the interval is settled");
        alice.digest_hex()
    }
}

/// Reads an event stream until `needle` shows up (at most 20 s); everything seen so far.
async fn read_until(stream: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains(needle) {
            let chunk = stream.chunk().await.unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect(needle);
    seen
}

fn participants_of(statements: &Value) -> Vec<String> {
    let mut list: Vec<String> = statements
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["participant"].as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list.dedup();
    list
}

/// Defect 2: household data was public without any login (`GET /statements` without a
/// filter listed every home's money). Now it needs a credential; the ledger and the
/// aggregates stay public so anyone can re-verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn household_data_is_private_by_default() {
    let s = start().await;
    let digest = s.settle_one_interval().await;
    for path in [
        "/statements".to_owned(),
        "/statements?participant=alice".to_owned(),
        "/balances/bob".to_owned(),
        format!("/readings/{digest}"),
        "/quarantine".to_owned(),
        "/compliance".to_owned(),
        "/compliance/alerts".to_owned(),
    ] {
        let (status, body) = s.get(&path, None).await;
        assert_eq!(status, 401, "GET {path} without a credential: {body}");
        assert_eq!(body["code"], "unauthorized", "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("signed request"),
            "{path}: the message names the credential: {body}"
        );
    }
    // Public: ledger block headers (no participant id in them), aggregates, operations. The
    // entries name participants: not public (ledger_entries_go_to_their_parties_and_auditors).
    let (status, blocks) = s.get("/ledger/blocks", None).await;
    assert_eq!(status, 200);
    let entry = blocks[0]["entries"][0].as_str().unwrap().to_owned();
    for block in [&blocks, &s.get("/ledger/blocks/0", None).await.1] {
        let text = block.to_string();
        for id in ["alice", "bob", "carol"] {
            assert!(!text.contains(id), "a public block names {id}: {text}");
        }
    }
    assert_eq!(
        s.get(&format!("/ledger/entries/{entry}"), None).await.0,
        401
    );
    for path in [
        "/ledger/blocks/0".to_owned(),
        "/flows".to_owned(),
        "/openapi.json".to_owned(),
    ] {
        assert_eq!(s.get(&path, None).await.0, 200, "GET {path} is public");
    }
    // Public flows show only branches where at least 5 homes reported (2 did here); the
    // auditor sees every branch.
    let (_, public) = s.get("/flows", None).await;
    let (_, audited) = s.as_bearer(AUDITOR, "/flows").await;
    let branches = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["branches"].as_array().unwrap().clone())
            .collect()
    };
    assert!(branches(&public).is_empty(), "{public}");
    assert!(!branches(&audited).is_empty(), "{audited}");
    // A bearer token that is neither the operator's nor the auditor's is refused.
    let (status, body) = s.as_bearer("guess", "/statements").await;
    assert_eq!(status, 401, "{body}");
    s.shutdown.stop().await;
}

/// A participant's signed request reads its own data only; another household's answers 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_household_reads_only_its_own_data() {
    let s = start().await;
    let digest = s.settle_one_interval().await;

    // Statements: without a filter a participant gets its own, never everyone's.
    let (status, own) = s.as_participant("alice", "/statements").await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(participants_of(&own), vec!["alice"]);
    let (status, own) = s
        .as_participant("alice", "/statements?participant=alice")
        .await;
    assert_eq!(
        (status, participants_of(&own)),
        (StatusCode::OK, vec!["alice".to_owned()])
    );
    let (status, body) = s
        .as_participant("alice", "/statements?participant=bob")
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");

    // Balances and the readings behind them.
    assert_eq!(s.as_participant("bob", "/balances/bob").await.0, 200);
    assert_eq!(s.as_participant("alice", "/balances/bob").await.0, 403);
    let path = format!("/readings/{digest}");
    let (status, reading) = s.as_participant("alice", &path).await;
    assert_eq!(
        (status, &reading["participant"]),
        (StatusCode::OK, &Value::from("alice"))
    );
    assert_eq!(s.as_participant("bob", &path).await.0, 403);

    // Quarantine: bob sees the forged reading of his gateway; alice sees nothing of his.
    let (status, items) = s.as_participant("bob", "/quarantine").await;
    assert_eq!(status, 200);
    let items = items.as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items.iter().all(|i| i["gateway"] == "gw-bob"), "{items:?}");
    let (status, items) = s.as_participant("alice", "/quarantine").await;
    assert_eq!((status, items), (StatusCode::OK, Value::Array(vec![])));

    // Compliance and alerts: own rows only.
    assert_eq!(s.as_participant("alice", "/compliance").await.0, 200);
    assert_eq!(
        s.as_participant("alice", "/compliance?participant=bob")
            .await
            .0,
        403
    );
    assert_eq!(s.as_participant("alice", "/compliance/alerts").await.0, 200);

    // Proofs that do not hold: another request, another key, too old, unknown participant.
    let other = signed_get("alice", "/statements?participant=alice");
    assert_eq!(s.get("/statements", Some(&other)).await.0, 401);
    let wrong_key = authorization(
        &ParticipantId::new("alice").unwrap(),
        &participant_key("bob"),
        chrono::Utc::now().timestamp(),
        "GET",
        "/statements",
        b"",
    );
    let (status, body) = s.get("/statements", Some(&wrong_key)).await;
    assert_eq!(status, 401, "{body}");
    let stale = authorization(
        &ParticipantId::new("alice").unwrap(),
        &participant_key("alice"),
        chrono::Utc::now().timestamp() - 3_600,
        "GET",
        "/statements",
        b"",
    );
    assert_eq!(s.get("/statements", Some(&stale)).await.0, 401);
    let stranger = authorization(
        &ParticipantId::new("mallory").unwrap(),
        &participant_key("mallory"),
        chrono::Utc::now().timestamp(),
        "GET",
        "/statements",
        b"",
    );
    let (status, body) = s.get("/statements", Some(&stranger)).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("not registered"),
        "{body}"
    );
    // A participant may not accept quarantined readings.
    let response = s
        .http
        .post(format!("{}/quarantine/1/accept", s.base))
        .header(
            "authorization",
            authorization(
                &ParticipantId::new("bob").unwrap(),
                &participant_key("bob"),
                chrono::Utc::now().timestamp(),
                "POST",
                "/quarantine/1/accept",
                b"",
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    s.shutdown.stop().await;
}

/// Ledger entries name participants: the parties they name, the auditor and the operator read
/// them; the public reads the block headers only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_entries_go_to_their_parties_and_auditors() {
    let s = start().await;
    s.settle_one_interval().await;
    let (_, blocks) = s.get("/ledger/blocks", None).await;
    let hash = blocks[0]["entries"][0].as_str().unwrap().to_owned();
    let path = format!("/ledger/entries/{hash}");

    // No credential: 401, saying what to send.
    let (status, body) = s.get(&path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "unauthorized");
    assert!(
        body["message"].as_str().unwrap().contains("signed request"),
        "{body}"
    );
    // The mint's seller and buyer read it and can check it against the public block header.
    for party in ["alice", "bob"] {
        let (status, entry) = s.as_participant(party, &path).await;
        assert_eq!(status, 200, "{party}: {entry}");
        assert_eq!(entry["kind"], "mint");
        assert_eq!(entry["body"]["seller"], "alice");
        assert_eq!(entry["body"]["buyer"], "bob");
        assert_eq!(entry["merkle_root"], blocks[0]["merkle_root"]);
    }
    // A participant it does not name: 403.
    let (status, body) = s.as_participant("carol", &path).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("not a party"),
        "{body}"
    );
    // The auditor and the operator read every entry; a wrong bearer token is 401.
    assert_eq!(s.as_bearer(AUDITOR, &path).await.0, 200);
    assert_eq!(s.as_bearer(OPERATOR, &path).await.0, 200);
    assert_eq!(s.as_bearer("guess", &path).await.0, 401);
    s.shutdown.stop().await;
}

/// The auditor reads everything and changes nothing: every write with its token answers 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_reads_everything_and_writes_nothing() {
    let s = start().await;
    let digest = s.settle_one_interval().await;
    let (status, all) = s.as_bearer(AUDITOR, "/statements").await;
    assert_eq!(status, 200);
    assert_eq!(participants_of(&all), vec!["alice", "bob"]);
    for path in [
        "/balances/bob".to_owned(),
        format!("/readings/{digest}"),
        "/compliance".to_owned(),
        "/compliance/alerts".to_owned(),
    ] {
        assert_eq!(s.as_bearer(AUDITOR, &path).await.0, 200, "{path}");
        assert_eq!(s.as_bearer(OPERATOR, &path).await.0, 200, "{path}");
    }
    let (status, items) = s.as_bearer(AUDITOR, "/quarantine").await;
    assert_eq!(status, 200);
    let id = items[0]["id"].as_i64().unwrap();

    let accept = format!("{}/quarantine/{id}/accept", s.base);
    let response = s
        .http
        .post(&accept)
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "forbidden", "{body}");
    // The operator may decide (a forged reading can never be accepted: 409, not 403).
    let response = s
        .http
        .post(&accept)
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(s.http.post(&accept).send().await.unwrap().status(), 401);

    for path in ["/readings", "/tokens/transfer", "/tokens/retire"] {
        let response = s
            .http
            .post(format!("{}{path}", s.base))
            .bearer_auth(AUDITOR)
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "POST {path} with the auditor token");
    }
    s.shutdown.stop().await;
}

/// SSE: listeners without the auditor's or operator's token get no per-household events
/// (`quarantined` names a gateway's refused reading); the auditor gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_household_detail_only_to_auditors() {
    let s = start().await;
    let mut public = s
        .http
        .get(format!("{}/events", s.base))
        .send()
        .await
        .unwrap();
    let mut audit = s
        .http
        .get(format!("{}/events", s.base))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    s.settle_one_interval().await;
    let seen = read_until(&mut audit, "event: quarantined").await;
    assert!(seen.contains("event: quarantined"));
    let seen = read_until(&mut public, "event: block").await;
    assert!(seen.contains("event: settled"), "{seen}");
    assert!(
        !seen.contains("quarantined"),
        "a public listener got household detail: {seen}"
    );
    drop((public, audit));
    s.shutdown.stop().await;
}

/// Defect 5b: a token transfer to an unregistered recipient was accepted (the tokens left
/// for an id nobody holds a key for). Now it answers 400 with the reason, and nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_to_unregistered_recipients_are_refused() {
    let s = start().await;
    s.settle_one_interval().await;
    let (_, balances) = s.as_bearer(AUDITOR, "/balances/bob").await;
    assert_eq!(balances["balance"], 500);
    let lot = balances["holdings"][0]["lot"].as_str().unwrap();
    let transfer = |to: &str| {
        SignedEnvelope::sign(
            &TokenTransfer {
                from: ParticipantId::new("bob").unwrap(),
                to: ParticipantId::new(to).unwrap(),
                lot: settlement::ledger::parse_hex32(lot).unwrap(),
                amount: Wh(120),
                nonce: 7,
            },
            &participant_key("bob"),
        )
    };
    let response = s
        .http
        .post(format!("{}/tokens/transfer", s.base))
        .json(&transfer("nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("nobody") && message.contains("not a participant registered"),
        "{message}"
    );
    let (_, balances) = s.as_bearer(AUDITOR, "/balances/bob").await;
    assert_eq!(balances["balance"], 500, "nothing moved");
    // A registered recipient still works.
    let response = s
        .http
        .post(format!("{}/tokens/transfer", s.base))
        .json(&transfer("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    s.shutdown.stop().await;
}

/// Defect 5a: the operator token was compared with `!=` (its content leaks through timing).
/// Timing is not measurable reliably in a test, so this checks (1) that no source file of
/// settlement parses or compares a bearer token by hand — every check goes through
/// `gridmesh_runtime::http::check_bearer` (constant time, `subtle`) — and (2) that near
/// misses (prefix, one byte off, longer) are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_checked_in_constant_time() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.clone()];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        checked += 1;
        for forbidden in [
            "strip_prefix(\"Bearer",
            "operator_token ==",
            "auditor_token ==",
            "Some(expected.as_str())",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} compares a bearer token by hand (`{forbidden}`); use check_bearer",
                path.display()
            );
        }
    }
    assert!(checked > 10);
    let access = std::fs::read_to_string(src.join("access.rs")).unwrap();
    assert!(access.contains("check_bearer(headers, op)"));
    assert!(access.contains("check_bearer(headers, aud)"));

    let s = start().await;
    for token in ["op-secre", "op-secreT", "op-secret0", "audit-secre", ""] {
        let (status, _) = s.as_bearer(token, "/statements").await;
        assert_eq!(status, 401, "{token:?}");
    }
    assert_eq!(s.as_bearer(OPERATOR, "/statements").await.0, 200);
    s.shutdown.stop().await;
}

/// A market that keeps registrations private (issue 13) answers `/gateways` and
/// `/participants` only to its auditor's bearer token; settlement sends its `market_token`
/// (defaulting to its own `auditor_token`), so it still learns the gateways' keys and accepts
/// their readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_reads_private_registrations_with_its_market_token() {
    use axum::http::{HeaderMap, StatusCode as Status};
    use axum::response::IntoResponse;
    use axum::routing::get;

    fn authorised(headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == b"Bearer market-audit")
    }
    let app = axum::Router::new()
        .route(
            "/gateways",
            get(|headers: HeaderMap| async move {
                if !authorised(&headers) {
                    return Status::UNAUTHORIZED.into_response();
                }
                axum::Json(enrollments()).into_response()
            }),
        )
        .route(
            "/participants",
            get(|headers: HeaderMap| async move {
                if !authorised(&headers) {
                    return Status::UNAUTHORIZED.into_response();
                }
                axum::Json(participants()).into_response()
            }),
        )
        .route(
            "/results",
            get(|| async { axum::Json(Vec::<gridmesh_protocol::market::IntervalResult>::new()) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let market = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    for (market_token, auditor_token, accepted) in [
        (None, None, false),
        (Some("market-audit"), Some(AUDITOR), true),
        (None, Some("market-audit"), true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = Shutdown::new();
        let running = settlement::serve(
            SettlementConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
                market_url: Some(format!("http://{market}")),
                market_token: market_token.map(str::to_owned),
                auditor_token: auditor_token.map(str::to_owned),
                poll_secs: 0.05,
                ..SettlementConfig::default()
            },
            Clock::scaled(epoch(), 1.0),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let envelope = sign(&reading(
            "gw-alice",
            1,
            interval("12:00"),
            0,
            600,
            700,
            1_000,
        ));
        let body = serde_json::to_vec(&vec![envelope]).unwrap();
        let response = reqwest::Client::new()
            .post(format!("http://{}/readings", running.addr))
            .header("authorization", upload_auth("gw-alice", &body))
            .body(body)
            .send()
            .await
            .unwrap();
        if accepted {
            let outcomes: Vec<Value> = response.json().await.unwrap();
            let status = outcomes[0]["status"].as_str().unwrap();
            assert_eq!(status, "accepted", "{market_token:?}/{auditor_token:?}");
        } else {
            // Without the registrations settlement cannot know the gateway: a retryable 503.
            assert_eq!(response.status(), 503);
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["code"], "unknown_gateway", "{error:?}");
        }
        shutdown.stop().await;
    }
}

/// `tls_cert` and `tls_key` (HTTPS through the runtime's server): half a configuration or
/// unreadable files stop settlement at start with a message naming the key, instead of
/// serving plain HTTP or failing later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (cert, key, needle) in [
        (Some("cert.pem"), None, "tls_key"),
        (None, Some("key.pem"), "tls_cert"),
        (
            Some("missing-cert.pem"),
            Some("missing-key.pem"),
            "tls_cert",
        ),
    ] {
        let config = SettlementConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
            market_url: None,
            tls_cert: cert.map(|c| dir.path().join(c)),
            tls_key: key.map(|k| dir.path().join(k)),
            ..SettlementConfig::default()
        };
        let error =
            match settlement::serve(config, Clock::scaled(epoch(), 1.0), Shutdown::new()).await {
                Ok(_) => panic!("started with {cert:?}/{key:?}"),
                Err(e) => e.to_string(),
            };
        assert!(error.contains(needle), "{error}");
    }
    // The CA for an https:// market: unreadable or without a certificate, settlement does not
    // start (it would otherwise poll a market it can never reach).
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    for ca in [dir.path().join("missing-ca.pem"), not_pem] {
        let config = SettlementConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
            market_url: Some("https://127.0.0.1:9".into()),
            market_ca_file: Some(ca.clone()),
            ..SettlementConfig::default()
        };
        let error =
            match settlement::serve(config, Clock::scaled(epoch(), 1.0), Shutdown::new()).await {
                Ok(_) => panic!("started with market_ca_file {}", ca.display()),
                Err(e) => e.to_string(),
            };
        assert!(error.contains("market_ca_file"), "{error}");
    }
}
