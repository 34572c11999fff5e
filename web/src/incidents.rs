//! Incidents: consecutive alerts of one kind on one subject, grouped ("f1 congested 09:45–17:45"),
//! active or resolved, acknowledged by an operator, and announced to a webhook.
//!
//! - [`group`] is the pure core: alerts in, incidents out (no clock, no I/O);
//! - [`Store`] keeps acknowledgements (who, when) and delivered notifications in
//!   `<data_dir>/incidents.jsonl`, rewritten atomically (temporary file, then rename);
//! - [`Incidents`] tracks incidents across refreshes: one that disappears from the alerts is
//!   *resolved* (kept in memory for the page); new and resolved ones are queued for the webhook;
//! - [`deliver`] POSTs one notification with bounded exponential backoff ([`Backoff`]).
//!
//! An incident's id is the first 16 hex characters of `SHA-256(kind ‖ subject ‖ first
//! interval)`, so it is stable across restarts and its acknowledgement survives them. Alerts
//! without an interval (service down, gateway offline, quarantined reading) form one incident per
//! kind and subject while they last; [`Incidents::observe`] puts the time it first saw one into
//! its id (`SHA-256(kind ‖ subject ‖ first seen)`), so each outage is an incident of its own.

use crate::views::Alert;
use chrono::{DateTime, Utc};
use gridmesh_protocol::Interval;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// One incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable id (16 hex characters).
    pub id: String,
    /// The alerts' kind (`congestion`, `envelope_violation`, …).
    pub kind: String,
    /// What it concerns (node, home, gateway, service).
    pub subject: String,
    /// The highest severity of its alerts: `critical`, `warning` or `info`.
    pub severity: String,
    /// The first interval (key), if the alerts name intervals.
    pub first_interval: Option<String>,
    /// The last interval (key).
    pub last_interval: Option<String>,
    /// How many alerts it groups.
    pub alerts: usize,
    /// `active` or `resolved`.
    pub state: String,
    /// A summary such as "f1 congestion 2026-06-21 09:45–17:45 UTC (33 intervals)".
    pub title: String,
    /// The newest alert's message.
    pub message: String,
    /// Who acknowledged it, if anyone.
    pub acknowledged_by: Option<String>,
    /// When.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When the dashboard saw it resolve (`null` while active or if resolved before it ran).
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Incident {
    /// Whether it is still going.
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }
}

/// The id of the incident of `kind` on `subject` starting at `first`.
pub fn incident_id(kind: &str, subject: &str, first: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [kind, subject, first.unwrap_or("-")] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

fn rank(severity: &str) -> u8 {
    match severity {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    }
}

fn span(first: &Interval, last: &Interval) -> String {
    let end = last.next().start();
    let same_day = first.start().date_naive() == end.date_naive();
    format!(
        "{}–{} UTC",
        first.start().format("%Y-%m-%d %H:%M"),
        end.format(if same_day { "%H:%M" } else { "%Y-%m-%d %H:%M" })
    )
}

fn label(kind: &str) -> &str {
    match kind {
        "congestion" => "congested (measured)",
        "envelope_violation" => "over its operating envelope",
        "gateway_offline" => "offline",
        "quarantine" => "reading quarantined",
        "service" => "unreachable",
        "imbalance" => "imbalance spike",
        "cleared_at_limit" => "cleared at limit (plan)",
        other => other,
    }
}

/// An alert with its parsed interval.
type Dated<'a> = (Option<Interval>, &'a Alert);

