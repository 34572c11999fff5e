//! `throughput`: the signature-bound throughput of both services beside this machine's ed25519
//! limit, in one run (issue 16).
//!
//! 1. the ceiling: ed25519-dalek batch verification (`verify_batch`, batches of 64) on one
//!    thread per core, nothing else;
//! 2. settlement ingest into PostgreSQL (`COPY`): signed readings decoded, verified in the
//!    verification stage, checked and stored, from two concurrent senders of 2000-reading
//!    batches, in process;
//! 3. market intake through `POST /orders/batch` (1000 orders a request, four connections) to
//!    a market server in a child process (PostgreSQL), with the server's CPU time per order;
//! 4. single orders (`POST /orders`) at a constant arrival rate (open loop: each order is sent
//!    at its scheduled time whether or not earlier ones were answered; latency counts from the
//!    scheduled time), p50/p99/max and server CPU per order.
//!
//! Every rate is also shown as a ratio to the ceiling. CPU per item (process CPU time divided
//! by items) is the figure that stays comparable on a shared machine.
//!
//! `--short` runs a few thousand items for correctness only (scripts/test): it checks that
//! every reading and order is accounted for (stored, answered, counted) and asserts no time.
//!
//! `cargo run --release -p gridmesh-e2e --bin throughput` (PostgreSQL at 127.0.0.1:5432).

use chrono::{DateTime, Utc};
use clap::Parser;
use gridmesh_protocol::api::market::{OrderBatch, OrderBatchAccepted};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::reading::{Reading, ReadingFlags, Registers};
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::signing::{SignedEnvelope, verify_batch};
use gridmesh_protocol::{
    DeviceId, GatewayId, Interval, NodeId, ParticipantId, PricePerMwh, Side, Wh, ZoneId,
};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use settlement::service::{CoreSettings, ReadingStatus, Service, Submission};
use settlement::verify::Limits;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark options.
#[derive(Parser)]
#[command(about = "Signature-bound throughput of settlement and market beside the ed25519 ceiling")]
struct Args {
    /// A few thousand items, correctness only: every item accounted for, no time asserted.
    #[arg(long)]
    short: bool,
    /// Readings to ingest (default 200 000; 2 000 with --short).
    #[arg(long)]
    readings: Option<usize>,
    /// Orders sent through POST /orders/batch (default 100 000; 3 000 with --short).
    #[arg(long)]
    orders: Option<usize>,
    /// Arrival rate of single orders, per second.
    #[arg(long, default_value_t = 2000)]
    single_rate: u32,
    /// Seconds of single-order load (default 10; 0.25 with --short).
    #[arg(long)]
    single_seconds: Option<f64>,
    /// Internal: run a market server on this database for the parent process.
    #[arg(long, hide = true)]
    serve_market: Option<String>,
    /// Internal: the market server's listen address.
    #[arg(long, hide = true)]
    listen: Option<String>,
}

/// CPU time (user + system) of process `pid` so far, from /proc (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raw `verify_batch` rate on one thread per core.
fn ceiling(seconds: f64) -> f64 {
    let keys: Vec<SigningKeyPair> = (0..64u8)
        .map(|i| SigningKeyPair::from_seed([i.wrapping_add(1); 32]))
        .collect();
    let envelopes: Arc<Vec<SignedEnvelope>> = Arc::new(
        (0..1024usize)
            .map(|i| SignedEnvelope::sign_bytes(format!("ceiling {i}").into_bytes(), &keys[i % 64]))
            .collect(),
    );
    let started = Instant::now();
    let threads: Vec<_> = (0..cores())
        .map(|_| {
            let envelopes = Arc::clone(&envelopes);
            std::thread::spawn(move || {
                let refs: Vec<&SignedEnvelope> = envelopes.iter().collect();
                let mut done = 0usize;
                while started.elapsed().as_secs_f64() < seconds {
                    for chunk in refs.chunks(64) {
                        verify_batch(chunk).expect("valid signatures");
                        done += chunk.len();
                    }
                }
                done
            })
        })
        .collect();
    let done: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    done as f64 / started.elapsed().as_secs_f64()
}

