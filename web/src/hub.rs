//! The shared state between the refresher and the HTTP handlers: the current snapshot, a
//! broadcast of changes for browsers, the upstream clients and the metrics.

use crate::config::WebConfig;
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SourceHealth};
use crate::upstream::{Service, Upstream};
use std::sync::{Arc, RwLock};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// What browsers are told when the snapshot changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// The snapshot version now current.
    pub version: u64,
    /// Whether the market answered.
    pub market_ok: bool,
    /// Whether settlement answered.
    pub settlement_ok: bool,
    /// What triggered the refresh (`poll`, or the upstream event name such as `result`).
    pub cause: String,
    /// The newest cleared interval's key: pages re-draw charts only when it changes.
    pub latest_interval: Option<String>,
}

/// State shared by every task and handler.
#[derive(Debug)]
pub struct Hub {
    /// The configuration in force.
    pub config: WebConfig,
    /// The market client.
    pub market: Upstream,
    /// The settlement client.
    pub settlement: Upstream,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Users, sessions and the Host check.
    pub auth: crate::auth::Auth,
    /// The pinned ledger trust roots and the blocks verified so far.
    pub trust: crate::proof::Trust,
    /// Incidents, their acknowledgements and notifications.
    pub incidents: crate::incidents::Incidents,
    /// Intervals kept for the history charts (see [`crate::history`]).
    pub history: crate::history::HistoryStore,
    snapshot: RwLock<Arc<Snapshot>>,
    changes: broadcast::Sender<Change>,
    wake: Notify,
    cause: std::sync::Mutex<Option<String>>,
    /// A deferred change is waiting to be announced (see [`Hub::update_deferred`]).
    deferred: std::sync::atomic::AtomicBool,
    /// Cancelled at shutdown: ends the browsers' event streams.
    pub stop: CancellationToken,
}

impl Hub {
    /// A hub with an empty snapshot; an error when the HTTP client cannot be built.
    pub fn new(config: WebConfig) -> Result<Arc<Self>, crate::WebError> {
        Self::with_stop(config, CancellationToken::new())
    }

    /// A hub whose browser event streams end when `stop` is cancelled (the server's shutdown
    /// token, so graceful shutdown need not wait for open pages).
    pub fn with_stop(
        config: WebConfig,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, crate::WebError> {
        let timeout = config.request_timeout();
        let token = config.upstream_token.as_deref();
        let market = Upstream::new(Service::Market, &config.market_url, timeout, token)
            .map_err(crate::WebError::Http)?;
        let settlement = Upstream::new(Service::Settlement, &config.settlement_url, timeout, token)
            .map_err(crate::WebError::Http)?;
        let snapshot = Snapshot {
            market: SourceHealth::new(market.base_url()),
            settlement: SourceHealth::new(settlement.base_url()),
            broker: config.broker_url.as_deref().map(SourceHealth::new),
            ..Snapshot::default()
        };
        let (changes, _) = broadcast::channel(64);
        let auth = crate::auth::Auth::new(&config);
        let trust = crate::proof::Trust::new(
            config.settlement_authority_key.as_deref(),
            config.ledger_anchor.as_deref(),
        );
        let incidents = crate::incidents::Incidents::open(&config.data_dir);
        Ok(Arc::new(Hub {
            config,
            market,
            settlement,
            metrics: Metrics::default(),
            auth,
            trust,
            incidents,
            history: crate::history::HistoryStore::default(),
            snapshot: RwLock::new(Arc::new(snapshot)),
            changes,
            wake: Notify::new(),
            cause: std::sync::Mutex::new(None),
            deferred: std::sync::atomic::AtomicBool::new(false),
            stop,
        }))
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the snapshot through `update`; bumps the version and tells browsers when the
    /// data changed (or a deferred change is waiting). Returns whether it did.
    pub fn update(&self, cause: &str, update: impl FnOnce(&mut Snapshot)) -> bool {
        let change = {
            let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            let mut next = (**guard).clone();
            let before = next.data_fingerprint();
            update(&mut next);
            let deferred = self
                .deferred
                .swap(false, std::sync::atomic::Ordering::AcqRel);
            let changed = next.data_fingerprint() != before || next.version == 0 || deferred;
            if changed {
                next.version += 1;
            }
            let change = changed.then(|| Change {
                version: next.version,
                market_ok: next.market.ok,
                settlement_ok: next.settlement.ok,
                cause: cause.to_owned(),
                latest_interval: next.latest_result().map(|r| r.interval.key()),
            });
            *guard = Arc::new(next);
            change
        };
        match change {
            Some(change) => {
                // No receivers is fine: nobody has a page open.
                let _ = self.changes.send(change);
                true
            }
            None => false,
        }
    }

    /// Replaces the snapshot through `update` **without** telling browsers yet: for frequent,
    /// small changes (gateways' control status arrives at every gateway poll). The next
    /// [`Hub::update`] (at the latest the refresher's next poll) announces them, so open pages
    /// re-read at most once per poll interval because of them. The data is served at once.
    pub fn update_deferred(&self, update: impl FnOnce(&mut Snapshot)) {
        let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let mut next = (**guard).clone();
        update(&mut next);
        // No fingerprint here (it would serialise the whole snapshot per message): the next
        // update announces a new version whenever a deferred change was recorded.
        self.deferred
            .store(true, std::sync::atomic::Ordering::Release);
        *guard = Arc::new(next);
    }

    /// Subscribes to changes (one receiver per open page).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Asks the refresher to refresh now (an upstream event arrived).
    pub fn wake(&self, cause: &str) {
        *self.cause.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause.to_owned());
        self.wake.notify_one();
    }

    /// Waits for [`Hub::wake`]; returns the cause.
    pub async fn woken(&self) -> String {
        self.wake.notified().await;
        self.cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "event".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_changes_are_served_at_once_and_announced_with_the_next_update() {
        let hub = Hub::new(WebConfig::default()).unwrap();
        let mut changes = hub.subscribe();
        assert!(
            hub.update("start", |_| {}),
            "the first update announces version 1"
        );
        assert_eq!(changes.try_recv().unwrap().version, 1);
        assert!(
            !hub.update("poll", |_| {}),
            "nothing changed, nothing announced"
        );

        hub.update_deferred(|snap| {
            snap.next_interval = Some("2026-06-21T13:00:00Z".into());
        });
        assert_eq!(
            hub.snapshot().next_interval.as_deref(),
            Some("2026-06-21T13:00:00Z"),
            "served at once"
        );
        assert_eq!(hub.snapshot().version, 1);
        assert!(changes.try_recv().is_err(), "not announced by itself");

        assert!(hub.update("poll", |_| {}), "announced by the next update");
        let change = changes.try_recv().unwrap();
        assert_eq!((change.version, change.cause.as_str()), (2, "poll"));
        assert!(!hub.update("poll", |_| {}), "and only once");
    }
}
