//! Admission control for readings: how fast an enrolled gateway may upload, how much junk is
//! kept, how many readings of not-yet-enrolled gateways are held, and how often an unknown
//! gateway may make settlement ask the market again. In memory, on real (tokio) time: these
//! bounds protect the disk and the CPU, which an accelerated market clock does not slow down.
//!
//! The bounds (also in settlement/README.md):
//! - uploads: a token bucket per gateway of [`BUCKET_CAPACITY`] readings, refilled at
//!   [`BUCKET_REFILL_PER_SEC`] readings per second; an upload costs one token per reading (at
//!   least one); a batch holds at most [`MAX_BATCH`] readings;
//! - junk (what is not a reading, or a reading refused for good): at most
//!   [`SAMPLES_PER_GATEWAY_PER_HOUR`] kept per gateway and [`SAMPLES_PER_HOUR`] in all per
//!   hour, each cut to its first [`SAMPLE_BYTES`] bytes; the rest is counted
//!   (`gridmesh_settlement_quarantine_samples_dropped_total`), answered, and not stored;
//! - held readings (MQTT, gateway not enrolled yet): at most [`HELD_PER_GATEWAY`] per gateway and
//!   [`HELD_MAX`] in all; beyond that a reading is treated as junk;
//! - registry refresh on an unknown gateway: at most one per [`REFRESH_EVERY`].

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Readings a gateway may upload in one burst.
pub const BUCKET_CAPACITY: u32 = 1_000;
/// Readings per second a gateway's bucket refills with (a home sends about 4 an hour).
pub const BUCKET_REFILL_PER_SEC: u32 = 2;
/// Most readings in one `POST /readings` batch.
pub const MAX_BATCH: usize = BUCKET_CAPACITY as usize;
/// Bytes kept of a junk submission.
pub const SAMPLE_BYTES: usize = 4_096;
/// Junk samples kept per gateway (or source) per hour.
pub const SAMPLES_PER_GATEWAY_PER_HOUR: u32 = 20;
/// Junk samples kept per hour in all.
pub const SAMPLES_PER_HOUR: u32 = 500;
/// Readings held per not-yet-enrolled gateway.
pub const HELD_PER_GATEWAY: u32 = 3_000;
/// Readings held in all.
pub const HELD_MAX: u32 = 20_000;
/// Shortest time between two registry refreshes caused by an unknown gateway.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

const HOUR: Duration = Duration::from_secs(3600);

/// A token bucket: `capacity` tokens, refilled continuously at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, per_sec: u32, now: Instant) -> Self {
        TokenBucket {
            capacity: f64::from(capacity),
            per_sec: f64::from(per_sec.max(1)),
            tokens: f64::from(capacity),
            last: now,
        }
    }

    /// Takes `n` tokens, or says how long to wait until there are `n` (nothing is taken then).
    pub fn take(&mut self, n: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        let n = f64::from(n);
        if n <= self.tokens {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.per_sec))
        }
    }
}

/// Per-key counts in fixed one-hour windows, with a total cap per window.
#[derive(Debug)]
struct HourlyBudget {
    window_start: Option<Instant>,
    per_key: HashMap<String, u32>,
    total: u32,
}

impl HourlyBudget {
    fn allow(&mut self, key: &str, per_key: u32, total: u32, now: Instant) -> bool {
        if self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= HOUR)
        {
            self.window_start = Some(now);
            // Dropping the old window's keys keeps the map no bigger than `total` entries.
            self.per_key.clear();
            self.total = 0;
        }
        if self.total >= total {
            return false;
        }
        let count = self.per_key.entry(key.to_owned()).or_insert(0);
        if *count >= per_key {
            return false;
        }
        *count += 1;
        self.total += 1;
        true
    }
}

/// The admission state of one settlement.
#[derive(Debug)]
pub struct Admission {
    buckets: HashMap<String, TokenBucket>,
    samples: HourlyBudget,
    held: HashMap<String, u32>,
    held_total: u32,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            buckets: HashMap::new(),
            samples: HourlyBudget {
                window_start: None,
                per_key: HashMap::new(),
                total: 0,
            },
            held: HashMap::new(),
            held_total: 0,
        }
    }
}

impl Admission {
    /// Takes `readings` tokens (at least one) from `gateway`'s bucket, or says how long to
    /// wait. Only enrolled gateways get a bucket, so the map stays as small as the registry.
    pub fn take(&mut self, gateway: &str, readings: usize, now: Instant) -> Result<(), Duration> {
        let n = u32::try_from(readings.max(1)).unwrap_or(u32::MAX);
        self.buckets
            .entry(gateway.to_owned())
            .or_insert_with(|| TokenBucket::new(BUCKET_CAPACITY, BUCKET_REFILL_PER_SEC, now))
            .take(n, now)
    }

    /// Whether one more junk sample of `key` may be stored now (and counts it if so).
    pub fn sample(&mut self, key: &str, now: Instant) -> bool {
        self.samples
            .allow(key, SAMPLES_PER_GATEWAY_PER_HOUR, SAMPLES_PER_HOUR, now)
    }

    /// Whether one more reading of the unknown `gateway` may be held (and counts it if so).
    pub fn hold(&mut self, gateway: &str) -> bool {
        if self.held_total >= HELD_MAX {
            return false;
        }
        let count = self.held.entry(gateway.to_owned()).or_insert(0);
        if *count >= HELD_PER_GATEWAY {
            return false;
        }
        *count += 1;
        self.held_total += 1;
        true
    }

