//! The command line: `serve`, `clear`, `key`, `order` and `results` subcommands.
//!
//! Kept in the library so it can be tested; `main.rs` only parses and calls [`run`].
//! Exit codes: 0 success, 1 runtime failure, 2 invalid input (a bad book, a bad argument).

use crate::book::BookFile;
use crate::clearing::{clear, offline_report};
use crate::prices::PricingRule;
use clap::{Parser, Subcommand};
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

/// Order subcommands.
#[derive(Debug, Subcommand)]
pub enum OrderAction {
    /// Sign and submit an order.
    Submit {
        /// The participant's key file.
        #[arg(long)]
        key: PathBuf,
        /// The participant id.
        #[arg(long)]
        participant: String,
        /// The grid node.
        #[arg(long)]
        node: String,
        /// buy or sell.
        #[arg(long, value_parser = parse_side)]
        side: gridmesh_protocol::Side,
        /// Quantity in Wh.
        #[arg(long)]
        quantity_wh: i64,
        /// Limit price in minor units per MWh (25.00 c/kWh = 25000).
        #[arg(long, allow_hyphen_values = true)]
        limit_price: i64,
        /// Interval start (RFC 3339), or `next` for the next open interval.
        #[arg(long, default_value = "next")]
        interval: String,
        /// Nonce; defaults to the current time in microseconds (fresh for every call).
        #[arg(long)]
        nonce: Option<u64>,
    },
    /// List orders.
    List {
        /// Only this participant's.
        #[arg(long)]
        participant: Option<String>,
        /// Only this interval (start, RFC 3339).
        #[arg(long)]
        interval: Option<String>,
    },
    /// Cancel an order before gate closure.
    Cancel {
        /// The participant's key file.
        #[arg(long)]
        key: PathBuf,
        /// The participant id.
        #[arg(long)]
        participant: String,
        /// The nonce of the order to cancel.
        #[arg(long)]
        nonce: u64,
    },
}

/// Results subcommands.
#[derive(Debug, Subcommand)]
pub enum ResultsAction {
    /// Show one interval's result, or the results since a time.
    Show {
        /// The interval start (RFC 3339).
        #[arg(long)]
        interval: Option<String>,
        /// List results from this start on.
        #[arg(long)]
        since: Option<String>,
        /// Most results to list.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

fn parse_side(s: &str) -> Result<gridmesh_protocol::Side, String> {
    match s {
        "buy" => Ok(gridmesh_protocol::Side::Buy),
        "sell" => Ok(gridmesh_protocol::Side::Sell),
        other => Err(format!("`{other}` is not a side; use buy or sell")),
    }
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// 1 or 2.
    pub code: u8,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    /// Bad input: exit code 2.
    pub fn input(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    /// A runtime failure: exit code 1.
    pub fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Clear { book, pay_as_bid } => clear_command(&book, pay_as_bid),
        Command::Key { action } => key_command(action),
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
pub fn clear_book_json(text: &str, pay_as_bid: bool) -> Result<String, crate::book::BookError> {
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

async fn serve_command(path: Option<PathBuf>) -> Result<(), Failure> {
    gridmesh_runtime::telemetry::init("market_engine=info,info");
    let config: crate::config::MarketConfig =
        gridmesh_runtime::config::load(path.as_deref(), crate::config::ENV_PREFIX)
            .map_err(Failure::input)?;
    let shutdown = gridmesh_runtime::shutdown::Shutdown::new();
    shutdown.trigger_on_signals();
    let clock = gridmesh_runtime::clock::ClockSettings::clock_or_system(config.clock.as_ref());
    let running = crate::serve(config, clock, shutdown.clone())
        .await
        .map_err(Failure::runtime)?;
    eprintln!("market engine listening on {}", running.url());
    shutdown.triggered().await;
    shutdown.wait().await;
    Ok(())
}
