//! Storage through sqlx's Any driver on SQLite or PostgreSQL: migrations, batched reading
//! inserts, ledger writes and block sealing. Callers group writes into one transaction per
//! unit of work (a batch of readings, one interval, one token operation), so a crash leaves
//! nothing half-written.

use crate::ledger::{BlockHeader, EntryBody, entry_hash, merkle_root};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::{Interval, Wh};
use gridmesh_runtime::db::{Backend, Database, DbError};
use sqlx::migrate::Migrator;
use sqlx::{Any, Row, Transaction};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating failed.
    #[error(transparent)]
    Open(#[from] DbError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// Stored data does not parse.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Opens the database and runs the migrations of its back end.
pub async fn open(url: &str) -> Result<Database, StoreError> {
    let db = Database::connect(url).await?;
    db.migrate(&SQLITE, &POSTGRES).await?;
    Ok(db)
}

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

const READING_COLUMNS: usize = 17;

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
        let mut sql = String::from(
            "INSERT INTO readings (reading_key, gateway, device, participant, interval_start, minutes, \
             sequence, payload, signature, public_key, digest, grid_import, grid_export, pv, \
             battery_discharge, status, received_at) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..READING_COLUMNS {
                if c > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", i * READING_COLUMNS + c + 1));
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (reading_key) DO NOTHING");
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.key.clone())
                .bind(r.gateway.clone())
                .bind(r.device.clone())
                .bind(r.participant.clone())
                .bind(r.interval_start)
                .bind(r.minutes)
                .bind(r.sequence)
                .bind(r.payload.clone())
                .bind(r.signature.clone())
                .bind(r.public_key.clone())
                .bind(r.digest.clone())
                .bind(r.grid_import)
                .bind(r.grid_export)
                .bind(r.pv)
                .bind(r.battery_discharge)
                .bind(r.status)
                .bind(r.received_at);
        }
        q.execute(&mut **tx).await?;
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
    /// Receipt time, Unix ms.
    pub received_at: i64,
}

