//! The homeowner's local page (issue 18): login with the installed password, wrong passwords
//! refused and rate limited, the session cookie's flags, every API refused without a session,
//! only GETs and the login POST accepted, and the live flows equal to the fake home's physics;
//! the household's settlement data fetched with the household's signed requests from a
//! settlement mock that refuses anything else, as the real service does.

mod common;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::get;
use common::*;
use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use edge_gateway::local_page::{LOCKOUT, MAX_FAILURES, hash_password};
use edge_gateway::{KeySource, run_with_key};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::request::SignedRequest;
use gridmesh_protocol::{GatewayId, ParticipantId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use std::time::Duration;

const SPEED: f64 = 60.0;
const PASSWORD: &str = "the installed password";

fn config(home: &Home, dir: &std::path::Path, settlement: Option<String>) -> GatewayConfig {
    let mut c = GatewayConfig {
        gateway_id: GatewayId::new(unique("page")).unwrap(),
        participant: ParticipantId::new("h042").unwrap(),
        interval_minutes: 5,
        outbox_path: dir.join("outbox.db"),
        key_path: dir.join("gw.key"),
        poll_ms: 50,
        modbus_timeout_ms: 200,
        health_listen: "127.0.0.1:0".into(),
        settlement_url: settlement,
        ..GatewayConfig::default()
    };
    c.local_page.listen = "127.0.0.1:0".into();
    c.local_page.password_hash = Some(hash_password(PASSWORD).unwrap());
    let (host, port) = ("127.0.0.1", home.addr.port());
    c.devices = vec![
        DeviceConfig::modbus_tcp("inverter", Role::Inverter, host, port, 1),
        DeviceConfig::modbus_tcp("battery", Role::Battery, host, port, 2),
        DeviceConfig::modbus_tcp("meter", Role::GridMeter, host, port, 3),
    ];
    c
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

async fn login(http: &reqwest::Client, base: &str, password: &str) -> reqwest::Response {
    http.post(format!("{base}/login"))
        .form(&[("password", password)])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_and_live_flows_from_the_devices() {
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config(&home, dir.path(), None),
        KeySource::Key(Box::new(SigningKeyPair::from_seed([42; 32]))),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!(
        "http://{}",
        running.local_page_addr.expect("the page is on")
    );
    let http = client();

    // Without a session: the login form, and every API answers 401.
    let page = http.get(&base).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let text = page.text().await.unwrap();
    assert!(text.contains("name=\"password\""), "{text}");
    assert!(
        !text.contains("data-live=\"pv\""),
        "the dashboard leaked: {text}"
    );
    for path in ["/api/live", "/api/today", "/api/household"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // A forged session cookie is no session.
    let forged = http
        .get(format!("{base}/api/live"))
        .header("cookie", format!("gm_local={}", "ab".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    // A wrong password: 401, the form again with the reason, no cookie.
    let wrong = login(&http, &base, "not the password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("Wrong password"));

    // The right one: a session cookie, HttpOnly and SameSite=Strict.
    let ok = login(&http, &base, PASSWORD).await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = http
        .get(&base)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("data-live=\"pv\""));

    // Only GETs and the login POST: a POST to the API is not a route.
    let post = http
        .post(format!("{base}/api/live"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    // The live flows are the fake home's constant powers (its physics), and the counters what
    // the devices hold at the time they were read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let live = loop {
        let body: Value = http
            .get(format!("{base}/api/live"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["live"]["house_w"].is_i64() && body["live"]["battery_w"].is_i64() {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live values: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let l = &live["live"];
    assert_eq!(l["pv_w"], json!(PV_W), "{live}");
    assert_eq!(l["battery_w"], json!(-CHARGE_W), "{live}");
    assert_eq!(l["grid_w"], json!(-EXPORT_W), "{live}");
    assert_eq!(l["house_w"], json!(LOAD_W), "{live}");
    let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(l["at"].clone()).unwrap();
    let truth = home.counters(at);
    // The three devices are read one after another within a poll: the counters may predate
    // `at` by up to a poll's Modbus calls (bounded by the timeout) on the accelerated clock.
    let slack_wh = PV_W * (3 * 200 + 100) * SPEED as i64 / 3_600_000 + 1;
    let pv = l["counters_wh"]["pv"].as_i64().unwrap();
    assert!(
        (truth[2] - slack_wh..=truth[2]).contains(&pv),
        "pv counter {pv} Wh, device truth {} Wh at {at}",
        truth[2]
    );
    assert!(live["devices"]["meter"]["ok"].as_bool().unwrap());
    assert!(live["outbox_count"].is_u64());

    // Logging out ends the session on the server, not only in the browser.
    let out = http
        .get(format!("{base}/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = http
        .get(format!("{base}/api/live"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // Rate limit: after MAX_FAILURES wrong passwords even the right one is refused (429 with
    // Retry-After), without checking it.
    for _ in 0..MAX_FAILURES {
        assert_eq!(
            login(&http, &base, "guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let locked = login(&http, &base, PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1 && retry <= LOCKOUT.as_secs() + 1, "{retry}");
    assert!(locked.headers().get("set-cookie").is_none());
    shutdown.stop().await;
}

/// Settlement's household reads as the real service answers them: a `Gridmesh` signed request
/// by the registered key for the exact path, else 401.
async fn settlement_mock(key: SigningKeyPair, participant: ParticipantId) -> String {
    let check = move |headers: HeaderMap, path: &'static str| {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        SignedRequest::parse(auth).is_ok_and(|r| {
            r.participant() == &participant
                && r.verify(
                    &key.public_key(),
                    chrono::Utc::now().timestamp(),
                    "GET",
                    path,
                    b"",
                )
                .is_ok()
        })
    };
    let refuse = || {
        (
            AxumStatus::UNAUTHORIZED,
            axum::Json(json!({"code": "unauthorized", "message": "bad signature"})),
        )
            .into_response()
    };
    let c1 = check.clone();
    let c2 = check.clone();
    let c3 = check;
    let router = axum::Router::new()
        .route(
            "/statements",
            get(move |h: HeaderMap| async move {
                if !c1(h, "/statements") {
                    return refuse();
                }
                let line = |interval: &str, sold: i64, net: i64| {
                    json!({"participant": "h042", "interval": interval, "sold": sold, "bought": 0,
                        "exported": sold, "imported": 0, "envelope_excess": 0, "delivered": sold,
                        "consumed": 0, "tokens": sold, "estimated": false, "lines": [], "net": net})
                };
                axum::Json(json!([
                    line("2026-06-21T09:00:00Z/15", 400, 52),
                    line("2026-06-21T09:15:00Z/15", 300, 39),
                    line("2026-05-31T23:45:00Z/15", 100, 1000),
                ]))
                .into_response()
            }),
        )
        .route(
            "/balances/h042",
            get(move |h: HeaderMap| async move {
                if !c2(h, "/balances/h042") {
                    return refuse();
                }
                axum::Json(json!({"participant": "h042", "lots": []})).into_response()
            }),
        )
        .route(
            "/quarantine",
            get(move |h: HeaderMap| async move {
                if !c3(h, "/quarantine?limit=20") {
                    return refuse();
                }
                axum::Json(json!([])).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_households_statements_are_fetched_with_its_signed_requests() {
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKeyPair::from_seed([43; 32]);
    let participant = ParticipantId::new("h042").unwrap();
    let settlement = settlement_mock(key.clone(), participant).await;
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config(&home, dir.path(), Some(settlement)),
        KeySource::Key(Box::new(key)),
        clock,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.local_page_addr.unwrap());
    let http = client();
    let ok = login(&http, &base, PASSWORD).await;
    let session = ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let body: Value = http
            .get(format!("{base}/api/household"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !body["fetched_at"].is_null() || !body["error"].is_null() {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never fetched: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every request was accepted by the signature check (an error would name the 401).
    assert!(view["error"].is_null(), "{view}");
    // The month is the gateway clock's (June 2026): May's line does not count.
    assert_eq!(view["month"], json!("2026-06"), "{view}");
    assert_eq!(view["month_net"], json!(52 + 39), "{view}");
    assert_eq!(view["month_sold_wh"], json!(700), "{view}");
    assert_eq!(
        view["statements"][0]["interval"],
        json!("2026-06-21T09:15:00Z/15")
    );
    assert_eq!(view["quarantine"], json!([]));
    shutdown.stop().await;
}

#[test]
fn a_password_hash_that_is_not_argon2_is_named() {
    let err = GatewayConfig::from_toml("[local_page]\npassword_hash = \"secret\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("local_page.password_hash"), "{err}");
    assert!(err.contains("hash-password"), "{err}");
    let ok = format!(
        "[local_page]\nlisten = \"0.0.0.0:8090\"\npassword_hash = \"{}\"\n",
        hash_password("x").unwrap()
    );
    assert!(GatewayConfig::from_toml(&ok).unwrap().local_page.enabled());
    assert!(!GatewayConfig::from_toml("").unwrap().local_page.enabled());
}
