//! Token operations: holder-signed transfers and retirements of lots, and the operator's
//! acceptance of a flagged reading (which releases the mints withheld for it).

use super::settle::mint_body;
use super::{Receipt, Service, ServiceError, ms, unix_time};
use crate::ledger::{EntryBody, RetireEntry, TransferEntry};
use crate::rules::{self, MintPlan};
use crate::store::{self, StoreError};
use gridmesh_protocol::api::readings::ReasonCode;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::signing::{PublicKey, SignedEnvelope};
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use gridmesh_protocol::{ParticipantId, Wh};

impl Service {
    /// Checks that `signer` is `participant`'s key valid now (settlement's clock): a key
    /// replaced by a rotation is refused with the time it was replaced.
    fn check_holder_key(
        &self,
        participant: &ParticipantId,
        signer: &PublicKey,
        what: &str,
    ) -> Result<(), ServiceError> {
        if self.participant_key(participant).is_none() {
            return Err(ServiceError::Forbidden(format!(
                "participant {participant} is not registered with the market, so its signature cannot be checked"
            )));
        }
        let now = self.clock.now().timestamp();
        let key = self.participant_key_at(participant, now);
        if key.as_ref() == Some(signer) {
            return Ok(());
        }
        if let Some((_, until)) = self
            .replaced_keys(participant, now)
            .into_iter()
            .find(|(k, _)| k == signer)
        {
            return Err(ServiceError::Forbidden(format!(
                "key_mismatch: the {what} is signed with a key of {participant} that was replaced at {}; sign with the current key",
                unix_time(until)
            )));
        }
        Err(ServiceError::Forbidden(match key {
            Some(key) => format!(
                "the {what} is signed by {signer}, but {participant}'s registered key is {key}"
            ),
            None => format!(
                "participant {participant} has no key valid now, so its signature cannot be checked"
            ),
        }))
    }

    /// Applies a holder-signed transfer of part of a lot.
    pub async fn transfer(&self, envelope: SignedEnvelope) -> Result<Receipt, ServiceError> {
        let t: TokenTransfer = envelope
            .open()
            .map_err(|e| ServiceError::BadRequest(format!("not a valid signed transfer: {e}")))?;
        self.check_holder_key(&t.from, &envelope.public_key, "transfer")?;
        if t.from == t.to {
            return Err(ServiceError::BadRequest(
                "a transfer needs a recipient other than the holder".into(),
            ));
        }
        if self.participant_key(&t.to).is_none() {
            return Err(ServiceError::BadRequest(format!(
                "the recipient {} is not a participant registered with the market; tokens can be transferred only to registered participants (check the id, or enrol the recipient first)",
                t.to
            )));
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
            .apply_op(
                &envelope,
                &lot,
                &t.from,
                t.amount,
                body,
                Some(&t.to),
                t.nonce,
            )
            .await?;
        self.metrics.tokens_transferred_wh.add(t.amount.0 as u64);
        Ok(receipt)
    }

    /// Applies a holder-signed retirement.
    pub async fn retire(&self, envelope: SignedEnvelope) -> Result<Receipt, ServiceError> {
        let r: TokenRetire = envelope
            .open()
            .map_err(|e| ServiceError::BadRequest(format!("not a valid signed retirement: {e}")))?;
        self.check_holder_key(&r.holder, &envelope.public_key, "retirement")?;
        let lot = hex::encode(r.lot);
        let body = EntryBody::Retire(RetireEntry {
            envelope: envelope.clone(),
            lot: lot.clone(),
            holder: r.holder.clone(),
            amount: r.amount,
        });
        let receipt = self
            .apply_op(&envelope, &lot, &r.holder, r.amount, body, None, r.nonce)
            .await?;
        self.metrics.tokens_retired_wh.add(r.amount.0 as u64);
        Ok(receipt)
    }

    /// Applies a transfer (`to` set) or a retirement once: the exact same signed operation
    /// again is a duplicate (200), another operation reusing the holder's nonce of that kind
    /// (another amount, lot or recipient) is refused (409).
    #[allow(clippy::too_many_arguments)]
    async fn apply_op(
        &self,
        envelope: &SignedEnvelope,
        lot: &str,
        holder: &ParticipantId,
        amount: Wh,
        body: EntryBody,
        to: Option<&ParticipantId>,
        nonce: u64,
    ) -> Result<Receipt, ServiceError> {
        let kind = if to.is_some() { "transfer" } else { "retire" };
        // A transfer's tokens end in a new lot named by its entry; a retirement's stay put.
        let receipt = |entry: String, duplicate: bool| Receipt {
            lot: if to.is_some() {
                entry.clone()
            } else {
                lot.to_owned()
            },
            entry,
            duplicate,
        };
        let _ledger = self.ledger.lock().await;
        let op = envelope.digest_hex();
        let mut tx = self.db.begin_write().await?;
        if let Some(entry) = store::ledger::entry_for_op(&mut tx, &op).await? {
            return Ok(receipt(entry, true));
        }
        if let Some(other) = store::ledger::nonce_op(&mut tx, holder.as_str(), kind, nonce).await? {
            return Err(ServiceError::Conflict(format!(
                "nonce {nonce} was already used by another {kind} of {holder} (signed operation {other}); a nonce is never reused: sign the {kind} again with a fresh nonce"
            )));
        }
        let (owner, remaining, origin) = store::ledger::lot(&mut tx, lot)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no token lot {lot}")))?;
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
        store::ledger::use_nonce(&mut tx, holder.as_str(), kind, nonce, &op).await?;
        let entry = store::insert_entry(&mut tx, &body, Some(op), now).await?;
        let retired = if to.is_some() { 0 } else { amount.0 };
        store::ledger::spend_lot(&mut tx, lot, amount.0, retired).await?;
        if let Some(to) = to {
            store::insert_lot(&mut tx, &entry, to.as_str(), &origin, Some(lot), amount).await?;
        }
        tx.commit().await?;
        Ok(receipt(entry, false))
    }

    /// Settles a settled interval again after one of its flagged readings was accepted: its
    /// statements and compliance rows are replaced by those of its now trusted readings (see
    /// [`rules`](crate::rules)). An overflow answers 409 and leaves everything as it was.
    async fn correct_statements(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        interval_key: &str,
    ) -> Result<(), ServiceError> {
        let (body, _) = store::intervals::result_for_settling(tx, interval_key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("settled result {interval_key} is gone")))?;
        let result: IntervalResult = serde_json::from_str(&body)
            .map_err(|e| StoreError::Corrupt(format!("stored result {interval_key}: {e}")))?;
        let (readings, sites) = self.metered(tx, &result.interval).await?;
        let (settlement, compliance) = rules::settle_with_envelopes(&result, &readings, &sites)
            .map_err(|e| {
                ServiceError::Conflict(format!(
                    "accepting this reading would make interval {interval_key} unsettleable: {e}"
                ))
            })?;
        let per = store::rows_per_statement(self.db.backend);
        let start = result.interval.start_unix();
        store::intervals::delete_statements_and_compliance(tx, interval_key).await?;
        store::intervals::insert_statements(tx, interval_key, start, &settlement.statements, per)
            .await?;
        store::intervals::insert_compliance(tx, interval_key, start, &compliance, per).await?;
        tracing::info!(
            interval = interval_key,
            "flagged reading accepted: the interval's statements were corrected"
        );
        Ok(())
    }

