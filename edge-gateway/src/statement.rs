//! `edge-gateway statement --month 2026-06`: the household's monthly statement from settlement
//! (`GET {settlement_url}/statements/monthly/{participant}/{month}`, fetched with this
//! gateway's signed request, [`crate::envelope::signed_get`]), printed for the homeowner and
//! checked against what this gateway itself signed.
//!
//! # The cross-check
//! Every reading the statement names is compared with the gateway's own records:
//! - still in the outbox (not yet acknowledged): the SHA-256 of the envelope it holds must be
//!   the statement's digest — an exact check;
//! - delivered: the outbox keeps no envelope after delivery, only the signed interval's energy
//!   (`signed_intervals`, about 60 days), so the statement's grid import and export for that
//!   reading must equal what the gateway signed — the digest itself cannot be recomputed;
//! - no local record (older than the gateway's history, another gateway of the household, or
//!   another outbox file): listed as not checked.
//!
//! A digest or energy that differs from the gateway's own record is a mismatch: the command
//! prints it and exits non-zero. Months are calendar months in UTC, as settlement makes them.

use crate::config::GatewayConfig;
use crate::outbox::Outbox;
use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::api::settlement::{MonthlyStatement, ReadingDigest, Statement};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::reading::Registers;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::{GatewayId, Money, PricePerMwh};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Why the statement could not be fetched or checked.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// The month is not `YYYY-MM`.
    #[error(
        "--month `{0}` is not a month: write it as YYYY-MM, for example 2026-06 (months are in UTC)"
    )]
    BadMonth(String),
    /// No settlement URL.
    #[error(
        "settlement_url is not set in the config: set it to settlement's REST address (for example http://192.168.1.10:8082)"
    )]
    NoSettlement,
    /// The key could not be loaded.
    #[error("cannot load the gateway's key: {0}")]
    Key(String),
    /// Settlement could not be reached.
    #[error("settlement at {url} is unreachable: {reason}; check settlement_url and the network")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// Settlement refused or failed.
    #[error("settlement answered {status}: {message}{advice}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Settlement's message.
        message: String,
        /// What to do.
        advice: &'static str,
    },
    /// The answer is not a monthly statement.
    #[error("settlement's answer is not a monthly statement: {0}")]
    BadAnswer(String),
    /// The outbox could not be read.
    #[error("cannot read the outbox at {path}: {reason}")]
    Outbox {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built (TLS settings).
    #[error("{0}")]
    Client(String),
}

/// Whether `month` is `YYYY-MM` with a month 01–12 (settlement checks it again).
pub fn valid_month(month: &str) -> bool {
    let b = month.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_digit())
        && matches!(month[5..].parse::<u8>(), Ok(1..=12))
}

/// The statement's URL for this gateway's household.
pub fn url(config: &GatewayConfig, month: &str) -> Result<String, StatementError> {
    let base = config
        .settlement_url
        .as_deref()
        .ok_or(StatementError::NoSettlement)?;
    Ok(format!(
        "{}/statements/monthly/{}/{month}",
        base.trim_end_matches('/'),
        config.participant
    ))
}

/// Fetches the month's statement with this gateway's signed request; `format` is `None` for
/// the JSON (parsed) or `csv` / `html` for settlement's rendering (returned as text).
pub async fn fetch(
    config: &GatewayConfig,
    month: &str,
    format: Option<&str>,
) -> Result<String, StatementError> {
    if !valid_month(month) {
        return Err(StatementError::BadMonth(month.to_owned()));
    }
    let mut url = url(config, month)?;
    if let Some(f) = format {
        url = format!("{url}?format={f}");
    }
    let key =
        SigningKeyPair::load(&config.key_path).map_err(|e| StatementError::Key(e.to_string()))?;
    let http = crate::gateway::configured_http_client(config)
        .map_err(|e| StatementError::Client(e.to_string()))?;
    let response = crate::envelope::signed_get(&http, &url, &config.gateway_id, &key)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| StatementError::Unreachable {
            url: url.clone(),
            reason: crate::tls::error_chain(&e),
        })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| StatementError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| body.chars().take(300).collect());
        let advice = match status.as_u16() {
            401 => {
                "; is this gateway enrolled with this key (`edge-gateway enroll`), and is the clock within 5 minutes of settlement's?"
            }
            403 => {
                "; the gateway is enrolled for another household than `participant` in the config"
            }
            404 => {
                "; is settlement_url settlement's address (not the market's), and is settlement up to date?"
            }
            _ => "",
        };
        return Err(StatementError::Refused {
            status: status.as_u16(),
            message,
            advice,
        });
    }
    Ok(body)
}

