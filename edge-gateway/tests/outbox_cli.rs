//! `edge-gateway outbox`: lists the signed readings waiting in a real outbox, checks each
//! signature against the gateway's key, and fails clearly when one does not verify or there is
//! no outbox.

use edge_gateway::accountant::Resume;
use edge_gateway::config::GatewayConfig;
use edge_gateway::outbox::{Outbox, Stored};
use gridmesh_protocol::Interval;
use gridmesh_protocol::example::example_reading;
use gridmesh_protocol::keys::SigningKeyPair;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edge-gateway");

/// Runs `edge-gateway outbox --config <config>`: exit code and stdout+stderr.
fn inspect(config: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["outbox", "--config"])
        .arg(config)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Signs the example reading for the interval starting at `start` (15 min) with `key` and
/// stores it.
async fn store(outbox: &Outbox, start: &str, key: &SigningKeyPair) {
    let interval = Interval::parse(start, 15).unwrap();
    let resume = Resume {
        next_start: interval.start_unix() + 900,
        channels: [None; 5],
    };
    let stored = outbox
        .store(
            |sequence| {
                let mut reading = example_reading();
                reading.sequence = sequence;
                reading.interval = interval;
                reading
            },
            key,
            &resume,
            0,
        )
        .await
        .unwrap();
    assert!(matches!(stored, Stored::New(_)), "{stored:?}");
}

#[tokio::test]
async fn lists_signed_readings_and_refuses_a_foreign_signature() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("gw.key");
    let key = SigningKeyPair::generate_file(&key_path).unwrap();
    let config = GatewayConfig {
        key_path,
        outbox_path: dir.path().join("outbox.db"),
        ..GatewayConfig::default()
    };
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    // No outbox yet: said so, nothing created.
    let (code, text) = inspect(&config_path);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("there is no outbox"), "{text}");
    assert!(!config.outbox_path.exists());

    let outbox = Outbox::open(&config.outbox_path, 1 << 20).await.unwrap();
    store(&outbox, "2026-06-21T12:00:00Z", &key).await;
    store(&outbox, "2026-06-21T12:15:00Z", &key).await;
    let (code, text) = inspect(&config_path);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("2 reading(s) waiting"), "{text}");
    assert_eq!(text.matches("signature=ok").count(), 2, "{text}");
    assert!(
        text.contains("reading 1 gw-h001 2026-06-21T12:00:00Z+15min import="),
        "{text}"
    );
    assert!(text.contains(&key.public_key().to_string()), "{text}");

    // A reading signed by another key: named, and the command fails.
    store(
        &outbox,
        "2026-06-21T12:30:00Z",
        &SigningKeyPair::from_seed([7; 32]),
    )
    .await;
    outbox.close().await;
    let (code, text) = inspect(&config_path);
    assert_eq!(code, 1, "{text}");
    assert_eq!(text.matches("signature=ok").count(), 2, "{text}");
    assert!(
        text.contains("reading 3 ") && text.contains("signature=BAD"),
        "{text}"
    );
    assert!(
        text.contains("not validly signed by this gateway's key"),
        "{text}"
    );
}
