//! Pure checks of signed readings: signature, registered key, sequence, registers, time window
//! and physical plausibility. No I/O; the caller owns the state and stores the outcome.
//!
//! Order of checks for one envelope (the first failure decides):
//! 1. the payload decodes as a `gridmesh/reading/v2` message, or a legacy v1 one (`malformed`);
//! 2. the gateway is registered (`unknown_gateway`) and signed with its registered key
//!    (`key_mismatch`); the signature verifies (`bad_signature`); with a zone configured
//!    ([`Limits::zone`]), a v2 reading names it (`wrong_zone`);
//! 3. the idempotency key was seen before: same payload → `duplicate` (acknowledged again,
//!    counted once); different payload → `conflict`;
//! 4. the interval ended no later than now + the allowed clock skew (`future_interval`) and
//!    no earlier than now − horizon (`too_old`);
//! 5. the sequence is strictly greater than every sequence of the gateway's earlier intervals
//!    and strictly smaller than every sequence of its later ones (`sequence_not_increasing`);
//! 6. no cumulative register is below the same device's previous reading, nor above its next
//!    one, unless the later reading carries the signed `COUNTER_RESET` flag
//!    (`register_decreased`);
//! 7. the interval was already settled (`late`): verified and stored, never settled;
//! 8. physical plausibility: grid export above what the registered inverter plus battery can
//!    deliver in the interval (`implausible_export`), or PV output while the sun is more than
//!    2° below the horizon at the site for the whole interval (`pv_at_night`): stored as
//!    *flagged*: neither money nor tokens until an operator accepts it, and its statement
//!    lists it as pending (see [`crate::rules`]); once accepted, its export counts at most the
//!    site's rating ([`crate::rules::rated_export`]);
//! 9. with a zone configured, a legacy v1 reading (it names no zone, so it might be replayed
//!    from another zone where the same gateway key is enrolled) is stored *flagged*
//!    (`unzoned_reading`) too: never lost, but no money until an operator accepts it.

use chrono::{DateTime, Datelike, Timelike, Utc};
use gridmesh_protocol::reading::{Reading, ReadingFlags, Registers};
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::{Signable, SignedEnvelope};
use gridmesh_protocol::verify_stage::verify_many;
use gridmesh_protocol::{DeviceId, GatewayId, ZoneId};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Why a reading was not accepted as is (a stable code plus a human sentence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Stable snake_case code.
    pub code: ReasonCode,
    /// What is wrong, for people.
    pub message: String,
}

pub use gridmesh_protocol::api::readings::ReasonCode;

impl Reason {
    /// A reason with a message.
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Reason {
            code,
            message: message.into(),
        }
    }
}

/// The outcome of checking one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store and settle it.
    Accept,
    /// Store it flagged: no money and no tokens until an operator accepts it (its statement
    /// lists it as pending).
    Flag(Reason),
    /// Store it as late: verified, never settled.
    Late(Reason),
    /// Seen before with the same payload: acknowledge again, count once.
    Duplicate,
    /// Quarantine it with the reason.
    Reject(Reason),
}

/// Time window, tolerances and the zone readings must name.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Readings whose interval ended more than this before now are refused.
    pub horizon: chrono::Duration,
    /// How far a gateway's interval end may lie ahead of our clock.
    pub max_clock_skew: chrono::Duration,
    /// The market zone this settlement settles (`zone` in its config). Set: a v2 reading for
    /// another zone is refused (`wrong_zone`), a v1 reading is flagged (`unzoned_reading`).
    /// `None`: a single-zone deployment; readings are not checked for their zone.
    pub zone: Option<ZoneId>,
}

/// Verifies signatures of many envelopes with the strict batched check the services use
/// ([`verify_many`]: small-order keys and non-canonical or small-order `R` refused before the
/// batch, then one by one to find the bad ones if the batch fails). `true` = valid.
pub fn verify_signatures(envelopes: &[&SignedEnvelope]) -> Vec<bool> {
    verify_many(envelopes).iter().map(Result::is_ok).collect()
}

/// What the chain state remembers of one accepted (or flagged, or late) reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPoint {
    /// The gateway's sequence number.
    pub sequence: u64,
    /// Cumulative registers.
    pub registers: Registers,
    /// Signed flags.
    pub flags: ReadingFlags,
}

/// Per-gateway history of stored readings, by interval start, for sequence and register checks.
#[derive(Debug, Default, Clone)]
pub struct GatewayHistory {
    by_interval: BTreeMap<i64, Vec<(DeviceId, ChainPoint)>>,
}

