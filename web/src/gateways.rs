//! Gateway liveness from the broker: every gateway keeps a retained `online`/`offline` status
//! on `gridmesh/gateways/<id>/status` (its last will is `offline`). This is the only thing the
//! dashboard reads from MQTT, and only when a broker URL is configured.

use crate::hub::Hub;
use crate::snapshot::GatewayLiveness;
use chrono::Utc;
use gridmesh_protocol::topics::GATEWAY_STATUS_FILTER;
use gridmesh_runtime::mqtt::{MqttError, MqttSession, MqttSettings};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The gateway id in a status topic, if it is one.
pub fn gateway_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("gridmesh/gateways/")?;
    let id = rest.strip_suffix("/status")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The status in a payload: plain `online`/`offline`, or JSON with a `status` field.
pub fn status_of(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload).trim().to_owned();
    let value = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(s),
            v => v.get("status").and_then(|s| s.as_str()).map(str::to_owned),
        })
        .unwrap_or(text)
        .to_ascii_lowercase();
    match value.as_str() {
        "online" | "offline" => value,
        _ => "unknown".into(),
    }
}

/// Starts following gateway statuses on `url` until `token` is cancelled.
pub fn start(hub: Arc<Hub>, url: &str, token: CancellationToken) -> Result<(), MqttError> {
    let mut settings = MqttSettings::new(
        url,
        format!(
            "gridmesh-web-{}-{}",
            std::process::id(),
            Utc::now().timestamp_micros() % 1_000_000
        ),
    );
    settings.clean_session = true;
    settings.subscriptions = vec![GATEWAY_STATUS_FILTER.to_owned()];
    let (handle, mut incoming) = MqttSession::start(settings, token.clone())?;
    tokio::spawn(async move {
        let mut last_connected = None;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                message = incoming.recv() => {
                    let Some(message) = message else { return };
                    if let Some(gateway) = gateway_of(&message.topic) {
                        let status = status_of(&message.payload);
                        let gateway = gateway.to_owned();
                        hub.update("gateway", |snap| {
                            snap.gateway_status.insert(gateway, GatewayLiveness {
                                status,
                                source: "mqtt".into(),
                                seen_at: Utc::now(),
                            });
                        });
                    }
                    handle.ack(message).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let connected = handle.is_connected();
            if last_connected != Some(connected) {
                last_connected = Some(connected);
                let url = hub.config.broker_url.clone().unwrap_or_default();
                hub.update("broker", |snap| {
                    if let Some(b) = snap.broker.as_mut() {
                        if connected {
                            b.succeeded(Utc::now());
                        } else {
                            b.failed(format!("broker unreachable at {url}; retrying"));
                        }
                    }
                });
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topics_and_payloads() {
        assert_eq!(
            gateway_of("gridmesh/gateways/gw-h001/status"),
            Some("gw-h001")
        );
        assert_eq!(gateway_of("gridmesh/gateways//status"), None);
        assert_eq!(gateway_of("gridmesh/readings/gw"), None);
        assert_eq!(status_of(b"online"), "online");
        assert_eq!(status_of(b" OFFLINE\n"), "offline");
        assert_eq!(status_of(br#"{"status":"online","at":"x"}"#), "online");
        assert_eq!(status_of(b"\"offline\""), "offline");
        assert_eq!(status_of(b"weird"), "unknown");
    }
}
