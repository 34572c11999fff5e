//! Each interval's tables: market results (signed or not), statements, operating-envelope
//! compliance rows and mints withheld until flagged readings are accepted.

use super::StoreError;
use crate::rules::{MintPlan, Statement};
use gridmesh_protocol::Interval;
use gridmesh_protocol::api::readings::ReasonCode;
use gridmesh_protocol::envelope::EnvelopeCompliance;
use sqlx::{Any, AnyPool, QueryBuilder, Row, Transaction};

/// Stores a result's body (and the market's attestation, JSON, when it is signed) unless the
/// interval has one already. Returns whether it was new.
pub async fn insert_result<'e, E>(
    executor: E,
    interval: &Interval,
    body: String,
    attestation: Option<String>,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let done = sqlx::query(
        "INSERT INTO results (interval_key, interval_start, minutes, body, settled, attestation) \
         VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (interval_key) DO NOTHING",
    )
    .bind(interval.key())
    .bind(interval.start_unix())
    .bind(i64::from(interval.length().minutes()))
    .bind(body)
    .bind(attestation)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The start (Unix s) of the newest stored result.
pub async fn latest_result_start(pool: &AnyPool) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT MAX(interval_start) FROM results")
            .fetch_one(pool)
            .await?,
    )
}

fn interval(start: i64, minutes: i64) -> Result<Interval, StoreError> {
    Interval::from_unix(start, minutes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Every unsettled result's key and interval, oldest first (an interval that does not parse is
/// an error when it is reached).
pub async fn unsettled(
    pool: &AnyPool,
) -> Result<Vec<(String, Result<Interval, StoreError>)>, StoreError> {
    Ok(sqlx::query(
        "SELECT interval_key, interval_start, minutes FROM results WHERE settled = 0 ORDER BY interval_start",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| (r.get(0), interval(r.get(1), r.get(2))))
    .collect())
}

/// The oldest unsettled result's interval.
pub async fn oldest_unsettled(pool: &AnyPool) -> Result<Option<Interval>, StoreError> {
    let row = sqlx::query(
        "SELECT interval_start, minutes FROM results WHERE settled = 0 ORDER BY interval_start LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| interval(r.get(0), r.get(1))).transpose()
}

/// The keys of every settled interval.
pub async fn settled_keys(pool: &AnyPool) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT interval_key FROM results WHERE settled = 1")
            .fetch_all(pool)
            .await?,
    )
}

/// Every settled interval.
pub async fn settled_intervals(pool: &AnyPool) -> Result<Vec<Interval>, StoreError> {
    sqlx::query("SELECT interval_start, minutes FROM results WHERE settled = 1")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| interval(r.get(0), r.get(1)))
        .collect()
}

/// The (at most two) settled intervals just before `start` (Unix s), newest first.
pub async fn settled_before(
    tx: &mut Transaction<'_, Any>,
    start: i64,
) -> Result<Vec<Interval>, StoreError> {
    sqlx::query(
        "SELECT interval_start, minutes FROM results WHERE settled = 1 AND interval_start < $1 \
         ORDER BY interval_start DESC LIMIT 2",
    )
    .bind(start)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| interval(r.get(0), r.get(1)))
    .collect()
}

/// A result's stored body and whether it is settled.
pub async fn result_for_settling(
    tx: &mut Transaction<'_, Any>,
    key: &str,
) -> Result<Option<(String, bool)>, StoreError> {
    let row = sqlx::query("SELECT body, settled FROM results WHERE interval_key = $1")
        .bind(key.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get::<i64, _>(1) != 0)))
}

