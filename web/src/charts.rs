//! Server-side SVG charts drawn with `plotters`: clearing price per node over time, cleared
//! volume per interval, and the next interval's order-book depth.
//!
//! Integers are converted to floats only here, for drawing: prices are shown in minor units per
//! kWh (`PricePerMwh / 1000`), energy in kWh (`Wh / 1000`).

use crate::views::{local_volume, traded_volume};
use gridmesh_protocol::api::market::{BookDepth, DepthStep};
use gridmesh_protocol::market::IntervalResult;
use plotters::prelude::*;
use std::collections::BTreeMap;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("could not draw the {chart} chart: {reason}")]
pub struct ChartError {
    /// Which chart.
    pub chart: &'static str,
    /// What plotters reported.
    pub reason: String,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 320;
/// A colour-blind-friendly palette (Okabe–Ito), dark enough for contrast on white.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(60, 60, 60),
];

fn err(chart: &'static str) -> impl Fn(String) -> ChartError {
    move |reason| ChartError { chart, reason }
}

/// An SVG that says there is nothing to draw yet (and contains no data shapes).
pub fn placeholder(title: &str, message: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}: {m}\" data-empty=\"true\">\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\
         <text x=\"{x}\" y=\"40\" font-family=\"sans-serif\" font-size=\"18\" text-anchor=\"middle\" fill=\"#222\">{t}</text>\
         <text x=\"{x}\" y=\"{y}\" font-family=\"sans-serif\" font-size=\"16\" text-anchor=\"middle\" fill=\"#444\">{m}</text></svg>",
        t = esc(title),
        m = esc(message),
        x = WIDTH / 2,
        y = HEIGHT / 2,
    )
}

fn time_label(results: &[IntervalResult], x: i32) -> String {
    usize::try_from(x)
        .ok()
        .and_then(|i| results.get(i))
        .map(|r| r.interval.start().format("%H:%M").to_string())
        .unwrap_or_default()
}

/// Clearing price per node over the cleared intervals (oldest first), one line per node.
pub fn prices(results: &[IntervalResult]) -> Result<String, ChartError> {
    const TITLE: &str = "Clearing price per node (c/kWh)";
    if results.is_empty() {
        return Ok(placeholder(TITLE, "No cleared intervals yet"));
    }
    let mut series: BTreeMap<String, Vec<(i32, f64)>> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        for (node, price) in &r.prices {
            series
                .entry(node.to_string())
                .or_default()
                .push((i as i32, price.per_kwh_for_display()));
        }
    }
    let all = series.values().flatten().map(|(_, p)| *p);
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p), hi.max(p)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        pad(lo.min(0.0), hi)
    };
    let n = results.len() as i32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err("price")(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(TITLE, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0..n.max(2) - 1, lo..hi)
            .map_err(|e| err("price")(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("Interval start (UTC)")
            .y_desc("c/kWh")
            .x_labels(8)
            .x_label_formatter(&|x| time_label(results, *x))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| err("price")(e.to_string()))?;
        for (k, (node, points)) in series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let style = ShapeStyle::from(&color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(|e| err("price")(e.to_string()))?
                .label(node.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err("price")(e.to_string()))?;
        root.present().map_err(|e| err("price")(e.to_string()))?;
    }
    Ok(accessible(
        svg,
        "Line chart of the clearing price per node over time",
    ))
}

/// Cleared volume per interval as stacked bars: energy traded between participants and energy
/// traded with the utility.
pub fn volume(results: &[IntervalResult]) -> Result<String, ChartError> {
    const TITLE: &str = "Cleared volume per interval (kWh)";
    if results.is_empty() {
        return Ok(placeholder(TITLE, "No cleared intervals yet"));
    }
    let rows: Vec<(f64, f64)> = results
        .iter()
        .map(|r| {
            let local = local_volume(r).0 as f64 / 1000.0;
            let total = traded_volume(r).0 as f64 / 1000.0;
            (local, total)
        })
        .collect();
    let hi = rows.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    let (_, hi) = pad(0.0, hi.max(0.001));
    let n = results.len() as i32;
    let local_color = RGBColor(0, 114, 178);
    let utility_color = RGBColor(150, 150, 150);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| err("volume")(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(TITLE, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0..n, 0.0..hi)
            .map_err(|e| err("volume")(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("Interval start (UTC)")
            .y_desc("kWh")
            .x_labels(8)
            .x_label_formatter(&|x| time_label(results, *x))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| err("volume")(e.to_string()))?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, (local, _))| {
                Rectangle::new(
                    [(i as i32, 0.0), (i as i32 + 1, *local)],
                    local_color.filled(),
                )
            }))
            .map_err(|e| err("volume")(e.to_string()))?
            .label("between participants")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], local_color.filled())
            });
        chart
            .draw_series(rows.iter().enumerate().map(|(i, (local, total))| {
                Rectangle::new(
                    [(i as i32, *local), (i as i32 + 1, *total)],
                    utility_color.filled(),
                )
            }))
            .map_err(|e| err("volume")(e.to_string()))?
            .label("with the utility")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], utility_color.filled())
            });
        // The total as a line on top, so the trend reads at a glance.
        chart
            .draw_series(LineSeries::new(
                rows.iter().enumerate().map(|(i, (_, t))| (i as i32, *t)),
                ShapeStyle::from(&BLACK).stroke_width(1),
            ))
            .map_err(|e| err("volume")(e.to_string()))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err("volume")(e.to_string()))?;
        root.present().map_err(|e| err("volume")(e.to_string()))?;
    }
    Ok(accessible(
        svg,
        "Bar chart of the cleared volume per interval",
    ))
}