    /// An operator accepts a flagged reading: it becomes trusted, the statements of its
    /// interval (if settled) are corrected to include its energy, and withheld mints whose
    /// readings are all accepted now are minted (into the next block).
    pub async fn accept_quarantined(&self, id: i64) -> Result<usize, ServiceError> {
        let _ledger = self.ledger.lock().await;
        let mut tx = self.db.begin_write().await?;
        let (code, status, key) = store::readings::quarantine_state(&mut tx, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no quarantined reading {id}")))?;
        let acceptable = ReasonCode::parse(&code).is_some_and(ReasonCode::operator_acceptable);
        if !acceptable {
            return Err(ServiceError::Conflict(format!(
                "quarantined reading {id} was refused for `{code}`; only readings flagged as implausible can be accepted (a bad signature, replay or conflict never can)"
            )));
        }
        if status == "accepted" {
            return Ok(0);
        }
        let now = ms(self.clock.now());
        let key = key.unwrap_or_default();
        store::readings::accept_quarantined(&mut tx, id, &key, now).await?;
        if let Some(interval_key) =
            store::intervals::settled_interval_of_reading(&mut tx, &key).await?
        {
            self.correct_statements(&mut tx, &interval_key).await?;
        }
        let mut released = 0;
        for (wid, interval, body) in store::intervals::open_withheld(&mut tx).await? {
            let plan: MintPlan = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("withheld mint {wid}: {e}")))?;
            let mut clear = true;
            for d in plan.seller_readings.iter().chain(&plan.buyer_readings) {
                clear &= !store::readings::is_flagged(&mut tx, d).await?;
            }
            if clear {
                let body = mint_body(&interval, &plan, true);
                let hash = store::insert_entry(&mut tx, &body, None, now).await?;
                store::insert_lot(
                    &mut tx,
                    &hash,
                    plan.buyer.as_str(),
                    &hash,
                    None,
                    plan.amount,
                )
                .await?;
                store::intervals::release_withheld(&mut tx, wid).await?;
                released += 1;
            }
        }
        tx.commit().await?;
        Ok(released)
    }
}
