//! What the dashboard reads from the broker, only when a broker URL is configured:
//!
//! - gateway liveness: every gateway keeps a retained `online`/`offline` status on
//!   `gridmesh/gateways/<id>/status` (its last will is `offline`);
//! - the signed readings gateways publish on `gridmesh/readings/<id>`, observed with a clean
//!   session of its own (settlement's persistent session is unaffected). Each is verified
//!   (ed25519) against the key **the market enrolled for that gateway** (its `/gateways`
//!   answer), not merely the key inside the envelope, before its interval deltas count toward
//!   a home's generation and consumption;
//!   a gateway that publishes a reading is also known to be online;
//! - every gateway's retained control status on `gridmesh/gateways/<id>/control`
//!   ([`ControlStatus`]: the envelope in force, where it came from, curtailed energy), which the
//!   Grid page sums per branch.

use crate::hub::Hub;
use crate::snapshot::GatewayLiveness;
use chrono::Utc;
use gridmesh_protocol::envelope::ControlStatus;
use gridmesh_protocol::reading::{Reading, Registers};
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::topics::{GATEWAY_CONTROL_FILTER, GATEWAY_STATUS_FILTER, READINGS_FILTER};
use gridmesh_runtime::mqtt::{MqttError, MqttSession, MqttSettings};
use gridmesh_runtime::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// The gateway id in a status topic, if it is one.
pub fn gateway_of(topic: &str) -> Option<&str> {
    gateway_topic(topic, "/status")
}

/// The gateway id in a control-status topic (`gridmesh/gateways/<id>/control`), if it is one.
pub fn control_gateway_of(topic: &str) -> Option<&str> {
    gateway_topic(topic, "/control")
}

fn gateway_topic<'a>(topic: &'a str, suffix: &str) -> Option<&'a str> {
    let rest = topic.strip_prefix("gridmesh/gateways/")?;
    let id = rest.strip_suffix(suffix)?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Why a control-status message was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlMessageError {
    /// The payload is not a `protocol::envelope::ControlStatus` document.
    #[error("control status on {topic} is not a ControlStatus document: {reason}")]
    Malformed {
        /// The topic.
        topic: String,
        /// The decoder's message.
        reason: String,
    },
    /// The payload names another gateway than its topic.
    #[error("control status on {topic} names gateway {named}; only a gateway's own topic counts")]
    WrongGateway {
        /// The topic.
        topic: String,
        /// The gateway the payload names.
        named: String,
    },
}

