//! Ingest: verify a batch of signed readings against the registry and the replay state, store
//! the good ones and quarantine the rest (verbatim, with the reason) in one transaction.

use super::{Event, ReadingOutcome, ReadingStatus, Service, ServiceError, Submission, ms};
use crate::store::{self, QuarantineRow, ReadingRow};
use crate::verify::{self, Context, Reason, ReasonCode, Verdict};
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::SignedEnvelope;

/// A batch classified under the ingest lock, ready to write.
#[derive(Default)]
struct Batch {
    outcomes: Vec<ReadingOutcome>,
    rows: Vec<ReadingRow>,
    quarantine: Vec<(ReasonCode, QuarantineRow)>,
}

impl Batch {
    fn quarantine(
        &mut self,
        item: &Submission,
        parsed: Option<(&str, &Reading)>,
        reason: &Reason,
        now_ms: i64,
    ) {
        let key = parsed.map(|(k, _)| k.to_owned());
        self.quarantine.push((
            reason.code,
            QuarantineRow {
                source: item.source.clone(),
                reading_key: key.clone(),
                gateway: parsed.map(|(_, r)| r.gateway.to_string()),
                raw: item.raw.clone(),
                code: reason.code.as_str(),
                reason: reason.message.clone(),
                received_at: now_ms,
            },
        ));
        self.outcomes.push(ReadingOutcome {
            key,
            status: ReadingStatus::Quarantined,
            code: Some(reason.code),
            reason: Some(reason.message.clone()),
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
fn reading_row(
    env: &SignedEnvelope,
    reading: &Reading,
    enrollment: &GatewayEnrollment,
    digest: [u8; 32],
    status: &'static str,
    now_ms: i64,
) -> ReadingRow {
    ReadingRow {
        key: reading.idempotency_key(),
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
    /// Verifies and stores a batch of readings in one transaction. `Err` means nothing of the
    /// batch was recorded (retry it); `Ok` has one outcome per submission, in order.
    pub async fn ingest(
        &self,
        items: Vec<Submission>,
    ) -> Result<Vec<ReadingOutcome>, ServiceError> {
        // Parse and check signatures outside the lock (the expensive part).
        let parsed: Vec<Result<(SignedEnvelope, Reading), Reason>> =
            items.iter().map(parse).collect();
        let envs: Vec<&SignedEnvelope> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(e, _)| e))
            .collect();
        let sig_ok = verify::verify_signatures(&envs);

        let mut state = self.ingest.lock().await;
        let batch = self.classify(&mut state, &items, &parsed, sig_ok);
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
        self.metrics
            .readings_duplicate
            .add(batch.count(ReadingStatus::Duplicate) as u64);
        self.metrics
            .readings_quarantined
            .add(batch.quarantine.len() as u64);
        for ((code, row), id) in batch.quarantine.iter().zip(ids) {
            let _ = self.events.send(Event::Quarantined {
                id,
                code: *code,
                reason: row.reason.clone(),
            });
        }
        Ok(batch.outcomes)
    }

    /// Checks each parsed submission against the registry and the replay state (recording the
    /// ones to store in it) and sorts the batch into rows, quarantine and outcomes.
    fn classify(
        &self,
        state: &mut super::IngestState,
        items: &[Submission],
        parsed: &[Result<(SignedEnvelope, Reading), Reason>],
        sig_ok: Vec<bool>,
    ) -> Batch {
        let mut sig_ok = sig_ok.into_iter();
        let now = self.clock.now();
        let now_ms = ms(now);
        let mut batch = Batch::default();
        let registry = self.registry.read().expect("registry lock");
        for (item, p) in items.iter().zip(parsed) {
            let (env, reading) = match p {
                Ok(ok) => ok,
                Err(reason) => {
                    batch.quarantine(item, None, reason, now_ms);
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
                batch.quarantine(item, Some((&key, reading)), &reason, now_ms);
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
                    batch.plain(key, ReadingStatus::Duplicate);
                    continue;
                }
                Verdict::Reject(reason) => {
                    batch.quarantine(item, Some((&key, reading)), reason, now_ms);
                    continue;
                }
            };
            let digest = env.digest();
            state.chain.record(reading, digest);
            batch.rows.push(reading_row(
                env, reading, enrollment, digest, status, now_ms,
            ));
            match verdict {
                Verdict::Flag(reason) | Verdict::Late(reason) => {
                    batch.quarantine(item, Some((&key, reading)), &reason, now_ms);
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
        let mut tx = self.db.pool.begin().await?;
        store::insert_readings(&mut tx, rows, store::rows_per_statement(self.db.backend)).await?;
        let mut ids = Vec::with_capacity(quarantine.len());
        for (_, row) in quarantine {
            ids.push(store::insert_quarantine(&mut tx, row).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }
}
