//! The read side: statements, envelope compliance, alerts and measured flows, balances with
//! provenance, ledger blocks and entries with inclusion proofs, stored readings and the
//! quarantine — each answered as a read model from `gridmesh_protocol::api`.

use super::{Service, ServiceError, parse_compliance};
use crate::compliance::{self, FlowAudience};
use crate::ledger::{BlockHeader, EntryBody, hex32, inclusion_proof, merkle_root};
use crate::rules::{self, Statement};
use crate::store::{self, StoreError};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use gridmesh_protocol::api::readings::ReasonCode;
use gridmesh_protocol::api::settlement::{
    Balances, BlockHeaderView, BlockSummary, EntryView, Holding, LEAF_HASHING, QuarantineItem,
    QuarantineStatus, StoredReading, StoredReadingStatus,
};
use gridmesh_protocol::envelope::{EnvelopeAlert, EnvelopeCompliance, MeasuredFlows};
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::signing::{PublicKey, Signable, SignedEnvelope};
use gridmesh_protocol::{GatewayId, NodeId, Wh};
use std::collections::BTreeMap;

impl Service {
    /// Statements, filtered by participant and/or interval (its key `START/MINUTES` or its
    /// RFC 3339 start).
    pub async fn statements(
        &self,
        participant: Option<&str>,
        interval: Option<&str>,
    ) -> Result<Vec<Statement>, ServiceError> {
        store::intervals::statements(
            &self.db.pool,
            participant.unwrap_or(""),
            interval.unwrap_or(""),
        )
        .await?
        .iter()
        .map(|body| {
            serde_json::from_str(body)
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
        let who = participant.unwrap_or("");
        let starts = store::intervals::compliance_starts(&self.db.pool, since, who, limit).await?;
        let (Some(first), Some(last)) = (starts.first(), starts.last()) else {
            return Ok(Vec::new());
        };
        store::intervals::compliance_between(&self.db.pool, *first, *last, who)
            .await?
            .iter()
            .map(|body| parse_compliance(body))
            .collect()
    }

    /// Envelope alerts over every settled interval (see [`compliance::alerts`]), newest first,
    /// at most `limit`.
    pub async fn envelope_alerts(&self, limit: usize) -> Result<Vec<EnvelopeAlert>, ServiceError> {
        let settled = store::intervals::settled_intervals(&self.db.pool).await?;
        let violations = store::intervals::violations(&self.db.pool)
            .await?
            .iter()
            .map(|body| parse_compliance(body))
            .collect::<Result<Vec<_>, _>>()?;
        let mut alerts = compliance::alerts(&settled, &violations);
        alerts.truncate(limit);
        Ok(alerts)
    }

    /// Measured flows of at most `limit` intervals with a stored result that starts at or after
    /// `since` and has ended by now, oldest first: per branch of the result's network and the
    /// root, from the readings settlement uses for money (see [`compliance::measured_flows`]).
    /// For the [`FlowAudience::Public`], branches that could single out fewer than
    /// [`compliance::MIN_PUBLIC_HOMES`] homes are left out
    /// ([`compliance::withhold_small_aggregates`]).
    pub async fn flows(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
        audience: FlowAudience,
    ) -> Result<Vec<MeasuredFlows>, ServiceError> {
        let now = self.clock.now().timestamp();
        let since = since.map_or(i64::MIN, |t| t.timestamp());
        let results = store::intervals::ended_results(&self.db.pool, since, now, limit).await?;
        let enrolled: BTreeMap<GatewayId, NodeId> = self
            .registry
            .read()
            .expect("registry lock")
            .values()
            .map(|g| (g.gateway.clone(), g.node.clone()))
            .collect();
        let mut out = Vec::with_capacity(results.len());
        for (key, body) in results {
            let result: IntervalResult = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("stored result {key}: {e}")))?;
            let readings = store::readings::metered_for(&self.db.pool, &result.interval).await?;
            let (_, by_gateway) = rules::meter(&readings).map_err(|e| {
                StoreError::Corrupt(format!("metered energy of {key} overflows: {e}"))
            })?;
            let mut flows =
                compliance::measured_flows(&result, &enrolled, &by_gateway).map_err(|e| {
                    StoreError::Corrupt(format!("measured flows of {key} overflow: {e}"))
                })?;
            if audience == FlowAudience::Public {
                compliance::withhold_small_aggregates(&mut flows, &result.network);
            }
            out.push(flows);
        }
        Ok(out)
    }

