//! An MQTT session that survives broker outages without losing track of what was delivered.
//!
//! rumqttc makes progress only while its event loop is polled, keeps unacknowledged publishes
//! only in memory, reconnects without backoff and forgets subscriptions after a clean-session
//! reconnect. [`MqttSession`] wraps it so that:
//!
//! - one background task owns the connection and polls it; on any connection error it fails
//!   every waiting publish, waits with exponential backoff and builds a *fresh* client, so no
//!   stale in-memory state is replayed behind the caller's back;
//! - every connection (every ConnAck) re-subscribes to the configured filters;
//! - [`MqttHandle::publish`] resolves only when the broker has acknowledged a QoS 1 message
//!   (PUBACK), so a durable outbox can delete a message exactly when it is safe to;
//! - incoming messages are handed over with manual acknowledgement: the consumer calls
//!   [`MqttHandle::ack`] after it has stored a message, and a crash before that makes a
//!   persistent-session broker deliver it again.

use crate::shutdown::Shutdown;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use rumqttc::QoS as Qos;

/// Why an MQTT operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// The broker URL is not `mqtt://host[:port]` (or `mqtts://host[:port]` with a TLS
    /// transport).
    #[error(
        "broker URL `{0}` is not valid; expected mqtt://host:port (for example mqtt://127.0.0.1:1883) or mqtts://host:port with a TLS configuration"
    )]
    BadUrl(String),
    /// There is no connection to the broker right now.
    #[error(
        "not connected to the MQTT broker at {0}; the message was kept and will be retried (is the broker running?)"
    )]
    NotConnected(String),
    /// The connection dropped before the broker acknowledged the message.
    #[error(
        "the connection to the MQTT broker dropped before it acknowledged the message; it will be retried"
    )]
    Dropped,
    /// The broker did not acknowledge in time.
    #[error("the MQTT broker did not acknowledge within {0:?}; the message will be retried")]
    Timeout(Duration),
    /// The session was shut down.
    #[error("the MQTT session is shut down")]
    Closed,
}

/// How to connect.
#[derive(Clone)]
pub struct MqttSettings {
    /// `mqtt://host:port` (default port 1883) or, with a TLS [`transport`](Self::transport),
    /// `mqtts://host:port` (default port 8883).
    pub url: String,
    /// How to reach the broker: `None` is plain TCP; a `rumqttc::Transport::Tls` (the caller
    /// enables rumqttc's rustls feature) is required for `mqtts://`.
    pub transport: Option<rumqttc::Transport>,
    /// Username and password presented in CONNECT (the broker's password file).
    pub credentials: Option<(String, String)>,
    /// The client id; with `clean_session = false` the broker keeps the session (and queues
    /// QoS 1 messages for it) under this id while the client is away.
    pub client_id: String,
    /// Whether to start a clean session on every connection.
    pub clean_session: bool,
    /// Topic filters to (re-)subscribe at QoS 1 on every connection.
    pub subscriptions: Vec<String>,
    /// Largest packet in either direction (rumqttc's default of 10 KiB is too small for batches).
    pub max_packet_bytes: usize,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// How long a publish waits for its PUBACK.
    pub ack_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
}

impl std::fmt::Debug for MqttSettings {
    /// The password is never printed; the transport shows only whether it is TLS.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field(
                "transport",
                &match self.transport {
                    None => "tcp",
                    Some(rumqttc::Transport::Tcp) => "tcp",
                    Some(_) => "other (tls)",
                },
            )
            .field(
                "username",
                &self.credentials.as_ref().map(|(username, _)| username),
            )
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("subscriptions", &self.subscriptions)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("keep_alive", &self.keep_alive)
            .field("ack_timeout", &self.ack_timeout)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl MqttSettings {
    /// Defaults for a client id and URL: clean session, no subscriptions, 1 MiB packets.
    pub fn new(url: impl Into<String>, client_id: impl Into<String>) -> Self {
        MqttSettings {
            url: url.into(),
            transport: None,
            credentials: None,
            client_id: client_id.into(),
            clean_session: true,
            subscriptions: Vec::new(),
            max_packet_bytes: 1 << 20,
            keep_alive: Duration::from_secs(15),
            ack_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }

    fn host_port(&self) -> Result<(String, u16), MqttError> {
        let bad = || MqttError::BadUrl(self.url.clone());
        let url = url::Url::parse(&self.url).map_err(|_| bad())?;
        let default_port = match url.scheme() {
            "mqtt" | "tcp" => 1883,
            "mqtts" | "ssl" if self.transport.is_some() => 8883,
            _ => return Err(bad()),
        };
        let host = url.host_str().ok_or_else(bad)?.to_owned();
        Ok((host, url.port().unwrap_or(default_port)))
    }
}

/// A message received on a subscription, to be acknowledged with [`MqttHandle::ack`] once it
/// has been stored.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    /// The topic.
    pub topic: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// Whether the broker marked it retained.
    pub retained: bool,
    publish: rumqttc::Publish,
    generation: u64,
}

