//! The command line: `serve`, `clear`, `key`, `enrolment-token`, `broker-acl`, `order` and
//! `results` subcommands.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid input (a bad book, a bad argument).
//! The trader commands (`order`, `results`) and their arguments live in [`crate::client`].

use crate::client::{OrderAction, ResultsAction};
use crate::failure::Failure;
use clap::{Parser, Subcommand};
use market_engine::book::BookFile;
use market_engine::clearing::{clear, offline_report};
use market_engine::prices::PricingRule;
use std::path::PathBuf;
use std::process::ExitCode;

/// The gridmesh market engine.
#[derive(Debug, Parser)]
#[command(name = "market-engine", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Clear a book offline and print the result as JSON on stdout.
    Clear {
        /// The book: {"network": …, "orders": […]} (use - for stdin).
        #[arg(long)]
        book: PathBuf,
        /// Settle every order at its own limit price instead of the node price.
        #[arg(long)]
        pay_as_bid: bool,
    },
    /// Run the market service (REST, gate closure, MQTT results).
    Serve {
        /// TOML config file; `GRIDMESH_MARKET_*` environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Issue a one-time enrolment token for a home (printed once; only its hash is stored).
    /// The home runs `edge-gateway enroll --token TOKEN`; the token registers that participant
    /// and its gateway, then is used up.
    EnrolmentToken {
        /// The participant (home) it may enrol, e.g. h042.
        #[arg(long)]
        participant: String,
        /// Hours until it expires.
        #[arg(long, default_value_t = market_engine::enrolment::DEFAULT_VALID_HOURS)]
        valid_hours: u32,
        /// The market's TOML config (its database_url); `GRIDMESH_MARKET_*` overrides it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write Mosquitto's password file and ACL for the enrolled gateways (read from the
    /// market's database): `<out>/passwd`, `<out>/acl`, `<out>/gateways/<id>.password` and
    /// `<out>/{market,settlement,web}.password`, all mode 0600.
    BrokerAcl {
        /// The output directory.
        #[arg(long)]
        out: PathBuf,
        /// The market's TOML config (its database_url); `GRIDMESH_MARKET_*` overrides it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage a trader's signing key.
    Key {
        /// What to do with the key.
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Submit, list and cancel orders on a running market.
    Order {
        /// The market's base URL.
        #[arg(
            long,
            env = "GRIDMESH_MARKET_URL",
            default_value = "http://127.0.0.1:8081",
            global = true
        )]
        market: String,
        /// What to do.
        #[command(subcommand)]
        action: OrderAction,
    },
    /// Read cleared results from a running market.
    Results {
        /// The market's base URL.
        #[arg(
            long,
            env = "GRIDMESH_MARKET_URL",
            default_value = "http://127.0.0.1:8081",
            global = true
        )]
        market: String,
        /// What to do.
        #[command(subcommand)]
        action: ResultsAction,
    },
}

