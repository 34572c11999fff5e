//! The whole neighbourhood in one process: meter-sim, one edge-gateway per home, the market,
//! settlement and the dashboard, all on one accelerated clock.
//!
//! Each service is started through its own library entry point exactly as its binary would, and
//! they talk to each other only over their real interfaces: Modbus TCP, MQTT and REST on
//! loopback. The demo binary and the end-to-end tests both use [`Neighbourhood::start`].

use crate::broker::{BrokerError, EmbeddedBroker};
use chrono::{DateTime, Utc};
use edge_gateway::config::{DeviceConfig, GatewayConfig, Role};
use edge_gateway::{KeySource, RunningGateway};
use gridmesh_protocol::grid::{Branch, Network, UtilityTariff};
use gridmesh_protocol::keys::{KeyFileError, SigningKeyPair};
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::{GatewayId, NodeId, ParticipantId, PricePerMwh, Wh, ZoneId};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, server::RunningMarket};
use meter_sim::manifest::ManifestHome;
use meter_sim::scenario::HomeSpec;
use meter_sim::{DeviceKind, Homes, Scenario, Simulator};
use serde::{Deserialize, Serialize};
use settlement::{RunningSettlement, SettlementConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The market zone of the demo neighbourhood: the market clears it, gateways sign their
/// readings and orders for it, settlement refuses readings for any other.
pub const DEMO_ZONE: &str = "demo";

fn demo_zone() -> ZoneId {
    ZoneId::new(DEMO_ZONE).expect("the demo zone is a valid id")
}

/// The operator token the launcher uses for registrations (local demo only).
pub const DEMO_OPERATOR_TOKEN: &str = "demo-operator-token";

/// How to run the neighbourhood.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of simulated homes.
    pub homes: usize,
    /// Number of feeders (`f1` is the tight one that congests at midday).
    pub feeders: usize,
    /// Simulated seconds per real second (60: one 15-minute interval every 15 s).
    pub speed: f64,
    /// Seed of the physics.
    pub seed: u64,
    /// Simulated time to start at when there is no stored state.
    pub start: DateTime<Utc>,
    /// Where keys, databases, outboxes and the resume state live.
    pub data_dir: PathBuf,
    /// `None`: SQLite files in `data_dir`. `Some(postgres://…/db)`: the market and settlement
    /// use the databases `<db>_market` and `<db>_settlement` on that server (created if absent).
    pub database: Option<String>,
    /// `None`: the embedded broker. `Some(mqtt://…)`: that broker.
    pub broker: Option<String>,
    /// Whether every gateway publishes Home Assistant MQTT discovery (`homeassistant/#`) to
    /// the neighbourhood's broker, as it would to a household's own broker.
    pub home_assistant: bool,
    /// The local page password of the first home with PV and a battery, served on
    /// `ports_from + 4` (an ephemeral port when `ports_from` is 0; see the gateway's
    /// `local_page_addr` in `Neighbourhood::gateways`). `None`: no local page.
    pub local_page_password: Option<String>,
    /// Dashboard port; the market listens on +1, settlement on +2, the embedded broker on +3.
    /// 0 = ephemeral ports everywhere (tests).
    pub ports_from: u16,
    /// First home's Modbus port (0 = ephemeral).
    pub modbus_base_port: u16,
    /// How often gateways poll their devices, in real milliseconds.
    pub poll_ms: u64,
    /// Whether the households' gateways bid.
    pub bidding: bool,
    /// Homes (meter-sim ids such as `h002`) whose gateway the launcher registers but does not
    /// run: the caller runs it, for example as a child process from
    /// [`Neighbourhood::external_gateways`]' configs.
    pub external_gateways: Vec<String>,
    /// Simulated seconds settlement waits after an interval's end before settling it: the
    /// longest outage (gateway, broker) whose readings still count.
    pub settlement_grace_secs: u64,
    /// Whether gateways may fall back to settlement's REST API (`settlement_url`) when the
    /// broker does not take a reading. `false`: MQTT is the only uplink, so a reading reaches
    /// settlement over the broker or not at all (the MQTT end-to-end tests prove that path).
    pub http_fallback: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            homes: 24,
            feeders: 3,
            speed: 60.0,
            seed: 42,
            start: DateTime::parse_from_rfc3339("2026-06-21T09:00:00Z")
                .expect("valid literal")
                .with_timezone(&Utc),
            data_dir: PathBuf::from("demo-data"),
            database: None,
            broker: None,
            home_assistant: false,
            local_page_password: None,
            ports_from: 8080,
            modbus_base_port: 15020,
            poll_ms: 250,
            bidding: true,
            external_gateways: Vec::new(),
            settlement_grace_secs: 60,
            http_fallback: true,
        }
    }
}

