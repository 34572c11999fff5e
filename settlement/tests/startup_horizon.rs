//! The verification state loaded at start-up is bounded by the horizon (issue 16), and the
//! checks stay exact (SQLite and PostgreSQL): after a restart ten days later, only each
//! gateway's and device's latest reading from before the horizon is held; a resubmitted old
//! reading is still a duplicate (its altered twin a conflict), and the boundary reading still
//! guards the sequence.
//!
//! The same bound holds at runtime: once the horizon has moved on, ingest forgets what fell
//! behind it (keeping each device's latest reading as the boundary), with the same exactness.

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
    service_with(url, Clock::scaled(now, 1.0)).await
}

async fn service_with(url: &str, clock: Clock) -> Service {
    let db = settlement::store::open(url).await.unwrap();
    let mut s = Service::open(db, authority(), clock, settings())
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

/// Simulated seconds per real second in the runtime test: the horizon (two days) plus the
/// state's day of margin pass in about six real seconds.
const FAST: f64 = 43_200.0;

/// Waits (real time) until `clock` reads at least `t`; asserts nothing about how long it takes.
async fn wait_until(clock: &Clock, t: chrono::DateTime<chrono::Utc>) {
    while clock.now() < t {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn bounded_at_runtime(backend: &str) {
    let (url, _dir) = database(backend, "runtime_horizon").await;
    let clock = Clock::scaled(epoch(), FAST);
    let service = service_with(&url, clock.clone()).await;
    // Eight readings of alice's gateway for the last two hours, sent as soon as they are
    // built (well within the two-day horizon even at this clock speed).
    let now = clock.now();
    let old: Vec<_> = (0..8u64)
        .map(|n| {
            let minutes = 20 + 15 * (7 - n as i64);
            let i =
                Interval::containing(now - chrono::Duration::minutes(minutes), Default::default());
            sign(&reading("gw-alice", n + 1, i, 100, 0, 0, n as i64 * 100))
        })
        .collect();
    let out = service.ingest(submit(&old)).await.unwrap();
    assert!(
        out.iter().all(|o| o.status == ReadingStatus::Accepted),
        "{out:?}"
    );
    assert_eq!(service.verification_state_len().await, 8);

    // The horizon (two days), the state's day of margin and an hour more pass: the next batch
    // bounds the state, so only what it stores is held.
    wait_until(
        &clock,
        now + chrono::Duration::days(3) + chrono::Duration::hours(2),
    )
    .await;
    let fresh = || {
        Interval::containing(
            clock.now() - chrono::Duration::minutes(20),
            Default::default(),
        )
    };
    let replayed = sign(&reading("gw-alice", 5, fresh(), 100, 0, 0, 900));
    let out = service.ingest(submit(&[replayed])).await.unwrap();
    // The boundary reading (sequence 8) still guards the sequence.
    assert_eq!(
        out[0].code,
        Some(ReasonCode::SequenceNotIncreasing),
        "{out:?}"
    );
    assert_eq!(
        service.verification_state_len().await,
        0,
        "old digests forgotten"
    );
    // And its registers must not go below the boundary reading's.
    let lower = sign(&reading("gw-alice", 9, fresh(), 100, 0, 0, 0));
    let out = service.ingest(submit(&[lower])).await.unwrap();
    assert_eq!(out[0].code, Some(ReasonCode::RegisterDecreased), "{out:?}");

    // An old reading sent again: a duplicate, looked up in the database; its altered twin a
    // conflict; nothing stored twice.
    let out = service.ingest(submit(&old[2..3])).await.unwrap();
    assert_eq!(out[0].status, ReadingStatus::Duplicate, "{out:?}");
    let mut twin = reading("gw-alice", 3, old_interval(&old[2]), 999, 0, 0, 200);
    twin.operating_seconds += 1;
    let out = service.ingest(submit(&[sign(&twin)])).await.unwrap();
    assert_eq!(out[0].code, Some(ReasonCode::Conflict), "{out:?}");
    assert_eq!(
        service.verification_state_len().await,
        0,
        "look-ups not kept"
    );

    let good = sign(&reading("gw-alice", 9, fresh(), 100, 0, 0, 900));
    let out = service.ingest(submit(&[good])).await.unwrap();
    assert_eq!(out[0].status, ReadingStatus::Accepted, "{out:?}");
    assert_eq!(service.verification_state_len().await, 1);

    let database = Database::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert_eq!(rows, 9, "eight old readings and the fresh one, each once");
}

#[tokio::test]
async fn bounded_at_runtime_sqlite() {
    bounded_at_runtime("sqlite").await;
}

#[tokio::test]
async fn bounded_at_runtime_postgres() {
    bounded_at_runtime("postgres").await;
}
