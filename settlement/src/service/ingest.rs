//! Ingest: verify a batch of signed readings against the registry and the replay state, store
//! the good ones and quarantine the rest (with the reason) in one transaction.
//!
//! Also the edges of ingest that keep junk from stalling or filling it (bounds in
//! [`super::admission`]): gateway uploads are authenticated by the gateway's signed request and
//! rate-limited per gateway; what is not a reading (or is refused for good) is kept only as a
//! bounded sample; a reading of a gateway settlement does not know makes it ask the market again
//! at once (rate-limited) and, if still unknown, is either refused as retryable (REST: the
//! gateway keeps it) or held whole and re-admitted once the gateway is enrolled (MQTT).

use super::admission::{self, UploadError};
use super::{Event, ReadingOutcome, ReadingStatus, Service, ServiceError, Submission, ms};
use crate::sources::MarketSource;
use crate::store::{self, QuarantineRow, ReadingRow};
use crate::verify::{self, Context, Reason, ReasonCode, Verdict};
use gridmesh_protocol::GatewayId;
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::request::SignedGatewayRequest;
use gridmesh_protocol::signing::SignedEnvelope;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The market source an unknown gateway makes settlement read again, at most once per `every`.
pub(crate) struct RegistryRefresh {
    source: Arc<dyn MarketSource>,
    every: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// What to do with a reading whose gateway is unknown even after asking the market again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// Hold it whole (within bounds) and re-admit it once the gateway is enrolled (MQTT).
    Hold,
    /// Refuse the batch as retryable (REST: 503, the gateway keeps it).
    Refuse,
}

/// A batch classified under the ingest lock, ready to write.
#[derive(Default)]
struct Batch {
    outcomes: Vec<ReadingOutcome>,
    rows: Vec<ReadingRow>,
    quarantine: Vec<(ReasonCode, QuarantineRow)>,
    /// Junk answered but not stored (the sample budget was spent).
    dropped: u64,
    /// Readings held per unknown gateway (to give back if the batch is not stored).
    held: Vec<String>,
}

impl Batch {
    /// Quarantines a decoded reading (flagged, late or held): kept whole, as its canonical
    /// envelope JSON (a few hundred bytes, whatever padding it arrived with).
    fn quarantine(
        &mut self,
        item: &Submission,
        env: &SignedEnvelope,
        parsed: (&str, &Reading),
        reason: &Reason,
        status: &'static str,
        now_ms: i64,
    ) {
        let key = parsed.0.to_owned();
        self.quarantine.push((
            reason.code,
            QuarantineRow {
                source: item.source.clone(),
                reading_key: Some(key.clone()),
                gateway: Some(parsed.1.gateway.to_string()),
                raw: serde_json::to_vec(env).expect("an envelope serialises"),
                code: reason.code.as_str(),
                reason: reason.message.clone(),
                status,
                received_at: now_ms,
            },
        ));
        self.outcomes.push(ReadingOutcome {
            key: Some(key),
            status: ReadingStatus::Quarantined,
            code: Some(reason.code),
            reason: Some(reason.message.clone()),
        });
    }

    /// Refuses a submission for good (not a reading, or a reading that can never count): a
    /// sample of it is kept if the budget allows (`keep`), else it is only answered.
    fn junk(
        &mut self,
        item: &Submission,
        parsed: Option<(&str, &Reading)>,
        reason: &Reason,
        keep: bool,
        now_ms: i64,
    ) {
        let key = parsed.map(|(k, _)| k.to_owned());
        let mut message = reason.message.clone();
        if keep {
            let (raw, note) = admission::sample(&item.raw);
            let mut stored = message.clone();
            stored.extend(note);
            self.quarantine.push((
                reason.code,
                QuarantineRow {
                    source: item.source.clone(),
                    reading_key: key.clone(),
                    gateway: parsed.map(|(_, r)| r.gateway.to_string()),
                    raw,
                    code: reason.code.as_str(),
                    reason: stored,
                    status: "open",
                    received_at: now_ms,
                },
            ));
        } else {
            self.dropped += 1;
            message.push_str(
                " (not kept: this hour's quarantine sample budget for its gateway is spent)",
            );
        }
        self.outcomes.push(ReadingOutcome {
            key,
            status: ReadingStatus::Quarantined,
            code: Some(reason.code),
            reason: Some(message),
        });
    }

