//! `market-engine`: the market service, the offline clearing tool and a trader's client.
//!
//! All the work lives in the library; this binary is the command line: it parses arguments,
//! loads the config, sets up logging, runs the trader's client commands and maps errors to exit
//! codes (2 = bad input, 1 = anything else).
//!
//! - `cli`: the subcommands, `clear`, `key` and `serve`, and [`cli::run`];
//! - `client`: the trader's `order` and `results` commands over REST;
//! - `failure`: a failure and its exit code.

mod cli;
mod client;
mod failure;

use clap::Parser;
use cli::{Cli, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    run(cli)
}