/// Records (or, for an empty retained payload, forgets) one gateway's control status.
pub fn record_control(
    snap: &mut crate::snapshot::Snapshot,
    topic: &str,
    gateway: &str,
    payload: &[u8],
) -> Result<(), ControlMessageError> {
    if payload.is_empty() {
        snap.control.remove(gateway);
        return Ok(());
    }
    let status: ControlStatus =
        serde_json::from_slice(payload).map_err(|e| ControlMessageError::Malformed {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
    if status.gateway.as_str() != gateway {
        return Err(ControlMessageError::WrongGateway {
            topic: topic.to_owned(),
            named: status.gateway.to_string(),
        });
    }
    snap.control.insert(gateway.to_owned(), status);
    Ok(())
}

/// Applies one broker message to the hub: a signed reading, a gateway's online/offline status
/// or its control status. Anything else is ignored. See [`apply_messages`].
pub fn apply_message(hub: &Hub, topic: &str, payload: &[u8]) {
    apply_messages(hub, &[(topic, payload)]);
}

/// Applies a burst of broker messages with one snapshot update: one copy of the snapshot, one
/// fingerprint and at most one announcement to open pages, however many messages arrived
/// (issue 16: it was one of each per message). Signature checks and the copy are CPU work:
/// call it off the async threads.
///
/// A burst of only control statuses (they arrive at every gateway poll) is recorded at once
/// and announced with the next update (at the latest the refresher's next poll).
pub fn apply_messages(hub: &Hub, messages: &[(&str, &[u8])]) {
    /// One message of the burst, checked; applied in arrival order.
    enum Item<'a> {
        Reading(Reading),
        Status(String, String),
        Control(&'a str, &'a str, &'a [u8]),
    }
    let items: Vec<Item> = {
        let snap = hub.snapshot();
        messages
            .iter()
            .filter_map(|&(topic, payload)| {
                if let Some(gateway) = topic.strip_prefix("gridmesh/readings/") {
                    match verified_reading(payload, gateway, &snap.gateways) {
                        Ok(reading) => Some(Item::Reading(reading)),
                        Err(e) => {
                            tracing::debug!(%topic, error = %e, "ignoring a reading");
                            None
                        }
                    }
                } else if let Some(gateway) = control_gateway_of(topic) {
                    Some(Item::Control(topic, gateway, payload))
                } else {
                    gateway_of(topic)
                        .map(|gateway| Item::Status(gateway.to_owned(), status_of(payload)))
                }
            })
            .collect()
    };
    if items.is_empty() {
        return;
    }
    let history = hub.config.history_intervals;
    let mut refused = Vec::new();
    let apply = |snap: &mut crate::snapshot::Snapshot| {
        for item in &items {
            match item {
                Item::Reading(reading) => record_reading(snap, reading, history),
                Item::Status(gateway, status) => {
                    snap.gateway_status.insert(
                        gateway.clone(),
                        GatewayLiveness {
                            status: status.clone(),
                            source: "mqtt".into(),
                            seen_at: Utc::now(),
                        },
                    );
                }
                Item::Control(topic, gateway, payload) => {
                    if let Err(e) = record_control(snap, topic, gateway, payload) {
                        refused.push(e);
                    }
                }
            }
        }
    };
    let only_controls = items.iter().all(|i| matches!(i, Item::Control(..)));
    let reading = items.iter().any(|i| matches!(i, Item::Reading(_)));
    if only_controls {
        hub.update_deferred(apply);
    } else {
        hub.update(if reading { "reading" } else { "gateway" }, apply);
    }
    for e in refused {
        hub.metrics.bad_control_messages.inc();
        tracing::warn!(error = %e, "ignoring a control status");
    }
}

/// At most this many broker messages are applied as one burst.
const BURST_MESSAGES: usize = 512;

/// A gateway's status payload as JSON: a string, or a document with a `status` field.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StatusPayload {
    /// `"online"`.
    Plain(String),
    /// `{"status": "online", ...}`.
    Document {
        /// The status.
        status: String,
    },
}

/// The status in a payload: plain `online`/`offline`, or JSON with a `status` field.
pub fn status_of(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload).trim().to_owned();
    let value = match serde_json::from_str::<StatusPayload>(&text) {
        Ok(StatusPayload::Plain(s) | StatusPayload::Document { status: s }) => s,
        Err(_) => text,
    }
    .to_ascii_lowercase();
    match value.as_str() {
        "online" | "offline" => value,
        _ => "unknown".into(),
    }
}

