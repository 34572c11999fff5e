//! `market-bench`: clearing speed against a plain merit-order sort and the reference LP, and
//! REST order intake under load from this separate process.
//!
//! ```text
//! market-bench clearing [--reference-limit 100000]
//! market-bench envelopes [--points 10000] [--orders 100000]
//! market-bench intake [--orders 20000] [--concurrency 64] [--database sqlite://…]
//! ```
//!
//! Run in release (it needs the reference LP):
//! `cargo run --release -p market-engine --features reference-lp --bin market-bench -- clearing`.

use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::{
    GatewayId, Interval, IntervalLength, NodeId, ParticipantId, PricePerMwh, Side, SignedEnvelope,
    Wh, ZoneId,
};
use market_engine::book::BookOrder;
use market_engine::clearing::{check_feasible, clear};
use market_engine::network::Topology;
use market_engine::prices::PricingRule;
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift64*), so every run clears the same books.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

/// A neighbourhood: root → `feeders` feeders → 20 homes each; orders at random homes. Each
/// feeder's limits are a few percent of its volume, and feeders lean alternately towards
/// buying and selling, so import and export limits bind.
fn book(n: usize, feeders: usize, seed: u64) -> (Topology, Vec<BookOrder>) {
    let mut rng = Rng(seed | 1);
    let homes = 20;
    let per_feeder = (n / feeders).max(1) as i64;
    let limit = per_feeder * 2_500 / 25; // about 4% of a feeder's volume
    let id = |s: String| NodeId::new(s).unwrap();
    let mut branches = Vec::new();
    for f in 0..feeders {
        branches.push(Branch {
            node: id(format!("f{f}")),
            parent: id("sub".into()),
            import_limit_wh: Some(Wh(limit)),
            export_limit_wh: Some(Wh(limit)),
            fee_per_mwh: Some(PricePerMwh(if f % 3 == 0 { 500 } else { 0 })),
        });
        for h in 0..homes {
            branches.push(Branch {
                node: id(format!("f{f}h{h}")),
                parent: id(format!("f{f}")),
                import_limit_wh: None,
                export_limit_wh: None,
                fee_per_mwh: None,
            });
        }
    }
    let network = Network {
        root: id("sub".into()),
        branches,
        utility: UtilityTariff {
            envelope_excess_price: Default::default(),
            retail_price: Some(PricePerMwh(30_000)),
            feed_in_price: Some(PricePerMwh(8_000)),
            ..Default::default()
        },
    };
    let topology = Topology::new(&network).unwrap();
    let orders = (0..n)
        .map(|i| {
            let f = rng.range(0, feeders as i64 - 1);
            let h = rng.range(0, homes - 1);
            let node = topology.index_of(&id(format!("f{f}h{h}"))).unwrap();
            // Even feeders lean to selling, odd ones to buying.
            let buy_share = if f % 2 == 0 { 30 } else { 70 };
            let buy = rng.range(0, 99) < buy_share;
            BookOrder {
                id: format!("o{i}"),
                node,
                side: if buy { Side::Buy } else { Side::Sell },
                quantity: rng.range(100, 5_000),
                limit_price: if buy {
                    rng.range(5_000, 40_000)
                } else {
                    rng.range(0, 35_000)
                },
            }
        })
        .collect();
    (topology, orders)
}

/// The baseline: a plain merit-order sort of the same book (bids descending, asks ascending).
fn merit_order_sort(orders: &[BookOrder]) -> usize {
    let mut bids: Vec<(i64, i64)> = Vec::with_capacity(orders.len());
    let mut asks: Vec<(i64, i64)> = Vec::with_capacity(orders.len());
    for o in orders {
        match o.side {
            Side::Buy => bids.push((-o.limit_price, o.quantity)),
            Side::Sell => asks.push((o.limit_price, o.quantity)),
        }
    }
    bids.sort_unstable_by_key(|b| b.0);
    asks.sort_unstable_by_key(|a| a.0);
    std::hint::black_box(bids.len() + asks.len())
}

