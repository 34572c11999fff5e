//! One line per interval for the demo's terminal: what cleared, at which prices, and how many
//! tokens settlement minted. Read through the services' public REST APIs, as any client would.

use gridmesh_protocol::api::settlement::{BlockSummary, EntryBody, EntryView};
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::units::Wh;
use std::collections::BTreeSet;
use std::time::Duration;

/// Formats minor units per MWh as c/kWh with two decimals (10 minor/MWh = 0.01 c/kWh).
pub fn cents_per_kwh(price: i64) -> String {
    let sign = if price < 0 { "-" } else { "" };
    let p = price.unsigned_abs();
    format!("{sign}{}.{:02}", p / 1000, (p % 1000) / 10)
}

/// Formats Wh as kWh with one decimal.
pub fn kwh(wh: Wh) -> String {
    let sign = if wh.0 < 0 { "-" } else { "" };
    let w = wh.0.unsigned_abs();
    format!("{sign}{}.{}", w / 1000, (w % 1000) / 100)
}

/// The line for a cleared interval.
pub fn result_line(result: &IntervalResult) -> String {
    let p2p: i64 = result
        .trades
        .iter()
        .filter(|t| {
            matches!(t.buyer, Counterparty::Order { .. })
                && matches!(t.seller, Counterparty::Order { .. })
        })
        .map(|t| t.energy.0)
        .sum();
    let p2p_trades = result
        .trades
        .iter()
        .filter(|t| {
            matches!(t.buyer, Counterparty::Order { .. })
                && matches!(t.seller, Counterparty::Order { .. })
        })
        .count();
    let prices: Vec<i64> = result.prices.values().map(|p| p.0).collect();
    let range = match (prices.iter().min(), prices.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => format!("{} c/kWh", cents_per_kwh(*lo)),
        (Some(lo), Some(hi)) => format!("{}–{} c/kWh", cents_per_kwh(*lo), cents_per_kwh(*hi)),
        _ => "no price".to_owned(),
    };
    let congested: Vec<&str> = result
        .flows
        .iter()
        .filter(|f| f.congested)
        .map(|f| f.node.as_str())
        .collect();
    format!(
        "{}  cleared {} kWh peer-to-peer in {} trades, utility sold {} / bought {} kWh, prices {}{}",
        result.interval.start().format("%H:%M"),
        kwh(Wh(p2p)),
        p2p_trades,
        kwh(result.utility_import),
        kwh(result.utility_export),
        range,
        if congested.is_empty() {
            String::new()
        } else {
            format!(", congested: {}", congested.join(" "))
        }
    )
}

/// Follows the market's results and settlement's blocks, printing one line for each. Full
/// results and ledger entries name households, so they are read with the auditor's token.
pub async fn report(
    market_url: String,
    settlement_url: String,
    auditor_token: String,
    cancel: tokio_util::sync::CancellationToken,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut seen_results = BTreeSet::new();
    let mut seen_blocks = BTreeSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(700)) => {}
        }
        if let Ok(results) = fetch::<Vec<IntervalResult>>(
            &http,
            &auditor_token,
            &format!("{market_url}/results?limit=20"),
        )
        .await
        {
            for result in results {
                if seen_results.insert(result.interval) {
                    println!("{}", result_line(&result));
                }
            }
        }
        if let Ok(blocks) = fetch::<Vec<BlockSummary>>(
            &http,
            &auditor_token,
            &format!("{settlement_url}/ledger/blocks?limit=10"),
        )
        .await
        {
            for block in blocks.into_iter().rev() {
                if !seen_blocks.insert(block.header.height) {
                    continue;
                }
                let mut minted = 0i64;
                for hash in &block.entries {
                    if let Ok(EntryView {
                        body: EntryBody::Mint(mint),
                        ..
                    }) = fetch::<EntryView>(
                        &http,
                        &auditor_token,
                        &format!("{settlement_url}/ledger/entries/{hash}"),
                    )
                    .await
                    {
                        minted += mint.amount.0;
                    }
                }
                println!(
                    "{}  settled: block #{} sealed, {} ledger entries, {} tokens minted (1 token = 1 Wh)",
                    block
                        .header
                        .interval
                        .split('T')
                        .nth(1)
                        .map_or(block.header.interval.as_str(), |t| &t[..5]),
                    block.header.height,
                    block.entries.len(),
                    minted
                );
            }
        }
    }
}

async fn fetch<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    bearer: &str,
    url: &str,
) -> Result<T, reqwest::Error> {
    http.get(url)
        .bearer_auth(bearer)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_format_as_people_read_them() {
        assert_eq!(cents_per_kwh(25_000), "25.00");
        assert_eq!(cents_per_kwh(8_123), "8.12");
        assert_eq!(cents_per_kwh(-1_500), "-1.50");
        assert_eq!(kwh(Wh(12_345)), "12.3");
        assert_eq!(kwh(Wh(-900)), "-0.9");
    }
}
