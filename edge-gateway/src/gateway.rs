//! Wiring: the library entry point [`run`] starts the pipeline
//! reader → accountant → signer/outbox → uplink (bounded channels between the tasks), the
//! MQTT session and device router, the bidding agent and the health server, all on one
//! [`Shutdown`].

use crate::accountant::{Accountant, AccountantSettings, ClosedInterval};
use crate::config::{GatewayConfig, Role, Transport};
use crate::outbox::{Outbox, OutboxError, Stored};
use crate::reader::{Device, poll_all};
use crate::sample::{Channel, Sample};
use crate::status::Status;
use crate::uplink::Uplink;
use chrono::{DateTime, Utc};
use gridmesh_protocol::keys::{KeyFileError, SigningKeyPair};
use gridmesh_protocol::reading::ReadingFlags;
use gridmesh_protocol::signing::PublicKey;
use gridmesh_protocol::{Interval, Reading, SignedEnvelope, topics};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::mqtt::{MqttHandle, MqttSession, MqttSettings};
use gridmesh_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The key file is missing, unreadable or too open.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The MQTT settings are invalid.
    #[error("{0}")]
    Mqtt(String),
    /// The health port could not be bound.
    #[error(
        "cannot listen on {addr} for /healthz and /metrics: {source}. Choose another health_listen port"
    )]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A running gateway.
#[derive(Debug, Clone)]
pub struct RunningGateway {
    /// Where `/healthz` and `/metrics` are served.
    pub health_addr: SocketAddr,
    /// The key that signs readings and orders.
    pub public_key: PublicKey,
    /// Live status.
    pub status: Arc<Status>,
}

/// A key to sign with: loaded from `config.key_path`, or given in code.
pub enum KeySource {
    /// Load the file at `config.key_path` (refusing a world-readable one).
    File,
    /// Use this key.
    Key(Box<SigningKeyPair>),
}

/// Starts the gateway with the key from `config.key_path` and returns once every task runs.
///
/// Bind `health_listen` to `127.0.0.1:0` when several gateways share a process; the bound
/// address is in [`RunningGateway::health_addr`]. `shutdown.wait()` stops every task after
/// in-flight writes complete.
pub async fn run(
    config: GatewayConfig,
    clock: Clock,
    shutdown: Shutdown,
) -> Result<RunningGateway, GatewayError> {
    run_with_key(config, KeySource::File, clock, shutdown).await
}

/// Which channels a set of devices provides.
pub fn expected_channels(config: &GatewayConfig) -> Vec<Channel> {
    let mut out = Vec::new();
    for d in &config.devices {
        match d.role {
            Role::GridMeter => out.extend([Channel::GridImport, Channel::GridExport]),
            Role::Inverter => out.push(Channel::Pv),
            Role::Battery => out.extend([Channel::BatteryCharge, Channel::BatteryDischarge]),
        }
    }
    out
}

/// Whether the system clock is NTP-synchronised (always true for a simulated clock).
fn clock_synced(clock: &Clock) -> bool {
    if clock.speed() != 1.0 {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: adjtimex with modes = 0 only reads the kernel's clock state.
        let mut t: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut t) };
        state >= 0 && state != libc::TIME_ERROR
    }
    #[cfg(not(target_os = "linux"))]
    true
}

