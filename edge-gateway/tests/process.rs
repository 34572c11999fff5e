//! The `edge-gateway` binary as a user meets it: killed with SIGKILL mid-publish and restarted,
//! and one clear message for each common mistake.

mod common;

use common::*;
use edge_gateway::config::{ClockConfig, DeviceConfig, GatewayConfig, Role};
use gridmesh_protocol::GatewayId;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_runtime::clock::Clock;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_edge-gateway");

fn write_config(path: &Path, config: &GatewayConfig) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

fn spawn_run(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn cli(args: &[&str], config: Option<&Path>) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.env("RUST_LOG", "off").output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_publish_and_restart_loses_and_duplicates_nothing() {
    let clock = Clock::scaled(epoch(), 300.0);
    let home = start_home(clock.clone(), epoch()).await;
    let gw = unique("kill");
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings(&gw, cancel.clone());
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("gw.key");
    SigningKeyPair::generate_file(&key_path).unwrap();
    let mut config = GatewayConfig {
        gateway_id: GatewayId::new(gw.clone()).unwrap(),
        interval_minutes: 5,
        key_path,
        outbox_path: dir.path().join("outbox.db"),
        poll_ms: 50,
        modbus_timeout_ms: 200,
        health_listen: "127.0.0.1:0".into(),
        clock: Some(ClockConfig {
            epoch: clock.now(),
            speed: 300.0,
            anchor: Some(chrono::Utc::now()),
        }),
        ..GatewayConfig::default()
    };
    config.mqtt.url = Some(BROKER.into());
    let port = home.addr.port();
    config.devices = vec![
        DeviceConfig::modbus_tcp("inverter", Role::Inverter, "127.0.0.1", port, 1),
        DeviceConfig::modbus_tcp("battery", Role::Battery, "127.0.0.1", port, 2),
        DeviceConfig::modbus_tcp("meter", Role::GridMeter, "127.0.0.1", port, 3),
    ];
    let config_path = dir.path().join("gateway.toml");
    let log = dir.path().join("gateway.log");
    write_config(&config_path, &config);
    let mut child = spawn_run(&config_path, &log);
    let mut items = collect(&mut rx, 2, Duration::from_secs(20)).await;
    // Kill the moment a reading arrives: the gateway is between PUBACK and deleting it.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(
        items.len() >= 2,
        "readings before the kill; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Down across a boundary; restart with the clock where the home's is.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    config.clock = Some(ClockConfig {
        epoch: clock.now(),
        speed: 300.0,
        anchor: Some(chrono::Utc::now()),
    });
    write_config(&config_path, &config);
    let mut child = spawn_run(&config_path, &log);
    items.extend(collect(&mut rx, 6, Duration::from_secs(30)).await);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let readings = dedup(&items);
    assert!(
        readings.len() >= 6,
        "only {} readings; log:\n{}",
        readings.len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_contiguous(&readings);
    // Energy across the outage is complete (the missed boundary was interpolated).
    let total: i64 = readings.iter().map(|r| r.deltas.pv.0).sum();
    let truth = home.truth(
        readings[0].interval.start(),
        readings.last().unwrap().interval.end(),
    )[2];
    assert!((total - truth).abs() <= 3, "pv {total} vs {truth}");
    cancel.cancel();
}

fn base_config(dir: &Path) -> (GatewayConfig, PathBuf) {
    let key = dir.join("gw.key");
    SigningKeyPair::generate_file(&key).unwrap();
    let config = GatewayConfig {
        key_path: key,
        outbox_path: dir.join("outbox.db"),
        modbus_timeout_ms: 300,
        ..GatewayConfig::default()
    };
    (config, dir.join("gateway.toml"))
}

