//! The verification state loaded at start-up is bounded by the horizon (issue 16), and the
//! checks stay exact (SQLite and PostgreSQL): after a restart ten days later, only each
//! gateway's and device's latest reading from before the horizon is held; a resubmitted old
//! reading is still a duplicate (its altered twin a conflict), and the boundary reading still
//! guards the sequence.

mod common;

use common::*;
use gridmesh_protocol::Interval;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::db::Database;
use settlement::service::{ReadingStatus, Service};
use settlement::verify::ReasonCode;

fn at(minutes_before_epoch: i64) -> Interval {
    Interval::containing(
        epoch() - chrono::Duration::minutes(minutes_before_epoch),
        Default::default(),
    )
}

async fn service_at(url: &str, now: chrono::DateTime<chrono::Utc>) -> Service {
    let db = settlement::store::open(url).await.unwrap();
    let mut s = Service::open(db, authority(), Clock::scaled(now, 1.0), settings())
        .await
        .unwrap();
    s.use_postgres_copy(url).await.unwrap();
    s.set_gateways(&enrollments()).await.unwrap();
    s.set_participants(&participants()).await.unwrap();
    s
}

async fn bounded_and_exact(backend: &str) {
    let (url, _dir) = database(backend, "startup_horizon").await;
    let ten_days = 10 * 24 * 60;
    // Ten days ago: eight readings of alice's gateway, an hour before that day's clock.
    let old: Vec<_> = (0..8u64)
        .map(|n| {
            let i = at(ten_days + 60 + 8 * 15 - 15 * n as i64);
            sign(&reading("gw-alice", n + 1, i, 100, 0, 0, n as i64 * 100))
        })
        .collect();
    {
        let then = service_at(&url, epoch() - chrono::Duration::minutes(ten_days)).await;
        let out = then.ingest(submit(&old)).await.unwrap();
        assert!(
            out.iter().all(|o| o.status == ReadingStatus::Accepted),
            "{out:?}"
        );
        assert_eq!(then.verification_state_len().await, 8);
    }

    // Restarted ten days later (horizon: two days): only the boundary reading is held.
    let now = service_at(&url, epoch()).await;
    assert_eq!(now.verification_state_len().await, 1);

    // An old reading sent again: a duplicate, as before the restart; nothing stored twice.
    let out = now.ingest(submit(&old[2..3])).await.unwrap();
    assert_eq!(out[0].status, ReadingStatus::Duplicate, "{out:?}");
    // Its altered twin (same gateway, device and interval): a conflict.
    let mut twin = reading("gw-alice", 3, old_interval(&old[2]), 999, 0, 0, 200);
    twin.operating_seconds += 1;
    let out = now.ingest(submit(&[sign(&twin)])).await.unwrap();
    assert_eq!(out[0].code, Some(ReasonCode::Conflict), "{out:?}");
    // A fresh interval whose sequence is not above the boundary reading's (8): refused.
    let fresh = at(60);
    let replayed = sign(&reading("gw-alice", 5, fresh, 100, 0, 0, 900));
    let out = now.ingest(submit(&[replayed])).await.unwrap();
    assert_eq!(
        out[0].code,
        Some(ReasonCode::SequenceNotIncreasing),
        "{out:?}"
    );
    // And its registers must not go below the boundary reading's.
    let lower = sign(&reading("gw-alice", 9, fresh, 100, 0, 0, 0));
    let out = now.ingest(submit(&[lower])).await.unwrap();
    assert_eq!(out[0].code, Some(ReasonCode::RegisterDecreased), "{out:?}");
    let good = sign(&reading("gw-alice", 9, fresh, 100, 0, 0, 900));
    let out = now.ingest(submit(&[good])).await.unwrap();
    assert_eq!(out[0].status, ReadingStatus::Accepted, "{out:?}");

    let database = Database::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert_eq!(rows, 9, "eight old readings and the fresh one, each once");
}

fn old_interval(e: &gridmesh_protocol::SignedEnvelope) -> Interval {
    let r: gridmesh_protocol::Reading = e.open().unwrap();
    r.interval
}

#[tokio::test]
async fn bounded_and_exact_sqlite() {
    bounded_and_exact("sqlite").await;
}

#[tokio::test]
async fn bounded_and_exact_postgres() {
    bounded_and_exact("postgres").await;
}
