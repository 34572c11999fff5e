//! The runtime against the real services: a migration round trip on SQLite and PostgreSQL and an
//! MQTT publish/subscribe round trip through the broker on 127.0.0.1:1883.

use gridmesh_runtime::db::{Backend, Database, scratch};
use gridmesh_runtime::mqtt::{MqttError, MqttSession, MqttSettings, Qos};
use gridmesh_runtime::shutdown::Shutdown;
use sqlx::Row;
use sqlx::migrate::Migrator;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

static SQLITE: Migrator = sqlx::migrate!("tests/migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("tests/migrations/postgres");

async fn round_trip(db: &Database) {
    db.migrate(&SQLITE, &POSTGRES).await.unwrap();
    // Migrating twice is a no-op.
    db.migrate(&SQLITE, &POSTGRES).await.unwrap();
    sqlx::query("INSERT INTO notes (id, energy_wh, body, raw) VALUES ($1, $2, $3, $4)")
        .bind(1_i64)
        .bind(i64::MAX)
        .bind("grüße")
        .bind(vec![0u8, 255, 7])
        .execute(&db.pool)
        .await
        .unwrap();
    let row = sqlx::query("SELECT energy_wh, body, raw FROM notes WHERE id = $1")
        .bind(1_i64)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), i64::MAX);
    assert_eq!(row.get::<String, _>(1), "grüße");
    assert_eq!(row.get::<Vec<u8>, _>(2), vec![0u8, 255, 7]);
}

#[tokio::test]
async fn sqlite_migration_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let db = Database::connect(&url).await.unwrap();
    assert_eq!(db.backend, Backend::Sqlite);
    round_trip(&db).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn postgres_migration_round_trip() {
    let url = scratch::fresh_postgres("runtime").await.unwrap();
    let db = Database::connect(&url).await.unwrap();
    assert_eq!(db.backend, Backend::Postgres);
    round_trip(&db).await;
}

#[tokio::test]
async fn unsupported_url_is_explained() {
    let err = Database::connect("mysql://x").await.unwrap_err();
    assert!(err.to_string().contains("sqlite://"), "{err}");
}

fn broker() -> String {
    std::env::var("GRIDMESH_TEST_MQTT").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

#[tokio::test]
async fn mqtt_publish_subscribe_round_trip() {
    let shutdown = Shutdown::new();
    let topic = format!("gridmesh-test/{}/roundtrip", std::process::id());
    let mut sub_settings = MqttSettings::new(broker(), format!("rt-sub-{}", std::process::id()));
    sub_settings.subscriptions = vec![topic.clone()];
    let (sub, mut incoming) = MqttSession::start(sub_settings, &shutdown).unwrap();
    let (publisher, _) = MqttSession::start(
        MqttSettings::new(broker(), format!("rt-pub-{}", std::process::id())),
        &shutdown,
    )
    .unwrap();
    assert!(sub.wait_connected(Duration::from_secs(10)).await);
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);
    // The subscription is queued on ConnAck; give the SUBACK a moment by publishing until seen,
    // for at most 30 s (a hung PUBACK included): a broker that never routes fails, not hangs.
    let payload = b"signed bytes \x00\x01".to_vec();
    let message = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            publisher
                .publish(topic.clone(), payload.clone(), Qos::AtLeastOnce, false)
                .await
                .expect("PUBACK from the broker");
            match tokio::time::timeout(Duration::from_millis(500), incoming.recv()).await {
                Ok(Some(m)) => break m,
                Ok(None) => panic!("the subscriber's message stream ended before any message"),
                Err(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the subscriber received nothing on {topic} within 30 s of publishing every 500 ms: \
             is the broker at {} routing messages (check its log and ACLs)?",
            broker()
        )
    });
    assert_eq!(message.topic, topic);
    assert_eq!(message.payload, payload);
    sub.ack(message).await;
    // Both session tasks are tracked: stopping waits for their disconnects.
    tokio::time::timeout(Duration::from_secs(10), shutdown.stop())
        .await
        .expect("the MQTT sessions stop");
    assert!(!sub.is_connected() && !publisher.is_connected());
}

#[tokio::test]
async fn mqtt_unreachable_broker_fails_fast_with_advice() {
    let cancel = CancellationToken::new();
    let shutdown = Shutdown::child_of(&cancel);
    let (handle, _) =
        MqttSession::start(MqttSettings::new("mqtt://127.0.0.1:1", "nobody"), &shutdown).unwrap();
    let err = handle
        .publish("t", b"x".to_vec(), Qos::AtLeastOnce, false)
        .await
        .unwrap_err();
    assert!(matches!(err, MqttError::NotConnected(_)));
    assert!(err.to_string().contains("will be retried"), "{err}");
    assert!(MqttSession::start(MqttSettings::new("http://x", "c"), &shutdown).is_err());
    cancel.cancel();
    shutdown.wait().await;
}
