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
