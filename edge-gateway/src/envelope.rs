//! Operating envelopes at the gateway: intake of the market's signed envelopes (MQTT retained
//! topic and HTTP polling), verification with the pinned market key, and the envelope in force.
//!
//! An envelope is acted on only when it verifies with `market_public_key`
//! (`SignedEnvelope::open_by::<OperatingEnvelope>`), names this gateway and has the configured
//! interval length; anything else is refused with its reason, logged and counted
//! (`gridmesh_gateway_envelopes_refused_total`) and never applied. Verified envelopes are kept
//! for current and future intervals; ended ones are dropped.
//!
//! The envelope in force ([`EnvelopeBook::in_force`], pure) is the verified envelope whose
//! interval contains "now"; otherwise the *default envelope* of `[control]` applies, as the
//! default DER control of IEEE 2030.5 CSIP-AUS does. So when the market stops, the default is
//! in force from the first poll after the last envelope's interval ends.

use crate::config::GatewayConfig;
use crate::status::Status;
use chrono::{DateTime, Utc};
use gridmesh_protocol::envelope::{EnvelopeSource, OperatingEnvelope};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::signing::{PublicKey, SignedEnvelope, SigningError};
use gridmesh_protocol::{GatewayId, Interval, IntervalLength, Wh, topics};
use gridmesh_runtime::clock::Clock;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most envelopes held (current and future intervals).
const MAX_HELD: usize = 16;
/// Refused envelopes remembered (by digest) so one served again is not logged again.
const REMEMBER_REFUSED: usize = 64;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The payload does not parse as a signed envelope at all.
    #[error("not a signed envelope: {0}")]
    Malformed(String),
    /// The signature does not verify, or another key signed it, or the payload is not an
    /// operating envelope.
    #[error("{0}")]
    Signature(#[from] SigningError),
    /// It is another gateway's envelope.
    #[error("the envelope is for gateway {named}, not this gateway ({own})")]
    WrongGateway {
        /// The gateway it names.
        named: GatewayId,
        /// This gateway.
        own: GatewayId,
    },
    /// Its interval length differs from the configured one.
    #[error(
        "the envelope is for {found}-minute intervals but this gateway meters {expected}-minute intervals; set interval_minutes to the market's"
    )]
    WrongLength {
        /// The configured length, minutes.
        expected: u16,
        /// The envelope's, minutes.
        found: u16,
    },
}

/// Verifies a signed envelope with the pinned market key and checks it is this gateway's.
pub fn verify(
    signed: &SignedEnvelope,
    market_key: &PublicKey,
    gateway: &GatewayId,
    length: IntervalLength,
) -> Result<OperatingEnvelope, Refusal> {
    let envelope: OperatingEnvelope = signed.open_by(market_key)?;
    if &envelope.gateway != gateway {
        return Err(Refusal::WrongGateway {
            named: envelope.gateway,
            own: gateway.clone(),
        });
    }
    if envelope.interval.length() != length {
        return Err(Refusal::WrongLength {
            expected: length.minutes(),
            found: envelope.interval.length().minutes(),
        });
    }
    Ok(envelope)
}

/// The default envelope (`[control] default_export_w`, `default_import_w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultEnvelope {
    /// Export limit, W averaged over the interval.
    pub export_w: u32,
    /// Import limit, W averaged over the interval.
    pub import_w: u32,
}

impl DefaultEnvelope {
    /// The default envelope of a config.
    pub fn of(config: &GatewayConfig) -> Self {
        DefaultEnvelope {
            export_w: config.control.default_export_w,
            import_w: config.control.default_import_w,
        }
    }

    /// The limits for `interval`, Wh (W × seconds / 3600, rounded down).
    pub fn limits(&self, interval: &Interval) -> (Wh, Wh) {
        let s = interval.length().seconds();
        (
            Wh(i64::from(self.export_w) * s / 3600),
            Wh(i64::from(self.import_w) * s / 3600),
        )
    }
}

