//! `gridmesh-web`: the dashboard binary (CLI, config file, logging, shutdown).

use anyhow::Context;
use clap::Parser;
use gridmesh_runtime::shutdown::Shutdown;
use gridmesh_web::WebConfig;
use std::path::PathBuf;

/// The gridmesh dashboard: feeders against their limits, prices, volumes, participants and the
/// token ledger, read live from the market and settlement APIs.
///
/// Settings come from the TOML file (if given), then from GRIDMESH_WEB_* environment variables
/// (for example GRIDMESH_WEB_MARKET_URL=http://127.0.0.1:8081), then from these flags.
#[derive(Debug, Parser)]
#[command(name = "gridmesh-web", version)]
struct Cli {
    /// TOML config file (keys: listen, market_url, settlement_url, broker_url, poll_interval_ms,
    /// request_timeout_ms, history_intervals, imbalance_spike_factor).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The market engine's base URL.
    #[arg(long)]
    market_url: Option<String>,
    /// Settlement's base URL.
    #[arg(long)]
    settlement_url: Option<String>,
    /// MQTT broker for gateway online/offline status, e.g. mqtt://127.0.0.1:1883.
    #[arg(long)]
    broker_url: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gridmesh_runtime::telemetry::init("gridmesh_web=info,info");
    let mut config: WebConfig =
        gridmesh_runtime::config::load(cli.config.as_deref(), "GRIDMESH_WEB")
            .context("loading the dashboard configuration")?;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(url) = cli.market_url {
        config.market_url = url;
    }
    if let Some(url) = cli.settlement_url {
        config.settlement_url = url;
    }
    if let Some(url) = cli.broker_url {
        config.broker_url = Some(url);
    }
    if cli.print_config {
        println!("{}", toml_text(&config));
        return Ok(());
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let running = gridmesh_web::serve(config, shutdown.clone()).await?;
    eprintln!("gridmesh dashboard at {}/", running.url());
    shutdown.triggered().await;
    shutdown.wait().await;
    Ok(())
}

fn toml_text(config: &WebConfig) -> String {
    let mut out = format!(
        "listen = \"{}\"\nmarket_url = \"{}\"\nsettlement_url = \"{}\"\n",
        config.listen, config.market_url, config.settlement_url
    );
    if let Some(b) = &config.broker_url {
        out.push_str(&format!("broker_url = \"{b}\"\n"));
    }
    out.push_str(&format!(
        "poll_interval_ms = {}\nrequest_timeout_ms = {}\nhistory_intervals = {}\nimbalance_spike_factor = {}",
        config.poll_interval_ms, config.request_timeout_ms, config.history_intervals, config.imbalance_spike_factor
    ));
    out
}
