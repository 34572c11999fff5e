//! gridmesh settlement: verifies signed meter readings, settles each interval's trades against
//! the energy actually delivered, and mints delivered, matched energy as tokens (1 token = 1 Wh)
//! into a tamper-evident, authority-signed ledger that anyone can audit.
//!
//! Module map (pure core first, I/O at the edges):
//! - [`verify`]: pure reading checks (signature, registered key, sequence, registers, time
//!   window, plausibility incl. a solar-elevation night test);
//! - [`rules`]: pure settlement of one interval (statements, imbalances, envelope excess,
//!   mints);
//! - [`compliance`]: pure operating-envelope compliance, envelope alerts and measured branch
//!   flows;
//! - [`ledger`]: entry bodies, Merkle trees, inclusion proofs, signed block headers;
//! - [`store`]: SQLite/PostgreSQL schema, transactional writes and every SQL statement;
//! - [`service`]: the core that ties them together (ingest, settle, token operations,
//!   queries), one module each;
//! - [`ingest`]: MQTT ingest (QoS 1, persistent session, ack after storing) and the settler loop;
//! - [`sources`]: gateway keys, participant keys and results (signed, when a market key is
//!   configured) from the market (a trait);
//! - [`access`]: who is calling (operator, auditor, a participant's signed request, public)
//!   and what each may read or change;
//! - [`api`]: REST + SSE + `/metrics` + `/openapi.json`;
//! - [`audit`]: `settlement verify`, a full re-check from storage;
//! - [`metrics`]: Prometheus text counters.
//!
//! Invariant: this crate never clears a market or parses Modbus; it trusts only signatures,
//! the market's published results and its own storage.
//!
//! # Example (in-process, as the neighbourhood launcher does)
//! ```no_run
//! # async fn run() -> Result<(), settlement::Error> {
//! use gridmesh_runtime::{clock::Clock, shutdown::Shutdown};
//! let shutdown = Shutdown::new();
//! shutdown.trigger_on_signals();
//! let config = settlement::SettlementConfig {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     database_url: "sqlite://settlement.db".into(),
//!     ..Default::default()
//! };
//! let running = settlement::serve(config, Clock::system(), shutdown.clone()).await?;
//! println!("settlement on http://{}", running.addr);
//! // Runs until Ctrl-C or SIGTERM, then waits for every task.
//! shutdown.wait().await;
//! # Ok(()) }
//! ```

pub mod access;
pub mod api;
pub mod audit;
pub mod compliance;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod monthly;
pub mod rules;
pub mod service;
pub mod sources;
pub mod store;
pub mod verify;