/// Parses settlement's JSON answer.
pub fn parse(body: &str) -> Result<MonthlyStatement, StatementError> {
    serde_json::from_str(body).map_err(|e| StatementError::BadAnswer(e.to_string()))
}

/// What the gateway's own records say about one reading of the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Still in the outbox, and its envelope's SHA-256 is the statement's digest.
    DigestMatches,
    /// Still in the outbox, with another digest: settlement holds a different reading.
    DigestDiffers {
        /// The digest of the envelope in the outbox.
        local: String,
    },
    /// Delivered: the energy this gateway signed for the interval is the statement's (the
    /// outbox keeps no envelope after delivery, so the digest itself is not recomputed).
    EnergyMatches,
    /// Delivered, with other energy than the statement's.
    EnergyDiffers {
        /// Grid import the gateway signed.
        imported: i64,
        /// Grid export the gateway signed.
        exported: i64,
    },
    /// No local record to compare with.
    NotChecked(&'static str),
}

impl Check {
    /// Whether this is a mismatch with the gateway's own records.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            Check::DigestDiffers { .. } | Check::EnergyDiffers { .. }
        )
    }
}

/// The gateway's own records: digests of the envelopes still in the outbox (by reading key)
/// and the energy of each signed interval (by interval start, Unix s).
#[derive(Debug, Clone, Default)]
pub struct LocalRecords {
    /// Reading key → SHA-256 (hex) of the signed envelope's payload.
    pub pending: BTreeMap<String, String>,
    /// Interval start → the deltas the gateway signed.
    pub signed: BTreeMap<i64, Registers>,
}

/// Reads the outbox at the config's path (nothing if there is none).
pub async fn local_records(config: &GatewayConfig) -> Result<LocalRecords, StatementError> {
    let path = &config.outbox_path;
    let mut records = LocalRecords::default();
    if !path.exists() {
        return Ok(records);
    }
    let fail = |e: crate::outbox::OutboxError| StatementError::Outbox {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let outbox = Outbox::open(path, config.outbox_cap_bytes)
        .await
        .map_err(fail)?;
    let pending = outbox.pending(i64::MAX).await.map_err(fail)?;
    // About 60 days are kept; every interval of them at 5 minutes is under 20 000.
    let history = outbox.history(100_000).await.map_err(fail)?;
    outbox.close().await;
    for p in pending {
        if let Ok(envelope) = serde_json::from_str::<SignedEnvelope>(&p.envelope) {
            records.pending.insert(p.key, envelope.digest_hex());
        }
    }
    for h in history {
        records.signed.insert(h.interval_start, h.deltas);
    }
    Ok(records)
}

/// Checks one reading of the statement against this gateway's records.
pub fn check(reading: &ReadingDigest, gateway: &GatewayId, local: &LocalRecords) -> Check {
    if reading.gateway != gateway.as_str() {
        return Check::NotChecked("signed by another gateway of the household");
    }
    if let Some(local) = local.pending.get(&reading.key) {
        return if *local == reading.digest {
            Check::DigestMatches
        } else {
            Check::DigestDiffers {
                local: local.clone(),
            }
        };
    }
    let start = reading
        .key
        .rsplit('/')
        .next()
        .and_then(|s| s.parse::<i64>().ok());
    match start.and_then(|s| local.signed.get(&s)) {
        Some(d) if d.grid_import == reading.imported && d.grid_export == reading.exported => {
            Check::EnergyMatches
        }
        Some(d) => Check::EnergyDiffers {
            imported: d.grid_import.0,
            exported: d.grid_export.0,
        },
        None => Check::NotChecked(
            "no local record: older than the outbox's history, or another outbox file",
        ),
    }
}

/// Every reading of the statement with its check, in statement order.
pub fn check_all<'a>(
    statement: &'a MonthlyStatement,
    gateway: &GatewayId,
    local: &LocalRecords,
) -> Vec<(&'a str, &'a ReadingDigest, Check)> {
    statement
        .intervals
        .iter()
        .flat_map(|i| {
            i.readings
                .iter()
                .map(move |r| (i.interval.as_str(), r, check(r, gateway, local)))
        })
        .collect()
}