impl GatewayHistory {
    /// Records a stored reading.
    pub fn record(&mut self, interval_start: i64, device: DeviceId, point: ChainPoint) {
        self.by_interval
            .entry(interval_start)
            .or_default()
            .push((device, point));
    }

    /// Forgets the points of intervals starting before `since`, except each device's latest
    /// one (the boundary the sequence and register checks of later readings need), as the
    /// state loaded at start-up holds them. `true` if nothing is left.
    pub fn prune_before(&mut self, since: i64) -> bool {
        let newer = self.by_interval.split_off(&since);
        let older = std::mem::replace(&mut self.by_interval, newer);
        let mut boundary: HashMap<DeviceId, (i64, ChainPoint)> = HashMap::new();
        for (start, points) in older {
            for (device, point) in points {
                boundary.insert(device, (start, point));
            }
        }
        for (device, (start, point)) in boundary {
            self.record(start, device, point);
        }
        self.by_interval.is_empty()
    }

    fn check_sequence(&self, start: i64, sequence: u64) -> Result<(), Reason> {
        if let Some((prev_start, points)) = self.by_interval.range(..start).next_back() {
            let max = points.iter().map(|(_, p)| p.sequence).max().unwrap_or(0);
            if sequence <= max {
                return Err(Reason::new(
                    ReasonCode::SequenceNotIncreasing,
                    format!(
                        "sequence {sequence} is not above {max}, the sequence of this gateway's reading for the earlier interval starting at unix {prev_start}: a replayed or re-used counter"
                    ),
                ));
            }
        }
        if let Some((next_start, points)) = self.by_interval.range(start + 1..).next() {
            let min = points
                .iter()
                .map(|(_, p)| p.sequence)
                .min()
                .unwrap_or(u64::MAX);
            if sequence >= min {
                return Err(Reason::new(
                    ReasonCode::SequenceNotIncreasing,
                    format!(
                        "sequence {sequence} is not below {min}, the sequence of this gateway's reading for the later interval starting at unix {next_start}"
                    ),
                ));
            }
        }
        if let Some(points) = self.by_interval.get(&start)
            && points.iter().any(|(_, p)| p.sequence == sequence)
        {
            return Err(Reason::new(
                ReasonCode::SequenceNotIncreasing,
                format!("sequence {sequence} was already used by another device of this gateway"),
            ));
        }
        Ok(())
    }

    fn check_registers(
        &self,
        start: i64,
        device: &DeviceId,
        reading: &Reading,
    ) -> Result<(), Reason> {
        let find = |points: &Vec<(DeviceId, ChainPoint)>| {
            points.iter().find(|(d, _)| d == device).map(|(_, p)| *p)
        };
        let prev = self
            .by_interval
            .range(..start)
            .rev()
            .find_map(|(s, pts)| find(pts).map(|p| (*s, p)));
        if let Some((s, prev)) = prev
            && !reading.flags.contains(ReadingFlags::COUNTER_RESET)
            && let Some(name) = decreased(&prev.registers, &reading.registers)
        {
            return Err(Reason::new(
                ReasonCode::RegisterDecreased,
                format!(
                    "register {name} went down from the reading for unix {s} without a signed counter_reset flag"
                ),
            ));
        }
        let next = self
            .by_interval
            .range(start + 1..)
            .find_map(|(s, pts)| find(pts).map(|p| (*s, p)));
        if let Some((s, next)) = next
            && !next.flags.contains(ReadingFlags::COUNTER_RESET)
            && let Some(name) = decreased(&reading.registers, &next.registers)
        {
            return Err(Reason::new(
                ReasonCode::RegisterDecreased,
                format!("register {name} is above the later reading for unix {s}"),
            ));
        }
        Ok(())
    }
}

const REGISTER_NAMES: [&str; 5] = [
    "grid_import",
    "grid_export",
    "pv",
    "battery_charge",
    "battery_discharge",
];

fn decreased(before: &Registers, after: &Registers) -> Option<&'static str> {
    before
        .as_array()
        .iter()
        .zip(after.as_array())
        .zip(REGISTER_NAMES)
        .find(|((b, a), _)| a < *b)
        .map(|(_, n)| n)
}

