//! An oversized MQTT message is acknowledged and dropped; it never stalls the persistent
//! session (issue 14, item 2). Needs Mosquitto on 127.0.0.1:1883 (or `GRIDMESH_TEST_MQTT`).

mod common;

use common::*;
use gridmesh_protocol::{GatewayId, topics};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings, Qos};
use gridmesh_runtime::shutdown::Shutdown;
use settlement::{SettlementConfig, serve_with_source};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn stored(pool: &sqlx::AnyPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM readings WHERE reading_key = $1")
        .bind(key.to_owned())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_two_megabyte_message_is_dropped_and_later_readings_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let source = registry_source();
    let shutdown = Shutdown::new();
    let config = SettlementConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
        market_url: None,
        broker_url: Some(broker()),
        mqtt_client_id: format!("settlement-oversize-{}", std::process::id()),
        operator_token: Some("op-secret".into()),
        poll_secs: 0.05,
        ..SettlementConfig::default()
    };
    let running = serve_with_source(
        config,
        Clock::scaled(epoch(), 1.0),
        shutdown.clone(),
        Some(Arc::new(source.clone())),
    )
    .await
    .unwrap();
    let pool = running.service.db().pool.clone();
    let mut settings = MqttSettings::new(
        broker(),
        format!("settlement-oversize-pub-{}", std::process::id()),
    );
    settings.max_packet_bytes = 4 << 20;
    let (publisher, _) = MqttSession::start(settings, &shutdown).unwrap();
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);
    let topic = topics::readings(&GatewayId::new("gw-carol").unwrap());

    // Until settlement's subscription is in place, publish a first reading.
    let first = sign(&reading("gw-carol", 1, interval("12:15"), 0, 50, 60, 1_000));
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored(&pool, "gw-carol/home/1782044100").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the first MQTT reading never arrived"
        );
        publisher
            .publish(
                topic.clone(),
                serde_json::to_vec(&first).unwrap(),
                Qos::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // 2 MB of junk, then a valid reading: the reading is stored within a few seconds.
    publisher
        .publish(
            topic.clone(),
            vec![b'x'; 2_000_000],
            Qos::AtLeastOnce,
            false,
        )
        .await
        .unwrap();
    let second = sign(&reading("gw-carol", 2, interval("12:30"), 0, 50, 60, 2_000));
    publisher
        .publish(
            topic.clone(),
            serde_json::to_vec(&second).unwrap(),
            Qos::AtLeastOnce,
            false,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stored(&pool, "gw-carol/home/1782045000").await == 0 {
        assert!(
            Instant::now() < deadline,
            "a valid reading after a 2 MB message was not stored within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running.service.metrics.mqtt_dropped.get(), 1);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), shutdown.stop())
        .await
        .expect("clean shutdown");
}
