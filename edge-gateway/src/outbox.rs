//! The durable outbox: every signed reading is committed to SQLite (WAL, `synchronous=FULL`)
//! together with the sequence number and the accountant's resume state, in one transaction,
//! before anything is sent. A reading leaves the outbox only when the uplink reports it
//! delivered (broker PUBACK or an HTTP 2xx from settlement).
//!
//! Disk use is bounded by a byte cap: above 80% of it every store logs a loud warning; only
//! past the cap are the oldest readings dropped, each with an error log and a metric.

use crate::accountant::Resume;
use gridmesh_protocol::reading::Registers;
use gridmesh_protocol::{Reading, SignedEnvelope, keys::SigningKeyPair};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database could not be opened.
    #[error(
        "cannot open the outbox {path}: {source}. Check that the directory exists and the gateway user may write to it"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot prepare the outbox {path}: {source}")]
    Migrate {
        /// The file.
        path: PathBuf,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
    /// The file is not a usable SQLite database (torn by a power loss, truncated, overwritten):
    /// the gateway must not start afresh or with fewer readings.
    #[error(
        "the outbox {path} is damaged ({detail}). The gateway refuses to start rather than lose the readings it holds or restart their sequence at 1. Stop the gateway, keep the file, and restore the outbox from a backup; or recover what it holds with `sqlite3 {path} .recover | sqlite3 <new file>` and point outbox_path at the new file"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What SQLite found.
        detail: String,
    },
    /// A statement failed (disk full, file damaged, ...).
    #[error("outbox storage failed: {0}")]
    Sql(#[from] sqlx::Error),
    /// Stored JSON does not parse.
    #[error("outbox data is damaged: {0}")]
    Corrupt(String),
    /// The stored sequence number is not a number: the gateway must not guess it.
    #[error(
        "the outbox {path} is damaged: its sequence number is {value:?}, not a number. The gateway refuses to start, because restarting the sequence at 1 would get every new reading quarantined by settlement (sequence_not_increasing). Restore the outbox from a backup, or set the `sequence` row of its `meta` table to the last sequence number settlement holds for this gateway"
    )]
    CorruptSequence {
        /// The file.
        path: PathBuf,
        /// What is stored instead of a number.
        value: String,
    },
    /// A stored counter is not a number.
    #[error("outbox data is damaged: the meta value {key} is {value:?}, not a number")]
    CorruptMeta {
        /// The meta key.
        key: String,
        /// What is stored instead of a number.
        value: String,
    },
}

/// A reading waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its sequence number (the row id).
    pub id: i64,
    /// Its idempotency key.
    pub key: String,
    /// The JSON envelope.
    pub envelope: String,
}

/// One signed interval, as the agent's forecast sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// Interval start, Unix seconds.
    pub interval_start: i64,
    /// The energy in it.
    pub deltas: Registers,
    /// SoC at its end.
    pub soc_permille: Option<u16>,
}

/// The outbox and the gateway's other durable state.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: SqlitePool,
    cap_bytes: u64,
    /// Readings dropped because the cap was reached (metric).
    pub dropped: std::sync::Arc<AtomicU64>,
}

async fn meta_get(conn: &mut SqliteConnection, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map(|row| row.map(|r| r.get::<String, _>(0)))
}

