//! The gridmesh dashboard: the utility's live view of the neighbourhood, served by axum with
//! every asset embedded.
//!
//! It reads **only** through the services' APIs (the market's and settlement's REST and SSE,
//! and optionally gateways' retained MQTT status) and never touches a database.
//!
//! The grid's state on every page is what was **measured** (settlement's `GET /flows`, summed
//! from verified readings); the market's cleared flows are shown beside it, labelled as a plan.
//!
//! Module map, following the data:
//!
//! - [`config`]: [`WebConfig`] (listen address, upstream URLs, poll interval);
//! - [`upstream`]: JSON clients for the market and settlement with errors naming the service
//!   and URL ("market unreachable at …");
//! - [`follow`]: follows the upstream `/events` streams and wakes the refresher;
//! - [`gateways`]: gateway online/offline and control status (envelope source, curtailed
//!   energy) from the broker's retained topics;
//! - [`refresh`]: polls the upstreams into a [`snapshot::Snapshot`]; a service that is down
//!   keeps its last data and says why;
//! - [`hub`]: the shared snapshot and the change broadcast for browsers;
//! - [`views`]: pure derivations for each page (measured flow against its limit: over it red,
//!   from 90 % amber; cleared plan beside it; participants; alerts);
//! - [`charts`]: server-side SVG charts drawn with `plotters`;
//! - [`history`]: flows against limits, prices as steps and volumes over 6 h, 24 h, 7 d or a
//!   custom range, bucketed on the server; [`diagram`]: the live single-line diagram
//!   (substation → feeders → homes, coloured by measured loading);
//! - [`auth`]: users (argon2id), roles, sessions, the Host check and CSRF tokens;
//! - [`routes`] and [`assets`]: the login page, pages, JSON API, charts, the browser event stream, `/healthz`,
//!   `/metrics`, on the runtime's HTTP kit; [`api`]: the typed answers of that JSON API;
//! - [`metrics`]: the Prometheus text encoder;
//! - [`proof`]: the ledger entry view's checks (entry hash, block signature with the pinned
//!   authority key, Merkle root from the signed header, prev-hash chain, reading keys against
//!   the gateway registry);
//! - [`incidents`]: alerts grouped into incidents, acknowledgements, webhook notifications;
//! - [`export`]: CSV exports and the ledger's paging and search.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), gridmesh_web::WebError> {
//! use gridmesh_runtime::shutdown::Shutdown;
//! let shutdown = Shutdown::new();
//! shutdown.trigger_on_signals();
//! let config = gridmesh_web::WebConfig {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     ..Default::default()
//! };
//! let running = gridmesh_web::serve(config, shutdown.clone()).await?;
//! println!("dashboard at http://{}/", running.addr);
//! // Runs until Ctrl-C or SIGTERM, then waits for every task.
//! shutdown.wait().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod assets;
pub mod auth;
pub mod charts;
pub mod config;
pub mod diagram;
pub mod export;
pub mod follow;
pub mod gateways;
pub mod history;
pub mod hub;
pub mod incidents;
pub mod metrics;
pub mod ops_routes;
pub mod proof;
pub mod refresh;
pub mod routes;
pub mod snapshot;
pub mod upstream;
pub mod views;

pub use config::WebConfig;

use gridmesh_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The configuration is inconsistent.
    #[error("invalid dashboard configuration: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; is another dashboard running there? choose another `listen` address"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP client for the market and settlement could not be built.
    #[error(
        "cannot set up the HTTP client for the market and settlement: {0}; this is a build or system problem (TLS or resolver setup), not a config mistake"
    )]
    Http(reqwest::Error),
    /// The broker URL was refused.
    #[error("cannot follow gateway status: {0}")]
    Broker(#[from] gridmesh_runtime::mqtt::MqttError),
    /// `tls_cert`/`tls_key` are half set or cannot be read.
    #[error("HTTPS: {0}")]
    Tls(#[from] gridmesh_runtime::http::ServeError),
}

/// A running dashboard.
#[derive(Debug, Clone)]
pub struct RunningWeb {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The shared state (for tests and the launcher).
    pub hub: Arc<hub::Hub>,
    /// `https` when serving TLS, else `http`.
    pub scheme: &'static str,
}

impl RunningWeb {
    /// The dashboard's base URL, e.g. `http://127.0.0.1:8080`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

/// Starts the dashboard: binds, then runs the server, the refresher and the event followers
/// as tasks tracked by `shutdown`. Returns once listening.
pub async fn serve(config: WebConfig, shutdown: Shutdown) -> Result<RunningWeb, WebError> {
    config.validate().map_err(WebError::Config)?;
    // Refuse to start on a bad certificate or key rather than fail later in the server task.
    let options = gridmesh_runtime::http::ServeOptions::default()
        .with_tls(config.tls_cert.clone(), config.tls_key.clone())?;
    options.check()?;
    let scheme = options.scheme();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WebError::Bind {
        addr: config.listen,
        source,
    })?;
    let hub = hub::Hub::with_stop(config.clone(), shutdown.token())?;
    hub.auth.set_port(addr.port());
    if let Some(url) = &config.broker_url {
        gateways::start(hub.clone(), url, &shutdown)?;
    }
    shutdown.spawn(refresh::run(hub.clone(), shutdown.token()));
    shutdown.spawn(incidents::run(
        hub.clone(),
        shutdown.token(),
        incidents::Backoff::default(),
    ));
    shutdown.spawn(follow::follow(
        hub.clone(),
        hub.market.clone(),
        shutdown.token(),
    ));
    shutdown.spawn(follow::follow(
        hub.clone(),
        hub.settlement.clone(),
        shutdown.token(),
    ));
    let app = routes::router(hub.clone());
    let token = shutdown.token();
    shutdown.spawn(async move {
        if let Err(e) = gridmesh_runtime::http::serve(listener, app, &options, token).await {
            tracing::error!(error = %e, "dashboard server stopped");
        }
    });
    tracing::info!(%addr, %scheme, market = %config.market_url, settlement = %config.settlement_url, "dashboard listening");
    Ok(RunningWeb { addr, hub, scheme })
}
