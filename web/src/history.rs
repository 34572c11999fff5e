//! Operator history: per-branch and substation flows (measured and cleared against the limits),
//! clearing prices as interval steps and cleared volumes over a chosen range — the last 6 h,
//! 24 h, 7 d, or a custom `from`–`to` — as JSON (`GET /api/history`) and as SVG charts drawn at
//! the browser's width (`GET /charts/history/{flow,price,volume}.svg`).
//!
//! Intervals are compacted into [`Point`]s kept in a [`HistoryStore`] (fed from the snapshot
//! and, for older ranges, read once from the market's `/results` and settlement's `/flows`),
//! then **bucketed on the server** into at most [`MAX_BUCKETS`] buckets, so a 7-day range sends
//! and draws as little as a 6-hour one. Within a bucket a flow is the interval with the largest
//! magnitude (limits are per interval, so the peak is what matters against them), a limit the
//! tightest, a price the mean, a volume the sum. The measured flows are settlement's
//! (`MeasuredFlows`, from verified readings); the cleared flows are the market's plan.

use crate::auth::Session;
use crate::hub::Hub;
use crate::routes::ApiError;
use crate::upstream::{UpstreamError, encode_component};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{DateTime, Duration, Utc};
use gridmesh_protocol::envelope::MeasuredFlows;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_runtime::http::{ApiJson, ApiPath, ApiQuery};
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::RangedCoordi64;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The most buckets a range is cut into (a 24-hour range of 15-minute intervals is 96).
pub const MAX_BUCKETS: i64 = 96;
/// The longest custom range accepted.
pub const MAX_RANGE_DAYS: i64 = 31;
/// The most intervals kept in memory (31 days of 15-minute intervals, with room).
const MAX_POINTS: usize = 4000;
/// Bucket lengths a range may use, in minutes.
const NICE_MINUTES: [i64; 12] = [1, 5, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080];

/// One cleared (and perhaps measured) interval, compacted for history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Point {
    /// Interval start.
    pub start: DateTime<Utc>,
    /// Interval length in minutes.
    pub minutes: i64,
    /// Clearing price per node (minor units per MWh).
    pub prices: BTreeMap<String, i64>,
    /// Energy traded in the interval (Wh).
    pub traded_wh: i64,
    /// Of which between participants (Wh).
    pub local_wh: i64,
    /// Cleared flow (plan) and the import/export limits in force, per node (the root for the
    /// utility connection).
    pub cleared: BTreeMap<String, Cleared>,
    /// Measured flow per node (Wh; only nodes where a home below reported).
    pub measured: BTreeMap<String, i64>,
    /// Whether a clearing result is known (a point may hold only measured flows).
    pub has_result: bool,
}

/// A node's cleared flow (plan) and limits in one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Energy into the subtree (negative = out of it).
    pub flow_wh: i64,
    /// The import limit in force.
    pub import_limit_wh: Option<i64>,
    /// The export limit in force.
    pub export_limit_wh: Option<i64>,
}

impl Point {
    fn empty(start: DateTime<Utc>, minutes: i64) -> Self {
        Point {
            start,
            minutes,
            ..Default::default()
        }
    }

    /// Sets the clearing figures from a result.
    pub fn set_result(&mut self, r: &IntervalResult) {
        self.has_result = true;
        self.prices = r.prices.iter().map(|(n, p)| (n.to_string(), p.0)).collect();
        self.traded_wh = crate::views::traded_volume(r).0;
        self.local_wh = crate::views::local_volume(r).0;
        self.cleared = r
            .flows
            .iter()
            .map(|f| {
                (
                    f.node.to_string(),
                    Cleared {
                        flow_wh: f.flow.0,
                        import_limit_wh: f.import_limit.map(|w| w.0),
                        export_limit_wh: f.export_limit.map(|w| w.0),
                    },
                )
            })
            .collect();
        let utility = &r.network.utility;
        self.cleared.insert(
            r.network.root.to_string(),
            Cleared {
                flow_wh: r.utility_import.0.saturating_sub(r.utility_export.0),
                import_limit_wh: utility.import_limit_wh.map(|w| w.0),
                export_limit_wh: utility.export_limit_wh.map(|w| w.0),
            },
        );
    }

    /// Sets the measured flows (nodes where no home reported are left out).
    pub fn set_measured(&mut self, m: &MeasuredFlows) {
        self.measured = m
            .branches
            .iter()
            .filter(|b| b.homes_reporting > 0)
            .map(|b| (b.node.to_string(), b.flow_wh.0))
            .collect();
    }
}

/// Intervals kept for history, by start.
#[derive(Debug, Default)]
pub struct HistoryStore {
    points: Mutex<BTreeMap<DateTime<Utc>, Point>>,
    /// Read from the upstreams back to this time already (older ranges are read once).
    backfilled_from: Mutex<Option<DateTime<Utc>>>,
    backfill: tokio::sync::Mutex<()>,
}

