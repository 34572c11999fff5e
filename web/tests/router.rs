//! Router tests: every page and API route through `tower::ServiceExt::oneshot`, with the market
//! and settlement played by the **test doubles** in `support` (small axum servers on
//! 127.0.0.1:0 serving replies shaped like the shared REST contract). They check the dashboard's
//! own logic; the neighbourhood tests run it against the real services.

mod support;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use gridmesh_runtime::shutdown::Shutdown;
use gridmesh_web::auth::{Role, SESSION_COOKIE};
use gridmesh_web::hub::Hub;
use gridmesh_web::{WebConfig, refresh, routes};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

async fn hub_for(up: &support::Upstreams) -> Arc<Hub> {
    let hub = Hub::new(WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        market_url: format!("http://{}", up.market),
        settlement_url: format!("http://{}/", up.settlement),
        ..WebConfig::default()
    })
    .unwrap();
    // Twice: participants are learned on the first round, their balances on the second.
    refresh::refresh_once(&hub, "test").await;
    refresh::refresh_once(&hub, "test").await;
    hub
}

/// A client whose requests carry a fresh admin session of `hub`.
fn logged_in_client(hub: &Hub) -> reqwest::Client {
    let (session, _) = hub.auth.start_session("test-admin", Role::Admin);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "cookie",
        format!("{SESSION_COOKIE}={session}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// GETs `uri` as a logged-in admin (the access rules have their own tests in `access.rs`).
async fn get(hub: &Arc<Hub>, uri: &str) -> (StatusCode, String, String) {
    let (session, _) = hub.auth.start_session("test-admin", Role::Admin);
    let request = Request::get(uri)
        .header("host", "127.0.0.1")
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .body(Body::empty())
        .unwrap();
    let response = routes::router(hub.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = to_bytes(response.into_body(), 4 << 20).await.unwrap();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn get_json(hub: &Arc<Hub>, uri: &str) -> Value {
    let (status, content_type, body) = get(hub, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    assert!(
        content_type.starts_with("application/json"),
        "{uri}: {content_type}"
    );
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn every_page_serves_the_shell_and_assets() {
    let up = support::start(6).await;
    let hub = hub_for(&up).await;
    for uri in [
        "/",
        "/grid",
        "/market",
        "/participants",
        "/participants/h001",
        "/ledger",
        "/ledger/entries/abc",
        "/alerts",
    ] {
        let (status, content_type, body) = get(&hub, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(content_type.starts_with("text/html"), "{uri}");
        assert!(body.contains("<nav aria-label=\"Pages\">"), "{uri}");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "no external assets: {uri}"
        );
    }
    for (uri, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let (status, content_type, body) = get(&hub, uri).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with(kind), "{uri}: {content_type}");
        assert!(!body.is_empty());
    }
    let (status, _, body) = get(&hub, "/assets/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("not_found"));
    let (status, _, _) = get(&hub, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn row<'a>(grid: &'a Value, node: &str) -> &'a Value {
    grid["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["node"] == node)
        .unwrap_or_else(|| panic!("no row for {node}: {grid}"))
}

#[tokio::test]
async fn grid_shows_measured_beside_cleared_with_the_colour_from_measured() {
    let up = support::start(6).await;
    let hub = hub_for(&up).await;
    let grid = get_json(&hub, "/api/grid").await;
    assert_eq!(grid["sources"]["market"]["ok"], true);
    assert_eq!(grid["root"], "sub");
    // The newest measured interval is 13:00; 13:15 is cleared (a plan) but not measured yet.
    assert_eq!(grid["measured_interval"], "2026-06-21T13:00:00Z/15");
    assert_eq!(grid["latest_cleared_interval"], "2026-06-21T13:15:00Z/15");
    assert_eq!(
        grid["cleared_interval"], "2026-06-21T13:00:00Z/15",
        "the plan shown is the one of the measured interval"
    );
    assert_eq!(
        grid["metered_summary"],
        "Metered interval 2026-06-21T13:00:00Z/15: 2 of 3 homes reported"
    );
    let names: Vec<&str> = grid["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["f1", "h001", "h002", "f2", "h003"],
        "depth-first tree order"
    );

    // f1: the plan had it importing 2 400 Wh (48 % of its import limit, which would be green);
    // the meters say it exported 4 500 Wh against a 4 000 Wh export limit: red, over limit.
    let f1 = row(&grid, "f1");
    assert_eq!(f1["measured"]["flow_wh"], -4500);
    assert_eq!(f1["measured"]["homes_reporting"], 1);
    assert_eq!(f1["measured"]["homes_enrolled"], 2);
    assert_eq!(f1["cleared_flow_wh"], 2400);
    assert_eq!(f1["cleared_at_limit"], false);
    assert_eq!(f1["limit_wh"], 4000, "the limit in the measured direction");
    assert_eq!(f1["import_limit_wh"], 5000);
    assert_eq!(f1["utilisation_pct"], 113);
    assert_eq!(f1["status"], "over");
    assert_eq!(f1["participants"], 2);
    // f2: 18 500 of 20 000 Wh measured (92.5 %) is amber; its plan (1 000 Wh) was not.
    let f2 = row(&grid, "f2");
    assert_eq!(f2["measured"]["flow_wh"], -18500);
    assert_eq!(f2["cleared_flow_wh"], -1000);
    assert_eq!(f2["status"], "near");
    // A home that did not report has no metered data (not its plan).
    let h002 = row(&grid, "h002");
    assert_eq!(h002["measured"], Value::Null);
    assert_eq!(h002["status"], "no_data");
    assert_eq!(row(&grid, "h001")["status"], "unlimited");
    // The utility connection: measured net export 23 000 Wh beside the cleared 500 Wh import.
    let utility = &grid["utility"];
    assert_eq!(utility["node"], "sub");
    assert_eq!(utility["parent"], Value::Null);
    assert_eq!(utility["measured"]["flow_wh"], -23000);
    assert_eq!(utility["measured"]["homes_reporting"], 2);
    assert_eq!(utility["cleared_flow_wh"], 500);
    assert_eq!(utility["limit_wh"], Value::Null, "no utility export limit");
    assert_eq!(utility["import_limit_wh"], 100000);
    assert_eq!(utility["status"], "unlimited");
    assert_eq!(utility["participants"], 3);

    assert_eq!(grid["gateways"].as_array().unwrap().len(), 3);
    assert_eq!(
        grid["gateways"][0]["status"], "unknown",
        "no broker configured"
    );
    assert_eq!(grid["gateways"][0]["envelope"], Value::Null);
    // The page labels its columns without ambiguity.
    let (_, _, html) = get(&hub, "/grid").await;
    for label in ["Measured (metered)", "Cleared (plan)", "Limit"] {
        assert!(html.contains(label), "the Grid table has a {label} column");
    }
}

#[tokio::test]
async fn grid_says_no_metered_data_yet_and_never_colours_the_plan() {
    let up = support::start(6).await;
    up.fixture.lock().unwrap().flows.clear();
    let hub = hub_for(&up).await;
    let grid = get_json(&hub, "/api/grid").await;
    assert_eq!(grid["measured_interval"], Value::Null);
    assert!(
        grid["metered_summary"]
            .as_str()
            .unwrap()
            .starts_with("no metered data yet"),
        "{grid}"
    );
    // The latest plan has f1 at its import limit, yet nothing is coloured from it.
    assert_eq!(grid["cleared_interval"], "2026-06-21T13:15:00Z/15");
    let f1 = row(&grid, "f1");
    assert_eq!(f1["cleared_flow_wh"], 5000);
    assert_eq!(f1["cleared_at_limit"], true);
    assert_eq!(f1["measured"], Value::Null);
    assert_eq!(f1["status"], "no_data");
    assert_eq!(f1["utilisation_pct"], Value::Null);
    for b in grid["branches"].as_array().unwrap() {
        assert_eq!(b["status"], "no_data", "{b}");
    }
    assert_eq!(grid["utility"]["status"], "no_data");
    assert_eq!(grid["utility"]["cleared_flow_wh"], 9000);
    let alerts = get_json(&hub, "/api/alerts").await;
    assert!(
        !alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "congestion"),
        "a plan at its limit is no congestion alert: {alerts}"
    );
    let (_, _, script) = get(&hub, "/assets/app.js").await;
    assert!(script.contains("no metered data yet"));
}

/// Control status as the gateways publish it on their retained `…/control` topics, applied
/// through the same code path the broker subscription uses.
#[tokio::test]
async fn curtailed_energy_per_feeder_from_control_status() {
    use gridmesh_protocol::Interval;
    use gridmesh_protocol::envelope::EnvelopeSource;
    let up = support::start(6).await;
    let hub = hub_for(&up).await;
    let now = Interval::parse("2026-06-21T13:15:00Z", 15).unwrap();
    let before = Interval::parse("2026-06-21T13:00:00Z", 15).unwrap();
    let publish = |gateway: &str, status: &gridmesh_protocol::envelope::ControlStatus| {
        let topic = gridmesh_protocol::topics::gateway_control(
            &gridmesh_protocol::GatewayId::new(gateway).unwrap(),
        );
        gridmesh_web::gateways::apply_message(&hub, &topic, &serde_json::to_vec(status).unwrap());
    };
    publish(
        "gw-h001",
        &support::control_status("gw-h001", now, EnvelopeSource::Market, 250, 4_000),
    );
    publish(
        "gw-h002",
        &support::control_status("gw-h002", now, EnvelopeSource::Default, 700, 1_000),
    );
    // h003 still reports the previous interval: it counts toward the running total only.
    publish(
        "gw-h003",
        &support::control_status("gw-h003", before, EnvelopeSource::Default, 90, 500),
    );
    // A message naming another gateway than its topic, and a malformed one, are ignored.
    publish(
        "gw-h003",
        &support::control_status("gw-h001", now, EnvelopeSource::Default, 9_999, 9_999),
    );
    gridmesh_web::gateways::apply_message(&hub, "gridmesh/gateways/gw-h003/control", b"{\"x\":1}");

    let grid = get_json(&hub, "/api/grid").await;
    assert_eq!(grid["control_interval"], "2026-06-21T13:15:00Z/15");
    let f1 = &row(&grid, "f1")["control"];
    assert_eq!(f1["gateways"], 2);
    assert_eq!(f1["reporting"], 2);
    assert_eq!(f1["curtailed_wh"], 950);
    assert_eq!(f1["curtailed_total_wh"], 5000);
    assert_eq!(f1["on_default"], 1);
    let f2 = &row(&grid, "f2")["control"];
    assert_eq!(f2["gateways"], 1);
    assert_eq!(f2["reporting"], 0);
    assert_eq!(f2["curtailed_wh"], 0);
    assert_eq!(f2["curtailed_total_wh"], 500);
    assert_eq!(f2["on_default"], 0);
    let all = &grid["utility"]["control"];
    assert_eq!(all["curtailed_wh"], 950);
    assert_eq!(all["curtailed_total_wh"], 5500);
    assert_eq!(all["on_default"], 1);
    let gw = |id: &str| {
        grid["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["gateway"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(gw("gw-h002")["envelope"], "default");
    assert_eq!(gw("gw-h002")["curtailed_wh"], 700);
    assert_eq!(gw("gw-h001")["envelope"], "market");
    assert_eq!(gw("gw-h003")["envelope"], Value::Null, "stale status");
    let (_, _, metrics) = get(&hub, "/metrics").await;
    assert!(
        metrics.contains("gridmesh_web_control_messages_rejected_total 2"),
        "{metrics}"
    );
    // An empty retained payload clears the gateway's status.
    gridmesh_web::gateways::apply_message(&hub, "gridmesh/gateways/gw-h002/control", b"");
    let grid = get_json(&hub, "/api/grid").await;
    assert_eq!(row(&grid, "f1")["control"]["curtailed_wh"], 250);
    assert_eq!(row(&grid, "f1")["control"]["on_default"], 0);
}

#[tokio::test]
async fn market_api_and_charts_carry_real_data() {
    let up = support::start(6).await;
    let hub = hub_for(&up).await;
    let market = get_json(&hub, "/api/market").await;
    let intervals = market["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 6);
    assert_eq!(
        intervals[0]["interval"], "2026-06-21T13:15:00Z/15",
        "newest first"
    );
    assert_eq!(intervals[0]["traded_wh"], 1500);
    assert_eq!(intervals[0]["local_wh"], 1000);
    assert_eq!(intervals[0]["prices"]["f1"], 265000);
    assert_eq!(market["congestion"][0]["node"], "f1");
    assert_eq!(market["next_interval"], "2026-06-21T13:00:00Z");

    for (uri, shape) in [
        ("/charts/prices.svg", "<polyline"),
        ("/charts/volume.svg", "<rect"),
        ("/charts/depth.svg", "<polygon"),
    ] {
        let (status, content_type, svg) = get(&hub, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(content_type, "image/svg+xml");
        assert!(svg.starts_with("<svg"), "{uri}");
        assert!(svg.contains(shape), "{uri} has data shapes");
        assert!(!svg.contains("data-empty"), "{uri} is not the placeholder");
    }
    let (_, _, prices) = get(&hub, "/charts/prices.svg").await;
    for node in ["f1", "f2", "sub"] {
        assert!(
            prices.contains(&format!("{node}\n</text>")),
            "legend names {node}"
        );
    }
    assert!(prices.contains("13:15"), "time axis labels");
}

#[tokio::test]
async fn participants_search_filter_and_detail() {
    let up = support::start(4).await;
    let hub = hub_for(&up).await;
    let all = get_json(&hub, "/api/participants").await;
    let rows = all["participants"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let h001 = rows.iter().find(|r| r["id"] == "h001").unwrap();
    assert_eq!(h001["feeder"], "f1");
    assert_eq!(h001["bought_wh"], 4 * 1500);
    // 1500 Wh at 200, 205, 210, 215 €/MWh (minor units per MWh ×100): 30+30.75→31, ...
    let expected_spent: i64 = (0..4)
        .map(|i| ((200_000 + 5_000 * i) * 1_500 + 500_000) / 1_000_000)
        .sum();
    assert_eq!(h001["spent"], expected_spent);
    assert_eq!(h001["import_wh"], 2100);
    assert_eq!(h001["settled_net"], -300);
    assert_eq!(
        h001["generation_wh"],
        Value::Null,
        "no broker, so no readings"
    );
    assert_eq!(h001["tokens_wh"], 1000 + 1001 + 1002);
    assert_eq!(h001["lots"], 3);
    let h003 = rows.iter().find(|r| r["id"] == "h003").unwrap();
    assert_eq!(h003["sold_wh"], 4 * 1000);
    assert_eq!(h003["export_wh"], 1900);
    assert_eq!(h003["settled_net"], 200);
    assert_eq!(h003["tokens_wh"], 0);

    let within = get_json(&hub, "/api/participants?node=f1").await;
    let ids: Vec<&str> = within["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h001", "h002"]);
    let search = get_json(&hub, "/api/participants?q=GW-H003").await;
    assert_eq!(search["participants"].as_array().unwrap().len(), 1);
    let none = get_json(&hub, "/api/participants?q=zzz").await;
    assert!(none["participants"].as_array().unwrap().is_empty());

    let detail = get_json(&hub, "/api/participants/h001").await;
    assert_eq!(detail["holdings"].as_array().unwrap().len(), 3);
    assert!(detail["errors"].as_array().unwrap().is_empty());
    let (status, _, body) = get(&hub, "/api/participants/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no participant nobody"), "{body}");
}

#[tokio::test]
async fn ledger_routes_pass_entries_and_proofs_through() {
    let up = support::start(2).await;
    let hub = hub_for(&up).await;
    let blocks = get_json(&hub, "/api/ledger/blocks").await;
    assert_eq!(blocks["blocks"][0]["height"], 0);
    let block = get_json(&hub, "/api/ledger/blocks/0").await;
    let hash = block["entries"][1].as_str().unwrap().to_owned();
    let entry = get_json(&hub, &format!("/api/ledger/entries/{hash}")).await;
    assert_eq!(entry["hash"], hash);
    assert_eq!(entry["proof"].as_array().unwrap().len(), 2);
    assert_eq!(entry["body"]["kind"], "mint");
    assert_eq!(entry["merkle_root"], up.fixture.lock().unwrap().ledger.root);

    let (status, _, body) = get(&hub, "/api/ledger/blocks/9").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = get(&hub, "/api/ledger/blocks/x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a number"));
    let (status, _, body) = get(&hub, "/api/ledger/entries/not-hex").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not hexadecimal"), "{body}");
}

#[tokio::test]
async fn alerts_cover_measured_congestion_envelopes_quarantine_and_imbalance() {
    let up = support::start(6).await;
    let hub = hub_for(&up).await;
    let alerts = get_json(&hub, "/api/alerts").await;
    let list = alerts["alerts"].as_array().unwrap();
    let kinds: Vec<&str> = list.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "congestion",
            "envelope_violation",
            "quarantine",
            "imbalance",
            "cleared_at_limit"
        ],
        "{alerts}"
    );
    // Congestion is what the meters saw, against the limit, with the plan beside it.
    let congestion = &list[0];
    assert_eq!(congestion["severity"], "critical");
    assert_eq!(congestion["subject"], "f1");
    assert_eq!(congestion["interval"], "2026-06-21T13:00:00Z/15");
    assert_eq!(
        congestion["message"],
        "f1 exported 4 500 Wh, limit 4 000 Wh (measured); 1 of 2 homes reported, so the real flow may be larger; cleared (plan) 2 400 Wh import"
    );
    // The envelope violation names the home and the intervals.
    let envelope = &list[1];
    assert_eq!(envelope["severity"], "critical");
    assert_eq!(envelope["subject"], "h001");
    assert_eq!(envelope["interval"], "2026-06-21T13:00:00Z/15");
    let message = envelope["message"].as_str().unwrap();
    assert!(
        message.starts_with("Home h001 (gateway gw-h001, node h001) exceeded its operating envelope in 3 intervals in a row, intervals starting 2026-06-21 12:30 to 13:00 UTC (15 min): 1 800 Wh export beyond it; still going"),
        "{message}"
    );
    assert!(
        list[2]["message"]
            .as_str()
            .unwrap()
            .contains("register went down")
    );
    // The plan at its limit is only an informational note.
    let note = &list[4];
    assert_eq!(note["severity"], "info");
    assert_eq!(note["subject"], "f1");
    assert_eq!(note["interval"], "2026-06-21T13:15:00Z/15");
    assert!(
        note["message"]
            .as_str()
            .unwrap()
            .starts_with("f1 cleared at limit (plan): 5 000 Wh import of 5 000 Wh"),
        "{note}"
    );
    let status = get_json(&hub, "/api/status").await;
    assert_eq!(status["alerts"], 5);
    let ready = get_json(&hub, "/api/ready").await;
    assert_eq!(ready["ready"], true, "{ready}");
}

#[tokio::test]
async fn an_unreachable_market_is_named_and_settlement_still_updates() {
    let up = support::start(2).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hub = Hub::new(WebConfig {
        market_url: format!("http://{closed}"),
        settlement_url: format!("http://{}", up.settlement),
        request_timeout_ms: 1_000,
        ..WebConfig::default()
    })
    .unwrap();
    refresh::refresh_once(&hub, "test").await;
    let grid = get_json(&hub, "/api/grid").await;
    let error = grid["sources"]["market"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("market unreachable at http://{closed}/status")),
        "{error}"
    );
    assert_eq!(grid["sources"]["settlement"]["ok"], true);
    assert!(grid["branches"].as_array().unwrap().is_empty());
    let blocks = get_json(&hub, "/api/ledger/blocks").await;
    assert_eq!(blocks["blocks"].as_array().unwrap().len(), 1);
    let alerts = get_json(&hub, "/api/alerts").await;
    assert_eq!(alerts["alerts"][0]["kind"], "service");
    assert_eq!(alerts["alerts"][0]["subject"], "market");
    let (_, _, svg) = get(&hub, "/charts/prices.svg").await;
    assert!(svg.contains("No cleared intervals yet"));
    let (_, _, metrics) = get(&hub, "/metrics").await;
    assert!(metrics.contains("gridmesh_web_market_up 0"), "{metrics}");
    assert!(metrics.contains("gridmesh_web_upstream_errors_total{service=\"market\"} 1"));
    let ready = get_json(&hub, "/api/ready").await;
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["missing"][0], "market reachable");
    let health = get_json(&hub, "/healthz").await;
    assert_eq!(health["status"], "ok");
}

/// The library entry point over a real socket: binds port 0, refreshes from the doubles on its
/// own, streams a change to a browser-like SSE client, and shuts down cleanly.
#[tokio::test]
async fn serve_binds_refreshes_and_streams_changes() {
    let up = support::start(3).await;
    let shutdown = Shutdown::new();
    let running = gridmesh_web::serve(
        WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            market_url: format!("http://{}", up.market),
            settlement_url: format!("http://{}", up.settlement),
            poll_interval_ms: 100,
            upstream_token: Some("auditor-secret".into()),
            ..WebConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_ne!(running.addr.port(), 0);
    let client = logged_in_client(&running.hub);
    let mut events = client
        .get(format!("{}/api/events", running.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    // Wait (bounded) for an update that reports the market reachable.
    let mut seen = String::new();
    let found = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(chunk) = events.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("\"market_ok\":true") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "no update with the market reachable: {seen}");
    assert!(seen.contains("event: update"));
    let grid: Value = client
        .get(format!("{}/api/grid", running.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(grid["branches"].as_array().unwrap().len(), 5);
    // The upstream credential (issue 13): every request to the market and settlement, the
    // event streams included, carries the auditor token.
    let seen = up.authorizations.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|a| a == "Bearer auditor-secret"),
        "{seen:?}"
    );
    drop(events);
    tokio::time::timeout(std::time::Duration::from_secs(10), shutdown.stop())
        .await
        .expect("every task stops on shutdown");
}

/// Settlement answers `/ledger/blocks` with a shape that is not the shared `BlockSummary`:
/// settlement is shown as unavailable with the decoder's reason (an alert names it), and the
/// blocks read before stay instead of the column going blank.
#[tokio::test]
async fn a_reply_that_is_not_the_shared_type_shows_the_source_unavailable() {
    use axum::Json;
    use axum::extract::State;
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicBool, Ordering};

    let up = support::start(2).await;
    let broken = Arc::new(AtomicBool::new(false));
    let block = support::Ledger::new().block();
    let settlement = axum::Router::new()
        .route(
            "/ledger/blocks",
            axum::routing::get(|State(broken): State<Arc<AtomicBool>>| async move {
                if broken.load(Ordering::SeqCst) {
                    // A renamed field: `height` became `block_height`.
                    let mut v = serde_json::to_value(vec![block]).unwrap();
                    let b = v[0].as_object_mut().unwrap();
                    let h = b.remove("height").unwrap();
                    b.insert("block_height".into(), h);
                    Json(v).into_response()
                } else {
                    Json(vec![block]).into_response()
                }
            }),
        )
        .with_state(broken.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, settlement).await.unwrap() });

    let hub = Hub::new(WebConfig {
        market_url: format!("http://{}", up.market),
        settlement_url: format!("http://{addr}"),
        ..WebConfig::default()
    })
    .unwrap();
    refresh::refresh_once(&hub, "test").await;
    let blocks = get_json(&hub, "/api/ledger/blocks").await;
    assert_eq!(blocks["sources"]["settlement"]["ok"], true, "{blocks}");
    assert_eq!(blocks["blocks"].as_array().unwrap().len(), 1);

    broken.store(true, Ordering::SeqCst);
    refresh::refresh_once(&hub, "test").await;
    let blocks = get_json(&hub, "/api/ledger/blocks").await;
    let settlement = &blocks["sources"]["settlement"];
    assert_eq!(settlement["ok"], false, "{blocks}");
    let error = settlement["error"].as_str().unwrap();
    assert!(
        error.contains("/ledger/blocks") && error.contains("not the shared protocol type"),
        "{error}"
    );
    assert_eq!(
        blocks["blocks"][0]["height"], 0,
        "the blocks read before stay"
    );
    assert_eq!(
        blocks["sources"]["market"]["ok"], true,
        "the market still updates"
    );
    let alerts = get_json(&hub, "/api/alerts").await;
    let service: Vec<&Value> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "service")
        .collect();
    assert_eq!(service.len(), 1, "{alerts}");
    assert_eq!(service[0]["subject"], "settlement");
}