/// The median of `reps` timings of `f`.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Like [`time`], with a fresh input for each run made outside the timed part (and the output
/// freed outside it).
fn time_with_input<I, T>(
    reps: usize,
    mut input: impl FnMut() -> I,
    mut f: impl FnMut(I) -> T,
) -> Duration {
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let x = input();
            let t = Instant::now();
            let out = std::hint::black_box(f(x));
            let elapsed = t.elapsed();
            // Freeing the output is not part of producing it.
            drop(out);
            elapsed
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn clearing(reference_limit: usize) {
    println!(
        "| orders | feeders | binding branches | sort (ms) | fast solve (ms) | solve/sort | clear incl. trades (ms) | clear/sort | reference LP (ms) | LP/solve | welfare rel. diff |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for n in [1_000usize, 10_000, 100_000] {
        for feeders in [1usize, 10, 50] {
            let (topology, orders) = book(n, feeders, 42 + n as u64 + feeders as u64);
            let reps = if n >= 100_000 { 21 } else { 31 };
            let sort = time(reps, || merit_order_sort(&orders));
            let solve = time(reps, || market_engine::fast::solve(&topology, &orders));
            let full = time(reps, || clear(&topology, &orders, PricingRule::PayAsClear));
            let outcome = clear(&topology, &orders, PricingRule::PayAsClear);
            check_feasible(&topology, &orders, &outcome.solution).expect("feasible");
            let binding = topology
                .nodes()
                .iter()
                .zip(&outcome.solution.flows)
                .filter(|(node, f)| {
                    node.import_limit == Some(**f) || node.export_limit == Some(-**f)
                })
                .filter(|(_, f)| **f != 0)
                .count();
            let (lp_text, lp_time, diff) = if n <= reference_limit {
                let t = Instant::now();
                match market_engine::reference::solve(&topology, &orders) {
                    Ok(r) => {
                        let fast = outcome.welfare_micro as f64;
                        let rel = (fast - r.welfare_micro).abs() / fast.abs().max(1.0);
                        (
                            format!("{:.1}", ms(t.elapsed())),
                            t.elapsed(),
                            format!("{rel:.1e}"),
                        )
                    }
                    Err(e) => (format!("failed: {e}"), Duration::ZERO, "-".into()),
                }
            } else {
                ("skipped".into(), Duration::ZERO, "-".into())
            };
            let lp_ratio = if lp_time.is_zero() {
                "-".into()
            } else {
                format!("{:.0}×", lp_time.as_secs_f64() / solve.as_secs_f64())
            };
            println!(
                "| {n} | {feeders} | {binding} | {:.3} | {:.3} | {:.2} | {:.3} | {:.2} | {} | {lp_ratio} | {diff} |",
                ms(sort),
                ms(solve),
                solve.as_secs_f64() / sort.as_secs_f64(),
                ms(full),
                full.as_secs_f64() / sort.as_secs_f64(),
                lp_text,
            );
        }
    }
}

/// A neighbourhood of `points` connection points: root → 50 feeders (binding limits) → 20
/// home nodes each, `points / 1000` households per home node, `orders` orders placed by random
/// households at their own node.
#[allow(clippy::type_complexity)]
fn envelope_book(
    points: usize,
    orders: usize,
    seed: u64,
) -> (
    Topology,
    Vec<BookOrder>,
    Vec<ParticipantId>,
    Vec<GatewayEnrollment>,
) {
    let feeders = 50;
    // The same feeder limits as the clearing benchmark's book of this size (about 4% of a
    // feeder's order volume), so export limits bind.
    let (topology, _) = book(orders, feeders, seed);
    let mut rng = Rng(seed | 1);
    let home_nodes: Vec<usize> = topology
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| n.children.is_empty() && n.parent.is_some_and(|p| p != 0))
        .map(|(i, _)| i)
        .collect();
    let gateways: Vec<GatewayEnrollment> = (0..points)
        .map(|k| {
            let node = home_nodes[k % home_nodes.len()];
            GatewayEnrollment {
                gateway: GatewayId::new(format!("gw-p{k}")).unwrap(),
                participant: ParticipantId::new(format!("p{k}")).unwrap(),
                node: topology.nodes()[node].id.clone(),
                public_key: gridmesh_protocol::signing::PublicKey([0; 32]),
                inverter_w: rng.range(0, 10_000) as u32,
                battery_w: rng.range(0, 5_000) as u32,
                latitude_microdeg: 0,
                longitude_microdeg: 0,
            }
        })
        .collect();
    let mut owners = Vec::with_capacity(orders);
    let mut listed = gateways.clone();
    // The store lists gateways by id.
    listed.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    let book = (0..orders)
        .map(|i| {
            let k = rng.range(0, points as i64 - 1) as usize;
            let node = k % home_nodes.len();
            let buy = rng.range(0, 99) < if node % 2 == 0 { 30 } else { 70 };
            owners.push(gateways[k].participant.clone());
            BookOrder {
                id: format!("o{i}"),
                node: home_nodes[node],
                side: if buy { Side::Buy } else { Side::Sell },
                quantity: rng.range(100, 5_000),
                limit_price: if buy {
                    rng.range(5_000, 40_000)
                } else {
                    rng.range(0, 35_000)
                },
            }
        })
        .collect();
    (topology, book, owners, listed)
}

