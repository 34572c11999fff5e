//! `edge-gateway statement --month 2026-06` (issue 18): fetches the household's monthly
//! statement with the gateway's signed request from a settlement mock that checks that request
//! as settlement does (the enrolled key, exactly this path and query, freshness; 401 otherwise,
//! 403 for another household, 400 for a bad month), prints it, and checks every reading it names
//! against a real outbox: the digest of an envelope still waiting, the signed energy of a
//! delivered one, "not checked" without a local record; a differing reading fails the command.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use edge_gateway::accountant::Resume;
use edge_gateway::config::GatewayConfig;
use edge_gateway::outbox::{Outbox, Stored};
use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::api::settlement::{
    CommunityShare, MoneyLine, MonthlyInterval, MonthlyStatement, MonthlyTotals, ReadingDigest,
    Savings, Statement, StoredReadingStatus,
};
use gridmesh_protocol::example::example_reading;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::request::SignedGatewayRequest;
use gridmesh_protocol::signing::{PublicKey, SignedEnvelope};
use gridmesh_protocol::{GatewayId, Interval, Money, ParticipantId, PricePerMwh, Reading, Wh};
use std::process::Command;
use std::sync::{Arc, Mutex};

const BIN: &str = env!("CARGO_BIN_EXE_edge-gateway");

#[derive(Clone)]
struct Mock {
    /// The gateway's enrolled key, as settlement knows it.
    enrolled: PublicKey,
    /// The household the gateway is enrolled for.
    owner: String,
    statement: Arc<Mutex<MonthlyStatement>>,
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            code: code.into(),
            message,
        }),
    )
        .into_response()
}

/// What settlement answers on `GET /statements/monthly/{participant}/{month}` to a gateway.
async fn monthly(
    State(m): State<Mock>,
    headers: HeaderMap,
    uri: Uri,
    Path((participant, month)): Path<(String, String)>,
) -> Response {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let checked = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| "no credential".to_owned())
        .and_then(|h| SignedGatewayRequest::parse(h).map_err(|e| e.to_string()))
        .and_then(|r| {
            r.verify(
                &m.enrolled,
                chrono::Utc::now().timestamp(),
                "GET",
                path,
                b"",
            )
            .map_err(|e| e.to_string())
        });
    if let Err(e) = checked {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("the gateway's signed request was refused: {e}"),
        );
    }
    if participant != m.owner {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may read only its own data, not {participant}'s",
                m.owner
            ),
        );
    }
    if month != "2026-06" && month != "2026-05" {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("month `{month}` is not a calendar month: write it as YYYY-MM"),
        );
    }
    let statement = m.statement.lock().unwrap().clone();
    match uri.query() {
        Some("format=csv") => (
            [("content-type", "text/csv")],
            format!("record,interval\ntotal,{}\n", statement.totals.net.0),
        )
            .into_response(),
        _ => axum::Json(statement).into_response(),
    }
}

