//! Readings and quarantine: batched inserts (multi-row `INSERT` or PostgreSQL `COPY`), the
//! state ingest rebuilds from, the readings an interval settles with, look-ups by digest and
//! the operator's acceptance of flagged readings.

use super::StoreError;
use crate::rules::MeterRow;
use gridmesh_protocol::{GatewayId, Interval, ParticipantId, Wh};
use gridmesh_runtime::db::Backend;
use sqlx::{Any, AnyPool, QueryBuilder, Row, Transaction};

/// A reading row ready to insert.
#[derive(Debug, Clone)]
pub struct ReadingRow {
    /// Idempotency key.
    pub key: String,
    /// Gateway id.
    pub gateway: String,
    /// Device id.
    pub device: String,
    /// Participant id.
    pub participant: String,
    /// Interval start, Unix s.
    pub interval_start: i64,
    /// Interval minutes.
    pub minutes: i64,
    /// Sequence (as i64; larger sequences are refused as malformed).
    pub sequence: i64,
    /// Signed payload.
    pub payload: Vec<u8>,
    /// Signature.
    pub signature: Vec<u8>,
    /// Signer's key (base64).
    pub public_key: String,
    /// SHA-256 of the payload (hex).
    pub digest: String,
    /// Grid import delta.
    pub grid_import: i64,
    /// Grid export delta.
    pub grid_export: i64,
    /// PV delta.
    pub pv: i64,
    /// Battery discharge delta.
    pub battery_discharge: i64,
    /// `accepted`, `flagged` or `late`.
    pub status: &'static str,
    /// Receipt time, Unix ms.
    pub received_at: i64,
}

/// Rows per multi-row INSERT that measured fastest per back end: sqlx's SQLite driver slows
/// down sharply with many parameters per statement (2 000 rows: 20 per statement ≈ 50 ms,
/// 400 ≈ 500 ms, 1 000 ≈ 2.6 s), PostgreSQL is flat between 100 and 400.
pub fn rows_per_statement(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 20,
        Backend::Postgres => 200,
    }
}

/// Inserts readings with multi-row statements of `rows_per_statement` rows (an existing key is
/// left untouched).
pub async fn insert_readings(
    tx: &mut Transaction<'_, Any>,
    rows: &[ReadingRow],
    rows_per_statement: usize,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(rows_per_statement.max(1)) {
        let mut insert =
            QueryBuilder::new(format!("INSERT INTO readings ({READING_COLUMN_LIST}) "));
        insert.push_values(chunk, |mut row, r| {
            row.push_bind(r.key.clone())
                .push_bind(r.gateway.clone())
                .push_bind(r.device.clone())
                .push_bind(r.participant.clone())
                .push_bind(r.interval_start)
                .push_bind(r.minutes)
                .push_bind(r.sequence)
                .push_bind(r.payload.clone())
                .push_bind(r.signature.clone())
                .push_bind(r.public_key.clone())
                .push_bind(r.digest.clone())
                .push_bind(r.grid_import)
                .push_bind(r.grid_export)
                .push_bind(r.pv)
                .push_bind(r.battery_discharge)
                .push_bind(r.status)
                .push_bind(r.received_at);
        });
        insert.push(" ON CONFLICT (reading_key) DO NOTHING");
        super::execute_built(tx, insert).await?;
    }
    Ok(())
}

/// A quarantine row ready to insert.
#[derive(Debug, Clone)]
pub struct QuarantineRow {
    /// Where it came from (`rest`, `mqtt:<topic>`).
    pub source: String,
    /// Idempotency key, if the payload decoded.
    pub reading_key: Option<String>,
    /// Gateway, if known.
    pub gateway: Option<String>,
    /// The raw submission, verbatim.
    pub raw: Vec<u8>,
    /// Reason code.
    pub code: &'static str,
    /// Reason sentence.
    pub reason: String,
    /// `open` (awaiting an operator, or refused for good) or `held` (gateway not enrolled yet).
    pub status: &'static str,
    /// Receipt time, Unix ms.
    pub received_at: i64,
}

const INSERT_QUARANTINE: &str = "INSERT INTO quarantine (received_at, source, reading_key, gateway, raw, code, reason, status) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";

/// Inserts a quarantine row and returns its id.
pub async fn insert_quarantine(
    tx: &mut Transaction<'_, Any>,
    row: &QuarantineRow,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(INSERT_QUARANTINE)
        .bind(row.received_at)
        .bind(row.source.clone())
        .bind(row.reading_key.clone())
        .bind(row.gateway.clone())
        .bind(row.raw.clone())
        .bind(row.code)
        .bind(row.reason.clone())
        .bind(row.status)
        .fetch_one(&mut **tx)
        .await?;
    Ok(id)
}

