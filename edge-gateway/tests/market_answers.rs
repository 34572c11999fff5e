//! The bidding agent against a market that answers like the real one (issue 15, item 2).
//!
//! The mock market below checks what market-engine checks on `POST /orders` and answers its
//! real statuses and codes (`market-engine/src/error.rs`): 400 `invalid_request` for a body
//! that is not an envelope, 401 `key_mismatch` for a key that is not the registered one, 401
//! `bad_signature` for a signature that does not verify, 422 `wrong_zone`, 409 `gate_closed` after the market's gate closure, 409
//! `replayed_nonce` for a nonce seen before, else 201 with the order id. The gateway's counters
//! must follow those answers: a refusal is never counted as submitted (it was, for 409
//! `gate_closed`, while the mock answered 201 to everything).

mod common;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use edge_gateway::{KeySource, run_with_key};
use gridmesh_protocol::api::market::{ErrorBody, OrderAccepted};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::signing::PublicKey;
use gridmesh_protocol::{GatewayId, SignedEnvelope, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A market that validates orders like market-engine and records every answer it gave.
#[derive(Clone)]
struct Market {
    clock: Clock,
    /// The market's gate-closure lead.
    lead: chrono::Duration,
    zone: ZoneId,
    /// The participant's registered key.
    registered: PublicKey,
    nonces: Arc<Mutex<HashSet<(String, u64)>>>,
    /// How many times each (status, code) was answered.
    answers: Arc<Mutex<BTreeMap<(u16, String), u64>>>,
}

impl Market {
    fn answer(&self, status: StatusCode, code: &str, message: String) -> Response {
        *self
            .answers
            .lock()
            .unwrap()
            .entry((status.as_u16(), code.to_owned()))
            .or_default() += 1;
        if status == StatusCode::CREATED {
            return (status, Json(OrderAccepted { order_id: message })).into_response();
        }
        (
            status,
            Json(ErrorBody {
                code: code.into(),
                message,
            }),
        )
            .into_response()
    }

    fn count(&self, accepted: bool) -> u64 {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|((status, _), _)| (*status == 201) == accepted)
            .map(|(_, n)| n)
            .sum()
    }
}

async fn post_order(State(m): State<Market>, body: Bytes) -> Response {
    let Ok(envelope) = serde_json::from_slice::<SignedEnvelope>(&body) else {
        return m.answer(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is not a signed envelope".into(),
        );
    };
    if envelope.public_key != m.registered {
        return m.answer(
            StatusCode::UNAUTHORIZED,
            "key_mismatch",
            "the envelope is not signed with the participant's registered key".into(),
        );
    }
    let Ok(order) = envelope.open::<Order>() else {
        return m.answer(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the signature does not verify".into(),
        );
    };
    if order.zone != Some(m.zone) {
        return m.answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_zone",
            format!(
                "the order names zone {:?}, this market is {}",
                order.zone, m.zone
            ),
        );
    }
    if !order.interval.accepts_orders_at(m.clock.now(), m.lead) {
        return m.answer(
            StatusCode::CONFLICT,
            "gate_closed",
            format!("the gate for {} is closed", order.interval),
        );
    }
    if !m
        .nonces
        .lock()
        .unwrap()
        .insert((order.participant.to_string(), order.nonce))
    {
        return m.answer(
            StatusCode::CONFLICT,
            "replayed_nonce",
            format!("nonce {} was seen before", order.nonce),
        );
    }
    m.answer(
        StatusCode::CREATED,
        "",
        format!("{}:{}", order.participant, order.nonce),
    )
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn config(gw: &str, home: &Home, dir: &std::path::Path, market: String) -> GatewayConfig {
    let port = home.addr.port();
    let mut config = GatewayConfig {
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
    };
    config.market_url = Some(market);
    config.zone = Some(ZoneId::new("test").unwrap());
    config.agent.enabled = true;
    config.agent.gate_closure_lead_s = 60;
    config.agent.submit_margin_s = 30;
    config
}

/// Runs the gateway's agent against `market` until the market gave `answers` answers, then
/// returns the gateway's (submitted, failed) counters and the market's (accepted, refused).
async fn run_agent(market: Market, label: &str, answers: u64) -> ((u64, u64), (u64, u64)) {
    let home = start_home(market.clock.clone(), epoch()).await;
    let url = serve(
        axum::Router::new()
            .route("/orders", post(post_order))
            .with_state(market.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&unique(label), &home, dir.path(), url);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([9; 32]))),
        market.clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    // Wait (bounded) until the market answered enough and the gateway counted those answers.
    for _ in 0..300 {
        let s = running.status.snapshot();
        let given = market.count(true) + market.count(false);
        if given >= answers && s.orders_submitted + s.orders_failed >= answers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The gateway counts an answer after reading it: its counters first, then the market's.
    let s = running.status.snapshot();
    let counted = (s.orders_submitted, s.orders_failed);
    let given = (market.count(true), market.count(false));
    shutdown.stop().await;
    (counted, given)
}

fn market(lead_s: i64, registered: PublicKey) -> Market {
    Market {
        clock: Clock::scaled(epoch(), 300.0),
        lead: chrono::Duration::seconds(lead_s),
        zone: ZoneId::new("test").unwrap(),
        registered,
        nonces: Default::default(),
        answers: Default::default(),
    }
}

/// Regression (issue 15): the market closes its gate 10 minutes ahead while the agent plans for
/// 60 s, so every order arrives after gate closure and is refused with 409 `gate_closed`. The
/// agent counted those as submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_refused_after_gate_closure_count_as_failed() {
    let m = market(600, SigningKeyPair::from_seed([9; 32]).public_key());
    let ((submitted, failed), (accepted, refused)) = run_agent(m.clone(), "gate", 2).await;
    let answers = m.answers.lock().unwrap().clone();
    assert_eq!(accepted, 0, "{answers:?}");
    assert!(
        refused >= 2,
        "the market refused too few orders: {answers:?}"
    );
    assert!(
        answers.keys().all(|(s, c)| *s == 409 && c == "gate_closed"),
        "{answers:?}"
    );
    assert_eq!(submitted, 0, "a 409 gate_closed was counted as submitted");
    assert!(
        failed >= 2 && failed <= refused,
        "failed {failed}, {answers:?}"
    );
}

/// The registered key is not the gateway's: 401 `key_mismatch`, counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_with_an_unregistered_key_count_as_failed() {
    let m = market(60, SigningKeyPair::from_seed([10; 32]).public_key());
    let ((submitted, failed), (accepted, refused)) = run_agent(m.clone(), "badsig", 2).await;
    let answers = m.answers.lock().unwrap().clone();
    assert_eq!(accepted, 0, "{answers:?}");
    assert!(
        answers
            .keys()
            .all(|(s, c)| *s == 401 && c == "key_mismatch"),
        "{answers:?}"
    );
    assert_eq!(submitted, 0);
    assert!(
        failed >= 2 && failed <= refused,
        "failed {failed}, {answers:?}"
    );
}

/// Control: the same market with the agent's gate closure and the right key accepts every
/// order (201), and only those are counted as submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_orders_count_as_submitted() {
    let m = market(60, SigningKeyPair::from_seed([9; 32]).public_key());
    let ((submitted, failed), (accepted, refused)) = run_agent(m.clone(), "ok", 2).await;
    let answers = m.answers.lock().unwrap().clone();
    assert_eq!(refused, 0, "{answers:?}");
    assert_eq!(failed, 0, "{answers:?}");
    assert!(
        submitted >= 2 && submitted <= accepted,
        "submitted {submitted}, {answers:?}"
    );
}