/// Key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create a new key file (mode 0600) and print its public key.
    Generate {
        /// Where to write the key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the public key of a key file (what the operator registers).
    Show {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Clear { book, pay_as_bid } => clear_command(&book, pay_as_bid),
        Command::Key { action } => key_command(action),
        Command::EnrolmentToken {
            participant,
            valid_hours,
            config,
        } => runtime()
            .and_then(|rt| rt.block_on(enrolment_token_command(config, &participant, valid_hours))),
        Command::BrokerAcl { out, config } => {
            runtime().and_then(|rt| rt.block_on(broker_acl_command(config, &out)))
        }
        Command::Serve { config } => runtime().and_then(|rt| rt.block_on(serve_command(config))),
        Command::Order { market, action } => {
            runtime().and_then(|rt| rt.block_on(crate::client::order_command(&market, action)))
        }
        Command::Results { market, action } => {
            runtime().and_then(|rt| rt.block_on(crate::client::results_command(&market, action)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `clear --book FILE`: validates and clears a book, prints the JSON report.
pub fn clear_command(path: &std::path::Path, pay_as_bid: bool) -> Result<(), Failure> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(Failure::input)?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::input(format!("cannot read book {}: {e}", path.display())))?
    };
    let report = clear_book_json(&text, pay_as_bid).map_err(Failure::input)?;
    println!("{report}");
    Ok(())
}

/// Clears a book given as JSON text and returns the report as JSON text.
pub fn clear_book_json(
    text: &str,
    pay_as_bid: bool,
) -> Result<String, market_engine::book::BookError> {
    let (topology, orders) = BookFile::parse(text)?.validate()?;
    let rule = if pay_as_bid {
        PricingRule::PayAsBid
    } else {
        PricingRule::PayAsClear
    };
    let outcome = clear(&topology, &orders, rule);
    let report = offline_report(&topology, &orders, &outcome);
    Ok(serde_json::to_string_pretty(&report).expect("a report always serialises"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))
}

fn key_command(action: KeyAction) -> Result<(), Failure> {
    use gridmesh_protocol::keys::SigningKeyPair;
    let key = match action {
        KeyAction::Generate { key } => SigningKeyPair::generate_file(&key),
        KeyAction::Show { key } => SigningKeyPair::load(&key),
    }
    .map_err(Failure::input)?;
    println!("{}", key.public_key());
    Ok(())
}

fn load_config(path: Option<&std::path::Path>) -> Result<market_engine::MarketConfig, Failure> {
    gridmesh_runtime::config::load(path, market_engine::config::ENV_PREFIX).map_err(Failure::input)
}

async fn open_store(
    config: &market_engine::MarketConfig,
) -> Result<market_engine::store::Store, Failure> {
    market_engine::store::Store::open(&config.database_url, config.interval_minutes)
        .await
        .map_err(|e| Failure::runtime(format!("the market's database: {e}")))
}

/// `enrolment-token --participant ID [--valid-hours H]`: prints a new one-time token.
async fn enrolment_token_command(
    config: Option<PathBuf>,
    participant: &str,
    valid_hours: u32,
) -> Result<(), Failure> {
    let participant = gridmesh_protocol::ParticipantId::new(participant)
        .map_err(|e| Failure::input(format!("--participant: {e}")))?;
    if valid_hours == 0 {
        return Err(Failure::input("--valid-hours must be at least 1"));
    }
    let config = load_config(config.as_deref())?;
    let store = open_store(&config).await?;
    let now = chrono::Utc::now().timestamp();
    let issued = market_engine::enrolment::issue(&store, &participant, valid_hours, now)
        .await
        .map_err(|e| Failure::runtime(format!("storing the token: {e}")))?;
    let expires = chrono::DateTime::from_timestamp(issued.expires_at, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    eprintln!(
        "one-time enrolment token for {participant}, valid until {expires}; the home runs: edge-gateway enroll --token <token>"
    );
    println!("{}", issued.token);
    Ok(())
}

/// `broker-acl --out DIR`: Mosquitto's password file and ACL for the enrolled gateways.
async fn broker_acl_command(config: Option<PathBuf>, out: &std::path::Path) -> Result<(), Failure> {
    let config = load_config(config.as_deref())?;
    let store = open_store(&config).await?;
    let gateways: Vec<_> = store
        .gateways()
        .await
        .map_err(|e| Failure::runtime(format!("reading the enrolled gateways: {e}")))?
        .into_iter()
        .map(|g| g.gateway)
        .collect();
    let written = market_engine::broker_acl::write(out, &gateways).map_err(Failure::runtime)?;
    eprintln!(
        "wrote {} and {} for {} users ({} gateways); point Mosquitto's password_file and acl_file at them",
        written.password_file.display(),
        written.acl_file.display(),
        written.users.len(),
        gateways.len()
    );
    Ok(())
}

async fn serve_command(path: Option<PathBuf>) -> Result<(), Failure> {
    gridmesh_runtime::telemetry::init("market_engine=info,info");
    let config: market_engine::MarketConfig =
        gridmesh_runtime::config::load(path.as_deref(), market_engine::config::ENV_PREFIX)
            .map_err(Failure::input)?;
    let shutdown = gridmesh_runtime::shutdown::Shutdown::new();
    shutdown.trigger_on_signals();
    let clock = gridmesh_runtime::clock::ClockSettings::clock_or_system(config.clock.as_ref());
    let running = market_engine::serve(config, clock, shutdown.clone())
        .await
        .map_err(Failure::runtime)?;
    eprintln!("market engine listening on {}", running.url());
    shutdown.triggered().await;
    shutdown.wait().await;
    Ok(())
}
