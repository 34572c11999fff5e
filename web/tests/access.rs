//! Who may see and do what on the dashboard (issue 13): login, sessions, the Host check,
//! CSRF, viewer against admin, one household against another. The upstreams are the test
//! doubles of `support`.

mod support;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use gridmesh_web::auth::{Role, SESSION_COOKIE, UsersFile};
use gridmesh_web::hub::Hub;
use gridmesh_web::{WebConfig, refresh, routes};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn hub_with(up: &support::Upstreams, users: &std::path::Path) -> Arc<Hub> {
    let hub = Hub::new(WebConfig {
        listen: "127.0.0.1:8080".parse().unwrap(),
        market_url: format!("http://{}", up.market),
        settlement_url: format!("http://{}", up.settlement),
        users_file: users.to_owned(),
        operator_token: Some(support::OPERATOR_TOKEN.into()),
        ..WebConfig::default()
    })
    .unwrap();
    refresh::refresh_once(&hub, "test").await;
    refresh::refresh_once(&hub, "test").await;
    hub
}

async fn send(hub: &Arc<Hub>, request: Request<Body>) -> Answer {
    let response = routes::router(hub.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 4 << 20).await.unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get(uri: &str, session: Option<&str>) -> Request<Body> {
    let mut r = Request::get(uri).header("host", "127.0.0.1:8080");
    if let Some(s) = session {
        r = r.header("cookie", format!("{SESSION_COOKIE}={s}"));
    }
    r.body(Body::empty()).unwrap()
}

fn post(uri: &str, session: Option<&str>, csrf: Option<&str>) -> Request<Body> {
    let mut r = Request::post(uri).header("host", "127.0.0.1:8080");
    if let Some(s) = session {
        r = r.header("cookie", format!("{SESSION_COOKIE}={s}"));
    }
    if let Some(t) = csrf {
        r = r.header("x-csrf-token", t);
    }
    r.body(Body::empty()).unwrap()
}

/// Regression (issue 13, defect 2): the whole dashboard was open without any login.
#[tokio::test]
async fn without_login_only_the_login_page_health_and_metrics_answer() {
    let up = support::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&up, &dir.path().join("users.json")).await;
    for page in ["/", "/grid", "/participants/h001", "/ledger/x", "/nowhere"] {
        let a = send(&hub, get(page, None)).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(a.headers["location"], "/login", "{page}");
    }
    for api in [
        "/api/grid",
        "/api/participants",
        "/api/participants/h001",
        "/api/alerts",
        "/api/quarantine",
        "/api/events",
        "/api/ledger/blocks",
        "/charts/prices.svg",
        "/assets/app.js",
    ] {
        let a = send(&hub, get(api, None)).await;
        if api.starts_with("/assets") {
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{api}");
            continue;
        }
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{api}: {}", a.body);
        assert_eq!(a.json()["code"], "unauthorized", "{api}");
    }
    let a = send(&hub, post("/api/quarantine/7/accept", None, None)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    for public in [
        "/login",
        "/healthz",
        "/metrics",
        "/assets/style.css",
        "/assets/favicon.svg",
    ] {
        let a = send(&hub, get(public, None)).await;
        assert_eq!(a.status, StatusCode::OK, "{public}");
    }
    let login = send(&hub, get("/login", None)).await;
    assert!(
        login
            .body
            .contains("<form id=\"login-form\" method=\"post\" action=\"/login\"")
    );
    assert!(
        !login.body.contains("<script"),
        "the login page has no script"
    );
}

/// Regression (issue 13, defect 2): the dashboard did not check the Host header.
#[tokio::test]
async fn a_foreign_host_header_is_refused() {
    let up = support::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&up, &dir.path().join("users.json")).await;
    let (session, _) = hub.auth.start_session("a", Role::Admin);
    for host in [
        "evil.example",
        "127.0.0.1:9999",
        "localhost.evil.example:8080",
    ] {
        let request = Request::get("/api/grid")
            .header("host", host)
            .header("cookie", format!("{SESSION_COOKIE}={session}"))
            .body(Body::empty())
            .unwrap();
        let a = send(&hub, request).await;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert_eq!(a.json()["code"], "host_not_allowed");
    }
    for host in ["127.0.0.1:8080", "localhost:8080", "localhost"] {
        let request = Request::get("/healthz")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&hub, request).await.status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_logout_ends_the_session() {
    let up = support::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.json");
    let mut users = UsersFile::default();
    users
        .add("olivia", Role::Viewer, "viewer password")
        .unwrap();
    users.save(&path).unwrap();
    let hub = hub_with(&up, &path).await;

    let form = |body: &str| {
        Request::post("/login")
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let wrong = send(&hub, form("name=olivia&password=nope")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong user name or password"));
    assert!(wrong.headers.get("set-cookie").is_none());

    let ok = send(&hub, form("name=olivia&password=viewer+password")).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.headers["location"], "/grid");
    let cookie = ok.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .unwrap()
        .to_owned();
    assert_eq!(session.len(), 64, "a 256-bit id");

    // Five wrong passwords in a row lock the name for a minute, the right one included.
    for _ in 0..5 {
        let wrong = send(&hub, form("name=olivia&password=nope")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
    let locked = send(&hub, form("name=olivia&password=viewer+password")).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.body.contains("Too many failed logins"));

    let me = send(&hub, get("/api/me", Some(&session))).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    let me = me.json();
    assert_eq!(me["name"], "olivia");
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["operator_actions"], false);
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    assert_eq!(
        send(&hub, get("/grid", Some(&session))).await.status,
        StatusCode::OK
    );

    // Logout needs the CSRF token too.
    let no_token = send(&hub, post("/logout", Some(&session), None)).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let out = send(&hub, post("/logout", Some(&session), Some(&csrf))).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = send(&hub, get("/api/me", Some(&session))).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn operator_actions_need_an_admin_the_csrf_token_and_the_same_origin() {
    let up = support::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&up, &dir.path().join("users.json")).await;
    let (viewer, viewer_session) = hub.auth.start_session("v", Role::Viewer);
    let (admin, admin_session) = hub.auth.start_session("a", Role::Admin);

    // A viewer reads the quarantine but may not accept (403), even with its token.
    let q = send(&hub, get("/api/quarantine", Some(&viewer))).await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    assert_eq!(q.json()["items"][0]["id"], 7);
    let a = send(
        &hub,
        post(
            "/api/quarantine/7/accept",
            Some(&viewer),
            Some(&viewer_session.csrf),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(a.json()["code"], "forbidden");

    // An admin without (or with another session's) CSRF token is refused.
    for token in [None, Some(viewer_session.csrf.as_str())] {
        let a = send(&hub, post("/api/quarantine/7/accept", Some(&admin), token)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        assert!(a.json()["message"].as_str().unwrap().contains("CSRF"));
    }
    // A cross-origin write is refused even with the token.
    let mut cross = post(
        "/api/quarantine/7/accept",
        Some(&admin),
        Some(&admin_session.csrf),
    );
    cross
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    assert_eq!(send(&hub, cross).await.status, StatusCode::FORBIDDEN);

    // The admin with its token and the same origin: forwarded with the operator token.
    let mut same = post(
        "/api/quarantine/7/accept",
        Some(&admin),
        Some(&admin_session.csrf),
    );
    same.headers_mut()
        .insert("origin", "http://127.0.0.1:8080".parse().unwrap());
    let a = send(&hub, same).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["status"], "accepted");
    let me = send(&hub, get("/api/me", Some(&admin))).await.json();
    assert_eq!(me["operator_actions"], true);
}

/// One household's detail is refused to another household; its own is shown.
#[tokio::test]
async fn a_household_sees_only_its_own_participant() {
    let up = support::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with(&up, &dir.path().join("users.json")).await;
    let (h1, _) = hub.auth.start_session(
        "home1",
        Role::Household {
            participant: "h001".into(),
        },
    );
    let own = send(&hub, get("/api/participants/h001", Some(&h1))).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let other = send(&hub, get("/api/participants/h002", Some(&h1))).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.body);
    assert_eq!(other.json()["code"], "forbidden");
    let list = send(&hub, get("/api/participants", Some(&h1))).await.json();
    let ids: Vec<&str> = list["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h001"]);
    let q = send(&hub, get("/api/quarantine", Some(&h1))).await;
    assert_eq!(q.status, StatusCode::FORBIDDEN);
    // Another home's quarantined reading and gateways are not in a household's alerts or grid.
    let subjects = |answer: Value| -> Vec<String> {
        answer["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}:{}", a["kind"], a["subject"]))
            .collect()
    };
    let alerts = subjects(send(&hub, get("/api/alerts", Some(&h1))).await.json());
    assert!(!alerts.iter().any(|a| a.contains("gw-h002")), "{alerts:?}");
    let (h2, _) = hub.auth.start_session(
        "home2",
        Role::Household {
            participant: "h002".into(),
        },
    );
    let alerts = subjects(send(&hub, get("/api/alerts", Some(&h2))).await.json());
    assert!(
        alerts
            .iter()
            .any(|a| a.contains("quarantine") && a.contains("gw-h002")),
        "{alerts:?}"
    );
    let grid = send(&hub, get("/api/grid", Some(&h1))).await.json();
    assert!(
        grid["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["participant"] == "h001"),
        "{grid}"
    );
    // Operators and auditors see every household.
    let (viewer, _) = hub.auth.start_session("v", Role::Viewer);
    let other = send(&hub, get("/api/participants/h002", Some(&viewer))).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
}

/// HTTPS settings are checked before the dashboard starts: half of them, or files that cannot
/// be read, refuse to start with a message naming the setting.
#[tokio::test]
async fn bad_tls_settings_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = gridmesh_web::WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        users_file: dir.path().join("users.json"),
        ..gridmesh_web::WebConfig::default()
    };
    let half = gridmesh_web::WebConfig {
        tls_key: Some(dir.path().join("key.pem")),
        ..base.clone()
    };
    let missing = gridmesh_web::WebConfig {
        tls_cert: Some(dir.path().join("cert.pem")),
        tls_key: Some(dir.path().join("key.pem")),
        ..base
    };
    for config in [half, missing] {
        let shutdown = gridmesh_runtime::shutdown::Shutdown::new();
        let refused = gridmesh_web::serve(config, shutdown.clone()).await;
        let Err(error) = refused else {
            panic!("the dashboard started with bad TLS settings");
        };
        assert!(matches!(error, gridmesh_web::WebError::Tls(_)), "{error}");
        assert!(error.to_string().contains("HTTPS"), "{error}");
        shutdown.stop().await;
    }
}
