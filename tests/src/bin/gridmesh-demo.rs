//! `gridmesh-demo`: the whole neighbourhood on embedded defaults, with a live dashboard.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Parser;
use gridmesh_e2e::neighbourhood::{Neighbourhood, Options};
use gridmesh_runtime::shutdown::Shutdown;
use std::path::PathBuf;

/// Runs a simulated neighbourhood trading energy: homes with PV and batteries (meter-sim), a
/// gateway per home, the market, settlement and the dashboard, on an accelerated clock.
///
/// Every option can also be set in the environment as GRIDMESH_DEMO_<OPTION>, for example
/// GRIDMESH_DEMO_HOMES=48.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Number of simulated homes.
    #[arg(long, env = "GRIDMESH_DEMO_HOMES", default_value_t = 24)]
    homes: usize,
    /// Number of feeders; f1 is tight and congests when the sun is high.
    #[arg(long, env = "GRIDMESH_DEMO_FEEDERS", default_value_t = 3)]
    feeders: usize,
    /// Simulated seconds per real second (60 = one 15-minute interval every 15 s).
    #[arg(long, env = "GRIDMESH_DEMO_SPEED", default_value_t = 60.0)]
    speed: f64,
    /// Seed of the weather and household behaviour.
    #[arg(long, env = "GRIDMESH_DEMO_SEED", default_value_t = 42)]
    seed: u64,
    /// Simulated start time of a fresh demo (RFC 3339, UTC).
    #[arg(
        long,
        env = "GRIDMESH_DEMO_START",
        default_value = "2026-06-21T09:00:00Z"
    )]
    start: DateTime<Utc>,
    /// Where the demo keeps its state (keys, SQLite files, outboxes); a second run resumes.
    #[arg(long, env = "GRIDMESH_DEMO_DATA_DIR", default_value = "demo-data")]
    data_dir: PathBuf,
    /// Use this PostgreSQL server instead of SQLite files (postgres://USER@HOST:PORT/DB).
    #[arg(long, env = "GRIDMESH_DEMO_DATABASE")]
    database: Option<String>,
    /// Use this MQTT broker instead of the embedded one (mqtt://HOST:PORT).
    #[arg(long, env = "GRIDMESH_DEMO_BROKER")]
    broker: Option<String>,
    /// Dashboard port; the market uses the next port, settlement the one after, the embedded
    /// broker the third.
    #[arg(long, env = "GRIDMESH_DEMO_PORTS_FROM", default_value_t = 8080)]
    ports_from: u16,
    /// Modbus TCP port of the first simulated home (one port per home).
    #[arg(long, env = "GRIDMESH_DEMO_MODBUS_PORT", default_value_t = 15020)]
    modbus_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    gridmesh_runtime::telemetry::init("warn,gridmesh_e2e=info");
    // Ctrl-C or SIGTERM ends the wait below; the neighbourhood then stops in order (gateways
    // first, so none is cut off mid-reading by its devices disappearing).
    let signals = Shutdown::new();
    signals.trigger_on_signals();
    let shutdown = Shutdown::new();
    let local_page_password = edge_gateway::local_page::generate_password();
    let options = Options {
        homes: args.homes,
        feeders: args.feeders,
        speed: args.speed,
        seed: args.seed,
        start: args.start,
        data_dir: args.data_dir.clone(),
        database: args.database,
        broker: args.broker,
        ports_from: args.ports_from,
        modbus_base_port: args.modbus_port,
        // Every gateway announces its household to Home Assistant on the demo's broker:
        // `mosquitto_sub -t 'homeassistant/#'` shows the entities.
        home_assistant: true,
        local_page_password: Some(local_page_password.clone()),
        ..Options::default()
    };
    let neighbourhood = Neighbourhood::start(options, &shutdown)
        .await
        .context("the neighbourhood did not start")?;
    println!(
        "gridmesh neighbourhood: {} homes on {} feeders, {}× real time{}",
        args.homes,
        args.feeders,
        args.speed,
        if neighbourhood.resumed {
            ", resumed from stored state"
        } else {
            ""
        }
    );
    let password = neighbourhood
        .add_dashboard_user("admin", gridmesh_web::auth::Role::Admin)
        .context("creating the dashboard's admin user")?;
    println!("  dashboard   {}", neighbourhood.dashboard_url());
    println!("dashboard login: admin / {password}");
    println!("  market      {}", neighbourhood.market.url());
    println!("  settlement  {}", neighbourhood.settlement_url());
    println!("  broker      {}", neighbourhood.broker_url);
    println!("  home assistant: every gateway's entities under homeassistant/# on the broker");
    if let Some(addr) = neighbourhood
        .gateways
        .iter()
        .find_map(|g| g.local_page_addr)
    {
        println!("  local page  http://{addr} (one household's gateway page)");
        println!("local page login: {local_page_password}");
    }
    println!("  state       {}", args.data_dir.display());
    println!(
        "simulated time {}; one line per cleared and per settled interval; Ctrl-C stops.",
        neighbourhood.clock.now().format("%Y-%m-%d %H:%M UTC")
    );
    let reporter = tokio::spawn(gridmesh_e2e::progress::report(
        neighbourhood.market.url(),
        neighbourhood.settlement_url(),
        neighbourhood.auditor_token.clone(),
        signals.token(),
    ));
    signals.triggered().await;
    println!("stopping: finishing in-flight work…");
    let _ = reporter.await;
    neighbourhood.stop(&shutdown).await?;
    println!("stopped cleanly; run again to resume.");
    Ok(())
}
