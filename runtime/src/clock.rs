//! Wall-clock or accelerated time, shared by every time-driven service.
//!
//! The demo and the tests run the neighbourhood faster than real time (for example one
//! 15-minute interval every 15 s, `speed = 60`). Every service asks a [`Clock`] for "now"
//! instead of the system clock, so meter-sim's physics, the gateways' interval boundaries, the
//! market's gate closures and settlement's grace periods all agree.
//!
//! A scaled clock is measured with `tokio::time::Instant`, so `tokio::time::pause()` makes it
//! deterministic in tests.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The source of "now" for a service.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    System,
    Scaled {
        epoch: DateTime<Utc>,
        started: Instant,
        speed: f64,
    },
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock (production).
    pub fn system() -> Self {
        Clock {
            inner: Arc::new(Inner::System),
        }
    }

    /// Simulated time starting at `epoch` now and running `speed` times faster than real time.
    /// Clones share the same origin, so every service given a clone agrees on "now".
    pub fn scaled(epoch: DateTime<Utc>, speed: f64) -> Self {
        assert!(
            speed.is_finite() && speed > 0.0,
            "clock speed must be positive"
        );
        Clock {
            inner: Arc::new(Inner::Scaled {
                epoch,
                started: Instant::now(),
                speed,
            }),
        }
    }

    /// The current (possibly simulated) time.
    pub fn now(&self) -> DateTime<Utc> {
        match &*self.inner {
            Inner::System => Utc::now(),
            Inner::Scaled {
                epoch,
                started,
                speed,
            } => {
                let real = started.elapsed().as_secs_f64();
                *epoch + ChronoDuration::microseconds((real * speed * 1e6) as i64)
            }
        }
    }

    /// How many simulated seconds pass per real second (1 for the system clock).
    pub fn speed(&self) -> f64 {
        match &*self.inner {
            Inner::System => 1.0,
            Inner::Scaled { speed, .. } => *speed,
        }
    }

    /// The real time it takes for `simulated` to pass on this clock.
    pub fn real_duration(&self, simulated: ChronoDuration) -> Duration {
        let secs = simulated.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6 / self.speed();
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// Sleeps until the clock shows `at` (returns at once if it already does).
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        loop {
            let remaining = at - self.now();
            if remaining <= ChronoDuration::zero() {
                return;
            }
            // Re-check after sleeping: a scaled clock's rounding must never wake us early.
            tokio::time::sleep(self.real_duration(remaining).max(Duration::from_millis(1))).await;
        }
    }
}

/// Accelerated time as it appears in a service's config file (`[clock]`); absent means the
/// system clock.
///
/// ```toml
/// [clock]
/// epoch = "2026-06-21T09:00:00Z"   # simulated time at `anchor`
/// speed = 60.0                      # simulated seconds per real second
/// anchor = "2026-11-21T10:00:00Z"  # optional: the real instant at which it was `epoch`
/// ```
///
/// With an anchor, several processes started at different moments share one simulated clock;
/// without one, simulated time starts at `epoch` when the process starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSettings {
    /// Simulated time at `anchor` (or at start), RFC 3339.
    pub epoch: DateTime<Utc>,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// The real (wall-clock) instant at which simulated time was `epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<DateTime<Utc>>,
}

impl ClockSettings {
    /// The clock these settings describe, as of now.
    pub fn clock(&self) -> Clock {
        let epoch = match self.anchor {
            Some(anchor) => {
                let real = (Utc::now() - anchor).num_microseconds().unwrap_or(0) as f64;
                self.epoch + ChronoDuration::microseconds((real * self.speed) as i64)
            }
            None => self.epoch,
        };
        Clock::scaled(epoch, self.speed)
    }

    /// The clock for an optional `[clock]` table: the system clock when it is absent.
    pub fn clock_or_system(settings: Option<&ClockSettings>) -> Clock {
        settings.map_or_else(Clock::system, ClockSettings::clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn scaled_clock_runs_fast_and_sleeps_exactly() {
        let epoch = DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::scaled(epoch, 60.0);
        assert_eq!(clock.now(), epoch);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(clock.now(), epoch + ChronoDuration::minutes(15));
        let target = epoch + ChronoDuration::minutes(30);
        clock.sleep_until(target).await;
        assert!(clock.now() >= target);
        assert!(clock.now() < target + ChronoDuration::seconds(1));
        assert_eq!(
            clock.real_duration(ChronoDuration::minutes(15)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn anchored_settings_agree_across_processes_started_later() {
        let epoch = DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // Anchored ten real seconds ago at speed 60: ten simulated minutes have passed.
        let settings = ClockSettings {
            epoch,
            speed: 60.0,
            anchor: Some(Utc::now() - ChronoDuration::seconds(10)),
        };
        let now = settings.clock().now();
        assert!(now >= epoch + ChronoDuration::minutes(10), "{now}");
        assert!(now < epoch + ChronoDuration::minutes(11), "{now}");
        let parsed: ClockSettings =
            toml::from_str("epoch = \"2026-06-21T12:00:00Z\"\nspeed = 60.0\n").unwrap();
        assert_eq!(parsed.anchor, None);
        assert!(
            toml::from_str::<ClockSettings>(
                "epoch = \"2026-06-21T12:00:00Z\"\nspeed = 1.0\nsped = 2.0\n"
            )
            .is_err()
        );
    }
}
