//! Benchmark: signed readings verified and stored per second (batched), interval settlement,
//! and the cost of auditing a simulated month of a neighbourhood.
//!
//! `cargo run --release -p settlement --bin bench -- --homes 100 --days 30 --backend both`

use chrono::{DateTime, Utc};
use clap::Parser;
use gridmesh_protocol::grid::{Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::{Counterparty, IntervalResult, Trade};
use gridmesh_protocol::reading::{Reading, ReadingFlags, Registers};
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::{
    DeviceId, GatewayId, Interval, Money, NodeId, ParticipantId, PricePerMwh, Wh,
};
use gridmesh_runtime::clock::Clock;
use settlement::service::{CoreSettings, Service, Submission};
use settlement::verify::Limits;
use std::sync::Arc;
use std::time::Instant;

/// Benchmark options.
#[derive(Parser)]
struct Args {
    /// Homes (each with a gateway).
    #[arg(long, default_value_t = 100)]
    homes: usize,
    /// Simulated days of 15-minute intervals.
    #[arg(long, default_value_t = 30)]
    days: usize,
    /// `sqlite`, `postgres` or `both`.
    #[arg(long, default_value = "both")]
    backend: String,
    /// Readings per ingest batch.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Concurrent ingest workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Measure ingest only (skip settlement and the audit).
    #[arg(long)]
    ingest_only: bool,
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct World {
    gateways: Vec<GatewayEnrollment>,
    participants: Vec<Participant>,
    readings: Vec<Vec<u8>>,
    results: Vec<IntervalResult>,
}

fn world(homes: usize, days: usize) -> World {
    let keys: Vec<SigningKeyPair> = (0..homes)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            SigningKeyPair::from_seed(seed)
        })
        .collect();
    let name = |i: usize| format!("h{i:03}");
    let gateways: Vec<GatewayEnrollment> = (0..homes)
        .map(|i| GatewayEnrollment {
            gateway: GatewayId::new(format!("gw-{}", name(i))).unwrap(),
            participant: ParticipantId::new(name(i)).unwrap(),
            node: NodeId::new("f1").unwrap(),
            public_key: keys[i].public_key(),
            inverter_w: 8_000,
            battery_w: 4_000,
            latitude_microdeg: 52_520_000,
            longitude_microdeg: 13_400_000,
        })
        .collect();
    let participants = (0..homes)
        .map(|i| Participant {
            id: ParticipantId::new(name(i)).unwrap(),
            public_key: keys[i].public_key(),
            node: NodeId::new("f1").unwrap(),
            kind: ParticipantKind::Household,
        })
        .collect();
    let intervals = days * 96;
    let mut readings = Vec::with_capacity(homes * intervals);
    let mut results = Vec::with_capacity(intervals);
    for n in 0..intervals {
        let interval = Interval::containing(
            start() + chrono::Duration::minutes(15 * n as i64),
            Default::default(),
        );
        let mut trades = Vec::new();
        for i in 0..homes {
            let seller = i % 2 == 0;
            let r = bench_reading(&gateways[i].gateway, n, interval, seller);
            readings.push(serde_json::to_vec(&SignedEnvelope::sign(&r, &keys[i])).unwrap());
            if seller && i + 1 < homes {
                let party = |j: usize| Counterparty::Order {
                    order_id: format!("{n}-{j}"),
                    participant: ParticipantId::new(name(j)).unwrap(),
                    node: NodeId::new("f1").unwrap(),
                };
                trades.push(Trade {
                    seller: party(i),
                    buyer: party(i + 1),
                    energy: Wh(500),
                    price: PricePerMwh(150_000),
                });
            }
        }
        results.push(bench_result(interval, trades));
    }
    World {
        gateways,
        participants,
        readings,
        results,
    }
}

