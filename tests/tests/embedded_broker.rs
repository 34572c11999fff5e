//! The demo's embedded broker carries QoS 1 messages between two of our own MQTT sessions.

use gridmesh_e2e::broker::EmbeddedBroker;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings, Qos};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn embedded_broker_round_trip() {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let cancel = CancellationToken::new();
    let mut settings = MqttSettings::new(broker.url(), "sub");
    settings.subscriptions = vec!["gridmesh/readings/+".to_owned()];
    let session = gridmesh_runtime::shutdown::Shutdown::child_of(&cancel);
    let (sub, mut incoming) = MqttSession::start(settings, &session).unwrap();
    let (publisher, _) =
        MqttSession::start(MqttSettings::new(broker.url(), "pub"), &session).unwrap();
    assert!(sub.wait_connected(Duration::from_secs(10)).await);
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);
    // Publish until the subscriber sees a message (its SUBACK may still be on the way), for at
    // most 30 s (a hung PUBACK included): a broker that never routes fails, not hangs.
    let message = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            publisher
                .publish(
                    "gridmesh/readings/gw1",
                    b"hello".to_vec(),
                    Qos::AtLeastOnce,
                    false,
                )
                .await
                .expect("PUBACK from the embedded broker");
            match tokio::time::timeout(Duration::from_millis(500), incoming.recv()).await {
                Ok(Some(m)) => break m,
                Ok(None) => panic!("the subscriber's message stream ended before any message"),
                Err(_) => {}
            }
        }
    })
    .await
    .expect(
        "the subscriber received nothing on gridmesh/readings/+ within 30 s of publishing every \
         500 ms: the embedded broker does not route QoS 1 messages",
    );
    assert_eq!(message.topic, "gridmesh/readings/gw1");
    assert_eq!(message.payload, b"hello");
    sub.ack(message).await;
    cancel.cancel();
}

#[test]
fn a_taken_port_is_explained() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = EmbeddedBroker::start(taken.local_addr().unwrap()).unwrap_err();
    assert!(err.to_string().contains("--broker"), "{err}");
}
