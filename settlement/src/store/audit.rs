//! Everything `settlement verify` reads, loaded in one step so the checks themselves are pure
//! (see [`crate::audit`]).

use gridmesh_protocol::rotation::{KeyPeriod, ParticipantWithKeys};
use gridmesh_runtime::db::{Backend, Database};
use sqlx::{AnyConnection, AnyPool, Row};

/// A stored block as the audit reads it.
#[derive(Debug, Clone)]
pub struct BlockRecord {
    /// Height.
    pub height: i64,
    /// The settled interval's key.
    pub interval_key: String,
    /// The canonical header bytes.
    pub header: Vec<u8>,
    /// Stored hash (hex).
    pub hash: String,
    /// The authority's signature over the header.
    pub signature: Vec<u8>,
    /// The signer's key.
    pub public_key: String,
}

/// A stored ledger entry.
#[derive(Debug, Clone)]
pub struct EntryRecord {
    /// Position in the ledger.
    pub seq: i64,
    /// Stored hash (hex).
    pub hash: String,
    /// `mint`, `transfer` or `retire`.
    pub kind: String,
    /// The body bytes.
    pub body: Vec<u8>,
    /// The block it claims to be in.
    pub block_height: Option<i64>,
    /// When settlement wrote it, Unix ms (a transfer's or retirement's receive time).
    pub created_at: i64,
}

/// A stored reading with its indexed columns.
#[derive(Debug, Clone)]
pub struct ReadingRecord {
    /// Idempotency key.
    pub key: String,
    /// Gateway column.
    pub gateway: String,
    /// Device column.
    pub device: String,
    /// The participant it was attributed to.
    pub participant: String,
    /// Interval start column, Unix s.
    pub interval_start: i64,
    /// Interval minutes column.
    pub minutes: i64,
    /// Sequence column.
    pub sequence: i64,
    /// The signed payload.
    pub payload: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// The signer's key.
    pub public_key: String,
    /// Digest column (hex).
    pub digest: String,
    /// Grid import column.
    pub grid_import: i64,
    /// Grid export column.
    pub grid_export: i64,
    /// PV column.
    pub pv: i64,
    /// Battery discharge column.
    pub battery_discharge: i64,
    /// `accepted`, `flagged` or `late`.
    pub status: String,
}

/// A stored market result.
#[derive(Debug, Clone)]
pub struct ResultRecord {
    /// Interval key.
    pub key: String,
    /// The body (the exact signed bytes when attested).
    pub body: String,
    /// Whether it is settled.
    pub settled: bool,
    /// The market's attestation (JSON), when results are read signed.
    pub attestation: Option<String>,
}

/// A stored lot.
#[derive(Debug, Clone)]
pub struct LotRecord {
    /// Lot id.
    pub lot: String,
    /// Holder.
    pub holder: String,
    /// Tokens it was created with.
    pub initial: i64,
    /// Tokens remaining.
    pub remaining: i64,
    /// Tokens retired.
    pub retired: i64,
}

/// A stored statement.
#[derive(Debug, Clone)]
pub struct StatementRecord {
    /// Interval key.
    pub interval_key: String,
    /// Participant.
    pub participant: String,
    /// Net column.
    pub net: i64,
    /// The statement (JSON).
    pub body: String,
}

/// A stored compliance row.
#[derive(Debug, Clone)]
pub struct ComplianceRecord {
    /// Interval key.
    pub interval_key: String,
    /// Gateway.
    pub gateway: String,
    /// The row (JSON).
    pub body: String,
}

/// A stored withheld mint.
#[derive(Debug, Clone)]
pub struct WithheldRecord {
    /// Row id.
    pub id: i64,
    /// Interval key.
    pub interval_key: String,
    /// The mint plan (JSON).
    pub body: String,
    /// 1 once released.
    pub released: i64,
}

/// A stored quarantine item, without its raw bytes (those move no money).
#[derive(Debug, Clone)]
pub struct QuarantineRecord {
    /// Id.
    pub id: i64,
    /// The reading key it names, if any.
    pub reading_key: Option<String>,
    /// Reason code.
    pub code: String,
    /// `open`, `accepted`, `held`, `readmitted`
    pub status: String,
    /// When an operator decided it, Unix ms.
    pub resolved_at: Option<i64>,
}

