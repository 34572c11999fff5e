//! The refresher: polls the market and settlement REST APIs into a new [`Snapshot`], on a
//! timer and whenever an upstream event stream says something happened.
//!
//! Each service's calls are independent: a service that is down leaves its previous data in
//! place and its health says why, so the other service's data still updates.
//!
//! Every answer is decoded into the service's read model from `gridmesh_protocol::api` (or the
//! protocol's own types). An answer that does not decode is a broken contract: the service is
//! shown as unavailable with the decoder's message, and its previous data stays, rather than
//! columns going blank.
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

use crate::hub::Hub;
use crate::snapshot::Snapshot;
use crate::upstream::{UpstreamError, encode_component};
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use gridmesh_protocol::api::market::{BookDepth, MarketStatus};
use gridmesh_protocol::api::settlement::{Balances, BlockSummary, QuarantineItem, Statement};
use gridmesh_protocol::envelope::{EnvelopeAlert, MeasuredFlows};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken as CancelToken;

/// Runs until `token` is cancelled: refresh, then wait for the poll interval or a wake-up.
pub async fn run(hub: Arc<Hub>, token: CancelToken) {
    let mut cause = "start".to_owned();
    loop {
        refresh_once(&hub, &cause).await;
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(hub.config.poll_interval()) => cause = "poll".into(),
            woken = hub.woken() => cause = woken,
        }
    }
}

/// Market data read in one refresh.
#[derive(Debug, Default)]
struct MarketRead {
    status: Option<MarketStatus>,
    topology: Option<Network>,
    participants: Option<Vec<Participant>>,
    gateways: Option<Vec<GatewayEnrollment>>,
    new_results: Vec<IntervalResult>,
    next_interval: Option<String>,
    book: Option<Option<BookDepth>>,
}

/// Settlement data read in one refresh.
#[derive(Debug, Default)]
struct SettlementRead {
    quarantine: Option<Vec<QuarantineItem>>,
    blocks: Option<Vec<BlockSummary>>,
    statements: Option<Vec<Statement>>,
    balances: BTreeMap<String, Balances>,
    flows: Vec<MeasuredFlows>,
    envelope_alerts: Option<Vec<EnvelopeAlert>>,
}

/// How many of the newest intervals with measured flows are read again on every refresh:
/// settlement's figures for an interval grow while late readings still arrive.
pub const REREAD_MEASURED_INTERVALS: i32 = 4;

/// Reads both services once and publishes the new snapshot.
pub async fn refresh_once(hub: &Hub, cause: &str) {
    let before = hub.snapshot();
    let (market, settlement) =
        tokio::join!(read_market(hub, &before), read_settlement(hub, &before));
    let now = Utc::now();
    hub.metrics.refreshes.inc();
    if market.is_err() {
        hub.metrics.upstream_errors_market.inc();
    }
    if settlement.is_err() {
        hub.metrics.upstream_errors_settlement.inc();
    }
    let history = hub.config.history_intervals;
    hub.update(cause, |snap| {
        snap.refreshed_at = Some(now);
        match market {
            Ok(m) => {
                snap.market.succeeded(now);
                apply_market(snap, m, history);
            }
            Err(e) => snap.market.failed(e.to_string()),
        }
        match settlement {
            Ok(s) => {
                snap.settlement.succeeded(now);
                if let Some(q) = s.quarantine {
                    snap.quarantine = q;
                }
                if let Some(b) = s.blocks {
                    snap.blocks = b;
                }
                if let Some(st) = s.statements {
                    snap.statements = st;
                }
                if !s.balances.is_empty() {
                    snap.balances = s.balances;
                }
                merge_by_interval(&mut snap.measured_flows, s.flows, history, |m| {
                    m.interval.start()
                });
                if let Some(a) = s.envelope_alerts {
                    snap.envelope_alerts = a;
                }
            }
            Err(e) => snap.settlement.failed(e.to_string()),
        }
    });
}

fn apply_market(snap: &mut Snapshot, m: MarketRead, history: usize) {
    if m.status.is_some() {
        snap.status = m.status;
    }
    if m.topology.is_some() {
        snap.topology = m.topology;
    }
    if let Some(p) = m.participants {
        snap.participants = p;
    }
    if let Some(g) = m.gateways {
        snap.gateways = g;
    }
    snap.next_interval = m.next_interval.or(snap.next_interval.take());
    if let Some(book) = m.book {
        snap.book = book;
    }
    merge_results(&mut snap.results, m.new_results, history);
}

/// Adds `new` results to `results` (oldest first), replacing same-interval duplicates and
/// keeping only the newest `history`.
pub fn merge_results(results: &mut Vec<IntervalResult>, new: Vec<IntervalResult>, history: usize) {
    merge_by_interval(results, new, history, |r| r.interval.start());
}

/// Adds `new` items to `held` (sorted by `start`, oldest first), replacing items of the same
/// interval and keeping only the newest `history`.
pub fn merge_by_interval<T>(
    held: &mut Vec<T>,
    new: Vec<T>,
    history: usize,
    start: impl Fn(&T) -> DateTime<Utc>,
) {
    for item in new {
        let at = start(&item);
        match held.binary_search_by(|x| start(x).cmp(&at)) {
            Ok(i) => held[i] = item,
            Err(i) => held.insert(i, item),
        }
    }
    if held.len() > history {
        let excess = held.len() - history;
        held.drain(..excess);
    }
}