fn money(m: Money) -> String {
    let sign = if m.0 < 0 { "-" } else { "" };
    let a = m.0.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn per_kwh(p: PricePerMwh) -> String {
    let sign = if p.0 < 0 { "-" } else { "" };
    let a = p.0.unsigned_abs();
    format!("{sign}{}.{:04}", a / 10_000, a % 10_000)
}

fn permille(p: Option<u32>) -> String {
    p.map_or_else(|| "none".to_owned(), |p| format!("{}.{} %", p / 10, p % 10))
}

/// The interval's flagged readings: held back, not paid, until an operator accepts them.
fn render_pending(o: &mut String, st: &Statement) {
    for p in &st.pending {
        let capped = if p.metered_exported != p.exported {
            format!(
                " (metered {} Wh, capped at the site's rating)",
                p.metered_exported.0
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "    pending review  reading {} ({}): export {} Wh{} / import {} Wh, not paid until the operator accepts it",
            p.reading.get(..16).unwrap_or(&p.reading),
            p.reason.map_or("flagged", |r| r.as_str()),
            p.exported.0,
            capped,
            p.imported.0
        );
    }
    if let Some(worth) = st.pending_worth {
        let _ = writeln!(o, "    pending worth   {:>10} if accepted", money(worth));
    }
}

/// The statement and its checks as text for a terminal (80 columns).
pub fn render(s: &MonthlyStatement, checks: &[(&str, &ReadingDigest, Check)]) -> String {
    let mut o = String::new();
    let t = &s.totals;
    let c = &s.community;
    let v = &s.savings;
    let _ = writeln!(
        o,
        "Monthly statement {} for {} ({} to {}, months in UTC)",
        s.month,
        s.participant,
        s.from.format("%Y-%m-%d %H:%M"),
        s.to.format("%Y-%m-%d %H:%M")
    );
    let _ = writeln!(
        o,
        "Money in currency units (minor units / 100), + = you receive; energy in Wh; prices per kWh in minor units.\n"
    );
    for i in &s.intervals {
        let st = &i.statement;
        let _ = writeln!(
            o,
            "{}{}  net {}  tokens {} Wh  import {} / export {} Wh  retail {} feed-in {}{}",
            i.interval,
            if st.estimated {
                " (estimated: no readings)"
            } else {
                ""
            },
            money(st.net),
            st.tokens.0,
            st.imported.0,
            st.exported.0,
            per_kwh(i.retail_price),
            per_kwh(i.feed_in_price),
            i.savings
                .map(|sv| format!("  saved {}", money(sv)))
                .unwrap_or_default()
        );
        for l in &st.lines {
            let _ = writeln!(
                o,
                "    {:<16} {:<14} {:>8} Wh @ {:>9} = {:>10}",
                l.kind,
                l.counterparty,
                l.energy.0,
                per_kwh(l.price),
                money(l.amount)
            );
        }
        render_pending(&mut o, st);
    }
    let _ = writeln!(
        o,
        "\nTotals over {} intervals ({} estimated)",
        t.intervals, t.estimated_intervals
    );
    let _ = writeln!(o, "  trades     {:>12}", money(t.trades));
    let _ = writeln!(o, "  imbalances {:>12}", money(t.imbalance));
    let _ = writeln!(o, "  fees       {:>12}", money(t.fees));
    let _ = writeln!(o, "  net        {:>12}", money(t.net));
    let _ = writeln!(
        o,
        "  sold {} Wh, bought {} Wh; exported {} Wh, imported {} Wh; tokens received {} Wh",
        t.sold.0, t.bought.0, t.exported.0, t.imported.0, t.tokens.0
    );
    let _ = writeln!(
        o,
        "Community: {} Wh from neighbours, {} Wh from the grid ({} of your import from neighbours); {} Wh to neighbours, {} Wh to the grid ({})",
        c.from_neighbours.0,
        c.from_grid.0,
        permille(c.import_share_permille),
        c.to_neighbours.0,
        c.to_grid.0,
        permille(c.export_share_permille)
    );
    let _ = writeln!(
        o,
        "Savings: {} with the market vs {} with the utility alone at the same tariffs = {} saved over {} intervals ({} estimated left out)",
        money(v.actual),
        money(v.baseline),
        money(v.savings),
        v.intervals,
        v.estimated_excluded
    );
    let count = |f: fn(&Check) -> bool| checks.iter().filter(|c| f(&c.2)).count();
    let _ = writeln!(
        o,
        "\nSigned readings: {} listed; {} digests match the outbox, {} delivered readings match the energy this gateway signed (digest not kept after delivery), {} not checked, {} MISMATCHED",
        checks.len(),
        count(|c| matches!(c, Check::DigestMatches)),
        count(|c| matches!(c, Check::EnergyMatches)),
        count(|c| matches!(c, Check::NotChecked(_))),
        count(Check::is_mismatch)
    );
    for (interval, r, c) in checks {
        let line = match c {
            Check::DigestMatches | Check::EnergyMatches => continue,
            Check::DigestDiffers { local } => format!(
                "MISMATCH: settlement has digest {} but this gateway's outbox holds {local}",
                r.digest
            ),
            Check::EnergyDiffers { imported, exported } => format!(
                "MISMATCH: settlement has import {} / export {} Wh but this gateway signed {imported} / {exported} Wh (digest {})",
                r.imported.0, r.exported.0, r.digest
            ),
            Check::NotChecked(why) => format!("not checked ({why}): digest {}", r.digest),
        };
        let _ = writeln!(o, "  {interval} {}: {line}", r.key);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::Wh;
    use gridmesh_protocol::api::settlement::StoredReadingStatus;

    fn listed(gateway: &str, start: i64, digest: &str, import: i64, export: i64) -> ReadingDigest {
        ReadingDigest {
            digest: digest.into(),
            key: format!("{gateway}/home/{start}"),
            gateway: gateway.into(),
            status: StoredReadingStatus::Accepted,
            imported: Wh(import),
            exported: Wh(export),
        }
    }

    #[test]
    fn months_are_yyyy_mm() {
        for good in ["2026-06", "2026-12", "2027-01"] {
            assert!(valid_month(good), "{good}");
        }
        for bad in [
            "2026-13",
            "2026-00",
            "2026-6",
            "June",
            "2026/06",
            "2026-06-01",
            "٢٠٢٦-06",
        ] {
            assert!(!valid_month(bad), "{bad}");
        }
    }

    #[test]
    fn each_reading_is_checked_against_what_the_gateway_kept() {
        let gw = GatewayId::new("gw").unwrap();
        let mut local = LocalRecords::default();
        local.pending.insert("gw/home/900".into(), "aa".into());
        local.signed.insert(
            0,
            Registers {
                grid_import: Wh(5),
                grid_export: Wh(7),
                ..Default::default()
            },
        );
        assert_eq!(
            check(&listed("gw", 900, "aa", 0, 0), &gw, &local),
            Check::DigestMatches
        );
        assert_eq!(
            check(&listed("gw", 900, "bb", 0, 0), &gw, &local),
            Check::DigestDiffers { local: "aa".into() }
        );
        assert_eq!(
            check(&listed("gw", 0, "cc", 5, 7), &gw, &local),
            Check::EnergyMatches
        );
        let differs = check(&listed("gw", 0, "cc", 5, 8), &gw, &local);
        assert_eq!(
            differs,
            Check::EnergyDiffers {
                imported: 5,
                exported: 7
            }
        );
        assert!(differs.is_mismatch());
        assert!(matches!(
            check(&listed("gw", 1800, "dd", 0, 0), &gw, &local),
            Check::NotChecked(_)
        ));
        assert!(matches!(
            check(&listed("other", 900, "aa", 0, 0), &gw, &local),
            Check::NotChecked("signed by another gateway of the household")
        ));
    }

    #[test]
    fn pending_readings_are_shown_unpaid_with_their_cap_and_worth() {
        use gridmesh_protocol::api::readings::ReasonCode;
        use gridmesh_protocol::api::settlement::PendingLine;
        use gridmesh_protocol::{ParticipantId, Wh};
        let st = Statement {
            participant: ParticipantId::new("h001").unwrap(),
            interval: "2026-06-21T12:00:00Z/15".into(),
            sold: Wh(0),
            bought: Wh(0),
            exported: Wh(0),
            imported: Wh(0),
            envelope_excess: Wh(0),
            delivered: Wh(0),
            consumed: Wh(0),
            tokens: Wh(0),
            estimated: true,
            lines: vec![],
            net: Money(0),
            pending: vec![PendingLine {
                reading: "ab".repeat(32),
                gateway: GatewayId::new("gw-h001").unwrap(),
                reason: Some(ReasonCode::ImplausibleExport),
                exported: Wh(3000),
                imported: Wh(0),
                metered_exported: Wh(1_000_000),
            }],
            pending_worth: Some(Money(350)),
        };
        let mut o = String::new();
        render_pending(&mut o, &st);
        assert!(
            o.contains("reading abababababababab (implausible_export): export 3000 Wh (metered 1000000 Wh, capped at the site's rating) / import 0 Wh, not paid until the operator accepts it"),
            "{o}"
        );
        assert!(
            o.contains("pending worth") && o.contains(&money(Money(350))),
            "{o}"
        );
    }
}
