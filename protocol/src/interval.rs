//! Delivery intervals: UTC-aligned slices of time that the market clears and settlement settles.
//!
//! An interval of length L minutes starts at a UTC instant whose Unix time is a multiple of
//! L × 60 seconds (so 15-minute intervals start at :00, :15, :30 and :45). Orders for an
//! interval are accepted until its *gate closure*, a configurable lead time before its start.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The allowed interval lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IntervalLength {
    /// 5 minutes.
    Min5,
    /// 15 minutes (the default, as in European intraday markets).
    #[default]
    Min15,
    /// 30 minutes.
    Min30,
    /// 60 minutes.
    Min60,
}

/// Why an interval is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    /// A length other than 5, 15, 30 or 60 minutes.
    #[error("interval length {0} min is not allowed; use 5, 15, 30 or 60")]
    BadLength(i64),
    /// A start that is not on the interval grid.
    #[error(
        "interval start {start} is not aligned to {minutes} minutes (UTC); the enclosing interval starts at {aligned}"
    )]
    NotAligned {
        /// The given start.
        start: DateTime<Utc>,
        /// The interval length in minutes.
        minutes: u16,
        /// The start of the interval that contains `start`.
        aligned: DateTime<Utc>,
    },
    /// A start that is not an RFC 3339 timestamp or lies outside the representable range.
    #[error("interval start `{0}` is not an RFC 3339 UTC timestamp such as 2026-06-21T12:00:00Z")]
    BadTimestamp(String),
}

impl IntervalLength {
    /// The length in minutes.
    pub const fn minutes(self) -> u16 {
        match self {
            IntervalLength::Min5 => 5,
            IntervalLength::Min15 => 15,
            IntervalLength::Min30 => 30,
            IntervalLength::Min60 => 60,
        }
    }

    /// The length in seconds.
    pub const fn seconds(self) -> i64 {
        self.minutes() as i64 * 60
    }

    /// The length as a chrono duration.
    pub fn duration(self) -> Duration {
        Duration::seconds(self.seconds())
    }

    /// Parses a length in minutes.
    pub fn from_minutes(minutes: i64) -> Result<Self, IntervalError> {
        match minutes {
            5 => Ok(IntervalLength::Min5),
            15 => Ok(IntervalLength::Min15),
            30 => Ok(IntervalLength::Min30),
            60 => Ok(IntervalLength::Min60),
            other => Err(IntervalError::BadLength(other)),
        }
    }
}

impl Serialize for IntervalLength {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.minutes())
    }
}

impl<'de> Deserialize<'de> for IntervalLength {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let minutes = i64::deserialize(d)?;
        IntervalLength::from_minutes(minutes).map_err(serde::de::Error::custom)
    }
}

/// One delivery interval: an aligned UTC start and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interval {
    start: DateTime<Utc>,
    #[serde(rename = "minutes")]
    #[cfg_attr(feature = "openapi", schema(value_type = u16, minimum = 5, maximum = 60))]
    length: IntervalLength,
}

#[derive(Deserialize)]
struct RawInterval {
    start: DateTime<Utc>,
    minutes: IntervalLength,
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawInterval::deserialize(d)?;
        Interval::new(raw.start, raw.minutes).map_err(serde::de::Error::custom)
    }
}

impl Interval {
    /// An interval starting at `start`, which must be aligned to `length`.
    pub fn new(start: DateTime<Utc>, length: IntervalLength) -> Result<Self, IntervalError> {
        let aligned = Self::containing(start, length);
        if aligned.start != start {
            return Err(IntervalError::NotAligned {
                start,
                minutes: length.minutes(),
                aligned: aligned.start,
            });
        }
        Ok(aligned)
    }

    /// An interval from a Unix start time in seconds and a length in minutes, as carried by the
    /// signed layout.
    pub fn from_unix(start_unix: i64, minutes: i64) -> Result<Self, IntervalError> {
        let length = IntervalLength::from_minutes(minutes)?;
        let start = Utc
            .timestamp_opt(start_unix, 0)
            .single()
            .ok_or_else(|| IntervalError::BadTimestamp(start_unix.to_string()))?;
        Self::new(start, length)
    }

    /// Parses an RFC 3339 start and a length in minutes.
    pub fn parse(start: &str, minutes: i64) -> Result<Self, IntervalError> {
        let start = DateTime::parse_from_rfc3339(start)
            .map_err(|_| IntervalError::BadTimestamp(start.to_owned()))?
            .with_timezone(&Utc);
        Self::new(start, IntervalLength::from_minutes(minutes)?)
    }

    /// The interval of the given length that contains `instant`.
    pub fn containing(instant: DateTime<Utc>, length: IntervalLength) -> Self {
        let secs = instant.timestamp();
        let start_secs = secs.div_euclid(length.seconds()) * length.seconds();
        let start = Utc
            .timestamp_opt(start_secs, 0)
            .single()
            .expect("an aligned instant before a valid instant is valid");
        Interval { start, length }
    }

