//! The ledger's tables: entries, lots (token holdings) and sealed blocks.

use super::StoreError;
use crate::ledger::{
    BlockHeader, CommittedReading, Decision, EntryBody, IntervalState, StateCommitment, entry_hash,
    merkle_root,
};
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
    let state = state_commitment(tx, &interval, height).await?;
    let header = BlockHeader {
        height,
        interval,
        prev_hash,
        merkle_root: hex::encode(merkle_root(&leaves)),
        entry_count: leaves.len() as u64,
        sealed_at: chrono::DateTime::from_timestamp_millis(sealed_at.timestamp_millis())
            .unwrap_or(sealed_at),
        state: Some(state),
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

/// The state commitment of the block at `height` sealing `interval` (its statements,
/// compliance rows and withheld mints already written in `tx`): see
/// [`crate::ledger::StateCommitment`].
async fn state_commitment(
    tx: &mut Transaction<'_, Any>,
    interval: &Interval,
    height: u64,
) -> Result<StateCommitment, StoreError> {
    let key = interval.key();
    let corrupt = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("{what} of {key} does not parse: {e}"))
    };
    let result_body: String =
        sqlx::query_scalar("SELECT body FROM results WHERE interval_key = $1")
            .bind(key.clone())
            .fetch_one(&mut **tx)
            .await?;
    let readings: Vec<CommittedReading> = sqlx::query(
        "SELECT reading_key, digest, status FROM readings \
         WHERE interval_start = $1 AND minutes = $2 AND status IN ('accepted', 'flagged')",
    )
    .bind(interval.start_unix())
    .bind(i64::from(interval.length().minutes()))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| CommittedReading {
        key: r.get(0),
        digest: r.get(1),
        status: r.get(2),
    })
    .collect();
    let mut statements = Vec::new();
    for body in bodies(
        tx,
        "SELECT body FROM statements WHERE interval_key = $1",
        &key,
    )
    .await?
    {
        statements.push(serde_json::from_str(&body).map_err(|e| corrupt("a statement", e))?);
    }
    let mut compliance = Vec::new();
    for body in bodies(
        tx,
        "SELECT body FROM compliance WHERE interval_key = $1",
        &key,
    )
    .await?
    {
        compliance.push(serde_json::from_str(&body).map_err(|e| corrupt("a compliance row", e))?);
    }
    let mut withheld = Vec::new();
    let sql = "SELECT body FROM withheld_mints WHERE interval_key = $1 ORDER BY id";
    for body in bodies(tx, sql, &key).await? {
        withheld.push(serde_json::from_str(&body).map_err(|e| corrupt("a withheld mint", e))?);
    }
    let decisions = new_decisions(tx, height).await?;
    Ok(StateCommitment::compute(
        IntervalState {
            result_body: result_body.as_bytes(),
            readings: &readings,
            statements: &statements,
            compliance: &compliance,
            withheld: &withheld,
        },
        &decisions,
    ))
}

async fn bodies(
    tx: &mut Transaction<'_, Any>,
    sql: &str,
    key: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(sql)
        .bind(key.to_owned())
        .fetch_all(&mut **tx)
        .await?)
}

/// The operator decisions no earlier block lists: those resolved at or after the previous
/// block's seal time, less those listed by the blocks sealed at that same millisecond.
async fn new_decisions(
    tx: &mut Transaction<'_, Any>,
    height: u64,
) -> Result<Vec<Decision>, StoreError> {
    let mut since = i64::MIN;
    let mut listed = std::collections::HashSet::new();
    let mut h = height as i64 - 1;
    while h >= 0 {
        let bytes: Vec<u8> = sqlx::query_scalar("SELECT header FROM blocks WHERE height = $1")
            .bind(h)
            .fetch_one(&mut **tx)
            .await?;
        let header =
            BlockHeader::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let at = header.sealed_at.timestamp_millis();
        if since != i64::MIN && at != since {
            break;
        }
        since = at;
        listed.extend(header.state.map(|s| s.decision_ids).unwrap_or_default());
        h -= 1;
    }
    Ok(sqlx::query(
        "SELECT id, reading_key, status, resolved_at FROM quarantine \
         WHERE status NOT IN ('open', 'held') AND resolved_at IS NOT NULL AND resolved_at >= $1 ORDER BY id",
    )
    .bind(since)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| Decision {
        id: r.get(0),
        reading_key: r.get::<Option<String>, _>(1).unwrap_or_default(),
        status: r.get(2),
        resolved_at: r.get(3),
    })
    .filter(|d| !listed.contains(&d.id))
    .collect())
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

/// The operation (its envelope's SHA-256, hex) that already used `holder`'s `nonce` for
/// operations of this `kind` (`transfer`, `retire`), if any.
pub async fn nonce_op(
    tx: &mut Transaction<'_, Any>,
    holder: &str,
    kind: &str,
    nonce: u64,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT op_digest FROM token_nonces WHERE holder = $1 AND kind = $2 AND nonce = $3",
    )
    .bind(holder.to_owned())
    .bind(kind.to_owned())
    .bind(nonce as i64)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Records that `holder`'s `nonce` of this `kind` was used by operation `op_digest`.
pub async fn use_nonce(
    tx: &mut Transaction<'_, Any>,
    holder: &str,
    kind: &str,
    nonce: u64,
    op_digest: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO token_nonces (holder, kind, nonce, op_digest) VALUES ($1, $2, $3, $4)",
    )
    .bind(holder.to_owned())
    .bind(kind.to_owned())
    .bind(nonce as i64)
    .bind(op_digest.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
