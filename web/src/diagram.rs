//! The single-line diagram: substation → feeders → homes, coloured by **measured** loading
//! (settlement's metered flows of the newest measured interval against the limit in force; a
//! home's metered import/export against its operating envelope), never by the cleared plan.
//! Every box also says its state in words, and links to its detail: a feeder to its history,
//! a home to its participant detail. Served as SVG drawn at the browser's width
//! (`GET /charts/diagram.svg?w=`).

use crate::auth::Session;
use crate::hub::Hub;
use crate::snapshot::Snapshot;
use crate::views::{self, FlowStatus, flow_status, utilisation_pct};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use gridmesh_protocol::units::Wh;
use gridmesh_runtime::http::ApiQuery;
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// One box of the diagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Box {
    /// The node or participant id.
    pub id: String,
    /// Where clicking it leads.
    pub href: String,
    /// The measured state.
    pub status: FlowStatus,
    /// The measured flow in words, e.g. "export 3.100 kWh".
    pub flow: String,
    /// The state in words, e.g. "92 % of limit · near limit".
    pub state: String,
}

/// A feeder and the homes below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feeder {
    /// The feeder's own box.
    pub feeder: Box,
    /// Homes below it the user may see.
    pub homes: Vec<Box>,
    /// Homes below it of other households (a household sees only its own).
    pub others: usize,
}

/// The whole diagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagram {
    /// The measured interval (key), if any.
    pub interval: Option<String>,
    /// The substation (utility connection).
    pub substation: Option<Box>,
    /// Its feeders, in topology order.
    pub feeders: Vec<Feeder>,
}

/// A flow in kWh with 3 decimals and its direction.
pub fn flow_words(wh: i64) -> String {
    let kwh = |w: i64| {
        format!(
            "{}.{:03} kWh",
            w.unsigned_abs() / 1000,
            w.unsigned_abs() % 1000
        )
    };
    match wh {
        0 => "0.000 kWh".into(),
        w if w > 0 => format!("import {}", kwh(w)),
        w => format!("export {}", kwh(w)),
    }
}

/// The status in words (the same words as the Grid page).
pub fn status_words(status: FlowStatus) -> &'static str {
    match status {
        FlowStatus::Normal => "under 90 %",
        FlowStatus::Near => "near limit",
        FlowStatus::Over => "OVER LIMIT",
        FlowStatus::Unlimited => "no limit",
        FlowStatus::NoData => "no metered data",
    }
}

fn state_text(status: FlowStatus, pct: Option<i64>) -> String {
    match pct {
        Some(p) if status != FlowStatus::NoData => {
            format!("{p} % of limit · {}", status_words(status))
        }
        _ => status_words(status).to_owned(),
    }
}

