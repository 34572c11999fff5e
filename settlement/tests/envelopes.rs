//! Operating envelopes in settlement, on SQLite and PostgreSQL: compliance rows, the
//! `envelope_excess` statement line (price 0 and a penalty), no tokens from excess energy,
//! alerts after two consecutive settled intervals, measured flows per branch, signed results
//! (a bad signature or an altered body is refused and never settled) and the unsigned mode.

mod common;

use common::*;
use gridmesh_protocol::envelope::{EnvelopeAllocation, EnvelopeCompliance, SignedResult};
use gridmesh_protocol::grid::Branch;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::{GatewayId, Interval, NodeId, ParticipantId, PricePerMwh, Wh};
use settlement::audit;
use settlement::compliance::FlowAudience;
use settlement::rules::{self, MeterRow};
use settlement::service::{Event, ReadingStatus, Service, SettleOutcome};
use settlement::sources::{StaticSource, poll_once};
use std::collections::BTreeMap;

fn node(n: &str) -> NodeId {
    NodeId::new(n).unwrap()
}

/// root → f1 → l1, root → f2. alice at l1, bob at f1, carol and dave at f2.
fn homes() -> [(&'static str, &'static str, &'static str); 4] {
    [
        ("alice", "gw-alice", "l1"),
        ("bob", "gw-bob", "f1"),
        ("carol", "gw-carol", "f2"),
        ("dave", "gw-dave", "f2"),
    ]
}

fn street_enrollments() -> Vec<GatewayEnrollment> {
    let mut list = enrollments();
    for g in &mut list {
        g.node = node(
            homes()
                .iter()
                .find(|h| h.1 == g.gateway.as_str())
                .unwrap()
                .2,
        );
    }
    list.push(GatewayEnrollment {
        gateway: GatewayId::new("gw-dave").unwrap(),
        participant: ParticipantId::new("dave").unwrap(),
        node: node("f2"),
        public_key: gateway_key("gw-dave").public_key(),
        ..list[0].clone()
    });
    list
}

async fn street_service(url: &str) -> Service {
    let s = service(url).await;
    s.set_gateways(&street_enrollments()).await.unwrap();
    let mut ps = participants();
    ps.push(Participant {
        id: ParticipantId::new("dave").unwrap(),
        public_key: participant_key("dave").public_key(),
        node: node("f2"),
        kind: ParticipantKind::Household,
    });
    s.set_participants(&ps).await.unwrap();
    s
}

/// Export and import limits (Wh) per home, in [`homes`] order.
fn street_result(
    i: Interval,
    trades: Vec<gridmesh_protocol::market::Trade>,
    limits: [(i64, i64); 4],
    excess_price: i64,
) -> IntervalResult {
    let mut r = result(i, trades);
    r.network.branches = vec![
        Branch {
            node: node("f1"),
            parent: node("root"),
            import_limit_wh: None,
            export_limit_wh: Some(Wh(1_000)),
            fee_per_mwh: None,
        },
        Branch {
            node: node("l1"),
            parent: node("f1"),
            import_limit_wh: None,
            export_limit_wh: Some(Wh(600)),
            fee_per_mwh: None,
        },
        Branch {
            node: node("f2"),
            parent: node("root"),
            import_limit_wh: None,
            export_limit_wh: None,
            fee_per_mwh: None,
        },
    ];
    r.network.utility.envelope_excess_price = PricePerMwh(excess_price);
    r.envelopes = homes()
        .iter()
        .zip(limits)
        .map(|((p, g, n), (e, imp))| EnvelopeAllocation {
            gateway: GatewayId::new(*g).unwrap(),
            participant: ParticipantId::new(*p).unwrap(),
            node: node(n),
            export_limit_wh: Wh(e),
            import_limit_wh: Wh(imp),
            cleared_export_wh: Wh(0),
            cleared_import_wh: Wh(0),
        })
        .collect();
    r
}

const WIDE: (i64, i64) = (3_000, 3_000);

/// One interval's readings: (gateway, import, export) with a sequence and register base per
/// interval so registers keep rising.
async fn readings(s: &Service, i: Interval, seq: u64, list: &[(&str, i64, i64)]) {
    let envs: Vec<_> = list
        .iter()
        .map(|(g, imp, exp)| {
            sign(&reading(
                g,
                seq,
                i,
                *imp,
                *exp,
                *exp,
                1_000 + seq as i64 * 10_000,
            ))
        })
        .collect();
    let out = s.ingest(submit(&envs)).await.unwrap();
    assert!(
        out.iter().all(|o| o.status == ReadingStatus::Accepted),
        "{out:?}"
    );
}

fn line<'a>(
    st: &'a [rules::Statement],
    who: &str,
    kind: &str,
) -> Option<&'a settlement::rules::MoneyLine> {
    st.iter()
        .find(|s| s.participant.as_str() == who)
        .and_then(|s| s.lines.iter().find(|l| l.kind == kind))
}