/// [`insert_quarantine`] on the native PostgreSQL pool (the `COPY` path).
pub async fn insert_quarantine_pg(
    tx: &mut Transaction<'_, sqlx::Postgres>,
    row: &QuarantineRow,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(INSERT_QUARANTINE)
        .bind(row.received_at)
        .bind(&row.source)
        .bind(&row.reading_key)
        .bind(&row.gateway)
        .bind(&row.raw)
        .bind(row.code)
        .bind(&row.reason)
        .bind(row.status)
        .fetch_one(&mut **tx)
        .await?;
    Ok(id)
}

/// The reading columns in insert order (shared by INSERT and PostgreSQL COPY).
pub const READING_COLUMN_LIST: &str = "reading_key, gateway, device, participant, interval_start, \
    minutes, sequence, payload, signature, public_key, digest, grid_import, grid_export, pv, \
    battery_discharge, status, received_at";

/// PostgreSQL's binary `COPY` signature, flags (none) and header extension length (0).
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Fields of a reading row (the columns of [`READING_COLUMN_LIST`]).
const READING_FIELDS: i16 = 17;

fn copy_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = i32::try_from(bytes.len()).expect("a field is far below 2 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn copy_bigint(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
}

/// Readings in PostgreSQL's binary `COPY` format: integers as 8 big-endian bytes, text as its
/// UTF-8 bytes, `bytea` verbatim. PostgreSQL parses it with far less work than CSV (no
/// quoting, no hex, no number parsing), and the payload is sent once instead of as hex.
pub fn readings_copy_binary(rows: &[ReadingRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(COPY_BINARY_HEADER.len() + rows.len() * 600 + 2);
    out.extend_from_slice(COPY_BINARY_HEADER);
    for r in rows {
        out.extend_from_slice(&READING_FIELDS.to_be_bytes());
        for text in [&r.key, &r.gateway, &r.device, &r.participant] {
            copy_bytes(&mut out, text.as_bytes());
        }
        copy_bigint(&mut out, r.interval_start);
        copy_bigint(&mut out, r.minutes);
        copy_bigint(&mut out, r.sequence);
        copy_bytes(&mut out, &r.payload);
        copy_bytes(&mut out, &r.signature);
        copy_bytes(&mut out, r.public_key.as_bytes());
        copy_bytes(&mut out, r.digest.as_bytes());
        for value in [r.grid_import, r.grid_export, r.pv, r.battery_discharge] {
            copy_bigint(&mut out, value);
        }
        copy_bytes(&mut out, r.status.as_bytes());
        copy_bigint(&mut out, r.received_at);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Inserts readings into PostgreSQL with `COPY … FROM STDIN (FORMAT binary)` (several times
/// faster than multi-row INSERTs). Keys must be new: a conflict fails the transaction.
pub async fn copy_readings(
    tx: &mut Transaction<'_, sqlx::Postgres>,
    rows: &[ReadingRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let statement =
        format!("COPY readings ({READING_COLUMN_LIST}) FROM STDIN WITH (FORMAT binary)");
    let mut copy = tx.copy_in_raw(&statement).await?;
    if let Err(e) = copy.send(readings_copy_binary(rows)).await {
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

/// The signed payload of every stored reading (ingest rebuilds its replay state from them).
pub async fn all_payloads(pool: &AnyPool) -> Result<Vec<Vec<u8>>, StoreError> {
    Ok(sqlx::query_scalar("SELECT payload FROM readings")
        .fetch_all(pool)
        .await?)
}

/// What the verification state needs at start-up (issue 16): the payloads of the readings
/// whose interval starts at or after `since` (Unix seconds), and for each gateway and device
/// the latest one before it (sequence and register checks at the boundary). Older readings
/// are refused as too old anyway; a resubmitted one is found by [`digests_of`].
pub async fn payloads_since(pool: &AnyPool, since: i64) -> Result<Vec<Vec<u8>>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT payload FROM readings WHERE interval_start >= $1 \
         UNION ALL \
         SELECT r.payload FROM readings r \
         JOIN (SELECT gateway, device, MAX(interval_start) AS latest FROM readings \
               WHERE interval_start < $1 GROUP BY gateway, device) b \
         ON r.gateway = b.gateway AND r.device = b.device AND r.interval_start = b.latest",
    )
    .bind(since)
    .fetch_all(pool)
    .await?)
}

/// The stored payload digests (hex) of those of `keys` that are stored, by idempotency key.
pub async fn digests_of(
    pool: &AnyPool,
    keys: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT reading_key, digest FROM readings WHERE reading_key IN ({})",
            placeholders.join(",")
        );
        let mut query = sqlx::query(&sql);
        for key in chunk {
            query = query.bind(key.clone());
        }
        for row in query.fetch_all(pool).await? {
            out.push((row.try_get(0)?, row.try_get(1)?));
        }
    }
    Ok(out)
}

/// The readings of one interval that settlement meters (`accepted`, and `flagged` ones for the
/// withheld mints only: see [`crate::rules`]), ordered by reading key.
pub async fn metered_for<'e, E>(
    executor: E,
    interval: &Interval,
) -> Result<Vec<MeterRow>, StoreError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let rows = sqlx::query(
        "SELECT participant, digest, status, grid_import, grid_export, pv, battery_discharge, gateway \
         FROM readings WHERE interval_start = $1 AND minutes = $2 AND status IN ('accepted', 'flagged') \
         ORDER BY reading_key",
    )
    .bind(interval.start_unix())
    .bind(i64::from(interval.length().minutes()))
    .fetch_all(executor)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let corrupt = |e: gridmesh_protocol::ids::IdError| StoreError::Corrupt(e.to_string());
        out.push(MeterRow {
            participant: ParticipantId::new(r.get::<String, _>(0)).map_err(corrupt)?,
            gateway: GatewayId::new(r.get::<String, _>(7)).map_err(corrupt)?,
            digest: r.get(1),
            flagged: r.get::<String, _>(2) == "flagged",
            imported: Wh(r.get(3)),
            exported: Wh(r.get(4)),
            pv: Wh(r.get(5)),
            battery_discharge: Wh(r.get(6)),
        });
    }
    Ok(out)
}

