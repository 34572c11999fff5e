//! The monthly household statement (issue 18): its totals equal the sum of its lines and the
//! per-interval statements of `GET /statements`; its savings equal a recomputation in this test
//! from the submitted readings, the trades and the tariffs (the settlement rules re-derived
//! here by hand, not the code under test); the wrong role is refused; CSV and HTML carry the
//! same figures; months are UTC calendar months. On SQLite and PostgreSQL.

mod common;

use common::*;
use gridmesh_protocol::api::settlement::{MonthlyStatement, Statement};
use gridmesh_protocol::market::{Counterparty, Trade};
use gridmesh_protocol::request::{authorization, gateway_authorization};
use gridmesh_protocol::{GatewayId, Interval, ParticipantId};
use reqwest::StatusCode;
use serde_json::Value;
use settlement::SettlementConfig;
use std::collections::BTreeMap;
use std::time::Duration;

type Running = Api;

async fn start(backend: &str) -> Running {
    let (url, dir) = database(backend, "monthly").await;
    let config = SettlementConfig {
        auditor_token: Some(AUDITOR.into()),
        poll_secs: 0.05,
        ..api_config(url)
    };
    serve_api(config, dir).await
}

enum Who<'a> {
    Nobody,
    Participant(&'a str),
    Gateway(&'a str),
    Bearer(&'a str),
}

impl Running {
    async fn get(&self, path: &str, who: Who<'_>) -> (StatusCode, String) {
        let now = chrono::Utc::now().timestamp();
        let auth = match who {
            Who::Nobody => None,
            Who::Participant(p) => Some(authorization(
                &ParticipantId::new(p).unwrap(),
                &participant_key(p),
                now,
                "GET",
                path,
                b"",
            )),
            Who::Gateway(g) => Some(gateway_authorization(
                &GatewayId::new(g).unwrap(),
                &gateway_key(g),
                now,
                "GET",
                path,
                b"",
            )),
            Who::Bearer(t) => Some(format!("Bearer {t}")),
        };
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    async fn upload(&self, gateway: &str, readings: &[gridmesh_protocol::reading::Reading]) {
        let envs: Vec<_> = readings.iter().map(sign).collect();
        let body = serde_json::to_vec(&envs).unwrap();
        let response = self
            .http
            .post(format!("{}/readings", self.base))
            .header("authorization", upload_auth(gateway, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let outcomes: Value = response.json().await.unwrap();
        for o in outcomes.as_array().unwrap() {
            assert_eq!(o["status"], "accepted", "{o}");
        }
    }

    async fn statements(&self) -> Vec<Statement> {
        let (status, body) = self.get("/statements", Who::Bearer(AUDITOR)).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// One household's metered energy in one interval (grid-meter deltas of its reading).
#[derive(Clone, Copy)]
struct Meter {
    import: i64,
    export: i64,
}

/// The scenario: (interval, trades, readings per household).
fn scenario() -> Vec<(Interval, Vec<Trade>, BTreeMap<&'static str, Meter>)> {
    let m = |import, export| Meter { import, export };
    vec![
        // alice sells 500 Wh to bob and exports 600 (100 surplus); bob imports 600 (100
        // extra); carol only imports.
        (
            interval("12:00"),
            vec![trade(
                order("alice", "a1"),
                order("bob", "b1"),
                500,
                200_000,
            )],
            BTreeMap::from([
                ("alice", m(0, 600)),
                ("bob", m(600, 0)),
                ("carol", m(333, 0)),
            ]),
        ),
        // alice sells 400 to bob and 333 to carol, exports only 700 (33 short); bob imports 301
        // (99 untaken); carol buys 211 from the utility too and imports 700 (156 extra).
        (
            interval("12:15"),
            vec![
                trade(order("alice", "a2"), order("bob", "b2"), 400, 150_001),
                trade(order("alice", "a3"), order("carol", "c1"), 333, 123_457),
                trade(Counterparty::Utility, order("carol", "c2"), 211, 250_000),
            ],
            BTreeMap::from([
                ("alice", m(5, 700)),
                ("bob", m(301, 0)),
                ("carol", m(700, 0)),
            ]),
        ),
        // bob sells 250 to carol but sends no reading (estimated: his whole sale is a
        // shortfall); alice sells 120 to the utility and exports 90.
        (
            interval("12:30"),
            vec![
                trade(order("bob", "b3"), order("carol", "c3"), 250, 210_000),
                trade(order("alice", "a4"), Counterparty::Utility, 120, 99_999),
            ],
            BTreeMap::from([("alice", m(17, 90)), ("carol", m(260, 0))]),
        ),
    ]
}

/// `price × wh / 1 000 000` rounded half away from zero (the documented rule of a trade's cost).
fn cost(price: i64, wh: i64) -> i64 {
    let exact = i128::from(price) * i128::from(wh);
    let r = (exact.abs() + 500_000) / 1_000_000 * exact.signum();
    i64::try_from(r).unwrap()
}

fn party(c: &Counterparty) -> Option<&str> {
    match c {
        Counterparty::Order { participant, .. } => Some(participant.as_str()),
        Counterparty::Utility => None,
    }
}

/// The expected (actual net, baseline) of `who` in one interval with readings, by the
/// settlement rules of settlement/src/rules.rs's docs, re-derived here: trades are firm; a
/// seller's export short of its sales is bought at retail, beyond them sold at feed-in; a
/// buyer's import short of its purchases is sold back at feed-in, beyond them bought at retail.
/// The baseline is the same metered energy with the utility only.
fn expected(trades: &[Trade], who: &str, m: Meter) -> (i64, i64) {
    let (mut net, mut sold, mut bought) = (0, 0, 0);
    for t in trades {
        if party(&t.seller) == Some(who) {
            net += cost(t.price.0, t.energy.0);
            sold += t.energy.0;
        }
        if party(&t.buyer) == Some(who) {
            net -= cost(t.price.0, t.energy.0);
            bought += t.energy.0;
        }
    }
    let (retail, feed_in) = (RETAIL.0, FEED_IN.0);
    if m.export < sold {
        net -= cost(retail, sold - m.export);
    } else {
        net += cost(feed_in, m.export - sold);
    }
    if m.import < bought {
        net += cost(feed_in, bought - m.import);
    } else {
        net -= cost(retail, m.import - bought);
    }
    let baseline = cost(feed_in, m.export) - cost(retail, m.import);
    (net, baseline)
}

/// Uploads the scenario's readings, then publishes its results (and one of 31 May, 23:45 UTC,
/// which belongs to May), and waits until all are settled.
async fn settle_scenario(s: &Running) -> BTreeMap<&'static str, Vec<String>> {
    let mut per_gateway: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    let mut digests: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (n, (i, _, meters)) in scenario().into_iter().enumerate() {
        for (who, m) in meters {
            let gateway = HOMES.iter().find(|h| h.0 == who).unwrap().1;
            let list = per_gateway.entry(gateway).or_default();
            let r = reading(
                gateway,
                list.len() as u64 + 1,
                i,
                m.import,
                m.export,
                m.export + 50,
                1_000 * (n as i64 + 1),
            );
            digests.entry(who).or_default().push(sign(&r).digest_hex());
            list.push(r);
        }
    }
    for (gateway, list) in &per_gateway {
        s.upload(gateway, list).await;
    }
    for (i, trades, _) in scenario() {
        s.source.add_result(result(i, trades));
    }
    let may = Interval::parse("2026-05-31T23:45:00Z", 15).unwrap();
    s.source.add_result(result(
        may,
        vec![trade(
            order("alice", "m1"),
            order("carol", "m2"),
            100,
            200_000,
        )],
    ));
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            // 3 households × 3 June intervals + alice and carol in May.
            if s.statements().await.len() >= 11 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every interval is settled");
    digests
}

async fn statements_add_up_and_savings_match(backend: &str) {
    let s = start(backend).await;
    let digests = settle_scenario(&s).await;
    let all = s.statements().await;
    let scenario = scenario();
    for who in ["alice", "bob", "carol"] {
        let path = format!("/statements/monthly/{who}/2026-06");
        let (status, body) = s.get(&path, Who::Participant(who)).await;
        assert_eq!(status, 200, "{who}: {body}");
        let m: MonthlyStatement = serde_json::from_str(&body).unwrap();
        assert_eq!((m.month.as_str(), m.time_zone.as_str()), ("2026-06", "UTC"));
        assert_eq!(m.from.to_rfc3339(), "2026-06-01T00:00:00+00:00");
        // Every interval is the household's statement from GET /statements, unchanged; the
        // May interval is not in June.
        let june: Vec<&Statement> = all
            .iter()
            .filter(|x| x.participant.as_str() == who && x.interval.starts_with("2026-06"))
            .collect();
        let listed: Vec<&Statement> = m.intervals.iter().map(|i| &i.statement).collect();
        assert_eq!(listed, june, "{who}");
        assert_eq!(m.totals.intervals as usize, june.len());
        // Totals: the sum of the lines, and of the per-interval statements.
        let lines: Vec<_> = m
            .intervals
            .iter()
            .flat_map(|i| &i.statement.lines)
            .collect();
        let sum = |f: &dyn Fn(&str) -> bool| -> i64 {
            lines
                .iter()
                .filter(|l| f(&l.kind))
                .map(|l| l.amount.0)
                .sum()
        };
        let net_of_lines = sum(&|_| true);
        assert_eq!(m.totals.net.0, net_of_lines, "{who}");
        assert_eq!(m.totals.net.0, june.iter().map(|x| x.net.0).sum::<i64>());
        assert_eq!(m.totals.trades.0, sum(&|k| k.starts_with("trade_")));
        assert_eq!(
            m.totals.imbalance.0,
            sum(&|k| !k.starts_with("trade_")),
            "every other line of today's rules is an imbalance"
        );
        assert_eq!(m.totals.fees.0, 0);
        let field = |f: fn(&Statement) -> i64| june.iter().map(|x| f(x)).sum::<i64>();
        assert_eq!(m.totals.sold.0, field(|x| x.sold.0));
        assert_eq!(m.totals.bought.0, field(|x| x.bought.0));
        assert_eq!(m.totals.imported.0, field(|x| x.imported.0));
        assert_eq!(m.totals.exported.0, field(|x| x.exported.0));
        assert_eq!(m.totals.tokens.0, field(|x| x.tokens.0));
        for i in &m.intervals {
            assert_eq!(
                i.trades.0 + i.imbalance.0 + i.fees.0,
                i.statement.net.0,
                "{who} {}",
                i.interval
            );
            assert_eq!(i.from_neighbours.0 + i.from_grid.0, i.statement.imported.0);
            assert_eq!((i.retail_price, i.feed_in_price), (RETAIL, FEED_IN));
        }
        // Savings: recomputed here from the readings, the trades and the tariffs.
        let (mut actual, mut baseline, mut compared, mut estimated) = (0, 0, 0, 0);
        for (i, trades, meters) in &scenario {
            let involved = meters.contains_key(who)
                || trades
                    .iter()
                    .any(|t| party(&t.seller) == Some(who) || party(&t.buyer) == Some(who));
            if !involved {
                continue;
            }
            match meters.get(who) {
                Some(&meter) => {
                    let (net, base) = expected(trades, who, meter);
                    let listed = m.intervals.iter().find(|x| x.interval == i.key()).unwrap();
                    assert_eq!(listed.statement.net.0, net, "{who} {}", i.key());
                    assert_eq!(listed.baseline.map(|b| b.0), Some(base));
                    actual += net;
                    baseline += base;
                    compared += 1;
                }
                None => estimated += 1,
            }
        }
        assert_eq!(m.savings.actual.0, actual, "{who}");
        assert_eq!(m.savings.baseline.0, baseline, "{who}");
        assert_eq!(m.savings.savings.0, actual - baseline, "{who}");
        assert_eq!(
            (m.savings.intervals, m.savings.estimated_excluded),
            (compared, estimated),
            "{who}"
        );
        // Community share: bob's import from neighbours is what alice delivered to him.
        if who == "bob" {
            assert_eq!(m.community.from_neighbours.0, 500 + 301);
            assert_eq!(m.community.from_grid.0, 600 - 500);
            assert_eq!(m.community.import_share_permille, Some(801 * 1000 / 901));
            assert!(
                savings_positive(&m),
                "bob bought below retail: {:?}",
                m.savings
            );
        }
        // The digests of the readings its gateway signed, every one.
        let mut listed: Vec<String> = m
            .intervals
            .iter()
            .flat_map(|i| i.readings.iter().map(|r| r.digest.clone()))
            .collect();
        listed.sort();
        let mut signed = digests[who].clone();
        signed.sort();
        assert_eq!(listed, signed, "{who}");
        // CSV: the same lines, the same net.
        let (status, csv) = s
            .get(&format!("{path}?format=csv"), Who::Participant(who))
            .await;
        assert_eq!(status, 200);
        let net_csv: i64 = csv
            .lines()
            .filter(|l| l.starts_with("line,"))
            .map(|l| l.split(',').nth(6).unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!(net_csv, m.totals.net.0, "{csv}");
        assert!(
            csv.contains(&format!("total,2026-06,net,,,,{},,,", m.totals.net.0)),
            "{csv}"
        );
        for d in &digests[who] {
            assert!(csv.contains(d.as_str()));
        }
        let (status, html) = s
            .get(&format!("{path}?format=html"), Who::Participant(who))
            .await;
        assert_eq!(status, 200);
        assert!(html.contains("Monthly statement 2026-06"));
        assert!(html.contains("months in UTC"));
        assert!(html.contains(&digests[who][0]));
    }
    // The May interval is May's: estimated (no readings that old), left out of the savings.
    let (status, body) = s
        .get("/statements/monthly/carol/2026-05", Who::Bearer(AUDITOR))
        .await;
    assert_eq!(status, 200, "{body}");
    let may: MonthlyStatement = serde_json::from_str(&body).unwrap();
    assert_eq!(may.intervals.len(), 1);
    assert_eq!(may.intervals[0].interval, "2026-05-31T23:45:00Z/15");
    assert_eq!(
        (may.savings.intervals, may.savings.estimated_excluded),
        (0, 1)
    );
    assert_eq!(may.totals.net.0, -20);
    s.shutdown.stop().await;
}

fn savings_positive(m: &MonthlyStatement) -> bool {
    m.savings.savings.0 > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_statement_adds_up_on_sqlite() {
    statements_add_up_and_savings_match("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_statement_adds_up_on_postgres() {
    statements_add_up_and_savings_match("postgres").await;
}

/// The household, its own gateway, the auditor and the operator read it; another household,
/// another household's gateway and no credential are refused; a bad month is a clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_household_its_gateway_auditor_and_operator_read_it() {
    let s = start("sqlite").await;
    settle_scenario(&s).await;
    let path = "/statements/monthly/alice/2026-06";
    for who in [
        Who::Participant("alice"),
        Who::Gateway("gw-alice"),
        Who::Bearer(AUDITOR),
        Who::Bearer(OPERATOR),
    ] {
        let (status, body) = s.get(path, who).await;
        assert_eq!(status, 200, "{body}");
        let m: MonthlyStatement = serde_json::from_str(&body).unwrap();
        assert_eq!(m.participant.as_str(), "alice");
    }
    let (status, body) = s.get(path, Who::Participant("bob")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("bob may read only its own data"), "{body}");
    let (status, body) = s.get(path, Who::Gateway("gw-bob")).await;
    assert_eq!(status, 403, "another household's gateway: {body}");
    let (status, body) = s.get(path, Who::Nobody).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = s.get(path, Who::Bearer("guess")).await;
    assert_eq!(status, 401, "{body}");
    // A gateway's signature over another path does not open this one.
    let forged = gateway_authorization(
        &GatewayId::new("gw-alice").unwrap(),
        &gateway_key("gw-alice"),
        chrono::Utc::now().timestamp(),
        "GET",
        "/statements/monthly/alice/2026-05",
        b"",
    );
    let response = s
        .http
        .get(format!("{}{path}", s.base))
        .header("authorization", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    for bad in ["2026-13", "June", "2026-6"] {
        let p = format!("/statements/monthly/alice/{bad}");
        let (status, body) = s.get(&p, Who::Participant("alice")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("YYYY-MM"), "{body}");
    }
    let (status, body) = s
        .get(&format!("{path}?format=pdf"), Who::Participant("alice"))
        .await;
    assert_eq!(status, 400, "{body}");
    // A month without settled intervals is an empty statement, not an error.
    let (status, body) = s
        .get(
            "/statements/monthly/alice/2026-04",
            Who::Participant("alice"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let empty: MonthlyStatement = serde_json::from_str(&body).unwrap();
    assert!(empty.intervals.is_empty());
    assert_eq!(empty.totals.net.0, 0);
    s.shutdown.stop().await;
}
