//! Persistence on SQLite or PostgreSQL through `gridmesh_runtime::db::Database`.
//!
//! Participants, gateways and the topology are small JSON documents keyed by id; every key a
//! participant has had is a row with its validity period (`participant_keys`). Orders keep
//! their signed envelope next to the decoded fields; `(participant, nonce)` is unique, so a
//! replayed nonce can never enter the book, even across restarts. Results are written once
//! (`ON CONFLICT DO NOTHING`) and then only read: clearing an interval twice returns the stored
//! result, so a result never changes. A result's exact JSON body bytes are what the market
//! signs; they are stored as written and served unchanged, with the signed attestation beside
//! them and the interval's signed operating envelopes written in the same transaction.

use gridmesh_protocol::envelope::SignedResult;
use gridmesh_protocol::grid::{LimitOverride, Network};
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::rotation::{KeyPeriod, KeyRotation};
use gridmesh_protocol::signing::PublicKey;
use gridmesh_protocol::{
    GatewayId, Interval, IntervalLength, NodeId, ParticipantId, Side, SignedEnvelope,
};
use gridmesh_runtime::db::{Database, DbError};
use serde::Deserialize;
use sqlx::Row;

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the database failed.
    #[error(transparent)]
    Open(#[from] DbError),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored document does not parse (the database was edited by hand?).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// An order as stored and listed (the wire type `OrderRecord`, re-exported from the protocol).
pub use gridmesh_protocol::api::market::OrderRecord as StoredOrder;

/// A result as stored: its exact JSON body and the market's signed attestation of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    /// The interval's start, Unix seconds.
    pub interval_start: i64,
    /// The exact JSON bytes of the [`IntervalResult`], as signed.
    pub body: String,
    /// The signed `ResultAttestation` (`None` for results stored before signing existed).
    pub attestation: Option<SignedEnvelope>,
}

impl StoredResult {
    /// The parsed result.
    pub fn result(&self) -> Result<IntervalResult, StoreError> {
        serde_json::from_str(&self.body).map_err(corrupt)
    }

    /// The signed result, if the attestation is there.
    pub fn signed(&self) -> Option<SignedResult> {
        self.attestation.as_ref().map(|a| SignedResult {
            body_base64: self.body.as_bytes().to_vec(),
            attestation: a.clone(),
        })
    }
}

/// A stored enrolment token (the token itself is never stored, only its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentTokenRow {
    /// The only participant it may enrol.
    pub participant: ParticipantId,
    /// When it expires, Unix seconds.
    pub expires_at: i64,
    /// When it was used up (its gateway enrolled), Unix seconds.
    pub used_at: Option<i64>,
}

/// Most rows per multi-row insert (3 parameters each; both back ends accept 900 parameters).
const ENVELOPE_CHUNK: usize = 300;

/// The market's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    length: IntervalLength,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn side_text(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

