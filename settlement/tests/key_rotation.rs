//! Key rotation (issue 13): settlement reads every participant key's validity period from the
//! market and checks signatures with the key valid at the time — transfers at settlement's
//! clock, signed requests at their `signed_at` — on SQLite and PostgreSQL.

mod common;

use common::*;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::request::authorization;
use gridmesh_protocol::rotation::{KeyPeriod, ParticipantWithKeys};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::token::TokenTransfer;
use gridmesh_protocol::{ParticipantId, Wh};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use settlement::SettlementConfig;
use settlement::ledger::parse_hex32;
use settlement::service::{ReadingStatus, Service, ServiceError};
use settlement::sources::{HttpMarket, poll_once};
use std::time::Duration;

/// bob's key after the rotation.
fn bob_new_key() -> SigningKeyPair {
    SigningKeyPair::from_seed([77; 32])
}

/// When bob's new key took over: a minute before the test clock's epoch (and so before now).
fn rotated_at() -> i64 {
    epoch().timestamp() - 60
}

/// The market's `/participants`: bob rotated his key at [`rotated_at`]; alice and carol
/// answer as an old market would (no `keys`).
fn participants_with_keys() -> Vec<ParticipantWithKeys> {
    participants()
        .into_iter()
        .map(|mut p| {
            if p.id.as_str() != "bob" {
                return ParticipantWithKeys {
                    participant: p,
                    keys: Vec::new(),
                };
            }
            let old = p.public_key;
            p.public_key = bob_new_key().public_key();
            ParticipantWithKeys {
                keys: vec![
                    KeyPeriod {
                        public_key: old,
                        valid_from: 0,
                        valid_until: Some(rotated_at()),
                    },
                    KeyPeriod {
                        public_key: p.public_key,
                        valid_from: rotated_at(),
                        valid_until: None,
                    },
                ],
                participant: p,
            }
        })
        .collect()
}

/// A mock market serving the gateways, the rotated participants and no results.
async fn mock_market() -> String {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/gateways", get(|| async { axum::Json(enrollments()) }))
        .route(
            "/participants",
            get(|| async { axum::Json(participants_with_keys()) }),
        )
        .route(
            "/results",
            get(|| async { axum::Json(Vec::<gridmesh_protocol::market::IntervalResult>::new()) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn transfer(lot: &str, amount: i64, nonce: u64, signer: &SigningKeyPair) -> SignedEnvelope {
    let t = TokenTransfer {
        from: ParticipantId::new("bob").unwrap(),
        to: ParticipantId::new("carol").unwrap(),
        lot: parse_hex32(lot).unwrap(),
        amount: Wh(amount),
        nonce,
    };
    SignedEnvelope::sign(&t, signer)
}

/// alice sells 1000 Wh to bob at 12:00 and delivers 800: bob holds one lot of 727 Wh.
async fn bobs_lot(s: &Service) -> String {
    let i = interval("12:00");
    s.add_result(&result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 1000, 200_000)],
    ))
    .await
    .unwrap();
    let out = s
        .ingest(submit(&[
            sign(&reading("gw-alice", 1, i, 0, 800, 900, 1_000)),
            sign(&reading("gw-bob", 1, i, 1_200, 0, 0, 1_000)),
        ]))
        .await
        .unwrap();
    assert!(out.iter().all(|o| o.status == ReadingStatus::Accepted));
    s.settle_due().await.unwrap();
    let balances = json(&s.balances("bob").await.unwrap());
    balances["holdings"][0]["lot"].as_str().unwrap().to_owned()
}

async fn transfers_after_rotation(backend: &str) {
    let (url, _dir) = database(backend, "key_rotation").await;
    let s = service(&url).await;
    let lot = bobs_lot(&s).await;
    // Before the poll settlement knows bob's old key only: it signs.
    s.transfer(transfer(&lot, 10, 1, &participant_key("bob")))
        .await
        .unwrap();

    poll_once(&s, &HttpMarket::new(&mock_market().await))
        .await
        .unwrap();
    let bob = ParticipantId::new("bob").unwrap();
    let now = s.clock().now().timestamp();
    assert_eq!(
        s.participant_key_at(&bob, now),
        Some(bob_new_key().public_key())
    );
    assert_eq!(
        s.participant_key_at(&bob, rotated_at() - 1),
        Some(participant_key("bob").public_key())
    );
    // alice is answered without `keys` (an old market): her key counts as valid from 0.
    let alice = ParticipantId::new("alice").unwrap();
    assert_eq!(
        s.participant_key_at(&alice, 0),
        Some(participant_key("alice").public_key())
    );

    match s
        .transfer(transfer(&lot, 10, 2, &participant_key("bob")))
        .await
    {
        Err(ServiceError::Forbidden(m)) => assert!(
            m.contains("replaced at") && m.contains("sign with the current key"),
            "{m}"
        ),
        other => panic!("the old key after the rotation is refused: {other:?}"),
    }
    let receipt = s
        .transfer(transfer(&lot, 10, 3, &bob_new_key()))
        .await
        .unwrap();
    assert!(!receipt.duplicate);
    assert_eq!(json(&s.balances("carol").await.unwrap())["balance"], 20);

    // The audit accepts entries signed by either key in its period.
    settlement::audit::verify(s.db(), Some(s.authority()))
        .await
        .unwrap();

    // The periods are kept across a restart.
    drop(s);
    let db = settlement::store::open(&url).await.unwrap();
    let reopened = Service::open(db, authority(), Clock::scaled(epoch(), 1.0), settings())
        .await
        .unwrap();
    assert_eq!(
        reopened.participant_key_at(&bob, rotated_at() - 1),
        Some(participant_key("bob").public_key())
    );
    assert_eq!(
        reopened.participant_key_at(&bob, rotated_at()),
        Some(bob_new_key().public_key())
    );
}

#[tokio::test]
async fn transfers_use_the_key_valid_when_received_sqlite() {
    transfers_after_rotation("sqlite").await;
}

#[tokio::test]
async fn transfers_use_the_key_valid_when_received_postgres() {
    transfers_after_rotation("postgres").await;
}

/// A signed request by bob's replaced key, signed after the rotation, answers 401 naming the
/// rotation; the new key reads bob's balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signed_by_a_replaced_key_is_refused() {
    let market = mock_market().await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = settlement::serve(
        SettlementConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
            market_url: Some(market),
            poll_secs: 0.05,
            ..SettlementConfig::default()
        },
        Clock::scaled(epoch(), 1.0),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let path = "/balances/bob";
    let get = |key: SigningKeyPair| {
        let http = http.clone();
        let url = format!("http://{}{path}", running.addr);
        async move {
            let auth = authorization(
                &ParticipantId::new("bob").unwrap(),
                &key,
                chrono::Utc::now().timestamp(),
                "GET",
                path,
                b"",
            );
            let response = http
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while get(bob_new_key()).await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("settlement learns bob's new key from the market");
    let (status, body) = get(participant_key("bob")).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("replaced at") && body.contains("sign with the current key"),
        "{body}"
    );
    shutdown.stop().await;
}
