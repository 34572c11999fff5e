//! The settlement service's core: ingest batches of signed readings, settle intervals, apply
//! token operations and answer queries. Owns the in-memory verification state; every write is
//! one database transaction.

use crate::compliance;
use crate::ledger::{EntryBody, MintEntry, RetireEntry, TransferEntry, inclusion_proof};
use crate::metrics::Metrics;
use crate::rules::{self, MeterRow, MintPlan, Statement};
use crate::store::{self, QuarantineRow, ReadingRow, StoreError, Value};
use crate::verify::{self, ChainState, Context, Limits, Reason, ReasonCode, Verdict};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use gridmesh_protocol::api::settlement::{
    Balances, BlockHeaderView, BlockSummary, EntryView, Holding, LEAF_HASHING, QuarantineItem,
    QuarantineStatus, StoredReading, StoredReadingStatus,
};
use gridmesh_protocol::envelope::{EnvelopeAlert, EnvelopeCompliance, MeasuredFlows, SignedResult};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::signing::{PublicKey, Signable, SignedEnvelope};
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use gridmesh_protocol::{GatewayId, Interval, NodeId, ParticipantId, Wh};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::db::Database;
use serde::Serialize;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;
use tokio::sync::{Mutex, Notify, broadcast};

/// Why a service operation failed (mapped to HTTP statuses by the API).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Storage failed; nothing was recorded.
    #[error("storage failed, nothing was recorded; retry later: {0}")]
    Store(#[from] StoreError),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The signer may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with stored state.
    #[error("{0}")]
    Conflict(String),
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        ServiceError::Store(StoreError::Query(e))
    }
}

/// One submitted reading, raw (JSON of a `SignedEnvelope`), with where it came from.
#[derive(Debug, Clone)]
pub struct Submission {
    /// `rest` or `mqtt:<topic>`.
    pub source: String,
    /// The raw bytes, kept verbatim in quarantine if they are rejected.
    pub raw: Vec<u8>,
}

pub use gridmesh_protocol::api::readings::{ReadingOutcome, ReadingStatus};
pub use gridmesh_protocol::api::settlement::Event;

/// The outcome of settling an interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SettleOutcome {
    /// Settled now; the block's height.
    Settled {
        /// The block sealed for it.
        height: u64,
    },
    /// Already settled before: nothing changed.
    AlreadySettled,
}

pub use gridmesh_protocol::api::settlement::TokenReceipt as Receipt;

/// Settings of the core.
#[derive(Debug, Clone, Copy)]
pub struct CoreSettings {
    /// Time window for readings.
    pub limits: Limits,
    /// Settle an interval this long after its end.
    pub grace: chrono::Duration,
}

#[derive(Default)]
struct IngestState {
    chain: ChainState,
    settled: HashSet<String>,
}