/// Groups alerts into incidents: alerts of one kind on one subject whose intervals follow each
/// other without a gap form one incident. It is **active** when its last interval is the newest
/// interval its kind was evaluated for (`newest[kind]`; without an entry, the newest interval
/// any alert of that kind names), or when its alerts name no interval; else **resolved**.
/// Sorted: active first, then by severity (critical first), then newest first.
pub fn group(alerts: &[Alert], newest: &BTreeMap<String, Interval>) -> Vec<Incident> {
    // (kind, subject) → [(interval, alert)]
    let mut by_subject: BTreeMap<(&str, &str), Vec<Dated<'_>>> = BTreeMap::new();
    let mut newest_seen: BTreeMap<&str, Interval> = BTreeMap::new();
    for a in alerts {
        let interval = a
            .interval
            .as_deref()
            .and_then(|k| Interval::from_key(k).ok());
        if let Some(i) = interval {
            let e = newest_seen.entry(a.kind.as_str()).or_insert(i);
            if i.start() > e.start() {
                *e = i;
            }
        }
        by_subject
            .entry((a.kind.as_str(), a.subject.as_str()))
            .or_default()
            .push((interval, a));
    }
    let mut out = Vec::new();
    for ((kind, subject), mut list) in by_subject {
        list.sort_by_key(|(i, _)| i.map(|i| i.start()));
        list.dedup_by_key(|(i, _)| i.map(|i| i.start()));
        let newest_kind = newest.get(kind).or_else(|| newest_seen.get(kind)).copied();
        let mut runs: Vec<Vec<Dated<'_>>> = Vec::new();
        for item in list {
            match (runs.last_mut(), item.0) {
                (Some(run), Some(i))
                    if run.last().and_then(|l| l.0).is_some_and(|p| p.next() == i) =>
                {
                    run.push(item)
                }
                (Some(run), None) if run.last().is_some_and(|l| l.0.is_none()) => run.push(item),
                _ => runs.push(vec![item]),
            }
        }
        for run in runs {
            let first = run.first().and_then(|r| r.0);
            let last = run.last().and_then(|r| r.0);
            let newest_alert = run.last().map(|r| r.1).expect("a run is never empty");
            let severity = run
                .iter()
                .map(|r| r.1.severity.as_str())
                .min_by_key(|s| rank(s))
                .unwrap_or("info")
                .to_owned();
            let active = match (kind, last) {
                // Settlement's compliance alerts already say whether they are still going.
                ("envelope_violation", _) => newest_alert.message.ends_with("still going"),
                (_, None) => true,
                (_, Some(l)) => newest_kind.is_some_and(|n| n == l),
            };
            let when = match (first, last) {
                (Some(f), Some(l)) => format!(
                    " {} ({} interval{})",
                    span(&f, &l),
                    run.len(),
                    if run.len() == 1 { "" } else { "s" }
                ),
                _ => String::new(),
            };
            let first_key = first.map(|i| i.key());
            out.push(Incident {
                id: incident_id(kind, subject, first_key.as_deref()),
                kind: kind.to_owned(),
                subject: subject.to_owned(),
                severity,
                first_interval: first_key,
                last_interval: last.map(|i| i.key()),
                alerts: run.len(),
                state: if active { "active" } else { "resolved" }.to_owned(),
                title: format!("{subject} {}{when}", label(kind)),
                message: newest_alert.message.clone(),
                acknowledged_by: None,
                acknowledged_at: None,
                resolved_at: None,
            });
        }
    }
    sort(&mut out);
    out
}

/// Active first, then by severity, then the newest last interval first.
pub fn sort(list: &mut [Incident]) {
    list.sort_by(|a, b| {
        (!a.is_active(), rank(&a.severity))
            .cmp(&(!b.is_active(), rank(&b.severity)))
            .then_with(|| b.last_interval.cmp(&a.last_interval))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// An acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The incident.
    pub id: String,
    /// The user who acknowledged it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One line of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Ack(Ack),
    Notified { id: String, event: String },
}

/// Why the incident store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error(
        "incident store {path}: {source}; check that the dashboard's data_dir exists and is writable"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not a record.
    #[error(
        "incident store {path} line {line} is not a record: {message}; fix or remove that line"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The parse error.
        message: String,
    },
}