enum Command {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        done: oneshot::Sender<Result<(), MqttError>>,
    },
    Ack {
        message: Box<IncomingMessage>,
    },
}

/// A cheap, cloneable handle to a running [`MqttSession`].
#[derive(Clone)]
pub struct MqttHandle {
    commands: mpsc::Sender<Command>,
    connected: watch::Receiver<bool>,
    last_error: watch::Receiver<Option<String>>,
    url: Arc<str>,
    ack_timeout: Duration,
}

impl MqttHandle {
    /// Publishes and waits until the broker acknowledged (QoS 1) or the packet was written
    /// (QoS 0). Fails fast with [`MqttError::NotConnected`] while the broker is unreachable.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), MqttError> {
        if !*self.connected.borrow() {
            return Err(MqttError::NotConnected(self.url.to_string()));
        }
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Publish {
                topic: topic.into(),
                payload: payload.into(),
                qos,
                retain,
                done,
            })
            .await
            .map_err(|_| MqttError::Closed)?;
        match tokio::time::timeout(self.ack_timeout, result).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(MqttError::Dropped),
            Err(_) => Err(MqttError::Timeout(self.ack_timeout)),
        }
    }

    /// Acknowledges an incoming QoS 1 message (call after storing it).
    pub async fn ack(&self, message: IncomingMessage) {
        let _ = self
            .commands
            .send(Command::Ack {
                message: Box::new(message),
            })
            .await;
    }

    /// Whether the session is connected right now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Why the last connection attempt failed or the last connection dropped (for example a
    /// TLS certificate the configured CA does not sign), until the next successful connection.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.borrow().clone()
    }

    /// Waits until connected (or until `timeout`); returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The background task that owns the connection.
pub struct MqttSession;

impl MqttSession {
    /// Starts the session task, tracked by `shutdown` (so [`Shutdown::wait`] returns only after
    /// it has disconnected). Returns the handle and the stream of incoming messages (empty
    /// unless `settings.subscriptions` is non-empty). The task ends when `shutdown` is
    /// triggered; code holding only a token passes [`Shutdown::child_of`] it.
    pub fn start(
        settings: MqttSettings,
        shutdown: &Shutdown,
    ) -> Result<(MqttHandle, mpsc::Receiver<IncomingMessage>), MqttError> {
        let cancel = shutdown.token();
        let (host, port) = settings.host_port()?;
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let (incoming_tx, incoming_rx) = mpsc::channel(1024);
        let (connected_tx, connected_rx) = watch::channel(false);
        let (last_error_tx, last_error_rx) = watch::channel(None);
        let handle = MqttHandle {
            commands: commands_tx,
            connected: connected_rx,
            last_error: last_error_rx,
            url: settings.url.clone().into(),
            ack_timeout: settings.ack_timeout,
        };
        let runner = Runner {
            settings,
            host,
            port,
            commands: Arc::new(Mutex::new(commands_rx)),
            incoming: incoming_tx,
            connected: connected_tx,
            last_error: last_error_tx,
            cancel,
        };
        shutdown.spawn(runner.run());
        Ok((handle, incoming_rx))
    }
}

struct Runner {
    settings: MqttSettings,
    host: String,
    port: u16,
    commands: Arc<Mutex<mpsc::Receiver<Command>>>,
    incoming: mpsc::Sender<IncomingMessage>,
    connected: watch::Sender<bool>,
    last_error: watch::Sender<Option<String>>,
    cancel: CancellationToken,
}

/// Publishes waiting for the event loop to assign a packet id, then for the broker's PUBACK.
#[derive(Default)]
struct Waiters {
    unassigned: VecDeque<(QoS, oneshot::Sender<Result<(), MqttError>>)>,
    by_pkid: HashMap<u16, oneshot::Sender<Result<(), MqttError>>>,
}

