//! The shared state between the refresher and the HTTP handlers: the current snapshot, a
//! broadcast of changes for browsers, the upstream clients and the metrics.

use crate::config::WebConfig;
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SourceHealth};
use crate::upstream::{Service, Upstream};
use std::sync::{Arc, RwLock};
use tokio::sync::{Notify, broadcast};

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
    snapshot: RwLock<Arc<Snapshot>>,
    changes: broadcast::Sender<Change>,
    wake: Notify,
    cause: std::sync::Mutex<Option<String>>,
}

impl Hub {
    /// A hub with an empty snapshot.
    pub fn new(config: WebConfig) -> Arc<Self> {
        let timeout = config.request_timeout();
        let market = Upstream::new(Service::Market, &config.market_url, timeout);
        let settlement = Upstream::new(Service::Settlement, &config.settlement_url, timeout);
        let snapshot = Snapshot {
            market: SourceHealth::new(market.base_url()),
            settlement: SourceHealth::new(settlement.base_url()),
            broker: config.broker_url.as_deref().map(SourceHealth::new),
            ..Snapshot::default()
        };
        let (changes, _) = broadcast::channel(64);
        Arc::new(Hub {
            config,
            market,
            settlement,
            metrics: Metrics::default(),
            snapshot: RwLock::new(Arc::new(snapshot)),
            changes,
            wake: Notify::new(),
            cause: std::sync::Mutex::new(None),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the snapshot through `update`; bumps the version and tells browsers when the
    /// data changed. Returns whether it did.
    pub fn update(&self, cause: &str, update: impl FnOnce(&mut Snapshot)) -> bool {
        let change = {
            let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            let mut next = (**guard).clone();
            let before = next.data_fingerprint();
            update(&mut next);
            let changed = next.data_fingerprint() != before || next.version == 0;
            if changed {
                next.version += 1;
            }
            let change = changed.then(|| Change {
                version: next.version,
                market_ok: next.market.ok,
                settlement_ok: next.settlement.ok,
                cause: cause.to_owned(),
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