/// The envelope the controller enforces in one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    /// The interval.
    pub interval: Interval,
    /// A market envelope or the default.
    pub source: EnvelopeSource,
    /// Most energy to export in the interval.
    pub export_limit: Wh,
    /// Most energy to import in the interval.
    pub import_limit: Wh,
}

/// What happened to an offered envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Verified and stored (new, or a newer issue for its interval).
    Accepted(Box<OperatingEnvelope>),
    /// Already held (same bytes, or an older issue than the one held).
    Known,
    /// Verified, but its interval has ended.
    Ended,
    /// Refused (first time these bytes were seen).
    Refused(Refusal),
    /// Refused before; not logged or counted again.
    RefusedAgain,
}

/// The verified envelopes held, by interval start.
#[derive(Debug, Default)]
pub struct EnvelopeBook {
    held: BTreeMap<i64, (OperatingEnvelope, [u8; 32])>,
    refused: VecDeque<[u8; 32]>,
    latest: Option<OperatingEnvelope>,
}

impl EnvelopeBook {
    /// Offers an envelope at `now`: verifies it (unless these exact bytes are known) and keeps
    /// it if its interval has not ended. Of two envelopes for one interval the later issue wins.
    pub fn offer(
        &mut self,
        signed: &SignedEnvelope,
        market_key: &PublicKey,
        gateway: &GatewayId,
        length: IntervalLength,
        now: DateTime<Utc>,
    ) -> Offer {
        let digest = signed.digest();
        if self.held.values().any(|(_, d)| *d == digest) {
            return Offer::Known;
        }
        if self.refused.contains(&digest) {
            return Offer::RefusedAgain;
        }
        let envelope = match verify(signed, market_key, gateway, length) {
            Ok(e) => e,
            Err(refusal) => {
                if self.refused.len() == REMEMBER_REFUSED {
                    self.refused.pop_front();
                }
                self.refused.push_back(digest);
                return Offer::Refused(refusal);
            }
        };
        if self
            .latest
            .as_ref()
            .is_none_or(|l| envelope.interval.start() >= l.interval.start())
        {
            self.latest = Some(envelope.clone());
        }
        if envelope.interval.end() <= now {
            return Offer::Ended;
        }
        let start = envelope.interval.start_unix();
        if let Some((held, _)) = self.held.get(&start)
            && held.issued_at > envelope.issued_at
        {
            return Offer::Known;
        }
        self.held.insert(start, (envelope.clone(), digest));
        while self.held.len() > MAX_HELD {
            // Keep the nearest intervals.
            let last = *self.held.keys().next_back().expect("not empty");
            self.held.remove(&last);
        }
        Offer::Accepted(Box::new(envelope))
    }

    /// Drops envelopes whose interval has ended.
    pub fn drop_ended(&mut self, now: DateTime<Utc>) {
        self.held.retain(|_, (e, _)| e.interval.end() > now);
    }

    /// The verified envelope for `interval`, if held.
    pub fn for_interval(&self, interval: &Interval) -> Option<&OperatingEnvelope> {
        self.held
            .get(&interval.start_unix())
            .map(|(e, _)| e)
            .filter(|e| e.interval == *interval)
    }

    /// The latest verified market envelope ever received (by interval), even if ended.
    pub fn latest(&self) -> Option<&OperatingEnvelope> {
        self.latest.as_ref()
    }

    /// Envelopes held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The envelope in force at `now`: the verified one whose interval contains `now`, else
    /// the default for the interval of `length` containing `now`.
    pub fn in_force(
        &self,
        now: DateTime<Utc>,
        length: IntervalLength,
        default: &DefaultEnvelope,
    ) -> InForce {
        if let Some((e, _)) = self.held.values().find(|(e, _)| e.interval.contains(now)) {
            return InForce {
                interval: e.interval,
                source: EnvelopeSource::Market,
                export_limit: e.export_limit,
                import_limit: e.import_limit,
            };
        }
        let interval = Interval::containing(now, length);
        let (export_limit, import_limit) = default.limits(&interval);
        InForce {
            interval,
            source: EnvelopeSource::Default,
            export_limit,
            import_limit,
        }
    }

