//! HTTP paths: the settlement fallback when there is no broker, the bidding agent's orders to
//! the market, and `enroll` — each against a small recording server on 127.0.0.1:0.

mod common;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::*;
use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use edge_gateway::{KeySource, run_with_key};
use gridmesh_protocol::api::market::{ErrorBody, OrderAccepted};
use gridmesh_protocol::api::readings::{ReadingOutcome, ReadingStatus, ReasonCode};
use gridmesh_protocol::envelope::MarketKey;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::{Order, Side};
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::{GatewayId, Reading, SignedEnvelope};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Recorder {
    bodies: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    failures_left: Arc<Mutex<u32>>,
    /// Idempotency keys settlement has stored (a resend is a duplicate).
    stored: Arc<Mutex<std::collections::HashSet<String>>>,
    received_at: Arc<Mutex<Vec<chrono::DateTime<chrono::Utc>>>>,
    clock: Option<Clock>,
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Settlement's `POST /readings` as the real service answers it: one [`ReadingOutcome`] per
/// item, in order; a resent reading is a duplicate, and the reading with sequence 2 arrives
/// after its interval was settled, so it is quarantined as late (and still stored).
async fn readings(
    State(r): State<Recorder>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    {
        let mut left = r.failures_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody {
                    code: "unavailable".into(),
                    message: "try later".into(),
                }),
            )
                .into_response();
        }
    }
    let mut out = Vec::new();
    for item in body.as_array().unwrap() {
        let envelope: SignedEnvelope = serde_json::from_value(item.clone()).unwrap();
        let reading: Reading = envelope.open().unwrap();
        let key = reading.idempotency_key();
        let outcome = if !r.stored.lock().unwrap().insert(key.clone()) {
            ReadingOutcome {
                key: Some(key),
                status: ReadingStatus::Duplicate,
                code: None,
                reason: None,
            }
        } else if reading.sequence == 2 {
            ReadingOutcome {
                key: Some(key),
                status: ReadingStatus::Quarantined,
                code: Some(ReasonCode::Late),
                reason: Some(format!(
                    "interval {} was already settled when the reading arrived",
                    reading.interval
                )),
            }
        } else {
            ReadingOutcome {
                key: Some(key),
                status: ReadingStatus::Accepted,
                code: None,
                reason: None,
            }
        };
        out.push(outcome);
    }
    r.bodies.lock().unwrap().push((headers, body));
    Json(out).into_response()
}

fn base(gw: &str, home: &Home, dir: &std::path::Path) -> GatewayConfig {
    let port = home.addr.port();
    GatewayConfig {
        gateway_id: GatewayId::new(gw).unwrap(),
        interval_minutes: 5,
        outbox_path: dir.join("outbox.db"),
        poll_ms: 50,
        modbus_timeout_ms: 200,
        health_listen: "127.0.0.1:0".into(),
        devices: vec![
            DeviceConfig::modbus_tcp("inverter", Role::Inverter, "127.0.0.1", port, 1),
            DeviceConfig::modbus_tcp("battery", Role::Battery, "127.0.0.1", port, 2),
            DeviceConfig::modbus_tcp("meter", Role::GridMeter, "127.0.0.1", port, 3),
        ],
        ..GatewayConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fallback_delivers_in_order_after_settlement_errors() {
    let clock = Clock::scaled(epoch(), 300.0);
    let home = start_home(clock.clone(), epoch()).await;
    let recorder = Recorder::default();
    *recorder.failures_left.lock().unwrap() = 2;
    let url = serve(
        axum::Router::new()
            .route("/readings", post(readings))
            .with_state(recorder.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = base(&unique("http"), &home, dir.path());
    config.settlement_url = Some(url);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([8; 32]))),
        clock,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got: Vec<Reading> = Vec::new();
    while got.len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = recorder
            .bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, body)| body.as_array().unwrap().clone())
            .map(|v| {
                serde_json::from_value::<SignedEnvelope>(v)
                    .unwrap()
                    .open()
                    .unwrap()
            })
            .collect();
    }
    assert!(got.len() >= 4, "only {} readings over HTTP", got.len());
    assert_contiguous(&got);
    // The gateway counts a delivery once it has read the reply.
    for _ in 0..50 {
        if running.status.snapshot().delivered_http >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot = running.status.snapshot();
    assert!(snapshot.delivery_failures >= 2, "the 503s were counted");
    assert!(snapshot.delivered_http >= 4);
    // The quarantined reading left the outbox like the accepted ones (never resent: the
    // sequence numbers above increase throughout).
    assert!(got.iter().any(|r| r.sequence == 2), "{got:?}");
    shutdown.stop().await;
}