/// alice sells 700 Wh to bob but her envelope allows 500 and she exports 900: 400 Wh excess.
async fn excess(backend: &str, price: i64) {
    let (url, _dir) = database(backend, &format!("envelope-excess-{}", price.abs())).await;
    let s = street_service(&url).await;
    let i = interval("12:00");
    let r = street_result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 700, 200_000)],
        // carol may import only 40 Wh and imports 50.
        [(500, 11_000), WIDE, (1_000, 40), WIDE],
        price,
    );
    s.add_result(&r).await.unwrap();
    readings(
        &s,
        i,
        1,
        &[
            ("gw-alice", 0, 900),
            ("gw-bob", 800, 0),
            ("gw-carol", 50, 300),
        ],
    )
    .await;
    assert!(matches!(
        s.settle(&i.key()).await.unwrap(),
        SettleOutcome::Settled { .. }
    ));

    // Compliance: a row per home with an envelope and readings (dave has no reading: none).
    let rows = s.compliance(None, 100, None).await.unwrap();
    let gateways: Vec<&str> = rows.iter().map(|r| r.gateway.as_str()).collect();
    assert_eq!(gateways, vec!["gw-alice", "gw-bob", "gw-carol"]);
    let alice = &rows[0];
    assert_eq!(
        (
            alice.export_wh,
            alice.export_limit_wh,
            alice.excess_export_wh,
            alice.excess_import_wh
        ),
        (Wh(900), Wh(500), Wh(400), Wh(0))
    );
    assert!(!alice.compliant());
    assert!(rows[1].compliant());
    assert_eq!(
        (rows[2].excess_export_wh, rows[2].excess_import_wh),
        (Wh(0), Wh(10))
    );
    let only_carol = s.compliance(None, 100, Some("carol")).await.unwrap();
    assert_eq!(only_carol, vec![rows[2].clone()]);
    assert_eq!(s.metrics.envelope_violations.get(), 2);
    assert_eq!(s.metrics.envelope_excess_wh.get(), 400);

    // Money: the excess is its own line at the excess price, not surplus at feed-in; only the
    // 500 Wh within the envelope count as delivery (200 Wh shortfall at retail).
    let st = s.statements(None, Some(&i.key())).await.unwrap();
    let ex = line(&st, "alice", "envelope_excess").expect("an envelope_excess line");
    assert_eq!(
        (ex.energy, ex.price, ex.amount.0, ex.counterparty.as_str()),
        (
            Wh(400),
            PricePerMwh(price),
            price * 400 / 1_000_000,
            "utility"
        )
    );
    assert!(line(&st, "alice", "surplus_export").is_none());
    assert_eq!(line(&st, "alice", "shortfall").unwrap().energy, Wh(200));
    let a = st
        .iter()
        .find(|x| x.participant.as_str() == "alice")
        .unwrap();
    assert_eq!((a.delivered, a.envelope_excess), (Wh(500), Wh(400)));
    // 700 Wh at 200/MWh = 140; 200 Wh shortfall at 300/MWh = −60; the excess line.
    assert_eq!(a.net.0, 140 - 60 + price * 400 / 1_000_000);
    // carol's import excess has no money line of its own: she pays retail as before.
    assert!(line(&st, "carol", "envelope_excess").is_none());
    assert_eq!(line(&st, "carol", "extra_import").unwrap().energy, Wh(50));
    let c = st
        .iter()
        .find(|x| x.participant.as_str() == "carol")
        .unwrap();
    assert_eq!(c.net.0, 24 - 15);

    // Money sums to zero over participants and the utility (the same pure rules the service
    // used, with the utility's side).
    let rows_in: Vec<MeterRow> = [("alice", 0, 900), ("bob", 800, 0), ("carol", 50, 300)]
        .iter()
        .map(|(p, imp, exp)| MeterRow {
            participant: ParticipantId::new(*p).unwrap(),
            gateway: GatewayId::new(format!("gw-{p}")).unwrap(),
            digest: p.to_string(),
            flagged: false,
            imported: Wh(*imp),
            exported: Wh(*exp),
            pv: Wh(*exp),
            battery_discharge: Wh(0),
        })
        .collect();
    let (pure, _) = rules::settle_with_envelopes(&r, &rows_in, &Default::default()).unwrap();
    let participants: i64 = st.iter().map(|x| x.net.0).sum();
    assert_eq!(participants + pure.utility_net.0, 0);
    assert_eq!(
        pure.statements.iter().map(|x| x.net.0).sum::<i64>(),
        participants
    );

    // Tokens: only the 500 Wh delivered within the envelope, never the excess (700 cleared).
    assert_eq!(s.balances("bob").await.unwrap().balance, Wh(500));
    assert_eq!(s.metrics.tokens_minted_wh.get(), 500);

    // The audit settles the interval again and agrees; it notices a tampered excess line and
    // a tampered compliance row.
    let report = audit::verify(s.db(), None).await.unwrap();
    assert_eq!(report.intervals_recomputed, 1);
    let pool = &s.db().pool;
    let body: String =
        sqlx::query_scalar("SELECT body FROM statements WHERE participant = 'alice'")
            .fetch_one(pool)
            .await
            .unwrap();
    let mut forged: rules::Statement = serde_json::from_str(&body).unwrap();
    for l in &mut forged.lines {
        if l.kind == "envelope_excess" {
            l.kind = "surplus_export".into();
        }
    }
    sqlx::query("UPDATE statements SET body = $1 WHERE participant = 'alice'")
        .bind(serde_json::to_string(&forged).unwrap())
        .execute(pool)
        .await
        .unwrap();
    let err = audit::verify(s.db(), None).await.unwrap_err().to_string();
    assert!(
        err.contains("statement of alice") && err.contains("settling the stored result"),
        "{err}"
    );
    sqlx::query("UPDATE statements SET body = $1 WHERE participant = 'alice'")
        .bind(body)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE compliance SET body = $1 WHERE gateway = 'gw-carol'")
        .bind(
            serde_json::to_string(&EnvelopeCompliance {
                excess_import_wh: Wh(0),
                import_limit_wh: Wh(50),
                ..rows[2].clone()
            })
            .unwrap(),
        )
        .execute(pool)
        .await
        .unwrap();
    let err = audit::verify(s.db(), None).await.unwrap_err().to_string();
    assert!(err.contains("compliance of gw-carol"), "{err}");
}

