//! Scale-out: every service as its own OS process against one PostgreSQL server (a fresh
//! database per service instance) and one broker (a private Mosquitto), with two zones, each a
//! market-engine process with its own topology plus its own settlement process. Both zones must
//! clear and settle their own intervals independently. docs/scale-out.md explains the layout.
//!
//! Gateways upload readings over HTTP to their own zone's settlement (no MQTT uplink): all
//! gateways publish on `gridmesh/readings/<gateway>`, so a settlement subscribed to
//! `gridmesh/readings/+` would quarantine the other zone's readings as unknown gateways.

use chrono::Utc;
use gridmesh_e2e::invariants::{check_settled, get_json, intervals_from, wait_sealed};
use gridmesh_e2e::neighbourhood::{demo_homes, gateway_config};
use gridmesh_e2e::processes::{
    ChildProcess, Mosquitto, free_port, service_binary, wait_for_port, write_toml,
};
use gridmesh_protocol::grid::Network;
use gridmesh_protocol::interval::{Interval, IntervalLength};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_runtime::clock::ClockSettings;
use gridmesh_runtime::db::{Database, scratch};
use meter_sim::{Homes, Manifest, Scenario};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const SPEED: f64 = 200.0;
/// The zones' operator token: the one `invariants::get_json` reads household data with.
const TOKEN: &str = gridmesh_e2e::neighbourhood::DEMO_OPERATOR_TOKEN;
/// The auditor credential each zone's settlement presents to read its market's registrations
/// (which the market keeps private).
const AUDITOR: &str = "scale-out-auditor-token";

