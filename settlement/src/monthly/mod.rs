//! The monthly household statement (issue 18): every settled interval of a calendar month with
//! the household's trades, imbalance lines, fees and tokens, the totals, the community share
//! (energy from neighbours vs from the grid), the savings against a utility-only baseline at the
//! same tariffs and the digests of the signed readings settlement metered, so the household can
//! check them against its own gateway's outbox.
//!
//! Months are calendar months in **UTC** (settlement has no configured time zone): an interval
//! belongs to the month its start falls in.
//!
//! [`build`] is pure: it takes the month's stored per-interval [`Statement`]s, each interval's
//! [`Tariffs`] and the readings, and sums with checked integer arithmetic (an overflow is a
//! [`MonthlyError::Overflow`], never a wrap). [`load`] reads those from the store, [`http`] serves them
//! (JSON, CSV, HTML). [`csv`] and [`html`] render the statement for a spreadsheet and for
//! printing.
//!
//! # The baseline
//! For each interval with readings, the utility-only baseline is what the same metered energy
//! would have earned with the utility alone, at that interval's tariffs:
//! `feed_in × (exported − envelope_excess) + envelope_excess_price × envelope_excess −
//! retail × imported`, each product rounded like a trade ([`PricePerMwh::cost_of`]). Export
//! beyond the operating envelope is priced the same way on both sides, so the savings measure
//! the market, not the envelope. Intervals settled without readings (`estimated`) have nothing
//! metered to compare: they are listed, counted in the totals and left out of the savings.
//!
//! # Pending readings
//! A flagged reading (implausible, awaiting an operator) moves no money: its interval's
//! statement lists it as pending, and the CSV and HTML show it as a line that is not paid, with
//! what accepting it would add to the interval's net. It is in none of the totals.

pub mod http;
mod store;

pub use store::load;

use crate::rules::{Statement, Tariffs};
use chrono::{DateTime, NaiveDate, Utc};
use gridmesh_protocol::api::settlement::{
    CommunityShare, MonthlyInterval, MonthlyStatement, MonthlyTotals, ReadingDigest, Savings,
};
use gridmesh_protocol::units::Overflow;
use gridmesh_protocol::{Money, ParticipantId, PricePerMwh, Wh};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Why a monthly statement could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonthlyError {
    /// The month is not `YYYY-MM`.
    #[error(
        "month `{0}` is not a calendar month: write it as YYYY-MM, for example 2026-06 (months are in UTC)"
    )]
    BadMonth(String),
    /// A sum overflowed.
    #[error("the monthly statement's sums overflowed: {0}")]
    Overflow(#[from] Overflow),
    /// A stored statement has no stored market result (the tariffs are unknown).
    #[error("interval {0} has a statement but no stored market result, so its tariffs are unknown")]
    MissingResult(String),
}

/// The first instant of `month` (`YYYY-MM`) and of the month after it, in UTC.
pub fn month_bounds(month: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), MonthlyError> {
    let bad = || MonthlyError::BadMonth(month.to_owned());
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let first = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
    let next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    }
    .ok_or_else(bad)?;
    let at = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
    Ok((at(first), at(next)))
}

/// The line kinds that are trades.
const TRADE_KINDS: [&str; 2] = ["trade_sale", "trade_purchase"];
/// The line kinds that are imbalances against metered energy.
const IMBALANCE_KINDS: [&str; 5] = [
    "shortfall",
    "surplus_export",
    "envelope_excess",
    "untaken",
    "extra_import",
];

/// Where a money line is summed: trades, imbalances or (anything else) fees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCategory {
    /// `trade_sale`, `trade_purchase`.
    Trade,
    /// `shortfall`, `surplus_export`, `envelope_excess`, `untaken`, `extra_import`.
    Imbalance,
    /// Any other kind.
    Fee,
}

impl LineCategory {
    /// The category of a line `kind`.
    pub fn of(kind: &str) -> Self {
        if TRADE_KINDS.contains(&kind) {
            LineCategory::Trade
        } else if IMBALANCE_KINDS.contains(&kind) {
            LineCategory::Imbalance
        } else {
            LineCategory::Fee
        }
    }
}

/// `part / whole` in per mille, rounded down; `None` when `whole` is not positive.
fn permille(part: Wh, whole: Wh) -> Option<u32> {
    if whole.0 <= 0 {
        return None;
    }
    let v = i128::from(part.0.max(0)) * 1000 / i128::from(whole.0);
    u32::try_from(v).ok()
}