fn error_lines(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("error:")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mistake_gives_one_clear_message() {
    let clock = Clock::scaled(epoch(), 1.0);
    let home = start_home(clock, epoch()).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = base_config(dir.path());

    // Bad config: wrong value, with the line and the fix.
    std::fs::write(&path, "gateway_id = \"gw-1\"\ninterval_minutes = 7\n").unwrap();
    let (code, text) = cli(&["check-config", "--offline"], Some(&path)).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("interval_minutes") && text.contains("5, 15, 30 or 60"),
        "{text}"
    );
    assert_eq!(error_lines(&text), 1, "{text}");
    std::fs::write(&path, "gateway_id = gw-1\n").unwrap();
    let (code, text) = cli(&["check-config", "--offline"], Some(&path)).await;
    assert_eq!(code, 1);
    assert!(text.contains("line 1"), "{text}");
    let mut mqtts = config.clone();
    mqtts.mqtt.url = Some("mqtts://broker:8883".into());
    write_config(&path, &mqtts);
    let (code, text) = cli(&["check-config", "--offline"], Some(&path)).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("broker: mqtts://broker:8883 over TLS, trusting the built-in public"),
        "{text}"
    );
    mqtts.tls.ca_file = Some(dir.path().join("missing-ca.pem"));
    write_config(&path, &mqtts);
    let (code, text) = cli(&["check-config", "--offline"], Some(&path)).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("cannot read the CA file") && text.contains("missing-ca.pem"),
        "{text}"
    );
    assert_eq!(error_lines(&text), 1, "{text}");

    // An environment override is validated like the file.
    write_config(&path, &config);
    let out = Command::new(BIN)
        .args(["check-config", "--offline", "--config"])
        .arg(&path)
        .env("GRIDMESH_GATEWAY_MQTT__URL", "ws://broker:8883")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("mqtt.url") && text.contains("ws://broker:8883"),
        "{text}"
    );

    // A world-readable key.
    write_config(&path, &config);
    let (code, text) = cli(&["check-config", "--offline"], Some(&path)).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("market key: NOT set") && text.contains("edge-gateway enroll"),
        "{text}"
    );
    let mut pinned = config.clone();
    pinned.market_public_key = Some(SigningKeyPair::from_seed([5; 32]).public_key());
    write_config(&path, &pinned);
    let (code, text) = cli(&["check-config", "--offline"], Some(&path)).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "market key: set ({})",
            SigningKeyPair::from_seed([5; 32]).public_key()
        )),
        "{text}"
    );
    write_config(&path, &config);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config.key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, text) = cli(&["check-config", "--offline"], Some(&path)).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("readable by other users") && text.contains("chmod 600"),
        "{text}"
    );
    assert_eq!(error_lines(&text), 1, "{text}");
    std::fs::set_permissions(&config.key_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    // An unreachable device and an unknown SunSpec model; a good device next to them is fine.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut devices = config.clone();
    devices.devices = vec![
        DeviceConfig::modbus_tcp("inverter", Role::Inverter, "127.0.0.1", home.addr.port(), 1),
        DeviceConfig::modbus_tcp("gone", Role::GridMeter, "127.0.0.1", closed_port, 1),
        DeviceConfig::modbus_tcp("odd", Role::Inverter, "127.0.0.1", home.addr.port(), 4),
    ];
    write_config(&path, &devices);
    let (code, text) = cli(&["check-config"], Some(&path)).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("device inverter: ok (SunSpec models [103])"),
        "{text}"
    );
    assert!(
        text.contains("device inverter: no SunSpec model 123: PV cannot be curtailed"),
        "{text}"
    );
    assert!(
        text.contains("device `gone` is unreachable") && text.contains("cannot connect"),
        "{text}"
    );
    assert!(
        text.contains("SunSpec models found [1, 160]") && text.contains("check the device's role"),
        "{text}"
    );
    assert_eq!(error_lines(&text), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_outbox_sequence_stops_run_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = base_config(dir.path());
    write_config(&path, &config);
    let outbox = edge_gateway::outbox::Outbox::open(&config.outbox_path, 1 << 20)
        .await
        .unwrap();
    outbox.set_meta_int("sequence", 41).await.unwrap();
    outbox.close().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", config.outbox_path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE meta SET value = '4l' WHERE key = 'sequence'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let (code, text) = cli(&["run"], Some(&path)).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("outbox.db") && text.contains("sequence number is \"4l\""),
        "{text}"
    );
    assert!(text.contains("refuses to start"), "{text}");
    assert_eq!(error_lines(&text), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_key_show_and_detect() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let key_str = key.to_str().unwrap();
    let (code, text) = cli(&["keygen", "--out", key_str], None).await;
    assert_eq!(code, 0, "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, shown) = cli(&["key", "show", "--key", key_str], None).await;
    assert_eq!(code, 0);
    assert!(text.contains(shown.trim()), "{text} / {shown}");
    let (code, text) = cli(&["keygen", "--out", key_str], None).await;
    assert_eq!(code, 1);
    assert!(text.contains("refusing to overwrite"), "{text}");

    let clock = Clock::scaled(epoch(), 1.0);
    let home = start_home(clock, epoch()).await;
    let port = home.addr.port().to_string();
    let (code, text) = cli(
        &[
            "detect",
            "127.0.0.1",
            "--ports",
            &port,
            "--timeout-ms",
            "300",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{text}");
    let config = GatewayConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let roles: Vec<(Role, Option<u8>)> = config.devices.iter().map(|d| (d.role, d.unit)).collect();
    assert_eq!(
        roles,
        vec![
            (Role::Inverter, Some(1)),
            (Role::Battery, Some(2)),
            (Role::GridMeter, Some(3))
        ]
    );
    assert!(
        text.contains("[1, 160]") && text.contains("skipped"),
        "{text}"
    );
}

#[tokio::test]
async fn install_script_lays_out_binary_unit_config_and_key() {
    let root = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/install.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(["--binary", BIN, "--no-systemctl", "--no-user", "--root"])
        .arg(root.path())
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let r = root.path();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("usr/local/bin/edge-gateway"), 0o755);
    assert_eq!(mode("var/lib/gridmesh-gateway"), 0o700);
    assert_eq!(mode("var/lib/gridmesh-gateway/gateway.key"), 0o600);
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/edge-gateway.service")).unwrap();
    assert!(unit.contains("User=gridmesh") && unit.contains("NoNewPrivileges=true"));
    // The installed example config is valid as shipped.
    GatewayConfig::from_toml(
        &std::fs::read_to_string(r.join("etc/gridmesh/gateway.toml")).unwrap(),
    )
    .unwrap();
    let key = SigningKeyPair::load(&r.join("var/lib/gridmesh-gateway/gateway.key")).unwrap();
    assert!(text.contains(&key.public_key().to_string()), "{text}");
}
