//! `POST /orders/batch` over a real socket on SQLite and PostgreSQL (issue 16): one outcome per
//! order, each the answer `POST /orders` gives the same envelope; the batch limits; and nothing
//! lost under concurrent load: while single orders, batches and duplicates of both arrive and
//! the interval is cleared in the middle of it, every order answered 201 is in the book its
//! interval cleared, and no order is booked twice.

use chrono::{DateTime, Utc};
use gridmesh_protocol::api::market::{OrderBatch, OrderBatchAccepted};
use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::{Order, OrderCancel};
use gridmesh_protocol::registry::{Participant, ParticipantKind};
use gridmesh_protocol::signing::{Signable, SignedEnvelope};
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, Side, Wh, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, RunningMarket, serve};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const TOKEN: &str = "operator-secret";

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn config(database_url: String) -> MarketConfig {
    MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        zone: "test".into(),
        operator_token: Some(TOKEN.into()),
        topology: Some(Network {
            root: node("sub"),
            branches: vec![Branch {
                node: node("f1"),
                parent: node("sub"),
                import_limit_wh: Some(Wh(50_000)),
                export_limit_wh: Some(Wh(50_000)),
                fee_per_mwh: None,
            }],
            utility: UtilityTariff {
                retail_price: Some(PricePerMwh(30_000)),
                feed_in_price: Some(PricePerMwh(8_000)),
                ..Default::default()
            },
        }),
        ..MarketConfig::default()
    }
}

fn key(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_seed([seed; 32])
}

fn order(who: &str, interval: Interval, side: Side, q: i64, nonce: u64) -> Order {
    Order {
        zone: Some(ZoneId::new("test").unwrap()),
        participant: ParticipantId::new(who).unwrap(),
        node: node("f1"),
        interval,
        side,
        quantity: Wh(q),
        limit_price: PricePerMwh(20_000),
        nonce,
    }
}

