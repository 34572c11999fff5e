//! The market service's state and operations: order intake, cancellation, clearing one interval.
//!
//! Order intake and clearing meet at one lock: an order holds a read guard from its gate
//! check until it is committed, and clearing takes the write guard to close the gate. So an
//! order that got `201 Created` is always in the book its interval clears, and no order enters
//! a book after it was cleared. Orders are written in batches (one transaction for all the
//! orders waiting), which keeps intake fast on SQLite's synchronous commits.
//!
//! Clearing an interval applies the operator limit overrides in force, clears, computes every
//! enrolled gateway's operating envelope, signs the result's exact body bytes and one envelope
//! per gateway with the market's key, and stores all of it in one transaction.

use crate::book::{BookOrder, MAX_ORDERS, Owners, check_order_values};
use crate::clearing::{clear, interval_result};
use crate::config::MarketConfig;
use crate::envelopes::envelopes_for;
use crate::error::MarketError;
use crate::metrics::{Metrics, OrderStages};
use crate::network::Topology;
use crate::prices::PricingRule;
use crate::store::{Store, StoredOrder, StoredResult};
use chrono::{DateTime, TimeZone, Utc};
use gridmesh_protocol::envelope::{
    EnvelopeBasis, OperatingEnvelope, ResultAttestation, SignedResult,
};
use gridmesh_protocol::grid::LimitOverride;
use gridmesh_protocol::keys::{KeyFileError, SigningKeyPair};
use gridmesh_protocol::layout::LayoutError;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::order::{Order, OrderCancel};
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::rotation::{KeyPeriod, KeyRotation, ParticipantWithKeys};
use gridmesh_protocol::signing::{PublicKey, Signable, SigningError};
use gridmesh_protocol::verify_stage::{StageConfig, VerifyStage};
use gridmesh_protocol::{GatewayId, Interval, ParticipantId, SignedEnvelope, ZoneId};
use gridmesh_runtime::clock::Clock;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How far in the past (seconds, market time) a key rotation's `valid_from` may lie: room for
/// the request's way to the market, not for back-dating.
pub const ROTATION_PAST_SLACK_S: i64 = 300;

/// How far ahead orders are accepted.
const MAX_DAYS_AHEAD: i64 = 7;

/// Most current envelopes `GET /envelopes/{gateway}` returns.
pub const MAX_CURRENT_ENVELOPES: i64 = 4;

/// Loads the market's signing key, creating the file (mode 0600) if it is absent; with no path,
/// an ephemeral key.
pub fn load_or_create_key(path: Option<&std::path::Path>) -> Result<SigningKeyPair, KeyFileError> {
    let Some(path) = path else {
        let key = SigningKeyPair::generate();
        tracing::warn!(
            public_key = %key.public_key(),
            "no signing_key configured: results and envelopes are signed with an ephemeral key; \
             gateways and settlement pinning the market key will refuse them after a restart"
        );
        return Ok(key);
    };
    match SigningKeyPair::load(path) {
        Ok(key) => {
            tracing::info!(public_key = %key.public_key(), path = %path.display(), "market signing key loaded");
            Ok(key)
        }
        Err(KeyFileError::Missing { .. }) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| KeyFileError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            let key = match SigningKeyPair::generate_file(path) {
                // Created by someone else in between: use theirs.
                Err(KeyFileError::AlreadyExists { .. }) => SigningKeyPair::load(path)?,
                other => other?,
            };
            tracing::info!(
                public_key = %key.public_key(),
                path = %path.display(),
                "generated the market signing key; pin this public key as market_public_key in gateways and settlement"
            );
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_opt(t.timestamp(), 0).single().unwrap_or(t)
}

/// One order waiting to be written.
pub(crate) struct WriteJob {
    order: StoredOrder,
    done: oneshot::Sender<Result<bool, String>>,
}

/// The shared state of a running market.
pub struct Market {
    /// Storage.
    pub store: Store,
    /// The configuration it runs with.
    pub config: MarketConfig,
    /// Market time.
    pub clock: Clock,
    /// Metrics.
    pub metrics: Metrics,
    topology: RwLock<Arc<Topology>>,
    participants: RwLock<HashMap<ParticipantId, Participant>>,
    /// Every participant's key periods, oldest first.
    keys: RwLock<HashMap<ParticipantId, Vec<KeyPeriod>>>,
    /// Start (Unix s) of the latest interval whose gate is closed by the clearing.
    gate: tokio::sync::RwLock<i64>,
    events: broadcast::Sender<Arc<IntervalResult>>,
    writer: mpsc::Sender<WriteJob>,
    key: SigningKeyPair,
    /// Batched strict signature verification off the async threads (issue 16).
    verifier: VerifyStage,
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market")
            .field("zone", &self.config.zone)
            .finish()
    }
}

fn signing_error(e: SigningError, participant: &str) -> MarketError {
    match e {
        SigningError::BadSignature | SigningError::BadPublicKey => MarketError::BadSignature,
        SigningError::KeyMismatch { .. } => MarketError::KeyMismatch(participant.to_owned()),
        SigningError::Layout(l) => layout_error(l),
    }
}

