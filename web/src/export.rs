//! CSV exports (intervals, statements, congestion incidents, ledger entries) for a chosen
//! range, and the ledger's paging and search.
//!
//! The CSV builders are pure functions over what the dashboard holds ([`intervals_csv`],
//! [`statements_csv`], [`incidents_csv`], [`ledger_csv`]); the routes pick the rows the caller
//! may see (a household: only its own statements). Ranges are half-open `[from, to)` on the
//! interval's start. Text cells that a spreadsheet would take for a formula (`=`, `+`, `-`, `@`)
//! are prefixed with `'`.

use crate::incidents::Incident;
use chrono::{DateTime, NaiveDate, Utc};
use gridmesh_protocol::Interval;
use gridmesh_protocol::api::settlement::{BlockSummary, Statement};
use gridmesh_protocol::market::IntervalResult;

/// A chosen range of interval starts, `[from, to)`; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// First start included.
    pub from: Option<DateTime<Utc>>,
    /// First start excluded.
    pub to: Option<DateTime<Utc>>,
}

impl Range {
    /// Parses `from`/`to` given as RFC 3339 times or `YYYY-MM-DD` dates (midnight UTC).
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, String> {
        let one = |name: &str, v: Option<&str>| -> Result<Option<DateTime<Utc>>, String> {
            let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            if let Ok(t) = DateTime::parse_from_rfc3339(v) {
                return Ok(Some(t.with_timezone(&Utc)));
            }
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| Some(d.and_utc()))
                .ok_or_else(|| {
                    format!("`{name}={v}` is neither a date (2026-06-21) nor an RFC 3339 time (2026-06-21T12:00:00Z)")
                })
        };
        let range = Range {
            from: one("from", from)?,
            to: one("to", to)?,
        };
        if let (Some(f), Some(t)) = (range.from, range.to) {
            if t <= f {
                return Err(format!(
                    "the range ends ({t}) before it starts ({f}); swap from and to"
                ));
            }
        }
        Ok(range)
    }

    /// Whether an interval starting at `start` lies in the range.
    pub fn contains(&self, start: DateTime<Utc>) -> bool {
        self.from.is_none_or(|f| start >= f) && self.to.is_none_or(|t| start < t)
    }

    fn contains_key(&self, key: Option<&str>) -> bool {
        match key.and_then(|k| Interval::from_key(k).ok()) {
            Some(i) => self.contains(i.start()),
            None => self.from.is_none() && self.to.is_none(),
        }
    }
}

/// Quotes one CSV cell (RFC 4180), defusing formulas in text.
pub fn cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn row(out: &mut String, cells: &[String]) {
    out.push_str(&cells.join(","));
    out.push_str("\r\n");
}

/// Cleared intervals: start, minutes, node prices (c/kWh ×1000 as integers per MWh), volumes.
pub fn intervals_csv(results: &[IntervalResult], range: Range) -> String {
    let mut out = String::new();
    row(
        &mut out,
        &[
            "interval_start",
            "minutes",
            "trades",
            "traded_wh",
            "utility_import_wh",
            "utility_export_wh",
            "prices_per_mwh_minor",
        ]
        .map(String::from),
    );
    for r in results
        .iter()
        .filter(|r| range.contains(r.interval.start()))
    {
        let traded: i64 = r
            .trades
            .iter()
            .map(|t| t.energy.0)
            .fold(0, i64::saturating_add);
        let prices: Vec<String> = r
            .prices
            .iter()
            .map(|(n, p)| format!("{n}={}", p.0))
            .collect();
        row(
            &mut out,
            &[
                r.interval.start().to_rfc3339(),
                r.interval.length().minutes().to_string(),
                r.trades.len().to_string(),
                traded.to_string(),
                r.utility_import.0.to_string(),
                r.utility_export.0.to_string(),
                cell(&prices.join(" ")),
            ],
        );
    }
    out
}