/// The key and body of at most `limit` results starting at or after `since` (Unix s) that have
/// ended by `now` (Unix s), oldest first.
pub async fn ended_results(
    pool: &AnyPool,
    since: i64,
    now: i64,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT interval_key, body FROM results \
         WHERE interval_start >= $1 AND interval_start + minutes * 60 <= $2 \
         ORDER BY interval_start LIMIT $3",
    )
    .bind(since)
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Marks an interval settled.
pub async fn mark_settled(tx: &mut Transaction<'_, Any>, key: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE results SET settled = 1 WHERE interval_key = $1")
        .bind(key.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts the statements of the interval `key` (starting at `start`, Unix s) with multi-row statements of `rows_per_statement` rows.
pub async fn insert_statements(
    tx: &mut Transaction<'_, Any>,
    key: &str,
    start: i64,
    statements: &[Statement],
    rows_per_statement: usize,
) -> Result<(), StoreError> {
    for chunk in statements.chunks(rows_per_statement.max(1)) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO statements (interval_key, participant, interval_start, net, body) ",
        );
        insert.push_values(chunk, |mut row, s| {
            row.push_bind(key.to_owned())
                .push_bind(s.participant.to_string())
                .push_bind(start)
                .push_bind(s.net.0)
                .push_bind(serde_json::to_string(s).expect("serialisable"));
        });
        super::execute_built(tx, insert).await?;
    }
    Ok(())
}

/// Inserts the compliance rows of the interval `key` (starting at `start`, Unix s) with multi-row statements of `rows_per_statement`
/// rows.
pub async fn insert_compliance(
    tx: &mut Transaction<'_, Any>,
    key: &str,
    start: i64,
    rows: &[EnvelopeCompliance],
    rows_per_statement: usize,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(rows_per_statement.max(1)) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO compliance (interval_key, interval_start, gateway, participant, excess_export, excess_import, body) ",
        );
        insert.push_values(chunk, |mut row, c| {
            row.push_bind(key.to_owned())
                .push_bind(start)
                .push_bind(c.gateway.to_string())
                .push_bind(c.participant.to_string())
                .push_bind(c.excess_export_wh.0)
                .push_bind(c.excess_import_wh.0)
                .push_bind(serde_json::to_string(c).expect("serialisable"));
        });
        super::execute_built(tx, insert).await?;
    }
    Ok(())
}

/// `text` as a `LIKE` pattern that matches only itself (with `ESCAPE '\'`): a `%`, `_` or
/// `\` in a caller's filter is a character, not a wildcard.
fn like_literal(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The stored statement bodies, filtered by participant and/or interval (its key
/// `START/MINUTES` or its RFC 3339 start; `""` = any), by interval start and participant.
pub async fn statements(
    pool: &AnyPool,
    participant: &str,
    interval: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT body FROM statements WHERE ($1 = '' OR participant = $1) AND ($2 = '' OR interval_key = $2 OR interval_key LIKE $3 ESCAPE '\\') \
         ORDER BY interval_start, participant",
    )
    .bind(participant.to_owned())
    .bind(interval.to_owned())
    .bind(format!("{}/%", like_literal(interval)))
    .fetch_all(pool)
    .await?)
}

/// The starts (Unix s) of at most `limit` intervals with compliance rows (of `participant`;
/// `""` = anyone) at or after `since`, oldest first.
pub async fn compliance_starts(
    pool: &AnyPool,
    since: i64,
    participant: &str,
    limit: i64,
) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT interval_start FROM compliance \
         WHERE interval_start >= $1 AND ($2 = '' OR participant = $2) \
         ORDER BY interval_start LIMIT $3",
    )
    .bind(since)
    .bind(participant.to_owned())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The compliance row bodies of intervals starting in `first..=last` (of `participant`;
/// `""` = anyone), by interval start and gateway.
pub async fn compliance_between(
    pool: &AnyPool,
    first: i64,
    last: i64,
    participant: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT body FROM compliance \
         WHERE interval_start >= $1 AND interval_start <= $2 AND ($3 = '' OR participant = $3) \
         ORDER BY interval_start, gateway",
    )
    .bind(first)
    .bind(last)
    .bind(participant.to_owned())
    .fetch_all(pool)
    .await?)
}

