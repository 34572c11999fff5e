//! Resource benchmark (not a test): the release `edge-gateway` binary polling 5 meter-sim
//! devices at 1 Hz in real time, with the MQTT uplink to the local broker. Prints the
//! gateway process's resident memory and CPU share, measured from /proc.
//!
//! Run: `cargo bench -p edge-gateway --bench gateway_bench` (optionally `-- SECONDS`, default 60).

use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use gridmesh_protocol::GatewayId;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::{DeviceKind, Scenario};
use std::time::{Duration, Instant};

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the ")".
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    let shutdown = Shutdown::new();
    let mut scenario = Scenario::small(2, 9);
    scenario.speed = 1.0;
    let clock = scenario.clock();
    let sim = meter_sim::start(scenario, clock, &shutdown)
        .await
        .expect("meter-sim starts");
    let mut devices = Vec::new();
    for home in sim.manifest().homes {
        for d in &home.devices {
            let role = match d.kind {
                DeviceKind::Inverter => Role::Inverter,
                DeviceKind::Battery => Role::Battery,
                DeviceKind::Meter => Role::GridMeter,
            };
            devices.push(DeviceConfig::modbus_tcp(
                &format!("{}-{:?}", home.id, d.kind),
                role,
                &d.host,
                d.port,
                d.unit,
            ));
        }
    }
    devices.truncate(5);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gw.key");
    SigningKeyPair::generate_file(&key).unwrap();
    let mut config = GatewayConfig {
        gateway_id: GatewayId::new(format!("bench-{}", std::process::id())).unwrap(),
        key_path: key,
        outbox_path: dir.path().join("outbox.db"),
        interval_minutes: 5,
        poll_ms: 1000,
        health_listen: {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().to_string()
        },
        devices,
        ..GatewayConfig::default()
    };
    config.mqtt.url = Some("mqtt://127.0.0.1:1883".into());
    // The homeowner's local page, open in a browser during the whole measurement (below).
    const PAGE_PASSWORD: &str = "bench page password";
    config.local_page.listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    config.local_page.password_hash =
        Some(edge_gateway::local_page::hash_password(PAGE_PASSWORD).unwrap());
    // The gateway ignores the meter-sim clock here: both run in real time.
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_edge-gateway");
    let mut child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start the gateway");
    let pid = child.id();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    // Warm up (discovery, connections), then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Log in to the local page (an argon2id check) and keep it "open" as the browser does: the
    // page, then /api/live every 3 s, /api/today every 9 s and /api/household every 15 s.
    let page = format!("http://{}", config.local_page.listen);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{page}/login"))
        .form(&[("password", PAGE_PASSWORD)])
        .send()
        .await
        .expect("the local page answers");
    assert_eq!(
        login.status(),
        reqwest::StatusCode::SEE_OTHER,
        "login failed"
    );
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let open = |path: &str| {
        http.get(format!("{page}{path}"))
            .header("cookie", &cookie)
            .send()
    };
    for path in ["/", "/assets/page.js", "/assets/page.css"] {
        assert!(open(path).await.unwrap().status().is_success(), "{path}");
    }
    let (t0, c0) = (Instant::now(), proc_cpu_ticks(pid));
    let mut peak_rss = 0;
    let mut page_requests = 0u64;
    let mut tick = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if tick % 3 == 0 {
            for (every, path) in [(1, "/api/live"), (3, "/api/today"), (5, "/api/household")] {
                if (tick / 3) % every == 0 {
                    let r = open(path).await.expect("the local page answers");
                    assert!(r.status().is_success(), "{path}: {}", r.status());
                    let _ = r.bytes().await;
                    page_requests += 1;
                }
            }
        }
        tick += 1;
        peak_rss = peak_rss.max(proc_kib(pid, "VmRSS:"));
    }
    let cpu_s = (proc_cpu_ticks(pid) - c0) as f64 / ticks_per_s;
    let wall = t0.elapsed().as_secs_f64();
    let rss = proc_kib(pid, "VmRSS:");
    let hwm = proc_kib(pid, "VmHWM:");
    // Proof that it really polled: the gateway's own counters.
    let metrics = reqwest::get(format!("http://{}/metrics", config.health_listen))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let sum = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let polls = sum("gridmesh_gateway_device_polls_total");
    let errors = sum("gridmesh_gateway_device_poll_errors_total");
    let _ = child.kill();
    let _ = child.wait();
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    println!(
        "edge-gateway polling 5 SunSpec devices at 1 Hz for {wall:.0} s (after 5 s warm-up), local page open (logged in, {page_requests} page requests as a browser makes them):"
    );
    println!(
        "  RSS now {:.1} MiB, peak sampled {:.1} MiB, high-water mark {:.1} MiB",
        rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  CPU {:.2} s = {:.2}% of one core",
        cpu_s,
        100.0 * cpu_s / wall
    );
    println!("  device polls {polls} (errors {errors}) since start");
    println!("  binary {} ({:.1} MiB)", bin, size as f64 / 1_048_576.0);
    println!(
        "  RSS budget with the page open: high-water mark {:.1} MB (login included) of 20 MB: {}",
        (hwm * 1024) as f64 / 1e6,
        if hwm * 1024 < 20_000_000 {
            "ok"
        } else {
            "OVER"
        }
    );
    shutdown.stop().await;
}