/// Acknowledgements and delivered notifications, persisted as JSON lines.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    acks: BTreeMap<String, Ack>,
    notified: BTreeSet<(String, String)>,
}

impl Store {
    /// Opens (or starts) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut store = Store {
            path: path.to_owned(),
            acks: BTreeMap::new(),
            notified: BTreeSet::new(),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let record: Record = serde_json::from_str(line).map_err(|e| StoreError::Corrupt {
                path: path.to_owned(),
                line: n + 1,
                message: e.to_string(),
            })?;
            match record {
                Record::Ack(a) => {
                    store.acks.insert(a.id.clone(), a);
                }
                Record::Notified { id, event } => {
                    store.notified.insert((id, event));
                }
            }
        }
        Ok(store)
    }

    /// The acknowledgement of `id`, if any.
    pub fn ack_of(&self, id: &str) -> Option<&Ack> {
        self.acks.get(id)
    }

    /// Whether `event` (`new`, `resolved`) of `id` was delivered.
    pub fn was_notified(&self, id: &str, event: &str) -> bool {
        self.notified.contains(&(id.to_owned(), event.to_owned()))
    }

    /// Records an acknowledgement (the first one stands) and saves.
    pub fn acknowledge(&mut self, ack: Ack) -> Result<Ack, StoreError> {
        if let Some(existing) = self.acks.get(&ack.id) {
            return Ok(existing.clone());
        }
        self.acks.insert(ack.id.clone(), ack.clone());
        self.save()?;
        Ok(ack)
    }

    /// Records a delivered notification and saves.
    pub fn mark_notified(&mut self, id: &str, event: &str) -> Result<(), StoreError> {
        if self.notified.insert((id.to_owned(), event.to_owned())) {
            self.save()?;
        }
        Ok(())
    }

    /// Writes every record to a temporary file and renames it over the store.
    fn save(&self) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = String::new();
        let records = self
            .acks
            .values()
            .cloned()
            .map(Record::Ack)
            .chain(self.notified.iter().map(|(id, event)| Record::Notified {
                id: id.clone(),
                event: event.clone(),
            }));
        for r in records {
            text.push_str(&serde_json::to_string(&r).expect("records serialise"));
            text.push('\n');
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// A notification for the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `new` or `resolved`.
    pub event: String,
    /// The incident as it stands.
    pub incident: Incident,
}

/// Retry policy of [`deliver`]: waits `initial`, doubling up to `max_delay`, for at most
/// `attempts` tries in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait after a failure.
    pub initial: Duration,
    /// Longest wait.
    pub max_delay: Duration,
    /// Tries in all (at least 1).
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            attempts: 8,
        }
    }
}

impl Backoff {
    /// The wait after failed try `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Why a notification was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "incident webhook {url} did not accept the notification after {attempts} tries; last error: {last}"
)]
pub struct DeliveryError {
    /// The webhook.
    pub url: String,
    /// Tries made.
    pub attempts: u32,
    /// The last failure.
    pub last: String,
}