async fn meta_set(conn: &mut SqliteConnection, key: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// The last sequence number signed (0 before the first), or the stored text if it is not a
/// number.
async fn sequence(conn: &mut SqliteConnection) -> Result<Result<u64, String>, sqlx::Error> {
    Ok(match meta_get(conn, "sequence").await? {
        None => Ok(0),
        Some(value) => value.parse::<u64>().map_err(|_| value),
    })
}

/// SQLite's description when `error` says the file is damaged or not a database
/// (`SQLITE_CORRUPT`, `SQLITE_NOTADB`).
fn damage(error: &sqlx::Error) -> Option<String> {
    let database = error.as_database_error()?;
    let code: i32 = database.code()?.parse().ok()?;
    // Extended result codes carry the primary code in their low byte.
    matches!(code & 0xff, 11 | 26).then(|| database.message().to_owned())
}

/// Refuses an existing, non-empty file that does not start with SQLite's header: SQLite would
/// take a file shorter than its header for an empty database and start the outbox afresh.
/// (An empty file is what a first start that stopped before its first write leaves.)
fn check_header(path: &Path) -> Result<(), OutboxError> {
    const HEADER: &[u8; 16] = b"SQLite format 3\0";
    let mut start = Vec::with_capacity(HEADER.len());
    match std::fs::File::open(path) {
        Ok(file) => {
            use std::io::Read;
            // A read error here is reported by the open that follows, with its own advice.
            let _ = file.take(HEADER.len() as u64).read_to_end(&mut start);
        }
        Err(_) => return Ok(()),
    }
    if start.is_empty() || start == HEADER {
        return Ok(());
    }
    Err(OutboxError::Damaged {
        path: path.to_owned(),
        detail: format!(
            "it does not start with SQLite's header: {} byte(s) of something else",
            start.len()
        ),
    })
}

/// Runs `PRAGMA quick_check` over the whole file (with its WAL): [`OutboxError::Damaged`] if
/// SQLite finds a damaged page or cannot read the file.
async fn check_integrity(pool: &SqlitePool, path: &Path) -> Result<(), OutboxError> {
    let damaged = |detail: String| OutboxError::Damaged {
        path: path.to_owned(),
        detail,
    };
    let found: Vec<String> = match sqlx::query_scalar("PRAGMA quick_check(5)")
        .fetch_all(pool)
        .await
    {
        Ok(found) => found,
        Err(error) => return Err(damage(&error).map_or(OutboxError::Sql(error), damaged)),
    };
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    Err(damaged(format!("integrity check: {}", found.join("; "))))
}

/// What [`Outbox::store`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Signed and stored with this sequence number.
    New(Box<(Reading, SignedEnvelope)>),
    /// The interval was signed before (never signed twice).
    AlreadySigned,
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `path`.
    ///
    /// A file that is not an SQLite database, or fails SQLite's integrity check (torn by a
    /// power loss, truncated, overwritten), is refused with [`OutboxError::Damaged`] and left
    /// untouched: never re-created empty, never half-read.
    pub async fn open(path: &Path, cap_bytes: u64) -> Result<Self, OutboxError> {
        check_header(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|source| match damage(&source) {
                Some(detail) => OutboxError::Damaged {
                    path: path.to_owned(),
                    detail,
                },
                None => OutboxError::Open {
                    path: path.to_owned(),
                    source,
                },
            })?;
        match Self::prepare(pool.clone(), path, cap_bytes).await {
            Ok(outbox) => Ok(outbox),
            Err(error) => {
                // Release the file now: a refused outbox must not stay open in the process.
                pool.close().await;
                Err(error)
            }
        }
    }

    /// Checks, migrates and wraps a freshly opened pool.
    async fn prepare(pool: SqlitePool, path: &Path, cap_bytes: u64) -> Result<Self, OutboxError> {
        // A file torn by a power loss or truncated must be refused here, with its name, and
        // never be half-read: check every page before writing to it.
        check_integrity(&pool, path).await?;
        MIGRATOR.run(&pool).await.map_err(|source| {
            let detail = match &source {
                sqlx::migrate::MigrateError::Execute(e) => damage(e),
                _ => None,
            };
            match detail {
                Some(detail) => OutboxError::Damaged {
                    path: path.to_owned(),
                    detail,
                },
                None => OutboxError::Migrate {
                    path: path.to_owned(),
                    source,
                },
            }
        })?;
        let outbox = Outbox {
            pool,
            cap_bytes,
            dropped: Default::default(),
        };
        // Refuse a damaged sequence now, with the file's name, rather than at the first store.
        let mut conn = outbox.pool.acquire().await?;
        if let Err(value) = sequence(&mut conn).await? {
            return Err(OutboxError::CorruptSequence {
                path: path.to_owned(),
                value,
            });
        }
        drop(conn);
        Ok(outbox)
    }

    /// Closes the pool (flushes the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The accountant's resume state, if a previous run left one.
    pub async fn resume(&self) -> Result<Option<Resume>, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        match meta_get(&mut conn, "resume").await? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| OutboxError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    /// An integer from the meta table (0 if absent; an error if it is not a number).
    pub async fn meta_int(&self, key: &str) -> Result<i64, OutboxError> {
        let mut conn = self.pool.acquire().await?;
        match meta_get(&mut conn, key).await? {
            None => Ok(0),
            Some(value) => value.parse().map_err(|_| OutboxError::CorruptMeta {
                key: key.to_owned(),
                value,
            }),
        }
    }

    /// Stores an integer in the meta table.
    pub async fn set_meta_int(&self, key: &str, value: i64) -> Result<(), OutboxError> {
        let mut conn = self.pool.acquire().await?;
        meta_set(&mut conn, key, &value.to_string()).await?;
        Ok(())
    }

    /// Atomically: takes the next sequence number, builds the reading with it, signs it,
    /// stores it in the outbox, records the interval as signed and saves `resume`.
    pub async fn store(
        &self,
        build: impl FnOnce(u64) -> Reading,
        key: &SigningKeyPair,
        resume: &Resume,
        now_ms: i64,
    ) -> Result<Stored, OutboxError> {
        let mut tx = self.pool.begin().await?;
        let sequence = sequence(&mut tx)
            .await?
            .map_err(|value| OutboxError::CorruptMeta {
                key: "sequence".into(),
                value,
            })?
            + 1;
        let reading = build(sequence);
        let start = reading.interval.start_unix();
        let seen = sqlx::query("SELECT 1 FROM signed_intervals WHERE interval_start = $1")
            .bind(start)
            .fetch_optional(&mut *tx)
            .await?;
        if seen.is_some() {
            // Still move the resume state on, so the accountant does not try again.
            meta_set(
                &mut tx,
                "resume",
                &serde_json::to_string(resume).expect("serialisable"),
            )
            .await?;
            tx.commit().await?;
            return Ok(Stored::AlreadySigned);
        }
        let envelope = SignedEnvelope::sign(&reading, key);
        let json = serde_json::to_string(&envelope).expect("serialisable");
        let idem = reading.idempotency_key();
        sqlx::query(
            "INSERT INTO outbox (id, idempotency_key, interval_start, envelope, bytes, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(sequence as i64)
        .bind(&idem)
        .bind(start)
        .bind(&json)
        .bind(json.len() as i64)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO signed_intervals (interval_start, sequence, idempotency_key, deltas, soc_permille, flags) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(start)
        .bind(sequence as i64)
        .bind(&idem)
        .bind(serde_json::to_string(&reading.deltas).expect("serialisable"))
        .bind(reading.soc_permille.map(i64::from))
        .bind(i64::from(reading.flags.0))
        .execute(&mut *tx)
        .await?;
        // Keep about 60 days of history for the forecast.
        sqlx::query("DELETE FROM signed_intervals WHERE interval_start < $1")
            .bind(start - 60 * 86_400)
            .execute(&mut *tx)
            .await?;
        meta_set(&mut tx, "sequence", &sequence.to_string()).await?;
        meta_set(
            &mut tx,
            "resume",
            &serde_json::to_string(resume).expect("serialisable"),
        )
        .await?;
        tx.commit().await?;
        self.enforce_cap().await?;
        Ok(Stored::New(Box::new((reading, envelope))))
    }

    async fn enforce_cap(&self) -> Result<(), OutboxError> {
        let (count, bytes) = self.depth().await?;
        if bytes * 5 > self.cap_bytes * 4 {
            tracing::warn!(
                count,
                bytes,
                cap_bytes = self.cap_bytes,
                "OUTBOX NEARLY FULL: readings are not being delivered; the oldest will be DROPPED when the cap is reached. Check the broker/settlement connection or raise outbox_cap_bytes"
            );
        }
        if bytes > self.cap_bytes {
            let mut excess = bytes - self.cap_bytes;
            let rows = sqlx::query("SELECT id, idempotency_key, bytes FROM outbox ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
            for row in rows {
                if excess == 0 {
                    break;
                }
                let id: i64 = row.get(0);
                let key: String = row.get(1);
                let size: i64 = row.get(2);
                sqlx::query("DELETE FROM outbox WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(key, "OUTBOX FULL: dropped the oldest undelivered reading");
                excess = excess.saturating_sub(size as u64);
            }
        }
        Ok(())
    }

    /// Readings waiting for delivery, oldest first.
    pub async fn pending(&self, limit: i64) -> Result<Vec<Pending>, OutboxError> {
        let rows =
            sqlx::query("SELECT id, idempotency_key, envelope FROM outbox ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| Pending {
                id: r.get(0),
                key: r.get(1),
                envelope: r.get(2),
            })
            .collect())
    }

    /// Removes delivered readings.
    pub async fn delivered(&self, ids: &[i64]) -> Result<(), OutboxError> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM outbox WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Counts a failed delivery attempt.
    pub async fn attempted(&self, id: i64) -> Result<(), OutboxError> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Readings waiting and their total size in bytes.
    pub async fn depth(&self) -> Result<(u64, u64), OutboxError> {
        let row = sqlx::query("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok((row.get::<i64, _>(0) as u64, row.get::<i64, _>(1) as u64))
    }

    /// The most recent signed intervals, newest first.
    pub async fn history(&self, limit: i64) -> Result<Vec<HistoryRow>, OutboxError> {
        let rows = sqlx::query(
            "SELECT interval_start, deltas, soc_permille FROM signed_intervals ORDER BY interval_start DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(HistoryRow {
                    interval_start: r.get(0),
                    deltas: serde_json::from_str(&r.get::<String, _>(1))
                        .map_err(|e| OutboxError::Corrupt(e.to_string()))?,
                    soc_permille: r.get::<Option<i64>, _>(2).map(|v| v as u16),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::reading::ReadingFlags;
    use gridmesh_protocol::{DeviceId, GatewayId, Interval, Wh};

    fn reading(seq: u64, start: i64) -> Reading {
        Reading {
            zone: None,
            gateway: GatewayId::new("gw").unwrap(),
            device: DeviceId::new("home").unwrap(),
            firmware: "t".into(),
            sequence: seq,
            interval: Interval::from_unix(start, 15).unwrap(),
            measured_at: chrono::DateTime::from_timestamp(start + 900, 0).unwrap(),
            clock_synced: true,
            clock_set_count: 0,
            operating_seconds: 1,
            registers: Registers {
                pv: Wh(10),
                ..Default::default()
            },
            deltas: Registers {
                pv: Wh(5),
                ..Default::default()
            },
            soc_permille: Some(1),
            flags: ReadingFlags::empty(),
        }
    }

    fn resume(next: i64) -> Resume {
        Resume {
            next_start: next,
            channels: [None; 5],
        }
    }

    #[tokio::test]
    async fn survives_reopen_in_order_and_never_signs_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let key = SigningKeyPair::from_seed([1; 32]);
        let base = 1_782_000_000 / 900 * 900;
        {
            let outbox = Outbox::open(&path, 1 << 20).await.unwrap();
            for i in 0..3 {
                let start = base + i * 900;
                let stored = outbox
                    .store(|s| reading(s, start), &key, &resume(start + 900), 0)
                    .await
                    .unwrap();
                assert!(matches!(stored, Stored::New(ref b) if b.0.sequence == i as u64 + 1));
            }
            let again = outbox
                .store(|s| reading(s, base), &key, &resume(base + 900), 0)
                .await
                .unwrap();
            assert_eq!(again, Stored::AlreadySigned);
            outbox.close().await;
        }
        let outbox = Outbox::open(&path, 1 << 20).await.unwrap();
        assert_eq!(outbox.resume().await.unwrap(), Some(resume(base + 900)));
        let pending = outbox.pending(10).await.unwrap();
        assert_eq!(
            pending.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let env: SignedEnvelope = serde_json::from_str(&pending[0].envelope).unwrap();
        let r: Reading = env.open().unwrap();
        assert_eq!(r.idempotency_key(), pending[0].key);
        outbox.delivered(&[1, 2]).await.unwrap();
        assert_eq!(outbox.depth().await.unwrap().0, 1);
        // The sequence continues after a restart.
        let stored = outbox
            .store(|s| reading(s, base + 2700), &key, &resume(base + 3600), 0)
            .await
            .unwrap();
        assert!(matches!(stored, Stored::New(ref b) if b.0.sequence == 4));
        assert_eq!(
            outbox.history(10).await.unwrap()[0].interval_start,
            base + 2700
        );
    }

    #[tokio::test]
    async fn a_corrupt_sequence_refuses_to_open_instead_of_restarting_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let key = SigningKeyPair::from_seed([1; 32]);
        let base = 1_782_000_000 / 900 * 900;
        {
            let outbox = Outbox::open(&path, 1 << 20).await.unwrap();
            outbox
                .store(|s| reading(s, base), &key, &resume(base + 900), 0)
                .await
                .unwrap();
            sqlx::query("UPDATE meta SET value = 'x7' WHERE key = 'sequence'")
                .execute(&outbox.pool)
                .await
                .unwrap();
            // A running gateway refuses to sign with a guessed sequence too.
            let error = outbox
                .store(|s| reading(s, base + 900), &key, &resume(base + 1800), 0)
                .await
                .unwrap_err();
            assert!(matches!(error, OutboxError::CorruptMeta { .. }), "{error}");
            outbox.close().await;
        }
        let error = Outbox::open(&path, 1 << 20).await.unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(&error, OutboxError::CorruptSequence { value, .. } if value == "x7"),
            "{text}"
        );
        assert!(
            text.contains("o.db") && text.contains("refuses to start") && text.contains("backup"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_corrupt_counter_is_an_error_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db"), 1 << 20)
            .await
            .unwrap();
        assert_eq!(outbox.meta_int("clock_set_count").await.unwrap(), 0);
        outbox.set_meta_int("clock_set_count", 4).await.unwrap();
        assert_eq!(outbox.meta_int("clock_set_count").await.unwrap(), 4);
        sqlx::query("UPDATE meta SET value = 'four' WHERE key = 'clock_set_count'")
            .execute(&outbox.pool)
            .await
            .unwrap();
        assert!(matches!(
            outbox.meta_int("clock_set_count").await,
            Err(OutboxError::CorruptMeta { .. })
        ));
    }

    #[tokio::test]
    async fn cap_drops_oldest_only_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKeyPair::from_seed([1; 32]);
        let outbox = Outbox::open(&dir.path().join("o.db"), 1500).await.unwrap();
        let base = 1_782_000_000 / 900 * 900;
        for i in 0..5 {
            let start = base + i * 900;
            outbox
                .store(|s| reading(s, start), &key, &resume(start + 900), 0)
                .await
                .unwrap();
        }
        let (count, bytes) = outbox.depth().await.unwrap();
        assert!(bytes <= 1500, "{bytes}");
        assert!((1..5).contains(&count));
        assert_eq!(outbox.dropped.load(Ordering::Relaxed), 5 - count);
        let pending = outbox.pending(10).await.unwrap();
        assert_eq!(pending.last().unwrap().id, 5, "the newest is kept");
    }
}
