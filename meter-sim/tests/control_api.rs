//! The control/status HTTP API, through the router (no socket) and the binary's CLI.

mod common;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use common::*;
use meter_sim::{DeviceKind, Fault, Manifest};
use tower::ServiceExt;

async fn call(
    sim: &meter_sim::Simulator,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default())
        .unwrap();
    let response = sim.control_router().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_manifest_truth_faults_and_metrics() {
    let (sim, shutdown) = start(2, 9, 3600.0).await;
    assert_eq!(
        call(&sim, "GET", "/healthz", None).await,
        (StatusCode::OK, "ok".into())
    );

    let (code, body) = call(&sim, "GET", "/status", None).await;
    assert_eq!(code, StatusCode::OK);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["homes"].as_array().unwrap().len(), 2);
    assert!(
        status["simulated_time"]
            .as_str()
            .unwrap()
            .starts_with("2026-06-21T")
    );
    assert!(status["homes"][0]["pv_w"].as_i64().unwrap() > 0);
    assert_eq!(
        status["homes"][0]["pv_available_w"], status["homes"][0]["pv_w"],
        "no power limit: all the available PV is produced"
    );
    assert!(status["homes"][0]["pv_limit_pct"].is_null());

    let (code, body) = call(&sim, "GET", "/manifest", None).await;
    assert_eq!(code, StatusCode::OK);
    let manifest: Manifest = serde_json::from_str(&body).unwrap();
    assert_eq!(manifest, sim.manifest());
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    let device = &raw["homes"][0]["devices"][0];
    assert_eq!(device["kind"], "inverter");
    assert_eq!(device["host"], "127.0.0.1");
    assert_eq!(device["unit"], 1);
    assert_eq!(device["models"], serde_json::json!([1, 103, 123]));

    // Ground truth: 404 with a reason until the interval has passed, then the exact values.
    let (code, body) = call(
        &sim,
        "GET",
        "/truth/h001?start=2026-06-21T12:00:00Z&minutes=15",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("not_available"));
    let clock = sim.clock().clone();
    clock
        .sleep_until(start_time() + chrono::Duration::minutes(20))
        .await;
    sim.sync();
    let (code, body) = call(
        &sim,
        "GET",
        "/truth/h001?start=2026-06-21T10:00:00Z&minutes=15",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let truth: meter_sim::TrueEnergy = serde_json::from_str(&body).unwrap();
    let interval = gridmesh_protocol::Interval::parse("2026-06-21T10:00:00Z", 15).unwrap();
    assert_eq!(Some(truth), sim.ground_truth("h001", &interval));
    assert!(truth.pv.0 > 0);
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(raw["pv_curtailed"], 0);
    assert_eq!(raw["pv_available"], raw["pv"]);
    assert!(raw["battery_headroom"].as_i64().unwrap() > 0, "{body}");
    let (code, body) = call(
        &sim,
        "GET",
        "/truth/h001?start=2026-06-21T10:07:00Z&minutes=15",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("bad_interval") && body.contains("aligned"));
    let (code, body) = call(
        &sim,
        "GET",
        "/truth/nobody?start=2026-06-21T10:00:00Z",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("unknown_home"));

    // Faults.
    let (code, _) = call(
        &sim,
        "POST",
        "/faults",
        Some(r#"{"home":"h002","device":"meter","fault":{"kind":"late","millis":5000}}"#),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, body) = call(&sim, "GET", "/faults", None).await;
    let faults: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(faults[0]["home"], "h002");
    assert_eq!(faults[0]["fault"]["kind"], "late");
    let (code, body) = call(
        &sim,
        "POST",
        "/faults",
        Some(r#"{"home":"h002","device":"toaster","fault":{"kind":"drop"}}"#),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("bad_fault") && body.contains("toaster"),
        "{body}"
    );
    let (code, _) = call(&sim, "DELETE", "/faults/h002/meter", None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(sim.faults().is_empty());
    let (code, body) = call(&sim, "DELETE", "/faults/h002/kettle", None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    sim.inject("h001", DeviceKind::Inverter, Fault::Freeze)
        .unwrap();

    let (code, body) = call(&sim, "GET", "/metrics", None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("# TYPE gridmesh_sim_modbus_requests_total counter"));
    assert!(body.contains("gridmesh_sim_homes 2"));
    assert!(body.contains("gridmesh_sim_faults_active 1"));
    assert!(body.contains("# TYPE gridmesh_sim_pv_curtailed_wh_total counter"));
    assert!(body.contains("gridmesh_sim_pv_curtailed_wh_total 0"));
    assert!(body.contains("gridmesh_sim_pv_limits_active 0"));
    shutdown.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_the_manifest_and_serves_modbus() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("manifest.json");
    let scenario_path = dir.path().join("scenario.toml");
    std::fs::write(&scenario_path, "seed = 3\nspeed = 60.0\nfeeders = 1\n[[homes]]\nid = \"a\"\n[[homes]]\nid = \"b\"\nbattery_kwh = 0\n").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meter-sim"))
        .args([
            "--scenario",
            scenario_path.to_str().unwrap(),
            "--base-port",
            "0",
            "--control",
            "127.0.0.1:0",
        ])
        .args([
            "--manifest",
            manifest_path.to_str().unwrap(),
            "--status-every",
            "0",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut text = None;
    for _ in 0..600 {
        if let Ok(t) = std::fs::read_to_string(&manifest_path) {
            text = Some(t);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let manifest: Manifest =
        serde_json::from_str(&text.expect("manifest written within 30 s")).unwrap();
    assert_eq!(manifest.homes.len(), 2);
    assert_eq!(manifest.homes[0].id, "a");
    assert_eq!(manifest.homes[1].feeder, "f1");
    assert!(manifest.homes[1].device(DeviceKind::Battery).is_none());
    let device = manifest.homes[0].device(DeviceKind::Meter).unwrap();
    let addr = format!("{}:{}", device.host, device.port).parse().unwrap();
    let mut ctx = connect(addr, device.unit).await;
    let ids: Vec<u16> = discover(&mut ctx).await.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 203]);
    child.kill().await.unwrap();

    // A bad scenario is refused with a message naming the field.
    std::fs::write(&scenario_path, "step_seconds = 7\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meter-sim"))
        .args([
            "--scenario",
            scenario_path.to_str().unwrap(),
            "--control",
            "127.0.0.1:0",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("step_seconds"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_serves_over_tcp_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sim, shutdown) = start(1, 2, 1.0).await;
    let addr = sim.serve_control("127.0.0.1:0", &shutdown).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"simulated_time\""));
    // The port is taken: a second bind fails with a helpful message.
    let err = sim
        .serve_control(&addr.to_string(), &shutdown)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--control"), "{err}");
    shutdown.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "closed after shutdown"
    );
}
