//! Every kind of reading ends as documented, on SQLite and PostgreSQL.

mod common;

use common::*;
use gridmesh_protocol::reading::ReadingFlags;
use gridmesh_protocol::signing::{Signable, SignedEnvelope};
use settlement::service::{ReadingOutcome, ReadingStatus, Submission};
use sqlx::Row;

fn code(o: &ReadingOutcome) -> &'static str {
    o.code.map(|c| c.as_str()).unwrap_or("-")
}

async fn outcomes(backend: &str) {
    let (url, _dir) = database(backend, "readings").await;
    let s = service(&url).await;
    let i1200 = interval("12:00");
    let r1 = reading("gw-alice", 10, i1200, 0, 500, 700, 10_000);
    let e1 = sign(&r1);

    let first = s.ingest(submit(std::slice::from_ref(&e1))).await.unwrap();
    assert_eq!(first[0].status, ReadingStatus::Accepted, "{first:?}");
    assert_eq!(first[0].key.as_deref(), Some("gw-alice/home/1782043200"));

    // Forged: a delta altered after signing (the old signature kept).
    let mut forged_reading = reading("gw-alice", 11, interval("12:15"), 0, 900, 700, 11_000);
    let good = sign(&forged_reading);
    forged_reading.deltas.grid_export.0 = 9_000;
    let forged = SignedEnvelope {
        payload: forged_reading.encode(),
        ..good
    };
    // Signed by another key than the gateway's registered one.
    let wrong_key = SignedEnvelope::sign(
        &reading("gw-alice", 11, interval("12:15"), 0, 900, 700, 11_000),
        &gateway_key("gw-bob"),
    );
    let conflict = sign(&reading("gw-alice", 10, i1200, 0, 501, 700, 10_000));
    let replayed = sign(&reading(
        "gw-alice",
        9,
        interval("12:30"),
        0,
        100,
        100,
        12_000,
    ));
    let decreasing = sign(&reading(
        "gw-alice",
        12,
        interval("12:30"),
        0,
        100,
        100,
        5_000,
    ));
    let mut reset = reading("gw-alice", 12, interval("12:30"), 0, 100, 100, 5_000);
    reset.flags = ReadingFlags::COUNTER_RESET;
    let reset = sign(&reset);
    let future = sign(&reading("gw-alice", 20, interval("14:15"), 0, 1, 1, 20_000));
    let old = reading(
        "gw-alice",
        1,
        gridmesh_protocol::Interval::parse("2026-06-19T10:00:00Z", 15).unwrap(),
        0,
        1,
        1,
        1,
    );
    let old = sign(&old);
    let unknown = SignedEnvelope::sign(
        &reading("gw-zed", 1, i1200, 1, 1, 1, 1),
        &gateway_key("gw-zed"),
    );
    let implausible = sign(&reading("gw-bob", 5, i1200, 0, 4_000, 4_000, 1_000));
    let night = sign(&reading("gw-carol", 5, interval("00:00"), 0, 0, 300, 1_000));

    let mut batch = submit(&[
        e1.clone(),
        forged,
        wrong_key,
        conflict,
        replayed,
        decreasing,
        reset,
        future,
        old,
        unknown,
        implausible,
        night,
    ]);
    batch.push(Submission {
        source: "test".into(),
        raw: b"not json at all".to_vec(),
    });
    let out = s.ingest(batch).await.unwrap();
    let got: Vec<(&str, &str)> = out.iter().map(|o| (o.status.as_str(), code(o))).collect();
    assert_eq!(
        got,
        vec![
            ("duplicate", "-"),
            ("quarantined", "bad_signature"),
            ("quarantined", "key_mismatch"),
            ("quarantined", "conflict"),
            ("quarantined", "sequence_not_increasing"),
            ("quarantined", "register_decreased"),
            ("accepted", "-"),
            ("quarantined", "future_interval"),
            ("quarantined", "too_old"),
            ("quarantined", "unknown_gateway"),
            ("quarantined", "implausible_export"),
            ("quarantined", "pv_at_night"),
            ("quarantined", "malformed"),
        ]
    );
    for o in out
        .iter()
        .filter(|o| o.status == ReadingStatus::Quarantined)
    {
        assert!(
            o.reason.as_ref().is_some_and(|r| r.len() > 20),
            "reason explains: {o:?}"
        );
    }

    // The duplicate was counted once; flagged readings are stored; nothing was dropped.
    let pool = &s.db().pool;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings WHERE reading_key = $1")
        .bind("gw-alice/home/1782043200")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let statuses: Vec<(String, String)> =
        sqlx::query("SELECT reading_key, status FROM readings ORDER BY reading_key")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(statuses.len(), 4, "{statuses:?}");
    assert!(statuses.contains(&("gw-bob/home/1782043200".into(), "flagged".into())));
    assert!(statuses.contains(&("gw-carol/home/1782000000".into(), "flagged".into())));
    let quarantined = out
        .iter()
        .filter(|o| o.status == ReadingStatus::Quarantined)
        .count();
    let rows = s.quarantine(100).await.unwrap();
    assert_eq!(rows.len(), quarantined);
    let malformed = rows
        .iter()
        .find(|r| r.code.as_str() == "malformed")
        .unwrap();
    assert_eq!(malformed.raw, "not json at all", "raw input kept verbatim");
    assert_eq!(s.metrics.readings_accepted.get(), 2);
    assert_eq!(s.metrics.readings_duplicate.get(), 1);

    // Restart: the state is rebuilt from storage, so a replay is still a duplicate.
    drop(s);
    let s = service(&url).await;
    let again = s.ingest(submit(&[e1])).await.unwrap();
    assert_eq!(again[0].status, ReadingStatus::Duplicate);

    // Late: a reading for an interval that was already settled.
    s.add_result(&result(i1200, vec![])).await.unwrap();
    s.settle(&i1200.key()).await.unwrap();
    let late = s
        .ingest(submit(&[sign(&reading(
            "gw-carol", 6, i1200, 10, 0, 0, 2_000,
        ))]))
        .await
        .unwrap();
    assert_eq!(
        (late[0].status.as_str(), code(&late[0])),
        ("quarantined", "late")
    );
}

#[tokio::test]
async fn reading_outcomes_sqlite() {
    outcomes("sqlite").await;
}

#[tokio::test]
async fn reading_outcomes_postgres() {
    outcomes("postgres").await;
}

#[tokio::test]
async fn one_forged_reading_in_a_large_batch_is_found() {
    let (url, _dir) = database("sqlite", "batch").await;
    let s = service(&url).await;
    let mut envs = Vec::new();
    for (k, gw) in ["gw-alice", "gw-bob", "gw-carol"].iter().enumerate() {
        for i in 0..40u64 {
            let iv = interval("00:00");
            let iv = gridmesh_protocol::Interval::from_unix(iv.start_unix() + (i as i64) * 900, 15)
                .unwrap();
            envs.push(sign(&reading(
                gw,
                i + 1,
                iv,
                10,
                0,
                0,
                100 * i as i64 + k as i64,
            )));
        }
    }
    envs[77].signature[3] ^= 1;
    let out = s.ingest(submit(&envs)).await.unwrap();
    let bad: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, o)| o.status != ReadingStatus::Accepted)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(bad, vec![77]);
    assert_eq!(out[77].code.unwrap().as_str(), "bad_signature");
}