fn reading(gateway: &GatewayId, n: usize, interval: Interval) -> Reading {
    let total = (n as i64 + 1) * 500;
    Reading {
        zone: None,
        gateway: gateway.clone(),
        device: DeviceId::new("home").unwrap(),
        firmware: "0.1.0".into(),
        sequence: n as u64 + 1,
        interval,
        measured_at: interval.end(),
        clock_synced: true,
        clock_set_count: 1,
        operating_seconds: n as u64 * 900,
        registers: Registers {
            grid_import: Wh(total),
            ..Registers::default()
        },
        deltas: Registers {
            grid_import: Wh(500),
            ..Registers::default()
        },
        soc_permille: None,
        flags: ReadingFlags::empty(),
    }
}

struct IngestFigures {
    readings: usize,
    rate: f64,
    cpu_us: f64,
    /// CPU of the PostgreSQL backends serving the scratch database, per reading.
    postgres_cpu_us: f64,
}

/// CPU seconds so far of each PostgreSQL backend connected to the pool's database (by pid).
async fn backend_cpu(pool: &sqlx::AnyPool) -> Vec<(u32, f64)> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    pids.into_iter()
        .map(|pid| (pid as u32, cpu_seconds(pid as u32)))
        .collect()
}

/// Settlement ingest into PostgreSQL, in process.
async fn settlement_ingest(readings: usize) -> IngestFigures {
    let homes = 100.min(readings).max(1);
    let intervals = readings.div_ceil(homes);
    let start = DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let keys: Vec<SigningKeyPair> = (0..homes)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            SigningKeyPair::from_seed(seed)
        })
        .collect();
    let gateways: Vec<GatewayEnrollment> = (0..homes)
        .map(|i| GatewayEnrollment {
            gateway: GatewayId::new(format!("gw-h{i:03}")).unwrap(),
            participant: ParticipantId::new(format!("h{i:03}")).unwrap(),
            node: NodeId::new("f1").unwrap(),
            public_key: keys[i].public_key(),
            inverter_w: 8_000,
            battery_w: 4_000,
            latitude_microdeg: 52_520_000,
            longitude_microdeg: 13_400_000,
        })
        .collect();
    let participants: Vec<Participant> = (0..homes)
        .map(|i| Participant {
            id: ParticipantId::new(format!("h{i:03}")).unwrap(),
            public_key: keys[i].public_key(),
            node: NodeId::new("f1").unwrap(),
            kind: ParticipantKind::Household,
        })
        .collect();
    let mut raw = Vec::with_capacity(homes * intervals);
    for n in 0..intervals {
        let interval = Interval::containing(
            start + chrono::Duration::minutes(15 * n as i64),
            Default::default(),
        );
        for (i, key) in keys.iter().enumerate() {
            if raw.len() == readings {
                break;
            }
            let r = reading(&gateways[i].gateway, n, interval);
            raw.push(serde_json::to_vec(&SignedEnvelope::sign(&r, key)).unwrap());
        }
    }
    let url = gridmesh_runtime::db::scratch::fresh_postgres("throughput")
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    let db = settlement::store::open(&url).await.expect("database");
    let end = start + chrono::Duration::minutes(15 * intervals as i64 + 60);
    let settings = CoreSettings {
        limits: Limits {
            horizon: chrono::Duration::days(4000),
            max_clock_skew: chrono::Duration::seconds(60),
            zone: None,
        },
        grace: chrono::Duration::seconds(0),
    };
    let mut service = Service::open(
        db,
        SigningKeyPair::from_seed([9; 32]),
        Clock::scaled(end, 1.0),
        settings,
    )
    .await
    .expect("settlement core");
    service.use_postgres_copy(&url).await.expect("COPY pool");
    let service = Arc::new(service);
    service.set_gateways(&gateways).await.unwrap();
    service.set_participants(&participants).await.unwrap();

    let batches: Vec<Vec<Submission>> = raw
        .chunks(2000)
        .map(|c| {
            c.iter()
                .map(|raw| Submission {
                    source: "bench".into(),
                    raw: raw.clone(),
                })
                .collect()
        })
        .collect();
    let queue = Arc::new(tokio::sync::Mutex::new(batches.into_iter()));
    let backends_before = backend_cpu(&service.db().pool).await;
    let cpu = cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (queue, service) = (queue.clone(), service.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0usize;
            loop {
                let Some(batch) = queue.lock().await.next() else {
                    return accepted;
                };
                let out = service.ingest(batch).await.expect("ingest");
                accepted += out
                    .iter()
                    .filter(|o| o.status == ReadingStatus::Accepted)
                    .count();
            }
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(std::process::id()) - cpu;
    // Backends opened during the run count from zero.
    let postgres_cpu: f64 = backend_cpu(&service.db().pool)
        .await
        .into_iter()
        .map(|(pid, now)| {
            let before = backends_before.iter().find(|(p, _)| *p == pid);
            now - before.map_or(0.0, |(_, b)| *b)
        })
        .sum();
    // Accounted for: every reading acknowledged as accepted and one row each.
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
        .fetch_one(&service.db().pool)
        .await
        .unwrap();
    assert_eq!(accepted, readings, "every reading accepted");
    assert_eq!(
        rows as usize, readings,
        "every accepted reading stored once"
    );
    IngestFigures {
        readings,
        rate: readings as f64 / secs,
        cpu_us: cpu * 1e6 / readings as f64,
        postgres_cpu_us: postgres_cpu * 1e6 / readings as f64,
    }
}

