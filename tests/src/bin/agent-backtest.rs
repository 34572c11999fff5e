//! `agent-backtest`: the household agents against each other on meter-sim's neighbourhood,
//! through the real pipeline (meter-sim over Modbus, the gateways' agents, the market,
//! settlement) on the accelerated clock (issue 19).
//!
//! One neighbourhood run per agent strategy (`simple`: today's agent as the demo configures it;
//! `scheduled`: the battery schedule and bid curves, steering the battery), each over the same
//! seed and simulated days. Per household it prints the net cost (minor units; positive = the
//! household paid) under four strategies:
//!
//! - **utility only**: the `simple` run's metered ground truth (its battery runs by itself) at
//!   the utility's tariffs, retail for import and feed-in for export, no market;
//! - **today's agent** and **new agent**: minus the sum of the settlement statements' `net`;
//! - **foresight**: the battery homes' optimum by linear programming (good_lp, Clarabel) on the
//!   ground truth (PV offered, consumption) and the cleared prices at their node, trading any
//!   quantity at the node price when one cleared, else at the tariffs: an upper bound that no
//!   agent on a Pi can reach, never shipped.
//!
//! Then the goals: the new agent's savings over utility only as a share of foresight's,
//! summed over the battery homes; homes worse off than with today's agent; and the share of
//! the neighbourhood's export that cleared peer to peer under each agent.

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use edge_gateway::config::AgentStrategy;
use good_lp::{Expression, ProblemVariables, Solution, SolverModel, clarabel, variable};
use gridmesh_e2e::neighbourhood::{Neighbourhood, Options, demo_homes, demo_network};
use gridmesh_protocol::api::settlement::Statement;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::{Interval, IntervalLength, NodeId, PricePerMwh};
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::TrueEnergy;
use meter_sim::scenario::HomeParams;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Runs today's and the new household agent through the whole pipeline on the same simulated
/// days and compares every household's net cost with utility-only and a perfect-foresight
/// optimum.
///
/// Every option can also be set in the environment as GRIDMESH_BACKTEST_<OPTION>.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Simulated days per run.
    #[arg(long, env = "GRIDMESH_BACKTEST_DAYS", default_value_t = 7)]
    days: u32,
    /// Number of simulated homes (every third a flat without PV, every other prosumer with a
    /// 10 kWh battery).
    #[arg(long, env = "GRIDMESH_BACKTEST_HOMES", default_value_t = 12)]
    homes: usize,
    /// Number of feeders (f1 is tight).
    #[arg(long, env = "GRIDMESH_BACKTEST_FEEDERS", default_value_t = 3)]
    feeders: usize,
    /// Simulated seconds per real second (one day takes 86 400 / speed real seconds per run).
    #[arg(long, env = "GRIDMESH_BACKTEST_SPEED", default_value_t = 300.0)]
    speed: f64,
    /// Seed of the weather and household behaviour (the same for both runs).
    #[arg(long, env = "GRIDMESH_BACKTEST_SEED", default_value_t = 42)]
    seed: u64,
    /// Simulated start (RFC 3339, UTC; midnight so the days are whole).
    #[arg(
        long,
        env = "GRIDMESH_BACKTEST_START",
        default_value = "2026-06-21T00:00:00Z"
    )]
    start: DateTime<Utc>,
    /// Where the runs keep their state (a fresh temporary directory if absent).
    #[arg(long, env = "GRIDMESH_BACKTEST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Writes every household's statement and ground truth per interval to
    /// DIR/{simple,scheduled}.csv (for finding where a strategy loses money).
    #[arg(long, env = "GRIDMESH_BACKTEST_DUMP")]
    dump: Option<PathBuf>,
    /// Runs both strategies at the same time (half the wall time when the machine keeps up at
    /// the speed; each run has its own services and ports).
    #[arg(long, env = "GRIDMESH_BACKTEST_CONCURRENT")]
    concurrent: bool,
}

