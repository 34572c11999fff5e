//! Counted once under races and restarts (issue 15), on SQLite and PostgreSQL:
//! - the same signed reading arriving over REST and MQTT at the same moment (two ingests
//!   released together by a barrier, many times) is stored once and minted once;
//! - a token transfer replayed after settlement restarted is a duplicate (200, nothing moves),
//!   and another transfer reusing its nonce is refused with 409; the tokens move once.

mod common;

use common::*;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_runtime::db::Database;
use settlement::SettlementConfig;
use settlement::service::{ReadingStatus, Submission};
use std::sync::Arc;
use tokio::sync::Barrier;

/// Rounds of the race: each races alice's and bob's reading of one interval.
const ROUNDS: u64 = 24;

/// The interval of round `round`: 15 minutes apart, ending before the service's clock.
fn round_interval(round: u64) -> gridmesh_protocol::Interval {
    let minutes = 7 * 60 + 15 * round;
    interval(&format!("{:02}:{:02}", minutes / 60, minutes % 60))
}

async fn same_reading_over_rest_and_mqtt(backend: &str) {
    let (url, _dir) = database(backend, "race_rest_mqtt").await;
    let service = Arc::new(service(&url).await);
    for round in 0..ROUNDS {
        let i = round_interval(round);
        for (gateway, import, export) in [("gw-alice", 0, 600), ("gw-bob", 600, 0)] {
            let envelope = sign(&reading(
                gateway,
                round + 1,
                i,
                import,
                export,
                export + 100,
                1_000 + round as i64 * 1_000,
            ));
            let raw = serde_json::to_vec(&envelope).unwrap();
            let barrier = Arc::new(Barrier::new(2));
            let racers = [
                format!("rest:{gateway}"),
                format!("mqtt:gridmesh/readings/{gateway}"),
            ]
            .map(|source| {
                let (service, barrier, raw) = (service.clone(), barrier.clone(), raw.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    service.ingest(vec![Submission { source, raw }]).await
                })
            });
            let mut statuses = Vec::new();
            for racer in racers {
                let outcome = racer.await.unwrap().unwrap();
                assert_eq!(outcome.len(), 1);
                statuses.push(outcome[0].status);
            }
            statuses.sort_by_key(|s| format!("{s:?}"));
            assert_eq!(
                statuses,
                vec![ReadingStatus::Accepted, ReadingStatus::Duplicate],
                "{gateway} in round {round}: the same reading over REST and MQTT at once"
            );
        }
    }

    // One stored reading per gateway and interval.
    let database = Database::connect(&url).await.unwrap();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT gateway, interval_start, COUNT(*) FROM readings GROUP BY gateway, interval_start",
    )
    .fetch_all(&database.pool)
    .await
    .unwrap();
    assert_eq!(rows.len() as u64, 2 * ROUNDS, "{rows:?}");
    assert!(rows.iter().all(|r| r.2 == 1), "stored twice: {rows:?}");

    // Settled: one mint per interval, of the matched energy.
    for round in 0..ROUNDS {
        let i = round_interval(round);
        service
            .add_result(&result(
                i,
                vec![trade(order("alice", "a"), order("bob", "b"), 500, 200_000)],
            ))
            .await
            .unwrap();
        service.settle(&i.key()).await.unwrap();
    }
    let balance = json(&service.balances("bob").await.unwrap())["balance"].clone();
    assert_eq!(
        balance,
        500 * ROUNDS as i64,
        "one mint of 500 Wh per interval"
    );
    assert_eq!(service.metrics.tokens_minted_wh.get(), 500 * ROUNDS);
    database.pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_reading_over_rest_and_mqtt_at_once_counts_once_sqlite() {
    same_reading_over_rest_and_mqtt("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_reading_over_rest_and_mqtt_at_once_counts_once_postgres() {
    same_reading_over_rest_and_mqtt("postgres").await;
}

/// Settlement over REST on `url` with the authority key in `key_file` (the same across
/// restarts, as a deployment's is).
async fn start_settlement(url: &str, key_file: &std::path::Path) -> Api {
    let config = SettlementConfig {
        authority_key: Some(key_file.to_owned()),
        ..api_config(url.to_owned())
    };
    serve_api(config, None).await
}

async fn transfer_replayed_after_restart(backend: &str) {
    let (url, _dir) = database(backend, "replay_restart").await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("authority.key");
    authority().save(&key_file).unwrap();

    // Bob holds 500 Wh of tokens.
    let s = service(&url).await;
    let lot = bob_holds_500_wh(&s).await;
    drop(s);
    let transfer = |amount, nonce| bob_to_carol(lot, amount, nonce);
    let http = reqwest::Client::new();
    let post = |base: String, envelope: SignedEnvelope| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("{base}/tokens/transfer"))
                .json(&envelope)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };

    let api = start_settlement(&url, &key_file).await;
    let first = transfer(100, 7);
    let (status, body) = post(api.base.clone(), first.clone()).await;
    assert_eq!(status, 201, "{body}");
    api.shutdown.stop().await;

    // Settlement restarts: the nonce is remembered from storage, not from memory.
    let api = start_settlement(&url, &key_file).await;
    let base = api.base.clone();
    let (status, body) = post(base.clone(), first).await;
    assert_eq!(
        status, 200,
        "the exact transfer again is a duplicate: {body}"
    );
    assert!(body.contains("\"duplicate\":true"), "{body}");
    let (status, body) = post(base.clone(), transfer(50, 7)).await;
    assert_eq!(status, 409, "another transfer with a used nonce: {body}");
    assert!(body.contains("nonce 7"), "{body}");
    api.shutdown.stop().await;

    // The tokens moved once.
    let s = service(&url).await;
    assert_eq!(json(&s.balances("bob").await.unwrap())["balance"], 400);
    assert_eq!(json(&s.balances("carol").await.unwrap())["balance"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_replayed_after_a_restart_moves_tokens_once_sqlite() {
    transfer_replayed_after_restart("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_replayed_after_a_restart_moves_tokens_once_postgres() {
    transfer_replayed_after_restart("postgres").await;
}
