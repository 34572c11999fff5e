//! The dashboard against the **real** market engine and settlement, started in this process on
//! 127.0.0.1:0 with SQLite in a temporary directory: checks that it reads their actual replies
//! (status, topology, participants, order-book depth, blocks) — not only the test doubles'.
//!
//! It lives here, not in `web/tests`, because only `tests/` may link several services: the
//! dashboard reads the others only over HTTP.

use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::{Order, Side};
use gridmesh_protocol::registry::{Participant, ParticipantKind};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, Wh, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use gridmesh_web::WebConfig;
use serde_json::Value;
use std::time::Duration;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

#[tokio::test]
async fn reads_the_real_market_and_settlement() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let clock = Clock::system();
    let network = Network {
        root: node("sub"),
        branches: vec![Branch {
            node: node("f1"),
            parent: node("sub"),
            import_limit_wh: Some(Wh(5_000)),
            export_limit_wh: Some(Wh(4_000)),
            fee_per_mwh: None,
        }],
        utility: UtilityTariff {
            envelope_excess_price: Default::default(),
            retail_price: Some(PricePerMwh(300_000)),
            feed_in_price: Some(PricePerMwh(80_000)),
            import_limit_wh: None,
            export_limit_wh: None,
        },
    };
    let market = market_engine::server::serve(
        market_engine::MarketConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("market.db").display()),
            operator_token: Some("op".into()),
            // The dashboard's upstream credential (its `upstream_token`), issue 13.
            auditor_token: Some("audit".into()),
            topology: Some(network),
            ..Default::default()
        },
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let market_url = format!("http://{}", market.addr);
    let settlement = settlement::serve(
        settlement::SettlementConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("settlement.db").display()),
            market_url: Some(market_url.clone()),
            // The dashboard reads household data with the auditor credential (issue 13).
            auditor_token: Some("audit".into()),
            ..Default::default()
        },
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();

    // One participant with one open bid, so the book has depth.
    let key = SigningKeyPair::from_seed([9; 32]);
    let http = reqwest::Client::new();
    let participant = Participant {
        id: ParticipantId::new("h001").unwrap(),
        public_key: key.public_key(),
        node: node("f1"),
        kind: ParticipantKind::Household,
    };
    let r = http
        .post(format!("{market_url}/participants"))
        .bearer_auth("op")
        .json(&participant)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let status: Value = http
        .get(format!("{market_url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next: Interval = serde_json::from_value(status["next_open_interval"].clone()).unwrap();
    let order = Order {
        zone: Some(ZoneId::new(status["zone"].as_str().unwrap()).unwrap()),
        participant: participant.id.clone(),
        node: node("f1"),
        interval: next,
        side: Side::Buy,
        quantity: Wh(1_200),
        limit_price: PricePerMwh(250_000),
        nonce: 1,
    };
    let r = http
        .post(format!("{market_url}/orders"))
        .json(&SignedEnvelope::sign(&order, &key))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let web = gridmesh_web::serve(
        WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            market_url,
            settlement_url: format!("http://{}", settlement.addr),
            poll_interval_ms: 100,
            upstream_token: Some("audit".into()),
            ..WebConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    // Wait (bounded) until a refresh has seen the participant and the order.
    // The dashboard answers only a logged-in user (issue 13): a viewer's session.
    let (session, _) = web
        .hub
        .auth
        .start_session("viewer", gridmesh_web::auth::Role::Viewer);
    let cookie = format!("{}={session}", gridmesh_web::auth::SESSION_COOKIE);
    let get = |path: &str| {
        let url = format!("{}{path}", web.url());
        let http = http.clone();
        let cookie = cookie.clone();
        async move { http.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    let mut grid = Value::Null;
    for _ in 0..100 {
        grid = get("/api/grid").await.json().await.unwrap();
        let snap = web.hub.snapshot();
        // Balances are read for the participants a previous refresh learned.
        if snap.participants.len() == 1 && snap.book.is_some() && snap.balances.contains_key("h001")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(grid["sources"]["market"]["ok"], true, "{grid}");
    assert_eq!(grid["sources"]["settlement"]["ok"], true, "{grid}");
    assert_eq!(grid["root"], "sub");
    assert_eq!(grid["branches"][0]["node"], "f1");
    assert_eq!(grid["branches"][0]["participants"], 1);
    let snap = web.hub.snapshot();
    assert_eq!(
        snap.next_interval.as_deref(),
        Some(
            next.start()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
                .as_str()
        )
    );
    let (bids, asks) = gridmesh_web::charts::book_levels(snap.book.as_ref().unwrap());
    assert_eq!(
        bids,
        vec![gridmesh_web::charts::Level {
            price: 250_000,
            quantity: 1_200
        }]
    );
    assert!(asks.is_empty());
    let depth = get("/charts/depth.svg").await.text().await.unwrap();
    assert!(
        !depth.contains("data-empty"),
        "the depth chart draws the real book"
    );
    let participants: Value = get("/api/participants").await.json().await.unwrap();
    assert_eq!(participants["participants"][0]["id"], "h001");
    assert_eq!(
        participants["participants"][0]["tokens_wh"], 0,
        "settlement's balance reply is read"
    );
    let blocks: Value = get("/api/ledger/blocks").await.json().await.unwrap();
    assert!(blocks["blocks"].as_array().unwrap().is_empty());
    let ready: Value = get("/api/ready").await.json().await.unwrap();
    assert_eq!(
        ready["ready"], false,
        "nothing cleared or minted yet: {ready}"
    );
    tokio::time::timeout(Duration::from_secs(15), shutdown.stop())
        .await
        .expect("every service stops on shutdown");
}