/// One price level of an order book: price in minor units per MWh, quantity in Wh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Limit price.
    pub price: i64,
    /// Quantity at that price.
    pub quantity: i64,
}

/// The bids and asks of the market's book depth, merged over its nodes.
pub fn book_levels(book: &BookDepth) -> (Vec<Level>, Vec<Level>) {
    let level = |step: &DepthStep| Level {
        price: step.price,
        quantity: step.quantity_wh,
    };
    let bids = book
        .nodes
        .values()
        .flat_map(|n| n.bids.iter().map(level))
        .collect();
    let asks = book
        .nodes
        .values()
        .flat_map(|n| n.asks.iter().map(level))
        .collect();
    (bids, asks)
}

/// Cumulative step points (kWh, c/kWh): bids from the highest price down, asks from the lowest
/// up.
pub fn depth_curve(levels: &[Level], descending: bool) -> Vec<(f64, f64)> {
    let mut sorted = levels.to_vec();
    sorted.sort_by_key(|l| if descending { -l.price } else { l.price });
    let mut out = Vec::new();
    let mut cumulative = 0i64;
    for l in sorted {
        let price = l.price as f64 / 1000.0;
        out.push((cumulative as f64 / 1000.0, price));
        cumulative = cumulative.saturating_add(l.quantity.max(0));
        out.push((cumulative as f64 / 1000.0, price));
    }
    out
}

/// The order-book depth curve of the next interval.
pub fn depth(book: Option<&BookDepth>, interval: Option<&str>) -> Result<String, ChartError> {
    let title = match interval {
        Some(i) => format!("Order book depth, interval {i}"),
        None => "Order book depth".to_owned(),
    };
    let Some(book) = book else {
        return Ok(placeholder(&title, "No open interval's book yet"));
    };
    let (bids, asks) = book_levels(book);
    if bids.is_empty() && asks.is_empty() {
        return Ok(placeholder(&title, "No orders in the open interval yet"));
    }
    let bid_curve = depth_curve(&bids, true);
    let ask_curve = depth_curve(&asks, false);
    let points = bid_curve.iter().chain(&ask_curve);
    let (max_q, lo, hi) = points.fold((0.0f64, f64::MAX, f64::MIN), |(q, lo, hi), (x, p)| {
        (q.max(*x), lo.min(*p), hi.max(*p))
    });
    let (lo, hi) = pad(lo.min(0.0), hi);
    let (_, max_q) = pad(0.0, max_q.max(0.001));
    let bid_color = RGBColor(0, 158, 115);
    let ask_color = RGBColor(213, 94, 0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err("depth")(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..max_q, lo..hi)
            .map_err(|e| err("depth")(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("Cumulative quantity (kWh)")
            .y_desc("c/kWh")
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| err("depth")(e.to_string()))?;
        for (curve, color, label) in [
            (&bid_curve, bid_color, "bids (buy)"),
            (&ask_curve, ask_color, "asks (sell)"),
        ] {
            if curve.is_empty() {
                continue;
            }
            let style = ShapeStyle::from(&color).stroke_width(2);
            chart
                .draw_series(
                    AreaSeries::new(curve.iter().copied(), lo, color.mix(0.15)).border_style(style),
                )
                .map_err(|e| err("depth")(e.to_string()))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err("depth")(e.to_string()))?;
        root.present().map_err(|e| err("depth")(e.to_string()))?;
    }
    Ok(accessible(
        svg,
        "Step chart of cumulative bids and asks against price",
    ))
}

/// Pads a value range by 10 % (and widens a flat one) so lines do not sit on the frame.
fn pad(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(1e-3);
    let lo = if lo >= 0.0 { lo } else { lo - span * 0.1 };
    (lo, hi + span * 0.1)
}

/// Adds `role="img"` and an `aria-label` to the root element.
fn accessible(svg: String, label: &str) -> String {
    svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{label}\" "),
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::api::market::NodeDepth;

    fn step(price: i64, quantity_wh: i64) -> DepthStep {
        DepthStep {
            price,
            quantity_wh,
            orders: 1,
        }
    }

    fn book(nodes: Vec<(&str, Vec<DepthStep>, Vec<DepthStep>)>) -> BookDepth {
        BookDepth {
            interval: gridmesh_protocol::Interval::parse("2026-06-21T12:00:00Z", 15).unwrap(),
            orders: nodes.len(),
            nodes: nodes
                .into_iter()
                .map(|(n, bids, asks)| (n.to_owned(), NodeDepth { bids, asks }))
                .collect(),
        }
    }

    #[test]
    fn book_levels_merge_nodes_and_depth_curve() {
        let (b, a) = book_levels(&book(vec![
            ("f1", vec![step(30000, 1000), step(35000, 500)], vec![]),
            ("f2", vec![], vec![step(20000, 700)]),
        ]));
        assert_eq!(b.len(), 2);
        assert_eq!(
            a,
            vec![Level {
                price: 20000,
                quantity: 700
            }]
        );
        let curve = depth_curve(&b, true);
        assert_eq!(
            curve,
            vec![(0.0, 35.0), (0.5, 35.0), (0.5, 30.0), (1.5, 30.0)]
        );
    }

    #[test]
    fn empty_inputs_draw_placeholders_without_data() {
        let svg = prices(&[]).unwrap();
        assert!(svg.contains("No cleared intervals yet") && !svg.contains("polyline"));
        assert!(depth(None, None).unwrap().contains("data-empty"));
        let svg = depth(
            Some(&book(vec![("f1", vec![step(30000, 1000)], vec![])])),
            Some("12:00"),
        )
        .unwrap();
        assert!(
            svg.contains("<polygon") || svg.contains("<polyline"),
            "{svg}"
        );
        assert!(svg.contains("aria-label"));
    }
}
