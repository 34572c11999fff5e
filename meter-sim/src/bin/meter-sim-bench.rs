//! Benchmark: N homes (default 500) at speed 1 with 1 s physics steps, optionally polled over
//! Modbus like gateways would; reports CPU (percent of one core) and RSS from /proc/self.
//!
//! `cargo run --release -p meter-sim --bin meter-sim-bench -- --homes 500 --seconds 30 --poll-ms 5000`

use clap::Parser;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::{DeviceKind, Scenario};
use std::time::{Duration, Instant};
use tokio_modbus::client::{Reader, tcp};

/// Measure the simulator's cost.
#[derive(Debug, Parser)]
struct Args {
    /// Homes to simulate.
    #[arg(long, default_value_t = 500)]
    homes: usize,
    /// Real seconds to measure.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Poll every home's inverter and meter counters this often (0 = no polling).
    #[arg(long, default_value_t = 5000)]
    poll_ms: u64,
    /// Speed factor.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

/// CPU seconds (user + system) of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scenario = Scenario::small(args.homes, 42);
    let clock = Clock::scaled(scenario.start.expect("small() sets a start"), args.speed);
    let shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock, &shutdown).await?;
    let manifest = sim.manifest();
    if args.poll_ms > 0 {
        for home in &manifest.homes {
            for kind in [DeviceKind::Inverter, DeviceKind::Meter] {
                let Some(device) = home.device(kind) else {
                    continue;
                };
                let addr = format!("{}:{}", device.host, device.port).parse()?;
                let unit = device.unit;
                let token = shutdown.token();
                let period = Duration::from_millis(args.poll_ms);
                let (address, count) = if kind == DeviceKind::Meter {
                    (40_070, 107)
                } else {
                    (40_070, 52)
                };
                shutdown.spawn(async move {
                    let Ok(mut ctx) = tcp::connect_slave(addr, tokio_modbus::Slave(unit)).await else { return };
                    let mut ticker = tokio::time::interval(period);
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = ticker.tick() => { let _ = ctx.read_holding_registers(address, count).await; }
                        }
                    }
                });
            }
        }
    }
    // Let start-up settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    let steps0 = sim.status().steps;
    let requests0 = sim.status().modbus_requests;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let status = sim.status();
    println!(
        "homes={} speed={} seconds={:.1} steps={} modbus_requests={} cpu={:.1}% of one core rss={:.1} MiB",
        args.homes,
        args.speed,
        wall,
        status.steps - steps0,
        status.modbus_requests - requests0,
        100.0 * cpu / wall,
        rss_mib()
    );
    shutdown.stop().await;
    Ok(())
}