async fn serve(mock: Mock) -> String {
    let app = axum::Router::new()
        .route(
            "/statements/monthly/{participant}/{month}",
            axum::routing::get(monthly),
        )
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Signs and stores the example reading for `start` (15 min); the reading and its envelope.
async fn store(outbox: &Outbox, start: &str, key: &SigningKeyPair) -> (Reading, SignedEnvelope) {
    let interval = Interval::parse(start, 15).unwrap();
    let resume = Resume {
        next_start: interval.start_unix() + 900,
        channels: [None; 5],
    };
    let stored = outbox
        .store(
            |sequence| {
                let mut reading = example_reading();
                reading.sequence = sequence;
                reading.interval = interval;
                reading
            },
            key,
            &resume,
            0,
        )
        .await
        .unwrap();
    match stored {
        Stored::New(b) => *b,
        other => panic!("{other:?}"),
    }
}

fn listed(r: &Reading, digest: String) -> ReadingDigest {
    ReadingDigest {
        digest,
        key: r.idempotency_key(),
        gateway: r.gateway.to_string(),
        status: StoredReadingStatus::Accepted,
        imported: r.deltas.grid_import,
        exported: r.deltas.grid_export,
    }
}

fn interval_with(key: String, net: i64, readings: Vec<ReadingDigest>) -> MonthlyInterval {
    let statement = Statement {
        participant: ParticipantId::new("household-1").unwrap(),
        interval: key.clone(),
        sold: Wh(100),
        bought: Wh(0),
        exported: Wh(100),
        imported: Wh(0),
        envelope_excess: Wh(0),
        delivered: Wh(100),
        consumed: Wh(0),
        tokens: Wh(0),
        estimated: false,
        lines: vec![MoneyLine {
            kind: "trade_sale".into(),
            counterparty: "household-2".into(),
            energy: Wh(100),
            price: PricePerMwh(200_000),
            amount: Money(net),
        }],
        net: Money(net),
        pending: Vec::new(),
        pending_worth: None,
    };
    MonthlyInterval {
        interval: key,
        retail_price: PricePerMwh(300_000),
        feed_in_price: PricePerMwh(80_000),
        envelope_excess_price: PricePerMwh(0),
        statement,
        trades: Money(net),
        imbalance: Money(0),
        fees: Money(0),
        from_neighbours: Wh(0),
        from_grid: Wh(0),
        to_neighbours: Wh(100),
        to_grid: Wh(0),
        baseline: Some(Money(8)),
        savings: Some(Money(net - 8)),
        readings,
    }
}

fn statement(intervals: Vec<MonthlyInterval>) -> MonthlyStatement {
    let net: i64 = intervals.iter().map(|i| i.statement.net.0).sum();
    let n = intervals.len() as u64;
    MonthlyStatement {
        participant: ParticipantId::new("household-1").unwrap(),
        month: "2026-06".into(),
        time_zone: "UTC".into(),
        from: chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .into(),
        to: chrono::DateTime::parse_from_rfc3339("2026-07-01T00:00:00Z")
            .unwrap()
            .into(),
        totals: MonthlyTotals {
            intervals: n,
            net: Money(net),
            trades: Money(net),
            ..MonthlyTotals::default()
        },
        community: CommunityShare {
            to_neighbours: Wh(100 * n as i64),
            export_share_permille: Some(1000),
            ..CommunityShare::default()
        },
        savings: Savings {
            actual: Money(net),
            baseline: Money(8 * n as i64),
            savings: Money(net - 8 * n as i64),
            intervals: n,
            estimated_excluded: 0,
        },
        intervals,
    }
}

fn run(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["statement", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_the_statement_and_checks_its_readings_against_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("gw.key");
    let key = SigningKeyPair::generate_file(&key_path).unwrap();
    let outbox_path = dir.path().join("outbox.db");
    let outbox = Outbox::open(&outbox_path, 1 << 20).await.unwrap();
    // 12:00 was delivered (only its signed energy is kept); 12:15 waits in the outbox.
    let (delivered, delivered_env) = store(&outbox, "2026-06-21T12:00:00Z", &key).await;
    let (waiting, waiting_env) = store(&outbox, "2026-06-21T12:15:00Z", &key).await;
    let first = outbox.pending(1).await.unwrap();
    outbox.delivered(&[first[0].id]).await.unwrap();
    outbox.close().await;
    // A reading of 1 June the outbox has no record of.
    let mut old = example_reading();
    old.interval = Interval::parse("2026-06-01T00:00:00Z", 15).unwrap();
    let old_env = SignedEnvelope::sign(&old, &key);

    let good = statement(vec![
        interval_with(
            "2026-06-01T00:00:00Z/15".into(),
            20,
            vec![listed(&old, old_env.digest_hex())],
        ),
        interval_with(
            "2026-06-21T12:00:00Z/15".into(),
            21,
            vec![listed(&delivered, delivered_env.digest_hex())],
        ),
        interval_with(
            "2026-06-21T12:15:00Z/15".into(),
            -1234,
            vec![listed(&waiting, waiting_env.digest_hex())],
        ),
    ]);
    let shared = Arc::new(Mutex::new(good.clone()));
    let base = serve(Mock {
        enrolled: key.public_key(),
        owner: "household-1".into(),
        statement: shared.clone(),
    })
    .await;
    let config = GatewayConfig {
        gateway_id: GatewayId::new("gw-h001").unwrap(),
        participant: ParticipantId::new("household-1").unwrap(),
        key_path: key_path.clone(),
        outbox_path: outbox_path.clone(),
        settlement_url: Some(base.clone()),
        ..GatewayConfig::default()
    };
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    let (code, out, err) = run(&config_path, &["--month", "2026-06"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Monthly statement 2026-06 for household-1"),
        "{out}"
    );
    assert!(out.contains("months in UTC"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("net ") && l.ends_with(" -11.93")),
        "the total, 20 + 21 − 1234 minor units: {out}"
    );
    assert!(out.contains("trade_sale"), "{out}");
    assert!(
        out.contains(
            "3 listed; 1 digests match the outbox, 1 delivered readings match the energy this gateway signed (digest not kept after delivery), 1 not checked, 0 MISMATCHED"
        ),
        "{out}"
    );
    assert!(
        out.contains("not checked (no local record") && out.contains(&old_env.digest_hex()),
        "the unchecked reading is named: {out}"
    );

    // Settlement's CSV, with the check on standard error.
    let (code, out, err) = run(&config_path, &["--month", "2026-06", "--format", "csv"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "record,interval\ntotal,-1193\n");
    assert!(err.contains("Signed readings: 3 listed"), "{err}");

    // A waiting reading whose digest differs, and a delivered one with other energy: named,
    // and the command fails.
    {
        let mut bad = good.clone();
        bad.intervals[2].readings[0].digest = "00".repeat(32);
        bad.intervals[1].readings[0].imported = Wh(delivered.deltas.grid_import.0 + 1);
        *shared.lock().unwrap() = bad;
    }
    let (code, out, err) = run(&config_path, &["--month", "2026-06"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("2 MISMATCHED"), "{out}");
    assert!(
        out.contains(&format!(
            "MISMATCH: settlement has digest {} but this gateway's outbox holds {}",
            "00".repeat(32),
            waiting_env.digest_hex()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "but this gateway signed {} / {} Wh",
            delivered.deltas.grid_import.0, delivered.deltas.grid_export.0
        )),
        "{out}"
    );
    assert!(
        err.contains("2 reading(s) on the statement differ"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("gw.key");
    SigningKeyPair::generate_file(&key_path).unwrap();
    let base = serve(Mock {
        // Settlement knows another key for this gateway.
        enrolled: SigningKeyPair::from_seed([9; 32]).public_key(),
        owner: "household-1".into(),
        statement: Arc::new(Mutex::new(statement(vec![]))),
    })
    .await;
    let write = |participant: &str, settlement: Option<String>| {
        let config = GatewayConfig {
            gateway_id: GatewayId::new("gw-h001").unwrap(),
            participant: ParticipantId::new(participant).unwrap(),
            key_path: key_path.clone(),
            outbox_path: dir.path().join("outbox.db"),
            settlement_url: settlement,
            ..GatewayConfig::default()
        };
        let path = dir.path().join(format!("{participant}.toml"));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        path
    };
    let config = write("household-1", Some(base.clone()));
    let (code, out, err) = run(&config, &["--month", "2026-06"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("settlement answered 401"), "{err}");
    assert!(
        err.contains("is this gateway enrolled with this key"),
        "{err}"
    );

    for bad in ["2026-13", "June", "2026-6"] {
        let (code, _, err) = run(&config, &["--month", bad]);
        assert_eq!(code, 1);
        assert!(err.contains("write it as YYYY-MM"), "{bad}: {err}");
    }
    let (code, _, err) = run(&write("household-2", None), &["--month", "2026-06"]);
    assert_eq!(code, 1);
    assert!(err.contains("settlement_url is not set"), "{err}");
    // No outbox was created by any of this.
    assert!(!dir.path().join("outbox.db").exists());
}
