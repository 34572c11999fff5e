//! Which path readings took from the gateways to settlement (issue 15): a witness on the broker
//! that records every reading published there, and the check that each gateway delivered every
//! reading it signed over one path only, and that settlement stored exactly those readings.

use crate::invariants::Violation;
use crate::neighbourhood::Neighbourhood;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::topics;
use gridmesh_runtime::db::Database;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings};
use gridmesh_runtime::shutdown::Shutdown;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How readings must have travelled from the gateways to settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// Published on the broker (QoS 1, PUBACK), nothing over REST.
    Mqtt,
    /// Posted to settlement's `POST /readings`, nothing over the broker.
    Http,
}

/// A client subscribed to every gateway's readings topic that records the signed payload of
/// each reading published on the broker: an observer independent of both the gateways' counters
/// and settlement, of what really crossed the broker.
pub struct BrokerWitness {
    seen: Arc<Mutex<HashSet<Vec<u8>>>>,
    shutdown: Shutdown,
}

impl BrokerWitness {
    /// Connects to `url` (clean session) and subscribes to the readings topics; fails if the
    /// broker does not accept the connection within `within`.
    pub async fn start(url: &str, within: Duration) -> Result<Self, Violation> {
        let mut settings = MqttSettings::new(
            url,
            format!(
                "gridmesh-e2e-witness-{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_micros()
            ),
        );
        settings.subscriptions = vec![topics::READINGS_FILTER.to_owned()];
        let shutdown = Shutdown::new();
        let (handle, mut incoming) = MqttSession::start(settings, &shutdown)
            .map_err(|e| Violation(format!("witness on {url}: {e}")))?;
        if !handle.wait_connected(within).await {
            shutdown.stop().await;
            return Err(Violation(format!(
                "the witness could not connect to {url} within {within:?}: {:?}",
                handle.last_error()
            )));
        }
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let record = seen.clone();
        let token = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                let message = tokio::select! {
                    m = incoming.recv() => match m { Some(m) => m, None => return },
                    _ = token.triggered() => return,
                };
                if let Ok(envelope) = serde_json::from_slice::<SignedEnvelope>(&message.payload) {
                    record
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(envelope.payload);
                }
                handle.ack(message).await;
            }
        });
        Ok(BrokerWitness { seen, shutdown })
    }

    /// Whether a reading with exactly these signed bytes crossed the broker.
    pub fn saw(&self, signed_payload: &[u8]) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(signed_payload)
    }

    /// Disconnects.
    pub async fn stop(self) {
        self.shutdown.stop().await;
    }
}

/// Each in-process gateway of `hood` with its gateway id, in manifest order.
fn gateways(hood: &Neighbourhood) -> Vec<(String, &edge_gateway::RunningGateway)> {
    let external: Vec<&str> = hood
        .external_gateways
        .iter()
        .map(|c| c.participant.as_str())
        .collect();
    hood.sim
        .manifest()
        .homes
        .iter()
        .filter(|h| !external.contains(&h.id.as_str()))
        .map(|h| format!("gw-{}", h.id))
        .zip(&hood.gateways)
        .collect()
}

async fn stored_per_gateway(database: &Database) -> Result<BTreeMap<String, i64>, Violation> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT gateway, COUNT(*) FROM readings GROUP BY gateway")
            .fetch_all(&database.pool)
            .await
            .map_err(|e| Violation(format!("cannot count settlement's readings: {e}")))?;
    Ok(rows.into_iter().collect())
}