/// Starts the gateway with an explicit key source.
pub async fn run_with_key(
    config: GatewayConfig,
    key: KeySource,
    clock: Clock,
    shutdown: Shutdown,
) -> Result<RunningGateway, GatewayError> {
    config.validate()?;
    let key = match key {
        KeySource::File => SigningKeyPair::load(&config.key_path)?,
        KeySource::Key(k) => *k,
    };
    let status = Arc::new(Status::default());
    let outbox = Outbox::open(&config.outbox_path, config.outbox_cap_bytes).await?;
    let resume = outbox.resume().await?;

    // MQTT: readings uplink plus MQTT devices.
    let mut devices: Vec<Device> = config
        .devices
        .iter()
        .map(|d| Device::new(d.clone(), Duration::from_millis(config.modbus_timeout_ms)))
        .collect();
    let mqtt = match &config.mqtt.url {
        Some(url) => {
            let mut settings = MqttSettings::new(url.clone(), config.mqtt_client_id());
            settings.ack_timeout = Duration::from_secs(5);
            settings.max_backoff = Duration::from_secs(10);
            settings.subscriptions = devices
                .iter()
                .filter(|d| d.config().transport == Transport::Mqtt)
                .flat_map(|d| crate::mqtt_devices::subscriptions(d.config()))
                .collect();
            let (handle, incoming) = MqttSession::start(settings, shutdown.token())
                .map_err(|e| GatewayError::Mqtt(e.to_string()))?;
            let routes: Vec<(crate::config::DeviceConfig, Arc<Mutex<_>>)> = devices
                .iter()
                .filter_map(|d| match d {
                    Device::Mqtt(m) => Some((m.config.clone(), m.state.clone())),
                    _ => None,
                })
                .collect();
            shutdown.spawn(route_mqtt(
                incoming,
                handle.clone(),
                routes,
                clock.clone(),
                status.clone(),
            ));
            Some(handle)
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(&config.health_listen)
        .await
        .map_err(|source| GatewayError::Listen {
            addr: config.health_listen.clone(),
            source,
        })?;
    let health_addr = listener
        .local_addr()
        .map_err(|source| GatewayError::Listen {
            addr: config.health_listen.clone(),
            source,
        })?;
    let router = crate::health::router(status.clone());
    let token = shutdown.token();
    shutdown.spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
    });

    let wake = Arc::new(Notify::new());
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let uplink = Uplink {
        outbox: outbox.clone(),
        mqtt: mqtt.clone(),
        topic: topics::readings(&config.gateway_id),
        settlement_url: config.settlement_url.clone(),
        http: http.clone(),
        status: status.clone(),
        wake: wake.clone(),
    };
    shutdown.spawn(uplink.run(shutdown.token()));

    let interval_ms = config.interval_length().seconds() * 1000;
    let settings = AccountantSettings {
        length: config.interval_length(),
        tolerance_ms: (clock_ms(&clock, config.poll_ms) * 3 + 2_000).min(interval_ms / 4),
        grace_ms: (interval_ms / 10).max(clock_ms(&clock, config.modbus_timeout_ms) * 4),
        stale_ms: (config.stale_after_s as i64) * 1000,
    };
    let accountant = Accountant::new(settings, &expected_channels(&config), resume.as_ref());
    let soc = Arc::new(Mutex::new(None::<u16>));
    let (samples_tx, samples_rx) = mpsc::channel::<Cycle>(16);
    let (steer_tx, steer_rx) = mpsc::channel::<i64>(4);

    shutdown.spawn(reader_task(
        std::mem::take(&mut devices),
        config.clone(),
        clock.clone(),
        samples_tx,
        steer_rx,
        status.clone(),
        shutdown.clone(),
    ));
    let signer = Signer {
        config: config.clone(),
        key: key.clone(),
        outbox: outbox.clone(),
        clock: clock.clone(),
        synced: clock_synced(&clock),
        started: tokio::time::Instant::now(),
        operating_base: outbox.meta_int("operating_seconds").await?,
        clock_set_count: outbox.meta_int("clock_set_count").await?,
    };
    shutdown.spawn(accountant_task(
        accountant,
        samples_rx,
        signer,
        wake,
        status.clone(),
        soc.clone(),
        shutdown.token(),
    ));
    if config.agent.enabled
        && let Some(market) = config.market_url.clone()
    {
        shutdown.spawn(crate::agent_loop::run(crate::agent_loop::AgentTask {
            config: config.clone(),
            market,
            key: key.clone(),
            outbox: outbox.clone(),
            clock: clock.clone(),
            http,
            status: status.clone(),
            soc,
            steer: steer_tx,
            cancel: shutdown.token(),
        }));
    }
    if let Some(handle) = &mqtt {
        let status = status.clone();
        let handle: MqttHandle = handle.clone();
        let token = shutdown.token();
        shutdown.spawn(async move {
            loop {
                status.update(|s| s.mqtt_connected = handle.is_connected());
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }
    tracing::info!(gateway = %config.gateway_id, %health_addr, public_key = %key.public_key(), "gateway running");
    Ok(RunningGateway {
        health_addr,
        public_key: key.public_key(),
        status,
    })
}

/// Simulated milliseconds in `real_ms` real milliseconds.
fn clock_ms(clock: &Clock, real_ms: u64) -> i64 {
    (real_ms as f64 * clock.speed()) as i64
}

/// One poll cycle's samples.
struct Cycle {
    now: DateTime<Utc>,
    samples: Vec<Sample>,
    clock_step: bool,
}

async fn route_mqtt(
    mut incoming: mpsc::Receiver<gridmesh_runtime::mqtt::IncomingMessage>,
    handle: MqttHandle,
    routes: Vec<(
        crate::config::DeviceConfig,
        Arc<Mutex<crate::mqtt_devices::MqttDeviceState>>,
    )>,
    clock: Clock,
    status: Arc<Status>,
) {
    while let Some(message) = incoming.recv().await {
        let now = clock.now().timestamp_millis();
        for (device, state) in &routes {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            if s.apply(device, &message.topic, &message.payload, now) {
                drop(s);
                status.device_polled(&device.name, None);
            }
        }
        handle.ack(message).await;
    }
}

/// Whether the wall clock moved by `actual_s` while monotonic time says `expected_s` passed
/// (both in simulated seconds): more than 2 s plus 5% apart is a step (NTP slews stay below).
pub fn clock_stepped(expected_s: f64, actual_s: f64) -> bool {
    (actual_s - expected_s).abs() > 2.0 + expected_s.abs() * 0.05
}

async fn reader_task(
    mut devices: Vec<Device>,
    config: GatewayConfig,
    clock: Clock,
    out: mpsc::Sender<Cycle>,
    mut steer: mpsc::Receiver<i64>,
    status: Arc<Status>,
    shutdown: Shutdown,
) {
    let poll = Duration::from_millis(config.poll_ms);
    let length = config.interval_length();
    let stale_ms = config.stale_after_s as i64 * 1000;
    let mut last: Option<(DateTime<Utc>, tokio::time::Instant)> = None;
    let mut healthy = std::collections::HashMap::<String, bool>::new();
    loop {
        let now = clock.now();
        // Detect a clock step: wall time moving differently from monotonic time.
        let mut clock_step = false;
        if let Some((wall, mono)) = last {
            let expected = mono.elapsed().as_secs_f64() * clock.speed();
            let actual = (now - wall).num_milliseconds() as f64 / 1000.0;
            if clock_stepped(expected, actual) {
                clock_step = true;
                status.update(|s| s.clock_steps += 1);
                tracing::warn!(
                    expected_s = expected,
                    actual_s = actual,
                    "the clock stepped; the interval is flagged"
                );
            }
        }
        last = Some((now, tokio::time::Instant::now()));
        let samples = poll_all(&mut devices, &clock, stale_ms).await;
        for s in &samples {
            status.device_polled(&s.device, s.values.as_ref().err().cloned());
            // Log state changes once, not every poll.
            let was_ok = healthy.insert(s.device.clone(), s.values.is_ok());
            match (&s.values, was_ok) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(device = %s.device, error = %e, "device cannot be read; retrying with backoff")
                }
                (Ok(_), Some(false)) => tracing::info!(device = %s.device, "device answers again"),
                (Err(e), Some(false)) => {
                    tracing::debug!(device = %s.device, error = %e, "poll failed")
                }
                _ => {}
            }
        }
        if out
            .send(Cycle {
                now,
                samples,
                clock_step,
            })
            .await
            .is_err()
        {
            return;
        }
        // Sleep until the next poll, or exactly until the next boundary if that comes first.
        let boundary = Interval::containing(clock.now(), length).end();
        let to_boundary = clock.real_duration(boundary - clock.now());
        let wait = poll.min(to_boundary + Duration::from_millis(1));
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = tokio::time::sleep(wait) => {}
            Some(watts) = steer.recv() => {
                for d in devices.iter_mut() {
                    if let Device::Modbus(m) = d && m.config.role == Role::Battery {
                        match m.steer(watts, length.seconds().min(i64::from(u16::MAX)) as u16).await {
                            Ok(()) => tracing::info!(device = %m.config.name, watts, "battery steered"),
                            Err(e) => tracing::warn!(error = %e, "battery steering failed"),
                        }
                    }
                }
            }
        }
    }
}