async fn post(
    http: &reqwest::Client,
    m: &str,
    path: &str,
    body: &impl serde::Serialize,
) -> (u16, Value) {
    let r = http
        .post(format!("{m}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn start(url: String) -> (RunningMarket, Shutdown) {
    let shutdown = Shutdown::new();
    let m = serve(config(url), Clock::scaled(epoch(), 1.0), shutdown.clone())
        .await
        .unwrap();
    (m, shutdown)
}

async fn register(http: &reqwest::Client, m: &str, id: &str, seed: u8) {
    let p = Participant {
        id: ParticipantId::new(id).unwrap(),
        public_key: key(seed).public_key(),
        node: node("f1"),
        kind: ParticipantKind::Household,
    };
    let r = http
        .post(format!("{m}/participants"))
        .bearer_auth(TOKEN)
        .json(&p)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

async fn every_outcome(url: String) {
    let (m, shutdown) = start(url).await;
    let base = m.url();
    let http = reqwest::Client::new();
    register(&http, &base, "alice", 1).await;
    register(&http, &base, "bob", 2).await;
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let past = Interval::parse("2026-06-21T12:00:00Z", 15).unwrap();

    let good_a = SignedEnvelope::sign(&order("alice", open, Side::Buy, 1200, 1), &key(1));
    let good_b = SignedEnvelope::sign(&order("bob", open, Side::Sell, 800, 1), &key(2));
    let mut forged = SignedEnvelope::sign(&order("alice", open, Side::Buy, 1200, 2), &key(1));
    let at = forged.payload.len() - 24;
    forged.payload[at + 7] ^= 1; // quantity changed after signing
    let impostor = SignedEnvelope::sign(&order("alice", open, Side::Buy, 1, 3), &key(9));
    let stranger = SignedEnvelope::sign(&order("zed", open, Side::Buy, 1, 1), &key(9));
    let late = SignedEnvelope::sign(&order("alice", past, Side::Buy, 5, 4), &key(1));
    let zero = SignedEnvelope::sign_bytes(order("bob", open, Side::Buy, 0, 5).encode(), &key(2));
    let cancel = SignedEnvelope::sign(
        &OrderCancel {
            participant: ParticipantId::new("alice").unwrap(),
            order_nonce: 1,
        },
        &key(1),
    );
    let batch = OrderBatch {
        orders: vec![
            good_a.clone(),
            forged.clone(),
            good_b.clone(),
            impostor.clone(),
            stranger.clone(),
            late.clone(),
            zero.clone(),
            cancel.clone(),
            // The same order twice in one batch: booked once.
            good_a.clone(),
        ],
    };
    let (status, body) = post(&http, &base, "/orders/batch", &batch).await;
    assert_eq!(status, 200, "{body}");
    let answer: OrderBatchAccepted = serde_json::from_value(body.clone()).unwrap();
    let got: Vec<(u16, Option<&str>, Option<&str>)> = answer
        .results
        .iter()
        .map(|r| (r.status, r.code.as_deref(), r.order_id.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (201, None, Some("alice:1")),
            (401, Some("bad_signature"), None),
            (201, None, Some("bob:1")),
            (401, Some("key_mismatch"), None),
            (403, Some("unknown_participant"), None),
            (409, Some("gate_closed"), None),
            (422, Some("invalid_quantity"), None),
            (400, Some("wrong_message"), None),
            (409, Some("replayed_nonce"), None),
        ],
        "{body}"
    );
    assert_eq!((answer.accepted, answer.rejected), (2, 7));
    for r in answer.results.iter().filter(|r| r.status != 201) {
        assert!(r.message.as_ref().is_some_and(|m| m.len() > 10), "{r:?}");
    }
    // Each refusal is what POST /orders answers for the same envelope, message included.
    for (envelope, item) in [
        &forged, &impostor, &stranger, &late, &zero, &cancel, &good_a,
    ]
    .into_iter()
    .zip([1, 3, 4, 5, 6, 7, 8])
    {
        let (status, single) = post(&http, &base, "/orders", envelope).await;
        let item = &answer.results[item];
        assert_eq!(status, item.status, "{single}");
        assert_eq!(single["code"].as_str(), item.code.as_deref());
        assert_eq!(single["message"].as_str(), item.message.as_deref());
    }
    // A replayed batch books nothing again.
    let (status, body) = post(
        &http,
        &base,
        "/orders/batch",
        &OrderBatch {
            orders: vec![good_b.clone()],
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["code"], "replayed_nonce", "{body}");

    // The batch itself: empty, too many, not a batch.
    let (status, body) = post(
        &http,
        &base,
        "/orders/batch",
        &OrderBatch { orders: vec![] },
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let too_many = OrderBatch {
        orders: (0..1001u64)
            .map(|n| SignedEnvelope::sign(&order("alice", open, Side::Buy, 1, 100 + n), &key(1)))
            .collect(),
    };
    let (status, body) = post(&http, &base, "/orders/batch", &too_many).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("at most 1000"),
        "{body}"
    );
    let (status, body) = post(&http, &base, "/orders/batch", &good_a).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    // 1000 is allowed, and all of them are booked.
    let full = OrderBatch {
        orders: too_many.orders[..1000].to_vec(),
    };
    let (status, body) = post(&http, &base, "/orders/batch", &full).await;
    assert_eq!(status, 200);
    assert_eq!(body["accepted"], 1000, "{}", body["results"][0]);

    let stored = m
        .market
        .store
        .orders(None, Some(&open), true)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1002);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    every_outcome(format!("sqlite://{}", dir.path().join("m.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_postgres() {
    let url = gridmesh_runtime::db::scratch::fresh_postgres("order_batch")
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    every_outcome(url).await;
}

/// Concurrent singles, batches and duplicates of both while the interval is cleared.
async fn nothing_lost(url: String) {
    let (m, shutdown) = start(url).await;
    let base = m.url();
    let http = reqwest::Client::new();
    const PEOPLE: u8 = 8;
    for p in 0..PEOPLE {
        register(&http, &base, &format!("p{p}"), 10 + p).await;
    }
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let envelope = move |p: u8, nonce: u64| {
        let side = if nonce % 2 == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        SignedEnvelope::sign(
            &order(&format!("p{p}"), open, side, 100 + nonce as i64, nonce),
            &key(10 + p),
        )
    };
    // Each participant: nonces 1..=40 one by one, 41..=240 in batches of 50; every request is
    // sent twice at the same moment (a client retrying), so duplicates race each other.
    let mut tasks = Vec::new();
    for p in 0..PEOPLE {
        for copy in 0..2 {
            let (http, base) = (http.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let mut created = Vec::new();
                let mut refused = BTreeMap::new();
                for nonce in 1..=40u64 {
                    let (status, body) = post(&http, &base, "/orders", &envelope(p, nonce)).await;
                    match status {
                        201 => created.push(body["order_id"].as_str().unwrap().to_owned()),
                        _ => {
                            *refused
                                .entry(body["code"].as_str().unwrap().to_owned())
                                .or_insert(0) += 1
                        }
                    }
                }
                for first in (41..=240u64).step_by(50) {
                    let batch = OrderBatch {
                        orders: (first..first + 50).map(|n| envelope(p, n)).collect(),
                    };
                    let (status, body) = post(&http, &base, "/orders/batch", &batch).await;
                    assert_eq!(status, 200, "{body}");
                    for r in body["results"].as_array().unwrap() {
                        match r["status"].as_u64().unwrap() {
                            201 => created.push(r["order_id"].as_str().unwrap().to_owned()),
                            _ => {
                                *refused
                                    .entry(r["code"].as_str().unwrap().to_owned())
                                    .or_insert(0) += 1
                            }
                        }
                    }
                }
                let _ = copy;
                (created, refused)
            }));
        }
    }
    // Clear the interval while the orders are arriving (the gate closes mid-load).
    let market = Arc::clone(&m.market);
    let clearing = tokio::spawn(async move {
        loop {
            let booked = market.store.orders(None, Some(&open), true).await.unwrap();
            if booked.len() >= 800 {
                return market.clear_interval(open).await.unwrap();
            }
            tokio::task::yield_now().await;
        }
    });
    let mut created = Vec::new();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        let (c, r) = t.await.unwrap();
        created.extend(c);
        for (code, n) in r {
            *refused.entry(code).or_default() += n;
        }
    }
    let result = clearing.await.unwrap();
    let created_set: BTreeSet<String> = created.iter().cloned().collect();
    assert_eq!(
        created.len(),
        created_set.len(),
        "an order was booked twice"
    );
    let in_book: BTreeSet<String> = result.orders.iter().map(|o| o.order_id.clone()).collect();
    assert_eq!(
        created_set, in_book,
        "every 201 order is in the cleared book, nothing else"
    );
    // Every request was answered: booked once, or refused as a replay or after the gate.
    let sent = usize::from(PEOPLE) * 2 * 240;
    assert_eq!(created.len() + refused.values().sum::<usize>(), sent);
    let known: BTreeSet<&str> = ["replayed_nonce", "gate_closed"].into();
    assert!(
        refused.keys().all(|c| known.contains(c.as_str())),
        "{refused:?}"
    );
    assert!(refused.get("gate_closed").copied().unwrap_or(0) > 0 || created.len() == sent / 2);
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    nothing_lost(format!("sqlite://{}", dir.path().join("m.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_postgres() {
    let url = gridmesh_runtime::db::scratch::fresh_postgres("order_batch_load")
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    nothing_lost(url).await;
}

/// `market-engine order submit-batch --file orders.jsonl`: one JSON line per order, exit 2
/// naming the refusals; a malformed line is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trader_cli_submits_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (m, shutdown) = start(format!("sqlite://{}", dir.path().join("m.db").display())).await;
    let base = m.url();
    let http = reqwest::Client::new();
    register(&http, &base, "alice", 1).await;
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let line = |nonce: u64, seed: u8| {
        serde_json::to_string(&SignedEnvelope::sign(
            &order("alice", open, Side::Buy, 100, nonce),
            &key(seed),
        ))
        .unwrap()
    };
    let file = dir.path().join("orders.jsonl");
    std::fs::write(
        &file,
        format!("{}\n\n{}\n{}\n", line(1, 1), line(2, 1), line(3, 9)),
    )
    .unwrap();
    let run = |file: std::path::PathBuf, base: String| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_market-engine"))
                .args(["order", "submit-batch", "--market", &base, "--file"])
                .arg(&file)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let out = run(file.clone(), base.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        (lines[0]["line"].as_u64(), lines[0]["status"].as_u64()),
        (Some(1), Some(201))
    );
    assert_eq!(lines[0]["order_id"], "alice:1");
    assert_eq!(
        (lines[1]["line"].as_u64(), lines[1]["status"].as_u64()),
        (Some(3), Some(201))
    );
    assert_eq!(
        (lines[2]["line"].as_u64(), lines[2]["code"].as_str()),
        (Some(4), Some("key_mismatch"))
    );
    assert!(stderr.contains("1 of 3 orders were refused"), "{stderr}");
    // A malformed line: nothing sent, the line named.
    std::fs::write(&file, format!("{}\nnot json\n", line(5, 1))).unwrap();
    let out = run(file, base).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("line 2"), "{stderr}");
    let stored = m
        .market
        .store
        .orders(None, Some(&open), true)
        .await
        .unwrap();
    let ids: Vec<&str> = stored.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(ids, ["alice:1", "alice:2"]);
    shutdown.stop().await;
}

/// `/metrics` times the stages of single orders (`POST /orders`): the count of timed orders and
/// a sum per stage, so a benchmark can say where an order's latency goes (issue 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_order_stages_are_timed_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (m, shutdown) = start(format!("sqlite://{}", dir.path().join("m.db").display())).await;
    let base = m.url();
    let http = reqwest::Client::new();
    register(&http, &base, "p1", 11).await;
    let open = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    for nonce in 1..=3 {
        let e = SignedEnvelope::sign(&order("p1", open, Side::Buy, 100, nonce), &key(11));
        assert_eq!(post(&http, &base, "/orders", &e).await.0, 201);
    }
    // A batch is not counted among the single orders.
    let batch = OrderBatch {
        orders: vec![SignedEnvelope::sign(
            &order("p1", open, Side::Buy, 100, 4),
            &key(11),
        )],
    };
    assert_eq!(post(&http, &base, "/orders/batch", &batch).await.0, 200);
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\ngridmesh_market_single_orders_timed_total 3\n"),
        "{text}"
    );
    for stage in ["decode", "claim", "verify", "admit", "store"] {
        let line =
            format!("gridmesh_market_single_order_stage_microseconds_total{{stage=\"{stage}\"}} ");
        let value: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("no {stage} line in {text}"))
            .parse()
            .unwrap();
        // A SQLite commit (synchronous = FULL) takes at least a few microseconds.
        if stage == "store" {
            assert!(value > 0, "store time summed: {text}");
        }
    }
    shutdown.stop().await;
}