impl Waiters {
    fn fail_all(&mut self) {
        for (_, done) in self.unassigned.drain(..) {
            let _ = done.send(Err(MqttError::Dropped));
        }
        for (_, done) in self.by_pkid.drain() {
            let _ = done.send(Err(MqttError::Dropped));
        }
    }
}

impl Runner {
    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(&self.settings.client_id, &self.host, self.port);
        options
            .set_keep_alive(self.settings.keep_alive)
            .set_clean_session(self.settings.clean_session)
            .set_max_packet_size(
                self.settings.max_packet_bytes,
                self.settings.max_packet_bytes,
            )
            .set_manual_acks(true);
        if let Some(transport) = &self.settings.transport {
            options.set_transport(transport.clone());
        }
        if let Some((username, password)) = &self.settings.credentials {
            options.set_credentials(username, password);
        }
        options
    }

    async fn run(self) {
        let mut backoff = self.settings.min_backoff;
        let mut generation = 0u64;
        loop {
            generation += 1;
            let (client, eventloop) = AsyncClient::new(self.options(), 256);
            let connected_once = self.drive(client, eventloop, generation).await;
            let _ = self.connected.send(false);
            if self.cancel.is_cancelled() {
                return;
            }
            if connected_once {
                backoff = self.settings.min_backoff;
            }
            tracing::warn!(
                broker = %self.settings.url,
                error = self.last_error.borrow().as_deref().unwrap_or("-"),
                retry_in = ?backoff,
                "MQTT broker unreachable or connection lost; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }

    /// Drives one connection until it fails or shutdown. Returns whether it ever connected.
    async fn drive(&self, client: AsyncClient, mut eventloop: EventLoop, generation: u64) -> bool {
        let mut waiters = Waiters::default();
        let mut connected_once = false;
        let mut commands = self.commands.lock().await;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let _ = client.disconnect().await;
                    waiters.fail_all();
                    return connected_once;
                }
                command = commands.recv(), if connected_once => {
                    let Some(command) = command else {
                        waiters.fail_all();
                        return connected_once;
                    };
                    match command {
                        Command::Publish { topic, payload, qos, retain, done } => {
                            // try_publish keeps the loop from deadlocking on a full request queue.
                            match client.try_publish(topic, qos, retain, payload) {
                                Ok(()) => waiters.unassigned.push_back((qos, done)),
                                Err(_) => { let _ = done.send(Err(MqttError::Dropped)); }
                            }
                        }
                        Command::Ack { message } => {
                            if message.generation == generation {
                                let _ = client.try_ack(&message.publish);
                            }
                        }
                    }
                }
                event = eventloop.poll() => {
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected_once = true;
                            for filter in &self.settings.subscriptions {
                                if client.try_subscribe(filter.clone(), QoS::AtLeastOnce).is_err() {
                                    tracing::error!(filter, "could not queue MQTT subscription");
                                }
                            }
                            let _ = self.connected.send(true);
                            let _ = self.last_error.send(None);
                            tracing::info!(broker = %self.settings.url, "connected to MQTT broker");
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let message = IncomingMessage {
                                topic: publish.topic.clone(),
                                payload: publish.payload.to_vec(),
                                retained: publish.retain,
                                publish,
                                generation,
                            };
                            if self.incoming.send(message).await.is_err() {
                                tracing::debug!("incoming MQTT message dropped: nobody listens");
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            if let Some(done) = waiters.by_pkid.remove(&ack.pkid) {
                                let _ = done.send(Ok(()));
                            }
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            if let Some((qos, done)) = waiters.unassigned.pop_front() {
                                if qos == QoS::AtMostOnce {
                                    let _ = done.send(Ok(()));
                                } else {
                                    waiters.by_pkid.insert(pkid, done);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(%error, "MQTT connection error");
                            let _ = self.last_error.send(Some(error.to_string()));
                            waiters.fail_all();
                            return connected_once;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the session task was spawned untracked, so `Shutdown::stop` returned while it
    /// still ran (and could still hold the connection).
    #[tokio::test]
    async fn the_session_task_is_tracked_by_the_shutdown() {
        let shutdown = Shutdown::new();
        let (handle, _incoming) = MqttSession::start(
            MqttSettings::new("mqtt://127.0.0.1:1", "tracked"),
            &shutdown,
        )
        .unwrap();
        assert!(!handle.commands.is_closed());
        shutdown.stop().await;
        assert!(
            handle.commands.is_closed(),
            "stop returned before the session task ended"
        );
    }
}