/// Builds, signs and stores readings.
struct Signer {
    config: GatewayConfig,
    key: SigningKeyPair,
    outbox: Outbox,
    clock: Clock,
    synced: bool,
    started: tokio::time::Instant,
    operating_base: i64,
    clock_set_count: i64,
}

impl Signer {
    fn reading(&self, closed: &ClosedInterval, sequence: u64) -> Reading {
        let operating = self.operating_base
            + (self.started.elapsed().as_secs_f64() * self.clock.speed()) as i64;
        Reading {
            gateway: self.config.gateway_id.clone(),
            device: self.config.device_set.clone(),
            firmware: self.config.firmware.clone(),
            sequence,
            interval: closed.interval,
            measured_at: DateTime::from_timestamp_millis(closed.measured_at.timestamp_millis())
                .unwrap_or_default(),
            clock_synced: self.synced,
            clock_set_count: self.clock_set_count as u32,
            operating_seconds: operating.max(0) as u64,
            registers: closed.registers,
            deltas: closed.deltas,
            soc_permille: closed.soc_permille,
            flags: closed.flags,
        }
    }

    async fn store(&mut self, closed: &ClosedInterval) -> Result<Stored, OutboxError> {
        if closed.flags.contains(ReadingFlags::CLOCK_STEP) {
            self.clock_set_count += 1;
            self.outbox
                .set_meta_int("clock_set_count", self.clock_set_count)
                .await?;
        }
        let stored = self
            .outbox
            .store(
                |seq| self.reading(closed, seq),
                &self.key,
                &closed.resume,
                self.clock.now().timestamp_millis(),
            )
            .await?;
        if let Stored::New(b) = &stored {
            let r = &b.0;
            self.outbox
                .set_meta_int("operating_seconds", r.operating_seconds as i64)
                .await?;
        }
        Ok(stored)
    }
}

