//! Who may do what with incidents, exports and the verified entry view (issue 17), through the
//! router with the upstreams played by the test doubles of `support`.

mod support;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use gridmesh_web::auth::{Role, SESSION_COOKIE};
use gridmesh_web::hub::Hub;
use gridmesh_web::incidents::{group, newest_intervals};
use gridmesh_web::{WebConfig, refresh, routes, views};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

async fn hub(up: &support::Upstreams, dir: &std::path::Path) -> Arc<Hub> {
    let hub = Hub::new(WebConfig {
        listen: "127.0.0.1:8080".parse().unwrap(),
        market_url: format!("http://{}", up.market),
        settlement_url: format!("http://{}", up.settlement),
        users_file: dir.join("users.json"),
        data_dir: dir.to_owned(),
        ..WebConfig::default()
    })
    .unwrap();
    refresh::refresh_once(&hub, "test").await;
    refresh::refresh_once(&hub, "test").await;
    // What the incident task does after every refresh.
    let snap = hub.snapshot();
    let alerts = views::alerts(&snap, hub.config.imbalance_spike_factor);
    hub.incidents
        .observe(group(&alerts, &newest_intervals(&snap)), chrono::Utc::now());
    hub
}

async fn send(
    hub: &Arc<Hub>,
    method: &str,
    uri: &str,
    session: &str,
    csrf: &str,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1:8080")
        .header("cookie", format!("{SESSION_COOKIE}={session}"))
        .header("x-csrf-token", csrf)
        .body(Body::empty())
        .unwrap();
    let response = routes::router(hub.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 4 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn only_an_admin_acknowledges_and_the_badge_counts_the_rest() {
    let up = support::start(4).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&up, dir.path()).await;
    let (admin, admin_s) = hub.auth.start_session("alice", Role::Admin);
    let (viewer, viewer_s) = hub.auth.start_session("olivia", Role::Viewer);
    let (home, home_s) = hub.auth.start_session(
        "home",
        Role::Household {
            participant: "h001".into(),
        },
    );
    let (status, body) = send(&hub, "GET", "/api/incidents", &admin, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = json(&body);
    let open: Vec<&Value> = list["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "active")
        .collect();
    assert!(!open.is_empty(), "the doubles raise alerts: {body}");
    assert_eq!(list["may_acknowledge"], true);
    let id = open[0]["id"].as_str().unwrap().to_owned();
    let before =
        json(&send(&hub, "GET", "/api/status", &admin, "").await.1)["incidents_unacknowledged"]
            .as_u64()
            .unwrap();
    let uri = format!("/api/incidents/{id}/ack");
    for (who, csrf) in [(&viewer, &viewer_s.csrf), (&home, &home_s.csrf)] {
        let (status, body) = send(&hub, "POST", &uri, who, csrf).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, _) = send(&hub, "POST", &uri, &admin, "wrong").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the CSRF token is needed");
    let (status, body) = send(&hub, "POST", &uri, &admin, &admin_s.csrf).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["by"], "alice");
    let (status, _) = send(
        &hub,
        "POST",
        "/api/incidents/0000/ack",
        &admin,
        &admin_s.csrf,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let after =
        json(&send(&hub, "GET", "/api/status", &admin, "").await.1)["incidents_unacknowledged"]
            .as_u64()
            .unwrap();
    assert_eq!(after + 1, before);
    let list = json(&send(&hub, "GET", "/api/incidents", &viewer, "").await.1);
    let acked = list["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
        .unwrap();
    assert_eq!(acked["acknowledged_by"], "alice");
    assert_eq!(list["may_acknowledge"], false);
    // Stored under the data dir.
    let stored = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    assert!(stored.contains(&id) && stored.contains("alice"), "{stored}");
}

#[tokio::test]
async fn exports_are_csv_and_a_household_gets_only_its_own_statements() {
    let up = support::start(4).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&up, dir.path()).await;
    let (admin, _) = hub.auth.start_session("alice", Role::Admin);
    let (home, _) = hub.auth.start_session(
        "home",
        Role::Household {
            participant: "h001".into(),
        },
    );
    let (status, all) = send(&hub, "GET", "/api/export/statements.csv", &admin, "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, own) = send(&hub, "GET", "/api/export/statements.csv", &home, "").await;
    let rows = |t: &str| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert!(rows(&all).iter().any(|r| !r.starts_with("h001,")), "{all}");
    assert!(
        !rows(&own).is_empty() && rows(&own).iter().all(|r| r.starts_with("h001,")),
        "{own}"
    );
    for file in ["intervals", "incidents", "ledger"] {
        let (status, body) = send(&hub, "GET", &format!("/api/export/{file}.csv"), &home, "").await;
        assert_eq!(status, StatusCode::OK, "{file}: {body}");
        assert!(body.lines().count() >= 1);
    }
    let (status, body) = send(&hub, "GET", "/api/export/ledger.csv", &admin, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.lines().count(), 4, "three entries of block 0: {body}");
    let (status, _) = send(
        &hub,
        "GET",
        "/api/export/ledger.csv?from=2030-01-01",
        &admin,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(&hub, "GET", "/api/export/secrets.csv", &admin, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = send(
        &hub,
        "GET",
        "/api/export/intervals.csv?from=soon",
        &admin,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn without_a_pinned_key_the_entry_view_says_not_verified() {
    let up = support::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&up, dir.path()).await;
    let (viewer, _) = hub.auth.start_session("olivia", Role::Viewer);
    let hash = up.fixture.lock().unwrap().ledger.bodies[0].0.clone();
    let (status, body) = send(
        &hub,
        "GET",
        &format!("/api/ledger/verify/{hash}"),
        &viewer,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = json(&body);
    assert_eq!(v["verified"], false);
    assert_eq!(v["checks"][0]["name"], "entry_hash");
    assert_eq!(v["checks"][0]["ok"], true);
    assert_eq!(v["checks"][1]["name"], "block_signature");
    assert_eq!(v["checks"][1]["ok"], false);
    let (status, _) = send(&hub, "GET", "/api/ledger/verify/nothex", &viewer, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = send(&hub, "GET", "/api/ledger/search?q=0", &viewer, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["blocks"][0]["height"], 0);
}