/// Starts following gateway statuses on `url` until `shutdown` is triggered. The MQTT session
/// and the task applying its messages are tracked by `shutdown`, so [`Shutdown::wait`] returns
/// only after both have finished.
pub fn start(hub: Arc<Hub>, url: &str, shutdown: &Shutdown) -> Result<(), MqttError> {
    let mut settings = MqttSettings::new(
        url,
        format!(
            "gridmesh-web-{}-{}",
            std::process::id(),
            Utc::now().timestamp_micros() % 1_000_000
        ),
    );
    settings.clean_session = true;
    settings.subscriptions = vec![
        GATEWAY_STATUS_FILTER.to_owned(),
        GATEWAY_CONTROL_FILTER.to_owned(),
        READINGS_FILTER.to_owned(),
    ];
    let (handle, mut incoming) = MqttSession::start(settings, shutdown)?;
    let token = shutdown.token();
    shutdown.spawn(async move {
        let mut last_connected = None;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                message = incoming.recv() => {
                    let Some(first) = message else { return };
                    // Everything already waiting is applied as one burst, off the async threads.
                    let mut burst = vec![first];
                    while burst.len() < BURST_MESSAGES {
                        match incoming.try_recv() {
                            Ok(message) => burst.push(message),
                            Err(_) => break,
                        }
                    }
                    let applying = Arc::clone(&hub);
                    let burst = tokio::task::spawn_blocking(move || {
                        let messages: Vec<(&str, &[u8])> = burst
                            .iter()
                            .map(|m| (m.topic.as_str(), m.payload.as_slice()))
                            .collect();
                        apply_messages(&applying, &messages);
                        burst
                    })
                    .await;
                    match burst {
                        Ok(burst) => {
                            for message in burst {
                                handle.ack(message).await;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "applying broker messages failed"),
                    }
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

/// Why a reading on the broker does not count as verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadingRejected {
    /// Not a signed envelope, or a signature that does not verify, or not a reading.
    #[error("not a validly signed reading: {0}")]
    Invalid(String),
    /// The reading names another gateway than its topic.
    #[error("a reading of gateway {named} was published on gateway {topic}'s topic")]
    WrongTopic {
        /// The gateway in the topic.
        topic: String,
        /// The gateway the reading names.
        named: String,
    },
    /// The market has no enrolment for the gateway (yet).
    #[error("gateway {0} is not enrolled with the market")]
    NotEnrolled(String),
    /// Signed by a valid key, but not the one enrolled for the gateway.
    #[error("gateway {0}'s reading is not signed by its enrolled key")]
    NotEnrolledKey(String),
}

/// A reading published on `topic_gateway`'s topic, decoded, if it is signed by the key the
/// market enrolled for its gateway (`enrolled`, the market's `/gateways`). A valid signature
/// by any other key does not count.
pub fn verified_reading(
    payload: &[u8],
    topic_gateway: &str,
    enrolled: &[GatewayEnrollment],
) -> Result<Reading, ReadingRejected> {
    let envelope: SignedEnvelope =
        serde_json::from_slice(payload).map_err(|e| ReadingRejected::Invalid(e.to_string()))?;
    let reading = envelope
        .open::<Reading>()
        .map_err(|e| ReadingRejected::Invalid(e.to_string()))?;
    let named = reading.gateway.to_string();
    if named != topic_gateway {
        return Err(ReadingRejected::WrongTopic {
            topic: topic_gateway.to_owned(),
            named,
        });
    }
    let enrolment = enrolled
        .iter()
        .find(|g| g.gateway.as_str() == named)
        .ok_or_else(|| ReadingRejected::NotEnrolled(named.clone()))?;
    envelope
        .open_by::<Reading>(&enrolment.public_key)
        .map_err(|_| ReadingRejected::NotEnrolledKey(named))
}

/// Records a verified reading: its deltas under its gateway and interval (a repeat replaces
/// the same interval, so redelivery never double-counts), keeping the newest `history`
/// intervals per gateway. Marks the gateway online unless the broker said otherwise later.
pub fn record_reading(snap: &mut crate::snapshot::Snapshot, reading: &Reading, history: usize) {
    let gateway = reading.gateway.to_string();
    let intervals = snap.readings.entry(gateway.clone()).or_default();
    intervals.insert(reading.interval.key(), reading.deltas);
    while intervals.len() > history.max(1) {
        let oldest = intervals.keys().next().cloned();
        if let Some(k) = oldest {
            intervals.remove(&k);
        }
    }
    let newer = snap
        .gateway_status
        .get(&gateway)
        .is_some_and(|l| l.source == "mqtt" && l.seen_at > reading.measured_at);
    if !newer {
        snap.gateway_status.insert(
            gateway,
            GatewayLiveness {
                status: "online".into(),
                source: "readings".into(),
                seen_at: reading.measured_at,
            },
        );
    }
}

/// Sums interval deltas.
pub fn total(deltas: &std::collections::BTreeMap<String, Registers>) -> Registers {
    let mut t = Registers::default();
    for d in deltas.values() {
        t.grid_import.0 += d.grid_import.0;
        t.grid_export.0 += d.grid_export.0;
        t.pv.0 += d.pv.0;
        t.battery_charge.0 += d.battery_charge.0;
        t.battery_discharge.0 += d.battery_discharge.0;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the task applying broker messages was spawned untracked, so shutdown could
    /// return while it still ran (holding the hub).
    #[tokio::test]
    async fn the_broker_task_is_tracked_and_awaited_on_shutdown() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let url = format!("mqtt://{closed}");
        let hub = Hub::new(crate::WebConfig {
            broker_url: Some(url.clone()),
            ..crate::WebConfig::default()
        })
        .unwrap();
        let shutdown = Shutdown::new();
        start(hub.clone(), &url, &shutdown).unwrap();
        assert_eq!(Arc::strong_count(&hub), 2, "the task holds the hub");
        tokio::time::timeout(Duration::from_secs(10), shutdown.stop())
            .await
            .expect("the broker task stops on shutdown");
        assert_eq!(
            Arc::strong_count(&hub),
            1,
            "shutdown returned only after the task had finished"
        );
    }

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

    #[test]
    fn readings_verify_and_count_once_per_interval() {
        use gridmesh_protocol::example::{example_key, example_reading};
        let reading = example_reading();
        let envelope = SignedEnvelope::sign(&reading, &example_key());
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let enrolled = [enrolment("gw-h001", envelope.public_key)];
        let decoded = verified_reading(&bytes, "gw-h001", &enrolled).expect("it verifies");
        assert_eq!(decoded, reading);
        let mut tampered = envelope.clone();
        tampered.payload[40] ^= 1;
        assert!(
            verified_reading(
                &serde_json::to_vec(&tampered).unwrap(),
                "gw-h001",
                &enrolled
            )
            .is_err()
        );
        assert_eq!(
            verified_reading(&bytes, "gw-h002", &enrolled),
            Err(ReadingRejected::WrongTopic {
                topic: "gw-h002".into(),
                named: "gw-h001".into()
            })
        );
        assert_eq!(
            verified_reading(&bytes, "gw-h001", &[]),
            Err(ReadingRejected::NotEnrolled("gw-h001".into()))
        );

        let mut snap = crate::snapshot::Snapshot::default();
        record_reading(&mut snap, &decoded, 4);
        record_reading(&mut snap, &decoded, 4);
        let t = total(&snap.readings["gw-h001"]);
        assert_eq!(t, reading.deltas, "a redelivered reading counts once");
        assert_eq!(snap.gateway_status["gw-h001"].status, "online");
    }

    /// Issue 16: a burst of broker messages is one snapshot update and one announcement, not
    /// one per message; nothing in the burst is lost.
    #[test]
    fn a_burst_of_messages_is_applied_as_one_update() {
        use gridmesh_protocol::example::{example_key, example_reading};
        let hub = Hub::new(crate::config::WebConfig::default()).unwrap();
        let key = example_key();
        let gateways: Vec<String> = (1..=6).map(|i| format!("gw-h00{i}")).collect();
        let public = SignedEnvelope::sign(&example_reading(), &key).public_key;
        hub.update("start", |snap| {
            snap.gateways = gateways.iter().map(|g| enrolment(g, public)).collect();
        });
        let mut changes = hub.subscribe();
        let mut owned: Vec<(String, Vec<u8>)> = gateways
            .iter()
            .map(|g| {
                let mut reading = example_reading();
                reading.gateway = g.parse().unwrap();
                let envelope = SignedEnvelope::sign(&reading, &key);
                (
                    format!("gridmesh/readings/{g}"),
                    serde_json::to_vec(&envelope).unwrap(),
                )
            })
            .collect();
        owned.push((
            "gridmesh/gateways/gw-h001/status".into(),
            b"offline".to_vec(),
        ));
        owned.push(("gridmesh/readings/gw-h002".into(), b"junk".to_vec()));
        let burst: Vec<(&str, &[u8])> = owned
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_slice()))
            .collect();
        let version = hub.snapshot().version;
        apply_messages(&hub, &burst);
        let snap = hub.snapshot();
        assert_eq!(snap.version, version + 1, "one update for the whole burst");
        assert_eq!(changes.try_recv().unwrap().cause, "reading");
        assert!(changes.try_recv().is_err(), "one announcement");
        for g in &gateways {
            assert_eq!(
                total(&snap.readings[g.as_str()]),
                example_reading().deltas,
                "{g}'s reading is recorded"
            );
        }
        assert_eq!(
            snap.gateway_status["gw-h001"].status, "offline",
            "applied in arrival order: the status after the reading wins"
        );
    }

    fn enrolment(gateway: &str, key: gridmesh_protocol::signing::PublicKey) -> GatewayEnrollment {
        GatewayEnrollment {
            gateway: gateway.parse().unwrap(),
            participant: "h001".parse().unwrap(),
            node: "f1".parse().unwrap(),
            public_key: key,
            inverter_w: 0,
            battery_w: 0,
            latitude_microdeg: 0,
            longitude_microdeg: 0,
        }
    }

    /// Regression (issue 13): a reading signed by a valid key that is not the gateway's
    /// enrolled key counted as verified, because only the envelope's own key was checked.
    #[test]
    fn a_reading_signed_by_another_valid_key_is_not_verified() {
        use gridmesh_protocol::example::example_reading;
        use gridmesh_protocol::keys::SigningKeyPair;
        let enrolled_key = SigningKeyPair::from_seed([7; 32]);
        let attacker = SigningKeyPair::from_seed([9; 32]);
        let reading = example_reading();
        let forged = SignedEnvelope::sign(&reading, &attacker);
        assert!(forged.verify().is_ok(), "the attacker's signature is valid");
        let enrolled = [enrolment("gw-h001", enrolled_key.public_key())];
        let bytes = serde_json::to_vec(&forged).unwrap();
        assert_eq!(
            verified_reading(&bytes, "gw-h001", &enrolled),
            Err(ReadingRejected::NotEnrolledKey("gw-h001".into()))
        );
        let genuine = serde_json::to_vec(&SignedEnvelope::sign(&reading, &enrolled_key)).unwrap();
        assert!(verified_reading(&genuine, "gw-h001", &enrolled).is_ok());
    }
}
