//! The `meter-sim` binary: load a scenario, start the neighbourhood, serve the control API.

use anyhow::Context;
use clap::Parser;
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::{Homes, Scenario};
use std::path::PathBuf;
use std::time::Duration;

/// Simulated SunSpec inverters, batteries and grid meters over Modbus TCP (and MQTT).
///
/// Without --scenario the built-in neighbourhood runs: 12 homes on 2 feeders, ports 15020..,
/// unit 1 = inverter (models 1,103), 2 = battery (1,124,802,701), 3 = meter (1,203).
/// Scenario fields can also be set with GRIDMESH_SIM_<FIELD> environment variables
/// (nested with __, e.g. GRIDMESH_SIM_MQTT__URL).
#[derive(Debug, Parser)]
#[command(name = "meter-sim", version)]
struct Cli {
    /// Scenario TOML file (default: the built-in neighbourhood).
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Write the device manifest (JSON) to this file once the ports are bound.
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// Number of homes (overrides the scenario's homes with a generated set).
    #[arg(long, value_name = "N")]
    homes: Option<usize>,
    /// Simulated seconds per real second (60 = one simulated hour per real minute).
    #[arg(long, value_name = "X")]
    speed: Option<f64>,
    /// Port of the first home (0 = ephemeral ports; see the manifest).
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// Seed of the random processes.
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated start time (RFC 3339), or `now`.
    #[arg(long)]
    start: Option<String>,
    /// Address of the control/status HTTP API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    control: String,
    /// Real seconds between status lines in the log (0 = none).
    #[arg(long, default_value_t = 10)]
    status_every: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gridmesh_runtime::telemetry::init("meter_sim=info,info");
    let cli = Cli::parse();
    let mut scenario: Scenario =
        gridmesh_runtime::config::load(cli.scenario.as_deref(), "GRIDMESH_SIM")?;
    if let Some(n) = cli.homes {
        scenario.homes = Homes::Count(n);
    }
    if let Some(speed) = cli.speed {
        scenario.speed = speed;
    }
    if let Some(port) = cli.base_port {
        scenario.base_port = port;
    }
    if let Some(seed) = cli.seed {
        scenario.seed = seed;
    }
    match cli.start.as_deref() {
        Some("now") => scenario.start = None,
        Some(text) => {
            let t = chrono::DateTime::parse_from_rfc3339(text).with_context(|| {
                format!(
                    "--start `{text}` is not an RFC 3339 time such as 2026-06-21T06:00:00Z or `now`"
                )
            })?;
            scenario.start = Some(t.with_timezone(&chrono::Utc));
        }
        None => {}
    }
    scenario.resolve()?;
    let clock = scenario.clock();
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let sim = meter_sim::start(scenario.clone(), clock, &shutdown).await?;
    let manifest = sim.manifest();
    if let Some(path) = &cli.manifest {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)
            .with_context(|| format!("cannot write the manifest to {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot write the manifest to {}", path.display()))?;
        tracing::info!(path = %path.display(), "manifest written");
    }
    let control = sim.serve_control(&cli.control, &shutdown).await?;
    tracing::info!(
        homes = manifest.homes.len(),
        first_port = manifest.homes.first().and_then(|h| h.devices.first()).map(|d| d.port),
        %control,
        speed = scenario.speed,
        "meter-sim running"
    );
    if cli.status_every > 0 {
        let sim = sim.clone();
        let token = shutdown.token();
        let every = Duration::from_secs(cli.status_every);
        shutdown.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let s = sim.status();
                tracing::info!(
                    time = %s.simulated_time.format("%Y-%m-%d %H:%M:%S"),
                    pv_w = s.totals.pv_w,
                    load_w = s.totals.load_w,
                    battery_w = s.totals.battery_w,
                    grid_w = s.totals.grid_w,
                    modbus_requests = s.modbus_requests,
                    "status"
                );
            }
        });
    }
    shutdown.triggered().await;
    shutdown.wait().await;
    Ok(())
}