/// Why the neighbourhood did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file or directory could not be created or read.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file is unusable.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// meter-sim did not start.
    #[error("meter-sim: {0}")]
    Sim(#[from] meter_sim::SimError),
    /// The market did not start or refused a registration.
    #[error("market-engine: {0}")]
    Market(#[from] market_engine::error::MarketError),
    /// Settlement did not start.
    #[error("settlement: {0}")]
    Settlement(#[from] settlement::Error),
    /// A gateway did not start.
    #[error("edge-gateway {gateway}: {source}")]
    Gateway {
        /// Which gateway.
        gateway: String,
        /// Why.
        source: edge_gateway::GatewayError,
    },
    /// The dashboard did not start.
    #[error("dashboard: {0}")]
    Web(#[from] gridmesh_web::WebError),
    /// The PostgreSQL server could not be prepared.
    #[error("database: {0}")]
    Database(#[from] gridmesh_runtime::db::DbError),
    /// An option is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// What the launcher remembers between runs.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeState {
    /// Simulated time when the previous run stopped.
    simulated_now: DateTime<Utc>,
    /// Each simulated home's meters and battery then, so the devices continue where they were
    /// (a gateway would otherwise see every meter replaced).
    #[serde(default)]
    homes: BTreeMap<String, HomeResume>,
}

/// One simulated home's state at a stop.
#[derive(Debug, Serialize, Deserialize)]
struct HomeResume {
    /// Import, export, PV, battery charge, battery discharge counters, Wh.
    counters_wh: [u64; 5],
    /// Battery state of charge, percent.
    soc_pct: f64,
}

const STATE_FILE: &str = "resume.json";

/// The dashboard's users file inside the data directory.
pub const DASHBOARD_USERS_FILE: &str = "dashboard-users.json";

/// A running neighbourhood.
pub struct Neighbourhood {
    /// The shared accelerated clock.
    pub clock: Clock,
    /// The simulator (ground truth, faults, manifest).
    pub sim: Simulator,
    /// The market.
    pub market: RunningMarket,
    /// Settlement.
    pub settlement: RunningSettlement,
    /// One gateway per home, in manifest order.
    pub gateways: Vec<RunningGateway>,
    /// The dashboard's address.
    pub dashboard: SocketAddr,
    /// The auditor credential of this run (the dashboard's `upstream_token`).
    pub auditor_token: String,
    /// The broker URL in use.
    pub broker_url: String,
    /// The topology the market clears on.
    pub network: Network,
    /// Whether this run resumed from stored state.
    pub resumed: bool,
    /// Settlement's database URL (for audits).
    pub settlement_database_url: String,
    /// The configs of the gateways named in [`Options::external_gateways`] (key file written,
    /// no clock set), for the caller to run.
    pub external_gateways: Vec<GatewayConfig>,
    data_dir: PathBuf,
    market_config: MarketConfig,
    /// The market runs on its own shutdown (bridged to the neighbourhood's), so that it alone
    /// can be stopped and started again.
    market_shutdown: Option<Shutdown>,
    /// The gateways' own shutdown (bridged), so they can stop before the devices they read.
    gateway_shutdown: Shutdown,
    shutdown: Shutdown,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The demo grid: substation `sub`, feeders `f1..fN`; `f1` has a tight export limit (40 Wh per
/// home and interval) so that it congests when the sun is high. Limits are per interval.
pub fn demo_network(feeders: usize, homes: usize) -> Network {
    let homes_per_feeder = homes.div_ceil(feeders.max(1)).max(1) as i64;
    let branches = (1..=feeders)
        .map(|f| Branch {
            node: NodeId::new(format!("f{f}")).expect("valid id"),
            parent: NodeId::new("sub").expect("valid id"),
            import_limit_wh: Some(Wh(homes_per_feeder * 2_000)),
            export_limit_wh: Some(Wh(if f == 1 {
                homes_per_feeder * 40
            } else {
                homes_per_feeder * 2_000
            })),
            fee_per_mwh: Some(PricePerMwh(1_000)),
        })
        .collect();
    Network {
        root: NodeId::new("sub").expect("valid id"),
        branches,
        utility: UtilityTariff {
            envelope_excess_price: Default::default(),
            retail_price: Some(PricePerMwh(30_000)),
            feed_in_price: Some(PricePerMwh(8_000)),
            import_limit_wh: None,
            export_limit_wh: None,
        },
    }
}

/// The demo's homes: spread round-robin over the feeders; every third home is a flat without
/// PV or battery (a buyer at midday), the others vary in PV size.
pub fn demo_homes(homes: usize, feeders: usize) -> Vec<HomeSpec> {
    (1..=homes)
        .map(|i| {
            let prosumer = i % 3 != 0;
            HomeSpec {
                id: format!("h{i:03}"),
                feeder: Some(format!("f{}", (i - 1) % feeders.max(1) + 1)),
                kwp: Some(if prosumer {
                    4.0 + (i % 4) as f64 * 1.5
                } else {
                    0.0
                }),
                battery_kwh: Some(if prosumer && i % 2 == 0 { 10.0 } else { 0.0 }),
                annual_load_kwh: Some(if prosumer { 3_500.0 } else { 5_000.0 }),
                ..HomeSpec::default()
            }
        })
        .collect()
}

fn port(base: u16, offset: u16) -> u16 {
    if base == 0 { 0 } else { base + offset }
}

async fn database_url(options: &Options, service: &str) -> Result<String, StartError> {
    match &options.database {
        None => Ok(format!(
            "sqlite://{}",
            options.data_dir.join(format!("{service}.db")).display()
        )),
        Some(base) if base.starts_with("postgres") => {
            let mut url = url::Url::parse(base)
                .map_err(|_| StartError::Invalid(format!("--database `{base}` is not a URL")))?;
            let name = format!("{}_{service}", url.path().trim_start_matches('/'));
            let admin = gridmesh_runtime::db::Database::connect(base).await?;
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(name.clone())
                    .fetch_optional(&admin.pool)
                    .await
                    .map_err(|e| StartError::Invalid(format!("cannot query {base}: {e}")))?;
            if exists.is_none() {
                sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&admin.pool)
                    .await
                    .map_err(|e| {
                        StartError::Invalid(format!("cannot create database {name}: {e}"))
                    })?;
            }
            admin.pool.close().await;
            url.set_path(&name);
            Ok(url.to_string())
        }
        Some(other) => Err(StartError::Invalid(format!(
            "--database must be a postgres:// URL (SQLite is the default), not `{other}`"
        ))),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn load_or_create_key(path: &Path) -> Result<SigningKeyPair, StartError> {
    if path.exists() {
        Ok(SigningKeyPair::load(path)?)
    } else {
        Ok(SigningKeyPair::generate_file(path)?)
    }
}

impl Neighbourhood {
    /// Starts everything. Stop it by triggering `shutdown` and then calling
    /// [`Neighbourhood::stop`].
    pub async fn start(options: Options, shutdown: &Shutdown) -> Result<Self, StartError> {
        if options.homes == 0 || options.feeders == 0 || options.feeders > options.homes {
            return Err(StartError::Invalid(format!(
                "need at least one home per feeder (got {} homes on {} feeders)",
                options.homes, options.feeders
            )));
        }
        let data_dir = options.data_dir.clone();
        for dir in [
            data_dir.clone(),
            data_dir.join("keys"),
            data_dir.join("outbox"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }

        // Resume from the simulated time the previous run reached.
        let state_path = data_dir.join(STATE_FILE);
        let previous: Option<ResumeState> = std::fs::read(&state_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let resumed = previous.is_some();
        let epoch = previous.as_ref().map_or(options.start, |s| s.simulated_now);
        let mut homes = demo_homes(options.homes, options.feeders);
        if let Some(previous) = &previous {
            for home in &mut homes {
                if let Some(state) = previous.homes.get(&home.id) {
                    home.counters_wh = Some(state.counters_wh);
                    home.soc_pct = Some(state.soc_pct);
                }
            }
        }
        let clock = Clock::scaled(epoch, options.speed);

        let broker_url = match &options.broker {
            Some(url) => url.clone(),
            None => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port(options.ports_from, 3)));
                EmbeddedBroker::start(addr)?.url()
            }
        };

        let mut scenario = Scenario::small(options.homes, options.seed);
        scenario.feeders = options.feeders;
        scenario.homes = Homes::List(homes);
        scenario.base_port = options.modbus_base_port;
        scenario.start = Some(epoch);
        scenario.speed = options.speed;
        let sim = meter_sim::start(scenario, clock.clone(), shutdown).await?;
        let manifest = sim.manifest();

        let network = demo_network(options.feeders, options.homes);
        // One auditor credential per run, shared by the dashboard and the services it reads.
        let auditor_token = gridmesh_web::auth::generate_password();
        let mut market_config = MarketConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port(options.ports_from, 1))),
            database_url: database_url(&options, "market").await?,
            zone: DEMO_ZONE.to_owned(),
            // The operator enrols the demo's homes in-process; settlement and the dashboard
            // read the private registrations with the auditor credential.
            operator_token: Some(DEMO_OPERATOR_TOKEN.to_owned()),
            auditor_token: Some(auditor_token.clone()),
            broker_url: Some(broker_url.clone()),
            topology: Some(network.clone()),
            // A stable key across restarts: gateways and settlement pin it.
            signing_key: Some(data_dir.join("keys").join("market.key")),
            ..MarketConfig::default()
        };
        let market_shutdown = bridged_shutdown(shutdown);
        let market = market_engine::server::serve(
            market_config.clone(),
            clock.clone(),
            market_shutdown.clone(),
        )
        .await?;
        // A restart binds the same port again.
        market_config.listen = market.addr;

        let settlement_database_url = database_url(&options, "settlement").await?;
        let authority_path = data_dir.join("keys").join("settlement-authority.key");
        let authority = load_or_create_key(&authority_path)?;
        let settlement = settlement::serve(
            SettlementConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], port(options.ports_from, 2))),
                database_url: settlement_database_url.clone(),
                market_url: Some(market.url()),
                market_public_key: Some(market.market_key),
                broker_url: Some(broker_url.clone()),
                authority_key: Some(authority_path),
                // The persistent MQTT session belongs to this deployment: stable across resumes
                // (so readings queued while it was down arrive), distinct from any other
                // neighbourhood sharing the broker.
                mqtt_client_id: format!(
                    "gridmesh-settlement-{}",
                    &hex_prefix(&authority.public_key().0)
                ),
                operator_token: Some(DEMO_OPERATOR_TOKEN.to_owned()),
                // The dashboard's upstream credential; also sent to the market as Bearer
                // (settlement's `market_token` defaults to it).
                auditor_token: Some(auditor_token.clone()),
                // Readings name their zone (gridmesh/reading/v2): another zone's are refused.
                zone: Some(demo_zone()),
                grace_secs: options.settlement_grace_secs,
                poll_secs: 0.5,
                ..SettlementConfig::default()
            },
            clock.clone(),
            shutdown.clone(),
        )
        .await?;

        let gateway_shutdown = bridged_shutdown(shutdown);
        let mut gateways = Vec::with_capacity(manifest.homes.len());
        let mut external_gateways = Vec::new();
        let mut local_page_given = false;
        for (index, home) in manifest.homes.iter().enumerate() {
            let participant = ParticipantId::new(home.id.clone())
                .map_err(|e| StartError::Invalid(e.to_string()))?;
            let gateway_id = GatewayId::new(format!("gw-{}", home.id))
                .map_err(|e| StartError::Invalid(e.to_string()))?;
            let node =
                NodeId::new(home.feeder.clone()).map_err(|e| StartError::Invalid(e.to_string()))?;
            let key = load_or_create_key(&data_dir.join("keys").join(format!("{}.key", home.id)))?;
            market
                .market
                .register_participant(Participant {
                    id: participant.clone(),
                    public_key: key.public_key(),
                    node: node.clone(),
                    kind: ParticipantKind::Household,
                })
                .await?;
            market
                .market
                .enroll_gateway(GatewayEnrollment {
                    gateway: gateway_id.clone(),
                    participant: participant.clone(),
                    node: node.clone(),
                    public_key: key.public_key(),
                    inverter_w: home.inverter_w,
                    battery_w: home.battery_w,
                    latitude_microdeg: (home.latitude * 1e6).round() as i32,
                    longitude_microdeg: (home.longitude * 1e6).round() as i32,
                })
                .await?;

            let mut config = gateway_config(
                home,
                index,
                &market.url(),
                &format!("http://{}", settlement.addr),
                Some(&broker_url),
            )
            .map_err(StartError::Invalid)?;
            config.zone = Some(demo_zone());
            if !options.http_fallback {
                config.settlement_url = None;
            }
            config.outbox_path = data_dir.join("outbox").join(format!("{}.db", home.id));
            config.key_path = data_dir.join("keys").join(format!("{}.key", home.id));
            config.poll_ms = options.poll_ms;
            config.agent.enabled = options.bidding;
            config.market_public_key = Some(market.market_key);
            // Writes may follow every poll: on an accelerated clock a poll spans many seconds.
            config.control.min_write_interval_ms = options.poll_ms;
            // Without a current envelope a home falls back to its share of its feeder's limits.
            if let Some(branch) = network.branches.iter().find(|b| b.node == node) {
                let homes_here = manifest
                    .homes
                    .iter()
                    .filter(|h| h.feeder == home.feeder)
                    .count() as i64;
                let per_home_w = |limit: Option<Wh>, fallback: u32| {
                    limit.map_or(fallback, |wh| {
                        u32::try_from(wh.0 * 4 / homes_here.max(1)).unwrap_or(u32::MAX)
                    })
                };
                config.control.default_export_w =
                    per_home_w(branch.export_limit_wh, config.control.default_export_w);
                config.control.default_import_w =
                    per_home_w(branch.import_limit_wh, config.control.default_import_w);
            }
            if options.home_assistant {
                config.home_assistant.url = Some(broker_url.clone());
            }
            // The local page goes to the first home with PV and a battery (every flow shows).
            if let Some(password) = options
                .local_page_password
                .as_deref()
                .filter(|_| !local_page_given && home.battery_kwh > 0.0 && home.inverter_w > 0)
            {
                local_page_given = true;
                config.local_page.listen = format!("127.0.0.1:{}", port(options.ports_from, 4));
                config.local_page.password_hash = Some(
                    edge_gateway::local_page::hash_password(password)
                        .map_err(StartError::Invalid)?,
                );
            }
            if options.external_gateways.contains(&home.id) {
                external_gateways.push(config);
                continue;
            }
            let running = edge_gateway::run_with_key(
                config,
                KeySource::Key(Box::new(key)),
                clock.clone(),
                gateway_shutdown.clone(),
            )
            .await
            .map_err(|source| StartError::Gateway {
                gateway: gateway_id.to_string(),
                source,
            })?;
            gateways.push(running);
        }

        // The dashboard reads the market and settlement with the auditor credential, and
        // forwards an admin's operator actions with the operator token.
        let web = gridmesh_web::serve(
            gridmesh_web::WebConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], port(options.ports_from, 0))),
                market_url: market.url(),
                settlement_url: format!("http://{}", settlement.addr),
                broker_url: Some(broker_url.clone()),
                users_file: data_dir.join(DASHBOARD_USERS_FILE),
                upstream_token: Some(auditor_token.clone()),
                operator_token: Some(DEMO_OPERATOR_TOKEN.to_owned()),
                // The ledger view checks block signatures with this key, pinned here rather
                // than taken from settlement's answers.
                settlement_authority_key: Some(authority.public_key().to_string()),
                data_dir: data_dir.join("dashboard"),
                ..gridmesh_web::WebConfig::default()
            },
            shutdown.clone(),
        )
        .await?;
        write_dashboard_env(
            &data_dir,
            &market.url(),
            &format!("http://{}", settlement.addr),
            &auditor_token,
            &authority.public_key().to_string(),
        )?;

        Ok(Neighbourhood {
            clock,
            sim,
            market,
            settlement,
            gateways,
            dashboard: web.addr,
            auditor_token,
            broker_url,
            network,
            resumed,
            settlement_database_url,
            external_gateways,
            data_dir,
            market_config,
            market_shutdown: Some(market_shutdown),
            gateway_shutdown,
            shutdown: shutdown.clone(),
        })
    }

    /// Stops only the market (its REST server, clearing loop and MQTT publisher) and waits
    /// until all its tasks have finished. Everything else keeps running.
    pub async fn stop_market(&mut self) {
        if let Some(market_shutdown) = self.market_shutdown.take() {
            market_shutdown.trigger();
            market_shutdown.wait().await;
        }
    }

    /// Starts the market again (after [`Neighbourhood::stop_market`]) on the same port, the
    /// same database and the same clock; it recovers its state from the database.
    pub async fn start_market(&mut self) -> Result<(), StartError> {
        self.stop_market().await;
        let market_shutdown = bridged_shutdown(&self.shutdown);
        self.market = market_engine::server::serve(
            self.market_config.clone(),
            self.clock.clone(),
            market_shutdown.clone(),
        )
        .await?;
        self.market_shutdown = Some(market_shutdown);
        Ok(())
    }

    /// The dashboard's URL.
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/", self.dashboard)
    }

    /// The dashboard's users file (read at every login).
    pub fn dashboard_users_file(&self) -> PathBuf {
        self.data_dir.join(DASHBOARD_USERS_FILE)
    }

    /// Creates (or, on a resumed run, replaces) the dashboard user `name` with `role` and a
    /// freshly generated password, which it returns.
    pub fn add_dashboard_user(
        &self,
        name: &str,
        role: gridmesh_web::auth::Role,
    ) -> Result<String, gridmesh_web::auth::UsersError> {
        let path = self.dashboard_users_file();
        let mut users = gridmesh_web::auth::UsersFile::load(&path)?;
        users.users.retain(|u| u.name != name);
        let password = gridmesh_web::auth::generate_password();
        users.add(name, role, &password)?;
        users.save(&path)?;
        Ok(password)
    }

    /// Settlement's base URL.
    pub fn settlement_url(&self) -> String {
        format!("http://{}", self.settlement.addr)
    }

    /// Writes the resume state (the simulated time reached and every home's meters), so the next
    /// run continues from it.
    pub fn save_resume_state(&self) -> Result<(), StartError> {
        let path = self.data_dir.join(STATE_FILE);
        // The simulator's own time, so that counters and time belong together.
        let status = self.sim.status();
        let homes = status
            .homes
            .iter()
            .filter_map(|h| {
                // What the devices' registers show (not energy since start).
                let (_, registers) = self.sim.register_counters(&h.id).ok()?;
                let counters = registers.as_array().map(|wh| wh.0.max(0) as u64);
                Some((
                    h.id.clone(),
                    HomeResume {
                        counters_wh: counters,
                        soc_pct: h.soc_pct,
                    },
                ))
            })
            .collect();
        let state = ResumeState {
            simulated_now: status.simulated_time,
            homes,
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&state).expect("serialisable"),
        )
        .map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_error(&path))
    }

    /// Stops everything in order: the gateways first (each finishes and stores its in-flight
    /// reading), then the resume state is saved, then every other service. Works whether or not
    /// `shutdown` was already triggered.
    pub async fn stop(self, shutdown: &Shutdown) -> Result<(), StartError> {
        self.gateway_shutdown.trigger();
        self.gateway_shutdown.wait().await;
        self.save_resume_state()?;
        shutdown.stop().await;
        Ok(())
    }
}