/// Waits (at most `within`) for a quiet moment in which every in-process gateway of `hood` has
/// delivered every reading it signed over `uplink` (its outbox empty) and settlement stores
/// exactly that many readings of it; fails at once if any reading went over the other path.
/// Returns the readings signed per gateway.
pub async fn check_uplink(
    hood: &Neighbourhood,
    uplink: Uplink,
    within: Duration,
) -> Result<BTreeMap<String, u64>, Violation> {
    let database = Database::connect(&hood.settlement_database_url)
        .await
        .map_err(|e| Violation(format!("cannot open settlement's database: {e}")))?;
    let gateways = gateways(hood);
    let deadline = tokio::time::Instant::now() + within;
    let result = loop {
        let before: Vec<_> = gateways.iter().map(|(_, g)| g.status.snapshot()).collect();
        let stored = stored_per_gateway(&database).await?;
        let after: Vec<_> = gateways.iter().map(|(_, g)| g.status.snapshot()).collect();
        let mut waiting = Vec::new();
        let mut signed = BTreeMap::new();
        for (((id, _), b), a) in gateways.iter().zip(&before).zip(&after) {
            let this_path = match uplink {
                Uplink::Mqtt => a.delivered_mqtt,
                Uplink::Http => a.delivered_http,
            };
            let rows = stored.get(id).copied().unwrap_or(0);
            if a.readings_signed == 0 {
                waiting.push(format!("{id} has signed no reading"));
            } else if a.readings_signed != b.readings_signed
                || a.outbox_count != 0
                || this_path != a.readings_signed
                || u64::try_from(rows).ok() != Some(a.readings_signed)
            {
                waiting.push(format!(
                    "{id}: signed {}, delivered over {uplink:?} {this_path}, in the outbox {}, \
                     stored by settlement {rows}",
                    a.readings_signed, a.outbox_count
                ));
            }
            signed.insert(id.clone(), a.readings_signed);
        }
        if let Some(((id, _), a)) = gateways.iter().zip(&after).find(|(_, a)| match uplink {
            Uplink::Mqtt => a.delivered_http != 0,
            Uplink::Http => a.delivered_mqtt != 0,
        }) {
            break Err(Violation(format!(
                "{id} delivered readings over the other path than {uplink:?}: {} over MQTT, {} \
                 over HTTP",
                a.delivered_mqtt, a.delivered_http
            )));
        }
        // Settlement's own record of the path: its accepted-readings counters by source.
        let metrics = &hood.settlement.service.metrics;
        let (over_this, over_other) = match uplink {
            Uplink::Mqtt => (
                metrics.readings_accepted_mqtt.get(),
                metrics.readings_accepted_rest.get(),
            ),
            Uplink::Http => (
                metrics.readings_accepted_rest.get(),
                metrics.readings_accepted_mqtt.get(),
            ),
        };
        if over_other != 0 {
            break Err(Violation(format!(
                "settlement accepted {over_other} readings over the other path than {uplink:?}"
            )));
        }
        let rows: i64 = stored.values().sum();
        if u64::try_from(rows).ok() != Some(over_this) {
            waiting.push(format!(
                "settlement stored {rows} readings but counts {over_this} accepted over {uplink:?}"
            ));
        }
        if waiting.is_empty() {
            break Ok(signed);
        }
        if tokio::time::Instant::now() > deadline {
            break Err(Violation(format!(
                "readings not all delivered over {uplink:?} and stored once within {within:?}:\n{}",
                waiting.join("\n")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    database.pool.close().await;
    result
}

/// Checks that every reading settlement stored for an interval starting at or after
/// `from_unix` (Unix s) was seen crossing the broker by `witness`; returns how many were checked.
pub async fn check_witnessed(
    hood: &Neighbourhood,
    witness: &BrokerWitness,
    from_unix: i64,
) -> Result<usize, Violation> {
    let database = Database::connect(&hood.settlement_database_url)
        .await
        .map_err(|e| Violation(format!("cannot open settlement's database: {e}")))?;
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT gateway, sequence, payload FROM readings WHERE interval_start >= $1 \
         ORDER BY gateway, sequence",
    )
    .bind(from_unix)
    .fetch_all(&database.pool)
    .await
    .map_err(|e| Violation(format!("cannot read settlement's readings: {e}")))?;
    database.pool.close().await;
    let unseen: Vec<String> = rows
        .iter()
        .filter(|(_, _, payload)| !witness.saw(payload))
        .map(|(gateway, sequence, _)| format!("{gateway} #{sequence}"))
        .collect();
    if rows.is_empty() {
        return Err(Violation(format!(
            "settlement stored no reading from Unix {from_unix} on"
        )));
    }
    if !unseen.is_empty() {
        return Err(Violation(format!(
            "{} of {} stored readings never crossed the broker: {unseen:?}",
            unseen.len(),
            rows.len()
        )));
    }
    Ok(rows.len())
}