impl HistoryStore {
    /// Adds or replaces clearing results.
    pub fn add_results(&self, results: &[IntervalResult]) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        for r in results {
            let minutes = r.interval.length().duration().num_minutes();
            points
                .entry(r.interval.start())
                .or_insert_with(|| Point::empty(r.interval.start(), minutes))
                .set_result(r);
        }
        trim(&mut points);
    }

    /// Adds or replaces measured flows.
    pub fn add_measured(&self, flows: &[MeasuredFlows]) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        for m in flows {
            let minutes = m.interval.length().duration().num_minutes();
            points
                .entry(m.interval.start())
                .or_insert_with(|| Point::empty(m.interval.start(), minutes))
                .set_measured(m);
        }
        trim(&mut points);
    }

    /// The points starting in `[from, to)`, oldest first.
    pub fn range(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Point> {
        let points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.range(from..to).map(|(_, p)| p.clone()).collect()
    }

    fn oldest(&self) -> Option<DateTime<Utc>> {
        let points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.keys().next().copied()
    }
}

fn trim(points: &mut BTreeMap<DateTime<Utc>, Point>) {
    while points.len() > MAX_POINTS {
        points.pop_first();
    }
}

/// The range asked for: `range` = `6h`, `24h`, `7d` or `custom` (with `from` and `to`,
/// RFC 3339), the node (default: the substation) and the drawing width in CSS pixels.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    /// `6h`, `24h`, `7d` or `custom`.
    pub range: Option<String>,
    /// Custom range start (RFC 3339).
    pub from: Option<String>,
    /// Custom range end (RFC 3339).
    pub to: Option<String>,
    /// The branch (child node) or the root.
    pub node: Option<String>,
    /// Chart width in CSS pixels (charts only).
    pub w: Option<u32>,
}

/// A resolved range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// Bucket length in minutes.
    pub bucket_minutes: i64,
}

/// Resolves a query against `now` (the newest interval's end, so "the last 6 h" follows the
/// neighbourhood's clock, which may run faster than the wall clock) and the interval length.
pub fn resolve(
    q: &HistoryQuery,
    now: DateTime<Utc>,
    interval_minutes: i64,
) -> Result<(String, Span), String> {
    let name = q.range.as_deref().unwrap_or("6h");
    let (from, to) = match name {
        "6h" => (now - Duration::hours(6), now),
        "24h" => (now - Duration::hours(24), now),
        "7d" => (now - Duration::days(7), now),
        "custom" => {
            let parse = |field: &str, v: &Option<String>| {
                let v = v.as_deref().ok_or_else(|| {
                    format!("a custom range needs `{field}` (RFC 3339, e.g. 2026-06-21T00:00:00Z)")
                })?;
                DateTime::parse_from_rfc3339(v)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| {
                        format!("`{field}` = `{v}` is not an RFC 3339 time ({e}); e.g. 2026-06-21T00:00:00Z")
                    })
            };
            let (from, to) = (parse("from", &q.from)?, parse("to", &q.to)?);
            if to <= from {
                return Err(format!("`to` ({to}) must be after `from` ({from})"));
            }
            if to - from > Duration::days(MAX_RANGE_DAYS) {
                return Err(format!(
                    "a custom range may span at most {MAX_RANGE_DAYS} days; narrow `from`–`to`"
                ));
            }
            (from, to)
        }
        other => {
            return Err(format!(
                "unknown range `{other}`; use 6h, 24h, 7d or custom (with from and to)"
            ));
        }
    };
    Ok((
        name.to_owned(),
        Span {
            from,
            to,
            bucket_minutes: bucket_minutes((to - from).num_minutes(), interval_minutes),
        },
    ))
}

/// The bucket length for a span: the shortest "nice" length, no shorter than one interval, that
/// cuts the span into at most [`MAX_BUCKETS`] buckets.
pub fn bucket_minutes(span_minutes: i64, interval_minutes: i64) -> i64 {
    let interval = interval_minutes.max(1);
    let needed = (span_minutes.max(1) + MAX_BUCKETS - 1) / MAX_BUCKETS;
    NICE_MINUTES
        .iter()
        .copied()
        .find(|m| *m >= needed && *m >= interval && m % interval == 0)
        .unwrap_or_else(|| needed.max(interval))
}

/// One bucket of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Bucket start (RFC 3339).
    pub start: DateTime<Utc>,
    /// Bucket end (exclusive).
    pub end: DateTime<Utc>,
    /// Cleared intervals in the bucket.
    pub intervals: u32,
    /// Intervals in which a home below the node reported.
    pub measured_intervals: u32,
    /// The measured flow of the interval with the largest magnitude (Wh; > 0 into the
    /// subtree), `null` when nothing was measured.
    pub measured_peak_wh: Option<i64>,
    /// The cleared flow (plan) of the interval with the largest magnitude.
    pub cleared_peak_wh: Option<i64>,
    /// The tightest import limit in force in the bucket.
    pub import_limit_wh: Option<i64>,
    /// The tightest export limit in force in the bucket.
    pub export_limit_wh: Option<i64>,
    /// Mean clearing price per node (minor units per MWh).
    pub prices: BTreeMap<String, i64>,
    /// Σ energy traded (Wh).
    pub traded_wh: i64,
    /// Σ energy traded between participants (Wh).
    pub local_wh: i64,
}