fn layout_error(e: LayoutError) -> MarketError {
    match &e {
        LayoutError::BadField {
            field: "quantity_wh",
            reason,
            ..
        } => {
            let q = reason
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok());
            MarketError::InvalidQuantity(q.unwrap_or(0))
        }
        _ => MarketError::Malformed(e.to_string()),
    }
}

impl Market {
    /// Builds the state and the order writer's receiving end.
    pub(crate) async fn new(
        config: MarketConfig,
        clock: Clock,
    ) -> Result<(Arc<Self>, mpsc::Receiver<WriteJob>), MarketError> {
        ZoneId::new(&config.zone).map_err(|e| {
            MarketError::InvalidRequest(format!(
                "`zone` in the market's config: {e} (orders and readings sign it in a 32-byte field)"
            ))
        })?;
        let key = load_or_create_key(config.signing_key.as_deref())?;
        let store = Store::open(&config.database_url, config.interval_minutes).await?;
        let network = match store.topology().await? {
            Some(n) => n,
            None => {
                let n = config.topology.clone().unwrap_or_else(default_network);
                store.put_topology(&n).await?;
                n
            }
        };
        let topology =
            Topology::new(&network).map_err(|e| MarketError::InvalidTopology(e.to_string()))?;
        let participants = store
            .participants()
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let mut keys: HashMap<ParticipantId, Vec<KeyPeriod>> = HashMap::new();
        for (id, period) in store.key_periods().await? {
            keys.entry(id).or_default().push(period);
        }
        let gate = store.last_result_start().await?.unwrap_or(i64::MIN);
        let (events, _) = broadcast::channel(64);
        let (writer, jobs) = mpsc::channel(4096);
        let market = Market {
            store,
            config,
            clock,
            metrics: Metrics::default(),
            topology: RwLock::new(Arc::new(topology)),
            participants: RwLock::new(participants),
            keys: RwLock::new(keys),
            gate: tokio::sync::RwLock::new(gate),
            events,
            writer,
            key,
            verifier: VerifyStage::new(StageConfig::default()),
        };
        Ok((Arc::new(market), jobs))
    }

    /// The public key that signs results and envelopes (`GET /market-key`).
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The secret behind the pseudonyms of public results ([`crate::public`]): derived from
    /// the market's signing key (a deterministic ed25519 signature of a fixed tag, hashed), so
    /// it is as secret and as stable as that key and needs no configuration of its own.
    pub fn pseudonym_secret(&self) -> [u8; 32] {
        let signature = self.key.sign_raw(b"gridmesh/pseudonym-secret/v1");
        <sha2::Sha256 as sha2::Digest>::digest(signature).into()
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.read().expect("topology lock").clone()
    }

    /// Validates, stores and installs a new topology (used from the next clearing on).
    pub async fn set_topology(
        &self,
        network: gridmesh_protocol::grid::Network,
    ) -> Result<(), MarketError> {
        let topology =
            Topology::new(&network).map_err(|e| MarketError::InvalidTopology(e.to_string()))?;
        self.store.put_topology(&network).await?;
        *self.topology.write().expect("topology lock") = Arc::new(topology);
        Ok(())
    }

    /// Registers a participant. Registration is create-only: an id registered before with
    /// anything different (an attacker's key, another node) is refused with
    /// [`MarketError::Conflict`] and the registered key stays in force. Repeating exactly the
    /// registered record changes nothing and answers [`Registration::Unchanged`].
    pub async fn register_participant(&self, p: Participant) -> Result<Registration, MarketError> {
        if self.topology().index_of(&p.node).is_none() {
            return Err(MarketError::UnknownNode(p.node.to_string()));
        }
        let weak = p.public_key.verifying_key().map(|k| k.is_weak());
        if weak != Ok(false) {
            return Err(MarketError::InvalidRequest(
                "public_key is not a usable ed25519 key (invalid or of small order)".into(),
            ));
        }
        if !self.store.insert_participant(&p).await? {
            let stored = self.store.participants().await?;
            return match stored.iter().find(|s| s.id == p.id) {
                Some(s) if *s == p => Ok(Registration::Unchanged),
                _ => Err(MarketError::Conflict(format!(
                    "participant `{}` is already registered; registration is create-only (a new key needs a key rotation signed by the registered key)",
                    p.id
                ))),
            };
        }
        self.keys.write().expect("keys lock").insert(
            p.id.clone(),
            vec![KeyPeriod {
                public_key: p.public_key,
                valid_from: 0,
                valid_until: None,
            }],
        );
        self.participants
            .write()
            .expect("participants lock")
            .insert(p.id.clone(), p);
        Ok(Registration::Created)
    }