/// The market's `POST /orders` as market-engine answers it (not 201 to everything): 401
/// `bad_signature`, 409 `gate_closed` after the gate closure (60 s lead), 409 `replayed_nonce`
/// for a nonce seen before, else 201. (tests/market_answers.rs runs the agent against every
/// refusal.)
async fn orders(State(r): State<Recorder>, Json(envelope): Json<SignedEnvelope>) -> Response {
    let now = r.clock.as_ref().unwrap().now();
    r.received_at.lock().unwrap().push(now);
    r.bodies
        .lock()
        .unwrap()
        .push((HeaderMap::new(), serde_json::to_value(&envelope).unwrap()));
    let refuse = |status: StatusCode, code: &str, message: String| {
        (
            status,
            Json(ErrorBody {
                code: code.into(),
                message,
            }),
        )
            .into_response()
    };
    let Ok(order) = envelope.open::<Order>() else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the signature does not verify".into(),
        );
    };
    if !order
        .interval
        .accepts_orders_at(now, chrono::Duration::seconds(60))
    {
        return refuse(
            StatusCode::CONFLICT,
            "gate_closed",
            format!("the gate for {} is closed", order.interval),
        );
    }
    if !r
        .stored
        .lock()
        .unwrap()
        .insert(format!("{}:{}", order.participant, order.nonce))
    {
        return refuse(
            StatusCode::CONFLICT,
            "replayed_nonce",
            format!("nonce {} was seen before", order.nonce),
        );
    }
    (
        StatusCode::CREATED,
        Json(OrderAccepted {
            order_id: format!("{}:{}", order.participant, order.nonce),
        }),
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_submits_signed_orders_before_gate_closure() {
    let clock = Clock::scaled(epoch(), 300.0);
    let home = start_home(clock.clone(), epoch()).await;
    let recorder = Recorder {
        clock: Some(clock.clone()),
        ..Recorder::default()
    };
    let url = serve(
        axum::Router::new()
            .route("/orders", post(orders))
            .with_state(recorder.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = base(&unique("agent"), &home, dir.path());
    config.market_url = Some(url);
    config.agent.enabled = true;
    config.agent.gate_closure_lead_s = 60;
    config.agent.submit_margin_s = 30;
    // The orders name the configured zone (this fake market serves no GET /status to ask).
    config.zone = Some(gridmesh_protocol::ZoneId::new("test").unwrap());
    let key = SigningKeyPair::from_seed([9; 32]);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config.clone(),
        KeySource::Key(Box::new(key.clone())),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (recorder.bodies.lock().unwrap().len() < 2
        || running.status.snapshot().orders_submitted < 2)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The market accepted them (it refuses late or replayed orders): counted as submitted.
    let status = running.status.snapshot();
    assert_eq!(status.orders_failed, 0);
    assert!(status.orders_submitted >= 2);
    let bodies = recorder.bodies.lock().unwrap().clone();
    let times = recorder.received_at.lock().unwrap().clone();
    assert!(bodies.len() >= 2, "orders received: {}", bodies.len());
    let mut intervals = Vec::new();
    for ((_, body), at) in bodies.iter().zip(times) {
        let envelope: SignedEnvelope = serde_json::from_value(body.clone()).unwrap();
        let order: Order = envelope.open_by(&key.public_key()).unwrap();
        assert_eq!(order.zone, config.zone);
        assert!(envelope.payload.starts_with(b"gridmesh/order/v2test\0"));
        assert!(
            order
                .interval
                .accepts_orders_at(at, chrono::Duration::seconds(60)),
            "order for {} arrived at {at}, after gate closure",
            order.interval
        );
        // The home exports 1.5 kW steadily: 125 Wh per 5 minutes, offered at the minimum price.
        assert_eq!(order.side, Side::Sell);
        assert!((order.quantity.0 - 125).abs() <= 2, "{order:?}");
        assert_eq!(order.limit_price, config.agent.min_sell_price);
        assert_eq!(order.participant, config.participant);
        intervals.push(order.interval);
    }
    intervals.dedup();
    assert!(intervals.len() >= 2, "one order per interval");
    shutdown.stop().await;
}

/// The market's `POST /participants` and `POST /gateways`: 401 with its error body for a wrong
/// token, else 201 with the registered record.
async fn enroll_handler<T: serde::Serialize>(
    State(r): State<Recorder>,
    headers: HeaderMap,
    Json(body): Json<T>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer right-token") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody {
                code: "unauthorized".into(),
                message: "the operator token is wrong".into(),
            }),
        )
            .into_response();
    }
    let value = serde_json::to_value(&body).unwrap();
    r.bodies.lock().unwrap().push((headers, value));
    (StatusCode::CREATED, Json(body)).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_registers_participant_and_gateway_with_the_token() {
    let recorder = Recorder::default();
    let market_key = SigningKeyPair::from_seed([44; 32]).public_key();
    let url = serve(
        axum::Router::new()
            .route("/participants", post(enroll_handler::<Participant>))
            .route("/gateways", post(enroll_handler::<GatewayEnrollment>))
            .route(
                "/market-key",
                get(move || async move {
                    Json(MarketKey {
                        zone: "demo".into(),
                        public_key: market_key,
                    })
                }),
            )
            .with_state(recorder.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("gw.key");
    let key = SigningKeyPair::generate_file(&key_path).unwrap();
    let mut config = GatewayConfig {
        key_path,
        market_url: Some(url),
        ..GatewayConfig::default()
    };
    config.site.inverter_w = 6000;
    config.site.latitude = 48.14;
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_edge-gateway");
    let run = |token: &'static str| {
        let path = path.clone();
        async move {
            let out = tokio::process::Command::new(bin)
                .args(["enroll", "--token", token, "--config"])
                .arg(&path)
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (code, text) = run("wrong").await;
    assert_eq!(code, Some(1));
    assert!(
        text.contains("refused the enrolment token") && text.contains("operator token is wrong"),
        "{text}"
    );
    let (code, text) = run("right-token").await;
    assert_eq!(code, Some(0), "{text}");
    // The market's key, as a line to paste into the config.
    let line = text
        .lines()
        .find(|l| l.starts_with("market_public_key = "))
        .unwrap_or_else(|| panic!("no line to paste: {text}"));
    let pasted = GatewayConfig::from_toml(line).unwrap();
    assert_eq!(pasted.market_public_key, Some(market_key));
    let bodies = recorder.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    let participant: Participant = serde_json::from_value(bodies[0].1.clone()).unwrap();
    let gateway: GatewayEnrollment = serde_json::from_value(bodies[1].1.clone()).unwrap();
    assert_eq!(participant.public_key, key.public_key());
    assert_eq!(gateway.public_key, key.public_key());
    assert_eq!(gateway.inverter_w, 6000);
    assert_eq!(gateway.latitude_microdeg, 48_140_000);
}

/// A participant id registered already with someone else's key is an error that says so (the
/// market is create-only: carrying on would enrol a gateway whose orders are all refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_refuses_a_participant_id_taken_by_another_key() {
    let other = SigningKeyPair::from_seed([45; 32]).public_key();
    let conflict = || async {
        (
            StatusCode::CONFLICT,
            Json(ErrorBody {
                code: "conflict".into(),
                message: "participant h001 is registered already".into(),
            }),
        )
    };
    let url = serve(
        axum::Router::new()
            .route("/participants", post(conflict))
            .route("/gateways", post(conflict))
            .route(
                "/participants/{id}",
                get(move || async move {
                    Json(Participant {
                        id: gridmesh_protocol::ParticipantId::new("h001").unwrap(),
                        public_key: other,
                        node: gridmesh_protocol::NodeId::new("f1").unwrap(),
                        kind: gridmesh_protocol::registry::ParticipantKind::Household,
                    })
                }),
            ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("gw.key");
    SigningKeyPair::generate_file(&key_path).unwrap();
    let config = GatewayConfig {
        key_path,
        market_url: Some(url),
        ..GatewayConfig::default()
    };
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .args(["enroll", "--token", "gme_x", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("already registered at the market with another key")
            && text.contains(&other.to_string()),
        "{text}"
    );
}