/// POSTs `notification` as JSON to `url` until it answers 2xx, waiting per `policy` between
/// tries; returns the number of tries it took. Stops early when `stop` is cancelled.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    notification: &Notification,
    policy: Backoff,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<u32, DeliveryError> {
    let attempts = policy.attempts.max(1);
    let mut last = String::new();
    for n in 1..=attempts {
        match client.post(url).json(notification).send().await {
            Ok(r) if r.status().is_success() => return Ok(n),
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(url, attempt = n, error = %last, incident = %notification.incident.id, "incident webhook failed; retrying");
        if n < attempts {
            tokio::select! {
                () = tokio::time::sleep(policy.delay(n)) => {}
                () = stop.cancelled() => break,
            }
        }
    }
    Err(DeliveryError {
        url: url.to_owned(),
        attempts,
        last,
    })
}

/// Incidents across refreshes, with the store.
#[derive(Debug)]
pub struct Incidents {
    inner: Mutex<Tracker>,
}

#[derive(Debug)]
struct Tracker {
    store: Option<Store>,
    store_error: Option<String>,
    /// Every incident seen since the start, by id.
    known: BTreeMap<String, Incident>,
    /// The alerts without an interval going on now: [`group`]'s id → (this occurrence's id,
    /// when the dashboard first saw it).
    occurrences: BTreeMap<String, (String, DateTime<Utc>)>,
}

/// Resolved incidents kept for the page.
const KEEP_RESOLVED: usize = 200;

impl Incidents {
    /// Opens the store under `data_dir` (a store that cannot be read is logged and
    /// acknowledgements then answer 503).
    pub fn open(data_dir: &Path) -> Self {
        let path = data_dir.join("incidents.jsonl");
        let (store, store_error) = match Store::open(&path) {
            Ok(s) => (Some(s), None),
            Err(e) => {
                tracing::error!(error = %e, "incident store unavailable");
                (None, Some(e.to_string()))
            }
        };
        Incidents {
            inner: Mutex::new(Tracker {
                store,
                store_error,
                known: BTreeMap::new(),
                occurrences: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in the current incidents ([`group`]); returns the notifications not yet delivered
    /// (new incidents, and ones that resolved).
    ///
    /// An incident whose alerts name no interval (a service down, a gateway offline) is one
    /// occurrence: its id also covers when the dashboard first saw it (`now` then), and its title
    /// says "since …", so the next outage of the same service is a new incident, announced and
    /// acknowledged anew (issue 17: with [`group`]'s id alone, a second outage reused the first
    /// one's id, was never sent to the webhook and showed the old acknowledgement). After a
    /// restart an ongoing one counts as a new occurrence.
    pub fn observe(&self, mut current: Vec<Incident>, now: DateTime<Utc>) -> Vec<Notification> {
        let mut t = self.lock();
        let going: BTreeSet<String> = current
            .iter()
            .filter(|i| i.first_interval.is_none() && i.is_active())
            .map(|i| i.id.clone())
            .collect();
        t.occurrences.retain(|id, _| going.contains(id));
        for inc in current
            .iter_mut()
            .filter(|i| i.first_interval.is_none() && i.is_active())
        {
            let (id, since) = t.occurrences.entry(inc.id.clone()).or_insert_with(|| {
                let since = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                (incident_id(&inc.kind, &inc.subject, Some(&since)), now)
            });
            inc.id = id.clone();
            inc.title = format!(
                "{} since {} UTC (wall clock)",
                inc.title,
                since.format("%Y-%m-%d %H:%M")
            );
        }
        let ids: BTreeSet<String> = current.iter().map(|i| i.id.clone()).collect();
        for (id, inc) in t.known.iter_mut() {
            if !ids.contains(id) && inc.is_active() {
                inc.state = "resolved".into();
                inc.resolved_at = Some(now);
            }
        }
        for mut inc in current {
            if let Some(old) = t.known.get(&inc.id) {
                if !inc.is_active() {
                    inc.resolved_at = old.resolved_at.or(Some(now).filter(|_| old.is_active()));
                }
            }
            t.known.insert(inc.id.clone(), inc);
        }
        // Forget the oldest resolved ones beyond the limit.
        let mut resolved: Vec<(Option<String>, String)> = t
            .known
            .values()
            .filter(|i| !i.is_active())
            .map(|i| (i.last_interval.clone(), i.id.clone()))
            .collect();
        if resolved.len() > KEEP_RESOLVED {
            resolved.sort();
            for (_, id) in &resolved[..resolved.len() - KEEP_RESOLVED] {
                t.known.remove(id);
            }
        }
        let store = t.store.as_ref();
        t.known
            .values()
            .filter_map(|i| {
                let event = if i.is_active() { "new" } else { "resolved" };
                // An incident first seen already resolved was never announced: skip it.
                let announce = if i.is_active() {
                    true
                } else {
                    i.resolved_at.is_some()
                };
                let done = store.is_some_and(|s| s.was_notified(&i.id, event));
                (announce && !done).then(|| Notification {
                    event: event.into(),
                    incident: i.clone(),
                })
            })
            .collect()
    }

    /// Every incident, sorted, with acknowledgements filled in.
    pub fn list(&self) -> Vec<Incident> {
        let t = self.lock();
        let mut out: Vec<Incident> = t
            .known
            .values()
            .cloned()
            .map(|mut i| {
                if let Some(a) = t.store.as_ref().and_then(|s| s.ack_of(&i.id)) {
                    i.acknowledged_by = Some(a.by.clone());
                    i.acknowledged_at = Some(a.at);
                }
                i
            })
            .collect();
        sort(&mut out);
        out
    }

    /// Acknowledges incident `id` as `by`; `Ok(None)` if there is no such incident.
    pub fn acknowledge(
        &self,
        id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Ack>, String> {
        let mut t = self.lock();
        if !t.known.contains_key(id) {
            return Ok(None);
        }
        let error = t.store_error.clone();
        let Some(store) = t.store.as_mut() else {
            return Err(error.unwrap_or_else(|| "the incident store is unavailable".into()));
        };
        store
            .acknowledge(Ack {
                id: id.to_owned(),
                by: by.to_owned(),
                at: now,
            })
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Records that a notification was delivered.
    pub fn delivered(&self, n: &Notification) {
        let mut t = self.lock();
        if let Some(store) = t.store.as_mut() {
            if let Err(e) = store.mark_notified(&n.incident.id, &n.event) {
                tracing::error!(error = %e, "cannot record a delivered incident notification");
            }
        }
    }
}

/// The newest interval each kind was evaluated for: congestion on the newest measured interval,
/// imbalance and cleared-at-limit notes on the newest cleared one.
pub fn newest_intervals(snap: &crate::snapshot::Snapshot) -> BTreeMap<String, Interval> {
    let mut out = BTreeMap::new();
    if let Some(m) = snap.latest_measured() {
        out.insert("congestion".to_owned(), m.interval);
    }
    if let Some(r) = snap.latest_result() {
        out.insert("imbalance".to_owned(), r.interval);
        out.insert("cleared_at_limit".to_owned(), r.interval);
    }
    out
}

/// Follows the hub's changes: regroups the alerts into incidents after every refresh and sends
/// new and resolved ones to `incident_webhook` (one at a time, each retried per [`Backoff`]).
/// Ends at `stop`.
pub async fn run(
    hub: std::sync::Arc<crate::hub::Hub>,
    stop: tokio_util::sync::CancellationToken,
    policy: Backoff,
) {
    let mut changes = hub.subscribe();
    // A client of its own: the upstream clients send the auditor credential on every request,
    // and the webhook is a third party that must never see it.
    let timeout = hub.config.request_timeout();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot build the incident webhook client; no notifications are sent")
        })
        .ok();
    let mut queued: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let snap = hub.snapshot();
        let alerts = crate::views::alerts(&snap, hub.config.imbalance_spike_factor);
        let current = group(&alerts, &newest_intervals(&snap));
        let pending = hub.incidents.observe(current, Utc::now());
        if let (Some(url), Some(client)) = (hub.config.incident_webhook.as_deref(), &client) {
            for n in pending {
                let key = (n.incident.id.clone(), n.event.clone());
                if queued.contains(&key) {
                    continue;
                }
                match deliver(client, url, &n, policy, &stop).await {
                    Ok(tries) => {
                        tracing::info!(incident = %n.incident.id, event = %n.event, tries, "incident sent to the webhook");
                        hub.incidents.delivered(&n);
                        queued.insert(key);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "incident notification not delivered; tried again after the next refresh")
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = changes.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return;
                }
            }
        }
    }
}