    fn plain(&mut self, key: String, status: ReadingStatus) {
        self.outcomes.push(ReadingOutcome {
            key: Some(key),
            status,
            code: None,
            reason: None,
        });
    }

    fn count(&self, status: ReadingStatus) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }
}

/// Decodes one submission (a JSON signed envelope of a reading).
fn parse(s: &Submission) -> Result<(SignedEnvelope, Reading), Reason> {
    let env: SignedEnvelope = serde_json::from_slice(&s.raw).map_err(|e| {
        Reason::new(
            ReasonCode::Malformed,
            format!("not a JSON signed envelope {{payload, signature, public_key}}: {e}"),
        )
    })?;
    let reading = verify::decode(&env)?;
    if reading.sequence > i64::MAX as u64 {
        return Err(Reason::new(ReasonCode::Malformed, "sequence above 2^63-1"));
    }
    Ok((env, reading))
}

/// The row a verified reading is stored as.
/// A batch decoded and verified, not stored yet ([`Service::prepare`]).
#[derive(Debug)]
pub struct PreparedBatch {
    items: Vec<Submission>,
    parsed: Vec<Result<(SignedEnvelope, Reading), Reason>>,
    sig_ok: Vec<bool>,
}

impl PreparedBatch {
    /// How many submissions it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Batches up to this size are decoded on the async thread (a few microseconds each).
const DECODE_INLINE: usize = 16;

/// Decodes submissions, on the blocking pool when there are many.
async fn decode(
    items: Vec<Submission>,
) -> (
    Vec<Submission>,
    Vec<Result<(SignedEnvelope, Reading), Reason>>,
) {
    if items.len() <= DECODE_INLINE {
        let parsed = items.iter().map(parse).collect();
        return (items, parsed);
    }
    tokio::task::spawn_blocking(move || {
        let parsed = items.iter().map(parse).collect();
        (items, parsed)
    })
    .await
    .expect("decoding readings does not panic")
}

fn reading_row(
    key: String,
    env: &SignedEnvelope,
    reading: &Reading,
    enrollment: &GatewayEnrollment,
    digest: [u8; 32],
    status: &'static str,
    now_ms: i64,
) -> ReadingRow {
    ReadingRow {
        key,
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
    }
}

impl Service {
    /// Lets an unknown gateway make settlement read the market's enrolments again at once, at
    /// most once per `every` (real time); held readings whose gateway the market enrols are
    /// re-admitted after every registry update. Set once; later calls are ignored.
    pub fn set_registry_source(&self, source: Arc<dyn MarketSource>, every: Duration) {
        let _ = self.registry_source.set(RegistryRefresh {
            source,
            every,
            last: tokio::sync::Mutex::new(None),
        });
    }

