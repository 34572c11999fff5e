//! History ranges, the single-line diagram and the participants' period through the router,
//! with the market and settlement played by the test doubles in `support`.

mod support;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use gridmesh_web::auth::{Role, SESSION_COOKIE};
use gridmesh_web::hub::Hub;
use gridmesh_web::{WebConfig, refresh, routes};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

async fn hub_for(up: &support::Upstreams, history_intervals: usize) -> Arc<Hub> {
    let hub = Hub::new(WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        market_url: format!("http://{}", up.market),
        settlement_url: format!("http://{}/", up.settlement),
        history_intervals,
        ..WebConfig::default()
    })
    .unwrap();
    refresh::refresh_once(&hub, "test").await;
    refresh::refresh_once(&hub, "test").await;
    hub
}

async fn get_as(hub: &Arc<Hub>, role: Role, uri: &str) -> (StatusCode, String) {
    let (session, _) = hub.auth.start_session("tester", role);
    let request = Request::get(uri)
        .header("host", "127.0.0.1")
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .body(Body::empty())
        .unwrap();
    let response = routes::router(hub.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 4 << 20).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn json(hub: &Arc<Hub>, uri: &str) -> Value {
    let (status, body) = get_as(hub, Role::Admin, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn ranges_bucket_on_the_server_and_read_older_intervals_once() {
    // 40 cleared intervals upstream (12:00 to 22:00), only the newest 4 held in the snapshot.
    let up = support::start(40).await;
    let hub = hub_for(&up, 4).await;
    assert_eq!(hub.snapshot().results.len(), 4);

    let six = json(&hub, "/api/history?range=6h").await;
    assert_eq!(six["range"], "6h");
    assert_eq!(six["bucket_minutes"], 15);
    assert_eq!(six["node"], "sub", "the substation by default");
    assert_eq!(six["from"], "2026-06-21T16:00:00Z");
    assert_eq!(six["to"], "2026-06-21T22:00:00Z");
    // Older than the snapshot: read from the market once, so all 24 intervals are there.
    assert_eq!(six["buckets"].as_array().unwrap().len(), 24);

    let week = json(&hub, "/api/history?range=7d&node=f1").await;
    assert_eq!(week["bucket_minutes"], 120);
    let buckets = week["buckets"].as_array().unwrap();
    // 40 intervals of 15 min from 12:00 fall into 2-hour buckets: 12–14 … 20–22.
    assert_eq!(buckets.len(), 5);
    assert!(buckets.len() as i64 <= gridmesh_web::history::MAX_BUCKETS);
    let first = &buckets[0];
    assert_eq!(first["intervals"], 8);
    assert!(first["cleared_peak_wh"].is_i64());
    assert_eq!(first["import_limit_wh"], 5000);
    assert_eq!(first["export_limit_wh"], 4000);
    assert!(first["prices"]["f1"].is_i64());

    let custom = json(
        &hub,
        "/api/history?range=custom&from=2026-06-21T11:45:00Z&to=2026-06-21T12:30:00Z&node=f1",
    )
    .await;
    assert_eq!(custom["buckets"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_ranges_and_nodes_say_what_to_do() {
    let up = support::start(6).await;
    let hub = hub_for(&up, 96).await;
    let (status, body) = get_as(&hub, Role::Viewer, "/api/history?range=3w").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("use 6h, 24h, 7d or custom"), "{body}");
    let (status, body) = get_as(&hub, Role::Viewer, "/api/history?range=custom&from=x&to=y").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("RFC 3339"), "{body}");
    let (status, body) = get_as(&hub, Role::Viewer, "/api/history?node=f9").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("choose one of sub, f1, f2"), "{body}");
    let (status, body) = get_as(&hub, Role::Viewer, "/charts/history/pie.svg").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("flow.svg, price.svg or volume.svg"), "{body}");
}

#[tokio::test]
async fn history_charts_are_drawn_at_the_width_asked_with_dates() {
    let up = support::start(12).await;
    let hub = hub_for(&up, 96).await;
    for chart in ["flow", "price", "volume"] {
        let (status, svg) = get_as(
            &hub,
            Role::Viewer,
            &format!("/charts/history/{chart}.svg?range=24h&node=f1&w=390"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{chart}: {svg}");
        assert!(svg.contains("width=\"390\""), "{chart}");
        assert!(svg.contains("21 Jun"), "{chart}: dates on the axis");
        assert!(svg.contains("role=\"img\""));
    }
}

#[tokio::test]
async fn the_diagram_links_feeders_and_homes_and_hides_other_households() {
    let up = support::start(6).await;
    let hub = hub_for(&up, 96).await;
    let (status, svg) = get_as(&hub, Role::Viewer, "/charts/diagram.svg?w=1200").await;
    assert_eq!(status, StatusCode::OK);
    assert!(svg.contains("data-substation=\"sub\""), "{svg}");
    assert!(svg.contains("data-feeder=\"f1\"") && svg.contains("data-feeder=\"f2\""));
    assert!(svg.contains("href=\"/history?node=f1\""));
    for home in ["h001", "h002", "h003"] {
        assert!(
            svg.contains(&format!("href=\"/participants/{home}\"")),
            "{home}"
        );
    }
    // State in words beside the colour.
    assert!(svg.contains("% of limit") || svg.contains("no metered data"));
    let household = Role::Household {
        participant: "h001".into(),
    };
    let (_, own) = get_as(&hub, household, "/charts/diagram.svg?w=400").await;
    assert!(own.contains("href=\"/participants/h001\""));
    assert!(!own.contains("href=\"/participants/h002\""));
    assert!(own.contains("other homes (private)"));
}

#[tokio::test]
async fn participants_state_the_period_of_their_totals() {
    let up = support::start(6).await;
    let hub = hub_for(&up, 96).await;
    let answer = json(&hub, "/api/participants").await;
    let period = answer["period"].as_str().unwrap();
    assert!(
        period.contains("21 Jun 12:00 to 21 Jun 13:30 UTC (6 intervals)"),
        "{period}"
    );
    assert!(
        period.contains("settled intervals 21 Jun 12:00 to 21 Jun 12:15 UTC (1 intervals)"),
        "{period}"
    );
}