/// A shutdown of its own that the neighbourhood's `shutdown` triggers and waits for.
fn bridged_shutdown(shutdown: &Shutdown) -> Shutdown {
    let own = Shutdown::new();
    let bridged = own.clone();
    let parent = shutdown.clone();
    shutdown.spawn(async move {
        tokio::select! {
            _ = parent.triggered() => bridged.trigger(),
            _ = bridged.triggered() => {}
        }
        bridged.wait().await;
    });
    own
}

/// The gateway config the launcher uses for `home` (the `index`-th home of the manifest):
/// its three Modbus devices, the household's bidding limits and site data. Paths (key, outbox)
/// are left at their defaults for the caller to set, and so is the clock.
pub fn gateway_config(
    home: &ManifestHome,
    index: usize,
    market_url: &str,
    settlement_url: &str,
    broker_url: Option<&str>,
) -> Result<GatewayConfig, String> {
    let mut config = GatewayConfig {
        gateway_id: GatewayId::new(format!("gw-{}", home.id)).map_err(|e| e.to_string())?,
        participant: ParticipantId::new(home.id.clone()).map_err(|e| e.to_string())?,
        node: NodeId::new(home.feeder.clone()).map_err(|e| e.to_string())?,
        market_url: Some(market_url.to_owned()),
        settlement_url: Some(settlement_url.to_owned()),
        modbus_timeout_ms: 1_000,
        health_listen: "127.0.0.1:0".to_owned(),
        ..GatewayConfig::default()
    };
    config.mqtt.url = broker_url.map(str::to_owned);
    config.agent.enabled = true;
    // Households sell above the utility's feed-in and buy below its retail price, so
    // trading locally beats the utility for both sides (tariffs of `demo_network`).
    // f1 is a "solar street": its households ask the least, so at midday they would
    // export more than f1's tight limit allows, and f1's price separates.
    config.agent.min_sell_price = PricePerMwh(if home.feeder == "f1" {
        9_000
    } else {
        10_000 + (index as i64 % 3) * 500
    });
    config.agent.max_buy_price = PricePerMwh(29_000 - (index as i64 % 4) * 1_000);
    config.agent.battery_capacity_wh = (home.battery_kwh * 1000.0).round() as i64;
    config.agent.gate_closure_lead_s = market_lead_seconds();
    // Bid four simulated minutes before gate closure: late enough that the previous interval's
    // reading is in the forecast history, early enough that the open book (and the dashboard's
    // depth curve) shows orders for a good part of each interval.
    config.agent.submit_margin_s = 240;
    config.site.inverter_w = home.inverter_w;
    config.site.battery_w = home.battery_w;
    config.site.latitude = home.latitude;
    config.site.longitude = home.longitude;
    for device in &home.devices {
        let role = match device.kind {
            DeviceKind::Inverter => Role::Inverter,
            DeviceKind::Battery => Role::Battery,
            DeviceKind::Meter => Role::GridMeter,
        };
        config.devices.push(DeviceConfig::modbus_tcp(
            &format!("{:?}", device.kind).to_lowercase(),
            role,
            &device.host,
            device.port,
            device.unit,
        ));
    }
    Ok(config)
}

/// The market's gate-closure lead in simulated seconds (the market's default), which the
/// gateways' bidding agents must know to submit in time.
pub fn market_lead_seconds() -> i64 {
    MarketConfig::default().gate_closure_lead_seconds
}

/// The file a second dashboard reads this neighbourhood with (the browser tests' tampering
/// one): `GRIDMESH_WEB_*` lines with the services' URLs, the auditor credential and the pinned
/// settlement authority key, written with mode 0600 (it holds the credential).
pub const DASHBOARD_ENV_FILE: &str = "dashboard.env";

fn write_dashboard_env(
    data_dir: &Path,
    market_url: &str,
    settlement_url: &str,
    auditor_token: &str,
    authority_key: &str,
) -> Result<(), StartError> {
    use std::io::Write as _;
    let path = data_dir.join(DASHBOARD_ENV_FILE);
    let text = format!(
        "GRIDMESH_WEB_MARKET_URL={market_url}\nGRIDMESH_WEB_SETTLEMENT_URL={settlement_url}\nGRIDMESH_WEB_UPSTREAM_TOKEN={auditor_token}\nGRIDMESH_WEB_SETTLEMENT_AUTHORITY_KEY={authority_key}\n"
    );
    let io = |source| StartError::Io {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}