/// A stored reading as `GET /readings/{digest}` shows it.
#[derive(Debug, Clone)]
pub struct StoredReadingRow {
    /// Idempotency key.
    pub key: String,
    /// Participant id.
    pub participant: String,
    /// Signed payload.
    pub payload: Vec<u8>,
    /// Signature.
    pub signature: Vec<u8>,
    /// Signer's key.
    pub public_key: String,
    /// `accepted`, `flagged` or `late`.
    pub status: String,
}

/// The stored reading whose signed payload has SHA-256 `digest` (hex).
pub async fn by_digest(
    pool: &AnyPool,
    digest: &str,
) -> Result<Option<StoredReadingRow>, StoreError> {
    let row = sqlx::query(
        "SELECT reading_key, participant, payload, signature, public_key, status \
         FROM readings WHERE digest = $1",
    )
    .bind(digest.to_owned())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| StoredReadingRow {
        key: r.get(0),
        participant: r.get(1),
        payload: r.get(2),
        signature: r.get(3),
        public_key: r.get(4),
        status: r.get(5),
    }))
}

/// A quarantine row as listed.
#[derive(Debug, Clone)]
pub struct QuarantineListRow {
    /// Id.
    pub id: i64,
    /// Receipt time, Unix ms.
    pub received_at: i64,
    /// Where it came from.
    pub source: String,
    /// Idempotency key, if the payload decoded.
    pub key: Option<String>,
    /// Gateway, if known.
    pub gateway: Option<String>,
    /// The raw submission, verbatim.
    pub raw: Vec<u8>,
    /// Reason code.
    pub code: String,
    /// Reason sentence.
    pub reason: String,
    /// `open` or `accepted`.
    pub status: String,
}

/// Which quarantine rows to list: every filter is optional; `gateways` (a participant's own)
/// restricts to those gateways (an empty list matches nothing).
#[derive(Debug, Clone, Default)]
pub struct QuarantineFilter {
    /// Only this gateway.
    pub gateway: Option<String>,
    /// Only these gateways (a household's own), when set.
    pub gateways: Option<Vec<String>>,
    /// Only this reason code.
    pub code: Option<&'static str>,
    /// Only this status.
    pub status: Option<&'static str>,
    /// Only ids below this one.
    pub before: Option<i64>,
}

/// The newest `limit` quarantine rows, newest first.
pub async fn quarantine_page(
    pool: &AnyPool,
    limit: i64,
) -> Result<Vec<QuarantineListRow>, StoreError> {
    quarantine_filtered(pool, &QuarantineFilter::default(), limit).await
}

