//! Fetching what the market and settlement know about the household, for the local page and
//! Home Assistant: each interval's cleared result once (the market's `GET
//! /intervals/{start}/result`, signed by the gateway, shows the household its own orders), and
//! settlement's statements, token balances and quarantined readings every
//! [`SETTLEMENT_PERIOD`] (signed as the household, `GET /statements`, `/balances/{participant}`,
//! `/quarantine`).
//!
//! Runs only when the page or Home Assistant discovery is on; failures are kept in the view
//! (the page shows them) and retried.

use crate::envelope::{participant_signed_get, signed_get};
use crate::status::Status;
use gridmesh_protocol::api::settlement::Statement;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::order::Side;
use gridmesh_protocol::{GatewayId, Interval, NodeId, ParticipantId};
use gridmesh_runtime::clock::Clock;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often settlement is asked again (real time).
pub const SETTLEMENT_PERIOD: Duration = Duration::from_secs(20);

/// What the fetcher needs.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// The market's base URL.
    pub market_url: Option<String>,
    /// Settlement's base URL.
    pub settlement_url: Option<String>,
    /// The gateway.
    pub gateway: GatewayId,
    /// The household.
    pub participant: ParticipantId,
    /// The household's node (its price).
    pub node: NodeId,
    /// The gateway's (and household's) key.
    pub key: SigningKeyPair,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The gateway clock.
    pub clock: Clock,
    /// The interval length.
    pub length: gridmesh_protocol::IntervalLength,
    /// Where the results go.
    pub status: Arc<Status>,
    /// Real time between rounds.
    pub period: Duration,
}

impl Fetcher {
    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut last_settlement: Option<tokio::time::Instant> = None;
        loop {
            if let Some(market) = &self.market_url {
                self.fetch_results(market.trim_end_matches('/')).await;
            }
            if let Some(settlement) = &self.settlement_url
                && last_settlement.is_none_or(|t| t.elapsed() >= SETTLEMENT_PERIOD)
            {
                last_settlement = Some(tokio::time::Instant::now());
                self.fetch_settlement(settlement.trim_end_matches('/'))
                    .await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.period) => {}
            }
        }
    }

    /// The results of the previous and the current interval that are not fetched yet (both
    /// cleared at their gate closure, before they began: usually one request per interval).
    async fn fetch_results(&self, market: &str) {
        let current = Interval::containing(self.clock.now(), self.length);
        let previous =
            Interval::containing(current.start() - chrono::Duration::seconds(1), self.length);
        for interval in [previous, current] {
            let done = self.status.with_household(|h| {
                h.intervals
                    .iter()
                    .any(|r| r.start == interval.start() && r.cleared)
            });
            if done {
                continue;
            }
            let url = format!(
                "{market}/intervals/{}/result",
                interval.start().format("%Y-%m-%dT%H:%M:%SZ")
            );
            let response = signed_get(&self.http, &url, &self.gateway, &self.key)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let result = match response {
                Ok(r) if r.status().is_success() => r.json::<IntervalResult>().await.ok(),
                Ok(r) => {
                    tracing::debug!(status = %r.status(), %interval, "no cleared result yet");
                    None
                }
                Err(error) => {
                    tracing::debug!(%error, "the market is unreachable for the local page");
                    None
                }
            };
            if let Some(result) = result {
                self.status.update_household(|h| {
                    record_result(h.row(interval), &result, &self.participant, &self.node)
                });
            }
        }
    }

    async fn fetch_settlement(&self, base: &str) {
        let get = |path: String| {
            participant_signed_get(
                &self.http,
                &format!("{base}{path}"),
                &self.participant,
                &self.key,
            )
            .timeout(Duration::from_secs(10))
            .send()
        };
        let statements = json::<Vec<Statement>>(get("/statements".into()).await).await;
        let balances =
            json::<serde_json::Value>(get(format!("/balances/{}", self.participant)).await).await;
        let quarantine = json::<serde_json::Value>(get("/quarantine?limit=20".into()).await).await;
        let month = self.clock.now().format("%Y-%m").to_string();
        self.status.update_household(|h| {
            let view = &mut h.settlement;
            let mut errors = Vec::new();
            match statements {
                Ok(mut list) => {
                    let this_month: Vec<&Statement> = list
                        .iter()
                        .filter(|s| s.interval.starts_with(&month))
                        .collect();
                    view.month_net = this_month
                        .iter()
                        .try_fold(0i64, |acc, s| acc.checked_add(s.net.0));
                    view.month_sold_wh = this_month
                        .iter()
                        .try_fold(0i64, |acc, s| acc.checked_add(s.sold.0));
                    view.month_bought_wh = this_month
                        .iter()
                        .try_fold(0i64, |acc, s| acc.checked_add(s.bought.0));
                    view.month = Some(month.clone());
                    list.sort_by(|a, b| b.interval.cmp(&a.interval));
                    list.truncate(24);
                    view.statements = list;
                }
                Err(e) => errors.push(format!("statements: {e}")),
            }
            match balances {
                Ok(b) => view.balances = Some(b),
                Err(e) => errors.push(format!("tokens: {e}")),
            }
            match quarantine {
                Ok(q) => view.quarantine = Some(q),
                Err(e) => errors.push(format!("quarantine: {e}")),
            }
            if errors.is_empty() {
                view.fetched_at = Some(chrono::Utc::now());
                view.error = None;
            } else {
                view.error = Some(errors.join("; "));
            }
        });
    }
}

/// Settlement's answer as `T`, or what went wrong in words for the page.
async fn json<T: serde::de::DeserializeOwned>(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, String> {
    let response = response.map_err(|e| format!("settlement is unreachable ({e})"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (is the household enrolled with this gateway's key? run `edge-gateway enroll`)"
        } else {
            ""
        };
        return Err(format!(
            "settlement answered {status}: {}{hint}",
            body.chars().take(300).collect::<String>()
        ));
    }
    response
        .json::<T>()
        .await
        .map_err(|e| format!("settlement's answer is not understood: {e}"))
}

/// Fills a row from the market's result: the household's orders, what cleared, the price at
/// its node.
pub fn record_result(
    row: &mut super::IntervalRow,
    result: &IntervalResult,
    participant: &ParticipantId,
    node: &NodeId,
) {
    row.orders = result
        .orders
        .iter()
        .filter(|o| &o.participant == participant)
        .map(|o| super::OrderRow {
            side: match o.side {
                Side::Buy => "buy",
                Side::Sell => "sell",
            },
            quantity_wh: o.quantity.0,
            limit_price: o.limit_price.0,
            cleared_wh: o.cleared.0,
        })
        .collect();
    let sum = |side: &str| {
        row.orders
            .iter()
            .filter(|o| o.side == side)
            .try_fold(0i64, |acc, o| acc.checked_add(o.cleared_wh))
    };
    row.sold_wh = sum("sell");
    row.bought_wh = sum("buy");
    row.price = result.prices.get(node).map(|p| p.0);
    row.cleared = true;
}