/// The whole store, as the audit checks it.
#[derive(Debug, Clone, Default)]
pub struct AuditData {
    /// Blocks by height.
    pub blocks: Vec<BlockRecord>,
    /// Entries by position.
    pub entries: Vec<EntryRecord>,
    /// Gateway registrations: gateway and body (JSON).
    pub gateways: Vec<(String, String)>,
    /// Readings by key.
    pub readings: Vec<ReadingRecord>,
    /// Results.
    pub results: Vec<ResultRecord>,
    /// Participant registrations: participant and public key, one pair for every key the
    /// participant has had (key rotation keeps the replaced keys, which signed earlier entries).
    pub participants: Vec<(String, String)>,
    /// Lots by id.
    pub lots: Vec<LotRecord>,
    /// Statements by interval key and participant.
    pub statements: Vec<StatementRecord>,
    /// Compliance rows.
    pub compliance: Vec<ComplianceRecord>,
    /// Withheld mints by id.
    pub withheld: Vec<WithheldRecord>,
    /// Quarantine items that name a reading or were decided, by id.
    pub quarantine: Vec<QuarantineRecord>,
    /// Every participant key with its validity period (from the stored participant bodies);
    /// a participant without periods is absent (any of its keys is then accepted).
    pub key_periods: Vec<(String, KeyPeriod)>,
}

/// Whether the database has settlement's tables.
pub async fn has_settlement_tables(pool: &AnyPool) -> bool {
    sqlx::query("SELECT COUNT(*) FROM blocks")
        .fetch_one(pool)
        .await
        .is_ok()
}

/// Reads everything the audit checks as one consistent snapshot, so it can run while
/// settlement writes: a read-only `REPEATABLE READ` transaction on PostgreSQL, one read
/// transaction on SQLite (WAL: it reads the database as of its first read).
pub async fn load(db: &Database) -> Result<AuditData, sqlx::Error> {
    let begin = match db.backend {
        Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        Backend::Sqlite => "BEGIN DEFERRED",
    };
    let mut tx = db.pool.begin_with(begin).await?;
    let data = load_in(&mut tx).await?;
    tx.rollback().await?;
    Ok(data)
}