/// Everything [`check`] needs besides the reading.
#[derive(Debug)]
pub struct Context<'a> {
    /// The gateway's registration.
    pub enrollment: &'a GatewayEnrollment,
    /// The gateway's stored history.
    pub history: Option<&'a GatewayHistory>,
    /// The payload digest stored under the same idempotency key, if any.
    pub stored_digest: Option<[u8; 32]>,
    /// Whether the reading's interval is already settled.
    pub interval_settled: bool,
    /// The clock's "now".
    pub now: DateTime<Utc>,
    /// Time window.
    pub limits: Limits,
}

/// Decodes an envelope's payload as a reading.
pub fn decode(envelope: &SignedEnvelope) -> Result<Reading, Reason> {
    Reading::decode(&envelope.payload).map_err(|e| {
        Reason::new(
            ReasonCode::Malformed,
            format!("the payload is not a valid signed reading: {e}"),
        )
    })
}

/// Checks a decoded reading whose signature was already verified (`signature_ok`).
pub fn check(
    envelope: &SignedEnvelope,
    reading: &Reading,
    signature_ok: bool,
    ctx: &Context<'_>,
) -> Verdict {
    let enrollment = ctx.enrollment;
    if envelope.public_key != enrollment.public_key {
        return Verdict::Reject(Reason::new(
            ReasonCode::KeyMismatch,
            format!(
                "signed by key {}, but gateway {} is registered with key {}",
                envelope.public_key, reading.gateway, enrollment.public_key
            ),
        ));
    }
    if !signature_ok {
        return Verdict::Reject(Reason::new(
            ReasonCode::BadSignature,
            "the signature does not verify: the reading was altered or forged",
        ));
    }
    if let (Some(ours), Some(theirs)) = (ctx.limits.zone, reading.zone)
        && ours != theirs
    {
        return Verdict::Reject(Reason::new(
            ReasonCode::WrongZone,
            format!(
                "the reading is signed for zone `{theirs}`, but this settlement settles zone `{ours}`: send it to zone `{theirs}`'s settlement, or set the gateway's `zone` to the zone it is enrolled in"
            ),
        ));
    }
    if let Some(stored) = ctx.stored_digest {
        return if stored == envelope.digest() {
            Verdict::Duplicate
        } else {
            Verdict::Reject(Reason::new(
                ReasonCode::Conflict,
                format!(
                    "a different reading with key {} is already stored; the first one stands",
                    reading.idempotency_key()
                ),
            ))
        };
    }
    let end = reading.interval.end();
    if end > ctx.now + ctx.limits.max_clock_skew {
        return Verdict::Reject(Reason::new(
            ReasonCode::FutureInterval,
            format!(
                "interval {} ends at {end}, after now ({}): check the gateway's clock",
                reading.interval, ctx.now
            ),
        ));
    }
    if end < ctx.now - ctx.limits.horizon {
        return Verdict::Reject(Reason::new(
            ReasonCode::TooOld,
            format!(
                "interval {} ended more than {} h ago, beyond the settlement horizon",
                reading.interval,
                ctx.limits.horizon.num_hours()
            ),
        ));
    }
    let start = reading.interval.start_unix();
    if let Some(history) = ctx.history {
        if let Err(reason) = history.check_sequence(start, reading.sequence) {
            return Verdict::Reject(reason);
        }
        if let Err(reason) = history.check_registers(start, &reading.device, reading) {
            return Verdict::Reject(reason);
        }
    }
    if ctx.interval_settled {
        return Verdict::Late(Reason::new(
            ReasonCode::Late,
            format!(
                "interval {} was already settled: the reading is verified and stored but changes no statement",
                reading.interval
            ),
        ));
    }
    if let Some(reason) = plausibility(reading, enrollment) {
        return Verdict::Flag(reason);
    }
    if let (Some(ours), None) = (ctx.limits.zone, reading.zone) {
        return Verdict::Flag(Reason::new(
            ReasonCode::UnzonedReading,
            format!(
                "the reading is signed in the legacy gridmesh/reading/v1 layout, which names no market zone, so it could be a replay from another zone: held without money or tokens until an operator accepts it; set `zone = \"{ours}\"` in the gateway's config so it signs gridmesh/reading/v2"
            ),
        ));
    }
    Verdict::Accept
}

