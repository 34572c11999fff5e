//! "Nothing lost, nothing counted twice", checked from the outside through settlement's REST
//! API: every home has exactly one statement per interval, settled from its own readings; each
//! interval has exactly one sealed block whose mints equal the statements' tokens; money
//! balances; nothing sits in quarantine.

use gridmesh_protocol::api::settlement::{
    BlockSummary, EntryBody, EntryView, QuarantineItem, Statement,
};
use gridmesh_protocol::interval::Interval;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::Duration;

/// An invariant that does not hold, with the evidence.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// A sealed block as `GET /ledger/blocks` lists it.
pub type Block = BlockSummary;

/// GETs `url` and decodes JSON, or says why not. Sends the operator's token of the test
/// deployments ([`crate::neighbourhood::DEMO_OPERATOR_TOKEN`]) as `Bearer`: statements and
/// quarantine items are household data, readable only by the household, auditors and the
/// operator (issue 13).
pub async fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, Violation> {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(crate::neighbourhood::DEMO_OPERATOR_TOKEN)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| Violation(format!("GET {url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(Violation(format!("GET {url}: {status} {body}")));
    }
    response
        .json()
        .await
        .map_err(|e| Violation(format!("GET {url}: {e}")))
}

/// The intervals `first`, `first.next()`, … (`count` of them).
pub fn intervals_from(first: Interval, count: usize) -> Vec<Interval> {
    std::iter::successors(Some(first), |i| Some(i.next()))
        .take(count)
        .collect()
}

/// Polls settlement at `settlement` (base URL) until interval `last` is sealed, at most `within`
/// real time; returns all blocks.
pub async fn wait_sealed(
    settlement: &str,
    last: &Interval,
    within: Duration,
) -> Result<Vec<Block>, Violation> {
    let key = last.key();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // A service being restarted may refuse a poll or two; only the deadline fails.
        let blocks: Result<Vec<Block>, Violation> =
            get_json(&format!("{settlement}/ledger/blocks?limit=1000")).await;
        if let Ok(blocks) = &blocks
            && blocks.iter().any(|b| b.header.interval == key)
        {
            return Ok(blocks.clone());
        }
        if tokio::time::Instant::now() > deadline {
            let sealed = blocks
                .map(|b| b.into_iter().map(|b| b.header.interval).collect::<Vec<_>>())
                .map_err(|e| e.0);
            return Err(Violation(format!(
                "interval {key} was not sealed within {within:?}; sealed: {sealed:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Checks that every participant in `participants` has exactly one statement, not estimated,
/// in every interval of `intervals`; that each interval has exactly one block whose mints equal
/// the statements' tokens; that money lines add up and peer money cancels; and that settlement
/// quarantined nothing. Returns the statements by (participant, interval key).
pub async fn check_settled(
    settlement: &str,
    intervals: &[Interval],
    participants: &[String],
) -> Result<BTreeMap<(String, String), Statement>, Violation> {
    let blocks: Vec<Block> = get_json(&format!("{settlement}/ledger/blocks?limit=1000")).await?;
    let mut problems = Vec::new();
    let mut found = BTreeMap::new();
    for interval in intervals {
        let key = interval.key();
        let statements: Vec<Statement> = get_json(&format!(
            "{settlement}/statements?interval={}",
            interval.start().format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .await?;
        let statements: Vec<Statement> = statements
            .into_iter()
            .filter(|s| s.interval == key)
            .collect();
        for participant in participants {
            let mine: Vec<&Statement> = statements
                .iter()
                .filter(|s| s.participant.as_str() == participant)
                .collect();
            match mine.as_slice() {
                [one] if !one.estimated => {
                    found.insert((participant.clone(), key.clone()), (*one).clone());
                }
                [one] => problems.push(format!(
                    "{participant} in {key}: settled as estimated (its readings were lost): {one:?}"
                )),
                [] => problems.push(format!("{participant} in {key}: no statement")),
                many => problems.push(format!(
                    "{participant} in {key}: {} statements (counted twice): {many:?}",
                    many.len()
                )),
            }
        }
        for statement in &statements {
            let lines: i64 = statement.lines.iter().map(|l| l.amount.0).sum();
            if lines != statement.net.0 {
                problems.push(format!(
                    "{} in {key}: lines sum to {lines} but net is {}",
                    statement.participant, statement.net.0
                ));
            }
        }
        let peer: i64 = statements
            .iter()
            .flat_map(|s| &s.lines)
            .filter(|l| l.counterparty != "utility")
            .map(|l| l.amount.0)
            .sum();
        if peer != 0 {
            problems.push(format!("{key}: peer-to-peer money sums to {peer}, not 0"));
        }
        let sealing: Vec<&Block> = blocks.iter().filter(|b| b.header.interval == key).collect();
        match sealing.as_slice() {
            [block] => {
                let mut minted = 0i64;
                for hash in &block.entries {
                    let entry: EntryView =
                        get_json(&format!("{settlement}/ledger/entries/{hash}")).await?;
                    if let EntryBody::Mint(mint) = entry.body {
                        minted += mint.amount.0;
                    }
                }
                let tokens: i64 = statements.iter().map(|s| s.tokens.0).sum();
                if minted != tokens {
                    problems.push(format!(
                        "{key}: block {} mints {minted} Wh but statements say {tokens} Wh",
                        block.header.height
                    ));
                }
            }
            [] => problems.push(format!("{key}: no sealed block")),
            many => problems.push(format!("{key}: {} blocks seal it", many.len())),
        }
    }
    let quarantine: Vec<QuarantineItem> =
        get_json(&format!("{settlement}/quarantine?limit=1000")).await?;
    if !quarantine.is_empty() {
        problems.push(format!("settlement quarantined readings: {quarantine:#?}"));
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(Violation(problems.join("\n")))
    }
}

/// Whether a metered amount is within what boundary interpolation allows against the meter's
/// exact counters (5 Wh + 1 %, as the end-to-end test explains).
pub fn within_boundary_tolerance(measured: i64, real: i64) -> bool {
    (measured - real).abs() <= 5 + real.abs() / 100
}