/// `GET /api/history`: the buckets of one node over a range.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryAnswer {
    /// `6h`, `24h`, `7d` or `custom`.
    pub range: String,
    /// Range start.
    pub from: DateTime<Utc>,
    /// Range end (exclusive).
    pub to: DateTime<Utc>,
    /// Bucket length in minutes.
    pub bucket_minutes: i64,
    /// The node shown (the substation by default).
    pub node: String,
    /// Whether it is the substation (utility connection).
    pub is_root: bool,
    /// Every node a chart can show: the root first, then the branches.
    pub nodes: Vec<String>,
    /// Oldest first; empty buckets are left out.
    pub buckets: Vec<Bucket>,
}

/// Why buckets could not be summed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the {what} of the bucket from {start} overflows 64-bit Wh; narrow the range")]
pub struct Overflow {
    /// Which sum.
    pub what: &'static str,
    /// The bucket.
    pub start: DateTime<Utc>,
}

fn peak(a: Option<i64>, b: i64) -> Option<i64> {
    match a {
        Some(a) if a.unsigned_abs() >= b.unsigned_abs() => Some(a),
        _ => Some(b),
    }
}

fn tightest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Cuts `points` (oldest first) into buckets of `span` for `node`.
pub fn bucketize(points: &[Point], span: &Span, node: &str) -> Result<Vec<Bucket>, Overflow> {
    let step = Duration::minutes(span.bucket_minutes.max(1));
    let mut out: Vec<Bucket> = Vec::new();
    let mut price_sums: BTreeMap<String, (i128, i64)> = BTreeMap::new();
    let finish = |b: &mut Bucket, sums: &mut BTreeMap<String, (i128, i64)>| {
        b.prices = std::mem::take(sums)
            .into_iter()
            .filter_map(|(n, (sum, count))| {
                let mean = sum.checked_div(i128::from(count))?;
                Some((n, i64::try_from(mean).ok()?))
            })
            .collect();
    };
    for p in points
        .iter()
        .filter(|p| p.start >= span.from && p.start < span.to)
    {
        let index = (p.start - span.from).num_minutes() / span.bucket_minutes.max(1);
        let start = span.from + step * i32::try_from(index).unwrap_or(i32::MAX);
        if out.last().is_none_or(|b| b.start != start) {
            if let Some(last) = out.last_mut() {
                finish(last, &mut price_sums);
            }
            out.push(Bucket {
                start,
                end: start + step,
                intervals: 0,
                measured_intervals: 0,
                measured_peak_wh: None,
                cleared_peak_wh: None,
                import_limit_wh: None,
                export_limit_wh: None,
                prices: BTreeMap::new(),
                traded_wh: 0,
                local_wh: 0,
            });
        }
        let b = out.last_mut().expect("a bucket was just pushed");
        if let Some(m) = p.measured.get(node) {
            b.measured_intervals += 1;
            b.measured_peak_wh = peak(b.measured_peak_wh, *m);
        }
        if !p.has_result {
            continue;
        }
        b.intervals += 1;
        if let Some(c) = p.cleared.get(node) {
            b.cleared_peak_wh = peak(b.cleared_peak_wh, c.flow_wh);
            b.import_limit_wh = tightest(b.import_limit_wh, c.import_limit_wh);
            b.export_limit_wh = tightest(b.export_limit_wh, c.export_limit_wh);
        }
        b.traded_wh = b.traded_wh.checked_add(p.traded_wh).ok_or(Overflow {
            what: "traded energy",
            start,
        })?;
        b.local_wh = b.local_wh.checked_add(p.local_wh).ok_or(Overflow {
            what: "local energy",
            start,
        })?;
        for (n, price) in &p.prices {
            let e = price_sums.entry(n.clone()).or_insert((0, 0));
            e.0 += i128::from(*price);
            e.1 += 1;
        }
    }
    if let Some(last) = out.last_mut() {
        finish(last, &mut price_sums);
    }
    Ok(out)
}

/// The period each Participants total covers, in words: cleared orders (bought, sold, earned,
/// spent) over the held cleared intervals, statements (import, export, settled) over the
/// intervals settlement has settled, readings (generation, consumption) since the dashboard
/// started following the broker, tokens as held now. Interval times are UTC interval time.
pub fn participants_period(snap: &crate::snapshot::Snapshot) -> String {
    let span = |first: Option<DateTime<Utc>>, last: Option<(DateTime<Utc>, i64)>, n: usize| match (
        first, last,
    ) {
        (Some(a), Some((b, minutes))) => format!(
            "{} to {} UTC ({n} intervals)",
            a.format("%d %b %H:%M"),
            (b + Duration::minutes(minutes)).format("%d %b %H:%M")
        ),
        _ => "no intervals yet".to_owned(),
    };
    let cleared = span(
        snap.results.first().map(|r| r.interval.start()),
        snap.results.last().map(|r| {
            (
                r.interval.start(),
                r.interval.length().duration().num_minutes(),
            )
        }),
        snap.results.len(),
    );
    let mut settled: Vec<gridmesh_protocol::Interval> = snap
        .statements
        .iter()
        .filter_map(|s| gridmesh_protocol::Interval::from_key(&s.interval).ok())
        .collect();
    settled.sort_by_key(|i| i.start());
    settled.dedup();
    let statements = span(
        settled.first().map(|i| i.start()),
        settled
            .last()
            .map(|i| (i.start(), i.length().duration().num_minutes())),
        settled.len(),
    );
    format!(
        "Totals cover: bought, sold, earned and spent — the cleared intervals {cleared}; import, export and settled net — settled intervals {statements}; generation and consumption — the signed readings seen since the dashboard started; tokens — held now."
    )
}

