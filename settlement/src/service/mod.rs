//! The settlement service's core: ingest batches of signed readings, settle intervals, apply
//! token operations and answer queries. Owns the in-memory verification state; every write is
//! one database transaction, and every statement is in [`crate::store`].
//!
//! - `ingest`: verify and store batches of readings (quarantine what fails), authenticate
//!   gateway uploads, hold readings of gateways not enrolled yet;
//! - [`admission`]: rate limits, junk sample and held-reading bounds;
//! - `settle`: results from the market, settling due intervals into blocks;
//! - `tokens`: transfers, retirements and the operator's acceptance of flagged
//!   readings;
//! - `queries`: the read side (statements, balances, ledger, quarantine,
//!   compliance, alerts, flows).

pub mod admission;
mod ingest;
mod queries;
mod settle;
mod tokens;

use crate::metrics::Metrics;
use crate::store::{self, StoreError};
use crate::verify::{ChainState, Limits};
use chrono::{DateTime, Utc};
use gridmesh_protocol::envelope::EnvelopeCompliance;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::rotation::{KeyPeriod, ParticipantWithKeys};
use gridmesh_protocol::signing::{PublicKey, Signable};
use gridmesh_protocol::verify_stage::{StageConfig, VerifyStage};
use gridmesh_protocol::{GatewayId, ParticipantId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::db::Database;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use tokio::sync::{Mutex, Notify, broadcast};

pub use gridmesh_protocol::api::readings::{ReadingOutcome, ReadingStatus};
pub use gridmesh_protocol::api::settlement::Event;
pub use gridmesh_protocol::api::settlement::TokenReceipt as Receipt;
pub use ingest::PreparedBatch;

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
    /// The [`Service::state_since`] the state was last bounded by (Unix s): at start-up, then
    /// whenever it has moved on by [`PRUNE_EVERY_SECONDS`].
    since: i64,
}

/// How far the horizon moves on before ingest forgets what fell behind it (Unix s).
const PRUNE_EVERY_SECONDS: i64 = 3600;

impl IngestState {
    /// Bounds the state by the horizon at runtime, as [`Service::load`] does at start-up:
    /// forgets the digests of readings whose interval starts before `since` (a resubmitted
    /// one is looked up in the database) and every gateway's history before it except each
    /// device's latest point. Does nothing until `since` has moved on by
    /// [`PRUNE_EVERY_SECONDS`] since the last time.
    fn prune(&mut self, since: i64) {
        if since < self.since.saturating_add(PRUNE_EVERY_SECONDS) {
            return;
        }
        self.since = since;
        self.chain
            .digests
            .retain(|key, _| key_interval_start(key).is_none_or(|start| start >= since));
        self.chain
            .gateways
            .retain(|_, history| !history.prune_before(since));
    }
}