/// Settlement statements (money in minor units).
pub fn statements_csv<'a>(statements: impl Iterator<Item = &'a Statement>, range: Range) -> String {
    let mut out = String::new();
    row(
        &mut out,
        &[
            "participant",
            "interval",
            "sold_wh",
            "bought_wh",
            "exported_wh",
            "imported_wh",
            "delivered_wh",
            "consumed_wh",
            "tokens_wh",
            "estimated",
            "net_minor",
        ]
        .map(String::from),
    );
    for s in statements.filter(|s| range.contains_key(Some(&s.interval))) {
        row(
            &mut out,
            &[
                cell(s.participant.as_str()),
                cell(&s.interval),
                s.sold.0.to_string(),
                s.bought.0.to_string(),
                s.exported.0.to_string(),
                s.imported.0.to_string(),
                s.delivered.0.to_string(),
                s.consumed.0.to_string(),
                s.tokens.0.to_string(),
                s.estimated.to_string(),
                s.net.0.to_string(),
            ],
        );
    }
    out
}

/// Congestion incidents whose intervals overlap the range.
pub fn incidents_csv(incidents: &[Incident], range: Range) -> String {
    let mut out = String::new();
    row(
        &mut out,
        &[
            "id",
            "subject",
            "severity",
            "state",
            "first_interval",
            "last_interval",
            "intervals",
            "acknowledged_by",
            "acknowledged_at",
            "message",
        ]
        .map(String::from),
    );
    for i in incidents.iter().filter(|i| i.kind == "congestion") {
        let first = i
            .first_interval
            .as_deref()
            .and_then(|k| Interval::from_key(k).ok());
        let last = i
            .last_interval
            .as_deref()
            .and_then(|k| Interval::from_key(k).ok());
        let overlaps = match (first, last) {
            (Some(f), Some(l)) => {
                range.to.is_none_or(|t| f.start() < t)
                    && range.from.is_none_or(|fr| l.start() >= fr)
            }
            _ => true,
        };
        if !overlaps {
            continue;
        }
        row(
            &mut out,
            &[
                cell(&i.id),
                cell(&i.subject),
                cell(&i.severity),
                cell(&i.state),
                cell(i.first_interval.as_deref().unwrap_or("")),
                cell(i.last_interval.as_deref().unwrap_or("")),
                i.alerts.to_string(),
                cell(i.acknowledged_by.as_deref().unwrap_or("")),
                i.acknowledged_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
                cell(&i.message),
            ],
        );
    }
    out
}

/// Ledger entries by block: one row per entry hash.
pub fn ledger_csv(blocks: &[BlockSummary], range: Range) -> String {
    let mut out = String::new();
    row(
        &mut out,
        &[
            "block_height",
            "interval",
            "sealed_at",
            "block_hash",
            "position",
            "entry_hash",
        ]
        .map(String::from),
    );
    let mut blocks: Vec<&BlockSummary> = blocks
        .iter()
        .filter(|b| range.contains_key(Some(&b.header.interval)))
        .collect();
    blocks.sort_by_key(|b| b.header.height);
    for b in blocks {
        for (i, e) in b.entries.iter().enumerate() {
            row(
                &mut out,
                &[
                    b.header.height.to_string(),
                    cell(&b.header.interval),
                    b.header.sealed_at.to_rfc3339(),
                    cell(&b.hash),
                    i.to_string(),
                    cell(e),
                ],
            );
        }
    }
    out
}

/// What a ledger search text names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerQuery {
    /// A block height.
    Height(u64),
    /// An entry (or block) hash, 64 hex characters.
    Hash(String),
    /// A participant id.
    Participant(String),
}

/// Reads a search text: digits = height, 64 hex = hash, else a participant id.
pub fn ledger_query(q: &str) -> Result<LedgerQuery, String> {
    let q = q.trim();
    if q.is_empty() {
        return Err("type a block height, an entry hash or a participant id".into());
    }
    if let Ok(h) = q.parse::<u64>() {
        return Ok(LedgerQuery::Height(h));
    }
    if q.len() == 64 && q.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(LedgerQuery::Hash(q.to_ascii_lowercase()));
    }
    if q.len() <= 64
        && q.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Ok(LedgerQuery::Participant(q.to_owned()));
    }
    Err(format!(
        "`{q}` is not a block height, a 64-hex-character hash or a participant id"
    ))
}