/// The history routes (merged into [`crate::routes::router`], behind its session guard).
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/history", get(api_history))
        .route("/charts/history/{chart}", get(chart))
}

/// Reads older intervals from the upstreams once when the range starts before what is held.
async fn backfill(hub: &Hub, from: DateTime<Utc>) -> Result<(), UpstreamError> {
    let _one = hub.history.backfill.lock().await;
    let covered = {
        let b = *hub
            .history
            .backfilled_from
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (b, hub.history.oldest()) {
            (Some(b), Some(o)) => Some(b.min(o)),
            (b, o) => b.or(o),
        }
    };
    if covered.is_some_and(|c| c <= from) {
        return Ok(());
    }
    let until = covered.unwrap_or_else(Utc::now);
    let text = |t: DateTime<Utc>| encode_component(&t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let mut since = from;
    for _ in 0..40 {
        let page: Vec<IntervalResult> = hub
            .market
            .get(&format!("/results?since={}&limit=1000", text(since)))
            .await?;
        hub.history.add_results(&page);
        match page.iter().map(|r| r.interval.start()).max() {
            Some(n) if page.len() >= 1000 && n > since && n < until => since = n,
            _ => break,
        }
    }
    let mut since = from;
    for _ in 0..40 {
        let page: Vec<MeasuredFlows> = hub
            .settlement
            .get(&format!("/flows?since={}&limit=1000", text(since)))
            .await?;
        hub.history.add_measured(&page);
        match page.iter().map(|m| m.interval.start()).max() {
            Some(n) if page.len() >= 1000 && n > since && n < until => since = n,
            _ => break,
        }
    }
    *hub.history
        .backfilled_from
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(from);
    Ok(())
}

/// Builds the history of one node, reading older intervals when the range needs them.
pub async fn history(hub: &Hub, q: &HistoryQuery) -> Result<HistoryAnswer, ApiError> {
    let snap = hub.snapshot();
    hub.history.add_results(&snap.results);
    hub.history.add_measured(&snap.measured_flows);
    let latest = snap.latest_result();
    let interval_minutes = latest
        .map(|r| r.interval.length().duration().num_minutes())
        .unwrap_or(15);
    let now = latest
        .map(|r| r.interval.start() + r.interval.length().duration())
        .unwrap_or_else(Utc::now);
    let (range, span) = resolve(q, now, interval_minutes).map_err(ApiError::BadRequest)?;
    let network = snap.network();
    let root = network.map(|n| n.root.to_string());
    let mut nodes: Vec<String> = root.iter().cloned().collect();
    if let Some(n) = network {
        nodes.extend(n.branches.iter().map(|b| b.node.to_string()));
    }
    let node = match (&q.node, &root) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(r)) => r.clone(),
        _ => String::new(),
    };
    if !nodes.is_empty() && !nodes.contains(&node) {
        return Err(ApiError::NotFound(format!(
            "no node `{node}` in the topology; choose one of {}",
            nodes.join(", ")
        )));
    }
    if let Err(e) = backfill(hub, span.from).await {
        // The held intervals still make a chart; the older part is missing.
        tracing::warn!(error = %e, from = %span.from, "could not read older history");
    }
    let points = hub.history.range(span.from, span.to);
    let buckets =
        bucketize(&points, &span, &node).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(HistoryAnswer {
        range,
        from: span.from,
        to: span.to,
        bucket_minutes: span.bucket_minutes,
        is_root: root.as_deref() == Some(node.as_str()),
        node,
        nodes,
        buckets,
    })
}

async fn api_history(
    State(hub): State<Arc<Hub>>,
    Extension(_session): Extension<Arc<Session>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<ApiJson<HistoryAnswer>, ApiError> {
    Ok(ApiJson(history(&hub, &q).await?))
}

async fn chart(
    State(hub): State<Arc<Hub>>,
    ApiPath(chart): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let h = history(&hub, &q).await?;
    let width = q.w.unwrap_or(720).clamp(280, 1600);
    let svg = match chart.as_str() {
        "flow.svg" => flow_chart(&h, width),
        "price.svg" => price_chart(&h, width),
        "volume.svg" => volume_chart(&h, width),
        other => {
            return Err(ApiError::NotFound(format!(
                "no history chart `{other}`; use flow.svg, price.svg or volume.svg"
            )));
        }
    }?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        svg,
    )
        .into_response())
}

// ---------- drawing ----------

/// Chart text sizes as plotters takes them (its SVG writes `size / 1.24` px): 16 → 12.9 px and
/// 19 → 15.3 px. The SVG is drawn at the width it is shown at, so these are the rendered sizes
/// (never under 12 px).
const TEXT_PX: u32 = 16;
const TITLE_PX: u32 = 19;

