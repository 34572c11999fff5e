//! Where settlement learns gateway keys, participant keys and cleared results: the market's
//! REST API in production, a hand-fed [`StaticSource`] in tests. The poller keeps the local
//! copies fresh, with exponential backoff while the market is unreachable.
//!
//! With a market key configured ([`Service::set_market_key`]) results are read *signed*
//! (`GET /results/signed`, [`SignedResult`]) and only those that verify are stored; without
//! one they are read unsigned (`GET /results`) and trusted as served.

use crate::service::Service;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmesh_protocol::envelope::{ResultAttestation, SignedResult};
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::rotation::ParticipantWithKeys;
use gridmesh_protocol::signing::Signable;
use gridmesh_runtime::shutdown::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the market could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read {what} from the market at {url}: {message} (is market-engine running?)")]
pub struct SourceError {
    /// What was requested.
    pub what: &'static str,
    /// The URL.
    pub url: String,
    /// What went wrong.
    pub message: String,
}

/// A source of registrations and results.
pub trait MarketSource: Send + Sync + 'static {
    /// Every gateway enrolment.
    fn gateways(&self) -> BoxFuture<'_, Result<Vec<GatewayEnrollment>, SourceError>>;
    /// Every participant.
    fn participants(&self) -> BoxFuture<'_, Result<Vec<ParticipantWithKeys>, SourceError>>;
    /// Results with interval start ≥ `since` (all if `None`), oldest first.
    fn results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<IntervalResult>, SourceError>>;
    /// Results as the market signed them, interval start ≥ `since` (all if `None`), oldest
    /// first. Nothing is verified here: the caller checks every one with the market's key.
    fn signed_results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<SignedResult>, SourceError>>;
}

fn since_query(since: Option<DateTime<Utc>>) -> String {
    match since {
        Some(t) => format!("?since={}&limit=500", t.format("%Y-%m-%dT%H:%M:%SZ")),
        None => "?limit=500".to_owned(),
    }
}

/// The market-engine's REST API.
#[derive(Clone)]
pub struct HttpMarket {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for HttpMarket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMarket")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HttpMarket {
    fn client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
    }

    /// A client for the market at `base` (for example `http://127.0.0.1:8081`). An `https://`
    /// market needs [`HttpMarket::with_ca_pem`]: no built-in roots are trusted.
    pub fn new(base: &str) -> Self {
        HttpMarket {
            base: base.trim_end_matches('/').to_owned(),
            client: Self::client_builder().build().expect("reqwest client"),
            token: None,
        }
    }

    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) for an
    /// `https://` market: the CA that signed the market's certificate (`market_ca_file`).
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Self, String> {
        let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        if certificates.is_empty() {
            return Err("no PEM CERTIFICATE block found".into());
        }
        let builder = certificates
            .into_iter()
            .fold(Self::client_builder(), |b, c| b.add_root_certificate(c));
        self.client = builder.build().map_err(|e| e.to_string())?;
        Ok(self)
    }

    /// Sends `Authorization: Bearer <token>` with every read (the market's auditor token: its
    /// gateway registrations are private); `None` or empty sends no credential.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(str::to_owned);
        self
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: String,
    ) -> Result<T, SourceError> {
        let url = format!("{}{path}", self.base);
        let err = |message: String| SourceError {
            what,
            url: url.clone(),
            message,
        };
        let mut request = self.client.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let resp = request.send().await.map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("HTTP {}", resp.status())));
        }
        resp.json().await.map_err(|e| err(e.to_string()))
    }
}

impl MarketSource for HttpMarket {
    fn gateways(&self) -> BoxFuture<'_, Result<Vec<GatewayEnrollment>, SourceError>> {
        Box::pin(self.get("gateways", "/gateways".into()))
    }

    fn participants(&self) -> BoxFuture<'_, Result<Vec<ParticipantWithKeys>, SourceError>> {
        Box::pin(self.get("participants", "/participants".into()))
    }

    fn results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<IntervalResult>, SourceError>> {
        Box::pin(self.get("results", format!("/results{}", since_query(since))))
    }

    fn signed_results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<SignedResult>, SourceError>> {
        Box::pin(self.get(
            "signed results",
            format!("/results/signed{}", since_query(since)),
        ))
    }
}

/// An in-memory source for tests and offline runs.
#[derive(Debug, Default, Clone)]
pub struct StaticSource {
    inner: Arc<Mutex<StaticInner>>,
}

#[derive(Debug, Default)]
struct StaticInner {
    gateways: Vec<GatewayEnrollment>,
    participants: Vec<ParticipantWithKeys>,
    results: Vec<IntervalResult>,
    signed: Vec<SignedResult>,
}