/// Envelopes for every connection point after clearing, timed against the merit-order sort
/// and the clearing of the same book.
fn envelopes(points: usize, orders: usize) {
    use market_engine::book::Owners;
    use market_engine::envelopes::{
        ConnectionPoint, PointIndex, allocate, envelopes_for, positions, rating_wh,
    };
    let (topology, book, owner_ids, gateways) = envelope_book(points, orders, 4242);
    let reps = 21;
    let sort = time(reps, || merit_order_sort(&book));
    let full = time(reps, || clear(&topology, &book, PricingRule::PayAsClear));
    let outcome = clear(&topology, &book, PricingRule::PayAsClear);
    // The service interns owners while it reads the book from the store (and uses them for the
    // result's trades too); timed here apart from the envelopes.
    let interning = time_with_input(
        reps,
        || owner_ids.clone(),
        |ids| ids.into_iter().collect::<Owners>(),
    );
    let owners: Owners = owner_ids.iter().cloned().collect();
    let envelopes = |gateways: Vec<GatewayEnrollment>| {
        envelopes_for(
            &topology,
            IntervalLength::Min15,
            11_000,
            &book,
            &outcome.solution.cleared,
            &owners,
            gateways,
        )
    };
    let env = time_with_input(reps, || gateways.clone(), envelopes);
    let result = envelopes(gateways.clone());
    // Where the time goes: owners → points, positions, allocation.
    let mut sorted: Vec<&GatewayEnrollment> = gateways.iter().collect();
    sorted.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    let connection_points: Vec<ConnectionPoint> = sorted
        .iter()
        .map(|g| ConnectionPoint {
            node: topology.index_of(&g.node).unwrap(),
            export_rating: rating_wh(
                i64::from(g.inverter_w) + i64::from(g.battery_w),
                IntervalLength::Min15,
            ),
            import_rating: 2_750,
        })
        .collect();
    let owner_of_point: Vec<Option<u32>> = sorted
        .iter()
        .map(|g| owners.index_of(&g.participant))
        .collect();
    let index = || {
        PointIndex::new(
            owners.participants().len(),
            &connection_points,
            &owner_of_point,
        )
    };
    let indexing = time(reps, index);
    let index = index();
    let locate = |i: usize| index.point_of(book[i].node, owners.index_of_order(i));
    let pos = time(reps, || {
        positions(sorted.len(), &book, &outcome.solution.cleared, locate)
    });
    let positions = positions(sorted.len(), &book, &outcome.solution.cleared, locate);
    let alloc = time(reps, || allocate(&topology, &connection_points, &positions));
    eprintln!(
        "breakdown: interning the book's owners (when the book is read, not in the envelopes) {:.3} ms, index of connection points {:.3} ms, positions (owner lookups) {:.3} ms, allocation {:.3} ms",
        ms(interning),
        ms(indexing),
        ms(pos),
        ms(alloc)
    );
    let below_rating = result
        .iter()
        .zip({
            let mut g: Vec<&GatewayEnrollment> = gateways.iter().collect();
            g.sort_by(|a, b| a.gateway.cmp(&b.gateway));
            g
        })
        .filter(|(e, g)| {
            e.export_limit_wh.0
                < market_engine::envelopes::rating_wh(
                    i64::from(g.inverter_w) + i64::from(g.battery_w),
                    IntervalLength::Min15,
                )
        })
        .count();
    println!(
        "| connection points | orders | sort (ms) | clear (ms) | envelopes (ms) | envelopes/sort | envelopes/clear | export envelopes below rating |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {points} | {orders} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {below_rating} |",
        ms(sort),
        ms(full),
        ms(env),
        env.as_secs_f64() / sort.as_secs_f64(),
        env.as_secs_f64() / full.as_secs_f64(),
    );
}