fn chart_height(width: u32) -> u32 {
    if width < 500 { 260 } else { 300 }
}

/// A time label: the date always, so a range crossing midnight reads unambiguously.
fn time_label(t: i64, span_minutes: i64) -> String {
    let Some(t) = DateTime::from_timestamp(t, 0) else {
        return String::new();
    };
    if span_minutes > 3 * 1440 {
        t.format("%a %d %b").to_string()
    } else {
        t.format("%d %b %H:%M").to_string()
    }
}

fn x_labels(width: u32) -> usize {
    usize::try_from((width / 120).clamp(2, 10)).unwrap_or(4)
}

/// The time axis from `from` to `to` (unix seconds) with `x_labels(width)` labels at the middles
/// of equal parts: every width, even a phone's 2 labels, shows dates (plotters' own round steps
/// could leave a narrow 6 h axis with none), and no label sits at an edge where it would be clipped.
fn time_axis(from: i64, to: i64, width: u32) -> WithKeyPoints<RangedCoordi64> {
    let n = i64::try_from(x_labels(width)).unwrap_or(2);
    let span = to.saturating_sub(from).max(1);
    let points = (0..n)
        .map(|i| from.saturating_add(span.saturating_mul(2 * i + 1) / (2 * n)))
        .collect();
    (from..to).with_key_points(points)
}

fn drawing_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Chart(crate::charts::ChartError {
        chart: "history",
        reason: e.to_string(),
    })
}

fn empty(title: &str, h: &HistoryAnswer, width: u32) -> String {
    let svg = crate::charts::placeholder(
        title,
        &format!(
            "No cleared intervals from {} to {} UTC",
            h.from.format("%d %b %H:%M"),
            h.to.format("%d %b %H:%M")
        ),
    );
    // The placeholder is 720 wide: scale it to the width asked for.
    svg.replacen(
        "width=\"720\" height=\"320\"",
        &format!("width=\"{width}\" height=\"{}\"", chart_height(width)),
        1,
    )
}

fn with_role(svg: String, label: &str) -> String {
    let label = label.replace('&', "&amp;").replace('"', "&quot;");
    svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{label}\" "),
        1,
    )
}

/// The long title, or the short one when the long would not fit the width (≈ 8 px a character
/// at the title size): a title is never clipped on a phone.
fn fit(long: String, short: String, width: u32) -> String {
    let room = usize::try_from(width.saturating_sub(24) / 8).unwrap_or(usize::MAX);
    if long.chars().count() <= room {
        long
    } else {
        short
    }
}

fn range_text(h: &HistoryAnswer) -> String {
    format!(
        "{} – {} UTC, {}-min buckets",
        h.from.format("%d %b %H:%M"),
        h.to.format("%d %b %H:%M"),
        h.bucket_minutes
    )
}

/// Measured (peak per bucket) and cleared flow of one node against its limits, kWh.
pub fn flow_chart(h: &HistoryAnswer, width: u32) -> Result<String, ApiError> {
    let who = if h.is_root {
        format!("substation {}", h.node)
    } else {
        format!("branch {}", h.node)
    };
    let title = fit(
        format!("Flow through {who} (kWh per interval, peak)"),
        format!("{}: flow and limits, kWh", h.node),
        width,
    );
    if h.buckets.is_empty() {
        return Ok(empty(&title, h, width));
    }
    let kwh = |w: i64| w as f64 / 1000.0;
    let mut lo = 0.0f64;
    let mut hi = 0.0f64;
    for b in &h.buckets {
        for v in [b.measured_peak_wh, b.cleared_peak_wh, b.import_limit_wh]
            .into_iter()
            .flatten()
        {
            hi = hi.max(kwh(v));
            lo = lo.min(kwh(v));
        }
        if let Some(e) = b.export_limit_wh {
            lo = lo.min(-kwh(e));
        }
    }
    let span = (hi - lo).max(0.001);
    let (lo, hi) = (lo - span * 0.08, hi + span * 0.08);
    let (x0, x1) = (h.from.timestamp(), h.to.timestamp());
    let height = chart_height(width);
    let span_minutes = (h.to - h.from).num_minutes();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", TITLE_PX))
            .margin_top(8)
            .margin_left(8)
            .margin_right(48)
            .margin_bottom(8)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(time_axis(x0, x1, width), lo..hi)
            .map_err(drawing_err)?;
        chart
            .configure_mesh()
            .x_labels(x_labels(width))
            .x_label_formatter(&|t| time_label(*t, span_minutes))
            .y_desc("kWh (+ import, − export)")
            .label_style(("sans-serif", TEXT_PX))
            .axis_desc_style(("sans-serif", TEXT_PX))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(drawing_err)?;
        let limit_color = RGBColor(179, 38, 30);
        let steps = |get: &dyn Fn(&Bucket) -> Option<f64>| -> Vec<Vec<(i64, f64)>> {
            let mut runs: Vec<Vec<(i64, f64)>> = Vec::new();
            let mut open = false;
            for b in &h.buckets {
                match get(b) {
                    Some(v) => {
                        if !open {
                            runs.push(Vec::new());
                        }
                        let run = runs.last_mut().expect("pushed");
                        run.push((b.start.timestamp(), v));
                        run.push((b.end.timestamp().min(x1), v));
                        open = true;
                    }
                    None => open = false,
                }
            }
            runs
        };
        let limit_style = ShapeStyle::from(&limit_color).stroke_width(2);
        let mut labelled = false;
        for run in steps(&|b| b.import_limit_wh.map(kwh))
            .into_iter()
            .chain(steps(&|b| b.export_limit_wh.map(|e| -kwh(e))))
        {
            let s = chart
                .draw_series(LineSeries::new(run, limit_style))
                .map_err(drawing_err)?;
            if !labelled {
                s.label("limits (import +, export −)")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], limit_style));
                labelled = true;
            }
        }
        let plan_color = RGBColor(120, 120, 120);
        let plan_style = ShapeStyle::from(&plan_color).stroke_width(2);
        let mut labelled = false;
        for run in steps(&|b| b.cleared_peak_wh.map(kwh)) {
            let s = chart
                .draw_series(LineSeries::new(run, plan_style))
                .map_err(drawing_err)?;
            if !labelled {
                s.label("cleared (plan)")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], plan_style));
                labelled = true;
            }
        }
        let measured_color = RGBColor(0, 114, 178);
        let measured_style = ShapeStyle::from(&measured_color).stroke_width(3);
        let mut labelled = false;
        for run in steps(&|b| b.measured_peak_wh.map(kwh)) {
            let s = chart
                .draw_series(LineSeries::new(run, measured_style))
                .map_err(drawing_err)?;
            if !labelled {
                s.label("measured (metered)").legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], measured_style)
                });
                labelled = true;
            }
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", TEXT_PX))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(drawing_err)?;
        root.present().map_err(drawing_err)?;
    }
    Ok(with_role(
        svg,
        &format!(
            "{title}: measured and cleared flow against the limits, {}",
            range_text(h)
        ),
    ))
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(60, 60, 60),
    RGBColor(230, 159, 0),
];