#[tokio::test]
async fn export_beyond_the_envelope_is_paid_nothing_and_never_tokenized_sqlite() {
    excess("sqlite", 0).await;
}

#[tokio::test]
async fn export_beyond_the_envelope_is_paid_nothing_and_never_tokenized_postgres() {
    excess("postgres", 0).await;
}

#[tokio::test]
async fn export_beyond_the_envelope_pays_a_negative_price_as_a_penalty_sqlite() {
    excess("sqlite", -150_000).await;
}

#[tokio::test]
async fn export_beyond_the_envelope_pays_a_negative_price_as_a_penalty_postgres() {
    excess("postgres", -150_000).await;
}

fn drain_alerts(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::EnvelopeAlert(a) = e {
            out.push(format!("{}@{}", a.gateway, a.last_interval.key()));
        }
    }
    out
}

/// alice exceeds once; carol exceeds in 12:15, 12:30 and 12:45 and complies at 13:00.
async fn alerts(backend: &str) {
    let (url, _dir) = database(backend, "envelope-alerts").await;
    let s = street_service(&url).await;
    let mut events = s.subscribe();
    let plan: [(&str, u64, i64, i64); 5] = [
        ("12:00", 1, 900, 100),
        ("12:15", 2, 100, 900),
        ("12:30", 3, 100, 900),
        ("12:45", 4, 100, 900),
        ("13:00", 5, 100, 100),
    ];
    let mut seen = Vec::new();
    for (hhmm, seq, alice_export, carol_export) in plan {
        let i = interval(hhmm);
        s.add_result(&street_result(
            i,
            vec![],
            [(500, 11_000), WIDE, (500, 11_000), WIDE],
            0,
        ))
        .await
        .unwrap();
        readings(
            &s,
            i,
            seq,
            &[("gw-alice", 0, alice_export), ("gw-carol", 0, carol_export)],
        )
        .await;
        s.settle(&i.key()).await.unwrap();
        seen.push((
            hhmm,
            drain_alerts(&mut events),
            s.envelope_alerts(100).await.unwrap(),
        ));
    }
    // One violation (alice at 12:00, carol at 12:15): no alert yet.
    assert!(
        seen[0].1.is_empty() && seen[0].2.is_empty(),
        "{:?}",
        seen[0]
    );
    assert!(
        seen[1].1.is_empty() && seen[1].2.is_empty(),
        "{:?}",
        seen[1]
    );
    // The second in a row raises it: one event, an active alert.
    assert_eq!(
        seen[2].1,
        vec![format!("gw-carol@{}", interval("12:30").key())]
    );
    let a = &seen[2].2;
    assert_eq!(a.len(), 1);
    assert_eq!(
        (
            a[0].gateway.as_str(),
            a[0].first_interval,
            a[0].intervals,
            a[0].excess_export_wh,
            a[0].active
        ),
        ("gw-carol", interval("12:15"), 2, Wh(800), true)
    );
    // The run goes on: no second event, the alert grows.
    assert!(seen[3].1.is_empty(), "{:?}", seen[3].1);
    assert_eq!((seen[3].2[0].intervals, seen[3].2[0].active), (3, true));
    // Compliant again: the alert stays listed, no longer active.
    assert!(seen[4].1.is_empty());
    assert_eq!(
        (
            seen[4].2[0].intervals,
            seen[4].2[0].last_interval,
            seen[4].2[0].active
        ),
        (3, interval("12:45"), false)
    );
    assert_eq!(s.metrics.envelope_alerts.get(), 1);
    assert_eq!(s.metrics.envelope_violations.get(), 4);
    audit::verify(s.db(), None).await.unwrap();
}

