//! Delivery of the outbox: MQTT QoS 1 first (a reading is deleted only after its PUBACK), HTTP
//! `POST {settlement}/readings` as the fallback (deleted only after a 2xx whose per-item status
//! says it was recorded). Strictly in order: delivery stops at the first failure and resumes
//! with exponential backoff, or at once when a new reading arrives after a success.

use crate::outbox::{Outbox, Pending};
use crate::status::Status;
use gridmesh_runtime::mqtt::{MqttHandle, Qos};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How readings leave the gateway.
#[derive(Clone)]
pub struct Uplink {
    /// The outbox.
    pub outbox: Outbox,
    /// The MQTT session, if a broker is configured.
    pub mqtt: Option<MqttHandle>,
    /// The readings topic.
    pub topic: String,
    /// Settlement's base URL for the HTTP fallback.
    pub settlement_url: Option<String>,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// Status for metrics.
    pub status: Arc<Status>,
    /// Woken when a reading is stored.
    pub wake: Arc<Notify>,
}

#[derive(serde::Deserialize)]
struct ItemStatus {
    key: String,
    status: String,
}

impl Uplink {
    /// Runs until `cancel`; an in-flight delivery is finished first.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let outcome = self.deliver_some().await;
            self.refresh_depth().await;
            let delivered_all = match outcome {
                Ok(all) => {
                    backoff = Duration::from_millis(500);
                    all
                }
                Err(error) => {
                    self.status.update(|s| s.delivery_failures += 1);
                    tracing::warn!(%error, retry_in = ?backoff, "readings not delivered; kept in the outbox");
                    // Wait out the backoff, but retry at once when the broker comes back.
                    let reconnected = async {
                        match &self.mqtt {
                            Some(mqtt) if !mqtt.is_connected() => {
                                mqtt.wait_connected(backoff).await;
                            }
                            _ => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                        _ = reconnected => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if delivered_all {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                    // Poll now and then anyway (covers a notification that raced the check).
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }

    /// Updates the outbox gauges.
    pub async fn refresh_depth(&self) {
        if let Ok((count, bytes)) = self.outbox.depth().await {
            let dropped = self
                .outbox
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed);
            self.status.update(|s| {
                s.outbox_count = count;
                s.outbox_bytes = bytes;
                s.outbox_dropped = dropped;
            });
        }
    }

    /// Delivers up to one batch; `Ok(true)` when the outbox is empty afterwards.
    async fn deliver_some(&self) -> Result<bool, String> {
        let batch = self.outbox.pending(50).await.map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(true);
        }
        let mut rest: &[Pending] = &batch;
        if let Some(mqtt) = &self.mqtt
            && mqtt.is_connected()
        {
            while let Some(item) = rest.first() {
                match mqtt
                    .publish(
                        self.topic.clone(),
                        item.envelope.as_bytes().to_vec(),
                        Qos::AtLeastOnce,
                        false,
                    )
                    .await
                {
                    Ok(()) => {
                        self.outbox
                            .delivered(&[item.id])
                            .await
                            .map_err(|e| e.to_string())?;
                        self.status.update(|s| s.delivered_mqtt += 1);
                        rest = &rest[1..];
                    }
                    Err(e) => {
                        let _ = self.outbox.attempted(item.id).await;
                        if self.settlement_url.is_none() {
                            return Err(e.to_string());
                        }
                        break;
                    }
                }
            }
            if rest.is_empty() {
                return Ok(batch.len() < 50);
            }
        }
        let Some(url) = &self.settlement_url else {
            return Err(match &self.mqtt {
                Some(_) => "the MQTT broker is not connected".into(),
                None => "no uplink configured (set mqtt.url or settlement_url)".into(),
            });
        };
        let body = format!(
            "[{}]",
            rest.iter()
                .map(|p| p.envelope.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let response = self
            .http
            .post(format!("{}/readings", url.trim_end_matches('/')))
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map_err(|e| format!("settlement unreachable: {e}"))?;
        let code = response.status();
        if !code.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("settlement answered {code}: {text}"));
        }
        let statuses: Vec<ItemStatus> = response.json().await.unwrap_or_default();
        let recorded: Vec<i64> = rest
            .iter()
            .filter(|p| {
                statuses.iter().any(|s| {
                    s.key == p.key
                        && matches!(s.status.as_str(), "accepted" | "duplicate" | "quarantined")
                })
            })
            .map(|p| p.id)
            .collect();
        self.outbox
            .delivered(&recorded)
            .await
            .map_err(|e| e.to_string())?;
        let n = recorded.len() as u64;
        self.status.update(|s| s.delivered_http += n);
        if recorded.len() < rest.len() {
            return Err(format!(
                "settlement recorded {} of {} readings; the rest are retried",
                recorded.len(),
                rest.len()
            ));
        }
        Ok(batch.len() < 50)
    }
}