/// The utility-only baseline of one interval's metered energy (see the module docs).
pub fn baseline(s: &Statement, t: &Tariffs) -> Result<Money, Overflow> {
    let within = s.exported.checked_sub(s.envelope_excess)?;
    let earned = t.feed_in.cost_of(within)?;
    let excess = t.excess.cost_of(s.envelope_excess)?;
    let paid = t.retail.cost_of(s.imported)?;
    earned.checked_add(excess)?.checked_sub(paid)
}

/// One interval of the month from its statement, tariffs and readings.
fn interval_of(
    s: Statement,
    t: &Tariffs,
    readings: Vec<ReadingDigest>,
) -> Result<MonthlyInterval, Overflow> {
    let (mut trades, mut imbalance, mut fees) = (Money(0), Money(0), Money(0));
    let mut sold_to_neighbours = Wh(0);
    for l in &s.lines {
        let sum = match LineCategory::of(&l.kind) {
            LineCategory::Trade => &mut trades,
            LineCategory::Imbalance => &mut imbalance,
            LineCategory::Fee => &mut fees,
        };
        *sum = sum.checked_add(l.amount)?;
        if l.kind == "trade_sale" && l.counterparty != "utility" {
            sold_to_neighbours = sold_to_neighbours.checked_add(l.energy)?;
        }
    }
    let from_neighbours = s.tokens.min(s.imported).max(Wh(0));
    let from_grid = s.imported.checked_sub(from_neighbours)?;
    let to_neighbours = s.delivered.min(sold_to_neighbours).max(Wh(0));
    let to_grid = s.exported.checked_sub(to_neighbours)?;
    let (baseline, savings) = if s.estimated {
        (None, None)
    } else {
        let b = baseline(&s, t)?;
        (Some(b), Some(s.net.checked_sub(b)?))
    };
    Ok(MonthlyInterval {
        interval: s.interval.clone(),
        retail_price: t.retail,
        feed_in_price: t.feed_in,
        envelope_excess_price: t.excess,
        trades,
        imbalance,
        fees,
        from_neighbours,
        from_grid,
        to_neighbours,
        to_grid,
        baseline,
        savings,
        readings,
        statement: s,
    })
}

/// Builds the monthly statement of `participant` for `month` from the month's statements
/// (oldest first), the tariffs of their intervals (by interval key) and the readings (by
/// interval key). Pure; every sum is checked.
pub fn build(
    participant: ParticipantId,
    month: &str,
    statements: Vec<Statement>,
    tariffs: &BTreeMap<String, Tariffs>,
    mut readings: BTreeMap<String, Vec<ReadingDigest>>,
) -> Result<MonthlyStatement, MonthlyError> {
    let (from, to) = month_bounds(month)?;
    let mut intervals = Vec::with_capacity(statements.len());
    for s in statements {
        let t = tariffs
            .get(&s.interval)
            .ok_or_else(|| MonthlyError::MissingResult(s.interval.clone()))?;
        let r = readings.remove(&s.interval).unwrap_or_default();
        intervals.push(interval_of(s, t, r)?);
    }
    let mut totals = MonthlyTotals::default();
    let mut community = CommunityShare::default();
    let mut savings = Savings::default();
    for i in &intervals {
        let s = &i.statement;
        totals.intervals += 1;
        totals.estimated_intervals += u64::from(s.estimated);
        totals.sold = totals.sold.checked_add(s.sold)?;
        totals.bought = totals.bought.checked_add(s.bought)?;
        totals.exported = totals.exported.checked_add(s.exported)?;
        totals.imported = totals.imported.checked_add(s.imported)?;
        totals.envelope_excess = totals.envelope_excess.checked_add(s.envelope_excess)?;
        totals.delivered = totals.delivered.checked_add(s.delivered)?;
        totals.consumed = totals.consumed.checked_add(s.consumed)?;
        totals.tokens = totals.tokens.checked_add(s.tokens)?;
        totals.trades = totals.trades.checked_add(i.trades)?;
        totals.imbalance = totals.imbalance.checked_add(i.imbalance)?;
        totals.fees = totals.fees.checked_add(i.fees)?;
        totals.net = totals.net.checked_add(s.net)?;
        totals.readings += i.readings.len() as u64;
        community.from_neighbours = community.from_neighbours.checked_add(i.from_neighbours)?;
        community.from_grid = community.from_grid.checked_add(i.from_grid)?;
        community.to_neighbours = community.to_neighbours.checked_add(i.to_neighbours)?;
        community.to_grid = community.to_grid.checked_add(i.to_grid)?;
        match (i.baseline, i.savings) {
            (Some(b), Some(_)) => {
                savings.actual = savings.actual.checked_add(s.net)?;
                savings.baseline = savings.baseline.checked_add(b)?;
                savings.intervals += 1;
            }
            _ => savings.estimated_excluded += 1,
        }
    }
    savings.savings = savings.actual.checked_sub(savings.baseline)?;
    community.import_share_permille = permille(community.from_neighbours, totals.imported);
    community.export_share_permille = permille(community.to_neighbours, totals.exported);
    Ok(MonthlyStatement {
        participant,
        month: month.to_owned(),
        time_zone: "UTC".to_owned(),
        from,
        to,
        intervals,
        totals,
        community,
        savings,
    })
}