    /// Every participant, each with the key in force now.
    pub fn participants(&self) -> Vec<Participant> {
        let ids: Vec<ParticipantId> = self
            .participants
            .read()
            .expect("participants lock")
            .keys()
            .cloned()
            .collect();
        let mut all: Vec<Participant> = ids.iter().filter_map(|id| self.participant(id)).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// One registered participant, with the key in force now (market time): after a key
    /// rotation takes effect, the new key.
    pub fn participant(&self, id: &ParticipantId) -> Option<Participant> {
        let mut p = self
            .participants
            .read()
            .expect("participants lock")
            .get(id)
            .cloned()?;
        if let Some(key) = self.key_in_force(id) {
            p.public_key = key;
        }
        Some(p)
    }

    /// The key of `id`'s latest key period in force now (market time), searched under the
    /// read lock (no copy of the periods: this runs for every order).
    fn key_in_force(&self, id: &ParticipantId) -> Option<PublicKey> {
        let now = self.clock.now().timestamp();
        self.keys
            .read()
            .expect("keys lock")
            .get(id)?
            .iter()
            .rev()
            .find(|k| k.covers(now))
            .map(|k| k.public_key)
    }

    /// Every key period of a participant, oldest first (empty for an unknown one).
    pub fn key_periods(&self, id: &ParticipantId) -> Vec<KeyPeriod> {
        self.keys
            .read()
            .expect("keys lock")
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// One participant with the key in force now and every key's validity period.
    pub fn participant_with_keys(&self, id: &ParticipantId) -> Option<ParticipantWithKeys> {
        Some(ParticipantWithKeys {
            participant: self.participant(id)?,
            keys: self.key_periods(id),
        })
    }

    /// Every participant with its key periods, by id.
    pub fn participants_with_keys(&self) -> Vec<ParticipantWithKeys> {
        self.participants()
            .into_iter()
            .map(|p| {
                let keys = self.key_periods(&p.id);
                ParticipantWithKeys {
                    participant: p,
                    keys,
                }
            })
            .collect()
    }

    /// Rotates `id`'s key on its signed [`KeyRotation`], which the key in force now must
    /// sign. Refused: another message ([`MarketError::WrongMessage`]), another participant
    /// than `id` or a `valid_from` more than [`ROTATION_PAST_SLACK_S`] in the past or not
    /// after the latest key's `valid_from` ([`MarketError::InvalidRequest`], 400), an unknown
    /// participant, a signature by any other key ([`MarketError::KeyMismatch`], 401), a used
    /// nonce ([`MarketError::ReplayedNonce`], 409), a rotation while another one is still
    /// pending ([`MarketError::Conflict`], 409), an unusable new key. Returns the participant
    /// with its key periods.
    pub async fn rotate_key(
        &self,
        id: &ParticipantId,
        envelope: SignedEnvelope,
    ) -> Result<ParticipantWithKeys, MarketError> {
        if !envelope.is::<KeyRotation>() {
            return Err(MarketError::WrongMessage(
                "a key rotation (gridmesh/rotate/v1)",
            ));
        }
        let claimed = KeyRotation::decode(&envelope.payload).map_err(layout_error)?;
        if &claimed.participant != id {
            return Err(MarketError::InvalidRequest(format!(
                "the rotation is for `{}`, not for `{id}` named in the path",
                claimed.participant
            )));
        }
        let current = self
            .participant(id)
            .ok_or_else(|| MarketError::UnknownParticipant(id.to_string()))?;
        let rotation: KeyRotation = envelope
            .open_by(&current.public_key)
            .map_err(|e| signing_error(e, id.as_str()))?;
        if self.store.rotation_nonce_used(id, rotation.nonce).await? {
            return Err(MarketError::ReplayedNonce {
                participant: id.to_string(),
                nonce: rotation.nonce,
            });
        }
        let weak = rotation.new_public_key.verifying_key().map(|k| k.is_weak());
        if weak != Ok(false) {
            return Err(MarketError::InvalidRequest(
                "new_public_key is not a usable ed25519 key (invalid or of small order)".into(),
            ));
        }
        let now = self.clock.now().timestamp();
        if rotation.valid_from < now - ROTATION_PAST_SLACK_S {
            return Err(MarketError::InvalidRequest(format!(
                "valid_from {} lies more than {ROTATION_PAST_SLACK_S} s before the market's time {now}; a rotation cannot be back-dated",
                rotation.valid_from
            )));
        }
        let latest = self
            .key_periods(id)
            .pop()
            .ok_or_else(|| MarketError::UnknownParticipant(id.to_string()))?;
        if latest.valid_from > now {
            return Err(MarketError::Conflict(format!(
                "a key rotation of `{id}` is pending (its new key signs from {}); rotate again after that",
                latest.valid_from
            )));
        }
        if rotation.valid_from <= latest.valid_from {
            return Err(MarketError::InvalidRequest(format!(
                "valid_from {} is not after the current key's valid_from {}",
                rotation.valid_from, latest.valid_from
            )));
        }
        if !self.store.rotate_key(latest.valid_from, &rotation).await? {
            return Err(MarketError::Conflict(format!(
                "another key rotation of `{id}` (or this one) was stored at the same time; fetch GET /participants/{id} and retry with a fresh nonce if needed"
            )));
        }
        {
            let mut keys = self.keys.write().expect("keys lock");
            let periods = keys.entry(id.clone()).or_default();
            if let Some(last) = periods.last_mut() {
                last.valid_until = Some(rotation.valid_from);
            }
            periods.push(KeyPeriod {
                public_key: rotation.new_public_key,
                valid_from: rotation.valid_from,
                valid_until: None,
            });
        }
        tracing::info!(participant = %id, valid_from = rotation.valid_from, new_key = %rotation.new_public_key, "participant key rotated");
        self.participant_with_keys(id)
            .ok_or_else(|| MarketError::UnknownParticipant(id.to_string()))
    }

    /// Enrols a gateway for a registered participant, after checking its values against the
    /// documented maxima ([`validate_enrollment`]). Enrolment is create-only like
    /// registration: another record under an enrolled id is [`MarketError::Conflict`].
    pub async fn enroll_gateway(&self, g: GatewayEnrollment) -> Result<Registration, MarketError> {
        validate_enrollment(&g)?;
        let p = self
            .participant(&g.participant)
            .ok_or_else(|| MarketError::UnknownParticipant(g.participant.to_string()))?;
        if p.node != g.node {
            return Err(MarketError::WrongNode {
                participant: p.id.to_string(),
                registered: p.node.to_string(),
                node: g.node.to_string(),
            });
        }
        if !self.store.insert_gateway(&g).await? {
            return match self.store.gateway(&g.gateway).await? {
                Some(s) if s == g => Ok(Registration::Unchanged),
                _ => Err(MarketError::Conflict(format!(
                    "gateway `{}` is already enrolled; enrolment is create-only",
                    g.gateway
                ))),
            };
        }
        Ok(Registration::Created)
    }

    /// The interval the market trades next.
    pub fn next_open(&self) -> Interval {
        Interval::next_open(
            self.clock.now(),
            self.config.interval_minutes,
            self.config.lead(),
        )
    }

    fn check_open(&self, interval: &Interval, gate: i64) -> Result<(), MarketError> {
        let now = self.clock.now();
        let lead = self.config.lead();
        if interval.start_unix() <= gate || !interval.accepts_orders_at(now, lead) {
            return Err(MarketError::GateClosed {
                interval: interval.key(),
                closure: interval.gate_closure(lead).to_rfc3339(),
                next_open: self.next_open().key(),
            });
        }
        if interval.start() > now + chrono::Duration::days(MAX_DAYS_AHEAD) {
            return Err(MarketError::TooFarAhead(interval.key()));
        }
        Ok(())
    }

    /// An order must name this market's zone (`gridmesh/order/v2`): one for another zone is
    /// [`MarketError::WrongZone`], a v1 order (no zone, replayable in any zone where its
    /// signer is registered with the same key) [`MarketError::UnzonedOrder`].
    fn check_zone(&self, order: &Order) -> Result<(), MarketError> {
        match &order.zone {
            None => Err(MarketError::UnzonedOrder {
                zone: self.config.zone.clone(),
            }),
            Some(zone) if zone.as_str() != self.config.zone => Err(MarketError::WrongZone {
                market: self.config.zone.clone(),
                order: zone.to_string(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Verifies and books a signed order; returns its id.
    pub async fn submit_order(&self, envelope: SignedEnvelope) -> Result<String, MarketError> {
        let result = self.submit_order_inner(envelope).await;
        match &result {
            Ok(_) => Metrics::inc(&self.metrics.orders_accepted),
            Err(_) => Metrics::inc(&self.metrics.orders_rejected),
        }
        result
    }

    /// What an envelope claims before its signature is checked: an order (tag and layout)
    /// by a registered participant, signed with that participant's key (unverified yet).
    fn claim(&self, envelope: &SignedEnvelope) -> Result<(Order, Participant), MarketError> {
        if !envelope.is::<Order>() {
            return Err(MarketError::WrongMessage("an order (gridmesh/order/v2)"));
        }
        // Decode (unverified) only to learn who claims to sign; nothing is trusted before the
        // signature checks out against that participant's registered key.
        let claimed = Order::decode(&envelope.payload).map_err(layout_error)?;
        let participant = self
            .participant(&claimed.participant)
            .ok_or_else(|| MarketError::UnknownParticipant(claimed.participant.to_string()))?;
        if envelope.public_key != participant.public_key {
            return Err(signing_error(
                SigningError::KeyMismatch {
                    expected: participant.public_key,
                    found: envelope.public_key,
                },
                participant.id.as_str(),
            ));
        }
        Ok((claimed, participant))
    }

    /// Checks a verified order against the market (zone, interval length, values, node) and
    /// makes the row to store.
    fn admit(
        &self,
        order: &Order,
        participant: &Participant,
        envelope: SignedEnvelope,
    ) -> Result<StoredOrder, MarketError> {
        self.check_zone(order)?;
        if order.interval.length() != self.config.interval_minutes {
            return Err(MarketError::WrongIntervalLength {
                expected: self.config.interval_minutes.minutes(),
                found: order.interval.length().minutes(),
            });
        }
        check_order_values("", order.quantity.0, order.limit_price.0).map_err(|e| match e {
            crate::book::BookError::BadQuantity { quantity, .. } => {
                MarketError::InvalidQuantity(quantity)
            }
            _ => MarketError::InvalidPrice(order.limit_price.0),
        })?;
        if self.topology().index_of(&order.node).is_none() {
            return Err(MarketError::UnknownNode(order.node.to_string()));
        }
        if participant.kind == ParticipantKind::Household && participant.node != order.node {
            return Err(MarketError::WrongNode {
                participant: participant.id.to_string(),
                registered: participant.node.to_string(),
                node: order.node.to_string(),
            });
        }
        Ok(StoredOrder {
            order_id: format!("{}:{}", order.participant, order.nonce),
            participant: order.participant.clone(),
            nonce: order.nonce,
            interval: order.interval,
            node: order.node.clone(),
            side: order.side,
            quantity_wh: order.quantity.0,
            limit_price: order.limit_price.0,
            cancelled: false,
            received_at: self.clock.now().to_rfc3339(),
            envelope,
        })
    }

    async fn submit_order_inner(&self, envelope: SignedEnvelope) -> Result<String, MarketError> {
        let stages = &self.metrics.order_stages;
        Metrics::inc(&stages.orders);
        let mut started = Instant::now();
        let mut stage = |sum: &AtomicU64| {
            OrderStages::add(sum, started);
            started = Instant::now();
        };
        let claimed = self.claim(&envelope);
        stage(&stages.claim_micros);
        let (order, participant) = claimed?;
        // The signature, in the shared verification stage (batched with concurrent requests).
        let verified = self.verifier.verify_one(envelope.clone()).await;
        stage(&stages.verify_micros);
        verified.map_err(|e| signing_error(e, participant.id.as_str()))?;
        let stored = self.admit(&order, &participant, envelope)?;
        let order_id = stored.order_id.clone();
        // Hold the gate open from the check until the order is committed.
        let gate = self.gate.read().await;
        self.check_open(&order.interval, *gate)?;
        let (done, wait) = oneshot::channel();
        self.writer
            .send(WriteJob {
                order: stored,
                done,
            })
            .await
            .map_err(|_| MarketError::ShuttingDown)?;
        stage(&stages.admit_micros);
        let written = wait.await;
        stage(&stages.store_micros);
        let fresh = written
            .map_err(|_| MarketError::ShuttingDown)?
            .map_err(|e| MarketError::Storage(crate::store::StoreError::Corrupt(e)))?;
        drop(gate);
        if !fresh {
            return Err(MarketError::ReplayedNonce {
                participant: order.participant.to_string(),
                nonce: order.nonce,
            });
        }
        Ok(order_id)
    }

    /// Verifies and books signed orders (`POST /orders/batch`, up to
    /// `gridmesh_protocol::api::market::MAX_ORDER_BATCH`, at most 1000 per statement):
    /// the signatures in one batch verification, the orders that pass every check in one
    /// statement (one transaction). One answer per envelope, in order: the order id, or what
    /// [`Market::submit_order`] would have refused it with. Every `Ok` order is in its
    /// interval's book: the gate is held open from the check until the statement committed.
    pub async fn submit_orders(
        &self,
        envelopes: Vec<SignedEnvelope>,
    ) -> Vec<Result<String, MarketError>> {
        let n = envelopes.len();
        let mut out: Vec<Option<Result<String, MarketError>>> = (0..n).map(|_| None).collect();
        let mut claimed = Vec::with_capacity(n);
        for (i, envelope) in envelopes.into_iter().enumerate() {
            match self.claim(&envelope) {
                Ok((order, participant)) => claimed.push((i, order, participant, envelope)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let verdicts = self
            .verifier
            .verify(claimed.iter().map(|c| c.3.clone()).collect())
            .await;
        let mut admitted = Vec::with_capacity(claimed.len());
        for ((i, order, participant, envelope), verdict) in claimed.into_iter().zip(verdicts) {
            let checked = verdict
                .map_err(|e| signing_error(e, participant.id.as_str()))
                .and_then(|()| self.admit(&order, &participant, envelope));
            match checked {
                Ok(stored) => admitted.push((i, stored)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        {
            // Hold the gate open from the check until the orders are committed.
            let gate = self.gate.read().await;
            let mut rows = Vec::with_capacity(admitted.len());
            let mut rows_at = Vec::with_capacity(admitted.len());
            for (i, stored) in admitted {
                match self.check_open(&stored.interval, *gate) {
                    Ok(()) => {
                        rows_at.push(i);
                        rows.push(stored);
                    }
                    Err(e) => out[i] = Some(Err(e)),
                }
            }
            if !rows.is_empty() {
                match self.store.insert_orders(&rows).await {
                    Ok(fresh) => {
                        for ((i, row), fresh) in rows_at.iter().zip(&rows).zip(fresh) {
                            out[*i] = Some(if fresh {
                                Ok(row.order_id.clone())
                            } else {
                                Err(MarketError::ReplayedNonce {
                                    participant: row.participant.to_string(),
                                    nonce: row.nonce,
                                })
                            });
                        }
                        Metrics::inc(&self.metrics.order_batches);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not store a batch of orders");
                        for i in rows_at {
                            out[i] = Some(Err(MarketError::Storage(
                                crate::store::StoreError::Corrupt(e.to_string()),
                            )));
                        }
                    }
                }
            }
            drop(gate);
        }
        let out: Vec<Result<String, MarketError>> = out
            .into_iter()
            .map(|o| o.expect("every order answered"))
            .collect();
        for r in &out {
            match r {
                Ok(_) => Metrics::inc(&self.metrics.orders_accepted),
                Err(_) => Metrics::inc(&self.metrics.orders_rejected),
            }
        }
        out
    }

    /// Cancels an order before its gate closure, on the owner's signed request.
    pub async fn cancel_order(&self, envelope: SignedEnvelope) -> Result<String, MarketError> {
        if !envelope.is::<OrderCancel>() {
            return Err(MarketError::WrongMessage(
                "a cancellation (gridmesh/cancel/v1)",
            ));
        }
        let claimed = OrderCancel::decode(&envelope.payload).map_err(layout_error)?;
        let participant = self
            .participant(&claimed.participant)
            .ok_or_else(|| MarketError::UnknownParticipant(claimed.participant.to_string()))?;
        let cancel: OrderCancel = envelope
            .open_by(&participant.public_key)
            .map_err(|e| signing_error(e, participant.id.as_str()))?;
        let order = self
            .store
            .order(&cancel.participant, cancel.order_nonce)
            .await?
            .ok_or_else(|| MarketError::OrderNotFound {
                participant: cancel.participant.to_string(),
                nonce: cancel.order_nonce,
            })?;
        let gate = self.gate.read().await;
        self.check_open(&order.interval, *gate)?;
        self.store
            .cancel_order(&cancel.participant, cancel.order_nonce)
            .await?;
        drop(gate);
        Metrics::inc(&self.metrics.orders_cancelled);
        Ok(order.order_id)
    }

    /// Subscribes to results as they are cleared.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<IntervalResult>> {
        self.events.subscribe()
    }

    /// Closes the gate of `interval` and clears it; returns the stored result. Clearing an
    /// interval again returns the result stored the first time.
    pub async fn clear_interval(&self, interval: Interval) -> Result<IntervalResult, MarketError> {
        {
            let mut gate = self.gate.write().await;
            *gate = (*gate).max(interval.start_unix());
        }
        if let Some(existing) = self.store.result(&interval).await? {
            return Ok(existing);
        }
        let started = std::time::Instant::now();
        let stored = self.store.orders(None, Some(&interval), true).await?;
        let topology = self.topology_for(&interval).await?;
        let mut orders = Vec::with_capacity(stored.len().min(MAX_ORDERS));
        let mut owners = Owners::new();
        for o in stored.into_iter().take(MAX_ORDERS) {
            let Some(node) = topology.index_of(&o.node) else {
                tracing::warn!(order = %o.order_id, node = %o.node, "order's node left the topology; it does not clear");
                continue;
            };
            orders.push(BookOrder {
                id: o.order_id,
                node,
                side: o.side,
                quantity: o.quantity_wh,
                limit_price: o.limit_price,
            });
            owners.push(o.participant);
        }
        let gateways = self.store.gateways().await?;
        for g in gateways
            .iter()
            .filter(|g| topology.index_of(&g.node).is_none())
        {
            tracing::warn!(gateway = %g.gateway, node = %g.node, "gateway's node is not in the topology; it gets no envelope");
        }
        let now = self.clock.now();
        // Clearing, the envelopes and the signatures are CPU work: on the blocking pool, not
        // on an async worker (issue 16).
        let job = ClearingJob {
            topology: Arc::clone(&topology),
            orders,
            owners,
            pricing: self.config.pricing,
            zone: self.config.zone.clone(),
            interval_minutes: self.config.interval_minutes,
            connection_import_w: self.config.connection_import_w,
            gateways,
            key: self.key.clone(),
            interval,
            now,
        };
        let cleared = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| {
                MarketError::Storage(crate::store::StoreError::Corrupt(format!(
                    "clearing stopped: {e}"
                )))
            })?;
        let ClearingOutput {
            orders,
            signed,
            envelopes,
            envelopes_micros,
        } = cleared;
        self.metrics
            .last_envelopes_micros
            .store(envelopes_micros, std::sync::atomic::Ordering::Relaxed);
        let stored = self
            .store
            .put_result(&interval, &signed, &envelopes)
            .await?;
        self.metrics.last_clearing_micros.store(
            started.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.metrics
            .last_clearing_orders
            .store(orders.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Metrics::inc(&self.metrics.intervals_cleared);
        self.metrics
            .envelopes_issued
            .fetch_add(envelopes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(interval = %interval, orders = orders.len(), envelopes = envelopes.len(), welfare = stored.welfare.0, "interval cleared");
        let _ = self.events.send(Arc::new(stored.clone()));
        Ok(stored)
    }

    /// The topology an interval clears with: the current one with the operator limit
    /// overrides covering the interval applied.
    pub async fn topology_for(&self, interval: &Interval) -> Result<Arc<Topology>, MarketError> {
        let base = self.topology();
        let overrides = self.store.overrides_covering(interval.start_unix()).await?;
        if overrides.is_empty() {
            return Ok(base);
        }
        let network = crate::overrides::apply(base.network(), &overrides, interval.start_unix());
        let topology =
            Topology::new(&network).map_err(|e| MarketError::InvalidTopology(e.to_string()))?;
        tracing::info!(interval = %interval, overrides = overrides.len(), "operator limit overrides applied");
        Ok(Arc::new(topology))
    }

    /// Validates and stores an operator limit override; returns it with its id.
    pub async fn add_override(&self, o: LimitOverride) -> Result<LimitOverride, MarketError> {
        crate::overrides::validate(&self.topology(), &o).map_err(MarketError::InvalidOverride)?;
        let stored = self.store.insert_override(&o).await?;
        tracing::info!(id = stored.id, node = %stored.node, from = %stored.from, until = %stored.until, "limit override stored");
        Ok(stored)
    }

    /// The signed form of a stored result. A result stored before the market signed results
    /// is signed now, once, with the current key (its body is never changed).
    pub async fn sign_stored(&self, row: StoredResult) -> Result<SignedResult, MarketError> {
        if let Some(signed) = row.signed() {
            return Ok(signed);
        }
        let result = row.result()?;
        let attestation = ResultAttestation {
            zone: result.zone.clone(),
            interval: result.interval,
            body_digest: <sha2::Sha256 as sha2::Digest>::digest(row.body.as_bytes()).into(),
            cleared_at: whole_seconds(result.cleared_at),
        };
        let signed = SignedEnvelope::sign(&attestation, &self.key);
        let attestation = self
            .store
            .attest_result(row.interval_start, &signed)
            .await?;
        tracing::info!(interval = %result.interval, "signed a result stored before results were signed");
        Ok(SignedResult {
            body_base64: row.body.into_bytes(),
            attestation,
        })
    }

    /// The signed result of an interval, if cleared.
    pub async fn signed_result(
        &self,
        interval: &Interval,
    ) -> Result<Option<SignedResult>, MarketError> {
        match self.store.result_row(interval).await? {
            Some(row) => Ok(Some(self.sign_stored(row).await?)),
            None => Ok(None),
        }
    }

    /// Signed results from `since` on (inclusive), oldest first, at most `limit`.
    pub async fn signed_results(
        &self,
        since: i64,
        limit: i64,
    ) -> Result<Vec<SignedResult>, MarketError> {
        let mut out = Vec::new();
        for row in self.store.result_rows_since(since, limit).await? {
            out.push(self.sign_stored(row).await?);
        }
        Ok(out)
    }

    /// The signed envelopes of a gateway for every cleared interval that has not ended yet
    /// (oldest first, at most [`MAX_CURRENT_ENVELOPES`]).
    pub async fn current_envelopes(
        &self,
        gateway: &GatewayId,
    ) -> Result<Vec<SignedEnvelope>, MarketError> {
        if self.store.gateway(gateway).await?.is_none() {
            return Err(MarketError::NotFound(format!(
                "gateway `{gateway}` is not enrolled; see GET /gateways"
            )));
        }
        // An interval has not ended while its start is later than now − its length.
        let after = self.clock.now().timestamp() - self.config.interval_minutes.seconds();
        Ok(self
            .store
            .envelopes_of(gateway, after, MAX_CURRENT_ENVELOPES)
            .await?)
    }
}

/// A one-node network with no utility: used when neither the database nor the config has one.
pub fn default_network() -> gridmesh_protocol::grid::Network {
    gridmesh_protocol::grid::Network {
        root: gridmesh_protocol::NodeId::new("sub").expect("valid id"),
        branches: Vec::new(),
        utility: Default::default(),
    }
}

/// Everything one clearing needs, moved onto the blocking pool.
struct ClearingJob {
    topology: Arc<Topology>,
    orders: Vec<BookOrder>,
    owners: Owners,
    pricing: PricingRule,
    zone: String,
    interval_minutes: gridmesh_protocol::IntervalLength,
    connection_import_w: u32,
    gateways: Vec<GatewayEnrollment>,
    key: SigningKeyPair,
    interval: Interval,
    now: DateTime<Utc>,
}

/// A clearing's signed result and envelopes.
struct ClearingOutput {
    orders: Vec<BookOrder>,
    signed: SignedResult,
    envelopes: Vec<(GatewayId, SignedEnvelope)>,
    envelopes_micros: u64,
}

impl ClearingJob {
    /// Clears the book, computes every gateway's envelope and signs the result and the
    /// envelopes (pure CPU work).
    fn run(self) -> ClearingOutput {
        let ClearingJob {
            topology,
            orders,
            owners,
            pricing,
            zone,
            interval_minutes,
            connection_import_w,
            gateways,
            key,
            interval,
            now,
        } = self;
        let outcome = clear(&topology, &orders, pricing);
        let mut result =
            interval_result(&topology, &orders, &owners, &outcome, interval, &zone, now);
        let envelopes_started = std::time::Instant::now();
        result.envelopes = envelopes_for(
            &topology,
            interval_minutes,
            connection_import_w,
            &orders,
            &outcome.solution.cleared,
            &owners,
            gateways,
        );
        let envelopes_micros = envelopes_started.elapsed().as_micros() as u64;
        let signed = SignedResult::sign(&result, &key);
        let digest = signed.body_digest();
        let issued_at = whole_seconds(now);
        let envelopes: Vec<(GatewayId, SignedEnvelope)> = result
            .envelopes
            .iter()
            .map(|a| {
                let envelope = OperatingEnvelope {
                    zone: zone.clone(),
                    gateway: a.gateway.clone(),
                    participant: a.participant.clone(),
                    node: a.node.clone(),
                    interval,
                    export_limit: a.export_limit_wh,
                    import_limit: a.import_limit_wh,
                    basis: EnvelopeBasis::Cleared,
                    result_digest: digest,
                    issued_at,
                };
                (a.gateway.clone(), SignedEnvelope::sign(&envelope, &key))
            })
            .collect();
        ClearingOutput {
            orders,
            signed,
            envelopes,
            envelopes_micros,
        }
    }
}

/// Writes waiting orders in batches until shutdown; on shutdown writes what is queued.
///
/// Group commit: each transaction takes every order waiting (up to `max_batch`), and up to
/// [`Store::concurrent_writes`] transactions run at once, so an order arriving while a commit
/// is in flight starts its own at once instead of waiting for it, and under load the waiting
/// orders share one. Each order is answered only after its transaction committed.
pub(crate) async fn run_writer(
    store: Store,
    market: std::sync::Weak<Market>,
    mut jobs: mpsc::Receiver<WriteJob>,
    max_batch: usize,
    cancel: CancellationToken,
) {
    let limit = store.concurrent_writes().max(1);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut open = true;
    loop {
        if !open && in_flight.is_empty() {
            return;
        }
        let first = tokio::select! {
            job = jobs.recv(), if open && in_flight.len() < limit => job,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
            _ = cancel.cancelled(), if open && !jobs.is_closed() => {
                // Stop taking new orders; what is queued is still written.
                jobs.close();
                continue;
            }
        };
        let Some(first) = first else {
            open = false;
            continue;
        };
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (store, market) = (store.clone(), market.clone());
        in_flight.spawn(async move {
            let (orders, answers): (Vec<StoredOrder>, Vec<_>) =
                batch.into_iter().map(|j| (j.order, j.done)).unzip();
            let outcome = store.insert_orders(&orders).await;
            if let Some(m) = market.upgrade() {
                Metrics::inc(&m.metrics.order_batches);
            }
            match outcome {
                Ok(fresh) => {
                    for (done, fresh) in answers.into_iter().zip(fresh) {
                        let _ = done.send(Ok(fresh));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not store orders");
                    for done in answers {
                        let _ = done.send(Err(e.to_string()));
                    }
                }
            }
        });
    }
}

/// What a create-only registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The record is new and stored.
    Created,
    /// Exactly this record was registered before; nothing changed. (The REST API answers 409
    /// for it like for any existing id; in-process callers that re-register on restart, such
    /// as the demo neighbourhood, carry on.)
    Unchanged,
}

/// The largest inverter or battery power a gateway may enrol, W (1 MW: far above any home,
/// room for a farm or a small commercial site; larger sites connect through the operator).
pub const MAX_SITE_POWER_W: u32 = 1_000_000;

/// Refuses enrolment values no real site has: inverter or battery power above
/// [`MAX_SITE_POWER_W`], latitude outside ±90° or longitude outside ±180°.
pub fn validate_enrollment(g: &GatewayEnrollment) -> Result<(), MarketError> {
    let power = |what: &str, w: u32| {
        if w > MAX_SITE_POWER_W {
            Err(MarketError::InvalidRequest(format!(
                "{what} {w} W is above the most a gateway may enrol ({MAX_SITE_POWER_W} W)"
            )))
        } else {
            Ok(())
        }
    };
    power("inverter_w", g.inverter_w)?;
    power("battery_w", g.battery_w)?;
    if g.latitude_microdeg.unsigned_abs() > 90_000_000 {
        return Err(MarketError::InvalidRequest(format!(
            "latitude_microdeg {} is outside ±90000000 (±90°)",
            g.latitude_microdeg
        )));
    }
    if g.longitude_microdeg.unsigned_abs() > 180_000_000 {
        return Err(MarketError::InvalidRequest(format!(
            "longitude_microdeg {} is outside ±180000000 (±180°)",
            g.longitude_microdeg
        )));
    }
    Ok(())
}