    /// A participant's holdings with provenance.
    pub async fn balances(&self, participant: &str) -> Result<Balances, ServiceError> {
        let mut holdings = Vec::new();
        let (mut total, mut retired) = (0i64, 0i64);
        for r in store::ledger::holdings(&self.db.pool, participant).await? {
            let origin: EntryBody = serde_json::from_slice(&r.origin_body)
                .map_err(|e| StoreError::Corrupt(format!("entry: {e}")))?;
            total += r.remaining;
            retired += r.retired;
            holdings.push(Holding {
                lot: r.lot,
                amount: Wh(r.remaining),
                retired: Wh(r.retired),
                received: Wh(r.initial),
                parent_lot: r.parent_lot,
                origin_mint: r.origin_mint,
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
        let mut out = Vec::new();
        for height in store::ledger::block_heights(&self.db.pool, limit).await? {
            if let Some(b) = self.block(height).await? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// One block with its entry hashes.
    pub async fn block(&self, height: i64) -> Result<Option<BlockSummary>, ServiceError> {
        let Some(r) = store::ledger::block(&self.db.pool, height).await? else {
            return Ok(None);
        };
        let header =
            BlockHeader::from_bytes(&r.header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let entries = store::ledger::block_entries(&self.db.pool, height).await?;
        Ok(Some(BlockSummary {
            header: BlockHeaderView {
                height: header.height,
                interval: header.interval.key(),
                prev_hash: header.prev_hash,
                merkle_root: header.merkle_root,
                entry_count: header.entry_count,
                sealed_at: header.sealed_at,
            },
            hash: r.hash,
            signature: hex::encode(r.signature),
            public_key: r.public_key,
            entries,
            header_base64: Some(base64::engine::general_purpose::STANDARD.encode(&r.header)),
        }))
    }

    /// A stored reading by the SHA-256 of its signed payload (the digest token provenance
    /// names): the signed envelope verbatim, the decoded reading and its status.
    pub async fn reading_by_digest(
        &self,
        digest: &str,
    ) -> Result<Option<StoredReading>, ServiceError> {
        let Some(r) = store::readings::by_digest(&self.db.pool, digest).await? else {
            return Ok(None);
        };
        let corrupt = |what: String| StoreError::Corrupt(format!("reading {digest}: {what}"));
        let reading = Reading::decode(&r.payload).map_err(|e| corrupt(e.to_string()))?;
        let signature: [u8; 64] = r
            .signature
            .try_into()
            .map_err(|_| corrupt("signature is not 64 bytes".into()))?;
        let public_key: PublicKey = r
            .public_key
            .parse()
            .map_err(|e| corrupt(format!("public key: {e}")))?;
        let status = StoredReadingStatus::parse(&r.status)
            .ok_or_else(|| corrupt(format!("unknown status `{}`", r.status)))?;
        Ok(Some(StoredReading {
            digest: digest.to_owned(),
            key: r.key,
            participant: r.participant,
            status,
            envelope: SignedEnvelope {
                payload: r.payload,
                signature,
                public_key,
            },
            reading,
        }))
    }

    /// One entry with its inclusion proof (once it is in a block).
    pub async fn entry(&self, hash: &str) -> Result<Option<EntryView>, ServiceError> {
        let Some(r) = store::ledger::entry(&self.db.pool, hash).await? else {
            return Ok(None);
        };
        let body: EntryBody = serde_json::from_slice(&r.body)
            .map_err(|e| StoreError::Corrupt(format!("entry: {e}")))?;
        let mut proof = None;
        let mut root = None;
        if let Some(h) = r.block_height {
            let hashes = store::ledger::block_entries(&self.db.pool, h).await?;
            let leaves = hashes
                .iter()
                .map(|h| hex32(h))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("block {h}: {e}")))?;
            let index = hashes.iter().position(|x| x == hash).unwrap_or(0);
            proof = Some(inclusion_proof(&leaves, index));
            root = Some(hex::encode(merkle_root(&leaves)));
        }
        Ok(Some(EntryView {
            hash: hash.to_owned(),
            seq: r.seq,
            kind: r.kind,
            body,
            // The exact bytes that were hashed, so anyone can recompute the leaf.
            body_base64: base64::engine::general_purpose::STANDARD.encode(&r.body),
            block_height: r.block_height,
            merkle_root: root,
            proof,
            leaf_hashing: LEAF_HASHING.to_owned(),
        }))
    }

    /// The quarantine list (newest first).
    pub async fn quarantine(&self, limit: i64) -> Result<Vec<QuarantineItem>, ServiceError> {
        self.quarantine_where(&store::readings::QuarantineFilter::default(), limit)
            .await
    }

    /// The quarantine items that pass `filter`, newest first, at most `limit`.
    pub async fn quarantine_where(
        &self,
        filter: &store::readings::QuarantineFilter,
        limit: i64,
    ) -> Result<Vec<QuarantineItem>, ServiceError> {
        store::readings::quarantine_filtered(&self.db.pool, filter, limit)
            .await?
            .into_iter()
            .map(|r| {
                let id = r.id;
                let code = ReasonCode::parse(&r.code).ok_or_else(|| {
                    StoreError::Corrupt(format!("quarantine {id}: unknown code `{}`", r.code))
                })?;
                let status = QuarantineStatus::parse(&r.status).ok_or_else(|| {
                    StoreError::Corrupt(format!("quarantine {id}: unknown status `{}`", r.status))
                })?;
                Ok(QuarantineItem {
                    id,
                    received_at: DateTime::from_timestamp_millis(r.received_at),
                    source: r.source,
                    key: r.key,
                    gateway: r.gateway,
                    raw: String::from_utf8_lossy(&r.raw).into_owned(),
                    acceptable: code.operator_acceptable(),
                    code,
                    reason: r.reason,
                    status,
                })
            })
            .collect()
    }
}
