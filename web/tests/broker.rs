//! The dashboard following a real Mosquitto broker: gateways' retained control status
//! (`gridmesh/gateways/<id>/control`, JSON `protocol::envelope::ControlStatus`) reaches the Grid
//! page's curtailed energy and default-envelope counts, both for a message retained before the
//! dashboard subscribed and for one published while it runs.

mod support;

use gridmesh_protocol::envelope::EnvelopeSource;
use gridmesh_protocol::{GatewayId, Interval, topics};
use gridmesh_runtime::mqtt::{MqttHandle, MqttSession, MqttSettings, Qos};
use gridmesh_runtime::shutdown::Shutdown;
use gridmesh_web::WebConfig;
use gridmesh_web::hub::Hub;
use gridmesh_web::snapshot::Snapshot;
use serde_json::Value;
use std::time::Duration;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A Mosquitto process on a free port, killed on drop.
struct Broker {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = std::process::Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MOSQUITTO} (install mosquitto): {e}"));
        Broker {
            child,
            url: format!("mqtt://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until `done` holds for the hub's snapshot, woken by each change.
async fn until(hub: &Hub, what: &str, done: impl Fn(&Snapshot) -> bool) {
    let mut changes = hub.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if done(&hub.snapshot()) {
                return;
            }
            // A lagged receiver just re-checks the newest snapshot.
            let _ = changes.recv().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

async fn publish_control(
    handle: &MqttHandle,
    gateway: &str,
    interval: Interval,
    source: EnvelopeSource,
    curtailed: i64,
    total: i64,
) {
    let status = support::control_status(gateway, interval, source, curtailed, total);
    handle
        .publish(
            topics::gateway_control(&GatewayId::new(gateway).unwrap()),
            serde_json::to_vec(&status).unwrap(),
            Qos::AtLeastOnce,
            true,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn control_status_from_the_broker_shows_curtailment_per_feeder() {
    let broker = Broker::start();
    let up = support::start(6).await;
    let shutdown = Shutdown::new();
    let (publisher, _incoming) =
        MqttSession::start(MqttSettings::new(&broker.url, "gateway-double"), &shutdown).unwrap();
    assert!(
        publisher.wait_connected(Duration::from_secs(20)).await,
        "the publisher reaches Mosquitto at {}",
        broker.url
    );
    let interval = Interval::parse("2026-06-21T13:15:00Z", 15).unwrap();
    // Retained before the dashboard exists: it must still see it.
    publish_control(
        &publisher,
        "gw-h002",
        interval,
        EnvelopeSource::Default,
        600,
        2_000,
    )
    .await;

    let running = gridmesh_web::serve(
        WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            market_url: format!("http://{}", up.market),
            settlement_url: format!("http://{}", up.settlement),
            broker_url: Some(broker.url.clone()),
            poll_interval_ms: 200,
            ..WebConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    until(
        &running.hub,
        "the retained control status and the topology",
        |s| s.control.contains_key("gw-h002") && s.topology.is_some() && !s.gateways.is_empty(),
    )
    .await;
    let (session, _) = running
        .hub
        .auth
        .start_session("test-admin", gridmesh_web::auth::Role::Admin);
    let grid: Value = reqwest::Client::new()
        .get(format!("{}/api/grid", running.url()))
        .header(
            "cookie",
            format!("{}={session}", gridmesh_web::auth::SESSION_COOKIE),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let f1 = grid["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["node"] == "f1")
        .unwrap();
    assert_eq!(f1["control"]["curtailed_wh"], 600, "{grid}");
    assert_eq!(f1["control"]["curtailed_total_wh"], 2000);
    assert_eq!(f1["control"]["on_default"], 1);
    assert_eq!(grid["control_interval"], "2026-06-21T13:15:00Z/15");

    // Published while the dashboard runs: h001 now curtails under a market envelope.
    publish_control(
        &publisher,
        "gw-h001",
        interval,
        EnvelopeSource::Market,
        150,
        150,
    )
    .await;
    until(&running.hub, "gw-h001's control status", |s| {
        s.control.contains_key("gw-h001")
    })
    .await;
    let grid = gridmesh_web::views::grid(&running.hub.snapshot());
    let f1 = grid.branches.iter().find(|b| b.node == "f1").unwrap();
    assert_eq!(f1.control.curtailed_wh, 750);
    assert_eq!(f1.control.reporting, 2);
    assert_eq!(f1.control.on_default, 1);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), shutdown.stop())
        .await
        .expect("every task stops on shutdown");
    drop(broker);
}