/// The interval start (Unix s) an idempotency key names: its last `/`-separated part
/// (`gateway/device/start`, [`Reading::idempotency_key`]).
fn key_interval_start(key: &str) -> Option<i64> {
    key.rsplit_once('/')?.1.parse().ok()
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
    participants: RwLock<HashMap<ParticipantId, Keys>>,
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
    /// Rate limits and junk/held bounds of ingest (see [`admission`]).
    admission: std::sync::Mutex<admission::Admission>,
    /// Where an unknown gateway makes settlement ask the market again.
    registry_source: std::sync::OnceLock<ingest::RegistryRefresh>,
    /// One re-admission of held readings at a time.
    readmitting: Mutex<()>,
    /// Batched strict signature verification on threads of its own (issue 16).
    verifier: std::sync::Arc<VerifyStage>,
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
            admission: std::sync::Mutex::new(admission::Admission::default()),
            registry_source: std::sync::OnceLock::new(),
            readmitting: Mutex::new(()),
            verifier: std::sync::Arc::new(VerifyStage::new(StageConfig::default())),
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
        // Bounded by the horizon (issue 16): readings older than it are refused as too old,
        // so only the boundary reading of each gateway and device is needed from before it;
        // a resubmitted old reading is looked up in the database (`store_prepared`).
        let since = self.state_since().timestamp();
        for payload in store::readings::payloads_since(&self.db.pool, since).await? {
            let reading = Reading::decode(&payload)
                .map_err(|e| StoreError::Corrupt(format!("stored reading: {e}")))?;
            let digest: [u8; 32] =
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&payload))
                    .into();
            state.chain.record(&reading, digest);
        }
        state.since = since;
        state.settled = store::intervals::settled_keys(&self.db.pool)
            .await?
            .into_iter()
            .collect();
        *self.ingest.lock().await = state;
        let mut registry = HashMap::new();
        for body in store::registry::gateway_bodies(&self.db.pool).await? {
            let g: GatewayEnrollment = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("stored gateway: {e}")))?;
            registry.insert(g.gateway.clone(), g);
        }
        *self.registry.write().expect("registry lock") = registry;
        let mut participants = HashMap::new();
        for body in store::registry::participant_bodies(&self.db.pool).await? {
            // Bodies stored before key rotation have no `keys`: the key is valid from 0.
            let p: ParticipantWithKeys = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("stored participant: {e}")))?;
            participants.insert(p.participant.id.clone(), Keys::of(&p));
        }
        *self.participants.write().expect("participants lock") = participants;
        let held = store::readings::held_counts(&self.db.pool).await?;
        self.admission
            .lock()
            .expect("admission lock")
            .set_held(held);
        Ok(())
    }

    /// Readings whose interval starts before this are not in the verification state (only
    /// each gateway's and device's latest one): the horizon before now, less a day of margin
    /// for the interval's length and the clock's skew.
    fn state_since(&self) -> DateTime<Utc> {
        self.clock.now() - self.settings.limits.horizon - chrono::Duration::days(1)
    }

    /// How many readings the verification state holds digests of (start-up loads those within
    /// the horizon, [`Service::state_since`]; ingest adds what it stores and forgets what
    /// falls behind the horizon).
    pub async fn verification_state_len(&self) -> usize {
        self.ingest.lock().await.chain.digests.len()
    }

    /// The participant's key as the market registered it (`None` = not registered).
    pub fn participant_key(&self, participant: &ParticipantId) -> Option<PublicKey> {
        self.participants
            .read()
            .expect("participants lock")
            .get(participant)
            .map(|k| k.current)
    }

    /// The participant's key valid at `t` (Unix seconds) by the periods the market published
    /// (`None` = not registered, or no key valid then).
    pub fn participant_key_at(&self, participant: &ParticipantId, t: i64) -> Option<PublicKey> {
        self.participants
            .read()
            .expect("participants lock")
            .get(participant)
            .and_then(|k| k.at(t))
    }

    /// The participant's keys that were replaced at or before `t`, each with the time (Unix
    /// seconds) it stopped signing, latest first.
    pub fn replaced_keys(&self, participant: &ParticipantId, t: i64) -> Vec<(PublicKey, i64)> {
        let map = self.participants.read().expect("participants lock");
        let Some(keys) = map.get(participant) else {
            return Vec::new();
        };
        let mut out: Vec<(PublicKey, i64)> = keys
            .periods
            .iter()
            .filter_map(|p| {
                p.valid_until
                    .filter(|until| *until <= t)
                    .map(|u| (p.public_key, u))
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.1));
        out
    }

    /// The household a gateway meters, as the market enrolled it (`None` = not enrolled).
    pub fn gateway_owner(&self, gateway: &str) -> Option<ParticipantId> {
        let gateway = GatewayId::new(gateway).ok()?;
        self.registry
            .read()
            .expect("registry lock")
            .get(&gateway)
            .map(|g| g.participant.clone())
    }

    /// Stores (or updates) gateway registrations.
    pub async fn set_gateways(&self, gateways: &[GatewayEnrollment]) -> Result<(), ServiceError> {
        store::registry::upsert_gateways(&self.db, gateways).await?;
        let mut registry = self.registry.write().expect("registry lock");
        for g in gateways {
            registry.insert(g.gateway.clone(), g.clone());
        }
        Ok(())
    }

    /// Stores (or updates) participant registrations (their keys sign token operations); each
    /// key is valid from 0 on. See [`Service::set_participants_with_keys`] for rotated keys.
    pub async fn set_participants(&self, list: &[Participant]) -> Result<(), ServiceError> {
        let list: Vec<ParticipantWithKeys> = list
            .iter()
            .map(|p| ParticipantWithKeys {
                participant: p.clone(),
                keys: Vec::new(),
            })
            .collect();
        self.set_participants_with_keys(&list).await
    }

    /// Stores (or updates) participant registrations with every key's validity period, as
    /// the market serves them (`keys` empty: the single key is valid from 0 on).
    pub async fn set_participants_with_keys(
        &self,
        list: &[ParticipantWithKeys],
    ) -> Result<(), ServiceError> {
        store::registry::upsert_participants(&self.db, list).await?;
        let mut map = self.participants.write().expect("participants lock");
        for p in list {
            map.insert(p.participant.id.clone(), Keys::of(p));
        }
        Ok(())
    }
}

/// A participant's key in force and every key's validity period.
#[derive(Debug, Clone)]
struct Keys {
    current: PublicKey,
    periods: Vec<KeyPeriod>,
}

impl Keys {
    fn of(p: &ParticipantWithKeys) -> Self {
        let periods = if p.keys.is_empty() {
            vec![KeyPeriod {
                public_key: p.participant.public_key,
                valid_from: 0,
                valid_until: None,
            }]
        } else {
            p.keys.clone()
        };
        Keys {
            current: p.participant.public_key,
            periods,
        }
    }

    fn at(&self, t: i64) -> Option<PublicKey> {
        self.periods
            .iter()
            .rev()
            .find(|p| p.covers(t))
            .map(|p| p.public_key)
    }
}

fn parse_compliance(body: &str) -> Result<EnvelopeCompliance, ServiceError> {
    serde_json::from_str(body)
        .map_err(|e| StoreError::Corrupt(format!("stored compliance row: {e}")).into())
}

/// A Unix time as RFC 3339 (or the raw seconds if out of range).
pub(crate) fn unix_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
}