    /// Forgets `n` held readings of `gateway` (re-admitted, or not stored after all).
    pub fn release(&mut self, gateway: &str, n: u32) {
        if let Some(count) = self.held.get_mut(gateway) {
            let n = n.min(*count);
            *count -= n;
            self.held_total = self.held_total.saturating_sub(n);
            if *count == 0 {
                self.held.remove(gateway);
            }
        }
    }

    /// The gateways with held readings.
    pub fn held_gateways(&self) -> impl Iterator<Item = String> + '_ {
        self.held.keys().cloned()
    }

    /// Sets the held counts from storage (at start).
    pub fn set_held(&mut self, counts: impl IntoIterator<Item = (String, u32)>) {
        self.held.clear();
        self.held_total = 0;
        for (gateway, n) in counts {
            self.held_total = self.held_total.saturating_add(n);
            self.held.insert(gateway, n);
        }
    }
}

/// The gateway (or source) a submission is attributed to for the junk budget: the reading's
/// gateway when it decoded, else the uploading gateway (`rest:<gateway>`) or the MQTT topic's
/// last level (`mqtt:gridmesh/readings/<gateway>`), else the source itself.
pub fn budget_key(source: &str, gateway: Option<&str>) -> String {
    if let Some(g) = gateway {
        return g.to_owned();
    }
    if let Some(g) = source.strip_prefix("rest:") {
        return g.to_owned();
    }
    if let Some(topic) = source.strip_prefix("mqtt:") {
        return topic.rsplit('/').next().unwrap_or(topic).to_owned();
    }
    source.to_owned()
}

/// The first [`SAMPLE_BYTES`] of `raw` and, when it was cut, a note saying how long it was.
pub fn sample(raw: &[u8]) -> (Vec<u8>, Option<String>) {
    if raw.len() <= SAMPLE_BYTES {
        (raw.to_vec(), None)
    } else {
        (
            raw[..SAMPLE_BYTES].to_vec(),
            Some(format!(
                " (only the first {SAMPLE_BYTES} of {} bytes are kept)",
                raw.len()
            )),
        )
    }
}

/// Why a `POST /readings` upload was refused as a whole (nothing of it was stored, except a
/// junk sample within the bounds above).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No, or no valid, gateway signature over the request (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The signing gateway, or a reading's gateway, is not enrolled with the market yet, even
    /// after asking the market again (503 with `Retry-After`: keep the readings and resend).
    #[error(
        "gateway {gateway} is not enrolled with the market (settlement asked the market again); the readings were not stored: keep them and resend after {} s, and check that the gateway is enrolled (edge-gateway enroll)",
        retry_after.as_secs().max(1)
    )]
    UnknownGateway {
        /// The gateway.
        gateway: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The gateway sent more readings than its rate allows (429 with `Retry-After`).
    #[error(
        "gateway {gateway} sent more readings than its rate allows ({BUCKET_CAPACITY} at once, {BUCKET_REFILL_PER_SEC} per second); nothing was stored: resend after {} s",
        retry_after.as_secs().max(1)
    )]
    RateLimited {
        /// The gateway.
        gateway: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The body is not a JSON array of readings, or holds too many (400).
    #[error("{0}")]
    BadRequest(String),
    /// Storage failed (503).
    #[error(transparent)]
    Service(#[from] super::ServiceError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, t0);
        assert_eq!(b.take(10, t0), Ok(()));
        let wait = b.take(4, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        assert_eq!(b.take(4, t0 + Duration::from_secs(2)), Ok(()));
        // Never above capacity, however long it rested.
        assert!(b.take(11, t0 + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn junk_samples_are_capped_per_key_and_in_all_per_hour() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        let kept = (0..100).filter(|_| a.sample("gw-x", t0)).count();
        assert_eq!(kept, SAMPLES_PER_GATEWAY_PER_HOUR as usize);
        let mut total = kept;
        for k in 0..1000 {
            total += usize::from(a.sample(&format!("k{k}"), t0));
        }
        assert_eq!(total, SAMPLES_PER_HOUR as usize);
        // A new hour, a new budget.
        assert!(a.sample("gw-x", t0 + HOUR));
    }

    #[test]
    fn held_readings_are_capped_and_released() {
        let mut a = Admission::default();
        let held = (0..HELD_PER_GATEWAY + 5)
            .filter(|_| a.hold("gw-new"))
            .count();
        assert_eq!(held, HELD_PER_GATEWAY as usize);
        a.release("gw-new", 10);
        assert!(a.hold("gw-new"));
        a.set_held([("a".to_owned(), HELD_MAX)]);
        assert!(!a.hold("b"));
    }

    #[test]
    fn junk_is_attributed_to_its_gateway_or_source() {
        assert_eq!(budget_key("rest:gw-a", None), "gw-a");
        assert_eq!(budget_key("mqtt:gridmesh/readings/gw-b", None), "gw-b");
        assert_eq!(budget_key("rest:gw-a", Some("gw-c")), "gw-c");
        assert_eq!(budget_key("test", None), "test");
        let (kept, note) = sample(&[b'x'; SAMPLE_BYTES + 1]);
        assert_eq!(kept.len(), SAMPLE_BYTES);
        assert!(note.unwrap().contains("4097 bytes"));
        assert_eq!(sample(b"short"), (b"short".to_vec(), None));
    }
}