async fn intake(orders: usize, concurrency: usize, database: Option<String>) {
    let dir = std::env::temp_dir().join(format!("market-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let database =
        database.unwrap_or_else(|| format!("sqlite://{}", dir.join("market.db").display()));
    let exe = std::env::current_exe()
        .unwrap()
        .with_file_name("market-engine");
    let mut server = std::process::Command::new(&exe)
        .arg("serve")
        .env("GRIDMESH_MARKET_LISTEN", format!("\"127.0.0.1:{port}\""))
        .env("GRIDMESH_MARKET_DATABASE_URL", format!("\"{database}\""))
        .env("GRIDMESH_MARKET_OPERATOR_TOKEN", "\"bench\"")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the market did not come up");
    let status: serde_json::Value = http
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let interval: Interval =
        serde_json::from_value::<Interval>(status["next_open_interval"].clone())
            .unwrap()
            .next();
    let participants = 200;
    let keys: Vec<SigningKeyPair> = (0..participants)
        .map(|i| SigningKeyPair::from_seed([i as u8; 32]))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let p = Participant {
            id: ParticipantId::new(format!("p{i}")).unwrap(),
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
    let zone = ZoneId::new(status["zone"].as_str().expect("status names the zone")).expect("valid");
    // Sign everything first: the load generator measures the market, not its own signing.
    let mut rng = Rng(7);
    let bodies: Vec<Vec<u8>> = (0..orders)
        .map(|i| {
            let who = i % participants;
            let order = Order {
                zone: Some(zone),
                participant: ParticipantId::new(format!("p{who}")).unwrap(),
                node: NodeId::new("sub").unwrap(),
                interval,
                side: if i % 2 == 0 { Side::Buy } else { Side::Sell },
                quantity: Wh(rng.range(100, 5_000)),
                limit_price: PricePerMwh(rng.range(0, 40_000)),
                nonce: i as u64,
            };
            serde_json::to_vec(&SignedEnvelope::sign(&order, &keys[who])).unwrap()
        })
        .collect();
    let bodies = std::sync::Arc::new(bodies);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, bodies, next, url) = (
            http.clone(),
            bodies.clone(),
            next.clone(),
            format!("{base}/orders"),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= bodies.len() {
                    return (latencies, failures);
                }
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bodies[i].clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => latencies.push(t.elapsed()),
                    _ => failures += 1,
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "REST intake ({database}): {orders} signed orders, {concurrency} connections, {failures} failed: {:.0} orders/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap()),
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if let Some(batches) = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gridmesh_market_order_write_batches_total "))
        .and_then(|v| v.parse::<f64>().ok())
    {
        println!(
            "write batches: {batches} ({:.1} orders per batch)",
            orders as f64 / batches.max(1.0)
        );
    }
    // The server's own CPU time (Linux): how much of the machine the intake needs per order.
    let cpu = std::fs::read_to_string(format!("/proc/{}/stat", server.id()))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        });
    if let Some(cpu) = cpu {
        println!(
            "server CPU: {:.2} s in total ({:.0} µs per order, including start-up and registration)",
            cpu,
            cpu * 1e6 / orders as f64
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where an order's server-side CPU goes: JSON parse, strict verification, batched insert.
async fn micro() {
    let key = SigningKeyPair::from_seed([1; 32]);
    let interval = Interval::parse("2030-01-01T00:00:00Z", 15).unwrap();
    let n = 5_000;
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let order = Order {
                zone: Some(ZoneId::new("bench").expect("valid")),
                participant: ParticipantId::new("p").unwrap(),
                node: NodeId::new("sub").unwrap(),
                interval,
                side: Side::Buy,
                quantity: Wh(1_000),
                limit_price: PricePerMwh(20_000),
                nonce: i as u64,
            };
            serde_json::to_vec(&SignedEnvelope::sign(&order, &key)).unwrap()
        })
        .collect();
    let t = Instant::now();
    let envelopes: Vec<SignedEnvelope> = bodies
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let parse = t.elapsed();
    let t = Instant::now();
    let registered = key.public_key();
    for e in &envelopes {
        let _: Order = e.open_by(&registered).unwrap();
    }
    let verify = t.elapsed();
    let t = Instant::now();
    let refs: Vec<&SignedEnvelope> = envelopes.iter().collect();
    for chunk in refs.chunks(64) {
        gridmesh_protocol::signing::verify_batch(chunk).unwrap();
    }
    let batch = t.elapsed();
    let dir = std::env::temp_dir().join(format!("market-micro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = market_engine::store::Store::open(
        &format!("sqlite://{}", dir.join("m.db").display()),
        gridmesh_protocol::IntervalLength::Min15,
    )
    .await
    .unwrap();
    let stored: Vec<market_engine::store::StoredOrder> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| market_engine::store::StoredOrder {
            order_id: format!("p:{i}"),
            participant: ParticipantId::new("p").unwrap(),
            nonce: i as u64,
            interval,
            node: NodeId::new("sub").unwrap(),
            side: Side::Buy,
            quantity_wh: 1_000,
            limit_price: 20_000,
            cancelled: false,
            received_at: "2030-01-01T00:00:00Z".into(),
            envelope: e.clone(),
        })
        .collect();
    let t = Instant::now();
    for chunk in stored.chunks(64) {
        store.insert_orders(chunk).await.unwrap();
    }
    let insert = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "per order: JSON parse {:.1} µs, strict verify {:.1} µs (batch of 64: {:.1} µs), SQLite insert in batches of 64 {:.1} µs (wall, incl. fsync)",
        per(parse),
        per(verify),
        per(batch),
        per(insert)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("clearing") => clearing(
            flag("--reference-limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000),
        ),
        Some("envelopes") => envelopes(
            flag("--points")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000),
            flag("--orders")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000),
        ),
        Some("micro") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(micro());
        }
        Some("intake") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(intake(
                flag("--orders")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(20_000),
                flag("--concurrency")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(64),
                flag("--database"),
            ));
        }
        _ => {
            eprintln!(
                "usage: market-bench clearing [--reference-limit N]\n       market-bench envelopes [--points N] [--orders N]\n       market-bench intake [--orders N] [--concurrency C] [--database URL]"
            );
            std::process::exit(2);
        }
    }
}
