//! An MQTT broker inside the demo process (rumqttd), so the demo needs nothing installed.
//!
//! Only for the demo and the embedded-broker end-to-end test: it keeps sessions in memory only.
//! Production and the other tests use a real broker (Mosquitto).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

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
        let config = rumqttd::Config {
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
        };
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
