//! Results and settling: store the market's results (verifying signed ones), settle each
//! interval once it is due — statements, compliance rows, mints, withheld mints and a sealed
//! block in one transaction — and announce it (metrics, events, logs, envelope alerts).

use super::{Event, Service, ServiceError, SettleOutcome, ms, parse_compliance};
use crate::compliance;
use crate::ledger::{EntryBody, MintEntry, entry_hash};
use crate::rules::{self, MintPlan, Settlement};
use crate::store::ledger::MintRow;
use crate::store::{self, SealedBlock, StoreError};
use chrono::{DateTime, Utc};
use gridmesh_protocol::envelope::{EnvelopeAlert, EnvelopeCompliance, SignedResult};
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::signing::Signable;
use gridmesh_protocol::{Interval, Wh};

impl Service {
    /// Stores a cleared result (results are immutable: a second, different one is ignored).
    /// Returns whether it was new.
    pub async fn add_result(&self, result: &IntervalResult) -> Result<bool, ServiceError> {
        let body = serde_json::to_string(result).expect("serialisable");
        let mut tx = self.db.begin_write().await?;
        let new = store::intervals::insert_result(&mut **tx, &result.interval, body, None).await?;
        tx.commit().await?;
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
        let mut tx = self.db.begin_write().await?;
        let new =
            store::intervals::insert_result(&mut **tx, &result.interval, body, Some(attestation))
                .await?;
        tx.commit().await?;
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
        let v = store::intervals::latest_result_start(&self.db.pool).await?;
        Ok(v.and_then(|s| DateTime::from_timestamp(s, 0)))
    }

    /// Settles every stored result whose interval ended at least the grace period ago.
    pub async fn settle_due(&self) -> Result<Vec<String>, ServiceError> {
        let now = self.clock.now();
        let mut done = Vec::new();
        for (key, interval) in store::intervals::unsettled(&self.db.pool).await? {
            if interval?.end() + self.settings.grace > now {
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
        let oldest = store::intervals::oldest_unsettled(&self.db.pool).await?;
        Ok(oldest.map(|i| i.end() + self.settings.grace))
    }

    /// Settles one interval in one transaction: statements, mints, withheld mints and its
    /// block. Settling again changes nothing.
    pub async fn settle(&self, interval_key: &str) -> Result<SettleOutcome, ServiceError> {
        let mut ingest = self.ingest.lock().await;
        let _ledger = self.ledger.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin_write().await?;
        let (body, settled) = store::intervals::result_for_settling(&mut tx, interval_key)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "no cleared market result for interval {interval_key} yet"
                ))
            })?;
        if settled {
            return Ok(SettleOutcome::AlreadySettled);
        }
        let result: IntervalResult = serde_json::from_str(&body)
            .map_err(|e| StoreError::Corrupt(format!("stored result {interval_key}: {e}")))?;
        let (readings, sites) = self.metered(&mut tx, &result.interval).await?;
        let (settlement, compliance_rows) =
            rules::settle_with_envelopes(&result, &readings, &sites).map_err(|e| {
                ServiceError::Conflict(format!("cannot settle {interval_key}: {e}"))
            })?;
        if settlement.flagged_overflow {
            tracing::warn!(
                interval = interval_key,
                "the flagged readings' energy overflows when summed: settled without it, no mint withheld for it"
            );
        }
        let per = store::rows_per_statement(self.db.backend);
        let start = result.interval.start_unix();
        store::intervals::insert_statements(
            &mut tx,
            interval_key,
            start,
            &settlement.statements,
            per,
        )
        .await?;
        store::intervals::insert_compliance(&mut tx, interval_key, start, &compliance_rows, per)
            .await?;
        let started_alerts = alerts_started(&mut tx, &result.interval, &compliance_rows).await?;
        let (mints, minted) = mint_rows(interval_key, &settlement);
        store::ledger::insert_mints(&mut tx, &mints, ms(now), per).await?;
        store::intervals::insert_withheld(&mut tx, interval_key, &settlement.withheld).await?;
        let block = store::seal_block(&mut tx, result.interval, &self.authority, now).await?;
        store::intervals::mark_settled(&mut tx, interval_key).await?;
        tx.commit().await?;
        ingest.settled.insert(interval_key.to_owned());
        drop(ingest);
        let height = block.header.height;
        self.announce_settled(interval_key, &settlement, minted, block, &compliance_rows);
        self.announce_alerts(started_alerts);
        tracing::info!(
            interval = interval_key,
            height,
            minted = minted.0,
            "interval settled"
        );
        Ok(SettleOutcome::Settled { height })
    }

    /// The readings settlement meters for `interval`, with why the flagged ones were flagged and
    /// their sites' ratings (see [`rules::Sites`]).
    pub(super) async fn metered(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        interval: &Interval,
    ) -> Result<(Vec<rules::MeterRow>, rules::Sites), ServiceError> {
        let rows = store::readings::metered_for(&mut **tx, interval).await?;
        let mut sites = rules::Sites {
            reasons: store::intervals::flag_reasons(&mut **tx, interval).await?,
            ..Default::default()
        };
        let registry = self.registry.read().expect("registry lock");
        let flagged = rows
            .iter()
            .filter(|r| sites.reasons.contains_key(&r.digest));
        let enrolled: Vec<_> = flagged.filter_map(|r| registry.get(&r.gateway)).collect();
        sites.rate(enrolled, i64::from(interval.length().minutes()));
        Ok((rows, sites))
    }

    /// Metrics, events and logs of a settled interval.
    fn announce_settled(
        &self,
        interval_key: &str,
        settlement: &Settlement,
        minted: Wh,
        block: SealedBlock,
        compliance_rows: &[EnvelopeCompliance],
    ) {
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
        // A metric, not money: saturate instead of overflowing.
        let excess_wh = violations.iter().fold(0u64, |a, c| {
            a.saturating_add(c.excess_export_wh.0.max(0) as u64)
        });
        self.metrics.envelope_excess_wh.add(excess_wh);
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
    }

    /// Metrics, logs and events of envelope alerts that start now.
    fn announce_alerts(&self, started: Vec<EnvelopeAlert>) {
        for alert in started {
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
    }
}

/// The entries and lots of an interval's mints, and the tokens they mint.
fn mint_rows(interval_key: &str, settlement: &Settlement) -> (Vec<MintRow>, Wh) {
    let mut minted = Wh(0);
    let mut rows = Vec::with_capacity(settlement.mints.len());
    for plan in &settlement.mints {
        let body = mint_body(interval_key, plan, false).to_bytes();
        rows.push(MintRow {
            hash: hex::encode(entry_hash(&body)),
            body,
            holder: plan.buyer.to_string(),
            amount: plan.amount.0,
        });
        minted = minted.checked_add(plan.amount).unwrap_or(minted);
    }
    (rows, minted)
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
    window.extend(store::intervals::settled_before(tx, interval.start_unix()).await?);
    let oldest = window.iter().map(Interval::start_unix).min().unwrap_or(0);
    let mut violations: Vec<EnvelopeCompliance> = rows.to_vec();
    for body in store::intervals::violations_between(tx, oldest, interval.start_unix()).await? {
        violations.push(parse_compliance(&body)?);
    }
    Ok(compliance::alerts(&window, &violations)
        .into_iter()
        .filter(|a| a.intervals == 2 && a.last_interval == *interval)
        .collect())
}

pub(super) fn mint_body(interval: &str, plan: &MintPlan, released: bool) -> EntryBody {
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