/// Money as `12.34` (minor units shown as hundredths), signed.
pub fn money(m: Money) -> String {
    let sign = if m.0 < 0 { "-" } else { "" };
    let a = m.0.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// A price per MWh shown per kWh in minor units (`30.0000` for 300 000 per MWh).
fn per_kwh(p: PricePerMwh) -> String {
    let sign = if p.0 < 0 { "-" } else { "" };
    let a = p.0.unsigned_abs();
    format!("{sign}{}.{:04}", a / 10_000, a % 10_000)
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The CSV header of [`csv`].
pub const CSV_HEADER: &str =
    "record,interval,kind,counterparty,energy_wh,price_per_mwh,amount_minor,digest,key,status";

/// The statement as CSV (RFC 4180, integer units): one `line` record per money line, one
/// `pending` record per flagged reading awaiting an operator (not paid; `energy_wh` is
/// import/export as it would count, `status` its reason code), one `reading` record per signed
/// reading, one `interval` record per interval (its net, tokens, baseline and savings, and
/// `pending_worth` when readings are pending), then `total`, `community` and `savings` records.
pub fn csv(m: &MonthlyStatement) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{CSV_HEADER}");
    let mut row = |cells: [&str; 10]| {
        let cells: Vec<String> = cells.iter().map(|c| field(c)).collect();
        let _ = writeln!(out, "{}", cells.join(","));
    };
    for i in &m.intervals {
        let s = &i.statement;
        for l in &s.lines {
            row([
                "line",
                &i.interval,
                &l.kind,
                &l.counterparty,
                &l.energy.0.to_string(),
                &l.price.0.to_string(),
                &l.amount.0.to_string(),
                "",
                "",
                "",
            ]);
        }
        for p in &s.pending {
            row([
                "pending",
                &i.interval,
                "grid_import/grid_export",
                p.gateway.as_str(),
                &format!("{}/{}", p.imported.0, p.exported.0),
                "",
                "",
                &p.reading,
                "",
                p.reason.map_or("flagged", |r| r.as_str()),
            ]);
        }
        for r in &i.readings {
            row([
                "reading",
                &i.interval,
                "grid_import/grid_export",
                &r.gateway,
                &format!("{}/{}", r.imported.0, r.exported.0),
                "",
                "",
                &r.digest,
                &r.key,
                r.status.as_str(),
            ]);
        }
        let opt = |v: Option<Money>| v.map_or_else(String::new, |v| v.0.to_string());
        for (kind, energy, amount) in [
            ("net", String::new(), s.net.0.to_string()),
            ("tokens", s.tokens.0.to_string(), String::new()),
            ("baseline", String::new(), opt(i.baseline)),
            ("savings", String::new(), opt(i.savings)),
        ]
        .into_iter()
        .chain(
            s.pending_worth
                .map(|w| ("pending_worth", String::new(), w.0.to_string())),
        ) {
            row([
                "interval",
                &i.interval,
                kind,
                "",
                &energy,
                "",
                &amount,
                "",
                "",
                if s.estimated { "estimated" } else { "" },
            ]);
        }
    }
    let t = &m.totals;
    for (kind, energy, amount) in [
        ("sold", t.sold.0, None),
        ("bought", t.bought.0, None),
        ("exported", t.exported.0, None),
        ("imported", t.imported.0, None),
        ("tokens", t.tokens.0, None),
        ("trades", 0, Some(t.trades)),
        ("imbalance", 0, Some(t.imbalance)),
        ("fees", 0, Some(t.fees)),
        ("net", 0, Some(t.net)),
    ] {
        let (e, a) = match amount {
            Some(a) => (String::new(), a.0.to_string()),
            None => (energy.to_string(), String::new()),
        };
        row(["total", &m.month, kind, "", &e, "", &a, "", "", ""]);
    }
    let c = &m.community;
    for (kind, energy) in [
        ("from_neighbours", c.from_neighbours),
        ("from_grid", c.from_grid),
        ("to_neighbours", c.to_neighbours),
        ("to_grid", c.to_grid),
    ] {
        row([
            "community",
            &m.month,
            kind,
            "",
            &energy.0.to_string(),
            "",
            "",
            "",
            "",
            "",
        ]);
    }
    let v = &m.savings;
    for (kind, amount) in [
        ("actual", v.actual),
        ("baseline", v.baseline),
        ("savings", v.savings),
    ] {
        row([
            "savings",
            &m.month,
            kind,
            "",
            "",
            "",
            &amount.0.to_string(),
            "",
            "",
            "",
        ]);
    }
    out
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The statement as a self-contained printable HTML page (no scripts, no external assets).
pub fn html(m: &MonthlyStatement) -> String {
    let mut o = String::new();
    let t = &m.totals;
    let c = &m.community;
    let v = &m.savings;
    let share = |p: Option<u32>| {
        p.map_or_else(|| "none".to_owned(), |p| format!("{}.{} %", p / 10, p % 10))
    };
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Statement {month} — {who}</title><style>\
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#111}}\
table{{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}}\
th,td{{border-bottom:1px solid #ccc;padding:.2rem .4rem;text-align:left;font-size:.85rem}}\
td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
code{{font-size:.75rem;word-break:break-all}}\
@media print{{body{{margin:0}}h2{{break-before:auto}}tr{{break-inside:avoid}}}}\
</style></head><body>\
<h1>Monthly statement {month}</h1>\
<p>Household <strong>{who}</strong>; {from} to {to} (months in UTC). Energy in Wh, money in \
currency units (minor units / 100), prices per kWh in minor units.</p>",
        month = esc(&m.month),
        who = esc(m.participant.as_str()),
        from = m.from.to_rfc3339(),
        to = m.to.to_rfc3339(),
    );
    let _ = write!(
        o,
        "<h2>Summary</h2><table><tbody>\
<tr><th>Net (received − paid)</th><td class=n>{net}</td></tr>\
<tr><th>Trades</th><td class=n>{trades}</td></tr>\
<tr><th>Imbalances</th><td class=n>{imb}</td></tr>\
<tr><th>Fees</th><td class=n>{fees}</td></tr>\
<tr><th>Sold / bought in trades</th><td class=n>{sold} / {bought} Wh</td></tr>\
<tr><th>Exported / imported (metered)</th><td class=n>{exp} / {imp} Wh</td></tr>\
<tr><th>Tokens received (1 token = 1 Wh)</th><td class=n>{tokens}</td></tr>\
<tr><th>Import from neighbours / from the grid</th><td class=n>{fnb} / {fg} Wh ({ish} from neighbours)</td></tr>\
<tr><th>Export to neighbours / to the grid</th><td class=n>{tnb} / {tg} Wh ({esh} to neighbours)</td></tr>\
<tr><th>Utility-only baseline</th><td class=n>{base}</td></tr>\
<tr><th>Savings with the market</th><td class=n><strong>{sav}</strong> over {n} intervals ({x} estimated intervals left out)</td></tr>\
<tr><th>Intervals / readings</th><td class=n>{ints} ({est} estimated) / {reads}</td></tr>\
</tbody></table>",
        net = money(t.net),
        trades = money(t.trades),
        imb = money(t.imbalance),
        fees = money(t.fees),
        sold = t.sold.0,
        bought = t.bought.0,
        exp = t.exported.0,
        imp = t.imported.0,
        tokens = t.tokens.0,
        fnb = c.from_neighbours.0,
        fg = c.from_grid.0,
        ish = share(c.import_share_permille),
        tnb = c.to_neighbours.0,
        tg = c.to_grid.0,
        esh = share(c.export_share_permille),
        base = money(v.baseline),
        sav = money(v.savings),
        n = v.intervals,
        x = v.estimated_excluded,
        ints = t.intervals,
        est = t.estimated_intervals,
        reads = t.readings,
    );
    o.push_str(
        "<h2>Intervals</h2><table><thead><tr><th>Interval</th><th>Line</th><th>Counterparty</th>\
<th>Wh</th><th>Price/kWh</th><th>Amount</th></tr></thead><tbody>",
    );
    for i in &m.intervals {
        let s = &i.statement;
        let mut first = true;
        let head = |first: &mut bool| {
            if std::mem::take(first) {
                format!(
                    "{}{}",
                    esc(&i.interval),
                    if s.estimated { " (estimated)" } else { "" }
                )
            } else {
                String::new()
            }
        };
        for l in &s.lines {
            let h = head(&mut first);
            let _ = write!(
                o,
                "<tr><td>{h}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                esc(&l.kind),
                esc(&l.counterparty),
                l.energy.0,
                per_kwh(l.price),
                money(l.amount)
            );
        }
        for p in &s.pending {
            let h = head(&mut first);
            let _ = write!(
                o,
                "<tr><td>{h}</td><td><em>pending operator review</em> ({}): not paid</td><td>{}</td>\
<td class=n>{} in / {} out</td><td></td><td class=n>–</td></tr>",
                p.reason.map_or("flagged", |r| r.as_str()),
                esc(p.gateway.as_str()),
                p.imported.0,
                p.exported.0,
            );
        }
        if let Some(w) = s.pending_worth {
            let h = head(&mut first);
            let _ = write!(
                o,
                "<tr><td>{h}</td><td><em>pending</em>: worth if accepted</td><td></td><td></td><td></td>\
<td class=n>{}</td></tr>",
                money(w)
            );
        }
        let h = head(&mut first);
        let _ = write!(
            o,
            "<tr><td>{h}</td><td><em>net</em>; tokens {tok} Wh; baseline {b}; savings {sv}</td><td></td>\
<td class=n>{imp} in / {exp} out</td><td class=n>{r} / {f}</td><td class=n><strong>{net}</strong></td></tr>",
            tok = s.tokens.0,
            b = i.baseline.map_or_else(|| "–".to_owned(), money),
            sv = i.savings.map_or_else(|| "–".to_owned(), money),
            imp = s.imported.0,
            exp = s.exported.0,
            r = per_kwh(i.retail_price),
            f = per_kwh(i.feed_in_price),
            net = money(s.net),
        );
    }
    o.push_str(
        "</tbody></table><h2>Signed readings</h2><p>The SHA-256 of each signed payload; \
check them with <code>edge-gateway statement --month ",
    );
    o.push_str(&esc(&m.month));
    o.push_str(
        "</code> on the gateway.</p><table><thead><tr><th>Interval</th><th>Key</th><th>Status</th>\
<th>Import / export Wh</th><th>Digest</th></tr></thead><tbody>",
    );
    for i in &m.intervals {
        for r in &i.readings {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{} / {}</td><td><code>{}</code></td></tr>",
                esc(&i.interval),
                esc(&r.key),
                r.status.as_str(),
                r.imported.0,
                r.exported.0,
                esc(&r.digest)
            );
        }
    }
    o.push_str("</tbody></table></body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    #[test]
    fn months_are_utc_calendar_months() {
        let (a, b) = month_bounds("2026-06").unwrap();
        assert_eq!(a.to_rfc3339(), "2026-06-01T00:00:00+00:00");
        assert_eq!(b.to_rfc3339(), "2026-07-01T00:00:00+00:00");
        let (a, b) = month_bounds("2026-12").unwrap();
        assert_eq!((a.month(), b.year(), b.month()), (12, 2027, 1));
        for bad in [
            "2026-13",
            "2026-00",
            "2026-6",
            "26-06",
            "2026/06",
            "",
            "2026-06-01",
            "+026-06",
        ] {
            assert!(
                matches!(month_bounds(bad), Err(MonthlyError::BadMonth(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn money_and_prices_print_without_floats() {
        assert_eq!(money(Money(-1234)), "-12.34");
        assert_eq!(money(Money(5)), "0.05");
        assert_eq!(per_kwh(PricePerMwh(300_000)), "30.0000");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(esc("<b>&\""), "&lt;b&gt;&amp;&quot;");
    }

    #[test]
    fn lines_fall_into_categories() {
        assert_eq!(LineCategory::of("trade_sale"), LineCategory::Trade);
        assert_eq!(LineCategory::of("extra_import"), LineCategory::Imbalance);
        assert_eq!(LineCategory::of("network_fee"), LineCategory::Fee);
        assert_eq!(permille(Wh(1), Wh(3)), Some(333));
        assert_eq!(permille(Wh(1), Wh(0)), None);
    }
}