async fn accountant_task(
    mut accountant: Accountant,
    mut cycles: mpsc::Receiver<Cycle>,
    mut signer: Signer,
    wake: Arc<Notify>,
    status: Arc<Status>,
    soc: Arc<Mutex<Option<u16>>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    // Runs until the reader stops sending (shutdown), so a closed interval is always stored.
    while let Some(cycle) = cycles.recv().await {
        if cycle.clock_step {
            accountant.flag(cycle.now, ReadingFlags::CLOCK_STEP);
        }
        for sample in &cycle.samples {
            accountant.feed(sample);
            if let Ok(v) = &sample.values
                && let Some(s) = v.soc_permille
            {
                *soc.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
            }
        }
        for closed in accountant.close_ready(cycle.now) {
            let mut attempt = 0;
            loop {
                match signer.store(&closed).await {
                    Ok(Stored::New(b)) => {
                        let (reading, envelope) = *b;
                        tracing::info!(
                            interval = %reading.interval,
                            sequence = reading.sequence,
                            flags = ?reading.flags.names(),
                            digest = %envelope.digest_hex(),
                            "reading signed and stored"
                        );
                        let depth = signer.outbox.depth().await.unwrap_or_default();
                        status.update(|s| {
                            (s.outbox_count, s.outbox_bytes) = depth;
                            s.readings_signed += 1;
                            s.last_interval = Some(reading.interval.key());
                            s.last_sequence = Some(reading.sequence);
                        });
                        wake.notify_one();
                        break;
                    }
                    Ok(Stored::AlreadySigned) => break,
                    Err(error) if cancel.is_cancelled() => {
                        tracing::error!(%error, interval = %closed.interval, "shutting down with a reading that could not be stored; it will be re-measured (interpolated) after restart");
                        break;
                    }
                    Err(error) => {
                        attempt += 1;
                        tracing::error!(%error, attempt, "cannot store a reading; retrying (is the disk full?)");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

/// Signs an envelope for tests and tools (a reading with the gateway's key).
pub fn sign_reading(reading: &Reading, key: &SigningKeyPair) -> SignedEnvelope {
    SignedEnvelope::sign(reading, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_steps_are_told_from_slew_and_jitter() {
        assert!(!clock_stepped(1.0, 1.0));
        assert!(!clock_stepped(1.0, 1.5));
        assert!(!clock_stepped(100.0, 104.0));
        assert!(clock_stepped(1.0, 3600.0));
        assert!(clock_stepped(1.0, -5.0));
        assert!(clock_stepped(100.0, 110.0));
    }
}
