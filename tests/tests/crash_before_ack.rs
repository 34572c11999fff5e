//! Settlement crashes after storing a batch of MQTT readings but before acknowledging it
//! (issue 15). The real `settlement` binary runs beside a neighbourhood on a private Mosquitto,
//! armed with `GRIDMESH_FAILPOINT=settlement_after_store_before_ack`: it aborts right after its
//! first batch committed. Started again (same persistent MQTT session, same PostgreSQL database),
//! it must get that batch redelivered by the broker, count it once (acknowledged as duplicates,
//! no second row), and settle every interval exactly as the neighbourhood's own settlement, which
//! never crashed, does from the same readings, with the metered energy matching meter-sim's
//! counters.
//!
//! Timing: nothing waits on a fixed sleep. The test waits on events with deadlines (the child's
//! port, the child's exit, the readings in the database, sealed blocks), and the deadlines are
//! derived from the clock speed (a number of simulated intervals plus a real margin).

use gridmesh_e2e::invariants::{
    check_settled, intervals_from, wait_sealed, within_boundary_tolerance,
};
use gridmesh_e2e::neighbourhood::{DEMO_OPERATOR_TOKEN, DEMO_ZONE, Neighbourhood, Options};
use gridmesh_e2e::processes::{ChildProcess, Mosquitto, free_port, service_binary, wait_for_port};
use gridmesh_protocol::interval::{Interval, IntervalLength};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_runtime::db::{Database, scratch};
use gridmesh_runtime::failpoint;
use gridmesh_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const HOMES: usize = 4;
const SPEED: f64 = 150.0;

/// Both settlements' grace after an interval's end, in simulated seconds: 3 real seconds at
/// [`SPEED`], so a reading delayed by a loaded machine is not `late`.
const GRACE_SECS: u64 = (3.0 * SPEED) as u64;

/// Real time for `intervals` 15-minute intervals at [`SPEED`], plus 90 s for a loaded
/// machine.
fn real_time_for(intervals: u32) -> Duration {
    Duration::from_secs_f64(f64::from(intervals) * 900.0 / SPEED) + Duration::from_secs(90)
}

/// The `settlement serve` config of the binary: the neighbourhood's market and broker, its own
/// PostgreSQL database, authority key and persistent MQTT session, the neighbourhood's clock.
fn write_config(
    path: &Path,
    hood: &Neighbourhood,
    listen: SocketAddr,
    database_url: &str,
    broker_url: &str,
    authority_key: &Path,
) {
    let clock = &hood.clock;
    let text = format!(
        "listen = \"{listen}\"\n\
         database_url = \"{database_url}\"\n\
         market_url = \"{market}\"\n\
         market_public_key = \"{market_key}\"\n\
         zone = \"{DEMO_ZONE}\"\n\
         broker_url = \"{broker_url}\"\n\
         mqtt_client_id = \"crash-before-ack-{pid}\"\n\
         authority_key = \"{authority}\"\n\
         grace_secs = {GRACE_SECS}\n\
         operator_token = \"{DEMO_OPERATOR_TOKEN}\"\n\
         auditor_token = \"{auditor}\"\n\
         poll_secs = 0.5\n\
         [clock]\n\
         epoch = \"{epoch}\"\n\
         speed = {speed}\n\
         anchor = \"{anchor}\"\n",
        market = hood.market.url(),
        market_key = hood.market.market_key,
        pid = std::process::id(),
        authority = authority_key.display(),
        auditor = hood.auditor_token,
        epoch = clock.now().to_rfc3339(),
        speed = clock.speed(),
        anchor = chrono::Utc::now().to_rfc3339(),
    );
    std::fs::write(path, text).unwrap();
}

