//! TLS on a real Mosquitto: certificates made at test time (rcgen), a broker with a TLS
//! listener that requires a client certificate, and HTTPS to the market.
//!
//! - a gateway with the right CA and its client certificate delivers readings over `mqtts://`;
//! - a gateway whose CA did not sign the broker's certificate refuses the broker and says so;
//! - `https://` to the market works with `[tls] ca_file` and is refused with another CA.

mod common;

use common::*;
use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use edge_gateway::{KeySource, run_with_key};
use gridmesh_protocol::GatewayId;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SPEED: f64 = 300.0;
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A CA that signs server and client certificates, written as PEM files into a directory.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("gridmesh test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, issuer.pem()).unwrap();
        Ca { issuer, pem }
    }

    /// Issues a certificate; returns (certificate file, key file).
    fn issue(&self, dir: &Path, name: &str, server: bool) -> (PathBuf, PathBuf) {
        let names = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private Mosquitto: a plain listener (for the test's subscriber) and a TLS listener that
/// requires a client certificate signed by the CA.
struct Broker {
    child: Child,
    plain: u16,
    tls: u16,
    log: PathBuf,
}

impl Broker {
    async fn start(dir: &Path, ca: &Ca) -> Broker {
        Broker::start_with(
            dir,
            ca,
            "allow_anonymous true\nrequire_certificate true\nuse_identity_as_username true\n",
        )
        .await
    }

    /// `tls_auth`: the TLS listener's authentication lines.
    async fn start_with(dir: &Path, ca: &Ca, tls_auth: &str) -> Broker {
        let (cert, key) = ca.issue(dir, "broker", true);
        let (plain, tls) = (free_port(), free_port());
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "user root\nper_listener_settings true\npersistence false\nlog_dest stdout\n\
                 listener {plain} 127.0.0.1\nallow_anonymous true\n\
                 listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 {tls_auth}",
                ca = ca.pem.display(),
                cert = cert.display(),
                key = key.display(),
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
        let broker = Broker {
            child,
            plain,
            tls,
            log,
        };
        for port in [plain, tls] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "mosquitto did not listen on {port}: {}",
                    std::fs::read_to_string(&broker.log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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

fn gateway_config(gateway: &str, home: &Home, dir: &Path, broker: &str) -> GatewayConfig {
    let mut c = GatewayConfig {
        gateway_id: GatewayId::new(gateway).unwrap(),
        interval_minutes: 5,
        outbox_path: dir.join(format!("{gateway}-outbox.db")),
        key_path: dir.join(format!("{gateway}.key")),
        poll_ms: 50,
        modbus_timeout_ms: 200,
        stale_after_s: 120,
        health_listen: "127.0.0.1:0".into(),
        ..GatewayConfig::default()
    };
    c.mqtt.url = Some(broker.into());
    let (host, port) = ("127.0.0.1", home.addr.port());
    c.devices = vec![
        DeviceConfig::modbus_tcp("inverter", Role::Inverter, host, port, 1),
        DeviceConfig::modbus_tcp("battery", Role::Battery, host, port, 2),
        DeviceConfig::modbus_tcp("meter", Role::GridMeter, host, port, 3),
    ];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_go_over_mqtts_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "grid");
    let broker = Broker::start(dir.path(), &ca).await;
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let gw = unique("mqtts");
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings_at(
        &format!("mqtt://127.0.0.1:{}", broker.plain),
        &gw,
        cancel.clone(),
    );

    let mut config = gateway_config(
        &gw,
        &home,
        dir.path(),
        &format!("mqtts://localhost:{}", broker.tls),
    );
    let (cert, key) = ca.issue(dir.path(), &gw, false);
    config.tls.ca_file = Some(ca.pem.clone());
    config.mqtt.client_cert_file = Some(cert);
    config.mqtt.client_key_file = Some(key);
    config.validate().unwrap();
    let lines = edge_gateway::tls::describe(&config).unwrap().join("\n");
    assert!(lines.contains("over TLS"), "{lines}");
    assert!(lines.contains("client certificate"), "{lines}");

    let signer = SigningKeyPair::from_seed([7; 32]);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config,
        KeySource::Key(Box::new(signer.clone())),
        clock,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let items = collect(&mut rx, 2, Duration::from_secs(30)).await;
    assert!(
        items.len() >= 2,
        "no readings over mqtts; gateway: {:?}; broker log:\n{}",
        running.status.snapshot().mqtt_error,
        std::fs::read_to_string(&broker.log).unwrap_or_default()
    );
    for (envelope, _) in &items {
        assert_eq!(envelope.public_key, signer.public_key());
    }
    let snapshot = running.status.snapshot();
    assert!(snapshot.delivered_mqtt >= 1, "{snapshot:?}");
    assert_eq!(snapshot.mqtt_error, None);
    shutdown.stop().await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_not_signed_by_the_configured_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "grid");
    let rogue = Ca::new(dir.path(), "rogue");
    let broker = Broker::start(dir.path(), &rogue).await;
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let gw = unique("rogue");
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings_at(
        &format!("mqtt://127.0.0.1:{}", broker.plain),
        &gw,
        cancel.clone(),
    );
    let mut config = gateway_config(
        &gw,
        &home,
        dir.path(),
        &format!("mqtts://localhost:{}", broker.tls),
    );
    // The gateway trusts only its grid's CA; it even holds a client certificate the rogue
    // broker would accept, so only the server check can stop it.
    let (cert, key) = rogue.issue(dir.path(), &gw, false);
    config.tls.ca_file = Some(ca.pem.clone());
    config.mqtt.client_cert_file = Some(cert);
    config.mqtt.client_key_file = Some(key);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([8; 32]))),
        clock,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let error = loop {
        if let Some(error) = running.status.snapshot().mqtt_error {
            break error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no MQTT error reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(
        error.contains(&format!(
            "not signed by a CA in the CA file {}",
            ca.pem.display()
        )),
        "{error}"
    );
    // Readings are signed and kept, but never reach the rogue broker.
    let items = collect(&mut rx, 1, Duration::from_secs(3)).await;
    assert!(items.is_empty(), "a reading reached the rogue broker");
    let snapshot = running.status.snapshot();
    assert!(!snapshot.mqtt_connected);
    assert_eq!(snapshot.delivered_mqtt, 0);
    assert!(snapshot.outbox_count >= 1, "{snapshot:?}");
    shutdown.stop().await;
    cancel.cancel();
}

/// A one-route HTTPS server: every request gets `body` as JSON (the market's `/market-key`).
async fn https_server(cert: &Path, key: &Path, body: String) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_to_the_market_trusts_the_configured_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "grid");
    let rogue = Ca::new(dir.path(), "rogue");
    let market_key = gridmesh_protocol::envelope::MarketKey {
        zone: "test".into(),
        public_key: SigningKeyPair::from_seed([9; 32]).public_key(),
    };
    let body = serde_json::to_string(&market_key).unwrap();
    let (cert, key) = ca.issue(dir.path(), "market", true);
    let market = https_server(&cert, &key, body.clone()).await;
    let (cert, key) = rogue.issue(dir.path(), "rogue-market", true);
    let rogue_market = https_server(&cert, &key, body).await;

    let mut config = GatewayConfig::default();
    config.tls.ca_file = Some(ca.pem.clone());
    config.market_url = Some(format!("https://localhost:{}", market.port()));
    let lines = edge_gateway::tls::describe(&config).unwrap().join("\n");
    assert!(
        lines.contains(&format!(
            "market: https://localhost:{} over TLS, trusting the CA file {} (1 CA certificates)",
            market.port(),
            ca.pem.display()
        )),
        "{lines}"
    );
    let got = edge_gateway::enroll::market_key(&config).await.unwrap();
    assert_eq!(got.public_key, market_key.public_key);

    config.market_url = Some(format!("https://localhost:{}", rogue_market.port()));
    let error = edge_gateway::enroll::market_key(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not signed by a CA in the CA file"),
        "{error}"
    );

    // Without a CA file the public roots apply, and they do not know a private CA either.
    config.tls.ca_file = None;
    config.market_url = Some(format!("https://localhost:{}", market.port()));
    let error = edge_gateway::enroll::market_key(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("built-in public"), "{error}");
}

#[test]
fn broken_tls_files_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = GatewayConfig::default();
    config.mqtt.url = Some("mqtts://localhost:8883".into());
    config.tls.ca_file = Some(dir.path().join("missing.pem"));
    let error = edge_gateway::tls::describe(&config)
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot read the CA file"), "{error}");
    assert!(error.contains("missing.pem"), "{error}");

    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    config.tls.ca_file = Some(not_pem);
    let error = edge_gateway::tls::describe(&config)
        .unwrap_err()
        .to_string();
    assert!(error.contains("holds no PEM certificate"), "{error}");

    let ca = Ca::new(dir.path(), "grid");
    config.tls.ca_file = Some(ca.pem.clone());
    let (cert, _) = ca.issue(dir.path(), "gw", false);
    config.mqtt.client_cert_file = Some(cert.clone());
    config.mqtt.client_key_file = Some(cert);
    let error = edge_gateway::tls::describe(&config)
        .unwrap_err()
        .to_string();
    assert!(error.contains("holds no PEM private key"), "{error}");

    config.mqtt.client_cert_file = None;
    config.mqtt.client_key_file = None;
    let password = dir.path().join("broker.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    config.mqtt.password_file = Some(password);
    let lines = edge_gateway::tls::describe(&config).unwrap().join("\n");
    assert!(lines.contains("username `gateway-1`"), "{lines}");
    assert!(!lines.contains("s3cret"), "{lines}");
    assert!(lines.contains("market: not configured"), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_login_comes_from_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "grid");
    let gw = unique("login");
    let passwords = dir.path().join("mosquitto.passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args([gw.as_str(), "right-password"])
        .status()
        .expect("mosquitto_passwd runs");
    assert!(status.success());
    let broker = Broker::start_with(
        dir.path(),
        &ca,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    )
    .await;
    let clock = Clock::scaled(epoch(), SPEED);
    let home = start_home(clock.clone(), epoch()).await;
    let cancel = CancellationToken::new();
    let mut rx = subscribe_readings_at(
        &format!("mqtt://127.0.0.1:{}", broker.plain),
        &gw,
        cancel.clone(),
    );
    let url = format!("mqtts://localhost:{}", broker.tls);

    // A wrong password: refused, and the reason says where the login comes from.
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "wrong-password\n").unwrap();
    let mut config = gateway_config(&format!("{gw}-x"), &home, dir.path(), &url);
    config.tls.ca_file = Some(ca.pem.clone());
    config.mqtt.username = Some(gw.clone());
    config.mqtt.password_file = Some(wrong);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([10; 32]))),
        clock.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let error = loop {
        if let Some(error) = running.status.snapshot().mqtt_error {
            break error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no MQTT error reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("password_file"), "{error}");
    shutdown.stop().await;

    // The right password, username defaulting to the gateway id: delivered.
    let right = dir.path().join("broker.password");
    std::fs::write(&right, "right-password\n").unwrap();
    let mut config = gateway_config(&gw, &home, dir.path(), &url);
    config.tls.ca_file = Some(ca.pem.clone());
    config.mqtt.password_file = Some(right);
    let shutdown = Shutdown::new();
    let running = run_with_key(
        config,
        KeySource::Key(Box::new(SigningKeyPair::from_seed([11; 32]))),
        clock,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let items = collect(&mut rx, 1, Duration::from_secs(30)).await;
    assert!(
        !items.is_empty(),
        "no readings with the right password: {:?}; broker log:\n{}",
        running.status.snapshot().mqtt_error,
        std::fs::read_to_string(&broker.log).unwrap_or_default()
    );
    shutdown.stop().await;
    cancel.cancel();
}