use gridmesh_protocol::keys::{KeyFileError, SigningKeyPair};
use gridmesh_protocol::signing::PublicKey;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use serde::Deserialize;
use service::{CoreSettings, Service};
use sources::{HttpMarket, MarketSource};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The service's configuration (TOML; every field has a default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettlementConfig {
    /// Where the REST API listens (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
    pub database_url: String,
    /// The market-engine's base URL (gateway keys, participants, results); `None` = no polling.
    pub market_url: Option<String>,
    /// The market zone this settlement settles (the market's `zone`). Set: a reading signed
    /// for another zone is quarantined (`wrong_zone`) and a legacy v1 reading, which names no
    /// zone, is held flagged (`unzoned_reading`) until an operator accepts it. `None`: a
    /// single-zone deployment; readings are not checked for their zone (docs/protocol.md,
    /// "Versions still accepted").
    pub zone: Option<gridmesh_protocol::ZoneId>,
    /// The market's public key (base64 ed25519, as its `GET /market-key` serves it). When set,
    /// results are read from `GET /results/signed` and only those signed by this key are
    /// settled; `None` = results are read unsigned and not authenticated (a warning at start).
    pub market_public_key: Option<PublicKey>,
    /// The MQTT broker (`mqtt://host:port`); `None` = REST ingest only.
    pub broker_url: Option<String>,
    /// MQTT client id of the persistent session.
    pub mqtt_client_id: String,
    /// The authority key file that signs blocks (`settlement keygen` makes one); `None` = an
    /// ephemeral key for this run (tests and demos only).
    pub authority_key: Option<PathBuf>,
    /// Seconds after an interval's end before it is settled.
    pub grace_secs: u64,
    /// Readings for intervals that ended longer ago than this are refused.
    pub horizon_secs: u64,
    /// How far a reading's interval end may be ahead of our clock.
    pub max_clock_skew_secs: u64,
    /// The bearer token for operator endpoints; `None` disables them.
    pub operator_token: Option<String>,
    /// The auditor's bearer token: reads every household's data, changes nothing (a write
    /// with it answers 403). `None` = no auditor.
    pub auditor_token: Option<String>,
    /// The bearer token settlement sends with its reads from the market (registrations are
    /// private there: the market's auditor token). `None` = settlement's own `auditor_token`.
    pub market_token: Option<String>,
    /// CA certificates (PEM) trusted for an `https://` `market_url` (no built-in roots).
    pub market_ca_file: Option<PathBuf>,
    /// How often to poll the market, in real seconds.
    pub poll_secs: f64,
    /// The certificate chain (PEM) to serve HTTPS with; set together with `tls_key`. Neither =
    /// plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accelerated time shared with the other services (`[clock]`); absent = the system clock.
    pub clock: Option<gridmesh_runtime::clock::ClockSettings>,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            database_url: "sqlite://settlement.db".into(),
            market_url: Some("http://127.0.0.1:8081".into()),
            zone: None,
            market_public_key: None,
            broker_url: None,
            mqtt_client_id: "gridmesh-settlement".into(),
            authority_key: None,
            grace_secs: 120,
            horizon_secs: 7 * 24 * 3600,
            max_clock_skew_secs: 60,
            operator_token: None,
            auditor_token: None,
            market_token: None,
            market_ca_file: None,
            poll_secs: 2.0,
            tls_cert: None,
            tls_key: None,
            clock: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Loading state failed.
    #[error(transparent)]
    Service(#[from] service::ServiceError),
    /// The authority key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {source} (is another settlement already running?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The MQTT settings are invalid.
    #[error(transparent)]
    Mqtt(#[from] gridmesh_runtime::mqtt::MqttError),
    /// `market_ca_file` cannot be read or holds no certificate.
    #[error("cannot use market_ca_file {path}: {message}")]
    MarketCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `tls_cert`/`tls_key` are half set or cannot be read.
    #[error(transparent)]
    Tls(#[from] gridmesh_runtime::http::ServeError),
}

/// A running settlement service.
pub struct RunningSettlement {
    /// The bound REST address.
    pub addr: SocketAddr,
    /// The authority's public key (signs every block).
    pub authority: PublicKey,
    /// The core, for in-process use.
    pub service: Arc<Service>,
}

impl SettlementConfig {
    fn settings(&self) -> CoreSettings {
        CoreSettings {
            limits: verify::Limits {
                horizon: chrono::Duration::seconds(self.horizon_secs as i64),
                max_clock_skew: chrono::Duration::seconds(self.max_clock_skew_secs as i64),
                zone: self.zone,
            },
            grace: chrono::Duration::seconds(self.grace_secs as i64),
        }
    }
}

/// Starts settlement with the market at `config.market_url` as its source.
pub async fn serve(
    config: SettlementConfig,
    clock: Clock,
    shutdown: Shutdown,
) -> Result<RunningSettlement, Error> {
    let source: Option<Arc<dyn MarketSource>> = match config.market_url.as_deref() {
        None => None,
        Some(u) => {
            let token = config
                .market_token
                .as_deref()
                .or(config.auditor_token.as_deref());
            if token.is_none_or(str::is_empty) {
                tracing::warn!(
                    market = u,
                    "no market_token (or auditor_token) configured: settlement reads the market's registrations without a credential, which a market that keeps them private refuses"
                );
            }
            let mut market = HttpMarket::new(u).with_token(token);
            if let Some(path) = &config.market_ca_file {
                let ca_error = |message: String| Error::MarketCa {
                    path: path.clone(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                market = market.with_ca_pem(&pem).map_err(ca_error)?;
            }
            Some(Arc::new(market) as Arc<dyn MarketSource>)
        }
    };
    serve_with_source(config, clock, shutdown, source).await
}

/// Starts settlement with any source of registrations and results (tests feed one directly).
pub async fn serve_with_source(
    config: SettlementConfig,
    clock: Clock,
    shutdown: Shutdown,
    source: Option<Arc<dyn MarketSource>>,
) -> Result<RunningSettlement, Error> {
    // Refuse to start on a bad certificate or key rather than fail later in the server task.
    let serve_options = gridmesh_runtime::http::ServeOptions::default()
        .with_tls(config.tls_cert.clone(), config.tls_key.clone())?;
    serve_options.check()?;
    let authority = match &config.authority_key {
        Some(path) => SigningKeyPair::load(path)?,
        None => {
            tracing::warn!("no authority_key configured: blocks are signed with an ephemeral key");
            SigningKeyPair::generate()
        }
    };
    let db = store::open(&config.database_url).await?;
    let mut service = Service::open(db, authority, clock, config.settings()).await?;
    service.use_postgres_copy(&config.database_url).await?;
    service.set_market_key(config.market_public_key);
    let service = Arc::new(service);
    if let Some(source) = source {
        match config.market_public_key {
            Some(key) => {
                tracing::info!(market_key = %key, "market results must be signed by this key")
            }
            None => tracing::warn!(
                "no market_public_key configured: market results are read unsigned and NOT authenticated; \
                 pin the key from the market's GET /market-key in the settlement config"
            ),
        }
        // An unknown gateway makes settlement ask the market again at once (rate-limited).
        service.set_registry_source(source.clone(), service::admission::REFRESH_EVERY);
        // Load registrations once before accepting readings, when the market is up.
        if let Err(e) = sources::poll_once(&service, source.as_ref()).await {
            tracing::warn!(error = %e, "first market poll failed; will retry");
        }
        let every = Duration::from_secs_f64(config.poll_secs.max(0.05));
        shutdown.spawn(sources::run_poller(
            service.clone(),
            source,
            every,
            shutdown.clone(),
        ));
    }
    if let Some(url) = &config.broker_url {
        ingest::start_mqtt(service.clone(), url, &config.mqtt_client_id, &shutdown)?;
    }
    shutdown.spawn(ingest::run_settler(service.clone(), shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let app = api::router(api::AppState {
        service: service.clone(),
        operator_token: config.operator_token.clone(),
        auditor_token: config.auditor_token.clone(),
        stop: shutdown.token(),
    });
    let token = shutdown.token();
    let scheme = serve_options.scheme();
    shutdown.spawn(async move {
        let result = gridmesh_runtime::http::serve(listener, app, &serve_options, token).await;
        if let Err(e) = result {
            tracing::error!(error = %e, "settlement HTTP server failed");
        }
    });
    tracing::info!(%addr, scheme, authority = %service.authority(), "settlement listening");
    Ok(RunningSettlement {
        addr,
        authority: service.authority(),
        service,
    })
}