async fn load_in(pool: &mut AnyConnection) -> Result<AuditData, sqlx::Error> {
    let blocks = sqlx::query(
        "SELECT height, interval_key, header, hash, signature, public_key FROM blocks ORDER BY height",
    )
    .fetch_all(&mut *pool)
    .await?
    .iter()
    .map(|r| BlockRecord {
        height: r.get(0),
        interval_key: r.get(1),
        header: r.get(2),
        hash: r.get(3),
        signature: r.get(4),
        public_key: r.get(5),
    })
    .collect();
    let entries = sqlx::query(
        "SELECT seq, hash, kind, body, block_height, created_at FROM entries ORDER BY seq",
    )
    .fetch_all(&mut *pool)
    .await?
    .iter()
    .map(|r| EntryRecord {
        seq: r.get(0),
        hash: r.get(1),
        kind: r.get(2),
        body: r.get(3),
        block_height: r.get(4),
        created_at: r.get(5),
    })
    .collect();
    let gateways = pairs(pool, "SELECT gateway, body FROM gateways").await?;
    let readings = load_readings(pool).await?;
    let results = sqlx::query("SELECT interval_key, body, settled, attestation FROM results")
        .fetch_all(&mut *pool)
        .await?
        .iter()
        .map(|r| ResultRecord {
            key: r.get(0),
            body: r.get(1),
            settled: r.get::<i64, _>(2) != 0,
            attestation: r.get(3),
        })
        .collect();
    let lots =
        sqlx::query("SELECT lot, holder, initial, remaining, retired FROM lots ORDER BY lot")
            .fetch_all(&mut *pool)
            .await?
            .iter()
            .map(|r| LotRecord {
                lot: r.get(0),
                holder: r.get(1),
                initial: r.get(2),
                remaining: r.get(3),
                retired: r.get(4),
            })
            .collect();
    let statements = sqlx::query(
        "SELECT interval_key, participant, net, body FROM statements ORDER BY interval_key, participant",
    )
    .fetch_all(&mut *pool)
    .await?
    .iter()
    .map(|r| StatementRecord {
        interval_key: r.get(0),
        participant: r.get(1),
        net: r.get(2),
        body: r.get(3),
    })
    .collect();
    let compliance = sqlx::query("SELECT interval_key, gateway, body FROM compliance")
        .fetch_all(&mut *pool)
        .await?
        .iter()
        .map(|r| ComplianceRecord {
            interval_key: r.get(0),
            gateway: r.get(1),
            body: r.get(2),
        })
        .collect();
    let withheld =
        sqlx::query("SELECT id, interval_key, body, released FROM withheld_mints ORDER BY id")
            .fetch_all(&mut *pool)
            .await?
            .iter()
            .map(|r| WithheldRecord {
                id: r.get(0),
                interval_key: r.get(1),
                body: r.get(2),
                released: r.get(3),
            })
            .collect();
    let quarantine = sqlx::query(
        "SELECT id, reading_key, code, status, resolved_at FROM quarantine \
         WHERE reading_key IS NOT NULL OR status NOT IN ('open', 'held') ORDER BY id",
    )
    .fetch_all(&mut *pool)
    .await?
    .iter()
    .map(|r| QuarantineRecord {
        id: r.get(0),
        reading_key: r.get(1),
        code: r.get(2),
        status: r.get(3),
        resolved_at: r.get(4),
    })
    .collect();
    let (participants, key_periods) = participant_keys(pool).await?;
    Ok(AuditData {
        blocks,
        entries,
        gateways,
        readings,
        results,
        participants,
        lots,
        statements,
        compliance,
        withheld,
        quarantine,
        key_periods,
    })
}

/// Every (participant, key) pair: the key column, plus every period's key of the stored body;
/// and every period.
async fn participant_keys(
    pool: &mut AnyConnection,
) -> Result<(Vec<(String, String)>, Vec<(String, KeyPeriod)>), sqlx::Error> {
    let mut out = Vec::new();
    let mut periods = Vec::new();
    for (participant, key, body) in
        sqlx::query("SELECT participant, public_key, body FROM participants")
            .fetch_all(&mut *pool)
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    r.get::<String, _>(1),
                    r.get::<String, _>(2),
                )
            })
    {
        // A body that does not parse still leaves the key column.
        let history = serde_json::from_str::<ParticipantWithKeys>(&body)
            .map(|p| p.keys)
            .unwrap_or_default();
        for k in history {
            let public = k.public_key.to_string();
            if public != key {
                out.push((participant.clone(), public));
            }
            periods.push((participant.clone(), k));
        }
        out.push((participant, key));
    }
    Ok((out, periods))
}

async fn pairs(pool: &mut AnyConnection, sql: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    Ok(sqlx::query(sql)
        .fetch_all(&mut *pool)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn load_readings(pool: &mut AnyConnection) -> Result<Vec<ReadingRecord>, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT reading_key, gateway, device, participant, interval_start, minutes, sequence, payload, \
         signature, public_key, digest, grid_import, grid_export, pv, battery_discharge, status \
         FROM readings ORDER BY reading_key",
    )
    .fetch_all(&mut *pool)
    .await?
    .iter()
    .map(|r| ReadingRecord {
        key: r.get(0),
        gateway: r.get(1),
        device: r.get(2),
        participant: r.get(3),
        interval_start: r.get(4),
        minutes: r.get(5),
        sequence: r.get(6),
        payload: r.get(7),
        signature: r.get(8),
        public_key: r.get(9),
        digest: r.get(10),
        grid_import: r.get(11),
        grid_export: r.get(12),
        pv: r.get(13),
        battery_discharge: r.get(14),
        status: r.get(15),
    })
    .collect())
}
