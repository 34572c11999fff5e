//! The bidding agent's task: wakes before each gate closure, plans with [`crate::agent`]
//! (`simple` or `scheduled`; sell quantities capped at the operating envelope's export limit),
//! signs and posts the orders to the market, and after clearing asks the control loop to steer
//! the battery. The `scheduled` strategy also reads every cleared result to learn the prices at
//! the home's node (kept in memory, eight days; after a restart it assumes the contract's
//! tariffs until results refill it, one past day's slot per interval).
//!
//! Orders name the market zone (`gridmesh/order/v2`): the configured `zone`, or else the zone
//! the market reports at `GET /status` (learned once). A configured zone that differs from the
//! market's is not overridden: the market refuses those orders, and the log says why.

use crate::config::{AgentStrategy, GatewayConfig};
use crate::envelope::{DefaultEnvelope, Intake};
use crate::outbox::Outbox;
use crate::status::Status;
use chrono::Duration as ChronoDuration;
use gridmesh_protocol::api::market::{ErrorBody, MarketStatus};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::{Interval, PricePerMwh, SignedEnvelope, ZoneId};
use gridmesh_runtime::clock::Clock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Everything the agent task needs.
pub struct AgentTask {
    /// The gateway config.
    pub config: GatewayConfig,
    /// The market's base URL.
    pub market: String,
    /// The participant's key.
    pub key: SigningKeyPair,
    /// For history.
    pub outbox: Outbox,
    /// Simulated or system time.
    pub clock: Clock,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Status.
    pub status: Arc<Status>,
    /// Latest battery SoC.
    pub soc: Arc<Mutex<Option<u16>>>,
    /// Battery steering requests to the reader (the control loop clips them to the envelope).
    pub steer: mpsc::Sender<SteerRequest>,
    /// The operating envelopes held (the agent never offers more than the home may export).
    pub intake: Arc<Intake>,
    /// Shutdown.
    pub cancel: CancellationToken,
}

/// A battery power for one interval: + charge, − discharge, 0 automatic (SunSpec model 124).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteerRequest {
    /// The interval it is for.
    pub interval: Interval,
    /// The power, W.
    pub watts: i64,
    /// What the household sold in the interval, Wh (with a feed-in price ≤ 0 the control loop
    /// curtails export beyond it: [`crate::agent::unpaid_export_curtailed`]).
    pub sold: gridmesh_protocol::Wh,
}

/// How the market answered an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    /// Accepted (2xx), or already accepted before (409 `replayed_nonce`: a duplicate).
    Submitted,
    /// Refused (any other 4xx/5xx, including 409 `gate_closed`).
    Failed,
}

/// Classifies the market's answer to `POST /orders` from its status and JSON body
/// `{code, message}`: a 409 counts as submitted only when it is a duplicate.
pub fn classify(status: u16, body: &str) -> Submission {
    if (200..300).contains(&status) {
        return Submission::Submitted;
    }
    if status == 409 {
        let error = serde_json::from_str::<ErrorBody>(body).ok();
        if error.is_some_and(|e| e.code == "replayed_nonce") {
            return Submission::Submitted;
        }
    }
    Submission::Failed
}

/// The market's zone from its `GET /status`, if it answers.
async fn market_zone(http: &reqwest::Client, market: &str) -> Result<ZoneId, String> {
    let response = http
        .get(format!("{market}/status"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("cannot reach the market: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET /status answered {}", response.status()));
    }
    let status: MarketStatus = response
        .json()
        .await
        .map_err(|e| format!("GET /status is not a market status: {e}"))?;
    ZoneId::new(&status.zone).map_err(|e| format!("the market names an invalid zone: {e}"))
}

