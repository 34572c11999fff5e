//! Where settlement learns gateway keys, participant keys and cleared results: the market's
//! REST API in production, a hand-fed [`StaticSource`] in tests. The poller keeps the local
//! copies fresh, with exponential backoff while the market is unreachable.

use crate::service::Service;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
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
    fn participants(&self) -> BoxFuture<'_, Result<Vec<Participant>, SourceError>>;
    /// Results with interval start ≥ `since` (all if `None`), oldest first.
    fn results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<IntervalResult>, SourceError>>;
}

/// The market-engine's REST API.
#[derive(Debug, Clone)]
pub struct HttpMarket {
    base: String,
    client: reqwest::Client,
}

impl HttpMarket {
    /// A client for the market at `base` (for example `http://127.0.0.1:8081`).
    pub fn new(base: &str) -> Self {
        HttpMarket {
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client"),
        }
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
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
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

    fn participants(&self) -> BoxFuture<'_, Result<Vec<Participant>, SourceError>> {
        Box::pin(self.get("participants", "/participants".into()))
    }

    fn results_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'_, Result<Vec<IntervalResult>, SourceError>> {
        let path = match since {
            Some(t) => format!(
                "/results?since={}&limit=500",
                t.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            None => "/results?limit=500".to_owned(),
        };
        Box::pin(self.get("results", path))
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
    participants: Vec<Participant>,
    results: Vec<IntervalResult>,
}

impl StaticSource {
    /// Adds a gateway.
    pub fn add_gateway(&self, g: GatewayEnrollment) {
        self.inner.lock().expect("lock").gateways.push(g);
    }
    /// Adds a participant.
    pub fn add_participant(&self, p: Participant) {
        self.inner.lock().expect("lock").participants.push(p);
    }
    /// Adds a result.
    pub fn add_result(&self, r: IntervalResult) {
        self.inner.lock().expect("lock").results.push(r);
    }
}

impl MarketSource for StaticSource {
    fn gateways(&self) -> BoxFuture<'_, Result<Vec<GatewayEnrollment>, SourceError>> {
        let v = self.inner.lock().expect("lock").gateways.clone();
        Box::pin(async move { Ok(v) })
    }
    fn participants(&self) -> BoxFuture<'_, Result<Vec<Participant>, SourceError>> {
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
}

/// One poll: refresh registrations and fetch new results. Returns how many results were new.
pub async fn poll_once(service: &Service, source: &dyn MarketSource) -> Result<usize, String> {
    let gateways = source.gateways().await.map_err(|e| e.to_string())?;
    service
        .set_gateways(&gateways)
        .await
        .map_err(|e| e.to_string())?;
    let participants = source.participants().await.map_err(|e| e.to_string())?;
    service
        .set_participants(&participants)
        .await
        .map_err(|e| e.to_string())?;
    let since = service
        .latest_result_start()
        .await
        .map_err(|e| e.to_string())?;
    let results = source
        .results_since(since)
        .await
        .map_err(|e| e.to_string())?;
    let mut new = 0;
    for r in &results {
        if service.add_result(r).await.map_err(|e| e.to_string())? {
            new += 1;
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