/// The physical plausibility check alone (see the module docs).
pub fn plausibility(reading: &Reading, site: &GatewayEnrollment) -> Option<Reason> {
    let minutes = i64::from(reading.interval.length().minutes());
    // Rounded up: a rated power can never deliver more than this.
    let max_export = crate::rules::rated_export(site, minutes).0;
    let export = reading.deltas.grid_export.0;
    if export > max_export {
        return Some(Reason::new(
            ReasonCode::ImplausibleExport,
            format!(
                "exported {export} Wh in {minutes} min, but the registered inverter ({} W) and battery ({} W) can deliver at most {max_export} Wh",
                site.inverter_w, site.battery_w
            ),
        ));
    }
    let pv = reading.deltas.pv.0;
    let pv_tolerance = ((i64::from(site.inverter_w) * minutes / 60) / 100).max(1);
    if pv > pv_tolerance {
        let lat = f64::from(site.latitude_microdeg) / 1e6;
        let lon = f64::from(site.longitude_microdeg) / 1e6;
        let i = reading.interval;
        let highest = [i.start(), i.start() + (i.end() - i.start()) / 2, i.end()]
            .into_iter()
            .map(|t| solar_elevation_deg(t, lat, lon))
            .fold(f64::MIN, f64::max);
        if highest < -2.0 {
            return Some(Reason::new(
                ReasonCode::PvAtNight,
                format!(
                    "reported {pv} Wh of PV while the sun was at most {highest:.1}° above the horizon at the site ({lat:.3}, {lon:.3})"
                ),
            ));
        }
    }
    None
}

/// Solar elevation in degrees at `t` for a site, by the NOAA general solar position
/// approximation (accurate to a fraction of a degree, plenty for a night test).
pub fn solar_elevation_deg(t: DateTime<Utc>, lat_deg: f64, lon_deg: f64) -> f64 {
    use std::f64::consts::PI;
    let day = f64::from(t.ordinal());
    let hour = f64::from(t.hour()) + f64::from(t.minute()) / 60.0 + f64::from(t.second()) / 3600.0;
    let g = 2.0 * PI / 365.0 * (day - 1.0 + (hour - 12.0) / 24.0);
    let eqtime = 229.18
        * (0.000075 + 0.001868 * g.cos()
            - 0.032077 * g.sin()
            - 0.014615 * (2.0 * g).cos()
            - 0.040849 * (2.0 * g).sin());
    let decl = 0.006918 - 0.399912 * g.cos() + 0.070257 * g.sin() - 0.006758 * (2.0 * g).cos()
        + 0.000907 * (2.0 * g).sin()
        - 0.002697 * (3.0 * g).cos()
        + 0.00148 * (3.0 * g).sin();
    let true_solar_minutes = hour * 60.0 + eqtime + 4.0 * lon_deg;
    let hour_angle = (true_solar_minutes / 4.0 - 180.0).to_radians();
    let lat = lat_deg.to_radians();
    let cos_zenith = lat.sin() * decl.sin() + lat.cos() * decl.cos() * hour_angle.cos();
    90.0 - cos_zenith.clamp(-1.0, 1.0).acos().to_degrees()
}

/// Histories of all gateways plus the digests of stored readings by idempotency key.
#[derive(Debug, Default)]
pub struct ChainState {
    /// Per-gateway histories.
    pub gateways: HashMap<GatewayId, GatewayHistory>,
    /// Payload digest per stored idempotency key.
    pub digests: HashMap<String, [u8; 32]>,
}