/// Runs the agent until shutdown.
pub async fn run(task: AgentTask) {
    let mut known_zone = task.config.zone;
    let length = task.config.interval_length();
    let lead = ChronoDuration::seconds(task.config.agent.gate_closure_lead_s);
    let margin = ChronoDuration::seconds(task.config.agent.submit_margin_s);
    let market = task.market.trim_end_matches('/').to_owned();
    // Cleared prices at the home's node by interval start (the scheduled strategy's forecast).
    let mut cleared: BTreeMap<i64, PricePerMwh> = BTreeMap::new();
    loop {
        let now = task.clock.now();
        let mut target = Interval::next_open(now, length, lead);
        if target.gate_closure(lead) - margin < now {
            target = target.next();
        }
        let submit_at = target.gate_closure(lead) - margin;
        tokio::select! {
            _ = task.cancel.cancelled() => return,
            _ = task.clock.sleep_until(submit_at) => {}
        }
        let zone = match known_zone {
            Some(z) => z,
            None => match market_zone(&task.http, &market).await {
                Ok(z) => {
                    tracing::info!(zone = %z, "no zone configured: orders name the market's zone");
                    *known_zone.insert(z)
                }
                Err(e) => {
                    tracing::warn!(error = %e, interval = %target, "no zone configured and the market's is unknown: no orders for this interval (set `zone` in the config)");
                    continue;
                }
            },
        };
        let scheduled = task.config.agent.strategy == AgentStrategy::Scheduled;
        // The scheduled strategy forecasts load from the same weekday up to four weeks back.
        let rows = if scheduled { 29 * 96 } else { 8 * 96 };
        let history = task.outbox.history(rows).await.unwrap_or_default();
        let soc = *task.soc.lock().unwrap_or_else(|e| e.into_inner());
        let cap = task.intake.export_cap(&target);
        let (mut orders, base_grid) = if scheduled {
            let default_caps = DefaultEnvelope::of(&task.config).limits(&target);
            let plan = crate::agent::plan_scheduled(
                zone,
                &task.config.agent,
                &task.config.participant,
                &task.config.node,
                target,
                &crate::agent::ScheduledInputs {
                    history: &history,
                    cleared: &cleared,
                    soc_permille: soc,
                    site: &task.config.site,
                    export_cap: cap,
                    default_caps,
                },
            );
            tracing::debug!(interval = %target, base_grid_wh = plan.base_grid_wh, battery = ?plan.first, steps = plan.orders.len(), "battery schedule and bid curve");
            (plan.orders, plan.base_grid_wh)
        } else {
            let orders = crate::agent::plan(
                zone,
                &task.config.agent,
                &task.config.participant,
                &task.config.node,
                target,
                &history,
                soc,
                task.config.site.battery_w,
            );
            (orders, 0)
        };
        crate::agent::cap_sells(&mut orders, cap, task.config.agent.min_order_wh);
        for order in &orders {
            let envelope = SignedEnvelope::sign(order, &task.key);
            let result = task
                .http
                .post(format!("{market}/orders"))
                .json(&envelope)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match result {
                Ok(r) => {
                    let code = r.status();
                    let text = r.text().await.unwrap_or_default();
                    match classify(code.as_u16(), &text) {
                        Submission::Submitted => {
                            task.status.update(|s| s.orders_submitted += 1);
                            tracing::info!(interval = %target, side = ?order.side, quantity = order.quantity.0, "order submitted");
                        }
                        Submission::Failed => {
                            task.status.update(|s| s.orders_failed += 1);
                            tracing::warn!(%code, body = %text, "the market refused an order");
                        }
                    }
                }
                Err(e) => {
                    task.status.update(|s| s.orders_failed += 1);
                    tracing::warn!(error = %e, "cannot reach the market to submit an order");
                }
            }
        }
        let steer = task.config.agent.steer_battery && !orders.is_empty();
        // With a feed-in price at or below 0 the control loop needs the cleared sales (export
        // beyond them is curtailed).
        let unpaid_export = task.config.agent.feed_in_price.0 <= 0;
        if steer || scheduled || unpaid_export {
            let forecast = crate::agent::forecast_net(&history, &target).unwrap_or(0);
            tokio::select! {
                _ = task.cancel.cancelled() => return,
                _ = task.clock.sleep_until(target.start()) => {}
            }
            let Some(result) = fetch_result(&task, &market, &target).await else {
                continue;
            };
            if let Some(price) = result.prices.get(&task.config.node) {
                cleared.insert(target.start_unix(), *price);
            }
            if steer || unpaid_export {
                let watts = if !steer {
                    0
                } else if scheduled {
                    crate::agent::steering_for_position(
                        &result,
                        &task.config.participant,
                        base_grid,
                        task.config.site.battery_w,
                    )
                } else {
                    crate::agent::steering_for(&result, &task.config.participant, forecast)
                };
                let _ = task
                    .steer
                    .send(SteerRequest {
                        interval: target,
                        watts,
                        sold: crate::agent::cleared_sales(&result, &task.config.participant),
                    })
                    .await;
            }
            if scheduled {
                // Learn one more past price a day: the same slot yesterday, if missing (after a
                // restart the price history refills within a day).
                let yesterday = Interval::from_unix(
                    target.start_unix() - 86_400,
                    i64::from(target.length().minutes()),
                );
                if let Ok(y) = yesterday
                    && !cleared.contains_key(&y.start_unix())
                    && let Some(r) = fetch_result(&task, &market, &y).await
                    && let Some(price) = r.prices.get(&task.config.node)
                {
                    cleared.insert(y.start_unix(), *price);
                }
                // Eight days of slots are plenty for the per-slot means.
                let keep_from = target.start_unix() - 8 * 86_400;
                cleared.retain(|start, _| *start >= keep_from);
            }
        }
    }
}

/// The market's result of `interval`, signed for by the gateway (the market shows it its
/// household's part), or `None` when the market does not answer with one.
async fn fetch_result(
    task: &AgentTask,
    market: &str,
    interval: &Interval,
) -> Option<IntervalResult> {
    let url = format!(
        "{market}/intervals/{}/result",
        interval.start().format("%Y-%m-%dT%H:%M:%SZ")
    );
    let response =
        crate::envelope::signed_get(&task.http, &url, &task.config.gateway_id, &task.key)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<IntervalResult>().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_duplicate_409_counts_as_submitted() {
        assert_eq!(classify(201, "{}"), Submission::Submitted);
        assert_eq!(
            classify(409, r#"{"code":"replayed_nonce","message":"seen"}"#),
            Submission::Submitted
        );
        assert_eq!(
            classify(409, r#"{"code":"gate_closed","message":"too late"}"#),
            Submission::Failed
        );
        assert_eq!(classify(409, "not json"), Submission::Failed);
        assert_eq!(
            classify(422, r#"{"code":"invalid_quantity"}"#),
            Submission::Failed
        );
    }
}
