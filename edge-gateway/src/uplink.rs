//! Delivery of the outbox: MQTT QoS 1 first (a reading is deleted only after its PUBACK), HTTP
//! `POST {settlement}/readings` as the fallback (deleted only after a 2xx whose per-item
//! [`ReadingOutcome`] says settlement stored it, [`ReadingStatus::is_stored`]). Strictly in
//! order: delivery stops at the first failure and resumes with exponential backoff, or at once
//! when a new reading arrives after a success. An answer that is not a list of outcomes is a
//! failed delivery: every reading stays in the outbox.
//!
//! Settlement accepts an HTTP batch only from an enrolled gateway: each `POST /readings` carries
//! the gateway's signed request over the exact body (`Authorization: GridmeshGateway …`,
//! `gridmesh_protocol::request::gateway_authorization`, signed with the gateway's key on the
//! wall clock). Every refusal keeps the readings: a 503 `unknown_gateway` (settlement does not
//! know the gateway yet) and a 429 (over the gateway's rate) are retried no sooner than their
//! `Retry-After`.

use crate::outbox::{Outbox, OutboxError, Pending};
use crate::status::Status;
use gridmesh_protocol::GatewayId;
use gridmesh_protocol::api::readings::{ReadingOutcome, ReadingStatus};
use gridmesh_protocol::keys::SigningKeyPair;
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
    /// Who signs HTTP batches (settlement refuses unsigned ones); `None` sends them unsigned.
    pub auth: Option<UploadAuth>,
}

/// The gateway's identity for signing its HTTP batches.
#[derive(Clone)]
pub struct UploadAuth {
    /// The gateway's id, as enrolled.
    pub gateway: GatewayId,
    /// The gateway's key (the one that signs its readings).
    pub key: SigningKeyPair,
}

impl UploadAuth {
    /// The `Authorization` header value for `POST /readings` with `body`, signed now.
    pub fn header(&self, body: &[u8]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        gridmesh_protocol::request::gateway_authorization(
            &self.gateway,
            &self.key,
            now,
            "POST",
            "/readings",
            body,
        )
    }
}

/// Why a delivery attempt failed; the readings stay in the outbox and are retried.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The outbox could not be read or updated.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The broker did not confirm a publish and there is no HTTP fallback.
    #[error("the MQTT broker did not confirm the reading: {0}")]
    Mqtt(String),
    /// Neither a connected broker nor settlement's URL is available.
    #[error("{0}")]
    NoUplink(&'static str),
    /// Settlement could not be reached (the message carries the cause, e.g. a TLS certificate
    /// the configured CA does not sign).
    #[error("settlement unreachable: {}", crate::tls::error_chain(.0))]
    Unreachable(reqwest::Error),
    /// Settlement answered with an error status (the readings are kept and sent again).
    #[error("settlement answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The answer's body.
        body: String,
        /// Settlement's `Retry-After` (429, 503 `unknown_gateway`): wait at least this long.
        retry_after: Option<Duration>,
    },
    /// Settlement answered 2xx, but not with one reading outcome per submitted reading.
    #[error(
        "settlement's answer to POST /readings is not a list of reading outcomes ({0}); the readings are kept and sent again. Check that settlement runs a compatible version"
    )]
    BadAnswer(String),
    /// Settlement did not store every reading.
    #[error("settlement recorded {recorded} of {sent} readings; the rest are retried")]
    Partial {
        /// Readings stored.
        recorded: usize,
        /// Readings sent.
        sent: usize,
    },
}