/// Each node's price as a step line (c/kWh): a level from each bucket's start to its end, so a
/// 15-minute price is drawn flat for its 15 minutes, never as a slope between intervals.
pub fn price_steps(h: &HistoryAnswer) -> BTreeMap<&str, Vec<(i64, f64)>> {
    let mut series: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for b in &h.buckets {
        for (n, p) in &b.prices {
            let v = *p as f64 / 1000.0;
            let s = series.entry(n.as_str()).or_default();
            s.push((b.start.timestamp(), v));
            s.push((b.end.timestamp().min(h.to.timestamp()), v));
        }
    }
    series
}

/// Mean clearing price per node as steps, one per bucket (an interval when the bucket is one).
pub fn price_chart(h: &HistoryAnswer, width: u32) -> Result<String, ApiError> {
    let title = fit(
        format!(
            "Clearing price per node (c/kWh, {}-min steps)",
            h.bucket_minutes
        ),
        "Price per node, c/kWh".to_owned(),
        width,
    );
    let series = price_steps(h);
    if series.is_empty() {
        return Ok(empty(&title, h, width));
    }
    let all = series.values().flatten().map(|(_, v)| *v);
    let (lo, hi) = all.fold((0.0f64, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(0.001);
    let (lo, hi) = (lo, hi + span * 0.25);
    let height = chart_height(width);
    let span_minutes = (h.to - h.from).num_minutes();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", TITLE_PX))
            .margin_top(8)
            .margin_left(8)
            .margin_right(48)
            .margin_bottom(8)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(
                time_axis(h.from.timestamp(), h.to.timestamp(), width),
                lo..hi,
            )
            .map_err(drawing_err)?;
        chart
            .configure_mesh()
            .x_labels(x_labels(width))
            .x_label_formatter(&|t| time_label(*t, span_minutes))
            .y_desc("c/kWh")
            .label_style(("sans-serif", TEXT_PX))
            .axis_desc_style(("sans-serif", TEXT_PX))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(drawing_err)?;
        for (k, (node, points)) in series.iter().enumerate() {
            let style = ShapeStyle::from(&PALETTE[k % PALETTE.len()]).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(drawing_err)?
                .label(node.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", TEXT_PX))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(drawing_err)?;
        root.present().map_err(drawing_err)?;
    }
    Ok(with_role(
        svg,
        &format!("{title}, as steps, {}", range_text(h)),
    ))
}

/// Cleared volume per bucket: between participants and with the utility, stacked, kWh.
pub fn volume_chart(h: &HistoryAnswer, width: u32) -> Result<String, ApiError> {
    let title = format!("Cleared volume (kWh per {} min)", h.bucket_minutes);
    if h.buckets.iter().all(|b| b.intervals == 0) {
        return Ok(empty(&title, h, width));
    }
    let kwh = |w: i64| w as f64 / 1000.0;
    let hi = h
        .buckets
        .iter()
        .map(|b| kwh(b.traded_wh))
        .fold(0.001, f64::max)
        * 1.3;
    let height = chart_height(width);
    let span_minutes = (h.to - h.from).num_minutes();
    let local_color = RGBColor(0, 114, 178);
    let utility_color = RGBColor(130, 130, 130);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", TITLE_PX))
            .margin_top(8)
            .margin_left(8)
            .margin_right(48)
            .margin_bottom(8)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(
                time_axis(h.from.timestamp(), h.to.timestamp(), width),
                0.0..hi,
            )
            .map_err(drawing_err)?;
        chart
            .configure_mesh()
            .x_labels(x_labels(width))
            .x_label_formatter(&|t| time_label(*t, span_minutes))
            .y_desc("kWh")
            .label_style(("sans-serif", TEXT_PX))
            .axis_desc_style(("sans-serif", TEXT_PX))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(drawing_err)?;
        chart
            .draw_series(h.buckets.iter().map(|b| {
                Rectangle::new(
                    [
                        (b.start.timestamp(), 0.0),
                        (b.end.timestamp(), kwh(b.local_wh)),
                    ],
                    local_color.filled(),
                )
            }))
            .map_err(drawing_err)?
            .label("between participants")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], local_color.filled())
            });
        chart
            .draw_series(h.buckets.iter().map(|b| {
                Rectangle::new(
                    [
                        (b.start.timestamp(), kwh(b.local_wh)),
                        (b.end.timestamp(), kwh(b.traded_wh)),
                    ],
                    utility_color.filled(),
                )
            }))
            .map_err(drawing_err)?
            .label("with the utility")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], utility_color.filled())
            });
        chart
            .configure_series_labels()
            .label_font(("sans-serif", TEXT_PX))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(drawing_err)?;
        root.present().map_err(drawing_err)?;
    }
    Ok(with_role(svg, &format!("{title}, {}", range_text(h))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn point(start: &str, measured: i64, cleared: i64, limit: i64, price: i64) -> Point {
        let mut p = Point::empty(t(start), 15);
        p.has_result = true;
        p.measured.insert("f1".into(), measured);
        p.cleared.insert(
            "f1".into(),
            Cleared {
                flow_wh: cleared,
                import_limit_wh: Some(limit),
                export_limit_wh: Some(limit),
            },
        );
        p.prices.insert("f1".into(), price);
        p.traded_wh = 1000;
        p.local_wh = 400;
        p
    }

    #[test]
    fn bucket_lengths_keep_every_range_under_the_cap() {
        let check = |span: i64, interval: i64, expected: i64| {
            let m = bucket_minutes(span, interval);
            assert_eq!(m, expected, "span {span} min, interval {interval} min");
            assert!(span / m <= MAX_BUCKETS);
        };
        check(6 * 60, 15, 15);
        check(24 * 60, 15, 15);
        check(7 * 1440, 15, 120);
        check(31 * 1440, 15, 720);
        check(6 * 60, 5, 5);
        check(6 * 60, 60, 60);
    }

    #[test]
    fn resolve_names_ranges_and_explains_bad_ones() {
        let now = t("2026-06-21T12:00:00Z");
        let (name, span) = resolve(&HistoryQuery::default(), now, 15).unwrap();
        assert_eq!(
            (name.as_str(), span.from),
            ("6h", t("2026-06-21T06:00:00Z"))
        );
        let q = HistoryQuery {
            range: Some("7d".into()),
            ..Default::default()
        };
        assert_eq!(resolve(&q, now, 15).unwrap().1.bucket_minutes, 120);
        let q = HistoryQuery {
            range: Some("custom".into()),
            from: Some("2026-06-20T22:00:00Z".into()),
            to: Some("2026-06-21T02:00:00Z".into()),
            ..Default::default()
        };
        let (_, span) = resolve(&q, now, 15).unwrap();
        assert_eq!(span.to, t("2026-06-21T02:00:00Z"));
        let bad = HistoryQuery {
            range: Some("custom".into()),
            from: Some("yesterday".into()),
            to: Some("2026-06-21T02:00:00Z".into()),
            ..Default::default()
        };
        assert!(resolve(&bad, now, 15).unwrap_err().contains("RFC 3339"));
        let bad = HistoryQuery {
            range: Some("3w".into()),
            ..Default::default()
        };
        assert!(resolve(&bad, now, 15).unwrap_err().contains("6h, 24h, 7d"));
    }

    #[test]
    fn buckets_keep_peaks_tightest_limits_mean_prices_and_sums() {
        let points = vec![
            point("2026-06-21T00:00:00Z", -300, -320, 320, 10_000),
            point("2026-06-21T00:15:00Z", 200, 100, 300, 20_000),
            point("2026-06-21T00:30:00Z", 50, 60, 320, 30_000),
        ];
        let span = Span {
            from: t("2026-06-21T00:00:00Z"),
            to: t("2026-06-21T01:00:00Z"),
            bucket_minutes: 30,
        };
        let b = bucketize(&points, &span, "f1").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].measured_peak_wh, Some(-300));
        assert_eq!(b[0].cleared_peak_wh, Some(-320));
        assert_eq!(b[0].import_limit_wh, Some(300));
        assert_eq!(b[0].prices["f1"], 15_000);
        assert_eq!(
            (b[0].traded_wh, b[0].local_wh, b[0].intervals),
            (2000, 800, 2)
        );
        assert_eq!(b[1].start, t("2026-06-21T00:30:00Z"));
        assert_eq!(b[1].end, t("2026-06-21T01:00:00Z"));
        // Another node has no figures; nothing measured there.
        let other = bucketize(&points, &span, "f2").unwrap();
        assert!(other.iter().all(|b| b.measured_peak_wh.is_none()));
    }

    #[test]
    fn overflowing_sums_are_an_error() {
        let mut a = point("2026-06-21T00:00:00Z", 0, 0, 1, 1);
        a.traded_wh = i64::MAX;
        let b = point("2026-06-21T00:15:00Z", 0, 0, 1, 1);
        let span = Span {
            from: t("2026-06-21T00:00:00Z"),
            to: t("2026-06-21T01:00:00Z"),
            bucket_minutes: 60,
        };
        assert_eq!(
            bucketize(&[a, b], &span, "f1").unwrap_err().what,
            "traded energy"
        );
    }

    fn answer(buckets: Vec<Bucket>, from: &str, to: &str) -> HistoryAnswer {
        HistoryAnswer {
            range: "custom".into(),
            from: t(from),
            to: t(to),
            bucket_minutes: 15,
            node: "f1".into(),
            is_root: false,
            nodes: vec!["root".into(), "f1".into()],
            buckets,
        }
    }

    #[test]
    fn charts_cross_midnight_with_dates_readable_text_and_price_steps() {
        let points = vec![
            point("2026-06-20T23:30:00Z", 100, 90, 320, 10_000),
            point("2026-06-20T23:45:00Z", 150, 90, 320, 12_000),
            point("2026-06-21T00:00:00Z", 200, 90, 320, 14_000),
        ];
        let span = Span {
            from: t("2026-06-20T23:00:00Z"),
            to: t("2026-06-21T01:00:00Z"),
            bucket_minutes: 15,
        };
        let h = answer(
            bucketize(&points, &span, "f1").unwrap(),
            "2026-06-20T23:00:00Z",
            "2026-06-21T01:00:00Z",
        );
        let svg = price_chart(&h, 360).unwrap();
        assert!(svg.contains("20 Jun") && svg.contains("21 Jun"), "{svg}");
        assert!(svg.contains("width=\"360\""));
        // Every text is at least 12 px at the width it is drawn for.
        for size in svg.split("font-size=\"").skip(1) {
            let px: f64 = size.split('"').next().unwrap().parse().unwrap();
            assert!(px >= 12.0, "font-size {px}");
        }
        // Steps: every price is flat over its interval and changes only at a boundary.
        let steps = price_steps(&h);
        let f1 = &steps["f1"];
        assert_eq!(f1.len(), 6);
        for pair in f1.chunks(2) {
            assert_eq!(pair[0].1, pair[1].1);
            assert_eq!(pair[1].0 - pair[0].0, 15 * 60);
        }
        assert_eq!(f1[1].0, f1[2].0);
        let flow = flow_chart(&h, 1000).unwrap();
        assert!(flow.contains("measured (metered)") && flow.contains("cleared (plan)"));
        assert!(
            volume_chart(&h, 700)
                .unwrap()
                .contains("between participants")
        );
        // On a phone the titles are the short ones, so they are not clipped.
        assert!(
            flow_chart(&h, 360)
                .unwrap()
                .contains("f1: flow and limits, kWh")
        );
        assert!(
            price_chart(&h, 360)
                .unwrap()
                .contains("Price per node, c/kWh")
        );
        let none = answer(vec![], "2026-06-20T23:00:00Z", "2026-06-21T01:00:00Z");
        assert!(flow_chart(&none, 400).unwrap().contains("data-empty"));
    }

    /// A 6 h range on a phone (353 px, 2 labels) once had no time label at all: plotters' round
    /// steps fell outside 05:30–11:30. Every chart shows dated labels at every width.
    #[test]
    fn six_hours_on_a_phone_have_dates_on_the_time_axis() {
        let points = vec![
            point("2026-06-21T10:45:00Z", 150, 90, 320, 12_000),
            point("2026-06-21T11:00:00Z", 200, 90, 320, 14_000),
        ];
        let span = Span {
            from: t("2026-06-21T05:30:00Z"),
            to: t("2026-06-21T11:30:00Z"),
            bucket_minutes: 15,
        };
        let h = answer(
            bucketize(&points, &span, "f1").unwrap(),
            "2026-06-21T05:30:00Z",
            "2026-06-21T11:30:00Z",
        );
        for width in [353, 658, 1300] {
            for svg in [
                flow_chart(&h, width).unwrap(),
                price_chart(&h, width).unwrap(),
                volume_chart(&h, width).unwrap(),
            ] {
                // Texts drawn on the chart (the aria-label on <svg> also names the dates).
                let dated = svg
                    .split("<text")
                    .skip(1)
                    .filter(|t| t.contains("21 Jun "))
                    .count();
                assert!(dated >= 2, "{width} px: {dated} dated labels in {svg}");
            }
        }
    }
}