    /// The most the agent may offer to sell for `target`: the export limit of the envelope
    /// held for `target` if any, else of the latest market envelope, else of the default.
    pub fn export_cap(&self, target: &Interval, default: &DefaultEnvelope) -> Wh {
        if let Some(e) = self.for_interval(target) {
            return e.export_limit;
        }
        if let Some(e) = &self.latest {
            let from = e.interval.length().seconds().max(1);
            return Wh(e.export_limit.0.saturating_mul(target.length().seconds()) / from);
        }
        default.limits(target).0
    }
}

/// The gateway's envelope intake: the book plus the key, identity, logging and counters.
#[derive(Debug)]
pub struct Intake {
    key: Option<PublicKey>,
    gateway: GatewayId,
    length: IntervalLength,
    default: DefaultEnvelope,
    book: Mutex<EnvelopeBook>,
    status: Arc<Status>,
}

impl Intake {
    /// An intake for `config`; logs once when no market key is configured.
    pub fn new(config: &GatewayConfig, status: Arc<Status>) -> Self {
        if config.market_public_key.is_none() {
            tracing::warn!(
                "market_public_key is not set: operating envelopes cannot be verified, so the default envelope ({} W export, {} W import) applies. Run `edge-gateway enroll` or paste the key from GET {{market_url}}/market-key",
                config.control.default_export_w,
                config.control.default_import_w
            );
        }
        status.update(|s| s.market_key_set = config.market_public_key.is_some());
        Intake {
            key: config.market_public_key,
            gateway: config.gateway_id.clone(),
            length: config.interval_length(),
            default: DefaultEnvelope::of(config),
            book: Mutex::new(EnvelopeBook::default()),
            status,
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, EnvelopeBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether envelopes can be verified (a market key is configured).
    pub fn can_verify(&self) -> bool {
        self.key.is_some()
    }

    /// Offers one signed envelope received from `source` (for logs: `mqtt`, `http`).
    pub fn offer(&self, signed: &SignedEnvelope, source: &str, now: DateTime<Utc>) -> Offer {
        let Some(key) = &self.key else {
            return Offer::RefusedAgain;
        };
        let offer = {
            let mut book = self.book();
            book.drop_ended(now);
            book.offer(signed, key, &self.gateway, self.length, now)
        };
        self.record(&offer, source);
        offer
    }

    /// Offers a JSON payload (the MQTT topic's); an empty payload (a cleared retained
    /// message) is ignored.
    pub fn offer_json(&self, payload: &[u8], source: &str, now: DateTime<Utc>) -> Option<Offer> {
        if payload.is_empty() || self.key.is_none() {
            return None;
        }
        match serde_json::from_slice::<SignedEnvelope>(payload) {
            Ok(signed) => Some(self.offer(&signed, source, now)),
            Err(e) => {
                let offer = Offer::Refused(Refusal::Malformed(e.to_string()));
                self.record(&offer, source);
                Some(offer)
            }
        }
    }

    fn record(&self, offer: &Offer, source: &str) {
        match offer {
            Offer::Accepted(e) => {
                tracing::info!(
                    source,
                    interval = %e.interval,
                    export_limit_wh = e.export_limit.0,
                    import_limit_wh = e.import_limit.0,
                    "operating envelope accepted"
                );
                self.status.update(|s| s.envelopes_accepted += 1);
            }
            Offer::Refused(reason) => {
                tracing::warn!(source, %reason, "operating envelope refused; it is not applied");
                self.status.update(|s| {
                    s.envelopes_refused += 1;
                    s.last_envelope_refusal = Some(reason.to_string());
                });
            }
            Offer::Ended => tracing::debug!(source, "envelope for an ended interval ignored"),
            Offer::Known | Offer::RefusedAgain => {}
        }
    }

    /// The envelope in force at `now`.
    pub fn in_force(&self, now: DateTime<Utc>) -> InForce {
        let mut book = self.book();
        book.drop_ended(now);
        book.in_force(now, self.length, &self.default)
    }

    /// The agent's cap on sell quantities for `target` (see [`EnvelopeBook::export_cap`]).
    pub fn export_cap(&self, target: &Interval) -> Wh {
        self.book().export_cap(target, &self.default)
    }
}

/// How often the market is asked for envelopes: every poll, but at most once a second and at
/// least every five.
pub fn http_period(poll_ms: u64) -> Duration {
    Duration::from_millis(poll_ms.clamp(1_000, 5_000))
}

/// Polls `GET {market}/envelopes/{gateway}` (a JSON array of signed envelopes) until
/// `cancel`, offering each to `intake`. Every request is signed with the gateway's `key`
/// (`Authorization: GridmeshGateway …`, [`signed_get`]): the market serves a gateway's
/// envelopes only to that gateway, its household, the auditor and the operator. Failures are
/// logged when the state changes.
pub async fn poll_market(
    intake: Arc<Intake>,
    http: reqwest::Client,
    market: String,
    key: SigningKeyPair,
    clock: Clock,
    period: Duration,
    cancel: CancellationToken,
) {
    let url = format!(
        "{}/envelopes/{}",
        market.trim_end_matches('/'),
        intake.gateway
    );
    let mut failing: Option<String> = None;
    loop {
        let outcome = fetch(signed_get(&http, &url, &intake.gateway, &key)).await;
        match outcome {
            Ok(list) => {
                if failing.take().is_some() {
                    tracing::info!(%url, "the market serves envelopes again");
                }
                let now = clock.now();
                for signed in &list {
                    intake.offer(signed, "http", now);
                }
            }
            Err(problem) => {
                if failing.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(%url, %problem, "cannot fetch operating envelopes; the default envelope applies once the held ones end");
                    failing = Some(problem);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// A `GET url` signed by `gateway` with its `key`, now (wall clock: the market judges a
/// proof's freshness by its own wall clock, not the possibly accelerated market clock). The
/// proof covers the URL's path and query exactly as sent.
pub fn signed_get(
    http: &reqwest::Client,
    url: &str,
    gateway: &GatewayId,
    key: &SigningKeyPair,
) -> reqwest::RequestBuilder {
    let authorization = gridmesh_protocol::request::gateway_authorization(
        gateway,
        key,
        chrono::Utc::now().timestamp(),
        "GET",
        &path_and_query(url),
        b"",
    );
    http.get(url)
        .header(reqwest::header::AUTHORIZATION, authorization)
}

/// A `GET` of `url` signed as the household `participant` (`Authorization: Gridmesh …`,
/// gridmesh/request/v1): settlement serves a household its own statements, tokens and
/// quarantined readings on it. The gateway's key is the household's key as `enroll` registers
/// it.
pub fn participant_signed_get(
    http: &reqwest::Client,
    url: &str,
    participant: &gridmesh_protocol::ParticipantId,
    key: &SigningKeyPair,
) -> reqwest::RequestBuilder {
    let authorization = gridmesh_protocol::request::authorization(
        participant,
        key,
        chrono::Utc::now().timestamp(),
        "GET",
        &path_and_query(url),
        b"",
    );
    http.get(url)
        .header(reqwest::header::AUTHORIZATION, authorization)
}

/// The path and query a signed request covers.
fn path_and_query(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        },
        // An unparsable URL fails in `send` with its own error.
        Err(_) => String::new(),
    }
}

async fn fetch(request: reqwest::RequestBuilder) -> Result<Vec<SignedEnvelope>, String> {
    let response = request
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("the market is unreachable: {e}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        let body = response.text().await.unwrap_or_default();
        return Err(format!(
            "the market answered 404 ({body}); is this gateway enrolled (`edge-gateway enroll`)?"
        ));
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let body = response.text().await.unwrap_or_default();
        return Err(format!(
            "the market refused this gateway's signed request with {status} ({body}); is the gateway enrolled with this key, and is the clock within 5 minutes of the market's?"
        ));
    }
    if !status.is_success() {
        return Err(format!("the market answered {status}"));
    }
    response
        .json::<Vec<SignedEnvelope>>()
        .await
        .map_err(|e| format!("the market's answer is not a list of signed envelopes: {e}"))
}

/// The MQTT topic this gateway's envelopes arrive on.
pub fn topic(config: &GatewayConfig) -> String {
    topics::envelope(&config.gateway_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use gridmesh_protocol::envelope::EnvelopeBasis;
    use gridmesh_protocol::keys::SigningKeyPair;
    use gridmesh_protocol::{NodeId, ParticipantId};

    fn length() -> IntervalLength {
        IntervalLength::from_minutes(15).unwrap()
    }

    fn envelope(gateway: &str, start: &str, export: i64, issued: i64) -> OperatingEnvelope {
        OperatingEnvelope {
            zone: "demo".into(),
            gateway: GatewayId::new(gateway).unwrap(),
            participant: ParticipantId::new("h1").unwrap(),
            node: NodeId::new("f1").unwrap(),
            interval: Interval::parse(start, 15).unwrap(),
            export_limit: Wh(export),
            import_limit: Wh(2_000),
            basis: EnvelopeBasis::Cleared,
            result_digest: [0; 32],
            issued_at: Utc.timestamp_opt(issued, 0).single().unwrap(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    const DEFAULT: DefaultEnvelope = DefaultEnvelope {
        export_w: 1_500,
        import_w: 11_000,
    };

    #[test]
    fn only_this_gateways_envelopes_signed_by_the_market_are_held() {
        let market = SigningKeyPair::from_seed([1; 32]);
        let other = SigningKeyPair::from_seed([2; 32]);
        let gw = GatewayId::new("gw-1").unwrap();
        let now = at("2026-06-21T12:05:00Z");
        let mut book = EnvelopeBook::default();
        let good = SignedEnvelope::sign(&envelope("gw-1", "2026-06-21T12:00:00Z", 300, 1), &market);
        let key = market.public_key();
        assert!(matches!(
            book.offer(&good, &key, &gw, length(), now),
            Offer::Accepted(_)
        ));
        assert_eq!(book.offer(&good, &key, &gw, length(), now), Offer::Known);
        let forged = SignedEnvelope::sign(&envelope("gw-1", "2026-06-21T12:15:00Z", 9, 1), &other);
        assert!(matches!(
            book.offer(&forged, &key, &gw, length(), now),
            Offer::Refused(Refusal::Signature(SigningError::KeyMismatch { .. }))
        ));
        assert_eq!(
            book.offer(&forged, &key, &gw, length(), now),
            Offer::RefusedAgain
        );
        let mut flipped =
            SignedEnvelope::sign(&envelope("gw-1", "2026-06-21T12:15:00Z", 9, 1), &market);
        flipped.payload[160] ^= 0x04;
        assert!(matches!(
            book.offer(&flipped, &key, &gw, length(), now),
            Offer::Refused(Refusal::Signature(SigningError::BadSignature))
        ));
        let foreign =
            SignedEnvelope::sign(&envelope("gw-2", "2026-06-21T12:15:00Z", 9, 1), &market);
        assert!(matches!(
            book.offer(&foreign, &key, &gw, length(), now),
            Offer::Refused(Refusal::WrongGateway { .. })
        ));
        let ended = SignedEnvelope::sign(&envelope("gw-1", "2026-06-21T11:45:00Z", 9, 1), &market);
        assert_eq!(book.offer(&ended, &key, &gw, length(), now), Offer::Ended);
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn the_envelope_in_force_falls_back_to_the_default_when_its_interval_ends() {
        let market = SigningKeyPair::from_seed([1; 32]);
        let gw = GatewayId::new("gw-1").unwrap();
        let key = market.public_key();
        let mut book = EnvelopeBook::default();
        let e = SignedEnvelope::sign(&envelope("gw-1", "2026-06-21T12:00:00Z", 300, 1), &market);
        book.offer(&e, &key, &gw, length(), at("2026-06-21T11:50:00Z"));
        // Before its interval: the default (1500 W × 15 min = 375 Wh).
        let f = book.in_force(at("2026-06-21T11:59:59Z"), length(), &DEFAULT);
        assert_eq!(
            (f.source, f.export_limit, f.import_limit),
            (EnvelopeSource::Default, Wh(375), Wh(2_750))
        );
        let f = book.in_force(at("2026-06-21T12:00:00Z"), length(), &DEFAULT);
        assert_eq!(
            (f.source, f.export_limit),
            (EnvelopeSource::Market, Wh(300))
        );
        let f = book.in_force(at("2026-06-21T12:14:59Z"), length(), &DEFAULT);
        assert_eq!(f.source, EnvelopeSource::Market);
        let f = book.in_force(at("2026-06-21T12:15:00Z"), length(), &DEFAULT);
        assert_eq!(
            (f.source, f.interval.key()),
            (
                EnvelopeSource::Default,
                Interval::parse("2026-06-21T12:15:00Z", 15).unwrap().key()
            )
        );
        book.drop_ended(at("2026-06-21T12:15:00Z"));
        assert!(book.is_empty());
        // The agent still caps with the latest market envelope.
        let next = Interval::parse("2026-06-21T12:30:00Z", 15).unwrap();
        assert_eq!(book.export_cap(&next, &DEFAULT), Wh(300));
        assert_eq!(EnvelopeBook::default().export_cap(&next, &DEFAULT), Wh(375));
    }

    #[test]
    fn a_later_issue_replaces_an_earlier_one() {
        let market = SigningKeyPair::from_seed([1; 32]);
        let gw = GatewayId::new("gw-1").unwrap();
        let key = market.public_key();
        let now = at("2026-06-21T11:50:00Z");
        let mut book = EnvelopeBook::default();
        let first =
            SignedEnvelope::sign(&envelope("gw-1", "2026-06-21T12:00:00Z", 300, 10), &market);
        let second =
            SignedEnvelope::sign(&envelope("gw-1", "2026-06-21T12:00:00Z", 200, 20), &market);
        book.offer(&second, &key, &gw, length(), now);
        assert_eq!(book.offer(&first, &key, &gw, length(), now), Offer::Known);
        let interval = Interval::parse("2026-06-21T12:00:00Z", 15).unwrap();
        assert_eq!(book.for_interval(&interval).unwrap().export_limit, Wh(200));
    }

    #[test]
    fn a_signed_get_carries_the_gateways_proof_for_exactly_that_path() {
        let key = SigningKeyPair::from_seed([5; 32]);
        let gw = GatewayId::new("gw-1").unwrap();
        let http = reqwest::Client::new();
        let request = signed_get(
            &http,
            "https://m.example:8081/envelopes/gw-1?x=1",
            &gw,
            &key,
        )
        .build()
        .unwrap();
        let header = request.headers()["authorization"].to_str().unwrap();
        let signed = gridmesh_protocol::request::SignedGatewayRequest::parse(header).unwrap();
        assert_eq!(signed.gateway(), &gw);
        let now = chrono::Utc::now().timestamp();
        let public = key.public_key();
        signed
            .verify(&public, now, "GET", "/envelopes/gw-1?x=1", b"")
            .unwrap();
        assert!(
            signed
                .verify(&public, now, "GET", "/envelopes/gw-2?x=1", b"")
                .is_err()
        );
        let other = SigningKeyPair::from_seed([6; 32]).public_key();
        assert!(
            signed
                .verify(&other, now, "GET", "/envelopes/gw-1?x=1", b"")
                .is_err()
        );
    }
}