/// A market server in a child process (so its CPU time is its own).
struct MarketChild {
    child: std::process::Child,
    base: String,
}

impl Drop for MarketChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_market(http: &reqwest::Client) -> MarketChild {
    let url = gridmesh_runtime::db::scratch::fresh_postgres("throughput_market")
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--serve-market",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start the market child");
    let market = MarketChild {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{}/healthz", market.base))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the market did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    market
}

async fn serve_market(database_url: String, listen: String) {
    let config = market_engine::MarketConfig {
        listen: listen.parse().expect("listen address"),
        database_url,
        zone: "bench".into(),
        operator_token: Some("bench".into()),
        ..market_engine::MarketConfig::default()
    };
    let shutdown = Shutdown::new();
    let _market = market_engine::serve(config, Clock::system(), shutdown.clone())
        .await
        .expect("market serves");
    // Runs until the parent kills it.
    std::future::pending::<()>().await;
}

/// Traders registered on the market, and an interval open for the whole run.
async fn traders(
    http: &reqwest::Client,
    base: &str,
    count: usize,
) -> (Vec<SigningKeyPair>, Interval) {
    let keys: Vec<SigningKeyPair> = (0..count)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            SigningKeyPair::from_seed(seed)
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let p = Participant {
            id: ParticipantId::new(format!("t{i}")).unwrap(),
            public_key: key.public_key(),
            node: NodeId::new("sub").unwrap(),
            kind: ParticipantKind::Trader,
        };
        let r = http
            .post(format!("{base}/participants"))
            .bearer_auth("bench")
            .json(&p)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let status: serde_json::Value = http
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The interval after the next open one: at least one interval of time before its gate.
    let interval = serde_json::from_value::<Interval>(status["next_open_interval"].clone())
        .unwrap()
        .next();
    (keys, interval)
}