/// The service core (shared by the API, the MQTT ingest, the poller and the settler).
pub struct Service {
    db: Database,
    authority: SigningKeyPair,
    clock: Clock,
    settings: CoreSettings,
    ingest: Mutex<IngestState>,
    ledger: Mutex<()>,
    registry: RwLock<HashMap<GatewayId, GatewayEnrollment>>,
    participants: RwLock<HashMap<ParticipantId, PublicKey>>,
    events: broadcast::Sender<Event>,
    /// Counters exported on `/metrics`.
    pub metrics: Metrics,
    /// Woken when a new result is stored.
    pub results_changed: Notify,
    /// A native PostgreSQL pool for COPY-based batch inserts (see [`Service::use_postgres_copy`]).
    pg: Option<sqlx::PgPool>,
    /// The market's key that must sign every result (`None` = results are not authenticated).
    market_key: Option<PublicKey>,
    /// Signed results already refused (interval key, SHA-256 of the signed attestation), so a
    /// result the market keeps serving is logged and counted once.
    refused: std::sync::Mutex<HashSet<(String, [u8; 32])>>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl Service {
    /// Opens the core over a migrated database and loads its verification state.
    pub async fn open(
        db: Database,
        authority: SigningKeyPair,
        clock: Clock,
        settings: CoreSettings,
    ) -> Result<Self, ServiceError> {
        let (events, _) = broadcast::channel(1024);
        let service = Service {
            db,
            authority,
            clock,
            settings,
            ingest: Mutex::new(IngestState::default()),
            ledger: Mutex::new(()),
            registry: RwLock::new(HashMap::new()),
            participants: RwLock::new(HashMap::new()),
            events,
            metrics: Metrics::default(),
            results_changed: Notify::new(),
            pg: None,
            market_key: None,
            refused: std::sync::Mutex::new(HashSet::new()),
        };
        service.load().await?;
        Ok(service)
    }

    /// On PostgreSQL, stores reading batches with `COPY` through a native pool opened on
    /// `url` (the same database). A no-op on SQLite.
    pub async fn use_postgres_copy(&mut self, url: &str) -> Result<(), ServiceError> {
        if self.db.backend == gridmesh_runtime::db::Backend::Postgres {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await?;
            self.pg = Some(pool);
        }
        Ok(())
    }

    /// Requires every market result to be signed by `key` (see [`Service::add_signed_result`]);
    /// `None` reads results unsigned.
    pub fn set_market_key(&mut self, key: Option<PublicKey>) {
        self.market_key = key;
    }

    /// The market key results must be signed with, if one is configured.
    pub fn market_key(&self) -> Option<PublicKey> {
        self.market_key
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The authority's public key (signs blocks).
    pub fn authority(&self) -> PublicKey {
        self.authority.public_key()
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn load(&self) -> Result<(), ServiceError> {
        let mut state = IngestState::default();
        let rows = sqlx::query("SELECT payload FROM readings")
            .fetch_all(&self.db.pool)
            .await?;
        for row in rows {
            let payload: Vec<u8> = row.get(0);
            let reading = Reading::decode(&payload)
                .map_err(|e| StoreError::Corrupt(format!("stored reading: {e}")))?;
            let digest: [u8; 32] =
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&payload))
                    .into();
            state.chain.record(&reading, digest);
        }
        for row in sqlx::query("SELECT interval_key FROM results WHERE settled = 1")
            .fetch_all(&self.db.pool)
            .await?
        {
            state.settled.insert(row.get(0));
        }
        *self.ingest.lock().await = state;
        let mut registry = HashMap::new();
        for row in sqlx::query("SELECT body FROM gateways")
            .fetch_all(&self.db.pool)
            .await?
        {
            let g: GatewayEnrollment = serde_json::from_str(&row.get::<String, _>(0))
                .map_err(|e| StoreError::Corrupt(format!("stored gateway: {e}")))?;
            registry.insert(g.gateway.clone(), g);
        }
        *self.registry.write().expect("registry lock") = registry;
        let mut participants = HashMap::new();
        for row in sqlx::query("SELECT body FROM participants")
            .fetch_all(&self.db.pool)
            .await?
        {
            let p: Participant = serde_json::from_str(&row.get::<String, _>(0))
                .map_err(|e| StoreError::Corrupt(format!("stored participant: {e}")))?;
            participants.insert(p.id.clone(), p.public_key);
        }
        *self.participants.write().expect("participants lock") = participants;
        Ok(())
    }

    /// Stores (or updates) gateway registrations.
    pub async fn set_gateways(&self, gateways: &[GatewayEnrollment]) -> Result<(), ServiceError> {
        let mut tx = self.db.pool.begin().await?;
        for g in gateways {
            sqlx::query(
                "INSERT INTO gateways (gateway, body) VALUES ($1, $2) \
                 ON CONFLICT (gateway) DO UPDATE SET body = excluded.body",
            )
            .bind(g.gateway.to_string())
            .bind(serde_json::to_string(g).expect("serialisable"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let mut registry = self.registry.write().expect("registry lock");
        for g in gateways {
            registry.insert(g.gateway.clone(), g.clone());
        }
        Ok(())
    }

    /// Stores (or updates) participant registrations (their keys sign token operations).
    pub async fn set_participants(&self, list: &[Participant]) -> Result<(), ServiceError> {
        let mut tx = self.db.pool.begin().await?;
        for p in list {
            sqlx::query(
                "INSERT INTO participants (participant, public_key, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (participant) DO UPDATE SET public_key = excluded.public_key, body = excluded.body",
            )
            .bind(p.id.to_string())
            .bind(p.public_key.to_string())
            .bind(serde_json::to_string(p).expect("serialisable"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let mut map = self.participants.write().expect("participants lock");
        for p in list {
            map.insert(p.id.clone(), p.public_key);
        }
        Ok(())
    }

    /// Stores a cleared result (results are immutable: a second, different one is ignored).
    /// Returns whether it was new.
    pub async fn add_result(&self, result: &IntervalResult) -> Result<bool, ServiceError> {
        let done = sqlx::query(
            "INSERT INTO results (interval_key, interval_start, minutes, body, settled) \
             VALUES ($1, $2, $3, $4, 0) ON CONFLICT (interval_key) DO NOTHING",
        )
        .bind(result.interval.key())
        .bind(result.interval.start_unix())
        .bind(i64::from(result.interval.length().minutes()))
        .bind(serde_json::to_string(result).expect("serialisable"))
        .execute(&self.db.pool)
        .await?;
        let new = done.rows_affected() > 0;
        if new {
            self.results_changed.notify_one();
        }
        Ok(new)
    }

    /// Verifies a result signed by the market (with the configured market key) and stores it
    /// with the exact signed body bytes and the attestation. A result that does not verify is
    /// not stored (so it is never settled): it is logged as an error naming the interval and
    /// the reason, and counted in `gridmesh_settlement_results_refused_total` (once per
    /// distinct signed result). Returns whether a new result was stored.
    pub async fn add_signed_result(&self, signed: &SignedResult) -> Result<bool, ServiceError> {
        let Some(key) = self.market_key else {
            return Err(ServiceError::BadRequest(
                "no market_public_key is configured, so signed results cannot be verified; set it in the settlement config".into(),
            ));
        };
        let opened = signed.open(&key).and_then(|result| {
            String::from_utf8(signed.body_base64.clone())
                .map(|body| (result, body))
                .map_err(|e| gridmesh_protocol::envelope::SignedResultError::BadBody(e.to_string()))
        });
        let (result, body) = match opened {
            Ok(ok) => ok,
            Err(e) => {
                self.refuse(signed, &e.to_string());
                return Ok(false);
            }
        };
        let attestation = serde_json::to_string(&signed.attestation).expect("serialisable");
        let done = sqlx::query(
            "INSERT INTO results (interval_key, interval_start, minutes, body, settled, attestation) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (interval_key) DO NOTHING",
        )
        .bind(result.interval.key())
        .bind(result.interval.start_unix())
        .bind(i64::from(result.interval.length().minutes()))
        .bind(body)
        .bind(attestation)
        .execute(&self.db.pool)
        .await?;
        let new = done.rows_affected() > 0;
        if new {
            self.results_changed.notify_one();
        }
        Ok(new)
    }

    fn refuse(&self, signed: &SignedResult, why: &str) {
        // Name the interval from the attestation if it decodes, else from the body.
        let interval = <gridmesh_protocol::envelope::ResultAttestation as Signable>::decode(
            &signed.attestation.payload,
        )
        .map(|a| a.interval.key())
        .or_else(|_| {
            serde_json::from_slice::<IntervalResult>(&signed.body_base64).map(|r| r.interval.key())
        })
        .unwrap_or_else(|_| "an unknown interval".to_owned());
        use sha2::Digest as _;
        let fingerprint: [u8; 32] = sha2::Sha256::new()
            .chain_update(&signed.attestation.payload)
            .chain_update(signed.attestation.signature)
            .chain_update(&signed.body_base64)
            .finalize()
            .into();
        let first = self
            .refused
            .lock()
            .expect("refused lock")
            .insert((interval.clone(), fingerprint));
        if first {
            self.metrics.results_refused.add(1);
            tracing::error!(
                interval = %interval,
                reason = %why,
                signer = %signed.attestation.public_key,
                "REFUSED the market result for {interval}: {why}. It is not stored and will not be settled; check market_public_key against the market's GET /market-key"
            );
        }
    }

    /// The start of the newest stored result, if any.
    pub async fn latest_result_start(&self) -> Result<Option<DateTime<Utc>>, ServiceError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(interval_start) FROM results")
            .fetch_one(&self.db.pool)
            .await?;
        Ok(v.and_then(|s| DateTime::from_timestamp(s, 0)))
    }

    /// Verifies and stores a batch of readings in one transaction. `Err` means nothing of the
    /// batch was recorded (retry it); `Ok` has one outcome per submission, in order.
    pub async fn ingest(
        &self,
        items: Vec<Submission>,
    ) -> Result<Vec<ReadingOutcome>, ServiceError> {
        // Parse and check signatures outside the lock (the expensive part).
        let parsed: Vec<Result<(SignedEnvelope, Reading), Reason>> = items
            .iter()
            .map(|s| {
                let env: SignedEnvelope = serde_json::from_slice(&s.raw).map_err(|e| {
                    Reason::new(
                        ReasonCode::Malformed,
                        format!(
                            "not a JSON signed envelope {{payload, signature, public_key}}: {e}"
                        ),
                    )
                })?;
                let reading = verify::decode(&env)?;
                if reading.sequence > i64::MAX as u64 {
                    return Err(Reason::new(ReasonCode::Malformed, "sequence above 2^63-1"));
                }
                Ok((env, reading))
            })
            .collect();
        let envs: Vec<&SignedEnvelope> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(e, _)| e))
            .collect();
        let mut sig_ok = verify::verify_signatures(&envs).into_iter();

        let mut state = self.ingest.lock().await;
        let now = self.clock.now();
        let now_ms = ms(now);
        let mut outcomes = Vec::with_capacity(items.len());
        let mut rows = Vec::new();
        let mut quarantine: Vec<(ReasonCode, QuarantineRow)> = Vec::new();
        {
            let registry = self.registry.read().expect("registry lock");
            for (item, p) in items.iter().zip(&parsed) {
                let (env, reading) = match p {
                    Ok(ok) => ok,
                    Err(reason) => {
                        quarantine.push((reason.code, q_row(item, None, None, reason, now_ms)));
                        outcomes.push(quarantined(None, reason));
                        continue;
                    }
                };
                let signature_ok = sig_ok.next().unwrap_or(false);
                let key = reading.idempotency_key();
                let Some(enrollment) = registry.get(&reading.gateway) else {
                    let reason = Reason::new(
                        ReasonCode::UnknownGateway,
                        format!(
                            "gateway {} is not registered with the market; enrol it (POST /gateways on the market) and resend",
                            reading.gateway
                        ),
                    );
                    quarantine.push((
                        reason.code,
                        q_row(item, Some(&key), Some(reading), &reason, now_ms),
                    ));
                    outcomes.push(quarantined(Some(key), &reason));
                    continue;
                };
                let ctx = Context {
                    enrollment,
                    history: state.chain.gateways.get(&reading.gateway),
                    stored_digest: state.chain.digests.get(&key).copied(),
                    interval_settled: state.settled.contains(&reading.interval.key()),
                    now,
                    limits: self.settings.limits,
                };
                let verdict = verify::check(env, reading, signature_ok, &ctx);
                let status = match &verdict {
                    Verdict::Accept => "accepted",
                    Verdict::Flag(_) => "flagged",
                    Verdict::Late(_) => "late",
                    Verdict::Duplicate => {
                        outcomes.push(ReadingOutcome {
                            key: Some(key),
                            status: ReadingStatus::Duplicate,
                            code: None,
                            reason: None,
                        });
                        continue;
                    }
                    Verdict::Reject(reason) => {
                        quarantine.push((
                            reason.code,
                            q_row(item, Some(&key), Some(reading), reason, now_ms),
                        ));
                        outcomes.push(quarantined(Some(key), reason));
                        continue;
                    }
                };
                let digest = env.digest();
                state.chain.record(reading, digest);
                rows.push(ReadingRow {
                    key: key.clone(),
                    gateway: reading.gateway.to_string(),
                    device: reading.device.to_string(),
                    participant: enrollment.participant.to_string(),
                    interval_start: reading.interval.start_unix(),
                    minutes: i64::from(reading.interval.length().minutes()),
                    sequence: reading.sequence as i64,
                    payload: env.payload.clone(),
                    signature: env.signature.to_vec(),
                    public_key: env.public_key.to_string(),
                    digest: hex::encode(digest),
                    grid_import: reading.deltas.grid_import.0,
                    grid_export: reading.deltas.grid_export.0,
                    pv: reading.deltas.pv.0,
                    battery_discharge: reading.deltas.battery_discharge.0,
                    status,
                    received_at: now_ms,
                });
                match verdict {
                    Verdict::Flag(reason) | Verdict::Late(reason) => {
                        quarantine.push((
                            reason.code,
                            q_row(item, Some(&key), Some(reading), &reason, now_ms),
                        ));
                        outcomes.push(quarantined(Some(key), &reason));
                    }
                    _ => outcomes.push(ReadingOutcome {
                        key: Some(key),
                        status: ReadingStatus::Accepted,
                        code: None,
                        reason: None,
                    }),
                }
            }
        }
        let written = self.write_batch(&rows, &quarantine).await;
        let ids = match written {
            Ok(ids) => ids,
            Err(e) => {
                drop(state);
                // The in-memory state saw readings that were not stored: rebuild it.
                if let Err(reload) = self.load().await {
                    tracing::error!(error = %reload, "could not reload verification state");
                }
                return Err(e);
            }
        };
        drop(state);
        let accepted = outcomes
            .iter()
            .filter(|o| o.status == ReadingStatus::Accepted)
            .count();
        let dups = outcomes
            .iter()
            .filter(|o| o.status == ReadingStatus::Duplicate)
            .count();
        self.metrics.readings_accepted.add(accepted as u64);
        self.metrics.readings_duplicate.add(dups as u64);
        self.metrics
            .readings_quarantined
            .add(quarantine.len() as u64);
        for ((code, row), id) in quarantine.iter().zip(ids) {
            let code = *code;
            let _ = self.events.send(Event::Quarantined {
                id,
                code,
                reason: row.reason.clone(),
            });
        }
        Ok(outcomes)
    }

    async fn write_batch(
        &self,
        rows: &[ReadingRow],
        quarantine: &[(ReasonCode, QuarantineRow)],
    ) -> Result<Vec<i64>, ServiceError> {
        if let Some(pg) = &self.pg {
            let mut tx = pg.begin().await?;
            store::copy_readings(&mut tx, rows).await?;
            let mut ids = Vec::with_capacity(quarantine.len());
            for (_, row) in quarantine {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO quarantine (received_at, source, reading_key, gateway, raw, code, reason, status) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'open') RETURNING id",
                )
                .bind(row.received_at)
                .bind(&row.source)
                .bind(&row.reading_key)
                .bind(&row.gateway)
                .bind(&row.raw)
                .bind(row.code)
                .bind(&row.reason)
                .fetch_one(&mut *tx)
                .await?;
                ids.push(id);
            }
            tx.commit().await?;
            return Ok(ids);
        }
        let mut tx = self.db.pool.begin().await?;
        store::insert_readings(&mut tx, rows, store::rows_per_statement(self.db.backend)).await?;
        let mut ids = Vec::with_capacity(quarantine.len());
        for (_, row) in quarantine {
            ids.push(store::insert_quarantine(&mut tx, row).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Settles every stored result whose interval ended at least the grace period ago.
    pub async fn settle_due(&self) -> Result<Vec<String>, ServiceError> {
        let now = self.clock.now();
        let rows = sqlx::query(
            "SELECT interval_key, interval_start, minutes FROM results WHERE settled = 0 ORDER BY interval_start",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut done = Vec::new();
        for row in rows {
            let key: String = row.get(0);
            let interval = Interval::from_unix(row.get(1), row.get(2))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if interval.end() + self.settings.grace > now {
                continue;
            }
            match self.settle(&key).await {
                Ok(SettleOutcome::Settled { .. }) => done.push(key),
                Ok(SettleOutcome::AlreadySettled) => {}
                // Storage trouble: stop and let the caller retry later.
                Err(e @ ServiceError::Store(_)) => return Err(e),
                // A result that cannot be settled must not block the intervals after it.
                Err(e) => {
                    tracing::error!(interval = %key, error = %e, "cannot settle interval; skipping it")
                }
            }
        }
        Ok(done)
    }

    /// When the next stored, unsettled result becomes due (end + grace), if any.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, ServiceError> {
        let row = sqlx::query(
            "SELECT interval_start, minutes FROM results WHERE settled = 0 ORDER BY interval_start LIMIT 1",
        )
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(match row {
            Some(row) => Some(
                Interval::from_unix(row.get(0), row.get(1))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?
                    .end()
                    + self.settings.grace,
            ),
            None => None,
        })
    }

    /// Settles one interval in one transaction: statements, mints, withheld mints and its
    /// block. Settling again changes nothing.
    pub async fn settle(&self, interval_key: &str) -> Result<SettleOutcome, ServiceError> {
        let mut ingest = self.ingest.lock().await;
        let _ledger = self.ledger.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.pool.begin().await?;
        let row = sqlx::query("SELECT body, settled FROM results WHERE interval_key = $1")
            .bind(interval_key.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "no cleared market result for interval {interval_key} yet"
                ))
            })?;
        if row.get::<i64, _>(1) != 0 {
            return Ok(SettleOutcome::AlreadySettled);
        }
        let result: IntervalResult = serde_json::from_str(&row.get::<String, _>(0))
            .map_err(|e| StoreError::Corrupt(format!("stored result {interval_key}: {e}")))?;
        let readings = metered_for(&mut *tx, &result.interval).await?;
        let (settlement, compliance_rows) = rules::settle_with_envelopes(&result, &readings)
            .map_err(|e| ServiceError::Conflict(format!("cannot settle {interval_key}: {e}")))?;
        let per = store::rows_per_statement(self.db.backend);
        let statement_rows: Vec<Vec<Value>> = settlement
            .statements
            .iter()
            .map(|s| {
                vec![
                    Value::Text(interval_key.to_owned()),
                    Value::Text(s.participant.to_string()),
                    Value::Int(result.interval.start_unix()),
                    Value::Int(s.net.0),
                    Value::Text(serde_json::to_string(s).expect("serialisable")),
                ]
            })
            .collect();
        store::insert_many(
            &mut tx,
            "statements",
            "interval_key, participant, interval_start, net, body",
            &statement_rows,
            per,
        )
        .await?;
        let compliance_values: Vec<Vec<Value>> = compliance_rows
            .iter()
            .map(|c| {
                vec![
                    Value::Text(interval_key.to_owned()),
                    Value::Int(result.interval.start_unix()),
                    Value::Text(c.gateway.to_string()),
                    Value::Text(c.participant.to_string()),
                    Value::Int(c.excess_export_wh.0),
                    Value::Int(c.excess_import_wh.0),
                    Value::Text(serde_json::to_string(c).expect("serialisable")),
                ]
            })
            .collect();
        store::insert_many(
            &mut tx,
            "compliance",
            "interval_key, interval_start, gateway, participant, excess_export, excess_import, body",
            &compliance_values,
            per,
        )
        .await?;
        let started_alerts = alerts_started(&mut tx, &result.interval, &compliance_rows).await?;
        let mut minted = Wh(0);
        let (mut entry_rows, mut lot_rows) = (Vec::new(), Vec::new());
        for plan in &settlement.mints {
            let body = mint_body(interval_key, plan, false).to_bytes();
            let hash = hex::encode(crate::ledger::entry_hash(&body));
            entry_rows.push(vec![
                Value::Text(hash.clone()),
                Value::Text("mint".into()),
                Value::Bytes(body),
                Value::Null,
                Value::Int(ms(now)),
            ]);
            lot_rows.push(vec![
                Value::Text(hash.clone()),
                Value::Text(plan.buyer.to_string()),
                Value::Text(hash),
                Value::Null,
                Value::Int(plan.amount.0),
                Value::Int(plan.amount.0),
                Value::Int(0),
            ]);
            minted = minted.checked_add(plan.amount).unwrap_or(minted);
        }
        store::insert_many(
            &mut tx,
            "entries",
            "hash, kind, body, op_digest, created_at",
            &entry_rows,
            per,
        )
        .await?;
        store::insert_many(
            &mut tx,
            "lots",
            "lot, holder, origin_mint, parent_lot, initial, remaining, retired",
            &lot_rows,
            per,
        )
        .await?;
        for plan in &settlement.withheld {
            sqlx::query(
                "INSERT INTO withheld_mints (interval_key, body, released) VALUES ($1, $2, 0)",
            )
            .bind(interval_key.to_owned())
            .bind(serde_json::to_string(plan).expect("serialisable"))
            .execute(&mut *tx)
            .await?;
        }
        let block = store::seal_block(&mut tx, result.interval, &self.authority, now).await?;
        sqlx::query("UPDATE results SET settled = 1 WHERE interval_key = $1")
            .bind(interval_key.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        ingest.settled.insert(interval_key.to_owned());
        drop(ingest);
        self.metrics.intervals_settled.add(1);
        self.metrics.tokens_minted_wh.add(minted.0.max(0) as u64);
        self.metrics.blocks_sealed.add(1);
        let _ = self.events.send(Event::Settled {
            interval: interval_key.to_owned(),
            statements: settlement.statements.len(),
            minted,
        });
        let _ = self.events.send(Event::Block {
            height: block.header.height,
            hash: block.hash,
            interval: interval_key.to_owned(),
        });
        let violations: Vec<&EnvelopeCompliance> =
            compliance_rows.iter().filter(|c| !c.compliant()).collect();
        self.metrics
            .envelope_violations
            .add(violations.len() as u64);
        let excess_wh: i64 = violations.iter().map(|c| c.excess_export_wh.0).sum();
        self.metrics.envelope_excess_wh.add(excess_wh.max(0) as u64);
        for c in &violations {
            tracing::info!(
                interval = interval_key,
                gateway = %c.gateway,
                participant = %c.participant,
                export_wh = c.export_wh.0,
                export_limit_wh = c.export_limit_wh.0,
                import_wh = c.import_wh.0,
                import_limit_wh = c.import_limit_wh.0,
                "home exceeded its operating envelope"
            );
        }
        for alert in started_alerts {
            self.metrics.envelope_alerts.add(1);
            tracing::warn!(
                gateway = %alert.gateway,
                participant = %alert.participant,
                node = %alert.node,
                first = %alert.first_interval.key(),
                last = %alert.last_interval.key(),
                excess_export_wh = alert.excess_export_wh.0,
                excess_import_wh = alert.excess_import_wh.0,
                "ENVELOPE ALERT: {} exceeded its operating envelope in two settled intervals in a row",
                alert.gateway
            );
            let _ = self.events.send(Event::EnvelopeAlert(alert));
        }
        tracing::info!(
            interval = interval_key,
            height = block.header.height,
            minted = minted.0,
            "interval settled"
        );
        Ok(SettleOutcome::Settled {
            height: block.header.height,
        })
    }

    fn holder_key(&self, participant: &ParticipantId) -> Result<PublicKey, ServiceError> {
        self.participants
            .read()
            .expect("participants lock")
            .get(participant)
            .copied()
            .ok_or_else(|| {
                ServiceError::Forbidden(format!(
                    "participant {participant} is not registered with the market, so its signature cannot be checked"
                ))
            })
    }

    /// Applies a holder-signed transfer of part of a lot.
    pub async fn transfer(&self, envelope: SignedEnvelope) -> Result<Receipt, ServiceError> {
        let t: TokenTransfer = envelope
            .open()
            .map_err(|e| ServiceError::BadRequest(format!("not a valid signed transfer: {e}")))?;
        let key = self.holder_key(&t.from)?;
        if envelope.public_key != key {
            return Err(ServiceError::Forbidden(format!(
                "the transfer is signed by {}, but {}'s registered key is {key}",
                envelope.public_key, t.from
            )));
        }
        if t.from == t.to {
            return Err(ServiceError::BadRequest(
                "a transfer needs a recipient other than the holder".into(),
            ));
        }
        let lot = hex::encode(t.lot);
        let body = EntryBody::Transfer(TransferEntry {
            envelope: envelope.clone(),
            lot: lot.clone(),
            from: t.from.clone(),
            to: t.to.clone(),
            amount: t.amount,
        });
        let receipt = self
            .apply_op(&envelope, &lot, &t.from, t.amount, body, Some(&t.to))
            .await?;
        self.metrics.tokens_transferred_wh.add(t.amount.0 as u64);
        Ok(receipt)
    }

    /// Applies a holder-signed retirement.
    pub async fn retire(&self, envelope: SignedEnvelope) -> Result<Receipt, ServiceError> {
        let r: TokenRetire = envelope
            .open()
            .map_err(|e| ServiceError::BadRequest(format!("not a valid signed retirement: {e}")))?;
        let key = self.holder_key(&r.holder)?;
        if envelope.public_key != key {
            return Err(ServiceError::Forbidden(format!(
                "the retirement is signed by {}, but {}'s registered key is {key}",
                envelope.public_key, r.holder
            )));
        }
        let lot = hex::encode(r.lot);
        let body = EntryBody::Retire(RetireEntry {
            envelope: envelope.clone(),
            lot: lot.clone(),
            holder: r.holder.clone(),
            amount: r.amount,
        });
        let receipt = self
            .apply_op(&envelope, &lot, &r.holder, r.amount, body, None)
            .await?;
        self.metrics.tokens_retired_wh.add(r.amount.0 as u64);
        Ok(receipt)
    }

    async fn apply_op(
        &self,
        envelope: &SignedEnvelope,
        lot: &str,
        holder: &ParticipantId,
        amount: Wh,
        body: EntryBody,
        to: Option<&ParticipantId>,
    ) -> Result<Receipt, ServiceError> {
        let _ledger = self.ledger.lock().await;
        let op = envelope.digest_hex();
        let mut tx = self.db.pool.begin().await?;
        if let Some(row) = sqlx::query("SELECT hash FROM entries WHERE op_digest = $1")
            .bind(op.clone())
            .fetch_optional(&mut *tx)
            .await?
        {
            let entry: String = row.get(0);
            return Ok(Receipt {
                lot: if to.is_some() {
                    entry.clone()
                } else {
                    lot.to_owned()
                },
                entry,
                duplicate: true,
            });
        }
        let row = sqlx::query("SELECT holder, remaining, origin_mint FROM lots WHERE lot = $1")
            .bind(lot.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no token lot {lot}")))?;
        let (owner, remaining, origin): (String, i64, String) =
            (row.get(0), row.get(1), row.get(2));
        if owner != holder.as_str() {
            return Err(ServiceError::Forbidden(format!(
                "lot {lot} is held by {owner}, not {holder}"
            )));
        }
        if remaining < amount.0 {
            return Err(ServiceError::Conflict(format!(
                "lot {lot} holds only {remaining} tokens; {} requested",
                amount.0
            )));
        }
        let now = ms(self.clock.now());
        let entry = store::insert_entry(&mut tx, &body, Some(op), now).await?;
        let retired = if to.is_some() { 0 } else { amount.0 };
        sqlx::query(
            "UPDATE lots SET remaining = remaining - $1, retired = retired + $2 WHERE lot = $3",
        )
        .bind(amount.0)
        .bind(retired)
        .bind(lot.to_owned())
        .execute(&mut *tx)
        .await?;
        if let Some(to) = to {
            store::insert_lot(&mut tx, &entry, to.as_str(), &origin, Some(lot), amount).await?;
        }
        tx.commit().await?;
        Ok(Receipt {
            lot: if to.is_some() {
                entry.clone()
            } else {
                lot.to_owned()
            },
            entry,
            duplicate: false,
        })
    }

    /// An operator accepts a flagged reading: it becomes tokenizable, and withheld mints whose
    /// readings are all accepted now are minted (into the next block).
    pub async fn accept_quarantined(&self, id: i64) -> Result<usize, ServiceError> {
        let _ledger = self.ledger.lock().await;
        let mut tx = self.db.pool.begin().await?;
        let row = sqlx::query("SELECT code, status, reading_key FROM quarantine WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no quarantined reading {id}")))?;
        let (code, status, key): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let acceptable = matches!(code.as_str(), "implausible_export" | "pv_at_night");
        if !acceptable {
            return Err(ServiceError::Conflict(format!(
                "quarantined reading {id} was refused for `{code}`; only readings flagged as implausible can be accepted (a bad signature, replay or conflict never can)"
            )));
        }
        if status == "accepted" {
            return Ok(0);
        }
        let now = ms(self.clock.now());
        sqlx::query("UPDATE quarantine SET status = 'accepted', resolved_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE readings SET status = 'accepted' WHERE reading_key = $1 AND status = 'flagged'",
        )
        .bind(key.unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        let mut released = 0;
        for row in sqlx::query(
            "SELECT id, interval_key, body FROM withheld_mints WHERE released = 0 ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let (wid, interval, body): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            let plan: MintPlan = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("withheld mint {wid}: {e}")))?;
            let mut clear = true;
            for d in plan.seller_readings.iter().chain(&plan.buyer_readings) {
                let flagged: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM readings WHERE digest = $1 AND status = 'flagged'",
                )
                .bind(d.clone())
                .fetch_one(&mut *tx)
                .await?;
                clear &= flagged == 0;
            }
            if clear {
                mint(&mut tx, &interval, &plan, true, now).await?;
                sqlx::query("UPDATE withheld_mints SET released = 1 WHERE id = $1")
                    .bind(wid)
                    .execute(&mut *tx)
                    .await?;
                released += 1;
            }
        }
        tx.commit().await?;
        Ok(released)
    }

    /// Statements, filtered by participant and/or interval (its key `START/MINUTES` or its
    /// RFC 3339 start).
    pub async fn statements(
        &self,
        participant: Option<&str>,
        interval: Option<&str>,
    ) -> Result<Vec<Statement>, ServiceError> {
        let rows = sqlx::query(
            "SELECT body FROM statements WHERE ($1 = '' OR participant = $1) AND ($2 = '' OR interval_key = $2 OR interval_key LIKE $3) \
             ORDER BY interval_start, participant",
        )
        .bind(participant.unwrap_or("").to_owned())
        .bind(interval.unwrap_or("").to_owned())
        .bind(format!("{}/%", interval.unwrap_or("")))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(&r.get::<String, _>(0))
                    .map_err(|e| StoreError::Corrupt(format!("statement: {e}")).into())
            })
            .collect()
    }