impl ChainState {
    /// Records a stored reading.
    pub fn record(&mut self, reading: &Reading, digest: [u8; 32]) {
        self.digests.insert(reading.idempotency_key(), digest);
        self.gateways
            .entry(reading.gateway.clone())
            .or_default()
            .record(
                reading.interval.start_unix(),
                reading.device.clone(),
                ChainPoint {
                    sequence: reading.sequence,
                    registers: reading.registers,
                    flags: reading.flags,
                },
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use gridmesh_protocol::example::{example_key, example_reading};

    /// Regression (issue 16): the audit's signature check used plain `verify_batch`, which
    /// accepts a non-canonical encoding of the identity as `R` (`sB = kA` then holds exactly).
    #[test]
    fn the_audit_refuses_a_non_canonical_r_that_plain_batch_verification_accepts() {
        use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        let a = Scalar::from_bytes_mod_order([42; 32]);
        let public = EdwardsPoint::mul_base(&a).compress().0;
        // y = p + 1: the identity, encoded non-canonically.
        let mut r = [0xff; 32];
        r[0] = 0xee;
        r[31] = 0x7f;
        assert_eq!(
            CompressedEdwardsY(r).decompress(),
            Some(EdwardsPoint::default())
        );
        let message = b"gridmesh audit".as_slice();
        let mut h = Sha512::new();
        h.update(r);
        h.update(public);
        h.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(&(k * a).to_bytes());
        let forged = SignedEnvelope {
            payload: message.to_vec(),
            signature,
            public_key: gridmesh_protocol::signing::PublicKey(public),
        };
        assert!(
            gridmesh_protocol::signing::verify_batch(&[&forged]).is_ok(),
            "the vector fools plain batch verification"
        );
        let good = SignedEnvelope::sign(&example_reading(), &example_key());
        assert_eq!(
            verify_signatures(&[&good, &forged, &good]),
            vec![true, false, true]
        );
    }

    /// The example reading (gw-h001, zone `demo`, 12:00–12:15 UTC, 812 Wh export at noon in
    /// Berlin) checked by a settlement of `zone`, one minute after the interval's end.
    fn verdict(reading: &Reading, zone: Option<&str>) -> Verdict {
        let key = example_key();
        let envelope = SignedEnvelope::sign(reading, &key);
        let decoded = decode(&envelope).unwrap();
        assert_eq!(&decoded, reading);
        let enrollment = GatewayEnrollment {
            gateway: reading.gateway.clone(),
            participant: gridmesh_protocol::ParticipantId::new("h001").unwrap(),
            node: gridmesh_protocol::NodeId::new("f1").unwrap(),
            public_key: key.public_key(),
            inverter_w: 10_000,
            battery_w: 5_000,
            latitude_microdeg: 52_520_000,
            longitude_microdeg: 13_400_000,
        };
        let ctx = Context {
            enrollment: &enrollment,
            history: None,
            stored_digest: None,
            interval_settled: false,
            now: reading.interval.end() + chrono::Duration::minutes(1),
            limits: Limits {
                horizon: chrono::Duration::days(2),
                max_clock_skew: chrono::Duration::seconds(60),
                zone: zone.map(|z| ZoneId::new(z).unwrap()),
            },
        };
        check(&envelope, &decoded, envelope.verify().is_ok(), &ctx)
    }

    fn code(v: &Verdict) -> Option<ReasonCode> {
        match v {
            Verdict::Flag(r) | Verdict::Late(r) | Verdict::Reject(r) => Some(r.code),
            Verdict::Accept | Verdict::Duplicate => None,
        }
    }

    /// Issue 14, item 7: a reading signed for zone `demo` counts in `demo` only; settlement of
    /// another zone refuses it, naming both zones.
    #[test]
    fn a_reading_for_another_zone_is_refused() {
        let reading = example_reading();
        assert_eq!(verdict(&reading, Some("demo")), Verdict::Accept);
        let other = verdict(&reading, Some("north"));
        assert_eq!(code(&other), Some(ReasonCode::WrongZone));
        let Verdict::Reject(reason) = other else {
            panic!("{other:?}")
        };
        assert!(
            reason.message.contains("`demo`") && reason.message.contains("`north`"),
            "{}",
            reason.message
        );
        // Without a zone configured (one zone per deployment), any v2 reading is checked as
        // before.
        assert_eq!(verdict(&reading, None), Verdict::Accept);
    }

    /// A legacy v1 reading (no zone) is accepted as before where no zone is configured, and
    /// held flagged where one is: stored, never lost, no money until an operator accepts it.
    #[test]
    fn a_v1_reading_is_flagged_where_a_zone_is_configured() {
        let v1 = Reading {
            zone: None,
            ..example_reading()
        };
        assert_eq!(verdict(&v1, None), Verdict::Accept);
        let held = verdict(&v1, Some("demo"));
        assert_eq!(code(&held), Some(ReasonCode::UnzonedReading));
        assert!(matches!(held, Verdict::Flag(_)), "{held:?}");
        assert!(ReasonCode::UnzonedReading.operator_acceptable());
        assert!(!ReasonCode::WrongZone.operator_acceptable());
    }

    #[test]
    fn solar_elevation_day_and_night() {
        // Berlin at the June solstice: high at noon, well below the horizon at midnight.
        let noon = Utc.with_ymd_and_hms(2026, 6, 21, 11, 0, 0).unwrap();
        let night = Utc.with_ymd_and_hms(2026, 6, 21, 23, 0, 0).unwrap();
        let e_noon = solar_elevation_deg(noon, 52.52, 13.40);
        let e_night = solar_elevation_deg(night, 52.52, 13.40);
        assert!((55.0..65.0).contains(&e_noon), "{e_noon}");
        assert!(e_night < -10.0, "{e_night}");
    }
}