/// The outbox rows settlement stored, judged by each reading's outcome: the outcome with the
/// same key, or (for an outcome without a key, i.e. a payload settlement could not decode) the
/// outcome at the same position, since settlement answers one outcome per item, in order.
pub fn stored_ids(sent: &[Pending], outcomes: &[ReadingOutcome]) -> Vec<i64> {
    sent.iter()
        .enumerate()
        .filter(|(i, p)| {
            outcomes
                .iter()
                .find(|o| o.key.as_deref() == Some(p.key.as_str()))
                .or_else(|| outcomes.get(*i).filter(|o| o.key.is_none()))
                .is_some_and(|o| o.status.is_stored())
        })
        .map(|(_, p)| p.id)
        .collect()
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
                    // Never sooner than settlement asked (429, 503 unknown_gateway).
                    if let DeliveryError::Refused {
                        retry_after: Some(wait),
                        ..
                    } = &error
                    {
                        backoff = backoff.max(*wait).min(Duration::from_secs(300));
                    }
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
    async fn deliver_some(&self) -> Result<bool, DeliveryError> {
        let batch = self.outbox.pending(50).await?;
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
                        self.outbox.delivered(&[item.id]).await?;
                        self.status.update(|s| s.delivered_mqtt += 1);
                        rest = &rest[1..];
                    }
                    Err(e) => {
                        let _ = self.outbox.attempted(item.id).await;
                        if self.settlement_url.is_none() {
                            return Err(DeliveryError::Mqtt(e.to_string()));
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
            return Err(DeliveryError::NoUplink(match &self.mqtt {
                Some(_) => "the MQTT broker is not connected",
                None => "no uplink configured (set mqtt.url or settlement_url)",
            }));
        };
        let body = format!(
            "[{}]",
            rest.iter()
                .map(|p| p.envelope.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut request = self
            .http
            .post(format!("{}/readings", url.trim_end_matches('/')))
            .header("content-type", "application/json");
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth.header(body.as_bytes()));
        }
        let response = request
            .body(body)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map_err(DeliveryError::Unreachable)?;
        let code = response.status();
        if !code.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response.text().await.unwrap_or_default();
            return Err(DeliveryError::Refused {
                status: code,
                body,
                retry_after,
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| DeliveryError::BadAnswer(format!("the body could not be read: {e}")))?;
        let outcomes: Vec<ReadingOutcome> =
            serde_json::from_slice(&bytes).map_err(|e| DeliveryError::BadAnswer(e.to_string()))?;
        let recorded = stored_ids(rest, &outcomes);
        self.outbox.delivered(&recorded).await?;
        let n = recorded.len() as u64;
        self.status.update(|s| s.delivered_http += n);
        for o in outcomes
            .iter()
            .filter(|o| o.status == ReadingStatus::Quarantined)
        {
            tracing::warn!(
                key = o.key.as_deref().unwrap_or("-"),
                code = o.code.map(|c| c.as_str()).unwrap_or("-"),
                reason = o.reason.as_deref().unwrap_or("-"),
                "settlement quarantined a reading (it keeps it with the reason; see its /quarantine)"
            );
        }
        if recorded.len() < rest.len() {
            return Err(DeliveryError::Partial {
                recorded: recorded.len(),
                sent: rest.len(),
            });
        }
        Ok(batch.len() < 50)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accountant::Resume;
    use axum::Json;
    use axum::extract::State;
    use axum::routing::post;
    use gridmesh_protocol::api::readings::ReasonCode;
    use gridmesh_protocol::keys::SigningKeyPair;
    use gridmesh_protocol::reading::{ReadingFlags, Registers};
    use gridmesh_protocol::{DeviceId, GatewayId, Interval, Reading, SignedEnvelope};
    use std::sync::Mutex;

    fn pending(id: i64, key: &str) -> Pending {
        Pending {
            id,
            key: key.into(),
            envelope: String::new(),
        }
    }

    fn outcome(key: Option<&str>, status: ReadingStatus) -> ReadingOutcome {
        ReadingOutcome {
            key: key.map(str::to_owned),
            status,
            code: (status == ReadingStatus::Quarantined).then_some(ReasonCode::Late),
            reason: None,
        }
    }

    #[test]
    fn every_stored_status_clears_its_reading_by_key() {
        let sent = [pending(1, "a"), pending(2, "b"), pending(3, "c")];
        let outcomes = [
            outcome(Some("c"), ReadingStatus::Quarantined),
            outcome(Some("a"), ReadingStatus::Accepted),
            outcome(Some("b"), ReadingStatus::Duplicate),
        ];
        assert_eq!(stored_ids(&sent, &outcomes), vec![1, 2, 3]);
        // A reading settlement did not answer for stays.
        assert_eq!(stored_ids(&sent, &outcomes[1..]), vec![1, 2]);
        // An outcome without a key (undecodable payload, quarantined verbatim) is matched by
        // position.
        let outcomes = [
            outcome(Some("a"), ReadingStatus::Accepted),
            outcome(None, ReadingStatus::Quarantined),
        ];
        assert_eq!(stored_ids(&sent[..2], &outcomes), vec![1, 2]);
    }

    fn reading(sequence: u64, start: i64) -> Reading {
        Reading {
            zone: None,
            gateway: GatewayId::new("gw").unwrap(),
            device: DeviceId::new("home").unwrap(),
            firmware: "t".into(),
            sequence,
            interval: Interval::from_unix(start, 15).unwrap(),
            measured_at: chrono::DateTime::from_timestamp(start + 900, 0).unwrap(),
            clock_synced: true,
            clock_set_count: 0,
            operating_seconds: 1,
            registers: Registers::default(),
            deltas: Registers::default(),
            soc_permille: None,
            flags: ReadingFlags::empty(),
        }
    }

    /// An uplink to a fake settlement serving `router` on a local port, with `count` readings
    /// 15 minutes apart (signed by the key of seed 3) in its outbox, which lives in the returned
    /// folder; uploads signed with `auth`.
    async fn uplink_to(
        router: axum::Router,
        count: i64,
        auth: Option<UploadAuth>,
    ) -> (Uplink, Outbox, tempfile::TempDir) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.db"), 1 << 20)
            .await
            .unwrap();
        let key = SigningKeyPair::from_seed([3; 32]);
        let base = 1_782_000_000 / 900 * 900;
        for i in 0..count {
            let start = base + i * 900;
            let resume = Resume {
                next_start: start + 900,
                channels: [None; 5],
            };
            outbox
                .store(|s| reading(s, start), &key, &resume, 0)
                .await
                .unwrap();
        }
        let uplink = Uplink {
            outbox: outbox.clone(),
            mqtt: None,
            topic: "unused".into(),
            settlement_url: Some(format!("http://{addr}")),
            http: reqwest::Client::new(),
            status: Arc::new(Status::default()),
            wake: Arc::new(Notify::new()),
            auth,
        };
        (uplink, outbox, dir)
    }

    /// Settlement's answer: broken while `broken` is set, else one outcome per reading, the
    /// second one quarantined (as the real service answers for a late reading).
    async fn readings(
        State(broken): State<Arc<Mutex<bool>>>,
        Json(items): Json<Vec<SignedEnvelope>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        if *broken.lock().unwrap() {
            return (axum::http::StatusCode::OK, "{\"stored\": tru").into_response();
        }
        let outcomes: Vec<ReadingOutcome> = items
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let r: Reading = e.open().unwrap();
                let quarantined = i == 1;
                ReadingOutcome {
                    key: Some(r.idempotency_key()),
                    status: if quarantined {
                        ReadingStatus::Quarantined
                    } else {
                        ReadingStatus::Accepted
                    },
                    code: quarantined.then_some(ReasonCode::Late),
                    reason: quarantined.then(|| "the interval was settled".to_owned()),
                }
            })
            .collect();
        Json(outcomes).into_response()
    }

    #[tokio::test]
    async fn a_broken_answer_is_a_failed_delivery_and_keeps_the_readings() {
        let broken = Arc::new(Mutex::new(true));
        let router = axum::Router::new()
            .route("/readings", post(readings))
            .with_state(broken.clone());
        let (uplink, outbox, _dir) = uplink_to(router, 3, None).await;
        let error = uplink.deliver_some().await.unwrap_err();
        assert!(matches!(error, DeliveryError::BadAnswer(_)), "{error}");
        assert!(
            error.to_string().contains("not a list of reading outcomes"),
            "{error}"
        );
        assert_eq!(outbox.depth().await.unwrap().0, 3, "every reading is kept");
        assert_eq!(uplink.status.snapshot().delivered_http, 0);

        // Once settlement answers properly, accepted and quarantined readings both leave.
        *broken.lock().unwrap() = false;
        assert!(uplink.deliver_some().await.unwrap());
        assert_eq!(outbox.depth().await.unwrap().0, 0);
        assert_eq!(uplink.status.snapshot().delivered_http, 3);
    }

    /// Settlement as it answers a gateway it does not know yet (503 `unknown_gateway` with
    /// Retry-After), then once the market enrolled it: every batch must carry the gateway's
    /// signed request over the exact body.
    async fn signed_readings(
        State(state): State<Arc<Mutex<(bool, u32)>>>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let header = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let signed = gridmesh_protocol::request::SignedGatewayRequest::parse(header).unwrap();
        assert_eq!(signed.gateway().as_str(), "gw");
        let now = chrono::Utc::now().timestamp();
        let public = SigningKeyPair::from_seed([3; 32]).public_key();
        signed
            .verify(&public, now, "POST", "/readings", &body)
            .expect("the batch is signed by the gateway's key");
        let mut state = state.lock().unwrap();
        state.1 += 1;
        if !state.0 {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "7")],
                r#"{"code":"unknown_gateway","message":"gateway gw is not enrolled"}"#,
            )
                .into_response();
        }
        let items: Vec<SignedEnvelope> = serde_json::from_slice(&body).unwrap();
        let outcomes: Vec<ReadingOutcome> = items
            .iter()
            .map(|e| ReadingOutcome {
                key: Some(e.open::<Reading>().unwrap().idempotency_key()),
                status: ReadingStatus::Accepted,
                code: None,
                reason: None,
            })
            .collect();
        Json(outcomes).into_response()
    }

    #[tokio::test]
    async fn an_unknown_gateway_answer_keeps_the_readings_and_batches_are_signed() {
        let state = Arc::new(Mutex::new((false, 0u32)));
        let router = axum::Router::new()
            .route("/readings", post(signed_readings))
            .with_state(state.clone());
        let auth = UploadAuth {
            gateway: GatewayId::new("gw").unwrap(),
            key: SigningKeyPair::from_seed([3; 32]),
        };
        let (uplink, outbox, _dir) = uplink_to(router, 2, Some(auth)).await;
        let error = uplink.deliver_some().await.unwrap_err();
        match &error {
            DeliveryError::Refused {
                status,
                retry_after,
                body,
            } => {
                assert_eq!(status.as_u16(), 503);
                assert_eq!(*retry_after, Some(Duration::from_secs(7)));
                assert!(body.contains("unknown_gateway"), "{body}");
            }
            other => panic!("expected a refusal, got {other}"),
        }
        assert_eq!(outbox.depth().await.unwrap().0, 2, "the readings are kept");

        // Enrolled now: the same readings are delivered and leave the outbox.
        state.lock().unwrap().0 = true;
        assert!(uplink.deliver_some().await.unwrap());
        assert_eq!(outbox.depth().await.unwrap().0, 0);
        assert_eq!(state.lock().unwrap().1, 2);
    }
}