#[tokio::test]
async fn alert_after_two_consecutive_violations_not_after_one_sqlite() {
    alerts("sqlite").await;
}

#[tokio::test]
async fn alert_after_two_consecutive_violations_not_after_one_postgres() {
    alerts("postgres").await;
}

async fn flows(backend: &str) {
    let (url, _dir) = database(backend, "envelope-flows").await;
    let s = street_service(&url).await;
    let i = interval("12:00");
    s.add_result(&street_result(i, vec![], [WIDE; 4], 0))
        .await
        .unwrap();
    // A result whose interval has not ended (the clock is at 14:00) has no measured flows yet.
    s.add_result(&street_result(interval("14:00"), vec![], [WIDE; 4], 0))
        .await
        .unwrap();
    let (a, b, c) = ((30, 900), (600, 0), (50, 300));
    readings(
        &s,
        i,
        1,
        &[
            ("gw-alice", a.0, a.1),
            ("gw-bob", b.0, b.1),
            ("gw-carol", c.0, c.1),
        ],
    )
    .await;
    // A late-arriving quarantined reading never counts: a forged one for dave.
    let mut forged = sign(&reading("gw-dave", 1, i, 5, 5_000, 0, 1_000));
    forged.signature[3] ^= 1;
    assert_eq!(
        s.ingest(submit(&[forged])).await.unwrap()[0].status,
        ReadingStatus::Quarantined
    );

    let all = s.flows(None, 100, FlowAudience::Full).await.unwrap();
    assert_eq!(all.len(), 1, "only intervals that have ended");
    let f = &all[0];
    assert_eq!(f.interval, i);
    let by: BTreeMap<&str, _> = f.branches.iter().map(|b| (b.node.as_str(), b)).collect();
    let order: Vec<&str> = f.branches.iter().map(|b| b.node.as_str()).collect();
    assert_eq!(
        order,
        vec!["f1", "l1", "f2", "root"],
        "branches, then the root"
    );
    let check = |n: &str, imp: i64, exp: i64, reporting: u32, enrolled: u32| {
        let b = by[n];
        assert_eq!(
            (
                b.import_wh,
                b.export_wh,
                b.flow_wh,
                b.homes_reporting,
                b.homes_enrolled
            ),
            (Wh(imp), Wh(exp), Wh(imp - exp), reporting, enrolled),
            "{n}"
        );
    };
    check("l1", a.0, a.1, 1, 1);
    check("f1", a.0 + b.0, a.1 + b.1, 2, 2);
    check("f2", c.0, c.1, 1, 2);
    check("root", a.0 + b.0 + c.0, a.1 + b.1 + c.1, 3, 4);
    // Paging: since after the interval gives nothing.
    assert!(
        s.flows(Some(interval("12:15").start()), 100, FlowAudience::Full)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn measured_flows_sum_the_readings_below_each_branch_sqlite() {
    flows("sqlite").await;
}

#[tokio::test]
async fn measured_flows_sum_the_readings_below_each_branch_postgres() {
    flows("postgres").await;
}

fn market_key() -> SigningKeyPair {
    SigningKeyPair::from_seed([77; 32])
}

async fn signed(backend: &str) {
    let (url, _dir) = database(backend, "envelope-signed").await;
    let mut s = street_service(&url).await;
    s.set_market_key(Some(market_key().public_key()));
    let source = StaticSource::default();
    for g in street_enrollments() {
        source.add_gateway(g);
    }
    for p in participants() {
        source.add_participant(p);
    }
    let good = street_result(interval("12:00"), vec![], [WIDE; 4], 0);
    source.add_signed_result(SignedResult::sign(&good, &market_key()));
    // Signed by another key.
    let forged = street_result(interval("12:15"), vec![], [WIDE; 4], 0);
    source.add_signed_result(SignedResult::sign(
        &forged,
        &SigningKeyPair::from_seed([78; 32]),
    ));
    // Signed by the market, body altered afterwards (an envelope widened).
    let mut altered = SignedResult::sign(
        &street_result(interval("12:30"), vec![], [(500, 500); 4], 0),
        &market_key(),
    );
    let text = String::from_utf8(altered.body_base64.clone()).unwrap();
    altered.body_base64 = text
        .replacen("\"export_limit_wh\":500", "\"export_limit_wh\":900", 1)
        .into_bytes();
    assert_ne!(altered.body_base64, text.as_bytes());
    source.add_signed_result(altered);
    // An unsigned result is ignored in signed mode.
    source.add_result(street_result(interval("12:45"), vec![], [WIDE; 4], 0));

    assert_eq!(poll_once(&s, &source).await.unwrap(), 1);
    // Polled again: nothing new, and each refusal is counted once.
    assert_eq!(poll_once(&s, &source).await.unwrap(), 0);
    assert_eq!(s.metrics.results_refused.get(), 2);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT interval_key FROM results ORDER BY interval_start")
            .fetch_all(&s.db().pool)
            .await
            .unwrap();
    assert_eq!(stored, vec![interval("12:00").key()]);
    // The exact signed body is kept with the attestation.
    let body: String = sqlx::query_scalar("SELECT body FROM results")
        .fetch_one(&s.db().pool)
        .await
        .unwrap();
    assert_eq!(
        body.as_bytes(),
        SignedResult::sign(&good, &market_key()).body_base64
    );
    let settled = s.settle_due().await.unwrap();
    assert_eq!(settled, vec![interval("12:00").key()]);
    let report = audit::verify(s.db(), None).await.unwrap();
    assert_eq!(report.results_signed, 1);
    assert_eq!(
        report.market_key,
        Some(market_key().public_key().to_string())
    );
    // A stored result whose body is changed afterwards fails the audit.
    sqlx::query(
        "UPDATE results SET body = replace(body, '\"zone\":\"test\"', '\"zone\":\"tset\"')",
    )
    .execute(&s.db().pool)
    .await
    .unwrap();
    let err = audit::verify(s.db(), None).await.unwrap_err().to_string();
    assert!(
        err.contains("result") && err.contains("attestation"),
        "{err}"
    );

    // Unsigned mode (no market key): the unsigned results are read and trusted.
    let (url2, _dir2) = database(backend, "envelope-unsigned").await;
    let plain = street_service(&url2).await;
    assert_eq!(poll_once(&plain, &source).await.unwrap(), 1);
    let stored: Vec<String> = sqlx::query_scalar("SELECT interval_key FROM results")
        .fetch_all(&plain.db().pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![interval("12:45").key()]);
    assert_eq!(plain.metrics.results_refused.get(), 0);
}

#[tokio::test]
async fn results_that_fail_the_market_signature_are_refused_and_never_settled_sqlite() {
    signed("sqlite").await;
}

#[tokio::test]
async fn results_that_fail_the_market_signature_are_refused_and_never_settled_postgres() {
    signed("postgres").await;
}

/// A stand-in for the market's REST API as the contract describes it: registrations and
/// `GET /results/signed?since=&limit=` (no unsigned `/results`: signed mode must not need it).
async fn mock_market(
    signed: std::sync::Arc<std::sync::Mutex<Vec<SignedResult>>>,
) -> std::net::SocketAddr {
    use axum::extract::Query;
    use axum::routing::get;
    #[derive(serde::Deserialize)]
    struct Page {
        since: Option<String>,
        limit: Option<usize>,
    }
    let app = axum::Router::new()
        .route(
            "/gateways",
            get(|| async { axum::Json(street_enrollments()) }),
        )
        .route(
            "/participants",
            get(|| async { axum::Json(participants()) }),
        )
        .route(
            "/results/signed",
            get(move |Query(q): Query<Page>| {
                let signed = signed.clone();
                async move {
                    let since = q.since.map(|s| {
                        chrono::DateTime::parse_from_rfc3339(&s)
                            .unwrap()
                            .with_timezone(&chrono::Utc)
                    });
                    let list: Vec<SignedResult> = signed
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|r| {
                            let body: IntervalResult =
                                serde_json::from_slice(&r.body_base64).unwrap();
                            since.is_none_or(|s| body.interval.start() >= s)
                        })
                        .take(q.limit.unwrap_or(100))
                        .cloned()
                        .collect();
                    axum::Json(list)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn signed_results_over_http_and_the_envelope_endpoints() {
    use gridmesh_runtime::clock::Clock;
    use gridmesh_runtime::shutdown::Shutdown;
    use serde_json::Value;
    use std::time::Duration;

    let signed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let market = mock_market(signed.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let running = settlement::serve(
        settlement::SettlementConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
            market_url: Some(format!("http://{market}")),
            market_public_key: Some(market_key().public_key()),
            operator_token: Some("op-secret".into()),
            poll_secs: 0.05,
            ..Default::default()
        },
        Clock::scaled(epoch(), 1.0),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    // Readings first (registrations came from the mock market at start).
    let i = interval("12:00");
    let envs: Vec<_> = [
        ("gw-alice", 0, 900),
        ("gw-bob", 800, 0),
        ("gw-carol", 50, 300),
    ]
    .iter()
    .map(|(g, imp, exp)| sign(&reading(g, 1, i, *imp, *exp, *exp, 1_000)))
    .collect();
    let body = serde_json::to_vec(&envs).unwrap();
    let out: Vec<Value> = http
        .post(format!("{base}/readings"))
        .header("authorization", upload_auth("gw-alice", &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(out.iter().all(|o| o["status"] == "accepted"), "{out:?}");

    // The market publishes a forged result (refused) and then the real one (settled).
    let mut sse = http.get(format!("{base}/events")).send().await.unwrap();
    let forged = street_result(interval("11:45"), vec![], [WIDE; 4], 0);
    let good = street_result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 700, 200_000)],
        [(500, 11_000), WIDE, WIDE, WIDE],
        -150_000,
    );
    {
        let mut list = signed.lock().unwrap();
        list.push(SignedResult::sign(
            &forged,
            &SigningKeyPair::from_seed([78; 32]),
        ));
        list.push(SignedResult::sign(&good, &market_key()));
    }
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains("event: settled") {
            let chunk = sse.chunk().await.unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the signed result is settled");
    assert!(seen.contains(&i.key()), "{seen}");

    let stored: Vec<String> = sqlx::query_scalar("SELECT interval_key FROM results")
        .fetch_all(&running.service.db().pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![i.key()], "the forged result is never stored");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gridmesh_settlement_results_refused_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gridmesh_settlement_envelope_violations_total 1"),
        "{metrics}"
    );

    // Compliance is per home: operator only (a token is configured).
    let url = format!("{base}/compliance?since=2026-06-21T12:00:00Z&participant=alice");
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "unauthorized");
    let rows: Vec<EnvelopeCompliance> = http
        .get(&url)
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].excess_export_wh, Wh(400));
    let resp = http
        .get(format!("{base}/compliance?since=yesterday"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "bad_request");

    // Flows are public aggregates of at least 5 homes (3 here: the operator sees them); alerts
    // name homes (auditor, operator, the household).
    let flows: Vec<gridmesh_protocol::envelope::MeasuredFlows> = http
        .get(format!("{base}/flows?since=2026-06-21T12:00:00Z&limit=10"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flows.len(), 1);
    let root = flows[0].branches.last().unwrap();
    assert_eq!(
        (root.node.as_str(), root.export_wh, root.import_wh),
        ("root", Wh(1_200), Wh(850))
    );
    let alerts: Vec<Value> = http
        .get(format!("{base}/compliance/alerts"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(alerts.is_empty(), "one violation is no alert: {alerts:?}");

    // The statement carries the penalty line: 400 Wh × −150/MWh = −60.
    let st: Vec<Value> = http
        .get(format!("{base}/statements?participant=alice"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines = st[0]["lines"].as_array().unwrap();
    let excess = lines
        .iter()
        .find(|l| l["kind"] == "envelope_excess")
        .unwrap();
    assert_eq!(
        (excess["energy"].as_i64(), excess["amount"].as_i64()),
        (Some(400), Some(-60))
    );

    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in ["/compliance", "/compliance/alerts", "/flows"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    shutdown.trigger();
    shutdown.stop().await;
}
