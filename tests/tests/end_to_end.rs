//! From Modbus registers to tokens: the whole neighbourhood runs several intervals on a fast
//! clock, once on SQLite with the embedded broker and once on the real PostgreSQL and Mosquitto,
//! and the invariants are checked through the services' public APIs and `settlement verify`.
//!
//! Both runs give the gateways no HTTP fallback (no `settlement_url`), so every reading must
//! cross the broker: each gateway's `delivered_mqtt` equals the readings it signed, settlement
//! stores exactly those, and a witness subscribed on the broker saw every stored reading of the
//! checked intervals. A third run covers the HTTP path: the broker is unreachable and every
//! reading arrives over `POST /readings`.

use gridmesh_e2e::delivery::{BrokerWitness, Uplink, check_uplink, check_witnessed};
use gridmesh_e2e::invariants::{
    check_settled, intervals_from, wait_sealed, within_boundary_tolerance,
};
use gridmesh_e2e::neighbourhood::{Neighbourhood, Options};
use gridmesh_protocol::interval::{Interval, IntervalLength};
use gridmesh_runtime::db::{Database, scratch};
use gridmesh_runtime::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::time::Duration;

const HOMES: usize = 6;
const INTERVALS: usize = 3;
const SPEED: f64 = 150.0;

/// Settlement's grace after an interval's end, in simulated seconds: 3 real seconds at
/// [`SPEED`]. A reading that reaches settlement later is `late` (quarantined); the default 60
/// simulated seconds is 0.4 real s at 150x, shorter than a loaded machine's stalls (one run
/// here ended with an interval's MQTT readings quarantined and no statements).
fn grace_secs() -> u64 {
    (3.0 * SPEED) as u64
}

/// Runs the neighbourhood until `INTERVALS` full intervals are sealed, then checks them:
/// every home of every interval settled once from its own readings (`check_settled`: money
/// balances, tokens equal the statements' matched Wh, nothing quarantined), the metered energy
/// equals meter-sim's counters within the gateway's documented boundary interpolation (errors do
/// not accumulate over intervals), trades really happened, and the ledger verifies.
///
/// `uplink` says which path every reading must have taken (and configures the gateways for it:
/// no HTTP fallback for MQTT; an unreachable `broker` for HTTP).
async fn neighbourhood_settles_every_interval(
    database: Option<String>,
    broker: Option<String>,
    uplink: Uplink,
) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        http_fallback: uplink == Uplink::Http,
        homes: HOMES,
        feeders: 2,
        speed: SPEED,
        settlement_grace_secs: grace_secs(),
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
    let witness = match uplink {
        Uplink::Mqtt => Some(
            BrokerWitness::start(&hood.broker_url, Duration::from_secs(20))
                .await
                .unwrap(),
        ),
        Uplink::Http => None,
    };

    // The first interval that every gateway saw from its start to its end.
    let first = Interval::containing(hood.clock.now(), IntervalLength::Min15).next();
    let wanted = intervals_from(first, INTERVALS);
    wait_sealed(
        &settlement,
        wanted.last().unwrap(),
        Duration::from_secs(150),
    )
    .await
    .unwrap();
    let homes: Vec<String> = hood
        .sim
        .manifest()
        .homes
        .into_iter()
        .map(|h| h.id)
        .collect();
    let statements = check_settled(&settlement, &wanted, &homes).await.unwrap();

    let mut totals: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    for interval in &wanted {
        for home in &homes {
            let statement = &statements[&(home.clone(), interval.key())];
            let truth = hood.sim.ground_truth(home, interval).expect("ground truth");
            for (what, measured, real) in [
                ("export", statement.exported, truth.grid_export),
                ("import", statement.imported, truth.grid_import),
            ] {
                assert!(
                    within_boundary_tolerance(measured.0, real.0),
                    "{home} in {interval}: metered {what} {measured} vs meter-sim's counters {real}"
                );
                let total = totals.entry((home.as_str(), what)).or_default();
                total.0 += measured.0;
                total.1 += real.0;
            }
        }
    }
    for ((home, what), (measured, real)) in &totals {
        assert!(
            within_boundary_tolerance(*measured, *real),
            "{home}: {what} over {INTERVALS} intervals {measured} Wh vs {real} Wh"
        );
    }
    let tokens: i64 = statements.values().map(|s| s.tokens.0).sum();
    assert!(
        tokens > 0,
        "no tokens were minted in {wanted:?}: the market made no trades"
    );

    // `settlement verify`: every block, link, Merkle root, signature, mint and balance re-checked.
    let database = Database::connect(&hood.settlement_database_url)
        .await
        .unwrap();
    let report = settlement::audit::verify(&database, Some(hood.settlement.authority))
        .await
        .expect("the ledger verifies");
    assert!(report.blocks >= INTERVALS, "{report:?}");

    // Which path the readings took: all over `uplink`, every one stored once.
    let signed = check_uplink(&hood, uplink, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(signed.len(), HOMES, "{signed:?}");
    if let Some(witness) = witness {
        let checked = check_witnessed(&hood, &witness, first.start().timestamp())
            .await
            .unwrap();
        assert!(checked >= HOMES * INTERVALS, "{checked} readings witnessed");
        witness.stop().await;
    }

    shutdown.trigger();
    hood.stop(&shutdown).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_and_embedded_broker() {
    neighbourhood_settles_every_interval(None, None, Uplink::Mqtt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_and_mosquitto() {
    let database = scratch::fresh_postgres("e2e").await.unwrap();
    neighbourhood_settles_every_interval(
        Some(database),
        Some("mqtt://127.0.0.1:1883".to_owned()),
        Uplink::Mqtt,
    )
    .await;
}

/// The HTTP path: the broker is unreachable (nothing listens on its port), so every gateway
/// delivers every reading with `POST /readings` and none over MQTT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_and_http_when_the_broker_is_unreachable() {
    let port = gridmesh_e2e::processes::free_port();
    neighbourhood_settles_every_interval(
        None,
        Some(format!("mqtt://127.0.0.1:{port}")),
        Uplink::Http,
    )
    .await;
}
