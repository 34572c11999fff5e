//! Reading a month's statements, tariffs and readings of one household from the store.

use super::{MonthlyError, build, month_bounds};
use crate::rules::{Statement, Tariffs};
use crate::service::{Service, ServiceError};
use crate::store::StoreError;
use futures::TryStreamExt as _;
use gridmesh_protocol::api::settlement::{MonthlyStatement, ReadingDigest, StoredReadingStatus};
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::{Interval, ParticipantId, Wh};
use sqlx::Row;
use std::collections::BTreeMap;

/// Reads the month's statements, tariffs and readings of `participant` from the store and
/// builds its statement (see [`build`]). A bad month is a `BadRequest`.
pub async fn load(
    service: &Service,
    participant: &ParticipantId,
    month: &str,
) -> Result<MonthlyStatement, ServiceError> {
    let (from, to) = month_bounds(month).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
    let (from_s, to_s) = (from.timestamp(), to.timestamp());
    let pool = &service.db().pool;
    let who = participant.to_string();
    let statements: Vec<Statement> = sqlx::query_scalar::<_, String>(
        "SELECT body FROM statements WHERE participant = $1 AND interval_start >= $2 \
         AND interval_start < $3 ORDER BY interval_start",
    )
    .bind(who.clone())
    .bind(from_s)
    .bind(to_s)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|b| serde_json::from_str(b).map_err(|e| StoreError::Corrupt(format!("statement: {e}"))))
    .collect::<Result<_, _>>()?;
    // Result bodies hold the whole zone's book: read them one at a time and keep only the
    // tariffs of the household's intervals.
    let wanted: std::collections::BTreeSet<&str> =
        statements.iter().map(|s| s.interval.as_str()).collect();
    let mut tariffs = BTreeMap::new();
    let mut rows = sqlx::query(
        "SELECT interval_key, body FROM results WHERE interval_start >= $1 AND interval_start < $2",
    )
    .bind(from_s)
    .bind(to_s)
    .fetch(pool);
    while let Some(r) = rows.try_next().await? {
        let key: String = r.get(0);
        if !wanted.contains(key.as_str()) {
            continue;
        }
        let result: IntervalResult = serde_json::from_str(&r.get::<String, _>(1))
            .map_err(|e| StoreError::Corrupt(format!("stored result {key}: {e}")))?;
        tariffs.insert(key, Tariffs::of(&result));
    }
    drop(rows);
    let mut readings: BTreeMap<String, Vec<ReadingDigest>> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT digest, reading_key, gateway, status, grid_import, grid_export, interval_start, minutes \
         FROM readings WHERE participant = $1 AND interval_start >= $2 AND interval_start < $3 \
         ORDER BY interval_start, reading_key",
    )
    .bind(who)
    .bind(from_s)
    .bind(to_s)
    .fetch_all(pool)
    .await?;
    for r in rows {
        let digest: String = r.get(0);
        let corrupt = |what: String| StoreError::Corrupt(format!("reading {digest}: {what}"));
        let status: String = r.get(3);
        let status = StoredReadingStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("unknown status `{status}`")))?;
        let interval =
            Interval::from_unix(r.get(6), r.get(7)).map_err(|e| corrupt(e.to_string()))?;
        readings
            .entry(interval.key())
            .or_default()
            .push(ReadingDigest {
                key: r.get(1),
                gateway: r.get(2),
                status,
                imported: Wh(r.get(4)),
                exported: Wh(r.get(5)),
                digest,
            });
    }
    build(participant.clone(), month, statements, &tariffs, readings).map_err(|e| match e {
        MonthlyError::BadMonth(_) => ServiceError::BadRequest(e.to_string()),
        other => ServiceError::Store(StoreError::Corrupt(other.to_string())),
    })
}