impl StaticSource {
    /// Adds a gateway.
    pub fn add_gateway(&self, g: GatewayEnrollment) {
        self.inner.lock().expect("lock").gateways.push(g);
    }
    /// Adds a participant whose single key is valid from 0 on.
    pub fn add_participant(&self, p: Participant) {
        self.add_participant_with_keys(ParticipantWithKeys {
            participant: p,
            keys: Vec::new(),
        });
    }
    /// Adds a participant with every key's validity period.
    pub fn add_participant_with_keys(&self, p: ParticipantWithKeys) {
        self.inner.lock().expect("lock").participants.push(p);
    }
    /// Adds a result.
    pub fn add_result(&self, r: IntervalResult) {
        self.inner.lock().expect("lock").results.push(r);
    }
    /// Adds a signed result (served as is, even if it does not verify).
    pub fn add_signed_result(&self, r: SignedResult) {
        self.inner.lock().expect("lock").signed.push(r);
    }
}

/// The interval start a signed result claims (attestation first, else the body), unverified.
fn claimed_start(r: &SignedResult) -> Option<DateTime<Utc>> {
    ResultAttestation::decode(&r.attestation.payload)
        .map(|a| a.interval.start())
        .ok()
        .or_else(|| {
            serde_json::from_slice::<IntervalResult>(&r.body_base64)
                .ok()
                .map(|b| b.interval.start())
        })
}

impl MarketSource for StaticSource {
    fn gateways(&self) -> BoxFuture<'_, Result<Vec<GatewayEnrollment>, SourceError>> {
        let v = self.inner.lock().expect("lock").gateways.clone();
        Box::pin(async move { Ok(v) })
    }
    fn participants(&self) -> BoxFuture<'_, Result<Vec<ParticipantWithKeys>, SourceError>> {
        let v = self.inner.lock().expect("lock").participants.clone();
        Box::pin(async move { Ok(v) })
    }
    fn results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<IntervalResult>, SourceError>> {
        let mut v: Vec<IntervalResult> = self
            .inner
            .lock()
            .expect("lock")
            .results
            .iter()
            .filter(|r| since.is_none_or(|s| r.interval.start() >= s))
            .cloned()
            .collect();
        v.sort_by_key(|r| r.interval.start());
        Box::pin(async move { Ok(v) })
    }
    fn signed_results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<SignedResult>, SourceError>> {
        let mut v: Vec<SignedResult> = self
            .inner
            .lock()
            .expect("lock")
            .signed
            .iter()
            .filter(|r| match (since, claimed_start(r)) {
                (Some(s), Some(start)) => start >= s,
                _ => true,
            })
            .cloned()
            .collect();
        v.sort_by_key(claimed_start);
        Box::pin(async move { Ok(v) })
    }
}

/// One poll: refresh registrations and fetch new results. Returns how many results were new.
pub async fn poll_once(service: &Service, source: &dyn MarketSource) -> Result<usize, String> {
    let gateways = source.gateways().await.map_err(|e| e.to_string())?;
    service
        .set_gateways(&gateways)
        .await
        .map_err(|e| e.to_string())?;
    // Readings held for gateways that were not enrolled yet are re-admitted once they are.
    service.readmit_held().await.map_err(|e| e.to_string())?;
    let participants = source.participants().await.map_err(|e| e.to_string())?;
    service
        .set_participants_with_keys(&participants)
        .await
        .map_err(|e| e.to_string())?;
    let since = service
        .latest_result_start()
        .await
        .map_err(|e| e.to_string())?;
    let mut new = 0;
    if service.market_key().is_some() {
        let signed = source
            .signed_results_since(since)
            .await
            .map_err(|e| e.to_string())?;
        for r in &signed {
            // A result that does not verify is logged, counted and skipped inside.
            if service
                .add_signed_result(r)
                .await
                .map_err(|e| e.to_string())?
            {
                new += 1;
            }
        }
    } else {
        let results = source
            .results_since(since)
            .await
            .map_err(|e| e.to_string())?;
        for r in &results {
            if service.add_result(r).await.map_err(|e| e.to_string())? {
                new += 1;
            }
        }
    }
    Ok(new)
}

/// Polls the source every `every` (real time) until shutdown, backing off on errors.
pub async fn run_poller(
    service: Arc<Service>,
    source: Arc<dyn MarketSource>,
    every: Duration,
    shutdown: Shutdown,
) {
    // The caller polled once already; start with a wait.
    let mut delay = every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return,
        }
        match poll_once(&service, source.as_ref()).await {
            Ok(_) => delay = every,
            Err(e) => {
                service.metrics.source_errors.add(1);
                delay = (delay * 2).min(Duration::from_secs(60)).max(every);
                tracing::warn!(error = %e, retry_in = ?delay, "market poll failed");
            }
        }
    }
}