fn signed_order(
    keys: &[SigningKeyPair],
    i: usize,
    nonce: u64,
    interval: Interval,
) -> SignedEnvelope {
    let who = i % keys.len();
    let order = Order {
        zone: Some(ZoneId::new("bench").unwrap()),
        participant: ParticipantId::new(format!("t{who}")).unwrap(),
        node: NodeId::new("sub").unwrap(),
        interval,
        side: if i % 2 == 0 { Side::Buy } else { Side::Sell },
        quantity: Wh(100 + (i % 4900) as i64),
        limit_price: PricePerMwh((i % 40_000) as i64),
        nonce,
    };
    SignedEnvelope::sign(&order, &keys[who])
}

struct BatchFigures {
    orders: usize,
    rate: f64,
    cpu_us: f64,
}

async fn market_batch(
    http: &reqwest::Client,
    market: &MarketChild,
    keys: &[SigningKeyPair],
    interval: Interval,
    orders: usize,
) -> BatchFigures {
    let bodies: Vec<Vec<u8>> = (0..orders)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|c| {
            let batch = OrderBatch {
                orders: c
                    .iter()
                    .map(|&i| signed_order(keys, i, i as u64, interval))
                    .collect(),
            };
            serde_json::to_vec(&batch).unwrap()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu = cpu_seconds(market.child.id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, bodies, next) = (http.clone(), bodies.clone(), next.clone());
        let url = format!("{}/orders/batch", market.base);
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return accepted;
                };
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let answer: OrderBatchAccepted = r.json().await.unwrap();
                assert_eq!(
                    answer.rejected,
                    0,
                    "{:?}",
                    answer.results.iter().find(|r| r.status != 201)
                );
                accepted += answer.accepted;
            }
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(market.child.id()) - cpu;
    assert_eq!(accepted, orders, "every batched order booked");
    BatchFigures {
        orders,
        rate: orders as f64 / secs,
        cpu_us: cpu * 1e6 / orders as f64,
    }
}

struct SingleFigures {
    orders: usize,
    offered: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_us: f64,
    /// Mean server time per intake stage (name, µs), from the market's metrics.
    stages_us: Vec<(String, f64)>,
}

/// The market's single-order stage timers: orders timed and µs summed per stage.
async fn order_stage_sums(http: &reqwest::Client, base: &str) -> (f64, Vec<(String, f64)>) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut orders = 0.0;
    let mut stages = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if name == "gridmesh_market_single_orders_timed_total" {
            orders = value;
        } else if let Some(stage) = name
            .strip_prefix("gridmesh_market_single_order_stage_microseconds_total{stage=\"")
            .and_then(|rest| rest.strip_suffix("\"}"))
        {
            stages.push((stage.to_owned(), value));
        }
    }
    (orders, stages)
}

async fn market_single(
    http: &reqwest::Client,
    market: &MarketChild,
    keys: &[SigningKeyPair],
    interval: Interval,
    rate: u32,
    seconds: f64,
    first_nonce: u64,
) -> SingleFigures {
    let n = ((f64::from(rate) * seconds) as usize).max(1);
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            serde_json::to_vec(&signed_order(keys, i, first_nonce + i as u64, interval)).unwrap()
        })
        .collect();
    let url = format!("{}/orders", market.base);
    let stages_before = order_stage_sums(http, &market.base).await;
    let cpu = cpu_seconds(market.child.id());
    let started = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut tasks = Vec::with_capacity(n);
    for (i, body) in bodies.into_iter().enumerate() {
        let at = started + period * i as u32;
        tokio::time::sleep_until(at).await;
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), at.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        let (status, latency) = t.await.unwrap();
        assert_eq!(status, 201, "every single order booked");
        latencies.push(latency);
    }
    let cpu = cpu_seconds(market.child.id()) - cpu;
    let stages_after = order_stage_sums(http, &market.base).await;
    let timed = (stages_after.0 - stages_before.0).max(1.0);
    let stages_us = stages_after
        .1
        .into_iter()
        .zip(stages_before.1)
        .map(|((stage, after), (_, before))| (stage, (after - before) / timed))
        .collect();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e3
    };
    SingleFigures {
        orders: n,
        offered: f64::from(rate),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: latencies.last().unwrap().as_secs_f64() * 1e3,
        cpu_us: cpu * 1e6 / n as f64,
        stages_us,
    }
}

