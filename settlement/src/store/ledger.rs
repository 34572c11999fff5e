//! The ledger's tables: entries, lots (token holdings) and sealed blocks.

use super::StoreError;
use crate::ledger::{BlockHeader, EntryBody, entry_hash, merkle_root};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::{Interval, Wh};
use sha2::{Digest, Sha256};
use sqlx::{Any, AnyPool, QueryBuilder, Row, Transaction};

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
    let bytes = header
        .to_bytes()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let hash = hex::encode(Sha256::digest(&bytes));
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

/// A minted entry and the lot it creates, ready to insert in a batch.
#[derive(Debug, Clone)]
pub struct MintRow {
    /// The entry hash (also the lot id and the lot's origin mint).
    pub hash: String,
    /// The entry body bytes, as hashed.
    pub body: Vec<u8>,
    /// The buyer, who holds the lot.
    pub holder: String,
    /// Tokens minted.
    pub amount: i64,
}

/// Appends mint entries (not yet in a block) and their lots, with multi-row statements of
/// `rows_per_statement` rows.
pub async fn insert_mints(
    tx: &mut Transaction<'_, Any>,
    mints: &[MintRow],
    now_ms: i64,
    rows_per_statement: usize,
) -> Result<(), StoreError> {
    for chunk in mints.chunks(rows_per_statement.max(1)) {
        let mut entries =
            QueryBuilder::new("INSERT INTO entries (hash, kind, body, op_digest, created_at) ");
        entries.push_values(chunk, |mut row, m| {
            row.push_bind(m.hash.clone())
                .push_bind("mint")
                .push_bind(m.body.clone())
                .push_bind(Option::<String>::None)
                .push_bind(now_ms);
        });
        super::execute_built(tx, entries).await?;
    }
    for chunk in mints.chunks(rows_per_statement.max(1)) {
        let mut lots = QueryBuilder::new(
            "INSERT INTO lots (lot, holder, origin_mint, parent_lot, initial, remaining, retired) ",
        );
        lots.push_values(chunk, |mut row, m| {
            row.push_bind(m.hash.clone())
                .push_bind(m.holder.clone())
                .push_bind(m.hash.clone())
                .push_bind(Option::<String>::None)
                .push_bind(m.amount)
                .push_bind(m.amount)
                .push_bind(0i64);
        });
        super::execute_built(tx, lots).await?;
    }
    Ok(())
}

/// The entry recording the token operation with this digest, if it was applied before.
pub async fn entry_for_op(
    tx: &mut Transaction<'_, Any>,
    op_digest: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT hash FROM entries WHERE op_digest = $1")
            .bind(op_digest.to_owned())
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// A lot's holder, remaining tokens and origin mint.
pub async fn lot(
    tx: &mut Transaction<'_, Any>,
    lot: &str,
) -> Result<Option<(String, i64, String)>, StoreError> {
    let row = sqlx::query("SELECT holder, remaining, origin_mint FROM lots WHERE lot = $1")
        .bind(lot.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Takes `amount` tokens out of a lot; `retired` of them count as retired.
pub async fn spend_lot(
    tx: &mut Transaction<'_, Any>,
    lot: &str,
    amount: i64,
    retired: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE lots SET remaining = remaining - $1, retired = retired + $2 WHERE lot = $3",
    )
    .bind(amount)
    .bind(retired)
    .bind(lot.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One lot a participant holds, with the body of its origin mint.
#[derive(Debug, Clone)]
pub struct HoldingRow {
    /// Lot id.
    pub lot: String,
    /// Tokens remaining.
    pub remaining: i64,
    /// Tokens retired.
    pub retired: i64,
    /// Tokens the lot was created with.
    pub initial: i64,
    /// The lot it was split from.
    pub parent_lot: Option<String>,
    /// Hash of its origin mint.
    pub origin_mint: String,
    /// The origin mint's body bytes.
    pub origin_body: Vec<u8>,
}

/// The lots `holder` holds, by lot id.
pub async fn holdings(pool: &AnyPool, holder: &str) -> Result<Vec<HoldingRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT l.lot, l.remaining, l.retired, l.initial, l.parent_lot, l.origin_mint, e.body \
         FROM lots l JOIN entries e ON e.hash = l.origin_mint WHERE l.holder = $1 ORDER BY l.lot",
    )
    .bind(holder.to_owned())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| HoldingRow {
            lot: r.get(0),
            remaining: r.get(1),
            retired: r.get(2),
            initial: r.get(3),
            parent_lot: r.get(4),
            origin_mint: r.get(5),
            origin_body: r.get(6),
        })
        .collect())
}

/// The heights of the newest `limit` blocks, newest first.
pub async fn block_heights(pool: &AnyPool, limit: i64) -> Result<Vec<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT height FROM blocks ORDER BY height DESC LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?,
    )
}

/// A stored block: header bytes, hash, signature and signer.
#[derive(Debug, Clone)]
pub struct BlockRow {
    /// The canonical header bytes.
    pub header: Vec<u8>,
    /// Hash (hex).
    pub hash: String,
    /// The authority's signature.
    pub signature: Vec<u8>,
    /// The authority's key.
    pub public_key: String,
}

/// The block at `height`.
pub async fn block(pool: &AnyPool, height: i64) -> Result<Option<BlockRow>, StoreError> {
    let row =
        sqlx::query("SELECT header, hash, signature, public_key FROM blocks WHERE height = $1")
            .bind(height)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| BlockRow {
        header: r.get(0),
        hash: r.get(1),
        signature: r.get(2),
        public_key: r.get(3),
    }))
}

/// The entry hashes of the block at `height`, in ledger order.
pub async fn block_entries(pool: &AnyPool, height: i64) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT hash FROM entries WHERE block_height = $1 ORDER BY seq")
            .bind(height)
            .fetch_all(pool)
            .await?,
    )
}

/// A stored entry: position, kind, body bytes and block.
#[derive(Debug, Clone)]
pub struct EntryRow {
    /// Position in the ledger.
    pub seq: i64,
    /// `mint`, `transfer` or `retire`.
    pub kind: String,
    /// The body bytes, as hashed.
    pub body: Vec<u8>,
    /// The block it is sealed in.
    pub block_height: Option<i64>,
}

/// The entry with this hash.
pub async fn entry(pool: &AnyPool, hash: &str) -> Result<Option<EntryRow>, StoreError> {
    let row = sqlx::query("SELECT seq, kind, body, block_height FROM entries WHERE hash = $1")
        .bind(hash.to_owned())
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| EntryRow {
        seq: r.get(0),
        kind: r.get(1),
        body: r.get(2),
        block_height: r.get(3),
    }))
}
