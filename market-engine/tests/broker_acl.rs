//! `market-engine broker-acl` on a real Mosquitto (issue 13, defect 3: any broker client could
//! publish on any gateway's readings topic). With the generated password file and ACL, gateway
//! A's reading on its own topic arrives, while A publishing as B is dropped by the broker.

use gridmesh_protocol::{GatewayId, topics};
use market_engine::broker_acl;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child Mosquitto with the generated files; killed on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    async fn start(dir: &Path, written: &broker_acl::Written) -> Broker {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence false\nlog_dest stdout\nlistener {port} 127.0.0.1\n\
                 allow_anonymous false\npassword_file {}\nacl_file {}\n",
                written.password_file.display(),
                written.acl_file.display()
            ),
        )
        .unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("mosquitto runs");
        let broker = Broker { child, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connected test client, the messages it receives and its connection outcomes.
type Connection = (
    AsyncClient,
    mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    mpsc::UnboundedReceiver<bool>,
);

/// Connects as `user`; returns the client, a channel of received `(topic, payload)` and one
/// of connection outcomes (`true` = accepted).
fn connect(port: u16, user: &str, password: &str) -> Connection {
    let mut options = MqttOptions::new(format!("test-{user}"), "127.0.0.1", port);
    options.set_credentials(user, password);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ctx, crx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ctx.send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = ctx.send(false);
                    break;
                }
            }
        }
    });
    (client, rx, crx)
}

fn password(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_gateway_cannot_publish_as_another() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("broker");
    let a = GatewayId::new("gw-a").unwrap();
    let b = GatewayId::new("gw-b").unwrap();
    let written = broker_acl::write(&out, &[a.clone(), b.clone()]).unwrap();
    assert_eq!(
        written.users,
        ["market", "settlement", "web", "gw-a", "gw-b"]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [
            out.join("gateways/gw-a.password"),
            out.join("web.password"),
            written.password_file.clone(),
        ] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }
    // Re-running keeps the passwords already handed out.
    let before = password(&out.join("gateways/gw-a.password"));
    broker_acl::write(&out, &[a.clone(), b.clone()]).unwrap();
    assert_eq!(password(&out.join("gateways/gw-a.password")), before);

    let broker = Broker::start(dir.path(), &written).await;

    // A wrong password is refused.
    let (_bad, _rx, mut connected) = connect(broker.port, "gw-a", "not-the-password");
    assert_eq!(connected.recv().await, Some(false));

    // The dashboard's user watches both gateways' readings.
    let (web, mut seen, mut web_up) =
        connect(broker.port, "web", &password(&out.join("web.password")));
    assert_eq!(web_up.recv().await, Some(true));
    for g in [&a, &b] {
        web.subscribe(topics::readings(g), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Gateway A publishes as B, then on its own topic.
    let (gw_a, _rx, mut a_up) = connect(
        broker.port,
        "gw-a",
        &password(&out.join("gateways/gw-a.password")),
    );
    assert_eq!(a_up.recv().await, Some(true));
    gw_a.publish(
        topics::readings(&b),
        QoS::AtLeastOnce,
        false,
        b"forged".to_vec(),
    )
    .await
    .unwrap();
    gw_a.publish(
        topics::readings(&a),
        QoS::AtLeastOnce,
        false,
        b"own".to_vec(),
    )
    .await
    .unwrap();

    let (topic, payload) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("A's own reading arrives")
        .unwrap();
    assert_eq!(
        topic,
        topics::readings(&a),
        "{}",
        String::from_utf8_lossy(&payload)
    );
    assert_eq!(payload, b"own");
    // Messages of one connection arrive in order: had the forged one been delivered, it would
    // have come first. Wait a little more to be sure nothing else comes.
    let late = tokio::time::timeout(Duration::from_millis(700), seen.recv()).await;
    assert!(
        late.is_err(),
        "the broker delivered a forged message: {late:?}"
    );
}