/// What one run measured.
#[derive(Debug, Default)]
struct RunResult {
    /// Net cost per household from the statements, minor units (+ paid).
    cost: BTreeMap<String, i64>,
    /// Export and the part of it delivered to peer-to-peer sales, Wh (all homes).
    exported_wh: i64,
    delivered_wh: i64,
    /// Ground truth per home and interval start.
    truth: BTreeMap<String, BTreeMap<i64, TrueEnergy>>,
    /// Cleared price per node and interval start.
    prices: BTreeMap<NodeId, BTreeMap<i64, PricePerMwh>>,
    /// meter-sim's resolved homes (battery size, power, reserve, efficiency, feeder).
    homes: Vec<HomeParams>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    gridmesh_runtime::telemetry::init("error");
    if args.days == 0 || args.speed <= 0.0 {
        bail!("--days and --speed must be positive");
    }
    let temp = tempfile_dir()?;
    let base = args.data_dir.clone().unwrap_or_else(|| temp.clone());
    let started = std::time::Instant::now();
    let (simple_dir, scheduled_dir) = (base.join("simple"), base.join("scheduled"));
    let (simple, scheduled) = if args.concurrent {
        let (a, b) = tokio::join!(
            run(&args, AgentStrategy::Simple, &simple_dir),
            run(&args, AgentStrategy::Scheduled, &scheduled_dir)
        );
        (a?, b?)
    } else {
        let a = run(&args, AgentStrategy::Simple, &simple_dir).await?;
        (
            a,
            run(&args, AgentStrategy::Scheduled, &scheduled_dir).await?,
        )
    };
    report(&args, &simple, &scheduled)?;
    println!(
        "wall time {:.0} s for 2 runs of {} simulated day(s) at {}x",
        started.elapsed().as_secs_f64(),
        args.days,
        args.speed
    );
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("agent-backtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

async fn run(
    args: &Args,
    strategy: AgentStrategy,
    dir: &std::path::Path,
) -> anyhow::Result<RunResult> {
    let _ = std::fs::remove_dir_all(dir);
    let ids: Vec<String> = demo_homes(args.homes, args.feeders)
        .into_iter()
        .map(|h| h.id)
        .collect();
    let options = Options {
        homes: args.homes,
        feeders: args.feeders,
        speed: args.speed,
        seed: args.seed,
        start: args.start,
        data_dir: dir.to_owned(),
        ports_from: 0,
        modbus_base_port: 0,
        external_gateways: ids.clone(),
        ..Options::default()
    };
    let shutdown = Shutdown::new();
    let hood = Neighbourhood::start(options, &shutdown)
        .await
        .context("the neighbourhood did not start")?;
    let gateways = Shutdown::new();
    let manifest = hood.sim.manifest();
    for mut config in hood.external_gateways.clone() {
        let home = manifest
            .home(config.participant.as_str())
            .context("a gateway for an unknown home")?;
        config.agent.strategy = strategy;
        if strategy == AgentStrategy::Scheduled && home.battery_kwh > 0.0 {
            config.agent.steer_battery = true;
        }
        edge_gateway::run(config, hood.clock.clone(), gateways.clone())
            .await
            .context("a gateway did not start")?;
    }
    let length = IntervalLength::Min15;
    let first = Interval::containing(args.start, length);
    let count = args.days as usize * 96;
    let intervals: Vec<Interval> = std::iter::successors(Some(first), |i| Some(i.next()))
        .take(count)
        .collect();
    let mut result = RunResult {
        homes: hood.sim.homes().to_vec(),
        ..RunResult::default()
    };
    let http = reqwest::Client::new();
    let market = hood.market.url();
    for (k, interval) in intervals.iter().enumerate() {
        hood.clock
            .sleep_until(interval.end() + chrono::Duration::seconds(30))
            .await;
        for id in &ids {
            if let Some(truth) = hood.sim.ground_truth(id, interval) {
                result
                    .truth
                    .entry(id.clone())
                    .or_default()
                    .insert(interval.start_unix(), truth);
            }
        }
        let url = format!(
            "{market}/intervals/{}/result",
            interval.start().format("%Y-%m-%dT%H:%M:%SZ")
        );
        if let Ok(r) = http
            .get(&url)
            .bearer_auth(&hood.auditor_token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            && r.status().is_success()
            && let Ok(cleared) = r.json::<IntervalResult>().await
        {
            for (node, price) in cleared.prices {
                result
                    .prices
                    .entry(node)
                    .or_default()
                    .insert(interval.start_unix(), price);
            }
        }
        if (k + 1) % 96 == 0 {
            println!(
                "{strategy:?}: day {} of {} simulated ({:.0} s)",
                (k + 1) / 96,
                args.days,
                hood.clock.speed().recip() * ((k + 1) as f64) * 900.0
            );
        }
    }
    // Settlement settles an interval after its grace: wait until the last one has statements
    // for every household (at most a minute of real time).
    let last = intervals.last().expect("at least one day").key();
    let settlement = hood.settlement_url();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let statements: Vec<Statement> = loop {
        let got: Vec<Statement> = http
            .get(format!("{settlement}/statements"))
            .bearer_auth(&hood.auditor_token)
            .timeout(Duration::from_secs(30))
            .send()
            .await?
            .json()
            .await?;
        let settled_last = got.iter().filter(|s| s.interval == last).count();
        if settled_last >= ids.len() || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let keys: std::collections::BTreeSet<String> = intervals.iter().map(|i| i.key()).collect();
    if let Some(dump) = &args.dump {
        write_dump(dump, strategy, &statements, &keys, &result, &intervals)?;
    }
    for s in statements.iter().filter(|s| keys.contains(&s.interval)) {
        *result.cost.entry(s.participant.to_string()).or_default() -= s.net.0;
        result.exported_wh += s.exported.0;
        result.delivered_wh += s.delivered.0;
    }
    gateways.trigger();
    gateways.wait().await;
    shutdown.trigger();
    hood.stop(&shutdown).await?;
    Ok(result)
}

/// One CSV line per household and interval: the statement's energies and money lines beside
/// the ground truth and the node's cleared price.
fn write_dump(
    dir: &std::path::Path,
    strategy: AgentStrategy,
    statements: &[Statement],
    keys: &std::collections::BTreeSet<String>,
    result: &RunResult,
    intervals: &[Interval],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let starts: BTreeMap<String, i64> = intervals
        .iter()
        .map(|i| (i.key(), i.start_unix()))
        .collect();
    let feeders: BTreeMap<&str, &str> = result
        .homes
        .iter()
        .map(|h| (h.id.as_str(), h.feeder.as_str()))
        .collect();
    let mut out = String::from(
        "interval,home,sold,bought,exported,imported,excess,delivered,consumed,net,lines,pv,pv_available,load,charge,discharge,stored_start,price\n",
    );
    for s in statements.iter().filter(|s| keys.contains(&s.interval)) {
        let id = s.participant.to_string();
        let start = starts.get(&s.interval).copied().unwrap_or_default();
        let t = result
            .truth
            .get(&id)
            .and_then(|m| m.get(&start))
            .cloned()
            .unwrap_or_default();
        let load =
            t.pv.0 + t.grid_import.0 + t.battery_discharge.0 - t.grid_export.0 - t.battery_charge.0;
        let price = feeders
            .get(id.as_str())
            .and_then(|f| NodeId::new(*f).ok())
            .and_then(|n| result.prices.get(&n))
            .and_then(|m| m.get(&start))
            .map_or(String::new(), |p| p.0.to_string());
        let lines: Vec<String> = s
            .lines
            .iter()
            .map(|l| format!("{}:{}@{}={}", l.kind, l.energy.0, l.price.0, l.amount.0))
            .collect();
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.interval,
            id,
            s.sold.0,
            s.bought.0,
            s.exported.0,
            s.imported.0,
            s.envelope_excess.0,
            s.delivered.0,
            s.consumed.0,
            s.net.0,
            lines.join(" "),
            t.pv.0,
            t.pv_available.0,
            load,
            t.battery_charge.0,
            t.battery_discharge.0,
            t.battery_stored_start.0,
            price
        )?;
    }
    let path = dir.join(format!("{}.csv", format!("{strategy:?}").to_lowercase()));
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Utility-only cost of a home over its truth: import × retail − export × feed-in, minor units.
fn utility_only(truth: &BTreeMap<i64, TrueEnergy>, retail: i64, feed_in: i64) -> i64 {
    let micro: i128 = truth
        .values()
        .map(|t| {
            i128::from(t.grid_import.0) * i128::from(retail)
                - i128::from(t.grid_export.0) * i128::from(feed_in)
        })
        .sum();
    (micro / 1_000_000) as i64
}

/// The perfect-foresight cost of a battery home (minor units): the LP over every interval.
#[allow(clippy::too_many_arguments)]
fn foresight(
    truth: &BTreeMap<i64, TrueEnergy>,
    prices: &BTreeMap<i64, PricePerMwh>,
    retail: f64,
    feed_in: f64,
    capacity_wh: f64,
    reserve_wh: f64,
    power_wh: f64,
    round_trip: f64,
    export_cap_wh: f64,
) -> anyhow::Result<i64> {
    let eta = round_trip.sqrt();
    let mut vars = ProblemVariables::new();
    let mut objective = Expression::from(0.0);
    let mut constraints = Vec::new();
    let first = truth.values().next().context("no ground truth")?;
    let mut soc_prev = Expression::from(first.battery_stored_start.0 as f64);
    let soc_start = first.battery_stored_start.0 as f64;
    for (start, t) in truth {
        let pv = t.pv_available.0.max(t.pv.0) as f64;
        let load = (t.pv.0 + t.grid_import.0 + t.battery_discharge.0
            - t.grid_export.0
            - t.battery_charge.0)
            .max(0) as f64;
        let price = prices.get(start).map(|p| p.0 as f64);
        let buy = price.map_or(retail, |p| p.clamp(feed_in, retail));
        let sell = price.map_or(feed_in, |p| p.clamp(feed_in, retail));
        let c = vars.add(variable().min(0.0).max(power_wh));
        let d = vars.add(variable().min(0.0).max(power_wh));
        let imp = vars.add(variable().min(0.0));
        let exp = vars.add(variable().min(0.0).max(export_cap_wh));
        let waste = vars.add(variable().min(0.0).max(pv)); // curtailed or exported beyond the cap
        let soc = vars.add(variable().min(reserve_wh.min(soc_start)).max(capacity_wh));
        constraints.push((pv + imp + d - waste).eq(load + exp + c));
        constraints.push(Expression::from(soc).eq(soc_prev.clone() + eta * c - d * (1.0 / eta)));
        soc_prev = Expression::from(soc);
        objective += buy * imp - sell * exp;
    }
    // No free lunch from the battery: it ends at least as full as it started.
    constraints.push(soc_prev.geq(soc_start));
    let mut problem = vars.minimise(objective.clone()).using(clarabel);
    for c in constraints {
        problem = problem.with(c);
    }
    let solution = problem
        .solve()
        .map_err(|e| anyhow::anyhow!("foresight LP: {e}"))?;
    Ok((solution.eval(&objective) / 1_000_000.0).round() as i64)
}

fn report(args: &Args, simple: &RunResult, scheduled: &RunResult) -> anyhow::Result<()> {
    let network = demo_network(args.feeders, args.homes);
    let retail = network.utility.retail_price.map_or(0, |p| p.0);
    let feed_in = network.utility.feed_in_price.map_or(0, |p| p.0);
    let homes = &simple.homes;
    println!(
        "{:<6} {:<4} {:>8} {:>13} {:>13} {:>13} {:>13}   (net cost, EUR; + paid)",
        "home", "node", "battery", "utility only", "today's agent", "new agent", "foresight"
    );
    let (mut saved_new, mut saved_best, mut worse) = (0i64, 0i64, Vec::new());
    for home in homes {
        let id = &home.id;
        let feeder = home.feeder.clone();
        let battery_kwh = home.battery_kwh;
        let truth = simple.truth.get(id).cloned().unwrap_or_default();
        let utility = utility_only(&truth, retail, feed_in);
        let today = simple.cost.get(id).copied().unwrap_or(0);
        let new = scheduled.cost.get(id).copied().unwrap_or(0);
        let best = if battery_kwh > 0.0 {
            let node = NodeId::new(feeder.clone())?;
            let homes_here = homes.iter().filter(|h| h.feeder == home.feeder).count() as f64;
            let cap = network
                .branches
                .iter()
                .find(|b| b.node == node)
                .and_then(|b| b.export_limit_wh)
                .map_or(f64::MAX, |wh| wh.0 as f64 / homes_here.max(1.0));
            let capacity = battery_kwh * 1000.0;
            let reserve_pct = home.reserve_pct;
            let rt = home.round_trip_efficiency;
            let power = f64::from(home.battery_w) * 0.25;
            let prices = simple.prices.get(&node).cloned().unwrap_or_default();
            Some(foresight(
                &truth,
                &prices,
                retail as f64,
                feed_in as f64,
                capacity,
                capacity * reserve_pct / 100.0,
                power,
                rt,
                cap,
            )?)
        } else {
            None
        };
        if let Some(best) = best {
            saved_new += utility - new;
            saved_best += utility - best;
        }
        if new > today {
            worse.push(format!("{id} (+{:.2} EUR)", (new - today) as f64 / 100.0));
        }
        let euros = |v: i64| format!("{:.2}", v as f64 / 100.0);
        println!(
            "{:<6} {:<4} {:>8} {:>13} {:>13} {:>13} {:>13}",
            id,
            feeder,
            if battery_kwh > 0.0 {
                format!("{battery_kwh} kWh")
            } else {
                "-".into()
            },
            euros(utility),
            euros(today),
            euros(new),
            best.map_or("-".into(), euros)
        );
    }
    let share = |r: &RunResult| {
        if r.exported_wh > 0 {
            100.0 * r.delivered_wh as f64 / r.exported_wh as f64
        } else {
            0.0
        }
    };
    println!(
        "battery homes: new agent saves {:.2} of foresight's {:.2} over utility only = {:.0} % (goal >= 80 %)",
        saved_new as f64 / 100.0,
        saved_best as f64 / 100.0,
        if saved_best > 0 {
            100.0 * saved_new as f64 / saved_best as f64
        } else {
            0.0
        }
    );
    println!(
        "homes worse off than with today's agent: {} {}",
        worse.len(),
        worse.join(", ")
    );
    println!(
        "export cleared peer to peer: today's agent {:.1} % of {} Wh, new agent {:.1} % of {} Wh",
        share(simple),
        simple.exported_wh,
        share(scheduled),
        scheduled.exported_wh
    );
    Ok(())
}
