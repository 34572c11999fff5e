//! Wiring: the library entry point [`run`] starts the pipeline
//! reader → accountant → signer/outbox → uplink (bounded channels between the tasks), the
//! MQTT session and device router, the bidding agent and the health server, all on one
//! [`Shutdown`].

use crate::accountant::{Accountant, AccountantSettings, ClosedInterval};
use crate::agent_loop::SteerRequest;
use crate::config::{GatewayConfig, Role, Transport};
use crate::control::{ControlLoop, ControlSettings, PvCommand};
use crate::envelope::Intake;
use crate::outbox::{Outbox, OutboxError, Stored};
use crate::reader::{Device, poll_all};
use crate::sample::{Channel, Sample};
use crate::status::Status;
use crate::uplink::Uplink;
use chrono::{DateTime, Utc};
use gridmesh_protocol::envelope::ControlStatus;
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
use tokio::sync::{Notify, mpsc, watch};

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
    /// A TLS file (CA, client certificate or key, broker password) cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The HTTP client for settlement and the market could not be built.
    #[error(
        "cannot set up the HTTP client for settlement and the market: {0}. This is a build or system problem (TLS or resolver setup), not a config mistake"
    )]
    Http(reqwest::Error),
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
    /// The local page's port could not be bound.
    #[error(
        "cannot listen on {addr} for the local page: {source}. Choose another [local_page] listen address"
    )]
    LocalPage {
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
    /// Where the homeowner's local page is served (when `[local_page]` has a password hash).
    pub local_page_addr: Option<SocketAddr>,
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
/// address is in [`RunningGateway::health_addr`]. `shutdown.stop()` stops every task after
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
    let intake = Arc::new(Intake::new(&config, status.clone()));
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
            settings.transport = crate::tls::mqtt_transport(&config)?;
            settings.credentials = crate::tls::mqtt_credentials(&config)?;
            settings.ack_timeout = Duration::from_secs(5);
            settings.max_backoff = Duration::from_secs(10);
            settings.subscriptions = devices
                .iter()
                .filter(|d| d.config().transport == Transport::Mqtt)
                .flat_map(|d| crate::mqtt_devices::subscriptions(d.config()))
                .collect();
            let envelope_topic = intake.can_verify().then(|| crate::envelope::topic(&config));
            settings.subscriptions.extend(envelope_topic.clone());
            let (handle, incoming) = MqttSession::start(settings, &shutdown)
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
                envelope_topic.map(|t| (t, intake.clone())),
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
        let options = gridmesh_runtime::http::ServeOptions::default();
        if let Err(error) = gridmesh_runtime::http::serve(listener, router, &options, token).await {
            tracing::error!(%error, "health server failed");
        }
    });

    let local_page_addr =
        match crate::local_page::PageState::new(&config, status.clone(), clock.clone()) {
            Some(page) => {
                let addr = config.local_page.listen.clone();
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .map_err(|source| GatewayError::LocalPage {
                        addr: addr.clone(),
                        source,
                    })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| GatewayError::LocalPage { addr, source })?;
                let router = crate::local_page::router(page);
                let token = shutdown.token();
                shutdown.spawn(async move {
                    let options = gridmesh_runtime::http::ServeOptions::default();
                    if let Err(error) =
                        gridmesh_runtime::http::serve(listener, router, &options, token).await
                    {
                        tracing::error!(%error, "local page server failed");
                    }
                });
                tracing::info!(addr = %bound, "local page listening");
                Some(bound)
            }
            None => None,
        };

    let wake = Arc::new(Notify::new());
    let http = configured_http_client(&config)?;
    if config.local_page.enabled() || config.home_assistant.url.is_some() {
        let fetcher = crate::local_page::fetch::Fetcher {
            market_url: config.market_url.clone(),
            settlement_url: config.settlement_url.clone(),
            gateway: config.gateway_id.clone(),
            participant: config.participant.clone(),
            node: config.node.clone(),
            key: key.clone(),
            http: http.clone(),
            clock: clock.clone(),
            length: config.interval_length(),
            status: status.clone(),
            period: Duration::from_millis(config.poll_ms.clamp(1_000, 5_000)),
        };
        shutdown.spawn(fetcher.run(shutdown.token()));
    }
    if config.home_assistant.url.is_some() {
        let publisher = crate::home_assistant::Publisher {
            config: config.home_assistant.clone(),
            gateway: config.gateway_id.to_string(),
            participant: config.participant.to_string(),
            status: status.clone(),
            clock: clock.clone(),
        };
        shutdown.spawn(publisher.run(shutdown.token()));
    }
    let uplink = Uplink {
        outbox: outbox.clone(),
        mqtt: mqtt.clone(),
        topic: topics::readings(&config.gateway_id),
        settlement_url: config.settlement_url.clone(),
        http: http.clone(),
        status: status.clone(),
        wake: wake.clone(),
        auth: Some(crate::uplink::UploadAuth {
            gateway: config.gateway_id.clone(),
            key: key.clone(),
        }),
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
    let (steer_tx, steer_rx) = mpsc::channel::<SteerRequest>(4);
    let (control_tx, control_rx) = watch::channel(None::<ControlStatus>);

    if intake.can_verify()
        && let Some(market) = config.market_url.clone()
    {
        shutdown.spawn(crate::envelope::poll_market(
            intake.clone(),
            http.clone(),
            market,
            key.clone(),
            clock.clone(),
            crate::envelope::http_period(config.poll_ms),
            shutdown.token(),
        ));
    }
    if let Some(handle) = &mqtt {
        shutdown.spawn(publish_control(
            handle.clone(),
            topics::gateway_control(&config.gateway_id),
            control_rx,
            Duration::from_millis(config.poll_ms.max(250)),
            shutdown.token(),
        ));
    }
    shutdown.spawn(reader_task(
        std::mem::take(&mut devices),
        config.clone(),
        clock.clone(),
        samples_tx,
        Control {
            intake: intake.clone(),
            steer: steer_rx,
            published: control_tx,
        },
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
            intake: intake.clone(),
            cancel: shutdown.token(),
        }));
    }
    if let Some(handle) = &mqtt {
        let status = status.clone();
        let handle: MqttHandle = handle.clone();
        let token = shutdown.token();
        let trust = crate::tls::Trust::mqtt(&config);
        shutdown.spawn(async move {
            let mut reported = None;
            loop {
                let connected = handle.is_connected();
                let error = (!connected)
                    .then(|| handle.last_error())
                    .flatten()
                    .map(|e| crate::tls::explain(&e, &trust));
                if error.is_some() && error != reported {
                    tracing::error!(
                        error = error.as_deref().unwrap_or(""),
                        "cannot connect to the MQTT broker"
                    );
                }
                reported.clone_from(&error);
                status.update(|s| {
                    s.mqtt_connected = connected;
                    s.mqtt_error = error;
                });
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }
    tracing::info!(gateway = %config.gateway_id, %health_addr, public_key = %key.public_key(), "gateway running");
    match &config.zone {
        Some(zone) => {
            tracing::info!(%zone, "readings are signed for the market zone (gridmesh/reading/v2)")
        }
        None => tracing::warn!(
            "no `zone` in the config: readings are signed in the legacy v1 layout, which names no market zone; settlement with a zone configured holds them as flagged until an operator accepts them. Set zone = \"...\" (edge-gateway enroll prints it)"
        ),
    }
    Ok(RunningGateway {
        health_addr,
        public_key: key.public_key(),
        status,
        local_page_addr,
    })
}

/// How long the gateway waits to connect to settlement or the market.
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP client for settlement and the market, with [`HTTP_CONNECT_TIMEOUT`]. A client that
/// cannot be built is an error: falling back to a default client would lose the timeout.
pub fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, GatewayError> {
    builder
        .connect_timeout(HTTP_CONNECT_TIMEOUT)
        .build()
        .map_err(GatewayError::Http)
}

/// [`http_client`] with the TLS trust of `[tls] ca_file` (or the built-in roots): the client
/// for `https://` settlement and market URLs (plain `http://` works with it too).
pub fn configured_http_client(config: &GatewayConfig) -> Result<reqwest::Client, GatewayError> {
    http_client(reqwest::Client::builder().use_preconfigured_tls(crate::tls::http_config(config)?))
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
    envelopes: Option<(String, Arc<Intake>)>,
    clock: Clock,
    status: Arc<Status>,
) {
    while let Some(message) = incoming.recv().await {
        if let Some((topic, intake)) = &envelopes
            && &message.topic == topic
        {
            intake.offer_json(&message.payload, "mqtt", clock.now());
            handle.ack(message).await;
            continue;
        }
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

/// Publishes the control status (retained, QoS 1) when it changes, at most once per `period`.
async fn publish_control(
    handle: MqttHandle,
    topic: String,
    mut status: watch::Receiver<Option<ControlStatus>>,
    period: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut published: Option<ControlStatus> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
        let current = status.borrow_and_update().clone();
        if let Some(current) = current
            && published.as_ref() != Some(&current)
        {
            let payload = serde_json::to_vec(&current).expect("a status serialises");
            match handle
                .publish(&topic, payload, rumqttc::QoS::AtLeastOnce, true)
                .await
            {
                Ok(()) => published = Some(current),
                Err(e) => tracing::debug!(error = %e, "control status not published"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// What the reader needs for the control loop.
struct Control {
    intake: Arc<Intake>,
    steer: mpsc::Receiver<SteerRequest>,
    published: watch::Sender<Option<ControlStatus>>,
}

/// Whether PV can be curtailed, and why not, from the inverters' discovered models.
fn curtailment_availability(devices: &[Device], config: &GatewayConfig) -> Option<(bool, String)> {
    let inverters: Vec<&crate::reader::ModbusDevice> = devices
        .iter()
        .filter_map(|d| match d {
            Device::Modbus(m) if m.config.role == Role::Inverter => Some(&**m),
            _ => None,
        })
        .collect();
    if inverters.is_empty() {
        let any = config.devices.iter().any(|d| d.role == Role::Inverter);
        return Some((
            false,
            if any {
                "the inverter is read over MQTT, which offers no control: PV cannot be curtailed"
                    .into()
            } else {
                "no inverter is configured: PV cannot be curtailed".into()
            },
        ));
    }
    if let Some(m) = inverters.iter().find(|m| m.immediate_controls().is_some()) {
        if config.site.inverter_w == 0 {
            return Some((
                false,
                format!(
                    "inverter `{}` offers SunSpec model 123, but site.inverter_w is 0: set the inverter's rated power so limits can be computed",
                    m.config.name
                ),
            ));
        }
        return Some((
            true,
            format!("inverter `{}` offers SunSpec model 123", m.config.name),
        ));
    }
    let discovered: Vec<_> = inverters.iter().filter_map(|m| m.models()).collect();
    if discovered.len() < inverters.len() {
        return None;
    }
    Some((
        false,
        format!(
            "the inverter offers SunSpec models {:?} but not 123 (immediate controls): PV cannot be curtailed, only the battery is used",
            discovered
                .iter()
                .flat_map(|m| m.iter().map(|h| h.id))
                .collect::<Vec<_>>()
        ),
    ))
}

/// Whether some battery can be steered (a Modbus battery with model 124).
fn battery_steerable(devices: &[Device]) -> bool {
    devices.iter().any(|d| {
        matches!(d, Device::Modbus(m) if m.config.role == Role::Battery
            && m.models().is_some_and(|ms| ms.iter().any(|h| h.id == 124)))
    })
}

async fn reader_task(
    mut devices: Vec<Device>,
    config: GatewayConfig,
    clock: Clock,
    out: mpsc::Sender<Cycle>,
    mut control: Control,
    status: Arc<Status>,
    shutdown: Shutdown,
) {
    let poll = Duration::from_millis(config.poll_ms);
    let length = config.interval_length();
    let stale_ms = config.stale_after_s as i64 * 1000;
    let mut last: Option<(DateTime<Utc>, tokio::time::Instant)> = None;
    let mut healthy = std::collections::HashMap::<String, bool>::new();
    let started = tokio::time::Instant::now();
    let revert_s = config.control.revert_secs;
    let mut control_loop = ControlLoop::new(
        config.gateway_id.clone(),
        length,
        ControlSettings {
            rating_w: i64::from(config.site.inverter_w),
            battery_w: i64::from(config.site.battery_w),
            revert_s,
            min_write_interval_ms: config.control.min_write_interval_ms,
        },
        config.control.enabled,
    );
    let mut steer_request: Option<SteerRequest> = None;
    let mut availability: Option<(bool, String)> = None;
    let mut last_pv: Option<PvCommand> = None;
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
        status.update(|s| s.live.observe(&samples));
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
        // The control loop, at the poll rate.
        let found = curtailment_availability(&devices, &config);
        if found.is_some() && found != availability {
            if let Some((ok, note)) = &found {
                if *ok {
                    tracing::info!(%note, "PV curtailment available");
                } else {
                    tracing::warn!(%note, "PV curtailment unavailable");
                }
                status.update(|s| {
                    s.pv_curtailment_available = Some(*ok);
                    s.pv_curtailment_note = (!ok).then(|| note.clone());
                });
            }
            availability = found;
        }
        let now_c = clock.now();
        let mut observed = crate::control::observe(&samples);
        if !battery_steerable(&devices) {
            observed.battery_w = None;
        }
        if availability.as_ref().is_some_and(|(ok, _)| !ok) {
            observed.pv_limit = None;
        }
        let request_now = steer_request
            .as_ref()
            .filter(|r| r.interval.contains(now_c));
        let steer_w = request_now.map_or(0, |r| (-r.watts).max(0));
        // Export that would cost money (feed-in ≤ 0) beyond the cleared sales is curtailed.
        let in_force = crate::agent::unpaid_export_curtailed(
            control.intake.in_force(now_c),
            config.agent.feed_in_price,
            request_now.map_or(gridmesh_protocol::Wh(0), |r| r.sold),
        );
        let outcome = control_loop.step(
            now_c,
            started.elapsed().as_millis() as u64,
            in_force,
            &observed,
            steer_w,
        );
        if let Some(pv) = outcome.commands.pv {
            let target = outcome.pv_device.as_deref().and_then(|name| {
                devices.iter_mut().find_map(|d| match d {
                    Device::Modbus(m) if m.config.name == name => Some(m),
                    _ => None,
                })
            });
            if let Some(m) = target {
                let (pct, sf) = match pv {
                    PvCommand::Limit { pct_milli, sf, .. } => (Some(pct_milli), sf),
                    PvCommand::Release => (None, 0),
                };
                match m.write_pv_limit(pct, sf, revert_s).await {
                    Ok(()) => {
                        status.update(|s| s.control_writes += 1);
                        if last_pv == Some(pv) {
                            tracing::debug!(device = %m.config.name, ?pv, "PV limit refreshed");
                        } else {
                            tracing::info!(device = %m.config.name, ?pv, allowed_export_w = control_loop.controller().allowed_export_w(), "PV limit written");
                        }
                        last_pv = Some(pv);
                    }
                    Err(e) => {
                        control_loop.controller().pv_write_failed();
                        status.update(|s| s.control_write_errors += 1);
                        tracing::warn!(error = %e, "cannot write the PV limit; retrying");
                    }
                }
            }
        }
        if let Some(watts) = outcome.commands.battery {
            let mut ok = false;
            for d in devices.iter_mut() {
                if let Device::Modbus(m) = d
                    && m.config.role == Role::Battery
                {
                    match m.steer(-watts, revert_s).await {
                        Ok(()) => {
                            ok = true;
                            status.update(|s| s.control_writes += 1);
                            tracing::info!(device = %m.config.name, discharge_w = watts, "battery set");
                        }
                        Err(e) => {
                            status.update(|s| s.control_write_errors += 1);
                            tracing::warn!(error = %e, "battery control failed");
                        }
                    }
                }
            }
            if !ok {
                control_loop.controller().battery_write_failed();
            }
        }
        if let Some((closed, exceeded)) = outcome.closed {
            if exceeded {
                tracing::warn!(interval = %closed.interval, exported_wh = closed.exported_mwh / 1000, imported_wh = closed.imported_mwh / 1000, "the interval's metered flow exceeded the envelope");
            } else {
                tracing::debug!(interval = %closed.interval, exported_wh = closed.exported_mwh / 1000, "interval inside its envelope");
            }
        }
        let allowed = control_loop.controller().allowed_export_w();
        status.update(|s| {
            s.control = Some(outcome.status.clone());
            s.allowed_export_w = Some(allowed);
        });
        status.update_household(|h| h.control_seen(&outcome.status));
        control.published.send_replace(Some(outcome.status));

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
            Some(request) = control.steer.recv() => {
                if config.control.enabled {
                    // Applied by the control loop, clipped to the envelope.
                    steer_request = Some(request);
                } else {
                    let watts = request.watts;
                    // A request only for the sales (steering off) moves no battery.
                    let steering = config.agent.steer_battery;
                    for d in devices.iter_mut() {
                        if steering && let Device::Modbus(m) = d && m.config.role == Role::Battery {
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
            zone: self.config.zone,
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
                        status.update_household(|h| h.reading_signed(&reading));
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

    #[test]
    fn an_http_client_that_cannot_be_built_is_an_error_not_a_default() {
        assert!(http_client(reqwest::Client::builder()).is_ok());
        // A builder that fails (an invalid header value) must not fall back to a default client
        // without the connect timeout.
        let error = http_client(reqwest::Client::builder().user_agent("bad\nagent")).unwrap_err();
        assert!(matches!(error, GatewayError::Http(_)), "{error}");
        assert!(error.to_string().contains("HTTP client"), "{error}");
    }
}