/// Home `gateway`'s signed reading number `n` (1-based sequence): sellers export 500 Wh from
/// their battery, buyers import 500 Wh.
fn bench_reading(gateway: &GatewayId, n: usize, interval: Interval, seller: bool) -> Reading {
    let (import, export) = if seller { (0, 500) } else { (500, 0) };
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
            grid_import: Wh(if seller { 0 } else { total }),
            grid_export: Wh(if seller { total } else { 0 }),
            pv: Wh(0),
            battery_charge: Wh(0),
            battery_discharge: Wh(if seller { total } else { 0 }),
        },
        deltas: Registers {
            grid_import: Wh(import),
            grid_export: Wh(export),
            pv: Wh(0),
            battery_charge: Wh(0),
            battery_discharge: Wh(export),
        },
        soc_permille: None,
        flags: ReadingFlags::empty(),
    }
}
/// The bench's result for one interval: its trades on a flat network with retail and feed-in
/// tariffs.
fn bench_result(interval: Interval, trades: Vec<Trade>) -> IntervalResult {
    IntervalResult {
        envelopes: Vec::new(),
        interval,
        zone: "bench".into(),
        cleared_at: interval.start(),
        prices: Default::default(),
        orders: vec![],
        trades,
        utility_import: Wh(0),
        utility_export: Wh(0),
        flows: vec![],
        welfare: Money(0),
        network: Network {
            root: NodeId::new("root").unwrap(),
            branches: vec![],
            utility: UtilityTariff {
                envelope_excess_price: Default::default(),
                retail_price: Some(PricePerMwh(300_000)),
                feed_in_price: Some(PricePerMwh(80_000)),
                import_limit_wh: None,
                export_limit_wh: None,
            },
        },
    }
}

/// Readings arrive interval by interval (as gateways send them), in batches, from
/// `args.workers` concurrent senders.
async fn ingest(backend: &str, service: &Arc<Service>, w: &World, args: &Args) {
    let t = Instant::now();
    let batches: Vec<Vec<Submission>> = w
        .readings
        .chunks(args.batch)
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
    let mut tasks = Vec::new();
    for _ in 0..args.workers {
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
                    .filter(|o| o.status == settlement::service::ReadingStatus::Accepted)
                    .count();
            }
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{backend}: ingest {accepted} of {} signed readings (batch {}, {} workers) in {secs:.2} s = {:.0} readings/s",
        w.readings.len(),
        args.batch,
        args.workers,
        accepted as f64 / secs
    );
}

async fn run(backend: &str, url: String, w: &World, args: &Args) {
    let db = settlement::store::open(&url).await.expect("database");
    let end = start() + chrono::Duration::days(args.days as i64 + 1);
    let settings = CoreSettings {
        limits: Limits {
            horizon: chrono::Duration::days(400),
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
    .unwrap();
    // BENCH_NO_COPY=1 measures the portable multi-row INSERT path on PostgreSQL too.
    if std::env::var_os("BENCH_NO_COPY").is_none() {
        service.use_postgres_copy(&url).await.unwrap();
    }
    let service = Arc::new(service);
    service.set_gateways(&w.gateways).await.unwrap();
    service.set_participants(&w.participants).await.unwrap();

    ingest(backend, &service, w, args).await;

    if args.ingest_only {
        return;
    }
    let t = Instant::now();
    for r in &w.results {
        service.add_result(r).await.unwrap();
    }
    let settled = service.settle_due().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let minted = service.metrics.tokens_minted_wh.get();
    println!(
        "{backend}: settled {} intervals ({} mints, {minted} tokens) in {secs:.2} s = {:.1} ms/interval",
        settled.len(),
        w.results.iter().map(|r| r.trades.len()).sum::<usize>(),
        secs * 1000.0 / settled.len().max(1) as f64
    );

    let t = Instant::now();
    let report = settlement::audit::verify(service.db(), Some(service.authority()))
        .await
        .expect("consistent");
    println!(
        "{backend}: `settlement verify` of {} blocks, {} entries, {} readings, {} lots in {:.2} s",
        report.blocks,
        report.entries,
        report.readings,
        report.lots,
        t.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let t = Instant::now();
    let w = world(args.homes, args.days);
    println!(
        "generated {} signed readings and {} results ({} homes, {} days) in {:.1} s",
        w.readings.len(),
        w.results.len(),
        args.homes,
        args.days,
        t.elapsed().as_secs_f64()
    );
    if args.backend == "sqlite" || args.backend == "both" {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        run("sqlite", url, &w, &args).await;
    }
    if args.backend == "postgres" || args.backend == "both" {
        let url = gridmesh_runtime::db::scratch::fresh_postgres("bench")
            .await
            .expect("PostgreSQL");
        run("postgres", url, &w, &args).await;
    }
}