/// Inserts a quarantine row and returns its id.
pub async fn insert_quarantine(
    tx: &mut Transaction<'_, Any>,
    row: &QuarantineRow,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO quarantine (received_at, source, reading_key, gateway, raw, code, reason, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'open') RETURNING id",
    )
    .bind(row.received_at)
    .bind(row.source.clone())
    .bind(row.reading_key.clone())
    .bind(row.gateway.clone())
    .bind(row.raw.clone())
    .bind(row.code)
    .bind(row.reason.clone())
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// Appends a ledger entry (not yet in a block) and returns its hash.
pub async fn insert_entry(
    tx: &mut Transaction<'_, Any>,
    body: &EntryBody,
    op_digest: Option<String>,
    now_ms: i64,
) -> Result<String, StoreError> {
    let bytes = body.to_bytes();
    let hash = hex::encode(entry_hash(&bytes));
    sqlx::query(
        "INSERT INTO entries (hash, kind, body, op_digest, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash.clone())
    .bind(body.kind())
    .bind(bytes)
    .bind(op_digest)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(hash)
}

/// Creates a lot.
pub async fn insert_lot(
    tx: &mut Transaction<'_, Any>,
    lot: &str,
    holder: &str,
    origin_mint: &str,
    parent: Option<&str>,
    amount: Wh,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO lots (lot, holder, origin_mint, parent_lot, initial, remaining, retired) \
         VALUES ($1, $2, $3, $4, $5, $5, 0)",
    )
    .bind(lot.to_owned())
    .bind(holder.to_owned())
    .bind(origin_mint.to_owned())
    .bind(parent.map(str::to_owned))
    .bind(amount.0)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A sealed block as stored.
#[derive(Debug, Clone)]
pub struct SealedBlock {
    /// The header.
    pub header: BlockHeader,
    /// Its hash (hex).
    pub hash: String,
}

/// Seals every entry not yet in a block into a new block for `interval`, signed by
/// `authority`.
pub async fn seal_block(
    tx: &mut Transaction<'_, Any>,
    interval: Interval,
    authority: &SigningKeyPair,
    sealed_at: chrono::DateTime<chrono::Utc>,
) -> Result<SealedBlock, StoreError> {
    let prev = sqlx::query("SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (height, prev_hash) = match prev {
        Some(row) => (row.get::<i64, _>(0) as u64 + 1, row.get::<String, _>(1)),
        None => (0, hex::encode([0u8; 32])),
    };
    let rows = sqlx::query("SELECT hash FROM entries WHERE block_height IS NULL ORDER BY seq")
        .fetch_all(&mut **tx)
        .await?;
    let mut leaves = Vec::with_capacity(rows.len());
    for row in &rows {
        let h: String = row.get(0);
        leaves.push(
            crate::ledger::parse_hex32(&h)
                .ok_or_else(|| StoreError::Corrupt(format!("entry hash {h} is not hex")))?,
        );
    }
    let header = BlockHeader {
        height,
        interval,
        prev_hash,
        merkle_root: hex::encode(merkle_root(&leaves)),
        entry_count: leaves.len() as u64,
        sealed_at: chrono::DateTime::from_timestamp_millis(sealed_at.timestamp_millis())
            .unwrap_or(sealed_at),
    };
    let bytes = header.to_bytes();
    let hash = hex::encode(header.hash());
    let signature = authority.sign_raw(&bytes);
    sqlx::query(
        "INSERT INTO blocks (height, interval_key, header, hash, signature, public_key) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(height as i64)
    .bind(interval.key())
    .bind(bytes)
    .bind(hash.clone())
    .bind(signature.to_vec())
    .bind(authority.public_key().to_string())
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE entries SET block_height = $1 WHERE block_height IS NULL")
        .bind(height as i64)
        .execute(&mut **tx)
        .await?;
    Ok(SealedBlock { header, hash })
}

/// The reading columns in insert order (shared by INSERT and PostgreSQL COPY).
pub const READING_COLUMN_LIST: &str = "reading_key, gateway, device, participant, interval_start, \
    minutes, sequence, payload, signature, public_key, digest, grid_import, grid_export, pv, \
    battery_discharge, status, received_at";

fn csv_text(out: &mut String, s: &str) {
    out.push('"');
    out.push_str(&s.replace('"', "\"\""));
    out.push('"');
}

/// Readings as PostgreSQL COPY CSV (bytea in `\\x` hex form).
pub fn readings_csv(rows: &[ReadingRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows.len() * 900);
    for r in rows {
        for (i, text) in [&r.key, &r.gateway, &r.device, &r.participant]
            .iter()
            .enumerate()
        {
            if i > 0 {
                out.push(',');
            }
            csv_text(&mut out, text);
        }
        let _ = write!(
            out,
            ",{},{},{},\\x{},\\x{},",
            r.interval_start,
            r.minutes,
            r.sequence,
            hex::encode(&r.payload),
            hex::encode(&r.signature)
        );
        csv_text(&mut out, &r.public_key);
        out.push(',');
        csv_text(&mut out, &r.digest);
        let _ = write!(
            out,
            ",{},{},{},{},",
            r.grid_import, r.grid_export, r.pv, r.battery_discharge
        );
        csv_text(&mut out, r.status);
        let _ = writeln!(out, ",{}", r.received_at);
    }
    out
}

/// Inserts readings into PostgreSQL with `COPY … FROM STDIN (FORMAT csv)` (several times
/// faster than multi-row INSERTs). Keys must be new: a conflict fails the transaction.
pub async fn copy_readings(
    tx: &mut Transaction<'_, sqlx::Postgres>,
    rows: &[ReadingRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let statement = format!("COPY readings ({READING_COLUMN_LIST}) FROM STDIN WITH (FORMAT csv)");
    let mut copy = tx.copy_in_raw(&statement).await?;
    if let Err(e) = copy.send(readings_csv(rows).into_bytes()).await {
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

/// A value for [`insert_many`].
#[derive(Debug, Clone)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// Text NULL.
    Null,
}

/// Inserts rows of equal width with multi-row statements of `rows_per_statement` rows.
pub async fn insert_many(
    tx: &mut Transaction<'_, Any>,
    table: &str,
    columns: &str,
    rows: &[Vec<Value>],
    rows_per_statement: usize,
) -> Result<(), StoreError> {
    let Some(width) = rows.first().map(Vec::len) else {
        return Ok(());
    };
    for chunk in rows.chunks(rows_per_statement.max(1)) {
        let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
        for i in 0..chunk.len() {
            sql.push_str(if i > 0 { ",(" } else { "(" });
            for c in 0..width {
                if c > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${}", i * width + c + 1));
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    Value::Int(i) => q.bind(*i),
                    Value::Text(t) => q.bind(t.clone()),
                    Value::Bytes(b) => q.bind(b.clone()),
                    Value::Null => q.bind(Option::<String>::None),
                };
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}