/// Builds the diagram from the snapshot for a user (`may_see` tells which homes it may see).
pub fn diagram(snap: &Snapshot, may_see: impl Fn(&str) -> bool) -> Diagram {
    let grid = views::grid(snap);
    let Some(network) = snap.network() else {
        return Diagram {
            interval: None,
            substation: None,
            feeders: Vec::new(),
        };
    };
    let row_box = |row: &views::FlowRow, href: String| Box {
        id: row.node.clone(),
        href,
        status: row.status,
        flow: row
            .measured
            .as_ref()
            .map(|m| flow_words(m.flow_wh))
            .unwrap_or_else(|| "no metered data".into()),
        state: state_text(row.status, row.utilisation_pct),
    };
    let substation = grid
        .utility
        .as_ref()
        .map(|u| row_box(u, format!("/history?node={}", u.node)));
    let measured = snap.latest_measured();
    let key = measured.map(|m| m.interval.key());
    let result = measured.and_then(|m| snap.result_for(&m.interval));
    let participants = views::participants(snap, None, None);
    let home = |id: &str| {
        let statement = key.as_ref().and_then(|k| {
            snap.statements
                .iter()
                .find(|s| s.participant.as_str() == id && &s.interval == k)
        });
        let envelope =
            result.and_then(|r| r.envelopes.iter().find(|e| e.participant.as_str() == id));
        let (status, flow, pct) = match statement {
            Some(s) => {
                let net = s.imported.0.saturating_sub(s.exported.0);
                let limit = envelope.map(|e| {
                    if net >= 0 {
                        e.import_limit_wh
                    } else {
                        e.export_limit_wh
                    }
                });
                (
                    flow_status(Wh(net), limit),
                    flow_words(net),
                    utilisation_pct(Wh(net), limit),
                )
            }
            None => (FlowStatus::NoData, "no metered data".to_owned(), None),
        };
        Box {
            id: id.to_owned(),
            href: format!("/participants/{id}"),
            status,
            flow,
            state: match pct {
                Some(p) if status != FlowStatus::NoData => {
                    format!("{p} % of envelope · {}", status_words(status))
                }
                _ => status_words(status).to_owned(),
            },
        }
    };
    let feeders = grid
        .branches
        .iter()
        .filter(|b| b.parent.as_deref() == Some(network.root.as_str()))
        .map(|b| {
            let below: Vec<&views::ParticipantRow> = participants
                .iter()
                .filter(|p| p.feeder.as_deref() == Some(b.node.as_str()) || p.node == b.node)
                .collect();
            let homes: Vec<Box> = below
                .iter()
                .filter(|p| may_see(&p.id))
                .map(|p| home(&p.id))
                .collect();
            Feeder {
                feeder: row_box(b, format!("/history?node={}", b.node)),
                others: below.len() - homes.len(),
                homes,
            }
        })
        .collect();
    Diagram {
        interval: key,
        substation,
        feeders,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Fill, stroke and dash of a status (the Grid page's colours; text stays dark on light fills).
fn colours(status: FlowStatus) -> (&'static str, &'static str, &'static str) {
    match status {
        FlowStatus::Normal => ("#e3f4ea", "#1f7a4d", ""),
        FlowStatus::Near => ("#fff1dc", "#a85d00", ""),
        FlowStatus::Over => ("#fde4e1", "#b3261e", ""),
        FlowStatus::Unlimited => ("#eef1f5", "#5b6470", ""),
        FlowStatus::NoData => ("#ffffff", "#6b7280", " stroke-dasharray=\"6 4\""),
    }
}

const TEXT: &str = "font-family=\"sans-serif\" fill=\"#16191d\"";

/// Where a box goes, in SVG pixels.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

fn draw_box(out: &mut String, b: &Box, kind: &str, r: Rect, big: bool) {
    let Rect { x, y, w, h } = r;
    let (fill, stroke, dash) = colours(b.status);
    let status = serde_json::to_value(b.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    // The link's name is its visible text (kind and id, flow, state), nothing hidden beside it.
    let title = match kind {
        "substation" => "Substation",
        "feeder" => "Feeder",
        _ => "Home",
    };
    let (size, small) = if big { (15, 13) } else { (13, 12) };
    let _ = write!(
        out,
        "<a href=\"{href}\" data-link=\"\" data-{kind}=\"{id}\" data-status=\"{status}\">\
         <rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"{dash}/>\
         <rect x=\"{x}\" y=\"{y}\" width=\"8\" height=\"{h}\" rx=\"3\" fill=\"{stroke}\"/>\
         <text x=\"{tx}\" y=\"{t1}\" font-size=\"{size}\" font-weight=\"700\" {TEXT}>{title} {id}</text>\
         <text x=\"{tx}\" y=\"{t2}\" font-size=\"{small}\" {TEXT}>{flow}</text>\
         <text x=\"{tx}\" y=\"{t3}\" font-size=\"{small}\" {TEXT}>{state}</text></a>",
        href = esc(&b.href),
        id = esc(&b.id),
        sw = if b.status == FlowStatus::Over { 3 } else { 2 },
        tx = x + 16,
        t1 = y + 18,
        t2 = y + 18 + i64::from(small) + 4,
        t3 = y + 18 + 2 * (i64::from(small) + 4),
        flow = esc(&b.flow),
        state = esc(&b.state),
    );
}

/// Draws the diagram at `width` CSS pixels: feeders side by side as the width allows (one
/// column on a phone), each with its homes below it.
pub fn svg(d: &Diagram, width: u32) -> String {
    let width = i64::from(width.clamp(280, 1600));
    let margin = 8;
    let box_h = 62;
    let home_h = 60;
    let gap = 8;
    let cols = ((width - 2 * margin) / 230).clamp(1, d.feeders.len().max(1) as i64);
    let col_w = (width - 2 * margin) / cols;
    let mut body = String::new();
    let mut y = margin;
    if let Some(s) = &d.substation {
        let w = (width - 2 * margin).min(340);
        draw_box(
            &mut body,
            s,
            "substation",
            Rect {
                x: (width - w) / 2,
                y,
                w,
                h: box_h,
            },
            true,
        );
        y += box_h;
    }
    let line = "stroke=\"#16191d\" stroke-width=\"2\"";
    let top_of_rows = y;
    let mut row_top = y + 24;
    for row in d.feeders.chunks(cols as usize) {
        let tallest = row
            .iter()
            .map(|f| f.homes.len() as i64 + i64::from(f.others > 0))
            .max()
            .unwrap_or(0);
        // The bus bar from the substation down to this row of feeders.
        let first_x = margin + col_w / 2;
        let last_x = margin + col_w * (row.len() as i64 - 1) + col_w / 2;
        let _ = write!(
            body,
            "<line x1=\"{cx}\" y1=\"{top}\" x2=\"{cx}\" y2=\"{bus}\" {line}/>\
             <line x1=\"{first_x}\" y1=\"{bus}\" x2=\"{lx}\" y2=\"{bus}\" {line}/>",
            cx = width / 2,
            top = if row_top == top_of_rows + 24 {
                top_of_rows
            } else {
                row_top - 24
            },
            bus = row_top - 12,
            lx = last_x.max(width / 2),
        );
        for (i, f) in row.iter().enumerate() {
            let x = margin + col_w * i as i64;
            let cx = x + col_w / 2;
            let w = col_w - 2 * gap;
            let _ = write!(
                body,
                "<line x1=\"{cx}\" y1=\"{a}\" x2=\"{cx}\" y2=\"{row_top}\" {line}/>",
                a = row_top - 12
            );
            draw_box(
                &mut body,
                &f.feeder,
                "feeder",
                Rect {
                    x: x + gap,
                    y: row_top,
                    w,
                    h: box_h,
                },
                false,
            );
            let mut hy = row_top + box_h + gap;
            for home in &f.homes {
                let _ = write!(
                    body,
                    "<line x1=\"{lx}\" y1=\"{a}\" x2=\"{lx}\" y2=\"{b}\" stroke=\"#4a5360\" stroke-width=\"1\"/>",
                    lx = x + gap + 4,
                    a = hy - gap,
                    b = hy + home_h / 2
                );
                draw_box(
                    &mut body,
                    home,
                    "home",
                    Rect {
                        x: x + gap + 14,
                        y: hy,
                        w: w - 14,
                        h: home_h,
                    },
                    false,
                );
                hy += home_h + gap;
            }
            if f.others > 0 {
                let _ = write!(
                    body,
                    "<text x=\"{tx}\" y=\"{ty}\" font-size=\"12\" {TEXT}>+ {n} other homes (private)</text>",
                    tx = x + gap + 16,
                    ty = hy + 18,
                    n = f.others
                );
            }
        }
        row_top += box_h + gap + tallest * (home_h + gap) + 48;
    }
    if d.substation.is_none() {
        body.push_str(&format!(
            "<text x=\"{margin}\" y=\"30\" font-size=\"15\" {TEXT}>No topology yet: waiting for the market.</text>"
        ));
        row_top = 60;
    }
    let height = row_top.max(y + 40);
    let title = match &d.interval {
        Some(k) => format!(
            "Single-line diagram, measured interval {k}: substation, feeders and homes coloured by measured loading"
        ),
        None => "Single-line diagram: no metered data yet".to_owned(),
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"group\" aria-label=\"{t}\" data-interval=\"{i}\">{body}</svg>",
        t = esc(&title),
        i = esc(d.interval.as_deref().unwrap_or("")),
    )
}

/// The drawing width asked for.
#[derive(Debug, Deserialize)]
struct DiagramQuery {
    w: Option<u32>,
}

/// The diagram route (merged into [`crate::routes::router`], behind its session guard): any
/// session; a household sees its own home's figures only.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new().route("/charts/diagram.svg", get(diagram_svg))
}

async fn diagram_svg(
    State(hub): State<Arc<Hub>>,
    Extension(session): Extension<Arc<Session>>,
    ApiQuery(q): ApiQuery<DiagramQuery>,
) -> Response {
    let snap = hub.snapshot();
    let d = diagram(&snap, |id| session.role.may_read_participant(id));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        svg(&d, q.w.unwrap_or(1000)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: &str, status: FlowStatus) -> Box {
        Box {
            id: id.into(),
            href: format!("/participants/{id}"),
            status,
            flow: flow_words(-3100),
            state: state_text(status, Some(97)),
        }
    }

    #[test]
    fn words_carry_the_state_as_well_as_the_colour() {
        assert_eq!(flow_words(-3100), "export 3.100 kWh");
        assert_eq!(flow_words(25), "import 0.025 kWh");
        assert_eq!(flow_words(0), "0.000 kWh");
        assert_eq!(
            state_text(FlowStatus::Near, Some(95)),
            "95 % of limit · near limit"
        );
        assert_eq!(state_text(FlowStatus::NoData, None), "no metered data");
    }

    #[test]
    fn svg_links_every_box_and_wraps_to_the_width() {
        let d = Diagram {
            interval: Some("2026-06-21T12:00:00Z/15".into()),
            substation: Some(b("root", FlowStatus::Normal)),
            feeders: vec![
                Feeder {
                    feeder: b("f1", FlowStatus::Over),
                    homes: vec![b("h001", FlowStatus::Near), b("h002", FlowStatus::NoData)],
                    others: 0,
                },
                Feeder {
                    feeder: b("f2", FlowStatus::Normal),
                    homes: vec![],
                    others: 3,
                },
            ],
        };
        let wide = svg(&d, 1200);
        assert!(wide.contains("data-feeder=\"f1\" data-status=\"over\""));
        assert!(wide.contains("href=\"/participants/h001\""));
        assert!(wide.contains("OVER LIMIT") && wide.contains("near limit"));
        assert!(wide.contains("stroke-dasharray"), "no data is dashed");
        assert!(wide.contains("+ 3 other homes (private)"));
        let phone = svg(&d, 360);
        let height = |s: &str| -> i64 {
            s.split("height=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(
            height(&phone) > height(&wide),
            "one column on a phone is taller"
        );
        for size in phone.split("font-size=\"").skip(1) {
            let px: i64 = size.split('"').next().unwrap().parse().unwrap();
            assert!(px >= 12);
        }
    }
}