async fn metric(base: &str, name: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(DEMO_OPERATOR_TOKEN)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in settlement's metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlement_crashing_between_store_and_ack_loses_nothing_and_counts_nothing_twice() {
    let binary = service_binary("settlement", "settlement").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&dir.path().join("mosquitto"))
        .await
        .unwrap();
    let options = Options {
        homes: HOMES,
        feeders: 2,
        speed: SPEED,
        data_dir: dir.path().join("hood"),
        broker: Some(broker.url()),
        ports_from: 0,
        modbus_base_port: 0,
        poll_ms: 100,
        // Every reading reaches both settlements over the broker or not at all.
        http_fallback: false,
        settlement_grace_secs: GRACE_SECS,
        ..Options::default()
    };
    let shutdown = Shutdown::new();
    let hood = Neighbourhood::start(options, &shutdown).await.unwrap();
    let started_in = Interval::containing(hood.clock.now(), IntervalLength::Min15);

    // The settlement binary, armed to abort after storing its first MQTT batch.
    let database_url = scratch::fresh_postgres("crash_before_ack").await.unwrap();
    let authority = dir.path().join("crash-authority.key");
    let authority_key = SigningKeyPair::generate_file(&authority).unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config_path = dir.path().join("settlement.toml");
    write_config(
        &config_path,
        &hood,
        listen,
        &database_url,
        &broker.url(),
        &authority,
    );
    let config = config_path.display().to_string();
    let args = ["serve", "--config", config.as_str()];
    let log = dir.path().join("settlement.log");
    let armed = [(failpoint::ENV, settlement::ingest::AFTER_STORE_BEFORE_ACK)];
    let mut child =
        ChildProcess::spawn("settlement (armed)", &binary, &args, &armed, &log).unwrap();
    wait_for_port(listen, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.log()));

    // It aborts when the first readings (the next interval boundary) have been stored.
    let deadline = Instant::now() + real_time_for(2);
    while child.is_running() {
        assert!(
            Instant::now() < deadline,
            "the armed settlement did not reach its failpoint:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        child
            .log()
            .contains("failpoint settlement_after_store_before_ack hit"),
        "settlement exited, but not at the failpoint:\n{}",
        child.log()
    );
    let database = Database::connect(&database_url).await.unwrap();
    let stored_before: Vec<(String, i64)> =
        sqlx::query_as("SELECT gateway, interval_start FROM readings ORDER BY interval_start")
            .fetch_all(&database.pool)
            .await
            .unwrap();
    assert!(
        !stored_before.is_empty(),
        "the failpoint is after the store: the batch must be in the database"
    );

    // Started again, unarmed: the broker redelivers the unacknowledged batch.
    let mut child = ChildProcess::spawn("settlement", &binary, &args, &[], &log).unwrap();
    wait_for_port(listen, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.log()));
    let base = format!("http://{listen}");

    // The crashed batch's interval (the first boundary after the binary subscribed), and the
    // three after it, all seen whole by both settlements.
    let crashed = Interval::containing(
        chrono::DateTime::from_timestamp(stored_before[0].1, 0).unwrap(),
        IntervalLength::Min15,
    );
    let wanted = intervals_from(crashed.next(), 3);
    let last = wanted.last().unwrap();
    let sealed = wait_sealed(&base, last, real_time_for(6)).await;
    sealed.unwrap_or_else(|e| panic!("{e}\n{}", child.log()));
    wait_sealed(&hood.settlement_url(), last, real_time_for(2))
        .await
        .unwrap();
    assert!(child.is_running(), "{}", child.log());

    // The redelivered batch was recognised: acknowledged as duplicates, never stored twice.
    let duplicates = metric(&base, "gridmesh_settlement_readings_duplicate_total").await;
    assert!(
        duplicates >= stored_before.len() as u64,
        "{} readings were stored but not acknowledged before the crash; after the restart \
         only {duplicates} came back as duplicates (did the broker redeliver them?)",
        stored_before.len()
    );
    let twice: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT gateway, interval_start, COUNT(*) FROM readings \
         GROUP BY gateway, interval_start HAVING COUNT(*) > 1",
    )
    .fetch_all(&database.pool)
    .await
    .unwrap();
    assert!(twice.is_empty(), "readings stored twice: {twice:?}");
    for (gateway, start) in &stored_before {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM readings WHERE gateway = $1 AND interval_start = $2",
        )
        .bind(gateway)
        .bind(*start)
        .fetch_one(&database.pool)
        .await
        .unwrap();
        assert_eq!(count, 1, "{gateway}'s reading of {start} after the restart");
    }

    // Every home of every wanted interval settled once from its readings (mints = tokens,
    // nothing quarantined), exactly as the settlement that never crashed settled it, and the
    // metered energy matches meter-sim's counters.
    let homes: Vec<String> = hood
        .sim
        .manifest()
        .homes
        .iter()
        .map(|h| h.id.clone())
        .collect();
    let recovered = check_settled(&base, &wanted, &homes)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.log()));
    let reference = check_settled(&hood.settlement_url(), &wanted, &homes)
        .await
        .unwrap();
    let mut tokens = 0;
    for (key, statement) in &recovered {
        let other = &reference[key];
        assert_eq!(
            (
                statement.exported,
                statement.imported,
                statement.tokens,
                statement.net
            ),
            (other.exported, other.imported, other.tokens, other.net),
            "{key:?}: the restarted settlement and the neighbourhood's differ"
        );
        let interval = wanted.iter().find(|i| i.key() == key.1).unwrap();
        assert!(
            interval.start() > started_in.start(),
            "only whole intervals are compared with the meters"
        );
        let truth = hood.sim.ground_truth(&key.0, interval).unwrap();
        for (what, measured, real) in [
            ("export", statement.exported.0, truth.grid_export.0),
            ("import", statement.imported.0, truth.grid_import.0),
        ] {
            assert!(
                within_boundary_tolerance(measured, real),
                "{key:?}: metered {what} {measured} Wh vs meter-sim's counters {real} Wh"
            );
        }
        tokens += statement.tokens.0;
    }
    let minted = metric(&base, "gridmesh_settlement_tokens_minted_wh_total").await;
    let reference_tokens: i64 = reference.values().map(|s| s.tokens.0).sum();
    assert_eq!(tokens, reference_tokens);
    assert!(
        minted >= tokens as u64,
        "minted {minted} Wh, statements {tokens}"
    );

    // `settlement verify` over the restarted settlement's ledger.
    let report = settlement::audit::verify(&database, Some(authority_key.public_key()))
        .await
        .unwrap_or_else(|e| panic!("the ledger does not verify: {e}"));
    assert!(report.blocks >= wanted.len(), "{report:?}");

    database.pool.close().await;
    child.terminate(Duration::from_secs(10)).await;
    shutdown.trigger();
    hood.stop(&shutdown).await.unwrap();
    broker.stop().await;
}