/// The newest `limit` quarantine rows that pass `filter`, newest first (keyset paging by id).
pub async fn quarantine_filtered(
    pool: &AnyPool,
    filter: &QuarantineFilter,
    limit: i64,
) -> Result<Vec<QuarantineListRow>, StoreError> {
    if filter.gateways.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let mut sql = String::from(
        "SELECT id, received_at, source, reading_key, gateway, raw, code, reason, status \
         FROM quarantine WHERE 1 = 1",
    );
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if filter.gateway.is_some() {
        sql.push_str(&format!(" AND gateway = {}", next()));
    }
    if let Some(list) = &filter.gateways {
        let marks: Vec<String> = list.iter().map(|_| next()).collect();
        sql.push_str(&format!(" AND gateway IN ({})", marks.join(", ")));
    }
    if filter.code.is_some() {
        sql.push_str(&format!(" AND code = {}", next()));
    }
    if filter.status.is_some() {
        sql.push_str(&format!(" AND status = {}", next()));
    }
    if filter.before.is_some() {
        sql.push_str(&format!(" AND id < {}", next()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", next()));
    let mut query = sqlx::query(&sql);
    if let Some(g) = &filter.gateway {
        query = query.bind(g.clone());
    }
    for g in filter.gateways.iter().flatten() {
        query = query.bind(g.clone());
    }
    if let Some(c) = filter.code {
        query = query.bind(c);
    }
    if let Some(s) = filter.status {
        query = query.bind(s);
    }
    if let Some(b) = filter.before {
        query = query.bind(b);
    }
    let rows = query.bind(limit).fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(|r| QuarantineListRow {
            id: r.get(0),
            received_at: r.get(1),
            source: r.get(2),
            key: r.get(3),
            gateway: r.get(4),
            raw: r.get(5),
            code: r.get(6),
            reason: r.get(7),
            status: r.get(8),
        })
        .collect())
}

/// How many readings are held per gateway (status `held`).
pub async fn held_counts(pool: &AnyPool) -> Result<Vec<(String, u32)>, StoreError> {
    let rows = sqlx::query(
        "SELECT gateway, COUNT(*) FROM quarantine WHERE status = 'held' AND gateway IS NOT NULL \
         GROUP BY gateway",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let n: i64 = r.get(1);
            (r.get(0), u32::try_from(n).unwrap_or(u32::MAX))
        })
        .collect())
}

/// A held reading, to re-admit.
#[derive(Debug, Clone)]
pub struct HeldRow {
    /// Quarantine id.
    pub id: i64,
    /// Where it came from.
    pub source: String,
    /// The envelope JSON.
    pub raw: Vec<u8>,
}

/// The oldest `limit` held readings of `gateway`, oldest first.
pub async fn held_of(
    pool: &AnyPool,
    gateway: &str,
    limit: i64,
) -> Result<Vec<HeldRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, source, raw FROM quarantine WHERE status = 'held' AND gateway = $1 \
         ORDER BY id LIMIT $2",
    )
    .bind(gateway.to_owned())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| HeldRow {
            id: r.get(0),
            source: r.get(1),
            raw: r.get(2),
        })
        .collect())
}

/// Marks held readings re-admitted at `now_ms`.
pub async fn mark_readmitted(
    tx: &mut Transaction<'_, Any>,
    ids: &[i64],
    now_ms: i64,
) -> Result<(), StoreError> {
    for id in ids {
        sqlx::query(
            "UPDATE quarantine SET status = 'readmitted', resolved_at = $1 WHERE id = $2 AND status = 'held'",
        )
        .bind(now_ms)
        .bind(*id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Where one quarantine item stands: its code, status and reading key.
pub async fn quarantine_state(
    tx: &mut Transaction<'_, Any>,
    id: i64,
) -> Result<Option<(String, String, Option<String>)>, StoreError> {
    let row = sqlx::query("SELECT code, status, reading_key FROM quarantine WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Marks a quarantine item accepted at `now_ms`, and its flagged reading (by key) accepted.
pub async fn accept_quarantined(
    tx: &mut Transaction<'_, Any>,
    id: i64,
    reading_key: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE quarantine SET status = 'accepted', resolved_at = $1 WHERE id = $2")
        .bind(now_ms)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE readings SET status = 'accepted' WHERE reading_key = $1 AND status = 'flagged'",
    )
    .bind(reading_key.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether the reading with this digest is still flagged.
pub async fn is_flagged(tx: &mut Transaction<'_, Any>, digest: &str) -> Result<bool, StoreError> {
    let flagged: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM readings WHERE digest = $1 AND status = 'flagged'",
    )
    .bind(digest.to_owned())
    .fetch_one(&mut **tx)
    .await?;
    Ok(flagged != 0)
}
