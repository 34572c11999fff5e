//! `gridmesh-node`: runs ONE service (the market or settlement) as its own OS process on an
//! accelerated clock shared with other processes, for the scale-out test and multi-process
//! demos. It calls the same library entry points as the `market-engine serve` and `settlement
//! serve` binaries, which run on the system clock only; the config files are the same.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_gateway::config::ClockConfig;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use std::path::PathBuf;

/// Runs one gridmesh service on a shared accelerated clock.
#[derive(Debug, Parser)]
#[command(name = "gridmesh-node", version, about)]
struct Cli {
    /// Simulated time at `--anchor` (RFC 3339); without it, the system clock.
    #[arg(long, global = true)]
    epoch: Option<chrono::DateTime<chrono::Utc>>,
    /// Simulated seconds per real second.
    #[arg(long, global = true, default_value_t = 1.0)]
    speed: f64,
    /// The real instant (RFC 3339) at which simulated time was `--epoch`; every process given
    /// the same epoch, speed and anchor agrees on simulated time. Default: now.
    #[arg(long, global = true)]
    anchor: Option<chrono::DateTime<chrono::Utc>>,
    #[command(subcommand)]
    service: Service,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// The market engine (config as for `market-engine serve`, env GRIDMESH_MARKET_*).
    Market {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Settlement (config as for `settlement serve`, env GRIDMESH_SETTLEMENT_*).
    Settlement {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gridmesh_runtime::telemetry::init("info");
    let clock = match cli.epoch {
        Some(epoch) => ClockConfig {
            epoch,
            speed: cli.speed,
            anchor: Some(cli.anchor.unwrap_or_else(chrono::Utc::now)),
        }
        .clock(),
        None => Clock::system(),
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    match cli.service {
        Service::Market { config } => {
            let config: market_engine::MarketConfig = gridmesh_runtime::config::load(
                config.as_deref(),
                market_engine::config::ENV_PREFIX,
            )?;
            let running = market_engine::server::serve(config, clock, shutdown.clone())
                .await
                .context("the market could not start")?;
            eprintln!("market engine listening on {}", running.url());
        }
        Service::Settlement { config } => {
            let config: settlement::SettlementConfig =
                gridmesh_runtime::config::load(config.as_deref(), "GRIDMESH_SETTLEMENT")?;
            let running = settlement::serve(config, clock, shutdown.clone())
                .await
                .context("settlement could not start")?;
            eprintln!("settlement listening on http://{}", running.addr);
        }
    }
    shutdown.triggered().await;
    shutdown.wait().await;
    Ok(())
}
