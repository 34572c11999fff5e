//! Automatic clearing at each interval's gate closure, and publishing results on MQTT.
//!
//! The loop clears intervals strictly in order, from the one after the latest stored result
//! (or, on a fresh database, from the earliest interval that has orders or the next open one).
//! After downtime it catches up at once. Every result goes to SSE subscribers (from
//! [`Market::clear_interval`]) and, if a broker is configured, is published retained at QoS 1:
//! first every gateway's signed operating envelope on `protocol::topics::envelope(gateway)`,
//! then the result's public view (`protocol::api::market::PublicResult`: aggregates per area,
//! trades under pseudonyms, no household id — every gateway may read this topic) on
//! `protocol::topics::result(zone, interval)`, each retried until the broker acknowledges it.
//! The full signed result names households: it stays on REST for the auditor, the operator
//! and settlement. A message larger than the connection's packet limit is not sent (it
//! would be refused forever); it is logged and counted, and stays available on REST.

use crate::service::Market;
use futures::StreamExt;
use gridmesh_protocol::Interval;
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
    publish: Option<mpsc::UnboundedSender<Interval>>,
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
            Ok(_) => {
                if let Some(tx) = &publish {
                    let _ = tx.send(next);
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

/// Envelopes published at once (each waits for its own PUBACK).
const ENVELOPES_IN_FLIGHT: usize = 32;

/// Publishes each cleared interval's signed envelopes and public result retained on MQTT, in
/// order, retrying each message until acknowledged. Messages above `max_payload` bytes are
/// skipped (logged and counted).
pub async fn publish_results(
    market: Arc<Market>,
    mqtt: MqttHandle,
    mut intervals: mpsc::UnboundedReceiver<Interval>,
    max_payload: usize,
    cancel: CancellationToken,
) {
    while let Some(interval) = tokio::select! {
        r = intervals.recv() => r,
        _ = cancel.cancelled() => None,
    } {
        let (signed, envelopes) = loop {
            let loaded = async {
                let signed = market.signed_result(&interval).await?;
                let envelopes = market.store.envelopes_at(&interval).await?;
                Ok::<_, crate::error::MarketError>((signed, envelopes))
            }
            .await;
            match loaded {
                Ok(v) => break v,
                Err(error) => {
                    tracing::warn!(%interval, %error, "cannot load the result to publish; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = cancel.cancelled() => return,
                    }
                }
            }
        };
        let Some(signed) = signed else {
            tracing::error!(%interval, "asked to publish an interval that is not cleared");
            continue;
        };
        // Envelopes first: gateways need them before the interval starts.
        let published = futures::stream::iter(envelopes)
            .map(|(gateway, envelope)| {
                let topic = gridmesh_protocol::topics::envelope(&gateway);
                let payload = serde_json::to_vec(&envelope).expect("an envelope serialises");
                publish_one(&market, &mqtt, topic, payload, max_payload, &cancel)
            })
            .buffer_unordered(ENVELOPES_IN_FLIGHT)
            .filter(|ok| futures::future::ready(*ok))
            .count()
            .await;
        market
            .metrics
            .envelopes_published
            .fetch_add(published as u64, std::sync::atomic::Ordering::Relaxed);
        if cancel.is_cancelled() {
            return;
        }
        let public = match serde_json::from_slice::<gridmesh_protocol::market::IntervalResult>(
            &signed.body_base64,
        )
        .map_err(|e| e.to_string())
        .and_then(|result| {
            crate::public::public_view(&result, &market.pseudonym_secret())
                .map_err(|e| e.to_string())
        }) {
            Ok(public) => public,
            Err(error) => {
                tracing::error!(%interval, %error, "cannot build the public view of the result; not published on MQTT (the full result is on REST)");
                continue;
            }
        };
        let topic = gridmesh_protocol::topics::result(&market.config.zone, &interval);
        let payload = serde_json::to_vec(&public).expect("a public result serialises");
        if publish_one(&market, &mqtt, topic, payload, max_payload, &cancel).await {
            crate::metrics::Metrics::inc(&market.metrics.results_published);
        }
    }
}

/// Publishes one retained QoS 1 message, retrying with backoff until the broker acknowledges
/// it; `false` if it was too large or the market is shutting down.
async fn publish_one(
    market: &Market,
    mqtt: &MqttHandle,
    topic: String,
    payload: Vec<u8>,
    max_payload: usize,
    cancel: &CancellationToken,
) -> bool {
    if payload.len() > max_payload {
        tracing::error!(%topic, bytes = payload.len(), max_payload, "message too large for MQTT; not published (it is on REST)");
        crate::metrics::Metrics::inc(&market.metrics.mqtt_oversized);
        return false;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match mqtt
            .publish(topic.clone(), payload.clone(), Qos::AtLeastOnce, true)
            .await
        {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(%topic, %error, "not published yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return false,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
