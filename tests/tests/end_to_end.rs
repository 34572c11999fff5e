//! From Modbus registers to tokens: the whole neighbourhood runs several intervals on a fast
//! clock, once on SQLite with the embedded broker and once on the real PostgreSQL and Mosquitto,
//! and the invariants are checked through the services' public APIs and `settlement verify`.

use gridmesh_e2e::neighbourhood::{Neighbourhood, Options};
use gridmesh_protocol::interval::{Interval, IntervalLength};
use gridmesh_protocol::units::{Money, Wh};
use gridmesh_runtime::db::{Database, scratch};
use gridmesh_runtime::shutdown::Shutdown;
use serde::Deserialize;
use settlement::rules::Statement;
use std::time::Duration;

const HOMES: usize = 6;
const INTERVALS: usize = 3;

#[derive(Debug, Deserialize)]
struct Block {
    interval: String,
    entries: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    kind: String,
    body: serde_json::Value,
}

async fn get<T: serde::de::DeserializeOwned>(url: String) -> T {
    let response = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The gateway polls every 100 ms real = 15 s simulated here and interpolates the counters
/// linearly at each interval boundary (edge-gateway's accountant documents this), then floors to
/// whole Wh. So a measured interval may differ from the meter's exact counter difference by the
/// curvature of one poll period at each end plus 1 Wh of rounding: we allow 5 Wh + 1 %.
fn within_boundary_tolerance(measured: Wh, real: Wh) -> bool {
    (measured.0 - real.0).abs() <= 5 + real.0.abs() / 100
}

/// Runs the neighbourhood until `INTERVALS` full intervals are sealed, then checks them.
async fn neighbourhood_settles_every_interval(database: Option<String>, broker: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        homes: HOMES,
        feeders: 2,
        speed: 150.0,
        data_dir: dir.path().to_owned(),
        database,
        broker,
        ports_from: 0,
        modbus_base_port: 0,
        poll_ms: 100,
        ..Options::default()
    };
    let shutdown = Shutdown::new();
    let hood = Neighbourhood::start(options, &shutdown)
        .await
        .expect("neighbourhood starts");
    let settlement = hood.settlement_url();

    // The first interval that every gateway saw from its start to its end.
    let first = Interval::containing(hood.clock.now(), IntervalLength::Min15).next();
    let wanted: Vec<Interval> = std::iter::successors(Some(first), |i| Some(i.next()))
        .take(INTERVALS)
        .collect();
    let last_key = wanted.last().unwrap().key();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let blocks = loop {
        let blocks: Vec<Block> = get(format!("{settlement}/ledger/blocks?limit=1000")).await;
        if blocks.iter().any(|b| b.interval == last_key) {
            break blocks;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "interval {last_key} was not sealed in time; sealed: {:?}",
            blocks.iter().map(|b| &b.interval).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut minted_total = 0i64;
    let mut totals = std::collections::BTreeMap::new();
    for interval in &wanted {
        let key = interval.key();
        let statements: Vec<Statement> = get(format!(
            "{settlement}/statements?interval={}",
            interval.start().format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .await;
        let statements: Vec<&Statement> = statements.iter().filter(|s| s.interval == key).collect();

        // Every home of every interval is settled, from its own readings.
        assert_eq!(
            statements.len(),
            HOMES,
            "statements for {key}: {statements:#?}"
        );
        for statement in &statements {
            assert!(
                !statement.estimated,
                "{} had no readings for {key}",
                statement.participant
            );
            // What the gateway measured (and settlement verified) is what the meter counted.
            let truth = hood
                .sim
                .ground_truth(statement.participant.as_str(), interval)
                .expect("ground truth for a past interval");
            for (what, measured, real) in [
                ("export", statement.exported, truth.grid_export),
                ("import", statement.imported, truth.grid_import),
            ] {
                assert!(
                    within_boundary_tolerance(measured, real),
                    "{} in {key}: metered {what} {measured} vs meter-sim's counters {real}",
                    statement.participant
                );
                let totals = totals
                    .entry((statement.participant.to_string(), what))
                    .or_insert((0, 0));
                totals.0 += measured.0;
                totals.1 += real.0;
            }
            // The money lines add up to the net.
            let lines = Money::checked_sum(statement.lines.iter().map(|l| l.amount)).unwrap();
            assert_eq!(lines, statement.net, "{} in {key}", statement.participant);
        }
        // Peer-to-peer money cancels to the minor unit; what is left is the utility's side.
        let peer: i64 = statements
            .iter()
            .flat_map(|s| &s.lines)
            .filter(|l| l.counterparty != "utility")
            .map(|l| l.amount.0)
            .sum();
        assert_eq!(peer, 0, "peer-to-peer money of {key} does not cancel");

        // Tokens minted in the interval's block equal the delivered, matched Wh of the statements.
        let block = blocks
            .iter()
            .find(|b| b.interval == key)
            .expect("block for the interval");
        let mut minted = 0i64;
        for hash in &block.entries {
            let entry: Entry = get(format!("{settlement}/ledger/entries/{hash}")).await;
            if entry.kind == "mint" {
                minted += entry.body["amount"].as_i64().expect("mint amount");
            }
        }
        let tokens = Wh::checked_sum(statements.iter().map(|s| s.tokens)).unwrap();
        assert_eq!(Wh(minted), tokens, "tokens minted in {key} vs statements");
        let matched: i64 = statements.iter().map(|s| s.consumed.0).sum();
        assert!(
            minted <= matched,
            "{key}: minted {minted} Wh but buyers took only {matched} Wh"
        );
        minted_total += minted;
    }
    // Boundary errors do not accumulate: over several intervals the error stays one boundary's.
    for ((participant, what), (measured, real)) in &totals {
        assert!(
            within_boundary_tolerance(Wh(*measured), Wh(*real)),
            "{participant}: {what} over {INTERVALS} intervals {measured} Wh vs {real} Wh"
        );
    }
    assert!(
        minted_total > 0,
        "no tokens were minted in {wanted:?}: the market made no trades"
    );

    // `settlement verify`: every block, link, Merkle root, signature, mint and balance re-checked.
    let authority = hood.settlement.authority;
    let database = Database::connect(&hood.settlement_database_url)
        .await
        .unwrap();
    let report = settlement::audit::verify(&database, Some(authority))
        .await
        .expect("the ledger verifies");
    assert!(report.blocks >= INTERVALS, "{report:?}");

    shutdown.trigger();
    hood.stop(&shutdown).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_and_embedded_broker() {
    neighbourhood_settles_every_interval(None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_and_mosquitto() {
    let database = scratch::fresh_postgres("e2e").await.unwrap();
    neighbourhood_settles_every_interval(Some(database), Some("mqtt://127.0.0.1:1883".to_owned()))
        .await;
}