const ORDER_COLUMNS: &str = "order_id, participant, nonce, interval_start, node, side, quantity, \
                             limit_price, envelope, received_at, cancelled";

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub async fn open(url: &str, length: IntervalLength) -> Result<Self, StoreError> {
        let db = Database::connect(url).await?;
        db.migrate(&SQLITE, &POSTGRES).await?;
        Ok(Store { db, length })
    }

    /// The database, for diagnostics.
    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn docs<T: for<'de> Deserialize<'de>>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&self.db.pool).await?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .collect()
    }

    /// Registers a participant if its id is new; returns whether it was written (`false`: the
    /// id was registered before and nothing changed — registration is create-only).
    /// Its registered key is stored as its first key period, valid from 0 and open-ended.
    pub async fn insert_participant(&self, p: &Participant) -> Result<bool, StoreError> {
        let body = serde_json::to_string(p).map_err(corrupt)?;
        let mut tx = self.db.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO participants (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(p.id.to_string())
        .bind(body)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO participant_keys (participant, public_key, valid_from, valid_until) \
             VALUES ($1, $2, 0, NULL)",
        )
        .bind(p.id.to_string())
        .bind(p.public_key.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every participant's key periods, oldest first.
    pub async fn key_periods(&self) -> Result<Vec<(ParticipantId, KeyPeriod)>, StoreError> {
        let rows = sqlx::query(
            "SELECT participant, public_key, valid_from, valid_until FROM participant_keys \
             ORDER BY participant, valid_from",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let participant =
                    ParticipantId::new(r.try_get::<String, _>(0)?).map_err(corrupt)?;
                let public_key: PublicKey = r.try_get::<String, _>(1)?.parse().map_err(corrupt)?;
                Ok((
                    participant,
                    KeyPeriod {
                        public_key,
                        valid_from: r.try_get(2)?,
                        valid_until: r.try_get(3)?,
                    },
                ))
            })
            .collect()
    }

    /// Whether `participant` used `nonce` for a key rotation before.
    pub async fn rotation_nonce_used(
        &self,
        participant: &ParticipantId,
        nonce: u64,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM participant_keys WHERE participant = $1 AND rotation_nonce = $2",
        )
        .bind(participant.to_string())
        .bind(nonce as i64)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Rotates a key in one transaction: the open period starting at `current_from` ends at
    /// `rotation.valid_from` and the new key's period opens there. Returns `false` (nothing
    /// changed) if that period is no longer the open one or the nonce was used (a concurrent
    /// rotation won).
    pub async fn rotate_key(
        &self,
        current_from: i64,
        rotation: &KeyRotation,
    ) -> Result<bool, StoreError> {
        let participant = rotation.participant.to_string();
        let mut tx = self.db.pool.begin().await?;
        let used = sqlx::query(
            "SELECT COUNT(*) FROM participant_keys WHERE participant = $1 AND rotation_nonce = $2",
        )
        .bind(participant.clone())
        .bind(rotation.nonce as i64)
        .fetch_one(&mut *tx)
        .await?;
        if used.try_get::<i64, _>(0)? > 0 {
            return Ok(false);
        }
        let closed = sqlx::query(
            "UPDATE participant_keys SET valid_until = $1 \
             WHERE participant = $2 AND valid_from = $3 AND valid_until IS NULL",
        )
        .bind(rotation.valid_from)
        .bind(participant.clone())
        .bind(current_from)
        .execute(&mut *tx)
        .await?;
        if closed.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO participant_keys \
             (participant, public_key, valid_from, valid_until, rotation_nonce) \
             VALUES ($1, $2, $3, NULL, $4)",
        )
        .bind(participant)
        .bind(rotation.new_public_key.to_string())
        .bind(rotation.valid_from)
        .bind(rotation.nonce as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every participant, by id.
    pub async fn participants(&self) -> Result<Vec<Participant>, StoreError> {
        self.docs("SELECT body FROM participants ORDER BY id").await
    }

    /// Enrols a gateway if its id is new; returns whether it was written (`false`: the id was
    /// enrolled before and nothing changed — enrolment is create-only).
    pub async fn insert_gateway(&self, g: &GatewayEnrollment) -> Result<bool, StoreError> {
        let body = serde_json::to_string(g).map_err(corrupt)?;
        let done = sqlx::query(
            "INSERT INTO gateways (gateway, participant, body) VALUES ($1, $2, $3) \
             ON CONFLICT (gateway) DO NOTHING",
        )
        .bind(g.gateway.to_string())
        .bind(g.participant.to_string())
        .bind(body)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a new enrolment token (its SHA-256, hex) for `participant`.
    pub async fn insert_enrolment_token(
        &self,
        token_sha256: &str,
        participant: &ParticipantId,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrolment_tokens (token_sha256, participant, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_sha256.to_owned())
        .bind(participant.to_string())
        .bind(created_at)
        .bind(expires_at)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The enrolment token with this SHA-256 (hex), if issued.
    pub async fn enrolment_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<EnrolmentTokenRow>, StoreError> {
        let row = sqlx::query(
            "SELECT participant, expires_at, used_at FROM enrolment_tokens WHERE token_sha256 = $1",
        )
        .bind(token_sha256.to_owned())
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| {
            Ok(EnrolmentTokenRow {
                participant: ParticipantId::new(r.try_get::<String, _>(0)?).map_err(corrupt)?,
                expires_at: r.try_get(1)?,
                used_at: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Marks an enrolment token used at `now` unless it was used already; returns whether this
    /// call used it (one caller wins a race).
    pub async fn use_enrolment_token(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE enrolment_tokens SET used_at = $2 WHERE token_sha256 = $1 AND used_at IS NULL",
        )
        .bind(token_sha256.to_owned())
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Makes a token usable again (the enrolment it was claimed for failed).
    pub async fn release_enrolment_token(&self, token_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE enrolment_tokens SET used_at = NULL WHERE token_sha256 = $1")
            .bind(token_sha256.to_owned())
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Every gateway, by id.
    pub async fn gateways(&self) -> Result<Vec<GatewayEnrollment>, StoreError> {
        self.docs("SELECT body FROM gateways ORDER BY gateway")
            .await
    }

    /// The stored topology, if one was set.
    pub async fn topology(&self) -> Result<Option<Network>, StoreError> {
        Ok(self
            .docs("SELECT body FROM topology WHERE id = 1")
            .await?
            .pop())
    }

    /// Replaces the topology.
    pub async fn put_topology(&self, network: &Network) -> Result<(), StoreError> {
        let body = serde_json::to_string(network).map_err(corrupt)?;
        sqlx::query(
            "INSERT INTO topology (id, body) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        )
        .bind(body)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// How many order-writing transactions may run at once: PostgreSQL commits concurrent
    /// transactions in parallel (one arriving order need not wait for the commit in flight);
    /// SQLite has one writer at a time, so one.
    pub fn concurrent_writes(&self) -> usize {
        match self.db.backend {
            gridmesh_runtime::db::Backend::Postgres => 4,
            gridmesh_runtime::db::Backend::Sqlite => 1,
        }
    }

    /// Inserts orders in one statement (one transaction). Returns, per order, whether it was
    /// new (`false` = its `(participant, nonce)` was already used, before or earlier in the same
    /// batch).
    pub async fn insert_orders(&self, orders: &[StoredOrder]) -> Result<Vec<bool>, StoreError> {
        let mut fresh = vec![false; orders.len()];
        let mut seen = std::collections::HashSet::new();
        let candidates: Vec<usize> = (0..orders.len())
            .filter(|&i| seen.insert(orders[i].order_id.as_str()))
            .collect();
        for chunk in candidates.chunks(1000) {
            let mut sql = String::from(
                "INSERT INTO orders (order_id, participant, nonce, interval_start, node, side, \
                 quantity, limit_price, envelope, received_at, cancelled) VALUES ",
            );
            for k in 0..chunk.len() {
                let b = k * 10;
                if k > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${},${},${},${},${},${},${},${},${},${},0)",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10
                ));
            }
            sql.push_str(" ON CONFLICT DO NOTHING RETURNING order_id");
            let mut query = sqlx::query(&sql);
            for &i in chunk {
                let o = &orders[i];
                let envelope = serde_json::to_string(&o.envelope).map_err(corrupt)?;
                query = query
                    .bind(o.order_id.clone())
                    .bind(o.participant.to_string())
                    .bind(o.nonce as i64)
                    .bind(o.interval.start_unix())
                    .bind(o.node.to_string())
                    .bind(side_text(o.side))
                    .bind(o.quantity_wh)
                    .bind(o.limit_price)
                    .bind(envelope)
                    .bind(o.received_at.clone());
            }
            let rows = query.fetch_all(&self.db.pool).await?;
            let inserted: std::collections::HashSet<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?;
            for &i in chunk {
                fresh[i] = inserted.contains(&orders[i].order_id);
            }
        }
        Ok(fresh)
    }

    fn order_from_row(&self, r: &sqlx::any::AnyRow) -> Result<StoredOrder, StoreError> {
        let start: i64 = r.try_get("interval_start")?;
        let side: String = r.try_get("side")?;
        Ok(StoredOrder {
            order_id: r.try_get("order_id")?,
            participant: ParticipantId::new(r.try_get::<String, _>("participant")?)
                .map_err(corrupt)?,
            nonce: r.try_get::<i64, _>("nonce")? as u64,
            interval: Interval::from_unix(start, self.length.minutes().into()).map_err(corrupt)?,
            node: NodeId::new(r.try_get::<String, _>("node")?).map_err(corrupt)?,
            side: if side == "buy" { Side::Buy } else { Side::Sell },
            quantity_wh: r.try_get("quantity")?,
            limit_price: r.try_get("limit_price")?,
            cancelled: r.try_get::<i64, _>("cancelled")? != 0,
            received_at: r.try_get("received_at")?,
            envelope: serde_json::from_str(&r.try_get::<String, _>("envelope")?)
                .map_err(corrupt)?,
        })
    }

    /// Orders, optionally of one participant and/or one interval, in arrival order.
    pub async fn orders(
        &self,
        participant: Option<&ParticipantId>,
        interval: Option<&Interval>,
        only_open: bool,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE ($1 = '' OR participant = $1) \
             AND ($2 = 0 OR interval_start = $3) AND ($4 = 0 OR cancelled = 0) ORDER BY seq"
        );
        let rows = sqlx::query(&sql)
            .bind(participant.map(|p| p.to_string()).unwrap_or_default())
            .bind(i64::from(interval.is_some()))
            .bind(interval.map_or(0, |i| i.start_unix()))
            .bind(i64::from(only_open))
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(|r| self.order_from_row(r)).collect()
    }

    /// One order by owner and nonce.
    pub async fn order(
        &self,
        participant: &ParticipantId,
        nonce: u64,
    ) -> Result<Option<StoredOrder>, StoreError> {
        let sql =
            format!("SELECT {ORDER_COLUMNS} FROM orders WHERE participant = $1 AND nonce = $2");
        let row = sqlx::query(&sql)
            .bind(participant.to_string())
            .bind(nonce as i64)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(|r| self.order_from_row(r)).transpose()
    }

    /// Marks an order cancelled.
    pub async fn cancel_order(
        &self,
        participant: &ParticipantId,
        nonce: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE orders SET cancelled = 1 WHERE participant = $1 AND nonce = $2")
            .bind(participant.to_string())
            .bind(nonce as i64)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// The earliest interval start with orders, at or after `from` (Unix seconds).
    pub async fn earliest_order_interval(&self, from: i64) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(interval_start) FROM orders WHERE interval_start >= $1")
            .bind(from)
            .fetch_one(&self.db.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Stores a signed result and its signed envelopes in one transaction, unless a result for
    /// the interval exists (then nothing is written); returns the stored result (the first ever
    /// written).
    pub async fn put_result(
        &self,
        interval: &Interval,
        signed: &SignedResult,
        envelopes: &[(GatewayId, SignedEnvelope)],
    ) -> Result<IntervalResult, StoreError> {
        let body = String::from_utf8(signed.body_base64.clone()).map_err(corrupt)?;
        let attestation = serde_json::to_string(&signed.attestation).map_err(corrupt)?;
        let start = interval.start_unix();
        let mut tx = self.db.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO results (interval_start, body, attestation) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(start)
        .bind(body)
        .bind(attestation)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            for chunk in envelopes.chunks(ENVELOPE_CHUNK) {
                let mut sql =
                    String::from("INSERT INTO envelopes (interval_start, gateway, body) VALUES ");
                for k in 0..chunk.len() {
                    if k > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!("(${},${},${})", 3 * k + 1, 3 * k + 2, 3 * k + 3));
                }
                sql.push_str(" ON CONFLICT DO NOTHING");
                let mut query = sqlx::query(&sql);
                for (gateway, envelope) in chunk {
                    query = query
                        .bind(start)
                        .bind(gateway.to_string())
                        .bind(serde_json::to_string(envelope).map_err(corrupt)?);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        self.result(interval)
            .await?
            .ok_or_else(|| corrupt("a result just written is missing"))
    }

    fn stored_result(r: &sqlx::any::AnyRow) -> Result<StoredResult, StoreError> {
        let attestation: Option<String> = r.try_get("attestation")?;
        Ok(StoredResult {
            interval_start: r.try_get("interval_start")?,
            body: r.try_get("body")?,
            attestation: attestation
                .map(|a| serde_json::from_str(&a).map_err(corrupt))
                .transpose()?,
        })
    }

    /// The stored result of an interval (body and attestation), if cleared.
    pub async fn result_row(
        &self,
        interval: &Interval,
    ) -> Result<Option<StoredResult>, StoreError> {
        let row = sqlx::query(
            "SELECT interval_start, body, attestation FROM results WHERE interval_start = $1",
        )
        .bind(interval.start_unix())
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(Self::stored_result).transpose()
    }

    /// Stored results from `since` on (inclusive), oldest first, at most `limit`.
    pub async fn result_rows_since(
        &self,
        since: i64,
        limit: i64,
    ) -> Result<Vec<StoredResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT interval_start, body, attestation FROM results WHERE interval_start >= $1 \
             ORDER BY interval_start LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(Self::stored_result).collect()
    }

    /// Adds the attestation of a result stored without one (a result is attested only once:
    /// returns the attestation in force afterwards).
    pub async fn attest_result(
        &self,
        interval_start: i64,
        attestation: &SignedEnvelope,
    ) -> Result<SignedEnvelope, StoreError> {
        sqlx::query(
            "UPDATE results SET attestation = $2 WHERE interval_start = $1 AND attestation IS NULL",
        )
        .bind(interval_start)
        .bind(serde_json::to_string(attestation).map_err(corrupt)?)
        .execute(&self.db.pool)
        .await?;
        let row = sqlx::query("SELECT attestation FROM results WHERE interval_start = $1")
            .bind(interval_start)
            .fetch_one(&self.db.pool)
            .await?;
        let text: Option<String> = row.try_get(0)?;
        serde_json::from_str(
            &text.ok_or_else(|| corrupt("an attestation just written is missing"))?,
        )
        .map_err(corrupt)
    }

    /// The result of an interval, if cleared.
    pub async fn result(&self, interval: &Interval) -> Result<Option<IntervalResult>, StoreError> {
        self.result_row(interval)
            .await?
            .map(|r| r.result())
            .transpose()
    }

    /// The signed envelopes of one interval, by gateway.
    pub async fn envelopes_at(
        &self,
        interval: &Interval,
    ) -> Result<Vec<(GatewayId, SignedEnvelope)>, StoreError> {
        let rows = sqlx::query(
            "SELECT gateway, body FROM envelopes WHERE interval_start = $1 ORDER BY gateway",
        )
        .bind(interval.start_unix())
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let gateway = GatewayId::new(r.try_get::<String, _>(0)?).map_err(corrupt)?;
                let body: SignedEnvelope =
                    serde_json::from_str(&r.try_get::<String, _>(1)?).map_err(corrupt)?;
                Ok((gateway, body))
            })
            .collect()
    }

    /// The signed envelopes of one gateway for intervals starting after `after` (Unix seconds,
    /// exclusive), oldest first, at most `limit`.
    pub async fn envelopes_of(
        &self,
        gateway: &GatewayId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SignedEnvelope>, StoreError> {
        let rows = sqlx::query(
            "SELECT body FROM envelopes WHERE gateway = $1 AND interval_start > $2 \
             ORDER BY interval_start LIMIT $3",
        )
        .bind(gateway.to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .collect()
    }

    /// One gateway's enrolment.
    pub async fn gateway(&self, id: &GatewayId) -> Result<Option<GatewayEnrollment>, StoreError> {
        let row = sqlx::query("SELECT body FROM gateways WHERE gateway = $1")
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .transpose()
    }

    /// Stores an operator limit override; returns it with its assigned id.
    pub async fn insert_override(&self, o: &LimitOverride) -> Result<LimitOverride, StoreError> {
        let body = serde_json::to_string(o).map_err(corrupt)?;
        let row = sqlx::query(
            "INSERT INTO limit_overrides (node, from_ts, until_ts, body) VALUES ($1, $2, $3, $4) \
             RETURNING id",
        )
        .bind(o.node.to_string())
        .bind(o.from.timestamp())
        .bind(o.until.timestamp())
        .bind(body)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(LimitOverride {
            id: row.try_get(0)?,
            ..o.clone()
        })
    }

    async fn overrides_where(
        &self,
        sql: &str,
        at: Option<i64>,
    ) -> Result<Vec<LimitOverride>, StoreError> {
        let mut query = sqlx::query(sql);
        if let Some(at) = at {
            query = query.bind(at);
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        rows.iter()
            .map(|r| {
                let mut o: LimitOverride =
                    serde_json::from_str(&r.try_get::<String, _>(1)?).map_err(corrupt)?;
                o.id = r.try_get(0)?;
                Ok(o)
            })
            .collect()
    }

    /// Every limit override, by id.
    pub async fn overrides(&self) -> Result<Vec<LimitOverride>, StoreError> {
        self.overrides_where("SELECT id, body FROM limit_overrides ORDER BY id", None)
            .await
    }

    /// The limit overrides covering the interval starting at `start` (Unix seconds), by id.
    pub async fn overrides_covering(&self, start: i64) -> Result<Vec<LimitOverride>, StoreError> {
        self.overrides_where(
            "SELECT id, body FROM limit_overrides WHERE from_ts <= $1 AND until_ts > $1 ORDER BY id",
            Some(start),
        )
        .await
    }

    /// Deletes a limit override; returns whether it existed.
    pub async fn delete_override(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM limit_overrides WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Results from `since` on (inclusive), oldest first, at most `limit`.
    pub async fn results_since(
        &self,
        since: i64,
        limit: i64,
    ) -> Result<Vec<IntervalResult>, StoreError> {
        self.result_rows_since(since, limit)
            .await?
            .iter()
            .map(StoredResult::result)
            .collect()
    }

    /// The start of the latest cleared interval.
    pub async fn last_result_start(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(interval_start) FROM results")
            .fetch_one(&self.db.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }
}