    /// The first instant of the interval.
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// The first instant after the interval.
    pub fn end(&self) -> DateTime<Utc> {
        self.start + self.length.duration()
    }

    /// The interval's length.
    pub fn length(&self) -> IntervalLength {
        self.length
    }

    /// The start as Unix seconds.
    pub fn start_unix(&self) -> i64 {
        self.start.timestamp()
    }

    /// The following interval.
    pub fn next(&self) -> Self {
        Interval {
            start: self.end(),
            length: self.length,
        }
    }

    /// The preceding interval.
    pub fn previous(&self) -> Self {
        Interval {
            start: self.start - self.length.duration(),
            length: self.length,
        }
    }

    /// Whether `instant` lies in `[start, end)`.
    pub fn contains(&self, instant: DateTime<Utc>) -> bool {
        self.start <= instant && instant < self.end()
    }

    /// Gate closure: the instant `lead` before the start after which orders are refused.
    pub fn gate_closure(&self, lead: Duration) -> DateTime<Utc> {
        self.start - lead
    }

    /// Whether orders for this interval are still accepted at `now`.
    pub fn accepts_orders_at(&self, now: DateTime<Utc>, lead: Duration) -> bool {
        now < self.gate_closure(lead)
    }

    /// The first interval whose gate is still open at `now`: the one the market trades next.
    pub fn next_open(now: DateTime<Utc>, length: IntervalLength, lead: Duration) -> Self {
        let mut interval = Self::containing(now + lead, length);
        while !interval.accepts_orders_at(now, lead) {
            interval = interval.next();
        }
        interval
    }

    /// A stable text key such as `2026-06-21T12:00:00Z/15`, used in topics, URLs and storage.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.start.format("%Y-%m-%dT%H:%M:%SZ"),
            self.length.minutes()
        )
    }

    /// Parses a key made by [`Interval::key`].
    pub fn from_key(key: &str) -> Result<Self, IntervalError> {
        let (start, minutes) = key
            .split_once('/')
            .ok_or_else(|| IntervalError::BadTimestamp(key.to_owned()))?;
        let minutes = minutes
            .parse::<i64>()
            .map_err(|_| IntervalError::BadTimestamp(key.to_owned()))?;
        Self::parse(start, minutes)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{}min",
            self.start.format("%Y-%m-%dT%H:%M:%SZ"),
            self.length.minutes()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn alignment() {
        let i = Interval::containing(t("2026-06-21T12:07:59Z"), IntervalLength::Min15);
        assert_eq!(i.start(), t("2026-06-21T12:00:00Z"));
        assert_eq!(i.end(), t("2026-06-21T12:15:00Z"));
        assert_eq!(i.next().start(), t("2026-06-21T12:15:00Z"));
        assert_eq!(i.previous().start(), t("2026-06-21T11:45:00Z"));
        let err = Interval::new(t("2026-06-21T12:05:00Z"), IntervalLength::Min15).unwrap_err();
        assert!(
            err.to_string()
                .contains("starts at 2026-06-21 12:00:00 UTC")
        );
        assert!(Interval::new(t("2026-06-21T12:05:00Z"), IntervalLength::Min5).is_ok());
        assert_eq!(
            IntervalLength::from_minutes(10),
            Err(IntervalError::BadLength(10))
        );
    }

    #[test]
    fn gate_closure() {
        let lead = Duration::minutes(5);
        let i = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
        assert!(i.accepts_orders_at(t("2026-06-21T12:09:59Z"), lead));
        assert!(!i.accepts_orders_at(t("2026-06-21T12:10:00Z"), lead));
        assert_eq!(
            Interval::next_open(t("2026-06-21T12:09:59Z"), IntervalLength::Min15, lead),
            i
        );
        assert_eq!(
            Interval::next_open(t("2026-06-21T12:10:00Z"), IntervalLength::Min15, lead),
            i.next()
        );
        assert_eq!(
            Interval::next_open(
                t("2026-06-21T12:00:00Z"),
                IntervalLength::Min15,
                Duration::zero()
            ),
            i.previous().next().next().previous()
        );
    }

    #[test]
    fn keys_and_json_round_trip() {
        let i = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
        assert_eq!(i.key(), "2026-06-21T12:15:00Z/15");
        assert_eq!(Interval::from_key(&i.key()).unwrap(), i);
        let json = serde_json::to_string(&i).unwrap();
        assert_eq!(json, r#"{"start":"2026-06-21T12:15:00Z","minutes":15}"#);
        assert_eq!(serde_json::from_str::<Interval>(&json).unwrap(), i);
        assert!(
            serde_json::from_str::<Interval>(r#"{"start":"2026-06-21T12:05:00Z","minutes":15}"#)
                .is_err()
        );
    }
}