/// One zone: its market and settlement processes.
struct Zone {
    name: String,
    feeder: String,
    market_url: String,
    settlement_url: String,
    settlement_db: String,
    authority: SigningKeyPair,
    processes: Vec<ChildProcess>,
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The zone's topology: the demo grid cut down to its one feeder.
fn zone_network(feeder: &str) -> Network {
    let mut network = gridmesh_e2e::neighbourhood::demo_network(2, 4);
    network.branches.retain(|b| b.node.as_str() == feeder);
    network
}

async fn start_zone(
    dir: &Path,
    name: &str,
    feeder: &str,
    broker: &str,
    clock: &ClockSettings,
) -> Zone {
    let market_bin = service_binary("market-engine", "market-engine").unwrap();
    let settlement_bin = service_binary("settlement", "settlement").unwrap();
    let market_db = scratch::fresh_postgres(&format!("scale_{name}_market"))
        .await
        .unwrap();
    let settlement_db = scratch::fresh_postgres(&format!("scale_{name}_settlement"))
        .await
        .unwrap();
    let market_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let market_config = market_engine::MarketConfig {
        listen: market_addr,
        database_url: market_db,
        zone: name.to_owned(),
        operator_token: Some(TOKEN.to_owned()),
        auditor_token: Some(AUDITOR.to_owned()),
        broker_url: Some(broker.to_owned()),
        topology: Some(zone_network(feeder)),
        clock: Some(clock.clone()),
        ..market_engine::MarketConfig::default()
    };
    let market_toml = dir.join(format!("{name}-market.toml"));
    write_toml(&market_toml, &market_config).unwrap();
    let market_toml_arg = market_toml.display().to_string();
    let market = ChildProcess::spawn(
        &format!("market {name}"),
        &market_bin,
        &["serve", "--config", &market_toml_arg],
        &[],
        &dir.join(format!("{name}-market.log")),
    )
    .unwrap();
    if let Err(e) = wait_for_port(market_addr, Duration::from_secs(30)).await {
        panic!("{e}\n{}", market.log());
    }

    // Settlement's config is written by hand, as an operator would (the type is not Serialize).
    let authority_path = dir.join(format!("{name}-authority.key"));
    let authority = SigningKeyPair::generate_file(&authority_path).unwrap();
    let settlement_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let settlement_toml = dir.join(format!("{name}-settlement.toml"));
    std::fs::write(
        &settlement_toml,
        format!(
            "listen = \"{settlement_addr}\"\ndatabase_url = \"{settlement_db}\"\n\
             market_url = \"http://{market_addr}\"\nmqtt_client_id = \"settlement-{name}-{pid}\"\n\
             authority_key = \"{key}\"\noperator_token = \"{TOKEN}\"\nauditor_token = \"{AUDITOR}\"\n\
             market_token = \"{AUDITOR}\"\nzone = \"{name}\"\ngrace_secs = 600\n\
             poll_secs = 0.5\n\n[clock]\nepoch = \"{epoch}\"\nspeed = {speed:?}\nanchor = \"{anchor}\"\n",
            pid = std::process::id(),
            key = authority_path.display(),
            epoch = rfc3339(clock.epoch),
            speed = clock.speed,
            anchor = rfc3339(clock.anchor.expect("anchored")),
        ),
    )
    .unwrap();
    let settlement_toml_arg = settlement_toml.display().to_string();
    let settlement = ChildProcess::spawn(
        &format!("settlement {name}"),
        &settlement_bin,
        &["serve", "--config", &settlement_toml_arg],
        &[],
        &dir.join(format!("{name}-settlement.log")),
    )
    .unwrap();
    if let Err(e) = wait_for_port(settlement_addr, Duration::from_secs(30)).await {
        panic!("{e}\n{}", settlement.log());
    }
    Zone {
        name: name.to_owned(),
        feeder: feeder.to_owned(),
        market_url: format!("http://{market_addr}"),
        settlement_url: format!("http://{settlement_addr}"),
        settlement_db,
        authority,
        processes: vec![market, settlement],
    }
}

fn logs(processes: &[&ChildProcess]) -> String {
    processes
        .iter()
        .map(|p| p.log())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_zones_clear_and_settle_independently_as_separate_processes() {
    let gateway_bin = service_binary("edge-gateway", "edge-gateway").unwrap();
    let sim_bin = service_binary("meter-sim", "meter-sim").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Mosquitto::start(&dir.join("mosquitto")).await.unwrap();

    // One simulated clock for every process: the same epoch, speed and real anchor.
    let epoch: chrono::DateTime<Utc> = "2026-06-21T10:55:00Z".parse().unwrap();
    let anchor = Utc::now();
    let clock_config = ClockSettings {
        epoch,
        speed: SPEED,
        anchor: Some(anchor),
    };

    // meter-sim: four homes, h001/h003 on f1 (zone A), h002/h004 on f2 (zone B).
    let mut scenario = Scenario::small(4, 7);
    scenario.feeders = 2;
    scenario.homes = Homes::List(demo_homes(4, 2));
    scenario.base_port = 0;
    scenario.start = Some(epoch);
    scenario.speed = SPEED;
    let scenario_path = dir.join("scenario.toml");
    write_toml(&scenario_path, &scenario).unwrap();
    let manifest_path = dir.join("manifest.json");
    let control = format!("127.0.0.1:{}", free_port());
    let sim = ChildProcess::spawn(
        "meter-sim",
        &sim_bin,
        &[
            "--scenario",
            &scenario_path.display().to_string(),
            "--manifest",
            &manifest_path.display().to_string(),
            "--control",
            &control,
            "--status-every",
            "0",
        ],
        &[],
        &dir.join("meter-sim.log"),
    )
    .unwrap();

    let zones = [
        start_zone(dir, "zone-a", "f1", &broker.url(), &clock_config).await,
        start_zone(dir, "zone-b", "f2", &broker.url(), &clock_config).await,
    ];

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !manifest_path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no manifest\n{}",
            sim.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();

    // One edge-gateway process per home, enrolled with and uploading to its own zone only.
    let mut gateways = Vec::new();
    for (index, home) in manifest.homes.iter().enumerate() {
        let zone = zones.iter().find(|z| z.feeder == home.feeder).unwrap();
        let mut config =
            gateway_config(home, index, &zone.market_url, &zone.settlement_url, None).unwrap();
        config.zone = Some(gridmesh_protocol::ZoneId::new(&zone.name).unwrap());
        config.key_path = dir.join(format!("{}.key", home.id));
        config.outbox_path = dir.join(format!("{}-outbox.db", home.id));
        config.poll_ms = 100;
        config.enroll_token = Some(TOKEN.to_owned());
        config.clock = Some(clock_config.clone());
        SigningKeyPair::generate_file(&config.key_path).unwrap();
        let path = dir.join(format!("{}.toml", home.id));
        write_toml(&path, &config).unwrap();
        let path = path.display().to_string();
        let enrolled = std::process::Command::new(&gateway_bin)
            .args(["enroll", "--config", &path])
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(
            enrolled.status.success(),
            "enroll {}: {}{}",
            home.id,
            String::from_utf8_lossy(&enrolled.stdout),
            String::from_utf8_lossy(&enrolled.stderr)
        );
        gateways.push(
            ChildProcess::spawn(
                &format!("edge-gateway {}", home.id),
                &gateway_bin,
                &["run", "--config", &path],
                &[],
                &dir.join(format!("{}.log", home.id)),
            )
            .unwrap(),
        );
    }

    // The first interval every gateway saw whole and whose book opened after the markets
    // started (gate closure is 5 minutes before an interval starts).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for gateway in &gateways {
        while !gateway.log().contains("running") {
            assert!(std::time::Instant::now() < deadline, "{}", gateway.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let now = clock_config.clock().now() + chrono::Duration::minutes(6);
    let first = Interval::containing(now, IntervalLength::Min15).next();
    let wanted = intervals_from(first, 3);
    for zone in &zones {
        let participants: Vec<String> = manifest
            .homes
            .iter()
            .filter(|h| h.feeder == zone.feeder)
            .map(|h| h.id.clone())
            .collect();
        let everything: Vec<&ChildProcess> = zone
            .processes
            .iter()
            .chain(gateways.iter())
            .chain(std::iter::once(&sim))
            .collect();
        let sealed = wait_sealed(
            &zone.settlement_url,
            wanted.last().unwrap(),
            Duration::from_secs(120),
        )
        .await;
        if let Err(e) = sealed {
            panic!("{}: {e}\n{}", zone.name, logs(&everything));
        }
        let statements = check_settled(&zone.settlement_url, &wanted, &participants)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", zone.name, logs(&everything)));
        assert_eq!(statements.len(), participants.len() * wanted.len());

        // The zone's settlement knows only its own households.
        for interval in &wanted {
            let all: Vec<settlement::rules::Statement> = get_json(&format!(
                "{}/statements?interval={}",
                zone.settlement_url,
                interval.start().format("%Y-%m-%dT%H:%M:%SZ")
            ))
            .await
            .unwrap();
            for s in all.iter().filter(|s| s.interval == interval.key()) {
                assert!(
                    participants.contains(&s.participant.to_string()),
                    "{} settled {} of another zone",
                    zone.name,
                    s.participant
                );
            }
        }
        // The zone's market cleared each interval once, on its own topology and orders.
        let since = (first.start() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
        let results: Vec<IntervalResult> = get_json(&format!(
            "{}/results?since={since}&limit=100",
            zone.market_url
        ))
        .await
        .unwrap();
        for interval in &wanted {
            let cleared: Vec<&IntervalResult> =
                results.iter().filter(|r| r.interval == *interval).collect();
            assert_eq!(cleared.len(), 1, "{} {}", zone.name, interval.key());
            let result = cleared[0];
            assert_eq!(result.zone, zone.name);
            assert!(
                result
                    .network
                    .branches
                    .iter()
                    .all(|b| b.node.as_str() == zone.feeder),
                "{} cleared on {:?}",
                zone.name,
                result.network
            );
            for order in &result.orders {
                assert!(
                    participants.contains(&order.participant.to_string()),
                    "{} cleared an order of {}",
                    zone.name,
                    order.participant
                );
            }
        }
        // `settlement verify` on the zone's own ledger.
        let database = Database::connect(&zone.settlement_db).await.unwrap();
        settlement::audit::verify(&database, Some(zone.authority.public_key()))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", zone.name));
    }
    for gateway in &mut gateways {
        assert!(gateway.is_running(), "{}", gateway.log());
    }
}