/// The market's status: an unreachable market or an answer that does not decode makes the
/// whole read fail (so the page says so); a missing optional resource (404) is just absent.
async fn read_market(hub: &Hub, before: &Snapshot) -> Result<MarketRead, UpstreamError> {
    let m = &hub.market;
    let status: MarketStatus = m.get("/status").await?;
    let (topology, participants, gateways) = tokio::join!(
        m.get::<Network>("/topology"),
        m.get::<Vec<Participant>>("/participants"),
        m.get::<Vec<GatewayEnrollment>>("/gateways"),
    );
    let topology = optional(topology)?;
    let participants = optional(participants)?;
    let gateways = optional(gateways)?;

    let minutes = i64::from(status.interval_minutes.max(1));
    let history = hub.config.history_intervals;
    let mut since = match before.results.last() {
        Some(last) => last.interval.start(),
        None => status.clock - ChronoDuration::minutes(minutes * history as i64 + minutes),
    };
    let mut new_results = Vec::new();
    for _page in 0..20 {
        let path = format!(
            "/results?since={}&limit={history}",
            encode_component(&since.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        );
        let page: Vec<IntervalResult> = match optional(m.get(&path).await)? {
            Some(v) => v,
            None => break,
        };
        let full = page.len() >= history;
        let newest = page.iter().map(|r| r.interval.start()).max();
        new_results.extend(page);
        match newest {
            Some(n) if full && n > since => since = n,
            _ => break,
        }
    }

    // The start as the market writes it (RFC 3339, `Z`), which is also the book's path.
    let next_interval = status
        .next_open_interval
        .start()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let book = optional(
        m.get::<BookDepth>(&format!(
            "/intervals/{}/book",
            encode_component(&next_interval)
        ))
        .await,
    )?;
    Ok(MarketRead {
        status: Some(status),
        topology,
        participants,
        gateways,
        new_results,
        next_interval: Some(next_interval),
        book: Some(book),
    })
}

async fn read_settlement(hub: &Hub, before: &Snapshot) -> Result<SettlementRead, UpstreamError> {
    let s = &hub.settlement;
    let (quarantine, blocks, statements, flows, envelope_alerts) = tokio::join!(
        s.get::<Vec<QuarantineItem>>("/quarantine"),
        s.get::<Vec<BlockSummary>>("/ledger/blocks"),
        s.get::<Vec<Statement>>("/statements"),
        read_flows(hub, before),
        s.get::<Vec<EnvelopeAlert>>("/compliance/alerts"),
    );
    let flows = flows?;
    let envelope_alerts = lenient(envelope_alerts)?;
    let quarantine = lenient(quarantine)?;
    let blocks = lenient(blocks)?.map(|mut list| {
        // Keep the newest 50 blocks, whatever order the service lists them in.
        list.sort_by_key(|b| std::cmp::Reverse(b.header.height));
        list.truncate(50);
        list
    });
    let statements = lenient(statements)?;
    let ids: Vec<String> = before
        .participants
        .iter()
        .map(|p| p.id.as_str().to_owned())
        .collect();
    let fetched = futures::future::join_all(ids.iter().map(|id| async move {
        let r = s
            .get::<Balances>(&format!("/balances/{}", encode_component(id)))
            .await;
        (id.clone(), r)
    }))
    .await;
    let mut balances = BTreeMap::new();
    for (id, r) in fetched {
        if let Some(v) = lenient(r)? {
            balances.insert(id, v);
        }
    }
    Ok(SettlementRead {
        quarantine,
        blocks,
        statements,
        balances,
        flows,
        envelope_alerts,
    })
}

/// Settlement's measured flows (`GET /flows?since=&limit=`, oldest first, `since` inclusive),
/// from a few intervals before the newest held one (their figures may still grow with late
/// readings), or from the oldest held cleared interval on the first read. Before any interval
/// is known there is nothing to ask for.
async fn read_flows(hub: &Hub, before: &Snapshot) -> Result<Vec<MeasuredFlows>, UpstreamError> {
    let mut since = match (before.measured_flows.last(), before.results.first()) {
        (Some(last), _) => {
            last.interval.start() - last.interval.length().duration() * REREAD_MEASURED_INTERVALS
        }
        (None, Some(first)) => first.interval.start(),
        (None, None) => return Ok(Vec::new()),
    };
    let limit = hub.config.history_intervals;
    let mut out = Vec::new();
    for _page in 0..20 {
        let path = format!(
            "/flows?since={}&limit={limit}",
            encode_component(&since.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        );
        let page: Vec<MeasuredFlows> = match lenient(hub.settlement.get(&path).await)? {
            Some(page) => page,
            None => break,
        };
        let full = page.len() >= limit;
        let newest = page.iter().map(|m| m.interval.start()).max();
        out.extend(page);
        match newest {
            Some(n) if full && n > since => since = n,
            _ => break,
        }
    }
    Ok(out)
}

/// 404 → `None`; anything else passes through.
fn optional<T>(r: Result<T, UpstreamError>) -> Result<Option<T>, UpstreamError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(UpstreamError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An unreachable service or an answer that does not decode as the shared type fails the
/// read (the service is shown as unavailable, with why); a 4xx/5xx for one resource leaves
/// that resource as it was.
fn lenient<T>(r: Result<T, UpstreamError>) -> Result<Option<T>, UpstreamError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_unreachable() || e.is_broken_contract() => Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "upstream resource not available");
            Ok(None)
        }
    }
}
