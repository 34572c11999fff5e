//! Automatic clearing at each interval's gate closure, and publishing results on MQTT.
//!
//! The loop clears intervals strictly in order, from the one after the latest stored result
//! (or, on a fresh database, from the earliest interval that has orders or the next open one).
//! After downtime it catches up at once. Every result goes to SSE subscribers (from
//! [`Market::clear_interval`]) and, if a broker is configured, is published retained at QoS 1
//! on `protocol::topics::result(zone, interval)`, retried until the broker acknowledges.

use crate::service::Market;
use gridmesh_protocol::Interval;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_runtime::mqtt::{MqttHandle, Qos};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The first interval the loop will clear.
pub async fn first_interval(market: &Market) -> Result<Interval, crate::error::MarketError> {
    let length = market.config.interval_minutes;
    if let Some(start) = market.store.last_result_start().await? {
        let last = Interval::from_unix(start, length.minutes().into())
            .map_err(|e| crate::error::MarketError::InvalidRequest(e.to_string()))?;
        return Ok(last.next());
    }
    let next_open = market.next_open();
    let earliest = market.store.earliest_order_interval(i64::MIN).await?;
    Ok(match earliest {
        Some(s) if s < next_open.start_unix() => {
            Interval::from_unix(s, length.minutes().into()).unwrap_or(next_open)
        }
        _ => next_open,
    })
}

/// Runs the clearing loop until `cancel` fires.
pub async fn run(
    market: Arc<Market>,
    mut next: Interval,
    publish: Option<mpsc::UnboundedSender<IntervalResult>>,
    cancel: CancellationToken,
) {
    let lead = market.config.lead();
    loop {
        let closure = next.gate_closure(lead);
        tokio::select! {
            _ = market.clock.sleep_until(closure) => {}
            _ = cancel.cancelled() => return,
        }
        match market.clear_interval(next).await {
            Ok(result) => {
                if let Some(tx) = &publish {
                    let _ = tx.send(result);
                }
                next = next.next();
            }
            Err(error) => {
                tracing::error!(interval = %next, %error, "clearing failed; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
}

/// Publishes results retained on MQTT, in order, retrying each until acknowledged.
pub async fn publish_results(
    market: Arc<Market>,
    mqtt: MqttHandle,
    mut results: mpsc::UnboundedReceiver<IntervalResult>,
    cancel: CancellationToken,
) {
    while let Some(result) = tokio::select! {
        r = results.recv() => r,
        _ = cancel.cancelled() => None,
    } {
        let topic = gridmesh_protocol::topics::result(&market.config.zone, &result.interval);
        let payload = serde_json::to_vec(&result).expect("a result serialises");
        let mut backoff = Duration::from_millis(100);
        loop {
            match mqtt
                .publish(topic.clone(), payload.clone(), Qos::AtLeastOnce, true)
                .await
            {
                Ok(()) => {
                    crate::metrics::Metrics::inc(&market.metrics.results_published);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%topic, %error, "result not published yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