/// The bodies of every compliance row over its envelope.
pub async fn violations(pool: &AnyPool) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT body FROM compliance WHERE excess_export > 0 OR excess_import > 0",
    )
    .fetch_all(pool)
    .await?)
}

/// The bodies of compliance rows over their envelope in intervals starting in
/// `from..until` (Unix s).
pub async fn violations_between(
    tx: &mut Transaction<'_, Any>,
    from: i64,
    until: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT body FROM compliance WHERE interval_start >= $1 AND interval_start < $2 \
         AND (excess_export > 0 OR excess_import > 0)",
    )
    .bind(from)
    .bind(until)
    .fetch_all(&mut **tx)
    .await?)
}

/// Stores the mints withheld while a reading behind them is flagged.
pub async fn insert_withheld(
    tx: &mut Transaction<'_, Any>,
    key: &str,
    plans: &[MintPlan],
) -> Result<(), StoreError> {
    for plan in plans {
        sqlx::query("INSERT INTO withheld_mints (interval_key, body, released) VALUES ($1, $2, 0)")
            .bind(key.to_owned())
            .bind(serde_json::to_string(plan).expect("serialisable"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Every withheld mint not released yet: id, interval key and plan (JSON), oldest first.
pub async fn open_withheld(
    tx: &mut Transaction<'_, Any>,
) -> Result<Vec<(i64, String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, interval_key, body FROM withheld_mints WHERE released = 0 ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Marks a withheld mint released.
pub async fn release_withheld(tx: &mut Transaction<'_, Any>, id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE withheld_mints SET released = 1 WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The key of the settled interval the reading `reading_key` belongs to, if it is settled.
pub async fn settled_interval_of_reading(
    tx: &mut Transaction<'_, Any>,
    reading_key: &str,
) -> Result<Option<String>, StoreError> {
    let key = sqlx::query_scalar(
        "SELECT r.interval_key FROM results r JOIN readings d \
         ON d.interval_start = r.interval_start AND d.minutes = r.minutes \
         WHERE d.reading_key = $1 AND r.settled = 1",
    )
    .bind(reading_key.to_owned())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(key)
}

/// Deletes the statements and compliance rows of the interval `key` (before writing the
/// corrected ones when a flagged reading is accepted).
pub async fn delete_statements_and_compliance(
    tx: &mut Transaction<'_, Any>,
    key: &str,
) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM statements WHERE interval_key = $1",
        "DELETE FROM compliance WHERE interval_key = $1",
    ] {
        sqlx::query(sql)
            .bind(key.to_owned())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Why each reading of `interval` that settlement meters was flagged at ingest (digest → the
/// code of its operator-acceptable quarantine item, the first by id), also once an operator
/// accepted it: what [`crate::rules::Sites::reasons`] needs.
pub async fn flag_reasons<'e, E>(
    executor: E,
    interval: &Interval,
) -> Result<std::collections::BTreeMap<String, ReasonCode>, StoreError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let codes: Vec<String> = ReasonCode::ALL
        .into_iter()
        .filter(|c| c.operator_acceptable())
        .map(|c| format!("'{}'", c.as_str()))
        .collect();
    let sql = format!(
        "SELECT r.digest, q.code FROM quarantine q JOIN readings r ON r.reading_key = q.reading_key \
         WHERE r.interval_start = $1 AND r.minutes = $2 AND r.status IN ('accepted', 'flagged') \
         AND q.code IN ({}) ORDER BY q.id",
        codes.join(", ")
    );
    let rows = sqlx::query(&sql)
        .bind(interval.start_unix())
        .bind(i64::from(interval.length().minutes()))
        .fetch_all(executor)
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for r in rows {
        let code: String = r.try_get(1)?;
        if let Some(code) = ReasonCode::parse(&code) {
            out.entry(r.try_get(0)?).or_insert(code);
        }
    }
    Ok(out)
}