    /// Reads the market's enrolments now, unless that was done less than the refresh period
    /// ago (or no source is set): `true` if the registry was refreshed.
    pub async fn refresh_registry(&self) -> bool {
        let Some(refresh) = self.registry_source.get() else {
            return false;
        };
        {
            let mut last = refresh.last.lock().await;
            if last.is_some_and(|t| t.elapsed() < refresh.every) {
                return false;
            }
            *last = Some(Instant::now());
            let gateways = match refresh.source.gateways().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "could not refresh gateway enrolments for an unknown gateway");
                    return false;
                }
            };
            if let Err(e) = self.set_gateways(&gateways).await {
                tracing::warn!(error = %e, "could not store refreshed gateway enrolments");
                return false;
            }
        }
        if let Err(e) = self.readmit_held().await {
            tracing::error!(error = %e, "could not re-admit held readings; will retry at the next registry update");
        }
        true
    }

    /// How long a refused upload should wait before it is sent again.
    fn retry_after(&self) -> Duration {
        self.registry_source
            .get()
            .map_or(Duration::from_secs(5), |r| r.every)
            .max(Duration::from_secs(1))
    }

    /// The gateway whose signed request (`Authorization: GridmeshGateway …`) authorises this
    /// upload, checked against its enrolled key on the wall clock. An unknown gateway makes
    /// settlement ask the market again first.
    pub async fn upload_sender(
        &self,
        authorization: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<GatewayId, UploadError> {
        let refuse = |why: String| {
            self.metrics.uploads_refused.add(1);
            UploadError::Unauthorized(why)
        };
        let Some(header) = authorization else {
            return Err(refuse("POST /readings is accepted only from enrolled gateways: sign the batch with the gateway's key (`Authorization: GridmeshGateway <base64 payload>.<base64 signature>`, gridmesh/gateway-request/v1, see docs/protocol.md)".into()));
        };
        let request = SignedGatewayRequest::parse(header).map_err(|e| refuse(e.to_string()))?;
        let gateway = request.gateway().clone();
        let mut enrolled = self.gateway_key(&gateway);
        if enrolled.is_none() && self.refresh_registry().await {
            enrolled = self.gateway_key(&gateway);
        }
        let Some(key) = enrolled else {
            return Err(UploadError::UnknownGateway {
                gateway: gateway.to_string(),
                retry_after: self.retry_after(),
            });
        };
        let now = chrono::Utc::now().timestamp();
        request
            .verify(&key, now, method, path_and_query, body)
            .map_err(|e| refuse(e.to_string()))?;
        Ok(gateway)
    }

    /// The gateways the market enrolled for `participant` (its household's).
    pub fn gateways_of(&self, participant: &gridmesh_protocol::ParticipantId) -> Vec<String> {
        let registry = self.registry.read().expect("registry lock");
        let mut list: Vec<String> = registry
            .values()
            .filter(|g| &g.participant == participant)
            .map(|g| g.gateway.to_string())
            .collect();
        list.sort();
        list
    }

    fn gateway_key(&self, gateway: &GatewayId) -> Option<gridmesh_protocol::signing::PublicKey> {
        self.registry
            .read()
            .expect("registry lock")
            .get(gateway)
            .map(|g| g.public_key)
    }

    /// Takes `readings` from the sending gateway's rate budget (429 when spent).
    pub fn admit_upload(&self, gateway: &GatewayId, readings: usize) -> Result<(), UploadError> {
        if readings > admission::MAX_BATCH {
            return Err(UploadError::BadRequest(format!(
                "a batch holds at most {} readings, this one {readings}: send them in smaller batches",
                admission::MAX_BATCH
            )));
        }
        let taken = self.admission.lock().expect("admission lock").take(
            gateway.as_str(),
            readings,
            Instant::now(),
        );
        taken.map_err(|wait| {
            self.metrics.uploads_refused.add(1);
            UploadError::RateLimited {
                gateway: gateway.to_string(),
                retry_after: wait.max(Duration::from_secs(1)),
            }
        })
    }

    /// Keeps a sample of a refused upload body (within the junk budget) as a `malformed`
    /// quarantine item attributed to `source`.
    pub async fn keep_junk(&self, source: &str, raw: &[u8], why: &str) -> Result<(), ServiceError> {
        let keep = self
            .admission
            .lock()
            .expect("admission lock")
            .sample(&admission::budget_key(source, None), Instant::now());
        if !keep {
            self.metrics.quarantine_samples_dropped.add(1);
            return Ok(());
        }
        let (raw, note) = admission::sample(raw);
        let mut reason = why.to_owned();
        reason.extend(note);
        let row = QuarantineRow {
            source: source.to_owned(),
            reading_key: None,
            gateway: None,
            raw,
            code: ReasonCode::Malformed.as_str(),
            reason,
            status: "open",
            received_at: ms(self.clock.now()),
        };
        let mut tx = self.db.begin_write().await?;
        let id = store::insert_quarantine(&mut tx, &row).await?;
        tx.commit().await?;
        self.metrics.readings_quarantined.add(1);
        let _ = self.events.send(Event::Quarantined {
            id,
            code: ReasonCode::Malformed,
            reason: row.reason,
        });
        Ok(())
    }

    /// Verifies and stores a batch of readings in one transaction. `Err` means nothing of the
    /// batch was recorded (retry it); `Ok` has one outcome per submission, in order. A reading
    /// of a gateway unknown even after asking the market again is held (see the module docs).
    pub async fn ingest(
        &self,
        items: Vec<Submission>,
    ) -> Result<Vec<ReadingOutcome>, ServiceError> {
        match self.ingest_with(items, Unknown::Hold).await {
            Ok(outcomes) => Ok(outcomes),
            Err(UploadError::Service(e)) => Err(e),
            Err(other) => Err(ServiceError::BadRequest(other.to_string())),
        }
    }

    /// [`Service::ingest`] for a gateway's REST upload: a reading of a gateway that is unknown
    /// even after asking the market again refuses the whole batch as retryable
    /// ([`UploadError::UnknownGateway`]), so the gateway keeps it.
    pub async fn ingest_upload(
        &self,
        items: Vec<Submission>,
    ) -> Result<Vec<ReadingOutcome>, UploadError> {
        self.ingest_with(items, Unknown::Refuse).await
    }

    async fn ingest_with(
        &self,
        items: Vec<Submission>,
        unknown: Unknown,
    ) -> Result<Vec<ReadingOutcome>, UploadError> {
        let prepared = self.prepare(items).await;
        if unknown == Unknown::Refuse
            && let Some(gateway) = self.first_unknown(&prepared.parsed)
        {
            return Err(UploadError::UnknownGateway {
                gateway,
                retry_after: self.retry_after(),
            });
        }
        Ok(self.store_prepared(&prepared).await?)
    }

    /// The first gateway of `parsed` that is not enrolled.
    fn first_unknown(
        &self,
        parsed: &[Result<(SignedEnvelope, Reading), Reason>],
    ) -> Option<String> {
        let registry = self.registry.read().expect("registry lock");
        parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .find(|(_, r)| !registry.contains_key(&r.gateway))
            .map(|(_, r)| r.gateway.to_string())
    }

    /// The first two stages of ingest, outside the ingest lock so that they overlap another
    /// batch's store: decodes the submissions (on the blocking pool when there are many),
    /// verifies their signatures in the verification stage, and asks the market again if a
    /// gateway is unknown. Nothing is recorded; [`Service::store_prepared`] stores the batch.
    pub async fn prepare(&self, items: Vec<Submission>) -> PreparedBatch {
        let prepared = self.decode_and_verify(items).await;
        if self.first_unknown(&prepared.parsed).is_some() {
            self.refresh_registry().await;
        }
        prepared
    }

    /// [`Service::prepare`] without asking the market about unknown gateways.
    async fn decode_and_verify(&self, items: Vec<Submission>) -> PreparedBatch {
        let (items, parsed) = decode(items).await;
        let envs: Vec<SignedEnvelope> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(e, _)| e.clone()))
            .collect();
        let sig_ok: Vec<bool> = self
            .verifier
            .verify(envs)
            .await
            .iter()
            .map(Result::is_ok)
            .collect();
        PreparedBatch {
            items,
            parsed,
            sig_ok,
        }
    }

    /// The last stage of ingest: checks a prepared batch against the registry and the replay
    /// state and stores it in one transaction. `Err` means nothing of the batch was recorded;
    /// the same batch may be stored again (retry). A reading of a gateway still unknown is
    /// held (see the module docs).
    pub async fn store_prepared(
        &self,
        prepared: &PreparedBatch,
    ) -> Result<Vec<ReadingOutcome>, ServiceError> {
        let PreparedBatch {
            items,
            parsed,
            sig_ok,
        } = prepared;
        // Readings from before the verification state's start may be resubmissions of stored
        // ones: their digests come from the database (for this batch only, so the state stays
        // bounded by the horizon), and they are answered `duplicate` (or `conflict`) exactly as
        // if the state held them.
        let since = self.state_since().timestamp();
        let mut old_digests = self.stored_digests(parsed, i64::MIN..since).await?;
        let mut state = self.ingest.lock().await;
        state.prune(since);
        if state.since > since {
            // Another batch bounded the state further meanwhile: look up what it forgot.
            let forgotten = self.stored_digests(parsed, since..state.since).await?;
            old_digests.extend(forgotten);
        }
        let batch = self.classify(&mut state, &old_digests, items, parsed, sig_ok);
        let ids = match self.write_batch(&batch.rows, &batch.quarantine).await {
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
        self.metrics
            .readings_accepted
            .add(batch.count(ReadingStatus::Accepted) as u64);
        // Outcomes are one per submission, in order: the source of each accepted reading.
        for (item, outcome) in items.iter().zip(&batch.outcomes) {
            if outcome.status == ReadingStatus::Accepted {
                if item.source.starts_with("mqtt:") {
                    self.metrics.readings_accepted_mqtt.add(1);
                } else if item.source.starts_with("rest") {
                    self.metrics.readings_accepted_rest.add(1);
                }
            }
        }
        self.metrics
            .readings_duplicate
            .add(batch.count(ReadingStatus::Duplicate) as u64);
        self.metrics
            .readings_quarantined
            .add(batch.quarantine.len() as u64);
        self.metrics.quarantine_samples_dropped.add(batch.dropped);
        self.metrics.readings_held.add(batch.held.len() as u64);
        if batch.dropped > 0 {
            tracing::warn!(
                dropped = batch.dropped,
                "junk submissions answered but not kept: the quarantine sample budget is spent"
            );
        }
        for ((code, row), id) in batch.quarantine.iter().zip(ids) {
            let _ = self.events.send(Event::Quarantined {
                id,
                code: *code,
                reason: row.reason.clone(),
            });
        }
        Ok(batch.outcomes)
    }

    /// The stored digests of the readings of `parsed` whose interval starts in `starts`, by
    /// idempotency key.
    async fn stored_digests(
        &self,
        parsed: &[Result<(SignedEnvelope, Reading), Reason>],
        starts: std::ops::Range<i64>,
    ) -> Result<HashMap<String, [u8; 32]>, ServiceError> {
        let keys: Vec<String> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|(_, r)| starts.contains(&r.interval.start_unix()))
            .map(|(_, r)| r.idempotency_key())
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let stored = store::readings::digests_of(&self.db.pool, &keys).await?;
        Ok(stored
            .into_iter()
            .filter_map(|(key, digest)| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(&digest, &mut bytes)
                    .ok()
                    .map(|()| (key, bytes))
            })
            .collect())
    }

    /// Re-admits held readings whose gateway is enrolled now: they are ingested as fresh
    /// submissions and their quarantine items marked `readmitted`. Returns how many.
    pub async fn readmit_held(&self) -> Result<usize, ServiceError> {
        let _one = self.readmitting.lock().await;
        let gateways: Vec<String> = {
            let admission = self.admission.lock().expect("admission lock");
            let registry = self.registry.read().expect("registry lock");
            admission
                .held_gateways()
                .filter(|g| GatewayId::new(g).is_ok_and(|g| registry.contains_key(&g)))
                .collect()
        };
        let mut total = 0;
        for gateway in gateways {
            loop {
                let rows = store::readings::held_of(&self.db.pool, &gateway, 500).await?;
                if rows.is_empty() {
                    break;
                }
                let items: Vec<Submission> = rows
                    .iter()
                    .map(|r| Submission {
                        source: r.source.clone(),
                        raw: r.raw.clone(),
                    })
                    .collect();
                let prepared = self.decode_and_verify(items).await;
                self.store_prepared(&prepared).await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let mut tx = self.db.begin_write().await?;
                store::readings::mark_readmitted(&mut tx, &ids, ms(self.clock.now())).await?;
                tx.commit().await?;
                self.admission
                    .lock()
                    .expect("admission lock")
                    .release(&gateway, ids.len() as u32);
                total += ids.len();
                tracing::info!(%gateway, readings = ids.len(), "held readings re-admitted: the gateway is enrolled now");
            }
        }
        Ok(total)
    }

    /// Checks each parsed submission against the registry and the replay state (recording the
    /// ones to store in it) and sorts the batch into rows, quarantine and outcomes.
    fn classify(
        &self,
        state: &mut super::IngestState,
        old_digests: &HashMap<String, [u8; 32]>,
        items: &[Submission],
        parsed: &[Result<(SignedEnvelope, Reading), Reason>],
        sig_ok: &[bool],
    ) -> Batch {
        let mut sig_ok = sig_ok.iter().copied();
        let now = self.clock.now();
        let now_ms = ms(now);
        let mut batch = Batch::default();
        let registry = self.registry.read().expect("registry lock");
        let mut admission = self.admission.lock().expect("admission lock");
        let clock = Instant::now();
        // Whether an interval is settled, formatted and looked up once per interval of the
        // batch (formatting its key was a sixth of this function's time).
        let mut settled_intervals: HashMap<(i64, u16), bool> = HashMap::new();
        let settled_keys = &state.settled;
        let mut settled = |reading: &Reading| {
            let interval = reading.interval;
            *settled_intervals
                .entry((interval.start_unix(), interval.length().minutes()))
                .or_insert_with(|| settled_keys.contains(&interval.key()))
        };
        for (item, p) in items.iter().zip(parsed) {
            let (env, reading) = match p {
                Ok(ok) => ok,
                Err(reason) => {
                    let keep = admission.sample(&admission::budget_key(&item.source, None), clock);
                    batch.junk(item, None, reason, keep, now_ms);
                    continue;
                }
            };
            let signature_ok = sig_ok.next().unwrap_or(false);
            let key = reading.idempotency_key();
            let Some(enrollment) = registry.get(&reading.gateway) else {
                let gateway = reading.gateway.to_string();
                if admission.hold(&gateway) {
                    let reason = Reason::new(
                        ReasonCode::UnknownGateway,
                        format!(
                            "gateway {gateway} is not enrolled with the market yet: the reading is held and re-admitted automatically once the market enrols the gateway"
                        ),
                    );
                    batch.held.push(gateway);
                    batch.quarantine(item, env, (&key, reading), &reason, "held", now_ms);
                } else {
                    let reason = Reason::new(
                        ReasonCode::UnknownGateway,
                        format!(
                            "gateway {gateway} is not enrolled with the market, and settlement holds as many readings of unknown gateways as it may; enrol the gateway and resend"
                        ),
                    );
                    let keep = admission.sample(&gateway, clock);
                    batch.junk(item, Some((&key, reading)), &reason, keep, now_ms);
                }
                continue;
            };
            let ctx = Context {
                enrollment,
                history: state.chain.gateways.get(&reading.gateway),
                stored_digest: state
                    .chain
                    .digests
                    .get(&key)
                    .or_else(|| old_digests.get(&key))
                    .copied(),
                interval_settled: settled(reading),
                now,
                limits: self.settings.limits,
            };
            let verdict = verify::check(env, reading, signature_ok, &ctx);
            let status = match &verdict {
                Verdict::Accept => "accepted",
                Verdict::Flag(_) => "flagged",
                Verdict::Late(_) => "late",
                Verdict::Duplicate => {
                    batch.plain(key, ReadingStatus::Duplicate);
                    continue;
                }
                Verdict::Reject(reason) => {
                    let keep = admission.sample(reading.gateway.as_str(), clock);
                    batch.junk(item, Some((&key, reading)), reason, keep, now_ms);
                    continue;
                }
            };
            let digest = env.digest();
            state.chain.record(reading, digest);
            batch.rows.push(reading_row(
                key.clone(),
                env,
                reading,
                enrollment,
                digest,
                status,
                now_ms,
            ));
            match verdict {
                Verdict::Flag(reason) | Verdict::Late(reason) => {
                    batch.quarantine(item, env, (&key, reading), &reason, "open", now_ms);
                }
                _ => batch.plain(key, ReadingStatus::Accepted),
            }
        }
        batch
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
                ids.push(store::readings::insert_quarantine_pg(&mut tx, row).await?);
            }
            tx.commit().await?;
            return Ok(ids);
        }
        let mut tx = self.db.begin_write().await?;
        store::insert_readings(&mut tx, rows, store::rows_per_statement(self.db.backend)).await?;
        let mut ids = Vec::with_capacity(quarantine.len());
        for (_, row) in quarantine {
            ids.push(store::insert_quarantine(&mut tx, row).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }
}
