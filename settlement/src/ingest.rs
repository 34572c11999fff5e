//! Readings in: the MQTT subscription (QoS 1, persistent session, acknowledged only after the
//! batch is stored) and the settler loop that settles intervals when they fall due.
//! The REST batch upload lives in [`crate::api`] and goes through the same
//! [`Service::ingest`].

use crate::service::{PreparedBatch, Service, Submission};
use gridmesh_protocol::topics;
use gridmesh_runtime::mqtt::{IncomingMessage, MqttError, MqttHandle, MqttSession, MqttSettings};
use gridmesh_runtime::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest number of MQTT messages stored in one transaction.
pub const MQTT_BATCH: usize = 512;

/// Largest MQTT packet settlement's client receives (16 MiB). A bigger packet makes the client
/// drop the connection and a persistent session redeliver it forever, so the broker must refuse
/// such publishes: set Mosquitto's `max_packet_size` to this value (see settlement/README.md).
pub const MQTT_MAX_PACKET_BYTES: usize = 16 << 20;

/// Largest MQTT payload handed to [`Service::ingest`] (1 MiB, far above any real batch). A bigger
/// payload is acknowledged and dropped, with a log line naming its topic and size and the
/// `gridmesh_settlement_mqtt_dropped_total` metric, so it can neither stall the session nor
/// fill the quarantine.
pub const MQTT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The failpoint between storing an MQTT batch and acknowledging it
/// ([`gridmesh_runtime::failpoint`]): `GRIDMESH_FAILPOINT=settlement_after_store_before_ack`
/// aborts settlement there.
pub const AFTER_STORE_BEFORE_ACK: &str = "settlement_after_store_before_ack";

/// Starts the MQTT ingest task: subscribes to [`topics::READINGS_FILTER`] with a persistent
/// session under `client_id`, stores messages in batches and acknowledges each only after its
/// batch committed. On a storage error the batch is retried (with backoff) before anything is
/// acknowledged.
pub fn start_mqtt(
    service: Arc<Service>,
    url: &str,
    client_id: &str,
    shutdown: &Shutdown,
) -> Result<MqttHandle, MqttError> {
    let mut settings = MqttSettings::new(url, client_id);
    settings.clean_session = false;
    settings.subscriptions = vec![topics::READINGS_FILTER.to_owned()];
    settings.max_packet_bytes = MQTT_MAX_PACKET_BYTES;
    let (handle, incoming) = MqttSession::start(settings, shutdown)?;
    let task_handle = handle.clone();
    let task_shutdown = shutdown.clone();
    shutdown.spawn(async move { run(service, task_handle, incoming, task_shutdown).await });
    Ok(handle)
}

/// Messages collected into one batch, decoded and verified (not stored yet).
struct Pending {
    messages: Vec<IncomingMessage>,
    prepared: PreparedBatch,
}

/// The MQTT ingest as a pipeline of two tasks: this one collects and prepares (decodes and
/// verifies) the next batch while [`store_and_ack`] stores the previous one. At most one
/// prepared batch waits between them; nothing is acknowledged before its batch is stored.
async fn run(
    service: Arc<Service>,
    handle: MqttHandle,
    mut incoming: mpsc::Receiver<IncomingMessage>,
    shutdown: Shutdown,
) {
    let (to_store, prepared) = mpsc::channel::<Pending>(1);
    shutdown.spawn(store_and_ack(
        Arc::clone(&service),
        handle.clone(),
        prepared,
        shutdown.clone(),
    ));
    loop {
        let first = tokio::select! {
            m = incoming.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.triggered() => return,
        };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next.take() {
            if m.payload.len() > MQTT_MAX_PAYLOAD_BYTES {
                drop_oversized(&service, &handle, m).await;
            } else {
                batch.push(m);
            }
            if batch.len() < MQTT_BATCH {
                next = incoming.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let items: Vec<Submission> = batch
            .iter()
            .map(|m| Submission {
                source: format!("mqtt:{}", m.topic),
                raw: m.payload.clone(),
            })
            .collect();
        let prepared = service.prepare(items).await;
        let pending = Pending {
            messages: batch,
            prepared,
        };
        // The store task ends only at shutdown; unacknowledged messages are redelivered.
        if to_store.send(pending).await.is_err() {
            return;
        }
    }
}

/// Stores prepared batches in order and acknowledges each message only after its batch
/// committed. On a storage error the batch is retried (with backoff) before anything is
/// acknowledged.
async fn store_and_ack(
    service: Arc<Service>,
    handle: MqttHandle,
    mut prepared: mpsc::Receiver<Pending>,
    shutdown: Shutdown,
) {
    loop {
        let pending = tokio::select! {
            p = prepared.recv() => match p { Some(p) => p, None => return },
            _ = shutdown.triggered() => return,
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match service.store_prepared(&pending.prepared).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?delay, "could not store MQTT readings; not acknowledging");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // Unacknowledged messages are redelivered by the broker after a restart.
                        _ = shutdown.triggered() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        // Crash tests (GRIDMESH_FAILPOINT): stored but not acknowledged, so the broker redelivers.
        gridmesh_runtime::failpoint::hit(AFTER_STORE_BEFORE_ACK);
        for m in pending.messages {
            handle.ack(m).await;
        }
    }
}

/// Acknowledges and drops a payload above [`MQTT_MAX_PAYLOAD_BYTES`], saying so.
async fn drop_oversized(service: &Service, handle: &MqttHandle, m: IncomingMessage) {
    tracing::warn!(
        topic = %m.topic,
        bytes = m.payload.len(),
        limit = MQTT_MAX_PAYLOAD_BYTES,
        "dropping an oversized MQTT message (acknowledged, not stored)"
    );
    service.metrics.mqtt_dropped.add(1);
    handle.ack(m).await;
}

/// Settles intervals as they fall due (end + grace on the service's clock), waking early when a
/// new result arrives, until shutdown.
pub async fn run_settler(service: Arc<Service>, shutdown: Shutdown) {
    loop {
        if let Err(e) = service.settle_due().await {
            tracing::error!(error = %e, "settling failed; will retry");
        }
        let next = service.next_due().await.ok().flatten();
        let clock = service.clock().clone();
        let wait = async {
            match next {
                Some(t) => clock.sleep_until(t).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = service.results_changed.notified() => {}
            // A periodic re-check covers a failed settle or a clock jump.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.triggered() => return,
        }
    }
}