async fn run(args: Args) {
    let short = args.short;
    let readings = args.readings.unwrap_or(if short { 2_000 } else { 200_000 });
    let orders = args.orders.unwrap_or(if short { 3_000 } else { 100_000 });
    let single_seconds = args
        .single_seconds
        .unwrap_or(if short { 0.25 } else { 10.0 });

    let cpu = cpu_seconds(std::process::id());
    let ceiling = tokio::task::spawn_blocking(move || ceiling(if short { 0.2 } else { 3.0 }))
        .await
        .unwrap();
    let ceiling_seconds = if short { 0.2 } else { 3.0 };
    // CPU actually spent per signature (the threads may not have had the cores to themselves).
    let ceiling_cpu_us =
        (cpu_seconds(std::process::id()) - cpu) * 1e6 / (ceiling * ceiling_seconds);
    let ingest = settlement_ingest(readings).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let market = start_market(&http).await;
    let (keys, interval) = traders(&http, &market.base, 200).await;
    let batch = market_batch(&http, &market, &keys, interval, orders).await;
    let single = market_single(
        &http,
        &market,
        &keys,
        interval,
        args.single_rate,
        single_seconds,
        orders as u64,
    )
    .await;
    // Accounted for on the market: every order booked is in its interval's book.
    let book: serde_json::Value = http
        .get(format!(
            "{}/orders?interval={}",
            market.base,
            interval.start().format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .bearer_auth("bench")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = book.as_array().map_or(0, Vec::len);
    assert_eq!(
        listed,
        batch.orders + single.orders,
        "every booked order listed in its interval"
    );
    drop(market);

    let ratio = |rate: f64| rate / ceiling;
    println!(
        "throughput on {} cores{}",
        cores(),
        if short {
            " (--short: correctness only, figures meaningless)"
        } else {
            ""
        }
    );
    println!(
        "  {:<52} {:>12} {:>9} {:>14}",
        "", "items/s", "÷ ceiling", "CPU µs/item"
    );
    println!(
        "  {:<52} {:>12.0} {:>9.2} {:>14.1}",
        format!("ed25519 verify_batch ceiling ({} threads)", cores()),
        ceiling,
        1.0,
        ceiling_cpu_us
    );
    println!(
        "  {:<52} {:>12.0} {:>9.2} {:>14.1}",
        format!(
            "settlement ingest → PostgreSQL COPY ({} readings)",
            ingest.readings
        ),
        ingest.rate,
        ratio(ingest.rate),
        ingest.cpu_us
    );
    println!(
        "  {:<52} {:>12.0} {:>9.2} {:>14.1}",
        format!("market POST /orders/batch ({} orders)", batch.orders),
        batch.rate,
        ratio(batch.rate),
        batch.cpu_us
    );
    println!(
        "  {:<52} {:>12.0} {:>9.2} {:>14.1}",
        format!("market POST /orders open loop ({} orders)", single.orders),
        single.offered,
        ratio(single.offered),
        single.cpu_us
    );
    println!(
        "  single orders at {:.0}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        single.offered, single.p50_ms, single.p99_ms, single.max_ms
    );
    println!(
        "  single orders, mean server time per stage: {}",
        single
            .stages_us
            .iter()
            .map(|(stage, us)| format!("{stage} {us:.0} µs"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  settlement CPU is its process's; its PostgreSQL backends used {:.1} µs more per reading; market CPU is the server process's",
        ingest.postgres_cpu_us
    );
    println!(
        "accounted for: {} readings accepted and stored once, {} batched + {} single orders booked and listed in their interval",
        ingest.readings, batch.orders, single.orders
    );
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(database) = args.serve_market.clone() {
        let listen = args.listen.clone().expect("--listen with --serve-market");
        rt.block_on(serve_market(database, listen));
        return;
    }
    rt.block_on(run(args));
}
