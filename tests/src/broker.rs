//! An MQTT broker inside the demo process (rumqttd), so the demo needs nothing installed.
//!
//! Only for the demo and the tests of the embedded broker: it keeps sessions in memory only.
//! Production and the other tests use a real broker (Mosquitto).
//!
//! - [`EmbeddedBroker`]: the demo's broker;
//! - [`RestartableBroker`]: the same broker behind a relay on a fixed address, so a fault test
//!   can stop it and start a fresh one where it was;
//! - [`TestBroker`]: either kind ([`BrokerKind`]) behind one interface, for tests that run the
//!   same scenario on both.

use crate::processes::{Mosquitto, ProcessError, wait_for_port};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The port is taken.
    #[error(
        "cannot listen for MQTT on {addr}: {source} (is another broker running? pass --broker mqtt://HOST:PORT to use it)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker did not accept connections in time.
    #[error("the embedded MQTT broker is not ready: {0}")]
    NotReady(String),
    /// A private Mosquitto did not start.
    #[error("cannot start Mosquitto: {0}")]
    Mosquitto(#[from] ProcessError),
}

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker on `addr` (port 0 picks a free port) in background threads.
    pub fn start(addr: SocketAddr) -> Result<Self, BrokerError> {
        // Reserve the port first so that a taken port is a clear error, not a broker-thread panic.
        let probe = TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
        let addr = probe
            .local_addr()
            .map_err(|source| BrokerError::Bind { addr, source })?;
        drop(probe);
        let config = rumqttd_config(addr);
        std::thread::Builder::new()
            .name("mqtt-broker".to_owned())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "embedded MQTT broker stopped");
                }
            })
            .expect("spawn broker thread");
        Ok(EmbeddedBroker { addr })
    }

    /// The broker's `mqtt://` URL.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// The demo broker's settings, listening on `addr`.
fn rumqttd_config(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1 << 20,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "gridmesh-demo".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        // Small segments keep memory flat over a long demo.
        router: rumqttd::RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 1 << 20,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    }
}

/// How long a broker may take to accept connections after it is started.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The embedded broker (rumqttd, the demo's settings) behind a relay on a fixed address, so that
/// a test can stop it and start it again where it was.
///
/// rumqttd cannot be shut down inside a process, so each start runs a fresh broker on a private
/// port and the relay forwards the fixed address to it byte for byte. [`stop`](Self::stop)
/// closes the fixed address and every connection through it, and abandons that broker (its
/// threads idle until the process ends); [`start_again`](Self::start_again) starts a new one,
/// empty as the demo's broker is after a restart: no sessions, subscriptions or queued messages.
#[derive(Debug)]
pub struct RestartableBroker {
    addr: SocketAddr,
    relay: Option<tokio::task::JoinHandle<()>>,
}

impl RestartableBroker {
    /// Starts a broker on `addr` (port 0 picks a free port; the same one after restarts).
    pub async fn start(addr: SocketAddr) -> Result<Self, BrokerError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| BrokerError::Bind { addr, source })?;
        let mut broker = RestartableBroker { addr, relay: None };
        broker.serve(listener).await?;
        Ok(broker)
    }

    /// The broker's `mqtt://` URL (the same after a restart).
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Stops the broker: its address refuses connections and every client's connection is
    /// closed. Everything the broker held is gone.
    pub async fn stop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.abort();
            // The relay's listener and connections are closed once it has been dropped.
            let _ = relay.await;
        }
    }

    /// Starts a fresh broker on the same address (stopping the running one first).
    pub async fn start_again(&mut self) -> Result<(), BrokerError> {
        self.stop().await;
        let addr = self.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { addr, source })?;
        self.serve(listener).await
    }

    /// Starts a fresh rumqttd on a private port and relays `listener`'s connections to it.
    async fn serve(&mut self, listener: tokio::net::TcpListener) -> Result<(), BrokerError> {
        let inner = EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        wait_for_port(inner.addr, READY_WITHIN)
            .await
            .map_err(|e| BrokerError::NotReady(e.to_string()))?;
        self.relay = Some(tokio::spawn(relay(listener, inner.addr)));
        Ok(())
    }
}

impl Drop for RestartableBroker {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.abort();
        }
    }
}

/// Forwards every connection accepted on `listener` to `upstream`, both ways, until aborted;
/// aborting it drops the listener and every connection.
async fn relay(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(forward(client, upstream));
                }
                Err(error) => tracing::warn!(%error, "the broker relay could not accept"),
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Copies bytes between `client` and a new connection to `upstream` until either side closes.
async fn forward(mut client: tokio::net::TcpStream, upstream: SocketAddr) {
    let mut server = match tokio::net::TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(error) => {
            tracing::warn!(%error, %upstream, "the broker relay could not reach the broker");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// Which MQTT broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// A private Mosquitto process with persistence: sessions and queued messages survive a
    /// restart.
    Mosquitto,
    /// The demo's embedded rumqttd ([`RestartableBroker`]): a restart loses everything.
    Rumqttd,
}

/// A private broker of either [`BrokerKind`] that a test can stop and start again on the same
/// address.
#[derive(Debug)]
pub enum TestBroker {
    /// A private Mosquitto.
    Mosquitto(Mosquitto),
    /// The embedded rumqttd.
    Rumqttd(RestartableBroker),
}

impl TestBroker {
    /// Starts a broker of `kind` on a free port; a Mosquitto keeps its state in `dir`.
    pub async fn start(kind: BrokerKind, dir: &Path) -> Result<Self, BrokerError> {
        Ok(match kind {
            BrokerKind::Mosquitto => TestBroker::Mosquitto(Mosquitto::start(dir).await?),
            BrokerKind::Rumqttd => TestBroker::Rumqttd(
                RestartableBroker::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?,
            ),
        })
    }

    /// The broker's kind.
    pub fn kind(&self) -> BrokerKind {
        match self {
            TestBroker::Mosquitto(_) => BrokerKind::Mosquitto,
            TestBroker::Rumqttd(_) => BrokerKind::Rumqttd,
        }
    }

    /// The broker's `mqtt://` URL (the same after a restart).
    pub fn url(&self) -> String {
        match self {
            TestBroker::Mosquitto(broker) => broker.url(),
            TestBroker::Rumqttd(broker) => broker.url(),
        }
    }

    /// Stops the broker.
    pub async fn stop(&mut self) {
        match self {
            TestBroker::Mosquitto(broker) => broker.stop().await,
            TestBroker::Rumqttd(broker) => broker.stop().await,
        }
    }

    /// Starts the broker again on the same address.
    pub async fn start_again(&mut self) -> Result<(), BrokerError> {
        match self {
            TestBroker::Mosquitto(broker) => Ok(broker.start_again().await?),
            TestBroker::Rumqttd(broker) => broker.start_again().await,
        }
    }
}