    /// Compliance rows (metered energy against the operating envelope) of at most `limit`
    /// intervals starting at or after `since`, oldest first, every row of each interval
    /// (only `participant`'s rows when given).
    pub async fn compliance(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
        participant: Option<&str>,
    ) -> Result<Vec<EnvelopeCompliance>, ServiceError> {
        let since = since.map_or(i64::MIN, |t| t.timestamp());
        let who = participant.unwrap_or("").to_owned();
        let starts: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT interval_start FROM compliance \
             WHERE interval_start >= $1 AND ($2 = '' OR participant = $2) \
             ORDER BY interval_start LIMIT $3",
        )
        .bind(since)
        .bind(who.clone())
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        let (Some(first), Some(last)) = (starts.first(), starts.last()) else {
            return Ok(Vec::new());
        };
        sqlx::query(
            "SELECT body FROM compliance \
             WHERE interval_start >= $1 AND interval_start <= $2 AND ($3 = '' OR participant = $3) \
             ORDER BY interval_start, gateway",
        )
        .bind(*first)
        .bind(*last)
        .bind(who)
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| parse_compliance(&r.get::<String, _>(0)))
        .collect()
    }

    /// Envelope alerts over every settled interval (see [`compliance::alerts`]), newest first,
    /// at most `limit`.
    pub async fn envelope_alerts(&self, limit: usize) -> Result<Vec<EnvelopeAlert>, ServiceError> {
        let mut settled = Vec::new();
        for r in sqlx::query("SELECT interval_start, minutes FROM results WHERE settled = 1")
            .fetch_all(&self.db.pool)
            .await?
        {
            settled.push(
                Interval::from_unix(r.get(0), r.get(1))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
        }
        let violations =
            sqlx::query("SELECT body FROM compliance WHERE excess_export > 0 OR excess_import > 0")
                .fetch_all(&self.db.pool)
                .await?
                .iter()
                .map(|r| parse_compliance(&r.get::<String, _>(0)))
                .collect::<Result<Vec<_>, _>>()?;
        let mut alerts = compliance::alerts(&settled, &violations);
        alerts.truncate(limit);
        Ok(alerts)
    }

    /// Measured flows of at most `limit` intervals with a stored result that starts at or after
    /// `since` and has ended by now, oldest first: per branch of the result's network and the
    /// root, from the readings settlement uses for money (see [`compliance::measured_flows`]).
    pub async fn flows(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<MeasuredFlows>, ServiceError> {
        let now = self.clock.now().timestamp();
        let rows = sqlx::query(
            "SELECT interval_key, body FROM results \
             WHERE interval_start >= $1 AND interval_start + minutes * 60 <= $2 \
             ORDER BY interval_start LIMIT $3",
        )
        .bind(since.map_or(i64::MIN, |t| t.timestamp()))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        let enrolled: BTreeMap<GatewayId, NodeId> = self
            .registry
            .read()
            .expect("registry lock")
            .values()
            .map(|g| (g.gateway.clone(), g.node.clone()))
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let key: String = r.get(0);
            let result: IntervalResult = serde_json::from_str(&r.get::<String, _>(1))
                .map_err(|e| StoreError::Corrupt(format!("stored result {key}: {e}")))?;
            let readings = metered_for(&self.db.pool, &result.interval).await?;
            let (_, by_gateway) = rules::meter(&readings).map_err(|e| {
                StoreError::Corrupt(format!("metered energy of {key} overflows: {e}"))
            })?;
            out.push(
                compliance::measured_flows(&result, &enrolled, &by_gateway).map_err(|e| {
                    StoreError::Corrupt(format!("measured flows of {key} overflow: {e}"))
                })?,
            );
        }
        Ok(out)
    }

    /// A participant's holdings with provenance.
    pub async fn balances(&self, participant: &str) -> Result<Balances, ServiceError> {
        let rows = sqlx::query(
            "SELECT l.lot, l.remaining, l.retired, l.initial, l.parent_lot, l.origin_mint, e.body \
             FROM lots l JOIN entries e ON e.hash = l.origin_mint WHERE l.holder = $1 ORDER BY l.lot",
        )
        .bind(participant.to_owned())
        .fetch_all(&self.db.pool)
        .await?;
        let mut holdings = Vec::new();
        let (mut total, mut retired) = (0i64, 0i64);
        for r in rows {
            let body: Vec<u8> = r.get(6);
            let origin: EntryBody = serde_json::from_slice(&body)
                .map_err(|e| StoreError::Corrupt(format!("entry: {e}")))?;
            total += r.get::<i64, _>(1);
            retired += r.get::<i64, _>(2);
            holdings.push(Holding {
                lot: r.get(0),
                amount: Wh(r.get(1)),
                retired: Wh(r.get(2)),
                received: Wh(r.get(3)),
                parent_lot: r.get(4),
                origin_mint: r.get(5),
                provenance: origin,
            });
        }
        Ok(Balances {
            participant: participant.to_owned(),
            balance: Wh(total),
            retired: Wh(retired),
            holdings,
        })
    }

    /// Block list (newest first, at most `limit`).
    pub async fn blocks(&self, limit: i64) -> Result<Vec<BlockSummary>, ServiceError> {
        let rows = sqlx::query("SELECT height FROM blocks ORDER BY height DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(b) = self.block(r.get(0)).await? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// One block with its entry hashes.
    pub async fn block(&self, height: i64) -> Result<Option<BlockSummary>, ServiceError> {
        let Some(r) =
            sqlx::query("SELECT header, hash, signature, public_key FROM blocks WHERE height = $1")
                .bind(height)
                .fetch_optional(&self.db.pool)
                .await?
        else {
            return Ok(None);
        };
        let header = crate::ledger::BlockHeader::from_bytes(&r.get::<Vec<u8>, _>(0))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let entries: Vec<String> =
            sqlx::query_scalar("SELECT hash FROM entries WHERE block_height = $1 ORDER BY seq")
                .bind(height)
                .fetch_all(&self.db.pool)
                .await?;
        Ok(Some(BlockSummary {
            header: BlockHeaderView {
                height: header.height,
                interval: header.interval.key(),
                prev_hash: header.prev_hash,
                merkle_root: header.merkle_root,
                entry_count: header.entry_count,
                sealed_at: header.sealed_at,
            },
            hash: r.get(1),
            signature: hex::encode(r.get::<Vec<u8>, _>(2)),
            public_key: r.get(3),
            entries,
        }))
    }

    /// A stored reading by the SHA-256 of its signed payload (the digest token provenance
    /// names): the signed envelope verbatim, the decoded reading and its status.
    pub async fn reading_by_digest(
        &self,
        digest: &str,
    ) -> Result<Option<StoredReading>, ServiceError> {
        let Some(r) = sqlx::query(
            "SELECT reading_key, participant, payload, signature, public_key, status \
             FROM readings WHERE digest = $1",
        )
        .bind(digest.to_owned())
        .fetch_optional(&self.db.pool)
        .await?
        else {
            return Ok(None);
        };
        let corrupt = |what: String| StoreError::Corrupt(format!("reading {digest}: {what}"));
        let payload: Vec<u8> = r.get(2);
        let signature: Vec<u8> = r.get(3);
        let reading = <Reading as gridmesh_protocol::signing::Signable>::decode(&payload)
            .map_err(|e| corrupt(e.to_string()))?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| corrupt("signature is not 64 bytes".into()))?;
        let public_key: PublicKey = r
            .get::<String, _>(4)
            .parse()
            .map_err(|e| corrupt(format!("public key: {e}")))?;
        let status: String = r.get(5);
        let status = StoredReadingStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("unknown status `{status}`")))?;
        Ok(Some(StoredReading {
            digest: digest.to_owned(),
            key: r.get(0),
            participant: r.get(1),
            status,
            envelope: SignedEnvelope {
                payload,
                signature,
                public_key,
            },
            reading,
        }))
    }

    /// One entry with its inclusion proof (once it is in a block).
    pub async fn entry(&self, hash: &str) -> Result<Option<EntryView>, ServiceError> {
        let Some(r) =
            sqlx::query("SELECT seq, kind, body, block_height FROM entries WHERE hash = $1")
                .bind(hash.to_owned())
                .fetch_optional(&self.db.pool)
                .await?
        else {
            return Ok(None);
        };
        let body_bytes: Vec<u8> = r.get(2);
        let body: EntryBody = serde_json::from_slice(&body_bytes)
            .map_err(|e| StoreError::Corrupt(format!("entry: {e}")))?;
        let height: Option<i64> = r.get(3);
        let mut proof = None;
        let mut root = None;
        if let Some(h) = height {
            let hashes: Vec<String> =
                sqlx::query_scalar("SELECT hash FROM entries WHERE block_height = $1 ORDER BY seq")
                    .bind(h)
                    .fetch_all(&self.db.pool)
                    .await?;
            let leaves: Vec<[u8; 32]> = hashes.iter().map(|h| crate::ledger::hex32(h)).collect();
            let index = hashes.iter().position(|x| x == hash).unwrap_or(0);
            proof = Some(inclusion_proof(&leaves, index));
            root = Some(hex::encode(crate::ledger::merkle_root(&leaves)));
        }
        Ok(Some(EntryView {
            hash: hash.to_owned(),
            seq: r.get(0),
            kind: r.get(1),
            body,
            // The exact bytes that were hashed, so anyone can recompute the leaf.
            body_base64: base64::engine::general_purpose::STANDARD.encode(&body_bytes),
            block_height: height,
            merkle_root: root,
            proof,
            leaf_hashing: LEAF_HASHING.to_owned(),
        }))
    }

    /// The quarantine list (newest first).
    pub async fn quarantine(&self, limit: i64) -> Result<Vec<QuarantineItem>, ServiceError> {
        let rows = sqlx::query(
            "SELECT id, received_at, source, reading_key, gateway, raw, code, reason, status \
             FROM quarantine ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let raw: Vec<u8> = r.get(5);
                let code: String = r.get(6);
                let code = ReasonCode::parse(&code).ok_or_else(|| {
                    StoreError::Corrupt(format!("quarantine {id}: unknown code `{code}`"))
                })?;
                let status: String = r.get(8);
                let status = QuarantineStatus::parse(&status).ok_or_else(|| {
                    StoreError::Corrupt(format!("quarantine {id}: unknown status `{status}`"))
                })?;
                Ok(QuarantineItem {
                    id,
                    received_at: DateTime::from_timestamp_millis(r.get(1)),
                    source: r.get(2),
                    key: r.get(3),
                    gateway: r.get(4),
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                    acceptable: code.operator_acceptable(),
                    code,
                    reason: r.get(7),
                    status,
                })
            })
            .collect()
    }
}

fn quarantined(key: Option<String>, reason: &Reason) -> ReadingOutcome {
    ReadingOutcome {
        key,
        status: ReadingStatus::Quarantined,
        code: Some(reason.code),
        reason: Some(reason.message.clone()),
    }
}

/// The envelope alerts that start with `interval` (being settled in `tx`): homes over their
/// envelope now and in the previous settled interval, but not in the one before.
async fn alerts_started(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    interval: &Interval,
    rows: &[EnvelopeCompliance],
) -> Result<Vec<EnvelopeAlert>, ServiceError> {
    if rows.iter().all(EnvelopeCompliance::compliant) {
        return Ok(Vec::new());
    }
    let mut window = vec![*interval];
    for r in sqlx::query(
        "SELECT interval_start, minutes FROM results WHERE settled = 1 AND interval_start < $1 \
         ORDER BY interval_start DESC LIMIT 2",
    )
    .bind(interval.start_unix())
    .fetch_all(&mut **tx)
    .await?
    {
        window.push(
            Interval::from_unix(r.get(0), r.get(1))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
    }
    let oldest = window.iter().map(Interval::start_unix).min().unwrap_or(0);
    let mut violations: Vec<EnvelopeCompliance> = rows.to_vec();
    for r in sqlx::query(
        "SELECT body FROM compliance WHERE interval_start >= $1 AND interval_start < $2 \
         AND (excess_export > 0 OR excess_import > 0)",
    )
    .bind(oldest)
    .bind(interval.start_unix())
    .fetch_all(&mut **tx)
    .await?
    {
        violations.push(parse_compliance(&r.get::<String, _>(0))?);
    }
    Ok(compliance::alerts(&window, &violations)
        .into_iter()
        .filter(|a| a.intervals == 2 && a.last_interval == *interval)
        .collect())
}

fn parse_compliance(body: &str) -> Result<EnvelopeCompliance, ServiceError> {
    serde_json::from_str(body)
        .map_err(|e| StoreError::Corrupt(format!("stored compliance row: {e}")).into())
}

fn q_row(
    item: &Submission,
    key: Option<&str>,
    reading: Option<&Reading>,
    reason: &Reason,
    now_ms: i64,
) -> QuarantineRow {
    QuarantineRow {
        source: item.source.clone(),
        reading_key: key.map(str::to_owned),
        gateway: reading.map(|r| r.gateway.to_string()),
        raw: item.raw.clone(),
        code: reason.code.as_str(),
        reason: reason.message.clone(),
        received_at: now_ms,
    }
}

/// The readings of one interval that settlement uses for money (`accepted` and `flagged`),
/// ordered by reading key.
async fn metered_for<'e, E>(executor: E, interval: &Interval) -> Result<Vec<MeterRow>, ServiceError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
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

fn mint_body(interval: &str, plan: &MintPlan, released: bool) -> EntryBody {
    EntryBody::Mint(MintEntry {
        interval: interval.to_owned(),
        trade_index: plan.trade_index,
        seller: plan.seller.clone(),
        buyer: plan.buyer.clone(),
        seller_order: plan.seller_order.clone(),
        buyer_order: plan.buyer_order.clone(),
        source: plan.source.clone(),
        price: plan.price,
        amount: plan.amount,
        seller_readings: plan.seller_readings.clone(),
        buyer_readings: plan.buyer_readings.clone(),
        released,
    })
}

async fn mint(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    interval: &str,
    plan: &MintPlan,
    released: bool,
    now_ms: i64,
) -> Result<String, ServiceError> {
    let body = mint_body(interval, plan, released);
    let hash = store::insert_entry(tx, &body, None, now_ms).await?;
    store::insert_lot(tx, &hash, plan.buyer.as_str(), &hash, None, plan.amount).await?;
    Ok(hash)
}
